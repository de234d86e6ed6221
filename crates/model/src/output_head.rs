//! The output head and the log-softmax of each position's target, as one autograd node:
//! `log softmax(x Wᵀ)[target]` for the final norm's output `x` and the frozen head `W` [vocab, hidden].
//!
//! Every loss the trainer computes (SFT's NLL, DPO's sequence log-probs, validation and perplexity)
//! reads only the targets' log-probs. Through tensor ops, the logits ([rows, vocab]: 110 MB for a
//! DPO step of 4 pairs on SmolLM2's 49,152 tokens) were a graph node behind a reshape: the backward
//! copied them to compute their gradient, then gave that gradient a zeroed tensor and an add, twice
//! (the reshape, then the product), before the head's product read it; and each row's log-sum-exp
//! (an exp per logit) was summed again. Here the op keeps the logits and the rows' log-sum-exps it
//! computed, overwrites the logits with their gradient in place, and multiplies: one buffer.
//!
//! Invariant: the same bits as the tensor-op form (the head's `FrozenMatmul`, then
//! `model::target_log_prob`), forward and backward (tests). CPU f32 only; elsewhere the model keeps
//! the tensor ops.

use crate::custom_op::{ids, to_storage, values};
use crate::exp::map_shifted_exps;
use crate::fused::{map_rows_reading, update_rows};
use crate::layers::{log_sum_exp, BaseWeight};
use crate::lora_linear::with_weight_values;
use crate::pool_gemm::{self, dense, transposed};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use std::sync::Mutex;

pub(crate) struct HeadLogProb {
    weight: BaseWeight,
    /// The forward's logits and rows' log-sum-exps, taken by the backward (which overwrites the
    /// logits with their gradient and reads each row's log-sum-exp instead of summing it again).
    kept: Mutex<Option<Kept>>,
}

struct Kept {
    logits: Vec<f32>,
    log_sum_exps: Vec<f64>,
}

impl HeadLogProb {
    /// The target log-probs, shaped as `targets` ([batch, seq]), of `x` [batch, seq, hidden].
    pub fn forward(
        weight: &BaseWeight,
        x: &Tensor,
        targets: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let op = HeadLogProb {
            weight: weight.clone(),
            kept: Mutex::new(None),
        };
        x.contiguous()?.apply_op2(&targets.contiguous()?, op)
    }

    /// (rows, hidden, vocab), or an error naming the shapes.
    fn sizes(&self, x: &[usize], targets: &[usize]) -> candle_core::Result<(usize, usize, usize)> {
        let (vocab, hidden) = self.weight.dims2()?;
        let rows: usize = targets.iter().product();
        if x.last() != Some(&hidden) || x.iter().product::<usize>() != rows * hidden {
            candle_core::bail!(
                "output head: x {x:?} does not give one row of {hidden} per target of {targets:?}"
            );
        }
        Ok((rows, hidden, vocab))
    }

    /// The logits of `x` and each row's log-sum-exp.
    fn kept(
        &self,
        x: &[f32],
        (rows, hidden, vocab): (usize, usize, usize),
    ) -> candle_core::Result<Kept> {
        let logits = with_weight_values(&self.weight, |w| {
            pool_gemm::matmul(
                dense(x, hidden),
                transposed(w, hidden),
                (rows, hidden, vocab),
            )
        })?;
        let [log_sum_exps] = map_rows_reading(rows, 1, vocab, |i, [out]| {
            out[0] = log_sum_exp(&logits[i * vocab..(i + 1) * vocab]);
        });
        Ok(Kept {
            logits,
            log_sum_exps,
        })
    }
}

impl CustomOp2 for HeadLogProb {
    fn name(&self) -> &'static str {
        "output-head-log-prob"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, targets) = (values(s1, l1, self.name())?, ids(s2, l2, self.name())?);
        let sizes = self.sizes(l1.dims(), l2.dims())?;
        let (kept, vocab) = (self.kept(x, sizes)?, sizes.2);
        // `model::target_log_prob`'s value: the target's logit less the row's log-sum-exp, in f64.
        let out = targets
            .iter()
            .enumerate()
            .map(
                |(i, &t)| match kept.logits[i * vocab..(i + 1) * vocab].get(t as usize) {
                    Some(x) => (*x as f64 - kept.log_sum_exps[i]) as f32,
                    None => 0.0,
                },
            )
            .collect();
        *self.kept.lock().map_err(|_| poisoned())? = Some(kept);
        Ok(to_storage(out, l2.shape()))
    }

    /// `dlogits = g · (onehot − softmax)` per row, written over the kept logits, then `dx = dlogits W`.
    fn bwd(
        &self,
        x: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() {
            return Ok((None, None));
        }
        let sizes @ (rows, hidden, vocab) = self.sizes(x.dims(), targets.dims())?;
        let kept = self.kept.lock().map_err(|_| poisoned())?.take();
        let Kept {
            mut logits,
            log_sum_exps,
        } = match kept {
            Some(kept) => kept,
            // A second backward through the same graph: compute them again.
            None => {
                let x = x.contiguous()?;
                let (s, l) = x.storage_and_layout();
                match &*s {
                    candle_core::Storage::Cpu(c) => self.kept(values(c, l, self.name())?, sizes)?,
                    _ => candle_core::bail!("output head: CPU only"),
                }
            }
        };
        let t: Vec<u32> = targets.flatten_all()?.to_vec1()?;
        let g: Vec<f32> = grad.flatten_all()?.to_vec1()?;
        if t.len() != rows || g.len() != rows {
            candle_core::bail!(
                "output head: {} targets and {} gradients for {rows} rows",
                t.len(),
                g.len()
            );
        }
        // The arithmetic of `model::target_log_prob`'s backward, in place.
        update_rows(&mut logits, vocab, |i, row| {
            let target = t[i] as usize;
            if target >= vocab {
                row.fill(0.0);
                return;
            }
            let (lse, g) = (log_sum_exps[i], g[i] as f64);
            map_shifted_exps(row, lse, |e| (-g * e) as f32);
            row[target] = (row[target] as f64 + g) as f32;
        });
        let dx = with_weight_values(&self.weight, |w| {
            pool_gemm::matmul(
                dense(&logits, vocab),
                dense(w, hidden),
                (rows, vocab, hidden),
            )
        })?;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), None))
    }
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("output head: a thread panicked holding the logits".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{frozen_matmul, target_log_prob};
    use candle_core::{Device, Var};

    use crate::test_values::tensor_bits as bits;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        crate::test_values::uniform(n, seed, 1.0)
    }

    /// The log-probs and `dx` under a random linear loss, bit for bit against the head's product
    /// followed by `target_log_prob`, at SmolLM2's head (cut to 8,192 tokens), the tiny byte
    /// vocabulary and odd sizes; one target past the vocabulary (log-prob 0, no gradient). A second
    /// backward through the same graph gives the same gradient.
    #[test]
    fn the_same_bits_as_the_head_product_then_target_log_prob() {
        let dev = &Device::Cpu;
        for (case, (batch, t, hidden, vocab)) in
            [(2, 40, 576, 8192), (1, 5, 64, 259), (3, 17, 96, 1000)]
                .into_iter()
                .enumerate()
        {
            let (rows, seed) = (batch * t, case as u64 * 10);
            let x = Var::from_vec(random(rows * hidden, seed), (batch, t, hidden), dev).unwrap();
            let w =
                Tensor::from_vec(random(vocab * hidden, seed + 1), (vocab, hidden), dev).unwrap();
            let mut targets: Vec<u32> = random(rows, seed + 2)
                .iter()
                .map(|v| ((v + 1.0) / 2.0 * (vocab - 1) as f32) as u32)
                .collect();
            targets[rows / 2] = vocab as u32 + 3;
            let targets = Tensor::from_vec(targets, (batch, t), dev).unwrap();
            let dy = Tensor::from_vec(random(rows, seed + 3), (batch, t), dev).unwrap();

            let logits = frozen_matmul(&x.as_tensor().reshape((rows, hidden)).unwrap(), &w)
                .unwrap()
                .reshape((batch, t, vocab))
                .unwrap();
            let want = target_log_prob(&logits, &targets).unwrap();
            let got = HeadLogProb::forward(&BaseWeight::Dense(w.clone()), x.as_tensor(), &targets)
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "case {case}");
            assert!(bits(&got) == bits(&want), "case {case}: log-probs differ");
            let loss = (got * &dy).unwrap().sum_all().unwrap();
            let dx_want = (want * &dy).unwrap().sum_all().unwrap().backward().unwrap();
            let dx_want = dx_want.get(x.as_tensor()).unwrap();
            for attempt in ["first", "second"] {
                let grads = loss.backward().unwrap();
                let dx = grads.get(x.as_tensor()).unwrap();
                assert!(
                    bits(dx) == bits(dx_want),
                    "case {case}: dx differs ({attempt} backward)"
                );
            }
        }
    }

    #[test]
    fn targets_that_do_not_fit_the_rows_are_an_error_naming_the_shapes() {
        let dev = &Device::Cpu;
        let x = Tensor::zeros((2, 3, 8), candle_core::DType::F32, dev).unwrap();
        let w = Tensor::zeros((10, 8), candle_core::DType::F32, dev).unwrap();
        let targets = Tensor::zeros((2, 4), candle_core::DType::U32, dev).unwrap();
        let err = HeadLogProb::forward(&BaseWeight::Dense(w), &x, &targets)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[2, 3, 8]") && err.contains("[2, 4]"), "{err}");
    }
}
