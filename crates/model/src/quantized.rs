//! A frozen weight kept in its GGUF quantization: what decoding's and QLoRA's products take, and the
//! dispatch to rtlab's kernel for its block format (Q4_1 in `q4_1.rs`, Q8_0 in `q8_0.rs`, each
//! repacked at load for its kernel), or None where candle's own kernel must run (other formats,
//! CPUs without AVX2, FMA and F16C). The kernel modules sit below this one, so none imports it back.

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use std::sync::Arc;

/// A frozen weight kept in its GGUF quantization, in the layout its kernel reads.
pub struct QuantizedWeight {
    blocks: Blocks,
}

/// The weight's bytes: as the file holds them (candle's tensor), or repacked for rtlab's Q4_1
/// kernel (the same bytes in another order; the file's tensor is not kept beside them).
enum Blocks {
    Ggml(Arc<QTensor>),
    Q4_1(crate::q4_1::PackedQ4_1),
    Q8_0(crate::q8_0::PackedQ8_0),
}

impl QuantizedWeight {
    /// `tensor` as decoding reads it: a Q4_1 or Q8_0 tensor that rtlab's kernels take (on x86 with
    /// AVX2, FMA and F16C) is repacked for them; any other is kept as it is.
    pub fn new(tensor: QTensor) -> candle_core::Result<QuantizedWeight> {
        let blocks = if let Some(packed) = crate::q4_1::PackedQ4_1::pack(&tensor)? {
            Blocks::Q4_1(packed)
        } else if let Some(packed) = crate::q8_0::PackedQ8_0::pack(&tensor)? {
            Blocks::Q8_0(packed)
        } else {
            Blocks::Ggml(Arc::new(tensor))
        };
        Ok(QuantizedWeight { blocks })
    }

    /// [out, in].
    pub fn dims2(&self) -> candle_core::Result<(usize, usize)> {
        match &self.blocks {
            Blocks::Ggml(q) => q.shape().dims2(),
            Blocks::Q4_1(p) => Ok(p.dims()),
            Blocks::Q8_0(p) => Ok(p.dims()),
        }
    }

    /// The weight as GGML blocks: candle's tensor (a packed weight is unpacked, bit for bit).
    pub fn qtensor(&self) -> candle_core::Result<Arc<QTensor>> {
        match &self.blocks {
            Blocks::Ggml(q) => Ok(q.clone()),
            Blocks::Q4_1(p) => Ok(Arc::new(p.to_qtensor()?)),
            Blocks::Q8_0(p) => Ok(Arc::new(p.to_qtensor()?)),
        }
    }

    /// The weight dequantized to f32 (a copy), as candle dequantizes its blocks (to the bit).
    pub fn dequantize(&self, dev: &Device) -> candle_core::Result<Tensor> {
        match &self.blocks {
            Blocks::Ggml(q) => q.dequantize(dev),
            Blocks::Q4_1(p) => Tensor::from_vec(p.dequantize(), p.dims(), dev),
            Blocks::Q8_0(p) => Tensor::from_vec(p.dequantize(), p.dims(), dev),
        }
    }

    /// The weight's bytes where they lie in this process's memory (a CPU tensor's buffer or the
    /// packed bytes); None for a copy (another device's).
    pub(crate) fn buffer(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        match &self.blocks {
            Blocks::Ggml(q) => q.data().ok(),
            Blocks::Q4_1(p) => Some(std::borrow::Cow::Borrowed(p.bytes())),
            Blocks::Q8_0(p) => Some(std::borrow::Cow::Borrowed(p.bytes())),
        }
    }

    /// `x Wᵀ` for `x` [m, k] (row-major), as [m, n]; None where candle's own kernel must run.
    pub fn matmul_t(&self, x: &[f32], m: usize) -> candle_core::Result<Option<Vec<f32>>> {
        self.matmul_t_with(x, m, crate::cpu_kernels::Dots::best())
    }

    /// [`Self::matmul_t`] with the dot products' instructions chosen (on a CPU that has them). All
    /// give the same bits; the tests check each.
    pub(crate) fn matmul_t_with(
        &self,
        x: &[f32],
        m: usize,
        dots: crate::cpu_kernels::Dots,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        match &self.blocks {
            Blocks::Q4_1(p) => crate::q4_1::matmul_t(p, x, m, dots),
            Blocks::Q8_0(p) => crate::q8_0::matmul_t(p, x, m, dots),
            Blocks::Ggml(_) => Ok(None),
        }
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
        let packed: Option<Vec<&crate::q4_1::PackedQ4_1>> = weights
            .iter()
            .map(|w| match &w.blocks {
                Blocks::Q4_1(p) => Some(p),
                Blocks::Ggml(_) | Blocks::Q8_0(_) => None,
            })
            .collect();
        match packed {
            Some(packed) => {
                crate::q4_1::matmul_t_shared(&packed, x, m, crate::cpu_kernels::Dots::best())
            }
            None => Ok(None),
        }
    }
}
