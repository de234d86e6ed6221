//! `cargo bench --bench dpo`: tokens/s of DPO optimizer steps on the CPU, rtlab's `train_dpo` beside
//! TRL's `DPOTrainer` on the same model and pairs, in the same run, median of `RTLAB_BENCH_RUNS` (3)
//! runs of each, interleaved.
//!
//! The model is SmolLM2-135M-Instruct from its GGUF (`rtlab models pull smollm2-135m`), dequantized
//! to f32 on both sides (transformers reads the GGUF with `gguf_file=`). The recipe is the same on
//! both: sigmoid loss, β 0.1, LoRA r 16 / alpha 32 on all seven projections, no dropout, AdamW
//! lr 5e-4, batch 4 pairs, the reference (the base, adapters off) computed before the timed steps,
//! the whole graph kept for the backward (rtlab's default checkpoints; TRL's does not).
//! The prompt goes in raw on both sides (`template: "{prompt}"`; TRL applies no template to
//! standard-format pairs). Like for like (issue 34): 17 steps on each side, the first (warm-up) left
//! out of the rate (rtlab's `steady_tokens_per_s`, TRL's step timer from step 2), so 16 are timed;
//! each side prints the tokens it trained on and the bench fails when they differ. Goal: rtlab at
//! least 1.1× TRL (`dpo_vs_trl` in `target/bench-results/dpo.json`).
//! TRL needs `RTLAB_PYTHON` (or `python3`) with torch, transformers, peft, trl, datasets and gguf;
//! without them the table says the baseline was not run.

#[path = "common/output.rs"]
mod output;
#[path = "common/results.rs"]
mod results;
use output::value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BATCH: usize = 4;
/// Steps on each side; the first is warm-up, so `STEPS - 1` are timed.
const STEPS: usize = 17;

/// One side's run: tokens/s after the first step, and the tokens of all its steps.
struct DpoRun {
    tokens_per_s: f64,
    tokens: f64,
}

fn rtlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rtlab"))
}

/// Pairs whose sides have equal lengths: a prompt, and a chosen and a rejected module body.
fn write_pairs(path: &Path) {
    let mut text = String::new();
    for i in 0..BATCH * STEPS {
        let body = |op: &str| {
            format!("module gate{i:03}(input a, b, output y);\n  assign y = a {op} b;\nendmodule\n")
                .repeat(3)
        };
        let row = serde_json::json!({
            "prompt": format!("Write three copies of gate number {i:03}, a two-input gate, in Verilog.\n"),
            "chosen": body("&"),
            "rejected": body("|"),
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn rtlab_run(dir: &Path, pairs: &Path) -> DpoRun {
    let script = format!(
        r#"let run = train_dpo(#{{base: "smollm2-135m", pairs: "{pairs}", out: "{out}", template: "{{prompt}}",
    beta: 0.1, r: 16, alpha: 32, dropout: 0.0, lr: 5e-4, schedule: "constant", warmup: 0,
    batch_size: {BATCH}, grad_accum: 1, epochs: 1, max_steps: {STEPS}, fresh: true, device: "cpu",
    gradient_checkpointing: false}});
let record = parse_json(read_text(`${{run.adapter}}/run.json`));
print(`steady_tokens_per_s=${{run.steady_tokens_per_s}}`);
print(`tokens=${{record.curve[record.curve.len() - 1].tokens}}`);
print(`steps=${{run.steps}}`);"#,
        pairs = pairs.display(),
        out = dir.join("run").display()
    );
    let path = dir.join("dpo.rhai");
    std::fs::write(&path, script).unwrap();
    let stdout = output::run_script(&path, &dir.join(".rtlab"));
    assert_eq!(value(&stdout, "steps") as usize, STEPS, "{stdout}");
    DpoRun {
        tokens_per_s: value(&stdout, "steady_tokens_per_s"),
        tokens: value(&stdout, "tokens"),
    }
}

fn trl_run(python: &str, model: &Path, pairs: &Path) -> Option<DpoRun> {
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/trl_dpo_step.py"
        ))
        .arg(model.parent().unwrap())
        .arg(pairs)
        .args([BATCH.to_string(), STEPS.to_string()])
        .arg(model.file_name().unwrap())
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "the TRL baseline failed (it needs torch, transformers, peft, trl, datasets and gguf): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(value(&stdout, "steps") as usize, STEPS, "{stdout}");
    Some(DpoRun {
        tokens_per_s: value(&stdout, "steady_tokens_per_s"),
        tokens: value(&stdout, "tokens"),
    })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        f64::NAN
    } else {
        xs[xs.len() / 2]
    }
}

fn main() {
    let pulled = rtlab()
        .args(["models", "pull", "smollm2-135m"])
        .output()
        .unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let model = PathBuf::from(
        String::from_utf8_lossy(&pulled.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    );
    let runs: usize = std::env::var("RTLAB_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let python = std::env::var("RTLAB_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir().unwrap();
    let pairs = dir.path().join("pairs.jsonl");
    write_pairs(&pairs);
    let has_trl = Command::new(&python)
        .args([
            "-c",
            "import torch, transformers, peft, trl, datasets, gguf",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    let (mut ours, mut theirs) = (vec![], vec![]);
    for _ in 0..runs {
        let run = rtlab_run(dir.path(), &pairs);
        println!(
            "rtlab: {} tokens, {:.1} tokens/s after the first step",
            run.tokens, run.tokens_per_s
        );
        ours.push(run);
        if has_trl {
            if let Some(run) = trl_run(&python, &model, &pairs) {
                println!(
                    "TRL:   {} tokens, {:.1} tokens/s after the first step",
                    run.tokens, run.tokens_per_s
                );
                theirs.push(run);
            }
        }
    }
    // Like for like: both sides trained on the same tokens in every run.
    for run in ours.iter().chain(&theirs) {
        assert_eq!(
            run.tokens, ours[0].tokens,
            "one run trained on {} tokens, rtlab's first on {}: the sides are not like for like",
            run.tokens, ours[0].tokens
        );
    }
    let rates = |runs: &[DpoRun]| runs.iter().map(|r| r.tokens_per_s).collect::<Vec<_>>();
    let (ours_s, theirs_s) = (median(rates(&ours)), median(rates(&theirs)));
    println!(
        "DPO on SmolLM2-135M-Instruct (f32, CPU), batch {BATCH} pairs, {} steps timed after a warm-up step ({} tokens), median of {runs} runs",
        STEPS - 1,
        ours[0].tokens
    );
    println!(
        "rtlab train_dpo       {ours_s:8.1} tokens/s  runs {:.1?}",
        rates(&ours)
    );
    let ratio = if theirs.is_empty() {
        println!("TRL DPOTrainer        NOT run: {python} lacks torch/transformers/peft/trl/datasets/gguf");
        None
    } else {
        println!(
            "TRL DPOTrainer        {theirs_s:8.1} tokens/s  runs {:.1?}",
            rates(&theirs)
        );
        println!(
            "rtlab / TRL           {:8.2}×  (goal ≥ 1.1×)",
            ours_s / theirs_s
        );
        Some(ours_s / theirs_s)
    };
    results::write(
        "dpo",
        serde_json::json!({
            "batch": BATCH,
            "steps_timed": STEPS - 1,
            "tokens": ours[0].tokens,
            "rtlab_tok_s": ours_s,
            "trl_tok_s": (!theirs.is_empty()).then_some(theirs_s),
            "dpo_vs_trl": ratio,
        }),
        runs,
    );
}
