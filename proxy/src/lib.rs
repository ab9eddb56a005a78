//! retrace-proxy: the inline recording proxy.
//!
//! Transparent (bodies streamed both ways, byte for byte), fail-open (the hot path never
//! waits for the recorder; rows are dropped and counted instead), and one row per request
//! however it ends. `retrace proxy` is [`run`]; tests and the demo use [`spawn`].

pub mod cli;
mod client;
pub mod config;
mod connector;
mod forward;
mod head;
pub mod record;
mod request_info;
mod row;
mod server;
mod sink;
mod stats;
mod tls;
mod watch;

pub use cli::{run, ProxyArgs};
pub use config::{AdminListen, ProxyConfig, SinkFactory, Upstream};
pub use record::{RowSink, SinkError};
pub use server::{spawn, ProxyHandle};
pub use stats::ProxyStats;

/// Errors of `retrace proxy`.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A bad command-line value or configuration.
    #[error("{0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A TLS certificate, key or CA file is unusable (the message names the file).
    #[error("TLS: {0}")]
    Tls(String),
    /// The tokenizer file is unusable (the message names the file and field).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The recording cannot be started (output directory unusable).
    #[error("recording: {0}")]
    Recording(#[from] SinkError),
}

#[doc(hidden)]
pub mod fuzzing {
    //! Entry point for the cargo-fuzz targets in `fuzz/` (not a stable API).

    use retrace_traces::{Endpoint, Outcome, RequestRow, StreamObserver};

    use crate::row::{PendingRow, RowContext};

    /// The request-shape extractor end to end: `body` as a request to `path` is parsed
    /// (as the hot path and the writer thread do), rewritten for `include_usage`, and
    /// built into a row with `response` fed through the stream observer.
    pub fn request_shape(path: &str, body: &[u8], response: &[u8]) -> RequestRow {
        let endpoint = Endpoint::from_path(path);
        // The hot path's parse (with --include-usage) and its rewrite.
        let _ = crate::request_info::parse(&endpoint, body);
        if let Some(rewritten) = crate::request_info::inject_include_usage(body) {
            // The rewrite must stay a parseable request.
            assert!(crate::request_info::parse(&endpoint, &rewritten).is_some());
        }
        let mut observer = StreamObserver::new(endpoint.clone()).capture_text(64);
        let half = response.len() / 2;
        observer.feed(&response[..half], 10);
        observer.feed(&response[half..], 20);
        let pending = PendingRow {
            request_number: 0,
            session_id: None,
            arrival_us: 0,
            endpoint,
            request_bytes: Some(body.len() as u64),
            // The writer thread's path: the body is parsed while the row is built.
            request_body: Some(body.to_vec()),
            info: None,
            status: Some(200),
            outcome: Outcome::Ok,
            observer: Some(observer),
            end_us: 30,
        };
        let context = RowContext {
            tokenizer: None,
            block_tokens: 4,
            capture_content: true,
            capture_max_bytes: 64,
            id_prefix: "fuzz".into(),
        };
        pending.build(&context)
    }
}
