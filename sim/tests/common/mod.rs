//! Shared test helpers: a real HTTP/1.1 client (hyper-util's legacy client) over loopback.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2048)
        .build(connector)
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub async fn get(client: &HttpClient, url: &str) -> Reply {
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

pub async fn post(client: &HttpClient, url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// What a simple streaming client measures, in real time from the send.
#[derive(Debug, Clone)]
pub struct Streamed {
    pub status: u16,
    /// `data:` payloads, in order (including `[DONE]`).
    pub events: Vec<String>,
    /// Real offset of each event from the send.
    pub event_at: Vec<Duration>,
    /// Real offset of the first event carrying non-empty text.
    pub ttft: Option<Duration>,
    pub e2e: Duration,
    pub content_chunks: u32,
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Value>,
    /// The body ended with an error (connection dropped).
    pub broken: bool,
}

pub async fn stream(
    client: &HttpClient,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Streamed {
    let mut builder = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let start = Instant::now();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut buf = String::new();
    let mut out = Streamed {
        status,
        events: Vec::new(),
        event_at: Vec::new(),
        ttft: None,
        e2e: Duration::ZERO,
        content_chunks: 0,
        text: String::new(),
        finish_reason: None,
        usage: None,
        broken: false,
    };
    loop {
        match body.frame().await {
            None => break,
            Some(Err(_)) => {
                out.broken = true;
                break;
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let at = start.elapsed();
                buf.push_str(std::str::from_utf8(&data).unwrap());
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    let payload = event.trim_end().strip_prefix("data: ").unwrap().to_string();
                    out.event_at.push(at);
                    if payload != "[DONE]" {
                        let v: Value = serde_json::from_str(&payload).unwrap();
                        if let Some(choice) = v["choices"].get(0) {
                            let text = choice["text"]
                                .as_str()
                                .or_else(|| choice["delta"]["content"].as_str())
                                .unwrap_or("");
                            if !text.is_empty() {
                                out.content_chunks += 1;
                                out.ttft.get_or_insert(at);
                                out.text.push_str(text);
                            }
                            if let Some(r) = choice["finish_reason"].as_str() {
                                out.finish_reason = Some(r.to_string());
                            }
                        }
                        if !v["usage"].is_null() {
                            out.usage = Some(v["usage"].clone());
                        }
                    }
                    out.events.push(payload);
                }
            }
        }
    }
    out.e2e = start.elapsed();
    out
}

/// Value of an unlabelled-or-labelled sample `name{...}` (first match) in a Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').unwrap();
        let base = key.split('{').next().unwrap();
        if base == name {
            return value.parse().unwrap();
        }
    }
    panic!("metric {name} not found in:\n{text}");
}

/// A prompt of exactly `n` tokens under the sim's tokenizer.
pub fn prompt_of(n: usize) -> String {
    "w ".repeat(n)
}
