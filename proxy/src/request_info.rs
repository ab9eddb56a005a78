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

fn as_u32(value: Option<&Value>) -> Option<u32> {
    value
        .and_then(Value::as_u64)
        .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
}

/// The text of a chat message's `content`: a string, or the `text` of its parts.
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

/// Parses the fields the recording needs. `None` when the body is not a JSON object.
pub(crate) fn parse(endpoint: &Endpoint, body: &[u8]) -> Option<RequestInfo> {
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
                // Prompt text for hashing: each message as `role\ncontent\n`, in order, so
                // that a conversation extended by one turn shares the earlier blocks.
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
                // A batch of prompts: recorded as their concatenation.
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
