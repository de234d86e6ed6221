//! `exp` over a slice, several values at a time, with the bits of the C library's scalar `expf`
//! and `exp` (what `f32::exp` and `f64::exp` call). The softmaxes (training's attention, decoding's
//! attention) and SiLU (the MLP's forward and backward) take f32 rows; the output head's
//! log-sum-exp and its gradient take f64 (`layers::log_sum_exp`, `output_head.rs`).
//!
//! Why: the C library costs a call per value. A profile of a LoRA step on SmolLM2 put 2.6% of the
//! CPU time in `expf` and 3.6% in `exp` (the head's 49,152 logits per token, twice), and of a
//! 20-row decoding step 6% in `expf`.
//!
//! How: glibc's `expf` (since 2.27, from Arm's optimized routines) computes in f64: `k = round(x ·
//! 32/ln2)`, `r = x · 32/ln2 − k`, `2^(k/32)` from a 32-entry table and the exponent bits, a cubic
//! in `r`. Its x86-64 build with FMA (the one glibc picks on every CPU that has AVX2 and FMA)
//! contracts that arithmetic into a fixed sequence of FMAs; the lanes here do the same operations in
//! the same order, so each lane rounds as the scalar call does. Its `exp` is the same scheme in f64
//! with a 128-entry table (`exp_table.rs`) and a quartic.
//!
//! Invariant: the same bits as `f32::exp` / `f64::exp` for every input, by construction (the C
//! library's operations, read off its x86-64 code, in its order), or this module is not used. A
//! different C library (or one built with other contractions) would round differently, so the first
//! call compares the vector form with the scalar call on 2^18 inputs spread over every exponent and
//! the edges of the fast range ([`vector_form_matches`]), and where one differs every call takes
//! the scalar call. That check is a sample, not a proof: a contraction that differs only in the
//! polynomial's small terms moves a result's last bit on rare inputs alone. Lanes outside the fast range (f32: |x| ≥ 88, NaN;
//! f64: |x| < 2^-54, |x| ≥ 512, NaN) take the scalar call; f32's −∞, which a causal mask gives, is 0
//! in the vector form too.

use std::sync::OnceLock;

/// `xs[i] = xs[i].exp()`, with the bits of `f32::exp` or `f64::exp`.
pub(crate) fn exp_in_place<T: Exp>(xs: &mut [T]) {
    run(T::form(), xs)
}

/// Values a block at a time for [`exp_in_place`] on a stack buffer: long enough to amortize a call,
/// short enough to stay in L1.
pub(crate) const BLOCK: usize = 256;

/// Calls `each` on consecutive blocks of `xs` (the last one shorter) with `exp(x - shift)` in f64
/// for each of the block's values: the C library's `exp` bits, in order.
pub(crate) fn shifted_exps<T: candle_core::WithDType>(
    xs: &[T],
    shift: f64,
    mut each: impl FnMut(usize, &[f64]),
) {
    let mut buffer = [0f64; BLOCK];
    for (b, block) in xs.chunks(BLOCK).enumerate() {
        let exps = &mut buffer[..block.len()];
        for (e, x) in exps.iter_mut().zip(block) {
            *e = x.to_f64() - shift;
        }
        exp_in_place(exps);
        each(b * BLOCK, exps);
    }
}

/// `xs[i] = f(exp(xs[i] - shift))`, the exps in f64 a block at a time: [`shifted_exps`] where the
/// result goes back into the values it came from.
pub(crate) fn map_shifted_exps(xs: &mut [f32], shift: f64, f: impl Fn(f64) -> f32) {
    let mut buffer = [0f64; BLOCK];
    for block in xs.chunks_mut(BLOCK) {
        let exps = &mut buffer[..block.len()];
        for (e, x) in exps.iter_mut().zip(block.iter()) {
            *e = *x as f64 - shift;
        }
        exp_in_place(exps);
        for (x, e) in block.iter_mut().zip(exps.iter()) {
            *x = f(*e);
        }
    }
}

/// The two precisions, each with its scalar call, its vector forms and the inputs that check them.
pub(crate) trait Exp: Copy + Sized + 'static {
    fn scalar_exp(self) -> Self;
    /// The same bits, or both NaN.
    fn same(a: Self, b: Self) -> bool;
    /// Inputs that reach every part of the computation: a stride through the bit patterns of the
    /// range where the result is neither 0 nor ∞ (every exponent, both signs, every table entry),
    /// the fast range's edges, and the values the vector forms hand to the scalar call.
    fn check_inputs() -> Vec<Self>;
    /// # Safety
    /// The CPU has AVX-512 F and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx512(xs: &mut [Self]);
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2(xs: &mut [Self]);
    /// The form chosen for this precision, once.
    fn form() -> Form;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The widest form this CPU runs whose bits match the scalar call's here.
fn choose<T: Exp>() -> Form {
    candidates()
        .into_iter()
        .find(|&f| vector_form_matches::<T>(f))
        .unwrap_or(Form::Scalar)
}

/// The vector forms this CPU can run, widest first.
fn candidates() -> Vec<Form> {
    #[allow(unused_mut)]
    let mut all = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        let fma = is_x86_feature_detected!("fma");
        if super::cpu_kernels::cpu().avx512f && fma {
            all.push(Form::Avx512);
        }
        if is_x86_feature_detected!("avx2") && fma {
            all.push(Form::Avx2);
        }
    }
    all
}

/// Whether `form` gives the scalar call's bits on [`Exp::check_inputs`].
fn vector_form_matches<T: Exp>(form: Form) -> bool {
    let xs = T::check_inputs();
    let mut ys = xs.clone();
    run(form, &mut ys);
    xs.iter().zip(&ys).all(|(x, y)| T::same(x.scalar_exp(), *y))
}

fn run<T: Exp>(form: Form, xs: &mut [T]) {
    match form {
        // SAFETY: a vector form is chosen only where `candidates` found the features it needs.
        #[cfg(target_arch = "x86_64")]
        Form::Avx512 => unsafe { T::avx512(xs) },
        #[cfg(target_arch = "x86_64")]
        Form::Avx2 => unsafe { T::avx2(xs) },
        Form::Scalar => scalar(xs),
    }
}

fn scalar<T: Exp>(xs: &mut [T]) {
    for x in xs {
        *x = x.scalar_exp();
    }
}

/// `count` bit patterns spread evenly from `start` to `end` (inclusive), as `u64`.
fn stride(start: u64, end: u64, count: u64) -> impl Iterator<Item = u64> {
    let step = ((end - start) / count).max(1);
    (0..=count)
        .map(move |i| start + i * step)
        .take_while(move |&b| b <= end)
}

impl Exp for f32 {
    fn scalar_exp(self) -> f32 {
        self.exp()
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn check_inputs() -> Vec<f32> {
        let (low, high) = ((-104f32).to_bits() as u64, 89f32.to_bits() as u64);
        // Positive patterns run from +0 up to 89's; negative ones from -0 up to -104's.
        let mut xs: Vec<f32> = stride(0, high, 1 << 17)
            .chain(stride(0x8000_0000, low, 1 << 17))
            .map(|b| f32::from_bits(b as u32))
            .collect();
        for edge in [
            87.99f32, 88.0, 88.72, 88.73, -87.99, -88.0, -103.0, -103.98, -104.0,
        ] {
            let b = edge.to_bits();
            xs.extend([edge, f32::from_bits(b + 1), f32::from_bits(b - 1)]);
        }
        xs.extend([
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        xs
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx512(xs: &mut [f32]) {
        x86::expf_avx512(xs)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2(xs: &mut [f32]) {
        x86::expf_avx2(xs)
    }

    fn form() -> Form {
        static FORM: OnceLock<Form> = OnceLock::new();
        *FORM.get_or_init(choose::<f32>)
    }
}

impl Exp for f64 {
    fn scalar_exp(self) -> f64 {
        self.exp()
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn check_inputs() -> Vec<f64> {
        let (low, high) = ((-746f64).to_bits(), 710f64.to_bits());
        let mut xs: Vec<f64> = stride(0, high, 1 << 17)
            .chain(stride(0x8000_0000_0000_0000, low, 1 << 17))
            .map(f64::from_bits)
            .collect();
        for edge in [
            5.551115123125783e-17,
            -5.551115123125783e-17,
            511.99,
            512.0,
            -511.99,
            -512.0,
            -708.5,
            -745.2,
            709.7,
        ] {
            let b = f64::to_bits(edge);
            xs.extend([edge, f64::from_bits(b + 1), f64::from_bits(b - 1)]);
        }
        xs.extend([
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ]);
        xs
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx512(xs: &mut [f64]) {
        x86::exp_avx512(xs)
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn avx2(xs: &mut [f64]) {
        x86::exp_avx2(xs)
    }

    fn form() -> Form {
        static FORM: OnceLock<Form> = OnceLock::new();
        *FORM.get_or_init(choose::<f64>)
    }
}

/// The constants of glibc's `expf` (its `__exp2f_data`, scaled for `expf` by `N = 32`): `32/ln2`,
/// the rounding shift `1.5 · 2^52`, the cubic's coefficients of `r³`, `r²`, `r`.
mod expf_constants {
    pub const INV_LN2_N: f64 = f64::from_bits(0x4047_1547_652b_82fe);
    pub const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
    pub const C0: f64 = f64::from_bits(0x3ebc_6af8_4b91_2394);
    pub const C1: f64 = f64::from_bits(0x3f2e_bfce_50fa_c4f3);
    pub const C2: f64 = f64::from_bits(0x3f96_2e42_ff0c_52d6);
}

/// The constants of glibc's `exp` (its `__exp_data`, `N = 128`): `128/ln2`, the shift, `-ln2/128`
/// split in a high and a low part, the quartic's coefficients of `r²` to `r⁵`.
mod exp_constants {
    pub const INV_LN2_N: f64 = f64::from_bits(0x4067_1547_652b_82fe);
    pub const SHIFT: f64 = f64::from_bits(0x4338_0000_0000_0000);
    pub const NEG_LN2_HI_N: f64 = -f64::from_bits(0x3f76_2e42_fefa_0000);
    pub const NEG_LN2_LO_N: f64 = -f64::from_bits(0x3d0c_f79a_bc9e_3b3a);
    pub const C2: f64 = f64::from_bits(0x3fdf_ffff_ffff_fdbd);
    pub const C3: f64 = f64::from_bits(0x3fc5_5555_5555_543c);
    pub const C4: f64 = f64::from_bits(0x3fa5_5555_cf17_2b91);
    pub const C5: f64 = f64::from_bits(0x3f81_1111_67a4_d017);
}

/// `2^(i/32)` for i in 0..32 with `i << 47` taken from its bits, so that adding `k << 47` (k's low
/// five bits are i) gives `2^(k/32)`'s bits.
fn expf_table() -> &'static [u64; 32] {
    static TABLE: OnceLock<[u64; 32]> = OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|i| {
            ((i as f64) / 32.0)
                .exp2()
                .to_bits()
                .wrapping_sub((i as u64) << 47)
        })
    })
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::exp_table::EXP_TABLE;
    use super::{expf_table, scalar, Exp};
    use std::arch::x86_64::*;

    /// The scalar call for the lanes in `needs_scalar` (a bit per lane), from their inputs (spilled
    /// from the register only for a chunk that has such a lane).
    #[inline(always)]
    fn patch<T: Exp>(chunk: &mut [T], original: &[T], needs_scalar: u32) {
        let mut m = needs_scalar;
        while m != 0 {
            let i = m.trailing_zeros() as usize;
            chunk[i] = original[i].scalar_exp();
            m &= m - 1;
        }
    }

    /// glibc's `expf` on eight f64 lanes: FMA for FMA, in its order.
    #[inline(always)]
    unsafe fn expf_lanes_512(xd: __m512d, table: &[u64; 32]) -> __m256 {
        use super::expf_constants::*;
        let kd = _mm512_fmadd_pd(_mm512_set1_pd(INV_LN2_N), xd, _mm512_set1_pd(SHIFT));
        let ki = _mm512_castpd_si512(kd);
        let kd = _mm512_sub_pd(kd, _mm512_set1_pd(SHIFT));
        let r = _mm512_fmsub_pd(_mm512_set1_pd(INV_LN2_N), xd, kd);
        let idx = _mm512_and_si512(ki, _mm512_set1_epi64(31));
        let t = _mm512_i64gather_epi64::<8>(idx, table.as_ptr() as *const i64);
        let s = _mm512_castsi512_pd(_mm512_add_epi64(t, _mm512_slli_epi64::<47>(ki)));
        let z = _mm512_fmadd_pd(r, _mm512_set1_pd(C0), _mm512_set1_pd(C1));
        let r2 = _mm512_mul_pd(r, r);
        let y = _mm512_fmadd_pd(r, _mm512_set1_pd(C2), _mm512_set1_pd(1.0));
        let y = _mm512_fmadd_pd(z, r2, y);
        _mm512_cvtpd_ps(_mm512_mul_pd(y, s))
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn expf_avx512(xs: &mut [f32]) {
        let table = expf_table();
        let mut chunks = xs.chunks_exact_mut(16);
        for chunk in &mut chunks {
            let x = _mm512_loadu_ps(chunk.as_ptr());
            let bits = _mm512_castps_si512(x);
            let abstop = _mm512_and_si512(_mm512_srli_epi32::<20>(bits), _mm512_set1_epi32(0x7ff));
            let fast = _mm512_cmple_epu32_mask(abstop, _mm512_set1_epi32(0x42a));
            let minus_inf = _mm512_cmpeq_ps_mask(x, _mm512_set1_ps(f32::NEG_INFINITY));
            let low = _mm512_cvtps_pd(_mm512_castps512_ps256(x));
            let high = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(
                _mm512_castps_pd(x),
            )));
            let (yl, yh) = (expf_lanes_512(low, table), expf_lanes_512(high, table));
            let y = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castpd256_pd512(_mm256_castps_pd(yl)),
                _mm256_castps_pd(yh),
            ));
            let y = _mm512_maskz_mov_ps(!minus_inf, y);
            _mm512_storeu_ps(chunk.as_mut_ptr(), y);
            let needs_scalar = (!(fast | minus_inf)) as u32 & 0xffff;
            if needs_scalar != 0 {
                let mut input = [0f32; 16];
                _mm512_storeu_ps(input.as_mut_ptr(), x);
                patch(chunk, &input, needs_scalar);
            }
        }
        scalar(chunks.into_remainder());
    }

    /// glibc's `expf` on four f64 lanes.
    #[inline(always)]
    unsafe fn expf_lanes_256(xd: __m256d, table: &[u64; 32]) -> __m128 {
        use super::expf_constants::*;
        let kd = _mm256_fmadd_pd(_mm256_set1_pd(INV_LN2_N), xd, _mm256_set1_pd(SHIFT));
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, _mm256_set1_pd(SHIFT));
        let r = _mm256_fmsub_pd(_mm256_set1_pd(INV_LN2_N), xd, kd);
        let idx = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
        let t = _mm256_i64gather_epi64::<8>(table.as_ptr() as *const i64, idx);
        let s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64::<47>(ki)));
        let z = _mm256_fmadd_pd(r, _mm256_set1_pd(C0), _mm256_set1_pd(C1));
        let r2 = _mm256_mul_pd(r, r);
        let y = _mm256_fmadd_pd(r, _mm256_set1_pd(C2), _mm256_set1_pd(1.0));
        let y = _mm256_fmadd_pd(z, r2, y);
        _mm256_cvtpd_ps(_mm256_mul_pd(y, s))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn expf_avx2(xs: &mut [f32]) {
        let table = expf_table();
        let mut chunks = xs.chunks_exact_mut(8);
        for chunk in &mut chunks {
            let x = _mm256_loadu_ps(chunk.as_ptr());
            let bits = _mm256_castps_si256(x);
            let abstop = _mm256_and_si256(_mm256_srli_epi32::<20>(bits), _mm256_set1_epi32(0x7ff));
            // abstop fits 11 bits, so the signed compare is the unsigned one.
            let fast = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x42b), abstop);
            let minus_inf = _mm256_cmp_ps::<_CMP_EQ_OQ>(x, _mm256_set1_ps(f32::NEG_INFINITY));
            let low = _mm256_cvtps_pd(_mm256_castps256_ps128(x));
            let high = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(x));
            let (yl, yh) = (expf_lanes_256(low, table), expf_lanes_256(high, table));
            let y = _mm256_insertf128_ps::<1>(_mm256_castps128_ps256(yl), yh);
            let y = _mm256_andnot_ps(minus_inf, y);
            _mm256_storeu_ps(chunk.as_mut_ptr(), y);
            let fast_mask = _mm256_movemask_ps(_mm256_castsi256_ps(fast)) as u32;
            let inf_mask = _mm256_movemask_ps(minus_inf) as u32;
            let needs_scalar = !(fast_mask | inf_mask) & 0xff;
            if needs_scalar != 0 {
                let mut input = [0f32; 8];
                _mm256_storeu_ps(input.as_mut_ptr(), x);
                patch(chunk, &input, needs_scalar);
            }
        }
        scalar(chunks.into_remainder());
    }

    /// glibc's `exp` on eight lanes: FMA for FMA, in its order (`scale + scale · tmp` last).
    #[inline(always)]
    unsafe fn exp_lanes_512(x: __m512d) -> __m512d {
        use super::exp_constants::*;
        let table = EXP_TABLE.as_ptr();
        let kd = _mm512_fmadd_pd(x, _mm512_set1_pd(INV_LN2_N), _mm512_set1_pd(SHIFT));
        let ki = _mm512_castpd_si512(kd);
        let kd = _mm512_sub_pd(kd, _mm512_set1_pd(SHIFT));
        let r = _mm512_fmadd_pd(kd, _mm512_set1_pd(NEG_LN2_HI_N), x);
        let r = _mm512_fmadd_pd(kd, _mm512_set1_pd(NEG_LN2_LO_N), r);
        let idx = _mm512_slli_epi64::<1>(_mm512_and_si512(ki, _mm512_set1_epi64(127)));
        let tail = _mm512_i64gather_pd::<8>(idx, table as *const f64);
        let scale_bits = _mm512_i64gather_epi64::<8>(
            _mm512_add_epi64(idx, _mm512_set1_epi64(1)),
            table as *const i64,
        );
        let scale = _mm512_castsi512_pd(_mm512_add_epi64(scale_bits, _mm512_slli_epi64::<45>(ki)));
        let p23 = _mm512_fmadd_pd(r, _mm512_set1_pd(C3), _mm512_set1_pd(C2));
        let tail_r = _mm512_add_pd(r, tail);
        let r2 = _mm512_mul_pd(r, r);
        let p45 = _mm512_fmadd_pd(r, _mm512_set1_pd(C5), _mm512_set1_pd(C4));
        let tmp = _mm512_fmadd_pd(p23, r2, tail_r);
        let tmp = _mm512_fmadd_pd(_mm512_mul_pd(r2, r2), p45, tmp);
        _mm512_fmadd_pd(scale, tmp, scale)
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn exp_avx512(xs: &mut [f64]) {
        let mut chunks = xs.chunks_exact_mut(8);
        for chunk in &mut chunks {
            let x = _mm512_loadu_pd(chunk.as_ptr());
            // glibc's fast range: 2^-54 <= |x| < 512, the top 12 bits less the sign from 0x3c9 to
            // 0x407.
            let abstop = _mm512_and_si512(
                _mm512_srli_epi64::<52>(_mm512_castpd_si512(x)),
                _mm512_set1_epi64(0x7ff),
            );
            let fast = _mm512_cmple_epu64_mask(
                _mm512_sub_epi64(abstop, _mm512_set1_epi64(0x3c9)),
                _mm512_set1_epi64(0x3e),
            );
            _mm512_storeu_pd(chunk.as_mut_ptr(), exp_lanes_512(x));
            let needs_scalar = !fast as u32 & 0xff;
            if needs_scalar != 0 {
                let mut input = [0f64; 8];
                _mm512_storeu_pd(input.as_mut_ptr(), x);
                patch(chunk, &input, needs_scalar);
            }
        }
        scalar(chunks.into_remainder());
    }

    /// glibc's `exp` on four lanes.
    #[inline(always)]
    unsafe fn exp_lanes_256(x: __m256d) -> __m256d {
        use super::exp_constants::*;
        let table = EXP_TABLE.as_ptr();
        let kd = _mm256_fmadd_pd(x, _mm256_set1_pd(INV_LN2_N), _mm256_set1_pd(SHIFT));
        let ki = _mm256_castpd_si256(kd);
        let kd = _mm256_sub_pd(kd, _mm256_set1_pd(SHIFT));
        let r = _mm256_fmadd_pd(kd, _mm256_set1_pd(NEG_LN2_HI_N), x);
        let r = _mm256_fmadd_pd(kd, _mm256_set1_pd(NEG_LN2_LO_N), r);
        let idx = _mm256_slli_epi64::<1>(_mm256_and_si256(ki, _mm256_set1_epi64x(127)));
        let tail = _mm256_i64gather_pd::<8>(table as *const f64, idx);
        let scale_bits = _mm256_i64gather_epi64::<8>(
            table as *const i64,
            _mm256_add_epi64(idx, _mm256_set1_epi64x(1)),
        );
        let scale = _mm256_castsi256_pd(_mm256_add_epi64(scale_bits, _mm256_slli_epi64::<45>(ki)));
        let p23 = _mm256_fmadd_pd(r, _mm256_set1_pd(C3), _mm256_set1_pd(C2));
        let tail_r = _mm256_add_pd(r, tail);
        let r2 = _mm256_mul_pd(r, r);
        let p45 = _mm256_fmadd_pd(r, _mm256_set1_pd(C5), _mm256_set1_pd(C4));
        let tmp = _mm256_fmadd_pd(p23, r2, tail_r);
        let tmp = _mm256_fmadd_pd(_mm256_mul_pd(r2, r2), p45, tmp);
        _mm256_fmadd_pd(scale, tmp, scale)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_avx2(xs: &mut [f64]) {
        let mut chunks = xs.chunks_exact_mut(4);
        for chunk in &mut chunks {
            let x = _mm256_loadu_pd(chunk.as_ptr());
            let abstop = _mm256_and_si256(
                _mm256_srli_epi64::<52>(_mm256_castpd_si256(x)),
                _mm256_set1_epi64x(0x7ff),
            );
            // abstop fits 11 bits: signed compares.
            let fast = _mm256_and_si256(
                _mm256_cmpgt_epi64(abstop, _mm256_set1_epi64x(0x3c8)),
                _mm256_cmpgt_epi64(_mm256_set1_epi64x(0x408), abstop),
            );
            _mm256_storeu_pd(chunk.as_mut_ptr(), exp_lanes_256(x));
            let fast_mask = _mm256_movemask_pd(_mm256_castsi256_pd(fast)) as u32;
            let needs_scalar = !fast_mask & 0xf;
            if needs_scalar != 0 {
                let mut input = [0f64; 4];
                _mm256_storeu_pd(input.as_mut_ptr(), x);
                patch(chunk, &input, needs_scalar);
            }
        }
        scalar(chunks.into_remainder());
    }
}

#[path = "exp_table.rs"]
mod exp_table;

#[cfg(test)]
mod tests {
    use super::*;

    fn random_inputs<T: Exp>(make: impl Fn(u64, usize) -> T, specials: &[T]) -> Vec<T> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut xs: Vec<T> = (0..200_000)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                make(state, i)
            })
            .collect();
        xs.extend_from_slice(specials);
        xs
    }

    /// Every form this CPU runs, on inputs the start-up check does not use (random patterns and
    /// values in the range the model gives, slices of every length up to 40 so every tail is taken),
    /// against the scalar call bit for bit. Where this C library's `exp` rounds otherwise, the
    /// start-up check refuses the form and this test says so instead of passing quietly.
    fn every_form_gives_the_scalar_bits<T: Exp + std::fmt::Debug>(xs: &[T]) {
        for form in candidates() {
            assert!(
                vector_form_matches::<T>(form),
                "{form:?} does not give this C library's exp bits: rtlab falls back to the scalar \
                 call here (slower, the same results); the vector forms need a glibc whose exp and \
                 expf are Arm's FMA builds (glibc 2.28 and later on x86-64)"
            );
            for len in (0..40).chain([xs.len()]) {
                let mut ys = xs[..len].to_vec();
                run(form, &mut ys);
                for (x, y) in xs[..len].iter().zip(&ys) {
                    let want = x.scalar_exp();
                    assert!(
                        T::same(want, *y),
                        "{form:?}: exp({x:?}) = {y:?}, the C library gives {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_form_gives_the_c_librarys_expf_bits() {
        let xs = random_inputs(
            |r, i| match i % 3 {
                0 => f32::from_bits(r as u32),
                1 => (r % 20_000) as f32 / 100.0 - 104.0,
                _ => -((r % 1_000_000) as f32) / 10_000.0,
            },
            &[f32::NEG_INFINITY, 0.0, -0.0, 88.5, -100.0, f32::NAN],
        );
        every_form_gives_the_scalar_bits(&xs);
    }

    #[test]
    fn every_form_gives_the_c_librarys_exp_bits() {
        let xs = random_inputs(
            |r, i| match i % 3 {
                0 => f64::from_bits(r),
                1 => (r % 150_000) as f64 / 100.0 - 750.0,
                _ => -((r % 100_000_000) as f64) / 1_000_000.0,
            },
            &[f64::NEG_INFINITY, 0.0, -0.0, 1e-17, -600.0, 800.0, f64::NAN],
        );
        every_form_gives_the_scalar_bits(&xs);
    }

    #[test]
    fn the_slice_function_is_the_scalar_exp() {
        let mut xs: Vec<f32> = (-50..50).map(|i| i as f32 * 0.37).collect();
        let want: Vec<u32> = xs.iter().map(|x| x.exp().to_bits()).collect();
        exp_in_place(&mut xs);
        assert_eq!(xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        let mut xs: Vec<f64> = (-50..50).map(|i| i as f64 * -0.37).collect();
        let want: Vec<u64> = xs.iter().map(|x| x.exp().to_bits()).collect();
        exp_in_place(&mut xs);
        assert_eq!(xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
    }
}
