//! The Slurm commands rtlab runs (`sinfo`, `sbatch`, `squeue`, `scontrol`, `scancel`), each as a
//! typed call whose error says what Slurm said and what to do next.

use crate::SlurmError;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

/// How to get a cluster when there is none.
pub(crate) const START_HINT: &str =
    "install Slurm's client commands (Debian: `apt-get install slurm-client`) \
     and point them at your cluster, or start a one-node cluster here with `bash .ci/start-slurm` \
     (from rtlab's repository; it needs root)";

fn run(program: &str, args: &[&str]) -> Result<Output, SlurmError> {
    Command::new(program).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            SlurmError::NotInstalled {
                program: program.to_string(),
            }
        } else {
            SlurmError::CannotRun {
                program: program.to_string(),
                source: e,
            }
        }
    })
}

fn command_failed(command: &str, out: &Output) -> SlurmError {
    SlurmError::Command {
        command: command.to_string(),
        stderr: stderr_of(out),
    }
}

fn stderr_of(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if text.is_empty() {
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        text
    }
}

/// The partitions the controller knows (`sinfo`), which also proves it answers.
pub fn partitions() -> Result<Vec<String>, SlurmError> {
    let out = run("sinfo", &["-h", "-o", "%P"])?;
    if !out.status.success() {
        return Err(SlurmError::NoController {
            stderr: stderr_of(&out),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        // The default partition is marked with a `*`.
        .map(|l| l.trim().trim_end_matches('*').to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The node names of a partition (the default one when None), as `sinfo` lists them.
pub fn nodes(partition: Option<&str>) -> Result<Vec<String>, SlurmError> {
    let mut args = vec!["-h", "-N", "-o", "%N"];
    if let Some(p) = partition {
        args.extend(["-p", p]);
    }
    let out = run("sinfo", &args)?;
    if !out.status.success() {
        return Err(command_failed("sinfo -N", &out));
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    names.dedup();
    Ok(names)
}

/// Submits `script` as an array job; returns its job id. A refusal carries Slurm's own message.
pub fn sbatch(args: &[String], script: &Path) -> Result<u64, SlurmError> {
    let mut all: Vec<&str> = vec!["--parsable"];
    all.extend(args.iter().map(String::as_str));
    let script = script.to_string_lossy();
    all.push(&script);
    let out = run("sbatch", &all)?;
    if !out.status.success() {
        return Err(SlurmError::SbatchRefused {
            stderr: stderr_of(&out),
        });
    }
    // `--parsable` prints `JOBID` or `JOBID;CLUSTER`.
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| SlurmError::Job(format!("sbatch printed {:?}, not a job id", text.trim())))
}

/// The array elements of `jobs` still in the queue, `"JOBID_TASK"` → state (PENDING, RUNNING, ...).
pub fn queued(jobs: &[u64]) -> Result<HashMap<String, String>, SlurmError> {
    if jobs.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<String> = jobs.iter().map(u64::to_string).collect();
    let ids = ids.join(",");
    let out = run("squeue", &["-h", "-r", "-j", &ids, "-o", "%i %T"])?;
    if !out.status.success() {
        let why = stderr_of(&out);
        // squeue refuses ids it no longer knows ("Invalid job id specified") once all have left.
        if why.contains("Invalid job id") {
            return Ok(HashMap::new());
        }
        return Err(SlurmError::Command {
            command: "squeue".into(),
            stderr: why,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, state) = l.trim().split_once(' ')?;
            Some((id.to_string(), state.trim().to_string()))
        })
        .collect())
}

/// How an array element that left the queue ended, from `scontrol show job`: its state (COMPLETED,
/// FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, ...) and exit code (`1:0`). None when the
/// controller has forgotten it (there is no accounting database to ask).
pub fn ended(job: u64, task: usize) -> Option<(String, String)> {
    let id = format!("{job}_{task}");
    let out = run("scontrol", &["-o", "show", "job", &id]).ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .map(str::to_string)
    };
    Some((field("JobState=")?, field("ExitCode=").unwrap_or_default()))
}

/// Cancels jobs (all their elements).
pub fn scancel(jobs: &[u64]) -> Result<(), SlurmError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = jobs.iter().map(u64::to_string).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let out = run("scancel", &refs)?;
    if !out.status.success() {
        return Err(command_failed(&format!("scancel {}", ids.join(" ")), &out));
    }
    Ok(())
}

/// The filesystem type of `dir` as `stat -f` names it (nfs, lustre, ext2/ext3, tmpfs, ...).
pub fn filesystem_type(dir: &Path) -> Option<String> {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
