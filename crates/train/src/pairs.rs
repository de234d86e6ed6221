//! Preference pairs out of a frame, in TRL's two formats (standard and conversational).
//!
//! The frame's rows are read as JSON (`rtlab_data::json_rows`), as a JSONL file of pairs holds them.

use crate::{bad, dpo, TrainError};
use rtlab_data::Frame;
use serde_json::Value;

/// A preference pair's prompt, in TRL's standard format (text, put through the template) or its
/// conversational one (messages, put through the model's chat template).
pub(crate) enum PairPrompt {
    Text(String),
    Messages(Vec<(String, String)>),
}

/// One cell of a pairs frame: a string, or a list of `{role, content}` messages.
fn pair_cell(
    row: usize,
    column: &str,
    value: &Value,
) -> Result<Result<String, Vec<(String, String)>>, TrainError> {
    if let Value::String(text) = value {
        return Ok(Ok(text.clone()));
    }
    let Value::Array(messages) = value else {
        let kind = match value {
            Value::Null => "null",
            Value::Bool(_) => "a bool",
            Value::Number(_) => "a number",
            _ => "a map",
        };
        return Err(bad(format!(
            "row {row}: {column} is {kind}, not a string or a list of {{role, content}} messages"
        )));
    };
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        bad(format!(
                            "row {row}: {column} message {i} has no string {k:?} (a message is #{{role: \"user\", content: \"...\"}})"
                        ))
                    })
            };
            Ok((field("role")?, field("content")?))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Err)
}

/// The pairs of TRL's formats: `prompt`, `chosen`, `rejected` as strings (standard), or as lists of
/// messages (conversational: the prompt's messages, then the assistant's reply on each side).
pub(crate) fn preference_rows(
    frame: &Frame,
) -> Result<Vec<(PairPrompt, String, String)>, TrainError> {
    let cols: Vec<String> = frame
        .df
        .get_column_names()
        .iter()
        .map(|c| c.to_string())
        .collect();
    for name in ["prompt", "chosen", "rejected"] {
        if !cols.iter().any(|c| c == name) {
            return Err(bad(format!(
                "the pairs have no column {name:?} (columns: {}); train_dpo reads TRL's format: prompt, chosen, rejected (what preference_pairs returns)",
                cols.join(", ")
            )));
        }
    }
    let records = rtlab_data::json_rows(&frame.df).map_err(|e| bad(e.to_string()))?;
    let mut rows = Vec::with_capacity(records.len());
    for (row, record) in records.iter().enumerate() {
        let cell = |k: &str| pair_cell(row, k, record.get(k).unwrap_or(&Value::Null));
        let prompt = match cell("prompt")? {
            Ok(text) => PairPrompt::Text(text),
            Err(messages) => PairPrompt::Messages(messages),
        };
        // A conversational answer is the assistant's message(s) of the completion.
        let answer = |k: &str| -> Result<String, TrainError> {
            Ok(match cell(k)? {
                Ok(text) => text,
                Err(messages) => messages
                    .into_iter()
                    .filter(|(role, _)| role == "assistant")
                    .map(|(_, content)| content)
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
        };
        rows.push((prompt, answer("chosen")?, answer("rejected")?));
    }
    let texts: Vec<(String, String, String)> = rows
        .iter()
        .map(|(_, c, r)| (String::new(), c.clone(), r.clone()))
        .collect();
    dpo::check_pairs(&texts)?;
    Ok(rows)
}
