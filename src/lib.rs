//! rtlab: a notebook-style runtime for LLM-for-Verilog experiments. A Rust binary embedding Rhai, whose
//! stdlib gives scripts polars DataFrames over JSONL datasets, a Verilog verifier, LLM clients,
//! benchmarks and a LoRA trainer; scripts run as cached notebook cells.
//!
//! The binary is glue ([`cli_main`]); the library exposes the runtime for tests and embedding:
//! [`Runtime`] (engine + output sink), [`Notebook`] (a script run as cells with a cache).

mod cli;
mod data;
mod doctor;
mod engine;
mod notebook;
mod repl;
mod runtime_fns;

pub use cli::main as cli_main;
pub use engine::{display_value, HelpIndex, Runtime, ScriptError};
pub use notebook::{cells::split_cells, CacheMode, CellReport, CellStatus, Notebook, NotebookOptions};
pub use repl::is_incomplete;
