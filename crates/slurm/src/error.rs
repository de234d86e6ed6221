//! The Slurm executor's errors: options it cannot take, a cluster that is missing or does not
//! answer, a Slurm command's refusal, a job directory it cannot write, a job that failed, and a
//! worker's. Each message is the one users saw when the errors were strings.

use rtlab_core::OptionError;

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(transparent)]
    Option(#[from] OptionError),

    #[error(
        "Slurm is not installed here: `{program}` is not on PATH; {}",
        crate::cluster::START_HINT
    )]
    NotInstalled { program: String },

    #[error("could not run `{program}`: {source}")]
    CannotRun {
        program: String,
        source: std::io::Error,
    },

    #[error(
        "the Slurm controller does not answer (`sinfo`: {stderr}); is slurmctld running? {}",
        crate::cluster::START_HINT
    )]
    NoController { stderr: String },

    /// A Slurm command failed; `command` as the user would type it, `stderr` its words.
    #[error("`{command}`: {stderr}")]
    Command { command: String, stderr: String },

    #[error("sbatch refused the job: {stderr}")]
    SbatchRefused { stderr: String },

    /// A file of the job directory could not be read, written or encoded.
    #[error("slurm: {doing} {}: {message}", path.display())]
    JobFile {
        doing: String,
        path: std::path::PathBuf,
        message: String,
    },

    /// The job cannot run here, or did not finish: the message says what to do next.
    #[error("{0}")]
    Job(String),

    /// A worker's inputs are wrong, or it could not write its part.
    #[error("{0}")]
    Worker(String),

    /// The shard runner of the batch's kind failed (the verifier's, say), in its own words.
    #[error("{0}")]
    Shard(Box<dyn std::error::Error + Send + Sync>),
}
