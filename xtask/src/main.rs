//! `cargo run -p xtask -- bench-tables`: copies each bench's results from
//! `target/bench-results/` (or `$CARGO_TARGET_DIR/bench-results/`) into `book/src/results/bench/`
//! and rewrites the performance chapter's tables from them. `--check` only says whether the chapter
//! is what the committed results render (the test does the same).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    if args.first().map(String::as_str) != Some("bench-tables") {
        eprintln!("usage: cargo run -p xtask -- bench-tables [--check]");
        return ExitCode::from(2);
    }
    match bench_tables(check) {
        Ok(msg) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench_tables(check: bool) -> Result<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let chapter_path = root.join(xtask::CHAPTER);
    let chapter = std::fs::read_to_string(&chapter_path)
        .map_err(|e| format!("{}: {e}", chapter_path.display()))?;
    let committed = root.join(xtask::RESULTS_DIR);
    if !check {
        let fresh = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"))
            .join("bench-results");
        std::fs::create_dir_all(&committed).map_err(|e| format!("{}: {e}", committed.display()))?;
        for name in xtask::tables_in(&chapter) {
            let from = fresh.join(format!("{name}.json"));
            if from.is_file() {
                std::fs::copy(&from, committed.join(format!("{name}.json")))
                    .map_err(|e| format!("{}: {e}", from.display()))?;
            }
        }
    }
    let read = |name: &str| -> Result<serde_json::Value, String> {
        let path = committed.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{}: {e}; run `cargo bench --bench {name}` first",
                path.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))
    };
    let rendered = xtask::render_chapter(&chapter, read)?;
    if rendered == chapter {
        return Ok(format!(
            "{}: the tables are what the results render",
            xtask::CHAPTER
        ));
    }
    if check {
        return Err(format!(
            "{}: a table differs from what its results render; run `cargo run -p xtask -- bench-tables`",
            xtask::CHAPTER
        ));
    }
    std::fs::write(&chapter_path, rendered)
        .map_err(|e| format!("{}: {e}", chapter_path.display()))?;
    Ok(format!("{}: tables rendered", xtask::CHAPTER))
}
