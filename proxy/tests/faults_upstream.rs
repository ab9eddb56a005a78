//! Issue 9, upstream faults: a refusing upstream, resets and stalls mid-stream, malformed
//! SSE/JSON, 10 MB chunks, a one-byte drip. Small fault servers speak raw HTTP/1.1 on
//! loopback; every case checks what the client received and the row recorded.
#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use retrace_traces::Outcome;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a fault server observed: connections accepted, and connections the proxy closed
/// (read returned EOF or an error while the server was stalling).
#[derive(Default)]
struct FaultView {
    accepted: AtomicUsize,
    closed_by_proxy: AtomicUsize,
}

/// A raw HTTP/1.1 server on loopback: each connection's request is read, then `behave`
/// runs with the stream.
async fn fault_server<F, Fut>(behave: F) -> (SocketAddr, Arc<FaultView>)
where
    F: Fn(TcpStream, Arc<FaultView>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let view = Arc::new(FaultView::default());
    let view_task = view.clone();
    let behave = Arc::new(behave);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            view_task.accepted.fetch_add(1, Ordering::SeqCst);
            let behave = behave.clone();
            let view = view_task.clone();
            tokio::spawn(async move {
                if read_request(&mut tcp).await.is_some() {
                    behave(tcp, view).await;
                }
            });
        }
    });
    (addr, view)
}

/// Reads one request head and its Content-Length body; `None` on EOF.
async fn read_request(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = tcp.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = tcp.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
    }
    Some(buf)
}

/// Waits (bounded) until the peer closes the connection: the proxy gave up on it.
async fn wait_closed(tcp: &mut TcpStream, view: &FaultView) {
    let mut buf = [0u8; 1024];
    let result = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    if result.is_ok() {
        view.closed_by_proxy.fetch_add(1, Ordering::SeqCst);
    }
}

const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

fn chunked(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

fn event(text: &str) -> String {
    format!(
        "data: {{\"choices\":[{{\"index\":0,\"text\":\"{text}\",\"finish_reason\":null}}]}}\n\n"
    )
}

fn completions(proxy: SocketAddr, stream: bool) -> Request<Full<Bytes>> {
    let body = json!({"model":"m","stream":stream,"max_tokens":100,"prompt":"fault"});
    Request::post(format!("http://{proxy}/v1/completions"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Sends one request; returns (status, body bytes received before the end or the error,
/// whether the body ended in an error).
async fn fetch(request: Request<Full<Bytes>>) -> (u16, Vec<u8>, bool) {
    let response = tokio::time::timeout(Duration::from_secs(30), h1_client().request(request))
        .await
        .expect("head in time")
        .expect("head ok");
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    let failed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match body.frame().await {
                None => return false,
                Some(Err(_)) => return true,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        bytes.extend_from_slice(data);
                    }
                }
            }
        }
    })
    .await
    .expect("body ends in time");
    (status, bytes, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_9_refused_upstream_gives_502_and_one_row_per_request() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&format!("http://{dead}"), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let n = 40;
    for i in 0..n {
        let client = if i % 2 == 0 { h1_client() } else { h2_client() };
        let body = json!({"stream":true,"prompt":"x"});
        let (status, _, text) = post(
            &client,
            &format!("http://{}/v1/completions", proxy.local_addr()),
            &body,
            &[],
        )
        .await;
        assert_eq!(status, 502, "{}", String::from_utf8_lossy(&text));
    }
    let stats = proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = sink.rows();
    assert_eq!(rows.len(), n);
    assert!(rows
        .iter()
        .all(|r| r.outcome == Outcome::UpstreamError && r.status == Some(502)));
    assert_eq!((stats.requests_total, stats.rows_dropped), (n as u64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_9_upstream_reset_mid_stream_keeps_tokens_so_far() {
    let (addr, _) = fault_server(|mut tcp, _| async move {
        let mut out = SSE_HEAD.as_bytes().to_vec();
        for word in ["a", "b", "c"] {
            out.extend(chunked(event(word).as_bytes()));
        }
        tcp.write_all(&out).await.unwrap();
        tcp.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // SO_LINGER 0: close() sends RST instead of FIN.
        #[allow(deprecated)]
        tcp.set_linger(Some(Duration::ZERO)).unwrap();
        drop(tcp);
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&format!("http://{addr}"), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let (status, bytes, failed) = fetch(completions(proxy.local_addr(), true)).await;
    assert_eq!(status, 200);
    assert!(failed, "the reset reaches the client as a broken stream");
    assert_eq!(
        bytes,
        format!("{}{}{}", event("a"), event("b"), event("c")).into_bytes(),
        "what arrived before the reset is forwarded intact"
    );
    assert!(wait_for(Duration::from_secs(10), || sink.rows().len() == 1).await);
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let row = &sink.rows()[0];
    assert_eq!(
        (row.status, row.outcome),
        (Some(200), Outcome::UpstreamError)
    );
    assert_eq!(row.output_tokens, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_9_upstream_stalls_before_first_byte_and_mid_stream_time_out() {
    let (addr, view) = fault_server(|mut tcp, view| async move {
        let count = view.accepted.load(Ordering::SeqCst);
        if count == 2 {
            // Second connection: two tokens, then silence.
            let mut out = SSE_HEAD.as_bytes().to_vec();
            out.extend(chunked(event("a").as_bytes()));
            out.extend(chunked(event("b").as_bytes()));
            tcp.write_all(&out).await.unwrap();
        }
        // Silence until the proxy gives up on the connection.
        wait_closed(&mut tcp, &view).await;
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&format!("http://{addr}"), out.path());
    config.first_byte_timeout = Duration::from_millis(400);
    config.idle_timeout = Duration::from_millis(400);
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();

    let (status, _, failed) = fetch(completions(proxy.local_addr(), true)).await;
    assert_eq!((status, failed), (504, false));
    let (status, bytes, failed) = fetch(completions(proxy.local_addr(), true)).await;
    assert_eq!(status, 200);
    assert!(failed, "a stream cut by the idle timeout ends in error");
    assert_eq!(bytes, format!("{}{}", event("a"), event("b")).into_bytes());
    // The proxy closes both stalled upstream connections (the server's view).
    assert!(
        wait_for(Duration::from_secs(20), || view
            .closed_by_proxy
            .load(Ordering::SeqCst)
            == 2)
        .await
    );
    assert!(wait_for(Duration::from_secs(10), || sink.rows().len() == 2).await);
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = sink.rows();
    assert_eq!(
        (rows[0].status, rows[0].outcome),
        (Some(504), Outcome::Timeout)
    );
    assert_eq!(
        (rows[1].status, rows[1].outcome),
        (Some(200), Outcome::Timeout)
    );
    assert_eq!(rows[1].output_tokens, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_9_malformed_sse_and_json_pass_unchanged_and_are_recorded() {
    // Each connection gets the next body; the proxy must forward each byte for byte.
    let bodies: Vec<(&'static str, Vec<u8>)> = vec![
        (
            "text/event-stream",
            [
                event("ok1").into_bytes(),
                b"data: {\"choices\":[{\"text\":\n\n".to_vec(),
                b"data: [1,2,\n\n".to_vec(),
                b"data: \xff\xfe\x00binary\n\n".to_vec(),
                b"event: only-an-event\n\n: a comment\n\nid: 7\nretry: x\n\n".to_vec(),
                b"data: {\"choices\":\"not a list\"}\r\n\r\n".to_vec(),
                b"data: {\"choices\":[{\"index\":\"zero\",\"text\":5}]}\n\n".to_vec(),
                event("ok2").into_bytes(),
                vec![b'x'; 70_000], // a line with no end
                b"\n\ndata: [DONE]\n\n".to_vec(),
            ]
            .concat(),
        ),
        (
            "application/json",
            b"{\"choices\":[{\"text\":\"unterminated".to_vec(),
        ),
        ("application/json", b"\x00\x01\x02 not json at all".to_vec()),
        ("text/event-stream", b"data: [DONE]".to_vec()), // no final blank line
    ];
    let expected = bodies.clone();
    let bodies = Arc::new(Mutex::new(bodies.into_iter()));
    let (addr, _) = fault_server(move |mut tcp, _| {
        let next = bodies.lock().unwrap().next();
        async move {
            let Some((content_type, body)) = next else {
                return;
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            tcp.write_all(head.as_bytes()).await.unwrap();
            tcp.write_all(&body).await.unwrap();
        }
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&format!("http://{addr}"), out.path());
    config.admin = retrace_proxy::AdminListen::Off;
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    for (i, (_, body)) in expected.iter().enumerate() {
        let (status, bytes, failed) = fetch(completions(proxy.local_addr(), i != 1)).await;
        assert_eq!((status, failed), (200, false), "body {i}");
        assert!(bytes == *body, "body {i} forwarded byte for byte");
    }
    let stats = proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.rows_dropped, 0);
    let rows = read_rows(out.path());
    assert_eq!(rows.len(), expected.len());
    assert!(rows.iter().all(|r| r.outcome == Outcome::Ok));
    let mut by_bytes: Vec<(u64, Option<u32>)> = rows
        .iter()
        .map(|r| (r.response_bytes.unwrap(), r.output_tokens))
        .collect();
    by_bytes.sort();
    let longest = by_bytes.last().unwrap();
    assert_eq!(longest.0, expected[0].1.len() as u64);
    // The two well-formed events are counted; the garbage is skipped, not fatal.
    assert!(
        longest.1.is_some_and(|t| t >= 2),
        "tokens of the mixed stream: {longest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_9_ten_megabyte_chunks_pass_byte_identical() {
    let big_text = "y".repeat(10 << 20);
    let sse_body = [event(&big_text).into_bytes(), b"data: [DONE]\n\n".to_vec()].concat();
    let sse_expected = sse_body.clone();
    let plain = Arc::new(vec![b'z'; 10 << 20]);
    let plain_expected = plain.clone();
    let (addr, _) = fault_server(move |mut tcp, view| {
        let sse_body = sse_body.clone();
        let plain = plain.clone();
        async move {
            if view.accepted.load(Ordering::SeqCst) == 1 {
                let mut out = SSE_HEAD.as_bytes().to_vec();
                out.extend(chunked(&sse_body)); // one 10 MB chunk
                out.extend_from_slice(b"0\r\n\r\n");
                tcp.write_all(&out).await.unwrap();
            } else {
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    plain.len()
                );
                tcp.write_all(head.as_bytes()).await.unwrap();
                tcp.write_all(&plain).await.unwrap();
            }
        }
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let proxy = retrace_proxy::spawn(proxy_config(&format!("http://{addr}"), out.path()))
        .await
        .unwrap();
    let (status, bytes, failed) = fetch(completions(proxy.local_addr(), true)).await;
    assert_eq!((status, failed), (200, false));
    assert!(bytes == sse_expected, "10 MB SSE event intact");
    let request = Request::get(format!("http://{}/blob", proxy.local_addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, bytes, failed) = fetch(request).await;
    assert_eq!((status, failed), (200, false));
    assert!(bytes == *plain_expected, "10 MB body intact");
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let rows = read_rows(out.path());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].response_bytes, Some(sse_expected.len() as u64));
    assert_eq!(rows[0].output_tokens, Some(1));
    assert_eq!(rows[1].response_bytes, Some(10 << 20));
    assert!(rows.iter().all(|r| r.outcome == Outcome::Ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_9_slow_drip_one_byte_at_a_time_is_forwarded_and_counted() {
    let words = ["one", "two", "three", "four", "five"];
    let mut body = Vec::new();
    for w in words {
        body.extend(chunked(event(w).as_bytes()));
    }
    body.extend(chunked(b"data: [DONE]\n\n"));
    body.extend_from_slice(b"0\r\n\r\n");
    let wire = [SSE_HEAD.as_bytes().to_vec(), body].concat();
    let (addr, _) = fault_server(move |mut tcp, _| {
        let wire = wire.clone();
        async move {
            for byte in wire {
                if tcp.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    })
    .await;
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&format!("http://{addr}"), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let (status, bytes, failed) = fetch(completions(proxy.local_addr(), true)).await;
    assert_eq!((status, failed), (200, false));
    let expected: String = words.iter().map(|w| event(w)).collect::<String>() + "data: [DONE]\n\n";
    assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    assert!(wait_for(Duration::from_secs(10), || sink.rows().len() == 1).await);
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    let row = &sink.rows()[0];
    assert_eq!(row.outcome, Outcome::Ok);
    assert_eq!(row.output_tokens, Some(5));
    assert!(row.ttft_us.unwrap() < row.e2e_us.unwrap());
}
