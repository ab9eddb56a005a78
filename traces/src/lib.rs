//! The retrace contract crate.
//!
//! Everything that proxy, replay, analyze and sim exchange is defined here once:
//! the versioned Arrow schemas of the three row kinds ([`RequestRow`], [`ResultRow`],
//! [`SampleRow`]), Parquet reading and writing, importers of public traces, and the one
//! definition of every latency metric together with the SSE / JSON stream observer that
//! measures them. This crate is synchronous on purpose: no tokio, no hyper.

pub mod error;
pub mod export;
pub mod import;
pub mod inspect;
pub mod metrics;
pub mod observe;
pub mod prefix;
pub mod read;
pub mod rows;
pub mod scan;
pub mod schema;
pub mod sse;
pub mod tokenizer;
pub mod units;
pub mod write;

pub use error::TracesError;
pub use metrics::{GapSummary, Latencies};
pub use observe::{Observation, StreamObserver};
pub use read::{batches, expand_inputs, file_meta, read_all, read_rows, RowIter};
pub use rows::{
    Endpoint, ErrorKind, Outcome, RequestRow, ResultRow, SampleRow, SampleSource, TokenSource,
};
pub use schema::{FileMeta, Row};
pub use write::{recover_dir, write_file, RecoveryReport, RowWriter, WriterOptions};

/// Version of the on-disk schemas. Bumped on any incompatible change; readers refuse
/// files with a newer major version and name the file.
pub const SCHEMA_VERSION: &str = "1.0";

/// Default prefix block size, in tokens (Mooncake's traces and vLLM's default prefix-cache
/// block granularity both group prompts into fixed-size token blocks).
pub const DEFAULT_PREFIX_BLOCK_TOKENS: u32 = 512;
