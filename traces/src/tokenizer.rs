//! A small loader for Hugging Face `tokenizer.json` files with a BPE model: byte-level
//! BPE (GPT-2, Llama 3, Qwen) and SentencePiece-style BPE (Llama 2, Mistral).
//!
//! The merges are applied exactly; pre-tokenization is a close approximation of the
//! model's regex (runs of letters, digits, other symbols, each with one leading space),
//! and added/special tokens are not matched. Counts are therefore near-exact for prose
//! and code, and the source column says `tokenizer`.
//!
//! One definition for the whole workspace: the proxy counts recorded prompts with it
//! (`retrace proxy --tokenizer`) and replay sizes prompts with it
//! (`retrace replay --tokenizer`), so the two agree on what a prompt's length is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Why a `tokenizer.json` cannot be used; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file cannot be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON.
    #[error("{}:{line}: not JSON: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line of the syntax error.
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A field is missing or unusable.
    #[error("{}: field `{field}`: {message}", path.display())]
    Field {
        /// The file.
        path: PathBuf,
        /// The JSON path of the field, e.g. `model.merges[3]`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// A BPE tokenizer loaded from `tokenizer.json`.
#[derive(Debug)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), u32>,
    byte_level: bool,
    unk: Option<u32>,
    byte_chars: [char; 256],
}

fn bad(path: &Path, field: &str, message: &str) -> TokenizerError {
    TokenizerError::Field {
        path: path.to_path_buf(),
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// The text a chat conversation's prompt tokens are counted on: each message as
/// `role\ncontent\n`, in order. The proxy records chat prompts this way, and replay sizes
/// chat prompts on it, so a recording of a replay gives back the trace's counts.
pub fn chat_text<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = String::new();
    for (role, content) in messages {
        text.push_str(role);
        text.push('\n');
        text.push_str(content);
        text.push('\n');
    }
    text
}

/// GPT-2's reversible byte → printable character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let code = if printable {
            b as u32
        } else {
            extra += 1;
            255 + extra
        };
        *slot = char::from_u32(code).unwrap_or('?');
    }
    table
}

#[derive(PartialEq, Clone, Copy)]
enum Class {
    Letter,
    Digit,
    Space,
    Other,
}

fn class(c: char) -> Class {
    if c.is_alphabetic() {
        Class::Letter
    } else if c.is_numeric() {
        Class::Digit
    } else if c.is_whitespace() {
        Class::Space
    } else {
        Class::Other
    }
}

/// Splits text into pre-tokens: runs of one class, a single space joining the run after it.
fn pre_tokenize(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let start = chars[i].0;
        let mut j = i;
        if chars[i].1 == ' ' && i + 1 < chars.len() && class(chars[i + 1].1) != Class::Space {
            j += 1; // a leading space belongs to the word after it
        }
        let run_class = class(chars[j].1);
        while j < chars.len() && class(chars[j].1) == run_class {
            // A whitespace run leaves its last space to the word that follows.
            if run_class == Class::Space
                && chars[j].1 == ' '
                && j + 1 < chars.len()
                && class(chars[j + 1].1) != Class::Space
                && j > i
            {
                break;
            }
            j += 1;
        }
        let end = chars.get(j).map_or(text.len(), |c| c.0);
        pieces.push(&text[start..end]);
        i = j.max(i + 1);
    }
    pieces
}

impl Tokenizer {
    /// Loads `tokenizer.json`; errors name the file and field.
    pub fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|err| TokenizerError::Json {
            path: path.to_path_buf(),
            line: err.line(),
            message: err.to_string(),
        })?;
        let model = json
            .get("model")
            .ok_or_else(|| bad(path, "model", "missing"))?;
        let kind = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
        if kind != "BPE" {
            return Err(bad(
                path,
                "model.type",
                &format!("`{kind}` is not supported (only BPE)"),
            ));
        }
        let vocab_json = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(path, "model.vocab", "missing or not an object"))?;
        let mut vocab = HashMap::with_capacity(vocab_json.len());
        for (token, id) in vocab_json {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| {
                    bad(
                        path,
                        "model.vocab",
                        &format!("id of `{token}` is not a token id"),
                    )
                })?;
            vocab.insert(token.clone(), id);
        }
        let merges_json = model
            .get("merges")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(path, "model.merges", "missing or not an array"))?;
        let mut ranks = HashMap::with_capacity(merges_json.len());
        for (rank, merge) in merges_json.iter().enumerate() {
            let pair = match merge {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(parts) => match (
                    parts.first().and_then(Value::as_str),
                    parts.get(1).and_then(Value::as_str),
                ) {
                    (Some(a), Some(b)) => Some((a.to_string(), b.to_string())),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(|| bad(path, &format!("model.merges[{rank}]"), "not a pair"))?;
            ranks.insert(pair, u32::try_from(rank).unwrap_or(u32::MAX));
        }
        let byte_level = json
            .get("pre_tokenizer")
            .is_some_and(|p| p.to_string().contains("ByteLevel"))
            || json
                .get("decoder")
                .is_some_and(|d| d.to_string().contains("ByteLevel"));
        let unk = model
            .get("unk_token")
            .and_then(Value::as_str)
            .and_then(|t| vocab.get(t).copied());
        Ok(Tokenizer {
            vocab,
            ranks,
            byte_level,
            unk,
            byte_chars: bytes_to_unicode(),
        })
    }

    fn bpe(&self, mut symbols: Vec<String>, out: &mut Vec<u32>) {
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.ranks
                        .get(&(w[0].clone(), w[1].clone()))
                        .map(|r| (*r, i))
                })
                .min();
            let Some((rank, _)) = best else { break };
            let mut merged = Vec::with_capacity(symbols.len());
            let mut i = 0;
            while i < symbols.len() {
                if i + 1 < symbols.len()
                    && self
                        .ranks
                        .get(&(symbols[i].clone(), symbols[i + 1].clone()))
                        == Some(&rank)
                {
                    merged.push(format!("{}{}", symbols[i], symbols[i + 1]));
                    i += 2;
                } else {
                    merged.push(std::mem::take(&mut symbols[i]));
                    i += 1;
                }
            }
            symbols = merged;
        }
        for symbol in symbols {
            match self.vocab.get(&symbol) {
                Some(id) => out.push(*id),
                None if !self.byte_level => {
                    // SentencePiece byte fallback: <0xNN> per UTF-8 byte.
                    for b in symbol.as_bytes() {
                        match self
                            .vocab
                            .get(&format!("<0x{b:02X}>"))
                            .or(self.unk.as_ref())
                        {
                            Some(id) => out.push(*id),
                            None => out.push(0),
                        }
                    }
                }
                None => out.push(self.unk.unwrap_or(0)),
            }
        }
    }

    /// Number of tokens of `text` (the length of [`Tokenizer::encode`]).
    pub fn count(&self, text: &str) -> u32 {
        u32::try_from(self.encode(text).len()).unwrap_or(u32::MAX)
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        if self.byte_level {
            for piece in pre_tokenize(text) {
                let symbols = piece
                    .bytes()
                    .map(|b| self.byte_chars[b as usize].to_string())
                    .collect();
                self.bpe(symbols, &mut out);
            }
        } else {
            let normalized = format!("▁{}", text.replace(' ', "▁"));
            let mut start = 0;
            let indices: Vec<usize> = normalized
                .match_indices('▁')
                .map(|(i, _)| i)
                .chain([normalized.len()])
                .collect();
            for end in indices.into_iter().skip(1) {
                let word = &normalized[start..end];
                start = end;
                self.bpe(word.chars().map(String::from).collect(), &mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write(json: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json).unwrap();
        file
    }

    #[test]
    fn byte_level_bpe_applies_merges() {
        let file = write(
            r#"{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"BPE",
            "vocab":{"h":0,"e":1,"l":2,"o":3,"Ġ":4,"w":5,"r":6,"d":7,"he":8,"ll":9,"hell":10,"hello":11,"Ġw":12,"Ġwo":13},
            "merges":["h e","l l","he ll","hell o","Ġ w","Ġw o"]}}"#,
        );
        let tokenizer = Tokenizer::load(file.path()).unwrap();
        assert_eq!(pre_tokenize("hello world"), vec!["hello", " world"]);
        assert_eq!(tokenizer.encode("hello world"), vec![11, 13, 6, 2, 7]);
    }

    #[test]
    fn sentencepiece_bpe_with_byte_fallback() {
        let file = write(
            r#"{"model":{"type":"BPE","vocab":{"▁":0,"a":1,"b":2,"▁a":3,"▁ab":4,"<0x21>":5},
            "merges":[["▁","a"],["▁a","b"]]}}"#,
        );
        let tokenizer = Tokenizer::load(file.path()).unwrap();
        assert_eq!(tokenizer.encode("ab a!"), vec![4, 3, 5]);
    }

    #[test]
    fn unsupported_models_name_the_field() {
        let file = write(r#"{"model":{"type":"WordPiece","vocab":{}}}"#);
        let err = Tokenizer::load(file.path()).unwrap_err().to_string();
        assert!(err.contains("model.type"), "{err}");
        assert!(err.contains(&file.path().display().to_string()), "{err}");
        let file = write("{not json");
        let err = Tokenizer::load(file.path()).unwrap_err();
        assert!(matches!(err, TokenizerError::Json { line: 1, .. }), "{err}");
        assert!(err.to_string().contains(":1:"), "{err}");
    }

    #[test]
    fn bad_fields_are_named() {
        let file = write(r#"{"model":{"type":"BPE","merges":[]}}"#);
        let err = Tokenizer::load(file.path()).unwrap_err().to_string();
        assert!(err.contains("`model.vocab`"), "{err}");
        let file = write(r#"{"model":{"type":"BPE","vocab":{"a":0},"merges":["a b", 7]}}"#);
        let err = Tokenizer::load(file.path()).unwrap_err().to_string();
        assert!(err.contains("`model.merges[1]`"), "{err}");
        let file = write(r#"{"model":{"type":"BPE","vocab":{"a":-1},"merges":[]}}"#);
        let err = Tokenizer::load(file.path()).unwrap_err().to_string();
        assert!(
            err.contains("`model.vocab`") && err.contains("`a`"),
            "{err}"
        );
        let missing = Path::new("/nonexistent/tokenizer.json");
        let err = Tokenizer::load(missing).unwrap_err();
        assert!(matches!(err, TokenizerError::Io { .. }), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/tokenizer.json"),
            "{err}"
        );
    }

    #[test]
    fn count_is_the_number_of_ids() {
        let file = write(
            r#"{"pre_tokenizer":{"type":"ByteLevel"},"model":{"type":"BPE",
            "vocab":{"a":0,"Ġ":1,"Ġa":2},"merges":["Ġ a"]}}"#,
        );
        let tokenizer = Tokenizer::load(file.path()).unwrap();
        assert_eq!(tokenizer.encode("a a a"), vec![0, 2, 2]);
        assert_eq!(tokenizer.count("a a a"), 3);
        assert_eq!(tokenizer.count(""), 0);
        assert_eq!(
            chat_text([("system", "be brief"), ("user", "hi")]),
            "system\nbe brief\nuser\nhi\n"
        );
    }
}
