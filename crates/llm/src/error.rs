//! The LLM client's errors. A request's error is a value: [`crate::Model::answer_all`] returns one
//! result per request, and a failed sample is recorded as failed beside the others, so these are
//! `Clone` and carry text rather than the transport's own error types.

use rtlab_core::OptionError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error(transparent)]
    Option(#[from] OptionError),

    /// A server that did not answer, answered an error, or answered without the text: the message
    /// names the URL, the status and what to do next.
    #[error("{0}")]
    Request(String),

    /// The answer's body has no text where the provider puts it.
    #[error("{0}")]
    Response(String),

    #[error("replay: no recorded response for this request to {model} (record it with a live provider first, or import_cassette the file that has it)")]
    NotRecorded { model: String },

    /// The local model could not be loaded or decoded.
    #[error("local model {model}: {message}")]
    Local { model: String, message: String },

    /// A local model rtlab could not find or pull by name.
    #[error("llm: {0}")]
    Locate(String),

    /// A chat message that is not a map with a role and content.
    #[error("chat: messages[{index}] {problem}")]
    BadMessage { index: usize, problem: String },

    #[error("cancelled by Ctrl-C")]
    Cancelled,

    #[error("the request task failed")]
    TaskFailed,
}
