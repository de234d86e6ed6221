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
//! standard-format pairs). TRL needs `RTLAB_PYTHON` (or `python3`) with torch, transformers, peft,
//! trl, datasets and gguf; without them the table says the baseline was not run.

#[path = "common/output.rs"]
mod output;
use output::value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BATCH: usize = 4;
const STEPS: usize = 4;

fn rtlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rtlab"))
}

/// Pairs whose sides have equal lengths: a prompt, and a chosen and a rejected module body.
fn write_pairs(path: &Path) {
    let mut text = String::new();
    for i in 0..BATCH * (STEPS + 1) {
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

fn rtlab_run(dir: &Path, pairs: &Path) -> f64 {
    let script = format!(
        r#"let run = train_dpo(#{{base: "smollm2-135m", pairs: "{pairs}", out: "{out}", template: "{{prompt}}",
    beta: 0.1, r: 16, alpha: 32, dropout: 0.0, lr: 5e-4, schedule: "constant", warmup: 0,
    batch_size: {BATCH}, grad_accum: 1, epochs: 1, max_steps: {STEPS}, fresh: true, device: "cpu",
    gradient_checkpointing: false}});
print(`tokens_per_s=${{run.tokens_per_s}}`);"#,
        pairs = pairs.display(),
        out = dir.join("run").display()
    );
    let path = dir.join("dpo.rhai");
    std::fs::write(&path, script).unwrap();
    let out = rtlab()
        .args(["run", "--no-cache", path.to_str().unwrap()])
        .env("RTLAB_HOME", dir.join(".rtlab"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    value(&stdout, "tokens_per_s")
}

fn trl_run(python: &str, model: &Path, pairs: &Path) -> Option<f64> {
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
    Some(value(&String::from_utf8_lossy(&out.stdout), "tokens_per_s"))
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
        ours.push(rtlab_run(dir.path(), &pairs));
        if has_trl {
            theirs.extend(trl_run(&python, &model, &pairs));
        }
    }
    println!("DPO on SmolLM2-135M-Instruct (f32, CPU), batch {BATCH} pairs, {STEPS} steps, median of {runs} runs");
    println!(
        "rtlab train_dpo       {:8.1} tokens/s  runs {ours:.1?}",
        median(ours.clone())
    );
    if theirs.is_empty() {
        println!("TRL DPOTrainer        NOT run: {python} lacks torch/transformers/peft/trl/datasets/gguf");
    } else {
        println!(
            "TRL DPOTrainer        {:8.1} tokens/s  runs {theirs:.1?}",
            median(theirs.clone())
        );
        println!(
            "rtlab / TRL           {:8.2}×  (goal ≥ 1.0×)",
            median(ours) / median(theirs)
        );
    }
}
