//! The verifier's errors. A design the verifier refuses or cannot check is not an error of the
//! caller's: [`crate::verify`] records it in the report (`errors`, `warnings`). These are the errors
//! that stop a call: options it cannot take, a stage whose tool is missing, a frame or a Slurm run
//! that fails. Each message is the one users saw when the errors were strings.

use rtlab_core::OptionError;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Option(#[from] OptionError),

    /// A chosen stage's tool is not installed: the stage is never dropped from the score in silence.
    #[error("verify: the {stage} stage needs {program}, which is not installed (run `rtlab doctor`); install it with `sudo {install}`, or leave the stage out on purpose with stages: [{}]", quoted(without))]
    ToolMissing {
        stage: String,
        program: String,
        install: String,
        /// The chosen stages whose tools are installed.
        without: Vec<String>,
    },

    /// Untrusted Verilog that no tool may see (a shell call, a file outside the scratch directory).
    #[error(transparent)]
    Refused(#[from] Refusal),

    /// The directory the rows' scratch directories go in cannot take one (a `TMPDIR` that names no
    /// directory, a full or read-only disk): said before any tool runs, not as a missing tool.
    #[error("verify: cannot make a scratch directory in {dir}{}: {source}; {}", if *from_tmpdir { " (TMPDIR names it)" } else { "" }, if *from_tmpdir { "set TMPDIR to a directory you can write, or unset it" } else { "make room there, or set TMPDIR to a directory you can write" })]
    ScratchUnusable {
        dir: String,
        from_tmpdir: bool,
        source: std::io::Error,
    },

    #[error("cannot {doing}: {source}")]
    Io {
        doing: String,
        source: std::io::Error,
    },

    /// A tool's output (Yosys' JSON, Verilator's XML) that does not say what the verifier needs.
    #[error("{0}")]
    ToolOutput(String),

    /// The differential testbench cannot drive or read this port.
    #[error("port {port} {problem}")]
    Port { port: String, problem: String },

    /// The reference's ports could not be read by Yosys, nor (where tried) by Verilator.
    #[error("the reference does not elaborate in Yosys{}", match verilator { Some(v) => format!(" ({yosys}); {v}"), None => format!(": {yosys}") })]
    ReferenceUnreadable {
        yosys: String,
        verilator: Option<Box<VerifyError>>,
    },

    #[error("cannot tell the design's top module; pass top")]
    NoTop,

    /// A row's value the verifier cannot take (`df.verify: row 3: ...`).
    #[error("{function}: row {row}: {problem}")]
    BadRow {
        function: String,
        row: usize,
        problem: String,
    },

    #[error("verify: {0}")]
    Frame(#[from] rtlab_data::DataError),

    /// The result columns could not be built.
    #[error("{0}")]
    Results(rtlab_data::DataError),

    #[error("cancelled by Ctrl-C (finished rows are cached; rerun to continue)")]
    Cancelled,

    #[error(transparent)]
    Slurm(#[from] rtlab_slurm::SlurmError),

    /// A Slurm worker's verdict the driver cannot read.
    #[error("slurm: a worker's verdict for {key} is not a report: {message}")]
    BadVerdict { key: String, message: String },

    /// A Slurm shard the worker cannot run (its options or items do not parse, its tools differ).
    #[error("rtlab worker: {0}")]
    Worker(String),

    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Why the sandbox refuses a text, naming the text (`design`, `testbench`) and the line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what}{}: {reason}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct Refusal {
    pub what: String,
    pub line: Option<usize>,
    pub reason: String,
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl VerifyError {
    /// The reference's ports could not be read: Yosys' errors, and Verilator's where it was tried.
    pub(crate) fn reference_unreadable(yosys: String, verilator: Option<VerifyError>) -> Self {
        VerifyError::ReferenceUnreadable {
            yosys,
            verilator: verilator.map(Box::new),
        }
    }

    pub(crate) fn io(doing: impl Into<String>, source: std::io::Error) -> VerifyError {
        VerifyError::Io {
            doing: doing.into(),
            source,
        }
    }
}
