//! The recorder: the hot path hands finished rows to a bounded queue with `try_send` and
//! never waits; a dedicated thread encodes and writes them. When the queue is full or the
//! writer fails, rows are dropped and counted, and clients see no change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use retrace_traces::RequestRow;

use crate::config::SinkFactory;
use crate::row::{PendingRow, RowContext};
use crate::stats::Stats;

/// An error of a row sink (the Parquet writer, or a test sink).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

/// Where the writer thread puts rows. The real one is the Parquet writer of `traces`;
/// tests plug in sinks that block or fail. All calls happen on the writer thread.
pub trait RowSink: Send {
    /// Accepts one row (may buffer it).
    fn push(&mut self, row: RequestRow) -> Result<(), SinkError>;
    /// Called about every 100 ms: flush on the flush interval, rotate files.
    fn tick(&mut self) -> Result<(), SinkError>;
    /// Rows accepted but not yet durable (lost if the sink fails now).
    fn buffered_rows(&self) -> u64;
    /// Bytes written to disk so far, all files together.
    fn bytes_written(&self) -> u64;
    /// Flushes everything and closes the files; returns the total bytes written.
    fn close(self: Box<Self>) -> Result<u64, SinkError>;
}

enum Message {
    /// A row and the bytes it holds (counted in `Stats::queue_bytes` while queued).
    Row(Box<PendingRow>, usize),
    Shutdown,
}

/// The hot-path side of the recorder. Cheap to share.
pub(crate) struct Recorder {
    sender: SyncSender<Message>,
    stats: Arc<Stats>,
    max_bytes: usize,
    warned_full: AtomicBool,
}

/// The writer thread, joined on shutdown.
pub(crate) struct WriterThread {
    sender: SyncSender<Message>,
    handle: JoinHandle<()>,
}

const TICK: Duration = Duration::from_millis(100);
/// Shortest and longest sleep of the writer thread when its queue is empty. Each wake-up
/// costs tens of µs of CPU (timer, two context switches): at 5 ms, an idle proxy spent 1%
/// of a core on them. The sleep lengthens while few rows come between wake-ups, and
/// shortens when many do; at the longest, a queue of the default 65,536 rows still takes
/// over a million requests a second.
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);
/// Rows between two wake-ups below which the sleep doubles, above which it halves.
const FEW_ROWS: u32 = 32;
const MANY_ROWS: u32 = 512;

/// The writer thread's next sleep, after one of `current` that was followed by `rows`.
fn next_poll(current: Duration, rows: u32) -> Duration {
    if rows < FEW_ROWS {
        (current * 2).min(POLL_MAX)
    } else if rows > MANY_ROWS {
        (current / 2).max(POLL_MIN)
    } else {
        current
    }
}
const RETRY_CREATE: Duration = Duration::from_secs(2);

impl Recorder {
    /// Starts the writer thread. The first sink is created here so that a broken output
    /// directory is reported at start, not silently.
    pub(crate) fn start(
        factory: SinkFactory,
        capacity: usize,
        max_bytes: usize,
        stats: Arc<Stats>,
        context: RowContext,
    ) -> Result<(Recorder, WriterThread), SinkError> {
        let first = factory()?;
        let (sender, receiver) = mpsc::sync_channel(capacity);
        let thread_stats = stats.clone();
        let handle = std::thread::Builder::new()
            .name("retrace-proxy-writer".into())
            .spawn(move || writer_loop(receiver, factory, Some(first), thread_stats, context))
            .map_err(|err| SinkError(format!("cannot start the writer thread: {err}")))?;
        Ok((
            Recorder {
                sender: sender.clone(),
                stats,
                max_bytes,
                warned_full: AtomicBool::new(false),
            },
            WriterThread { sender, handle },
        ))
    }

    /// Queues a row without waiting. A full queue (in rows or bytes) or a stopped writer
    /// drops it (counted, logged once).
    pub(crate) fn record(&self, row: Box<PendingRow>) {
        let held = row.held_bytes();
        let before = self
            .stats
            .queue_bytes
            .fetch_add(held as u64, Ordering::Relaxed);
        let within = before.saturating_add(held as u64) <= self.max_bytes as u64;
        let sent = within && self.sender.try_send(Message::Row(row, held)).is_ok();
        if sent {
            self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats
                .queue_bytes
                .fetch_sub(held as u64, Ordering::Relaxed);
            self.stats.rows_dropped.fetch_add(1, Ordering::Relaxed);
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "recording queue full or writer stopped: dropping rows (counted in \
                     retrace_proxy_rows_dropped_total); traffic is not affected"
                );
            }
        }
    }
}

impl WriterThread {
    /// Tells the writer to write what is queued, close its files and stop; waits for it.
    /// Blocking: call from a blocking context.
    pub(crate) fn stop(self) {
        // Every row queued before this message is written first (the queue is FIFO).
        let _ = self.sender.send(Message::Shutdown);
        drop(self.sender);
        if self.handle.join().is_err() {
            tracing::error!("the recording writer thread panicked");
        }
    }
}

fn writer_loop(
    receiver: Receiver<Message>,
    factory: SinkFactory,
    mut sink: Option<Box<dyn RowSink>>,
    stats: Arc<Stats>,
    context: RowContext,
) {
    let mut last_tick = Instant::now();
    let mut last_create_attempt = Instant::now();
    let mut warned_error = false;
    let mut poll = POLL_MIN;
    let mut rows_since_sleep: u32 = 0;
    let mut fail = |sink: &mut Option<Box<dyn RowSink>>, err: SinkError, stats: &Stats| {
        // The failed sink's buffered rows are lost: count them, drop the sink, retry later.
        if let Some(failed) = sink.take() {
            stats
                .rows_dropped
                .fetch_add(failed.buffered_rows(), Ordering::Relaxed);
            let _ = stats
                .rows_written
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(failed.buffered_rows()))
                });
            stats
                .bytes_written_closed
                .fetch_add(failed.bytes_written(), Ordering::Relaxed);
        }
        stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if !warned_error {
            tracing::error!(error = %err, "recording write failed: dropping rows until a new file can be created");
            warned_error = true;
        }
    };
    loop {
        let message = match receiver.try_recv() {
            Ok(message) => Ok(message),
            Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {
                // Poll rather than block: with the receiver parked, every `try_send` on the
                // hot path wakes it (a futex call and a context switch per request).
                poll = next_poll(poll, rows_since_sleep);
                rows_since_sleep = 0;
                std::thread::sleep(poll);
                Err(RecvTimeoutError::Timeout)
            }
        };
        match message {
            Ok(Message::Row(row, held)) => {
                rows_since_sleep = rows_since_sleep.saturating_add(1);
                stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
                stats.queue_bytes.fetch_sub(held as u64, Ordering::Relaxed);
                if sink.is_none() && last_create_attempt.elapsed() >= RETRY_CREATE {
                    last_create_attempt = Instant::now();
                    match factory() {
                        Ok(new_sink) => {
                            tracing::info!("recording resumed in a new file");
                            sink = Some(new_sink);
                        }
                        Err(err) => {
                            tracing::debug!(error = %err, "cannot create a new recording file yet")
                        }
                    }
                }
                match sink.as_mut() {
                    Some(active) => match active.push(row.build(&context)) {
                        Ok(()) => {
                            stats.rows_written.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            stats.rows_dropped.fetch_add(1, Ordering::Relaxed);
                            fail(&mut sink, err, &stats);
                            last_create_attempt = Instant::now();
                        }
                    },
                    None => {
                        stats.rows_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(Message::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            if let Some(active) = sink.as_mut() {
                if let Err(err) = active.tick() {
                    fail(&mut sink, err, &stats);
                    last_create_attempt = Instant::now();
                }
            }
            if let Some(active) = sink.as_ref() {
                stats
                    .bytes_written_open
                    .store(active.bytes_written(), Ordering::Relaxed);
            }
        }
    }
    if let Some(active) = sink.take() {
        let buffered = active.buffered_rows();
        let bytes_before_close = active.bytes_written();
        let bytes = match active.close() {
            Ok(bytes) => bytes,
            Err(err) => {
                stats.rows_dropped.fetch_add(buffered, Ordering::Relaxed);
                tracing::error!(error = %err, "closing the recording failed");
                bytes_before_close
            }
        };
        stats.bytes_written_open.store(0, Ordering::Relaxed);
        stats
            .bytes_written_closed
            .fetch_add(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_sleeps_longer_when_idle_and_shorter_under_load() {
        // Idle: from the shortest to the longest sleep in a few wake-ups, and no further.
        let mut poll = POLL_MIN;
        for _ in 0..3 {
            poll = next_poll(poll, 0);
        }
        assert_eq!(poll, Duration::from_millis(40));
        assert_eq!(next_poll(next_poll(poll, 0), 0), POLL_MAX);
        // A steady moderate rate keeps the sleep where it is.
        assert_eq!(next_poll(poll, FEW_ROWS), poll);
        assert_eq!(next_poll(poll, MANY_ROWS), poll);
        // Load: back to the shortest, and not below it.
        let mut poll = POLL_MAX;
        for _ in 0..5 {
            poll = next_poll(poll, MANY_ROWS + 1);
        }
        assert_eq!(poll, POLL_MIN);
    }
}
