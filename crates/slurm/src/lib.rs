//! Running a batch on a Slurm cluster: `df.verify(#{executor: slurm(#{tasks: 64})})`.
//!
//! The batch's uncached rows are cut into shards under a job directory in the workspace; one
//! `sbatch --array` runs this same rtlab binary as a worker per shard (`rtlab worker DIR K`), and each
//! worker writes its results as one part file, atomically. The driver (the rtlab that called
//! `verify`) follows the job with `squeue` and `scontrol`, resubmits failed array elements up to
//! `retries` times, and merges each finished part into the workspace store as it lands, so SQLite
//! never goes near the nodes or a network filesystem. The job directory is named by the batch's key
//! and records the Slurm job ids: a rerun after the driver died reattaches to the running job, or
//! collects what finished, and never runs a finished shard again.
//!
//! This module knows nothing of Verilog: a batch is a kind (`"verify"`), a JSON context and JSON
//! items, each with its cache key. `verify::batch` is its one user today; the CLI's `worker`
//! command dispatches a shard back to it by kind.

/// The identity of this crate's code (the hash of its sources and `Cargo.lock`): every result the
/// Slurm executor caches is keyed on it, so a changed build never serves an old answer.
pub fn code_identity() -> String {
    rtlab_core::provenance::code_identity("Slurm executor", env!("RTLAB_CODE_IDENTITY"))
}

use rtlab_core::OptionError;

mod cluster;
mod driver;
mod error;
mod worker;

pub use driver::{run, ShardedBatch, SlurmRun};
pub use error::SlurmError;
pub use worker::{worker_main, ShardError, ShardRunner};

mod api;

pub use api::{executor_option, rich_types, SlurmPackage};

/// How a batch runs on Slurm: `slurm(#{partition, tasks, cpus_per_task, mem, time, account,
/// max_running, retries, extra, dir})`.
#[derive(Debug, Clone, PartialEq)]
pub struct SlurmOptions {
    /// The partition (`--partition`); None: the cluster's default.
    pub partition: Option<String>,
    /// Array tasks, one shard each; None: one per 64 rows, at most 32.
    pub tasks: Option<usize>,
    /// CPUs per task (`--cpus-per-task`); the worker verifies that many rows at once.
    pub cpus_per_task: usize,
    /// Memory per task (`--mem`, as Slurm writes it: 2G, 500M).
    pub mem: Option<String>,
    /// Time limit per task (`--time`: MM, HH:MM:SS, D-HH).
    pub time: Option<String>,
    pub account: Option<String>,
    /// At most this many tasks at once (the array's `%N` throttle).
    pub max_running: Option<usize>,
    /// Resubmissions of a failed, cancelled or lost array element before the batch fails.
    pub retries: usize,
    /// More `sbatch` arguments, each a `--flag[=value]`.
    pub extra: Vec<String>,
    /// Where job directories go (default `.rtlab/slurm` in the workspace); must be on a filesystem
    /// the nodes share.
    pub dir: Option<std::path::PathBuf>,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            partition: None,
            tasks: None,
            cpus_per_task: 1,
            mem: None,
            time: None,
            account: None,
            max_running: None,
            retries: 2,
            extra: Vec::new(),
            dir: None,
        }
    }
}

/// The keys `slurm(#{...})` takes.
pub const SLURM_KEYS: &[&str] = &[
    "partition",
    "tasks",
    "cpus_per_task",
    "mem",
    "time",
    "account",
    "max_running",
    "retries",
    "extra",
    "dir",
];

/// The keys whose values are whole numbers (the rest are texts, and `extra` a list of texts): what
/// both readers, the script's map and the shell's `--slurm`, parse them as.
pub(crate) const INT_KEYS: &[&str] = &["tasks", "cpus_per_task", "max_running", "retries"];

/// Slurm's array indices run from 0 to MaxArraySize - 1 (1001 by default).
const MAX_TASKS: i64 = 1000;

/// A Slurm name (partition, account): letters, digits, `_`, `-`, `.`, never a flag.
fn is_slurm_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// One option's value as the user gave it, before it is checked: from a script's map (read by
/// [`api`]'s option reader, which checks the type) or from the CLI's `--slurm KEY=VALUE,...`.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    Int(i64),
    Text(String),
    Texts(Vec<String>),
}

impl SlurmOptions {
    /// Checks one option's value and sets it: a wrong one is an error naming `function` (`slurm` or
    /// `--slurm`), the key and what it must be. A relative `dir` resolves against `base_dir` (the
    /// script's directory, or the shell's).
    pub fn set(
        &mut self,
        function: &str,
        key: &str,
        value: OptionValue,
        base_dir: &std::path::Path,
    ) -> Result<(), OptionError> {
        use OptionValue::{Int, Text, Texts};
        let at_least = |v: i64, min: i64| -> Result<usize, OptionError> {
            if v < min {
                Err(OptionError::TooSmall {
                    function: function.to_string(),
                    key: key.to_string(),
                    min,
                    value: v,
                })
            } else {
                Ok(v as usize)
            }
        };
        let rule = |rule: String| OptionError::Rule {
            function: function.to_string(),
            rule,
        };
        match (key, value) {
            ("partition" | "account", Text(v)) => {
                if !is_slurm_name(&v) {
                    return Err(rule(format!(
                        "`{key}` must be a Slurm name (letters, digits, _ - .), not {v:?}"
                    )));
                }
                if key == "partition" {
                    self.partition = Some(v);
                } else {
                    self.account = Some(v);
                }
            }
            ("tasks", Int(t)) => {
                if !(1..=MAX_TASKS).contains(&t) {
                    return Err(rule(format!(
                        "`tasks` must be between 1 and {MAX_TASKS} (one array element per task), not {t}"
                    )));
                }
                self.tasks = Some(t as usize);
            }
            ("cpus_per_task", Int(c)) => self.cpus_per_task = at_least(c, 1)?,
            ("max_running", Int(m)) => self.max_running = Some(at_least(m, 1)?),
            ("retries", Int(r)) => self.retries = at_least(r, 0)?,
            ("mem", Text(mem)) => {
                let digits = mem.trim_end_matches(['K', 'M', 'G', 'T']);
                if digits.is_empty()
                    || !digits.chars().all(|c| c.is_ascii_digit())
                    || mem.len() - digits.len() > 1
                {
                    return Err(rule(format!(
                        "`mem` is memory per task as Slurm writes it (2G, 500M, 4096), not {mem:?}"
                    )));
                }
                self.mem = Some(mem);
            }
            ("time", Text(time)) => {
                if time.is_empty()
                    || !time
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
                    || time.starts_with('-')
                {
                    return Err(rule(format!(
                        "`time` is a Slurm time limit (30, 1:30:00, 2-00), not {time:?}"
                    )));
                }
                self.time = Some(time);
            }
            ("extra", Texts(extra)) => {
                if let Some(bad) = extra.iter().find(|e| !e.starts_with("--") || e.len() < 3) {
                    return Err(rule(format!(
                        "each of `extra` is one sbatch option written `--name=value`, not {bad:?}"
                    )));
                }
                self.extra = extra;
            }
            ("dir", Text(d)) => {
                self.dir = Some(rtlab_core::workspace::resolve_against(base_dir, &d))
            }
            (key, value) if SLURM_KEYS.contains(&key) => {
                return Err(rule(format!("`{key}` cannot be {value:?}")))
            }
            (key, _) => {
                let mut valid = SLURM_KEYS.to_vec();
                valid.sort_unstable();
                return Err(OptionError::UnknownKeys {
                    function: function.to_string(),
                    unknown: vec![key.to_string()],
                    valid: valid.iter().map(|k| k.to_string()).collect(),
                });
            }
        }
        Ok(())
    }

    /// From the shell's `--slurm tasks=64,partition=cpu,mem=2G`: the same keys as `slurm(#{...})`,
    /// checked the same way (`extra` may repeat). A relative `dir` resolves against `base_dir`.
    pub fn from_spec(spec: &str, base_dir: &std::path::Path) -> Result<SlurmOptions, OptionError> {
        let mut s = SlurmOptions::default();
        let mut extra = Vec::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| OptionError::Rule {
                function: "--slurm".into(),
                rule: format!("{pair:?} is not KEY=VALUE (for example tasks=64,partition=cpu)"),
            })?;
            let value = if INT_KEYS.contains(&key) {
                OptionValue::Int(value.parse::<i64>().map_err(|_| OptionError::Rule {
                    function: "--slurm".into(),
                    rule: format!("{key} must be a whole number, not {value:?}"),
                })?)
            } else if key == "extra" {
                extra.push(value.to_string());
                continue;
            } else {
                OptionValue::Text(value.to_string())
            };
            s.set("--slurm", key, value, base_dir)?;
        }
        if !extra.is_empty() {
            s.set("--slurm", "extra", OptionValue::Texts(extra), base_dir)?;
        }
        Ok(s)
    }

    /// One line, for display and logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.partition {
            parts.push(format!("partition: {p:?}"));
        }
        match self.tasks {
            Some(t) => parts.push(format!("tasks: {t}")),
            None => parts.push("tasks: auto".into()),
        }
        parts.push(format!("cpus_per_task: {}", self.cpus_per_task));
        for (k, v) in [
            ("mem", &self.mem),
            ("time", &self.time),
            ("account", &self.account),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}: {v:?}"));
            }
        }
        if let Some(m) = self.max_running {
            parts.push(format!("max_running: {m}"));
        }
        parts.push(format!("retries: {}", self.retries));
        if !self.extra.is_empty() {
            parts.push(format!("extra: {:?}", self.extra));
        }
        format!("slurm(#{{{}}})", parts.join(", "))
    }
}

/// Where a batch runs: here, on every core, or as a Slurm job array.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Executor {
    #[default]
    Local,
    Slurm(SlurmOptions),
}
