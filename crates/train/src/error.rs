//! The trainer's one error type.

/// What can go wrong in a training run; the Rhai surface shows its message unchanged.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Bad options, files or data: the message says which and what to do.
    #[error("{0}")]
    Input(String),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The model library's errors, with their own messages.
    #[error(transparent)]
    Model(#[from] rtlab_model::ModelError),
}

pub(crate) fn bad(msg: impl Into<String>) -> TrainError {
    TrainError::Input(msg.into())
}
