//! General-purpose stdlib functions every script needs: files relative to the script, sleeping that
//! Ctrl-C can interrupt, environment lookups. Paths in every stdlib function resolve through
//! [`resolve_path`]: relative to the running script's directory, so a script works from any cwd.

use rhai::plugin::*;
use std::cell::RefCell;
use std::path::{Path, PathBuf};

thread_local! {
    static BASE_DIR: RefCell<PathBuf> = RefCell::new(PathBuf::from("."));
    /// What the stdlib read since the last [`take_inputs`]: the cell cache checks it on restore.
    static INPUTS: RefCell<Vec<Input>> = const { RefCell::new(Vec::new()) };
}

/// Something outside the script that a cell read through the stdlib.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A file (absolute: paths resolve against an absolute base directory).
    File(PathBuf),
    /// An environment variable, read with `env(NAME)`.
    Env(String),
}

/// Records that a stdlib function read `path`, so a cached cell that read it reruns when it changes.
pub fn note_input(path: &Path) {
    INPUTS.with(|i| i.borrow_mut().push(Input::File(path.to_path_buf())));
}

/// Records that a cell read the environment variable `name`: a cached cell reruns when its value
/// changes (or it is set or unset).
pub fn note_env(name: &str) {
    INPUTS.with(|i| i.borrow_mut().push(Input::Env(name.to_string())));
}

/// What was read since the last call, deduplicated, in order.
pub fn take_inputs() -> Vec<Input> {
    let mut inputs = INPUTS.with(|i| std::mem::take(&mut *i.borrow_mut()));
    let mut seen = std::collections::HashSet::new();
    inputs.retain(|f| seen.insert(f.clone()));
    inputs
}

/// What identifies an environment variable's value without keeping it (it may be a secret):
/// `env:<blake3 of the value>`, or `env:unset`.
pub fn env_stamp(name: &str) -> String {
    match std::env::var_os(name) {
        Some(v) => format!("env:{}", &blake3::hash(v.as_encoded_bytes()).to_hex()[..32]),
        None => "env:unset".to_string(),
    }
}

/// Sets the directory relative paths resolve against (the script's directory, or the REPL's cwd).
///
/// It is made absolute (and canonical where it exists), so every path rtlab resolves, and so every
/// path it returns (`run.adapter`, say), is absolute: handing it back to another rtlab function finds
/// the same file, whatever directory the script runs from.
pub fn set_base_dir(dir: &Path) {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let absolute = std::fs::canonicalize(dir)
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.to_path_buf());
    BASE_DIR.with(|b| *b.borrow_mut() = absolute);
}

/// Where a script's workspace keeps its state: `RTLAB_HOME`, else the nearest `.rtlab/` walking up from
/// the script's directory (as git finds `.git`), else a new `.rtlab/` beside the script. A service
/// here, below the notebook, so that the store (and every capability that opens it) does not depend
/// on the notebook layer.
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

static FRESH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `rtlab run --fresh`: every cached result is recomputed, not only the notebook's cells. A finished
/// training run retrains and the verifier's store is not read (it is still written). Recorded model
/// answers are kept: they are recordings, not results rtlab computed.
pub fn set_fresh(fresh: bool) {
    FRESH.store(fresh, std::sync::atomic::Ordering::Relaxed);
}

/// True during a `--fresh` run.
pub fn fresh_requested() -> bool {
    FRESH.load(std::sync::atomic::Ordering::Relaxed)
}

/// Resolves a path given by a script: absolute paths stay, relative ones join the base directory.
///
/// Leading `..` steps are taken on the base directory itself (`../out` from `/repo/scripts` is
/// `/repo/out`): the base is canonical, so that is where the kernel would go too. A `..` further in
/// is left for the kernel, since the directory before it may be a link.
pub fn resolve_path(path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let mut base = BASE_DIR.with(|b| b.borrow().clone());
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

/// What identifies a file's version cheaply: `stamp:<len>:<mtime ns>:<inode>`, or "missing". The
/// cell cache records it for inputs; a scan keys its remembered lines on it.
pub fn file_stamp(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "stamp:{}:{}:{}",
            m.len(),
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            m.ino()
        ),
        Err(_) => "missing".to_string(),
    }
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

pub fn register(engine: &mut Engine) {
    engine.register_global_module(exported_module!(runtime_functions).into());
}

#[export_module]
mod runtime_functions {
    use super::*;

    /// Sleeps for `seconds` (a float or an int). Ctrl-C interrupts it.
    ///
    /// ```rhai
    /// sleep(0.01);
    /// ```
    #[rhai_fn(name = "sleep", return_raw)]
    pub fn sleep_float(seconds: f64) -> Result<(), Box<EvalAltResult>> {
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds.max(0.0));
        while std::time::Instant::now() < deadline {
            if crate::engine::cancel_requested() {
                return Err("cancelled by Ctrl-C".into());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            std::thread::sleep(left.min(std::time::Duration::from_millis(20)));
        }
        Ok(())
    }

    /// Sleeps for `seconds`. Ctrl-C interrupts it.
    #[rhai_fn(name = "sleep", return_raw)]
    pub fn sleep_int(seconds: i64) -> Result<(), Box<EvalAltResult>> {
        sleep_float(seconds as f64)
    }

    /// Reads a UTF-8 text file; relative paths are relative to the script's directory.
    ///
    /// ```rhai
    /// write_text("/tmp/rtlab_doc_example.txt", "hello");
    /// assert_eq(read_text("/tmp/rtlab_doc_example.txt"), "hello");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn read_text(path: &str) -> Result<String, Box<EvalAltResult>> {
        let full = resolve_path(path);
        note_input(&full);
        std::fs::read_to_string(&full)
            .map_err(|e| format!("cannot read {}: {e}", full.display()).into())
    }

    /// Writes a text file atomically (temp file + rename), creating parent directories.
    #[rhai_fn(return_raw)]
    pub fn write_text(path: &str, text: &str) -> Result<(), Box<EvalAltResult>> {
        let full = resolve_path(path);
        write_atomic(&full, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", full.display()).into())
    }

    /// True when the path exists (relative to the script's directory).
    pub fn file_exists(path: &str) -> bool {
        resolve_path(path).exists()
    }

    /// This process's peak resident memory in MiB (Linux `VmHWM`), or `()` where unknown. For memory
    /// budgets in benchmarks: `print(peak_rss_mb())`.
    pub fn peak_rss_mb() -> Dynamic {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| Dynamic::from(kb / 1024.0))
            .unwrap_or(Dynamic::UNIT)
    }

    /// Parses JSON text into Rhai values (objects become maps, arrays arrays, null `()`); the error names
    /// the line and column.
    ///
    /// ```rhai
    /// let v = parse_json(`{"r": 64, "targets": ["q_proj", "v_proj"]}`);
    /// assert_eq(v.targets[1], "v_proj");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn parse_json(text: &str) -> Result<Dynamic, Box<EvalAltResult>> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("parse_json: {e}"))?;
        Ok(crate::data::json_to_dynamic(value))
    }

    /// Writes any value (maps, arrays, numbers, strings, bools, `()`) as JSON text.
    ///
    /// ```rhai
    /// assert_eq(json([1, 2.5, "x", ()]), `[1,2.5,"x",null]`);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn json(value: Dynamic) -> Result<String, Box<EvalAltResult>> {
        Ok(crate::data::dynamic_to_json(&value)
            .map_err(|e| format!("json: {e}"))?
            .to_string())
    }

    /// The value of an environment variable, or `()` when unset. A cached cell that read it reruns
    /// when the value changes.
    ///
    /// ```rhai
    /// let home = env("HOME");
    /// assert(home != (), "HOME is set");
    /// ```
    pub fn env(name: &str) -> Dynamic {
        note_env(name);
        std::env::var(name)
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT)
    }

    /// Fails the script with `message` unless `a == b` (compared by their displayed values).
    ///
    /// ```rhai
    /// assert_eq(1 + 1, 2);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn assert_eq(a: Dynamic, b: Dynamic) -> Result<(), Box<EvalAltResult>> {
        let (x, y) = (
            crate::engine::display_value(&a),
            crate::engine::display_value(&b),
        );
        if x == y {
            Ok(())
        } else {
            Err(format!("assertion failed: {x} != {y}").into())
        }
    }

    /// Fails the script with `message` unless `condition` is true.
    ///
    /// ```rhai
    /// assert(2 > 1, "two is more than one");
    /// ```
    #[rhai_fn(name = "assert", return_raw)]
    pub fn assert_msg(condition: bool, message: &str) -> Result<(), Box<EvalAltResult>> {
        if condition {
            Ok(())
        } else {
            Err(format!("assertion failed: {message}").into())
        }
    }
}
