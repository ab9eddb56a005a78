//! In front of a real llama.cpp server (the tiny model from `scripts/llama-server.sh`;
//! skipped with a note when it is not installed here).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use retrace_traces::{Endpoint, Outcome, TokenSource};
use serde_json::json;

struct Llama {
    url: String,
    port: String,
}

impl Llama {
    fn start() -> Option<Llama> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama-server.sh");
        let out = std::process::Command::new(&script)
            .args(["start", "--parallel", "4"])
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "llama.cpp not available, skipping: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port = url.rsplit(':').next()?.to_string();
        Some(Llama { url, port })
    }
}

impl Drop for Llama {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama-server.sh");
        let _ = std::process::Command::new(script)
            .args(["stop", "--port", &self.port])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_llama_cpp_streams_are_recorded_with_server_usage() {
    let Some(llama) = Llama::start() else { return };
    let out = tempfile::tempdir().unwrap();
    let mut config = proxy_config(&llama.url, out.path());
    config.include_usage = true;
    let proxy = retrace_proxy::spawn(config).await.unwrap();
    let base = format!("http://{}", proxy.local_addr());
    let client = h1_client();
    let chat = json!({"stream":true,"max_tokens":16,"messages":[{"role":"user","content":"Hello, how is the request today?"}]});
    let completion = json!({"stream":true,"max_tokens":12,"prompt":"The request goes"});
    let plain = json!({"max_tokens":5,"prompt":[300,301,302,303,304]});
    let (status, _, body) = post(&client, &format!("{base}/v1/chat/completions"), &chat, &[]).await;
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert!(
        !text.contains("\"usage\""),
        "the injected usage chunk is stripped: {text}"
    );
    let (status, _, body) =
        post(&client, &format!("{base}/v1/completions"), &completion, &[]).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("\"usage\""),
        "llama.cpp's own completions usage passes"
    );
    let (status, _, _) = post(&client, &format!("{base}/v1/completions"), &plain, &[]).await;
    assert_eq!(status, 200);
    proxy.shutdown(Duration::from_secs(10)).await.unwrap();
    drop(llama);

    let mut rows = read_rows(out.path());
    rows.sort_by_key(|r| r.arrival_us);
    assert_eq!(rows.len(), 3);
    let expected = [
        (Endpoint::Chat, 16),
        (Endpoint::Completions, 12),
        (Endpoint::Completions, 5),
    ];
    for (row, (endpoint, tokens)) in rows.iter().zip(expected) {
        assert_eq!(row.endpoint, endpoint);
        assert_eq!(row.outcome, Outcome::Ok);
        assert_eq!(row.output_tokens, Some(tokens), "{row:?}");
        assert_eq!(row.output_tokens_source, TokenSource::Usage);
        assert_eq!(row.prompt_tokens_source, TokenSource::Usage);
        assert!(row.ttft_us.is_some() && row.e2e_us >= row.ttft_us);
    }
    // The tiny model streams one token per chunk.
    assert_eq!(rows[0].chunk_count, Some(16));
    assert_eq!(rows[0].finish_reason.as_deref(), Some("length"));
    assert_eq!(
        rows[2].prompt_tokens,
        Some(5),
        "token-id prompt: the server agrees"
    );
}
