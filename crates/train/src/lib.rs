//! The LoRA trainer: `train_lora(#{...})` fine-tunes LoRA adapters of a Llama or Qwen2 model from a
//! Hugging Face directory on a DataFrame or JSONL file, writes them in PEFT format, and returns a run
//! record (loss curve, tokens/s, peak memory). `load_model` + `generate` run a model locally with a KV
//! cache, `merge` folds an adapter into the base weights, and `create_tiny_model` makes the seeded
//! tiny model the tests and CI train.
//!
//! The model runs on candle's CPU backend, in f32, written with differentiable ops only (see
//! [`model`]). The cubecl kernels of the GPU path live in the `rtlab-kernels` crate.
//!
//! Every input is checked before any weight is loaded: options, `config.json`, the tokenizer, the
//! dataset's columns, the prompt lengths. A run in `out` that finished with the same data, base and
//! options is returned from its `run.json` instead of retraining; an interrupted one resumes from its
//! newest checkpoint.

/// The identity of this crate's code (the hash of its sources and `Cargo.lock`): every result the
/// trainer caches is keyed on it, so a changed build never serves an old answer.
pub fn code_identity() -> String {
    rtlab_core::provenance::code_identity("trainer", env!("RTLAB_CODE_IDENTITY"))
}

pub mod config;
mod decode_attention;
pub mod dpo;
pub mod examples;
mod fused;
pub mod generate;
pub mod gguf;
pub mod gpu;
mod layers;
mod lora_linear;
pub mod model;
pub mod models;
mod output_head;
pub mod peft;
mod pool_gemm;
pub mod q4_1;
pub mod q8;
pub mod quantized;

rhai::def_package! {
    /// Training and local models: `train_lora`, `train_dpo`, `load_model`, `generate`, `perplexity`,
    /// merging and GGUF export.
    pub TrainPackage(module) {
        register(module);
    }
}

#[cfg(test)]
mod test_values;
#[cfg(test)]
mod tests;
pub mod tiny;
pub mod trainer;

use candle_core::{DType, Device};
use config::ModelConfig;
use examples::{TooLong, DEFAULT_TEMPLATE};
use generate::{GenOptions, LocalModel};
use model::{load_weights, CausalLm, LoraSpec, ALL_TARGETS};
use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};
use rtlab_core::options::Options;
use rtlab_core::Workspace;
use rtlab_data::hygiene::TRAINING_DATA_FILE;
use rtlab_data::Frame;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use trainer::{Hyper, RunRecord, Schedule};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad options, files or data: the message says which and what to do.
    #[error("{0}")]
    Input(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

impl From<TrainError> for Box<EvalAltResult> {
    fn from(e: TrainError) -> Self {
        e.to_string().into()
    }
}

fn bad(msg: impl Into<String>) -> TrainError {
    TrainError::Input(msg.into())
}

/// What a run trains the adapters to do, with the rows it learns from.
enum Task {
    /// `train_lora`: supervised fine-tuning on (prompt, response) rows.
    Sft {
        data: Frame,
        prompt_col: String,
        response_col: String,
        /// An adapter to go on training (rejection-sampling SFT on top of an SFT run).
        adapter: Option<PathBuf>,
    },
    /// `train_dpo`: preference optimization on (prompt, chosen, rejected) rows.
    Dpo {
        pairs: Frame,
        settings: dpo::Settings,
        /// The SFT adapter the policy starts from (and, with `reference: "adapter"`, is measured
        /// against).
        adapter: Option<PathBuf>,
    },
}

impl Task {
    /// The adapter the run starts from, when it does not start from fresh adapters.
    fn start_adapter(&self) -> Option<&Path> {
        match self {
            Task::Sft { adapter, .. } | Task::Dpo { adapter, .. } => adapter.as_deref(),
        }
    }
}

/// Every option `train_lora` and `train_dpo` take, with its parsed value.
struct TrainRequest {
    base: PathBuf,
    task: Task,
    /// The prompt template with `{prompt}`; None: the base's own chat template, else Alpaca's.
    template: Option<String>,
    spec: LoraSpec,
    hyper: Hyper,
    warmup: f64,
    max_len: usize,
    out: PathBuf,
    resume: bool,
    fresh: bool,
    /// `--trust-cache`: a finished run made by another trainer is served, not retrained.
    trust_cache: bool,
    on_too_long: TooLong,
    device: String,
    /// QLoRA: the frozen base stays in its GGUF quantization.
    quantized_base: bool,
    /// Recompute each layer's activations in the backward instead of keeping them all (CPU only;
    /// the gradients are the same numbers, so not part of the run's fingerprint).
    gradient_checkpointing: bool,
    /// Validation rows (the training rows' kind), how often to measure, which adapter to keep.
    eval_data: Option<Frame>,
    eval_every: Option<usize>,
    keep_best: bool,
}

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

/// The rows under option `key`: a DataFrame, or the path of a JSONL file (noted as an input).
fn frame_option(ws: &Workspace, o: &Options, key: &str) -> Result<Frame, TrainError> {
    frame_value(ws, key, o.get(key))
}

/// The rows `value` names: a DataFrame, or the path of a JSONL file (noted as an input).
fn frame_value(ws: &Workspace, key: &str, value: Option<&Dynamic>) -> Result<Frame, TrainError> {
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
fn parse_sft(ws: &Workspace, o: &Map) -> Result<TrainRequest, TrainError> {
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
fn parse_dpo(ws: &Workspace, o: &Map) -> Result<TrainRequest, TrainError> {
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
        gradient_checkpointing: flag(o, "gradient_checkpointing", true)?,
        eval_data,
        eval_every,
        keep_best,
    })
}

/// The (prompt, response) pairs of the named columns; an error lists the columns there are.
fn pairs_of(
    frame: &Frame,
    prompt_col: &str,
    response_col: &str,
) -> Result<Vec<(String, String)>, TrainError> {
    let column = |name: &str, role: &str| {
        rtlab_data::string_values(frame, name).map_err(|_| {
            let cols: Vec<String> = frame.df.get_column_names().iter().map(|c| c.to_string()).collect();
            bad(format!(
                "the dataset has no column {name:?} for the {role} (columns: {}); pass {role}_col: \"...\"",
                cols.join(", ")
            ))
        })
    };
    let prompts = column(prompt_col, "prompt")?;
    let responses = column(response_col, "response")?;
    Ok(prompts
        .into_iter()
        .zip(responses)
        .map(|(p, r)| (p.unwrap_or_default(), r.unwrap_or_default()))
        .collect())
}

/// The base model's files as a run reads them: a GGUF file (metadata now, tensors later) or a
/// Hugging Face directory.
struct Base {
    gguf: Option<gguf::GgufFile>,
    cfg: ModelConfig,
    tokenizer: tokenizers::Tokenizer,
    /// The base's own chat template (a GGUF's metadata, a Hugging Face dir's `tokenizer_config.json`),
    /// which renders the prompts unless `template` is given.
    chat: Option<generate::ChatTemplate>,
}

/// Opens the base's config and tokenizer (not its weights) and checks the quantized-base options.
fn open_base(ws: &Workspace, req: &TrainRequest) -> Result<Base, TrainError> {
    // A GGUF base (llama.cpp, Ollama) is one file: its metadata is read now, its tensors with the
    // weights, after every other input is checked.
    let gguf_base = if req.base.is_file() && gguf::is_gguf(&req.base) {
        Some(gguf::open(&req.base)?)
    } else {
        None
    };
    if req.quantized_base {
        if gguf_base.is_none() {
            return Err(bad(format!(
                "quantized_base needs a GGUF base (a .gguf file, a model name like smollm2-135m, or ollama:NAME); {} holds no quantized weights",
                req.base.display()
            )));
        }
        if req.device != "cpu" {
            return Err(bad(format!(
                "quantized_base runs on the CPU path; the GPU kernels take an f32 base (pass device: \"cpu\", not {:?})",
                req.device
            )));
        }
    }
    let (cfg, tokenizer) = match &gguf_base {
        Some(g) => {
            ws.note_input(&req.base);
            (g.cfg.clone(), g.tokenizer.clone())
        }
        None => {
            let cfg = ModelConfig::from_dir(&req.base)?;
            // A cached cell that trained reruns when the base's config or tokenizer changes (the
            // weights are not hashed on every restore; the run's own fingerprint covers their size
            // and mtime).
            ws.note_input(&req.base.join("config.json"));
            ws.note_input(&req.base.join("tokenizer.json"));
            (cfg, examples::load_tokenizer(&req.base)?)
        }
    };
    if req.max_len > cfg.max_position_embeddings {
        return Err(bad(format!(
            "max_len {} is longer than the model's max_position_embeddings ({})",
            req.max_len, cfg.max_position_embeddings
        )));
    }
    // The base's own chat template: a GGUF's metadata, or a Hugging Face dir's tokenizer_config.json.
    let chat = match &gguf_base {
        Some(g) => g
            .chat_template
            .clone()
            .map(|source| generate::ChatTemplate {
                source,
                bos_token: g.bos_token.clone().unwrap_or_default(),
                eos_token: g.eos_token.clone().unwrap_or_default(),
            }),
        None => {
            ws.note_input(&req.base.join("tokenizer_config.json"));
            generate::ChatTemplate::from_hf_dir(&req.base)?
        }
    };
    Ok(Base {
        gguf: gguf_base,
        cfg,
        tokenizer,
        chat,
    })
}

/// The tokenized rows a run learns from.
enum Rows {
    Sft(Vec<examples::Example>),
    Dpo(Vec<dpo::PairExample>),
}

impl Rows {
    fn len(&self) -> usize {
        match self {
            Rows::Sft(e) => e.len(),
            Rows::Dpo(p) => p.len(),
        }
    }

    /// Every token id and prompt length, in order, for the fingerprint.
    fn hash_into(&self, h: &mut blake3::Hasher) {
        let mut one = |e: &examples::Example| {
            h.update(&(e.prompt_len as u64).to_le_bytes());
            for id in &e.ids {
                h.update(&id.to_le_bytes());
            }
            h.update(b"|");
        };
        match self {
            Rows::Sft(examples) => examples.iter().for_each(&mut one),
            Rows::Dpo(pairs) => pairs.iter().for_each(|p| {
                one(&p.chosen);
                one(&p.rejected);
            }),
        }
    }
}

/// A preference pair's prompt, in TRL's standard format (text, put through the template) or its
/// conversational one (messages, put through the model's chat template).
enum PairPrompt {
    Text(String),
    Messages(Vec<(String, String)>),
}

/// One cell of a pairs frame: a string, or a list of `{role, content}` messages.
fn pair_cell(
    row: usize,
    column: &str,
    value: &rhai::Dynamic,
) -> Result<Result<String, Vec<(String, String)>>, TrainError> {
    if value.is_string() {
        return Ok(Ok(value.to_string()));
    }
    let Some(messages) = value.read_lock::<rhai::Array>().map(|a| a.clone()) else {
        return Err(bad(format!(
            "row {row}: {column} is {}, not a string or a list of {{role, content}} messages",
            value.type_name()
        )));
    };
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| {
                m.read_lock::<Map>()
                    .and_then(|m| m.get(k).filter(|v| v.is_string()).map(|v| v.to_string()))
                    .ok_or_else(|| {
                        bad(format!(
                            "row {row}: {column} message {i} has no string {k:?} (a message is #{{role: \"user\", content: \"...\"}})"
                        ))
                    })
            };
            Ok((field("role")?, field("content")?))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Err)
}

/// The pairs of TRL's formats: `prompt`, `chosen`, `rejected` as strings (standard), or as lists of
/// messages (conversational: the prompt's messages, then the assistant's reply on each side).
fn preference_rows(frame: &Frame) -> Result<Vec<(PairPrompt, String, String)>, TrainError> {
    let cols: Vec<String> = frame
        .df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    for name in ["prompt", "chosen", "rejected"] {
        if !cols.iter().any(|c| c == name) {
            return Err(bad(format!(
                "the pairs have no column {name:?} (columns: {}); train_dpo reads TRL's format: prompt, chosen, rejected (what preference_pairs returns)",
                cols.join(", ")
            )));
        }
    }
    let records = rtlab_data::to_records(frame).map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::with_capacity(records.len());
    for (row, record) in records.iter().enumerate() {
        let record = record
            .read_lock::<Map>()
            .map(|m| m.clone())
            .unwrap_or_default();
        let cell = |k: &str| pair_cell(row, k, record.get(k).unwrap_or(&rhai::Dynamic::UNIT));
        let prompt = match cell("prompt")? {
            Ok(text) => PairPrompt::Text(text),
            Err(messages) => PairPrompt::Messages(messages),
        };
        // A conversational answer is the assistant's message(s) of the completion.
        let answer = |k: &str| -> Result<String, TrainError> {
            Ok(match cell(k)? {
                Ok(text) => text,
                Err(messages) => messages
                    .into_iter()
                    .filter(|(role, _)| role == "assistant")
                    .map(|(_, content)| content)
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
        };
        rows.push((prompt, answer("chosen")?, answer("rejected")?));
    }
    let texts: Vec<(String, String, String)> = rows
        .iter()
        .map(|(_, c, r)| (String::new(), c.clone(), r.clone()))
        .collect();
    dpo::check_pairs(&texts)?;
    Ok(rows)
}

/// Tokenizes the task's rows (or, with `eval`, its validation rows) through the template; returns
/// them with the rows skipped as too long.
fn tokenize_rows(
    req: &TrainRequest,
    base: &Base,
    eos: u32,
    eval: Option<&Frame>,
) -> Result<(Rows, Vec<usize>), TrainError> {
    let what = if eval.is_some() {
        "eval_data"
    } else {
        "the dataset"
    };
    let named = |e: TrainError| match e {
        TrainError::Input(m) if eval.is_some() => bad(format!("eval_data: {m}")),
        e => e,
    };
    // Prompts are rendered here, as `load_model(...).generate` renders them: the template given,
    // else the base's chat template (so that a tuned model is trained on the prompts it is asked
    // with), else Alpaca's. The rendered text then goes through the identity template.
    let render = |prompt: &str| -> Result<String, TrainError> {
        match (&req.template, &base.chat) {
            (Some(t), _) => Ok(examples::apply_template(t, prompt)),
            (None, Some(chat)) => chat.render(prompt),
            (None, None) => Ok(examples::apply_template(DEFAULT_TEMPLATE, prompt)),
        }
    };
    let (rows, skipped) = match &req.task {
        Task::Sft {
            data,
            prompt_col,
            response_col,
            ..
        } => {
            let pairs = pairs_of(eval.unwrap_or(data), prompt_col, response_col)
                .map_err(named)?
                .into_iter()
                .map(|(p, r)| Ok((render(&p)?, r)))
                .collect::<Result<Vec<_>, TrainError>>()?;
            if pairs.is_empty() {
                return Err(bad(format!(
                    "{what} has no rows: nothing to train on (check the filter that made it)"
                )));
            }
            let (e, skipped) = examples::build(
                &base.tokenizer,
                &pairs,
                "{prompt}",
                req.max_len,
                eos,
                req.on_too_long,
            )?;
            (Rows::Sft(e), skipped)
        }
        Task::Dpo { pairs, .. } => {
            let rows = preference_rows(eval.unwrap_or(pairs))
                .map_err(named)?
                .into_iter()
                .map(|(prompt, c, r)| {
                    let text = match prompt {
                        PairPrompt::Text(p) => render(&p)?,
                        PairPrompt::Messages(m) => match (&req.template, &base.chat) {
                            (None, Some(chat)) => chat.render_messages(&m)?,
                            _ => return Err(bad(
                                "conversational pairs (lists of messages) go through the model's chat template: this base has none (a GGUF base brings one), or a template was given; give the prompt as a string",
                            )),
                        },
                    };
                    Ok((text, c, r))
                })
                .collect::<Result<Vec<_>, TrainError>>()?;
            let (p, skipped) = dpo::build(
                &base.tokenizer,
                &rows,
                "{prompt}",
                req.max_len,
                eos,
                req.on_too_long,
            )?;
            (Rows::Dpo(p), skipped)
        }
    };
    if rows.len() == 0 {
        return Err(bad(format!(
            "every row's prompt in {what} is longer than max_len {}: raise max_len",
            req.max_len
        )));
    }
    Ok((rows, skipped))
}

/// A run's identity: everything that changes its result (options, base, starting adapter, rows).
fn fingerprint(
    req: &TrainRequest,
    hyper: &Hyper,
    rows: &Rows,
    validation: Option<(&Rows, usize)>,
) -> Result<String, TrainError> {
    let mut h = blake3::Hasher::new();
    h.update(serde_json::json!({"spec": req.spec, "hyper": hyper, "max_len": req.max_len, "template": req.template}).to_string().as_bytes());
    // A quantized base computes other numbers than its f32 copy: another run.
    if req.quantized_base {
        h.update(b"quantized_base");
    }
    // The base's content, not its path or stamps: a copy elsewhere is the same base, a rewrite another.
    h.update(rtlab_core::provenance::path_content_hash(&req.base)?.as_bytes());
    if let Task::Dpo {
        settings, adapter, ..
    } = &req.task
    {
        h.update(serde_json::to_string(settings)?.as_bytes());
        if let Some(a) = adapter {
            // Adapters are small: their bytes, not their mtime.
            h.update(&std::fs::read(a.join(peft::WEIGHTS_FILE))?);
        }
    }
    if let Task::Sft {
        adapter: Some(a), ..
    } = &req.task
    {
        h.update(b"starting adapter");
        h.update(&std::fs::read(a.join(peft::WEIGHTS_FILE))?);
    }
    rows.hash_into(&mut h);
    if let Some((eval_rows, every)) = validation {
        h.update(format!("validation every {every} keep_best {}", req.keep_best).as_bytes());
        eval_rows.hash_into(&mut h);
    }
    Ok(h.finalize().to_hex()[..16].to_string())
}

/// The finished run already in `out` for this fingerprint, unless `fresh`.
fn finished_run(req: &TrainRequest, fingerprint: &str) -> Option<RunRecord> {
    if req.fresh {
        return None;
    }
    let text = std::fs::read_to_string(req.out.join("run.json")).ok()?;
    let rec = serde_json::from_str::<RunRecord>(&text).ok()?;
    let finished = rec.fingerprint == fingerprint
        && !rec.cancelled
        && req.out.join(peft::WEIGHTS_FILE).exists();
    if !finished {
        return None;
    }
    if rec.code != code_identity() {
        if !req.trust_cache {
            eprintln!(
                "train: rtlab's trainer changed since the finished run in {}: training again",
                req.out.display()
            );
            return None;
        }
        eprintln!(
            "train: the finished run in {} was made by another trainer; served because of --trust-cache",
            req.out.display()
        );
    }
    Some(rec)
}

/// The model to train: base weights (dense, or quantized for QLoRA) with fresh adapters, or with
/// `train_dpo`'s starting adapter.
fn build_model(
    req: &TrainRequest,
    base: &Base,
    seed: u64,
) -> Result<(CausalLm, Option<model::Weights>, LoraSpec), TrainError> {
    let dev = Device::Cpu;
    let (weights, quantized) = match &base.gguf {
        Some(g) if req.quantized_base => g.weights_quantized(&dev)?,
        Some(g) => (g.weights(&dev)?, Default::default()),
        None => (
            load_weights(&req.base, DType::F32, &dev)?,
            Default::default(),
        ),
    };
    // The GPU path uploads the base weights itself; candle's copies share their storage.
    let gpu_weights = (req.device != "cpu").then(|| weights.clone());
    let start = match req.task.start_adapter() {
        Some(a) => Some(peft::load(a, &dev)?),
        None => None,
    };
    let fresh_spec = start.is_none().then_some(&req.spec);
    let mut model = CausalLm::with_quantized(
        base.cfg.clone(),
        weights,
        quantized,
        fresh_spec,
        seed,
        DType::F32,
        &dev,
    )?;
    let spec = match start {
        Some((mut spec, tensors)) => {
            // The run's dropout; the shape is the adapter's.
            spec.dropout = req.spec.dropout;
            model.set_adapters(&spec, tensors)?;
            spec
        }
        None => req.spec.clone(),
    };
    Ok((model, gpu_weights, spec))
}

/// The reference's log-probs for DPO, computed once per job and kept in `path` (in `out`), so that
/// a resumed run measures against the same numbers without a second pass over the pairs.
fn reference_logps(
    path: &Path,
    fingerprint: &str,
    model: &CausalLm,
    pairs: &[dpo::PairExample],
    pad: u32,
    settings: &dpo::Settings,
    batch: usize,
) -> Result<dpo::PairLogps, TrainError> {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Cached {
        fingerprint: String,
        logps: dpo::PairLogps,
    }
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Ok(c) = serde_json::from_str::<Cached>(&text) {
            if c.fingerprint == fingerprint && c.logps.chosen.len() == pairs.len() {
                return Ok(c.logps);
            }
        }
    }
    let logps = dpo::reference_logps(model, pairs, pad, settings, batch)?;
    let cached = Cached {
        fingerprint: fingerprint.to_string(),
        logps,
    };
    rtlab_core::workspace::write_atomic(path, serde_json::to_string(&cached)?.as_bytes())?;
    Ok(cached.logps)
}

/// What the trainer optimizes for the task, over tokenized rows (DPO: with their reference log-probs).
fn objective_of<'a>(
    task: &Task,
    rows: &'a Rows,
    reference: &'a Option<dpo::PairLogps>,
) -> Result<trainer::Objective<'a>, TrainError> {
    match (task, rows, reference) {
        (Task::Dpo { settings, .. }, Rows::Dpo(pairs), Some(reference)) => {
            Ok(trainer::Objective::Dpo {
                pairs,
                reference,
                settings: *settings,
            })
        }
        (Task::Sft { .. }, Rows::Sft(examples), _) => Ok(trainer::Objective::Sft(examples)),
        _ => Err(bad(
            "internal error: the rows were tokenized for another task",
        )),
    }
}

/// Whether `out` holds an interrupted run of this very job (same fingerprint) that may resume; if
/// not (or `fresh`, or `resume: false`), its checkpoints and old record go.
fn continues_the_job_in_out(req: &TrainRequest, fingerprint: &str) -> bool {
    let previous = std::fs::read_to_string(req.out.join("job.json")).ok();
    let same_job = previous.as_deref().map(str::trim) == Some(fingerprint);
    if req.fresh || !req.resume || !same_job {
        let _ = std::fs::remove_dir_all(req.out.join("checkpoints"));
        let _ = std::fs::remove_file(req.out.join("run.json"));
    }
    same_job
}

/// Each training row's texts: (prompt, response), or (prompt, chosen, rejected).
fn training_texts(task: &Task) -> Result<Vec<Vec<String>>, TrainError> {
    Ok(match task {
        Task::Sft {
            data,
            prompt_col,
            response_col,
            ..
        } => pairs_of(data, prompt_col, response_col)?
            .into_iter()
            .map(|(p, r)| vec![p, r])
            .collect(),
        Task::Dpo { pairs, .. } => preference_rows(pairs)?
            .into_iter()
            .map(|(prompt, chosen, rejected)| {
                let prompt = match prompt {
                    PairPrompt::Text(t) => t,
                    PairPrompt::Messages(m) => m
                        .into_iter()
                        .map(|(_, content)| content)
                        .collect::<Vec<_>>()
                        .join("\n"),
                };
                vec![prompt, chosen, rejected]
            })
            .collect(),
    })
}

/// Records what the adapter in `out` was trained on (see [`TRAINING_DATA_FILE`]).
fn write_training_sketch(req: &TrainRequest) -> Result<(), TrainError> {
    let mut sketch = rtlab_data::hygiene::Sketch::of_rows(
        &training_texts(&req.task)?,
        rtlab_data::hygiene::DEFAULT_N,
    );
    if let Some(start) = req.task.start_adapter() {
        if let Some(before) = rtlab_data::hygiene::read_training_sketch(start).map_err(bad)? {
            sketch = sketch.merge(&before);
        }
    }
    rtlab_core::workspace::write_atomic(
        &req.out.join(TRAINING_DATA_FILE),
        serde_json::to_string(&sketch)?.as_bytes(),
    )?;
    Ok(())
}

/// Writes the finished run's loss plot and, last, its `run.json` (the sign that `out` is whole).
fn write_run(req: &TrainRequest, record: &RunRecord) -> Result<(), TrainError> {
    write_training_sketch(req)?;
    let run_json = req.out.join("run.json");
    let plot = rtlab_data::plot::Plot::new(
        rtlab_data::plot::Kind::Line,
        match req.task {
            Task::Sft { .. } => "training loss".into(),
            Task::Dpo { .. } => "DPO loss".into(),
        },
        record.curve.iter().map(|s| s.step.to_string()).collect(),
        record.curve.iter().map(|s| s.loss).collect(),
    );
    rtlab_core::workspace::write_atomic(&req.out.join("loss.svg"), plot.svg.as_bytes())?;
    rtlab_core::workspace::write_atomic(
        &run_json,
        serde_json::to_string_pretty(record)?.as_bytes(),
    )?;
    Ok(())
}

/// Trains (or returns the finished run in `out`); the heart of `train_lora` and `train_dpo`.
fn train(ws: &Workspace, req: TrainRequest) -> Result<(RunRecord, bool), TrainError> {
    let base = open_base(ws, &req)?;
    let eos = examples::eos_id(&base.tokenizer, base.cfg.eos_token_id)?;
    let (rows, skipped) = tokenize_rows(&req, &base, eos, None)?;
    let eval_rows = match &req.eval_data {
        Some(frame) => Some(tokenize_rows(&req, &base, eos, Some(frame))?.0),
        None => None,
    };
    let mut hyper = req.hyper.clone();
    let per_epoch = trainer::steps_per_epoch(rows.len(), &hyper);
    let total = per_epoch * hyper.epochs;
    // Validation once an epoch unless asked otherwise.
    let eval_every = req.eval_every.unwrap_or(per_epoch);
    hyper.warmup_steps = if req.warmup < 1.0 {
        (req.warmup * total as f64).ceil() as usize
    } else {
        req.warmup as usize
    };
    let fingerprint = fingerprint(
        &req,
        &hyper,
        &rows,
        eval_rows.as_ref().map(|e| (e, eval_every)),
    )?;
    if let Some(rec) = finished_run(&req, &fingerprint) {
        // Written again (it is cheap): a run finished before adapters recorded their training data,
        // or in an older format, gets its record now.
        write_training_sketch(&req)?;
        return Ok((rec, true));
    }
    let same_job = continues_the_job_in_out(&req, &fingerprint);
    // The device opens before the run dir is touched: a missing GPU is bad input too.
    let gpu = match req.device.as_str() {
        "cpu" => None,
        d => Some(gpu::open(d)?),
    };
    std::fs::create_dir_all(&req.out)?;
    rtlab_core::workspace::write_atomic(&req.out.join("job.json"), fingerprint.as_bytes())?;
    let (model, gpu_weights, spec) = build_model(&req, &base, hyper.seed)?;
    // DPO's reference log-probs, of the training pairs and of the validation pairs.
    let reference_of = |rows: &Rows, file: &str| -> Result<Option<dpo::PairLogps>, TrainError> {
        match (&req.task, rows) {
            (Task::Dpo { settings, .. }, Rows::Dpo(pairs)) => Ok(Some(reference_logps(
                &req.out.join(file),
                &fingerprint,
                &model,
                pairs,
                eos,
                settings,
                hyper.batch_size,
            )?)),
            _ => Ok(None),
        }
    };
    let reference = reference_of(&rows, "reference_logps.json")?;
    let eval_reference = match &eval_rows {
        Some(e) => reference_of(e, "reference_logps_eval.json")?,
        None => None,
    };
    let objective = objective_of(&req.task, &rows, &reference)?;
    let validation = match &eval_rows {
        Some(e) => Some(trainer::Validation {
            objective: objective_of(&req.task, e, &eval_reference)?,
            every: eval_every,
            keep_best: req.keep_best,
        }),
        None => None,
    };
    let base_name = req.base.display().to_string();
    let record = trainer::run(trainer::Job {
        gpu: match (gpu, &gpu_weights) {
            (Some(gpu), Some(weights)) => Some(trainer::GpuSetup {
                gpu,
                weights,
                cfg: &base.cfg,
            }),
            _ => None,
        },
        model: &model,
        spec: &spec,
        objective,
        validation,
        pad: eos,
        hyper: &hyper,
        out: &req.out,
        base_name: &base_name,
        resume: req.resume && same_job,
        fingerprint: &fingerprint,
        skipped_rows: skipped,
        gradient_checkpointing: req.gradient_checkpointing,
    })?;
    write_run(&req, &record)?;
    Ok((record, false))
}

/// Parses the options (errors name the function), trains or finds the finished run, and returns its
/// record as a map.
fn run_trainer(
    ws: &Workspace,
    options: &Map,
    function: &str,
    parse: fn(&Workspace, &Map) -> Result<TrainRequest, TrainError>,
) -> Result<Map, Box<EvalAltResult>> {
    let named = |e: TrainError| -> Box<EvalAltResult> {
        match e {
            TrainError::Input(m) if !m.starts_with(function) => format!("{function}: {m}").into(),
            e => e.into(),
        }
    };
    let (rec, cached) = parse(ws, options)
        .and_then(|req| train(ws, req))
        .map_err(named)?;
    if cached {
        ws.emit_line(&format!(
            "{function}: {} already holds this run (same base, data and options); pass fresh: true to train again",
            rec.out
        ));
    }
    Ok(record_to_map(&rec, cached)?)
}

/// The curve as a frame: step, epoch, loss, lr, grad_norm; DPO's reward_margin and
/// reward_accuracy; eval_loss where validation measured it (null elsewhere).
fn curve_frame(rec: &RunRecord) -> Result<Frame, TrainError> {
    use polars::prelude::*;
    let per_step =
        |f: fn(&trainer::StepLog) -> f64| -> Vec<f64> { rec.curve.iter().map(f).collect() };
    let mut columns = vec![
        Column::new(
            "step".into(),
            rec.curve.iter().map(|s| s.step as i64).collect::<Vec<_>>(),
        ),
        Column::new(
            "epoch".into(),
            rec.curve.iter().map(|s| s.epoch as i64).collect::<Vec<_>>(),
        ),
        Column::new("loss".into(), per_step(|s| s.loss)),
        Column::new("lr".into(), per_step(|s| s.lr)),
        Column::new("grad_norm".into(), per_step(|s| s.grad_norm)),
    ];
    if rec.curve.iter().any(|s| s.reward_margin.is_some()) {
        columns.push(Column::new(
            "reward_margin".into(),
            per_step(|s| s.reward_margin.unwrap_or(f64::NAN)),
        ));
        columns.push(Column::new(
            "reward_accuracy".into(),
            per_step(|s| s.reward_accuracy.unwrap_or(f64::NAN)),
        ));
    }
    if rec.curve.iter().any(|s| s.eval_loss.is_some()) {
        columns.push(Column::new(
            "eval_loss".into(),
            rec.curve.iter().map(|s| s.eval_loss).collect::<Vec<_>>(),
        ));
    }
    let df = DataFrame::new_infer_height(columns).map_err(|e| bad(e.to_string()))?;
    Ok(Frame::new(df))
}

fn record_to_map(rec: &RunRecord, cached: bool) -> Result<Map, TrainError> {
    let mut m = Map::new();
    // DPO's per-step arrays, as the plans read them: loss, reward margin and accuracy.
    if rec.curve.iter().any(|s| s.reward_margin.is_some()) {
        let array = |f: fn(&trainer::StepLog) -> Option<f64>| -> Dynamic {
            rec.curve
                .iter()
                .map(|s| Dynamic::from(f(s).unwrap_or(f64::NAN)))
                .collect::<Array>()
                .into()
        };
        m.insert("loss".into(), array(|s| Some(s.loss)));
        m.insert("reward_margin".into(), array(|s| s.reward_margin));
        m.insert("reward_accuracy".into(), array(|s| s.reward_accuracy));
    }
    let step = |s: Option<usize>| s.map(|s| Dynamic::from(s as i64)).unwrap_or(Dynamic::UNIT);
    m.insert("best_step".into(), step(rec.best_step));
    m.insert(
        "best_eval_loss".into(),
        rec.best_eval_loss
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT),
    );
    m.insert("kept_step".into(), step(rec.kept_step));
    let curve = curve_frame(rec)?;
    let first = rec.curve.first().map(|s| s.loss).unwrap_or(f64::NAN);
    let last = rec.curve.last().map(|s| s.loss).unwrap_or(f64::NAN);
    m.insert("adapter".into(), rec.out.clone().into());
    m.insert("steps".into(), (rec.steps as i64).into());
    m.insert("total_steps".into(), (rec.total_steps as i64).into());
    m.insert("examples".into(), (rec.examples as i64).into());
    m.insert(
        "skipped_rows".into(),
        rec.skipped_rows
            .iter()
            .map(|&r| Dynamic::from(r as i64))
            .collect::<Array>()
            .into(),
    );
    m.insert("first_loss".into(), first.into());
    m.insert("final_loss".into(), last.into());
    m.insert("curve".into(), Dynamic::from(curve));
    m.insert("tokens_per_s".into(), rec.tokens_per_s.into());
    m.insert("seconds".into(), rec.seconds.into());
    m.insert("peak_rss_mb".into(), rec.peak_rss_mb.into());
    m.insert(
        "trainable_params".into(),
        (rec.trainable_params as i64).into(),
    );
    m.insert(
        "resumed_from".into(),
        rec.resumed_from
            .map(|s| Dynamic::from(s as i64))
            .unwrap_or(Dynamic::UNIT),
    );
    m.insert("cancelled".into(), rec.cancelled.into());
    m.insert("cached".into(), cached.into());
    m.insert(
        "loss_svg".into(),
        Path::new(&rec.out)
            .join("loss.svg")
            .display()
            .to_string()
            .into(),
    );
    Ok(m)
}

/// Writes `out` = base with the adapter merged (`W + s·B·A` in f32, stored in each tensor's dtype),
/// shard by shard as the base is laid out, with its config and tokenizer files.
pub fn merge(base: &Path, adapter: &Path, out: &Path) -> Result<usize, TrainError> {
    let cfg = ModelConfig::from_dir(base)?;
    let dev = Device::Cpu;
    let (spec, tensors) = peft::load(adapter, &dev)?;
    let weights = load_weights(base, DType::F32, &dev)?;
    let mut model = CausalLm::new(cfg, weights, None, 0, DType::F32, &dev)?;
    model.set_adapters(&spec, tensors)?;
    let merged: HashMap<String, candle_core::Tensor> =
        model.merged_linear_weights()?.into_iter().collect();
    std::fs::create_dir_all(out)?;
    let mut changed = 0;
    for file in config::weight_files(base)? {
        let mut shard = candle_core::safetensors::load(&file, &dev)?;
        for (name, t) in shard.iter_mut() {
            if let Some(m) = merged.get(name) {
                *t = m.to_dtype(t.dtype())?;
                changed += 1;
            }
        }
        let name = file
            .file_name()
            .ok_or_else(|| bad("weight file without a name"))?;
        let tmp = out.join(format!(".{}.tmp", name.to_string_lossy()));
        candle_core::safetensors::save(&shard, &tmp)?;
        std::fs::rename(&tmp, out.join(name))?;
    }
    for extra in [
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ] {
        let src = base.join(extra);
        if src.exists() {
            rtlab_core::workspace::write_atomic(&out.join(extra), &std::fs::read(&src)?)?;
        }
    }
    Ok(changed)
}

/// The Rhai-visible local model (cheap to clone).
#[derive(Clone)]
pub struct Local(pub Arc<LocalModel>);

/// Writes `out`: the GGUF `base` (a path or a model's name) with the PEFT `adapter` merged in, its
/// matrices as `quant`. The typed core of `export_gguf` and `rtlab export`.
pub fn export_merged_gguf(
    ws: &Workspace,
    base: &str,
    adapter: &Path,
    out: &Path,
    quant: gguf::Quant,
) -> Result<usize, TrainError> {
    let base = models::locate(base, &ws.base_dir())?;
    if !(base.is_file() && gguf::is_gguf(&base)) {
        return Err(bad(format!(
            "export_gguf: {} is not a GGUF file; export from a GGUF base (a Hugging Face directory goes through merge(), then llama.cpp's convert_hf_to_gguf.py)",
            base.display()
        )));
    }
    let dev = Device::Cpu;
    let g = gguf::open(&base)?;
    let (spec, tensors) = peft::load(adapter, &dev)?;
    let mut model = CausalLm::new(g.cfg.clone(), g.weights(&dev)?, None, 0, DType::F32, &dev)?;
    model.set_adapters(&spec, tensors)?;
    let merged: HashMap<String, candle_core::Tensor> =
        model.merged_linear_weights()?.into_iter().collect();
    g.export(&merged, out, quant)
}

/// An Ollama Modelfile, as the plans write them: `FROM` (a GGUF or an Ollama model), then `ADAPTER`,
/// `TEMPLATE`, `SYSTEM` and one `PARAMETER` line per parameter (sorted).
pub fn modelfile(
    from: &str,
    adapter: Option<&str>,
    system: Option<&str>,
    template: Option<&str>,
    parameters: &[(String, String)],
) -> Result<String, String> {
    let quoted = |what: &str, text: &str| {
        if text.contains("\"\"\"") {
            Err(format!(
                "ollama_modelfile: `{what}` contains \"\"\", which a Modelfile cannot quote"
            ))
        } else {
            Ok(format!("\"\"\"{text}\"\"\""))
        }
    };
    let mut out = format!("FROM {from}\n");
    if let Some(a) = adapter {
        out.push_str(&format!("ADAPTER {a}\n"));
    }
    if let Some(t) = template {
        out.push_str(&format!("TEMPLATE {}\n", quoted("template", t)?));
    }
    if let Some(s) = system {
        out.push_str(&format!("SYSTEM {}\n", quoted("system", s)?));
    }
    let mut params = parameters.to_vec();
    params.sort();
    for (k, v) in params {
        if k.contains(char::is_whitespace) || v.contains('\n') {
            return Err(format!(
                "ollama_modelfile: parameter {k:?} = {v:?} does not fit on one PARAMETER line"
            ));
        }
        out.push_str(&format!("PARAMETER {k} {v}\n"));
    }
    Ok(out)
}

/// Loaded local models by (dir, adapter), shared by `load_model` and `llm(#{provider: "local"})`.
pub fn load_local(
    dir: &Path,
    adapter: Option<&Path>,
    template: Option<String>,
    dequantize: bool,
) -> Result<Arc<LocalModel>, TrainError> {
    type Key = (PathBuf, Option<PathBuf>, Option<String>, bool);
    static LOADED: OnceLock<Mutex<HashMap<Key, Arc<LocalModel>>>> = OnceLock::new();
    let key = (
        dir.to_path_buf(),
        adapter.map(Path::to_path_buf),
        template.clone(),
        dequantize,
    );
    let map = LOADED.get_or_init(Default::default);
    if let Some(m) = map.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(m);
    }
    let model = Arc::new(LocalModel::load(dir, adapter, template, dequantize)?);
    if let Ok(mut m) = map.lock() {
        m.insert(key, model.clone());
    }
    Ok(model)
}

fn gen_options(o: &Map) -> Result<GenOptions, TrainError> {
    let o = Options::new(
        "generate",
        o,
        &["max_tokens", "temperature", "top_p", "seed", "stop"],
    )
    .map_err(bad)?;
    let d = GenOptions::default();
    let top_p = o.float("top_p").map_err(bad)?.unwrap_or(d.top_p);
    if !(0.0..=1.0).contains(&top_p) {
        return Err(bad(format!(
            "generate: top_p must be between 0 and 1, not {top_p}"
        )));
    }
    Ok(GenOptions {
        max_tokens: o
            .int_at_least("max_tokens", 0)
            .map_err(bad)?
            .map_or(d.max_tokens, |n| n as usize),
        temperature: o
            .float("temperature")
            .map_err(bad)?
            .unwrap_or(d.temperature),
        top_p,
        seed: o.int_at_least("seed", 0).map_err(bad)?.unwrap_or(0) as u64,
        stop: o.stop_strings("stop").map_err(bad)?.unwrap_or_default(),
    })
}

pub fn register(module: &mut Module) {
    module.set_custom_type::<Local>("LocalModel");
    FuncRegistration::new("to_string").set_into_module(module, |m: &mut Local| describe(m));
    FuncRegistration::new("to_debug").set_into_module(module, |m: &mut Local| describe(m));
    rtlab_core::values::register(rtlab_core::values::RichType {
        tag: "local_model",
        is: |v| v.is::<Local>(),
        text: |v| {
            v.read_lock::<Local>()
                .map(|m| describe(&m))
                .unwrap_or_default()
        },
        html: None,
        persist: Some(rtlab_core::values::Persist {
            save: |v, _| {
                Ok(v.read_lock::<Local>()
                    .ok_or("a local model that is locked")?
                    .persisted())
            },
            load: |fields, _| Local::load_persisted(fields),
        }),
    });
    combine_with_exported_module!(module, "train_functions", train_functions);
}

impl Local {
    /// A local model persists as what it was loaded from, with the files' stamps so that a cell reading
    /// it reruns when the model or the adapter changes on disk; restoring loads it again.
    fn persisted(&self) -> serde_json::Map<String, serde_json::Value> {
        let s = &self.0.source;
        let stamp = rtlab_core::workspace::file_stamp;
        // A GGUF is one file; a Hugging Face directory is its config and weight files.
        let model_stamps: Vec<String> = if s.path.is_dir() {
            let mut files = vec![s.path.join("config.json")];
            files.extend(config::weight_files(&s.path).unwrap_or_default());
            files.iter().map(|f| stamp(f)).collect()
        } else {
            vec![stamp(&s.path)]
        };
        let adapter_stamp = s
            .adapter
            .as_ref()
            .map(|a| stamp(&a.join("adapter_model.safetensors")));
        let fields = serde_json::json!({
            "path": s.path.display().to_string(),
            "adapter": s.adapter.as_ref().map(|a| a.display().to_string()),
            "template": s.template,
            "dequantize": s.dequantize,
            "stamps": [model_stamps, adapter_stamp],
        });
        match fields {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("a json! object literal"),
        }
    }

    fn load_persisted(
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<rhai::Dynamic, String> {
        use serde_json::Value;
        let text = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_string);
        let path = text("path").ok_or("local model without a path")?;
        let adapter = text("adapter").map(std::path::PathBuf::from);
        let dequantize = fields
            .get("dequantize")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let model = load_local(
            std::path::Path::new(&path),
            adapter.as_deref(),
            text("template"),
            dequantize,
        )
        .map_err(|e| format!("cannot load the cached cell's model again: {e}"))?;
        Ok(rhai::Dynamic::from(Local(model)))
    }
}

fn describe(m: &Local) -> String {
    let c = &m.0.model.cfg;
    format!(
        "LocalModel({:?}, {} layers, hidden {}{})",
        c.arch,
        c.num_hidden_layers,
        c.hidden_size,
        m.0.adapter
            .as_ref()
            .map(|a| format!(", adapter {}", a.display()))
            .unwrap_or_default()
    )
}

#[export_module]
mod train_functions {
    use super::*;

    /// Trains LoRA adapters and returns the run record: `#{adapter, steps, first_loss, final_loss,
    /// curve (a DataFrame of step, epoch, loss, lr, grad_norm), tokens_per_s, seconds, peak_rss_mb,
    /// trainable_params, resumed_from, cancelled, cached, loss_svg}`.
    ///
    /// Options: `base` (a Hugging Face Llama/Qwen2 dir, a GGUF file, or a model name such as
    /// `smollm2-135m`), `data` (DataFrame or JSONL path), `out`;
    /// `prompt_col` ("instruction"), `response_col` ("output"), `adapter` (a finished run's adapter
    /// to go on training, e.g. rejection-sampling SFT after SFT; its shape is kept, so no `r`,
    /// `alpha`, `target_modules` or `rslora`), `template` (`{prompt}` marks the
    /// prompt; by default the base's own chat template, from a GGUF's metadata or a Hugging Face
    /// dir's `tokenizer_config.json`, as `generate` asks, else Alpaca style), `r` (64), `alpha`
    /// (2·r), `dropout` (0.05), `target_modules` (all seven projections), `rslora` (false), `lr` (2e-4), `epochs` (3), `batch_size` (4), `grad_accum` (4),
    /// `max_len` (1024), `warmup` (0.03: a fraction of the steps, or a step count ≥ 1), `schedule`
    /// ("cosine", "linear", "constant"), `weight_decay` (0), `max_grad_norm` (1), `seed` (42),
    /// `checkpoint_every` (0 = only at the end), `resume` (true: continue this job's newest checkpoint),
    /// `fresh` (false: true retrains even when `out` holds this exact run), `max_steps`, `on_too_long`
    /// ("error" or "skip" rows whose prompt does not fit `max_len`), `device` ("cpu"; "wgpu" runs the
    /// whole step on rtlab's cubecl kernels through Vulkan/Metal/DX12; "cuda" with the `cuda` build;
    /// "auto" = "cuda" in a CUDA build on a machine whose driver and NVRTC load, else "cpu"),
    /// `quantized_base` (false; true is QLoRA on a GGUF base: the frozen projections stay in the
    /// file's quantization and only the adapters are f32; CPU only), `gradient_checkpointing` (true:
    /// the CPU path keeps each layer's input and recomputes its activations in the backward, one
    /// layer at a time: the same numbers in a fraction of the memory; false keeps the whole graph).
    /// Validation: `eval_data` (rows like `data`) is measured every `eval_every` steps (once an
    /// epoch) and after the last, without dropout, into the curve's `eval_loss` column; the adapter
    /// with the lowest one is kept in `out/best`, and `keep: "best"` leaves it in `out` (the record's
    /// `best_step`, `best_eval_loss`, `kept_step` say which), `keep: "last"` (default) the last one.
    /// Loss counts response tokens only. Ctrl-C stops after the current step and checkpoints.
    /// The adapter dir also gets `training_data.json`: a content hash of each training row and
    /// their n-gram sketch (a starting adapter's included), which `benchmark` checks its problems
    /// against. Progress goes to stderr: a bar on a terminal, else a line every 30 s or 10%.
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-tiny", #{seed: 1});
    /// let data = from_records([#{instruction: "inverter", output: "assign y = ~a;"}]);
    /// let run = train_lora(#{base: "/tmp/rtlab-doc-tiny", data: data, out: "/tmp/rtlab-doc-run",
    ///                        r: 4, epochs: 2, batch_size: 1, grad_accum: 1, lr: 1e-2, fresh: true});
    /// assert(run.final_loss < run.first_loss, "the loss went down");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn train_lora(ctx: NativeCallContext, options: Map) -> Result<Map, Box<EvalAltResult>> {
        run_trainer(&Workspace::of(&ctx), &options, "train_lora", parse_sft)
    }

    /// Direct Preference Optimization of LoRA adapters on (prompt, chosen, rejected) pairs, TRL's
    /// format (what `preference_pairs` returns). Options, with defaults:
    /// - `base`, `out`: as `train_lora`; `pairs`: a DataFrame or the path of a JSONL file, in TRL's
    ///   standard format (strings) or its conversational one (`prompt` a list of `#{role, content}`
    ///   messages, rendered with the model's chat template; `chosen`/`rejected` the assistant's reply);
    /// - `adapter` (none): the SFT adapter to start from (its shape replaces `r`, `alpha`,
    ///   `target_modules`, `rslora`, which are then refused);
    /// - `beta` (0.1); `loss`: "sigmoid" (the DPO paper's) or "ipo";
    /// - `reference`: "base" (the base without adapters) or "adapter" (the starting adapter, frozen);
    ///   its log-probs are computed once and kept in `out/reference_logps.json`;
    /// - `lr`, `epochs`, `batch_size` (pairs), `grad_accum`, `max_len`, `seed`, `checkpoint_every`,
    ///   `resume`, `fresh`, `max_steps`, `template`, `eval_data` (pairs), `eval_every`, `keep` and
    ///   the LoRA shape: as `train_lora`; `dropout` is 0.0 by default, as TRL's `disable_dropout`
    ///   has it.
    ///
    /// It runs on the CPU and on the GPU kernels (`device`, as `train_lora`'s). The record is
    /// `train_lora`'s plus per-step arrays `loss`, `reward_margin` (mean chosen − rejected implicit
    /// reward) and `reward_accuracy` (share of pairs whose chosen reward is higher), also columns of
    /// `curve`.
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-dpo-tiny", #{hidden: 32, layers: 1});
    /// let pairs = from_records([
    ///     #{prompt: "and gate", chosen: "assign y = a & b;", rejected: "assign y = a | b;"},
    ///     #{prompt: "or gate", chosen: "assign y = a | b;", rejected: "assign y = a ^ b;"},
    /// ]);
    /// let run = train_dpo(#{base: "/tmp/rtlab-doc-dpo-tiny", pairs: pairs, out: "/tmp/rtlab-doc-dpo",
    ///     r: 4, lr: 0.01, epochs: 3, batch_size: 2, grad_accum: 1, fresh: true});
    /// assert_eq(run.steps, 3);
    /// assert(run.reward_margin[2] > 0.0, "the chosen answers gained on the rejected ones");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn train_dpo(ctx: NativeCallContext, options: Map) -> Result<Map, Box<EvalAltResult>> {
        run_trainer(&Workspace::of(&ctx), &options, "train_dpo", parse_dpo)
    }

    /// Writes a tiny seeded Llama-architecture model (config.json, model.safetensors, a byte-level
    /// tokenizer.json) into `dir`: for tests, CI and trying the trainer without a download. Options:
    /// `arch` ("llama" or "qwen2"), `hidden` (64), `layers` (2), `heads` (4), `kv_heads` (2),
    /// `intermediate` (128), `max_positions` (1024), `seed` (0).
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-tiny2", #{hidden: 32, layers: 1});
    /// assert(file_exists("/tmp/rtlab-doc-tiny2/config.json"), "made");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn create_tiny_model(
        ctx: NativeCallContext,
        dir: &str,
        options: Map,
    ) -> Result<(), Box<EvalAltResult>> {
        let o = Options::new(
            "create_tiny_model",
            &options,
            &[
                "arch",
                "hidden",
                "layers",
                "heads",
                "kv_heads",
                "intermediate",
                "max_positions",
                "seed",
            ],
        )?;
        let mut spec = tiny::TinySpec::default();
        for k in options.keys() {
            let n = || -> Result<usize, String> { Ok(o.int_at_least(k, 1)?.unwrap_or(1) as usize) };
            match k.as_str() {
                "arch" => {
                    spec.arch = match o.string("arch")?.unwrap_or_default().as_str() {
                        "llama" => config::Arch::Llama,
                        "qwen2" => config::Arch::Qwen2,
                        other => {
                            return Err(format!(
                                "create_tiny_model: arch {other:?}: use \"llama\" or \"qwen2\""
                            )
                            .into())
                        }
                    }
                }
                "hidden" => spec.hidden = n()?,
                "layers" => spec.layers = n()?,
                "heads" => spec.heads = n()?,
                "kv_heads" => spec.kv_heads = n()?,
                "intermediate" => spec.intermediate = n()?,
                "max_positions" => spec.max_positions = n()?,
                "seed" => spec.seed = o.int_at_least("seed", 0)?.unwrap_or(0) as u64,
                _ => {}
            }
        }
        Ok(tiny::create(&Workspace::of(&ctx).resolve(dir), &spec)?)
    }

    /// Loads a model for local generation: a Hugging Face directory, a GGUF file, a model rtlab knows
    /// by name (`smollm2-135m`, pulled on first use) or `ollama:NAME[:TAG]`. Options: `adapter` (a
    /// PEFT adapter directory on top), `template` (the prompt template; otherwise the model's own
    /// chat template, from a GGUF's metadata or `tokenizer_config.json`, else Alpaca's), `dequantize` (false: a GGUF's quantized projections stay quantized and decode with
    /// candle's quantized matmul, as llama.cpp runs them; true: every weight in f32).
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-tiny3", #{});
    /// let m = load_model("/tmp/rtlab-doc-tiny3", #{});
    /// assert(m.to_string().starts_with("LocalModel(Llama"), "loaded");
    /// ```
    /// The perplexity of a local model on the responses of a dataset given their prompts: exp of the
    /// mean negative log-likelihood per response token (end-of-sequence included, the tokens
    /// `train_lora` scores), each prompt asked as `answer` asks it. `data` is a DataFrame or a JSONL
    /// path with `train_lora`'s columns (`instruction`, `output`). Lower is better; a model that
    /// learned the responses gets close to 1.
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-ppl", #{hidden: 32, layers: 1});
    /// let m = load_model("/tmp/rtlab-doc-ppl", #{});
    /// let p = perplexity(m, from_records([#{instruction: "and gate", output: "assign y = a & b;"}]));
    /// assert(p > 1.0, "an untrained model is unsure");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn perplexity(
        ctx: NativeCallContext,
        model: &mut Local,
        data: Dynamic,
    ) -> Result<f64, Box<EvalAltResult>> {
        perplexity_with(ctx, model, data, Map::new())
    }

    /// `perplexity` with options: `prompt_col` ("instruction"), `response_col` ("output"),
    /// `max_len` (the model's context), `batch_size` (8).
    #[rhai_fn(name = "perplexity", return_raw)]
    pub fn perplexity_with(
        ctx: NativeCallContext,
        model: &mut Local,
        data: Dynamic,
        options: Map,
    ) -> Result<f64, Box<EvalAltResult>> {
        let named = |e: TrainError| -> Box<EvalAltResult> {
            match e {
                TrainError::Input(m) if !m.starts_with("perplexity") => {
                    format!("perplexity: {m}").into()
                }
                e => e.into(),
            }
        };
        let o = Options::new(
            "perplexity",
            &options,
            &["prompt_col", "response_col", "max_len", "batch_size"],
        )?;
        let frame = frame_value(&Workspace::of(&ctx), "data", Some(&data)).map_err(named)?;
        let rows = pairs_of(
            &frame,
            &o.string("prompt_col")?
                .unwrap_or_else(|| "instruction".into()),
            &o.string("response_col")?.unwrap_or_else(|| "output".into()),
        )
        .map_err(named)?;
        if rows.is_empty() {
            return Err("perplexity: the data has no rows".into());
        }
        let context = model.0.model.cfg.max_position_embeddings;
        let max_len = o.float("max_len")?.map(|x| x as usize).unwrap_or(context);
        if max_len < 2 || max_len > context {
            return Err(format!(
                "perplexity: max_len must be in 2..={context} (the model's context), got {max_len}"
            )
            .into());
        }
        let batch = o
            .float("batch_size")?
            .map(|x| x.max(1.0) as usize)
            .unwrap_or(8);
        let (ppl, _) = model.0.perplexity(&rows, max_len, batch).map_err(named)?;
        Ok(ppl)
    }

    #[rhai_fn(return_raw)]
    pub fn load_model(
        ctx: NativeCallContext,
        dir: &str,
        options: Map,
    ) -> Result<Local, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        let o = Options::new(
            "load_model",
            &options,
            &["adapter", "template", "dequantize"],
        )?;
        let adapter = o.string("adapter")?.map(|a| ws.resolve(&a));
        let m = load_local(
            &models::locate(dir, &ws.base_dir())?,
            adapter.as_deref(),
            o.string("template")?,
            o.bool("dequantize")?.unwrap_or(false),
        )?;
        Ok(Local(m))
    }

    /// Generates the answer to `prompt` (put through the model's template) with a KV cache. Options:
    /// `max_tokens` (256), `temperature` (0 = greedy), `top_p` (1), `seed` (0), `stop` (a string or a list: the answer ends before the first of them).
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-tiny4", #{});
    /// let m = load_model("/tmp/rtlab-doc-tiny4", #{});
    /// let a = m.generate("a 2-input AND gate", #{max_tokens: 8});
    /// assert(a.len() <= 64, "at most 8 tokens (bytes here)");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn generate(
        model: &mut Local,
        prompt: &str,
        options: Map,
    ) -> Result<String, Box<EvalAltResult>> {
        Ok(model.0.answer(prompt, &gen_options(&options)?)?)
    }

    /// `generate` with the default options (greedy, 256 tokens).
    #[rhai_fn(name = "generate", return_raw)]
    pub fn generate_default(model: &mut Local, prompt: &str) -> Result<String, Box<EvalAltResult>> {
        Ok(model.0.answer(prompt, &GenOptions::default())?)
    }

    /// The model's logits at every token of `text` (no template): an array per position of `vocab`
    /// floats. For checking rtlab against another implementation on the same model and adapter.
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-tiny6", #{});
    /// let l = load_model("/tmp/rtlab-doc-tiny6", #{}).logits("ab");
    /// assert_eq(l.len(), 2);        // one position per byte with the tiny tokenizer
    /// assert_eq(l[0].len(), 259);   // 256 bytes + 3 special tokens
    /// ```
    #[rhai_fn(return_raw)]
    pub fn logits(model: &mut Local, text: &str) -> Result<Array, Box<EvalAltResult>> {
        Ok(model
            .0
            .logits(text)?
            .into_iter()
            .map(|row| {
                Dynamic::from(
                    row.into_iter()
                        .map(|x| Dynamic::from(x as f64))
                        .collect::<Array>(),
                )
            })
            .collect())
    }

    /// The token ids of `text` under the model's tokenizer (no template): for checking rtlab's
    /// tokenizer and forward pass against another implementation on the same ids.
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-tiny7", #{});
    /// assert_eq(load_model("/tmp/rtlab-doc-tiny7", #{}).tokens("ab").len(), 2);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn tokens(model: &mut Local, text: &str) -> Result<Array, Box<EvalAltResult>> {
        Ok(model
            .0
            .tokens(text)?
            .into_iter()
            .map(|id| Dynamic::from(id as i64))
            .collect())
    }

    /// Writes a GGUF of `base` (a GGUF file or a model's name) with the PEFT `adapter` merged in
    /// (`W + s·B·A`), for llama.cpp and Ollama: the base's metadata, tokenizer and chat template, its
    /// matrices as `quant` (`"f16"`, `"q8_0"`, or `"q4_k"`, where rows that a k-quant cannot take fall
    /// back to Q8_0) and its norms as F32. Returns the written file's path.
    ///
    /// ```rhai
    /// let rows = [#{instruction: "Write inv.", output: "module inv(input a, output y); assign y = ~a; endmodule"}];
    /// let run = train_lora(#{base: "smollm2-135m", data: from_records(rows), out: "/tmp/rtlab-doc-export-run",
    ///                        r: 2, epochs: 1, batch_size: 1, grad_accum: 1, max_len: 48, target_modules: ["q_proj"]});
    /// let gguf = export_gguf("smollm2-135m", run.adapter, "/tmp/rtlab-doc-export.gguf", #{quant: "q8_0"});
    /// assert_eq(load_model(gguf, #{}).tokens("module").len(), 1);
    /// ```
    #[rhai_fn(return_raw)]
    pub fn export_gguf(
        ctx: NativeCallContext,
        base: &str,
        adapter: &str,
        out: &str,
        options: Map,
    ) -> Result<String, Box<EvalAltResult>> {
        let o = Options::new("export_gguf", &options, &["quant"])?;
        let quant = gguf::Quant::parse(&o.string("quant")?.unwrap_or_else(|| "q8_0".into()))
            .map_err(|e| format!("export_gguf: {e}"))?;
        let ws = Workspace::of(&ctx);
        let out = ws.resolve(out);
        export_merged_gguf(&ws, base, &ws.resolve(adapter), &out, quant)?;
        Ok(out.display().to_string())
    }

    /// Writes an Ollama Modelfile like the plans' and returns its path. Options: `from` (required: a
    /// GGUF path or an Ollama model such as `llama3:8b`), `adapter`, `system`, `template`,
    /// `parameters` (a map: `#{temperature: 0.2, num_ctx: 4096}`), `out` (default `Modelfile`).
    /// Then: `ollama create NAME -f Modelfile`.
    ///
    /// ```rhai
    /// let path = ollama_modelfile(#{from: "./rtl-v5.gguf", system: "You write synthesizable Verilog.",
    ///                                parameters: #{temperature: 0.2}, out: "/tmp/rtlab-doc-Modelfile"});
    /// assert_eq(read_text(path), "FROM ./rtl-v5.gguf\nSYSTEM \"\"\"You write synthesizable Verilog.\"\"\"\nPARAMETER temperature 0.2\n");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn ollama_modelfile(
        ctx: NativeCallContext,
        options: Map,
    ) -> Result<String, Box<EvalAltResult>> {
        let o = Options::new(
            "ollama_modelfile",
            &options,
            &["from", "adapter", "system", "template", "parameters", "out"],
        )?;
        let from = o.string("from")?.ok_or(
            "ollama_modelfile: pass from: a GGUF file or an Ollama model such as \"llama3:8b\"",
        )?;
        let parameters: Vec<(String, String)> = o
            .map("parameters")?
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = modelfile(
            &from,
            o.string("adapter")?.as_deref(),
            o.string("system")?.as_deref(),
            o.string("template")?.as_deref(),
            &parameters,
        )?;
        let out =
            Workspace::of(&ctx).resolve(&o.string("out")?.unwrap_or_else(|| "Modelfile".into()));
        rtlab_core::workspace::write_atomic(&out, text.as_bytes())
            .map_err(|e| format!("ollama_modelfile: cannot write {}: {e}", out.display()))?;
        Ok(out.display().to_string())
    }

    /// The text of token ids under the model's tokenizer: `m.decode(m.tokens(text)) == text`.
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-tiny8", #{});
    /// let m = load_model("/tmp/rtlab-doc-tiny8", #{});
    /// assert_eq(m.decode(m.tokens("module m;")), "module m;");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn decode(model: &mut Local, ids: Array) -> Result<String, Box<EvalAltResult>> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|v| {
                v.as_int()
                    .ok()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| format!("decode: token ids are integers ≥ 0, not {v}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(model
            .0
            .tokenizer
            .decode(&ids, false)
            .map_err(|e| format!("decode: {e}"))?)
    }

    /// Merges a PEFT adapter into its base model and writes the merged model to `out` (safetensors in
    /// the base's dtype and shard layout, plus config and tokenizer), ready for vLLM, llama.cpp's
    /// converter or Ollama. Returns how many weight matrices changed.
    ///
    /// ```rhai
    /// create_tiny_model("/tmp/rtlab-doc-tiny5", #{});
    /// let run = train_lora(#{base: "/tmp/rtlab-doc-tiny5", data: from_records([#{instruction: "x", output: "y"}]),
    ///                        out: "/tmp/rtlab-doc-run5", r: 2, epochs: 1, batch_size: 1, grad_accum: 1});
    /// assert_eq(merge("/tmp/rtlab-doc-tiny5", run.adapter, "/tmp/rtlab-doc-merged5"), 14);
    /// ```
    #[rhai_fn(name = "merge", return_raw)]
    pub fn merge_adapter(
        ctx: NativeCallContext,
        base: &str,
        adapter: &str,
        out: &str,
    ) -> Result<i64, Box<EvalAltResult>> {
        let ws = Workspace::of(&ctx);
        Ok(super::merge(&ws.resolve(base), &ws.resolve(adapter), &ws.resolve(out))? as i64)
    }
}
