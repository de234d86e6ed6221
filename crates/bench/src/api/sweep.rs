//! `sweep`'s Rhai side: its options read into a [`SweepSpec`], the trial function's identity, and
//! each trial run as a call of the script's function ([`crate::sweep`] plans, keeps and resumes).

use crate::sweep::{bad, without_long_numbers, Space, SweepSpec};
use crate::BenchError;
use rhai::{Dynamic, FnPtr, Map, NativeCallContext};
use std::path::Path;

/// One option's search space: an array of values, or a range `#{low, high, log}`.
fn parse_space(name: &str, v: &Dynamic) -> Result<Space, BenchError> {
    if let Some(values) = v.read_lock::<rhai::Array>() {
        if values.is_empty() {
            return Err(bad(format!(
                "params.{name} is an empty array: give at least one value"
            )));
        }
        let values = values
            .iter()
            .map(rtlab_core::json::dynamic_to_json)
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Space::Choice(values));
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

/// Runs the sweep, calling `trial` with each trial's params map; its result must hold the
/// objective as a finite number.
pub fn run(
    ctx: &NativeCallContext,
    spec: &SweepSpec,
    trial: &FnPtr,
) -> Result<Vec<crate::sweep::Trial>, BenchError> {
    let ws = rtlab_core::Workspace::of(ctx);
    let code = trial_code(ctx);
    crate::sweep::run(&ws, spec, &code, &mut |index, params| {
        let params_json = serde_json::Value::Object(params.clone());
        let result: Dynamic = trial
            .call_within_context(ctx, (params_map(params),))
            .map_err(|e| {
                bad(format!(
                    "trial {index} ({params_json}) failed: {e}; the finished trials are kept"
                ))
            })?;
        result
            .read_lock::<Map>()
            .and_then(|m| m.get(spec.objective.as_str()).cloned())
            .and_then(|v| v.as_float().ok().or_else(|| v.as_int().ok().map(|i| i as f64)))
            .filter(|x| x.is_finite())
            .ok_or_else(|| {
                bad(format!(
                    "trial {index} returned {result}, which has no finite number `{}`: return a map such as #{{{}: run.best_eval_loss}}",
                    spec.objective, spec.objective
                ))
            })
    })
}

/// A trial's parameters as the map the script's function takes.
pub fn params_map(params: &serde_json::Map<String, serde_json::Value>) -> Dynamic {
    rtlab_core::json::json_to_dynamic(serde_json::Value::Object(params.clone()))
}
