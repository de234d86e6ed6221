//! The decoder's kernels and the whole [`GpuLlama`] LoRA step on wgpu, against the CPU
//! references. With no wgpu adapter these tests fail (never skip).

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rtlab_kernels::reference::*;
use rtlab_kernels::reference_llama::{llama_reference, LlamaBatch};
use rtlab_kernels::{
    AdamWConfig, AttentionDims, BatchedGemm, GpuLlama, LlamaShape, Operand, PROJECTIONS,
};

mod common;
use common::*;

/// Scale-aware: max |a − b| ≤ 1e-3 · max |ref| (the grads are far below 1, where the
/// `max(1, |ref|)` check of [`assert_close`] is an absolute one).
fn assert_close_scaled(name: &str, got: &[f32], want: &[f32]) {
    let peak = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
    assert!(
        worst <= 1e-3 * peak,
        "{name}: max error {worst} vs peak {peak}"
    );
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[test]
fn batched_matmul_matches_reference_per_entry() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(20);
    // 6 entries split (3, 2); B shared within groups of 2 inner entries via div; A transposed.
    let (batch, zi, m, k, n) = (6, 2, 70, 19, 67);
    let a = rand_vec(&mut rng, batch * m * k, 1.0);
    let b = rand_vec(&mut rng, 3 * k * n, 1.0);
    let g = BatchedGemm {
        batch,
        zi,
        m,
        n,
        k,
        a: Operand::packed(k, m, zi).t(),
        b: Operand {
            base: 0,
            outer: k * n,
            inner: 0,
            div: 2,
            rs: n,
            cs: 1,
        },
        c: Operand::packed(m, n, zi),
    };
    let ad = gpu.upload(&a, &[a.len()]).unwrap();
    let bd = gpu.upload(&b, &[b.len()]).unwrap();
    let c = gpu.full(&[batch * m * n], f32::NAN);
    gpu.batched_matmul_into(&g, &ad, &bd, 0.5, &c, false)
        .unwrap();
    let got = gpu.download(&c).unwrap();
    for z in 0..batch {
        let az = &a[z * m * k..(z + 1) * m * k];
        let bz = &b[(z / zi) * k * n..(z / zi + 1) * k * n];
        let want: Vec<f32> = matmul_reference(az, true, bz, false, m, k, n)
            .iter()
            .map(|v| 0.5 * v)
            .collect();
        assert_close(
            &format!("entry {z}"),
            &got[z * m * n..(z + 1) * m * n],
            &want,
        );
    }
    // an operand reaching past its buffer is refused
    let short = gpu.full(&[10], 0.0);
    let err = gpu
        .batched_matmul_into(&g, &short, &bd, 1.0, &c, false)
        .unwrap_err();
    assert!(err.to_string().contains("a reaches element"), "{err}");
}

#[test]
fn elementwise_kernels_match_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(21);
    let (vocab, hidden) = (259, 33);
    let table = rand_vec(&mut rng, vocab * hidden, 1.0);
    let ids: Vec<u32> = (0..77).map(|_| rng.random_range(0..vocab as u32)).collect();
    let got = gpu.embedding_host(&table, vocab, hidden, &ids).unwrap();
    assert_close(
        "embedding",
        &got,
        &embedding_reference(&table, hidden, &ids),
    );
    assert!(gpu.embedding_host(&table, vocab, hidden, &[259]).is_err());

    let len = 1000;
    let g = rand_vec(&mut rng, len, 6.0);
    let u = rand_vec(&mut rng, len, 2.0);
    let dout = rand_vec(&mut rng, len, 1.0);
    let (gd, ud, dd) = (
        gpu.upload(&g, &[len]).unwrap(),
        gpu.upload(&u, &[len]).unwrap(),
        gpu.upload(&dout, &[len]).unwrap(),
    );
    let out = gpu.full(&[len], f32::NAN);
    gpu.silu_mul_into(&gd, &ud, &out).unwrap();
    assert_close(
        "silu_mul",
        &gpu.download(&out).unwrap(),
        &silu_mul_reference(&g, &u),
    );
    let (dg, du) = (gpu.full(&[len], f32::NAN), gpu.full(&[len], f32::NAN));
    gpu.silu_mul_backward_into(&gd, &ud, &dd, &dg, &du).unwrap();
    let (dg_ref, du_ref) = silu_mul_backward_reference(&g, &u, &dout);
    assert_close("silu_mul dg", &gpu.download(&dg).unwrap(), &dg_ref);
    assert_close("silu_mul du", &gpu.download(&du).unwrap(), &du_ref);

    // add / mul / mul_add / bias / scale / sum of squares
    gpu.add_into(&gd, &ud, &out).unwrap();
    let want: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a + b).collect();
    assert_close("add", &gpu.download(&out).unwrap(), &want);
    gpu.mul_into(&gd, &ud, &out).unwrap();
    let prod: Vec<f32> = g.iter().zip(&u).map(|(a, b)| a * b).collect();
    assert_close("mul", &gpu.download(&out).unwrap(), &prod);
    gpu.mul_add_assign(&out, &gd, &dd).unwrap();
    let want: Vec<f32> = (0..len).map(|i| prod[i] + g[i] * dout[i]).collect();
    assert_close("mul_add_assign", &gpu.download(&out).unwrap(), &want);
    gpu.add_assign(&out, &ud).unwrap();
    let want: Vec<f32> = (0..len).map(|i| want[i] + u[i]).collect();
    assert_close("add_assign", &gpu.download(&out).unwrap(), &want);
    gpu.scale_in_place(&out, -0.5);
    let want: Vec<f32> = want.iter().map(|v| -0.5 * v).collect();
    assert_close("scale", &gpu.download(&out).unwrap(), &want);
    let y = gpu.upload(&g, &[40, 25]).unwrap();
    let bias = rand_vec(&mut rng, 25, 1.0);
    gpu.bias_add(&y, &gpu.upload(&bias, &[25]).unwrap())
        .unwrap();
    let want: Vec<f32> = (0..len).map(|i| g[i] + bias[i % 25]).collect();
    assert_close("bias_add", &gpu.download(&y).unwrap(), &want);
    let sums = gpu.full(&[3], f32::NAN);
    gpu.sum_squares_into(&gd, &sums, 1).unwrap();
    let ss: f32 = g.iter().map(|v| v * v).sum();
    let got = gpu.download(&sums).unwrap()[1];
    assert!((got - ss).abs() / ss < 1e-5, "sum of squares {got} vs {ss}");
}

#[test]
fn attention_forward_and_backward_match_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(22);
    for d in [
        AttentionDims {
            batch: 2,
            seq: 7,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        },
        AttentionDims {
            batch: 1,
            seq: 70, // more than one 64-row tile
            heads: 3,
            kv_heads: 1,
            head_dim: 6,
        },
        AttentionDims {
            batch: 3,
            seq: 5,
            heads: 2,
            kv_heads: 2,
            head_dim: 4,
        },
    ] {
        let n = d.batch * d.seq;
        let q = rand_vec(&mut rng, n * d.heads * d.head_dim, 1.5);
        let k = rand_vec(&mut rng, n * d.kv_heads * d.head_dim, 1.5);
        let v = rand_vec(&mut rng, n * d.kv_heads * d.head_dim, 1.0);
        let dout = rand_vec(&mut rng, q.len(), 1.0);
        let (out_ref, p_ref) = attention_forward_reference(&q, &k, &v, &d);
        let (dq_ref, dk_ref, dv_ref) = attention_backward_reference(&q, &k, &v, &p_ref, &dout, &d);
        let up = |x: &[f32], h: usize| gpu.upload(x, &[n, h * d.head_dim]).unwrap();
        let (qd, kd, vd) = (up(&q, d.heads), up(&k, d.kv_heads), up(&v, d.kv_heads));
        let out = gpu.full(&qd.shape, f32::NAN);
        let probs = gpu.full(&[d.batch * d.heads, d.seq, d.seq], f32::NAN);
        gpu.attention_forward_into(&d, &qd, &kd, &vd, &out, &probs)
            .unwrap();
        assert_close(
            &format!("out {d:?}"),
            &gpu.download(&out).unwrap(),
            &out_ref,
        );
        assert_close(
            &format!("probs {d:?}"),
            &gpu.download(&probs).unwrap(),
            &p_ref,
        );
        let (dq, dk, dv) = (
            gpu.full(&qd.shape, f32::NAN),
            gpu.full(&kd.shape, f32::NAN),
            gpu.full(&vd.shape, f32::NAN),
        );
        let scratch = gpu.uninit(&probs.shape);
        let dod = up(&dout, d.heads);
        gpu.attention_backward_into(&d, &qd, &kd, &vd, &probs, &dod, &dq, &dk, &dv, &scratch)
            .unwrap();
        assert_close(&format!("dq {d:?}"), &gpu.download(&dq).unwrap(), &dq_ref);
        assert_close(&format!("dk {d:?}"), &gpu.download(&dk).unwrap(), &dk_ref);
        assert_close(&format!("dv {d:?}"), &gpu.download(&dv).unwrap(), &dv_ref);
    }
}

#[test]
fn weighted_cross_entropy_matches_reference() {
    let gpu = gpu();
    let mut rng = StdRng::seed_from_u64(23);
    let (n, vocab) = (37, 259);
    let logits = rand_vec(&mut rng, n * vocab, 8.0);
    let mut targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
    targets[3] = 9999; // out of range: ignored
    let weights: Vec<f32> = (0..n).map(|i| if i % 4 == 1 { 0.0 } else { 1.0 }).collect();
    let (loss_ref, dl_ref) =
        weighted_cross_entropy_reference(&logits, &targets, &weights, n, vocab, 50.0);
    let (loss, dl) = gpu
        .weighted_cross_entropy_host(&logits, &targets, &weights, n, vocab, 50.0)
        .unwrap();
    assert_close("loss", &[loss], &[loss_ref]);
    assert_close("dlogits", &dl, &dl_ref);
}

// ---- the whole model ----

fn tiny_shape(qkv_bias: bool) -> LlamaShape {
    LlamaShape {
        hidden: 32,
        intermediate: 48,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
        vocab: 259,
        rms_eps: 1e-6,
        rope_theta: 10_000.0,
        qkv_bias,
        max_positions: 64,
    }
}

type Weights = HashMap<String, (Vec<usize>, Vec<f32>)>;
type Adapters = HashMap<String, (Vec<f32>, Vec<f32>)>;

/// Random weights and adapters (B non-zero, so A's gradients are too).
fn tiny_model(shape: &LlamaShape, r: usize, tied: bool, seed: u64) -> (Weights, Adapters) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rv = |len: usize, sc: f32| rand_vec(&mut rng, len, sc);
    let h = shape.hidden;
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        (vec![shape.vocab, h], rv(shape.vocab * h, 1.0)),
    );
    if !tied {
        w.insert(
            "lm_head.weight".to_string(),
            (vec![shape.vocab, h], rv(shape.vocab * h, 0.3)),
        );
    }
    let norm = |v: Vec<f32>| v.iter().map(|x| 1.0 + 0.3 * x).collect::<Vec<f32>>();
    w.insert("model.norm.weight".to_string(), (vec![h], norm(rv(h, 1.0))));
    let mut ad = HashMap::new();
    for l in 0..shape.layers {
        for n in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(
                format!("model.layers.{l}.{n}.weight"),
                (vec![h], norm(rv(h, 1.0))),
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

struct Batch {
    ids: Vec<u32>,
    targets: Vec<u32>,
    mask: Vec<f32>,
    batch: usize,
    seq: usize,
    denominator: f32,
}

impl Batch {
    fn random(rng: &mut StdRng, vocab: usize, batch: usize, seq: usize) -> Batch {
        let n = batch * seq;
        let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
        let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
        let mask: Vec<f32> = (0..n).map(|i| if i % 5 == 2 { 0.0 } else { 1.0 }).collect();
        let denominator = mask.iter().sum::<f32>() + 3.0; // as if part of a bigger batch
        Batch {
            ids,
            targets,
            mask,
            batch,
            seq,
            denominator,
        }
    }

    fn as_ref(&self) -> LlamaBatch<'_> {
        LlamaBatch {
            ids: &self.ids,
            targets: &self.targets,
            mask: &self.mask,
            batch: self.batch,
            seq: self.seq,
            denominator: self.denominator,
        }
    }

    fn run(
        &self,
        model: &mut GpuLlama,
        drop: &HashMap<String, Vec<f32>>,
        calls: &mut Vec<String>,
    ) -> f32 {
        let mut dropout = |path: &str, rows: usize, cols: usize| {
            calls.push(path.to_string());
            drop.get(path).map(|m| {
                assert_eq!(m.len(), rows * cols, "{path}: mask shape");
                m.clone()
            })
        };
        model
            .forward_backward(
                &self.ids,
                &self.targets,
                &self.mask,
                self.batch,
                self.seq,
                self.denominator,
                &mut dropout,
            )
            .unwrap()
    }
}

fn check_model_against_reference(qkv_bias: bool, tied: bool, with_dropout: bool, seed: u64) {
    let gpu = gpu();
    let shape = tiny_shape(qkv_bias);
    let (r, scale) = (4, 2.0);
    let (w, mut ad) = tiny_model(&shape, r, tied, seed);
    // adapt a subset
    ad.remove("model.layers.1.self_attn.k_proj");
    ad.remove("model.layers.0.mlp.up_proj");
    let mut rng = StdRng::seed_from_u64(seed + 100);
    let b = Batch::random(&mut rng, shape.vocab, 2, 7);
    let n = b.batch * b.seq;
    let mut drop = HashMap::new();
    if with_dropout {
        for (path, cols) in [
            ("model.layers.0.self_attn.q_proj", shape.hidden),
            ("model.layers.1.mlp.down_proj", shape.intermediate),
            (
                "model.layers.1.self_attn.o_proj",
                shape.heads * shape.head_dim,
            ),
        ] {
            let keep = 0.8f32;
            let m: Vec<f32> = (0..n * cols)
                .map(|_| {
                    if rng.random_range(0.0..1.0) < keep {
                        1.0 / keep
                    } else {
                        0.0
                    }
                })
                .collect();
            drop.insert(path.to_string(), m);
        }
    }
    let want = llama_reference(&shape, &w, &ad, r, scale, &b.as_ref(), &drop);
    let mut model = GpuLlama::new(&gpu, shape, &w, &ad, r, scale).unwrap();
    let name = format!("qkv_bias={qkv_bias} tied={tied} dropout={with_dropout}");

    let logits = model.logits(&b.ids, b.batch, b.seq).unwrap();
    if !with_dropout {
        assert_close(&format!("{name}: logits"), &logits, &f32s(&want.logits));
    }
    let mut calls = Vec::new();
    let loss = b.run(&mut model, &drop, &mut calls);
    // the callback runs once per adapted projection, in forward order
    let order: Vec<String> = (0..shape.layers)
        .flat_map(|l| {
            PROJECTIONS
                .iter()
                .map(move |p| format!("model.layers.{l}.{p}"))
        })
        .filter(|p| ad.contains_key(p))
        .collect();
    assert_eq!(calls, order, "dropout callback order");
    assert_close(&format!("{name}: loss"), &[loss], &[want.loss as f32]);
    let grads = model.grads().unwrap();
    assert_eq!(grads.len(), ad.len());
    for (path, (da, db)) in &grads {
        let (ra, rb) = &want.grads[path];
        assert!(
            ra.iter().any(|v| v.abs() > 1e-6) && rb.iter().any(|v| v.abs() > 1e-6),
            "{path}: reference grads must be non-zero for the test to mean something"
        );
        assert_close(&format!("{name}: dA {path}"), da, &f32s(ra));
        assert_close(&format!("{name}: dB {path}"), db, &f32s(rb));
        assert_close_scaled(&format!("{name}: dA {path}"), da, &f32s(ra));
        assert_close_scaled(&format!("{name}: dB {path}"), db, &f32s(rb));
    }

    // a second micro-batch adds into the same buffers
    let loss2 = b.run(&mut model, &drop, &mut Vec::new());
    assert_close(&format!("{name}: loss again"), &[loss2], &[loss]);
    for (path, (da, _)) in model.grads().unwrap() {
        let twice: Vec<f32> = want.grads[&path]
            .0
            .iter()
            .map(|v| 2.0 * *v as f32)
            .collect();
        assert_close(&format!("{name}: accumulated dA {path}"), &da, &twice);
    }
}

#[test]
fn llama_step_matches_reference_without_bias() {
    check_model_against_reference(false, false, false, 30);
}

#[test]
fn llama_step_matches_reference_with_qkv_bias_and_tied_embeddings() {
    check_model_against_reference(true, true, false, 31);
}

#[test]
fn llama_step_matches_reference_with_dropout() {
    check_model_against_reference(true, false, true, 32);
}

#[test]
fn three_adamw_steps_match_reference() {
    let gpu = gpu();
    let shape = tiny_shape(true);
    let (r, scale) = (4, 2.0);
    let (w, mut ad) = tiny_model(&shape, r, false, 40);
    let cfg = AdamWConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let mut model = GpuLlama::new(&gpu, shape, &w, &ad, r, scale).unwrap();
    let mut moments: HashMap<String, [Vec<f32>; 4]> = ad
        .iter()
        .map(|(p, (a, b))| {
            (
                p.clone(),
                [
                    vec![0.0; a.len()],
                    vec![0.0; a.len()],
                    vec![0.0; b.len()],
                    vec![0.0; b.len()],
                ],
            )
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(41);
    let none = HashMap::new();
    for t in 1..=3 {
        let b = Batch::random(&mut rng, shape.vocab, 2, 7);
        model.zero_grads().unwrap();
        let loss = b.run(&mut model, &none, &mut Vec::new());
        let want = llama_reference(&shape, &w, &ad, r, scale, &b.as_ref(), &none);
        assert_close(&format!("loss step {t}"), &[loss], &[want.loss as f32]);
        // clip as a trainer would, on both sides
        let norm_ref = want
            .grads
            .values()
            .flat_map(|(a, b)| a.iter().chain(b))
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt();
        let norm = model.grad_norm().unwrap();
        assert_close(&format!("grad norm step {t}"), &[norm], &[norm_ref as f32]);
        let factor = (0.5 / norm_ref).min(1.0);
        model.scale_grads(factor as f32).unwrap();
        model.adamw_step(&cfg, t).unwrap();
        for (path, (a, b)) in ad.iter_mut() {
            let (ga, gb) = &want.grads[path];
            let ga: Vec<f32> = ga.iter().map(|v| (v * factor) as f32).collect();
            let gb: Vec<f32> = gb.iter().map(|v| (v * factor) as f32).collect();
            let [ma, va, mb, vb] = moments.get_mut(path).unwrap();
            adamw_reference(a, &ga, ma, va, &cfg, t as u32);
            adamw_reference(b, &gb, mb, vb, &cfg, t as u32);
        }
        let got = model.adapters().unwrap();
        for (path, (a, b)) in &ad {
            assert_close(&format!("A {path} after step {t}"), &got[path].0, a);
            assert_close(&format!("B {path} after step {t}"), &got[path].1, b);
        }
    }
    // moments round-trip (as a checkpoint would)
    let m = model.moments().unwrap();
    for (path, [ma, va, mb, vb]) in &moments {
        assert_close(&format!("mA {path}"), &m[path][0], ma);
        assert_close(&format!("vA {path}"), &m[path][1], va);
        assert_close(&format!("mB {path}"), &m[path][2], mb);
        assert_close(&format!("vB {path}"), &m[path][3], vb);
    }
    let mut fresh = GpuLlama::new(&gpu, shape, &w, &ad, r, scale).unwrap();
    fresh.set_moments(&m).unwrap();
    assert_eq!(fresh.moments().unwrap(), m);
}

#[test]
fn llama_refuses_bad_inputs() {
    let gpu = gpu();
    let shape = tiny_shape(false);
    let (w, mut ad) = tiny_model(&shape, 4, false, 50);
    let mut model = GpuLlama::new(&gpu, shape, &w, &ad, 4, 1.0).unwrap();
    let err = model.logits(&[259, 1], 1, 2).unwrap_err().to_string();
    assert!(err.contains("not below vocab"), "{err}");
    ad.insert("model.layers.9.self_attn.q_proj".into(), (vec![], vec![]));
    let err = GpuLlama::new(&gpu, shape, &w, &ad, 4, 1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("names no projection"), "{err}");
    let mut w2 = w.clone();
    w2.remove("model.layers.1.mlp.up_proj.weight");
    ad.remove("model.layers.9.self_attn.q_proj");
    let err = GpuLlama::new(&gpu, shape, &w2, &ad, 4, 1.0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing weight model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
}
