//! Between frames and Rhai values: rows as maps (through JSON, [`crate::convert`]) and arrays as
//! polars literals.

use crate::convert::{json_rows, jsonl_to_frame};
use crate::{DataError, Frame};
use polars::prelude::*;
use rhai::Array;

/// Every row as a Rhai map.
pub fn to_records(frame: &Frame) -> Result<Array, DataError> {
    Ok(json_rows(&frame.df)?
        .into_iter()
        .map(json_to_dynamic)
        .collect())
}

/// Maps (or anything JSON-like) to a frame; `what` names the argument in errors.
pub fn from_records(records: &Array, what: &str) -> Result<Frame, DataError> {
    let mut buf = Vec::new();
    for (i, record) in records.iter().enumerate() {
        if !record.is_map() {
            return Err(DataError::Invalid(format!(
                "{what}[{i}] is a {}, expected a map like #{{instruction: \"...\"}}",
                record.type_name()
            )));
        }
        let json =
            dynamic_to_json(record).map_err(|e| DataError::Invalid(format!("{what}[{i}]: {e}")))?;
        serde_json::to_writer(&mut buf, &json)
            .map_err(|e| DataError::Invalid(format!("{what}[{i}]: {e}")))?;
        buf.push(b'\n');
    }
    Ok(Frame::new(jsonl_to_frame(&buf)?))
}

pub use rtlab_core::json::{dynamic_to_json, json_to_dynamic};

/// A Rhai value as a polars literal expression (for `lit`, comparisons, `is_in`).
pub fn dynamic_to_series(name: &str, values: &Array) -> Result<Series, DataError> {
    let name = PlSmallStr::from_str(name);
    if values.iter().all(|v| v.is_string()) {
        let v: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        return Ok(Series::new(name, v));
    }
    if values.iter().all(|v| v.is_int()) {
        let v: Vec<i64> = values
            .iter()
            .map(|v| v.as_int().unwrap_or_default())
            .collect();
        return Ok(Series::new(name, v));
    }
    if values.iter().all(|v| v.is_int() || v.is_float()) {
        let v: Vec<f64> = values
            .iter()
            .map(|v| {
                v.as_float()
                    .or_else(|_| v.as_int().map(|i| i as f64))
                    .unwrap_or_default()
            })
            .collect();
        return Ok(Series::new(name, v));
    }
    if values.iter().all(|v| v.is_bool()) {
        let v: Vec<bool> = values
            .iter()
            .map(|v| v.as_bool().unwrap_or_default())
            .collect();
        return Ok(Series::new(name, v));
    }
    Err(DataError::Invalid(
        "a list for is_in must hold only strings, only numbers or only booleans".to_string(),
    ))
}
