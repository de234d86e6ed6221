//! A script's source: the file itself, or a Jupyter notebook's code cells as a script's cells (each
//! starts with its `// %%` line; markdown cells are not code and are skipped). The runner reads every
//! script through [`read_script`]; `ipynb.rs` writes notebooks.

use super::NotebookError;
use std::path::Path;

/// The script of a notebook: its code cells in order, each starting with a `// %%` line (its own,
/// or one added), so each is a cell of the script.
pub fn script_of_notebook(json: &str, origin: &str) -> Result<String, NotebookError> {
    let nb: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        NotebookError::Source(format!("{origin} is not a Jupyter notebook (JSON): {e}"))
    })?;
    let major = nb["nbformat"].as_u64().unwrap_or(0);
    if major != 4 {
        return Err(NotebookError::Source(format!(
            "{origin}: nbformat {major} is not supported; rtlab reads nbformat 4 (save it with a current Jupyter)"
        )));
    }
    let cells = nb["cells"]
        .as_array()
        .ok_or_else(|| NotebookError::Source(format!("{origin} has no `cells` list")))?;
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
                return Err(NotebookError::Source(format!(
                    "{origin}: cell {i}'s source is {other}, not text or a list of lines"
                )))
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
pub fn read_script(path: &Path) -> Result<String, NotebookError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| NotebookError::Source(format!("cannot read the script: {e}")))?;
    if path.extension().is_some_and(|e| e == "ipynb") {
        script_of_notebook(&text, &path.display().to_string())
    } else {
        Ok(text)
    }
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
        let e = script_of_notebook("{nope", "x.ipynb")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.ipynb is not a Jupyter notebook"), "{e}");
        let e = script_of_notebook(r#"{"nbformat": 3, "cells": []}"#, "old.ipynb")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nbformat 3 is not supported"), "{e}");
        let e = script_of_notebook(
            r#"{"nbformat": 4, "cells": [{"cell_type": "code", "source": 3}]}"#,
            "n.ipynb",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cell 0's source is 3"), "{e}");
    }
}
