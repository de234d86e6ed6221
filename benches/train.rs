//! `cargo bench --bench train`: tokens/s and peak memory of LoRA training steps on the CPU, for a tiny
//! model and a Qwen2.5-0.5B-shaped one (random init), each beside the same model's forward-only pass
//! over the same number of tokens (the prefill of `generate`), measured in the same run.
//!
//! A training step of a LoRA model costs about 3 forwards (forward, then the backward through the frozen
//! weights for dx and through the adapters): the ratio says how close the step gets to that.
//! The issue's baseline, PyTorch + PEFT on the same model dir with the same recipe, runs in the same
//! bench when `RTLAB_PYTHON` names a Python with torch, transformers and peft
//! (`tests/python/peft_train_step.py`); without it the table says it was not run.
//! `RTLAB_BENCH_SHAPES=tiny` runs only the tiny model.

#[path = "common/output.rs"]
mod output;
use output::value;
use std::process::Command;
use std::time::Instant;

struct Shape {
    name: &'static str,
    arch: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    seq: usize,
    batch: usize,
    steps: usize,
    device: &'static str,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "tiny",
        arch: "llama",
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 128,
        seq: 256,
        batch: 4,
        steps: 10,
        device: "cpu",
    },
    // The same job with every step on rtlab's cubecl kernels through wgpu (lavapipe, Mesa's software
    // Vulkan, on a machine without a GPU: a correctness path there, not a fast one).
    Shape {
        name: "tiny",
        arch: "llama",
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 128,
        seq: 256,
        batch: 4,
        steps: 10,
        device: "wgpu",
    },
    // Qwen2.5-0.5B's body (896 hidden, 24 layers, 14 heads, 2 KV heads, 4864 MLP); the vocabulary is the
    // tiny byte tokenizer's 259, not 151,936, so the lm_head GEMM (≈ a third of the real model's FLOPs
    // per token) is left out.
    Shape {
        name: "qwen2.5-0.5b-shaped",
        arch: "qwen2",
        hidden: 896,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        intermediate: 4864,
        seq: 256,
        batch: 1,
        steps: 4,
        device: "cpu",
    },
];

fn script(s: &Shape, dir: &std::path::Path) -> String {
    format!(
        r#"let base = "{base}";
// Rows of exactly {seq} tokens with the byte tokenizer: a 16-byte prompt in the template, the rest response.
let rows = [];
for i in 0..{rows} {{
    let body = "";
    while body.len() < {seq} - 45 {{ body += "assign y = a & b; "; }}
    body = body.sub_string(0, {seq} - 45);
    rows.push(#{{instruction: `module number ${{i}}`, output: body}});
}}
let run = train_lora(#{{base: base, data: from_records(rows), out: "{out}", r: 64, alpha: 128, dropout: 0.05,
    batch_size: {batch}, grad_accum: 1, epochs: 1, max_steps: {steps}, max_len: {seq}, fresh: true, device: "{device}"}});
print(`train_tokens_per_s=${{run.tokens_per_s}}`);
print(`train_peak_mb=${{run.peak_rss_mb}}`);
let m = load_model(base, #{{adapter: run.adapter}});
let prompt = rows[0].output;
m.generate(prompt, #{{max_tokens: 1}});   // warm up
let t = timestamp();
for i in 0..{batch} {{ m.generate(prompt, #{{max_tokens: 1}}); }}
print(`forward_tokens_per_s=${{({batch} * {seq}) / t.elapsed}}`);
"#,
        base = dir.join("model").display(),
        out = dir.join("run").display(),
        seq = s.seq,
        rows = s.batch * s.steps,
        batch = s.batch,
        steps = s.steps,
        device = s.device,
    )
}

/// The model is made by its own process, so its writing does not count in the trainer's peak memory.
fn make_model(s: &Shape, dir: &std::path::Path) {
    let code = format!(
        r#"create_tiny_model("{base}", #{{arch: "{arch}", hidden: {hidden}, layers: {layers}, heads: {heads}, kv_heads: {kv}, intermediate: {inter}, max_positions: 1024, seed: 1}});"#,
        base = dir.join("model").display(),
        arch = s.arch,
        hidden = s.hidden,
        layers = s.layers,
        heads = s.heads,
        kv = s.kv_heads,
        inter = s.intermediate,
    );
    let path = dir.join("make.rhai");
    std::fs::write(&path, code).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rtlab"))
        .args(["run", "--no-cache", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let only = std::env::var("RTLAB_BENCH_SHAPES").ok();
    let python = std::env::var("RTLAB_PYTHON").ok();
    if python.is_none() {
        println!("RTLAB_PYTHON is not set: the PyTorch + PEFT baseline is NOT run");
    }
    println!("| model | device | rtlab train tokens/s | rtlab forward tokens/s | train / forward | rtlab peak RSS | PyTorch+PEFT train tokens/s | rtlab / PEFT | PEFT peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for s in SHAPES.iter().filter(|s| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == s.name))
    }) {
        // A tiny model's PyTorch baseline is measured once, on its CPU row.
        let dir = tempfile::tempdir().unwrap();
        make_model(s, dir.path());
        let path = dir.path().join("bench.rhai");
        std::fs::write(&path, script(s, dir.path())).unwrap();
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_rtlab"))
            .args(["run", "--no-cache", path.to_str().unwrap()])
            .env("RTLAB_HOME", dir.path().join(".rtlab"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (train, fwd, peak) = (
            value(&stdout, "train_tokens_per_s"),
            value(&stdout, "forward_tokens_per_s"),
            value(&stdout, "train_peak_mb"),
        );
        let (peft, peft_peak) = match &python {
            _ if s.device != "cpu" => (f64::NAN, f64::NAN),
            None => (f64::NAN, f64::NAN),
            Some(py) => {
                let out = Command::new(py)
                    .arg(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/tests/python/peft_train_step.py"
                    ))
                    .arg(dir.path().join("model"))
                    .args([s.batch.to_string(), s.seq.to_string(), s.steps.to_string()])
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                assert!(
                    out.status.success(),
                    "{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                (value(&text, "tokens_per_s"), value(&text, "peak_mb"))
            }
        };
        println!(
            "| {} (batch {} × {} tokens, r 64, {} steps) | {} | {train:.0} | {fwd:.0} | {:.2} (ideal ≈ 0.33) | {peak:.0} MiB | {peft:.0} | {:.2}× | {peft_peak:.0} MiB |",
            s.name,
            s.batch,
            s.seq,
            s.steps,
            s.device,
            train / fwd,
            train / peft
        );
        eprintln!(
            "  ({} took {:.1} s in all)",
            s.name,
            started.elapsed().as_secs_f64()
        );
    }
}
