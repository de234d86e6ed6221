//! Plain-Rust f32 CPU references for every kernel: the contracts the GPU tests compare against.
//!
//! All tensors are row-major slices. These are written for clarity, not speed (the benchmark
//! times them only as a baseline). Their backward passes are themselves checked against finite
//! differences in this module's tests.

use crate::lora_linear_forward_reference;
use crate::AttentionDims;

/// The shapes of one LoRA linear layer applied to a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraDims {
    /// Rows (tokens) in the batch.
    pub n: usize,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
    /// Adapter rank.
    pub r: usize,
}

/// Hyper-parameters of one AdamW step, as in PyTorch's `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay (`param *= 1 - lr * weight_decay` before the Adam update).
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// `c[m, n] = op(a) op(b)` where `a` is stored `[m, k]` (or `[k, m]` when `ta`), `b` is stored
/// `[k, n]` (or `[n, k]` when `tb`).
#[allow(clippy::too_many_arguments)]
pub fn matmul_reference(
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "a must hold m*k values");
    assert_eq!(b.len(), k * n, "b must hold k*n values");
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f32;
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                s += av * bv;
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn check_lora(x: &[f32], w: &[f32], a: &[f32], b: &[f32], d: LoraDims) {
    assert_eq!(x.len(), d.n * d.d_in, "x must be [n, d_in]");
    assert_eq!(w.len(), d.d_out * d.d_in, "w must be [d_out, d_in]");
    assert_eq!(a.len(), d.r * d.d_in, "a must be [r, d_in]");
    assert_eq!(b.len(), d.d_out * d.r, "b must be [d_out, r]");
}

/// LoRA forward: returns `(y, xa)` with `y = x Wᵀ + scale · xa Bᵀ` [n, d_out] and
/// `xa = x Aᵀ` [n, r] (kept for the backward pass).
pub fn lora_forward_reference(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    d: LoraDims,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    check_lora(x, w, a, b, d);
    let xa = matmul_reference(x, false, a, true, d.n, d.d_in, d.r);
    let y = lora_linear_forward_reference(x, w, a, b, d.n, d.d_in, d.d_out, d.r, scale);
    (y, xa)
}

/// Gradients of a LoRA linear layer with its base weight `W` frozen.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraGradsRef {
    /// `dy W + scale · (dy B) A`, [n, d_in].
    pub dx: Vec<f32>,
    /// `scale · (dy B)ᵀ x`, [r, d_in].
    pub da: Vec<f32>,
    /// `scale · dyᵀ xa`, [d_out, r].
    pub db: Vec<f32>,
}

/// LoRA backward given `dy` [n, d_out] and the forward's `xa` [n, r].
#[allow(clippy::too_many_arguments)]
pub fn lora_backward_reference(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    xa: &[f32],
    dy: &[f32],
    d: LoraDims,
    scale: f32,
) -> LoraGradsRef {
    check_lora(x, w, a, b, d);
    assert_eq!(xa.len(), d.n * d.r, "xa must be [n, r]");
    assert_eq!(dy.len(), d.n * d.d_out, "dy must be [n, d_out]");
    let g = matmul_reference(dy, false, b, false, d.n, d.d_out, d.r); // [n, r]
    let mut dx = matmul_reference(dy, false, w, false, d.n, d.d_out, d.d_in);
    let ga = matmul_reference(&g, false, a, false, d.n, d.r, d.d_in);
    for (o, v) in dx.iter_mut().zip(&ga) {
        *o += scale * v;
    }
    let mut da = matmul_reference(&g, true, x, false, d.r, d.n, d.d_in);
    da.iter_mut().for_each(|v| *v *= scale);
    let mut db = matmul_reference(dy, true, xa, false, d.d_out, d.n, d.r);
    db.iter_mut().for_each(|v| *v *= scale);
    LoraGradsRef { dx, da, db }
}

/// RMSNorm forward over rows of `x` [n, d]: returns `(y, rstd)` with
/// `rstd_i = 1 / sqrt(mean_j x_ij² + eps)` [n] and `y_ij = x_ij · rstd_i · w_j`.
pub fn rmsnorm_forward_reference(
    x: &[f32],
    w: &[f32],
    n: usize,
    d: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), n * d, "x must be [n, d]");
    assert_eq!(w.len(), d, "w must be [d]");
    let mut y = vec![0f32; n * d];
    let mut rstd = vec![0f32; n];
    for i in 0..n {
        let row = &x[i * d..(i + 1) * d];
        let ss: f32 = row.iter().map(|v| v * v).sum();
        let r = 1.0 / (ss / d as f32 + eps).sqrt();
        rstd[i] = r;
        for j in 0..d {
            y[i * d + j] = row[j] * r * w[j];
        }
    }
    (y, rstd)
}

/// RMSNorm backward: returns `(dx, dw)` given `dy` [n, d] and the forward's `rstd` [n].
pub fn rmsnorm_backward_reference(
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dy: &[f32],
    n: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), n * d, "x must be [n, d]");
    assert_eq!(dy.len(), n * d, "dy must be [n, d]");
    assert_eq!(w.len(), d, "w must be [d]");
    assert_eq!(rstd.len(), n, "rstd must be [n]");
    let mut dx = vec![0f32; n * d];
    let mut dw = vec![0f32; d];
    for i in 0..n {
        let r = rstd[i];
        let (xr, dyr) = (&x[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
        let dot: f32 = (0..d).map(|j| dyr[j] * w[j] * xr[j]).sum();
        let c = r * r * r * dot / d as f32;
        for j in 0..d {
            dx[i * d + j] = r * dyr[j] * w[j] - xr[j] * c;
            dw[j] += dyr[j] * xr[j] * r;
        }
    }
    (dx, dw)
}

/// HF/Llama rotary tables: `(cos, sin)`, each [positions.len(), head_dim / 2], with
/// `angle[t, i] = positions[t] · theta^(−2i / head_dim)` (computed in f64, stored as f32).
pub fn rope_tables(positions: &[u32], head_dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    assert!(
        head_dim >= 2 && head_dim.is_multiple_of(2),
        "head_dim must be even"
    );
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(positions.len() * half);
    let mut sin = Vec::with_capacity(positions.len() * half);
    for &p in positions {
        for i in 0..half {
            let inv_freq = theta.powf(-2.0 * i as f64 / head_dim as f64);
            let angle = p as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

fn rope_apply(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    n_tokens: usize,
    n_heads: usize,
    head_dim: usize,
    sign: f32,
) -> Vec<f32> {
    let half = head_dim / 2;
    assert_eq!(
        x.len(),
        n_tokens * n_heads * head_dim,
        "x must be [n_tokens, n_heads, head_dim]"
    );
    assert_eq!(
        cos.len(),
        n_tokens * half,
        "cos must be [n_tokens, head_dim / 2]"
    );
    assert_eq!(
        sin.len(),
        n_tokens * half,
        "sin must be [n_tokens, head_dim / 2]"
    );
    let mut y = vec![0f32; x.len()];
    for t in 0..n_tokens {
        for h in 0..n_heads {
            let base = (t * n_heads + h) * head_dim;
            for i in 0..half {
                let (c, s) = (cos[t * half + i], sign * sin[t * half + i]);
                let (x1, x2) = (x[base + i], x[base + i + half]);
                // y = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1)
                y[base + i] = x1 * c - x2 * s;
                y[base + i + half] = x2 * c + x1 * s;
            }
        }
    }
    y
}

/// RoPE forward (HF `rotate_half` convention) on `x` [n_tokens, n_heads, head_dim].
pub fn rope_forward_reference(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    n_tokens: usize,
    n_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    rope_apply(x, cos, sin, n_tokens, n_heads, head_dim, 1.0)
}

/// RoPE backward: the transposed (inverse) rotation applied to `dy`.
pub fn rope_backward_reference(
    dy: &[f32],
    cos: &[f32],
    sin: &[f32],
    n_tokens: usize,
    n_heads: usize,
    head_dim: usize,
) -> Vec<f32> {
    rope_apply(dy, cos, sin, n_tokens, n_heads, head_dim, -1.0)
}

/// Whether row `i` takes part in the loss: unmasked and with a target inside the vocabulary.
pub(crate) fn ce_row_valid(target: u32, mask: u32, vocab: usize) -> bool {
    mask != 0 && (target as usize) < vocab
}

/// Softmax cross-entropy over `logits` [n, vocab] with `targets` [n] and `mask` [n]
/// (0 = ignore the row; a target ≥ vocab is ignored too). Returns `(loss, dlogits)` where
/// `loss` is the mean over counted rows (0 when none) and `dlogits = (softmax − onehot) / count`
/// on counted rows, 0 elsewhere.
pub fn cross_entropy_reference(
    logits: &[f32],
    targets: &[u32],
    mask: &[u32],
    n: usize,
    vocab: usize,
) -> (f32, Vec<f32>) {
    assert_eq!(logits.len(), n * vocab, "logits must be [n, vocab]");
    assert_eq!(targets.len(), n, "targets must be [n]");
    assert_eq!(mask.len(), n, "mask must be [n]");
    let count = (0..n)
        .filter(|&i| ce_row_valid(targets[i], mask[i], vocab))
        .count();
    let inv = 1.0 / count.max(1) as f32;
    let mut loss = 0f32;
    let mut dl = vec![0f32; n * vocab];
    for i in 0..n {
        if !ce_row_valid(targets[i], mask[i], vocab) {
            continue;
        }
        let row = &logits[i * vocab..(i + 1) * vocab];
        let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let se: f32 = row.iter().map(|v| (v - mx).exp()).sum();
        let t = targets[i] as usize;
        loss += (mx + se.ln() - row[t]) * inv;
        for j in 0..vocab {
            let p = (row[j] - mx).exp() / se;
            dl[i * vocab + j] = (p - if j == t { 1.0 } else { 0.0 }) * inv;
        }
    }
    (loss, dl)
}

/// One AdamW step at step `t` (1-based), in place, exactly as PyTorch's single-tensor AdamW:
/// `p *= 1 − lr·wd; m = β1 m + (1−β1) g; v = β2 v + (1−β2) g²;`
/// `p −= (lr / (1−β1ᵗ)) · m / (sqrt(v) / sqrt(1−β2ᵗ) + eps)`.
pub fn adamw_reference(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    cfg: &AdamWConfig,
    t: u32,
) {
    assert!(t >= 1, "AdamW steps count from 1");
    assert_eq!(param.len(), grad.len(), "grad must match param");
    assert_eq!(param.len(), m.len(), "m must match param");
    assert_eq!(param.len(), v.len(), "v must match param");
    let (step_size, bc2_sqrt) = adamw_step_factors(cfg, t);
    for i in 0..param.len() {
        let g = grad[i];
        param[i] *= 1.0 - cfg.lr * cfg.weight_decay;
        m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
        v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
        let denom = v[i].sqrt() / bc2_sqrt + cfg.eps;
        param[i] -= step_size * m[i] / denom;
    }
}

/// `(lr / (1 − β1ᵗ), sqrt(1 − β2ᵗ))`, computed in f64.
pub(crate) fn adamw_step_factors(cfg: &AdamWConfig, t: u32) -> (f32, f32) {
    let bc1 = 1.0 - (cfg.beta1 as f64).powi(t as i32);
    let bc2 = 1.0 - (cfg.beta2 as f64).powi(t as i32);
    ((cfg.lr as f64 / bc1) as f32, bc2.sqrt() as f32)
}

/// `out[i, :] = table[ids[i], :]` with `table` [vocab, hidden].
pub fn embedding_reference(table: &[f32], hidden: usize, ids: &[u32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for &id in ids {
        let r = id as usize * hidden;
        out.extend_from_slice(&table[r..r + hidden]);
    }
    out
}

/// `silu(g) ⊙ u` with `silu(x) = x · sigmoid(x)`.
pub fn silu_mul_reference(g: &[f32], u: &[f32]) -> Vec<f32> {
    assert_eq!(g.len(), u.len(), "g and u must match");
    g.iter()
        .zip(u)
        .map(|(&x, &u)| x / (1.0 + (-x).exp()) * u)
        .collect()
}

/// Backward of [`silu_mul_reference`]: `(dg, du)`.
pub fn silu_mul_backward_reference(g: &[f32], u: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(g.len(), u.len(), "g and u must match");
    assert_eq!(g.len(), dout.len(), "dout must match g");
    let mut dg = Vec::with_capacity(g.len());
    let mut du = Vec::with_capacity(g.len());
    for i in 0..g.len() {
        let x = g[i];
        let sig = 1.0 / (1.0 + (-x).exp());
        du.push(dout[i] * x * sig);
        dg.push(dout[i] * u[i] * sig * (1.0 + x * (1.0 - sig)));
    }
    (dg, du)
}

fn attention_check(q: &[f32], k: &[f32], v: &[f32], d: &AttentionDims) {
    let n = d.batch * d.seq;
    assert_eq!(
        q.len(),
        n * d.heads * d.head_dim,
        "q must be [batch·seq, heads·head_dim]"
    );
    assert_eq!(
        k.len(),
        n * d.kv_heads * d.head_dim,
        "k must be [batch·seq, kv_heads·head_dim]"
    );
    assert_eq!(v.len(), k.len(), "v must match k");
    assert!(
        d.heads.is_multiple_of(d.kv_heads),
        "kv_heads must divide heads"
    );
}

/// Causal grouped-query attention (layouts as in [`crate::AttentionDims`]'s docs): returns
/// `(out, probs)` with `probs` [batch·heads, seq, seq] (0 above the diagonal).
pub fn attention_forward_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: &AttentionDims,
) -> (Vec<f32>, Vec<f32>) {
    attention_check(q, k, v, d);
    let (s, hd, group) = (d.seq, d.head_dim, d.heads / d.kv_heads);
    let (wq, wk) = (d.heads * hd, d.kv_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    let mut probs = vec![0f32; d.batch * d.heads * s * s];
    for b in 0..d.batch {
        for h in 0..d.heads {
            let kh = h / group;
            let p = &mut probs[(b * d.heads + h) * s * s..][..s * s];
            for t in 0..s {
                let qi = (b * s + t) * wq + h * hd;
                let mut row: Vec<f32> = (0..=t)
                    .map(|j| {
                        let ki = (b * s + j) * wk + kh * hd;
                        (0..hd).map(|e| q[qi + e] * k[ki + e]).sum::<f32>() * scale
                    })
                    .collect();
                let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                row.iter_mut().for_each(|x| *x = (*x - mx).exp());
                let sum: f32 = row.iter().sum();
                for (j, x) in row.iter().enumerate() {
                    p[t * s + j] = x / sum;
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

/// Backward of [`attention_forward_reference`]: `(dq, dk, dv)`.
pub fn attention_backward_reference(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    d: &AttentionDims,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    attention_check(q, k, v, d);
    assert_eq!(dout.len(), q.len(), "dout must match q");
    let (s, hd, group) = (d.seq, d.head_dim, d.heads / d.kv_heads);
    let (wq, wk) = (d.heads * hd, d.kv_heads * hd);
    let scale = 1.0 / (hd as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    for b in 0..d.batch {
        for h in 0..d.heads {
            let kh = h / group;
            let p = &probs[(b * d.heads + h) * s * s..][..s * s];
            for t in 0..s {
                let qi = (b * s + t) * wq + h * hd;
                let dp: Vec<f32> = (0..=t)
                    .map(|j| {
                        let vi = (b * s + j) * wk + kh * hd;
                        (0..hd).map(|e| dout[qi + e] * v[vi + e]).sum()
                    })
                    .collect();
                let dot: f32 = (0..=t).map(|j| p[t * s + j] * dp[j]).sum();
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

/// Weighted cross-entropy: `loss = Σ_i w_i · nll_i / denominator` over rows with `w_i ≠ 0` and
/// `targets[i] < vocab`; `dlogits_i = w_i (softmax_i − onehot_i) / denominator` there, 0 elsewhere.
pub fn weighted_cross_entropy_reference(
    logits: &[f32],
    targets: &[u32],
    weights: &[f32],
    n: usize,
    vocab: usize,
    denominator: f32,
) -> (f32, Vec<f32>) {
    assert_eq!(logits.len(), n * vocab, "logits must be [n, vocab]");
    assert_eq!(targets.len(), n, "targets must be [n]");
    assert_eq!(weights.len(), n, "weights must be [n]");
    let mut loss = 0f32;
    let mut dl = vec![0f32; n * vocab];
    for i in 0..n {
        let (w, t) = (weights[i], targets[i] as usize);
        if w == 0.0 || t >= vocab {
            continue;
        }
        let coef = w / denominator;
        let row = &logits[i * vocab..(i + 1) * vocab];
        let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let se: f32 = row.iter().map(|v| (v - mx).exp()).sum();
        loss += (mx + se.ln() - row[t]) * coef;
        for j in 0..vocab {
            let p = (row[j] - mx).exp() / se;
            dl[i * vocab + j] = (p - if j == t { 1.0 } else { 0.0 }) * coef;
        }
    }
    (loss, dl)
}

#[cfg(test)]
mod tests {
    //! Finite-difference checks of the reference backward passes (central differences, the
    //! scalar objective accumulated in f64).
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn randn(rng: &mut StdRng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn dot64(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
    }

    /// Checks `grad` against central differences of `f` at `x`.
    fn fd_check(name: &str, x: &[f32], grad: &[f32], f: impl Fn(&[f32]) -> f64) {
        let h = 1e-2f32;
        let mut xp = x.to_vec();
        for i in 0..x.len() {
            xp[i] = x[i] + h;
            let up = f(&xp);
            xp[i] = x[i] - h;
            let down = f(&xp);
            xp[i] = x[i];
            let fd = (up - down) / (2.0 * h as f64);
            let err = (fd - grad[i] as f64).abs() / (grad[i].abs() as f64).max(1.0);
            assert!(
                err < 2e-3,
                "{name}[{i}]: analytic {} vs finite difference {fd} (err {err})",
                grad[i]
            );
        }
    }

    #[test]
    fn lora_backward_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(1);
        let d = LoraDims {
            n: 3,
            d_in: 5,
            d_out: 4,
            r: 2,
        };
        let scale = 1.7;
        let x = randn(&mut rng, d.n * d.d_in);
        let w = randn(&mut rng, d.d_out * d.d_in);
        let a = randn(&mut rng, d.r * d.d_in);
        let b = randn(&mut rng, d.d_out * d.r);
        let proj = randn(&mut rng, d.n * d.d_out); // L = <y, proj>, so dy = proj
        let (_, xa) = lora_forward_reference(&x, &w, &a, &b, d, scale);
        let g = lora_backward_reference(&x, &w, &a, &b, &xa, &proj, d, scale);
        let loss = |x: &[f32], a: &[f32], b: &[f32]| {
            dot64(&lora_forward_reference(x, &w, a, b, d, scale).0, &proj)
        };
        fd_check("dx", &x, &g.dx, |x| loss(x, &a, &b));
        fd_check("da", &a, &g.da, |a| loss(&x, a, &b));
        fd_check("db", &b, &g.db, |b| loss(&x, &a, b));
    }

    #[test]
    fn rmsnorm_backward_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(2);
        let (n, d, eps) = (3, 7, 1e-5);
        let x = randn(&mut rng, n * d);
        let w = randn(&mut rng, d);
        let proj = randn(&mut rng, n * d);
        let (_, rstd) = rmsnorm_forward_reference(&x, &w, n, d, eps);
        let (dx, dw) = rmsnorm_backward_reference(&x, &w, &rstd, &proj, n, d);
        fd_check("dx", &x, &dx, |x| {
            dot64(&rmsnorm_forward_reference(x, &w, n, d, eps).0, &proj)
        });
        fd_check("dw", &w, &dw, |w| {
            dot64(&rmsnorm_forward_reference(&x, w, n, d, eps).0, &proj)
        });
    }

    #[test]
    fn rope_backward_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(3);
        let (nt, nh, hd) = (3, 2, 6);
        let (cos, sin) = rope_tables(&[0, 5, 17], hd, 10_000.0);
        let x = randn(&mut rng, nt * nh * hd);
        let proj = randn(&mut rng, nt * nh * hd);
        let dx = rope_backward_reference(&proj, &cos, &sin, nt, nh, hd);
        fd_check("dx", &x, &dx, |x| {
            dot64(&rope_forward_reference(x, &cos, &sin, nt, nh, hd), &proj)
        });
    }

    #[test]
    fn rope_matches_the_hf_formula_and_keeps_norms() {
        // HF: q_embed = q * cos + rotate_half(q) * sin with cos/sin = cat(freqs, freqs).
        let (cos, sin) = rope_tables(&[3], 4, 10_000.0);
        let x = [1.0, 2.0, 3.0, 4.0];
        let y = rope_forward_reference(&x, &cos, &sin, 1, 1, 4);
        let full_cos = [cos[0], cos[1], cos[0], cos[1]];
        let full_sin = [sin[0], sin[1], sin[0], sin[1]];
        let rot = [-3.0, -4.0, 1.0, 2.0];
        for j in 0..4 {
            let want = x[j] * full_cos[j] + rot[j] * full_sin[j];
            assert!((y[j] - want).abs() < 1e-6, "{j}: {} vs {want}", y[j]);
        }
        assert!(
            (cos[0] - 3f32.cos()).abs() < 1e-6,
            "position 3, frequency 1"
        );
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!(
            (norm(&x) - norm(&y)).abs() < 1e-4,
            "a rotation keeps the norm"
        );
    }

    #[test]
    fn cross_entropy_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(4);
        let (n, vocab) = (4, 9);
        let logits: Vec<f32> = randn(&mut rng, n * vocab).iter().map(|v| v * 3.0).collect();
        let targets = [2, 8, 0, 5];
        let mask = [1, 0, 1, 1];
        let (loss, dl) = cross_entropy_reference(&logits, &targets, &mask, n, vocab);
        assert!(loss > 0.0);
        assert!(
            dl[vocab..2 * vocab].iter().all(|v| *v == 0.0),
            "masked row has no grad"
        );
        fd_check("dlogits", &logits, &dl, |l| {
            cross_entropy_reference(l, &targets, &mask, n, vocab).0 as f64
        });
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_vocab() {
        let (loss, _) = cross_entropy_reference(&[0.0; 8], &[1, 3], &[1, 1], 2, 4);
        assert!((loss - 4f32.ln()).abs() < 1e-6);
        let (loss, dl) = cross_entropy_reference(&[0.0; 8], &[1, 3], &[0, 0], 2, 4);
        assert_eq!(loss, 0.0, "no counted row: zero loss");
        assert!(dl.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn adamw_matches_a_hand_computed_step() {
        let cfg = AdamWConfig {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.5,
        };
        let (mut p, mut m, mut v) = (vec![2.0f32], vec![0.0f32], vec![0.0f32]);
        adamw_reference(&mut p, &[0.5], &mut m, &mut v, &cfg, 1);
        // step 1: p = 2 * (1 - 0.05) = 1.9; m = 0.05, v = 0.0025; m̂ = 0.5, v̂ = 0.25;
        // p -= 0.1 * 0.5 / (0.5 + 1e-8) = 0.1 (almost exactly)
        assert!((m[0] - 0.05).abs() < 1e-7);
        assert!((v[0] - 0.0025).abs() < 1e-8);
        assert!((p[0] - 1.8).abs() < 1e-6, "{}", p[0]);
        // step 2 with grad 0: p = 1.8 * 0.95 - 0.1 * (0.045 / 0.19) / (sqrt(0.002475 / 0.0199) + eps)
        adamw_reference(&mut p, &[0.0], &mut m, &mut v, &cfg, 2);
        let mhat = 0.045f64 / (1.0 - 0.81);
        let vhat = 0.002475f64 / (1.0 - 0.9801);
        let want = 1.8f64 * 0.95 - 0.1 * mhat / (vhat.sqrt() + 1e-8);
        assert!((p[0] as f64 - want).abs() < 1e-5, "{} vs {want}", p[0]);
    }

    #[test]
    fn silu_mul_backward_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(5);
        let g: Vec<f32> = randn(&mut rng, 9).iter().map(|v| v * 4.0).collect();
        let u = randn(&mut rng, 9);
        let proj = randn(&mut rng, 9);
        let (dg, du) = silu_mul_backward_reference(&g, &u, &proj);
        fd_check("dg", &g, &dg, |g| dot64(&silu_mul_reference(g, &u), &proj));
        fd_check("du", &u, &du, |u| dot64(&silu_mul_reference(&g, u), &proj));
    }

    #[test]
    fn attention_backward_matches_finite_differences() {
        let mut rng = StdRng::seed_from_u64(6);
        let d = AttentionDims {
            batch: 2,
            seq: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 3,
        };
        let n = d.batch * d.seq;
        let q = randn(&mut rng, n * d.heads * d.head_dim);
        let k = randn(&mut rng, n * d.kv_heads * d.head_dim);
        let v = randn(&mut rng, n * d.kv_heads * d.head_dim);
        let proj = randn(&mut rng, q.len());
        let (_, p) = attention_forward_reference(&q, &k, &v, &d);
        let (dq, dk, dv) = attention_backward_reference(&q, &k, &v, &p, &proj, &d);
        let f = |q: &[f32], k: &[f32], v: &[f32]| {
            dot64(&attention_forward_reference(q, k, v, &d).0, &proj)
        };
        fd_check("dq", &q, &dq, |q| f(q, &k, &v));
        fd_check("dk", &k, &dk, |k| f(&q, k, &v));
        fd_check("dv", &v, &dv, |v| f(&q, &k, v));
    }

    #[test]
    fn weighted_cross_entropy_matches_finite_differences_and_the_mean_form() {
        let mut rng = StdRng::seed_from_u64(7);
        let (n, vocab) = (4, 9);
        let logits: Vec<f32> = randn(&mut rng, n * vocab).iter().map(|v| v * 3.0).collect();
        let targets = [2, 8, 0, 5];
        let weights = [1.0, 0.0, 1.0, 1.0];
        let (loss, dl) =
            weighted_cross_entropy_reference(&logits, &targets, &weights, n, vocab, 3.0);
        let (mean, _) = cross_entropy_reference(&logits, &targets, &[1, 0, 1, 1], n, vocab);
        assert!(
            (loss - mean).abs() < 1e-5,
            "denominator = count gives the mean"
        );
        fd_check("dlogits", &logits, &dl, |l| {
            weighted_cross_entropy_reference(l, &targets, &weights, n, vocab, 3.0).0 as f64
        });
    }
}
