//! Screening untrusted Verilog before any tool sees it: system tasks that reach outside the simulation
//! are refused with a reason. `$system` runs a shell; `$fopen`, `$readmem*`, `$writemem*`, `$dumpfile`
//! and `` `include `` may only name plain files inside the scratch directory.

use crate::Refusal;

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

#[cfg(test)]
mod tests {
    use super::*;

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
