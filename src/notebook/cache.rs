//! The on-disk cell cache under `.rtlab/cache/`: one directory per cell key, holding `manifest.json` and
//! the Parquet files of the frames it refers to.
//!
//! Invariant: an entry is valid iff its manifest parses and every file it names exists with the recorded
//! hash. Frames are written first and the manifest last, each by temp file + rename, so a kill mid-write
//! leaves the previous entry (or none), never a half one. A corrupt entry is dropped, not trusted.

use crate::data::{frame_from_parquet_bytes, frame_to_parquet_bytes, Frame};
use crate::runtime_fns::write_atomic;
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
    /// Files the cell read through the stdlib → blake3 of their content when it ran.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

/// blake3 of each file; a file that cannot be read hashes to "missing".
pub fn hash_files(files: &[std::path::PathBuf]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|f| {
            let h = std::fs::read(f)
                .map(|b| blake3::hash(&b).to_hex().to_string())
                .unwrap_or_else(|_| "missing".to_string());
            (f.display().to_string(), h)
        })
        .collect()
}

/// The first recorded input whose content changed since, if any.
pub fn changed_input(inputs: &BTreeMap<String, String>) -> Option<String> {
    inputs.iter().find_map(|(path, hash)| {
        let now = hash_files(&[std::path::PathBuf::from(path)]);
        (now.get(path) != Some(hash)).then(|| path.clone())
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredValue {
    pub json: serde_json::Value,
    pub hash: String,
}

/// Where a script's workspace keeps its state: `RTLAB_HOME`, else the nearest `.rtlab/` walking up from
/// the script's directory (as git finds `.git`), else a new `.rtlab/` beside the script.
pub fn workspace_dir(script_dir: &Path) -> PathBuf {
    if let Some(home) = std::env::var_os("RTLAB_HOME") {
        return PathBuf::from(home);
    }
    let start = std::fs::canonicalize(script_dir).unwrap_or_else(|_| script_dir.to_path_buf());
    for dir in start.ancestors() {
        let candidate = dir.join(".rtlab");
        if candidate.is_dir() {
            return candidate;
        }
    }
    start.join(".rtlab")
}

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
    ) -> Result<(), String> {
        let dir = self.entry_dir(key);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        manifest.frames.clear();
        for (hash, frame) in frames {
            let bytes = frame_to_parquet_bytes(&frame.df).map_err(|e| e.to_string())?;
            let path = dir.join(format!("{hash}.parquet"));
            write_atomic(&path, &bytes)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
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
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        let path = dir.join("manifest.json");
        write_atomic(&path, &json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
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
