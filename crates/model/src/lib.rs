//! rtlab-model: a causal language model as a library that needs only candle. Llama and Qwen2
//! decoders ([`model`]) over their primitives ([`layers`](crate)), with LoRA adapters in the linear
//! layers, the fused CPU ops and quantized kernels (Q8_0, Q4_1) that make training and decoding fast,
//! GGUF read and write ([`gguf`]), PEFT adapter files ([`peft`]), the tokenizer and chat templates
//! ([`examples`], [`generate`]), batched generation with a KV cache ([`generate`]), the model cache
//! and `pull` ([`models`]), and the seeded tiny model the tests use ([`tiny`]).
//!
//! No Rhai, no polars, no GPU runtime: the trainer (`rtlab-train`) and the LLM clients
//! (`rtlab-llm`) sit above this crate, and its types are what they pass around. Errors are one
//! [`ModelError`]; a bad file or option is `ModelError::Input` with a message that names it.

pub mod checkpointing;
pub mod config;
mod cpu_kernels;
mod custom_op;
mod decode_attention;
mod error;
pub mod examples;
mod exp;
mod fused;
pub mod generate;
pub mod gguf;
mod huge_pages;
mod kv_cache;
mod layers;
mod linear;
mod lora;
mod lora_linear;
mod low_rank;
pub mod model;
pub mod models;
mod output_head;
mod pass;
pub mod peft;
mod pool_gemm;
pub mod q4_1;
mod q8_0;
pub mod quantized;
#[cfg(test)]
mod test_values;
pub mod testing;
#[cfg(test)]
mod tests;
pub mod tiny;

pub use error::ModelError;

use candle_core::{DType, Device};
use config::ModelConfig;
use generate::LocalModel;
use model::{load_weights, CausalLm};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The hash of this crate's sources and `Cargo.lock`: what a model's answers and a training run are
/// keyed on (through `rtlab_core::provenance::code_identity` in the crates above, which can pretend
/// it changed for tests).
pub const CODE_IDENTITY: &str = env!("RTLAB_CODE_IDENTITY");

fn bad(msg: impl Into<String>) -> ModelError {
    ModelError::Input(msg.into())
}

/// Writes `out` = base with the adapter merged (`W + s·B·A` in f32, stored in each tensor's dtype),
/// shard by shard as the base is laid out, with its config and tokenizer files.
pub fn merge(base: &Path, adapter: &Path, out: &Path) -> Result<usize, ModelError> {
    let cfg = ModelConfig::from_dir(base)?;
    let dev = Device::Cpu;
    let (spec, tensors) = peft::load(adapter, &dev)?;
    let weights = load_weights(base, DType::F32, &dev)?;
    let mut model = CausalLm::new(cfg, weights, None, 0, DType::F32, &dev)?;
    model.set_adapters(&spec, tensors)?;
    let merged: HashMap<String, candle_core::Tensor> =
        model.merged_linear_weights()?.into_iter().collect();
    std::fs::create_dir_all(out)?;
    let mut changed = 0;
    for file in config::weight_files(base)? {
        let mut shard = candle_core::safetensors::load(&file, &dev)?;
        for (name, t) in shard.iter_mut() {
            if let Some(m) = merged.get(name) {
                *t = m.to_dtype(t.dtype())?;
                changed += 1;
            }
        }
        let name = file
            .file_name()
            .ok_or_else(|| bad("weight file without a name"))?;
        let tmp = out.join(format!(".{}.tmp", name.to_string_lossy()));
        candle_core::safetensors::save(&shard, &tmp)?;
        std::fs::rename(&tmp, out.join(name))?;
    }
    for extra in [
        "config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ] {
        let src = base.join(extra);
        if src.exists() {
            rtlab_files::write_atomic(&out.join(extra), &std::fs::read(&src)?)?;
        }
    }
    Ok(changed)
}

/// Writes `out`: the GGUF `base` (a path or a model's name) with the PEFT `adapter` merged in, its
/// matrices as `quant`. The typed core of `export_gguf` and `rtlab export`.
pub fn export_merged_gguf(
    base_dir: &Path,
    base: &str,
    adapter: &Path,
    out: &Path,
    quant: gguf::Quant,
) -> Result<usize, ModelError> {
    let base = models::locate(base, base_dir)?;
    if !(base.is_file() && gguf::is_gguf(&base)) {
        return Err(bad(format!(
            "export_gguf: {} is not a GGUF file; export from a GGUF base (a Hugging Face directory goes through merge(), then llama.cpp's convert_hf_to_gguf.py)",
            base.display()
        )));
    }
    let dev = Device::Cpu;
    let g = gguf::open(&base)?;
    let (spec, tensors) = peft::load(adapter, &dev)?;
    let mut model = CausalLm::new(g.cfg.clone(), g.weights(&dev)?, None, 0, DType::F32, &dev)?;
    model.set_adapters(&spec, tensors)?;
    let merged: HashMap<String, candle_core::Tensor> =
        model.merged_linear_weights()?.into_iter().collect();
    g.export(&merged, out, quant)
}

/// An Ollama Modelfile, as the plans write them: `FROM` (a GGUF or an Ollama model), then `ADAPTER`,
/// `TEMPLATE`, `SYSTEM` and one `PARAMETER` line per parameter (sorted).
pub fn modelfile(
    from: &str,
    adapter: Option<&str>,
    system: Option<&str>,
    template: Option<&str>,
    parameters: &[(String, String)],
) -> Result<String, ModelError> {
    let quoted = |what: &str, text: &str| {
        if text.contains("\"\"\"") {
            Err(ModelError::Input(format!(
                "ollama_modelfile: `{what}` contains \"\"\", which a Modelfile cannot quote"
            )))
        } else {
            Ok(format!("\"\"\"{text}\"\"\""))
        }
    };
    let mut out = format!("FROM {from}\n");
    if let Some(a) = adapter {
        out.push_str(&format!("ADAPTER {a}\n"));
    }
    if let Some(t) = template {
        out.push_str(&format!("TEMPLATE {}\n", quoted("template", t)?));
    }
    if let Some(s) = system {
        out.push_str(&format!("SYSTEM {}\n", quoted("system", s)?));
    }
    let mut params = parameters.to_vec();
    params.sort();
    for (k, v) in params {
        if k.contains(char::is_whitespace) || v.contains('\n') {
            return Err(ModelError::Input(format!(
                "ollama_modelfile: parameter {k:?} = {v:?} does not fit on one PARAMETER line"
            )));
        }
        out.push_str(&format!("PARAMETER {k} {v}\n"));
    }
    Ok(out)
}

/// Loaded local models by (dir, adapter), shared by `load_model` and `llm(#{provider: "local"})`.
pub fn load_local(
    dir: &Path,
    adapter: Option<&Path>,
    template: Option<String>,
    dequantize: bool,
) -> Result<Arc<LocalModel>, ModelError> {
    type Key = (PathBuf, Option<PathBuf>, Option<String>, bool);
    static LOADED: OnceLock<Mutex<HashMap<Key, Arc<LocalModel>>>> = OnceLock::new();
    let key = (
        dir.to_path_buf(),
        adapter.map(Path::to_path_buf),
        template.clone(),
        dequantize,
    );
    let map = LOADED.get_or_init(Default::default);
    if let Some(m) = map.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return Ok(m);
    }
    let model = Arc::new(LocalModel::load(dir, adapter, template, dequantize)?);
    if let Ok(mut m) = map.lock() {
        m.insert(key, model.clone());
    }
    Ok(model)
}
