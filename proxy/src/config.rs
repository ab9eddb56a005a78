//! The validated proxy configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::record::{RowSink, SinkError};
use crate::ProxyError;

/// Where the admin listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// No admin listener.
    Off,
    /// Listen on this address.
    On(SocketAddr),
}

/// The upstream server, split once from `--upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host:port`.
    pub authority: Authority,
    /// Path prefix prepended to every request path (empty or `/prefix`, no trailing `/`).
    pub base_path: String,
}

impl Upstream {
    /// Parses `http[s]://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<Upstream, ProxyError> {
        let bad = |why: &str| ProxyError::Config(format!("--upstream `{url}`: {why}"));
        let uri: http::Uri = url
            .parse()
            .map_err(|err| bad(&format!("not a URL ({err})")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("missing scheme (http:// or https://)"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(bad("scheme must be http or https"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| bad("missing host"))?;
        if uri.query().is_some() {
            return Err(bad("must not have a query string"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Upstream {
            scheme,
            authority,
            base_path,
        })
    }

    /// Whether TLS is used towards the upstream.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

/// Makes the row sink (the writer of the recording). Called again after a write error.
pub type SinkFactory = Arc<dyn Fn() -> Result<Box<dyn RowSink>, SinkError> + Send + Sync>;

/// Everything the proxy needs, validated. Build it with [`ProxyConfig::new`] and adjust
/// the public fields, or from the command line with `ProxyArgs::into_config`.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Client-facing listener (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The upstream server.
    pub upstream: Upstream,
    /// Output directory of the recording.
    pub out: PathBuf,
    /// Admin listener.
    pub admin: AdminListen,
    /// PEM certificate chain and key: terminate TLS on the listener.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// Extra CA certificates (PEM) trusted for an https upstream.
    pub upstream_ca: Option<PathBuf>,
    /// Skip verification of the upstream certificate.
    pub insecure_upstream: bool,
    /// Keep the client's Host header.
    pub preserve_host: bool,
    /// Upstream connect timeout (TCP and TLS).
    pub connect_timeout: Duration,
    /// Send → response head timeout.
    pub first_byte_timeout: Duration,
    /// Longest allowed gap between response body chunks.
    pub idle_timeout: Duration,
    /// Drain time used by `run` on shutdown.
    pub drain_timeout: Duration,
    /// An HTTP/1.1 client must send a request's whole head within this time, else its
    /// connection is closed (slowloris; also closes keep-alive connections idle this long).
    pub header_read_timeout: Duration,
    /// HF `tokenizer.json` for prompt token counts.
    pub tokenizer: Option<PathBuf>,
    /// Inject `stream_options.include_usage` and strip the extra chunk.
    pub include_usage: bool,
    /// Record prompt/response text.
    pub capture_content: bool,
    /// Size cap of captured prompt/response text, bytes.
    pub capture_max_bytes: usize,
    /// Request bodies are parsed only up to this many bytes.
    pub max_parse_bytes: usize,
    /// Capacity of the row queue between the hot path and the writer thread.
    pub queue_capacity: usize,
    /// The most bytes the queued rows may hold (request bodies, buffered responses): a stalled
    /// writer must not grow the proxy's memory by the queue's row count times large
    /// prompts. Beyond it, rows are dropped (and counted).
    pub queue_max_bytes: usize,
    /// Rotate files at this size.
    pub rotate_size_bytes: u64,
    /// Rotate files at this age.
    pub rotate_age: Duration,
    /// Flush buffered rows at least this often.
    pub flush_interval: Duration,
    /// Prefix block size in tokens.
    pub prefix_block_tokens: u32,
    /// The upstream's clock runs this many times faster than real time (a sim with
    /// `--speedup K`): recorded arrival times advance K× faster from the proxy's start and
    /// every recorded duration is multiplied by K, so the recording is in the upstream's
    /// simulated time. 1.0 against a real server.
    pub clock_speedup: f64,
    /// Replaces the Parquet writer (tests inject slow or failing sinks). `None`: the
    /// real writer into `out`.
    pub sink_factory: Option<SinkFactory>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("out", &self.out)
            .field("admin", &self.admin)
            .field("tls_cert", &self.tls_cert)
            .field("include_usage", &self.include_usage)
            .field("capture_content", &self.capture_content)
            .field("custom_sink", &self.sink_factory.is_some())
            .finish_non_exhaustive()
    }
}

impl ProxyConfig {
    /// A configuration with the command line's defaults, admin off.
    pub fn new(listen: SocketAddr, upstream: Upstream, out: PathBuf) -> ProxyConfig {
        ProxyConfig {
            listen,
            upstream,
            out,
            admin: AdminListen::Off,
            tls_cert: None,
            upstream_ca: None,
            insecure_upstream: false,
            preserve_host: false,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            tokenizer: None,
            include_usage: false,
            capture_content: false,
            capture_max_bytes: 64 * 1024,
            max_parse_bytes: 1 << 20,
            queue_capacity: 65_536,
            queue_max_bytes: 256 << 20,
            rotate_size_bytes: 256 << 20,
            rotate_age: Duration::from_secs(3600),
            flush_interval: Duration::from_secs(1),
            prefix_block_tokens: retrace_traces::DEFAULT_PREFIX_BLOCK_TOKENS,
            clock_speedup: 1.0,
            sink_factory: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn upstream_urls_are_split_and_checked() {
        let up = Upstream::parse("https://example.invalid:8443/api/").unwrap();
        assert!(up.is_https());
        assert_eq!(up.authority.as_str(), "example.invalid:8443");
        assert_eq!(up.base_path, "/api");
        let up = Upstream::parse("http://127.0.0.1:8000").unwrap();
        assert_eq!(up.base_path, "");
        assert!(Upstream::parse("ftp://x")
            .unwrap_err()
            .to_string()
            .contains("http or https"));
        assert!(Upstream::parse("127.0.0.1:8000").is_err());
    }
}
