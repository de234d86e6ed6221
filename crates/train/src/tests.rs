//! Specs of DPO on the tiny model: a pair's log-probs are its response tokens' log-softmax summed by
//! hand, and the loss's gradients match finite differences for both losses and both references.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rtlab_model::examples;
use rtlab_model::model::{CausalLm, Pass};
use rtlab_model::testing::{lora_model as model, nudge, randomize_b, scalar, tiny_dir};

fn tiny_pairs(dir: &std::path::Path) -> Vec<super::dpo::PairExample> {
    let tok = examples::load_tokenizer(dir).unwrap();
    let row = |p: &str, c: &str, r: &str| (p.to_string(), c.to_string(), r.to_string());
    let rows = [row("and", "a&b", "a|b;x"), row("not", "~a", "!!a")];
    super::dpo::build(&tok, &rows, "<{prompt}>", 64, 256, examples::TooLong::Error)
        .unwrap()
        .0
}

/// The DPO loss of the tiny model's policy against the given reference log-probs, summed over pairs.
fn dpo_loss_of(
    m: &CausalLm,
    pairs: &[super::dpo::PairExample],
    reference: &super::dpo::PairLogps,
    s: &super::dpo::Settings,
) -> super::dpo::PairLoss {
    let refs: Vec<&super::dpo::PairExample> = pairs.iter().collect();
    let (pc, pr) =
        super::dpo::pair_logps(m, &refs, 256, s.loss, &mut Pass::reference(true)).unwrap();
    super::dpo::loss(&pc, &pr, (&reference.chosen, &reference.rejected), s).unwrap()
}

/// A response's log-prob is the sum (IPO: the mean) of its tokens' log-softmax, read off the logits
/// one token at a time; the prompt's tokens and the padding count for nothing.
#[test]
fn a_pairs_log_probs_are_its_response_tokens_log_softmax_summed_by_hand() {
    use super::dpo::Loss;
    let dir = tiny_dir(rtlab_model::config::Arch::Llama);
    let m = model(dir.path(), DType::F64);
    randomize_b(&m);
    let pairs = tiny_pairs(dir.path());
    for loss in [Loss::Sigmoid, Loss::Ipo] {
        let refs: Vec<&super::dpo::PairExample> = pairs.iter().collect();
        let (c, r) =
            super::dpo::pair_logps(&m, &refs, 256, loss, &mut Pass::reference(true)).unwrap();
        let got: Vec<f64> = [c.to_vec1::<f64>().unwrap(), r.to_vec1::<f64>().unwrap()].concat();
        let seqs: Vec<&examples::Example> = pairs
            .iter()
            .map(|p| &p.chosen)
            .chain(pairs.iter().map(|p| &p.rejected))
            .collect();
        for (i, e) in seqs.iter().enumerate() {
            // Alone, unpadded: position j predicts token j+1.
            let ids = Tensor::new(&e.ids[..e.ids.len() - 1], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let logits = m.forward(&ids, None, &mut Pass::reference(true)).unwrap();
            let rows: Vec<Vec<f64>> = logits.squeeze(0).unwrap().to_vec2().unwrap();
            let mut sum = 0.0;
            let mut n = 0;
            for j in (e.prompt_len - 1)..(e.ids.len() - 1) {
                let row = &rows[j];
                let max = row.iter().cloned().fold(f64::MIN, f64::max);
                let log_z = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
                sum += row[e.ids[j + 1] as usize] - log_z;
                n += 1;
            }
            let want = if loss == Loss::Ipo {
                sum / n as f64
            } else {
                sum
            };
            assert!(
                (got[i] - want).abs() < 1e-9,
                "{loss:?} sequence {i}: {} vs {want} by hand",
                got[i]
            );
        }
    }
}

/// Both losses, against both references, differentiate to what central finite differences give,
/// through the whole tiny model into every adapter; a reference equal to the policy gives DPO's
/// log 2 per pair and IPO's (1/2β)².
#[test]
fn the_dpo_loss_on_the_tiny_model_matches_finite_differences_for_both_losses_and_references() {
    use super::dpo::{Loss, Reference, Settings};
    let dir = tiny_dir(rtlab_model::config::Arch::Qwen2);
    let m = model(dir.path(), DType::F64);
    randomize_b(&m);
    let pairs = tiny_pairs(dir.path());
    for loss in [Loss::Sigmoid, Loss::Ipo] {
        for reference in [Reference::Base, Reference::Adapter] {
            let s = Settings {
                beta: 0.5,
                loss,
                reference,
            };
            let refs = super::dpo::reference_logps(&m, &pairs, 256, &s, 1).unwrap();
            let out = dpo_loss_of(&m, &pairs, &refs, &s);
            if reference == Reference::Adapter {
                let at_start = scalar(&out.loss_sum);
                let want = match loss {
                    Loss::Sigmoid => 2.0 * std::f64::consts::LN_2,
                    Loss::Ipo => 2.0 * (1.0 / (2.0 * s.beta)).powi(2),
                };
                assert!(
                    (at_start - want).abs() < 1e-9,
                    "{loss:?}: {at_start} at the start, want {want}"
                );
            }
            let grads = out.loss_sum.backward().unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(9);
            for (path, l) in m.adapters().iter().step_by(3) {
                for (which, var) in [("A", &l.a), ("B", &l.b)] {
                    let g: Vec<f64> = grads
                        .get(var.as_tensor())
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let i = rng.random_range(0..g.len());
                    let eps = 1e-5;
                    nudge(var, i, eps);
                    let up = scalar(&dpo_loss_of(&m, &pairs, &refs, &s).loss_sum);
                    nudge(var, i, -2.0 * eps);
                    let down = scalar(&dpo_loss_of(&m, &pairs, &refs, &s).loss_sum);
                    nudge(var, i, eps);
                    let numeric = (up - down) / (2.0 * eps);
                    let err = (numeric - g[i]).abs() / g[i].abs().max(1e-6);
                    assert!(
                        err < 1e-4 || (numeric - g[i]).abs() < 1e-9,
                        "{loss:?} {reference:?} {path}.{which}[{i}]: backprop {} vs finite difference {numeric}",
                        g[i]
                    );
                }
            }
        }
    }
}
