//! Attention for one new token per sequence, read straight from the KV cache: decoding's step.
//!
//! The general path (`Attention::forward` in `model.rs`) builds the attention from tensor ops: the
//! cached keys and values copied once per query head that shares them (grouped-query attention),
//! two matrix products through `gemm`, a scale, a softmax of four ops. For one query row per head
//! those ops are tiny, and each pays an allocation, a dispatch and, for the copies, a pass over the
//! whole cache, every layer, every token. Here each (sequence, head) reads its key/value head's
//! cache in place, on candle's thread pool.
//!
//! The arithmetic is the plain one (`q · k` summed over the head's dimensions in order, scaled,
//! softmax with the max subtracted, then `Σ p v` in position order); it differs from the general
//! path's in the last bits only, which a test bounds against it.

use crate::q8::SharedOut;

/// The shapes of a decoding step's attention.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache buffers hold room for (the keys' row length).
    pub capacity: usize,
    /// Positions cached, the new token's included.
    pub len: usize,
}

/// `softmax(q kᵀ / √head_dim) v` for one query per (sequence, head).
///
/// - `q`: [batch, heads, head_dim];
/// - `keys_t`: [batch, kv_heads, head_dim, capacity], the cache's keys transposed;
/// - `values`: [batch, kv_heads, capacity, head_dim];
///
/// and the result is [batch, heads, head_dim]. Query head `h` reads key/value head
/// `h / (heads / kv_heads)`, as `repeat_heads` lays them out.
pub(crate) fn attend(q: &[f32], keys_t: &[f32], values: &[f32], s: Shape) -> Vec<f32> {
    let Shape {
        batch,
        heads,
        kv_heads,
        head_dim: d,
        capacity,
        len,
    } = s;
    assert!(
        q.len() == batch * heads * d
            && keys_t.len() == batch * kv_heads * d * capacity
            && values.len() == batch * kv_heads * capacity * d
            && len <= capacity
            && heads.is_multiple_of(kv_heads),
        "decode attention: inconsistent shapes {s:?}"
    );
    let rep = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; batch * heads * d];
    let shared = SharedOut(out.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(batch * heads, |items| {
        let mut scores = vec![0f32; len];
        for item in items {
            let (b, h) = (item / heads, item % heads);
            let kv = b * kv_heads + h / rep;
            let q = &q[item * d..(item + 1) * d];
            let keys_t = &keys_t[kv * d * capacity..(kv + 1) * d * capacity];
            let values = &values[kv * capacity * d..(kv + 1) * capacity * d];
            // SAFETY: item's d outputs are written by this work item alone.
            let y = unsafe { std::slice::from_raw_parts_mut(shared.at(item * d), d) };
            one_head(q, keys_t, values, (capacity, len), scale, &mut scores, y);
        }
    });
    out
}

/// One head's attention, vectorized for AVX2 where the CPU has it. The arithmetic is the same
/// everywhere (a multiply, then an add: no fused multiply-add, which has no fast form without FMA).
fn one_head(
    q: &[f32],
    keys_t: &[f32],
    values: &[f32],
    (capacity, len): (usize, usize),
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { one_head_avx2(q, keys_t, values, (capacity, len), scale, scores, y) };
    }
    one_head_portable(q, keys_t, values, (capacity, len), scale, scores, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn one_head_avx2(
    q: &[f32],
    keys_t: &[f32],
    values: &[f32],
    shape: (usize, usize),
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    one_head_portable(q, keys_t, values, shape, scale, scores, y)
}

/// The arithmetic, written so that the compiler vectorizes it over positions (scores) and over the
/// head's dimensions (the weighted sum of values): each loop's iterations are independent.
#[inline(always)]
fn one_head_portable(
    q: &[f32],
    keys_t: &[f32],
    values: &[f32],
    (capacity, len): (usize, usize),
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    let d = q.len();
    let scores = &mut scores[..len];
    scores.fill(0.0);
    for (i, &qi) in q.iter().enumerate() {
        let keys = &keys_t[i * capacity..i * capacity + len];
        for (s, &k) in scores.iter_mut().zip(keys) {
            *s += qi * k;
        }
    }
    let mut max = f32::NEG_INFINITY;
    for s in scores.iter_mut() {
        *s *= scale;
        max = max.max(*s);
    }
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    y.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        let v = &values[j * d..(j + 1) * d];
        for (o, &vi) in y.iter_mut().zip(v) {
            *o += p * vi;
        }
    }
    let inv = 1.0 / total;
    for o in y.iter_mut() {
        *o *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn one_token_attention_is_the_textbook_formula() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let s = Shape {
            batch: 2,
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
            capacity: 16,
            len: 11,
        };
        let mut random =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0..2.0)).collect() };
        let q = random(s.batch * s.heads * s.head_dim);
        let keys_t = random(s.batch * s.kv_heads * s.head_dim * s.capacity);
        let values = random(s.batch * s.kv_heads * s.capacity * s.head_dim);
        let ours = attend(&q, &keys_t, &values, s);
        for b in 0..s.batch {
            for h in 0..s.heads {
                let kv = b * s.kv_heads + h / (s.heads / s.kv_heads);
                let qv = |i: usize| q[(b * s.heads + h) * s.head_dim + i] as f64;
                let key =
                    |j: usize, i: usize| keys_t[(kv * s.head_dim + i) * s.capacity + j] as f64;
                let value =
                    |j: usize, i: usize| values[(kv * s.capacity + j) * s.head_dim + i] as f64;
                let logits: Vec<f64> = (0..s.len)
                    .map(|j| {
                        (0..s.head_dim).map(|i| qv(i) * key(j, i)).sum::<f64>()
                            / (s.head_dim as f64).sqrt()
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for i in 0..s.head_dim {
                    let expected: f64 = (0..s.len).map(|j| e[j] / total * value(j, i)).sum();
                    let got = ours[(b * s.heads + h) * s.head_dim + i] as f64;
                    assert!(
                        (got - expected).abs() < 1e-5,
                        "b {b} h {h} i {i}: {got} vs {expected}"
                    );
                }
            }
        }
    }
}
