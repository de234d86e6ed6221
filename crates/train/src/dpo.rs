//! Direct Preference Optimization (Rafailov et al., 2023) of LoRA adapters, and IPO (Azar et al.,
//! 2023), computed as TRL's `DPOTrainer` computes them.
//!
//! A pair is a prompt with a chosen and a rejected response. Its log-probability under a model is
//! the sum of the response tokens' log-probs (the prompt is not scored); IPO averages over the
//! response's tokens instead, as TRL does for `loss_type="ipo"`. With `h` = (policy − reference)
//! log-ratio of chosen minus that of rejected:
//!
//! - `sigmoid`: `−log σ(β·h)`, the DPO paper's loss;
//! - `ipo`: `(h − 1/(2β))²`.
//!
//! The implicit rewards are `β·(policy − reference)` of each response; their difference is the
//! reward margin, and the reward accuracy is the share of pairs whose chosen reward is the higher.
//!
//! The reference never changes, so its log-probs are computed once, before the first step, and kept
//! in the run directory. With LoRA the two references cost no second model: `base` is a forward
//! with the adapters switched off, and `adapter` (the SFT start, frozen) is the policy before its
//! first step.

use super::TrainError;
use candle_core::{DType, Tensor};
use rtlab_model::examples::{self, Example};
use rtlab_model::model::{CausalLm, Pass};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Loss {
    Sigmoid,
    Ipo,
}

impl Loss {
    pub fn parse(name: &str) -> Result<Loss, TrainError> {
        match name {
            "sigmoid" => Ok(Loss::Sigmoid),
            "ipo" => Ok(Loss::Ipo),
            other => Err(TrainError::Input(format!(
                "train_dpo: loss {other:?} is not one rtlab knows: use \"sigmoid\" (the DPO paper's) or \"ipo\""
            ))),
        }
    }
}

/// Which frozen model the policy is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Reference {
    /// The base without adapters.
    Base,
    /// The adapters as they start (the SFT adapter, when one is given).
    Adapter,
}

impl Reference {
    pub fn parse(name: &str) -> Result<Reference, TrainError> {
        match name {
            "base" => Ok(Reference::Base),
            "adapter" => Ok(Reference::Adapter),
            other => Err(TrainError::Input(format!(
                "train_dpo: reference {other:?}: use \"base\" (the base model without adapters) or \"adapter\" (a frozen copy of the starting adapter)"
            ))),
        }
    }
}

/// One tokenized preference pair; both share the prompt's tokens.
#[derive(Debug, Clone)]
pub struct PairExample {
    pub chosen: Example,
    pub rejected: Example,
}

impl PairExample {
    pub fn tokens(&self) -> usize {
        self.chosen.ids.len() + self.rejected.ids.len()
    }
}

/// The DPO settings that shape the loss.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Settings {
    pub beta: f64,
    pub loss: Loss,
    pub reference: Reference,
}

/// Per-pair log-probs of chosen and rejected responses (one entry per pair).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PairLogps {
    pub chosen: Vec<f64>,
    pub rejected: Vec<f64>,
}

/// Checks the pairs as TRL's format has them: the three columns' strings, no empty text, no pair
/// whose chosen is its rejected (it would teach nothing and hides a bug upstream).
pub fn check_pairs(rows: &[(String, String, String)]) -> Result<(), TrainError> {
    if rows.is_empty() {
        return Err(TrainError::Input(
            "train_dpo: the pairs have no rows: nothing to prefer (did preference_pairs find no prompt with both a passing and a failing answer?)".into(),
        ));
    }
    for (row, (_, chosen, rejected)) in rows.iter().enumerate() {
        if chosen.trim().is_empty() || rejected.trim().is_empty() {
            return Err(TrainError::Input(format!(
                "train_dpo: row {row}: the {} response is empty",
                if chosen.trim().is_empty() {
                    "chosen"
                } else {
                    "rejected"
                }
            )));
        }
        if chosen == rejected {
            return Err(TrainError::Input(format!(
                "train_dpo: row {row}: chosen and rejected are the same text, so the pair prefers nothing; drop it (preference_pairs never makes one)"
            )));
        }
    }
    Ok(())
}

/// Tokenizes each (prompt, chosen, rejected) through the template, as `train_lora` does its rows.
pub fn build(
    tok: &tokenizers::Tokenizer,
    rows: &[(String, String, String)],
    template: &str,
    max_len: usize,
    eos: u32,
    too_long: examples::TooLong,
) -> Result<(Vec<PairExample>, Vec<usize>), TrainError> {
    let chosen: Vec<(String, String)> = rows
        .iter()
        .map(|(p, c, _)| (p.clone(), c.clone()))
        .collect();
    let rejected: Vec<(String, String)> = rows
        .iter()
        .map(|(p, _, r)| (p.clone(), r.clone()))
        .collect();
    // The same prompts, so both sides skip the same rows.
    let (c, skipped) = examples::build(tok, &chosen, template, max_len, eos, too_long)?;
    let (r, _) = examples::build(tok, &rejected, template, max_len, eos, too_long)?;
    Ok((
        c.into_iter()
            .zip(r)
            .map(|(chosen, rejected)| PairExample { chosen, rejected })
            .collect(),
        skipped,
    ))
}

/// The log-probs of each row's scored tokens, `[batch]`, from each position's target log-prob
/// `picked` [batch, seq]: summed, or averaged over the row's scored tokens when `average` (IPO).
pub fn sequence_logps(
    picked: &Tensor,
    mask: &Tensor,
    average: bool,
) -> candle_core::Result<Tensor> {
    let summed = (picked * mask)?.sum(1)?;
    if average {
        summed / mask.sum(1)?.clamp(1.0, f64::MAX)?
    } else {
        Ok(summed)
    }
}

/// The (chosen, rejected) log-probs, `[k]` and `[k]`, of `pairs` under the model in `pass`: one forward over
/// the 2k sequences, chosen first, as TRL's concatenated forward does.
pub fn pair_logps(
    model: &CausalLm,
    pairs: &[&PairExample],
    pad: u32,
    loss: Loss,
    pass: &mut Pass,
) -> candle_core::Result<(Tensor, Tensor)> {
    let b = pair_batch(model, pairs, pad)?;
    pair_logps_of(
        &model.target_log_probs(&b.inputs, &b.targets, pass)?,
        &b,
        pairs.len(),
        loss,
    )
}

/// The batch of `pairs`' 2k sequences, chosen first, as [`pair_logps`] runs it.
pub fn pair_batch(
    model: &CausalLm,
    pairs: &[&PairExample],
    pad: u32,
) -> candle_core::Result<examples::Batch> {
    let seqs: Vec<&Example> = pairs
        .iter()
        .map(|p| &p.chosen)
        .chain(pairs.iter().map(|p| &p.rejected))
        .collect();
    examples::batch(&seqs, pad, model.dtype, &model.device)
}

/// The (chosen, rejected) log-probs, `[k]` and `[k]`, from the target log-probs of
/// [`pair_batch`]'s sequences.
pub fn pair_logps_of(
    picked: &Tensor,
    b: &examples::Batch,
    k: usize,
    loss: Loss,
) -> candle_core::Result<(Tensor, Tensor)> {
    let logps = sequence_logps(picked, &b.mask, loss == Loss::Ipo)?;
    Ok((logps.narrow(0, 0, k)?, logps.narrow(0, k, k)?))
}

/// The reference's log-probs of every pair, `batch` pairs per forward, with no graph kept.
pub fn reference_logps(
    model: &CausalLm,
    pairs: &[PairExample],
    pad: u32,
    s: &Settings,
    batch: usize,
) -> Result<PairLogps, TrainError> {
    let mut out = PairLogps::default();
    for chunk in pairs.chunks(batch.max(1)) {
        let refs: Vec<&PairExample> = chunk.iter().collect();
        let mut pass = Pass::reference(s.reference == Reference::Adapter).without_graph();
        let (c, r) = pair_logps(model, &refs, pad, s.loss, &mut pass)?;
        out.chosen.extend(to_f64(&c)?);
        out.rejected.extend(to_f64(&r)?);
    }
    Ok(out)
}

fn to_f64(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.detach().to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// What one micro-batch of pairs gives: the loss summed over its pairs (the caller divides by the
/// step's pair count) and the implicit rewards of each pair.
pub struct PairLoss {
    pub loss_sum: Tensor,
    pub chosen_rewards: Vec<f64>,
    pub rejected_rewards: Vec<f64>,
}

/// The DPO or IPO loss of policy log-probs against the reference's, with the implicit rewards.
pub fn loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    reference: (&[f64], &[f64]),
    s: &Settings,
) -> candle_core::Result<PairLoss> {
    let dev = policy_chosen.device();
    let dtype = policy_chosen.dtype();
    let as_tensor =
        |v: &[f64]| Tensor::from_vec(v.to_vec(), v.len(), dev).and_then(|t| t.to_dtype(dtype));
    let chosen_ratio = (policy_chosen - as_tensor(reference.0)?)?;
    let rejected_ratio = (policy_rejected - as_tensor(reference.1)?)?;
    let h = (&chosen_ratio - &rejected_ratio)?;
    let losses = match s.loss {
        // −log σ(βh) = softplus(−βh) = max(z, 0) + log(1 + e^−|z|) with z = −βh: no overflow.
        Loss::Sigmoid => {
            let z = (h * -s.beta)?;
            (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?
        }
        Loss::Ipo => (h - 1.0 / (2.0 * s.beta))?.sqr()?,
    };
    let rewards = |ratio: &Tensor| -> candle_core::Result<Vec<f64>> {
        Ok(to_f64(ratio)?.into_iter().map(|x| s.beta * x).collect())
    };
    Ok(PairLoss {
        loss_sum: losses.sum_all()?,
        chosen_rewards: rewards(&chosen_ratio)?,
        rejected_rewards: rewards(&rejected_ratio)?,
    })
}

/// The loss of one pair and its derivatives with respect to the policy's chosen and rejected
/// log-probs, in closed form (the GPU path's chain rule; [`loss`] is the autograd one):
/// sigmoid: dL/dh = −β·σ(−β·h); IPO: dL/dh = 2·(h − 1/(2β)); dL/dπc = dL/dh, dL/dπr = −dL/dh.
pub fn pair_loss_and_slope(policy: (f64, f64), reference: (f64, f64), s: &Settings) -> (f64, f64) {
    let h = (policy.0 - reference.0) - (policy.1 - reference.1);
    match s.loss {
        Loss::Sigmoid => {
            let z = -s.beta * h;
            let softplus = z.max(0.0) + (-z.abs()).exp().ln_1p();
            let sigma = 1.0 / (1.0 + (-z).exp());
            (softplus, -s.beta * sigma)
        }
        Loss::Ipo => {
            let d = h - 1.0 / (2.0 * s.beta);
            (d * d, 2.0 * d)
        }
    }
}

/// Reward margin (mean chosen − rejected reward) and reward accuracy (share with chosen > rejected).
pub fn reward_stats(chosen: &[f64], rejected: &[f64]) -> (f64, f64) {
    let n = chosen.len().max(1) as f64;
    let margin = chosen.iter().zip(rejected).map(|(c, r)| c - r).sum::<f64>() / n;
    let accuracy = chosen.iter().zip(rejected).filter(|(c, r)| c > r).count() as f64 / n;
    (margin, accuracy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn settings(loss: Loss, beta: f64) -> Settings {
        Settings {
            beta,
            loss,
            reference: Reference::Base,
        }
    }

    fn var(v: &[f64]) -> Var {
        Var::from_tensor(&Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu).unwrap()).unwrap()
    }

    /// The losses and their derivatives written out by hand from the papers' formulas.
    #[test]
    fn the_losses_and_their_gradients_match_the_formulas_worked_by_hand() {
        let (pc, pr) = ([-3.0, -1.0, -7.5], [-4.0, -0.5, -2.0]);
        let (rc, rr) = ([-3.5, -1.2, -6.0], [-3.0, -0.7, -2.5]);
        for (kind, beta) in [(Loss::Sigmoid, 0.1), (Loss::Sigmoid, 2.0), (Loss::Ipo, 0.5)] {
            let (c, r) = (var(&pc), var(&pr));
            let out = loss(
                c.as_tensor(),
                r.as_tensor(),
                (&rc, &rr),
                &settings(kind, beta),
            )
            .unwrap();
            let grads = out.loss_sum.backward().unwrap();
            let gc: Vec<f64> = grads.get(c.as_tensor()).unwrap().to_vec1().unwrap();
            let gr: Vec<f64> = grads.get(r.as_tensor()).unwrap().to_vec1().unwrap();
            let mut total = 0.0;
            for i in 0..3 {
                let h = (pc[i] - rc[i]) - (pr[i] - rr[i]);
                // d/dh of each loss; d/d(policy chosen) = dL/dh, d/d(policy rejected) = −dL/dh.
                let (l, dl_dh) = match kind {
                    Loss::Sigmoid => {
                        let sig = 1.0 / (1.0 + (-beta * h).exp());
                        (-sig.ln(), -beta * (1.0 - sig))
                    }
                    Loss::Ipo => {
                        let d = h - 1.0 / (2.0 * beta);
                        (d * d, 2.0 * d)
                    }
                };
                total += l;
                assert!(
                    (gc[i] - dl_dh).abs() < 1e-12,
                    "{kind:?} β={beta}: dL/dπc[{i}] {} vs {dl_dh}",
                    gc[i]
                );
                assert!(
                    (gr[i] + dl_dh).abs() < 1e-12,
                    "{kind:?} β={beta}: dL/dπr[{i}] {} vs {}",
                    gr[i],
                    -dl_dh
                );
                assert!((out.chosen_rewards[i] - beta * (pc[i] - rc[i])).abs() < 1e-12);
                assert!((out.rejected_rewards[i] - beta * (pr[i] - rr[i])).abs() < 1e-12);
            }
            let got = out.loss_sum.to_scalar::<f64>().unwrap();
            assert!(
                (got - total).abs() < 1e-12,
                "{kind:?}: loss {got} vs {total}"
            );
        }
    }

    #[test]
    fn the_closed_form_slope_is_the_autograd_gradient() {
        let (pc, pr) = ([-3.0, -1.0, -7.5], [-4.0, -0.5, -2.0]);
        let (rc, rr) = ([-3.5, -1.2, -6.0], [-3.0, -0.7, -2.5]);
        for s in [
            settings(Loss::Sigmoid, 0.1),
            settings(Loss::Sigmoid, 3.0),
            settings(Loss::Ipo, 0.5),
        ] {
            let (c, r) = (var(&pc), var(&pr));
            let out = loss(c.as_tensor(), r.as_tensor(), (&rc, &rr), &s).unwrap();
            let grads = out.loss_sum.backward().unwrap();
            let gc: Vec<f64> = grads.get(c.as_tensor()).unwrap().to_vec1().unwrap();
            let mut total = 0.0;
            for i in 0..3 {
                let (l, slope) = pair_loss_and_slope((pc[i], pr[i]), (rc[i], rr[i]), &s);
                total += l;
                assert!((slope - gc[i]).abs() < 1e-12, "{s:?}: {slope} vs {}", gc[i]);
            }
            assert!((total - out.loss_sum.to_scalar::<f64>().unwrap()).abs() < 1e-12);
        }
    }

    #[test]
    fn the_sigmoid_loss_stays_finite_far_out_in_both_tails() {
        for h in [-5000.0, 5000.0] {
            let c = var(&[h]);
            let out = loss(
                c.as_tensor(),
                &var(&[0.0]).as_tensor().clone(),
                (&[0.0], &[0.0]),
                &settings(Loss::Sigmoid, 1.0),
            )
            .unwrap();
            let l = out.loss_sum.to_scalar::<f64>().unwrap();
            assert!(l.is_finite(), "h = {h}: loss {l}");
            if h > 0.0 {
                assert!(l < 1e-12);
            } else {
                assert!((l - 5000.0).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn reward_margin_and_accuracy_count_pairs_not_tokens() {
        let (m, a) = reward_stats(&[1.0, 0.5, -1.0, 2.0], &[0.0, 1.0, -2.0, 2.0]);
        assert!((m - (1.0 - 0.5 + 1.0 + 0.0) / 4.0).abs() < 1e-12);
        assert_eq!(a, 0.5, "a tie is not a win");
    }

    #[test]
    fn bad_pairs_are_named_by_row_before_any_work() {
        let row = |p: &str, c: &str, r: &str| (p.to_string(), c.to_string(), r.to_string());
        let e = check_pairs(&[]).unwrap_err().to_string();
        assert!(e.contains("no rows"), "{e}");
        let e = check_pairs(&[row("p", "a", "b"), row("p", "same", "same")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1") && e.contains("same text"), "{e}");
        let e = check_pairs(&[row("p", " ", "b")]).unwrap_err().to_string();
        assert!(
            e.contains("row 0") && e.contains("chosen response is empty"),
            "{e}"
        );
        assert!(Loss::parse("hinge")
            .unwrap_err()
            .to_string()
            .contains("\"sigmoid\""));
        assert!(Reference::parse("sft")
            .unwrap_err()
            .to_string()
            .contains("\"base\""));
    }
}
