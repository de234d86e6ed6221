//! The frozen base's f32 products on candle's thread pool: `gemm` (the crate candle's matmul calls)
//! on column blocks of the result, one single-threaded call per block.
//!
//! candle runs `gemm` on rayon's pool and its own ops on its barrier pool. On a 2-core machine both
//! pools' workers are awake in a training step: after each elementwise op candle's worker spins
//! (about a millisecond) waiting for the next, while rayon's two threads run the product, so three
//! threads share two cores, and a profile put a tenth of the CPU time in that spinning. Here the
//! products run on the barrier pool too, whose worker is then the one doing the work.
//!
//! Invariant: the same bits as candle's matmul. `gemm` blocks `k` by a size that depends on `k` and
//! the caches only, never on `m` or `n`, so each value sums its products in the same order whatever
//! block of columns it is computed in (tests check it at the model's shapes).

use crate::cpu_kernels::SharedOut;
use crate::custom_op::{split_gradients, to_storage, values};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

/// Output columns per block: a multiple of 16 (one AVX-512 register of f32).
const COLUMN_ALIGN: usize = 16;

/// `gemm`'s widest f32 micro-tile on AVX-512, in output columns (4 registers of 16).
const GEMM_TILE_WIDTH: usize = 64;

/// Output rows per block where rows are split: a multiple of `gemm`'s f32 micro-tile height on
/// AVX-512 (4 registers of 16).
const ROW_ALIGN: usize = 64;

/// `gemm` takes a product whose sides are both at most this as small (`k` in blocks of 512).
const SMALL_SIDE: usize = 64;

/// Below this many multiply-adds, one call on this thread (waking the pool costs more).
const WORK_WORTH_THE_POOL: usize = 1 << 20;

/// A matrix operand in row-major memory: element `(i, j)` at `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

/// `lhs [m, k] · rhs [k, n]` as a new row-major [m, n]: blocks of columns, or of rows where the
/// columns are too few to share (a LoRA product's `r` columns).
pub(crate) fn matmul(lhs: Operand, rhs: Operand, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    assert!(
        fits(&lhs, m, k) && fits(&rhs, k, n),
        "pool_gemm: an operand is smaller than its shape"
    );
    // Not zeroed first: `gemm` writes every value of its block whatever `k` (with `k` 0 it writes
    // zeros), and the blocks cover the result. Zeroing it cost a fill per product and, for a fresh
    // allocation, the page faults of touching it twice.
    let mut out = Vec::with_capacity(m * n);
    let dst = SharedOut(out.as_mut_ptr());
    // SAFETY (both closures): `dst` has room for m × n values; each call writes its own block of
    // them, which no other call writes; the operands fit their shapes (checked above).
    let columns = |cols: std::ops::Range<usize>| {
        let rhs = Operand {
            data: &rhs.data[cols.start * rhs.col_stride..],
            ..rhs
        };
        unsafe { product(dst.at(cols.start), n, lhs, rhs, (m, k, cols.len())) }
    };
    let rows = |rows: std::ops::Range<usize>| {
        let lhs = Operand {
            data: &lhs.data[rows.start * lhs.row_stride..],
            ..lhs
        };
        unsafe { product(dst.at(rows.start * n), n, lhs, rhs, (rows.len(), k, n)) }
    };
    if m == 0 || n == 0 {
        return out;
    }
    // SAFETY: called once all m × n values are written (each path below writes them all).
    let done = |mut out: Vec<f32>| {
        unsafe { out.set_len(m * n) };
        out
    };
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if threads == 1 || m * k * n < WORK_WORTH_THE_POOL {
        columns(0..n);
        return done(out);
    }
    // Two blocks per thread, of equal size: a thread slowed by another process leaves the other
    // threads its second block (with one block each, the pool waits on the slowest).
    let split = |len: usize, size: usize, run: &(dyn Fn(std::ops::Range<usize>) + Sync)| {
        pool.execute_chunked(len.div_ceil(size), |items| {
            for b in items {
                run(b * size..((b + 1) * size).min(len));
            }
        });
    };
    // A block is blocked as the whole product would be (see the module's doc): `gemm` sums `k` in
    // blocks of at most 512 when both sides are at most 64, and by its cache model otherwise, so a
    // block may only be cut from a product where that choice stays the same.
    let blocked_as_large = |rows: usize, cols: usize| rows > SMALL_SIDE || cols > SMALL_SIDE;
    if !blocked_as_large(m, n) {
        columns(0..n);
        return done(out);
    }
    let pieces = |len: usize, align: usize, per_thread: usize| {
        let blocks = len.div_ceil(align).min(per_thread * threads).max(1);
        len.div_ceil(blocks).div_ceil(align) * align
    };
    // Columns: two blocks per thread, unless that leaves each block a tail of 16 columns past
    // whole micro-tiles (576 = 4 × 144 = 4 × (2 · 64 + 16)), which `gemm` runs on its narrowest
    // kernel; then one block per thread (2 × 288, tails of 32). At SmolLM2's 576-wide products, most
    // of a training step's, that measured 6-8% faster (2-core Xeon); the bits are the same (module doc).
    let thin_tail = |width: usize| (1..GEMM_TILE_WIDTH / 2).contains(&(width % GEMM_TILE_WIDTH));
    let width = match pieces(n, COLUMN_ALIGN, 2) {
        w if thin_tail(w) && !thin_tail(pieces(n, COLUMN_ALIGN, 1)) => pieces(n, COLUMN_ALIGN, 1),
        w => w,
    };
    let height = pieces(m, ROW_ALIGN, 2);
    if width < n && blocked_as_large(m, width) {
        split(n, width, &columns);
    } else if height < m && blocked_as_large(height, n) {
        split(m, height, &rows);
    } else {
        columns(0..n);
    }
    done(out)
}

/// `lhs_b · rhs_b` for each of `batches` pairs of [m, k] and [k, n] operands, into one row-major
/// [batches, m, n]: the batches spread over candle's pool, one single-threaded `gemm` each (the
/// attention's products: 36 of 256 × 64 × 256 in a step of SmolLM2, each too small to split).
pub(crate) fn batched<'a>(
    batches: usize,
    (m, k, n): (usize, usize, usize),
    lhs_of: impl Fn(usize) -> Operand<'a> + Sync,
    rhs_of: impl Fn(usize) -> Operand<'a> + Sync,
) -> Vec<f32> {
    // Not zeroed first, as in `matmul`: each batch's call writes all its m × n values.
    let mut out = Vec::with_capacity(batches * m * n);
    let dst = SharedOut(out.as_mut_ptr());
    let one = |b: usize| {
        let (lhs, rhs) = (lhs_of(b), rhs_of(b));
        assert!(
            fits(&lhs, m, k) && fits(&rhs, k, n),
            "pool_gemm: an operand is smaller than its shape"
        );
        // SAFETY: batch b's m × n values are written by this call alone; the operands' reads are
        // within their slices (checked above).
        unsafe { product(dst.at(b * m * n), n, lhs, rhs, (m, k, n)) }
    };
    if batches * m * k * n < WORK_WORTH_THE_POOL || m * n == 0 {
        (0..batches).for_each(one);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(batches, |items| items.for_each(one));
    }
    // SAFETY: every batch's m × n values are written above.
    unsafe { out.set_len(batches * m * n) };
    out
}

/// True when `o` holds a `rows × cols` matrix at its strides.
fn fits(o: &Operand, rows: usize, cols: usize) -> bool {
    rows == 0 || cols == 0 || (rows - 1) * o.row_stride + (cols - 1) * o.col_stride < o.data.len()
}

/// One single-threaded `gemm`: `lhs [m, k] · rhs [k, n]` into `dst`, rows `dst_row_stride` apart,
/// as candle calls it (no read of `dst`, product scale 1).
///
/// # Safety
/// `dst` must hold the m × n result at that row stride; the operands must fit their shapes.
unsafe fn product(
    dst: *mut f32,
    dst_row_stride: usize,
    lhs: Operand,
    rhs: Operand,
    (m, k, n): (usize, usize, usize),
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            false,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// `a · b` for `a` [.., m, k] and `b` [.., k, n] with the same leading (batch) dims, f32 on the CPU,
/// recorded for backprop with a backward of the same kind (`da = dc · bᵀ`, `db = aᵀ · dc`, as
/// candle's matmul computes them). Elsewhere candle's matmul.
pub(crate) fn batched_matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() >= 3;
    if !(on_cpu_f32(a) && on_cpu_f32(b)) {
        return a.matmul(b);
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, BatchedMatmul)
}

/// The batch count and (m, k, n) of `a · b`, or an error naming the shapes.
fn batched_dims(a: &[usize], b: &[usize]) -> candle_core::Result<(usize, (usize, usize, usize))> {
    let (ra, rb) = (a.len(), b.len());
    if ra < 2 || ra != rb || a[..ra - 2] != b[..rb - 2] || a[ra - 1] != b[rb - 2] {
        candle_core::bail!("batched matmul: shapes {a:?} and {b:?} do not multiply");
    }
    let batches = a[..ra - 2].iter().product();
    Ok((batches, (a[ra - 2], a[ra - 1], b[rb - 1])))
}

/// A row-major matrix of `cols` columns.
pub(crate) fn dense(data: &[f32], cols: usize) -> Operand<'_> {
    Operand {
        data,
        row_stride: cols,
        col_stride: 1,
    }
}

/// The transpose of a row-major matrix of `cols` columns.
pub(crate) fn transposed(data: &[f32], cols: usize) -> Operand<'_> {
    Operand {
        data,
        row_stride: 1,
        col_stride: cols,
    }
}

struct BatchedMatmul;

impl CustomOp2 for BatchedMatmul {
    fn name(&self) -> &'static str {
        "pool-batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, b) = (values(s1, l1, self.name())?, values(s2, l2, self.name())?);
        let (batches, (m, k, n)) = batched_dims(l1.dims(), l2.dims())?;
        let c = batched(
            batches,
            (m, k, n),
            |i| dense(&a[i * m * k..(i + 1) * m * k], k),
            |i| dense(&b[i * k * n..(i + 1) * k * n], n),
        );
        let mut dims = l1.dims().to_vec();
        let last = dims.len() - 1;
        dims[last] = n;
        Ok(to_storage(c, dims))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _c: &Tensor,
        dc: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = a.apply_op3_no_bwd(b, &dc.contiguous()?, &BatchedMatmulBackward)?;
        split_gradients(&both, a, b)
    }
}

/// `da = dc · bᵀ` and `db = aᵀ · dc`, per batch, as one flat result (`da`'s values, then `db`'s).
struct BatchedMatmulBackward;

impl CustomOp3 for BatchedMatmulBackward {
    fn name(&self) -> &'static str {
        "pool-batched-matmul-backward"
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
        let (a, b, dc) = (
            values(s1, l1, self.name())?,
            values(s2, l2, self.name())?,
            values(s3, l3, self.name())?,
        );
        let (batches, (m, k, n)) = batched_dims(l1.dims(), l2.dims())?;
        if dc.len() != batches * m * n {
            candle_core::bail!(
                "batched matmul: a gradient of {} values for {:?}",
                dc.len(),
                l3.dims()
            );
        }
        let mut both = batched(
            batches,
            (m, n, k),
            |i| dense(&dc[i * m * n..(i + 1) * m * n], n),
            |i| transposed(&b[i * k * n..(i + 1) * k * n], n),
        );
        both.extend(batched(
            batches,
            (k, m, n),
            |i| transposed(&a[i * m * k..(i + 1) * m * k], k),
            |i| dense(&dc[i * m * n..(i + 1) * m * n], n),
        ));
        let len = both.len();
        Ok(to_storage(both, len))
    }
}

/// `x · wᵀ` for `x` [m, k] and `w` [n, k], f32 on the CPU, recorded for backprop with a gradient
/// for both (LoRA's `x Aᵀ` and `(x Aᵀ) Bᵀ`, whose `A` and `B` train). The bits of candle's
/// `x.matmul(&w.t())` and of its autograd (`dx = g · w`; `dw` as the transpose of `xᵀ · g`).
/// Elsewhere candle's matmul.
pub(crate) fn matmul_t(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let on_cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.rank() == 2;
    if !(on_cpu_f32(x) && on_cpu_f32(w)) {
        return x.matmul(&w.t()?);
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, MatmulT)
}

/// The (m, k, n) of `x · wᵀ`, or an error naming the shapes.
fn matmul_t_dims(x: &[usize], w: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
    match (x, w) {
        ([m, k], [n, k2]) if k == k2 => Ok((*m, *k, *n)),
        _ => candle_core::bail!("matmul_t: shapes {x:?} and {w:?} do not multiply as x · wᵀ"),
    }
}

struct MatmulT;

impl CustomOp2 for MatmulT {
    fn name(&self) -> &'static str {
        "pool-matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (values(s1, l1, self.name())?, values(s2, l2, self.name())?);
        let (m, k, n) = matmul_t_dims(l1.dims(), l2.dims())?;
        let y = matmul(dense(x, k), transposed(w, k), (m, k, n));
        Ok(to_storage(y, (m, n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = x.apply_op3_no_bwd(w, &g.contiguous()?, &MatmulTBackward)?;
        split_gradients(&both, x, w)
    }
}

/// `dx = g · w` and `dw = (xᵀ · g)ᵀ`, as one flat result (`dx`'s values, then `dw`'s).
struct MatmulTBackward;

impl CustomOp3 for MatmulTBackward {
    fn name(&self) -> &'static str {
        "pool-matmul-t-backward"
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
        let (x, w, g) = (
            values(s1, l1, self.name())?,
            values(s2, l2, self.name())?,
            values(s3, l3, self.name())?,
        );
        let (m, k, n) = matmul_t_dims(l1.dims(), l2.dims())?;
        if g.len() != m * n {
            candle_core::bail!(
                "matmul_t: a gradient of {} values for {:?}",
                g.len(),
                l3.dims()
            );
        }
        let (mut both, dw) = matmul_t_gradients(x, w, g, (m, k, n));
        both.extend(dw);
        let len = both.len();
        Ok(to_storage(both, len))
    }
}

/// The gradients of `y = x · wᵀ` (`x` [m, k], `w` [n, k]) for `g = dy`: `dx = g · w` [m, k] and
/// `dw = (xᵀ · g)ᵀ` [n, k], the bits of candle's matmul autograd.
pub(crate) fn matmul_t_gradients(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    (m, k, n): (usize, usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let dx = matmul(dense(g, n), dense(w, k), (m, n, k));
    // candle computes `xᵀ · g` [k, n] and hands `w` its transpose.
    let xt_g = matmul(transposed(x, k), dense(g, n), (k, m, n));
    let mut dw = Vec::with_capacity(n * k);
    for j in 0..n {
        dw.extend((0..k).map(|i| xt_g[i * n + j]));
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    use crate::test_values::{tensor_bits, value_bits as bits};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::test_values::uniform(n, seed, 1.0)
    }

    /// `x Wᵀ` (a frozen linear's forward) and `dy W` (its backward) at the model's shapes (SmolLM2's
    /// projections and output head, a Qwen2.5-0.5B projection, odd sizes), against candle's matmul.
    #[test]
    fn the_same_bits_as_candles_matmul() {
        let dev = &Device::Cpu;
        for (m, input, output) in [
            (1024, 576, 576),
            (1024, 576, 192),
            (1024, 576, 1536),
            (1024, 1536, 576),
            (256, 576, 49152),
            (300, 896, 4864),
            (7, 64, 33),
            (65, 130, 250),
            // LoRA's products: x Aᵀ (r columns), then its result times Bᵀ.
            (1024, 576, 16),
            (1000, 576, 8),
            (1024, 16, 192),
            // One row (a dense model decoding one token): gemm's matrix-vector path, per block.
            (1, 576, 49152),
            (1, 576, 1536),
            // Small on one side, large on the other: blocks must stay large for gemm.
            (8, 1000, 192),
            (100, 1000, 40),
            (64, 700, 130),
        ] {
            let x = random(m * input, 1);
            let w = random(output * input, 2);
            let dy = random(m * output, 3);
            let (xt, wt) = (
                Tensor::from_slice(&x, (m, input), dev).unwrap(),
                Tensor::from_slice(&w, (output, input), dev).unwrap(),
            );
            let want = xt
                .matmul(&wt.t().unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = matmul(
                Operand {
                    data: &x,
                    row_stride: input,
                    col_stride: 1,
                },
                Operand {
                    data: &w,
                    row_stride: 1,
                    col_stride: input,
                },
                (m, input, output),
            );
            assert_eq!(bits(&got), bits(&want), "x Wᵀ, {m} × {input} × {output}");

            let dyt = Tensor::from_slice(&dy, (m, output), dev).unwrap();
            let want = dyt
                .matmul(&wt)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = matmul(
                Operand {
                    data: &dy,
                    row_stride: output,
                    col_stride: 1,
                },
                Operand {
                    data: &w,
                    row_stride: input,
                    col_stride: 1,
                },
                (m, output, input),
            );
            assert_eq!(bits(&got), bits(&want), "dy W, {m} × {output} × {input}");
        }
    }

    /// The attention's products (`q · kᵀ`, then the weights · `v`) forward and backward, against
    /// candle's matmul and its autograd, to the bit.
    #[test]
    fn batched_products_and_their_gradients_are_candles_bits() {
        let dev = &Device::Cpu;
        for (batch, heads, t, hd) in [(4, 9, 256, 64), (1, 2, 5, 8), (2, 3, 33, 16)] {
            let tensor = |dims: &[usize], seed| {
                Tensor::from_vec(random(dims.iter().product(), seed), dims, dev).unwrap()
            };
            let a = Var::from_tensor(&tensor(&[batch, heads, t, hd], 4)).unwrap();
            let b = Var::from_tensor(&tensor(&[batch, heads, hd, t], 5)).unwrap();
            let r = tensor(&[batch, heads, t, t], 6);
            let flat = tensor_bits;
            let mut results = Vec::new();
            for product in [
                |a: &Tensor, b: &Tensor| a.matmul(b).unwrap(),
                |a: &Tensor, b: &Tensor| batched_matmul(a, b).unwrap(),
            ] {
                let c = product(a.as_tensor(), b.as_tensor());
                let g = (&c * &r).unwrap().sum_all().unwrap().backward().unwrap();
                results.push([
                    flat(&c),
                    flat(g.get(a.as_tensor()).unwrap()),
                    flat(g.get(b.as_tensor()).unwrap()),
                ]);
            }
            assert!(results[0] == results[1], "{batch} × {heads} × {t} × {hd}");
        }
    }

    /// The results are not zeroed before `gemm` writes them, so an empty inner dimension must still
    /// give zeros (`gemm` writes them), on one thread and through the pool, and so must batches.
    #[test]
    fn an_empty_inner_dimension_gives_zeros_not_the_allocators_leftovers() {
        // Leave non-zero values in freed memory of the sizes asked for next.
        for _ in 0..4 {
            drop(std::hint::black_box(vec![7f32; 1024 * 576]));
            drop(std::hint::black_box(vec![7f32; 8 * 64 * 64]));
        }
        let empty: [f32; 0] = [];
        for (m, n) in [(3, 5), (1024, 576)] {
            let out = matmul(dense(&empty, 0), dense(&empty, n), (m, 0, n));
            assert_eq!(out.len(), m * n);
            assert!(out.iter().all(|v| v.to_bits() == 0), "m {m}, n {n}");
        }
        let out = batched(8, (64, 0, 64), |_| dense(&empty, 0), |_| dense(&empty, 64));
        assert_eq!(out.len(), 8 * 64 * 64);
        assert!(out.iter().all(|v| v.to_bits() == 0));
    }

    #[test]
    fn shapes_that_do_not_multiply_are_an_error() {
        let dev = &Device::Cpu;
        let a = Tensor::zeros((2, 3, 4), DType::F32, dev).unwrap();
        let b = Tensor::zeros((2, 5, 4), DType::F32, dev).unwrap();
        let err = batched_matmul(&a, &b).unwrap_err().to_string();
        assert!(
            err.contains("shapes [2, 3, 4] and [2, 5, 4] do not multiply"),
            "{err}"
        );
    }

    /// LoRA's two products, `(x Aᵀ) Bᵀ`, forward and backward (to `x`, `A` and `B`), against
    /// candle's `matmul(&w.t())` and its autograd, to the bit.
    #[test]
    fn lora_products_and_their_gradients_are_candles_bits() {
        let dev = &Device::Cpu;
        for (m, input, r, output) in [(1024, 576, 16, 576), (1000, 576, 8, 192), (5, 64, 4, 33)] {
            let tensor = |dims: &[usize], seed| {
                Tensor::from_vec(random(dims.iter().product(), seed), dims, dev).unwrap()
            };
            let x = Var::from_tensor(&tensor(&[m, input], 7)).unwrap();
            let a = Var::from_tensor(&tensor(&[r, input], 8)).unwrap();
            let b = Var::from_tensor(&tensor(&[output, r], 9)).unwrap();
            let weights = tensor(&[m, output], 10);
            let flat = tensor_bits;
            let mut results = Vec::new();
            for product in [
                |x: &Tensor, w: &Tensor| x.matmul(&w.t().unwrap()).unwrap(),
                |x: &Tensor, w: &Tensor| matmul_t(x, w).unwrap(),
            ] {
                let y = product(&product(x.as_tensor(), a.as_tensor()), b.as_tensor());
                let g = (&y * &weights)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                results.push(
                    [x.as_tensor(), a.as_tensor(), b.as_tensor()].map(|v| flat(g.get(v).unwrap())),
                );
                results.push([flat(&y), vec![], vec![]]);
            }
            assert!(
                results[0] == results[2],
                "gradients, {m} × {input} × {r} × {output}"
            );
            assert!(
                results[1] == results[3],
                "product, {m} × {input} × {r} × {output}"
            );
        }
    }
}
