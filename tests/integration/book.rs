//! The book (and the README) is checked, not trusted. Every ```` ```rhai ```` block runs, and every
//! ```` ```text ```` block is output that rtlab printed when the test ran what the page shows:
//!
//! - `$ rtlab run scripts/NAME.rhai`: the script's snapshot (the tests' real run of it; a plan's
//!   snapshot also holds its unchanged rerun's status lines, `[2 verify] cached (saved 5.7 s)`);
//! - other `$ COMMAND` lines: the command, run by `bash` in a fresh directory per page that holds the
//!   page's files (a block opened with ```` ```rhai file=NAME ```` is the file `NAME`) and, as the
//!   repository root does, `data/`;
//! - `rtlab> INPUT` lines (or `$ rtlab` and then such lines): a REPL session in a pseudo-terminal;
//! - anything else: what the page's nearest ```` ```rhai ```` block above prints, run as a script.
//!
//! A line `...` stands for lines left out. Timings (`1.2 s`), hashes, the page's directory (shown as
//! `/home/me/exp`) and the home directory (`~`) are scrubbed on both sides. Blocks that are not rtlab's
//! output (a shell command to copy, a Python snippet, a directory layout) use another fence (```` ```sh ````,
//! ```` ```python ````, a bare ```` ``` ````) and are not checked.

use crate::common;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One fenced block of a page.
struct Block {
    page: PathBuf,
    /// The page's line number (1-based) of the block's first line of content.
    line: usize,
    lang: String,
    /// `file=NAME` in the info string: the block is the file `NAME` that the page's commands use.
    file: Option<String>,
    body: Vec<String>,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.page.display(), self.line)
    }
}

/// The book's pages, and the README, whose examples are held to the same standard.
fn pages() -> Vec<PathBuf> {
    let src = common::repo_root().join("book/src");
    let mut pages: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    pages.push(common::repo_root().join("README.md"));
    pages
}

/// The fenced blocks of a page, in order.
fn blocks(page: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(page).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(info) = lines[i].trim().strip_prefix("```") else {
            i += 1;
            continue;
        };
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("").to_string();
        let file = words.find_map(|w| w.strip_prefix("file=").map(str::to_string));
        let end = (i + 1..lines.len())
            .find(|&j| lines[j].trim() == "```")
            .unwrap_or_else(|| panic!("{}:{}: unterminated ``` block", page.display(), i + 1));
        out.push(Block {
            page: page.to_path_buf(),
            line: i + 2,
            lang,
            file,
            body: lines[i + 1..end].iter().map(|l| l.to_string()).collect(),
        });
        i = end + 1;
    }
    out
}

#[test]
fn every_rhai_block_in_the_book_runs() {
    let src = common::repo_root().join("book/src");
    // The verifier's store goes to the tests' temporary workspace, not into the repository.
    common::in_process_env();
    let mut ran = 0;
    let mut failures = Vec::new();
    for page in pages() {
        // A `file=` block is a file of the page's transcripts, which run it (and may show it failing).
        for block in blocks(&page)
            .into_iter()
            .filter(|b| b.lang == "rhai" && b.file.is_none())
        {
            ran += 1;
            // Pad so errors carry the line numbers of the page.
            let padded = format!("{}{}\n", "\n".repeat(block.line - 1), block.body.join("\n"));
            if let Err(e) = rtlab::eval_script(&page.display().to_string(), &padded, &src) {
                failures.push(format!("{e}"));
            }
        }
    }
    assert!(
        ran >= 5,
        "the book should have runnable examples, found {ran}"
    );
    assert!(
        failures.is_empty(),
        "{} of {ran} book examples failed:\n{}",
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
    let last_start = lines.len().checked_sub(chunk.len())?;
    (from..=last_start).find(|&i| {
        chunk
            .iter()
            .enumerate()
            .all(|(j, l)| lines[i + j].trim_end() == l.trim_end())
    })
}

/// The script a block shows running from the repository root (`$ rtlab run scripts/NAME.rhai`,
/// options allowed before the path: `$ rtlab run --cache-min 0 scripts/NAME.rhai`).
fn script_run(block: &Block) -> Option<&str> {
    block
        .body
        .first()?
        .strip_prefix("$ rtlab run ")?
        .split_whitespace()
        .find_map(|word| word.strip_prefix("scripts/"))?
        .strip_suffix(".rhai")
}

/// A ```text block that starts with `$ rtlab run scripts/NAME.rhai` shows that script's output: its
/// lines must be what the script's snapshot (the tests' real run) holds, in order and consecutive,
/// with `...` standing for lines left out. So the book cannot show a number the code does not print.
#[test]
fn every_script_run_the_book_shows_is_what_the_script_prints() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for block in pages().iter().flat_map(|p| blocks(p)) {
        if block.lang != "text" {
            continue;
        }
        let Some(script) = script_run(&block) else {
            continue;
        };
        let at = block.at();
        let Some(snapshot) = snapshot_text(script) else {
            failures.push(format!("{at}: no snapshot for scripts/{script}.rhai"));
            continue;
        };
        let shown = common::scrub(&block.body[1..].join("\n"), &[]);
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
        // The block may start and end anywhere in the output: its chunks in order, each consecutive.
        let mut unanchored = vec!["...".to_string()];
        unanchored.extend(shown.lines().filter(|l| !is_status(l)).map(str::to_string));
        unanchored.push("...".to_string());
        let actual: Vec<String> = actual.iter().map(|l| l.to_string()).collect();
        if let Err(e) = glob_match(&unanchored, &actual) {
            failures.push(format!("{at}: scripts/{script}.rhai: {e}"));
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "the book should show script runs, found {checked}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// How the book shows the directory a page's commands run in.
const SHOWN_DIR: &str = "/home/me/exp";

/// Makes output comparable across machines and runs: timings, hex hashes, the page's directory and
/// the home directory. Applied to the book's text and to the output alike.
fn scrub(text: &str, dir: &Path) -> String {
    let home = std::env::var("HOME").unwrap_or_default();
    let mut text = text.replace(&dir.display().to_string(), SHOWN_DIR);
    if home.len() > 1 {
        text = text.replace(&format!("{home}/"), "~/");
    }
    let text = common::scrub(&text, &[]);
    // Cache keys and content hashes: runs of 8 or more hex digits (`67e59009ffe4`, `df04…`).
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        let run = chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        let ends_word = chars
            .get(i + run)
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        let has_digit = chars[i..i + run].iter().any(|c| c.is_ascii_digit());
        if starts_word
            && ends_word
            && run >= 4
            && has_digit
            && (run >= 8 || chars.get(i + run) == Some(&'…'))
        {
            out.push_str("[HEX]");
            // `df04…` is how the book abbreviates a hash.
            i += run + usize::from(chars.get(i + run) == Some(&'…'));
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Checks `actual` against `shown`, where a line `...` stands for any number of lines: without one at
/// the start the output must start with the shown lines, without one at the end it must end with them.
fn glob_match(shown: &[String], actual: &[String]) -> Result<(), String> {
    let actual: Vec<&str> = actual.iter().map(|l| l.trim_end()).collect();
    let leading = shown.first().is_some_and(|l| l.trim() == "...");
    let trailing = shown.last().is_some_and(|l| l.trim() == "...");
    let chunks: Vec<Vec<String>> = shown
        .split(|l| l.trim() == "...")
        .map(|c| c.iter().map(|l| l.trim_end().to_string()).collect())
        .filter(|c: &Vec<String>| !c.is_empty())
        .collect();
    let mut from = 0;
    for (k, chunk) in chunks.iter().enumerate() {
        let last = k + 1 == chunks.len();
        let found = if k == 0 && !leading {
            find_run(&actual, chunk, 0).filter(|&i| i == 0)
        } else if last && !trailing {
            let start = actual.len().checked_sub(chunk.len());
            start.filter(|&s| s >= from && find_run(&actual, chunk, s) == Some(s))
        } else {
            find_run(&actual, chunk, from)
        };
        match found {
            Some(i) => from = i + chunk.len(),
            None => {
                return Err(format!(
                    "these lines are not in the output where the book shows them:\n{}",
                    chunk.join("\n")
                ))
            }
        }
    }
    if chunks.is_empty() && !actual.is_empty() && !leading {
        return Err("the book shows no output, but there is some".into());
    }
    if !trailing && from != actual.len() {
        return Err(
            "the output goes on after what the book shows (end the block with `...`)".into(),
        );
    }
    Ok(())
}

/// The directory the rtlab binary is in, first on the `PATH` of the page's commands.
fn path_with_rtlab() -> String {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_rtlab"));
    format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs one bash command line in `dir`, stderr merged into stdout as a terminal shows them.
fn shell(dir: &Path, command: &str) -> String {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("exec 2>&1\n{command}"))
        .current_dir(dir)
        .env("PATH", path_with_rtlab())
        .env_remove("RTLAB_HOME")
        .env("XDG_DATA_HOME", dir.join(".xdg"))
        .env("NO_COLOR", "1")
        .output()
        .expect("sh runs");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn lines_of(text: &str) -> Vec<String> {
    text.lines().map(str::to_string).collect()
}

/// `$ COMMAND` lines, each followed by the output the book shows for it.
fn check_shell_transcript(block: &Block, dir: &Path) -> Result<(), String> {
    let mut i = 0;
    while i < block.body.len() {
        let command = block.body[i]
            .strip_prefix("$ ")
            .ok_or_else(|| format!("line {}: expected a `$ ` command", block.line + i))?;
        let bare = command.split('#').next().unwrap().trim();
        if bare == "rtlab" || bare == "rtlab repl" {
            return check_repl_transcript(&block.body[i + 1..], dir, true)
                .map_err(|e| format!("the REPL session of line {}: {e}", block.line + i));
        }
        let end = (i + 1..block.body.len())
            .find(|&j| block.body[j].starts_with("$ "))
            .unwrap_or(block.body.len());
        let shown = lines_of(&scrub(&block.body[i + 1..end].join("\n"), dir));
        let actual = lines_of(&scrub(&shell(dir, command), dir));
        glob_match(&shown, &actual)
            .map_err(|e| format!("`$ {command}`: {e}\nit printed:\n{}", actual.join("\n")))?;
        i = end;
    }
    Ok(())
}

/// What a terminal shows of pseudo-terminal output: escape sequences dropped, each line as it was last
/// redrawn (the text after its last carriage return).
fn terminal_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw);
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            plain.push(c);
            continue;
        }
        match chars.next() {
            // CSI: parameters, then one final byte in @..~.
            Some('[') => {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            // OSC: up to BEL or ESC \.
            Some(']') => {
                while let Some(c) = chars.next() {
                    if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    plain
        .split('\n')
        .map(|l| {
            let l = l.trim_end_matches('\r');
            l.rsplit('\r').next().unwrap_or("").to_string()
        })
        .collect()
}

/// Whether `input` leaves a bracket open, so the REPL reads the next line as its continuation.
fn open_brackets(input: &str) -> bool {
    let mut depth = 0i32;
    let mut in_string = None;
    let mut escaped = false;
    for c in input.chars() {
        if let Some(q) = in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                in_string = None;
            }
            continue;
        }
        match c {
            '"' | '`' => in_string = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    depth > 0
}

/// A REPL session: `rtlab> INPUT` lines (continued while a bracket is open), each followed by the
/// output the book shows for it; `^C` at the start of an output line is Ctrl-C pressed while the input
/// runs (the terminal echoes nothing for it, so it is not compared). With `banner`, the lines before the first prompt are what the REPL prints as it starts.
fn check_repl_transcript(lines: &[String], dir: &Path, banner: bool) -> Result<(), String> {
    use expectrl::{ControlCode, Expect, Session};
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rtlab"));
    cmd.current_dir(dir)
        .env_remove("RTLAB_HOME")
        .env("XDG_DATA_HOME", dir.join(".xdg"))
        .env("TERM", "xterm");
    let mut s = Session::spawn(cmd).map_err(|e| format!("rtlab starts in a pty: {e}"))?;
    // A bound on liveness, not a speed goal (the REPL tests explain the 120 s).
    s.set_expect_timeout(Some(Duration::from_secs(120)));
    // rustyline turns bracketed paste on as it starts to read a line: the REPL is at a prompt.
    let ready = "\x1b[?2004h";
    let first = lines
        .iter()
        .position(|l| l.starts_with("rtlab> "))
        .ok_or("no `rtlab> ` line")?;
    let started = s.expect(ready).map_err(|e| format!("no prompt: {e}"))?;
    if banner {
        let actual: Vec<String> = terminal_lines(started.before())
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect();
        glob_match(&lines[..first], &actual).map_err(|e| format!("as it starts: {e}"))?;
    }
    let mut i = first;
    while i < lines.len() {
        let mut input = vec![lines[i].strip_prefix("rtlab> ").unwrap().to_string()];
        i += 1;
        while open_brackets(&input.join("\n")) && i < lines.len() {
            input.push(lines[i].clone());
            i += 1;
        }
        let end = (i..lines.len())
            .find(|&j| lines[j].starts_with("rtlab> "))
            .unwrap_or(lines.len());
        let mut shown: Vec<String> = lines[i..end].to_vec();
        i = end;
        for (k, line) in input.iter().enumerate() {
            if k > 0 {
                // A line typed before the editor is back in raw mode can be lost.
                std::thread::sleep(Duration::from_millis(300));
            }
            s.send_line(line).map_err(|e| e.to_string())?;
        }
        let output = if shown.first().is_some_and(|l| l.starts_with("^C")) {
            // Let the input start running, then cancel it. A ^C lost under load is resent (see the
            // REPL tests).
            std::thread::sleep(Duration::from_millis(1000));
            s.set_expect_timeout(Some(Duration::from_secs(5)));
            let mut cancelled = None;
            for _ in 0..3 {
                s.send(ControlCode::EndOfText).map_err(|e| e.to_string())?;
                if let Ok(found) = s.expect("cancelled (scope kept)") {
                    let mut raw = found.before().to_vec();
                    raw.extend_from_slice(b"cancelled (scope kept)");
                    cancelled = Some(raw);
                    break;
                }
            }
            s.set_expect_timeout(Some(Duration::from_secs(120)));
            shown[0] = shown[0].trim_start_matches("^C").to_string();
            let mut raw = cancelled.ok_or("three Ctrl-C did not cancel the input")?;
            let after = s
                .expect(ready)
                .map_err(|e| format!("no prompt after ^C: {e}"))?;
            raw.extend_from_slice(after.before());
            terminal_lines(&raw)
        } else {
            let found = s
                .expect(ready)
                .map_err(|e| format!("no prompt after `{}`: {e}", input.join("\n")))?;
            terminal_lines(found.before())
        };
        // Drop the echo of the input: the prompt line and its continuation lines.
        let actual: Vec<String> = output
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.starts_with("rtlab> ") && !input[1..].iter().any(|c| l == c))
            .collect();
        let shown = lines_of(&scrub(&shown.join("\n"), dir));
        let actual = lines_of(&scrub(&actual.join("\n"), dir));
        glob_match(&shown, &actual).map_err(|e| {
            format!(
                "after `rtlab> {}`: {e}\nit printed:\n{}",
                input.join("\n"),
                actual.join("\n")
            )
        })?;
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = s.send(ControlCode::EndOfTransmission);
    let _ = s.expect(expectrl::Eof);
    Ok(())
}

/// A ```text block that is neither a command nor a REPL session is what the nearest ```rhai block
/// above it prints: run as a script in book/src (where its relative paths point), with its cells'
/// status lines, stderr merged into stdout.
fn check_block_output(block: &Block, code: &Block, dir: &Path) -> Result<(), String> {
    let src = common::repo_root().join("book/src");
    let stem = block
        .page
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let script = src.join(format!(".book-check-{stem}-{}.rhai", code.line));
    std::fs::write(&script, format!("{}\n", code.body.join("\n"))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtlab"))
        .arg("run")
        .arg(&script)
        .current_dir(&src)
        // The cache and the verifier's store of these runs go to the page's directory.
        .env("RTLAB_HOME", dir.join(".rtlab-blocks"))
        .env("XDG_DATA_HOME", dir.join(".xdg"))
        .stderr(std::process::Stdio::piped())
        .output();
    let _ = std::fs::remove_file(&script);
    let out = out.map_err(|e| e.to_string())?;
    // The example's output: stdout, then stderr (its cells' status lines and notes) line by line in
    // the order they were written is not recoverable from two pipes, so the book shows a block's
    // stdout and its stderr as separate blocks or as one of them.
    let stdout = scrub(&String::from_utf8_lossy(&out.stdout), dir);
    let stderr = scrub(&String::from_utf8_lossy(&out.stderr), dir);
    let shown = lines_of(&scrub(&block.body.join("\n"), dir));
    if !out.status.success() {
        return Err(format!(
            "the example at line {} failed:\n{stdout}{stderr}",
            code.line
        ));
    }
    let stdout_result = glob_match(&shown, &lines_of(&stdout));
    let stderr_result = glob_match(&shown, &lines_of(&stderr));
    if stdout_result.is_ok() || stderr_result.is_ok() {
        return Ok(());
    }
    Err(format!(
        "this is not what the example at line {} prints (stdout: {}; stderr: {})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        code.line,
        stdout_result.unwrap_err(),
        stderr_result.unwrap_err()
    ))
}

#[test]
fn every_output_block_in_the_book_is_what_rtlab_printed() {
    common::in_process_env();
    // The chapters show runs of SmolLM2 as a reader sees them once the model is in the cache (the
    // README's first command puts it there); the first run's download lines are not part of them.
    common::smollm2();
    let mut checked = 0;
    let mut failures = Vec::new();
    for page in pages() {
        let blocks = blocks(&page);
        let outputs: Vec<&Block> = blocks
            .iter()
            .filter(|b| b.lang == "text" && script_run(b).is_none())
            .collect();
        let files: Vec<&Block> = blocks.iter().filter(|b| b.file.is_some()).collect();
        if outputs.is_empty() && files.is_empty() {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        // The page's workspace, so nothing above the temporary directory is taken for one.
        std::fs::create_dir_all(dir.path().join(".rtlab")).unwrap();
        // Commands run as from the repository root: `data/` is the repository's.
        std::os::unix::fs::symlink(common::repo_root().join("data"), dir.path().join("data"))
            .unwrap();
        for file in &files {
            let path = dir.path().join(file.file.as_ref().unwrap());
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, format!("{}\n", file.body.join("\n"))).unwrap();
            // Every file the page shows is used by one of its commands, or it is checked by nothing.
            let name = file.file.as_ref().unwrap();
            let named_by_a_file = files
                .iter()
                .any(|f| f.file != file.file && f.body.iter().any(|l| l.contains(name.as_str())));
            let used = named_by_a_file
                || outputs.iter().any(|b| {
                    b.body.iter().any(|l| {
                        (l.starts_with("$ ") || l.starts_with("rtlab> "))
                            && l.contains(name.as_str())
                    })
                });
            if !used {
                failures.push(format!(
                    "{}: the file {name} is used by no command or file on its page",
                    file.at()
                ));
            }
        }
        for (index, block) in blocks.iter().enumerate() {
            if block.lang != "text" || script_run(block).is_some() {
                continue;
            }
            checked += 1;
            let first = block.body.first().map(String::as_str).unwrap_or("");
            let result = if first.starts_with("$ ") {
                check_shell_transcript(block, dir.path())
            } else if first.starts_with("rtlab> ") {
                check_repl_transcript(&block.body, dir.path(), false)
            } else {
                match blocks[..index]
                    .iter()
                    .rev()
                    .find(|b| b.lang == "rhai" && b.file.is_none())
                {
                    Some(code) => check_block_output(block, code, dir.path()),
                    None => Err(
                        "an output block with no command, REPL input or ```rhai example above it"
                            .into(),
                    ),
                }
            };
            if let Err(e) = result {
                failures.push(format!("{}: {e}", block.at()));
            }
        }
    }
    assert!(
        checked >= 10,
        "the book should show output, found {checked} blocks"
    );
    assert!(
        failures.is_empty(),
        "{} book output blocks are not what rtlab prints:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_output_check_fails_on_a_wrong_number_and_allows_elision() {
    let lines = |t: &str| lines_of(t);
    let actual = lines("a\nb\nc\nd");
    assert!(glob_match(&lines("a\nb\nc\nd"), &actual).is_ok());
    assert!(glob_match(&lines("a\n...\nd"), &actual).is_ok());
    assert!(glob_match(&lines("...\nc\n..."), &actual).is_ok());
    assert!(glob_match(&lines("a\nb\n..."), &actual).is_ok());
    assert!(glob_match(&lines("a\nb\nc\nx"), &actual).is_err());
    assert!(
        glob_match(&lines("a\nb"), &actual).is_err(),
        "missing the rest"
    );
    assert!(
        glob_match(&lines("b\n..."), &actual).is_err(),
        "does not start at a"
    );
    assert!(
        glob_match(&lines("...\nc"), &actual).is_err(),
        "does not end at c"
    );
    assert!(
        glob_match(&lines("...\nc\n...\nb\n..."), &actual).is_err(),
        "out of order"
    );
    let dir = Path::new("/tmp/xyz");
    assert_eq!(
        scrub(
            "[1 load] ran in 0.10 s; key 67e59009ffe4 at /tmp/xyz/nb.rhai; df04…/m",
            dir
        ),
        "[1 load] ran in [T] s; key [HEX] at /home/me/exp/nb.rhai; [HEX]/m"
    );
}

/// The performance chapter's speed tables are what the committed bench results render
/// (`book/src/results/bench/NAME.json`, copied from a bench run by `cargo run -p xtask --
/// bench-tables`), so no number in them was typed by hand or outlived its run.
#[test]
fn every_speed_table_in_the_book_is_what_its_bench_results_render() {
    let root = common::repo_root();
    let chapter = std::fs::read_to_string(root.join(xtask::CHAPTER)).unwrap();
    let read = |name: &str| -> Result<serde_json::Value, String> {
        let path = root.join(xtask::RESULTS_DIR).join(format!("{name}.json"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    };
    let tables = xtask::tables_in(&chapter);
    assert!(!tables.is_empty(), "the chapter has no rendered tables");
    let rendered = xtask::render_chapter(&chapter, read).unwrap();
    assert!(
        rendered == chapter,
        "{}: a speed table differs from what its results render; run `cargo run -p xtask -- bench-tables`",
        xtask::CHAPTER
    );
    // Every results file names the machine and the commit it was measured on.
    for name in &tables {
        let r = read(name).unwrap();
        assert!(
            r["machine"]["cpu"].is_string() && r["machine"]["cores"].is_number(),
            "{name}: {r}"
        );
        assert!(
            r["commit"].as_str().is_some_and(|c| c.len() >= 7),
            "{name}: {r}"
        );
    }
    // Planted: a figure typed over a rendered one is caught.
    let first = tables[0].clone();
    let table_start = chapter
        .find(&format!("<!-- bench-table {first} -->"))
        .unwrap();
    let digit = table_start
        + chapter[table_start..]
            .find(|c: char| c.is_ascii_digit())
            .unwrap();
    let mut edited = chapter.clone();
    let old = edited.as_bytes()[digit];
    edited.replace_range(digit..digit + 1, if old == b'9' { "8" } else { "9" });
    assert_ne!(xtask::render_chapter(&edited, read).unwrap(), edited);
}
