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

mod cluster;
mod driver;
mod worker;

pub use driver::{run, ShardedBatch, SlurmRun};
pub use worker::{worker_main, ShardRunner};

use rhai::plugin::*;
use rhai::Map;

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

/// Slurm's array indices run from 0 to MaxArraySize - 1 (1001 by default).
const MAX_TASKS: i64 = 1000;

/// A Slurm name (partition, account): letters, digits, `_`, `-`, `.`, never a flag.
fn is_slurm_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl SlurmOptions {
    /// From `slurm(#{...})`'s map. Values are checked here, before any work: a wrong one is an error
    /// naming the key and what it must be. A relative `dir` resolves against `base_dir` (the
    /// script's directory).
    pub fn from_map(map: &Map, base_dir: &std::path::Path) -> Result<SlurmOptions, String> {
        let o = rtlab_core::options::Options::new("slurm", map, SLURM_KEYS)?;
        let mut s = SlurmOptions::default();
        let name = |key: &str| -> Result<Option<String>, String> {
            match o.string(key)? {
                Some(v) if !is_slurm_name(&v) => Err(format!(
                    "slurm: `{key}` must be a Slurm name (letters, digits, _ - .), not {v:?}"
                )),
                v => Ok(v),
            }
        };
        s.partition = name("partition")?;
        s.account = name("account")?;
        if let Some(t) = o.int("tasks")? {
            if !(1..=MAX_TASKS).contains(&t) {
                return Err(format!(
                    "slurm: `tasks` must be between 1 and {MAX_TASKS} (one array element per task), not {t}"
                ));
            }
            s.tasks = Some(t as usize);
        }
        if let Some(c) = o.int_at_least("cpus_per_task", 1)? {
            s.cpus_per_task = c as usize;
        }
        if let Some(m) = o.int_at_least("max_running", 1)? {
            s.max_running = Some(m as usize);
        }
        if let Some(r) = o.int_at_least("retries", 0)? {
            s.retries = r as usize;
        }
        if let Some(mem) = o.string("mem")? {
            let digits = mem.trim_end_matches(['K', 'M', 'G', 'T']);
            if digits.is_empty()
                || !digits.chars().all(|c| c.is_ascii_digit())
                || mem.len() - digits.len() > 1
            {
                return Err(format!(
                    "slurm: `mem` is memory per task as Slurm writes it (2G, 500M, 4096), not {mem:?}"
                ));
            }
            s.mem = Some(mem);
        }
        if let Some(time) = o.string("time")? {
            if time.is_empty()
                || !time
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ':' || c == '-')
                || time.starts_with('-')
            {
                return Err(format!(
                    "slurm: `time` is a Slurm time limit (30, 1:30:00, 2-00), not {time:?}"
                ));
            }
            s.time = Some(time);
        }
        if let Some(extra) = o.strings("extra")? {
            if let Some(bad) = extra.iter().find(|e| !e.starts_with("--") || e.len() < 3) {
                return Err(format!(
                    "slurm: each of `extra` is one sbatch option written `--name=value`, not {bad:?}"
                ));
            }
            s.extra = extra;
        }
        s.dir = o
            .string("dir")?
            .map(|d| rtlab_core::workspace::resolve_against(base_dir, &d));
        Ok(s)
    }

    /// From the shell's `--slurm tasks=64,partition=cpu,mem=2G`: the same keys as `slurm(#{...})`,
    /// checked the same way (`extra` may repeat). A relative `dir` resolves against `base_dir`.
    pub fn from_spec(spec: &str, base_dir: &std::path::Path) -> Result<SlurmOptions, String> {
        let mut map = Map::new();
        let mut extra = rhai::Array::new();
        for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!("--slurm: {pair:?} is not KEY=VALUE (for example tasks=64,partition=cpu)")
            })?;
            let value: Dynamic = match key {
                "tasks" | "cpus_per_task" | "max_running" | "retries" => value
                    .parse::<i64>()
                    .map_err(|_| format!("--slurm: {key} must be a whole number, not {value:?}"))?
                    .into(),
                "extra" => {
                    extra.push(value.into());
                    continue;
                }
                _ => value.into(),
            };
            map.insert(key.into(), value);
        }
        if !extra.is_empty() {
            map.insert("extra".into(), extra.into());
        }
        Self::from_map(&map, base_dir).map_err(|e| e.replacen("slurm:", "--slurm:", 1))
    }

    /// The map `from_map` reads back (how the notebook caches an executor).
    pub fn to_map(&self) -> Map {
        let mut m = Map::new();
        let mut put = |k: &str, v: Dynamic| {
            m.insert(k.into(), v);
        };
        if let Some(p) = &self.partition {
            put("partition", p.clone().into());
        }
        if let Some(t) = self.tasks {
            put("tasks", (t as i64).into());
        }
        put("cpus_per_task", (self.cpus_per_task as i64).into());
        for (k, v) in [
            ("mem", &self.mem),
            ("time", &self.time),
            ("account", &self.account),
        ] {
            if let Some(v) = v {
                put(k, v.clone().into());
            }
        }
        if let Some(r) = self.max_running {
            put("max_running", (r as i64).into());
        }
        put("retries", (self.retries as i64).into());
        if !self.extra.is_empty() {
            put(
                "extra",
                Dynamic::from_array(self.extra.iter().map(|e| e.clone().into()).collect()),
            );
        }
        if let Some(d) = &self.dir {
            put("dir", d.display().to_string().into());
        }
        m
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

impl Executor {
    /// The `executor` option of `df.verify`, `benchmark` and `a7_testbench`: `slurm(#{...})` or
    /// `"local"`.
    pub fn from_options(o: &rtlab_core::options::Options) -> Result<Executor, String> {
        if let Some(v) = o.get("executor") {
            if v.is_string() && v.to_string() == "local" {
                return Ok(Executor::Local);
            }
        }
        Ok(
            o.custom::<SlurmOptions>("executor", "slurm(#{...}) or \"local\"")?
                .map_or(Executor::Local, Executor::Slurm),
        )
    }
}

pub fn register(module: &mut Module) {
    module.set_custom_type::<SlurmOptions>("SlurmExecutor");
    FuncRegistration::new("to_string").set_into_module(module, |s: &mut SlurmOptions| s.describe());
    FuncRegistration::new("to_debug").set_into_module(module, |s: &mut SlurmOptions| s.describe());
    rtlab_core::values::register(rtlab_core::values::RichType {
        tag: "slurm",
        is: |v| v.is::<SlurmOptions>(),
        text: |v| {
            v.read_lock::<SlurmOptions>()
                .map(|s| s.describe())
                .unwrap_or_default()
        },
        html: None,
        // An executor is its options: the same map rebuilds it.
        persist: Some(rtlab_core::values::Persist {
            save: |v, nested| {
                let options = v
                    .read_lock::<SlurmOptions>()
                    .ok_or("an executor that is locked")?
                    .to_map();
                let mut fields = serde_json::Map::new();
                fields.insert("options".into(), nested(&rhai::Dynamic::from_map(options))?);
                Ok(fields)
            },
            load: |fields, nested| {
                let options = nested(
                    fields
                        .get("options")
                        .ok_or("slurm executor without options")?,
                )?;
                let map = options
                    .try_cast::<Map>()
                    .ok_or("slurm executor options are not a map")?;
                // `to_map` saved `dir` resolved (absolute), so no base directory is needed.
                Ok(rhai::Dynamic::from(SlurmOptions::from_map(
                    &map,
                    std::path::Path::new("/"),
                )?))
            },
        }),
    });
    combine_with_exported_module!(module, "slurm_functions", slurm_functions);
}

#[export_module]
mod slurm_functions {
    use super::*;

    /// An executor that runs a batch as a Slurm job array, for the `executor` option of `df.verify`,
    /// `benchmark` and `a7_testbench`. Options: `partition`, `tasks` (array elements, one shard each;
    /// default one per 64 rows, at most 32), `cpus_per_task` (default 1), `mem` ("2G"), `time`
    /// ("00:30:00"), `account`, `max_running` (the array's throttle), `retries` (resubmissions of a
    /// failed or cancelled element, default 2), `extra` (more sbatch options, `["--qos=high"]`) and
    /// `dir` (job directories, default `.rtlab/slurm` in the workspace: it must be on a filesystem the
    /// nodes share). The results go to the workspace store as shards finish; a rerun after the
    /// driver died reattaches to the job. `.ci/start-slurm` starts a one-node cluster to try it.
    ///
    /// ```rhai
    /// let ex = slurm(#{partition: "cpu", tasks: 4, retries: 1});
    /// assert_eq(`${ex}`, "slurm(#{partition: \"cpu\", tasks: 4, cpus_per_task: 1, retries: 1})");
    /// // df.verify(#{code: "output", executor: ex}) runs the rows on the cluster.
    /// ```
    #[rhai_fn(name = "slurm", return_raw)]
    pub fn slurm_with(
        ctx: NativeCallContext,
        options: Map,
    ) -> Result<SlurmOptions, Box<EvalAltResult>> {
        let base = rtlab_core::Workspace::of(&ctx).base_dir();
        Ok(SlurmOptions::from_map(&options, &base)?)
    }

    /// `slurm(#{})`: the cluster's default partition, one task per 64 rows (at most 32), 2 retries.
    #[rhai_fn(name = "slurm")]
    pub fn slurm_default() -> SlurmOptions {
        SlurmOptions::default()
    }
}

rhai::def_package! {
    /// Running batches on Slurm: `slurm(#{...})`, the executor `df.verify`, `benchmark` and
    /// `a7_testbench` take.
    pub SlurmPackage(module) {
        register(module);
    }
}
