//! Synthetic prompts of an exact token count for the target's tokenizer, keeping the
//! trace's prefix sharing: the same block hash always gives the same text block.
//!
//! Text is made of short common English words (each one token in the sim's tokenizer and,
//! with its leading space, in most BPE vocabularies). A linear model tokens = a + b·words is
//! fitted with the server's `/tokenize` (else the model's `tokenizer.json` given with
//! `--tokenizer`, else the 4-bytes-per-token estimate), then each distinct length is
//! verified and adjusted with the same counter (cached by length, a bounded number of
//! requests).

use std::collections::HashMap;

use retrace_traces::TokenSource;

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "some", "about",
    "into", "than", "other", "them", "then", "its", "only", "over", "also", "new", "after",
    "first", "two", "most", "could", "these", "may", "like", "many", "made", "our", "any", "where",
    "such", "what", "out", "between", "years", "world", "work", "state", "part", "well", "same",
    "day", "good", "water", "house", "city", "small", "great", "long", "right", "place", "people",
    "year", "way", "man",
];

/// splitmix64: a cheap, well-mixed deterministic sequence.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The built-in word list (before filtering for the target's tokenizer).
pub fn all_words() -> Vec<&'static str> {
    WORDS.to_vec()
}

fn word<'a>(words: &[&'a str], seed: u64, index: u64) -> &'a str {
    words[(mix(seed ^ mix(index)) % words.len() as u64) as usize]
}

/// Tokens = `intercept` + `per_word` × words, for one request shape (chat or completion).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearModel {
    /// Tokens with no words (chat template overhead).
    pub intercept: f64,
    /// Tokens per word.
    pub per_word: f64,
}

impl LinearModel {
    /// Words for `tokens` tokens (at least one).
    pub fn words_for(&self, tokens: u32) -> u64 {
        (((f64::from(tokens) - self.intercept) / self.per_word).round()).max(1.0) as u64
    }
}

/// Makes prompt texts.
#[derive(Debug, Clone)]
pub struct PromptFactory {
    /// How counts were made exact (`Tokenizer` when verified with `/tokenize` or
    /// `--tokenizer`).
    pub source: TokenSource,
    /// Model for chat requests.
    pub chat: LinearModel,
    /// Model for completion requests.
    pub completion: LinearModel,
    /// Per (chat, length) word corrections found by verification.
    pub adjust: HashMap<(bool, u32), i64>,
    /// Tokens per prefix block.
    pub block_tokens: u32,
    /// The words texts are made of: those that are one token each for the target's
    /// tokenizer when it could be asked, else the whole built-in list.
    pub words: Vec<&'static str>,
}

impl PromptFactory {
    /// A factory from the 4-bytes-per-token estimate (no tokenizer available).
    pub fn estimated(block_tokens: u32) -> PromptFactory {
        let sample = text_of(WORDS, &[], "calibration", 1000, 1000);
        let per_word = f64::from(retrace_traces::prefix::estimate_tokens(&sample)) / 1000.0;
        let model = LinearModel {
            intercept: 0.0,
            per_word: per_word.max(0.01),
        };
        PromptFactory {
            source: TokenSource::Estimate,
            chat: model,
            completion: model,
            adjust: HashMap::new(),
            block_tokens,
            words: WORDS.to_vec(),
        }
    }

    /// Number of words for a prompt of `tokens` tokens.
    pub fn words(&self, chat: bool, tokens: u32) -> u64 {
        let model = if chat { self.chat } else { self.completion };
        let base = model.words_for(tokens) as i64;
        (base + self.adjust.get(&(chat, tokens)).copied().unwrap_or(0)).max(1) as u64
    }

    /// The prompt text: prefix blocks from `prefix_hashes`, then a tail unique to `request_id`.
    pub fn text(&self, chat: bool, tokens: u32, prefix_hashes: &[u64], request_id: &str) -> String {
        let words = self.words(chat, tokens);
        let model = if chat { self.chat } else { self.completion };
        let block_words = (f64::from(self.block_tokens) / model.per_word)
            .round()
            .max(1.0) as u64;
        text_of(&self.words, prefix_hashes, request_id, words, block_words)
    }
}

/// `words` words: `block_words` per prefix hash, then the tail seeded by `tail_key`.
pub fn text_of(
    vocabulary: &[&str],
    prefix_hashes: &[u64],
    tail_key: &str,
    words: u64,
    block_words: u64,
) -> String {
    let vocabulary = if vocabulary.is_empty() {
        WORDS
    } else {
        vocabulary
    };
    let mut out = String::with_capacity(words as usize * 6);
    let mut made = 0u64;
    // The first word is always the same: SentencePiece tokenizers treat the word after a
    // chat template's special tokens differently, so a fixed first word keeps every
    // prompt's count equal to the count verified for its length.
    let first = vocabulary[0];
    let push = |w: &str, out: &mut String| {
        if out.is_empty() {
            out.push_str(first);
        } else {
            out.push(' ');
            out.push_str(w);
        }
    };
    'blocks: for &hash in prefix_hashes {
        for i in 0..block_words {
            if made >= words {
                break 'blocks;
            }
            push(word(vocabulary, hash, i), &mut out);
            made += 1;
        }
    }
    let tail_seed = crate::schedule::stable_hash(tail_key);
    let mut i = 0;
    while made < words {
        push(word(vocabulary, tail_seed, i), &mut out);
        i += 1;
        made += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shared_blocks_give_shared_text() {
        let f = PromptFactory {
            source: TokenSource::Tokenizer,
            chat: LinearModel {
                intercept: 7.0,
                per_word: 1.0,
            },
            completion: LinearModel {
                intercept: 0.0,
                per_word: 1.0,
            },
            adjust: HashMap::new(),
            block_tokens: 16,
            words: all_words(),
        };
        let a = f.text(false, 40, &[11, 22], "a");
        let b = f.text(false, 40, &[11, 33], "b");
        let c = f.text(false, 40, &[11, 22], "c");
        assert_eq!(a.split(' ').count(), 40);
        let head = |t: &str, n: usize| t.split(' ').take(n).collect::<Vec<_>>().join(" ");
        assert_eq!(head(&a, 16), head(&b, 16));
        assert_ne!(head(&a, 32), head(&b, 32));
        assert_eq!(head(&a, 32), head(&c, 32));
        assert_ne!(a, c, "tails differ per request");
        assert_eq!(f.text(true, 40, &[], "x").split(' ').count(), 33);
        assert!(WORDS.iter().all(|w| w.len() <= 8));
    }
}
