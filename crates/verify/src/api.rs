//! The verifier's Rhai functions: `verify(code)`, `verify(code, opts)`, `df.verify(opts)` and
//! `mutants(code, n)`.

use super::batch::{verify_all, Job};
use super::{is_module_name, mutate, verify, Report, VerifyOptions, VERIFY_KEYS};
use crate::VerifyError;
use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};
use rtlab_core::OptionError;
use rtlab_data::Frame;

/// From a Rhai options map; `extra` are keys the caller reads itself (`code` for `df.verify`).
/// Unknown keys and values of the wrong type are errors naming them.
pub(crate) fn verify_options(
    function: &'static str,
    map: &Map,
    extra: &[&str],
) -> Result<VerifyOptions, OptionError> {
    let valid: Vec<&str> = VERIFY_KEYS.iter().chain(extra).copied().collect();
    let opts = rtlab_core::options::Options::new(function, map, &valid)?;
    let top = opts.string("top")?;
    // The top is passed to the tools as an argument: only a module name, never a flag.
    if let Some(t) = &top {
        if !is_module_name(t) {
            return Err(opts.rule(format!(
                "option `top` must be a module name (a Verilog identifier), not {t:?}"
            )));
        }
    }
    let mut o = VerifyOptions {
        top,
        testbench: opts.string("testbench")?,
        reference: opts.string("reference")?,
        spec: opts.string("spec")?,
        ..VerifyOptions::default()
    };
    o.read_timeouts(&opts)?;
    o.read_simulation(&opts)?;
    o.read_stages(&opts)?;
    o.read_weights(&opts)?;
    Ok(o)
}

/// A report as the map scripts read (`verify(...)`'s value, a row of `df.verify`).
pub(crate) fn report_map(report: &Report) -> Map {
    let v = serde_json::to_value(report).unwrap_or_default();
    rtlab_data::json_to_dynamic(v)
        .try_cast::<Map>()
        .unwrap_or_default()
}

/// The result columns `df.verify` adds, in order.
pub const RESULT_COLUMNS: &[&str] = &[
    "score",
    "syntax_ok",
    "synth_ok",
    "all_io_used",
    "unused_inputs",
    "undriven_outputs",
    "lint",
    "sim_status",
    "mismatches",
    "samples",
    "functional",
    "failure_class",
    "errors",
    "stages",
    "skipped",
    "simulator",
];

/// Verifies one design after checking the chosen stages' tools.
fn verify_one(code: &str, opts: &VerifyOptions) -> Result<Map, VerifyError> {
    opts.check_tools(opts.testbench.is_some() || opts.reference.is_some())?;
    Ok(report_map(&verify(code, opts)))
}

/// Per-row values of an option: a column if the frame has one by that name, else the literal for all.
fn per_row(frame: &Frame, value: Option<&str>) -> Result<Vec<Option<String>>, VerifyError> {
    let n = frame.df.height();
    match value {
        None => Ok(vec![None; n]),
        Some(s) => {
            if frame
                .df
                .get_column_names()
                .iter()
                .any(|c| c.as_str() == s.split('.').next().unwrap_or(s))
            {
                Ok(rtlab_data::string_values(frame, s)?)
            } else {
                Ok(vec![Some(s.to_string()); n])
            }
        }
    }
}

/// What `df.verify` reads from a frame: the code column, and for `testbench`, `reference` and `top`
/// a column when the frame has one by that name, else one value for every row.
pub struct FrameInputs<'a> {
    pub code: &'a str,
    pub testbench: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub top: Option<&'a str>,
}

/// Verifies every row of `frame` on all cores, through the workspace store, and returns the frame
/// with the result columns ([`RESULT_COLUMNS`]). The typed core of `df.verify` and `rtlab verify`.
pub fn verify_rows(
    ws: &rtlab_core::Workspace,
    frame: &Frame,
    inputs: &FrameInputs,
    opts: &VerifyOptions,
    executor: &rtlab_slurm::Executor,
) -> Result<Frame, VerifyError> {
    let code = rtlab_data::string_values(frame, inputs.code)?;
    let tbs = per_row(frame, inputs.testbench)?;
    let refs = per_row(frame, inputs.reference)?;
    let tops = per_row(frame, inputs.top)?;
    if let Some((row, t)) = tops.iter().enumerate().find_map(|(i, t)| {
        t.as_ref()
            .filter(|t| !crate::is_module_name(t))
            .map(|t| (i, t))
    }) {
        return Err(VerifyError::BadRow {
            function: "df.verify".into(),
            row,
            problem: format!("`top` must be a module name (a Verilog identifier), not {t:?}"),
        });
    }
    let jobs: Vec<Job> = (0..code.len())
        .map(|i| Job {
            code: code[i].clone().unwrap_or_default(),
            testbench: tbs[i].clone(),
            reference: refs[i].clone(),
            top: tops[i].clone(),
        })
        .collect();
    let shared = ws.store();
    let store = shared.as_ref().map(rtlab_core::store::lock);
    let start = std::time::Instant::now();
    let (reports, stats) = verify_all(ws, &jobs, opts, store.as_deref(), executor)?;
    if let Some(warning) = stats.store_warning(store.as_deref()) {
        eprintln!("{warning}");
    }
    if rtlab_core::cancel_requested() {
        return Err(VerifyError::Cancelled);
    }
    warn_skipped(&reports);
    eprintln!(
        "verify: {} rows, {} from the store, {} verified in {:.1} s{}",
        stats.total,
        stats.cached,
        stats.verified,
        start.elapsed().as_secs_f64(),
        stats.store_notes()
    );
    let records: Array = reports
        .iter()
        .map(|r| {
            let full = report_map(r);
            let mut m = Map::new();
            for c in RESULT_COLUMNS {
                m.insert((*c).into(), full.get(*c).cloned().unwrap_or(Dynamic::UNIT));
            }
            Dynamic::from_map(m)
        })
        .collect();
    let results =
        rtlab_data::from_records(&records, "verify results").map_err(VerifyError::Results)?;
    let mut df = frame.df.clone();
    for c in RESULT_COLUMNS {
        if df.get_column_names().iter().any(|n| n.as_str() == *c) {
            df = df.drop(c).map_err(rtlab_data::DataError::from)?;
        }
    }
    let out = df
        .hstack(results.df.columns())
        .map_err(rtlab_data::DataError::from)?;
    Ok(Frame::new(out))
}

/// One warning line when any row skipped a stage it was asked for, with counts per stage and reason.
fn warn_skipped(reports: &[super::Report]) {
    let mut counts: std::collections::BTreeMap<(super::Stage, String), usize> = Default::default();
    for r in reports {
        for (stage, why) in &r.skipped {
            *counts.entry((*stage, why.clone())).or_default() += 1;
        }
    }
    if counts.is_empty() {
        return;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|((stage, why), n)| format!("{stage} skipped in {n} rows ({why})"))
        .collect();
    eprintln!(
        "warning: verify: {} of {} rows skipped a stage: {}; see the `skipped` column",
        reports.iter().filter(|r| !r.skipped.is_empty()).count(),
        reports.len(),
        parts.join("; ")
    );
}

rtlab_core::script_error!(VerifyError);

pub fn register(module: &mut Module) {
    combine_with_exported_module!(module, "verify_functions", verify_functions);
}

#[export_module]
mod verify_functions {
    use super::*;

    /// Verifies one design with the default stages (syntax, synth, lint) and returns a map: `syntax_ok`,
    /// `synth_ok`, `all_io_used`, `unused_inputs`, `undriven_outputs`, `lint`, `sim_status`,
    /// `functional`, `errors`, `warnings`, `score`, `stages` (those that ran: the score covers exactly
    /// these), `skipped`, `stage_ms`, `tools`. A stage whose tool is not installed is an error naming
    /// the tool and its install command, never left out of the score. See the book's rubric.
    ///
    /// ```rhai
    /// let r = verify("module inv(input a, output y); assign y = ~a; endmodule");
    /// assert(r.syntax_ok && r.all_io_used, "a clean inverter");
    /// assert_eq(r.stages, ["syntax", "synth", "lint"]);
    /// ```
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify_code(code: &str) -> Result<Map, Box<EvalAltResult>> {
        Ok(verify_one(code, &VerifyOptions::default())?)
    }

    /// Verifies with options: `top`, `testbench` (VerilogEval, A7 or RTLLM style), `reference` (a
    /// module to compare against: alone, it gets a differential testbench), `spec`, `stages` (any of
    /// syntax, synth, lint, sim, synth_full, equiv; `syntax` always; default syntax, synth, lint and,
    /// with a testbench or reference, sim), `weights` (syntax, synth, io, lint, functional; the score is
    /// the weighted mean over the chosen stages), `timeouts` (ms per stage: `#{syntax, synth, lint,
    /// sim, synth_full}`, default 30000 each and 60000 for synth_full; `timeout_ms` is `timeouts.sim`),
    /// `diff_cycles`, `seed`. Unknown keys and wrong types are errors.
    ///
    /// ```rhai
    /// let dut = "module TopModule(input a, input b, output y); assign y = a & b; endmodule";
    /// let reference = "module RefModule(input a, input b, output y); assign y = a & b; endmodule";
    /// let r = verify(dut, #{reference: reference});
    /// assert_eq(r.sim_status, "pass");
    /// // Only the stages chosen count: here syntax and simulation.
    /// let quick = verify(dut, #{reference: reference, stages: ["syntax", "sim"], timeouts: #{sim: 5000}});
    /// assert_eq(quick.stages, ["syntax", "sim"]);
    /// assert_eq(quick.score, 1.0);
    /// ```
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify_with(code: &str, options: Map) -> Result<Map, Box<EvalAltResult>> {
        let opts = verify_options("verify", &options, &[])?;
        Ok(verify_one(code, &opts)?)
    }

    /// Verifies every row on all cores (one row more at once than the cores; each row's scratch
    /// directory in memory where `/dev/shm` has room and `TMPDIR` is unset) and adds the result
    /// columns (score, syntax_ok, synth_ok,
    /// all_io_used, unused_inputs, undriven_outputs, lint, sim_status, mismatches, samples, functional,
    /// failure_class, errors, stages, skipped, simulator). `code` names the code column; `testbench`, `reference` and `top` name a
    /// column when the frame has one, else they are one value for every row. Results are cached in the
    /// workspace store: unchanged rows are not verified again (`rtlab run --fresh` verifies them
    /// anew). `executor: slurm(#{...})` runs the rows as a Slurm job array (see `slurm`); the
    /// verdicts are the same as here. The other options are `verify`'s. When a row skipped a stage it
    /// was asked for, one warning line gives the counts; verdicts the store could not save are named
    /// in a warning too.
    ///
    /// ```rhai
    /// let df = from_records([#{output: "module a(input x, output y); assign y = x; endmodule"}]);
    /// let v = df.verify(#{code: "output"});
    /// assert_eq(v.row(0).syntax_ok, true);
    /// ```
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify_frame(
        ctx: NativeCallContext,
        frame: &mut Frame,
        options: Map,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let opts = verify_options("df.verify", &options, &["code", "executor"])?;
        let executor = rtlab_slurm::executor_option(&rtlab_core::options::Options::new(
            "df.verify",
            &options,
            &[crate::VERIFY_KEYS, &["code", "executor"]].concat(),
        )?)?;
        let rule = |rule: String| OptionError::Rule {
            function: "df.verify".into(),
            rule,
        };
        let text = |key: &str| -> Result<Option<String>, OptionError> {
            match options.get(key).filter(|v| !v.is_unit()) {
                None => Ok(None),
                Some(v) if v.is_string() => Ok(Some(v.to_string())),
                Some(v) => Err(rule(format!(
                    "option `{key}` must name a column or give a value (a string), not {v}"
                ))),
            }
        };
        let code = text("code")?
            .ok_or_else(|| rule("pass #{code: \"<column with the Verilog>\"}".into()))?;
        let (testbench, reference, top) = (text("testbench")?, text("reference")?, text("top")?);
        let inputs = FrameInputs {
            code: &code,
            testbench: testbench.as_deref(),
            reference: reference.as_deref(),
            top: top.as_deref(),
        };
        let ws = rtlab_core::Workspace::of(&ctx);
        Ok(verify_rows(&ws, frame, &inputs, &opts, &executor)?)
    }

    /// Renames the declaration `module NAME` to `module NEW_NAME`, and nothing else: an instance or
    /// an identifier that merely contains the name stays as written (not a text replace). For turning
    /// VerilogEval's `RefModule` into the `TopModule` its testbench expects.
    ///
    /// ```rhai
    /// let code = "module RefModule(input a, output y); assign y = a; endmodule\nmodule RefModule_tb; endmodule";
    /// let top = rename_module(code, "RefModule", "TopModule");
    /// assert(top.starts_with("module TopModule(input a"), top);
    /// assert(top.contains("module RefModule_tb;"), top);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn rename_module(
        code: &str,
        name: &str,
        new_name: &str,
    ) -> Result<String, Box<EvalAltResult>> {
        for (what, s) in [("name", name), ("new_name", new_name)] {
            if !crate::is_module_name(s) {
                return Err(
                    format!("rename_module: {what} {s:?} is not a Verilog identifier").into(),
                );
            }
        }
        Ok(crate::stages::rename_module(code, name, new_name))
    }

    /// Up to `n` single-change mutants of a design (operator swaps, dropped assignments, inverted
    /// conditions, changed constants), as maps `{description, code}`.
    ///
    /// ```rhai
    /// let ms = mutants("module m(input a, input b, output y); assign y = a & b; endmodule", 5);
    /// assert(ms.len() >= 2, "at least & → | and dropping the assign");
    /// ```
    pub fn mutants(code: &str, n: i64) -> Array {
        mutate::pick(mutate::mutants(code), n.max(0) as usize)
            .into_iter()
            .map(|m| {
                let mut map = Map::new();
                map.insert("description".into(), m.description.into());
                map.insert("code".into(), m.code.into());
                Dynamic::from_map(map)
            })
            .collect()
    }
}
