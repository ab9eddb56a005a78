//! The HTTP server (hyper 1, HTTP/1.1 and h2c) and the engine task that drives the
//! scheduler on the simulated clock.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::clock::SimClock;
use crate::config::SimConfig;
use crate::engine::{Finish, FinishReason, NewRequest, Scheduler, SentStamp, SeqEvent, TruthRow};
use crate::leak::Leak;
use crate::metrics::MetricsState;
use crate::truth::TruthWriter;
use crate::{rng, tokenizer, SimError};

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// What a sim run did, returned by [`SimHandle::shutdown`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimSummary {
    /// Generation requests received (including rejected and failed ones).
    pub requests_total: u64,
    /// Requests that finished normally (`length` or `stop`).
    pub requests_completed: u64,
    /// Requests aborted (client went away, reset injected, shutdown).
    pub requests_aborted: u64,
    /// Requests answered with an injected 500.
    pub requests_errored: u64,
    /// Requests rejected with a 4xx.
    pub requests_rejected: u64,
    /// Preemptions.
    pub preemptions_total: u64,
    /// Tokens generated.
    pub generation_tokens_total: u64,
    /// Bytes deliberately leaked.
    pub leaked_bytes: u64,
    /// Rows written to the truth file.
    pub truth_rows: u64,
    /// Where the truth file was written.
    pub truth_path: Option<PathBuf>,
}

enum EngineMsg {
    Submit(NewRequest),
    Error(TruthRow),
    Shutdown,
}

struct Shared {
    config: SimConfig,
    clock: SimClock,
    metrics: Arc<Mutex<MetricsState>>,
    engine: mpsc::UnboundedSender<EngineMsg>,
    request_counter: AtomicU64,
    rejected: AtomicU64,
    errored: AtomicU64,
    model_json: String,
}

/// A running sim, serving in the background.
#[derive(Debug)]
pub struct SimHandle {
    local_addr: SocketAddr,
    stop_accept: Option<oneshot::Sender<()>>,
    accept_task: JoinHandle<()>,
    engine_tx: mpsc::UnboundedSender<EngineMsg>,
    engine_task: JoinHandle<Result<SimSummary, SimError>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EngineMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineMsg")
    }
}
impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish()
    }
}

/// Starts a sim with `config` listening on `listen` (use `127.0.0.1:0` in tests) and
/// serves in the background until [`SimHandle::shutdown`].
pub async fn spawn(config: SimConfig, listen: SocketAddr) -> Result<SimHandle, SimError> {
    config.validate()?;
    let truth = match &config.truth_path {
        Some(path) => Some(TruthWriter::create(path)?),
        None => None,
    };
    let listener = bind_listener(listen).map_err(|source| SimError::Bind {
        addr: listen,
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: listen,
        source,
    })?;
    let clock = SimClock::start(config.speedup);
    let metrics = Arc::new(Mutex::new(MetricsState::default()));
    let (engine_tx, engine_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        model_json: serde_json::to_string(&config.model).unwrap_or_else(|_| "\"sim\"".into()),
        config: config.clone(),
        clock,
        metrics: Arc::clone(&metrics),
        engine: engine_tx.clone(),
        request_counter: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        errored: AtomicU64::new(0),
    });
    let engine_task = tokio::spawn(run_engine(config, clock, metrics, engine_rx, truth));
    let (stop_tx, stop_rx) = oneshot::channel();
    let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop_rx));
    Ok(SimHandle {
        local_addr,
        stop_accept: Some(stop_tx),
        accept_task,
        engine_tx,
        engine_task,
        shared,
    })
}

impl SimHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://IP:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Stops serving (in-flight requests are aborted), finishes the truth file and
    /// returns what the run did.
    pub async fn shutdown(mut self) -> Result<SimSummary, SimError> {
        if let Some(stop) = self.stop_accept.take() {
            let _ = stop.send(());
        }
        let _ = self.engine_tx.send(EngineMsg::Shutdown);
        let summary = (&mut self.engine_task)
            .await
            .map_err(|e| SimError::Engine(e.to_string()))?;
        // Connections end once their bodies do; give them a moment, then cut them.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.accept_task).await;
        self.accept_task.abort();
        let mut summary = summary?;
        summary.requests_rejected = self.shared.rejected.load(Ordering::Relaxed);
        summary.requests_errored = self.shared.errored.load(Ordering::Relaxed);
        summary.requests_total = self.shared.request_counter.load(Ordering::Relaxed);
        Ok(summary)
    }
}

impl Drop for SimHandle {
    /// A handle dropped without `shutdown` still stops the server (the truth file is then
    /// finished in the background, if the runtime lives long enough).
    fn drop(&mut self) {
        if let Some(stop) = self.stop_accept.take() {
            let _ = stop.send(());
            let _ = self.engine_tx.send(EngineMsg::Shutdown);
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!("sim accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let stream = kernel_rx::Stamped::new(stream);
        let last_read = stream.last_read();
        let service = hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            // Read as hyper hands over the head, before it reads on into the body: the read
            // that completed the head (HTTP/1.1 serves one request at a time; with h2 it is
            // the connection's latest read).
            let head_read = last_read.get();
            async move { Ok::<_, Infallible>(handle(shared, req, head_read).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

/// The engine task: owns the scheduler, runs steps on absolute deadlines.
async fn run_engine(
    config: SimConfig,
    clock: SimClock,
    metrics: Arc<Mutex<MetricsState>>,
    mut rx: mpsc::UnboundedReceiver<EngineMsg>,
    mut truth: Option<TruthWriter>,
) -> Result<SimSummary, SimError> {
    let mut sched = Scheduler::new(&config, Arc::clone(&metrics));
    let mut leak = Leak::new(config.leak_plateau_bytes);
    let mut summary = SimSummary {
        truth_path: config.truth_path.clone(),
        ..SimSummary::default()
    };
    let mut deadline = Instant::now();
    let mut next_stall_us = config.stall.map(|s| s.every_us as i64);
    let mut rate_leaked_bytes: u64 = 0;
    // Without a leak configured, the metrics lock is not taken every step.
    let publishes_leak = config.leak_per_request_bytes > 0 || config.leak_rate_bytes_per_hour > 0;
    let mut shutting_down = false;
    let mut closed = false;
    while !shutting_down {
        if sched.is_idle() {
            if config.leak_rate_bytes_per_hour > 0 {
                // A time-based leak grows with or without traffic: wake up to feed it.
                match tokio::time::timeout(Duration::from_millis(20), rx.recv()).await {
                    Ok(Some(msg)) => shutting_down |= handle_msg(msg, &mut sched),
                    Ok(None) => break,
                    Err(_) => {
                        leak_by_rate(&config, &clock, &mut leak, &mut rate_leaked_bytes);
                        set_leaked(&metrics, &leak);
                        continue;
                    }
                }
            } else {
                match rx.recv().await {
                    Some(msg) => shutting_down |= handle_msg(msg, &mut sched),
                    None => break,
                }
            }
            deadline = Instant::now();
        }
        loop {
            match rx.try_recv() {
                Ok(msg) => shutting_down |= handle_msg(msg, &mut sched),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if shutting_down || closed {
            break;
        }
        let elapsed_sim_us = clock.elapsed_sim_us();
        if let (Some(at), Some(stall)) = (next_stall_us, config.stall) {
            if elapsed_sim_us >= at {
                let until = Instant::now() + clock.real(stall.pause_us as f64);
                tokio::time::sleep_until(until).await;
                deadline = until;
                // Idle time does not queue up stalls: the next one is at the next period boundary.
                let every = stall.every_us as i64;
                next_stall_us = Some((clock.elapsed_sim_us() / every + 1) * every);
            }
        }
        let hours = clock.elapsed_sim_us() as f64 / 3.6e9;
        leak_by_rate(&config, &clock, &mut leak, &mut rate_leaked_bytes);
        let work = sched.plan(clock.now_us());
        let step_us = step_time_us(&config, work, hours);
        if work.is_empty() {
            // Nothing schedulable (every waiting client went away): wait for news.
            match tokio::time::timeout(Duration::from_millis(10), rx.recv()).await {
                Ok(Some(msg)) => shutting_down |= handle_msg(msg, &mut sched),
                Ok(None) => break,
                Err(_) => {}
            }
            let finished = sched.take_finished();
            account(&mut summary, &finished, &mut leak, &config);
            if let Some(t) = truth.as_mut() {
                t.push(finished)?;
            }
            if publishes_leak {
                set_leaked(&metrics, &leak);
            }
            deadline = Instant::now();
            continue;
        }
        if step_us > 0.0 {
            deadline += clock.real(step_us);
            let now = Instant::now();
            // Absolute deadlines keep the clock from drifting; but after a long hiccup do
            // not replay the backlog as a burst of instant steps.
            if deadline + Duration::from_millis(20) < now {
                deadline = now;
            }
            tokio::time::sleep_until(deadline).await;
        } else {
            deadline = Instant::now();
            tokio::task::yield_now().await;
        }
        sched.complete(clock.now_us());
        let finished = sched.take_finished();
        if !finished.is_empty() {
            account(&mut summary, &finished, &mut leak, &config);
            if let Some(t) = truth.as_mut() {
                t.push(finished)?;
            }
        }
        if publishes_leak {
            set_leaked(&metrics, &leak);
        }
    }
    // Drain messages that raced with the shutdown so their clients are not left hanging.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        handle_msg(msg, &mut sched);
    }
    sched.abort_all(clock.now_us());
    let finished = sched.take_finished();
    account(&mut summary, &finished, &mut leak, &config);
    summary.preemptions_total = sched.preemptions_total;
    summary.leaked_bytes = leak.held_bytes();
    if let Some(mut t) = truth {
        t.push(finished)?;
        summary.truth_rows = t.finish()?;
    }
    Ok(summary)
}

/// Step time of a planned step, simulated µs: the cost model, grown by the drift.
pub(crate) fn step_time_us(
    config: &SimConfig,
    work: crate::engine::StepWork,
    sim_hours: f64,
) -> f64 {
    config
        .cost
        .step_us(work.prefill_tokens, work.decode_seqs, work.context_tokens)
        * (1.0 + config.drift_per_hour * sim_hours)
}

fn leak_by_rate(config: &SimConfig, clock: &SimClock, leak: &mut Leak, leaked_so_far: &mut u64) {
    if config.leak_rate_bytes_per_hour == 0 {
        return;
    }
    let hours = clock.elapsed_sim_us() as f64 / 3.6e9;
    let target = (config.leak_rate_bytes_per_hour as f64 * hours) as u64;
    if target > *leaked_so_far {
        leak.leak(target - *leaked_so_far);
        *leaked_so_far = target;
    }
}

fn set_leaked(metrics: &Mutex<MetricsState>, leak: &Leak) {
    let mut m = metrics.lock().unwrap_or_else(|p| p.into_inner());
    m.leaked_bytes = leak.held_bytes();
}

fn handle_msg(msg: EngineMsg, sched: &mut Scheduler) -> bool {
    match msg {
        EngineMsg::Submit(req) => sched.submit(req),
        EngineMsg::Error(row) => sched.record_error(row),
        EngineMsg::Shutdown => return true,
    }
    false
}

fn account(summary: &mut SimSummary, finished: &[TruthRow], leak: &mut Leak, config: &SimConfig) {
    for row in finished {
        match row.finish_reason {
            FinishReason::Length | FinishReason::Stop => summary.requests_completed += 1,
            FinishReason::Abort => summary.requests_aborted += 1,
            FinishReason::Error => {}
        }
        summary.generation_tokens_total += u64::from(row.output_tokens);
        if config.leak_per_request_bytes > 0 && row.finish_reason != FinishReason::Error {
            leak.leak(config.leak_per_request_bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

/// Response body: a whole buffer, or an SSE stream fed by the engine.
enum SimBody {
    Full(Option<Bytes>),
    Sse(Box<SseStream>),
}

/// The body failed on purpose (`--reset-rate`): hyper drops the connection.
#[derive(Debug)]
struct InjectedReset;
impl std::fmt::Display for InjectedReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset injected by the sim")
    }
}
impl std::error::Error for InjectedReset {}

impl http_body::Body for SimBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            SimBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Sse(s) => s.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, SimBody::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            // An exact size lets hyper send `content-length` instead of chunking.
            SimBody::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            SimBody::Sse(_) => http_body::SizeHint::default(),
        }
    }
}

struct SseStream {
    rx: mpsc::UnboundedReceiver<SeqEvent>,
    clock: SimClock,
    /// Stamped when the first token's frame is handed to hyper, which encodes it and
    /// flushes it to the socket in the same poll of the connection: the truth's first
    /// token is when the bytes go to the wire, not when the engine decided them (with
    /// many streams, one core writes their frames one after another).
    sent: Arc<SentStamp>,
    chat: bool,
    /// `data: {"id":"…","object":"…","created":…,"model":…,"choices":[` — shared prefix.
    prefix: String,
    include_usage: bool,
    word_seed: u64,
    index: u32,
    role_sent: bool,
    reset_after: Option<u32>,
    done: bool,
}

impl SseStream {
    fn push_token(&mut self, out: &mut BytesMut, finish: Option<Finish>) {
        use std::fmt::Write as _;
        let word = tokenizer::word(self.word_seed, self.index);
        self.index += 1;
        let reason = match finish {
            Some(f) => f.reason.as_str(),
            None => "",
        };
        let (q, reason) = if reason.is_empty() {
            ("", "null")
        } else {
            ("\"", reason)
        };
        out.extend_from_slice(self.prefix.as_bytes());
        // Written straight into the frame buffer: this is the per-token hot path.
        let _ = if self.chat {
            write!(
                out,
                "{{\"index\":0,\"delta\":{{\"content\":\" {word}\"}},\"logprobs\":null,\"finish_reason\":{q}{reason}{q}}}]}}\n\n"
            )
        } else {
            write!(
                out,
                "{{\"index\":0,\"text\":\" {word}\",\"logprobs\":null,\"finish_reason\":{q}{reason}{q},\"stop_reason\":null}}]}}\n\n"
            )
        };
        if let Some(f) = finish {
            if self.include_usage {
                out.extend_from_slice(self.prefix.as_bytes());
                let _ = write!(
                    out,
                    "],\"usage\":{{\"prompt_tokens\":{},\"total_tokens\":{},\"completion_tokens\":{}}}}}\n\n",
                    f.prompt_tokens,
                    f.prompt_tokens + f.output_tokens,
                    f.output_tokens
                );
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.done = true;
        }
    }

    #[allow(clippy::type_complexity)]
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut out = BytesMut::new();
        if self.chat && !self.role_sent {
            self.role_sent = true;
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(
                b"{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
            );
            return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
        }
        // Batch whatever is ready into one frame: fewer writes under load.
        for _ in 0..64 {
            if self.reset_after == Some(self.index) {
                return Poll::Ready(Some(Err(Box::new(InjectedReset))));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(SeqEvent::Token)) => self.push_token(&mut out, None),
                Poll::Ready(Some(SeqEvent::Last(f))) => {
                    self.push_token(&mut out, Some(f));
                    break;
                }
                Poll::Ready(None) => {
                    // The engine aborted the request (shutdown): end the stream broken.
                    self.done = true;
                    if out.is_empty() {
                        return Poll::Ready(Some(Err(Box::new(InjectedReset))));
                    }
                    break;
                }
                Poll::Pending => break,
            }
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            if self.index > 0 {
                self.sent.sent(self.clock.now_us());
            }
            Poll::Ready(Some(Ok(Frame::data(out.freeze()))))
        }
    }
}

impl Drop for SseStream {
    fn drop(&mut self) {
        self.sent.closed();
    }
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<SimBody> {
    let mut resp = Response::new(SimBody::Full(Some(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn json_response(status: StatusCode, value: &Value) -> Response<SimBody> {
    full(status, "application/json", value.to_string())
}

/// OpenAI's error shape.
fn error_response(
    status: StatusCode,
    kind: &str,
    message: &str,
    param: Option<&str>,
) -> Response<SimBody> {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": param, "code": status.as_u16()}}),
    )
}

/// A rejected request, turned into an OpenAI-shaped error response at the edge.
#[derive(Debug)]
struct ApiError {
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn response(&self) -> Response<SimBody> {
        error_response(
            StatusCode::BAD_REQUEST,
            self.kind,
            &self.message,
            self.param,
        )
    }
}

fn bad_request(message: &str, param: Option<&'static str>) -> ApiError {
    ApiError {
        kind: "BadRequestError",
        message: message.to_string(),
        param,
    }
}

/// `head_read`: when the bytes that completed the request head reached the socket.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    head_read: Option<Instant>,
) -> Response<SimBody> {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    let mut resp = match (&method, path.as_str()) {
        (&Method::GET, "/health") => full(StatusCode::OK, "text/plain", ""),
        (&Method::GET, "/v1/models") => json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": [{
                "id": shared.config.model, "object": "model", "created": shared.clock.now_us() / 1_000_000,
                "owned_by": "retrace-sim", "root": shared.config.model, "parent": null,
                "max_model_len": shared.config.max_model_len,
            }]}),
        ),
        (&Method::GET, "/metrics") => {
            let text = {
                let m = shared
                    .metrics
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                m.clone()
            }
            .render(&shared.config.model);
            full(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                text,
            )
        }
        (&Method::POST, "/tokenize") => match read_json(req).await {
            Ok(body) => tokenize_endpoint(&shared, &body),
            Err(e) => e.response(),
        },
        (&Method::POST, "/v1/completions") => {
            generate(&shared, req, false, request_id.clone(), head_read).await
        }
        (&Method::POST, "/v1/chat/completions") => {
            generate(&shared, req, true, request_id.clone(), head_read).await
        }
        (
            _,
            "/health"
            | "/v1/models"
            | "/metrics"
            | "/tokenize"
            | "/v1/completions"
            | "/v1/chat/completions",
        ) => error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method not allowed",
            None,
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            "NotFoundError",
            "no such endpoint",
            None,
        ),
    };
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        resp.headers_mut().insert("x-request-id", id);
    }
    resp
}

async fn read_json(req: Request<Incoming>) -> Result<Value, ApiError> {
    let body = http_body_util::Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(bad_request(
                &format!("could not read the request body: {e}"),
                None,
            ))
        }
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(&format!("invalid JSON body: {e}"), None))
}

/// Text of a chat message's `content` (a string, or an array of `{type: text, text}`).
fn content_text(content: &Value) -> Result<String, String> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for part in parts {
                match part.get("text").and_then(Value::as_str) {
                    Some(t) => texts.push(t),
                    None => return Err("content parts must carry `text`".to_string()),
                }
            }
            Ok(texts.join(" "))
        }
        _ => Err("`content` must be a string or an array of parts".to_string()),
    }
}

/// Token ids of the prompt of a request body: `prompt` (completions) or `messages` (chat).
fn prompt_ids(body: &Value, chat: bool) -> Result<Vec<u32>, ApiError> {
    if chat || body.get("prompt").is_none() {
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Err(bad_request("`messages` must be an array", Some("messages")));
        };
        let mut pairs = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .unwrap_or("user")
                .to_string();
            let text = content_text(m.get("content").unwrap_or(&Value::Null))
                .map_err(|e| bad_request(&format!("messages[{i}]: {e}"), Some("messages")))?;
            pairs.push((role, text));
        }
        return Ok(tokenizer::tokenize_chat(
            pairs.iter().map(|(r, t)| (r.as_str(), t.as_str())),
        ));
    }
    match body.get("prompt") {
        Some(Value::String(s)) => Ok(tokenizer::tokenize(s)),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            Ok(tokenizer::tokenize(items[0].as_str().unwrap_or_default()))
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => Ok(items
            .iter()
            .map(|v| v.as_u64().unwrap_or(0) as u32)
            .collect()),
        _ => Err(bad_request(
            "`prompt` must be a string, a one-element array of strings, or an array of token ids",
            Some("prompt"),
        )),
    }
}

fn tokenize_endpoint(shared: &Shared, body: &Value) -> Response<SimBody> {
    if let Err(e) = check_model(shared, body) {
        return e.response();
    }
    match prompt_ids(body, body.get("prompt").is_none()) {
        Ok(ids) => json_response(
            StatusCode::OK,
            &json!({"count": ids.len(), "max_model_len": shared.config.max_model_len, "tokens": ids}),
        ),
        Err(e) => e.response(),
    }
}

fn check_model(shared: &Shared, body: &Value) -> Result<(), ApiError> {
    match body.get("model") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(m)) if *m == shared.config.model => Ok(()),
        Some(Value::String(m)) => Err(ApiError {
            kind: "NotFoundError",
            message: format!("The model `{m}` does not exist."),
            param: Some("model"),
        }),
        Some(_) => Err(bad_request("`model` must be a string", Some("model"))),
    }
}

fn opt_u32(body: &Value, field: &'static str) -> Result<Option<u32>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                bad_request(
                    &format!("`{field}` must be a non-negative integer"),
                    Some(field),
                )
            }),
    }
}

/// Chained hashes of the full `block_size` blocks of `ids` (each block's hash covers the
/// whole prefix up to it, as vLLM's prefix cache keys do).
fn block_hashes(ids: &[u32], block_size: u32) -> Vec<u64> {
    let mut parent = 0u64;
    ids.chunks_exact(block_size as usize)
        .map(|block| {
            let mut h = rng::mix(parent ^ 0x5bd1_e995);
            for id in block {
                h = rng::mix(h ^ u64::from(*id));
            }
            parent = h;
            h
        })
        .collect()
}

async fn generate(
    shared: &Shared,
    req: Request<Incoming>,
    chat: bool,
    request_id: Option<String>,
    head_read: Option<Instant>,
) -> Response<SimBody> {
    // Arrival is when the request reached the server's socket, as a server with a core of
    // its own would see it: the time it then waits for this busy process is server latency.
    let handler_us = shared.clock.now_us();
    let arrival_us = head_read.map_or(handler_us, |at| shared.clock.at_us(at).min(handler_us));
    let counter = shared.request_counter.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;
    let parsed = async {
        let body = read_json(req).await?;
        if !body.is_object() {
            return Err(bad_request("the request body must be a JSON object", None));
        }
        check_model(shared, &body)?;
        let ids = prompt_ids(&body, chat)?;
        let n = opt_u32(&body, "n")?.unwrap_or(1);
        if n != 1 {
            return Err(bad_request("only `n` = 1 is supported", Some("n")));
        }
        let max_tokens = match opt_u32(&body, "max_completion_tokens")? {
            Some(m) => Some(m),
            None => opt_u32(&body, "max_tokens")?,
        };
        let min_tokens = opt_u32(&body, "min_tokens")?.unwrap_or(0);
        let prompt_tokens = ids.len() as u32;
        let limit = config.max_model_len;
        if prompt_tokens >= limit {
            return Err(bad_request(
                &format!(
                    "This model's maximum context length is {limit} tokens. However, your request has {prompt_tokens} input tokens. Please reduce the length of the input messages."
                ),
                Some("prompt"),
            ));
        }
        let max_tokens = max_tokens.unwrap_or(limit - prompt_tokens);
        if max_tokens == 0 {
            return Err(bad_request("`max_tokens` must be at least 1", Some("max_tokens")));
        }
        if u64::from(prompt_tokens) + u64::from(max_tokens) > u64::from(limit) {
            return Err(bad_request(
                &format!(
                    "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                    u64::from(prompt_tokens) + u64::from(max_tokens)
                ),
                Some("max_tokens"),
            ));
        }
        if min_tokens > max_tokens {
            return Err(bad_request("`min_tokens` must not exceed `max_tokens`", Some("min_tokens")));
        }
        let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
        let include_usage = body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let ignore_eos = body.get("ignore_eos").and_then(Value::as_bool).unwrap_or(false);
        Ok((ids, max_tokens, min_tokens, stream, include_usage, ignore_eos))
    }
    .await;
    let (ids, max_tokens, min_tokens, stream, include_usage, ignore_eos) = match parsed {
        Ok(p) => p,
        Err(e) => {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            return e.response();
        }
    };
    let request_id =
        request_id.unwrap_or_else(|| format!("{:016x}", rng::mix(config.seed ^ counter)));
    let endpoint = if chat { "chat" } else { "completions" };
    // Per-request randomness depends on the seed and the request's shape only, so the
    // same traffic gives the same outputs whatever the timing.
    let mut shape = rng::mix(config.seed ^ u64::from(max_tokens) << 32 ^ ids.len() as u64);
    for id in ids.iter().take(64) {
        shape = rng::mix(shape ^ u64::from(*id));
    }
    let request_seed = rng::mix(shape ^ counter.wrapping_mul(0x2545_f491_4f6c_dd1d));
    if config.error_rate > 0.0 && rng::unit(request_seed ^ 0xe44) < config.error_rate {
        shared.errored.fetch_add(1, Ordering::Relaxed);
        let _ = shared.engine.send(EngineMsg::Error(TruthRow {
            request_id,
            endpoint,
            arrival_us,
            handler_us,
            admitted_us: None,
            first_token_us: None,
            sent: None,
            finish_us: shared.clock.now_us(),
            prompt_tokens: ids.len() as u32,
            output_tokens: 0,
            preemptions: 0,
            finish_reason: FinishReason::Error,
            itl: None,
        }));
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "injected error (--error-rate)",
            None,
        );
    }
    // EOS: half of the requests (by their shape) stop early, at a uniform position in
    // [max(min_tokens, 1), max_tokens].
    let eos_at = if ignore_eos || rng::unit(shape ^ 0xe05) < 0.5 {
        None
    } else {
        let lo = min_tokens.max(1);
        let span = u64::from(max_tokens - lo) + 1;
        Some(lo + (rng::mix(shape ^ 0xe05e) % span) as u32)
    };
    let reset_after =
        if stream && config.reset_rate > 0.0 && rng::unit(request_seed ^ 0x4e5) < config.reset_rate
        {
            Some((rng::mix(request_seed ^ 0x4e55) % u64::from(max_tokens)) as u32)
        } else {
            None
        };
    let prefix_hashes = if config.prefix_caching {
        block_hashes(&ids, config.block_size)
    } else {
        Vec::new()
    };
    let prompt_tokens = ids.len() as u32;
    drop(ids);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let word_seed = rng::mix(shape ^ 0x3030);
    let sent = stream.then(|| Arc::new(SentStamp::new()));
    if shared
        .engine
        .send(EngineMsg::Submit(NewRequest {
            request_id: request_id.clone(),
            endpoint,
            arrival_us,
            handler_us,
            prompt_tokens,
            prefix_hashes,
            max_tokens,
            eos_at,
            tx,
            sent: sent.clone(),
        }))
        .is_err()
    {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the sim is shutting down",
            None,
        );
    }
    let created = arrival_us / 1_000_000;
    let (id_prefix, object) = if chat {
        (
            "chatcmpl",
            if stream {
                "chat.completion.chunk"
            } else {
                "chat.completion"
            },
        )
    } else {
        ("cmpl", "text_completion")
    };
    let id = format!("{id_prefix}-{}", request_id.replace(['"', '\\'], "_"));
    if stream {
        let prefix = format!(
            "data: {{\"id\":\"{id}\",\"object\":\"{object}\",\"created\":{created},\"model\":{},\"choices\":[",
            shared.model_json
        );
        let body = SseStream {
            rx,
            clock: shared.clock,
            sent: sent.unwrap_or_else(|| Arc::new(SentStamp::new())),
            chat,
            prefix,
            include_usage,
            word_seed,
            index: 0,
            role_sent: false,
            reset_after,
            done: false,
        };
        let mut resp = Response::new(SimBody::Sse(Box::new(body)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return resp;
    }
    // Non-streaming: wait for the whole output.
    let mut text = String::new();
    let mut index = 0;
    let finish = loop {
        match rx.recv().await {
            Some(event) => {
                text.push(' ');
                text.push_str(tokenizer::word(word_seed, index));
                index += 1;
                if let SeqEvent::Last(f) = event {
                    break f;
                }
            }
            None => {
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "the request was aborted (sim shutting down)",
                    None,
                )
            }
        }
    };
    let usage = json!({
        "prompt_tokens": finish.prompt_tokens,
        "total_tokens": finish.prompt_tokens + finish.output_tokens,
        "completion_tokens": finish.output_tokens,
    });
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish.reason.as_str()})
    } else {
        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish.reason.as_str(), "stop_reason": null})
    };
    json_response(
        StatusCode::OK,
        &json!({"id": id, "object": object, "created": created, "model": config.model, "choices": [choice], "usage": usage}),
    )
}

/// Binds a listener with a deep accept queue: a load test opens hundreds of connections
/// at once, and the OS default backlog (128) overflows, delaying some by a SYN retry (~1 s).
fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    // Accepted sockets inherit the option, so a request that arrives before its connection
    // is accepted is stamped too.
    kernel_rx::enable(&listener);
    Ok(listener)
}

/// Kernel receive times of the connection's reads (`retrace-netstamp`, shared with replay's
/// client): when the read's (last) bytes reached the socket, whatever the sim's core was
/// doing then.
mod kernel_rx {
    use std::io;
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{ready, Context, Poll};

    use tokio::io::ReadBuf;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;

    /// Turns the option on for a listener (best effort): its accepted sockets inherit it.
    pub(crate) fn enable(listener: &TcpListener) {
        if let Err(e) = retrace_netstamp::enable_on_listener(listener) {
            tracing::debug!("SO_TIMESTAMPNS unavailable ({e}): arrivals timed by the reads");
        }
    }

    /// When the connection's latest read's bytes reached the socket.
    #[derive(Clone, Default)]
    pub(crate) struct LastRead(Arc<Mutex<Option<Instant>>>);

    impl LastRead {
        pub(crate) fn get(&self) -> Option<Instant> {
            *self.0.lock().unwrap_or_else(|p| p.into_inner())
        }
        fn set(&self, at: Instant) {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
        }
    }

    /// A TCP stream whose reads are stamped into a [`LastRead`].
    pub(crate) struct Stamped {
        inner: TcpStream,
        last: LastRead,
        rx: retrace_netstamp::KernelRx,
    }

    impl Stamped {
        pub(crate) fn new(inner: TcpStream) -> Stamped {
            let rx = retrace_netstamp::KernelRx::new(&inner);
            Stamped {
                inner,
                last: LastRead::default(),
                rx,
            }
        }

        pub(crate) fn last_read(&self) -> LastRead {
            self.last.clone()
        }
    }

    impl tokio::io::AsyncRead for Stamped {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let before = buf.filled().len();
            let at = ready!(this.rx.poll_read(&mut this.inner, cx, buf))?;
            if buf.filled().len() > before {
                this.last.set(at);
            }
            Poll::Ready(Ok(()))
        }
    }

    impl tokio::io::AsyncWrite for Stamped {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::StepWork;

    #[test]
    fn drift_grows_step_time_linearly_in_sim_hours() {
        let config = SimConfig {
            drift_per_hour: 0.10,
            ..SimConfig::default()
        };
        let work = StepWork {
            prefill_tokens: 100,
            decode_seqs: 10,
            context_tokens: 5000,
        };
        let base = step_time_us(&config, work, 0.0);
        let expected = 6000.0 + 35.0 * 100.0 + 60.0 * 10.0 + 0.04 * 5000.0;
        assert!((base - expected).abs() < 1e-6, "{base}");
        assert!((step_time_us(&config, work, 2.0) - base * 1.2).abs() < 1e-6);
        let flat = SimConfig::default();
        assert_eq!(step_time_us(&flat, work, 10.0), base);
    }

    /// Drives the real engine task over its channel on a paused tokio clock: token times
    /// follow the cost model exactly, whatever the speedup.
    async fn token_times(speedup: f64) -> (Vec<i64>, Vec<i64>, u64) {
        let config = SimConfig {
            speedup,
            kv_blocks: 8,
            block_size: 16,
            max_model_len: 128,
            cost: crate::CostModel {
                step_overhead_us: 10_000.0,
                // Whole milliseconds at 1× and 2×: tokio's timer has 1 ms resolution.
                prefill_per_token_us: 2_000.0,
                ..crate::CostModel::ZERO
            },
            ..SimConfig::default()
        };
        let clock = SimClock::start(speedup);
        let metrics = Arc::new(Mutex::new(MetricsState::default()));
        let (engine_tx, engine_rx) = mpsc::unbounded_channel();
        let engine = tokio::spawn(run_engine(
            config,
            clock,
            Arc::clone(&metrics),
            engine_rx,
            None,
        ));
        let mut receivers = Vec::new();
        let start_us = clock.now_us();
        // Two requests of 100 + 20 tokens: 8 blocks hold 128 tokens, so the second one
        // cannot grow alongside the first and gets preempted.
        for id in ["a", "b"] {
            let (tx, rx) = mpsc::unbounded_channel();
            engine_tx
                .send(EngineMsg::Submit(NewRequest {
                    request_id: id.to_string(),
                    endpoint: "completions",
                    arrival_us: start_us,
                    handler_us: start_us,
                    prompt_tokens: 50,
                    prefix_hashes: Vec::new(),
                    max_tokens: 20,
                    eos_at: None,
                    tx,
                    sent: None,
                }))
                .expect("engine alive");
            receivers.push(rx);
        }
        // One reader per request, so each event is timed when it is sent.
        let readers: Vec<_> = receivers
            .into_iter()
            .map(|mut rx| {
                tokio::spawn(async move {
                    let mut t = Vec::new();
                    while let Some(event) = rx.recv().await {
                        t.push(clock.now_us() - start_us);
                        if matches!(event, SeqEvent::Last(_)) {
                            break;
                        }
                    }
                    t
                })
            })
            .collect();
        let mut times = Vec::new();
        for r in readers {
            times.push(r.await.expect("reader"));
        }
        engine_tx.send(EngineMsg::Shutdown).expect("engine alive");
        let summary = engine.await.expect("engine task").expect("engine ok");
        let b = times.pop().unwrap_or_default();
        let a = times.pop().unwrap_or_default();
        (a, b, summary.preemptions_total)
    }

    #[tokio::test(start_paused = true)]
    async fn engine_timing_follows_the_cost_model_on_a_paused_clock() {
        let (a1, b1, pre1) = token_times(1.0).await;
        let (a2, b2, pre2) = token_times(2.0).await;
        assert_eq!(a1.len(), 20);
        assert_eq!(b1.len(), 20);
        // First step prefills both prompts: 10 ms + 100 × 2 ms = 210 ms.
        assert_eq!(a1[0], 210_000);
        assert_eq!(b1[0], 210_000);
        // Then decode steps of 10 ms each while both fit.
        assert_eq!(a1[1] - a1[0], 10_000);
        assert!(
            pre1 >= 1,
            "two 70-token sequences cannot share 128 tokens of KV"
        );
        // Same simulated times and the same preemptions at 2× speed.
        assert_eq!((&a1, &b1, pre1), (&a2, &b2, pre2));
    }

    #[test]
    fn block_hashes_chain() {
        let a = block_hashes(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
        assert_eq!(a.len(), 2);
        let b = block_hashes(&[1, 2, 3, 4, 5, 6, 7, 9], 4);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        // Same second block after a different first block: different hash (chained).
        let c = block_hashes(&[0, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_ne!(a[1], c[1]);
    }
}
