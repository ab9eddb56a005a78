//! `retrace replay --tokenizer`: prompts sized with the model's `tokenizer.json` when the
//! target's `/tokenize` is not used (issues 4 and 5). The replay runs through the real
//! recording proxy (content captured) to the sim, all in-process on loopback, so the test
//! sees the prompts exactly as sent. Every run is bounded in count and time.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use retrace_replay::{replay, ReplayArgs, ReplayConfig, ReplayError, TraceInput};
use retrace_traces::tokenizer::Tokenizer;
use retrace_traces::{Endpoint, RequestRow, ResultRow, TokenSource};
use serde_json::{json, Map, Value};

/// Words that are one token each (with their leading space) in the test vocabulary: a
/// subset of replay's built-in prompt words, so the rest cost several byte tokens each and
/// calibration has to leave them out.
const ONE_TOKEN_WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "this", "are", "or", "from", "at", "which", "but", "have",
];

/// A byte-level BPE `tokenizer.json` in the Hugging Face format: the byte alphabet of
/// lowercase letters and the space (`Ġ`, GPT-2's printable stand-in for byte 0x20) and
/// newline (`Ċ`), then merges that build `Ġword` for every word of [`ONE_TOKEN_WORDS`] and
/// the bare first word `the` (texts start without a space).
fn tiny_byte_level_tokenizer_json() -> String {
    let mut vocab = Map::new();
    let mut merges: Vec<Value> = Vec::new();
    let add = |token: &str, vocab: &mut Map<String, Value>| {
        if !vocab.contains_key(token) {
            let id = vocab.len();
            vocab.insert(token.to_string(), json!(id));
        }
    };
    for c in ('a'..='z').chain(['Ġ', 'Ċ']) {
        add(&c.to_string(), &mut vocab);
    }
    let mut words: Vec<String> = ONE_TOKEN_WORDS.iter().map(|w| format!("Ġ{w}")).collect();
    words.push("the".into());
    for word in &words {
        let chars: Vec<char> = word.chars().collect();
        let mut left = chars[0].to_string();
        for c in &chars[1..] {
            let merged = format!("{left}{c}");
            if !vocab.contains_key(&merged) {
                merges.push(json!(format!("{left} {c}")));
                add(&merged, &mut vocab);
            }
            left = merged;
        }
    }
    json!({
        "version": "1.0",
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": merges}
    })
    .to_string()
}

fn row(i: usize, arrival_us: i64, prompt: u32, endpoint: Endpoint) -> RequestRow {
    RequestRow {
        prompt_tokens: Some(prompt),
        output_tokens: Some(2),
        status: Some(200),
        ..RequestRow::imported(format!("req-{i}"), arrival_us, endpoint)
    }
}

fn write_tokenizer(dir: &Path) -> PathBuf {
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tiny_byte_level_tokenizer_json()).unwrap();
    path
}

async fn never() {
    std::future::pending::<()>().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_4_tokenizer_sizes_prompts_exactly_without_tokenize() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer_path = write_tokenizer(dir.path());
    let tokenizer = Arc::new(Tokenizer::load(&tokenizer_path).unwrap());
    // The vocabulary really is what the test means: a listed word costs one token after a
    // space, an unlisted one several.
    assert_eq!(
        tokenizer.count("the of and") + 2,
        tokenizer.count("the of and of and")
    );
    assert!(tokenizer.count("the people") > tokenizer.count("the of"));

    let sim = retrace_sim::spawn(
        retrace_sim::SimConfig {
            speedup: 10.0,
            ..retrace_sim::SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let recording = dir.path().join("recording");
    let mut proxy_config = retrace_proxy::ProxyConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        retrace_proxy::Upstream::parse(&sim.base_url()).unwrap(),
        recording.clone(),
    );
    proxy_config.capture_content = true;
    proxy_config.capture_max_bytes = 1 << 20;
    proxy_config.tokenizer = Some(tokenizer_path.clone());
    let proxy = retrace_proxy::spawn(proxy_config).await.unwrap();

    // Distinct lengths, both APIs, some rows sharing prefix blocks.
    let lengths = [12u32, 20, 33, 64, 100, 257, 511, 700];
    let base = 1_700_000_000_000_000i64;
    let mut trace = Vec::new();
    for (i, &len) in lengths.iter().enumerate() {
        for (j, endpoint) in [Endpoint::Chat, Endpoint::Completions]
            .into_iter()
            .enumerate()
        {
            let n = i * 2 + j;
            let mut r = row(n, base + 5_000 * n as i64, len, endpoint);
            if n % 3 == 0 {
                r.prefix_hashes = vec![7, 8];
            }
            trace.push(r);
        }
    }
    let out = dir.path().join("out");
    let mut config = ReplayConfig::new(
        TraceInput::Rows(trace.clone()),
        format!("http://{}", proxy.local_addr()),
        &out,
    );
    config.use_tokenize = false;
    config.tokenizer = Some(tokenizer.clone());
    config.metrics_urls.clear();
    config.clock_speedup = 10.0;
    config.request_timeout = Duration::from_secs(60);
    let summary = tokio::time::timeout(Duration::from_secs(120), replay(config, never()))
        .await
        .expect("replay ends")
        .unwrap();
    assert_eq!(
        summary.ok,
        trace.len() as u64,
        "{:?}",
        summary.errors_by_kind
    );
    assert_eq!(summary.prompt_tokens_source, TokenSource::Tokenizer);
    let results = retrace_traces::read::read_all::<ResultRow>(std::slice::from_ref(&out)).unwrap();
    assert_eq!(results.len(), trace.len());
    assert!(results
        .iter()
        .all(|r| r.prompt_tokens_source == TokenSource::Tokenizer));
    let summary_json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary_json["prompt_tokens_source"], "tokenizer");

    proxy.shutdown(Duration::from_secs(10)).await.unwrap();
    sim.shutdown().await.unwrap();

    // The prompts as sent, counted by the same tokenizer, are the trace's lengths.
    let recorded = retrace_traces::read::read_all::<RequestRow>(&[recording]).unwrap();
    let mut sent: Vec<(bool, u32)> = recorded
        .iter()
        .filter(|r| matches!(r.endpoint, Endpoint::Chat | Endpoint::Completions))
        .map(|r| {
            let text = r.prompt_text.as_deref().expect("content captured");
            (r.endpoint == Endpoint::Chat, tokenizer.count(text))
        })
        .collect();
    let mut wanted: Vec<(bool, u32)> = trace
        .iter()
        .map(|r| (r.endpoint == Endpoint::Chat, r.prompt_tokens.unwrap()))
        .collect();
    sent.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(sent, wanted);
    // Prompts use only words that are one token each in this vocabulary (the listed ones and
    // prefixes of them such as `an` and `no`), never the built-in words that are several.
    let one_token = |w: &str| tokenizer.count(&format!("the {w}")) == tokenizer.count("the") + 1;
    assert!(!one_token("people") && one_token("which") && one_token("an"));
    for r in recorded
        .iter()
        .filter(|r| r.endpoint == Endpoint::Completions)
    {
        let text = r.prompt_text.as_deref().unwrap();
        assert!(text.split(' ').all(one_token), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_5_bad_tokenizer_file_is_named_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(
        &bad,
        r#"{"model":{"type":"BPE","vocab":{"a":0},"merges":"a b"}}"#,
    )
    .unwrap();
    // No target listens here: the error must come from the tokenizer, at validation.
    let args = parse(&[
        "replay",
        "trace.parquet",
        "--target",
        "http://127.0.0.1:9",
        "--out",
        dir.path().join("out").to_str().unwrap(),
        "--tokenizer",
        bad.to_str().unwrap(),
    ]);
    let err = args.into_config().unwrap_err();
    assert!(matches!(err, ReplayError::Tokenizer(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains(bad.to_str().unwrap()), "{message}");
    assert!(message.contains("model.merges"), "{message}");
    assert!(!dir.path().join("out").exists());

    let good = write_tokenizer(dir.path());
    let args = parse(&[
        "replay",
        "trace.parquet",
        "--target",
        "http://127.0.0.1:9",
        "--out",
        "out",
        "--tokenizer",
        good.to_str().unwrap(),
        "--no-tokenize",
    ]);
    let config = args.into_config().unwrap();
    assert!(config.tokenizer.is_some());
    assert!(!config.use_tokenize);
}

/// `ReplayArgs` is a `clap::Args`; a tiny parser around it for the test.
#[derive(Debug, clap::Parser)]
struct ReplayCli {
    #[command(flatten)]
    args: ReplayArgs,
}

fn parse(argv: &[&str]) -> ReplayArgs {
    ReplayCli::try_parse_from(argv).unwrap().args
}
