//! The build script of every rtlab crate whose results are cached: it hashes the crate's sources
//! (`src/`, its `Cargo.toml`) and the workspace's `Cargo.lock` (a dependency's version can change a
//! result too) into `RTLAB_CODE_IDENTITY`, which the crate exposes as `CODE_IDENTITY`.
//!
//! Why a hash of the sources and not a version constant bumped by hand: a hash cannot be forgotten.
//! A stale cache is a silent wrong answer; a cache miss after an edit that changed nothing is only
//! time, and the stores below each cache (the verifier's, the LLM cassette, finished training runs)
//! keep their own identities, so a rerun after an unrelated edit is mostly served from them.

use std::path::{Path, PathBuf};

pub fn main() {
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let mut parts: Vec<PathBuf> = vec![dir.join("src"), dir.join("Cargo.toml")];
    // The root package also carries the stdlib's Rhai modules.
    if dir.join("stdlib").is_dir() {
        parts.push(dir.join("stdlib"));
    }
    let lock = find_lock(&dir);
    parts.extend(lock);
    let mut files = Vec::new();
    for p in &parts {
        println!("cargo:rerun-if-changed={}", p.display());
        collect(p, &mut files);
    }
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in &files {
        let rel = f.strip_prefix(&dir).unwrap_or(f);
        // The lock file sits outside the crate: name it the same wherever the checkout is.
        let name = if f.ends_with("Cargo.lock") {
            Path::new("Cargo.lock")
        } else {
            rel
        };
        feed(name.to_string_lossy().as_bytes());
        feed(&[0]);
        feed(&std::fs::read(f).unwrap_or_default());
        feed(&[0xff]);
    }
    println!("cargo:rustc-env=RTLAB_CODE_IDENTITY={hash:016x}");
}

fn find_lock(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_file() {
        out.push(path.to_path_buf());
    } else if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            collect(&e.path(), out);
        }
    }
}
