//! `benchmark`'s Rhai side: its option map read into [`BenchOptions`] (a template given as a path is
//! read here, and noted as the cell's input), and a [`BenchRun`] as the map scripts read.

use crate::{BenchError, BenchOptions, BenchRun};
use rhai::{Dynamic, Map};
use rtlab_data::Frame;

/// The keys `benchmark` takes.
const BENCH_KEYS: &[&str] = &[
    "n",
    "temperature",
    "top_p",
    "k",
    "template",
    "name",
    "executor",
    "stop",
    "allow_overlap",
];

/// `benchmark`'s options; an unknown key or a value of the wrong type is an error naming it.
pub fn bench_options(
    ws: &rtlab_core::Workspace,
    options: &Map,
) -> Result<BenchOptions, BenchError> {
    let o = rtlab_core::options::Options::new("benchmark", options, BENCH_KEYS)?;
    Ok(BenchOptions {
        n: o.int_at_least("n", 1)?.map(|n| n as usize),
        temperature: o.float("temperature")?,
        top_p: o.float("top_p")?,
        k: o.ints("k")?,
        template: template_option(ws, options, "template")?,
        name: o.string("name")?,
        executor: rtlab_slurm::executor_option(&o)?,
        stop: o.stop_strings("stop")?,
        allow_overlap: o.bool("allow_overlap")?.unwrap_or(false),
    })
}

/// A prompt template option: a path to a file (resolved against the script and noted as an input
/// of the cell), or the text itself; None when absent.
pub fn template_option(
    ws: &rtlab_core::Workspace,
    options: &Map,
    key: &str,
) -> Result<Option<String>, BenchError> {
    match options.get(key).filter(|t| !t.is_unit()) {
        None => Ok(None),
        Some(t) if !t.is_string() => Err(BenchError::Testbench(format!(
            "option `{key}` must be a template: a path or the text itself (a string), not {t}"
        ))),
        Some(t) => {
            let t = t.to_string();
            let path = ws.resolve(&t);
            if !t.contains('\n') && path.is_file() {
                ws.note_input(&path);
                std::fs::read_to_string(&path).map(Some).map_err(|e| {
                    BenchError::Testbench(format!("cannot read {}: {e}", path.display()))
                })
            } else {
                Ok(Some(t))
            }
        }
    }
}

/// The run as scripts read it: `id`, `name`, `model`, `summary`, and frames `problems`,
/// `categories`, `samples`.
pub fn run_map(run: BenchRun) -> Map {
    let mut m = Map::new();
    m.insert("id".into(), Dynamic::from(run.id));
    m.insert("name".into(), run.name.into());
    m.insert("model".into(), run.model.into());
    m.insert(
        "summary".into(),
        rtlab_data::json_to_dynamic(serde_json::Value::Object(run.summary)),
    );
    m.insert("problems".into(), Dynamic::from(Frame::new(run.problems)));
    m.insert(
        "categories".into(),
        Dynamic::from(Frame::new(run.categories)),
    );
    m.insert("samples".into(), Dynamic::from(Frame::new(run.samples)));
    m
}
