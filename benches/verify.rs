//! `cargo bench --bench verify`: verifier throughput on the 156 VerilogEval problems and on a 2,000-row
//! dataset, against a sequential baseline measured in the same run (one example after another, as the
//! plans' Python does), and a cached rerun.
//!
//! Goals (issue 4, issue 34): at least 1.0 × cores × the baseline's rate, and a rate that does not
//! fall when rtlab holds a lot of memory. A learning run verifies with a model and frames loaded; the
//! verifier once forked rtlab's whole address space for every tool process, and ran at 4.6 rows/s
//! there against 11.3 rows/s in a small process. The "rtlab holding 1 GiB" rows below measure that
//! case: the same work after the script fills a 1 GiB array. Every run reports the system time of
//! rtlab and its tools (`getrusage` of the waited-for children), where spawning costs show.
//!
//! The machine itself is measured in the same run: one CPU-bound tool process alone against one per
//! core at once. A VM's virtual CPUs need not give `cores` × one core's work, and where they do not,
//! "× cores" against a one-process baseline says as much about the machine as about rtlab.
//!
//! Results: `target/bench-results/verify.json` (medians over `RTLAB_BENCH_RUNS`, default 3, runs
//! interleaved with their baseline).

#[path = "common/results.rs"]
mod results;

use std::process::Command;
use std::time::Instant;

/// One `rtlab run`: wall seconds, CPU seconds in the kernel (rtlab and every tool it ran), stdout.
struct Run {
    wall_s: f64,
    sys_s: f64,
    out: String,
}

fn children_sys_s() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init()
    };
    usage.ru_stime.tv_sec as f64 + usage.ru_stime.tv_usec as f64 / 1e6
}

fn run(script: &str, home: &std::path::Path) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.rhai");
    std::fs::write(&path, script).unwrap();
    let sys_before = children_sys_s();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rtlab"))
        .args(["run", "--no-cache", path.to_str().unwrap()])
        .env("RTLAB_HOME", home)
        .output()
        .unwrap();
    let wall_s = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        wall_s,
        sys_s: children_sys_s() - sys_before,
        out: String::from_utf8_lossy(&out.stdout).to_string(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A script's first line when rtlab should hold `mib` MiB while it verifies (a model, frames).
fn ballast(mib: usize) -> String {
    if mib == 0 {
        return String::new();
    }
    // A Rhai array of integers: 16 bytes a slot, every page written.
    format!(
        "let ballast = []; ballast.pad({}, 7);\n",
        mib * (1 << 20) / 16
    )
}

/// The median figures of one workload: sequential baseline and `df.verify`, each with and without
/// ballast, runs interleaved (baseline, parallel, baseline with ballast, parallel with ballast).
struct Workload {
    name: &'static str,
    rows: usize,
    sequential: String,
    parallel: String,
}

fn measure(w: &Workload, home: &std::path::Path, runs: usize, cores: usize) -> serde_json::Value {
    let kinds = [
        ("sequential", &w.sequential, 0),
        ("parallel", &w.parallel, 0),
        ("sequential_1gib", &w.sequential, 1024),
        ("parallel_1gib", &w.parallel, 1024),
    ];
    let mut walls: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut syss: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut outputs: Vec<String> = Vec::new();
    for i in 0..runs {
        for (k, (kind, script, mib)) in kinds.iter().enumerate() {
            // A fresh store each time: every row is verified, none read back.
            let r = run(
                &format!("{}{}", ballast(*mib), script),
                &home.join(format!("{}-{kind}-{i}", w.name)),
            );
            walls[k].push(r.wall_s);
            syss[k].push(r.sys_s);
            outputs.push(r.out);
        }
    }
    assert!(
        outputs.windows(2).all(|p| p[0] == p[1]),
        "every run verifies the same: {outputs:?}"
    );
    let wall: Vec<f64> = walls.iter().map(|v| median(v.clone())).collect();
    let sys: Vec<f64> = syss.iter().map(|v| median(v.clone())).collect();
    let cached = run(&w.parallel, &home.join(format!("{}-parallel-0", w.name)));
    println!(
        "{} ({} rows; {}; medians of {runs} interleaved runs):",
        w.name,
        w.rows,
        outputs[0].trim()
    );
    println!("| run | wall | rows/s | system time | vs the sequential baseline |");
    println!("| --- | --- | --- | --- | --- |");
    for (k, (kind, _, _)) in kinds.iter().enumerate() {
        let base = if kind.ends_with("1gib") {
            wall[2]
        } else {
            wall[0]
        };
        println!(
            "| {kind} | {:.2} s | {:.1} | {:.2} s | {:.2}x = {:.2} × cores |",
            wall[k],
            w.rows as f64 / wall[k],
            sys[k],
            base / wall[k],
            base / wall[k] / cores as f64
        );
    }
    println!(
        "| cached rerun | {:.2} s | | | {:.0}x faster than verifying |",
        cached.wall_s,
        wall[1] / cached.wall_s
    );
    serde_json::json!({
        "rows": w.rows,
        "sequential_s": wall[0],
        "parallel_s": wall[1],
        "sequential_1gib_s": wall[2],
        "parallel_1gib_s": wall[3],
        "sequential_sys_s": sys[0],
        "parallel_sys_s": sys[1],
        "sequential_1gib_sys_s": sys[2],
        "parallel_1gib_sys_s": sys[3],
        "parallel_vs_sequential_per_core": wall[0] / wall[1] / cores as f64,
        "parallel_1gib_vs_parallel": wall[1] / wall[3],
        "cached_s": cached.wall_s,
    })
}

fn main() {
    let data = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let runs: usize = std::env::var("RTLAB_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let machine = results::machine();
    println!(
        "{cores} cores: {} ({})",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["simd"]
    );
    let home = tempfile::tempdir().unwrap();
    let mut figures = serde_json::Map::new();
    figures.insert(
        "machine_scaling".into(),
        machine_scaling(&data, home.path(), runs, cores),
    );
    figures.insert(
        "verilog_eval".into(),
        measure(&verilog_eval(&data), home.path(), runs, cores),
    );
    if std::env::var_os("RTLAB_BENCH_VERILOG_EVAL_ONLY").is_none() {
        figures.insert(
            "dataset_rows".into(),
            measure(&dataset_rows(&data), home.path(), runs, cores),
        );
    }
    results::write("verify", serde_json::Value::Object(figures), runs);
}

/// VerilogEval: each reference (as TopModule) against its own testbench, all stages.
fn verilog_eval(data: &std::path::Path) -> Workload {
    let problems = data.join("verilog-eval-v2");
    Workload {
        name: "verilog_eval",
        rows: 156,
        parallel: format!(
            r#"let p = load_verilog_eval("{}");
let p = p.with_column(col("ref").str_replace_all("module RefModule", "module TopModule").alias("code"));
let v = p.verify(#{{code: "code", testbench: "test", reference: "ref"}});
print(`${{v.filter(col("sim_status") == "pass").len()}} pass`);"#,
            problems.display()
        ),
        // The baseline: the same examples, one verify() call after another in a loop.
        sequential: format!(
            r#"let p = load_verilog_eval("{}");
let passed = 0;
for r in p.to_records() {{
    let code = rename_module(r.ref, "RefModule", "TopModule");
    if verify(code, #{{testbench: r.test, reference: r.ref}}).sim_status == "pass" {{ passed += 1; }}
}}
print(`${{passed}} pass`);"#,
            problems.display()
        ),
    }
}

/// A 2,000-row dataset shaped like the plans' data: the bundled RTLCoder sample repeated with a
/// row number in a comment, so every row is a distinct example; all stages but simulation.
fn dataset_rows(data: &std::path::Path) -> Workload {
    let sample = data.join("rtlcoder_sample.jsonl");
    Workload {
        name: "dataset_rows",
        rows: 2000,
        parallel: format!(
            r#"let base = load_jsonl("{}").to_records();
let rows = [];
for i in 0..2000 {{
    let r = base[i % base.len()];
    rows.push(#{{output: "// example " + i + "\n" + r.output}});
}}
let df = from_records(rows);
let v = df.verify(#{{code: "output"}});
print(`${{v.filter(col("syntax_ok")).len()}} compile`);"#,
            sample.display()
        ),
        sequential: format!(
            r#"let base = load_jsonl("{}").to_records();
let ok = 0;
for i in 0..2000 {{
    let r = base[i % base.len()];
    if verify("// example " + i + "\n" + r.output).syntax_ok {{ ok += 1; }}
}}
print(`${{ok}} compile`);"#,
            sample.display()
        ),
    }
}

/// What this machine gives `cores` CPU-bound tool processes at once, against one alone: a VerilogEval
/// simulation (Prob144's testbench in vvp, the slowest of the 156, about 4 s) run alone, then
/// `cores` copies at once, interleaved `runs` times. One alone over all at once (medians) is the
/// "× cores" the machine gives purely CPU-bound work: a VM's virtual CPUs may share a physical core,
/// its caches or its memory bandwidth with each other or with other tenants. (Not a strict bound for
/// the workloads: their sequential baseline leaves the other cores some of its work, rtlab's own
/// threads and the kernel's.)
fn machine_scaling(
    data: &std::path::Path,
    home: &std::path::Path,
    runs: usize,
    cores: usize,
) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let problem = data.join("verilog-eval-v2").join("Prob144_conwaylife");
    // rtlab renames the reference's module for the design side, as the workloads do.
    let prepare = format!(
        r#"let r = read_text("{p}_ref.sv");
write_text("{d}/ref.sv", r);
write_text("{d}/top.sv", rename_module(r, "RefModule", "TopModule"));
write_text("{d}/tb.sv", read_text("{p}_test.sv"));"#,
        p = problem.display(),
        d = dir.path().display()
    );
    run(&prepare, &home.join("scaling"));
    let compiled = Command::new("iverilog")
        .args(["-g2012", "-o", "sim.vvp", "tb.sv", "ref.sv", "top.sv"])
        .current_dir(dir.path())
        .status()
        .expect("iverilog runs");
    assert!(compiled.success(), "Prob144 compiles");
    let simulate = || {
        Command::new("vvp")
            .args(["-n", "sim.vvp"])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("vvp runs")
    };
    let (mut alone, mut together) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        assert!(simulate().wait().unwrap().success());
        alone.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let children: Vec<_> = (0..cores).map(|_| simulate()).collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        together.push(start.elapsed().as_secs_f64());
    }
    let (alone, together) = (median(alone), median(together));
    println!(
        "the machine: one vvp alone {alone:.2} s, {cores} at once {together:.2} s: {:.2} × cores for CPU-bound work",
        alone / together
    );
    serde_json::json!({
        "alone_s": alone,
        "together_s": together,
        "processes": cores,
        "per_core": alone / together,
    })
}
