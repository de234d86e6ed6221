//! A frozen weight kept in its GGUF quantization: what decoding's and QLoRA's products take, and the
//! dispatch to rtlab's kernel for its block format (Q8_0 in `q8.rs`, Q4_1 in `q4_1.rs`), or None where
//! candle's own kernel must run. Both kernel modules sit below this one, so neither imports the other
//! back.

use candle_core::quantized::{GgmlDType, QTensor};
use std::sync::{Arc, OnceLock};

/// A frozen weight kept in its GGUF quantization, with what the Q8_0 kernel needs precomputed.
pub struct QuantizedWeight {
    pub tensor: Arc<QTensor>,
    /// The blocks' scales as f32, converted on first use (the Q8_0 kernel's).
    scales: OnceLock<Vec<f32>>,
}

impl QuantizedWeight {
    pub fn new(tensor: Arc<QTensor>) -> QuantizedWeight {
        QuantizedWeight {
            tensor,
            scales: OnceLock::new(),
        }
    }

    /// `x Wᵀ` for `x` [m, k] (row-major), as [m, n]; None where candle's own kernel must run.
    pub fn matmul_t(&self, x: &[f32], m: usize) -> candle_core::Result<Option<Vec<f32>>> {
        self.matmul_t_with(x, m, crate::q8::Dots::best())
    }

    /// [`Self::matmul_t`] with the dot products' instructions chosen (on a CPU that has them). All
    /// give the same bits; the tests check each.
    pub(crate) fn matmul_t_with(
        &self,
        x: &[f32],
        m: usize,
        dots: crate::q8::Dots,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        if self.tensor.dtype() == GgmlDType::Q4_1 {
            return crate::q4_1::matmul_t(&self.tensor, x, m, dots);
        }
        crate::q8::matmul_t(&self.tensor, &self.scales, x, m, dots)
    }

    /// `x Wᵀ` for each of several weights of the same `x` [m, k] (a layer's q, k and v; its gate
    /// and up): `x` quantized once and the products computed in one wake of the thread pool, each the
    /// bits of [`Self::matmul_t`] on its weight alone. None unless rtlab's Q4_1 kernel takes every
    /// one (the format SmolLM2's file and most 4-bit files use for a layer's products); the caller
    /// then runs them one by one.
    pub fn matmul_t_shared(
        weights: &[&QuantizedWeight],
        x: &[f32],
        m: usize,
    ) -> candle_core::Result<Option<Vec<Vec<f32>>>> {
        if weights.iter().any(|w| w.tensor.dtype() != GgmlDType::Q4_1) {
            return Ok(None);
        }
        let tensors: Vec<&QTensor> = weights.iter().map(|w| w.tensor.as_ref()).collect();
        crate::q4_1::matmul_t_shared(&tensors, x, m, crate::q8::Dots::best())
    }
}
