//! The on-disk cell cache under `.rtlab/cache/`: one directory per cell key, holding `manifest.json` and
//! the Parquet files of the frames it refers to.
//!
//! Invariant: an entry is valid iff its manifest parses and every file it names exists with the recorded
//! hash. Frames are written first and the manifest last, each by temp file + rename, so a kill mid-write
//! leaves the previous entry (or none), never a half one. A corrupt entry is dropped, not trusted.

use super::NotebookError;
use rtlab_core::workspace::write_atomic;
use rtlab_core::workspace::Input;
use rtlab_data::{frame_from_parquet_bytes, frame_to_parquet_bytes, Frame};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Bumped when the manifest format changes; older entries are then ignored.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub script: String,
    pub cell_index: usize,
    pub cell_name: Option<String>,
    /// How long the cell took when it ran: the time a restore saves.
    pub elapsed_s: f64,
    pub created_unix: u64,
    /// Outputs by variable name: the encoded value and its content hash.
    pub outputs: BTreeMap<String, StoredValue>,
    /// Whether each output was a `const`.
    #[serde(default)]
    pub constants: Vec<String>,
    /// What the cell printed, replayed on restore.
    pub printed: String,
    /// The cell's last value as displayed, and as HTML for reports.
    pub result_text: Option<String>,
    pub result_html: Option<String>,
    /// Frame content hash → blake3 of its Parquet file.
    pub frames: BTreeMap<String, String>,
    /// Files the cell read through the stdlib → blake3 of their content when it ran, and environment
    /// variables it read (`env:NAME` → [`rtlab_core::workspace::env_stamp`]).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// The code identity of each rtlab subsystem that made the entry
    /// ([`crate::provenance::code_identities`]); empty in entries from before identities.
    #[serde(default)]
    pub code: BTreeMap<String, String>,
}

/// The key under which an input is recorded: a file's absolute path, or `env:NAME` (paths are
/// absolute, so the two never meet).
fn input_key(input: &Input) -> String {
    match input {
        Input::File(f) => f.display().to_string(),
        Input::Env(name) => format!("{ENV_PREFIX}{name}"),
    }
}

const ENV_PREFIX: &str = "env:";

/// What a cell records of each input, cheaply. A file: `stamp:<len>:<mtime ns>:<inode>` ("missing" if
/// it cannot be read), enough to tell within a session that it changed; a cell that is persisted
/// trades its stamps for content hashes ([`content_hashes`]), which hold across copies and checkouts.
/// An environment variable: a hash of its value.
pub fn stamp_inputs(inputs: &[Input]) -> BTreeMap<String, String> {
    inputs
        .iter()
        .map(|i| {
            let now = match i {
                Input::File(f) => rtlab_core::workspace::file_stamp(f),
                Input::Env(name) => rtlab_core::workspace::env_stamp(name),
            };
            (input_key(i), now)
        })
        .collect()
}

/// The inputs' content hashes, for a cell about to be persisted. A file whose stamp moved since the
/// cell read it is recorded as "changed", which matches nothing: the cell reruns next time.
pub fn content_hashes(inputs: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    inputs
        .iter()
        .map(|(key, recorded)| {
            if key.starts_with(ENV_PREFIX) {
                return (key.clone(), recorded.clone());
            }
            let p = std::path::Path::new(key);
            let now = if recorded.starts_with("stamp:")
                && rtlab_core::workspace::file_stamp(p) != *recorded
            {
                "changed".to_string()
            } else {
                hash_file(p)
            };
            (key.clone(), now)
        })
        .collect()
}

/// blake3 of a file, remembered for as long as its [`rtlab_core::workspace::file_stamp`] stays the same.
fn hash_file(path: &std::path::Path) -> String {
    static HASHED: std::sync::Mutex<BTreeMap<std::path::PathBuf, (String, String)>> =
        std::sync::Mutex::new(BTreeMap::new());
    let now = rtlab_core::workspace::file_stamp(path);
    if now == "missing" {
        return now;
    }
    let mut hashed = HASHED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((s, h)) = hashed.get(path) {
        if *s == now {
            return h.clone();
        }
    }
    match hash_mapped(path) {
        Ok(hash) => {
            hashed.insert(path.to_path_buf(), (now, hash.clone()));
            hash
        }
        Err(_) => "missing".to_string(),
    }
}

/// blake3 of a file, mapped and hashed 16 MiB at a time on every core, each stretch's pages given
/// back once hashed: hashing a dataset must not hold a second copy of it in memory beside its frame.
fn hash_mapped(path: &std::path::Path) -> std::io::Result<String> {
    const STRETCH: usize = 16 << 20;
    let file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    if file.metadata()?.len() > 0 {
        // SAFETY: a read-only map of a regular file; see `data::scan` on files truncated under us.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        for start in (0..map.len()).step_by(STRETCH) {
            let len = STRETCH.min(map.len() - start);
            hasher.update_rayon(&map[start..start + len]);
            // SAFETY: DONTNEED on a private read-only file mapping only drops pages we are done with.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len)
            };
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The first recorded input that changed since (by stamp or by content hash, as recorded), if any.
pub fn changed_input(inputs: &BTreeMap<String, String>) -> Option<String> {
    inputs.iter().find_map(|(path, recorded)| {
        if let Some(name) = path.strip_prefix(ENV_PREFIX) {
            let now = rtlab_core::workspace::env_stamp(name);
            return (now != *recorded).then(|| format!("environment variable {name}"));
        }
        let p = std::path::Path::new(path);
        let now = if recorded.starts_with("stamp:") {
            rtlab_core::workspace::file_stamp(p)
        } else {
            hash_file(p)
        };
        (now != *recorded).then(|| path.clone())
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredValue {
    pub json: serde_json::Value,
    pub hash: String,
}

pub use rtlab_core::workspace::workspace_dir;

pub struct CellCache {
    root: PathBuf,
}

/// Why an entry could not be used.
pub enum Lookup {
    Hit(Box<Manifest>, BTreeMap<String, Frame>),
    Miss,
    Corrupt(String),
}

impl CellCache {
    pub fn new(workspace: &Path) -> CellCache {
        CellCache {
            root: workspace.join("cache"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub fn lookup(&self, key: &str) -> Lookup {
        let dir = self.entry_dir(key);
        let manifest_path = dir.join("manifest.json");
        let bytes = match std::fs::read(&manifest_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => {
                return Lookup::Corrupt(format!("cannot read {}: {e}", manifest_path.display()))
            }
        };
        let manifest: Manifest = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => {
                return Lookup::Corrupt(format!(
                    "{} is not a valid manifest ({e})",
                    manifest_path.display()
                ))
            }
        };
        if manifest.format != FORMAT {
            return Lookup::Miss;
        }
        let mut frames = BTreeMap::new();
        for (hash, file_hash) in &manifest.frames {
            let path = dir.join(format!("{hash}.parquet"));
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                Err(e) => return Lookup::Corrupt(format!("cannot read {}: {e}", path.display())),
            };
            if blake3::hash(&data).to_hex().as_str() != file_hash {
                return Lookup::Corrupt(format!(
                    "{} does not match its recorded hash",
                    path.display()
                ));
            }
            match frame_from_parquet_bytes(&data) {
                Ok(df) => {
                    frames.insert(hash.clone(), Frame::new(df));
                }
                Err(e) => {
                    return Lookup::Corrupt(format!(
                        "{} is not readable Parquet ({e})",
                        path.display()
                    ))
                }
            }
        }
        Lookup::Hit(Box::new(manifest), frames)
    }

    /// Writes an entry: frames first, manifest last, each atomically.
    pub fn store(
        &self,
        key: &str,
        mut manifest: Manifest,
        frames: &BTreeMap<String, Frame>,
    ) -> Result<(), NotebookError> {
        let dir = self.entry_dir(key);
        std::fs::create_dir_all(&dir).map_err(|e| NotebookError::Io {
            doing: "create",
            path: dir.clone(),
            source: e,
        })?;
        manifest.frames.clear();
        for (hash, frame) in frames {
            let bytes = frame_to_parquet_bytes(&frame.df)?;
            let path = dir.join(format!("{hash}.parquet"));
            write_atomic(&path, &bytes).map_err(|e| NotebookError::Io {
                doing: "write",
                path: path.clone(),
                source: e,
            })?;
            manifest
                .frames
                .insert(hash.clone(), blake3::hash(&bytes).to_hex().to_string());
        }
        // Fault injection for the crash-safety test: pause between the data files and the manifest.
        if let Some(ms) = std::env::var("RTLAB_TEST_CACHE_WRITE_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            eprintln!("(test hook) pausing {ms} ms before the manifest of {key}");
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let json = serde_json::to_vec_pretty(&manifest)?;
        let path = dir.join("manifest.json");
        write_atomic(&path, &json).map_err(|e| NotebookError::Io {
            doing: "write",
            path: path.clone(),
            source: e,
        })?;
        // Files an older manifest of this key referred to are garbage now.
        if let Ok(read) = std::fs::read_dir(&dir) {
            for entry in read.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if let Some(hash) = name.strip_suffix(".parquet") {
                    if !manifest.frames.contains_key(hash) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
        }
        Ok(())
    }

    pub fn remove(&self, key: &str) {
        let _ = std::fs::remove_dir_all(self.entry_dir(key));
    }

    /// Every entry with a readable manifest: (key, manifest, bytes on disk).
    pub fn list(&self) -> Vec<(String, Manifest, u64)> {
        let mut out = Vec::new();
        let Ok(read) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for entry in read.flatten() {
            let dir = entry.path();
            let Ok(bytes) = std::fs::read(dir.join("manifest.json")) else {
                continue;
            };
            let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
                continue;
            };
            let size = std::fs::read_dir(&dir)
                .map(|r| {
                    r.flatten()
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            out.push((
                entry.file_name().to_string_lossy().to_string(),
                manifest,
                size,
            ));
        }
        out.sort_by(|a, b| (&a.1.script, a.1.cell_index).cmp(&(&b.1.script, b.1.cell_index)));
        out
    }

    /// Removes every entry, or those of one script; returns how many.
    pub fn clear(&self, script: Option<&Path>) -> usize {
        let target = script.map(|s| {
            std::fs::canonicalize(s)
                .unwrap_or_else(|_| s.to_path_buf())
                .display()
                .to_string()
        });
        let mut removed = 0;
        let Ok(read) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        for entry in read.flatten() {
            let dir = entry.path();
            if !dir.is_dir() {
                continue;
            }
            let keep = match &target {
                None => false,
                Some(t) => {
                    let script_of = std::fs::read(dir.join("manifest.json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                        .map(|m| m.script);
                    // Unreadable entries go with any clear: they are garbage.
                    script_of.as_deref().is_some_and(|s| s != t)
                }
            };
            if !keep && std::fs::remove_dir_all(&dir).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_sees_a_rewrite_and_a_persisted_cell_never_keeps_a_moved_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("in.jsonl");
        std::fs::write(&file, "{\"a\": 1}\n").unwrap();
        let stamps = stamp_inputs(&[Input::File(file.clone())]);
        assert!(
            stamps.values().all(|s| s.starts_with("stamp:")),
            "{stamps:?}"
        );
        assert_eq!(changed_input(&stamps), None);
        // Persisting trades the stamp for the content hash while the file is as the cell read it.
        let hashes = content_hashes(&stamps);
        assert_eq!(
            hashes.values().next().unwrap(),
            &blake3::hash(b"{\"a\": 1}\n").to_hex().to_string()
        );
        assert_eq!(changed_input(&hashes), None);
        // A rewrite moves the stamp (and the content): both records see it.
        std::fs::write(&file, "{\"a\": 22}\n").unwrap();
        assert!(changed_input(&stamps).is_some());
        assert!(changed_input(&hashes).is_some());
        // A cell persisted after its input moved records "changed", which nothing matches.
        assert_eq!(content_hashes(&stamps).values().next().unwrap(), "changed");
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            stamp_inputs(&[Input::File(file.clone())])
                .values()
                .next()
                .unwrap(),
            "missing"
        );
    }

    #[test]
    fn an_environment_variable_is_recorded_by_hash_and_a_change_is_seen() {
        // A name no other test touches: tests share the process environment.
        let name = "RTLAB_TEST_CACHE_ENV_INPUT";
        std::env::set_var(name, "first");
        let recorded = stamp_inputs(&[Input::Env(name.into())]);
        let stamp = recorded.get(&format!("env:{name}")).unwrap();
        assert!(
            !stamp.contains("first"),
            "the value itself is never kept: {stamp}"
        );
        // Persisting keeps it as it is; an unchanged value is no change.
        assert_eq!(content_hashes(&recorded), recorded);
        assert_eq!(changed_input(&recorded), None);
        std::env::set_var(name, "second");
        assert_eq!(
            changed_input(&recorded).as_deref(),
            Some("environment variable RTLAB_TEST_CACHE_ENV_INPUT")
        );
        std::env::remove_var(name);
        assert!(changed_input(&recorded).is_some());
        assert_eq!(
            stamp_inputs(&[Input::Env(name.into())])
                .values()
                .next()
                .unwrap(),
            "env:unset"
        );
    }
}
