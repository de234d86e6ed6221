//! rtlab: a notebook-style runtime for LLM-for-Verilog experiments. A Rust binary embedding Rhai, whose
//! stdlib gives scripts polars DataFrames over JSONL datasets, a Verilog verifier, LLM clients,
//! benchmarks and a LoRA trainer; scripts run as cached notebook cells.
//!
//! The binary is glue ([`cli_main`]); the library exposes the runtime for tests and embedding:
//! [`Runtime`] (engine + output sink), [`Notebook`] (a script run as cells with a cache).

mod cli;
mod doctor;
mod engine;
mod kernel;
mod notebook;
mod provenance;
mod repl;

#[cfg(test)]
mod robustness_tests;

pub use cli::main as cli_main;
pub use engine::{display_value, HelpIndex, Runtime, ScriptError};
pub use notebook::{
    cells::split_cells, CacheMode, CellReport, CellStatus, Notebook, NotebookOptions,
};
pub use repl::is_incomplete;

/// Runs a whole script in a fresh engine, relative paths resolving against `base_dir`, and returns what it
/// printed. The book's examples and embedding hosts use it; `rtlab run` adds cells and caching on top.
pub fn eval_script(
    origin: &str,
    source: &str,
    base_dir: &std::path::Path,
) -> Result<String, ScriptError> {
    let rt = Runtime::new(base_dir);
    rt.sink.set_quiet(true);
    let ast = rt.compile(origin, source)?;
    let mut scope = rhai::Scope::new();
    scope.push_constant("ARGS", rhai::Array::new());
    let _ = rt.eval(origin, source, &mut scope, &ast)?;
    Ok(rt.sink.take_capture())
}
