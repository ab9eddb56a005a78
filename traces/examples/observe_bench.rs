//! Stream observer benchmark: feeds streamed responses through [`StreamObserver`], as the
//! proxy does for every response it records, and prints ns per SSE event as one JSON line.
//!
//! `cargo run --release -p retrace-traces --example observe_bench -- --responses 200000`
//! (`--shape completions|chat`; `--whole` feeds each response as one chunk, as when it
//! arrives in one read). The events are what vLLM sends: a completions stream is the
//! proxy benchmark's upstream (`sim/examples/bench_sse.rs`: 16 one-word chunks, a
//! finish chunk with usage, `[DONE]`); a chat stream adds a role-only first chunk,
//! `system_fingerprint` and `logprobs`. For instruction counts (steady on a busy machine):
//! `valgrind --tool=callgrind target/release/examples/observe_bench --responses 2000`.

use std::time::Instant;

use retrace_traces::{Endpoint, StreamObserver};

type Error = Box<dyn std::error::Error>;

/// The `retrace` binary's allocator: the proxy observes inside it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One response's SSE body, split into the chunks it arrives in (one event each).
fn response(chat: bool, tokens: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(tokens + 3);
    if chat {
        out.push(
            br#"data: {"id":"chatcmpl-8f3a","object":"chat.completion.chunk","created":1733011200,"model":"meta-llama/Llama-3.1-8B-Instruct","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

"#
            .to_vec(),
        );
        for i in 0..tokens {
            out.push(format!(
                "data: {{\"id\":\"chatcmpl-8f3a\",\"object\":\"chat.completion.chunk\",\"created\":1733011200,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"system_fingerprint\":null,\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            ).into_bytes());
        }
        out.push(format!(
            "data: {{\"id\":\"chatcmpl-8f3a\",\"object\":\"chat.completion.chunk\",\"created\":1733011200,\"model\":\"meta-llama/Llama-3.1-8B-Instruct\",\"system_fingerprint\":null,\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"length\"}}],\"usage\":{{\"prompt_tokens\":812,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
            812 + tokens
        ).into_bytes());
    } else {
        for i in 0..tokens {
            out.push(format!(
                "data: {{\"id\":\"cmpl-bench\",\"object\":\"text_completion\",\"created\":0,\"model\":\"sim-7b\",\"choices\":[{{\"index\":0,\"text\":\" word{i}\",\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            ).into_bytes());
        }
        out.push(format!(
            "data: {{\"id\":\"cmpl-bench\",\"object\":\"text_completion\",\"created\":0,\"model\":\"sim-7b\",\"choices\":[{{\"index\":0,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"length\"}}],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":{tokens},\"total_tokens\":{}}}}}\n\n",
            8 + tokens
        ).into_bytes());
    }
    out.push(b"data: [DONE]\n\n".to_vec());
    out
}

fn main() -> Result<(), Error> {
    let mut responses: u64 = 200_000;
    let mut chat = false;
    let mut whole = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--responses" => responses = args.next().ok_or("--responses needs a value")?.parse()?,
            "--whole" => whole = true,
            "--shape" => {
                chat = match args.next().as_deref() {
                    Some("chat") => true,
                    Some("completions") => false,
                    other => return Err(format!("--shape completions|chat, not {other:?}").into()),
                }
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (use --responses N [--shape completions|chat] [--whole])"
                )
                .into())
            }
        }
    }
    let mut body = response(chat, 16);
    let events_per_response = body.len() as u64;
    if whole {
        // The whole response in one read, as the proxy benchmark's upstream sends it.
        body = vec![body.concat()];
    }
    let endpoint = if chat {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    let start = Instant::now();
    let mut tokens = 0u64;
    for _ in 0..responses {
        let mut obs = StreamObserver::new(endpoint.clone());
        for (i, chunk) in body.iter().enumerate() {
            obs.feed(chunk, 1_000 + i as u64 * 25_000);
        }
        let o = obs.finish(1_000 + body.len() as u64 * 25_000);
        tokens += u64::from(o.output_tokens.unwrap_or(0));
        if o.chunk_count != 16 || o.malformed.is_some() {
            return Err(format!("unexpected observation: {o:?}").into());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let events = responses * events_per_response;
    println!(
        "{}",
        serde_json::json!({
            "shape": if chat { "chat" } else { "completions" },
            "whole": whole,
            "responses": responses,
            "events": events,
            "output_tokens": tokens,
            "ns_per_event": (secs * 1e9 / events as f64 * 10.0).round() / 10.0,
            "us_per_response": (secs * 1e6 / responses as f64 * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
