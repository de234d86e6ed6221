//! The benchmark crate's Rhai surface: `benchmark`, `runs`, `compare`, `expect`, the metrics,
//! `judge`, `preference_pairs` and the package. It reads run records and option maps (Rhai values)
//! and hands typed values to the benchmark ([`crate::run`]), the statistics ([`crate::stats`]) and
//! the metrics ([`crate::metrics`]).

use crate::BenchError;

use crate::*;
use polars::prelude::*;
use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};
use rtlab_core::Workspace;
use rtlab_data::{strings, Frame};
use rtlab_llm::Model;
use std::collections::BTreeMap;

mod judge_options;
pub mod run;
mod sweep;
mod testbench;

/// Category → functional rate, from a run map or a recorded run id.
fn categories_of(ws: &Workspace, run: &Dynamic) -> Result<(String, CategoryMetrics), BenchError> {
    let metrics: serde_json::Value = if let Some(m) = run.read_lock::<Map>() {
        let frame = m
            .get("categories")
            .and_then(|c| c.read_lock::<Frame>().map(|f| f.clone()))
            .ok_or_else(|| BenchError::Input("a run map must hold `categories`".into()))?;
        let recs = rtlab_data::to_records(&frame)?;
        let mut cats = serde_json::Map::new();
        for r in recs {
            let json = rtlab_data::dynamic_to_json(&r)?;
            if let Some(c) = json.get("category").and_then(|c| c.as_str()) {
                cats.insert(c.to_string(), json.clone());
            }
        }
        let name = m.get("name").map(|n| n.to_string()).unwrap_or_default();
        return Ok((
            name,
            cats.into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        v.as_object()
                            .map(|o| {
                                o.iter()
                                    .filter_map(|(a, b)| b.as_f64().map(|x| (a.clone(), x)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect(),
        ));
    } else if let Ok(id) = run.as_int() {
        let store = ws
            .store()
            .ok_or_else(|| BenchError::Input("the workspace store cannot be opened".into()))?;
        let store = rtlab_core::store::lock(&store);
        let row = store
            .runs()?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| BenchError::Input(format!("no run with id {id}; runs() lists them")))?;
        let mut v: serde_json::Value = serde_json::from_str(&row.metrics)?;
        v["name"] = serde_json::json!(row.name);
        v
    } else {
        return Err(BenchError::Input(
            "compare: a run is the map benchmark() returns, or a run id from runs()".into(),
        ));
    };
    let name = metrics
        .get("name")
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let cats = metrics
        .get("categories")
        .and_then(|c| c.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_object()
                            .map(|m| {
                                m.iter()
                                    .filter_map(|(a, b)| b.as_f64().map(|x| (a.clone(), x)))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((name, cats))
}

fn summary_of(run: &Dynamic) -> Result<BTreeMap<String, f64>, BenchError> {
    if let Some(m) = run.read_lock::<Map>() {
        let s = m
            .get("summary")
            .ok_or_else(|| BenchError::Input("a run map must hold `summary`".into()))?;
        let json = rtlab_data::dynamic_to_json(s)?;
        return Ok(json
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                    .collect()
            })
            .unwrap_or_default());
    }
    Err(BenchError::Input(
        "expect: pass the map benchmark() returns".into(),
    ))
}

/// One problem's result in a run: passing samples `c` of `n`, and the shares of its samples that
/// compile, synthesize and use every port (None in runs recorded before rtlab kept them).
#[derive(Clone, Copy)]
struct ProblemResult {
    c: f64,
    n: f64,
    stages: Option<[f64; 3]>,
}

/// The per-problem stage metrics a paired test can take besides pass@k.
const STAGE_METRICS: [&str; 3] = ["syntax", "synth", "all_io_used"];

/// Per problem: task_id → its result, from a run map's `problems` frame or a recorded run's
/// metrics.
fn problems_of(
    ws: &Workspace,
    run: &Dynamic,
    which: &str,
) -> Result<BTreeMap<String, ProblemResult>, BenchError> {
    let json: serde_json::Value = if let Some(m) = run.read_lock::<Map>() {
        let frame = m
            .get("problems")
            .and_then(|c| c.read_lock::<Frame>().map(|f| f.clone()))
            .ok_or_else(|| BenchError::Input(format!("compare: run {which} has no `problems` frame; pass the map benchmark() returns, or a run id")))?;
        let mut out = serde_json::Map::new();
        for r in rtlab_data::to_records(&frame)? {
            let row = rtlab_data::dynamic_to_json(&r)?;
            if let (Some(id), Some(c), Some(n)) = (
                row["task_id"].as_str(),
                row["c"].as_f64(),
                row["n"].as_f64(),
            ) {
                let mut v = vec![serde_json::json!(c), serde_json::json!(n)];
                v.extend(STAGE_METRICS.iter().filter_map(|m| row.get(*m).cloned()));
                out.insert(id.to_string(), serde_json::Value::Array(v));
            }
        }
        serde_json::Value::Object(out)
    } else if let Ok(id) = run.as_int() {
        let store = ws
            .store()
            .ok_or_else(|| BenchError::Input("the workspace store cannot be opened".into()))?;
        let store = rtlab_core::store::lock(&store);
        let row = store
            .runs()?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| {
                BenchError::Input(format!("compare: no run with id {id}; runs() lists them"))
            })?;
        let metrics: serde_json::Value = serde_json::from_str(&row.metrics)?;
        metrics.get("problems").cloned().ok_or_else(|| {
            BenchError::Input(format!("compare: run {id} was recorded before rtlab kept per-problem results; benchmark it again for a paired test"))
        })?
    } else {
        return Err(BenchError::Input(format!(
            "compare: run {which} is the map benchmark() returns, or a run id from runs()"
        )));
    };
    Ok(json
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| {
                    let stage = |i: usize| v.get(2 + i).and_then(|x| x.as_f64());
                    let stages = match (stage(0), stage(1), stage(2)) {
                        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
                        _ => None,
                    };
                    let result = ProblemResult {
                        c: v[0].as_f64()?,
                        n: v[1].as_f64()?,
                        stages,
                    };
                    Some((k.clone(), result))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// `compare`'s test options, checked.
struct PairedOptions {
    test: String,
    metric: String,
    /// The k of the pass@k metric.
    k: usize,
    confidence: f64,
    resamples: usize,
    seed: u64,
}

fn paired_options(options: &Map) -> Result<PairedOptions, BenchError> {
    let o = rtlab_core::options::Options::new(
        "compare",
        options,
        &["test", "metric", "resamples", "confidence", "seed"],
    )?;
    let test = o
        .string("test")?
        .unwrap_or_else(|| "paired_bootstrap".into());
    if test != "paired_bootstrap" && test != "mcnemar" {
        return Err(BenchError::Input(format!(
            "compare: test {test:?}: use \"paired_bootstrap\" or \"mcnemar\""
        )));
    }
    let metric = o.string("metric")?.unwrap_or_else(|| "pass@1".into());
    let k: usize = match metric.strip_prefix("pass@").map(str::parse) {
        Some(Ok(k)) if k >= 1 => k,
        _ if STAGE_METRICS.contains(&metric.as_str()) => 0,
        _ => {
            return Err(BenchError::Input(format!(
                "compare: metric {metric:?}: use \"pass@K\" (as \"pass@1\"), \"syntax\", \"synth\" or \"all_io_used\""
            )))
        }
    };
    let confidence = o.float("confidence")?.unwrap_or(0.95);
    if !(0.5..1.0).contains(&confidence) {
        return Err(BenchError::Input(format!(
            "compare: confidence must be in [0.5, 1), got {confidence}"
        )));
    }
    let resamples = o.float("resamples")?.unwrap_or(10_000.0);
    if resamples < 100.0 || resamples.fract() != 0.0 {
        return Err(BenchError::Input(format!(
            "compare: resamples must be a whole number ≥ 100, got {resamples}"
        )));
    }
    Ok(PairedOptions {
        test,
        metric,
        k,
        confidence,
        resamples: resamples as usize,
        seed: o.float("seed")?.unwrap_or(0.0).max(0.0) as u64,
    })
}

/// A paired significance test of run B against run A over the problems both ran.
fn paired_test(
    ws: &Workspace,
    run_a: &Dynamic,
    run_b: &Dynamic,
    options: &Map,
) -> Result<Map, BenchError> {
    let o = paired_options(options)?;
    let (a, b) = (problems_of(ws, run_a, "A")?, problems_of(ws, run_b, "B")?);
    let shared: Vec<&String> = a.keys().filter(|id| b.contains_key(*id)).collect();
    if shared.len() != a.len() || shared.len() != b.len() || shared.is_empty() {
        return Err(BenchError::Input(format!(
            "compare: a paired test needs the same problems in both runs: A has {}, B has {}, {} shared; benchmark both on the same frame",
            a.len(), b.len(), shared.len()
        )));
    }
    let stage = STAGE_METRICS.iter().position(|m| *m == o.metric);
    let value = |r: ProblemResult| match stage {
        Some(i) => r.stages.map_or(f64::NAN, |s| s[i]),
        None => pass_at_k(r.n as usize, r.c as usize, o.k),
    };
    if let Some(id) = shared
        .iter()
        .find(|id| value(a[**id]).is_nan() || value(b[**id]).is_nan())
    {
        return Err(BenchError::Input(match stage {
            Some(_) => format!(
                "compare: {id} has no per-problem {} in one of the runs (recorded before rtlab kept it); benchmark it again",
                o.metric
            ),
            None => format!(
                "compare: {} needs at least {} samples per problem; {id} has fewer",
                o.metric, o.k
            ),
        }));
    }
    let result = if o.test == "mcnemar" {
        // Pass/fail per problem: the one sample when n = 1, else "solved" (some sample passes).
        let solved = |run: &BTreeMap<String, ProblemResult>| -> Vec<bool> {
            shared.iter().map(|id| run[*id].c > 0.0).collect()
        };
        stats::mcnemar(&solved(&a), &solved(&b), o.confidence)
    } else {
        let xs: Vec<f64> = shared.iter().map(|id| value(a[*id])).collect();
        let ys: Vec<f64> = shared.iter().map(|id| value(b[*id])).collect();
        let r = stats::Resampling {
            resamples: o.resamples,
            confidence: o.confidence,
            seed: o.seed,
        };
        stats::paired_bootstrap(&xs, &ys, &r)
    };
    Ok(paired_map(&o, shared.len(), &result))
}

/// What `compare(a, b, #{test})` returns.
fn paired_map(o: &PairedOptions, problems: usize, result: &stats::Paired) -> Map {
    let mut m = Map::new();
    m.insert("test".into(), o.test.clone().into());
    let metric = if o.test == "mcnemar" {
        "solved"
    } else {
        o.metric.as_str()
    };
    m.insert("metric".into(), metric.into());
    m.insert("problems".into(), Dynamic::from(problems as i64));
    m.insert("a".into(), Dynamic::from(result.a));
    m.insert("b".into(), Dynamic::from(result.b));
    m.insert("delta".into(), Dynamic::from(result.delta));
    let relative = if result.a > 0.0 {
        result.delta / result.a
    } else {
        f64::NAN
    };
    m.insert("relative".into(), Dynamic::from(relative));
    m.insert("ci_low".into(), Dynamic::from(result.ci.0));
    m.insert("ci_high".into(), Dynamic::from(result.ci.1));
    m.insert("confidence".into(), Dynamic::from(o.confidence));
    m.insert("p_value".into(), Dynamic::from(result.p_value));
    if let Some((a_only, b_only)) = result.discordant {
        m.insert("a_only".into(), Dynamic::from(a_only as i64));
        m.insert("b_only".into(), Dynamic::from(b_only as i64));
    }
    m
}

/// `expect` on what `compare(a, b, #{test})` returned: `p_value` is a ceiling (p < target), every
/// other key (`delta`, `relative`, `b`, ...) a floor.
fn expect_comparison(ws: &Workspace, comparison: &Map, criteria: &Map) -> Result<bool, BenchError> {
    let mut all = true;
    for (key, target) in criteria.iter() {
        let target = target
            .as_float()
            .or_else(|_| target.as_int().map(|i| i as f64))
            .map_err(|_| BenchError::Input(format!("expect: target of {key} must be a number")))?;
        let actual = comparison.get(key.as_str()).and_then(|v| {
            v.as_float()
                .ok()
                .or_else(|| v.as_int().ok().map(|i| i as f64))
        });
        let (holds, line) = match actual {
            Some(a) if a.is_nan() => (
                false,
                format!("❌ {key}: NaN is not a number (target {target})"),
            ),
            None => (
                false,
                format!("❌ {key}: not in this comparison (target {target})"),
            ),
            Some(a) if key.as_str() == "p_value" => (
                a < target,
                format!(
                    "{} p_value: {a:.4} {} {target}",
                    if a < target { "✅" } else { "❌" },
                    if a < target { "<" } else { "≥" }
                ),
            ),
            Some(a) => (
                a >= target,
                format!(
                    "{} {key}: {a:.3} {} {target}",
                    if a >= target { "✅" } else { "❌" },
                    if a >= target { "≥" } else { "<" }
                ),
            ),
        };
        all &= holds;
        ws.emit_line(&line);
    }
    Ok(all)
}

/// The strings of an array, for a metric; an element that is not a string is named by its index.
fn texts(function: &str, what: &str, values: &Array) -> Result<Vec<String>, BenchError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.clone()
                .into_immutable_string()
                .map(|s| s.to_string())
                .map_err(|t| {
                    BenchError::Input(format!("{function}: {what}[{i}] is {t}, not a string"))
                })
        })
        .collect()
}

/// Hypotheses and references, one each, as two arrays of strings.
fn paired_texts(
    function: &str,
    hypotheses: &Array,
    references: &Array,
) -> Result<(Vec<String>, Vec<String>), BenchError> {
    let (h, r) = (
        texts(function, "hypotheses", hypotheses)?,
        texts(function, "references", references)?,
    );
    if h.len() != r.len() {
        return Err(BenchError::Input(format!(
            "{function}: {} hypotheses but {} references; pass one reference per hypothesis, in the same order",
            h.len(),
            r.len()
        )));
    }
    if h.is_empty() {
        return Err(BenchError::Input(format!(
            "{function}: no hypotheses: a corpus score needs at least one pair"
        )));
    }
    Ok((h, r))
}

/// Two columns of a frame as hypotheses and references (nulls are refused by row).
fn column_texts(
    function: &str,
    frame: &Frame,
    hyp_col: &str,
    ref_col: &str,
) -> Result<(Vec<String>, Vec<String>), BenchError> {
    let column = |name: &str| -> Result<Vec<String>, BenchError> {
        let values = rtlab_data::string_values(frame, name)
            .map_err(|e| BenchError::Input(format!("{function}: column {name:?}: {e}")))?;
        values
            .into_iter()
            .enumerate()
            .map(|(row, v)| {
                v.ok_or_else(|| {
                    BenchError::Input(format!("{function}: column {name:?} is null at row {row}"))
                })
            })
            .collect()
    };
    let (h, r) = (column(hyp_col)?, column(ref_col)?);
    if h.is_empty() {
        return Err(BenchError::Input(format!(
            "{function}: the frame has no rows: a corpus score needs at least one pair"
        )));
    }
    Ok((h, r))
}

rtlab_core::script_error!(BenchError);

pub fn register(module: &mut Module) {
    combine_with_exported_module!(module, "bench_functions", bench_functions);
}

#[export_module]
mod bench_functions {
    use super::*;

    /// The unbiased pass@k estimator, 1 − C(n−c, k)/C(n, k), for n samples of which c pass.
    ///
    /// ```rhai
    /// assert((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12, "3 of 10 pass: pass@1 is 0.3");
    /// assert_eq(pass_at_k(10, 0, 5), 0.0);
    /// assert_eq(pass_at_k(10, 8, 5), 1.0);
    /// ```
    pub fn pass_at_k(n: i64, c: i64, k: i64) -> f64 {
        super::pass_at_k(
            n.max(0) as usize,
            c.clamp(0, n.max(0)) as usize,
            k.max(0) as usize,
        )
    }

    /// Corpus BLEU on sacrebleu's 0–100 scale, with sacrebleu's defaults (13a tokenizer, 4-grams,
    /// exponential smoothing, case-sensitive): hypotheses and their references (one each), as two
    /// arrays of strings.
    ///
    /// ```rhai
    /// let b = bleu(["the cat sat on the mat"], ["the cat sat on the mat"]);
    /// assert_eq(b.round(), 100.0);
    /// assert(bleu(["the cat sat on a mat"], ["the cat sat on the mat"]) < 100.0, "one word off");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn bleu(hypotheses: Array, references: Array) -> Result<f64, Box<EvalAltResult>> {
        let (h, r) = paired_texts("bleu", &hypotheses, &references)?;
        Ok(metrics::corpus_bleu(&h, &r))
    }

    /// Corpus BLEU of two columns of a frame: `bleu(frame, "completion", "reference")`.
    #[rhai_fn(name = "bleu", return_raw)]
    pub fn bleu_columns(
        frame: Frame,
        hypothesis_col: &str,
        reference_col: &str,
    ) -> Result<f64, Box<EvalAltResult>> {
        let (h, r) = column_texts("bleu", &frame, hypothesis_col, reference_col)?;
        Ok(metrics::corpus_bleu(&h, &r))
    }

    /// Corpus chrF on sacrebleu's 0–100 scale, with sacrebleu's defaults (character 6-grams, β = 2,
    /// whitespace ignored, no word n-grams): two arrays of strings, one reference per hypothesis.
    ///
    /// ```rhai
    /// assert_eq(chrf(["module m; endmodule"], ["module m; endmodule"]).round(), 100.0);
    /// assert(chrf(["module m;"], ["module m; endmodule"]) > 0.0, "partial credit");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn chrf(hypotheses: Array, references: Array) -> Result<f64, Box<EvalAltResult>> {
        let (h, r) = paired_texts("chrf", &hypotheses, &references)?;
        Ok(metrics::corpus_chrf(&h, &r))
    }

    /// Corpus chrF of two columns of a frame: `chrf(frame, "completion", "reference")`.
    #[rhai_fn(name = "chrf", return_raw)]
    pub fn chrf_columns(
        frame: Frame,
        hypothesis_col: &str,
        reference_col: &str,
    ) -> Result<f64, Box<EvalAltResult>> {
        let (h, r) = column_texts("chrf", &frame, hypothesis_col, reference_col)?;
        Ok(metrics::corpus_chrf(&h, &r))
    }

    /// LLM-as-judge: `model` scores each row's response against `rubric`, answering with a JSON
    /// object `{"score", "reason"}`. Options: `rubric` (required), `scale` ([1, 5]), `prompt_col`
    /// ("prompt"), `response_col` ("completion"), `reference_col` (none; a reference answer shown to
    /// the judge), `retries` (2). Returns the frame with `judge_score`, `judge_reason`,
    /// `judge_error` and `judge_attempts`. Calls are recorded and replayed like every model call. A
    /// malformed verdict (no JSON, no score or reason, a score outside the scale) is sent back with
    /// what was wrong and asked again; a row that never gets a valid one has a null score and the
    /// reason in `judge_error`, and `judge` says how many: it is never scored 0.
    #[rhai_fn(return_raw)]
    pub fn judge(
        ctx: NativeCallContext,
        model: Model,
        data: Frame,
        options: Map,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        let spec = judge_options::judge_spec(&options)?;
        let items = judge::items_of(&data, &spec)?;
        if items.is_empty() {
            return Err(BenchError::Input("judge: the data has no rows".into()).into());
        }
        let verdicts = judge::judge_rows(&ws, &model, &spec, &items)?;
        ws.emit_line(&judge::summary_line(&spec, &verdicts));
        Ok(judge::with_verdicts(&data, &verdicts)?)
    }

    /// Hyperparameter search. Options: `params` (option name → array of values, or for a random
    /// search a range `#{low, high, log}`), `strategy` ("grid", the cartesian product in key order;
    /// or "random", `trials` seeded draws), `trials` (random: how many; grid: a cap), `objective`
    /// (the key of the map each trial returns), `direction` ("minimize" or "maximize"), `seed` (0),
    /// `out` (a directory: each finished trial is kept there, so a rerun skips it and an interrupted
    /// sweep resumes), `trial` (a function of the trial's params map that trains/evaluates and
    /// returns a map holding the objective). Returns `#{trials, best, plot}`: a frame (trial, the
    /// params, objective, seconds, cached), the best trial as a map, and the objective per trial
    /// (also written to `out/sweep.svg`).
    ///
    /// ```rhai
    /// let s = sweep(#{params: #{x: [1, 2, 3], y: [10, 20]}, objective: "loss", out: "/tmp/rtlab-doc-sweep",
    ///     trial: |p| #{loss: (p.x - 2) * (p.x - 2) + p.y / 10}});
    /// assert_eq(s.trials.len(), 6);
    /// assert_eq(s.best.x, 2);
    /// assert_eq(s.best.y, 10);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn sweep(ctx: NativeCallContext, options: Map) -> Result<Map, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        let (spec, trial) = sweep::parse(&options, &ws.base_dir())?;
        let trials = sweep::run(&ctx, &spec, &trial)?;
        let records: Array = trials
            .iter()
            .map(|t| {
                let mut m = Map::new();
                m.insert("trial".into(), Dynamic::from(t.index as i64));
                for (k, v) in &t.params {
                    m.insert(k.into(), rtlab_data::json_to_dynamic(v.clone()));
                }
                m.insert(spec.objective.as_str().into(), Dynamic::from(t.objective));
                m.insert("seconds".into(), Dynamic::from(t.seconds));
                m.insert("cached".into(), Dynamic::from(t.cached));
                Dynamic::from_map(m)
            })
            .collect();
        let better = |a: &&crate::sweep::Trial, b: &&crate::sweep::Trial| {
            let o = a.objective.total_cmp(&b.objective);
            if spec.maximize {
                o
            } else {
                o.reverse()
            }
        };
        let best = trials
            .iter()
            .max_by(better)
            .ok_or_else(|| BenchError::Input("sweep: no trial ran".into()))?;
        let mut best_map = Map::new();
        best_map.insert("trial".into(), Dynamic::from(best.index as i64));
        for (k, v) in &best.params {
            best_map.insert(k.into(), rtlab_data::json_to_dynamic(v.clone()));
        }
        best_map.insert(
            spec.objective.as_str().into(),
            Dynamic::from(best.objective),
        );
        let plot = rtlab_data::plot::Plot::new(
            rtlab_data::plot::Kind::Line,
            format!("sweep: {} by trial", spec.objective),
            trials.iter().map(|t| t.index.to_string()).collect(),
            trials.iter().map(|t| t.objective).collect(),
        );
        let svg = spec.out.join("sweep.svg");
        rtlab_core::workspace::write_atomic(&svg, plot.svg.as_bytes())
            .map_err(|e| format!("sweep: cannot write {}: {e}", svg.display()))?;
        let ran = trials.iter().filter(|t| !t.cached).count();
        ws.emit_line(&format!(
            "sweep: {} trials ({ran} run, {} kept from {}); best {} = {:.4} (trial {})",
            trials.len(),
            trials.len() - ran,
            spec.out.display(),
            spec.objective,
            best.objective,
            best.index
        ));
        let mut out = Map::new();
        out.insert(
            "trials".into(),
            Dynamic::from(rtlab_data::from_records(&records, "sweep")?),
        );
        out.insert("best".into(), Dynamic::from_map(best_map));
        out.insert("plot".into(), Dynamic::from(plot));
        Ok(out)
    }

    /// Benchmarks a model on problems (`load_verilog_eval`'s frame: task_id, prompt, ref, test,
    /// category). Options: `n` samples per problem (1), `temperature` (0.85 when n > 1, else 0), `top_p`
    /// (0.95), `k` ([1, 5, 10], those ≤ n), `name`, `template` (with `{prompt}`), `executor` (where the
    /// samples are verified: `slurm(#{...})` for a Slurm job array), `stop` (where an answer ends: the
    /// model's own `stop`, else `["endmodule"]`, which ends it at its first complete module as
    /// VerilogEval's harness cuts a response, the `endmodule` put back; `[]` for none),
    /// `allow_overlap` (false: a local model whose adapter records training data that holds any of
    /// these problems is refused, naming them; true scores them anyway and the summary lists them
    /// in `trained_on`). Returns a run map:
    /// `id`, `name`, `model`, `summary` (pass@k, score, syntax, synth, all_io_used, functional,
    /// failure_classes), and frames `problems` (c, n, pass@k), `categories` and `samples`. The run is
    /// recorded in the workspace store.
    #[rhai_fn(return_raw)]
    pub fn benchmark(
        ctx: NativeCallContext,
        model: Model,
        problems: Frame,
        options: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        let options = run::bench_options(&ws, &options)?;
        Ok(run::run_map(run_benchmark(
            &ws, &model, &problems, &options,
        )?))
    }

    /// The prompt `benchmark` sends for a problem's spec (the default template,
    /// `crates/bench/prompts/verilog_eval.md`).
    pub fn verilog_eval_prompt(prompt: &str) -> String {
        DEFAULT_TEMPLATE.replace("{prompt}", prompt.trim_end())
    }

    /// Every recorded benchmark run: id, name, model, dataset, created (unix seconds), and the headline
    /// metrics.
    #[rhai_fn(return_raw)]
    pub fn runs(ctx: NativeCallContext) -> Result<Frame, Box<EvalAltResult>> {
        let store = Workspace::of(&ctx).store().ok_or_else(|| {
            BenchError::Input("runs: the workspace store cannot be opened".into())
        })?;
        let store = rtlab_core::store::lock(&store);
        let rows = store.runs().map_err(BenchError::from)?;
        let records: Array = rows
            .iter()
            .map(|r| {
                let metrics: serde_json::Value =
                    serde_json::from_str(&r.metrics).unwrap_or_default();
                let mut m = Map::new();
                m.insert("id".into(), Dynamic::from(r.id));
                m.insert("name".into(), r.name.clone().into());
                m.insert("model".into(), r.model.clone().into());
                m.insert("dataset".into(), r.dataset_hash.clone().into());
                m.insert("created".into(), Dynamic::from(r.created));
                for key in [
                    "pass@1",
                    "functional",
                    "score",
                    "syntax",
                    "synth",
                    "all_io_used",
                ] {
                    let v = metrics
                        .pointer(&format!("/summary/{key}"))
                        .and_then(|v| v.as_f64());
                    m.insert(key.into(), v.map(Dynamic::from).unwrap_or(Dynamic::UNIT));
                }
                let _ = &r.options;
                Dynamic::from_map(m)
            })
            .collect();
        Ok(rtlab_data::from_records(&records, "runs")?)
    }

    /// The per-category table the plans write by hand: functional rate and score of run A and run B,
    /// and B − A (runs as benchmark() returns them, or run ids).
    #[rhai_fn(return_raw)]
    pub fn compare(
        ctx: NativeCallContext,
        run_a: Dynamic,
        run_b: Dynamic,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        let (_, a) = categories_of(&ws, &run_a)?;
        let (_, b) = categories_of(&ws, &run_b)?;
        let cats: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let get = |m: &BTreeMap<String, BTreeMap<String, f64>>, c: &str, k: &str| {
            m.get(c).and_then(|x| x.get(k)).copied()
        };
        let mut rows = Array::new();
        for c in cats {
            let mut m = Map::new();
            m.insert("category".into(), c.clone().into());
            for (label, key) in [("functional", "functional"), ("score", "score")] {
                let (x, y) = (get(&a, c, key), get(&b, c, key));
                m.insert(
                    format!("{label}_a").into(),
                    x.map(Dynamic::from).unwrap_or(Dynamic::UNIT),
                );
                m.insert(
                    format!("{label}_b").into(),
                    y.map(Dynamic::from).unwrap_or(Dynamic::UNIT),
                );
                let d = match (x, y) {
                    (Some(x), Some(y)) => Dynamic::from(round4(y - x)),
                    _ => Dynamic::UNIT,
                };
                m.insert(format!("{label}_delta").into(), d);
            }
            rows.push(Dynamic::from_map(m));
        }
        Ok(rtlab_data::from_records(&rows, "compare")?)
    }

    /// A paired A/B test of run B against run A on the same problems (runs as `benchmark()` returns
    /// them, or run ids). Options: `test`: "paired_bootstrap" (default; resamples problems, on the
    /// per-problem `metric`: "pass@1" by default, any "pass@K", or a problem's share of samples that
    /// pass a stage, "syntax", "synth" or "all_io_used") or "mcnemar" (McNemar's exact test on solved /
    /// unsolved per problem: the sample when n = 1, any sample when n > 1); `confidence` (0.95),
    /// `resamples` (10000), `seed` (0). Returns `#{test, metric, problems, a, b, delta, relative,
    /// ci_low, ci_high, confidence, p_value}`, and `a_only`, `b_only` (discordant problems) for
    /// McNemar. `delta` is B − A; `relative` is delta / A.
    #[rhai_fn(name = "compare", return_raw)]
    pub fn compare_with_test(
        ctx: NativeCallContext,
        run_a: Dynamic,
        run_b: Dynamic,
        options: Map,
    ) -> Result<Map, Box<EvalAltResult>> {
        Ok(paired_test(&Workspace::of(&ctx), &run_a, &run_b, &options)?)
    }

    /// Checks success criteria and prints the plans' ✅/❌ lines; returns whether all hold. A key is a
    /// summary metric (functional, score, syntax, synth, all_io_used, pass@k) or a category, whose
    /// functional rate is checked.
    ///
    /// On what `compare(a, b, #{test: ...})` returns, it states an A/B criterion: `p_value` must be
    /// below its target, every other key (`delta`, `relative`, `b`) at least its target. The
    /// reality check's "B at least 20% above A, p < 0.05" is
    /// `expect(compare(a, b, #{test: "mcnemar"}), #{relative: 0.2, p_value: 0.05})`.
    #[rhai_fn(return_raw)]
    pub fn expect(
        ctx: NativeCallContext,
        run: Dynamic,
        criteria: Map,
    ) -> Result<bool, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        if let Some(m) = run.read_lock::<Map>() {
            if m.contains_key("p_value") && m.contains_key("test") {
                return Ok(expect_comparison(&ws, &m, &criteria)?);
            }
        }
        let summary = summary_of(&run)?;
        let (_, cats) = categories_of(&ws, &run)?;
        let mut all = true;
        for (key, target) in criteria.iter() {
            let target = target
                .as_float()
                .or_else(|_| target.as_int().map(|i| i as f64))
                .map_err(|_| {
                    BenchError::Input(format!("expect: target of {key} must be a number"))
                })?;
            let actual = summary.get(key.as_str()).copied().or_else(|| {
                cats.get(key.as_str())
                    .and_then(|c| c.get("functional"))
                    .copied()
            });
            let line = match actual {
                Some(a) if a.is_nan() => {
                    all = false;
                    format!("❌ {key}: NaN is not a number (target {target}): the run produced no value")
                }
                Some(a) if a >= target => format!("✅ {key}: {a:.3} ≥ {target}"),
                Some(a) => {
                    all = false;
                    format!("❌ {key}: {a:.3} < {target} (short by {:.3})", target - a)
                }
                None => {
                    all = false;
                    format!("❌ {key}: not in this run (target {target})")
                }
            };
            ws.emit_line(&line);
        }
        Ok(all)
    }

    /// DPO pairs from verified samples: per prompt, the best-scoring response as `chosen` against the
    /// worst as `rejected`, when they differ by at least `margin` (0.0). Options name the columns:
    /// `prompt` ("prompt"), `response` ("completion"), `score` ("score"). Rows `{prompt, chosen,
    /// rejected, chosen_score, rejected_score}`, the format TRL's DPOTrainer reads.
    ///
    /// ```rhai
    /// let s = from_records([
    ///     #{prompt: "p", completion: "good", score: 1.0},
    ///     #{prompt: "p", completion: "bad", score: 0.2},
    ///     #{prompt: "q", completion: "same", score: 0.5},
    /// ]);
    /// let pairs = preference_pairs(s, #{margin: 0.1});
    /// assert_eq(pairs.len(), 1);
    /// assert_eq(pairs.row(0).chosen, "good");
    /// ```
    #[rhai_fn(name = "preference_pairs", return_raw)]
    pub fn preference_pairs_default(samples: Frame) -> Result<Frame, Box<EvalAltResult>> {
        preference_pairs(samples, Map::new())
    }

    /// DPO pairs with options (see the one-argument form): `prompt`, `response`, `score`, `margin`.
    #[rhai_fn(return_raw)]
    pub fn preference_pairs(samples: Frame, options: Map) -> Result<Frame, Box<EvalAltResult>> {
        let o = rtlab_core::options::Options::new(
            "preference_pairs",
            &options,
            &["prompt", "response", "score", "margin"],
        )?;
        let column = |k: &str, d: &str| -> Result<String, BenchError> {
            Ok(o.string(k)?.unwrap_or_else(|| d.to_string()))
        };
        let margin = o.float("margin")?.unwrap_or(0.0);
        let prompts = strings(&samples, &column("prompt", "prompt")?)?;
        let responses = strings(&samples, &column("response", "completion")?)?;
        let score_col = column("score", "score")?;
        let scores: Vec<f64> = strings(&samples, &score_col)?
            .iter()
            .enumerate()
            .map(|(row, s)| {
                s.parse::<f64>().map_err(|_| {
                    BenchError::Input(format!(
                        "preference_pairs: row {row}: `{score_col}` is {s:?}, not a number"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let mut order: Vec<String> = Vec::new();
        let mut groups: BTreeMap<&String, Vec<usize>> = BTreeMap::new();
        for (i, p) in prompts.iter().enumerate() {
            if !groups.contains_key(p) {
                order.push(p.clone());
            }
            groups.entry(p).or_default().push(i);
        }
        let mut rows = Array::new();
        for p in &order {
            let idx = &groups[p];
            // First best and last worst, so ties resolve by sample order.
            let best = idx
                .iter()
                .copied()
                .fold(idx[0], |b, i| if scores[i] > scores[b] { i } else { b });
            let worst =
                idx.iter()
                    .copied()
                    .fold(idx[0], |w, i| if scores[i] <= scores[w] { i } else { w });
            if scores[best] - scores[worst] >= margin.max(f64::MIN_POSITIVE)
                && responses[best] != responses[worst]
            {
                let mut m = Map::new();
                m.insert("prompt".into(), p.clone().into());
                m.insert("chosen".into(), responses[best].clone().into());
                m.insert("rejected".into(), responses[worst].clone().into());
                m.insert("chosen_score".into(), Dynamic::from(scores[best]));
                m.insert("rejected_score".into(), Dynamic::from(scores[worst]));
                rows.push(Dynamic::from_map(m));
            }
        }
        if rows.is_empty() {
            return Ok(Frame::new(DataFrame::empty()));
        }
        Ok(rtlab_data::from_records(&rows, "pairs")?)
    }
}

rhai::def_package! {
    /// Benchmarks and testbenches: `benchmark`, pass@k, `compare`, `expect`, metrics, `judge`, `sweep`,
    /// preference pairs, A7 testbenches and `generate_verified`.
    pub BenchPackage(module) {
        register(module);
        self::testbench::register(module);
    }
}
