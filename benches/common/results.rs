//! Where a bench leaves its figures: `target/bench-results/NAME.json`, as
//! `{"figures": {...}, "runs": N, "machine": {...}, "commit": "..."}`, so the numbers a chapter quotes
//! can be traced to the run that made them (the machine: CPU model, its SIMD, cores; the commit,
//! with `-dirty` when tracked files had uncommitted changes).

use std::path::PathBuf;

/// The CPU model, its SIMD extensions, cores and memory: rtlab's own reading
/// (`rtlab_core::provenance::machine`, what run manifests record).
pub fn machine() -> serde_json::Value {
    serde_json::to_value(rtlab_core::provenance::machine()).unwrap_or_default()
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
    // A run from a working tree with uncommitted changes to tracked files says so: its numbers are
    // not the named commit's alone.
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    let commit = if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    };
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
