//! Sending a request with retries: exponential backoff with jitter on 429, 5xx, timeouts and broken
//! connections, honouring `Retry-After`; any other 4xx fails at once with the server's message.
//! API keys come from environment variables only and never appear in errors or logs.

use crate::LlmError;

use super::providers::{parse_response, request, Message, Provider, Sampling};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub provider: Provider,
    pub base_url: String,
    pub model: String,
    pub api_key_env: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
}

/// A response: text, token counts, and how many retries it took.
#[derive(Debug, Clone)]
pub struct Reply {
    pub text: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub retries: u32,
}

enum Attempt {
    Done(Reply),
    /// Worth another try; the server may say when.
    Retry(String, Option<Duration>),
    Fail(String),
}

fn backoff(attempt: u32) -> Duration {
    let base = 0.25 * 2f64.powi(attempt as i32);
    let jitter = 0.5 + fastrand::f64();
    Duration::from_secs_f64((base * jitter).min(30.0))
}

/// One try of a request: the reply, or a fault to retry (a 429, a 5xx, a timeout, a broken or malformed
/// body) or to fail on at once (any other 4xx, an answer without the text).
async fn attempt(
    client: &reqwest::Client,
    ep: &Endpoint,
    messages: &[Message],
    s: &Sampling,
) -> Attempt {
    let (path, body) = request(ep.provider, &ep.model, messages, s);
    let url = format!("{}{}", ep.base_url.trim_end_matches('/'), path);
    let req = with_api_key(client.post(&url).timeout(ep.timeout).json(&body), ep);
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return Attempt::Retry(
                format!(
                    "no answer from {url} within {:.0} s",
                    ep.timeout.as_secs_f64()
                ),
                None,
            )
        }
        Err(e) => return Attempt::Retry(format!("cannot reach {url}: {}", without_url(&e)), None),
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) if e.is_timeout() => {
            return Attempt::Retry(format!("{url} stopped answering mid-response"), None)
        }
        Err(e) => {
            return Attempt::Retry(
                format!("{url}: the response broke off ({})", without_url(&e)),
                None,
            )
        }
    };
    if status.as_u16() == 429 || status.is_server_error() {
        return Attempt::Retry(
            format!("{url} answered {status}: {}", snippet(&text)),
            retry_after,
        );
    }
    if !status.is_success() {
        return Attempt::Fail(format!(
            "{url} answered {status}{}: {}",
            auth_hint(status, ep),
            snippet(&text)
        ));
    }
    reply(&url, ep, &text)
}

/// The request with the key from `api_key_env`, in the header the provider reads.
fn with_api_key(req: reqwest::RequestBuilder, ep: &Endpoint) -> reqwest::RequestBuilder {
    let Some(key) = ep.api_key_env.as_ref().and_then(|v| std::env::var(v).ok()) else {
        return req;
    };
    match ep.provider {
        Provider::Anthropic => req
            .header("x-api-key", key)
            .header("anthropic-version", "2023-06-01"),
        _ => req.bearer_auth(key),
    }
}

/// What to check after a 401 or 403: the variable the key comes from (named, never its value).
fn auth_hint(status: reqwest::StatusCode, ep: &Endpoint) -> String {
    if status.as_u16() != 401 && status.as_u16() != 403 {
        return String::new();
    }
    match &ep.api_key_env {
        Some(v) => format!(" (check the API key in ${v})"),
        None => " (this provider needs api_key_env)".to_string(),
    }
}

/// A 2xx body as the provider's reply: malformed JSON is retried, JSON without the answer fails.
fn reply(url: &str, ep: &Endpoint, text: &str) -> Attempt {
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(j) => j,
        Err(e) => {
            return Attempt::Retry(
                format!("{url} sent malformed JSON ({e}): {}", snippet(text)),
                None,
            )
        }
    };
    match parse_response(ep.provider, &json) {
        Ok((text, p, c)) => Attempt::Done(Reply {
            text,
            prompt_tokens: p,
            completion_tokens: c,
            retries: 0,
        }),
        Err(e) => Attempt::Fail(format!("{url}: {e}: {}", snippet(&json.to_string()))),
    }
}

/// The error and its causes, without the URL reqwest puts in its own message (`error sending request
/// for url (URL)`): the caller names the URL once, in front.
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(at) = s.find(" for url (") {
        s.truncate(at);
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s.trim().to_string()
}

fn snippet(text: &str) -> String {
    let t: String = text.chars().take(200).collect();
    if text.len() > t.len() {
        format!("{t}…")
    } else {
        t
    }
}

/// Sends with retries. The error names the last fault and how many tries were made.
pub async fn send(
    client: &reqwest::Client,
    ep: &Endpoint,
    messages: &[Message],
    s: &Sampling,
) -> Result<Reply, LlmError> {
    let mut last = String::new();
    for i in 0..=ep.retries {
        if rtlab_core::cancel_requested() {
            return Err(LlmError::Cancelled);
        }
        match attempt(client, ep, messages, s).await {
            Attempt::Done(mut r) => {
                r.retries = i;
                return Ok(r);
            }
            Attempt::Fail(e) => return Err(LlmError::Request(e)),
            Attempt::Retry(e, after) => {
                last = e;
                if i < ep.retries {
                    tokio::time::sleep(after.unwrap_or_else(|| backoff(i))).await;
                }
            }
        }
    }
    Err(LlmError::Request(format!(
        "{last} (gave up after {} tries)",
        ep.retries + 1
    )))
}
