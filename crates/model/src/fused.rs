//! The Llama layer's elementwise steps as single passes on the CPU, each with a hand-written
//! backward: RMSNorm, the attention's scaled and causally masked softmax, SiLU(gate)·up, and RoPE.
//!
//! candle's autograd builds each of these from 4 to 10 tensor ops: an allocation and a full pass
//! over memory per op forward, and as many again backward. In a LoRA step on SmolLM2 those passes,
//! with the allocator's zeroing and copying around them, took more time than the matrix products
//! (a profile put the products at a third of the CPU time). PyTorch fuses them; so does this module.
//!
//! Invariant: every forward computes each value with the operations, in the order, of the tensor-op
//! form it replaces (candle's own row sum included), so it gives the same bits, and inference and
//! decoding are unchanged by it (tests check each op's bits). The backwards are the analytic
//! derivatives, in f32; tests check them against candle's autograd of the tensor-op form in f64.
//! The ops take contiguous f32 tensors on the CPU ([`applies`]); elsewhere the callers keep the
//! tensor-op form.

use crate::cpu_kernels::SharedOut;
use crate::custom_op::{split_gradients, to_storage, values};
use crate::exp::exp_in_place;
use candle_core::cpu::kernels::VecOps;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

/// True where the fused ops run: an f32 tensor on the CPU.
pub(crate) fn applies(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

/// candle's sum of a row (its vectorized reduction), so a fused forward sums as `sum_keepdim` does.
fn row_sum(row: &[f32]) -> f32 {
    let mut sum = 0f32;
    // SAFETY: `row.len()` values are read from `row`; one is written to `sum`.
    unsafe { <f32 as VecOps>::vec_reduce_sum(row.as_ptr(), &mut sum, row.len()) };
    sum
}

/// `softmax_last(&(row / temperature))` of one row of logits, with the tensor ops' bits (candle's
/// `affine` by `1 / temperature`, the row's max, `exp`, its vectorized sum, the division) in the
/// row's own buffer and the vector `exp`: the sampler's softmax, once per row of every decoding step
/// (49,152 values on SmolLM2), without five tensors a row.
pub(crate) fn softmax_at_temperature(mut row: Vec<f32>, temperature: f64) -> Vec<f32> {
    if row.is_empty() {
        return row;
    }
    let mul = (1.0 / temperature) as f32;
    for v in row.iter_mut() {
        *v = *v * mul + 0.0;
    }
    softmax_in_place(&mut row);
    row
}

/// A non-empty row's softmax in place, as candle's ops compute it: `max_keepdim`'s fold,
/// `broadcast_sub`, `exp`, its vectorized row sum, `broadcast_div`.
fn softmax_in_place(row: &mut [f32]) {
    let max = row[1..]
        .iter()
        .fold(row[0], |m, &v| if m < v { v } else { m });
    for v in row.iter_mut() {
        *v -= max;
    }
    exp_in_place(row);
    let sum = row_sum(row);
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Below this many values a pass runs on the calling thread: waking the pool costs more.
const VALUES_WORTH_THE_POOL: usize = 1 << 14;

/// `N` buffers of `rows × width` values, row `i` of each written by `fill(i, [rows of each])`,
/// rows spread over candle's thread pool (the one its own ops use; a second pool beside it, such as
/// rayon's, fights it for the cores).
pub(crate) fn map_rows<T: Copy + Default, const N: usize>(
    rows: usize,
    width: usize,
    fill: impl Fn(usize, [&mut [T]; N]) + Sync,
) -> [Vec<T>; N] {
    map_rows_reading(rows, width, width, fill)
}

/// [`map_rows`] where each row reads `read_per_row` values (more than it writes: a row's loss reads
/// a row of logits and writes one value), which decides whether waking the pool pays.
pub(crate) fn map_rows_reading<T: Copy + Default, const N: usize>(
    rows: usize,
    width: usize,
    read_per_row: usize,
    fill: impl Fn(usize, [&mut [T]; N]) + Sync,
) -> [Vec<T>; N] {
    let mut out: [Vec<T>; N] = std::array::from_fn(|_| vec![T::default(); rows * width]);
    let shared: [SharedOut<T>; N] = std::array::from_fn(|o| SharedOut(out[o].as_mut_ptr()));
    let work = |range: std::ops::Range<usize>| {
        for i in range {
            // SAFETY: row i of each output is written by this work item alone.
            let dst = std::array::from_fn(|o| unsafe {
                std::slice::from_raw_parts_mut(shared[o].at(i * width), width)
            });
            fill(i, dst);
        }
    };
    if rows * read_per_row.max(width) < VALUES_WORTH_THE_POOL {
        work(0..rows);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(rows, work);
    }
    out
}

/// Each `width`-value row of `data` rewritten in place by `update(i, row)`, rows spread over
/// candle's thread pool as in [`map_rows`] (a gradient written over the values it is computed from).
pub(crate) fn update_rows<T: Send>(
    data: &mut [T],
    width: usize,
    update: impl Fn(usize, &mut [T]) + Sync,
) {
    let rows = data.len() / width.max(1);
    let shared = SharedOut(data.as_mut_ptr());
    let work = |range: std::ops::Range<usize>| {
        for i in range {
            // SAFETY: row i lies within `data` and is rewritten by this work item alone.
            let row = unsafe { std::slice::from_raw_parts_mut(shared.at(i * width), width) };
            update(i, row);
        }
    };
    if rows * width < VALUES_WORTH_THE_POOL {
        work(0..rows);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(rows, work);
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// `x / sqrt(mean(x²) + eps) · w` over the last dimension, for a frozen `w` (LoRA never trains a
/// norm: its backward gives `dx` only).
struct RmsNorm {
    eps: f64,
}

/// Per row, `1 / sqrt(mean(x²) + eps)` as the tensor-op form rounds it: `sqr`, candle's row sum,
/// `· (1/d)` and `+ eps` (its affine ops), `sqrt`, `recip`.
fn inverse_rms(row: &[f32], squares: &mut [f32], eps: f32) -> f32 {
    for (sq, v) in squares.iter_mut().zip(row) {
        *sq = v * v;
    }
    let scale = (1f64 / row.len() as f64) as f32;
    let mean = row_sum(squares) * scale + 0.0;
    (mean * 1.0 + eps).sqrt().recip()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (values(xs, xl, self.name())?, values(ws, wl, self.name())?);
        let d = w.len();
        let eps = self.eps as f32;
        let [y] = map_rows(x.len() / d, d, |i, [y]| {
            let row = &x[i * d..(i + 1) * d];
            let inv = inverse_rms(row, y, eps);
            for ((y, v), w) in y.iter_mut().zip(row).zip(w) {
                *y = v * inv * w;
            }
        });
        Ok(to_storage(y, xl.shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = x.apply_op3_no_bwd(w, &dy.contiguous()?, &RmsNormBackward { eps: self.eps })?;
        Ok((Some(dx), None))
    }
}

/// `dx = inv · (w ⊙ dy) − x · inv³ · Σ(w ⊙ dy ⊙ x) / d`, per row.
struct RmsNormBackward {
    eps: f64,
}

impl CustomOp3 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "fused-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (x, w, dy) = (
            values(xs, xl, name)?,
            values(ws, wl, name)?,
            values(gs, gl, name)?,
        );
        let d = w.len();
        let eps = self.eps as f32;
        let [dx] = map_rows(x.len() / d, d, |i, [dx]| {
            let (row, dy) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
            let inv = inverse_rms(row, dx, eps);
            let dot: f32 = (0..d).map(|j| w[j] * dy[j] * row[j]).sum();
            let k = inv * inv * inv * dot / d as f32;
            for j in 0..d {
                dx[j] = inv * w[j] * dy[j] - row[j] * k;
            }
        });
        Ok(to_storage(dx, xl.shape()))
    }
}

/// RMSNorm of `x` over its last dimension with the frozen weight `w` (see [`applies`]).
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

// ---------------------------------------------------------------------------------------------
// Softmax

/// `softmax(x · scale + mask)` over the last dimension: the attention's scores scaled by
/// `1/√head_dim`, the causal mask (`[t, kv]`, 0 or -inf, the same for every batch and head) added,
/// and the softmax taken.
struct MaskedSoftmax {
    scale: f64,
    /// The mask's rows, `t` of them, each as long as a row of `x`.
    mask: Option<Vec<f32>>,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(s, l, self.name())?;
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mask_rows = self.mask.as_ref().map(|m| (m, m.len() / n));
        if let Some((m, t)) = mask_rows {
            if t == 0 || m.len() != t * n || (x.len() / n) % t != 0 {
                candle_core::bail!(
                    "{}: a mask of {} values for rows of {n}",
                    self.name(),
                    m.len()
                );
            }
        }
        let scale = self.scale as f32;
        let [y] = map_rows(x.len() / n, n, |i, [y]| {
            let row = &x[i * n..(i + 1) * n];
            // The tensor-op form: `affine(scale, 0)`, then `broadcast_add(mask)`.
            for (y, v) in y.iter_mut().zip(row) {
                *y = v * scale + 0.0;
            }
            if let Some((m, t)) = mask_rows {
                let at = (i % t) * n;
                for (y, m) in y.iter_mut().zip(&m[at..at + n]) {
                    *y += m;
                }
            }
            softmax_in_place(y);
        });
        Ok(to_storage(y, l.shape()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx = y.apply_op2_no_bwd(&dy.contiguous()?, &SoftmaxBackward { scale: self.scale })?;
        Ok(Some(dx))
    }
}

/// `dx = scale · y ⊙ (dy − Σ dy ⊙ y)`, per row.
struct SoftmaxBackward {
    scale: f64,
}

impl CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "fused-masked-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, dy) = (values(ys, yl, self.name())?, values(gs, gl, self.name())?);
        let n = yl.dims().last().copied().unwrap_or(1).max(1);
        let scale = self.scale as f32;
        let [dx] = map_rows(y.len() / n, n, |i, [dx]| {
            let (y, dy) = (&y[i * n..(i + 1) * n], &dy[i * n..(i + 1) * n]);
            let dot: f32 = y.iter().zip(dy).map(|(y, g)| y * g).sum();
            for ((dx, y), g) in dx.iter_mut().zip(y).zip(dy) {
                *dx = y * (g - dot) * scale;
            }
        });
        Ok(to_storage(dx, yl.shape()))
    }
}

/// `softmax(x · scale + mask)` over the last dimension of `x` (see [`MaskedSoftmax`] and
/// [`applies`]); `mask` is `[t, kv]` for `x` of `[.., t, kv]`.
pub(crate) fn masked_softmax(
    x: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let mask = match mask {
        Some(m) => Some(m.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    };
    x.contiguous()?.apply_op1(MaskedSoftmax { scale, mask })
}

// ---------------------------------------------------------------------------------------------
// SiLU(gate) · up

/// The MLP's `silu(gate) · up`, SiLU as candle computes it: `g / (1 + exp(-g))`.
struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (g, u) = (values(gs, gl, self.name())?, values(us, ul, self.name())?);
        if g.len() != u.len() {
            candle_core::bail!(
                "{}: gate {:?} and up {:?}",
                self.name(),
                gl.dims(),
                ul.dims()
            );
        }
        let n = gl.dims().last().copied().unwrap_or(1).max(1);
        let [y] = map_rows(g.len() / n, n, |i, [y]| {
            let (g, u) = (&g[i * n..(i + 1) * n], &u[i * n..(i + 1) * n]);
            // `silu(g) · u`, its `exp(-g)` for the whole row at once.
            for (y, g) in y.iter_mut().zip(g) {
                *y = -g;
            }
            exp_in_place(y);
            for ((y, g), u) in y.iter_mut().zip(g).zip(u) {
                *y = g / (1.0 + *y) * u;
            }
        });
        Ok(to_storage(y, gl.shape()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let both = g.apply_op3_no_bwd(u, &dy.contiguous()?, &SiluMulBackward)?;
        split_gradients(&both, g, u)
    }
}

/// With `σ = 1/(1 + e^-g)`: `dg = dy · u · σ · (1 + g · (1 − σ))`, `du = dy · silu(g)`, as one flat
/// result (see [`split_gradients`]).
struct SiluMulBackward;

impl CustomOp3 for SiluMulBackward {
    fn name(&self) -> &'static str {
        "fused-silu-mul-backward"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
        ds: &CpuStorage,
        dl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (g, u, dy) = (
            values(gs, gl, name)?,
            values(us, ul, name)?,
            values(ds, dl, name)?,
        );
        let n = gl.dims().last().copied().unwrap_or(1).max(1);
        let [dg, du] = map_rows(g.len() / n, n, |i, [dg, du]| {
            let at = i * n..(i + 1) * n;
            let (g, u, dy) = (&g[at.clone()], &u[at.clone()], &dy[at]);
            // `exp(-g)` for the whole row at once, in `dg` until each is read.
            for (e, g) in dg.iter_mut().zip(g) {
                *e = -g;
            }
            exp_in_place(dg);
            for j in 0..n {
                let sigmoid = 1.0 / (1.0 + dg[j]);
                dg[j] = dy[j] * u[j] * sigmoid * (1.0 + g[j] * (1.0 - sigmoid));
                du[j] = dy[j] * g[j] * sigmoid;
            }
        });
        let mut both = dg;
        both.extend_from_slice(&du);
        let len = both.len();
        Ok(to_storage(both, len))
    }
}

/// `silu(gate) · up` (see [`applies`]).
pub(crate) fn silu_mul(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// Rotary embeddings in HF's `rotate_half` layout on `x` [batch, heads, seq, head_dim]:
/// `y = x · cos + rotate_half(x) · sin`, with the tables' rows for the sequence's positions.
struct Rope {
    /// `[seq, head_dim]` each, or `[batch, seq, head_dim]` where `per_sequence` (each sequence of a
    /// batch at its own positions).
    cos: Vec<f32>,
    sin: Vec<f32>,
    per_sequence: bool,
    /// True for the backward: the transposed rotation (`sin` negated), `dx = Rᵀ dy`.
    inverse: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(s, l, self.name())?;
        let (b, h, t, d) = l.shape().dims4()?;
        let table_rows = if self.per_sequence { b * t } else { t };
        if self.cos.len() != table_rows * d || !d.is_multiple_of(2) {
            candle_core::bail!(
                "{}: tables of {} for {t} positions of {d}",
                self.name(),
                self.cos.len()
            );
        }
        let half = d / 2;
        let (cos, sin, inverse) = (&self.cos, &self.sin, self.inverse);
        let [y] = map_rows(x.len() / d, d, |row, [y]| {
            let src = &x[row * d..(row + 1) * d];
            let at = match self.per_sequence {
                // Row (sequence, head, position): the sequence's table row for the position.
                true => ((row / (h * t)) * t + row % t) * d,
                false => (row % t) * d,
            };
            let (c, s) = (&cos[at..at + d], &sin[at..at + d]);
            for i in 0..half {
                if inverse {
                    y[i] = src[i] * c[i] + src[i + half] * s[i + half];
                    y[i + half] = src[i + half] * c[i + half] + (-src[i]) * s[i];
                } else {
                    // The tensor-op form's `x · cos + cat(-x₂, x₁) · sin`, value by value.
                    y[i] = src[i] * c[i] + (-src[i + half]) * s[i];
                    y[i + half] = src[i + half] * c[i + half] + src[i] * s[i + half];
                }
            }
        });
        Ok(to_storage(y, l.shape()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let inverse = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            per_sequence: self.per_sequence,
            inverse: !self.inverse,
        };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

/// RoPE on `x` [batch, heads, seq, head_dim] with `cos` and `sin` [seq, head_dim], or [batch, seq,
/// head_dim] for sequences at positions of their own (see [`applies`]).
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let per_sequence = cos.rank() == 3;
    let table = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
    x.contiguous()?.apply_op1(Rope {
        cos: table(cos)?,
        sin: table(sin)?,
        per_sequence,
        inverse: false,
    })
}

#[cfg(test)]
mod tests {
    /// The sampler's softmax in one buffer is the tensor ops' softmax to the bit, for a
    /// vocabulary's width and odd ones, cold and hot temperatures, logits spread like a model's.
    #[test]
    fn the_samplers_softmax_is_the_tensor_ops_softmax() {
        use candle_core::{Device, Tensor};
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for width in [1usize, 7, 33, 1000, 49_152] {
            let logits: Vec<f32> = (0..width)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state % 4_000_000) as f32 / 100_000.0 - 25.0
                })
                .collect();
            for temperature in [0.2, 0.7, 0.8, 1.0, 1.3] {
                let t = Tensor::from_vec(logits.clone(), width, &Device::Cpu).unwrap();
                let want: Vec<f32> = crate::layers::softmax_last(&(t / temperature).unwrap())
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let got = super::softmax_at_temperature(logits.clone(), temperature);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "width {width}, T {temperature}");
            }
        }
    }

    use super::*;
    use candle_core::{Device, Var, D};

    use crate::test_values::tensor_bits as bits;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let v = crate::test_values::uniform(shape.iter().product(), seed, 2.0);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// The tensor-op forms the model used before (and uses off the CPU or in f64).
    fn rms_norm_ops(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let inv = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
            .unwrap()
            .sqrt()
            .unwrap()
            .recip()
            .unwrap();
        x.broadcast_mul(&inv).unwrap().broadcast_mul(w).unwrap()
    }

    fn masked_softmax_ops(x: &Tensor, scale: f64, mask: &Tensor) -> Tensor {
        let s = ((x * scale).unwrap()).broadcast_add(mask).unwrap();
        crate::layers::softmax_last(&s).unwrap()
    }

    fn causal(t: usize) -> Tensor {
        let m: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Tensor::from_vec(m, (t, t), &Device::Cpu).unwrap()
    }

    fn rope_ops(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let hd = x.dim(D::Minus1).unwrap();
        let x1 = x.narrow(D::Minus1, 0, hd / 2).unwrap();
        let x2 = x.narrow(D::Minus1, hd / 2, hd / 2).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        (x.broadcast_mul(cos).unwrap() + rotated.broadcast_mul(sin).unwrap()).unwrap()
    }

    fn tables(t: usize, d: usize) -> (Tensor, Tensor) {
        let angle =
            |p: usize, i: usize| p as f64 / 100f64.powf(2.0 * (i % (d / 2)) as f64 / d as f64);
        let cos: Vec<f32> = (0..t * d)
            .map(|k| angle(k / d, k % d).cos() as f32)
            .collect();
        let sin: Vec<f32> = (0..t * d)
            .map(|k| angle(k / d, k % d).sin() as f32)
            .collect();
        let dev = &Device::Cpu;
        (
            Tensor::from_vec(cos, (t, d), dev).unwrap(),
            Tensor::from_vec(sin, (t, d), dev).unwrap(),
        )
    }

    /// Sizes on both sides of [`VALUES_WORTH_THE_POOL`], so the pool's split is checked too.
    const SHAPES: [[usize; 4]; 2] = [[1, 2, 5, 8], [2, 3, 64, 64]];

    #[test]
    fn every_forward_gives_the_tensor_ops_bits() {
        for (k, shape) in SHAPES.iter().enumerate() {
            let x = random(shape, k as u64);
            let w = random(&shape[3..], 10 + k as u64);
            assert_eq!(
                bits(&rms_norm(&x, &w, 1e-5).unwrap()),
                bits(&rms_norm_ops(&x, &w, 1e-5))
            );

            let mask = causal(shape[2]);
            let s = random(&[shape[0], shape[1], shape[2], shape[2]], 20 + k as u64);
            let scale = 1.0 / (shape[3] as f64).sqrt();
            assert_eq!(
                bits(&masked_softmax(&s, scale, Some(&mask)).unwrap()),
                bits(&masked_softmax_ops(&s, scale, &mask))
            );

            let u = random(shape, 30 + k as u64);
            assert_eq!(
                bits(&silu_mul(&x, &u).unwrap()),
                bits(&(x.silu().unwrap() * &u).unwrap())
            );

            let (cos, sin) = tables(shape[2], shape[3]);
            assert_eq!(
                bits(&rope(&x, &cos, &sin).unwrap()),
                bits(&rope_ops(&x, &cos, &sin))
            );
        }
    }

    /// The gradient of `Σ f(x) ⊙ r` for a fixed random `r`, for every input `f` takes.
    fn grads(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor, r: &Tensor) -> Vec<Tensor> {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts);
        let loss = (y * r.to_dtype(ts[0].dtype()).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        ts.iter()
            .map(|t| g.get(t).unwrap().to_dtype(DType::F32).unwrap())
            .collect()
    }

    fn assert_close(fused: &[Tensor], exact: &[Tensor], what: &str) {
        for (a, b) in fused.iter().zip(exact) {
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let largest = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(&b)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4 * largest,
                "{what}: max difference {worst} (largest {largest})"
            );
        }
    }

    /// Each backward against candle's autograd of the tensor-op form, computed in f64.
    #[test]
    fn every_backward_matches_autograd_of_the_tensor_ops_in_f64() {
        let f64s = |ts: &[Tensor]| -> Vec<Tensor> {
            ts.iter().map(|t| t.to_dtype(DType::F64).unwrap()).collect()
        };
        for (k, shape) in SHAPES.iter().enumerate() {
            let seed = 100 * (k as u64 + 1);
            let x = random(shape, seed);
            let r = random(shape, seed + 1);
            let w = random(&shape[3..], seed + 2);
            let fused = grads(
                std::slice::from_ref(&x),
                |t| rms_norm(&t[0], &w, 1e-5).unwrap(),
                &r,
            );
            let w64 = w.to_dtype(DType::F64).unwrap();
            let exact = grads(
                &f64s(std::slice::from_ref(&x)),
                |t| rms_norm_ops(&t[0], &w64, 1e-5),
                &r,
            );
            assert_close(&fused, &exact, "rms_norm");

            let (t, n) = (shape[2], shape[2]);
            let s = random(&[shape[0], shape[1], t, n], seed + 3);
            let rs = random(&[shape[0], shape[1], t, n], seed + 4);
            let mask = causal(t);
            let scale = 1.0 / (shape[3] as f64).sqrt();
            let fused = grads(
                std::slice::from_ref(&s),
                |v| masked_softmax(&v[0], scale, Some(&mask)).unwrap(),
                &rs,
            );
            let m64 = mask.to_dtype(DType::F64).unwrap();
            let exact = grads(
                &f64s(std::slice::from_ref(&s)),
                |v| masked_softmax_ops(&v[0], scale, &m64),
                &rs,
            );
            assert_close(&fused, &exact, "masked_softmax");

            let u = random(shape, seed + 5);
            let fused = grads(
                &[x.clone(), u.clone()],
                |v| silu_mul(&v[0], &v[1]).unwrap(),
                &r,
            );
            let exact = grads(
                &f64s(&[x.clone(), u.clone()]),
                |v| (v[0].silu().unwrap() * &v[1]).unwrap(),
                &r,
            );
            assert_close(&fused, &exact, "silu_mul");

            let (cos, sin) = tables(shape[2], shape[3]);
            let fused = grads(
                std::slice::from_ref(&x),
                |v| rope(&v[0], &cos, &sin).unwrap(),
                &r,
            );
            let (c64, s64) = (
                cos.to_dtype(DType::F64).unwrap(),
                sin.to_dtype(DType::F64).unwrap(),
            );
            let exact = grads(
                &f64s(std::slice::from_ref(&x)),
                |v| rope_ops(&v[0], &c64, &s64),
                &r,
            );
            assert_close(&fused, &exact, "rope");
        }
    }

    #[test]
    fn a_mask_that_does_not_fit_the_scores_is_an_error() {
        let s = random(&[1, 1, 4, 4], 1);
        let mask = causal(3);
        let err = masked_softmax(&s, 1.0, Some(&mask))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a mask of 9 values for rows of 4"), "{err}");
    }
}
