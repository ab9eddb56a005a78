//! Listeners and lifecycle: the client listener (HTTP/1.1 and HTTP/2, plain or TLS), the
//! admin listener, and the ordered shutdown (stop accepting, drain, flush, close).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::client::UpstreamClient;
use crate::config::{AdminListen, ProxyConfig, SinkFactory};
use crate::connector::UpstreamConnector;
use crate::forward::{self, Shared};
use crate::record::{Recorder, WriterThread};
use crate::row::RowContext;
use crate::stats::{ProxyStats, Stats};
use crate::tls::{self, ReloadingResolver};
use crate::watch::{ConnWatch, Verdict};
use crate::ProxyError;
use retrace_traces::tokenizer::Tokenizer;

/// A running proxy. Stop it with [`ProxyHandle::shutdown`].
pub struct ProxyHandle {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stats: Arc<Stats>,
    stop: Option<oneshot::Sender<Duration>>,
    accept_task: Option<JoinHandle<()>>,
    side_tasks: Vec<JoinHandle<()>>,
    writer: Option<WriterThread>,
}

/// How long a TLS handshake may take before the connection is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the listeners and starts the proxy. `listen` may use port 0.
pub async fn spawn(config: ProxyConfig) -> Result<ProxyHandle, ProxyError> {
    if !(config.clock_speedup.is_finite() && config.clock_speedup > 0.0) {
        return Err(ProxyError::Config(format!(
            "clock_speedup {}: must be a positive number",
            config.clock_speedup
        )));
    }
    let stats = Arc::new(Stats::new());
    let tokenizer = match &config.tokenizer {
        Some(path) => Some(Arc::new(
            Tokenizer::load(path).map_err(|err| ProxyError::Tokenizer(err.to_string()))?,
        )),
        None => None,
    };
    let client_tls = if config.upstream.is_https() {
        Some(Arc::new(tls::client_config(
            config.upstream_ca.as_deref(),
            config.insecure_upstream,
        )?))
    } else {
        None
    };
    let resolver = match &config.tls_cert {
        Some((cert, key)) => Some(Arc::new(ReloadingResolver::load(
            cert.clone(),
            key.clone(),
        )?)),
        None => None,
    };
    let acceptor = match &resolver {
        Some(resolver) => Some(TlsAcceptor::from(Arc::new(tls::server_config(
            resolver.clone(),
        )?))),
        None => None,
    };
    let listener = bind_listener(config.listen).map_err(|source| ProxyError::Bind {
        addr: config.listen,
        source,
    })?;
    let local_addr = listener.local_addr().map_err(|source| ProxyError::Bind {
        addr: config.listen,
        source,
    })?;
    let admin_listener = match config.admin {
        AdminListen::Off => None,
        AdminListen::On(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })?,
        ),
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

    let factory: SinkFactory = match &config.sink_factory {
        Some(factory) => factory.clone(),
        None => crate::sink::parquet_factory(&config),
    };
    let context = RowContext {
        tokenizer,
        block_tokens: config.prefix_block_tokens as usize,
        capture_content: config.capture_content,
        capture_max_bytes: config.capture_max_bytes,
        id_prefix: format!("{:012x}", RandomState::new().hash_one(0u8) >> 16),
    };
    let (recorder, writer) = Recorder::start(
        factory,
        config.queue_capacity,
        config.queue_max_bytes,
        stats.clone(),
        context,
    )?;

    let connector = UpstreamConnector::new(client_tls, config.connect_timeout);
    let target = http::Uri::builder()
        .scheme(config.upstream.scheme.clone())
        .authority(config.upstream.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|err| ProxyError::Config(format!("upstream address: {err}")))?;
    // Idle connections are dropped after 4 s, below the 5 s keep-alive of uvicorn (vLLM,
    // SGLang) and cpp-httplib (llama.cpp): the proxy drops an idle connection before the
    // server does, which avoids most races with a server closing one as it is reused.
    let upstream = UpstreamClient::new(connector, target, Duration::from_secs(4), 1024);
    let upstream_host = http::HeaderValue::from_str(config.upstream.authority.as_str()).ok();
    let (handovers, handover_task) = forward::handover_queue();
    let shared = Arc::new(Shared {
        config,
        upstream,
        recorder,
        stats: stats.clone(),
        id_counter: AtomicU64::new(0),
        upstream_host,
        start_us: forward::now_us(),
        start: std::time::Instant::now(),
        handovers,
    });

    let mut side_tasks = Vec::new();
    // Aborted only after a graceful shutdown has seen no request in flight, that is an
    // empty queue (a queued row still counts as in flight).
    side_tasks.push(tokio::spawn(handover_task));
    side_tasks.push(tokio::spawn(shared.upstream.reaper()));
    if let Some(resolver) = resolver {
        side_tasks.push(tokio::spawn(watch_certificates(resolver)));
    }
    if let Some(admin) = admin_listener {
        side_tasks.push(tokio::spawn(admin_loop(admin, stats.clone())));
    }
    let (stop, stop_rx) = oneshot::channel();
    let accept_task = tokio::spawn(accept_loop(listener, shared, acceptor, stop_rx));
    Ok(ProxyHandle {
        local_addr,
        admin_addr,
        stats,
        stop: Some(stop),
        accept_task: Some(accept_task),
        side_tasks,
        writer: Some(writer),
    })
}

impl ProxyHandle {
    /// The client listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The counters now.
    pub fn stats(&self) -> ProxyStats {
        self.stats.snapshot()
    }

    /// Stops accepting, lets in-flight requests finish for up to `drain` (then cuts them,
    /// recording them as cancelled), writes every queued row, and closes the files.
    pub async fn shutdown(mut self, drain: Duration) -> Result<ProxyStats, ProxyError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(drain);
        }
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
        // HTTP/2 streams run in their own tasks; they end (and record) soon after their
        // connection is gone. Wait for them, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.stats.in_flight.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.stop()).await;
        }
        for task in self.side_tasks.drain(..) {
            task.abort();
        }
        Ok(self.stats.snapshot())
    }
}

impl Drop for ProxyHandle {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        for task in self.side_tasks.drain(..) {
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
    mut stop: oneshot::Receiver<Duration>,
) {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let drain = loop {
        tokio::select! {
            drain = &mut stop => break drain.unwrap_or(Duration::ZERO),
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let shared = shared.clone();
                    let watcher = graceful.watcher();
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        match acceptor {
                            None => serve(tcp, peer, false, shared, watcher).await,
                            Some(acceptor) => {
                                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                    Ok(Ok(stream)) => serve(stream, peer, true, shared, watcher).await,
                                    Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                }
                            }
                        }
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    };
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "drain timeout: cutting the remaining connections");
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn serve<I>(io: I, peer: SocketAddr, tls: bool, shared: Arc<Shared>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_read_timeout = shared.config.header_read_timeout;
    let watch = ConnWatch::new(tokio::time::Instant::now());
    let watch_service = watch.clone();
    let peer_info = Arc::new(crate::head::Peer::new(peer, tls));
    let service = service_fn(move |request: Request<Incoming>| {
        let busy = watch_service.begin(request.version() == http::Version::HTTP_2);
        forward::handle(shared.clone(), request, peer_info.clone(), busy)
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The header read timeout is the watchdog's below (one timer a connection), not
    // hyper's (one a request).
    builder.http1().keep_alive(true).header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024);
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    let watched = watcher.watch(connection);
    let mut watched = std::pin::pin!(watched);
    let watchdog = tokio::time::sleep(header_read_timeout);
    let mut watchdog = std::pin::pin!(watchdog);
    let mut watching = true;
    loop {
        tokio::select! {
            // In order: the connection, then its watchdog (no random start a poll: the
            // connection's end wins a tie, and the watchdog only fires at its deadline).
            biased;
            result = &mut watched => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "client connection ended with an error");
                }
                return;
            }
            () = &mut watchdog, if watching => {
                match watch.verdict(tokio::time::Instant::now(), header_read_timeout) {
                    Verdict::Close => {
                        tracing::debug!(%peer, "no request head within the header read timeout: closing");
                        return;
                    }
                    Verdict::CheckAt(at) => watchdog.as_mut().reset(at),
                    Verdict::Stop => watching = false,
                }
            }
        }
    }
}

async fn watch_certificates(resolver: Arc<ReloadingResolver>) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        #[cfg(unix)]
        {
            let sighup = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = interval.tick() => resolver.check(false),
                _ = sighup => resolver.check(true),
            }
        }
        #[cfg(not(unix))]
        {
            interval.tick().await;
            resolver.check(false);
        }
    }
}

async fn admin_loop(listener: TcpListener, stats: Arc<Stats>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let stats = stats.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let stats = stats.clone();
                async move { Ok::<_, std::convert::Infallible>(admin_response(&request, &stats)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn admin_response(request: &Request<Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            stats.render_prometheus(),
        ),
        "/healthz" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ok\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
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
    socket.listen(4096)
}
