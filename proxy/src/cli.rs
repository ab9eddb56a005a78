//! Command-line arguments of `retrace proxy`, their typed value parsers, the validated
//! [`ProxyConfig`], and the entry point [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{AdminListen, ProxyConfig, Upstream};
use crate::ProxyError;

/// Arguments of `retrace proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// Address to listen on for client traffic (e.g. `0.0.0.0:8080`).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The upstream server, `http://host:port` or `https://host:port[/prefix]`.
    #[arg(long)]
    pub upstream: String,
    /// Directory the recording (Parquet files) is written to.
    #[arg(long)]
    pub out: PathBuf,
    /// Admin listener (`/metrics`, `/healthz`), or `off`.
    #[arg(long, default_value = "127.0.0.1:9090", value_parser = parse_admin)]
    pub admin: AdminListen,
    /// PEM certificate chain: terminate TLS on the listener (needs `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) trusted for an https upstream (in addition to webpki roots).
    #[arg(long)]
    pub upstream_ca: Option<PathBuf>,
    /// Do not verify the upstream's TLS certificate (testing only).
    #[arg(long)]
    pub insecure_upstream: bool,
    /// Keep the client's Host header instead of rewriting it to the upstream's.
    #[arg(long)]
    pub preserve_host: bool,
    /// Upstream TCP (+TLS) connect timeout, e.g. `5s`, `500ms`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Time allowed from sending a request upstream to the response head.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub first_byte_timeout: Duration,
    /// Longest silence allowed between two response body chunks.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// A client must send a request's head within this time (slowloris), else its
    /// connection is closed; also closes client connections idle this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Hugging Face `tokenizer.json` used to count prompt tokens when the server sends no usage.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Ask streaming requests upstream for a usage chunk (stripped again for the client).
    #[arg(long)]
    pub include_usage: bool,
    /// Record prompt and response text (size-capped).
    #[arg(long)]
    pub capture_content: bool,
    /// Request bodies are parsed for recording only up to this size (e.g. `1MiB`).
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub max_parse_bytes: u64,
    /// Rows that may wait for the writer; beyond this, rows are dropped (and counted).
    #[arg(long, default_value_t = 65_536)]
    pub queue_capacity: usize,
    /// The most memory the rows waiting for the writer may hold (their request bodies and
    /// response bytes, e.g. `256MiB`); beyond this, rows are dropped (and counted).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub queue_max_bytes: u64,
    /// Start a new file once the current one reaches this size (e.g. `256MiB`).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub rotate_size: u64,
    /// Start a new file once the current one is this old (e.g. `1h`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub rotate_age: Duration,
    /// The upstream's clock runs K times faster than real time (a `retrace sim --speedup K`):
    /// recorded times and durations are scaled by K. 1 against a real server.
    #[arg(long, default_value_t = 1.0)]
    pub clock_speedup: f64,
    /// How often buffered rows are flushed to disk (the most a SIGKILL can lose).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Threads serving traffic (default: one per CPU). With 1, a single event loop, as
    /// nginx's `worker_processes 1`. The recording is written by a thread of its own.
    #[arg(long)]
    pub threads: Option<std::num::NonZeroUsize>,
}

impl ProxyArgs {
    /// Validates the arguments once into a [`ProxyConfig`].
    pub fn into_config(self) -> Result<ProxyConfig, ProxyError> {
        let upstream = Upstream::parse(&self.upstream)?;
        if self.queue_capacity == 0 {
            return Err(ProxyError::Config(
                "--queue-capacity must be at least 1".into(),
            ));
        }
        if !(self.clock_speedup.is_finite() && self.clock_speedup > 0.0) {
            return Err(ProxyError::Config(format!(
                "--clock-speedup {}: must be a positive number",
                self.clock_speedup
            )));
        }
        if self.flush_interval.is_zero() {
            return Err(ProxyError::Config(
                "--flush-interval must be positive".into(),
            ));
        }
        let mut config = ProxyConfig::new(self.listen, upstream, self.out);
        config.admin = self.admin;
        config.tls_cert = self.tls_cert.zip(self.tls_key);
        config.upstream_ca = self.upstream_ca;
        config.insecure_upstream = self.insecure_upstream;
        config.preserve_host = self.preserve_host;
        config.connect_timeout = self.connect_timeout;
        config.first_byte_timeout = self.first_byte_timeout;
        config.idle_timeout = self.idle_timeout;
        config.drain_timeout = self.drain_timeout;
        config.header_read_timeout = self.header_read_timeout;
        config.tokenizer = self.tokenizer;
        config.include_usage = self.include_usage;
        config.capture_content = self.capture_content;
        config.max_parse_bytes = usize::try_from(self.max_parse_bytes).unwrap_or(usize::MAX);
        config.queue_capacity = self.queue_capacity;
        config.queue_max_bytes = usize::try_from(self.queue_max_bytes).unwrap_or(usize::MAX);
        config.rotate_size_bytes = self.rotate_size;
        config.rotate_age = self.rotate_age;
        config.flush_interval = self.flush_interval;
        config.clock_speedup = self.clock_speedup;
        Ok(config)
    }
}

/// Parses `off` or a socket address for `--admin`.
pub fn parse_admin(text: &str) -> Result<AdminListen, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(AdminListen::Off);
    }
    text.parse::<SocketAddr>()
        .map(AdminListen::On)
        .map_err(|err| {
            format!("`{text}`: expected `off` or an address like 127.0.0.1:9090 ({err})")
        })
}

pub use retrace_traces::units::{parse_duration, parse_size};

/// Runs `retrace proxy` until `shutdown` resolves, then drains (up to `--drain-timeout`),
/// flushes and closes the recording. Returns the process exit code.
pub async fn run(
    args: ProxyArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<u8, ProxyError> {
    let config = args.into_config()?;
    let drain = config.drain_timeout;
    let handle = crate::spawn(config).await?;
    tracing::info!(listen = %handle.local_addr(), admin = ?handle.admin_addr(), "proxy listening");
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    let stats = handle.shutdown(drain).await?;
    tracing::info!(
        requests = stats.requests_total,
        rows_written = stats.rows_written,
        rows_dropped = stats.rows_dropped,
        "proxy stopped"
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_duration("xs").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("512KB").unwrap(), 512_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12 parsecs").unwrap_err().contains("parsecs"));
    }

    #[test]
    fn admin_parses_off_and_addresses() {
        assert_eq!(parse_admin("off").unwrap(), AdminListen::Off);
        assert!(matches!(
            parse_admin("127.0.0.1:0").unwrap(),
            AdminListen::On(_)
        ));
        assert!(parse_admin("localhost").is_err());
    }
}
