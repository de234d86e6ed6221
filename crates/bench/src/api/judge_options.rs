//! `judge`'s options read into a [`JudgeSpec`] ([`crate::judge`] asks the judge and reads its
//! verdicts).

use crate::judge::JudgeSpec;
use crate::BenchError;
use rhai::Map;

/// `judge`'s options: `rubric` (required), `scale` ([1, 5]), `prompt_col`, `response_col`,
/// `reference_col`, `retries` (2).
pub fn judge_spec(options: &Map) -> Result<JudgeSpec, BenchError> {
    let o = rtlab_core::options::Options::new(
        "judge",
        options,
        &[
            "rubric",
            "scale",
            "prompt_col",
            "response_col",
            "reference_col",
            "retries",
        ],
    )?;
    let rubric = o
        .string("rubric")?
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| {
            BenchError::Judge(
                "judge: pass rubric: what a good response does, in words the judge can apply"
                    .into(),
            )
        })?;
    let scale = match o.ints("scale") {
        Ok(None) => (1, 5),
        Ok(Some(pair)) if pair.len() == 2 && pair[0] < pair[1] => (pair[0], pair[1]),
        _ => {
            return Err(BenchError::Judge(format!(
                "judge: scale must be two integers [low, high] with low < high, got {}",
                options
                    .get("scale")
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            )))
        }
    };
    Ok(JudgeSpec {
        rubric,
        scale,
        prompt_col: o.string("prompt_col")?.unwrap_or_else(|| "prompt".into()),
        response_col: o
            .string("response_col")?
            .unwrap_or_else(|| "completion".into()),
        reference_col: o.string("reference_col")?,
        retries: o.int_at_least("retries", 0)?.unwrap_or(2) as usize,
    })
}
