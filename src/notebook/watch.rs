//! `rtlab watch FILE`: rerun the stale cells on every save. Unchanged cells come back from memory, so
//! only what an edit touched runs again.

use super::runner::{Notebook, NotebookOptions};
use crate::engine::{render_error, Runtime};
use rhai::Scope;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Runs the notebook, then again after every change of the file, until Ctrl-C (or `max_runs`, for tests).
/// `seed_scope` fills a fresh scope before each run (the script's `ARGS`).
pub fn watch(
    rt: &Runtime,
    path: &Path,
    opts: &NotebookOptions,
    seed_scope: &dyn Fn(&mut Scope<'static>),
    max_runs: Option<usize>,
) {
    let mut notebook = Notebook::new(path);
    let mut runs = 0;
    loop {
        let mut scope = Scope::new();
        seed_scope(&mut scope);
        let stamp = modified(path);
        if let Err(e) = notebook.run(rt, &mut scope, opts) {
            eprintln!("{}", render_error(&e));
        }
        runs += 1;
        if max_runs.is_some_and(|m| runs >= m) {
            return;
        }
        eprintln!("watching {} for changes (Ctrl-C to stop)", path.display());
        crate::engine::clear_cancel();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            if crate::engine::cancel_requested() {
                return;
            }
            let now = modified(path);
            if now.is_some() && now != stamp {
                // Editors write in several steps: let the save settle.
                std::thread::sleep(Duration::from_millis(100));
                eprintln!("--- {} changed, rerunning stale cells ---", path.display());
                break;
            }
        }
    }
}
