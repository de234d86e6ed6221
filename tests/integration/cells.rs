//! Notebook cells and their cache, driven through the real binary on a 4-cell script.

use crate::common;
use common::*;
use std::path::Path;
use std::process::Stdio;

const FOUR_CELLS: &str = r#"// %% load
let rows = [];
for i in 0..10 { rows.push(i); }
// %% slow
sleep(0.2);
let total = 0;
for r in rows { total += r; }
print(`total = ${total}`);
// %% scale
let scaled = total * 2;
// %% report
print(`scaled = ${scaled}`);
"#;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("nb.rhai"), FOUR_CELLS).unwrap();
    dir
}

fn run(dir: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", "--cache-min", "0"];
    args.extend_from_slice(extra);
    args.push("nb.rhai");
    let r = run_in(dir, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r
}

fn edit(dir: &Path, from: &str, to: &str) {
    let p = dir.join("nb.rhai");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from));
    std::fs::write(&p, text.replace(from, to)).unwrap();
}

#[test]
fn first_run_runs_every_cell_and_a_second_process_restores_them() {
    let dir = setup();
    let first = run(dir.path(), &[]);
    assert_eq!(
        first.ran_cells(),
        ["1 load", "2 slow", "3 scale", "4 report"]
    );
    let second = run(dir.path(), &[]);
    assert_eq!(second.ran_cells(), Vec::<String>::new());
    assert_eq!(
        second.cached_cells(),
        ["1 load", "2 slow", "3 scale", "4 report"]
    );
    // A restored cell replays what it printed.
    assert_eq!(second.stdout, first.stdout);
    assert_eq!(second.stdout, "total = 45\nscaled = 90\n");
}

#[test]
fn editing_cell_3_reruns_cells_3_and_4_only() {
    let dir = setup();
    run(dir.path(), &[]);
    edit(dir.path(), "total * 2", "total * 3");
    let r = run(dir.path(), &[]);
    assert_eq!(r.cached_cells(), ["1 load", "2 slow"]);
    assert_eq!(r.ran_cells(), ["3 scale", "4 report"]);
    assert_eq!(r.stdout, "total = 45\nscaled = 135\n");
}

#[test]
fn comments_and_whitespace_do_not_invalidate_a_cell() {
    let dir = setup();
    run(dir.path(), &[]);
    edit(
        dir.path(),
        "let scaled = total * 2;",
        "// doubled on purpose\nlet scaled   =   total * 2;\n",
    );
    let r = run(dir.path(), &[]);
    assert!(r.ran_cells().is_empty(), "{}", r.stderr);
}

#[test]
fn an_edit_that_does_not_change_a_value_does_not_rerun_its_readers() {
    let dir = setup();
    run(dir.path(), &[]);
    // Cell 2 changes, but `total` keeps its content: cell 3's key is unchanged.
    edit(dir.path(), "sleep(0.2);", "sleep(0.1);");
    let r = run(dir.path(), &[]);
    assert_eq!(r.ran_cells(), ["2 slow"]);
    assert_eq!(r.cached_cells(), ["1 load", "3 scale", "4 report"]);
}

#[test]
fn fresh_recomputes_and_no_cache_neither_reads_nor_writes() {
    let dir = setup();
    let nocache = run(dir.path(), &["--no-cache"]);
    assert_eq!(nocache.ran_cells().len(), 4);
    assert!(
        !dir.path().join(".rtlab/cache").exists()
            || std::fs::read_dir(dir.path().join(".rtlab/cache"))
                .unwrap()
                .count()
                == 0
    );
    run(dir.path(), &[]);
    let fresh = run(dir.path(), &["--fresh"]);
    assert_eq!(fresh.ran_cells().len(), 4);
    assert!(fresh.stderr.contains("ran in") && fresh.stderr.contains(", cached"));
}

#[test]
fn cheap_cells_are_not_persisted_under_the_threshold() {
    let dir = setup();
    let r = run_in(dir.path(), &["run", "--cache-min", "0.1", "nb.rhai"]);
    assert_eq!(r.code, 0);
    let again = run_in(dir.path(), &["run", "--cache-min", "0.1", "nb.rhai"]);
    // Only the 0.2 s cell crossed the threshold.
    assert_eq!(again.cached_cells(), ["2 slow"]);
    assert_eq!(again.ran_cells(), ["1 load", "3 scale", "4 report"]);
}

#[test]
fn a_closure_makes_its_readers_rerun_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nb.rhai"),
        "// %% def\nlet f = |x| x + 1;\n// %% use\nlet y = f.call(1);\nprint(y);\n",
    )
    .unwrap();
    run(dir.path(), &[]);
    let r = run(dir.path(), &[]);
    assert_eq!(r.ran_cells(), ["1 def", "2 use"]);
    assert!(
        r.stderr.contains(
            "not cached: it reads `f`, a closure or function pointer, which cannot be cached"
        ),
        "{}",
        r.stderr
    );
}

#[test]
fn a_corrupt_entry_is_reported_and_recomputed() {
    let dir = setup();
    run(dir.path(), &[]);
    let cache = dir.path().join(".rtlab/cache");
    let mut corrupted = 0;
    for entry in std::fs::read_dir(&cache).unwrap().flatten() {
        let manifest = entry.path().join("manifest.json");
        let text = std::fs::read_to_string(&manifest).unwrap();
        if text.contains("\"cell_index\": 2") {
            std::fs::write(&manifest, "{ this is not json").unwrap();
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 1);
    let r = run(dir.path(), &[]);
    assert!(
        r.stderr
            .contains("warning: [2 slow] cache entry is corrupt"),
        "{}",
        r.stderr
    );
    assert_eq!(r.ran_cells(), ["2 slow"]);
    assert_eq!(r.stdout, "total = 45\nscaled = 90\n");
    // And the entry was rewritten.
    assert_eq!(run(dir.path(), &[]).cached_cells().len(), 4);
}

#[test]
fn a_kill_during_a_cache_write_keeps_the_previous_entry() {
    let dir = setup();
    run(dir.path(), &[]);
    // --fresh rewrites cell 1's entry; the test hook pauses before the manifest, and we kill it there.
    let mut child = rtlab()
        .current_dir(dir.path())
        .args(["run", "--cache-min", "0", "--fresh", "nb.rhai"])
        .env("RTLAB_TEST_CACHE_WRITE_PAUSE_MS", "20000")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("(test hook) pausing"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    let r = run(dir.path(), &[]);
    assert_eq!(
        r.cached_cells(),
        ["1 load", "2 slow", "3 scale", "4 report"],
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("corrupt"));
}

#[test]
fn cache_ls_and_clear() {
    let dir = setup();
    run(dir.path(), &[]);
    let ls = run_in(dir.path(), &["cache", "ls"]);
    assert_eq!(ls.stdout.lines().count(), 4, "{}", ls.stdout);
    assert!(ls.stdout.contains("[2 slow]"));
    let clear = run_in(dir.path(), &["cache", "clear", "nb.rhai"]);
    assert!(
        clear.stdout.starts_with("removed 4 cache entries"),
        "{}",
        clear.stdout
    );
    assert_eq!(run(dir.path(), &[]).ran_cells().len(), 4);
}

#[test]
fn an_error_in_a_cell_reports_the_file_line_and_keeps_earlier_entries() {
    let dir = setup();
    edit(
        dir.path(),
        "let scaled = total * 2;",
        "let scaled = total * nope;",
    );
    let r = run_in(dir.path(), &["run", "--cache-min", "0", "nb.rhai"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("nb.rhai:10:22: Variable not found: nope"),
        "{}",
        r.stderr
    );
    edit(dir.path(), "total * nope", "total * 2");
    let again = run(dir.path(), &[]);
    assert_eq!(again.cached_cells(), ["1 load", "2 slow"]);
}

#[test]
fn watch_reruns_only_the_edited_cell_and_its_readers() {
    let dir = setup();
    let mut child = rtlab()
        .current_dir(dir.path())
        .args(["watch", "--no-cache", "nb.rhai"])
        .env("RTLAB_WATCH_MAX_RUNS", "2")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (first_run_done, wait_first) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.starts_with("watching") {
                let _ = first_run_done.send(());
            }
            lines.push(line);
        }
        lines
    });
    wait_first
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("first run finishes");
    // Make sure the new mtime differs from the one watch recorded.
    std::thread::sleep(std::time::Duration::from_millis(50));
    edit(
        dir.path(),
        "print(`scaled = ${scaled}`);",
        "print(`scaled: ${scaled}`);",
    );
    let status = child.wait().unwrap();
    assert!(status.success());
    let lines = reader.join().unwrap();
    let second: Vec<&String> = lines.iter().skip_while(|l| !l.starts_with("---")).collect();
    let ran: Vec<&&String> = second.iter().filter(|l| l.contains("] ran in")).collect();
    assert_eq!(ran.len(), 1, "{lines:#?}");
    assert!(ran[0].starts_with("[4 report]"));
    assert_eq!(
        second.iter().filter(|l| l.contains("unchanged")).count(),
        3,
        "{lines:#?}"
    );
}

#[test]
fn a_cached_cell_reruns_when_a_file_it_read_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "first").unwrap();
    std::fs::write(
        dir.path().join("nb.rhai"),
        "// %% read\nlet text = read_text(\"in.txt\");\n// %% show\nprint(text);\n",
    )
    .unwrap();
    assert_eq!(run(dir.path(), &[]).stdout, "first\n");
    assert_eq!(run(dir.path(), &[]).cached_cells().len(), 2);
    std::fs::write(dir.path().join("in.txt"), "second").unwrap();
    let r = run(dir.path(), &[]);
    assert!(
        r.stderr
            .contains("in.txt changed since the cached run: rerunning"),
        "{}",
        r.stderr
    );
    assert_eq!(r.ran_cells(), ["1 read", "2 show"]);
    assert_eq!(r.stdout, "second\n");
}

#[test]
fn imports_and_functions_of_earlier_cells_are_visible_later() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nb.rhai"),
        "// %% setup\nimport \"rtlab/fmt\" as fmt;\nfn half(x) { x / 2.0 }\n// %% use\nprint(fmt::pct(half(0.5)));\n",
    )
    .unwrap();
    let r = run(dir.path(), &[]);
    assert_eq!(r.stdout, "25.0%\n", "{}", r.stderr);
}

#[test]
fn a_cached_cell_reruns_when_a_file_it_imports_changes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rhai"), "fn size() { 8 }\n").unwrap();
    std::fs::write(
        dir.path().join("nb.rhai"),
        "// %% setup\nimport \"lib\" as lib;\nlet n = lib::size();\n// %% show\nprint(n);\n",
    )
    .unwrap();
    assert_eq!(run(dir.path(), &[]).stdout, "8\n");
    assert_eq!(run(dir.path(), &[]).cached_cells().len(), 2);
    std::fs::write(dir.path().join("lib.rhai"), "fn size() { 16 }\n").unwrap();
    let r = run(dir.path(), &[]);
    assert!(
        r.stderr.contains("lib.rhai changed since the cached run"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout, "16\n");
}

#[test]
fn a_bare_file_name_finds_the_workspace_of_a_parent_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".rtlab")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("sub/nb.rhai"), "// %% a\nlet a = 1;\n").unwrap();
    let r = run_in(
        &dir.path().join("sub"),
        &["run", "--cache-min", "0", "nb.rhai"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        !dir.path().join("sub/.rtlab").exists(),
        "no second workspace is made"
    );
    assert!(dir.path().join(".rtlab/cache").is_dir());
}

#[test]
fn report_renders_cells_tables_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("nb.rhai"),
        "// %% table\nlet t = from_records([#{c: \"fsm\", n: 3}, #{c: \"alu\", n: 5}]);\nprint(\"two rows\");\nt\n// %% chart\nt.plot_bar(\"c\", \"n\")\n",
    )
    .unwrap();
    let r = run_in(dir.path(), &["report", "nb.rhai", "-o", "out.html"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let html = std::fs::read_to_string(dir.path().join("out.html")).unwrap();
    assert!(
        html.contains("<td>fsm</td>") && html.contains("<th>n</th>"),
        "tables as tables"
    );
    assert!(
        html.contains("<svg") && html.contains("n by c"),
        "plots inline"
    );
    assert!(html.contains("two rows"));
    assert!(html.contains("let t = from_records"), "the code is shown");
    let r = run_in(dir.path(), &["report", "nb.rhai", "-o", "out.md"]);
    assert_eq!(r.code, 0);
    let md = std::fs::read_to_string(dir.path().join("out.md")).unwrap();
    assert!(md.contains("## Cell 1 table") && md.contains("```rhai"));
    assert_eq!(
        run_in(dir.path(), &["report", "nb.rhai", "-o", "out.pdf"]).code,
        2
    );
}

/// A verified frame restored from the cache, then read by a cheap cell that calls a method on it
/// (so the runner re-hashes it) and by a slow one: the slow one must come back from the cache. The
/// restored frame hashed differently from the one in memory (string views, validity buffers), so
/// an unchanged rerun of a plan script retrained its adapters.
#[test]
fn a_frame_restored_from_the_cache_keys_its_readers_as_the_original_did() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"// %% verify
sleep(0.3);
let rows = from_records([
    #{instruction: "an inverter", output: "module m(input a, output y); assign y = ~a; endmodule", meta: #{id: "x", note: ()}},
    #{instruction: "a buffer", output: "module m(input a, output y); assign y = a; endmodule", meta: #{id: "y", note: ()}},
]).verify(#{code: "output"}).filter(col("syntax_ok") == true).sort("instruction");
// %% peek
let names = rows.select(["instruction"]);
// %% train
sleep(0.3);
let n = rows.len();
"#;
    std::fs::write(dir.path().join("nb.rhai"), script).unwrap();
    // Only cells of 0.25 s or more are cached, so `peek` runs each time and re-hashes `rows`.
    let run_with_cache = || {
        let r = run_in(dir.path(), &["run", "--cache-min", "0.25", "nb.rhai"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.stderr
    };
    let first = run_with_cache();
    assert!(first.contains("[3 train] ran in"), "{first}");
    let again = run_with_cache();
    assert!(
        again.contains("[3 train] cached (saved"),
        "the slow reader of a restored frame must be restored too:\n{again}"
    );
}
