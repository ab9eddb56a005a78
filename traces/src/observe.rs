//! Observation of a response stream (SSE or plain JSON), fed byte chunks with their
//! arrival times. Synchronous, allocation-light, never panics on any input.

use crate::{Endpoint, GapSummary, TokenSource};

/// What was observed of one response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Offset of the first body byte.
    pub first_byte_us: Option<u64>,
    /// Offset of the first chunk carrying non-empty generated text (TTFT).
    pub first_token_us: Option<u64>,
    /// Offset of the last chunk carrying generated text.
    pub last_token_us: Option<u64>,
    /// Offset at which the body ended.
    pub end_us: Option<u64>,
    /// Content chunks seen.
    pub chunk_count: u32,
    /// Inter-token gap summary (gaps between successive content chunks).
    pub itl: Option<GapSummary>,
    /// Output tokens, and where that count came from.
    pub output_tokens: Option<u32>,
    /// Source of `output_tokens`.
    pub output_tokens_source: Option<TokenSource>,
    /// `usage.prompt_tokens`, when the server sent usage.
    pub usage_prompt_tokens: Option<u32>,
    /// `finish_reason` of the first choice.
    pub finish_reason: Option<String>,
    /// Total body bytes.
    pub body_bytes: u64,
    /// Whether `data: [DONE]` (SSE) or a complete JSON body was seen.
    pub complete: bool,
    /// A malformed event or body, described briefly.
    pub malformed: Option<String>,
    /// Generated text, only when asked for (capped).
    pub text: Option<String>,
}

/// Feeds on a response body and measures it.
#[derive(Debug)]
pub struct StreamObserver {
    #[allow(dead_code)]
    endpoint: Endpoint,
}
