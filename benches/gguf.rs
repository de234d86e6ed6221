//! `cargo bench --bench gguf`: a real model on the CPU, SmolLM2-135M-Instruct from its Q4_1 GGUF
//! (pulled into rtlab's model cache when missing). Each figure is the median of `RTLAB_BENCH_RUNS`
//! runs (default 3), each in a fresh process and workspace, interleaved with its baseline.
//!
//! 1. Single-stream decode tokens/s: rtlab on the quantized weights, rtlab on f32 weights
//!    (`dequantize: true`), and llama.cpp through `llama-cpp-python` on the same file when the Python
//!    in `RTLAB_LLAMA_CPP_PYTHON` (default `python3`) can `import llama_cpp`; otherwise it says it
//!    was NOT run. Goal (issue 34): rtlab at least 1.0× llama.cpp.
//! 2. 20 samples of one prompt decoded as one batch: aggregate tokens/s against rtlab's single
//!    stream. Goal: at least 8×. And 20 different prompts, one sample each, as one batch (a
//!    benchmark's problems; their lengths differ). Goal: at least 6×. Both beside llama.cpp's own
//!    batched decoding of the same file, the same prompts and sampling, in the same runs
//!    (`tests/python/llama_cpp_batch.py`: one `llama_decode` per step for every unfinished
//!    sequence, one prompt's cells shared by its 20 sequences), when `llama_cpp` imports.
//!
//! Parts 1 and 2 also run rtlab on candle's quantized kernels (`RTLAB_QMATMUL=candle`: the Q4_1
//! weights requantized to Q8_0 at load, as rtlab ran before its own Q4_1 kernel), the baseline of
//! rtlab's kernels (`crates/model/src/q4_1.rs` and `q8_0.rs`); part 2 also runs them with the
//! AVX-512 kernels switched off (`RTLAB_QMATMUL=avx2`), the same bits on 256-bit registers.
//! 3. LoRA training on SmolLM2 (r 8 on q_proj and v_proj, batch 4, 17 steps of 4 rows of about 120
//!    tokens): tokens/s and peak RSS with the f32 base and with the quantized base (QLoRA), each with
//!    gradient checkpointing on every layer and with the whole graph kept (what `"auto"`, the
//!    default, takes where it fits in memory), beside PyTorch + PEFT on the same GGUF dequantized
//!    to f32, with and without its gradient checkpointing (`tests/python/peft_gguf_train.py`, run
//!    by the Python in `RTLAB_PYTHON`, default `python3`; without torch, transformers, peft and gguf it says it was NOT run). Like for like (issue 34):
//!    both sides use the same (Alpaca) template on the same rows, each prints the tokens it trained
//!    on and the bench fails when they differ, and each side's rate leaves out its first step
//!    (warm-up), so 16 steps are timed. Goal: rtlab at least 1.1× PEFT's tokens/s (`lora_vs_peft`,
//!    f32 base, checkpointing on both sides).
//!
//! 2b. With a LoRA adapter (r 16 on all seven projections): one stream and 20 different prompts as
//!    one batch, beside the base model's same two figures (`-- adapter`).
//!
//! `cargo bench --bench gguf -- decode` runs parts 1 and 2 only, `-- train` part 3 only;
//! `RTLAB_BENCH_TRAIN=f32` leaves the quantized base's two configurations out of part 3.

#[path = "common/output.rs"]
mod output;
#[path = "common/results.rs"]
mod results;
use std::path::{Path, PathBuf};
use std::process::Command;

const PROMPT: &str = "Write a long, detailed explanation of how a synchronous FIFO works in hardware, with its pointers, full and empty flags, and a Verilog example.";
const TOKENS: usize = 128;

fn rtlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rtlab"))
}

/// Runs a script in a fresh workspace; returns what it printed.
fn script(code: &str) -> String {
    script_with(code, Kernel::Rtlab)
}

/// Which quantized matmul decodes: rtlab's (the default: the file's Q4_1 as it is), rtlab's with
/// its AVX-512 kernels switched off (`RTLAB_QMATMUL=avx2`: the 256-bit ones, the same bits), or
/// candle's (`RTLAB_QMATMUL=candle`: Q4_1 requantized to Q8_0 at load), the baseline they replaced;
/// or rtlab's with the weights left on the allocator's 4 KiB pages (`RTLAB_HUGE_PAGES=off`).
#[derive(Clone, Copy)]
enum Kernel {
    Rtlab,
    Avx2,
    Candle,
    SmallPages,
}

fn script_with(code: &str, kernel: Kernel) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.rhai");
    std::fs::write(&path, code).unwrap();
    let mut cmd = rtlab();
    match kernel {
        Kernel::Rtlab => {}
        Kernel::Avx2 => {
            cmd.env("RTLAB_QMATMUL", "avx2");
        }
        Kernel::Candle => {
            cmd.env("RTLAB_QMATMUL", "candle");
        }
        Kernel::SmallPages => {
            cmd.env("RTLAB_HUGE_PAGES", "off");
        }
    }
    let out = cmd
        .current_dir(dir.path())
        .env("RTLAB_HOME", dir.path().join("ws"))
        .args(["run", "--no-cache", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `name value` lines of a script's output.
fn field(out: &str, name: &str) -> f64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
}

/// The median, or NaN for a configuration that did not run.
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// rtlab's single-stream decode: tokens/s of `generate` after the model is loaded and has answered a
/// short warm-up request (prompt included), as llama.cpp's side is measured.
fn rtlab_single(model: &Path, dequantize: bool, kernel: Kernel) -> f64 {
    rtlab_single_with(model, dequantize, kernel, None)
}

/// [`rtlab_single`], with a LoRA adapter on the model when one is given.
fn rtlab_single_with(
    model: &Path,
    dequantize: bool,
    kernel: Kernel,
    adapter: Option<&Path>,
) -> f64 {
    let out = script_with(
        &format!(
            r#"let m = load_model("{}", #{{dequantize: {dequantize}{}}});
m.generate("warm up", #{{max_tokens: 4}});
let t = timestamp();
let text = m.generate("{PROMPT}", #{{max_tokens: {TOKENS}}});
let s = t.elapsed;
print(`tokens ${{m.tokens(text).len()}}`);
print(`seconds ${{s}}`);"#,
            model.display(),
            adapter_option(adapter)
        ),
        kernel,
    );
    field(&out, "tokens") / field(&out, "seconds")
}

/// rtlab's 20 samples of one prompt as a batch: aggregate tokens/s.
fn rtlab_batch(model: &Path, n: usize, kernel: Kernel) -> f64 {
    let out = script_with(
        &format!(
            r#"let m = load_model("{path}", #{{}});
let llm_model = llm(#{{provider: "local", model: "{path}", max_tokens: {TOKENS}, temperature: 0.8}});
llm_model.complete("warm up the loaded model");
let prompts = from_records([#{{p: "{PROMPT}"}}]);
let t = timestamp();
let answers = llm_model.complete_many(prompts, "p", #{{n: {n}}});
let s = t.elapsed;
let tokens = 0;
for a in answers.column("completion") {{ tokens += m.tokens(a).len(); }}
print(`tokens ${{tokens}}`);
print(`seconds ${{s}}`);"#,
            path = model.display()
        ),
        kernel,
    );
    field(&out, "tokens") / field(&out, "seconds")
}

/// rtlab's 20 different prompts, one sample each, as one batch (a benchmark's problems): aggregate
/// tokens/s. The prompts differ in length, so the batch is ragged (each sequence after its own
/// padding).
fn rtlab_prompts_batch(model: &Path, n: usize, adapter: Option<&Path>) -> f64 {
    let prompts: Vec<String> = different_prompts(n)
        .iter()
        .map(|p| format!("#{{p: {p:?}}}"))
        .collect();
    let out = script(&format!(
        r#"let m = load_model("{path}", #{{}});
let llm_model = llm(#{{provider: "local", model: "{path}", max_tokens: {TOKENS}, temperature: 0.8{adapter}}});
llm_model.complete("warm up the loaded model");
let prompts = from_records([{prompts}]);
let t = timestamp();
let answers = llm_model.complete_many(prompts, "p", #{{n: 1}});
let s = t.elapsed;
let tokens = 0;
for a in answers.column("completion") {{ tokens += m.tokens(a).len(); }}
print(`tokens ${{tokens}}`);
print(`seconds ${{s}}`);"#,
        path = model.display(),
        prompts = prompts.join(", "),
        adapter = adapter_option(adapter)
    ));
    field(&out, "tokens") / field(&out, "seconds")
}

/// The 20-prompts batch's prompts: the FIFO prompt with a module name and 0 to 3 extra clauses, so
/// four lengths.
fn different_prompts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "{PROMPT} Name the module fifo_{i}{}.",
                " and give it a depth of 16 entries".repeat(i % 4)
            )
        })
        .collect()
}

/// `, adapter: "DIR"` for a script's options map, or nothing.
fn adapter_option(adapter: Option<&Path>) -> String {
    adapter
        .map(|a| format!(", adapter: {:?}", a.display().to_string()))
        .unwrap_or_default()
}

/// llama.cpp's single stream on the same file and prompt (its chat template, greedy), or None when
/// `llama_cpp` cannot be imported.
fn llama_cpp_single(python: &str, model: &Path) -> Option<f64> {
    let code = format!(
        r#"
import sys, time
from llama_cpp import Llama
llm = Llama(model_path={model:?}, n_ctx=512, n_threads=2, n_batch=512, verbose=False)
llm.create_chat_completion(messages=[{{"role": "user", "content": "warm up"}}], max_tokens=4)
t = time.time()
r = llm.create_chat_completion(messages=[{{"role": "user", "content": {PROMPT:?}}}], max_tokens={TOKENS}, temperature=0.0)
s = time.time() - t
print("tokens", r["usage"]["completion_tokens"])
print("seconds", s)
"#,
        model = model.display().to_string()
    );
    let out = Command::new(python).args(["-c", &code]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(field(&text, "tokens") / field(&text, "seconds"))
}

/// llama.cpp's batched decoding of the same file: 20 samples of `prompts[0]`, or one sample of each
/// of 20 prompts, through `tests/python/llama_cpp_batch.py` (sampled at temperature 0.8 from the
/// whole vocabulary, as rtlab's batch); aggregate tokens/s, or None when `llama_cpp` cannot run.
fn llama_cpp_batch(python: &str, model: &Path, prompts: &[String], n: usize) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/llama_cpp_batch.py");
    let out = Command::new(python)
        .arg(script)
        .arg(model)
        .args(prompts)
        .args([n.to_string(), TOKENS.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "llama.cpp's batch failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).replace('=', " ");
    Some(field(&text, "tokens") / field(&text, "seconds"))
}

/// Steps of every training run; the first is warm-up on both sides, so 16 are timed.
const TRAIN_STEPS: usize = 17;
/// Rows a step.
const TRAIN_BATCH: usize = 4;
/// The template both sides format each row's instruction with (rtlab's Alpaca-style fallback; the
/// GGUF's chat template is rtlab's default, which the Python side would have to reproduce).
const TRAIN_TEMPLATE: &str = "### Instruction:\n{prompt}\n\n### Response:\n";

/// The rows every training configuration learns from: modules of ten XOR assigns.
fn write_rows(path: &Path) {
    let mut text = String::new();
    for i in 0..TRAIN_STEPS * TRAIN_BATCH {
        let body: String = (0..10)
            .map(|j| format!("  assign y{j} = a{j} ^ b{j};\n"))
            .collect();
        let row = serde_json::json!({
            "instruction": format!("Write module m{i}"),
            "output": format!("module m{i}(input [9:0] a, input [9:0] b, output [9:0] y);\n{body}endmodule"),
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// One training run's figures: steady tokens/s (first step left out), peak RSS MiB, tokens trained.
struct TrainRun {
    tokens_per_s: f64,
    peak_rss_mb: f64,
    tokens: f64,
}

/// One LoRA run of rtlab in its own process.
fn train(rows: &Path, quantized: bool, checkpoint: bool) -> TrainRun {
    let out = script(&format!(
        r#"let run = train_lora(#{{base: "smollm2-135m", data: "{rows}", out: "run", r: 8, alpha: 16,
    target_modules: ["q_proj", "v_proj"], epochs: 1, batch_size: {TRAIN_BATCH}, grad_accum: 1, max_len: 256,
    template: {template:?}, quantized_base: {quantized}, gradient_checkpointing: {checkpoint}}});
let record = parse_json(read_text(`${{run.adapter}}/run.json`));
print(`steady_tokens_per_s ${{run.steady_tokens_per_s}}`);
print(`peak_rss_mb ${{run.peak_rss_mb}}`);
print(`tokens ${{record.curve[record.curve.len() - 1].tokens}}`);
print(`steps ${{run.steps}}`);"#,
        rows = rows.display(),
        template = TRAIN_TEMPLATE,
    ));
    assert_eq!(field(&out, "steps") as usize, TRAIN_STEPS, "{out}");
    TrainRun {
        tokens_per_s: field(&out, "steady_tokens_per_s"),
        peak_rss_mb: field(&out, "peak_rss_mb"),
        tokens: field(&out, "tokens"),
    }
}

/// The same run in PyTorch + PEFT on the same GGUF, dequantized to f32 by transformers
/// (`tests/python/peft_gguf_train.py`). A failure of a Python that has the packages is a failed
/// benchmark, not a missing baseline.
fn peft_train(python: &str, model: &Path, rows: &Path, checkpoint: bool) -> TrainRun {
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/peft_gguf_train.py"
        ))
        .arg(model.parent().unwrap())
        .arg(model.file_name().unwrap())
        .arg(rows)
        .args([
            TRAIN_BATCH.to_string().as_str(),
            "256",
            if checkpoint { "1" } else { "0" },
        ])
        .arg(TRAIN_TEMPLATE)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the PyTorch + PEFT baseline failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        output::value(&text, "steps") as usize,
        TRAIN_STEPS,
        "{text}"
    );
    TrainRun {
        tokens_per_s: output::value(&text, "steady_tokens_per_s"),
        peak_rss_mb: output::value(&text, "peak_rss_mb"),
        tokens: output::value(&text, "tokens"),
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
    let part: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if part.as_deref().is_none_or(|p| p == "decode") {
        decode(&model, runs);
    }
    if part.as_deref().is_none_or(|p| p == "adapter") {
        adapter_decode(&model, runs);
    }
    if part.as_deref().is_none_or(|p| p == "train") {
        training(&model, runs);
    }
}

fn decode(model: &Path, runs: usize) {
    let python = std::env::var("RTLAB_LLAMA_CPP_PYTHON").unwrap_or_else(|_| "python3".into());
    println!("SmolLM2-135M-Instruct Q4_1, {TOKENS} new tokens, median of {runs} runs");

    let (mut quant, mut f32s, mut llama, mut batch) = (vec![], vec![], vec![], vec![]);
    let (mut candle_quant, mut candle_batch, mut avx2_batch) = (vec![], vec![], vec![]);
    let (mut prompts_batch, mut small_pages) = (vec![], vec![]);
    let (mut llama_batch, mut llama_prompts) = (vec![], vec![]);
    for _ in 0..runs {
        quant.push(rtlab_single(model, false, Kernel::Rtlab));
        small_pages.push(rtlab_single(model, false, Kernel::SmallPages));
        candle_quant.push(rtlab_single(model, false, Kernel::Candle));
        f32s.push(rtlab_single(model, true, Kernel::Rtlab));
        if let Some(t) = llama_cpp_single(&python, model) {
            llama.push(t);
        }
        batch.push(rtlab_batch(model, 20, Kernel::Rtlab));
        candle_batch.push(rtlab_batch(model, 20, Kernel::Candle));
        avx2_batch.push(rtlab_batch(model, 20, Kernel::Avx2));
        prompts_batch.push(rtlab_prompts_batch(model, 20, None));
        if !llama.is_empty() {
            llama_batch.extend(llama_cpp_batch(&python, model, &[PROMPT.to_string()], 20));
            llama_prompts.extend(llama_cpp_batch(&python, model, &different_prompts(20), 20));
        }
    }
    let q = median(quant.clone());
    let cq = median(candle_quant.clone());
    println!("single stream, rtlab quantized   {q:7.1} tok/s  runs {quant:.1?}");
    println!("  the same on candle's kernels   {cq:5.1} tok/s  runs {candle_quant:.1?}");
    println!("  rtlab's kernels / candle's      {:7.2}x", q / cq);
    let sp = median(small_pages.clone());
    println!("  the weights on 4 KiB pages     {sp:5.1} tok/s  runs {small_pages:.1?}");
    println!("  huge pages / 4 KiB pages        {:7.2}x", q / sp);
    println!(
        "single stream, rtlab f32         {:7.1} tok/s  runs {f32s:.1?}",
        median(f32s.clone())
    );
    if llama.is_empty() {
        println!("single stream, llama.cpp        NOT run: `{python} -c 'import llama_cpp'` fails (pip install llama-cpp-python)");
    } else {
        let l = median(llama.clone());
        println!("single stream, llama.cpp         {l:7.1} tok/s  runs {llama:.1?}");
        println!(
            "rtlab quantized / llama.cpp      {:7.2}x (goal: at least 1.0x)",
            q / l
        );
    }
    let b = median(batch.clone());
    let cb = median(candle_batch.clone());
    println!("20 samples as one batch, rtlab   {b:7.1} tok/s  runs {batch:.1?}");
    println!("  the same on candle's kernels   {cb:5.1} tok/s  runs {candle_batch:.1?}");
    println!("  rtlab's kernels / candle's      {:7.2}x", b / cb);
    let ab = median(avx2_batch.clone());
    println!("  the same on AVX2 kernels only  {ab:5.1} tok/s  runs {avx2_batch:.1?}");
    println!(
        "batch / single stream            {:7.2}x (goal: at least 8x)",
        b / q
    );
    let pb = median(prompts_batch.clone());
    println!("20 prompts as one batch, rtlab   {pb:7.1} tok/s  runs {prompts_batch:.1?}");
    println!(
        "prompts batch / single stream    {:7.2}x (goal: at least 6x)",
        pb / q
    );
    let llama_single = (!llama.is_empty()).then(|| median(llama.clone()));
    let llama_b = (!llama_batch.is_empty()).then(|| median(llama_batch.clone()));
    let llama_p = (!llama_prompts.is_empty()).then(|| median(llama_prompts.clone()));
    match (llama_b, llama_p) {
        (Some(lb), Some(lp)) => {
            println!("20 samples as one batch, llama.cpp {lb:5.1} tok/s  runs {llama_batch:.1?}");
            println!("rtlab batch / llama.cpp batch    {:7.2}x", b / lb);
            println!("20 prompts as one batch, llama.cpp {lp:5.1} tok/s  runs {llama_prompts:.1?}");
            println!("rtlab prompts / llama.cpp        {:7.2}x", pb / lp);
        }
        _ => println!("batches, llama.cpp              NOT run (see the single stream's line)"),
    }
    results::write(
        "gguf_decode",
        serde_json::json!({
            "tokens": TOKENS,
            "single_tok_s": q,
            "single_candle_tok_s": cq,
            "single_small_pages_tok_s": sp,
            "single_f32_tok_s": median(f32s.clone()),
            "batch20_tok_s": b,
            "batch20_candle_tok_s": cb,
            "batch20_avx2_tok_s": ab,
            "llama_cpp_single_tok_s": llama_single,
            "decode_batch20_vs_single": b / q,
            "prompts20_tok_s": pb,
            "decode_prompts20_vs_single": pb / q,
            "decode_single_vs_llama_cpp": llama_single.map(|l| q / l),
            "llama_cpp_batch20_tok_s": llama_b,
            "decode_batch20_vs_llama_cpp": llama_b.map(|l| b / l),
            "llama_cpp_prompts20_tok_s": llama_p,
            "decode_prompts20_vs_llama_cpp": llama_p.map(|l| pb / l),
        }),
        runs,
    );
}

/// Part 2b: decoding with a LoRA adapter (r 16 on all seven projections, as the learning script's
/// stages train), one stream and 20 different prompts as one batch, beside the base model's same
/// two figures in the same runs. Its product is computed row by row (`low_rank.rs`), so prompts
/// share a batch with an adapter too.
fn adapter_decode(model: &Path, runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.jsonl");
    write_rows(&rows);
    let adapter = dir.path().join("adapter");
    // Two steps at the usual rate: the adapter's cost does not depend on its values, and a small
    // change leaves the answers as long as the base model's.
    script(&format!(
        r#"train_lora(#{{base: "smollm2-135m", data: "{rows}", out: "{out}", r: 16, alpha: 32,
    epochs: 1, max_steps: 2, batch_size: 4, grad_accum: 1, max_len: 256}});"#,
        rows = rows.display(),
        out = adapter.display()
    ));
    let (mut single, mut prompts, mut base_single, mut base_prompts) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        single.push(rtlab_single_with(
            model,
            false,
            Kernel::Rtlab,
            Some(&adapter),
        ));
        prompts.push(rtlab_prompts_batch(model, 20, Some(&adapter)));
        base_single.push(rtlab_single(model, false, Kernel::Rtlab));
        base_prompts.push(rtlab_prompts_batch(model, 20, None));
    }
    let (s, p) = (median(single.clone()), median(prompts.clone()));
    let (bs, bp) = (median(base_single.clone()), median(base_prompts.clone()));
    println!("with a LoRA adapter (r 16, seven projections), median of {runs} runs:");
    println!("one stream                       {s:7.1} tok/s  runs {single:.1?}");
    println!("20 prompts as one batch          {p:7.1} tok/s  runs {prompts:.1?}");
    println!("prompts batch / single stream    {:7.2}x", p / s);
    println!(
        "the base model, same runs: one stream {bs:.1} tok/s, 20 prompts {bp:.1} tok/s ({:.2}x)",
        bp / bs
    );
    results::write(
        "gguf_adapter",
        serde_json::json!({
            "tokens": TOKENS,
            "adapter_single_tok_s": s,
            "adapter_prompts20_tok_s": p,
            "decode_prompts20_adapter_vs_single": p / s,
            "base_single_tok_s": bs,
            "base_prompts20_tok_s": bp,
            "decode_prompts20_vs_single": bp / bs,
        }),
        runs,
    );
}

/// Who trains in a configuration of part 3.
#[derive(Clone, Copy)]
enum Trainer {
    Rtlab { quantized: bool },
    Peft,
}

/// Part 3: each configuration's runs interleaved, so that a noisy minute hits them all.
fn training(model: &Path, runs: usize) {
    let python = std::env::var("RTLAB_PYTHON").unwrap_or_else(|_| "python3".into());
    let configs = [
        ("LoRA, f32 base", Trainer::Rtlab { quantized: false }, true),
        (
            "LoRA, f32 base, whole graph",
            Trainer::Rtlab { quantized: false },
            false,
        ),
        (
            "QLoRA, quantized base",
            Trainer::Rtlab { quantized: true },
            true,
        ),
        (
            "QLoRA, quantized base, whole graph",
            Trainer::Rtlab { quantized: true },
            false,
        ),
        ("PyTorch + PEFT, f32 base", Trainer::Peft, true),
        (
            "PyTorch + PEFT, f32 base, whole graph",
            Trainer::Peft,
            false,
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.jsonl");
    write_rows(&rows);
    let has_peft = Command::new(&python)
        .args(["-c", "import torch, transformers, peft, gguf"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut tokens: Vec<(&str, f64)> = vec![];
    let mut results = vec![(vec![], vec![]); configs.len()];
    let f32_only = std::env::var("RTLAB_BENCH_TRAIN").is_ok_and(|v| v == "f32");
    for _ in 0..runs {
        for (c, (name, trainer, checkpoint)) in configs.iter().enumerate() {
            let run = match trainer {
                Trainer::Rtlab { quantized: true } if f32_only => continue,
                Trainer::Rtlab { quantized } => train(&rows, *quantized, *checkpoint),
                Trainer::Peft if has_peft => peft_train(&python, model, &rows, *checkpoint),
                Trainer::Peft => continue,
            };
            println!(
                "{name}: {} tokens, {:.1} tok/s after the first step",
                run.tokens, run.tokens_per_s
            );
            tokens.push((name, run.tokens));
            results[c].0.push(run.tokens_per_s);
            results[c].1.push(run.peak_rss_mb);
        }
    }
    // Like for like: every configuration trained on the same tokens.
    let first_count = tokens[0].1;
    for (name, count) in &tokens {
        assert_eq!(
            *count, first_count,
            "{name} trained on {count} tokens, {} on {first_count}: the sides are not like for like",
            tokens[0].0
        );
    }
    if !has_peft {
        println!("PyTorch + PEFT NOT run: {python} lacks torch/transformers/peft/gguf (set RTLAB_PYTHON)");
    }
    println!(
        "LoRA training, {TRAIN_STEPS} steps of {TRAIN_BATCH} rows ({first_count} tokens), the first left out, median of {runs} runs:"
    );
    let medians: Vec<(f64, f64)> = results
        .into_iter()
        .map(|(t, r)| (median(t), median(r)))
        .collect();
    for ((name, _, _), (tps, rss)) in configs.iter().zip(&medians) {
        println!("{name:38} {tps:7.1} tok/s  peak RSS {rss:6.0} MiB");
    }
    for (ours, name) in [(0, "checkpointing"), (1, "whole graph")] {
        let (rt, pt) = (medians[ours], medians[ours + 4]);
        println!(
            "rtlab / PyTorch + PEFT, f32 base, {name:13} {:5.2}x tok/s (goal: at least 1.1x), {:5.2}x peak RSS",
            rt.0 / pt.0,
            rt.1 / pt.1
        );
    }
    for (pair, name) in [(0, "f32 base"), (2, "quantized base")] {
        let (ckpt, whole) = (medians[pair], medians[pair + 1]);
        println!(
            "checkpointing / whole graph, {name:15} {:5.2}x tok/s, {:5.2}x peak RSS",
            ckpt.0 / whole.0,
            ckpt.1 / whole.1
        );
    }
    let figure = |i: usize| {
        (medians[i].0.is_finite())
            .then(|| serde_json::json!({"tok_s": medians[i].0, "peak_rss_mb": medians[i].1}))
    };
    let peft = |i: usize| has_peft.then(|| figure(i)).flatten();
    let ratio = |ours: usize| has_peft.then(|| medians[ours].0 / medians[ours + 4].0);
    results::write(
        "gguf_train",
        serde_json::json!({
            "steps_timed": TRAIN_STEPS - 1,
            "batch": TRAIN_BATCH,
            "tokens": first_count,
            "lora_f32": figure(0),
            "lora_f32_whole_graph": figure(1),
            "qlora": figure(2),
            "qlora_whole_graph": figure(3),
            "peft_f32": peft(4),
            "peft_f32_whole_graph": peft(5),
            "lora_vs_peft": ratio(0),
            "lora_vs_peft_whole_graph": ratio(1),
        }),
        runs,
    );
}
