//! Testbenches written by a model ("A7", plans/v5_hybrid_a7_plan.md phase 2), accepted only after
//! self-validation: the testbench must pass the RTL it was written for and fail at least `min_killed`
//! of the verifier's mutants of that RTL. A testbench that passes everything proves nothing; this is
//! the check CorrectBench and AutoBench make in their own ways, and most pipelines skip.
//!
//! `generate_verified` is the plan's Task 3.1 loop: spec → RTL → A7 testbench → keep what verifies.

use crate::BenchError;

use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};
use rtlab_data::Frame;
use rtlab_llm::{extract_code, Message, Model};
use rtlab_verify::batch::{verify_all, Job};
use rtlab_verify::{mutate, verify, SimStatus, Stage, VerifyOptions};

const A7_TEMPLATE: &str = include_str!("../prompts/a7_testbench.md");
const SPEC_TEMPLATE: &str = include_str!("../prompts/spec.md");
const RTL_TEMPLATE: &str = include_str!("../prompts/rtl.md");

/// The first module name declared in `rtl`.
fn module_name(rtl: &str) -> String {
    rtl.split("module")
        .skip(1)
        .find_map(|rest| {
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && rest.starts_with(char::is_whitespace)).then_some(name)
        })
        .unwrap_or_else(|| "dut".to_string())
}

/// A prompt template from options: a path to a file, or the text itself; `default` when absent.
/// A file is resolved against `ws` and noted as an input.
pub fn template(
    ws: &rtlab_core::Workspace,
    options: &Map,
    key: &str,
    default: &str,
) -> Result<String, BenchError> {
    match options.get(key).filter(|t| !t.is_unit()) {
        None => Ok(default.to_string()),
        Some(t) if !t.is_string() => Err(BenchError::Testbench(format!(
            "option `{key}` must be a template: a path or the text itself (a string), not {t}"
        ))),
        Some(t) => {
            let t = t.to_string();
            // A path to a template file, or the template text itself.
            let path = ws.resolve(&t);
            if !t.contains('\n') && path.is_file() {
                ws.note_input(&path);
                std::fs::read_to_string(&path).map_err(|e| {
                    BenchError::Testbench(format!("cannot read {}: {e}", path.display()))
                })
            } else {
                Ok(t)
            }
        }
    }
}

pub fn a7_prompt(tpl: &str, spec: &str, rtl: &str, category: &str) -> String {
    tpl.replace("{spec}", spec.trim())
        .replace("{rtl}", rtl.trim())
        .replace("{category}", category)
        .replace("{module_name}", &module_name(rtl))
}

/// The outcome of one A7 testbench.
pub struct A7Result {
    pub testbench: String,
    pub passed: bool,
    pub log: String,
    pub mutants: usize,
    pub killed: usize,
    pub accepted: bool,
    pub reason: String,
}

fn ask(ws: &rtlab_core::Workspace, model: &Model, prompt: &str) -> Result<String, BenchError> {
    let store = ws.store();
    Ok(model
        .answer_all(
            &[(
                vec![Message {
                    role: "user".into(),
                    content: prompt.to_string(),
                }],
                0,
            )],
            store,
        )
        .remove(0)?)
}

/// The options of `a7_testbench`.
const A7_KEYS: &[&str] = &[
    "model",
    "category",
    "mutants",
    "min_killed",
    "template",
    "executor",
];
/// The options of `generate_verified` (the last three are passed on to `a7_testbench`).
const GENERATE_KEYS: &[&str] = &[
    "categories",
    "max_attempts",
    "spec_model",
    "rtl_model",
    "tb_model",
    "mutants",
    "min_killed",
    "template",
    "executor",
];

pub fn a7_testbench_impl(
    ws: &rtlab_core::Workspace,
    spec: &str,
    rtl: &str,
    model: &Model,
    options: &Map,
) -> Result<A7Result, BenchError> {
    // The callers (`a7_testbench`, `generate_verified`) checked the keys against their own lists.
    let o = rtlab_core::options::Options::new(
        "a7_testbench",
        options,
        &[A7_KEYS, GENERATE_KEYS].concat(),
    )?;
    let category = o.string("category")?.unwrap_or_else(|| "FSM".to_string());
    let n_mutants = o.int_at_least("mutants", 0)?.unwrap_or(8) as usize;
    let min_killed = o.int_at_least("min_killed", 0)?.unwrap_or(2) as usize;
    let tpl = template(ws, options, "template", A7_TEMPLATE)?;
    let executor = rtlab_slurm::executor_option(&o)?;
    let answer = ask(ws, model, &a7_prompt(&tpl, spec, rtl, &category))?;
    let tb = extract_code(&answer);
    let sim = VerifyOptions {
        testbench: Some(tb.clone()),
        stages: vec![Stage::Syntax, Stage::Sim],
        ..VerifyOptions::default()
    };
    sim.check_tools(true)?;
    let on_rtl = verify(rtl, &sim);
    let passed = on_rtl.sim_status == SimStatus::Pass;
    let mut log = on_rtl.sim_log.clone();
    if !on_rtl.errors.is_empty() {
        log.push_str(&on_rtl.errors.join("\n"));
    }
    let (compiled, killed) = kill_mutants(ws, rtl, &tb, n_mutants, &executor)?;
    let accepted = passed && killed >= min_killed.min(compiled.max(1));
    let reason = if !passed {
        format!(
            "the testbench does not pass the RTL it was written for ({})",
            on_rtl.sim_status
        )
    } else if !accepted {
        format!("the testbench passes the RTL but fails only {killed} of {compiled} mutants (needs {min_killed})")
    } else {
        format!("passes the RTL and fails {killed} of {compiled} mutants")
    };
    Ok(A7Result {
        testbench: tb,
        passed,
        log,
        mutants: compiled,
        killed,
        accepted,
        reason,
    })
}

/// One attempt of the A7 loop: a spec from the spec model, its RTL from the RTL model, and a
/// testbench for them from the testbench model, judged by the RTL's mutants. `Err` says which step
/// failed; a failed step ends the attempt.
fn a7_attempt(
    ws: &rtlab_core::Workspace,
    category: &str,
    attempt: usize,
    (spec_model, rtl_model, tb_model): (&Model, &Model, &Model),
    options: &Map,
) -> Result<(String, String, A7Result), BenchError> {
    let spec = ask(
        ws,
        spec_model,
        &testbench_functions::spec_prompt(category, attempt as i64),
    )
    .map_err(|e| BenchError::Testbench(format!("spec generation failed: {e}")))?;
    let rtl = ask(ws, rtl_model, &testbench_functions::rtl_prompt(&spec))
        .map(|r| extract_code(&r))
        .map_err(|e| BenchError::Testbench(format!("RTL generation failed: {e}")))?;
    let mut tb_opts = options.clone();
    tb_opts.insert("category".into(), category.to_string().into());
    let verdict = a7_testbench_impl(ws, &spec, &rtl, tb_model, &tb_opts)
        .map_err(|e| BenchError::Testbench(format!("A7 generation failed: {e}")))?;
    Ok((spec, rtl, verdict))
}

/// An accepted attempt as a dataset row, with the V5 plan's metadata; `a7_model` is the model that
/// really wrote the testbench.
fn verified_row(category: &str, spec: &str, rtl: String, r: A7Result, tb_model: &Model) -> Dynamic {
    let meta = serde_json::json!({
        "source": "v5_a7_verified",
        "category": category,
        "functional": "verified",
        "testbench_type": "a7_llm_generated",
        "sim_passed": true,
        "compile_success": true,
        "a7_model": tb_model.cfg.model,
        "mutation_score": if r.mutants > 0 { r.killed as f64 / r.mutants as f64 } else { 0.0 },
    });
    let mut row = Map::new();
    row.insert("instruction".into(), spec.trim().to_string().into());
    row.insert("input".into(), "".into());
    row.insert("output".into(), rtl.into());
    row.insert("testbench".into(), r.testbench.into());
    row.insert("metadata".into(), rtlab_data::json_to_dynamic(meta));
    Dynamic::from_map(row)
}

/// Runs the testbench `tb` against up to `n_mutants` mutants of `rtl`: how many mutants compiled, and
/// how many of those it kills (a testbench "kills" a mutant when it does not pass it).
fn kill_mutants(
    ws: &rtlab_core::Workspace,
    rtl: &str,
    tb: &str,
    n_mutants: usize,
    executor: &rtlab_slurm::Executor,
) -> Result<(usize, usize), BenchError> {
    let mutants = if n_mutants == 0 {
        Vec::new()
    } else {
        mutate::pick(mutate::mutants(rtl), n_mutants)
    };
    let jobs: Vec<Job> = mutants
        .iter()
        .map(|m| Job {
            code: m.code.clone(),
            testbench: Some(tb.to_string()),
            reference: None,
            top: None,
        })
        .collect();
    let shared = ws.store();
    let store = shared.as_ref().map(rtlab_core::store::lock);
    let (reports, _) = verify_all(
        ws,
        &jobs,
        &VerifyOptions {
            stages: vec![Stage::Syntax, Stage::Sim],
            ..VerifyOptions::default()
        },
        store.as_deref(),
        executor,
    )?;
    let compiled: Vec<_> = reports.iter().filter(|r| r.syntax_ok).collect();
    let killed = compiled
        .iter()
        .filter(|r| r.sim_status != SimStatus::Pass)
        .count();
    Ok((compiled.len(), killed))
}

fn model_opt(options: &Map, key: &str) -> Result<Model, BenchError> {
    options
        .get(key)
        .and_then(|m| m.read_lock::<Model>().map(|m| m.clone()))
        .ok_or_else(|| BenchError::Testbench(format!("pass `{key}`: a model from llm(#{{...}})")))
}

pub fn register(module: &mut Module) {
    combine_with_exported_module!(module, "testbench_functions", testbench_functions);
}

#[export_module]
mod testbench_functions {
    use super::*;

    /// The A7 prompt for a spec and its RTL, from the editable template `crates/bench/prompts/a7_testbench.md`
    /// (or `template`, a path or the text, in the options of `a7_testbench`).
    pub fn a7_prompt(spec: &str, rtl: &str, category: &str) -> String {
        super::a7_prompt(A7_TEMPLATE, spec, rtl, category)
    }

    /// The prompt `generate_verified` sends the spec model for a category and attempt.
    pub fn spec_prompt(category: &str, attempt: i64) -> String {
        SPEC_TEMPLATE
            .replace("{category}", category)
            .replace("{attempt}", &attempt.to_string())
    }

    /// The prompt `generate_verified` sends the RTL model for a spec.
    pub fn rtl_prompt(spec: &str) -> String {
        RTL_TEMPLATE.replace("{spec}", spec.trim())
    }

    /// Asks `model` for a testbench of `rtl` (the V5 plan's A7 prompt), extracts its code block, runs it
    /// on the RTL and on mutants of it. Options: `model` (required), `category`, `mutants` (8),
    /// `min_killed` (2), `template`, `executor` (where the mutants run: `slurm(#{...})`). Returns `{testbench, passed, log, mutants, killed, mutation_score,
    /// accepted, reason}`: accepted only when the testbench passes the RTL and fails at least
    /// `min_killed` mutants.
    #[rhai_fn(return_raw)]
    pub fn a7_testbench(
        ctx: NativeCallContext,
        spec: &str,
        rtl: &str,
        options: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        rtlab_core::options::Options::new("a7_testbench", &options, A7_KEYS)?;
        let model = model_opt(&options, "model")?;
        let ws = rtlab_core::Workspace::of(&ctx);
        let r = a7_testbench_impl(&ws, spec, rtl, &model, &options)?;
        let mut m = Map::new();
        m.insert("testbench".into(), r.testbench.into());
        m.insert("passed".into(), r.passed.into());
        m.insert("log".into(), r.log.into());
        m.insert("mutants".into(), Dynamic::from(r.mutants as i64));
        m.insert("killed".into(), Dynamic::from(r.killed as i64));
        m.insert(
            "mutation_score".into(),
            Dynamic::from(if r.mutants > 0 {
                r.killed as f64 / r.mutants as f64
            } else {
                0.0
            }),
        );
        m.insert("accepted".into(), r.accepted.into());
        m.insert("reason".into(), r.reason.into());
        Ok(m)
    }

    /// The V5 plan's Task 3.1 loop. Options: `categories` (a map category → target count),
    /// `max_attempts` (total, shared evenly by the categories), `spec_model`, `rtl_model`, `tb_model`,
    /// and `a7_testbench`'s `mutants`/`min_killed`. Prints per-category progress and pass rates; returns
    /// the accepted rows `{instruction, input, output, testbench, metadata: {...}}` in the plan's format.
    #[rhai_fn(return_raw)]
    pub fn generate_verified(
        ctx: NativeCallContext,
        options: Map,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let o = rtlab_core::options::Options::new("generate_verified", &options, GENERATE_KEYS)?;
        let ws = rtlab_core::Workspace::of(&ctx);
        let spec_model = model_opt(&options, "spec_model")?;
        let rtl_model = model_opt(&options, "rtl_model")?;
        let tb_model = model_opt(&options, "tb_model")?;
        let categories = o.map("categories")?.ok_or_else(|| {
            BenchError::Testbench(
                "generate_verified: pass categories: #{fsm_2state: 35, ...}".into(),
            )
        })?;
        let max_attempts = o.int_at_least("max_attempts", 1)?.unwrap_or(400) as usize;
        let per_cat = (max_attempts / categories.len().max(1)).max(1);
        let mut rows = Array::new();
        for (category, target) in categories.iter() {
            let target = target
                .as_int()
                .map_err(|_| {
                    BenchError::Testbench(format!(
                        "generate_verified: the target of {category} must be an int"
                    ))
                })?
                .max(0) as usize;
            ws.emit_line(&format!(
                "{category} (target {target}, at most {per_cat} attempts)"
            ));
            let (mut passed, mut attempts) = (0usize, 0usize);
            while passed < target && attempts < per_cat {
                if rtlab_core::cancel_requested() {
                    return Err(BenchError::Testbench("generate_verified: cancelled by Ctrl-C (model answers so far are recorded)".into()).into());
                }
                attempts += 1;
                let models = (&spec_model, &rtl_model, &tb_model);
                match a7_attempt(&ws, category.as_str(), attempts, models, &options) {
                    Err(step_failed) => {
                        ws.emit_line(&format!("  [{attempts}] {step_failed}"));
                    }
                    Ok((spec, rtl, r)) if r.accepted => {
                        passed += 1;
                        ws.emit_line(&format!(
                            "  [{attempts}] ✅ accepted ({passed}/{target}): {}",
                            r.reason
                        ));
                        rows.push(verified_row(category.as_str(), &spec, rtl, r, &tb_model));
                    }
                    Ok((_, _, r)) => {
                        ws.emit_line(&format!("  [{attempts}] ❌ rejected: {}", r.reason));
                    }
                }
            }
            let pct = if attempts > 0 {
                100.0 * passed as f64 / attempts as f64
            } else {
                0.0
            };
            ws.emit_line(&format!("{category}: {passed}/{target} accepted in {attempts} attempts (pass rate {pct:.0}%)"));
        }
        if rows.is_empty() {
            return Ok(Frame::new(polars::prelude::DataFrame::empty()));
        }
        Ok(rtlab_data::from_records(&rows, "generated rows")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_names_the_module_and_fills_the_template() {
        let p = a7_prompt(
            A7_TEMPLATE,
            "a 2-state FSM",
            "module toggle_fsm(input clk); endmodule",
            "fsm_2state",
        );
        assert!(p.contains("toggle_fsm dut (...);"));
        assert!(p.contains("a 2-state FSM"));
        assert!(p.contains("Final line MUST be either \"TEST PASSED\" or \"TEST FAILED\""));
        for placeholder in ["{spec}", "{rtl}", "{category}", "{module_name}"] {
            assert!(!p.contains(placeholder), "{placeholder} left unfilled");
        }
    }
}
