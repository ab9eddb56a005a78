//! Shared test helpers: a small deterministic OpenAI-style upstream (real hyper server on
//! loopback), clients for h1/h2 (plain and TLS), and readers of the recording.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use retrace_proxy::{ProxyConfig, RowSink, SinkError, Upstream};
use retrace_traces::RequestRow;
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type TestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// What the upstream saw of each request (headers lowercased), for header tests.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    pub body: Vec<u8>,
}

/// A running test upstream.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn words(n: u32) -> Vec<String> {
    (0..n).map(|i| format!(" w{i}")).collect()
}

/// The deterministic response of the test upstream: `n` tokens (from `max_tokens`, default
/// 5), each SSE chunk `x-test-gap-ms` apart; a usage chunk when asked for; `/stall`
/// sends one chunk then goes silent; `/echo` returns the body length.
async fn respond(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<TestBody>, Infallible> {
    let path = request.uri().path().to_string();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let gap_ms: u64 = request
        .headers()
        .get("x-test-gap-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let status: u16 = request
        .headers()
        .get("x-test-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let head_delay_ms: u64 = request
        .headers()
        .get("x-test-head-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let with_trailers = headers.iter().any(|(k, _)| k == "x-test-trailers");
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        headers,
        body_len: body.len(),
        body: if body.len() < 1 << 16 {
            body.to_vec()
        } else {
            Vec::new()
        },
    });
    if head_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(head_delay_ms)).await;
    }
    if with_trailers {
        // A chunked body with an announced trailer field (hyper sends trailers over HTTP/1.1
        // only when the request said `TE: trailers`).
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-checksum", "c0ffee".parse().unwrap());
        // The last event lacks its blank line: a proxy that splits events must still
        // forward it, before the trailers.
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"data: {}\n\n"))),
            Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n"))),
            Ok(Frame::trailers(trailers)),
        ];
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(
            futures_util::stream::iter(frames),
        )));
        let headers = response.headers_mut();
        headers.insert("trailer", "x-checksum".parse().unwrap());
        headers.insert("content-type", "text/event-stream".parse().unwrap());
        return Ok(response);
    }
    if path == "/echo" {
        let text = format!("{{\"received_bytes\":{}}}", body.len());
        return Ok(Response::new(
            Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed(),
        ));
    }
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = json.get("max_tokens").and_then(Value::as_u64).unwrap_or(5) as u32;
    let stream = json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = json
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let chat = path.ends_with("/chat/completions");
    let prompt_tokens = 11;
    if status != 200 {
        let mut response = Response::new(
            Full::new(Bytes::from_static(b"{\"error\":\"test\"}"))
                .map_err(|e| match e {})
                .boxed(),
        );
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        return Ok(response);
    }
    if !stream {
        let text: String = words(n).concat();
        let choice = if chat {
            json!({"index":0,"message":{"role":"assistant","content":text},"finish_reason":"length"})
        } else {
            json!({"index":0,"text":text,"finish_reason":"length"})
        };
        let body = json!({"id":"test-1","object":"x","created":1,"model":"m","choices":[choice],
            "usage":{"prompt_tokens":prompt_tokens,"completion_tokens":n,"total_tokens":prompt_tokens+n}});
        let mut response = Response::new(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        );
        response
            .headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        response
            .headers_mut()
            .insert("connection", "keep-alive, x-hop".parse().unwrap());
        response
            .headers_mut()
            .insert("x-hop", "must-not-pass".parse().unwrap());
        return Ok(response);
    }
    let mut events: Vec<Bytes> = Vec::new();
    if chat {
        events.push(Bytes::from("data: {\"id\":\"t\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n"));
    }
    for (i, word) in words(n).into_iter().enumerate() {
        let finish = if i + 1 == n as usize {
            "\"length\""
        } else {
            "null"
        };
        let event = if chat {
            format!("data: {{\"id\":\"t\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"finish_reason\":{finish}}}]}}\n\n")
        } else {
            format!("data: {{\"id\":\"t\",\"choices\":[{{\"index\":0,\"text\":\"{word}\",\"finish_reason\":{finish}}}]}}\n\n")
        };
        events.push(Bytes::from(event));
    }
    if include_usage {
        events.push(Bytes::from(format!(
            "data: {{\"id\":\"t\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt_tokens},\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
            prompt_tokens + n
        )));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let stall = path == "/stall";
    let stream = futures_util::stream::unfold(
        (events.into_iter(), 0usize),
        move |(mut it, i)| async move {
            if stall && i == 1 {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            if i > 0 && gap_ms > 0 {
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            }
            let next = it.next()?;
            Some((Ok::<_, BoxError>(Frame::data(next)), (it, i + 1)))
        },
    );
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    Ok(response)
}

/// Starts the test upstream (HTTP/1.1 and h2c) on 127.0.0.1:0, optionally with TLS.
pub async fn spawn_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> TestUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_task = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen_task.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| respond(req, seen.clone()));
                let builder = auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                    Some(config) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    TestUpstream { addr, seen, task }
}

/// Rows collected in memory (for tests that need a pluggable sink), optionally blocking.
#[derive(Clone, Default)]
pub struct MemorySink {
    pub rows: Arc<Mutex<Vec<RequestRow>>>,
    /// While true, `push` blocks (a stalled disk).
    pub stall: Arc<std::sync::atomic::AtomicBool>,
}

impl RowSink for MemorySink {
    fn push(&mut self, row: RequestRow) -> Result<(), SinkError> {
        while self.stall.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.rows.lock().unwrap().push(row);
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

impl MemorySink {
    pub fn install(&self, config: &mut ProxyConfig) {
        let sink = self.clone();
        config.sink_factory = Some(Arc::new(move || {
            Ok(Box::new(sink.clone()) as Box<dyn RowSink>)
        }));
    }
    pub fn rows(&self) -> Vec<RequestRow> {
        self.rows.lock().unwrap().clone()
    }
}

pub fn proxy_config(upstream_url: &str, out: &Path) -> ProxyConfig {
    ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Upstream::parse(upstream_url).unwrap(),
        out.to_path_buf(),
    )
}

/// Every `.parquet` file in `dir`.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    files
}

/// All rows of the recording in `dir`.
pub fn read_rows(dir: &Path) -> Vec<RequestRow> {
    let files = parquet_files(dir);
    if files.is_empty() {
        return Vec::new();
    }
    retrace_traces::read::read_all::<RequestRow>(&files).unwrap()
}

/// A plain HTTP/1.1 client (pooled).
pub fn h1_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2_client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `body` as a POST to `url` and returns (status, headers, body bytes).
pub async fn post(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, Bytes) {
    let mut builder = Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(request))
        .await
        .expect("response head in time")
        .expect("request ok");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .expect("body in time")
        .expect("body ok")
        .to_bytes();
    (status, headers, bytes)
}

/// Self-signed certificate for `localhost`/127.0.0.1: (cert PEM, key PEM, cert DER).
pub fn test_cert() -> (String, String, rustls_pki_types::CertificateDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let der = certified.cert.der().clone();
    (
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
        der,
    )
}

pub fn tls_server_config(
    cert_pem: &str,
    key_pem: &str,
    alpn: &[&[u8]],
) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS client trusting `ca`, with the given ALPN protocols.
pub fn tls_client_config(
    ca: &rustls_pki_types::CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One request over a fresh TLS connection; speaks h2 when ALPN picks it. Returns
/// (negotiated ALPN, status, body, peer certificate DER).
pub async fn tls_request(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: Request<Full<Bytes>>,
) -> (Option<Vec<u8>>, u16, Bytes, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let peer_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let io = TokioIo::new(tls);
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(request).await.unwrap()
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (alpn, status, body, peer_cert)
}

/// Polls until `check` holds or `timeout` passes.
pub async fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}
