//! Every script in scripts/ runs offline on bundled data, and its output is an insta snapshot
//! (timings and paths scrubbed). The plan scripts run with their cache, as a user runs them, and a
//! second, unchanged run must restore every cell from it.

use crate::common;
use common::*;

/// The plans of ../shared/plans, each one script, end to end on the real local model.
const PLAN_SCRIPTS: &[&str] = &[
    "learning",
    "v3_behavioral",
    "v5_hybrid",
    "phase_specialists",
    "training_pipeline",
    "reality_check",
];

/// One script at a time: the plan scripts train and decode a real model, and two of them at once
/// ran a 24 GB machine out of memory (`local_model` had 12.7 GB resident when it was killed, with
/// another script and the test binary beside it). The other integration tests still run beside them.
static ONE_SCRIPT_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `scripts/{name}.rhai` from the repo root, as the README does, and matches its snapshot.
fn run_script_and_match_snapshot(name: &str) {
    // A script that failed (and poisoned the lock) must not fail the others.
    let _turn = ONE_SCRIPT_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let out_dir = tempfile::tempdir().unwrap();
    let is_plan = PLAN_SCRIPTS.contains(&name);
    let run = || {
        let mut cmd = rtlab();
        cmd.current_dir(repo_root())
            .env("RTLAB_HOME", out_dir.path().join(".rtlab"))
            .env("RTLAB_OUT", out_dir.path())
            // The learning experiment at the size CI affords (its full run is the README's job).
            .env("RTLAB_SIZE", "ci")
            .arg("run");
        if !is_plan {
            cmd.arg("--no-cache");
        }
        // The main job's run records its provenance (the first run's overwritten by the rerun's).
        if name == "learning" {
            cmd.arg("--manifest")
                .arg(out_dir.path().join("manifest.json"));
            // Every cell that can be cached is: by default only cells over 1 s are, and at CI's
            // size the base benchmark takes about that long, so whether its snapshot said
            // `cached` depended on the machine's speed (it stopped when decoding got faster).
            cmd.args(["--cache-min", "0"]);
        }
        // Relative to the repo root, as the README runs them.
        Run::from(cmd.arg(format!("scripts/{name}.rhai")).output().unwrap())
    };
    let r = run();
    assert_eq!(r.code, 0, "{name} failed:\n{}\n{}", r.stdout, r.stderr);
    if name == "learning" {
        let manifest = std::fs::read_to_string(out_dir.path().join("manifest.json"))
            .expect("rtlab run --manifest writes the manifest");
        insta::assert_snapshot!(
            "learning_manifest",
            manifest_shape(&serde_json::from_str(&manifest).unwrap(), out_dir.path())
        );
    }
    // A plan's snapshot ends with its unchanged rerun's status lines: what the README shows.
    let mut rerun_status = String::new();
    if is_plan {
        let again = run();
        assert_eq!(
            again.code, 0,
            "{name} failed on its rerun:\n{}\n{}",
            again.stdout, again.stderr
        );
        // The cells slow enough to cache (`ran in 12.3 s, cached`) must come back from the cache.
        let cached_label = |l: &str| {
            (l.starts_with('[') && l.trim_end().ends_with(", cached"))
                .then(|| l[..l.find(']').unwrap() + 1].to_string())
        };
        let slow: Vec<String> = r
            .stdout
            .lines()
            .chain(r.stderr.lines())
            .filter_map(cached_label)
            .collect();
        assert!(!slow.is_empty(), "{name}: no cell was slow enough to cache");
        let rerun = format!("{}\n{}", again.stdout, again.stderr);
        rerun_status = again
            .stderr
            .lines()
            .filter(|l| l.starts_with('[') && l.contains("] "))
            .map(|l| format!("{l}\n"))
            .collect();
        for label in &slow {
            assert!(
                rerun.contains(&format!("{label} cached (saved")),
                "{name}: an unchanged rerun must restore {label} from the cache:\n{rerun}"
            );
        }
    }
    let mut text = format!("{}\n--- stderr ---\n{}", r.stdout, r.stderr);
    if is_plan {
        text.push_str(&format!("\n--- rerun, status lines ---\n{rerun_status}"));
    }
    let mut text = scrub(&text, &[out_dir.path(), &repo_root()]);
    if name == "learning" {
        check_learning_json(out_dir.path());
        text = scrub_decimals(&text)
            .lines()
            .map(|l| {
                // Which goals a reduced run meets, and the curve's shape, are model numbers too.
                let l = l.replace(['✅', '❌'], "[mark]");
                if l.starts_with("min ") || l.chars().any(|c| ('▁'..='█').contains(&c)) {
                    "[curve]".to_string()
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
    }
    insta::assert_snapshot!(name, text);
}

/// The learning experiment's results file: the split is disjoint and covers VerilogEval v2, the
/// evaluated problems are held out, and every stage has its numbers in [0, 1].
fn check_learning_json(out: &std::path::Path) {
    let text =
        std::fs::read_to_string(out.join("learning.json")).expect("learning.json is written");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let (train, heldout, eval) = (ids("train_tasks"), ids("heldout_tasks"), ids("eval_tasks"));
    assert_eq!(train.len() + heldout.len(), 156);
    assert!(
        train.iter().all(|t| !heldout.contains(t)),
        "a task on both sides"
    );
    assert!(
        eval.iter().all(|t| heldout.contains(t)),
        "an evaluated task that is not held out"
    );
    let stages = v["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["base", "sft", "rs_sft", "dpo"]);
    for s in stages {
        for k in ["syntax", "synth", "all_io", "pass@1", "pass@k"] {
            let x = s[k].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=1.0).contains(&x), "{k} = {x} in {s}");
        }
    }
}

/// The provenance manifest with what varies between machines and runs scrubbed: hashes, times,
/// versions, the machine's values and the Python packages present. What stays is its shape: every
/// field, the subsystems, the tools, which models and adapters were read (by their place in the run's
/// output directory), and each cell's name, status and seeds.
fn manifest_shape(m: &serde_json::Value, out: &std::path::Path) -> String {
    use serde_json::{json, Value};
    let keys = |v: &Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let out = out.display().to_string();
    let models: Vec<String> = keys(&m["models"])
        .into_iter()
        .map(|p| match p.strip_prefix(&out) {
            Some(rest) => format!("[OUT]{rest}"),
            // The base model, wherever the model cache is.
            None => format!(
                "[MODELS]/{}",
                std::path::Path::new(&p)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
            ),
        })
        .collect();
    let cells: Vec<Value> = m["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert!(c["seconds"].as_f64().is_some(), "{c}");
            assert_eq!(c["code_blake3"].as_str().map(str::len), Some(64), "{c}");
            json!({"name": c["name"], "status": c["status"], "seeds": c["seeds"], "inputs": c["inputs"].as_object().map(|o| o.len())})
        })
        .collect();
    assert!(m["wall_s"].as_f64().is_some_and(|w| w > 0.0));
    assert!(m["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    let shape = json!({
        "fields": keys(m),
        "rtlab": {"version": m["rtlab"]["version"], "code": keys(&m["rtlab"]["code"])},
        "tools": keys(&m["tools"]),
        "machine": keys(&m["machine"]),
        "models": models,
        "cells": cells,
    });
    serde_json::to_string_pretty(&shape).unwrap() + "\n"
}

/// Decimals (`0.3125`, `1.806`) → `[D]`: the learning experiment's rates and losses depend on the
/// CPU's float summation order (AVX2 and AVX-512 machines decode different tokens from the same
/// seed), so its snapshot keeps the steps, the counts and the split, and `check_learning_json`
/// checks the numbers' shape.
fn scrub_decimals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let starts = chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_alphanumeric());
        if starts {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            if j + 1 < chars.len() && chars[j] == '.' && chars[j + 1].is_ascii_digit() {
                j += 1;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                out.push_str("[D]");
                i = j;
                continue;
            }
            out.extend(&chars[i..j]);
            i = j;
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// One test per script, so that they run in parallel and one can be rerun alone
/// (`cargo test --test integration scripts::v5_hybrid`).
macro_rules! script_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_script_and_match_snapshot(stringify!($name));
            }
        )*
        /// Every script in scripts/ has its test above: a new script cannot go untested.
        #[test]
        fn every_script_has_a_snapshot_test() {
            let tested = [$(stringify!($name)),*];
            let mut missing = Vec::new();
            for entry in std::fs::read_dir(repo_root().join("scripts")).unwrap().flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "rhai") {
                    let name = path.file_stem().unwrap().to_string_lossy().to_string();
                    if !tested.contains(&name.as_str()) {
                        missing.push(name);
                    }
                }
            }
            assert!(missing.is_empty(), "add these scripts to script_tests! in tests/integration/scripts.rs: {missing:?}");
        }
    };
}

script_tests!(
    benchmark_compare,
    dataset_tour,
    dpo_loop,
    jupyter_tour,
    learning,
    local_model,
    phase_specialists,
    provenance,
    reality_check,
    separate_by_phase,
    slurm_verify,
    training_pipeline,
    v3_behavioral,
    v3_gold_filter,
    v5_a7_fsm,
    v5_hybrid,
);

/// The README's table of the learning experiment is the run's results file, number for number
/// (rounded to 3 places as the script prints them): `book/src/results/learning.json` is the
/// `learning.json` that run wrote.
#[test]
fn the_readme_learning_table_is_its_results_file() {
    let root = repo_root();
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("book/src/results/learning.json")).unwrap(),
    )
    .unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let r3 = |x: f64| format!("{:.3}", (x * 1000.0).round() / 1000.0);
    for stage in v["stages"].as_array().unwrap() {
        let name = stage["name"].as_str().unwrap();
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| {name} ")))
            .unwrap_or_else(|| panic!("no README row for stage {name}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | stage | syntax (ci) | synth | all I/O | pass@1 (ci) | pass@4 | p (syntax) | p (pass@1) |
        for (cell, key) in [
            (2, "syntax"),
            (3, "synth"),
            (4, "all_io"),
            (5, "pass@1"),
            (6, "pass@k"),
        ] {
            let expected = r3(stage[key].as_f64().unwrap());
            assert!(
                cells[cell].starts_with(&expected),
                "README, stage {name}, {key}: {:?} is not {expected}",
                cells[cell]
            );
        }
        if let Some(p) = stage["p_value_syntax"].as_f64() {
            let shown = if p < 0.001 {
                "< 0.001".to_string()
            } else {
                r3(p)
            };
            assert_eq!(cells[7], shown, "README, stage {name}, p (syntax)");
            assert_eq!(
                cells[8],
                r3(stage["p_value"].as_f64().unwrap()),
                "README, stage {name}, p (pass@1)"
            );
        }
    }
}
