//! Transparency: what the client receives through the proxy is what it receives without
//! it; headers are handled as a proxy must; upstream failures become 502/504.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use retrace_traces::{Endpoint, Outcome, TokenSource};
use serde_json::json;

fn bodies() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "/v1/chat/completions",
            json!({"model":"m","stream":true,"max_tokens":7,"messages":[{"role":"user","content":"hello there"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model":"m","stream":false,"max_tokens":4,"messages":[{"role":"user","content":"hi"}]}),
        ),
        (
            "/v1/completions",
            json!({"model":"m","stream":true,"max_tokens":6,"prompt":"once upon a time"}),
        ),
        (
            "/v1/completions",
            json!({"model":"m","max_tokens":3,"prompt":"x"}),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_byte_identical_h1_and_h2() {
    let upstream = spawn_upstream(None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let proxied = format!("http://{}", proxy.local_addr());
    let mut sent = 0;
    for client in [h1_client(), h2_client()] {
        for (path, body) in bodies() {
            let (s1, _, direct) =
                post(&client, &format!("{}{path}", upstream.url()), &body, &[]).await;
            let (s2, _, through) = post(&client, &format!("{proxied}{path}"), &body, &[]).await;
            assert_eq!((s1, s2), (200, 200));
            assert!(!direct.is_empty());
            assert_eq!(direct, through, "{path} {body}");
            sent += 1;
        }
    }
    let stats = proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = sink.rows();
    assert_eq!(rows.len(), sent);
    assert_eq!(stats.rows_written, sent as u64);
    let stream_chat = &rows[0];
    assert_eq!(stream_chat.endpoint, Endpoint::Chat);
    assert_eq!(stream_chat.model.as_deref(), Some("m"));
    assert!(stream_chat.stream);
    assert_eq!(stream_chat.max_tokens, Some(7));
    assert_eq!(stream_chat.message_count, Some(1));
    assert_eq!(stream_chat.output_tokens, Some(7));
    assert_eq!(stream_chat.chunk_count, Some(7));
    assert_eq!(stream_chat.prompt_tokens_source, TokenSource::Estimate);
    assert_eq!(stream_chat.finish_reason.as_deref(), Some("length"));
    assert_eq!(stream_chat.outcome, Outcome::Ok);
    assert_eq!(stream_chat.status, Some(200));
    assert!(stream_chat.ttft_us.is_some() && stream_chat.ttfb_us.is_some());
    assert!(
        stream_chat.ttfb_us <= stream_chat.ttft_us && stream_chat.ttft_us <= stream_chat.e2e_us
    );
    assert!(stream_chat.request_bytes.unwrap() > 50);
    // Non-streaming responses carry usage: the server's own count wins.
    let plain_chat = &rows[1];
    assert_eq!(plain_chat.prompt_tokens, Some(11));
    assert_eq!(plain_chat.prompt_tokens_source, TokenSource::Usage);
    assert_eq!(plain_chat.output_tokens, Some(4));
    assert!(rows
        .iter()
        .all(|r| r.prompt_text.is_none() && r.response_text.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sse_byte_is_forwarded_before_the_stream_ends() {
    let upstream = spawn_upstream(None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let body = json!({"stream":true,"max_tokens":5,"messages":[{"role":"user","content":"x"}]});
    let request = Request::post(format!("http://{}/v1/chat/completions", proxy.local_addr()))
        .header("x-test-gap-ms", "500")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let start = Instant::now();
    let response = h1_client().request(request).await.unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    let first_at = start.elapsed();
    assert!(!first.data_ref().unwrap().is_empty());
    while body.frame().await.is_some() {}
    let end_at = start.elapsed();
    // 5 content gaps of 300 ms follow the role chunk: the first bytes must not wait for them.
    assert!(end_at >= Duration::from_millis(1400), "{end_at:?}");
    assert!(
        first_at + Duration::from_millis(900) < end_at,
        "first {first_at:?} end {end_at:?}"
    );
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = sink.rows();
    let itl = rows[0].itl.unwrap();
    assert_eq!(itl.count, 4);
    assert!(itl.p50_us >= 450_000, "{itl:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_prompt_passes_and_is_not_parsed() {
    let upstream = spawn_upstream(None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), out.path());
    config.max_parse_bytes = 1 << 20;
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let prompt = "a".repeat(10 << 20);
    let body = json!({"model":"m","max_tokens":2,"prompt":prompt});
    let len = body.to_string().len();
    let (status, _, text) = post(
        &h1_client(),
        &format!("http://{}/v1/completions", proxy.local_addr()),
        &body,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&text).contains("w1"));
    assert_eq!(upstream.seen.lock().unwrap()[0].body_len, len);
    // Also with --include-usage (the read-ahead path) the large body goes through whole.
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = sink.rows();
    assert_eq!(rows[0].request_bytes, Some(len as u64));
    assert_eq!(
        rows[0].model, None,
        "bodies over --max-parse-bytes are not parsed"
    );
    assert_eq!(
        rows[0].prompt_tokens,
        Some(11),
        "usage still counts the prompt"
    );

    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), out.path());
    config.include_usage = true;
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let body = json!({"model":"m","max_tokens":2,"stream":true,"prompt":prompt});
    let (status, _, text) = post(
        &h1_client(),
        &format!("http://{}/v1/completions", proxy.local_addr()),
        &body,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        !String::from_utf8_lossy(&text).contains("usage"),
        "not rewritten: no usage chunk"
    );
    assert_eq!(
        upstream.seen.lock().unwrap()[1].body_len,
        body.to_string().len()
    );
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(sink.rows()[0].output_tokens, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_usage_is_injected_and_stripped() {
    let upstream = spawn_upstream(None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), out.path());
    config.include_usage = true;
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let proxied = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let direct = format!("{}/v1/chat/completions", upstream.url());
    let client = h1_client();
    let plain = json!({"stream":true,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]});
    let (_, _, a) = post(&client, &direct, &plain, &[]).await;
    let (_, _, b) = post(&client, &proxied, &plain, &[]).await;
    assert_eq!(a, b, "the injected usage chunk is stripped");
    let asked = json!({"stream":true,"max_tokens":3,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]});
    let (_, _, a) = post(&client, &direct, &asked, &[]).await;
    let (_, _, b) = post(&client, &proxied, &asked, &[]).await;
    assert_eq!(a, b, "a client that asked keeps its usage chunk");
    assert!(String::from_utf8_lossy(&b).contains("\"usage\""));
    {
        let seen = upstream.seen.lock().unwrap();
        let rewritten: serde_json::Value = serde_json::from_slice(&seen[1].body).unwrap();
        assert_eq!(rewritten["stream_options"]["include_usage"], true);
        let length: usize = seen[1]
            .headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(
            length, seen[1].body_len,
            "Content-Length fixed after the rewrite"
        );
    }
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = sink.rows();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.prompt_tokens, Some(11));
        assert_eq!(row.prompt_tokens_source, TokenSource::Usage);
        assert_eq!(row.output_tokens_source, TokenSource::Usage);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_forwarding_headers() {
    let upstream = spawn_upstream(None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    let body = json!({"max_tokens":1,"messages":[]});
    let (status, headers, _) = post(
        &h1_client(),
        &url,
        &body,
        &[
            ("connection", "x-private"),
            ("x-private", "secret-hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9v"),
            // Not `trailers` (the proxy asks for those on its own hop: see below).
            ("te", "gzip"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-forwarded-for", "10.4.5.6"),
            ("x-request-id", "req-42"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    // Response: the upstream's Connection-named header is removed.
    assert!(headers.get("x-hop").is_none());
    let seen = upstream.seen.lock().unwrap()[0].clone();
    let get = |name: &str| {
        seen.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    for hop in ["x-private", "keep-alive", "proxy-authorization", "te"] {
        assert_eq!(get(hop), None, "{hop} must not be forwarded");
    }
    assert_eq!(
        get("x-forwarded-for").as_deref(),
        Some("10.1.2.3, 10.4.5.6, 127.0.0.1"),
        "every X-Forwarded-For line is kept, in order"
    );
    assert!(get("forwarded")
        .unwrap()
        .starts_with("for=127.0.0.1;proto=http;host="));
    assert_eq!(get("via").as_deref(), Some("1.1 retrace"));
    assert_eq!(get("host"), Some(upstream.addr.to_string()));
    assert_eq!(get("x-request-id").as_deref(), Some("req-42"));
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();

    // --preserve-host keeps the client's Host.
    let mut config = proxy_config(&upstream.url(), out.path());
    config.preserve_host = true;
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let url = format!("http://{}/v1/chat/completions", proxy.local_addr());
    post(&h1_client(), &url, &body, &[]).await;
    let seen = upstream.seen.lock().unwrap()[1].clone();
    let host = seen
        .headers
        .iter()
        .find(|(k, _)| k == "host")
        .unwrap()
        .1
        .clone();
    assert_eq!(host, proxy.local_addr().to_string());
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_become_502_and_504_and_are_recorded() {
    let upstream = spawn_upstream(None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    // A port with nothing listening: bind, note, drop.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = proxy_config(&format!("http://{dead}"), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let body = json!({"max_tokens":1,"prompt":"x"});
    let (status, _, text) = post(
        &h1_client(),
        &format!("http://{}/v1/completions", proxy.local_addr()),
        &body,
        &[],
    )
    .await;
    assert_eq!(status, 502);
    assert!(String::from_utf8_lossy(&text).contains("retrace proxy"));
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();

    let mut config = proxy_config(&upstream.url(), out.path());
    config.first_byte_timeout = Duration::from_millis(300);
    config.idle_timeout = Duration::from_millis(500);
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let base = format!("http://{}", proxy.local_addr());
    let (status, _, _) = post(
        &h1_client(),
        &format!("{base}/v1/completions"),
        &body,
        &[("x-test-head-delay-ms", "3000")],
    )
    .await;
    assert_eq!(status, 504);
    let (status, _, _) = post(
        &h1_client(),
        &format!("{base}/v1/completions"),
        &body,
        &[("x-test-status", "503")],
    )
    .await;
    assert_eq!(status, 503);
    // Idle timeout mid-stream: the client sees the stream cut.
    let stream_body = json!({"stream":true,"max_tokens":3,"prompt":"x"});
    let request = Request::post(format!("{base}/stall"))
        .body(Full::new(Bytes::from(stream_body.to_string())))
        .unwrap();
    let response = h1_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .unwrap();
    assert!(collected.is_err(), "the stalled stream ends with an error");
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();

    let rows = sink.rows();
    let outcomes: Vec<(Option<u16>, Outcome)> =
        rows.iter().map(|r| (r.status, r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (Some(502), Outcome::UpstreamError),
            (Some(504), Outcome::Timeout),
            (Some(503), Outcome::HttpError),
            (Some(200), Outcome::Timeout),
        ]
    );
    assert_eq!(rows[3].endpoint, Endpoint::Other("/stall".into()));
    assert_eq!(rows[3].output_tokens, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_speedup_scales_recorded_times() {
    let upstream = spawn_upstream(None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), out.path());
    config.clock_speedup = 10.0;
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let url = format!("http://{}/v1/completions", proxy.local_addr());
    let body = json!({"stream":true,"max_tokens":4,"prompt":"x"});
    let start = Instant::now();
    post(&h1_client(), &url, &body, &[("x-test-gap-ms", "100")]).await;
    let real_us = start.elapsed().as_micros() as u64;
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let row = &sink.rows()[0];
    // 3 gaps of 100 ms real time are 1 s each in the upstream's 10× clock.
    let itl = row.itl.unwrap();
    assert!(itl.p50_us >= 900_000, "{itl:?}");
    assert!(row.e2e_us.unwrap() >= 2_700_000 && row.e2e_us.unwrap() <= real_us * 10 + 10_000);
    let bad = retrace_proxy::spawn({
        let mut c = proxy_config(&upstream.url(), out.path());
        c.clock_speedup = 0.0;
        c
    })
    .await;
    assert!(bad.err().unwrap().to_string().contains("clock_speedup"));
}

/// A raw HTTP/1.1 upstream whose first connection reads the request and closes without a
/// response (a keep-alive connection closed under the proxy); later ones answer `ok`.
async fn closing_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU32>,
) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicU32::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut got = Vec::new();
                loop {
                    let read = tcp.read(&mut buf).await.unwrap_or(0);
                    if read == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..read]);
                    let text = String::from_utf8_lossy(&got);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                if n == 0 {
                    return; // closed without a response
                }
                let body = format!("ok:{}", got.len());
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_the_response_is_retried_once() {
    let (addr, connections) = closing_upstream().await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&format!("http://{addr}"), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let body = json!({"max_tokens":2,"prompt":"retry me"});
    let (status, _, text) = post(
        &h1_client(),
        &format!("http://{}/v1/completions", proxy.local_addr()),
        &body,
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&text).starts_with("ok:"));
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one retry on a new connection"
    );
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = sink.rows();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, Some(200));
    assert_eq!(
        rows[0].request_bytes,
        Some(body.to_string().len() as u64),
        "bytes are not counted twice"
    );
}

/// Trailer fields reach the client, as directly from the upstream: over HTTP/2, and over
/// HTTP/1.1 when the client sent `TE: trailers`; the row is recorded once the trailers
/// have gone through. With `--include-usage` the proxy splits the stream into events: an
/// unterminated last event still goes out, before the trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_are_forwarded() {
    use http_body_util::BodyExt;
    let upstream = spawn_upstream(None).await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&upstream.url(), out.path());
    config.include_usage = true;
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let (h1, h2) = (h1_client(), h2_client());
    let fetch = |url: String, h2_version: bool| {
        let (h1, h2) = (h1.clone(), h2.clone());
        async move {
            let request = http::Request::post(url)
                .header("te", "trailers")
                .header("x-test-trailers", "1")
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    br#"{"stream":true}"#,
                )))
                .unwrap();
            let response = if h2_version {
                h2.request(request).await.unwrap()
            } else {
                h1.request(request).await.unwrap()
            };
            let collected = response.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            (collected.to_bytes(), trailers)
        }
    };
    for h2_version in [false, true] {
        let path = "/v1/completions";
        let direct = fetch(format!("{}{path}", upstream.url()), h2_version).await;
        let through = fetch(format!("http://{}{path}", proxy.local_addr()), h2_version).await;
        let checksum = |t: &Option<http::HeaderMap>| {
            t.as_ref()
                .and_then(|t| t.get("x-checksum"))
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            checksum(&direct.1).as_deref(),
            Some("c0ffee"),
            "h2: {h2_version}"
        );
        assert_eq!(
            checksum(&through.1),
            checksum(&direct.1),
            "h2: {h2_version}"
        );
        assert_eq!(through.0, direct.0);
        assert!(through.0.ends_with(b"data: [DONE]\n"), "{:?}", through.0);
    }
    // TE went upstream as the proxy's own hop-by-hop request.
    let seen = upstream.seen.lock().unwrap().clone();
    let te: Vec<_> = seen
        .iter()
        .map(|s| s.headers.iter().any(|(k, v)| k == "te" && v == "trailers"))
        .collect();
    assert!(te.iter().all(|&t| t), "{te:?}");
    let stats = proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.rows_written, 2);
    assert!(sink.rows().iter().all(|r| r.outcome == Outcome::Ok));
}
