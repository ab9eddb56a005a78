//! Errors of `retrace replay`.

use std::path::PathBuf;

/// Errors of `retrace replay`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A bad option value or combination.
    #[error("{0}")]
    BadArgs(String),
    /// Reading or writing trace files.
    #[error(transparent)]
    Traces(#[from] retrace_traces::TracesError),
    /// The `--tokenizer` file is unusable (the message names the file and field).
    #[error("--tokenizer: {0}")]
    Tokenizer(#[from] retrace_traces::tokenizer::TokenizerError),
    /// The trace cannot be scheduled.
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    /// The target could not be reached at all before the run.
    #[error("target {url} is unreachable: {message}")]
    TargetUnreachable {
        /// The URL tried.
        url: String,
        /// Why.
        message: String,
    },
    /// The target answered, but not as an OpenAI-compatible server.
    #[error("target {url}: {message}")]
    Target {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// A file system error on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Stopped (Ctrl-C) before the first request was sent.
    #[error("stopped before the first request was sent")]
    Interrupted,
    /// The client could not be set up, or a writer thread failed.
    #[error("{0}")]
    Internal(String),
}
