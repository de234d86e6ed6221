//! Notebooks as files: a script's cells with their outputs as a Jupyter notebook (nbformat 4.5), and a
//! notebook's code cells read back as a script's cells. `rtlab report plan.rhai -o plan.ipynb` writes
//! one; `rtlab run plan.ipynb` runs one, cached as a script is.
//!
//! A code cell's source starts with its `// %% name` line, so the cells (and their names, and so their
//! cache entries) survive `.rhai` → `.ipynb` → `.rhai`. Markdown cells are not code: reading a
//! notebook skips them.

use super::runner::CellReport;
use std::path::Path;

/// The kernelspec and language a notebook written by rtlab names: `rtlab kernel install` provides it.
fn notebook_metadata() -> serde_json::Value {
    serde_json::json!({
        "kernelspec": {"name": "rtlab", "display_name": "rtlab (Rhai)", "language": "rhai"},
        "language_info": {"name": "rhai", "file_extension": ".rhai", "mimetype": "text/x-rhai"},
    })
}

/// Jupyter's multi-line strings: a list of lines, each with its newline but the last.
fn lines(text: &str) -> serde_json::Value {
    let mut out: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    serde_json::json!(out)
}

/// The cell's source as it appears in the notebook: its marker line, then its code.
fn cell_source(r: &CellReport) -> String {
    let marker = match &r.cell.name {
        Some(name) => format!("// %% {name}\n"),
        None => "// %%\n".to_string(),
    };
    format!("{marker}{}", r.cell.code.trim_end())
}

/// The notebook (JSON text) of a run: each cell's code, what it printed, and its value.
pub fn render_ipynb(cells: &[CellReport]) -> String {
    let cells: Vec<serde_json::Value> = cells
        .iter()
        .map(|r| {
            let mut outputs = Vec::new();
            let printed = match &r.result_text {
                Some(result) => r
                    .printed
                    .trim_end()
                    .strip_suffix(result.trim_end())
                    .unwrap_or(&r.printed),
                None => &r.printed,
            };
            if !printed.trim().is_empty() {
                outputs.push(serde_json::json!({
                    "output_type": "stream",
                    "name": "stdout",
                    "text": lines(&format!("{}\n", printed.trim_end())),
                }));
            }
            if let Some(text) = &r.result_text {
                let mut data = serde_json::Map::new();
                data.insert("text/plain".into(), lines(text));
                if let Some(html) = &r.result_html {
                    if html.starts_with("<svg") {
                        data.insert("image/svg+xml".into(), lines(html));
                    } else {
                        data.insert("text/html".into(), lines(html));
                    }
                }
                outputs.push(serde_json::json!({
                    "output_type": "execute_result",
                    "execution_count": r.cell.index,
                    "data": data,
                    "metadata": {},
                }));
            }
            serde_json::json!({
                "cell_type": "code",
                "id": format!("cell-{}", r.cell.index),
                "metadata": {},
                "execution_count": r.cell.index,
                "source": lines(&cell_source(r)),
                "outputs": outputs,
            })
        })
        .collect();
    let notebook = serde_json::json!({
        "cells": cells,
        "metadata": notebook_metadata(),
        "nbformat": 4,
        "nbformat_minor": 5,
    });
    serde_json::to_string_pretty(&notebook).unwrap_or_default() + "\n"
}

/// The script of a notebook: its code cells in order, each starting with a `// %%` line (its own,
/// or one added), so each is a cell of the script.
pub fn script_of_notebook(json: &str, origin: &str) -> Result<String, String> {
    let nb: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| format!("{origin} is not a Jupyter notebook (JSON): {e}"))?;
    let major = nb["nbformat"].as_u64().unwrap_or(0);
    if major != 4 {
        return Err(format!(
            "{origin}: nbformat {major} is not supported; rtlab reads nbformat 4 (save it with a current Jupyter)"
        ));
    }
    let cells = nb["cells"]
        .as_array()
        .ok_or_else(|| format!("{origin} has no `cells` list"))?;
    let mut script = String::new();
    for (i, cell) in cells.iter().enumerate() {
        if cell["cell_type"] != "code" {
            continue;
        }
        let source = match &cell["source"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(parts) => parts
                .iter()
                .map(|p| p.as_str().unwrap_or_default())
                .collect(),
            other => {
                return Err(format!(
                    "{origin}: cell {i}'s source is {other}, not text or a list of lines"
                ))
            }
        };
        let starts_with_marker = source
            .lines()
            .next()
            .is_some_and(|l| l.trim_start().starts_with("//") && l.contains("%%"));
        if !starts_with_marker {
            script.push_str("// %%\n");
        }
        script.push_str(source.trim_end());
        script.push('\n');
    }
    Ok(script)
}

/// A script's text: the file itself, or a notebook's code cells for `.ipynb`.
pub fn read_script(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the script: {e}"))?;
    if path.extension().is_some_and(|e| e == "ipynb") {
        script_of_notebook(&text, &path.display().to_string())
    } else {
        Ok(text)
    }
}

/// The script text of a run's cells (`rtlab report nb.ipynb -o nb.rhai`).
pub fn render_script(cells: &[CellReport]) -> String {
    cells
        .iter()
        .map(|r| format!("{}\n", cell_source(r)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notebook::cells::split_cells;

    #[test]
    fn a_notebooks_code_cells_become_the_scripts_cells_and_markdown_is_skipped() {
        let nb = r##"{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
            {"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# Title"]},
            {"cell_type": "code", "id": "b", "metadata": {}, "outputs": [], "execution_count": null,
             "source": ["// %% load\n", "let x = 1;"]},
            {"cell_type": "code", "id": "c", "metadata": {}, "outputs": [], "execution_count": null,
             "source": "print(x);"}]}"##;
        let script = script_of_notebook(nb, "nb.ipynb").unwrap();
        let cells = split_cells(&script);
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0].name.as_deref(), Some("load"));
        assert_eq!(cells[0].code.trim(), "let x = 1;");
        assert_eq!(cells[1].code.trim(), "print(x);");
    }

    #[test]
    fn what_is_not_a_notebook_is_refused_naming_the_file() {
        let e = script_of_notebook("{nope", "x.ipynb").unwrap_err();
        assert!(e.starts_with("x.ipynb is not a Jupyter notebook"), "{e}");
        let e = script_of_notebook(r#"{"nbformat": 3, "cells": []}"#, "old.ipynb").unwrap_err();
        assert!(e.contains("nbformat 3 is not supported"), "{e}");
        let e = script_of_notebook(
            r#"{"nbformat": 4, "cells": [{"cell_type": "code", "source": 3}]}"#,
            "n.ipynb",
        )
        .unwrap_err();
        assert!(e.contains("cell 0's source is 3"), "{e}");
    }
}
