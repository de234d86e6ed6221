//! Screening untrusted Verilog before any tool sees it: system tasks that reach outside the simulation
//! are refused with a reason. `$system` runs a shell; `$fopen`, `$readmem*`, `$writemem*`, `$dumpfile`
//! and `` `include `` may only name plain files inside the scratch directory. A text with macros is
//! screened again as `iverilog -E` expands it.

use crate::process::{lines_matching, run_tool, Limits};
use crate::{Refusal, VerifyError, VerifyOptions};
use std::path::Path;

/// Tasks that take a file name as their first argument.
const FILE_TASKS: &[&str] = &[
    "$fopen",
    // iverilog's shorthands for `$fopen(name, "r" | "w" | "a")`.
    "$fopenr",
    "$fopenw",
    "$fopena",
    "$sdf_annotate",
    "$readmemh",
    "$readmemb",
    "$writememh",
    "$writememb",
    "$dumpfile",
    "$fdumpfile",
];

/// Removes comments, keeping line structure (so line numbers stay right) and string literals.
fn strip_comments(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            out.push(c);
            i += 1;
            while i < chars.len() && chars[i] != '"' && chars[i] != '\n' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    out.push(chars[i]);
                    i += 1;
                }
                out.push(chars[i]);
                i += 1;
            }
            if i < chars.len() {
                out.push(chars[i]);
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                if chars[i] == '\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 2;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// True when a file name stays inside the scratch directory: no separators, no parent, no home.
fn is_local_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && !name.contains('\\')
        && !name.starts_with('.')
        && !name.starts_with('~')
}

/// The first string literal right after `(` following position `at`, if the first argument is one.
fn first_literal_argument(text: &str, at: usize) -> Option<String> {
    let rest = text[at..].trim_start();
    let rest = rest.strip_prefix('(')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// Ok, or why the code is refused. `what` names the file in the message ("design", "testbench").
pub fn screen(code: &str, what: &str) -> Result<(), Refusal> {
    let refuse = |pos_line: usize, reason: String| Refusal {
        what: what.to_string(),
        line: Some(pos_line),
        reason,
    };
    let text = strip_comments(code);
    let line_of = |pos: usize| text[..pos].matches('\n').count() + 1;
    for (pos, _) in text.match_indices("$system") {
        let next = text[pos + 7..].chars().next();
        if !next.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return Err(refuse(
                line_of(pos),
                "`$system` runs a shell command; refused".into(),
            ));
        }
    }
    for task in FILE_TASKS {
        for (pos, _) in text.match_indices(task) {
            let after = pos + task.len();
            if text[after..]
                .chars()
                .next()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                continue; // a longer name such as $fopenr is not this task
            }
            match first_literal_argument(&text, after) {
                Some(name) if is_local_name(&name) => {}
                Some(name) => {
                    return Err(refuse(line_of(pos), format!("`{task}(\"{name}\")` reaches outside the scratch directory; refused")))
                }
                None => {
                    return Err(refuse(
                        line_of(pos),
                        format!("`{task}` with a computed file name cannot be checked; pass a plain file name literal"),
                    ))
                }
            }
        }
    }
    for (pos, _) in text.match_indices("`include") {
        let rest = text[pos + 8..].trim_start();
        let name = rest
            .strip_prefix('"')
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        if !is_local_name(name) {
            return Err(refuse(
                line_of(pos),
                format!("`include \"{name}\"` reaches outside the scratch directory; refused"),
            ));
        }
    }
    Ok(())
}

/// The untrusted texts of one example, by what they are.
fn untrusted<'a>(
    code: &'a str,
    opts: &'a VerifyOptions,
) -> impl Iterator<Item = (&'static str, &'a str)> {
    [
        ("design", Some(code)),
        ("testbench", opts.testbench.as_deref()),
        ("reference", opts.reference.as_deref()),
    ]
    .into_iter()
    .filter_map(|(what, text)| text.map(|t| (what, t)))
}

/// Untrusted text is screened before any tool sees it.
pub(crate) fn screen_inputs(code: &str, opts: &VerifyOptions) -> Result<(), VerifyError> {
    untrusted(code, opts).try_for_each(|(what, text)| Ok(screen(text, what)?))
}

/// Screens the text that macros expand to: `` `define SYS(x) $sys``x `` builds `$system` out of
/// pieces the plain screen cannot see. Each input that defines a macro is run through iverilog's
/// preprocessor (`-E`, which runs nothing) and the expansion is screened again.
///
/// A text that passed is remembered (by its blake3 hash) for the rest of the process, so a
/// benchmark's n samples of one problem, which share one testbench, expand it once instead of n
/// times. Not a text that could include a file (its expansion would depend on the files beside it,
/// the row's design among them): one that says `include` anywhere or pastes tokens (`` `` ``), the
/// ways to spell the directive.
/// Returns how many texts it expanded.
pub(crate) fn screen_expanded(
    code: &str,
    opts: &VerifyOptions,
    dir: &Path,
) -> Result<usize, VerifyError> {
    static PASSED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<[u8; 32]>>> =
        std::sync::OnceLock::new();
    let passed = PASSED.get_or_init(Default::default);
    let mut expanded_texts = 0;
    for (what, text) in untrusted(code, opts).filter(|(_, t)| t.contains("`define")) {
        let memo = (!text.contains("include") && !text.contains("``"))
            .then(|| *blake3::hash(text.as_bytes()).as_bytes());
        if memo.is_some_and(|key| passed.lock().is_ok_and(|set| set.contains(&key))) {
            continue;
        }
        let input = format!("pp_{what}.sv");
        std::fs::write(dir.join(&input), text)
            .map_err(|e| VerifyError::io(format!("write the {what}"), e))?;
        let output = format!("pp_{what}.out");
        let o = run_tool(
            "iverilog",
            &["-E", "-o", &output, &input],
            dir,
            Limits {
                timeout: std::time::Duration::from_millis(opts.timeouts.syntax),
                ..Limits::default()
            },
        );
        let expanded = std::fs::read_to_string(dir.join(&output)).map_err(|_| Refusal {
            what: what.to_string(),
            line: None,
            reason: format!(
                "its macros could not be expanded to be checked ({}); refused",
                lines_matching(&o.output, &["error"]).join("; ")
            ),
        })?;
        screen(&expanded, &format!("{what} (macros expanded)"))?;
        expanded_texts += 1;
        if let (Some(key), Ok(mut set)) = (memo, passed.lock()) {
            set.insert(key);
        }
    }
    Ok(expanded_texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_testbench_whose_macros_passed_is_not_expanded_again_unless_it_could_include_a_file() {
        // A text unique to this test (the memo lives for the process, which other tests share).
        let tag = format!("{:?}", std::time::SystemTime::now());
        let plain =
            format!("// {tag}\n`define OK 12\nmodule tb; initial $display(`OK); endmodule\n");
        let includes =
            format!("// {tag}\n`define OK 12\n`include \"design.sv\"\nmodule tb; endmodule\n");
        let pastes = format!("// {tag}\n`define CAT(a, b) a``b\nmodule tb; endmodule\n");
        let design = "module top; endmodule\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("design.sv"), design).unwrap();
        let with = |testbench: &str| VerifyOptions {
            testbench: Some(testbench.to_string()),
            ..VerifyOptions::default()
        };
        let expanded =
            |testbench: &str| screen_expanded(design, &with(testbench), dir.path()).unwrap();
        assert_eq!(expanded(&plain), 1, "the first row expands its testbench");
        assert_eq!(expanded(&plain), 0, "the next rows reuse the verdict");
        for could_include in [&includes, &pastes] {
            assert_eq!(expanded(could_include), 1);
            assert_eq!(expanded(could_include), 1, "{could_include}");
        }
        // A refused text is never remembered as passed.
        let hidden = format!("// {tag}\n`define F \"/etc/passwd\"\nmodule tb; integer f; initial f = $fopen(`F); endmodule\n");
        for _ in 0..2 {
            assert!(screen_expanded(design, &with(&hidden), dir.path()).is_err());
        }
    }

    #[test]
    fn system_is_refused_with_its_line() {
        let e = screen(
            "module m;\ninitial $system(\"rm -rf ~\");\nendmodule",
            "design",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "design line 2: `$system` runs a shell command; refused"
        );
        assert_eq!((e.what.as_str(), e.line), ("design", Some(2)));
    }

    #[test]
    fn file_tasks_may_only_name_local_files() {
        assert!(screen("initial $readmemh(\"rom.hex\", mem);", "d").is_ok());
        assert!(screen("initial $dumpfile(\"wave.vcd\");", "d").is_ok());
        assert!(screen("initial $readmemh(\"/etc/passwd\", mem);", "d")
            .unwrap_err()
            .to_string()
            .contains("outside the scratch directory"));
        assert!(screen("initial f = $fopen(\"../../x\", \"w\");", "d").is_err());
        assert!(screen("initial f = $fopen(name, \"w\");", "d")
            .unwrap_err()
            .to_string()
            .contains("computed file name"));
        assert!(screen("`include \"/etc/shadow\"", "d").is_err());
    }

    #[test]
    fn comments_and_strings_are_not_calls() {
        assert!(screen(
            "// $system(\"x\")\n/* $fopen(\"/x\") */ module m; endmodule",
            "d"
        )
        .is_ok());
    }
}
