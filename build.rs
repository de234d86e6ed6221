//! The `rtlab` binary's build script:
//! - its code identity (the hash of `src/`, `stdlib/` and `Cargo.lock`, see `build/code_identity.rs`);
//! - the git commit it was built from, for the provenance manifest (`unknown` outside a checkout);
//! - links it as a fixed-address executable (not PIE) on Linux. A PIE rtlab carries about 300,000
//!   relative relocations (polars, candle and wgpu's vtables) that the dynamic loader applies at
//!   every start, copying some 5 MB of pages: 6 to 7 ms before `main`, which is most of what a short
//!   `rtlab run` costs. Without PIE the linker resolves them once.

#[path = "build/code_identity.rs"]
mod code_identity;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build/code_identity.rs");
    code_identity::main();
    println!("cargo:rustc-env=RTLAB_GIT_COMMIT={}", git_commit());
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("linux") && target.starts_with("x86_64") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

/// `git rev-parse HEAD`, rerun when HEAD moves (a commit, a checkout).
fn git_commit() -> String {
    let git = std::path::Path::new(".git");
    if git.is_dir() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
            if let Some(r) = head.trim().strip_prefix("ref: ") {
                println!("cargo:rerun-if-changed=.git/{r}");
            }
        }
        if git.join("packed-refs").is_file() {
            println!("cargo:rerun-if-changed=.git/packed-refs");
        }
    }
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}
