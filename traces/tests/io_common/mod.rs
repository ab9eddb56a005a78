//! Row generators shared by the io_* tests.
#![allow(dead_code, unreachable_pub)]

use retrace_traces::rows::{
    Endpoint, ErrorKind, Outcome, RequestRow, ResultRow, SampleRow, SampleSource, TokenSource,
};
use retrace_traces::GapSummary;

pub const T0: i64 = 1_700_000_000_000_000;

/// A request row with every field set (varied by `i`), unicode in the strings.
pub fn full_request(i: u64) -> RequestRow {
    RequestRow {
        request_id: format!("req-{i:06}-é"),
        arrival_us: T0 + i as i64 * 1_000,
        session_id: Some(format!("sess-{}-日本", i % 4)),
        endpoint: match i % 3 {
            0 => Endpoint::Chat,
            1 => Endpoint::Completions,
            _ => Endpoint::Other("/v1/embeddings".to_string()),
        },
        model: Some(format!("model-{}", i % 2)),
        stream: i % 2 == 0,
        prompt_tokens: Some(100 + i as u32),
        prompt_tokens_source: TokenSource::Tokenizer,
        max_tokens: Some(256),
        message_count: Some(3),
        output_tokens: Some(50 + i as u32),
        output_tokens_source: TokenSource::Counted,
        prefix_hashes: (0..(i % 4)).map(|k| u64::MAX - k * 7 - i).collect(),
        status: Some(200),
        outcome: Outcome::Ok,
        ttfb_us: Some(900 + i),
        ttft_us: Some(15_000 + i),
        e2e_us: Some(1_500_000 + i),
        chunk_count: Some(49),
        itl: Some(GapSummary {
            count: 48,
            mean_us: 20_000,
            p50_us: 19_000,
            p99_us: 60_000,
            max_us: 90_000 + i,
        }),
        request_bytes: Some(1234),
        response_bytes: Some(56_789),
        finish_reason: Some("length".to_string()),
        prompt_text: Some("Bonjour, ça va? 🚀 \"quoted\"\nnewline".to_string()),
        response_text: Some("Très bien — 谢谢".to_string()),
    }
}

/// A request row with every optional field empty.
pub fn sparse_request(i: u64) -> RequestRow {
    RequestRow {
        stream: false,
        prompt_tokens_source: TokenSource::Unknown,
        output_tokens_source: TokenSource::Unknown,
        outcome: Outcome::ClientCancelled,
        ..RequestRow::imported(
            format!("sparse-{i}"),
            T0 + i as i64 * 1_000 + 500,
            Endpoint::Completions,
        )
    }
}

pub fn full_result(i: u64) -> ResultRow {
    ResultRow {
        request_id: format!("req-{i}#copy1"),
        session_id: Some("s-ü".to_string()),
        scenario: "2x".to_string(),
        phase: Some("spike".to_string()),
        load_level: 2.5,
        shard: Some(3),
        intended_send_us: T0 + i as i64 * 10_000,
        actual_send_us: T0 + i as i64 * 10_000 + 120,
        lateness_us: 120,
        in_flight_at_send: 17,
        endpoint: Endpoint::Chat,
        prompt_tokens: 512,
        prompt_tokens_source: TokenSource::Usage,
        max_tokens: Some(128),
        status: Some(500),
        error_kind: Some(ErrorKind::HttpStatus),
        error_message: Some("boom — 500".to_string()),
        ttfb_us: Some(1),
        ttft_us: Some(2),
        ttft_from_intended_us: Some(3),
        e2e_us: Some(4),
        e2e_from_intended_us: Some(5),
        tpot_us: Some(12.75),
        itl: Some(GapSummary {
            count: 1,
            mean_us: 2,
            p50_us: 3,
            p99_us: 4,
            max_us: 5,
        }),
        output_tokens: Some(9),
        output_tokens_source: TokenSource::Usage,
        chunk_count: Some(9),
        finish_reason: Some("stop".to_string()),
    }
}

pub fn sparse_result(i: u64) -> ResultRow {
    ResultRow {
        request_id: format!("r{i}"),
        session_id: None,
        scenario: "soak".to_string(),
        phase: None,
        load_level: 1.0,
        shard: None,
        intended_send_us: T0 + i as i64 * 10_000 + 5,
        actual_send_us: T0 + i as i64 * 10_000 + 3,
        lateness_us: -2,
        in_flight_at_send: 1,
        endpoint: Endpoint::Completions,
        prompt_tokens: 0,
        prompt_tokens_source: TokenSource::Estimate,
        max_tokens: None,
        status: None,
        error_kind: Some(ErrorKind::Connect),
        error_message: None,
        ttfb_us: None,
        ttft_us: None,
        ttft_from_intended_us: None,
        e2e_us: None,
        e2e_from_intended_us: None,
        tpot_us: None,
        itl: None,
        output_tokens: None,
        output_tokens_source: TokenSource::Unknown,
        chunk_count: None,
        finish_reason: None,
    }
}

pub fn sample(i: u64) -> SampleRow {
    SampleRow {
        time_us: T0 + i as i64 * 100_000,
        source: match i % 3 {
            0 => SampleSource::Server,
            1 => SampleSource::Process,
            _ => SampleSource::Client,
        },
        name: if i % 2 == 0 {
            "kv_cache_usage"
        } else {
            "rss_bytes"
        }
        .to_string(),
        labels: if i % 2 == 0 {
            String::new()
        } else {
            "model=ñ,pod=a".to_string()
        },
        value: i as f64 * 0.5 - 3.0,
    }
}

pub fn meta() -> retrace_traces::schema::FileMeta {
    retrace_traces::schema::FileMeta {
        producer: "io-tests".to_string(),
        prefix_block_tokens: Some(512),
        start_us: Some(T0),
        host: Some("hôte".to_string()),
        extra: vec![("x.custom".to_string(), "value".to_string())],
    }
}
