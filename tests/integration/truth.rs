//! What rtlab says is true, and nothing is lost without a word: a missing tool never raises a score,
//! a refused store write is reported, a bad option is named, a cell reruns when what it read changed,
//! paths rtlab returns work when handed back, and the bundled data is what it says it is.

use crate::common;
use common::{err, ok, repo_root, rtlab, Run};
use std::path::Path;

/// The V3 plan's buggy counter: `en` unused, `q` undriven.
const BUGGY_COUNTER: &str = r#"module counter_8bit(input clk, input rst, input en, output [7:0] q);
  reg [7:0] count_reg;
  always @(posedge clk) begin
    if (rst) count_reg <= 8'd0;
    else count_reg <= count_reg + 1;
  end
endmodule"#;

/// A directory on PATH holding only iverilog and vvp: a machine without Yosys and Verilator.
fn path_with_only_iverilog(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["iverilog", "vvp"] {
        let found =
            which(tool).unwrap_or_else(|| panic!("{tool} must be installed (.ci/run does)"));
        std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
    }
    bin.display().to_string()
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn run_script(dir: &Path, script: &str, envs: &[(&str, &str)], args: &[&str]) -> Run {
    std::fs::write(dir.join("t.rhai"), script).unwrap();
    let mut cmd = rtlab();
    cmd.current_dir(dir)
        .env("RTLAB_HOME", dir.join(".rtlab"))
        .args(["run"])
        .args(args)
        .arg("t.rhai");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    Run::from(cmd.output().unwrap())
}

#[test]
fn the_buggy_counter_scores_below_the_gold_bar_with_every_tool() {
    let out = ok(&format!(
        "let r = verify(`{BUGGY_COUNTER}`); print(r.score); print(r.stages);"
    ));
    // (syntax 0.2 + synth 0.2 + I/O 0.2 × 0 + lint 0.1) / 0.7
    assert_eq!(out, "0.7143\n[\"syntax\", \"synth\", \"lint\"]\n");
}

#[test]
fn a_missing_tool_is_an_error_that_names_it_never_a_higher_score() {
    let dir = tempfile::tempdir().unwrap();
    let path = path_with_only_iverilog(dir.path());
    let r = run_script(
        dir.path(),
        &format!("let r = verify(`{BUGGY_COUNTER}`); print(r.score);"),
        &[("PATH", &path)],
        &[],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("the synth stage needs yosys, which is not installed (run `rtlab doctor`); install it with `sudo apt-get install -y yosys`, or leave the stage out on purpose with stages: [\"syntax\", \"sim\"]"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stdout.contains("1.0"),
        "no score was printed: {}",
        r.stdout
    );
    // The same for a frame: nothing is verified, nothing is stored.
    std::fs::write(
        dir.path().join("v2.jsonl"),
        "{\"output\": \"module m(input a, output y); assign y = a; endmodule\"}\n",
    )
    .unwrap();
    let r = run_script(
        dir.path(),
        "let df = load_jsonl(\"v2.jsonl\"); df.verify(#{code: \"output\"});",
        &[("PATH", &path)],
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("needs yosys"), "{}", r.stderr);
    // Leaving the stages out on purpose: the score covers exactly the stages chosen, and says so.
    let r = run_script(
        dir.path(),
        &format!(
            "let r = verify(`{BUGGY_COUNTER}`, #{{stages: [\"syntax\"]}}); print(r.stages); print(r.score);"
        ),
        &[("PATH", &path)],
        &[],
    );
    assert_eq!(r.stdout, "[\"syntax\"]\n1.0\n", "{}", r.stderr);
}

#[test]
fn verilog_evals_out_always_comb_reference_is_read_as_written() {
    // Prob058's reference has an output named `out_always_comb`: a text replace of `always_comb`
    // broke it (synth_ok false, score 0.75, and its own differential testbench failed).
    let out = ok(r#"
        let p = load_verilog_eval("verilog-eval-v2").filter(col("task_id") == "Prob058_alwaysblock2").row(0);
        let code = rename_module(p.ref, "RefModule", "TopModule");
        let r = verify(code, #{testbench: p.test, reference: p.ref});
        print(`${r.synth_ok} ${r.score} ${r.sim_status}`);
        let d = verify(code, #{reference: p.ref});
        print(`${d.sim_status} ${d.score}`);
    "#);
    assert_eq!(out, "true 1.0 pass\npass 1.0\n");
}

#[test]
fn every_stage_has_its_own_timeout() {
    let out = ok(r#"
        let r = verify("module m(input a, output y); assign y = a; endmodule", #{timeouts: #{lint: 1}});
        print(r.timed_out); print(r.errors); print(r.score < 1.0);
    "#);
    assert_eq!(
        out,
        "[\"lint\"]\n[\"lint: verilator did not finish in 1 ms (raise timeouts.lint)\"]\ntrue\n"
    );
    assert!(first_line(err(
        r#"verify("module m; endmodule", #{timeouts: #{lint: "fast"}})"#
    ))
    .ends_with("verify: `timeouts.lint` must be a number, not \"fast\" (string)"));
    assert!(
        err(r#"verify("module m; endmodule", #{timeouts: #{simulation: 5}})"#)
            .contains("unknown key `simulation` in `timeouts`; valid keys: syntax, synth, lint, sim, synth_full")
    );
}

/// The first line of an error, without the source excerpt.
fn first_line(e: String) -> String {
    e.lines().next().unwrap_or_default().to_string()
}

#[test]
fn options_are_never_coerced_and_unknown_keys_name_the_valid_ones() {
    let model = r#"let m = llm(#{provider: "replay", model: "scripted"});"#;
    let cases = [
        (
            format!(r#"{model} complete_many(m, from_records([#{{p: "x"}}]), "p", #{{n: 2.5}})"#),
            "complete_many: option `n` must be an integer, not 2.5 (f64)",
        ),
        (
            format!(r#"{model} benchmark(m, load_verilog_eval("verilog-eval-v2").head(1), #{{k: "5"}})"#),
            "benchmark: option `k` must be an integer or an array of integers, not \"5\" (string)",
        ),
        (
            format!(r#"{model} benchmark(m, load_verilog_eval("verilog-eval-v2").head(1), #{{smaples: 5}})"#),
            "benchmark: unknown option `smaples`; valid options: allow_overlap, executor, k, n, name, stop, temperature, template, top_p",
        ),
        (
            format!(r#"{model} a7_testbench("spec", "module m; endmodule", #{{model: m, min_kill: 2}})"#),
            "a7_testbench: unknown option `min_kill`; valid options: category, executor, min_killed, model, mutants, template",
        ),
        (
            format!(r#"{model} complete_many(m, from_records([#{{p: "x"}}]), "p", #{{samples: 2}})"#),
            "complete_many: unknown option `samples`; valid options: n, out",
        ),
        (
            r#"llm(#{model: "x", max_tokens: 100.5})"#.to_string(),
            "llm: option `max_tokens` must be an integer, not 100.5 (f64)",
        ),
        (
            r#"llm(#{model: "x", timeout_s: -1})"#.to_string(),
            "llm: option `timeout_s` must be a number of seconds above 0, not -1",
        ),
        (
            r#"verify("module m; endmodule", #{seed: "1"})"#.to_string(),
            "verify: option `seed` must be an integer, not \"1\" (string)",
        ),
        (
            r#"verify("module m; endmodule", #{top: 3})"#.to_string(),
            "verify: option `top` must be a string, not 3 (i64)",
        ),
        (
            r#"from_records([#{a: 1}]).sort("a", #{descending: "yes"})"#.to_string(),
            "sort: option `descending` must be true or false, not \"yes\" (string)",
        ),
        (
            r#"load_jsonl("v2_sample.jsonl", #{on_bad: "skip"})"#.to_string(),
            "load_jsonl: unknown option `on_bad`; valid options: on_bad_line",
        ),
        (
            r#"preference_pairs(from_records([#{prompt: "p", completion: "c", score: "high"}]), #{})"#.to_string(),
            "preference_pairs: row 0: `score` is \"high\", not a number",
        ),
        (
            r#"classify_phase("yosys", #{matchin: "word"})"#.to_string(),
            "classify_phase: unknown option `matchin`; valid options: keywords, matching",
        ),
        (
            r#"rename_module("module m; endmodule", "m", "top -mevil")"#.to_string(),
            "rename_module: new_name \"top -mevil\" is not a Verilog identifier",
        ),
        (
            r#"router(#{fallback: 8})"#.to_string(),
            "router: option `fallback` must be a string, not 8 (i64)",
        ),
    ];
    for (code, expected) in cases {
        let e = first_line(err(&code));
        assert!(
            e.ends_with(expected),
            "{code}\n  gave: {e}\n  want: {expected}"
        );
    }
}

#[test]
fn a_refused_store_write_halfway_through_a_batch_is_reported_and_loses_nothing_saved() {
    let dir = tempfile::tempdir().unwrap();
    // 3 designs first (all saved), then 100 more: the store refuses every write once it holds 67
    // verdicts, so the batch's first transaction of 64 lands and its second, of 36, is refused.
    let designs = |from: usize, to: usize| {
        format!(
            r#"let rows = []; for i in {from}..{to} {{ rows.push(#{{code: `module m${{i}}(input a, output y); assign y = a; endmodule`}}); }}
            let v = from_records(rows).verify(#{{code: "code", stages: ["syntax"]}});
            print(v.filter(col("syntax_ok")).len());"#
        )
    };
    let first = run_script(dir.path(), &designs(0, 3), &[], &[]);
    assert_eq!(first.stdout, "3\n", "{}", first.stderr);
    let store = dir.path().join(".rtlab/store.sqlite");
    let db = rusqlite::Connection::open(&store).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON verify_results
         WHEN (SELECT COUNT(*) FROM verify_results) >= 67
         BEGIN SELECT RAISE(ABORT, 'refused: the disk is full'); END;",
    )
    .unwrap();
    let second = run_script(dir.path(), &designs(0, 103), &[], &[]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(second.stdout, "103\n", "every verdict is in the result");
    assert!(
        second.stderr.contains(&format!(
            "warning: 36 of 100 verdicts were not saved to the store {}",
            store.display()
        )) && second.stderr.contains("refused: the disk is full"),
        "{}",
        second.stderr
    );
    let count: i64 = db
        .query_row("SELECT COUNT(*) FROM verify_results", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 67, "the 3 earlier verdicts and the first 64 stay");
    // A rerun finds what was saved and verifies only the rest (without the notebook's cache, which
    // would restore the whole cell: its result holds every verdict).
    db.execute_batch("DROP TRIGGER refuse").unwrap();
    let third = run_script(dir.path(), &designs(0, 103), &[], &["--no-cache"]);
    assert!(
        third
            .stderr
            .contains("verify: 103 rows, 67 from the store, 36 verified"),
        "{}",
        third.stderr
    );
}

#[test]
fn two_processes_verify_into_one_store_at_once_and_each_verdict_lands_once() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"let rows = []; for i in 0..60 { rows.push(#{code: `module m${i}(input a, output y); assign y = ~a; endmodule`}); }
        let v = from_records(rows).verify(#{code: "code", stages: ["syntax"]});
        print(v.filter(col("syntax_ok")).len());"#;
    std::fs::write(dir.path().join("t.rhai"), script).unwrap();
    let spawn = || {
        rtlab()
            .current_dir(dir.path())
            .env("RTLAB_HOME", dir.path().join(".rtlab"))
            .args(["run", "--no-cache", "t.rhai"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let r = Run::from(child.wait_with_output().unwrap());
        assert_eq!((r.code, r.stdout.as_str()), (0, "60\n"), "{}", r.stderr);
        assert!(
            !r.stderr.contains("locked") && !r.stderr.contains("warning"),
            "{}",
            r.stderr
        );
    }
    let db = rusqlite::Connection::open(dir.path().join(".rtlab/store.sqlite")).unwrap();
    let count: i64 = db
        .query_row("SELECT COUNT(*) FROM verify_results", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 60);
    let version_rows: i64 = db
        .query_row("SELECT COUNT(*) FROM meta", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version_rows, 1, "one schema version, migrated once");
}

#[test]
fn a_cell_that_read_an_environment_variable_reruns_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let script = "// %% read\nlet mode = env(\"RTLAB_TEST_MODE\");\n// %% show\nprint(mode);\n";
    let args = ["--cache-min", "0"];
    let r = run_script(dir.path(), script, &[("RTLAB_TEST_MODE", "fast")], &args);
    assert_eq!(
        (r.stdout.as_str(), r.ran_cells()),
        ("fast\n", vec!["1 read".to_string(), "2 show".to_string()]),
        "{}",
        r.stderr
    );
    let r = run_script(dir.path(), script, &[("RTLAB_TEST_MODE", "fast")], &args);
    assert_eq!(
        r.cached_cells(),
        vec!["1 read".to_string(), "2 show".to_string()],
        "{}",
        r.stderr
    );
    let r = run_script(
        dir.path(),
        script,
        &[("RTLAB_TEST_MODE", "thorough")],
        &args,
    );
    assert_eq!(r.stdout, "thorough\n", "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "[1 read] environment variable RTLAB_TEST_MODE changed since the cached run: rerunning"
        ),
        "{}",
        r.stderr
    );
    // Unset is a change too.
    let r = run_script(dir.path(), script, &[], &args);
    assert_eq!(r.stdout, "\n", "{}", r.stderr);
}

#[test]
fn a_path_rtlab_returns_works_when_handed_back_from_the_repo_root_and_fresh_retrains() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("scripts")).unwrap();
    let script = r#"
        create_tiny_model("../out/base", #{seed: 1});
        let data = from_records([#{instruction: "Write inv", output: "module inv(input a, output y); assign y = ~a; endmodule"}]);
        let run = train_lora(#{base: "../out/base", data: data, out: "../out/adapter", r: 2, epochs: 1, batch_size: 1, grad_accum: 1});
        print(`cached: ${run.cached}`);
        let m = load_model("../out/base", #{adapter: run.adapter});
        print(m.to_string().contains("adapter"));
    "#;
    std::fs::write(dir.path().join("scripts/t.rhai"), script).unwrap();
    let run = |args: &[&str]| {
        Run::from(
            rtlab()
                .current_dir(dir.path())
                .env("RTLAB_HOME", dir.path().join(".rtlab"))
                .arg("run")
                .args(args)
                .arg("scripts/t.rhai")
                .output()
                .unwrap(),
        )
    };
    let r = run(&["--no-cache"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "cached: false\ntrue\n"),
        "{}",
        r.stderr
    );
    assert!(dir.path().join("out/adapter/adapter_config.json").is_file());
    let r = run(&["--no-cache"]);
    assert_eq!(
        r.stdout,
        format!(
            "train_lora: {} already holds this run (same base, data and options); pass fresh: true to train again\ncached: true\ntrue\n",
            dir.path().canonicalize().unwrap().join("out/adapter").display()
        ),
        "{}",
        r.stderr
    );
    let r = run(&["--fresh"]);
    assert_eq!(
        r.stdout, "cached: false\ntrue\n",
        "--fresh retrains: {}",
        r.stderr
    );
}

#[test]
fn the_bundled_sample_is_regenerated_byte_for_byte_by_its_script() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v2_sample.jsonl");
    let r = Run::from(
        rtlab()
            .current_dir(repo_root())
            .env("RTLAB_HOME", dir.path().join(".rtlab"))
            .args(["run", "--no-cache", "data/make_v2_sample.rhai"])
            .arg(&out)
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(repo_root().join("data/v2_sample.jsonl")).unwrap(),
        "data/v2_sample.jsonl is what data/make_v2_sample.rhai writes"
    );
}

#[test]
fn every_row_labelled_a_bug_fails_its_testbench_and_every_reference_passes() {
    let out = ok(r#"
        let df = load_jsonl("v2_sample.jsonl").filter(col("metadata.source") != "v3-plan");
        let v = df.verify(#{code: "output", testbench: "test", reference: "ref", stages: ["syntax", "sim"]});
        let bugs = v.filter(col("metadata.source") == "synthetic-bug");
        let good = v.filter(col("metadata.source") == "verilog-eval");
        print(`bugs: ${bugs.len()}, failing their testbench: ${bugs.filter(col("sim_status") == "mismatch").len()}`);
        // Every reference passes (Verilator simulates what iverilog 11 cannot).
        print(`references: ${good.len()}, passing: ${good.filter(col("sim_status") == "pass").len()}`);
        let same = 0;
        for r in bugs.to_records() { if r.output == rename_module(r.ref, "RefModule", "TopModule") { same += 1; } }
        print(`bugs identical to their reference: ${same}`);
    "#);
    assert_eq!(
        out,
        "bugs: 17, failing their testbench: 17\nreferences: 35, passing: 35\nbugs identical to their reference: 0\n"
    );
}

/// Runs `script` with a file-size limit of `kib` KiB (a full disk, as `ulimit -f` makes it).
fn run_limited(dir: &Path, script: &str, kib: u64, args: &[&str]) -> Run {
    std::fs::write(dir.join("t.rhai"), script).unwrap();
    let rtlab = env!("CARGO_BIN_EXE_rtlab");
    let extra = args.join(" ");
    Run::from(
        std::process::Command::new("bash")
            .current_dir(dir)
            .env("RTLAB_HOME", dir.join(".rtlab"))
            .arg("-c")
            .arg(format!("ulimit -f {kib}; exec {rtlab} run {extra} t.rhai"))
            .output()
            .unwrap(),
    )
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_previous_good_state_stays() {
    let dir = tempfile::tempdir().unwrap();
    // A good file first, then a write of about 3 MiB under a 1 MiB limit.
    std::fs::write(dir.path().join("out.jsonl"), "{\"good\": 1}\n").unwrap();
    std::fs::write(dir.path().join("sunk.jsonl"), "{\"good\": 2}\n").unwrap();
    let big = r#"let rows = []; for i in 0..30000 { rows.push(#{i: i, text: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}); }
        let df = from_records(rows);"#;
    let r = run_limited(
        dir.path(),
        &format!("{big}\ndf.save_jsonl(\"out.jsonl\");"),
        1024,
        &["--no-cache"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("out.jsonl") && r.stderr.contains("File too large"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap(),
        "{\"good\": 1}\n"
    );
    // The lazy writer too.
    std::fs::write(dir.path().join("big.jsonl"), "").unwrap();
    let r = run_limited(
        dir.path(),
        &format!("{big}\ndf.save_jsonl(\"big.jsonl\");"),
        8192,
        &["--no-cache"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run_limited(
        dir.path(),
        "scan_jsonl(\"big.jsonl\").sink_jsonl(\"sunk.jsonl\");",
        1024,
        &["--no-cache"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("sunk.jsonl") && r.stderr.contains("File too large"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("sunk.jsonl")).unwrap(),
        "{\"good\": 2}\n"
    );
    // A cache entry that does not fit is a warning; the run goes on and the next run recomputes.
    let r = run_limited(
        dir.path(),
        &format!("// %% big\n{big}\n// %% use\nprint(df.len());"),
        1024,
        &["--cache-min", "0"],
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "30000\n"), "{}", r.stderr);
    assert!(
        r.stderr.contains("warning: [1 big] could not be cached")
            && r.stderr.contains("File too large"),
        "{}",
        r.stderr
    );
    let r = run_limited(
        dir.path(),
        &format!("// %% big\n{big}\n// %% use\nprint(df.len());"),
        1 << 20,
        &["--cache-min", "0"],
    );
    assert_eq!(
        r.ran_cells().first().map(String::as_str),
        Some("1 big"),
        "{}",
        r.stderr
    );
    // The store: verdicts that do not fit are reported; the ones saved before stay.
    let designs = |n: usize| {
        format!(
            r#"let rows = []; for i in 0..{n} {{ rows.push(#{{code: `module m${{i}}(input a, output y); assign y = a; endmodule // ${{"x".pad(600, "x")}}`}}); }}
            print(from_records(rows).verify(#{{code: "code", stages: ["syntax"]}}).filter(col("syntax_ok")).len());"#
        )
    };
    let r = run_limited(dir.path(), &designs(3), 1 << 20, &["--no-cache"]);
    assert_eq!(r.stdout, "3\n", "{}", r.stderr);
    let store = dir.path().join(".rtlab/store.sqlite");
    let count = || -> i64 {
        rusqlite::Connection::open(&store)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM verify_results", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(), 3);
    let keys = || -> std::collections::BTreeSet<String> {
        let db = rusqlite::Connection::open(&store).unwrap();
        let mut stmt = db.prepare("SELECT key FROM verify_results").unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let before = keys();
    let r = run_limited(dir.path(), &designs(400), 256, &["--no-cache"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "400\n"), "{}", r.stderr);
    // "warning: N of 397 verdicts were not saved to the store ...": the first 3 came from the store.
    let warning = r
        .stderr
        .lines()
        .find(|l| l.contains("verdicts were not saved to the store"))
        .unwrap_or_else(|| panic!("no warning about unsaved verdicts: {}", r.stderr));
    let numbers: Vec<usize> = warning
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (not_saved, verified) = (numbers[0], numbers[1]);
    assert_eq!(verified, 397, "{warning}");
    assert!(not_saved > 0 && not_saved <= verified, "{warning}");
    let after = keys();
    assert!(before.is_subset(&after), "what was saved before stays");
    assert_eq!(
        after.len(),
        before.len() + verified - not_saved,
        "exactly the verdicts not reported as unsaved were kept: {warning}"
    );
    assert_eq!(count() as usize, after.len());
    // No temp file is left behind by the failed writes.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_kill_9_during_a_save_leaves_the_old_file_or_the_whole_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = "{\"good\": 1}\n";
    let script = r#"let rows = []; for i in 0..100000 { rows.push(#{i: i, text: "yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"}); }
        let df = from_records(rows);
        print("ready");
        for k in 0..20 { df.save_jsonl("out.jsonl"); }"#;
    std::fs::write(dir.path().join("t.rhai"), script).unwrap();
    let mut outcomes = std::collections::BTreeSet::new();
    // The temp file a save writes before renaming it over `out.jsonl`: while one exists with some
    // bytes in it, a save is in the middle of its write.
    let partial_temp = |dir: &std::path::Path| {
        std::fs::read_dir(dir).unwrap().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with(".tmp")
                && e.metadata().is_ok_and(|m| m.len() > 0)
        })
    };
    let mut landed_mid_write = 0;
    // Killed the moment a save has written part of its temp file (a kill that certainly lands
    // mid-write), then at several moments after the frame is built: before, during, between saves.
    for delay_ms in [
        None,
        None,
        None,
        Some(0u64),
        Some(20),
        Some(60),
        Some(150),
        Some(400),
    ] {
        use std::io::BufRead;
        for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        std::fs::write(dir.path().join("out.jsonl"), old).unwrap();
        let mut child = rtlab()
            .current_dir(dir.path())
            .env("RTLAB_HOME", dir.path().join(".rtlab"))
            .args(["run", "--no-cache", "t.rhai"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        match delay_ms {
            Some(ms) => std::thread::sleep(std::time::Duration::from_millis(ms)),
            None => {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while !partial_temp(dir.path()) && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_micros(200));
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // A temp file the kill left half written proves the kill landed inside a write.
        if partial_temp(dir.path()) {
            landed_mid_write += 1;
        }
        let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
        if text == old {
            outcomes.insert("old");
        } else {
            assert_eq!(
                text.lines().count(),
                100000,
                "a whole new file, never a part"
            );
            assert!(text.ends_with("\n"));
            outcomes.insert("new");
        }
    }
    eprintln!(
        "kill -9 during save_jsonl left: {outcomes:?}; {landed_mid_write} kills landed mid-write"
    );
    assert!(
        landed_mid_write >= 1,
        "no kill landed while a save was writing: the test proved nothing"
    );
    // The next run recovers: it saves over whatever the kill left.
    let r = Run::from(
        rtlab()
            .current_dir(dir.path())
            .env("RTLAB_HOME", dir.path().join(".rtlab"))
            .args(["run", "--no-cache", "t.rhai"])
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn a_model_answer_the_store_refuses_is_reported_and_the_recorded_ones_stay() {
    let server = common::mock_llm::MockServer::start(|p| format!("echo: {p}"));
    let dir = tempfile::tempdir().unwrap();
    let script = |n: usize| {
        format!(
            r#"let m = llm(#{{base_url: "{}", model: "echo-model"}});
            let rows = []; for i in 0..{n} {{ rows.push(#{{p: `prompt ${{i}}`}}); }}
            print(complete_many(m, from_records(rows), "p").len());"#,
            server.openai_url()
        )
    };
    let r = run_script(dir.path(), &script(3), &[], &["--no-cache"]);
    assert_eq!(r.stdout, "3\n", "{}", r.stderr);
    let store = dir.path().join(".rtlab/store.sqlite");
    let db = rusqlite::Connection::open(&store).unwrap();
    db.execute_batch(
        "CREATE TRIGGER refuse BEFORE INSERT ON llm_responses
         BEGIN SELECT RAISE(ABORT, 'refused: the disk is full'); END;",
    )
    .unwrap();
    let r = run_script(dir.path(), &script(5), &[], &["--no-cache"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "5\n"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!(
            "warning: 2 answers from echo-model were not recorded in the store {}",
            store.display()
        )) && r.stderr.contains("refused: the disk is full"),
        "{}",
        r.stderr
    );
    db.execute_batch("DROP TRIGGER refuse").unwrap();
    let count: i64 = db
        .query_row("SELECT COUNT(*) FROM llm_responses", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 3, "the answers recorded before stay");
    let r = run_script(dir.path(), &script(5), &[], &["--no-cache"]);
    assert!(
        r.stderr.contains("5 requests, 3 from the store, 2 sent"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_row_that_skips_a_stage_it_asked_for_is_counted_in_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let r = run_script(
        dir.path(),
        r#"let df = from_records([
                #{code: "module TopModule(input a, output y); assign y = a; endmodule", ref: "module RefModule(input a, output y); assign y = a; endmodule"},
                #{code: "module TopModule(input a, output y); assign y = ~a; endmodule", ref: ()},
            ]);
            let v = df.verify(#{code: "code", reference: "ref", stages: ["syntax", "synth", "equiv"]});
            print(v.column("skipped"));
            print(v.column("stages"));"#,
        &[],
        &["--no-cache"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning: verify: 1 of 2 rows skipped a stage: equiv skipped in 1 rows (needs a reference module); see the `skipped` column"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.stdout,
        // A struct column: a row that skipped nothing has a null reason.
        "[#{\"equiv\": ()}, #{\"equiv\": \"needs a reference module\"}]\n[[\"syntax\", \"synth\", \"equiv\"], [\"syntax\", \"synth\"]]\n"
    );
}

#[test]
fn a_full_disk_during_a_checkpoint_is_a_clear_error_and_the_next_run_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let train = r#"let rows = []; for i in 0..8 { rows.push(#{instruction: `Write m${i}`, output: `module m${i}(input a, output y); assign y = a; endmodule`}); }
        let run = train_lora(#{base: "base", data: from_records(rows), out: "run", r: 4, epochs: 2, batch_size: 2, grad_accum: 1, checkpoint_every: 2});
        print(`steps: ${run.steps}`);"#;
    let made = run_script(
        dir.path(),
        r#"create_tiny_model("base", #{seed: 1});"#,
        &[],
        &["--no-cache"],
    );
    assert_eq!(made.code, 0, "{}", made.stderr);
    // 50 KiB: the adapter (36 KiB) fits, AdamW's moments (71 KiB) do not.
    let r = run_limited(dir.path(), train, 50, &["--no-cache"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("File too large") && r.stderr.contains("run/checkpoints/"),
        "{}",
        r.stderr
    );
    // No half-written checkpoint: it is written under a temp name and renamed whole.
    let checkpoints: Vec<_> = std::fs::read_dir(dir.path().join("run/checkpoints"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(checkpoints.is_empty(), "{checkpoints:?}");
    let r = run_script(dir.path(), train, &[], &["--no-cache"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "steps: 8\n"),
        "{}",
        r.stderr
    );
}
