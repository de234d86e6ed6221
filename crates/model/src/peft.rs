//! Adapters in PEFT's format, so Python's `peft`, vLLM and llama.cpp's converter read what rtlab
//! trains and rtlab reads what they made: `adapter_config.json` plus `adapter_model.safetensors` with
//! keys `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, A [r, in], B [out, r].

use super::model::{CausalLm, LoraSpec};
use super::ModelError;
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

pub fn config_json(spec: &LoraSpec, base: &str) -> Value {
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": spec.r,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": spec.target_modules,
        "use_rslora": spec.use_rslora,
        "base_model_name_or_path": base,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "revision": null,
    })
}

/// The adapter's tensors by PEFT key, as f32 on the CPU.
pub fn adapter_tensors(model: &CausalLm) -> candle_core::Result<super::tiny::HostTensors> {
    let mut out = BTreeMap::new();
    for (path, lora) in model.adapters() {
        for (which, var) in [("lora_A", &lora.a), ("lora_B", &lora.b)] {
            let t = var.as_tensor().to_dtype(candle_core::DType::F32)?;
            out.insert(
                format!("base_model.model.{path}.{which}.weight"),
                (t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?),
            );
        }
    }
    Ok(out)
}

/// Writes the adapter into `dir` (created), each file atomically.
pub fn save(dir: &Path, model: &CausalLm, spec: &LoraSpec, base: &str) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir)?;
    super::tiny::write_f32_safetensors(&dir.join(WEIGHTS_FILE), &adapter_tensors(model)?)?;
    rtlab_files::write_atomic(
        &dir.join(CONFIG_FILE),
        serde_json::to_string_pretty(&config_json(spec, base))?.as_bytes(),
    )?;
    Ok(())
}

/// Reads an adapter directory: its spec and (A, B) per module path (`model.layers.N.self_attn.q_proj`).
/// (A, B) per module path.
pub type AdapterPairs = HashMap<String, (Tensor, Tensor)>;

pub fn load(dir: &Path, dev: &Device) -> Result<(LoraSpec, AdapterPairs), ModelError> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(|_| {
        ModelError::Input(format!(
            "{}: missing {CONFIG_FILE}; an adapter is a directory with {CONFIG_FILE} and {WEIGHTS_FILE}",
            dir.display()
        ))
    })?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Input(format!("{}: not valid JSON: {e}", cfg_path.display())))?;
    if v["peft_type"].as_str() != Some("LORA") {
        return Err(ModelError::Input(format!(
            "{}: peft_type is {}, rtlab reads LORA adapters",
            cfg_path.display(),
            v["peft_type"]
        )));
    }
    let r = v["r"].as_u64().unwrap_or(0) as usize;
    let targets = match &v["target_modules"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        Value::String(s) => vec![s.clone()],
        _ => Vec::new(),
    };
    let spec = LoraSpec {
        r,
        alpha: v["lora_alpha"].as_f64().unwrap_or(r as f64),
        dropout: v["lora_dropout"].as_f64().unwrap_or(0.0),
        target_modules: targets,
        use_rslora: v["use_rslora"].as_bool().unwrap_or(false),
    };
    let weights = dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&weights, dev)
        .map_err(|e| ModelError::Input(format!("{}: cannot read: {e}", weights.display())))?;
    let mut halves: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (key, t) in tensors {
        let rest = key.strip_prefix("base_model.model.").unwrap_or(&key);
        // PEFT names the adapter inside the key while training (`lora_A.default.weight`), not on save.
        let rest = rest.replace(".default.weight", ".weight");
        let (module, which) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m.to_string(), 0)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m.to_string(), 1)
        } else {
            return Err(ModelError::Input(format!(
                "{}: tensor {key:?} is not a LoRA A/B weight (rtlab reads plain LoRA adapters: no bias, DoRA or modules_to_save)",
                weights.display()
            )));
        };
        let slot = halves.entry(module).or_default();
        if which == 0 {
            slot.0 = Some(t);
        } else {
            slot.1 = Some(t);
        }
    }
    let mut out = HashMap::new();
    for (module, pair) in halves {
        match pair {
            (Some(a), Some(b)) => {
                out.insert(module, (a, b));
            }
            _ => {
                return Err(ModelError::Input(format!(
                    "{}: {module} has only one of lora_A and lora_B",
                    weights.display()
                )))
            }
        }
    }
    Ok((spec, out))
}
