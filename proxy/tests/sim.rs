//! Against the real simulated server (`retrace_sim`): the client's bytes are the same with
//! and without the proxy, and rows carry the server's own token counts.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use retrace_sim::SimConfig;
use retrace_traces::{Endpoint, Outcome, TokenSource};
use serde_json::json;

/// Replaces the digits of every `"created":N` (seconds of the arrival, which may differ
/// between the two sims by a second boundary).
fn normalize_created(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut rest = &text[..];
    while let Some(at) = rest.find("\"created\":") {
        let (head, tail) = rest.split_at(at + "\"created\":".len());
        out.push_str(head);
        out.push('N');
        rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_responses_pass_unchanged_and_rows_match_usage() {
    let config = SimConfig {
        speedup: 20.0,
        seed: 7,
        ..SimConfig::default()
    };
    let direct_sim = retrace_sim::spawn(config.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let proxied_sim = retrace_sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut proxy_config = proxy_config(&proxied_sim.base_url(), out.path());
    proxy_config.include_usage = true;
    let proxy = retrace_proxy::spawn(proxy_config).await.unwrap();
    let proxied = format!("http://{}", proxy.local_addr());
    let requests = [
        (
            "/v1/chat/completions",
            json!({"model":"sim-7b","stream":true,"max_tokens":12,"messages":[{"role":"user","content":"tell me a story about a proxy"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model":"sim-7b","max_tokens":5,"messages":[{"role":"system","content":"short"},{"role":"user","content":"hi"}]}),
        ),
        (
            "/v1/completions",
            json!({"model":"sim-7b","stream":true,"max_tokens":9,"prompt":"The quick brown fox"}),
        ),
        (
            "/v1/completions",
            json!({"model":"sim-7b","max_tokens":4,"prompt":"jumps over"}),
        ),
    ];
    let mut usages = Vec::new();
    for (n, client) in [h1_client(), h2_client()].into_iter().enumerate() {
        for (i, (path, body)) in requests.iter().enumerate() {
            let id = format!("req-{n}-{i}");
            let headers = [("x-request-id", id.as_str())];
            let (s1, _, direct) = post(
                &client,
                &format!("{}{path}", direct_sim.base_url()),
                body,
                &headers,
            )
            .await;
            let (s2, _, through) = post(&client, &format!("{proxied}{path}"), body, &headers).await;
            assert_eq!(
                (s1, s2),
                (200, 200),
                "{}",
                String::from_utf8_lossy(&through)
            );
            assert_eq!(
                normalize_created(&direct),
                normalize_created(&through),
                "{path} {body}"
            );
            if body["stream"] != true {
                let json: serde_json::Value = serde_json::from_slice(&direct).unwrap();
                usages.push((
                    json["usage"]["prompt_tokens"].as_u64(),
                    json["usage"]["completion_tokens"].as_u64(),
                ));
            } else {
                assert!(
                    !String::from_utf8_lossy(&through).contains("\"usage\""),
                    "injected usage chunk stripped"
                );
                usages.push((None, None));
            }
        }
    }
    proxy.shutdown(Duration::from_secs(10)).await.unwrap();
    direct_sim.shutdown().await.unwrap();
    proxied_sim.shutdown().await.unwrap();
    let mut rows = read_rows(out.path());
    rows.sort_by_key(|r| r.arrival_us);
    assert_eq!(rows.len(), 8);
    for (row, (i, (_, body))) in rows.iter().zip(requests.iter().enumerate().cycle()) {
        assert_eq!(row.outcome, Outcome::Ok);
        assert_eq!(row.model.as_deref(), Some("sim-7b"));
        assert_eq!(
            row.max_tokens,
            body["max_tokens"].as_u64().map(|v| v as u32)
        );
        // --include-usage: streams carry the server's usage too.
        assert_eq!(row.prompt_tokens_source, TokenSource::Usage, "row {i}");
        assert_eq!(row.output_tokens_source, TokenSource::Usage, "row {i}");
        assert!(row.output_tokens.unwrap() >= 1);
        assert_eq!(
            row.endpoint,
            if i < 2 {
                Endpoint::Chat
            } else {
                Endpoint::Completions
            }
        );
    }
    for (row, usage) in rows.iter().zip(&usages) {
        if let (Some(prompt), Some(completion)) = usage {
            assert_eq!(row.prompt_tokens, Some(*prompt as u32));
            assert_eq!(row.output_tokens, Some(*completion as u32));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_stream_and_head_requests_are_recorded() {
    let config = SimConfig {
        speedup: 20.0,
        reset_rate: 1.0,
        ..SimConfig::default()
    };
    let sim = retrace_sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&sim.base_url(), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let body = json!({"model":"sim-7b","stream":true,"max_tokens":200,"prompt":"a long story"});
    let request = http::Request::post(format!("http://{}/v1/completions", proxy.local_addr()))
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let response = h1_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let collected = tokio::time::timeout(
        Duration::from_secs(60),
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await
    .unwrap();
    assert!(
        collected.is_err(),
        "the broken upstream stream reaches the client as an error"
    );
    let head = http::Request::head(format!("http://{}/v1/models", proxy.local_addr()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = h1_client().request(head).await.unwrap();
    let head_status = response.status().as_u16();
    drop(response);
    assert!(wait_for(Duration::from_secs(20), || sink.rows().len() == 2).await);
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    sim.shutdown().await.unwrap();
    let rows = sink.rows();
    assert_eq!(rows[0].outcome, Outcome::UpstreamError);
    assert_eq!(rows[0].status, Some(200));
    assert!(rows[0].output_tokens.unwrap_or(0) < 200, "{:?}", rows[0]);
    assert_eq!(rows[1].status, Some(head_status));
    assert_ne!(
        rows[1].outcome,
        Outcome::ClientCancelled,
        "a HEAD ends with its head"
    );
}

/// A 200 with an empty body (`GET /health` on the sim: Content-Length 0) ends with its
/// head; hyper never polls such a body, which used to be recorded as `client_cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_empty_200_is_recorded_ok_not_cancelled() {
    let sim = retrace_sim::spawn(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let sink = MemorySink::default();
    let mut config = proxy_config(&sim.base_url(), out.path());
    sink.install(&mut config);
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let request = http::Request::get(format!("http://{}/health", proxy.local_addr()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = h1_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(wait_for(Duration::from_secs(20), || sink.rows().len() == 1).await);
    proxy.shutdown(Duration::from_secs(5)).await.unwrap();
    sim.shutdown().await.unwrap();
    let rows = sink.rows();
    assert_eq!(rows[0].status, Some(200));
    assert_eq!(
        rows[0].outcome,
        Outcome::Ok,
        "{:?} (body {body:?})",
        rows[0]
    );
}
