//! The REPL's line editor helper: multi-line input while brackets or strings are open, tab completion
//! (stdlib functions, methods, variables in scope, `:commands`, paths), syntax highlighting and bracket
//! matching.

use rustyline::completion::{Completer, FilenameCompleter, Pair};
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Helper};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// REPL commands, for completion and `:help`.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        ":help",
        "[NAME]  list commands, or show a function's signature and doc",
    ),
    (":load", "FILE    run a script in the current scope"),
    (
        ":run",
        "FILE     run a script as a notebook (cells, cache); its variables join the scope",
    ),
    (
        ":watch",
        "FILE   rerun a notebook's stale cells on every save (Ctrl-C stops)",
    ),
    (
        ":cells",
        "        the cells of the last :run, with what each reads and defines",
    ),
    (":vars", "         variables in scope"),
    (":time", "EXPR     evaluate and print how long it took"),
    (":reset", "        drop every variable"),
    (":quit", "         leave (Ctrl-D too)"),
];

const KEYWORDS: &[&str] = &[
    "let", "const", "if", "else", "switch", "while", "loop", "for", "in", "do", "until", "break",
    "continue", "return", "throw", "try", "catch", "fn", "private", "import", "export", "as",
    "true", "false", "this", "global",
];

pub struct ReplHelper {
    /// Every stdlib function name (from the doc index).
    pub functions: Vec<String>,
    /// Each function with the type of its first parameter, for completion after `value.`.
    pub methods: Vec<(String, String)>,
    /// Variables in scope with their types, refreshed after each evaluation.
    pub variables: Rc<RefCell<Vec<(String, String)>>>,
    files: FilenameCompleter,
    /// Byte offset of the bracket under or before the cursor, set by `highlight_char`.
    cursor: Cell<Option<usize>>,
}

impl ReplHelper {
    pub fn new(
        functions: Vec<String>,
        methods: Vec<(String, String)>,
        variables: Rc<RefCell<Vec<(String, String)>>>,
    ) -> ReplHelper {
        ReplHelper {
            functions,
            methods,
            variables,
            files: FilenameCompleter::new(),
            cursor: Cell::new(None),
        }
    }
}

impl Helper for ReplHelper {}

impl Hinter for ReplHelper {
    type Hint = String;
}

/// Lexical state at the end of `input`: open brackets and whether a string or comment is unterminated.
pub fn is_incomplete(input: &str) -> bool {
    let mut depth: i64 = 0;
    let mut chars = input.chars().peekable();
    let mut in_string: Option<char> = None;
    let mut block_depth = 0;
    while let Some(c) = chars.next() {
        if block_depth > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block_depth -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                block_depth += 1;
            }
            continue;
        }
        if let Some(q) = in_string {
            if c == '\\' {
                chars.next();
            } else if c == q {
                in_string = None;
            }
            continue;
        }
        match c {
            '"' | '`' => in_string = Some(c),
            '/' if chars.peek() == Some(&'/') => {
                // A line comment runs to the end of the line.
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                block_depth += 1;
            }
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
    }
    // A `"` string cannot span lines in Rhai, but a backtick string can; both mean "keep typing".
    depth > 0 || in_string.is_some() || block_depth > 0
}

impl Validator for ReplHelper {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        let input = ctx.input();
        if input.trim_start().starts_with(':') {
            return Ok(ValidationResult::Valid(None));
        }
        Ok(if is_incomplete(input) {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl Completer for ReplHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let trimmed = before.trim_start();
        // `:command` names, then paths after commands that take a file.
        if trimmed.starts_with(':') && !trimmed.contains(' ') {
            let start = pos - trimmed.len();
            let pairs = COMMANDS
                .iter()
                .filter(|(c, _)| c.starts_with(trimmed))
                .map(|(c, _)| Pair {
                    display: c.to_string(),
                    replacement: format!("{c} "),
                })
                .collect();
            return Ok((start, pairs));
        }
        if [":load ", ":run ", ":watch "]
            .iter()
            .any(|c| trimmed.starts_with(c))
        {
            return self.files.complete(line, pos, ctx);
        }
        if trimmed.starts_with(":help ") {
            let word_start = before.rfind(' ').map(|i| i + 1).unwrap_or(0);
            return Ok((word_start, self.matching(&before[word_start..])));
        }
        // Inside a string literal: complete paths.
        if before.matches('"').count() % 2 == 1 {
            let quote = before.rfind('"').map(|i| i + 1).unwrap_or(0);
            let (start, pairs) = self.files.complete_path(&line[quote..pos], pos - quote)?;
            return Ok((quote + start, pairs));
        }
        Ok(self.code_completions(before))
    }
}

/// Where the identifier that ends `text` starts (`text.len()` when it ends in something else).
fn last_word_start(text: &str) -> usize {
    text.char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0)
}

impl ReplHelper {
    /// Completions of the code before the cursor (`before`): methods after `value.`, else variables,
    /// keywords and functions; with the byte offset where the completed word starts. What the REPL's
    /// Tab and the Jupyter kernel's `complete_request` give.
    pub fn code_completions(&self, before: &str) -> (usize, Vec<Pair>) {
        let word_start = last_word_start(before);
        let word = &before[word_start..];
        if let Some(receiver) = before[..word_start].strip_suffix('.') {
            return (word_start, self.methods_of(receiver, word));
        }
        (word_start, self.matching(word))
    }

    /// Methods after `receiver.`: when the receiver is a variable in scope, the functions whose first
    /// parameter takes its type (or any value); otherwise every function that takes a parameter.
    fn methods_of(&self, receiver: &str, word: &str) -> Vec<Pair> {
        let name = &receiver[last_word_start(receiver)..];
        let ty = self
            .variables
            .borrow()
            .iter()
            .rev()
            .find(|(v, _)| v == name)
            .map(|(_, t)| t.clone());
        let mut out: Vec<Pair> = self
            .methods
            .iter()
            .filter(|(f, takes)| {
                f.starts_with(word) && ty.as_ref().is_none_or(|t| takes == t || takes == "any")
            })
            .map(|(f, _)| Pair {
                display: f.clone(),
                replacement: f.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.display.cmp(&b.display));
        out.dedup_by(|a, b| a.display == b.display);
        out
    }

    /// Variables, keywords and functions that start with `word`.
    fn matching(&self, word: &str) -> Vec<Pair> {
        let mut out: Vec<Pair> = Vec::new();
        for (v, _) in self
            .variables
            .borrow()
            .iter()
            .filter(|(v, _)| v.starts_with(word))
        {
            out.push(Pair {
                display: v.clone(),
                replacement: v.clone(),
            });
        }
        for k in KEYWORDS
            .iter()
            .filter(|k| k.starts_with(word) && !word.is_empty())
        {
            out.push(Pair {
                display: k.to_string(),
                replacement: k.to_string(),
            });
        }
        for f in self.functions.iter().filter(|f| f.starts_with(word)) {
            out.push(Pair {
                display: f.clone(),
                replacement: f.clone(),
            });
        }
        out.sort_by(|a, b| a.display.cmp(&b.display));
        out.dedup_by(|a, b| a.display == b.display);
        out
    }
}

impl Highlighter for ReplHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if line.trim_start().starts_with(':') {
            return Cow::Borrowed(line);
        }
        let matched = self.cursor.get().and_then(|p| matching_bracket(line, p));
        Cow::Owned(colorize(line, matched))
    }

    fn highlight_char(&self, line: &str, pos: usize, kind: CmdKind) -> bool {
        if kind == CmdKind::ForcedRefresh {
            self.cursor.set(None);
            return true;
        }
        // The bracket just typed, or the one under the cursor.
        let at = |i: usize| {
            line.as_bytes()
                .get(i)
                .is_some_and(|b| b"()[]{}".contains(b))
        };
        let p = if pos > 0 && at(pos - 1) {
            Some(pos - 1)
        } else if at(pos) {
            Some(pos)
        } else {
            None
        };
        self.cursor.set(p);
        true
    }
}

/// The byte index of the bracket matching the one at `pos`.
fn matching_bracket(line: &str, pos: usize) -> Option<usize> {
    let bytes = line.as_bytes();
    let b = *bytes.get(pos)?;
    let (open, close, forward) = match b {
        b'(' => (b'(', b')', true),
        b'[' => (b'[', b']', true),
        b'{' => (b'{', b'}', true),
        b')' => (b'(', b')', false),
        b']' => (b'[', b']', false),
        b'}' => (b'{', b'}', false),
        _ => return None,
    };
    let mut depth = 0i32;
    let indices: Box<dyn Iterator<Item = usize>> = if forward {
        Box::new(pos..bytes.len())
    } else {
        Box::new((0..=pos).rev())
    };
    for i in indices {
        if bytes[i] == open {
            depth += if forward { 1 } else { -1 };
        } else if bytes[i] == close {
            depth += if forward { -1 } else { 1 };
        }
        if depth == 0 {
            return Some(i);
        }
    }
    None
}

const RESET: &str = "\x1b[0m";

/// ANSI colours: keywords magenta, strings green, numbers cyan, comments grey, the matching bracket bold.
fn colorize(line: &str, matched: Option<usize>) -> String {
    let mut out = String::with_capacity(line.len() * 2);
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        if Some(at) == matched {
            out.push_str(&format!("\x1b[1;34m{c}{RESET}"));
            i += 1;
        } else if c == '/' && chars.get(i + 1).map(|x| x.1) == Some('/') {
            out.push_str(&format!("\x1b[90m{}{RESET}", &line[at..]));
            break;
        } else if c == '"' || c == '`' {
            let mut j = i + 1;
            while j < chars.len() && chars[j].1 != c {
                if chars[j].1 == '\\' {
                    j += 1;
                }
                j += 1;
            }
            let end = chars.get(j + 1).map(|x| x.0).unwrap_or(line.len());
            out.push_str(&format!("\x1b[32m{}{RESET}", &line[at..end]));
            i = j + 1;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len()
                && (chars[j].1.is_ascii_alphanumeric() || chars[j].1 == '.' || chars[j].1 == '_')
            {
                j += 1;
            }
            let end = chars.get(j).map(|x| x.0).unwrap_or(line.len());
            out.push_str(&format!("\x1b[36m{}{RESET}", &line[at..end]));
            i = j;
        } else if c.is_alphabetic() || c == '_' {
            let mut j = i;
            while j < chars.len() && (chars[j].1.is_alphanumeric() || chars[j].1 == '_') {
                j += 1;
            }
            let end = chars.get(j).map(|x| x.0).unwrap_or(line.len());
            let word = &line[at..end];
            if KEYWORDS.contains(&word) {
                out.push_str(&format!("\x1b[35m{word}{RESET}"));
            } else {
                out.push_str(word);
            }
            i = j;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_brackets_and_strings_continue_the_input() {
        assert!(is_incomplete("let x = [1, 2,"));
        assert!(is_incomplete("fn f() {\n  let a = 1;"));
        assert!(is_incomplete("let s = `multi\nline"));
        assert!(is_incomplete("/* still a comment"));
        assert!(!is_incomplete("let x = [1, 2];"));
        assert!(!is_incomplete("let s = \"a ( in a string\";"));
        assert!(!is_incomplete("let x = 1; // a { in a comment"));
    }

    #[test]
    fn brackets_match_both_ways() {
        assert_eq!(matching_bracket("f(a[1])", 1), Some(6));
        assert_eq!(matching_bracket("f(a[1])", 6), Some(1));
        assert_eq!(matching_bracket("f(a[1])", 3), Some(5));
        assert_eq!(matching_bracket("f(a", 1), None);
    }
}
