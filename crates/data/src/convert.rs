//! Frames as JSON lines and back (polars' writer and reader): one well-tested path for nested
//! structs and lists, which the row-wise slow paths (`to_records`, `row`, `map_rows`) take.

use super::DataError;
use polars::prelude::*;
use rayon::prelude::*;
use std::io::Cursor;
use std::num::NonZeroUsize;

/// Rows per slice when a frame is written on every core: large enough that a slice's setup is
/// nothing beside its rows, small enough that a few hundred thousand rows keep two cores busy.
const ROWS_PER_SLICE: usize = 16_384;

/// Writes a frame as JSON lines (nested structs as objects). polars' writer runs on one core; a
/// frame of more than one slice is written slice by slice on every core and the pieces joined, the
/// same bytes as one writer over the whole frame (a line is one row).
pub fn frame_to_jsonl(df: &DataFrame) -> Result<Vec<u8>, DataError> {
    frame_to_jsonl_in_slices(df, ROWS_PER_SLICE)
}

fn frame_to_jsonl_in_slices(df: &DataFrame, rows_per_slice: usize) -> Result<Vec<u8>, DataError> {
    let rows = df.height();
    if rows <= rows_per_slice {
        return write_jsonl(df.clone());
    }
    let starts: Vec<usize> = (0..rows).step_by(rows_per_slice).collect();
    let pieces: Vec<Vec<u8>> = starts
        .into_par_iter()
        .map(|start| write_jsonl(df.slice(start as i64, rows_per_slice)))
        .collect::<Result<_, _>>()?;
    Ok(pieces.concat())
}

fn write_jsonl(mut df: DataFrame) -> Result<Vec<u8>, DataError> {
    let mut buf = Vec::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 50 rows of what datasets hold: strings with escapes, nulls, a struct with a null, a list.
    fn sample_frame() -> DataFrame {
        let lines: String = (0..50)
            .map(|i| {
                let meta = match i % 7 {
                    0 => "null".to_string(),
                    _ => format!("{{\"cat\":\"c{}\",\"score\":{}}}", i % 3, i as f64 / 8.0),
                };
                let maybe = match i % 5 {
                    0 => "null".to_string(),
                    _ => i.to_string(),
                };
                format!(
                    "{{\"id\":{i},\"text\":\"line {i}\\n\\\"quoted\\\" é\",\"meta\":{meta},\"tags\":[\"a{i}\",\"b\"],\"maybe\":{maybe}}}\n"
                )
            })
            .collect();
        jsonl_to_frame(lines.as_bytes()).unwrap()
    }

    #[test]
    fn a_frame_written_in_slices_is_byte_for_byte_the_frame_written_whole() {
        let df = sample_frame();
        // The same rows in three chunks, so that slices cross chunk boundaries.
        let mut chunked = df.slice(0, 13);
        chunked.vstack_mut(&df.slice(13, 20)).unwrap();
        chunked.vstack_mut(&df.slice(33, 17)).unwrap();
        for frame in [&df, &chunked] {
            let whole = write_jsonl(frame.clone()).unwrap();
            let text = String::from_utf8(whole.clone()).unwrap();
            assert_eq!(text.lines().count(), 50);
            assert!(text.contains(r#""text":"line 3\n\"quoted\" é""#), "{text}");
            for rows_per_slice in [1, 7, 49, 50, 64] {
                let sliced = frame_to_jsonl_in_slices(frame, rows_per_slice).unwrap();
                assert_eq!(
                    String::from_utf8(sliced).unwrap(),
                    text,
                    "slices of {rows_per_slice}"
                );
            }
        }
    }
}
