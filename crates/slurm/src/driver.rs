//! The driver: cut a batch into shards, submit one job array, follow it, retry what failed, merge
//! what finished, and reattach to a job that an earlier, killed driver left running.
//!
//! A job directory holds:
//! - `job.json`: the batch's kind, key and context, the shard count, and every submission (Slurm job
//!   id and the shards it ran), so a rerun knows the job;
//! - `shards/K.json`: shard K's items, `[[key, item], ...]`;
//! - `parts/K.json`: shard K's results, `[[key, result], ...]`, written atomically by its worker;
//! - `runs/K.JOBID`: one file per time a worker started on shard K (what a test counts);
//! - `logs/JOBID_K.out|err`: each array element's stdout and stderr;
//! - `worker.sh`: the batch script (`rtlab worker DIR $SLURM_ARRAY_TASK_ID`).
//!
//! It is removed when every shard has been merged, and kept (with its logs) when a shard failed.

use super::{cluster, SlurmError, SlurmOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A batch to run on Slurm: the uncached work, keyed.
pub struct ShardedBatch {
    /// What the worker runs (`"verify"`); the CLI's `worker` command dispatches on it.
    pub kind: &'static str,
    /// Shared by every item (the verifier's options, the tool versions the keys were made with).
    pub context: Value,
    /// The work, one entry per distinct cache key.
    pub items: Vec<(String, Value)>,
    /// The whole batch's key (over every row, cached or not), which names the job directory: the
    /// same batch run again finds its job.
    pub batch_key: String,
    /// The workspace directory (`.rtlab`); job directories go under `slurm/` in it by default.
    pub workspace: PathBuf,
}

/// What a Slurm run did, for the closing line and the tests.
#[derive(Debug, Clone, Default)]
pub struct SlurmRun {
    pub job_ids: Vec<u64>,
    pub shards: usize,
    /// Times a worker started on a shard, retries and reattached runs included.
    pub task_runs: usize,
    /// Array elements resubmitted after they failed, were cancelled or were lost.
    pub resubmitted: usize,
    /// True when this driver found the job an earlier one had submitted.
    pub reattached: bool,
}

impl SlurmRun {
    pub fn summary(&self) -> String {
        let ids: Vec<String> = self.job_ids.iter().map(u64::to_string).collect();
        format!(
            "slurm: job {}{}: {} shards, {} task runs, {} resubmitted",
            ids.join(", "),
            if self.reattached { " (reattached)" } else { "" },
            self.shards,
            self.task_runs,
            self.resubmitted
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Submission {
    job_id: u64,
    shards: Vec<usize>,
}

/// `job.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct JobRecord {
    pub kind: String,
    pub batch_key: String,
    pub context: Value,
    pub shards: usize,
    submissions: Vec<Submission>,
}

/// How often the driver looks at the queue and the part files.
const POLL: Duration = Duration::from_millis(300);
/// How long a shard Slurm calls COMPLETED may go without its part file before the batch fails
/// (network filesystems show a new file late).
const PART_GRACE: Duration = Duration::from_secs(30);

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> SlurmError {
    SlurmError::JobFile {
        doing: what.to_string(),
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), SlurmError> {
    let bytes = serde_json::to_vec(value).map_err(|e| io_err("cannot encode", path, e))?;
    rtlab_core::workspace::write_atomic(path, &bytes).map_err(|e| io_err("cannot write", path, e))
}

/// Single-quoted for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `0-3,5,7-9`: Slurm's array index list.
fn index_list(shards: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < shards.len() {
        let mut j = i;
        while j + 1 < shards.len() && shards[j + 1] == shards[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            shards[i].to_string()
        } else {
            format!("{}-{}", shards[i], shards[j])
        });
        i = j + 1;
    }
    out.join(",")
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().split('.').next().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// The job directory must be readable by every node of the partition. A cluster of this machine
/// alone needs nothing; otherwise a directory on a local filesystem is refused before any work.
fn check_shared(dir: &Path, partition: Option<&str>) -> Result<(), SlurmError> {
    let nodes = cluster::nodes(partition)?;
    let here = this_host();
    if nodes.iter().all(|n| n == "localhost" || *n == here) {
        return Ok(());
    }
    let fs = cluster::filesystem_type(dir).unwrap_or_default();
    const LOCAL: &[&str] = &[
        "ext2/ext3",
        "xfs",
        "btrfs",
        "tmpfs",
        "overlayfs",
        "zfs",
        "ramfs",
        "f2fs",
        "vfat",
    ];
    if LOCAL.contains(&fs.as_str()) {
        return Err(SlurmError::Job(format!(
            "slurm: the job directory {} is on a local filesystem ({fs}), which the nodes of the partition ({}) cannot read; \
             put the workspace on a shared filesystem (NFS, Lustre, GPFS, BeeGFS, CephFS) with RTLAB_HOME, or pass slurm(#{{dir: \"/shared/...\"}})",
            dir.display(),
            nodes.join(", ")
        )));
    }
    Ok(())
}

/// The batch's job directory under the Slurm root (`dir`, or `.rtlab/slurm`), named by the batch's
/// key, after checking that the cluster answers, the partition exists and the root is shared.
fn job_dir(batch: &ShardedBatch, opts: &SlurmOptions) -> Result<PathBuf, SlurmError> {
    // The cluster answers and the partition exists: checked before anything is written.
    let partitions = cluster::partitions()?;
    if let Some(p) = &opts.partition {
        if !partitions.contains(p) {
            return Err(SlurmError::Job(format!(
                "slurm: unknown partition {p:?}; this cluster has: {}",
                partitions.join(", ")
            )));
        }
    }
    let root = opts
        .dir
        .clone()
        .unwrap_or_else(|| batch.workspace.join("slurm"));
    std::fs::create_dir_all(&root).map_err(|e| io_err("cannot create", &root, e))?;
    check_shared(&root, opts.partition.as_deref())?;
    Ok(root.join(format!(
        "{}-{}",
        batch.kind,
        &batch.batch_key[..16.min(batch.batch_key.len())]
    )))
}

/// Runs the batch on Slurm; `on_results` gets each finished shard's `(key, result)` pairs as it lands.
/// Returns when every shard has been merged, or with an error naming each shard that failed after
/// its retries (the others' results have been passed on already).
pub fn run(
    batch: &ShardedBatch,
    opts: &SlurmOptions,
    on_results: &mut dyn FnMut(Vec<(String, Value)>),
) -> Result<SlurmRun, SlurmError> {
    let dir = job_dir(batch, opts)?;
    let (mut job, reattached) = match reattach(&dir, batch)? {
        Some(job) => (job, true),
        None => (create(&dir, batch, opts)?, false),
    };
    let mut follow = Follow::new(&dir, opts, &job);
    if reattached {
        let done = (0..job.shards)
            .filter(|k| dir.join(format!("parts/{k}.json")).exists())
            .count();
        let ids = joined(&job_ids(&job));
        let (shown, shards) = (dir.display(), job.shards);
        eprintln!("slurm: reattached to job {ids} in {shown} ({done} of {shards} shards finished)");
    }
    if job.submissions.is_empty() {
        let all: Vec<usize> = (0..job.shards).collect();
        follow.submit(&mut job, &all)?;
    }
    follow.follow(&mut job, on_results)?;

    let run = SlurmRun {
        job_ids: job_ids(&job),
        shards: job.shards,
        task_runs: std::fs::read_dir(dir.join("runs")).map_or(0, |d| d.count()),
        resubmitted: follow.resubmitted,
        reattached,
    };
    if !follow.failed.is_empty() {
        let done = follow.merged.iter().filter(|m| **m).count();
        return Err(SlurmError::Job(format!(
            "slurm: {} of {} shards failed ({done} finished and are saved; a rerun submits only the rest; the job directory {} keeps the logs):\n  {}",
            follow.failed.len(),
            job.shards,
            dir.display(),
            follow
                .failed
                .iter()
                .map(|(_, why)| why.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        )));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(run)
}

fn job_ids(job: &JobRecord) -> Vec<u64> {
    job.submissions.iter().map(|s| s.job_id).collect()
}

/// The job an earlier driver submitted for this batch, if its directory is there and covers the
/// batch's items. A directory that does not (the store was cleared in between, say) is cancelled
/// and replaced.
fn reattach(dir: &Path, batch: &ShardedBatch) -> Result<Option<JobRecord>, SlurmError> {
    let path = dir.join("job.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    let usable = serde_json::from_slice::<JobRecord>(&bytes)
        .ok()
        .filter(|job| job.kind == batch.kind && job.batch_key == batch.batch_key)
        .filter(|job| {
            let mut keys: HashSet<String> = HashSet::new();
            for k in 0..job.shards {
                let Ok(b) = std::fs::read(dir.join(format!("shards/{k}.json"))) else {
                    return false;
                };
                let Ok(items) = serde_json::from_slice::<Vec<(String, Value)>>(&b) else {
                    return false;
                };
                keys.extend(items.into_iter().map(|(key, _)| key));
            }
            batch.items.iter().all(|(key, _)| keys.contains(key))
        });
    match usable {
        Some(job) => Ok(Some(job)),
        None => {
            if let Ok(old) = serde_json::from_slice::<JobRecord>(&bytes) {
                let _ = cluster::scancel(&job_ids(&old));
            }
            std::fs::remove_dir_all(dir).map_err(|e| io_err("cannot replace", dir, e))?;
            Ok(None)
        }
    }
}

/// A new job directory: shards, the batch script and `job.json` (no submission yet).
fn create(dir: &Path, batch: &ShardedBatch, opts: &SlurmOptions) -> Result<JobRecord, SlurmError> {
    let n = batch.items.len().max(1);
    let shards = opts
        .tasks
        .unwrap_or_else(|| n.div_ceil(64).min(32))
        .clamp(1, n);
    for sub in ["shards", "parts", "runs", "logs"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| io_err("cannot create", &d, e))?;
    }
    // Round robin over items that come longest first: each shard gets a like share of the work.
    let mut per_shard: Vec<Vec<&(String, Value)>> = vec![Vec::new(); shards];
    for (i, item) in batch.items.iter().enumerate() {
        per_shard[i % shards].push(item);
    }
    for (k, items) in per_shard.iter().enumerate() {
        write_json(&dir.join(format!("shards/{k}.json")), items)?;
    }
    let exe = worker_binary()?;
    let script = format!(
        "#!/bin/sh\n# rtlab's worker for one shard of a Slurm job array (see src/slurm/).\nexec {} worker {} \"$SLURM_ARRAY_TASK_ID\"\n",
        sh_quote(&exe.to_string_lossy()),
        sh_quote(&dir.to_string_lossy())
    );
    let script_path = dir.join("worker.sh");
    std::fs::write(&script_path, script).map_err(|e| io_err("cannot write", &script_path, e))?;
    let job = JobRecord {
        kind: batch.kind.to_string(),
        batch_key: batch.batch_key.clone(),
        context: batch.context.clone(),
        shards,
        submissions: Vec::new(),
    };
    write_json(&dir.join("job.json"), &job)?;
    Ok(job)
}

/// The rtlab binary the array tasks run: `RTLAB_WORKER_BIN` when set (a cluster whose nodes see the
/// binary at another path; an embedding whose own executable is not rtlab), else this one.
fn worker_binary() -> Result<PathBuf, SlurmError> {
    match std::env::var_os("RTLAB_WORKER_BIN") {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            if bin.is_file() {
                Ok(bin)
            } else {
                Err(SlurmError::Job(format!(
                    "slurm: RTLAB_WORKER_BIN={} is not a file; point it at the rtlab binary the nodes run",
                    bin.display()
                )))
            }
        }
        None => std::env::current_exe().map_err(|e| {
            SlurmError::Job(format!(
                "slurm: cannot find the rtlab binary to run as the worker: {e}"
            ))
        }),
    }
}

/// The state of following one job.
struct Follow<'a> {
    dir: &'a Path,
    opts: &'a SlurmOptions,
    merged: Vec<bool>,
    /// Submissions of each shard so far.
    attempts: Vec<usize>,
    /// The job id of each shard's latest submission.
    current: Vec<Option<u64>>,
    /// Shards Slurm says COMPLETED whose part file has not appeared yet, and since when.
    completed_without_part: HashMap<usize, Instant>,
    /// Each shard that failed for good, with the line that says why.
    failed: Vec<(usize, String)>,
    resubmitted: usize,
}

impl<'a> Follow<'a> {
    fn is_failed(&self, k: usize) -> bool {
        self.failed.iter().any(|(shard, _)| *shard == k)
    }

    fn submit(&mut self, job: &mut JobRecord, shards: &[usize]) -> Result<(), SlurmError> {
        let mut args = vec![
            format!("--job-name=rtlab-{}", job.kind),
            format!(
                "--array={}{}",
                index_list(shards),
                self.opts
                    .max_running
                    .map_or(String::new(), |m| format!("%{m}"))
            ),
            format!("--chdir={}", self.dir.display()),
            format!("--output={}", self.dir.join("logs/%A_%a.out").display()),
            format!("--error={}", self.dir.join("logs/%A_%a.err").display()),
            format!("--cpus-per-task={}", self.opts.cpus_per_task),
        ];
        for (flag, value) in [
            ("partition", &self.opts.partition),
            ("mem", &self.opts.mem),
            ("time", &self.opts.time),
            ("account", &self.opts.account),
        ] {
            if let Some(v) = value {
                args.push(format!("--{flag}={v}"));
            }
        }
        args.extend(self.opts.extra.iter().cloned());
        let id = cluster::sbatch(&args, &self.dir.join("worker.sh"))?;
        job.submissions.push(Submission {
            job_id: id,
            shards: shards.to_vec(),
        });
        write_json(&self.dir.join("job.json"), job)?;
        for &k in shards {
            self.attempts[k] += 1;
            self.current[k] = Some(id);
        }
        Ok(())
    }

    /// Merges the part files that have appeared since the last look.
    fn merge_parts(&mut self, on_results: &mut dyn FnMut(Vec<(String, Value)>)) {
        for k in 0..self.merged.len() {
            if self.merged[k] {
                continue;
            }
            let path = self.dir.join(format!("parts/{k}.json"));
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match serde_json::from_slice::<Vec<(String, Value)>>(&bytes) {
                Ok(results) => {
                    on_results(results);
                    self.merged[k] = true;
                    self.completed_without_part.remove(&k);
                }
                // Written atomically, so this is a corrupt file, not a partial one: run it again.
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    }

    /// Follows the job's submissions so far: each shard's attempts and current job id.
    fn new(dir: &'a Path, opts: &'a SlurmOptions, job: &JobRecord) -> Follow<'a> {
        let mut follow = Follow {
            dir,
            opts,
            merged: vec![false; job.shards],
            attempts: vec![0; job.shards],
            current: vec![None; job.shards],
            completed_without_part: HashMap::new(),
            failed: Vec::new(),
            resubmitted: 0,
        };
        for s in &job.submissions {
            for &k in &s.shards {
                follow.attempts[k] += 1;
                follow.current[k] = Some(s.job_id);
            }
        }
        follow
    }

    fn follow(
        &mut self,
        job: &mut JobRecord,
        on_results: &mut dyn FnMut(Vec<(String, Value)>),
    ) -> Result<(), SlurmError> {
        let bar = progress_bar(job.shards as u64);
        let result = self.follow_inner(job, on_results, bar.as_ref());
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        result
    }

    /// One poll a `POLL` apart until every shard is merged or failed: merge the parts that landed,
    /// find the elements that left the queue without one, and resubmit or fail them.
    fn follow_inner(
        &mut self,
        job: &mut JobRecord,
        on_results: &mut dyn FnMut(Vec<(String, Value)>),
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<(), SlurmError> {
        loop {
            self.merge_parts(on_results);
            if let Some(b) = bar {
                b.set_position(self.merged.iter().filter(|m| **m).count() as u64);
            }
            let open: Vec<usize> = (0..job.shards)
                .filter(|&k| !self.merged[k] && !self.is_failed(k))
                .collect();
            if open.is_empty() {
                return Ok(());
            }
            let active: Vec<u64> = {
                let mut ids: Vec<u64> = open.iter().filter_map(|&k| self.current[k]).collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            if rtlab_core::cancel_requested() {
                return Err(SlurmError::Job(cancel_by_ctrl_c(&active)));
            }
            let Some(ended) = self.ended_without_part(&open, &active)? else {
                std::thread::sleep(POLL);
                continue;
            };
            // Every open shard cancelled at once: someone cancelled the job. Stop, do not resubmit.
            let cancelled = ended
                .iter()
                .filter(|(_, s, _)| s.starts_with("CANCELLED"))
                .count();
            if open.len() > 1 && cancelled == open.len() {
                return Err(SlurmError::Job(format!(
                    "slurm: job {} was cancelled outside rtlab (scancel?); {} of {} shards finished and are saved; rerun to submit the rest",
                    joined(&active),
                    self.merged.iter().filter(|m| **m).count(),
                    job.shards
                )));
            }
            let again: Vec<usize> = ended
                .into_iter()
                .filter_map(|(k, state, exit)| self.settle(k, &state, &exit))
                .collect();
            if !again.is_empty() {
                self.resubmitted += again.len();
                self.submit(job, &again)?;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The open shards that left the queue without a part file.
    ///
    /// None while an open shard is still COMPLETING: `scancel JOB` takes a job's pending elements
    /// out of the queue at once but its running ones only after they stop, so judging in between
    /// would see part of a cancelled job and resubmit it as if one element had been cancelled.
    fn ended_without_part(
        &self,
        open: &[usize],
        active: &[u64],
    ) -> Result<Option<Vec<EndedShard>>, SlurmError> {
        let queue = cluster::queued(active)?;
        if queue.values().any(|state| state == "COMPLETING") {
            return Ok(None);
        }
        let mut ended = Vec::new();
        for &k in open {
            let Some(id) = self.current[k] else { continue };
            if queue.contains_key(&format!("{id}_{k}")) {
                continue;
            }
            // Left the queue: its part may have landed since the merge.
            if self.dir.join(format!("parts/{k}.json")).exists() {
                continue;
            }
            let (state, exit) =
                cluster::ended(id, k).unwrap_or_else(|| ("UNKNOWN".into(), String::new()));
            ended.push((k, state, exit));
        }
        Ok(Some(ended))
    }

    /// What to do with a shard that ended without a part: `Some(k)` to resubmit it, or `None` when it
    /// is failed (with the reason recorded) or still within its grace period.
    fn settle(&mut self, k: usize, state: &str, exit: &str) -> Option<usize> {
        let id = self.current[k].unwrap_or_default();
        let stderr = self.dir.join(format!("logs/{id}_{k}.err"));
        let failure = match state {
            "COMPLETED" => {
                let since = *self
                    .completed_without_part
                    .entry(k)
                    .or_insert_with(Instant::now);
                if since.elapsed() <= PART_GRACE {
                    return None;
                }
                format!(
                    "shard {k} (job {id}_{k}) completed but wrote no part file in {} s: is {} on a filesystem the nodes share? its stderr: {}",
                    PART_GRACE.as_secs(),
                    self.dir.display(),
                    stderr.display()
                )
            }
            "TIMEOUT" => format!(
                "shard {k} (job {id}_{k}) timed out after the time limit {}: raise `time` or `tasks`; its stderr: {}",
                self.opts.time.as_deref().unwrap_or("(the partition's)"),
                stderr.display()
            ),
            _ if self.attempts[k] <= self.opts.retries => return Some(k),
            _ => {
                let hint = if state == "OUT_OF_MEMORY" {
                    " (raise `mem`)"
                } else {
                    ""
                };
                format!(
                    "shard {k} (job {id}_{k}) ended {state}{hint} with exit code {} after {} attempts; its stderr: {}{}",
                    if exit.is_empty() { "unknown" } else { exit },
                    self.attempts[k],
                    stderr.display(),
                    last_line(&stderr)
                        .map(|l| format!(" (last line: {l})"))
                        .unwrap_or_default()
                )
            }
        };
        self.failed.push((k, failure));
        None
    }
}

/// A shard that left the queue without a part file: `(shard, Slurm state, exit code)`.
type EndedShard = (usize, String, String);

fn joined(ids: &[u64]) -> String {
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Cancels the job's elements still running after Ctrl-C, and says what became of them.
fn cancel_by_ctrl_c(active: &[u64]) -> String {
    let cancelled = cluster::scancel(active);
    format!(
        "cancelled by Ctrl-C: Slurm job {} {}; finished shards are saved in the store, rerun to continue",
        joined(active),
        match cancelled {
            Ok(()) => "was cancelled with scancel".to_string(),
            Err(e) => format!("could not be cancelled ({e}): cancel it by hand"),
        }
    )
}

fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.chars().take(300).collect())
}

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if len == 0 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template(
        "slurm {bar:30} {pos}/{len} shards {elapsed} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_index_lists_compress_runs() {
        assert_eq!(index_list(&[0, 1, 2, 3]), "0-3");
        assert_eq!(index_list(&[0, 1, 2, 3, 5, 7, 8, 9]), "0-3,5,7-9");
        assert_eq!(index_list(&[4]), "4");
    }

    #[test]
    fn shell_quoting_survives_quotes_and_spaces() {
        assert_eq!(sh_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
