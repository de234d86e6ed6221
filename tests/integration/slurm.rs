//! Batches on a real Slurm cluster: the same verdicts as a local run, row for row; a cancelled array
//! task retried; a killed driver reattached without rerunning a finished shard; a failing task named
//! with its stderr while the other shards' results are kept; bad options refused before any work.
//!
//! These tests need a running cluster. `.ci/run` starts a one-node one with `.ci/start-slurm`; they
//! never skip without it: they fail and say how to start it.

use crate::common::{repo_root, rtlab, Run};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Fails (never skips) when no Slurm controller answers, saying how to start one.
fn require_cluster() {
    let answers = Command::new("sinfo")
        .args(["-h", "-o", "%P"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        answers,
        "the Slurm tests need a running cluster: start a one-node one with `bash .ci/start-slurm` (as root; .ci/run does)"
    );
}

/// The 300 rows of VerilogEval v2 the tests verify: each problem's reference as the design under
/// test (it passes) and, while there is room, a one-change mutant of it (most fail), each with the
/// problem's testbench and reference. Made once per test binary by an rtlab script.
fn rows300() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = format!(
            r#"
let problems = load_verilog_eval("{}");
let rows = [];
for p in problems.to_records() {{
    let top = rename_module(p.ref, "RefModule", "TopModule");
    rows.push(#{{task_id: p.task_id, code: top, test: p.test, ref: p.ref}});
    let ms = mutants(top, 1);
    if ms.len() > 0 && rows.len() < 300 {{
        rows.push(#{{task_id: p.task_id, code: ms[0].code, test: p.test, ref: p.ref}});
    }}
}}
from_records(rows).head(300).save_jsonl("rows300.jsonl");
from_records(rows).head(40).save_jsonl("rows40.jsonl");
"#,
            repo_root().join("data/verilog-eval-v2").display()
        );
        std::fs::write(dir.path().join("make.rhai"), script).unwrap();
        let out = Run::from(
            rtlab()
                .current_dir(dir.path())
                .env("RTLAB_HOME", dir.path().join("ws"))
                .args(["run", "make.rhai"])
                .output()
                .unwrap(),
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        dir
    })
    .path()
}

/// `rtlab verify ROWS` in `dir` (its own workspace), with extra arguments and environment.
fn verify_cmd(dir: &Path, rows: &str, out: &str, extra: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = rtlab();
    cmd.current_dir(dir)
        .env("RTLAB_HOME", dir.join("ws"))
        .args(["verify"])
        .arg(rows300().join(rows))
        .args([
            "--code-col",
            "code",
            "--testbench-col",
            "test",
            "--reference-col",
            "ref",
            "-o",
            out,
        ])
        .args(extra);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

fn verify(dir: &Path, rows: &str, out: &str, extra: &[&str], envs: &[(&str, &str)]) -> Run {
    Run::from(verify_cmd(dir, rows, out, extra, envs).output().unwrap())
}

/// The rows a verify wrote, one JSON value each.
fn rows_of(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The local verdicts of a row file, computed once per file in their own workspace.
fn local_rows(rows: &'static str) -> Vec<serde_json::Value> {
    static DONE: OnceLock<std::sync::Mutex<std::collections::HashMap<&'static str, PathBuf>>> =
        OnceLock::new();
    let dir = rows300().join(format!("local-{rows}"));
    let lock = DONE.get_or_init(Default::default);
    let mut done = lock.lock().unwrap();
    if !done.contains_key(rows) {
        std::fs::create_dir_all(&dir).unwrap();
        let run = verify(&dir, rows, "local.jsonl", &[], &[]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        done.insert(rows, dir.join("local.jsonl"));
    }
    rows_of(&done[rows])
}

/// The job directory a driver in `dir` made, once its job has been submitted: (path, first job id).
fn wait_for_job(dir: &Path, within: Duration) -> (PathBuf, u64) {
    let start = Instant::now();
    loop {
        let slurm = dir.join("ws/slurm");
        if let Some(job_dir) = std::fs::read_dir(&slurm)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
        {
            if let Ok(text) = std::fs::read_to_string(job_dir.join("job.json")) {
                let job: serde_json::Value = serde_json::from_str(&text).unwrap();
                if let Some(id) = job["submissions"][0]["job_id"].as_u64() {
                    return (job_dir, id);
                }
            }
        }
        assert!(
            start.elapsed() < within,
            "no Slurm job was submitted within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `rtlab verify` of the 40 rows on Slurm in `dir` in the background, and waits until its job
/// is submitted: (the driver, its job directory, the first job id).
fn start_on_slurm(dir: &Path, spec: &str, fault: &str) -> (Child, PathBuf, u64) {
    let child = verify_cmd(
        dir,
        "rows40.jsonl",
        "slurm.jsonl",
        &["--slurm", spec],
        &[("RTLAB_SLURM_FAULT", fault)],
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let (job_dir, id) = wait_for_job(dir, Duration::from_secs(60));
    (child, job_dir, id)
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finish(child: Child) -> Run {
    Run::from(child.wait_with_output().unwrap())
}

fn scancel(id: &str) {
    let out = Command::new("scancel").arg(id).output().unwrap();
    assert!(out.status.success(), "scancel {id}: {out:?}");
}

/// "N shards, R task runs, S resubmitted" from the driver's closing line.
fn counts(stderr: &str) -> (usize, usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("slurm: job"))
        .unwrap_or_else(|| panic!("no slurm summary in:\n{stderr}"));
    let num = |word: &str| -> usize {
        let before = line.split(word).next().unwrap();
        before
            .rsplit(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    (num(" shards"), num(" task runs"), num(" resubmitted"))
}

#[test]
fn three_hundred_rows_on_slurm_give_the_local_verdicts_row_for_row() {
    require_cluster();
    let dir = tempfile::tempdir().unwrap();
    let run = verify(
        dir.path(),
        "rows300.jsonl",
        "slurm.jsonl",
        &["--slurm", "tasks=6"],
        &[],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(counts(&run.stderr), (6, 6, 0), "{}", run.stderr);
    let on_slurm = rows_of(&dir.path().join("slurm.jsonl"));
    let local = local_rows("rows300.jsonl");
    assert_eq!(on_slurm.len(), 300);
    for (i, (s, l)) in on_slurm.iter().zip(&local).enumerate() {
        assert_eq!(s, l, "row {i} differs between Slurm and local");
    }
    // Some pass, some fail: the comparison covers both verdicts.
    let passing = local.iter().filter(|r| r["sim_status"] == "pass").count();
    assert!((100..300).contains(&passing), "{passing} of 300 pass");
    // The parts were merged into the workspace store: a local rerun verifies nothing.
    let again = verify(dir.path(), "rows300.jsonl", "again.jsonl", &[], &[]);
    assert!(
        again
            .stderr
            .contains("300 rows, 300 from the store, 0 verified"),
        "{}",
        again.stderr
    );
    // A finished job leaves no job directory behind.
    assert_eq!(
        std::fs::read_dir(dir.path().join("ws/slurm"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn an_array_task_cancelled_with_scancel_is_retried_and_the_result_is_complete() {
    require_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (child, _, id) = start_on_slurm(dir.path(), "tasks=4,retries=2", "slow=2000");
    scancel(&format!("{id}_1"));
    let run = finish(child);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (shards, _, resubmitted) = counts(&run.stderr);
    assert_eq!((shards, resubmitted), (4, 1), "{}", run.stderr);
    assert_eq!(
        rows_of(&dir.path().join("slurm.jsonl")),
        local_rows("rows40.jsonl")
    );
}

#[test]
fn a_killed_driver_reattaches_and_never_reruns_a_finished_shard() {
    require_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (mut child, job_dir, _) = start_on_slurm(dir.path(), "tasks=4,max_running=1", "slow=1500");
    // Kill the driver (SIGKILL: no chance to clean up) once one shard has finished.
    wait_for("the first part file", Duration::from_secs(120), || {
        job_dir.join("parts/0.json").exists()
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !job_dir.join("parts/3.json").exists(),
        "the job finished before the driver was killed; the test proves nothing"
    );
    let run = verify(
        dir.path(),
        "rows40.jsonl",
        "slurm.jsonl",
        &["--slurm", "tasks=4,max_running=1"],
        &[("RTLAB_SLURM_FAULT", "slow=1500")],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("slurm: reattached to job"),
        "{}",
        run.stderr
    );
    // Four shards, each run exactly once across both drivers.
    assert_eq!(counts(&run.stderr), (4, 4, 0), "{}", run.stderr);
    assert_eq!(
        rows_of(&dir.path().join("slurm.jsonl")),
        local_rows("rows40.jsonl")
    );
}

#[test]
fn a_failing_task_is_named_with_its_stderr_and_the_other_shards_are_kept() {
    require_cluster();
    let dir = tempfile::tempdir().unwrap();
    let run = verify(
        dir.path(),
        "rows40.jsonl",
        "slurm.jsonl",
        &["--slurm", "tasks=4,retries=1"],
        &[("RTLAB_SLURM_FAULT", "fail=2")],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("1 of 4 shards failed (3 finished and are saved"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("ended FAILED with exit code 1:0 after 2 attempts"),
        "{}",
        run.stderr
    );
    // The message names the task's stderr, and that file says what went wrong.
    let path = run
        .stderr
        .split("its stderr: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no stderr path in:\n{}", run.stderr));
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("shard 2 failed on purpose"), "{text}");
    // The other shards' verdicts are in the store: a local rerun verifies only shard 2's ten rows.
    let again = verify(dir.path(), "rows40.jsonl", "again.jsonl", &[], &[]);
    assert!(
        again
            .stderr
            .contains("40 rows, 30 from the store, 10 verified"),
        "{}",
        again.stderr
    );
    assert_eq!(
        rows_of(&dir.path().join("again.jsonl")),
        local_rows("rows40.jsonl")
    );
}

#[test]
fn a_job_cancelled_from_outside_stops_the_batch_with_a_clear_error() {
    require_cluster();
    let dir = tempfile::tempdir().unwrap();
    // On two cores two of the four elements run, and take 3 s to stop after SIGTERM; the pending
    // ones leave the queue at once. A driver that judged the job while its
    // running elements were still COMPLETING resubmitted the pending ones (seen in CI).
    let (child, job_dir, id) = start_on_slurm(dir.path(), "tasks=4", "slow=20000,linger=3000");
    wait_for("two elements running", Duration::from_secs(60), || {
        std::fs::read_dir(job_dir.join("runs")).map_or(0, |d| d.count()) >= 2
    });
    scancel(&id.to_string());
    let run = finish(child);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("slurm: job {id} was cancelled outside rtlab")),
        "{}",
        run.stderr
    );
    // Nothing was resubmitted: the job directory holds one submission.
    let record = std::fs::read_to_string(job_dir.join("job.json")).unwrap();
    assert_eq!(record.matches("\"job_id\"").count(), 1, "{record}");
}

#[test]
fn bad_slurm_options_are_refused_before_any_work() {
    require_cluster();
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "partition=nope",
            "slurm: unknown partition \"nope\"; this cluster has: cpu",
        ),
        (
            "tasks=0",
            "--slurm: `tasks` must be between 1 and 1000 (one array element per task), not 0",
        ),
        (
            "tasks=two",
            "--slurm: tasks must be a whole number, not \"two\"",
        ),
        (
            "mem=lots",
            "--slurm: `mem` is memory per task as Slurm writes it",
        ),
        ("partitoin=cpu", "--slurm: unknown option `partitoin`"),
        (
            "extra=--no-such-sbatch-flag",
            "sbatch refused the job: sbatch: unrecognized option '--no-such-sbatch-flag'",
        ),
    ];
    for (spec, wanted) in cases {
        let run = verify(
            dir.path(),
            "rows40.jsonl",
            "out.jsonl",
            &["--slurm", spec],
            &[],
        );
        assert_ne!(run.code, 0, "{spec}");
        assert!(
            run.stderr.contains(wanted),
            "--slurm {spec}:\n{}",
            run.stderr
        );
        assert!(
            !dir.path().join("out.jsonl").exists(),
            "{spec} wrote output"
        );
    }
    // Nothing was verified by any of them.
    let again = verify(dir.path(), "rows40.jsonl", "out.jsonl", &[], &[]);
    assert!(
        again.stderr.contains("40 rows, 0 from the store"),
        "{}",
        again.stderr
    );
}

#[test]
fn slurm_options_in_a_script_are_checked_and_shown() {
    for (code, wanted) in [
        ("slurm(#{tasks: 0})", "slurm: `tasks` must be between 1 and 1000"),
        ("slurm(#{taks: 2})", "slurm: unknown option `taks`; valid options: account, cpus_per_task, dir, extra, max_running, mem, partition, retries, tasks, time"),
        ("slurm(#{partition: \"--all\"})", "slurm: `partition` must be a Slurm name"),
        ("slurm(#{extra: [\"-p x\"]})", "each of `extra` is one sbatch option written `--name=value`"),
        ("slurm(#{retries: -1})", "slurm: option `retries` must be at least 0, not -1"),
        ("from_records([#{output: \"x\"}]).verify(#{code: \"output\", executor: 3})", "df.verify: option `executor` must be slurm(#{...}) or \"local\", not 3"),
    ] {
        let e = crate::common::err(code);
        assert!(e.contains(wanted), "{code}:\n{e}");
    }
    assert_eq!(
        crate::common::ok("print(slurm(#{tasks: 8, mem: \"2G\", extra: [\"--qos=high\"]}))").trim(),
        "slurm(#{tasks: 8, cpus_per_task: 1, mem: \"2G\", retries: 2, extra: [\"--qos=high\"]})"
    );
}

#[test]
fn without_slurm_the_error_says_how_to_get_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // A PATH with the verifier's tools and nothing of Slurm.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["iverilog", "vvp", "yosys", "verilator", "stat"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{tool} must be installed (.ci/run does)"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    let run = verify(
        dir.path(),
        "rows40.jsonl",
        "out.jsonl",
        &["--slurm", "tasks=2"],
        &[("PATH", bin.to_str().unwrap())],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("Slurm is not installed here: `sinfo` is not on PATH")
            && run.stderr.contains("bash .ci/start-slurm"),
        "{}",
        run.stderr
    );
}

#[test]
fn ctrl_c_cancels_the_slurm_job() {
    require_cluster();
    let dir = tempfile::tempdir().unwrap();
    let (child, _, id) = start_on_slurm(dir.path(), "tasks=4", "slow=30000");
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let run = finish(child);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "cancelled by Ctrl-C: Slurm job {id} was cancelled with scancel"
        )),
        "{}",
        run.stderr
    );
    wait_for(
        "the job to leave the queue",
        Duration::from_secs(30),
        || {
            let out = Command::new("squeue")
                .args(["-h", "-r", "-j", &id.to_string()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().is_empty()
        },
    );
}

#[test]
fn a_shard_past_its_time_limit_is_named_as_timed_out() {
    require_cluster();
    let dir = tempfile::tempdir().unwrap();
    // Slurm's smallest limit is a minute; each shard would sleep for two.
    let run = verify(
        dir.path(),
        "rows40.jsonl",
        "slurm.jsonl",
        &["--slurm", "tasks=2,time=1"],
        &[("RTLAB_SLURM_FAULT", "slow=120000")],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("2 of 2 shards failed")
            && run
                .stderr
                .contains("timed out after the time limit 1: raise `time` or `tasks`"),
        "{}",
        run.stderr
    );
}

/// A benchmark whose samples are verified on Slurm scores exactly as one verified here.
#[test]
fn a_benchmark_verified_on_slurm_scores_as_one_verified_here() {
    require_cluster();
    let data = repo_root().join("data");
    let script = |executor: &str| {
        format!(
            r#"import_cassette("{cassette}");
let ids = load_jsonl("{ids}").column("task_id");
let problems = load_verilog_eval("{problems}").filter(col("task_id").is_in(ids));
let run = benchmark(llm(#{{provider: "replay", model: "scripted-v3"}}), problems, #{{n: 1, k: [1], name: "scripted-v3"{executor}}});
print(run.summary);
print(run.samples.select(["task_id", "score", "sim_status"]).to_records());"#,
            cassette = data.join("cassettes/benchmark_compare.jsonl").display(),
            ids = data
                .join("cassettes/benchmark_compare_problems.jsonl")
                .display(),
            problems = data.join("verilog-eval-v2").display(),
        )
    };
    let run_in = |code: String| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.rhai"), code).unwrap();
        let run = Run::from(
            rtlab()
                .current_dir(dir.path())
                .env("RTLAB_HOME", dir.path().join("ws"))
                .args(["run", "--no-cache", "b.rhai"])
                .output()
                .unwrap(),
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        run
    };
    let here = run_in(script(""));
    let there = run_in(script(", executor: slurm(#{tasks: 3})"));
    assert!(there.stderr.contains("slurm: job"), "{}", there.stderr);
    assert!(!here.stderr.contains("slurm: job"), "{}", here.stderr);
    // The summary minus the run id, and every sample's verdict.
    let strip_id = |s: &str| {
        s.split(", ")
            .filter(|part| !part.contains("\"id\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(strip_id(&there.stdout), strip_id(&here.stdout));
    assert!(here.stdout.contains("sim_status"), "{}", here.stdout);
}

/// An A7 testbench's mutants verified on Slurm kill what they kill here.
#[test]
fn an_a7_testbench_judged_on_slurm_is_judged_as_here() {
    require_cluster();
    use crate::common::mock_llm::MockServer;
    use crate::llm::{GOOD_TB, TOGGLE_RTL};
    let good = MockServer::start(|_| format!("```systemverilog\n{GOOD_TB}\n```"));
    let dir = tempfile::tempdir().unwrap();
    let run = |home: &str, executor: &str| {
        std::fs::write(
            dir.path().join("a7.rhai"),
            format!(
                r#"let rtl = `{TOGGLE_RTL}`;
let model = llm(#{{base_url: "{url}", model: "a7-good"}});
let r = a7_testbench("a toggle FSM", rtl, #{{model: model, mutants: 8{executor}}});
print(`${{r.accepted}} ${{r.killed}}/${{r.mutants}}`);"#,
                url = good.openai_url()
            ),
        )
        .unwrap();
        Run::from(
            rtlab()
                .current_dir(dir.path())
                .env("RTLAB_HOME", dir.path().join(home))
                .args(["run", "--no-cache", "a7.rhai"])
                .output()
                .unwrap(),
        )
    };
    let on_slurm = run("ws-slurm", ", executor: slurm(#{tasks: 2})");
    assert_eq!(on_slurm.code, 0, "{}", on_slurm.stderr);
    assert!(
        on_slurm.stderr.contains("slurm: job"),
        "{}",
        on_slurm.stderr
    );
    let here = run("ws-local", "");
    assert_eq!(here.code, 0, "{}", here.stderr);
    assert!(!here.stderr.contains("slurm: job"), "{}", here.stderr);
    assert_eq!(on_slurm.stdout, here.stdout);
    assert!(on_slurm.stdout.starts_with("true "), "{}", on_slurm.stdout);
}
