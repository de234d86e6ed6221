//! A tiny Llama- or Qwen2-architecture model, made from a seed, in Hugging Face layout: what the unit
//! tests and the CPU benchmark train, fast, seeded and the same on every machine. Weights come from a
//! seeded `rand` (candle's CPU RNG cannot be seeded); the tokenizer is GPT-2's byte-level BPE alphabet
//! with no merges (one token per byte) plus three special tokens, a `tokenizer.json` that both the
//! `tokenizers` crate and Python's `transformers` load.

use super::ModelError;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use safetensors::tensor::TensorView;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct TinySpec {
    pub arch: super::config::Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            arch: super::config::Arch::Llama,
            hidden: 64,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            intermediate: 128,
            max_positions: 1024,
            seed: 0,
        }
    }
}

/// f32 tensors on the host by name: (shape, row-major values).
pub type HostTensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The special tokens after the 256 byte tokens.
pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
pub const VOCAB: usize = 256 + SPECIALS.len();

/// GPT-2's map from bytes to printable characters (the byte-level BPE alphabet).
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap_or('?');
    }
    table
}

/// The byte-level tokenizer.json (256 byte tokens, no merges, then the specials).
pub fn tokenizer_json() -> serde_json::Value {
    let table = bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (b, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), json!(b));
    }
    let added: Vec<_> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

/// Writes `config.json`, `model.safetensors` (f32, seeded, norms at one),
/// `tokenizer.json` and `tokenizer_config.json` into `dir`.
pub fn create(dir: &Path, spec: &TinySpec) -> Result<(), ModelError> {
    if !spec.hidden.is_multiple_of(spec.heads)
        || !spec.heads.is_multiple_of(spec.kv_heads.max(1))
        || !(spec.hidden / spec.heads).is_multiple_of(2)
    {
        return Err(ModelError::Input(format!(
            "tiny model: hidden {} must split into {} heads of even size, and heads into {} kv_heads",
            spec.hidden, spec.heads, spec.kv_heads
        )));
    }
    std::fs::create_dir_all(dir)?;
    let config = config_json(spec);
    let tensors = seeded_weights(spec);
    write_f32_safetensors(&dir.join("model.safetensors"), &tensors)?;
    write_if_changed(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    write_if_changed(
        &dir.join("tokenizer.json"),
        serde_json::to_string_pretty(&tokenizer_json())?.as_bytes(),
    )?;
    let tok_config = json!({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": SPECIALS[0],
        "pad_token": SPECIALS[0], "model_max_length": spec.max_positions, "clean_up_tokenization_spaces": false});
    write_if_changed(
        &dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tok_config)?.as_bytes(),
    )?;
    Ok(())
}

/// The Hugging Face `config.json` of the tiny model.
fn config_json(spec: &TinySpec) -> serde_json::Value {
    let (arch, model_type) = match spec.arch {
        super::config::Arch::Llama => ("LlamaForCausalLM", "llama"),
        super::config::Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let eos = 256u32;
    json!({
        "architectures": [arch], "model_type": model_type,
        "hidden_size": spec.hidden, "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "vocab_size": VOCAB,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": spec.max_positions,
        "tie_word_embeddings": false, "hidden_act": "silu", "attention_bias": false,
        "bos_token_id": eos, "eos_token_id": eos, "torch_dtype": "float32",
    })
}

/// The weights by Hugging Face name, `(shape, values)`, drawn in a fixed order from the spec's seed.
fn seeded_weights(spec: &TinySpec) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    // Scales as a trained model has them, not HF's N(0, 0.02) init: with a frozen head of 0.02 the
    // largest logit a unit-RMS hidden state can reach is ~1.3, and no adapter could ever make the model
    // confident (the loss floors near ln(vocab) − 1.3). Linear weights N(0, 1/√fan_in) carry the signal
    // at unit scale; the head N(0, 0.25) allows logits of ±15.
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut random = |shape: Vec<usize>, std: f32| {
        let n = shape.iter().product();
        let normal = Normal::new(0.0f32, std).expect("a positive std");
        let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
        (shape, v)
    };
    let (h, hd) = (spec.hidden, spec.hidden / spec.heads);
    let kv = spec.kv_heads * hd;
    let mut put = |name: String, t: (Vec<usize>, Vec<f32>)| {
        tensors.insert(name, t);
    };
    let fan = |n: usize| 1.0 / (n as f32).sqrt();
    put(
        "model.embed_tokens.weight".into(),
        random(vec![VOCAB, h], 1.0),
    );
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        put(
            format!("{p}.self_attn.q_proj.weight"),
            random(vec![h, h], fan(h)),
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            random(vec![kv, h], fan(h)),
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            random(vec![kv, h], fan(h)),
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            random(vec![h, h], fan(h)),
        );
        if spec.arch == super::config::Arch::Qwen2 {
            put(format!("{p}.self_attn.q_proj.bias"), random(vec![h], 0.02));
            put(format!("{p}.self_attn.k_proj.bias"), random(vec![kv], 0.02));
            put(format!("{p}.self_attn.v_proj.bias"), random(vec![kv], 0.02));
        }
        put(
            format!("{p}.mlp.gate_proj.weight"),
            random(vec![spec.intermediate, h], fan(h)),
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            random(vec![spec.intermediate, h], fan(h)),
        );
        put(
            format!("{p}.mlp.down_proj.weight"),
            random(vec![h, spec.intermediate], fan(spec.intermediate)),
        );
        put(
            format!("{p}.input_layernorm.weight"),
            (vec![h], vec![1.0; h]),
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            (vec![h], vec![1.0; h]),
        );
    }
    put("model.norm.weight".into(), (vec![h], vec![1.0; h]));
    put("lm_head.weight".into(), random(vec![VOCAB, h], 0.25));
    tensors
}

/// Leaves a file with these exact bytes alone, so remaking the same tiny model keeps its mtime (the
/// trainer's run fingerprint reads weight files by size and mtime).
fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    rtlab_files::write_atomic(path, bytes)
}

/// Writes f32 tensors as one safetensors file, atomically (unchanged files are not rewritten).
pub fn write_f32_safetensors(path: &Path, tensors: &HostTensors) -> Result<(), ModelError> {
    let bytes: BTreeMap<&String, Vec<u8>> = tensors
        .iter()
        .map(|(k, (_, v))| (k, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(k, (shape, _))| {
            TensorView::new(safetensors::Dtype::F32, shape.clone(), &bytes[k])
                .map(|v| (k.clone(), v))
                .map_err(|e| ModelError::Input(format!("{k}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| ModelError::Input(e.to_string()))?;
    write_if_changed(path, &data)?;
    Ok(())
}
