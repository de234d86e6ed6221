//! Splitting a script into cells (`// %%` lines, the percent format of Jupytext and VS Code) and the
//! normalized form of a cell's code that its cache key hashes (comments and whitespace ignored).

/// One cell of a script.
#[derive(Debug, Clone)]
pub struct Cell {
    /// 1-based position among the script's cells.
    pub index: usize,
    /// The text after `// %%`, if any.
    pub name: Option<String>,
    /// 1-based line of the cell's first code line in the file.
    pub first_line: usize,
    pub code: String,
}

impl Cell {
    /// `3 verify` or `3`: how the runner names a cell.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} {n}", self.index),
            None => self.index.to_string(),
        }
    }

    /// The cell's code preceded by blank lines, so that parse and runtime errors carry the line numbers
    /// of the whole file.
    pub fn code_at_file_lines(&self) -> String {
        let mut s = "\n".repeat(self.first_line.saturating_sub(1));
        s.push_str(&self.code);
        s
    }
}

/// True for a `// %%` marker line; returns the optional cell name after it.
fn marker(line: &str) -> Option<Option<String>> {
    let rest = line
        .trim_start()
        .strip_prefix("//")?
        .trim_start()
        .strip_prefix("%%")?;
    let name = rest.trim();
    // Jupytext's `// %% [markdown]` style tags are kept as part of the name.
    Some(if name.is_empty() {
        None
    } else {
        Some(name.to_string())
    })
}

/// Splits a script into cells. A script without markers is one cell. Text before the first marker is a
/// cell of its own when it holds code (not only comments or blank lines).
pub fn split_cells(source: &str) -> Vec<Cell> {
    let mut cells = Vec::new();
    let mut current_name: Option<String> = None;
    let mut current_first = 1;
    let mut current = String::new();
    let mut seen_marker = false;
    for (i, line) in source.lines().enumerate() {
        if let Some(name) = marker(line) {
            if seen_marker || !normalize(&current).is_empty() {
                cells.push((
                    current_name.take(),
                    current_first,
                    std::mem::take(&mut current),
                ));
            }
            current.clear();
            seen_marker = true;
            current_name = name;
            current_first = i + 2;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if seen_marker || !normalize(&current).is_empty() || cells.is_empty() {
        cells.push((current_name, current_first, current));
    }
    cells
        .into_iter()
        .enumerate()
        .map(|(i, (name, first_line, code))| Cell {
            index: i + 1,
            name,
            first_line,
            code,
        })
        .collect()
}

/// True when the script has `// %%` markers (notebook mode).
pub fn has_markers(source: &str) -> bool {
    source.lines().any(|l| marker(l).is_some())
}

/// The code with comments removed and whitespace collapsed: two cells that differ only in comments,
/// indentation or blank lines normalize to the same text. String literals are kept byte for byte.
pub fn normalize(code: &str) -> String {
    let chars: Vec<char> = code.chars().collect();
    let mut out = String::with_capacity(code.len());
    let mut pending_space = false;
    let mut i = 0;
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let emit = |out: &mut String, c: char, pending: &mut bool| {
        if *pending {
            if let Some(prev) = out.chars().last() {
                if is_word(prev) && is_word(c) {
                    out.push(' ');
                }
            }
            *pending = false;
        }
        out.push(c);
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            pending_space = true;
            continue;
        }
        if c == '/' && next == Some('*') {
            // Rhai block comments nest.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            pending_space = true;
            continue;
        }
        if c.is_whitespace() {
            pending_space = true;
            i += 1;
            continue;
        }
        if c == '"' || c == '`' || c == '\'' {
            emit(&mut out, c, &mut pending_space);
            i += 1;
            while i < chars.len() {
                let s = chars[i];
                out.push(s);
                i += 1;
                if s == '\\' && i < chars.len() {
                    out.push(chars[i]);
                    i += 1;
                } else if s == c {
                    break;
                }
            }
            continue;
        }
        emit(&mut out, c, &mut pending_space);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_split_cells_and_name_them() {
        let src = "// setup comment\n// %% load\nlet a = 1;\n// %%\nlet b = a + 1;\n//%% report\nprint(b);\n";
        let cells = split_cells(src);
        assert_eq!(cells.len(), 3);
        assert_eq!(cells[0].label(), "1 load");
        assert_eq!(cells[0].first_line, 3);
        assert_eq!(cells[1].label(), "2");
        assert_eq!(cells[2].label(), "3 report");
        assert_eq!(cells[2].code, "print(b);\n");
    }

    #[test]
    fn a_script_without_markers_is_one_cell() {
        let cells = split_cells("let a = 1;\nprint(a);\n");
        assert_eq!(cells.len(), 1);
        assert_eq!(cells[0].first_line, 1);
        assert!(!has_markers("let a = 1;"));
    }

    #[test]
    fn code_before_the_first_marker_is_a_cell() {
        let cells = split_cells("let x = 1;\n// %% next\nx\n");
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0].name, None);
        assert_eq!(cells[1].label(), "2 next");
    }

    #[test]
    fn normalization_ignores_comments_and_whitespace_but_not_strings() {
        let a = "let x = 1;   // one\n\n/* block /* nested */ */ let  y=x +2;";
        let b = "let x=1;\nlet y = x + 2; // two";
        assert_eq!(normalize(a), normalize(b));
        assert_ne!(normalize("print(\"a  b\")"), normalize("print(\"a b\")"));
        assert_ne!(normalize("let x = 1;"), normalize("let x = 2;"));
        assert_eq!(
            normalize("print(\"// not a comment\")"),
            "print(\"// not a comment\")"
        );
    }
}
