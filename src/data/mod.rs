//! Datasets in the stdlib: a polars `DataFrame` wrapped for Rhai, its readers and writers, and the
//! expression API that mirrors polars' Python one.
//!
//! Main types: [`Frame`] (the Rhai `DataFrame`, cheap to clone: polars columns are Arc'd), `Expr`
//! (a polars expression), [`DataError`]. Relative paths resolve against the script's directory.

mod convert;
mod expr;
mod frame_fns;
mod io;

pub use convert::{dynamic_to_json, from_records, json_to_dynamic, to_records};
pub use expr::column;
pub use io::{frame_from_parquet_bytes, frame_to_parquet_bytes, load_jsonl, LoadOptions};

use polars::prelude::DataFrame;
use rhai::plugin::*;
use rhai::{Dynamic, Map};

/// The Rhai-visible DataFrame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub df: DataFrame,
}

impl Frame {
    pub fn new(df: DataFrame) -> Frame {
        Frame { df }
    }

    /// A content hash of the frame (schema and values), stable across processes: the cell cache keys on it.
    pub fn content_hash(&self) -> Result<blake3::Hash, DataError> {
        let bytes = frame_to_ipc_bytes(&self.df)?;
        Ok(blake3::hash(&bytes))
    }
}

/// Errors of the data layer, each naming the file, line, column or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}; the line starts with {start:?} (pass #{{on_bad_line: \"skip\"}} to skip bad lines)")]
    BadLine {
        path: String,
        line: usize,
        reason: String,
        start: String,
    },
    #[error("{0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("{0}")]
    Invalid(String),
}

impl From<DataError> for Box<EvalAltResult> {
    fn from(e: DataError) -> Self {
        e.to_string().into()
    }
}

fn frame_to_ipc_bytes(df: &DataFrame) -> Result<Vec<u8>, DataError> {
    use polars::prelude::{IpcWriter, SerWriter};
    let mut buf = Vec::new();
    let mut df = df.clone();
    IpcWriter::new(&mut buf).finish(&mut df)?;
    Ok(buf)
}

/// A column (dotted struct paths allowed) as strings, whatever its type; nulls are `None`. What the
/// stdlib uses to hand a column of code, prompts or names to Rust.
pub fn string_values(frame: &Frame, path: &str) -> Result<Vec<Option<String>>, DataError> {
    use polars::prelude::{DataType, IntoLazy};
    let df = frame
        .df
        .clone()
        .lazy()
        .select([column(path).cast(DataType::String).alias("v")])
        .collect()
        .map_err(|e| DataError::Invalid(format!("column `{path}`: {e}")))?;
    let ca = df.column("v").and_then(|c| c.str().cloned())?;
    Ok(ca.iter().map(|v| v.map(str::to_string)).collect())
}

/// `string_values` with nulls as empty strings.
pub fn strings(frame: &Frame, path: &str) -> Result<Vec<String>, DataError> {
    Ok(string_values(frame, path)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

/// The display text of rtlab's own Rhai types (DataFrame, plots, ...), or `None` for plain Rhai values.
pub fn display_custom(value: &Dynamic) -> Option<String> {
    if let Some(frame) = value.read_lock::<Frame>() {
        return Some(format!("{}", frame.df));
    }
    if let Some(plot) = value.read_lock::<crate::plot::Plot>() {
        return Some(plot.unicode());
    }
    None
}

/// The SVG text of a plot value, for reports; `None` for other values.
pub fn svg_of(value: &Dynamic) -> Option<String> {
    value
        .read_lock::<crate::plot::Plot>()
        .map(|p| p.svg.clone())
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Frame>("DataFrame");
    engine.register_fn("to_string", |f: &mut Frame| format!("{}", f.df));
    engine.register_fn("to_debug", |f: &mut Frame| format!("{}", f.df));
    expr::register(engine);
    frame_fns::register(engine);
    engine.register_global_module(exported_module!(io_functions).into());
}

fn path_of(path: &str) -> std::path::PathBuf {
    crate::runtime_fns::resolve_path(path)
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
    pub fn load_jsonl_path(path: &str) -> Result<Frame, Box<EvalAltResult>> {
        Ok(load_jsonl(&path_of(path), &LoadOptions::default())?.frame)
    }

    /// Loads a JSONL file with options. `#{on_bad_line: "skip"}` skips lines that are not JSON objects
    /// (or not UTF-8) and prints how many and which; `"error"` (the default) stops at the first.
    #[rhai_fn(name = "load_jsonl", return_raw)]
    pub fn load_jsonl_opts(path: &str, options: Map) -> Result<Frame, Box<EvalAltResult>> {
        let skip = match options.get("on_bad_line").map(|v| v.to_string()) {
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
            &path_of(path),
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
            crate::engine::emit_line(&msg);
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
    pub fn save_jsonl(frame: &mut Frame, path: &str) -> Result<(), Box<EvalAltResult>> {
        Ok(io::save_jsonl(&frame.df, &path_of(path))?)
    }

    /// Writes the frame as Parquet, atomically.
    #[rhai_fn(return_raw)]
    pub fn save_parquet(frame: &mut Frame, path: &str) -> Result<(), Box<EvalAltResult>> {
        Ok(io::save_parquet(&frame.df, &path_of(path))?)
    }

    /// Loads a Parquet file.
    #[rhai_fn(return_raw)]
    pub fn load_parquet(path: &str) -> Result<Frame, Box<EvalAltResult>> {
        Ok(Frame::new(io::load_parquet(&path_of(path))?))
    }

    /// Loads a CSV file with a header row.
    #[rhai_fn(return_raw)]
    pub fn load_csv(path: &str) -> Result<Frame, Box<EvalAltResult>> {
        Ok(Frame::new(io::load_csv(&path_of(path))?))
    }

    /// Every `*.md` file under `dir` (recursively, sorted by path) as rows `{content, source}`.
    ///
    /// ```rhai
    /// let kb = read_markdown_dir("../../data/knowledge_base");
    /// assert_eq(kb.columns(), ["content", "source"]);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn read_markdown_dir(dir: &str) -> Result<Frame, Box<EvalAltResult>> {
        Ok(Frame::new(io::read_markdown_dir(&path_of(dir), dir)?))
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
    pub fn load_verilog_eval(dir: &str) -> Result<Frame, Box<EvalAltResult>> {
        Ok(Frame::new(io::load_verilog_eval(&path_of(dir))?))
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
