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

impl GapSummary {
    /// Summarises a request's inter-token gaps (µs). Sorts the slice in place. Percentiles
    /// are nearest-rank (the smallest gap with at least p% of gaps at or below it), so
    /// every reported value is a gap that really happened. `None` when there are no gaps.
    pub fn from_gaps(gaps_us: &mut [u64]) -> Option<GapSummary> {
        if gaps_us.is_empty() {
            return None;
        }
        gaps_us.sort_unstable();
        let n = gaps_us.len();
        let sum: u128 = gaps_us.iter().map(|&g| u128::from(g)).sum();
        let mean_us = u64::try_from(sum / n as u128).unwrap_or(u64::MAX);
        Some(GapSummary {
            count: u32::try_from(n).unwrap_or(u32::MAX),
            mean_us,
            p50_us: nearest_rank(gaps_us, 50),
            p99_us: nearest_rank(gaps_us, 99),
            max_us: gaps_us[n - 1],
        })
    }
}

/// Nearest-rank percentile of a sorted, non-empty slice.
fn nearest_rank(sorted: &[u64], percent: usize) -> u64 {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Time per output token after the first: `(e2e − ttft) / (output_tokens − 1)`, in µs.
/// `None` for fewer than two output tokens (no inter-token time exists) or when the end
/// comes before the first token (clock trouble).
pub fn tpot_us(ttft_us: u64, e2e_us: u64, output_tokens: u32) -> Option<f64> {
    if output_tokens < 2 || e2e_us < ttft_us {
        return None;
    }
    Some((e2e_us - ttft_us) as f64 / f64::from(output_tokens - 1))
}

/// The latencies of one response, all measured from the same origin (the send time for
/// replay, the arrival time at the proxy).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latencies {
    /// Time to the first response body byte.
    pub ttfb_us: Option<u64>,
    /// Time to the first chunk carrying non-empty generated text.
    pub ttft_us: Option<u64>,
    /// Time to the end of the response body.
    pub e2e_us: Option<u64>,
    /// Time per output token after the first (see [`tpot_us`]).
    pub tpot_us: Option<f64>,
    /// Gaps between successive content chunks.
    pub itl: Option<GapSummary>,
}

impl Latencies {
    /// The latencies of an observation whose offsets are from the send (or arrival).
    ///
    /// TPOT is only given when the text came in at least two content chunks: with one
    /// chunk (a non-streaming JSON body, or a stream that sent all text at once) there is
    /// no observed time between tokens, and a formula result would be a made-up number.
    pub fn from_observation(obs: &crate::Observation) -> Latencies {
        let tpot = match (obs.first_token_us, obs.end_us, obs.output_tokens) {
            (Some(ttft), Some(e2e), Some(tokens)) if obs.chunk_count >= 2 => {
                tpot_us(ttft, e2e, tokens)
            }
            _ => None,
        };
        Latencies {
            ttfb_us: obs.first_byte_us,
            ttft_us: obs.first_token_us,
            e2e_us: obs.end_us,
            tpot_us: tpot,
            itl: obs.itl,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gap_summary_nearest_rank() {
        assert_eq!(GapSummary::from_gaps(&mut []), None);
        let mut gaps: Vec<u64> = (1..=100).rev().collect();
        let s = GapSummary::from_gaps(&mut gaps).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.mean_us, 50); // 5050 / 100, floored
        assert_eq!(s.p50_us, 50);
        assert_eq!(s.p99_us, 99);
        assert_eq!(s.max_us, 100);
        let s = GapSummary::from_gaps(&mut [7]).unwrap();
        assert_eq!((s.count, s.p50_us, s.p99_us, s.max_us), (1, 7, 7, 7));
    }

    #[test]
    fn tpot_definition() {
        assert_eq!(tpot_us(100, 1100, 11), Some(100.0));
        assert_eq!(tpot_us(100, 1100, 1), None);
        assert_eq!(tpot_us(100, 1100, 0), None);
        assert_eq!(tpot_us(2000, 1000, 5), None);
    }
}
