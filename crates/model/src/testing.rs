//! Helpers for tests of code built on the model (this crate's and the trainer's): a seeded tiny
//! model in a temp dir, a LoRA model over it, and the nudges of a finite-difference check.
//! Not for production use: every function panics on failure, as a test wants.

use crate::config::{Arch, ModelConfig};
use crate::model::{load_weights, CausalLm, LoraSpec, ALL_TARGETS};
use crate::tiny::{self, TinySpec};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

/// A tiny seeded model (2 layers, hidden 16, grouped-query attention) in a new temp dir.
pub fn tiny_dir(arch: Arch) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        arch,
        hidden: 16,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 24,
        max_positions: 64,
        seed: 3,
    };
    tiny::create(dir.path(), &spec).unwrap();
    dir
}

/// LoRA of rank `r` (alpha 2r, no dropout) on every target module.
pub fn lora_spec(r: usize) -> LoraSpec {
    LoraSpec {
        r,
        alpha: 2.0 * r as f64,
        dropout: 0.0,
        target_modules: ALL_TARGETS.iter().map(|s| s.to_string()).collect(),
        use_rslora: false,
    }
}

/// The tiny model in `dir` with rank-2 adapters on every target.
pub fn lora_model(dir: &std::path::Path, dtype: DType) -> CausalLm {
    let cfg = ModelConfig::from_dir(dir).unwrap();
    let w = load_weights(dir, dtype, &Device::Cpu).unwrap();
    CausalLm::new(cfg, w, Some(&lora_spec(2)), 7, dtype, &Device::Cpu).unwrap()
}

/// Gives every B random values, as after some training (at PEFT's init B = 0, so A's gradient is 0).
pub fn randomize_b(m: &CausalLm) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (_, l) in m.adapters() {
        let n = l.b.elem_count();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-0.3..0.3)).collect();
        let t = Tensor::from_vec(v, l.b.shape(), &Device::Cpu)
            .unwrap()
            .to_dtype(l.b.dtype())
            .unwrap();
        l.b.set(&t).unwrap();
    }
}

/// A scalar tensor's value.
pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// Adds `delta` to one element of `var`.
pub fn nudge(var: &Var, index: usize, delta: f64) {
    let mut v: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    v[index] += delta;
    var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
        .unwrap();
}
