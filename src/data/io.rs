//! Reading and writing frames: JSONL (with `file:line` errors and a skip mode), Parquet, CSV.
//! Every write is atomic (temp file + rename).

use super::{DataError, Frame};
use polars::prelude::*;
use std::io::Cursor;
use std::num::NonZeroUsize;
use std::path::Path;

/// What to do with a line that is not valid JSON.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub skip_bad_lines: bool,
}

/// A loaded frame, with the lines skipped as bad (1-based line numbers) in skip mode.
pub struct Loaded {
    pub frame: Frame,
    pub skipped: Vec<usize>,
}

pub fn load_jsonl(path: &Path, opts: &LoadOptions) -> Result<Loaded, DataError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| DataError::Read { path: shown.clone(), source })?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Loaded { frame: Frame::new(DataFrame::empty()), skipped: vec![] });
    }
    let (bytes, skipped) = if opts.skip_bad_lines {
        drop_bad_lines(&bytes)
    } else {
        (bytes, vec![])
    };
    match parse_jsonl(&bytes) {
        Ok(df) => Ok(Loaded { frame: Frame::new(df), skipped }),
        Err(err) => {
            // polars does not say which line failed: find it ourselves, only on this slow path.
            if let Some((line, reason, start)) = first_bad_line(&bytes) {
                Err(DataError::BadLine { path: shown, line, reason, start })
            } else {
                Err(DataError::Invalid(format!("{shown}: {err}")))
            }
        }
    }
}

fn parse_jsonl(bytes: &[u8]) -> PolarsResult<DataFrame> {
    JsonReader::new(Cursor::new(bytes))
        .with_json_format(JsonFormat::JsonLines)
        .infer_schema_len(None::<NonZeroUsize>)
        .finish()
}

/// The first line that is not a JSON object: its 1-based number, why, and its first characters.
fn first_bad_line(bytes: &[u8]) -> Option<(usize, String, String)> {
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if let Some(reason) = line_problem(raw) {
            let start: String = String::from_utf8_lossy(raw).chars().take(40).collect();
            return Some((i + 1, reason, start));
        }
    }
    None
}

fn line_problem(raw: &[u8]) -> Option<String> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => return Some(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => None,
        Ok(_) => Some("not a JSON object".to_string()),
        Err(e) => Some(format!("invalid JSON ({e})")),
    }
}

fn drop_bad_lines(bytes: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut kept = Vec::with_capacity(bytes.len());
    let mut skipped = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if line_problem(raw).is_some() {
            skipped.push(i + 1);
        } else {
            kept.extend_from_slice(raw);
            kept.push(b'\n');
        }
    }
    (kept, skipped)
}

pub fn frame_to_parquet_bytes(df: &DataFrame) -> Result<Vec<u8>, DataError> {
    let mut buf = Vec::new();
    let mut df = df.clone();
    ParquetWriter::new(&mut buf).finish(&mut df)?;
    Ok(buf)
}

pub fn frame_from_parquet_bytes(bytes: &[u8]) -> Result<DataFrame, DataError> {
    Ok(ParquetReader::new(Cursor::new(bytes)).finish()?)
}
