//! `cargo bench --bench datasets`: the plans' dataset job on 200k rows, in rtlab and in the two ways the
//! plans' Python does it, measured in the same run.
//!
//! The job: load a JSONL file of `{instruction, output, metadata: {category, source, score}}`, keep rows
//! of some categories with score ≥ 0.7, count by category, save the kept rows. Goals (issue 3): at least
//! 10× a plain Python `json` loop, 3× pandas, peak memory under 2× the file size; (issue 34) 2× polars
//! for Python, eager against eager and lazy against lazy, when the Python has `polars`.
//! `RTLAB_BENCH_ROWS` changes the row count.

#[path = "common/python.rs"]
mod python;
#[path = "common/results.rs"]
mod results;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const CATEGORIES: [&str; 8] = [
    "fsm", "alu", "counter", "mux", "memory", "shift", "arbiter", "uart",
];

fn generate(path: &std::path::Path, rows: usize) {
    // A small deterministic LCG: no rand dependency for a benchmark's data.
    let mut state: u64 = 42;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for i in 0..rows {
        let cat = CATEGORIES[(next() % 8) as usize];
        let score = (next() % 1000) as f64 / 1000.0;
        let source = ["rtlcoder", "verilogeval", "a7"][(next() % 3) as usize];
        let width = 1 + next() % 64;
        let row = serde_json::json!({
            "instruction": format!("Design a {width}-bit {cat} module number {i}. It has a clock, a synchronous reset and an enable; describe its behaviour precisely and keep it synthesizable."),
            "output": format!("module m{i} (input clk, input rst, input en, input [{w}:0] a, output reg [{w}:0] q);\n  always @(posedge clk) begin\n    if (rst) q <= 0;\n    else if (en) q <= q + a;\n  end\nendmodule\n", w = width - 1),
            "metadata": {"category": cat, "source": source, "score": score},
        });
        writeln!(f, "{row}").unwrap();
    }
}

/// Runs a command five times; returns the median seconds, the largest peak MiB and the last stdout.
fn measure(mut cmd: Command) -> (f64, f64, String) {
    let runs: Vec<(f64, f64, String)> = (0..5).map(|_| measure_once(&mut cmd)).collect();
    let mut secs: Vec<f64> = runs.iter().map(|r| r.0).collect();
    secs.sort_by(f64::total_cmp);
    let peak = runs.iter().map(|r| r.1).fold(f64::NAN, f64::max);
    (secs[2], peak, runs[4].2.clone())
}

/// Runs a command that prints `peak_mb=X` on its last line; returns (seconds, peak MiB, stdout).
fn measure_once(cmd: &mut Command) -> (f64, f64, String) {
    let start = Instant::now();
    let out = cmd.output().expect("runs");
    let secs = start.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peak = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("peak_mb="))
        .next_back()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    (secs, peak, stdout)
}

/// The job, in rtlab with the eager reader: load, filter, count, save.
const RTLAB_EAGER: &str = r#"let df = load_jsonl(ARGS[0]);
let kept = df.filter(col("metadata.category").is_in(["fsm", "alu", "counter", "uart"]) & (col("metadata.score") >= 0.7));
let counts = kept.value_counts("metadata.category");
kept.save_jsonl(ARGS[1]);
print(`kept=${kept.len()}`);
print(`peak_mb=${peak_rss_mb()}`);
"#;

/// The same job as a lazy scan: the filter is pushed into the reader, the kept lines are copied to
/// the output untouched, and only the category of kept rows is parsed for the counts.
const RTLAB_LAZY: &str = r#"let kept = scan_jsonl(ARGS[0]).filter(col("metadata.category").is_in(["fsm", "alu", "counter", "uart"]) & (col("metadata.score") >= 0.7));
let n = kept.sink_jsonl(ARGS[1]);
let counts = kept.select(["metadata.category"]).collect().value_counts("category");
print(`kept=${n}`);
print(`peak_mb=${peak_rss_mb()}`);
"#;

/// The same job as a plain Python loop over json.loads.
const PYTHON_LOOP: &str = r#"
import json, sys, resource
from collections import Counter
keep_cats = {"fsm", "alu", "counter", "uart"}
kept = []
with open(sys.argv[1]) as f:
    for line in f:
        row = json.loads(line)
        m = row["metadata"]
        if m["category"] in keep_cats and m["score"] >= 0.7:
            kept.append(row)
counts = Counter(r["metadata"]["category"] for r in kept)
with open(sys.argv[2], "w") as f:
    for r in kept:
        f.write(json.dumps(r) + "\n")
print(f"kept={len(kept)}")
print(f"peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
"#;

/// The same job in pandas.
const PANDAS: &str = r#"
import sys, resource
import pandas as pd
df = pd.read_json(sys.argv[1], lines=True)
cat = df["metadata"].str.get("category")
score = df["metadata"].str.get("score")
kept = df[cat.isin(["fsm", "alu", "counter", "uart"]) & (score >= 0.7)]
counts = kept["metadata"].str.get("category").value_counts()
kept.to_json(sys.argv[2], orient="records", lines=True)
print(f"kept={len(kept)}")
print(f"peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
"#;

/// The same job in polars for Python, eagerly (`read_ndjson`), as rtlab's `load_jsonl` does it.
const POLARS_EAGER: &str = r#"
import sys, resource
import polars as pl
df = pl.read_ndjson(sys.argv[1])
meta = pl.col("metadata").struct
kept = df.filter(meta.field("category").is_in(["fsm", "alu", "counter", "uart"]) & (meta.field("score") >= 0.7))
counts = kept.select(meta.field("category")).to_series().value_counts()
kept.write_ndjson(sys.argv[2])
print(f"kept={kept.height}")
print(f"peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
"#;

/// The same job in polars for Python as a lazy scan (`scan_ndjson`, the filter pushed down), as
/// rtlab's `scan_jsonl` does it.
const POLARS_LAZY: &str = r#"
import sys, resource
import polars as pl
meta = pl.col("metadata").struct
kept = pl.scan_ndjson(sys.argv[1]).filter(meta.field("category").is_in(["fsm", "alu", "counter", "uart"]) & (meta.field("score") >= 0.7))
kept.sink_ndjson(sys.argv[2])
counts = kept.select(meta.field("category")).collect().to_series().value_counts()
print(f"kept={sum(1 for _ in open(sys.argv[2]))}")
print(f"peak_mb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
"#;

/// Time (median of 5), peak memory and stdout of one job.
type Measured = (f64, f64, String);

/// Runs `source` as an rtlab script on `data`, writing `<name>_out.jsonl`.
fn rtlab_job(dir: &Path, name: &str, source: &str, data: &Path) -> Measured {
    let script = dir.join(format!("{name}.rhai"));
    std::fs::write(&script, source).unwrap();
    let mut rt = Command::new(env!("CARGO_BIN_EXE_rtlab"));
    rt.arg("run")
        .arg(&script)
        .arg(data)
        .arg(dir.join(format!("{name}_out.jsonl")));
    measure(rt)
}

/// Runs `source` with Python on `data`, writing `<name>_out.jsonl`.
fn python_job(python: &str, dir: &Path, name: &str, source: &str, data: &Path) -> Measured {
    let mut py = Command::new(python);
    py.arg("-c")
        .arg(source)
        .arg(data)
        .arg(dir.join(format!("{name}_out.jsonl")));
    measure(py)
}

/// The `kept=N` line of a job's output.
fn kept(out: &str) -> String {
    out.lines()
        .find(|l| l.starts_with("kept="))
        .unwrap_or("kept=?")
        .to_string()
}

fn main() {
    let rows: usize = std::env::var("RTLAB_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let data = dir.join("data.jsonl");
    generate(&data, rows);
    let size_mb = std::fs::metadata(&data).unwrap().len() as f64 / (1024.0 * 1024.0);
    println!("{rows} rows, {size_mb:.1} MiB of JSONL");

    let (rt_s, rt_peak, rt_out) = rtlab_job(dir, "rt", RTLAB_EAGER, &data);
    let (lz_s, lz_peak, lz_out) = rtlab_job(dir, "lazy", RTLAB_LAZY, &data);
    let python = python::interpreter();
    println!("Python: {python}");
    let (py_s, py_peak, py_out) = python_job(&python, dir, "py", PYTHON_LOOP, &data);
    let has_pandas = Command::new(&python)
        .args(["-c", "import pandas"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let pandas_result = if has_pandas {
        Some(python_job(&python, dir, "pd", PANDAS, &data))
    } else {
        println!("pandas is not installed (pip install pandas): its column is missing");
        None
    };

    let has_polars = Command::new(&python)
        .args(["-c", "import polars"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let polars_result = if has_polars {
        let eager = python_job(&python, dir, "pl", POLARS_EAGER, &data);
        let lazy = python_job(&python, dir, "pl_lazy", POLARS_LAZY, &data);
        Some((eager, lazy))
    } else {
        println!("polars for Python is NOT installed (pip install polars): its rows are missing");
        None
    };

    assert_eq!(
        kept(&rt_out),
        kept(&py_out),
        "rtlab and the Python loop must keep the same rows"
    );
    assert_eq!(
        kept(&lz_out),
        kept(&py_out),
        "the lazy scan must keep the same rows"
    );
    println!("Each time is the median of 5 runs; each peak the largest of the 5.");
    println!("| job | time | peak memory | rtlab load_jsonl speedup | rtlab scan_jsonl speedup |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| rtlab load_jsonl (eager) | {rt_s:.2} s | {rt_peak:.0} MiB ({:.2}x the file) | 1x | |",
        rt_peak / size_mb
    );
    println!(
        "| rtlab scan_jsonl (lazy, filter pushed down, sink) | {lz_s:.3} s | {lz_peak:.0} MiB ({:.2}x the file) | | 1x |",
        lz_peak / size_mb
    );
    println!(
        "| Python json loop | {py_s:.2} s | {py_peak:.0} MiB | {:.1}x | {:.1}x |",
        py_s / rt_s,
        py_s / lz_s
    );
    if let Some((pd_s, pd_peak, pd_out)) = pandas_result {
        assert_eq!(
            kept(&rt_out),
            kept(&pd_out),
            "rtlab and pandas must keep the same rows"
        );
        println!(
            "| pandas | {pd_s:.2} s | {pd_peak:.0} MiB | {:.1}x | {:.1}x |",
            pd_s / rt_s,
            pd_s / lz_s
        );
    }
    if let Some(((pl_s, pl_peak, pl_out), (pll_s, pll_peak, pll_out))) = &polars_result {
        for out in [pl_out, pll_out] {
            assert_eq!(
                kept(&rt_out),
                kept(out),
                "rtlab and polars must keep the same rows"
            );
        }
        println!(
            "| polars for Python, read_ndjson | {pl_s:.3} s | {pl_peak:.0} MiB | {:.2}x | |",
            pl_s / rt_s
        );
        println!(
            "| polars for Python, scan_ndjson | {pll_s:.3} s | {pll_peak:.0} MiB | | {:.2}x |",
            pll_s / lz_s
        );
    }
    println!("({}, {} rows)", kept(&rt_out), rows);
    let polars = polars_result.map(|((pl_s, ..), (pll_s, ..))| {
        serde_json::json!({
            "polars_eager_s": pl_s,
            "polars_lazy_s": pll_s,
            "load_jsonl_vs_polars_eager": pl_s / rt_s,
            "scan_jsonl_vs_polars_lazy": pll_s / lz_s,
        })
    });
    results::write(
        "datasets",
        serde_json::json!({
            "rows": rows,
            "load_jsonl_s": rt_s,
            "scan_jsonl_s": lz_s,
            "python_loop_s": py_s,
            "load_jsonl_vs_python_loop": py_s / rt_s,
            "scan_jsonl_vs_python_loop": py_s / lz_s,
            "polars_python": polars,
        }),
        5,
    );
}
