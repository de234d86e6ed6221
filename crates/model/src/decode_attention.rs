//! Attention for one new token per sequence, read straight from the KV cache: decoding's step.
//!
//! The general path (`Attention::forward` in `model.rs`) builds the attention from tensor ops: the
//! cached keys and values copied once per query head that shares them (grouped-query attention),
//! two matrix products through `gemm`, a scale, a softmax of four ops. For one query row per head
//! those ops are tiny, and each pays an allocation, a dispatch and, for the copies, a pass over the
//! whole cache, every layer, every token. Here each (sequence, key/value head) reads its cache in
//! place, on candle's thread pool, for all the query heads that share it.
//!
//! A sequence's cached positions may lie in two runs ([`Run`]): a prompt's positions, shared by
//! all its samples (the cache keeps them once, see `kv_cache.rs`), then the sample's own. The runs
//! are read in order, as one sequence: what a step reads from memory for n samples of one prompt
//! is the prompt's keys and values once, not n times.
//!
//! The arithmetic is the plain one (`q · k` summed over the head's dimensions in order, scaled,
//! softmax with the max subtracted, then `Σ p v` in position order); it differs from the general
//! path's in the last bits only, which a test bounds against it. Every vectorized form (AVX2, and
//! AVX-512 with several heads per pass) and every split of the positions into runs gives the
//! portable form's bits (tests).

use crate::cpu_kernels::SharedOut;
use crate::exp::exp_in_place;

/// The shapes of a decoding step's attention.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// A run of one key/value head's cached positions: `len` keys in the first columns of `keys_t`
/// ([head_dim, capacity], transposed) and their values, the first rows of `values` ([capacity,
/// head_dim]).
#[derive(Clone, Copy)]
pub(crate) struct Run<'a> {
    pub keys_t: &'a [f32],
    pub values: &'a [f32],
    pub capacity: usize,
    pub len: usize,
}

impl Run<'_> {
    fn check(&self, d: usize) -> bool {
        self.len <= self.capacity
            && (self.len == 0
                || (self.keys_t.len() >= (d - 1) * self.capacity + self.len
                    && self.values.len() >= self.len * d))
    }
}

/// A sequence's runs for one key/value head, in position order: at most a shared prompt, then the
/// sequence's own.
pub(crate) type Runs<'a> = ([Run<'a>; 2], usize);

/// `softmax(q kᵀ / √head_dim) v` for one query per (sequence, head), `q` [batch, heads, head_dim],
/// over the positions `runs(sequence, kv_head)` gives; the result is [batch, heads, head_dim].
/// Query head `h` reads key/value head `h / (heads / kv_heads)`, as `repeat_heads` lays them out.
pub(crate) fn attend<'a>(
    q: &[f32],
    s: Shape,
    runs: impl Fn(usize, usize) -> Runs<'a> + Sync,
) -> Vec<f32> {
    let Shape {
        batch,
        heads,
        kv_heads,
        head_dim: d,
    } = s;
    assert!(
        q.len() == batch * heads * d && kv_heads > 0 && heads.is_multiple_of(kv_heads) && d > 0,
        "decode attention: inconsistent shapes {s:?}"
    );
    let rep = heads / kv_heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0f32; batch * heads * d];
    let shared = SharedOut(out.as_mut_ptr());
    // A work item is the query heads that read one key/value head, computed together so that its
    // keys and values are read once for all of them; where that leaves too few items to share
    // between the pool's threads (one stream: SmolLM2's 3 key/value heads on 2 threads), a work item
    // is one query head. Either way each head gets the same bits.
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    let together = match batch * kv_heads >= 4 * threads {
        true => rep,
        false => 1,
    };
    candle_core::utils::barrier_pool().execute_chunked(batch * heads / together, |items| {
        let mut scores = Vec::new();
        for item in items {
            let first_head = item * together;
            let (b, kv) = (first_head / heads, (first_head % heads) / rep);
            let (runs, n) = runs(b, kv);
            let runs = &runs[..n];
            assert!(
                runs.iter().all(|r| r.check(d)),
                "decode attention: a run of sequence {b} is shorter than it says"
            );
            let len: usize = runs.iter().map(|r| r.len).sum();
            scores.resize(together * len, 0.0);
            let q = &q[first_head * d..(first_head + together) * d];
            // SAFETY: these heads' outputs are written by this work item alone.
            let y =
                unsafe { std::slice::from_raw_parts_mut(shared.at(first_head * d), together * d) };
            kv_group(q, runs, d, scale, &mut scores, y);
        }
    });
    out
}

/// The attention of the query heads `q` ([rep, head_dim]) that read one key/value head: on AVX-512,
/// several heads per pass over the keys and values, else one head at a time. Every form gives
/// [`one_head_portable`]'s bits (a test compares them).
fn kv_group(q: &[f32], runs: &[Run], d: usize, scale: f32, scores: &mut [f32], y: &mut [f32]) {
    let rep = q.len() / d;
    let len: usize = runs.iter().map(|r| r.len).sum();
    #[cfg(target_arch = "x86_64")]
    if crate::cpu_kernels::cpu().avx512f && d.is_multiple_of(16) && d <= 128 {
        // Heads per pass: their sums (d / 16 registers each) fit in 16 registers.
        let per_pass = (256 / d).min(4);
        let mut h = 0;
        while h < rep {
            let n = per_pass.min(rep - h);
            let (q, y) = (&q[h * d..(h + n) * d], &mut y[h * d..(h + n) * d]);
            let s = &mut scores[..n * len];
            macro_rules! dispatch {
                ($(($heads:literal, $regs:literal)),*) => {
                    match (n, d / 16) {
                        // SAFETY: the CPU has AVX-512 F.
                        $(($heads, $regs) => unsafe {
                            heads_avx512::<$heads, $regs>(q, runs, scale, s, y)
                        },)*
                        _ => unreachable!("{n} heads of {d} dimensions"),
                    }
                };
            }
            dispatch!(
                (1, 1),
                (2, 1),
                (3, 1),
                (4, 1),
                (1, 2),
                (2, 2),
                (3, 2),
                (4, 2),
                (1, 3),
                (2, 3),
                (3, 3),
                (4, 3),
                (1, 4),
                (2, 4),
                (3, 4),
                (4, 4),
                (1, 5),
                (2, 5),
                (3, 5),
                (1, 6),
                (2, 6),
                (1, 7),
                (2, 7),
                (1, 8),
                (2, 8)
            );
            h += n;
        }
        return;
    }
    for h in 0..rep {
        one_head(
            &q[h * d..(h + 1) * d],
            runs,
            scale,
            &mut scores[..len],
            &mut y[h * d..(h + 1) * d],
        );
    }
}

/// `H` query heads of one key/value head, `L` registers of 16 dimensions each, on AVX-512: per
/// dimension one load of 64 positions' keys serves every head's scores, and per position one load
/// of its values serves every head's sum. Each score and each output value is summed in
/// [`one_head_portable`]'s order, a multiply then an add, so the bits are its bits; the positions
/// past a run's last multiple of 64 are masked lanes of the same operations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn heads_avx512<const H: usize, const L: usize>(
    q: &[f32],
    runs: &[Run],
    scale: f32,
    scores: &mut [f32],
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let d = 16 * L;
    let len: usize = runs.iter().map(|r| r.len).sum();
    assert!(q.len() == H * d && y.len() == H * d && scores.len() >= H * len);
    assert!(runs.iter().all(|r| r.check(d)));
    unsafe {
        let mut offset = 0;
        for run in runs {
            let mut j = 0;
            while j < run.len {
                let lanes = (run.len - j).min(64);
                let masks: [__mmask16; 4] = std::array::from_fn(|w| {
                    let left = lanes.saturating_sub(16 * w).min(16);
                    ((1u32 << left) - 1) as __mmask16
                });
                let mut acc = [[_mm512_setzero_ps(); 4]; H];
                for i in 0..d {
                    let row = run.keys_t.as_ptr().add(i * run.capacity + j);
                    let keys: [__m512; 4] =
                        std::array::from_fn(|w| _mm512_maskz_loadu_ps(masks[w], row.add(16 * w)));
                    for (h, acc) in acc.iter_mut().enumerate() {
                        let qi = _mm512_set1_ps(*q.get_unchecked(h * d + i));
                        for (a, k) in acc.iter_mut().zip(keys) {
                            *a = _mm512_add_ps(*a, _mm512_mul_ps(qi, k));
                        }
                    }
                }
                for (h, acc) in acc.iter().enumerate() {
                    for (w, a) in acc.iter().enumerate() {
                        let at = scores.as_mut_ptr().add(h * len + offset + j + 16 * w);
                        _mm512_mask_storeu_ps(at, masks[w], *a);
                    }
                }
                j += lanes;
            }
            offset += run.len;
        }
        let mut totals = [0f32; H];
        for (h, total) in totals.iter_mut().enumerate() {
            *total = softmax_numerators(&mut scores[h * len..(h + 1) * len], scale);
        }
        let mut acc = [[_mm512_setzero_ps(); L]; H];
        let mut offset = 0;
        for run in runs {
            for t in 0..run.len {
                let v = run.values.as_ptr().add(t * d);
                let v: [__m512; L] = std::array::from_fn(|r| _mm512_loadu_ps(v.add(16 * r)));
                for (h, acc) in acc.iter_mut().enumerate() {
                    let p = _mm512_set1_ps(*scores.get_unchecked(h * len + offset + t));
                    for (a, v) in acc.iter_mut().zip(v) {
                        *a = _mm512_add_ps(*a, _mm512_mul_ps(p, v));
                    }
                }
            }
            offset += run.len;
        }
        for (h, acc) in acc.iter().enumerate() {
            let inv = _mm512_set1_ps(1.0 / totals[h]);
            for (r, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(y.as_mut_ptr().add(h * d + 16 * r), _mm512_mul_ps(*a, inv));
            }
        }
    }
}

/// One head's attention, vectorized for AVX2 where the CPU has it. The arithmetic is the same
/// everywhere (a multiply, then an add: no fused multiply-add, which has no fast form without FMA).
fn one_head(q: &[f32], runs: &[Run], scale: f32, scores: &mut [f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { one_head_avx2(q, runs, scale, scores, y) };
    }
    one_head_portable(q, runs, scale, scores, y)
}

/// [`one_head_portable`] with the two sums kept in registers: the scores of 64 positions at a time
/// in eight registers while the head's dimensions are walked (the portable loop loads and stores
/// every score once per dimension), and the output's dimensions in registers while the positions
/// are walked. Each score and each output value is still summed in the same order, a multiply then
/// an add, so the bits are the portable form's (a test compares them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn one_head_avx2(q: &[f32], runs: &[Run], scale: f32, scores: &mut [f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let d = q.len();
    if !d.is_multiple_of(8) || d > 8 * MAX_REGISTERS {
        return one_head_portable(q, runs, scale, scores, y);
    }
    assert!(runs.iter().all(|r| r.check(d)));
    let len: usize = runs.iter().map(|r| r.len).sum();
    let scores = &mut scores[..len];
    let mut offset = 0;
    for run in runs {
        let (keys_t, capacity) = (run.keys_t, run.capacity);
        let out = &mut scores[offset..offset + run.len];
        let mut j = 0;
        unsafe {
            while j + 64 <= run.len {
                score_block::<8>(q, keys_t, capacity, j, out);
                j += 64;
            }
            while j + 8 <= run.len {
                score_block::<1>(q, keys_t, capacity, j, out);
                j += 8;
            }
        }
        for (t, s) in out.iter_mut().enumerate().skip(j) {
            *s = 0.0;
            for (i, &qi) in q.iter().enumerate() {
                *s += qi * keys_t[i * capacity + t];
            }
        }
        offset += run.len;
    }
    let total = softmax_numerators(scores, scale);
    // Σ p v with the output's d values in d / 8 registers.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); MAX_REGISTERS];
        let lanes = d / 8;
        let mut offset = 0;
        for run in runs {
            for (t, &p) in scores[offset..offset + run.len].iter().enumerate() {
                let p = _mm256_set1_ps(p);
                let v = run.values.as_ptr().add(t * d);
                for (r, a) in acc.iter_mut().enumerate().take(lanes) {
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(p, _mm256_loadu_ps(v.add(8 * r))));
                }
            }
            offset += run.len;
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
    for s in scores.iter_mut() {
        *s -= max;
    }
    exp_in_place(scores);
    scores.iter().fold(0f32, |total, s| total + s)
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
fn one_head_portable(q: &[f32], runs: &[Run], scale: f32, scores: &mut [f32], y: &mut [f32]) {
    let d = q.len();
    assert!(runs.iter().all(|r| r.check(d)));
    let len: usize = runs.iter().map(|r| r.len).sum();
    let scores = &mut scores[..len];
    scores.fill(0.0);
    let mut offset = 0;
    for run in runs {
        let out = &mut scores[offset..offset + run.len];
        for (i, &qi) in q.iter().enumerate() {
            let keys = &run.keys_t[i * run.capacity..i * run.capacity + run.len];
            for (s, &k) in out.iter_mut().zip(keys) {
                *s += qi * k;
            }
        }
        offset += run.len;
    }
    let total = softmax_numerators(scores, scale);
    y.fill(0.0);
    let mut offset = 0;
    for run in runs {
        for (j, &p) in scores[offset..offset + run.len].iter().enumerate() {
            let v = &run.values[j * d..(j + 1) * d];
            for (o, &vi) in y.iter_mut().zip(v) {
                *o += p * vi;
            }
        }
        offset += run.len;
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

    fn random(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// One head over `runs` in the portable form.
    fn portable(q: &[f32], runs: &[Run]) -> Vec<f32> {
        let len: usize = runs.iter().map(|r| r.len).sum();
        let mut y = vec![0f32; q.len()];
        let scale = 1.0 / (q.len() as f32).sqrt();
        one_head_portable(q, runs, scale, &mut vec![0f32; len], &mut y);
        y
    }

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
                let q = random(&mut rng, d);
                let (keys_t, values) = (
                    random(&mut rng, d * capacity),
                    random(&mut rng, d * capacity),
                );
                let run = [Run {
                    keys_t: &keys_t,
                    values: &values,
                    capacity,
                    len,
                }];
                let mut y = vec![0f32; d];
                let scale = 1.0 / (d as f32).sqrt();
                // SAFETY: checked above.
                unsafe { one_head_avx2(&q, &run, scale, &mut vec![0f32; capacity], &mut y) };
                assert_eq!(bits(&y), bits(&portable(&q, &run)), "d {d}, len {len}");
            }
        }
    }

    /// The heads that share a key/value head, computed together (AVX-512, several per pass, on a
    /// CPU that has it), give each head's portable bits: every head count and head size the
    /// passes split differently, and every remainder of the 64- and 16-position blocks.
    #[test]
    fn heads_computed_together_give_each_heads_portable_bits() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let capacity = 140;
        for d in [16, 32, 48, 64, 128, 24] {
            for rep in [1, 2, 3, 4, 5, 7] {
                for len in [1, 15, 16, 17, 63, 64, 65, 100, 128, capacity] {
                    let q = random(&mut rng, rep * d);
                    let (keys_t, values) = (
                        random(&mut rng, d * capacity),
                        random(&mut rng, capacity * d),
                    );
                    let run = [Run {
                        keys_t: &keys_t,
                        values: &values,
                        capacity,
                        len,
                    }];
                    let scale = 1.0 / (d as f32).sqrt();
                    let mut together = vec![0f32; rep * d];
                    kv_group(
                        &q,
                        &run,
                        d,
                        scale,
                        &mut vec![0f32; rep * len],
                        &mut together,
                    );
                    for h in 0..rep {
                        assert_eq!(
                            bits(&together[h * d..(h + 1) * d]),
                            bits(&portable(&q[h * d..(h + 1) * d], &run)),
                            "d {d}, {rep} heads, head {h}, len {len}"
                        );
                    }
                }
            }
        }
    }

    /// A sequence whose positions lie in two runs (a shared prompt, then its own) gets the bits of
    /// the same positions in one run, from every form: the runs are one sequence, read in order.
    #[test]
    fn a_sequence_in_two_runs_is_the_sequence_in_one() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(14);
        for (d, rep) in [(64, 3), (16, 1), (128, 2), (24, 2)] {
            for (first, second) in [
                (1, 1),
                (37, 1),
                (64, 64),
                (65, 30),
                (5, 100),
                (130, 0),
                (0, 9),
            ] {
                let len = first + second;
                let q = random(&mut rng, rep * d);
                // The whole sequence in a buffer with room to spare, as a sample's own run.
                let capacity = len + 11;
                let (keys_t, values) = (
                    random(&mut rng, d * capacity),
                    random(&mut rng, capacity * d),
                );
                let whole = [Run {
                    keys_t: &keys_t,
                    values: &values,
                    capacity,
                    len,
                }];
                // Its first positions copied into a buffer of their own (a prompt's, kept once),
                // the rest read in place from the whole buffer's later columns and rows.
                let prefix_keys: Vec<f32> = (0..d)
                    .flat_map(|i| keys_t[i * capacity..i * capacity + first].to_vec())
                    .collect();
                let split = [
                    Run {
                        keys_t: &prefix_keys,
                        values: &values[..first * d],
                        capacity: first,
                        len: first,
                    },
                    Run {
                        keys_t: &keys_t[first..],
                        values: &values[first * d..],
                        capacity,
                        len: second,
                    },
                ];
                let scale = 1.0 / (d as f32).sqrt();
                let (mut one, mut two) = (vec![0f32; rep * d], vec![0f32; rep * d]);
                let mut scores = vec![0f32; rep * len];
                kv_group(&q, &whole, d, scale, &mut scores, &mut one);
                kv_group(&q, &split, d, scale, &mut scores, &mut two);
                assert_eq!(bits(&one), bits(&two), "d {d}, runs {first} + {second}");
                for h in 0..rep {
                    let q = &q[h * d..(h + 1) * d];
                    assert_eq!(bits(&portable(q, &split)), bits(&portable(q, &whole)));
                    #[cfg(target_arch = "x86_64")]
                    if is_x86_feature_detected!("avx2") {
                        let mut y = vec![0f32; d];
                        // SAFETY: the CPU has AVX2.
                        unsafe { one_head_avx2(q, &split, scale, &mut vec![0f32; len], &mut y) };
                        assert_eq!(bits(&y), bits(&portable(q, &whole)), "AVX2, d {d}");
                    }
                }
            }
        }
    }

    /// Whichever the work items (one query head, or the heads of a key/value head together, which
    /// `attend` picks by the batch's size), each head is the textbook formula.
    #[test]
    fn one_token_attention_is_the_textbook_formula() {
        for batch in [2, 9] {
            textbook(batch);
        }
    }

    fn textbook(batch: usize) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let s = Shape {
            batch,
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
        };
        let (capacity, len) = (16, 11);
        let q = random(&mut rng, s.batch * s.heads * s.head_dim);
        let keys_t = random(&mut rng, s.batch * s.kv_heads * s.head_dim * capacity);
        let values = random(&mut rng, s.batch * s.kv_heads * capacity * s.head_dim);
        // Every sequence from position 0, then the first after four positions of padding.
        let padded: Vec<usize> = (0..batch).map(|b| if b == 0 { 4 } else { 0 }).collect();
        for starts in [vec![0; batch], padded] {
            let d = s.head_dim;
            let ours = attend(&q, s, |b, kv| {
                let (item, start) = (b * s.kv_heads + kv, starts[b]);
                let run = Run {
                    keys_t: &keys_t[item * d * capacity + start..(item + 1) * d * capacity],
                    values: &values[(item * capacity + start) * d..(item + 1) * capacity * d],
                    capacity,
                    len: len - start,
                };
                ([run, run], 1)
            });
            for b in 0..s.batch {
                let start = starts[b];
                for h in 0..s.heads {
                    let kv = b * s.kv_heads + h / (s.heads / s.kv_heads);
                    let qv = |i: usize| q[(b * s.heads + h) * d + i] as f64;
                    let key = |j: usize, i: usize| keys_t[(kv * d + i) * capacity + j] as f64;
                    let value = |j: usize, i: usize| values[(kv * capacity + j) * d + i] as f64;
                    let logits: Vec<f64> = (start..len)
                        .map(|j| (0..d).map(|i| qv(i) * key(j, i)).sum::<f64>() / (d as f64).sqrt())
                        .collect();
                    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for i in 0..d {
                        let expected: f64 = (start..len)
                            .map(|j| e[j - start] / total * value(j, i))
                            .sum();
                        let got = ours[(b * s.heads + h) * d + i] as f64;
                        assert!(
                            (got - expected).abs() < 1e-5,
                            "b {b} h {h} i {i}, starts {starts:?}: {got} vs {expected}"
                        );
                    }
                }
            }
        }
    }
}
