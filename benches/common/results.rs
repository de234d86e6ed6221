//! Where a bench leaves its figures: `target/bench-results/NAME.json`, as
//! `{"figures": {...}, "runs": N, "machine": {...}, "commit": "..."}`, so the numbers a chapter quotes
//! can be traced to the run that made them (the machine: CPU model, its SIMD, cores).

use std::path::PathBuf;

/// The CPU model and the SIMD extensions that decide kernel speed, and the core count.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let flags = field("flags").unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "avx512f", "avx512_bf16", "amx_tile"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    serde_json::json!({
        "cpu": field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        "simd": simd,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    })
}

/// Writes `target/bench-results/NAME.json` and returns its path.
pub fn write(name: &str, figures: serde_json::Value, runs: usize) -> PathBuf {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{name}.json"));
    let record = serde_json::json!({
        "figures": figures,
        "runs": runs,
        "machine": machine(),
        "commit": commit,
    });
    let _ = std::fs::write(
        &path,
        serde_json::to_string_pretty(&record).unwrap_or_default(),
    );
    println!("results: {}", path.display());
    path
}
