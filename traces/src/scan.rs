//! Exact-or-abstain JSON scanning: the hot paths' reader of small, common shapes (a
//! streamed chunk, a request body) in one pass over the bytes, without building anything.
//! Whatever it does not read exactly as `serde_json` does, it abstains on, and the caller
//! parses with serde; property tests of each caller check that they agree.

/// Deepest nesting skipped; deeper input goes to serde (whose own limit is 128).
pub const MAX_DEPTH: u32 = 64;
/// Longest number skipped (digits and signs); longer ones go to serde, whose range checks
/// decide.
pub const MAX_NUMBER_BYTES: usize = 18;

/// Classes of bytes inside a string: one table lookup a byte.
const PLAIN: u8 = 0;
const NON_ASCII: u8 = 1;
const STOP: u8 = 2;
static STRING_BYTE: [u8; 256] = {
    let mut table = [PLAIN; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = if b < 0x20 || b == b'"' as usize || b == b'\\' as usize {
            STOP
        } else if b >= 0x80 {
            NON_ASCII
        } else {
            PLAIN
        };
        b += 1;
    }
    table
};

/// The bytes of `word` that are not [`PLAIN`] (a quote, a backslash, a control character
/// or a non-ASCII byte), as the high bit of each (SWAR: a byte-wise "is zero" / "is less
/// than" without branches). Whether any is set is exact, and so is the lowest set one: a
/// false flag can only follow a true one, from the borrow.
fn needy_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    below(quote, 1) | below(backslash, 1) | below(word, 0x20) | (word & HIGHS)
}

/// How many bytes at the start of `s` are plain ASCII, read eight at a time (ids and
/// texts are mostly long plain runs): up to the first byte that is not, when a whole word
/// holds it, else up to where the whole words end (the bytes after are not looked at).
#[inline(always)]
fn plain_words(s: &[u8]) -> usize {
    let mut at = 0;
    while let Some(word) = s.get(at..at + 8) {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let needy = needy_bytes(u64::from_le_bytes(word));
        if needy != 0 {
            // The lowest flag is exact: straight to the first byte that needs a look.
            return at + (needy.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at
}

/// A cursor over JSON bytes whose readers are exact or abstain: each returns `None` for
/// anything it does not read exactly as `serde_json` does (any backslash escape, control
/// characters or bad UTF-8 in strings, exponents and long numbers, deep nesting, any
/// syntax error), so a caller falls back to serde and decides nothing on its own.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    pub(crate) s: &'a [u8],
    pub(crate) i: usize,
}

impl<'a> Scanner<'a> {
    /// A scanner at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Scanner { s: bytes, i: 0 }
    }

    /// Whether only whitespace is left.
    pub fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.s.len()
    }

    /// Steps over one byte (one [`Scanner::peek`] has seen).
    #[inline(always)]
    pub fn bump(&mut self) {
        self.i += 1;
    }

    /// The byte at the cursor.
    #[inline(always)]
    pub fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Steps over JSON whitespace.
    #[inline(always)]
    pub fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Steps over `byte`, which must be at the cursor.
    #[inline(always)]
    pub fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.i += 1)
    }

    /// Steps over `word` (`null`, `true`, …), which must be at the cursor.
    pub fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.s.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// The members of an object whose `{` was consumed, through `f(parser, key)`, which
    /// reads the value (parser at the value, whitespace skipped) or abstains.
    pub fn members(&mut self, mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.key()?;
            f(self, key)?;
            if self.end_of(b'}')? {
                return Some(());
            }
        }
    }

    /// [`Scanner::members`] resumed at the value of `key` (the parser there).
    pub fn members_from(
        &mut self,
        key: &'a [u8],
        mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        f(self, key)?;
        loop {
            if self.end_of(b'}')? {
                return Some(());
            }
            let key = self.key()?;
            f(self, key)?;
        }
    }

    /// A member's key and its `:`, leaving the parser at the value.
    #[inline(always)]
    fn key(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let key = self.string()?;
        self.ws();
        self.expect(b':')?;
        self.ws();
        Some(key)
    }

    /// The elements of an array whose `[` was consumed, through `f(parser)` (at the
    /// element, whitespace skipped), which reads it or abstains.
    pub fn elements(&mut self, mut f: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            f(self)?;
            if self.end_of(b']')? {
                return Some(());
            }
        }
    }

    /// After a member or element: `,` (more follow: false) or `close` (the end: true).
    #[inline(always)]
    fn end_of(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let b = self.peek()?;
        self.i += 1;
        match b {
            b',' => Some(false),
            _ if b == close => Some(true),
            _ => None,
        }
    }

    /// A string without escapes or control characters (its raw bytes, valid UTF-8). The
    /// opening quote is at the parser.
    #[inline(always)]
    pub fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.i;
        // The byte loop below decides every byte from the first one the words leave.
        self.i += plain_words(&self.s[self.i..]);
        let mut ascii = true;
        loop {
            let b = *self.s.get(self.i)?;
            match STRING_BYTE[usize::from(b)] {
                PLAIN => self.i += 1,
                NON_ASCII => {
                    ascii = false;
                    self.i += 1;
                }
                _ if b == b'"' => break,
                _ => return None, // an escape or a control character
            }
        }
        let bytes = &self.s[start..self.i];
        self.i += 1;
        // ASCII is valid UTF-8; only other bytes need the check (serde rejects bad ones).
        if !ascii && std::str::from_utf8(bytes).is_err() {
            return None;
        }
        Some(bytes)
    }

    /// The length of the plain ASCII run at the start of `s` when a quote ends it where
    /// the eight-byte word scan stops: the content of a string whose opening quote is just
    /// before `s`, as [`Scanner::string`] reads it (plain ASCII is valid UTF-8). `None`
    /// (anything else: a non-ASCII byte, an escape, a control character, or plain bytes
    /// after the last whole word) says "read it with [`Scanner::string`]". The quick form
    /// of that for a hot loop: no byte loop, no UTF-8 check.
    #[inline(always)]
    pub fn plain_ascii_run(s: &[u8]) -> Option<usize> {
        // All before `end` is plain ASCII; a quote there (the first needy byte, or the byte
        // after the last whole word) closes the string.
        let end = plain_words(s);
        (s.get(end) == Some(&b'"')).then_some(end)
    }

    /// `null` (then `None`) or a string; anything else abstains.
    pub fn text_or_null(&mut self) -> Option<Option<&'a [u8]>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|()| None),
            b'"' => self.string().map(Some),
            _ => None,
        }
    }
    /// A count of at most nine digits (`0|[1-9][0-9]*`, so it fits a u32); signs,
    /// fractions, exponents and longer numbers abstain (serde's lenient reading decides).
    pub fn count(&mut self) -> Option<u32> {
        let start = self.i;
        let mut n: u32 = 0;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            if self.i - start == 9 || (self.i > start && n == 0) {
                return None; // a tenth digit, or a leading zero
            }
            n = n * 10 + u32::from(digit - b'0');
            self.i += 1;
        }
        if self.i == start || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(n)
    }

    /// Skips one JSON value, checking its syntax.
    pub fn skip_value(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                self.i += 1;
                self.members(|p, _| p.skip_value(depth + 1))
            }
            b'[' => {
                self.i += 1;
                self.elements(|p| p.skip_value(depth + 1))
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`; exponents and long numbers abstain.
    pub fn number(&mut self) -> Option<()> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                while let Some(b'0'..=b'9') = self.peek() {
                    self.i += 1;
                }
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            let digits = self.i;
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
            if self.i == digits {
                return None;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) || self.i - start > MAX_NUMBER_BYTES {
            return None;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_ascii_run_is_what_the_string_reader_reads_or_nothing() {
        // Every byte value at every position of strings from 0 to 24 bytes, closed by a
        // quote or not: when the quick run answers, it is the string reader's content.
        let mut answered = 0;
        for len in 0..24 {
            for at in 0..=len {
                for b in 0..=255u8 {
                    let mut content = vec![b'a'; len];
                    if at < len {
                        content[at] = b;
                    }
                    for closed in [true, false] {
                        let mut json = vec![b'"'];
                        json.extend_from_slice(&content);
                        if closed {
                            json.extend_from_slice(b"\",1");
                        }
                        let run = Scanner::plain_ascii_run(&json[1..]);
                        let mut p = Scanner::new(&json);
                        let read = p.string().map(|s| (s.len(), p.i));
                        if let Some(n) = run {
                            answered += 1;
                            assert_eq!(read, Some((n, n + 2)), "{json:?}");
                        }
                        // Plain ASCII closed within whole words is always answered.
                        if closed
                            && content
                                .iter()
                                .all(|&c| STRING_BYTE[usize::from(c)] == PLAIN && c < 0x80)
                            && json.len() > (len / 8 + 1) * 8
                        {
                            assert_eq!(run, Some(len), "{json:?}");
                        }
                    }
                }
            }
        }
        assert!(answered > 10_000, "{answered}");
    }

    #[test]
    fn the_word_test_agrees_with_the_byte_table() {
        // Every byte value at every position, among plain bytes and after a needy one.
        for fill in [b'a', b' ', b'~', 0x80] {
            for at in 0..8 {
                for b in 0..=255u8 {
                    let mut word = [fill; 8];
                    word[at] = b;
                    let first = word
                        .iter()
                        .position(|&x| STRING_BYTE[usize::from(x)] != PLAIN);
                    let needy = needy_bytes(u64::from_le_bytes(word));
                    let found = (needy != 0).then(|| (needy.trailing_zeros() / 8) as usize);
                    assert_eq!(found, first, "{word:?}");
                }
            }
        }
    }
}
