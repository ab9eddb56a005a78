//! The sim's deterministic tokenizer.
//!
//! Rules (also in docs/sim.md), chosen so that a client can build a prompt of exactly N
//! tokens without any model files:
//! - Text is split on Unicode whitespace; whitespace itself costs nothing.
//! - Every word is one token per started 8 bytes of UTF-8: a word of 1..=8 bytes is one
//!   token, 9..=16 bytes two tokens, and so on. So `"w "` repeated N times is N tokens.
//! - A token's id is the 32-bit FNV-1a hash of its bytes with the top bit cleared
//!   (ids ≥ 2^31 are reserved for the chat template's special tokens).
//! - Chat: [`CHAT_PRIMING_TOKENS`] tokens for the whole conversation plus, per message,
//!   [`CHAT_MESSAGE_OVERHEAD_TOKENS`] tokens plus the tokens of its text content (text
//!   parts of a content array are joined with a space; the role name is part of the
//!   overhead).

/// Bytes per token within one word.
pub const BYTES_PER_TOKEN: usize = 8;

/// Tokens every chat message costs on top of its content (role and delimiters).
pub const CHAT_MESSAGE_OVERHEAD_TOKENS: u32 = 4;

/// Tokens a chat conversation costs once (the assistant turn's priming).
pub const CHAT_PRIMING_TOKENS: u32 = 3;

const SPECIAL_BASE: u32 = 1 << 31;

fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in bytes {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash & !SPECIAL_BASE
}

/// Tokenizes `text` into token ids (see the module docs for the rules).
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut ids = Vec::with_capacity(text.len() / 4 + 1);
    tokenize_into(text, &mut ids);
    ids
}

/// Appends the token ids of `text` to `ids`.
pub fn tokenize_into(text: &str, ids: &mut Vec<u32>) {
    for word in text.split_whitespace() {
        for piece in word.as_bytes().chunks(BYTES_PER_TOKEN) {
            ids.push(fnv1a(piece));
        }
    }
}

/// Number of tokens of `text`, without allocating.
pub fn count(text: &str) -> u32 {
    text.split_whitespace()
        .map(|word| word.len().div_ceil(BYTES_PER_TOKEN) as u32)
        .sum()
}

/// Token ids of a chat conversation given as (role, text content) pairs: the priming
/// tokens, then per message its overhead tokens (which encode the role) and its content.
pub fn tokenize_chat<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u32> {
    let mut ids = Vec::new();
    for i in 0..CHAT_PRIMING_TOKENS {
        ids.push(SPECIAL_BASE | i);
    }
    for (role, content) in messages {
        let role_id = fnv1a(role.as_bytes());
        ids.push(SPECIAL_BASE | 0x100);
        ids.push(SPECIAL_BASE | (role_id & 0xffff));
        for i in 2..CHAT_MESSAGE_OVERHEAD_TOKENS {
            ids.push(SPECIAL_BASE | (0x200 + i));
        }
        tokenize_into(content, &mut ids);
    }
    ids
}

/// Token count of a chat conversation (same rules as [`tokenize_chat`]).
pub fn count_chat<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> u32 {
    CHAT_PRIMING_TOKENS
        + messages
            .into_iter()
            .map(|(_, content)| CHAT_MESSAGE_OVERHEAD_TOKENS + count(content))
            .sum::<u32>()
}

/// Words the sim generates, all at most 8 bytes, so each is exactly one token and the
/// generated text re-tokenizes to exactly the reported `completion_tokens`.
pub(crate) const WORDS: [&str; 64] = [
    "the", "model", "server", "token", "batch", "cache", "block", "river", "stone", "light",
    "quick", "brown", "field", "cloud", "green", "paper", "signal", "market", "garden", "silver",
    "window", "engine", "forest", "pocket", "island", "bridge", "letter", "number", "simple",
    "yellow", "orange", "planet", "summer", "winter", "autumn", "spring", "ocean", "mountain",
    "valley", "desert", "coffee", "travel", "music", "story", "answer", "system", "memory",
    "kernel", "vector", "matrix", "tensor", "layer", "weight", "output", "input", "result",
    "query", "value", "key", "head", "step", "queue", "time", "and",
];

/// The generated word for output position `index` of a request with seed `seed`.
pub(crate) fn word(seed: u64, index: u32) -> &'static str {
    let h = crate::rng::mix(seed ^ u64::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    WORDS[(h % WORDS.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_rules() {
        assert_eq!(count(""), 0);
        assert_eq!(count("   \n\t "), 0);
        assert_eq!(count("a"), 1);
        assert_eq!(count("abcdefgh"), 1);
        assert_eq!(count("abcdefghi"), 2);
        assert_eq!(count("hello  world\nfoo"), 3);
        assert_eq!(count(&"w ".repeat(1000)), 1000);
        // 'é' is two bytes: 5 of them are 10 bytes, two tokens.
        assert_eq!(count("ééééé"), 2);
        for text in ["a bb ccc", "abcdefghijklmnopq x", "ééééé  z"] {
            assert_eq!(tokenize(text).len() as u32, count(text));
        }
    }

    #[test]
    fn ids_are_deterministic_and_not_special() {
        let a = tokenize("the quick brown fox");
        assert_eq!(a, tokenize("the  quick\nbrown fox"));
        assert!(a.iter().all(|id| *id < SPECIAL_BASE));
        assert_ne!(tokenize("abc"), tokenize("abd"));
    }

    #[test]
    fn chat_counts() {
        let msgs = [("system", "be brief"), ("user", "hello there friend")];
        assert_eq!(count_chat(msgs), 3 + (4 + 2) + (4 + 3));
        assert_eq!(tokenize_chat(msgs).len() as u32, count_chat(msgs));
        assert_eq!(count_chat([]), 3);
    }

    #[test]
    fn generated_words_are_one_token() {
        for w in WORDS {
            assert_eq!(count(w), 1, "{w}");
        }
    }
}
