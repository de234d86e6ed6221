//! The LoRA trainer end to end on a tiny seeded Llama made by `create_tiny_model`: it learns,
//! memorises and gives back, checkpoints survive a kill, a resumed run reproduces the uninterrupted
//! curve, a finished run is not retrained, and bad input is refused before any work.

use crate::common;
use common::{err, ok, rtlab, Run};
use std::path::Path;

/// Eight tiny modules whose prompts differ: greedy decoding must give each one back.
const GATES: &str = r#"
let names = ["and2", "or2", "xor2", "nand2", "nor2", "xnor2", "buf1", "inv1"];
let ops = ["a & b", "a | b", "a ^ b", "~(a & b)", "~(a | b)", "~(a ^ b)", "a", "~a"];
let rows = [];
for i in 0..8 {
    rows.push(#{instruction: "Write " + names[i],
                output: "module " + names[i] + "(input a, b, output y); assign y = " + ops[i] + "; endmodule"});
}
let data = from_records(rows);
"#;

fn tiny(dir: &Path) -> String {
    format!(r#"create_tiny_model("{}", #{{seed: 1}});"#, dir.display())
}

#[test]
fn training_lowers_the_loss_and_eight_memorised_examples_come_back_under_greedy_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let out = tmp.path().join("run");
    let printed = ok(&format!(
        r#"{tiny}
        {GATES}
        let run = train_lora(#{{base: "{base}", data: data, out: "{out}", r: 16, alpha: 32, dropout: 0.0,
            epochs: 60, batch_size: 8, grad_accum: 1, lr: 1e-2, warmup: 0, max_len: 128}});
        print(`${{run.first_loss}} ${{run.final_loss}} ${{run.steps}}`);
        let m = load_model("{base}", #{{adapter: run.adapter}});
        let right = 0;
        for row in data.to_records() {{
            if m.generate(row.instruction, #{{max_tokens: 80}}) == row.output {{ right += 1; }}
        }}
        print(right);
        print(`${{perplexity(load_model("{base}", #{{}}), data)}} ${{perplexity(m, data, #{{batch_size: 3}})}}`);
        "#,
        tiny = tiny(&base),
        base = base.display(),
        out = out.display()
    ));
    let lines: Vec<&str> = printed.lines().collect();
    let nums: Vec<f64> = lines[0].split(' ').map(|x| x.parse().unwrap()).collect();
    let (first, last, steps) = (nums[0], nums[1], nums[2]);
    assert_eq!(steps, 60.0);
    assert!(
        first > 5.0,
        "a random model starts near ln(259) or above: {first}"
    );
    assert!(
        last < 0.1 * first,
        "the loss must fall by 90% at least: {first} -> {last}"
    );
    assert_eq!(
        lines[1], "8",
        "all eight memorised modules come back verbatim"
    );
    // Perplexity scores the tokens training scores: before training it is exp(the first step's loss)
    // (a fresh adapter is the base, and dropout is off), after it is at most exp(the last step's).
    let ppl: Vec<f64> = lines[2].split(' ').map(|x| x.parse().unwrap()).collect();
    assert!(
        (ppl[0] / first.exp() - 1.0).abs() < 1e-4,
        "perplexity before training {} vs exp(first loss) {}",
        ppl[0],
        first.exp()
    );
    assert!(
        ppl[1] < ppl[0] / 100.0 && ppl[1] <= last.exp() * 1.01,
        "perplexity on the memorised text falls: {} -> {} (exp(final loss) {})",
        ppl[0],
        ppl[1],
        last.exp()
    );
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss.svg",
        "run.json",
    ] {
        assert!(out.join(f).exists(), "{f} written");
    }
}

fn resume_script(base: &Path, out: &Path) -> String {
    format!(
        r#"{tiny}
        {GATES}
        let run = train_lora(#{{base: "{base}", data: data, out: "{out}", r: 4, epochs: 3, batch_size: 2,
            grad_accum: 2, lr: 5e-3, dropout: 0.1, checkpoint_every: 2, seed: 9}});
        print(`resumed_from=${{run.resumed_from}}`);
        for s in run.curve.to_records() {{ print(`${{s.step}} ${{s.loss}}`); }}
        "#,
        tiny = tiny(base),
        base = base.display(),
        out = out.display()
    )
}

/// Runs `code` as a script in `dir` (its own workspace), with `RTLAB_FAULT_CHECKPOINT` set to `fault`.
pub fn run_script(dir: &Path, code: &str, fault: Option<&str>) -> Run {
    let script = dir.join(format!("s{}.rhai", fault.is_some() as u8));
    std::fs::write(&script, code).unwrap();
    let mut cmd = rtlab();
    cmd.arg("run")
        .arg("--no-cache")
        .arg(&script)
        .env("RTLAB_HOME", dir.join(".rtlab"));
    if let Some(f) = fault {
        cmd.env("RTLAB_FAULT_CHECKPOINT", f);
    }
    Run::from(cmd.output().unwrap())
}

#[test]
fn a_kill_during_a_checkpoint_keeps_the_last_good_one_and_resuming_reproduces_the_uninterrupted_curve(
) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    // Uninterrupted: 8 examples / (2 × 2) = 2 steps per epoch, 6 steps.
    let whole = run_script(
        tmp.path(),
        &resume_script(&base, &tmp.path().join("whole")),
        None,
    );
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    assert!(
        whole.stdout.starts_with("resumed_from=\n") || whole.stdout.starts_with("resumed_from=()"),
        "{}",
        whole.stdout
    );

    // Killed while writing the step-4 checkpoint: step 2's survives, the half-written one is ignored.
    let out = tmp.path().join("killed");
    let killed = run_script(
        tmp.path(),
        &resume_script(&base, &out),
        Some("abort-before-rename-4"),
    );
    assert_ne!(killed.code, 0, "the fault must kill the run");
    let ckpts: Vec<String> = std::fs::read_dir(out.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(ckpts.contains(&"step-00000002".to_string()), "{ckpts:?}");
    assert!(
        !ckpts.iter().any(|c| c == "step-00000004"),
        "a half-written checkpoint never takes a final name: {ckpts:?}"
    );

    let resumed = run_script(tmp.path(), &resume_script(&base, &out), None);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(
        resumed.stdout.starts_with("resumed_from=2\n"),
        "{}",
        resumed.stdout
    );
    let curve = |s: &str| s.lines().skip(1).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(curve(&resumed.stdout).len(), 6);
    assert_eq!(
        curve(&resumed.stdout),
        curve(&whole.stdout),
        "the resumed curve is the uninterrupted one, bit for bit"
    );
}

#[test]
fn a_finished_run_is_returned_not_retrained_until_something_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let out = tmp.path().join("run");
    let code = |lr: &str| {
        format!(
            r#"{tiny}
            {GATES}
            let run = train_lora(#{{base: "{base}", data: data.head(4), out: "{out}", r: 2, epochs: 1, batch_size: 2,
                grad_accum: 1, lr: {lr}}});
            print(run.cached);"#,
            tiny = tiny(&base),
            base = base.display(),
            out = out.display()
        )
    };
    assert_eq!(ok(&code("1e-3")), "false\n");
    assert_eq!(ok(&code("1e-3")).lines().last(), Some("true"));
    assert_eq!(ok(&code("2e-3")), "false\n", "another lr is another run");
}

/// The error of `train_lora(#{options})`, where `/tmp/x` stands for a fresh out dir that must stay empty.
fn bad(options: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let out = tmp.path().join("out");
    let options = options.replace("/tmp/x", &out.display().to_string());
    let e = err(&format!(
        r#"{tiny}
        {GATES}
        let base = "{base}";
        train_lora(#{{{options}}});"#,
        tiny = tiny(&base),
        base = base.display()
    ));
    assert!(
        !out.exists(),
        "refused input must leave no run directory: {e}"
    );
    e
}

#[test]
fn bad_input_is_refused_before_any_work_with_what_to_do() {
    let e = bad(r#"base: "/nonexistent/model", data: data, out: "/tmp/x""#);
    assert!(
        e.contains("/nonexistent/model: no such model directory"),
        "{e}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let e = bad(&format!(
        r#"base: "{}", data: data, out: "/tmp/x""#,
        tmp.path().display()
    ));
    assert!(e.contains("missing config.json"), "{e}");

    std::fs::write(
        tmp.path().join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    let e = bad(&format!(
        r#"base: "{}", data: data, out: "/tmp/x""#,
        tmp.path().display()
    ));
    assert!(
        e.contains("unsupported architecture \"GPT2LMHeadModel\""),
        "{e}"
    );

    let e = bad(r#"base: base, data: data, out: "/tmp/x", prompt_col: "question""#);
    assert!(
        e.contains("no column \"question\"") && e.contains("columns: instruction, output"),
        "{e}"
    );

    let e = bad(r#"base: base, data: data, out: "/tmp/x", r: 0"#);
    assert!(
        e.contains("r (the LoRA rank) must be a whole number ≥ 1, got 0"),
        "{e}"
    );

    let e = bad(r#"base: base, data: data.filter(col("instruction") == "none"), out: "/tmp/x""#);
    assert!(e.contains("the dataset has no rows"), "{e}");

    let e = bad(r#"base: base, data: data, out: "/tmp/x", max_len: 12"#);
    assert!(
        e.contains("row 0: the prompt is") && e.contains("max_len is 12"),
        "{e}"
    );

    let e = bad(r#"base: base, data: data, out: "/tmp/x", target_modules: ["qkv"]"#);
    assert!(e.contains("unknown target module \"qkv\""), "{e}");

    let e = bad(r#"base: base, data: data, out: "/tmp/x", template: "Q: {question}\nA: ""#);
    assert!(e.contains("has no {prompt}"), "{e}");

    let e = bad(r#"base: base, data: data, out: "/tmp/x", epoch: 3"#);
    assert!(
        e.contains("unknown option `epoch`; valid options: ") && e.contains(" epochs,"),
        "{e}"
    );

    let e = bad(r#"base: base, data: data, out: "/tmp/x", device: "cuda""#);
    assert!(e.contains("built without the `cuda` feature"), "{e}");
}

#[test]
fn skipping_prompts_that_do_not_fit_reports_their_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let out = tmp.path().join("run");
    let printed = ok(&format!(
        r#"{tiny}
        let data = from_records([#{{instruction: "short", output: "x"}},
                                 #{{instruction: "a prompt far too long for the window", output: "y"}}]);
        let run = train_lora(#{{base: "{base}", data: data, out: "{out}", r: 2, epochs: 1, batch_size: 1,
            grad_accum: 1, max_len: 40, on_too_long: "skip"}});
        print(run.skipped_rows);
        print(run.examples);"#,
        tiny = tiny(&base),
        base = base.display(),
        out = out.display()
    ));
    assert_eq!(printed, "[1]\n1\n");
}

/// Python with torch, transformers and peft, for the cross-check against the reference implementation.
fn python_with_peft() -> String {
    std::env::var("RTLAB_PYTHON")
        .expect("set RTLAB_PYTHON to a Python that has torch, transformers and peft")
}

fn python(args: &[&str]) -> String {
    let out = std::process::Command::new(python_with_peft())
        .arg(common::repo_root().join("tests/python/peft_logits.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_steady_rate_leaves_out_the_first_step_and_a_one_step_run_has_none() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let printed = ok(&format!(
        r#"{tiny}
        {GATES}
        for steps in [1, 3] {{
            let run = train_lora(#{{base: "{base}", data: data, out: "{out}/${{steps}}", r: 4, epochs: 1,
                batch_size: 1, grad_accum: 1, max_steps: steps, fresh: true}});
            print(`${{run.steps}} ${{type_of(run.steady_tokens_per_s)}} ${{run.tokens_per_s > 0.0}}`);
        }}"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().display()
    ));
    assert_eq!(printed, "1 () true\n3 f64 true\n");
}

#[test]
#[ignore = "needs Python with torch, transformers and peft (5 GB): RTLAB_PYTHON=/path/to/python cargo test --test integration train:: -- --ignored"]
fn peft_reads_rtlab_adapters_and_rtlab_reads_peft_adapters_with_the_same_logits() {
    for arch in ["llama", "qwen2"] {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("tiny");
        let out = tmp.path().join("run");
        let text = "module and2(input a, b, output y); assign y = a & b; endmodule";
        // rtlab's adapter, trained a little so B is not zero, read by PEFT.
        ok(&format!(
            r#"create_tiny_model("{base}", #{{arch: "{arch}", seed: 2}});
            {GATES}
            let run = train_lora(#{{base: "{base}", data: data, out: "{out}", r: 8, epochs: 3, batch_size: 4, grad_accum: 1, lr: 1e-2}});
            write_text("{out}/logits.json", load_model("{base}", #{{adapter: "{out}"}}).logits("{text}").json());"#,
            base = base.display(),
            out = out.display()
        ));
        let printed = python(&[
            "check",
            &base.display().to_string(),
            &out.display().to_string(),
            text,
            &out.join("logits.json").display().to_string(),
        ]);
        let err: f64 = printed
            .trim()
            .strip_prefix("max_rel_err=")
            .unwrap()
            .parse()
            .unwrap();
        eprintln!("{arch}: rtlab's adapter in PEFT: max relative logit difference {err:.2e}");
        assert!(
            err < 1e-4,
            "{arch}: rtlab's adapter in PEFT: logits differ by {err}"
        );

        // An adapter PEFT made (random B, four target modules), read by rtlab.
        let theirs = tmp.path().join("peft-made");
        python(&[
            "make",
            &base.display().to_string(),
            &theirs.display().to_string(),
            text,
            &tmp.path().join("peft.json").display().to_string(),
        ]);
        let printed = ok(&format!(
            r#"let mine = load_model("{base}", #{{adapter: "{theirs}"}}).logits("{text}");
            let theirs = parse_json(read_text("{json}"));
            let worst = 0.0;
            for i in 0..mine.len() {{ for j in 0..mine[i].len() {{
                let d = (mine[i][j] - theirs[i][j]).abs();
                if d > worst {{ worst = d; }}
            }} }}
            print(worst);"#,
            base = base.display(),
            theirs = theirs.display(),
            json = tmp.path().join("peft.json").display()
        ));
        let worst: f64 = printed.trim().parse().unwrap();
        eprintln!("{arch}: PEFT's adapter in rtlab: max absolute logit difference {worst:.2e}");
        assert!(
            worst < 1e-4,
            "{arch}: PEFT's adapter in rtlab: logits differ by {worst}"
        );
    }
}

#[test]
fn the_wgpu_step_on_rtlabs_cubecl_kernels_trains_like_the_cpu_step() {
    // Both devices draw the same dropout masks from the same seed; only float rounding differs.
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let run = |device: &str| {
        let printed = ok(&format!(
            r#"{tiny}
            {GATES}
            let run = train_lora(#{{base: "{base}", data: data, out: "{out}", r: 8, epochs: 4, batch_size: 2,
                grad_accum: 2, lr: 5e-3, dropout: 0.1, device: "{device}", checkpoint_every: 3}});
            for s in run.curve.to_records() {{ print(s.loss); }}
            print(json(load_model("{base}", #{{adapter: "{out}"}}).logits("module")));"#,
            tiny = tiny(&base),
            base = base.display(),
            out = tmp.path().join(device).display()
        ));
        let lines: Vec<String> = printed.lines().map(str::to_string).collect();
        let losses: Vec<f64> = lines[..lines.len() - 1]
            .iter()
            .map(|l| l.parse().unwrap())
            .collect();
        let logits: Vec<Vec<f64>> = serde_json::from_str(lines.last().unwrap()).unwrap();
        (losses, logits)
    };
    let (cpu_loss, cpu_logits) = run("cpu");
    let (gpu_loss, gpu_logits) = run("wgpu");
    assert_eq!(cpu_loss.len(), 8);
    for (step, (c, g)) in cpu_loss.iter().zip(&gpu_loss).enumerate() {
        assert!(
            (c - g).abs() <= 1e-4 * c.abs().max(1.0),
            "step {}: cpu loss {c}, wgpu loss {g}",
            step + 1
        );
    }
    assert!(
        gpu_loss[7] < 0.8 * gpu_loss[0],
        "the wgpu run learns: {gpu_loss:?}"
    );
    let worst = cpu_logits
        .iter()
        .flatten()
        .zip(gpu_logits.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-3,
        "the adapters trained on the two devices give logits {worst} apart"
    );
}

#[test]
fn local_models_merge_and_tiny_models_refuse_bad_input_with_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    ok(&tiny(&base));
    let b = base.display();
    let e = err(r#"load_model("/nonexistent/model", #{})"#);
    assert!(
        e.contains("/nonexistent/model: no such model directory"),
        "{e}"
    );
    let e = err(&format!(r#"load_model("{b}", #{{adapter: "{b}"}})"#));
    assert!(e.contains("missing adapter_config.json"), "{e}");
    let e = err(&format!(r#"load_model("{b}", #{{lora: "x"}})"#));
    assert!(
        e.contains("unknown option `lora`; valid options: adapter, dequantize, template"),
        "{e}"
    );
    let e = err(&format!(
        r#"load_model("{b}", #{{}}).generate("hi", #{{max_token: 3}})"#
    ));
    assert!(
        e.contains(
            "unknown option `max_token`; valid options: max_tokens, seed, stop, temperature, top_p"
        ),
        "{e}"
    );
    let e = err(&format!(
        r#"merge("{b}", "{b}", "{}")"#,
        tmp.path().join("merged").display()
    ));
    assert!(e.contains("missing adapter_config.json"), "{e}");
    assert!(
        !tmp.path().join("merged").exists(),
        "a refused merge writes nothing"
    );
    let e = err(&format!(
        r#"create_tiny_model("{}", #{{hidden: 30, heads: 4}})"#,
        tmp.path().join("t2").display()
    ));
    assert!(e.contains("must split into 4 heads"), "{e}");
    let e = err(r#"create_tiny_model("/tmp/rtlab-never", #{arch: "gpt2"})"#);
    assert!(e.contains("arch \"gpt2\""), "{e}");
    let e = err(r#"parse_json("{\"a\": ")"#);
    assert!(e.contains("parse_json: EOF while parsing"), "{e}");
}

#[test]
fn perplexity_refuses_data_it_cannot_score_naming_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let run = |call: &str| {
        err(&format!(
            r#"{tiny}
            {GATES}
            let m = load_model("{base}", #{{}});
            {call}"#,
            tiny = tiny(&base),
            base = base.display()
        ))
    };
    let e = run(r#"perplexity(m, data, #{response_col: "answer"})"#);
    assert!(
        e.contains("perplexity: the dataset has no column \"answer\" for the response (columns: instruction, output)"),
        "{e}"
    );
    let e = run(r#"perplexity(m, data.filter(col("output") == "none"))"#);
    assert!(e.contains("perplexity: the data has no rows"), "{e}");
    let e = run(r#"perplexity(m, data, #{max_len: 8})"#);
    assert!(
        e.contains("perplexity: row 0: the prompt is") && e.contains("raise max_len"),
        "{e}"
    );
    let e = run(r#"perplexity(m, "/nonexistent/rows.jsonl")"#);
    assert!(
        e.contains("perplexity: data:") && e.contains("/nonexistent/rows.jsonl"),
        "{e}"
    );
    let e = run(r#"perplexity(m, data, #{max_length: 8})"#);
    assert!(e.contains("unknown option `max_length`"), "{e}");
}

/// Validation on held-out gates: the curve gets `eval_loss` where it was measured, `out/best` holds
/// the adapter of the lowest one, and `keep: "best"` hands that adapter back, which `perplexity`
/// confirms (its perplexity on the held-out rows is exp(best_eval_loss)); `keep: "last"` keeps the
/// last step's.
#[test]
fn validation_records_eval_loss_and_keep_best_hands_back_the_best_validated_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let printed = ok(&format!(
        r#"{tiny}
        {GATES}
        for keep in ["best", "last"] {{
            let run = train_lora(#{{base: "{base}", data: data.head(6), eval_data: data.tail(2), out: `{out}/${{keep}}`,
                keep: keep, eval_every: 2, r: 8, dropout: 0.0, epochs: 12, batch_size: 3, grad_accum: 1,
                lr: 3e-2, warmup: 0}});
            let measured = run.curve.filter(col("eval_loss").is_not_null());
            let losses = measured.column("eval_loss");
            let lowest = losses.reduce(|a, b| if b < a {{ b }} else {{ a }}, losses[0]);
            let last = losses[losses.len() - 1];
            let ppl = perplexity(load_model("{base}", #{{adapter: run.adapter}}), data.tail(2));
            print(`${{keep}} ${{run.steps}} ${{measured.len()}} ${{run.best_step}} ${{run.kept_step}} ${{run.best_eval_loss == lowest}} ${{ppl}} ${{run.best_eval_loss}} ${{last}}`);
        }}"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().display()
    ));
    for line in printed.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (keep, steps, measured) = (f[0], f[1], f[2]);
        assert_eq!(
            (steps, measured),
            ("24", "12"),
            "every 2 of 24 steps: {line}"
        );
        assert_eq!(
            f[5], "true",
            "best_eval_loss is the lowest eval_loss: {line}"
        );
        let ppl: f64 = f[6].parse().unwrap();
        let (best, last): (f64, f64) = (f[7].parse().unwrap(), f[8].parse().unwrap());
        let kept_loss = if keep == "best" {
            assert_eq!(f[4], f[3], "keep best hands back the best step: {line}");
            best
        } else {
            assert_eq!(f[4], "24", "keep last hands back the last step: {line}");
            last
        };
        assert!(
            (ppl.ln() - kept_loss).abs() < 1e-4,
            "{keep}: the adapter handed back has perplexity exp({kept_loss}), measured {ppl}"
        );
    }
    assert!(
        tmp.path()
            .join("best/best/adapter_model.safetensors")
            .exists(),
        "the best adapter is kept in out/best"
    );
    let e = err(&format!(
        r#"{tiny} {GATES} train_lora(#{{base: "{base}", data: data, out: "{out}/x", keep: "best"}})"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().display()
    ));
    assert!(e.contains("keep: \"best\" needs eval_data"), "{e}");
    let e = err(&format!(
        r#"{tiny} {GATES} train_lora(#{{base: "{base}", data: data, out: "{out}/x", eval_data: data, keep: "first"}})"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().display()
    ));
    assert!(e.contains("keep \"first\": use \"last\""), "{e}");
    let e = err(&format!(
        r#"{tiny} {GATES} train_lora(#{{base: "{base}", data: data, out: "{out}/x", eval_data: data.select(["instruction"])}})"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().display()
    ));
    assert!(
        e.contains("eval_data: the dataset has no column \"output\""),
        "{e}"
    );
}
