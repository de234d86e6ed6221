//! A plain-Rust f64 reference of the whole LoRA decoder ([`crate::GpuLlama`]): forward, masked
//! cross-entropy with a given denominator, and the backward pass down to the adapters' `A`/`B`
//! gradients. Written loop by loop for clarity; its gradients are checked against finite
//! differences in this module's tests.

use std::collections::HashMap;

use crate::llama::{AdapterMap, LlamaShape, WeightMap, PROJECTIONS};

/// What [`llama_reference`] computes.
#[derive(Clone, Debug)]
pub struct LlamaReference {
    /// `Σ mask · nll / denominator`.
    pub loss: f64,
    /// [batch·seq, vocab].
    pub logits: Vec<f64>,
    /// Module path → `(dA, dB)`.
    pub grads: HashMap<String, (Vec<f64>, Vec<f64>)>,
}

/// The inputs of one reference step.
#[derive(Clone, Copy, Debug)]
pub struct LlamaBatch<'a> {
    /// Token ids [batch·seq].
    pub ids: &'a [u32],
    /// Next-token targets [batch·seq] (≥ vocab = ignored).
    pub targets: &'a [u32],
    /// Loss weights [batch·seq] (0 = ignored).
    pub mask: &'a [f32],
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// The loss denominator.
    pub denominator: f32,
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// `x [n, i] · w [o, i]ᵀ → [n, o]`.
fn mm_nt(x: &[f64], w: &[f64], n: usize, i: usize, o: usize) -> Vec<f64> {
    let mut y = vec![0f64; n * o];
    for r in 0..n {
        for c in 0..o {
            y[r * o + c] = (0..i).map(|k| x[r * i + k] * w[c * i + k]).sum();
        }
    }
    y
}

/// `dy [n, o] · w [o, i] → [n, i]`.
fn mm_nn(dy: &[f64], w: &[f64], n: usize, o: usize, i: usize) -> Vec<f64> {
    let mut y = vec![0f64; n * i];
    for r in 0..n {
        for k in 0..o {
            let d = dy[r * o + k];
            for c in 0..i {
                y[r * i + c] += d * w[k * i + c];
            }
        }
    }
    y
}

/// `a [n, p]ᵀ · b [n, q] → [p, q]`.
fn mm_tn(a: &[f64], b: &[f64], n: usize, p: usize, q: usize) -> Vec<f64> {
    let mut y = vec![0f64; p * q];
    for r in 0..n {
        for i in 0..p {
            let av = a[r * p + i];
            for j in 0..q {
                y[i * q + j] += av * b[r * q + j];
            }
        }
    }
    y
}

fn rmsnorm(x: &[f64], w: &[f64], d: usize, eps: f64) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() / d;
    let mut y = vec![0f64; x.len()];
    let mut rstd = vec![0f64; n];
    for r in 0..n {
        let row = &x[r * d..(r + 1) * d];
        let rs = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
        rstd[r] = rs;
        for j in 0..d {
            y[r * d + j] = row[j] * rs * w[j];
        }
    }
    (y, rstd)
}

fn rmsnorm_bwd(x: &[f64], w: &[f64], rstd: &[f64], dy: &[f64], d: usize) -> Vec<f64> {
    let mut dx = vec![0f64; x.len()];
    for (r, &rs) in rstd.iter().enumerate() {
        let (xr, dyr) = (&x[r * d..(r + 1) * d], &dy[r * d..(r + 1) * d]);
        let dot: f64 = (0..d).map(|j| dyr[j] * w[j] * xr[j]).sum();
        let c = rs * rs * rs * dot / d as f64;
        for j in 0..d {
            dx[r * d + j] = rs * dyr[j] * w[j] - xr[j] * c;
        }
    }
    dx
}

/// HF rotate_half RoPE on `x` [n, heads, hd] at position `token % seq`; `sign` −1 = backward.
fn rope(x: &[f64], heads: usize, hd: usize, seq: usize, theta: f64, sign: f64) -> Vec<f64> {
    let half = hd / 2;
    let n = x.len() / (heads * hd);
    let mut y = vec![0f64; x.len()];
    for t in 0..n {
        let pos = (t % seq) as f64;
        for h in 0..heads {
            let base = (t * heads + h) * hd;
            for i in 0..half {
                let angle = pos * theta.powf(-2.0 * i as f64 / hd as f64);
                let (c, s) = (angle.cos(), sign * angle.sin());
                let (x1, x2) = (x[base + i], x[base + i + half]);
                y[base + i] = x1 * c - x2 * s;
                y[base + i + half] = x2 * c + x1 * s;
            }
        }
    }
    y
}

struct Attn {
    batch: usize,
    seq: usize,
    heads: usize,
    kv: usize,
    hd: usize,
}

impl Attn {
    fn forward(&self, q: &[f64], k: &[f64], v: &[f64]) -> (Vec<f64>, Vec<f64>) {
        let (s, hd, group) = (self.seq, self.hd, self.heads / self.kv);
        let (wq, wk) = (self.heads * hd, self.kv * hd);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0f64; q.len()];
        let mut probs = vec![0f64; self.batch * self.heads * s * s];
        for b in 0..self.batch {
            for h in 0..self.heads {
                let kh = h / group;
                let p = &mut probs[(b * self.heads + h) * s * s..][..s * s];
                for t in 0..s {
                    let qi = (b * s + t) * wq + h * hd;
                    let sc: Vec<f64> = (0..=t)
                        .map(|j| {
                            let ki = (b * s + j) * wk + kh * hd;
                            (0..hd).map(|e| q[qi + e] * k[ki + e]).sum::<f64>() * scale
                        })
                        .collect();
                    let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
                    let sum: f64 = ex.iter().sum();
                    for (j, e) in ex.iter().enumerate() {
                        p[t * s + j] = e / sum;
                    }
                    for e in 0..hd {
                        out[qi + e] = (0..=t)
                            .map(|j| p[t * s + j] * v[(b * s + j) * wk + kh * hd + e])
                            .sum();
                    }
                }
            }
        }
        (out, probs)
    }

    #[allow(clippy::type_complexity)]
    fn backward(
        &self,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        probs: &[f64],
        dout: &[f64],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (s, hd, group) = (self.seq, self.hd, self.heads / self.kv);
        let (wq, wk) = (self.heads * hd, self.kv * hd);
        let scale = 1.0 / (hd as f64).sqrt();
        let (mut dq, mut dk, mut dv) = (
            vec![0f64; q.len()],
            vec![0f64; k.len()],
            vec![0f64; v.len()],
        );
        for b in 0..self.batch {
            for h in 0..self.heads {
                let kh = h / group;
                let p = &probs[(b * self.heads + h) * s * s..][..s * s];
                for t in 0..s {
                    let qi = (b * s + t) * wq + h * hd;
                    let dp: Vec<f64> = (0..=t)
                        .map(|j| {
                            let vi = (b * s + j) * wk + kh * hd;
                            (0..hd).map(|e| dout[qi + e] * v[vi + e]).sum()
                        })
                        .collect();
                    let dot: f64 = (0..=t).map(|j| p[t * s + j] * dp[j]).sum();
                    for j in 0..=t {
                        let ds = p[t * s + j] * (dp[j] - dot) * scale;
                        let ki = (b * s + j) * wk + kh * hd;
                        for e in 0..hd {
                            dq[qi + e] += ds * k[ki + e];
                            dk[ki + e] += ds * q[qi + e];
                            dv[ki + e] += p[t * s + j] * dout[qi + e];
                        }
                    }
                }
            }
        }
        (dq, dk, dv)
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

struct ProjRef {
    w: Vec<f64>,
    bias: Option<Vec<f64>>,
    ab: Option<(Vec<f64>, Vec<f64>)>,
    d_in: usize,
    d_out: usize,
}

struct ProjSaveRef {
    xd: Vec<f64>,
    mask: Option<Vec<f64>>,
    xa: Vec<f64>,
}

/// Forward, loss and backward of the whole model in f64.
///
/// `weights` and `adapters` as for [`crate::GpuLlama::new`]; `dropout` maps a module path to
/// its adapter-input mask `[batch·seq, in]` (absent = no dropout).
///
/// Long on purpose: it is the specification the GPU step is checked against, written as the math
/// reads, layer by layer, forward then backward, so that a reader can hold it beside the paper and
/// beside `GpuLlama::forward_backward`. Split into helpers, the order of the saved activations would
/// no longer be visible in one place.
#[allow(clippy::too_many_arguments)]
pub fn llama_reference(
    shape: &LlamaShape,
    weights: &WeightMap,
    adapters: &AdapterMap,
    r: usize,
    scale: f32,
    batch_in: &LlamaBatch,
    dropout: &HashMap<String, Vec<f32>>,
) -> LlamaReference {
    let s = shape;
    let LlamaBatch {
        ids,
        targets,
        mask,
        batch,
        seq,
        denominator,
    } = *batch_in;
    let n = batch * seq;
    assert_eq!(ids.len(), n, "ids must be [batch·seq]");
    assert_eq!(targets.len(), n, "targets must be [batch·seq]");
    assert_eq!(mask.len(), n, "mask must be [batch·seq]");
    let scale = scale as f64;
    let eps = s.rms_eps as f64;
    let get = |name: &str| -> Vec<f64> {
        f64s(
            &weights
                .get(name)
                .unwrap_or_else(|| panic!("missing weight {name}"))
                .1,
        )
    };
    let (h, vocab) = (s.hidden, s.vocab);
    let embed = get("model.embed_tokens.weight");
    let lm_head = if weights.contains_key("lm_head.weight") {
        get("lm_head.weight")
    } else {
        embed.clone()
    };
    let attn = Attn {
        batch,
        seq,
        heads: s.heads,
        kv: s.kv_heads,
        hd: s.head_dim,
    };
    let projs: Vec<Vec<ProjRef>> = (0..s.layers)
        .map(|l| {
            (0..7)
                .map(|p| {
                    let path = format!("model.layers.{l}.{}", PROJECTIONS[p]);
                    let (d_out, d_in) = s.projection_dims(p);
                    ProjRef {
                        w: get(&format!("{path}.weight")),
                        bias: (s.qkv_bias && p < 3).then(|| get(&format!("{path}.bias"))),
                        ab: adapters.get(&path).map(|(a, b)| (f64s(a), f64s(b))),
                        d_in,
                        d_out,
                    }
                })
                .collect()
        })
        .collect();
    let proj_fwd = |l: usize, p: usize, x: &[f64]| -> (Vec<f64>, ProjSaveRef) {
        let pr = &projs[l][p];
        let mut y = mm_nt(x, &pr.w, n, pr.d_in, pr.d_out);
        if let Some(b) = &pr.bias {
            for (i, v) in y.iter_mut().enumerate() {
                *v += b[i % pr.d_out];
            }
        }
        let path = format!("model.layers.{l}.{}", PROJECTIONS[p]);
        let m = dropout.get(&path).map(|m| f64s(m));
        let xd: Vec<f64> = match &m {
            Some(m) => x.iter().zip(m).map(|(a, b)| a * b).collect(),
            None => x.to_vec(),
        };
        let mut xa = Vec::new();
        if let Some((a, b)) = &pr.ab {
            xa = mm_nt(&xd, a, n, pr.d_in, r);
            let low = mm_nt(&xa, b, n, r, pr.d_out);
            for (v, lo) in y.iter_mut().zip(&low) {
                *v += scale * lo;
            }
        }
        (y, ProjSaveRef { xd, mask: m, xa })
    };

    // forward
    let mut x: Vec<f64> = ids
        .iter()
        .flat_map(|&id| embed[id as usize * h..(id as usize + 1) * h].to_vec())
        .collect();
    struct Save {
        x: Vec<f64>,
        rstd1: Vec<f64>,
        qr: Vec<f64>,
        kr: Vec<f64>,
        v: Vec<f64>,
        probs: Vec<f64>,
        h: Vec<f64>,
        rstd2: Vec<f64>,
        g: Vec<f64>,
        u: Vec<f64>,
        ps: Vec<ProjSaveRef>,
    }
    let mut saves = Vec::new();
    for l in 0..s.layers {
        let in_w = get(&format!("model.layers.{l}.input_layernorm.weight"));
        let post_w = get(&format!("model.layers.{l}.post_attention_layernorm.weight"));
        let (n1, rstd1) = rmsnorm(&x, &in_w, h, eps);
        let (q, sq) = proj_fwd(l, 0, &n1);
        let (k, sk) = proj_fwd(l, 1, &n1);
        let (v, sv) = proj_fwd(l, 2, &n1);
        let qr = rope(&q, s.heads, s.head_dim, seq, s.rope_theta, 1.0);
        let kr = rope(&k, s.kv_heads, s.head_dim, seq, s.rope_theta, 1.0);
        let (ao, probs) = attn.forward(&qr, &kr, &v);
        let (o, so) = proj_fwd(l, 3, &ao);
        let hh: Vec<f64> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
        let (n2, rstd2) = rmsnorm(&hh, &post_w, h, eps);
        let (g, sg) = proj_fwd(l, 4, &n2);
        let (u, su) = proj_fwd(l, 5, &n2);
        let act: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| g * sigmoid(g) * u)
            .collect();
        let (down, sd) = proj_fwd(l, 6, &act);
        let x_next: Vec<f64> = hh.iter().zip(&down).map(|(a, b)| a + b).collect();
        saves.push(Save {
            x,
            rstd1,
            qr,
            kr,
            v,
            probs,
            h: hh,
            rstd2,
            g,
            u,
            ps: vec![sq, sk, sv, so, sg, su, sd],
        });
        x = x_next;
    }
    let norm_w = get("model.norm.weight");
    let (nf, rstdf) = rmsnorm(&x, &norm_w, h, eps);
    let logits = mm_nt(&nf, &lm_head, n, h, vocab);

    // loss
    let mut loss = 0f64;
    let mut dlogits = vec![0f64; n * vocab];
    for i in 0..n {
        let (w, t) = (mask[i] as f64, targets[i] as usize);
        if w == 0.0 || t >= vocab {
            continue;
        }
        let coef = w / denominator as f64;
        let row = &logits[i * vocab..(i + 1) * vocab];
        let mx = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let se: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        loss += (mx + se.ln() - row[t]) * coef;
        for j in 0..vocab {
            let p = (row[j] - mx).exp() / se;
            dlogits[i * vocab + j] = (p - if j == t { 1.0 } else { 0.0 }) * coef;
        }
    }

    // backward
    let mut grads: HashMap<String, (Vec<f64>, Vec<f64>)> = HashMap::new();
    let mut proj_bwd = |l: usize, p: usize, sv: &ProjSaveRef, dy: &[f64]| -> Vec<f64> {
        let pr = &projs[l][p];
        let mut dx = mm_nn(dy, &pr.w, n, pr.d_out, pr.d_in);
        if let Some((a, b)) = &pr.ab {
            let g = mm_nn(dy, b, n, pr.d_out, r); // [n, r]
            let ga = mm_nn(&g, a, n, r, pr.d_in);
            for (i, v) in dx.iter_mut().enumerate() {
                let m = sv.mask.as_ref().map_or(1.0, |m| m[i]);
                *v += scale * ga[i] * m;
            }
            let da: Vec<f64> = mm_tn(&g, &sv.xd, n, r, pr.d_in)
                .iter()
                .map(|v| v * scale)
                .collect();
            let db: Vec<f64> = mm_tn(dy, &sv.xa, n, pr.d_out, r)
                .iter()
                .map(|v| v * scale)
                .collect();
            grads.insert(format!("model.layers.{l}.{}", PROJECTIONS[p]), (da, db));
        }
        dx
    };
    let dnf = mm_nn(&dlogits, &lm_head, n, vocab, h);
    let mut dx = rmsnorm_bwd(&x, &norm_w, &rstdf, &dnf, h);
    for l in (0..s.layers).rev() {
        let sv = &saves[l];
        let in_w = get(&format!("model.layers.{l}.input_layernorm.weight"));
        let post_w = get(&format!("model.layers.{l}.post_attention_layernorm.weight"));
        let dact = proj_bwd(l, 6, &sv.ps[6], &dx);
        let mut dg = vec![0f64; dact.len()];
        let mut du = vec![0f64; dact.len()];
        for i in 0..dact.len() {
            let (g, sg) = (sv.g[i], sigmoid(sv.g[i]));
            du[i] = dact[i] * g * sg;
            dg[i] = dact[i] * sv.u[i] * sg * (1.0 + g * (1.0 - sg));
        }
        let dn2: Vec<f64> = proj_bwd(l, 4, &sv.ps[4], &dg)
            .iter()
            .zip(&proj_bwd(l, 5, &sv.ps[5], &du))
            .map(|(a, b)| a + b)
            .collect();
        let dh: Vec<f64> = rmsnorm_bwd(&sv.h, &post_w, &sv.rstd2, &dn2, h)
            .iter()
            .zip(&dx)
            .map(|(a, b)| a + b)
            .collect();
        let dattn = proj_bwd(l, 3, &sv.ps[3], &dh);
        let (dqr, dkr, dv) = attn.backward(&sv.qr, &sv.kr, &sv.v, &sv.probs, &dattn);
        let dq = rope(&dqr, s.heads, s.head_dim, seq, s.rope_theta, -1.0);
        let dk = rope(&dkr, s.kv_heads, s.head_dim, seq, s.rope_theta, -1.0);
        let a = proj_bwd(l, 0, &sv.ps[0], &dq);
        let b = proj_bwd(l, 1, &sv.ps[1], &dk);
        let c = proj_bwd(l, 2, &sv.ps[2], &dv);
        let dn1: Vec<f64> = (0..a.len()).map(|i| a[i] + b[i] + c[i]).collect();
        dx = rmsnorm_bwd(&sv.x, &in_w, &sv.rstd1, &dn1, h)
            .iter()
            .zip(&dh)
            .map(|(a, b)| a + b)
            .collect();
    }
    LlamaReference {
        loss,
        logits,
        grads,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A random tiny model: weights, adapters (B non-zero) and a batch.
    pub(crate) fn tiny(shape: &LlamaShape, r: usize, seed: u64) -> (WeightMap, AdapterMap) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rv = |len: usize, sc: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(-sc..sc)).collect()
        };
        let mut w = HashMap::new();
        let h = shape.hidden;
        w.insert(
            "model.embed_tokens.weight".to_string(),
            (vec![shape.vocab, h], rv(shape.vocab * h, 1.0)),
        );
        w.insert(
            "lm_head.weight".to_string(),
            (vec![shape.vocab, h], rv(shape.vocab * h, 0.3)),
        );
        w.insert(
            "model.norm.weight".to_string(),
            (vec![h], rv(h, 1.0).iter().map(|v| 1.0 + 0.3 * v).collect()),
        );
        let mut ad = HashMap::new();
        for l in 0..shape.layers {
            for n in ["input_layernorm", "post_attention_layernorm"] {
                w.insert(
                    format!("model.layers.{l}.{n}.weight"),
                    (vec![h], rv(h, 1.0).iter().map(|v| 1.0 + 0.3 * v).collect()),
                );
            }
            for (p, name) in PROJECTIONS.iter().enumerate() {
                let (o, i) = shape.projection_dims(p);
                let path = format!("model.layers.{l}.{name}");
                let sc = 1.0 / (i as f32).sqrt();
                w.insert(format!("{path}.weight"), (vec![o, i], rv(o * i, sc)));
                if shape.qkv_bias && p < 3 {
                    w.insert(format!("{path}.bias"), (vec![o], rv(o, 0.3)));
                }
                ad.insert(path, (rv(r * i, sc), rv(o * r, 0.3)));
            }
        }
        (w, ad)
    }

    #[test]
    fn adapter_grads_match_finite_differences() {
        let shape = LlamaShape {
            hidden: 8,
            intermediate: 12,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 2,
            vocab: 11,
            rms_eps: 1e-5,
            rope_theta: 10_000.0,
            qkv_bias: true,
            max_positions: 64,
        };
        let r = 2;
        let (w, mut ad) = tiny(&shape, r, 1);
        // Adapt a subset only: drop two projections.
        ad.remove("model.layers.0.mlp.up_proj");
        ad.remove("model.layers.1.self_attn.k_proj");
        let (batch, seq) = (2, 3);
        let mut rng = StdRng::seed_from_u64(2);
        let ids: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(0..11)).collect();
        let targets: Vec<u32> = (0..batch * seq).map(|_| rng.random_range(0..11)).collect();
        let mask = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0];
        let mut drop = HashMap::new();
        let dm: Vec<f32> = (0..batch * seq * 8)
            .map(|_| {
                if rng.random_range(0.0..1.0) < 0.3 {
                    0.0
                } else {
                    1.0 / 0.7
                }
            })
            .collect();
        drop.insert("model.layers.1.self_attn.v_proj".to_string(), dm);
        let b = LlamaBatch {
            ids: &ids,
            targets: &targets,
            mask: &mask,
            batch,
            seq,
            denominator: 7.0,
        };
        let out = llama_reference(&shape, &w, &ad, r, 1.5, &b, &drop);
        assert!(out.loss.is_finite() && out.loss > 0.0);
        assert_eq!(out.grads.len(), ad.len());
        let eps = 1e-3f32;
        let mut checked = 0;
        for (path, (a, bm)) in &ad {
            let (ga, gb) = &out.grads[path];
            for (which, len) in [(0, a.len()), (1, bm.len())] {
                // every third element, to keep the test quick
                for i in (0..len).step_by(3) {
                    let loss_at = |delta: f32| {
                        let mut ad2 = ad.clone();
                        let e = ad2.get_mut(path).unwrap();
                        if which == 0 {
                            e.0[i] += delta
                        } else {
                            e.1[i] += delta
                        }
                        llama_reference(&shape, &w, &ad2, r, 1.5, &b, &drop).loss
                    };
                    // f32 parameters: perturb and use the exact perturbation actually applied
                    let base = if which == 0 { a[i] } else { bm[i] };
                    let (up, dn) = (base + eps, base - eps);
                    let fd = (loss_at(eps) - loss_at(-eps)) / (up as f64 - dn as f64);
                    let an = if which == 0 { ga[i] } else { gb[i] };
                    let err = (fd - an).abs() / an.abs().max(1e-2);
                    assert!(
                        err < 1e-4,
                        "{path} {} [{i}]: analytic {an} vs fd {fd}",
                        ["A", "B"][which]
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100);
    }
}
