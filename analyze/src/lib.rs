//! `retrace analyze`: verdicts from replay results — latency drift, memory leaks,
//! starvation, the capacity cliff, spike recovery, capacity plans, SLO gates — rendered for
//! the terminal, as JSON, or as a self-contained HTML report.
//!
//! The analysis streams: every result row updates per-window HDR histograms and counters
//! and is then forgotten, so memory depends on the number of windows, not of rows.

mod agg;
pub mod cli;
mod counts;
mod html;
mod ingest;
pub mod report;
pub mod slo;
pub mod stats;
pub mod synth;

use std::path::PathBuf;

pub use cli::{run, AnalyzeArgs};
pub use report::{Report, Severity, Verdict};
pub use slo::{SloArg, SloMetric, SloSpec};

use retrace_traces::{RequestRow, ResultRow, SampleRow};

/// Errors of `retrace analyze`. Every error from input names the path.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    /// An input file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An input is not what it should be (not Parquet, wrong columns, empty).
    #[error("{}: {message}", path.display())]
    BadInput {
        /// The path.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A bad value in a row.
    #[error("{}: row {row}: field `{field}`: {message}", path.display())]
    BadRow {
        /// The file.
        path: PathBuf,
        /// 1-based row.
        row: u64,
        /// The column.
        field: String,
        /// What was wrong.
        message: String,
    },
    /// Bad command-line usage.
    #[error("{0}")]
    Usage(String),
    /// The analysis was interrupted.
    #[error("interrupted")]
    Interrupted,
}

/// What to analyze and how. Build it from [`AnalyzeArgs::into_config`] or directly.
#[derive(Debug, Clone)]
pub struct AnalyzeConfig {
    /// Run directories (or files); several shard directories merge into one run.
    pub runs: Vec<PathBuf>,
    /// `--baseline`: a run to compare against.
    pub baseline: Option<Vec<PathBuf>>,
    /// `--production`: a request recording (for the comparison and the capacity plan).
    pub production: Option<Vec<PathBuf>>,
    /// Window length, µs (default 60 s).
    pub window_us: i64,
    /// SLO gates.
    pub slos: Vec<SloSpec>,
    /// p99/p50 of TTFT above which starvation is flagged (default 10).
    pub starvation_ratio: f64,
    /// `--memory-limit`, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// `--growth`: production growth factor for the capacity plan (default 1.5).
    pub growth: f64,
    /// Measure TTFT and E2E from the intended send (default, no coordinated omission).
    pub from_intended: bool,
    /// Threads reading results files (0: the `RETRACE_ANALYZE_THREADS` environment
    /// variable, else one per core). The report is the same whatever the count.
    pub threads: usize,
}

impl Default for AnalyzeConfig {
    fn default() -> AnalyzeConfig {
        AnalyzeConfig {
            runs: Vec::new(),
            baseline: None,
            production: None,
            window_us: 60_000_000,
            slos: Vec::new(),
            starvation_ratio: 10.0,
            memory_limit_bytes: None,
            growth: 1.5,
            from_intended: true,
            threads: 0,
        }
    }
}

impl AnalyzeConfig {
    /// A config for these run directories with every default.
    pub fn new(runs: Vec<PathBuf>) -> AnalyzeConfig {
        AnalyzeConfig {
            runs,
            ..AnalyzeConfig::default()
        }
    }
}

fn basis(config: &AnalyzeConfig) -> ingest::Basis {
    ingest::Basis {
        from_intended: config.from_intended,
    }
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// Reads and aggregates one run's files.
fn aggregate_run(config: &AnalyzeConfig, paths: &[PathBuf]) -> Result<agg::Agg, AnalyzeError> {
    if paths.is_empty() {
        return Err(AnalyzeError::Usage("no run directory given".into()));
    }
    let files = ingest::expand(paths)?;
    let label = names(paths).join(", ");
    if files.results.is_empty() {
        return Err(AnalyzeError::BadInput {
            path: paths[0].clone(),
            message: format!("no results-*.parquet files in {label}"),
        });
    }
    let (mut agg, rows) = read_results_parallel(config, &files.results)?;
    if rows == 0 {
        return Err(AnalyzeError::BadInput {
            path: files.results[0].clone(),
            message: format!("no result rows in {label}: nothing to analyze"),
        });
    }
    for f in &files.samples {
        ingest::read_samples(f, &mut agg)?;
    }
    agg.finish();
    Ok(agg)
}

/// How many threads read results: `config.threads`, else `RETRACE_ANALYZE_THREADS`, else
/// one per core.
fn thread_count(config: &AnalyzeConfig) -> usize {
    if config.threads > 0 {
        return config.threads;
    }
    std::env::var("RETRACE_ANALYZE_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Reads results files on parallel threads, one row group at a time, one aggregate per
/// thread, merged at the end (aggregates are per window, not per row, so they merge
/// cheaply and exactly). Each thread decodes one batch at a time: memory stays constant.
fn read_results_parallel(
    config: &AnalyzeConfig,
    files: &[PathBuf],
) -> Result<(agg::Agg, u64), AnalyzeError> {
    let mut parts = Vec::new();
    for f in files {
        parts.extend(ingest::plan_results(f)?);
    }
    let threads = thread_count(config).min(parts.len()).max(1);
    if threads == 1 {
        let mut agg = agg::Agg::new(config.window_us);
        let mut rows = 0;
        for part in &parts {
            rows += ingest::read_results_part(part, &mut agg, basis(config))?;
        }
        return Ok((agg, rows));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<(agg::Agg, u64), AnalyzeError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut agg = agg::Agg::new(config.window_us);
                    let mut rows = 0;
                    while !failed.load(std::sync::atomic::Ordering::Relaxed) {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(part) = parts.get(i) else { break };
                        match ingest::read_results_part(part, &mut agg, basis(config)) {
                            Ok(n) => rows += n,
                            Err(e) => {
                                // No point reading on: the analysis fails with this error.
                                failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok((agg, rows))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(AnalyzeError::Usage("an analysis thread panicked".into()))
                })
            })
            .collect()
    });
    let mut total = agg::Agg::new(config.window_us);
    let mut rows = 0;
    for r in results {
        let (a, n) = r?;
        rows += n;
        total.merge(a);
    }
    Ok((total, rows))
}

fn read_production(paths: &[PathBuf]) -> Result<report::ProductionAgg, AnalyzeError> {
    let files = ingest::expand(paths)?;
    let mut files_req = files.requests;
    // A recording named anything else: take whatever Parquet files were given directly.
    if files_req.is_empty() {
        files_req = paths.iter().filter(|p| p.is_file()).cloned().collect();
    }
    if files_req.is_empty() {
        return Err(AnalyzeError::BadInput {
            path: paths[0].clone(),
            message: "no request recording (requests-*.parquet) found".into(),
        });
    }
    let mut p = report::ProductionAgg::new();
    for f in &files_req {
        ingest::read_requests(f, &mut |row| p.push(&row))?;
    }
    if p.requests == 0 {
        return Err(AnalyzeError::BadInput {
            path: files_req[0].clone(),
            message: "the production recording has no rows".into(),
        });
    }
    Ok(p)
}

/// Analyzes the run(s) in `config` (and the baseline and production recording, if given).
pub fn analyze(config: &AnalyzeConfig) -> Result<Report, AnalyzeError> {
    let agg = aggregate_run(config, &config.runs)?;
    let production = config
        .production
        .as_deref()
        .map(read_production)
        .transpose()?;
    let baseline = match &config.baseline {
        Some(paths) => {
            let b = aggregate_run(config, paths)?;
            Some(report::build(report::Inputs {
                config,
                agg: &b,
                inputs: names(paths),
                production: None,
                baseline: None,
            }))
        }
        None => None,
    };
    Ok(report::build(report::Inputs {
        config,
        agg: &agg,
        inputs: names(&config.runs),
        production: production.as_ref(),
        baseline,
    }))
}

/// Analyzes in-memory rows (the demo and tests): `config.runs` is ignored; the baseline
/// and production paths in `config` are still read when set, unless `production` rows
/// are given here.
pub fn analyze_rows(
    config: &AnalyzeConfig,
    results: impl IntoIterator<Item = ResultRow>,
    samples: impl IntoIterator<Item = SampleRow>,
    production: Option<&[RequestRow]>,
) -> Result<Report, AnalyzeError> {
    let mut agg = agg::Agg::new(config.window_us);
    for row in results {
        let rec = ingest::rec_of_row(&mut agg, &row, basis(config));
        agg.push(&rec);
    }
    if agg.requests == 0 {
        return Err(AnalyzeError::Usage(
            "no result rows: nothing to analyze".into(),
        ));
    }
    agg.finish();
    for s in samples {
        ingest::push_sample_row(&mut agg, &s);
    }
    let production = match production {
        Some(rows) => {
            let mut p = report::ProductionAgg::new();
            for r in rows {
                p.push(&ingest::production_of_row(r));
            }
            Some(p)
        }
        None => config
            .production
            .as_deref()
            .map(read_production)
            .transpose()?,
    };
    let baseline = match &config.baseline {
        Some(paths) => {
            let b = aggregate_run(config, paths)?;
            Some(report::build(report::Inputs {
                config,
                agg: &b,
                inputs: names(paths),
                production: None,
                baseline: None,
            }))
        }
        None => None,
    };
    Ok(report::build(report::Inputs {
        config,
        agg: &agg,
        inputs: vec!["<in-memory rows>".into()],
        production: production.as_ref(),
        baseline,
    }))
}
