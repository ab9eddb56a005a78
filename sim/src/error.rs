//! Errors of the sim.

use std::net::SocketAddr;
use std::path::PathBuf;

/// An error starting, running or stopping the sim.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration value is out of range.
    #[error("invalid sim configuration: `{field}`: {message}")]
    Config {
        /// The option (CLI flag or `SimConfig` field).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing the truth file failed.
    #[error("{}: parquet: {source}", path.display())]
    Truth {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The engine task ended abnormally.
    #[error("sim engine failed: {0}")]
    Engine(String),
}
