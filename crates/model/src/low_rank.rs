//! A LoRA adapter's product while decoding, `(x · Aᵀ) · Bᵀ`, with every value summed in an order
//! that depends on the shapes of `A` and `B` alone, never on how many rows `x` has.
//!
//! Why not `gemm`: it picks its blocking and micro-kernels by the whole product's shape, the row
//! count included, so a sequence's values in a batch of 20 rows are not the bits it gets decoded
//! alone (with a trained adapter, 2 of 6 greedy samples of three prompts changed). Decoding promises
//! that a batch never changes a sample's tokens (ARCHITECTURE.md), so the adapter's product here is
//! computed row by row:
//! - `x · Aᵀ` (`A` [r, k]): each value a dot product over `k` in 16 lanes (lane `l` sums the products
//!   at `l`, `l + 16`, …, in order), the lanes added in a fixed tree, the `k % 16` tail added last;
//! - `· Bᵀ` (`B` [n, r]): each value the sum over `t = 0..r` in order of `low[t] · B[j, t]`, read
//!   from `Bᵀ` ([r, n]) so that the sum runs along contiguous rows of outputs.
//!
//! Multiplies and adds stay separate (Rust never fuses them), so the bits are the same whatever
//! vector width the compiler or the CPU gives the loops: AVX-512, AVX2 or none. The weights are the
//! outer loop and the rows the inner one, so each adapter row is read once per step for the whole
//! batch. `Bᵀ` is kept between calls ([`TransposedB`]): making it costs about as much as a one-row
//! product. Training keeps `gemm` (its gradients and its bits are PEFT-checked); this is decoding
//! only.

use crate::cpu_kernels::SharedOut;
use crate::custom_op::{to_storage, values};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// Lanes of the dot product: one AVX-512 register of f32, two AVX2 ones.
const LANES: usize = 16;

/// `B` transposed ([r, n]) as decoding's product reads it, kept with the `B` it was made from. A
/// call whose `B` has other bits (an adapter trained since) transposes it again, so a kept copy is
/// never stale; the check reads `B` once, where transposing it writes across the whole copy.
#[derive(Default)]
pub struct TransposedB(Mutex<Option<KeptTranspose>>);

/// The `B` a transpose was made from (its bits, to compare), and the transpose.
type KeptTranspose = (Vec<f32>, Arc<Vec<f32>>);

impl TransposedB {
    /// `b` ([n, r]) transposed: the kept copy when it was made from these bits, else a new one.
    fn of(&self, b: &[f32], r: usize, n: usize) -> Arc<Vec<f32>> {
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((from, b_t)) = kept.as_ref() {
            if bits(from) == bits(b) {
                return b_t.clone();
            }
        }
        let b_t = Arc::new(transpose(b, r, n));
        *kept = Some((b.to_vec(), b_t.clone()));
        b_t
    }
}

/// The bits of `values`, compared as integers (so -0.0 differs from 0.0 and NaN equals itself)
/// and in one `memcmp`.
fn bits(values: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is a valid u32.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u32>(), values.len()) }
}

/// `b` [n, r] as [r, n].
fn transpose(b: &[f32], r: usize, n: usize) -> Vec<f32> {
    let mut b_t = vec![0f32; r * n];
    for (j, row) in b.chunks_exact(r.max(1)).take(n).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            b_t[t * n + j] = v;
        }
    }
    b_t
}

/// `(x · aᵀ) · bᵀ` for `x` [m, k], `a` [r, k], `b` [n, r], each row's values independent of `m`
/// (f32 on the CPU, `Bᵀ` kept in `kept`); elsewhere the same product through candle's matmul.
pub(crate) fn product(
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    kept: &TransposedB,
) -> candle_core::Result<Tensor> {
    let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 2;
    if !(on_cpu_f32(x) && on_cpu_f32(a) && on_cpu_f32(b)) {
        return x.matmul(&a.t()?)?.matmul(&b.t()?);
    }
    let b = b.contiguous()?;
    let (n, r) = b.dims2()?;
    let b_t = {
        let (storage, layout) = b.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => kept.of(&v[start..end], r, n),
            _ => candle_core::bail!("lora-low-rank-rows: B is not a contiguous f32 CPU tensor"),
        }
    };
    x.contiguous()?
        .apply_op2_no_bwd(&a.contiguous()?, &LowRank { b_t, n })
}

/// The op, holding `Bᵀ` ([r, n]).
struct LowRank {
    b_t: Arc<Vec<f32>>,
    n: usize,
}

impl CustomOp2 for LowRank {
    fn name(&self) -> &'static str {
        "lora-low-rank-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, a) = (values(s1, l1, name)?, values(s2, l2, name)?);
        let n = self.n;
        let (m, k, r) = match (l1.dims(), l2.dims()) {
            ([m, k], [r, k2]) if k == k2 && r * n == self.b_t.len() => (*m, *k, *r),
            (x, a) => candle_core::bail!(
                "{name}: shapes x {x:?}, A {a:?} and Bᵀ of {} values for {n} outputs do not multiply as (x · Aᵀ) · Bᵀ",
                self.b_t.len()
            ),
        };
        let y = rows_product_transposed(Width::detect(), x, a, &self.b_t, (m, k, r, n));
        Ok(to_storage(y, (m, n)))
    }
}

/// Below this many multiply-adds in a product, one thread does it (waking the pool costs more;
/// in decoding its worker is awake between ops, so even a one-row product is worth sharing).
const WORK_WORTH_THE_POOL: usize = 1 << 12;

/// Output columns per work item of `· Bᵀ`: a multiple of 16 (one AVX-512 register of f32).
const COLUMNS_PER_TASK: usize = 128;

/// The vector unit the loops are compiled for; each gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Width {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Width {
    /// The widest this CPU has.
    pub(crate) fn detect() -> Width {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Width::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") {
                return Width::Avx2;
            }
        }
        Width::Portable
    }
}

/// The product on slices, on candle's pool, with the widest vector unit this CPU has (tests).
#[cfg(test)]
fn rows_product(x: &[f32], a: &[f32], b: &[f32], shape: (usize, usize, usize, usize)) -> Vec<f32> {
    rows_product_with(Width::detect(), x, a, b, shape)
}

/// The product with the loops compiled for `width`, `B` transposed for this call (tests).
#[cfg(test)]
fn rows_product_with(
    width: Width,
    x: &[f32],
    a: &[f32],
    b: &[f32],
    (m, k, r, n): (usize, usize, usize, usize),
) -> Vec<f32> {
    assert!(b.len() >= n * r, "low_rank: B is smaller than its shape");
    rows_product_transposed(width, x, a, &transpose(b, r, n), (m, k, r, n))
}

/// The product from `Bᵀ` ([r, n]). The work is split by adapter rows (`x · Aᵀ`) and by output
/// columns (`· Bᵀ`), never by the rows of `x`, and no value's sum is split.
fn rows_product_transposed(
    width: Width,
    x: &[f32],
    a: &[f32],
    b_t: &[f32],
    (m, k, r, n): (usize, usize, usize, usize),
) -> Vec<f32> {
    assert!(
        x.len() >= m * k && a.len() >= r * k && b_t.len() >= r * n,
        "low_rank: an operand is smaller than its shape"
    );
    let pool = candle_core::utils::barrier_pool();
    let on_pool = |work: usize, items: usize, run: &(dyn Fn(usize) + Sync)| {
        if work < WORK_WORTH_THE_POOL || pool.n_workers() == 0 {
            (0..items).for_each(run);
        } else {
            pool.execute_chunked(items, |range| range.for_each(run));
        }
    };
    // low = x · Aᵀ, [m, r], one adapter row per work item.
    let mut low = vec![0f32; m * r];
    let low_out = SharedOut(low.as_mut_ptr());
    on_pool(m * k * r, r, &|t| {
        // SAFETY: item t writes low[i * r + t] for every i, which no other item writes; `low`
        // holds m × r values; the CPU has `width`'s instructions (`Width::detect`).
        unsafe {
            down(width, x, &a[t * k..(t + 1) * k], (m, k), |i| {
                low_out.at(i * r + t)
            })
        }
    });
    // out = low · Bᵀ, [m, n], one block of output columns per work item.
    let mut out = vec![0f32; m * n];
    let dst = SharedOut(out.as_mut_ptr());
    let low = &low;
    on_pool(m * r * n, n.div_ceil(COLUMNS_PER_TASK), &|task| {
        let cols = task * COLUMNS_PER_TASK..((task + 1) * COLUMNS_PER_TASK).min(n);
        // SAFETY: item `task` writes columns `cols` of every row, which no other item writes;
        // `out` holds m × n values; the CPU has `width`'s instructions.
        unsafe { up(width, low, b_t, (m, r, n), cols, &dst) }
    });
    out
}

/// `low[i, t] = x[i] · a_row` for every row `i`, written through `put(i)`.
///
/// # Safety
/// The CPU must have `width`'s instructions; `put(i)` must point at a writable f32.
unsafe fn down(
    width: Width,
    x: &[f32],
    a_row: &[f32],
    (m, k): (usize, usize),
    put: impl Fn(usize) -> *mut f32,
) {
    #[inline(always)]
    fn body(x: &[f32], a_row: &[f32], (m, k): (usize, usize), put: &dyn Fn(usize) -> *mut f32) {
        for i in 0..m {
            // SAFETY: the caller's contract.
            unsafe { *put(i) = dot(&x[i * k..(i + 1) * k], a_row) };
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(x: &[f32], a: &[f32], s: (usize, usize), put: &dyn Fn(usize) -> *mut f32) {
        body(x, a, s, put)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(x: &[f32], a: &[f32], s: (usize, usize), put: &dyn Fn(usize) -> *mut f32) {
        body(x, a, s, put)
    }
    match width {
        Width::Portable => body(x, a_row, (m, k), &put),
        // SAFETY: the caller's contract (the CPU has the instructions).
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { avx2(x, a_row, (m, k), &put) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { avx512(x, a_row, (m, k), &put) },
    }
}

/// Columns `cols` of `low · Bᵀ` for every row, from `b_t` ([r, n]), into `dst` ([m, n]).
///
/// # Safety
/// The CPU must have `width`'s instructions; `dst` must hold m × n values.
unsafe fn up(
    width: Width,
    low: &[f32],
    b_t: &[f32],
    shape: (usize, usize, usize),
    cols: std::ops::Range<usize>,
    dst: &SharedOut<f32>,
) {
    type Cols = std::ops::Range<usize>;
    #[inline(always)]
    fn body(
        low: &[f32],
        b_t: &[f32],
        (m, r, n): (usize, usize, usize),
        cols: Cols,
        dst: &SharedOut<f32>,
    ) {
        let mut row = vec![0f32; cols.len()];
        for i in 0..m {
            row.fill(0.0);
            for t in 0..r {
                let s = low[i * r + t];
                for (o, w) in row
                    .iter_mut()
                    .zip(&b_t[t * n + cols.start..t * n + cols.end])
                {
                    *o += s * w;
                }
            }
            // SAFETY: the caller's contract; row i's columns `cols` are this item's.
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), dst.at(i * n + cols.start), cols.len())
            };
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(l: &[f32], b: &[f32], s: (usize, usize, usize), c: Cols, d: &SharedOut<f32>) {
        body(l, b, s, c, d)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(l: &[f32], b: &[f32], s: (usize, usize, usize), c: Cols, d: &SharedOut<f32>) {
        body(l, b, s, c, d)
    }
    match width {
        Width::Portable => body(low, b_t, shape, cols, dst),
        // SAFETY: the caller's contract (the CPU has the instructions).
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { avx2(low, b_t, shape, cols, dst) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { avx512(low, b_t, shape, cols, dst) },
    }
}

/// `Σ u[i]·v[i]` in the fixed order of the module's doc.
#[inline(always)]
fn dot(u: &[f32], v: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (u_blocks, v_blocks) = (u.chunks_exact(LANES), v.chunks_exact(LANES));
    let (u_tail, v_tail) = (u_blocks.remainder(), v_blocks.remainder());
    for (ub, vb) in u_blocks.zip(v_blocks) {
        for l in 0..LANES {
            lanes[l] += ub[l] * vb[l];
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
    }
    let mut tail = 0f32;
    for (p, q) in u_tail.iter().zip(v_tail) {
        tail += p * q;
    }
    lanes[0] + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// SmolLM2's adapted projections at r 16: `k` 576 (q, k, v, o, gate, up) and 1536 (down).
    const SHAPES: [(usize, usize, usize); 3] = [(576, 16, 576), (576, 16, 1536), (1536, 16, 576)];

    #[test]
    fn each_row_of_a_batch_gets_the_bits_it_gets_alone() {
        for (k, r, n) in SHAPES {
            let (a, b) = (random(r * k, 1), random(n * r, 2));
            for m in [2, 5, 20, 24, 70] {
                let x = random(m * k, 3 + m as u64);
                let batch = rows_product(&x, &a, &b, (m, k, r, n));
                for i in 0..m {
                    let alone = rows_product(&x[i * k..(i + 1) * k], &a, &b, (1, k, r, n));
                    assert_eq!(
                        batch[i * n..(i + 1) * n]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>(),
                        alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "row {i} of {m} at k {k}, r {r}, n {n}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_vector_width_gives_the_portable_bits_and_the_product_is_right() {
        // k values that leave every tail length, and r of 8 and 16.
        for (k, r, n) in [(576, 16, 192), (37, 8, 21), (16, 16, 16), (5, 8, 3)] {
            let (a, b) = (random(r * k, 4), random(n * r, 5));
            let m = 7;
            let x = random(m * k, 6);
            let portable = rows_product_with(Width::Portable, &x, &a, &b, (m, k, r, n));
            assert_eq!(rows_product(&x, &a, &b, (m, k, r, n)), portable);
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                assert_eq!(
                    rows_product_with(Width::Avx2, &x, &a, &b, (m, k, r, n)),
                    portable
                );
            }
            // Against a plain f64 product: f32 rounding only.
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..r)
                        .map(|t| {
                            let low: f64 = (0..k)
                                .map(|c| x[i * k + c] as f64 * a[t * k + c] as f64)
                                .sum();
                            low * b[j * r + t] as f64
                        })
                        .sum();
                    let got = portable[i * n + j] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-4 * (1.0 + exact.abs()),
                        "{got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_kept_b_transposed_is_reused_for_the_same_bits_and_made_again_when_b_changes() {
        let (m, k, r, n) = (3, 40, 16, 40);
        let dev = candle_core::Device::Cpu;
        let (x, a, b) = (random(m * k, 1), random(r * k, 2), random(n * r, 3));
        let kept = TransposedB::default();
        let first = kept.of(&b, r, n);
        assert!(
            Arc::ptr_eq(&first, &kept.of(&b.clone(), r, n)),
            "the same bits reuse the copy"
        );
        // One value of B trained a little: the copy is made again.
        let mut trained = b.clone();
        trained[5] += 1e-6;
        assert_eq!(*kept.of(&trained, r, n), transpose(&trained, r, n));
        // Through the op, twice (the second from the kept copy): the slices' product's bits.
        let tensor =
            |v: &[f32], rows, cols| Tensor::from_vec(v.to_vec(), (rows, cols), &dev).unwrap();
        for _ in 0..2 {
            let y = product(
                &tensor(&x, m, k),
                &tensor(&a, r, k),
                &tensor(&trained, n, r),
                &kept,
            )
            .unwrap();
            let y: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(y, rows_product(&x, &a, &trained, (m, k, r, n)));
        }
    }

    #[test]
    fn gemm_does_depend_on_the_row_count_at_these_shapes() {
        // Why this module exists: the same rows through candle's matmul (gemm) in a batch and alone.
        let (k, r, n) = SHAPES[0];
        let (a, b) = (random(r * k, 1), random(n * r, 2));
        let dev = candle_core::Device::Cpu;
        let (at, bt) = (
            Tensor::from_vec(a, (r, k), &dev).unwrap(),
            Tensor::from_vec(b, (n, r), &dev).unwrap(),
        );
        let gemm = |x: &Tensor| -> Vec<f32> {
            x.matmul(&at.t().unwrap())
                .unwrap()
                .matmul(&bt.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let m = 20;
        let x = Tensor::from_vec(random(m * k, 9), (m, k), &dev).unwrap();
        let batch = gemm(&x);
        let differing = (0..m)
            .filter(|&i| gemm(&x.narrow(0, i, 1).unwrap())[..] != batch[i * n..(i + 1) * n])
            .count();
        assert!(
            differing > 0,
            "gemm gave every row its bits alone: this module's reason is gone"
        );
    }
}
