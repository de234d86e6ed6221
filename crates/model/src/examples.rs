//! Turning a dataset into training examples: the prompt through the template, the response after it,
//! then the end-of-sequence token; loss is counted on response tokens only. Batches are padded on the
//! right, which a causal mask makes invisible to the real tokens.

use super::ModelError;
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

/// The default prompt template (Alpaca style, what most Verilog SFT sets use).
pub const DEFAULT_TEMPLATE: &str = "### Instruction:\n{prompt}\n\n### Response:\n";

/// One tokenized example: `ids` = prompt + response + eos; the first `prompt_len` are not scored.
#[derive(Debug, Clone)]
pub struct Example {
    pub ids: Vec<u32>,
    pub prompt_len: usize,
}

pub fn load_tokenizer(dir: &std::path::Path) -> Result<Tokenizer, ModelError> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(ModelError::Input(format!(
            "{}: missing tokenizer.json (rtlab reads the fast-tokenizer file that `transformers` saves with the model)",
            dir.display()
        )));
    }
    Tokenizer::from_file(&path).map_err(|e| {
        ModelError::Input(format!(
            "{}: cannot read the tokenizer: {e}",
            path.display()
        ))
    })
}

/// The end-of-sequence id: config.json's `eos_token_id`, else the tokenizer's usual names.
pub fn eos_id(tok: &Tokenizer, from_config: Option<u32>) -> Result<u32, ModelError> {
    if let Some(id) = from_config {
        return Ok(id);
    }
    for name in [
        "<|endoftext|>",
        "</s>",
        "<|im_end|>",
        "<|end_of_text|>",
        "<eos>",
    ] {
        if let Some(id) = tok.token_to_id(name) {
            return Ok(id);
        }
    }
    Err(ModelError::Input(
        "cannot tell the end-of-sequence token: config.json has no eos_token_id and the tokenizer has none of </s>, <|endoftext|>, <|im_end|>".into(),
    ))
}

pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, ModelError> {
    tok.encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| ModelError::Input(format!("tokenizer failed: {e}")))
}

pub fn apply_template(template: &str, prompt: &str) -> String {
    template.replace("{prompt}", prompt)
}

/// What to do with an example whose prompt leaves no room for a response within `max_len`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TooLong {
    Error,
    Skip,
}

/// Tokenizes every (prompt, response) pair. A response is cut to fit `max_len` (the eos is kept only
/// when it fits); a prompt that leaves no room is an error naming the row, or skipped.
pub fn build(
    tok: &Tokenizer,
    pairs: &[(String, String)],
    template: &str,
    max_len: usize,
    eos: u32,
    too_long: TooLong,
) -> Result<(Vec<Example>, Vec<usize>), ModelError> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut skipped = Vec::new();
    for (row, (prompt, response)) in pairs.iter().enumerate() {
        let p = encode(tok, &apply_template(template, prompt))?;
        if p.len() + 1 >= max_len {
            match too_long {
                TooLong::Skip => {
                    skipped.push(row);
                    continue;
                }
                TooLong::Error => {
                    return Err(ModelError::Input(format!(
                        "row {row}: the prompt is {} tokens with the template, max_len is {max_len}, so no response token would be trained; raise max_len or pass on_too_long: \"skip\"",
                        p.len()
                    )))
                }
            }
        }
        let mut ids = p.clone();
        ids.extend(encode(tok, response)?);
        ids.push(eos);
        ids.truncate(max_len);
        out.push(Example {
            ids,
            prompt_len: p.len(),
        });
    }
    Ok((out, skipped))
}

/// A padded micro-batch: inputs are `ids[..n-1]`, targets `ids[1..]`, mask 1 on response targets.
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    pub mask: Tensor,
    /// The same, flat, for the GPU path; `width` tokens per row.
    pub raw: (Vec<u32>, Vec<u32>, Vec<f32>),
    pub width: usize,
    pub scored: usize,
    pub tokens: usize,
}

pub fn batch(
    examples: &[&Example],
    pad: u32,
    dtype: candle_core::DType,
    dev: &Device,
) -> candle_core::Result<Batch> {
    let width = examples.iter().map(|e| e.ids.len() - 1).max().unwrap_or(1);
    let (mut inputs, mut targets, mut mask) = (Vec::new(), Vec::new(), Vec::new());
    let (mut scored, mut tokens) = (0, 0);
    for e in examples {
        let n = e.ids.len() - 1;
        tokens += e.ids.len();
        for j in 0..width {
            if j < n {
                inputs.push(e.ids[j]);
                targets.push(e.ids[j + 1]);
                // Target j+1 is a response token when j+1 >= prompt_len.
                let on = j + 1 >= e.prompt_len;
                mask.push(if on { 1f32 } else { 0.0 });
                scored += on as usize;
            } else {
                inputs.push(pad);
                targets.push(pad);
                mask.push(0.0);
            }
        }
    }
    let b = examples.len();
    Ok(Batch {
        inputs: Tensor::from_vec(inputs.clone(), (b, width), dev)?,
        targets: Tensor::from_vec(targets.clone(), (b, width), dev)?,
        mask: Tensor::from_vec(mask.clone(), (b, width), dev)?.to_dtype(dtype)?,
        raw: (inputs, targets, mask),
        width,
        scored,
        tokens,
    })
}
