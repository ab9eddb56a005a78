//! The hot path: one client request forwarded upstream, both bodies streamed, one row
//! recorded when it ends (however it ends).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use retrace_traces::sse::{is_usage_only, EventSplitter};
use retrace_traces::{Endpoint, Outcome, StreamObserver};
use tokio::sync::mpsc;
use tokio::time::Sleep;

use crate::client::{UpstreamBody, UpstreamClient};
use crate::config::ProxyConfig;
use crate::head::{based_target, Peer, RequestHead};
use crate::record::Recorder;
use crate::request_info;
use crate::row::PendingRow;
use crate::stats::Stats;
use crate::watch::Busy;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// State shared by every request.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) upstream: UpstreamClient,
    pub(crate) recorder: Recorder,
    pub(crate) stats: Arc<Stats>,
    /// Numbers the requests; the writer thread makes each number an id
    /// ([`RowContext::id_prefix`](crate::row::RowContext::id_prefix)).
    pub(crate) id_counter: AtomicU64,
    /// The upstream's `Host` (unless `--preserve-host`), made once.
    pub(crate) upstream_host: Option<HeaderValue>,
    /// Wall clock (UTC µs) and monotonic instant at the proxy's start, for scaled times.
    pub(crate) start_us: i64,
    pub(crate) start: Instant,
    /// Rows whose response's last frame is still to observe (`Recording::finish_after`).
    pub(crate) handovers: Handovers,
}

/// The queue of [`RowHandover`]s, worked through in order by [`handover_queue`]'s task.
pub(crate) type Handovers = mpsc::UnboundedSender<RowHandover>;

/// A queue of row hand-overs and the task that works through it. One queue, not a task a
/// row: rows reach the recorder in the order their responses ended (a spawned task a row
/// could run out of order on a multi-threaded runtime). Dropping the task (a runtime
/// shutting down, an abort) drops what is queued, and each hand-over still does its work.
pub(crate) fn handover_queue() -> (Handovers, impl Future<Output = ()> + Send + 'static) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<RowHandover>();
    let task = async move {
        while let Some(handover) = receiver.recv().await {
            drop(handover);
        }
    };
    (sender, task)
}

impl Shared {
    fn next_request_number(&self) -> u64 {
        self.id_counter.fetch_add(1, Ordering::Relaxed)
    }
}

/// The request body as captured for parsing.
#[derive(Debug, Default)]
pub(crate) struct Tee {
    /// First bytes of the body, up to `max_parse_bytes`.
    buf: Vec<u8>,
    /// The body was larger than the cap: not parsed.
    overflow: bool,
    /// The body ended.
    complete: bool,
    /// Body bytes forwarded.
    bytes: u64,
}

/// The request body sent upstream: an optional already-read prefix, then the rest of the
/// client's body, streamed, with the first bytes copied into the tee.
pub(crate) struct ForwardBody {
    prefix: Option<Bytes>,
    pending: Option<Frame<Bytes>>,
    rest: Option<Incoming>,
    tee: Arc<Mutex<Tee>>,
    copy: bool,
    cap: usize,
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // With a Content-Length the client stops polling once it has every byte.
                let ended = this.rest.as_ref().is_some_and(|r| r.is_end_stream());
                if let Some(data) = frame.data_ref() {
                    if let Ok(mut tee) = this.tee.lock() {
                        tee.complete |= ended;
                        tee.bytes += data.len() as u64;
                        if this.copy && !tee.overflow {
                            if tee.buf.len() + data.len() <= this.cap {
                                tee.buf.extend_from_slice(data);
                            } else {
                                tee.overflow = true;
                                tee.buf = Vec::new();
                            }
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => {
                this.rest = None;
                if let Ok(mut tee) = this.tee.lock() {
                    tee.complete = true;
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none()
            && self.pending.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64)
            + self
                .pending
                .as_ref()
                .and_then(|f| f.data_ref())
                .map_or(0, |d| d.len() as u64);
        let inner = self
            .rest
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |r| r.size_hint());
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + extra);
        }
        hint.set_lower(inner.lower() + extra);
        hint
    }
}

/// One request's recording: finished exactly once, by the end of the response, by an
/// error, or by being dropped (the client went away).
pub(crate) struct Recording {
    shared: Arc<Shared>,
    arrival: Instant,
    tee: Arc<Mutex<Tee>>,
    /// The row, filled in as the request goes (status, parsed request, the response's
    /// observer inside it) and handed over when it ends: `None` once it has. Boxed once at
    /// the start: one allocation a request for the row and its observer (the writer frees
    /// it on its own thread, where each allocation costs more), and the recording that
    /// moves with the response body stays small.
    row: Option<Box<PendingRow>>,
    /// Keeps the client connection busy (not waiting for a head) until the response is
    /// sent or abandoned.
    _busy: Busy,
}

impl Recording {
    /// Time since arrival, in the upstream's clock (`clock_speedup`).
    fn offset_us(&self) -> u64 {
        self.offset_us_at(Instant::now())
    }

    /// [`Recording::offset_us`] at `now`.
    fn offset_us_at(&self, now: Instant) -> u64 {
        let real_us = now.saturating_duration_since(self.arrival).as_micros() as f64;
        (real_us * self.shared.config.clock_speedup) as u64
    }

    fn finish(&mut self, outcome: Outcome) {
        self.finish_after(outcome, None);
    }

    /// The row being filled in (`None` once handed over).
    fn row(&mut self) -> Option<&mut PendingRow> {
        self.row.as_deref_mut()
    }

    /// Records the response status (or the one the proxy answered with).
    fn set_status(&mut self, status: u16) {
        if let Some(row) = self.row() {
            row.status = Some(status);
        }
    }

    /// [`Recording::finish`] with the response's last frame (and its arrival offset) not yet
    /// fed to the observer. The frame's observation and the row's hand-over then run in a
    /// task of their own, after this connection has written the frame: when a whole
    /// response arrives in one read (a non-streamed answer, a stream's tail), observing it
    /// is most of a request's recording work, and the client need not wait for it.
    fn finish_after(&mut self, outcome: Outcome, last: Option<(Bytes, u64)>) {
        let Some(mut row) = self.row.take() else {
            return;
        };
        let end_us = self.offset_us();
        let shared = self.shared.clone();
        shared.stats.finished(row.status, outcome);
        // Only moves here: parsing, tokenizing and hashing happen on the writer thread.
        if let Ok(mut tee) = self.tee.lock() {
            let usable = tee.complete && !tee.overflow;
            row.request_bytes = Some(tee.bytes);
            if usable && row.info.is_none() {
                row.request_body = Some(std::mem::take(&mut tee.buf));
            }
        }
        row.outcome = outcome;
        row.end_us = end_us;
        let handover = RowHandover {
            shared,
            row: Some(row),
            last,
        };
        if handover.last.is_some() {
            // Queued from inside the connection's poll, it is handled once that poll has
            // returned, that is after hyper has flushed the frame. A closed queue hands the
            // hand-over back, and dropping it does the work now.
            let _ = self.shared.handovers.send(handover);
        } else {
            drop(handover);
        }
    }
}

/// A finished request's row on its way to the recorder, with the response's last frame
/// still to observe. Dropping it does the work, so a queue that a shutting-down runtime
/// drops unread still records its rows; the request counts as in flight until then, so a
/// graceful shutdown waits for it.
pub(crate) struct RowHandover {
    shared: Arc<Shared>,
    row: Option<Box<PendingRow>>,
    last: Option<(Bytes, u64)>,
}

impl Drop for RowHandover {
    fn drop(&mut self) {
        let Some(mut row) = self.row.take() else {
            return;
        };
        if let (Some((data, at_us)), Some(observer)) = (self.last.take(), row.observer.as_mut()) {
            observer.feed(&data, at_us);
        }
        self.shared.recorder.record(row);
        self.shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (or the proxy shut down hard).
        self.finish(Outcome::ClientCancelled);
    }
}

/// The response body sent to the client.
pub(crate) enum ProxyBody {
    /// A short body made by the proxy (errors).
    Full(Option<Bytes>),
    /// The upstream's body, observed as it passes.
    Stream(Box<ResponseBody>),
}

impl ProxyBody {
    fn text(text: &'static str) -> ProxyBody {
        ProxyBody::Full(Some(Bytes::from_static(text.as_bytes())))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Stream(body) => Pin::new(body.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Stream(body) if body.strip.is_none() => body.inner.size_hint(),
            ProxyBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// The upstream's response body on its way to the client.
pub(crate) struct ResponseBody {
    inner: UpstreamBody,
    recording: Recording,
    /// The request's one timer (first the first-byte timeout): fires at the latest an idle
    /// timeout after the last frame. It is not moved at every frame; when it fires early,
    /// it is set again from `last_frame`.
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_frame: tokio::time::Instant,
    /// Set when the proxy injected `include_usage`: drops the usage-only event.
    strip: Option<EventSplitter>,
    /// The upstream's trailers, held back one poll while the splitter's tail goes first.
    held_trailers: Option<Frame<Bytes>>,
    finished: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream went silent for longer than the idle timeout")]
struct IdleTimeout;

impl ResponseBody {
    /// The upstream body ended: records the row (after observing `last`, the last frame,
    /// when the proxy has not yet) and returns what the splitter still holds (an event
    /// without its final blank line), to be forwarded as is.
    fn end(&mut self, last: Option<(Bytes, u64)>) -> Option<Bytes> {
        self.finished = true;
        let tail = self
            .strip
            .take()
            .map(|s| Bytes::copy_from_slice(s.remainder()))
            .filter(|r| !r.is_empty());
        if let Some(conn) = self.inner.take_reusable() {
            self.recording.shared.upstream.put_back(conn);
        }
        let ok = self
            .recording
            .row()
            .and_then(|row| row.status)
            .is_some_and(|s| (200..300).contains(&s));
        let outcome = if ok { Outcome::Ok } else { Outcome::HttpError };
        self.recording.finish_after(outcome, last);
        tail
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper never polls a body it knows is empty (Content-Length: 0, e.g. a 200 from
        // /health): that response ended normally, it was not cancelled by the client.
        if !self.finished && self.inner.is_end_stream() {
            self.end(None);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(trailers) = this.held_trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let now = tokio::time::Instant::now();
                    this.last_frame = now;
                    // With a Content-Length, hyper stops polling once every byte is sent:
                    // the end is recorded with the last frame, not on a later poll.
                    let ended = this.inner.is_end_stream();
                    let Some(data) = frame.data_ref() else {
                        // Trailers: the last frame of a chunked body.
                        let frame = match frame.into_trailers() {
                            Ok(fields) => {
                                let fields = forwardable_trailers(fields);
                                (!fields.is_empty()).then(|| Frame::trailers(fields))
                            }
                            Err(other) => Some(other),
                        };
                        if ended {
                            if let Some(tail) = this.end(None) {
                                // What the splitter still held goes before the trailers.
                                this.held_trailers = frame;
                                return Poll::Ready(Some(Ok(Frame::data(tail))));
                            }
                        }
                        match frame {
                            Some(frame) => return Poll::Ready(Some(Ok(frame))),
                            None if ended => return Poll::Ready(None),
                            None => continue,
                        }
                    };
                    let at_us = this.recording.offset_us_at(now.into_std());
                    if ended {
                        // Observed after the client has it (`Recording::finish_after`).
                    } else if let Some(observer) =
                        this.recording.row().and_then(|row| row.observer.as_mut())
                    {
                        observer.feed(data, at_us);
                    }
                    let Some(splitter) = this.strip.as_mut() else {
                        if ended {
                            this.end(Some((data.clone(), at_us)));
                        }
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    let mut kept = BytesMut::new();
                    splitter.push_each(data, |raw, data| {
                        if !data.is_some_and(is_usage_only) {
                            kept.extend_from_slice(raw);
                        }
                    });
                    if ended {
                        if let Some(tail) = this.end(Some((data.clone(), at_us))) {
                            kept.extend_from_slice(&tail);
                        }
                    }
                    if kept.is_empty() {
                        if ended {
                            return Poll::Ready(None);
                        }
                        continue; // the whole frame was the injected usage event (or partial)
                    }
                    return Poll::Ready(Some(Ok(Frame::data(kept.freeze()))));
                }
                Poll::Ready(Some(Err(err))) => {
                    this.finished = true;
                    this.recording.finish(Outcome::UpstreamError);
                    return Poll::Ready(Some(Err(err.into())));
                }
                Poll::Ready(None) => {
                    let tail = this.end(None);
                    return Poll::Ready(tail.map(|t| Ok(Frame::data(t))));
                }
                Poll::Pending => {
                    while this.idle.as_mut().poll(cx).is_ready() {
                        let deadline = this.last_frame + this.idle_timeout;
                        if deadline <= tokio::time::Instant::now() {
                            this.finished = true;
                            this.recording.finish(Outcome::Timeout);
                            return Poll::Ready(Some(Err(Box::new(IdleTimeout))));
                        }
                        // A frame came since it was set: wait out the rest.
                        this.idle.as_mut().reset(deadline);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished && self.held_trailers.is_none()
    }
}

/// Fields that may not be sent as trailers (RFC 9110 §6.5.1; the set hyper's HTTP/1.1
/// encoder refuses), besides the hop-by-hop ones: an HTTP/2 client would see a stream
/// reset for some of them.
static NOT_TRAILERS: [HeaderName; 10] = [
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::CONTENT_ENCODING,
    header::CONTENT_LENGTH,
    header::CONTENT_RANGE,
    header::CONTENT_TYPE,
    header::HOST,
    header::MAX_FORWARDS,
    header::SET_COOKIE,
    header::TRAILER,
];

/// The upstream's trailer fields that are forwarded: all but hop-by-hop fields (and what
/// a `Connection` trailer names) and fields not allowed in trailers.
fn forwardable_trailers(mut fields: HeaderMap) -> HeaderMap {
    strip_hop_by_hop(&mut fields);
    for name in &NOT_TRAILERS {
        fields.remove(name);
    }
    fields
}

pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

const X_SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");

/// The hop-by-hop headers of RFC 9110 §7.6.1, and two that clients still send. `Trailer`
/// (RFC 2616's list had it) is end to end: it announces the trailer fields, which are
/// forwarded.
const HOP_BY_HOP_COUNT: usize = 8;
const HOP_BY_HOP_NAMES: [&str; HOP_BY_HOP_COUNT] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];
pub(crate) static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    HeaderName::from_static(HOP_BY_HOP_NAMES[0]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[1]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[2]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[3]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[4]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[5]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[6]),
    HeaderName::from_static(HOP_BY_HOP_NAMES[7]),
];

/// Bit `n` is set when a hop-by-hop name is `n` bytes long.
const HOP_BY_HOP_LENGTHS: u64 = {
    let mut mask = 0;
    let mut i = 0;
    while i < HOP_BY_HOP_COUNT {
        mask |= 1 << HOP_BY_HOP_NAMES[i].len();
        i += 1;
    }
    mask
};

/// Whether `name` is one of [`HOP_BY_HOP`]. Its length is looked at first: most fields
/// have none of those lengths, and are then told apart in one test instead of eight
/// comparisons.
#[inline]
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    let len = name.as_str().len();
    len < 64 && HOP_BY_HOP_LENGTHS >> len & 1 == 1 && HOP_BY_HOP.contains(name)
}

/// The elements of a comma-separated list header (RFC 9110 §5.6.1), every line of it,
/// trimmed.
pub(crate) fn list_tokens<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether the list header `name` has the element `token` (case-insensitive), as
/// `Connection: close` or `TE: trailers`.
pub(crate) fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): the fixed list and every header the
/// Connection header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which listed ones are there (most heads carry none,
    // or only Transfer-Encoding), instead of a hashed removal per listed name.
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    // HOP_BY_HOP[0] is Connection: the names it lists go too.
    if present[0] {
        let named: Vec<HeaderName> = list_tokens(headers, &header::CONNECTION)
            .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

fn error_response(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::text(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if e.to_string().contains("timed out") {
            return true;
        }
        current = e.source();
    }
    false
}

/// The request body, when all of it went through the tee (complete, within the cap).
fn replayable_body(tee: &Mutex<Tee>) -> Option<Bytes> {
    let tee = tee.lock().ok()?;
    (tee.complete && !tee.overflow && tee.buf.len() as u64 == tee.bytes)
        .then(|| Bytes::copy_from_slice(&tee.buf))
}

/// The timer fired before `future` was ready.
struct Elapsed;

/// `future`'s output, or [`Elapsed`] once `timer` fires first.
async fn within<T>(
    mut timer: Pin<&mut Sleep>,
    future: impl Future<Output = T>,
) -> Result<T, Elapsed> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        timer.as_mut().poll(cx).map(|()| Err(Elapsed))
    })
    .await
}

/// Handles one client request. Never fails: upstream trouble becomes a 502/504.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
    peer: Arc<Peer>,
    busy: Busy,
) -> Result<Response<ProxyBody>, Infallible> {
    let arrival = Instant::now();
    // Arrival in the upstream's clock: the proxy's start plus scaled elapsed time.
    let since_start_us = arrival.duration_since(shared.start).as_micros() as f64;
    let arrival_us = shared.start_us + (since_start_us * shared.config.clock_speedup) as i64;
    shared.stats.requests_total.fetch_add(1, Ordering::Relaxed);
    shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let config = &shared.config;
    let endpoint = Endpoint::from_path(request.uri().path());
    let session_id = request
        .headers()
        .get(X_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(128).collect());
    let tee = Arc::new(Mutex::new(Tee::default()));
    let mut recording = Recording {
        shared: shared.clone(),
        arrival,
        tee: tee.clone(),
        row: Some(Box::new(PendingRow {
            request_number: shared.next_request_number(),
            session_id,
            arrival_us,
            endpoint: endpoint.clone(),
            request_bytes: None,
            request_body: None,
            info: None,
            status: None,
            // Set when the request ends.
            outcome: Outcome::Ok,
            observer: None,
            end_us: 0,
        })),
        _busy: busy,
    };

    let (mut parts, body) = request.into_parts();
    let Ok(based_target) = based_target(&parts, &config.upstream.base_path) else {
        tracing::debug!("cannot build the upstream request target");
        recording.set_status(400);
        recording.finish(Outcome::HttpError);
        return Ok(error_response(
            StatusCode::BAD_REQUEST,
            "retrace proxy: bad request target\n",
        ));
    };

    let recognized = !matches!(endpoint, Endpoint::Other(_));
    let is_head = parts.method == http::Method::HEAD;
    // The whole request body, when it is known to be in memory: allows one retry on a
    // pooled connection the upstream closed under us.
    let mut replay: Option<Bytes> = None;
    let mut strip_usage = false;
    let forward_body = if config.include_usage && recognized && parts.method == http::Method::POST {
        // Read ahead up to the cap so the body can be rewritten before it goes upstream.
        let mut body = body;
        let mut buf = BytesMut::new();
        let mut pending = None;
        let mut ended = body.is_end_stream();
        while !ended && buf.len() <= config.max_parse_bytes {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => buf.extend_from_slice(&data),
                    Err(frame) => {
                        pending = Some(frame);
                        break;
                    }
                },
                Some(Err(err)) => {
                    tracing::debug!(error = %err, "client request body failed");
                    return Ok(error_response(
                        StatusCode::BAD_REQUEST,
                        "retrace proxy: request body failed\n",
                    ));
                }
                None => ended = true,
            }
        }
        let mut prefix = buf.freeze();
        let parsed_whole = ended && pending.is_none() && prefix.len() <= config.max_parse_bytes;
        if parsed_whole {
            let info = request_info::parse(&endpoint, &prefix);
            if let Some(info) = &info {
                if info.stream && !info.client_asked_usage {
                    if let Some(rewritten) = request_info::inject_include_usage(&prefix) {
                        prefix = Bytes::from(rewritten);
                        strip_usage = true;
                        parts
                            .headers
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(prefix.len()));
                    }
                }
            }
            if let Some(row) = recording.row() {
                row.info = info;
            }
        }
        if let Ok(mut t) = tee.lock() {
            t.bytes = prefix.len() as u64;
            t.complete = ended;
            t.overflow = !parsed_whole;
        }
        if ended && pending.is_none() {
            replay = Some(prefix.clone());
        }
        ForwardBody {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            pending,
            rest: if ended { None } else { Some(body) },
            tee: tee.clone(),
            copy: false,
            cap: config.max_parse_bytes,
        }
    } else {
        ForwardBody {
            prefix: None,
            pending: None,
            rest: Some(body),
            tee: tee.clone(),
            // Copied for every path (parsed only for the two understood ones): the copy
            // is what a retry on a closed pooled connection resends.
            copy: true,
            cap: config.max_parse_bytes,
        }
    };

    let head = RequestHead::new(
        &parts,
        based_target.as_deref(),
        &peer,
        shared.upstream_host.as_ref(),
        config.preserve_host,
    );
    let mut forward_body = forward_body;
    let sent = Instant::now();
    // One timer for the request: the first-byte timeout, then the idle timeout.
    let mut timer = Box::pin(tokio::time::sleep(config.first_byte_timeout));
    let mut result = within(
        timer.as_mut(),
        shared.upstream.send(&head, &mut forward_body, false),
    )
    .await;
    if let Ok(Err(err)) = &result {
        // A keep-alive connection the upstream closed just as we reused it fails before
        // any response: the request was not processed, so it is sent once more on a new
        // connection, when its body can be replayed from memory.
        let body = replay.or_else(|| replayable_body(&tee));
        if let (true, Some(body)) = (err.closed_before_response(), body) {
            tracing::debug!(error = %err, "upstream closed a pooled connection: retrying once");
            let mut retry_body = ForwardBody {
                prefix: Some(body).filter(|b| !b.is_empty()),
                pending: None,
                rest: None,
                tee: tee.clone(),
                copy: false,
                cap: config.max_parse_bytes,
            };
            result = within(
                timer.as_mut(),
                shared.upstream.send(&head, &mut retry_body, true),
            )
            .await;
        }
    }
    drop(forward_body);
    let upstream_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
    shared.stats.upstream_latency.observe(upstream_us);
    let response = match result {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => {
            let timeout = is_timeout(&err);
            tracing::debug!(error = %err, connect = err.is_connect(), "upstream request failed");
            let (status, outcome, text) = if timeout {
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    Outcome::Timeout,
                    "retrace proxy: upstream timed out\n",
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    Outcome::UpstreamError,
                    "retrace proxy: upstream unreachable\n",
                )
            };
            recording.set_status(status.as_u16());
            recording.finish(outcome);
            return Ok(error_response(status, text));
        }
        Err(_) => {
            recording.set_status(StatusCode::GATEWAY_TIMEOUT.as_u16());
            recording.finish(Outcome::Timeout);
            return Ok(error_response(
                StatusCode::GATEWAY_TIMEOUT,
                "retrace proxy: upstream sent no response in time\n",
            ));
        }
    };

    // The upstream client left the hop-by-hop fields out.
    // The request's field map, emptied, holds the pooled connection's next response head.
    let request_fields = std::mem::take(&mut parts.headers);
    let (mut parts, mut body) = response;
    body.recycle_fields(request_fields);
    let is_success = parts.status.is_success();
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
    if strip_usage && is_success && is_sse {
        parts.headers.remove(header::CONTENT_LENGTH);
    } else {
        strip_usage = false;
    }
    recording.set_status(parts.status.as_u16());
    let status = parts.status;
    if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // No body follows (and hyper would not poll one): the request ends with its head.
        drop(body);
        recording.finish(if is_success {
            Outcome::Ok
        } else {
            Outcome::HttpError
        });
        return Ok(Response::from_parts(parts, ProxyBody::Full(None)));
    }
    let observer_endpoint = if recognized {
        endpoint
    } else {
        Endpoint::Other(String::new())
    };
    let mut observer = StreamObserver::new(observer_endpoint);
    if config.capture_content && recognized {
        observer = observer.capture_text(config.capture_max_bytes);
    }
    if let Some(row) = recording.row() {
        row.observer = Some(observer);
    }
    let total_us = u64::try_from(arrival.elapsed().as_micros()).unwrap_or(u64::MAX);
    shared
        .stats
        .added_latency
        .observe(total_us.saturating_sub(upstream_us));
    let last_frame = tokio::time::Instant::now();
    timer.as_mut().reset(last_frame + config.idle_timeout);
    let body = ResponseBody {
        inner: body,
        recording,
        idle: timer,
        idle_timeout: config.idle_timeout,
        last_frame,
        strip: strip_usage.then(EventSplitter::new),
        held_trailers: None,
        finished: false,
    };
    Ok(Response::from_parts(
        parts,
        ProxyBody::Stream(Box::new(body)),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::{SinkFactory, Upstream};
    use crate::connector::UpstreamConnector;
    use crate::record::{RowSink, SinkError, WriterThread};
    use crate::row::RowContext;
    use retrace_traces::RequestRow;

    /// Rows kept in memory.
    #[derive(Clone, Default)]
    struct Rows(Arc<Mutex<Vec<RequestRow>>>);

    impl RowSink for Rows {
        fn push(&mut self, row: RequestRow) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(row);
            Ok(())
        }
        fn tick(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
        fn buffered_rows(&self) -> u64 {
            0
        }
        fn bytes_written(&self) -> u64 {
            0
        }
        fn close(self: Box<Self>) -> Result<u64, SinkError> {
            Ok(0)
        }
    }

    /// A proxy's shared state with its recorder writing into `rows` (no listener, and an
    /// upstream that is never dialled), and its hand-over queue's task, not started.
    fn shared_into(
        rows: &Rows,
    ) -> (
        Arc<Shared>,
        WriterThread,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let upstream = Upstream::parse("http://127.0.0.1:9").unwrap();
        let config = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            upstream,
            std::path::PathBuf::from("unused"),
        );
        let stats = Arc::new(Stats::new());
        let sink = rows.clone();
        let factory: SinkFactory = Arc::new(move || Ok(Box::new(sink.clone()) as Box<dyn RowSink>));
        let context = RowContext {
            tokenizer: None,
            block_tokens: 512,
            capture_content: false,
            capture_max_bytes: 0,
            id_prefix: "t".into(),
        };
        let (recorder, writer) =
            Recorder::start(factory, 16, 1 << 20, stats.clone(), context).unwrap();
        let client = UpstreamClient::new(
            UpstreamConnector::new(None, Duration::from_secs(1)),
            http::Uri::from_static("http://127.0.0.1:9/"),
            Duration::from_secs(4),
            4,
        );
        let (handovers, queue) = handover_queue();
        let shared = Arc::new(Shared {
            config,
            upstream: client,
            recorder,
            stats,
            id_counter: AtomicU64::new(0),
            upstream_host: None,
            start_us: 0,
            start: Instant::now(),
            handovers,
        });
        (shared, writer, queue)
    }

    /// The hand-over of a response's last frame waits in a queue worked by a task; a
    /// runtime that shuts down before running that task drops it, and the drop must still
    /// observe the frame and record the row (a graceful shutdown loses no rows).
    #[test]
    fn the_hop_by_hop_test_by_length_agrees_with_the_list() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        // Other fields, some of a hop-by-hop name's length or nearly its name.
        for other in [
            "content-type",
            "trailer",
            "host",
            "x-keep-alive",
            "tee",
            "upgrades",
            "connections",
            "proxy-connectio",
            "te-x",
            "t",
            "x-connection",
            "via",
            "transfer-encodinx",
            "proxy-authorizatio",
            "date",
            "cache-control",
            "x-a-header-name-that-is-longer-than-sixty-four-bytes-in-all-of-it",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(is_hop_by_hop(&name), HOP_BY_HOP.contains(&name), "{other}");
            assert!(!is_hop_by_hop(&name), "{other}");
        }
    }

    #[test]
    fn issue_4_a_row_handover_dropped_unrun_still_observes_its_last_frame_and_records() {
        let rows = Rows::default();
        let (shared, writer, queue) = shared_into(&rows);
        shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let row = Box::new(PendingRow {
            request_number: 0,
            session_id: None,
            arrival_us: 0,
            endpoint: Endpoint::Completions,
            request_bytes: Some(2),
            request_body: None,
            info: None,
            status: Some(200),
            outcome: Outcome::Ok,
            observer: Some(StreamObserver::new(Endpoint::Completions)),
            end_us: 900,
        });
        let last = Bytes::from_static(
            b"data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n\
              data: {\"choices\":[{\"index\":0,\"text\":\"b\",\"finish_reason\":\"stop\"}]}\n\n\
              data: [DONE]\n\n",
        );
        let handover = RowHandover {
            shared: shared.clone(),
            row: Some(row),
            last: Some((last, 800)),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        drop(runtime.spawn(queue));
        assert!(shared.handovers.send(handover).is_ok());
        assert_eq!(shared.stats.in_flight.load(Ordering::Relaxed), 1);
        drop(runtime); // shut down without ever polling the task
        assert_eq!(shared.stats.in_flight.load(Ordering::Relaxed), 0);
        writer.stop();
        let rows = rows.0.lock().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].request_id, "t-0000000000");
        assert_eq!(rows[0].output_tokens, Some(2));
        assert_eq!(rows[0].ttft_us, Some(800));
        assert_eq!(rows[0].finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn trailers_lose_hop_by_hop_and_forbidden_fields() {
        let mut fields = HeaderMap::new();
        for (name, value) in [
            ("x-checksum", "abc"),
            ("grpc-status", "0"),
            ("keep-alive", "timeout=5"),
            ("connection", "x-private"),
            ("x-private", "1"),
            ("content-length", "5"),
            ("set-cookie", "a=b"),
            ("te", "gzip"),
        ] {
            fields.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let kept = forwardable_trailers(fields);
        let mut names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["grpc-status", "x-checksum"]);
    }
}
