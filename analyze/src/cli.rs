//! Command-line arguments of `retrace analyze` and its entry point.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::slo::{parse_slo_arg, SloArg};
use crate::{analyze, AnalyzeConfig, AnalyzeError, Report};

/// Arguments of `retrace analyze`.
#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    /// Replay output directories (results-*.parquet, samples-*.parquet); several shard
    /// directories merge into one run.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// A earlier run to compare against (numbers side by side with deltas).
    #[arg(long, value_name = "RUN")]
    pub baseline: Vec<PathBuf>,
    /// A production recording (request rows): replay-vs-production comparison and a
    /// capacity plan.
    #[arg(long, value_name = "RECORDING")]
    pub production: Vec<PathBuf>,
    /// Window length for per-window statistics (`30s`, `1m`, `5m`).
    #[arg(long, default_value = "1m", value_parser = parse_window_us, value_name = "DURATION")]
    pub window: i64,
    /// SLO gate, repeatable: `ttft_p95=2s`, `tpot_p50=50ms`, `error_rate=0.1%`,
    /// `queue_depth_p50=10`, `kv_cache_peak=80%`, `rss_growth_mb_per_hour=50`,
    /// `throughput_rps=20`, or `seed` for the defaults.
    #[arg(long = "slo", value_parser = parse_slo_arg, value_name = "METRIC=VALUE")]
    pub slo: Vec<SloArg>,
    /// TTFT p99/p50 ratio above which starvation is flagged.
    #[arg(long, default_value_t = 10.0, value_parser = parse_positive, value_name = "RATIO")]
    pub starvation_ratio: f64,
    /// Memory limit for the time-to-limit projection (`16GiB`, `512MiB`, `8GB`).
    #[arg(long, value_parser = parse_bytes, value_name = "SIZE")]
    pub memory_limit: Option<u64>,
    /// Expected traffic growth for the capacity plan.
    #[arg(long, default_value_t = 1.5, value_parser = parse_positive, value_name = "FACTOR")]
    pub growth: f64,
    /// Measure TTFT/E2E from the actual send instead of the intended one (hides
    /// coordinated omission; for comparison only).
    #[arg(long)]
    pub from_actual_send: bool,
    /// Threads reading the results (0: `RETRACE_ANALYZE_THREADS`, else one per core).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub threads: usize,
    /// Print the JSON document to stdout instead of the terminal summary.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report here.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

impl AnalyzeArgs {
    /// Validates the arguments into a config.
    pub fn into_config(self) -> Result<AnalyzeConfig, AnalyzeError> {
        if self.runs.is_empty() {
            return Err(AnalyzeError::Usage(
                "give at least one RUN directory".into(),
            ));
        }
        Ok(AnalyzeConfig {
            runs: self.runs,
            baseline: (!self.baseline.is_empty()).then_some(self.baseline),
            production: (!self.production.is_empty()).then_some(self.production),
            window_us: self.window,
            slos: crate::slo::resolve(&self.slo),
            starvation_ratio: self.starvation_ratio,
            memory_limit_bytes: self.memory_limit,
            growth: self.growth,
            from_intended: !self.from_actual_send,
            threads: self.threads,
        })
    }
}

fn parse_window_us(s: &str) -> Result<i64, String> {
    let us = crate::slo::parse_duration_us(s)
        .ok_or_else(|| format!("expected a duration like 30s or 1m, got `{s}`"))?;
    if us < 1e6 {
        return Err(format!("window `{s}` is shorter than 1 s"));
    }
    Ok(us as i64)
}

fn parse_positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("expected a positive number, got `{s}`")),
    }
}

pub use retrace_traces::units::parse_size as parse_bytes;

/// Shared slot between the analysis thread and the awaiting future.
struct Slot {
    result: Option<Result<Report, AnalyzeError>>,
    waker: Option<Waker>,
}

/// Awaits the analysis thread or the shutdown signal, whichever comes first.
struct Race<S> {
    slot: Arc<Mutex<Slot>>,
    shutdown: Pin<Box<S>>,
}

impl<S: Future<Output = ()>> Future for Race<S> {
    type Output = Result<Report, AnalyzeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        {
            let mut slot = match self.slot.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(r) = slot.result.take() {
                return Poll::Ready(r);
            }
            slot.waker = Some(cx.waker().clone());
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(AnalyzeError::Interrupted));
        }
        Poll::Pending
    }
}

/// Runs [`analyze`] on its own thread (it is CPU work; the async runtime stays free).
async fn analyze_off_thread(
    config: AnalyzeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Report, AnalyzeError> {
    let slot = Arc::new(Mutex::new(Slot {
        result: None,
        waker: None,
    }));
    let thread_slot = Arc::clone(&slot);
    std::thread::Builder::new()
        .name("retrace-analyze".into())
        .spawn(move || {
            let r = analyze(&config);
            let mut s = match thread_slot.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            s.result = Some(r);
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        })
        .map_err(|source| AnalyzeError::Io {
            path: PathBuf::from("<analysis thread>"),
            source,
        })?;
    Race {
        slot,
        shutdown: Box::pin(shutdown),
    }
    .await
}

/// Runs `retrace analyze` until done or until `shutdown` resolves. Returns the process exit code.
pub async fn run(
    args: AnalyzeArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<u8, AnalyzeError> {
    let json = args.json;
    let html = args.html.clone();
    let config = args.into_config()?;
    let report = analyze_off_thread(config, shutdown).await?;
    if let Some(path) = &html {
        report.write_html(path)?;
    }
    if json {
        let text = serde_json::to_string_pretty(&report.to_json())
            .map_err(|e| AnalyzeError::Usage(format!("cannot encode JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", report.render_terminal());
        if let Some(path) = &html {
            println!("\nHTML report: {}", path.display());
        }
    }
    Ok(report.exit_code())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: AnalyzeArgs,
    }

    #[test]
    fn args_parse_into_config() {
        let cli = Cli::try_parse_from([
            "analyze",
            "run-a",
            "run-b",
            "--window",
            "30s",
            "--slo",
            "seed",
            "--slo",
            "ttft_p95=1s",
            "--memory-limit",
            "16GiB",
            "--baseline",
            "base",
        ])
        .unwrap();
        let config = cli.args.into_config().unwrap();
        assert_eq!(config.runs.len(), 2);
        assert_eq!(config.window_us, 30_000_000);
        assert_eq!(config.memory_limit_bytes, Some(16 << 30));
        assert_eq!(config.baseline, Some(vec![PathBuf::from("base")]));
        assert!(config
            .slos
            .iter()
            .any(|s| s.name == "ttft_p95" && s.threshold == 1e6));
        assert!(config.from_intended);
    }

    #[test]
    fn bad_args_are_usage_errors() {
        assert!(Cli::try_parse_from(["analyze"]).is_err());
        assert!(Cli::try_parse_from(["analyze", "r", "--slo", "ttft_p95=fast"]).is_err());
        assert!(Cli::try_parse_from(["analyze", "r", "--window", "10ms"]).is_err());
        assert!(Cli::try_parse_from(["analyze", "r", "--memory-limit", "16 parsecs"]).is_err());
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
    }
}
