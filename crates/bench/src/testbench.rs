//! Testbenches written by a model ("A7", plans/v5_hybrid_a7_plan.md phase 2), accepted only after
//! self-validation: the testbench must pass the RTL it was written for and fail at least `min_killed`
//! of the verifier's mutants of that RTL. A testbench that passes everything proves nothing; this is
//! the check CorrectBench and AutoBench make in their own ways, and most pipelines skip.
//!
//! `generate_verified` is the plan's Task 3.1 loop: spec → RTL → A7 testbench → keep what verifies.

use crate::BenchError;

use rtlab_llm::{extract_code, Message, Model};
use rtlab_verify::batch::{verify_all, Job};
use rtlab_verify::{mutate, verify, SimStatus, Stage, VerifyOptions};

pub(crate) const A7_TEMPLATE: &str = include_str!("../prompts/a7_testbench.md");
pub(crate) const SPEC_TEMPLATE: &str = include_str!("../prompts/spec.md");
pub(crate) const RTL_TEMPLATE: &str = include_str!("../prompts/rtl.md");

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

/// What `a7_testbench` is asked to do besides the spec, the RTL and the model.
#[derive(Clone, Debug)]
pub struct A7Options {
    /// The category the prompt names (default "FSM").
    pub category: String,
    /// How many mutants of the RTL the testbench must face (default 8).
    pub mutants: usize,
    /// How many of them it must fail to be accepted (default 2).
    pub min_killed: usize,
    /// The prompt template's text (default `prompts/a7_testbench.md`).
    pub template: String,
    /// Where the mutants are simulated.
    pub executor: rtlab_slurm::Executor,
}

impl Default for A7Options {
    fn default() -> Self {
        A7Options {
            category: "FSM".to_string(),
            mutants: 8,
            min_killed: 2,
            template: A7_TEMPLATE.to_string(),
            executor: rtlab_slurm::Executor::Local,
        }
    }
}

/// What `generate_verified` is asked to do: the V5 plan's Task 3.1 loop.
pub struct GenerateOptions {
    /// Each category and how many accepted rows it wants.
    pub categories: Vec<(String, usize)>,
    /// Attempts in all, shared evenly by the categories.
    pub max_attempts: usize,
    pub spec_model: Model,
    pub rtl_model: Model,
    pub tb_model: Model,
    /// The testbench step's options (its category is each category's in turn).
    pub a7: A7Options,
}

/// An accepted attempt as a dataset row, in the V5 plan's format.
pub struct VerifiedRow {
    pub instruction: String,
    pub output: String,
    pub testbench: String,
    /// source, category, functional, testbench_type, sim_passed, compile_success, a7_model,
    /// mutation_score.
    pub metadata: serde_json::Value,
}

impl A7Result {
    /// The share of the compiled mutants the testbench kills (0 with none).
    pub fn mutation_score(&self) -> f64 {
        if self.mutants > 0 {
            self.killed as f64 / self.mutants as f64
        } else {
            0.0
        }
    }
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

/// Asks `model` for a testbench of `rtl`, and judges it by running it on the RTL and its mutants.
pub fn a7_testbench(
    ws: &rtlab_core::Workspace,
    spec: &str,
    rtl: &str,
    model: &Model,
    options: &A7Options,
) -> Result<A7Result, BenchError> {
    let (n_mutants, min_killed) = (options.mutants, options.min_killed);
    let prompt = a7_prompt(&options.template, spec, rtl, &options.category);
    let answer = ask(ws, model, &prompt)?;
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
    let (compiled, killed) = kill_mutants(ws, rtl, &tb, n_mutants, &options.executor)?;
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
    options: &GenerateOptions,
) -> Result<(String, String, A7Result), BenchError> {
    let spec = ask(
        ws,
        &options.spec_model,
        &spec_prompt(category, attempt as i64),
    )
    .map_err(|e| BenchError::Testbench(format!("spec generation failed: {e}")))?;
    let rtl = ask(ws, &options.rtl_model, &rtl_prompt(&spec))
        .map(|r| extract_code(&r))
        .map_err(|e| BenchError::Testbench(format!("RTL generation failed: {e}")))?;
    let a7 = A7Options {
        category: category.to_string(),
        ..options.a7.clone()
    };
    let verdict = a7_testbench(ws, &spec, &rtl, &options.tb_model, &a7)
        .map_err(|e| BenchError::Testbench(format!("A7 generation failed: {e}")))?;
    Ok((spec, rtl, verdict))
}

/// The V5 plan's Task 3.1 loop: for each category, attempts until its target is accepted or its
/// share of `max_attempts` is spent, printing each attempt and each category's pass rate.
pub fn generate_verified(
    ws: &rtlab_core::Workspace,
    options: &GenerateOptions,
) -> Result<Vec<VerifiedRow>, BenchError> {
    let per_cat = (options.max_attempts / options.categories.len().max(1)).max(1);
    let mut rows = Vec::new();
    for (category, target) in &options.categories {
        let target = *target;
        ws.emit_line(&format!(
            "{category} (target {target}, at most {per_cat} attempts)"
        ));
        let (mut passed, mut attempts) = (0usize, 0usize);
        while passed < target && attempts < per_cat {
            if rtlab_core::cancel_requested() {
                return Err(BenchError::Testbench(
                    "generate_verified: cancelled by Ctrl-C (model answers so far are recorded)"
                        .into(),
                ));
            }
            attempts += 1;
            match a7_attempt(ws, category, attempts, options) {
                Err(step_failed) => {
                    ws.emit_line(&format!("  [{attempts}] {step_failed}"));
                }
                Ok((spec, rtl, r)) if r.accepted => {
                    passed += 1;
                    ws.emit_line(&format!(
                        "  [{attempts}] ✅ accepted ({passed}/{target}): {}",
                        r.reason
                    ));
                    rows.push(verified_row(category, &spec, rtl, r, &options.tb_model));
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
        ws.emit_line(&format!(
            "{category}: {passed}/{target} accepted in {attempts} attempts (pass rate {pct:.0}%)"
        ));
    }
    Ok(rows)
}

/// An accepted attempt as a dataset row, with the V5 plan's metadata; `a7_model` is the model that
/// really wrote the testbench.
fn verified_row(
    category: &str,
    spec: &str,
    rtl: String,
    r: A7Result,
    tb_model: &Model,
) -> VerifiedRow {
    let metadata = serde_json::json!({
        "source": "v5_a7_verified",
        "category": category,
        "functional": "verified",
        "testbench_type": "a7_llm_generated",
        "sim_passed": true,
        "compile_success": true,
        "a7_model": tb_model.cfg.model,
        "mutation_score": r.mutation_score(),
    });
    VerifiedRow {
        instruction: spec.trim().to_string(),
        output: rtl,
        testbench: r.testbench,
        metadata,
    }
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
