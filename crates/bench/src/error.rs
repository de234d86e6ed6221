//! The benchmark crate's errors: the verifier's, the client's, the data layer's and the options'
//! pass through with their own messages; the rest say which input (problem frame, run map, judge
//! answer, sweep trial) is wrong and how. Each message is the one users saw when errors were strings.

use rtlab_core::OptionError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Option(#[from] OptionError),

    #[error(transparent)]
    Verify(#[from] rtlab_verify::VerifyError),

    #[error(transparent)]
    Llm(#[from] rtlab_llm::LlmError),

    #[error(transparent)]
    Data(#[from] rtlab_data::DataError),

    #[error(transparent)]
    NotJson(#[from] rtlab_core::json::NotJson),

    #[error(transparent)]
    Store(#[from] rtlab_core::store::StoreError),

    #[error("{0}")]
    Json(#[from] serde_json::Error),

    #[error("{0}")]
    Polars(#[from] polars::error::PolarsError),

    /// A problem frame, run map or comparison that lacks what the function needs, or holds a value
    /// it cannot use; the message names the function, the column or key, and the value.
    #[error("{0}")]
    Input(String),

    /// An A7 testbench the model could not write, or one that does not kill the mutants.
    #[error("{0}")]
    Testbench(String),

    /// A judge's answer that holds no verdict, or a judge that cannot be asked.
    #[error("{0}")]
    Judge(String),

    /// A sweep whose space or trial is wrong, or a trial that failed.
    #[error("{0}")]
    Sweep(String),
}
