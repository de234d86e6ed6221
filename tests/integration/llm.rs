//! The model client against a real HTTP server on loopback that also misbehaves, then benchmarks and
//! A7 testbenches on top of it.

use crate::common;
use common::mock_llm::{Fault, MockServer};
use common::{err, ok};

fn echo() -> MockServer {
    MockServer::start(|p| format!("echo: {p}"))
}

#[test]
fn the_three_wire_shapes_answer_and_count_tokens() {
    let s = echo();
    let out = ok(&format!(
        r#"
        let a = llm(#{{provider: "openai", base_url: "{o}", model: "shape-openai"}});
        let b = llm(#{{provider: "anthropic", base_url: "{u}", model: "shape-anthropic"}});
        let c = llm(#{{provider: "ollama", base_url: "{u}", model: "shape-ollama"}});
        print(a.complete("one two"));
        print(b.chat([#{{role: "system", content: "be brief"}}, #{{role: "user", content: "three"}}]));
        print(c.complete("four"));
        print(a.usage());
        "#,
        o = s.openai_url(),
        u = s.url()
    ));
    assert_eq!(out, "echo: one two\necho: three\necho: four\n#{\"completion_tokens\": 3, \"from_store\": 0, \"prompt_tokens\": 2, \"requests\": 1, \"retries\": 0}\n");
    assert_eq!(s.hits(), 3);
}

#[test]
fn stop_goes_to_each_provider_in_its_own_field_and_every_answer_is_cut_at_it() {
    // The server ignores `stop` (as a server may): the client cuts the answer all the same.
    let s = MockServer::start(|p| format!("module m; // {p}\nendmodule\nand then a testbench"));
    let out = ok(&format!(
        r#"
        let a = llm(#{{provider: "openai", base_url: "{o}", model: "stop-openai", stop: ["endmodule"]}});
        let b = llm(#{{provider: "anthropic", base_url: "{u}", model: "stop-anthropic", stop: "endmodule"}});
        let c = llm(#{{provider: "ollama", base_url: "{u}", model: "stop-ollama", stop: ["endmodule", "never"]}});
        print(a.complete("one"));
        print(b.complete("two"));
        print(c.complete("three"));
        print(a.complete("one"));
        "#,
        o = s.openai_url(),
        u = s.url()
    ));
    assert_eq!(
        out, "module m; // one\n\nmodule m; // two\n\nmodule m; // three\n\nmodule m; // one\n\n",
        "cut before the stop string, the recorded answer too"
    );
    let bodies = s.bodies();
    assert_eq!(bodies.len(), 3, "the fourth answer came from the store");
    assert_eq!(bodies[0]["stop"], serde_json::json!(["endmodule"]));
    assert_eq!(
        bodies[1]["stop_sequences"],
        serde_json::json!(["endmodule"])
    );
    assert_eq!(
        bodies[2]["options"]["stop"],
        serde_json::json!(["endmodule", "never"])
    );
    let e = err(r#"llm(#{provider: "openai", model: "m", stop: ["endmodule", ""]})"#);
    assert!(e.contains("stop[1] is empty"), "{e}");
    let e = err(r#"llm(#{provider: "openai", model: "m", stop: 3})"#);
    assert!(e.contains("stop"), "{e}");
}

#[test]
fn transient_faults_are_retried() {
    let s = echo();
    s.push_fault(Fault::TooMany { retry_after_s: 0 });
    s.push_fault(Fault::ServerError);
    s.push_fault(Fault::Malformed);
    s.push_fault(Fault::DropMidBody);
    s.push_fault(Fault::Slow { ms: 3000 });
    let out = ok(&format!(
        r#"let m = llm(#{{base_url: "{}", model: "flaky", timeout_s: 1.0, retries: 6}});
        print(m.complete("survive"));
        print(m.usage().retries);"#,
        s.openai_url()
    ));
    assert_eq!(out, "echo: survive\n5\n");
    assert_eq!(s.hits(), 6, "five faults, then the answer");
}

#[test]
fn exhausted_retries_and_client_errors_are_reported_clearly() {
    let s = echo();
    for _ in 0..3 {
        s.push_fault(Fault::ServerError);
    }
    let e = common::eval_in_data(&format!(
        r#"llm(#{{base_url: "{}", model: "down", retries: 2}}).complete("x")"#,
        s.openai_url()
    ))
    .unwrap_err();
    assert!(
        e.contains("answered 500 Internal Server Error") && e.contains("gave up after 3 tries"),
        "{e}"
    );

    // A 400 is not retried, and a key from the environment never shows in the message.
    s.push_fault(Fault::BadRequest);
    // common::in_process_env set RTLAB_TEST_SECRET_KEY to "sk-very-secret-123".
    let before = s.hits();
    let e = common::eval_in_data(&format!(r#"llm(#{{base_url: "{}", model: "bad", api_key_env: "RTLAB_TEST_SECRET_KEY"}}).complete("y")"#, s.openai_url())).unwrap_err();
    assert!(e.contains("answered 400 Bad Request"), "{e}");
    assert!(!e.contains("sk-very-secret"), "{e}");
    assert_eq!(s.hits() - before, 1, "no retry on 400");
}

#[test]
fn an_interrupted_batch_keeps_what_it_had_and_a_rerun_completes_it() {
    let s = echo();
    s.poison
        .lock()
        .unwrap()
        .extend(["prompt 3".to_string(), "prompt 7".to_string()]);
    let script = format!(
        r#"let m = llm(#{{base_url: "{}", model: "batchy", concurrency: 4, retries: 0}});
        let rows = [];
        for i in 0..10 {{ rows.push(#{{p: `prompt ${{i}}`}}); }}
        let df = from_records(rows);
        let out = m.complete_many(df, "p");
        print(out.column("completion"));"#,
        s.openai_url()
    );
    let e = common::eval_in_data(&script).unwrap_err();
    assert!(
        e.contains("2 of 10 requests failed") && e.contains("the 8 answered are recorded"),
        "{e}"
    );
    assert_eq!(s.hits(), 10);
    s.poison.lock().unwrap().clear();
    let out = ok(&script);
    assert!(
        out.contains("\"echo: prompt 3\"") && out.contains("\"echo: prompt 9\""),
        "{out}"
    );
    assert_eq!(s.hits(), 12, "the rerun sent only the two that had failed");
}

#[test]
fn recorded_responses_replay_offline_and_cassettes_travel() {
    let s = echo();
    ok(&format!(
        r#"print(llm(#{{base_url: "{}", model: "recorded-model"}}).complete("remember me"));"#,
        s.openai_url()
    ));
    let out = ok(
        r#"let r = llm(#{provider: "replay", model: "recorded-model"}); print(r.complete("remember me")); print(r.usage().from_store);"#,
    );
    assert_eq!(out, "echo: remember me\n1\n");
    let e = common::eval_in_data(
        r#"llm(#{provider: "replay", model: "recorded-model"}).complete("never asked")"#,
    )
    .unwrap_err();
    assert!(e.contains("replay: no recorded response"), "{e}");

    // Export, then replay from a fresh workspace in another process.
    let dir = tempfile::tempdir().unwrap();
    let cassette = dir.path().join("cassette.jsonl");
    ok(&format!(
        r#"print(export_cassette("{}") > 0);"#,
        cassette.display()
    ));
    std::fs::write(dir.path().join("replay.rhai"), format!("import_cassette(\"{}\");\nprint(llm(#{{provider: \"replay\", model: \"recorded-model\"}}).complete(\"remember me\"));", cassette.display())).unwrap();
    let out = common::rtlab()
        .current_dir(dir.path())
        .env("RTLAB_HOME", dir.path().join("fresh"))
        .args(["run", "replay.rhai"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "echo: remember me\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A "model" that answers each VerilogEval problem with its reference, found by the prompt text.
fn reference_model(mutate: bool) -> MockServer {
    let dir = common::repo_root().join("data/verilog-eval-v2");
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(id) = name.strip_suffix("_prompt.txt") {
            let prompt = std::fs::read_to_string(entry.path()).unwrap();
            let reference = std::fs::read_to_string(dir.join(format!("{id}_ref.sv")))
                .unwrap()
                .replace("module RefModule", "module TopModule");
            problems.push((prompt.trim_end().to_string(), reference));
        }
    }
    MockServer::start(move |p| {
        let code = problems
            .iter()
            .find(|(prompt, _)| p.contains(prompt.as_str()))
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        // The mutated model swaps the first `&` for `|` (or `+` for `-`), a typical near miss.
        let code = if mutate {
            code.replacen(" & ", " | ", 1).replacen(" + ", " - ", 1)
        } else {
            code
        };
        format!("Here is the module:\n```verilog\n{code}\n```\n")
    })
}

#[test]
fn a_model_answering_with_the_references_scores_155_of_156() {
    let s = reference_model(false);
    let out = ok(&format!(
        r#"let m = llm(#{{base_url: "{}", model: "reference-oracle", concurrency: 8}});
        let problems = load_verilog_eval("verilog-eval-v2");
        let run = benchmark(m, problems, #{{n: 1, k: [1], name: "oracle"}});
        print(run.problems.filter(col("c") == 1).len());
        print(run.summary["pass@1"]);
        print(run.problems.filter(col("c") == 0).column("task_id"));
        print(expect(run, #{{"pass@1": 0.98, functional: 0.99}}));
        print(runs().filter(col("name") == "oracle").len() >= 1);"#,
        s.openai_url()
    ));
    assert_eq!(
        out,
        "155\n0.9936\n[\"Prob099_m2014_q6c\"]\n✅ functional: 0.994 ≥ 0.99\n✅ pass@1: 0.994 ≥ 0.98\ntrue\ntrue\n"
    );
}

#[test]
fn a_model_answering_with_mutants_scores_what_the_verifier_says_of_each() {
    let s = reference_model(true);
    let out = ok(&format!(
        r#"let m = llm(#{{base_url: "{}", model: "mutant-oracle", concurrency: 8}});
        let problems = load_verilog_eval("verilog-eval-v2").head(40);
        let run = benchmark(m, problems, #{{n: 1, k: [1], name: "mutants"}});
        let agree = 0;
        for r in run.samples.to_records() {{
            let p = problems.filter(col("task_id") == r.task_id).row(0);
            let direct = verify(extract_code(r.completion), #{{testbench: p.test, reference: p.ref}});
            if direct.sim_status == r.sim_status {{ agree += 1; }}
        }}
        print(agree);
        print(run.summary["pass@1"] < 1.0);
        let base = benchmark(llm(#{{base_url: "{}", model: "mutant-oracle", concurrency: 8}}), problems, #{{n: 1, k: [1], name: "again"}});
        print(compare(run, base).filter(col("functional_delta") != 0.0).len());"#,
        s.openai_url(),
        s.openai_url()
    ));
    assert_eq!(out, "40\ntrue\n0\n");
}

#[test]
fn samples_and_pass_at_k_with_n_greater_than_one() {
    let s = echo();
    let out = ok(&format!(
        r#"let m = llm(#{{base_url: "{}", model: "sampler"}});
        let df = from_records([#{{p: "a"}}, #{{p: "b"}}]);
        let out = m.complete_many(df, "p", #{{n: 3, out: "answer"}});
        print(out.len()); print(out.column("sample"));"#,
        s.openai_url()
    ));
    assert_eq!(out, "6\n[0, 1, 2, 0, 1, 2]\n");
}

pub(crate) const TOGGLE_RTL: &str =
    "module toggle_fsm(input clk, input rst_n, input go, output reg state);
  always @(posedge clk or negedge rst_n)
    if (!rst_n) state <= 1'b0;
    else if (go) state <= ~state;
endmodule";

pub(crate) const GOOD_TB: &str = "module testbench;
  reg clk = 0, rst_n = 0, go = 0;
  wire state;
  integer errors = 0;
  toggle_fsm dut(.clk(clk), .rst_n(rst_n), .go(go), .state(state));
  always #5 clk = ~clk;
  initial begin
    #12 rst_n = 1;
    if (state !== 1'b0) errors = errors + 1;
    go = 1; @(posedge clk); #1 if (state !== 1'b1) errors = errors + 1;
    @(posedge clk); #1 if (state !== 1'b0) errors = errors + 1;
    go = 0; @(posedge clk); #1 if (state !== 1'b0) errors = errors + 1;
    go = 1; @(posedge clk); #1 if (state !== 1'b1) errors = errors + 1;
    rst_n = 0; #1 if (state !== 1'b0) errors = errors + 1;
    if (errors == 0) $display(\"TEST PASSED\"); else $display(\"TEST FAILED\");
    $finish;
  end
endmodule";

const LAZY_TB: &str = "module testbench;
  reg clk = 0, rst_n = 0, go = 0;
  wire state;
  toggle_fsm dut(.clk(clk), .rst_n(rst_n), .go(go), .state(state));
  initial begin #20 $display(\"TEST PASSED\"); $finish; end
endmodule";

#[test]
fn a7_testbenches_are_accepted_only_if_they_kill_mutants() {
    let good = MockServer::start(|_| format!("```systemverilog\n{GOOD_TB}\n```"));
    let lazy = MockServer::start(|_| format!("Sure!\n```\n{LAZY_TB}\n```"));
    let out = ok(&format!(
        r#"let rtl = `{TOGGLE_RTL}`;
        let g = a7_testbench("a toggle FSM", rtl, #{{model: llm(#{{base_url: "{}", model: "a7-good"}}), category: "fsm_2state"}});
        print(`${{g.passed}} ${{g.accepted}} ${{g.killed}}/${{g.mutants}}`);
        let l = a7_testbench("a toggle FSM", rtl, #{{model: llm(#{{base_url: "{}", model: "a7-lazy"}})}});
        print(`${{l.passed}} ${{l.accepted}} ${{l.reason}}`);"#,
        good.openai_url(),
        lazy.openai_url()
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("true true "), "{out}");
    let (killed, total) = lines[0]
        .rsplit(' ')
        .next()
        .unwrap()
        .split_once('/')
        .unwrap();
    assert!(
        killed.parse::<usize>().unwrap() >= 2 && total.parse::<usize>().unwrap() >= 2,
        "{out}"
    );
    assert!(
        lines[1].starts_with("true false the testbench passes the RTL but fails only 0 of"),
        "{out}"
    );
}

#[test]
fn bench_from_the_shell() {
    let s = reference_model(false);
    let dir = tempfile::tempdir().unwrap();
    let problems = dir.path().join("problems");
    std::fs::create_dir(&problems).unwrap();
    for entry in std::fs::read_dir(common::repo_root().join("data/verilog-eval-v2"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("Prob00") {
            std::fs::copy(entry.path(), problems.join(&name)).unwrap();
        }
    }
    let out = common::rtlab()
        .current_dir(dir.path())
        .env("RTLAB_HOME", dir.path().join(".rtlab"))
        .args([
            "bench",
            "--model",
            &s.openai_url(),
            "--problems",
            "problems",
            "-n",
            "2",
            "--temperature",
            "0.8",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("run 1: default\n"), "{stdout}");
    assert!(
        stdout.contains("\"pass@1\": 1.0")
            && stdout.contains("\"pass@2\": 1.0")
            && stdout.contains("problems: 9,"),
        "{stdout}"
    );
    assert_eq!(s.hits(), 18, "9 problems × 2 samples");
}

/// The exact two-sided McNemar p-value, by integer binomial coefficients (independent of rtlab's
/// log-space sum): min(1, 2·Σ_{i ≤ min} C(d, i) / 2^d).
fn mcnemar_by_hand(a_only: u64, b_only: u64) -> f64 {
    let d = a_only + b_only;
    let choose = |n: u64, k: u64| -> u128 {
        (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i + 1) as u128)
    };
    let tail: u128 = (0..=a_only.min(b_only)).map(|i| choose(d, i)).sum();
    (2.0 * tail as f64 / 2f64.powi(d as i32)).min(1.0)
}

#[test]
fn compare_tests_the_oracle_against_its_mutants_as_mcnemar_and_the_bootstrap_say() {
    let oracle = reference_model(false);
    let mutants = reference_model(true);
    let out = ok(&format!(
        r#"let problems = load_verilog_eval("verilog-eval-v2").head(40);
        let a = benchmark(llm(#{{base_url: "{}", model: "mutant-oracle", concurrency: 8}}), problems, #{{n: 1, k: [1], name: "a"}});
        let b = benchmark(llm(#{{base_url: "{}", model: "reference-oracle", concurrency: 8}}), problems, #{{n: 1, k: [1], name: "b"}});
        let t = compare(a, b, #{{test: "mcnemar"}});
        print(`${{t.a_only}} ${{t.b_only}} ${{t.p_value}} ${{t.delta}} ${{t.problems}}`);
        let same = compare(a.id, b.id, #{{test: "mcnemar"}});
        print(same.p_value == t.p_value);
        let boot = compare(a, b, #{{test: "paired_bootstrap", seed: 1}});
        print(`${{boot.delta == t.delta}} ${{boot.ci_low > 0.0}} ${{boot.p_value < 0.01}}`);
        print(expect(t, #{{relative: 0.2, p_value: 0.05}}));
        print(expect(compare(b, b, #{{test: "mcnemar"}}), #{{p_value: 0.05}}));
        print(a.summary["pass@1_ci"]);
        print(a.summary.solvable + a.summary.unsolvable);
        print(a.samples.filter(col("failure") == "functional").len() == a.summary.failure_kinds.functional);"#,
        mutants.openai_url(),
        oracle.openai_url()
    ));
    let lines: Vec<&str> = out.lines().collect();
    let fields: Vec<&str> = lines[0].split(' ').collect();
    let (a_only, b_only): (u64, u64) = (fields[0].parse().unwrap(), fields[1].parse().unwrap());
    let p: f64 = fields[2].parse().unwrap();
    assert_eq!(
        a_only, 0,
        "the mutants never pass where the references fail: {out}"
    );
    assert!(b_only >= 5, "the mutations break many problems: {out}");
    assert!(
        (p - mcnemar_by_hand(a_only, b_only)).abs() < 1e-12,
        "{p} vs by hand: {out}"
    );
    let delta: f64 = fields[3].parse().unwrap();
    assert!((delta - b_only as f64 / 40.0).abs() < 1e-12, "{out}");
    assert_eq!(fields[4], "40");
    assert_eq!(
        lines[1], "true",
        "a recorded run id gives the same test: {out}"
    );
    assert_eq!(lines[2], "true true true", "{out}");
    assert!(
        lines[3].starts_with("✅ p_value: 0.0") && lines[4].starts_with("✅ relative: "),
        "{out}"
    );
    assert_eq!(lines[5], "true");
    assert!(lines[6].starts_with("❌ p_value: 1.0000 ≥ 0.05"), "{out}");
    assert_eq!(lines[7], "false");
    let ci: Vec<f64> = lines[8]
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(ci[0] < ci[1] && ci[0] >= 0.0 && ci[1] <= 1.0, "{out}");
    assert_eq!(lines[9], "40");
    assert_eq!(lines[10], "true", "{out}");
}

#[test]
fn a_paired_test_refuses_runs_over_different_problems_and_unknown_tests() {
    let oracle = reference_model(false);
    let e = err(&format!(
        r#"let problems = load_verilog_eval("verilog-eval-v2");
        let m = llm(#{{base_url: "{}", model: "reference-oracle"}});
        let a = benchmark(m, problems.head(3), #{{n: 1, k: [1]}});
        let b = benchmark(m, problems.head(4), #{{n: 1, k: [1]}});
        compare(a, b, #{{test: "mcnemar"}})"#,
        oracle.openai_url()
    ));
    assert!(
        e.contains("the same problems in both runs: A has 3, B has 4, 3 shared"),
        "{e}"
    );
    let e = err(&format!(
        r#"let problems = load_verilog_eval("verilog-eval-v2").head(2);
        let a = benchmark(llm(#{{base_url: "{}", model: "reference-oracle"}}), problems, #{{n: 1, k: [1]}});
        compare(a, a, #{{test: "t-test"}})"#,
        oracle.openai_url()
    ));
    assert!(
        e.contains("test \"t-test\": use \"paired_bootstrap\" or \"mcnemar\""),
        "{e}"
    );
}

/// A judge that answers well, in prose, unparseably, out of range or without a reason; told what
/// was wrong, it fixes the prose and the missing reason but not the other two.
fn moody_judge() -> MockServer {
    MockServer::start(|last| {
        if last.contains("That was not a valid verdict") {
            if last.contains("no JSON object") {
                return r#"{"score": 2, "reason": "now in JSON"}"#.into();
            }
            if last.contains("no \"reason\"") {
                return r#"{"score": 3, "reason": "added"}"#.into();
            }
            if last.contains("outside the scale") {
                return r#"{"score": 7, "reason": "still too high"}"#.into();
            }
            return "{score: high}".into();
        }
        let response = last.split("## Response\n").nth(1).unwrap_or("");
        if response.starts_with("good") {
            r#"Verdict: {"score": 5, "reason": "correct and complete"}"#.into()
        } else if response.starts_with("prose") {
            "I would give it a 4 out of 5.".into()
        } else if response.starts_with("broken") {
            "{score: high}".into()
        } else if response.starts_with("range") {
            r#"{"score": 9, "reason": "excellent"}"#.into()
        } else {
            r#"{"score": 3}"#.into()
        }
    })
}

#[test]
fn the_judge_retries_malformed_verdicts_reports_the_ones_it_never_got_and_replays_from_the_store() {
    let s = moody_judge();
    let script = format!(
        r#"let rows = from_records([
            #{{prompt: "p1", completion: "good answer"}}, #{{prompt: "p2", completion: "prose answer"}},
            #{{prompt: "p3", completion: "broken answer"}}, #{{prompt: "p4", completion: "range answer"}},
            #{{prompt: "p5", completion: "terse answer"}}]);
        let judged = judge(llm(#{{base_url: "{}", model: "judge"}}), rows, #{{rubric: "Is the Verilog correct?", scale: [1, 5]}});
        for r in judged.to_records() {{ print(`${{r.completion}}|${{r.judge_score}}|${{r.judge_attempts}}|${{r.judge_error}}`); }}"#,
        s.openai_url()
    );
    let first = ok(&script);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(
        lines[0],
        "judge: 5 rows, 3 scored (mean 3.33 on 1..5); 2 without a valid verdict after 3 attempts: their judge_score is null, judge_error says why"
    );
    assert_eq!(lines[1], "good answer|5.0|1|");
    assert_eq!(lines[2], "prose answer|2.0|2|", "fixed on the retry");
    assert!(
        lines[3].starts_with("broken answer||3|the JSON does not parse"),
        "{first}"
    );
    assert_eq!(
        lines[4], "range answer||3|score 7 is outside the scale 1 to 5",
        "out of range is never clamped"
    );
    assert_eq!(lines[5], "terse answer|3.0|2|");
    let hits = s.hits();
    assert_eq!(
        hits,
        5 + 4 + 2,
        "first attempts, then retries of the four malformed, then of the two"
    );
    assert_eq!(ok(&script), first, "a rerun replays every verdict");
    assert_eq!(s.hits(), hits, "from the store, retries included");

    let e = err(&format!(
        r#"judge(llm(#{{base_url: "{}", model: "judge"}}), from_records([#{{prompt: "p", completion: "c"}}]), #{{scale: [1, 5]}})"#,
        s.openai_url()
    ));
    assert!(e.contains("judge: pass rubric"), "{e}");
    let e = err(&format!(
        r#"judge(llm(#{{base_url: "{}", model: "judge"}}), from_records([#{{prompt: "p", completion: "c"}}]), #{{rubric: "r", scale: [5, 1]}})"#,
        s.openai_url()
    ));
    assert!(
        e.contains("judge: scale must be two integers [low, high] with low < high"),
        "{e}"
    );
    let e = err(&format!(
        r#"judge(llm(#{{base_url: "{}", model: "judge"}}), from_records([#{{prompt: "p", answer: "c"}}]), #{{rubric: "r"}})"#,
        s.openai_url()
    ));
    assert!(e.contains("judge:") && e.contains("completion"), "{e}");
}
