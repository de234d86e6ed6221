//! Decoding's Q4_1 matrix product on x86: the GGUF's 4-bit weights, repacked at load, against
//! activations quantized as llama.cpp quantizes them (Q8_1).
//!
//! candle's Q4_1 dot product is scalar, so rtlab used to requantize Q4_1 weights to Q8_0 at load:
//! 1.7× the bytes, and a second rounding of every weight. Here the file's 20-byte blocks (an f16
//! scale `d`, an f16 offset `m`, 32 four-bit values) are kept, in another order: at load each
//! weight is repacked in groups of 16 columns ([`PackedQ4_1`]), so that one 512-bit register holds
//! four values of each of 16 columns, a 32-bit lane per column. The same bytes, so the same memory,
//! and the file's tensor is not kept beside them.
//!
//! The arithmetic: each activation block of 32 is quantized to i8 with an f16 scale `d` and an f16
//! `s = d · Σq` (llama.cpp's `quantize_row_q8_1`). Per block and column, the 32 products of nibbles
//! and activations are summed exactly in integers (eight `vpdpbusd` into the column's lane, each
//! activation quad broadcast to all 16 columns), then `acc = fma(d_w · d_x, dot, acc)` and
//! `acc = fma(m_w, s_x, acc)` in that lane. Both products of two f16 values are exact in f32, so
//! the roundings are the two FMAs' alone.
//!
//! Why not llama.cpp's `ggml_vec_dot_q4_1_q8_1`, which rtlab computed to the bit until December
//! 2026: it scales eight partial sums of four products per block, so every 32 products cost a
//! conversion, a scale and an FMA per eight lanes, and a horizontal sum per value. Decoding a batch
//! spent most of its time there. Scaling once per block (as llama.cpp's own repacked kernels for
//! Q4_0 do; `q8_0.rs` does the same for Q8_0) made one stream 1.79× faster and 20 samples 1.69× (the
//! two together, medians of 5 interleaved pairs on an AMD EPYC); the values differ from llama.cpp's in
//! the last bits (the exact integer sum is, if anything, the closer one), so sampled tokens differ
//! from before after a while; a test still measures how close the logits are to llama.cpp's.
//!
//! Every (row, column) is computed the same way whatever the tile around it, so n samples decoded
//! as a batch get the bits each gets alone; a scalar form of the arithmetic (the tests') gives the
//! same bits as both vector kernels (AVX-512 VNNI, and AVX2's `vpmaddubsw`, which cannot saturate on
//! 4-bit weights).

use crate::cpu_kernels::{cpu, Dots, GroupLayout, GROUP};
use candle_core::quantized::{GgmlDType, QTensor};

/// Values per block.
const QK: usize = 32;
/// Bytes per Q4_1 block: f16 `d`, f16 `m`, then 16 bytes of nibbles (value `i` in the low nibble of
/// byte `i`, value `i + 16` in its high nibble), candle's `#[repr(C)] BlockQ4_1` and GGML's layout.
const BLOCK_BYTES: usize = 20;

/// Rows of activations quantized per block of 32 as llama.cpp's `quantize_row_q8_1` does.
pub(crate) struct Q8_1Rows {
    pub(crate) quants: Vec<i8>,
    /// Per block: the scale, `max |x| / 127`, rounded to f16 (GGML stores it so).
    pub(crate) d: Vec<f32>,
    /// Per block: `d · Σq` with the unrounded `d`, rounded to f16.
    pub(crate) s: Vec<f32>,
}

/// llama.cpp's `quantize_row_q8_1` (its AVX2 form: `q = round_half_even(x · 127 / max|x|)`), for
/// `x` of whole blocks. Blocks are spread over candle's thread pool when there are many (a batch of
/// rows); on one core the rounding was a tenth of a batch's decoding time.
pub(crate) fn quantize_q8_1(x: &[f32]) -> Q8_1Rows {
    let blocks = x.len() / QK;
    let mut rows = Q8_1Rows {
        quants: vec![0; blocks * QK],
        d: vec![0.0; blocks],
        s: vec![0.0; blocks],
    };
    let (quants, d, s) = (
        crate::cpu_kernels::SharedOut(rows.quants.as_mut_ptr()),
        crate::cpu_kernels::SharedOut(rows.d.as_mut_ptr()),
        crate::cpu_kernels::SharedOut(rows.s.as_mut_ptr()),
    );
    let quantize = |range: std::ops::Range<usize>| {
        for b in range {
            // SAFETY: block b's 32 quants, scale and sum are written by this work item alone.
            let (out, d, s) = unsafe {
                (
                    std::slice::from_raw_parts_mut(quants.at(b * QK), QK),
                    &mut *d.at(b),
                    &mut *s.at(b),
                )
            };
            (*d, *s) = quantize_block(&x[b * QK..(b + 1) * QK], out);
        }
    };
    // A row or two (one stream) is quicker on this thread than waking the pool.
    const BLOCKS_WORTH_THE_POOL: usize = 64;
    if blocks < BLOCKS_WORTH_THE_POOL {
        quantize(0..blocks);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(blocks, quantize);
    }
    rows
}

/// One block's quants, and its f16-rounded scale and `d · Σq`.
fn quantize_block(block: &[f32], out: &mut [i8]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (and SSE4.1's rounding, which AVX2 implies).
        return unsafe { quantize_block_avx2(block, out) };
    }
    quantize_block_portable(block, out)
}

/// [`quantize_block_portable`] in AVX2's instructions, as llama.cpp's `quantize_row_q8_1` writes
/// it: the same maximum, the same `x · id` products rounded half to even by `vroundps`, the same
/// integer sum, so the same bits (a test compares the two on random blocks); the compiler left the
/// portable form's loop a value at a time, and it was a twelfth of a batch's decoding.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_block_avx2(block: &[f32], out: &mut [i8]) -> (f32, f32) {
    use std::arch::x86_64::*;
    debug_assert!(block.len() == QK && out.len() == QK);
    unsafe {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(block.as_ptr().add(8 * i)));
        let sign_bit = _mm256_set1_ps(-0.0);
        let abs = |x| _mm256_andnot_ps(sign_bit, x);
        let max4 = _mm256_max_ps(
            _mm256_max_ps(abs(v[0]), abs(v[1])),
            _mm256_max_ps(abs(v[2]), abs(v[3])),
        );
        let max2 = _mm_max_ps(_mm256_extractf128_ps(max4, 1), _mm256_castps256_ps128(max4));
        let max2 = _mm_max_ps(max2, _mm_movehl_ps(max2, max2));
        let max = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
        let d = max / 127.0;
        let id = _mm256_set1_ps(if max != 0.0 { 127.0 / max } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v[i], id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        // Σq: every |q| ≤ 127, so the i32 lanes cannot overflow and any order gives the same sum.
        let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let sum = _mm_add_epi32(
            _mm256_extracti128_si256(sum, 1),
            _mm256_castsi256_si128(sum),
        );
        let sum = _mm_hadd_epi32(sum, sum);
        let sum = _mm_cvtsi128_si32(_mm_hadd_epi32(sum, sum));
        // i32 → i16 → i8 (saturating, never reached), then undo the packs' lane interleave.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let ordered =
            _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, ordered);
        (
            half::f16::from_f32(d).to_f32(),
            half::f16::from_f32(d * sum as f32).to_f32(),
        )
    }
}

#[inline(always)]
fn quantize_block_portable(block: &[f32], out: &mut [i8]) -> (f32, f32) {
    let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = max / 127.0;
    let id = if max != 0.0 { 127.0 / max } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in out.iter_mut().zip(block) {
        let r = (v * id).round_ties_even() as i32;
        *q = r as i8;
        sum += r;
    }
    (
        half::f16::from_f32(d).to_f32(),
        half::f16::from_f32(d * sum as f32).to_f32(),
    )
}

/// True where this kernel runs: a Q4_1 weight whose rows are whole blocks, on an x86 CPU with
/// AVX2, FMA and F16C, unless `RTLAB_QMATMUL=candle` asks for candle's kernels.
pub(crate) fn applies(dtype: GgmlDType, k: usize) -> bool {
    dtype == GgmlDType::Q4_1 && k > 0 && k.is_multiple_of(QK) && runs_here()
}

/// True on a CPU this kernel runs on (and when not switched off): a GGUF loader keeps Q4_1
/// weights as they are then, and requantizes them to Q8_0 for candle's kernels otherwise.
pub(crate) fn runs_here() -> bool {
    let cpu = cpu();
    cpu.avx2_fma && cpu.f16c
}

/// Bytes of one block of one group: 16 f16 scales `d`, 16 f16 offsets `m`, then four 64-byte
/// chunks of nibbles. Chunk `j` holds, in column `c`'s 32-bit lane, that column's nibble bytes
/// `4j..4j + 4`: values `4j..4j + 4` in the low nibbles, `16 + 4j..16 + 4j + 4` in the high ones.
/// The same bytes as sixteen GGML blocks, in another order.
const GROUP_BLOCK_BYTES: usize = GROUP * BLOCK_BYTES;

/// A Q4_1 weight [n, k] repacked for the kernels: its columns in groups of [`GROUP`] (the last
/// padded with zero blocks), each group's blocks one after another, each block laid out as
/// [`GROUP_BLOCK_BYTES`] says. The same bytes as the file's (plus the padding), so the same memory;
/// [`PackedQ4_1::to_qtensor`] gives the GGML tensor back for what needs it (dequantizing for
/// QLoRA's products, candle's kernels).
pub(crate) struct PackedQ4_1 {
    bytes: Vec<u8>,
    n: usize,
    k: usize,
}

impl PackedQ4_1 {
    /// `q` repacked, or None where the kernel does not run it (another format, rows not whole
    /// blocks, a CPU without AVX2, FMA and F16C).
    pub(crate) fn pack(q: &QTensor) -> candle_core::Result<Option<PackedQ4_1>> {
        let (n, k) = q.shape().dims2()?;
        if !applies(q.dtype(), k) {
            return Ok(None);
        }
        let data = q.data()?;
        let kb = k / QK;
        if data.len() != n * kb * BLOCK_BYTES {
            candle_core::bail!("a Q4_1 tensor [{n}, {k}] of {} bytes", data.len());
        }
        let bytes = LAYOUT.pack(&data, n, kb);
        Ok(Some(PackedQ4_1 { bytes, n, k }))
    }

    /// [n, k].
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The packed bytes (where the weights' memory is: the huge pages' advice).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The weight in f32 [n, k], as candle dequantizes the file's blocks (`q · d + m`), read
    /// from the packed bytes without unpacking them first: QLoRA's products dequantize on every
    /// step.
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        let kb = self.k / QK;
        let mut out = vec![0f32; self.n * self.k];
        for (col, row) in out.chunks_exact_mut(self.k).enumerate() {
            let (g, c) = (col / GROUP, col % GROUP);
            for (b, values) in row.chunks_exact_mut(QK).enumerate() {
                let blk = &self.bytes[group_block(g, b, kb)..][..GROUP_BLOCK_BYTES];
                let d = half::f16::from_le_bytes([blk[2 * c], blk[2 * c + 1]]).to_f32();
                let m = half::f16::from_le_bytes([blk[32 + 2 * c], blk[33 + 2 * c]]).to_f32();
                for i in 0..QK / 2 {
                    let byte = blk[64 + 64 * (i / 4) + 4 * c + i % 4];
                    values[i] = ((byte & 0x0F) as f32) * d + m;
                    values[i + QK / 2] = ((byte >> 4) as f32) * d + m;
                }
            }
        }
        out
    }

    /// The GGML tensor these bytes were packed from, bit for bit.
    pub(crate) fn to_qtensor(&self) -> candle_core::Result<QTensor> {
        let data = LAYOUT.unpack(&self.bytes, self.n, self.k / QK);
        candle_core::quantized::ggml_file::qtensor_from_ggml(
            GgmlDType::Q4_1,
            &data,
            vec![self.n, self.k],
            &candle_core::Device::Cpu,
        )
    }
}

/// Where block `b` of group `g` starts in the packed bytes.
fn group_block(g: usize, b: usize, kb: usize) -> usize {
    (g * kb + b) * GROUP_BLOCK_BYTES
}

/// Where each of a GGML block's 20 bytes goes in its group's block, for the group's column `c`:
/// `d`, `m`, then the nibble bytes four at a time into the chunks' lanes; stored as they are.
const LAYOUT: GroupLayout = GroupLayout {
    block_bytes: BLOCK_BYTES,
    place: |c, i| match i {
        0 | 1 => 2 * c + i,
        2 | 3 => 32 + 2 * c + i - 2,
        _ => 64 + 64 * ((i - 4) / 4) + 4 * c + (i - 4) % 4,
    },
    stored: |_, byte| byte,
};

/// `x Wᵀ` [m, n] for a packed Q4_1 `weight` [n, k] and `x` [m, k] (row-major); None where `x` does
/// not fit it. `dots` picks the instructions (the same bits).
pub(crate) fn matmul_t(
    weight: &PackedQ4_1,
    x: &[f32],
    m: usize,
    dots: Dots,
) -> candle_core::Result<Option<Vec<f32>>> {
    Ok(matmul_t_shared(&[weight], x, m, dots)?.and_then(|mut ys| ys.pop()))
}

/// `x Wᵀ` for each of several packed Q4_1 weights [n_s, k] of the same `x` [m, k] (a layer's q, k
/// and v): `x` quantized once and every product's tiles in one wake of the pool; each result the
/// bits of [`matmul_t`] on its weight alone. None unless every weight's k is `x`'s.
pub(crate) fn matmul_t_shared(
    weights: &[&PackedQ4_1],
    x: &[f32],
    m: usize,
    dots: Dots,
) -> candle_core::Result<Option<Vec<Vec<f32>>>> {
    let Some(k) = weights.first().map(|w| w.k) else {
        return Ok(None);
    };
    if weights.iter().any(|w| w.k != k) || m == 0 || x.len() != m * k {
        return Ok(None);
    }
    let a = quantize_q8_1(x);
    let kb = k / QK;
    let columns: Vec<usize> = weights.iter().map(|w| w.n).collect();
    let wide = dots == Dots::Avx512Vnni && cpu().avx512_vnni;
    Ok(Some(crate::cpu_kernels::group_products(
        m,
        &columns,
        GROUP,
        |s, group, (row, rows), out| {
            let w = &weights[s].bytes[group_block(group, 0, kb)..][..kb * GROUP_BLOCK_BYTES];
            // SAFETY: `applies` held when the weight was packed (AVX2, FMA, F16C), `wide` checked
            // AVX-512 F, BW and VNNI; the group's kb blocks and the rows exist.
            unsafe { group_tile(wide, w, &a, kb, (row, rows), out) }
        },
    )))
}

/// Computes rows `row..row + rows` of one group's 16 columns into `out` (`rows × 16`, row-major).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C (and AVX-512 F, BW and VNNI when `wide`); `w` holds the
/// group's `kb` blocks and the rows exist in `a`.
unsafe fn group_tile(
    wide: bool,
    w: &[u8],
    a: &Q8_1Rows,
    kb: usize,
    (row, rows): (usize, usize),
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        crate::cpu_kernels::run_group_tiles!(
            wide,
            (row, rows),
            out,
            tile_wide,
            tile_256,
            (w, a, kb)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (wide, w, a, kb, row, rows, out);
        unreachable!("the Q4_1 kernel applies on x86_64 only")
    }
}

/// One group's 16 columns by `R` rows on AVX-512: per block, the nibbles unpacked into eight
/// registers once (the 64-byte chunks' low and high nibbles), then per row eight `vpdpbusd` of them
/// against the row's activations four at a time (broadcast), which leave in column `c`'s lane the
/// block's exact integer dot product; then `acc = fma(d_w · d_x, dot, acc)` and
/// `acc = fma(m_w, s_x, acc)`, lane by lane.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI and F16C; `w` holds `kb` group blocks, `a` the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
// Index loops over constant bounds: each `acc[r]` is its own register once unrolled.
#[allow(clippy::needless_range_loop)]
unsafe fn tile_wide<const R: usize>(
    w: &[u8],
    a: &Q8_1Rows,
    kb: usize,
    row: usize,
    _half: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    unsafe {
        let low_nibbles = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..kb {
            let blk = w.as_ptr().add(b * GROUP_BLOCK_BYTES);
            let w_d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
            let w_m = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(32) as *const __m256i));
            let mut low = [_mm512_setzero_si512(); 4];
            let mut high = [_mm512_setzero_si512(); 4];
            for j in 0..4 {
                let chunk = _mm512_loadu_si512(blk.add(64 + 64 * j) as *const _);
                low[j] = _mm512_and_si512(chunk, low_nibbles);
                high[j] = _mm512_and_si512(_mm512_srli_epi16(chunk, 4), low_nibbles);
            }
            for r in 0..R {
                let ai = (row + r) * kb + b;
                let q = a.quants.as_ptr().add(ai * QK) as *const i32;
                // Two chains of four, so one row's products do not wait on each other.
                let (mut first, mut second) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for j in 0..4 {
                    let lo = _mm512_set1_epi32(q.add(j).read_unaligned());
                    let hi = _mm512_set1_epi32(q.add(4 + j).read_unaligned());
                    first = _mm512_dpbusd_epi32(first, low[j], lo);
                    second = _mm512_dpbusd_epi32(second, high[j], hi);
                }
                let dot = _mm512_cvtepi32_ps(_mm512_add_epi32(first, second));
                let scale = _mm512_mul_ps(w_d, _mm512_set1_ps(*a.d.get_unchecked(ai)));
                acc[r] = _mm512_fmadd_ps(scale, dot, acc[r]);
                acc[r] = _mm512_fmadd_ps(w_m, _mm512_set1_ps(*a.s.get_unchecked(ai)), acc[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * GROUP), acc[r]);
        }
    }
}

/// [`tile_wide`]'s arithmetic on 256-bit registers, for half a group (8 columns): the nibbles times
/// the activations by `vpmaddubsw` (pairs into 16 bits: at most 2 · 15 · 127, and eight of them
/// summed at most 30,480, so never saturated), summed into 32 bits by `vpmaddwd`: the same exact
/// integer dot product, then the same two FMAs per lane, so the same bits.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` holds `kb` group blocks, `a` the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_256<const R: usize>(
    w: &[u8],
    a: &Q8_1Rows,
    kb: usize,
    row: usize,
    half: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    unsafe {
        let low_nibbles = _mm256_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let blk = w.as_ptr().add(b * GROUP_BLOCK_BYTES);
            let w_d = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * half) as *const __m128i));
            let w_m = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(32 + 16 * half) as *const __m128i));
            let mut low = [_mm256_setzero_si256(); 4];
            let mut high = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                let chunk = _mm256_loadu_si256(blk.add(64 + 64 * j + 32 * half) as *const __m256i);
                low[j] = _mm256_and_si256(chunk, low_nibbles);
                high[j] = _mm256_and_si256(_mm256_srli_epi16(chunk, 4), low_nibbles);
            }
            for r in 0..R {
                let ai = (row + r) * kb + b;
                let q = a.quants.as_ptr().add(ai * QK) as *const i32;
                let mut pairs = _mm256_setzero_si256();
                for j in 0..4 {
                    let lo = _mm256_set1_epi32(q.add(j).read_unaligned());
                    let hi = _mm256_set1_epi32(q.add(4 + j).read_unaligned());
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(low[j], lo));
                    pairs = _mm256_add_epi16(pairs, _mm256_maddubs_epi16(high[j], hi));
                }
                let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                let scale = _mm256_mul_ps(w_d, _mm256_set1_ps(*a.d.get_unchecked(ai)));
                acc[r] = _mm256_fmadd_ps(scale, dot, acc[r]);
                acc[r] = _mm256_fmadd_ps(w_m, _mm256_set1_ps(*a.s.get_unchecked(ai)), acc[r]);
            }
        }
        for r in 0..R {
            _mm256_storeu_ps(out.as_mut_ptr().add(r * GROUP + 8 * half), acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    /// The module's arithmetic written out one value at a time: per block the exact integer dot
    /// product of the 32 nibbles with the 32 activations, then `acc = fma(d_w · d_x, dot, acc)` and
    /// `acc = fma(m_w, s_x, acc)`; `w` is the file's GGML bytes.
    fn scalar_dot(w: &[u8], a: &Q8_1Rows, row: usize, kb: usize, col: usize) -> f32 {
        let mut acc = 0f32;
        for b in 0..kb {
            let blk = &w[(col * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
            let w_d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let w_m = half::f16::from_le_bytes([blk[2], blk[3]]).to_f32();
            let value = |i: usize| -> i32 {
                let byte = blk[4 + i % 16];
                (if i < 16 { byte & 0x0F } else { byte >> 4 }) as i32
            };
            let ai = row * kb + b;
            let aq = &a.quants[ai * QK..][..QK];
            let dot: i32 = (0..QK).map(|i| value(i) * aq[i] as i32).sum();
            acc = (w_d * a.d[ai]).mul_add(dot as f32, acc);
            acc = w_m.mul_add(a.s[ai], acc);
        }
        acc
    }

    fn random_q4_1(rng: &mut rand::rngs::StdRng, n: usize, k: usize) -> QTensor {
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()
    }

    #[test]
    fn the_q4_1_kernel_computes_its_arithmetic_to_the_bit_with_every_instruction_set() {
        if !runs_here() {
            panic!("this test needs an x86 CPU with AVX2, FMA and F16C (the kernel's only target)");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // SmolLM2's inner dimensions (576 and 1536), a small one, and column counts that end a
        // group (16 columns) and a work item (32) at every kind of place.
        for (n, k) in [(72, 576), (7, 64), (16, 64), (5, 1536), (33, 96)] {
            let q = random_q4_1(&mut rng, n, k);
            let bytes = q.data().unwrap().to_vec();
            let packed = PackedQ4_1::pack(&q).unwrap().expect("the kernel runs here");
            // Row counts that leave every remainder of both tiles (eight rows, four rows).
            for m in [1, 2, 3, 4, 5, 8, 9, 10, 11, 17, 20, 23] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
                let a = quantize_q8_1(&x);
                let expected: Vec<u32> = (0..m)
                    .flat_map(|r| (0..n).map(move |c| (r, c)))
                    .map(|(r, c)| scalar_dot(&bytes, &a, r, k / QK, c).to_bits())
                    .collect();
                for dots in Dots::on_this_cpu() {
                    let ours = matmul_t(&packed, &x, m, dots)
                        .unwrap()
                        .expect("the kernel runs here");
                    let ours: Vec<u32> = ours.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(ours, expected, "({m}, {k}, {n}), {dots:?}");
                }
            }
        }
    }

    #[test]
    fn packing_keeps_every_byte_of_the_files_blocks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for (n, k) in [(16, 32), (37, 96), (1, 64)] {
            let q = random_q4_1(&mut rng, n, k);
            let packed = PackedQ4_1::pack(&q).unwrap().expect("the kernel runs here");
            assert_eq!(packed.dims(), (n, k));
            assert_eq!(
                packed.bytes().len(),
                n.div_ceil(GROUP) * k / QK * GROUP_BLOCK_BYTES
            );
            let back = packed.to_qtensor().unwrap();
            assert_eq!(back.dtype(), GgmlDType::Q4_1);
            assert_eq!(back.shape().dims2().unwrap(), (n, k));
            assert_eq!(back.data().unwrap(), q.data().unwrap(), "({n}, {k})");
            // Dequantized from the packed bytes: candle's values of the file's blocks, to the bit.
            let theirs: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&packed.dequantize()), bits(&theirs), "({n}, {k})");
        }
        // Another format, or rows that are not whole blocks, stay as they are.
        let q8 = QTensor::quantize(
            &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::Q8_0,
        )
        .unwrap();
        assert!(PackedQ4_1::pack(&q8).unwrap().is_none());
    }

    #[test]
    fn weights_sharing_an_input_get_the_bits_each_gets_alone() {
        if !runs_here() {
            panic!("this test needs an x86 CPU with AVX2, FMA and F16C (the kernel's only target)");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let k = 96;
        // A layer's q, k and v in miniature: column counts that end mid-task (a work item owns 32
        // columns) and mid-group, so a task that straddled two weights would show.
        let weights: Vec<PackedQ4_1> = [70, 33, 5]
            .iter()
            .map(|&n| {
                PackedQ4_1::pack(&random_q4_1(&mut rng, n, k))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let shared: Vec<&PackedQ4_1> = weights.iter().collect();
        for m in [1, 2, 7, 20] {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            for dots in Dots::on_this_cpu() {
                let together = matmul_t_shared(&shared, &x, m, dots)
                    .unwrap()
                    .expect("the kernel runs here");
                assert_eq!(together.len(), weights.len());
                for (s, (w, y)) in weights.iter().zip(&together).enumerate() {
                    let alone = matmul_t(w, &x, m, dots)
                        .unwrap()
                        .expect("the kernel runs here");
                    let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(y), bits(&alone), "weight {s}, {m} rows, {dots:?}");
                }
            }
        }
        // Weights of different inner dimensions cannot share an input: the caller multiplies alone.
        let other = PackedQ4_1::pack(&random_q4_1(&mut rng, 8, 64))
            .unwrap()
            .unwrap();
        let x = vec![0.5f32; k];
        assert!(matmul_t_shared(&[&weights[0], &other], &x, 1, Dots::best())
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_q4_1_product_is_the_dequantized_product_up_to_the_activations_rounding() {
        if !runs_here() {
            panic!("this test needs an x86 CPU with AVX2, FMA and F16C (the kernel's only target)");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let (n, k, m) = (40, 576, 3);
        let q = random_q4_1(&mut rng, n, k);
        let dense: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let packed = PackedQ4_1::pack(&q).unwrap().unwrap();
        let ours = matmul_t(&packed, &x, m, Dots::best()).unwrap().unwrap();
        for r in 0..m {
            for c in 0..n {
                let exact: f64 = (0..k)
                    .map(|i| dense[c * k + i] as f64 * x[r * k + i] as f64)
                    .sum();
                // The activations' 8-bit rounding: half a step of max|x|/127 per value, over 576
                // values of weights below 1, is at most 576 · 0.5 · (1/127) ≈ 2.3; in practice the
                // errors cancel to a few hundredths.
                let err = (ours[r * n + c] as f64 - exact).abs();
                assert!(err < 0.1, "({r}, {c}): {} vs {exact}", ours[r * n + c]);
            }
        }
    }

    #[test]
    fn the_avx2_rounding_gives_the_portable_forms_bits() {
        if !is_x86_feature_detected!("avx2") {
            panic!("this test needs an x86 CPU with AVX2 (the kernel's only target)");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        for case in 0..2000 {
            let scale = [1e-6f32, 0.5, 3.0, 1e4][case % 4];
            let mut block: Vec<f32> = (0..QK).map(|_| rng.random_range(-scale..scale)).collect();
            // Halves that round to even, an all-zero block, a negative maximum.
            match case % 5 {
                0 => block.iter_mut().for_each(|v| *v = 0.0),
                1 => block[3] = -2.0 * scale,
                2 => (0..QK).for_each(|i| block[i] = (i as f32 - 15.5) * 127.0 / 31.0),
                _ => {}
            }
            let (mut fast, mut plain) = ([0i8; QK], [0i8; QK]);
            // SAFETY: checked above.
            let ours = unsafe { quantize_block_avx2(&block, &mut fast) };
            let theirs = quantize_block_portable(&block, &mut plain);
            assert_eq!(fast, plain, "case {case}");
            assert_eq!(
                (ours.0.to_bits(), ours.1.to_bits()),
                (theirs.0.to_bits(), theirs.1.to_bits()),
                "case {case}"
            );
        }
    }

    #[test]
    fn activations_quantize_as_llama_cpps_quantize_row_q8_1() {
        // One block with max |x| = 127, so d = 1 and x · 127 / 127 = x: halves round to even
        // (0.5 → 0, 1.5 → 2, 2.5 → 2, -0.5 → 0), and s = d · Σq = -123.
        let mut x = vec![0f32; 32];
        x[..5].copy_from_slice(&[0.5, 1.5, 2.5, -127.0, -0.5]);
        let a = quantize_q8_1(&x);
        assert_eq!(&a.quants[..5], &[0, 2, 2, -127, 0]);
        assert_eq!((a.d[0], a.s[0]), (1.0, -123.0));
    }
}
