//! The wire shapes of the providers: OpenAI-compatible chat completions (vLLM, Ollama's /v1, llama.cpp),
//! Anthropic's Messages API and Ollama's native chat API. Building a request and reading a response
//! are pure functions, tested without a network.

use crate::LlmError;
use rtlab_core::OptionError;

pub use rtlab_model::generate::cut_at_stop;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Provider {
    OpenAi,
    Anthropic,
    Ollama,
    /// Serves recorded responses only (a cassette).
    Replay,
    /// The trainer's in-process model.
    Local,
}

impl Provider {
    pub fn parse(name: &str) -> Result<Provider, OptionError> {
        Ok(match name {
            "openai" => Provider::OpenAi,
            "anthropic" => Provider::Anthropic,
            "ollama" => Provider::Ollama,
            "replay" => Provider::Replay,
            "local" => Provider::Local,
            other => {
                return Err(OptionError::Rule {
                    function: "llm".into(),
                    rule: format!(
                        "unknown provider {other:?}; use openai, anthropic, ollama, replay or local"
                    ),
                })
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Ollama => "ollama",
            Provider::Replay => "replay",
            Provider::Local => "local",
        }
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            Provider::OpenAi => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com",
            Provider::Ollama => "http://localhost:11434",
            Provider::Replay | Provider::Local => "",
        }
    }

    pub fn default_key_env(self) -> Option<&'static str> {
        match self {
            Provider::OpenAi => Some("OPENAI_API_KEY"),
            Provider::Anthropic => Some("ANTHROPIC_API_KEY"),
            _ => None,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// Sampling settings that go on the wire.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sampling {
    pub temperature: f64,
    pub top_p: f64,
    pub max_tokens: i64,
    /// Strings that end an answer (the answer stops before the first one). Sent so that a server
    /// stops early; the client cuts every answer at them too ([`cut_at_stop`]), so an answer is the
    /// same whether or not the server honoured them, and they are not part of a request's store key.
    #[serde(skip)]
    pub stop: Vec<String>,
}

/// (url path, JSON body) of a chat request.
pub fn request(
    provider: Provider,
    model: &str,
    messages: &[Message],
    s: &Sampling,
) -> (String, Value) {
    match provider {
        Provider::Anthropic => {
            let system: Vec<&str> = messages
                .iter()
                .filter(|m| m.role == "system")
                .map(|m| m.content.as_str())
                .collect();
            let rest: Vec<&Message> = messages.iter().filter(|m| m.role != "system").collect();
            let mut body = json!({"model": model, "max_tokens": s.max_tokens, "messages": rest, "temperature": s.temperature, "top_p": s.top_p});
            if !system.is_empty() {
                body["system"] = json!(system.join("\n\n"));
            }
            if !s.stop.is_empty() {
                body["stop_sequences"] = json!(s.stop);
            }
            ("/v1/messages".to_string(), body)
        }
        Provider::Ollama => {
            let mut body = json!({"model": model, "messages": messages, "stream": false, "options": {"temperature": s.temperature, "top_p": s.top_p, "num_predict": s.max_tokens}});
            if !s.stop.is_empty() {
                body["options"]["stop"] = json!(s.stop);
            }
            ("/api/chat".to_string(), body)
        }
        _ => {
            let mut body = json!({"model": model, "messages": messages, "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens});
            if !s.stop.is_empty() {
                body["stop"] = json!(s.stop);
            }
            ("/chat/completions".to_string(), body)
        }
    }
}

/// The completion text and (prompt, completion) token counts of a response body.
pub fn parse_response(provider: Provider, body: &Value) -> Result<(String, i64, i64), LlmError> {
    let missing = |what: &str| LlmError::Response(format!("no {what} in the response"));
    let int = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
    match provider {
        Provider::Anthropic => {
            let text: String = body
                .get("content")
                .and_then(Value::as_array)
                .ok_or_else(|| missing("`content` array"))?
                .iter()
                .filter_map(|c| c.get("text").and_then(Value::as_str))
                .collect();
            Ok((
                text,
                int(body.pointer("/usage/input_tokens")),
                int(body.pointer("/usage/output_tokens")),
            ))
        }
        Provider::Ollama => {
            let text = body
                .pointer("/message/content")
                .and_then(Value::as_str)
                .ok_or_else(|| missing("`message.content`"))?;
            Ok((
                text.to_string(),
                int(body.get("prompt_eval_count")),
                int(body.get("eval_count")),
            ))
        }
        _ => {
            let text = body
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .ok_or_else(|| missing("`choices[0].message.content`"))?;
            Ok((
                text.to_string(),
                int(body.pointer("/usage/prompt_tokens")),
                int(body.pointer("/usage/completion_tokens")),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs() -> Vec<Message> {
        vec![
            Message {
                role: "system".into(),
                content: "be brief".into(),
            },
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
        ]
    }

    #[test]
    fn anthropic_moves_the_system_prompt_out_of_the_messages() {
        let (path, body) = request(
            Provider::Anthropic,
            "claude",
            &msgs(),
            &Sampling {
                temperature: 0.2,
                top_p: 0.9,
                max_tokens: 100,
                stop: vec![],
            },
        );
        assert_eq!(path, "/v1/messages");
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
        assert!(body.get("stop_sequences").is_none(), "no stop, no field");
    }

    #[test]
    fn each_provider_sends_stop_in_its_own_field() {
        let s = Sampling {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 10,
            stop: vec!["endmodule".into()],
        };
        let field =
            |p: Provider, pointer: &str| request(p, "m", &msgs(), &s).1.pointer(pointer).cloned();
        assert_eq!(field(Provider::OpenAi, "/stop"), Some(json!(["endmodule"])));
        assert_eq!(
            field(Provider::Anthropic, "/stop_sequences"),
            Some(json!(["endmodule"]))
        );
        assert_eq!(
            field(Provider::Ollama, "/options/stop"),
            Some(json!(["endmodule"]))
        );
    }

    #[test]
    fn an_answer_is_cut_before_its_earliest_stop_string() {
        let stop = vec!["endmodule".to_string(), "```".to_string()];
        assert_eq!(cut_at_stop("module m; endmodule ```", &stop), "module m; ");
        assert_eq!(cut_at_stop("a ``` endmodule", &stop), "a ");
        assert_eq!(cut_at_stop("no stop here", &stop), "no stop here");
        assert_eq!(
            cut_at_stop("kept", &[String::new()]),
            "kept",
            "an empty stop string stops nothing"
        );
    }

    #[test]
    fn each_shape_parses_text_and_usage() {
        let openai = json!({"choices": [{"message": {"content": "a"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}});
        assert_eq!(
            parse_response(Provider::OpenAi, &openai).unwrap(),
            ("a".into(), 3, 1)
        );
        let anthropic = json!({"content": [{"type": "text", "text": "b"}], "usage": {"input_tokens": 4, "output_tokens": 2}});
        assert_eq!(
            parse_response(Provider::Anthropic, &anthropic).unwrap(),
            ("b".into(), 4, 2)
        );
        let ollama = json!({"message": {"content": "c"}, "prompt_eval_count": 5, "eval_count": 6});
        assert_eq!(
            parse_response(Provider::Ollama, &ollama).unwrap(),
            ("c".into(), 5, 6)
        );
        assert!(parse_response(Provider::OpenAi, &json!({"oops": 1})).is_err());
    }
}
