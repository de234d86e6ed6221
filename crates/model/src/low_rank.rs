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
//! - `· Bᵀ` (`B` [n, r]): each value the sum over `t = 0..r` in order of `low[t] · B[j, t]`.
//!
//! Multiplies and adds stay separate (Rust never fuses them), so the bits are the same whatever
//! vector width the compiler or the CPU gives the loops: AVX-512, AVX2 or none. The weights are the
//! outer loop and the rows the inner one, so each adapter row is read once per step for the whole
//! batch. Training keeps `gemm` (its gradients and its bits are PEFT-checked); this is decoding only.

use crate::custom_op::{to_storage, values};
use crate::q8::SharedOut;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};

/// Lanes of the dot product: one AVX-512 register of f32, two AVX2 ones.
const LANES: usize = 16;

/// `(x · aᵀ) · bᵀ` for `x` [m, k], `a` [r, k], `b` [n, r], each row's values independent of `m`
/// (f32 on the CPU); elsewhere the same product through candle's matmul.
pub(crate) fn product(x: &Tensor, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 2;
    if !(on_cpu_f32(x) && on_cpu_f32(a) && on_cpu_f32(b)) {
        return x.matmul(&a.t()?)?.matmul(&b.t()?);
    }
    x.contiguous()?
        .apply_op3_no_bwd(&a.contiguous()?, &b.contiguous()?, &LowRank)
}

struct LowRank;

impl CustomOp3 for LowRank {
    fn name(&self) -> &'static str {
        "lora-low-rank-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, a, b) = (
            values(s1, l1, name)?,
            values(s2, l2, name)?,
            values(s3, l3, name)?,
        );
        let (m, k, r, n) = match (l1.dims(), l2.dims(), l3.dims()) {
            ([m, k], [r, k2], [n, r2]) if k == k2 && r == r2 => (*m, *k, *r, *n),
            (x, a, b) => candle_core::bail!(
                "{name}: shapes x {x:?}, A {a:?}, B {b:?} do not multiply as (x · Aᵀ) · Bᵀ"
            ),
        };
        Ok(to_storage(rows_product(x, a, b, (m, k, r, n)), (m, n)))
    }
}

/// Below this many multiply-adds in a product, one thread does it (waking the pool costs more).
const WORK_WORTH_THE_POOL: usize = 1 << 16;

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

/// The product on slices, on candle's pool, with the widest vector unit this CPU has.
pub(crate) fn rows_product(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    shape: (usize, usize, usize, usize),
) -> Vec<f32> {
    rows_product_with(Width::detect(), x, a, b, shape)
}

/// The product with the loops compiled for `width`. The work is split by adapter rows (`x · Aᵀ`)
/// and by output columns (`· Bᵀ`), never by the rows of `x`, and no value's sum is split.
pub(crate) fn rows_product_with(
    width: Width,
    x: &[f32],
    a: &[f32],
    b: &[f32],
    (m, k, r, n): (usize, usize, usize, usize),
) -> Vec<f32> {
    assert!(
        x.len() >= m * k && a.len() >= r * k && b.len() >= n * r,
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
        unsafe {
            up(
                width,
                low,
                &b[cols.start * r..cols.end * r],
                (m, r, n),
                cols.start,
                &dst,
            )
        }
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

/// Columns `first..first + b_cols.len() / r` of `low · Bᵀ` for every row, into `dst` ([m, n]).
///
/// # Safety
/// The CPU must have `width`'s instructions; `dst` must hold m × n values.
unsafe fn up(
    width: Width,
    low: &[f32],
    b_cols: &[f32],
    shape: (usize, usize, usize),
    first: usize,
    dst: &SharedOut<f32>,
) {
    #[inline(always)]
    fn body(
        low: &[f32],
        b_cols: &[f32],
        (m, r, n): (usize, usize, usize),
        first: usize,
        dst: &SharedOut<f32>,
    ) {
        let cols = b_cols.len() / r.max(1);
        // This block of B transposed, [r, cols], so that the sum over t runs along a row of outputs.
        let mut b_t = vec![0f32; r * cols];
        for j in 0..cols {
            for t in 0..r {
                b_t[t * cols + j] = b_cols[j * r + t];
            }
        }
        let mut row = vec![0f32; cols];
        for i in 0..m {
            row.fill(0.0);
            for t in 0..r {
                let s = low[i * r + t];
                for (o, w) in row.iter_mut().zip(&b_t[t * cols..(t + 1) * cols]) {
                    *o += s * w;
                }
            }
            // SAFETY: the caller's contract; row i's columns first..first + cols are this item's.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst.at(i * n + first), cols) };
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(l: &[f32], b: &[f32], s: (usize, usize, usize), f: usize, d: &SharedOut<f32>) {
        body(l, b, s, f, d)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(l: &[f32], b: &[f32], s: (usize, usize, usize), f: usize, d: &SharedOut<f32>) {
        body(l, b, s, f, d)
    }
    match width {
        Width::Portable => body(low, b_cols, shape, first, dst),
        // SAFETY: the caller's contract (the CPU has the instructions).
        #[cfg(target_arch = "x86_64")]
        Width::Avx2 => unsafe { avx2(low, b_cols, shape, first, dst) },
        #[cfg(target_arch = "x86_64")]
        Width::Avx512 => unsafe { avx512(low, b_cols, shape, first, dst) },
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
