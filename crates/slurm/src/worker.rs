//! The worker: `rtlab worker JOB_DIR K`, one Slurm array element. It reads shard K, runs it with
//! the function registered for the job's kind, and writes `parts/K.json` atomically (a temp file,
//! then a rename), so the driver never reads half a result.

use super::driver::JobRecord;
use crate::SlurmError;
use serde_json::Value;
use std::path::Path;

/// What runs a shard's items for one kind of batch: `(context, items, cpus)` → one result per item,
/// in order.
pub type ShardRunner = fn(&Value, Vec<Value>, usize) -> Result<Vec<Value>, ShardError>;

/// A shard runner's error, in the runner's own type (the verifier's, say).
pub type ShardError = Box<dyn std::error::Error + Send + Sync>;

/// Runs shard `task` of the job in `dir`. `runner` maps the job's kind to its shard runner.
///
/// `RTLAB_SLURM_FAULT` injects faults for rtlab's own tests of the driver: `fail=K` makes shard K
/// exit with an error before any work; `slow=MS` sleeps MS milliseconds before each shard.
pub fn worker_main(
    dir: &Path,
    task: usize,
    runner: &dyn Fn(&str) -> Option<ShardRunner>,
) -> Result<usize, SlurmError> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this node".into());
    let job = read_job(dir, task, &host)?;
    // One marker per start, named by the Slurm job: how many times each shard ran.
    let slurm_job = std::env::var("SLURM_ARRAY_JOB_ID")
        .or_else(|_| std::env::var("SLURM_JOB_ID"))
        .unwrap_or_else(|_| "local".into());
    let marker = dir.join(format!("runs/{task}.{slurm_job}"));
    std::fs::write(&marker, &host).map_err(|e| {
        SlurmError::Worker(format!(
            "rtlab worker: cannot write {}: {e}",
            marker.display()
        ))
    })?;
    inject_test_faults(task)?;
    let run = runner(&job.kind).ok_or_else(|| {
        SlurmError::Worker(format!(
            "rtlab worker: this rtlab cannot run {:?} batches (is the worker binary older than the driver?)",
            job.kind
        ))
    })?;
    let shard_path = dir.join(format!("shards/{task}.json"));
    let shard: Vec<(String, Value)> = std::fs::read(&shard_path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| {
            SlurmError::Worker(format!(
                "rtlab worker: cannot read {}: {e}",
                shard_path.display()
            ))
        })?;
    let cpus = std::env::var("SLURM_CPUS_PER_TASK")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1usize);
    let (keys, items): (Vec<String>, Vec<Value>) = shard.into_iter().unzip();
    let results = run(&job.context, items, cpus).map_err(SlurmError::Shard)?;
    if results.len() != keys.len() {
        return Err(SlurmError::Worker(format!(
            "rtlab worker: shard {task} gave {} results for {} items",
            results.len(),
            keys.len()
        )));
    }
    if rtlab_core::cancel_requested() {
        return Err(SlurmError::Worker(format!(
            "rtlab worker: shard {task} was cancelled"
        )));
    }
    let part: Vec<(String, Value)> = keys.into_iter().zip(results).collect();
    let part_path = dir.join(format!("parts/{task}.json"));
    let bytes = serde_json::to_vec(&part).map_err(|e| {
        SlurmError::Worker(format!(
            "rtlab worker: cannot encode shard {task}'s results: {e}"
        ))
    })?;
    rtlab_core::workspace::write_atomic(&part_path, &bytes).map_err(|e| {
        SlurmError::Worker(format!(
            "rtlab worker: cannot write {}: {e}",
            part_path.display()
        ))
    })?;
    Ok(part.len())
}

/// The job record in `dir`, checked to have shard `task`.
fn read_job(dir: &Path, task: usize, host: &str) -> Result<JobRecord, SlurmError> {
    let job_path = dir.join("job.json");
    let bytes = std::fs::read(&job_path).map_err(|e| {
        SlurmError::Worker(format!(
            "rtlab worker on {host}: cannot read {} ({e}): the job directory must be on a filesystem every node shares",
            job_path.display()
        ))
    })?;
    let job: JobRecord = serde_json::from_slice(&bytes).map_err(|e| {
        SlurmError::Worker(format!(
            "rtlab worker: {} is not a job record: {e}",
            job_path.display()
        ))
    })?;
    if task >= job.shards {
        return Err(SlurmError::Worker(format!(
            "rtlab worker: task {task} is past the job's {} shards",
            job.shards
        )));
    }
    Ok(job)
}

/// `RTLAB_SLURM_FAULT` (rtlab's own tests of the driver): `fail=K` fails shard K before any work,
/// `slow=MS` sleeps before each shard, `linger=MS` takes MS milliseconds to stop after Slurm's
/// SIGTERM (as a worker flushing its files would), which keeps a cancelled job's running elements
/// COMPLETING while its pending ones are already gone.
fn inject_test_faults(task: usize) -> Result<(), SlurmError> {
    let Ok(fault) = std::env::var("RTLAB_SLURM_FAULT") else {
        return Ok(());
    };
    if let Some(ms) = fault
        .split(',')
        .find_map(|f| f.strip_prefix("linger=")?.parse::<u64>().ok())
    {
        linger_after_sigterm(ms);
    }
    for f in fault.split(',') {
        if f.strip_prefix("fail=")
            .and_then(|k| k.parse::<usize>().ok())
            == Some(task)
        {
            return Err(SlurmError::Worker(format!(
                "rtlab worker: shard {task} failed on purpose (RTLAB_SLURM_FAULT={fault})"
            )));
        }
        if let Some(ms) = f.strip_prefix("slow=").and_then(|m| m.parse::<u64>().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
    Ok(())
}

static LINGER_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Installs a SIGTERM handler that sleeps `ms` and then exits as SIGTERM would have (143).
fn linger_after_sigterm(ms: u64) {
    extern "C" fn on_sigterm(_: libc::c_int) {
        let ms = LINGER_MS.load(std::sync::atomic::Ordering::Relaxed);
        let pause = libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        };
        // Only async-signal-safe calls here: nanosleep and _exit.
        unsafe {
            libc::nanosleep(&pause, std::ptr::null_mut());
            libc::_exit(143);
        }
    }
    LINGER_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
    let handler: extern "C" fn(libc::c_int) = on_sigterm;
    // SAFETY: the handler makes only async-signal-safe calls.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}
