//! Every script in scripts/ runs offline on bundled data, and its output is an insta snapshot
//! (timings and paths scrubbed). The plan scripts run with their cache, as a user runs them, and a
//! second, unchanged run must restore every cell from it.

use crate::common;
use common::*;

/// The plans of ../shared/plans, each one script, end to end on the real local model.
const PLAN_SCRIPTS: &[&str] = &[
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
            .arg("run");
        if !is_plan {
            cmd.arg("--no-cache");
        }
        // Relative to the repo root, as the README runs them.
        Run::from(cmd.arg(format!("scripts/{name}.rhai")).output().unwrap())
    };
    let r = run();
    assert_eq!(r.code, 0, "{name} failed:\n{}\n{}", r.stdout, r.stderr);
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
    let text = scrub(&text, &[out_dir.path(), &repo_root()]);
    insta::assert_snapshot!(name, text);
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
    local_model,
    phase_specialists,
    reality_check,
    separate_by_phase,
    slurm_verify,
    training_pipeline,
    v3_behavioral,
    v3_gold_filter,
    v5_a7_fsm,
    v5_hybrid,
);
