//! What made a run: the code identity of each rtlab subsystem (the cell cache keys on them), the tools'
//! versions, the models' hashes and the machine. `rtlab run --manifest FILE` and `rtlab report` write
//! it as JSON, for a paper's reproducibility appendix.

use std::collections::BTreeMap;

/// Each subsystem's code identity, by the name users read in "rtlab's trainer changed".
pub fn code_identities() -> BTreeMap<String, String> {
    use rtlab_core::provenance::{code_identity, CODE_IDENTITY};
    [
        (
            "runtime",
            code_identity("runtime", env!("RTLAB_CODE_IDENTITY")),
        ),
        ("core", code_identity("core", CODE_IDENTITY)),
        ("data", rtlab_data::code_identity()),
        ("verifier", rtlab_verify::code_identity()),
        ("LLM client", rtlab_llm::code_identity()),
        ("model", code_identity("model", rtlab_model::CODE_IDENTITY)),
        ("trainer", rtlab_train::code_identity()),
        ("benchmark", rtlab_bench::code_identity()),
        ("phase", rtlab_phase::code_identity()),
        ("Slurm executor", rtlab_slurm::code_identity()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// One hash of every subsystem's identity: for results that may depend on any of rtlab.
pub fn whole_identity() -> String {
    let all = serde_json::to_string(&code_identities()).unwrap_or_default();
    blake3::hash(all.as_bytes()).to_hex()[..16].to_string()
}

/// The subsystems whose code differs between a cache entry's record and this build, or None when
/// none does. An entry that records no identities (written before they existed) differs as a whole.
pub fn changed_code(recorded: &BTreeMap<String, String>) -> Option<String> {
    if recorded.is_empty() {
        return Some("rtlab changed (the entry names no code version)".to_string());
    }
    let current = code_identities();
    let changed: Vec<&str> = current
        .iter()
        .filter(|(name, id)| recorded.get(*name) != Some(id))
        .map(|(name, _)| name.as_str())
        .collect();
    match changed.as_slice() {
        [] => None,
        [one] => Some(format!("rtlab's {one} changed")),
        [rest @ .., last] => Some(format!("rtlab's {} and {last} changed", rest.join(", "))),
    }
}

/// The version, commit and code identities of this build.
pub fn build() -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "commit": env!("RTLAB_GIT_COMMIT"),
        "code": code_identities(),
    })
}

/// The versions of the Python packages rtlab's cross-checks and peers use (the GGUF reader, PEFT,
/// TRL, llama.cpp's bindings), where Python has them. One `python3` run; absent Python: empty.
fn python_packages() -> BTreeMap<String, String> {
    const PACKAGES: &[&str] = &[
        "gguf",
        "numpy",
        "torch",
        "peft",
        "trl",
        "transformers",
        "llama_cpp_python",
        "sacrebleu",
    ];
    let code = format!(
        "import importlib.metadata as m\nfor p in {PACKAGES:?}:\n    try: print(p, m.version(p))\n    except Exception: pass"
    );
    let Ok(out) = std::process::Command::new("python3")
        .args(["-c", &code])
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return BTreeMap::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

/// The provenance manifest of a notebook run: what a paper's reproducibility appendix needs. rtlab's
/// version, commit and code identities; the EDA tools' and Python packages' versions; each model and
/// adapter read, by path, with its content hash; the machine; every cell with its status, wall
/// time, seeds and input hashes; the run's wall time.
pub fn manifest(
    rt: &crate::Runtime,
    script: &std::path::Path,
    cells: &[crate::CellReport],
    wall_s: f64,
    trust_cache: bool,
) -> serde_json::Value {
    use crate::CellStatus;
    let cells: Vec<serde_json::Value> = cells
        .iter()
        .map(|r| {
            let (status, seconds) = match r.status {
                CellStatus::Ran { elapsed_s, .. } => ("ran", elapsed_s),
                CellStatus::Cached { saved_s } => ("cached", saved_s),
                CellStatus::Unchanged { saved_s } => ("unchanged", saved_s),
            };
            let seeds = rt
                .compile("manifest", &r.cell.code)
                .map(|ast| crate::notebook::deps::analyze(&ast).seeds)
                .unwrap_or_default();
            serde_json::json!({
                "index": r.cell.index,
                "name": r.cell.name,
                "status": status,
                "seconds": seconds,
                "code_blake3": blake3::hash(r.cell.code.as_bytes()).to_hex().to_string(),
                "seeds": seeds,
                "inputs": r.inputs,
                "made_by_other_code": r.made_by_other_code,
            })
        })
        .collect();
    let tools: BTreeMap<&str, Option<String>> = rtlab_verify::tool_versions()
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    let models: BTreeMap<String, String> = rtlab_core::provenance::hashed_files()
        .into_iter()
        .map(|(p, h)| (p.display().to_string(), h))
        .collect();
    let script_hash = std::fs::read(script)
        .map(|b| blake3::hash(&b).to_hex().to_string())
        .unwrap_or_default();
    serde_json::json!({
        "manifest_format": 1,
        "rtlab": build(),
        "script": {
            "path": std::fs::canonicalize(script).unwrap_or_else(|_| script.to_path_buf()),
            "blake3": script_hash,
        },
        "created_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "wall_s": wall_s,
        "trust_cache": trust_cache,
        "tools": tools,
        "python": python_packages(),
        "models": models,
        "machine": rtlab_core::provenance::machine(),
        "cells": cells,
    })
}

/// Writes the manifest as pretty JSON (atomically), or says why not.
pub fn write_manifest(
    path: &std::path::Path,
    manifest: &serde_json::Value,
) -> Result<(), crate::notebook::NotebookError> {
    let text = serde_json::to_string_pretty(manifest)? + "\n";
    rtlab_core::workspace::write_atomic(path, text.as_bytes()).map_err(|e| {
        crate::notebook::NotebookError::Io {
            doing: "write the manifest",
            path: path.to_path_buf(),
            source: e,
        }
    })
}

/// The Rhai surface: `provenance()`, what this rtlab is and runs on.
#[rhai::export_module]
pub mod provenance_functions {
    use rhai::Map;

    /// What made this run's results: `#{version, commit, code, tools, machine, models}`. `code` maps
    /// each subsystem ("verifier", "trainer", ...) to its code identity, the hash of its sources that
    /// every cache entry records (a result made by other code is recomputed, unless `rtlab run
    /// --trust-cache`); `tools` gives the EDA tools' version lines (`()` for a missing one);
    /// `machine` the CPU, its SIMD extensions, cores and memory; `models` the content hash of each
    /// model and adapter file read so far. `rtlab run --manifest FILE` writes this and more as JSON.
    ///
    /// ```rhai
    /// let p = provenance();
    /// assert(p.code.keys().contains("verifier"), "the verifier has a code identity");
    /// assert(p.machine.cores >= 1, "a machine has a core");
    /// print(`rtlab ${p.version} on ${p.machine.cores} cores`);
    /// ```
    pub fn provenance() -> Map {
        let build = super::build();
        let tools: serde_json::Map<String, serde_json::Value> = rtlab_verify::tool_versions()
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
            .collect();
        let models: serde_json::Map<String, serde_json::Value> =
            rtlab_core::provenance::hashed_files()
                .into_iter()
                .map(|(p, h)| (p.display().to_string(), serde_json::Value::String(h)))
                .collect();
        let value = serde_json::json!({
            "version": build["version"],
            "commit": build["commit"],
            "code": build["code"],
            "tools": tools,
            "machine": rtlab_core::provenance::machine(),
            "models": models,
        });
        rtlab_core::json::json_to_dynamic(value)
            .try_cast::<Map>()
            .unwrap_or_default()
    }
}
