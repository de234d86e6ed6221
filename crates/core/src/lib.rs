//! rtlab-core: the services every rtlab capability shares, and nothing that knows about Verilog,
//! datasets or models.
//!
//! - [`output`]: the sink every `print` goes to, so a cached cell can replay what it printed;
//! - [`cancel`]: the process-wide Ctrl-C flag every long loop checks;
//! - [`options`]: the checked reader of the option maps stdlib functions take;
//! - [`workspace`]: the [`Workspace`] every stdlib function works in (paths relative to the script,
//!   the input log the cell cache checks, the store, the `--fresh` flag, the output sink), reached
//!   through Rhai's call context; atomic writes;
//! - [`store`]: the workspace's SQLite store (verification results, recorded model answers, runs);
//! - [`values`]: the registry of rich values (how each capability's types display, render and
//!   persist), and [`display`], how any value is shown;
//! - [`progress`]: progress of long work on stderr, as a bar or, in a log, a line every 30 s or 10%;
//! - [`provenance`]: code identities, content hashes of models and adapters, the machine: what made
//!   a cached or reported result;
//! - [`json`]: between JSON and Rhai values;
//! - [`api`]: the Rhai package every script gets (files, JSON, environment, assertions).
//!
//! Every other rtlab crate sits above this one; it depends on none of them.

pub mod api;
pub mod cancel;
pub mod display;
pub mod json;
pub mod options;
pub mod output;
pub mod progress;
pub mod provenance;
pub mod store;
pub mod values;
pub mod workspace;

pub use cancel::{cancel_requested, clear_cancel, install_ctrl_c_handler, request_cancel};
pub use display::display_value;
pub use options::{OptionError, Options};
pub use output::OutputSink;
pub use workspace::Workspace;

rhai::def_package! {
    /// The package every script gets: files relative to the script, sleeping that Ctrl-C interrupts,
    /// JSON, environment lookups (recorded as cell inputs) and assertions.
    pub CorePackage(module) {
        api::register(module);
    }
}
