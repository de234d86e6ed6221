//! Datasets in the stdlib: a polars `DataFrame` wrapped for Rhai, its readers and writers, and the
//! expression API that mirrors polars' Python one.
//!
//! Main types: [`Frame`] (the Rhai `DataFrame`, cheap to clone: polars columns are Arc'd), [`DataError`].

mod io;

pub use io::{frame_from_parquet_bytes, frame_to_parquet_bytes, load_jsonl, LoadOptions};

use polars::prelude::DataFrame;
use rhai::plugin::*;
use rhai::Dynamic;

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
    pub fn content_hash(&self) -> Result<blake3::Hash, DataError> {
        let bytes = frame_to_ipc_bytes(&self.df)?;
        Ok(blake3::hash(&bytes))
    }
}

/// Errors of the data layer, each naming the file, line, column or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("{path}:{line}: {reason}; the line starts with {start:?} (pass #{{on_bad_line: \"skip\"}} to skip bad lines)")]
    BadLine { path: String, line: usize, reason: String, start: String },
    #[error("{0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error("{0}")]
    Invalid(String),
}

impl From<DataError> for Box<EvalAltResult> {
    fn from(e: DataError) -> Self {
        e.to_string().into()
    }
}

fn frame_to_ipc_bytes(df: &DataFrame) -> Result<Vec<u8>, DataError> {
    use polars::prelude::{IpcWriter, SerWriter};
    let mut buf = Vec::new();
    let mut df = df.clone();
    IpcWriter::new(&mut buf).finish(&mut df)?;
    Ok(buf)
}

/// The display text of rtlab's own Rhai types (DataFrame, ...), or `None` for plain Rhai values.
pub fn display_custom(value: &Dynamic) -> Option<String> {
    if let Some(frame) = value.read_lock::<Frame>() {
        return Some(format!("{}", frame.df));
    }
    None
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<Frame>("DataFrame");
    engine.register_fn("to_string", |f: &mut Frame| format!("{}", f.df));
    engine.register_fn("to_debug", |f: &mut Frame| format!("{}", f.df));
    engine.register_global_module(exported_module!(data_functions).into());
}

#[export_module]
mod data_functions {
    use super::*;

    /// Loads a JSONL file into a DataFrame. Nested objects become struct columns (reach into them with
    /// `col("metadata.category")`), and the schema is inferred over the whole file.
    ///
    /// A bad line is an error naming `file:line`; see `load_jsonl(path, #{on_bad_line: "skip"})`.
    ///
    /// ```rhai
    /// let df = load_jsonl("data/rtlcoder_sample.jsonl");
    /// print(df.len());
    /// ```
    #[rhai_fn(name = "load_jsonl", return_raw)]
    pub fn load_jsonl_path(path: &str) -> Result<Frame, Box<EvalAltResult>> {
        Ok(load_jsonl(&crate::runtime_fns::resolve_path(path), &LoadOptions::default())?.frame)
    }

    /// The number of rows.
    #[rhai_fn(name = "len", pure)]
    pub fn len(frame: &mut Frame) -> i64 {
        frame.df.height() as i64
    }

    /// The first `n` rows.
    #[rhai_fn(name = "head", pure)]
    pub fn head(frame: &mut Frame, n: i64) -> Frame {
        Frame::new(frame.df.head(Some(n.max(0) as usize)))
    }
}

/// The SVG text of a plot value, for reports; `None` for other values.
pub fn svg_of(_value: &Dynamic) -> Option<String> {
    None
}
