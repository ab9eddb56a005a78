//! Incremental Server-Sent Events framing (WHATWG HTML "Server-sent events" parsing rules),
//! shared by the stream observer and by the proxy.
//!
//! Bytes may arrive split at any point. Lines end with `\n`, `\r\n` or a lone `\r`; a blank
//! line ends an event; `data:` lines are joined with `\n`; lines starting with `:` are
//! comments. Every byte pushed ends up in exactly one event's `raw` (or in the remainder
//! still waiting for its blank line), so a proxy can forward events verbatim and drop some.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// One complete SSE event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The exact bytes of the event as they came, including its terminating blank line.
    pub raw: Vec<u8>,
    /// The `data:` field lines joined with `\n`; `None` when the event had no data field
    /// (a comment-only keep-alive, say).
    pub data: Option<Vec<u8>>,
}

/// Splits a byte stream into SSE events, incrementally.
#[derive(Debug, Default)]
pub struct EventSplitter {
    /// Bytes of the event being assembled (from its first byte on).
    buf: Vec<u8>,
    /// Where the next unparsed line starts in `buf`.
    line_start: usize,
    /// Joined data of the event being assembled.
    data: Vec<u8>,
    /// Whether the event being assembled has a data field.
    has_data: bool,
    /// The previous line ended with a lone `\r` at the very end of a push: a `\n` that
    /// starts the next push belongs to that line ending and must be skipped.
    skip_lf: bool,
    /// The stream start has been checked for a byte order mark.
    bom_checked: bool,
    /// `buf[line_start..scanned]` holds no line end: a long line split over many pushes
    /// is scanned once, not once per push.
    scanned: usize,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl EventSplitter {
    /// A splitter at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pushes the next bytes and returns the events they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.push_each(bytes, |raw, data| {
            events.push(SseEvent {
                raw: raw.to_vec(),
                data: data.map(<[u8]>::to_vec),
            })
        });
        events
    }

    /// Whether no part of an event is held and the stream start was checked: bytes
    /// pushed now start a new event. A caller may read whole events it recognises from
    /// such bytes itself, and push the rest.
    pub fn at_event_boundary(&self) -> bool {
        self.buf.is_empty() && !self.skip_lf && self.bom_checked
    }

    /// Like [`EventSplitter::push`], but hands each complete event to `on_event` as
    /// borrowed slices (raw bytes, joined data) instead of allocating: the hot-path form.
    pub fn push_each(&mut self, bytes: &[u8], mut on_event: impl FnMut(&[u8], Option<&[u8]>)) {
        if bytes.is_empty() {
            return;
        }
        let bytes = self.push_simple_events(bytes, &mut on_event);
        if bytes.is_empty() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if !self.bom_checked {
            // A leading BOM is not part of the first line (spec: stripped before parsing).
            // Until it is checked nothing has been consumed, so `buf` is the stream start.
            let bom_len = self.buf.len().min(BOM.len());
            if self.buf[..bom_len] == BOM[..bom_len] {
                if bom_len < BOM.len() {
                    return; // could still become a BOM: wait for more bytes
                }
                self.line_start = BOM.len();
            }
            self.bom_checked = true;
        }
        if self.skip_lf && self.line_start < self.buf.len() {
            if self.buf[self.line_start] == b'\n' {
                self.line_start += 1;
            }
            self.skip_lf = false;
        }
        let mut event_start = 0usize;
        loop {
            let from = self.line_start.max(self.scanned);
            let rest = &self.buf[from..];
            let Some(eol) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.scanned = self.buf.len();
                break;
            };
            let line_end = from + eol;
            let mut next = line_end + 1;
            if self.buf[line_end] == b'\r' {
                if next < self.buf.len() {
                    if self.buf[next] == b'\n' {
                        next += 1;
                    }
                } else {
                    self.skip_lf = true;
                }
            }
            let line_start = self.line_start;
            self.line_start = next;
            if line_end == line_start {
                // Blank line: the event ends here.
                let raw = &self.buf[event_start..next];
                let data = if self.has_data {
                    Some(&self.data[..])
                } else {
                    None
                };
                on_event(raw, data);
                event_start = next;
                self.data.clear();
                self.has_data = false;
                continue;
            }
            self.field_line(line_start, line_end);
        }
        if event_start > 0 {
            self.buf.drain(..event_start);
            self.line_start -= event_start;
            self.scanned = self.scanned.saturating_sub(event_start);
        }
    }

    /// The hot path of [`EventSplitter::push_each`]: while no event is part-read, hands
    /// over the events of `bytes` that are one `data:` line and a blank line (`\n` ends:
    /// what servers send), straight from `bytes`, and returns what is left for the general
    /// path. The general path reads such an event the same way (one data field; its value
    /// after `data:` and one optional space), only after copying it twice.
    #[inline]
    fn push_simple_events<'b>(
        &mut self,
        mut bytes: &'b [u8],
        on_event: &mut impl FnMut(&[u8], Option<&[u8]>),
    ) -> &'b [u8] {
        while let Some(len) = self.push_simple_event(bytes, on_event) {
            bytes = &bytes[len..];
        }
        bytes
    }

    /// One step of [`EventSplitter::push_simple_events`]: when no event is part-read and
    /// `bytes` starts with a whole one-line `data:` event and its blank line (`\n` ends),
    /// hands it to `on_event` and returns its length; otherwise `None`, with nothing
    /// consumed (push the bytes then).
    #[inline]
    pub fn push_simple_event(
        &mut self,
        bytes: &[u8],
        on_event: &mut impl FnMut(&[u8], Option<&[u8]>),
    ) -> Option<usize> {
        if !self.buf.is_empty() || self.skip_lf {
            return None;
        }
        if !self.bom_checked {
            match bytes.first() {
                Some(&b) if b != BOM[0] => self.bom_checked = true,
                _ => return None, // perhaps a BOM: the general path decides
            }
        }
        let rest = bytes.strip_prefix(b"data:")?;
        let value_at = 5 + usize::from(rest.first() == Some(&b' '));
        let eol = memchr::memchr2(b'\n', b'\r', bytes.get(value_at..)?)?;
        let line_end = value_at + eol;
        if bytes[line_end] != b'\n' || bytes.get(line_end + 1) != Some(&b'\n') {
            return None;
        }
        let raw = &bytes[..line_end + 2];
        on_event(raw, Some(&raw[value_at..line_end]));
        Some(raw.len())
    }

    fn field_line(&mut self, start: usize, end: usize) {
        let line = &self.buf[start..end];
        if line.first() == Some(&b':') {
            return; // comment
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &line[line.len()..]),
        };
        if name == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
    }

    /// The bytes pushed so far that belong to no complete event yet (an event still
    /// waiting for its blank line). A proxy forwards them when the stream ends.
    pub fn remainder(&self) -> &[u8] {
        &self.buf
    }

    /// The data of the unfinished event, if it has a data field. Servers sometimes end a
    /// stream without the final blank line; the observer still reads such an event.
    pub fn pending_data(&self) -> Option<Vec<u8>> {
        let mut data = self.has_data.then(|| self.data.clone());
        // A last line without its line end counts too: `data: [DONE]` right at EOF.
        let tail = self.buf.get(self.line_start..).unwrap_or_default();
        let tail = if self.bom_checked { tail } else { &[][..] };
        let value = match tail.strip_prefix(b"data") {
            Some([]) => Some(&[][..]),
            Some([b':', value @ ..]) => Some(value.strip_prefix(b" ").unwrap_or(value)),
            _ => None,
        };
        if let Some(value) = value {
            let joined = data.get_or_insert_with(Vec::new);
            if self.has_data {
                joined.push(b'\n');
            }
            joined.extend_from_slice(value);
        }
        data
    }
}

#[derive(Deserialize)]
struct UsageProbe {
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
    #[serde(default)]
    usage: Option<IgnoredAny>,
}

/// Whether an SSE data payload is an OpenAI usage-only chunk: `choices` is empty (or
/// absent) and `usage` is set. vLLM and OpenAI send it last when the request asked for
/// `stream_options.include_usage`.
pub fn is_usage_only(data: &[u8]) -> bool {
    // Cheap reject first: most chunks are content chunks without usage.
    if !contains(data, b"\"usage\"") {
        return false;
    }
    match serde_json::from_slice::<UsageProbe>(data) {
        Ok(probe) => probe.usage.is_some() && probe.choices.is_none_or(|c| c.is_empty()),
        Err(_) => false,
    }
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all_events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut s = EventSplitter::new();
        chunks.iter().flat_map(|c| s.push(c)).collect()
    }

    #[test]
    fn line_endings_and_multiline_data() {
        let stream: &[u8] = b"data: a\ndata: b\n\n: ping\r\n\r\ndata:c\r\rdata\n\n";
        let events = all_events(&[stream]);
        assert_eq!(events.len(), 4);
        assert_eq!(events[0].data.as_deref(), Some(&b"a\nb"[..]));
        assert_eq!(events[1].data, None);
        assert_eq!(events[2].data.as_deref(), Some(&b"c"[..]));
        assert_eq!(events[3].data.as_deref(), Some(&b""[..]));
        let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
        assert_eq!(raw, stream);
    }

    #[test]
    fn cr_lf_split_across_pushes_is_one_line_end() {
        // "\r" ends a push, "\n" starts the next: one line ending, not a blank line.
        let events = all_events(&[b"data: x\r", b"\ndata: y\r\n\r\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.as_deref(), Some(&b"x\ny"[..]));
    }

    #[test]
    fn bom_is_skipped_and_kept_in_raw() {
        let events = all_events(&[b"\xEF\xBB", b"\xBFdata: 1\n\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.as_deref(), Some(&b"1"[..]));
        assert_eq!(events[0].raw, b"\xEF\xBB\xBFdata: 1\n\n");
    }

    #[test]
    fn usage_only_chunks() {
        assert!(is_usage_only(
            br#"{"id":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#
        ));
        assert!(!is_usage_only(
            br#"{"choices":[{"delta":{"content":"hi"}}],"usage":{"completion_tokens":5}}"#
        ));
        assert!(!is_usage_only(br#"{"choices":[],"usage":null}"#));
        assert!(!is_usage_only(b"[DONE]"));
        assert!(!is_usage_only(br#"{"usage": "#));
    }

    #[test]
    fn long_line_split_over_many_pushes() {
        // The scan position survives pushes (a long line is not rescanned each time),
        // across events drained from the buffer, for a line ended by CR LF.
        let line = vec![b'y'; 100_000];
        let mut stream = b"data: a\n\ndata: ".to_vec();
        stream.extend_from_slice(&line);
        stream.extend_from_slice(b"\r\n\r\ndata: b\n\n");
        let pieces: Vec<&[u8]> = stream.chunks(997).collect();
        let events = all_events(&pieces);
        assert_eq!(events.len(), 3);
        assert_eq!(events[1].data.as_deref(), Some(&line[..]));
        assert_eq!(events[2].data.as_deref(), Some(&b"b"[..]));
        let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
        assert_eq!(raw, stream);
    }

    /// Events pushed in pieces cut anywhere, events pushed a byte at a time (never whole
    /// events in one push, so never the hot path for simple events), and the remainder
    /// and pending data after them: all the same.
    mod split_anywhere {
        use super::*;
        use proptest::prelude::*;

        fn line() -> impl Strategy<Value = String> {
            let value = "[a-z: {}\"]{0,12}";
            prop_oneof![
                6 => value.prop_map(|v| format!("data: {v}")),
                2 => value.prop_map(|v| format!("data:{v}")),
                1 => Just("data".to_string()),
                1 => value.prop_map(|v| format!(": {v}")),
                1 => value.prop_map(|v| format!("event:{v}")),
                1 => Just(String::new()),
            ]
        }

        fn stream() -> impl Strategy<Value = Vec<u8>> {
            let ending = prop_oneof![8 => Just("\n"), 1 => Just("\r\n"), 1 => Just("\r")];
            let bom = prop_oneof![9 => Just(""), 1 => Just("\u{feff}")];
            (bom, prop::collection::vec((line(), ending), 0..24)).prop_map(|(bom, lines)| {
                let mut s = bom.to_string();
                for (line, ending) in lines {
                    s.push_str(&line);
                    s.push_str(ending);
                }
                s.into_bytes()
            })
        }

        /// Each event's data, and the pending data at the end. (Which event's raw bytes
        /// a `\n` after a lone `\r` at the end of a push joins depends on the cut; every
        /// byte is in exactly one raw or the remainder, which the caller checks.)
        type Seen = (Vec<Option<Vec<u8>>>, Option<Vec<u8>>);

        fn pushed(stream: &[u8], cuts: &[usize]) -> Result<Seen, TestCaseError> {
            let mut s = EventSplitter::new();
            let mut events = Vec::new();
            let mut at = 0;
            for &cut in cuts.iter().chain([&stream.len()]) {
                let cut = cut.clamp(at, stream.len());
                events.extend(s.push(&stream[at..cut]));
                at = cut;
            }
            let mut raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
            raw.extend_from_slice(s.remainder());
            prop_assert_eq!(raw, stream);
            Ok((
                events.into_iter().map(|e| e.data).collect(),
                s.pending_data(),
            ))
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

            #[test]
            fn pieces_agree_with_bytes(
                stream in stream(),
                mut cuts in prop::collection::vec(0usize..400, 0..6),
            ) {
                cuts.sort_unstable();
                let bytes: Vec<usize> = (1..stream.len()).collect();
                prop_assert_eq!(pushed(&stream, &cuts)?, pushed(&stream, &bytes)?);
            }
        }
    }

    #[test]
    fn pending_data_at_eof() {
        let mut s = EventSplitter::new();
        assert!(s.push(b"data: [DONE]").is_empty());
        assert_eq!(s.pending_data().as_deref(), Some(&b"[DONE]"[..]));
        assert_eq!(s.remainder(), b"data: [DONE]");
    }
}
