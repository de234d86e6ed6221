//! Caches that never serve a stale answer, and runs that say what made them: a verdict or a cell made
//! by other code is recomputed (and the run says why) unless `--trust-cache`; a timeout is tried
//! again; a manifest records versions, tools, models and the machine.
//!
//! Another build of rtlab is simulated with `RTLAB_PRETEND_CHANGED=verifier`, which changes the
//! verifier's code identity in that process exactly as a rebuild from changed sources does.

use crate::common;
use common::*;
use std::path::Path;

fn run(dir: &Path, script: &str, env: &[(&str, &str)], flags: &[&str]) -> Run {
    std::fs::write(dir.join("nb.rhai"), script).unwrap();
    let mut cmd = rtlab();
    cmd.current_dir(dir)
        .env("RTLAB_HOME", dir.join(".rtlab"))
        .args(["run", "--cache-min", "0"])
        .args(flags)
        .arg("nb.rhai");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().unwrap())
}

const VERIFY_TWO: &str = r#"// %% verify
let rows = [#{code: "module a(input x, output y); assign y = x; endmodule"},
            #{code: "module b(input x, output y); assign y = ~x; endmodule"}];
let checked = from_records(rows).verify(#{code: "code", stages: ["syntax"]});
print(checked.filter(col("syntax_ok")).len());
"#;

#[test]
fn a_changed_verifier_recomputes_its_verdicts_and_the_cells_that_used_them_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let first = run(dir.path(), VERIFY_TWO, &[], &[]);
    assert_eq!(
        (first.code, first.stdout.as_str()),
        (0, "2\n"),
        "{}",
        first.stderr
    );
    let same = run(dir.path(), VERIFY_TWO, &[], &[]);
    assert_eq!(same.cached_cells(), ["1 verify"], "{}", same.stderr);

    // Another verifier: the cell reruns, saying why, and so do its verdicts.
    let changed = [("RTLAB_PRETEND_CHANGED", "verifier")];
    let r = run(dir.path(), VERIFY_TWO, &changed, &[]);
    assert_eq!(r.stdout, "2\n", "{}", r.stderr);
    assert!(
        r.stderr
            .contains("[1 verify] rtlab's verifier changed since the cached run: rerunning"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("verify: 2 rows, 0 from the store, 2 verified in")
            && r.stderr
                .contains("; 2 verdicts made by another version of the verifier verified again"),
        "{}",
        r.stderr
    );
    assert_eq!(r.ran_cells(), ["1 verify"]);

    // Back on this build, trusting the cache: the entries the "other" verifier made are served, and
    // marked as such; nothing is verified.
    let trusted = run(dir.path(), VERIFY_TWO, &[], &["--trust-cache"]);
    assert_eq!(trusted.stdout, "2\n", "{}", trusted.stderr);
    let status = trusted
        .stderr
        .lines()
        .find(|l| l.starts_with("[1 verify] cached (saved "))
        .unwrap_or_else(|| panic!("not restored: {}", trusted.stderr));
    assert!(
        status
            .ends_with(" (made before rtlab's verifier changed; served because of --trust-cache)"),
        "{status}"
    );
    assert_eq!(trusted.cached_cells(), ["1 verify"], "{}", trusted.stderr);

    // The verifier's store alone, under --trust-cache, with the cell recomputed (another cell code):
    // the verdicts are served and counted as made by another version.
    let edited = VERIFY_TWO.replace("print(", "print(\"n=\" + ");
    let r = run(dir.path(), &edited, &[], &["--trust-cache"]);
    assert_eq!(r.stdout, "n=2\n", "{}", r.stderr);
    assert!(
        r.stderr
            .contains("verify: 2 rows, 2 from the store, 0 verified in")
            && r.stderr.contains(
                "; 2 verdicts made by another version of the verifier served (--trust-cache)"
            ),
        "{}",
        r.stderr
    );
    // Without it, they are verified again.
    let r = run(dir.path(), &edited, &[], &["--no-cache"]);
    assert!(
        r.stderr
            .contains("verify: 2 rows, 0 from the store, 2 verified in"),
        "{}",
        r.stderr
    );

    // `rtlab cache ls` says what made each entry.
    let ls = run_in(dir.path(), &["cache", "ls"]);
    assert!(ls.stdout.contains("made by this rtlab"), "{}", ls.stdout);
}

/// A design and a testbench that passes in a few milliseconds: under a 1 ms limit the simulation
/// times out, under the default it passes.
fn simulate(timeouts: &str) -> String {
    format!(
        r#"let rows = [#{{code: "module dut; endmodule", tb: "module tb; dut u(); initial begin $display(\"TEST PASSED\"); $finish; end endmodule"}}];
let r = from_records(rows).verify(#{{code: "code", testbench: "tb", stages: ["syntax", "sim"]{timeouts}}});
print(r.column("sim_status")[0]);
"#
    )
}

#[test]
fn a_timeout_is_provisional_until_reached_twice_and_a_longer_limit_tries_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = simulate(", timeouts: #{sim: 1}");
    let r = run(dir.path(), &tiny, &[], &["--no-cache"]);
    assert_eq!(r.stdout, "timeout\n", "{}", r.stderr);
    assert!(
        r.stderr.contains("0 from the store, 1 verified"),
        "{}",
        r.stderr
    );
    // The next run does not take the timeout as final: it tries again (and times out again).
    let r = run(dir.path(), &tiny, &[], &["--no-cache"]);
    assert_eq!(r.stdout, "timeout\n", "{}", r.stderr);
    assert!(
        r.stderr.contains("0 from the store, 1 verified")
            && r.stderr
                .contains("; 1 provisional verdict (timeouts, killed tools) verified again"),
        "{}",
        r.stderr
    );
    // Reached twice under the same limits: now final, served from the store.
    let r = run(dir.path(), &tiny, &[], &["--no-cache"]);
    assert_eq!(r.stdout, "timeout\n", "{}", r.stderr);
    assert!(
        r.stderr.contains("1 from the store, 0 verified"),
        "{}",
        r.stderr
    );
    // A run with the normal limit does not take a timeout reached under a shorter one: it passes.
    let r = run(dir.path(), &simulate(""), &[], &["--no-cache"]);
    assert_eq!(r.stdout, "pass\n", "{}", r.stderr);
    assert!(
        r.stderr.contains("0 from the store, 1 verified")
            && r.stderr
                .contains("; 1 provisional verdict (timeouts, killed tools) verified again"),
        "{}",
        r.stderr
    );
    // A pass is final at once.
    let r = run(dir.path(), &simulate(""), &[], &["--no-cache"]);
    assert_eq!(r.stdout, "pass\n", "{}", r.stderr);
    assert!(
        r.stderr.contains("1 from the store, 0 verified"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_manifest_records_the_build_the_tools_the_machine_and_each_cell() {
    let dir = tempfile::tempdir().unwrap();
    let script = "// %% data\nlet x = #{seed: 7, n: 3};\n// %% show\nprint(x.n);\n";
    let r = run(dir.path(), script, &[], &["--manifest", "m.json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("m.json")).unwrap()).unwrap();
    assert_eq!(m["rtlab"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(m["rtlab"]["commit"].as_str().is_some_and(|c| !c.is_empty()));
    for subsystem in ["runtime", "verifier", "trainer", "LLM client", "data"] {
        assert!(
            m["rtlab"]["code"][subsystem].as_str().is_some(),
            "no code identity for {subsystem}: {m}"
        );
    }
    assert!(m["tools"]["iverilog"].as_str().is_some(), "{m}");
    assert!(m["machine"]["cores"].as_u64().is_some_and(|c| c >= 1));
    assert!(!m["machine"]["cpu"].as_str().unwrap_or("").is_empty());
    let cells = m["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0]["name"], "data");
    assert_eq!(cells[0]["seeds"], serde_json::json!(["7"]));
    assert_eq!(cells[1]["status"], "ran");

    // `rtlab report` writes it beside the HTML.
    let rep = run_in(dir.path(), &["report", "nb.rhai", "-o", "nb.html"]);
    assert_eq!(rep.code, 0, "{}", rep.stderr);
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("nb.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(m["cells"].as_array().unwrap().len(), 2);

    // A manifest that cannot be written is an error naming the file, after the run.
    let r = run(dir.path(), script, &[], &["--manifest", "nb.rhai/m.json"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr
            .contains("cannot write the manifest nb.rhai/m.json"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_nan_fails_a_criterion_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let script = "import \"rtlab/criteria\" as criteria;\nlet nan = 0.0 / 0.0;\nlet ok = criteria::check(#{functional: nan}, #{functional: 0.5});\nprint(ok);";
    let r = run(dir.path(), script, &[], &["--no-cache"]);
    assert_eq!(
        r.stdout,
        "❌ functional: NaN is not a number (target 0.5): the run produced no value\nfalse\n"
    );
}

/// The real model, decoding: its answers are recorded under its content. Rewritten in place with its
/// modification time put back, it is another model (answers recomputed); copied to another path, it
/// is the same one (answers served).
#[test]
fn a_local_models_answers_follow_its_content_not_its_path_or_mtime() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("m.gguf");
    std::fs::copy(smollm2(), &gguf).unwrap();
    let ask = |model: &str| {
        let script = format!(
            r#"let m = llm(#{{provider: "local", model: "{model}", max_tokens: 2}});
complete_many(m, from_records([#{{p: "Write a Verilog inverter."}}]), "p");
print(m.usage().from_store);"#
        );
        let r = run(dir.path(), &script, &[], &["--no-cache"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stdout
    };
    assert_eq!(ask("m.gguf"), "0\n", "a new model decodes");
    assert_eq!(
        ask("m.gguf"),
        "1\n",
        "the same model is served its recorded answer"
    );

    // One bit of the last tensor flipped, the size and mtime kept.
    let mtime = std::fs::metadata(&gguf).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&gguf).unwrap();
    let at = bytes.len() - 4;
    bytes[at] ^= 1;
    std::fs::write(&gguf, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&gguf)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(std::fs::metadata(&gguf).unwrap().modified().unwrap(), mtime);
    assert_eq!(
        ask("m.gguf"),
        "0\n",
        "changed weights were served old answers"
    );

    std::fs::copy(&gguf, dir.path().join("copy.gguf")).unwrap();
    assert_eq!(
        ask("copy.gguf"),
        "1\n",
        "a copy missed the answers of its original"
    );
}

/// A server model is keyed on what the server says it is: Ollama's digest. Answers recorded from one
/// version of a model are asked again once the server reports another (the model was pulled again).
#[test]
fn an_ollama_model_pulled_again_is_asked_again() {
    let server = common::mock_llm::MockServer::start(|p| format!("echo: {p}"));
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        r#"let m = llm(#{{provider: "ollama", base_url: "{}", model: "m"}});
complete_many(m, from_records([#{{p: "a mux"}}, #{{p: "an fsm"}}]), "p");
print(m.usage().from_store);"#,
        server.url()
    );
    let r = run(dir.path(), &script, &[], &["--no-cache"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "0\n"), "{}", r.stderr);
    let r = run(dir.path(), &script, &[], &["--no-cache"]);
    assert_eq!(
        r.stdout, "2\n",
        "the same model's answers are served: {}",
        r.stderr
    );
    assert_eq!(server.hits(), 2);

    *server.ollama_digest.lock().unwrap() = "sha256:second".into();
    let r = run(dir.path(), &script, &[], &["--no-cache"]);
    assert_eq!(r.stdout, "0\n", "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "llm: 2 recorded answers came from another version of m (the server's digest is now sha256:second): asking again"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(server.hits(), 4);
    let r = run(dir.path(), &script, &[], &["--no-cache"]);
    assert_eq!(r.stdout, "2\n", "{}", r.stderr);
}
