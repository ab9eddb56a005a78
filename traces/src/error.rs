//! Errors of the contract crate. Every error that comes from user input names the file,
//! and where there is one the line (1-based) and the field.

use std::path::PathBuf;

/// An error reading, writing or importing traces.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// Bad input at a known place in a file.
    #[error("{}:{line}: field `{field}`: {message}", path.display())]
    BadInput {
        /// The file.
        path: PathBuf,
        /// 1-based line (or row for Parquet).
        line: u64,
        /// The field or column.
        field: String,
        /// What was wrong.
        message: String,
    },
    /// A file that is not what it claims to be (wrong format, missing columns, empty).
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
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
    /// A Parquet encoding or decoding error on a named file.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow error (schema mismatch and the like).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}
