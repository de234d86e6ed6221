//! rtlab's integration tests, as one test binary.
//!
//! Each test binary links all of rtlab (polars, candle, cubecl, wgpu): about 430 MB in a debug build.
//! One binary instead of ten keeps a clean `cargo test` within a CI machine's disk and saves nine links.
//! The tests run on parallel threads of one process, so they share `common::in_process_env` and never
//! change the environment or the working directory themselves.

mod common;

mod book;
mod cells;
mod cli;
mod data;
mod docs;
mod dpo;
mod gguf;
mod hygiene;
mod kernel;
mod llm;
mod metrics;
mod provenance;
mod repl;
mod scripts;
mod slurm;
mod sweep;
mod tidy;
mod train;
mod truth;
mod verify;
mod workspace;
