//! Local inference: a base model (optionally with an adapter) that generates with a KV cache, greedy
//! at temperature 0, else nucleus sampling from a seeded generator.

use super::config::ModelConfig;
use super::examples::{self, DEFAULT_TEMPLATE};
use super::model::{load_weights, softmax_last, CausalLm, KvCache, Pass};
use super::{peft, ModelError};
use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

pub struct LocalModel {
    /// How it was loaded: what `load_model` was given, so the notebook can cache a cell that holds
    /// the model as these options and load it again on restore.
    pub source: LoadSpec,
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    pub eos: u32,
    pub adapter: Option<PathBuf>,
    pub template: String,
    /// The model's own chat template (Jinja, from a GGUF file), used for `answer` unless a
    /// `template` was given.
    pub chat: Option<ChatTemplate>,
}

/// What a local model was loaded from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSpec {
    pub path: PathBuf,
    pub adapter: Option<PathBuf>,
    pub template: Option<String>,
    pub dequantize: bool,
}

/// A Jinja chat template and the special tokens it may name.
pub struct ChatTemplate {
    pub source: String,
    pub bos_token: String,
    pub eos_token: String,
}

impl ChatTemplate {
    /// A Hugging Face directory's chat template, from `tokenizer_config.json` (`chat_template` as a
    /// string, or the "default" of a list of named ones), with its `bos_token` and `eos_token`
    /// (strings, or `{content}` objects). None when the directory has none.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<ChatTemplate>, ModelError> {
        let path = dir.join("tokenizer_config.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Input(format!("{}: not JSON: {e}", path.display())))?;
        let source = match &config["chat_template"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(named) => match named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
            {
                Some(s) => s.to_string(),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let token = |key: &str| -> String {
            match &config[key] {
                serde_json::Value::String(s) => s.clone(),
                v => v["content"].as_str().unwrap_or_default().to_string(),
            }
        };
        Ok(Some(ChatTemplate {
            source,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
        }))
    }

    /// One user message, rendered with `add_generation_prompt`, as llama.cpp and transformers do.
    pub fn render(&self, prompt: &str) -> Result<String, ModelError> {
        self.render_messages(&[("user".to_string(), prompt.to_string())])
    }

    /// A conversation of (role, content) messages, rendered with `add_generation_prompt`.
    pub fn render_messages(&self, messages: &[(String, String)]) -> Result<String, ModelError> {
        let mut env = minijinja::Environment::new();
        env.add_template("chat", &self.source).map_err(|e| {
            ModelError::Input(format!("the model's chat template does not parse: {e}"))
        })?;
        let ctx = minijinja::context! {
            messages => messages
                .iter()
                .map(|(role, content)| minijinja::context! { role => role, content => content })
                .collect::<Vec<_>>(),
            add_generation_prompt => true,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(|e| ModelError::Input(format!("the model's chat template fails: {e}")))
    }
}

/// One decoded answer and what it cost: the prompt's tokens (template included) and the tokens
/// generated, as an API server reports them in `usage`.
#[derive(Clone, Debug)]
pub struct Answer {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone)]
pub struct GenOptions {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Strings that end a sample: decoding stops once one appears in its text, and the answer is cut
    /// before it (OpenAI's `stop`).
    pub stop: Vec<String>,
    /// Asked once a token: true ends decoding early with what was decoded so far. The library knows
    /// no process-wide Ctrl-C; the caller passes its own flag (rtlab passes `cancel_requested`).
    pub interrupted: fn() -> bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            interrupted: || false,
        }
    }
}

impl LocalModel {
    /// Loads a Hugging Face directory or a GGUF file. A GGUF's quantized projections stay quantized
    /// (as llama.cpp runs them) unless `dequantize`, which computes everything in f32.
    pub fn load(
        dir: &Path,
        adapter: Option<&Path>,
        template: Option<String>,
        dequantize: bool,
    ) -> Result<LocalModel, ModelError> {
        let source = LoadSpec {
            path: dir.to_path_buf(),
            adapter: adapter.map(Path::to_path_buf),
            template: template.clone(),
            dequantize,
        };
        if dir.is_file() && super::gguf::is_gguf(dir) {
            return Self::load_gguf(source, adapter, template, dequantize);
        }
        let cfg = ModelConfig::from_dir(dir)?;
        let tokenizer = examples::load_tokenizer(dir)?;
        let eos = examples::eos_id(&tokenizer, cfg.eos_token_id)?;
        let dev = Device::Cpu;
        let weights = load_weights(dir, DType::F32, &dev)?;
        let mut model = CausalLm::new(cfg, weights, None, 0, DType::F32, &dev)?;
        if let Some(a) = adapter {
            let (spec, tensors) = peft::load(a, &dev)?;
            model.set_adapters(&spec, tensors)?;
        }
        // The directory's own chat template asks the questions, unless a template was given.
        let chat = match &template {
            None => ChatTemplate::from_hf_dir(dir)?,
            Some(_) => None,
        };
        Ok(LocalModel {
            source,
            model,
            tokenizer,
            eos,
            adapter: adapter.map(Path::to_path_buf),
            template: template.unwrap_or_else(|| DEFAULT_TEMPLATE.to_string()),
            chat,
        })
    }

    /// A GGUF file (llama.cpp, Ollama): the quantized projections kept quantized (or every weight
    /// dequantized to f32), the tokenizer and chat template from its metadata.
    fn load_gguf(
        source: LoadSpec,
        adapter: Option<&Path>,
        template: Option<String>,
        dequantize: bool,
    ) -> Result<LocalModel, ModelError> {
        let path = source.path.clone();
        let path = path.as_path();
        let dev = Device::Cpu;
        let g = super::gguf::open(path)?;
        let eos = examples::eos_id(&g.tokenizer, g.cfg.eos_token_id)?;
        let mut model = if dequantize {
            CausalLm::new(g.cfg.clone(), g.weights(&dev)?, None, 0, DType::F32, &dev)?
        } else {
            let (dense, quantized) = g.weights_quantized(&dev)?;
            CausalLm::with_quantized(g.cfg.clone(), dense, quantized, None, 0, DType::F32, &dev)?
        };
        if let Some(a) = adapter {
            let (spec, tensors) = peft::load(a, &dev)?;
            model.set_adapters(&spec, tensors)?;
        }
        let chat = match (&template, g.chat_template.clone()) {
            (None, Some(source)) => Some(ChatTemplate {
                source,
                bos_token: g.bos_token.clone().unwrap_or_default(),
                eos_token: g.eos_token.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(LocalModel {
            source,
            model,
            tokenizer: g.tokenizer.clone(),
            eos,
            adapter: adapter.map(Path::to_path_buf),
            template: template.unwrap_or_else(|| DEFAULT_TEMPLATE.to_string()),
            chat,
        })
    }

    /// The token ids of `text` (no template).
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        examples::encode(&self.tokenizer, text)
    }

    /// The continuation of `text` as it is (no template).
    pub fn continue_text(&self, text: &str, o: &GenOptions) -> Result<String, ModelError> {
        let ids = examples::encode(&self.tokenizer, text)?;
        let out = self.generate_ids(&ids, o)?;
        Ok(cut_at_stop(&self.decode(&out)?, &o.stop).to_string())
    }

    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| ModelError::Input(format!("cannot decode: {e}")))
    }

    /// Whether the text of `out` ends in one of the `stop` strings. Only the last tokens are decoded:
    /// enough of them to hold the longest stop string (every token is at least one character of it,
    /// or a byte of a character), so a step costs the same however long the answer is.
    fn reached_stop(&self, out: &[u32], stop: &[String]) -> Result<bool, ModelError> {
        let Some(longest) = stop.iter().map(|s| s.len()).max() else {
            return Ok(false);
        };
        let tail = &out[out.len().saturating_sub(longest + 2)..];
        let text = self.decode(tail)?;
        Ok(stop
            .iter()
            .any(|s| !s.is_empty() && text.contains(s.as_str())))
    }

    /// `prompt` as the model is asked it: through its chat template when it has one and no
    /// `template` was given, else through the training template.
    pub fn prompt_text(&self, prompt: &str) -> Result<String, ModelError> {
        match &self.chat {
            Some(chat) => chat.render(prompt),
            None => Ok(examples::apply_template(&self.template, prompt)),
        }
    }

    /// The answer to `prompt` put through the training template.
    pub fn answer(&self, prompt: &str, o: &GenOptions) -> Result<String, ModelError> {
        self.continue_text(&self.prompt_text(prompt)?, o)
    }

    /// The perplexity of the responses given their prompts: exp of the mean negative log-likelihood
    /// per response token (the end-of-sequence token included, as training scores it), the prompt
    /// asked as `answer` asks it. Rows longer than `max_len` tokens are cut there. Returns
    /// (perplexity, scored tokens).
    pub fn perplexity(
        &self,
        rows: &[(String, String)],
        max_len: usize,
        batch_size: usize,
    ) -> Result<(f64, usize), ModelError> {
        let mut examples = Vec::with_capacity(rows.len());
        for (row, (prompt, response)) in rows.iter().enumerate() {
            let mut ids = examples::encode(&self.tokenizer, &self.prompt_text(prompt)?)?;
            let prompt_len = ids.len();
            if prompt_len + 1 >= max_len {
                return Err(ModelError::Input(format!(
                    "perplexity: row {row}: the prompt is {prompt_len} tokens, max_len is {max_len}, so no response token would be scored; raise max_len"
                )));
            }
            ids.extend(examples::encode(&self.tokenizer, response)?);
            ids.push(self.eos);
            ids.truncate(max_len);
            examples.push(examples::Example { ids, prompt_len });
        }
        let (nll, scored) =
            super::model::mean_nll(&self.model, &examples, self.eos, batch_size, Pass::decoding)?;
        Ok((nll.exp(), scored))
    }

    /// The logits at every position of `text` (no template), `[tokens][vocab]`: for checking against
    /// another implementation, e.g. transformers + peft on the same dir and adapter.
    pub fn logits(&self, text: &str) -> Result<Vec<Vec<f32>>, ModelError> {
        let ids = examples::encode(&self.tokenizer, text)?;
        if ids.is_empty() {
            return Err(ModelError::Input("logits: the text is empty".into()));
        }
        let input = Tensor::from_vec(ids.clone(), (1, ids.len()), &self.model.device)?;
        let logits = self.model.forward(&input, None, &mut Pass::decoding())?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec2()?)
    }

    /// `seeds.len()` samples of one prompt, decoded as a batch: the prompt is prefilled once, its KV
    /// cache copied to every sample, then each step feeds all unfinished samples' last tokens at once.
    /// Sample `i` draws from its own generator seeded with `seeds[i]`, as `generate_ids` does.
    pub fn generate_batch(
        &self,
        prompt: &[u32],
        o: &GenOptions,
        seeds: &[u64],
    ) -> Result<Vec<Vec<u32>>, ModelError> {
        let mut outs = self.generate_batches(&[(prompt, seeds)], o)?;
        Ok(outs.pop().unwrap_or_default())
    }

    /// The samples of several prompts decoded as one batch: each prompt is prefilled alone and its
    /// KV cache copied to its samples, the caches are stacked right-aligned (each sequence attends
    /// to its own positions and is rotated at its own), then each step feeds every unfinished
    /// sample's last token at once. Sample `j` of prompt `i` draws from a generator seeded with
    /// `prompts[i].1[j]`, so each sample is the one `generate_ids` makes alone (the tests compare).
    /// A benchmark's problems decode together this way, where one prompt's few samples left the
    /// batch small.
    pub fn generate_batches(
        &self,
        prompts: &[(&[u32], &[u64])],
        o: &GenOptions,
    ) -> Result<Vec<Vec<Vec<u32>>>, ModelError> {
        if prompts.iter().any(|(p, _)| p.is_empty()) {
            return Err(ModelError::Input("generate: the prompt is empty".into()));
        }
        let dev = &self.model.device;
        if prompts.len() > 1 && !self.prompts_share_batches() {
            return prompts
                .iter()
                .map(|prompt| {
                    Ok(self
                        .generate_batches(&[*prompt], o)?
                        .pop()
                        .unwrap_or_default())
                })
                .collect();
        }
        // Samples flattened: sample `k` is prompt `owner[k].0`'s sample `owner[k].1`.
        let owner: Vec<(usize, usize)> = prompts
            .iter()
            .enumerate()
            .flat_map(|(i, (_, seeds))| (0..seeds.len()).map(move |j| (i, j)))
            .collect();
        let n = owner.len();
        let mut outs: Vec<Vec<u32>> = vec![Vec::new(); n];
        let regroup = |outs: Vec<Vec<u32>>| {
            let mut grouped: Vec<Vec<Vec<u32>>> = prompts.iter().map(|_| Vec::new()).collect();
            for (k, out) in outs.into_iter().enumerate() {
                grouped[owner[k].0].push(out);
            }
            grouped
        };
        if n == 0 || o.max_tokens == 0 {
            return Ok(regroup(outs));
        }
        let mut rngs: Vec<StdRng> = owner
            .iter()
            .map(|&(i, j)| StdRng::seed_from_u64(prompts[i].1[j]))
            .collect();
        let mut done = vec![false; n];
        let mut next: Vec<u32> = Vec::with_capacity(n);
        let mut caches = Vec::new();
        for (prompt, seeds) in prompts.iter().filter(|(_, seeds)| !seeds.is_empty()) {
            let mut prefill = KvCache::default();
            let input = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), dev)?;
            let logits = self
                .model
                .forward(&input, Some(&mut prefill), &mut Pass::decoding())?;
            let last = logits.narrow(1, logits.dim(1)? - 1, 1)?.flatten_all()?;
            let first = next.len();
            for rng in &mut rngs[first..first + seeds.len()] {
                next.push(pick(&last, o, rng)?);
            }
            caches.push(prefill.repeat(seeds.len())?);
        }
        let mut cache = match caches.len() {
            1 => caches.pop().unwrap_or_default(),
            _ => KvCache::stack(&caches)?,
        };
        drop(caches);
        // The sample each row of the batch decodes: finished samples leave the batch, so a step
        // costs what the unfinished ones need (a benchmark's answers end at different lengths).
        let mut rows: Vec<usize> = (0..n).collect();
        for _ in 0..o.max_tokens {
            for &i in &rows {
                if next[i] == self.eos {
                    done[i] = true;
                } else {
                    outs[i].push(next[i]);
                    done[i] = self.reached_stop(&outs[i], &o.stop)?;
                }
            }
            // The cache's length is the longest sequence's.
            let full = cache.len() + 1 > self.model.cfg.max_position_embeddings;
            if done.iter().all(|d| *d) || full || (o.interrupted)() {
                break;
            }
            if rows.iter().any(|&i| done[i]) {
                let keep: Vec<usize> = (0..rows.len()).filter(|&r| !done[rows[r]]).collect();
                cache = cache.select_rows(&keep)?;
                rows = keep.iter().map(|&r| rows[r]).collect();
            }
            let input: Vec<u32> = rows.iter().map(|&i| next[i]).collect();
            let input = Tensor::from_vec(input, (rows.len(), 1), dev)?;
            let logits = self
                .model
                .forward(&input, Some(&mut cache), &mut Pass::decoding())?;
            pick_rows(&logits, o, &rows, &mut rngs, &mut next)?;
        }
        for out in outs.iter_mut() {
            out.truncate(o.max_tokens);
        }
        Ok(regroup(outs))
    }

    /// True where several prompts may share a batch: sequences of different lengths share one
    /// through the CPU's f32 attention only. Elsewhere each prompt's samples are a batch of their
    /// own, as before prompts shared batches. (A LoRA adapter shares too: its decoding product
    /// gives each row its bits alone, `low_rank.rs`.)
    fn prompts_share_batches(&self) -> bool {
        self.model.device.is_cpu() && self.model.dtype == DType::F32
    }

    /// `seeds.len()` answers to `prompt` (through the template), decoded as one batch.
    pub fn answer_batch(
        &self,
        prompt: &str,
        o: &GenOptions,
        seeds: &[u64],
    ) -> Result<Vec<Answer>, ModelError> {
        let mut answers = self.answer_batches(&[(prompt, seeds)], o)?;
        Ok(answers.pop().unwrap_or_default())
    }

    /// The answers to several prompts (through the template), `seeds.len()` each, decoded as one
    /// batch ([`Self::generate_batches`]).
    pub fn answer_batches(
        &self,
        prompts: &[(&str, &[u64])],
        o: &GenOptions,
    ) -> Result<Vec<Vec<Answer>>, ModelError> {
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|(p, _)| examples::encode(&self.tokenizer, &self.prompt_text(p)?))
            .collect::<Result<_, _>>()?;
        let batch: Vec<(&[u32], &[u64])> = ids
            .iter()
            .zip(prompts)
            .map(|(ids, (_, seeds))| (ids.as_slice(), *seeds))
            .collect();
        self.generate_batches(&batch, o)?
            .into_iter()
            .zip(&ids)
            .map(|(outs, ids)| {
                outs.into_iter()
                    .map(|out| {
                        let text = cut_at_stop(&self.decode(&out)?, &o.stop).to_string();
                        Ok(Answer {
                            text,
                            prompt_tokens: ids.len(),
                            completion_tokens: out.len(),
                        })
                    })
                    .collect()
            })
            .collect()
    }

    pub fn generate_ids(&self, prompt: &[u32], o: &GenOptions) -> Result<Vec<u32>, ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Input("generate: the prompt is empty".into()));
        }
        let dev = &self.model.device;
        let mut cache = KvCache::default();
        let mut rng = StdRng::seed_from_u64(o.seed);
        let mut out = Vec::new();
        let mut input = Tensor::from_vec(prompt.to_vec(), (1, prompt.len()), dev)?;
        for _ in 0..o.max_tokens {
            if (o.interrupted)() {
                break;
            }
            let logits = self
                .model
                .forward(&input, Some(&mut cache), &mut Pass::decoding())?;
            let last = logits.narrow(1, logits.dim(1)? - 1, 1)?.flatten_all()?;
            let next = pick(&last, o, &mut rng)?;
            if next == self.eos {
                break;
            }
            out.push(next);
            if cache.len() + 1 > self.model.cfg.max_position_embeddings
                || self.reached_stop(&out, &o.stop)?
            {
                break;
            }
            input = Tensor::from_vec(vec![next], (1, 1), dev)?;
        }
        Ok(out)
    }
}

/// `text` before the earliest of the `stop` strings (all of it when none occurs).
/// (OpenAI's `stop`: the stop string itself is not part of the answer.) The one cut for every
/// answer: the local decoder's here, and `rtlab-llm`'s client applies it to every provider's.
pub fn cut_at_stop<'a>(text: &'a str, stop: &[String]) -> &'a str {
    let end = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// The smallest set of tokens, most probable first, whose probability reaches `top_p` (ties broken by
/// token id). Exact, without sorting the whole vocabulary: the top `k` are selected (`k` = 64, then
/// 4× more until their mass reaches `top_p`) and only they are sorted.
fn nucleus(probs: &[f32], top_p: f64) -> Vec<usize> {
    // Integer compares on a contiguous array, instead of two lookups into `probs` per compare.
    let keys = ranking_keys(probs);
    // A mass of 1 is rarely reached before the last token (rounding), so top_p 1 sorts all at once
    // (sampling draws from the whole vocabulary with `draw_from_all`, which does not).
    let mut k = if top_p >= 1.0 {
        probs.len()
    } else {
        64.min(probs.len())
    };
    loop {
        let mut idx = most_probable(&keys, k);
        let mut mass = 0.0f64;
        for (n, &i) in idx.iter().enumerate() {
            mass += probs[i] as f64;
            if mass >= top_p {
                idx.truncate(n + 1);
                return idx;
            }
        }
        if k >= probs.len() {
            return idx;
        }
        k = (k * 4).min(probs.len());
    }
}

/// One u64 per token that orders as (probability descending, id ascending).
fn ranking_keys(probs: &[f32]) -> Vec<u64> {
    probs
        .iter()
        .enumerate()
        .map(|(i, p)| (u64::from(!total_order_bits(*p)) << 32) | i as u64)
        .collect()
}

/// The `k` most probable tokens, most probable first: the top `k` selected, then only they sorted.
fn most_probable(keys: &[u64], k: usize) -> Vec<usize> {
    let mut top = keys.to_vec();
    if k < top.len() {
        top.select_nth_unstable(k - 1);
        top.truncate(k);
    }
    top.sort_unstable();
    top.iter().map(|key| (key & 0xffff_ffff) as usize).collect()
}

/// What `top_p` 1 draws at `u` in [0, 1), to the bit what it always drew: the nucleus of mass 1
/// (tokens most probable first until their f64 sum reaches 1; the f32 softmax sums to a hair over
/// 1, so the last ten thousand or so tokens fall out), then `u · mass` walked down it. Sorting the
/// whole vocabulary at every step for that was a twelfth of a batch's decoding, and the walk almost
/// always ends within the first 64 tokens; only its `mass` needs the deep tail. So the top 64 are
/// sorted, and the mass bounded instead: the index-order sum is within `n · ε` of the sorted one,
/// and a nucleus that closes past the 64th token closes within one 64th-token probability of 1.
/// Walks are monotone in their start, so when walks from both bounds end at the same token, so does
/// the walk from the mass itself; otherwise (a draw that lands within that distance of a boundary,
/// or past the top 64) the whole vocabulary is sorted as before.
fn draw_from_all(probs: &[f32], u: f64) -> usize {
    let keys = ranking_keys(probs);
    let k = 64.min(probs.len());
    let top = most_probable(&keys, k);
    let mut mass = 0.0f64;
    for (n, &i) in top.iter().enumerate() {
        mass += probs[i] as f64;
        if mass >= 1.0 {
            return walk(&top[..=n], probs, u * mass).unwrap_or(i);
        }
    }
    if k == probs.len() {
        return walk(&top, probs, u * mass).unwrap_or(*top.last().unwrap_or(&0));
    }
    let sum: f64 = probs.iter().map(|&p| p as f64).sum();
    let error = probs.len() as f64 * f64::EPSILON * sum.max(1.0);
    let kth = probs[top[k - 1]] as f64;
    let low = (sum - error).min(1.0);
    let high = if sum + error < 1.0 {
        sum + error
    } else {
        (1.0 + kth).max(sum + error)
    };
    if let (Some(a), Some(b)) = (walk(&top, probs, u * low), walk(&top, probs, u * high)) {
        if a == b {
            return a;
        }
    }
    let kept = nucleus(probs, 1.0);
    let mass: f64 = kept.iter().map(|&i| probs[i] as f64).sum();
    walk(&kept, probs, u * mass).unwrap_or(*kept.last().unwrap_or(&0))
}

/// The token where `x` runs out, walking `order` and subtracting each token's probability.
fn walk(order: &[usize], probs: &[f32], mut x: f64) -> Option<usize> {
    order.iter().copied().find(|&i| {
        x -= probs[i] as f64;
        x <= 0.0
    })
}

/// `p`'s bits as a u32 that orders as `f32::total_cmp` orders the floats (the transform it uses).
fn total_order_bits(p: f32) -> u32 {
    let bits = p.to_bits() as i32;
    let ordered = bits ^ (((bits >> 31) as u32) >> 1) as i32;
    (ordered as u32) ^ 0x8000_0000
}

/// `next[rows[r]] = pick(logits[r], o, rngs[rows[r]])` for every row `r` of the batch, the rows on
/// candle's thread pool: each sample has its own generator, so the draws are the ones a loop makes,
/// and sampling (a softmax over the vocabulary, then the nucleus) no longer runs one row after
/// another on one core.
fn pick_rows(
    logits: &Tensor,
    o: &GenOptions,
    rows: &[usize],
    rngs: &mut [StdRng],
    next: &mut [u32],
) -> candle_core::Result<()> {
    let logits: Vec<Tensor> = (0..rows.len())
        .map(|r| logits.get(r)?.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    let mut picked: Vec<Option<candle_core::Result<u32>>> = (0..rows.len()).map(|_| None).collect();
    let (out, gens) = (
        crate::cpu_kernels::SharedOut(picked.as_mut_ptr()),
        crate::cpu_kernels::SharedOut(rngs.as_mut_ptr()),
    );
    candle_core::utils::barrier_pool().execute_chunked(rows.len(), |range| {
        for r in range {
            // SAFETY: row r's slot and its sample's generator (rows holds distinct samples) are
            // touched by this work item alone.
            unsafe { *out.at(r) = Some(pick(&logits[r], o, &mut *gens.at(rows[r]))) };
        }
    });
    for (&i, value) in rows.iter().zip(picked) {
        if let Some(value) = value {
            next[i] = value?;
        }
    }
    Ok(())
}

/// Greedy at temperature 0; otherwise softmax(logits / T), keep the smallest set of tokens whose
/// probability reaches `top_p`, and draw from it.
fn pick(logits: &Tensor, o: &GenOptions, rng: &mut StdRng) -> candle_core::Result<u32> {
    if o.temperature <= 0.0 {
        return logits.argmax(D::Minus1)?.to_scalar::<u32>();
    }
    let logits = logits.to_dtype(DType::F32)?;
    let probs: Vec<f32> = match logits.device() {
        // The same bits as the tensor ops below, in one buffer with the vector `exp`.
        Device::Cpu => crate::fused::softmax_at_temperature(logits.to_vec1()?, o.temperature),
        _ => softmax_last(&(logits / o.temperature)?)?.to_vec1()?,
    };
    if o.top_p >= 1.0 {
        return Ok(draw_from_all(&probs, rng.random::<f64>()) as u32);
    }
    let kept = nucleus(&probs, o.top_p);
    let mass: f64 = kept.iter().map(|&i| probs[i] as f64).sum();
    let picked = walk(&kept, &probs, rng.random::<f64>() * mass);
    Ok(picked.unwrap_or(*kept.last().unwrap_or(&0)) as u32)
}

#[cfg(test)]
mod tests {
    use super::nucleus;

    /// Several prompts of different lengths decoded as one batch: each sample is what
    /// `generate_ids` decodes alone with its seed, in f32 (the ragged batch) and in f64 (where each
    /// prompt's samples decode as a batch of their own).
    #[test]
    fn prompts_of_different_lengths_batch_and_each_sample_is_the_one_decoded_alone() {
        use super::{GenOptions, LocalModel};
        use crate::config::{Arch, ModelConfig};
        use crate::model::{load_weights, CausalLm};
        use candle_core::{DType, Device};
        let dir = crate::testing::tiny_dir(Arch::Llama);
        let mut lm = LocalModel::load(dir.path(), None, None, false).unwrap();
        let prompts: [&[u32]; 3] = [&[5, 9, 31], &[7, 7, 2, 40, 41, 42, 3, 9], &[100, 3]];
        let seeds: [&[u64]; 3] = [&[0, 1], &[2], &[3, 4, 5]];
        for dtype in [DType::F32, DType::F64] {
            let cfg = ModelConfig::from_dir(dir.path()).unwrap();
            let weights = load_weights(dir.path(), dtype, &Device::Cpu).unwrap();
            lm.model = CausalLm::new(cfg, weights, None, 0, dtype, &Device::Cpu).unwrap();
            for temperature in [0.0, 1.0] {
                let o = GenOptions {
                    max_tokens: 12,
                    temperature,
                    ..GenOptions::default()
                };
                let batch: Vec<(&[u32], &[u64])> = prompts.iter().copied().zip(seeds).collect();
                let outs = lm.generate_batches(&batch, &o).unwrap();
                for (i, (prompt, seeds)) in batch.iter().enumerate() {
                    for (j, &seed) in seeds.iter().enumerate() {
                        let alone = lm.generate_ids(prompt, &GenOptions { seed, ..o.clone() });
                        assert_eq!(
                            outs[i][j],
                            alone.unwrap(),
                            "{dtype:?}, T {temperature}, prompt {i}, sample {j}"
                        );
                    }
                }
            }
        }
    }

    /// The nucleus as a full sort finds it.
    fn naive(probs: &[f32], top_p: f64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..probs.len()).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let mut kept = Vec::new();
        let mut mass = 0.0f64;
        for i in order {
            kept.push(i);
            mass += probs[i] as f64;
            if mass >= top_p {
                break;
            }
        }
        kept
    }

    /// Prompts share batches on the base model in f32 only: not with a LoRA adapter (whose gemm
    /// product depends on the row count, so a shared batch would change samples), not in f64.
    #[test]
    fn prompts_share_batches_in_f32_on_the_cpu_with_or_without_an_adapter() {
        use super::LocalModel;
        use crate::config::{Arch, ModelConfig};
        use crate::model::{load_weights, CausalLm};
        use candle_core::{DType, Device};
        let dir = crate::testing::tiny_dir(Arch::Llama);
        let mut lm = LocalModel::load(dir.path(), None, None, false).unwrap();
        assert!(lm.prompts_share_batches());
        lm.model = crate::testing::lora_model(dir.path(), DType::F32);
        assert!(lm.prompts_share_batches());
        let cfg = ModelConfig::from_dir(dir.path()).unwrap();
        let weights = load_weights(dir.path(), DType::F64, &Device::Cpu).unwrap();
        lm.model = CausalLm::new(cfg, weights, None, 0, DType::F64, &Device::Cpu).unwrap();
        assert!(!lm.prompts_share_batches());
    }

    #[test]
    fn a_draw_from_the_whole_vocabulary_is_the_one_the_sorted_nucleus_makes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        // What `top_p` 1 drew before: the nucleus of mass 1 from a full sort, then the walk.
        let sorted_draw = |probs: &[f32], u: f64| {
            let kept = naive(probs, 1.0);
            let mass: f64 = kept.iter().map(|&i| probs[i] as f64).sum();
            super::walk(&kept, probs, u * mass).unwrap_or(*kept.last().unwrap())
        };
        for case in 0..400 {
            let n = 1 + case * 131 % 20_000;
            // Peaked (the walk ends early), flat (it runs long) and tied distributions, normalized
            // in f32 as a softmax is: their sums land a little over or under 1.
            let raw: Vec<f32> = (0..n)
                .map(|i| match case % 3 {
                    0 => rng.random::<f32>().powi(24),
                    1 => rng.random::<f32>(),
                    _ => ((i % 4) + 1) as f32,
                })
                .collect();
            let sum: f32 = raw.iter().sum();
            let probs: Vec<f32> = raw.iter().map(|p| p / sum).collect();
            // Draws near 1 walk into the tail, where the nucleus's edge decides the token.
            for u in [
                0.0,
                0.3,
                0.9,
                0.99,
                0.999_99,
                0.999_999_9,
                rng.random::<f64>(),
            ] {
                assert_eq!(
                    super::draw_from_all(&probs, u),
                    sorted_draw(&probs, u),
                    "case {case}, u {u}"
                );
            }
        }
    }

    #[test]
    fn the_nucleus_is_the_one_a_full_sort_finds() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for case in 0..200 {
            let n = 1 + case * 37 % 3000;
            // Peaked, flat and tied distributions.
            let raw: Vec<f32> = (0..n)
                .map(|i| match case % 3 {
                    0 => rng.random::<f32>().powi(8),
                    1 => rng.random::<f32>(),
                    _ => ((i % 5) + 1) as f32,
                })
                .collect();
            let sum: f32 = raw.iter().sum();
            let probs: Vec<f32> = raw.iter().map(|p| p / sum).collect();
            for top_p in [0.1, 0.5, 0.9, 0.95, 1.0] {
                assert_eq!(
                    nucleus(&probs, top_p),
                    naive(&probs, top_p),
                    "case {case}, top_p {top_p}"
                );
            }
        }
    }
}
