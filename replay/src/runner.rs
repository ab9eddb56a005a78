//! The replay engine: discovery and prompt calibration, an open-loop dispatcher on absolute
//! deadlines (or a closed loop of users), one task per request measured through the shared
//! stream observer, writer threads for results and samples, samplers, progress and drain.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use retrace_traces::metrics::Latencies;
use retrace_traces::schema::FileMeta;
use retrace_traces::tokenizer::{chat_text, Tokenizer};
use retrace_traces::write::{RowWriter, WriterOptions};
use retrace_traces::{
    Endpoint, ErrorKind, Observation, RequestRow, ResultRow, SampleRow, SampleSource,
    StreamObserver, TokenSource,
};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::client::{self, HttpClient};
use crate::prompt::{LinearModel, PromptFactory};
use crate::schedule::{schedule, Planned, ScheduleConfig, TraceRequest};
use crate::ReplayError;

/// Where the trace comes from.
#[derive(Debug, Clone)]
pub enum TraceInput {
    /// Files, directories or globs of request Parquet (csv/jsonl public traces are
    /// imported on the fly).
    Files(Vec<PathBuf>),
    /// Rows given directly (in-process use); sorted by arrival here.
    Rows(Vec<RequestRow>),
}

/// Which server the target is, for the options that force output length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    /// vLLM: `ignore_eos`, `min_tokens`, `/tokenize`.
    Vllm,
    /// SGLang: `ignore_eos`, `min_tokens`.
    Sglang,
    /// TGI's OpenAI API: `max_tokens` only.
    Tgi,
    /// llama.cpp server: `ignore_eos`, `/tokenize {content}`.
    Llamacpp,
    /// Any other OpenAI-compatible server: `max_tokens` only.
    Openai,
    /// retrace's simulator: as vLLM.
    Sim,
}

impl ServerKind {
    fn name(self) -> &'static str {
        match self {
            ServerKind::Vllm => "vllm",
            ServerKind::Sglang => "sglang",
            ServerKind::Tgi => "tgi",
            ServerKind::Llamacpp => "llamacpp",
            ServerKind::Openai => "openai",
            ServerKind::Sim => "sim",
        }
    }
}

/// Which server process on this host to sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessSelector {
    /// By process id.
    Pid(u32),
    /// By (exact) process name; the first match.
    Name(String),
}

/// Everything a replay needs, validated.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// The trace.
    pub trace: TraceInput,
    /// Base URL of the target (`http://host:port`, a trailing `/v1` is accepted).
    pub target: String,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Load shape.
    pub schedule: ScheduleConfig,
    /// Closed loop of this many users instead of the open-loop schedule.
    pub users: Option<u32>,
    /// Pause of a closed-loop user between a response and its next request.
    pub think_time: Duration,
    /// Force every request to this API.
    pub endpoint: Option<Endpoint>,
    /// Model name to send (else the target's first model).
    pub model: Option<String>,
    /// Bearer token.
    pub api_key: Option<String>,
    /// Extra request headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Server kind (else detected).
    pub server_kind: Option<ServerKind>,
    /// Prometheus endpoints to sample every `sample_interval` (empty: none).
    pub metrics_urls: Vec<String>,
    /// Server process to sample.
    pub process: Option<ProcessSelector>,
    /// Lateness p99 above which the run is client-limited.
    pub max_lateness: Duration,
    /// How long to wait for in-flight requests when stopping early.
    pub drain_timeout: Duration,
    /// Limit of one request, send to end.
    pub request_timeout: Duration,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// PEM files of extra trusted root certificates for an `https` target.
    pub ca_certs: Vec<PathBuf>,
    /// Stream every request (TTFT needs a stream) instead of following the trace's flag.
    pub always_stream: bool,
    /// Calibrate prompts with the server's `/tokenize` when it has one.
    pub use_tokenize: bool,
    /// The model's tokenizer (`--tokenizer tokenizer.json`): sizes prompts exactly when the
    /// server's `/tokenize` is not used (off, absent or failing), instead of the estimate.
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// Show the live progress display (only on a terminal).
    pub progress: bool,
    /// The target's clock runs this much faster than real time.
    pub clock_speedup: f64,
    /// Start at this UTC µs instead of now (coordinated shards).
    pub start_at_us: Option<i64>,
    /// Scenario label.
    pub scenario: String,
    /// How early before a deadline to stop sleeping and spin (0: sleep only).
    pub spin_window: Duration,
    /// Sampling period of the samplers.
    pub sample_interval: Duration,
}

impl ReplayConfig {
    /// A configuration with defaults for everything but the trace, target and output.
    pub fn new(
        trace: TraceInput,
        target: impl Into<String>,
        out_dir: impl Into<PathBuf>,
    ) -> ReplayConfig {
        let target: String = target.into();
        ReplayConfig {
            trace,
            metrics_urls: vec![format!("{}/metrics", base_of(&target))],
            target,
            out_dir: out_dir.into(),
            schedule: ScheduleConfig::default(),
            users: None,
            think_time: Duration::ZERO,
            endpoint: None,
            model: None,
            api_key: None,
            headers: Vec::new(),
            server_kind: None,
            process: None,
            max_lateness: Duration::from_millis(10),
            drain_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(5),
            ca_certs: Vec::new(),
            always_stream: true,
            use_tokenize: true,
            tokenizer: None,
            progress: false,
            clock_speedup: 1.0,
            start_at_us: None,
            scenario: "replay".into(),
            // The OS timer usually wakes well within this (Linux: tens of µs late).
            spin_window: Duration::from_micros(500),
            sample_interval: Duration::from_secs(1),
        }
    }
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySummary {
    /// Requests sent.
    pub sent: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (any kind, cancelled included).
    pub errors: u64,
    /// Failures by `ErrorKind` name.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// 99th percentile of send lateness, µs (target time).
    pub lateness_p99_us: u64,
    /// Largest send lateness, µs.
    pub lateness_max_us: u64,
    /// Whether the client could not keep the schedule (lateness p99 over the bound).
    pub client_limited: bool,
    /// Result files written.
    pub results_files: Vec<PathBuf>,
    /// Sample files written.
    pub samples_files: Vec<PathBuf>,
    /// Wall time of the run, in target time.
    pub duration: Duration,
    /// Requests sent per second of (target) time, from the actual send times.
    pub achieved_rps: f64,
    /// TTFT p50 / p99 of successful requests, µs.
    pub ttft_p50_us: Option<u64>,
    /// TTFT p99, µs.
    pub ttft_p99_us: Option<u64>,
    /// E2E p99, µs.
    pub e2e_p99_us: Option<u64>,
    /// The server kind used.
    pub server_kind: ServerKind,
    /// The model sent.
    pub model: String,
    /// How prompt lengths were made exact.
    pub prompt_tokens_source: TokenSource,
    /// Whether the run was stopped early (shutdown or duration).
    pub interrupted: bool,
    /// Responses whose `usage.prompt_tokens` differed from the prompt length meant.
    pub prompt_token_mismatches: u64,
    /// Trace rows not replayed: other endpoints (`/tokenize`, `/v1/models`, ...) and
    /// generation requests without a prompt or output length.
    pub rows_skipped: u64,
}

impl ReplaySummary {
    /// A short table for the terminal.
    pub fn table(&self) -> String {
        let ms = |v: Option<u64>| {
            v.map_or("-".to_string(), |us| {
                format!("{:.1} ms", us as f64 / 1000.0)
            })
        };
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("{k:<22} {v}\n"));
        row(
            "target",
            format!("{} ({})", self.model, self.server_kind.name()),
        );
        row("duration", format!("{:.1} s", self.duration.as_secs_f64()));
        row(
            "sent / ok / errors",
            format!("{} / {} / {}", self.sent, self.ok, self.errors),
        );
        for (kind, n) in &self.errors_by_kind {
            row(&format!("  errors: {kind}"), n.to_string());
        }
        if self.rows_skipped > 0 {
            row(
                "trace rows skipped",
                format!("{} (not generation requests)", self.rows_skipped),
            );
        }
        row("achieved rate", format!("{:.2} req/s", self.achieved_rps));
        row(
            "TTFT p50 / p99",
            format!("{} / {}", ms(self.ttft_p50_us), ms(self.ttft_p99_us)),
        );
        row("E2E p99", ms(self.e2e_p99_us));
        row(
            "send lateness p99",
            format!(
                "{}{}",
                ms(Some(self.lateness_p99_us)),
                if self.client_limited {
                    "  CLIENT-LIMITED: results understate the target"
                } else {
                    ""
                }
            ),
        );
        row(
            "prompt tokens",
            self.prompt_tokens_source.as_str().to_string(),
        );
        for f in self.results_files.iter().chain(&self.samples_files) {
            row("wrote", f.display().to_string());
        }
        out
    }
}

fn base_of(target: &str) -> String {
    let t = target.trim().trim_end_matches('/');
    t.strip_suffix("/v1").unwrap_or(t).to_string()
}

/// Loads and converts the trace rows, in arrival order.
fn load_rows(input: &TraceInput) -> Result<(LoadedRows, Option<u32>), ReplayError> {
    let (rows, block_tokens) = match input {
        TraceInput::Rows(rows) => {
            let mut rows = rows.clone();
            rows.sort_by_key(|r| r.arrival_us);
            (rows, None)
        }
        TraceInput::Files(paths) => {
            // Raw public traces are imported on the fly; the rest is request Parquet.
            let is_raw = |p: &PathBuf| {
                let name = p.to_string_lossy().to_ascii_lowercase();
                p.is_file() && (name.ends_with(".csv") || name.ends_with(".jsonl"))
            };
            let (raw, parquet): (Vec<PathBuf>, Vec<PathBuf>) =
                paths.iter().cloned().partition(is_raw);
            let mut rows = Vec::new();
            let mut block_tokens = None;
            for path in &raw {
                let opts = retrace_traces::import::ImportOptions {
                    format: None,
                    skip_bad: false,
                    base_time_us: None,
                };
                let (imported, _) = retrace_traces::import::import_file(path, &opts)?;
                rows.extend(imported);
            }
            if !parquet.is_empty() {
                let files = retrace_traces::read::expand_inputs(&parquet)?;
                if let Some(f) = files.first() {
                    block_tokens = retrace_traces::read::file_meta(f)?.1.prefix_block_tokens;
                }
                let read = retrace_traces::read::read_all::<RequestRow>(&parquet)?;
                if rows.is_empty() {
                    rows = read;
                } else {
                    rows.extend(read);
                }
            }
            // Stable: the merged Parquet order is kept among equal arrivals.
            rows.sort_by_key(|r| r.arrival_us);
            (rows, block_tokens)
        }
    };
    Ok((replayable(rows)?, block_tokens))
}

/// Keeps the rows that can be replayed. A recording holds every path the proxy saw:
/// `/tokenize`, `/v1/models`, health checks are not load to replay, and a generation
/// request whose body was too large to parse has no prompt length. Both are skipped and
/// counted; a trace with nothing left to replay is an error.
fn replayable(rows: Vec<RequestRow>) -> Result<LoadedRows, ReplayError> {
    let total = rows.len();
    let mut skipped_other_endpoint = 0u64;
    let mut skipped_no_length = 0u64;
    let mut kept = Vec::with_capacity(total);
    for (index, row) in rows.into_iter().enumerate() {
        if matches!(row.endpoint, Endpoint::Other(_)) {
            skipped_other_endpoint += 1;
            continue;
        }
        if row.prompt_tokens.is_none() || (row.output_tokens.is_none() && row.max_tokens.is_none())
        {
            skipped_no_length += 1;
            continue;
        }
        kept.push(TraceRequest::from_row(index, row)?);
    }
    if kept.is_empty() && total > 0 {
        return Err(ReplayError::BadArgs(format!(
            "the trace has {total} rows but none to replay: {skipped_other_endpoint} are not \
             /v1/completions or /v1/chat/completions requests and {skipped_no_length} have no \
             prompt or output length"
        )));
    }
    let skipped = skipped_other_endpoint + skipped_no_length;
    if skipped > 0 {
        tracing::info!(
            skipped_other_endpoint,
            skipped_no_length,
            "skipped trace rows that are not replayable generation requests"
        );
    }
    Ok(LoadedRows {
        rows: kept,
        skipped,
    })
}

/// Replayable trace rows, in arrival order, and how many rows were skipped.
struct LoadedRows {
    rows: Vec<TraceRequest>,
    skipped: u64,
}

/// What discovery learned about the target.
#[derive(Debug, Clone)]
struct TargetInfo {
    base: String,
    model: String,
    kind: ServerKind,
}

struct Requester {
    client: HttpClient,
    headers: Vec<(HeaderName, HeaderValue)>,
    api_key: Option<String>,
}

impl Requester {
    fn request(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        request_id: Option<&str>,
    ) -> Result<Request<Full<Bytes>>, String> {
        let mut builder = Request::builder().method(method).uri(url);
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some(key) = &self.api_key {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        if let Some(id) = request_id {
            builder = builder.header("x-request-id", id);
        }
        for (k, v) in &self.headers {
            builder = builder.header(k, v);
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        builder
            .body(Full::new(bytes))
            .map_err(|e| format!("building the request to {url}: {e}"))
    }

    async fn json(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(http::StatusCode, http::HeaderMap, Value), String> {
        let req = self.request(method, url, body, None)?;
        let (status, headers, bytes) =
            client::exchange(&self.client, req, Duration::from_secs(10), 16 << 20).await?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, headers, value))
    }
}

async fn discover(req: &Requester, config: &ReplayConfig) -> Result<TargetInfo, ReplayError> {
    let base = base_of(&config.target);
    let uri: http::Uri = base
        .parse()
        .map_err(|e| ReplayError::BadArgs(format!("--target `{}`: {e}", config.target)))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(ReplayError::BadArgs(format!(
            "--target `{}`: expected http(s)://host:port",
            config.target
        )));
    }
    let models_url = format!("{base}/v1/models");
    let (status, headers, body) =
        req.json(Method::GET, &models_url, None)
            .await
            .map_err(|message| ReplayError::TargetUnreachable {
                url: models_url.clone(),
                message,
            })?;
    let first = body.pointer("/data/0");
    let listed_model = first
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let owned_by = first
        .and_then(|m| m.get("owned_by"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_ascii_lowercase();
    let model = match (&config.model, listed_model) {
        (Some(m), _) => m.clone(),
        (None, Some(m)) => m,
        (None, None) => {
            return Err(ReplayError::Target {
                url: models_url,
                message: format!("no model listed (HTTP {status}); pass --model"),
            })
        }
    };
    let server_header = headers
        .get(http::header::SERVER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut kind = config.server_kind.or(match owned_by.as_str() {
        "vllm" => Some(ServerKind::Vllm),
        "sglang" => Some(ServerKind::Sglang),
        "retrace-sim" => Some(ServerKind::Sim),
        "llamacpp" => Some(ServerKind::Llamacpp),
        "tgi" | "text-generation-inference" => Some(ServerKind::Tgi),
        _ if server_header.contains("llama.cpp") => Some(ServerKind::Llamacpp),
        _ => None,
    });
    if kind.is_none() {
        if let Ok(request) = req.request(Method::GET, &format!("{base}/metrics"), None, None) {
            if let Ok((_, _, body)) =
                client::exchange(&req.client, request, Duration::from_secs(5), 16 << 20).await
            {
                let parsed = crate::prom::parse(&String::from_utf8_lossy(&body));
                kind = crate::prom::detect_flavor(&parsed).map(|f| match f {
                    crate::prom::MetricsFlavor::Vllm => ServerKind::Vllm,
                    crate::prom::MetricsFlavor::Sglang => ServerKind::Sglang,
                    crate::prom::MetricsFlavor::Tgi => ServerKind::Tgi,
                    crate::prom::MetricsFlavor::LlamaCpp => ServerKind::Llamacpp,
                });
            }
        }
    }
    Ok(TargetInfo {
        base,
        model,
        kind: kind.unwrap_or(ServerKind::Openai),
    })
}

/// Why a count could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CountFailure {
    /// The server answered, but not with a count (no `/tokenize`, an error status, another
    /// body): asking again gives the same.
    Refused,
    /// No answer (connection failure, timeout): worth one more try.
    Unreachable,
}

/// Counts tokens of a prompt with the server's `/tokenize`, shaped like the request, so the
/// count is what the server's `usage.prompt_tokens` will say.
async fn count_tokens(
    req: &Requester,
    target: &TargetInfo,
    chat: bool,
    text: &str,
) -> Result<u32, CountFailure> {
    let url = format!("{}/tokenize", target.base);
    let messages = json!([{"role": "user", "content": text}]);
    let body = match (target.kind, chat) {
        // llama.cpp: usage counts BOS (`add_special`), and chat goes through its template.
        (ServerKind::Llamacpp, false) => json!({ "content": text, "add_special": true }),
        (ServerKind::Llamacpp, true) => {
            let template_url = format!("{}/apply-template", target.base);
            let (status, _, value) = req
                .json(
                    Method::POST,
                    &template_url,
                    Some(&json!({ "messages": messages })),
                )
                .await
                .map_err(|_| CountFailure::Unreachable)?;
            let prompt = value
                .get("prompt")
                .and_then(Value::as_str)
                .filter(|_| status.is_success())
                .ok_or(CountFailure::Refused)?;
            json!({ "content": prompt, "add_special": true })
        }
        (_, true) => json!({ "model": target.model, "messages": messages }),
        (_, false) => json!({ "model": target.model, "prompt": text }),
    };
    let (status, _, value) = req
        .json(Method::POST, &url, Some(&body))
        .await
        .map_err(|_| CountFailure::Unreachable)?;
    if !status.is_success() {
        return Err(CountFailure::Refused);
    }
    value
        .get("count")
        .and_then(Value::as_u64)
        .or_else(|| {
            value
                .get("tokens")
                .and_then(Value::as_array)
                .map(|t| t.len() as u64)
        })
        .map(|c| c as u32)
        .ok_or(CountFailure::Refused)
}

/// What prompts are measured with during calibration.
#[derive(Clone, Copy)]
enum Counter<'a> {
    /// The server's `/tokenize`: counts what its `usage.prompt_tokens` will say (a chat
    /// template's tokens included).
    Server(&'a Requester, &'a TargetInfo),
    /// The model's `tokenizer.json`, on the prompt as the proxy records it with
    /// `--tokenizer` (a chat message as `user\n<text>\n`): no chat template is known here.
    Local(&'a Tokenizer),
}

impl Counter<'_> {
    async fn count(self, chat: bool, text: &str) -> Result<u32, CountFailure> {
        match self {
            // Once more when no answer came: on a loaded machine one slow answer must not
            // turn the whole calibration into the estimate (seen in CI against llama.cpp).
            Counter::Server(req, target) => match count_tokens(req, target, chat, text).await {
                Err(CountFailure::Unreachable) => count_tokens(req, target, chat, text).await,
                answered => answered,
            },
            Counter::Local(tokenizer) if chat => Ok(tokenizer.count(&chat_text([("user", text)]))),
            Counter::Local(tokenizer) => Ok(tokenizer.count(text)),
        }
    }
}

/// Keeps the words that cost exactly one token each, repeated, for the target's tokenizer
/// (two bounded counts per word, `/tokenize` calls for the server), so lengths stay exact
/// whatever words a prompt draws. None when the counter cannot tokenize.
async fn one_token_words(counter: Counter<'_>) -> Option<Vec<&'static str>> {
    let probe = |w: &'static str, n: usize| {
        let text = vec![w; n].join(" ");
        async move { counter.count(false, &text).await }
    };
    let mut kept = Vec::new();
    let (mut probed, mut failed) = (0usize, 0usize);
    for chunk in crate::prompt::all_words().chunks(8) {
        let checks = chunk.iter().map(|&w| async move {
            let (four, eight) = (probe(w, 4).await?, probe(w, 8).await?);
            Ok::<_, CountFailure>((w, eight.checked_sub(four) == Some(4)))
        });
        for result in futures_util::future::join_all(checks).await {
            probed += 1;
            match result {
                Ok((w, true)) => kept.push(w),
                Ok((_, false)) => {}
                // A word the counter could not answer for is left out.
                Err(_) => failed += 1,
            }
        }
        // Nothing answered yet (no /tokenize, a dead one): known at once, not after
        // every word has waited out its timeout.
        if failed == probed {
            return None;
        }
    }
    // A counter that failed most probes is not trusted with the lengths.
    (failed * 2 <= probed).then_some(kept)
}

/// Most distinct lengths verified per request shape (the rest use the fitted model).
const MAX_VERIFIED_LENGTHS: usize = 512;

/// The prompt factory: calibrated with the server's `/tokenize` when it is used and
/// answers, else with `--tokenizer` when given, else the 4-bytes-per-token estimate.
async fn calibrate(
    req: &Requester,
    target: &TargetInfo,
    rows: &[TraceRequest],
    config: &ReplayConfig,
    block_tokens: u32,
) -> PromptFactory {
    if config.use_tokenize && !matches!(target.kind, ServerKind::Tgi | ServerKind::Openai) {
        let factory =
            calibrate_with(Counter::Server(req, target), rows, config, block_tokens).await;
        if factory.source == TokenSource::Tokenizer {
            return factory;
        }
    }
    match &config.tokenizer {
        Some(tokenizer) => {
            calibrate_with(Counter::Local(tokenizer), rows, config, block_tokens).await
        }
        None => PromptFactory::estimated(block_tokens),
    }
}

/// Fits and verifies prompt lengths with `counter`; the estimate when it cannot count.
async fn calibrate_with(
    counter: Counter<'_>,
    rows: &[TraceRequest],
    config: &ReplayConfig,
    block_tokens: u32,
) -> PromptFactory {
    let mut factory = PromptFactory::estimated(block_tokens);
    let mut shapes: HashMap<bool, HashSet<u32>> = HashMap::new();
    for row in rows {
        let chat = endpoint_for(config, row) == Endpoint::Chat;
        shapes.entry(chat).or_default().insert(
            config
                .schedule
                .long_context_tokens
                .unwrap_or(row.prompt_tokens),
        );
    }
    let Some(words) = one_token_words(counter).await else {
        return factory;
    };
    // Too few single-token words would make texts repetitive; the fitted model and
    // per-length verification then carry the exactness instead.
    if words.len() >= 16 {
        factory.words = words;
    }
    let vocabulary = factory.words.clone();
    let mut verified_any = false;
    for (chat, lengths) in shapes {
        // Fit tokens = a + b·words on two sizes.
        let (n1, n2) = (32u64, 512u64);
        let t1 = counter
            .count(
                chat,
                &crate::prompt::text_of(&vocabulary, &[], "calibration", n1, 1),
            )
            .await;
        let t2 = counter
            .count(
                chat,
                &crate::prompt::text_of(&vocabulary, &[], "calibration", n2, 1),
            )
            .await;
        let (Ok(t1), Ok(t2)) = (t1, t2) else {
            continue;
        };
        let per_word = (f64::from(t2) - f64::from(t1)) / (n2 - n1) as f64;
        if per_word <= 0.0 {
            continue;
        }
        let model = LinearModel {
            intercept: f64::from(t1) - per_word * n1 as f64,
            per_word,
        };
        if chat {
            factory.chat = model;
        } else {
            factory.completion = model;
        }
        verified_any = true;
        // Verify-and-adjust each distinct length (bounded), a few at a time.
        let mut lengths: Vec<u32> = lengths.into_iter().collect();
        lengths.sort_unstable();
        lengths.truncate(MAX_VERIFIED_LENGTHS);
        for chunk in lengths.chunks(8) {
            let futures = chunk.iter().map(|&len| {
                let factory = &factory;
                async move {
                    let mut delta = 0i64;
                    for _ in 0..3 {
                        let words = (model.words_for(len) as i64 + delta).max(1) as u64;
                        let text = crate::prompt::text_of(
                            &factory.words,
                            &[],
                            &format!("verify-{len}"),
                            words,
                            1,
                        );
                        let Ok(count) = counter.count(chat, &text).await else {
                            break;
                        };
                        let diff = i64::from(len) - i64::from(count);
                        if diff == 0 {
                            break;
                        }
                        let step = (diff as f64 / factory_per_word(factory, chat)).round() as i64;
                        delta += if step == 0 { diff.signum() } else { step };
                    }
                    (len, delta)
                }
            });
            for (len, delta) in futures_util::future::join_all(futures).await {
                if delta != 0 {
                    factory.adjust.insert((chat, len), delta);
                }
            }
        }
    }
    if verified_any {
        factory.source = TokenSource::Tokenizer;
    }
    factory
}

fn factory_per_word(f: &PromptFactory, chat: bool) -> f64 {
    if chat {
        f.chat.per_word
    } else {
        f.completion.per_word
    }
}

fn endpoint_for(config: &ReplayConfig, row: &TraceRequest) -> Endpoint {
    match (&config.endpoint, &row.endpoint) {
        (Some(forced), _) => forced.clone(),
        (None, Endpoint::Completions) => Endpoint::Completions,
        // Other paths are replayed as chat, the common case of today's clients.
        (None, _) => Endpoint::Chat,
    }
}

/// Counters and histograms shared by every task.
struct Live {
    sent: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    prompt_mismatches: AtomicU64,
    idle: Notify,
    errors_by_kind: Mutex<BTreeMap<String, u64>>,
    ttft_us: Mutex<Histogram<u64>>,
    e2e_us: Mutex<Histogram<u64>>,
    lateness_us: Mutex<Histogram<u64>>,
    first_send_us: Mutex<Option<i64>>,
    last_send_us: Mutex<Option<i64>>,
    server_headline: Mutex<(Option<f64>, Option<f64>)>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 day, 3 significant digits: constant, valid bounds.
    Histogram::new_with_bounds(1, 86_400_000_000, 3).expect("valid histogram bounds")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Shared {
    requester: Requester,
    target: TargetInfo,
    prompts: PromptFactory,
    rows: Arc<[TraceRequest]>,
    config: ReplayConfig,
    live: Live,
    /// Taken at the end so the writer thread finishes even if a task is stuck.
    results: Mutex<Option<std::sync::mpsc::Sender<ResultRow>>>,
    start: Instant,
    start_us: i64,
    cancel: watch::Receiver<bool>,
}

impl Shared {
    /// Real elapsed since start → target-time µs.
    fn target_offset_us(&self, at: Instant) -> i64 {
        (at.saturating_duration_since(self.start).as_secs_f64() * 1e6 * self.config.clock_speedup)
            .round() as i64
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Sleeps until `deadline`: the runtime timer (millisecond-grained) until `spin` before it,
/// then yields/spins the last stretch for sub-millisecond accuracy.
pub async fn sleep_until_precise(deadline: Instant, spin: Duration) {
    if spin.is_zero() {
        tokio::time::sleep_until(deadline).await;
        return;
    }
    if let Some(early) = deadline.checked_sub(spin) {
        if Instant::now() < early {
            tokio::time::sleep_until(early).await;
        }
    }
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        if deadline - now > Duration::from_micros(50) {
            tokio::task::yield_now().await;
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The open-loop dispatcher thread: for each planned request, sleep with the OS timer until
/// `spin_window` before its deadline, finish the last stretch by yielding/spinning, then
/// spawn the request on the runtime. Checks `stopped` at least every 50 ms.
fn dispatch_thread(
    plan: crate::schedule::Schedule,
    shared: Arc<Shared>,
    stopped: Arc<AtomicBool>,
    handle: tokio::runtime::Handle,
    start: std::time::Instant,
    k: f64,
) {
    let spin = shared.config.spin_window;
    for p in plan {
        let deadline = start + Duration::from_secs_f64(p.offset_us as f64 / 1e6 / k);
        let prepared = prepare(&shared, &p);
        loop {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            let left = deadline - now;
            if left > spin {
                std::thread::sleep((left - spin).min(Duration::from_millis(50)));
            } else if left > Duration::from_micros(20) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let in_flight = begin(&shared.live);
        handle.spawn(send_prepared(
            shared.clone(),
            p,
            prepared,
            Instant::from_std(deadline),
            in_flight,
        ));
    }
}

/// The open loop on the runtime's timer: each request at `start + offset / k`, an absolute
/// deadline (a slow `send` never shifts later requests), never waiting for responses.
async fn open_loop_on_runtime_timer(
    plan: impl Iterator<Item = Planned>,
    start: Instant,
    k: f64,
    stopped: &AtomicBool,
    mut send: impl FnMut(Planned, Instant),
) {
    for p in plan {
        let deadline = start + Duration::from_secs_f64(p.offset_us as f64 / 1e6 / k);
        tokio::time::sleep_until(deadline).await;
        if stopped.load(Ordering::SeqCst) {
            break;
        }
        send(p, deadline);
    }
}

/// What one request came to.
struct Measured {
    status: Option<u16>,
    obs: Option<Observation>,
    error: Option<(ErrorKind, String)>,
    /// When the request's head began to be written to the connection (absent when the
    /// request never got that far, or the connection kept no stamps).
    written: Option<Instant>,
}

fn body_for(shared: &Shared, p: &Planned, row: &TraceRequest, endpoint: &Endpoint) -> Value {
    let chat = *endpoint == Endpoint::Chat;
    let text = shared
        .prompts
        .text(chat, p.prompt_tokens, &row.prefix_hashes, &p.request_id);
    let stream = shared.config.always_stream || row.stream;
    let mut body = if chat {
        json!({ "model": shared.target.model, "messages": [{"role": "user", "content": text}] })
    } else {
        json!({ "model": shared.target.model, "prompt": text })
    };
    body["max_tokens"] = json!(p.max_tokens);
    body["stream"] = json!(stream);
    if stream {
        body["stream_options"] = json!({ "include_usage": true });
    }
    match shared.target.kind {
        ServerKind::Vllm | ServerKind::Sim | ServerKind::Sglang => {
            body["ignore_eos"] = json!(true);
            body["min_tokens"] = json!(p.max_tokens);
        }
        ServerKind::Llamacpp => body["ignore_eos"] = json!(true),
        ServerKind::Tgi | ServerKind::Openai => {}
    }
    body
}

/// Counts a request as sent and in flight; done by the dispatcher before it spawns the
/// request's task, so a drain never sees zero in flight while a spawned task has yet to run.
fn begin(live: &Live) -> u64 {
    live.sent.fetch_add(1, Ordering::SeqCst);
    live.in_flight.fetch_add(1, Ordering::SeqCst) + 1
}

/// A request built ahead of its deadline: prompt text and JSON encoding can take
/// milliseconds for long contexts, which must not make the send late.
struct Prepared {
    endpoint: Endpoint,
    request: Result<Request<Full<Bytes>>, String>,
}

fn prepare(shared: &Shared, p: &Planned) -> Prepared {
    let row = &shared.rows[p.row];
    let endpoint = endpoint_for(&shared.config, row);
    let body = body_for(shared, p, row, &endpoint);
    let path = if endpoint == Endpoint::Chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let url = format!("{}{}", shared.target.base, path);
    let request = shared
        .requester
        .request(Method::POST, &url, Some(&body), Some(&p.request_id));
    Prepared { endpoint, request }
}

async fn send_one(shared: Arc<Shared>, p: Planned, intended: Instant, in_flight: u64) {
    let prepared = prepare(&shared, &p);
    send_prepared(shared, p, prepared, intended, in_flight).await;
}

async fn send_prepared(
    shared: Arc<Shared>,
    p: Planned,
    prepared: Prepared,
    intended: Instant,
    in_flight: u64,
) {
    let live = &shared.live;
    let Prepared { endpoint, request } = prepared;
    let k = shared.config.clock_speedup;
    // Handed to the client now; the send is when its head is written (the connection's
    // stamp), after the pool checkout or a connect.
    let dispatched = Instant::now();
    let mut cancel = shared.cancel.clone();
    let measured = match request {
        Err(message) => Measured {
            status: None,
            obs: None,
            error: Some((ErrorKind::Other, message)),
            written: None,
        },
        Ok(request) => {
            let work = exchange(
                &shared.requester.client,
                request,
                endpoint.clone(),
                dispatched,
                k,
            );
            tokio::select! {
                m = tokio::time::timeout(shared.config.request_timeout, work) => m.unwrap_or_else(|_| Measured {
                    status: None,
                    obs: None,
                    error: Some((ErrorKind::Timeout, format!("no complete response within {:?}", shared.config.request_timeout))),
                    written: None,
                }),
                _ = cancel.wait_for(|c| *c) => Measured {
                    status: None,
                    obs: None,
                    error: Some((ErrorKind::Cancelled, "run stopped while in flight".into())),
                    written: None,
                },
            }
        }
    };
    let actual = measured.written.unwrap_or(dispatched);
    let intended_send_us = shared.start_us + shared.target_offset_us(intended);
    let dispatched_us = shared.start_us + shared.target_offset_us(dispatched);
    let actual_send_us = shared.start_us + shared.target_offset_us(actual);
    // Lateness is the scheduler's: how late the request was handed to the HTTP client.
    // The connect or pool wait and the head write that follow are the request's latency
    // (counted in the "from intended" figures): a slow connect is often the server's
    // accept queue, which must not make the run look client-limited.
    let lateness_us = dispatched_us - intended_send_us;
    let late = lateness_us.max(0) as u64;
    let late_on_wire = (actual_send_us - intended_send_us).max(0) as u64;
    let lat = measured
        .obs
        .as_ref()
        .map(Latencies::from_observation)
        .unwrap_or_default();
    let obs = measured.obs.unwrap_or_default();
    if obs
        .usage_prompt_tokens
        .is_some_and(|u| u != p.prompt_tokens)
    {
        live.prompt_mismatches.fetch_add(1, Ordering::Relaxed);
    }
    let result = ResultRow {
        request_id: p.request_id,
        session_id: p.session_id,
        scenario: shared.config.scenario.clone(),
        phase: p.phase.map(|s| s.to_string()),
        load_level: p.load_level,
        shard: shared.config.schedule.shard.map(|s| s.index),
        intended_send_us,
        actual_send_us,
        lateness_us,
        in_flight_at_send: u32::try_from(in_flight).unwrap_or(u32::MAX),
        endpoint,
        prompt_tokens: p.prompt_tokens,
        prompt_tokens_source: shared.prompts.source,
        max_tokens: Some(p.max_tokens),
        status: measured.status,
        error_kind: measured.error.as_ref().map(|e| e.0),
        error_message: measured.error.as_ref().map(|e| e.1.clone()),
        ttfb_us: lat.ttfb_us,
        ttft_us: lat.ttft_us,
        ttft_from_intended_us: lat.ttft_us.map(|t| t + late_on_wire),
        e2e_us: lat.e2e_us,
        e2e_from_intended_us: lat.e2e_us.map(|t| t + late_on_wire),
        tpot_us: lat.tpot_us,
        itl: lat.itl,
        output_tokens: obs.output_tokens,
        output_tokens_source: obs.output_tokens_source.unwrap_or(TokenSource::Unknown),
        chunk_count: Some(obs.chunk_count),
        finish_reason: obs.finish_reason,
    };
    let _ = lock(&live.lateness_us).record(late.max(1));
    {
        // The achieved rate is the rate the schedule was kept at (dispatches), not
        // blurred by each connection's setup time.
        let mut first = lock(&live.first_send_us);
        if first.is_none_or(|f| dispatched_us < f) {
            *first = Some(dispatched_us);
        }
        let mut last = lock(&live.last_send_us);
        if last.is_none_or(|l| dispatched_us > l) {
            *last = Some(dispatched_us);
        }
    }
    match &measured.error {
        None => {
            live.ok.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = result.ttft_us {
                let _ = lock(&live.ttft_us).record(t.max(1));
            }
            if let Some(t) = result.e2e_us {
                let _ = lock(&live.e2e_us).record(t.max(1));
            }
        }
        Some((kind, _)) => {
            live.errors.fetch_add(1, Ordering::Relaxed);
            *lock(&live.errors_by_kind)
                .entry(kind.as_str().to_string())
                .or_insert(0) += 1;
        }
    }
    // The writer thread outlives every request task; a send error means it failed, which
    // the run reports when it joins the thread.
    if let Some(tx) = lock(&shared.results).as_ref() {
        let _ = tx.send(result);
    }
    if live.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
        live.idle.notify_waiters();
    }
}

/// Sends `request` and observes its response. Times are the connection's socket stamps
/// ([`client::WireStamps`]): the send is when the head began to be written, and each body
/// frame is timed by the read that brought its first bytes, at the kernel's receive time of
/// those bytes (Linux), so the work this task does, the time it waits to be scheduled behind
/// other streams' tasks and the time the bytes wait in the socket are not counted.
async fn exchange(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    endpoint: Endpoint,
    dispatched: Instant,
    speedup: f64,
) -> Measured {
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => {
            let kind = if e.is_connect() {
                ErrorKind::Connect
            } else {
                ErrorKind::BrokenStream
            };
            return Measured {
                status: None,
                obs: None,
                error: Some((kind, client::describe(&e))),
                written: None,
            };
        }
    };
    let stamps = response.extensions().get::<client::WireStamps>().cloned();
    let written = stamps
        .as_ref()
        .and_then(client::WireStamps::request_written)
        .filter(|w| *w >= dispatched);
    let sent = written.unwrap_or(dispatched);
    let offset = move |at: Instant| {
        (at.saturating_duration_since(sent).as_secs_f64() * 1e6 * speedup).round() as u64
    };
    // The read that brought the response head; a frame whose bytes came with an earlier
    // read (the head's, or the previous frame's) is timed by that read.
    let mut last_read = stamps
        .as_ref()
        .and_then(client::WireStamps::take_read)
        .unwrap_or_else(Instant::now);
    let mut read_at = move || {
        let now = Instant::now();
        if let Some(at) = stamps.as_ref().and_then(client::WireStamps::take_read) {
            last_read = at.min(now);
        }
        last_read
    };
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let mut text = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                text.extend_from_slice(&data);
                if text.len() > 512 {
                    break;
                }
            }
        }
        let message = String::from_utf8_lossy(&text[..text.len().min(300)])
            .trim()
            .to_string();
        return Measured {
            status: Some(status.as_u16()),
            obs: None,
            error: Some((
                ErrorKind::HttpStatus,
                format!("HTTP {}: {message}", status.as_u16()),
            )),
            written,
        };
    }
    let mut observer = StreamObserver::new(endpoint);
    let mut broken = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    observer.feed(&data, offset(read_at()));
                }
            }
            Err(e) => {
                broken = Some(client::describe(&e));
                break;
            }
        }
    }
    let obs = observer.finish(offset(read_at()));
    let error = match (broken, obs.complete) {
        (Some(message), _) => Some((ErrorKind::BrokenStream, message)),
        (None, false) => Some((
            ErrorKind::BrokenStream,
            obs.malformed
                .clone()
                .unwrap_or_else(|| "the response ended before it was complete".into()),
        )),
        (None, true) => None,
    };
    Measured {
        status: Some(status.as_u16()),
        obs: Some(obs),
        error,
        written,
    }
}

type WriterHandle = std::thread::JoinHandle<Result<Vec<PathBuf>, retrace_traces::TracesError>>;

/// A writer thread fed by a channel: memory stays constant however long the run.
fn spawn_writer<R>(
    opts: WriterOptions,
) -> Result<(std::sync::mpsc::Sender<R>, WriterHandle), ReplayError>
where
    R: retrace_traces::schema::Row + Send + 'static,
{
    let mut writer = RowWriter::<R>::create(opts)?;
    let (tx, rx) = std::sync::mpsc::channel::<R>();
    let handle = std::thread::Builder::new()
        .name("retrace-writer".into())
        .spawn(move || {
            loop {
                match rx.recv_timeout(Duration::from_millis(500)) {
                    Ok(row) => writer.push(row)?,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                writer.tick()?;
            }
            writer.close()
        })
        .map_err(|e| ReplayError::Internal(format!("starting a writer thread: {e}")))?;
    Ok((tx, handle))
}

fn join_writer(handle: WriterHandle) -> Result<Vec<PathBuf>, ReplayError> {
    handle
        .join()
        .map_err(|_| ReplayError::Internal("a writer thread panicked".into()))?
        .map_err(ReplayError::from)
}

/// Runs a replay until the schedule is done or `shutdown` resolves.
pub async fn replay(
    config: ReplayConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<ReplaySummary, ReplayError> {
    if !(config.clock_speedup.is_finite() && config.clock_speedup > 0.0) {
        return Err(ReplayError::BadArgs("--clock-speedup must be > 0".into()));
    }
    if config.users == Some(0) {
        return Err(ReplayError::BadArgs("--users must be ≥ 1".into()));
    }
    let (loaded, block_tokens) = load_rows(&config.trace)?;
    let rows_skipped = loaded.skipped;
    let rows: Arc<[TraceRequest]> = loaded.rows.into();
    let mut schedule_config = config.schedule.clone();
    schedule_config.closed_loop = config.users.is_some();
    // Validate (and size) the schedule before touching the target.
    let planned = schedule(rows.clone(), &schedule_config)?;
    // A closed loop with --duration loops the trace without end (the clock stops it), so
    // only an open loop is sized.
    let (planned_count, planned_last_us) = if config.users.is_some() {
        (
            0,
            config.schedule.duration.map_or(0, |d| d.as_micros() as u64),
        )
    } else {
        planned.fold((0u64, 0u64), |(n, _), p| (n + 1, p.offset_us))
    };
    let http =
        client::build(config.connect_timeout, &config.ca_certs).map_err(ReplayError::BadArgs)?;
    let requester = Requester {
        client: http,
        headers: config.headers.clone(),
        api_key: config.api_key.clone(),
    };
    // Discovery and calibration can take a while (bounded /tokenize calls): a shutdown
    // during them ends the run before anything is sent.
    tokio::pin!(shutdown);
    let prepared = async {
        let target = discover(&requester, &config).await?;
        let block_tokens = block_tokens.unwrap_or(retrace_traces::DEFAULT_PREFIX_BLOCK_TOKENS);
        let prompts = calibrate(&requester, &target, &rows, &config, block_tokens).await;
        Ok::<_, ReplayError>((target, prompts))
    };
    let (target, prompts) = tokio::select! {
        prepared = prepared => prepared?,
        _ = &mut shutdown => return Err(ReplayError::Interrupted),
    };
    std::fs::create_dir_all(&config.out_dir).map_err(|source| ReplayError::Io {
        path: config.out_dir.clone(),
        source,
    })?;

    // Start time: now, or the agreed --start-at of a sharded run.
    let wall_now = now_us();
    // Without --start-at, time zero is a little ahead, so the setup below (writers,
    // samplers, the dispatcher thread) never makes the first requests late.
    const SETUP_LEAD_US: i64 = 50_000;
    let wait_us = config
        .start_at_us
        .map_or(SETUP_LEAD_US, |s| (s - wall_now).max(0));
    let start = Instant::now() + Duration::from_micros(wait_us as u64);
    let start_us = wall_now + wait_us;
    let meta = FileMeta {
        producer: format!("retrace-replay {}", env!("CARGO_PKG_VERSION")),
        prefix_block_tokens: None,
        start_us: Some(start_us),
        host: None,
        extra: vec![
            ("retrace.scenario".into(), config.scenario.clone()),
            ("retrace.target".into(), target.base.clone()),
            ("retrace.server_kind".into(), target.kind.name().into()),
            ("retrace.model".into(), target.model.clone()),
            ("retrace.seed".into(), config.schedule.seed.to_string()),
            (
                "retrace.clock_speedup".into(),
                config.clock_speedup.to_string(),
            ),
            (
                "retrace.prompt_tokens_source".into(),
                prompts.source.as_str().into(),
            ),
        ],
    };
    let (results_tx, results_thread) =
        spawn_writer::<ResultRow>(WriterOptions::new(&config.out_dir, "results", meta.clone()))?;
    let (samples_tx, samples_thread) =
        spawn_writer::<SampleRow>(WriterOptions::new(&config.out_dir, "samples", meta.clone()))?;
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        requester,
        target,
        prompts,
        rows: rows.clone(),
        config: config.clone(),
        live: Live {
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            prompt_mismatches: AtomicU64::new(0),
            idle: Notify::new(),
            errors_by_kind: Mutex::new(BTreeMap::new()),
            ttft_us: Mutex::new(histogram()),
            e2e_us: Mutex::new(histogram()),
            lateness_us: Mutex::new(histogram()),
            first_send_us: Mutex::new(None),
            last_send_us: Mutex::new(None),
            server_headline: Mutex::new((None, None)),
        },
        results: Mutex::new(Some(results_tx)),
        start,
        start_us,
        cancel: cancel_rx,
    });

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_loop(
        shared.clone(),
        samples_tx.clone(),
        stop_sampling.clone(),
        planned_count,
        planned_last_us,
    ));

    let stopped = Arc::new(AtomicBool::new(false));
    let k = config.clock_speedup;
    let dispatch = {
        let shared = shared.clone();
        let stopped = stopped.clone();
        let rows = rows.clone();
        let schedule_config = schedule_config.clone();
        async move {
            let plan = match schedule(rows, &schedule_config) {
                Ok(plan) => plan,
                Err(_) => return,
            };
            match shared.config.users {
                None if shared.config.spin_window.is_zero() => {
                    // Runtime timer only: millisecond-grained, but testable with
                    // `tokio::time::pause()`.
                    open_loop_on_runtime_timer(plan, start, k, &stopped, |p, deadline| {
                        let in_flight = begin(&shared.live);
                        tokio::spawn(send_one(shared.clone(), p, deadline, in_flight));
                    })
                    .await;
                }
                None => {
                    // A dedicated thread keeps the deadlines (OS sleep, then a short spin) and
                    // hands each request to the runtime, so the runtime's workers never spin.
                    let handle = tokio::runtime::Handle::current();
                    let thread = std::thread::Builder::new()
                        .name("retrace-dispatch".into())
                        .spawn(move || {
                            dispatch_thread(plan, shared, stopped, handle, start.into_std(), k)
                        });
                    if let Ok(thread) = thread {
                        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                    }
                }
                Some(users) => {
                    sleep_until_precise(start, shared.config.spin_window).await;
                    let plan = Arc::new(Mutex::new(plan));
                    let end = shared
                        .config
                        .schedule
                        .duration
                        .map(|d| start + Duration::from_secs_f64(d.as_secs_f64() / k));
                    let mut workers = Vec::new();
                    for _ in 0..users {
                        let shared = shared.clone();
                        let plan = plan.clone();
                        let stopped = stopped.clone();
                        workers.push(tokio::spawn(async move {
                            loop {
                                let now = Instant::now();
                                if stopped.load(Ordering::SeqCst) || end.is_some_and(|e| now >= e) {
                                    break;
                                }
                                let Some(p) = lock(&plan).next() else { break };
                                let in_flight = begin(&shared.live);
                                send_one(shared.clone(), p, now, in_flight).await;
                                if !shared.config.think_time.is_zero() {
                                    tokio::time::sleep(shared.config.think_time.div_f64(k)).await;
                                }
                            }
                        }));
                    }
                    for w in workers {
                        let _ = w.await;
                    }
                }
            }
        }
    };
    let duration_end = config
        .schedule
        .duration
        .map(|d| start + Duration::from_secs_f64(d.as_secs_f64() / k));
    let interrupted;
    tokio::select! {
        _ = dispatch => { interrupted = false; }
        _ = &mut shutdown => { interrupted = true; }
        _ = async { match duration_end { Some(e) => tokio::time::sleep_until(e).await, None => std::future::pending().await } } => { interrupted = true; }
    }
    stopped.store(true, Ordering::SeqCst);
    // Drain: natural end waits for every response (each bounded by its timeout); an early
    // stop waits up to --drain-timeout, then cancels the rest.
    let drain_limit = if interrupted {
        config.drain_timeout
    } else {
        config.request_timeout + Duration::from_secs(1)
    };
    let drained = tokio::select! {
        d = wait_idle(&shared.live, drain_limit) => d,
        // Ctrl-C during a natural drain: in-flight requests get --drain-timeout from now.
        _ = &mut shutdown, if !interrupted => wait_idle(&shared.live, config.drain_timeout).await,
    };
    if !drained {
        let _ = cancel_tx.send(true);
        wait_idle(&shared.live, Duration::from_secs(10)).await;
    }
    let run_duration_us = shared.target_offset_us(Instant::now()).max(0) as u64;
    stop_sampling.store(true, Ordering::SeqCst);
    let _ = sampler.await;

    // Summary figures.
    let live = &shared.live;
    let (lateness_p99_us, lateness_max_us) = {
        let h = lock(&live.lateness_us);
        if h.is_empty() {
            (0, 0)
        } else {
            (h.value_at_quantile(0.99), h.max())
        }
    };
    // The bound is on the client's real clock; lateness is recorded in the target's time,
    // K× faster under --clock-speedup K.
    let client_limited =
        lateness_p99_us as f64 > config.max_lateness.as_micros() as f64 * config.clock_speedup;
    let sent = live.sent.load(Ordering::SeqCst);
    let achieved_rps = match (*lock(&live.first_send_us), *lock(&live.last_send_us)) {
        (Some(f), Some(l)) if l > f && sent > 1 => (sent - 1) as f64 / ((l - f) as f64 / 1e6),
        _ => 0.0,
    };
    let quantile = |h: &Mutex<Histogram<u64>>, q: f64| {
        let h = lock(h);
        (!h.is_empty()).then(|| h.value_at_quantile(q))
    };
    let end_us = shared.start_us + run_duration_us as i64;
    let client_rows = vec![
        SampleRow {
            time_us: end_us,
            source: SampleSource::Client,
            name: "client_limited".into(),
            labels: String::new(),
            value: if client_limited { 1.0 } else { 0.0 },
        },
        SampleRow {
            time_us: end_us,
            source: SampleSource::Client,
            name: "lateness_p99_us".into(),
            labels: "scope=run".into(),
            value: lateness_p99_us as f64,
        },
        SampleRow {
            time_us: end_us,
            source: SampleSource::Client,
            name: "achieved_rps".into(),
            labels: "scope=run".into(),
            value: achieved_rps,
        },
    ];
    for row in &client_rows {
        let _ = samples_tx.send(row.clone());
    }
    drop(samples_tx);
    let summary_meta = {
        let mut m = meta;
        m.extra
            .push(("retrace.client_limited".into(), client_limited.to_string()));
        m.extra.push((
            "retrace.lateness_p99_us".into(),
            lateness_p99_us.to_string(),
        ));
        m
    };
    let errors_by_kind = lock(&live.errors_by_kind).clone();
    let summary = ReplaySummary {
        sent,
        ok: live.ok.load(Ordering::SeqCst),
        errors: live.errors.load(Ordering::SeqCst),
        errors_by_kind,
        lateness_p99_us,
        lateness_max_us,
        client_limited,
        results_files: Vec::new(),
        samples_files: Vec::new(),
        duration: Duration::from_micros(run_duration_us),
        achieved_rps,
        ttft_p50_us: quantile(&live.ttft_us, 0.5),
        ttft_p99_us: quantile(&live.ttft_us, 0.99),
        e2e_p99_us: quantile(&live.e2e_us, 0.99),
        server_kind: shared.target.kind,
        model: shared.target.model.clone(),
        prompt_tokens_source: shared.prompts.source,
        interrupted,
        prompt_token_mismatches: live.prompt_mismatches.load(Ordering::SeqCst),
        rows_skipped,
    };
    // Every request task has finished (drained or cancelled); closing the channel ends
    // the writer thread.
    lock(&shared.results).take();
    drop(shared);
    let results_files = tokio::task::spawn_blocking(move || join_writer(results_thread))
        .await
        .map_err(|e| ReplayError::Internal(e.to_string()))??;
    let mut samples_files = tokio::task::spawn_blocking(move || join_writer(samples_thread))
        .await
        .map_err(|e| ReplayError::Internal(e.to_string()))??;
    // The run-level verdict in file metadata too: a small file written once at the end.
    let final_path = config.out_dir.join("samples-summary.parquet");
    retrace_traces::write::write_file(&final_path, &client_rows, &summary_meta)?;
    samples_files.push(final_path);
    let summary = ReplaySummary {
        results_files,
        samples_files,
        ..summary
    };
    write_summary_json(&config, &summary)?;
    Ok(summary)
}

async fn wait_idle(live: &Live, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let notified = live.idle.notified();
        if live.in_flight.load(Ordering::SeqCst) == 0 {
            return true;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = tokio::time::sleep_until(deadline) => return live.in_flight.load(Ordering::SeqCst) == 0,
        }
    }
}

fn write_summary_json(config: &ReplayConfig, s: &ReplaySummary) -> Result<(), ReplayError> {
    let value = json!({
        "scenario": config.scenario,
        "sent": s.sent, "ok": s.ok, "errors": s.errors, "errors_by_kind": s.errors_by_kind,
        "lateness_p99_us": s.lateness_p99_us, "lateness_max_us": s.lateness_max_us,
        "client_limited": s.client_limited, "duration_us": s.duration.as_micros() as u64,
        "achieved_rps": s.achieved_rps, "ttft_p50_us": s.ttft_p50_us, "ttft_p99_us": s.ttft_p99_us,
        "e2e_p99_us": s.e2e_p99_us, "server_kind": s.server_kind.name(), "model": s.model,
        "prompt_tokens_source": s.prompt_tokens_source.as_str(), "interrupted": s.interrupted,
        "prompt_token_mismatches": s.prompt_token_mismatches,
        "rows_skipped": s.rows_skipped,
        "results_files": s.results_files, "samples_files": s.samples_files,
    });
    let path = config.out_dir.join("summary.json");
    let text =
        serde_json::to_string_pretty(&value).map_err(|e| ReplayError::Internal(e.to_string()))?;
    std::fs::write(&path, text).map_err(|source| ReplayError::Io { path, source })
}

async fn sample_loop(
    shared: Arc<Shared>,
    tx: std::sync::mpsc::Sender<SampleRow>,
    stop: Arc<AtomicBool>,
    planned_count: u64,
    planned_last_us: u64,
) {
    let progress = make_progress(&shared.config, planned_count);
    let mut system = sysinfo::System::new();
    let mut last_sent = 0u64;
    let mut next = shared.start.max(Instant::now());
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = async { while !stop.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(50)).await } } => {}
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        next += shared.config.sample_interval;
        let time_us = shared.start_us + shared.target_offset_us(Instant::now());
        let live = &shared.live;
        let sent = live.sent.load(Ordering::Relaxed);
        let in_flight = live.in_flight.load(Ordering::Relaxed);
        let lateness_p99 = {
            let h = lock(&live.lateness_us);
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(0.99)
            }
        };
        let rps = (sent - last_sent) as f64
            / (shared.config.sample_interval.as_secs_f64() * shared.config.clock_speedup);
        last_sent = sent;
        let client = |name: &str, value: f64| SampleRow {
            time_us,
            source: SampleSource::Client,
            name: name.into(),
            labels: String::new(),
            value,
        };
        for row in [
            client("in_flight", in_flight as f64),
            client("sent", sent as f64),
            client("lateness_p99_us", lateness_p99 as f64),
            client("send_rate", rps),
        ] {
            let _ = tx.send(row);
        }
        for url in &shared.config.metrics_urls {
            let Ok(request) = shared.requester.request(Method::GET, url, None, None) else {
                continue;
            };
            let timeout = shared
                .config
                .sample_interval
                .max(Duration::from_millis(500));
            if let Ok((status, _, body)) =
                client::exchange(&shared.requester.client, request, timeout, 32 << 20).await
            {
                if status.is_success() {
                    let parsed = crate::prom::parse(&String::from_utf8_lossy(&body));
                    let canonical = crate::prom::canonical_samples(&parsed);
                    *lock(&live.server_headline) = crate::prom::headline(&canonical);
                    for s in canonical {
                        let _ = tx.send(SampleRow {
                            time_us,
                            source: SampleSource::Server,
                            name: s.name.into(),
                            labels: s.labels,
                            value: s.value,
                        });
                    }
                }
            }
        }
        if let Some(selector) = &shared.config.process {
            system.refresh_processes(sysinfo::ProcessesToUpdate::All, true);
            let found = match selector {
                ProcessSelector::Pid(pid) => system.process(sysinfo::Pid::from_u32(*pid)),
                ProcessSelector::Name(name) => system
                    .processes()
                    .values()
                    .find(|p| p.name().to_string_lossy() == name.as_str()),
            };
            if let Some(process) = found {
                let labels = format!("pid={}", process.pid());
                for (name, value) in [
                    ("rss_bytes", process.memory() as f64),
                    ("cpu_percent", f64::from(process.cpu_usage())),
                ] {
                    let _ = tx.send(SampleRow {
                        time_us,
                        source: SampleSource::Process,
                        name: name.into(),
                        labels: labels.clone(),
                        value,
                    });
                }
            }
        }
        if let Some(bar) = &progress {
            let (queue, kv) = *lock(&live.server_headline);
            let ttft = {
                let h = lock(&live.ttft_us);
                if h.is_empty() {
                    "-".to_string()
                } else {
                    format!(
                        "{:.0}/{:.0} ms",
                        h.value_at_quantile(0.5) as f64 / 1e3,
                        h.value_at_quantile(0.99) as f64 / 1e3
                    )
                }
            };
            let elapsed_s = (time_us - shared.start_us) as f64 / 1e6;
            bar.set_position(sent);
            bar.set_message(format!(
                "{elapsed_s:.0}/{:.0} s  in flight {in_flight}  {rps:.1} req/s  TTFT p50/p99 {ttft}  errors {}{}{}",
                planned_last_us as f64 / 1e6,
                live.errors.load(Ordering::Relaxed),
                queue.map_or(String::new(), |q| format!("  queue {q:.0}")),
                kv.map_or(String::new(), |k| format!("  KV {:.0}%", k * 100.0)),
            ));
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
}

fn make_progress(config: &ReplayConfig, planned: u64) -> Option<indicatif::ProgressBar> {
    if !config.progress || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(planned),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} sent  {msg}") {
        bar.set_style(style);
    }
    Some(bar)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::schedule::schedule;

    fn rows(offsets_us: &[i64]) -> Arc<[TraceRequest]> {
        offsets_us
            .iter()
            .enumerate()
            .map(|(i, &o)| TraceRequest {
                request_id: format!("r{i}"),
                session_id: None,
                arrival_us: 1_000_000 + o,
                endpoint: Endpoint::Chat,
                stream: true,
                prompt_tokens: 10,
                output_tokens: 2,
                prefix_hashes: vec![],
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_on_absolute_deadlines() {
        let trace = rows(&[0, 1_500, 2_500, 40_000, 40_001, 1_000_000]);
        let plan = schedule(
            trace,
            &ScheduleConfig {
                speed: 2.0,
                ..ScheduleConfig::default()
            },
        )
        .unwrap();
        let start = Instant::now() + Duration::from_millis(5);
        let stopped = AtomicBool::new(false);
        let mut sent = Vec::new();
        // K = 10: the target's clock runs 10× faster, so real deadlines are offset / 10.
        open_loop_on_runtime_timer(plan, start, 10.0, &stopped, |p, deadline| {
            // The runtime timer has 1 ms ticks: never early, never a tick late.
            let now = Instant::now();
            assert!(
                now >= deadline && now - deadline < Duration::from_millis(1),
                "{:?}",
                now - deadline
            );
            sent.push((p.request_id, deadline - start));
        })
        .await;
        let expected: Vec<(String, Duration)> = [0u64, 750, 1_250, 20_000, 20_000, 500_000]
            .iter()
            .enumerate()
            .map(|(i, &us)| {
                (
                    format!("r{i}"),
                    Duration::from_secs_f64(us as f64 / 1e6 / 10.0),
                )
            })
            .collect();
        assert_eq!(sent.len(), expected.len());
        for ((id, at), (want_id, want_at)) in sent.iter().zip(&expected) {
            assert_eq!(id, want_id);
            assert!(
                at.abs_diff(*want_at) <= Duration::from_micros(1),
                "{id}: {at:?} vs {want_at:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_stops_when_told() {
        let trace = rows(&[0, 1_000_000, 2_000_000, 3_000_000]);
        let plan = schedule(trace, &ScheduleConfig::default()).unwrap();
        let stopped = AtomicBool::new(false);
        let mut count = 0;
        open_loop_on_runtime_timer(plan, Instant::now(), 1.0, &stopped, |_, _| {
            count += 1;
            if count == 2 {
                stopped.store(true, Ordering::SeqCst);
            }
        })
        .await;
        assert_eq!(count, 2);
    }

    #[test]
    fn base_url_accepts_v1_suffix() {
        assert_eq!(
            base_of("http://127.0.0.1:8000/v1/"),
            "http://127.0.0.1:8000"
        );
        assert_eq!(base_of(" http://h:1 "), "http://h:1");
    }
}
