//! `cargo bench --bench verify`: verifier throughput on the 156 VerilogEval problems and on a 2,000-row
//! dataset, against a sequential baseline measured in the same run (one example after another, as the
//! plans' Python does), and a cached rerun.
//!
//! Goals (issue 4): at least 0.9 × cores × the baseline's rate; a cached rerun at least 100× faster.

use std::process::Command;
use std::time::Instant;

fn run(script: &str, home: &std::path::Path) -> (f64, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.rhai");
    std::fs::write(&path, script).unwrap();
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rtlab"))
        .args(["run", "--no-cache", path.to_str().unwrap()])
        .env("RTLAB_HOME", home)
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, String::from_utf8_lossy(&out.stdout).to_string())
}

fn main() {
    let data = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data");
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!("{cores} cores");
    let home = tempfile::tempdir().unwrap();
    verilog_eval(&data, home.path(), cores);
    if std::env::var_os("RTLAB_BENCH_VERILOG_EVAL_ONLY").is_some() {
        return;
    }
    dataset_rows(&data, home.path(), cores);
}

/// VerilogEval: each reference (as TopModule) against its own testbench, all stages.
fn verilog_eval(data: &std::path::Path, home: &std::path::Path, cores: usize) {
    let problems = data.join("verilog-eval-v2");
    let parallel_script = format!(
        r#"let p = load_verilog_eval("{}");
let p = p.with_column(col("ref").str_replace_all("module RefModule", "module TopModule").alias("code"));
let v = p.verify(#{{code: "code", testbench: "test", reference: "ref"}});
print(v.filter(col("sim_status") == "pass").len());"#,
        problems.display()
    );
    // The baseline: the same examples, one verify() call after another in a loop.
    let sequential_script = format!(
        r#"let p = load_verilog_eval("{}");
let passed = 0;
for r in p.to_records() {{
    let code = rename_module(r.ref, "RefModule", "TopModule");
    if verify(code, #{{testbench: r.test, reference: r.ref}}).sim_status == "pass" {{ passed += 1; }}
}}
print(passed);"#,
        problems.display()
    );
    let (seq_s, seq_out) = run(&sequential_script, &home.join("seq"));
    let (par_s, par_out) = run(&parallel_script, &home.join("par"));
    let (cached_s, cached_out) = run(&parallel_script, &home.join("par"));
    assert_eq!(seq_out, par_out);
    assert_eq!(par_out, cached_out);
    println!("VerilogEval 156 problems ({} pass):", par_out.trim());
    println!(
        "  sequential baseline {seq_s:.2} s ({:.1}/s)",
        156.0 / seq_s
    );
    println!(
        "  df.verify           {par_s:.2} s ({:.1}/s), {:.2}x the baseline = {:.2} × cores",
        156.0 / par_s,
        seq_s / par_s,
        seq_s / par_s / cores as f64
    );
    println!("  cached rerun        {cached_s:.2} s ({:.0}x faster than verifying; includes process start and loading)", par_s / cached_s);
}

/// A 2,000-row dataset shaped like the plans' data: the bundled RTLCoder sample repeated with a
/// row number in a comment, so every row is a distinct example.
fn dataset_rows(data: &std::path::Path, home: &std::path::Path, cores: usize) {
    let rows = format!(
        r#"let base = load_jsonl("{}").to_records();
let rows = [];
for i in 0..2000 {{
    let r = base[i % base.len()];
    rows.push(#{{output: "// example " + i + "\n" + r.output}});
}}
let df = from_records(rows);
let v = df.verify(#{{code: "output"}});
print(v.filter(col("syntax_ok")).len());"#,
        data.join("rtlcoder_sample.jsonl").display()
    );
    let rows_seq = format!(
        r#"let base = load_jsonl("{}").to_records();
let ok = 0;
for i in 0..2000 {{
    let r = base[i % base.len()];
    if verify("// example " + i + "\n" + r.output).syntax_ok {{ ok += 1; }}
}}
print(ok);"#,
        data.join("rtlcoder_sample.jsonl").display()
    );
    let (seq_s, seq_out) = run(&rows_seq, &home.join("rows_seq"));
    let (par_s, par_out) = run(&rows, &home.join("rows"));
    let (cached_s, _) = run(&rows, &home.join("rows"));
    assert_eq!(seq_out, par_out);
    println!("2,000-row dataset ({} compile):", par_out.trim());
    println!(
        "  sequential baseline {seq_s:.2} s ({:.1}/s)",
        2000.0 / seq_s
    );
    println!(
        "  df.verify           {par_s:.2} s ({:.1}/s), {:.2}x the baseline = {:.2} × cores",
        2000.0 / par_s,
        seq_s / par_s,
        seq_s / par_s / cores as f64
    );
    println!(
        "  cached rerun        {cached_s:.2} s ({:.0}x faster)",
        par_s / cached_s
    );
}
