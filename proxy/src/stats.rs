//! Counters and histograms of the proxy, lock-free on the hot path, rendered as
//! Prometheus text on the admin listener.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use retrace_traces::Outcome;

/// A snapshot of the proxy's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests received.
    pub requests_total: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Rows accepted by the writer.
    pub rows_written: u64,
    /// Rows dropped (queue full, writer failed).
    pub rows_dropped: u64,
    /// Rows waiting in the queue.
    pub queue_depth: u64,
    /// Bytes the waiting rows hold (bounded by `queue_max_bytes`).
    pub queue_bytes: u64,
    /// Bytes of recording written.
    pub bytes_written: u64,
    /// Write errors seen by the writer thread.
    pub write_errors: u64,
}

/// Upper bounds (µs) of the latency histogram buckets.
const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000, 60_000_000,
];

/// A fixed-bucket histogram of microsecond values.
pub(crate) struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, value_us: u64) {
        let index = BUCKETS_US
            .iter()
            .position(|&bound| value_us <= bound)
            .unwrap_or(BUCKETS_US.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(value_us, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS_US.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += self.counts[BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum_s = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum_s}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// The live counters.
pub(crate) struct Stats {
    pub(crate) requests_total: AtomicU64,
    pub(crate) in_flight: AtomicI64,
    pub(crate) rows_written: AtomicU64,
    pub(crate) rows_dropped: AtomicU64,
    pub(crate) queue_depth: AtomicI64,
    pub(crate) queue_bytes: AtomicU64,
    pub(crate) bytes_written_open: AtomicU64,
    pub(crate) bytes_written_closed: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    /// Finished requests by (status, outcome); a small set, so a mutex is fine.
    finished: Mutex<Vec<(Option<u16>, Outcome, u64)>>,
    pub(crate) upstream_latency: Histogram,
    pub(crate) added_latency: Histogram,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        Stats {
            requests_total: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            rows_written: AtomicU64::new(0),
            rows_dropped: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            queue_bytes: AtomicU64::new(0),
            bytes_written_open: AtomicU64::new(0),
            bytes_written_closed: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            finished: Mutex::new(Vec::new()),
            upstream_latency: Histogram::new(),
            added_latency: Histogram::new(),
        }
    }

    pub(crate) fn finished(&self, status: Option<u16>, outcome: Outcome) {
        let Ok(mut finished) = self.finished.lock() else {
            return;
        };
        match finished
            .iter_mut()
            .find(|(s, o, _)| *s == status && *o == outcome)
        {
            Some(entry) => entry.2 += 1,
            None => finished.push((status, outcome, 1)),
        }
    }

    pub(crate) fn snapshot(&self) -> ProxyStats {
        ProxyStats {
            requests_total: self.requests_total.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            rows_written: self.rows_written.load(Ordering::Relaxed),
            rows_dropped: self.rows_dropped.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed).max(0) as u64,
            queue_bytes: self.queue_bytes.load(Ordering::Relaxed),
            bytes_written: self.bytes_written_open.load(Ordering::Relaxed)
                + self.bytes_written_closed.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub(crate) fn render_prometheus(&self) -> String {
        let snap = self.snapshot();
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        counter(
            "retrace_proxy_requests_received_total",
            "counter",
            "Requests received.",
            snap.requests_total,
        );
        counter(
            "retrace_proxy_in_flight",
            "gauge",
            "Requests in flight.",
            snap.in_flight,
        );
        counter(
            "retrace_proxy_rows_written_total",
            "counter",
            "Rows accepted by the writer.",
            snap.rows_written,
        );
        counter(
            "retrace_proxy_rows_dropped_total",
            "counter",
            "Rows dropped (queue full or write failure).",
            snap.rows_dropped,
        );
        counter(
            "retrace_proxy_queue_depth",
            "gauge",
            "Rows waiting for the writer.",
            snap.queue_depth,
        );
        counter(
            "retrace_proxy_queue_bytes",
            "gauge",
            "Bytes held by the rows waiting for the writer (request bodies, response bytes).",
            snap.queue_bytes,
        );
        counter(
            "retrace_proxy_bytes_written_total",
            "counter",
            "Bytes of recording written.",
            snap.bytes_written,
        );
        counter(
            "retrace_proxy_write_errors_total",
            "counter",
            "Write errors of the recorder.",
            snap.write_errors,
        );
        let _ = writeln!(
            out,
            "# HELP retrace_proxy_requests_total Finished requests by status and outcome."
        );
        let _ = writeln!(out, "# TYPE retrace_proxy_requests_total counter");
        if let Ok(finished) = self.finished.lock() {
            for (status, outcome, count) in finished.iter() {
                let status = status.map_or_else(|| "none".to_string(), |s| s.to_string());
                let _ = writeln!(
                    out,
                    "retrace_proxy_requests_total{{status=\"{status}\",outcome=\"{}\"}} {count}",
                    outcome.as_str()
                );
            }
        }
        self.upstream_latency.render(
            &mut out,
            "retrace_proxy_upstream_latency_seconds",
            "Upstream time from sending the request to the response head.",
        );
        self.added_latency.render(
            &mut out,
            "retrace_proxy_added_latency_seconds",
            "Time the proxy itself added before the response head (total minus upstream).",
        );
        out
    }
}
