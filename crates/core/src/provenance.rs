//! What made a result: the code identity of each subsystem, the content hash of the files a result
//! depends on (models, adapters), and the machine. Caches key on these so they never serve an answer
//! another build or another file would not give; reports record them so a reader can reproduce a run.
//!
//! Invariant: a file's content hash is reused only under a stamp that every write changes (path,
//! size, modification time, the inode's change time and number). `touch -d` and `utime` can set the
//! modification time back, but never the change time, so a rewritten file is hashed again.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// This crate's code identity: the hash of its sources and the workspace's `Cargo.lock`, made by
/// `build/code_identity.rs`.
pub const CODE_IDENTITY: &str = env!("RTLAB_CODE_IDENTITY");

/// The environment variable that makes this process behave as if the named subsystems' code had
/// changed (`RTLAB_PRETEND_CHANGED=verifier,trainer`): how the tests, and a user who wants to know
/// what an upgrade would recompute, reach the "code changed" paths without building another rtlab.
pub const PRETEND_CHANGED_ENV: &str = "RTLAB_PRETEND_CHANGED";

/// The identity of a subsystem's code: `built` (its crate's `CODE_IDENTITY`), or a changed one when
/// [`PRETEND_CHANGED_ENV`] names the subsystem.
pub fn code_identity(subsystem: &str, built: &str) -> String {
    let pretend = std::env::var(PRETEND_CHANGED_ENV).unwrap_or_default();
    if pretend
        .split(',')
        .any(|s| s.trim() == subsystem || s.trim() == "all")
    {
        format!("{built}+pretend-changed")
    } else {
        built.to_string()
    }
}

/// What identifies a file's content without reading it: every write changes at least the change
/// time (ctime), which no user call can set back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Stamp {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    inode: u64,
    device: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        size: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        inode: m.ino(),
        device: m.dev(),
    })
}

static HASHES: Mutex<Option<HashMap<Stamp, String>>> = Mutex::new(None);

/// The blake3 of a file's content (hex), hashed once per process per stamp (a 100 MB GGUF takes
/// about 50 ms). A file whose stamp changed, even with its modification time restored, is read
/// again.
pub fn file_content_hash(path: &Path) -> std::io::Result<String> {
    let before = stamp(path)?;
    if let Some(h) = HASHES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|m| m.get(&before))
    {
        return Ok(h.clone());
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_mmap_rayon(path)?;
    let hash = hasher.finalize().to_hex().to_string();
    // A write during the read would leave a hash of neither version: keep it only if nothing moved.
    if stamp(path)? == before {
        HASHES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(HashMap::new)
            .insert(before, hash.clone());
    }
    Ok(hash)
}

/// The content hash of a file, or of a directory's files (a PEFT adapter, a model directory) by
/// name, not recursing: what a model or an adapter at `path` is, wherever it was copied.
pub fn path_content_hash(path: &Path) -> std::io::Result<String> {
    if !path.is_dir() {
        return file_content_hash(path);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut h = blake3::Hasher::new();
    for f in &files {
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(&[0]);
        h.update(file_content_hash(f)?.as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Every file hashed in this process (models, adapters), by path: the provenance manifest lists them.
pub fn hashed_files() -> std::collections::BTreeMap<PathBuf, String> {
    HASHES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(|m| m.iter().map(|(s, h)| (s.path.clone(), h.clone())).collect())
        .unwrap_or_default()
}

/// The machine a run ran on, for a reproducibility appendix.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpu: String,
    /// The SIMD extensions that decide kernel speed: avx2, avx512f, avx512_bf16, amx_tile, neon.
    pub simd: Vec<String>,
    pub cores: usize,
    pub memory_gib: f64,
    pub os: String,
}

/// Reads the machine's CPU model, SIMD extensions, core count and memory (Linux `/proc`; elsewhere
/// what std knows).
pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpu = field("model name")
        .or_else(|| field("Model"))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags")
        .or_else(|| field("Features"))
        .unwrap_or_default();
    let simd = [
        "avx2",
        "avx512f",
        "avx512_bf16",
        "amx_tile",
        "neon",
        "asimd",
    ]
    .iter()
    .filter(|f| flags.split_whitespace().any(|x| x == **f))
    .map(|f| f.to_string())
    .collect();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0);
    Machine {
        cpu,
        simd,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_gib,
        os: std::env::consts::OS.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_with_the_same_size_and_a_restored_mtime_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("model.gguf");
        std::fs::write(&p, b"weights A").unwrap();
        let m = std::fs::metadata(&p).unwrap();
        let mtime = m.modified().unwrap();
        let first = file_content_hash(&p).unwrap();
        // The ctime has a clock tick of its own: make sure the rewrite lands on another one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&p, b"weights B").unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        let second = file_content_hash(&p).unwrap();
        assert_ne!(
            first, second,
            "the same stamp served the old content's hash"
        );
    }

    #[test]
    fn a_copy_at_another_path_has_the_same_hash() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.gguf");
        std::fs::write(&a, b"the same weights").unwrap();
        let b = dir.path().join("b.gguf");
        std::fs::copy(&a, &b).unwrap();
        assert_eq!(
            file_content_hash(&a).unwrap(),
            file_content_hash(&b).unwrap()
        );
    }

    #[test]
    fn pretending_a_subsystem_changed_changes_only_its_identity() {
        // The variable is read on each call; this test sets and clears it around its own calls.
        std::env::set_var(PRETEND_CHANGED_ENV, "verifier");
        let verifier = code_identity("verifier", "abc");
        let trainer = code_identity("trainer", "abc");
        std::env::remove_var(PRETEND_CHANGED_ENV);
        assert_ne!(verifier, "abc");
        assert_eq!(trainer, "abc");
    }
}
