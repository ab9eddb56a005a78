//! A static SSE upstream for proxy benchmarks (bench/run.sh): answers every request with
//! the same OpenAI-style streamed completion, as fast as it can, on one runtime thread.
//! No engine, no tokenizer: what is left to measure is the proxy in front of it.
//!
//! `cargo run --release -p retrace-sim --example bench_sse -- 127.0.0.1:PORT [EVENTS]`
//!
//! Prints `listening on ADDR` once bound, then serves until killed. Each response is
//! `200 text/event-stream`, chunked, with EVENTS `data:` chunks (default 16) of one word
//! each, a final usage chunk and `data: [DONE]`. The request body is read and dropped.
//! Each event is its own body frame, so a proxy sees (and must forward) many chunks.
//!
//! By default every event is ready at once, and hyper writes a whole response in one go. A
//! request with the header `x-bench-event-gap-us: N` gets event i (from 1) due N·i µs after
//! the response starts, the way a model server streams tokens: a proxy in front then reads
//! and forwards each event on its own. Deadlines are absolute, so the timer's millisecond
//! rounding does not add up over a stream.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};

/// The request header that asks for paced events (see the module docs).
const GAP_HEADER: &str = "x-bench-event-gap-us";

fn events(n: u32) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(n as usize + 2);
    for i in 0..n {
        out.push(Bytes::from(format!(
            "data: {{\"id\":\"cmpl-bench\",\"object\":\"text_completion\",\"created\":0,\"model\":\"sim-7b\",\"choices\":[{{\"index\":0,\"text\":\" word{i}\",\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        )));
    }
    out.push(Bytes::from(format!(
        "data: {{\"id\":\"cmpl-bench\",\"object\":\"text_completion\",\"created\":0,\"model\":\"sim-7b\",\"choices\":[{{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"length\"}}],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
        n + 8
    )));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// The response body: the static events, one frame each, no end-of-stream length hint
/// (so hyper sends it chunked, as a streaming server does).
struct Events {
    body: &'static [Bytes],
    next: usize,
    /// When the response started, and the time between events, when paced.
    pacing: Option<(Instant, Duration)>,
    /// The wait for the next event, while one is running.
    wait: Option<Pin<Box<Sleep>>>,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let (Some((start, gap)), true) = (self.pacing, self.next < self.body.len()) {
            let due = start + gap * (self.next as u32 + 1);
            let wait = self
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if wait.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.wait = None;
        }
        let i = self.next;
        self.next += 1;
        Poll::Ready(self.body.get(i).cloned().map(|b| Ok(Frame::data(b))))
    }
}

async fn handle(
    req: Request<Incoming>,
    body: &'static [Bytes],
) -> Result<Response<Events>, Infallible> {
    let gap = req
        .headers()
        .get(GAP_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&us| us > 0)
        .map(Duration::from_micros);
    // Drain the request body so the connection can be reused.
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Events {
        body,
        next: 0,
        pacing: gap.map(|gap| (Instant::now(), gap)),
        wait: None,
    });
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .ok_or("usage: bench_sse 127.0.0.1:PORT [EVENTS]")?
        .parse()?;
    let n: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(16);
    let body: &'static [Bytes] = Vec::leak(events(n));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!("listening on {}", listener.local_addr()?);
        loop {
            let (sock, _) = listener.accept().await?;
            sock.set_nodelay(true)?;
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, body));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), service)
                    .await;
            });
        }
    })
}
