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
    pub(crate) request_id: String,
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
    pub(crate) response: Option<ResponseLog>,
    /// Offset of the end, µs from arrival.
    pub(crate) end_us: u64,
}

impl PendingRow {
    /// The memory the row holds while it waits for the writer: itself and its buffers.
    pub(crate) fn held_bytes(&self) -> usize {
        std::mem::size_of::<PendingRow>()
            + self.request_id.capacity()
            + self.request_body.as_ref().map_or(0, Vec::capacity)
            + self.response.as_ref().map_or(0, ResponseLog::held_bytes)
    }
}

/// The most response bytes a request keeps for the writer thread to observe. Beyond it,
/// the rest of the body is observed on the hot path as it passes, so a long stream holds
/// no more than this (a short reply, most of them, never costs the hot path its parse).
pub(crate) const RESPONSE_LOG_MAX_BYTES: usize = 8 << 10;

/// A response body on its way to the stream observer. The hot path copies each chunk and
/// its arrival offset here, and the writer thread feeds them to the observer when it
/// builds the row: the same calls, in the same order, as feeding them on arrival, so the
/// row is the same (`a_logged_response_observes_as_fed_on_arrival`), but the parse is off
/// the path between the upstream's bytes and the client's (on the 18-event benchmark
/// stream it was ~9.5k of the event loop's ~45k instructions a request).
#[derive(Debug)]
pub(crate) struct ResponseLog {
    observer: StreamObserver,
    bytes: Vec<u8>,
    /// Each chunk's end in `bytes` and its arrival offset (µs).
    chunks: Vec<(usize, u64)>,
    /// Past the byte cap: chunks go straight to the observer.
    inline: bool,
}

impl ResponseLog {
    pub(crate) fn new(observer: StreamObserver) -> ResponseLog {
        ResponseLog {
            observer,
            bytes: Vec::new(),
            chunks: Vec::new(),
            inline: false,
        }
    }

    /// The next body chunk as it came off the wire, with its arrival offset.
    pub(crate) fn feed(&mut self, chunk: &[u8], at_us: u64) {
        if !self.inline {
            if self.bytes.len() + chunk.len() <= RESPONSE_LOG_MAX_BYTES {
                if self.bytes.is_empty() {
                    self.bytes.reserve(chunk.len().max(4 << 10));
                }
                self.bytes.extend_from_slice(chunk);
                self.chunks.push((self.bytes.len(), at_us));
                return;
            }
            self.replay();
            self.inline = true;
        }
        self.observer.feed(chunk, at_us);
    }

    /// The memory the log holds (what it adds to a queued row).
    pub(crate) fn held_bytes(&self) -> usize {
        std::mem::size_of::<StreamObserver>()
            + self.bytes.capacity()
            + self.chunks.capacity() * std::mem::size_of::<(usize, u64)>()
    }

    /// Feeds what is logged to the observer and frees the log.
    fn replay(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        let mut start = 0;
        for (end, at_us) in std::mem::take(&mut self.chunks) {
            self.observer.feed(&bytes[start..end], at_us);
            start = end;
        }
    }

    /// The observer, fed the whole body (on the writer thread).
    pub(crate) fn into_observer(mut self) -> StreamObserver {
        self.replay();
        self.observer
    }
}

/// What the writer thread needs to interpret rows.
pub(crate) struct RowContext {
    pub(crate) tokenizer: Option<Arc<Tokenizer>>,
    pub(crate) block_tokens: usize,
    pub(crate) capture_content: bool,
    pub(crate) capture_max_bytes: usize,
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
        let observation = self
            .response
            .map(|log| log.into_observer().finish(self.end_us));
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
            request_id: self.request_id,
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
    use proptest::prelude::*;
    use retrace_traces::Endpoint;

    fn event(i: usize, chat: bool) -> String {
        if chat {
            format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" w{i}\"}}}}]}}\n\n"
            )
        } else {
            format!("data: {{\"choices\":[{{\"index\":0,\"text\":\" w{i}\"}}]}}\n\n")
        }
    }

    proptest! {
        /// Short bodies (all logged), long ones (logged, then observed inline past the
        /// cap) and cuts anywhere: the observation is what feeding on arrival gives.
        #[test]
        fn a_logged_response_observes_as_fed_on_arrival(
            events in 0usize..400,
            chat in any::<bool>(),
            cuts in proptest::collection::vec(1usize..700, 1..64),
            capture in any::<bool>(),
        ) {
            let endpoint = if chat { Endpoint::Chat } else { Endpoint::Completions };
            let mut body = String::new();
            for i in 0..events {
                body.push_str(&event(i, chat));
            }
            body.push_str("data: [DONE]\n\n");
            let make = || {
                let observer = StreamObserver::new(endpoint.clone());
                if capture { observer.capture_text(1 << 20) } else { observer }
            };
            let mut direct = make();
            let mut log = ResponseLog::new(make());
            let (mut at, mut at_us, mut i) = (0, 1_000u64, 0);
            while at < body.len() {
                let end = (at + cuts[i % cuts.len()]).min(body.len());
                direct.feed(&body.as_bytes()[at..end], at_us);
                log.feed(&body.as_bytes()[at..end], at_us);
                at = end;
                at_us += 250;
                i += 1;
            }
            let logged_inline = log.inline;
            prop_assert_eq!(logged_inline, body.len() > RESPONSE_LOG_MAX_BYTES);
            let expected = direct.finish(at_us);
            prop_assert_eq!(log.into_observer().finish(at_us), expected.clone());
            prop_assert_eq!(expected.chunk_count, events as u32);
        }
    }
}
