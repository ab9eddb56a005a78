//! The ground-truth file: one Parquet row per request, server-side times in simulated UTC µs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;

use crate::engine::TruthRow;
use crate::SimError;

/// Rows are buffered and written in batches of this many.
const BATCH_ROWS: usize = 4096;

/// The truth file's schema (documented in docs/sim.md).
pub(crate) fn schema() -> SchemaRef {
    let f = |name: &str, dt: DataType, nullable: bool| Field::new(name, dt, nullable);
    Arc::new(Schema::new(vec![
        f("request_id", DataType::Utf8, false),
        f("endpoint", DataType::Utf8, false),
        f("arrival_us", DataType::Int64, false),
        f("handler_us", DataType::Int64, false),
        f("admitted_us", DataType::Int64, true),
        f("first_token_us", DataType::Int64, true),
        f("engine_first_token_us", DataType::Int64, true),
        f("finish_us", DataType::Int64, false),
        f("prompt_tokens", DataType::UInt32, false),
        f("output_tokens", DataType::UInt32, false),
        f("preemptions", DataType::UInt32, false),
        f("finish_reason", DataType::Utf8, false),
        f("itl_count", DataType::UInt32, true),
        f("itl_mean_us", DataType::UInt64, true),
        f("itl_p50_us", DataType::UInt64, true),
        f("itl_p99_us", DataType::UInt64, true),
        f("itl_max_us", DataType::UInt64, true),
    ]))
}

/// Writes the truth file to `<path>.tmp`, renamed to `path` by [`TruthWriter::finish`].
pub(crate) struct TruthWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    buffer: Vec<TruthRow>,
    /// Finished streamed requests whose first token the connection has not been handed
    /// yet (a one-token answer finishes in the step that makes the token): written once
    /// their response stream stamps it or ends.
    pending: Vec<TruthRow>,
    rows: u64,
}

impl std::fmt::Debug for TruthWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TruthWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl TruthWriter {
    pub(crate) fn create(path: &Path) -> Result<TruthWriter, SimError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|source| SimError::Io {
            path: tmp.clone(),
            source,
        })?;
        let writer =
            ArrowWriter::try_new(file, schema(), None).map_err(|source| SimError::Truth {
                path: tmp.clone(),
                source,
            })?;
        Ok(TruthWriter {
            path: path.to_path_buf(),
            tmp,
            writer,
            buffer: Vec::new(),
            pending: Vec::new(),
            rows: 0,
        })
    }

    pub(crate) fn push(&mut self, rows: Vec<TruthRow>) -> Result<(), SimError> {
        for row in rows {
            if row.sent.as_ref().is_some_and(|s| s.get().is_none()) {
                self.pending.push(row);
            } else {
                self.buffer.push(row);
            }
        }
        if self.buffer.len() + self.pending.len() >= BATCH_ROWS {
            // Rows whose stream has since stamped (or dropped) move to the batch.
            let (ready, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
                .into_iter()
                .partition(|r| r.sent.as_ref().is_none_or(|s| s.get().is_some()));
            self.buffer.extend(ready);
            self.pending = still;
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SimError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.buffer);
        self.rows += rows.len() as u64;
        let batch = to_batch(&rows).map_err(|e| SimError::Truth {
            path: self.tmp.clone(),
            source: e.into(),
        })?;
        self.writer.write(&batch).map_err(|source| SimError::Truth {
            path: self.tmp.clone(),
            source,
        })
    }

    /// Writes what is left, closes the file and renames it into place. Returns the rows.
    pub(crate) fn finish(mut self) -> Result<u64, SimError> {
        // A stream still pending at shutdown never handed its token over: written as such.
        self.buffer.append(&mut self.pending);
        self.flush()?;
        self.writer.close().map_err(|source| SimError::Truth {
            path: self.tmp.clone(),
            source,
        })?;
        std::fs::rename(&self.tmp, &self.path).map_err(|source| SimError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.rows)
    }
}

fn to_batch(rows: &[TruthRow]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let n = rows.len();
    let mut request_id = StringBuilder::with_capacity(n, n * 16);
    let mut endpoint = StringBuilder::with_capacity(n, n * 8);
    let mut arrival = Int64Builder::with_capacity(n);
    let mut handler = Int64Builder::with_capacity(n);
    let mut admitted = Int64Builder::with_capacity(n);
    let mut first = Int64Builder::with_capacity(n);
    let mut engine_first = Int64Builder::with_capacity(n);
    let mut finish = Int64Builder::with_capacity(n);
    let mut prompt = UInt32Builder::with_capacity(n);
    let mut output = UInt32Builder::with_capacity(n);
    let mut preempt = UInt32Builder::with_capacity(n);
    let mut reason = StringBuilder::with_capacity(n, n * 6);
    let mut itl_count = UInt32Builder::with_capacity(n);
    let mut itl_mean = UInt64Builder::with_capacity(n);
    let mut itl_p50 = UInt64Builder::with_capacity(n);
    let mut itl_p99 = UInt64Builder::with_capacity(n);
    let mut itl_max = UInt64Builder::with_capacity(n);
    for r in rows {
        request_id.append_value(&r.request_id);
        endpoint.append_value(r.endpoint);
        // When the request's head reached the socket (kernel receive time where there is
        // one); handler_us is when the sim got around to handling it.
        arrival.append_value(r.arrival_us);
        handler.append_value(r.handler_us);
        admitted.append_option(r.admitted_us);
        // Streamed: when the first token's bytes went to the connection (none if they never
        // did). Otherwise the engine's time: a whole body has no first-token moment on the wire.
        first.append_option(match &r.sent {
            Some(sent) => sent.get().flatten(),
            None => r.first_token_us,
        });
        engine_first.append_option(r.first_token_us);
        finish.append_value(r.finish_us);
        prompt.append_value(r.prompt_tokens);
        output.append_value(r.output_tokens);
        preempt.append_value(r.preemptions);
        reason.append_value(r.finish_reason.as_str());
        itl_count.append_option(r.itl.map(|g| g.count));
        itl_mean.append_option(r.itl.map(|g| g.mean_us));
        itl_p50.append_option(r.itl.map(|g| g.p50_us));
        itl_p99.append_option(r.itl.map(|g| g.p99_us));
        itl_max.append_option(r.itl.map(|g| g.max_us));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(request_id.finish()),
        Arc::new(endpoint.finish()),
        Arc::new(arrival.finish()),
        Arc::new(handler.finish()),
        Arc::new(admitted.finish()),
        Arc::new(first.finish()),
        Arc::new(engine_first.finish()),
        Arc::new(finish.finish()),
        Arc::new(prompt.finish()),
        Arc::new(output.finish()),
        Arc::new(preempt.finish()),
        Arc::new(reason.finish()),
        Arc::new(itl_count.finish()),
        Arc::new(itl_mean.finish()),
        Arc::new(itl_p50.finish()),
        Arc::new(itl_p99.finish()),
        Arc::new(itl_max.finish()),
    ];
    RecordBatch::try_new(schema(), columns)
}
