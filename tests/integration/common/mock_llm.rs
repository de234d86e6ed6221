//! A model server on loopback for the tests: it speaks the OpenAI, Anthropic and Ollama shapes, answers
//! with a function of the prompt, counts requests, and misbehaves on demand (429 with Retry-After,
//! 500s, a slow answer, malformed JSON, a connection dropped mid-body, a 400).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Fault {
    TooMany { retry_after_s: u32 },
    ServerError,
    Slow { ms: u64 },
    Malformed,
    DropMidBody,
    BadRequest,
}

type Answer = dyn Fn(&str) -> String + Send + Sync;

pub struct MockServer {
    pub port: u16,
    hits: Arc<AtomicUsize>,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    /// Prompts that always get a 400 (a request that can never succeed), until cleared.
    pub poison: Arc<Mutex<Vec<String>>>,
    /// Every request body received, in order.
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The digest Ollama's `/api/tags` reports for every model (change it to "pull" a new version).
    pub ollama_digest: Arc<Mutex<String>>,
}

impl MockServer {
    pub fn start(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let faults = Arc::new(Mutex::new(VecDeque::new()));
        let poison = Arc::new(Mutex::new(Vec::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let ollama_digest = Arc::new(Mutex::new("sha256:first".to_string()));
        let answer: Arc<Answer> = Arc::new(answer);
        let (h, f, p, b, d) = (
            hits.clone(),
            faults.clone(),
            poison.clone(),
            bodies.clone(),
            ollama_digest.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, f, p, b, d, a) = (
                    h.clone(),
                    f.clone(),
                    p.clone(),
                    b.clone(),
                    d.clone(),
                    answer.clone(),
                );
                std::thread::spawn(move || {
                    let _ = handle(stream, &h, &f, &p, &b, &d, &*a);
                });
            }
        });
        MockServer {
            port,
            hits,
            faults,
            poison,
            bodies,
            ollama_digest,
        }
    }

    /// The request bodies received so far, in order.
    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }

    pub fn openai_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn push_fault(&self, fault: Fault) {
        self.faults.lock().unwrap().push_back(fault);
    }
}

fn handle(
    mut stream: TcpStream,
    hits: &AtomicUsize,
    faults: &Mutex<VecDeque<Fault>>,
    poison: &Mutex<Vec<String>>,
    bodies: &Mutex<Vec<serde_json::Value>>,
    ollama_digest: &Mutex<String>,
    answer: &Answer,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        // One request per loop: keep-alive connections send several.
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        // Ollama's model list, as `ollama list` sees it: not a model request, so not counted.
        if path.ends_with("/api/tags") {
            let digest = ollama_digest.lock().unwrap().clone();
            let tags = serde_json::json!({"models": [{"name": "m:latest", "model": "m:latest", "digest": digest}]});
            let body = tags.to_string();
            let response = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            stream.write_all(response.as_bytes())?;
            stream.flush()?;
            continue;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        bodies.lock().unwrap().push(json.clone());
        let prompt = json["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
        let fault = faults.lock().unwrap().pop_front();
        let send = |stream: &mut TcpStream,
                    status: &str,
                    extra: &str,
                    body: &str|
         -> std::io::Result<()> {
            // One write per response: small writes meet Nagle's algorithm and delayed ACKs (40 ms).
            let response = format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len());
            stream.write_all(response.as_bytes())?;
            stream.flush()
        };
        if poison
            .lock()
            .unwrap()
            .iter()
            .any(|p| prompt.contains(p.as_str()))
        {
            send(
                &mut stream,
                "400 Bad Request",
                "",
                "{\"error\": \"poisoned prompt\"}",
            )?;
            continue;
        }
        match fault {
            Some(Fault::TooMany { retry_after_s }) => {
                send(
                    &mut stream,
                    "429 Too Many Requests",
                    &format!("Retry-After: {retry_after_s}\r\n"),
                    "{\"error\": \"slow down\"}",
                )?;
                continue;
            }
            Some(Fault::ServerError) => {
                send(
                    &mut stream,
                    "500 Internal Server Error",
                    "",
                    "{\"error\": \"boom\"}",
                )?;
                continue;
            }
            Some(Fault::BadRequest) => {
                send(
                    &mut stream,
                    "400 Bad Request",
                    "",
                    "{\"error\": \"bad request\"}",
                )?;
                continue;
            }
            Some(Fault::Malformed) => {
                send(
                    &mut stream,
                    "200 OK",
                    "",
                    "{\"choices\": [ this is not json",
                )?;
                continue;
            }
            Some(Fault::DropMidBody) => {
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"choices\": [")?;
                stream.flush()?;
                let _ = stream.shutdown(std::net::Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Slow { ms }) => std::thread::sleep(Duration::from_millis(ms)),
            None => {}
        }
        let text = answer(&prompt);
        let tokens = prompt.split_whitespace().count() as i64;
        let out_tokens = text.split_whitespace().count() as i64;
        let body = if path.ends_with("/v1/messages") {
            serde_json::json!({"content": [{"type": "text", "text": text}], "usage": {"input_tokens": tokens, "output_tokens": out_tokens}})
        } else if path.ends_with("/api/chat") {
            serde_json::json!({"message": {"role": "assistant", "content": text}, "prompt_eval_count": tokens, "eval_count": out_tokens})
        } else {
            serde_json::json!({"choices": [{"message": {"role": "assistant", "content": text}}], "usage": {"prompt_tokens": tokens, "completion_tokens": out_tokens}})
        };
        send(&mut stream, "200 OK", "", &body.to_string())?;
    }
}
