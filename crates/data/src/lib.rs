//! Datasets in the stdlib: a polars `DataFrame` wrapped for Rhai, its readers and writers, and the
//! expression API that mirrors polars' Python one.
//!
//! Main types: [`Frame`] (the Rhai `DataFrame`, cheap to clone: polars columns are Arc'd), `Expr`
//! (a polars expression), [`DataError`]. Relative paths resolve against the script's directory.

/// The identity of this crate's code (the hash of its sources and `Cargo.lock`): every result the
/// data caches is keyed on it, so a changed build never serves an old answer.
pub fn code_identity() -> String {
    rtlab_core::provenance::code_identity("data", env!("RTLAB_CODE_IDENTITY"))
}

pub mod api;
mod convert;
mod expr;
pub mod hygiene;
pub mod io;
pub mod plot;
mod scan;
mod typed;

pub use api::convert::{dynamic_to_json, from_records, json_to_dynamic, to_records};
pub use convert::json_rows;
pub use expr::column;
pub use io::{
    frame_from_parquet_bytes, frame_to_parquet_bytes, load_jsonl, save_jsonl, LoadOptions,
};

use polars::prelude::DataFrame;
use rtlab_core::display::escape_html;
use rtlab_core::Workspace;

/// The Rhai-visible DataFrame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub df: DataFrame,
}

impl Frame {
    pub fn new(df: DataFrame) -> Frame {
        Frame { df }
    }

    /// A content hash of the frame (schema and values), stable across processes: the cell cache keys on it.
    /// It hashes the frame's Parquet encoding, one chunk, the form the cache stores it in. Parquet
    /// writes logical values (definition levels, not validity buffers; string bytes, not Polars'
    /// string views into whatever buffers a filter or sort left behind), so the same values hash
    /// the same in memory and after a restore, and a cell that read a restored frame does not rerun.
    /// (Before, the frame went through a whole Parquet round trip, then Arrow IPC, into the hasher:
    /// on a 57 MB, 200,000-row JSONL file that took 0.75 s, as long as loading it, at twice the
    /// peak memory; the encode alone takes 0.42 s.)
    pub fn content_hash(&self) -> Result<blake3::Hash, DataError> {
        let mut df = self.df.clone();
        df.rechunk_mut();
        Ok(blake3::hash(&io::frame_to_parquet_bytes(&df)?))
    }
}

/// Errors of the data layer, each naming the file, line, column or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}; the line starts with {start:?} (pass #{{on_bad_line: \"skip\"}} to skip bad lines)")]
    BadLine {
        path: String,
        line: usize,
        reason: String,
        start: String,
    },
    #[error("{0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("{0}")]
    Invalid(String),
}

/// A column (dotted struct paths allowed) as strings, whatever its type; nulls are `None`. What the
/// stdlib uses to hand a column of code, prompts or names to Rust.
pub fn string_values(frame: &Frame, path: &str) -> Result<Vec<Option<String>>, DataError> {
    use polars::prelude::{DataType, IntoLazy};
    let df = frame
        .df
        .clone()
        .lazy()
        .select([column(path).cast(DataType::String).alias("v")])
        .collect()
        .map_err(|e| DataError::Invalid(format!("column `{path}`: {e}")))?;
    let ca = df.column("v").and_then(|c| c.str().cloned())?;
    Ok(ca.iter().map(|v| v.map(str::to_string)).collect())
}

/// `string_values` with nulls as empty strings.
pub fn strings(frame: &Frame, path: &str) -> Result<Vec<String>, DataError> {
    Ok(string_values(frame, path)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

/// A frame as an HTML table (its first `max_rows` rows, long cells cut), with its shape below.
pub fn frame_html(frame: &Frame, max_rows: usize) -> String {
    let df = &frame.df;
    let mut html = String::from("<table>\n<thead><tr>");
    for name in df.get_column_names() {
        html.push_str(&format!("<th>{}</th>", escape_html(name.as_str())));
    }
    html.push_str("</tr></thead>\n<tbody>\n");
    for row in 0..df.height().min(max_rows) {
        html.push_str("<tr>");
        for col in df.columns() {
            let cell = col.get(row).map(|v| v.to_string()).unwrap_or_default();
            let cell = cell.trim_matches('"');
            let short: String = cell.chars().take(120).collect();
            html.push_str(&format!("<td>{}</td>", escape_html(&short)));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</tbody></table>\n");
    html.push_str(&format!(
        "<p class=\"shape\">{} rows × {} columns</p>",
        df.height(),
        df.width()
    ));
    html
}

pub use scan::LazyJsonl;

/// VerilogEval problems from a directory of `ProbNNN_*_{prompt.txt,ref.sv,test.sv}` (`rtlab bench`),
/// each file read noted as an input of `ws`.
pub fn load_verilog_eval_dir(
    ws: &rtlab_core::Workspace,
    dir: &std::path::Path,
) -> Result<Frame, DataError> {
    Ok(Frame::new(io::load_verilog_eval(dir, &mut |p| {
        ws.note_input(p)
    })?))
}

pub use api::{rich_types, DataPackage};
