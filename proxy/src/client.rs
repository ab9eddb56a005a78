//! The upstream leg: a small HTTP/1.1 client with a connection pool, in the request's
//! own task. The response body is read straight off the upstream socket by the client's
//! response body, and everything one read brings is forwarded as one frame: the proxy
//! makes about one read and one write per side per request, as nginx does, instead of a
//! channel hop, a task wake-up and a write for every upstream frame (hyper's pooled
//! client runs each connection in its own task and hands the body over frame by frame).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::connector::{UpstreamConnector, UpstreamStream};
use crate::forward::{is_hop_by_hop, BoxError, ForwardBody};
use crate::head::RequestHead;

/// Longest response head accepted (status line and headers).
const MAX_HEAD_BYTES: usize = 64 << 10;
/// Most response headers accepted (hyper's default).
const MAX_HEADERS: usize = 100;
/// Response fields whose places are kept on the stack (more take a vector).
const INLINE_FIELDS: usize = 24;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE_BYTES: usize = 4 << 10;
/// Request body bytes gathered before they are written (frames already there are sent
/// together; a large body is still streamed).
const MAX_GATHER_BYTES: usize = 256 << 10;
/// Room made in the write buffer for a request head (and a small body).
const WRITE_BUF_BYTES: usize = 1024;
/// Largest write buffer a connection keeps between requests.
const MAX_KEPT_WRITE_BUF_BYTES: usize = 16 << 10;
/// Room made in a read buffer before the first read; doubled (up to the max) each time
/// a read fills it, as hyper does, so a large body takes few reads.
const READ_CHUNK_BYTES: usize = 16 << 10;
const MAX_READ_CHUNK_BYTES: usize = 512 << 10;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// No connection could be made (refused, DNS, TLS, connect timeout).
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] BoxError),
    /// The connection closed before any byte of a response came.
    #[error("the upstream closed the connection before responding")]
    Closed,
    /// The connection failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The upstream broke HTTP/1.1.
    #[error("invalid upstream response: {0}")]
    Invalid(&'static str),
    /// The client's request body failed while it was being forwarded.
    #[error("client request body: {0}")]
    Body(#[source] BoxError),
}

impl UpstreamError {
    /// Whether the request can be sent again on a new connection: the upstream closed or
    /// reset the connection before any response came (a pooled connection it closed just
    /// as it was reused), not a timeout or a connect failure.
    pub(crate) fn closed_before_response(&self) -> bool {
        match self {
            UpstreamError::Closed => true,
            UpstreamError::Io(err) => matches!(
                err.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }

    /// Whether this is a connect failure.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// One upstream connection and the bytes read from it but not used yet.
pub(crate) struct Conn {
    io: UpstreamStream,
    buf: BytesMut,
    /// Room to make before the next read.
    read_bytes: usize,
    /// The request write buffer, kept for the connection's next request.
    write_buf: BytesMut,
    /// An empty field map for the next response head (a request's, recycled).
    spare_fields: HeaderMap,
}

impl Conn {
    /// An idle pooled connection is usable when reading it would block: no EOF, no reset,
    /// no stray bytes. (tokio answers from cached readiness, usually without a syscall.)
    fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// The pooled HTTP/1.1 client of one upstream.
pub(crate) struct UpstreamClient {
    connector: UpstreamConnector,
    /// `scheme://authority/` of the upstream, for the connector.
    target: Uri,
    /// Idle connections, oldest first; the newest is reused first.
    idle: Arc<Mutex<VecDeque<Idle>>>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl UpstreamClient {
    pub(crate) fn new(
        connector: UpstreamConnector,
        target: Uri,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        UpstreamClient {
            connector,
            target,
            idle: Arc::new(Mutex::new(VecDeque::new())),
            idle_timeout,
            max_idle,
        }
    }

    fn checkout(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some(mut entry) = idle.pop_back() {
            if now.duration_since(entry.since) < self.idle_timeout && entry.conn.is_usable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Returns a connection whose last response ended cleanly to the pool.
    pub(crate) fn put_back(&self, conn: Box<Conn>) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let now = Instant::now();
        // Reap what went stale (the upstream closes idle connections on its own).
        while idle
            .front()
            .is_some_and(|e| now.duration_since(e.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { conn, since: now });
        }
    }

    /// Closes idle connections older than the idle timeout, once a second, until the
    /// client is dropped: without traffic nothing else would release them.
    pub(crate) fn reaper(&self) -> impl Future<Output = ()> + Send + 'static {
        let idle: Weak<Mutex<VecDeque<Idle>>> = Arc::downgrade(&self.idle);
        let idle_timeout = self.idle_timeout;
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(idle) = idle.upgrade() else { return };
                let Ok(mut idle) = idle.lock() else { return };
                let now = Instant::now();
                idle.retain(|e| now.duration_since(e.since) < idle_timeout);
            }
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, UpstreamError> {
        let mut connector = self.connector.clone();
        let io = tower_service::Service::call(&mut connector, self.target.clone())
            .await
            .map_err(UpstreamError::Connect)?;
        // Boxed: a connection moves between the pool and each response's body.
        Ok(Box::new(Conn {
            io: io.into_inner(),
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            read_bytes: READ_CHUNK_BYTES,
            write_buf: BytesMut::new(),
            spare_fields: HeaderMap::new(),
        }))
    }

    /// Sends one request and reads the response head. `fresh`: do not reuse a pooled
    /// connection. The body is streamed (frames already there go out together).
    pub(crate) async fn send(
        &self,
        head: &RequestHead<'_>,
        body: &mut ForwardBody,
        fresh: bool,
    ) -> Result<(http::response::Parts, UpstreamBody), UpstreamError> {
        let mut conn = match (!fresh).then(|| self.checkout()).flatten() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let sent = write_request(&mut conn, head, body).await;
        // A write may fail because the upstream already answered and closed (an early
        // error response): what it sent is still read.
        let response = read_head(&mut conn, head.method == Method::HEAD).await;
        match (sent, response) {
            (_, Ok((parts, kind, keep_alive))) => {
                Ok((parts, UpstreamBody::new(conn, kind, keep_alive)))
            }
            (Err(err), Err(_)) | (Ok(()), Err(err)) => Err(err),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Identity,
    Chunked,
}

fn encode_head(out: &mut BytesMut, head: &RequestHead<'_>, framing: Framing, length: Option<u64>) {
    head.encode(out);
    match (framing, length) {
        (Framing::Identity, Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (Framing::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

enum Next {
    Frame(Option<Result<Frame<Bytes>, BoxError>>),
    Flush,
}

async fn write_request(
    conn: &mut Conn,
    head: &RequestHead<'_>,
    body: &mut ForwardBody,
) -> Result<(), UpstreamError> {
    let has_length = head.has_content_length();
    let (framing, length) = if body.is_end_stream() {
        (Framing::None, None)
    } else if has_length {
        (Framing::Identity, None)
    } else if let Some(n) = body.size_hint().exact() {
        (Framing::Identity, Some(n))
    } else {
        (Framing::Chunked, None)
    };
    let mut out = std::mem::take(&mut conn.write_buf);
    out.clear();
    out.reserve(WRITE_BUF_BYTES);
    encode_head(&mut out, head, framing, length);
    let mut ended = framing == Framing::None;
    while !ended {
        // Take every frame already there; write when the body has nothing more right now.
        let next = poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
            Poll::Pending if !out.is_empty() => Poll::Ready(Next::Flush),
            Poll::Pending => Poll::Pending,
        })
        .await;
        match next {
            Next::Flush => {
                conn.io.write_all(&out).await?;
                out.clear();
            }
            Next::Frame(None) => ended = true,
            Next::Frame(Some(Err(err))) => return Err(UpstreamError::Body(err)),
            Next::Frame(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        if framing == Framing::Chunked {
                            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            out.extend_from_slice(&data);
                            out.extend_from_slice(b"\r\n");
                        } else {
                            out.extend_from_slice(&data);
                        }
                    }
                }
                ended = body.is_end_stream();
                if out.len() >= MAX_GATHER_BYTES {
                    conn.io.write_all(&out).await?;
                    out.clear();
                }
            }
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        conn.io.write_all(&out).await?;
    }
    conn.io.flush().await?;
    // Kept for the next request unless a large body grew it.
    if out.capacity() <= MAX_KEPT_WRITE_BUF_BYTES {
        conn.write_buf = out;
    }
    Ok(())
}

/// Reads more into the connection's buffer; returns the bytes read (0 at EOF).
fn poll_read_more(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < conn.read_bytes / 4 {
        conn.buf.reserve(conn.read_bytes);
    }
    let room = conn.buf.capacity() - conn.buf.len();
    let read = pin!(conn.io.read_buf(&mut conn.buf));
    let n = std::task::ready!(read.poll(cx))?;
    if n >= room {
        conn.read_bytes = (conn.read_bytes * 2).min(MAX_READ_CHUNK_BYTES);
    }
    Poll::Ready(Ok(n))
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

async fn read_head(
    conn: &mut Conn,
    head_request: bool,
) -> Result<(http::response::Parts, Kind, bool), UpstreamError> {
    let mut received = !conn.buf.is_empty();
    loop {
        if !conn.buf.is_empty() {
            if let Some(parsed) = parse_head(conn, head_request)? {
                return Ok(parsed);
            }
            if conn.buf.len() > MAX_HEAD_BYTES {
                return Err(UpstreamError::Invalid("response head too large"));
            }
        }
        let n = poll_fn(|cx| poll_read_more(conn, cx)).await?;
        if n == 0 {
            return Err(if received {
                UpstreamError::Invalid("connection closed in the response head")
            } else {
                UpstreamError::Closed
            });
        }
        received = true;
    }
}

/// Parses a complete head at the start of the buffer (skipping 1xx interim responses).
/// The fields come without the hop-by-hop ones (RFC 9110 §7.6.1: the fixed list and what
/// `Connection` names), their values sharing the read buffer.
fn parse_head(
    conn: &mut Conn,
    head_request: bool,
) -> Result<Option<(http::response::Parts, Kind, bool)>, UpstreamError> {
    loop {
        // Where each field's name and value are in the head (offsets, lengths), so that
        // the values can share the head's bytes once it is split off the buffer.
        // Room for the common case on the stack; a head with more fields takes a vector.
        let mut spans_inline = [[0u32; 4]; INLINE_FIELDS];
        let mut spans_heap = Vec::new();
        let (len, status, version, kind, keep_alive, connection, count) = {
            // Uninitialised: filling a hundred empty fields first cost more than a parse.
            let mut headers =
                [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut []);
            let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut response,
                &conn.buf,
                &mut headers,
            );
            let len = match parsed {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(UpstreamError::Invalid("too many headers"))
                }
                Err(_) => return Err(UpstreamError::Invalid("malformed response head")),
            };
            let code = response.code.unwrap_or(0);
            let status = StatusCode::from_u16(code)
                .map_err(|_| UpstreamError::Invalid("invalid status code"))?;
            let version = if response.version == Some(0) {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                conn.buf.advance(len);
                continue; // 100 Continue and the like: the real response follows
            }
            let fields = &*response.headers;
            let connection = ConnectionOptions::of(fields);
            let kind = body_kind(fields, status, head_request)?;
            // HTTP/1.1 persists unless told to close; HTTP/1.0 only with `keep-alive` (RFC
            // 9112 §9.3), and only for a length-delimited body (1.0 has no chunked framing).
            let keep_alive = kind != Kind::Close
                && !connection.close
                && (version == Version::HTTP_11
                    || (connection.keep_alive && !matches!(kind, Kind::Chunked(_))));
            let base = conn.buf.as_ptr() as usize;
            let offset = |piece: &[u8]| (piece.as_ptr() as usize - base) as u32;
            let spans = if fields.len() <= INLINE_FIELDS {
                &mut spans_inline[..fields.len()]
            } else {
                spans_heap.resize(fields.len(), [0u32; 4]);
                &mut spans_heap[..]
            };
            for (span, field) in spans.iter_mut().zip(fields) {
                let name = field.name.as_bytes();
                *span = [
                    offset(name),
                    name.len() as u32,
                    offset(field.value),
                    field.value.len() as u32,
                ];
            }
            (
                len,
                status,
                version,
                kind,
                keep_alive,
                connection,
                fields.len(),
            )
        };
        let head = conn.buf.split_to(len).freeze();
        let mut map = std::mem::take(&mut conn.spare_fields);
        map.reserve(count);
        let spans = if count <= INLINE_FIELDS {
            &spans_inline[..count]
        } else {
            &spans_heap[..]
        };
        for &[name_at, name_len, value_at, value_len] in spans {
            let (name_at, value_at) = (name_at as usize, value_at as usize);
            let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
                .map_err(|_| UpstreamError::Invalid("invalid header name"))?;
            if is_hop_by_hop(&name) || connection.names(&name) {
                continue;
            }
            let value =
                HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len as usize))
                    .map_err(|_| UpstreamError::Invalid("invalid header value"))?;
            map.append(name, value);
        }
        let mut parts = http::Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = map;
        return Ok(Some((parts, kind, keep_alive)));
    }
}

/// A field value as text, as `HeaderValue::to_str` reads it (visible ASCII and tabs).
fn field_text(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (32..127).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// The elements of every line of the list field `name` (RFC 9110 §5.6.1), trimmed.
fn field_tokens<'h>(
    fields: &'h [httparse::Header<'h>],
    name: &'static str,
) -> impl Iterator<Item = &'h str> {
    fields
        .iter()
        .filter(move |f| f.name.eq_ignore_ascii_case(name))
        .filter_map(|f| field_text(f.value))
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// What a response's `Connection` lines say.
#[derive(Debug, Default)]
struct ConnectionOptions {
    close: bool,
    keep_alive: bool,
    /// The fields they name, hop-by-hop too (almost always none).
    named: Vec<HeaderName>,
}

impl ConnectionOptions {
    fn of(fields: &[httparse::Header<'_>]) -> ConnectionOptions {
        let mut options = ConnectionOptions::default();
        for token in field_tokens(fields, "connection") {
            if token.eq_ignore_ascii_case("close") {
                options.close = true;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                options.keep_alive = true;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                options.named.push(name);
            }
        }
        options
    }

    fn names(&self, name: &HeaderName) -> bool {
        !self.named.is_empty() && self.named.contains(name)
    }
}

fn body_kind(
    fields: &[httparse::Header<'_>],
    status: StatusCode,
    head_request: bool,
) -> Result<Kind, UpstreamError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Kind::Empty);
    }
    let is = |f: &httparse::Header<'_>, name: &str| f.name.eq_ignore_ascii_case(name);
    if let Some(last) = fields.iter().rev().find(|f| is(f, "transfer-encoding")) {
        let chunked_last = field_text(last.value)
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked_last {
            Kind::Chunked(Chunk::Size)
        } else {
            Kind::Close
        });
    }
    let mut length = None;
    for field in fields.iter().filter(|f| is(f, "content-length")) {
        let n: u64 = field_text(field.value)
            .and_then(|v| v.trim().parse().ok())
            .ok_or(UpstreamError::Invalid("invalid content-length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(UpstreamError::Invalid("conflicting content-length"));
        }
        length = Some(n);
    }
    Ok(length.map_or(Kind::Close, Kind::Length))
}

/// The upstream's response body, read from its connection by whoever polls it.
pub(crate) struct UpstreamBody {
    conn: Option<Box<Conn>>,
    kind: Kind,
    keep_alive: bool,
    done: bool,
    /// Trailer fields of a chunked body (never empty), handed on as a last frame once it
    /// ended.
    trailers: Option<HeaderMap>,
}

impl UpstreamBody {
    fn new(conn: Box<Conn>, kind: Kind, keep_alive: bool) -> UpstreamBody {
        UpstreamBody {
            conn: Some(conn),
            done: matches!(kind, Kind::Empty | Kind::Length(0)),
            kind,
            keep_alive,
            trailers: None,
        }
    }

    /// Keeps `fields`, emptied, for the connection's next response head: a map that
    /// already has room costs no allocation.
    pub(crate) fn recycle_fields(&mut self, mut fields: HeaderMap) {
        if let Some(conn) = self.conn.as_mut() {
            fields.clear();
            conn.spare_fields = fields;
        }
    }

    /// The connection, once the body ended cleanly and it can carry another request.
    pub(crate) fn take_reusable(&mut self) -> Option<Box<Conn>> {
        if self.done && self.keep_alive {
            self.conn.take().filter(|c| c.buf.is_empty())
        } else {
            None
        }
    }

    /// Takes every body byte decodable from the buffer, as one piece.
    fn decode(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        match &mut self.kind {
            Kind::Empty => {
                self.done = true;
                Ok(None)
            }
            Kind::Length(left) => {
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                if *left == 0 {
                    self.done = true;
                }
                Ok((n > 0).then(|| buf.split_to(n).freeze()))
            }
            Kind::Close => Ok((!buf.is_empty()).then(|| buf.split().freeze())),
            Kind::Chunked(state) => {
                // Read at an index and the buffer advanced once at the end: servers send a
                // chunk an event, and each `BytesMut::advance` costs more than the chunk's
                // own parsing.
                let mut at = 0;
                // The data pieces are moved together in place (each right after the one
                // before: chunk framing only ever sits between them), then handed over as
                // one piece without a copy: one frame, one write, no allocation.
                let mut data: Option<std::ops::Range<usize>> = None;
                loop {
                    let rest = &buf[at..];
                    match state {
                        Chunk::Size => {
                            // The common chunk, whole in the buffer, in one step: what the
                            // states below do with it, without a line search or a state
                            // change per part (~100 instructions a chunk less; a stream
                            // sends a chunk an event), and a run of them in one loop.
                            while let Some((start, size, used)) = whole_chunk(&buf[at..]) {
                                gather(buf, &mut data, at + start, size);
                                at += used;
                            }
                            let rest = &buf[at..];
                            let Some((len, used)) = line_end(rest)? else {
                                break;
                            };
                            let size = chunk_size(&rest[..len])?;
                            at += used;
                            *state = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Chunk::Data(left) => {
                            if rest.is_empty() {
                                break;
                            }
                            let n = (*left).min(rest.len() as u64) as usize;
                            *left -= n as u64;
                            if *left == 0 {
                                *state = Chunk::DataEnd;
                            }
                            gather(buf, &mut data, at, n);
                            at += n;
                        }
                        Chunk::DataEnd => match rest.first() {
                            None => break,
                            Some(b'\n') => {
                                at += 1;
                                *state = Chunk::Size;
                            }
                            Some(b'\r') => match rest.get(1) {
                                None => break,
                                Some(b'\n') => {
                                    at += 2;
                                    *state = Chunk::Size;
                                }
                                Some(_) => {
                                    return Err(UpstreamError::Invalid("chunk without CRLF"))
                                }
                            },
                            Some(_) => return Err(UpstreamError::Invalid("chunk without CRLF")),
                        },
                        Chunk::Trailers => {
                            let Some((len, used)) = line_end(rest)? else {
                                break;
                            };
                            if len == 0 {
                                at += used;
                                self.done = true;
                                break;
                            }
                            // A field that does not parse is dropped, not the response.
                            if let Some((name, value)) = trailer_field(&rest[..len]) {
                                let fields = self.trailers.get_or_insert_with(HeaderMap::new);
                                if fields.len() < MAX_HEADERS {
                                    fields.append(name, value);
                                }
                            }
                            at += used;
                        }
                    }
                }
                Ok(match data {
                    Some(piece) => {
                        buf.advance(piece.start);
                        let data = buf.split_to(piece.len()).freeze();
                        buf.advance(at - piece.end);
                        Some(data)
                    }
                    None => {
                        buf.advance(at);
                        None
                    }
                })
            }
        }
    }
}

/// Adds the `len` data bytes at `at` to `data`, the piece gathered so far: moved in place
/// right after it (only chunk framing ever sits between two pieces), or starting it.
#[inline]
fn gather(buf: &mut [u8], data: &mut Option<std::ops::Range<usize>>, at: usize, len: usize) {
    match data {
        None => *data = Some(at..at + len),
        Some(piece) => {
            buf.copy_within(at..at + len, piece.end);
            piece.end += len;
        }
    }
}

/// The next line's length (without its CRLF or LF) and the bytes it takes with its line
/// end, if a whole line is in the buffer.
fn line_end(buf: &[u8]) -> Result<Option<(usize, usize)>, UpstreamError> {
    let scan = buf.len().min(MAX_LINE_BYTES + 2);
    let Some(lf) = memchr::memchr(b'\n', &buf[..scan]) else {
        if buf.len() > MAX_LINE_BYTES {
            return Err(UpstreamError::Invalid("chunk line too long"));
        }
        return Ok(None);
    };
    let len = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Ok(Some((len, lf + 1)))
}

/// One `name: value` line of a chunked body's trailer section.
fn trailer_field(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = memchr::memchr(b':', line)?;
    let name = HeaderName::from_bytes(&line[..colon]).ok()?;
    let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
    Some((name, value))
}

/// A whole non-empty chunk at the start of `buf` in its plain form, `HEX CRLF data CRLF`
/// (no extension, no bare LF): where its data starts, its size and the bytes it takes.
/// Anything else (a partial chunk, the last chunk, an extension, a framing error) is
/// `None`, left to the line-by-line states, which read a plain chunk the same way.
#[inline]
fn whole_chunk(buf: &[u8]) -> Option<(usize, usize, usize)> {
    let (size, digits) = hex_digits(buf, 15);
    if digits == 0 || size == 0 || buf.get(digits..digits + 2)? != b"\r\n" {
        return None;
    }
    let size = usize::try_from(size).ok()?;
    let start = digits + 2;
    let end = start.checked_add(size)?;
    if buf.get(end..end.checked_add(2)?)? != b"\r\n" {
        return None;
    }
    Some((start, size, end + 2))
}

/// Each byte's value as a hex digit; `NOT_HEX` for any other byte (one lookup a digit
/// instead of three range tests).
static HEX_DIGIT: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            d @ b'0'..=b'9' => d - b'0',
            d @ b'a'..=b'f' => d - b'a' + 10,
            d @ b'A'..=b'F' => d - b'A' + 10,
            _ => NOT_HEX,
        };
        b += 1;
    }
    table
};
const NOT_HEX: u8 = 0xff;

/// The value of the hex digits at the start of `bytes` (at most `max` of them) and how
/// many there are.
#[inline]
fn hex_digits(bytes: &[u8], max: usize) -> (u64, usize) {
    let mut value: u64 = 0;
    let mut digits = 0;
    for &b in bytes.iter().take(max) {
        let digit = HEX_DIGIT[usize::from(b)];
        if digit == NOT_HEX {
            break;
        }
        value = value << 4 | u64::from(digit);
        digits += 1;
    }
    (value, digits)
}

/// A chunk-size line: hex digits (at most 15), then nothing, or extensions after `;` or
/// whitespace.
fn chunk_size(line: &[u8]) -> Result<u64, UpstreamError> {
    let invalid = || UpstreamError::Invalid("invalid chunk size");
    // One digit more than allowed, to tell a too-long size from a valid one.
    let (size, digits) = hex_digits(line, 16);
    match line.get(digits) {
        _ if digits == 0 || digits > 15 => Err(invalid()),
        None | Some(b';' | b' ' | b'\t') => Ok(size),
        Some(_) => Err(invalid()),
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        let trailers =
            |this: &mut Self| Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
        loop {
            if this.done {
                return trailers(this);
            }
            match this.decode() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if this.done => return trailers(this),
                Ok(None) => {}
                Err(err) => {
                    this.conn = None;
                    this.done = true;
                    return Poll::Ready(Some(Err(err)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match poll_read_more(conn, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    this.done = true;
                    if this.kind == Kind::Close {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(UpstreamError::Invalid(
                        "connection closed before the end of the body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    this.conn = None;
                    this.done = true;
                    return Poll::Ready(Some(Err(UpstreamError::Io(err))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A connection whose upstream end has already written `wire` (and stays open).
    async fn conn_with(wire: &'static [u8]) -> (Box<Conn>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (mut server, _) = accepted.unwrap();
        server.write_all(wire).await.unwrap();
        let conn = Conn {
            io: UpstreamStream::Plain(client.unwrap()),
            buf: BytesMut::new(),
            read_bytes: READ_CHUNK_BYTES,
            write_buf: BytesMut::new(),
            spare_fields: HeaderMap::new(),
        };
        (Box::new(conn), server)
    }

    async fn body_of(mut conn: Box<Conn>, head_request: bool) -> (u16, Vec<Bytes>, bool) {
        let (parts, kind, keep_alive) = read_head(&mut conn, head_request).await.unwrap();
        let mut body = UpstreamBody::new(conn, kind, keep_alive);
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            // Trailers come last, once: `frames_of` is the reader that keeps them.
            if let Ok(data) = frame.unwrap().into_data() {
                frames.push(data);
            }
        }
        (
            parts.status.as_u16(),
            frames,
            body.take_reusable().is_some(),
        )
    }

    /// The frames of a body: data as `Ok`, then trailers as `Err`.
    async fn frames_of(mut conn: Box<Conn>) -> Vec<Result<Bytes, HeaderMap>> {
        let (_, kind, keep_alive) = read_head(&mut conn, false).await.unwrap();
        let mut body = UpstreamBody::new(conn, kind, keep_alive);
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            frames.push(frame.into_data().map_err(|f| f.into_trailers().unwrap()));
        }
        assert!(body.is_end_stream());
        frames
    }

    #[tokio::test]
    async fn response_heads_lose_their_hop_by_hop_fields() {
        let (mut conn, _server) = conn_with(
            b"HTTP/1.1 200 OK\r\n\
              Content-Type: text/event-stream\r\n\
              Connection: X-Hop, keep-alive\r\n\
              Keep-Alive: timeout=5\r\n\
              X-Hop: 1\r\n\
              Set-Cookie: a=1\r\n\
              Proxy-Connection: keep-alive\r\n\
              Upgrade: h2c\r\n\
              Transfer-Encoding: gzip, chunked\r\n\
              Trailer: x-checksum\r\n\
              Set-Cookie: b=2\r\n\
              \r\n\
              3\r\nabc\r\n0\r\n\r\n",
        )
        .await;
        let (parts, kind, keep_alive) = read_head(&mut conn, false).await.unwrap();
        let fields: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let field = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        assert_eq!(
            fields,
            [
                field("content-type", "text/event-stream"),
                field("set-cookie", "a=1"),
                field("set-cookie", "b=2"),
                field("trailer", "x-checksum"),
            ]
        );
        assert_eq!(kind, Kind::Chunked(Chunk::Size));
        assert!(keep_alive);
        // The body after the head is still there, whole.
        assert_eq!(&conn.buf[..], b"3\r\nabc\r\n0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_response_head_with_many_fields_keeps_them_all() {
        let mut wire = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
        for i in 0..INLINE_FIELDS + 6 {
            wire.push_str(&format!("x-field-{i}: value {i}\r\n"));
        }
        wire.push_str("\r\nok");
        let (mut conn, _server) = conn_with(Box::leak(wire.into_bytes().into_boxed_slice())).await;
        let (parts, kind, _) = read_head(&mut conn, false).await.unwrap();
        assert_eq!(kind, Kind::Length(2));
        assert_eq!(parts.headers.len(), INLINE_FIELDS + 7);
        for i in 0..INLINE_FIELDS + 6 {
            let value = parts.headers.get(format!("x-field-{i}")).unwrap();
            assert_eq!(value.to_str().unwrap(), format!("value {i}"));
        }
    }

    #[tokio::test]
    async fn trailers_are_a_last_frame() {
        let (conn, _server) = conn_with(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
              2\r\nhi\r\n0\r\nx-checksum: abc \r\nbad line\r\nx-n: 1\r\n\r\n",
        )
        .await;
        let frames = frames_of(conn).await;
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0], Ok(Bytes::from_static(b"hi")));
        let trailers = frames[1].clone().unwrap_err();
        assert_eq!(trailers.get("x-checksum").unwrap(), "abc");
        assert_eq!(trailers.get("x-n").unwrap(), "1");
        assert_eq!(trailers.len(), 2, "the line without a colon is dropped");
        // No trailer section: no trailers frame.
        let (conn, _server) =
            conn_with(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
                .await;
        assert_eq!(frames_of(conn).await, vec![Ok(Bytes::from_static(b"hi"))]);
    }

    #[tokio::test]
    async fn an_http_1_0_upstream_is_reused_only_with_keep_alive() {
        for (wire, reusable_expected) in [
            (
                &b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\ncontent-length: 2\r\n\r\nhi"[..],
                true,
            ),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nhi", false),
            (
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 2\r\n\r\nhi",
                false,
            ),
            (
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nhi",
                false,
            ),
        ] {
            let (conn, _server) = conn_with(wire).await;
            let (status, frames, reusable) = body_of(conn, false).await;
            assert_eq!(status, 200);
            assert_eq!(frames, vec![Bytes::from_static(b"hi")]);
            assert_eq!(
                reusable,
                reusable_expected,
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[tokio::test]
    async fn chunks_that_arrived_together_are_one_frame_and_the_connection_is_reused() {
        let (conn, _server) = conn_with(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ntrailer: x\r\n\r\n",
        )
        .await;
        let (status, frames, reusable) = body_of(conn, false).await;
        assert_eq!(status, 200);
        assert_eq!(frames, vec![Bytes::from_static(b"hello world")]);
        assert!(
            reusable,
            "a cleanly ended chunked body leaves the connection reusable"
        );
    }

    /// A chunked body decoded as it arrives, in pieces cut anywhere: the same data,
    /// trailers, and end, with nothing left in the buffer.
    #[tokio::test]
    async fn chunked_bodies_decode_the_same_whatever_the_reads() {
        // Extensions, bare LFs and plain chunks, one with upper-case hex: a plain chunk a
        // read holds whole is read in one step, one that a cut splits line by line.
        let wire: &[u8] = b"5;ext=1\r\nhello\r\n1\nx\n10\r\n0123456789abcdef\r\n\
                            3\r\nabc\r\nA\r\n0123456789\r\n2\r\nyz\r\n\
                            0\r\nx-sum: 7\r\n\r\n";
        let (conn, _server) = conn_with(b"").await;
        let mut body = UpstreamBody::new(conn, Kind::Chunked(Chunk::Size), true);
        let mut decode_in = |pieces: &[&[u8]]| {
            body.kind = Kind::Chunked(Chunk::Size);
            body.done = false;
            body.trailers = None;
            let mut data = Vec::new();
            for piece in pieces {
                body.conn.as_mut().unwrap().buf.extend_from_slice(piece);
                if let Some(bytes) = body.decode().unwrap() {
                    data.extend_from_slice(&bytes);
                }
            }
            let trailers = body.trailers.take().unwrap();
            assert!(body.done && body.conn.as_ref().unwrap().buf.is_empty());
            (data, trailers.get("x-sum").cloned())
        };
        let whole = decode_in(&[wire]);
        assert_eq!(whole.0, b"hellox0123456789abcdefabc0123456789yz");
        assert_eq!(whole.1, Some(HeaderValue::from_static("7")));
        for a in 0..wire.len() {
            for b in a..wire.len() {
                let pieces = [&wire[..a], &wire[a..b], &wire[b..]];
                assert_eq!(decode_in(&pieces), whole, "cut at {a} and {b}");
            }
        }
    }

    #[tokio::test]
    async fn length_close_and_head_bodies() {
        let (conn, _server) = conn_with(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc").await;
        let (_, frames, reusable) = body_of(conn, false).await;
        assert_eq!(frames.concat(), b"abc");
        assert!(reusable);
        let (conn, server) = conn_with(b"HTTP/1.1 200 OK\r\n\r\nuntil close").await;
        drop(server);
        let (_, frames, reusable) = body_of(conn, false).await;
        assert_eq!(frames.concat(), b"until close");
        assert!(!reusable, "a close-delimited body uses the connection up");
        let (conn, _server) = conn_with(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n").await;
        let (_, frames, reusable) = body_of(conn, true).await;
        assert!(frames.is_empty(), "a response to HEAD has no body");
        assert!(reusable);
    }

    #[test]
    fn chunk_size_lines() {
        for (line, size) in [
            (&b"0"[..], 0),
            (b"1a", 26),
            (b"1A;name=value", 26),
            (b"ff \t", 255),
            (b"fffffffffffffff", (1 << 60) - 1),
        ] {
            assert_eq!(chunk_size(line).ok(), Some(size), "{line:?}");
        }
        for line in [
            &b""[..],
            b"g",
            b"1g",
            b"-1",
            b";x",
            b"1000000000000000",
            b" 1",
        ] {
            assert!(chunk_size(line).is_err(), "{line:?}");
        }
        assert_eq!(line_end(b"1a\r\nrest").ok(), Some(Some((2, 4))));
        assert_eq!(line_end(b"1a\nrest").ok(), Some(Some((2, 3))));
        assert_eq!(line_end(b"1a\r").ok(), Some(None));
    }

    #[test]
    fn the_hex_digit_table_reads_what_to_digit_reads() {
        for b in 0..=u8::MAX {
            let expected = char::from(b).to_digit(16).map(|d| d as u8);
            let read = Some(HEX_DIGIT[usize::from(b)]).filter(|&d| d != NOT_HEX);
            assert_eq!(read, expected, "byte {b}");
        }
    }

    #[test]
    fn whole_chunks_are_read_in_one_step_and_anything_else_is_left_to_the_lines() {
        assert_eq!(whole_chunk(b"3\r\nabc\r\nrest"), Some((3, 3, 8)));
        assert_eq!(
            whole_chunk(b"1A\r\n0123456789abcdefghijklmnop\r\n"),
            Some((4, 26, 32))
        );
        for chunk in [
            &b"3\r\nabc\r"[..],
            b"3\r\nab",
            b"0\r\n\r\n",
            b"3;x=1\r\nabc\r\n",
            b"3\nabc\n",
            b"3\r\nabcd\r\n",
            // Sixteen digits: `chunk_size` rejects them, so the one-step reader must not
            // read them either.
            b"0000000000000003\r\nabc\r\n",
            b"\r\n",
        ] {
            assert_eq!(whole_chunk(chunk), None, "{chunk:?}");
        }
    }

    #[tokio::test]
    async fn bad_chunk_size_and_early_close_are_errors() {
        let (mut conn, _server) =
            conn_with(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n").await;
        let (_, kind, keep_alive) = read_head(&mut conn, false).await.unwrap();
        let mut body = UpstreamBody::new(conn, kind, keep_alive);
        assert!(body.frame().await.unwrap().is_err());
        // A whole chunk whose data is not followed by CRLF.
        let (mut conn, _server) =
            conn_with(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n").await;
        let (_, kind, keep_alive) = read_head(&mut conn, false).await.unwrap();
        let mut body = UpstreamBody::new(conn, kind, keep_alive);
        assert!(body.frame().await.unwrap().is_err());
        let (mut conn, server) =
            conn_with(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").await;
        drop(server);
        let (_, kind, keep_alive) = read_head(&mut conn, false).await.unwrap();
        let mut body = UpstreamBody::new(conn, kind, keep_alive);
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "abc"
        );
        assert!(
            body.frame().await.unwrap().is_err(),
            "EOF before the length is an error"
        );
        let (mut conn, server) = conn_with(b"").await;
        drop(server);
        let err = read_head(&mut conn, false).await.err().unwrap();
        assert!(err.closed_before_response());
    }
}
