//! A small loader for Hugging Face `tokenizer.json` files with a BPE model: byte-level
//! BPE (GPT-2, Llama 3, Qwen) and SentencePiece-style BPE (Llama 2, Mistral).
//!
//! The merges are applied exactly; pre-tokenization is a close approximation of the
//! model's regex (runs of letters, digits, other symbols, each with one leading space),
//! and added/special tokens are not matched. Counts are therefore near-exact for prose
//! and code, and the source column says `tokenizer`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::ProxyError;

/// A BPE tokenizer loaded from `tokenizer.json`.
#[derive(Debug)]
pub(crate) struct Tokenizer {
    vocab: HashMap<String, u32>,
    ranks: HashMap<(String, String), u32>,
    byte_level: bool,
    unk: Option<u32>,
    byte_chars: [char; 256],
}

fn bad(path: &Path, field: &str, message: &str) -> ProxyError {
    ProxyError::Tokenizer(format!("{}: field `{field}`: {message}", path.display()))
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
    pub(crate) fn load(path: &Path) -> Result<Tokenizer, ProxyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| ProxyError::Tokenizer(format!("{}: {err}", path.display())))?;
        let json: Value = serde_json::from_str(&text).map_err(|err| {
            ProxyError::Tokenizer(format!(
                "{}:{}: not JSON: {err}",
                path.display(),
                err.line()
            ))
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

    /// Token ids of `text`.
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
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
        let file = write("{not json");
        assert!(Tokenizer::load(file.path())
            .unwrap_err()
            .to_string()
            .contains(":1:"));
    }
}
