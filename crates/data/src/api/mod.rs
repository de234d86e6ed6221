//! The data crate's Rhai surface: the `DataFrame`, `LazyFrame` and `GroupBy` types and their
//! functions ([`frame`], and here the scans and readers), the data-hygiene functions ([`hygiene`]),
//! and how frames show and persist. Options are read here through rtlab-core's option reader; the
//! readers, scans and hygiene below take typed arguments.

pub(crate) mod convert;
pub(crate) mod expr;
mod frame;
mod hygiene;
mod plot;

use crate::*;
use rhai::plugin::*;
use rhai::Map;
use rtlab_core::values::RichType;

rtlab_core::script_error!(DataError);

pub fn register(module: &mut Module) {
    module.set_custom_type::<LazyJsonl>("LazyFrame");
    // Shown at the REPL as its scan; a scan is a plan over a file, not data, so it does not persist.
    FuncRegistration::new("to_string")
        .set_into_module(module, |l: &mut LazyJsonl| describe_lazy(l));
    FuncRegistration::new("to_debug").set_into_module(module, |l: &mut LazyJsonl| describe_lazy(l));
    combine_with_exported_module!(module, "scan_functions", scan_functions);
    module.set_custom_type::<Frame>("DataFrame");
    FuncRegistration::new("to_string").set_into_module(module, |f: &mut Frame| format!("{}", f.df));
    FuncRegistration::new("to_debug").set_into_module(module, |f: &mut Frame| format!("{}", f.df));
    expr::register(module);
    frame::register(module);
    hygiene::register(module);
    combine_with_exported_module!(module, "io_functions", io_functions);
}

/// `path` resolved against the calling script's workspace.
fn path_of(ctx: &NativeCallContext, path: &str) -> std::path::PathBuf {
    Workspace::of(ctx).resolve(path)
}

fn describe_lazy(l: &LazyJsonl) -> String {
    format!(
        "LazyFrame(scan {}, {} filter(s){})",
        l.path.display(),
        l.filters.len(),
        l.columns
            .as_ref()
            .map(|c| format!(", select {}", c.join(", ")))
            .unwrap_or_default()
    )
}

#[export_module]
mod scan_functions {
    use super::expr::Expr;
    use super::*;
    use rhai::Array;

    /// A lazy scan of a JSONL file: nothing is read until `collect`, `sink_jsonl` or `len`. Filters are
    /// pushed into the scan: each line is parsed only as far as the filters need (the top-level keys
    /// they read), and only the lines that pass are parsed whole, or not at all by `sink_jsonl`, which
    /// copies them byte for byte. For big files and selective filters; the schema of `collect` is
    /// inferred over the kept lines.
    ///
    /// ```rhai
    /// let fsm = scan_jsonl("../../data/v2_sample.jsonl").filter(col("metadata.category") == "fsm");
    /// assert_eq(fsm.collect().len(), load_jsonl("../../data/v2_sample.jsonl").filter(col("metadata.category") == "fsm").len());
    /// ```
    #[rhai_fn(return_raw)]
    pub fn scan_jsonl(ctx: NativeCallContext, path: &str) -> Result<LazyJsonl, Box<EvalAltResult>> {
        Ok(LazyJsonl::new(path_of(&ctx, path)))
    }

    /// Adds a filter to the scan (all filters must hold).
    #[rhai_fn(name = "filter")]
    pub fn lazy_filter(lf: &mut LazyJsonl, condition: Expr) -> LazyJsonl {
        lf.with_filter(condition.0)
    }

    /// Keeps only these columns (names or dotted paths) when collecting: the other keys are never parsed.
    #[rhai_fn(name = "select", return_raw)]
    pub fn lazy_select(
        lf: &mut LazyJsonl,
        columns: Array,
    ) -> Result<LazyJsonl, Box<EvalAltResult>> {
        let mut names = Vec::new();
        for (i, c) in columns.iter().enumerate() {
            if !c.is_string() {
                return Err(format!(
                    "select[{i}] on a LazyFrame must be a column name or dotted path, not a {}",
                    c.type_name()
                )
                .into());
            }
            names.push(c.to_string());
        }
        let mut out = lf.clone();
        out.columns = Some(names);
        Ok(out)
    }

    /// Reads the file and returns the kept rows (and selected columns) as a DataFrame.
    #[rhai_fn(name = "collect", return_raw)]
    pub fn lazy_collect(
        ctx: NativeCallContext,
        lf: &mut LazyJsonl,
    ) -> Result<Frame, Box<EvalAltResult>> {
        Workspace::of(&ctx).note_input(&lf.path);
        Ok(lf.collect()?)
    }

    /// Writes the kept lines to `path` exactly as they are in the source file, atomically, without
    /// parsing them; returns how many.
    ///
    /// ```rhai
    /// let n = scan_jsonl("../../data/v2_sample.jsonl").filter(col("metadata.source") == "synthetic-bug")
    ///     .sink_jsonl("/tmp/rtlab-doc-bugs.jsonl");
    /// assert_eq(load_jsonl("/tmp/rtlab-doc-bugs.jsonl").len(), n);
    /// ```
    #[rhai_fn(name = "sink_jsonl", return_raw)]
    pub fn lazy_sink(
        ctx: NativeCallContext,
        lf: &mut LazyJsonl,
        path: &str,
    ) -> Result<i64, Box<EvalAltResult>> {
        Workspace::of(&ctx).note_input(&lf.path);
        Ok(lf.sink_jsonl(&path_of(&ctx, path))? as i64)
    }

    /// How many lines pass the filters (nothing is copied; a scan whose lines were kept answers at once).
    #[rhai_fn(name = "len", return_raw)]
    pub fn lazy_len(ctx: NativeCallContext, lf: &mut LazyJsonl) -> Result<i64, Box<EvalAltResult>> {
        Workspace::of(&ctx).note_input(&lf.path);
        Ok(lf.scan(false)?.rows as i64)
    }
}

#[export_module]
mod io_functions {
    use super::*;

    /// Loads a JSONL file into a DataFrame. Nested objects become struct columns (reach into them with
    /// `col("metadata.category")`), and the schema is inferred over the whole file, not the first lines.
    ///
    /// A bad line is an error naming `file:line` and the start of the line; see the two-argument form to
    /// skip bad lines. An empty file gives an empty frame.
    ///
    /// ```rhai
    /// let df = load_jsonl("../../data/rtlcoder_sample.jsonl");
    /// assert(df.len() > 100, "the bundled sample has a few hundred rows");
    /// ```
    #[rhai_fn(name = "load_jsonl", return_raw)]
    pub fn load_jsonl_path(
        ctx: NativeCallContext,
        path: &str,
    ) -> Result<Frame, Box<EvalAltResult>> {
        Ok(load_jsonl(
            &Workspace::of(&ctx).resolve_input(path),
            &LoadOptions::default(),
        )?
        .frame)
    }

    /// Loads a JSONL file with options. `#{on_bad_line: "skip"}` skips lines that are not JSON objects
    /// (or not UTF-8) and prints how many and which; `"error"` (the default) stops at the first.
    #[rhai_fn(name = "load_jsonl", return_raw)]
    pub fn load_jsonl_opts(
        ctx: NativeCallContext,
        path: &str,
        options: Map,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let o = rtlab_core::options::Options::new("load_jsonl", &options, &["on_bad_line"])?;
        let skip = match o.string("on_bad_line")? {
            None => false,
            Some(v) if v == "error" => false,
            Some(v) if v == "skip" => true,
            Some(other) => {
                return Err(format!(
                    "load_jsonl: on_bad_line must be \"error\" or \"skip\", not {other:?}"
                )
                .into())
            }
        };
        let loaded = load_jsonl(
            &Workspace::of(&ctx).resolve_input(path),
            &LoadOptions {
                skip_bad_lines: skip,
            },
        )?;
        if !loaded.skipped.is_empty() {
            let shown: Vec<String> = loaded
                .skipped
                .iter()
                .take(10)
                .map(|l| l.to_string())
                .collect();
            let more = if loaded.skipped.len() > 10 {
                ", ..."
            } else {
                ""
            };
            let msg = format!(
                "load_jsonl: skipped {} bad line(s) of {path}: line {}{more}",
                loaded.skipped.len(),
                shown.join(", ")
            );
            Workspace::of(&ctx).emit_line(&msg);
        }
        Ok(loaded.frame)
    }

    /// Writes the frame as JSON lines, nested struct columns as nested objects, atomically.
    ///
    /// ```rhai
    /// let df = from_records([#{instruction: "i", metadata: #{category: "fsm"}}]);
    /// df.save_jsonl("/tmp/rtlab_book_roundtrip.jsonl");
    /// assert_eq(load_jsonl("/tmp/rtlab_book_roundtrip.jsonl").row(0).metadata.category, "fsm");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn save_jsonl(
        ctx: NativeCallContext,
        frame: &mut Frame,
        path: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        Ok(io::save_jsonl(&frame.df, &path_of(&ctx, path))?)
    }

    /// Writes the frame as Parquet, atomically.
    #[rhai_fn(return_raw)]
    pub fn save_parquet(
        ctx: NativeCallContext,
        frame: &mut Frame,
        path: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        Ok(io::save_parquet(&frame.df, &path_of(&ctx, path))?)
    }

    /// Loads a Parquet file.
    #[rhai_fn(return_raw)]
    pub fn load_parquet(ctx: NativeCallContext, path: &str) -> Result<Frame, Box<EvalAltResult>> {
        Ok(Frame::new(io::load_parquet(
            &Workspace::of(&ctx).resolve_input(path),
        )?))
    }

    /// Loads a CSV file with a header row.
    #[rhai_fn(return_raw)]
    pub fn load_csv(ctx: NativeCallContext, path: &str) -> Result<Frame, Box<EvalAltResult>> {
        Ok(Frame::new(io::load_csv(
            &Workspace::of(&ctx).resolve_input(path),
        )?))
    }

    /// Every `*.md` file under `dir` (recursively, sorted by path) as rows `{content, source}`.
    ///
    /// ```rhai
    /// let kb = read_markdown_dir("../../data/knowledge_base");
    /// assert_eq(kb.columns(), ["content", "source"]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn read_markdown_dir(
        ctx: NativeCallContext,
        dir: &str,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        Ok(Frame::new(io::read_markdown_dir(
            &ws.resolve(dir),
            dir,
            &mut |p| ws.note_input(p),
        )?))
    }

    /// The category of a design from keywords in its name or description, as `load_verilog_eval`
    /// names its problems' categories (fsm, arithmetic, counter, shift_register, edge_detect, mux,
    /// gates, other): the first whose keyword the lower-cased text contains. Keywords, not a
    /// classifier: "state" in any sentence makes an fsm.
    ///
    /// ```rhai
    /// assert_eq(problem_category("Prob035_count1to10"), "counter");
    /// assert_eq(problem_category("A 4-bit shift register with a load input"), "shift_register");
    /// assert_eq(problem_category("a priority encoder"), "other");
    /// ```
    pub fn problem_category(text: &str) -> String {
        io::problem_category(text).to_string()
    }

    /// VerilogEval v2 spec-to-rtl problems from a directory of `ProbNNN_name_{prompt.txt,ref.sv,test.sv}`:
    /// rows `{task_id, prompt, ref, test, category}`, sorted by task id. VerilogEval has no categories;
    /// `category` comes from keywords in the problem name (fsm, counter, shift_register, edge_detect,
    /// mux, arithmetic, gates, other).
    ///
    /// ```rhai
    /// let p = load_verilog_eval("../../data/verilog-eval-v2");
    /// assert_eq(p.len(), 156);
    /// assert_eq(p.row(0).task_id, "Prob001_zero");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn load_verilog_eval(
        ctx: NativeCallContext,
        dir: &str,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        load_verilog_eval_dir(&ws, &ws.resolve(dir)).map_err(Into::into)
    }

    /// The number of rows.
    #[rhai_fn(name = "len", pure)]
    pub fn len(frame: &mut Frame) -> i64 {
        frame.df.height() as i64
    }

    /// The first `n` rows.
    #[rhai_fn(name = "head", pure)]
    pub fn head(frame: &mut Frame, n: i64) -> Frame {
        Frame::new(frame.df.head(Some(n.max(0) as usize)))
    }
}

rhai::def_package! {
    /// Datasets: `DataFrame` (polars), `LazyFrame` (`scan_jsonl`), expressions (`col`), `GroupBy`,
    /// plots, and JSONL, Parquet and CSV readers and writers.
    pub DataPackage(module) {
        register(module);
        plot::register(module);
    }
}

/// How the data crate's values show and persist: frames, lazy frames, expressions, plots.
pub fn rich_types() -> Vec<RichType> {
    vec![
        RichType {
            tag: "frame",
            is: |v| v.is::<Frame>(),
            text: |v| {
                v.read_lock::<Frame>()
                    .map(|f| f.df.to_string())
                    .unwrap_or_default()
            },
            html: Some(|v| {
                v.read_lock::<Frame>()
                    .map(|f| frame_html(&f, 50))
                    .unwrap_or_default()
            }),
            // The notebook cache stores frames itself, as Parquet files beside the entry's manifest.
            persist: None,
        },
        RichType {
            tag: "lazy_frame",
            is: |v| v.is::<LazyJsonl>(),
            text: |v| {
                v.read_lock::<LazyJsonl>()
                    .map(|l| describe_lazy(&l))
                    .unwrap_or_default()
            },
            html: None,
            persist: None,
        },
        expr::rich_type(),
        plot::rich_type(),
    ]
}
