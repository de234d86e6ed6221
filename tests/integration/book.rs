//! Every ```rhai block in the book runs, in a fresh engine, relative paths resolving against book/src.

use crate::common;

#[test]
fn every_rhai_block_in_the_book_runs() {
    let src = common::repo_root().join("book/src");
    // The verifier's store goes to the tests' temporary workspace, not into the repository.
    common::in_process_env();
    let mut pages: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    pages.sort();
    let mut blocks = 0;
    let mut failures = Vec::new();
    for page in pages
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(page).unwrap();
        let mut in_block = false;
        let mut start = 0;
        let mut code = String::new();
        for (i, line) in text.lines().enumerate() {
            if !in_block && line.trim() == "```rhai" {
                in_block = true;
                start = i + 2;
                code.clear();
            } else if in_block && line.trim() == "```" {
                in_block = false;
                blocks += 1;
                // Pad so errors carry the line numbers of the page.
                let padded = format!("{}{code}", "\n".repeat(start - 1));
                let origin = page.display().to_string();
                if let Err(e) = rtlab::eval_script(&origin, &padded, &src) {
                    failures.push(format!("{e}"));
                }
            } else if in_block {
                code.push_str(line);
                code.push('\n');
            }
        }
        assert!(!in_block, "{}: unterminated ```rhai block", page.display());
    }
    assert!(
        blocks >= 5,
        "the book should have runnable examples, found {blocks}"
    );
    assert!(
        failures.is_empty(),
        "{} of {blocks} book examples failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
