//! The three row kinds of retrace, as plain Rust structs. Their Arrow schemas and
//! conversions live next to them in `schema` (one place, versioned by [`crate::SCHEMA_VERSION`]).
//!
//! Units are in the names: `_us` is microseconds, `_bytes` is bytes. Absolute times are
//! UTC microseconds since the Unix epoch; durations are microseconds.

use serde::{Deserialize, Serialize};

/// Which API a request used.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Endpoint {
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/chat/completions`.
    Chat,
    /// Any other path, kept verbatim (without the query string).
    Other(String),
}

impl Endpoint {
    /// The string stored on disk: `completions`, `chat`, or the path itself.
    pub fn as_str(&self) -> &str {
        match self {
            Endpoint::Completions => "completions",
            Endpoint::Chat => "chat",
            Endpoint::Other(path) => path,
        }
    }

    /// Parses the on-disk string (inverse of [`Endpoint::as_str`]).
    pub fn parse(stored: &str) -> Endpoint {
        match stored {
            "completions" => Endpoint::Completions,
            "chat" => Endpoint::Chat,
            other => Endpoint::Other(other.to_string()),
        }
    }

    /// Classifies a request path: `/v1/completions` and `/v1/chat/completions` (with or
    /// without a trailing slash or a query) are understood, anything else is `Other`.
    pub fn from_path(path: &str) -> Endpoint {
        let path = path.split('?').next().unwrap_or(path);
        let trimmed = path.trim_end_matches('/');
        if trimmed.ends_with("/chat/completions") {
            Endpoint::Chat
        } else if trimmed.ends_with("/completions") {
            Endpoint::Completions
        } else {
            Endpoint::Other(path.to_string())
        }
    }
}

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenSource {
    /// The server's `usage` object (exact, the server's own tokenizer).
    Usage,
    /// A Hugging Face `tokenizer.json` or the server's `/tokenize` endpoint.
    Tokenizer,
    /// Counted from stream chunks (one content chunk = one token).
    Counted,
    /// Estimated from text length.
    Estimate,
    /// Taken from an imported public trace.
    Imported,
    /// Not known.
    Unknown,
}

impl TokenSource {
    /// The string stored on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Usage => "usage",
            TokenSource::Tokenizer => "tokenizer",
            TokenSource::Counted => "counted",
            TokenSource::Estimate => "estimate",
            TokenSource::Imported => "imported",
            TokenSource::Unknown => "unknown",
        }
    }

    /// Parses the on-disk string; unknown strings become `Unknown`.
    pub fn parse(stored: &str) -> TokenSource {
        match stored {
            "usage" => TokenSource::Usage,
            "tokenizer" => TokenSource::Tokenizer,
            "counted" => TokenSource::Counted,
            "estimate" => TokenSource::Estimate,
            "imported" => TokenSource::Imported,
            _ => TokenSource::Unknown,
        }
    }
}

/// How a recorded request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// A 2xx response read to its end.
    Ok,
    /// The upstream answered with a non-2xx status.
    HttpError,
    /// The upstream could not be reached, or broke the stream.
    UpstreamError,
    /// The client went away before the response ended.
    ClientCancelled,
    /// A timeout fired (connect, first byte or idle).
    Timeout,
}

impl Outcome {
    /// The string stored on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::HttpError => "http_error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientCancelled => "client_cancelled",
            Outcome::Timeout => "timeout",
        }
    }

    /// Parses the on-disk string.
    pub fn parse(stored: &str) -> Option<Outcome> {
        Some(match stored {
            "ok" => Outcome::Ok,
            "http_error" => Outcome::HttpError,
            "upstream_error" => Outcome::UpstreamError,
            "client_cancelled" => Outcome::ClientCancelled,
            "timeout" => Outcome::Timeout,
            _ => return None,
        })
    }
}

/// Why a replayed request failed, as seen by the load client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// TCP/TLS connection could not be made.
    Connect,
    /// A timeout fired.
    Timeout,
    /// The server answered with a non-2xx status.
    HttpStatus,
    /// The stream broke or was malformed after it started.
    BrokenStream,
    /// The run was stopped (Ctrl-C, deadline) while the request was in flight.
    Cancelled,
    /// Anything else (client-side failure).
    Other,
}

impl ErrorKind {
    /// The string stored on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::BrokenStream => "broken_stream",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Other => "other",
        }
    }

    /// Parses the on-disk string.
    pub fn parse(stored: &str) -> Option<ErrorKind> {
        Some(match stored {
            "connect" => ErrorKind::Connect,
            "timeout" => ErrorKind::Timeout,
            "http_status" => ErrorKind::HttpStatus,
            "broken_stream" => ErrorKind::BrokenStream,
            "cancelled" => ErrorKind::Cancelled,
            "other" => ErrorKind::Other,
            _ => return None,
        })
    }
}

/// One request of production traffic (or of an imported public trace): its shape and
/// how the server answered it. Written by the proxy and the importers, read by replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRow {
    /// Unique id within a recording (proxy: `<random per-process hex>-<counter>`; importers: `<format>-<line>`).
    pub request_id: String,
    /// When the request arrived, UTC µs since the Unix epoch.
    pub arrival_us: i64,
    /// Conversation or session id, when the source has one.
    pub session_id: Option<String>,
    /// Which API.
    pub endpoint: Endpoint,
    /// The `model` field of the request.
    pub model: Option<String>,
    /// The `stream` flag of the request.
    pub stream: bool,
    /// Prompt length in tokens.
    pub prompt_tokens: Option<u32>,
    /// Where `prompt_tokens` came from.
    pub prompt_tokens_source: TokenSource,
    /// `max_tokens` / `max_completion_tokens` asked for.
    pub max_tokens: Option<u32>,
    /// Number of chat messages (chat only).
    pub message_count: Option<u32>,
    /// Generated tokens.
    pub output_tokens: Option<u32>,
    /// Where `output_tokens` came from.
    pub output_tokens_source: TokenSource,
    /// Chained hashes of the prompt's prefix blocks (block size in file metadata).
    pub prefix_hashes: Vec<u64>,
    /// HTTP status returned to the client (None if none was sent).
    pub status: Option<u16>,
    /// How it ended.
    pub outcome: Outcome,
    /// Time from request arrival to the first response body byte.
    pub ttfb_us: Option<u64>,
    /// Time to first token (see `metrics`).
    pub ttft_us: Option<u64>,
    /// End-to-end time: arrival to the end of the response.
    pub e2e_us: Option<u64>,
    /// Number of SSE data events carrying generated text.
    pub chunk_count: Option<u32>,
    /// Summary of inter-token gaps (see `metrics::GapSummary`).
    pub itl: Option<crate::GapSummary>,
    /// Request body size.
    pub request_bytes: Option<u64>,
    /// Response body size.
    pub response_bytes: Option<u64>,
    /// `finish_reason` of the (first) choice.
    pub finish_reason: Option<String>,
    /// Prompt text, only with `--capture-content` (size-capped).
    pub prompt_text: Option<String>,
    /// Response text, only with `--capture-content` (size-capped).
    pub response_text: Option<String>,
}

impl RequestRow {
    /// A row of an imported trace with only its id, arrival and endpoint known: streamed,
    /// outcome ok, token counts' source `Imported`, everything else absent. Importers (and
    /// tests) fill in what their format has, e.g. with struct update syntax.
    pub fn imported(request_id: String, arrival_us: i64, endpoint: Endpoint) -> RequestRow {
        RequestRow {
            request_id,
            arrival_us,
            session_id: None,
            endpoint,
            model: None,
            stream: true,
            prompt_tokens: None,
            prompt_tokens_source: TokenSource::Imported,
            max_tokens: None,
            message_count: None,
            output_tokens: None,
            output_tokens_source: TokenSource::Imported,
            prefix_hashes: Vec::new(),
            status: None,
            outcome: Outcome::Ok,
            ttfb_us: None,
            ttft_us: None,
            e2e_us: None,
            chunk_count: None,
            itl: None,
            request_bytes: None,
            response_bytes: None,
            finish_reason: None,
            prompt_text: None,
            response_text: None,
        }
    }
}

/// One replayed request: the trace row it came from, when it was meant to go and went,
/// and what was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// `request_id` of the trace row replayed (with a `#copy` suffix when amplified).
    pub request_id: String,
    /// The session of the trace row, if any.
    pub session_id: Option<String>,
    /// Scenario label: what run this belongs to (e.g. `2x`, `spike`, `soak`).
    pub scenario: String,
    /// Phase within the scenario (e.g. `ramp`, `spike`, `recovery`, `step-3`).
    pub phase: Option<String>,
    /// Offered load relative to the trace's own rate (1.0 = as recorded).
    pub load_level: f64,
    /// Shard index, for sharded replays.
    pub shard: Option<u32>,
    /// When the schedule meant to send it, UTC µs.
    pub intended_send_us: i64,
    /// When it was actually sent (request head written), UTC µs.
    pub actual_send_us: i64,
    /// How late the replayer's scheduler handed the request to its HTTP client:
    /// hand-over time − `intended_send_us`. The connect or pool wait and the head write
    /// that follow end at `actual_send_us`; they are request latency, not lateness.
    pub lateness_us: i64,
    /// Requests of this replayer in flight when this one was sent (itself included).
    pub in_flight_at_send: u32,
    /// Which API.
    pub endpoint: Endpoint,
    /// Prompt tokens sent.
    pub prompt_tokens: u32,
    /// How the prompt's token count was made exact.
    pub prompt_tokens_source: TokenSource,
    /// `max_tokens` sent.
    pub max_tokens: Option<u32>,
    /// HTTP status (None when none came back).
    pub status: Option<u16>,
    /// None when the request succeeded.
    pub error_kind: Option<ErrorKind>,
    /// Short error message.
    pub error_message: Option<String>,
    /// Time to first byte, from the actual send.
    pub ttfb_us: Option<u64>,
    /// Time to first token, from the actual send.
    pub ttft_us: Option<u64>,
    /// Time to first token, from the intended send (no coordinated omission).
    pub ttft_from_intended_us: Option<u64>,
    /// End-to-end time from the actual send.
    pub e2e_us: Option<u64>,
    /// End-to-end time from the intended send.
    pub e2e_from_intended_us: Option<u64>,
    /// Time per output token after the first (see `metrics`).
    pub tpot_us: Option<f64>,
    /// Inter-token gap summary.
    pub itl: Option<crate::GapSummary>,
    /// Output tokens received.
    pub output_tokens: Option<u32>,
    /// Where `output_tokens` came from.
    pub output_tokens_source: TokenSource,
    /// Content chunks received.
    pub chunk_count: Option<u32>,
    /// `finish_reason` of the (first) choice.
    pub finish_reason: Option<String>,
}

/// Where a sample came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SampleSource {
    /// A scraped Prometheus endpoint of the server (or an exporter beside it).
    Server,
    /// The server process on this host, read with sysinfo.
    Process,
    /// The load client itself (its own lateness, in-flight count, rates).
    Client,
}

impl SampleSource {
    /// The string stored on disk.
    pub fn as_str(self) -> &'static str {
        match self {
            SampleSource::Server => "server",
            SampleSource::Process => "process",
            SampleSource::Client => "client",
        }
    }

    /// Parses the on-disk string.
    pub fn parse(stored: &str) -> Option<SampleSource> {
        Some(match stored {
            "server" => SampleSource::Server,
            "process" => SampleSource::Process,
            "client" => SampleSource::Client,
            _ => return None,
        })
    }
}

/// One time-series sample taken during a replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    /// When it was taken, UTC µs.
    pub time_us: i64,
    /// Where from.
    pub source: SampleSource,
    /// Canonical name (`queue_depth`, `running`, `kv_cache_usage`, `preemptions_total`,
    /// `gpu_memory_used_bytes`, `rss_bytes`, `cpu_percent`, ...), or the raw metric name
    /// when it has no canonical one.
    pub name: String,
    /// Labels as `k=v` pairs joined with `,`, sorted by key (empty when none).
    pub labels: String,
    /// The value.
    pub value: f64,
}
