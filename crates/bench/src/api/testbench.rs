//! The Rhai side of A7 testbenches: `a7_testbench`, `generate_verified` and the prompts, their
//! option maps read into [`A7Options`] and [`GenerateOptions`], and their results as maps and frames
//! ([`crate::testbench`] does the work).

use super::run::template_option;
use crate::testbench::{self, A7Options, A7Result, GenerateOptions};
use crate::BenchError;
use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};
use rtlab_data::Frame;
use rtlab_llm::Model;

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

fn model_opt(options: &Map, key: &str) -> Result<Model, BenchError> {
    options
        .get(key)
        .and_then(|m| m.read_lock::<Model>().map(|m| m.clone()))
        .ok_or_else(|| BenchError::Testbench(format!("pass `{key}`: a model from llm(#{{...}})")))
}

/// The testbench step's options, from the caller's checked map `o` (`options` is its raw map, for
/// the template, which may name a file).
fn a7_options(
    ws: &rtlab_core::Workspace,
    o: &rtlab_core::options::Options,
    options: &Map,
) -> Result<A7Options, BenchError> {
    let default = A7Options::default();
    Ok(A7Options {
        category: o.string("category")?.unwrap_or(default.category),
        mutants: o
            .int_at_least("mutants", 0)?
            .map_or(default.mutants, |n| n as usize),
        min_killed: o
            .int_at_least("min_killed", 0)?
            .map_or(default.min_killed, |n| n as usize),
        template: template_option(ws, options, "template")?.unwrap_or(default.template),
        executor: rtlab_slurm::executor_option(o)?,
    })
}

/// An A7 result as the map `a7_testbench` returns.
fn result_map(r: A7Result) -> Map {
    let mut m = Map::new();
    m.insert("mutation_score".into(), Dynamic::from(r.mutation_score()));
    m.insert("testbench".into(), r.testbench.into());
    m.insert("passed".into(), r.passed.into());
    m.insert("log".into(), r.log.into());
    m.insert("mutants".into(), Dynamic::from(r.mutants as i64));
    m.insert("killed".into(), Dynamic::from(r.killed as i64));
    m.insert("accepted".into(), r.accepted.into());
    m.insert("reason".into(), r.reason.into());
    m
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
        testbench::a7_prompt(testbench::A7_TEMPLATE, spec, rtl, category)
    }

    /// The prompt `generate_verified` sends the spec model for a category and attempt.
    pub fn spec_prompt(category: &str, attempt: i64) -> String {
        testbench::spec_prompt(category, attempt)
    }

    /// The prompt `generate_verified` sends the RTL model for a spec.
    pub fn rtl_prompt(spec: &str) -> String {
        testbench::rtl_prompt(spec)
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
        let ws = rtlab_core::Workspace::of(&ctx);
        let o = rtlab_core::options::Options::new("a7_testbench", &options, A7_KEYS)?;
        let a7 = a7_options(&ws, &o, &options)?;
        let model = model_opt(&options, "model")?;
        Ok(result_map(testbench::a7_testbench(
            &ws, spec, rtl, &model, &a7,
        )?))
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
        let ws = rtlab_core::Workspace::of(&ctx);
        let o = rtlab_core::options::Options::new("generate_verified", &options, GENERATE_KEYS)?;
        let a7 = a7_options(&ws, &o, &options)?;
        let spec_model = model_opt(&options, "spec_model")?;
        let rtl_model = model_opt(&options, "rtl_model")?;
        let tb_model = model_opt(&options, "tb_model")?;
        let categories = o.map("categories")?.ok_or_else(|| {
            BenchError::Testbench(
                "generate_verified: pass categories: #{fsm_2state: 35, ...}".into(),
            )
        })?;
        let categories = categories
            .iter()
            .map(|(category, target)| {
                let target = target.as_int().map_err(|_| {
                    BenchError::Testbench(format!(
                        "generate_verified: the target of {category} must be an int"
                    ))
                })?;
                Ok((category.to_string(), target.max(0) as usize))
            })
            .collect::<Result<Vec<_>, BenchError>>()?;
        let generate = GenerateOptions {
            categories,
            max_attempts: o.int_at_least("max_attempts", 1)?.unwrap_or(400) as usize,
            spec_model,
            rtl_model,
            tb_model,
            a7,
        };
        let rows: Array = testbench::generate_verified(&ws, &generate)?
            .into_iter()
            .map(|row| {
                let mut m = Map::new();
                m.insert("instruction".into(), row.instruction.into());
                m.insert("input".into(), "".into());
                m.insert("output".into(), row.output.into());
                m.insert("testbench".into(), row.testbench.into());
                m.insert("metadata".into(), rtlab_data::json_to_dynamic(row.metadata));
                Dynamic::from_map(m)
            })
            .collect();
        if rows.is_empty() {
            return Ok(Frame::new(polars::prelude::DataFrame::empty()));
        }
        Ok(rtlab_data::from_records(&rows, "generated rows")?)
    }
}
