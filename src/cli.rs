//! `retrace import`, `inspect` and `export`: thin commands over the `traces` crate.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use retrace_traces::import::{import_file, Format, ImportOptions};
use retrace_traces::{read_rows, write_file, FileMeta, RequestRow, TracesError};

/// Arguments of `retrace import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The trace file to import (Azure CSV, BurstGPT CSV or Mooncake JSONL).
    pub file: PathBuf,
    /// Output Parquet file.
    #[arg(short, long)]
    pub out: PathBuf,
    /// The trace format: azure, burstgpt or mooncake (detected from the first line when
    /// not given).
    #[arg(long)]
    pub format: Option<Format>,
    /// Skip lines that do not parse, and report how many, instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
}

/// Arguments of `retrace inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Files or directories of request rows (Parquet), or raw trace files (CSV / JSONL,
    /// imported on the fly).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Mooncake JSONL: `{timestamp, input_length, output_length, hash_ids}`.
    Mooncake,
}

/// Arguments of `retrace export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Files or directories of request rows (Parquet), or raw trace files.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The format to write.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output file.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Prefix block size of the output, in tokens.
    #[arg(long, default_value_t = retrace_traces::DEFAULT_PREFIX_BLOCK_TOKENS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub block_tokens: u32,
}

/// `retrace import`.
pub fn import(args: ImportArgs) -> anyhow::Result<u8> {
    let opts = ImportOptions {
        format: args.format,
        skip_bad: args.skip_bad,
        base_time_us: None,
    };
    let (rows, report) = import_file(&args.file, &opts)?;
    let meta = FileMeta {
        producer: format!("retrace-import {}", env!("CARGO_PKG_VERSION")),
        // Mooncake hash ids name 512-token blocks; the other formats carry no prefixes.
        prefix_block_tokens: (report.format == Format::Mooncake).then_some(512),
        start_us: rows.first().map(|r| r.arrival_us),
        host: None,
        extra: vec![
            (
                "retrace.source_format".to_string(),
                report.format.to_string(),
            ),
            (
                "retrace.source_file".to_string(),
                args.file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
        ],
    };
    // write_file writes to a temporary name and renames: no partial output on error.
    write_file(&args.out, &rows, &meta)?;
    println!(
        "imported {} rows ({} format) from {} to {}; skipped {} bad lines",
        report.rows,
        report.format,
        args.file.display(),
        args.out.display(),
        report.skipped
    );
    if let Some(first) = &report.first_skipped {
        eprintln!("first skipped line: {first}");
    }
    Ok(0)
}

/// Whether an input names a raw trace file (imported on the fly) rather than Parquet.
fn is_raw_trace(path: &Path) -> bool {
    path.is_file()
        && !path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Feeds every request row of the inputs to `consume`, in arrival order, and returns what
/// it returned. Parquet inputs are streamed; raw traces are imported into memory first.
fn with_rows<T>(
    inputs: &[PathBuf],
    consume: impl FnOnce(&mut dyn Iterator<Item = RequestRow>) -> T,
) -> anyhow::Result<T> {
    let (raw, parquet): (Vec<PathBuf>, Vec<PathBuf>) =
        inputs.iter().cloned().partition(|p| is_raw_trace(p));
    let mut imported = Vec::new();
    for path in &raw {
        let (rows, _) = import_file(path, &ImportOptions::default())
            .with_context(|| format!("importing {}", path.display()))?;
        imported.extend(rows);
    }
    let mut error: Option<TracesError> = None;
    let out = if parquet.is_empty() {
        imported.sort_by_key(|r| r.arrival_us);
        consume(&mut imported.into_iter())
    } else if imported.is_empty() {
        let mut rows =
            read_rows::<RequestRow>(&parquet)?.map_while(|r| r.map_err(|e| error = Some(e)).ok());
        consume(&mut rows)
    } else {
        for row in read_rows::<RequestRow>(&parquet)? {
            imported.push(row?);
        }
        imported.sort_by_key(|r| r.arrival_us);
        consume(&mut imported.into_iter())
    };
    match error {
        Some(e) => Err(e.into()),
        None => Ok(out),
    }
}

/// `retrace inspect`.
pub fn inspect(args: InspectArgs) -> anyhow::Result<u8> {
    let report = with_rows(&args.inputs, |rows| retrace_traces::inspect::inspect(rows))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(0)
}

/// `retrace export`.
pub fn export(args: ExportArgs) -> anyhow::Result<u8> {
    let ExportFormat::Mooncake = args.format;
    // Write next to the target and rename, so a failed export leaves no partial file.
    let mut tmp = args.out.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let result = (|| -> anyhow::Result<u64> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = BufWriter::new(file);
        let written = with_rows(&args.inputs, |rows| {
            retrace_traces::export::write_mooncake(rows, &mut out, args.block_tokens)
        })?
        .with_context(|| format!("writing {}", tmp.display()))?;
        out.flush()
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &args.out)
            .with_context(|| format!("renaming to {}", args.out.display()))?;
        Ok(written)
    })();
    match result {
        Ok(written) => {
            println!(
                "exported {written} rows to {} (mooncake)",
                args.out.display()
            );
            Ok(0)
        }
        Err(err) => {
            let _ = std::fs::remove_file(&tmp);
            Err(err)
        }
    }
}
