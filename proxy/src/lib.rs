//! retrace-proxy: the inline recording proxy.
//!
//! Transparent (bodies streamed both ways, byte for byte), fail-open (the hot path never
//! waits for the recorder; rows are dropped and counted instead), and one row per request
//! however it ends. `retrace proxy` is [`run`]; tests and the demo use [`spawn`].

pub mod cli;
pub mod config;
mod connector;
mod forward;
pub mod record;
mod request_info;
mod row;
mod server;
mod sink;
mod stats;
mod tls;
mod tokenizer;

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
