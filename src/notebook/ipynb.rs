//! Notebooks as files: a script's cells with their outputs as a Jupyter notebook (nbformat 4.5), and a
//! notebook's code cells read back as a script's cells. `rtlab report plan.rhai -o plan.ipynb` writes
//! one; `rtlab run plan.ipynb` runs one, cached as a script is.
//!
//! A code cell's source starts with its `// %% name` line, so the cells (and their names, and so their
//! cache entries) survive `.rhai` → `.ipynb` → `.rhai`. Reading a notebook back is `source.rs`.

use super::runner::CellReport;

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

/// The script text of a run's cells (`rtlab report nb.ipynb -o nb.rhai`).
pub fn render_script(cells: &[CellReport]) -> String {
    cells
        .iter()
        .map(|r| format!("{}\n", cell_source(r)))
        .collect::<Vec<_>>()
        .join("\n")
}
