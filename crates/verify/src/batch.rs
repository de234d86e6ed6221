//! Verifying many examples: every core busy, an indicatif progress bar (rate, ETA) on a terminal, and
//! results cached in the workspace store keyed by the hash of the code, testbench, reference, options
//! and tool versions, so re-verifying unchanged rows is near-instant. Results are stored as they
//! finish: an interrupted batch keeps what it did.

use super::{tool_versions, verify, Report, VerifyOptions};
use crate::VerifyError;
use rtlab_core::store::{Store, StoredVerdict};
use rtlab_slurm::Executor;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// One example to verify.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub code: String,
    pub testbench: Option<String>,
    pub reference: Option<String>,
    pub top: Option<String>,
}

/// The cache key: everything in the job and options that can change the verdict. Not the verifier's
/// code identity (the stored row names it, so a stale verdict is recognised and reported, and
/// `--trust-cache` can still serve it) and not the time limits: a verdict reached in time is the
/// same under any limit, and a timeout is stored with its limits (see [`Sink::stored`]).
pub fn cache_key(job: &Job, opts: &VerifyOptions) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"rtlab-verify-v2\0");
    for part in [
        Some(&job.code),
        job.testbench.as_ref(),
        job.reference.as_ref(),
        job.top.as_ref(),
    ] {
        match part {
            Some(p) => {
                h.update(&(p.len() as u64).to_le_bytes());
                h.update(p.as_bytes());
            }
            None => {
                h.update(b"\xff");
            }
        }
    }
    let mut o = opts.clone();
    o.testbench = None;
    o.reference = None;
    o.top = None;
    o.timeouts = crate::Timeouts::default();
    h.update(serde_json::to_string(&o).unwrap_or_default().as_bytes());
    h.update(format!("{:?}", tool_versions()).as_bytes());
    h.finalize().to_hex().to_string()
}

/// The key of a whole batch (every row, cached or not): it names the batch's Slurm job directory, so
/// the same batch run again finds the job an earlier run submitted.
pub fn batch_key(keys: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"rtlab-verify-batch-v1\0");
    for k in keys {
        h.update(k.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// Counts of a batch run, for the closing line.
#[derive(Debug, Default, Clone)]
pub struct BatchStats {
    pub total: usize,
    pub cached: usize,
    pub verified: usize,
    /// Verdicts that could not be written to the store, and the first reason.
    pub not_stored: usize,
    pub store_error: Option<String>,
    /// What the Slurm executor did, when the batch ran there.
    pub slurm: Option<rtlab_slurm::SlurmRun>,
    /// Stored verdicts made by another verifier (another build of rtlab), verified again.
    pub stale: usize,
    /// Stored verdicts made by another verifier, served because of `--trust-cache`.
    pub trusted_stale: usize,
    /// Provisional verdicts (a timeout, a killed tool) verified again.
    pub retried: usize,
}

impl BatchStats {
    /// What the store did besides serving final verdicts, for the batch's closing line: empty, or
    /// `; 3 provisional verdicts (timeouts, killed tools) verified again`.
    pub fn store_notes(&self) -> String {
        let mut notes = String::new();
        if self.retried > 0 {
            notes.push_str(&format!(
                "; {} provisional verdict{} (timeouts, killed tools) verified again",
                self.retried,
                plural(self.retried)
            ));
        }
        if self.stale > 0 {
            notes.push_str(&format!(
                "; {} verdict{} made by another version of the verifier verified again",
                self.stale,
                plural(self.stale)
            ));
        }
        if self.trusted_stale > 0 {
            notes.push_str(&format!(
                "; {} verdict{} made by another version of the verifier served (--trust-cache)",
                self.trusted_stale,
                plural(self.trusted_stale)
            ));
        }
        notes
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl BatchStats {
    /// The warning for verdicts the store refused, naming the store, the count and what it means, or
    /// None when every verdict was saved.
    pub fn store_warning(&self, store: Option<&Store>) -> Option<String> {
        let why = self.store_error.as_ref()?;
        Some(format!(
            "warning: {} of {} verdicts were not saved to the store {} ({why}); they are in this result but a rerun verifies them again",
            self.not_stored,
            self.verified,
            store.map(|s| s.path().display().to_string()).unwrap_or_default(),
        ))
    }
}

/// Verifies every job, here on every core or on Slurm as `executor` says. Results come back in job
/// order. Checks the chosen stages' tools first: a missing one is an error before any work. `ws`
/// says whether to read `store` (not during `--fresh`) and where Slurm job directories go.
pub fn verify_all(
    ws: &rtlab_core::Workspace,
    jobs: &[Job],
    opts: &VerifyOptions,
    store: Option<&Store>,
    executor: &Executor,
) -> Result<(Vec<Report>, BatchStats), VerifyError> {
    let simulates = opts.testbench.is_some()
        || opts.reference.is_some()
        || jobs
            .iter()
            .any(|j| j.testbench.is_some() || j.reference.is_some());
    opts.check_tools(simulates)?;
    verify_checked(ws, jobs, opts, store, executor)
}

/// One job with the batch's options: its own testbench, reference and top where it has them.
fn verify_job(job: &Job, opts: &VerifyOptions) -> Report {
    let mut o = opts.clone();
    o.testbench = job.testbench.clone();
    o.reference = job.reference.clone();
    o.top = job.top.clone().or(o.top);
    verify(&job.code, &o)
}

/// Where verdicts go as they arrive: the result slots, and the store (one transaction per 64, or per
/// Slurm part), so an interrupted batch keeps its work. A failed write is counted and reported; it
/// never stops the batch or loses what is saved.
struct Sink<'a> {
    store: Option<&'a Store>,
    keys: &'a [String],
    results: Vec<Option<Report>>,
    pending: Vec<(usize, StoredVerdict)>,
    /// The verifier's code identity and the batch's time limits (JSON), stored with each verdict.
    code: String,
    limits: String,
    /// Provisional verdicts being tried again, by row: a transient verdict reached twice is final.
    previous: std::collections::HashMap<usize, StoredVerdict>,
    stats: BatchStats,
    bar: Option<indicatif::ProgressBar>,
}

impl Sink<'_> {
    fn accept(&mut self, i: usize, report: Report) {
        // A cancelled run is not a verdict: do not cache it.
        if !report
            .errors
            .iter()
            .any(|e| e.contains("cancelled by Ctrl-C"))
        {
            let stored = self.stored(i, &report);
            self.pending.push((i, stored));
        }
        self.results[i] = Some(report);
        self.stats.verified += 1;
        if let Some(b) = &self.bar {
            b.inc(1);
        }
        if self.pending.len() >= 64 {
            self.flush();
        }
    }

    /// The row to store for a fresh verdict. A transient one (a timeout, a killed tool) is final only
    /// when the run before reached the same verdict under the same limits; until then it is
    /// provisional and tried again.
    fn stored(&self, i: usize, report: &Report) -> StoredVerdict {
        let transient = report.is_transient();
        let attempts = match self.previous.get(&i) {
            Some(prev) if transient && prev.code == self.code && prev.limits == self.limits => {
                let same = serde_json::from_str::<Report>(&prev.report).is_ok_and(|p| {
                    p.is_transient()
                        && p.sim_status == report.sim_status
                        && p.timed_out == report.timed_out
                });
                if same {
                    prev.attempts + 1
                } else {
                    1
                }
            }
            _ => 1,
        };
        StoredVerdict {
            report: serde_json::to_string(report).unwrap_or_default(),
            code: self.code.clone(),
            attempts,
            provisional: transient && attempts < 2,
            limits: self.limits.clone(),
        }
    }

    fn flush(&mut self) {
        if let Some(store) = self.store {
            let keys = self.keys;
            let pending = &self.pending;
            let written = store.transaction(|s| {
                for (i, verdict) in pending.iter() {
                    s.put_verify(&keys[*i], verdict)?;
                }
                Ok(())
            });
            if let Err(e) = written {
                self.stats.not_stored += self.pending.len();
                self.stats.store_error.get_or_insert(e.to_string());
            }
        }
        self.pending.clear();
    }
}

fn verify_checked(
    ws: &rtlab_core::Workspace,
    jobs: &[Job],
    opts: &VerifyOptions,
    store: Option<&Store>,
    executor: &Executor,
) -> Result<(Vec<Report>, BatchStats), VerifyError> {
    let keys: Vec<String> = jobs.iter().map(|j| cache_key(j, opts)).collect();
    let mut sink = Sink {
        store,
        keys: &keys,
        results: vec![None; jobs.len()],
        pending: Vec::new(),
        stats: BatchStats {
            total: jobs.len(),
            ..BatchStats::default()
        },
        bar: None,
        code: crate::code_identity(),
        limits: serde_json::to_string(&opts.timeouts).unwrap_or_default(),
        previous: Default::default(),
    };
    // `--fresh` recomputes every verdict (and stores the new ones).
    let read_store = store.filter(|_| !ws.fresh());
    if let Some(store) = read_store {
        for (i, key) in keys.iter().enumerate() {
            let Ok(Some(stored)) = store.get_verify(key) else {
                continue;
            };
            let Ok(report) = serde_json::from_str::<Report>(&stored.report) else {
                continue;
            };
            if stored.code != sink.code {
                if ws.trust_cache() {
                    sink.stats.trusted_stale += 1;
                } else {
                    sink.stats.stale += 1;
                    continue;
                }
            } else if stored.provisional || (report.is_transient() && stored.limits != sink.limits)
            {
                sink.stats.retried += 1;
                sink.previous.insert(i, stored);
                continue;
            }
            sink.results[i] = Some(report);
            sink.stats.cached += 1;
        }
    }
    let mut todo: Vec<usize> = (0..jobs.len())
        .filter(|i| sink.results[*i].is_none())
        .collect();
    // Longest first (by text size, a proxy for tool time): a long simulation started last would leave
    // the other cores idle at the end of the batch.
    let size = |j: &Job| {
        j.code.len()
            + j.testbench.as_ref().map_or(0, String::len)
            + j.reference.as_ref().map_or(0, String::len)
    };
    todo.sort_by_key(|&i| std::cmp::Reverse(size(&jobs[i])));
    // On Slurm the driver shows the shards' progress instead.
    if matches!(executor, Executor::Local) {
        sink.bar = progress_bar(todo.len() as u64);
    }
    let outcome = match executor {
        Executor::Local => {
            run_local(jobs, &todo, opts, 0, &mut |i, r| sink.accept(i, r));
            Ok(())
        }
        Executor::Slurm(slurm) if !todo.is_empty() => {
            run_on_slurm(ws, jobs, &todo, &keys, opts, slurm, &mut sink).map(|run| {
                eprintln!("{}", run.summary());
                sink.stats.slurm = Some(run);
            })
        }
        Executor::Slurm(_) => Ok(()),
    };
    sink.flush();
    if let Some(b) = sink.bar.take() {
        b.finish_and_clear();
    }
    outcome?;
    let reports = sink
        .results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Report {
                sim_status: crate::SimStatus::Error,
                errors: vec!["cancelled by Ctrl-C before this row ran".into()],
                ..Report::default()
            })
        })
        .collect();
    Ok((reports, sink.stats))
}

/// Verifies `todo` (indices into `jobs`) on `workers` threads (0: one more than the cores, see
/// [`crate::scratch::workers_for`]), handing each
/// verdict to `on_result` on this thread as it finishes.
fn run_local(
    jobs: &[Job],
    todo: &[usize],
    opts: &VerifyOptions,
    workers: usize,
    on_result: &mut dyn FnMut(usize, Report),
) {
    let workers = if workers == 0 {
        crate::scratch::workers_for(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
    } else {
        workers
    };
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Report)>();
    std::thread::scope(|scope| {
        for _ in 0..workers.min(todo.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || loop {
                if rtlab_core::cancel_requested() {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = todo.get(k) else { break };
                if tx.send((i, verify_job(&jobs[i], opts))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        for (i, report) in rx {
            on_result(i, report);
        }
    });
}

/// What a Slurm worker needs besides its shard: the options, and the tool versions the cache keys
/// were made with (a node with other versions would give verdicts the keys do not describe).
#[derive(serde::Serialize, serde::Deserialize)]
struct ShardContext {
    options: VerifyOptions,
    tool_versions: std::collections::BTreeMap<String, Option<String>>,
}

fn driver_tool_versions() -> std::collections::BTreeMap<String, Option<String>> {
    tool_versions()
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Runs `todo` as a Slurm job array: each distinct row once, every finished shard merged into the
/// store in one transaction as it lands.
fn run_on_slurm(
    ws: &rtlab_core::Workspace,
    jobs: &[Job],
    todo: &[usize],
    keys: &[String],
    opts: &VerifyOptions,
    slurm: &rtlab_slurm::SlurmOptions,
    sink: &mut Sink,
) -> Result<rtlab_slurm::SlurmRun, VerifyError> {
    let mut rows_of: std::collections::HashMap<&str, Vec<usize>> = Default::default();
    let mut items = Vec::new();
    for &i in todo {
        let rows = rows_of.entry(keys[i].as_str()).or_default();
        if rows.is_empty() {
            let job = serde_json::to_value(&jobs[i])?;
            items.push((keys[i].clone(), job));
        }
        rows.push(i);
    }
    let context = ShardContext {
        options: opts.clone(),
        tool_versions: driver_tool_versions(),
    };
    let batch = rtlab_slurm::ShardedBatch {
        kind: "verify",
        context: serde_json::to_value(&context)?,
        items,
        batch_key: batch_key(keys),
        workspace: ws.dir(),
    };
    let mut bad: Option<VerifyError> = None;
    let run = rtlab_slurm::run(&batch, slurm, &mut |part| {
        for (key, value) in part {
            let Some(rows) = rows_of.get(key.as_str()) else {
                continue;
            };
            match serde_json::from_value::<Report>(value) {
                Ok(report) => {
                    for &i in rows {
                        if sink.results[i].is_none() {
                            sink.accept(i, report.clone());
                        }
                    }
                }
                Err(e) => {
                    bad.get_or_insert(VerifyError::BadVerdict {
                        key: key.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        sink.flush();
    })?;
    match bad {
        Some(e) => Err(e),
        None => Ok(run),
    }
}

/// The `verify` kind's shard runner, for `rtlab worker`: the shard's jobs on its `cpus`, one
/// worker more than them as on a local run.
pub fn run_shard(
    context: &serde_json::Value,
    items: Vec<serde_json::Value>,
    cpus: usize,
) -> Result<Vec<serde_json::Value>, VerifyError> {
    let context: ShardContext = serde_json::from_value(context.clone())
        .map_err(|e| VerifyError::Worker(format!("the job's verify options do not parse: {e}")))?;
    let here = driver_tool_versions();
    if here != context.tool_versions {
        return Err(VerifyError::Worker(format!(
            "this node's tools differ from the driver's: here {here:?}, the driver {:?}; install the same versions on every node (a verdict is cached under the tool versions)",
            context.tool_versions
        )));
    }
    let jobs: Vec<Job> = items
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| VerifyError::Worker(format!("a shard item is not a verify job: {e}")))?;
    let todo: Vec<usize> = (0..jobs.len()).collect();
    let mut results: Vec<Option<Report>> = vec![None; jobs.len()];
    let workers = crate::scratch::workers_for(cpus);
    run_local(&jobs, &todo, &context.options, workers, &mut |i, r| {
        results[i] = Some(r)
    });
    results
        .into_iter()
        .map(|r| {
            let r =
                r.ok_or_else(|| VerifyError::Worker("cancelled before every job ran".into()))?;
            Ok(serde_json::to_value(&r)?)
        })
        .collect()
}

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if len == 0 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    let style =
        indicatif::ProgressStyle::with_template("verify {bar:30} {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}
