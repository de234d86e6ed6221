//! `cargo bench --bench train`: tokens/s and peak memory of LoRA training steps on the CPU, for a tiny
//! model and a Qwen2.5-0.5B-shaped one (random init), each beside the same model's forward-only pass
//! over the same number of tokens (the prefill of `generate`), and beside PyTorch + PEFT on the same
//! model directory with the same recipe (`tests/python/peft_train_step.py`), in the same run.
//!
//! The forward beside it is `generate`'s prefill of one row at a time, on the decoding path (its KV
//! cache and kernels, not the training forward's), so train / forward is a rough guide to a step's
//! cost, not a bound: a LoRA step is about three training forwards (the forward, then the backward
//! through the frozen weights for dx and through the adapters), but the two forwards differ.
//!
//! Like for like: both sides train the same shapes (batch × sequence tokens a step, r 64, alpha 128,
//! dropout 0.05 on all seven projections, AdamW, f32, the whole graph kept for the backward: PEFT's
//! default, and rtlab's `gradient_checkpointing: false`), [`STEPS_TIMED`] steps after one warm-up step
//! that neither side times; each side prints the tokens it trained on and the bench fails when the
//! counts differ. Each figure is the median of `RTLAB_BENCH_RUNS` (3) runs, each run a fresh process
//! per side, the sides interleaved. PyTorch + PEFT need the Python in `RTLAB_PYTHON` (default `python3`)
//! with torch, transformers and peft; without them the table says the baseline was not run.
//! `RTLAB_BENCH_SHAPES=tiny` runs only the tiny model. The figures go to
//! `target/bench-results/train.json` (`benches/common/results.rs`), which the book's table renders.

#[path = "common/output.rs"]
mod output;
#[path = "common/results.rs"]
mod results;
use output::value;
use std::process::Command;
use std::time::Instant;

/// Steps each side times, after its first (warm-up) step.
const STEPS_TIMED: usize = 16;

struct Shape {
    name: &'static str,
    /// The key of its figures in the results file.
    key: &'static str,
    arch: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    intermediate: usize,
    seq: usize,
    batch: usize,
    device: &'static str,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "tiny",
        key: "tiny_cpu",
        arch: "llama",
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 128,
        seq: 256,
        batch: 4,
        device: "cpu",
    },
    // The same job with every step on rtlab's cubecl kernels through wgpu (lavapipe, Mesa's software
    // Vulkan, on a machine without a GPU: a correctness path there, not a fast one).
    Shape {
        name: "tiny",
        key: "tiny_wgpu",
        arch: "llama",
        hidden: 64,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        intermediate: 128,
        seq: 256,
        batch: 4,
        device: "wgpu",
    },
    // Qwen2.5-0.5B's body (896 hidden, 24 layers, 14 heads, 2 KV heads, 4864 MLP); the vocabulary is the
    // tiny byte tokenizer's 259, not 151,936, so the lm_head GEMM (≈ a third of the real model's FLOPs
    // per token) is left out.
    Shape {
        name: "qwen2.5-0.5b-shaped",
        key: "qwen2_5_0_5b_cpu",
        arch: "qwen2",
        hidden: 896,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        intermediate: 4864,
        seq: 256,
        batch: 1,
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
    batch_size: {batch}, grad_accum: 1, epochs: 1, max_steps: {steps}, max_len: {seq}, fresh: true, device: "{device}",
    gradient_checkpointing: false}});
let record = parse_json(read_text(`${{run.adapter}}/run.json`));
print(`steps=${{run.steps}}`);
print(`tokens=${{record.curve[record.curve.len() - 1].tokens}}`);
print(`train_tokens_per_s=${{run.steady_tokens_per_s}}`);
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
        rows = s.batch * (STEPS_TIMED + 1),
        batch = s.batch,
        steps = STEPS_TIMED + 1,
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

/// One run of one side: steady tokens/s, the tokens trained on, peak RSS, and (rtlab) the forward rate.
struct Run {
    tok_s: f64,
    tokens: f64,
    peak_mb: f64,
    forward_tok_s: f64,
}

/// rtlab's side: the model made by its own process, then one training run and the forward pass.
fn rtlab_run(s: &Shape) -> Run {
    let dir = tempfile::tempdir().unwrap();
    make_model(s, dir.path());
    let path = dir.path().join("bench.rhai");
    std::fs::write(&path, script(s, dir.path())).unwrap();
    let stdout = output::run_script(&path, &dir.path().join(".rtlab"));
    assert_eq!(
        value(&stdout, "steps") as usize,
        STEPS_TIMED + 1,
        "{stdout}"
    );
    Run {
        tok_s: value(&stdout, "train_tokens_per_s"),
        tokens: value(&stdout, "tokens"),
        peak_mb: value(&stdout, "train_peak_mb"),
        forward_tok_s: value(&stdout, "forward_tokens_per_s"),
    }
}

/// PyTorch + PEFT's side on a model made the same way (`create_tiny_model`, same seed). A failure of
/// a Python that has the packages is a failed benchmark, not a missing baseline.
fn peft_run(python: &str, s: &Shape) -> Run {
    let dir = tempfile::tempdir().unwrap();
    make_model(s, dir.path());
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/peft_train_step.py"
        ))
        .arg(dir.path().join("model"))
        .args([
            s.batch.to_string(),
            s.seq.to_string(),
            STEPS_TIMED.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the PyTorch + PEFT baseline failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Run {
        tok_s: value(&text, "tokens_per_s"),
        tokens: value(&text, "tokens"),
        peak_mb: value(&text, "peak_mb"),
        forward_tok_s: f64::NAN,
    }
}

/// The median, or NaN for a side that did not run.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let only = std::env::var("RTLAB_BENCH_SHAPES").ok();
    let runs: usize = std::env::var("RTLAB_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let python = std::env::var("RTLAB_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_peft = Command::new(&python)
        .args(["-c", "import torch, transformers, peft"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_peft {
        println!(
            "PyTorch + PEFT NOT run: {python} lacks torch/transformers/peft (set RTLAB_PYTHON)"
        );
    }
    let shapes: Vec<&Shape> = SHAPES
        .iter()
        .filter(|s| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|x| x == s.name))
        })
        .collect();
    // Per shape: rtlab's runs and PEFT's (PEFT runs on the CPU rows only).
    let mut measured: Vec<(Vec<Run>, Vec<Run>)> = shapes.iter().map(|_| (vec![], vec![])).collect();
    for run in 0..runs {
        for (s, (ours, theirs)) in shapes.iter().zip(measured.iter_mut()) {
            let started = Instant::now();
            let r = rtlab_run(s);
            println!(
                "run {}: {} on {}: rtlab {:.0} tok/s over {} tokens ({:.1} s)",
                run + 1,
                s.name,
                s.device,
                r.tok_s,
                r.tokens,
                started.elapsed().as_secs_f64()
            );
            ours.push(r);
            if has_peft && s.device == "cpu" {
                let r = peft_run(&python, s);
                println!(
                    "run {}: {} on {}: PyTorch + PEFT {:.0} tok/s over {} tokens",
                    run + 1,
                    s.name,
                    s.device,
                    r.tok_s,
                    r.tokens
                );
                theirs.push(r);
            }
        }
    }
    let mut figures = serde_json::Map::new();
    println!("| model | device | rtlab train tok/s | rtlab forward tok/s | train / forward | rtlab peak RSS | PyTorch+PEFT train tok/s | rtlab / PEFT | PEFT peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (s, (ours, theirs)) in shapes.iter().zip(&measured) {
        // Like for like: every run of both sides trained on the same tokens.
        let tokens = ours[0].tokens;
        for r in ours.iter().chain(theirs) {
            assert_eq!(
                r.tokens, tokens,
                "{}: one run trained on {} tokens, another on {tokens}: the sides are not like for like",
                s.name, r.tokens
            );
        }
        let of = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let (train, fwd, peak) = (
            of(ours, |r| r.tok_s),
            of(ours, |r| r.forward_tok_s),
            of(ours, |r| r.peak_mb),
        );
        let (peft, peft_peak) = (of(theirs, |r| r.tok_s), of(theirs, |r| r.peak_mb));
        println!(
            "| {} (batch {} × {} tokens, r 64, {STEPS_TIMED} steps timed) | {} | {train:.0} | {fwd:.0} | {:.2} | {peak:.0} MiB | {peft:.0} | {:.2}× | {peft_peak:.0} MiB |",
            s.name,
            s.batch,
            s.seq,
            s.device,
            train / fwd,
            train / peft
        );
        let finite = |v: f64| v.is_finite().then_some(v);
        figures.insert(
            s.key.to_string(),
            serde_json::json!({
                "batch": s.batch,
                "seq": s.seq,
                "tokens": tokens,
                "rtlab_tok_s": train,
                "rtlab_forward_tok_s": fwd,
                "rtlab_peak_rss_mb": peak,
                "peft_tok_s": finite(peft),
                "peft_peak_rss_mb": finite(peft_peak),
                "lora_vs_peft": finite(train / peft),
            }),
        );
    }
    figures.insert("steps_timed".into(), STEPS_TIMED.into());
    results::write("train", serde_json::Value::Object(figures), runs);
}
