//! A Llama/Qwen2 decoder with LoRA adapters, trained entirely on the device.
//!
//! The frozen base weights (HF layout: `Linear.weight` is `[out, in]`), the adapters `A` [r, in]
//! and `B` [out, r], their gradients and AdamW moments all live on the device. One call of
//! [`GpuLlama::forward_backward`] uploads the token ids, targets, loss weights and dropout masks,
//! runs the forward pass keeping every activation the backward pass needs, the loss, and the
//! backward pass (adding the adapters' gradients into their buffers), and reads back one float:
//! the loss. [`GpuLlama::adamw_step`] then updates every `A` and `B` in place.
//!
//! Per layer (HF semantics): `h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)),
//! v_proj(n1)))` with `n1 = rmsnorm(x)`, then `x' = h + down_proj(silu(gate_proj(n2)) ⊙
//! up_proj(n2))` with `n2 = rmsnorm(h)`; `logits = rmsnorm(x_L) · lm_headᵀ`. An adapted
//! projection computes `y = x Wᵀ + b + scale · ((x ⊙ mask) Aᵀ) Bᵀ`.
//!
//! Memory: every activation of every layer is kept until the backward pass (no checkpointing),
//! including the `[batch·heads, seq, seq]` attention probabilities and the `[batch·seq, vocab]`
//! logits and their gradient.

use std::collections::HashMap;

use crate::attention::AttentionDims;
use crate::error::{shape_err, KernelError, Result};
use crate::gpu::{Gpu, GpuTensor};
use crate::reference::AdamWConfig;

/// The architecture of a decoder (the fields of an HF `config.json` that matter here).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlamaShape {
    /// `hidden_size`.
    pub hidden: usize,
    /// `intermediate_size`.
    pub intermediate: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads`.
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `head_dim` (usually `hidden / heads`).
    pub head_dim: usize,
    /// `vocab_size`.
    pub vocab: usize,
    /// `rms_norm_eps`.
    pub rms_eps: f32,
    /// `rope_theta`.
    pub rope_theta: f64,
    /// Whether q/k/v have biases (Qwen2).
    pub qkv_bias: bool,
    /// `max_position_embeddings` (0 = unchecked).
    pub max_positions: usize,
}

impl LlamaShape {
    /// `(out, in)` of projection `p` (an index into [`PROJECTIONS`]).
    pub fn projection_dims(&self, p: usize) -> (usize, usize) {
        let (h, q, kv, i) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        );
        match p {
            0 => (q, h),
            1 | 2 => (kv, h),
            3 => (h, q),
            4 | 5 => (i, h),
            _ => (h, i),
        }
    }

    fn check(&self) -> Result<()> {
        const OP: &str = "GpuLlama::new";
        let s = self;
        if s.hidden == 0 || s.intermediate == 0 || s.heads == 0 || s.kv_heads == 0 || s.vocab == 0 {
            return Err(shape_err(OP, format!("empty dimension in {s:?}")));
        }
        if !s.heads.is_multiple_of(s.kv_heads) {
            return Err(shape_err(OP, format!("kv_heads must divide heads: {s:?}")));
        }
        if s.head_dim < 2 || !s.head_dim.is_multiple_of(2) {
            return Err(shape_err(OP, format!("head_dim must be even: {s:?}")));
        }
        Ok(())
    }
}

/// HF weight name → `(shape, data)`.
pub type WeightMap = HashMap<String, (Vec<usize>, Vec<f32>)>;
/// Module path (e.g. `model.layers.0.self_attn.q_proj`) → `(A [r·in], B [out·r])`, or their
/// gradients.
pub type AdapterMap = HashMap<String, (Vec<f32>, Vec<f32>)>;
/// The dropout callback: `(module path, rows, cols) → Some(mask [rows·cols])` or `None`.
pub type DropoutFn<'a> = dyn FnMut(&str, usize, usize) -> Option<Vec<f32>> + 'a;

/// The seven linear layers of a decoder layer, in forward order, as HF names them under
/// `model.layers.{i}.`.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// One adapter with its gradients and AdamW moments.
struct Adapter {
    a: GpuTensor,
    b: GpuTensor,
    da: GpuTensor,
    db: GpuTensor,
    ma: GpuTensor,
    va: GpuTensor,
    mb: GpuTensor,
    vb: GpuTensor,
}

struct Proj {
    w: GpuTensor,
    bias: Option<GpuTensor>,
    lora: Option<Adapter>,
    d_in: usize,
    d_out: usize,
}

struct Layer {
    input_norm: GpuTensor,
    post_norm: GpuTensor,
    proj: Vec<Proj>,
}

/// What an adapted projection's forward pass keeps for backward.
#[derive(Default)]
struct ProjSave {
    /// The adapter's input `x ⊙ mask` (or `x`).
    xd: Option<GpuTensor>,
    mask: Option<GpuTensor>,
    /// `xd Aᵀ`.
    xa: Option<GpuTensor>,
}

struct LayerSave {
    x: GpuTensor,
    rstd1: GpuTensor,
    qr: GpuTensor,
    kr: GpuTensor,
    v: GpuTensor,
    probs: GpuTensor,
    h: GpuTensor,
    rstd2: GpuTensor,
    g: GpuTensor,
    u: GpuTensor,
    proj: Vec<ProjSave>,
}

struct ForwardSave {
    layers: Vec<LayerSave>,
    xf: GpuTensor,
    rstdf: GpuTensor,
    logits: GpuTensor,
}

/// A decoder with frozen base weights and trainable LoRA adapters on the device.
pub struct GpuLlama {
    gpu: Gpu,
    shape: LlamaShape,
    embed: GpuTensor,
    lm_head: GpuTensor,
    norm: GpuTensor,
    layers: Vec<Layer>,
    r: usize,
    scale: f32,
    /// `(batch, seq, cos, sin)` of the last call.
    rope: Option<(usize, usize, GpuTensor, GpuTensor)>,
}

impl std::fmt::Debug for GpuLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuLlama")
            .field("shape", &self.shape)
            .field("r", &self.r)
            .field("scale", &self.scale)
            .field("adapters", &self.adapter_paths().count())
            .finish()
    }
}

fn module_path(layer: usize, p: usize) -> String {
    format!("model.layers.{layer}.{}", PROJECTIONS[p])
}

/// Uploads `weights[name]` after checking its shape.
fn weight(gpu: &Gpu, weights: &WeightMap, name: &str, want: &[usize]) -> Result<GpuTensor> {
    const OP: &str = "GpuLlama::new";
    let (shape, data) = weights
        .get(name)
        .ok_or_else(|| shape_err(OP, format!("missing weight {name}")))?;
    if shape.as_slice() != want {
        return Err(shape_err(
            OP,
            format!("{name} must be {want:?}, got {shape:?}"),
        ));
    }
    gpu.upload(data, want)
}

impl GpuLlama {
    /// Uploads the base weights (HF names, e.g. `model.layers.0.self_attn.q_proj.weight`,
    /// `model.embed_tokens.weight`, `model.norm.weight`, `lm_head.weight`; without
    /// `lm_head.weight` the embedding is used, i.e. tied) and the adapters (module path, e.g.
    /// `model.layers.0.self_attn.q_proj` → `(A [r·in], B [out·r])`), with zero gradients and
    /// moments.
    ///
    /// Long but flat: one upload per base weight, adapter, gradient and moment, in the layout the
    /// kernels index; each line says which buffer it makes.
    pub fn new(
        gpu: &Gpu,
        shape: LlamaShape,
        weights: &WeightMap,
        adapters: &AdapterMap,
        r: usize,
        scale: f32,
    ) -> Result<GpuLlama> {
        const OP: &str = "GpuLlama::new";
        shape.check()?;
        if r == 0 && !adapters.is_empty() {
            return Err(shape_err(OP, "adapter rank r must be > 0"));
        }
        let known: Vec<String> = (0..shape.layers)
            .flat_map(|l| (0..PROJECTIONS.len()).map(move |p| module_path(l, p)))
            .collect();
        if let Some(bad) = adapters.keys().find(|k| !known.contains(k)) {
            return Err(shape_err(
                OP,
                format!(
                    "adapter {bad} names no projection of this model (e.g. {})",
                    known[0]
                ),
            ));
        }
        let h = shape.hidden;
        let embed = weight(gpu, weights, "model.embed_tokens.weight", &[shape.vocab, h])?;
        let lm_head = if weights.contains_key("lm_head.weight") {
            weight(gpu, weights, "lm_head.weight", &[shape.vocab, h])?
        } else {
            embed.clone()
        };
        let norm = weight(gpu, weights, "model.norm.weight", &[h])?;
        let mut layers = Vec::with_capacity(shape.layers);
        for l in 0..shape.layers {
            let pre = format!("model.layers.{l}");
            let mut proj = Vec::with_capacity(PROJECTIONS.len());
            for (p, name) in PROJECTIONS.iter().enumerate() {
                let (d_out, d_in) = shape.projection_dims(p);
                let w = weight(
                    gpu,
                    weights,
                    &format!("{pre}.{name}.weight"),
                    &[d_out, d_in],
                )?;
                let bias = if shape.qkv_bias && p < 3 {
                    Some(weight(
                        gpu,
                        weights,
                        &format!("{pre}.{name}.bias"),
                        &[d_out],
                    )?)
                } else {
                    None
                };
                let lora = match adapters.get(&module_path(l, p)) {
                    None => None,
                    Some((a, b)) => {
                        let path = module_path(l, p);
                        if a.len() != r * d_in || b.len() != d_out * r {
                            return Err(shape_err(
                                OP,
                                format!(
                                    "adapter {path}: A must hold r·in = {} values and B out·r = {}, got {} and {}",
                                    r * d_in,
                                    d_out * r,
                                    a.len(),
                                    b.len()
                                ),
                            ));
                        }
                        let (sa, sb) = ([r, d_in], [d_out, r]);
                        Some(Adapter {
                            a: gpu.upload(a, &sa)?,
                            b: gpu.upload(b, &sb)?,
                            da: gpu.full(&sa, 0.0),
                            db: gpu.full(&sb, 0.0),
                            ma: gpu.full(&sa, 0.0),
                            va: gpu.full(&sa, 0.0),
                            mb: gpu.full(&sb, 0.0),
                            vb: gpu.full(&sb, 0.0),
                        })
                    }
                };
                proj.push(Proj {
                    w,
                    bias,
                    lora,
                    d_in,
                    d_out,
                });
            }
            layers.push(Layer {
                input_norm: weight(gpu, weights, &format!("{pre}.input_layernorm.weight"), &[h])?,
                post_norm: weight(
                    gpu,
                    weights,
                    &format!("{pre}.post_attention_layernorm.weight"),
                    &[h],
                )?,
                proj,
            });
        }
        Ok(GpuLlama {
            gpu: gpu.clone(),
            shape,
            embed,
            lm_head,
            norm,
            layers,
            r,
            scale,
            rope: None,
        })
    }

    /// The architecture.
    pub fn shape(&self) -> &LlamaShape {
        &self.shape
    }

    /// `(module path, adapter)` in forward order.
    fn adapter_paths(&self) -> impl Iterator<Item = (String, &Adapter)> {
        self.layers.iter().enumerate().flat_map(|(l, layer)| {
            layer
                .proj
                .iter()
                .enumerate()
                .filter_map(move |(p, pr)| pr.lora.as_ref().map(|a| (module_path(l, p), a)))
        })
    }

    fn rope_tables(&mut self, batch: usize, seq: usize) -> Result<(GpuTensor, GpuTensor)> {
        if let Some((b, s, cos, sin)) = &self.rope {
            if *b == batch && *s == seq {
                return Ok((cos.clone(), sin.clone()));
            }
        }
        let positions: Vec<u32> = (0..batch * seq).map(|i| (i % seq) as u32).collect();
        let (cos, sin) =
            self.gpu
                .rope_tables(&positions, self.shape.head_dim, self.shape.rope_theta)?;
        self.rope = Some((batch, seq, cos.clone(), sin.clone()));
        Ok((cos, sin))
    }

    fn proj_forward(
        &self,
        l: usize,
        p: usize,
        x: &GpuTensor,
        dropout: &mut DropoutFn,
    ) -> Result<(GpuTensor, ProjSave)> {
        let gpu = &self.gpu;
        let pr = &self.layers[l].proj[p];
        let n = x.shape[0];
        let y = gpu.uninit(&[n, pr.d_out]);
        gpu.matmul_into(x, false, &pr.w, true, 1.0, &y, false)?;
        if let Some(b) = &pr.bias {
            gpu.bias_add(&y, b)?;
        }
        let mut save = ProjSave::default();
        if let Some(ad) = &pr.lora {
            let path = module_path(l, p);
            let xd = match dropout(&path, n, pr.d_in) {
                None => x.clone(),
                Some(mask) => {
                    if mask.len() != n * pr.d_in {
                        return Err(shape_err(
                            "forward_backward",
                            format!(
                                "dropout mask of {path} must hold {n}·{} values, got {}",
                                pr.d_in,
                                mask.len()
                            ),
                        ));
                    }
                    let md = gpu.upload(&mask, &[n, pr.d_in])?;
                    let xd = gpu.uninit(&[n, pr.d_in]);
                    gpu.mul_into(x, &md, &xd)?;
                    save.mask = Some(md);
                    xd
                }
            };
            let xa = gpu.uninit(&[n, self.r]);
            gpu.matmul_into(&xd, false, &ad.a, true, 1.0, &xa, false)?;
            gpu.matmul_into(&xa, false, &ad.b, true, self.scale, &y, true)?;
            save.xd = Some(xd);
            save.xa = Some(xa);
        }
        Ok((y, save))
    }

    /// `dx (+)= dy W + scale · ((dy B) A) ⊙ mask`, `dA += scale · (dy B)ᵀ xd`,
    /// `dB += scale · dyᵀ xa`.
    fn proj_backward(
        &self,
        l: usize,
        p: usize,
        save: &ProjSave,
        dy: &GpuTensor,
        dx: &GpuTensor,
        accumulate: bool,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let pr = &self.layers[l].proj[p];
        gpu.matmul_into(dy, false, &pr.w, false, 1.0, dx, accumulate)?;
        if let Some(ad) = &pr.lora {
            let (Some(xd), Some(xa)) = (&save.xd, &save.xa) else {
                return Err(KernelError::Value {
                    op: "forward_backward",
                    what: "adapter activations missing".into(),
                });
            };
            let n = dy.shape[0];
            let g = gpu.uninit(&[n, self.r]);
            gpu.matmul_into(dy, false, &ad.b, false, 1.0, &g, false)?;
            match &save.mask {
                Some(mask) => {
                    let t = gpu.uninit(&[n, pr.d_in]);
                    gpu.matmul_into(&g, false, &ad.a, false, self.scale, &t, false)?;
                    gpu.mul_add_assign(dx, &t, mask)?;
                }
                None => gpu.matmul_into(&g, false, &ad.a, false, self.scale, dx, true)?,
            }
            gpu.matmul_into(&g, true, xd, false, self.scale, &ad.da, true)?;
            gpu.matmul_into(dy, true, xa, false, self.scale, &ad.db, true)?;
        }
        Ok(())
    }

    /// The forward pass, saving what the backward needs, in the order of `llama_reference` (long
    /// for the same reason as `forward_backward`).
    fn forward(
        &mut self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        dropout: &mut DropoutFn,
    ) -> Result<ForwardSave> {
        const OP: &str = "GpuLlama::forward";
        let s = self.shape;
        let n = batch * seq;
        if n == 0 || ids.len() != n {
            return Err(shape_err(
                OP,
                format!(
                    "ids must hold batch·seq = {batch}·{seq} > 0 values, got {}",
                    ids.len()
                ),
            ));
        }
        if s.max_positions > 0 && seq > s.max_positions {
            return Err(KernelError::Value {
                op: OP,
                what: format!("seq {seq} exceeds max_positions {}", s.max_positions),
            });
        }
        if let Some(i) = ids.iter().position(|&t| t as usize >= s.vocab) {
            return Err(KernelError::Value {
                op: OP,
                what: format!("token id {} at {i} is not below vocab {}", ids[i], s.vocab),
            });
        }
        let (cos, sin) = self.rope_tables(batch, seq)?;
        let gpu = &self.gpu;
        let dims = AttentionDims {
            batch,
            seq,
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
        };
        let mut x = gpu.uninit(&[n, s.hidden]);
        gpu.embedding_into(&self.embed, &gpu.upload_indices(ids), &x)?;
        let mut saves = Vec::with_capacity(s.layers);
        for l in 0..s.layers {
            let layer = &self.layers[l];
            let (n1, rstd1) = gpu.rmsnorm_forward(&x, &layer.input_norm, s.rms_eps)?;
            let (q, sq) = self.proj_forward(l, 0, &n1, dropout)?;
            let (k, sk) = self.proj_forward(l, 1, &n1, dropout)?;
            let (v, sv) = self.proj_forward(l, 2, &n1, dropout)?;
            let qr = gpu.rope_forward(&q.reshape(&[n, s.heads, s.head_dim])?, &cos, &sin)?;
            let kr = gpu.rope_forward(&k.reshape(&[n, s.kv_heads, s.head_dim])?, &cos, &sin)?;
            let (attn, probs) = gpu.attention_forward(&dims, &qr, &kr, &v)?;
            let attn = attn.reshape(&[n, s.heads * s.head_dim])?;
            let (o, so) = self.proj_forward(l, 3, &attn, dropout)?;
            let h = gpu.uninit(&[n, s.hidden]);
            gpu.add_into(&x, &o, &h)?;
            let (n2, rstd2) = gpu.rmsnorm_forward(&h, &layer.post_norm, s.rms_eps)?;
            let (g, sg) = self.proj_forward(l, 4, &n2, dropout)?;
            let (u, su) = self.proj_forward(l, 5, &n2, dropout)?;
            let act = gpu.uninit(&[n, s.intermediate]);
            gpu.silu_mul_into(&g, &u, &act)?;
            let (down, sd) = self.proj_forward(l, 6, &act, dropout)?;
            let x_next = gpu.uninit(&[n, s.hidden]);
            gpu.add_into(&h, &down, &x_next)?;
            saves.push(LayerSave {
                x,
                rstd1,
                qr,
                kr,
                v,
                probs,
                h,
                rstd2,
                g,
                u,
                proj: vec![sq, sk, sv, so, sg, su, sd],
            });
            x = x_next;
        }
        let (nf, rstdf) = gpu.rmsnorm_forward(&x, &self.norm, s.rms_eps)?;
        let logits = gpu.matmul(&nf, false, &self.lm_head, true, 1.0)?;
        Ok(ForwardSave {
            layers: saves,
            xf: x,
            rstdf,
            logits,
        })
    }

    /// Forward only (no dropout): the logits [batch·seq, vocab], row-major.
    pub fn logits(&mut self, ids: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        let save = self.forward(ids, batch, seq, &mut |_, _, _| None)?;
        self.gpu.download(&save.logits)
    }

    /// The negative log-likelihood of every position's target [batch·seq], from a forward with the
    /// given dropout (DPO needs the policy's per-sequence log-probs before it can weight the
    /// backward; calling this and then [`GpuLlama::forward_backward`] with the same dropout masks
    /// differentiates the same function).
    pub fn token_nll(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        batch: usize,
        seq: usize,
        dropout: &mut DropoutFn,
    ) -> Result<Vec<f32>> {
        if targets.len() != batch * seq {
            return Err(shape_err(
                "GpuLlama::token_nll",
                format!(
                    "targets ({}) must hold batch·seq = {} values",
                    targets.len(),
                    batch * seq
                ),
            ));
        }
        let save = self.forward(ids, batch, seq, dropout)?;
        let nll = self
            .gpu
            .token_nll(&save.logits, &self.gpu.upload_indices(targets))?;
        self.gpu.download(&nll)
    }

    /// Forward and backward of one micro-batch: returns `Σ mask · nll / denominator` and ADDS the
    /// adapters' gradients into their buffers (call [`GpuLlama::zero_grads`] between optimizer
    /// steps). `ids`, `targets`, `mask` hold `batch·seq` values (a target ≥ vocab or a mask of 0
    /// skips the position). `dropout(module_path, rows, cols)` is called once per adapted
    /// projection in forward order for the `[rows, cols]` mask (0 or 1/keep) of its adapter's
    /// input; `None` means no dropout.
    ///
    /// Long on purpose, like candle's model files: the backward pass is the forward in reverse, and
    /// keeping both in the order of `llama_reference` is what lets a reader check one against the
    /// other line by line.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &mut self,
        ids: &[u32],
        targets: &[u32],
        mask: &[f32],
        batch: usize,
        seq: usize,
        denominator: f32,
        dropout: &mut DropoutFn,
    ) -> Result<f32> {
        const OP: &str = "GpuLlama::forward_backward";
        let n = batch * seq;
        if targets.len() != n || mask.len() != n {
            return Err(shape_err(
                OP,
                format!(
                    "targets ({}) and mask ({}) must hold batch·seq = {n} values",
                    targets.len(),
                    mask.len()
                ),
            ));
        }
        let save = self.forward(ids, batch, seq, dropout)?;
        let s = self.shape;
        let gpu = &self.gpu;
        let dims = AttentionDims {
            batch,
            seq,
            heads: s.heads,
            kv_heads: s.kv_heads,
            head_dim: s.head_dim,
        };
        let (cos, sin) = match &self.rope {
            Some((_, _, c, si)) => (c.clone(), si.clone()),
            None => unreachable!("forward built the rope tables"),
        };

        let loss = gpu.uninit(&[1]);
        let dlogits = gpu.uninit(&[n, s.vocab]);
        gpu.weighted_cross_entropy_into(
            &save.logits,
            &gpu.upload_indices(targets),
            &gpu.upload(mask, &[n])?,
            denominator,
            &loss,
            &dlogits,
        )?;
        let dnf = gpu.matmul(&dlogits, false, &self.lm_head, false, 1.0)?;
        drop(dlogits);
        let dw = gpu.uninit(&[s.hidden]); // norm-weight gradients: computed, unused (frozen)
        let mut dx = gpu.uninit(&[n, s.hidden]);
        gpu.rmsnorm_backward_into(&save.xf, &self.norm, &save.rstdf, &dnf, &dx, &dw)?;

        let q_width = s.heads * s.head_dim;
        for l in (0..s.layers).rev() {
            let sv = &save.layers[l];
            let layer = &self.layers[l];
            // MLP
            let dact = gpu.uninit(&[n, s.intermediate]);
            self.proj_backward(l, 6, &sv.proj[6], &dx, &dact, false)?;
            let (dg, du) = (
                gpu.uninit(&[n, s.intermediate]),
                gpu.uninit(&[n, s.intermediate]),
            );
            gpu.silu_mul_backward_into(&sv.g, &sv.u, &dact, &dg, &du)?;
            let dn2 = gpu.uninit(&[n, s.hidden]);
            self.proj_backward(l, 4, &sv.proj[4], &dg, &dn2, false)?;
            self.proj_backward(l, 5, &sv.proj[5], &du, &dn2, true)?;
            let dh = gpu.uninit(&[n, s.hidden]);
            gpu.rmsnorm_backward_into(&sv.h, &layer.post_norm, &sv.rstd2, &dn2, &dh, &dw)?;
            gpu.add_assign(&dh, &dx)?;
            // attention
            let dattn = gpu.uninit(&[n, q_width]);
            self.proj_backward(l, 3, &sv.proj[3], &dh, &dattn, false)?;
            let (dqr, dkr, dv) =
                gpu.attention_backward(&dims, &sv.qr, &sv.kr, &sv.v, &sv.probs, &dattn)?;
            let dq = gpu.rope_backward(&dqr, &cos, &sin)?;
            let dk = gpu.rope_backward(&dkr, &cos, &sin)?;
            let dq = dq.reshape(&[n, q_width])?;
            let dk = dk.reshape(&[n, s.kv_heads * s.head_dim])?;
            let dv = dv.reshape(&[n, s.kv_heads * s.head_dim])?;
            let dn1 = gpu.uninit(&[n, s.hidden]);
            self.proj_backward(l, 0, &sv.proj[0], &dq, &dn1, false)?;
            self.proj_backward(l, 1, &sv.proj[1], &dk, &dn1, true)?;
            self.proj_backward(l, 2, &sv.proj[2], &dv, &dn1, true)?;
            if l == 0 {
                break; // the embedding is frozen: no gradient below layer 0 is needed
            }
            let dx_prev = gpu.uninit(&[n, s.hidden]);
            gpu.rmsnorm_backward_into(&sv.x, &layer.input_norm, &sv.rstd1, &dn1, &dx_prev, &dw)?;
            gpu.add_assign(&dx_prev, &dh)?;
            dx = dx_prev;
        }
        Ok(gpu.download(&loss)?[0])
    }

    /// Sets every adapter gradient to zero.
    pub fn zero_grads(&mut self) -> Result<()> {
        for (_, ad) in self.adapter_paths() {
            self.gpu.fill(&ad.da, 0.0);
            self.gpu.fill(&ad.db, 0.0);
        }
        Ok(())
    }

    /// The global L2 norm over every adapter gradient (reads back two floats per adapter).
    pub fn grad_norm(&self) -> Result<f32> {
        let count = self.adapter_paths().count();
        if count == 0 {
            return Ok(0.0);
        }
        let sums = self.gpu.uninit(&[2 * count]);
        for (i, (_, ad)) in self.adapter_paths().enumerate() {
            self.gpu.sum_squares_into(&ad.da, &sums, 2 * i)?;
            self.gpu.sum_squares_into(&ad.db, &sums, 2 * i + 1)?;
        }
        let total: f64 = self.gpu.download(&sums)?.iter().map(|&v| v as f64).sum();
        Ok(total.sqrt() as f32)
    }

    /// Multiplies every adapter gradient by `factor` (gradient clipping).
    pub fn scale_grads(&mut self, factor: f32) -> Result<()> {
        for (_, ad) in self.adapter_paths() {
            self.gpu.scale_in_place(&ad.da, factor);
            self.gpu.scale_in_place(&ad.db, factor);
        }
        Ok(())
    }

    /// One AdamW step `t` (1-based) on every `A` and `B` with its moments.
    pub fn adamw_step(&mut self, cfg: &AdamWConfig, t: usize) -> Result<()> {
        let t = u32::try_from(t).map_err(|_| KernelError::Value {
            op: "adamw",
            what: format!("step {t} exceeds u32"),
        })?;
        for (_, ad) in self.adapter_paths() {
            self.gpu.adamw_step(&ad.a, &ad.da, &ad.ma, &ad.va, cfg, t)?;
            self.gpu.adamw_step(&ad.b, &ad.db, &ad.mb, &ad.vb, cfg, t)?;
        }
        Ok(())
    }

    /// Downloads every adapter: module path → `(A [r·in], B [out·r])`.
    pub fn adapters(&self) -> Result<AdapterMap> {
        self.adapter_paths()
            .map(|(p, ad)| Ok((p, (self.gpu.download(&ad.a)?, self.gpu.download(&ad.b)?))))
            .collect()
    }

    /// Downloads every adapter gradient: module path → `(dA, dB)`.
    pub fn grads(&self) -> Result<AdapterMap> {
        self.adapter_paths()
            .map(|(p, ad)| Ok((p, (self.gpu.download(&ad.da)?, self.gpu.download(&ad.db)?))))
            .collect()
    }

    /// Downloads every adapter's AdamW moments: module path → `[mA, vA, mB, vB]`.
    pub fn moments(&self) -> Result<HashMap<String, [Vec<f32>; 4]>> {
        let d = |t: &GpuTensor| self.gpu.download(t);
        self.adapter_paths()
            .map(|(p, ad)| Ok((p, [d(&ad.ma)?, d(&ad.va)?, d(&ad.mb)?, d(&ad.vb)?])))
            .collect()
    }

    /// Restores AdamW moments (from [`GpuLlama::moments`]); adapters absent from `m` keep theirs.
    pub fn set_moments(&mut self, m: &HashMap<String, [Vec<f32>; 4]>) -> Result<()> {
        let known: Vec<String> = self.adapter_paths().map(|(p, _)| p).collect();
        if let Some(bad) = m.keys().find(|k| !known.contains(k)) {
            return Err(shape_err("set_moments", format!("no adapter {bad}")));
        }
        for (path, ad) in self.adapter_paths() {
            let Some([ma, va, mb, vb]) = m.get(&path) else {
                continue;
            };
            let up = |dst: &GpuTensor, src: &[f32]| -> Result<GpuTensor> {
                self.gpu.upload(src, &dst.shape)
            };
            // Upload first (checks every length), then copy into the existing buffers.
            let (nma, nva, nmb, nvb) = (
                up(&ad.ma, ma)?,
                up(&ad.va, va)?,
                up(&ad.mb, mb)?,
                up(&ad.vb, vb)?,
            );
            for (dst, src) in [
                (&ad.ma, &nma),
                (&ad.va, &nva),
                (&ad.mb, &nmb),
                (&ad.vb, &nvb),
            ] {
                self.gpu.fill(dst, 0.0);
                self.gpu.add_assign(dst, src)?;
            }
        }
        Ok(())
    }

    /// The adapter rank and scale.
    pub fn lora_config(&self) -> (usize, f32) {
        (self.r, self.scale)
    }
}
