//! Where each verified row's scratch directory goes, and how many rows run at once.
//!
//! A row's tools live for milliseconds: a profile of `df.verify` on RTLCoder rows put 62% of all CPU
//! time in the kernel, much of it exec, page faults and ext4 allocating and freeing the inodes of
//! each row's files (the design, Yosys' copy, the compiled `.vvp`, Yosys' JSON, and iverilog's own
//! temporaries). On a memory filesystem that last part costs nothing, so the scratch directories go
//! to one when the user has not chosen a temporary directory, and every tool's `TMPDIR` is its row's
//! scratch directory, so that what a tool leaves behind goes with the row.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A memory filesystem is used for scratch only with at least this much room left on it: Docker
/// gives containers a 64 MiB `/dev/shm`, and a Verilator build (its runtime objects are copied in)
/// takes several MiB a row.
const MIN_FREE_BYTES: u64 = 1 << 30;

/// `TMPFS_MAGIC` from `linux/magic.h`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// The directory each row's scratch directory is made in, decided once per process:
/// 1. the user's `TMPDIR` when it is set (a cluster's job-local disk, a user's choice);
/// 2. else the system's temporary directory when it already is a memory filesystem;
/// 3. else `/dev/shm` when it is a writable memory filesystem with 1 GiB free;
/// 4. else the system's temporary directory.
pub fn scratch_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| choose_root(tmpdir_set(), &std::env::temp_dir(), Path::new("/dev/shm")))
}

/// Refuses, before any tool runs, a scratch root that cannot take a directory. The tool probes run
/// there too (a tool's `TMPDIR` is its working directory), so without this check a `TMPDIR` naming
/// no directory read as "iverilog is not installed".
pub fn check_root() -> Result<(), crate::VerifyError> {
    // Checked until it first succeeds: a verify() call in a loop pays for it once.
    static USABLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if USABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    let root = scratch_root();
    if let Err(source) = probe(root) {
        return Err(crate::VerifyError::ScratchUnusable {
            dir: root.display().to_string(),
            from_tmpdir: tmpdir_set(),
            source,
        });
    }
    USABLE.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

fn choose_root(tmpdir_set: bool, temp_dir: &Path, shm: &Path) -> PathBuf {
    if tmpdir_set || is_memory_fs(temp_dir).is_some() {
        return temp_dir.to_path_buf();
    }
    match is_memory_fs(shm) {
        Some(free) if free >= MIN_FREE_BYTES && writable(shm) => shm.to_path_buf(),
        _ => temp_dir.to_path_buf(),
    }
}

/// The bytes free to this user when `dir` is on a memory filesystem (tmpfs), else None.
fn is_memory_fs(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `fs` a buffer of the size statfs fills.
    let fs = unsafe {
        if libc::statfs(path.as_ptr(), fs.as_mut_ptr()) != 0 {
            return None;
        }
        fs.assume_init()
    };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    (fs.f_type as i64 == TMPFS_MAGIC).then(|| fs.f_bavail as u64 * fs.f_bsize as u64)
}

fn tmpdir_set() -> bool {
    std::env::var_os("TMPDIR").is_some_and(|v| !v.is_empty())
}

/// Makes (and removes) a directory in `dir`: whether a row's scratch directory can go there.
fn probe(dir: &Path) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(".rtlab-probe-")
        .tempdir_in(dir)
}

fn writable(dir: &Path) -> bool {
    probe(dir).is_ok()
}

/// How many rows `df.verify` verifies at once on `cores` cores: one more than the cores. A row is a
/// chain of short processes (iverilog, its preprocessor and compiler, Yosys, Verilator), and between
/// one process's exit and the next one's start its worker holds no core; a spare worker fills those
/// gaps. Measured on 2 cores (400 RTLCoder rows, all stages but simulation): 3 workers 10% faster
/// than 2, and 4 no faster than 3; on the VerilogEval problems (long simulations) the same as 2.
pub fn workers_for(cores: usize) -> usize {
    cores.max(1) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_tmpdir_or_a_temporary_directory_in_memory_is_kept() {
        let disk = tempfile::tempdir().unwrap();
        let shm = Path::new("/dev/shm");
        assert_eq!(choose_root(true, disk.path(), shm), disk.path());
    }

    #[test]
    fn a_directory_that_is_not_a_memory_filesystem_is_not_taken_for_scratch() {
        let disk = tempfile::tempdir().unwrap();
        // The second candidate is a directory on the same disk (the repository's target or the
        // system's temporary directory): not tmpfs, so the temporary directory is kept.
        let not_shm = tempfile::tempdir().unwrap();
        if is_memory_fs(disk.path()).is_none() {
            assert_eq!(choose_root(false, disk.path(), not_shm.path()), disk.path());
        }
        assert_eq!(
            choose_root(false, disk.path(), Path::new("/no/such/dir")),
            disk.path()
        );
    }

    /// The filesystem type as /proc/mounts gives it for the mount point `dir` (an independent
    /// reading of what statfs says).
    fn mounted_type(dir: &str) -> Option<String> {
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        mounts
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(1) == Some(&dir)).then(|| f.get(2).map(|t| t.to_string()))
            })
            .next_back()
            .flatten()
    }

    #[test]
    fn a_memory_filesystem_is_told_from_a_disk_as_proc_mounts_says() {
        for dir in ["/dev/shm", "/"] {
            if let Some(kind) = mounted_type(dir) {
                assert_eq!(
                    is_memory_fs(Path::new(dir)).is_some(),
                    kind == "tmpfs",
                    "{dir} is mounted as {kind}"
                );
            }
        }
    }

    #[test]
    fn dev_shm_is_taken_when_it_is_a_writable_memory_filesystem_with_room() {
        let disk = tempfile::tempdir().unwrap();
        let shm = Path::new("/dev/shm");
        if is_memory_fs(disk.path()).is_some() {
            // The temporary directory is itself in memory (a tmpfs /tmp): it is kept.
            assert_eq!(choose_root(false, disk.path(), shm), disk.path());
            return;
        }
        let roomy = is_memory_fs(shm).is_some_and(|free| free >= MIN_FREE_BYTES);
        let chosen = choose_root(false, disk.path(), shm);
        assert_eq!(
            chosen == shm,
            roomy && writable(shm),
            "chose {}",
            chosen.display()
        );
    }

    #[test]
    fn a_spare_worker_beside_the_cores() {
        assert_eq!(workers_for(0), 2);
        assert_eq!(workers_for(1), 2);
        assert_eq!(workers_for(2), 3);
        assert_eq!(workers_for(16), 17);
    }
}
