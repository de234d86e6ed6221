//! The Llama/Qwen2 decoder with LoRA adapters, in one readable file.
//!
//! Written with candle's basic ops only, because candle's fused `rms_norm`, `softmax_last_dim` and
//! `rope` record no backward pass (candle issues #2168, #3568, #3569): a model built on them (as
//! candle-transformers' llama and qwen2 are) trains its adapters on silently missing gradients. Every
//! op here (matmul, mul, exp, sum, narrow, cat, gather, sqrt, recip, silu) has a backward in candle.
//!
//! The base weights are plain tensors, so candle tracks no gradient for them; only the LoRA A/B
//! matrices are `Var`s. A target linear computes `y = x Wᵀ + b + s · dropout(x) Aᵀ Bᵀ`, with PEFT's
//! init (A Kaiming-uniform with a=√5, B zero) and `s = alpha / r` (or `alpha / √r` with rsLoRA).

use super::config::ModelConfig;
use super::fused;
pub use super::kv_cache::KvCache;
use super::kv_cache::LayerKv;
pub use super::linear::Linear;
use super::lora::fresh_lora;
pub use super::lora::{Lora, LoraSpec};
use super::output_head::HeadLogProb;
pub use super::pass::{dropout_mask, Pass};
use super::pool_gemm;
use super::ModelError;
pub use crate::layers::{log_softmax_last, softmax_last, target_log_prob, BaseWeight};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The projections LoRA can adapt, in PEFT's names.
pub const ALL_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// RMSNorm as `x / sqrt(mean(x²) + eps) · w`, from differentiable ops.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// One fused pass on the CPU in f32 (the same bits as the tensor ops below, which run elsewhere
    /// and for a weight being trained, which the fused backward does not differentiate).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if fused::applies(x) && fused::applies(&self.weight) && !self.weight.is_variable() {
            return fused::rms_norm(x, &self.weight, self.eps);
        }
        let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)
    }
}

/// Rotary embeddings in HF's `rotate_half` layout: tables of cos/sin per position, [positions, head_dim].
struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    fn new(
        cfg: &ModelConfig,
        positions: usize,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Rope> {
        let half = cfg.head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(positions * cfg.head_dim);
        let mut sin = Vec::with_capacity(positions * cfg.head_dim);
        for p in 0..positions {
            // HF's layout repeats the frequencies: cat(freqs, freqs).
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = p as f64 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let shape = (positions, cfg.head_dim);
        Ok(Rope {
            cos: Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?,
            sin: Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?,
        })
    }

    /// `x` is [batch, heads, seq, head_dim]; positions start at `offset`. One fused pass on the CPU
    /// in f32 (the same bits as the tensor ops), the tensor ops elsewhere.
    fn apply(&self, x: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        let t = x.dim(2)?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        if fused::applies(x) && x.dim(3)?.is_multiple_of(2) {
            return fused::rope(x, &cos, &sin);
        }
        self.apply_tensor_ops(x, offset)
    }

    /// [`Rope::apply`] for one new token per sequence, each at its own position (`positions[b]`
    /// for sequence b): sequences of different lengths decoding as one batch.
    fn apply_per_sequence(&self, x: &Tensor, positions: &[usize]) -> candle_core::Result<Tensor> {
        let (b, _, t, hd) = x.dims4()?;
        if t != 1 || positions.len() != b {
            candle_core::bail!(
                "rope: sequences at their own positions take one new token each ({b} sequences, {t} tokens, {} positions)",
                positions.len()
            );
        }
        let ids: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let ids = Tensor::new(ids.as_slice(), x.device())?;
        let cos = self.cos.index_select(&ids, 0)?.reshape((b, 1, hd))?;
        let sin = self.sin.index_select(&ids, 0)?.reshape((b, 1, hd))?;
        if fused::applies(x) && hd.is_multiple_of(2) {
            return fused::rope(x, &cos, &sin);
        }
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }

    /// [`Rope::apply`] as tensor ops: `x · cos + rotate_half(x) · sin`.
    fn apply_tensor_ops(&self, x: &Tensor, offset: usize) -> candle_core::Result<Tensor> {
        let (_, _, t, hd) = x.dims4()?;
        let cos = self.cos.narrow(0, offset, t)?;
        let sin = self.sin.narrow(0, offset, t)?;
        let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }
}

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

/// Where a forward's tokens sit: the rotary tables, the position of the first token, and the causal
/// mask every layer shares (none for a single new token, which sees everything before it).
struct Positions<'a> {
    rope: &'a Rope,
    offset: usize,
    mask: Option<Tensor>,
    /// Per sequence, its new token's position, where the sequences have different lengths.
    per_sequence: Option<Vec<usize>>,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        at: &Positions,
        cache: Option<&mut Option<LayerKv>>,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let (rope, offset) = (at.rope, at.offset);
        let (b, t, _) = x.dims3()?;
        let split = |y: Tensor, heads: usize| {
            y.reshape((b, t, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let rotate = |x: Tensor| match &at.per_sequence {
            Some(positions) => rope.apply_per_sequence(&x, positions),
            None => rope.apply(&x, offset),
        };
        let [q, k, v] = Linear::forward_shared([&self.q, &self.k, &self.v], x, pass)?;
        let q = rotate(split(q, self.heads)?)?;
        let k = rotate(split(k, self.kv_heads)?)?;
        let v = split(v, self.kv_heads)?;
        // The keys transposed, [b, kv_heads, head_dim, seq]: a cache keeps them so.
        let (k_t, v) = match cache {
            Some(slot) => {
                let mut kv = match slot.take() {
                    Some(mut kv) => {
                        kv.append(&k, &v)?;
                        kv
                    }
                    None => LayerKv::new(&k, &v)?,
                };
                // Decoding's step: one new token, nothing tracked, on the CPU in f32.
                let one_token = t == 1 && !pass.track_gradients;
                let fast = match one_token {
                    true => kv.attend_one_token(&q, self.heads)?,
                    false => None,
                };
                if let Some(y) = fast {
                    *slot = Some(kv);
                    return self
                        .o
                        .forward(&y.reshape((b, t, self.heads * self.head_dim))?, pass);
                }
                // The general attention reads every row's positions from its own buffers.
                let views = kv.views()?;
                if !kv.starts.is_empty() {
                    candle_core::bail!(
                        "sequences of different lengths decode as one batch only on the CPU in f32, one token at a time"
                    );
                }
                *slot = Some(kv);
                views
            }
            None => (k.t()?, v),
        };
        let rep = self.heads / self.kv_heads;
        let (keys_t, v) = (repeat_heads(&k_t, rep)?, repeat_heads(&v, rep)?);
        // The products on candle's pool (its matmul's bits; see `pool_gemm`).
        let scores = pool_gemm::batched_matmul(&q, &keys_t)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let weights = if fused::applies(&scores) {
            fused::masked_softmax(&scores, scale, at.mask.as_ref())?
        } else {
            let scores = (scores * scale)?;
            softmax_last(&match &at.mask {
                Some(m) => scores.broadcast_add(m)?,
                None => scores,
            })?
        };
        let y = pool_gemm::batched_matmul(&weights, &v)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        self.o.forward(&y, pass)
    }
}

/// Grouped-query attention: each key/value head serves `rep` query heads. `x` is [batch, kv_heads,
/// d1, d2] (keys transposed, or values), any layout; the result is a contiguous [batch, kv_heads ·
/// rep, d1, d2], in one copy (the attention products read it contiguous, as they always have: a
/// strided operand takes another path in the matmul and changes the bits).
pub(crate) fn repeat_heads(x: &Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return x.contiguous();
    }
    let (b, kvh, d1, d2) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kvh, rep, d1, d2))?
        .reshape((b, kvh * rep, d1, d2))
}

/// `-inf` where query `i` (the last `t` of `kv_len` positions) would see a later key.
fn causal_mask(t: usize, kv_len: usize, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    let past = kv_len - t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..kv_len).map(move |j| if j > i + past { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t, kv_len), dev)?.to_dtype(dtype)
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor, pass: &mut Pass) -> candle_core::Result<Tensor> {
        let [gate, up] = Linear::forward_shared([&self.gate, &self.up], x, pass)?;
        let h = match fused::applies(&gate) {
            true => fused::silu_mul(&gate, &up)?,
            false => (gate.silu()? * up)?,
        };
        self.down.forward(&h, pass)
    }
}

struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    mlp: Mlp,
}

impl Layer {
    /// One decoder block on the residual stream `x`: attention, then the MLP, each added back.
    fn forward(
        &self,
        x: &Tensor,
        at: &Positions,
        cache: Option<&mut Option<LayerKv>>,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let h = self
            .attn
            .forward(&self.input_norm.forward(x)?, at, cache, pass)?;
        let x1 = (x + h)?;
        &x1 + self.mlp.forward(&self.post_norm.forward(&x1)?, pass)?
    }
}

/// A causal LM of the Llama/Qwen2 family with LoRA adapters on the chosen projections.
pub struct CausalLm {
    pub cfg: ModelConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: BaseWeight,
    rope: Rope,
    pub dtype: DType,
    pub device: Device,
}

/// Base weights by HF name, converted to the compute dtype.
pub type Weights = HashMap<String, Tensor>;

/// Base weights kept quantized (from a GGUF file), by HF name: the projections and the output head.
pub type QuantizedWeights = HashMap<String, Arc<super::quantized::QuantizedWeight>>;

pub fn load_weights(dir: &Path, dtype: DType, dev: &Device) -> Result<Weights, ModelError> {
    let mut all = HashMap::new();
    for file in super::config::weight_files(dir)? {
        read_safetensors(&file, dtype, dev, &mut all).map_err(|e| match e {
            ModelError::Input(m) => ModelError::Input(m),
            other => ModelError::Input(format!(
                "{}: cannot read safetensors: {other}",
                file.display()
            )),
        })?;
    }
    Ok(all)
}

/// Reads a safetensors file one tensor at a time, converting each to `dtype` as it comes, so the peak
/// is the converted weights plus one tensor's bytes (candle's loader maps the whole file and copies
/// it: twice a bf16 model's size on top of its f32 copy).
fn read_safetensors(
    path: &Path,
    dtype: DType,
    dev: &Device,
    into: &mut Weights,
) -> Result<(), ModelError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)?;
    let header_len = u64::from_le_bytes(len) as usize;
    if header_len > 100 << 20 {
        return Err(ModelError::Input(format!(
            "{}: not a safetensors file (header of {header_len} bytes)",
            path.display()
        )));
    }
    let mut header = vec![0u8; header_len];
    f.read_exact(&mut header)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| {
            ModelError::Input(format!("{}: bad safetensors header: {e}", path.display()))
        })?;
    let data_start = 8 + header_len as u64;
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad =
            |what: &str| ModelError::Input(format!("{}: tensor {name}: {what}", path.display()));
        let shape: Vec<usize> = info["shape"]
            .as_array()
            .ok_or_else(|| bad("no shape"))?
            .iter()
            .map(|d| {
                d.as_u64()
                    .map(|d| d as usize)
                    .ok_or_else(|| bad("bad shape"))
            })
            .collect::<Result<_, _>>()?;
        let offsets = info["data_offsets"]
            .as_array()
            .ok_or_else(|| bad("no data_offsets"))?;
        let (start, end) = match (
            offsets.first().and_then(|v| v.as_u64()),
            offsets.get(1).and_then(|v| v.as_u64()),
        ) {
            (Some(s), Some(e)) if e >= s => (s, e),
            _ => return Err(bad("bad data_offsets")),
        };
        let mut bytes = vec![0u8; (end - start) as usize];
        f.seek(SeekFrom::Start(data_start + start))?;
        f.read_exact(&mut bytes)?;
        let n: usize = shape.iter().product();
        let source = match info["dtype"].as_str().unwrap_or("") {
            "F32" => DType::F32,
            "BF16" => DType::BF16,
            "F16" => DType::F16,
            "F64" => DType::F64,
            other => {
                return Err(bad(&format!(
                    "dtype {other:?}; rtlab reads F32, BF16, F16 and F64 weights"
                )))
            }
        };
        if bytes.len() != n * source.size_in_bytes() {
            return Err(bad("data length does not match its shape and dtype"));
        }
        let t = Tensor::from_raw_buffer(&bytes, source, &shape, dev)?;
        drop(bytes);
        into.insert(name, t.to_dtype(dtype)?);
    }
    Ok(())
}

/// The weights a model is built from, taken one by one by Hugging Face name, and the seeded RNG of
/// its fresh LoRA adapters (drawn in layer and projection order, so a seed gives the same adapters).
struct WeightSource<'a> {
    cfg: &'a ModelConfig,
    dense: Weights,
    quantized: QuantizedWeights,
    lora: Option<&'a LoraSpec>,
    rng: StdRng,
    dtype: DType,
    dev: &'a Device,
}

impl WeightSource<'_> {
    fn take(&mut self, name: &str) -> Result<Tensor, ModelError> {
        self.dense.remove(name).ok_or_else(|| {
            ModelError::Input(format!(
                "the model's safetensors have no tensor {name:?}: is config.json's architecture ({:?}) the one the weights were saved with?",
                self.cfg.arch
            ))
        })
    }

    /// A projection `{prefix}.{path}`: its weight (quantized when the file keeps it so), its bias, and
    /// a fresh adapter when `module` is a LoRA target.
    fn linear(
        &mut self,
        prefix: &str,
        module: &str,
        path: &str,
        bias: bool,
    ) -> Result<Linear, ModelError> {
        let name = format!("{prefix}.{path}.weight");
        let weight = match self.quantized.remove(&name) {
            Some(q) => BaseWeight::Quantized(q),
            None => BaseWeight::Dense(self.take(&name)?),
        };
        let bias = if bias {
            Some(self.take(&format!("{prefix}.{path}.bias"))?)
        } else {
            None
        };
        let lora = match self.lora {
            Some(spec) if spec.target_modules.iter().any(|m| m == module) => {
                let (d_out, d_in) = weight.dims2()?;
                Some(fresh_lora(
                    spec,
                    d_in,
                    d_out,
                    &mut self.rng,
                    self.dtype,
                    self.dev,
                )?)
            }
            _ => None,
        };
        Ok(Linear { weight, bias, lora })
    }

    /// Decoder layer `i`.
    fn layer(&mut self, i: usize) -> Result<Layer, ModelError> {
        let p = format!("model.layers.{i}");
        let (cfg, qkv_bias) = (self.cfg, self.cfg.qkv_bias);
        let attn = Attention {
            q: self.linear(&p, "q_proj", "self_attn.q_proj", qkv_bias)?,
            k: self.linear(&p, "k_proj", "self_attn.k_proj", qkv_bias)?,
            v: self.linear(&p, "v_proj", "self_attn.v_proj", qkv_bias)?,
            o: self.linear(&p, "o_proj", "self_attn.o_proj", false)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        };
        let mlp = Mlp {
            gate: self.linear(&p, "gate_proj", "mlp.gate_proj", false)?,
            up: self.linear(&p, "up_proj", "mlp.up_proj", false)?,
            down: self.linear(&p, "down_proj", "mlp.down_proj", false)?,
        };
        Ok(Layer {
            input_norm: RmsNorm {
                weight: self.take(&format!("{p}.input_layernorm.weight"))?,
                eps: cfg.rms_norm_eps,
            },
            attn,
            post_norm: RmsNorm {
                weight: self.take(&format!("{p}.post_attention_layernorm.weight"))?,
                eps: cfg.rms_norm_eps,
            },
            mlp,
        })
    }
}

impl CausalLm {
    /// Builds the model from base weights, adding fresh adapters (seeded PEFT init) when `lora` is given.
    pub fn new(
        cfg: ModelConfig,
        w: Weights,
        lora: Option<&LoraSpec>,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<CausalLm, ModelError> {
        Self::with_quantized(cfg, w, QuantizedWeights::new(), lora, seed, dtype, dev)
    }

    /// [`CausalLm::new`] where the projections (and the output head) found in `quantized` stay
    /// quantized; the rest comes from `w`.
    pub fn with_quantized(
        cfg: ModelConfig,
        w: Weights,
        quantized: QuantizedWeights,
        lora: Option<&LoraSpec>,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<CausalLm, ModelError> {
        if !quantized.is_empty() && dtype != DType::F32 {
            return Err(ModelError::Input(format!(
                "a quantized base computes in f32, not {dtype:?}"
            )));
        }
        let mut source = WeightSource {
            cfg: &cfg,
            dense: w,
            quantized,
            lora,
            rng: StdRng::seed_from_u64(seed),
            dtype,
            dev,
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| source.layer(i))
            .collect::<Result<Vec<_>, _>>()?;
        let embed = source.take("model.embed_tokens.weight")?;
        let lm_head = match source.quantized.remove("lm_head.weight") {
            Some(q) => BaseWeight::Quantized(q),
            None if cfg.tie_word_embeddings => BaseWeight::Dense(embed.clone()),
            None => BaseWeight::Dense(
                source
                    .take("lm_head.weight")
                    .unwrap_or_else(|_| embed.clone()),
            ),
        };
        let norm = RmsNorm {
            weight: source.take("model.norm.weight")?,
            eps: cfg.rms_norm_eps,
        };
        let rope = Rope::new(&cfg, cfg.max_position_embeddings.max(64), dtype, dev)?;
        Ok(CausalLm {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            dtype,
            device: dev.clone(),
        })
    }

    /// Logits [batch, seq, vocab] for token ids [batch, seq]; with a cache, the ids continue it.
    pub fn forward(
        &self,
        ids: &Tensor,
        mut cache: Option<&mut KvCache>,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let offset = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let mut at = self.positions(t, offset)?;
        at.per_sequence = cache.as_ref().and_then(|c| c.sequence_positions());
        if let Some(c) = cache.as_mut() {
            if c.layers.is_empty() {
                c.layers = (0..self.layers.len()).map(|_| None).collect();
            }
        }
        let mut x = self.embed_tokens(ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, &at, slot, pass)?;
        }
        self.logits(&x, pass)
    }

    /// The log-prob of each position's target token, [batch, seq], for token ids and targets
    /// [batch, seq]: what every loss reads (SFT's NLL, DPO's sequence log-probs, perplexity).
    pub fn target_log_probs(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        pass: &mut Pass,
    ) -> candle_core::Result<Tensor> {
        let at = self.positions(ids.dims2()?.1, 0)?;
        let mut x = self.embed_tokens(ids)?;
        for layer in &self.layers {
            x = layer.forward(&x, &at, None, pass)?;
        }
        self.head_log_probs(&x, targets, pass)
    }

    /// The final norm, the output head and each target's log-softmax, from the last residual
    /// stream: as one op where it applies (the logits are then never a graph node; see
    /// output_head.rs), else through [`CausalLm::logits`] and [`target_log_prob`].
    fn head_log_probs(
        &self,
        x: &Tensor,
        targets: &Tensor,
        pass: &Pass,
    ) -> candle_core::Result<Tensor> {
        let exact_head = matches!(self.lm_head, BaseWeight::Dense(_)) || pass.training;
        if exact_head && fused::applies(x) {
            return HeadLogProb::forward(&self.lm_head, &self.norm.forward(x)?, targets);
        }
        target_log_prob(&self.logits(x, pass)?, targets)
    }

    /// `t` new tokens after `offset` cached ones, refused when the model has no position for them.
    fn positions(&self, t: usize, offset: usize) -> candle_core::Result<Positions<'_>> {
        if offset + t > self.rope.cos.dim(0)? {
            candle_core::bail!(
                "sequence of {} tokens is longer than the model's max_position_embeddings ({})",
                offset + t,
                self.rope.cos.dim(0)?
            );
        }
        let mask = match t > 1 {
            true => Some(causal_mask(t, offset + t, self.dtype, &self.device)?),
            false => None,
        };
        Ok(Positions {
            rope: &self.rope,
            offset,
            mask,
            per_sequence: None,
        })
    }

    /// The residual stream [batch, seq, hidden] entering the first layer.
    fn embed_tokens(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        self.embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))
    }

    /// The final norm and the output head: logits [batch, seq, vocab] from the last residual stream.
    fn logits(&self, x: &Tensor, pass: &Pass) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let x = self.norm.forward(x)?;
        self.lm_head
            .matmul_t(&x.reshape((b * t, self.cfg.hidden_size))?, pass.training)?
            .reshape((b, t, self.cfg.vocab_size))
    }

    /// `loss_of(target log-probs)` for token ids and targets [batch, seq] (the log-probs as
    /// [`CausalLm::target_log_probs`] gives them), and its gradient with respect to every adapter:
    /// one training step's forward and backward.
    ///
    /// `recomputed` is how many of the bottom layers are checkpointed (gradient checkpointing): the
    /// forward keeps only such a layer's input, not its activations, and the backward recomputes one
    /// such layer at a time, with the same dropout masks, and backpropagates the gradient of its
    /// output through it. The layers above them keep their whole graph. 0 keeps every layer's graph
    /// (the fastest, the most memory); the layer count (or more) checkpoints them all (the least
    /// memory, for one more forward of every layer). See [`Checkpointing`] for choosing it.
    ///
    /// The gradients are the same numbers whatever `recomputed` is: each recomputed layer's backward
    /// receives exactly the gradient the whole-graph backward gives its output, and runs the same ops
    /// on it.
    pub fn loss_and_grads(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        pass: &mut Pass,
        recomputed: usize,
        loss_of: impl FnOnce(&Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<(Tensor, candle_core::backprop::GradStore)> {
        let recomputed = recomputed.min(self.layers.len());
        if recomputed == 0 {
            let loss = loss_of(&self.target_log_probs(ids, targets, pass)?)?;
            let grads = loss.backward()?;
            return Ok((loss, grads));
        }
        let at = self.positions(ids.dims2()?.1, 0)?;
        let (bottom, top_layers) = self.layers.split_at(recomputed);
        // Forward through the bottom layers without a graph, keeping each layer's input and the
        // dropout generator's state there, so that the recomputation draws the same masks.
        let tracked = std::mem::replace(&mut pass.track_gradients, false);
        let mut x = self.embed_tokens(ids)?;
        let mut saved = Vec::with_capacity(bottom.len());
        for layer in bottom {
            saved.push((x.clone(), pass.dropout_rng.clone()));
            x = layer.forward(&x, &at, None, pass)?;
        }
        pass.track_gradients = tracked;
        // The layers above keep their graph: the loss's backward reaches their adapters and, through
        // them, the bottom layers' output.
        let boundary = Var::from_tensor(&x)?;
        let mut x = boundary.as_tensor().clone();
        for layer in top_layers {
            x = layer.forward(&x, &at, None, pass)?;
        }
        let loss = loss_of(&self.head_log_probs(&x, targets, pass)?)?;
        let mut grads = loss.backward()?;
        let mut upstream = grads.remove(boundary.as_tensor()).ok_or_else(|| {
            candle_core::Error::Msg("the loss does not depend on the model's layers".into())
        })?;
        for (layer, (input, rng)) in bottom.iter().zip(saved).rev() {
            let input = Var::from_tensor(&input)?;
            pass.dropout_rng = rng;
            let output = layer.forward(input.as_tensor(), &at, None, pass)?;
            // d/d(output) of Σ output·upstream is `upstream`, exactly: the layer's backward starts
            // from the gradient the whole graph would have given it.
            let mut layer_grads = (output * &upstream)?.sum_all()?.backward()?;
            for (_, lin) in self.linears_of(layer) {
                if let Some(l) = &lin.lora {
                    for var in [&l.a, &l.b] {
                        if let Some(g) = layer_grads.remove(var.as_tensor()) {
                            grads.insert(var.as_tensor(), g);
                        }
                    }
                }
            }
            upstream = layer_grads.remove(input.as_tensor()).ok_or_else(|| {
                candle_core::Error::Msg("a layer's output does not depend on its input".into())
            })?;
        }
        Ok((loss, grads))
    }

    /// Every adapter, by its PEFT module path (`model.layers.N.self_attn.q_proj`).
    pub fn adapters(&self) -> Vec<(String, &Lora)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (path, lin) in self.linears_of(l) {
                if let Some(lora) = &lin.lora {
                    out.push((format!("model.layers.{i}.{path}"), lora));
                }
            }
        }
        out
    }

    /// The adapters of one layer (every layer has the same ones), without their paths.
    pub(crate) fn layer_adapters(&self, layer: usize) -> impl Iterator<Item = &Lora> {
        self.layers
            .get(layer)
            .into_iter()
            .flat_map(|l| self.linears_of(l))
            .filter_map(|(_, lin)| lin.lora.as_ref())
    }

    fn linears_of<'a>(&self, l: &'a Layer) -> [(&'static str, &'a Linear); 7] {
        [
            ("self_attn.q_proj", &l.attn.q),
            ("self_attn.k_proj", &l.attn.k),
            ("self_attn.v_proj", &l.attn.v),
            ("self_attn.o_proj", &l.attn.o),
            ("mlp.gate_proj", &l.mlp.gate),
            ("mlp.up_proj", &l.mlp.up),
            ("mlp.down_proj", &l.mlp.down),
        ]
    }

    /// Every weight with its adapter merged in, by HF name (for `merge`).
    pub fn merged_linear_weights(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (path, lin) in self.linears_of(l) {
                if lin.lora.is_some() {
                    out.push((
                        format!("model.layers.{i}.{path}.weight"),
                        lin.merged_weight()?,
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Replaces the adapters with loaded ones: `tensors` maps module path to (A, B).
    pub fn set_adapters(
        &mut self,
        spec: &LoraSpec,
        mut tensors: HashMap<String, (Tensor, Tensor)>,
    ) -> Result<(), ModelError> {
        let scale = spec.scale();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let lins: [(&str, &mut Linear); 7] = [
                ("self_attn.q_proj", &mut layer.attn.q),
                ("self_attn.k_proj", &mut layer.attn.k),
                ("self_attn.v_proj", &mut layer.attn.v),
                ("self_attn.o_proj", &mut layer.attn.o),
                ("mlp.gate_proj", &mut layer.mlp.gate),
                ("mlp.up_proj", &mut layer.mlp.up),
                ("mlp.down_proj", &mut layer.mlp.down),
            ];
            for (path, lin) in lins {
                let key = format!("model.layers.{i}.{path}");
                lin.lora = match tensors.remove(&key) {
                    None => None,
                    Some((a, b)) => {
                        let (d_out, d_in) = lin.weight.dims2()?;
                        if a.dims() != [spec.r, d_in] || b.dims() != [d_out, spec.r] {
                            return Err(ModelError::Input(format!(
                                "adapter {key}: A is {:?} and B {:?}, the model needs A [{}, {d_in}] and B [{d_out}, {}]",
                                a.dims(), b.dims(), spec.r, spec.r
                            )));
                        }
                        Some(Lora::new(
                            Var::from_tensor(&a.to_dtype(self.dtype)?)?,
                            Var::from_tensor(&b.to_dtype(self.dtype)?)?,
                            scale,
                            spec.dropout,
                        ))
                    }
                };
            }
        }
        if let Some(k) = tensors.keys().next() {
            return Err(ModelError::Input(format!(
                "the adapter has weights for {k}, which this model does not have (another base model?)"
            )));
        }
        Ok(())
    }
}

/// The mean negative log-likelihood per scored token of `examples` under `model`, without a graph:
/// `batch` examples per forward, each in a fresh pass from `pass` (validation's exact training
/// matmuls, or inference's). Returns (mean NLL, scored tokens).
pub fn mean_nll(
    model: &CausalLm,
    examples: &[super::examples::Example],
    pad: u32,
    batch: usize,
    pass: impl Fn() -> Pass,
) -> candle_core::Result<(f64, usize)> {
    let (mut nll, mut scored) = (0.0f64, 0usize);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&super::examples::Example> = chunk.iter().collect();
        let b = super::examples::batch(&refs, pad, model.dtype, &model.device)?;
        let picked = model.target_log_probs(&b.inputs, &b.targets, &mut pass())?;
        let sum = masked_nll(&picked, &b.mask, 1.0)?.detach();
        nll += sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        scored += b.scored;
    }
    Ok((nll / scored.max(1) as f64, scored))
}

/// Mean negative log-likelihood of the targets, from their log-probs `picked` [batch, seq] (as
/// [`CausalLm::target_log_probs`] gives them), over the positions where `mask` is 1, divided by
/// `denominator` tokens (the whole optimizer step's count, so accumulated micro-batches add up to the
/// big batch's mean). Returns the summed NLL / denominator.
pub fn masked_nll(picked: &Tensor, mask: &Tensor, denominator: f64) -> candle_core::Result<Tensor> {
    let nll = (picked.neg()? * mask)?;
    nll.sum_all()? / denominator
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn fused_rope_gives_the_tensor_ops_bits_at_every_offset() {
        let cfg = ModelConfig {
            arch: crate::config::Arch::Llama,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 1,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            vocab_size: 32,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            max_position_embeddings: 64,
            tie_word_embeddings: true,
            qkv_bias: false,
            eos_token_id: None,
        };
        let rope = Rope::new(&cfg, 64, DType::F32, &Device::Cpu).unwrap();
        let mut rng = StdRng::seed_from_u64(4);
        for (t, offset) in [(1, 0), (1, 37), (5, 0), (3, 60)] {
            let x: Vec<f32> = (0..2 * 4 * t * 16)
                .map(|_| rng.random_range(-4.0..4.0))
                .collect();
            let x = Tensor::from_vec(x, (2, 4, t, 16), &Device::Cpu).unwrap();
            let bits = |y: Tensor| crate::test_values::tensor_bits(&y);
            assert_eq!(
                bits(rope.apply(&x, offset).unwrap()),
                bits(rope.apply_tensor_ops(&x, offset).unwrap()),
                "t {t}, offset {offset}"
            );
        }
    }
}
