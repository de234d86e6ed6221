//! `train_dpo` end to end on the tiny seeded model: on pairs whose chosen answer is the right one,
//! training raises the reward margin and accuracy and lowers the loss; it starts from a
//! `train_lora` adapter that rtlab returned; a kill mid-checkpoint resumes to the uninterrupted
//! curve; and bad pairs or options are refused before any work, naming what is wrong.

use crate::common;
use crate::train::run_script;
use common::{err, ok};
use std::path::Path;

/// Eight gates, each with its right body (chosen) and a wrong one (rejected): iverilog would tell
/// them apart; here the preference is given, as `preference_pairs` gives it after verification.
const PAIRS: &str = r#"
let names = ["and2", "or2", "xor2", "nand2", "nor2", "xnor2", "buf1", "inv1"];
let ops = ["a & b", "a | b", "a ^ b", "~(a & b)", "~(a | b)", "~(a ^ b)", "a", "~a"];
let rows = [];
for i in 0..8 {
    let wrong = ops[(i + 3) % 8];
    rows.push(#{prompt: "Write " + names[i],
                chosen: "module " + names[i] + "(input a, b, output y); assign y = " + ops[i] + "; endmodule",
                rejected: "module " + names[i] + "(input a, b, output y); assign y = " + wrong + "; endmodule"});
}
let pairs = from_records(rows);
"#;

fn tiny(dir: &Path) -> String {
    format!(r#"create_tiny_model("{}", #{{seed: 1}});"#, dir.display())
}

fn curve_lines(printed: &str) -> Vec<&str> {
    printed.lines().filter(|l| l.starts_with("step ")).collect()
}

#[test]
fn preferring_the_right_gates_raises_margin_and_accuracy_and_lowers_the_loss_for_both_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    for loss in ["sigmoid", "ipo"] {
        let out = tmp.path().join(loss);
        let printed = ok(&format!(
            r#"{tiny}
            {PAIRS}
            let run = train_dpo(#{{base: "{base}", pairs: pairs, out: "{out}", loss: "{loss}", beta: 0.1,
                r: 4, lr: 5e-3, epochs: 6, batch_size: 4, grad_accum: 2, seed: 3}});
            let n = run.steps;
            print(`steps ${{n}}`);
            print(`loss ${{run.loss[0]}} ${{run.loss[n - 1]}}`);
            print(`margin ${{run.reward_margin[0]}} ${{run.reward_margin[n - 1]}}`);
            print(`accuracy ${{run.reward_accuracy[0]}} ${{run.reward_accuracy[n - 1]}}`);
            print(run.curve.columns());"#,
            tiny = tiny(&base),
            base = base.display(),
            out = out.display()
        ));
        let pair = |key: &str| -> (f64, f64) {
            let line = printed
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("no {key} in {printed}"));
            let v: Vec<f64> = line
                .split(' ')
                .skip(1)
                .map(|x| x.parse().unwrap())
                .collect();
            (v[0], v[1])
        };
        assert!(printed.contains("steps 6"), "{printed}");
        let (first, last) = pair("loss");
        // At the first step the fresh adapter is the base: the policy is the reference.
        let at_start = if loss == "sigmoid" {
            std::f64::consts::LN_2
        } else {
            25.0
        };
        assert!(
            (first - at_start).abs() < 1e-5,
            "{loss}: first loss {first}"
        );
        assert!(last < first, "{loss}: the loss fell from {first} to {last}");
        let (m0, m1) = pair("margin");
        assert_eq!(m0, 0.0, "{loss}: no margin before any step");
        assert!(
            m1 > 0.0,
            "{loss}: the chosen answers gained on the rejected: {m1}"
        );
        let (a0, a1) = pair("accuracy");
        assert_eq!(a0, 0.0, "{loss}: ties are not wins");
        assert!(a1 >= 0.75, "{loss}: reward accuracy {a1} at the end");
        assert!(
            printed.contains(r#""reward_margin", "reward_accuracy"]"#),
            "{printed}"
        );
        assert!(out.join("adapter_model.safetensors").exists());
        assert!(out.join("reference_logps.json").exists());
    }
}

#[test]
fn dpo_starts_from_the_adapter_a_train_lora_run_returned_and_measures_against_it() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let printed = ok(&format!(
        r#"{tiny}
        {PAIRS}
        let sft_rows = pairs.to_records().map(|p| #{{instruction: p.prompt, output: p.chosen}});
        let sft = train_lora(#{{base: "{base}", data: from_records(sft_rows), out: "{out}/sft", r: 4,
            epochs: 2, batch_size: 4, grad_accum: 1, lr: 1e-2}});
        for reference in ["adapter", "base"] {{
            let run = train_dpo(#{{base: "{base}", adapter: sft.adapter, pairs: pairs,
                out: `{out}/dpo-${{reference}}`, reference: reference, epochs: 1, batch_size: 4,
                grad_accum: 1, lr: 1e-3}});
            print(`${{reference}} ${{run.loss[0]}} ${{run.trainable_params}}`);
        }}
        print(`sft ${{sft.trainable_params}}`);"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().display()
    ));
    let field = |key: &str, i: usize| -> String {
        printed
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {printed}"))
            .split(' ')
            .nth(i)
            .unwrap()
            .to_string()
    };
    let against_itself: f64 = field("adapter", 1).parse().unwrap();
    assert!(
        (against_itself - std::f64::consts::LN_2).abs() < 1e-5,
        "measured against its own starting adapter, the first step's loss is log 2: {printed}"
    );
    let against_base: f64 = field("base", 1).parse().unwrap();
    assert!(
        against_base < std::f64::consts::LN_2 - 1e-3,
        "the SFT adapter already prefers the chosen answers over the base: {printed}"
    );
    assert_eq!(
        field("adapter", 2),
        field("sft", 1),
        "the adapter's shape is kept"
    );
}

fn resume_script(base: &Path, out: &Path) -> String {
    format!(
        r#"{tiny}
        {PAIRS}
        let run = train_dpo(#{{base: "{base}", pairs: pairs, out: "{out}", r: 4, epochs: 3, batch_size: 2,
            grad_accum: 2, lr: 5e-3, dropout: 0.1, checkpoint_every: 2, seed: 9}});
        print(`resumed_from=${{run.resumed_from}}`);
        for s in run.curve.to_records() {{ print(`step ${{s.step}} ${{s.loss}} ${{s.reward_margin}} ${{s.reward_accuracy}}`); }}
        "#,
        tiny = tiny(base),
        base = base.display(),
        out = out.display()
    )
}

#[test]
fn a_dpo_run_killed_mid_checkpoint_resumes_to_the_uninterrupted_curve_with_its_rewards() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let whole = run_script(
        tmp.path(),
        &resume_script(&base, &tmp.path().join("whole")),
        None,
    );
    assert_eq!(whole.code, 0, "{}", whole.stderr);
    let out = tmp.path().join("killed");
    let killed = run_script(
        tmp.path(),
        &resume_script(&base, &out),
        Some("abort-before-rename-4"),
    );
    assert_ne!(killed.code, 0, "the fault must kill the run");
    let reference = std::fs::read(out.join("reference_logps.json")).unwrap();
    let resumed = run_script(tmp.path(), &resume_script(&base, &out), None);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(
        resumed.stdout.starts_with("resumed_from=2\n"),
        "{}",
        resumed.stdout
    );
    assert_eq!(curve_lines(&resumed.stdout).len(), 6);
    assert_eq!(
        curve_lines(&resumed.stdout),
        curve_lines(&whole.stdout),
        "the resumed curve, rewards included, is the uninterrupted one"
    );
    assert_eq!(
        std::fs::read(out.join("reference_logps.json")).unwrap(),
        reference,
        "the reference log-probs are computed once per job"
    );
}

/// The error of `train_dpo(#{options})`; `/tmp/x` stands for a fresh out dir that must stay empty.
fn bad(options: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let out = tmp.path().join("out");
    let options = options.replace("/tmp/x", &out.display().to_string());
    let e = err(&format!(
        r#"{tiny}
        {PAIRS}
        let base = "{base}";
        train_dpo(#{{{options}}});"#,
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
fn bad_pairs_and_options_are_refused_before_any_work_naming_what_is_wrong() {
    let e = bad(r#"base: base, pairs: pairs.select(["prompt", "chosen"]), out: "/tmp/x""#);
    assert!(
        e.contains("train_dpo: the pairs have no column \"rejected\" (columns: prompt, chosen)"),
        "{e}"
    );
    let e = bad(r#"base: base, pairs: pairs.filter(col("prompt") == "none"), out: "/tmp/x""#);
    assert!(e.contains("train_dpo: the pairs have no rows"), "{e}");
    let e = bad(r#"base: base, pairs: pairs, out: "/tmp/x", beta: 0"#);
    assert!(e.contains("train_dpo: beta must be > 0"), "{e}");
    let e = bad(r#"base: base, pairs: pairs, out: "/tmp/x", beta: -0.5"#);
    assert!(
        e.contains("beta must be > 0") && e.contains("got -0.5"),
        "{e}"
    );
    let e = bad(
        r#"base: base, pairs: from_records([#{prompt: "p", chosen: "x", rejected: "y"}, #{prompt: "q", chosen: "same", rejected: "same"}]), out: "/tmp/x""#,
    );
    assert!(
        e.contains("row 1: chosen and rejected are the same text"),
        "{e}"
    );
    let e = bad(r#"base: base, pairs: pairs, out: "/tmp/x", loss: "hinge""#);
    assert!(
        e.contains("loss \"hinge\"") && e.contains("\"sigmoid\""),
        "{e}"
    );
    let e = bad(r#"base: base, pairs: pairs, out: "/tmp/x", reference: "sft""#);
    assert!(e.contains("reference \"sft\""), "{e}");
    let e = bad(r#"base: base, pairs: pairs, out: "/tmp/x", data: pairs"#);
    assert!(e.contains("unknown option `data`"), "{e}");
    let e = bad(r#"base: base, pairs: pairs, out: "/tmp/x", adapter: "/nonexistent/adapter""#);
    assert!(
        e.contains("adapter /nonexistent/adapter: no adapter_model.safetensors"),
        "{e}"
    );
    let e = bad(r#"base: base, pairs: pairs, out: "/tmp/x", device: "tpu""#);
    assert!(e.contains("device \"tpu\""), "{e}");
    let e = bad(r#"base: base, pairs: 42, out: "/tmp/x""#);
    assert!(e.contains("pairs must be a DataFrame or a path"), "{e}");
}

#[test]
fn dpo_validates_on_held_out_pairs_and_keeps_the_best_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let printed = ok(&format!(
        r#"{tiny}
        {PAIRS}
        let run = train_dpo(#{{base: "{base}", pairs: pairs.head(6), eval_data: pairs.tail(2), keep: "best",
            out: "{out}", r: 4, lr: 1e-2, epochs: 4, batch_size: 3, grad_accum: 1, eval_every: 1}});
        let measured = run.curve.filter(col("eval_loss").is_not_null()).column("eval_loss");
        print(`${{measured.len()}} ${{run.best_eval_loss <= measured[0]}} ${{run.kept_step == run.best_step}}`);"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().join("run").display()
    ));
    assert_eq!(printed.trim(), "8 true true", "{printed}");
    assert!(tmp.path().join("run/reference_logps_eval.json").exists());
    let e = err(&format!(
        r#"{tiny} {PAIRS} train_dpo(#{{base: "{base}", pairs: pairs, eval_data: pairs.select(["prompt"]), out: "{out}"}})"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().join("bad").display()
    ));
    assert!(
        e.contains("eval_data: the pairs have no column \"chosen\""),
        "{e}"
    );
}

/// The same DPO job on the CPU and on rtlab's cubecl kernels (wgpu; Mesa's software Vulkan in CI):
/// the GPU path's closed-form chain rule through each sequence's log-prob gives the CPU autograd's
/// curve, step for step, for both losses and with dropout (the same masks in both passes).
#[test]
fn dpo_on_the_wgpu_kernels_trains_like_the_cpu_for_both_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let run = |device: &str, loss: &str| -> Vec<Vec<f64>> {
        let printed = ok(&format!(
            r#"{tiny}
            {PAIRS}
            let run = train_dpo(#{{base: "{base}", pairs: pairs, out: "{out}", loss: "{loss}", device: "{device}",
                r: 4, lr: 1e-2, epochs: 3, batch_size: 4, grad_accum: 2, dropout: 0.1, seed: 5}});
            for s in run.curve.to_records() {{ print(`${{s.loss}} ${{s.reward_margin}} ${{s.grad_norm}}`); }}"#,
            tiny = tiny(&base),
            base = base.display(),
            out = tmp.path().join(format!("{device}-{loss}")).display()
        ));
        printed
            .lines()
            .map(|l| l.split(' ').map(|x| x.parse().unwrap()).collect())
            .collect()
    };
    for loss in ["sigmoid", "ipo"] {
        let (cpu, gpu) = (run("cpu", loss), run("wgpu", loss));
        assert_eq!(cpu.len(), 3);
        for (step, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            for (what, (x, y)) in ["loss", "reward margin", "grad norm"]
                .iter()
                .zip(c.iter().zip(g))
            {
                assert!(
                    (x - y).abs() <= 2e-3 * x.abs().max(1e-2),
                    "{loss} step {}: cpu {what} {x}, wgpu {y}",
                    step + 1
                );
            }
        }
        assert!(
            gpu[2][1] > 0.0,
            "{loss}: the wgpu run prefers the chosen answers: {gpu:?}"
        );
    }
}

/// A Hugging Face directory's chat template (`tokenizer_config.json`) asks the questions: generation
/// and perplexity put a prompt through it, training renders prompts the same way, and
/// conversational pairs go through it, training exactly as their standard form.
#[test]
fn a_hugging_face_dirs_chat_template_renders_prompts_for_asking_training_and_conversations() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("tiny");
    let printed = ok(&format!(
        r#"{tiny}
        write_text("{base}/tokenizer_config.json", to_json(#{{
            chat_template: "{{% for m in messages %}}<{{{{ m.role }}}}>{{{{ m.content }}}}{{% endfor %}}{{% if add_generation_prompt %}}<assistant>{{% endif %}}",
            eos_token: #{{content: "<|endoftext|>"}}}}));
        let data = from_records([#{{instruction: "and gate", output: "assign y = a & b;"}}]);
        let chat = perplexity(load_model("{base}", #{{}}), data);
        let same = perplexity(load_model("{base}", #{{template: "<user>{{prompt}}<assistant>"}}), data);
        let other = perplexity(load_model("{base}", #{{template: "Q: {{prompt}}\nA: "}}), data);
        print(`${{chat == same}} ${{chat == other}}`);
        {PAIRS}
        let conversational = from_records(pairs.to_records().map(|r| #{{
            prompt: [#{{role: "user", content: r.prompt}}],
            chosen: [#{{role: "assistant", content: r.chosen}}],
            rejected: [#{{role: "assistant", content: r.rejected}}]}}));
        let a = train_dpo(#{{base: "{base}", pairs: pairs, out: "{out}/standard", r: 4, epochs: 1, batch_size: 4, grad_accum: 1, lr: 1e-2}});
        let b = train_dpo(#{{base: "{base}", pairs: conversational, out: "{out}/conversational", r: 4, epochs: 1, batch_size: 4, grad_accum: 1, lr: 1e-2}});
        print(a.loss == b.loss);
        print(read_text("{out}/standard/reference_logps.json") == read_text("{out}/conversational/reference_logps.json"));"#,
        tiny = tiny(&base),
        base = base.display(),
        out = tmp.path().display()
    ));
    assert_eq!(printed, "true false\ntrue\ntrue\n");
}
