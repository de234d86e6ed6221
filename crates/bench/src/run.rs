//! `benchmark(model, problems, #{...})` as four named steps: sample the model, verify the samples,
//! score them (pass@k per problem, rates per category, failure classes), record the run in the store.

use crate::BenchError;

use super::{pass_at_k, rate, round4, DEFAULT_TEMPLATE};
use polars::prelude::*;
use rtlab_core::store::SharedStore;
use rtlab_data::{strings, Frame};
use rtlab_llm::{extract_code, Message, Model};
use rtlab_verify::batch::{verify_all, Job};
use rtlab_verify::{Report, SimStatus, VerifyOptions};
use std::collections::BTreeMap;

/// What `benchmark` is asked to do, as a script's map or `rtlab bench`'s flags give it. `None` is
/// the default `benchmark`'s documentation states.
#[derive(Clone, Debug, Default)]
pub struct BenchOptions {
    /// Samples per problem, at least 1 (default 1).
    pub n: Option<usize>,
    /// Default 0.85 when n > 1, else 0.
    pub temperature: Option<f64>,
    /// Default 0.95.
    pub top_p: Option<f64>,
    /// The k of pass@k (default 1, 5 and 10); those above n are left out.
    pub k: Option<Vec<i64>>,
    /// The prompt template's text, with `{prompt}` (default `prompts/verilog_eval.md`).
    pub template: Option<String>,
    /// The run's name (default the model's).
    pub name: Option<String>,
    /// Where the samples are verified.
    pub executor: rtlab_slurm::Executor,
    /// Where an answer ends (default the model's own `stop`, else `endmodule`).
    pub stop: Option<Vec<String>>,
    /// Score problems the adapter was trained on anyway (the run says so).
    pub allow_overlap: bool,
}

/// A finished run: what `benchmark` returns (as a map, at the Rhai edge) and `rtlab bench` prints.
pub struct BenchRun {
    /// The run's id in the workspace store (-1 when there is no store).
    pub id: i64,
    pub name: String,
    pub model: String,
    /// pass@k, score, syntax, synth, all_io_used, functional, failure_classes (and `trained_on`).
    pub summary: serde_json::Map<String, serde_json::Value>,
    pub problems: DataFrame,
    pub categories: DataFrame,
    pub samples: DataFrame,
}

/// The benchmark's options with every default applied, checked before any work.
struct Settings {
    n: usize,
    temperature: f64,
    top_p: f64,
    /// The k of pass@k that can be computed from n samples (k ≤ n).
    ks: Vec<usize>,
    template: String,
    name: String,
    executor: rtlab_slurm::Executor,
    /// Where an answer ends (by default at its first `endmodule`, as VerilogEval's harness cuts one).
    stop: Vec<String>,
    /// Score problems the adapter was trained on anyway (the run says so).
    allow_overlap: bool,
}

/// The stop a benchmark puts on a model that has none: the end of the first complete module.
const END_OF_MODULE: &str = "endmodule";

impl Settings {
    fn new(model: &Model, options: &BenchOptions) -> Result<Settings, BenchError> {
        let n = options.n.unwrap_or(1);
        if n < 1 {
            return Err(BenchError::Input(
                "benchmark: option `n` must be at least 1, not 0".into(),
            ));
        }
        let temperature = options
            .temperature
            .unwrap_or(if n > 1 { 0.85 } else { 0.0 });
        let top_p = options.top_p.unwrap_or(0.95);
        let ks = options.k.clone().unwrap_or_else(|| vec![1, 5, 10]);
        if let Some(bad) = ks.iter().find(|k| **k < 1) {
            return Err(BenchError::Input(format!(
                "benchmark: every k must be at least 1, not {bad}"
            )));
        }
        // pass@k needs k ≤ n samples: larger k are left out (the result's `pass_at_k` says which ran).
        let ks = ks
            .into_iter()
            .map(|k| k as usize)
            .filter(|k| *k <= n)
            .collect();
        let stop = match &options.stop {
            Some(stop) => stop.clone(),
            None if !model.cfg.stop.is_empty() => model.cfg.stop.clone(),
            None => vec![END_OF_MODULE.to_string()],
        };
        Ok(Settings {
            stop,
            allow_overlap: options.allow_overlap,
            n,
            temperature,
            top_p,
            ks,
            template: options
                .template
                .clone()
                .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string()),
            name: options
                .name
                .clone()
                .unwrap_or_else(|| model.cfg.model.clone()),
            executor: options.executor.clone(),
        })
    }

    /// The prompt as the model sees it: the template with the problem's spec filled in.
    fn prompt(&self, spec: &str) -> String {
        self.template.replace("{prompt}", spec.trim_end())
    }
}

/// The problems' columns (`category` is optional: every problem is in "all" without it).
struct Problems {
    ids: Vec<String>,
    prompts: Vec<String>,
    refs: Vec<String>,
    tests: Vec<String>,
    categories: Vec<String>,
}

impl Problems {
    fn from_frame(problems: &Frame) -> Result<Problems, BenchError> {
        let column = |name: &str| strings(problems, name);
        let ids = column("task_id")?;
        let categories = column("category").unwrap_or_else(|_| vec!["all".to_string(); ids.len()]);
        Ok(Problems {
            prompts: column("prompt")?,
            refs: column("ref")?,
            tests: column("test")?,
            categories,
            ids,
        })
    }

    /// A hash of what the problems ask and how they are checked, recorded with the run.
    fn hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for p in 0..self.ids.len() {
            for part in [
                &self.ids[p],
                &self.prompts[p],
                &self.refs[p],
                &self.tests[p],
            ] {
                hasher.update(part.as_bytes());
                hasher.update(b"\0");
            }
        }
        hasher.finalize().to_hex()[..16].to_string()
    }
}

/// Runs the benchmark: samples, verdicts, scores, and the run recorded in the workspace store.
pub fn run_benchmark(
    ws: &rtlab_core::Workspace,
    model: &Model,
    problems: &Frame,
    options: &BenchOptions,
) -> Result<BenchRun, BenchError> {
    let settings = Settings::new(model, options)?;
    let problems = Problems::from_frame(problems)?;
    let trained_on = problems_trained_on(model, &problems)?;
    if !trained_on.is_empty() && !settings.allow_overlap {
        return Err(BenchError::Input(format!(
            "benchmark: the adapter {} was trained on {} of these problems ({}): their scores would measure memory, not skill. Benchmark on problems outside its training data (df.split, df.decontaminate), or pass allow_overlap: true to score them anyway",
            model.cfg.adapter.as_deref().unwrap_or_default(),
            trained_on.len(),
            trained_on.join(", ")
        )));
    }
    // One store for the whole run: the answers, the verdicts and the run record.
    let store = ws.store();
    let completions = sample(model, &settings, &problems, &store)?;
    let reports = verify_samples(ws, &completions, &settings, &problems, &store)?;
    let mut scores = Scores::new(&reports, &settings, &problems)?;
    if !trained_on.is_empty() {
        eprintln!(
            "warning: benchmark {}: allow_overlap: the adapter was trained on {} (its summary lists them in trained_on)",
            settings.name,
            trained_on.join(", ")
        );
        scores
            .summary
            .insert("trained_on".into(), serde_json::json!(trained_on));
    }
    let id = record(&store, model, &settings, &problems, &scores);
    let samples = samples_frame(&completions, &reports, &settings, &problems)?;

    Ok(BenchRun {
        id,
        name: settings.name.clone(),
        model: model.cfg.model.clone(),
        summary: scores.summary,
        problems: scores.problems,
        categories: scores.categories,
        samples,
    })
}

/// Step 1: n completions per problem, from the store when recorded, else from the model.
fn sample(
    model: &Model,
    settings: &Settings,
    problems: &Problems,
    store: &Option<SharedStore>,
) -> Result<Vec<String>, BenchError> {
    let sampled = model
        .with_sampling(settings.temperature, settings.top_p)
        .with_stop(settings.stop.clone());
    let requests: Vec<(Vec<Message>, usize)> = problems
        .prompts
        .iter()
        .flat_map(|spec| {
            let text = settings.prompt(spec);
            (0..settings.n).map(move |s| {
                let message = Message {
                    role: "user".into(),
                    content: text.clone(),
                };
                (vec![message], s)
            })
        })
        .collect();
    let answers = sampled.answer_all(&requests, store.clone());
    let failed = answers.iter().filter(|a| a.is_err()).count();
    if failed > 0 {
        let first = answers
            .iter()
            .find_map(|a| a.as_ref().err())
            .map(|e| e.to_string())
            .unwrap_or_default();
        return Err(BenchError::Input(format!("benchmark: {failed} of {} requests failed (answers so far are recorded: rerun to resume); first error: {first}", answers.len())));
    }
    let ends_modules = settings.stop.iter().any(|s| s == END_OF_MODULE);
    Ok(answers
        .into_iter()
        .map(|a| {
            let text = a.unwrap_or_default();
            // The answer stops before its `endmodule`: put it back, as VerilogEval's harness does.
            if ends_modules && text.contains("module") {
                format!("{text}{END_OF_MODULE}")
            } else {
                text
            }
        })
        .collect())
}

/// The problems (task ids) that a local model's adapter was trained on, from the training data it
/// records beside it; none for a server, a base model, or an adapter trained elsewhere.
fn problems_trained_on(model: &Model, problems: &Problems) -> Result<Vec<String>, BenchError> {
    let Some(adapter) = model.cfg.adapter.as_deref() else {
        return Ok(Vec::new());
    };
    let Some(sketch) = rtlab_data::hygiene::read_training_sketch(std::path::Path::new(adapter))?
    else {
        return Ok(Vec::new());
    };
    let texts: Vec<Vec<String>> = (0..problems.ids.len())
        .map(|p| vec![problems.prompts[p].clone(), problems.refs[p].clone()])
        .collect();
    Ok(sketch
        .leaked(&texts)
        .into_iter()
        .map(|(p, _)| problems.ids[p].clone())
        .collect())
}

/// Step 2: each completion's code against its problem's testbench and reference.
fn verify_samples(
    ws: &rtlab_core::Workspace,
    completions: &[String],
    settings: &Settings,
    problems: &Problems,
    store: &Option<SharedStore>,
) -> Result<Vec<Report>, BenchError> {
    let jobs: Vec<Job> = completions
        .iter()
        .enumerate()
        .map(|(j, completion)| {
            let p = j / settings.n;
            Job {
                code: extract_code(completion),
                testbench: Some(problems.tests[p].clone()),
                reference: Some(problems.refs[p].clone()),
                top: None,
            }
        })
        .collect();
    let store = store.as_ref().map(rtlab_core::store::lock);
    let options = VerifyOptions::default();
    let (reports, stats) = verify_all(ws, &jobs, &options, store.as_deref(), &settings.executor)?;
    if let Some(warning) = stats.store_warning(store.as_deref()) {
        eprintln!("{warning}");
    }
    if rtlab_core::cancel_requested() {
        return Err(BenchError::Input(
            "benchmark: cancelled by Ctrl-C (verified samples are cached; rerun to resume)".into(),
        ));
    }
    Ok(reports)
}

/// Step 3: what the reports add up to.
struct Scores {
    /// Per problem: task_id, category, passing samples c, n, pass@k for each k.
    problems: DataFrame,
    /// Per category, over samples: score and the syntax, synth, all_io_used and functional rates.
    categories: DataFrame,
    /// The whole run: the same rates, mean pass@k, the problem count and the failure classes.
    summary: serde_json::Map<String, serde_json::Value>,
    /// The per-category rates as JSON, for the run record.
    categories_json: serde_json::Map<String, serde_json::Value>,
    /// Per problem: task_id → [c, n], for paired tests between recorded runs.
    problems_json: serde_json::Map<String, serde_json::Value>,
}

/// Why a sample failed, in three kinds: `syntax` (the compiler rejects it alone), `semantic` (it
/// compiles but does not build or elaborate against the testbench), `functional` (it simulates and
/// gives wrong outputs, or hangs). None for a pass, and for a sample that was not simulated.
pub fn failure_kind(r: &Report) -> Option<&'static str> {
    match r.sim_status {
        SimStatus::Pass => None,
        // An answer with no code at all is not simulated, and fails on syntax.
        _ if !r.syntax_ok => Some("syntax"),
        SimStatus::Skipped => None,
        SimStatus::Mismatch | SimStatus::Timeout => Some("functional"),
        SimStatus::CompileErr | SimStatus::Error => Some("semantic"),
    }
}

/// One category's (or the whole run's) rates over its samples.
fn rates(reports: &[&Report]) -> BTreeMap<&'static str, f64> {
    let mean_score = reports.iter().map(|r| r.score).sum::<f64>() / reports.len().max(1) as f64;
    let of = |flag: fn(&Report) -> Option<bool>| {
        round4(rate(&reports.iter().map(|r| flag(r)).collect::<Vec<_>>()))
    };
    BTreeMap::from([
        ("samples", reports.len() as f64),
        ("score", round4(mean_score)),
        ("syntax", of(|r| Some(r.syntax_ok))),
        ("synth", of(|r| r.synth_ok)),
        ("all_io_used", of(|r| r.all_io_used)),
        ("functional", of(|r| r.functional)),
    ])
}

impl Scores {
    fn new(
        reports: &[Report],
        settings: &Settings,
        problems: &Problems,
    ) -> Result<Scores, BenchError> {
        let n = settings.n;
        let passing: Vec<usize> = (0..problems.ids.len())
            .map(|p| {
                reports[p * n..(p + 1) * n]
                    .iter()
                    .filter(|r| r.sim_status == SimStatus::Pass)
                    .count()
            })
            .collect();
        // Per problem, the share of its samples that compile, synthesize and use every port: the
        // unit a paired test resamples (the samples of one problem are not independent).
        let share_of = |flag: fn(&Report) -> bool| -> Vec<f64> {
            (0..problems.ids.len())
                .map(|p| {
                    let rs = &reports[p * n..(p + 1) * n];
                    rs.iter().filter(|r| flag(r)).count() as f64 / n as f64
                })
                .collect()
        };
        let stage_shares: Vec<(&str, Vec<f64>)> = vec![
            ("syntax", share_of(|r| r.syntax_ok)),
            ("synth", share_of(|r| r.synth_ok == Some(true))),
            ("all_io_used", share_of(|r| r.all_io_used == Some(true))),
        ];
        let pass_at: Vec<Vec<f64>> = settings
            .ks
            .iter()
            .map(|k| passing.iter().map(|c| pass_at_k(n, *c, *k)).collect())
            .collect();
        let mut columns = vec![
            Column::new("task_id".into(), problems.ids.clone()),
            Column::new("category".into(), problems.categories.clone()),
            Column::new(
                "c".into(),
                passing.iter().map(|c| *c as i64).collect::<Vec<_>>(),
            ),
            Column::new("n".into(), vec![n as i64; passing.len()]),
        ];
        for (k, values) in settings.ks.iter().zip(&pass_at) {
            columns.push(Column::new(format!("pass@{k}").into(), values.clone()));
        }
        columns.push(Column::new(
            "solvable".into(),
            passing.iter().map(|c| *c > 0).collect::<Vec<_>>(),
        ));
        for (name, shares) in &stage_shares {
            columns.push(Column::new((*name).into(), shares.clone()));
        }
        let problems_df = DataFrame::new(passing.len(), columns)?;

        let mut by_category: BTreeMap<String, Vec<&Report>> = BTreeMap::new();
        for (j, r) in reports.iter().enumerate() {
            by_category
                .entry(problems.categories[j / n].clone())
                .or_default()
                .push(r);
        }
        let category_rates: Vec<(String, BTreeMap<&str, f64>)> = by_category
            .iter()
            .map(|(c, rs)| (c.clone(), rates(rs)))
            .collect();
        let categories = categories_frame(&category_rates)?;

        let mut classes: BTreeMap<String, i64> = BTreeMap::new();
        for class in reports.iter().filter_map(|r| r.failure_class) {
            *classes.entry(class.as_str().to_string()).or_default() += 1;
        }
        let all: Vec<&Report> = reports.iter().collect();
        let mut summary: serde_json::Map<String, serde_json::Value> = rates(&all)
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        add_problem_statistics(&mut summary, settings, &pass_at, &passing, reports);
        for (name, shares) in &stage_shares {
            let (lo, hi) = super::stats::bootstrap_ci(shares, &super::stats::Resampling::default());
            summary.insert(
                format!("{name}_ci"),
                serde_json::json!([round4(lo), round4(hi)]),
            );
        }
        summary.insert("failure_classes".into(), serde_json::json!(classes));
        let categories_json = category_rates
            .iter()
            .map(|(c, m)| (c.clone(), serde_json::json!(m)))
            .collect();
        // [c, n, syntax, synth, all_io_used]: passing samples, samples, and the three shares.
        let problems_json = problems
            .ids
            .iter()
            .enumerate()
            .map(|(p, id)| {
                let mut v = vec![serde_json::json!(passing[p]), serde_json::json!(n)];
                v.extend(stage_shares.iter().map(|(_, s)| serde_json::json!(s[p])));
                (id.clone(), serde_json::Value::Array(v))
            })
            .collect();
        Ok(Scores {
            problems: problems_df,
            categories,
            summary,
            categories_json,
            problems_json,
        })
    }
}

/// The summary's pass@k with their 95% bootstrap intervals over problems (the samples of one
/// problem are not independent), the functional rate's interval, solvable and unsolvable problems,
/// and the samples' failure kinds.
fn add_problem_statistics(
    summary: &mut serde_json::Map<String, serde_json::Value>,
    settings: &Settings,
    pass_at: &[Vec<f64>],
    passing: &[usize],
    reports: &[Report],
) {
    let resampling = super::stats::Resampling::default();
    let interval = |values: &[f64]| {
        let (lo, hi) = super::stats::bootstrap_ci(values, &resampling);
        serde_json::json!([round4(lo), round4(hi)])
    };
    for (k, values) in settings.ks.iter().zip(pass_at) {
        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
        summary.insert(format!("pass@{k}"), serde_json::json!(round4(mean)));
        summary.insert(format!("pass@{k}_ci"), interval(values));
    }
    let n = settings.n as f64;
    let functional_share: Vec<f64> = passing.iter().map(|c| *c as f64 / n).collect();
    summary.insert("functional_ci".into(), interval(&functional_share));
    let solvable = passing.iter().filter(|c| **c > 0).count();
    summary.insert("problems".into(), serde_json::json!(passing.len()));
    summary.insert("solvable".into(), serde_json::json!(solvable));
    summary.insert(
        "unsolvable".into(),
        serde_json::json!(passing.len() - solvable),
    );
    let mut kinds: BTreeMap<&str, i64> = BTreeMap::new();
    for kind in reports.iter().filter_map(failure_kind) {
        *kinds.entry(kind).or_default() += 1;
    }
    summary.insert("failure_kinds".into(), serde_json::json!(kinds));
}

fn categories_frame(rows: &[(String, BTreeMap<&str, f64>)]) -> Result<DataFrame, BenchError> {
    let column = |key: &str| rows.iter().map(|(_, m)| m[key]).collect::<Vec<f64>>();
    let samples: Vec<i64> = column("samples").iter().map(|x| *x as i64).collect();
    let mut columns = vec![
        Column::new(
            "category".into(),
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        ),
        Column::new("samples".into(), samples),
    ];
    for key in ["score", "syntax", "synth", "all_io_used", "functional"] {
        columns.push(Column::new(key.into(), column(key)));
    }
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// Step 4: the run in the store, for `runs()`, `compare()` and `expect()`; its id, or -1 uncached.
fn record(
    store: &Option<SharedStore>,
    model: &Model,
    settings: &Settings,
    problems: &Problems,
    scores: &Scores,
) -> i64 {
    let options = serde_json::json!({
        "n": settings.n,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "k": settings.ks,
        "provider": format!("{:?}", model.cfg.provider),
    });
    let metrics = serde_json::json!({
        "summary": scores.summary,
        "categories": scores.categories_json,
        "problems": scores.problems_json,
    });
    let Some(store) = store else { return -1 };
    let added = rtlab_core::store::lock(store).add_run(
        &settings.name,
        &model.cfg.model,
        &options.to_string(),
        &problems.hash(),
        &metrics.to_string(),
    );
    match added {
        Ok(id) => id,
        Err(e) => {
            eprintln!("warning: benchmark: the run was not recorded in the store: {e}");
            -1
        }
    }
}

/// One row per sample: the prompt as the model saw it (so DPO pairs built from samples match), the
/// completion, its score and simulation status.
fn samples_frame(
    completions: &[String],
    reports: &[Report],
    settings: &Settings,
    problems: &Problems,
) -> Result<DataFrame, BenchError> {
    let n = settings.n;
    let per_sample = |values: &[String]| -> Vec<String> {
        (0..completions.len())
            .map(|j| values[j / n].clone())
            .collect()
    };
    let prompts: Vec<String> = problems
        .prompts
        .iter()
        .map(|spec| settings.prompt(spec))
        .collect();
    Ok(DataFrame::new(
        completions.len(),
        vec![
            Column::new("task_id".into(), per_sample(&problems.ids)),
            Column::new("category".into(), per_sample(&problems.categories)),
            Column::new("prompt".into(), per_sample(&prompts)),
            Column::new(
                "sample".into(),
                (0..completions.len())
                    .map(|j| (j % n) as i64)
                    .collect::<Vec<_>>(),
            ),
            Column::new("completion".into(), completions.to_vec()),
            Column::new(
                "score".into(),
                reports.iter().map(|r| r.score).collect::<Vec<_>>(),
            ),
            Column::new(
                "sim_status".into(),
                reports
                    .iter()
                    .map(|r| r.sim_status.as_str())
                    .collect::<Vec<_>>(),
            ),
            Column::new(
                "failure".into(),
                reports.iter().map(failure_kind).collect::<Vec<_>>(),
            ),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(stop: &[&str]) -> Model {
        let mut cfg = rtlab_llm::ModelConfig::new(rtlab_llm::Provider::Replay, "m");
        cfg.stop = stop.iter().map(|s| s.to_string()).collect();
        Model::from_config(cfg, std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn the_defaults_are_the_documented_ones() {
        let s = Settings::new(&model(&[]), &BenchOptions::default()).unwrap();
        assert_eq!((s.n, s.temperature, s.top_p), (1, 0.0, 0.95));
        assert_eq!(s.ks, [1], "k 5 and 10 need 5 and 10 samples");
        assert_eq!(s.stop, ["endmodule"]);
        assert_eq!(
            (s.name.as_str(), s.template.as_str()),
            ("m", DEFAULT_TEMPLATE)
        );
        let n20 = BenchOptions {
            n: Some(20),
            ..Default::default()
        };
        let s = Settings::new(&model(&["\n\n"]), &n20).unwrap();
        assert_eq!((s.temperature, s.ks.clone()), (0.85, vec![1, 5, 10]));
        assert_eq!(s.stop, ["\n\n"], "the model's own stop wins over endmodule");
    }

    #[test]
    fn a_k_below_one_or_no_samples_is_refused() {
        let k0 = BenchOptions {
            k: Some(vec![1, 0]),
            ..Default::default()
        };
        let e = Settings::new(&model(&[]), &k0).err().unwrap();
        assert_eq!(
            e.to_string(),
            "benchmark: every k must be at least 1, not 0"
        );
        let n0 = BenchOptions {
            n: Some(0),
            ..Default::default()
        };
        assert!(Settings::new(&model(&[]), &n0).is_err());
    }
}
