//! The GPU path of a training step: forward, backward and AdamW of every micro-batch run on
//! `rtlab_kernels::GpuLlama` (cubecl kernels on wgpu, or CUDA with the `cuda` feature). Only token
//! ids, masks and the loss cross the bus during a step. Checkpoints and the final save download the
//! adapters and AdamW's moments into the candle model, so every file a run writes has the same
//! format whichever device trained it, and a run can resume on the other device.

use super::TrainError;
use candle_core::{DType, Tensor};
use rand::SeedableRng;
use rtlab_kernels::{AdamWConfig, Gpu, GpuLlama, LlamaShape};
use rtlab_model::config::ModelConfig;
use rtlab_model::examples::Batch;
use rtlab_model::model::{dropout_mask, CausalLm, LoraSpec, Weights};
use std::collections::HashMap;

impl From<rtlab_kernels::KernelError> for TrainError {
    fn from(e: rtlab_kernels::KernelError) -> Self {
        TrainError::Input(format!("GPU: {e}"))
    }
}

/// Opens the device `train_lora` was asked for.
pub fn open(device: &str) -> Result<Gpu, TrainError> {
    match device {
        "wgpu" => Ok(Gpu::wgpu()?),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Gpu::cuda(0)?),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err(TrainError::Input(
            "device \"cuda\": this rtlab was built without the `cuda` feature (cargo build --release --features cuda); use \"wgpu\" or \"cpu\"".into(),
        )),
        other => Err(TrainError::Input(format!("no GPU device {other:?}"))),
    }
}

pub struct GpuStep {
    llama: GpuLlama,
    dropout: f64,
}

fn flat(t: &Tensor) -> Result<(Vec<usize>, Vec<f32>), TrainError> {
    Ok((
        t.dims().to_vec(),
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
    ))
}

/// The adapters' dropout masks of one pass, drawn from `seed` in forward order as the CPU path
/// draws them; none when `p` is 0.
fn dropout_masks(p: f64, seed: u64) -> impl FnMut(&str, usize, usize) -> Option<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    move |_: &str, r: usize, c: usize| (p > 0.0).then(|| dropout_mask(r * c, p, &mut rng))
}

impl GpuStep {
    /// Uploads the base weights and the model's current adapters (fresh or restored) and moments.
    pub fn new(
        gpu: &Gpu,
        cfg: &ModelConfig,
        weights: &Weights,
        model: &CausalLm,
        spec: &LoraSpec,
        moments: &[(String, Tensor, Tensor)],
    ) -> Result<GpuStep, TrainError> {
        let shape = LlamaShape {
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            layers: cfg.num_hidden_layers,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
            vocab: cfg.vocab_size,
            rms_eps: cfg.rms_norm_eps as f32,
            rope_theta: cfg.rope_theta,
            qkv_bias: cfg.qkv_bias,
            max_positions: cfg.max_position_embeddings,
        };
        let mut host = HashMap::new();
        for (name, t) in weights {
            if cfg.tie_word_embeddings && name == "lm_head.weight" {
                continue;
            }
            host.insert(name.clone(), flat(t)?);
        }
        let mut adapters = HashMap::new();
        for (path, l) in model.adapters() {
            adapters.insert(path, (flat(l.a.as_tensor())?.1, flat(l.b.as_tensor())?.1));
        }
        let mut llama = GpuLlama::new(gpu, shape, &host, &adapters, spec.r, spec.scale() as f32)?;
        // Moments arrive per variable (`path.lora_A`, m, v); the GPU keeps [mA, vA, mB, vB] per module.
        let mut per_module: HashMap<String, [Vec<f32>; 4]> = HashMap::new();
        for (name, m, v) in moments {
            let (module, which) = name.rsplit_once('.').unwrap_or((name, ""));
            let slot = per_module
                .entry(module.to_string())
                .or_insert_with(|| [vec![], vec![], vec![], vec![]]);
            let base = if which == "lora_A" { 0 } else { 2 };
            slot[base] = flat(m)?.1;
            slot[base + 1] = flat(v)?.1;
        }
        llama.set_moments(&per_module)?;
        Ok(GpuStep {
            llama,
            dropout: spec.dropout,
        })
    }

    /// Forward + backward of one micro-batch, adding its gradients; returns its share of the loss.
    /// Dropout masks come from the same seeded generator, in the same order, as the CPU path's.
    pub fn micro(&mut self, b: &Batch, denominator: f64, seed: u64) -> Result<f64, TrainError> {
        let (ids, targets, mask) = &b.raw;
        let rows = ids.len() / b.width.max(1);
        let mut masks = dropout_masks(self.dropout, seed);
        let loss = self.llama.forward_backward(
            ids,
            targets,
            mask,
            rows,
            b.width,
            denominator as f32,
            &mut masks,
        )?;
        Ok(loss as f64)
    }

    /// The log-prob of each row's scored tokens (Σ over the mask of −nll), from a forward whose
    /// dropout masks are drawn from `seed` as [`GpuStep::weighted_micro`] draws them.
    pub fn sequence_logps(&mut self, b: &Batch, seed: u64) -> Result<Vec<f64>, TrainError> {
        let (ids, targets, mask) = &b.raw;
        let rows = ids.len() / b.width.max(1);
        let mut masks = dropout_masks(self.dropout, seed);
        let nll = self
            .llama
            .token_nll(ids, targets, rows, b.width, &mut masks)?;
        Ok((0..rows)
            .map(|r| {
                (r * b.width..(r + 1) * b.width)
                    .map(|j| -(nll[j] as f64) * mask[j] as f64)
                    .sum()
            })
            .collect())
    }

    /// Forward + backward of one micro-batch whose row `r` is weighted by `row_weights[r]`: adds
    /// the gradients of `Σ_r w_r · Σ_t mask · nll` (DPO's chain rule through each sequence's
    /// log-prob), with the dropout masks of `seed`.
    pub fn weighted_micro(
        &mut self,
        b: &Batch,
        row_weights: &[f64],
        seed: u64,
    ) -> Result<(), TrainError> {
        let (ids, targets, mask) = &b.raw;
        let rows = ids.len() / b.width.max(1);
        let weighted: Vec<f32> = mask
            .iter()
            .enumerate()
            .map(|(j, m)| m * row_weights[j / b.width] as f32)
            .collect();
        let mut masks = dropout_masks(self.dropout, seed);
        self.llama
            .forward_backward(ids, targets, &weighted, rows, b.width, 1.0, &mut masks)?;
        Ok(())
    }

    /// Clips, steps AdamW (step `t`, 1-based) and clears the gradients; returns the pre-clip norm.
    pub fn finish(
        &mut self,
        lr: f64,
        weight_decay: f64,
        max_norm: f64,
        t: usize,
    ) -> Result<f64, TrainError> {
        let norm = self.llama.grad_norm()? as f64;
        if max_norm > 0.0 && norm > max_norm {
            self.llama.scale_grads((max_norm / (norm + 1e-6)) as f32)?;
        }
        let cfg = AdamWConfig {
            lr: lr as f32,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: weight_decay as f32,
        };
        self.llama.adamw_step(&cfg, t)?;
        self.llama.zero_grads()?;
        Ok(norm)
    }

    /// Copies the adapters into the model's variables, and returns the moments per variable name.
    pub fn download(
        &self,
        model: &CausalLm,
    ) -> Result<HashMap<String, (Tensor, Tensor)>, TrainError> {
        let adapters = self.llama.adapters()?;
        let dev = &model.device;
        for (path, l) in model.adapters() {
            let (a, b) = adapters
                .get(&path)
                .ok_or_else(|| TrainError::Input(format!("GPU model has no adapter {path}")))?;
            l.a.set(&Tensor::from_vec(a.clone(), l.a.shape(), dev)?.to_dtype(model.dtype)?)?;
            l.b.set(&Tensor::from_vec(b.clone(), l.b.shape(), dev)?.to_dtype(model.dtype)?)?;
        }
        let mut out = HashMap::new();
        for (path, [ma, va, mb, vb]) in self.llama.moments()? {
            let l = model
                .adapters()
                .into_iter()
                .find(|(p, _)| *p == path)
                .map(|(_, l)| (l.a.shape().clone(), l.b.shape().clone()))
                .ok_or_else(|| {
                    TrainError::Input(format!("GPU moments for unknown adapter {path}"))
                })?;
            let t = |v: Vec<f32>, s: &candle_core::Shape| {
                Tensor::from_vec(v, s.clone(), dev)?.to_dtype(model.dtype)
            };
            out.insert(format!("{path}.lora_A"), (t(ma, &l.0)?, t(va, &l.0)?));
            out.insert(format!("{path}.lora_B"), (t(mb, &l.1)?, t(vb, &l.1)?));
        }
        Ok(out)
    }
}
