//! The REPL through a pseudo-terminal, as a user drives it.

use expectrl::{ControlCode, Expect, Session};
use std::time::Duration;

fn spawn(data_home: &std::path::Path) -> expectrl::session::OsSession {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rtlab"));
    cmd.env("XDG_DATA_HOME", data_home).env("TERM", "xterm");
    let mut s = Session::spawn(cmd).expect("rtlab starts in a pty");
    // A bound on liveness, not a speed goal: a 2-core CI machine running the verifier's tests beside
    // these can starve the pty for a while.
    s.set_expect_timeout(Some(Duration::from_secs(120)));
    ready(&mut s);
    s
}

/// Waits until the REPL reads a new line. rustyline turns bracketed paste on (`ESC [?2004h`) as it
/// starts to read; the text `rtlab> ` alone also appears in the redraws of a line being typed, and a
/// line typed before the editor is back in raw mode can be lost, so tests wait for this.
fn ready(s: &mut expectrl::session::OsSession) {
    s.expect("\x1b[?2004h").expect("the REPL reads a new line");
}

/// Ctrl-D once the last output has settled at a prompt, then the process ends.
fn quit(s: &mut expectrl::session::OsSession) {
    std::thread::sleep(Duration::from_millis(300));
    s.send(ControlCode::EndOfTransmission).unwrap();
    s.expect(expectrl::Eof).unwrap();
}

#[test]
fn the_scope_persists_and_multi_line_input_continues_while_brackets_are_open() {
    let home = tempfile::tempdir().unwrap();
    let mut s = spawn(home.path());
    s.send_line("let xs = [1,").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.send_line("  2, 3];").unwrap();
    ready(&mut s);
    s.send_line("xs.len() * 10").unwrap();
    s.expect("30").unwrap();
    s.send_line(":vars").unwrap();
    s.expect("xs: array").unwrap();
    s.send_line(":quit").unwrap();
    s.expect(expectrl::Eof).unwrap();
}

#[test]
fn help_shows_a_signature_and_its_doc() {
    let home = tempfile::tempdir().unwrap();
    let mut s = spawn(home.path());
    s.send_line(":help read_text").unwrap();
    s.expect("read_text(path: string) -> string").unwrap();
    s.expect("relative paths are relative to the script's directory")
        .unwrap();
    s.send_line(":help").unwrap();
    s.expect(":cells").unwrap();
    // The last documented stdlib function, then a fresh prompt: the listing is complete.
    s.expect("write_text").unwrap();
    ready(&mut s);
    std::thread::sleep(Duration::from_millis(200));
    quit(&mut s);
}

#[test]
fn tab_completes_stdlib_functions_and_variables() {
    let home = tempfile::tempdir().unwrap();
    let mut s = spawn(home.path());
    // 40 + 2, so that "42" appears only as a result, never in the echo of the input.
    s.send_line("let dataset_size = 40 + 2;").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A unique prefix completes in place.
    s.send("datase\t").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.send_line("").unwrap();
    s.expect("42").unwrap();
    s.send("read_te\t").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.send_line("(\"/nonexistent\")").unwrap();
    s.expect("cannot read /nonexistent").unwrap();
    quit(&mut s);
}

#[test]
fn ctrl_c_cancels_a_long_loop_and_keeps_the_scope() {
    let home = tempfile::tempdir().unwrap();
    let mut s = spawn(home.path());
    s.send_line("let kept = \"still here\";").unwrap();
    ready(&mut s);
    // The marker is built at run time, so its text appears only once the evaluation has started, never
    // in the echo of the input: Ctrl-C must reach a running loop, not the line editor.
    s.send_line("print(\"loop\" + \"ing now\"); let n = 0; loop { n += 1; }")
        .unwrap();
    s.expect("looping now").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Under load (CI runs these tests side by side on 2 cores) a ^C written to the pty was once lost
    // (no SIGINT, no cancel in 30 s). A lost one is resent; one that arrived and is slow would make the
    // second ^C exit the REPL (130), which fails below. If cancelling is broken, all three fail.
    s.set_expect_timeout(Some(Duration::from_secs(5)));
    let cancelled = (0..3).any(|_| {
        s.send(ControlCode::EndOfText).unwrap();
        s.expect("cancelled (scope kept)").is_ok()
    });
    // A bound on liveness, not a speed goal: a 2-core CI machine running the verifier's tests beside
    // these can starve the pty for a while.
    s.set_expect_timeout(Some(Duration::from_secs(120)));
    assert!(cancelled, "three Ctrl-C did not cancel the loop");
    s.send_line("kept").unwrap();
    s.expect("\"still here\"").unwrap();
    s.send_line("n > 0").unwrap();
    s.expect("true").unwrap();
    quit(&mut s);
}

#[test]
fn history_survives_a_restart() {
    let home = tempfile::tempdir().unwrap();
    let mut s = spawn(home.path());
    s.send_line("let remembered_value = 7;").unwrap();
    ready(&mut s);
    s.send_line(":quit").unwrap();
    s.expect(expectrl::Eof).unwrap();
    let history = std::fs::read_to_string(home.path().join("rtlab/history")).unwrap();
    assert!(history.contains("let remembered_value = 7;"), "{history}");

    let mut s = spawn(home.path());
    // Up twice: `:quit`, then the previous session's definition, which we run again.
    s.send("\x1b[A\x1b[A\r").unwrap();
    ready(&mut s);
    s.send_line("remembered_value * 1000 + 123").unwrap();
    s.expect("7123").unwrap();
    ready(&mut s);
    std::thread::sleep(Duration::from_millis(200));
    quit(&mut s);
}

#[test]
fn run_caches_cells_and_cells_lists_them() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nb.rhai"),
        "// %% a\nlet a = 20;\n// %% b\nlet b = a + 1;\n",
    )
    .unwrap();
    let mut s = spawn(home.path());
    let path = dir.path().join("nb.rhai");
    s.send_line(format!(":run {}", path.display())).unwrap();
    s.expect("[2 b] ran in").unwrap();
    s.send_line("b * 2").unwrap();
    s.expect("42").unwrap();
    s.send_line(format!(":run {}", path.display())).unwrap();
    s.expect("[2 b] unchanged").unwrap();
    s.send_line(":cells").unwrap();
    s.expect("reads:   a").unwrap();
    quit(&mut s);
}

/// Sends one entry and waits for `expected`, then for the next prompt, so the next entry is typed
/// at a settled prompt even on a loaded machine.
fn entry(s: &mut expectrl::session::OsSession, input: &str, expected: &str) {
    s.send_line(input).unwrap();
    if !expected.is_empty() {
        s.expect(expected).unwrap();
    }
    ready(s);
}

#[test]
fn a_function_defined_at_the_prompt_is_callable_on_the_next_line() {
    let home = tempfile::tempdir().unwrap();
    let mut s = spawn(home.path());
    entry(&mut s, "fn dbl(x) { x * 2 }", "");
    // 20 + 1, so that "42" appears only as a result, never in the echo of the input.
    entry(&mut s, "dbl(20 + 1)", "42");
    // A closure kept in a variable is callable later too.
    entry(&mut s, "let g = |x| x + 100;", "");
    entry(&mut s, "g.call(10 + 13)", "123");
    // A function can call one defined in an earlier entry, and a redefinition replaces it.
    entry(&mut s, "fn quad(x) { dbl(dbl(x)) }", "");
    entry(&mut s, "quad(5 + 5)", "40");
    entry(&mut s, "fn dbl(x) { x * 3 }", "");
    entry(&mut s, "dbl(3 + 4)", "21");
    quit(&mut s);
}

#[test]
fn piped_input_keeps_functions_between_lines() {
    let (stdout, stderr) =
        piped("fn f(x) { x + 1000 }\nf(234)\nlet h = |x| f(x) * 2;\nh.call(1)\n");
    assert!(
        stdout.contains("1234"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("2002"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stderr.contains("no function"), "{stderr}");
}

#[test]
fn completion_after_a_dataframe_dot_offers_its_methods_not_global_functions() {
    let home = tempfile::tempdir().unwrap();
    let mut s = spawn(home.path());
    s.send_line("let df = from_records([#{a: 1}, #{a: 2}]);")
        .unwrap();
    ready(&mut s);
    std::thread::sleep(Duration::from_millis(300));
    // `fil` is a prefix of `filter` (a DataFrame method) and of `file_exists` (a global function
    // that takes a string): only `filter` fits a DataFrame, so it completes in place.
    s.send("df.fil\t").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s.send_line("(col(\"a\") > 1).len() * 1000 + 7").unwrap();
    s.expect("1007").unwrap();
    quit(&mut s);
}

#[test]
fn native_values_show_what_they_are_not_a_rust_path() {
    let data = crate::common::repo_root().join("data/v2_sample.jsonl");
    let (stdout, stderr) = piped(&format!(
        "col(\"metadata.category\") == \"fsm\"\nscan_jsonl({data:?}).filter(col(\"id\") > 3)\nload_jsonl({data:?}).group_by([\"metadata.category\"])\n"
    ));
    // An expression shows what it computes, a scan its file and filters, a grouping its type name.
    assert!(
        stdout.contains(r#"col("metadata").struct.field_by_name(category)"#)
            && stdout.contains(r#"== ("fsm")"#),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("LazyFrame(scan ") && stdout.contains("1 filter(s)"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains("<GroupBy>"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stdout.contains("rtlab_data::"), "stdout: {stdout}");
}

/// Runs the REPL with `input` on a pipe (as `printf ... | rtlab` does); returns stdout and stderr.
#[test]
fn run_of_a_script_in_another_directory_imports_its_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rhai"), "fn double(x) { x * 2 }\n").unwrap();
    let script = dir.path().join("main.rhai");
    std::fs::write(
        &script,
        "import \"lib\" as lib;\nprint(lib::double(2100));\n",
    )
    .unwrap();
    let (stdout, stderr) = piped(&format!(":run {}\n", script.display()));
    assert!(
        stdout.contains("4200"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[test]
fn an_import_reads_the_file_as_it_is_now() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("lib.rhai");
    let (stdout, stderr) = piped(&format!(
        "write_text(\"{lib}\", \"fn size() {{ 8000 }}\");\nimport \"{stem}\" as a; print(a::size());\nwrite_text(\"{lib}\", \"fn size() {{ 16000 }}\");\nimport \"{stem}\" as b; print(b::size());\n",
        lib = lib.display(),
        stem = dir.path().join("lib").display()
    ));
    let printed: Vec<&str> = stdout.lines().filter(|l| l.ends_with("000")).collect();
    assert_eq!(
        printed,
        ["8000", "16000"],
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

fn piped(input: &str) -> (String, String) {
    use std::io::Write;
    let home = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rtlab"))
        .env("XDG_DATA_HOME", home.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
