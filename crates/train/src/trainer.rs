//! The training loop: micro-batches with gradient accumulation, global-norm clipping, AdamW with
//! warmup and a decay schedule, seeded data order and dropout, atomic checkpoints, resume.
//!
//! Determinism is a contract: the data order of epoch `e` comes from `seed + e`, dropout's mask of
//! step `s` from `seed` and `s`, and a checkpoint stores the adapter, AdamW's moments and the loss
//! curve bit for bit; so a resumed run reproduces the uninterrupted run's curve exactly on the CPU.

use super::dpo::{self, PairExample, PairLogps};
use super::{peft, TrainError};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rtlab_model::checkpointing::Checkpointing;
use rtlab_model::examples::{self, Batch, Example};
use rtlab_model::model::{masked_nll, CausalLm, LoraSpec, Pass};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hyper {
    pub lr: f64,
    pub epochs: usize,
    pub batch_size: usize,
    pub grad_accum: usize,
    /// Warmup in optimizer steps.
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub checkpoint_every: usize,
    /// Stop after this many optimizer steps (for a quick look, and for tests).
    pub max_steps: Option<usize>,
}

impl Hyper {
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = (total - self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr * (1.0 - progress),
            Schedule::Cosine => self.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// One optimizer step of the curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepLog {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    /// DPO: the step's mean chosen − rejected implicit reward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_margin: Option<f64>,
    /// DPO: the share of the step's pairs whose chosen reward is the higher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_accuracy: Option<f64>,
    /// The loss on the validation rows, at the steps where it was measured (`eval_every`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    curve: Vec<StepLog>,
    tokens: usize,
    /// The step with the lowest validation loss so far, and that loss; its adapter is in `out/best`.
    #[serde(default)]
    best: Option<(usize, f64)>,
}

impl TrainerState {
    /// Counts a finished optimizer step and adds it to the curve.
    fn log(&mut self, epoch: usize, done: StepDone, lr: f64, tokens: usize) {
        self.tokens += tokens;
        self.step += 1;
        self.curve.push(StepLog {
            step: self.step,
            epoch,
            loss: done.loss,
            lr,
            grad_norm: done.grad_norm,
            tokens: self.tokens,
            reward_margin: done.rewards.map(|r| r.0),
            reward_accuracy: done.rewards.map(|r| r.1),
            eval_loss: None,
        });
    }
}

/// AdamW as PyTorch does it: decoupled weight decay, bias-corrected moments.
struct AdamW {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl AdamW {
    fn new(vars: &[Var]) -> candle_core::Result<AdamW> {
        Ok(AdamW {
            m: vars
                .iter()
                .map(|v| v.zeros_like())
                .collect::<Result<_, _>>()?,
            v: vars
                .iter()
                .map(|v| v.zeros_like())
                .collect::<Result<_, _>>()?,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        })
    }

    fn step(
        &mut self,
        vars: &[Var],
        grads: &[Tensor],
        lr: f64,
        wd: f64,
        t: usize,
    ) -> candle_core::Result<()> {
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = 1.0 - b2.powi(t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            self.m[i] = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + self.eps)?)?;
            let p = var.as_tensor();
            let decayed = (p * (1.0 - lr * wd))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub out: String,
    pub steps: usize,
    pub total_steps: usize,
    pub examples: usize,
    pub skipped_rows: Vec<usize>,
    pub curve: Vec<StepLog>,
    pub tokens_per_s: f64,
    /// Tokens/s over this run's steps after its first (which pages the weights in and sizes every
    /// buffer): the rate benchmarks compare, warm-up excluded as a peer's timing loop excludes it.
    /// None when the run made one step or none.
    #[serde(default)]
    pub steady_tokens_per_s: Option<f64>,
    pub seconds: f64,
    pub peak_rss_mb: f64,
    pub trainable_params: usize,
    pub resumed_from: Option<usize>,
    pub cancelled: bool,
    pub fingerprint: String,
    /// With validation: the step whose adapter had the lowest validation loss, and that loss.
    #[serde(default)]
    pub best_step: Option<usize>,
    #[serde(default)]
    pub best_eval_loss: Option<f64>,
    /// The step whose adapter `out` holds: the last, or the best with `keep: "best"`.
    #[serde(default)]
    pub kept_step: Option<usize>,
    /// The trainer's code identity when the run was made ('' before identities): a finished run
    /// from another trainer is trained again unless `--trust-cache`.
    #[serde(default)]
    pub code: String,
    /// The most layers a micro-batch recomputed in its backward (gradient checkpointing): 0 when
    /// every layer's graph was kept; 0 on a GPU, which keeps them all.
    #[serde(default)]
    pub recomputed_layers: usize,
}

pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Hands the memory a finished run freed back to the OS. glibc keeps freed blocks below its mmap
/// threshold (at most 32 MB, so every activation of a small model) in its heap; without this a run's
/// peak stayed resident after it ended: 12.5 GB for the rest of `scripts/local_model.rhai` after its
/// QLoRA cell peaked at 15.6 GB. Live memory is untouched, so results do not change.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the OS; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn vars_of(model: &CausalLm) -> Vec<(String, Var)> {
    model
        .adapters()
        .into_iter()
        .flat_map(|(path, l)| {
            [
                (format!("{path}.lora_A"), l.a.clone()),
                (format!("{path}.lora_B"), l.b.clone()),
            ]
        })
        .collect()
}

/// The GPU a job's steps run on, with the base weights to upload.
pub struct GpuSetup<'a> {
    pub gpu: rtlab_kernels::Gpu,
    pub weights: &'a rtlab_model::model::Weights,
    pub cfg: &'a rtlab_model::config::ModelConfig,
}

/// What the adapters are trained to do.
pub enum Objective<'a> {
    /// Next-token cross-entropy on the response tokens (supervised fine-tuning).
    Sft(&'a [Example]),
    /// Prefer each pair's chosen response over its rejected one, against a frozen reference whose
    /// log-probs were computed before the first step.
    Dpo {
        pairs: &'a [PairExample],
        reference: &'a PairLogps,
        settings: dpo::Settings,
    },
}

impl Objective<'_> {
    /// How many rows (examples, or pairs) an epoch goes through.
    fn rows(&self) -> usize {
        match self {
            Objective::Sft(examples) => examples.len(),
            Objective::Dpo { pairs, .. } => pairs.len(),
        }
    }
}

/// Validation during training: the rows, how often, and whether the run keeps its best adapter.
pub struct Validation<'a> {
    /// The validation rows, in the training objective's kind (examples, or pairs with their own
    /// reference log-probs).
    pub objective: Objective<'a>,
    /// Measure every this many optimizer steps (and after the last).
    pub every: usize,
    /// Leave the best-validated adapter in `out` at the end, rather than the last one.
    pub keep_best: bool,
}

/// What an optimizer step reports.
struct StepDone {
    loss: f64,
    grad_norm: f64,
    /// DPO's reward margin and accuracy over the step's pairs.
    rewards: Option<(f64, f64)>,
}

pub struct Job<'a> {
    pub gpu: Option<GpuSetup<'a>>,
    pub model: &'a CausalLm,
    pub spec: &'a LoraSpec,
    pub objective: Objective<'a>,
    pub validation: Option<Validation<'a>>,
    pub pad: u32,
    pub hyper: &'a Hyper,
    pub out: &'a Path,
    pub base_name: &'a str,
    pub resume: bool,
    pub fingerprint: &'a str,
    pub skipped_rows: Vec<usize>,
    /// Which layers' activations the CPU backward recomputes (see [`CausalLm::loss_and_grads`]).
    pub gradient_checkpointing: Checkpointing,
    /// The most layers a micro-batch of this run recomputed, for the record.
    pub most_recomputed: std::cell::Cell<usize>,
}

impl Job<'_> {
    /// The bottom layers to recompute for a micro-batch of token ids `inputs` [rows, width].
    fn recomputed_layers(&self, inputs: &Tensor) -> candle_core::Result<usize> {
        let (rows, width) = inputs.dims2()?;
        let n = self
            .gradient_checkpointing
            .recomputed_layers(self.model, rows, width);
        self.most_recomputed.set(self.most_recomputed.get().max(n));
        Ok(n)
    }
}

fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The newest complete checkpoint: a `step-N` directory (they appear by rename, so each is whole).
pub fn latest_checkpoint(out: &Path) -> Option<(usize, PathBuf)> {
    std::fs::read_dir(checkpoints_dir(out))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_prefix("step-")
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| (n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
}

/// Writes `checkpoints/step-N` via a temp dir and one rename; keeps the two newest.
fn write_checkpoint(
    job: &Job,
    adam: &AdamW,
    vars: &[(String, Var)],
    state: &TrainerState,
) -> Result<(), TrainError> {
    let dir = checkpoints_dir(job.out);
    std::fs::create_dir_all(&dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-step-")
        .tempdir_in(&dir)?;
    peft::save(tmp.path(), job.model, job.spec, job.base_name)?;
    let mut moments = BTreeMap::new();
    for (i, (name, _)) in vars.iter().enumerate() {
        for (kind, t) in [("m", &adam.m[i]), ("v", &adam.v[i])] {
            let t = t.to_dtype(DType::F32)?;
            moments.insert(
                format!("{name}.{kind}"),
                (t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?),
            );
        }
    }
    rtlab_model::tiny::write_f32_safetensors(&tmp.path().join("optimizer.safetensors"), &moments)?;
    rtlab_core::workspace::write_atomic(
        &tmp.path().join("trainer_state.json"),
        serde_json::to_string(state)?.as_bytes(),
    )?;
    if std::env::var("RTLAB_FAULT_CHECKPOINT").ok().as_deref()
        == Some(&format!("abort-before-rename-{}", state.step))
    {
        // Fault injection for the test that a kill mid-checkpoint keeps the last good one.
        std::process::abort();
    }
    let final_dir = dir.join(format!("step-{:08}", state.step));
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, &final_dir)?;
    // Keep the two newest; older ones and temp dirs left by a kill go.
    let mut steps: Vec<(usize, PathBuf)> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(".tmp-step-") && e.path() != tmp_path {
                let _ = std::fs::remove_dir_all(e.path());
            }
            name.strip_prefix("step-")
                .and_then(|n| n.parse().ok())
                .map(|n| (n, e.path()))
        })
        .collect();
    steps.sort();
    while steps.len() > 2 {
        let (_, p) = steps.remove(0);
        let _ = std::fs::remove_dir_all(p);
    }
    Ok(())
}

fn restore(
    job: &Job,
    vars: &[(String, Var)],
    adam: &mut AdamW,
) -> Result<Option<TrainerState>, TrainError> {
    let Some((_, dir)) = latest_checkpoint(job.out) else {
        return Ok(None);
    };
    let dev = &job.model.device;
    let (_, tensors) = peft::load(&dir, dev)?;
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), dev)?;
    for (i, (name, var)) in vars.iter().enumerate() {
        let (module, which) = name.rsplit_once('.').unwrap_or((name, ""));
        let pair = tensors.get(module).ok_or_else(|| {
            TrainError::Input(format!(
                "checkpoint {} has no adapter for {module}: was it made with other options?",
                dir.display()
            ))
        })?;
        let t = if which == "lora_A" { &pair.0 } else { &pair.1 };
        var.set(&t.to_dtype(job.model.dtype)?)?;
        for (kind, slot) in [("m", &mut adam.m[i]), ("v", &mut adam.v[i])] {
            let t = moments.get(&format!("{name}.{kind}")).ok_or_else(|| {
                TrainError::Input(format!(
                    "checkpoint {} lacks optimizer state {name}.{kind}",
                    dir.display()
                ))
            })?;
            *slot = t.to_dtype(job.model.dtype)?;
        }
    }
    let state: TrainerState =
        serde_json::from_str(&std::fs::read_to_string(dir.join("trainer_state.json"))?)?;
    Ok(Some(state))
}

/// Micro-batches of one epoch, in that epoch's seeded order.
fn epoch_batches(n: usize, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(epoch as u64));
    order.shuffle(&mut rng);
    order.chunks(batch_size).map(|c| c.to_vec()).collect()
}

pub fn steps_per_epoch(n: usize, h: &Hyper) -> usize {
    n.div_ceil(h.batch_size).div_ceil(h.grad_accum)
}

/// Trains the job's adapters: resumes from its last checkpoint when asked, runs the optimizer steps
/// (on the CPU, or on the GPU kernels when `job.gpu` is set), checkpoints every `checkpoint_every`
/// steps and on Ctrl-C, and saves the PEFT adapter at the end.
pub fn run(job: Job) -> Result<RunRecord, TrainError> {
    let h = job.hyper;
    let n = job.objective.rows();
    let per_epoch = steps_per_epoch(n, h);
    let total = h
        .max_steps
        .map_or(per_epoch * h.epochs, |m| m.min(per_epoch * h.epochs));
    let vars = vars_of(job.model);
    let plain: Vec<Var> = vars.iter().map(|(_, v)| v.clone()).collect();
    let trainable: usize = plain.iter().map(|v| v.elem_count()).sum();
    let mut adam = AdamW::new(&plain)?;
    let (resumed_from, mut state) = resume_or_start(&job, &vars, &mut adam)?;
    let mut on_gpu = start_on_gpu(&job, &vars, &adam)?;
    let mut progress =
        rtlab_core::progress::Progress::new("train", total as u64, state.step as u64);
    let started = Instant::now();
    let mut tokens_this_run = 0usize;
    // When this run's first step ended, and the tokens it took.
    let mut after_first: Option<(Instant, usize)> = None;
    let mut cancelled = false;
    while state.step < total {
        if rtlab_core::cancel_requested() {
            cancelled = true;
            break;
        }
        let step = state.step;
        let rows = step_rows(&job, step, per_epoch);
        let lr = h.lr_at(step, total);
        let (done, tokens) =
            objective_step(&job, on_gpu.as_mut(), &rows, &plain, &mut adam, lr, step)?;
        let loss_sum = done.loss;
        tokens_this_run += tokens;
        after_first.get_or_insert((Instant::now(), tokens_this_run));
        state.log(step / per_epoch, done, lr, tokens);
        progress.set(state.step as u64, || {
            let rate = tokens_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9);
            format!("loss {loss_sum:.4}  {rate:.0} tok/s")
        });
        after_step(&job, &mut state, total, &vars, &on_gpu, &mut adam)?;
    }
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let steady_tokens_per_s = after_first
        .filter(|&(_, first)| tokens_this_run > first)
        .map(|(at, first)| (tokens_this_run - first) as f64 / at.elapsed().as_secs_f64().max(1e-9));
    sync_from_gpu(&job, &vars, &on_gpu, &mut adam)?;
    let kept_step = if cancelled {
        write_checkpoint(&job, &adam, &vars, &state)?;
        None
    } else {
        Some(save_adapter(&job, &state)?)
    };
    let peak_rss_mb = peak_rss_mb();
    release_freed_memory();
    Ok(RunRecord {
        code: crate::code_identity(),
        out: job.out.display().to_string(),
        steps: state.step,
        total_steps: total,
        examples: n,
        skipped_rows: job.skipped_rows,
        curve: state.curve,
        tokens_per_s: tokens_this_run as f64 / seconds.max(1e-9),
        steady_tokens_per_s,
        seconds,
        peak_rss_mb,
        trainable_params: trainable,
        resumed_from,
        cancelled,
        fingerprint: job.fingerprint.to_string(),
        best_step: state.best.map(|b| b.0),
        best_eval_loss: state.best.map(|b| b.1),
        kept_step,
        recomputed_layers: job.most_recomputed.get(),
    })
}

/// With `resume`, the step and state of the last checkpoint (its adapters and moments loaded into
/// `vars` and `adam`), if there is one; otherwise a fresh state at step 0.
fn resume_or_start(
    job: &Job,
    vars: &[(String, Var)],
    adam: &mut AdamW,
) -> Result<(Option<usize>, TrainerState), TrainError> {
    let restored = if job.resume {
        restore(job, vars, adam)?
    } else {
        None
    };
    let resumed_from = restored.as_ref().map(|s| s.step);
    let state = restored.unwrap_or(TrainerState {
        step: 0,
        curve: Vec::new(),
        tokens: 0,
        best: None,
    });
    Ok((resumed_from, state))
}

/// Where the best-validated adapter is kept while training goes on.
fn best_dir(out: &Path) -> PathBuf {
    out.join("best")
}

/// Measures the validation loss now, writes it on the newest step of the curve, and saves the
/// adapter to `out/best` when it is the lowest so far.
fn validate(job: &Job, v: &Validation, state: &mut TrainerState) -> Result<(), TrainError> {
    let loss = validation_loss(job, &v.objective)?;
    if let Some(last) = state.curve.last_mut() {
        last.eval_loss = Some(loss);
    }
    if state.best.is_none_or(|(_, best)| loss < best) {
        state.best = Some((state.step, loss));
        let dir = best_dir(job.out);
        std::fs::create_dir_all(&dir)?;
        peft::save(&dir, job.model, job.spec, job.base_name)?;
    }
    Ok(())
}

/// The objective's mean loss over all its rows with the adapters as they are, without dropout: the
/// mean NLL per scored token (SFT), or the mean DPO loss per pair.
fn validation_loss(job: &Job, objective: &Objective) -> Result<f64, TrainError> {
    let batch = job.hyper.batch_size.max(1);
    match objective {
        Objective::Sft(examples) => {
            let (nll, _) =
                rtlab_model::model::mean_nll(job.model, examples, job.pad, batch, || {
                    Pass::reference(true).without_graph()
                })?;
            Ok(nll)
        }
        Objective::Dpo {
            pairs,
            reference,
            settings,
        } => {
            let mut total = 0.0;
            for (k, chunk) in pairs.chunks(batch).enumerate() {
                let refs: Vec<&PairExample> = chunk.iter().collect();
                let mut pass = Pass::reference(true).without_graph();
                let (pc, pr) =
                    dpo::pair_logps(job.model, &refs, job.pad, settings.loss, &mut pass)?;
                let range = k * batch..k * batch + chunk.len();
                let out = dpo::loss(
                    &pc,
                    &pr,
                    (&reference.chosen[range.clone()], &reference.rejected[range]),
                    settings,
                )?;
                total += out.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
            Ok(total / pairs.len().max(1) as f64)
        }
    }
}

/// One optimizer step of the job's objective over the step's rows; returns what it reports and
/// the tokens it went through.
fn objective_step(
    job: &Job,
    on_gpu: Option<&mut super::gpu::GpuStep>,
    rows: &[Vec<usize>],
    plain: &[Var],
    adam: &mut AdamW,
    lr: f64,
    step: usize,
) -> Result<(StepDone, usize), TrainError> {
    match &job.objective {
        Objective::Sft(examples) => {
            let prepared = sft_batches(job, examples, rows)?;
            let done = optimizer_step(job, on_gpu, &prepared, plain, adam, lr, step)?;
            Ok((done, prepared.iter().map(|b| b.tokens).sum()))
        }
        Objective::Dpo {
            pairs,
            reference,
            settings,
        } => {
            let done = dpo_step(
                job, on_gpu, pairs, reference, settings, rows, plain, adam, lr, step,
            )?;
            let tokens = rows.iter().flatten().map(|&i| pairs[i].tokens()).sum();
            Ok((done, tokens))
        }
    }
}

/// After a step: the validation loss when it is due (and after the last step), then a checkpoint
/// when one is due (the last step's state is saved by the run's end instead).
fn after_step(
    job: &Job,
    state: &mut TrainerState,
    total: usize,
    vars: &[(String, Var)],
    on_gpu: &Option<super::gpu::GpuStep>,
    adam: &mut AdamW,
) -> Result<(), TrainError> {
    if let Some(v) = &job.validation {
        if state.step.is_multiple_of(v.every) || state.step == total {
            sync_from_gpu(job, vars, on_gpu, adam)?;
            validate(job, v, state)?;
        }
    }
    let every = job.hyper.checkpoint_every;
    if every > 0 && state.step.is_multiple_of(every) && state.step < total {
        sync_from_gpu(job, vars, on_gpu, adam)?;
        write_checkpoint(job, adam, vars, state)?;
    }
    Ok(())
}

/// Saves the finished run's adapter in `out`: the last one, or with `keep: "best"` the
/// best-validated one. Returns the step whose adapter `out` holds.
fn save_adapter(job: &Job, state: &TrainerState) -> Result<usize, TrainError> {
    peft::save(job.out, job.model, job.spec, job.base_name)?;
    match (&job.validation, state.best) {
        (Some(v), Some((step, _))) if v.keep_best => {
            // The best adapter replaces the last one in `out`, file by file (both are whole).
            for file in [peft::WEIGHTS_FILE, peft::CONFIG_FILE] {
                std::fs::copy(best_dir(job.out).join(file), job.out.join(file))?;
            }
            Ok(step)
        }
        _ => Ok(state.step),
    }
}

/// The GPU step for `device: "wgpu"` or `"cuda"`, started from the adapters and AdamW's moments as
/// they are now (fresh, or restored from a checkpoint); `None` on the CPU.
fn start_on_gpu(
    job: &Job,
    vars: &[(String, Var)],
    adam: &AdamW,
) -> Result<Option<super::gpu::GpuStep>, TrainError> {
    let Some(g) = &job.gpu else { return Ok(None) };
    let moments: Vec<(String, Tensor, Tensor)> = vars
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (name.clone(), adam.m[i].clone(), adam.v[i].clone()))
        .collect();
    let step = super::gpu::GpuStep::new(&g.gpu, g.cfg, g.weights, job.model, job.spec, &moments)?;
    Ok(Some(step))
}

/// Brings the GPU's adapters and moments into the candle model and AdamW before anything is saved.
fn sync_from_gpu(
    job: &Job,
    vars: &[(String, Var)],
    on_gpu: &Option<super::gpu::GpuStep>,
    adam: &mut AdamW,
) -> Result<(), TrainError> {
    let Some(g) = on_gpu else { return Ok(()) };
    let moments = g.download(job.model)?;
    for (i, (name, _)) in vars.iter().enumerate() {
        let (m, v) = &moments[name];
        adam.m[i] = m.clone();
        adam.v[i] = v.clone();
    }
    Ok(())
}

/// The rows of each of the `grad_accum` micro-batches of optimizer step `step`, in its epoch's
/// seeded order.
fn step_rows(job: &Job, step: usize, per_epoch: usize) -> Vec<Vec<usize>> {
    let h = job.hyper;
    let batches = epoch_batches(job.objective.rows(), h.batch_size, h.seed, step / per_epoch);
    let first = (step % per_epoch) * h.grad_accum;
    batches.into_iter().skip(first).take(h.grad_accum).collect()
}

/// The padded micro-batches of SFT examples for the given rows.
fn sft_batches(
    job: &Job,
    examples: &[Example],
    rows: &[Vec<usize>],
) -> Result<Vec<Batch>, TrainError> {
    rows.iter()
        .map(|idx| {
            let ex: Vec<&Example> = idx.iter().map(|&i| &examples[i]).collect();
            examples::batch(&ex, job.pad, job.model.dtype, &job.model.device)
        })
        .collect::<Result<_, _>>()
        .map_err(TrainError::from)
}

/// Dropout's seed for micro-batch `k` of optimizer step `step`, the same on both devices.
fn dropout_seed(h: &Hyper, step: usize, k: usize) -> u64 {
    h.seed ^ ((step as u64) << 20) ^ k as u64
}

/// One optimizer step over the micro-batches, on the GPU or the CPU: the step's loss (the micro-batch
/// losses summed, each averaged over the step's scored tokens) and its gradient norm before clipping.
fn optimizer_step(
    job: &Job,
    on_gpu: Option<&mut super::gpu::GpuStep>,
    prepared: &[Batch],
    plain: &[Var],
    adam: &mut AdamW,
    lr: f64,
    step: usize,
) -> Result<StepDone, TrainError> {
    let h = job.hyper;
    let scored: usize = prepared.iter().map(|b| b.scored).sum::<usize>().max(1);
    let Some(g) = on_gpu else {
        let (loss, grad_norm) = cpu_step(plain, adam, lr, h, step, prepared.len(), |k| {
            let b = &prepared[k];
            let mut pass = Pass::training(dropout_seed(h, step, k));
            Ok(job.model.loss_and_grads(
                &b.inputs,
                &b.targets,
                &mut pass,
                job.recomputed_layers(&b.inputs)?,
                |picked| masked_nll(picked, &b.mask, scored as f64),
            )?)
        })?;
        return Ok(StepDone {
            loss,
            grad_norm,
            rewards: None,
        });
    };
    let mut loss = 0.0;
    for (k, b) in prepared.iter().enumerate() {
        loss += g.micro(b, scored as f64, dropout_seed(h, step, k))?;
    }
    let grad_norm = g.finish(lr, h.weight_decay, h.max_grad_norm, step + 1)?;
    Ok(StepDone {
        loss,
        grad_norm,
        rewards: None,
    })
}

/// One DPO optimizer step on the CPU: each micro-batch's pairs go through the policy in one forward
/// (chosen then rejected), their loss against the cached reference log-probs is averaged over the
/// step's pairs, and the implicit rewards are gathered for the curve.
#[allow(clippy::too_many_arguments)] // the step's inputs, named as the loop has them
fn dpo_step(
    job: &Job,
    on_gpu: Option<&mut super::gpu::GpuStep>,
    pairs: &[PairExample],
    reference: &PairLogps,
    settings: &dpo::Settings,
    rows: &[Vec<usize>],
    plain: &[Var],
    adam: &mut AdamW,
    lr: f64,
    step: usize,
) -> Result<StepDone, TrainError> {
    let h = job.hyper;
    let n_pairs = rows.iter().map(Vec::len).sum::<usize>().max(1) as f64;
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    if let Some(g) = on_gpu {
        let loss = dpo_gpu_micros(
            job,
            g,
            pairs,
            reference,
            settings,
            rows,
            n_pairs,
            step,
            (&mut chosen, &mut rejected),
        )?;
        let grad_norm = g.finish(lr, h.weight_decay, h.max_grad_norm, step + 1)?;
        return Ok(StepDone {
            loss,
            grad_norm,
            rewards: Some(dpo::reward_stats(&chosen, &rejected)),
        });
    }
    let (loss, grad_norm) = cpu_step(plain, adam, lr, h, step, rows.len(), |k| {
        let idx = &rows[k];
        let batch: Vec<&PairExample> = idx.iter().map(|&i| &pairs[i]).collect();
        let mut pass = Pass::training(dropout_seed(h, step, k));
        let rc: Vec<f64> = idx.iter().map(|&i| reference.chosen[i]).collect();
        let rr: Vec<f64> = idx.iter().map(|&i| reference.rejected[i]).collect();
        let b = dpo::pair_batch(job.model, &batch, job.pad)?;
        Ok(job.model.loss_and_grads(
            &b.inputs,
            &b.targets,
            &mut pass,
            job.recomputed_layers(&b.inputs)?,
            |picked| {
                let (pc, pr) = dpo::pair_logps_of(picked, &b, batch.len(), settings.loss)?;
                let out = dpo::loss(&pc, &pr, (&rc, &rr), settings)?;
                chosen.extend(out.chosen_rewards);
                rejected.extend(out.rejected_rewards);
                out.loss_sum / n_pairs
            },
        )?)
    })?;
    Ok(StepDone {
        loss,
        grad_norm,
        rewards: Some(dpo::reward_stats(&chosen, &rejected)),
    })
}

/// DPO's micro-batches on the GPU kernels: a forward gives each sequence's log-prob, the loss and
/// its slope per sequence come in closed form on the host, and a forward + backward with each
/// sequence's tokens weighted by −slope adds the gradient (the chain rule through the sequence's
/// log-prob; the same dropout masks in both passes). Returns the step's loss; the implicit rewards
/// go to `rewards`.
#[allow(clippy::too_many_arguments)] // the step's inputs, named as the loop has them
fn dpo_gpu_micros(
    job: &Job,
    g: &mut super::gpu::GpuStep,
    pairs: &[PairExample],
    reference: &PairLogps,
    settings: &dpo::Settings,
    rows: &[Vec<usize>],
    n_pairs: f64,
    step: usize,
    rewards: (&mut Vec<f64>, &mut Vec<f64>),
) -> Result<f64, TrainError> {
    let mut loss = 0.0;
    for (k, idx) in rows.iter().enumerate() {
        let seqs: Vec<&Example> = idx
            .iter()
            .map(|&i| &pairs[i].chosen)
            .chain(idx.iter().map(|&i| &pairs[i].rejected))
            .collect();
        let b = examples::batch(&seqs, job.pad, job.model.dtype, &job.model.device)?;
        let seed = dropout_seed(job.hyper, step, k);
        // IPO scores each sequence's mean token log-prob, as the CPU path does.
        let per_token: Vec<f64> = (0..seqs.len())
            .map(|r| match settings.loss {
                dpo::Loss::Ipo => b.raw.2[r * b.width..(r + 1) * b.width]
                    .iter()
                    .map(|m| *m as f64)
                    .sum::<f64>()
                    .max(1.0),
                dpo::Loss::Sigmoid => 1.0,
            })
            .collect();
        let logps: Vec<f64> = g
            .sequence_logps(&b, seed)?
            .iter()
            .zip(&per_token)
            .map(|(l, c)| l / c)
            .collect();
        let kk = idx.len();
        let mut weights = vec![0.0; 2 * kk];
        for (j, &i) in idx.iter().enumerate() {
            let (rc, rr) = (reference.chosen[i], reference.rejected[i]);
            let (l, slope) =
                dpo::pair_loss_and_slope((logps[j], logps[kk + j]), (rc, rr), settings);
            loss += l / n_pairs;
            // The backward adds the gradient of Σ w·Σ mask·nll = −Σ w·(summed log-prob), so
            // w = −d(L / n_pairs)/d(summed log-prob), with IPO's average dividing once more.
            weights[j] = -slope / n_pairs / per_token[j];
            weights[kk + j] = slope / n_pairs / per_token[kk + j];
            rewards.0.push(settings.beta * (logps[j] - rc));
            rewards.1.push(settings.beta * (logps[kk + j] - rr));
        }
        g.weighted_micro(&b, &weights, seed)?;
    }
    Ok(loss)
}

/// One optimizer step on the CPU: forward + backward of each of the `micros` micro-batches (their
/// losses, already scaled to the step, come from `micro_loss`), gradients summed, clipped to
/// `max_grad_norm`, AdamW. Returns the step's loss and its gradient norm before clipping.
fn cpu_step(
    plain: &[Var],
    adam: &mut AdamW,
    lr: f64,
    h: &Hyper,
    step: usize,
    micros: usize,
    mut micro_loss: impl FnMut(usize) -> Result<(Tensor, GradStore), TrainError>,
) -> Result<(f64, f64), TrainError> {
    let mut sums: Vec<Option<Tensor>> = vec![None; plain.len()];
    let mut loss_sum = 0.0;
    for k in 0..micros {
        let (loss, grads) = micro_loss(k)?;
        loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        for (i, var) in plain.iter().enumerate() {
            if let Some(g) = grads.get(var.as_tensor()) {
                sums[i] = Some(match sums[i].take() {
                    None => g.clone(),
                    Some(s) => (s + g)?,
                });
            }
        }
    }
    let grads: Vec<Tensor> = sums
        .into_iter()
        .zip(plain)
        .map(|(g, v)| g.map(Ok).unwrap_or_else(|| v.zeros_like()))
        .collect::<Result<_, candle_core::Error>>()?;
    let mut norm_sq = 0.0;
    for g in &grads {
        norm_sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    let grad_norm = norm_sq.sqrt();
    let grads = if h.max_grad_norm > 0.0 && grad_norm > h.max_grad_norm {
        let factor = h.max_grad_norm / (grad_norm + 1e-6);
        grads
            .iter()
            .map(|g| g * factor)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        grads
    };
    adam.step(plain, &grads, lr, h.weight_decay, step + 1)?;
    Ok((loss_sum, grad_norm))
}
