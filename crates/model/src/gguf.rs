//! GGUF files, the format of llama.cpp and Ollama: a model's config, weights, tokenizer and chat
//! template in one file. Read with candle's GGUF reader. [`GgufFile::weights`] dequantizes every
//! tensor to f32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K and the other types candle
//! knows); [`GgufFile::weights_quantized`] keeps the quantized projections and output head as they
//! are, for decoding and QLoRA. Tensors are renamed to their Hugging Face names, so the rest of the
//! trainer sees the same model as from safetensors.
//!
//! **The Q/K permutation.** llama.cpp's converter reorders the rows of a Llama model's `attn_q` and
//! `attn_k` so that GGML's RoPE can rotate adjacent pairs; rtlab's model rotates the two halves of each
//! head, as Hugging Face does, so the permutation is undone here ([`unpermute`], and on quantized
//! rows of blocks). Qwen2 files are not permuted (GGML runs them with NeoX RoPE, the halves).
//!
//! The tokenizer is built from `tokenizer.ggml.*` with the `tokenizers` crate: GPT-2 byte-level BPE
//! with the pre-tokenizer that `tokenizer.ggml.pre` names, or SentencePiece BPE (`"llama"`).

use super::config::{Arch, ModelConfig};
use super::model::{QuantizedWeights, Weights};
use super::ModelError;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use std::path::Path;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// A GGUF file's metadata, checked, and where its tensors are: [`GgufFile::weights`] reads them.
pub struct GgufFile {
    path: std::path::PathBuf,
    content: Content,
    pub cfg: ModelConfig,
    pub tokenizer: Tokenizer,
    /// `tokenizer.chat_template` (Jinja), if the file has one.
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

/// True when `path` starts with GGUF's magic bytes.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

fn bad(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::Input(format!("{}: {what}", path.display()))
}

/// A file cut short (an interrupted download) is refused before any work: every tensor must end
/// inside the file.
fn check_complete(
    path: &Path,
    file: &mut std::fs::File,
    content: &Content,
) -> Result<(), ModelError> {
    let file_len = file.metadata().map_err(|e| bad(path, e))?.len();
    for (name, info) in &content.tensor_infos {
        let bytes = info.shape.elem_count() / info.ggml_dtype.block_size().max(1)
            * info.ggml_dtype.type_size();
        let end = content.tensor_data_offset + info.offset + bytes as u64;
        if end > file_len {
            return Err(bad(
                path,
                format!("truncated: tensor {name} ends at byte {end}, the file has {file_len}; download it again"),
            ));
        }
    }
    Ok(())
}

/// The model's shape from the `<arch>.*` metadata, in the config a Hugging Face directory gives
/// (`vocab_size` is 0 until the tokenizer is read).
fn model_config(meta: &Meta) -> Result<ModelConfig, ModelError> {
    let arch_name = meta.string("general.architecture")?;
    let arch = match arch_name.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(bad(
                meta.path,
                format!("architecture {other:?}: rtlab reads llama and qwen2 GGUF models"),
            ))
        }
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let hidden = meta.usize(&key("embedding_length"))?;
    let heads = meta.usize(&key("attention.head_count"))?;
    let kv_heads = meta
        .optional_usize(&key("attention.head_count_kv"))?
        .unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || hidden % heads != 0 {
        return Err(bad(
            meta.path,
            format!("{heads} heads ({kv_heads} KV) do not divide a hidden size of {hidden}"),
        ));
    }
    let tie = !meta.content.tensor_infos.contains_key("output.weight");
    Ok(ModelConfig {
        arch,
        hidden_size: hidden,
        intermediate_size: meta.usize(&key("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: hidden / heads,
        vocab_size: 0,
        rms_norm_eps: meta
            .optional_f64(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6),
        rope_theta: meta
            .optional_f64(&key("rope.freq_base"))?
            .unwrap_or(10_000.0),
        max_position_embeddings: meta.optional_usize(&key("context_length"))?.unwrap_or(2048),
        tie_word_embeddings: tie,
        qkv_bias: meta.content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        eos_token_id: meta
            .optional_usize("tokenizer.ggml.eos_token_id")?
            .map(|i| i as u32),
    })
}

/// Reads and checks the metadata (config, tokenizer, chat template); no tensor is read yet.
pub fn open(path: &Path) -> Result<GgufFile, ModelError> {
    let mut file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
    let content = Content::read(&mut file).map_err(|e| {
        bad(
            path,
            format!(
                "not a readable GGUF file ({e}); is it complete? A partial download is truncated"
            ),
        )
    })?;
    check_complete(path, &mut file, &content)?;
    let meta = Meta {
        path,
        content: &content,
    };
    // The shape is checked before the tokenizer is built, so a file of another architecture is named
    // as such rather than by a tokenizer error.
    let mut cfg = model_config(&meta)?;
    let (tokenizer, vocab_size) = tokenizer(&meta)?;
    cfg.vocab_size = vocab_size;
    let token = |k: &str| -> Result<Option<String>, ModelError> {
        Ok(meta
            .optional_usize(k)?
            .and_then(|id| tokenizer.id_to_token(id as u32)))
    };
    let (bos_token, eos_token) = (
        token("tokenizer.ggml.bos_token_id")?,
        token("tokenizer.ggml.eos_token_id")?,
    );
    let chat_template = match content.metadata.get("tokenizer.chat_template") {
        Some(v) => Some(v.to_string().map_err(|e| bad(path, e))?.clone()),
        None => None,
    };

    Ok(GgufFile {
        path: path.to_path_buf(),
        content,
        cfg,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
    })
}

impl GgufFile {
    /// Every tensor the model reads, dequantized to f32, under its Hugging Face name.
    pub fn weights(&self, dev: &Device) -> Result<Weights, ModelError> {
        Ok(self.read_weights(dev, false)?.0)
    }

    /// The weights for decoding and QLoRA: every projection and the output head that the file stores
    /// quantized stay quantized (their Q/K rows unpermuted block-row by block-row, no dequantizing),
    /// everything else is dequantized to f32 as [`GgufFile::weights`] does. A tied output head is the
    /// quantized embedding; the embedding itself is dequantized for its lookups.
    pub fn weights_quantized(
        &self,
        dev: &Device,
    ) -> Result<(Weights, QuantizedWeights), ModelError> {
        self.read_weights(dev, true)
    }

    /// [`GgufFile::weights_quantized`], or with `keep_quantized` false every tensor dequantized.
    fn read_weights(
        &self,
        dev: &Device,
        keep_quantized: bool,
    ) -> Result<(Weights, QuantizedWeights), ModelError> {
        use candle_core::quantized::GgmlDType;
        let path = self.path.as_path();
        let mut file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let (heads, kv_heads) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let llama = self.cfg.arch == Arch::Llama;
        let has_output = self.content.tensor_infos.contains_key("output.weight");
        let (mut dense, mut quantized) = (Weights::new(), QuantizedWeights::new());
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let Some(hf) = hf_name(name) else { continue };
            let q = self
                .content
                .tensor(&mut file, name, dev)
                .map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
            let is_float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
            let projection = hf.ends_with("_proj.weight") || hf == "lm_head.weight";
            let tied_head = hf == "model.embed_tokens.weight" && !has_output;
            if !keep_quantized || is_float || !(projection || tied_head) {
                let mut t = q
                    .dequantize(dev)
                    .map_err(|e| bad(path, format!("tensor {name} ({:?}): {e}", q.dtype())))?;
                if llama && name.ends_with("attn_q.weight") {
                    t = unpermute(&t, heads)?;
                } else if llama && name.ends_with("attn_k.weight") {
                    t = unpermute(&t, kv_heads)?;
                }
                dense.insert(hf, t);
                continue;
            }
            let q = if llama && name.ends_with("attn_q.weight") {
                unpermute_quantized(&q, heads, dev)?
            } else if llama && name.ends_with("attn_k.weight") {
                unpermute_quantized(&q, kv_heads, dev)?
            } else {
                q
            };
            let q =
                with_fast_kernel(q, dev).map_err(|e| bad(path, format!("tensor {name}: {e}")))?;
            if tied_head {
                let t = q
                    .dequantize(dev)
                    .map_err(|e| bad(path, format!("tensor {name} ({:?}): {e}", q.dtype())))?;
                dense.insert(hf, t);
                quantized.insert(
                    "lm_head.weight".to_string(),
                    decoding_weight(q, path, name)?,
                );
            } else {
                quantized.insert(hf, decoding_weight(q, path, name)?);
            }
        }
        if dev.is_cpu() {
            crate::huge_pages::advise_weights(quantized.values().map(|q| q.as_ref()));
        }
        Ok((dense, quantized))
    }
}

/// `q` kept for decoding (repacked where rtlab's kernel takes it), its errors naming the file and
/// tensor.
fn decoding_weight(
    q: QTensor,
    path: &Path,
    name: &str,
) -> Result<Arc<crate::quantized::QuantizedWeight>, ModelError> {
    crate::quantized::QuantizedWeight::new(q)
        .map(Arc::new)
        .map_err(|e| bad(path, format!("tensor {name}: {e}")))
}

/// candle's CPU kernels are vectorized for Q4_0, Q8_0 and the k-quants; Q4_1, Q5_0 and Q5_1 run a
/// scalar dot product, several times slower. rtlab's own Q4_1 kernel ([`crate::q4_1`]) runs the
/// file's Q4_1 as it is, where it runs (x86 with AVX2, FMA and F16C). Elsewhere, and for Q5_0 and
/// Q5_1, the weights are requantized to Q8_0 at load: 8 bits per value where the file has 4 or 5
/// plus a block offset, so nothing the file holds is lost beyond Q8_0's rounding (a quarter of a
/// 4-bit step), at 1.7× Q4_1's size.
fn with_fast_kernel(q: QTensor, dev: &Device) -> candle_core::Result<QTensor> {
    use candle_core::quantized::GgmlDType;
    match q.dtype() {
        GgmlDType::Q4_1 if crate::q4_1::runs_here() => Ok(q),
        GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            QTensor::quantize(&q.dequantize(dev)?, GgmlDType::Q8_0)
        }
        _ => Ok(q),
    }
}

/// [`unpermute`] on a quantized `[heads · head_dim, in]` tensor: GGML quantizes each row on its own,
/// so moving whole rows of blocks undoes the permutation exactly, without a round trip through f32.
fn unpermute_quantized(q: &QTensor, heads: usize, dev: &Device) -> Result<QTensor, ModelError> {
    let (rows, cols) = q.shape().dims2()?;
    let dtype = q.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    if data.len() != rows * row_bytes || rows % (2 * heads) != 0 {
        return Err(ModelError::Input(format!(
            "a quantized Q/K projection of {rows}×{cols} ({dtype:?}) does not split into {heads} heads"
        )));
    }
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(data.len());
    // Hugging Face row (h, j, i) is GGUF row (h, i, j), for j in the two halves and i < half.
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = h * 2 * half + i * 2 + j;
                out.extend_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage =
        candle_core::quantized::QStorage::from_data(std::borrow::Cow::Owned(out), dev, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// The tensor types `export` writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quant {
    F16,
    Q8_0,
    /// Q4_K where a row is a multiple of 256 values; other tensors fall back to Q8_0, as llama.cpp's
    /// quantizer does for shapes a k-quant cannot take.
    Q4K,
}

impl Quant {
    pub fn parse(name: &str) -> Result<Quant, ModelError> {
        match name {
            "f16" => Ok(Quant::F16),
            "q8_0" => Ok(Quant::Q8_0),
            "q4_k" => Ok(Quant::Q4K),
            other => Err(ModelError::Input(format!(
                "quant {other:?}: use \"f16\", \"q8_0\" or \"q4_k\""
            ))),
        }
    }

    /// llama.cpp's `general.file_type` for the file (`LLAMA_FTYPE_*`).
    fn file_type(self) -> u32 {
        match self {
            Quant::F16 => 1,
            Quant::Q8_0 => 7,
            Quant::Q4K => 15,
        }
    }

    /// The type a tensor of `cols` values a row gets.
    fn for_row(self, cols: usize) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType;
        match self {
            Quant::F16 => GgmlDType::F16,
            Quant::Q4K if cols.is_multiple_of(GgmlDType::Q4K.block_size()) => GgmlDType::Q4K,
            _ if cols.is_multiple_of(GgmlDType::Q8_0.block_size()) => GgmlDType::Q8_0,
            _ => GgmlDType::F16,
        }
    }
}

/// llama.cpp's `permute(w, n_head)`, the inverse of [`unpermute`].
fn permute(w: &Tensor, heads: usize) -> Result<Tensor, ModelError> {
    let (rows, cols) = w.dims2()?;
    let half = rows / heads / 2;
    Ok(w.reshape((heads, 2, half, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

impl GgufFile {
    /// Writes a GGUF that llama.cpp and Ollama load: this file's metadata (its `general.file_type`
    /// updated) and tensors, with `replaced` (f32, by Hugging Face name: merged adapters) in place of
    /// the originals, every matrix stored as `quant` and every vector as F32. Written under a temp
    /// name and renamed. Returns how many tensors were replaced.
    pub fn export(
        &self,
        replaced: &std::collections::HashMap<String, Tensor>,
        out: &Path,
        quant: Quant,
    ) -> Result<usize, ModelError> {
        use candle_core::quantized::{GgmlDType, QTensor};
        let dev = Device::Cpu;
        let path = self.path.as_path();
        let mut file = std::fs::File::open(path).map_err(|e| bad(path, e))?;
        let llama = self.cfg.arch == Arch::Llama;
        let mut names: Vec<&String> = self.content.tensor_infos.keys().collect();
        names.sort();
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        let mut changed = 0;
        for name in names {
            let replacement = hf_name(name).and_then(|hf| replaced.get(&hf));
            let t = match replacement {
                Some(t) => {
                    changed += 1;
                    if llama && name.ends_with("attn_q.weight") {
                        permute(t, self.cfg.num_attention_heads)?
                    } else if llama && name.ends_with("attn_k.weight") {
                        permute(t, self.cfg.num_key_value_heads)?
                    } else {
                        t.clone()
                    }
                }
                None => self
                    .content
                    .tensor(&mut file, name, &dev)
                    .and_then(|q| q.dequantize(&dev))
                    .map_err(|e| bad(path, format!("tensor {name}: {e}")))?,
            };
            let dtype = match t.dims() {
                [_, cols] => quant.for_row(*cols),
                _ => GgmlDType::F32,
            };
            let q = QTensor::quantize(&t, dtype).map_err(|e| {
                ModelError::Input(format!("export_gguf: tensor {name} as {dtype:?}: {e}"))
            })?;
            tensors.push((name.clone(), q));
        }
        let file_type = Value::U32(quant.file_type());
        let mut metadata: Vec<(&str, &Value)> = self
            .content
            .metadata
            .iter()
            .filter(|(k, _)| k.as_str() != "general.file_type")
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        metadata.sort_by(|a, b| a.0.cmp(b.0));
        metadata.push(("general.file_type", &file_type));
        let dir = out
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, q)| (n.as_str(), q)).collect();
        candle_core::quantized::gguf_file::write(tmp.as_file_mut(), &metadata, &refs).map_err(
            |e| ModelError::Input(format!("export_gguf: cannot write {}: {e}", out.display())),
        )?;
        // Temp files are private (0600); the model is an ordinary file others may read.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        tmp.persist(out).map_err(|e| {
            ModelError::Input(format!("export_gguf: cannot write {}: {e}", out.display()))
        })?;
        Ok(changed)
    }
}

/// The Hugging Face name of a GGUF tensor, or None for tensors the model does not read.
fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undoes llama.cpp's `permute(w, n_head)`: its rows, per head, are (half 0 row i, half 1 row i)
/// interleaved; the Hugging Face order is all of half 0, then all of half 1.
/// `[heads · head_dim, in]` → `[heads, head_dim/2, 2, in]` → swap the middle axes → back.
pub fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor, ModelError> {
    let (rows, cols) = w.dims2()?;
    let half = rows / heads / 2;
    Ok(w.reshape((heads, half, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Typed access to the metadata, with errors that name the file and the key.
struct Meta<'a> {
    path: &'a Path,
    content: &'a Content,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Result<&Value, ModelError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| bad(self.path, format!("no `{key}` in the GGUF metadata")))
    }

    fn string(&self, key: &str) -> Result<String, ModelError> {
        self.get(key)?
            .to_string()
            .cloned()
            .map_err(|e| bad(self.path, format!("`{key}`: {e}")))
    }

    fn number(value: &Value) -> Option<f64> {
        match value {
            Value::U8(v) => Some(*v as f64),
            Value::I8(v) => Some(*v as f64),
            Value::U16(v) => Some(*v as f64),
            Value::I16(v) => Some(*v as f64),
            Value::U32(v) => Some(*v as f64),
            Value::I32(v) => Some(*v as f64),
            Value::U64(v) => Some(*v as f64),
            Value::I64(v) => Some(*v as f64),
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    fn optional_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.content.metadata.get(key) {
            None => Ok(None),
            Some(v) => Self::number(v)
                .map(Some)
                .ok_or_else(|| bad(self.path, format!("`{key}` is not a number"))),
        }
    }

    fn optional_usize(&self, key: &str) -> Result<Option<usize>, ModelError> {
        match self.optional_f64(key)? {
            None => Ok(None),
            Some(x) if x >= 0.0 && x.fract() == 0.0 => Ok(Some(x as usize)),
            Some(x) => Err(bad(self.path, format!("`{key}` is {x}, not a count"))),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, ModelError> {
        self.optional_usize(key)?
            .ok_or_else(|| bad(self.path, format!("no `{key}` in the GGUF metadata")))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, ModelError> {
        self.get(key)?
            .to_vec()
            .map_err(|e| bad(self.path, format!("`{key}`: {e}")))?
            .iter()
            .map(|v| {
                v.to_string()
                    .cloned()
                    .map_err(|e| bad(self.path, format!("`{key}`: {e}")))
            })
            .collect()
    }
}

/// The tokenizer the metadata describes, and the vocabulary size.
fn tokenizer(meta: &Meta) -> Result<(Tokenizer, usize), ModelError> {
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::AddedToken;
    if !meta.content.metadata.contains_key("tokenizer.ggml.tokens") {
        return Err(bad(
            meta.path,
            "no tokenizer in the GGUF metadata (`tokenizer.ggml.tokens`): rtlab needs one to encode prompts",
        ));
    }
    let model = meta.string("tokenizer.ggml.model")?;
    match model.as_str() {
        "gpt2" => {}
        "llama" => return sentencepiece_tokenizer(meta),
        other => {
            return Err(bad(
                meta.path,
                format!("tokenizer {other:?}: rtlab reads GPT-2-style byte-level BPE (\"gpt2\") and SentencePiece BPE (\"llama\") vocabularies"),
            ))
        }
    }
    let pre_tokenizer = gpt2_pre_tokenizer(meta)?;
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let merges = gpt2_merges(meta)?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| bad(meta.path, format!("cannot build the BPE vocabulary: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // Control and user-defined tokens (`<|im_start|>`) are matched whole, never split by BPE.
    let types = token_types(meta, tokens.len())?;
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| **t == 3 || **t == 4)
        .map(|(tok, _)| AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| bad(meta.path, format!("cannot add the special tokens: {e}")))?;
    Ok((tokenizer, tokens.len()))
}

/// The pre-tokenizer `tokenizer.ggml.pre` names, as llama.cpp splits text before BPE.
fn gpt2_pre_tokenizer(
    meta: &Meta,
) -> Result<tokenizers::pre_tokenizers::PreTokenizerWrapper, ModelError> {
    use tokenizers::pre_tokenizers::{
        byte_level::ByteLevel, digits::Digits, sequence::Sequence, PreTokenizerWrapper,
    };
    let pre = meta
        .content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_else(|| "default".into());
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        // llama.cpp: digits one by one, then the GPT-2 split (`LLAMA_VOCAB_PRE_TYPE_SMOLLM`,
        // `..._STARCODER`); the Hugging Face tokenizer.json of these models says the same.
        "smollm" | "starcoder" | "refact" => Sequence::new(vec![
            Digits::new(true).into(),
            byte_level.into(),
        ])
        .into(),
        // The GPT-2 split alone.
        "default" | "gpt2" | "gpt-2" => byte_level.into(),
        other => {
            return Err(bad(
                meta.path,
                format!("pre-tokenizer {other:?} (`tokenizer.ggml.pre`) is not supported yet; rtlab knows smollm, starcoder, refact and gpt2"),
            ))
        }
    };
    Ok(pre_tokenizer)
}

/// `tokenizer.ggml.merges` as pairs. A vocabulary without merges is byte-level only (one token per
/// byte): the key may be left out.
fn gpt2_merges(meta: &Meta) -> Result<Vec<(String, String)>, ModelError> {
    if !meta.content.metadata.contains_key("tokenizer.ggml.merges") {
        return Ok(Vec::new());
    }
    meta.strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(bad(meta.path, format!("merge {m:?} is not two tokens"))),
        })
        .collect()
}

/// The token types of `tokenizer.ggml.token_type` (llama.cpp's `llama_token_type`).
fn token_types(meta: &Meta, n: usize) -> Result<Vec<i64>, ModelError> {
    match meta.content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => Ok(v
            .to_vec()
            .map_err(|e| bad(meta.path, e))?
            .iter()
            .map(|t| Meta::number(t).unwrap_or(1.0) as i64)
            .collect()),
        None => Ok(vec![1; n]),
    }
}

/// A SentencePiece BPE vocabulary (`tokenizer.ggml.model = "llama"`: Llama 1/2, Mistral, TinyLlama),
/// built the way Hugging Face's converter builds `LlamaTokenizerFast`: the merges are every split of
/// a piece into two pieces of the vocabulary, ranked by the piece's score (SentencePiece merges the
/// pair whose result scores highest); spaces become `▁` with one prepended; characters outside the
/// vocabulary fall back to their bytes (`<0x0A>`). The `tokenizers` crate reads it as JSON, the
/// format it owns.
fn sentencepiece_tokenizer(meta: &Meta) -> Result<(Tokenizer, usize), ModelError> {
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let scores: Vec<f64> = match meta.content.metadata.get("tokenizer.ggml.scores") {
        Some(v) => v
            .to_vec()
            .map_err(|e| bad(meta.path, e))?
            .iter()
            .map(|s| Meta::number(s).unwrap_or(0.0))
            .collect(),
        None => {
            return Err(bad(
                meta.path,
                "a SentencePiece vocabulary without `tokenizer.ggml.scores`: its merges cannot be ranked",
            ))
        }
    };
    if scores.len() != tokens.len() {
        return Err(bad(
            meta.path,
            format!("{} tokens but {} scores", tokens.len(), scores.len()),
        ));
    }
    let types = token_types(meta, tokens.len())?;
    let merges = sentencepiece_merges(&tokens, &scores, &types);
    let unk = types
        .iter()
        .position(|t| *t == 2)
        .map(|i| tokens[i].clone());
    let vocab_json: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::json!(i)))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(2..=4)))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        ]},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_json,
            "merges": merges.iter().map(|m| serde_json::json!([m.3, m.4])).collect::<Vec<_>>(),
        },
    });
    let tokenizer: Tokenizer = json.to_string().parse().map_err(|e| {
        bad(
            meta.path,
            format!("cannot build the SentencePiece vocabulary: {e}"),
        )
    })?;
    Ok((tokenizer, tokens.len()))
}

/// SentencePiece's merges as BPE merges: every split of a normal piece into two pieces of the
/// vocabulary, ranked by the merged piece's score, best first (ties by the ids, for a stable order).
fn sentencepiece_merges<'t>(
    tokens: &'t [String],
    scores: &[f64],
    types: &[i64],
) -> Vec<(f64, usize, usize, &'t str, &'t str)> {
    let vocab: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (score of the merged piece, left id, right id, left, right), best first.
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types.get(i).copied().unwrap_or(1) != 1 {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(at);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merges.push((scores[i], li, ri, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpps_permute() {
        // llama.cpp: w.reshape(heads, 2, half, in).swapaxes(1, 2).reshape(w.shape)
        let (heads, head_dim, cols) = (3usize, 4usize, 2usize);
        let rows = heads * head_dim;
        let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let hf = Tensor::from_vec(hf, (rows, cols), &Device::Cpu).unwrap();
        let permuted = hf
            .reshape((heads, 2, head_dim / 2, cols))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((rows, cols))
            .unwrap();
        let back = unpermute(&permuted, heads).unwrap();
        assert_eq!(
            permute(&hf, heads).unwrap().to_vec2::<f32>().unwrap(),
            permuted.to_vec2::<f32>().unwrap()
        );
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
        assert_ne!(
            permuted.to_vec2::<f32>().unwrap(),
            hf.to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn tensor_names_map_to_hugging_faces() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
