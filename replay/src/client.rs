//! The HTTP client: hyper-util's legacy pooled client (HTTP/1.1 keep-alive, a large pool)
//! over plain TCP or rustls (ring provider, webpki roots).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The pooled client replay sends with.
pub(crate) type HttpClient = Client<Connector, Full<Bytes>>;

/// A plain or TLS connection over a time-stamped TCP stream.
pub(crate) enum Conn {
    Plain(TokioIo<Stamped>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<Stamped>>>),
}

/// When a connection last wrote a request and read response bytes, taken at the socket
/// (below TLS) as the syscalls happen, so a request's send and its response's bytes are
/// not timed late when the request's task runs after others on a busy runtime. Handed to
/// every response of the connection as an extension (hyper-util's `Connected::extra`).
#[derive(Clone, Default)]
pub(crate) struct WireStamps(Arc<Mutex<Stamps>>);

#[derive(Default)]
struct Stamps {
    /// The first write since the connection last read: the current request's head.
    request_written: Option<Instant>,
    /// Whether the connection has written since it last read.
    writing: bool,
    /// The first read that returned bytes since [`WireStamps::take_read`].
    read: Option<Instant>,
}

impl WireStamps {
    fn lock(&self) -> std::sync::MutexGuard<'_, Stamps> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wrote(&self) {
        let mut s = self.lock();
        if !s.writing {
            s.writing = true;
            s.request_written = Some(Instant::now());
            // A read not taken by the previous exchange (its last bytes, read after its
            // last frame was handed over) is not this request's response: left here, it
            // timed this response's head and first token before the request was sent
            // (TTFT 0 in CI, on a kept-alive connection).
            s.read = None;
        }
    }

    /// A read returned bytes that reached the socket at `at`.
    fn read_bytes(&self, at: Instant) {
        let mut s = self.lock();
        s.writing = false;
        if s.read.is_none() {
            s.read = Some(at);
        }
    }

    /// When the request now in flight on this connection began to be written. Valid while
    /// its response is read (HTTP/1.1 has one request in flight per connection, and the
    /// server answers after the whole request).
    pub(crate) fn request_written(&self) -> Option<Instant> {
        self.lock().request_written
    }

    /// When the connection first read bytes not yet accounted for by an earlier call, or
    /// `None` when it has not read since (the bytes came with an earlier read).
    pub(crate) fn take_read(&self) -> Option<Instant> {
        self.lock().read.take()
    }
}

/// A TCP stream that stamps its reads and writes into [`WireStamps`]. Reads are timed by
/// the kernel's receive time of their bytes ([`kernel_rx::KernelRx`]) where it gives one,
/// so a frame is timed when it reached this host, however late this process reads it.
pub(crate) struct Stamped {
    inner: TcpStream,
    rx: retrace_netstamp::KernelRx,
    stamps: WireStamps,
}

impl Stamped {
    fn new(inner: TcpStream) -> Stamped {
        let rx = retrace_netstamp::KernelRx::new(&inner);
        Stamped {
            inner,
            rx,
            stamps: WireStamps::default(),
        }
    }
}

impl tokio::io::AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = this.rx.poll_read(&mut this.inner, cx, buf);
        if let Poll::Ready(Ok(at)) = poll {
            if buf.filled().len() > before {
                this.stamps.read_bytes(at);
            }
            return Poll::Ready(Ok(()));
        }
        poll.map_ok(|_| ())
    }
}

impl tokio::io::AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Stamped as the write starts: from then on the request is on the wire.
        this.stamps.wrote();
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.stamps.wrote();
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
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

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let stamped = match self {
            Conn::Plain(s) => s.inner(),
            Conn::Tls(s) => s.inner().get_ref().0,
        };
        stamped.inner.connected().extra(stamped.stamps.clone())
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connects with TCP, then TLS for `https` URIs.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    tls: tokio_rustls::TlsConnector,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower_service::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let connecting = tower_service::Service::<Uri>::call(&mut self.http, uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = Stamped::new(connecting.await?.into_inner());
            if !https {
                return Ok(Conn::Plain(TokioIo::new(tcp)));
            }
            let name = rustls_pki_types::ServerName::try_from(host)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(Conn::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// Builds the pooled client. `ca_certs` are PEM files of extra trusted roots (an internal CA
/// or a self-signed staging server), on top of the webpki roots.
pub(crate) fn build(
    connect_timeout: Duration,
    ca_certs: &[std::path::PathBuf],
) -> Result<HttpClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for path in ca_certs {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "--ca-cert {}: no certificate in the file",
                path.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(Connector { http, tls }))
}

/// A small request/response exchange (discovery, `/tokenize`, `/metrics`): the status and
/// the whole body, bounded by `timeout` and `max_bytes`.
pub(crate) async fn exchange(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), String> {
    let work = async {
        let response = client.request(request).await.map_err(|e| describe(&e))?;
        let (parts, body) = response.into_parts();
        let limited = http_body_util::Limited::new(body, max_bytes);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, bytes))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// A client error with its causes (hyper's top-level message alone is vague).
pub(crate) fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes that sit in the socket buffer while the process is busy are timed when they
    /// arrived, not when they are read.
    #[tokio::test]
    async fn reads_are_timed_when_the_bytes_reached_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let mut stamped = Stamped::new(client);
        let stamps = stamped.stamps.clone();
        // When no socket on the host had asked for receive stamps, the kernel turns them on
        // from a work queue a moment after this one did: bytes in that moment carry none.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for round in 0..3 {
            let sent = Instant::now();
            server.write_all(b"data: token\n\n").await.unwrap();
            // The "busy" client: reads long after the bytes came.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut buf = [0u8; 64];
            let n = stamped.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"data: token\n\n");
            let read_done = Instant::now();
            let at = stamps.take_read().expect("the read was stamped");
            assert!(
                at + Duration::from_millis(5) >= sent,
                "round {round}: stamped {:?} before the write",
                sent - at
            );
            assert!(
                at < sent + Duration::from_millis(150),
                "round {round}: stamped {:?} after the write, {:?} before the read returned: \
                 the read's time, not the bytes' arrival",
                at - sent,
                read_done - at
            );
            assert!(stamps.take_read().is_none(), "one read, one stamp");
        }
        // End of stream still reads as such through the wrapper.
        drop(server);
        let mut buf = [0u8; 8];
        assert_eq!(stamped.read(&mut buf).await.unwrap(), 0);
    }

    /// Issue #5 regression (seen in CI against llama.cpp: TTFT 0 on one request): a
    /// read that the previous exchange on a kept-alive connection did not take must not
    /// time the next request's response.
    #[test]
    fn issue5_a_read_before_the_request_is_not_its_response() {
        let stamps = WireStamps::default();
        stamps.wrote();
        let previous_tail = Instant::now();
        stamps.read_bytes(previous_tail); // the last bytes of response 1, never taken
        std::thread::sleep(Duration::from_millis(2));
        stamps.wrote(); // request 2's head
        let written = stamps.request_written().expect("request 2 written");
        assert!(written > previous_tail);
        let head = Instant::now();
        stamps.read_bytes(head);
        assert_eq!(stamps.take_read(), Some(head), "request 2's own read");
    }
}
