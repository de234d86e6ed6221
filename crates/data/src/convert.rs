//! Frames as JSON lines and back (polars' writer and reader): one well-tested path for nested
//! structs and lists, which the row-wise slow paths (`to_records`, `row`, `map_rows`) take.

use super::DataError;
use polars::prelude::*;
use std::io::Cursor;
use std::num::NonZeroUsize;

/// Writes a frame as JSON lines (nested structs as objects).
pub fn frame_to_jsonl(df: &DataFrame) -> Result<Vec<u8>, DataError> {
    let mut buf = Vec::new();
    let mut df = df.clone();
    JsonWriter::new(&mut buf)
        .with_json_format(JsonFormat::JsonLines)
        .finish(&mut df)?;
    Ok(buf)
}

/// Parses JSON lines written by us or by a user, inferring the schema over every row.
pub fn jsonl_to_frame(bytes: &[u8]) -> Result<DataFrame, DataError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(DataFrame::empty());
    }
    Ok(JsonReader::new(Cursor::new(bytes))
        .with_json_format(JsonFormat::JsonLines)
        .infer_schema_len(None::<NonZeroUsize>)
        .finish()?)
}

/// Every row as a JSON object (nested structs as objects, lists as arrays): the typed row API for
/// code beneath the Rhai surface.
pub fn json_rows(df: &DataFrame) -> Result<Vec<serde_json::Value>, DataError> {
    frame_to_jsonl(df)?
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            serde_json::from_slice(line)
                .map_err(|e| DataError::Invalid(format!("internal JSON round trip failed: {e}")))
        })
        .collect()
}
