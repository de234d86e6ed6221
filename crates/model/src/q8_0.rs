//! Decoding's Q8_0 matrix product on x86, the Q4_1 kernel's way (`q4_1.rs`): the weights repacked
//! at load in groups of 16 columns, each block's 32 products summed exactly in integers in a
//! column's 32-bit lane and scaled once, `acc = fma(d_w · d_x, dot, acc)`. SmolLM2's output head is
//! Q8_0 (49,152 columns): a tenth of a batch's decoding before this layout.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed ones, and Q8_0's weights are signed: the packed
//! bytes are the weights plus 128 (their sign bit flipped), so the instruction's sum is
//! `Σ (w + 128) a = Σ w a + 128 Σ a`, and the block's `128 Σ a` (one integer per activation block)
//! is subtracted. AVX2's `vpmaddubsw` would saturate on `w + 128`, so its form flips the sign bit
//! back and multiplies `|w|` by `a` with `w`'s sign (`vpsignb`), as candle's kernels do. Both are the
//! exact integer dot product, so both give the same bits (a test, with a scalar form).
//!
//! The activations are quantized as for Q4_1 (llama.cpp's `quantize_row_q8_1`: the same 8-bit values
//! and scale as its Q8_0 rounding up to the last bit of `1/d`).

use crate::cpu_kernels::{cpu, Dots, GroupLayout, GROUP};
use crate::q4_1::{quantize_q8_1, Q8_1Rows};
use candle_core::quantized::{GgmlDType, QTensor};

/// Values per block.
const QK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale, then 32 i8 quants (candle's `#[repr(C)] BlockQ8_0`).
const BLOCK_BYTES: usize = 34;
/// Bytes of one block of one group: 16 f16 scales, then eight 64-byte chunks; chunk `j` holds, in
/// column `c`'s lane, that column's quants `4j..4j + 4`, each plus 128.
const GROUP_BLOCK_BYTES: usize = GROUP * BLOCK_BYTES;

/// A Q8_0 weight [n, k] repacked for the kernels (the last group padded with zero blocks); the
/// file's bytes, reordered and with the quants' sign bits flipped, so the same memory.
pub(crate) struct PackedQ8_0 {
    bytes: Vec<u8>,
    n: usize,
    k: usize,
}

/// True where the kernels run: a Q8_0 weight whose rows are whole blocks, on an x86 CPU with AVX2,
/// FMA and F16C, unless `RTLAB_QMATMUL=candle` asks for candle's kernels.
fn applies(dtype: GgmlDType, k: usize) -> bool {
    let cpu = cpu();
    dtype == GgmlDType::Q8_0 && k > 0 && k.is_multiple_of(QK) && cpu.avx2_fma && cpu.f16c
}

impl PackedQ8_0 {
    /// `q` repacked, or None where the kernels do not take it.
    pub(crate) fn pack(q: &QTensor) -> candle_core::Result<Option<PackedQ8_0>> {
        let (n, k) = q.shape().dims2()?;
        if !applies(q.dtype(), k) {
            return Ok(None);
        }
        let data = q.data()?;
        let kb = k / QK;
        if data.len() != n * kb * BLOCK_BYTES {
            candle_core::bail!("a Q8_0 tensor [{n}, {k}] of {} bytes", data.len());
        }
        let bytes = LAYOUT.pack(&data, n, kb);
        Ok(Some(PackedQ8_0 { bytes, n, k }))
    }

    /// [n, k].
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The packed bytes (where the weights' memory is: the huge pages' advice).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The weight in f32 [n, k], as candle dequantizes the file's blocks (`q · d`), read from the
    /// packed bytes (QLoRA's products dequantize on every step).
    pub(crate) fn dequantize(&self) -> Vec<f32> {
        let kb = self.k / QK;
        let mut out = vec![0f32; self.n * self.k];
        for (col, row) in out.chunks_exact_mut(self.k).enumerate() {
            let (g, c) = (col / GROUP, col % GROUP);
            for (b, values) in row.chunks_exact_mut(QK).enumerate() {
                let blk = &self.bytes[(g * kb + b) * GROUP_BLOCK_BYTES..][..GROUP_BLOCK_BYTES];
                let d = half::f16::from_le_bytes([blk[2 * c], blk[2 * c + 1]]).to_f32();
                for (i, v) in values.iter_mut().enumerate() {
                    let q = (blk[2 * GROUP + 64 * (i / 4) + 4 * c + i % 4] ^ 0x80) as i8;
                    *v = q as f32 * d;
                }
            }
        }
        out
    }

    /// The GGML tensor these bytes were packed from, bit for bit.
    pub(crate) fn to_qtensor(&self) -> candle_core::Result<QTensor> {
        let data = LAYOUT.unpack(&self.bytes, self.n, self.k / QK);
        candle_core::quantized::ggml_file::qtensor_from_ggml(
            GgmlDType::Q8_0,
            &data,
            vec![self.n, self.k],
            &candle_core::Device::Cpu,
        )
    }
}

/// Where each of a GGML Q8_0 block's 34 bytes goes in its group's block: the scale at `2c`, the
/// quants four at a time into the chunks' lanes, each plus 128 (its sign bit flipped).
const LAYOUT: GroupLayout = GroupLayout {
    block_bytes: BLOCK_BYTES,
    place: |c, i| match i {
        0 | 1 => 2 * c + i,
        _ => 2 * GROUP + 64 * ((i - 2) / 4) + 4 * c + (i - 2) % 4,
    },
    stored: |i, byte| if i < 2 { byte } else { byte ^ 0x80 },
};

/// `x Wᵀ` [m, n] for a packed Q8_0 `weight` [n, k] and `x` [m, k]; None where `x` does not fit it.
/// `dots` picks the instructions (the same bits).
pub(crate) fn matmul_t(
    weight: &PackedQ8_0,
    x: &[f32],
    m: usize,
    dots: Dots,
) -> candle_core::Result<Option<Vec<f32>>> {
    let k = weight.k;
    if m == 0 || x.len() != m * k {
        return Ok(None);
    }
    let a = quantize_q8_1(x);
    let kb = k / QK;
    // Per activation block, 128 Σa: what the biased weights add to each block's dot product.
    let bias: Vec<i32> = a
        .quants
        .chunks_exact(QK)
        .map(|q| 128 * q.iter().map(|&v| v as i32).sum::<i32>())
        .collect();
    let wide = dots == Dots::Avx512Vnni && cpu().avx512_vnni;
    let mut results =
        crate::cpu_kernels::group_products(m, &[weight.n], GROUP, |_, group, rows, out| {
            let w = &weight.bytes[group * kb * GROUP_BLOCK_BYTES..][..kb * GROUP_BLOCK_BYTES];
            // SAFETY: the weight was packed where AVX2, FMA and F16C exist; `wide` checked AVX-512 F,
            // BW and VNNI; the group's kb blocks and the rows exist.
            unsafe { group_tile(wide, w, (&a, &bias), kb, rows, out) }
        });
    Ok(results.pop())
}

/// Computes rows `row..row + rows` of one group's 16 columns into `out` (`rows × 16`, row-major).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C (and AVX-512 F, BW and VNNI when `wide`); `w` holds the
/// group's `kb` blocks and the rows exist in `a`.
unsafe fn group_tile(
    wide: bool,
    w: &[u8],
    a: (&Q8_1Rows, &[i32]),
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
        unreachable!("the Q8_0 kernel applies on x86_64 only")
    }
}

/// One group's 16 columns by `R` rows on AVX-512: per block, per row, eight `vpdpbusd` of the
/// biased weights' chunks against the row's activations four at a time (broadcast), less the
/// block's `128 Σa`, then `acc = fma(d_w · d_x, dot, acc)`.
///
/// # Safety
/// The CPU must have AVX-512 F, BW and VNNI and F16C; `w` holds `kb` group blocks, `a` the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_wide<const R: usize>(
    w: &[u8],
    (a, bias): (&Q8_1Rows, &[i32]),
    kb: usize,
    row: usize,
    _half: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    unsafe {
        let mut acc = [_mm512_setzero_ps(); R];
        for b in 0..kb {
            let blk = w.as_ptr().add(b * GROUP_BLOCK_BYTES);
            let w_d = _mm512_cvtph_ps(_mm256_loadu_si256(blk as *const __m256i));
            let mut chunks = [_mm512_setzero_si512(); 8];
            for j in 0..8 {
                chunks[j] = _mm512_loadu_si512(blk.add(2 * GROUP + 64 * j) as *const _);
            }
            for r in 0..R {
                let ai = (row + r) * kb + b;
                let q = a.quants.as_ptr().add(ai * QK) as *const i32;
                let (mut first, mut second) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for j in 0..4 {
                    let lo = _mm512_set1_epi32(q.add(j).read_unaligned());
                    let hi = _mm512_set1_epi32(q.add(4 + j).read_unaligned());
                    first = _mm512_dpbusd_epi32(first, chunks[j], lo);
                    second = _mm512_dpbusd_epi32(second, chunks[4 + j], hi);
                }
                let biased = _mm512_add_epi32(first, second);
                let dot = _mm512_sub_epi32(biased, _mm512_set1_epi32(*bias.get_unchecked(ai)));
                let scale = _mm512_mul_ps(w_d, _mm512_set1_ps(*a.d.get_unchecked(ai)));
                acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[r]);
            }
        }
        for r in 0..R {
            _mm512_storeu_ps(out.as_mut_ptr().add(r * GROUP), acc[r]);
        }
    }
}

/// [`tile_wide`]'s arithmetic on 256-bit registers for half a group: `|w|` times `a` with `w`'s
/// sign (`vpmaddubsw`: at most 2 · 128 · 127 per pair, never saturated), into 32 bits by
/// `vpmaddwd`, summed over the block: the same exact dot product, the same FMA.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` holds `kb` group blocks, `a` the rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn tile_256<const R: usize>(
    w: &[u8],
    (a, _): (&Q8_1Rows, &[i32]),
    kb: usize,
    row: usize,
    half: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    unsafe {
        let sign_bits = _mm256_set1_epi8(-128);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..kb {
            let blk = w.as_ptr().add(b * GROUP_BLOCK_BYTES);
            let w_d = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16 * half) as *const __m128i));
            let mut signed = [_mm256_setzero_si256(); 8];
            let mut magnitude = [_mm256_setzero_si256(); 8];
            for j in 0..8 {
                let chunk = _mm256_loadu_si256(blk.add(2 * GROUP + 64 * j + 32 * half) as *const _);
                signed[j] = _mm256_xor_si256(chunk, sign_bits);
                magnitude[j] = _mm256_abs_epi8(signed[j]);
            }
            for r in 0..R {
                let ai = (row + r) * kb + b;
                let q = a.quants.as_ptr().add(ai * QK) as *const i32;
                let mut dot = _mm256_setzero_si256();
                for j in 0..8 {
                    let x = _mm256_set1_epi32(q.add(j).read_unaligned());
                    let pairs = _mm256_maddubs_epi16(magnitude[j], _mm256_sign_epi8(x, signed[j]));
                    dot = _mm256_add_epi32(dot, _mm256_madd_epi16(pairs, ones));
                }
                let scale = _mm256_mul_ps(w_d, _mm256_set1_ps(*a.d.get_unchecked(ai)));
                acc[r] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[r]);
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

    /// The arithmetic one value at a time, from the file's GGML bytes.
    fn scalar_dot(w: &[u8], a: &Q8_1Rows, row: usize, kb: usize, col: usize) -> f32 {
        let mut acc = 0f32;
        for b in 0..kb {
            let blk = &w[(col * kb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
            let w_d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let ai = row * kb + b;
            let dot: i32 = (0..QK)
                .map(|i| blk[2 + i] as i8 as i32 * a.quants[ai * QK + i] as i32)
                .sum();
            acc = (w_d * a.d[ai]).mul_add(dot as f32, acc);
        }
        acc
    }

    fn random_q8_0(rng: &mut rand::rngs::StdRng, n: usize, k: usize) -> QTensor {
        let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w = Tensor::from_vec(w, (n, k), &Device::Cpu).unwrap();
        QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()
    }

    #[test]
    fn the_q8_0_kernel_computes_its_arithmetic_to_the_bit_with_every_instruction_set() {
        if !(cpu().avx2_fma && cpu().f16c) {
            panic!("this test needs an x86 CPU with AVX2, FMA and F16C (the kernel's only target)");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for (n, k) in [(72, 576), (7, 64), (16, 32), (33, 1536)] {
            let mut q = random_q8_0(&mut rng, n, k);
            if n == 7 {
                // Every extreme quant: -128 (which candle never writes, but a file may hold), -127,
                // 0 and 127, against activations of ±127.
                let mut data = q.data().unwrap().to_vec();
                for (i, byte) in data.iter_mut().enumerate() {
                    if i % BLOCK_BYTES >= 2 {
                        *byte = [0x80u8, 0x81, 0, 0x7F][i % 4];
                    }
                }
                q = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    GgmlDType::Q8_0,
                    &data,
                    vec![n, k],
                    &Device::Cpu,
                )
                .unwrap();
            }
            let bytes = q.data().unwrap().to_vec();
            let packed = PackedQ8_0::pack(&q).unwrap().expect("the kernel runs here");
            for m in [1, 2, 3, 4, 5, 8, 9, 17, 20] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| match (n, i % 3) {
                        (7, 0) => 5.0,
                        (7, 1) => -5.0,
                        _ => rng.random_range(-3.0..3.0),
                    })
                    .collect();
                let a = quantize_q8_1(&x);
                let expected: Vec<u32> = (0..m)
                    .flat_map(|r| (0..n).map(move |c| (r, c)))
                    .map(|(r, c)| scalar_dot(&bytes, &a, r, k / QK, c).to_bits())
                    .collect();
                for dots in Dots::on_this_cpu() {
                    let ours = matmul_t(&packed, &x, m, dots).unwrap().unwrap();
                    let ours: Vec<u32> = ours.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(ours, expected, "({m}, {k}, {n}), {dots:?}");
                }
            }
        }
    }

    #[test]
    fn packing_keeps_every_byte_of_the_files_blocks() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        for (n, k) in [(16, 32), (37, 96), (1, 64)] {
            let q = random_q8_0(&mut rng, n, k);
            let packed = PackedQ8_0::pack(&q).unwrap().expect("the kernel runs here");
            assert_eq!(packed.dims(), (n, k));
            let back = packed.to_qtensor().unwrap();
            assert_eq!(back.data().unwrap(), q.data().unwrap(), "({n}, {k})");
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
    }

    #[test]
    fn the_q8_0_product_is_the_dequantized_product_up_to_the_activations_rounding() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(23);
        let (n, k, m) = (40, 576, 3);
        let q = random_q8_0(&mut rng, n, k);
        let dense: Vec<f32> = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let packed = PackedQ8_0::pack(&q).unwrap().unwrap();
        let ours = matmul_t(&packed, &x, m, Dots::best()).unwrap().unwrap();
        for r in 0..m {
            for c in 0..n {
                let exact: f64 = (0..k)
                    .map(|i| dense[c * k + i] as f64 * x[r * k + i] as f64)
                    .sum();
                let err = (ours[r * n + c] as f64 - exact).abs();
                assert!(err < 0.1, "({r}, {c}): {} vs {exact}", ours[r * n + c]);
            }
        }
    }
}
