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

use crate::cpu_kernels::SharedOut;

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
/// - `starts`: per sequence, its first cached position (empty: 0 for all). Sequences of different
///   lengths share a cache right-aligned, each after its own padding (see `KvCache::stack`).
///
/// and the result is [batch, heads, head_dim]. Query head `h` reads key/value head
/// `h / (heads / kv_heads)`, as `repeat_heads` lays them out.
pub(crate) fn attend(
    q: &[f32],
    keys_t: &[f32],
    values: &[f32],
    s: Shape,
    starts: &[usize],
) -> Vec<f32> {
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
            && heads.is_multiple_of(kv_heads)
            && (starts.is_empty() || (starts.len() == batch && starts.iter().all(|&f| f < len))),
        "decode attention: inconsistent shapes {s:?}, starts {starts:?}"
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
            let start = starts.get(b).copied().unwrap_or(0);
            let q = &q[item * d..(item + 1) * d];
            // The sequence's own positions: its keys from `start` in each dimension's row, its
            // values from row `start`.
            let keys_t = &keys_t[kv * d * capacity + start..(kv + 1) * d * capacity];
            let values = &values[(kv * capacity + start) * d..(kv + 1) * capacity * d];
            // SAFETY: item's d outputs are written by this work item alone.
            let y = unsafe { std::slice::from_raw_parts_mut(shared.at(item * d), d) };
            one_head(
                q,
                keys_t,
                values,
                (capacity, len - start),
                scale,
                &mut scores,
                y,
            );
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

/// [`one_head_portable`] with the two sums kept in registers: the scores of 64 positions at a time
/// in eight registers while the head's dimensions are walked (the portable loop loads and stores
/// every score once per dimension), and the output's dimensions in registers while the positions
/// are walked. Each score and each output value is still summed in the same order, a multiply then
/// an add, so the bits are the portable form's (a test compares them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn one_head_avx2(
    q: &[f32],
    keys_t: &[f32],
    values: &[f32],
    (capacity, len): (usize, usize),
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = q.len();
    if !d.is_multiple_of(8) || d > 8 * MAX_REGISTERS {
        return one_head_portable(q, keys_t, values, (capacity, len), scale, scores, y);
    }
    let scores = &mut scores[..len];
    let mut j = 0;
    unsafe {
        while j + 64 <= len {
            score_block::<8>(q, keys_t, capacity, j, scores);
            j += 64;
        }
        while j + 8 <= len {
            score_block::<1>(q, keys_t, capacity, j, scores);
            j += 8;
        }
    }
    for (t, s) in scores.iter_mut().enumerate().skip(j) {
        *s = 0.0;
        for (i, &qi) in q.iter().enumerate() {
            *s += qi * keys_t[i * capacity + t];
        }
    }
    let total = softmax_numerators(scores, scale);
    // Σ p v with the output's d values in d / 8 registers.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); MAX_REGISTERS];
        let lanes = d / 8;
        for (t, &p) in scores.iter().enumerate() {
            let p = _mm256_set1_ps(p);
            let v = values.as_ptr().add(t * d);
            for (r, a) in acc.iter_mut().enumerate().take(lanes) {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(p, _mm256_loadu_ps(v.add(8 * r))));
            }
        }
        let inv = _mm256_set1_ps(1.0 / total);
        for (r, a) in acc.iter().enumerate().take(lanes) {
            _mm256_storeu_ps(y.as_mut_ptr().add(8 * r), _mm256_mul_ps(*a, inv));
        }
    }
}

/// Scales the scores, replaces each by `exp(score - max)` and returns their sum: the softmax but for
/// its division, which the caller applies to the weighted sum instead.
#[inline(always)]
fn softmax_numerators(scores: &mut [f32], scale: f32) -> f32 {
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
    total
}

/// Registers for a head's output: head dimensions up to 128.
#[cfg(target_arch = "x86_64")]
const MAX_REGISTERS: usize = 16;

/// The scores of positions `from..from + 8·W`: `Σ_i q_i · k_i` over the head's dimensions in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn score_block<const W: usize>(
    q: &[f32],
    keys_t: &[f32],
    capacity: usize,
    from: usize,
    scores: &mut [f32],
) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [_mm256_setzero_ps(); W];
        for (i, &qi) in q.iter().enumerate() {
            let qi = _mm256_set1_ps(qi);
            let keys = keys_t.as_ptr().add(i * capacity + from);
            for (w, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(qi, _mm256_loadu_ps(keys.add(8 * w))));
            }
        }
        for (w, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(scores.as_mut_ptr().add(from + 8 * w), *a);
        }
    }
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
    let total = softmax_numerators(scores, scale);
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
    fn the_avx2_head_gives_the_portable_forms_bits() {
        if !is_x86_feature_detected!("avx2") {
            panic!("this test needs an x86 CPU with AVX2");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        // Lengths that leave every remainder of the 64- and 8-position blocks; SmolLM2's 64
        // dimensions, a small head and one the registers cannot hold (the portable fallback).
        for (d, capacity) in [(64, 200), (8, 80), (24, 70), (136, 20)] {
            for len in [1, 7, 8, 9, 63, 64, 65, 72, 127, 130, capacity] {
                if len > capacity {
                    continue;
                }
                let q: Vec<f32> = (0..d).map(|_| rng.random_range(-2.0..2.0)).collect();
                let keys_t: Vec<f32> = (0..d * capacity)
                    .map(|_| rng.random_range(-2.0..2.0))
                    .collect();
                let values: Vec<f32> = (0..d * capacity)
                    .map(|_| rng.random_range(-2.0..2.0))
                    .collect();
                let (mut s1, mut s2) = (vec![0f32; capacity], vec![0f32; capacity]);
                let (mut y1, mut y2) = (vec![0f32; d], vec![0f32; d]);
                let scale = 1.0 / (d as f32).sqrt();
                // SAFETY: checked above.
                unsafe {
                    one_head_avx2(
                        &q,
                        &keys_t,
                        &values,
                        (capacity, len),
                        scale,
                        &mut s1,
                        &mut y1,
                    )
                };
                one_head_portable(
                    &q,
                    &keys_t,
                    &values,
                    (capacity, len),
                    scale,
                    &mut s2,
                    &mut y2,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y1), bits(&y2), "d {d}, len {len}");
            }
        }
    }

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
        // Both sequences from position 0, then the first after four positions of padding.
        for starts in [vec![], vec![4, 0]] {
            check_textbook(&q, &keys_t, &values, s, &starts);
        }
    }

    fn check_textbook(q: &[f32], keys_t: &[f32], values: &[f32], s: Shape, starts: &[usize]) {
        let ours = attend(q, keys_t, values, s, starts);
        for b in 0..s.batch {
            let start = starts.get(b).copied().unwrap_or(0);
            for h in 0..s.heads {
                let kv = b * s.kv_heads + h / (s.heads / s.kv_heads);
                let qv = |i: usize| q[(b * s.heads + h) * s.head_dim + i] as f64;
                let key =
                    |j: usize, i: usize| keys_t[(kv * s.head_dim + i) * s.capacity + j] as f64;
                let value =
                    |j: usize, i: usize| values[(kv * s.capacity + j) * s.head_dim + i] as f64;
                let logits: Vec<f64> = (start..s.len)
                    .map(|j| {
                        (0..s.head_dim).map(|i| qv(i) * key(j, i)).sum::<f64>()
                            / (s.head_dim as f64).sqrt()
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for i in 0..s.head_dim {
                    let expected: f64 = (start..s.len)
                        .map(|j| e[j - start] / total * value(j, i))
                        .sum();
                    let got = ours[(b * s.heads + h) * s.head_dim + i] as f64;
                    assert!(
                        (got - expected).abs() < 1e-5,
                        "b {b} h {h} i {i}, starts {starts:?}: {got} vs {expected}"
                    );
                }
            }
        }
    }
}
