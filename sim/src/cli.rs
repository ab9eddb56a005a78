//! Command-line arguments of `retrace sim` and its entry point.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{SimConfig, Stall};
pub use crate::SimError;

/// Arguments of `retrace sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on (loopback, e.g. 127.0.0.1:8000).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// Model name served.
    #[arg(long, default_value = "sim-7b")]
    pub model: String,
    /// KV cache size in blocks.
    #[arg(long, default_value_t = 25_000)]
    pub kv_blocks: u32,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: u32,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: u32,
    /// Most tokens scheduled per step.
    #[arg(long, default_value_t = 8192)]
    pub max_num_batched_tokens: u32,
    /// Longest prompt + output.
    #[arg(long, default_value_t = 8192)]
    pub max_model_len: u32,
    /// Run the simulated clock K times faster than real time (e.g. `20` or `20x`).
    #[arg(long, default_value = "1", value_parser = parse_speedup)]
    pub speedup: f64,
    /// Reuse KV blocks of identical prompt prefixes.
    #[arg(long)]
    pub prefix_caching: bool,
    /// Memory leaked per finished request (e.g. `64KiB`).
    #[arg(long, value_parser = parse_bytes)]
    pub leak_per_request: Option<u64>,
    /// Memory leaked per simulated hour (e.g. `50MB/h`).
    #[arg(long, value_parser = parse_rate)]
    pub leak_rate: Option<u64>,
    /// Stop leaking once this much is held (e.g. `512MiB`).
    #[arg(long, value_parser = parse_bytes)]
    pub leak_plateau: Option<u64>,
    /// Step time grows by this much per simulated hour (e.g. `5%/h`, `5`).
    #[arg(long, value_parser = parse_drift)]
    pub drift: Option<f64>,
    /// Fraction of requests answered with a 500 (e.g. `0.01` or `1%`).
    #[arg(long, value_parser = parse_fraction)]
    pub error_rate: Option<f64>,
    /// Fraction of streams dropped mid-way (e.g. `0.01` or `1%`).
    #[arg(long, value_parser = parse_fraction)]
    pub reset_rate: Option<f64>,
    /// Periodic engine stall, `PAUSE@EVERY` in simulated time (e.g. `2s@30s`).
    #[arg(long, value_parser = parse_stall)]
    pub stall: Option<Stall>,
    /// Write per-request ground truth to this Parquet file.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Seed of every pseudo-random decision.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SimArgs {
    /// The validated configuration these arguments describe.
    pub fn to_config(&self) -> Result<SimConfig, SimError> {
        let config = SimConfig {
            model: self.model.clone(),
            kv_blocks: self.kv_blocks,
            block_size: self.block_size,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            max_model_len: self.max_model_len,
            speedup: self.speedup,
            prefix_caching: self.prefix_caching,
            leak_per_request_bytes: self.leak_per_request.unwrap_or(0),
            leak_rate_bytes_per_hour: self.leak_rate.unwrap_or(0),
            leak_plateau_bytes: self.leak_plateau,
            drift_per_hour: self.drift.unwrap_or(0.0),
            error_rate: self.error_rate.unwrap_or(0.0),
            reset_rate: self.reset_rate.unwrap_or(0.0),
            stall: self.stall,
            truth_path: self.truth.clone(),
            seed: self.seed,
            ..SimConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// Runs `retrace sim` until `shutdown` resolves. Returns the process exit code.
pub async fn run(args: SimArgs, shutdown: impl Future<Output = ()> + Send) -> Result<u8, SimError> {
    if !args.listen.ip().is_loopback() {
        tracing::warn!("listening on a non-loopback address: {}", args.listen);
    }
    let config = args.to_config()?;
    let handle = crate::spawn(config, args.listen).await?;
    tracing::info!("retrace sim listening on {}", handle.base_url());
    shutdown.await;
    let summary = handle.shutdown().await?;
    tracing::info!(
        "retrace sim stopped: {} requests, {} completed, {} aborted, {} errors, {} preemptions",
        summary.requests_total,
        summary.requests_completed,
        summary.requests_aborted,
        summary.requests_errored,
        summary.preemptions_total
    );
    Ok(0)
}

pub use retrace_traces::units::parse_size as parse_bytes;

/// Parses a leak rate per simulated hour: `50MB/h`, `1GiB/h`, `100MB/m`, `10KB/s`
/// (a bare size means per hour).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (size, per) = match s.trim().rsplit_once('/') {
        Some((size, per)) => (size, per.trim()),
        None => (s, "h"),
    };
    let per_hour = match per {
        "h" | "hour" => 1.0,
        "m" | "min" => 60.0,
        "s" | "sec" => 3600.0,
        other => {
            return Err(format!(
                "`{s}`: unknown rate unit `/{other}` (use /h, /m or /s)"
            ))
        }
    };
    Ok((parse_bytes(size)? as f64 * per_hour).round() as u64)
}

/// Parses a duration (`500ms`, `2s`, `1.5m`, `1h`, `250us`; see `traces::units`) into µs.
pub fn parse_duration_us(s: &str) -> Result<u64, String> {
    retrace_traces::units::parse_duration(s).map(|d| d.as_micros() as u64)
}

/// Parses `PAUSE@EVERY`, e.g. `2s@30s`.
pub fn parse_stall(s: &str) -> Result<Stall, String> {
    let Some((pause, every)) = s.split_once('@') else {
        return Err(format!("`{s}`: expected PAUSE@EVERY, e.g. 2s@30s"));
    };
    let stall = Stall {
        pause_us: parse_duration_us(pause)?,
        every_us: parse_duration_us(every)?,
    };
    if stall.pause_us == 0 || stall.every_us == 0 {
        return Err(format!("`{s}`: pause and period must both be > 0"));
    }
    Ok(stall)
}

/// Parses a speedup: `20` or `20x`.
pub fn parse_speedup(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches(['x', 'X'])
        .parse()
        .map_err(|_| format!("`{s}`: expected a positive number like 20 or 20x"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("`{s}`: speedup must be positive"));
    }
    Ok(v)
}

pub use retrace_traces::units::parse_fraction;

/// Parses a drift in percent per simulated hour: `5%/h`, `5%`, `5` → 0.05.
pub fn parse_drift(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/h").unwrap_or(t);
    let t = t.strip_suffix('%').unwrap_or(t);
    let v: f64 = t
        .parse()
        .map_err(|_| format!("`{s}`: expected a percentage per hour like 5%/h"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("`{s}`: drift must be ≥ 0"));
    }
    Ok(v / 100.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn value_parsers() {
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("64KiB").unwrap(), 65_536);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 1_500_000_000);
        assert!(parse_bytes("12 parsecs").unwrap_err().contains("parsecs"));
        assert_eq!(parse_rate("50MB/h").unwrap(), 50_000_000);
        assert_eq!(parse_rate("1MB/m").unwrap(), 60_000_000);
        assert!(parse_rate("1MB/fortnight").is_err());
        assert_eq!(
            parse_stall("2s@30s").unwrap(),
            Stall {
                pause_us: 2_000_000,
                every_us: 30_000_000
            }
        );
        assert!(parse_stall("2s").is_err());
        assert_eq!(parse_speedup("20x").unwrap(), 20.0);
        assert!(parse_speedup("0").is_err());
        assert_eq!(parse_fraction("1%").unwrap(), 0.01);
        assert!(parse_fraction("1.5").is_err());
        assert!((parse_drift("5%/h").unwrap() - 0.05).abs() < 1e-12);
    }

    #[tokio::test]
    async fn run_serves_until_shutdown_and_finishes_the_truth_file() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            sim: SimArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let truth = dir.path().join("truth.parquet");
        let truth_arg = truth.to_str().unwrap().to_string();
        let cli =
            Cli::try_parse_from(["sim", "--listen", "127.0.0.1:0", "--truth", &truth_arg]).unwrap();
        let code = run(
            cli.sim,
            tokio::time::sleep(std::time::Duration::from_millis(50)),
        )
        .await
        .unwrap();
        assert_eq!(code, 0);
        assert!(truth.exists(), "renamed into place on shutdown");
        assert!(!dir.path().join("truth.parquet.tmp").exists());
        // A truth path in a missing directory is an error naming the file.
        let cli = Cli::try_parse_from([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--truth",
            "/nonexistent/x/t.parquet",
        ])
        .unwrap();
        let err = run(cli.sim, async {}).await.unwrap_err().to_string();
        assert!(err.contains("/nonexistent/x/t.parquet.tmp"), "{err}");
    }

    #[test]
    fn args_parse_into_config() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            sim: SimArgs,
        }
        let cli = Cli::try_parse_from([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--kv-blocks",
            "100",
            "--block-size",
            "16",
            "--max-model-len",
            "1024",
            "--speedup",
            "10x",
            "--leak-rate",
            "50MB/h",
            "--stall",
            "2s@30s",
            "--error-rate",
            "1%",
        ])
        .unwrap();
        let config = cli.sim.to_config().unwrap();
        assert_eq!(config.kv_blocks, 100);
        assert_eq!(config.speedup, 10.0);
        assert_eq!(config.leak_rate_bytes_per_hour, 50_000_000);
        assert_eq!(config.error_rate, 0.01);
        // A model length that does not fit in the cache is refused, naming the field.
        let bad =
            Cli::try_parse_from(["sim", "--kv-blocks", "10", "--max-model-len", "1024"]).unwrap();
        let err = bad.sim.to_config().unwrap_err().to_string();
        assert!(err.contains("max_model_len"), "{err}");
    }
}
