//! Running a measured rtlab script and reading what it printed.

/// The number on the line `KEY=VALUE` of `out`, or NaN when there is none (the table then shows
/// NaN, not a made-up figure).
pub fn value(out: &str, key: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// What `rtlab run --no-cache SCRIPT` printed, run with its home (`RTLAB_HOME`) in `home`; a failed
/// run panics with its stdout and stderr.
// gguf.rs runs its scripts under other environments (kernel switches) and has its own runner.
#[allow(dead_code)]
pub fn run_script(script: &std::path::Path, home: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtlab"))
        .args(["run", "--no-cache"])
        .arg(script)
        .env("RTLAB_HOME", home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
