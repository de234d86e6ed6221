//! Values the unit tests share: seeded random inputs, and the bits a bit-equality test compares.

use candle_core::Tensor;

/// `n` values drawn uniformly from `[-range, range)`, the same for the same seed.
pub(crate) fn uniform(n: usize, seed: u64, range: f32) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-range..range)).collect()
}

/// Each value's bits, so that a comparison tells -0 from +0 and NaN from NaN.
pub(crate) fn value_bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// An f32 tensor's values' bits, in row-major order.
pub(crate) fn tensor_bits(t: &Tensor) -> Vec<u32> {
    value_bits(&t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
}
