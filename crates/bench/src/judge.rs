//! LLM-as-judge: a model scores each row's response against a rubric, answering with a JSON object
//! `{"score": N, "reason": "..."}`. Every request goes through the model's record/replay store, as
//! every model call does, so a rerun costs nothing and a cassette replays the verdicts.
//!
//! A verdict that is not such an object, has no score or reason, or scores outside the scale is
//! malformed: the judge is told what was wrong and asked again (the conversation so far, plus the
//! complaint, is a new request, so the retry is recorded too). A row still without a valid verdict
//! after the retries has a null score and its last complaint in `judge_error`: it is never scored 0.

use crate::BenchError;

use polars::prelude::*;
use rtlab_data::Frame;
use rtlab_llm::{Message, Model};

/// What `judge` was asked to do.
pub struct JudgeSpec {
    pub rubric: String,
    pub scale: (i64, i64),
    pub prompt_col: String,
    pub response_col: String,
    pub reference_col: Option<String>,
    pub retries: usize,
}

/// The line `judge` prints: rows, how many were scored and their mean, and how many got no valid
/// verdict. With none scored there is no mean: "mean 0.00" would read as a score.
pub fn summary_line(spec: &JudgeSpec, verdicts: &[Verdict]) -> String {
    let scored: Vec<f64> = verdicts.iter().filter_map(|v| v.score).collect();
    let failed = verdicts.len() - scored.len();
    let mean = match scored.len() {
        0 => "no mean".to_string(),
        n => format!("mean {:.2}", scored.iter().sum::<f64>() / n as f64),
    };
    let (lo, hi) = spec.scale;
    let mut line = format!(
        "judge: {} rows, {} scored ({mean} on {lo}..{hi})",
        verdicts.len(),
        scored.len(),
    );
    if failed > 0 {
        line.push_str(&format!(
            "; {failed} without a valid verdict after {} attempts: their judge_score is null, judge_error says why",
            spec.retries + 1
        ));
    }
    line
}

/// One row's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub score: Option<f64>,
    pub reason: Option<String>,
    /// Why the last answer was refused, when no answer was valid.
    pub error: Option<String>,
    pub attempts: usize,
}

impl JudgeSpec {
    fn system(&self) -> String {
        let (lo, hi) = self.scale;
        format!(
            "You are a strict reviewer. Score the response against the rubric on a scale from {lo} (worst) to {hi} (best). \
             Answer with only a JSON object, no other text: {{\"score\": <integer from {lo} to {hi}>, \"reason\": \"<one or two sentences>\"}}."
        )
    }

    fn item(&self, prompt: &str, response: &str, reference: Option<&str>) -> String {
        let mut s = format!(
            "## Rubric\n{}\n\n## Prompt\n{prompt}\n\n## Response\n{response}\n",
            self.rubric.trim()
        );
        if let Some(r) = reference {
            s.push_str(&format!("\n## Reference answer\n{r}\n"));
        }
        s
    }

    /// The score and reason of an answer, or why it is not a valid verdict.
    pub fn parse(&self, answer: &str) -> Result<(f64, String), BenchError> {
        let (lo, hi) = self.scale;
        let start = answer.find('{');
        let end = answer.rfind('}');
        let json = match (start, end) {
            (Some(s), Some(e)) if s < e => &answer[s..=e],
            _ => return Err(BenchError::Judge("the answer holds no JSON object".into())),
        };
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| BenchError::Judge(format!("the JSON does not parse: {e}")))?;
        let score = match &v["score"] {
            serde_json::Value::Null => {
                return Err(BenchError::Judge("the JSON has no \"score\"".into()))
            }
            s => s
                .as_f64()
                .or_else(|| s.as_str().and_then(|t| t.trim().parse().ok()))
                .ok_or_else(|| BenchError::Judge(format!("\"score\" is {s}, not a number")))?,
        };
        if !(lo as f64..=hi as f64).contains(&score) {
            return Err(BenchError::Judge(format!(
                "score {score} is outside the scale {lo} to {hi}"
            )));
        }
        let reason = v["reason"]
            .as_str()
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| BenchError::Judge("the JSON has no \"reason\"".into()))?;
        Ok((score, reason.to_string()))
    }
}

/// Judges every row: all first attempts go out as one batch (concurrently, recorded), then the
/// malformed ones are asked again, up to `retries` times.
pub fn judge_rows(
    ws: &rtlab_core::Workspace,
    model: &Model,
    spec: &JudgeSpec,
    items: &[String],
) -> Result<Vec<Verdict>, BenchError> {
    let store = ws.store();
    let mut conversations: Vec<Vec<Message>> = items
        .iter()
        .map(|item| {
            vec![
                Message {
                    role: "system".into(),
                    content: spec.system(),
                },
                Message {
                    role: "user".into(),
                    content: item.clone(),
                },
            ]
        })
        .collect();
    let mut verdicts = vec![
        Verdict {
            score: None,
            reason: None,
            error: None,
            attempts: 0,
        };
        items.len()
    ];
    let mut pending: Vec<usize> = (0..items.len()).collect();
    for _attempt in 0..=spec.retries {
        if pending.is_empty() {
            break;
        }
        let requests: Vec<(Vec<Message>, usize)> = pending
            .iter()
            .map(|&i| (conversations[i].clone(), 0))
            .collect();
        let answers = model.answer_all(&requests, store.clone());
        let mut still = Vec::new();
        for (&i, answer) in pending.iter().zip(answers) {
            let answer = answer.map_err(|e| {
                BenchError::Judge(format!("judge: row {i}: the judge model failed: {e}"))
            })?;
            let v = &mut verdicts[i];
            v.attempts += 1;
            match spec.parse(&answer) {
                Ok((score, reason)) => {
                    v.score = Some(score);
                    v.reason = Some(reason);
                    v.error = None;
                }
                Err(why) => {
                    let why = why.to_string();
                    v.error = Some(why.clone());
                    let (lo, hi) = spec.scale;
                    conversations[i].push(Message {
                        role: "assistant".into(),
                        content: answer,
                    });
                    conversations[i].push(Message {
                        role: "user".into(),
                        content: format!(
                            "That was not a valid verdict: {why}. Answer again with only the JSON object {{\"score\": <integer from {lo} to {hi}>, \"reason\": \"...\"}}."
                        ),
                    });
                    still.push(i);
                }
            }
        }
        pending = still;
    }
    Ok(verdicts)
}

/// The rows' items (rubric, prompt, response, reference) from the frame's columns.
pub fn items_of(frame: &Frame, spec: &JudgeSpec) -> Result<Vec<String>, BenchError> {
    let column = |name: &str| -> Result<Vec<String>, BenchError> {
        rtlab_data::strings(frame, name).map_err(|e| BenchError::Judge(format!("judge: {e}")))
    };
    let prompts = column(&spec.prompt_col)?;
    let responses = column(&spec.response_col)?;
    let references = match &spec.reference_col {
        Some(c) => Some(column(c)?),
        None => None,
    };
    Ok((0..prompts.len())
        .map(|i| {
            spec.item(
                &prompts[i],
                &responses[i],
                references.as_ref().map(|r| r[i].as_str()),
            )
        })
        .collect())
}

/// The frame with `judge_score`, `judge_reason`, `judge_error` and `judge_attempts` added.
pub fn with_verdicts(frame: &Frame, verdicts: &[Verdict]) -> Result<Frame, BenchError> {
    let mut df = frame.df.clone();
    let columns = [
        Column::new(
            "judge_score".into(),
            verdicts.iter().map(|v| v.score).collect::<Vec<_>>(),
        ),
        Column::new(
            "judge_reason".into(),
            verdicts
                .iter()
                .map(|v| v.reason.clone())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "judge_error".into(),
            verdicts.iter().map(|v| v.error.clone()).collect::<Vec<_>>(),
        ),
        Column::new(
            "judge_attempts".into(),
            verdicts
                .iter()
                .map(|v| v.attempts as i64)
                .collect::<Vec<_>>(),
        ),
    ];
    for c in columns {
        df.with_column(c)?;
    }
    Ok(Frame::new(df))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JudgeSpec {
        JudgeSpec {
            rubric: "r".into(),
            scale: (1, 5),
            prompt_col: "prompt".into(),
            response_col: "completion".into(),
            reference_col: None,
            retries: 2,
        }
    }

    #[test]
    fn a_verdict_is_a_json_score_in_the_scale_with_a_reason_and_nothing_else_counts() {
        let s = spec();
        assert_eq!(
            s.parse("Sure! {\"score\": 4, \"reason\": \"good\"} hope this helps")
                .unwrap(),
            (4.0, "good".into())
        );
        assert_eq!(
            s.parse("{\"score\": \"3\", \"reason\": \"ok\"}").unwrap(),
            (3.0, "ok".into())
        );
        assert!(s
            .parse("4/5, nice")
            .unwrap_err()
            .to_string()
            .contains("no JSON object"));
        assert!(s
            .parse("{score: 4}")
            .unwrap_err()
            .to_string()
            .contains("does not parse"));
        assert!(s
            .parse("{\"reason\": \"x\"}")
            .unwrap_err()
            .to_string()
            .contains("no \"score\""));
        assert!(s
            .parse("{\"score\": 9, \"reason\": \"x\"}")
            .unwrap_err()
            .to_string()
            .contains("outside the scale 1 to 5"));
        assert!(s
            .parse("{\"score\": 0, \"reason\": \"x\"}")
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(s
            .parse("{\"score\": 3}")
            .unwrap_err()
            .to_string()
            .contains("no \"reason\""));
        assert!(s
            .parse("{\"score\": \"high\", \"reason\": \"x\"}")
            .unwrap_err()
            .to_string()
            .contains("not a number"));
    }
}
