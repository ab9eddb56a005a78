//! A summary of a trace or recording: size, time span, rates, burstiness, token lengths,
//! outcomes, prefix reuse and models.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::RequestRow;

/// Percentiles of a token-count column (nearest rank), over the rows that have it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TokenStats {
    /// Rows with a value.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: u32,
    /// 95th percentile.
    pub p95: u32,
    /// 99th percentile.
    pub p99: u32,
    /// Largest.
    pub max: u32,
}

impl TokenStats {
    fn from_values(values: &mut [u32]) -> Option<TokenStats> {
        if values.is_empty() {
            return None;
        }
        values.sort_unstable();
        let n = values.len();
        let rank = |p: usize| values[(p * n).div_ceil(100).clamp(1, n) - 1];
        Some(TokenStats {
            count: n as u64,
            mean: values.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64,
            p50: rank(50),
            p95: rank(95),
            p99: rank(99),
            max: values[n - 1],
        })
    }
}

/// Prefix-block reuse: of all prefix blocks of all prompts, in arrival order, the share
/// already seen in an earlier prompt (what an unbounded prefix cache could reuse).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrefixReuse {
    /// Rows with at least one prefix block.
    pub rows_with_blocks: u64,
    /// Prefix blocks in all.
    pub blocks: u64,
    /// Blocks seen in an earlier row.
    pub reused_blocks: u64,
    /// `reused_blocks / blocks`.
    pub reuse_share: f64,
}

/// What `retrace inspect` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InspectReport {
    /// Rows read.
    pub rows: u64,
    /// Earliest arrival, UTC µs.
    pub first_arrival_us: Option<i64>,
    /// Latest arrival, UTC µs.
    pub last_arrival_us: Option<i64>,
    /// Last − first arrival, seconds.
    pub span_s: f64,
    /// Rows per second over the span (None when the span is 0).
    pub mean_rate_per_s: Option<f64>,
    /// Most arrivals in one whole second (counted from the first arrival).
    pub peak_rate_per_s: u64,
    /// Rows per minute over the span.
    pub mean_rate_per_min: Option<f64>,
    /// Most arrivals in one whole minute (counted from the first arrival).
    pub peak_rate_per_min: u64,
    /// Coefficient of variation of the inter-arrival times (std / mean): 1 for a Poisson
    /// process, above 1 for bursty traffic, 0 for a metronome.
    pub interarrival_cv: Option<f64>,
    /// Prompt tokens.
    pub prompt_tokens: Option<TokenStats>,
    /// Output tokens.
    pub output_tokens: Option<TokenStats>,
    /// Rows per outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Rows per endpoint.
    pub endpoints: BTreeMap<String, u64>,
    /// Rows per model (`-` for rows without one).
    pub models: BTreeMap<String, u64>,
    /// Distinct sessions.
    pub sessions: u64,
    /// Prefix reuse, when any row has prefix blocks.
    pub prefix: Option<PrefixReuse>,
}

/// Summarises rows. Prefix reuse is counted in the order given (files are in arrival
/// order); everything else does not depend on the order.
pub fn inspect(rows: impl Iterator<Item = RequestRow>) -> InspectReport {
    let mut arrivals = Vec::new();
    let mut prompt = Vec::new();
    let mut output = Vec::new();
    let mut outcomes = BTreeMap::new();
    let mut endpoints = BTreeMap::new();
    let mut models = BTreeMap::new();
    let mut sessions = HashSet::new();
    let mut seen_blocks = HashSet::new();
    let (mut rows_with_blocks, mut blocks, mut reused) = (0u64, 0u64, 0u64);
    for row in rows {
        arrivals.push(row.arrival_us);
        prompt.extend(row.prompt_tokens);
        output.extend(row.output_tokens);
        *outcomes
            .entry(row.outcome.as_str().to_string())
            .or_insert(0) += 1;
        *endpoints
            .entry(row.endpoint.as_str().to_string())
            .or_insert(0) += 1;
        *models
            .entry(row.model.unwrap_or_else(|| "-".to_string()))
            .or_insert(0) += 1;
        if let Some(s) = row.session_id {
            sessions.insert(s);
        }
        if !row.prefix_hashes.is_empty() {
            rows_with_blocks += 1;
        }
        for hash in row.prefix_hashes {
            blocks += 1;
            if !seen_blocks.insert(hash) {
                reused += 1;
            }
        }
    }
    arrivals.sort_unstable();
    let (first, last) = (arrivals.first().copied(), arrivals.last().copied());
    let span_us = match (first, last) {
        (Some(f), Some(l)) => l.saturating_sub(f),
        _ => 0,
    };
    let span_s = span_us as f64 / 1e6;
    let n = arrivals.len() as u64;
    let mean_rate_per_s = (span_us > 0).then(|| n as f64 / span_s);
    InspectReport {
        rows: n,
        first_arrival_us: first,
        last_arrival_us: last,
        span_s,
        mean_rate_per_s,
        peak_rate_per_s: peak_in_window(&arrivals, 1_000_000),
        mean_rate_per_min: mean_rate_per_s.map(|r| r * 60.0),
        peak_rate_per_min: peak_in_window(&arrivals, 60_000_000),
        interarrival_cv: interarrival_cv(&arrivals),
        prompt_tokens: TokenStats::from_values(&mut prompt),
        output_tokens: TokenStats::from_values(&mut output),
        outcomes,
        endpoints,
        models,
        sessions: sessions.len() as u64,
        prefix: (blocks > 0).then(|| PrefixReuse {
            rows_with_blocks,
            blocks,
            reused_blocks: reused,
            reuse_share: reused as f64 / blocks as f64,
        }),
    }
}

/// Most arrivals in one of the consecutive windows `[first + k·w, first + (k+1)·w)`.
fn peak_in_window(sorted: &[i64], window_us: i64) -> u64 {
    let Some(&first) = sorted.first() else {
        return 0;
    };
    let (mut best, mut current, mut bucket) = (0u64, 0u64, 0i64);
    for &t in sorted {
        let b = t.saturating_sub(first) / window_us;
        if b != bucket {
            bucket = b;
            current = 0;
        }
        current += 1;
        best = best.max(current);
    }
    best
}

fn interarrival_cv(sorted: &[i64]) -> Option<f64> {
    if sorted.len() < 3 {
        return None;
    }
    let gaps: Vec<f64> = sorted.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    if mean <= 0.0 {
        return None;
    }
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    Some(var.sqrt() / mean)
}

fn utc(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| format!("{us} µs"))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.digits$}"))
}

impl fmt::Display for InspectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, k: &str, v: String| writeln!(f, "{k:<22} {v}");
        row(f, "rows", self.rows.to_string())?;
        if let (Some(first), Some(last)) = (self.first_arrival_us, self.last_arrival_us) {
            row(f, "first arrival", utc(first))?;
            row(f, "last arrival", utc(last))?;
        }
        row(f, "span", format!("{:.1} s", self.span_s))?;
        row(
            f,
            "rate per second",
            format!(
                "mean {}  peak {}",
                opt(self.mean_rate_per_s, 2),
                self.peak_rate_per_s
            ),
        )?;
        row(
            f,
            "rate per minute",
            format!(
                "mean {}  peak {}",
                opt(self.mean_rate_per_min, 1),
                self.peak_rate_per_min
            ),
        )?;
        row(
            f,
            "burstiness (CV)",
            format!(
                "{}  (inter-arrival std/mean; 1 = Poisson, >1 bursty)",
                opt(self.interarrival_cv, 2)
            ),
        )?;
        writeln!(
            f,
            "{:<22} {:>8} {:>9} {:>7} {:>7} {:>7} {:>7}",
            "tokens", "rows", "mean", "p50", "p95", "p99", "max"
        )?;
        for (name, stats) in [
            ("  prompt", &self.prompt_tokens),
            ("  output", &self.output_tokens),
        ] {
            match stats {
                Some(s) => writeln!(
                    f,
                    "{name:<22} {:>8} {:>9.1} {:>7} {:>7} {:>7} {:>7}",
                    s.count, s.mean, s.p50, s.p95, s.p99, s.max
                )?,
                None => writeln!(f, "{name:<22} {:>8}", 0)?,
            }
        }
        let counts = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(f, "outcomes", counts(&self.outcomes))?;
        row(f, "endpoints", counts(&self.endpoints))?;
        row(f, "models", counts(&self.models))?;
        row(f, "sessions", self.sessions.to_string())?;
        match &self.prefix {
            Some(p) => row(
                f,
                "prefix reuse",
                format!(
                    "{:.1}% of {} blocks seen before ({} rows with blocks)",
                    p.reuse_share * 100.0,
                    p.blocks,
                    p.rows_with_blocks
                ),
            ),
            None => row(f, "prefix reuse", "- (no prefix blocks)".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::import::{base_row, Format};
    use crate::Endpoint;

    fn base_row_for_tests(format: Format, line: u64, arrival_us: i64) -> RequestRow {
        base_row(format, line, arrival_us, Endpoint::Chat)
    }

    #[test]
    fn rates_cv_tokens_and_reuse() {
        let mut rows = Vec::new();
        // 4 arrivals in the first second, 1 at 10 s: peak 4/s, span 10 s.
        for (i, t) in [0, 100_000, 200_000, 900_000, 10_000_000]
            .iter()
            .enumerate()
        {
            let mut r = base_row_for_tests(Format::Mooncake, i as u64, *t);
            r.prompt_tokens = Some(100 * (i as u32 + 1));
            r.output_tokens = (i > 0).then_some(10);
            r.prefix_hashes = vec![1, 2 + i as u64];
            rows.push(r);
        }
        let report = inspect(rows.into_iter());
        assert_eq!(report.rows, 5);
        assert_eq!(report.span_s, 10.0);
        assert_eq!(report.mean_rate_per_s, Some(0.5));
        assert_eq!(report.peak_rate_per_s, 4);
        assert_eq!(report.peak_rate_per_min, 5);
        let p = report.prompt_tokens.unwrap();
        assert_eq!((p.count, p.p50, p.p95, p.max), (5, 300, 500, 500));
        assert_eq!(report.output_tokens.unwrap().count, 4);
        // Block 1 is shared by all five rows: 4 of 10 blocks reused.
        let prefix = report.prefix.unwrap();
        assert_eq!((prefix.blocks, prefix.reused_blocks), (10, 4));
        assert!((prefix.reuse_share - 0.4).abs() < 1e-12);
        // Gaps 0.1, 0.1, 0.7, 9.1 s: mean 2.5, clearly bursty.
        assert!(report.interarrival_cv.unwrap() > 1.0);
        let text = report.to_string();
        assert!(text.contains("peak 4"), "{text}");
        assert!(text.contains("40.0% of 10 blocks"), "{text}");
    }

    #[test]
    fn evenly_spaced_arrivals_have_zero_cv() {
        let rows = (0..10).map(|i| base_row_for_tests(Format::Azure, i, i as i64 * 1_000));
        let report = inspect(rows);
        assert_eq!(report.interarrival_cv, Some(0.0));
        assert_eq!(report.prefix, None);
        assert!(inspect(std::iter::empty()).to_string().contains("rows"));
    }
}
