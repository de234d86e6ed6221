//! A LoRA-adapted frozen linear, `y = x Wᵀ (+ b) + s · (dropout(x) Aᵀ) Bᵀ`, as one autograd node.
//!
//! Written with tensor ops, an adapted linear is seven nodes of candle's graph: the two reshapes
//! around it, the frozen product, the two low-rank products, the scale and the sum. candle's
//! backward gives every node's input a fresh zeroed gradient and adds into it (`zeros_like`, then
//! `add`: two passes over memory and two allocations per node, even where a node has one consumer).
//! With all seven projections of every layer adapted, as the DPO and PEFT recipes do, those passes
//! were an eighth of a training step's time. Here the whole linear is one node: its forward and
//! backward run the same products and the same elementwise steps, without the graph's copies.
//!
//! Invariant: the same bits as the tensor-op form (`FrozenMatmul`, `pool_gemm::matmul_t` twice,
//! `* s`, `+`), forward and backward, `dx`, `dA` and `dB` (tests, with and without dropout and bias):
//! training numbers do not change with it. CPU f32 only; elsewhere the model keeps the tensor ops.

use crate::custom_op::{to_storage, values};
use crate::layers::BaseWeight;
use crate::pool_gemm::{self, dense, matmul_t_gradients, transposed};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use std::sync::OnceLock;

/// `f` of a frozen weight's f32 values: a quantized one is dequantized for the call (QLoRA's exact
/// forward and backward, so a step never holds the whole base in f32).
pub(crate) fn with_weight_values<R>(
    weight: &BaseWeight,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    let dense = weight.dense()?.contiguous()?;
    let (storage, layout) = dense.storage_and_layout();
    Ok(f(cpu_values(&storage, layout, "adapted linear's weight")?))
}

/// The op: the frozen parts are fields, `x`, `A` and `B` its three arguments.
pub(crate) struct LoraLinear {
    pub weight: BaseWeight,
    pub bias: Option<Tensor>,
    /// `alpha / r` (or `alpha / √r`), applied as candle's `affine(s, 0)` is.
    pub scale: f64,
    /// Inverted dropout's mask over `x` (0 or 1/keep), drawn by the caller as the tensor-op form draws it.
    pub dropout_mask: Option<Vec<f32>>,
    /// What the backward reuses from the forward: `x Aᵀ`, and `dropout(x)` where there is a mask.
    saved: OnceLock<Saved>,
}

struct Saved {
    low_input: Vec<f32>,
    dropped_x: Option<Vec<f32>>,
}

/// The sizes of one application: `rows` of `input` values in, `out` values out, rank `r`.
#[derive(Clone, Copy)]
struct Sizes {
    rows: usize,
    input: usize,
    out: usize,
    r: usize,
}

impl LoraLinear {
    pub fn new(
        weight: BaseWeight,
        bias: Option<Tensor>,
        scale: f64,
        dropout_mask: Option<Vec<f32>>,
    ) -> LoraLinear {
        LoraLinear {
            weight,
            bias,
            scale,
            dropout_mask,
            saved: OnceLock::new(),
        }
    }

    /// `y` for `x` [.., in] (contiguous), `a` [r, in], `b` [out, r]: `y` [.., out].
    pub fn forward(self, x: &Tensor, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?
            .apply_op3(&a.contiguous()?, &b.contiguous()?, self)
    }

    fn sizes(&self, x: &[usize], a: &[usize], b: &[usize]) -> candle_core::Result<Sizes> {
        let input = x.last().copied().unwrap_or(0);
        let rows = x[..x.len().saturating_sub(1)].iter().product();
        let weight = self.weight.dims2()?;
        match (a, b) {
            ([r, a_in], [out, b_r]) if *a_in == input && b_r == r && weight == (*out, input) => {
                Ok(Sizes {
                    rows,
                    input,
                    out: *out,
                    r: *r,
                })
            }
            _ => candle_core::bail!(
                "adapted linear: x {x:?}, weight {weight:?}, A {a:?} and B {b:?} do not fit \
                 (A must be [r, in] and B [out, r])"
            ),
        }
    }
}

/// The values of a contiguous f32 tensor's storage on the CPU.
fn cpu_values<'a>(
    s: &'a candle_core::Storage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(c) => values(c, l, op),
        _ => candle_core::bail!("{op}: CPU only"),
    }
}

/// `v · s + 0`, as candle's `affine(s, 0.)` rounds it (the `+ 0` turns -0 into +0).
fn scaled(v: f32, s: f32) -> f32 {
    v * s + 0.0
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
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
        let (x, a, b) = (
            values(s1, l1, self.name())?,
            values(s2, l2, self.name())?,
            values(s3, l3, self.name())?,
        );
        let n = self.sizes(l1.dims(), l2.dims(), l3.dims())?;
        let mut y = with_weight_values(&self.weight, |w| {
            pool_gemm::matmul(
                dense(x, n.input),
                transposed(w, n.input),
                (n.rows, n.input, n.out),
            )
        })?;
        if let Some(bias) = &self.bias {
            let bias = bias.flatten_all()?.to_vec1::<f32>()?;
            if bias.len() != n.out {
                candle_core::bail!(
                    "adapted linear: a bias of {} values for {} outputs",
                    bias.len(),
                    n.out
                );
            }
            for row in y.chunks_mut(n.out) {
                for (v, b) in row.iter_mut().zip(&bias) {
                    *v += *b;
                }
            }
        }
        let dropped_x = match &self.dropout_mask {
            Some(mask) if mask.len() == x.len() => {
                Some(x.iter().zip(mask).map(|(v, m)| v * m).collect::<Vec<f32>>())
            }
            Some(mask) => candle_core::bail!(
                "adapted linear: a dropout mask of {} values for {} inputs",
                mask.len(),
                x.len()
            ),
            None => None,
        };
        let xd = dropped_x.as_deref().unwrap_or(x);
        let low_input = pool_gemm::matmul(
            dense(xd, n.input),
            transposed(a, n.input),
            (n.rows, n.input, n.r),
        );
        let low = pool_gemm::matmul(
            dense(&low_input, n.r),
            transposed(b, n.r),
            (n.rows, n.r, n.out),
        );
        let s = self.scale as f32;
        for (v, l) in y.iter_mut().zip(&low) {
            *v += scaled(*l, s);
        }
        // A second forward of the same op (never done by the model) would keep the first's values.
        let _ = self.saved.set(Saved {
            low_input,
            dropped_x,
        });
        let mut dims = l1.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n.out;
        }
        Ok(to_storage(y, dims))
    }

    /// `dx = dy W + (s·dy B A) ⊙ mask` (none where `x` is untracked: the first layer's input),
    /// `dA = (s·dy B)ᵀ dropout(x)` and `dB = (s·dy)ᵀ (dropout(x) Aᵀ)`, each as the tensor-op form's autograd
    /// computes it.
    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.get().ok_or_else(|| {
            candle_core::Error::Msg("adapted linear: backward before forward".into())
        })?;
        let n = self.sizes(x.dims(), a.dims(), b.dims())?;
        let (dy, a, b) = (dy.contiguous()?, a.contiguous()?, b.contiguous()?);
        let ((dy_s, dy_l), (a_s, a_l), (b_s, b_l)) = (
            dy.storage_and_layout(),
            a.storage_and_layout(),
            b.storage_and_layout(),
        );
        let (g, a_v, b_v) = (
            cpu_values(&dy_s, dy_l, self.name())?,
            cpu_values(&a_s, a_l, self.name())?,
            cpu_values(&b_s, b_l, self.name())?,
        );
        if g.len() != n.rows * n.out {
            candle_core::bail!(
                "adapted linear: a gradient of {} values for {} rows of {}",
                g.len(),
                n.rows,
                n.out
            );
        }
        let s = self.scale as f32;
        let scaled_dy: Vec<f32> = g.iter().map(|v| scaled(*v, s)).collect();
        let (d_low_input, db) =
            matmul_t_gradients(&saved.low_input, b_v, &scaled_dy, (n.rows, n.r, n.out));
        let x_values = x.contiguous()?;
        let (x_s, x_l) = x_values.storage_and_layout();
        let xd = match &saved.dropped_x {
            Some(xd) => xd.as_slice(),
            None => cpu_values(&x_s, x_l, self.name())?,
        };
        let (d_dropped_x, da) = matmul_t_gradients(xd, a_v, &d_low_input, (n.rows, n.input, n.r));
        let dx = if x.track_op() {
            let mut dx = with_weight_values(&self.weight, |w| {
                pool_gemm::matmul(dense(g, n.out), dense(w, n.input), (n.rows, n.out, n.input))
            })?;
            match &self.dropout_mask {
                Some(mask) => {
                    for ((v, d), m) in dx.iter_mut().zip(&d_dropped_x).zip(mask) {
                        *v += d * m;
                    }
                }
                None => {
                    for (v, d) in dx.iter_mut().zip(&d_dropped_x) {
                        *v += d;
                    }
                }
            }
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        Ok((
            dx,
            Some(Tensor::from_vec(da, a.shape(), a.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::frozen_matmul;
    use candle_core::{Device, Var};

    use crate::test_values::tensor_bits as bits;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::test_values::uniform(n, seed, 1.0)
    }

    /// The tensor-op form the op replaces (model.rs's `Linear::forward` before it).
    fn tensor_ops(
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        (a, b, s): (&Tensor, &Tensor, f64),
        mask: Option<&[f32]>,
    ) -> Tensor {
        let dims = x.dims().to_vec();
        let input = *dims.last().unwrap();
        let x2 = x.reshape((x.elem_count() / input, input)).unwrap();
        let mut y = frozen_matmul(&x2, w).unwrap();
        if let Some(bias) = bias {
            y = y.broadcast_add(bias).unwrap();
        }
        let xd = match mask {
            Some(m) => x2
                .mul(&Tensor::from_slice(m, x2.shape(), x2.device()).unwrap())
                .unwrap(),
            None => x2,
        };
        let low = pool_gemm::matmul_t(&pool_gemm::matmul_t(&xd, a).unwrap(), b).unwrap();
        y = (y + (low * s).unwrap()).unwrap();
        let mut out = dims;
        *out.last_mut().unwrap() = w.dim(0).unwrap();
        y.reshape(out).unwrap()
    }

    /// Forward values and the gradients of `x`, `A` and `B` under a random linear loss, bit for
    /// bit, at a projection's shapes (SmolLM2's q and gate, Qwen2's biased k), with and without
    /// dropout, with a tracked and an untracked input.
    #[test]
    fn the_same_bits_as_the_tensor_op_form_forward_and_backward() {
        let dev = &Device::Cpu;
        for (case, (batch, t, input, out, r)) in [
            (2, 40, 576, 576, 16),
            (3, 33, 576, 1536, 8),
            (1, 7, 64, 32, 4),
            (4, 64, 896, 128, 16),
        ]
        .into_iter()
        .enumerate()
        {
            let rows = batch * t;
            for (with_bias, with_dropout, x_tracked) in [
                (false, false, true),
                (true, false, true),
                (false, true, true),
                (true, true, false),
            ] {
                let seed = case as u64 * 10;
                let x = Var::from_vec(random(rows * input, seed), (batch, t, input), dev).unwrap();
                let w = Tensor::from_vec(random(out * input, seed + 1), (out, input), dev).unwrap();
                let bias =
                    with_bias.then(|| Tensor::from_vec(random(out, seed + 2), out, dev).unwrap());
                let a = Var::from_vec(random(r * input, seed + 3), (r, input), dev).unwrap();
                let b = Var::from_vec(random(out * r, seed + 4), (out, r), dev).unwrap();
                let mask: Option<Vec<f32>> = with_dropout.then(|| {
                    random(rows * input, seed + 5)
                        .iter()
                        .map(|v| if *v > -0.8 { 1.0 / 0.9 } else { 0.0 })
                        .collect()
                });
                let dy =
                    Tensor::from_vec(random(rows * out, seed + 6), (batch, t, out), dev).unwrap();
                let x_in = if x_tracked {
                    x.as_tensor().clone()
                } else {
                    x.as_tensor().detach()
                };
                let want = tensor_ops(
                    &x_in,
                    &w,
                    bias.as_ref(),
                    (a.as_tensor(), b.as_tensor(), 2.0),
                    mask.as_deref(),
                );
                let op = LoraLinear::new(BaseWeight::Dense(w.clone()), bias.clone(), 2.0, mask);
                let got = op.forward(&x_in, a.as_tensor(), b.as_tensor()).unwrap();
                let what = format!("case {case}, bias {with_bias}, dropout {with_dropout}");
                assert_eq!(got.dims(), want.dims(), "{what}");
                assert!(bits(&got) == bits(&want), "forward differs: {what}");
                let grads_want = (want * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                let grads_got = (got * &dy).unwrap().sum_all().unwrap().backward().unwrap();
                for (name, var) in [
                    ("x", x.as_tensor()),
                    ("A", a.as_tensor()),
                    ("B", b.as_tensor()),
                ] {
                    let (g, w) = (grads_got.get(var), grads_want.get(var));
                    if name == "x" && !x_tracked {
                        assert!(
                            g.is_none() && w.is_none(),
                            "{what}: an untracked x got a gradient"
                        );
                        continue;
                    }
                    let (g, w) = (g.unwrap(), w.unwrap());
                    assert_eq!(g.dims(), w.dims(), "{what}: d{name}'s shape");
                    assert!(bits(g) == bits(w), "{what}: d{name} differs");
                }
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_an_error_naming_them() {
        let dev = &Device::Cpu;
        let x = Tensor::zeros((3, 8), candle_core::DType::F32, dev).unwrap();
        let w = Tensor::zeros((4, 8), candle_core::DType::F32, dev).unwrap();
        let a = Tensor::zeros((2, 7), candle_core::DType::F32, dev).unwrap();
        let b = Tensor::zeros((4, 2), candle_core::DType::F32, dev).unwrap();
        let err = LoraLinear::new(BaseWeight::Dense(w), None, 1.0, None)
            .forward(&x, &a, &b)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[2, 7]") && err.contains("A must be [r, in]"),
            "{err}"
        );
    }
}
