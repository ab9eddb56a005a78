//! The real row sink: the Parquet [`RowWriter`] of `traces`, in the output directory.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use retrace_traces::schema::FileMeta;
use retrace_traces::write::{RowWriter, WriterOptions};
use retrace_traces::RequestRow;

use crate::config::{ProxyConfig, SinkFactory};
use crate::record::{RowSink, SinkError};

/// File name prefix of the recording's files.
pub(crate) const FILE_PREFIX: &str = "requests";

struct ParquetSink {
    writer: RowWriter<RequestRow>,
    flush_interval: Duration,
    last_flush: Instant,
    unflushed_rows: u64,
}

impl RowSink for ParquetSink {
    fn push(&mut self, row: RequestRow) -> Result<(), SinkError> {
        self.unflushed_rows += 1;
        self.writer
            .push(row)
            .map_err(|err| SinkError(err.to_string()))
    }

    fn tick(&mut self) -> Result<(), SinkError> {
        if self.last_flush.elapsed() >= self.flush_interval {
            self.last_flush = Instant::now();
            self.writer
                .flush()
                .map_err(|err| SinkError(err.to_string()))?;
            self.unflushed_rows = 0;
        }
        self.writer.tick().map_err(|err| SinkError(err.to_string()))
    }

    fn buffered_rows(&self) -> u64 {
        self.unflushed_rows
    }

    fn bytes_written(&self) -> u64 {
        self.writer.bytes_written()
    }

    fn close(self: Box<Self>) -> Result<u64, SinkError> {
        let files = self
            .writer
            .close()
            .map_err(|err| SinkError(err.to_string()))?;
        let bytes = files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        tracing::info!(files = files.len(), bytes, "recording closed");
        Ok(bytes)
    }
}

/// A factory of Parquet sinks writing into `config.out`. Each sink recovers stale temp
/// files of an earlier run (a SIGKILL) when it is created, and logs what it recovered.
pub(crate) fn parquet_factory(config: &ProxyConfig) -> SinkFactory {
    let mut opts = WriterOptions::new(config.out.clone(), FILE_PREFIX, FileMeta::default());
    opts.max_file_bytes = config.rotate_size_bytes;
    opts.max_file_age = config.rotate_age;
    opts.flush_interval = config.flush_interval;
    let flush_interval = config.flush_interval;
    let block_tokens = config.prefix_block_tokens;
    let upstream = format!("{}://{}", config.upstream.scheme, config.upstream.authority);
    Arc::new(move || {
        let mut opts = opts.clone();
        let start_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        opts.meta = FileMeta {
            producer: format!("retrace-proxy {}", env!("CARGO_PKG_VERSION")),
            prefix_block_tokens: Some(block_tokens),
            start_us: Some(start_us),
            host: None,
            extra: vec![("retrace.upstream".into(), upstream.clone())],
        };
        probe_writable(&opts.dir)?;
        let writer =
            RowWriter::<RequestRow>::create(opts).map_err(|err| SinkError(err.to_string()))?;
        let recovery = writer.recovery();
        if !recovery.salvaged.is_empty() || !recovery.removed.is_empty() {
            tracing::warn!(
                salvaged_files = recovery.salvaged.len(),
                rows_salvaged = recovery.rows_salvaged,
                removed_files = recovery.removed.len(),
                "recovered stale temp files of an earlier run"
            );
        }
        Ok(Box::new(ParquetSink {
            writer,
            flush_interval,
            last_flush: Instant::now(),
            unflushed_rows: 0,
        }) as Box<dyn RowSink>)
    })
}

/// Checks that a file can be created in `dir`: the Parquet writer opens its file only with
/// the first row, so a read-only directory would otherwise show only after traffic came.
/// The probe's name is fixed (nothing from a request is ever part of a path).
fn probe_writable(dir: &std::path::Path) -> Result<(), SinkError> {
    std::fs::create_dir_all(dir)
        .map_err(|err| SinkError(format!("{}: cannot create: {err}", dir.display())))?;
    let probe = dir.join(format!(".retrace-write-probe-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|err| SinkError(format!("{}: not writable: {err}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
