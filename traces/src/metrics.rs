//! The one definition of every latency metric in retrace. Proxy and replay both compute
//! them through these functions; docs/metrics.md states them in words.
//!
//! All inputs are microsecond offsets from a common origin (the send time, or the arrival
//! time at the proxy).

use serde::{Deserialize, Serialize};

/// Summary of one request's inter-token gaps. We keep a per-request summary rather than
/// the full list: a full list costs O(output tokens) per row and would multiply the size
/// of a recording many times over, while the summary keeps what analysis uses (typical
/// gap, tail gap, worst stall).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GapSummary {
    /// Number of gaps (content chunks − 1).
    pub count: u32,
    /// Mean gap, µs.
    pub mean_us: u64,
    /// Median gap, µs.
    pub p50_us: u64,
    /// 99th percentile gap, µs.
    pub p99_us: u64,
    /// Largest gap, µs.
    pub max_us: u64,
}
