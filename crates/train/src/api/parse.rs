//! `train_lora`'s and `train_dpo`'s option maps, read once into a typed [`TrainRequest`] through
//! rtlab-core's option reader: every key checked, each error naming the function, the key and what
//! to pass instead.

use crate::dpo;
use crate::error::{bad, TrainError};
use crate::request::{Task, TrainRequest};
use crate::trainer::{Hyper, Schedule};
use rhai::{Dynamic, Map};
use rtlab_core::options::Options;
use rtlab_core::Workspace;
use rtlab_data::Frame;
use rtlab_model::checkpointing::Checkpointing;
use rtlab_model::examples::TooLong;
use rtlab_model::model::{LoraSpec, ALL_TARGETS};
use rtlab_model::{models, peft};
use std::path::PathBuf;

/// The options both trainers take; each adds its own (`SFT_OPTIONS`, `DPO_OPTIONS`).
const OPTIONS: [&str; 29] = [
    "eval_data",
    "eval_every",
    "keep",
    "base",
    "template",
    "r",
    "alpha",
    "dropout",
    "target_modules",
    "rslora",
    "lr",
    "epochs",
    "batch_size",
    "grad_accum",
    "max_len",
    "warmup",
    "schedule",
    "seed",
    "out",
    "device",
    "checkpoint_every",
    "resume",
    "fresh",
    "weight_decay",
    "max_grad_norm",
    "max_steps",
    "on_too_long",
    "quantized_base",
    "gradient_checkpointing",
];
const SFT_OPTIONS: [&str; 4] = ["data", "prompt_col", "response_col", "adapter"];
const DPO_OPTIONS: [&str; 5] = ["pairs", "beta", "loss", "reference", "adapter"];
/// The LoRA shape: with `train_dpo`'s `adapter`, the adapter's own.
const SHAPE_OPTIONS: [&str; 4] = ["r", "alpha", "target_modules", "rslora"];

// The trainers' options go through rtlab_core's one option reader; these add the default.
fn num(o: &Options, k: &str, default: f64) -> Result<f64, TrainError> {
    Ok(o.float(k).map_err(bad)?.unwrap_or(default))
}

fn count(o: &Options, k: &str, default: usize, min: usize) -> Result<usize, TrainError> {
    let v = o.whole_at_least(k, min as u64).map_err(bad)?;
    Ok(v.map_or(default, |v| v as usize))
}

fn text(o: &Options, k: &str) -> Result<Option<String>, TrainError> {
    o.string(k).map_err(bad)
}

fn flag(o: &Options, k: &str, default: bool) -> Result<bool, TrainError> {
    Ok(o.bool(k).map_err(bad)?.unwrap_or(default))
}

/// `gradient_checkpointing`: true (every layer recomputed), false (none), or "auto" (the default:
/// the top layers' graphs kept while they fit half the available memory).
fn checkpointing(o: &Options) -> Result<Checkpointing, TrainError> {
    const KEY: &str = "gradient_checkpointing";
    let Some(value) = o.get(KEY) else {
        return Ok(Checkpointing::auto());
    };
    if let Some(on) = value.clone().try_cast::<bool>() {
        return Ok(if on {
            Checkpointing::Every
        } else {
            Checkpointing::Never
        });
    }
    match value.clone().into_immutable_string().ok().as_deref() {
        Some("auto") => Ok(Checkpointing::auto()),
        _ => Err(bad(format!(
            "{KEY} {value:?}: use true (recompute every layer: the least memory), false (keep every \
             layer's activations: the fastest) or \"auto\" (the default: keep what fits in half the \
             available memory)"
        ))),
    }
}

/// The rows under option `key`: a DataFrame, or the path of a JSONL file (noted as an input).
fn frame_option(ws: &Workspace, o: &Options, key: &str) -> Result<Frame, TrainError> {
    frame_value(ws, key, o.get(key))
}

/// The rows `value` names: a DataFrame, or the path of a JSONL file (noted as an input).
pub(super) fn frame_value(
    ws: &Workspace,
    key: &str,
    value: Option<&Dynamic>,
) -> Result<Frame, TrainError> {
    match value {
        None => Err(bad(format!(
            "pass {key}: a DataFrame or the path of a JSONL file"
        ))),
        Some(d) if d.is::<Frame>() => Ok(d.clone_cast::<Frame>()),
        Some(d) if d.is_string() => {
            let path = ws.resolve_input(&d.to_string());
            let loaded = rtlab_data::load_jsonl(&path, &Default::default())
                .map_err(|e| bad(format!("{key}: {e}")))?;
            Ok(loaded.frame)
        }
        Some(d) => Err(bad(format!(
            "{key} must be a DataFrame or a path, got {}",
            d.type_name()
        ))),
    }
}

/// `train_lora`'s options.
pub(super) fn parse_sft(ws: &Workspace, o: &Map) -> Result<TrainRequest, TrainError> {
    let known: Vec<&str> = OPTIONS
        .iter()
        .chain(&SFT_OPTIONS)
        .chain(&SHAPE_OPTIONS)
        .copied()
        .collect();
    let o = &Options::new("train_lora", o, &known).map_err(bad)?;
    let task = Task::Sft {
        data: frame_option(ws, o, "data")?,
        prompt_col: text(o, "prompt_col")?.unwrap_or_else(|| "instruction".into()),
        response_col: text(o, "response_col")?.unwrap_or_else(|| "output".into()),
        adapter: start_adapter(ws, o)?,
    };
    parse_common(ws, o, task)
}

/// The `adapter` option: a finished run's adapter dir, whose shape the run keeps.
fn start_adapter(ws: &Workspace, o: &Options) -> Result<Option<PathBuf>, TrainError> {
    let Some(a) = text(o, "adapter")? else {
        return Ok(None);
    };
    if let Some(k) = SHAPE_OPTIONS.iter().find(|k| o.has(k)) {
        return Err(bad(format!(
            "{k} comes from the starting adapter {a:?}; drop it (the adapter's adapter_config.json says the shape)"
        )));
    }
    let dir = ws.resolve(&a);
    if !dir.join(peft::WEIGHTS_FILE).exists() {
        return Err(bad(format!(
            "adapter {}: no {} there; pass the `adapter` path a train_lora run returned",
            dir.display(),
            peft::WEIGHTS_FILE
        )));
    }
    Ok(Some(dir))
}

/// `train_dpo`'s options; beta, loss and reference are checked before the pairs are read.
pub(super) fn parse_dpo(ws: &Workspace, o: &Map) -> Result<TrainRequest, TrainError> {
    let known: Vec<&str> = OPTIONS
        .iter()
        .chain(&DPO_OPTIONS)
        .chain(&SHAPE_OPTIONS)
        .copied()
        .collect();
    let o = &Options::new("train_dpo", o, &known).map_err(bad)?;
    let beta = num(o, "beta", 0.1)?;
    if beta <= 0.0 || !beta.is_finite() {
        return Err(bad(format!(
            "beta must be > 0 (it scales the implicit reward; TRL's default is 0.1), got {beta}"
        )));
    }
    let settings = dpo::Settings {
        beta,
        loss: dpo::Loss::parse(text(o, "loss")?.as_deref().unwrap_or("sigmoid"))?,
        reference: dpo::Reference::parse(text(o, "reference")?.as_deref().unwrap_or("base"))?,
    };
    let adapter = start_adapter(ws, o)?;
    let task = Task::Dpo {
        pairs: frame_option(ws, o, "pairs")?,
        settings,
        adapter,
    };
    parse_common(ws, o, task)
}

/// The options both trainers share: base, LoRA shape, optimizer, lengths, device, output.
/// The LoRA shape and dropout: `r`, `alpha`, `dropout`, `target_modules`, `rslora`.
fn parse_lora_spec(o: &Options, task: &Task) -> Result<LoraSpec, TrainError> {
    let r = num(o, "r", 64.0)?;
    if r < 1.0 || r.fract() != 0.0 {
        return Err(bad(format!(
            "r (the LoRA rank) must be a whole number ≥ 1, got {r}"
        )));
    }
    let alpha = num(o, "alpha", 2.0 * r)?;
    if alpha <= 0.0 {
        return Err(bad(format!("alpha must be > 0, got {alpha}")));
    }
    // TRL's DPOTrainer turns dropout off (`disable_dropout`): with it on, the policy and the
    // reference differ before any step. SFT keeps PEFT's usual 0.05.
    let dropout_default = match task {
        Task::Sft { .. } => 0.05,
        Task::Dpo { .. } => 0.0,
    };
    let dropout = num(o, "dropout", dropout_default)?;
    if !(0.0..1.0).contains(&dropout) {
        return Err(bad(format!("dropout must be in [0, 1), got {dropout}")));
    }
    let target_modules: Vec<String> = match o.strings("target_modules").map_err(bad)? {
        None => ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
        Some(names) => {
            if let Some(n) = names.iter().find(|n| !ALL_TARGETS.contains(&n.as_str())) {
                return Err(bad(format!(
                    "unknown target module {n:?}; choose from {}",
                    ALL_TARGETS.join(", ")
                )));
            }
            if names.is_empty() {
                return Err(bad("target_modules is empty: nothing would be trained"));
            }
            names
        }
    };
    Ok(LoraSpec {
        r: r as usize,
        alpha,
        dropout,
        target_modules,
        use_rslora: flag(o, "rslora", false)?,
    })
}

/// Validation: `eval_data` (rows), `eval_every` (steps) and `keep` ("last" or "best").
fn parse_validation(
    ws: &Workspace,
    o: &Options,
) -> Result<(Option<Frame>, Option<usize>, bool), TrainError> {
    let eval_data = match o.get("eval_data") {
        None => None,
        Some(_) => Some(frame_option(ws, o, "eval_data")?),
    };
    let eval_every = o
        .whole_at_least("eval_every", 1)
        .map_err(bad)?
        .map(|n| n as usize);
    let keep_best = match text(o, "keep")?.as_deref().unwrap_or("last") {
        "last" => false,
        "best" => true,
        other => {
            return Err(bad(format!(
                "keep {other:?}: use \"last\" (the adapter after the last step) or \"best\" (the one with the lowest validation loss)"
            )))
        }
    };
    if eval_data.is_none() && (keep_best || eval_every.is_some()) {
        return Err(bad(format!(
            "{} needs eval_data: the validation rows to measure the adapter on",
            if keep_best {
                "keep: \"best\""
            } else {
                "eval_every"
            }
        )));
    }
    Ok((eval_data, eval_every, keep_best))
}

fn parse_common(ws: &Workspace, o: &Options, task: Task) -> Result<TrainRequest, TrainError> {
    let base =
        text(o, "base")?.ok_or_else(|| bad("pass base: a Hugging Face model dir, a .gguf file or a model name such as \"smollm2-135m\""))?;
    let spec = parse_lora_spec(o, &task)?;
    let lr = num(o, "lr", 2e-4)?;
    if lr <= 0.0 {
        return Err(bad(format!("lr must be > 0, got {lr}")));
    }
    let schedule = match text(o, "schedule")?.as_deref().unwrap_or("cosine") {
        "cosine" => Schedule::Cosine,
        "linear" => Schedule::Linear,
        "constant" => Schedule::Constant,
        other => {
            return Err(bad(format!(
                "schedule {other:?}: use \"cosine\", \"linear\" or \"constant\""
            )))
        }
    };
    let device = match text(o, "device")?.as_deref().unwrap_or("auto") {
        // On a machine without CUDA, the wgpu path is a software rasterizer at best (lavapipe runs the
        // step at about half the CPU's speed), so "auto" means the CPU unless CUDA is built in and
        // its driver and NVRTC load here.
        "auto" if rtlab_kernels::Gpu::cuda_available() => "cuda".to_string(),
        "auto" | "cpu" => "cpu".to_string(),
        d @ ("wgpu" | "cuda") => d.to_string(),
        other => {
            return Err(bad(format!(
                "device {other:?}: use \"auto\", \"cpu\", \"wgpu\" or \"cuda\""
            )))
        }
    };
    let on_too_long = match text(o, "on_too_long")?.as_deref().unwrap_or("error") {
        "error" => TooLong::Error,
        "skip" => TooLong::Skip,
        other => {
            return Err(bad(format!(
                "on_too_long {other:?}: use \"error\" or \"skip\""
            )))
        }
    };
    let max_steps = o
        .whole_at_least("max_steps", 1)
        .map_err(bad)?
        .map(|n| n as usize);
    let template = text(o, "template")?;
    if let Some(template) = template.as_ref().filter(|t| !t.contains("{prompt}")) {
        return Err(bad(format!(
            "the template {template:?} has no {{prompt}}: where should the prompt go?"
        )));
    }
    let (eval_data, eval_every, keep_best) = parse_validation(ws, o)?;
    let out = text(o, "out")?.ok_or_else(|| {
        bad("pass out: \"runs/my-adapter\" (where the adapter, checkpoints and curve go)")
    })?;
    Ok(TrainRequest {
        base: models::locate(&base, &ws.base_dir())?,
        task,
        template,
        spec,
        hyper: Hyper {
            lr,
            epochs: count(o, "epochs", 3, 1)?,
            batch_size: count(o, "batch_size", 4, 1)?,
            grad_accum: count(o, "grad_accum", 4, 1)?,
            warmup_steps: 0,
            schedule,
            weight_decay: num(o, "weight_decay", 0.0)?,
            max_grad_norm: num(o, "max_grad_norm", 1.0)?,
            seed: count(o, "seed", 42, 0)? as u64,
            checkpoint_every: count(o, "checkpoint_every", 0, 0)?,
            max_steps,
        },
        warmup: num(o, "warmup", 0.03)?,
        max_len: count(o, "max_len", 1024, 2)?,
        out: ws.resolve(&out),
        resume: flag(o, "resume", true)?,
        fresh: flag(o, "fresh", false)? || ws.fresh(),
        trust_cache: ws.trust_cache(),
        on_too_long,
        device,
        quantized_base: flag(o, "quantized_base", false)?,
        gradient_checkpointing: checkpointing(o)?,
        eval_data,
        eval_every,
        keep_best,
    })
}
