//! GPU kernels for rtlab's LoRA trainer, each beside its CPU reference.
//!
//! Kernels are written in cubecl 0.11 and run on wgpu (default feature; Mesa's lavapipe on a
//! machine without a GPU) or CUDA (`cuda` feature). Every kernel has a plain-Rust f32 reference in
//! [`reference`] that its tests compare against. The host API is [`Gpu`]: device buffers
//! ([`GpuTensor`], [`GpuIndices`]) and one method per operation.
//!
//! | operation | device method | CPU reference |
//! | --- | --- | --- |
//! | GEMM with transposes | [`Gpu::matmul_into`] | [`reference::matmul_reference`] |
//! | LoRA linear forward | [`Gpu::lora_forward`] | [`reference::lora_forward_reference`] |
//! | LoRA linear backward | [`Gpu::lora_backward`] | [`reference::lora_backward_reference`] |
//! | RMSNorm forward / backward | [`Gpu::rmsnorm_forward`] / [`Gpu::rmsnorm_backward`] | [`reference::rmsnorm_forward_reference`] / [`reference::rmsnorm_backward_reference`] |
//! | RoPE forward / backward | [`Gpu::rope_forward`] / [`Gpu::rope_backward`] | [`reference::rope_forward_reference`] / [`reference::rope_backward_reference`] |
//! | softmax cross-entropy (+ grad) | [`Gpu::cross_entropy`] | [`reference::cross_entropy_reference`] |
//! | AdamW step | [`Gpu::adamw_step`] | [`reference::adamw_reference`] |
//! | batched strided GEMM | [`Gpu::batched_matmul_into`] | [`reference::matmul_reference`] per entry |
//! | embedding gather | [`Gpu::embedding_into`] | [`reference::embedding_reference`] |
//! | SiLU gate forward / backward | [`Gpu::silu_mul_into`] / [`Gpu::silu_mul_backward_into`] | [`reference::silu_mul_reference`] / [`reference::silu_mul_backward_reference`] |
//! | causal GQA attention forward / backward | [`Gpu::attention_forward`] / [`Gpu::attention_backward`] | [`reference::attention_forward_reference`] / [`reference::attention_backward_reference`] |
//! | weighted cross-entropy (+ grad) | [`Gpu::weighted_cross_entropy_into`] | [`reference::weighted_cross_entropy_reference`] |
//! | whole Llama/Qwen2 LoRA step | [`GpuLlama`] | [`reference_llama`] |
//!
//! Each also has a `*_into` form writing caller-provided buffers and a `*_host` form taking and
//! returning `Vec<f32>` (outputs pre-filled with NaN, so tests see any element left unwritten).

mod adamw;
mod attention;
mod bgemm;
mod elementwise;
mod error;
mod gpu;
pub mod llama;
mod lora;
mod loss;
mod matmul;
mod norm;
pub mod reference;
pub mod reference_llama;
mod rope;

pub use attention::AttentionDims;
pub use bgemm::{BatchedGemm, Operand};
pub use error::{KernelError, Result};
pub use gpu::{Gpu, GpuIndices, GpuTensor};
pub use llama::{AdapterMap, DropoutFn, GpuLlama, LlamaShape, WeightMap, PROJECTIONS};
pub use lora::{LoraForward, LoraGrads};
pub use reference::{AdamWConfig, LoraDims};

/// `y = x Wᵀ + scale · (x Aᵀ) Bᵀ` on row-major slices.
///
/// Shapes: `x` [n, d_in], `w` [d_out, d_in], `a` [r, d_in], `b` [d_out, r]; returns [n, d_out].
#[allow(clippy::too_many_arguments)] // the shapes are the signature of the GPU kernel it references
pub fn lora_linear_forward_reference(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    r: usize,
    scale: f32,
) -> Vec<f32> {
    assert_eq!(x.len(), n * d_in, "x must be [n, d_in]");
    assert_eq!(w.len(), d_out * d_in, "w must be [d_out, d_in]");
    assert_eq!(a.len(), r * d_in, "a must be [r, d_in]");
    assert_eq!(b.len(), d_out * r, "b must be [d_out, r]");
    let mut y = vec![0f32; n * d_out];
    for i in 0..n {
        let xi = &x[i * d_in..(i + 1) * d_in];
        // xa = x_i Aᵀ, [r]
        let xa: Vec<f32> = (0..r)
            .map(|k| {
                xi.iter()
                    .zip(&a[k * d_in..(k + 1) * d_in])
                    .map(|(p, q)| p * q)
                    .sum()
            })
            .collect();
        for o in 0..d_out {
            let base: f32 = xi
                .iter()
                .zip(&w[o * d_in..(o + 1) * d_in])
                .map(|(p, q)| p * q)
                .sum();
            let low_rank: f32 = xa
                .iter()
                .zip(&b[o * r..(o + 1) * r])
                .map(|(p, q)| p * q)
                .sum();
            y[i * d_out + o] = base + scale * low_rank;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_b_gives_the_base_projection() {
        // PEFT starts B at zero, so a fresh adapter must not change the base model's output.
        let (n, d_in, d_out, r) = (2, 3, 2, 1);
        let x = [1.0, 2.0, 3.0, -1.0, 0.5, 2.0];
        let w = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        let a = [0.3, -0.2, 0.1];
        let b = [0.0, 0.0];
        let y = lora_linear_forward_reference(&x, &w, &a, &b, n, d_in, d_out, r, 2.0);
        assert_eq!(y, vec![1.0, 5.0, -1.0, 2.5]);
    }

    #[test]
    fn low_rank_term_is_scaled() {
        let x = [1.0, 1.0];
        let w = [0.0, 0.0];
        let a = [1.0, 2.0]; // xa = 3
        let b = [0.5]; // 1.5
        let y = lora_linear_forward_reference(&x, &w, &a, &b, 1, 2, 1, 1, 2.0);
        assert_eq!(y, vec![3.0]);
    }
}
