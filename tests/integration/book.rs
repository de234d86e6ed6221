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

/// A snapshot's text: what follows insta's `---` header.
fn snapshot_text(name: &str) -> Option<String> {
    let path = common::repo_root()
        .join("tests/integration/snapshots")
        .join(format!("integration__scripts__{name}.snap"));
    let text = std::fs::read_to_string(path).ok()?;
    let body = text.splitn(3, "---\n").nth(2)?;
    Some(body.to_string())
}

/// Where `chunk` occurs as consecutive lines of `lines`, at or after `from`.
fn find_run(lines: &[&str], chunk: &[String], from: usize) -> Option<usize> {
    (from..=lines.len().saturating_sub(chunk.len())).find(|&i| {
        chunk
            .iter()
            .enumerate()
            .all(|(j, l)| lines[i + j].trim_end() == l.trim_end())
    })
}

/// A ```text block that starts with `$ rtlab run scripts/NAME.rhai` shows that script's output: its
/// lines must be what the script's snapshot (the tests' real run) holds, in order and consecutive,
/// with `...` standing for lines left out. So the book cannot show a number the code does not print.
#[test]
fn every_script_run_the_book_shows_is_what_the_script_prints() {
    let src = common::repo_root().join("book/src");
    let mut checked = 0;
    let mut failures = Vec::new();
    let mut pages: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim() != "```text" {
                i += 1;
                continue;
            }
            let start = i + 1;
            let end = (start..lines.len())
                .find(|&j| lines[j].trim() == "```")
                .unwrap_or_else(|| {
                    panic!("{}:{}: unterminated ```text block", page.display(), i + 1)
                });
            i = end + 1;
            let Some(script) = lines
                .get(start)
                .and_then(|l| l.strip_prefix("$ rtlab run scripts/"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|l| l.strip_suffix(".rhai"))
            else {
                continue;
            };
            let at = format!("{}:{}", page.display(), start + 1);
            let Some(snapshot) = snapshot_text(script) else {
                failures.push(format!("{at}: no snapshot for scripts/{script}.rhai"));
                continue;
            };
            let shown = common::scrub(&lines[start + 1..end].join("\n"), &[]);
            let actual = snapshot.lines().collect::<Vec<_>>();
            // A cell's status line (`[2 train] ran in 1.2 s`) goes to stderr, which the snapshot
            // keeps apart: it must be there, and the rest must be stdout in order.
            let is_status = |l: &str| {
                l.starts_with('[')
                    && l[1..].starts_with(|c: char| c.is_ascii_digit())
                    && l.contains("] ")
            };
            for status in shown.lines().filter(|l| is_status(l)) {
                if !actual.contains(&status) {
                    failures.push(format!(
                        "{at}: scripts/{script}.rhai does not report `{status}`"
                    ));
                }
            }
            let shown = shown
                .lines()
                .filter(|l| !is_status(l))
                .collect::<Vec<_>>()
                .join("\n");
            let mut from = 0;
            for chunk in shown
                .split("\n...\n")
                .map(|c| c.trim_start_matches("...\n"))
            {
                let chunk: Vec<String> = chunk
                    .lines()
                    .filter(|l| *l != "...")
                    .map(str::to_string)
                    .collect();
                if chunk.is_empty() {
                    continue;
                }
                match find_run(&actual, &chunk, from) {
                    Some(k) => from = k + chunk.len(),
                    None => {
                        failures.push(format!(
                            "{at}: scripts/{script}.rhai does not print these lines (in this order, after what the block shows above them):\n{}",
                            chunk.join("\n")
                        ));
                        break;
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "the book should show script runs, found {checked}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
