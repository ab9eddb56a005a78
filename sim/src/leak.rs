//! Deliberate memory leaks: really allocated, touched (so they are resident) and held.

/// Allocations are made in chunks of at least this size so that a small per-request leak
/// does not turn into millions of tiny allocations.
const CHUNK_BYTES: u64 = 64 * 1024;

/// Holds leaked memory.
#[derive(Debug, Default)]
pub(crate) struct Leak {
    held: Vec<Box<[u8]>>,
    held_bytes: u64,
    pending_bytes: u64,
    plateau_bytes: Option<u64>,
}

impl Leak {
    pub(crate) fn new(plateau_bytes: Option<u64>) -> Leak {
        Leak {
            plateau_bytes,
            ..Leak::default()
        }
    }

    /// Bytes held so far.
    pub(crate) fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Leaks `bytes` more (up to the plateau).
    pub(crate) fn leak(&mut self, bytes: u64) {
        let cap = self.plateau_bytes.unwrap_or(u64::MAX);
        let room = cap.saturating_sub(self.held_bytes + self.pending_bytes);
        self.pending_bytes += bytes.min(room);
        let at_cap = self.held_bytes + self.pending_bytes >= cap;
        if self.pending_bytes >= CHUNK_BYTES || (at_cap && self.pending_bytes > 0) {
            let n = self.pending_bytes as usize;
            // Non-zero fill: every page is written, so it is resident (calloc'd zero pages
            // would not be).
            self.held.push(vec![0xa5u8; n].into_boxed_slice());
            self.held_bytes += self.pending_bytes;
            self.pending_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_caps_the_leak() {
        let mut leak = Leak::new(Some(200_000));
        for _ in 0..100 {
            leak.leak(10_000);
        }
        assert_eq!(leak.held_bytes(), 200_000);
        let mut unbounded = Leak::new(None);
        for _ in 0..100 {
            unbounded.leak(10_000);
        }
        // Small leaks are batched into chunks; all but the last partial chunk is held.
        assert!(unbounded.held_bytes() >= 1_000_000 - CHUNK_BYTES);
    }
}
