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

pub use runner::{status_line, CacheMode, CellReport, CellStatus, Notebook, NotebookOptions};
pub use watch::watch;
