//! The workspace is the runtime's, not the thread's: every stdlib function reaches the `Workspace` of
//! the engine that called it, so two runtimes on one thread (the REPL's and a script's, or two
//! embedded ones) never see each other's directory, inputs or `--fresh`.

use crate::common;
use rtlab::Runtime;
use std::path::Path;

/// Runs `code` in `rt` and returns its value as text (a string as it is, unquoted).
fn eval(rt: &Runtime, code: &str) -> String {
    let ast = rt.compile("<test>", code).unwrap();
    let mut scope = rhai::Scope::new();
    let value = rt.eval("<test>", code, &mut scope, &ast).unwrap();
    value.to_string()
}

fn dir_with_note(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("note.txt"), text).unwrap();
    dir
}

#[test]
fn two_runtimes_on_one_thread_resolve_paths_against_their_own_directories() {
    common::in_process_env();
    let (a, b) = (dir_with_note("from a"), dir_with_note("from b"));
    let rt_a = Runtime::new(a.path());
    let rt_b = Runtime::new(b.path());
    // Interleaved: the runtime built last must not capture the other's relative paths.
    assert_eq!(eval(&rt_a, r#"read_text("note.txt")"#), "from a");
    assert_eq!(eval(&rt_b, r#"read_text("note.txt")"#), "from b");
    assert_eq!(eval(&rt_a, r#"read_text("note.txt")"#), "from a");
    // A path rtlab writes is the one it reads back, in its own directory only.
    eval(&rt_b, r#"write_text("out/x.txt", "b wrote")"#);
    assert!(b.path().join("out/x.txt").is_file());
    assert!(!a.path().join("out/x.txt").exists());
    assert_eq!(eval(&rt_a, r#"file_exists("out/x.txt")"#), "false");
}

#[test]
fn what_a_cell_reads_is_logged_in_its_own_runtime_only() {
    common::in_process_env();
    let (a, b) = (dir_with_note("a"), dir_with_note("b"));
    let rt_a = Runtime::new(a.path());
    let rt_b = Runtime::new(b.path());
    eval(
        &rt_a,
        r#"read_text("note.txt"); env("RTLAB_TEST_UNSET_VARIABLE")"#,
    );
    assert!(rt_b.workspace.take_inputs().is_empty());
    let read = rt_a.workspace.take_inputs();
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap();
    assert_eq!(
        read,
        vec![
            rtlab_core::workspace::Input::File(canonical(a.path()).join("note.txt")),
            rtlab_core::workspace::Input::Env("RTLAB_TEST_UNSET_VARIABLE".into()),
        ]
    );
    // Taken means cleared: the next cell starts with an empty log.
    assert!(rt_a.workspace.take_inputs().is_empty());
}

#[test]
fn fresh_belongs_to_the_runtime_that_runs_fresh() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt_a = Runtime::new(a.path());
    let rt_b = Runtime::new(b.path());
    rt_a.workspace.set_fresh(true);
    assert!(rt_a.workspace.fresh());
    assert!(!rt_b.workspace.fresh());
}

#[test]
fn a_workspace_opens_its_store_once() {
    let ws_dir = tempfile::tempdir().unwrap();
    let first = rtlab_core::store::open(ws_dir.path()).unwrap();
    let again = rtlab_core::store::open(ws_dir.path()).unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    // Deleted beside a running REPL (`rm -rf .rtlab`): opened anew, not written into a lost file.
    std::fs::remove_file(ws_dir.path().join("store.sqlite")).unwrap();
    let reopened = rtlab_core::store::open(ws_dir.path()).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&first, &reopened));
    assert!(ws_dir.path().join("store.sqlite").is_file());
}
