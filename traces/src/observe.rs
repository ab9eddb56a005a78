//! Observation of a response stream (SSE or plain JSON), fed byte chunks with their
//! arrival times. Synchronous, allocation-light, never panics on any input.
//!
//! The definitions (docs/metrics.md says them in words):
//! - A *content chunk* is an SSE data event whose first choice, or any choice, carries
//!   non-empty generated text: `delta.content`, `delta.reasoning_content` /
//!   `delta.reasoning`, tool-call argument text (chat), or `text` (completions). A
//!   role-only first chunk, a usage-only last chunk and a finish-only chunk are not
//!   content chunks.
//! - TTFT is the arrival of the first content chunk; ITL gaps are between successive
//!   content chunks (an event counts as arrived with the bytes that complete it).
//! - Output tokens: `usage.completion_tokens` when the server sent it, else the number of
//!   content chunks (one chunk ≈ one token for vLLM, SGLang and the sim; a lower bound
//!   for servers that put several tokens in one chunk).
//! - A plain JSON body (non-streaming) shows its first token only when the body ends, so
//!   its TTFT is the end of the body; without usage its output tokens are estimated from
//!   the text ([`crate::prefix::estimate_tokens`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::prefix::estimate_tokens;
use crate::sse::EventSplitter;
use crate::{Endpoint, GapSummary, TokenSource};

mod skim;

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

/// Largest non-streaming JSON body parsed; a longer one is reported as malformed instead
/// of being held in memory without bound.
const MAX_JSON_BODY_BYTES: usize = 64 << 20;

/// Longest description kept in [`Observation::malformed`].
const MAX_MALFORMED_CHARS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Only whitespace (or nothing) so far.
    Undetected,
    Sse,
    Json,
}

/// Feeds on a response body and measures it.
///
/// ```
/// use retrace_traces::{Endpoint, StreamObserver};
/// let mut obs = StreamObserver::new(Endpoint::Chat);
/// obs.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n", 1_000);
/// obs.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"!\"}}]}\n\ndata: [DONE]\n\n", 1_500);
/// let o = obs.finish(1_600);
/// assert_eq!((o.first_token_us, o.chunk_count, o.output_tokens), (Some(1_000), 2, Some(2)));
/// ```
#[derive(Debug)]
pub struct StreamObserver {
    endpoint: Endpoint,
    mode: Mode,
    /// Leading whitespace seen before the mode was known (replayed into the splitter).
    prelude: Vec<u8>,
    splitter: EventSplitter,
    json_body: Vec<u8>,
    json_too_big: bool,
    text_cap_bytes: Option<usize>,
    gaps_us: Vec<u64>,
    usage_completion_tokens: Option<u32>,
    /// A `usage` object was seen (it takes precedence over llama.cpp `timings`).
    from_usage: bool,
    events: u64,
    obs: Observation,
    /// Whether [`skim`] may read events (off only in the test that compares it with serde).
    fast_path: bool,
    /// What the stream's events so far let the next ones skip (see [`skim::Remembered`]).
    remembered: skim::Remembered,
    /// Events read whole by [`skim::read_events`] (for the tests of that path).
    #[cfg(test)]
    events_read_whole: usize,
}

impl StreamObserver {
    /// An observer for a response of `endpoint`. Whether the body is SSE or plain JSON is
    /// decided by its first non-whitespace byte (`{` or `[` means JSON).
    pub fn new(endpoint: Endpoint) -> Self {
        StreamObserver {
            endpoint,
            mode: Mode::Undetected,
            prelude: Vec::new(),
            splitter: EventSplitter::new(),
            json_body: Vec::new(),
            json_too_big: false,
            text_cap_bytes: None,
            gaps_us: Vec::new(),
            usage_completion_tokens: None,
            from_usage: false,
            events: 0,
            obs: Observation::default(),
            fast_path: true,
            remembered: skim::Remembered::default(),
            #[cfg(test)]
            events_read_whole: 0,
        }
    }

    /// Also keep the generated text, up to `cap_bytes` (cut at a character boundary).
    pub fn capture_text(mut self, cap_bytes: usize) -> Self {
        self.text_cap_bytes = Some(cap_bytes);
        self.obs.text = Some(String::new());
        self
    }

    /// About how much heap memory the observer holds: a buffered JSON body, captured
    /// text, the chunk gaps (for bounding queues of finished rows).
    pub fn held_bytes(&self) -> usize {
        self.prelude.capacity()
            + self.json_body.capacity()
            + self.gaps_us.capacity() * std::mem::size_of::<u64>()
            + self.obs.text.as_ref().map_or(0, String::capacity)
    }

    /// The endpoint this observer was made for.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Feeds the next body bytes, exactly as they came off the wire, with their arrival
    /// offset. Chunks may be split anywhere.
    pub fn feed(&mut self, chunk: &[u8], at_us: u64) {
        if chunk.is_empty() {
            return;
        }
        if self.obs.first_byte_us.is_none() {
            self.obs.first_byte_us = Some(at_us);
        }
        self.obs.body_bytes = self.obs.body_bytes.saturating_add(chunk.len() as u64);
        if self.mode == Mode::Undetected {
            match chunk.iter().find(|b| !b.is_ascii_whitespace()) {
                None => {
                    self.prelude.extend_from_slice(chunk);
                    return;
                }
                Some(b'{') | Some(b'[') => self.mode = Mode::Json,
                Some(_) => self.mode = Mode::Sse,
            }
            let prelude = std::mem::take(&mut self.prelude);
            self.consume(&prelude, at_us);
        }
        self.consume(chunk, at_us);
    }

    fn consume(&mut self, bytes: &[u8], at_us: u64) {
        match self.mode {
            Mode::Undetected => {}
            Mode::Json => {
                if self.json_too_big {
                    return;
                }
                if self.json_body.len() + bytes.len() > MAX_JSON_BODY_BYTES {
                    self.json_too_big = true;
                    self.json_body = Vec::new();
                    self.set_malformed(format!(
                        "JSON body longer than {MAX_JSON_BODY_BYTES} bytes, not parsed"
                    ));
                    return;
                }
                self.json_body.extend_from_slice(bytes);
            }
            Mode::Sse => {
                // The splitter is moved out so the callback can borrow `self` mutably.
                let mut splitter = std::mem::take(&mut self.splitter);
                let mut bytes = bytes;
                loop {
                    // Whole events of the stream's remembered shape, read straight from
                    // the bytes (what the splitter and the skim would make of them).
                    if self.fast_path && splitter.at_event_boundary() {
                        let remembered = std::mem::take(&mut self.remembered);
                        let len = skim::read_events(&remembered, bytes, |text| {
                            self.template_event(text, at_us)
                        });
                        self.remembered = remembered;
                        bytes = &bytes[len..];
                    }
                    // Else one simple event (it may teach the template), or the rest.
                    let simple = splitter.push_simple_event(bytes, &mut |_raw, data| {
                        if let Some(data) = data {
                            self.on_event(data, at_us);
                        }
                    });
                    match simple {
                        Some(len) => bytes = &bytes[len..],
                        None => {
                            splitter.push_each(bytes, |_raw, data| {
                                if let Some(data) = data {
                                    self.on_event(data, at_us);
                                }
                            });
                            break;
                        }
                    }
                }
                self.splitter = splitter;
            }
        }
    }

    /// An event read whole through the template: as [`StreamObserver::on_event`] reads
    /// it (one text, nothing else).
    #[inline(always)]
    fn template_event(&mut self, text: &[u8], at_us: u64) {
        self.events += 1;
        if self.text_cap_bytes.is_some() {
            self.capture(&String::from_utf8_lossy(text));
        }
        self.content_chunk(!text.is_empty(), at_us);
        #[cfg(test)]
        {
            self.events_read_whole += 1;
        }
    }

    /// Ends the body at offset `at_us` and returns what was observed.
    pub fn finish(mut self, at_us: u64) -> Observation {
        match self.mode {
            Mode::Sse => {
                // A last event without its blank line still counts (lenient at EOF).
                if let Some(data) = self.splitter.pending_data() {
                    self.on_event(&data, at_us);
                }
            }
            Mode::Json if !self.json_too_big => {
                let body = std::mem::take(&mut self.json_body);
                self.on_json_body(&body, at_us);
            }
            _ => {}
        }
        self.obs.end_us = Some(at_us);
        self.obs.itl = GapSummary::from_gaps(&mut self.gaps_us);
        match self.usage_completion_tokens {
            Some(tokens) => {
                self.obs.output_tokens = Some(tokens);
                self.obs.output_tokens_source = Some(TokenSource::Usage);
            }
            None if self.mode == Mode::Sse => {
                self.obs.output_tokens = Some(self.obs.chunk_count);
                self.obs.output_tokens_source = Some(TokenSource::Counted);
            }
            None => {} // JSON: set from the text in on_json_body
        }
        self.obs
    }

    fn set_malformed(&mut self, message: String) {
        if self.obs.malformed.is_none() {
            let message = match message.char_indices().nth(MAX_MALFORMED_CHARS) {
                Some((cut, _)) => format!("{}…", &message[..cut]),
                None => message,
            };
            self.obs.malformed = Some(message);
        }
    }

    fn on_event(&mut self, data: &[u8], at_us: u64) {
        self.events += 1;
        let trimmed = data.trim_ascii();
        if trimmed.is_empty() {
            return;
        }
        if trimmed == b"[DONE]" {
            self.obs.complete = true;
            return;
        }
        // The common shape first, without serde; it abstains on anything else.
        let fast = self
            .fast_path
            .then(|| skim::skim(trimmed, &mut self.remembered));
        if let Some(chunk) = fast.flatten() {
            // The skim let only valid UTF-8 through: these conversions are checks only.
            if self.text_cap_bytes.is_some() {
                for text in chunk.texts.into_iter().flatten() {
                    self.capture(&String::from_utf8_lossy(text));
                }
            }
            if let Some(reason) = chunk.finish_reason {
                self.obs.finish_reason = Some(String::from_utf8_lossy(reason).into_owned());
            }
            if let Some([prompt, completion]) = chunk.usage {
                let usage = Usage {
                    prompt_tokens: LenientU32(prompt),
                    completion_tokens: LenientU32(completion),
                };
                self.take_usage(Some(&usage), None);
            }
            self.content_chunk(chunk.has_text, at_us);
            return;
        }
        let chunk: Chunk<'_> = match serde_json::from_slice(trimmed) {
            Ok(chunk) => chunk,
            Err(err) => {
                let n = self.events;
                self.set_malformed(format!("event {n}: invalid JSON: {err}"));
                return;
            }
        };
        if let Some(error) = &chunk.error {
            let n = self.events;
            self.set_malformed(format!("event {n}: error event: {}", error_text(error)));
        }
        self.take_usage(chunk.usage.as_ref(), chunk.timings.as_ref());
        let mut has_text = false;
        let first_index = first_choice_index(&chunk.choices);
        for (i, choice) in chunk.choices.iter().enumerate() {
            let is_first = Some(i) == first_index;
            if let Some(delta) = &choice.delta {
                has_text |= self.take_message(delta, is_first);
            }
            if let Some(text) = choice.text.as_str() {
                has_text |= !text.is_empty();
                if is_first {
                    self.capture(text);
                }
            }
            if is_first {
                if let Some(reason) = choice.finish_reason.as_str() {
                    self.obs.finish_reason = Some(reason.to_string());
                }
            }
        }
        self.content_chunk(has_text, at_us);
    }

    /// Counts a chunk that carried generated text: TTFT, the gap since the previous one.
    #[inline]
    fn content_chunk(&mut self, has_text: bool, at_us: u64) {
        if has_text {
            self.obs.chunk_count = self.obs.chunk_count.saturating_add(1);
            match self.obs.last_token_us {
                None => self.obs.first_token_us = Some(at_us),
                Some(last) => {
                    if self.gaps_us.capacity() == 0 {
                        // Room for a typical stream at once, not regrown at 4, 8, 16, 32.
                        self.gaps_us.reserve(64);
                    }
                    self.gaps_us.push(at_us.saturating_sub(last));
                }
            }
            self.obs.last_token_us = Some(at_us);
        }
    }

    /// Reads a delta or message; true when it carries generated text.
    fn take_message(&mut self, message: &Message<'_>, capture: bool) -> bool {
        let mut has_text = false;
        for text in [
            &message.reasoning_content,
            &message.reasoning,
            &message.content,
        ] {
            if let Some(text) = text.as_str() {
                has_text |= !text.is_empty();
                if capture {
                    self.capture(text);
                }
            }
        }
        has_text || message.tool_call_text
    }

    /// Server-side token counts: `usage` wins; llama.cpp's `timings` fill in what usage
    /// did not give (both are the server's own tokenizer counts).
    fn take_usage(&mut self, usage: Option<&Usage>, timings: Option<&Timings>) {
        if let Some(usage) = usage {
            if let Some(tokens) = usage.completion_tokens.0 {
                self.usage_completion_tokens = Some(tokens);
                self.from_usage = true;
            }
            if let Some(tokens) = usage.prompt_tokens.0 {
                self.obs.usage_prompt_tokens = Some(tokens);
            }
        }
        if let Some(t) = timings {
            if !self.from_usage {
                if let Some(tokens) = t.predicted_n.0 {
                    self.usage_completion_tokens = Some(tokens);
                }
                if let (Some(prompt), cached) = (t.prompt_n.0, t.cache_n.0.unwrap_or(0)) {
                    self.obs.usage_prompt_tokens = Some(prompt.saturating_add(cached));
                }
            }
        }
    }

    fn capture(&mut self, text: &str) {
        let (Some(cap), Some(kept)) = (self.text_cap_bytes, self.obs.text.as_mut()) else {
            return;
        };
        let room = cap.saturating_sub(kept.len());
        if room == 0 || text.is_empty() {
            return;
        }
        let mut cut = room.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        kept.push_str(&text[..cut]);
    }

    fn on_json_body(&mut self, body: &[u8], at_us: u64) {
        let parsed: Chunk<'_> = match serde_json::from_slice(body) {
            Ok(parsed) => parsed,
            Err(err) => {
                self.set_malformed(format!("body is not valid JSON: {err}"));
                return;
            }
        };
        self.obs.complete = true;
        if let Some(error) = &parsed.error {
            self.set_malformed(format!("error body: {}", error_text(error)));
        }
        self.take_usage(parsed.usage.as_ref(), parsed.timings.as_ref());
        let mut text_tokens = 0u32;
        let mut has_text = false;
        let first_index = first_choice_index(&parsed.choices);
        for (i, choice) in parsed.choices.iter().enumerate() {
            let is_first = Some(i) == first_index;
            if let Some(message) = &choice.message {
                has_text |= self.take_message(message, is_first);
                for text in [
                    &message.reasoning_content,
                    &message.reasoning,
                    &message.content,
                ] {
                    if let Some(text) = text.as_str() {
                        text_tokens = text_tokens.saturating_add(estimate_tokens(text));
                    }
                }
            }
            if let Some(text) = choice.text.as_str() {
                has_text |= !text.is_empty();
                text_tokens = text_tokens.saturating_add(estimate_tokens(text));
                if is_first {
                    self.capture(text);
                }
            }
            if is_first {
                if let Some(reason) = choice.finish_reason.as_str() {
                    self.obs.finish_reason = Some(reason.to_string());
                }
            }
        }
        if has_text {
            // The whole answer arrives at once: the first token is only seen at the end.
            self.obs.chunk_count = 1;
            self.obs.first_token_us = Some(at_us);
            self.obs.last_token_us = Some(at_us);
        }
        if self.usage_completion_tokens.is_none() {
            self.obs.output_tokens = Some(text_tokens);
            self.obs.output_tokens_source = Some(TokenSource::Estimate);
        }
    }
}

/// Index of the choice whose text and finish reason are reported: `index: 0`, else the
/// first one.
fn first_choice_index(choices: &[Choice<'_>]) -> Option<usize> {
    if choices.is_empty() {
        return None;
    }
    Some(
        choices
            .iter()
            .position(|c| c.index.0 == Some(0))
            .unwrap_or(0),
    )
}

fn error_text(error: &serde_json::Value) -> String {
    match error {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(map) => match map.get("message") {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => error.to_string(),
        },
        other => other.to_string(),
    }
}

// ---- The subset of OpenAI-style chunks and bodies that is read. Unknown fields are
// ignored and every read field is lenient about its type, so an unexpected shape from
// some server is skipped rather than making the whole chunk malformed.

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow, deserialize_with = "lenient_choices")]
    choices: Vec<Choice<'a>>,
    #[serde(default, deserialize_with = "lenient_usage")]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    /// llama.cpp's server-side counts; a chat stream without `include_usage` has no
    /// `usage`, only these.
    #[serde(default, deserialize_with = "lenient_timings")]
    timings: Option<Timings>,
}

#[derive(Deserialize)]
struct Timings {
    #[serde(default)]
    prompt_n: LenientU32,
    #[serde(default)]
    cache_n: LenientU32,
    #[serde(default)]
    predicted_n: LenientU32,
}

fn lenient_timings<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timings>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    match value {
        serde_json::Value::Object(_) => Ok(serde_json::from_value(value).ok()),
        _ => Ok(None),
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: LenientU32,
    #[serde(default, borrow)]
    delta: Option<Message<'a>>,
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    #[serde(default, borrow)]
    text: LenientText<'a>,
    #[serde(default, borrow)]
    finish_reason: LenientText<'a>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: LenientText<'a>,
    #[serde(default, borrow)]
    reasoning_content: LenientText<'a>,
    #[serde(default, borrow)]
    reasoning: LenientText<'a>,
    /// Whether a tool call carried non-empty argument or name text.
    #[serde(default, rename = "tool_calls", deserialize_with = "tool_call_text")]
    tool_call_text: bool,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: LenientU32,
    #[serde(default)]
    completion_tokens: LenientU32,
}

fn lenient_choices<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Choice<'de>>, D::Error> {
    // `null` or a non-array means "no choices"; a malformed element still fails the chunk.
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Choice<'de>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("choices")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(1);
            while let Some(choice) = seq.next_element::<Option<Choice<'de>>>()? {
                out.extend(choice);
            }
            Ok(out)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Vec::new())
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Vec::new())
        }
    }
    d.deserialize_any(V)
}

fn lenient_usage<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Usage>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    match value {
        serde_json::Value::Object(_) => Ok(serde_json::from_value(value).ok()),
        _ => Ok(None),
    }
}

fn tool_call_text<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    let calls = match &value {
        serde_json::Value::Array(calls) => calls,
        _ => return Ok(false),
    };
    Ok(calls.iter().any(|call| {
        let function = call.get("function");
        ["arguments", "name"].iter().any(|key| {
            function
                .and_then(|f| f.get(key))
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty())
        })
    }))
}

/// A string field that may also be null, absent, or of another type (then: no text).
#[derive(Default)]
struct LenientText<'a>(Option<Cow<'a, str>>);

impl LenientText<'_> {
    fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LenientText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LenientText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("text")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LenientText(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientText(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(LenientText(Some(Cow::Owned(v))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientText(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientText(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientText(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientText(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientText(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientText(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientText(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientText(None))
            }
        }
        d.deserialize_any(V)
    }
}

/// A count that may be null, absent, negative, fractional or huge (then: unknown).
#[derive(Default)]
struct LenientU32(Option<u32>);

impl<'de> Deserialize<'de> for LenientU32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let n = match value {
            serde_json::Value::Number(n) => n
                .as_u64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0 && f.fract() == 0.0)
                        .map(|f| f as u64)
                })
                .and_then(|n| u32::try_from(n).ok()),
            _ => None,
        };
        Ok(LenientU32(n))
    }
}
