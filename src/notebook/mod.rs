//! Notebook cells with a persistent cache: the script split at `// %%` lines, a dependency graph from
//! the Rhai AST, content-addressed cell keys (marimo's model), the on-disk cache, watch and report.
//!
//! Main types: [`Notebook`] (a script and its in-memory cell results), [`NotebookOptions`],
//! [`CellReport`] (what happened to a cell in the last run).

pub mod cache;
pub mod cells;
pub(crate) mod deps;
pub mod ipynb;
mod persist;
pub mod report;
mod runner;
pub mod source;
mod watch;

/// Why a notebook could not be read, or a cell's results could not be kept. A cell's own failure is
/// a [`crate::ScriptError`] in its report, never one of these.
#[derive(Debug, thiserror::Error)]
pub enum NotebookError {
    /// A script or notebook file that cannot be read, or a notebook that is not one.
    #[error("{0}")]
    Source(String),
    #[error("cannot {doing} {}: {source}", path.display())]
    Io {
        doing: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// A cell's value that cannot be stored with its results (a closure, a native handle).
    #[error("{0}")]
    Persist(String),
    #[error("{0}")]
    Frame(#[from] rtlab_data::DataError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

pub use runner::{status_line, CacheMode, CellReport, CellStatus, Notebook, NotebookOptions};
pub use watch::watch;
