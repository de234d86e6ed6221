//! The workspace: the one context every stdlib function works in. A [`Workspace`] knows the directory
//! relative paths resolve against ([`Workspace::resolve`]), logs what a cell read for the cache
//! ([`Workspace::note_input`]), opens the workspace's store once ([`Workspace::store`]), carries
//! `--fresh` and the output sink. The `Runtime` owns one and puts it in its engine's default tag;
//! stdlib functions reach it through Rhai's call context ([`Workspace::of`]), and typed cores take it
//! as a `&Workspace` argument. There is no ambient state: two runtimes on one thread (the REPL's and
//! a `:run`'s, or two tests) never see each other's directory or inputs.
//!
//! Free functions here are the services that need no workspace: atomic writes, file stamps and
//! finding a script's `.rtlab/` ([`workspace_dir`]).

use crate::output::OutputSink;
use crate::store::SharedStore;
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

// The file services moved below this crate (rtlab-files); every caller keeps naming them here.
pub use rtlab_files::{resolve_against, write_atomic, write_atomic_parts};

/// Something outside the script that a cell read through the stdlib.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A file (absolute: paths resolve against an absolute base directory).
    File(PathBuf),
    /// An environment variable, read with `env(NAME)`.
    Env(String),
}

/// One script's (or one REPL's) workspace. Cheap to share: the runtime holds it in an [`Rc`].
pub struct Workspace {
    /// Absolute (canonical where it exists): every path rtlab resolves, and so every path it returns
    /// (`run.adapter`, say), is absolute, so handing it back to another rtlab function finds the
    /// same file whatever directory the script runs from.
    base_dir: RefCell<PathBuf>,
    /// What the stdlib read since the last [`Workspace::take_inputs`]: the cell cache checks it.
    inputs: RefCell<Vec<Input>>,
    /// `rtlab run --fresh`.
    fresh: Cell<bool>,
    /// `rtlab run --trust-cache`.
    trust_cache: Cell<bool>,
    /// One hash of every subsystem's code identity, set by the runtime that owns the workspace:
    /// what a result that may use any of rtlab (a sweep's trial) records.
    rtlab_code: RefCell<String>,
    output: OutputSink,
}

impl Workspace {
    /// A workspace whose relative paths resolve against `base_dir` (the script's directory, or the
    /// REPL's working directory), printing progress notes to `output`.
    pub fn new(base_dir: &Path, output: OutputSink) -> Rc<Workspace> {
        let ws = Workspace {
            base_dir: RefCell::new(PathBuf::new()),
            inputs: RefCell::new(Vec::new()),
            fresh: Cell::new(false),
            trust_cache: Cell::new(false),
            rtlab_code: RefCell::new(String::new()),
            output,
        };
        ws.set_base_dir(base_dir);
        Rc::new(ws)
    }

    /// The workspace of the engine running the calling function. An engine built without a runtime
    /// (a host that registers rtlab's packages on its own engine) gets one for the process's current
    /// directory that prints to stdout, so every function still works.
    pub fn of(ctx: &rhai::NativeCallContext) -> Rc<Workspace> {
        ctx.tag()
            .and_then(|tag| tag.clone().try_cast::<Rc<Workspace>>())
            .unwrap_or_else(|| {
                Workspace::new(
                    &std::env::current_dir().unwrap_or_default(),
                    OutputSink::new(),
                )
            })
    }

    /// Makes `engine`'s functions find this workspace through [`Workspace::of`].
    pub fn install(self: &Rc<Self>, engine: &mut rhai::Engine) {
        engine.set_default_tag(rhai::Dynamic::from(self.clone()));
    }

    /// The directory relative paths resolve against.
    pub fn base_dir(&self) -> PathBuf {
        self.base_dir.borrow().clone()
    }

    /// Changes the directory relative paths resolve against (the REPL's `:run` of another
    /// directory's script). It is made absolute, and canonical where it exists.
    pub fn set_base_dir(&self, dir: &Path) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let absolute = std::fs::canonicalize(dir)
            .or_else(|_| std::path::absolute(dir))
            .unwrap_or_else(|_| dir.to_path_buf());
        *self.base_dir.borrow_mut() = absolute;
    }

    /// Resolves a path given by a script: absolute paths stay, relative ones join the base directory.
    ///
    /// Leading `..` steps are taken on the base directory itself (`../out` from `/repo/scripts` is
    /// `/repo/out`): the base is canonical, so that is where the kernel would go too. A `..` further
    /// in is left for the kernel, since the directory before it may be a link.
    pub fn resolve(&self, path: &str) -> PathBuf {
        resolve_against(&self.base_dir.borrow(), path)
    }

    /// `path` resolved, and noted as read: for a function about to read the file.
    pub fn resolve_input(&self, path: &str) -> PathBuf {
        let full = self.resolve(path);
        self.note_input(&full);
        full
    }

    /// Where this workspace keeps its state (`.rtlab/`, see [`workspace_dir`]).
    pub fn dir(&self) -> PathBuf {
        workspace_dir(&self.base_dir.borrow())
    }

    /// This workspace's store, opened (and migrated) once per workspace directory and shared, or
    /// None with a warning when it cannot be opened: callers then work uncached.
    pub fn store(&self) -> Option<SharedStore> {
        crate::store::open(&self.dir())
    }

    /// Records that a stdlib function read `path`, so a cached cell that read it reruns when it
    /// changes.
    pub fn note_input(&self, path: &Path) {
        self.inputs
            .borrow_mut()
            .push(Input::File(path.to_path_buf()));
    }

    /// Records that a cell read the environment variable `name`: a cached cell reruns when its
    /// value changes (or it is set or unset).
    pub fn note_env(&self, name: &str) {
        self.inputs.borrow_mut().push(Input::Env(name.to_string()));
    }

    /// What was read since the last call, deduplicated, in order.
    pub fn take_inputs(&self) -> Vec<Input> {
        let mut inputs = std::mem::take(&mut *self.inputs.borrow_mut());
        let mut seen = std::collections::HashSet::new();
        inputs.retain(|f| seen.insert(f.clone()));
        inputs
    }

    /// `rtlab run --fresh`: every cached result is recomputed, not only the notebook's cells. A
    /// finished training run retrains and the verifier's store is not read (it is still written).
    /// Recorded model answers are kept: they are recordings, not results rtlab computed.
    pub fn set_fresh(&self, fresh: bool) {
        self.fresh.set(fresh);
    }

    /// True during a `--fresh` run.
    pub fn fresh(&self) -> bool {
        self.fresh.get()
    }

    /// `rtlab run --trust-cache`: results cached by another build of rtlab (another verifier, trainer
    /// or runtime) are served instead of recomputed, and marked where they are reported. Never the
    /// default: a result made by other code may not be what this code gives.
    pub fn set_trust_cache(&self, trust: bool) {
        self.trust_cache.set(trust);
    }

    /// True during a `--trust-cache` run.
    pub fn trust_cache(&self) -> bool {
        self.trust_cache.get()
    }

    /// Sets the identity of the whole rtlab this workspace runs in (the runtime does, from every
    /// subsystem's code identity).
    pub fn set_rtlab_code(&self, identity: String) {
        *self.rtlab_code.borrow_mut() = identity;
    }

    /// The identity of the whole rtlab this workspace runs in ('' when no runtime set one).
    pub fn rtlab_code(&self) -> String {
        self.rtlab_code.borrow().clone()
    }

    /// Shows a value mid-cell (`display(value)`), through the same sink as `print`.
    pub fn display(&self, value: &rhai::Dynamic) {
        self.output.display(value);
    }

    /// Prints a progress note through the same sink as the script's `print`, so a cached cell
    /// replays it.
    pub fn emit_line(&self, text: &str) {
        self.output.line(text);
    }
}

/// What identifies an environment variable's value without keeping it (it may be a secret):
/// `env:<blake3 of the value>`, or `env:unset`.
pub fn env_stamp(name: &str) -> String {
    match std::env::var_os(name) {
        Some(v) => format!("env:{}", &blake3::hash(v.as_encoded_bytes()).to_hex()[..32]),
        None => "env:unset".to_string(),
    }
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

/// What identifies a file's version cheaply: `stamp:<len>:<mtime ns>:<inode>`, or "missing". The
/// cell cache records it for inputs; a scan keys its remembered lines on it.
pub fn file_stamp(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        // The inode's change time too: `touch -d` can set the mtime back, never the ctime.
        Ok(m) => format!(
            "stamp:{}:{}:{}:{}.{}",
            m.len(),
            m.modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            m.ino(),
            m.ctime(),
            m.ctime_nsec()
        ),
        Err(_) => "missing".to_string(),
    }
}
