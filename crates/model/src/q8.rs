//! Decoding's quantized matrix product on x86: Q8_0 weights against Q8_0-quantized activations,
//! the same numbers as candle's AVX2 kernel to the bit, computed faster; and what rtlab's quantized
//! kernels share (the tiles' scheduling, the CPU's features). [`crate::quantized::QuantizedWeight::matmul_t`] sends
//! Q4_1 weights to [`crate::q4_1`].
//!
//! candle computes `x Wᵀ` for a Q8_0 `W` as one dot product per (row, column), and each dot product
//! converts two f16 block scales per block. Sampling 20 answers to one prompt decodes 20 rows per
//! step, so that work is repeated for every row. Here the weights' scales are converted once per
//! weight, and a tile of two columns and up to four rows is computed together: each weight block is
//! loaded once for four rows, each activation block once for two columns. A single row (one stream)
//! takes four columns at a time, each activation block loaded once for the four.
//!
//! The result is bit-identical to candle's: every (row, column) runs the same per-block integer dot
//! product (exact; AVX-VNNI's `vpdpbusd` where the CPU has it, AVX2's two instructions otherwise,
//! the same lanes either way), scaled by the same f32 product of the two scales, accumulated into
//! the same eight lanes in the same block order and summed across lanes the same way. So switching
//! kernels changes no sample and no snapshot; a test checks both instruction sets against candle on
//! random weights.
//!
//! Where candle runs another kernel (its repacked VNNI kernel for Q8_0 when the inner dimension is a
//! multiple of 256, or its portable one without AVX2 and FMA), candle's runs: [`crate::quantized::QuantizedWeight::matmul_t`]
//! returns `None`.

use candle_core::quantized::{GgmlDType, QTensor};
use std::sync::OnceLock;

/// Values per Q8_0 block.
const QK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale, then 32 i8 quants (candle's `#[repr(C)] BlockQ8_0`).
const BLOCK_BYTES: usize = 34;

/// `x Wᵀ` for `x` [m, k] (row-major) and a Q8_0 weight, as [m, n]; None where candle's own kernel
/// must run. `scales` caches the blocks' scales as f32 (`n × k/32` floats, an eighth of the weight),
/// converted on first use; `dots` picks the dot products' instructions (the same bits).
pub(crate) fn matmul_t(
    tensor: &QTensor,
    scales: &OnceLock<Vec<f32>>,
    x: &[f32],
    m: usize,
    dots: Dots,
) -> candle_core::Result<Option<Vec<f32>>> {
    let (n, k) = tensor.shape().dims2()?;
    if !applies(tensor.dtype(), n, k) || m == 0 || x.len() != m * k {
        return Ok(None);
    }
    let data = tensor.data()?;
    let weights: &[u8] = &data;
    let scales = scales.get_or_init(|| block_scales(weights));
    let act_blocks = quantize_rows(x, m, k);
    let act_bytes = block_bytes(&act_blocks);
    let act_scales = block_scales(act_bytes);
    #[cfg(target_arch = "x86_64")]
    if dots == Dots::Avx512Vnni && m > 1 && cpu().avx512_vnni {
        let w = Operand {
            blocks: weights,
            scales,
        };
        let a = Operand {
            blocks: act_bytes,
            scales: &act_scales,
        };
        // SAFETY: the CPU has AVX-512 F, BW and VNNI (`avx512_vnni` checks all three).
        return Ok(Some(unsafe { pairs::product(w, a, (m, k / QK, n)) }));
    }
    Ok(Some(matmul(
        dots.vnni256(),
        Operand {
            blocks: weights,
            scales,
        },
        Operand {
            blocks: act_bytes,
            scales: &act_scales,
        },
        (m, k, n),
    )))
}

/// True where this kernel computes what candle would with its AVX2 kernel.
fn applies(dtype: GgmlDType, n: usize, k: usize) -> bool {
    if dtype != GgmlDType::Q8_0 || k == 0 || !k.is_multiple_of(QK) {
        return false;
    }
    let cpu = cpu();
    cpu.avx2_fma && !(cpu.candle_repacks_q8_0 && k.is_multiple_of(256) && n.is_multiple_of(16))
}

/// What the CPU (and the environment) decide, read once as candle reads them once.
pub(crate) struct Cpu {
    /// rtlab's kernels can run: AVX2 and FMA, and `RTLAB_QMATMUL` is not `candle` (which runs
    /// candle's kernels everywhere, with Q4_1 requantized to Q8_0 for them: the baseline of
    /// `cargo bench --bench gguf`).
    pub(crate) avx2_fma: bool,
    /// candle's repacked kernel (`quantized::repack_x86::select`) takes Q8_0 on a VNNI CPU when k
    /// is a multiple of 256 and n of 16: its choice of CPU level, with its override variables.
    candle_repacks_q8_0: bool,
    /// AVX-VNNI's `vpdpbusd` computes the dot products' lanes (the same bits, fewer instructions).
    pub(crate) vnni: bool,
    /// F16C: the Q4_1 kernel converts its blocks' f16 scale and offset with it.
    pub(crate) f16c: bool,
    /// AVX-512 F, BW and VNNI: the kernels compute two activation rows per instruction.
    pub(crate) avx512_vnni: bool,
}

/// The instructions that compute a kernel's dot products. Every choice gives the same bits: each
/// lane does the same integer sums and the same float operations in the same order (the tests
/// compare each one this CPU has with a scalar form of the arithmetic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dots {
    /// AVX2's `vpmaddubsw` then `vpmaddwd`: every CPU the kernels run on.
    Avx2,
    /// AVX-VNNI's `vpdpbusd` on 256-bit registers.
    AvxVnni,
    /// AVX-512's `vpdpbusd` on 512-bit registers, two activation rows side by side, for products of
    /// several rows (a batch, a prompt); one row takes the 256-bit instructions.
    Avx512Vnni,
}

impl Dots {
    /// The fastest this CPU has.
    pub(crate) fn best() -> Dots {
        let cpu = cpu();
        if cpu.avx512_vnni {
            Dots::Avx512Vnni
        } else if cpu.vnni {
            Dots::AvxVnni
        } else {
            Dots::Avx2
        }
    }

    /// Every choice this CPU can run (the tests check each).
    #[cfg(test)]
    pub(crate) fn on_this_cpu() -> Vec<Dots> {
        let cpu = cpu();
        let mut all = vec![Dots::Avx2];
        if cpu.vnni {
            all.push(Dots::AvxVnni);
        }
        if cpu.avx512_vnni {
            all.push(Dots::Avx512Vnni);
        }
        all
    }

    /// True where the 256-bit kernels may use AVX-VNNI.
    pub(crate) fn vnni256(self) -> bool {
        self != Dots::Avx2 && cpu().vnni
    }
}

pub(crate) fn cpu() -> &'static Cpu {
    static CPU: OnceLock<Cpu> = OnceLock::new();
    CPU.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let env_is = |name: &str, value: &str| std::env::var(name).as_deref() == Ok(value);
            let (force_avx2, force_vnni) = (
                env_is("MISTRALRS_FORCE_AVX2", "1"),
                env_is("MISTRALRS_FORCE_AVXVNNI", "1"),
            );
            let vnni512 = !force_avx2
                && !force_vnni
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vnni");
            let vnni256 = !force_avx2
                && (force_vnni || is_x86_feature_detected!("avxvnni"))
                && is_x86_feature_detected!("avx2");
            Cpu {
                avx2_fma: is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && !env_is("RTLAB_QMATMUL", "candle"),
                candle_repacks_q8_0: vnni512 || vnni256,
                vnni: is_x86_feature_detected!("avxvnni"),
                f16c: is_x86_feature_detected!("f16c"),
                avx512_vnni: is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                    && !env_is("RTLAB_QMATMUL", "avx2"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Cpu {
            avx2_fma: false,
            candle_repacks_q8_0: false,
            vnni: false,
            f16c: false,
            avx512_vnni: false,
        }
    })
}

/// Each block's f16 scale as f32 (exact: every f16 is an f32).
fn block_scales(blocks: &[u8]) -> Vec<f32> {
    blocks
        .chunks_exact(BLOCK_BYTES)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// The activations quantized as candle quantizes them for its Q8_0 kernel (`BlockQ8_0::from_float`).
fn quantize_rows(
    x: &[f32],
    m: usize,
    k: usize,
) -> Vec<candle_core::quantized::k_quants::BlockQ8_0> {
    use candle_core::quantized::k_quants::{BlockQ8_0, GgmlType};
    let kb = k / QK;
    let mut blocks = vec![BlockQ8_0::zeros(); m * kb];
    let out = SharedOut(blocks.as_mut_ptr());
    let quantize = |rows: std::ops::Range<usize>| {
        for r in rows {
            // SAFETY: each row's blocks are written by exactly one work item.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.at(r * kb), kb) };
            BlockQ8_0::from_float(&x[r * k..(r + 1) * k], dst);
        }
    };
    // A few rows (decoding) quantize faster here than the pool can wake its threads.
    if m <= 4 {
        quantize(0..m);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(m, quantize);
    }
    blocks
}

/// Blocks as the bytes of the GGUF layout, borrowed.
fn block_bytes(blocks: &[candle_core::quantized::k_quants::BlockQ8_0]) -> &[u8] {
    // SAFETY: BlockQ8_0 is `#[repr(C)]` {f16, [i8; 32]}, 34 bytes with no padding (candle asserts
    // the size), so its blocks are exactly the bytes of the GGUF layout.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    }
}

/// Q8_0 blocks (row after row) and their scales.
#[derive(Clone, Copy)]
struct Operand<'a> {
    blocks: &'a [u8],
    scales: &'a [f32],
}

/// Columns per parallel task: enough work to pay for the task, small enough to balance two cores.
pub(crate) const COLUMNS_PER_TASK: usize = 32;

/// A buffer that the pool's work items write disjoint parts of.
pub(crate) struct SharedOut<T>(pub(crate) *mut T);
// SAFETY: every use writes elements no other work item touches.
unsafe impl<T> Sync for SharedOut<T> {}
impl<T> SharedOut<T> {
    pub(crate) fn at(&self, i: usize) -> *mut T {
        // SAFETY: callers index within the buffer.
        unsafe { self.0.add(i) }
    }
}

/// Where one product's work items are: several weights that multiply the same activations (a
/// layer's q, k and v; its gate and up) are computed as one product whose columns are theirs one
/// after the other, so the pool is woken once for all of them. `segments[s]` is weight `s`'s column
/// count; each work item owns [`COLUMNS_PER_TASK`] columns (fewer at a weight's end) of one weight,
/// never columns of two, so every (row, column) is computed by the same tile it gets alone.
struct Segments {
    /// Per weight, its first work item; then the total.
    first_task: Vec<usize>,
}

impl Segments {
    fn new(segments: &[usize]) -> Segments {
        let mut first_task = Vec::with_capacity(segments.len() + 1);
        let mut tasks = 0;
        for &n in segments {
            first_task.push(tasks);
            tasks += n.div_ceil(COLUMNS_PER_TASK);
        }
        first_task.push(tasks);
        Segments { first_task }
    }

    fn tasks(&self) -> usize {
        self.first_task.last().copied().unwrap_or(0)
    }

    /// Work item `task`'s weight and its first column in that weight.
    fn locate(&self, task: usize) -> (usize, usize) {
        let s = self.first_task.partition_point(|&first| first <= task) - 1;
        (s, (task - self.first_task[s]) * COLUMNS_PER_TASK)
    }
}

/// One [m, n] result per weight, the buffers the pool's work items write.
fn result_buffers(m: usize, segments: &[usize]) -> (Vec<Vec<f32>>, Vec<SharedOut<f32>>) {
    let mut results: Vec<Vec<f32>> = segments.iter().map(|&n| vec![0f32; m * n]).collect();
    let outs = results
        .iter_mut()
        .map(|r| SharedOut(r.as_mut_ptr()))
        .collect();
    (results, outs)
}

/// The [m, n] result of a product computed tile by tile: `tile(col, columns, row, rows, put)`
/// computes `columns × rows` values and hands each to `put(column, row, value)`. A tile is up to
/// four columns of one row (one row reuses each activation block across four columns), or up to two
/// columns of up to four rows (several rows reuse each weight block four times). The work runs on
/// candle's own thread pool, as its other ops do: a second pool (rayon's) beside it fought it for
/// the cores, each spinning while the other worked.
pub(crate) fn tiled_product(
    (m, n): (usize, usize),
    tile: impl Fn((usize, usize), (usize, usize), &mut dyn FnMut(usize, usize, f32)) + Sync,
) -> Vec<f32> {
    let mut results = tiled_products(m, &[n], |_, columns, rows, put| tile(columns, rows, put));
    results.pop().unwrap_or_default()
}

/// [`tiled_product`] for several weights of the same input at once, one [m, `segments[s]`] result
/// per weight: `tile(s, (col, columns), (row, rows), put)` computes a tile of weight `s`. Each (row,
/// column) gets the tile it gets in a product of its weight alone, so the same bits.
pub(crate) fn tiled_products(
    m: usize,
    segments: &[usize],
    tile: impl Fn(usize, (usize, usize), (usize, usize), &mut dyn FnMut(usize, usize, f32)) + Sync,
) -> Vec<Vec<f32>> {
    // Each work item owns whole columns of one row-major result.
    let (results, outs) = result_buffers(m, segments);
    let layout = Segments::new(segments);
    let width = if m == 1 { 4 } else { 2 };
    candle_core::utils::barrier_pool().execute_chunked(layout.tasks(), |range| {
        for task in range {
            let (s, first) = layout.locate(task);
            let (n, out) = (segments[s], &outs[s]);
            let columns = (n - first).min(COLUMNS_PER_TASK);
            let mut c = 0;
            while c < columns {
                let take = (columns - c).min(width);
                let mut r = 0;
                while r < m {
                    let rows = (m - r).min(4);
                    tile(s, (first + c, take), (r, rows), &mut |dc, dr, v| {
                        // SAFETY: column first + c + dc < n of weight s belongs to this work item
                        // alone, and row r + dr < m.
                        unsafe { *out.at((r + dr) * n + first + c + dc) = v }
                    });
                    r += rows;
                }
                c += take;
            }
        }
    });
    results
}

/// Pairs of rows per tile of the AVX-512 kernels.
pub(crate) const PAIRS_PER_TILE: usize = 5;

/// The [m, n] result of an AVX-512 product computed tile by tile, two rows to a register:
/// `tile(columns, pairs, col, pair, put)` computes 1 or 2 columns from `col` by 1 to
/// [`PAIRS_PER_TILE`] pairs of rows from pair `pair`, handing each value to `put(column, row within
/// the tile, value)`; an odd m's last pair has a second row of zeros, whose values are dropped. The
/// work runs on candle's pool, each work item owning whole columns.
pub(crate) fn pair_product(
    (m, n): (usize, usize),
    tile: impl Fn(usize, usize, usize, usize, &mut dyn FnMut(usize, usize, f32)) + Sync,
) -> Vec<f32> {
    let mut results = pair_products(m, &[n], |_, columns, pairs, col, pair, put| {
        tile(columns, pairs, col, pair, put)
    });
    results.pop().unwrap_or_default()
}

/// [`pair_product`] for several weights of the same input at once (see [`tiled_products`]):
/// `tile(s, columns, pairs, col, pair, put)` computes a tile of weight `s`.
pub(crate) fn pair_products(
    m: usize,
    segments: &[usize],
    tile: impl Fn(usize, usize, usize, usize, usize, &mut dyn FnMut(usize, usize, f32)) + Sync,
) -> Vec<Vec<f32>> {
    let (results, outs) = result_buffers(m, segments);
    let layout = Segments::new(segments);
    let pairs = m.div_ceil(2);
    candle_core::utils::barrier_pool().execute_chunked(layout.tasks(), |range| {
        for task in range {
            let (s, first) = layout.locate(task);
            let (n, out) = (segments[s], &outs[s]);
            let last = (first + COLUMNS_PER_TASK).min(n);
            let mut col = first;
            while col < last {
                let columns = (last - col).min(2);
                let mut pair = 0;
                while pair < pairs {
                    let take = (pairs - pair).min(PAIRS_PER_TILE);
                    tile(s, columns, take, col, pair, &mut |c, r, v| {
                        let row = pair * 2 + r;
                        if row < m {
                            // SAFETY: column col + c of weight s belongs to this work item alone;
                            // row < m.
                            unsafe { *out.at(row * n + col + c) = v }
                        }
                    });
                    pair += take;
                }
                col += columns;
            }
        }
    });
    results
}

/// The [m, n_s] results of products whose weights are packed in groups of `group` columns (the Q4_1
/// kernel's layout): `tile(s, g, (row, rows), out)` computes rows `row..row + rows` of weight `s`'s
/// group `g` into `out` (`rows × group`, row-major), and the columns that exist are copied into the
/// result. Every row of a group is computed by one call, so each (row, column) is what its weight
/// alone gives. Work items own [`COLUMNS_PER_TASK`] columns of one weight, as in
/// [`tiled_products`].
pub(crate) fn group_products(
    m: usize,
    segments: &[usize],
    group: usize,
    tile: impl Fn(usize, usize, (usize, usize), &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    debug_assert!(COLUMNS_PER_TASK.is_multiple_of(group));
    let (results, outs) = result_buffers(m, segments);
    let layout = Segments::new(segments);
    candle_core::utils::barrier_pool().execute_chunked(layout.tasks(), |range| {
        let mut values = vec![0f32; m * group];
        for task in range {
            let (s, first) = layout.locate(task);
            let (n, out) = (segments[s], &outs[s]);
            let last = (first + COLUMNS_PER_TASK).min(n);
            for col in (first..last).step_by(group) {
                tile(s, col / group, (0, m), &mut values);
                let width = (last - col).min(group);
                for row in 0..m {
                    // SAFETY: columns col..col + width of weight s belong to this work item alone;
                    // row < m.
                    let to =
                        unsafe { std::slice::from_raw_parts_mut(out.at(row * n + col), width) };
                    to.copy_from_slice(&values[row * group..][..width]);
                }
            }
        }
    });
    results
}

/// Runs the calling module's `tile::<C, P>` for `$columns` (1 or 2) by `$pairs` (1 to
/// [`PAIRS_PER_TILE`]), with `$args`: the AVX-512 kernels' tile sizes, as constants.
macro_rules! run_pair_tile {
    ($columns:expr, $pairs:expr, $args:tt) => {
        $crate::q8::run_pair_tile!(@sizes $columns, $pairs, $args;
            2, 5; 2, 4; 2, 3; 2, 2; 2, 1; 1, 5; 1, 4; 1, 3; 1, 2; 1, 1)
    };
    (@sizes $columns:expr, $pairs:expr, $args:tt; $($c:literal, $p:literal);*) => {
        match ($columns, $pairs) {
            $(($c, $p) => tile::<$c, $p> $args,)*
            _ => unreachable!("a tile is 1 or 2 columns by 1 to 5 pairs"),
        }
    };
}
pub(crate) use run_pair_tile;

/// One block of a pair of rows into its accumulator: per lane, the four-product integer dot of
/// `w` (unsigned) with `a` (signed), converted, then `fma(w_d · a_d, dot, acc)`: the 256-bit
/// kernels' operations, in their order.
///
/// # Safety
/// The CPU must have AVX-512 F and VNNI (the caller's target features).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn pair_block(
    acc: std::arch::x86_64::__m512,
    w: std::arch::x86_64::__m512i,
    a: std::arch::x86_64::__m512i,
    w_d: std::arch::x86_64::__m512,
    a_d: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    unsafe {
        let dot = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a));
        _mm512_fmadd_ps(_mm512_mul_ps(w_d, a_d), dot, acc)
    }
}

/// A pair's two values: each half of its accumulator summed as [`hsum`] sums a 256-bit one.
///
/// # Safety
/// The CPU must have AVX-512 F and AVX2 (the caller's target features).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn pair_sums(acc: std::arch::x86_64::__m512) -> (f32, f32) {
    use std::arch::x86_64::*;
    unsafe {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
        (hsum(_mm512_castps512_ps256(acc)), hsum(high))
    }
}

/// `a Wᵀ` [m, n] for Q8_0 weights `w` [n, k] and activations `a` [m, k].
fn matmul(vnni: bool, w: Operand, a: Operand, (m, k, n): (usize, usize, usize)) -> Vec<f32> {
    let kb = k / QK;
    tiled_product((m, n), |columns, rows, put| {
        // SAFETY: `applies` checked AVX2 and FMA (and `vnni` AVX-VNNI); the tile's columns and
        // rows exist, kb blocks each.
        unsafe { block(vnni, w, a, kb, columns, rows, put) }
    })
}

/// The integer part of candle's `mul_sum_i8_pairs_float(w, a)`: `|w| · sign(a, w)` summed in eight
/// i32 lanes of four adjacent products each. AVX2 needs two instructions (pairs to i16, then pairs of
/// those to i32); AVX-VNNI's `vpdpbusd` sums the same four products per lane in one. The sums are
/// exact integers either way (no i16 saturates: |w| ≤ 128 and |a| ≤ 127), so the lanes are the
/// same bits.
#[cfg(target_arch = "x86_64")]
pub(crate) trait LaneDot {
    /// # Safety
    /// The CPU must have the instructions the implementation uses.
    unsafe fn lanes(
        w_abs: std::arch::x86_64::__m256i,
        signed: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i;
}

/// Dot products with AVX2: candle's instructions.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2Dot;
#[cfg(target_arch = "x86_64")]
impl LaneDot for Avx2Dot {
    #[inline(always)]
    unsafe fn lanes(
        w_abs: std::arch::x86_64::__m256i,
        signed: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        unsafe { _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(w_abs, signed)) }
    }
}

/// Dot products with AVX-VNNI's `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
pub(crate) struct VnniDot;
#[cfg(target_arch = "x86_64")]
impl LaneDot for VnniDot {
    #[inline(always)]
    unsafe fn lanes(
        w_abs: std::arch::x86_64::__m256i,
        signed: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        unsafe { _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w_abs, signed) }
    }
}

/// Dot products of `C` weight columns from `col` with `R` activation rows from `row`:
/// `[column][row]`. Constant sizes, so that the `C × R` accumulators live in registers.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and what `D` uses; the columns and rows must exist.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
// Index loops over constant bounds: each `acc[c][r]` is its own register once unrolled.
#[allow(clippy::needless_range_loop)]
unsafe fn tile<D: LaneDot, const C: usize, const R: usize>(
    w: Operand,
    a: Operand,
    kb: usize,
    col: usize,
    row: usize,
) -> [[f32; R]; C] {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); R]; C];
        let quants = |blocks: &[u8], i: usize| {
            _mm256_loadu_si256(blocks.as_ptr().add(i * BLOCK_BYTES + 2) as *const __m256i)
        };
        for b in 0..kb {
            let mut aq = [_mm256_setzero_si256(); R];
            let mut a_scale = [0f32; R];
            for r in 0..R {
                let ai = (row + r) * kb + b;
                aq[r] = quants(a.blocks, ai);
                a_scale[r] = *a.scales.get_unchecked(ai);
            }
            for c in 0..C {
                let wi = (col + c) * kb + b;
                if row == 0 {
                    prefetch_ahead(w.blocks, wi + C * kb * TILES_AHEAD, BLOCK_BYTES);
                }
                let wq = quants(w.blocks, wi);
                let w_abs = _mm256_sign_epi8(wq, wq);
                let w_scale = *w.scales.get_unchecked(wi);
                for r in 0..R {
                    // candle's `mul_sum_i8_pairs_float(w, a)` as f32, then its
                    // `fmadd(f16→f32(w.d) · f16→f32(a.d), q, acc)`.
                    let signed = _mm256_sign_epi8(aq[r], wq);
                    let q = _mm256_cvtepi32_ps(D::lanes(w_abs, signed));
                    let d = _mm256_set1_ps(w_scale * a_scale[r]);
                    acc[c][r] = _mm256_fmadd_ps(d, q, acc[c][r]);
                }
            }
        }
        let mut out = [[0f32; R]; C];
        for c in 0..C {
            for r in 0..R {
                out[c][r] = hsum(acc[c][r]);
            }
        }
        out
    }
}

/// How far ahead a tile asks for its weights, in tiles of its own width: one stream decodes one row,
/// whose product waited on the weights' loads (a profile put three quarters of the Q8_0 tile's time
/// on the instructions right after them). Each column's block asks for the same block of the tile
/// `TILES_AHEAD` tiles on, so memory is read while this tile computes; only the first row tile (the
/// first pair tile, on AVX-512) of a column group asks, so a batch asks for each block once. One,
/// two and four tiles ahead decoded 66.2, 68.7 and 66.5 tok/s on one thread of the EPYC.
pub(crate) const TILES_AHEAD: usize = 2;

/// Asks the CPU to fetch block `block` of `blocks` (`block_bytes` each) into its caches; nothing
/// where that block is past the end. It never changes a result.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead(blocks: &[u8], block: usize, block_bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let at = block * block_bytes;
    if at < blocks.len() {
        // SAFETY: a prefetch reads nothing architecturally and never faults; the address is in
        // `blocks`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(blocks.as_ptr().add(at) as *const i8) };
    }
}

/// [`tile`] compiled for AVX2 and FMA.
///
/// # Safety
/// As [`tile`], on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const C: usize, const R: usize>(
    w: Operand,
    a: Operand,
    kb: usize,
    col: usize,
    row: usize,
) -> [[f32; R]; C] {
    unsafe { tile::<Avx2Dot, C, R>(w, a, kb, col, row) }
}

/// [`tile`] compiled for AVX2, FMA and AVX-VNNI.
///
/// # Safety
/// As [`tile`], on a CPU with AVX2, FMA and AVX-VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn tile_vnni<const C: usize, const R: usize>(
    w: Operand,
    a: Operand,
    kb: usize,
    col: usize,
    row: usize,
) -> [[f32; R]; C] {
    unsafe { tile::<VnniDot, C, R>(w, a, kb, col, row) }
}

/// Computes one tile of `$columns × $rows` with the calling module's `tile_vnni` where `$vnni` holds,
/// else its `tile_avx2`, on `$args`, and hands each value to `$put(column, row, value)`. The sizes are
/// the constant ones the tiles are compiled for: 1 to 4 columns of one row, or 1 or 2 columns of 1 to
/// 4 rows (what [`tiled_product`] hands out). Both quantized kernels' `block` is this one line.
macro_rules! run_tile {
    ($columns:expr, $rows:expr, $vnni:expr, $args:tt, $put:expr) => {
        match ($columns, $rows) {
            (4, 1) => $crate::q8::run_tile!(@size 4, 1, $vnni, $args, $put),
            (3, 1) => $crate::q8::run_tile!(@size 3, 1, $vnni, $args, $put),
            (2, 1) => $crate::q8::run_tile!(@size 2, 1, $vnni, $args, $put),
            (2, 2) => $crate::q8::run_tile!(@size 2, 2, $vnni, $args, $put),
            (2, 3) => $crate::q8::run_tile!(@size 2, 3, $vnni, $args, $put),
            (2, _) => $crate::q8::run_tile!(@size 2, 4, $vnni, $args, $put),
            (_, 1) => $crate::q8::run_tile!(@size 1, 1, $vnni, $args, $put),
            (_, 2) => $crate::q8::run_tile!(@size 1, 2, $vnni, $args, $put),
            (_, 3) => $crate::q8::run_tile!(@size 1, 3, $vnni, $args, $put),
            _ => $crate::q8::run_tile!(@size 1, 4, $vnni, $args, $put),
        }
    };
    (@size $c:literal, $r:literal, $vnni:expr, $args:tt, $put:expr) => {{
        let t = unsafe {
            if $vnni {
                tile_vnni::<$c, $r> $args
            } else {
                tile_avx2::<$c, $r> $args
            }
        };
        for (c, column) in t.iter().enumerate() {
            for (r, v) in column.iter().enumerate() {
                $put(c, r, *v);
            }
        }
    }};
}
pub(crate) use run_tile;

/// Computes the `columns × rows` block at (`col`, `row`) with the tile of that size and hands each
/// value to `put(column, row, value)`. Sizes: 1 to 4 columns of one row, or 1 or 2 columns of 1 to 4
/// rows.
///
/// # Safety
/// As [`tile`]; `vnni` only on a CPU with AVX-VNNI.
#[cfg(target_arch = "x86_64")]
unsafe fn block(
    vnni: bool,
    w: Operand,
    a: Operand,
    kb: usize,
    (col, columns): (usize, usize),
    (row, rows): (usize, usize),
    put: &mut dyn FnMut(usize, usize, f32),
) {
    run_tile!(columns, rows, vnni, (w, a, kb, col, row), put)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(
    _: bool,
    _: Operand,
    _: Operand,
    _: usize,
    _: (usize, usize),
    _: (usize, usize),
    _: &mut dyn FnMut(usize, usize, f32),
) {
    unreachable!("the Q8_0 kernel applies on x86_64 only")
}

/// The Q8_0 product of several rows on AVX-512, two rows to a register as in the Q4_1 kernel. AVX-512
/// has no `vpsignb`, so candle's `sign(a, w)` becomes a masked negation (`a` where `w ≥ 0`, `-a`
/// where `w < 0`; where `w` is 0 the product is 0 either way) and `|w|` is `vpabsb`: the same
/// integers into the same `vpdpbusd` sums, the same float operations after, so the bits of the 256-bit
/// kernels.
#[cfg(target_arch = "x86_64")]
mod pairs {
    use super::{pair_block, pair_sums, Operand, BLOCK_BYTES, QK};
    use std::arch::x86_64::*;

    /// Per pair and block, the two rows' 32 quants (64 bytes) and 16 scales (eight of each row's).
    struct PairRows {
        quants: Vec<i8>,
        scales: Vec<f32>,
    }

    fn pair_rows(a: Operand, m: usize, kb: usize) -> PairRows {
        let pairs = m.div_ceil(2);
        let mut rows = PairRows {
            quants: vec![0; pairs * kb * 2 * QK],
            scales: vec![0.0; pairs * kb * 16],
        };
        for r in 0..m {
            let (p, half) = (r / 2, r % 2);
            for b in 0..kb {
                let from = r * kb + b;
                let at = (p * kb + b) * 2 * QK + half * QK;
                let block = &a.blocks[from * BLOCK_BYTES + 2..][..QK];
                for (q, byte) in rows.quants[at..at + QK].iter_mut().zip(block) {
                    *q = *byte as i8;
                }
                let at = (p * kb + b) * 16 + half * 8;
                rows.scales[at..at + 8].fill(a.scales[from]);
            }
        }
        rows
    }

    /// `a Wᵀ` [m, n].
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI, AVX2 and FMA; `w` holds n columns of kb blocks.
    pub(super) unsafe fn product(
        w: Operand,
        a: Operand,
        (m, kb, n): (usize, usize, usize),
    ) -> Vec<f32> {
        let rows = pair_rows(a, m, kb);
        super::pair_product((m, n), |columns, pairs, col, pair, put| {
            // SAFETY: as this function's; the tile's columns and pairs exist.
            unsafe { super::run_pair_tile!(columns, pairs, (w, &rows, kb, col, pair, put)) }
        })
    }

    /// `C` columns from `col` by `P` pairs of rows from `pair`.
    ///
    /// # Safety
    /// As [`product`]; the columns and pairs must exist.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const C: usize, const P: usize>(
        w: Operand,
        a: &PairRows,
        kb: usize,
        col: usize,
        pair: usize,
        put: &mut dyn FnMut(usize, usize, f32),
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); P]; C];
            for b in 0..kb {
                let mut w_abs = [_mm512_setzero_si512(); C];
                let mut negative = [0u64; C];
                let mut w_d = [_mm512_setzero_ps(); C];
                for c in 0..C {
                    let wi = (col + c) * kb + b;
                    if pair == 0 {
                        super::prefetch_ahead(
                            w.blocks,
                            wi + C * kb * super::TILES_AHEAD,
                            BLOCK_BYTES,
                        );
                    }
                    let wq = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                        w.blocks.as_ptr().add(wi * BLOCK_BYTES + 2) as *const __m256i,
                    ));
                    w_abs[c] = _mm512_abs_epi8(wq);
                    negative[c] = _mm512_movepi8_mask(wq);
                    w_d[c] = _mm512_set1_ps(*w.scales.get_unchecked(wi));
                }
                for p in 0..P {
                    let at = (pair + p) * kb + b;
                    let aq = _mm512_loadu_si512(a.quants.as_ptr().add(at * 2 * QK) as *const _);
                    let a_d = _mm512_loadu_ps(a.scales.as_ptr().add(at * 16));
                    for c in 0..C {
                        let signed =
                            _mm512_mask_sub_epi8(aq, negative[c], _mm512_setzero_si512(), aq);
                        acc[c][p] = pair_block(acc[c][p], w_abs[c], signed, w_d[c], a_d);
                    }
                }
            }
            for c in 0..C {
                for p in 0..P {
                    let (low, high) = pair_sums(acc[c][p]);
                    put(c, 2 * p, low);
                    put(c, 2 * p + 1, high);
                }
            }
        }
    }
}

/// candle's `hsum_float_8`: the high half added to the low, then pairs, then the last two.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hsum(x: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let res = _mm256_extractf128_ps(x, 1);
    let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    let res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module, Tensor};
    use rand::{Rng, SeedableRng};
    use std::sync::Arc;

    /// The product candle computes, through the same `QMatMul` decoding used before this kernel.
    fn candle_product(q: &Arc<QTensor>, x: &[f32], m: usize, k: usize) -> Vec<f32> {
        let x = Tensor::from_slice(x, (m, k), &Device::Cpu).unwrap();
        let mm = candle_core::quantized::QMatMul::from_arc(q.clone()).unwrap();
        mm.forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn the_q8_0_kernel_gives_candles_numbers_to_the_bit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // SmolLM2's inner dimension (576 = 18 blocks), small ones, and column counts that leave
        // every remainder of the one-row tile (four columns) and the several-row tile (two).
        for (n, k) in [(72, 576), (5, 64), (6, 64), (7, 64), (33, 96), (1536, 576)] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
            let weight = crate::quantized::QuantizedWeight::new(
                QTensor::quantize(&w, GgmlDType::Q8_0).unwrap(),
            )
            .unwrap();
            for m in [1, 2, 3, 4, 5, 9, 10, 11, 20, 23] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
                let theirs = candle_product(&q, &x, m, k);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                // Both instruction sets where the CPU has AVX-VNNI; AVX2's alone where not.
                for dots in Dots::on_this_cpu() {
                    let ours = weight.matmul_t_with(&x, m, dots).unwrap();
                    // No k here is a multiple of 256: only a CPU without AVX2 and FMA (or
                    // RTLAB_QMATMUL=candle) leaves the product to candle.
                    if cpu().avx2_fma {
                        assert!(ours.is_some(), "({m}, {k}, {n}): the kernel must run here");
                    }
                    let Some(ours) = ours else {
                        continue;
                    };
                    assert_eq!(bits(&ours), bits(&theirs), "({m}, {k}, {n}), {dots:?}");
                }
            }
        }
    }
}
