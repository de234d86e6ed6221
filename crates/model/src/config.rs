//! A model directory in Hugging Face layout: `config.json`, `*.safetensors` (one file or shards with
//! `model.safetensors.index.json`) and `tokenizer.json`. Reads the config of the Llama and Qwen2
//! families into one [`ModelConfig`]; every other architecture is refused with its name.

use super::ModelError;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The two families rtlab can train: they differ only in Qwen2's q/k/v biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Arch {
    Llama,
    Qwen2,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2 always; Llama when `attention_bias` is set).
    pub qkv_bias: bool,
    pub eos_token_id: Option<u32>,
}

impl ModelConfig {
    pub fn from_dir(dir: &Path) -> Result<ModelConfig, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Input(format!(
                "{}: no such model directory (a Hugging Face model dir with config.json, *.safetensors and tokenizer.json)",
                dir.display()
            )));
        }
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            ModelError::Input(format!(
                "{}: missing config.json; a base model is a Hugging Face model directory (config.json, *.safetensors, tokenizer.json)",
                dir.display()
            ))
        })?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Input(format!("{}: not valid JSON: {e}", path.display())))?;
        ModelConfig::from_json(&v)
            .map_err(|e| ModelError::Input(format!("{}: {e}", path.display())))
    }

    pub fn from_json(v: &Value) -> Result<ModelConfig, ModelError> {
        let arch_name = v["architectures"][0]
            .as_str()
            .map(str::to_string)
            .or_else(|| v["model_type"].as_str().map(str::to_string))
            .unwrap_or_else(|| "(none given)".into());
        let arch = match arch_name.as_str() {
            "LlamaForCausalLM" | "llama" => Arch::Llama,
            "Qwen2ForCausalLM" | "qwen2" => Arch::Qwen2,
            other => {
                return Err(ModelError::Input(format!(
                    "unsupported architecture {other:?}: rtlab trains LlamaForCausalLM and Qwen2ForCausalLM (Llama 2/3, CodeLlama, Qwen2/2.5, Qwen2.5-Coder)"
                )))
            }
        };
        let int = |k: &str| -> Result<usize, ModelError> {
            v[k].as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| ModelError::Input(format!("config.json has no integer {k:?}")))
        };
        let hidden_size = int("hidden_size")?;
        let num_attention_heads = int("num_attention_heads")?;
        let num_key_value_heads = v["num_key_value_heads"]
            .as_u64()
            .map(|n| n as usize)
            .unwrap_or(num_attention_heads);
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
            return Err(ModelError::Input(format!(
                "hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
            )));
        }
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ModelError::Input(format!("num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}")));
        }
        let head_dim = v["head_dim"]
            .as_u64()
            .map(|n| n as usize)
            .unwrap_or(hidden_size / num_attention_heads);
        let eos_token_id = match &v["eos_token_id"] {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::Array(a) => a.first().and_then(|n| n.as_u64()).map(|n| n as u32),
            _ => None,
        };
        Ok(ModelConfig {
            arch,
            hidden_size,
            intermediate_size: int("intermediate_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: int("vocab_size")?,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10000.0),
            max_position_embeddings: v["max_position_embeddings"].as_u64().unwrap_or(4096) as usize,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            qkv_bias: arch == Arch::Qwen2 || v["attention_bias"].as_bool().unwrap_or(false),
            eos_token_id,
        })
    }
}

/// The safetensors files of a model dir: the shards named by `model.safetensors.index.json`, else every
/// `*.safetensors` file.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Input(format!("{}: not valid JSON: {e}", index.display())))?;
        let map = v["weight_map"].as_object().ok_or_else(|| {
            ModelError::Input(format!("{}: no \"weight_map\" object", index.display()))
        })?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "safetensors")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("adapter_"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::Input(format!(
            "{}: no *.safetensors weights (PyTorch .bin checkpoints are not read; convert them with `transformers` save_pretrained(safe_serialization=True))",
            dir.display()
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen2_has_qkv_bias_and_llama_does_not() {
        let base = serde_json::json!({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300});
        let mut q = base.clone();
        q["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        let mut l = base.clone();
        l["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
        assert!(ModelConfig::from_json(&q).unwrap().qkv_bias);
        let l = ModelConfig::from_json(&l).unwrap();
        assert!(!l.qkv_bias);
        assert_eq!(l.head_dim, 16);
    }

    #[test]
    fn other_architectures_are_named_in_the_error() {
        let v = serde_json::json!({"architectures": ["MistralForCausalLM"]});
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("MistralForCausalLM"), "{e}");
    }
}
