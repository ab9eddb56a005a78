//! The client connection's watchdog: a connection must bring a request head within the
//! header read timeout of starting to wait for one (at its start, and after each response
//! on a keep-alive connection), else it is closed. One timer a connection, checked only
//! when it fires; each request just marks the connection busy and then idle. (hyper's own
//! header read timeout arms a boxed timer for every request head, registered and
//! unregistered with tokio's timer wheel: about 2% of the proxy's instructions.)

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// What one client connection is doing, as its requests report it.
#[derive(Debug)]
pub(crate) struct ConnWatch {
    origin: Instant,
    /// Requests of this connection in flight (HTTP/2 has many at once).
    in_flight: AtomicU32,
    /// A request head has arrived.
    head_seen: AtomicBool,
    /// The connection speaks HTTP/2, which has its own flow and keep-alive control: only
    /// its first head is waited for.
    http2: AtomicBool,
    /// When the connection last became idle (its last request ended), µs after `origin`.
    idle_since_us: AtomicU64,
}

/// What the watchdog does when its timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The connection waited too long for a request head.
    Close,
    /// Look again then.
    CheckAt(Instant),
    /// Nothing more to watch.
    Stop,
}

impl ConnWatch {
    pub(crate) fn new(origin: Instant) -> Arc<ConnWatch> {
        Arc::new(ConnWatch {
            origin,
            in_flight: AtomicU32::new(0),
            head_seen: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since_us: AtomicU64::new(0),
        })
    }

    /// A request head arrived: the connection is busy until the guard is dropped (when
    /// its response has been sent, or abandoned).
    pub(crate) fn begin(self: &Arc<Self>, http2: bool) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_seen.store(true, Ordering::Release);
        if http2 {
            self.http2.store(true, Ordering::Release);
        }
        Busy {
            watch: Arc::clone(self),
        }
    }

    /// The decision at `now`, for a header read timeout of `timeout`.
    pub(crate) fn verdict(&self, now: Instant, timeout: Duration) -> Verdict {
        if !self.head_seen.load(Ordering::Acquire) {
            // The first head is late (or the protocol never became clear).
            return Verdict::Close;
        }
        if self.http2.load(Ordering::Acquire) {
            return Verdict::Stop;
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::CheckAt(now + timeout);
        }
        let idle_since =
            self.origin + Duration::from_micros(self.idle_since_us.load(Ordering::Acquire));
        let deadline = idle_since + timeout;
        if deadline <= now {
            Verdict::Close
        } else {
            Verdict::CheckAt(deadline)
        }
    }
}

/// A request in flight on its connection; dropping it makes the connection idle when it
/// was the last.
#[derive(Debug)]
pub(crate) struct Busy {
    watch: Arc<ConnWatch>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let watch = &self.watch;
        let since_us = u64::try_from(watch.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        // The idle time is written before the count drops, so a watchdog that sees no
        // request in flight also sees when the connection went idle.
        watch.idle_since_us.fetch_max(since_us, Ordering::AcqRel);
        watch.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_connection_without_a_head_is_closed() {
        let start = Instant::now();
        let watch = ConnWatch::new(start);
        assert_eq!(watch.verdict(start + TIMEOUT, TIMEOUT), Verdict::Close);
    }

    #[test]
    fn a_busy_connection_is_looked_at_again_and_an_idle_one_closed_in_time() {
        let start = Instant::now();
        let watch = ConnWatch::new(start);
        let busy = watch.begin(false);
        let now = start + TIMEOUT;
        assert_eq!(watch.verdict(now, TIMEOUT), Verdict::CheckAt(now + TIMEOUT));
        drop(busy);
        // Idle from (about) now: the next look is a timeout later, not before.
        match watch.verdict(start, TIMEOUT) {
            Verdict::CheckAt(at) => assert!(at >= start + TIMEOUT, "{at:?}"),
            other => panic!("{other:?}"),
        }
        let idle_since = start + Duration::from_micros(watch.idle_since_us.load(Ordering::Acquire));
        assert_eq!(watch.verdict(idle_since + TIMEOUT, TIMEOUT), Verdict::Close);
        // Two requests at once (HTTP/1.1 pipelining): busy until both are done.
        let (a, b) = (watch.begin(false), watch.begin(false));
        drop(a);
        let later = idle_since + TIMEOUT * 4;
        assert_eq!(
            watch.verdict(later, TIMEOUT),
            Verdict::CheckAt(later + TIMEOUT)
        );
        drop(b);
        assert_eq!(watch.verdict(later, TIMEOUT), Verdict::Close);
    }

    #[test]
    fn http2_is_watched_only_for_its_first_head() {
        let start = Instant::now();
        let watch = ConnWatch::new(start);
        drop(watch.begin(true));
        assert_eq!(watch.verdict(start + TIMEOUT * 9, TIMEOUT), Verdict::Stop);
    }
}
