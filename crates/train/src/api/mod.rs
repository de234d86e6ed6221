//! The trainer's Rhai surface: `train_lora`, `train_dpo`, `load_model`, `generate`, `perplexity`,
//! `merge`, `export_gguf`, `ollama_modelfile`, `create_tiny_model`. Options are read here, once,
//! into a typed [`TrainRequest`]; the trainer below never sees a Rhai value.

use crate::error::{bad, TrainError};
use crate::request::TrainRequest;
use crate::trainer::{self, RunRecord};
use crate::{pairs_of, train};
use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};
use rtlab_core::options::Options;
use rtlab_core::Workspace;
use rtlab_data::Frame;
use rtlab_model::generate::{GenOptions, LocalModel};
use rtlab_model::{config, gguf, models, tiny};
use std::path::Path;
use std::sync::Arc;

mod parse;

use parse::{frame_value, parse_dpo, parse_sft};

rhai::def_package! {
    /// Training and local models: `train_lora`, `train_dpo`, `load_model`, `generate`, `perplexity`,
    /// merging and GGUF export.
    pub TrainPackage(module) {
        register(module);
    }
}

rtlab_core::script_error!(TrainError);

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
    m.insert(
        "steady_tokens_per_s".into(),
        rec.steady_tokens_per_s
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT),
    );
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
    m.insert(
        "recomputed_layers".into(),
        (rec.recomputed_layers as i64).into(),
    );
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

/// The Rhai-visible local model (cheap to clone).
#[derive(Clone)]
pub struct Local(pub Arc<LocalModel>);

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
        interrupted: rtlab_core::cancel_requested,
    })
}

pub fn register(module: &mut Module) {
    module.set_custom_type::<Local>("LocalModel");
    FuncRegistration::new("to_string").set_into_module(module, |m: &mut Local| describe(m));
    FuncRegistration::new("to_debug").set_into_module(module, |m: &mut Local| describe(m));
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
        let model = rtlab_model::load_local(
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
    /// curve (a DataFrame of step, epoch, loss, lr, grad_norm), tokens_per_s, steady_tokens_per_s
    /// (the rate after the run's first step, which pages the weights in; `()` with one step),
    /// seconds, peak_rss_mb, recomputed_layers, trainable_params, resumed_from, cancelled, cached,
    /// loss_svg}`.
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
    /// file's quantization and only the adapters are f32; CPU only), `gradient_checkpointing`
    /// ("auto", the default: the CPU path keeps the top layers' activations while they fit in half
    /// the memory available at the start, and recomputes the rest in the backward; true recomputes
    /// every layer, one at a time: the least memory, one more forward; false keeps every layer's:
    /// the fastest; the same numbers whichever; the record's `recomputed_layers` says how many a
    /// step recomputed at most).
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
            let n = || -> Result<usize, rtlab_core::OptionError> {
                Ok(o.int_at_least(k, 1)?.unwrap_or(1) as usize)
            };
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
        Ok(tiny::create(&Workspace::of(&ctx).resolve(dir), &spec).map_err(TrainError::from)?)
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
        let (ppl, _) = model
            .0
            .perplexity(&rows, max_len, batch)
            .map_err(|e| named(e.into()))?;
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
        let m = rtlab_model::load_local(
            &models::locate(dir, &ws.base_dir()).map_err(TrainError::from)?,
            adapter.as_deref(),
            o.string("template")?,
            o.bool("dequantize")?.unwrap_or(false),
        )
        .map_err(TrainError::from)?;
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
        Ok(model
            .0
            .answer(prompt, &gen_options(&options)?)
            .map_err(TrainError::from)?)
    }

    /// `generate` with the default options (greedy, 256 tokens).
    #[rhai_fn(name = "generate", return_raw)]
    pub fn generate_default(model: &mut Local, prompt: &str) -> Result<String, Box<EvalAltResult>> {
        Ok(model
            .0
            .answer(prompt, &GenOptions::default())
            .map_err(TrainError::from)?)
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
            .logits(text)
            .map_err(TrainError::from)?
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
            .tokens(text)
            .map_err(TrainError::from)?
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
        rtlab_model::export_merged_gguf(&ws.base_dir(), base, &ws.resolve(adapter), &out, quant)
            .map_err(TrainError::from)?;
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
        let text = rtlab_model::modelfile(
            &from,
            o.string("adapter")?.as_deref(),
            o.string("system")?.as_deref(),
            o.string("template")?.as_deref(),
            &parameters,
        )
        .map_err(TrainError::from)?;
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
        Ok(
            rtlab_model::merge(&ws.resolve(base), &ws.resolve(adapter), &ws.resolve(out))
                .map_err(TrainError::from)? as i64,
        )
    }
}

/// How a local model shows and persists (as what it was loaded from, with the files' stamps).
pub fn rich_types() -> Vec<rtlab_core::values::RichType> {
    vec![rtlab_core::values::RichType {
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
    }]
}
