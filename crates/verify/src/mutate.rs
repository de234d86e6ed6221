//! Mutation operators for Verilog: each mutant changes one thing (swaps an operator, drops an
//! assignment, inverts a condition, changes a constant). The differential testbench is measured by the
//! mutants it catches, and A7 testbenches are accepted only if they fail enough of them.

/// One mutant: what changed, and the code.
#[derive(Debug, Clone)]
pub struct Mutant {
    pub description: String,
    pub code: String,
}

/// Comments blanked out with spaces, so byte offsets match the original.
fn blank_comments(code: &str) -> String {
    let bytes = code.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                out[i] = b' ';
                i += 1;
            }
            i += 1;
        } else if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                out[i] = b' ';
                i += 1;
            }
        } else if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
            while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                if bytes[i] != b'\n' {
                    out[i] = b' ';
                }
                i += 1;
            }
            let end = (i + 2).min(bytes.len());
            out[i.min(end)..end].fill(b' ');
            i += 2;
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| code.to_string())
}

/// Where the module bodies start (after each port list), so port declarations are not mutated.
fn body_ranges(text: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(m) = text[from..].find("module").map(|i| i + from) {
        let word_ok = (m == 0 || !text.as_bytes()[m - 1].is_ascii_alphanumeric())
            && text[m + 6..].starts_with(|c: char| c.is_whitespace());
        let Some(end) = text[m..].find("endmodule").map(|i| i + m) else {
            break;
        };
        if word_ok {
            // The header ends at the first `;` after the module name.
            if let Some(semi) = text[m..end].find(';').map(|i| i + m) {
                ranges.push((semi + 1, end));
            }
        }
        from = end + 9;
    }
    ranges
}

fn in_ranges(pos: usize, ranges: &[(usize, usize)]) -> bool {
    ranges.iter().any(|(a, b)| pos >= *a && pos < *b)
}

fn replace(code: &str, at: usize, len: usize, with: &str) -> String {
    format!("{}{}{}", &code[..at], with, &code[at + len..])
}

/// A mutant at one position: what changed, and the whole mutated code.
type Change = (String, String);

/// One kind of mutation: given the code, the comment-blanked text and a byte offset, the change it
/// makes there, if any.
type Mutator = fn(&str, &str, usize) -> Option<Change>;

/// Every single-change mutant of `code`, in source order. `text` is `code` with comments blanked (same
/// byte offsets), so a mutation never lands in a comment; only module bodies are mutated. Each mutator
/// sees every byte offset and must look at the byte before slicing there (it may be mid-character).
pub fn mutants(code: &str) -> Vec<Mutant> {
    let text = blank_comments(code);
    let ranges = body_ranges(&text);
    let line = |pos: usize| text[..pos].matches('\n').count() + 1;
    let mutators: [Mutator; 5] = [
        swapped_operator,
        inverted_if,
        flipped_constant,
        dropped_assign,
        dropped_nonblocking,
    ];
    let mut out = Vec::new();
    for i in (0..text.len()).filter(|i| in_ranges(*i, &ranges)) {
        for mutate in mutators {
            if let Some((desc, code)) = mutate(code, &text, i) {
                out.push(Mutant {
                    description: format!("line {}: {desc}", line(i)),
                    code,
                });
            }
        }
    }
    out
}

/// An operator swapped for its opposite (`&&` → `||`, `+` → `-`, `==` → `!=`, ...) or a negation
/// dropped.
fn swapped_operator(code: &str, text: &str, i: usize) -> Option<Change> {
    let b = text.as_bytes();
    let next = b.get(i + 1).copied();
    let prev = if i > 0 { b[i - 1] } else { b' ' };
    let change =
        |desc: &str, len: usize, with: &str| Some((desc.to_string(), replace(code, i, len, with)));
    match b[i] {
        b'&' if next == Some(b'&') => change("&& → ||", 2, "||"),
        b'|' if next == Some(b'|') => change("|| → &&", 2, "&&"),
        b'&' if prev != b'&' && next != Some(b'&') => change("& → |", 1, "|"),
        b'|' if prev != b'|' && next != Some(b'|') => change("| → &", 1, "&"),
        b'^' if prev != b'~' && next != Some(b'~') => change("^ → |", 1, "|"),
        b'+' if next != Some(b':') && prev != b'+' && next != Some(b'+') => change("+ → -", 1, "-"),
        b'-' if next != Some(b':') && next != Some(b'>') && prev != b'-' => {
            // Not inside a range such as [WIDTH-1:0]: those change widths, not behaviour.
            let open = text[..i].rfind('[');
            let close = text[..i].rfind(']');
            if open.is_some() && open > close {
                None
            } else {
                change("- → +", 1, "+")
            }
        }
        b'=' if next == Some(b'=')
            && prev != b'='
            && prev != b'!'
            && b.get(i + 2) != Some(&b'=') =>
        {
            change("== → !=", 2, "!=")
        }
        b'!' if next == Some(b'=') && b.get(i + 2) != Some(&b'=') => change("!= → ==", 2, "=="),
        b'~' if next != Some(b'^') && next != Some(b'&') && next != Some(b'|') && prev != b'^' => {
            change("drop ~", 1, "")
        }
        b'!' if next != Some(b'=') => change("drop !", 1, ""),
        b'<' if next != Some(b'=') && next != Some(b'<') && prev != b'<' => change("< → >", 1, ">"),
        b'>' if next != Some(b'=')
            && next != Some(b'>')
            && prev != b'>'
            && prev != b'-'
            && prev != b'=' =>
        {
            change("> → <", 1, "<")
        }
        _ => None,
    }
}

/// `if (c)` → `if ((!(c)))`: the condition inverted.
fn inverted_if(code: &str, text: &str, i: usize) -> Option<Change> {
    let b = text.as_bytes();
    let at_keyword = b[i..].starts_with(b"if")
        && (i == 0 || !b[i - 1].is_ascii_alphanumeric() && b[i - 1] != b'_');
    if !at_keyword {
        return None;
    }
    let rest = &text[i + 2..];
    let trimmed = rest.trim_start();
    if !trimmed.starts_with('(') {
        return None;
    }
    let open = i + 2 + (rest.len() - trimmed.len());
    let mut depth = 0;
    for (k, c) in text[open..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    let close = open + k;
                    let inverted = format!("(!{})", &code[open..=close]);
                    let mutated = replace(code, open, close - open + 1, &inverted);
                    return Some(("invert if condition".into(), mutated));
                }
            }
            _ => {}
        }
    }
    None
}

/// A sized constant (`4'b0101`, `8'd3`, `'hff`) with the lowest digit of its value flipped.
fn flipped_constant(code: &str, text: &str, i: usize) -> Option<Change> {
    let b = text.as_bytes();
    if !(b[i] == b'\'' && i > 0 && b[i - 1].is_ascii_digit()) {
        return None;
    }
    let base = b.get(i + 1).map(|c| c.to_ascii_lowercase());
    let digits_start = i + 2;
    let digits_end = text[digits_start..]
        .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .map(|k| k + digits_start)
        .unwrap_or(text.len());
    if digits_end <= digits_start || !matches!(base, Some(b'b') | Some(b'd') | Some(b'h')) {
        return None;
    }
    let digits = &code[digits_start..digits_end];
    let last = digits.chars().last().unwrap_or('0');
    let flipped = match (base, last) {
        (Some(b'b'), '0') => '1',
        (Some(b'b'), '1') => '0',
        (_, c) if c.is_ascii_digit() && c != '9' => ((c as u8) ^ 1) as char,
        (Some(b'h'), c) if c.is_ascii_hexdigit() => {
            if c.eq_ignore_ascii_case(&'f') {
                'e'
            } else {
                'f'
            }
        }
        _ => return None,
    };
    let new_digits = format!("{}{flipped}", &digits[..digits.len() - 1]);
    let mutated = replace(code, digits_start, digits_end - digits_start, &new_digits);
    Some((format!("constant {digits} → {new_digits}"), mutated))
}

/// `assign x = ...;` dropped.
fn dropped_assign(code: &str, text: &str, i: usize) -> Option<Change> {
    let b = text.as_bytes();
    if !(b[i..].starts_with(b"assign") && (i == 0 || b[i - 1].is_ascii_whitespace())) {
        return None;
    }
    let semi = text[i..].find(';')?;
    Some(("drop assign".into(), replace(code, i, semi + 1, "")))
}

/// A nonblocking assignment `x <= ...;` dropped, from the start of its target.
fn dropped_nonblocking(code: &str, text: &str, i: usize) -> Option<Change> {
    let b = text.as_bytes();
    // `i` may sit inside a multi-byte character: slice at it only once it is known to be `<`.
    let is_nonblocking = b[i] == b'<'
        && b.get(i + 1) == Some(&b'=')
        && text[..i]
            .trim_end()
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == ']' || c == '_');
    if !is_nonblocking {
        return None;
    }
    let stmt_start = text[..i]
        .rfind([';', '\n', '(', ')', '{'])
        .map(|k| k + 1)
        .unwrap_or(0);
    let semi = text[i..].find(';')?;
    let target = text[stmt_start..i].trim();
    let begin_kw = ["begin", "else"].iter().any(|k| target.starts_with(k));
    if target.is_empty() || begin_kw || target.contains(' ') {
        return None;
    }
    let mutated = replace(code, stmt_start, i + semi + 1 - stmt_start, ";");
    Some((format!("drop {target} <= ..."), mutated))
}

/// Up to `n` mutants spread over the code (every k-th), deterministic.
pub fn pick(all: Vec<Mutant>, n: usize) -> Vec<Mutant> {
    if all.len() <= n || n == 0 {
        return all;
    }
    let step = all.len() as f64 / n as f64;
    (0..n)
        .map(|k| all[(k as f64 * step) as usize].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_is_not_ascii_does_not_panic() {
        // Found by the property tests: a byte index inside 'é' was sliced as a str.
        let ms = mutants("module m(input a, output y); é endmodule // é\nassign é if (a) ;");
        assert!(ms.iter().all(|m| !m.code.is_empty()));
    }

    #[test]
    fn each_operator_family_makes_mutants() {
        let code = "module m(input a, input b, input clk, output reg q, output y);\n  assign y = a & b;\n  always @(posedge clk) begin\n    if (a == 1'b1) q <= b;\n  end\nendmodule\n";
        let ms = mutants(code);
        let descs: Vec<&str> = ms.iter().map(|m| m.description.as_str()).collect();
        assert!(descs.iter().any(|d| d.ends_with("& → |")), "{descs:?}");
        assert!(descs.iter().any(|d| d.ends_with("== → !=")), "{descs:?}");
        assert!(
            descs.iter().any(|d| d.ends_with("invert if condition")),
            "{descs:?}"
        );
        assert!(
            descs.iter().any(|d| d.contains("constant 1 → 0")),
            "{descs:?}"
        );
        assert!(
            descs.iter().any(|d| d.ends_with("drop assign")),
            "{descs:?}"
        );
        assert!(
            descs.iter().any(|d| d.ends_with("drop q <= ...")),
            "{descs:?}"
        );
        // The port list is never mutated.
        assert!(ms.iter().all(|m| m
            .code
            .starts_with("module m(input a, input b, input clk, output reg q, output y);")));
    }

    #[test]
    fn comments_are_not_mutated() {
        let code = "module m(input a, output y);\n  // a & b\n  assign y = a;\nendmodule\n";
        assert!(mutants(code).iter().all(|m| !m.description.contains('&')));
    }
}
