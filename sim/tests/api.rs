//! The OpenAI-compatible API over real HTTP on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use retrace_sim::{spawn, CostModel, SimConfig};
use serde_json::json;

fn fast_config() -> SimConfig {
    SimConfig {
        speedup: 20.0,
        kv_blocks: 2048,
        max_model_len: 4096,
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> retrace_sim::SimHandle {
    spawn(config, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_completions_and_chat_look_like_vllm() {
    let sim = start(fast_config()).await;
    let c = client();
    let url = sim.base_url();
    let body = json!({"model": "sim-7b", "prompt": prompt_of(37), "max_tokens": 12, "stream": true,
        "ignore_eos": true, "stream_options": {"include_usage": true}})
    .to_string();
    let s = stream(
        &c,
        &format!("{url}/v1/completions"),
        &body,
        &[("x-request-id", "abc-1")],
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(!s.broken);
    assert_eq!(s.content_chunks, 12);
    assert_eq!(
        retrace_sim::tokenizer::count(&s.text),
        12,
        "output re-tokenizes exactly"
    );
    assert_eq!(s.finish_reason.as_deref(), Some("length"));
    assert_eq!(s.events.last().map(String::as_str), Some("[DONE]"));
    let usage = s.usage.clone().unwrap();
    assert_eq!(usage["prompt_tokens"], 37);
    assert_eq!(usage["completion_tokens"], 12);
    assert_eq!(usage["total_tokens"], 49);
    let first: serde_json::Value = serde_json::from_str(&s.events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert_eq!(first["model"], "sim-7b");
    assert_eq!(first["id"], "cmpl-abc-1");
    // The usage chunk has empty choices.
    let usage_chunk: serde_json::Value =
        serde_json::from_str(&s.events[s.events.len() - 2]).unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));

    let chat = json!({"model": "sim-7b", "messages": [{"role": "user", "content": "hi there"}],
        "max_completion_tokens": 5, "stream": true, "ignore_eos": true})
    .to_string();
    let s = stream(&c, &format!("{url}/v1/chat/completions"), &chat, &[]).await;
    assert_eq!(s.status, 200);
    let first: serde_json::Value = serde_json::from_str(&s.events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(s.content_chunks, 5);
    assert!(s.usage.is_none(), "no usage chunk unless asked for");
    assert_eq!(s.events.len(), 1 + 5 + 1);
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_health_models_tokenize_and_request_id() {
    let sim = start(fast_config()).await;
    let c = client();
    let url = sim.base_url();
    assert_eq!(get(&c, &format!("{url}/health")).await.status, 200);
    let models = get(&c, &format!("{url}/v1/models")).await.json();
    assert_eq!(models["data"][0]["id"], "sim-7b");

    let r = post(
        &c,
        &format!("{url}/v1/chat/completions"),
        &json!({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}],
            "max_tokens": 7, "ignore_eos": true}).to_string(),
        &[("x-request-id", "req-42")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-request-id"], "req-42");
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["prompt_tokens"], 3 + (4 + 2) + (4 + 2));
    assert_eq!(v["usage"]["completion_tokens"], 7);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(retrace_sim::tokenizer::count(content), 7);

    let t = post(
        &c,
        &format!("{url}/tokenize"),
        &json!({"prompt": "abcdefghij k"}).to_string(),
        &[],
    )
    .await
    .json();
    assert_eq!(t["count"], 3);
    assert_eq!(t["max_model_len"], 4096);
    assert_eq!(t["tokens"].as_array().unwrap().len(), 3);
    let t = post(
        &c,
        &format!("{url}/tokenize"),
        &json!({"messages": [{"role": "user", "content": "a b"}]}).to_string(),
        &[],
    )
    .await
    .json();
    assert_eq!(t["count"], 3 + 4 + 2);
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openai_shape() {
    let sim = start(SimConfig {
        max_model_len: 100,
        ..fast_config()
    })
    .await;
    let c = client();
    let url = format!("{}/v1/completions", sim.base_url());
    let check = |r: &Reply, param: Option<&str>, needle: &str| {
        assert_eq!(r.status, 400, "{}", r.body);
        let v = r.json();
        let e = &v["error"];
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{}",
            r.body
        );
        assert!(e["type"].is_string());
        assert_eq!(e["code"], 400);
        assert_eq!(e["param"].as_str(), param);
    };
    check(
        &post(&c, &url, "{not json", &[]).await,
        None,
        "invalid JSON",
    );
    check(
        &post(
            &c,
            &url,
            &json!({"model": "gpt-9", "prompt": "x"}).to_string(),
            &[],
        )
        .await,
        Some("model"),
        "gpt-9",
    );
    check(
        &post(
            &c,
            &url,
            &json!({"prompt": prompt_of(100)}).to_string(),
            &[],
        )
        .await,
        Some("prompt"),
        "maximum context length is 100",
    );
    check(
        &post(
            &c,
            &url,
            &json!({"prompt": prompt_of(60), "max_tokens": 41}).to_string(),
            &[],
        )
        .await,
        Some("max_tokens"),
        "101 tokens",
    );
    check(
        &post(
            &c,
            &url,
            &json!({"prompt": "x", "max_tokens": -1}).to_string(),
            &[],
        )
        .await,
        Some("max_tokens"),
        "max_tokens",
    );
    // Exactly at the limit is fine.
    let ok = post(
        &c,
        &url,
        &json!({"prompt": prompt_of(60), "max_tokens": 40, "ignore_eos": true}).to_string(),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["usage"]["completion_tokens"], 40);
    let summary = sim.shutdown().await.unwrap();
    assert_eq!(summary.requests_rejected, 5);
    assert_eq!(summary.requests_completed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_add_up_to_requests_sent() {
    let sim = start(SimConfig {
        cost: CostModel {
            step_overhead_us: 2000.0,
            ..CostModel::ZERO
        },
        ..fast_config()
    })
    .await;
    let c = client();
    let url = sim.base_url();
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let c = c.clone();
        let url = format!("{url}/v1/completions");
        tasks.push(tokio::spawn(async move {
            let body = json!({"prompt": prompt_of(10 + i as usize), "max_tokens": 5 + i, "stream": true, "ignore_eos": true}).to_string();
            stream(&c, &url, &body, &[]).await
        }));
    }
    let mut gen = 0;
    for t in tasks {
        let s = t.await.unwrap();
        assert_eq!(s.status, 200);
        gen += s.content_chunks;
    }
    assert_eq!(gen, (0..20).map(|i| 5 + i).sum::<u32>());
    let text = get(&c, &format!("{url}/metrics")).await.body;
    assert_eq!(
        metric(&text, "vllm:generation_tokens_total"),
        f64::from(gen)
    );
    assert_eq!(
        metric(&text, "vllm:prompt_tokens_total"),
        f64::from((0..20).map(|i| 10 + i).sum::<u32>())
    );
    assert_eq!(
        metric(&text, "vllm:request_success_total"),
        20.0,
        "finished_reason=length"
    );
    assert_eq!(
        metric(&text, "vllm:time_to_first_token_seconds_count"),
        20.0
    );
    assert_eq!(
        metric(&text, "vllm:e2e_request_latency_seconds_count"),
        20.0
    );
    assert_eq!(metric(&text, "vllm:request_queue_time_seconds_count"), 20.0);
    assert_eq!(
        metric(&text, "vllm:inter_token_latency_seconds_count"),
        f64::from(gen - 20)
    );
    assert_eq!(metric(&text, "vllm:num_requests_running"), 0.0);
    assert_eq!(metric(&text, "vllm:kv_cache_usage_perc"), 0.0);
    assert!(metric(&text, "process_resident_memory_bytes") > 0.0);
    assert!(text.contains("vllm:num_requests_waiting{model_name=\"sim-7b\"} 0"));
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_streams() {
    use http_body_util::{BodyExt, Full};
    let sim = start(fast_config()).await;
    let h2: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let body =
        json!({"prompt": "a b", "max_tokens": 4, "stream": true, "ignore_eos": true}).to_string();
    let req = http::Request::post(format!("{}/v1/completions", sim.base_url()))
        .header("x-request-id", "h2-1")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-request-id"], "h2-1");
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert_eq!(text.matches("\"text\":").count(), 4, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eos_is_deterministic_per_request_and_respects_min_tokens() {
    let sim = start(fast_config()).await;
    let c = client();
    let url = format!("{}/v1/completions", sim.base_url());
    let mut stopped = 0;
    for i in 0..16 {
        let body =
            json!({"prompt": format!("prompt number {i}"), "max_tokens": 30, "min_tokens": 10})
                .to_string();
        let a = post(&c, &url, &body, &[]).await.json();
        let b = post(&c, &url, &body, &[]).await.json();
        let n = a["usage"]["completion_tokens"].as_u64().unwrap();
        assert_eq!(
            n,
            b["usage"]["completion_tokens"].as_u64().unwrap(),
            "same request, same EOS"
        );
        assert_eq!(
            a["choices"][0]["text"], b["choices"][0]["text"],
            "same text"
        );
        assert!((10..=30).contains(&n), "{n}");
        if a["choices"][0]["finish_reason"] == "stop" {
            stopped += 1;
        }
    }
    assert!(
        (1..16).contains(&stopped),
        "some but not all stop early: {stopped}"
    );
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_responses_carry_content_length() {
    let sim = start(fast_config()).await;
    let c = client();
    let r = get(&c, &format!("{}/v1/models", sim.base_url())).await;
    let len: usize = r.headers["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(len, r.body.len());
    sim.shutdown().await.unwrap();
}
