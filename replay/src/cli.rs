//! Command-line arguments of `retrace replay` and its entry point.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use retrace_traces::tokenizer::Tokenizer;
use retrace_traces::Endpoint;

use crate::runner::{replay, ProcessSelector, ReplayConfig, ServerKind, TraceInput};
use crate::schedule::ScheduleConfig;
use crate::shape::{self, Profile, Shard};
pub use crate::ReplayError;

/// Which API to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EndpointArg {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

/// Arguments of `retrace replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Recordings or imported traces (request Parquet files, directories or globs), merged in
    /// time order.
    #[arg(required = true, value_name = "TRACE")]
    pub traces: Vec<PathBuf>,
    /// Base URL of the OpenAI-compatible target, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub target: String,
    /// Directory for results-*.parquet, samples-*.parquet and summary.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Time compression: 2, 2x or 200%.
    #[arg(long, value_parser = shape::parse_factor, default_value = "1")]
    pub speed: f64,
    /// Overlay this many copies of the trace, shifted by seeded random offsets.
    #[arg(long, default_value_t = 1)]
    pub amplify: u32,
    /// Resample arrivals at this rate (e.g. 20/s), keeping rows whole.
    #[arg(long, value_parser = shape::parse_rate)]
    pub rate: Option<f64>,
    /// With --rate: gamma arrivals with this coefficient of variation (1 = Poisson).
    #[arg(long, value_name = "CV")]
    pub burstiness: Option<f64>,
    /// Load profile: ramp:0%..200%/30m, spike:100%,300%@10m/2m, soak:80%/2h, steps:50%,100%/5m.
    #[arg(long, value_parser = shape::parse_profile)]
    pub profile: Option<Profile>,
    /// Closed loop of N users (each sends its next request when the previous one ends).
    #[arg(long)]
    pub users: Option<u32>,
    /// Closed loop: pause between a response and the user's next request.
    #[arg(long, value_parser = shape::parse_duration)]
    pub think_time: Option<Duration>,
    /// Send every request with this many prompt tokens (long-context scenario).
    #[arg(long, value_name = "TOKENS")]
    pub long_context: Option<u32>,
    /// Stop after this long (the trace loops to fill it).
    #[arg(long, value_parser = shape::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many requests.
    #[arg(long)]
    pub max_requests: Option<u64>,
    /// Cap idle gaps of the trace at this.
    #[arg(long, value_parser = shape::parse_duration)]
    pub max_gap: Option<Duration>,
    /// Seed of every random choice (same seed, same schedule).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scenario label written with every result.
    #[arg(long, default_value = "replay")]
    pub scenario: String,
    /// The target's clock runs K× faster (`retrace sim --speedup K`).
    #[arg(long, value_parser = shape::parse_factor, default_value = "1")]
    pub clock_speedup: f64,
    /// Force the API (else the trace's).
    #[arg(long, value_enum)]
    pub endpoint: Option<EndpointArg>,
    /// Model to send (else the target's first model).
    #[arg(long)]
    pub model: Option<String>,
    /// Name of the environment variable holding the API key.
    #[arg(long, value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// Extra request header, `K: V` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "K: V")]
    pub headers: Vec<String>,
    /// The server kind (else detected from /v1/models, /metrics or headers).
    #[arg(long, value_enum)]
    pub server_kind: Option<ServerKind>,
    /// Follow each trace row's stream flag instead of always streaming.
    #[arg(long)]
    pub trace_stream_flag: bool,
    /// Do not calibrate prompts with the server's /tokenize (--tokenizer, else the estimate).
    #[arg(long)]
    pub no_tokenize: bool,
    /// The model's Hugging Face tokenizer.json (BPE): sizes prompts exactly when the target's
    /// /tokenize is not used (absent, failing or --no-tokenize), instead of the estimate.
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Prometheus endpoint to sample every second (repeatable; default <target>/metrics).
    #[arg(long = "metrics-url")]
    pub metrics_urls: Vec<String>,
    /// Extra trusted root certificate(s) for an https target, PEM (repeatable).
    #[arg(long = "ca-cert", value_name = "PEM")]
    pub ca_certs: Vec<PathBuf>,
    /// Do not sample any Prometheus endpoint.
    #[arg(long)]
    pub no_metrics: bool,
    /// Sample memory and CPU of this server process.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Sample memory and CPU of the process with this name.
    #[arg(long, conflicts_with = "pid")]
    pub process_name: Option<String>,
    /// Lateness p99 above which the run is marked client-limited (on the client's real
    /// clock: under --clock-speedup K the recorded lateness is K× larger).
    #[arg(long, value_parser = shape::parse_duration, default_value = "10ms")]
    pub max_lateness: Duration,
    /// On Ctrl-C or --duration: wait this long for in-flight requests.
    #[arg(long, value_parser = shape::parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Limit of one request.
    #[arg(long, value_parser = shape::parse_duration, default_value = "10m")]
    pub request_timeout: Duration,
    /// This replayer's part of a distributed run: i/N (0-based).
    #[arg(long, value_parser = shape::parse_shard)]
    pub shard: Option<Shard>,
    /// Start at this RFC 3339 time (all shards agree on it).
    #[arg(long, value_name = "RFC3339")]
    pub start_at: Option<String>,
    /// Exit with status 1 when the run was client-limited (lateness p99 over --max-lateness).
    #[arg(long)]
    pub fail_if_client_limited: bool,
    /// No live progress display.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

fn bad(message: impl Into<String>) -> ReplayError {
    ReplayError::BadArgs(message.into())
}

impl ReplayArgs {
    /// Validates the arguments into a configuration.
    pub fn into_config(self) -> Result<ReplayConfig, ReplayError> {
        if self.amplify == 0 {
            return Err(bad("--amplify must be ≥ 1"));
        }
        if self.users.is_some()
            && (self.rate.is_some() || self.profile.is_some() || self.amplify > 1)
        {
            return Err(bad(
                "--users (closed loop) does not combine with --rate, --profile or --amplify",
            ));
        }
        if self.think_time.is_some() && self.users.is_none() {
            return Err(bad("--think-time needs --users"));
        }
        if self.long_context == Some(0) {
            return Err(bad("--long-context must be ≥ 1 token"));
        }
        let api_key = match &self.api_key_env {
            None => None,
            Some(name) => Some(std::env::var(name).map_err(|_| {
                bad(format!(
                    "--api-key-env: environment variable `{name}` is not set"
                ))
            })?),
        };
        let mut headers = Vec::new();
        for h in &self.headers {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| bad(format!("-H `{h}`: expected `Name: value`")))?;
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|e| bad(format!("-H `{h}`: bad name: {e}")))?;
            let value = HeaderValue::from_str(v.trim())
                .map_err(|e| bad(format!("-H `{h}`: bad value: {e}")))?;
            headers.push((name, value));
        }
        let start_at_us = match &self.start_at {
            None => None,
            Some(text) => Some(
                chrono::DateTime::parse_from_rfc3339(text)
                    .map_err(|e| {
                        bad(format!(
                            "--start-at `{text}`: {e} (expected e.g. 2025-06-01T12:00:00Z)"
                        ))
                    })?
                    .timestamp_micros(),
            ),
        };
        // Loaded now so that a bad file stops the run before anything is sent.
        let tokenizer = match &self.tokenizer {
            None => None,
            Some(path) => Some(Arc::new(Tokenizer::load(path)?)),
        };
        let mut config = ReplayConfig::new(
            TraceInput::Files(self.traces),
            self.target.clone(),
            self.out.clone(),
        );
        config.schedule = ScheduleConfig {
            speed: self.speed,
            amplify: self.amplify,
            rate: self.rate,
            burstiness_cv: self.burstiness,
            profile: self.profile,
            long_context_tokens: self.long_context,
            duration: self.duration,
            max_requests: self.max_requests,
            max_gap: self.max_gap,
            seed: self.seed,
            shard: self.shard,
            closed_loop: self.users.is_some(),
        };
        config.users = self.users;
        config.think_time = self.think_time.unwrap_or_default();
        config.endpoint = self.endpoint.map(|e| match e {
            EndpointArg::Chat => Endpoint::Chat,
            EndpointArg::Completions => Endpoint::Completions,
        });
        config.model = self.model;
        config.api_key = api_key;
        config.headers = headers;
        config.server_kind = self.server_kind;
        if self.no_metrics {
            config.metrics_urls.clear();
        } else if !self.metrics_urls.is_empty() {
            config.metrics_urls = self.metrics_urls;
        }
        config.process = match (self.pid, self.process_name) {
            (Some(pid), _) => Some(ProcessSelector::Pid(pid)),
            (None, Some(name)) => Some(ProcessSelector::Name(name)),
            (None, None) => None,
        };
        config.ca_certs = self.ca_certs;
        config.max_lateness = self.max_lateness;
        config.drain_timeout = self.drain_timeout;
        config.request_timeout = self.request_timeout;
        config.always_stream = !self.trace_stream_flag;
        config.use_tokenize = !self.no_tokenize;
        config.tokenizer = tokenizer;
        config.progress = !self.quiet;
        config.clock_speedup = self.clock_speedup;
        config.start_at_us = start_at_us;
        config.scenario = self.scenario;
        Ok(config)
    }
}

/// Runs `retrace replay` until done or until `shutdown` resolves. Returns the process exit code:
/// 0, or 1 when the run was client-limited and `--fail-if-client-limited` was given.
pub async fn run(
    args: ReplayArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<u8, ReplayError> {
    let fail_if_client_limited = args.fail_if_client_limited;
    let config = args.into_config()?;
    let summary = replay(config, shutdown).await?;
    print!("{}", summary.table());
    Ok(u8::from(fail_if_client_limited && summary.client_limited))
}
