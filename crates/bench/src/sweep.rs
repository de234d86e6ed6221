//! Hyperparameter search: grid or random trials over named options, each run by a script function
//! that trains (and evaluates) with the trial's options and returns its objective.
//!
//! Every finished trial is written to `out/trial-NNN-HASH.json` (atomically) before the next starts,
//! keyed by its position and its parameters. A rerun of the same sweep reads those back instead of
//! running them again, so an interrupted sweep (Ctrl-C, a kill, a crash) resumes where it stopped,
//! and a sweep whose parameters changed reruns only the trials that changed.

use crate::BenchError;

use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// How one option is searched.
#[derive(Debug, Clone)]
pub enum Space {
    /// One of these values (grid: each in turn; random: uniformly).
    Choice(Vec<Value>),
    /// A float in [low, high], uniform or log-uniform (random search only).
    Range { low: f64, high: f64, log: bool },
}

/// What `sweep` was asked to do.
pub struct SweepSpec {
    pub params: Vec<(String, Space)>,
    pub random: bool,
    pub trials: Option<usize>,
    pub objective: String,
    pub maximize: bool,
    pub seed: u64,
    pub out: PathBuf,
}

pub(crate) fn bad(msg: impl Into<String>) -> BenchError {
    BenchError::Sweep(format!("sweep: {}", msg.into()))
}

/// The trials' parameter maps, in order: the grid's cartesian product (keys in sorted order, the
/// last varying fastest), or seeded random draws.
pub fn plan(spec: &SweepSpec) -> Vec<Map<String, Value>> {
    if spec.random {
        let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
        return (0..spec.trials.unwrap_or(1))
            .map(|_| {
                spec.params
                    .iter()
                    .map(|(name, space)| {
                        let v = match space {
                            Space::Choice(values) => {
                                values[rng.random_range(0..values.len())].clone()
                            }
                            Space::Range {
                                low,
                                high,
                                log: false,
                            } => number(rng.random_range(*low..*high)),
                            Space::Range {
                                low,
                                high,
                                log: true,
                            } => number(rng.random_range(low.ln()..high.ln()).exp()),
                        };
                        (name.clone(), v)
                    })
                    .collect()
            })
            .collect();
    }
    let mut grid: Vec<Map<String, Value>> = vec![Map::new()];
    for (name, space) in &spec.params {
        let Space::Choice(values) = space else {
            continue;
        };
        grid = grid
            .into_iter()
            .flat_map(|m| {
                values.iter().map(move |v| {
                    let mut m = m.clone();
                    m.insert(name.clone(), v.clone());
                    m
                })
            })
            .collect();
    }
    if let Some(t) = spec.trials {
        grid.truncate(t);
    }
    grid
}

/// A finished trial.
#[derive(Debug, Clone)]
pub struct Trial {
    pub index: usize,
    pub params: Map<String, Value>,
    pub objective: f64,
    pub seconds: f64,
    pub cached: bool,
}

/// The file that keeps trial `index` with these parameters.
fn trial_file(out: &Path, index: usize, params: &Value) -> PathBuf {
    let hash = blake3::hash(params.to_string().as_bytes()).to_hex();
    out.join(format!("trial-{index:03}-{}.json", &hash[..12]))
}

/// A function definition's debug text without what Rhai makes differently in each process: its call
/// hashes (runs of 10 or more digits; positions and ordinary constants are shorter) and the names it
/// gives closures (`anon$` and a hash).
pub(crate) fn without_long_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("anon$") {
            out.push_str(&digits);
            digits.clear();
            out.push_str("anon$");
            rest = after.trim_start_matches(|c: char| c.is_ascii_hexdigit());
            continue;
        }
        rest = &rest[c.len_utf8()..];
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() < 10 {
            out.push_str(&digits);
        }
        digits.clear();
        out.push(c);
    }
    if digits.len() < 10 {
        out.push_str(&digits);
    }
    out
}

/// Runs one trial with its parameters (by index): its objective, or why it failed.
pub type TrialFn<'a> = dyn FnMut(usize, &Map<String, Value>) -> Result<f64, BenchError> + 'a;

/// Runs (or reads back) every planned trial, in order. `code` is what a trial's result depends on
/// besides its parameters (rtlab's code and the trial function's); `trial` runs one trial and
/// returns its objective. A trial kept in `spec.out` under the same parameters and code is read back.
pub fn run(
    ws: &rtlab_core::Workspace,
    spec: &SweepSpec,
    code: &str,
    trial: &mut TrialFn,
) -> Result<Vec<Trial>, BenchError> {
    std::fs::create_dir_all(&spec.out).map_err(|e| bad(format!("{}: {e}", spec.out.display())))?;
    let mut done = Vec::new();
    for (index, params) in plan(spec).into_iter().enumerate() {
        let params_json = Value::Object(params.clone());
        let file = trial_file(&spec.out, index, &params_json);
        let recorded = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok());
        // A trial run by other code (another rtlab, an edited trial function) is run again.
        let recorded = recorded.filter(|v| {
            let same = v["code"].as_str() == Some(code);
            if !same && !ws.trust_cache() {
                ws.emit_line(&format!(
                    "sweep: trial {index} ran with other code (rtlab or the script's functions changed): running it again"
                ));
            }
            same || ws.trust_cache()
        });
        if let Some(objective) = recorded.and_then(|v| {
            Some((
                v["objective"].as_f64()?,
                v["seconds"].as_f64().unwrap_or(0.0),
            ))
        }) {
            done.push(Trial {
                index,
                params,
                objective: objective.0,
                seconds: objective.1,
                cached: true,
            });
            continue;
        }
        if rtlab_core::cancel_requested() {
            return Err(bad(format!("cancelled by Ctrl-C before trial {index}; the {index} finished trials are kept: rerun to resume")));
        }
        let started = std::time::Instant::now();
        let objective = trial(index, &params)?;
        let seconds = started.elapsed().as_secs_f64();
        let record = serde_json::json!({"params": params_json, "objective": objective, "seconds": seconds, "code": code});
        rtlab_core::workspace::write_atomic(&file, record.to_string().as_bytes())
            .map_err(|e| bad(format!("{}: {e}", file.display())))?;
        done.push(Trial {
            index,
            params,
            objective,
            seconds,
            cached: false,
        });
    }
    Ok(done)
}

/// A float as JSON (a draw is always finite).
fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(out: &Path) -> SweepSpec {
        SweepSpec {
            params: vec![
                ("lr".into(), Space::Choice(vec![json!(0.001), json!(0.003)])),
                ("r".into(), Space::Choice(vec![json!(8), json!(16)])),
            ],
            random: false,
            trials: None,
            objective: "loss".into(),
            maximize: false,
            seed: 0,
            out: out.to_path_buf(),
        }
    }

    #[test]
    fn a_grid_is_the_cartesian_product_with_the_last_key_fastest() {
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(&spec(dir.path()));
        let shown: Vec<String> = plan
            .iter()
            .map(|p| Value::Object(p.clone()).to_string())
            .collect();
        assert_eq!(
            shown,
            [
                r#"{"lr":0.001,"r":8}"#,
                r#"{"lr":0.001,"r":16}"#,
                r#"{"lr":0.003,"r":8}"#,
                r#"{"lr":0.003,"r":16}"#
            ]
        );
    }

    #[test]
    fn random_draws_repeat_for_a_seed_and_stay_in_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path());
        s.random = true;
        s.trials = Some(5);
        s.params = vec![(
            "lr".into(),
            Space::Range {
                low: 1e-4,
                high: 1e-2,
                log: true,
            },
        )];
        let a = plan(&s);
        assert_eq!(a, plan(&s), "the same seed draws the same trials");
        for p in &a {
            let lr = p["lr"].as_f64().unwrap();
            assert!((1e-4..1e-2).contains(&lr), "{lr}");
        }
        s.seed = 1;
        assert_ne!(a, plan(&s), "another seed draws others");
    }

    /// A finished trial is kept on disk: a rerun with the same code reads it back instead of running
    /// it, and a rerun with other code runs it again.
    #[test]
    fn a_rerun_reads_finished_trials_back_and_other_code_reruns_them() {
        let dir = tempfile::tempdir().unwrap();
        let ws = rtlab_core::Workspace::new(dir.path(), rtlab_core::OutputSink::new());
        let s = spec(&dir.path().join("trials"));
        let mut calls = 0;
        let mut trial = |_: usize, p: &Map<String, Value>| {
            calls += 1;
            Ok(p["lr"].as_f64().unwrap() * p["r"].as_f64().unwrap())
        };
        let first = run(&ws, &s, "code-a", &mut trial).unwrap();
        assert_eq!(first.len(), 4);
        assert!(first.iter().all(|t| !t.cached));
        let again = run(&ws, &s, "code-a", &mut trial).unwrap();
        assert!(again.iter().all(|t| t.cached));
        assert_eq!(
            again.iter().map(|t| t.objective).collect::<Vec<_>>(),
            first.iter().map(|t| t.objective).collect::<Vec<_>>()
        );
        run(&ws, &s, "code-b", &mut trial).unwrap();
        assert_eq!(
            calls, 8,
            "4 trials, then 0 read back, then 4 rerun under other code"
        );
    }

    /// A trial's error stops the sweep with the trials before it kept.
    #[test]
    fn a_failed_trial_keeps_the_finished_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ws = rtlab_core::Workspace::new(dir.path(), rtlab_core::OutputSink::new());
        let s = spec(&dir.path().join("trials"));
        let err = run(&ws, &s, "c", &mut |i, _| {
            if i == 2 {
                Err(bad("trial 2 failed"))
            } else {
                Ok(1.0)
            }
        })
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "sweep: trial 2 failed");
        let kept = std::fs::read_dir(dir.path().join("trials"))
            .unwrap()
            .count();
        assert_eq!(kept, 2);
    }

    #[test]
    fn per_process_hashes_and_closure_names_are_dropped_and_the_code_kept() {
        assert_eq!(
            super::without_long_numbers("anon$4ef85ac1f2cf85cb/1 hash: 12345678901234 @ 1:76 x 42"),
            "anon$/1 hash:  @ 1:76 x 42"
        );
    }
}
