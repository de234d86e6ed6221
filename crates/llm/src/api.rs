//! The LLM client's Rhai surface: `llm(#{...})`, `complete`, `complete_many`, `chat`, the model's
//! methods, and how a model shows and persists. Option maps are read here into a typed
//! [`ModelConfig`]; the client below takes that and never sees a Rhai value.

use super::*;
use rhai::plugin::*;
use rhai::{Array, Dynamic, Map};
use rtlab_core::OptionError;

/// The model `llm(#{...})` describes; a local model's path and adapter resolve against
/// `base_dir` (the script's directory).
pub fn model_from_options(options: &Map, base_dir: &std::path::Path) -> Result<Model, LlmError> {
    let o = rtlab_core::options::Options::new(
        "llm",
        options,
        &[
            "provider",
            "base_url",
            "model",
            "api_key_env",
            "temperature",
            "top_p",
            "max_tokens",
            "stop",
            "concurrency",
            "timeout_s",
            "retries",
            "adapter",
            "template",
        ],
    )?;
    let text = |k: &str| o.string(k);
    let number =
        |k: &str, default: f64| -> Result<f64, OptionError> { Ok(o.float(k)?.unwrap_or(default)) };
    let count = |k: &str, default: i64, min: i64| -> Result<i64, OptionError> {
        Ok(o.int_at_least(k, min)?.unwrap_or(default))
    };
    let provider = Provider::parse(&text("provider")?.unwrap_or_else(|| "openai".to_string()))?;
    let model = text("model")?
        .ok_or_else(|| o.rule("pass #{model: \"...\"} (the model name the server knows)"))?;
    if provider != Provider::Local && o.has("adapter") {
        return Err(o
            .rule("adapter is for provider \"local\"; a server loads its own adapters")
            .into());
    }
    let mut cfg = ModelConfig::new(provider, model);
    if let Some(url) = text("base_url")? {
        cfg.base_url = url;
    }
    if let Some(env) = text("api_key_env")? {
        cfg.api_key_env = Some(env);
    }
    cfg.temperature = number("temperature", cfg.temperature)?;
    cfg.top_p = number("top_p", cfg.top_p)?;
    cfg.max_tokens = count("max_tokens", cfg.max_tokens, 1)?;
    cfg.stop = o.stop_strings("stop")?.unwrap_or_default();
    cfg.concurrency = count("concurrency", cfg.concurrency as i64, 1)? as usize;
    cfg.timeout_s = match number("timeout_s", cfg.timeout_s)? {
        t if t > 0.0 && t.is_finite() => t,
        t => {
            return Err(o
                .rule(format!(
                    "option `timeout_s` must be a number of seconds above 0, not {t}"
                ))
                .into())
        }
    };
    cfg.retries = count("retries", cfg.retries as i64, 0)? as u32;
    cfg.adapter = text("adapter")?;
    cfg.template = text("template")?;
    Model::from_config(cfg, base_dir)
}

/// The map [`model_from_options`] reads back (how the notebook caches a model).
pub fn model_options(model: &Model) -> Map {
    let c = &model.cfg;
    let mut m = Map::new();
    m.insert("provider".into(), c.provider.name().into());
    m.insert("base_url".into(), c.base_url.clone().into());
    m.insert("model".into(), c.model.clone().into());
    m.insert(
        "api_key_env".into(),
        c.api_key_env
            .clone()
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT),
    );
    m.insert("temperature".into(), Dynamic::from(c.temperature));
    m.insert("top_p".into(), Dynamic::from(c.top_p));
    m.insert("max_tokens".into(), Dynamic::from(c.max_tokens));
    if !c.stop.is_empty() {
        m.insert(
            "stop".into(),
            Dynamic::from_array(c.stop.iter().map(|s| s.clone().into()).collect()),
        );
    }
    m.insert("concurrency".into(), Dynamic::from(c.concurrency as i64));
    m.insert("timeout_s".into(), Dynamic::from(c.timeout_s));
    m.insert("retries".into(), Dynamic::from(c.retries as i64));
    if let Some(a) = &c.adapter {
        m.insert("adapter".into(), a.clone().into());
    }
    if let Some(t) = &c.template {
        m.insert("template".into(), t.clone().into());
    }
    m
}

fn messages_from(array: &Array) -> Result<Vec<Message>, LlmError> {
    let bad = |index: usize, problem: &str| LlmError::BadMessage {
        index,
        problem: problem.to_string(),
    };
    array
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let map = m
                .read_lock::<Map>()
                .ok_or_else(|| bad(i, "must be a map #{role, content}"))?;
            let role = map
                .get("role")
                .map(|r| r.to_string())
                .ok_or_else(|| bad(i, "has no role"))?;
            let content = map
                .get("content")
                .map(|c| c.to_string())
                .ok_or_else(|| bad(i, "has no content"))?;
            Ok(Message { role, content })
        })
        .collect()
}

rtlab_core::script_error!(LlmError);

pub fn register(module: &mut Module) {
    module.set_custom_type::<Model>("Model");
    FuncRegistration::new("to_string").set_into_module(module, |m: &mut Model| m.describe());
    FuncRegistration::new("to_debug").set_into_module(module, |m: &mut Model| m.describe());
    combine_with_exported_module!(module, "llm_functions", llm_functions);
}

#[export_module]
mod llm_functions {
    use super::*;

    /// A model client. Options: `provider` ("openai" for any OpenAI-compatible server such as vLLM,
    /// Ollama's /v1 or llama.cpp; "anthropic"; "ollama"; "replay" for recorded responses only; "local"
    /// for a model dir run in this process, `model` being its path, with `adapter` (a PEFT dir) and
    /// `template` (the trainer's prompt template)),
    /// `model`, `base_url`, `api_key_env` (the name of the variable holding the key; keys are read from
    /// the environment only), `temperature` (0), `top_p` (1), `max_tokens` (2048), `stop` (a string or
    /// a list: each answer ends before the first of them, as OpenAI's `stop`; sent as OpenAI's `stop`,
    /// Anthropic's `stop_sequences`, Ollama's `options.stop`, and the local decoder stops there),
    /// `concurrency` (4), `timeout_s` (120), `retries` (4).
    ///
    /// ```rhai
    /// let m = llm(#{provider: "replay", model: "qwen2.5-coder-7b"});
    /// assert_eq(m.to_string(), "Model(Replay qwen2.5-coder-7b)");
    /// ```
    #[rhai_fn(return_raw)]
    pub fn llm(ctx: NativeCallContext, options: Map) -> Result<Model, Box<EvalAltResult>> {
        let base = rtlab_core::Workspace::of(&ctx).base_dir();
        Ok(model_from_options(&options, &base)?)
    }

    /// Sends one prompt as a user message and returns the answer (from the store if recorded).
    #[rhai_fn(return_raw)]
    pub fn complete(
        ctx: NativeCallContext,
        model: &mut Model,
        prompt: &str,
    ) -> Result<String, Box<EvalAltResult>> {
        let store = rtlab_core::Workspace::of(&ctx).store();
        model
            .answer_all(&[(user(prompt), 0)], store)
            .remove(0)
            .map_err(|e| e.into())
    }

    /// Sends a conversation (an array of `#{role, content}`) and returns the answer.
    #[rhai_fn(return_raw)]
    pub fn chat(
        ctx: NativeCallContext,
        model: &mut Model,
        messages: Array,
    ) -> Result<String, Box<EvalAltResult>> {
        let msgs = messages_from(&messages)?;
        let store = rtlab_core::Workspace::of(&ctx).store();
        model
            .answer_all(&[(msgs, 0)], store)
            .remove(0)
            .map_err(|e| e.into())
    }

    /// Completes the prompt in column `prompt_col` of every row into a `completion` column.
    #[rhai_fn(return_raw)]
    pub fn complete_many(
        ctx: NativeCallContext,
        model: &mut Model,
        frame: Frame,
        prompt_col: &str,
    ) -> Result<Frame, Box<EvalAltResult>> {
        complete_many_with(ctx, model, frame, prompt_col, Map::new())
    }

    /// `complete_many` with options: `n` samples per row (rows repeat, with a `sample` column) and
    /// `out`, the column name. Requests run `concurrency` at a time with a progress bar; answers are
    /// recorded as they arrive, so when some fail the error says how many, and a rerun asks only for
    /// the missing ones. With the `local` provider, the requests decode in batches of up to 24
    /// samples across rows (one row's samples stay together), with or without a LoRA `adapter`;
    /// sample `i` is exactly what `generate(prompt, #{seed: i})` decodes alone.
    #[rhai_fn(name = "complete_many", return_raw)]
    pub fn complete_many_with(
        ctx: NativeCallContext,
        model: &mut Model,
        frame: Frame,
        prompt_col: &str,
        options: Map,
    ) -> Result<Frame, Box<EvalAltResult>> {
        let o = rtlab_core::options::Options::new("complete_many", &options, &["n", "out"])?;
        let n = o.int_at_least("n", 1)?.unwrap_or(1) as usize;
        let out = o.string("out")?.unwrap_or_else(|| "completion".to_string());
        let prompts =
            rtlab_data::strings(&frame, prompt_col).map_err(|e| format!("complete_many: {e}"))?;
        let requests: Vec<(Vec<Message>, usize)> = prompts
            .iter()
            .flat_map(|p| (0..n).map(move |s| (user(p), s)))
            .collect();
        let before = model.usage();
        let start = std::time::Instant::now();
        let answers = model.answer_all(&requests, rtlab_core::Workspace::of(&ctx).store());
        let after = model.usage();
        let failed: Vec<&LlmError> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
        eprintln!(
            "complete_many: {} requests, {} from the store, {} sent ({} prompt + {} completion tokens) in {:.1} s",
            requests.len(),
            after.from_store - before.from_store,
            after.requests - before.requests,
            after.prompt_tokens - before.prompt_tokens,
            after.completion_tokens - before.completion_tokens,
            start.elapsed().as_secs_f64()
        );
        if !failed.is_empty() {
            return Err(format!(
                "complete_many: {} of {} requests failed (the {} answered are recorded: rerun to retry only the failed ones); first error: {}",
                failed.len(),
                requests.len(),
                requests.len() - failed.len(),
                failed[0]
            )
            .into());
        }
        let texts: Vec<String> = answers.into_iter().map(|a| a.unwrap_or_default()).collect();
        let df = if n == 1 {
            let mut df = frame.df.clone();
            df.with_column(Column::new(out.as_str().into(), texts))
                .map_err(|e| e.to_string())?;
            df
        } else {
            let idx: Vec<IdxSize> = (0..prompts.len())
                .flat_map(|i| std::iter::repeat_n(i as IdxSize, n))
                .collect();
            let mut df = frame
                .df
                .take(&IdxCa::from_vec("idx".into(), idx))
                .map_err(|e| e.to_string())?;
            let samples: Vec<i64> = (0..prompts.len()).flat_map(|_| 0..n as i64).collect();
            df.with_column(Column::new("sample".into(), samples))
                .map_err(|e| e.to_string())?;
            df.with_column(Column::new(out.as_str().into(), texts))
                .map_err(|e| e.to_string())?;
            df
        };
        Ok(Frame::new(df))
    }

    /// Records `answer` as this model's response to `prompt` (with its current sampling settings), as if
    /// the server had said it: for fixtures, hand-written answers, or answers made elsewhere. A later
    /// `complete(prompt)`, live or replay, returns it without a request.
    #[rhai_fn(return_raw)]
    pub fn record(
        ctx: NativeCallContext,
        model: &mut Model,
        prompt: &str,
        answer: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        let store = rtlab_core::Workspace::of(&ctx)
            .store()
            .ok_or("record: the workspace store cannot be opened")?;
        let store = rtlab_core::store::lock(&store);
        let messages = user(prompt);
        let rec = recorded(
            model.request_key(&messages, 0),
            model.cfg.model.clone(),
            &messages,
            answer,
            (0, 0),
        );
        store.put_response(&rec).map_err(|e| e.to_string().into())
    }

    /// The same model with other sampling settings: `m.with_sampling(0.85, 0.95)`.
    #[rhai_fn(name = "with_sampling")]
    pub fn with_sampling_fn(model: &mut Model, temperature: f64, top_p: f64) -> Model {
        model.with_sampling(temperature, top_p)
    }

    /// Requests sent, answers served from the store, tokens and retries, for this model so far.
    pub fn usage(model: &mut Model) -> Map {
        let u = model.usage();
        let mut m = Map::new();
        m.insert("requests".into(), Dynamic::from(u.requests));
        m.insert("from_store".into(), Dynamic::from(u.from_store));
        m.insert("prompt_tokens".into(), Dynamic::from(u.prompt_tokens));
        m.insert(
            "completion_tokens".into(),
            Dynamic::from(u.completion_tokens),
        );
        m.insert("retries".into(), Dynamic::from(u.retries));
        m
    }

    /// The code block of a model's answer (```systemverilog, ```verilog, ```sv or a bare ```).
    ///
    /// ```rhai
    /// assert_eq(extract_code("Here:\n```verilog\nmodule m; endmodule\n```\nDone."), "module m; endmodule");
    /// ```
    #[rhai_fn(name = "extract_code")]
    pub fn extract_code_fn(answer: &str) -> String {
        extract_code(answer)
    }

    /// Writes every recorded response of the workspace store to a JSONL cassette, returns how many.
    #[rhai_fn(return_raw)]
    pub fn export_cassette(ctx: NativeCallContext, path: &str) -> Result<i64, Box<EvalAltResult>> {
        let ws = rtlab_core::Workspace::of(&ctx);
        let store = ws
            .store()
            .ok_or("export_cassette: the workspace store cannot be opened")?;
        let store = rtlab_core::store::lock(&store);
        let rows = store.all_responses().map_err(|e| e.to_string())?;
        let mut text = String::new();
        for r in &rows {
            text.push_str(&serde_json::to_string(r).map_err(|e| e.to_string())?);
            text.push('\n');
        }
        let full = ws.resolve(path);
        rtlab_core::workspace::write_atomic(&full, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", full.display()))?;
        Ok(rows.len() as i64)
    }

    /// Loads a JSONL cassette into the workspace store, so `provider: "replay"` can serve it; returns
    /// how many responses it holds.
    #[rhai_fn(return_raw)]
    pub fn import_cassette(ctx: NativeCallContext, path: &str) -> Result<i64, Box<EvalAltResult>> {
        let ws = rtlab_core::Workspace::of(&ctx);
        let full = ws.resolve_input(path);
        let text = std::fs::read_to_string(&full)
            .map_err(|e| format!("cannot read {}: {e}", full.display()))?;
        let store = ws
            .store()
            .ok_or("import_cassette: the workspace store cannot be opened")?;
        let store = rtlab_core::store::lock(&store);
        let mut n = 0;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let rec: Recorded = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: not a cassette row ({e})", full.display(), i + 1))?;
            store.put_response(&rec).map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(n)
    }
}

rhai::def_package! {
    /// Model clients with record and replay: `llm`, `complete`, `chat`, `complete_many`, cassettes.
    pub LlmPackage(module) {
        register(module);
    }
}

/// How a model shows and persists (a model is its configuration; usage counters restart).
pub fn rich_types() -> Vec<rtlab_core::values::RichType> {
    vec![rtlab_core::values::RichType {
        tag: "model",
        is: |v| v.is::<Model>(),
        text: |v| {
            v.read_lock::<Model>()
                .map(|m| m.describe())
                .unwrap_or_default()
        },
        html: None,
        // A model is its configuration (the key stays in the environment); usage counters restart.
        persist: Some(rtlab_core::values::Persist {
            save: |v, nested| {
                let options =
                    model_options(&*v.read_lock::<Model>().ok_or("a model that is locked")?);
                let mut fields = serde_json::Map::new();
                fields.insert("options".into(), nested(&Dynamic::from_map(options))?);
                Ok(fields)
            },
            load: |fields, nested| {
                let options = nested(fields.get("options").ok_or("model without options")?)?;
                let map = options
                    .try_cast::<Map>()
                    .ok_or("model options are not a map")?;
                // `model_options` saved a local model's paths resolved, so no base directory is needed.
                Ok(Dynamic::from(
                    model_from_options(&map, std::path::Path::new("/"))
                        .map_err(|e| e.to_string())?,
                ))
            },
        }),
    }]
}
