//! SLO gates: `--slo ttft_p95=2s`, parsed once into typed specs.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A per-request latency metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyMetric {
    /// Time to first token (from the intended send by default).
    Ttft,
    /// Time per output token after the first.
    Tpot,
    /// Inter-token latency (per-request median gaps, weighted by gap count).
    Itl,
    /// End-to-end time (from the intended send by default).
    E2e,
}

impl LatencyMetric {
    /// Name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            LatencyMetric::Ttft => "ttft",
            LatencyMetric::Tpot => "tpot",
            LatencyMetric::Itl => "itl",
            LatencyMetric::E2e => "e2e",
        }
    }
}

/// What an SLO constrains.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SloMetric {
    /// A latency percentile must stay at or below the threshold (µs).
    Latency {
        /// Which latency.
        metric: LatencyMetric,
        /// Percentile, 0–100.
        percentile: f64,
    },
    /// Failed requests / requests (client cancellations excluded) at or below (fraction).
    ErrorRate,
    /// A percentile of the sampled server queue depth at or below (requests).
    QueueDepth {
        /// Percentile, 0–100.
        percentile: f64,
    },
    /// Peak KV-cache usage at or below (fraction).
    KvCachePeak,
    /// Memory growth of the fastest-growing memory series at or below (MB/hour).
    RssGrowthMbPerHour,
    /// Completed requests per second at or above.
    ThroughputRps,
}

/// One SLO: a metric and its threshold, in canonical units (µs, fraction, requests, MB/h,
/// req/s).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloSpec {
    /// The name as written (`ttft_p95`).
    pub name: String,
    /// What is constrained.
    pub metric: SloMetric,
    /// Threshold in canonical units.
    pub threshold: f64,
    /// The threshold as written (`2s`).
    pub threshold_text: String,
    /// True for the defaults of `--slo seed` (missing data does not fail these).
    pub from_seed: bool,
}

impl SloSpec {
    /// True when the metric is an upper bound (everything except throughput).
    pub fn is_upper_bound(&self) -> bool {
        !matches!(self.metric, SloMetric::ThroughputRps)
    }

    /// Whether `observed` meets this SLO.
    pub fn passes(&self, observed: f64) -> bool {
        if self.is_upper_bound() {
            observed <= self.threshold
        } else {
            observed >= self.threshold
        }
    }

    /// Unit of the canonical threshold, for display.
    pub fn unit(&self) -> &'static str {
        match self.metric {
            SloMetric::Latency { .. } => "us",
            SloMetric::ErrorRate | SloMetric::KvCachePeak => "fraction",
            SloMetric::QueueDepth { .. } => "requests",
            SloMetric::RssGrowthMbPerHour => "MiB/hour",
            SloMetric::ThroughputRps => "req/s",
        }
    }
}

/// A `--slo` argument: a spec, or `seed` for the documented defaults.
#[derive(Debug, Clone, PartialEq)]
pub enum SloArg {
    /// `--slo seed`.
    Seed,
    /// `--slo metric=value`.
    Spec(SloSpec),
}

/// Error parsing an `--slo` argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad --slo `{input}`: {message}")]
pub struct SloParseError {
    /// The argument.
    pub input: String,
    /// What was wrong.
    pub message: String,
}

/// The defaults of `--slo seed` (documented in docs/analyze.md).
pub const SEED_SLOS: &[&str] = &[
    "ttft_p95=2s",
    "tpot_p95=100ms",
    "e2e_p99=60s",
    "error_rate=1%",
    "kv_cache_peak=95%",
];

/// The specs of `--slo seed`.
pub fn seed_slos() -> Vec<SloSpec> {
    SEED_SLOS
        .iter()
        .filter_map(|s| match SloArg::from_str(s) {
            Ok(SloArg::Spec(mut spec)) => {
                spec.from_seed = true;
                Some(spec)
            }
            _ => None,
        })
        .collect()
}

/// Expands `seed` and removes duplicates (a later spec of the same name wins).
pub fn resolve(args: &[SloArg]) -> Vec<SloSpec> {
    let mut out: Vec<SloSpec> = Vec::new();
    for arg in args {
        let specs = match arg {
            SloArg::Seed => seed_slos(),
            SloArg::Spec(spec) => vec![spec.clone()],
        };
        for spec in specs {
            out.retain(|s| s.name != spec.name);
            out.push(spec);
        }
    }
    out
}

fn err(input: &str, message: impl Into<String>) -> SloParseError {
    SloParseError {
        input: input.to_string(),
        message: message.into(),
    }
}

/// Parses `p95`, `p99.9`, `p999` (= 99.9) into a percentile in 0–100.
fn parse_percentile(input: &str, text: &str) -> Result<f64, SloParseError> {
    let digits = text.strip_prefix('p').ok_or_else(|| {
        err(
            input,
            format!("expected a percentile like p95, got `{text}`"),
        )
    })?;
    let value: f64 = if digits.contains('.') {
        digits.parse().ok()
    } else if digits.len() > 2 && digits.starts_with("99") {
        // p999 = 99.9, p9999 = 99.99
        format!("99.{}", &digits[2..]).parse().ok()
    } else {
        digits.parse().ok()
    }
    .ok_or_else(|| err(input, format!("bad percentile `{text}`")))?;
    if !(0.0..=100.0).contains(&value) || value == 0.0 {
        return Err(err(
            input,
            format!("percentile `{text}` is not in (0, 100]"),
        ));
    }
    Ok(value)
}

/// Parses a duration with a unit (`2s`, `50ms`, `800us`, `1.5m`; see `traces::units`) into µs.
/// Unlike the command line's durations, an SLO threshold must name its unit: `2` could be
/// seconds or milliseconds, and a gate that silently means the other one is worse than none.
pub fn parse_duration_us(text: &str) -> Option<f64> {
    if text.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    retrace_traces::units::parse_duration(text)
        .ok()
        .map(|d| d.as_secs_f64() * 1e6)
}

/// Parses `0.1%` or `0.001` into a fraction (see `traces::units`).
fn parse_fraction(text: &str) -> Option<f64> {
    retrace_traces::units::parse_fraction(text).ok()
}

fn parse_number(text: &str) -> Option<f64> {
    let v: f64 = text.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v)
}

impl FromStr for SloArg {
    type Err = SloParseError;

    fn from_str(input: &str) -> Result<SloArg, SloParseError> {
        let input = input.trim();
        if input == "seed" {
            return Ok(SloArg::Seed);
        }
        let (name, value) = input
            .split_once('=')
            .ok_or_else(|| err(input, "expected metric=value (e.g. ttft_p95=2s) or `seed`"))?;
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        let (metric, threshold) = match name.as_str() {
            "error_rate" => (
                SloMetric::ErrorRate,
                parse_fraction(value)
                    .ok_or_else(|| err(input, "expected a rate like 0.1% or 0.001"))?,
            ),
            "kv_cache_peak" => (
                SloMetric::KvCachePeak,
                parse_fraction(value)
                    .ok_or_else(|| err(input, "expected a usage like 80% or 0.8"))?,
            ),
            "rss_growth_mb_per_hour" => (
                SloMetric::RssGrowthMbPerHour,
                parse_number(value).ok_or_else(|| err(input, "expected MiB/hour, e.g. 50"))?,
            ),
            "throughput_rps" => (
                SloMetric::ThroughputRps,
                parse_number(value).ok_or_else(|| err(input, "expected req/s, e.g. 20"))?,
            ),
            other => {
                let (base, pct) = other.rsplit_once('_').ok_or_else(|| {
                    err(
                        input,
                        format!("unknown metric `{other}`; {}", KNOWN_METRICS),
                    )
                })?;
                let percentile = parse_percentile(input, pct)?;
                let latency = match base {
                    "ttft" => Some(LatencyMetric::Ttft),
                    "tpot" => Some(LatencyMetric::Tpot),
                    "itl" => Some(LatencyMetric::Itl),
                    "e2e" => Some(LatencyMetric::E2e),
                    _ => None,
                };
                match (latency, base) {
                    (Some(metric), _) => (
                        SloMetric::Latency { metric, percentile },
                        parse_duration_us(value).ok_or_else(|| {
                            err(input, "expected a duration with a unit: 2s, 50ms, 800us")
                        })?,
                    ),
                    (None, "queue_depth") => (
                        SloMetric::QueueDepth { percentile },
                        parse_number(value)
                            .ok_or_else(|| err(input, "expected a request count, e.g. 10"))?,
                    ),
                    _ => {
                        return Err(err(
                            input,
                            format!("unknown metric `{other}`; {}", KNOWN_METRICS),
                        ))
                    }
                }
            }
        };
        Ok(SloArg::Spec(SloSpec {
            name,
            metric,
            threshold,
            threshold_text: value.to_string(),
            from_seed: false,
        }))
    }
}

const KNOWN_METRICS: &str = "known: ttft_pNN, tpot_pNN, itl_pNN, e2e_pNN, error_rate, \
queue_depth_pNN, kv_cache_peak, rss_growth_mb_per_hour, throughput_rps, or `seed`";

impl fmt::Display for SloSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.is_upper_bound() { "≤" } else { "≥" };
        write!(f, "{} {op} {}", self.name, self.threshold_text)
    }
}

/// clap value parser for `--slo`.
pub fn parse_slo_arg(s: &str) -> Result<SloArg, String> {
    SloArg::from_str(s).map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(s: &str) -> SloSpec {
        match s.parse::<SloArg>().unwrap() {
            SloArg::Spec(spec) => spec,
            SloArg::Seed => panic!("seed"),
        }
    }

    #[test]
    fn slo_parsing_understands_units() {
        let s = spec("ttft_p95=2s");
        assert_eq!(
            s.metric,
            SloMetric::Latency {
                metric: LatencyMetric::Ttft,
                percentile: 95.0
            }
        );
        assert_eq!(s.threshold, 2e6);
        assert_eq!(spec("tpot_p50=50ms").threshold, 50e3);
        assert_eq!(spec("itl_p99=800us").threshold, 800.0);
        assert!((spec("error_rate=0.1%").threshold - 0.001).abs() < 1e-12);
        assert!((spec("error_rate=0.002").threshold - 0.002).abs() < 1e-12);
        assert_eq!(
            spec("queue_depth_p50=10").metric,
            SloMetric::QueueDepth { percentile: 50.0 }
        );
        assert!((spec("kv_cache_peak=80%").threshold - 0.8).abs() < 1e-12);
        assert_eq!(spec("rss_growth_mb_per_hour=50").threshold, 50.0);
        match spec("e2e_p999=10s").metric {
            SloMetric::Latency { percentile, .. } => assert!((percentile - 99.9).abs() < 1e-9),
            other => panic!("{other:?}"),
        }
        assert!(!spec("throughput_rps=5").passes(4.0));
        assert!(spec("ttft_p95=2s").passes(1.9e6));
    }

    #[test]
    fn slo_parsing_rejects_bad_input_clearly() {
        for bad in [
            "ttft_p95",
            "ttft_p95=2",
            "ttft_p95=fast",
            "latency_p95=2s",
            "ttft_q95=2s",
            "error_rate=150%",
            "kv_cache_peak=-1",
            "ttft_p0=1s",
        ] {
            let e = bad.parse::<SloArg>().unwrap_err();
            assert_eq!(e.input, bad);
            assert!(!e.message.is_empty());
        }
        let e = "latency_p95=2s".parse::<SloArg>().unwrap_err();
        assert!(e.message.contains("ttft_pNN"), "{e}");
    }

    #[test]
    fn seed_expands_to_documented_defaults_and_later_specs_win() {
        assert_eq!(seed_slos().len(), SEED_SLOS.len());
        let args = vec![SloArg::Seed, "ttft_p95=1s".parse().unwrap()];
        let specs = resolve(&args);
        assert_eq!(specs.len(), SEED_SLOS.len());
        let ttft = specs.iter().find(|s| s.name == "ttft_p95").unwrap();
        assert_eq!(ttft.threshold, 1e6);
        assert!(!ttft.from_seed);
    }
}
