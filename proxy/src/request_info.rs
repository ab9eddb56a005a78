//! What the proxy reads from a request body: the shape fields of an OpenAI completions or
//! chat request, and the prompt the prefix hashes and token counts are made from.

use retrace_traces::Endpoint;
use serde_json::Value;

/// The prompt as sent: text, or token ids (completions accepts both).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

/// Shape fields of one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequestInfo {
    pub(crate) model: Option<String>,
    pub(crate) stream: bool,
    pub(crate) max_tokens: Option<u32>,
    pub(crate) message_count: Option<u32>,
    pub(crate) prompt: Option<Prompt>,
    /// The client itself asked for `stream_options.include_usage`.
    pub(crate) client_asked_usage: bool,
}

fn saturating_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Parses the fields the recording needs. `None` when the body is not a JSON object.
///
/// One pass with borrowed strings and no JSON tree. Every field is read leniently (a value
/// of another type counts as absent; a repeated key's last value wins), as looking the
/// fields up in a `serde_json::Value` of the body does: a property test checks the two
/// agree. The tree cost ~5,000 instructions for a small request, and a long prompt was
/// copied twice.
pub(crate) fn parse(endpoint: &Endpoint, body: &[u8]) -> Option<RequestInfo> {
    use lenient::Any;
    // The common shapes in one scan; serde's reading decides whatever that abstains on.
    let fields = match fast::body(body) {
        Some(fields) => fields,
        None => serde_json::from_slice::<lenient::Body<'_>>(body).ok()?,
    };
    let count = |v: &Any<'_>| match v {
        Any::Count(n) => Some(saturating_u32(*n)),
        _ => None,
    };
    let mut info = RequestInfo {
        model: match fields.model {
            Any::Text(text) => Some(text.into_owned()),
            _ => None,
        },
        stream: matches!(fields.stream, Any::Flag(true)),
        max_tokens: count(&fields.max_completion_tokens).or(count(&fields.max_tokens)),
        client_asked_usage: matches!(fields.include_usage, Any::Flag(true)),
        ..RequestInfo::default()
    };
    match endpoint {
        Endpoint::Chat => {
            if let Some(messages) = fields.messages {
                info.message_count = Some(u32::try_from(messages.len()).unwrap_or(u32::MAX));
                // Prompt text for hashing: each message as `role\ncontent\n`, in order, so
                // that a conversation extended by one turn shares the earlier blocks.
                let mut text = String::new();
                for message in &messages {
                    if let Any::Text(role) = &message.role {
                        text.push_str(role);
                    }
                    text.push('\n');
                    for part in &message.content {
                        text.push_str(part);
                    }
                    text.push('\n');
                }
                info.prompt = Some(Prompt::Text(text));
            }
        }
        Endpoint::Completions => {
            info.prompt = match fields.prompt {
                Some(lenient::PromptField::Text(text)) => Some(Prompt::Text(text.into_owned())),
                Some(lenient::PromptField::Items(items)) => {
                    let tokens: Option<Vec<u32>> = items.iter().map(count).collect();
                    match tokens {
                        Some(tokens) if !tokens.is_empty() => Some(Prompt::Tokens(tokens)),
                        // A batch of prompts: recorded as their concatenation.
                        _ => Some(Prompt::Text(
                            items
                                .iter()
                                .filter_map(|item| match item {
                                    Any::Text(text) => Some(text.as_ref()),
                                    _ => None,
                                })
                                .collect::<Vec<_>>()
                                .join("\n"),
                        )),
                    }
                }
                None => None,
            };
        }
        Endpoint::Other(_) => {}
    }
    Some(info)
}

/// Lenient, borrowing readers of the request fields (see [`parse`]).
mod lenient {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    /// `visit_*` methods that read a value of a type the reader does not take: it is
    /// consumed (checked as JSON) and the reader's "absent" value returned.
    macro_rules! absent {
        ($v:expr; $($kind:ident),*) => { $( absent!(@one $v; $kind); )* };
        (@one $v:expr; bool) => {
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($v) }
        };
        (@one $v:expr; i64) => {
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($v) }
        };
        (@one $v:expr; u64) => {
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($v) }
        };
        (@one $v:expr; f64) => {
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($v) }
        };
        (@one $v:expr; str) => {
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($v) }
        };
        (@one $v:expr; unit) => {
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok($v) }
        };
        (@one $v:expr; seq) => {
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok($v)
            }
        };
        (@one $v:expr; map) => {
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok($v)
            }
        };
    }

    /// Any JSON value, checked as reading it into a `serde_json::Value` checks it (UTF-8 and
    /// escapes of strings, the range of numbers, the nesting depth) and then dropped.
    /// serde's `IgnoredAny` skips without those checks, and the reading must reject
    /// exactly the bodies a `Value` rejects.
    struct Skip;

    impl<'de> Deserialize<'de> for Skip {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Skip;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                absent!(Skip; bool, i64, u64, f64, str, unit, seq, map);
            }
            d.deserialize_any(V)
        }
    }

    /// A scalar the request's fields are made of; anything else is `Other`.
    #[derive(Default)]
    pub(super) enum Any<'a> {
        Text(Cow<'a, str>),
        Flag(bool),
        /// A non-negative integer (what `Value::as_u64` reads).
        Count(u64),
        #[default]
        Other,
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Any<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Any<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Any::Text(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Any::Text(Cow::Owned(v.to_string())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Any::Text(Cow::Owned(v)))
                }
                fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                    Ok(Any::Flag(v))
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                    Ok(Any::Count(v))
                }
                absent!(Any::Other; i64, f64, unit, seq, map);
            }
            d.deserialize_any(V)
        }
    }

    /// The fields of a request body that are read.
    #[derive(Default)]
    pub(super) struct Body<'a> {
        pub(super) model: Any<'a>,
        pub(super) stream: Any<'a>,
        pub(super) max_completion_tokens: Any<'a>,
        pub(super) max_tokens: Any<'a>,
        /// `stream_options.include_usage`.
        pub(super) include_usage: Any<'a>,
        /// `messages`, when an array.
        pub(super) messages: Option<Vec<Message<'a>>>,
        pub(super) prompt: Option<PromptField<'a>>,
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Body<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Body<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut body = Body::default();
                    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                        match key.as_ref() {
                            "model" => body.model = map.next_value()?,
                            "stream" => body.stream = map.next_value()?,
                            "max_completion_tokens" => {
                                body.max_completion_tokens = map.next_value()?
                            }
                            "max_tokens" => body.max_tokens = map.next_value()?,
                            "stream_options" => {
                                body.include_usage = map.next_value::<Options<'de>>()?.0
                            }
                            "messages" => body.messages = map.next_value::<Messages<'de>>()?.0,
                            "prompt" => body.prompt = map.next_value::<PromptValue<'de>>()?.0,
                            _ => {
                                map.next_value::<Skip>()?;
                            }
                        }
                    }
                    Ok(body)
                }
            }
            d.deserialize_map(V)
        }
    }

    /// The member `name` of an object (a repeated key's last value wins); the others are
    /// skipped.
    fn field_of<'de, A: MapAccess<'de>>(mut map: A, name: &str) -> Result<Any<'de>, A::Error> {
        let mut value = Any::Other;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if key == name {
                value = map.next_value()?;
            } else {
                map.next_value::<Skip>()?;
            }
        }
        Ok(value)
    }

    /// `include_usage` of a `stream_options` object.
    struct Options<'a>(Any<'a>);

    impl<'de: 'a, 'a> Deserialize<'de> for Options<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Options<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    field_of(map, "include_usage").map(Options)
                }
                absent!(Options(Any::Other); bool, i64, u64, f64, str, unit, seq);
            }
            d.deserialize_any(V)
        }
    }

    /// A chat message: its role and the texts of its content.
    #[derive(Default)]
    pub(super) struct Message<'a> {
        pub(super) role: Any<'a>,
        pub(super) content: Vec<Cow<'a, str>>,
    }

    struct Messages<'a>(Option<Vec<Message<'a>>>);

    impl<'de: 'a, 'a> Deserialize<'de> for Messages<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Messages<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut messages = Vec::new();
                    while let Some(message) = seq.next_element::<Message<'de>>()? {
                        messages.push(message);
                    }
                    Ok(Messages(Some(messages)))
                }
                absent!(Messages(None); bool, i64, u64, f64, str, unit, map);
            }
            d.deserialize_any(V)
        }
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Message<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Message<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut message = Message::default();
                    while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                        match key.as_ref() {
                            "role" => message.role = map.next_value()?,
                            "content" => message.content = map.next_value::<Content<'de>>()?.0,
                            _ => {
                                map.next_value::<Skip>()?;
                            }
                        }
                    }
                    Ok(message)
                }
                // Not an object: a message without role or content (still counted).
                absent!(Message::default(); bool, i64, u64, f64, str, unit, seq);
            }
            d.deserialize_any(V)
        }
    }

    /// A message's `content`: a string, or the `text` of each part of an array.
    struct Content<'a>(Vec<Cow<'a, str>>);

    impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Content<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Content(vec![Cow::Borrowed(v)]))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Content(vec![Cow::Owned(v.to_string())]))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Content(vec![Cow::Owned(v)]))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut texts = Vec::new();
                    while let Some(part) = seq.next_element::<Part<'de>>()? {
                        if let Any::Text(text) = part.0 {
                            texts.push(text);
                        }
                    }
                    Ok(Content(texts))
                }
                absent!(Content(Vec::new()); bool, i64, u64, f64, unit, map);
            }
            d.deserialize_any(V)
        }
    }

    /// The `text` of a content part (an object; anything else has none).
    struct Part<'a>(Any<'a>);

    impl<'de: 'a, 'a> Deserialize<'de> for Part<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Part<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                    field_of(map, "text").map(Part)
                }
                absent!(Part(Any::Other); bool, i64, u64, f64, str, unit, seq);
            }
            d.deserialize_any(V)
        }
    }

    /// A completions `prompt`: a string, or an array (token ids or a batch of strings).
    pub(super) enum PromptField<'a> {
        Text(Cow<'a, str>),
        Items(Vec<Any<'a>>),
    }

    struct PromptValue<'a>(Option<PromptField<'a>>);

    impl<'de: 'a, 'a> Deserialize<'de> for PromptValue<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = PromptValue<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any value")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(PromptValue(Some(PromptField::Text(Cow::Borrowed(v)))))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(PromptValue(Some(PromptField::Text(Cow::Owned(
                        v.to_string(),
                    )))))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                    Ok(PromptValue(Some(PromptField::Text(Cow::Owned(v)))))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                    let mut items = Vec::new();
                    while let Some(item) = seq.next_element::<Any<'de>>()? {
                        items.push(item);
                    }
                    Ok(PromptValue(Some(PromptField::Items(items))))
                }
                absent!(PromptValue(None); bool, i64, u64, f64, unit, map);
            }
            d.deserialize_any(V)
        }
    }
}

/// The request fields read by [`retrace_traces::scan::Scanner`], exact or abstaining (`None`: serde's reading
/// decides): the same [`lenient::Body`] serde's reading builds, for bodies without escapes,
/// exponents or fractions in the read fields, long numbers or deep nesting — what clients
/// send. The serde reading costs ~3,000 instructions for a small request, this ~600.
mod fast {
    use std::borrow::Cow;

    use retrace_traces::scan::Scanner;

    use super::lenient::{Any, Body, Message, PromptField};

    pub(super) fn body(bytes: &[u8]) -> Option<Body<'_>> {
        let mut p = Scanner::new(bytes);
        p.ws();
        p.expect(b'{')?;
        let mut body = Body::default();
        p.members(|p, key| {
            // A repeated key's last value wins, as in serde's reading.
            match key {
                b"model" => body.model = any(p)?,
                b"stream" => body.stream = any(p)?,
                b"max_completion_tokens" => body.max_completion_tokens = any(p)?,
                b"max_tokens" => body.max_tokens = any(p)?,
                b"stream_options" => body.include_usage = field_of(p, b"include_usage")?,
                b"messages" => body.messages = messages(p)?,
                b"prompt" => body.prompt = prompt(p)?,
                _ => p.skip_value(1)?,
            }
            Some(())
        })?;
        p.at_end().then_some(body)
    }

    fn text<'a>(p: &mut Scanner<'a>) -> Option<Cow<'a, str>> {
        std::str::from_utf8(p.string()?).ok().map(Cow::Borrowed)
    }

    /// A scalar as [`Any`] reads it: strings, booleans, counts; anything else is `Other`.
    fn any<'a>(p: &mut Scanner<'a>) -> Option<Any<'a>> {
        match p.peek()? {
            b'"' => text(p).map(Any::Text),
            b't' => p.literal(b"true").map(|()| Any::Flag(true)),
            b'f' => p.literal(b"false").map(|()| Any::Flag(false)),
            b'0'..=b'9' => p.count().map(|n| Any::Count(u64::from(n))),
            _ => p.skip_value(1).map(|()| Any::Other),
        }
    }

    /// The member `name` of an object (the last one); not an object: `Other`.
    fn field_of<'a>(p: &mut Scanner<'a>, name: &[u8]) -> Option<Any<'a>> {
        if p.peek()? != b'{' {
            return p.skip_value(1).map(|()| Any::Other);
        }
        p.bump();
        let mut value = Any::Other;
        p.members(|p, key| {
            if key == name {
                value = any(p)?;
                Some(())
            } else {
                p.skip_value(2)
            }
        })?;
        Some(value)
    }

    /// `messages`: `Some(None)` when it is not an array.
    fn messages<'a>(p: &mut Scanner<'a>) -> Option<Option<Vec<Message<'a>>>> {
        if p.peek()? != b'[' {
            return p.skip_value(1).map(|()| None);
        }
        p.bump();
        let mut messages = Vec::new();
        p.elements(|p| {
            messages.push(message(p)?);
            Some(())
        })?;
        Some(Some(messages))
    }

    fn message<'a>(p: &mut Scanner<'a>) -> Option<Message<'a>> {
        let mut message = Message::default();
        if p.peek()? != b'{' {
            return p.skip_value(2).map(|()| message); // counted, without role or content
        }
        p.bump();
        p.members(|p, key| {
            match key {
                b"role" => message.role = any(p)?,
                b"content" => message.content = content(p)?,
                _ => p.skip_value(3)?,
            }
            Some(())
        })?;
        Some(message)
    }

    /// A message's `content`: a string, or the `text` of each part of an array.
    fn content<'a>(p: &mut Scanner<'a>) -> Option<Vec<Cow<'a, str>>> {
        match p.peek()? {
            b'"' => Some(vec![text(p)?]),
            b'[' => {
                p.bump();
                let mut texts = Vec::new();
                p.elements(|p| {
                    if let Any::Text(text) = field_of(p, b"text")? {
                        texts.push(text);
                    }
                    Some(())
                })?;
                Some(texts)
            }
            _ => p.skip_value(3).map(|()| Vec::new()),
        }
    }

    /// A completions `prompt`: `Some(None)` when neither a string nor an array.
    fn prompt<'a>(p: &mut Scanner<'a>) -> Option<Option<PromptField<'a>>> {
        match p.peek()? {
            b'"' => text(p).map(|t| Some(PromptField::Text(t))),
            b'[' => {
                p.bump();
                let mut items = Vec::new();
                p.elements(|p| {
                    items.push(any(p)?);
                    Some(())
                })?;
                Some(Some(PromptField::Items(items)))
            }
            _ => p.skip_value(1).map(|()| None),
        }
    }
}

/// Rewrites a streaming request to ask for `stream_options.include_usage: true`. `None`
/// when the body is not safe to rewrite (not a JSON object, not streaming, or the
/// client already asked).
pub(crate) fn inject_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    let mut json: Value = serde_json::from_slice(body).ok()?;
    let object = json.as_object_mut()?;
    if object.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let options = object
        .entry("stream_options")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let options = options.as_object_mut()?;
    if options.get("include_usage").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    serde_json::to_vec(&json).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn as_u32(value: Option<&Value>) -> Option<u32> {
        value.and_then(Value::as_u64).map(saturating_u32)
    }

    fn content_text(content: &Value, out: &mut String) {
        match content {
            Value::String(text) => out.push_str(text),
            Value::Array(parts) => {
                for part in parts {
                    if let Some(text) = part.get("text").and_then(Value::as_str) {
                        out.push_str(text);
                    }
                }
            }
            _ => {}
        }
    }

    /// The reference reading: the body as a `serde_json::Value`, fields looked up in it
    /// (what `parse` did before it read the fields in one pass).
    fn parse_via_value(endpoint: &Endpoint, body: &[u8]) -> Option<RequestInfo> {
        let json: Value = serde_json::from_slice(body).ok()?;
        let object = json.as_object()?;
        let mut info = RequestInfo {
            model: object
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_string),
            stream: object
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            max_tokens: as_u32(object.get("max_completion_tokens"))
                .or(as_u32(object.get("max_tokens"))),
            client_asked_usage: object
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..RequestInfo::default()
        };
        match endpoint {
            Endpoint::Chat => {
                if let Some(messages) = object.get("messages").and_then(Value::as_array) {
                    info.message_count = Some(u32::try_from(messages.len()).unwrap_or(u32::MAX));
                    let mut text = String::new();
                    for message in messages {
                        text.push_str(message.get("role").and_then(Value::as_str).unwrap_or(""));
                        text.push('\n');
                        if let Some(content) = message.get("content") {
                            content_text(content, &mut text);
                        }
                        text.push('\n');
                    }
                    info.prompt = Some(Prompt::Text(text));
                }
            }
            Endpoint::Completions => {
                info.prompt = match object.get("prompt") {
                    Some(Value::String(text)) => Some(Prompt::Text(text.clone())),
                    Some(Value::Array(items))
                        if items.iter().all(Value::is_u64) && !items.is_empty() =>
                    {
                        Some(Prompt::Tokens(
                            items.iter().filter_map(|v| as_u32(Some(v))).collect(),
                        ))
                    }
                    Some(Value::Array(items)) => Some(Prompt::Text(
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("\n"),
                    )),
                    _ => None,
                };
            }
            Endpoint::Other(_) => {}
        }
        Some(info)
    }

    fn scalar() -> impl Strategy<Value = String> {
        // Mostly what the one-scan reader reads itself; a quarter of what it leaves to serde.
        let plain = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("0".to_string()),
            Just("7".to_string()),
            Just("-3".to_string()),
            Just(r#""m""#.to_string()),
            Just(r#""héllo""#.to_string()),
            "[a-z ]{0,5}".prop_map(|t| format!("\"{t}\"")),
        ];
        let odd = prop_oneof![
            Just("4294967296".to_string()),
            Just("2.0".to_string()),
            Just("1e3".to_string()),
            Just(r#""a\"b\u00e9\n""#.to_string()),
            // What a `Value` rejects and a lax skip would not: a lone surrogate, a number
            // out of range, nesting past serde_json's depth limit.
            Just(r#""\ud800""#.to_string()),
            Just("1e400".to_string()),
            Just(format!("{}{}", "[".repeat(130), "]".repeat(130))),
        ];
        prop_oneof![3 => plain, 1 => odd]
    }

    fn value() -> impl Strategy<Value = String> {
        scalar().prop_recursive(3, 16, 4, |inner| {
            let key = prop_oneof![
                Just("role".to_string()),
                Just("content".to_string()),
                Just("text".to_string()),
                Just("include_usage".to_string()),
                Just("type".to_string()),
                Just(r#"te\u0078t"#.to_string()),
                "[a-z]{1,3}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key, inner), 0..4).prop_map(|v| {
                    let members: Vec<String> =
                        v.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    fn object_of(members: Vec<(&'static str, String)>) -> String {
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    /// The shapes the read fields have (a message list, parts, token ids, options), with
    /// their own fields repeated or of other types now and then.
    fn shaped() -> impl Strategy<Value = String> {
        let part = prop_oneof![
            3 => prop::collection::vec(
                prop_oneof![
                    3 => scalar().prop_map(|v| ("text", v)),
                    1 => Just(("type", r#""text""#.to_string())),
                ],
                0..3,
            )
            .prop_map(object_of),
            1 => scalar(),
        ];
        let content = prop_oneof![
            3 => scalar(),
            2 => prop::collection::vec(part, 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            1 => value(),
        ];
        let message = prop_oneof![
            6 => prop::collection::vec(
                prop_oneof![
                    2 => scalar().prop_map(|v| ("role", v)),
                    2 => content.prop_map(|v| ("content", v)),
                    1 => scalar().prop_map(|v| ("name", v)),
                ],
                0..4,
            )
            .prop_map(object_of),
            1 => scalar(),
        ];
        prop_oneof![
            4 => scalar(),
            2 => prop::collection::vec(scalar(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            2 => prop::collection::vec((0u32..100_000).prop_map(|n| n.to_string()), 1..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            3 => prop::collection::vec(message, 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            1 => prop::collection::vec(scalar().prop_map(|v| ("include_usage", v)), 0..3)
                .prop_map(object_of),
            1 => value(),
        ]
    }

    /// Request bodies: the read fields (repeated sometimes) with values of every type,
    /// other fields, a non-object now and then, some cut short.
    fn body() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("model"),
            Just("stream"),
            Just("max_tokens"),
            Just("max_completion_tokens"),
            Just("stream_options"),
            Just("messages"),
            Just("prompt"),
            Just("mod\\u0065l"),
            Just("temperature"),
        ];
        let object = prop::collection::vec((key, shaped()), 0..6).prop_map(|members| {
            let members: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", members.join(","))
        });
        (
            prop_oneof![8 => object, 1 => value()],
            any::<prop::sample::Index>(),
            0u8..6,
        )
            .prop_map(|(body, at, how)| {
                if how == 0 {
                    let cut = at.index(body.len().max(1));
                    body.char_indices()
                        .map(|(i, _)| i)
                        .take_while(|&i| i <= cut)
                        .last()
                        .map_or(body.clone(), |i| body[..i].to_string())
                } else {
                    body
                }
            })
    }

    /// Bodies as clients send them, all read by the one-scan reader: its own choices
    /// (which repeated key wins, what a part or an option that is not an object reads as)
    /// decide the result.
    fn client_body() -> impl Strategy<Value = String> {
        let flag = prop_oneof![Just("true"), Just("false"), Just("null"), Just("1")];
        let text = "[a-z ]{0,4}".prop_map(|t| format!("\"{t}\""));
        let part = prop_oneof![
            4 => prop::collection::vec(
                prop_oneof![
                    3 => text.clone().prop_map(|v| ("text", v)),
                    1 => Just(("type", r#""text""#.to_string())),
                ],
                0..3,
            )
            .prop_map(object_of),
            1 => text.clone(),
        ];
        let content = prop_oneof![
            2 => text.clone(),
            2 => prop::collection::vec(part, 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            1 => Just(r#"{"text":"x"}"#.to_string()),
        ];
        let message = prop::collection::vec(
            prop_oneof![
                2 => text.clone().prop_map(|v| ("role", v)),
                2 => content.prop_map(|v| ("content", v)),
                1 => text.clone().prop_map(|v| ("name", v)),
            ],
            0..4,
        )
        .prop_map(object_of);
        let member = prop_oneof![
            2 => text.clone().prop_map(|v| ("model", v)),
            2 => flag.clone().prop_map(|v| ("stream", v.to_string())),
            2 => (0u32..5_000).prop_map(|n| ("max_tokens", n.to_string())),
            1 => (0u32..5_000).prop_map(|n| ("max_completion_tokens", n.to_string())),
            2 => prop::collection::vec(flag.prop_map(|v| ("include_usage", v.to_string())), 0..3)
                .prop_map(|v| ("stream_options", object_of(v))),
            3 => prop::collection::vec(message, 0..4)
                .prop_map(|v| ("messages", format!("[{}]", v.join(",")))),
            2 => text.prop_map(|v| ("prompt", v)),
            1 => prop::collection::vec((0u32..100_000).prop_map(|n| n.to_string()), 0..4)
                .prop_map(|v| ("prompt", format!("[{}]", v.join(",")))),
            1 => Just(("temperature", "0.7".to_string())),
        ];
        prop::collection::vec(member, 0..8).prop_map(object_of)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        /// The one-scan reader reads every body a client sends, as a `Value` reads it.
        #[test]
        fn client_bodies_are_read_in_one_scan(body in client_body()) {
            prop_assert!(fast::body(body.as_bytes()).is_some(), "{}", body);
            for endpoint in [Endpoint::Chat, Endpoint::Completions] {
                prop_assert_eq!(
                    parse(&endpoint, body.as_bytes()),
                    parse_via_value(&endpoint, body.as_bytes()),
                    "{}", body
                );
            }
        }

        /// The one-pass reading agrees with reading the body into a `Value`.
        #[test]
        fn the_one_pass_parse_agrees_with_the_json_tree(body in body()) {
            for endpoint in [Endpoint::Chat, Endpoint::Completions, Endpoint::Other("/x".into())] {
                prop_assert_eq!(
                    parse(&endpoint, body.as_bytes()),
                    parse_via_value(&endpoint, body.as_bytes()),
                    "{}", body
                );
            }
        }
    }

    /// The property above is only worth something for the fast path if it answers often
    /// on those bodies (and abstains often too).
    #[test]
    fn the_generated_bodies_exercise_both_readers() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[5; 32]);
        let mut runner = TestRunner::new_with_rng(Config::default(), rng);
        let strategy = body();
        let answered = (0..2_000)
            .filter(|_| {
                let body = strategy.new_tree(&mut runner).expect("a value").current();
                fast::body(body.as_bytes()).is_some()
            })
            .count();
        assert!(
            (200..=1_800).contains(&answered),
            "answered {answered} of 2000"
        );
    }

    #[test]
    fn common_bodies_take_the_fast_path() {
        for body in [
            &br#"{"model":"m","prompt":"benchmark","max_tokens":16,"stream":true}"#[..],
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"temperature":0.7,
                "messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#,
            br#"{"prompt":[1,2,3],"max_tokens":5,"logit_bias":{"50256":-100}}"#,
        ] {
            assert!(fast::body(body).is_some(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn bodies_a_json_tree_rejects_are_rejected() {
        let deep = format!(
            "{{\"model\":\"m\",\"x\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in [
            &b"{\"model\":\"m\",\"user\":\"\\ud800\"}"[..],
            b"{\"model\":\"m\",\"temperature\":1e400}",
            b"{\"model\":\"m\",\"x\":\"\xff\"}",
            b"{\"model\":[\"\\ud800\"]}",
            deep.as_bytes(),
        ] {
            assert_eq!(parse_via_value(&Endpoint::Chat, body), None);
            assert_eq!(
                parse(&Endpoint::Chat, body),
                None,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn chat_fields() {
        let body = br#"{"model":"m","stream":true,"max_completion_tokens":7,"max_tokens":3,
            "messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#;
        let info = parse(&Endpoint::Chat, body).unwrap();
        assert_eq!(info.model.as_deref(), Some("m"));
        assert!(info.stream);
        assert_eq!(info.max_tokens, Some(7));
        assert_eq!(info.message_count, Some(2));
        assert_eq!(
            info.prompt,
            Some(Prompt::Text("system\nbe brief\nuser\nhi\n".into()))
        );
        assert!(!info.client_asked_usage);
    }

    #[test]
    fn completions_prompts() {
        let info = parse(
            &Endpoint::Completions,
            br#"{"prompt":"abc","max_tokens":5}"#,
        )
        .unwrap();
        assert_eq!(info.prompt, Some(Prompt::Text("abc".into())));
        assert_eq!(info.max_tokens, Some(5));
        let info = parse(&Endpoint::Completions, br#"{"prompt":[1,2,3]}"#).unwrap();
        assert_eq!(info.prompt, Some(Prompt::Tokens(vec![1, 2, 3])));
        assert!(parse(&Endpoint::Completions, b"not json").is_none());
    }

    #[test]
    fn include_usage_is_injected_only_when_safe() {
        let out = inject_include_usage(br#"{"stream":true,"prompt":"x"}"#).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], Value::Bool(true));
        assert!(inject_include_usage(br#"{"stream":false}"#).is_none());
        assert!(inject_include_usage(
            br#"{"stream":true,"stream_options":{"include_usage":true}}"#
        )
        .is_none());
        assert!(inject_include_usage(b"[1]").is_none());
    }
}
