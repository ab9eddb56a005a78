//! The report: numbers per window and overall, verdicts in words, SLO results. Built from
//! the aggregates; rendered for the terminal, as JSON, or as HTML (see `html`).

use std::collections::BTreeMap;

use hdrhistogram::{Counter, Histogram};
use serde::Serialize;

use crate::agg::{prompt_bin_low, Agg, Level, CANCELLED, ERROR_KINDS, PROMPT_BINS};
use crate::slo::{LatencyMetric, SloMetric, SloSpec};
use crate::stats::{self, GrowthShape};
use crate::AnalyzeConfig;

/// Version of the JSON document (`--json`); bumped on incompatible changes.
pub const REPORT_SCHEMA_VERSION: &str = "1";

/// Windows with fewer requests than this are left out of per-window trend statistics
/// (their p99 is a single request).
const MIN_WINDOW_REQUESTS: u64 = 20;

const US_PER_HOUR: f64 = 3.6e9;
const MB: f64 = 1024.0 * 1024.0;

/// Latency percentiles in µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Percentiles {
    fn of<T: Counter>(h: &Histogram<T>) -> Option<Percentiles> {
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5) as f64,
            p90: h.value_at_quantile(0.9) as f64,
            p95: h.value_at_quantile(0.95) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            max: h.max() as f64,
        })
    }

    fn of_opt<T: Counter>(h: &Option<Histogram<T>>) -> Option<Percentiles> {
        h.as_ref().and_then(Percentiles::of)
    }
}

/// Whole-run numbers.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Result rows.
    pub requests: u64,
    /// Requests without error.
    pub ok: u64,
    /// Requests with an error (any kind).
    pub errors: u64,
    /// Server error rate: errors other than client cancellations / requests other than those.
    pub error_rate: f64,
    /// Errors by kind (`connect`, `timeout`, `http_status`, `broken_stream`, `cancelled`, `other`).
    pub errors_by_kind: BTreeMap<String, u64>,
    /// First intended send, UTC µs.
    pub start_us: i64,
    /// Last intended send, UTC µs.
    pub end_us: i64,
    /// Span of sends, seconds.
    pub duration_s: f64,
    /// Requests sent per second.
    pub requests_per_s: f64,
    /// Completed (ok) requests per second.
    pub completed_per_s: f64,
    /// Prompt tokens sent per second.
    pub input_tokens_per_s: f64,
    /// Output tokens received per second.
    pub output_tokens_per_s: f64,
    /// TTFT, µs (basis: see `latency_basis`).
    pub ttft: Option<Percentiles>,
    /// TPOT, µs.
    pub tpot: Option<Percentiles>,
    /// ITL, µs: per-request median gaps weighted by gap count.
    pub itl: Option<Percentiles>,
    /// E2E, µs.
    pub e2e: Option<Percentiles>,
    /// Client lateness (actual − intended send), µs.
    pub lateness: Option<Percentiles>,
    /// Requests in flight at send.
    pub in_flight: Option<Percentiles>,
    /// Sampled server queue depth.
    pub queue_depth: Option<Percentiles>,
    /// Peak KV-cache usage (fraction).
    pub kv_cache_peak: Option<f64>,
    /// Preemptions during the run (counter increase).
    pub preemptions: Option<f64>,
    /// Sample rows read.
    pub samples: u64,
}

/// One window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowStats {
    /// Window start, UTC µs.
    pub start_us: i64,
    /// Seconds since the run's start.
    pub offset_s: f64,
    /// Requests sent in the window.
    pub requests: u64,
    /// Requests per second.
    pub requests_per_s: f64,
    /// Prompt tokens per second.
    pub input_tokens_per_s: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Error rate (cancellations excluded).
    pub error_rate: f64,
    /// Non-zero error counts by kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// TTFT percentiles, µs.
    pub ttft: Option<Percentiles>,
    /// TPOT percentiles, µs.
    pub tpot: Option<Percentiles>,
    /// ITL percentiles, µs.
    pub itl: Option<Percentiles>,
    /// E2E percentiles, µs.
    pub e2e: Option<Percentiles>,
    /// TTFT p99 / p50.
    pub ttft_p99_over_p50: Option<f64>,
    /// Mean requests in flight at send.
    pub in_flight_mean: Option<f64>,
    /// Largest client lateness, µs.
    pub lateness_max_us: i64,
    /// Mean sampled queue depth.
    pub queue_depth_mean: Option<f64>,
    /// Largest sampled queue depth.
    pub queue_depth_max: Option<f64>,
    /// Mean running requests.
    pub running_mean: Option<f64>,
    /// Mean KV-cache usage (fraction).
    pub kv_cache_mean: Option<f64>,
    /// Peak KV-cache usage (fraction).
    pub kv_cache_max: Option<f64>,
    /// Mean of each memory series in the window, bytes.
    pub memory_bytes: BTreeMap<String, f64>,
}

/// How bad a verdict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// An SLO failed.
    Fail,
    /// A problem worth acting on.
    Warn,
    /// Worth knowing.
    Info,
    /// Checked and fine.
    Pass,
}

/// One finding in words.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// `slo`, `validity`, `drift`, `memory`, `starvation`, `capacity`, `spike`,
    /// `capacity_plan`, `production`, `baseline`.
    pub category: String,
    /// How bad.
    pub severity: Severity,
    /// One sentence.
    pub headline: String,
    /// The evidence.
    pub detail: String,
    /// The usual fix, when the evidence supports one.
    pub remedy: Option<String>,
}

/// Outcome of one SLO gate.
#[derive(Debug, Clone, Serialize)]
pub struct SloResult {
    /// The SLO.
    pub spec: SloSpec,
    /// Observed value in the spec's canonical unit (None: no data).
    pub observed: Option<f64>,
    /// Passed (a seed default without data passes; an explicit one fails).
    pub pass: bool,
}

/// Run validity: was the load generator keeping up?
#[derive(Debug, Clone, Serialize)]
pub struct Validity {
    /// True when results reflect the client rather than the server.
    pub client_limited: bool,
    /// p99 of lateness, µs.
    pub lateness_p99_us: Option<f64>,
    /// Errors attributed to the client (cancellations, client-side connect failures, other).
    pub client_errors: u64,
    /// Client errors / requests.
    pub client_error_rate: f64,
    /// Why it is client-limited.
    pub reasons: Vec<String>,
}

/// A dated step change.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Start of the first window after the step, UTC µs.
    pub at_us: i64,
    /// Seconds since the run's start.
    pub offset_s: f64,
    /// Level before, µs.
    pub before_us: f64,
    /// Level after, µs.
    pub after_us: f64,
}

/// Trend of one per-window latency percentile.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    /// `ttft_p99`, `tpot_p50`, ...
    pub metric: String,
    /// Theil–Sen slope, µs per hour.
    pub slope_us_per_hour: f64,
    /// Mann–Kendall two-sided p-value.
    pub p_value: f64,
    /// Median level, µs.
    pub median_us: f64,
    /// Change over the run implied by the slope, relative to the median.
    pub change_over_run: f64,
    /// Significant and large enough to matter (p < 0.01, ≥ 10% over the run).
    pub significant: bool,
    /// A step change, if one explains the series better than a line.
    pub step: Option<Step>,
    /// Windows used.
    pub windows: usize,
}

/// Growth of one memory series.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryTrend {
    /// `name{labels} (source)`.
    pub series: String,
    /// flat, linear (leak), plateau (warm-up), shrinking.
    pub shape: GrowthShape,
    /// Least-squares slope, MB per hour.
    pub slope_mb_per_hour: f64,
    /// 95% confidence interval of the slope.
    pub ci95_mb_per_hour: [f64; 2],
    /// Slope per 1,000 requests sent, MB.
    pub mb_per_1000_requests: Option<f64>,
    /// Slope in the first half, MB/hour.
    pub first_half_mb_per_hour: f64,
    /// Slope in the second half, MB/hour.
    pub second_half_mb_per_hour: f64,
    /// First window's mean, MB.
    pub start_mb: f64,
    /// Last window's mean, MB.
    pub end_mb: f64,
    /// Hours until `--memory-limit` at the current (second-half) slope.
    pub hours_to_limit: Option<f64>,
    /// A leak (linear growth).
    pub leak: bool,
    /// Fit for charts: MB = intercept + slope · hours since the run's start.
    pub fit_intercept_mb: f64,
}

/// TTFT of one prompt-length class.
#[derive(Debug, Clone, Serialize)]
pub struct PromptClass {
    /// `short`, `medium`, `long`.
    pub name: String,
    /// Smallest prompt in the class (tokens, bin edge).
    pub min_tokens: f64,
    /// Requests.
    pub requests: u64,
    /// TTFT p50, µs.
    pub ttft_p50_us: f64,
    /// TTFT p99, µs.
    pub ttft_p99_us: f64,
    /// p99 / p50.
    pub ratio: f64,
}

/// Starvation: tail TTFT far above the median.
#[derive(Debug, Clone, Serialize)]
pub struct Starvation {
    /// `--starvation-ratio`.
    pub ratio_threshold: f64,
    /// Whole-run TTFT p99 / p50.
    pub overall_ratio: Option<f64>,
    /// Windows over the threshold.
    pub windows_flagged: usize,
    /// Windows with enough requests to judge.
    pub windows_judged: usize,
    /// Largest window ratio.
    pub worst_window_ratio: Option<f64>,
    /// By prompt-length class (terciles of prompt length).
    pub classes: Vec<PromptClass>,
    /// Starvation found.
    pub flagged: bool,
}

/// One load level of a ramp, step or spike run.
#[derive(Debug, Clone, Serialize)]
pub struct LevelStats {
    /// Phase label.
    pub phase: Option<String>,
    /// Offered load relative to the trace.
    pub load_level: f64,
    /// Requests.
    pub requests: u64,
    /// Sent per second.
    pub offered_rps: f64,
    /// Completed per second (ok / time to the last completion).
    pub achieved_rps: f64,
    /// Output tokens per second.
    pub output_tokens_per_s: f64,
    /// Mean requests in flight at send (concurrent users).
    pub concurrency: f64,
    /// Error rate (cancellations excluded).
    pub error_rate: f64,
    /// TTFT, µs.
    pub ttft: Option<Percentiles>,
    /// TPOT, µs.
    pub tpot: Option<Percentiles>,
    /// E2E, µs.
    pub e2e: Option<Percentiles>,
    /// Peak KV usage in the level's windows.
    pub kv_cache_peak: Option<f64>,
    /// Mean queue depth in the level's windows.
    pub queue_depth_mean: Option<f64>,
    /// Largest running count in the level's windows.
    pub running_max: Option<f64>,
    /// Preemptions during the level.
    pub preemptions: Option<f64>,
    /// SLOs this level fails.
    pub failed_slos: Vec<String>,
    /// First send, UTC µs.
    pub start_us: i64,
    /// Last send, UTC µs.
    pub end_us: i64,
}

/// Capacity of a ramp or step run.
#[derive(Debug, Clone, Serialize)]
pub struct Capacity {
    /// Levels in time order.
    pub levels: Vec<LevelStats>,
    /// First level that breaks an SLO (index into `levels`).
    pub cliff: Option<usize>,
    /// First level where throughput stops rising.
    pub saturation: Option<usize>,
    /// `compute`, `memory` (KV), `queue`, or None when the evidence is thin.
    pub bottleneck: Option<String>,
    /// Why.
    pub bottleneck_evidence: String,
    /// Concurrent users held at the SLO (last passing level).
    pub supported_concurrency: Option<f64>,
    /// Requests/s held at the SLO.
    pub supported_rps: Option<f64>,
    /// The sentence.
    pub sentence: String,
}

/// A spike and the recovery from it.
#[derive(Debug, Clone, Serialize)]
pub struct SpikeRecovery {
    /// Spike phase start, UTC µs.
    pub start_us: i64,
    /// Spike phase end (last send), UTC µs.
    pub end_us: i64,
    /// Requests sent in the spike.
    pub requests: u64,
    /// Errors in the spike (cancellations excluded).
    pub errors: u64,
    /// TTFT p95 during the spike, µs.
    pub ttft_p95_us: Option<f64>,
    /// Threshold a window's TTFT p95 must meet to count as recovered, µs.
    pub threshold_us: f64,
    /// Seconds after the spike until every later window holds (None: never).
    pub recovered_after_s: Option<f64>,
}

/// How many replicas production needs.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityPlan {
    /// Production's peak rate (busiest minute), req/s.
    pub production_peak_rps: f64,
    /// `--growth`.
    pub growth: f64,
    /// Peak × growth.
    pub target_rps: f64,
    /// What one replica holds at the SLO, req/s.
    pub replica_capacity_rps: Option<f64>,
    /// Where that capacity figure comes from.
    pub capacity_source: String,
    /// Replicas (GPUs) needed.
    pub replicas: Option<u64>,
}

/// Shape of a traffic source.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficProfile {
    /// Requests.
    pub requests: u64,
    /// Span, seconds.
    pub duration_s: f64,
    /// Mean arrivals per second.
    pub mean_rps: f64,
    /// Busiest minute, req/s.
    pub peak_rps: f64,
    /// Coefficient of variation of per-second arrival counts.
    pub burstiness_cv: f64,
    /// Prompt tokens p10/p50/p90/p99.
    pub prompt_tokens: [f64; 4],
    /// Output tokens p10/p50/p90/p99.
    pub output_tokens: [f64; 4],
    /// TTFT, µs.
    pub ttft: Option<Percentiles>,
    /// E2E, µs.
    pub e2e: Option<Percentiles>,
    /// Prompt-token quantiles at 1%, 2%, …, 99% (charts).
    pub prompt_quantiles: Vec<f64>,
    /// Output-token quantiles at 1%, …, 99% (charts).
    pub output_quantiles: Vec<f64>,
}

/// Replay vs production.
#[derive(Debug, Clone, Serialize)]
pub struct ProductionComparison {
    /// Production recording.
    pub production: TrafficProfile,
    /// This replay.
    pub replay: TrafficProfile,
    /// Differences that matter, in words.
    pub differences: Vec<String>,
}

/// One number against the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Delta {
    /// Metric name.
    pub metric: String,
    /// This run.
    pub run: Option<f64>,
    /// The baseline.
    pub baseline: Option<f64>,
    /// (run − baseline) / baseline.
    pub delta: Option<f64>,
    /// Worse by more than 10%.
    pub regression: bool,
}

/// This run against `--baseline`.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineComparison {
    /// The baseline's inputs.
    pub inputs: Vec<String>,
    /// Side by side.
    pub deltas: Vec<Delta>,
}

/// The analysis of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`REPORT_SCHEMA_VERSION`].
    pub schema_version: String,
    /// Input paths.
    pub inputs: Vec<String>,
    /// `intended_send` (default: no coordinated omission) or `actual_send`.
    pub latency_basis: String,
    /// Window length, seconds.
    pub window_s: f64,
    /// Whole-run numbers.
    pub summary: Summary,
    /// SLO gates.
    pub slos: Vec<SloResult>,
    /// Findings, worst first.
    pub verdicts: Vec<Verdict>,
    /// Client-side validity.
    pub validity: Validity,
    /// Latency trends (single-level runs).
    pub drift: Vec<Drift>,
    /// Memory series.
    pub memory: Vec<MemoryTrend>,
    /// Starvation.
    pub starvation: Starvation,
    /// Ramp / step capacity.
    pub capacity: Option<Capacity>,
    /// Spike recovery.
    pub spike: Option<SpikeRecovery>,
    /// Replicas needed (`--production`).
    pub capacity_plan: Option<CapacityPlan>,
    /// Replay vs production (`--production`).
    pub production: Option<ProductionComparison>,
    /// Against `--baseline`.
    pub baseline: Option<BaselineComparison>,
    /// Per-window numbers.
    pub windows: Vec<WindowStats>,
}

// ---------------------------------------------------------------------------------------
// formatting helpers

/// `1.23 s`, `45.6 ms`, `800 µs`.
pub(crate) fn fmt_us(us: f64) -> String {
    let a = us.abs();
    if a >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if a >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// `hh:mm:ss` since the start.
pub(crate) fn fmt_offset(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// `2026-11-30 19:45:00Z`.
pub(crate) fn fmt_utc(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

fn fmt_p(p: f64) -> String {
    if p < 1e-6 {
        "< 1e-6".to_string()
    } else {
        format!("= {p:.1e}")
    }
}

fn fmt_pct(f: f64) -> String {
    if f.abs() < 0.01 {
        format!("{:.2}%", f * 100.0)
    } else {
        format!("{:.1}%", f * 100.0)
    }
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn latency_hist(agg: &Agg, m: LatencyMetric) -> &Histogram<u64> {
    match m {
        LatencyMetric::Ttft => &agg.ttft,
        LatencyMetric::Tpot => &agg.tpot,
        LatencyMetric::Itl => &agg.itl,
        LatencyMetric::E2e => &agg.e2e,
    }
}

fn level_hist(l: &Level, m: LatencyMetric) -> &Histogram<u64> {
    match m {
        LatencyMetric::Ttft => &l.ttft,
        LatencyMetric::Tpot => &l.tpot,
        LatencyMetric::Itl => &l.itl,
        LatencyMetric::E2e => &l.e2e,
    }
}

fn quantile(h: &Histogram<u64>, percentile: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(percentile / 100.0) as f64)
}

fn server_error_rate(errors: &[u64; 6], requests: u64) -> f64 {
    let cancelled = errors[CANCELLED];
    let denom = requests.saturating_sub(cancelled);
    let errs: u64 = errors.iter().sum::<u64>() - cancelled;
    if denom == 0 {
        0.0
    } else {
        errs as f64 / denom as f64
    }
}

fn errors_map(errors: &[u64; 6]) -> BTreeMap<String, u64> {
    ERROR_KINDS
        .iter()
        .zip(errors)
        .filter(|(_, &n)| n > 0)
        .map(|(k, &n)| (k.as_str().to_string(), n))
        .collect()
}

fn series_name(key: &crate::agg::SeriesKey) -> String {
    if key.1.is_empty() {
        format!("{} ({})", key.0, key.2)
    } else {
        format!("{}{{{}}} ({})", key.0, key.1, key.2)
    }
}

// ---------------------------------------------------------------------------------------
// building

/// Production traffic aggregated for the comparison and the capacity plan.
#[derive(Debug)]
pub(crate) struct ProductionAgg {
    pub requests: u64,
    pub first_us: i64,
    pub last_us: i64,
    pub per_second: BTreeMap<i64, u32>,
    pub prompt: Histogram<u64>,
    pub output: Histogram<u64>,
    pub ttft: Histogram<u64>,
    pub e2e: Histogram<u64>,
}

impl ProductionAgg {
    pub(crate) fn new() -> ProductionAgg {
        ProductionAgg {
            requests: 0,
            first_us: i64::MAX,
            last_us: i64::MIN,
            per_second: BTreeMap::new(),
            prompt: crate::agg::run_hist(),
            output: crate::agg::run_hist(),
            ttft: crate::agg::run_hist(),
            e2e: crate::agg::run_hist(),
        }
    }

    pub(crate) fn push(&mut self, r: &crate::ingest::ProductionRow) {
        self.requests += 1;
        self.first_us = self.first_us.min(r.arrival_us);
        self.last_us = self.last_us.max(r.arrival_us);
        *self
            .per_second
            .entry(r.arrival_us.div_euclid(1_000_000))
            .or_default() += 1;
        if let Some(p) = r.prompt_tokens {
            let _ = self.prompt.record(u64::from(p).max(1));
        }
        if r.ok {
            if let Some(o) = r.output_tokens {
                let _ = self.output.record(u64::from(o).max(1));
            }
            if let Some(v) = r.ttft_us {
                let _ = self.ttft.record(v.max(1));
            }
            if let Some(v) = r.e2e_us {
                let _ = self.e2e.record(v.max(1));
            }
        }
    }
}

fn per_second_profile(counts: &[u32]) -> (f64, f64) {
    // (busiest minute in req/s, CV of per-second counts)
    if counts.is_empty() {
        return (0.0, 0.0);
    }
    let mut peak = 0u64;
    let mut run: u64 = 0;
    for (i, &c) in counts.iter().enumerate() {
        run += u64::from(c);
        if i >= 60 {
            run -= u64::from(counts[i - 60]);
        }
        peak = peak.max(run);
    }
    let span = counts.len().min(60) as f64;
    let n = counts.len() as f64;
    let mean = counts.iter().map(|&c| f64::from(c)).sum::<f64>() / n;
    let var = counts
        .iter()
        .map(|&c| (f64::from(c) - mean).powi(2))
        .sum::<f64>()
        / n;
    let cv = if mean > 0.0 { var.sqrt() / mean } else { 0.0 };
    (peak as f64 / span, cv)
}

fn quantiles4(h: &Histogram<u64>) -> [f64; 4] {
    if h.is_empty() {
        return [0.0; 4];
    }
    [0.1, 0.5, 0.9, 0.99].map(|q| h.value_at_quantile(q) as f64)
}

fn quantiles99(h: &Histogram<u64>) -> Vec<f64> {
    if h.is_empty() {
        return Vec::new();
    }
    (1..=99)
        .map(|p| h.value_at_quantile(f64::from(p) / 100.0) as f64)
        .collect()
}

fn profile(
    requests: u64,
    span_us: i64,
    counts: &[u32],
    prompt: &Histogram<u64>,
    output: &Histogram<u64>,
    ttft: &Histogram<u64>,
    e2e: &Histogram<u64>,
) -> TrafficProfile {
    let duration_s = (span_us as f64 / 1e6).max(1.0);
    let (peak_rps, burstiness_cv) = per_second_profile(counts);
    TrafficProfile {
        requests,
        duration_s,
        mean_rps: requests as f64 / duration_s,
        peak_rps,
        burstiness_cv,
        prompt_tokens: quantiles4(prompt),
        output_tokens: quantiles4(output),
        ttft: Percentiles::of(ttft),
        e2e: Percentiles::of(e2e),
        prompt_quantiles: quantiles99(prompt),
        output_quantiles: quantiles99(output),
    }
}

/// Everything needed to build a report.
pub(crate) struct Inputs<'a> {
    pub config: &'a AnalyzeConfig,
    pub agg: &'a Agg,
    pub inputs: Vec<String>,
    pub production: Option<&'a ProductionAgg>,
    pub baseline: Option<Report>,
}

pub(crate) fn build(input: Inputs<'_>) -> Report {
    let Inputs {
        config,
        agg,
        inputs,
        production,
        baseline,
    } = input;
    let start_us = agg.start_us();
    let window_s = agg.window_us as f64 / 1e6;
    let summary = summary(agg);
    let windows = windows(agg, start_us, window_s);
    let memory = memory(agg, config, start_us);
    let single_level = agg.levels.len() <= 1;
    let drift = if single_level {
        drift(agg, start_us)
    } else {
        Vec::new()
    };
    let starvation = starvation(agg, &windows, config.starvation_ratio);
    let validity = validity(agg, &summary);
    let slos = evaluate_slos(&config.slos, agg, &summary, &memory);
    let is_spike = agg
        .levels
        .iter()
        .any(|l| l.phase.as_deref().is_some_and(|p| p.contains("spike")));
    let latency_slos: Vec<SloSpec> = {
        let mut s: Vec<SloSpec> = config
            .slos
            .iter()
            .filter(|s| matches!(s.metric, SloMetric::Latency { .. } | SloMetric::ErrorRate))
            .cloned()
            .collect();
        if s.is_empty() {
            s = crate::slo::seed_slos()
                .into_iter()
                .filter(|s| matches!(s.metric, SloMetric::Latency { .. } | SloMetric::ErrorRate))
                .collect();
        }
        s
    };
    let capacity = (!single_level && !is_spike).then(|| capacity(agg, &latency_slos));
    let spike = if is_spike {
        spike(agg, &latency_slos)
    } else {
        None
    };
    let production_cmp = production.map(|p| compare_production(agg, p));
    let capacity_plan = production.map(|p| {
        let all_pass = slos.iter().all(|s| s.pass);
        plan(p, config.growth, capacity.as_ref(), &summary, all_pass)
    });
    let baseline = baseline.map(|b| compare_baseline(&summary, &memory, &b));
    let mut report = Report {
        schema_version: REPORT_SCHEMA_VERSION.to_string(),
        inputs,
        latency_basis: if config.from_intended {
            "intended_send".into()
        } else {
            "actual_send".into()
        },
        window_s,
        summary,
        slos,
        verdicts: Vec::new(),
        validity,
        drift,
        memory,
        starvation,
        capacity,
        spike,
        capacity_plan,
        production: production_cmp,
        baseline,
        windows,
    };
    report.verdicts = verdicts(&report, config);
    report
}

fn summary(agg: &Agg) -> Summary {
    let span_s = if agg.requests > 0 {
        ((agg.last_send_us - agg.first_send_us) as f64 / 1e6).max(1e-3)
    } else {
        0.0
    };
    let per_s = |n: u64| if span_s > 0.0 { n as f64 / span_s } else { 0.0 };
    let preemptions = (agg.preemptions.n > 0).then_some(agg.preemptions.max - agg.preemptions.min);
    Summary {
        requests: agg.requests,
        ok: agg.ok,
        errors: agg.errors.iter().sum(),
        error_rate: server_error_rate(&agg.errors, agg.requests),
        errors_by_kind: errors_map(&agg.errors),
        start_us: agg.start_us(),
        end_us: if agg.requests > 0 {
            agg.last_send_us
        } else {
            agg.start_us()
        },
        duration_s: span_s,
        requests_per_s: per_s(agg.requests),
        completed_per_s: per_s(agg.ok),
        input_tokens_per_s: per_s(agg.prompt_tokens_total),
        output_tokens_per_s: per_s(agg.output_tokens_total),
        ttft: Percentiles::of(&agg.ttft),
        tpot: Percentiles::of(&agg.tpot),
        itl: Percentiles::of(&agg.itl),
        e2e: Percentiles::of(&agg.e2e),
        lateness: Percentiles::of(&agg.lateness),
        in_flight: Percentiles::of(&agg.in_flight),
        queue_depth: Percentiles::of(&agg.queue_depth),
        kv_cache_peak: agg.kv_peak,
        preemptions,
        samples: agg.samples,
    }
}

fn windows(agg: &Agg, start_us: i64, window_s: f64) -> Vec<WindowStats> {
    let mem_keys: Vec<(&crate::agg::SeriesKey, String)> =
        agg.memory.keys().map(|k| (k, series_name(k))).collect();
    agg.windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let ws = agg.window_start_us(i);
            let ttft = Percentiles::of_opt(&w.ttft);
            let idx = agg.base + i as i64;
            WindowStats {
                start_us: ws,
                offset_s: (ws - start_us) as f64 / 1e6,
                requests: w.requests,
                requests_per_s: w.requests as f64 / window_s,
                input_tokens_per_s: w.prompt_tokens as f64 / window_s,
                output_tokens_per_s: w.output_tokens as f64 / window_s,
                error_rate: server_error_rate(&w.errors, w.requests),
                errors_by_kind: errors_map(&w.errors),
                ttft_p99_over_p50: ttft.and_then(|p| ratio(p.p99, p.p50)),
                ttft,
                tpot: Percentiles::of_opt(&w.tpot),
                itl: Percentiles::of_opt(&w.itl),
                e2e: Percentiles::of_opt(&w.e2e),
                in_flight_mean: (w.requests > 0)
                    .then(|| w.in_flight_sum as f64 / w.requests as f64),
                lateness_max_us: w.lateness_max_us,
                queue_depth_mean: w.queue.mean(),
                queue_depth_max: (w.queue.n > 0).then_some(w.queue.max),
                running_mean: w.running.mean(),
                kv_cache_mean: w.kv.mean(),
                kv_cache_max: (w.kv.n > 0).then_some(w.kv.max),
                memory_bytes: mem_keys
                    .iter()
                    .filter_map(|(k, name)| {
                        agg.memory
                            .get(*k)
                            .and_then(|m| m.get(&idx))
                            .and_then(|a| a.mean())
                            .map(|v| (name.clone(), v))
                    })
                    .collect(),
            }
        })
        .collect()
}

fn memory(agg: &Agg, config: &AnalyzeConfig, start_us: i64) -> Vec<MemoryTrend> {
    let hours_run = (agg.last_send_us - agg.first_send_us) as f64 / US_PER_HOUR;
    let mut out = Vec::new();
    for (key, series) in &agg.memory {
        let mut xs = Vec::with_capacity(series.len());
        let mut ys = Vec::with_capacity(series.len());
        for (&idx, acc) in series {
            if let Some(m) = acc.mean() {
                // Window middle, hours since start.
                let mid = idx * agg.window_us + agg.window_us / 2;
                xs.push((mid - start_us) as f64 / US_PER_HOUR);
                ys.push(m / MB);
            }
        }
        let (xs, ys) = stats::thin(&xs, &ys);
        // Growth must exceed 1% of the level over the run to matter (noise on a GB-sized
        // process is easily significant but irrelevant).
        let Some(g) = stats::growth(&xs, &ys, 0.01) else {
            continue;
        };
        let (lo, hi) = g.fit.slope_ci95();
        let leak = g.shape == GrowthShape::Linear;
        let end_mb = *ys.last().unwrap_or(&0.0);
        let hours_to_limit = config.memory_limit_bytes.and_then(|limit| {
            let slope = g.recent.slope;
            let limit_mb = limit as f64 / MB;
            (leak && slope > 0.0).then(|| ((limit_mb - end_mb) / slope).max(0.0))
        });
        let requests_per_hour = if hours_run > 0.0 {
            agg.requests as f64 / hours_run
        } else {
            0.0
        };
        out.push(MemoryTrend {
            series: series_name(key),
            shape: g.shape,
            slope_mb_per_hour: g.fit.slope,
            ci95_mb_per_hour: [lo, hi],
            mb_per_1000_requests: (requests_per_hour > 0.0)
                .then(|| g.fit.slope / requests_per_hour * 1000.0),
            first_half_mb_per_hour: g.first_half_slope,
            second_half_mb_per_hour: g.second_half_slope,
            start_mb: ys.first().copied().unwrap_or(0.0),
            end_mb,
            hours_to_limit,
            leak,
            fit_intercept_mb: g.fit.intercept,
        });
    }
    out
}

fn drift(agg: &Agg, start_us: i64) -> Vec<Drift> {
    let mut out = Vec::new();
    let pick = [("ttft", 0usize), ("tpot", 1), ("e2e", 2)];
    for (name, which) in pick {
        for (pname, q) in [("p50", 0.5), ("p99", 0.99)] {
            let mut xs = Vec::new();
            let mut ys = Vec::new();
            let mut starts = Vec::new();
            for (i, w) in agg.windows.iter().enumerate() {
                if w.ok < MIN_WINDOW_REQUESTS {
                    continue;
                }
                let h = match which {
                    0 => &w.ttft,
                    1 => &w.tpot,
                    _ => &w.e2e,
                };
                if let Some(h) = h {
                    let ws = agg.window_start_us(i);
                    xs.push((ws - start_us) as f64 / US_PER_HOUR);
                    ys.push(h.value_at_quantile(q) as f64);
                    starts.push(ws);
                }
            }
            if xs.len() < 6 {
                continue;
            }
            let (tx, ty) = stats::thin(&xs, &ys);
            let (Some(slope), Some(mk)) = (stats::theil_sen(&tx, &ty), stats::mann_kendall(&ty))
            else {
                continue;
            };
            let median_us = stats::median(&ys);
            let span_h = xs[xs.len() - 1] - xs[0];
            let change_over_run = if median_us > 0.0 {
                slope * span_h / median_us
            } else {
                0.0
            };
            let step = stats::cusum_change_point(&ys, 0.1).map(|cp| {
                let at = starts[cp.index];
                Step {
                    at_us: at,
                    offset_s: (at - start_us) as f64 / 1e6,
                    before_us: cp.before,
                    after_us: cp.after,
                }
            });
            out.push(Drift {
                metric: format!("{name}_{pname}"),
                slope_us_per_hour: slope,
                p_value: mk.p_value,
                median_us,
                change_over_run,
                significant: mk.p_value < 0.01 && change_over_run.abs() >= 0.1,
                step,
                windows: xs.len(),
            });
        }
    }
    out
}

fn merge_bins(agg: &Agg, lo_bin: usize, hi_bin: usize) -> Option<Histogram<u64>> {
    let mut merged: Option<Histogram<u64>> = None;
    for h in agg.prompt_ttft[lo_bin..hi_bin].iter().flatten() {
        match &mut merged {
            None => merged = Some(h.clone()),
            Some(m) => {
                let _ = m.add(h);
            }
        }
    }
    merged
}

fn starvation(agg: &Agg, windows: &[WindowStats], threshold: f64) -> Starvation {
    let overall_ratio = Percentiles::of(&agg.ttft).and_then(|p| ratio(p.p99, p.p50));
    let judged: Vec<f64> = windows
        .iter()
        .filter(|w| w.requests >= MIN_WINDOW_REQUESTS)
        .filter_map(|w| w.ttft_p99_over_p50)
        .collect();
    let windows_flagged = judged.iter().filter(|&&r| r > threshold).count();
    let worst_window_ratio = judged
        .iter()
        .copied()
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    // Terciles of prompt length, mapped onto prompt bins.
    let mut classes = Vec::new();
    if !agg.prompt_tokens.is_empty() {
        let q1 = agg.prompt_tokens.value_at_quantile(1.0 / 3.0) as f64;
        let q2 = agg.prompt_tokens.value_at_quantile(2.0 / 3.0) as f64;
        let b1 = crate::agg::prompt_bin(q1 as u32);
        let b2 = crate::agg::prompt_bin(q2 as u32);
        let bounds = if b1 < b2 {
            vec![
                ("short", 0, b1 + 1),
                ("medium", b1 + 1, b2 + 1),
                ("long", b2 + 1, PROMPT_BINS),
            ]
        } else {
            vec![("short", 0, b1 + 1), ("long", b1 + 1, PROMPT_BINS)]
        };
        for (name, lo, hi) in bounds {
            if lo >= hi {
                continue;
            }
            if let Some(h) = merge_bins(agg, lo, hi) {
                let p50 = h.value_at_quantile(0.5) as f64;
                let p99 = h.value_at_quantile(0.99) as f64;
                classes.push(PromptClass {
                    name: name.into(),
                    min_tokens: prompt_bin_low(lo),
                    requests: h.len(),
                    ttft_p50_us: p50,
                    ttft_p99_us: p99,
                    ratio: ratio(p99, p50).unwrap_or(0.0),
                });
            }
        }
    }
    // Judge per window where there are enough windows: a whole-run ratio mixes windows
    // of different load (a ramp) and would call overload starvation.
    let flagged = if judged.len() >= 6 {
        windows_flagged * 10 >= judged.len()
    } else {
        overall_ratio.is_some_and(|r| r > threshold)
    };
    Starvation {
        ratio_threshold: threshold,
        overall_ratio,
        windows_flagged,
        windows_judged: judged.len(),
        worst_window_ratio,
        classes,
        flagged,
    }
}

fn validity(agg: &Agg, summary: &Summary) -> Validity {
    let lateness_p99_us = summary.lateness.map(|p| p.p99);
    let client_errors = agg.client_side_errors;
    let client_error_rate = if agg.requests > 0 {
        client_errors as f64 / agg.requests as f64
    } else {
        0.0
    };
    let mut reasons = Vec::new();
    if let Some(l) = lateness_p99_us.filter(|&l| l > 10_000.0) {
        reasons.push(format!(
            "p99 send lateness is {} (> 10 ms): the load generator fell behind its schedule",
            fmt_us(l)
        ));
    }
    if client_error_rate > 0.01 {
        reasons.push(format!(
            "{} of requests failed on the client side (cancelled, out of sockets/ports, other)",
            fmt_pct(client_error_rate)
        ));
    }
    Validity {
        client_limited: !reasons.is_empty(),
        lateness_p99_us,
        client_errors,
        client_error_rate,
        reasons,
    }
}

fn observed(spec: &SloSpec, agg: &Agg, summary: &Summary, memory: &[MemoryTrend]) -> Option<f64> {
    match spec.metric {
        SloMetric::Latency { metric, percentile } => {
            quantile(latency_hist(agg, metric), percentile)
        }
        SloMetric::ErrorRate => (summary.requests > 0).then_some(summary.error_rate),
        SloMetric::QueueDepth { percentile } => quantile(&agg.queue_depth, percentile),
        SloMetric::KvCachePeak => agg.kv_peak,
        SloMetric::RssGrowthMbPerHour => memory
            .iter()
            .map(|m| m.slope_mb_per_hour)
            .fold(None, |a: Option<f64>, s| Some(a.map_or(s, |a| a.max(s)))),
        SloMetric::ThroughputRps => (summary.requests > 0).then_some(summary.completed_per_s),
    }
}

fn evaluate_slos(
    specs: &[SloSpec],
    agg: &Agg,
    summary: &Summary,
    memory: &[MemoryTrend],
) -> Vec<SloResult> {
    specs
        .iter()
        .map(|spec| {
            let observed = observed(spec, agg, summary, memory);
            let pass = match observed {
                Some(v) => spec.passes(v),
                None => spec.from_seed,
            };
            SloResult {
                spec: spec.clone(),
                observed,
                pass,
            }
        })
        .collect()
}

fn fmt_slo_value(spec: &SloSpec, v: f64) -> String {
    match spec.metric {
        SloMetric::Latency { .. } => fmt_us(v),
        SloMetric::ErrorRate | SloMetric::KvCachePeak => fmt_pct(v),
        SloMetric::QueueDepth { .. } => format!("{v:.0}"),
        SloMetric::RssGrowthMbPerHour => format!("{v:.1} MiB/hour"),
        SloMetric::ThroughputRps => format!("{v:.2} req/s"),
    }
}

fn level_failures(l: &Level, slos: &[SloSpec]) -> Vec<String> {
    let mut failed = Vec::new();
    for s in slos {
        let v = match s.metric {
            SloMetric::Latency { metric, percentile } => {
                quantile(level_hist(l, metric), percentile)
            }
            SloMetric::ErrorRate => Some(server_error_rate(&l.errors, l.requests)),
            _ => None,
        };
        if let Some(v) = v {
            if !s.passes(v) {
                failed.push(format!("{} = {}", s.name, fmt_slo_value(s, v)));
            }
        }
    }
    failed
}

/// Samples of the windows that fall within [from, to] (µs).
fn window_samples(
    agg: &Agg,
    from: i64,
    to: i64,
) -> (Option<f64>, Option<f64>, Option<f64>, Option<f64>) {
    let mut kv = crate::agg::Acc::default();
    let mut queue = crate::agg::Acc::default();
    let mut running = crate::agg::Acc::default();
    let mut pre = crate::agg::Acc::default();
    for (i, w) in agg.windows.iter().enumerate() {
        let ws = agg.window_start_us(i);
        let we = ws + agg.window_us;
        if we <= from || ws > to {
            continue;
        }
        kv.merge(&w.kv);
        queue.merge(&w.queue);
        running.merge(&w.running);
        pre.merge(&w.preemptions);
    }
    (
        (kv.n > 0).then_some(kv.max),
        queue.mean(),
        (running.n > 0).then_some(running.max),
        (pre.n > 0).then_some(pre.max - pre.min),
    )
}

fn level_stats(agg: &Agg, l: &Level, slos: &[SloSpec]) -> LevelStats {
    let send_span = ((l.last_send_us - l.first_send_us) as f64 / 1e6).max(1e-3);
    let done_span = ((l.last_end_us.max(l.last_send_us) - l.first_send_us) as f64 / 1e6).max(1e-3);
    let (kv, queue, running, pre) = window_samples(agg, l.first_send_us, l.last_send_us);
    LevelStats {
        phase: l.phase.clone(),
        load_level: l.load_level,
        requests: l.requests,
        offered_rps: l.requests as f64 / send_span,
        achieved_rps: l.ok as f64 / done_span,
        output_tokens_per_s: l.output_tokens as f64 / done_span,
        concurrency: if l.requests > 0 {
            l.in_flight_sum as f64 / l.requests as f64
        } else {
            0.0
        },
        error_rate: server_error_rate(&l.errors, l.requests),
        ttft: Percentiles::of(&l.ttft),
        tpot: Percentiles::of(&l.tpot),
        e2e: Percentiles::of(&l.e2e),
        kv_cache_peak: kv,
        queue_depth_mean: queue,
        running_max: running,
        preemptions: pre,
        failed_slos: level_failures(l, slos),
        start_us: l.first_send_us,
        end_us: l.last_send_us,
    }
}

fn capacity(agg: &Agg, slos: &[SloSpec]) -> Capacity {
    let mut order: Vec<&Level> = agg.levels.iter().filter(|l| l.requests > 0).collect();
    order.sort_by_key(|l| l.first_send_us);
    let levels: Vec<LevelStats> = order.iter().map(|l| level_stats(agg, l, slos)).collect();
    let cliff = levels.iter().position(|l| !l.failed_slos.is_empty());
    let saturation = (1..levels.len()).find(|&i| {
        let (a, b) = (&levels[i - 1], &levels[i]);
        b.offered_rps > 1.1 * a.offered_rps && b.achieved_rps < 1.05 * a.achieved_rps
    });
    // Judge the bottleneck where the trouble starts.
    let at = saturation.or(cliff);
    let (bottleneck, bottleneck_evidence) = match at {
        None => (None, "no level saturated or broke an SLO".to_string()),
        Some(i) => {
            let l = &levels[i];
            let prev = i.checked_sub(1).map(|p| &levels[p]);
            let kv = l.kv_cache_peak;
            let queue_grows = match (prev.and_then(|p| p.queue_depth_mean), l.queue_depth_mean) {
                (Some(a), Some(b)) => b > a * 1.5 + 1.0,
                (None, Some(b)) => b > 1.0,
                _ => false,
            };
            let running_capped = match (prev.and_then(|p| p.running_max), l.running_max) {
                (Some(a), Some(b)) => (b - a).abs() < 0.5 && b > 0.0,
                _ => false,
            };
            if kv.is_some_and(|k| k >= 0.95) || l.preemptions.is_some_and(|p| p > 0.0) {
                (
                    Some("memory".to_string()),
                    format!(
                        "KV cache peaked at {}{} at load {}",
                        kv.map(fmt_pct).unwrap_or_else(|| "?".into()),
                        l.preemptions
                            .filter(|&p| p > 0.0)
                            .map(|p| format!(" with {p:.0} preemptions"))
                            .unwrap_or_default(),
                        l.load_level
                    ),
                )
            } else if queue_grows && running_capped && kv.is_none_or(|k| k < 0.8) {
                (
                    Some("queue".to_string()),
                    format!(
                        "running requests stay capped at {:.0} while the queue grows to {:.1} on average and KV is only {}",
                        l.running_max.unwrap_or(0.0),
                        l.queue_depth_mean.unwrap_or(0.0),
                        kv.map(fmt_pct).unwrap_or_else(|| "unknown".into())
                    ),
                )
            } else if saturation.is_some() && kv.is_none_or(|k| k < 0.8) {
                (
                    Some("compute".to_string()),
                    format!(
                        "output tokens/s flat ({:.0} → {:.0}) with KV cache {}",
                        prev.map_or(0.0, |p| p.output_tokens_per_s),
                        l.output_tokens_per_s,
                        kv.map(|k| format!("at {}", fmt_pct(k)))
                            .unwrap_or_else(|| "not sampled".into())
                    ),
                )
            } else if queue_grows {
                (
                    Some("queue".to_string()),
                    format!(
                        "the queue grows to {:.1} on average",
                        l.queue_depth_mean.unwrap_or(0.0)
                    ),
                )
            } else {
                (None, "the samples do not single out a resource".to_string())
            }
        }
    };
    let slo_names = slos
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let last_ok = match cliff {
        Some(0) => None,
        Some(i) => Some(i - 1),
        None => levels.len().checked_sub(1),
    };
    let supported_concurrency = last_ok.map(|i| levels[i].concurrency);
    let supported_rps = last_ok.map(|i| levels[i].achieved_rps);
    let sentence = match (cliff, last_ok) {
        (Some(0), _) => format!(
            "Fails the SLO ({slo_names}) already at the lowest load tested ({}: {}).",
            levels[0].load_level,
            levels[0].failed_slos.join(", ")
        ),
        (Some(c), Some(ok)) => format!(
            "Supports {:.0} concurrent users ({:.2} req/s) at the SLO ({slo_names}); breaks at load {} ({:.0} concurrent, {:.2} req/s offered): {}.",
            levels[ok].concurrency,
            levels[ok].achieved_rps,
            levels[c].load_level,
            levels[c].concurrency,
            levels[c].offered_rps,
            levels[c].failed_slos.join(", ")
        ),
        (None, Some(ok)) => format!(
            "Holds the SLO ({slo_names}) at every load tested, up to {:.0} concurrent users ({:.2} req/s); the cliff lies beyond.",
            levels[ok].concurrency, levels[ok].achieved_rps
        ),
        _ => "No load levels to judge.".to_string(),
    };
    Capacity {
        levels,
        cliff,
        saturation,
        bottleneck,
        bottleneck_evidence,
        supported_concurrency,
        supported_rps,
        sentence,
    }
}

fn spike(agg: &Agg, slos: &[SloSpec]) -> Option<SpikeRecovery> {
    let spikes: Vec<&Level> = agg
        .levels
        .iter()
        .filter(|l| l.phase.as_deref().is_some_and(|p| p.contains("spike")) && l.requests > 0)
        .collect();
    let start_us = spikes.iter().map(|l| l.first_send_us).min()?;
    let end_us = spikes.iter().map(|l| l.last_send_us).max()?;
    let mut errors = [0u64; 6];
    let mut requests = 0;
    let mut ttft = crate::agg::run_hist();
    for l in &spikes {
        requests += l.requests;
        for (e, n) in errors.iter_mut().zip(l.errors) {
            *e += n;
        }
        let _ = ttft.add(&l.ttft);
    }
    // The bar: the TTFT p95 SLO if there is one, else 1.5× the pre-spike p95.
    let slo = slos.iter().find(|s| {
        matches!(
            s.metric,
            SloMetric::Latency {
                metric: LatencyMetric::Ttft,
                ..
            }
        )
    });
    let (threshold_us, q) = match slo {
        Some(s) => match s.metric {
            SloMetric::Latency { percentile, .. } => (s.threshold, percentile / 100.0),
            _ => (s.threshold, 0.95),
        },
        None => {
            let mut before = crate::agg::run_hist();
            for l in agg.levels.iter().filter(|l| l.last_send_us < start_us) {
                let _ = before.add(&l.ttft);
            }
            if before.is_empty() {
                return None;
            }
            (before.value_at_quantile(0.95) as f64 * 1.5, 0.95)
        }
    };
    let windows_after: Vec<(i64, bool)> = agg
        .windows
        .iter()
        .enumerate()
        .filter(|(i, _)| agg.window_start_us(*i) + agg.window_us > end_us)
        .filter(|(_, w)| w.requests >= 5)
        .map(|(i, w)| {
            let ok = w
                .ttft
                .as_ref()
                .is_none_or(|h| h.value_at_quantile(q) as f64 <= threshold_us)
                && server_error_rate(&w.errors, w.requests) <= 0.01;
            (agg.window_start_us(i), ok)
        })
        .collect();
    let recovered_after_s = {
        // First window after which every window holds.
        let mut first_good: Option<i64> = None;
        for &(ws, ok) in &windows_after {
            if ok {
                first_good.get_or_insert(ws);
            } else {
                first_good = None;
            }
        }
        first_good.map(|ws| ((ws - end_us) as f64 / 1e6).max(0.0))
    };
    Some(SpikeRecovery {
        start_us,
        end_us,
        requests,
        errors: errors.iter().sum::<u64>() - errors[CANCELLED],
        ttft_p95_us: quantile(&ttft, 95.0),
        threshold_us,
        recovered_after_s,
    })
}

fn compare_production(agg: &Agg, p: &ProductionAgg) -> ProductionComparison {
    let prod_counts: Vec<u32> = match (p.per_second.keys().next(), p.per_second.keys().last()) {
        (Some(&a), Some(&b)) => (a..=b)
            .map(|s| p.per_second.get(&s).copied().unwrap_or(0))
            .collect(),
        _ => Vec::new(),
    };
    let production = profile(
        p.requests,
        p.last_us - p.first_us,
        &prod_counts,
        &p.prompt,
        &p.output,
        &p.ttft,
        &p.e2e,
    );
    let replay = profile(
        agg.requests,
        agg.last_send_us - agg.first_send_us,
        &agg.per_second,
        &agg.prompt_tokens,
        &agg.output_tokens,
        &agg.ttft,
        &agg.e2e,
    );
    let mut differences = Vec::new();
    let mut diff = |what: &str, prod: f64, rep: f64, fmt: &dyn Fn(f64) -> String| {
        if prod > 0.0 && ((rep / prod) - 1.0).abs() > 0.2 {
            differences.push(format!(
                "{what}: replay {} vs production {} ({:+.0}%)",
                fmt(rep),
                fmt(prod),
                (rep / prod - 1.0) * 100.0
            ));
        }
    };
    let num = |v: f64| format!("{v:.2}");
    let tok = |v: f64| format!("{v:.0} tokens");
    diff("mean rate", production.mean_rps, replay.mean_rps, &|v| {
        format!("{v:.2} req/s")
    });
    diff(
        "peak-minute rate",
        production.peak_rps,
        replay.peak_rps,
        &|v| format!("{v:.2} req/s"),
    );
    diff(
        "burstiness (CV of per-second arrivals)",
        production.burstiness_cv,
        replay.burstiness_cv,
        &num,
    );
    diff(
        "prompt p50",
        production.prompt_tokens[1],
        replay.prompt_tokens[1],
        &tok,
    );
    diff(
        "prompt p99",
        production.prompt_tokens[3],
        replay.prompt_tokens[3],
        &tok,
    );
    diff(
        "output p50",
        production.output_tokens[1],
        replay.output_tokens[1],
        &tok,
    );
    diff(
        "output p99",
        production.output_tokens[3],
        replay.output_tokens[3],
        &tok,
    );
    if let (Some(a), Some(b)) = (production.ttft, replay.ttft) {
        diff("TTFT p50", a.p50, b.p50, &fmt_us);
        diff("TTFT p99", a.p99, b.p99, &fmt_us);
    }
    if let (Some(a), Some(b)) = (production.e2e, replay.e2e) {
        diff("E2E p99", a.p99, b.p99, &fmt_us);
    }
    ProductionComparison {
        production,
        replay,
        differences,
    }
}

fn plan(
    p: &ProductionAgg,
    growth: f64,
    capacity: Option<&Capacity>,
    summary: &Summary,
    all_pass: bool,
) -> CapacityPlan {
    let counts: Vec<u32> = match (p.per_second.keys().next(), p.per_second.keys().last()) {
        (Some(&a), Some(&b)) => (a..=b)
            .map(|s| p.per_second.get(&s).copied().unwrap_or(0))
            .collect(),
        _ => Vec::new(),
    };
    let (peak, _) = per_second_profile(&counts);
    let target = peak * growth;
    let (cap, source) = match capacity.and_then(|c| c.supported_rps) {
        Some(r) => (Some(r), "the highest load level that met the SLO".to_string()),
        None if capacity.is_none() && all_pass && summary.completed_per_s > 0.0 => (
            Some(summary.completed_per_s),
            "this run's throughput, which met every SLO (a lower bound: run a ramp to find the real limit)".to_string(),
        ),
        None => (None, "no load level met the SLO".to_string()),
    };
    CapacityPlan {
        production_peak_rps: peak,
        growth,
        target_rps: target,
        replica_capacity_rps: cap,
        capacity_source: source,
        replicas: cap
            .filter(|&c| c > 0.0)
            .map(|c| (target / c).ceil().max(1.0) as u64),
    }
}

fn compare_baseline(summary: &Summary, memory: &[MemoryTrend], b: &Report) -> BaselineComparison {
    let mem_max = |m: &[MemoryTrend]| {
        m.iter()
            .map(|t| t.slope_mb_per_hour)
            .fold(None, |a: Option<f64>, s| Some(a.map_or(s, |a| a.max(s))))
    };
    type Getter = fn(&Summary) -> Option<f64>;
    let rows: [(&str, Getter, bool); 13] = [
        ("requests_per_s", |s| Some(s.requests_per_s), false),
        (
            "output_tokens_per_s",
            |s| Some(s.output_tokens_per_s),
            false,
        ),
        ("error_rate", |s| Some(s.error_rate), true),
        ("ttft_p50_us", |s| s.ttft.map(|p| p.p50), true),
        ("ttft_p95_us", |s| s.ttft.map(|p| p.p95), true),
        ("ttft_p99_us", |s| s.ttft.map(|p| p.p99), true),
        ("tpot_p50_us", |s| s.tpot.map(|p| p.p50), true),
        ("tpot_p99_us", |s| s.tpot.map(|p| p.p99), true),
        ("itl_p50_us", |s| s.itl.map(|p| p.p50), true),
        ("e2e_p50_us", |s| s.e2e.map(|p| p.p50), true),
        ("e2e_p99_us", |s| s.e2e.map(|p| p.p99), true),
        ("queue_depth_p50", |s| s.queue_depth.map(|p| p.p50), true),
        ("kv_cache_peak", |s| s.kv_cache_peak, true),
    ];
    let mut deltas: Vec<Delta> = rows
        .iter()
        .map(|(name, get, higher_worse)| delta(name, get(summary), get(&b.summary), *higher_worse))
        .collect();
    deltas.push(delta(
        "memory_growth_mb_per_hour",
        mem_max(memory),
        mem_max(&b.memory),
        true,
    ));
    BaselineComparison {
        inputs: b.inputs.clone(),
        deltas,
    }
}

fn delta(name: &str, run: Option<f64>, base: Option<f64>, higher_worse: bool) -> Delta {
    let d = match (run, base) {
        (Some(r), Some(b)) if b.abs() > 0.0 => Some((r - b) / b.abs()),
        _ => None,
    };
    let regression = d.is_some_and(|d| if higher_worse { d > 0.1 } else { d < -0.1 })
        // Error rates from zero: any increase over 0.1 percentage points counts.
        || (name == "error_rate"
            && matches!((run, base), (Some(r), Some(b)) if b == 0.0 && r > 0.001));
    Delta {
        metric: name.to_string(),
        run,
        baseline: base,
        delta: d,
        regression,
    }
}

// ---------------------------------------------------------------------------------------
// verdicts

fn verdict(
    category: &str,
    severity: Severity,
    headline: String,
    detail: String,
    remedy: Option<&str>,
) -> Verdict {
    Verdict {
        category: category.into(),
        severity,
        headline,
        detail,
        remedy: remedy.map(str::to_string),
    }
}

fn verdicts(r: &Report, config: &AnalyzeConfig) -> Vec<Verdict> {
    let mut v = Vec::new();
    let queue_grows = queue_growing(r);
    // SLOs.
    for s in &r.slos {
        let observed = s
            .observed
            .map(|o| fmt_slo_value(&s.spec, o))
            .unwrap_or_else(|| "no data".into());
        let (sev, word) = if s.pass {
            (Severity::Pass, "met")
        } else {
            (Severity::Fail, "FAILED")
        };
        let remedy = if s.pass {
            None
        } else {
            match s.spec.metric {
                SloMetric::KvCachePeak => Some(REMEDY_KV),
                SloMetric::QueueDepth { .. } => Some(REMEDY_QUEUE),
                SloMetric::RssGrowthMbPerHour => Some(REMEDY_MEMORY),
                SloMetric::Latency { .. } if queue_grows => Some(REMEDY_QUEUE),
                _ => None,
            }
        };
        v.push(verdict(
            "slo",
            sev,
            format!("SLO {} {word}: observed {observed}", s.spec),
            String::new(),
            remedy,
        ));
    }
    // Validity.
    if r.validity.client_limited {
        v.push(verdict(
            "validity",
            Severity::Warn,
            "Run is client-limited: the numbers reflect the load generator, not the server".into(),
            r.validity.reasons.join("; "),
            Some("give the replayer more CPU (more --shards or a bigger host), raise its file-descriptor limit, or lower the load"),
        ));
    }
    // Drift.
    for d in r.drift.iter().filter(|d| d.significant || d.step.is_some()) {
        let mut headline = format!(
            "{} {}{}/hour{}",
            d.metric.replace('_', " ").to_uppercase(),
            if d.slope_us_per_hour >= 0.0 {
                "+"
            } else {
                "−"
            },
            fmt_us(d.slope_us_per_hour.abs()),
            if d.significant {
                format!(" (significant, p {})", fmt_p(d.p_value))
            } else {
                " (trend not significant)".into()
            }
        );
        if let Some(s) = &d.step {
            headline.push_str(&format!(
                ", step {} at {} ({} → {})",
                if s.after_us > s.before_us {
                    "up"
                } else {
                    "down"
                },
                fmt_offset(s.offset_s),
                fmt_us(s.before_us),
                fmt_us(s.after_us)
            ));
        }
        let worse =
            d.slope_us_per_hour > 0.0 || d.step.as_ref().is_some_and(|s| s.after_us > s.before_us);
        v.push(verdict(
            "drift",
            if worse { Severity::Warn } else { Severity::Info },
            headline,
            format!(
                "Theil–Sen slope over {} windows (median {}), {:+.0}% over the run (Mann–Kendall p {}); step found by CUSUM{}",
                d.windows,
                fmt_us(d.median_us),
                d.change_over_run * 100.0,
                fmt_p(d.p_value),
                d.step
                    .as_ref()
                    .map(|s| format!(" at {}", fmt_utc(s.at_us)))
                    .unwrap_or_else(|| ": none".into())
            ),
            if !worse {
                None
            } else if queue_grows {
                Some(REMEDY_QUEUE)
            } else if r.memory.iter().any(|m| m.leak) {
                Some(REMEDY_MEMORY)
            } else {
                Some("latency that grows under constant load points at growing state in the server: compare with its memory and queue depth, and profile it")
            },
        ));
    }
    if !r.drift.is_empty() && r.drift.iter().all(|d| !d.significant && d.step.is_none()) {
        v.push(verdict(
            "drift",
            Severity::Pass,
            format!(
                "No latency drift over {} windows",
                r.drift.iter().map(|d| d.windows).max().unwrap_or(0)
            ),
            "Per-window TTFT/TPOT/E2E p50 and p99 show no significant trend or step".into(),
            None,
        ));
    }
    // Memory.
    // On ramp, step and spike runs memory follows the load (queued requests, KV, buffers):
    // growth there is reported, not judged a leak.
    let load_varies = r.capacity.is_some() || r.spike.is_some();
    for m in &r.memory {
        if load_varies && m.shape != GrowthShape::Flat {
            v.push(verdict(
                "memory",
                Severity::Info,
                format!(
                    "{} changed {:+.0} MiB/hour ({:.0} → {:.0} MiB) while the load changed: not judged as a leak (use a soak for that)",
                    m.series, m.slope_mb_per_hour, m.start_mb, m.end_mb
                ),
                String::new(),
                None,
            ));
            continue;
        }
        let ci = format!(
            "95% CI {:.0}…{:.0} MiB/hour",
            m.ci95_mb_per_hour[0], m.ci95_mb_per_hour[1]
        );
        match m.shape {
            GrowthShape::Linear => {
                let mut headline = format!(
                    "Memory leak: {} grows {:.0} MiB/hour ({ci})",
                    m.series, m.slope_mb_per_hour
                );
                if let Some(per) = m.mb_per_1000_requests {
                    headline.push_str(&format!(", {per:.2} MiB per 1,000 requests"));
                }
                if let (Some(h), Some(limit)) = (m.hours_to_limit, config.memory_limit_bytes) {
                    headline.push_str(&format!(
                        "; reaches the {:.1} GiB limit in {h:.1} h",
                        limit as f64 / (1024.0 * MB)
                    ));
                }
                v.push(verdict(
                    "memory",
                    Severity::Warn,
                    headline,
                    format!(
                        "Linear growth: {:.0} MiB/hour in the first half, {:.0} MiB/hour in the second ({:.0} → {:.0} MiB)",
                        m.first_half_mb_per_hour, m.second_half_mb_per_hour, m.start_mb, m.end_mb
                    ),
                    Some(REMEDY_MEMORY),
                ));
            }
            GrowthShape::Plateau => v.push(verdict(
                "memory",
                Severity::Info,
                format!(
                    "{} grew then levelled off at ~{:.0} MiB: a warm-up (cache or pool filling), not a leak",
                    m.series, m.end_mb
                ),
                format!(
                    "{:.0} MiB/hour in the first half, {:.0} MiB/hour in the second ({ci} overall)",
                    m.first_half_mb_per_hour, m.second_half_mb_per_hour
                ),
                None,
            )),
            GrowthShape::Flat | GrowthShape::Shrinking => v.push(verdict(
                "memory",
                Severity::Pass,
                format!("{} is flat ({:.1} MiB/hour, {ci})", m.series, m.slope_mb_per_hour),
                format!("{:.0} → {:.0} MiB", m.start_mb, m.end_mb),
                None,
            )),
        }
    }
    // Starvation.
    let s = &r.starvation;
    if s.flagged {
        let worst_class = s.classes.iter().max_by(|a, b| a.ratio.total_cmp(&b.ratio));
        let long = s.classes.iter().find(|c| c.name == "long");
        let headline = match worst_class {
            Some(c) if c.name != "long" && long.is_some() => format!(
                "Starvation: {} prompts' p99 TTFT is {:.0}× their p50 ({} vs {}) while long prompts are in flight (long prompts: {:.1}×)",
                c.name,
                c.ratio,
                fmt_us(c.ttft_p99_us),
                fmt_us(c.ttft_p50_us),
                long.map_or(0.0, |l| l.ratio)
            ),
            Some(c) => format!(
                "Starvation: {} prompts' p99 TTFT is {:.0}× their p50 ({} vs {})",
                c.name,
                c.ratio,
                fmt_us(c.ttft_p99_us),
                fmt_us(c.ttft_p50_us)
            ),
            None => format!(
                "Starvation: TTFT p99 is {:.0}× p50",
                s.overall_ratio.unwrap_or(0.0)
            ),
        };
        v.push(verdict(
            "starvation",
            Severity::Warn,
            headline,
            format!(
                "Overall TTFT p99/p50 = {:.1} (threshold {}); {} of {} windows over the threshold (worst {:.1}). Short prompts need little prefill, so their tail is time spent queued behind others",
                s.overall_ratio.unwrap_or(0.0),
                s.ratio_threshold,
                s.windows_flagged,
                s.windows_judged,
                s.worst_window_ratio.unwrap_or(0.0)
            ),
            Some("priority scheduling for short requests (or chunked prefill, so long prompts do not block the batch)"),
        ));
    } else if s.overall_ratio.is_some() {
        v.push(verdict(
            "starvation",
            Severity::Pass,
            format!(
                "No starvation: TTFT p99/p50 = {:.1} (threshold {})",
                s.overall_ratio.unwrap_or(0.0),
                s.ratio_threshold
            ),
            String::new(),
            None,
        ));
    }
    // Capacity.
    if let Some(c) = &r.capacity {
        let remedy = match c.bottleneck.as_deref() {
            Some("memory") => Some(REMEDY_KV),
            Some("queue") => Some(REMEDY_QUEUE),
            Some("compute") => Some("add replicas, or use a faster GPU / a quantized model"),
            _ => None,
        };
        let detail = format!(
            "{}{}{}",
            c.saturation
                .map(|i| format!(
                    "Throughput stops rising at load {} ({:.2} req/s achieved). ",
                    c.levels[i].load_level, c.levels[i].achieved_rps
                ))
                .unwrap_or_default(),
            c.bottleneck
                .as_ref()
                .map(|b| format!("Bottleneck: {b}-bound — "))
                .unwrap_or_default(),
            c.bottleneck_evidence
        );
        v.push(verdict(
            "capacity",
            if c.cliff.is_some() {
                Severity::Warn
            } else {
                Severity::Info
            },
            c.sentence.clone(),
            detail,
            remedy,
        ));
    }
    // Spike.
    if let Some(sp) = &r.spike {
        let headline = match sp.recovered_after_s {
            Some(s) => format!(
                "Spike: {} errors of {} requests; latency back under {} {:.0} s after the spike",
                sp.errors,
                sp.requests,
                fmt_us(sp.threshold_us),
                s
            ),
            None => format!(
                "Spike: {} errors of {} requests; latency did not recover (under {}) before the run ended",
                sp.errors,
                sp.requests,
                fmt_us(sp.threshold_us)
            ),
        };
        v.push(verdict(
            "spike",
            if sp.recovered_after_s.is_none() || sp.errors > 0 {
                Severity::Warn
            } else {
                Severity::Info
            },
            headline,
            format!(
                "TTFT p95 during the spike: {}",
                sp.ttft_p95_us.map(fmt_us).unwrap_or_else(|| "n/a".into())
            ),
            (sp.recovered_after_s.is_none()).then_some(REMEDY_QUEUE),
        ));
    }
    // Capacity plan.
    if let Some(p) = &r.capacity_plan {
        let headline = match (p.replicas, p.replica_capacity_rps) {
            (Some(n), Some(cap)) => format!(
                "Capacity plan: {n} replica(s) — production peak {:.2} req/s × growth {} = {:.2} req/s ÷ {:.2} req/s per replica",
                p.production_peak_rps, p.growth, p.target_rps, cap
            ),
            _ => format!(
                "Capacity plan: cannot size — {} (target {:.2} req/s)",
                p.capacity_source, p.target_rps
            ),
        };
        v.push(verdict(
            "capacity_plan",
            Severity::Info,
            headline,
            format!("Per-replica capacity from {}", p.capacity_source),
            None,
        ));
    }
    // Production.
    if let Some(pc) = &r.production {
        if pc.differences.is_empty() {
            v.push(verdict(
                "production",
                Severity::Pass,
                "Replay matches production: rate, burstiness, lengths and latency within 20%"
                    .into(),
                String::new(),
                None,
            ));
        } else {
            v.push(verdict(
                "production",
                Severity::Info,
                format!(
                    "Replay differs from production in {} way(s)",
                    pc.differences.len()
                ),
                pc.differences.join("; "),
                None,
            ));
        }
    }
    // Baseline.
    if let Some(b) = &r.baseline {
        let regressions: Vec<String> = b
            .deltas
            .iter()
            .filter(|d| d.regression)
            .map(|d| match d.delta {
                Some(x) => format!("{} {:+.0}%", d.metric, x * 100.0),
                None => d.metric.clone(),
            })
            .collect();
        if regressions.is_empty() {
            v.push(verdict(
                "baseline",
                Severity::Pass,
                "No regression against the baseline (all within 10%)".into(),
                String::new(),
                None,
            ));
        } else {
            v.push(verdict(
                "baseline",
                Severity::Warn,
                format!("Regressed against the baseline: {}", regressions.join(", ")),
                String::new(),
                None,
            ));
        }
    }
    v.sort_by_key(|x| x.severity);
    v
}

fn queue_growing(r: &Report) -> bool {
    let (xs, ys): (Vec<f64>, Vec<f64>) = r
        .windows
        .iter()
        .filter_map(|w| w.queue_depth_mean.map(|q| (w.offset_s, q)))
        .unzip();
    if ys.len() < 6 {
        return false;
    }
    let Some(mk) = stats::mann_kendall(&ys) else {
        return false;
    };
    let last = ys[ys.len() * 3 / 4..].iter().sum::<f64>() / (ys.len() - ys.len() * 3 / 4) as f64;
    let first = ys[..ys.len() / 4].iter().sum::<f64>() / (ys.len() / 4).max(1) as f64;
    let _ = xs;
    mk.p_value < 0.01 && mk.z > 0.0 && last > first + 2.0
}

const REMEDY_QUEUE: &str =
    "requests queue up: raise max_num_seqs (if KV cache has room) or add replicas";
const REMEDY_KV: &str =
    "KV cache exhausted: lower max_model_len, quantize the model or the KV cache, or add replicas";
const REMEDY_MEMORY: &str = "profile the server process (heap profiler) for what keeps growing";

// ---------------------------------------------------------------------------------------
// terminal

impl Report {
    /// 0 when every SLO passes, 1 when any fails.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.slos.iter().any(|s| !s.pass))
    }

    /// The findings, worst first.
    pub fn verdicts(&self) -> &[Verdict] {
        &self.verdicts
    }

    /// The report as a JSON document (see docs/analyze.md).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    /// A plain-text summary for the terminal: verdicts first, then numbers.
    pub fn render_terminal(&self) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let s = &self.summary;
        let _ = writeln!(
            o,
            "retrace analyze — {} requests over {} ({}), {} windows of {:.0} s",
            s.requests,
            fmt_offset(s.duration_s),
            fmt_utc(s.start_us),
            self.windows.len(),
            self.window_s
        );
        let _ = writeln!(o, "\nVerdicts");
        for v in &self.verdicts {
            let mark = match v.severity {
                Severity::Fail => "✗ FAIL",
                Severity::Warn => "! WARN",
                Severity::Info => "· INFO",
                Severity::Pass => "✓ PASS",
            };
            let _ = writeln!(o, "  {mark}  {}", v.headline);
            if !v.detail.is_empty() {
                let _ = writeln!(o, "          {}", v.detail);
            }
            if let Some(r) = &v.remedy {
                let _ = writeln!(o, "          fix: {r}");
            }
        }
        let _ = writeln!(
            o,
            "\nNumbers (TTFT and E2E measured from the {} time{})",
            self.latency_basis.replace('_', " "),
            if self.latency_basis == "intended_send" {
                ": no coordinated omission"
            } else {
                ""
            }
        );
        let _ = writeln!(
            o,
            "  throughput   {:.2} req/s sent, {:.2} req/s completed, {:.0} input tok/s, {:.0} output tok/s",
            s.requests_per_s, s.completed_per_s, s.input_tokens_per_s, s.output_tokens_per_s
        );
        let _ = writeln!(
            o,
            "  errors       {} ({}){}",
            s.errors,
            fmt_pct(s.error_rate),
            if s.errors_by_kind.is_empty() {
                String::new()
            } else {
                format!(
                    ": {}",
                    s.errors_by_kind
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        let _ = writeln!(
            o,
            "  {:<11}{:>10}{:>10}{:>10}{:>10}{:>10}",
            "", "p50", "p90", "p95", "p99", "max"
        );
        for (name, p) in [
            ("TTFT", s.ttft),
            ("TPOT", s.tpot),
            ("ITL", s.itl),
            ("E2E", s.e2e),
            ("lateness", s.lateness),
        ] {
            if let Some(p) = p {
                let _ = writeln!(
                    o,
                    "  {:<11}{:>10}{:>10}{:>10}{:>10}{:>10}",
                    name,
                    fmt_us(p.p50),
                    fmt_us(p.p90),
                    fmt_us(p.p95),
                    fmt_us(p.p99),
                    fmt_us(p.max)
                );
            }
        }
        if let Some(q) = s.queue_depth {
            let _ = writeln!(
                o,
                "  queue depth  p50 {:.0}, p99 {:.0}, max {:.0}",
                q.p50, q.p99, q.max
            );
        }
        if let Some(k) = s.kv_cache_peak {
            let _ = writeln!(o, "  KV cache     peak {}", fmt_pct(k));
        }
        if let Some(c) = &self.capacity {
            let _ = writeln!(o, "\nLoad levels");
            let _ = writeln!(
                o,
                "  {:>7} {:>10} {:>10} {:>8} {:>10} {:>10} {:>7} {:>6}",
                "load", "offered/s", "done/s", "users", "TTFT p95", "TPOT p95", "errors", "KV"
            );
            for (i, l) in c.levels.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "  {:>7} {:>10.2} {:>10.2} {:>8.1} {:>10} {:>10} {:>7} {:>6}{}",
                    format!("{}", l.load_level),
                    l.offered_rps,
                    l.achieved_rps,
                    l.concurrency,
                    l.ttft.map(|p| fmt_us(p.p95)).unwrap_or_default(),
                    l.tpot.map(|p| fmt_us(p.p95)).unwrap_or_default(),
                    fmt_pct(l.error_rate),
                    l.kv_cache_peak.map(fmt_pct).unwrap_or_default(),
                    if Some(i) == c.cliff {
                        "  ← cliff"
                    } else {
                        ""
                    }
                );
            }
        }
        if let Some(b) = &self.baseline {
            let _ = writeln!(o, "\nAgainst baseline");
            for d in &b.deltas {
                if let (Some(r), Some(bv)) = (d.run, d.baseline) {
                    let _ = writeln!(
                        o,
                        "  {:<28} {:>14.3} {:>14.3} {:>8}{}",
                        d.metric,
                        r,
                        bv,
                        d.delta
                            .map(|x| format!("{:+.1}%", x * 100.0))
                            .unwrap_or_default(),
                        if d.regression { "  worse" } else { "" }
                    );
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn formats_times_and_durations() {
        assert_eq!(fmt_utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(fmt_utc(1_764_531_900_000_000), "2025-11-30 19:45:00Z");
        assert_eq!(fmt_utc(951_782_400_000_000), "2000-02-29 00:00:00Z");
        assert_eq!(fmt_offset(6120.0), "01:42:00");
        assert_eq!(fmt_us(2_500_000.0), "2.50 s");
        assert_eq!(fmt_us(35_000.0), "35.0 ms");
        assert_eq!(fmt_us(800.0), "800 µs");
    }

    #[test]
    fn terminal_summary_puts_verdicts_before_numbers() {
        let synth = crate::synth::Synth {
            starved_short_fraction: 0.06,
            ..crate::synth::Synth::default()
        };
        let config = AnalyzeConfig {
            slos: crate::slo::seed_slos(),
            ..AnalyzeConfig::default()
        };
        let report = crate::analyze_rows(&config, synth.results(), synth.samples(), None).unwrap();
        let text = report.render_terminal();
        let verdicts = text.find("Verdicts").unwrap();
        let numbers = text.find("Numbers").unwrap();
        assert!(verdicts < numbers);
        assert!(text.contains("Starvation"), "{text}");
        assert!(text.contains("no coordinated omission"));
        // Severity order: worst first.
        let sev: Vec<Severity> = report.verdicts().iter().map(|v| v.severity).collect();
        let mut sorted = sev.clone();
        sorted.sort();
        assert_eq!(sev, sorted);
    }
}
