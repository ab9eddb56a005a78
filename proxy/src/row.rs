//! Turning what the hot path saw into a [`RequestRow`]. Runs on the writer thread: JSON
//! parsing, tokenizing and hashing never delay a client.

use std::sync::Arc;

use retrace_traces::metrics::Latencies;
use retrace_traces::prefix::{block_hashes_from_text, block_hashes_from_tokens, estimate_tokens};
use retrace_traces::{Endpoint, Outcome, RequestRow, StreamObserver, TokenSource};

use crate::request_info::{self, Prompt, RequestInfo};
use retrace_traces::tokenizer::Tokenizer;

/// Everything one finished request left behind, not yet interpreted.
pub(crate) struct PendingRow {
    /// The request's number in this process (see [`RowContext::id_prefix`]).
    pub(crate) request_number: u64,
    pub(crate) session_id: Option<String>,
    pub(crate) arrival_us: i64,
    pub(crate) endpoint: Endpoint,
    pub(crate) request_bytes: Option<u64>,
    /// The whole request body, when it was within the parse cap and not parsed yet.
    pub(crate) request_body: Option<Vec<u8>>,
    /// Already parsed (with `--include-usage`, before sending).
    pub(crate) info: Option<RequestInfo>,
    pub(crate) status: Option<u16>,
    pub(crate) outcome: Outcome,
    /// Inline: the row is boxed once (see `Recording`), the observer with it.
    pub(crate) observer: Option<StreamObserver>,
    /// Offset of the end, µs from arrival.
    pub(crate) end_us: u64,
}

impl PendingRow {
    /// The memory the row holds while it waits for the writer: itself (its stream
    /// observer inside), its request body, and what the observer keeps (a JSON body,
    /// captured text, the chunk gaps).
    pub(crate) fn held_bytes(&self) -> usize {
        std::mem::size_of::<PendingRow>()
            + self.request_body.as_ref().map_or(0, Vec::capacity)
            + self.observer.as_ref().map_or(0, StreamObserver::held_bytes)
    }
}

/// What the writer thread needs to interpret rows.
pub(crate) struct RowContext {
    pub(crate) tokenizer: Option<Arc<Tokenizer>>,
    pub(crate) block_tokens: usize,
    pub(crate) capture_content: bool,
    pub(crate) capture_max_bytes: usize,
    /// Random hex prefix of this process's request ids.
    pub(crate) id_prefix: String,
}

/// `<prefix>-<n>`, `n` in at least ten decimal digits (zero-padded): unique across the
/// recordings of many proxies (pods) merged together, and nearly sorted within one, so the
/// column (DELTA_BYTE_ARRAY) costs about a byte a row instead of nine for random ids. Made
/// here, on the writer thread: the event loop only takes the number.
fn request_id(prefix: &str, n: u64) -> String {
    let digits = n.to_string();
    let mut id = String::with_capacity(prefix.len() + 1 + digits.len().max(10));
    id.push_str(prefix);
    id.push('-');
    for _ in digits.len()..10 {
        id.push('0');
    }
    id.push_str(&digits);
    id
}

fn truncate(text: &str, cap_bytes: usize) -> String {
    if text.len() <= cap_bytes {
        return text.to_string();
    }
    let mut end = cap_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl PendingRow {
    pub(crate) fn build(self, ctx: &RowContext) -> RequestRow {
        let recognized = !matches!(self.endpoint, Endpoint::Other(_));
        let info = self.info.or_else(|| {
            self.request_body
                .as_deref()
                .filter(|_| recognized)
                .and_then(|body| request_info::parse(&self.endpoint, body))
        });
        let observation = self.observer.map(|obs| obs.finish(self.end_us));
        let info = info.unwrap_or_default();

        let mut prompt_tokens = None;
        let mut prompt_tokens_source = TokenSource::Unknown;
        let mut prefix_hashes = Vec::new();
        let mut prompt_text = None;
        if recognized {
            match &info.prompt {
                Some(Prompt::Tokens(tokens)) => {
                    prefix_hashes = block_hashes_from_tokens(tokens, ctx.block_tokens);
                    prompt_tokens = Some(count(tokens.len()));
                    prompt_tokens_source = TokenSource::Tokenizer;
                }
                Some(Prompt::Text(text)) => {
                    match ctx.tokenizer.as_deref() {
                        Some(tokenizer) => {
                            let ids = tokenizer.encode(text);
                            prefix_hashes = block_hashes_from_tokens(&ids, ctx.block_tokens);
                            prompt_tokens = Some(count(ids.len()));
                            prompt_tokens_source = TokenSource::Tokenizer;
                        }
                        None => {
                            prefix_hashes = block_hashes_from_text(text, ctx.block_tokens);
                            prompt_tokens = Some(estimate_tokens(text));
                            prompt_tokens_source = TokenSource::Estimate;
                        }
                    }
                    if ctx.capture_content {
                        prompt_text = Some(truncate(text, ctx.capture_max_bytes));
                    }
                }
                None => {}
            }
            if let Some(usage) = observation.as_ref().and_then(|o| o.usage_prompt_tokens) {
                prompt_tokens = Some(usage);
                prompt_tokens_source = TokenSource::Usage;
            }
        }
        let latencies = observation
            .as_ref()
            .map(Latencies::from_observation)
            .unwrap_or_default();
        let content = observation.as_ref().filter(|_| recognized);
        let ended_normally = matches!(self.outcome, Outcome::Ok | Outcome::HttpError);
        RequestRow {
            request_id: request_id(&ctx.id_prefix, self.request_number),
            arrival_us: self.arrival_us,
            session_id: self.session_id,
            endpoint: self.endpoint,
            model: info.model,
            stream: info.stream,
            prompt_tokens,
            prompt_tokens_source,
            max_tokens: info.max_tokens,
            message_count: info.message_count,
            output_tokens: content.and_then(|o| o.output_tokens),
            output_tokens_source: content
                .and_then(|o| o.output_tokens_source)
                .unwrap_or(TokenSource::Unknown),
            prefix_hashes,
            status: self.status,
            outcome: self.outcome,
            ttfb_us: latencies.ttfb_us,
            ttft_us: latencies.ttft_us.filter(|_| recognized),
            // Arrival to the end of the response, however it ended.
            e2e_us: if ended_normally {
                latencies.e2e_us.or(Some(self.end_us))
            } else {
                Some(self.end_us)
            },
            chunk_count: content.map(|o| o.chunk_count),
            itl: latencies.itl.filter(|_| recognized),
            request_bytes: self.request_bytes,
            response_bytes: observation.as_ref().map(|o| o.body_bytes),
            finish_reason: content.and_then(|o| o.finish_reason.clone()),
            prompt_text,
            response_text: content
                .filter(|_| ctx.capture_content)
                .and_then(|o| o.text.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_zero_padded_to_ten_digits() {
        assert_eq!(request_id("ab12", 0), "ab12-0000000000");
        assert_eq!(request_id("ab12", 7), "ab12-0000000007");
        assert_eq!(request_id("ab12", 9_876_543_210), "ab12-9876543210");
        assert_eq!(request_id("ab12", 12_345_678_901), "ab12-12345678901");
        assert_eq!(request_id("x", u64::MAX), format!("x-{}", u64::MAX));
    }
}
