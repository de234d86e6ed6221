//! Model clients: `llm(#{provider, model, ...})` gives a `Model` with `complete`, `chat` and
//! `complete_many`. Every response is recorded in the workspace store keyed by the request, so a rerun
//! never pays twice, and `provider: "replay"` serves the recordings offline (a cassette, exported to and
//! imported from JSONL so example scripts ship theirs).
//!
//! Main types: [`Model`], [`ModelConfig`]. One tokio runtime per process runs the requests, `concurrency`
//! at a time.

/// The identity of this crate's code (the hash of its sources and `Cargo.lock`): every result the
/// LLM client caches is keyed on it, so a changed build never serves an old answer.
pub fn code_identity() -> String {
    rtlab_core::provenance::code_identity("LLM client", env!("RTLAB_CODE_IDENTITY"))
}

pub mod api;
mod client;
mod error;
pub mod providers;

pub use api::LlmPackage;
pub use error::LlmError;
pub use providers::{Message, Provider};

use client::{send, Endpoint};
use polars::prelude::*;
use providers::Sampling;
use rtlab_core::store::{Recorded, Store};
use rtlab_data::Frame;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The process's tokio runtime, made on first use.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    })
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub provider: Provider,
    pub base_url: String,
    pub model: String,
    pub api_key_env: Option<String>,
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: i64,
    /// Strings that end an answer before the first of them (OpenAI's `stop`): sent to the server and
    /// applied by the client to every answer, recorded or fresh.
    pub stop: Vec<String>,
    pub concurrency: usize,
    pub timeout_s: f64,
    pub retries: u32,
    /// `provider: "local"` only: a PEFT adapter dir on top of the model dir, and the prompt template.
    pub adapter: Option<String>,
    pub template: Option<String>,
}

impl ModelConfig {
    /// A model `provider` serves under `model`, with the defaults `llm(#{...})` documents: the
    /// provider's URL and key variable, temperature 0, top_p 1, 2048 tokens, 4 requests at once,
    /// 120 s per request, 4 retries.
    pub fn new(provider: Provider, model: impl Into<String>) -> ModelConfig {
        ModelConfig {
            provider,
            base_url: provider.default_base_url().to_string(),
            model: model.into(),
            api_key_env: provider.default_key_env().map(str::to_string),
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 2048,
            stop: Vec::new(),
            concurrency: 4,
            timeout_s: 120.0,
            retries: 4,
            adapter: None,
            template: None,
        }
    }
}

/// Token and request counts, for one model over its life.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub requests: i64,
    pub from_store: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub retries: i64,
    /// Answers the store refused to record, and the first reason.
    pub not_recorded: i64,
    pub record_error: Option<String>,
}

/// The store's row for one answer to `messages`: the request is kept as its JSON, so a replay can
/// show what was asked.
fn recorded(
    key: String,
    model: String,
    messages: &[Message],
    response: &str,
    (prompt_tokens, completion_tokens): (i64, i64),
) -> Recorded {
    Recorded {
        key,
        model,
        request: serde_json::to_string(messages).unwrap_or_default(),
        response: response.to_string(),
        prompt_tokens,
        completion_tokens,
        served_by: String::new(),
    }
}

/// One answer that arrived, from a server or the local model: counted in `usage` (a request and its
/// tokens) and recorded in the store when there is one.
fn account(rec: &Recorded, store: Option<&Mutex<Store>>, usage: &Mutex<Usage>) {
    if let Ok(mut u) = usage.lock() {
        u.requests += 1;
        u.prompt_tokens += rec.prompt_tokens;
        u.completion_tokens += rec.completion_tokens;
    }
    if let Some(store) = store {
        record(store, rec, usage);
    }
}

/// Records one answer in the store. A refused write is counted in `usage` (and reported once the
/// batch ends by [`Model::answer_all`]), never dropped in silence.
fn record(store: &Mutex<Store>, rec: &Recorded, usage: &Mutex<Usage>) {
    let written = match store.lock() {
        Ok(s) => s.put_response(rec).map_err(|e| e.to_string()),
        Err(_) => Err("the store's lock is poisoned".to_string()),
    };
    if let Err(e) = written {
        if let Ok(mut u) = usage.lock() {
            u.not_recorded += 1;
            u.record_error.get_or_insert(e);
        }
    }
}

/// The Rhai `Model`: cheap to clone, clones share their usage counters.
#[derive(Clone)]
pub struct Model {
    pub cfg: Arc<ModelConfig>,
    usage: Arc<Mutex<Usage>>,
}

impl Model {
    /// The model `cfg` describes. A local model (`provider: Local`) is a directory or a name rtlab
    /// knows (`smollm2-135m`, found in or pulled to its cache); it and its adapter resolve against
    /// `base_dir` (the script's directory, or the shell's).
    pub fn from_config(
        mut cfg: ModelConfig,
        base_dir: &std::path::Path,
    ) -> Result<Model, LlmError> {
        if cfg.provider == Provider::Local {
            cfg.model = rtlab_model::models::locate(&cfg.model, base_dir)
                .map_err(|e| LlmError::Locate(e.to_string()))?
                .display()
                .to_string();
            cfg.adapter = cfg.adapter.map(|a| {
                rtlab_core::workspace::resolve_against(base_dir, &a)
                    .display()
                    .to_string()
            });
        }
        Ok(Model {
            cfg: Arc::new(cfg),
            usage: Arc::new(Mutex::new(Usage::default())),
        })
    }

    /// The options that rebuild this model with `from_options` (how the cell cache persists a model).
    /// How the model shows at the REPL: its provider and name.
    pub fn describe(&self) -> String {
        format!("Model({:?} {})", self.cfg.provider, self.cfg.model)
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            provider: self.cfg.provider,
            base_url: self.cfg.base_url.clone(),
            model: self.cfg.model.clone(),
            api_key_env: self.cfg.api_key_env.clone(),
            timeout: Duration::from_secs_f64(self.cfg.timeout_s),
            retries: self.cfg.retries,
        }
    }

    fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.cfg.temperature,
            top_p: self.cfg.top_p,
            max_tokens: self.cfg.max_tokens,
            stop: self.cfg.stop.clone(),
        }
    }

    /// The store key of a request: model, messages, sampling and the sample index; not the provider,
    /// URL or key, so a replay finds what a live run recorded.
    pub fn request_key(&self, messages: &[Message], sample: usize) -> String {
        let mut canonical = serde_json::json!({"model": self.cfg.model, "messages": messages, "sampling": self.sampling(), "sample": sample});
        if self.cfg.provider == Provider::Local {
            // A local model is its content, not its path or file stamps: a copy elsewhere is the
            // same model, and a rewritten file (even with its mtime put back) is another. The
            // decoder's code is part of the answer too (a kernel change moves greedy answers).
            let content = |p: &str| {
                rtlab_core::provenance::path_content_hash(std::path::Path::new(p))
                    .unwrap_or_else(|e| format!("unreadable {p}: {e}"))
            };
            // An adapter is its weights and config; its run's logs and records do not change answers.
            let adapter = |dir: &str| {
                ["adapter_config.json", "adapter_model.safetensors"]
                    .map(|f| content(&std::path::Path::new(dir).join(f).display().to_string()))
            };
            canonical["model"] = serde_json::json!(content(&self.cfg.model));
            canonical["adapter"] = serde_json::json!(self.cfg.adapter.as_deref().map(adapter));
            canonical["template"] = serde_json::json!(self.cfg.template);
            canonical["decoder"] = serde_json::json!(rtlab_core::provenance::code_identity(
                "model",
                rtlab_model::CODE_IDENTITY
            ));
        }
        blake3::hash(canonical.to_string().as_bytes())
            .to_hex()
            .to_string()
    }

    /// The same model with other sampling settings (a benchmark's temperature and top_p).
    pub fn with_sampling(&self, temperature: f64, top_p: f64) -> Model {
        let mut cfg = (*self.cfg).clone();
        cfg.temperature = temperature;
        cfg.top_p = top_p;
        Model {
            cfg: Arc::new(cfg),
            usage: self.usage.clone(),
        }
    }

    /// The same model ending its answers at `stop` (a benchmark's end of module).
    pub fn with_stop(&self, stop: Vec<String>) -> Model {
        let mut cfg = (*self.cfg).clone();
        cfg.stop = stop;
        Model {
            cfg: Arc::new(cfg),
            usage: self.usage.clone(),
        }
    }

    pub fn usage(&self) -> Usage {
        self.usage.lock().map(|u| u.clone()).unwrap_or_default()
    }

    /// Answers every request (messages, sample index), in order. Recorded answers come from the store;
    /// the rest go to the server `concurrency` at a time and are recorded as each arrives. Returns the
    /// answers, `Err` per failed request.
    ///
    /// Answers the store refused to record are reported in one warning that names the store and the
    /// count: they are in the result, but not in the cassette.
    pub fn answer_all(
        &self,
        requests: &[(Vec<Message>, usize)],
        store: Option<Arc<Mutex<Store>>>,
    ) -> Vec<Result<String, LlmError>> {
        let before = self.usage().not_recorded;
        let path = store
            .as_ref()
            .and_then(|s| s.lock().ok().map(|s| s.path().display().to_string()));
        // The stop strings cut every answer here, recorded or fresh, whether or not the server
        // honoured them: so the same request gives the same text, and `stop` need not be in its key.
        let answers = self
            .answer_and_record(requests, store)
            .into_iter()
            .map(|a| a.map(|text| providers::cut_at_stop(&text, &self.cfg.stop).to_string()))
            .collect();
        let after = self.usage();
        if after.not_recorded > before {
            eprintln!(
                "warning: {} answers from {} were not recorded in the store {} ({}); they are in this result, but a rerun asks the model again",
                after.not_recorded - before,
                self.cfg.model,
                path.unwrap_or_default(),
                after.record_error.unwrap_or_default()
            );
        }
        answers
    }

    fn answer_and_record(
        &self,
        requests: &[(Vec<Message>, usize)],
        store: Option<Arc<Mutex<Store>>>,
    ) -> Vec<Result<String, LlmError>> {
        let keys: Vec<String> = requests
            .iter()
            .map(|(m, s)| self.request_key(m, *s))
            .collect();
        let mut results: Vec<Option<Result<String, LlmError>>> = vec![None; requests.len()];
        let served_by = self.server_identity();
        let todo = self.recorded_answers(&keys, store.as_ref(), &mut results, served_by.as_deref());
        if !todo.is_empty() {
            let answered = if self.cfg.provider == Provider::Local {
                self.answer_locally(requests, &todo, &keys, store.as_ref())
            } else {
                let served_by = served_by.unwrap_or_default();
                self.answer_over_http(requests, &todo, &keys, store.as_ref(), &served_by)
            };
            for (i, answer) in answered {
                results[i] = Some(answer);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(LlmError::TaskFailed)))
            .collect()
    }

    /// Fills in the answers the store holds (and, for `replay`, the error for those it does not);
    /// returns the indices still to ask.
    fn recorded_answers(
        &self,
        keys: &[String],
        store: Option<&Arc<Mutex<Store>>>,
        results: &mut [Option<Result<String, LlmError>>],
        served_by: Option<&str>,
    ) -> Vec<usize> {
        let mut todo = Vec::new();
        let mut other_version = 0;
        for (i, key) in keys.iter().enumerate() {
            let recorded = store.and_then(|s| {
                s.lock()
                    .ok()
                    .and_then(|s| s.get_response(key).ok().flatten())
            });
            // An answer the server gave as another version of the model (Ollama's digest changed:
            // the model was pulled again or replaced) is asked again.
            let recorded = recorded.filter(|r| {
                let stale =
                    matches!(served_by, Some(now) if !r.served_by.is_empty() && r.served_by != now);
                other_version += usize::from(stale);
                !stale
            });
            match recorded {
                Some(r) => {
                    results[i] = Some(Ok(r.response));
                    if let Ok(mut u) = self.usage.lock() {
                        u.from_store += 1;
                    }
                }
                None if self.cfg.provider == Provider::Replay => {
                    results[i] = Some(Err(LlmError::NotRecorded {
                        model: self.cfg.model.clone(),
                    }));
                }
                None => todo.push(i),
            }
        }
        if other_version > 0 {
            eprintln!(
                "llm: {other_version} recorded answer{} came from another version of {} (the server's digest is now {}): asking again",
                if other_version == 1 { "" } else { "s" },
                self.cfg.model,
                served_by.unwrap_or_default()
            );
        }
        todo
    }

    /// What the server says the model is, where its API tells: Ollama's digest of the model (from
    /// `/api/tags`), which changes when the model is pulled again or replaced. None for servers
    /// that give no identity before answering, and when the server cannot be asked.
    fn server_identity(&self) -> Option<String> {
        if self.cfg.provider != Provider::Ollama {
            return None;
        }
        let url = format!("{}/api/tags", self.cfg.base_url.trim_end_matches('/'));
        let model = self.cfg.model.clone();
        runtime().block_on(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .ok()?;
            let tags: serde_json::Value = client.get(&url).send().await.ok()?.json().await.ok()?;
            // Ollama names a model `name:tag`; a bare name means `:latest`.
            let wanted = if model.contains(':') {
                model.clone()
            } else {
                format!("{model}:latest")
            };
            tags["models"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == model.as_str() || m["name"] == wanted.as_str())
                .and_then(|m| m["digest"].as_str())
                .map(str::to_string)
        })
    }

    /// Sends the `todo` requests to the server, `concurrency` at a time, recording each answer in the
    /// store as it arrives.
    fn answer_over_http(
        &self,
        requests: &[(Vec<Message>, usize)],
        todo: &[usize],
        keys: &[String],
        store: Option<&Arc<Mutex<Store>>>,
        served_by: &str,
    ) -> Vec<(usize, Result<String, LlmError>)> {
        let client = match reqwest::Client::builder().build() {
            Ok(c) => c,
            Err(e) => {
                let error = LlmError::Request(format!("cannot build an HTTP client: {e}"));
                return todo.iter().map(|&i| (i, Err(error.clone()))).collect();
            }
        };
        let ep = self.endpoint();
        let sampling = self.sampling();
        let sem = Arc::new(tokio::sync::Semaphore::new(self.cfg.concurrency));
        let mut progress = rtlab_core::progress::Progress::new("llm", todo.len() as u64, 0);
        runtime().block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for &i in todo {
                let request = Request {
                    client: client.clone(),
                    endpoint: ep.clone(),
                    sampling: sampling.clone(),
                    messages: requests[i].0.clone(),
                    key: keys[i].clone(),
                    model: self.cfg.model.clone(),
                    served_by: served_by.to_string(),
                };
                let (sem, store, usage) = (sem.clone(), store.cloned(), self.usage.clone());
                set.spawn(async move {
                    let _permit = sem.acquire().await;
                    (i, request.send_and_record(store.as_deref(), &usage).await)
                });
            }
            let mut out = Vec::new();
            let mut finished = 0;
            while let Some(done) = set.join_next().await {
                if let Ok(pair) = done {
                    out.push(pair);
                }
                finished += 1;
                progress.set(finished, || "requests".to_string());
            }
            progress.finish();
            out
        })
    }
}

/// One request to a model server, with what it is recorded under.
struct Request {
    client: reqwest::Client,
    endpoint: Endpoint,
    sampling: Sampling,
    messages: Vec<Message>,
    key: String,
    model: String,
    /// The server's identity for the model, recorded with the answer.
    served_by: String,
}

impl Request {
    /// Sends the request; counts the usage and records the answer when it succeeds.
    async fn send_and_record(
        self,
        store: Option<&Mutex<Store>>,
        usage: &Mutex<Usage>,
    ) -> Result<String, LlmError> {
        let reply = send(&self.client, &self.endpoint, &self.messages, &self.sampling).await?;
        if let Ok(mut u) = usage.lock() {
            u.retries += reply.retries as i64;
        }
        let mut rec = recorded(
            self.key,
            self.model,
            &self.messages,
            &reply.text,
            (reply.prompt_tokens, reply.completion_tokens),
        );
        rec.served_by = self.served_by;
        account(&rec, store, usage);
        Ok(reply.text)
    }
}

impl Model {
    /// Generates the `todo` requests in this process with the trainer's model, in batches of up to
    /// [`BATCH_ROWS`] samples across prompts (`generate_batches`), recording each answer like a
    /// server's. The sample
    /// index seeds the sampler, so n samples at temperature > 0 differ and a rerun repeats them.
    fn answer_locally(
        &self,
        requests: &[(Vec<Message>, usize)],
        todo: &[usize],
        keys: &[String],
        store: Option<&Arc<Mutex<Store>>>,
    ) -> Vec<(usize, Result<String, LlmError>)> {
        let adapter = self.cfg.adapter.as_ref().map(std::path::PathBuf::from);
        let model = match rtlab_model::load_local(
            std::path::Path::new(&self.cfg.model),
            adapter.as_deref(),
            self.cfg.template.clone(),
            false,
        ) {
            Ok(m) => m,
            Err(e) => {
                let e = LlmError::Local {
                    model: self.cfg.model.clone(),
                    message: e.to_string(),
                };
                return todo.iter().map(|&i| (i, Err(e.clone()))).collect();
            }
        };
        let mut progress = rtlab_core::progress::Progress::new("decode", todo.len() as u64, 0);
        let started = std::time::Instant::now();
        let mut tokens = 0usize;
        let mut out = Vec::new();
        // Several prompts' samples decode as one batch (each prompt prefilled once), up to
        // BATCH_ROWS samples, so a benchmark's problems share the matrix products too.
        let groups = group_by_prompt(requests, todo);
        let options = rtlab_model::generate::GenOptions {
            max_tokens: self.cfg.max_tokens.max(0) as usize,
            temperature: self.cfg.temperature,
            top_p: self.cfg.top_p,
            seed: 0,
            stop: self.cfg.stop.clone(),
            interrupted: rtlab_core::cancel_requested,
        };
        for batch in batches_of_groups(&groups, BATCH_ROWS) {
            if rtlab_core::cancel_requested() {
                break;
            }
            let prompts: Vec<String> = batch
                .iter()
                .map(|(messages, _)| {
                    messages
                        .iter()
                        .map(|m| m.content.as_str())
                        .collect::<Vec<_>>()
                        .join("\n\n")
                })
                .collect();
            // The sample index seeds each sample's sampler, so a rerun repeats it.
            let seeds: Vec<Vec<u64>> = batch
                .iter()
                .map(|(_, members)| members.iter().map(|&i| requests[i].1 as u64).collect())
                .collect();
            let asked: Vec<(&str, &[u64])> = prompts
                .iter()
                .zip(&seeds)
                .map(|(p, s)| (p.as_str(), s.as_slice()))
                .collect();
            let answers: Vec<Vec<Result<rtlab_model::generate::Answer, LlmError>>> =
                match model.answer_batches(&asked, &options) {
                    Ok(answers) => answers
                        .into_iter()
                        .map(|a| a.into_iter().map(Ok).collect())
                        .collect(),
                    Err(e) => {
                        let e = LlmError::Local {
                            model: self.cfg.model.clone(),
                            message: e.to_string(),
                        };
                        batch
                            .iter()
                            .map(|(_, members)| vec![Err(e.clone()); members.len()])
                            .collect()
                    }
                };
            for ((messages, members), answers) in batch.iter().zip(answers) {
                for (&i, answer) in members.iter().zip(answers) {
                    if let Ok(a) = &answer {
                        tokens += a.completion_tokens;
                        self.count_and_record(a, &keys[i], messages, store.map(|s| s.as_ref()));
                    }
                    out.push((i, answer.map(|a| a.text)));
                }
            }
            progress.set(out.len() as u64, || {
                let rate = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
                format!("samples  {rate:.0} tok/s")
            });
        }
        progress.finish();
        out
    }

    /// Counts and records a local answer as a server's. The prefill is shared by the batch, but each
    /// sample is billed its prompt, as n requests would be.
    fn count_and_record(
        &self,
        answer: &rtlab_model::generate::Answer,
        key: &str,
        messages: &[Message],
        store: Option<&Mutex<Store>>,
    ) {
        let tokens = (answer.prompt_tokens as i64, answer.completion_tokens as i64);
        let rec = recorded(
            key.to_string(),
            self.cfg.model.clone(),
            messages,
            &answer.text,
            tokens,
        );
        account(&rec, store, &self.usage);
    }
}

/// Samples a local batch decodes at once. Twenty rows already keep the matrix products busy on a
/// CPU (each weight block is reused across them); more mostly grow the KV cache held in memory.
const BATCH_ROWS: usize = 24;

/// Consecutive groups (prompts with their samples) cut into batches of at most `rows` samples; a
/// group with more samples than that is a batch of its own (the samples of one prompt always decode
/// together, as they did before prompts shared batches).
fn batches_of_groups<T>(groups: &[(T, Vec<usize>)], rows: usize) -> Vec<&[(T, Vec<usize>)]> {
    let mut batches = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, (_, members)) in groups.iter().enumerate() {
        if size > 0 && size + members.len() > rows {
            batches.push(&groups[start..i]);
            (start, size) = (i, 0);
        }
        size += members.len();
    }
    if start < groups.len() {
        batches.push(&groups[start..]);
    }
    batches
}

/// The requests in `todo` grouped by their messages, in first-seen order: each group is the samples
/// of one prompt.
fn group_by_prompt<'a>(
    requests: &'a [(Vec<Message>, usize)],
    todo: &[usize],
) -> Vec<(&'a Vec<Message>, Vec<usize>)> {
    let mut groups: Vec<(&Vec<Message>, Vec<usize>)> = Vec::new();
    for &i in todo {
        let messages = &requests[i].0;
        match groups.iter_mut().find(|(m, _)| *m == messages) {
            Some((_, members)) => members.push(i),
            None => groups.push((messages, vec![i])),
        }
    }
    groups
}

fn user(prompt: &str) -> Vec<Message> {
    vec![Message {
        role: "user".into(),
        content: prompt.to_string(),
    }]
}

/// The code in a model's answer: the first ```systemverilog, ```verilog, ```sv or bare ``` block, else
/// the whole answer.
pub fn extract_code(answer: &str) -> String {
    let fences = ["```systemverilog", "```verilog", "```sv", "```"];
    for fence in fences {
        if let Some(start) = answer.find(fence) {
            let rest = &answer[start + fence.len()..];
            // A bare fence may carry another language tag on its line: skip to the newline.
            let rest = rest.split_once('\n').map(|(_, r)| r).unwrap_or(rest);
            let end = rest.find("```").unwrap_or(rest.len());
            return rest[..end].trim().to_string();
        }
    }
    answer.trim().to_string()
}

#[cfg(test)]
mod tests;
