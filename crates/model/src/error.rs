//! The one error type of the model library.

/// What can go wrong reading, running or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Bad options, files or data: the message says which and what to do.
    #[error("{0}")]
    Input(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}
