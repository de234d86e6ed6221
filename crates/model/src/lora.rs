//! A LoRA adapter: its spec (rank, alpha, targets), its weights, and PEFT's fresh init.

use crate::low_rank::TransposedB;
use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::Rng;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
    pub use_rslora: bool,
}

impl LoraSpec {
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// One adapter: `a` [r, in], `b` [out, r].
pub struct Lora {
    pub a: Var,
    pub b: Var,
    pub(crate) scale: f64,
    pub(crate) dropout: f64,
    /// `b` transposed for decoding, kept between calls (`low_rank.rs`).
    pub(crate) decode_b_t: TransposedB,
}

impl Lora {
    pub(crate) fn new(a: Var, b: Var, scale: f64, dropout: f64) -> Lora {
        Lora {
            a,
            b,
            scale,
            dropout,
            decode_b_t: TransposedB::default(),
        }
    }
}

/// PEFT's init: A ~ Kaiming-uniform(a = √5) = U(−1/√in, 1/√in), B = 0 (so a fresh adapter changes nothing).
pub(crate) fn fresh_lora(
    spec: &LoraSpec,
    d_in: usize,
    d_out: usize,
    rng: &mut StdRng,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<Lora> {
    let bound = 1.0 / (d_in as f64).sqrt();
    let a: Vec<f32> = (0..spec.r * d_in)
        .map(|_| rng.random_range(-bound..bound) as f32)
        .collect();
    let a = Tensor::from_vec(a, (spec.r, d_in), dev)?.to_dtype(dtype)?;
    let b = Tensor::zeros((d_out, spec.r), dtype, dev)?;
    Ok(Lora::new(
        Var::from_tensor(&a)?,
        Var::from_tensor(&b)?,
        spec.scale(),
        spec.dropout,
    ))
}
