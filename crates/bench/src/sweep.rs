//! Hyperparameter search: grid or random trials over named options, each run by a script function
//! that trains (and evaluates) with the trial's options and returns its objective.
//!
//! Every finished trial is written to `out/trial-NNN-HASH.json` (atomically) before the next starts,
//! keyed by its position and its parameters. A rerun of the same sweep reads those back instead of
//! running them again, so an interrupted sweep (Ctrl-C, a kill, a crash) resumes where it stopped,
//! and a sweep whose parameters changed reruns only the trials that changed.

use crate::BenchError;

use rand::{Rng, SeedableRng};
use rhai::{Dynamic, FnPtr, Map, NativeCallContext};
use std::path::{Path, PathBuf};

/// How one option is searched.
#[derive(Debug, Clone)]
pub enum Space {
    /// One of these values (grid: each in turn; random: uniformly).
    Choice(Vec<Dynamic>),
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

fn bad(msg: impl Into<String>) -> BenchError {
    BenchError::Sweep(format!("sweep: {}", msg.into()))
}

/// One option's search space: an array of values, or a range `#{low, high, log}`.
fn parse_space(name: &str, v: &Dynamic) -> Result<Space, BenchError> {
    if let Some(values) = v.read_lock::<rhai::Array>() {
        if values.is_empty() {
            return Err(bad(format!(
                "params.{name} is an empty array: give at least one value"
            )));
        }
        return Ok(Space::Choice(values.clone()));
    }
    let Some(m) = v.read_lock::<Map>() else {
        return Err(bad(format!(
            "params.{name} is {}: give an array of values, or a range #{{low, high, log}}",
            v.type_name()
        )));
    };
    let num = |k: &str| {
        m.get(k).and_then(|x| {
            x.as_float()
                .ok()
                .or_else(|| x.as_int().ok().map(|i| i as f64))
        })
    };
    let (Some(low), Some(high)) = (num("low"), num("high")) else {
        return Err(bad(format!(
            "params.{name}: a range is #{{low: ..., high: ..., log: true}}"
        )));
    };
    let log = m.get("log").and_then(|x| x.as_bool().ok()).unwrap_or(false);
    if low >= high || (log && low <= 0.0) {
        return Err(bad(format!(
            "params.{name}: the range needs low < high{}, got low {low}, high {high}",
            if log { " and low > 0 (log scale)" } else { "" }
        )));
    }
    Ok(Space::Range { low, high, log })
}

/// `strategy` ("grid" or "random") and `trials`: a random search needs a count; a grid cannot
/// enumerate a range.
fn parse_strategy(
    options: &Map,
    params: &[(String, Space)],
) -> Result<(bool, Option<usize>), BenchError> {
    let random = match options.get("strategy").map(|s| s.to_string()).as_deref() {
        None | Some("grid") => false,
        Some("random") => true,
        Some(other) => {
            return Err(bad(format!(
                "strategy {other:?}: use \"grid\" or \"random\""
            )))
        }
    };
    let trials = match options.get("trials") {
        None => None,
        Some(t) => Some(
            t.as_int()
                .ok()
                .filter(|t| *t >= 1)
                .ok_or_else(|| bad(format!("trials must be a whole number ≥ 1, got {t}")))?
                as usize,
        ),
    };
    if random && trials.is_none() {
        return Err(bad("a random search needs trials: how many to run"));
    }
    if !random {
        if let Some((name, _)) = params
            .iter()
            .find(|(_, s)| matches!(s, Space::Range { .. }))
        {
            return Err(bad(format!("params.{name} is a range, which a grid cannot enumerate: give values, or strategy: \"random\"")));
        }
    }
    Ok((random, trials))
}

/// Reads the options; a value that cannot be searched is named.
/// A relative `out` resolves against `base_dir` (the script's directory).
pub fn parse(options: &Map, base_dir: &Path) -> Result<(SweepSpec, FnPtr), BenchError> {
    rtlab_core::options::Options::new(
        "sweep",
        options,
        &[
            "params",
            "strategy",
            "trials",
            "objective",
            "direction",
            "seed",
            "out",
            "trial",
        ],
    )?;
    let params_map = options
        .get("params")
        .and_then(|p| p.read_lock::<Map>().map(|m| m.clone()))
        .ok_or_else(|| bad("pass params: a map of option name to the values to try, e.g. #{lr: [1e-3, 3e-3], r: [8, 16]}"))?;
    if params_map.is_empty() {
        return Err(bad("params is empty: nothing to search"));
    }
    let params = params_map
        .iter()
        .map(|(name, v)| Ok((name.to_string(), parse_space(name, v)?)))
        .collect::<Result<Vec<_>, BenchError>>()?;
    let (random, trials) = parse_strategy(options, &params)?;
    let objective = options
        .get("objective")
        .filter(|o| o.is_string())
        .map(|o| o.to_string())
        .ok_or_else(|| bad("pass objective: the key of the map each trial returns to optimize, e.g. \"eval_loss\""))?;
    let maximize = match options.get("direction").map(|s| s.to_string()).as_deref() {
        None | Some("minimize") => false,
        Some("maximize") => true,
        Some(other) => {
            return Err(bad(format!(
                "direction {other:?}: use \"minimize\" or \"maximize\""
            )))
        }
    };
    let seed = options
        .get("seed")
        .and_then(|s| s.as_int().ok())
        .unwrap_or(0)
        .max(0) as u64;
    let out = options
        .get("out")
        .filter(|o| o.is_string())
        .map(|o| rtlab_core::workspace::resolve_against(base_dir, &o.to_string()))
        .ok_or_else(|| {
            bad("pass out: the directory that keeps each finished trial (so a rerun resumes)")
        })?;
    let trial = options
        .get("trial")
        .and_then(|t| t.read_lock::<FnPtr>().map(|f| f.clone()))
        .ok_or_else(|| {
            bad("pass trial: a function |params| { ...; #{eval_loss: ...} } that runs one trial")
        })?;
    Ok((
        SweepSpec {
            params,
            random,
            trials,
            objective,
            maximize,
            seed,
            out,
        },
        trial,
    ))
}

/// The trials' parameter maps, in order: the grid's cartesian product (keys in sorted order, the
/// last varying fastest), or seeded random draws.
pub fn plan(spec: &SweepSpec) -> Vec<Map> {
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
                            } => Dynamic::from(rng.random_range(*low..*high)),
                            Space::Range {
                                low,
                                high,
                                log: true,
                            } => Dynamic::from(rng.random_range(low.ln()..high.ln()).exp()),
                        };
                        (name.as_str().into(), v)
                    })
                    .collect()
            })
            .collect();
    }
    let mut grid: Vec<Map> = vec![Map::new()];
    for (name, space) in &spec.params {
        let Space::Choice(values) = space else {
            continue;
        };
        grid = grid
            .into_iter()
            .flat_map(|m| {
                values.iter().map(move |v| {
                    let mut m = m.clone();
                    m.insert(name.as_str().into(), v.clone());
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
    pub params: Map,
    pub objective: f64,
    pub seconds: f64,
    pub cached: bool,
}

/// The file that keeps trial `index` with these parameters.
fn trial_file(out: &Path, index: usize, params: &serde_json::Value) -> PathBuf {
    let hash = blake3::hash(params.to_string().as_bytes()).to_hex();
    out.join(format!("trial-{index:03}-{}.json", &hash[..12]))
}

/// Runs (or reads back) every planned trial, in order.
/// What a trial's result depends on besides its parameters: rtlab's code, and the script's
/// functions (the trial function and whatever it calls). Conservative: the functions' definitions
/// include their positions, so moving one reruns the trials, never serves a stale objective.
fn trial_code(ctx: &NativeCallContext) -> String {
    let ws = rtlab_core::Workspace::of(ctx);
    let mut h = blake3::Hasher::new();
    h.update(ws.rtlab_code().as_bytes());
    let mut defs: Vec<String> = ctx
        .iter_namespaces()
        .flat_map(|m| m.iter_script_fn_info())
        .map(|(_, _, name, arity, def)| {
            without_long_numbers(&format!("{name}/{arity} {:?}", def.body))
        })
        .collect();
    defs.sort();
    for d in defs {
        h.update(d.as_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

/// A function definition's debug text without what Rhai makes differently in each process: its call
/// hashes (runs of 10 or more digits; positions and ordinary constants are shorter) and the names it
/// gives closures (`anon$` and a hash).
fn without_long_numbers(text: &str) -> String {
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

pub fn run(
    ctx: &NativeCallContext,
    spec: &SweepSpec,
    trial: &FnPtr,
) -> Result<Vec<Trial>, BenchError> {
    std::fs::create_dir_all(&spec.out).map_err(|e| bad(format!("{}: {e}", spec.out.display())))?;
    let ws = rtlab_core::Workspace::of(ctx);
    let code = trial_code(ctx);
    let mut done = Vec::new();
    for (index, params) in plan(spec).into_iter().enumerate() {
        let params_json = rtlab_core::json::dynamic_to_json(&Dynamic::from_map(params.clone()))?;
        let file = trial_file(&spec.out, index, &params_json);
        let recorded = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        // A trial run by other code (another rtlab, an edited trial function) is run again.
        let recorded = recorded.filter(|v| {
            let same = v["code"].as_str() == Some(code.as_str());
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
        let result: Dynamic = trial
            .call_within_context(ctx, (Dynamic::from_map(params.clone()),))
            .map_err(|e| {
                bad(format!(
                    "trial {index} ({params_json}) failed: {e}; the finished trials are kept"
                ))
            })?;
        let seconds = started.elapsed().as_secs_f64();
        let objective = result
            .read_lock::<Map>()
            .and_then(|m| m.get(spec.objective.as_str()).cloned())
            .and_then(|v| v.as_float().ok().or_else(|| v.as_int().ok().map(|i| i as f64)))
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                bad(format!(
                    "trial {index} returned {result}, which has no finite number `{}`: return a map such as #{{{}: run.best_eval_loss}}",
                    spec.objective, spec.objective
                ))
            })?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn per_process_hashes_and_closure_names_are_dropped_and_the_code_kept() {
        assert_eq!(
            super::without_long_numbers("anon$4ef85ac1f2cf85cb/1 hash: 12345678901234 @ 1:76 x 42"),
            "anon$/1 hash:  @ 1:76 x 42"
        );
    }
}
