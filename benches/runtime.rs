//! `cargo bench --bench runtime`: how fast rtlab starts and how cheap a fully cached rerun is, each
//! beside a baseline measured in the same run (these machines are shared and noisy: read the ratios).
//!
//! Goals (issue 2): REPL start to prompt and `rtlab run` of an empty script under 50 ms; a fully cached
//! rerun of a 5-cell script whose first cell takes 20 s under 1 s. `RTLAB_BENCH_SLOW_CELL_S` shortens
//! the slow cell for a quick look.

#[path = "common/python.rs"]
mod python;

use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 15;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn time_command(mut make: impl FnMut() -> Command) -> Duration {
    median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                let out = make().output().expect("command runs");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                start.elapsed()
            })
            .collect(),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let baseline = start_times(dir.path());
    repl_start(dir.path(), baseline);
    cached_rerun(dir.path());
}

/// `rtlab run` of an empty script against `python3 -c pass`; returns the baseline.
fn start_times(dir: &std::path::Path) -> Duration {
    let exe = env!("CARGO_BIN_EXE_rtlab");
    let empty = dir.join("empty.rhai");
    std::fs::write(&empty, "").unwrap();

    let python = python::interpreter();
    let baseline = time_command(|| {
        let mut c = Command::new(&python);
        c.args(["-c", "pass"]);
        c
    });
    let run_empty = time_command(|| {
        let mut c = Command::new(exe);
        c.args(["run", empty.to_str().unwrap()]);
        c
    });
    println!("rtlab run (empty script): {} median of {RUNS}; baseline `python3 -c pass`: {} (ratio {:.2})", ms(run_empty), ms(baseline), run_empty.as_secs_f64() / baseline.as_secs_f64());
    baseline
}

/// REPL start to prompt, through a pseudo-terminal as a user sees it.
fn repl_start(dir: &std::path::Path, baseline: Duration) {
    use expectrl::Expect;
    let exe = env!("CARGO_BIN_EXE_rtlab");
    let repl = median(
        (0..RUNS)
            .map(|_| {
                let mut cmd = Command::new(exe);
                cmd.env("XDG_DATA_HOME", dir).env("TERM", "xterm");
                let start = Instant::now();
                let mut s = expectrl::Session::spawn(cmd).unwrap();
                s.expect("rtlab> ").unwrap();
                let t = start.elapsed();
                let _ = s.send_line(":quit");
                let _ = s.expect(expectrl::Eof);
                t
            })
            .collect(),
    );
    println!(
        "REPL start to prompt: {} median of {RUNS} (ratio to the python3 baseline {:.2})",
        ms(repl),
        repl.as_secs_f64() / baseline.as_secs_f64()
    );
}

/// A 5-cell script whose first cell is slow: the first run pays, the rerun restores.
fn cached_rerun(dir: &std::path::Path) {
    let exe = env!("CARGO_BIN_EXE_rtlab");
    let slow: f64 = std::env::var("RTLAB_BENCH_SLOW_CELL_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20.0);
    let script = dir.join("five.rhai");
    std::fs::write(
        &script,
        format!(
            "// %% slow\nsleep({slow:.1});\nlet rows = [];\nfor i in 0..10000 {{ rows.push(#{{id: i, score: i % 7}}); }}\nlet df = from_records(rows);\n\
             // %% filter\nlet good = df.filter(col(\"score\") >= 3);\n// %% count\nlet n = good.len();\n\
             // %% table\nlet t = good.value_counts(\"score\");\n// %% report\nprint(`${{n}} rows kept`);\nt\n"
        ),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let start = Instant::now();
        let out = Command::new(exe)
            .arg("run")
            .args(extra)
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            start.elapsed(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (first, _) = run(&["--fresh"]);
    let reruns: Vec<Duration> = (0..5)
        .map(|_| {
            let (t, stderr) = run(&[]);
            assert!(
                stderr.contains("[1 slow] cached"),
                "the slow cell must be restored: {stderr}"
            );
            t
        })
        .collect();
    let rerun = median(reruns);
    println!(
        "5-cell script, slow first cell ({slow} s): first run {:.2} s, cached rerun {} median of 5 (speedup {:.0}x)",
        first.as_secs_f64(),
        ms(rerun),
        first.as_secs_f64() / rerun.as_secs_f64()
    );
}
