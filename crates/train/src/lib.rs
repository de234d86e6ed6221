//! The LoRA and DPO trainer: `train_lora(#{...})` fine-tunes LoRA adapters of a Llama or Qwen2
//! model (a Hugging Face directory or a GGUF) on a DataFrame or JSONL file, writes them in PEFT
//! format, and returns a run record (loss curve, tokens/s, peak memory); `train_dpo` optimizes
//! preferences from an SFT adapter. The model itself (layers, kernels, files, generation) is the
//! `rtlab-model` library; the GPU step's kernels are `rtlab-kernels`.
//!
//! - [`api`](crate) reads the Rhai options, once, into a typed [`request::TrainRequest`], and is the
//!   only module that turns results back into Rhai values (with `pairs`, which reads a frame's
//!   cells);
//! - this module runs a request: every input is checked before any weight is loaded (options,
//!   `config.json`, the tokenizer, the dataset's columns, the prompt lengths). A run in `out` that
//!   finished with the same data, base and options is returned from its `run.json` instead of
//!   retraining; an interrupted one resumes from its newest checkpoint;
//! - [`trainer`] is the optimizer loop (CPU or GPU), [`dpo`] the preference losses, [`gpu`] the
//!   cubecl step.

/// The identity of the trainer's code: this crate's sources and the model library's (a changed
/// forward or backward changes what training computes), with `Cargo.lock`. Every result the trainer
/// caches is keyed on it, so a changed build never serves an old answer.
pub fn code_identity() -> String {
    format!(
        "{}/{}",
        rtlab_core::provenance::code_identity("trainer", env!("RTLAB_CODE_IDENTITY")),
        rtlab_core::provenance::code_identity("model", rtlab_model::CODE_IDENTITY)
    )
}

pub mod dpo;
pub mod gpu;

mod api;
mod error;
mod pairs;
mod request;

pub use api::{rich_types, Local, TrainPackage};
use error::bad;
pub use error::TrainError;
use pairs::{preference_rows, PairPrompt};
use request::{Task, TrainRequest};

#[cfg(test)]
mod tests;
pub mod trainer;

use candle_core::{DType, Device};
use config::ModelConfig;
use examples::DEFAULT_TEMPLATE;
use model::{load_weights, CausalLm, LoraSpec};
use rtlab_core::Workspace;
use rtlab_data::hygiene::TRAINING_DATA_FILE;
use rtlab_data::Frame;
use rtlab_model::{config, examples, generate, gguf, model, peft};
use std::path::Path;
use trainer::{Hyper, RunRecord};

/// The (prompt, response) pairs of the named columns; an error lists the columns there are.
pub(crate) fn pairs_of(
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
            (None, Some(chat)) => Ok(chat.render(prompt)?),
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
        if let Some(before) =
            rtlab_data::hygiene::read_training_sketch(start).map_err(|e| bad(e.to_string()))?
        {
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
pub(crate) fn train(ws: &Workspace, req: TrainRequest) -> Result<(RunRecord, bool), TrainError> {
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
        most_recomputed: Default::default(),
    })?;
    write_run(&req, &record)?;
    Ok((record, false))
}
