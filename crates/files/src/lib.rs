//! rtlab-files: the two file services every rtlab crate needs and that need nothing of rtlab:
//! durable atomic writes ([`write_atomic`]) and resolving a user's relative path against a
//! directory ([`resolve_against`]).
//!
//! A crate of its own so that the model library (`rtlab-model`, which needs only candle) writes its
//! adapters and merged models the same crash-safe way as the rest of rtlab without depending on
//! `rtlab-core` and, through it, on Rhai and SQLite.

use std::path::{Path, PathBuf};

/// `path` resolved against the absolute directory `base` (see [`Workspace::resolve`]).
pub fn resolve_against(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let mut base = base.to_path_buf();
    let mut rest = p.components().peekable();
    while let Some(c) = rest.peek() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir if base.parent().is_some() => {
                base.pop();
            }
            _ => break,
        }
        rest.next();
    }
    base.join(rest.collect::<PathBuf>())
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, then a rename, so a reader
/// (or a crash) never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_parts(path, &[bytes])
}

/// [`write_atomic`] of the concatenation of `parts`, without concatenating them first.
pub fn write_atomic_parts(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // Temp files are private (0600); the result should have the mode a plain write would give it.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o644);
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    let mut written = 0;
    for part in parts {
        tmp.write_all(part)?;
        // Start writing back what is written while the rest is copied in, so that the sync below
        // waits for the last part only.
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on an open file descriptor; a failure only loses the overlap.
            unsafe {
                libc::sync_file_range(
                    tmp.as_file().as_raw_fd(),
                    written as libc::off64_t,
                    part.len() as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        written += part.len();
    }
    // Durable before it is visible: after a power cut the file is the old one or the whole new one.
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_out_of_the_base_only_through_leading_dot_dots() {
        let base = Path::new("/work/project/scripts");
        assert_eq!(
            resolve_against(base, "../data/x.jsonl"),
            Path::new("/work/project/data/x.jsonl")
        );
        assert_eq!(
            resolve_against(base, "./a/b"),
            Path::new("/work/project/scripts/a/b")
        );
        assert_eq!(resolve_against(base, "/abs/y"), Path::new("/abs/y"));
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.txt");
        write_atomic(&path, b"first").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic_parts(&path, &[b"sec", b"ond"]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Nothing of the temp file is left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
