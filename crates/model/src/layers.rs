//! The model's primitives, beneath `model.rs` and the fused ops that `model.rs` uses: a frozen base
//! weight (dense or kept quantized) and its products whose backward computes `dx` only, softmax and
//! log-softmax over the last dim, and the fused log-prob of each row's target token. The fused ops
//! (`lora_linear.rs`, `output_head.rs`) import these from here, so nothing imports `model.rs` back.

use super::{fused, pool_gemm};
use candle_core::{DType, Device, Tensor, D};
use std::sync::Arc;

/// A frozen base weight [out, in]: a dense tensor, or a GGUF tensor kept in its quantization (for
/// decoding, where the quantized matmul reads a quarter of the bytes, and for QLoRA training, where
/// the base stays small and only the adapters are f32).
#[derive(Clone)]
pub enum BaseWeight {
    Dense(Tensor),
    Quantized(Arc<crate::quantized::QuantizedWeight>),
}

impl BaseWeight {
    pub fn dims2(&self) -> candle_core::Result<(usize, usize)> {
        match self {
            BaseWeight::Dense(t) => t.dims2(),
            BaseWeight::Quantized(q) => q.dims2(),
        }
    }

    /// The weight as a dense f32 tensor (a quantized one is dequantized: a copy).
    pub fn dense(&self) -> candle_core::Result<Tensor> {
        match self {
            BaseWeight::Dense(t) => Ok(t.clone()),
            BaseWeight::Quantized(q) => q.dequantize(&Device::Cpu),
        }
    }

    /// `x Wᵀ` for `x` [rows, in], with a gradient to `x` only. A quantized weight in a training pass
    /// is dequantized for the product (QLoRA's forward: exact, so its gradient is the true one); in
    /// inference it runs candle's quantized kernel, which also quantizes `x` to 8 bits per block.
    pub(crate) fn matmul_t(&self, x: &Tensor, training: bool) -> candle_core::Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => frozen_matmul(x, w),
            BaseWeight::Quantized(q) => x.contiguous()?.apply_op1(FrozenQuantMatmul {
                weight: q.clone(),
                exact: training,
            }),
        }
    }
}

/// Decoding's `x Wᵀ` for several frozen weights of the same `x` [rows, in] (a layer's q, k and v;
/// its gate and up), nothing tracked: the quantized kernel's products of them all from one
/// quantization of `x` and one wake of the pool, each the bits it gets alone. None unless every
/// weight is quantized in a format that kernel shares (then the caller multiplies one by one).
pub(crate) fn decoding_matmuls_t(
    weights: &[&BaseWeight],
    x: &Tensor,
) -> candle_core::Result<Option<Vec<Tensor>>> {
    let quantized: Option<Vec<&crate::quantized::QuantizedWeight>> = weights
        .iter()
        .map(|w| match w {
            BaseWeight::Quantized(q) => Some(q.as_ref()),
            BaseWeight::Dense(_) => None,
        })
        .collect();
    let Some(quantized) = quantized else {
        return Ok(None);
    };
    let (rows, _) = x.dims2()?;
    let products = with_f32_values(x, |v| {
        crate::quantized::QuantizedWeight::matmul_t_shared(&quantized, v, rows)
    });
    let Some(products) = products.transpose()?.flatten() else {
        return Ok(None);
    };
    products
        .into_iter()
        .zip(weights)
        .map(|(y, w)| Tensor::from_vec(y, (rows, w.dims2()?.0), x.device()))
        .collect::<candle_core::Result<Vec<_>>>()
        .map(Some)
}

/// `x Wᵀ` for a frozen `W` [out, in] whose backward computes only `dx = dy W`. candle's own matmul
/// backward also computes `dW = dyᵀ x` for every operand, wanted or not: for a frozen base that is a
/// third of the backward's FLOPs, and a full-size gradient of every base weight held until the step ends.
struct FrozenMatmul {
    weight: Tensor,
}

fn tensor_from_storage(
    s: &candle_core::CpuStorage,
    l: &candle_core::Layout,
) -> candle_core::Result<Tensor> {
    use candle_core::CpuStorage;
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("frozen linear: input must be contiguous".into()))?;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[start..end], l.shape(), &Device::Cpu),
        CpuStorage::F64(v) => Tensor::from_slice(&v[start..end], l.shape(), &Device::Cpu),
        _ => candle_core::bail!("frozen linear: the trainer computes in f32 or f64"),
    }
}

/// A custom op's result: the storage and shape of a tensor computed on the CPU.
fn cpu_result(y: &Tensor) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
    let (storage, _) = y.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(c) => Ok((c.clone(), y.shape().clone())),
        _ => candle_core::bail!("frozen linear: CPU only"),
    }
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (out, input) = self.weight.dims2()?;
        if let (candle_core::CpuStorage::F32(x), Some((start, end))) = (s, l.contiguous_offsets()) {
            // `x Wᵀ` on candle's pool (the same bits as its matmul, without a second pool).
            let y = with_f32_values(&self.weight, |w| {
                let rows = (end - start) / input.max(1);
                pool_gemm::matmul(
                    pool_gemm::dense(&x[start..end], input),
                    pool_gemm::transposed(w, input),
                    (rows, input, out),
                )
            });
            if let Some(y) = y {
                let mut dims = l.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = out;
                }
                return Ok(crate::custom_op::to_storage(y, dims));
            }
        }
        cpu_result(&tensor_from_storage(s, l)?.matmul(&self.weight.t()?)?)
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (out, input) = self.weight.dims2()?;
        if grad.device().is_cpu() && grad.dtype() == DType::F32 && grad.rank() == 2 {
            // `dy W` on candle's pool.
            let grad = grad.contiguous()?;
            let rows = grad.dim(0)?;
            let dx = with_f32_values(&grad, |dy| {
                with_f32_values(&self.weight, |w| {
                    pool_gemm::matmul(
                        pool_gemm::dense(dy, out),
                        pool_gemm::dense(w, input),
                        (rows, out, input),
                    )
                })
            })
            .flatten();
            if let Some(dx) = dx {
                return Ok(Some(Tensor::from_vec(dx, (rows, input), grad.device())?));
            }
        }
        Ok(Some(grad.matmul(&self.weight)?))
    }
}

/// `f` of a contiguous f32 CPU tensor's values, or None for any other tensor.
fn with_f32_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    crate::custom_op::f32_view(t).map(|v| f(v.get()))
}

/// `x Wᵀ` for a frozen quantized `W`: in inference, the quantized kernels (the activations quantized
/// to 8 bits per block, as llama.cpp does); in training (QLoRA), `W` dequantized for the moment a
/// product needs it, so a step never holds the whole base in f32, and the product and the backward
/// `dx = dy W` those of a dense frozen weight ([`FrozenMatmul`], on candle's pool: the same bits as
/// candle's matmul, which ran them before on its own threads, 12% slower a step).
struct FrozenQuantMatmul {
    weight: Arc<crate::quantized::QuantizedWeight>,
    /// Dequantize `W` and multiply in f32 (training), instead of the quantized kernel (inference).
    exact: bool,
}

impl candle_core::CustomOp1 for FrozenQuantMatmul {
    fn name(&self) -> &'static str {
        "frozen-quantized-linear"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        if !matches!(s, candle_core::CpuStorage::F32(_)) {
            candle_core::bail!("a quantized base computes in f32");
        }
        if !self.exact {
            // rtlab's Q8_0 kernel where it applies (the same numbers, faster), else candle's.
            if let (candle_core::CpuStorage::F32(v), Some((start, end))) =
                (s, l.contiguous_offsets())
            {
                let mut dims = l.dims().to_vec();
                let k = dims.last().copied().unwrap_or(0).max(1);
                if let Some(y) = self.weight.matmul_t(&v[start..end], (end - start) / k)? {
                    if let Some(last) = dims.last_mut() {
                        *last = self.weight.dims2()?.0;
                    }
                    return Ok(crate::custom_op::to_storage(y, dims));
                }
            }
            return candle_core::CustomOp1::cpu_fwd(self.weight.qtensor()?.as_ref(), s, l);
        }
        // QLoRA's forward: W dequantized for this product only, then the dense frozen product (on
        // candle's pool, as the f32 base's).
        let weight = self.weight.dequantize(&Device::Cpu)?;
        candle_core::CustomOp1::cpu_fwd(&FrozenMatmul { weight }, s, l)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let weight = self.weight.dequantize(grad.device())?;
        FrozenMatmul { weight }.bwd(arg, res, grad)
    }
}

/// `x Wᵀ` for a frozen `W`, gradient to `x` only.
pub(crate) fn frozen_matmul(x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(FrozenMatmul {
        weight: weight.clone(),
    })
}

/// Softmax over the last dim from exp/sum; the max is detached (softmax does not depend on it).
pub fn softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dim from exp/sum/log.
pub fn log_softmax_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// `log softmax(logits)[target]` per row, fused: the log-prob of each row's target token, from one
/// pass over the row (max, then Σ exp), with a backward that writes `g · (onehot − softmax)` in one
/// more pass. The composed form (`log_softmax_last` then `gather`) materializes five [rows, vocab]
/// tensors forward and as many backward; with a 49k vocabulary that memory traffic is a large part
/// of a small model's step. A target ≥ vocab (none in practice) gives 0 and no gradient.
struct TargetLogProb;

/// The row's log-sum-exp, in f64.
pub(crate) fn log_sum_exp<T: candle_core::WithDType>(row: &[T]) -> f64 {
    let max = row
        .iter()
        .map(|x| x.to_f64())
        .fold(f64::NEG_INFINITY, f64::max);
    // Summed in order, as `Iterator::sum` would; the exps a block at a time.
    let mut sum = -0.0;
    crate::exp::shifted_exps(row, max, |_, exps| {
        for e in exps {
            sum += e;
        }
    });
    max + sum.ln()
}

fn target_log_probs<T: candle_core::WithDType + Default>(
    logits: &[T],
    targets: &[u32],
    vocab: usize,
) -> Vec<T> {
    let [out] = fused::map_rows_reading(targets.len(), 1, vocab, |i, [out]| {
        let row = &logits[i * vocab..(i + 1) * vocab];
        out[0] = match row.get(targets[i] as usize) {
            Some(x) => T::from_f64(x.to_f64() - log_sum_exp(row)),
            None => T::from_f64(0.0),
        };
    });
    out
}

fn target_log_prob_grads<T: candle_core::WithDType + Default>(
    logits: &[T],
    targets: &[u32],
    grads: &[T],
    vocab: usize,
) -> Vec<T> {
    let [out] = fused::map_rows(targets.len(), vocab, |i, [d]| {
        let (row, t) = (&logits[i * vocab..(i + 1) * vocab], targets[i] as usize);
        if t >= vocab {
            return;
        }
        let (lse, g) = (log_sum_exp(row), grads[i].to_f64());
        crate::exp::shifted_exps(row, lse, |at, exps| {
            for (dj, e) in d[at..at + exps.len()].iter_mut().zip(exps) {
                *dj = T::from_f64(-g * e);
            }
        });
        d[t] = T::from_f64(d[t].to_f64() + g);
    });
    out
}

/// The contiguous values of a CPU tensor argument.
fn contiguous<'a, T: candle_core::WithDType>(
    v: &'a [T],
    l: &candle_core::Layout,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("target log-prob: inputs must be contiguous".into())
    })?;
    Ok(&v[start..end])
}

impl candle_core::CustomOp2 for TargetLogProb {
    fn name(&self) -> &'static str {
        "target-log-prob"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let vocab = *l1.dims().last().unwrap_or(&1);
        let CpuStorage::U32(t) = s2 else {
            candle_core::bail!("target log-prob: targets must be u32")
        };
        let targets = contiguous(t, l2)?;
        let out = match s1 {
            CpuStorage::F32(x) => {
                CpuStorage::F32(target_log_probs(contiguous(x, l1)?, targets, vocab))
            }
            CpuStorage::F64(x) => {
                CpuStorage::F64(target_log_probs(contiguous(x, l1)?, targets, vocab))
            }
            _ => candle_core::bail!("target log-prob: the trainer computes in f32 or f64"),
        };
        Ok((out, l2.shape().clone()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let vocab = logits.dim(D::Minus1)?;
        let t: Vec<u32> = targets.flatten_all()?.to_vec1()?;
        let d = match logits.dtype() {
            DType::F64 => {
                let g = target_log_prob_grads::<f64>(
                    &logits.flatten_all()?.to_vec1()?,
                    &t,
                    &grad.flatten_all()?.to_vec1()?,
                    vocab,
                );
                Tensor::from_vec(g, logits.shape(), logits.device())?
            }
            _ => {
                let g = target_log_prob_grads::<f32>(
                    &logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
                    &t,
                    &grad.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?,
                    vocab,
                );
                Tensor::from_vec(g, logits.shape(), logits.device())?.to_dtype(logits.dtype())?
            }
        };
        Ok((Some(d), None))
    }
}

/// The log-prob of each position's target under `logits` [.., vocab]: [..], differentiable.
pub fn target_log_prob(logits: &Tensor, targets: &Tensor) -> candle_core::Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, TargetLogProb)
}
