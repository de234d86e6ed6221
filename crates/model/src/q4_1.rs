//! Decoding's Q4_1 matrix product on x86: the GGUF's 4-bit weights as the file holds them, against
//! activations quantized as llama.cpp quantizes them (Q8_1), in llama.cpp's arithmetic.
//!
//! candle's Q4_1 dot product is scalar, so rtlab used to requantize Q4_1 weights to Q8_0 at load:
//! 1.7× the bytes, and a second rounding of every weight. Decoding one stream reads every weight
//! once per token and waits on memory (a profile puts the stalls on the weight loads), so the bytes
//! are the time. This kernel reads the file's 20-byte blocks (an f16 scale `d`, an f16 offset `m`,
//! 32 four-bit values) directly.
//!
//! The arithmetic is llama.cpp's `ggml_vec_dot_q4_1_q8_1` (its AVX2 form): each activation block
//! of 32 is quantized to i8 with an f16 scale `d` and an f16 `s = d · Σq` (`quantize_row_q8_1`);
//! per block, the integer dot product of the nibbles with the i8 values, in eight lanes of four
//! products, is scaled by `d_w · d_x` and added into eight f32 lanes, and `m_w · s_x` into a
//! scalar; the result is the lanes' sum plus the scalar. So rtlab decodes a Q4_1 file as the
//! runtime it is deployed on does (a test measures how close the logits are).
//!
//! Every (row, column) is computed the same way whatever the tile around it, so n samples decoded
//! as a batch get the bits each gets alone. A scalar form of the same arithmetic (the tests') gives
//! the same bits as the vector kernels, with AVX2's instructions and with AVX-VNNI's.

use crate::q8::{cpu, tiled_products, Dots};
use candle_core::quantized::{GgmlDType, QTensor};

/// Values per block.
const QK: usize = 32;
/// Bytes per Q4_1 block: f16 `d`, f16 `m`, then 16 bytes of nibbles (value `i` in the low nibble of
/// byte `i`, value `i + 16` in its high nibble), candle's `#[repr(C)] BlockQ4_1` and GGML's layout.
const BLOCK_BYTES: usize = 20;

/// Rows of activations quantized per block of 32 as llama.cpp's `quantize_row_q8_1` does.
pub(crate) struct Q8_1Rows {
    quants: Vec<i8>,
    /// Per block: the scale, `max |x| / 127`, rounded to f16 (GGML stores it so).
    d: Vec<f32>,
    /// Per block: `d · Σq` with the unrounded `d`, rounded to f16.
    s: Vec<f32>,
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
        crate::q8::SharedOut(rows.quants.as_mut_ptr()),
        crate::q8::SharedOut(rows.d.as_mut_ptr()),
        crate::q8::SharedOut(rows.s.as_mut_ptr()),
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

/// `x Wᵀ` [m, n] for Q4_1 `weight` [n, k] and `x` [m, k] (row-major); None where [`applies`] does not.
/// Several rows on a CPU with AVX-512 VNNI take [`pairs::products`]; `dots` picks the instructions.
pub(crate) fn matmul_t(
    weight: &QTensor,
    x: &[f32],
    m: usize,
    dots: Dots,
) -> candle_core::Result<Option<Vec<f32>>> {
    Ok(matmul_t_shared(&[weight], x, m, dots)?.and_then(|mut ys| ys.pop()))
}

/// `x Wᵀ` for each of several Q4_1 weights [n_s, k] of the same `x` [m, k] (a layer's q, k and v):
/// `x` quantized once and every product's tiles in one wake of the pool; each result the bits of
/// [`matmul_t`] on its weight alone. None unless [`applies`] holds for every weight.
pub(crate) fn matmul_t_shared(
    weights: &[&QTensor],
    x: &[f32],
    m: usize,
    dots: Dots,
) -> candle_core::Result<Option<Vec<Vec<f32>>>> {
    let mut columns = Vec::with_capacity(weights.len());
    let mut k = None;
    for weight in weights {
        let (n, kw) = weight.shape().dims2()?;
        if !applies(weight.dtype(), kw) || k.is_some_and(|k| k != kw) {
            return Ok(None);
        }
        columns.push(n);
        k = Some(kw);
    }
    let Some(k) = k else { return Ok(None) };
    if m == 0 || x.len() != m * k {
        return Ok(None);
    }
    let data = weights
        .iter()
        .map(|w| w.data())
        .collect::<candle_core::Result<Vec<_>>>()?;
    let w: Vec<&[u8]> = data.iter().map(|d| -> &[u8] { d }).collect();
    let a = quantize_q8_1(x);
    let kb = k / QK;
    #[cfg(target_arch = "x86_64")]
    if dots == Dots::Avx512Vnni && m > 1 && cpu().avx512_vnni {
        // SAFETY: the CPU has AVX-512 F and VNNI (and `applies` checked AVX2, FMA and F16C).
        return Ok(Some(unsafe { pairs::products(&w, &a, (m, kb), &columns) }));
    }
    let vnni = dots.vnni256();
    Ok(Some(tiled_products(m, &columns, |s, cols, rows, put| {
        // SAFETY: `applies` checked AVX2, FMA and F16C (and `vnni` AVX-VNNI); the tile's columns
        // and rows exist in weight s, kb blocks each.
        unsafe { block(vnni, w[s], &a, kb, cols, rows, put) }
    })))
}

/// Dot products of `C` weight columns from `col` with `R` activation rows from `row`:
/// `[column][row]`, llama.cpp's arithmetic (see the module's doc).
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and what `D` uses; the columns and rows must exist.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
// Index loops over constant bounds: each `acc[c][r]` is its own register once unrolled.
#[allow(clippy::needless_range_loop)]
unsafe fn tile<D: crate::q8::LaneDot, const C: usize, const R: usize>(
    w: &[u8],
    a: &Q8_1Rows,
    kb: usize,
    col: usize,
    row: usize,
) -> [[f32; R]; C] {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); R]; C];
        let mut offsets = [[0f32; R]; C];
        let low_nibbles = _mm256_set1_epi8(0x0F);
        for b in 0..kb {
            let mut aq = [_mm256_setzero_si256(); R];
            let (mut a_d, mut a_s) = ([0f32; R], [0f32; R]);
            for r in 0..R {
                let ai = (row + r) * kb + b;
                aq[r] = _mm256_loadu_si256(a.quants.as_ptr().add(ai * QK) as *const __m256i);
                a_d[r] = *a.d.get_unchecked(ai);
                a_s[r] = *a.s.get_unchecked(ai);
            }
            for c in 0..C {
                let block = (col + c) * kb + b;
                if row == 0 {
                    crate::q8::prefetch_ahead(
                        w,
                        block + C * kb * crate::q8::TILES_AHEAD,
                        BLOCK_BYTES,
                    );
                }
                let blk = w.as_ptr().add(block * BLOCK_BYTES);
                // d and m, two f16s, converted together.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
                let w_d = _mm_cvtss_f32(dm);
                let w_m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                // llama.cpp's `bytes_from_nibbles_32`: low nibbles are values 0..16, high 16..32.
                let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
                let wq = _mm256_and_si256(
                    _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
                    low_nibbles,
                );
                for r in 0..R {
                    let q = _mm256_cvtepi32_ps(D::lanes(wq, aq[r]));
                    let d = _mm256_set1_ps(w_d * a_d[r]);
                    acc[c][r] = _mm256_fmadd_ps(d, q, acc[c][r]);
                    offsets[c][r] += w_m * a_s[r];
                }
            }
        }
        let mut out = [[0f32; R]; C];
        for c in 0..C {
            for r in 0..R {
                out[c][r] = crate::q8::hsum(acc[c][r]) + offsets[c][r];
            }
        }
        out
    }
}

/// [`tile`] compiled for AVX2, FMA and F16C.
///
/// # Safety
/// As [`tile`], on a CPU with AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const C: usize, const R: usize>(
    w: &[u8],
    a: &Q8_1Rows,
    kb: usize,
    col: usize,
    row: usize,
) -> [[f32; R]; C] {
    unsafe { tile::<crate::q8::Avx2Dot, C, R>(w, a, kb, col, row) }
}

/// [`tile`] compiled for AVX2, FMA, F16C and AVX-VNNI.
///
/// # Safety
/// As [`tile`], on a CPU with AVX2, FMA, F16C and AVX-VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn tile_vnni<const C: usize, const R: usize>(
    w: &[u8],
    a: &Q8_1Rows,
    kb: usize,
    col: usize,
    row: usize,
) -> [[f32; R]; C] {
    unsafe { tile::<crate::q8::VnniDot, C, R>(w, a, kb, col, row) }
}

/// Computes the `columns × rows` block at (`col`, `row`) with the tile of that size and hands each
/// value to `put(column, row, value)`: 1 to 4 columns of one row, or 1 or 2 columns of 1 to 4 rows.
///
/// # Safety
/// As [`tile`]; `vnni` only on a CPU with AVX-VNNI.
#[cfg(target_arch = "x86_64")]
unsafe fn block(
    vnni: bool,
    w: &[u8],
    a: &Q8_1Rows,
    kb: usize,
    (col, columns): (usize, usize),
    (row, rows): (usize, usize),
    put: &mut dyn FnMut(usize, usize, f32),
) {
    crate::q8::run_tile!(columns, rows, vnni, (w, a, kb, col, row), put)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block(
    _: bool,
    _: &[u8],
    _: &Q8_1Rows,
    _: usize,
    _: (usize, usize),
    _: (usize, usize),
    _: &mut dyn FnMut(usize, usize, f32),
) {
    unreachable!("the Q4_1 kernel applies on x86_64 only")
}

/// The product of several activation rows on AVX-512: two rows share each 512-bit register (the
/// low half row `2p`, the high half row `2p + 1`), so one `vpdpbusd`, one conversion, one scale and
/// one FMA do what the 256-bit kernel does with two of each. Every lane still computes llama.cpp's
/// arithmetic for its own (row, column), in the same order, so the bits are the 256-bit kernel's
/// and a batch's rows are what each row gets alone. The offsets (`m_w · s_x`) of sixteen rows are
/// summed in one register, lane by lane as the scalar sum runs (a multiply, then an add).
///
/// A tile is up to two columns by five pairs of rows ([`crate::q8::pair_products`]): ten
/// accumulators, with the weights' blocks unpacked once per tile and reused by every pair.
#[cfg(target_arch = "x86_64")]
mod pairs {
    use super::{Q8_1Rows, BLOCK_BYTES, QK};
    use crate::q8::{pair_block, pair_sums};
    use std::arch::x86_64::*;

    /// Rows whose offsets one register holds.
    const LANES: usize = 16;

    /// The activations laid out for the tile: per pair and block, 64 quants (both rows) and 16
    /// scales (eight of each row's); per block, every row's `s` (padded so a tile's 16 always load).
    struct PairRows {
        quants: Vec<i8>,
        scales: Vec<f32>,
        sums: Vec<f32>,
        /// Rows per block in `sums`: m rounded up, plus a register's worth.
        stride: usize,
    }

    fn pair_rows(a: &Q8_1Rows, m: usize, kb: usize) -> PairRows {
        let pairs = m.div_ceil(2);
        let stride = pairs * 2 + LANES;
        let mut rows = PairRows {
            quants: vec![0; pairs * kb * 2 * QK],
            scales: vec![0.0; pairs * kb * LANES],
            sums: vec![0.0; kb * stride],
            stride,
        };
        for r in 0..m {
            let (p, half) = (r / 2, r % 2);
            for b in 0..kb {
                let from = r * kb + b;
                let at = (p * kb + b) * 2 * QK + half * QK;
                rows.quants[at..at + QK].copy_from_slice(&a.quants[from * QK..][..QK]);
                let at = (p * kb + b) * LANES + half * 8;
                rows.scales[at..at + 8].fill(a.d[from]);
                rows.sums[b * stride + r] = a.s[from];
            }
        }
        rows
    }

    /// `x Wᵀ` [m, n_s] for each weight `w[s]` of `columns[s]` columns, from the quantized
    /// activations, the products' tiles in one wake of the pool.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and VNNI, AVX2, FMA and F16C; `w[s]` holds `columns[s]` columns
    /// of kb blocks.
    pub(super) unsafe fn products(
        w: &[&[u8]],
        a: &Q8_1Rows,
        (m, kb): (usize, usize),
        columns: &[usize],
    ) -> Vec<Vec<f32>> {
        let rows = pair_rows(a, m, kb);
        crate::q8::pair_products(m, columns, |s, columns, pairs, col, pair, put| {
            // SAFETY: as this function's; the tile's columns and pairs exist in weight s.
            unsafe { crate::q8::run_pair_tile!(columns, pairs, (w[s], &rows, kb, col, pair, put)) }
        })
    }

    /// `C` columns from `col` by `P` pairs of rows from `pair`, each value handed to
    /// `put(column, row within the tile, value)`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and VNNI, AVX2, FMA and F16C; the columns and pairs must exist.
    #[target_feature(enable = "avx512f,avx512vnni,avx2,fma,f16c")]
    // Index loops over constant bounds: each `acc[c][p]` is its own register once unrolled.
    #[allow(clippy::needless_range_loop)]
    unsafe fn tile<const C: usize, const P: usize>(
        w: &[u8],
        a: &PairRows,
        kb: usize,
        col: usize,
        pair: usize,
        put: &mut dyn FnMut(usize, usize, f32),
    ) {
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); P]; C];
            let mut offsets = [_mm512_setzero_ps(); C];
            let low_nibbles = _mm256_set1_epi8(0x0F);
            for b in 0..kb {
                let mut wq = [_mm512_setzero_si512(); C];
                let mut w_d = [_mm512_setzero_ps(); C];
                let sums = _mm512_loadu_ps(a.sums.as_ptr().add(b * a.stride + pair * 2));
                for c in 0..C {
                    let block = (col + c) * kb + b;
                    if pair == 0 {
                        crate::q8::prefetch_ahead(
                            w,
                            block + C * kb * crate::q8::TILES_AHEAD,
                            BLOCK_BYTES,
                        );
                    }
                    let blk = w.as_ptr().add(block * BLOCK_BYTES);
                    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
                    w_d[c] = _mm512_set1_ps(_mm_cvtss_f32(dm));
                    let w_m = _mm512_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dm)));
                    let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
                    let nibbles = _mm256_and_si256(
                        _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed),
                        low_nibbles,
                    );
                    wq[c] = _mm512_broadcast_i64x4(nibbles);
                    // The scalar kernel's `offsets += w_m * s_x`: a rounded product, then the add.
                    offsets[c] = _mm512_add_ps(offsets[c], _mm512_mul_ps(w_m, sums));
                }
                for p in 0..P {
                    let at = (pair + p) * kb + b;
                    let aq = _mm512_loadu_si512(a.quants.as_ptr().add(at * 2 * QK) as *const _);
                    let a_d = _mm512_loadu_ps(a.scales.as_ptr().add(at * LANES));
                    for c in 0..C {
                        acc[c][p] = pair_block(acc[c][p], wq[c], aq, w_d[c], a_d);
                    }
                }
            }
            for c in 0..C {
                let mut offset = [0f32; LANES];
                _mm512_storeu_ps(offset.as_mut_ptr(), offsets[c]);
                for p in 0..P {
                    let (low, high) = pair_sums(acc[c][p]);
                    put(c, 2 * p, low + offset[2 * p]);
                    put(c, 2 * p + 1, high + offset[2 * p + 1]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    /// The module's arithmetic written out one value at a time: eight lanes of four products per
    /// block, each lane's `fma(d_w · d_x, lane, acc)`, the offsets' running sum, then candle's and
    /// llama.cpp's horizontal sum (halves, pairs, the last two).
    fn scalar_dot(w: &[u8], a: &Q8_1Rows, row: usize, kb: usize, col: usize) -> f32 {
        let mut acc = [0f32; 8];
        let mut offsets = 0f32;
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
            for (lane, slot) in acc.iter_mut().enumerate() {
                let dot: i32 = (0..4)
                    .map(|t| value(4 * lane + t) * aq[4 * lane + t] as i32)
                    .sum();
                *slot = (w_d * a.d[ai]).mul_add(dot as f32, *slot);
            }
            offsets += w_m * a.s[ai];
        }
        let quarter = [
            acc[0] + acc[4],
            acc[1] + acc[5],
            acc[2] + acc[6],
            acc[3] + acc[7],
        ];
        let pair = [quarter[0] + quarter[2], quarter[1] + quarter[3]];
        (pair[0] + pair[1]) + offsets
    }

    #[test]
    fn the_q4_1_kernel_computes_llama_cpps_arithmetic_to_the_bit() {
        if !runs_here() {
            panic!("this test needs an x86 CPU with AVX2, FMA and F16C (the kernel's only target)");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // SmolLM2's inner dimensions (576 and 1536), a small one, and column counts that leave
        // every remainder of the one-row tile (four columns) and the several-row tile (two).
        for (n, k) in [(72, 576), (7, 64), (6, 64), (5, 1536), (33, 96)] {
            let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
            let bytes = q.data().unwrap().to_vec();
            // Row counts that leave every remainder of the AVX-512 tile (five pairs of rows) too.
            for m in [1, 2, 3, 4, 5, 9, 10, 11, 20, 23] {
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
                let a = quantize_q8_1(&x);
                let expected: Vec<u32> = (0..m)
                    .flat_map(|r| (0..n).map(move |c| (r, c)))
                    .map(|(r, c)| scalar_dot(&bytes, &a, r, k / QK, c).to_bits())
                    .collect();
                for dots in Dots::on_this_cpu() {
                    let ours = matmul_t(&q, &x, m, dots)
                        .unwrap()
                        .expect("the kernel runs here");
                    let ours: Vec<u32> = ours.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(ours, expected, "({m}, {k}, {n}), {dots:?}");
                }
            }
        }
    }

    #[test]
    fn weights_sharing_an_input_get_the_bits_each_gets_alone() {
        if !runs_here() {
            panic!("this test needs an x86 CPU with AVX2, FMA and F16C (the kernel's only target)");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let k = 96;
        // A layer's q, k and v in miniature: column counts that end mid-task (a work item owns 32
        // columns) and mid-tile, so a task that straddled two weights would show.
        let weights: Vec<QTensor> = [70, 33, 5]
            .iter()
            .map(|&n| {
                let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
                QTensor::quantize(&w, GgmlDType::Q4_1).unwrap()
            })
            .collect();
        let shared: Vec<&QTensor> = weights.iter().collect();
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
        let other = QTensor::quantize(
            &Tensor::zeros((8, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::Q4_1,
        )
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
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let q = QTensor::quantize(
            &Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap(),
            GgmlDType::Q4_1,
        )
        .unwrap();
        let dense: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let ours = matmul_t(&q, &x, m, Dots::best()).unwrap().unwrap();
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
