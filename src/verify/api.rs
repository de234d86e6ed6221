//! The verifier's Rhai functions: `verify(code)`, `verify(code, opts)`, `df.verify(opts)` and
//! `mutants(code, n)`.

use super::batch::{verify_all, Job};
use super::{mutate, verify, VerifyOptions};
use crate::data::Frame;
use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};

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
];

/// Per-row values of an option: a column if the frame has one by that name, else the literal for all.
fn per_row(frame: &Frame, value: Option<&Dynamic>) -> Result<Vec<Option<String>>, String> {
    let n = frame.df.height();
    match value {
        None => Ok(vec![None; n]),
        Some(v) if v.is_unit() => Ok(vec![None; n]),
        Some(v) => {
            let s = v.to_string();
            if frame
                .df
                .get_column_names()
                .iter()
                .any(|c| c.as_str() == s.split('.').next().unwrap_or(&s))
            {
                crate::data::string_values(frame, &s).map_err(|e| format!("verify: {e}"))
            } else {
                Ok(vec![Some(s); n])
            }
        }
    }
}

pub fn register(engine: &mut rhai::Engine) {
    engine.register_global_module(exported_module!(verify_functions).into());
}

#[export_module]
mod verify_functions {
    use super::*;

    /// Verifies one design with the default stages (syntax, synth, lint) and returns a map: `syntax_ok`,
    /// `synth_ok`, `all_io_used`, `unused_inputs`, `undriven_outputs`, `lint`, `sim_status`,
    /// `functional`, `errors`, `warnings`, `score`, `stage_ms`, `tools`. See the book's rubric.
    ///
    /// ```rhai
    /// let r = verify("module inv(input a, output y); assign y = ~a; endmodule");
    /// assert(r.syntax_ok && r.all_io_used, "a clean inverter");
    /// ```
    #[rhai_fn(name = "verify")]
    pub fn verify_code(code: &str) -> Map {
        verify(code, &VerifyOptions::default()).to_map()
    }

    /// Verifies with options: `top`, `testbench` (VerilogEval, A7 or RTLLM style), `reference` (a
    /// module to compare against: alone, it gets a differential testbench), `spec`, `timeout_ms`,
    /// `stages` (syntax, synth, lint, sim, synth_full), `weights`.
    ///
    /// ```rhai
    /// let dut = "module TopModule(input a, input b, output y); assign y = a & b; endmodule";
    /// let reference = "module RefModule(input a, input b, output y); assign y = a & b; endmodule";
    /// let r = verify(dut, #{reference: reference});
    /// assert_eq(r.sim_status, "pass");
    /// ```
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify_with(code: &str, options: Map) -> Result<Map, Box<EvalAltResult>> {
        let opts = VerifyOptions::from_map(&options)?;
        Ok(verify(code, &opts).to_map())
    }

    /// Verifies every row on all cores and adds the result columns (score, syntax_ok, synth_ok,
    /// all_io_used, unused_inputs, undriven_outputs, lint, sim_status, mismatches, samples, functional,
    /// failure_class, errors). `code` names the code column; `testbench`, `reference` and `top` name a
    /// column when the frame has one, else they are one value for every row. Results are cached in the
    /// workspace store: unchanged rows are not verified again.
    ///
    /// ```rhai
    /// let df = from_records([#{output: "module a(input x, output y); assign y = x; endmodule"}]);
    /// let v = df.verify(#{code: "output"});
    /// assert_eq(v.row(0).syntax_ok, true);
    /// ```
    #[rhai_fn(name = "verify", return_raw)]
    pub fn verify_frame(frame: &mut Frame, options: Map) -> Result<Frame, Box<EvalAltResult>> {
        let code_col = options
            .get("code")
            .map(|c| c.to_string())
            .ok_or("verify: pass #{code: \"<column with the Verilog>\"}")?;
        let opts = VerifyOptions::from_map(&options)?;
        let code =
            crate::data::string_values(frame, &code_col).map_err(|e| format!("verify: {e}"))?;
        let tbs = per_row(frame, options.get("testbench"))?;
        let refs = per_row(frame, options.get("reference"))?;
        let tops = per_row(frame, options.get("top"))?;
        let jobs: Vec<Job> = (0..code.len())
            .map(|i| Job {
                code: code[i].clone().unwrap_or_default(),
                testbench: tbs[i].clone(),
                reference: refs[i].clone(),
                top: tops[i].clone(),
            })
            .collect();
        let store = crate::store::open_workspace();
        let start = std::time::Instant::now();
        let (reports, stats) = verify_all(&jobs, &opts, store.as_ref(), 0);
        if crate::engine::cancel_requested() {
            return Err("cancelled by Ctrl-C (finished rows are cached; rerun to continue)".into());
        }
        eprintln!(
            "verify: {} rows, {} from the store, {} verified in {:.1} s",
            stats.total,
            stats.cached,
            stats.verified,
            start.elapsed().as_secs_f64()
        );
        let records: Array = reports
            .iter()
            .map(|r| {
                let full = r.to_map();
                let mut m = Map::new();
                for c in RESULT_COLUMNS {
                    m.insert((*c).into(), full.get(*c).cloned().unwrap_or(Dynamic::UNIT));
                }
                Dynamic::from_map(m)
            })
            .collect();
        let results = crate::data::from_records(&records, "verify results")?;
        let mut df = frame.df.clone();
        for c in RESULT_COLUMNS {
            if df.get_column_names().iter().any(|n| n.as_str() == *c) {
                df = df.drop(c).map_err(|e| format!("verify: {e}"))?;
            }
        }
        let out = df
            .hstack(results.df.columns())
            .map_err(|e| format!("verify: {e}"))?;
        Ok(Frame::new(out))
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
