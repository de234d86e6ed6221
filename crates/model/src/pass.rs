//! What a forward pass needs besides its input ([`Pass`]: training or decoding, adapters on or
//! off, a graph kept or not, each row alone or not), and the seeded dropout a training pass draws.

use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a forward pass needs besides its input: dropout's seeded generator when training.
pub struct Pass {
    pub dropout_rng: Option<StdRng>,
    /// A training pass computes a quantized base's matmuls exactly, on the dequantized weight (as
    /// QLoRA does); inference uses the quantized kernel, as llama.cpp does.
    pub training: bool,
    /// False computes the base alone, as if no adapter were attached: DPO's `reference: "base"`,
    /// which LoRA gives for free (no second copy of the model).
    pub adapters: bool,
    /// False for decoding: the adapters enter as plain tensors, not as tracked variables. A KV cache
    /// built from tracked tensors keeps every step's autograd graph alive (16 GB after 128 tokens of a
    /// benchmark batch on the 135M model).
    pub track_gradients: bool,
    /// True for decoding: the adapter's product gives each row the bits it gets alone
    /// (`low_rank`), so a batch never changes a sample's tokens. Other passes keep `gemm`, whose
    /// bits the training and log-prob checks are made on.
    pub rows_alone: bool,
}

impl Pass {
    pub fn inference() -> Pass {
        Pass {
            dropout_rng: None,
            training: false,
            adapters: true,
            track_gradients: true,
            rows_alone: false,
        }
    }
    /// Generation: no dropout, the quantized kernels, nothing kept for a backward pass, and each
    /// row of a batch computed as if alone.
    pub fn decoding() -> Pass {
        Pass {
            track_gradients: false,
            rows_alone: true,
            ..Pass::inference()
        }
    }
    pub fn training(seed: u64) -> Pass {
        Pass {
            dropout_rng: Some(StdRng::seed_from_u64(seed)),
            training: true,
            adapters: true,
            track_gradients: true,
            rows_alone: false,
        }
    }
    /// A frozen reference pass: no dropout, the training pass's exact matmuls (so that at step 0 the
    /// policy's and the reference's log-probs agree to the bit), with or without the adapters.
    pub fn reference(adapters: bool) -> Pass {
        Pass {
            dropout_rng: None,
            training: true,
            adapters,
            track_gradients: true,
            rows_alone: false,
        }
    }
    /// The same pass, keeping no autograd graph: for log-probs and losses that are only read
    /// (validation, DPO's reference), whose graph would hold every layer's activations until the
    /// result is dropped.
    pub fn without_graph(self) -> Pass {
        Pass {
            track_gradients: false,
            ..self
        }
    }
}

/// An inverted-dropout mask of `n` values (0 or 1/keep). The CPU and GPU paths draw the same masks
/// in forward order, so they train alike. One u64 from the seeded generator seeds a SplitMix64
/// stream for the mask: a ChaCha draw per element cost more than the tiny model's whole step.
/// SplitMix64's state after `i + 1` steps is `seed + (i + 1)·γ`, so each value is computed from its
/// index, and a mask (21 M values a step for r 8 on SmolLM2's q and v) is drawn on the whole pool.
pub fn dropout_mask(n: usize, p: f64, rng: &mut StdRng) -> Vec<f32> {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    /// Values a work item draws: the pool's chunks are rows of this many.
    const CHUNK: usize = 4096;
    let keep = 1.0 - p;
    let threshold = (keep * (1u64 << 53) as f64) as u64;
    let scaled = (1.0 / keep) as f32;
    let seed: u64 = rng.random();
    let value = |i: usize| {
        let mut z = seed.wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GAMMA));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if (z >> 11) < threshold {
            scaled
        } else {
            0.0
        }
    };
    let [mut mask] = crate::fused::map_rows(n.div_ceil(CHUNK), CHUNK, |chunk, [out]| {
        for (j, v) in out.iter_mut().enumerate() {
            *v = value(chunk * CHUNK + j);
        }
    });
    mask.truncate(n);
    mask
}

/// Inverted dropout (candle's own RNG cannot be seeded on CPU).
pub(crate) fn dropout(x: &Tensor, p: f64, rng: &mut StdRng) -> candle_core::Result<Tensor> {
    let mask = dropout_mask(x.elem_count(), p, rng);
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The mask as SplitMix64 draws it, one step after another: the form the pool's index-based
    /// draw must equal (the masks that trained every adapter so far, and the GPU path's).
    fn sequential_mask(n: usize, p: f64, rng: &mut StdRng) -> Vec<f32> {
        let keep = 1.0 - p;
        let threshold = (keep * (1u64 << 53) as f64) as u64;
        let scaled = (1.0 / keep) as f32;
        let mut state: u64 = rng.random();
        (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 31;
                if (z >> 11) < threshold {
                    scaled
                } else {
                    0.0
                }
            })
            .collect()
    }

    #[test]
    fn a_mask_drawn_on_the_pool_is_the_sequential_splitmix_mask() {
        // Sizes below the pool's threshold, at a chunk's edge, and a step's q_proj mask.
        for n in [0, 1, 4095, 4096, 4097, 631 * 576] {
            for p in [0.05, 0.5] {
                let (mut a, mut b) = (StdRng::seed_from_u64(7), StdRng::seed_from_u64(7));
                let (pooled, sequential) =
                    (dropout_mask(n, p, &mut a), sequential_mask(n, p, &mut b));
                assert_eq!(pooled.len(), n);
                assert!(
                    pooled
                        .iter()
                        .zip(&sequential)
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "n {n}, p {p}: the masks differ"
                );
                // Both leave the generator in the same state for the next mask.
                assert_eq!(a.random::<u64>(), b.random::<u64>());
            }
        }
    }
}
