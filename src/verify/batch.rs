//! Verifying many examples: every core busy, an indicatif progress bar (rate, ETA) on a terminal, and
//! results cached in the workspace store keyed by the hash of the code, testbench, reference, options
//! and tool versions, so re-verifying unchanged rows is near-instant. Results are stored as they
//! finish: an interrupted batch keeps what it did.

use super::{tool_versions, verify, Report, VerifyOptions};
use crate::store::Store;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// One example to verify.
#[derive(Debug, Clone, Default)]
pub struct Job {
    pub code: String,
    pub testbench: Option<String>,
    pub reference: Option<String>,
    pub top: Option<String>,
}

/// The cache key: everything that can change the verdict.
pub fn cache_key(job: &Job, opts: &VerifyOptions) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"rtlab-verify-v1\0");
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
    h.update(serde_json::to_string(&o).unwrap_or_default().as_bytes());
    h.update(format!("{:?}", tool_versions()).as_bytes());
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

/// Verifies every job, `workers` at a time (0: one per core). Results come back in job order.
/// Checks the chosen stages' tools first: a missing one is an error before any work.
pub fn verify_all(
    jobs: &[Job],
    opts: &VerifyOptions,
    store: Option<&Store>,
    workers: usize,
) -> Result<(Vec<Report>, BatchStats), String> {
    let simulates = opts.testbench.is_some()
        || opts.reference.is_some()
        || jobs
            .iter()
            .any(|j| j.testbench.is_some() || j.reference.is_some());
    opts.check_tools(simulates)?;
    Ok(verify_checked(jobs, opts, store, workers))
}

fn verify_checked(
    jobs: &[Job],
    opts: &VerifyOptions,
    store: Option<&Store>,
    workers: usize,
) -> (Vec<Report>, BatchStats) {
    let mut results: Vec<Option<Report>> = vec![None; jobs.len()];
    let keys: Vec<String> = jobs.iter().map(|j| cache_key(j, opts)).collect();
    let mut stats = BatchStats {
        total: jobs.len(),
        ..BatchStats::default()
    };
    // `--fresh` recomputes every verdict (and stores the new ones).
    let read_store = store.filter(|_| !crate::runtime_fns::fresh_requested());
    if let Some(store) = read_store {
        for (i, key) in keys.iter().enumerate() {
            if let Ok(Some(json)) = store.get_verify(key) {
                if let Ok(r) = serde_json::from_str::<Report>(&json) {
                    results[i] = Some(r);
                    stats.cached += 1;
                }
            }
        }
    }
    let mut todo: Vec<usize> = (0..jobs.len()).filter(|i| results[*i].is_none()).collect();
    // Longest first (by text size, a proxy for tool time): a long simulation started last would leave
    // the other cores idle at the end of the batch.
    let size = |j: &Job| {
        j.code.len()
            + j.testbench.as_ref().map_or(0, String::len)
            + j.reference.as_ref().map_or(0, String::len)
    };
    todo.sort_by_key(|&i| std::cmp::Reverse(size(&jobs[i])));
    let workers = if workers == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        workers
    };
    let bar = progress_bar(todo.len() as u64);
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Report)>();
    std::thread::scope(|scope| {
        for _ in 0..workers.min(todo.len().max(1)) {
            let tx = tx.clone();
            let (todo, next) = (&todo, &next);
            scope.spawn(move || loop {
                if crate::engine::cancel_requested() {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&i) = todo.get(k) else { break };
                let job = &jobs[i];
                let mut o = opts.clone();
                o.testbench = job.testbench.clone();
                o.reference = job.reference.clone();
                o.top = job.top.clone().or(o.top);
                if tx.send((i, verify(&job.code, &o))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        // Store as results arrive (one transaction per 64), so an interrupted batch keeps its work.
        // A failed write is counted and reported; it never stops the batch or loses what is saved.
        let mut pending: Vec<(usize, String)> = Vec::new();
        let mut not_stored = 0usize;
        let mut store_error: Option<String> = None;
        let mut flush = |pending: &mut Vec<(usize, String)>| {
            if let Some(store) = store {
                let written = store.transaction(|s| {
                    for (i, json) in pending.iter() {
                        s.put_verify(&keys[*i], json)?;
                    }
                    Ok(())
                });
                if let Err(e) = written {
                    not_stored += pending.len();
                    store_error.get_or_insert(e.to_string());
                }
            }
            pending.clear();
        };
        for (i, report) in rx {
            // A cancelled run is not a verdict: do not cache it.
            if !report
                .errors
                .iter()
                .any(|e| e.contains("cancelled by Ctrl-C"))
            {
                pending.push((i, serde_json::to_string(&report).unwrap_or_default()));
            }
            results[i] = Some(report);
            stats.verified += 1;
            if let Some(b) = &bar {
                b.inc(1);
            }
            if pending.len() >= 64 {
                flush(&mut pending);
            }
        }
        flush(&mut pending);
        stats.not_stored = not_stored;
        stats.store_error = store_error;
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let reports = results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Report {
                sim_status: "error".into(),
                errors: vec!["cancelled by Ctrl-C before this row ran".into()],
                ..Report::default()
            })
        })
        .collect();
    (reports, stats)
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
