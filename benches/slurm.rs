//! `cargo bench --bench slurm`: what running a batch as a Slurm job array costs on one node, against
//! the local batch in the same run. Needs a cluster (`bash .ci/start-slurm` starts a one-node one).
//!
//! 1. The overhead: 300 VerilogEval rows (each reference as the design, and a one-change mutant of
//!    it, with their testbenches) verified locally and on Slurm with as many tasks as CPUs, each
//!    `RTLAB_BENCH_RUNS` times (default 3) in a fresh workspace; the median wall times and their
//!    ratio. Goal (issue 16): Slurm at most 1.3× the local wall time.
//! 2. Throughput against the number of shards (tasks), once each: where the per-task cost (a
//!    scheduling round, a process start, the tool-version probe) starts to outweigh the work.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn rtlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rtlab"))
}

/// Verifies `rows` in a fresh workspace; returns the wall seconds.
fn verify(rows: &Path, slurm: Option<&str>) -> f64 {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = rtlab();
    cmd.env("RTLAB_HOME", home.path().join("ws"))
        .arg("verify")
        .arg(rows)
        .args(["--code-col", "code", "--testbench-col", "test"])
        .args(["--reference-col", "ref", "-o"])
        .arg(home.path().join("out.jsonl"));
    if let Some(spec) = slurm {
        cmd.args(["--slurm", spec]);
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    secs
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn main() {
    let sinfo = Command::new("sinfo").args(["-h", "-o", "%c"]).output();
    let cpus: usize = match sinfo {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(1),
        _ => panic!("the Slurm benchmark needs a cluster: `bash .ci/start-slurm` starts one here"),
    };
    let runs: usize = std::env::var("RTLAB_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"let problems = load_verilog_eval("{}");
let rows = [];
for p in problems.to_records() {{
    let top = rename_module(p.ref, "RefModule", "TopModule");
    rows.push(#{{code: top, test: p.test, ref: p.ref}});
    let ms = mutants(top, 1);
    if ms.len() > 0 && rows.len() < 300 {{ rows.push(#{{code: ms[0].code, test: p.test, ref: p.ref}}); }}
}}
from_records(rows).head(300).save_jsonl("rows.jsonl");"#,
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/verilog-eval-v2")
            .display()
    );
    std::fs::write(dir.path().join("make.rhai"), script).unwrap();
    let made = rtlab()
        .current_dir(dir.path())
        .env("RTLAB_HOME", dir.path().join("ws"))
        .args(["run", "make.rhai"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let rows = dir.path().join("rows.jsonl");

    println!("300 rows, one node with {cpus} CPUs, {runs} runs each (median):");
    let tasks = format!("tasks={cpus}");
    let (mut local, mut slurm) = (Vec::new(), Vec::new());
    // Interleaved, so a noisy neighbour hits both alike.
    for _ in 0..runs {
        local.push(verify(&rows, None));
        slurm.push(verify(&rows, Some(&tasks)));
    }
    let (l, s) = (median(local.clone()), median(slurm.clone()));
    println!("  local batch        {l:6.2} s  runs {local:.2?}");
    println!("  slurm {tasks:<12} {s:6.2} s  runs {slurm:.2?}");
    println!(
        "  overhead           {:.2}x the local wall time (goal: at most 1.3x)",
        s / l
    );

    println!("throughput by shards (one run each):");
    println!("  tasks  rows/shard  wall s  rows/s");
    for t in [1, 2, 4, 8, 16, 32, 75, 150, 300] {
        let secs = verify(&rows, Some(&format!("tasks={t}")));
        println!(
            "  {t:5}  {:10}  {secs:6.2}  {:6.1}",
            300usize.div_ceil(t),
            300.0 / secs
        );
    }
}
