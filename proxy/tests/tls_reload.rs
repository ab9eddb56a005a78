//! Issue 9: a TLS certificate reload under load drops no connection. Twenty long TLS
//! streams (h1 and h2) run across the reload while new TLS connections keep arriving; the
//! files are rewritten in place and the proxy's mtime poll picks them up.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use retrace_traces::Outcome;
use serde_json::json;

const LONG_STREAMS: usize = 20;
/// At speedup 1 every decode step costs ≥ 6 ms of real time, so 250 tokens take ≥ 1.5 s:
/// a stream that completed its handshake before the reload necessarily ends after it.
const LONG_TOKENS: u64 = 250;
const SHORT_TOKENS: u64 = 4;

/// What one TLS request saw.
struct Seen {
    status: u16,
    body: Bytes,
    peer_der: Vec<u8>,
    handshake_done: Instant,
    finished: Instant,
}

fn completion_request(authority: &str, max_tokens: u64, i: usize) -> Request<Full<Bytes>> {
    let body = json!({"model":"sim-7b","stream":true,"max_tokens":max_tokens,"ignore_eos":true,"prompt":format!("reload {i}")});
    Request::post(format!("https://{authority}/v1/completions"))
        .header("host", authority)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// A fresh TLS connection, one request, the whole body read. `handshake` is told when the
/// TLS handshake is done (before the request is sent).
async fn tls_stream(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: Request<Full<Bytes>>,
    handshake: Option<tokio::sync::mpsc::Sender<()>>,
) -> Result<Seen, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let handshake_done = Instant::now();
    if let Some(tx) = handshake {
        let _ = tx.send(()).await;
    }
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let peer_der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let io = TokioIo::new(tls);
    let response = if alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(conn);
        sender.send_request(request).await
    }
    .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Seen {
        status,
        body,
        peer_der,
        handshake_done,
        finished: Instant::now(),
    })
}

/// A complete sim completion stream (`ignore_eos`): `max_tokens` text events, then `[DONE]`.
fn assert_full_stream(body: &[u8], max_tokens: u64, what: &str) {
    let text = String::from_utf8_lossy(body);
    let events = text.matches("data: {").count() as u64;
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "{what}: stream not complete: …{}",
        &text[text.len().saturating_sub(200)..]
    );
    assert!(
        events >= max_tokens,
        "{what}: {events} events for {max_tokens} tokens"
    );
}

fn client_trusting(
    certs: &[&rustls_pki_types::CertificateDer<'static>],
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add((*cert).clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_9_certificate_reload_under_load_drops_no_connection() {
    let sim = retrace_sim::spawn(
        retrace_sim::SimConfig {
            speedup: 1.0,
            ..retrace_sim::SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a, der_a) = test_cert();
    let (cert_b, key_b, der_b) = test_cert();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, &cert_a).unwrap();
    std::fs::write(&key_path, &key_a).unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&sim.base_url(), &dir.path().join("out"));
    config.tls_cert = Some((cert_path.clone(), key_path.clone()));
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let addr = proxy.local_addr();
    let authority = format!("localhost:{}", addr.port());

    // Long streams: they trust only certificate A, so each handshake happened before the
    // reload; half HTTP/2, half HTTP/1.1, each on its own connection.
    let (hs_tx, mut hs_rx) = tokio::sync::mpsc::channel(LONG_STREAMS);
    let mut long = tokio::task::JoinSet::new();
    for i in 0..LONG_STREAMS {
        let alpn: &[u8] = if i % 2 == 0 { b"h2" } else { b"http/1.1" };
        let client = client_trusting(&[&der_a], alpn);
        let request = completion_request(&authority, LONG_TOKENS, i);
        let tx = hs_tx.clone();
        long.spawn(async move { tls_stream(addr, client, request, Some(tx)).await });
    }
    drop(hs_tx);
    for _ in 0..LONG_STREAMS {
        tokio::time::timeout(Duration::from_secs(30), hs_rx.recv())
            .await
            .expect("long-stream handshakes within 30 s")
            .expect("a long stream failed before its handshake");
    }

    // New connections keep arriving throughout: two workers, each a fresh TLS connection
    // per request, trusting both certificates. Bounded: 1,000 requests each, and `stop`.
    let stop = Arc::new(AtomicBool::new(false));
    let mut churn = tokio::task::JoinSet::new();
    for w in 0..2usize {
        let stop = stop.clone();
        let authority = authority.clone();
        let (der_a, der_b) = (der_a.clone(), der_b.clone());
        churn.spawn(async move {
            let mut seen = Vec::new();
            for i in 0..1_000usize {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let alpn: &[u8] = if (i + w) % 2 == 0 { b"h2" } else { b"http/1.1" };
                let client = client_trusting(&[&der_a, &der_b], alpn);
                let request = completion_request(&authority, SHORT_TOKENS, 1_000 + w * 1_000 + i);
                seen.push(tls_stream(addr, client, request, None).await);
            }
            seen
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Rewrite the files in place, key first, as an operator or cert-manager would.
    let reload_at = Instant::now();
    std::fs::write(&key_path, &key_b).unwrap();
    std::fs::write(&cert_path, &cert_b).unwrap();
    // The poll is once a second: wait until a fresh connection is given B.
    let mut reloaded_after = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let client = client_trusting(&[&der_b], b"http/1.1");
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        if tokio_rustls::TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .is_ok()
        {
            reloaded_after = Some(reload_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reloaded_after = reloaded_after.expect("the new certificate is served within 20 s");
    // Keep the churn going a little past the reload, then stop it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut long_seen = Vec::new();
    while let Some(result) = long.join_next().await {
        long_seen.push(result.unwrap().expect("a long stream failed"));
    }
    let mut churn_seen = Vec::new();
    while let Some(result) = churn.join_next().await {
        let seen = result.unwrap();
        // Within a worker the requests are sequential: the certificate goes A… then B…,
        // never back.
        let peers: Vec<bool> = seen
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| s.peer_der == der_b.to_vec())
                    .unwrap_or(false)
            })
            .collect();
        assert!(
            peers.windows(2).all(|w| w[0] <= w[1]),
            "certificate flipped back: {peers:?}"
        );
        churn_seen.extend(seen);
    }

    for (i, seen) in long_seen.iter().enumerate() {
        assert_eq!(seen.status, 200, "long stream {i}");
        assert_eq!(seen.peer_der, der_a.to_vec(), "long stream {i}");
        assert!(seen.handshake_done < reload_at, "long stream {i}");
        assert!(
            seen.finished > reload_at,
            "long stream {i} did not span the reload: took {:?} after its handshake, {} bytes: {}",
            seen.finished - seen.handshake_done,
            seen.body.len(),
            String::from_utf8_lossy(&seen.body[..seen.body.len().min(300)])
        );
        assert_full_stream(&seen.body, LONG_TOKENS, &format!("long stream {i}"));
    }
    let mut after_reload = 0usize;
    for (i, seen) in churn_seen.iter().enumerate() {
        let seen = seen
            .as_ref()
            .unwrap_or_else(|err| panic!("new connection {i} failed: {err}"));
        assert_eq!(seen.status, 200, "new connection {i}");
        assert_full_stream(&seen.body, SHORT_TOKENS, &format!("new connection {i}"));
        if seen.peer_der == der_b.to_vec() {
            after_reload += 1;
            assert!(seen.handshake_done > reload_at);
        } else {
            assert_eq!(seen.peer_der, der_a.to_vec());
        }
    }
    assert!(
        after_reload >= 1,
        "no new connection saw the new certificate ({} connections)",
        churn_seen.len()
    );
    assert!(
        churn_seen.len() > after_reload,
        "no new connection was made before the reload"
    );

    proxy.shutdown(Duration::from_secs(10)).await.unwrap();
    sim.shutdown().await.unwrap();
    let rows = sink.rows();
    let requests = LONG_STREAMS + churn_seen.len();
    assert_eq!(rows.len(), requests, "rows == requests");
    assert!(rows.iter().all(|r| r.outcome == Outcome::Ok));
    let long_rows = rows
        .iter()
        .filter(|r| r.output_tokens == Some(LONG_TOKENS as _))
        .count();
    assert_eq!(long_rows, LONG_STREAMS);
    eprintln!(
        "reload seen after {reloaded_after:?}; {} new connections ({} with the new certificate), {LONG_STREAMS} long streams across it",
        churn_seen.len(),
        after_reload
    );
}
