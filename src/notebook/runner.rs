//! Running a script as a notebook: cells in order in one scope, each keyed by its normalized code and
//! the content of what it reads; a cell whose key is known is restored instead of run.
//!
//! Invariant: a cell is restored only if every value it reads hashed to the same content as when its
//! entry was made. Whatever cannot be hashed (a closure) makes its readers rerun, with a note.

use super::cache::{
    changed_input, content_hashes, stamp_inputs, workspace_dir, CellCache, Lookup, Manifest,
    StoredValue, FORMAT,
};
use super::cells::{has_markers, normalize, split_cells, Cell};
use super::deps::{analyze, CellDeps};
use super::persist::{decode, encode};
use crate::engine::{display_value, Runtime, ScriptError};
use rhai::{Dynamic, Scope, AST};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Whether the persistent cache is read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Read and write (the default).
    Normal,
    /// Recompute every cell, then write (`--fresh`).
    Fresh,
    /// Neither read nor write (`--no-cache`).
    Off,
}

#[derive(Debug, Clone)]
pub struct NotebookOptions {
    pub mode: CacheMode,
    /// Cells faster than this many seconds are not persisted: they simply rerun.
    pub cache_min_s: f64,
    /// Print one status line per cell on stderr.
    pub status_lines: bool,
    /// Serve cells (and the stdlib's stores) cached by another build of rtlab (`--trust-cache`).
    pub trust_cache: bool,
    /// The notebook runs once in this process (`rtlab run`, `rtlab report`): nothing is remembered
    /// for a rerun, so under `--no-cache` nothing needs a hash. `watch` and the REPL rerun, and keep
    /// hashing to restore unchanged cells from memory.
    pub once: bool,
}

impl NotebookOptions {
    /// How long a cell must have run for its outputs to be hashed, or None for a run that hashes
    /// nothing (no keys from the values a cell reads either). Always (0 s) where the notebook may be
    /// rerun in this process; run once, only a cell slow enough to persist (a later cell that reads a
    /// value hashes it then, for its key); never under `--no-cache` run once (a 200k-row frame costs
    /// 0.1 to 0.4 s to hash).
    fn hash_output_from_s(&self) -> Option<f64> {
        match (self.mode, self.once) {
            (CacheMode::Off, true) => None,
            (_, true) => Some(self.cache_min_s),
            (_, false) => Some(0.0),
        }
    }
}

impl Default for NotebookOptions {
    fn default() -> Self {
        NotebookOptions {
            mode: CacheMode::Normal,
            cache_min_s: 1.0,
            status_lines: true,
            trust_cache: false,
            once: false,
        }
    }
}

/// How a cell's outputs came to be in this run.
#[derive(Debug, Clone, PartialEq)]
pub enum CellStatus {
    Ran {
        elapsed_s: f64,
        persisted: bool,
    },
    /// Restored from the persistent cache; the run it came from took `saved_s`.
    Cached {
        saved_s: f64,
    },
    /// Restored from this process's memory (REPL `:run` again, `watch`).
    Unchanged {
        saved_s: f64,
    },
}

/// What the runner knows about one cell after a run: for `:cells`, `rtlab report` and tests.
#[derive(Debug, Clone)]
pub struct CellReport {
    pub cell: Cell,
    pub status: CellStatus,
    pub reads: Vec<String>,
    pub defines: Vec<String>,
    pub printed: String,
    pub result_text: Option<String>,
    pub result_html: Option<String>,
    /// Why the cell could not be cached, or why it reran, if so.
    pub note: Option<String>,
    /// Files the cell read through the stdlib, with their content hashes.
    pub inputs: BTreeMap<String, String>,
    /// Restored under `--trust-cache` from an entry another build of rtlab made: what changed.
    pub made_by_other_code: Option<String>,
}

/// A cell's outputs kept in memory between runs of the same notebook.
#[derive(Clone)]
struct Remembered {
    outputs: Vec<(String, Dynamic, bool)>,
    printed: String,
    result_text: Option<String>,
    result_html: Option<String>,
    elapsed_s: f64,
    inputs: BTreeMap<String, String>,
}

/// A script run as cells, with an in-memory cache that survives reruns in the same process.
pub struct Notebook {
    pub path: PathBuf,
    memory: HashMap<CellKey, Remembered>,
    pub last_run: Vec<CellReport>,
}

/// The content hash of a scope value, or why it has none.
type ValueHash = Result<String, String>;

impl Notebook {
    pub fn new(path: &Path) -> Notebook {
        Notebook {
            path: path.to_path_buf(),
            memory: HashMap::new(),
            last_run: Vec::new(),
        }
    }

    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    /// Runs every cell of the script in `scope`. Returns the error of the first failing cell; the cells
    /// before it keep their effects (and cache entries).
    pub fn run(
        &mut self,
        rt: &Runtime,
        scope: &mut Scope<'static>,
        opts: &NotebookOptions,
    ) -> Result<(), ScriptError> {
        // `--fresh` reaches the stdlib's own caches too (training runs, the verifier's store).
        rt.workspace.set_fresh(opts.mode == CacheMode::Fresh);
        rt.workspace.set_trust_cache(opts.trust_cache);
        let result = self.run_cells(rt, scope, opts);
        rt.workspace.set_fresh(false);
        rt.workspace.set_trust_cache(false);
        result
    }

    fn run_cells(
        &mut self,
        rt: &Runtime,
        scope: &mut Scope<'static>,
        opts: &NotebookOptions,
    ) -> Result<(), ScriptError> {
        let origin = self.origin();
        // A Jupyter notebook runs as the script of its code cells.
        let source = super::source::read_script(&self.path)
            .map_err(|e| ScriptError::plain(&origin, e.to_string()))?;
        let notebook_mode = has_markers(&source);
        let mut state = RunState::new(&self.path, origin);
        self.last_run.clear();
        rt.sink.take_capture();
        for cell in split_cells(&source) {
            let hashing = opts.hash_output_from_s().is_some();
            let ctx = state.prepare(rt, scope, cell, hashing)?;
            let restored = if hashing && ctx.uncacheable.is_none() && opts.mode != CacheMode::Fresh
            {
                self.restore(rt, scope, &mut state, &ctx, opts)
            } else {
                None
            };
            let report = match restored {
                Some(report) => report,
                None => self.run_and_persist(rt, scope, &mut state, &ctx, opts)?,
            };
            if opts.status_lines
                && (notebook_mode || !matches!(report.status, CellStatus::Ran { .. }))
            {
                eprintln!("{}", status_line(&report));
            }
            self.last_run.push(report);
        }
        Ok(())
    }

    /// The cell's outputs from this process's memory, or else (in `Normal` mode) from the disk cache;
    /// `None` when it must run.
    fn restore(
        &mut self,
        rt: &Runtime,
        scope: &mut Scope<'static>,
        state: &mut RunState,
        ctx: &CellContext,
        opts: &NotebookOptions,
    ) -> Option<CellReport> {
        let remembered = self
            .memory
            .get(&ctx.key)
            .cloned()
            .filter(|m| changed_input(&m.inputs).is_none());
        if let Some(mem) = remembered {
            return Some(restore_memory(rt, scope, &mut state.hashes, ctx, mem));
        }
        if opts.mode == CacheMode::Normal {
            return self.restore_disk(rt, scope, state, ctx, opts.trust_cache);
        }
        None
    }

    /// Runs the cell, then persists its outputs when it took at least `cache_min_s` and they can be.
    fn run_and_persist(
        &mut self,
        rt: &Runtime,
        scope: &mut Scope<'static>,
        state: &mut RunState,
        ctx: &CellContext,
        opts: &NotebookOptions,
    ) -> Result<CellReport, ScriptError> {
        let hash_outputs_from_s = opts.hash_output_from_s();
        let mut r = self.run_cell(
            rt,
            scope,
            &mut state.hashes,
            &state.origin,
            ctx,
            hash_outputs_from_s,
        )?;
        let CellStatus::Ran { elapsed_s, .. } = r.status else {
            return Ok(r);
        };
        // A cheap cell would not be persisted anyway: an unpersistable output is no news.
        if elapsed_s < opts.cache_min_s {
            r.note = None;
        }
        r.note = ctx.uncacheable.clone().or(r.note);
        let cacheable = ctx.uncacheable.is_none() && r.note.is_none();
        if cacheable && opts.mode != CacheMode::Off && elapsed_s >= opts.cache_min_s {
            match persist(&state.cache, &ctx.key, &state.script_id, &r, scope) {
                Ok(()) => {
                    r.status = CellStatus::Ran {
                        elapsed_s,
                        persisted: true,
                    }
                }
                Err(e) => eprintln!("warning: [{}] could not be cached: {e}", ctx.cell.label()),
            }
        }
        Ok(r)
    }

    fn run_cell(
        &mut self,
        rt: &Runtime,
        scope: &mut Scope<'static>,
        hashes: &mut HashMap<String, ValueHash>,
        origin: &str,
        ctx: &CellContext,
        hash_outputs_from_s: Option<f64>,
    ) -> Result<CellReport, ScriptError> {
        rt.workspace.take_inputs();
        let start = Instant::now();
        let result = rt.eval(origin, &ctx.code, scope, &ctx.ast);
        let elapsed_s = start.elapsed().as_secs_f64();
        let hashing = hash_outputs_from_s.is_some_and(|min| elapsed_s >= min);
        let inputs = stamp_inputs(&rt.workspace.take_inputs());
        let value = result?;
        let result_text = (!value.is_unit()).then(|| display_value(&value));
        if let Some(text) = &result_text {
            rt.sink.line(text);
        }
        let result_html = (!value.is_unit()).then(|| rtlab_core::display::value_html(&value));
        let printed = rt.sink.take_capture();

        let defines = if hashing {
            defined_names(scope, hashes, &ctx.deps)
        } else {
            // Without hashes, every name the cell may have changed counts as defined.
            ctx.deps
                .declared
                .iter()
                .chain(&ctx.deps.mutated)
                .filter(|n| scope.contains(n))
                .cloned()
                .collect()
        };
        let mut note = None;
        let mut outputs = Vec::new();
        for name in &defines {
            if hashing {
                let h = hash_scope_value(scope, name);
                if let Err(why) = &h {
                    note.get_or_insert(format!("`{name}` is {why}, which cannot be cached"));
                }
                hashes.insert(name.clone(), h);
            } else {
                // Its old hash is stale: a later reader hashes the new value.
                hashes.remove(name);
            }
            let value = scope.get_value::<Dynamic>(name).unwrap_or_default();
            outputs.push((
                name.clone(),
                value,
                scope.is_constant(name).unwrap_or(false),
            ));
        }
        if hashing {
            self.memory.insert(
                ctx.key.clone(),
                Remembered {
                    outputs,
                    printed: printed.clone(),
                    result_text: result_text.clone(),
                    result_html: result_html.clone(),
                    elapsed_s,
                    inputs: inputs.clone(),
                },
            );
        }
        Ok(CellReport {
            cell: ctx.cell.clone(),
            status: CellStatus::Ran {
                elapsed_s,
                persisted: false,
            },
            reads: ctx.reads.clone(),
            defines: defines.into_iter().collect(),
            printed,
            result_text,
            result_html,
            note,
            inputs,
            made_by_other_code: None,
        })
    }

    fn restore_disk(
        &mut self,
        rt: &Runtime,
        scope: &mut Scope<'static>,
        state: &mut RunState,
        ctx: &CellContext,
        trust_cache: bool,
    ) -> Option<CellReport> {
        let label = ctx.cell.label();
        let cache = &state.cache;
        let (manifest, frames) = match cache.lookup(&ctx.key.0) {
            Lookup::Hit(m, f) => match changed_input(&m.inputs) {
                Some(file) => {
                    eprintln!("[{label}] {file} changed since the cached run: rerunning");
                    return None;
                }
                None => (*m, f),
            },
            Lookup::Miss => return None,
            Lookup::Corrupt(why) => {
                eprintln!(
                    "warning: [{label}] cache entry is corrupt ({why}); dropping it and recomputing"
                );
                cache.remove(&ctx.key.0);
                return None;
            }
        };
        // A result made by other code may not be what this code gives: rerun, unless trusted.
        let other_code = crate::provenance::changed_code(&manifest.code);
        if let Some(why) = &other_code {
            if !trust_cache {
                eprintln!("[{label}] {why} since the cached run: rerunning");
                return None;
            }
        }
        let mut restored = Vec::new();
        for (name, stored) in &manifest.outputs {
            let mut load = |hash: &str| {
                frames
                    .get(hash)
                    .cloned()
                    .ok_or_else(|| format!("frame {hash} missing"))
            };
            match decode(&stored.json, &mut load) {
                Ok(v) => restored.push((name.clone(), v, stored.hash.clone())),
                Err(why) => {
                    eprintln!("warning: [{label}] cache entry is corrupt ({name}: {why}); dropping it and recomputing");
                    cache.remove(&ctx.key.0);
                    return None;
                }
            }
        }
        let mut outputs = Vec::new();
        for (name, value, hash) in restored {
            let constant = manifest.constants.contains(&name);
            state.hashes.insert(name.clone(), Ok(hash));
            outputs.push((name, value, constant));
        }
        let saved_s = manifest.elapsed_s;
        let mem = Remembered {
            outputs,
            printed: manifest.printed,
            result_text: manifest.result_text,
            result_html: manifest.result_html,
            elapsed_s: manifest.elapsed_s,
            inputs: manifest.inputs,
        };
        self.memory.insert(ctx.key.clone(), mem.clone());
        let mut report = restore_remembered(rt, scope, ctx, mem, CellStatus::Cached { saved_s });
        report.made_by_other_code = other_code;
        Some(report)
    }
}

/// A cell's cache key: the blake3 of the cell's normalized code, the content hash of every value it
/// reads, and the code of the cells that define the functions it calls. Not rtlab's own code: the
/// entry records each subsystem's identity, so a changed rtlab is recognised, said, and (under
/// `--trust-cache` only) still served.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CellKey(String);

/// What a run carries from one cell to the next.
struct RunState {
    origin: String,
    cache: CellCache,
    /// The script's canonical path, recorded in each manifest.
    script_id: String,
    /// The functions defined so far, merged into every later cell's AST.
    fn_lib: AST,
    /// Function name → hash of the normalized code of the cell that defines it.
    fn_hashes: BTreeMap<String, String>,
    /// Name → content hash of the value in scope, kept current as cells define names.
    hashes: HashMap<String, ValueHash>,
    /// `import` statements of earlier cells, replayed on the (blank) first line of later cells, so a
    /// module imported in cell 1 is visible in cell 3 as it would be in a plain script.
    imports: String,
}

/// One cell, compiled and keyed, ready to restore or run.
struct CellContext {
    cell: Cell,
    /// The cell's code at its file lines, with earlier cells' imports.
    code: String,
    /// The cell's AST merged with the functions of earlier cells.
    ast: AST,
    deps: CellDeps,
    /// The names the cell mentions that exist when it starts.
    reads: Vec<String>,
    key: CellKey,
    /// Why the cell cannot be cached: a value it reads cannot be hashed.
    uncacheable: Option<String>,
}

impl RunState {
    fn new(path: &Path, origin: String) -> RunState {
        let script_dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        RunState {
            origin,
            cache: CellCache::new(&workspace_dir(&script_dir)),
            script_id: std::fs::canonicalize(path)
                .unwrap_or_else(|_| path.to_path_buf())
                .display()
                .to_string(),
            fn_lib: AST::empty(),
            fn_hashes: BTreeMap::new(),
            hashes: HashMap::new(),
            imports: String::new(),
        }
    }

    /// Compiles the cell, finds what it reads and computes its key; records the functions it
    /// defines for the cells after it.
    fn prepare(
        &mut self,
        rt: &Runtime,
        scope: &Scope<'static>,
        cell: Cell,
        hashing: bool,
    ) -> Result<CellContext, ScriptError> {
        let mut code = cell.code_at_file_lines();
        if cell.first_line > 1 && !self.imports.is_empty() {
            code.insert_str(0, &self.imports);
        }
        for line in cell.code.lines().map(str::trim) {
            if line.starts_with("import ") && line.ends_with(';') {
                self.imports.push_str(line);
                self.imports.push(' ');
            }
        }
        let ast = rt.compile(&self.origin, &code)?;
        let deps = analyze(&ast);
        let normalized = normalize(&cell.code);
        let reads: Vec<String> = deps
            .mentioned
            .iter()
            .filter(|n| scope.contains(n))
            .cloned()
            .collect();
        let (key, uncacheable) = if hashing {
            self.key(scope, &normalized, &deps, &reads)
        } else {
            (CellKey(String::new()), None)
        };

        let combined = self.fn_lib.merge(&ast);
        self.fn_lib = self.fn_lib.merge(&ast.clone_functions_only());
        let code_hash = blake3::hash(normalized.as_bytes()).to_hex().to_string();
        for f in &deps.functions {
            self.fn_hashes.insert(f.clone(), code_hash.clone());
        }
        Ok(CellContext {
            cell,
            code,
            ast: combined,
            deps,
            reads,
            key,
            uncacheable,
        })
    }

    /// The cell's key, and why it cannot be cached if a value it reads has no content hash.
    fn key(
        &mut self,
        scope: &Scope<'static>,
        normalized: &str,
        deps: &CellDeps,
        reads: &[String],
    ) -> (CellKey, Option<String>) {
        let mut key_input = format!("rtlab cell\n{normalized}\n");
        let mut uncacheable: Option<String> = None;
        for name in reads {
            let h = self
                .hashes
                .entry(name.clone())
                .or_insert_with(|| hash_scope_value(scope, name))
                .clone();
            match h {
                Ok(h) => key_input.push_str(&format!("read {name} {h}\n")),
                Err(why) => {
                    uncacheable
                        .get_or_insert(format!("it reads `{name}`, {why}, which cannot be cached"));
                }
            }
        }
        for f in deps
            .called
            .iter()
            .filter(|f| self.fn_hashes.contains_key(*f))
        {
            key_input.push_str(&format!("fn {f} {}\n", self.fn_hashes[f]));
        }
        let key = blake3::hash(key_input.as_bytes()).to_hex().to_string();
        (CellKey(key), uncacheable)
    }
}

/// The names a cell defined: those it declares, and those it may have changed in place (a method
/// call on them) whose content did change.
fn defined_names(
    scope: &Scope<'static>,
    hashes: &HashMap<String, ValueHash>,
    deps: &CellDeps,
) -> BTreeSet<String> {
    let mut defines: BTreeSet<String> = deps
        .declared
        .iter()
        .filter(|n| scope.contains(n))
        .cloned()
        .collect();
    let candidates: Vec<&String> = deps
        .mutated
        .iter()
        .filter(|n| scope.contains(n) && !defines.contains(*n))
        .collect();
    for name in candidates {
        let before = hashes.get(name.as_str()).cloned();
        let after = hash_scope_value(scope, name);
        if before.is_none() || before.as_ref() != Some(&after) || after.is_err() {
            defines.insert(name.clone());
        }
    }
    defines
}

fn restore_memory(
    rt: &Runtime,
    scope: &mut Scope<'static>,
    hashes: &mut HashMap<String, ValueHash>,
    ctx: &CellContext,
    mem: Remembered,
) -> CellReport {
    for (name, value, _) in &mem.outputs {
        hashes.insert(name.clone(), hash_value(value));
    }
    let saved_s = mem.elapsed_s;
    restore_remembered(rt, scope, ctx, mem, CellStatus::Unchanged { saved_s })
}

/// Puts a cell's remembered outputs back in scope and replays what it printed, as if it had run.
fn restore_remembered(
    rt: &Runtime,
    scope: &mut Scope<'static>,
    ctx: &CellContext,
    mem: Remembered,
    status: CellStatus,
) -> CellReport {
    for (name, value, constant) in &mem.outputs {
        set_var(scope, name, value.clone(), *constant);
    }
    rt.sink.replay(&mem.printed);
    rt.sink.take_capture();
    CellReport {
        cell: ctx.cell.clone(),
        status,
        reads: ctx.reads.clone(),
        defines: mem.outputs.iter().map(|o| o.0.clone()).collect(),
        printed: mem.printed,
        result_text: mem.result_text,
        result_html: mem.result_html,
        note: None,
        inputs: mem.inputs,
        made_by_other_code: None,
    }
}

/// Writes the cell's outputs to the disk cache under its key.
fn persist(
    cache: &CellCache,
    key: &CellKey,
    script: &str,
    r: &CellReport,
    scope: &Scope<'static>,
) -> Result<(), super::NotebookError> {
    let mut outputs = BTreeMap::new();
    let mut frames = BTreeMap::new();
    let mut constants = Vec::new();
    for name in &r.defines {
        let value = scope.get_value::<Dynamic>(name).unwrap_or_default();
        let enc = encode(&value)
            .map_err(|e| super::NotebookError::Persist(format!("`{name}` is {}", e.0)))?;
        let hash = enc.content_hash();
        frames.extend(enc.frames);
        outputs.insert(
            name.clone(),
            StoredValue {
                json: enc.json,
                hash,
            },
        );
        if scope.is_constant(name).unwrap_or(false) {
            constants.push(name.clone());
        }
    }
    let elapsed_s = match r.status {
        CellStatus::Ran { elapsed_s, .. } => elapsed_s,
        _ => 0.0,
    };
    let manifest = Manifest {
        format: FORMAT,
        script: script.to_string(),
        cell_index: r.cell.index,
        cell_name: r.cell.name.clone(),
        elapsed_s,
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        outputs,
        constants,
        printed: r.printed.clone(),
        result_text: r.result_text.clone(),
        result_html: r.result_html.clone(),
        frames: BTreeMap::new(),
        inputs: content_hashes(&r.inputs),
        code: crate::provenance::code_identities(),
    };
    cache.store(&key.0, manifest, &frames)
}

fn set_var(scope: &mut Scope<'static>, name: &str, value: Dynamic, constant: bool) {
    if constant {
        scope.push_constant_dynamic(name.to_string(), value);
    } else {
        scope.set_or_push(name.to_string(), value);
    }
}

fn hash_scope_value(scope: &Scope<'static>, name: &str) -> ValueHash {
    match scope.get_value::<Dynamic>(name) {
        Some(v) => hash_value(&v),
        None => Err("not defined".to_string()),
    }
}

fn hash_value(value: &Dynamic) -> ValueHash {
    encode(value).map(|e| e.content_hash()).map_err(|e| e.0)
}

/// `[3 verify] cached (saved 41.2 s)` and friends.
pub fn status_line(r: &CellReport) -> String {
    let label = r.cell.label();
    let mut line = match &r.status {
        CellStatus::Ran {
            elapsed_s,
            persisted: true,
        } => format!("[{label}] ran in {elapsed_s:.2} s, cached"),
        CellStatus::Ran {
            elapsed_s,
            persisted: false,
        } => format!("[{label}] ran in {elapsed_s:.2} s"),
        CellStatus::Cached { saved_s } => format!("[{label}] cached (saved {saved_s:.1} s)"),
        CellStatus::Unchanged { saved_s } => format!("[{label}] unchanged (saved {saved_s:.1} s)"),
    };
    if let Some(note) = &r.note {
        line.push_str(&format!(" (not cached: {note})"));
    }
    if let Some(why) = &r.made_by_other_code {
        line.push_str(&format!(
            " (made before {why}; served because of --trust-cache)"
        ));
    }
    line
}
