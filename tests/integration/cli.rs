//! The binary from the outside: running scripts, errors with positions, exit codes, `doctor`.

use crate::common;
use common::*;

fn script(dir: &std::path::Path, name: &str, code: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, code).unwrap();
    p
}

#[test]
fn run_prints_and_sees_args() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "hello.rhai",
        "print(`hello ${ARGS[0]}, ${ARGS.len()} args`);",
    );
    let r = run_in(dir.path(), &["run", "hello.rhai", "world", "--flag"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello world, 2 args\n");
}

#[test]
fn a_runtime_error_names_file_line_column_and_shows_a_caret() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "bad.rhai",
        "let a = 1;\nlet b = a + undefined_thing;\n",
    );
    let r = run_in(dir.path(), &["run", "bad.rhai"]);
    assert_eq!(r.code, 1);
    let expected = "error: bad.rhai:2:13: Variable not found: undefined_thing\n 2 | let b = a + undefined_thing;\n   |             ^\n";
    assert_eq!(r.stderr, expected);
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run_in(dir.path(), &["run"]).code, 2, "missing FILE");
    assert_eq!(
        run_in(dir.path(), &["frobnicate"]).code,
        2,
        "unknown subcommand"
    );
    let missing = run_in(dir.path(), &["run", "nope.rhai"]);
    assert_eq!(missing.code, 2);
    assert!(
        missing.stderr.contains("nope.rhai: no such script"),
        "{}",
        missing.stderr
    );
    let both = run_in(dir.path(), &["run", "--fresh", "--no-cache", "x.rhai"]);
    assert_eq!(both.code, 2, "--fresh and --no-cache conflict");
}

#[test]
fn doctor_lists_every_tool_with_a_version_or_an_install_command() {
    let r = run_in(&repo_root(), &["doctor"]);
    assert_eq!(r.code, 0);
    for tool in [
        "iverilog",
        "vvp",
        "yosys",
        "verilator",
        "wgpu (Vulkan)",
        "CUDA",
    ] {
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains(tool))
            .unwrap_or_else(|| panic!("{tool} missing from:\n{}", r.stdout));
        assert!(
            line.trim_start().starts_with("ok ") || line.contains("install: "),
            "{line}"
        );
    }
    // CI installs the EDA tools (.ci/run); they must be found, not merely listed.
    for tool in ["iverilog", "yosys", "verilator"] {
        let line = r.stdout.lines().find(|l| l.contains(tool)).unwrap();
        assert!(
            line.trim_start().starts_with("ok "),
            "{tool} should be installed here: {line}"
        );
    }
}

#[test]
fn stdlib_modules_are_importable() {
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "m.rhai",
        "import \"rtlab/fmt\" as fmt;\nimport \"rtlab/criteria\" as criteria;\nprint(fmt::pct(0.953));\nlet ok = criteria::check(#{functional: 0.9}, #{functional: 0.88, fsm: 0.7});\nprint(ok);",
    );
    let r = run_in(dir.path(), &["run", "m.rhai"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "95.3%\n❌ fsm: missing (target 0.7)\n✅ functional: 0.9 ≥ 0.88\nfalse\n"
    );
}

#[test]
fn relative_paths_resolve_against_the_script_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/data.txt"), "payload").unwrap();
    script(
        &dir.path().join("sub"),
        "s.rhai",
        "print(read_text(\"data.txt\"));",
    );
    let r = run_in(dir.path(), &["run", "sub/s.rhai"]);
    assert_eq!(r.stdout, "payload\n", "{}", r.stderr);
}

/// Every script under tests/bad_scripts fails with exit 1 and a clear, positioned message, never a panic.
#[test]
fn bad_scripts_give_clear_messages() {
    let dir = repo_root().join("tests/bad_scripts");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    assert!(names.len() >= 5);
    let mut all = String::new();
    for path in names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
    {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let r = run_in(&dir, &["run", "--no-cache", &name]);
        assert_eq!(r.code, 1, "{name}: {}", r.stderr);
        assert!(
            !r.stderr.contains("panicked"),
            "{name} panicked: {}",
            r.stderr
        );
        all.push_str(&format!("== {name}\n{}", r.stderr));
    }
    // Paths in messages are absolute (the script's directory, made absolute): scrub the checkout's.
    insta::assert_snapshot!(scrub(&all, &[&repo_root()]));
}

#[test]
fn verify_from_the_shell_writes_the_rows_with_results() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"instruction\":\"buffer\",\"output\":\"module a(input x, output y); assign y = x; endmodule\"}\n{\"instruction\":\"broken\",\"output\":\"module b(\"}\n",
    )
    .unwrap();
    let r = Run::from(
        rtlab()
            .current_dir(dir.path())
            .env("RTLAB_HOME", dir.path().join(".rtlab"))
            .args([
                "verify",
                "in.jsonl",
                "--code-col",
                "output",
                "-o",
                "out.jsonl",
            ])
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "2 rows verified, 1 with score ≥ 0.95 → out.jsonl\n"
    );
    let out = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["syntax_ok"], true);
    assert_eq!(rows[1]["syntax_ok"], false);
    assert_eq!(
        rows[1]["instruction"], "broken",
        "the input columns are kept"
    );
    let smuggled = run_in(
        dir.path(),
        &[
            "verify",
            "in.jsonl",
            "--code-col",
            "output",
            "--top",
            "a -mevil",
            "-o",
            "x.jsonl",
        ],
    );
    assert_eq!(smuggled.code, 2, "{}", smuggled.stderr);
    assert!(
        smuggled.stderr.contains("--top must be a module name"),
        "{}",
        smuggled.stderr
    );
    assert_eq!(
        run_in(dir.path(), &["verify", "missing.jsonl", "-o", "x.jsonl"]).code,
        2
    );
}
