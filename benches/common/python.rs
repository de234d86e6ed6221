//! The Python the benchmarks compare against.

/// The interpreter itself (`sys.executable`), not a version manager's shim in front of `python3`:
/// pyenv's shim costs ~50 ms a start here, which would flatter rtlab. `python3` if that fails.
pub fn interpreter() -> String {
    std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_string())
}
