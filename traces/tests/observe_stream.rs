//! The stream observer on the shapes real servers send (vLLM, llama.cpp, OpenAI), on
//! split points, and on garbage.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use retrace_traces::metrics::{tpot_us, Latencies};
use retrace_traces::sse::{is_usage_only, EventSplitter};
use retrace_traces::{Endpoint, Observation, StreamObserver, TokenSource};

/// llama.cpp `llama-server` chat stream with `stream_options.include_usage` (shape as
/// captured in docs/llama-server.md): role-only first chunk, one token per chunk, a
/// finish chunk with an empty delta, a usage-only chunk, `[DONE]`.
fn llama_chat_events() -> Vec<String> {
    let c = |s: &str| format!("data: {s}\n\n");
    vec![
        c(
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}],"object":"chat.completion.chunk"}"#,
        ),
        c(
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" billions"}}],"object":"chat.completion.chunk"}"#,
        ),
        c(
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"|"}}],"object":"chat.completion.chunk"}"#,
        ),
        c(
            r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"content":"d\u00e9"}}],"object":"chat.completion.chunk"}"#,
        ),
        c(
            r#"{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"object":"chat.completion.chunk"}"#,
        ),
        c(
            r#"{"choices":[],"object":"chat.completion.chunk","usage":{"completion_tokens":3,"prompt_tokens":12,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":4}},"timings":{"cache_n":4,"prompt_n":8,"predicted_n":3}}"#,
        ),
        "data: [DONE]\n\n".to_string(),
    ]
}

fn observe(chunks: &[(&[u8], u64)], end_us: u64) -> Observation {
    let mut obs = StreamObserver::new(Endpoint::Chat).capture_text(1024);
    for (bytes, at) in chunks {
        obs.feed(bytes, *at);
    }
    obs.finish(end_us)
}

#[test]
fn llama_chat_stream_with_usage() {
    let events = llama_chat_events();
    // Each event arrives on its own, 1 ms apart starting at 10 ms.
    let chunks: Vec<(&[u8], u64)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.as_bytes(), 10_000 + 1_000 * i as u64))
        .collect();
    let o = observe(&chunks, 20_000);
    assert_eq!(o.first_byte_us, Some(10_000));
    assert_eq!(
        o.first_token_us,
        Some(11_000),
        "the role-only chunk is not a token"
    );
    assert_eq!(o.last_token_us, Some(13_000));
    assert_eq!(o.end_us, Some(20_000));
    assert_eq!(o.chunk_count, 3);
    assert_eq!(o.output_tokens, Some(3));
    assert_eq!(o.output_tokens_source, Some(TokenSource::Usage));
    assert_eq!(o.usage_prompt_tokens, Some(12));
    assert_eq!(o.finish_reason.as_deref(), Some("length"));
    assert!(o.complete);
    assert_eq!(o.malformed, None);
    assert_eq!(o.text.as_deref(), Some(" billions|dé"));
    let itl = o.itl.unwrap();
    assert_eq!((itl.count, itl.p50_us, itl.max_us), (2, 1_000, 1_000));
    let body: usize = events.iter().map(String::len).sum();
    assert_eq!(o.body_bytes, body as u64);

    let lat = Latencies::from_observation(&o);
    assert_eq!(lat.ttfb_us, Some(10_000));
    assert_eq!(lat.ttft_us, Some(11_000));
    assert_eq!(lat.e2e_us, Some(20_000));
    assert_eq!(lat.tpot_us, tpot_us(11_000, 20_000, 3));
    assert_eq!(lat.tpot_us, Some(4_500.0));
}

#[test]
fn llama_chat_stream_without_usage_takes_timings() {
    // Without include_usage llama.cpp puts `timings` in the finish chunk, no usage.
    let stream = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n",
        "data: {\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{}}],\"timings\":{\"cache_n\":2,\"prompt_n\":5,\"predicted_n\":2}}\n\n",
        "data: [DONE]\n\n"
    );
    let o = observe(&[(stream.as_bytes(), 5)], 9);
    assert_eq!(o.chunk_count, 1);
    assert_eq!(
        o.output_tokens,
        Some(2),
        "EOS counted by the server, no chunk for it"
    );
    assert_eq!(o.output_tokens_source, Some(TokenSource::Usage));
    assert_eq!(o.usage_prompt_tokens, Some(7));
    assert_eq!(o.finish_reason.as_deref(), Some("stop"));
}

#[test]
fn completions_stream_without_usage_counts_chunks() {
    // vLLM /v1/completions without include_usage: counted from chunks.
    let stream = concat!(
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"He\",\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"llo\",\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"!\",\"finish_reason\":\"length\"}]}\n\n",
        "data: [DONE]\n\n"
    );
    let mut obs = StreamObserver::new(Endpoint::Completions);
    obs.feed(&stream.as_bytes()[..20], 100);
    obs.feed(&stream.as_bytes()[20..], 250);
    let o = obs.finish(300);
    assert_eq!(o.chunk_count, 3);
    assert_eq!(o.output_tokens, Some(3));
    assert_eq!(o.output_tokens_source, Some(TokenSource::Counted));
    assert_eq!(
        o.first_token_us,
        Some(250),
        "the first event completes in the second chunk"
    );
    assert_eq!(o.finish_reason.as_deref(), Some("length"));
    assert_eq!(o.text, None, "text only when asked for");
    assert!(o.complete);
}

#[test]
fn reasoning_content_counts_as_generated_text() {
    let stream = concat!(
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hmm\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"ok\"}}]}\n\n",
    );
    let o = observe(&[(stream.as_bytes(), 7)], 8);
    assert_eq!(o.first_token_us, Some(7));
    assert_eq!(o.chunk_count, 2);
    assert!(!o.complete, "no [DONE]");
}

#[test]
fn plain_json_body_first_token_at_end() {
    let body = br#"{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant","content":"0eps]"}}],"object":"chat.completion","usage":{"completion_tokens":3,"prompt_tokens":12,"total_tokens":15}}"#;
    let o = observe(&[(b"\n", 40), (&body[..10], 50), (&body[10..], 60)], 70);
    assert_eq!(o.first_byte_us, Some(40));
    assert_eq!(
        o.first_token_us,
        Some(70),
        "non-streaming: first token seen at the end"
    );
    assert_eq!(o.chunk_count, 1);
    assert_eq!(o.output_tokens, Some(3));
    assert_eq!(o.output_tokens_source, Some(TokenSource::Usage));
    assert_eq!(o.usage_prompt_tokens, Some(12));
    assert_eq!(o.text.as_deref(), Some("0eps]"));
    assert!(o.complete);
    assert_eq!(Latencies::from_observation(&o).tpot_us, None);

    // Without usage the tokens are estimated from the text (ceil(bytes / 4)).
    let body = br#"{"choices":[{"index":0,"text":"123456789","finish_reason":"stop"}]}"#;
    let o = observe(&[(body, 1)], 2);
    assert_eq!(o.output_tokens, Some(3));
    assert_eq!(o.output_tokens_source, Some(TokenSource::Estimate));
    assert_eq!(o.finish_reason.as_deref(), Some("stop"));
}

#[test]
fn error_events_and_bad_json_are_malformed() {
    let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"overloaded\",\"code\":503}}\n\n";
    let o = observe(&[(stream.as_bytes(), 1)], 2);
    assert!(
        o.malformed.as_deref().unwrap().contains("overloaded"),
        "{o:?}"
    );
    assert_eq!(o.chunk_count, 1);

    let o = observe(&[(b"data: {not json\n\ndata: [DONE]\n\n", 1)], 2);
    assert!(o.malformed.as_deref().unwrap().contains("invalid JSON"));
    assert!(o.complete);

    let o = observe(&[(b"{\"choices\": [", 1)], 2);
    assert!(o.malformed.is_some());
    assert!(!o.complete);

    let o = observe(&[(br#"{"error":{"message":"bad model"}}"#, 1)], 2);
    assert!(o.malformed.as_deref().unwrap().contains("bad model"));
    assert_eq!(o.first_token_us, None);
}

#[test]
fn empty_body_observes_nothing() {
    let o = StreamObserver::new(Endpoint::Chat).finish(5);
    assert_eq!(o.end_us, Some(5));
    assert_eq!(
        (o.first_byte_us, o.first_token_us, o.body_bytes),
        (None, None, 0)
    );
    assert!(!o.complete);
}

#[test]
fn capture_is_capped_at_a_char_boundary() {
    let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"ab\u{e9}\u{e9}\"}}]}\n\n";
    let mut obs = StreamObserver::new(Endpoint::Chat).capture_text(4);
    obs.feed(stream.as_bytes(), 1);
    let o = obs.finish(2);
    assert_eq!(o.text.as_deref(), Some("ab\u{e9}"));
}

#[test]
fn unterminated_last_event_is_still_read() {
    let o = observe(
        &[(b"data: {\"choices\":[{\"text\":\"x\"}]}\n\ndata: [DONE]", 3)],
        4,
    );
    assert!(o.complete);
    assert_eq!(o.chunk_count, 1);
}

#[test]
fn every_split_point_gives_the_same_observation() {
    let whole: String = llama_chat_events().concat();
    let bytes = whole.as_bytes();
    let reference = observe(&[(bytes, 1)], 2);
    for cut in 0..=bytes.len() {
        let o = observe(&[(&bytes[..cut], 1), (&bytes[cut..], 1)], 2);
        assert_eq!(o, reference, "split at byte {cut}");
    }
    // With \r\n line ends too (a \r at the end of a chunk must not end the event).
    let crlf = whole.replace('\n', "\r\n");
    let reference = observe(&[(crlf.as_bytes(), 1)], 2);
    assert_eq!(reference.chunk_count, 3);
    for cut in 0..=crlf.len() {
        let o = observe(
            &[(&crlf.as_bytes()[..cut], 1), (&crlf.as_bytes()[cut..], 1)],
            2,
        );
        assert_eq!(o, reference, "crlf split at byte {cut}");
    }
}

#[test]
fn splitter_strips_a_usage_only_event_and_keeps_every_other_byte() {
    let whole: String = llama_chat_events().concat();
    let mut splitter = EventSplitter::new();
    let mut forwarded = Vec::new();
    for piece in whole.as_bytes().chunks(7) {
        for event in splitter.push(piece) {
            if !event.data.as_deref().is_some_and(is_usage_only) {
                forwarded.extend_from_slice(&event.raw);
            }
        }
    }
    forwarded.extend_from_slice(splitter.remainder());
    let expected: String = llama_chat_events()
        .into_iter()
        .filter(|e| !e.contains("\"usage\""))
        .collect();
    assert_eq!(String::from_utf8(forwarded).unwrap(), expected);
}

fn valid_stream() -> impl Strategy<Value = Vec<u8>> {
    let event = prop_oneof![
        "[a-z \\\\é]{0,6}".prop_map(|t| format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}]}}",
            serde_json::to_string(&t).unwrap()
        )),
        Just(": keep-alive".to_string()),
        Just("data: {\"choices\":[],\"usage\":{\"completion_tokens\":9}}".to_string()),
        Just("event: ping\ndata: {\"choices\":[]}".to_string()),
    ];
    (
        prop::collection::vec(event, 0..12),
        prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
    )
        .prop_map(|(events, eol)| {
            let mut s: String = events.iter().map(|e| format!("{e}\n\n")).collect();
            s.push_str("data: [DONE]\n\n");
            s.replace('\n', eol).into_bytes()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_at_random_splits_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        prefix in prop_oneof![Just(&b""[..]), Just(&b"data: "[..]), Just(&b"{"[..])],
    ) {
        let mut all = prefix.to_vec();
        all.extend_from_slice(&bytes);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (all.len() + 1)).collect();
        cuts.sort_unstable();
        let mut obs = StreamObserver::new(Endpoint::Chat).capture_text(16);
        let mut splitter = EventSplitter::new();
        let mut start = 0;
        let mut raw_total = Vec::new();
        for (i, cut) in cuts.into_iter().chain([all.len()]).enumerate() {
            obs.feed(&all[start..cut], i as u64);
            for e in splitter.push(&all[start..cut]) {
                raw_total.extend_from_slice(&e.raw);
            }
            start = cut;
        }
        raw_total.extend_from_slice(splitter.remainder());
        // Every byte is in exactly one event or in the remainder.
        prop_assert_eq!(raw_total, all.clone());
        let o = obs.finish(1_000);
        prop_assert_eq!(o.body_bytes, all.len() as u64);
    }

    #[test]
    fn valid_streams_split_anywhere_observe_the_same(
        stream in valid_stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let whole = observe(&[(&stream, 1)], 2);
        prop_assert!(whole.complete);
        prop_assert!(whole.malformed.is_none());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut obs = StreamObserver::new(Endpoint::Chat).capture_text(1024);
        let mut start = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            obs.feed(&stream[start..cut], 1);
            start = cut;
        }
        prop_assert_eq!(obs.finish(2), whole);
    }
}
