//! Experiments you can trust: a split keeps a problem on one side, decontamination finds a copied
//! reference whatever its signals are called and keeps rows that only share keywords, a local
//! decoder ends at its stop string, a benchmark refuses an adapter trained on its problems, and long
//! work reports progress in a log.

use crate::common;
use common::{err, ok, rtlab, Run};

/// Prob035's reference (a counter from 1 to 10), pasted into a training row with every signal and
/// the module renamed, `wire` added to its inputs, reformatted and commented.
const COPIED_PROB035: &str = r#"// a counter I wrote
module ten (input wire ck, input wire rst,
            output reg [3:0] value);
always @(posedge ck) if (rst || value == 10) value <= 1;   // wrap
                     else value <= value+1;
endmodule"#;

#[test]
fn a_split_by_task_keeps_every_sample_of_a_problem_on_one_side() {
    let out = ok(r#"
        let rows = [];
        for t in 0..10 { for s in 0..3 { rows.push(#{task_id: `t${t}`, sample: s}); } }
        let df = from_records(rows);
        let s = df.split(#{by: "task_id", test: 0.3, seed: 5});
        let test_ids = s.test.column("task_id");
        print(s.train.len());
        print(s.test.len());
        print(s.train.column("task_id").filter(|id| test_ids.contains(id)).len());
        let again = df.shuffle(9).split(#{by: "task_id", test: 0.3, seed: 5});
        print(again.test.column("task_id").sort() == test_ids.sort());
        print(df.split(#{by: "task_id", test: 4, seed: 5}).test.len());
    "#);
    assert_eq!(
        out, "21\n9\n0\ntrue\n12\n",
        "3 of 10 tasks, all 3 samples each; the same split whatever the row order"
    );
}

#[test]
fn a_split_with_bad_options_says_what_to_pass() {
    let df = r#"let df = from_records([#{task_id: "a"}, #{task_id: "b"}, #{task_id: ()}]);"#;
    let e = err(&format!("{df} df.split(#{{test: 0.5}})"));
    assert!(e.contains("split: pass #{by: \"task_id\"}"), "{e}");
    let e = err(&format!("{df} df.split(#{{by: \"task_id\"}})"));
    assert!(e.contains("split: pass test"), "{e}");
    let e = err(&format!("{df} df.split(#{{by: \"task_id\", test: 1.5}})"));
    assert!(e.contains("test = 1.5"), "{e}");
    let e = err(&format!("{df} df.split(#{{by: \"task_id\", test: 1}})"));
    assert!(e.contains("row 2 has no \"task_id\""), "{e}");
    let e = err(&format!(
        "{df} df.head(2).split(#{{by: \"task_id\", test: 3}})"
    ));
    assert!(e.contains("3 groups but there are 2"), "{e}");
    let e = err(&format!(
        "{df} df.split(#{{by: \"task_id\", test: 1, sed: 2}})"
    ));
    assert!(e.contains("sed"), "{e}");
}

#[test]
fn decontaminate_drops_a_renamed_copy_of_a_reference_and_keeps_rows_that_share_keywords() {
    let out = ok(&format!(
        r#"
        let bench = load_verilog_eval("verilog-eval-v2");
        let rows = from_records([
            #{{instruction: "A decade counter.", output: `{COPIED_PROB035}`}},
            #{{instruction: "Add 3 to a 4-bit input, saturating at 15.", output: "module sat3(input [3:0] x, output [3:0] y);\n  assign y = (x > 4'd12) ? 4'd15 : x + 4'd3;\nendmodule"}},
            #{{instruction: "A 2-to-1 multiplexer.", output: "module mux(input a, input b, input s, output y);\n  assign y = s ? b : a;\nendmodule"}},
        ]);
        let kept = rows.decontaminate(bench);
        print(kept.column("instruction"));
        let o = overlap(rows, bench);
        print(`${{o.len()}} ${{o.row(0).row}} ${{o.row(0).task_id}}`);
        "#
    ));
    let lines: Vec<&str> = out.lines().collect();
    // The multiplexer is dropped too: it is Prob022_mux2to1's design, whatever its names.
    assert!(
        lines[0].starts_with("decontaminate: dropped 2 of 3 rows"),
        "{out}"
    );
    assert!(
        lines[0].contains("Prob022_mux2to1: 1, Prob035_count1to10: 1"),
        "{out}"
    );
    assert_eq!(lines[1], r#"["Add 3 to a 4-bit input, saturating at 15."]"#);
    assert_eq!(lines[2], "2 0 Prob035_count1to10");
}

#[test]
fn the_bundled_rtlcoder_rows_lose_only_the_designs_that_are_a_held_out_problem() {
    // The learning experiment's decontamination, pinned: RTLCoder against the held-out half of
    // VerilogEval v2 (seed 20261206) loses the few rows that are one of its trivial designs (an AND
    // gate, a 2-to-1 mux), not the hundreds that share a port list or a reset branch.
    let out = ok(r#"
        let held_out = load_verilog_eval("verilog-eval-v2").split(#{by: "task_id", test: 0.5, seed: 20261206}).test;
        let rtl = load_jsonl("rtlcoder_sample.jsonl");
        print(rtl.decontaminate(held_out).len());
    "#);
    assert_eq!(out.lines().last(), Some("1304"), "{out}");
}

#[test]
fn decontaminate_with_bad_options_names_them() {
    let e = err(
        r#"from_records([#{x: "a"}]).decontaminate(from_records([#{y: "b"}]), #{cols: ["nope"]})"#,
    );
    assert!(e.contains("no column \"nope\""), "{e}");
    let e = err(r#"from_records([#{x: "a"}]).decontaminate(from_records([#{y: "b"}]), #{n: 0})"#);
    assert!(e.contains("`n`") || e.contains(" n "), "{e}");
    let e = err(r#"from_records([#{x: 1}]).decontaminate(from_records([#{y: 2}]))"#);
    assert!(e.contains("no string columns"), "{e}");
}

/// A tiny model in `dir` and a script that trains an adapter on the given rows into `out`.
fn tiny_adapter(dir: &std::path::Path, rows: &str, out: &str) -> String {
    format!(
        r#"create_tiny_model("{d}/tiny", #{{hidden: 32, layers: 1, seed: 1}});
        let run = train_lora(#{{base: "{d}/tiny", data: {rows}, out: "{d}/{out}", r: 2, epochs: 1,
            batch_size: 1, grad_accum: 1, max_len: 600, on_too_long: "skip"}});"#,
        d = dir.display()
    )
}

#[test]
fn a_benchmark_refuses_an_adapter_trained_on_one_of_its_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().display();
    let problems = r#"let problems = load_verilog_eval("verilog-eval-v2").filter(col("task_id").is_in(["Prob001_zero", "Prob035_count1to10", "Prob050_kmap1"]));"#;
    // The training row is Prob035's reference with its signals renamed.
    let rows =
        format!(r#"from_records([#{{instruction: "a counter", output: `{COPIED_PROB035}`}}])"#);
    let script = format!(
        r#"{problems}
        {train}
        let model = llm(#{{provider: "local", model: "{d}/tiny", adapter: run.adapter, max_tokens: 2}});"#,
        train = tiny_adapter(tmp.path(), &rows, "leaky"),
    );
    let e = err(&format!("{script} benchmark(model, problems, #{{n: 1}})"));
    assert!(
        e.contains("trained on 1 of these problems (Prob035_count1to10)")
            && e.contains("allow_overlap: true"),
        "{e}"
    );
    let out = ok(&format!(
        r#"{script}
        let scored = benchmark(model, problems, #{{n: 1, allow_overlap: true}});
        print(scored.summary.trained_on);
        print(benchmark(model, problems.filter(col("task_id") != "Prob035_count1to10"), #{{n: 1}}).summary.problems);
        // A DPO adapter that starts from the leaky one remembers its data.
        let pairs = from_records([#{{prompt: "an inverter", chosen: "assign y = ~a;", rejected: "assign y = a;"}}]);
        let dpo = train_dpo(#{{base: "{d}/tiny", adapter: run.adapter, pairs: pairs, out: "{d}/dpo", epochs: 1,
            batch_size: 1, grad_accum: 1, max_len: 64}});
        let after = llm(#{{provider: "local", model: "{d}/tiny", adapter: dpo.adapter, max_tokens: 2}});
        try {{ benchmark(after, problems, #{{n: 1}}); print("scored"); }} catch (e) {{ print(e.contains("Prob035_count1to10")); }}
        "#
    ));
    // (Its first line says the leaky run was found finished: the refused benchmark above trained it.)
    assert!(
        out.ends_with("[\"Prob035_count1to10\"]\n2\ntrue\n"),
        "{out}"
    );
}

#[test]
fn the_local_decoder_ends_an_answer_before_its_stop_string() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&format!(
        r#"create_tiny_model("{d}/tiny", #{{hidden: 32, layers: 1, seed: 3}});
        let m = load_model("{d}/tiny", #{{}});
        let long = m.generate("abc", #{{max_tokens: 30, temperature: 1.0, seed: 4}});
        let stop = long.sub_string(6, 2);
        let cut = m.generate("abc", #{{max_tokens: 30, temperature: 1.0, seed: 4, stop: [stop]}});
        print(long.index_of(stop) == cut.len());
        print(long.starts_with(cut));
        let client = llm(#{{provider: "local", model: "{d}/tiny", max_tokens: 30, temperature: 1.0, stop: stop}});
        print(!client.complete("abc").contains(stop));
        "#,
        d = tmp.path().display()
    ));
    assert_eq!(out, "true\ntrue\ntrue\n", "{out}");
}

#[test]
fn a_training_run_in_a_log_prints_progress_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("train.rhai");
    std::fs::write(
        &script,
        format!(
            r#"create_tiny_model("{d}/tiny", #{{hidden: 32, layers: 1, seed: 1}});
            let rows = []; for i in 0..20 {{ rows.push(#{{instruction: `gate ${{i}}`, output: "assign y = a & b;"}}); }}
            let run = train_lora(#{{base: "{d}/tiny", data: from_records(rows), out: "{d}/run", r: 2, epochs: 1,
                batch_size: 1, grad_accum: 1}});
            print(run.steps);"#,
            d = tmp.path().display()
        ),
    )
    .unwrap();
    // stderr is a pipe here, as in CI, a Slurm job or nohup: no bar, but a line per 10%.
    let r = Run::from(
        rtlab()
            .args(["run", "--no-cache"])
            .arg(&script)
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("progress: train "))
        .collect();
    assert_eq!(lines.len(), 10, "{}", r.stderr);
    assert!(
        lines[9].starts_with("progress: train 20/20  loss "),
        "{}",
        lines[9]
    );
    assert!(
        lines[9].contains(" tok/s  elapsed ") && lines[9].ends_with(" s"),
        "{}",
        lines[9]
    );
}

#[test]
fn benchmark_options_for_stop_and_overlap_are_checked_before_any_work() {
    let setup = r#"let m = llm(#{provider: "replay", model: "nobody"});
        let p = load_verilog_eval("verilog-eval-v2").head(1);"#;
    let e = err(&format!(
        "{setup} benchmark(m, p, #{{allow_overlap: \"yes\"}})"
    ));
    assert!(e.contains("allow_overlap"), "{e}");
    let e = err(&format!("{setup} benchmark(m, p, #{{stop: 5}})"));
    assert!(e.contains("stop"), "{e}");
}
