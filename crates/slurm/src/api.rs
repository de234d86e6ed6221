//! The Slurm executor's Rhai surface: `slurm(#{...})`, how an executor shows and persists, and the
//! `executor` option other crates read. Maps are read here into a typed [`SlurmOptions`] through
//! rtlab-core's option reader (which checks each value's type); [`SlurmOptions::set`] checks the
//! values, the same for a script's map and the CLI's `--slurm`.

use crate::{Executor, OptionValue, SlurmOptions, SLURM_KEYS};
use rhai::plugin::*;
use rhai::Map;

/// `slurm(#{...})`'s map as options, checked in a fixed order (the first wrong key is reported). A
/// relative `dir` resolves against `base_dir` (the script's directory).
pub(crate) fn slurm_options(
    map: &Map,
    base_dir: &std::path::Path,
) -> Result<SlurmOptions, rtlab_core::OptionError> {
    let o = rtlab_core::options::Options::new("slurm", map, SLURM_KEYS)?;
    let mut s = SlurmOptions::default();
    for key in ["partition", "account"] {
        if let Some(v) = o.string(key)? {
            s.set("slurm", key, OptionValue::Text(v), base_dir)?;
        }
    }
    for &key in crate::INT_KEYS {
        if let Some(v) = o.int(key)? {
            s.set("slurm", key, OptionValue::Int(v), base_dir)?;
        }
    }
    for key in ["mem", "time"] {
        if let Some(v) = o.string(key)? {
            s.set("slurm", key, OptionValue::Text(v), base_dir)?;
        }
    }
    if let Some(extra) = o.strings("extra")? {
        s.set("slurm", "extra", OptionValue::Texts(extra), base_dir)?;
    }
    if let Some(dir) = o.string("dir")? {
        s.set("slurm", "dir", OptionValue::Text(dir), base_dir)?;
    }
    Ok(s)
}

/// The map [`slurm_options`] reads back (how the notebook caches an executor).
fn options_map(s: &SlurmOptions) -> Map {
    let mut m = Map::new();
    let mut put = |k: &str, v: Dynamic| {
        m.insert(k.into(), v);
    };
    if let Some(p) = &s.partition {
        put("partition", p.clone().into());
    }
    if let Some(t) = s.tasks {
        put("tasks", (t as i64).into());
    }
    put("cpus_per_task", (s.cpus_per_task as i64).into());
    for (k, v) in [("mem", &s.mem), ("time", &s.time), ("account", &s.account)] {
        if let Some(v) = v {
            put(k, v.clone().into());
        }
    }
    if let Some(r) = s.max_running {
        put("max_running", (r as i64).into());
    }
    put("retries", (s.retries as i64).into());
    if !s.extra.is_empty() {
        put(
            "extra",
            Dynamic::from_array(s.extra.iter().map(|e| e.clone().into()).collect()),
        );
    }
    if let Some(d) = &s.dir {
        put("dir", d.display().to_string().into());
    }
    m
}

/// The `executor` option of `df.verify`, `benchmark` and `a7_testbench`: `slurm(#{...})` or
/// `"local"`.
pub fn executor_option(
    o: &rtlab_core::options::Options,
) -> Result<Executor, rtlab_core::OptionError> {
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

rtlab_core::script_error!(crate::SlurmError);

pub fn register(module: &mut Module) {
    module.set_custom_type::<SlurmOptions>("SlurmExecutor");
    FuncRegistration::new("to_string").set_into_module(module, |s: &mut SlurmOptions| s.describe());
    FuncRegistration::new("to_debug").set_into_module(module, |s: &mut SlurmOptions| s.describe());
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
        Ok(slurm_options(&options, &base)?)
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

/// How a Slurm executor shows and persists (an executor is its options: the same map rebuilds it).
pub fn rich_types() -> Vec<rtlab_core::values::RichType> {
    vec![rtlab_core::values::RichType {
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
                    .ok_or("an executor that is locked")?;
                let options = options_map(&options);
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
                Ok(rhai::Dynamic::from(slurm_options(
                    &map,
                    std::path::Path::new("/"),
                )?))
            },
        }),
    }]
}
