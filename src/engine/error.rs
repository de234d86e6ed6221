//! Script errors rendered the way compilers do: `FILE:LINE:COL: message`, the source line, a caret.

use rhai::{EvalAltResult, ParseError, Position};
use std::fmt;

/// An error with the place in the script it comes from, ready to print.
#[derive(Debug, Clone)]
pub struct ScriptError {
    /// The script path (or `<repl>`).
    pub origin: String,
    /// 1-based line and column, when the error has a position.
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub message: String,
    /// The text of the faulty line, for the caret display.
    pub source_line: Option<String>,
    /// True when the evaluation was stopped by Ctrl-C, not by a fault.
    pub cancelled: bool,
}

impl ScriptError {
    pub fn from_parse(origin: &str, source: &str, err: ParseError) -> ScriptError {
        let ParseError(kind, pos) = err;
        ScriptError::at(origin, source, pos, format!("syntax error: {kind}"))
    }

    pub fn from_eval(origin: &str, source: &str, err: EvalAltResult) -> ScriptError {
        let cancelled = matches!(err.unwrap_inner(), EvalAltResult::ErrorTerminated(..));
        let (message, pos) = describe(err);
        // Long stdlib calls (sleep, batches) stop with this message when Ctrl-C is pressed.
        let cancelled = cancelled || message.starts_with("cancelled by Ctrl-C");
        let mut e = ScriptError::at(origin, source, pos, message);
        e.cancelled = cancelled;
        e
    }

    /// An error about the script as a whole (a missing file, say), without a position.
    pub fn plain(origin: &str, message: impl Into<String>) -> ScriptError {
        ScriptError {
            origin: origin.to_string(),
            line: None,
            col: None,
            message: message.into(),
            source_line: None,
            cancelled: false,
        }
    }

    fn at(origin: &str, source: &str, pos: Position, message: String) -> ScriptError {
        let line = pos.line();
        let col = pos.position();
        let source_line = line
            .and_then(|l| source.lines().nth(l - 1))
            .map(str::to_string);
        ScriptError {
            origin: origin.to_string(),
            line,
            col,
            message,
            source_line,
            cancelled: false,
        }
    }
}

/// Unwraps Rhai's nested "error in function call" chain down to the first error that has a position in
/// the user's script, keeping the chain of function names as context.
fn describe(err: EvalAltResult) -> (String, Position) {
    let mut context = Vec::new();
    let mut current = err;
    loop {
        match current {
            EvalAltResult::ErrorInFunctionCall(name, src, inner, pos) => {
                // Errors inside script-defined functions point into the same source: follow them.
                let shown = if name.starts_with("anon$") {
                    "a closure".to_string()
                } else {
                    format!("`{name}`")
                };
                context.push(shown);
                if src.is_empty() && !inner.position().is_none() && !name.starts_with("anon$") {
                    current = *inner;
                } else {
                    let (msg, _) = describe(*inner);
                    return (with_context(msg, &context), pos);
                }
            }
            EvalAltResult::ErrorRuntime(value, pos) => {
                return (with_context(value.to_string(), &context), pos);
            }
            EvalAltResult::ErrorFunctionNotFound(signature, pos) => {
                return (with_context(friendly_not_found(&signature), &context), pos);
            }
            EvalAltResult::ErrorTerminated(_, pos) => {
                return ("cancelled by Ctrl-C".to_string(), pos);
            }
            mut other => {
                let pos = other.take_position();
                return (with_context(other.to_string(), &context), pos);
            }
        }
    }
}

/// `message (in `inner`, called from `outer`)`: the innermost function first, as a backtrace reads.
fn with_context(message: String, context: &[String]) -> String {
    let mut names = context.iter().rev().cloned();
    match names.next() {
        None => message,
        Some(inner) => {
            let rest: Vec<String> = names.collect();
            if rest.is_empty() {
                format!("{message} (in {inner})")
            } else {
                format!("{message} (in {inner}, called from {})", rest.join(" ← "))
            }
        }
    }
}

/// Rhai's `Function not found: * (&str | ImmutableString | String, i64)` in the user's words.
fn friendly_not_found(signature: &str) -> String {
    let (name, args) = match signature.split_once(" (") {
        Some((n, a)) => (n.trim(), a.trim_end_matches(')')),
        None => (signature.trim(), ""),
    };
    let args = args
        .replace("&str | ImmutableString | String", "string")
        .replace("i64", "int")
        .replace("f64", "float")
        .replace("rhai::Array", "array")
        .replace("rhai::Map", "map");
    if !name.is_empty() && !name.starts_with(|c: char| c.is_alphabetic() || c == '_') {
        format!("operator `{name}` does not apply to ({args})")
    } else {
        format!("no function `{name}` takes ({args})")
    }
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.col) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.origin, self.message)?,
            (Some(l), None) => write!(f, "{}:{l}: {}", self.origin, self.message)?,
            _ => write!(f, "{}: {}", self.origin, self.message)?,
        }
        if let (Some(line), Some(text)) = (self.line, &self.source_line) {
            let gutter = line.to_string();
            write!(f, "\n {gutter} | {text}")?;
            if let Some(col) = self.col {
                // Keep tabs so the caret lines up under tab-indented code.
                let pad: String = text
                    .chars()
                    .take(col.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                write!(f, "\n {} | {pad}^", " ".repeat(gutter.len()))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ScriptError {}

/// Renders an error for the terminal.
pub fn render_error(err: &ScriptError) -> String {
    format!("error: {err}")
}
