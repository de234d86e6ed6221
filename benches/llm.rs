//! `cargo bench --bench llm`: requests per second the model client sustains against a server on
//! loopback at concurrency 1, 8 and 64, beside a bare reqwest loop at the same concurrency measured in
//! the same run. The client's extra work per request (request key, store lookup and write, usage
//! counters) is the difference.

#[path = "../tests/integration/common/mock_llm.rs"]
mod mock_llm;

use std::process::Command;
use std::time::Instant;

const REQUESTS: usize = 2000;

fn bare_reqwest(url: &str, concurrency: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let start = Instant::now();
    rt.block_on(async {
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..REQUESTS {
            let (client, sem, url) = (client.clone(), sem.clone(), url.to_string());
            set.spawn(async move {
                let _p = sem.acquire().await;
                let body = serde_json::json!({"model": "bare", "messages": [{"role": "user", "content": format!("bare prompt {i}")}]});
                let r = client.post(format!("{url}/chat/completions")).json(&body).send().await.unwrap();
                let v: serde_json::Value = r.json().await.unwrap();
                assert!(v.pointer("/choices/0/message/content").is_some());
            });
        }
        while set.join_next().await.is_some() {}
    });
    REQUESTS as f64 / start.elapsed().as_secs_f64()
}

fn rtlab_client(url: &str, concurrency: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("load.rhai");
    std::fs::write(
        &script,
        format!(
            "let rows = [];\nfor i in 0..{REQUESTS} {{ rows.push(#{{p: `prompt ${{i}} at {concurrency}`}}); }}\nlet df = from_records(rows);\n\
             let t = timestamp();\nlet out = llm(#{{base_url: \"{url}\", model: \"load\", concurrency: {concurrency}}}).complete_many(df, \"p\");\n\
             print(t.elapsed);"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rtlab"))
        .args(["run", script.to_str().unwrap()])
        .env("RTLAB_HOME", dir.path().join(".rtlab"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    REQUESTS as f64 / secs
}

fn main() {
    let server = mock_llm::MockServer::start(|p| format!("echo: {p}"));
    let url = server.openai_url();
    println!("{REQUESTS} requests per measurement, server on loopback");
    println!("| concurrency | bare reqwest | rtlab client (store on) | ratio | wall time added per request |");
    println!("| --- | --- | --- | --- | --- |");
    for c in [1, 8, 64] {
        let bare = bare_reqwest(&url, c);
        let ours = rtlab_client(&url, c);
        let added_us = (1.0 / ours - 1.0 / bare) * 1e6;
        println!(
            "| {c} | {bare:.0} req/s | {ours:.0} req/s | {:.2} | {added_us:.0} µs |",
            ours / bare
        );
    }
}
