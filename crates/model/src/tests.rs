//! Specs of the model: gradients reach every adapter and match finite differences, the KV
//! cache changes nothing, adapters round-trip bit for bit in PEFT's names and shapes, and a merged
//! model computes what base + adapter computes.

use crate::config::ModelConfig;
use crate::model::{load_weights, masked_nll, CausalLm, KvCache, LoraSpec, Pass};
use crate::testing::{
    lora_model as model, lora_spec as spec, nudge, randomize_b, scalar, tiny_dir,
};
use crate::tiny::{self, TinySpec};
use crate::{examples, peft};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

fn loss(m: &CausalLm) -> Tensor {
    loss_in(m, &mut Pass::inference())
}

fn loss_in(m: &CausalLm, pass: &mut Pass) -> Tensor {
    let (ids, targets, mask) = tiny_batch(m.dtype);
    let picked = m.target_log_probs(&ids, &targets, pass).unwrap();
    masked_nll(&picked, &mask, 8.0).unwrap()
}

/// Two rows of token ids, their next tokens, and which positions are scored.
fn tiny_batch(dtype: DType) -> (Tensor, Tensor, Tensor) {
    let ids = Tensor::new(
        &[
            [3u32, 70, 101, 5, 9, 200, 44],
            [256, 12, 13, 14, 15, 16, 17],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let targets = Tensor::new(
        &[
            [70u32, 101, 5, 9, 200, 44, 256],
            [12, 13, 14, 15, 16, 17, 256],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let mask = Tensor::new(
        &[
            [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0],
        ],
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap();
    (ids, targets, mask)
}

/// The largest elementwise difference of two same-shaped f32 tensors.
fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let values = |t: &Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    values(a)
        .iter()
        .zip(&values(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}
#[test]
fn at_peft_init_b_gets_gradient_and_a_gets_none() {
    let dir = tiny_dir(crate::config::Arch::Llama);
    let m = model(dir.path(), DType::F32);
    let grads = loss(&m).backward().unwrap();
    for (path, l) in m.adapters() {
        let gb = grads.get(l.b.as_tensor()).expect("B has a gradient");
        assert!(
            scalar(&gb.abs().unwrap().sum_all().unwrap()) > 0.0,
            "{path}: B's gradient is zero"
        );
        let ga = grads
            .get(l.a.as_tensor())
            .map(|g| scalar(&g.abs().unwrap().sum_all().unwrap()))
            .unwrap_or(0.0);
        assert_eq!(ga, 0.0, "{path}: with B = 0, dL/dA must be exactly 0");
    }
}

#[test]
fn every_lora_parameter_gets_a_gradient_matching_finite_differences() {
    for arch in [crate::config::Arch::Llama, crate::config::Arch::Qwen2] {
        let dir = tiny_dir(arch);
        let m = model(dir.path(), DType::F64);
        randomize_b(&m);
        let grads = loss(&m).backward().unwrap();
        let adapters = m.adapters();
        assert_eq!(adapters.len(), 2 * 7, "7 projections in each of 2 layers");
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (path, l) in &adapters {
            for (which, var) in [("A", &l.a), ("B", &l.b)] {
                let g: Vec<f64> = grads
                    .get(var.as_tensor())
                    .unwrap_or_else(|| panic!("{path}.{which}: no gradient"))
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                assert!(
                    g.iter().any(|x| *x != 0.0),
                    "{arch:?} {path}.{which}: gradient is all zero"
                );
                // Three random elements per matrix against central differences.
                for _ in 0..3 {
                    let i = rng.random_range(0..g.len());
                    let eps = 1e-5;
                    nudge(var, i, eps);
                    let up = scalar(&loss(&m));
                    nudge(var, i, -2.0 * eps);
                    let down = scalar(&loss(&m));
                    nudge(var, i, eps);
                    let numeric = (up - down) / (2.0 * eps);
                    let err = (numeric - g[i]).abs() / g[i].abs().max(1e-6);
                    assert!(
                        err < 1e-4 || (numeric - g[i]).abs() < 1e-9,
                        "{arch:?} {path}.{which}[{i}]: backprop {} vs finite difference {numeric}",
                        g[i]
                    );
                }
            }
        }
    }
}

#[test]
fn the_kv_cache_gives_the_logits_of_a_full_forward() {
    // Through the general attention (a tracked pass) and decoding's one-token kernel, which reads
    // the cache in place (`decode_attention`).
    let dir = tiny_dir(crate::config::Arch::Qwen2);
    let m = model(dir.path(), DType::F32);
    randomize_b(&m);
    let ids: Vec<u32> = vec![5, 17, 99, 3, 250, 8, 41];
    let full = m
        .forward(
            &Tensor::new(&ids[..], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
            None,
            &mut Pass::inference(),
        )
        .unwrap();
    for (name, pass) in [
        ("tracked", Pass::inference as fn() -> Pass),
        ("decoding", Pass::decoding),
    ] {
        let mut cache = KvCache::default();
        let prefix = Tensor::new(&ids[..4], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        m.forward(&prefix, Some(&mut cache), &mut pass()).unwrap();
        for (k, &id) in ids.iter().enumerate().skip(4) {
            let step = m
                .forward(
                    &Tensor::new(&[[id]], &Device::Cpu).unwrap(),
                    Some(&mut cache),
                    &mut pass(),
                )
                .unwrap();
            let worst = max_abs_diff(&step, &full.narrow(1, k, 1).unwrap());
            assert!(
                worst < 1e-4,
                "{name}, position {k}: cached logits differ by {worst}"
            );
        }
    }
}

/// A prompt prefilled once and shared by its samples (`KvCache::repeat`, then `stack` with another
/// prompt's) gives every row the logits of its own sequence, through decoding's kernel (which reads
/// the shared prompt, then the row's own positions) and through the general attention after it
/// (which copies the prompt into each row first).
#[test]
fn a_prompt_shared_by_its_samples_gives_each_row_the_logits_of_its_own_sequence() {
    let dir = tiny_dir(crate::config::Arch::Qwen2);
    let m = model(dir.path(), DType::F32);
    randomize_b(&m);
    let row = |ids: &[u32]| {
        Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap()
    };
    let prefill = |ids: &[u32]| {
        let mut cache = KvCache::default();
        m.forward(&row(ids), Some(&mut cache), &mut Pass::decoding())
            .unwrap();
        cache
    };
    let last_logits = |ids: &[u32]| {
        let full = m.forward(&row(ids), None, &mut Pass::inference()).unwrap();
        full.narrow(1, ids.len() - 1, 1).unwrap()
    };
    let (a, b): (&[u32], &[u32]) = (&[5, 17, 99, 3], &[250, 8]);
    // One prompt's three samples, then two prompts' (two samples and one) stacked.
    let cases: [(Vec<&[u32]>, KvCache); 2] = [
        (vec![a, a, a], prefill(a).repeat(3).unwrap()),
        (
            vec![a, a, b],
            KvCache::stack(&[prefill(a).repeat(2).unwrap(), prefill(b).repeat(1).unwrap()])
                .unwrap(),
        ),
    ];
    for (case, (prompts, mut cache)) in cases.into_iter().enumerate() {
        let mut seqs: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        // Two decoding steps, each row its own token; then, where the rows are as long as each
        // other, a tracked step through the general attention.
        let mut passes: Vec<fn() -> Pass> = vec![Pass::decoding, Pass::decoding];
        if case == 0 {
            passes.push(Pass::inference);
        }
        for (step, pass) in passes.into_iter().enumerate() {
            let next: Vec<u32> = (0..seqs.len())
                .map(|r| (40 + 13 * r + step) as u32)
                .collect();
            let input = Tensor::new(next.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(1)
                .unwrap();
            let logits = m.forward(&input, Some(&mut cache), &mut pass()).unwrap();
            for (r, seq) in seqs.iter_mut().enumerate() {
                seq.push(next[r]);
                let worst = max_abs_diff(&logits.narrow(0, r, 1).unwrap(), &last_logits(seq));
                assert!(
                    worst < 1e-4,
                    "case {case}, step {step}, row {r}: logits differ by {worst}"
                );
            }
        }
    }
}

#[test]
fn a_saved_adapter_reloads_bit_identically_with_peft_names_and_shapes() {
    let dir = tiny_dir(crate::config::Arch::Llama);
    let m = model(dir.path(), DType::F32);
    randomize_b(&m);
    let out = tempfile::tempdir().unwrap();
    peft::save(out.path(), &m, &spec(2), "tiny").unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 2);
    assert_eq!(cfg["bias"], "none");
    let raw =
        candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    let q_a = &raw["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    assert_eq!(q_a.dims(), &[2, 16], "A is [r, in]");
    assert_eq!(
        raw["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].dims(),
        &[16, 2],
        "B is [out, r]"
    );
    assert_eq!(
        raw["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].dims(),
        &[8, 2],
        "k_proj out = kv_heads · head_dim"
    );
    assert_eq!(raw.len(), 2 * 7 * 2);
    let (_, loaded) = peft::load(out.path(), &Device::Cpu).unwrap();
    for (path, l) in m.adapters() {
        let (a, b) = &loaded[&path];
        let bits = |t: &Tensor| -> Vec<u32> {
            let values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            values.iter().map(|v| v.to_bits()).collect()
        };
        for (mine, theirs) in [(l.a.as_tensor(), a), (l.b.as_tensor(), b)] {
            assert_eq!(bits(mine), bits(theirs), "{path} changed in the round trip");
        }
    }
}

#[test]
fn a_merged_model_computes_what_base_plus_adapter_computes() {
    let dir = tiny_dir(crate::config::Arch::Llama);
    let m = model(dir.path(), DType::F32);
    randomize_b(&m);
    let adapter = tempfile::tempdir().unwrap();
    peft::save(adapter.path(), &m, &spec(2), "tiny").unwrap();
    let merged = tempfile::tempdir().unwrap();
    let changed = crate::merge(dir.path(), adapter.path(), merged.path()).unwrap();
    assert_eq!(changed, 14);
    let cfg = ModelConfig::from_dir(merged.path()).unwrap();
    let plain = CausalLm::new(
        cfg,
        load_weights(merged.path(), DType::F32, &Device::Cpu).unwrap(),
        None,
        0,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let ids = Tensor::new(&[[1u32, 2, 3, 200, 100]], &Device::Cpu).unwrap();
    let worst = max_abs_diff(
        &m.forward(&ids, None, &mut Pass::inference()).unwrap(),
        &plain.forward(&ids, None, &mut Pass::inference()).unwrap(),
    );
    assert!(worst < 1e-4, "merged logits differ by {worst}");
}

#[test]
fn the_tiny_tokenizer_is_one_token_per_byte_and_round_trips() {
    let dir = tiny_dir(crate::config::Arch::Llama);
    let tok = examples::load_tokenizer(dir.path()).unwrap();
    let text = "module m(input a); // é\n  assign y = ~a;\nendmodule";
    let ids = examples::encode(&tok, text).unwrap();
    assert_eq!(ids.len(), text.len(), "one token per byte");
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(256));
}

#[test]
fn only_response_tokens_are_scored() {
    let dir = tiny_dir(crate::config::Arch::Llama);
    let tok = examples::load_tokenizer(dir.path()).unwrap();
    let pairs = vec![("p".to_string(), "ab".to_string())];
    let (ex, _) = examples::build(
        &tok,
        &pairs,
        "<{prompt}>",
        64,
        256,
        examples::TooLong::Error,
    )
    .unwrap();
    // "<p>" + "ab" + eos: inputs < p > a b, targets p > a b eos; scored: a, b, eos.
    assert_eq!(
        ex[0].ids,
        vec![
            b'<' as u32,
            b'p' as u32,
            b'>' as u32,
            b'a' as u32,
            b'b' as u32,
            256
        ]
    );
    let b = examples::batch(&[&ex[0]], 256, DType::F32, &Device::Cpu).unwrap();
    let mask: Vec<f32> = b.mask.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(mask, vec![0.0, 0.0, 1.0, 1.0, 1.0]);
    assert_eq!(b.scored, 3);
}

/// QLoRA: a base whose projections stay quantized trains exactly as its dequantized copy does (the
/// training forward multiplies by the dequantized weight, and the backward's `dy W` uses the same
/// weight), so the loss and every adapter gradient agree; inference uses the quantized kernel, which
/// also quantizes activations, and stays close.
#[test]
fn a_quantized_base_trains_exactly_as_its_dequantized_copy() {
    use candle_core::quantized::{GgmlDType, QTensor};
    let dir = tempfile::tempdir().unwrap();
    // Rows of 64: a multiple of Q8_0's 32-value blocks.
    let tiny = TinySpec {
        arch: crate::config::Arch::Llama,
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 64,
        max_positions: 64,
        seed: 3,
    };
    tiny::create(dir.path(), &tiny).unwrap();
    let cfg = ModelConfig::from_dir(dir.path()).unwrap();
    let mut dense = load_weights(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let mut quantized = crate::model::QuantizedWeights::new();
    let names: Vec<String> = dense
        .keys()
        .filter(|n| n.ends_with("_proj.weight"))
        .cloned()
        .collect();
    assert_eq!(names.len(), 2 * 7);
    for name in names {
        let q = QTensor::quantize(&dense[&name], GgmlDType::Q8_0).unwrap();
        // The dequantized copy is what the f32 model holds.
        dense.insert(name.clone(), q.dequantize(&Device::Cpu).unwrap());
        quantized.insert(
            name,
            std::sync::Arc::new(crate::quantized::QuantizedWeight::new(q).unwrap()),
        );
    }
    let lora = spec(4);
    let q_model = CausalLm::with_quantized(
        cfg.clone(),
        dense.clone(),
        quantized,
        Some(&lora),
        7,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let f_model = CausalLm::new(cfg, dense, Some(&lora), 7, DType::F32, &Device::Cpu).unwrap();
    randomize_b(&q_model);
    randomize_b(&f_model);
    let (lq, lf) = (
        loss_in(&q_model, &mut Pass::training(1)),
        loss_in(&f_model, &mut Pass::training(1)),
    );
    assert!((scalar(&lq) - scalar(&lf)).abs() < 1e-5, "{lq} vs {lf}");
    let (gq, gf) = (lq.backward().unwrap(), lf.backward().unwrap());
    for ((path, a), (_, b)) in q_model.adapters().iter().zip(f_model.adapters()) {
        for (which, va, vb) in [("A", &a.a, &b.a), ("B", &a.b, &b.b)] {
            let d = max_abs_diff(
                gq.get(va.as_tensor()).unwrap(),
                gf.get(vb.as_tensor()).unwrap(),
            );
            assert!(d < 1e-5, "{path} {which}: gradients differ by {d}");
        }
    }
    // Inference runs the quantized kernel: close to the f32 model, not equal.
    let (iq, i_f) = (scalar(&loss(&q_model)), scalar(&loss(&f_model)));
    assert!((iq - i_f).abs() < 0.05 && iq != i_f, "{iq} vs {i_f}");
}

/// Pairs on the tiny byte-level model: two prompts, each with a chosen and a rejected response of
/// different lengths (so that IPO's per-token average differs from the sum).
#[test]
fn decoding_keeps_no_autograd_graph_yet_computes_what_a_tracked_pass_does() {
    // A KV cache built from tracked tensors held every decoded step's graph: 16 GB after a benchmark
    // batch of 128 tokens on the 135M model. Decoding must give untracked logits, and the same ones
    // up to f32 rounding: its adapter product sums in its own fixed order (low_rank.rs), gemm in
    // another.
    let dir = tiny_dir(crate::config::Arch::Llama);
    let m = model(dir.path(), DType::F32);
    randomize_b(&m);
    let ids = Tensor::new(&[[1u32, 2, 3, 200, 100]], &Device::Cpu).unwrap();
    let tracked = m.forward(&ids, None, &mut Pass::inference()).unwrap();
    let decoded = m.forward(&ids, None, &mut Pass::decoding()).unwrap();
    assert!(tracked.track_op(), "a gradient pass tracks the adapters");
    assert!(!decoded.track_op(), "decoding must not track the adapters");
    let scale = scalar(&tracked.abs().unwrap().max_all().unwrap());
    let diff = max_abs_diff(&tracked, &decoded) as f64;
    assert!(
        diff <= 1e-5 * scale,
        "decoding's logits are {diff} from the tracked pass's (largest {scale})"
    );
}

#[test]
fn gradient_checkpointing_gives_the_same_loss_and_gradients_to_the_bit() {
    // Recomputing some or all layers in the backward must change what is kept, not what is computed: the
    // same dropout masks, the same loss, every adapter's gradient equal bit for bit, in f32 and f64.
    for dtype in [DType::F32, DType::F64] {
        let dir = tiny_dir(crate::config::Arch::Llama);
        let cfg = ModelConfig::from_dir(dir.path()).unwrap();
        let w = load_weights(dir.path(), dtype, &Device::Cpu).unwrap();
        let lora = LoraSpec {
            dropout: 0.2,
            ..spec(3)
        };
        let m = CausalLm::new(cfg, w, Some(&lora), 7, dtype, &Device::Cpu).unwrap();
        randomize_b(&m);
        let (ids, targets, mask) = tiny_batch(dtype);
        let run = |recomputed: usize| {
            m.loss_and_grads(
                &ids,
                &targets,
                &mut Pass::training(9),
                recomputed,
                |picked| masked_nll(picked, &mask, 8.0),
            )
            .unwrap()
        };
        let (whole_loss, whole) = run(0);
        // The bottom layer recomputed and the top one kept, then both recomputed.
        for recomputed in [1, 2] {
            let (ckpt_loss, ckpt) = run(recomputed);
            assert_eq!(
                scalar(&whole_loss),
                scalar(&ckpt_loss),
                "{dtype:?}, {recomputed} recomputed: the loss"
            );
            for (path, l) in m.adapters() {
                for (which, var) in [("A", &l.a), ("B", &l.b)] {
                    let bits = |g: &candle_core::backprop::GradStore| -> Vec<f64> {
                        g.get(var.as_tensor())
                            .unwrap_or_else(|| panic!("{path}.{which}: no gradient"))
                            .to_dtype(DType::F64)
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .to_vec1()
                            .unwrap()
                    };
                    assert_eq!(
                        bits(&whole),
                        bits(&ckpt),
                        "{dtype:?}, {recomputed} recomputed: {path}.{which}"
                    );
                }
            }
        }
    }
}

/// Attention repeats the keys, transposed, for its query heads in one copy, not two (repeating,
/// then `.t().contiguous()`, copied every cached key twice per layer per decoded token, the second
/// time element by element: a fifth of a batch's decoding). The product and its gradients must be the same to the bit, or
/// sampled answers would change.
#[test]
fn keys_repeated_and_transposed_in_one_copy_give_the_same_scores_and_gradients() {
    let dev = Device::Cpu;
    for (b, kvh, rep, t, kv_len, hd) in [
        (20, 3, 3, 1, 37, 64),
        (2, 3, 3, 7, 7, 64),
        (4, 2, 1, 5, 5, 16),
    ] {
        let heads = kvh * rep;
        let q =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, heads, t, hd), &dev).unwrap()).unwrap();
        let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, kvh, kv_len, hd), &dev).unwrap())
            .unwrap();
        // Before: repeat the heads, then a contiguous copy of the transpose.
        let repeated = k
            .unsqueeze(2)
            .unwrap()
            .broadcast_as((b, kvh, rep, kv_len, hd))
            .unwrap()
            .reshape((b, heads, kv_len, hd))
            .unwrap();
        let two_copies = q
            .matmul(&repeated.t().unwrap().contiguous().unwrap())
            .unwrap();
        let one_copy = q
            .matmul(&crate::model::repeat_heads(&k.as_tensor().t().unwrap(), rep).unwrap())
            .unwrap();
        let shape = format!("{b}x{kvh}x{rep}x{t}x{kv_len}");
        assert_eq!(max_abs_diff(&two_copies, &one_copy), 0.0, "scores, {shape}");
        let weights = Tensor::randn(0f32, 1.0, two_copies.shape(), &dev).unwrap();
        let before = (&two_copies * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let after = (&one_copy * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for var in [&q, &k] {
            let (x, y) = (before.get(var).unwrap(), after.get(var).unwrap());
            assert_eq!(max_abs_diff(x, y), 0.0, "gradient, {shape}");
        }
    }
}
