//! The fast path of the stream observer: reads the common shape of a streamed chunk in one
//! pass over its bytes, without building anything.
//!
//! Why: the proxy observes every event of every response it forwards, and the typed serde
//! parse of an event cost ~4,000 instructions (keys validated as UTF-8 one by one, every
//! field visited through serde's machinery), a quarter of the proxy's CPU per request.
//! This reads an event in about a thousand (strings eight bytes at a time).
//!
//! It is exact or it abstains: it returns `None` for anything it does not read exactly as
//! the serde path does — `timings`, `error`, usage counts that are not plain nine-digit
//! integers or null, tool calls, several choices, any backslash escape, non-UTF-8 bytes, duplicate fields, deep nesting, exponents or long
//! numbers, any JSON error — and the caller then parses with serde. So it decides nothing
//! on its own; a property test checks that whenever it answers, serde agrees.

/// What a content chunk says, as the observer uses it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Skimmed<'a> {
    /// A choice carries non-empty generated text.
    pub(super) has_text: bool,
    /// The first choice's texts (valid UTF-8, as [`Parser::string`] checked) in the order
    /// the observer captures them:
    /// `delta.reasoning_content`, `delta.reasoning`, `delta.content`, `text`.
    pub(super) texts: [Option<&'a [u8]>; 4],
    /// The first choice's `finish_reason`.
    pub(super) finish_reason: Option<&'a [u8]>,
    /// A `usage` object: its `prompt_tokens` and `completion_tokens`.
    pub(super) usage: Option<[Option<u32>; 2]>,
}

use crate::scan::Scanner as Parser;

/// Longest event head remembered by [`Remembered`].
const MAX_PREFIX_BYTES: usize = 512;

/// Longest event remembered as the template of [`Remembered`].
const MAX_TEMPLATE_BYTES: usize = 1024;

/// What the reader remembers of a stream's earlier events, so that the next ones cost a
/// comparison instead of a parse. Both parts are caches: exact whatever they hold (a
/// stale one just fails to match), and whichever answers, the answer is the same.
///
/// The *head* is the head of the last event read, up to the value of its `choices` (when
/// nothing before it was `usage`). A server repeats that head in every event of a stream
/// (`id`, `object`, `created`, `model`, …), and the parser's state at its end is always
/// the same: nothing seen yet. So an event that starts with the same bytes is read from
/// there, after one comparison instead of a parse of half its bytes. Exact by
/// construction: the parser is deterministic, and the same bytes bring it to the same
/// state.
///
/// The *template* is the last event whose only reading was one generated text, split
/// around that text's string: most events of a stream are that event again with another
/// token in the string (`…"delta":{"content":"` TOKEN `"},"logprobs":null,…`). An event
/// made of the same bytes before and after a plain string reads as the same text slot
/// holding that string: the parser reaches the string in the same state, a plain
/// string's content moves it nowhere else, and the same bytes after it end the parse the
/// same way. A string the plain scan does not read, or other bytes on either side, and
/// the event is parsed in full.
#[derive(Debug, Default)]
pub(super) struct Remembered {
    /// The head, then the template's bytes before its string (up to and including the
    /// opening quote), after it (from the closing quote on), and `\n\n`: one buffer, so
    /// a stream's observer allocates once for all of it (the proxy frees it on another
    /// thread, where each allocation costs more).
    store: Vec<u8>,
    head_len: usize,
    /// 0: no template.
    before_len: usize,
    after_len: usize,
    /// Which of [`Skimmed::texts`] the template's string is.
    slot: usize,
    /// Neither side of the template holds a line end (`\n`, `\r`): an event of its shape
    /// can be one `data:` line, read by [`read_events`].
    one_line: bool,
}

/// Room reserved at the first write: a typical head and template fit.
const STORE_BYTES: usize = 512;

impl Remembered {
    /// The remembered head (empty: none).
    fn head(&self) -> &[u8] {
        &self.store[..self.head_len]
    }

    /// The template's bytes before its string (empty: no template).
    fn before(&self) -> &[u8] {
        &self.store[self.head_len..self.head_len + self.before_len]
    }

    /// The template's bytes after its string.
    fn after(&self) -> &[u8] {
        let at = self.head_len + self.before_len;
        &self.store[at..at + self.after_len]
    }

    /// The template's bytes after its string and the blank line of a one-line event.
    fn after_line(&self) -> &[u8] {
        let at = self.head_len + self.before_len;
        &self.store[at..at + self.after_len + 2]
    }

    fn reserve(&mut self) {
        if self.store.capacity() == 0 {
            self.store.reserve(STORE_BYTES);
        }
    }

    /// Remembers `head` in place of the last one (the template stays).
    fn set_head(&mut self, head: &[u8]) {
        self.reserve();
        if self.store.len() == self.head_len {
            // No template after it (a stream's first event): a plain copy.
            self.store.clear();
            self.store.extend_from_slice(head);
        } else {
            self.store.splice(..self.head_len, head.iter().copied());
        }
        self.head_len = head.len();
    }

    /// `data` read through the template, when it matches.
    #[inline]
    fn read_template<'a>(&self, data: &'a [u8]) -> Option<Skimmed<'a>> {
        let before = self.before();
        if before.is_empty() || !data.starts_with(before) {
            return None;
        }
        // At the opening quote, the last byte of `before`.
        let mut p = Parser {
            s: data,
            i: before.len() - 1,
        };
        let text = p.string()?;
        if data.get(p.i..)? != self.after() {
            return None;
        }
        let mut out = Skimmed {
            has_text: !text.is_empty(),
            ..Skimmed::default()
        };
        out.texts[self.slot] = Some(text);
        Some(out)
    }

    /// Remembers `data` as the template if `out`, its reading, is one text string and
    /// nothing else.
    fn learn(&mut self, data: &[u8], out: &Skimmed<'_>) {
        if out.finish_reason.is_some() || out.usage.is_some() || data.len() > MAX_TEMPLATE_BYTES {
            return;
        }
        let mut texts = (0..out.texts.len()).filter_map(|slot| Some((slot, out.texts[slot]?)));
        let (Some((slot, text)), None) = (texts.next(), texts.next()) else {
            return;
        };
        // The text borrows from `data` (the parser hands out its own bytes): its offset.
        let Some(start) = (text.as_ptr() as usize).checked_sub(data.as_ptr() as usize) else {
            return;
        };
        let end = start + text.len();
        if start == 0 || data.get(start - 1) != Some(&b'"') || data.get(end) != Some(&b'"') {
            return;
        }
        let (before, after) = (&data[..start], &data[end + 1..]);
        self.reserve();
        self.store.truncate(self.head_len);
        self.store.extend_from_slice(before);
        self.store.extend_from_slice(after);
        self.store.extend_from_slice(b"\n\n");
        self.before_len = before.len();
        self.after_len = after.len();
        self.slot = slot;
        let one_line = |bytes: &[u8]| memchr::memchr2(b'\n', b'\r', bytes).is_none();
        self.one_line = one_line(before) && one_line(after);
    }
}

/// The whole events at the start of `bytes` that are each one `data:` line of the
/// remembered template's shape and a blank line (`data:`, an optional space, the data,
/// `\n\n`): hands each one's text to `each`, in order, and returns the bytes they take.
/// It is what the SSE splitter and [`skim`] make of those bytes, read without the
/// splitter's line search: the splitter takes the line after `data:` and one optional
/// space as the event's data and ends the event at `\n\n`; the data starts and ends with
/// the template's bytes (no whitespace to trim), holds no line end (the template's bytes
/// have none, a plain string neither), and reads through the template, which leaves
/// `memory` as it was. It stops at the first event that is anything else, which the
/// splitter and [`skim`] then read. One loop for the run: a stream's events often come
/// several to a read, and a call an event cost a third of the reading.
pub(super) fn read_events<'a>(
    memory: &Remembered,
    bytes: &'a [u8],
    mut each: impl FnMut(&'a [u8]),
) -> usize {
    if !memory.one_line || memory.before_len == 0 {
        return 0;
    }
    let (before, after_line) = (memory.before(), memory.after_line());
    let mut rest = bytes;
    while let Some(line) = rest.strip_prefix(b"data:") {
        let data = line.strip_prefix(b" ").unwrap_or(line);
        let Some(tail) = data.strip_prefix(before) else {
            break;
        };
        // The text: a run of plain ASCII up to its closing quote, else whatever the
        // parser's string reading takes (from the opening quote, the last byte of `before`).
        let (text, after_at) = match Parser::plain_ascii_run(tail) {
            Some(len) => (&tail[..len], len + 1),
            None => {
                let mut p = Parser {
                    s: data,
                    i: before.len() - 1,
                };
                let Some(text) = p.string() else {
                    break;
                };
                (text, p.i - before.len())
            }
        };
        let Some(next) = tail
            .get(after_at..)
            .and_then(|t| t.strip_prefix(after_line))
        else {
            break;
        };
        each(text);
        rest = next;
    }
    bytes.len() - rest.len()
}

/// Reads `data` (one SSE event's data, trimmed) if it has the common shape; `None` means
/// "parse it with serde". `memory` is what the stream's earlier events left.
pub(super) fn skim<'a>(data: &'a [u8], memory: &mut Remembered) -> Option<Skimmed<'a>> {
    if let Some(out) = memory.read_template(data) {
        return Some(out);
    }
    let (out, head_at) = parse(data, memory.head())?;
    if let Some(at) = head_at {
        memory.set_head(&data[..at]);
    }
    memory.learn(data, &out);
    Some(out)
}

/// Reads `data` in full (from the remembered `head` on when it starts with it), and says
/// where its own head ends when that is one to remember.
fn parse<'a>(data: &'a [u8], head: &[u8]) -> Option<(Skimmed<'a>, Option<usize>)> {
    let mut head_at = None;
    let mut p = Parser { s: data, i: 0 };
    let mut out = Skimmed::default();
    let mut seen_choices = false;
    let mut seen_usage = false;
    let resume_at = head.len();
    let resume = resume_at > 0 && data.starts_with(head);
    let mut member = |p: &mut Parser<'a>, key: &'a [u8]| match key {
        b"choices" => {
            if std::mem::replace(&mut seen_choices, true) {
                return None; // duplicate field: a serde error
            }
            if !seen_usage && !resume && p.i <= MAX_PREFIX_BYTES {
                head_at = Some(p.i);
            }
            p.choices(&mut out)
        }
        b"usage" => {
            if std::mem::replace(&mut seen_usage, true) {
                return None;
            }
            match p.peek()? {
                b'n' => p.literal(b"null"), // no usage
                b'{' => {
                    p.i += 1;
                    out.usage = Some(p.usage()?);
                    Some(())
                }
                _ => None,
            }
        }
        // Read by serde's typed path: abstain.
        b"error" | b"timings" => None,
        _ => p.skip_value(0),
    };
    if resume {
        p.i = resume_at;
        p.members_from(b"choices", &mut member)?;
    } else {
        p.ws();
        p.expect(b'{')?;
        p.members(&mut member)?;
    }
    p.ws();
    (p.i == p.s.len()).then_some((out, head_at))
}

/// The readers of a chunk's members.
impl<'a> Parser<'a> {
    fn choices(&mut self, out: &mut Skimmed<'a>) -> Option<()> {
        match self.peek()? {
            b'n' => return self.literal(b"null"), // no choices
            b'[' => self.i += 1,
            _ => return None,
        }
        let mut read_one = false;
        self.elements(|p| match p.peek()? {
            // A null element is skipped by the serde path too.
            b'n' => p.literal(b"null"),
            b'{' if !read_one => {
                p.i += 1;
                read_one = true;
                p.choice(out)
            }
            _ => None, // several choices, or an odd element: serde's job
        })
    }

    /// The one choice (its `{` consumed): with a single choice it is the first one.
    fn choice(&mut self, out: &mut Skimmed<'a>) -> Option<()> {
        let mut seen = [false; 4]; // index, delta, text, finish_reason
        let mut delta_texts: [Option<&'a [u8]>; 3] = [None; 3];
        let mut text = None;
        self.members(|p, key| {
            let slot = match key {
                b"index" => 0,
                b"delta" => 1,
                b"text" => 2,
                b"finish_reason" => 3,
                // Read by the serde path as a message, which can fail: abstain.
                b"message" => return None,
                _ => return p.skip_value(0),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return None; // duplicate field
            }
            match slot {
                // Any value is a lenient index; with one choice it decides nothing.
                0 => p.skip_value(0),
                1 => match p.peek()? {
                    b'n' => p.literal(b"null"),
                    b'{' => {
                        p.i += 1;
                        p.delta(&mut delta_texts)
                    }
                    _ => None,
                },
                2 => {
                    text = p.text_or_null()?;
                    Some(())
                }
                _ => {
                    out.finish_reason = p.text_or_null()?;
                    Some(())
                }
            }
        })?;
        out.texts = [delta_texts[0], delta_texts[1], delta_texts[2], text];
        out.has_text = out.texts.iter().flatten().any(|t| !t.is_empty());
        Some(())
    }

    /// A delta object (its `{` consumed): `reasoning_content`, `reasoning`, `content`.
    fn delta(&mut self, texts: &mut [Option<&'a [u8]>; 3]) -> Option<()> {
        let mut seen = [false; 3];
        self.members(|p, key| {
            let slot = match key {
                b"reasoning_content" => 0,
                b"reasoning" => 1,
                b"content" => 2,
                // Tool-call text needs the serde path's reading.
                b"tool_calls" => return None,
                _ => return p.skip_value(0),
            };
            if std::mem::replace(&mut seen[slot], true) {
                return None;
            }
            texts[slot] = p.text_or_null()?;
            Some(())
        })
    }

    /// A usage object (its `{` consumed): `prompt_tokens` and `completion_tokens` as
    /// plain counts or null. A repeated key's last value wins, as in the map serde builds.
    fn usage(&mut self) -> Option<[Option<u32>; 2]> {
        let mut counts = [None; 2];
        self.members(|p, key| {
            let slot = match key {
                b"prompt_tokens" => 0,
                b"completion_tokens" => 1,
                _ => return p.skip_value(0),
            };
            counts[slot] = match p.peek()? {
                b'n' => p.literal(b"null").map(|()| None)?,
                _ => Some(p.count()?),
            };
            Some(())
        })?;
        Some(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Endpoint, StreamObserver};
    use proptest::prelude::*;

    fn skim_fresh(data: &[u8]) -> Option<Skimmed<'_>> {
        skim(data, &mut Remembered::default())
    }

    /// Observes `events` (SSE data payloads) with or without the fast path.
    fn observe(events: &[String], fast_path: bool) -> crate::Observation {
        let mut obs = StreamObserver::new(Endpoint::Chat).capture_text(1 << 20);
        obs.fast_path = fast_path;
        for (i, data) in events.iter().enumerate() {
            let event = format!("data: {data}\n\n");
            obs.feed(event.as_bytes(), 1_000 * (i as u64 + 1));
        }
        obs.finish(1_000_000)
    }

    /// Observes `events` (SSE data payloads) framed by `framings` (see [`framed`]), all
    /// the bytes cut at `cuts` and pushed piece by piece, with or without the fast paths.
    fn observe_framed(
        events: &[String],
        framings: &[u8],
        cuts: &[f64],
        fast_path: bool,
    ) -> (crate::Observation, usize) {
        let mut bytes = Vec::new();
        for (i, data) in events.iter().enumerate() {
            bytes.extend_from_slice(framed(data, framings[i % framings.len()]).as_bytes());
        }
        // Cut points as fractions of the bytes.
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|c| (c * bytes.len() as f64) as usize)
            .collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        let mut obs = StreamObserver::new(Endpoint::Chat).capture_text(1 << 20);
        obs.fast_path = fast_path;
        for (i, piece) in at.windows(2).enumerate() {
            obs.feed(&bytes[piece[0]..piece[1]], 1_000 * (i as u64 + 1));
        }
        let whole = obs.events_read_whole;
        (obs.finish(1_000_000), whole)
    }

    /// One event's bytes, in one of the ways a server may frame it.
    fn framed(data: &str, how: u8) -> String {
        let half = (0..=data.len() / 2)
            .rev()
            .find(|&c| data.is_char_boundary(c))
            .unwrap_or(0);
        match how % 10 {
            0..=2 => format!("data: {data}\n\n"),
            3 => format!("data:{data}\n\n"),
            4 => format!("data: {data}\r\n\r\n"),
            5 => format!("data: {data} \n\n"),
            6 => format!(": keep-alive\ndata: {data}\n\n"),
            7 => format!("data:  {data}\n\n\n"),
            // Two data lines (joined with a line end between them).
            8 => format!(
                "event: message\ndata: {}\ndata: {}\n\n",
                &data[..half],
                &data[half..]
            ),
            // A line end inside the data: the second line is another field (ignored).
            _ => format!("data: {}\n{}\n\n", &data[..half], &data[half..]),
        }
    }

    fn text_value() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => Just(r#""""#.to_string()),
            3 => Just(r#"" word""#.to_string()),
            3 => Just(r#""héllo ✓""#.to_string()),
            3 => Just("null".to_string()),
            3 => "[a-z ]{0,6}".prop_map(|t| format!("\"{t}\"")),
            1 => Just(r#""a\nb""#.to_string()),
            1 => Just(r#""\u00e9""#.to_string()),
            1 => Just("7".to_string()),
            1 => Just("true".to_string()),
            1 => Just("[]".to_string()),
            1 => Just(r#"{"a":1}"#.to_string()),
        ]
    }

    fn any_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("0".to_string()),
            Just("-12.5".to_string()),
            Just("1e400".to_string()),
            Just("123456789012345678901234".to_string()),
            Just("01".to_string()),
            text_value(),
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[a-z]{1,3}", inner), 0..3).prop_map(|v| {
                    let members: Vec<String> =
                        v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    fn object(members: Vec<(&'static str, String)>) -> String {
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    fn delta() -> impl Strategy<Value = String> {
        let member = prop_oneof![
            3 => text_value().prop_map(|v| ("content", v)),
            2 => text_value().prop_map(|v| ("reasoning_content", v)),
            2 => text_value().prop_map(|v| ("reasoning", v)),
            2 => Just(("role", r#""assistant""#.to_string())),
            1 => Just(("tool_calls", r#"[{"function":{"arguments":"{}"}}]"#.to_string())),
            1 => any_value().prop_map(|v| ("refusal", v)),
        ];
        prop_oneof![
            6 => prop::collection::vec(member, 0..5).prop_map(object),
            1 => Just("null".to_string()),
            1 => any_value(),
        ]
    }

    fn choice() -> impl Strategy<Value = String> {
        let member = prop_oneof![
            1 => any_value().prop_map(|v| ("index", v)),
            2 => Just(("index", "0".to_string())),
            4 => delta().prop_map(|v| ("delta", v)),
            2 => text_value().prop_map(|v| ("text", v)),
            2 => text_value().prop_map(|v| ("finish_reason", v)),
            1 => any_value().prop_map(|v| ("logprobs", v)),
            1 => delta().prop_map(|v| ("message", v)),
        ];
        prop::collection::vec(member, 0..5).prop_map(object)
    }

    fn count_value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0u32..2_000).prop_map(|n| n.to_string()),
            1 => Just("999999999".to_string()),
            1 => Just("4294967295".to_string()),
            1 => Just("4294967296".to_string()),
            1 => Just("123456789012".to_string()),
            1 => Just("-1".to_string()),
            1 => Just("1.5".to_string()),
            1 => Just("2.0".to_string()),
            1 => Just("1e3".to_string()),
            1 => Just("01".to_string()),
            1 => Just("null".to_string()),
            1 => Just(r#""3""#.to_string()),
            1 => any_value(),
        ]
    }

    fn usage() -> impl Strategy<Value = String> {
        let member = prop_oneof![
            3 => count_value().prop_map(|v| ("prompt_tokens", v)),
            3 => count_value().prop_map(|v| ("completion_tokens", v)),
            1 => count_value().prop_map(|v| ("total_tokens", v)),
            1 => any_value().prop_map(|v| ("prompt_tokens_details", v)),
        ];
        prop_oneof![
            6 => prop::collection::vec(member, 0..5).prop_map(object),
            1 => Just("null".to_string()),
            1 => any_value(),
        ]
    }

    fn choices_value() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => choice().prop_map(|c| format!("[{c}]")),
            1 => Just("[]".to_string()),
            1 => Just("null".to_string()),
            1 => (choice(), choice()).prop_map(|(a, b)| format!("[{a},{b}]")),
            1 => choice().prop_map(|c| format!("[null,{c}]")),
            1 => any_value(),
        ]
    }

    fn member() -> impl Strategy<Value = (&'static str, String)> {
        prop_oneof![
            2 => choices_value().prop_map(|v| ("choices", v)),
            2 => Just(("id", r#""chatcmpl-1""#.to_string())),
            2 => Just(("created", "1733011200".to_string())),
            2 => any_value().prop_map(|v| ("model", v)),
            1 => Just(("usage", r#"{"completion_tokens":3,"prompt_tokens":2}"#.to_string())),
            2 => usage().prop_map(|v| ("usage", v)),
            1 => Just(("timings", r#"{"predicted_n":3}"#.to_string())),
            1 => any_value().prop_map(|v| ("error", v)),
        ]
    }

    fn chunk() -> impl Strategy<Value = String> {
        // Mostly one `choices` with other members around it, as servers send.
        (
            choices_value(),
            prop::collection::vec(member(), 0..3),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(choices, mut members, at)| {
                let i = at.index(members.len() + 1);
                members.insert(i, ("choices", choices));
                object(members)
            })
    }

    /// Damage of an event: cut short, a byte changed, junk after it, or none.
    type Damage = (u8, prop::sample::Index, u8);

    fn damage() -> impl Strategy<Value = Damage> {
        (0u8..8, any::<prop::sample::Index>(), any::<u8>())
    }

    fn damaged(event: String, (how, at, byte): Damage) -> String {
        let mut bytes = event.into_bytes();
        let i = at.index(bytes.len().max(1)).min(bytes.len());
        match how {
            0 => bytes.truncate(i),
            1 if i < bytes.len() => bytes[i] = byte & 0x7f,
            2 => bytes.extend_from_slice(b" x"),
            _ => {}
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// A chunk, sometimes damaged.
    fn event() -> impl Strategy<Value = String> {
        (chunk(), damage()).prop_map(|(c, d)| damaged(c, d))
    }

    /// A stream as servers send one: every event opens with the same members (the head
    /// the reader remembers), then its own `choices` and members; some events damaged.
    fn stream() -> impl Strategy<Value = Vec<String>> {
        let event = (
            choices_value(),
            prop::collection::vec(member(), 0..2),
            damage(),
        );
        (
            prop::collection::vec(member(), 0..3),
            prop::collection::vec(event, 1..6),
        )
            .prop_map(|(head, events)| {
                events
                    .into_iter()
                    .map(|(choices, tail, d)| {
                        let mut members = head.clone();
                        members.push(("choices", choices));
                        members.extend(tail);
                        damaged(object(members), d)
                    })
                    .collect()
            })
    }

    /// A stream of one event shape with another text each time, as servers send (the
    /// template's ground): texts the plain scan cannot read among them, now and then an
    /// event of another shape (more members after `choices`), some events damaged.
    fn shaped_stream() -> impl Strategy<Value = Vec<String>> {
        let slot = prop_oneof![
            Just(("text", false)),
            Just(("content", true)),
            Just(("reasoning_content", true)),
            Just(("reasoning", true)),
        ];
        // Mostly tokens; sometimes anything a text can be.
        let text =
            prop_oneof![3 => "[a-zé ]{0,6}".prop_map(|t| format!("\"{t}\"")), 1 => text_value()];
        // Mostly whole.
        let damage =
            prop_oneof![3 => (Just(7u8), any::<prop::sample::Index>(), Just(0u8)), 1 => damage()];
        let event = (text, damage, 0u8..6);
        (
            prop::collection::vec(member(), 0..3),
            slot,
            prop::collection::vec(member(), 1..3),
            prop::collection::vec(event, 1..8),
        )
            .prop_map(|(head, (key, in_delta), tail, events)| {
                events
                    .into_iter()
                    .map(|(text, d, shape)| {
                        let text = format!("\"{key}\":{text}");
                        let choice = if in_delta {
                            format!(r#"{{"index":0,"delta":{{{text}}},"finish_reason":null}}"#)
                        } else {
                            format!(r#"{{"index":0,{text},"logprobs":null}}"#)
                        };
                        let mut members = head.clone();
                        members.push(("choices", format!("[{choice}]")));
                        if shape == 0 {
                            members.extend(tail.clone());
                        }
                        damaged(object(members), d)
                    })
                    .collect()
            })
    }

    #[test]
    fn shaped_streams_are_read_through_templates() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[9; 32]);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let strategy = shaped_stream();
        let (mut events, mut templated) = (0, 0);
        for _ in 0..500 {
            let mut memory = Remembered::default();
            for data in strategy.new_tree(&mut runner).expect("a value").current() {
                let data = data.trim_ascii().as_bytes();
                events += 1;
                templated += usize::from(memory.read_template(data).is_some());
                skim(data, &mut memory);
            }
        }
        assert!(
            (events / 5..=events * 4 / 5).contains(&templated),
            "{templated} of {events} events read through a template"
        );
    }

    /// The property below is only worth something if the fast path answers often on
    /// these inputs (and abstains often too).
    #[test]
    fn the_generated_events_exercise_both_paths() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let strategy = event();
        let mut answered = 0;
        for _ in 0..2_000 {
            let data = strategy.new_tree(&mut runner).expect("a value").current();
            let mut prefix = Remembered::default();
            answered += usize::from(skim(data.trim_ascii().as_bytes(), &mut prefix).is_some());
        }
        assert!(
            (200..=1_800).contains(&answered),
            "answered {answered} of 2000"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// Whenever the fast path answers, it answers as the serde path does: the same
        /// observation (TTFT, chunks, gaps, finish reason, captured text, malformed).
        #[test]
        fn the_fast_path_agrees_with_serde(events in prop::collection::vec(event(), 1..6)) {
            prop_assert_eq!(observe(&events, true), observe(&events, false));
        }

        /// The same on streams whose events share their head, read from where it ends.
        #[test]
        fn the_fast_path_agrees_with_serde_on_streams(events in stream()) {
            prop_assert_eq!(observe(&events, true), observe(&events, false));
        }

        /// The same on streams of one event shape, read through its template.
        #[test]
        fn the_fast_path_agrees_with_serde_on_shaped_streams(events in shaped_stream()) {
            prop_assert_eq!(observe(&events, true), observe(&events, false));
        }

        /// The same when the events come framed in every way a server may frame them and
        /// cut anywhere: whole events of the template's shape read straight from the
        /// pushed bytes agree with the splitter's reading.
        #[test]
        fn the_fast_path_agrees_with_serde_on_framed_streams(
            events in shaped_stream(),
            framings in prop::collection::vec(any::<u8>(), 1..4),
            cuts in prop::collection::vec(0.0f64..=1.0, 0..4),
        ) {
            let (fast, _) = observe_framed(&events, &framings, &cuts, true);
            let (slow, _) = observe_framed(&events, &framings, &cuts, false);
            prop_assert_eq!(fast, slow);
        }
    }

    /// Streams where bytes that start like a template event are not one whole `data:`
    /// line to the splitter: the fast paths must read them as the splitter does.
    #[test]
    fn only_whole_one_line_events_are_read_straight_from_the_bytes() {
        let event = |text: &str| {
            format!(r#"{{"id":"x","choices":[{{"index":0,"text":"{text}","logprobs":null}}]}}"#)
        };
        // Pushed in two pieces, cut after the first event.
        let observe_bytes = |bytes: &str, fast_path: bool| {
            let mut obs = StreamObserver::new(Endpoint::Completions).capture_text(1 << 10);
            obs.fast_path = fast_path;
            let cut = bytes.find("\n\n").map_or(0, |i| i + 2);
            obs.feed(&bytes.as_bytes()[..cut], 1_000);
            obs.feed(&bytes.as_bytes()[cut..], 2_000);
            obs.finish(3_000)
        };
        let streams = [
            // A template learned from data on two lines (a line end between tokens), then
            // that line end raw inside one data line: to the splitter, a second field.
            "data: {\"id\":\"x\",\ndata: \"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n\
             data: {\"id\":\"x\",\n\"choices\":[{\"index\":0,\"text\":\"b\"}]}\n\n"
                .to_string(),
            // An event ended by one line end: the next data line joins it.
            format!(
                "data: {}\n\ndata: {}\ndata: {}\n\n",
                event("a"),
                event("b"),
                event("c")
            ),
            // A line end, then a comment, then the blank line: one event, read whole.
            format!("data: {}\n\ndata: {}\n: note\n\n", event("a"), event("b")),
            // CR line ends.
            format!(
                "data: {}\n\ndata: {}\r\rdata: {}\n\n",
                event("a"),
                event("b"),
                event("c")
            ),
        ];
        for stream in &streams {
            assert_eq!(
                observe_bytes(stream, true),
                observe_bytes(stream, false),
                "{stream:?}"
            );
        }
    }

    /// A stream of the common shape pushed at once is read whole, event by event, after
    /// its first event (the template's source): the path the property above checks runs.
    #[test]
    fn whole_events_are_read_straight_from_the_bytes() {
        let events: Vec<String> = (0..16)
            .map(|i| format!(r#"{{"id":"c1","object":"text_completion","created":7,"model":"m","choices":[{{"index":0,"text":" w{i}","logprobs":null,"finish_reason":null}}]}}"#))
            .collect();
        let (obs, whole) = observe_framed(&events, &[0], &[], true);
        assert_eq!(whole, 15, "every event after the first is read whole");
        assert_eq!(obs.chunk_count, 16);
        // Framed as `data:` without a space: the same.
        let (_, whole) = observe_framed(&events, &[3], &[], true);
        assert_eq!(whole, 15);
        // Cut mid-event: read whole up to the cut; the push that starts mid-event goes to
        // the splitter.
        let (obs_cut, whole) = observe_framed(&events, &[0], &[0.5], true);
        assert!((5..15).contains(&whole), "{whole}");
        assert_eq!(obs_cut.chunk_count, 16);
        // CRLF line ends: the splitter's path.
        let (_, whole) = observe_framed(&events, &[4], &[], true);
        assert_eq!(whole, 0);
    }

    #[test]
    fn a_repeated_head_is_read_once() {
        let mut prefix = Remembered::default();
        let first = br#"{"id":"cmpl-1","model":"m","choices":[{"text":"a"}]}"#;
        let second = br#"{"id":"cmpl-1","model":"m","choices":[{"text":""}],"x":1}"#;
        assert!(skim(first, &mut prefix).expect("first").has_text);
        assert_eq!(prefix.head(), br#"{"id":"cmpl-1","model":"m","choices":"#);
        // Read from the remembered head on: the same answer as a fresh read.
        assert_eq!(skim(second, &mut prefix), skim_fresh(second));
        let other = br#"{"id":"cmpl-2","choices":[{"text":"b"}]}"#;
        assert!(skim(other, &mut prefix).expect("other head").has_text);
        assert_eq!(prefix.head(), br#"{"id":"cmpl-2","choices":"#);
        // A head with usage before `choices` is not remembered (its state is not empty).
        let mut prefix = Remembered::default();
        let usage_first = br#"{"usage":null,"choices":[]}"#;
        assert!(skim(usage_first, &mut prefix).is_some());
        assert!(prefix.head().is_empty());
        // A remembered head does not hide a duplicate `choices` later on.
        let mut prefix = Remembered::default();
        skim(first, &mut prefix);
        let duplicate = br#"{"id":"cmpl-1","model":"m","choices":[],"choices":[]}"#;
        assert_eq!(skim(duplicate, &mut prefix), None);
    }

    #[test]
    fn a_repeated_event_shape_is_read_through_its_template() {
        let mut memory = Remembered::default();
        let first =
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#;
        assert!(skim(first, &mut memory).expect("first").has_text);
        assert_eq!(
            memory.before(),
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":""#
        );
        assert_eq!(memory.after(), br#"},"finish_reason":null}]}"#);
        let next =
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":" bé"},"finish_reason":null}]}"#;
        let read = memory
            .read_template(next.as_bytes())
            .expect("the same shape");
        assert_eq!(Some(read), skim_fresh(next.as_bytes()));
        let empty =
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":""},"finish_reason":null}]}"#;
        assert!(!memory.read_template(empty).expect("an empty text").has_text);
        // A string the plain scan cannot read, and other bytes after it: not through the
        // template (serde's job, and a full read).
        let escaped = br#"{"id":"c","choices":[{"index":0,"delta":{"content":"
"},"finish_reason":null}]}"#;
        assert_eq!(memory.read_template(escaped), None);
        assert_eq!(skim(escaped, &mut memory), None);
        let finish =
            br#"{"id":"c","choices":[{"index":0,"delta":{"content":"z"},"finish_reason":"stop"}]}"#;
        assert_eq!(memory.read_template(finish), None);
        let s = skim(finish, &mut memory).expect("finish");
        assert_eq!(s.finish_reason, Some(&b"stop"[..]));
        // A finish reason is more than one text: the template stays as it was.
        assert_eq!(memory.after(), br#"},"finish_reason":null}]}"#);
        // Two texts are not one: nothing learnt.
        let mut memory = Remembered::default();
        let two = br#"{"choices":[{"delta":{"reasoning":"r","content":"c"}}]}"#;
        assert!(skim(two, &mut memory).is_some());
        assert!(memory.before().is_empty());
    }

    #[test]
    fn reads_the_common_shapes() {
        let vllm = br#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1733011200,"model":"m","system_fingerprint":null,"choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null,"stop_reason":null}]}"#;
        let s = skim_fresh(vllm).expect("common chat chunk");
        assert!(s.has_text);
        assert_eq!(s.texts, [None, None, Some(&b" word"[..]), None]);
        let role = br#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        let s = skim_fresh(role).expect("role chunk");
        assert!(!s.has_text);
        let finish = br#"{"choices":[{"index":0,"text":"","finish_reason":"length"}]}"#;
        let s = skim_fresh(finish).expect("finish chunk");
        assert_eq!((s.has_text, s.finish_reason), (false, Some(&b"length"[..])));
        let reasoning = br#"{"choices":[{"delta":{"reasoning_content":"hm","content":null}}]}"#;
        assert!(skim_fresh(reasoning).expect("reasoning").has_text);
        let usage = br#"{"choices":[{"index":0,"text":"","finish_reason":"length"}],"usage":{"prompt_tokens":8,"completion_tokens":16,"total_tokens":24,"prompt_tokens":9,"prompt_tokens_details":null}}"#;
        assert_eq!(
            skim_fresh(usage).expect("usage").usage,
            Some([Some(9), Some(16)])
        );
        let unicode = "{\"choices\":[{\"text\":\"héllo ✓\"}]}";
        assert_eq!(
            skim_fresh(unicode.as_bytes()).expect("utf-8").texts[3],
            Some("héllo ✓".as_bytes())
        );
    }

    #[test]
    fn abstains_where_serde_must_decide() {
        for data in [
            &br#"{"choices":[],"usage":{"completion_tokens":3.5}}"#[..],
            br#"{"usage":{"completion_tokens":3},"usage":null}"#,
            br#"{"usage":{"prompt_tokens":1234567890}}"#,
            br#"{"usage":{"prompt_tokens":012}}"#,
            br#"{"usage":[]}"#,
            br#"{"error":{"message":"x"}}"#,
            br#"{"choices":[{"text":"a"},{"text":"b"}]}"#,
            br#"{"choices":[{"text":"a\nb"}]}"#,
            br#"{"choices":[{"delta":{"tool_calls":[]}}]}"#,
            br#"{"choices":[{"text":"a","text":"b"}]}"#,
            br#"{"choices":[{"text":"a"}]} x"#,
            br#"{"choices":[{"text":"a"}],"n":1e400}"#,
            br#"{"choices":[{"text":5}]}"#,
            br#"{"choices":[{"text":"a"}]"#,
            br#"[{"choices":[]}]"#,
            b"{\"choices\":[{\"text\":\"\xff\"}]}",
        ] {
            assert_eq!(skim_fresh(data), None, "{}", String::from_utf8_lossy(data));
        }
    }
}
