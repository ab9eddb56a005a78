//! Parquet writing: one-shot [`write_file`], and the long-running [`RowWriter`] of the proxy
//! and replay, which batches rows, rotates files and survives a crash.
//!
//! # Crash safety
//! A file being written is `<prefix>-<UTC timestamp>-<seq>.parquet.tmp`; it is renamed to
//! `.parquet` only once complete (fsync file, rename, fsync directory), so readers never see
//! a half-written `.parquet`. Two sidecars make flushed rows recoverable after a SIGKILL:
//! - `<tmp>.footer`: at the first flush after a row group is completed, the Parquet footer
//!   of the row groups so far (fsynced first), plus the byte length of the data they cover.
//!   Row groups stay large (the default 32 768 rows) so files stay small and fast to read.
//!   Written once a flush, not once a row group: it grows with the file (written for every
//!   group, a 256 MiB file's sidecars cost ~270 instructions a row, extrapolated from 38 over
//!   the first million rows), and at a million rows a second ~30 groups complete between
//!   two flushes.
//! - `<tmp>.journal`: an Arrow IPC stream of the rows flushed since the row groups the
//!   footer covers, appended and fsynced on every flush (default every second). Its schema
//!   metadata records how many rows the footer covered when it was started, so rows that
//!   are both in a completed row group and in a not-yet-replaced journal are not recovered
//!   twice. Until the footer covers a completed row group, the journal that was open when
//!   it completed still holds its flushed rows.
//!
//! Recovery ([`recover_dir`], and [`RowWriter::create`] for its own prefix) rebuilds a valid
//! `.parquet` from the temp file's data up to the footer's length, the footer, and the
//! journal's tail, reads it back to verify it, then removes the temp files.

mod paced;

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{add_encoded_arrow_schema_to_metadata, ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{FileMetaData, KeyValue, ParquetMetaData, ParquetMetaDataWriter};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::schema::{FileMeta, Row, META_SCHEMA};
use crate::TracesError;
use paced::PacedWriter;

/// Metadata key, in the journal's schema, of the row count the footer covered when the
/// journal was started.
const JOURNAL_BASE_ROWS: &str = "retrace.journal_base_rows";
/// Metadata key set on files rebuilt by recovery.
pub const META_RECOVERED: &str = "retrace.recovered";
const FOOTER_MAGIC: &[u8; 8] = b"RTFOOT1\n";
/// Rows encoded at once: large enough to amortise per-batch costs, small enough to bound
/// the memory of unencoded rows.
const ENCODE_BATCH_ROWS: usize = 8192;
/// Rows built into a record batch and handed to the Parquet writer at once, with a pause
/// (a yield of the thread) between slices. The proxy's recorder shares a CPU with the
/// event loop it records: a whole batch encodes for ~15 ms, and requests wait behind it;
/// slices let them through every ~2 ms. Completing a row group and writing the journal
/// pause likewise, between columns and between batches (see `paced`).
const ENCODE_SLICE_ROWS: usize = 1024;

/// Lets the other threads of this CPU run between long encoding steps (see `paced`).
fn pause() {
    std::thread::yield_now();
}

/// Options of a [`RowWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Directory the files go to (created if missing).
    pub dir: PathBuf,
    /// File name prefix (`requests`, `results`, `samples`, ...).
    pub file_prefix: String,
    /// Most rows in one row group.
    pub max_rows_per_group: usize,
    /// Most encoded bytes in one row group (estimated while encoding).
    pub max_row_group_bytes: u64,
    /// A file is closed and a new one started once it reaches this size.
    pub max_file_bytes: u64,
    /// A file is closed and a new one started once it is this old (checked by `tick`).
    pub max_file_age: Duration,
    /// Rows are made durable at least this often (by `tick`): the most a crash can lose.
    pub flush_interval: Duration,
    /// File metadata written to every file.
    pub meta: FileMeta,
}

impl WriterOptions {
    /// Defaults: 32 768 rows and 128 MiB per row group, 256 MiB and 1 h per file, flush
    /// every second. The in-progress row group's encoders hold its values uncompressed
    /// until it completes: 32 768 rows bound that to ~10 MB (parquet's estimate; 16 MB at
    /// 65 536 rows) for +0.55 byte a row on disk (`examples/recorder_bench.rs
    /// --group-rows`).
    pub fn new(dir: impl Into<PathBuf>, file_prefix: &str, meta: FileMeta) -> Self {
        WriterOptions {
            dir: dir.into(),
            file_prefix: file_prefix.to_string(),
            max_rows_per_group: 32_768,
            max_row_group_bytes: 128 << 20,
            max_file_bytes: 256 << 20,
            max_file_age: Duration::from_secs(3600),
            flush_interval: Duration::from_secs(1),
            meta,
        }
    }
}

/// What recovery did with stale temp files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    /// `.parquet` files rebuilt from temp files.
    pub salvaged: Vec<PathBuf>,
    /// Temp files removed because nothing in them could be recovered.
    pub removed: Vec<PathBuf>,
    /// Rows in the salvaged files.
    pub rows_salvaged: u64,
}

impl RecoveryReport {
    fn merge(&mut self, other: RecoveryReport) {
        self.salvaged.extend(other.salvaged);
        self.removed.extend(other.removed);
        self.rows_salvaged += other.rows_salvaged;
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TracesError + '_ {
    move |source| TracesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn pq_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> TracesError + '_ {
    move |source| TracesError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

fn bad_file(path: &Path, message: impl std::fmt::Display) -> TracesError {
    TracesError::BadFile {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Column names whose values are nearly unique per row: no dictionary, no statistics.
const UNIQUE_STRINGS: &[&str] = &[
    "request_id",
    "prompt_text",
    "response_text",
    "error_message",
];
/// Strings that are (nearly) one value in a recording: the endpoint, where token counts
/// come from, and the session (null unless clients send one; then mostly unique). Plain
/// values compress to the same size as a dictionary's indices (measured with
/// `examples/recorder_bench.rs --variants`: 38.69 B/row either way) and skip a hash
/// lookup per value (-5% instructions in `ArrowWriter::write`).
const PLAIN_STRINGS: &[&str] = &["endpoint", "prompt_tokens_source", "session_id"];
/// Timestamp columns: nearly sorted, so delta encoding stores them in ~2 bytes a row. Not
/// compressed: the bit-packed deltas are noise to zstd, whose output was larger and thrown
/// away (parquet keeps the page uncompressed then) for 53 instructions a row.
const DELTA_INTS: &[&str] = &[
    "arrival_us",
    "intended_send_us",
    "actual_send_us",
    "time_us",
];
/// Wide-ranging measurements that rarely repeat: byte-stream-split puts their (mostly zero)
/// high bytes together, where zstd removes them. Measured by `examples/recorder_bench.rs
/// --variants`: 10-25% smaller than delta or plain encoding for these columns.
const SPLIT_NUMBERS: &[&str] = &[
    "lateness_us",
    "ttfb_us",
    "ttft_us",
    "ttft_from_intended_us",
    "e2e_us",
    "e2e_from_intended_us",
    "tpot_us",
    "itl_mean_us",
    "itl_p50_us",
    "itl_p99_us",
    "itl_max_us",
    "request_bytes",
    "response_bytes",
    "value",
];
/// Wide-ranging token counts (prompt, output, chunks, gaps): a dictionary of thousands of
/// distinct values costs a hash lookup a value and saves nothing over byte-stream-split
/// (measured with `examples/recorder_bench.rs --variants` on rows resampled from the
/// bundled Azure trace: within 0.1 byte a row, ~15% less encoding CPU). Low-cardinality
/// integers (`max_tokens`, `message_count`, `status`) keep the default dictionary.
const SPLIT_COUNTS: &[&str] = &["prompt_tokens", "output_tokens", "chunk_count", "itl_count"];

/// The leaf column of `prefix_hashes`: a path of three parts. (`ColumnPath::from` of the
/// dotted string is one part named `prefix_hashes.list.item`, which matches no column.)
fn prefix_hashes_leaf() -> ColumnPath {
    ColumnPath::new(vec![
        "prefix_hashes".to_string(),
        "list".to_string(),
        "item".to_string(),
    ])
}

/// zstd level 1: with plain prefix hashes, within 0.05 byte a row of level 3 and ~25% less
/// encoding CPU (level 3's larger match tables also cost a 768 KiB memset for every page
/// compressed; level 1's are 48 KiB). Measured by `examples/recorder_bench.rs --variants`.
fn zstd_level() -> ZstdLevel {
    ZstdLevel::try_new(1).unwrap_or_default()
}

/// Writer properties of a file of `schema` with key-value metadata `kv` (to which the
/// encoded Arrow schema is added, as `ArrowWriter` does).
fn writer_properties(
    schema: &SchemaRef,
    kv: &[(String, String)],
    max_rows: usize,
) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(zstd_level()))
        .set_max_row_group_size(max_rows.max(1))
        // Pages as large as the row group: fewer page headers and level-run restarts, and
        // zstd sees a whole column chunk at once (-0.2 byte a row, measured as above).
        .set_data_page_size_limit(8 << 20)
        .set_data_page_row_count_limit(max_rows.max(1))
        // Statistics cost ~15% of encoding time and only time ranges are worth pruning by:
        // chunk statistics on the time columns only (set below).
        .set_statistics_enabled(EnabledStatistics::None)
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_key_value_metadata(Some(
            kv.iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect(),
        ))
        .set_created_by(format!("retrace {}", env!("CARGO_PKG_VERSION")))
        // Prefix hashes are random 64-bit values, ~40% of them repeating an earlier one:
        // plain values let zstd find the repeats (38.6 vs 41.3 bytes a row with a
        // dictionary, measured by `examples/recorder_bench.rs --variants`), and skip a hash
        // lookup per value.
        .set_column_dictionary_enabled(prefix_hashes_leaf(), false)
        .set_column_encoding(prefix_hashes_leaf(), Encoding::PLAIN);
    for field in schema.fields() {
        let name = field.name().as_str();
        let path = ColumnPath::from(name);
        if name == "request_id" {
            // Ids share long prefixes (the proxy's `<prefix>-<counter>`, importers'
            // `<format>-<line>`): delta byte arrays store only what differs.
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path.clone(), EnabledStatistics::None)
                .set_column_encoding(path, Encoding::DELTA_BYTE_ARRAY);
        } else if PLAIN_STRINGS.contains(&name) {
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path.clone(), EnabledStatistics::None)
                .set_column_encoding(path, Encoding::PLAIN);
        } else if UNIQUE_STRINGS.contains(&name) {
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path, EnabledStatistics::None);
        } else if DELTA_INTS.contains(&name) {
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_statistics_enabled(path.clone(), EnabledStatistics::Chunk)
                .set_column_compression(path.clone(), Compression::UNCOMPRESSED)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        } else if SPLIT_NUMBERS.contains(&name) || SPLIT_COUNTS.contains(&name) {
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::BYTE_STREAM_SPLIT);
        }
    }
    let mut props = b.build();
    add_encoded_arrow_schema_to_metadata(schema, &mut props);
    props
}

/// The Parquet writer properties retrace uses for files of kind `R` (per-column encodings,
/// zstd, statistics, the key-value metadata of `meta`). For tools that write retrace files
/// with their own `ArrowWriter`, and for the benchmark.
pub fn writer_properties_for<R: Row>(meta: &FileMeta) -> WriterProperties {
    writer_properties(&R::schema(), &meta.to_key_values(R::KIND), 65_536)
}

fn sync_dir(dir: &Path) -> Result<(), TracesError> {
    // Directories cannot be opened for fsync on every platform; where they can, do it so
    // the rename itself is durable.
    if let Ok(d) = File::open(dir) {
        d.sync_all().map_err(io_err(dir))?;
    }
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes `rows` to `path` in one go, atomically: to `<path>.tmp`, fsync, rename, fsync dir.
pub fn write_file<R: Row>(path: &Path, rows: &[R], meta: &FileMeta) -> Result<(), TracesError> {
    let tmp = with_suffix(path, ".tmp");
    let schema = R::schema();
    let props = writer_properties(&schema, &meta.to_key_values(R::KIND), 65_536);
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(pq_err(&tmp))?;
        for chunk in rows.chunks(ENCODE_BATCH_ROWS) {
            let batch = R::to_batch(chunk)?;
            w.write(&batch).map_err(pq_err(&tmp))?;
        }
        w.finish().map_err(pq_err(&tmp))?;
        w.inner().sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        sync_dir(&parent_dir(path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The file being written by a [`RowWriter`].
struct OpenFile {
    tmp: PathBuf,
    final_path: PathBuf,
    writer: PacedWriter,
    opened: Instant,
    /// Rows in completed row groups.
    rows_in_groups: u64,
    /// Row groups completed since the footer sidecar was written.
    footer_stale: bool,
    /// Rows encoded into the in-progress row group.
    rows_in_progress: usize,
    /// Batches of the in-progress row group not yet in the journal.
    journal_pending: Vec<RecordBatch>,
    /// The open journal and the footer row count it started from.
    journal: Option<arrow_ipc::writer::StreamWriter<File>>,
}

/// A long-running writer of one row kind: batches rows, writes zstd Parquet with bounded
/// row groups, rotates files by size and age, and makes rows durable every
/// `flush_interval` so a crash loses at most that much (see the module docs).
///
/// Run one writer per `(dir, file_prefix)`: `create` treats every temp file of its prefix
/// in `dir` as left behind by a crash and recovers it.
pub struct RowWriter<R: Row> {
    opts: WriterOptions,
    schema: SchemaRef,
    props: WriterProperties,
    schema_descr: Arc<parquet::schema::types::SchemaDescriptor>,
    kv: Vec<(String, String)>,
    pending: Vec<R>,
    /// Scratch of `time_order`, reused across batches.
    order: Vec<u64>,
    order_scratch: Vec<u64>,
    order_idx: Vec<usize>,
    current: Option<OpenFile>,
    finished: Vec<PathBuf>,
    seq: u64,
    last_flush: Instant,
    rows_written: u64,
    bytes_finished: u64,
    recovery: RecoveryReport,
}

impl<R: Row> std::fmt::Debug for RowWriter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowWriter")
            .field("kind", &R::KIND)
            .field("dir", &self.opts.dir)
            .field("file_prefix", &self.opts.file_prefix)
            .field("rows_written", &self.rows_written)
            .finish()
    }
}

impl<R: Row> RowWriter<R> {
    /// Creates the directory, recovers stale temp files of this prefix (see
    /// [`RowWriter::recovery`]), and returns a writer. No file is created until rows come.
    pub fn create(opts: WriterOptions) -> Result<Self, TracesError> {
        fs::create_dir_all(&opts.dir).map_err(io_err(&opts.dir))?;
        let recovery = recover_matching(&opts.dir, Some(&opts.file_prefix))?;
        let schema = R::schema();
        let kv = opts.meta.to_key_values(R::KIND);
        let props = writer_properties(&schema, &kv, opts.max_rows_per_group);
        let schema_descr = Arc::new(
            ArrowSchemaConverter::new()
                .convert(&schema)
                .map_err(pq_err(&opts.dir))?,
        );
        Ok(RowWriter {
            schema,
            props,
            schema_descr,
            kv,
            pending: Vec::with_capacity(ENCODE_BATCH_ROWS),
            order: Vec::with_capacity(ENCODE_BATCH_ROWS),
            order_scratch: Vec::with_capacity(ENCODE_BATCH_ROWS),
            order_idx: Vec::with_capacity(ENCODE_BATCH_ROWS),
            current: None,
            finished: Vec::new(),
            seq: 0,
            last_flush: Instant::now(),
            rows_written: 0,
            bytes_finished: 0,
            recovery,
            opts,
        })
    }

    /// Adds one row. Rows are encoded in batches; call [`RowWriter::tick`] regularly.
    pub fn push(&mut self, row: R) -> Result<(), TracesError> {
        self.pending.push(row);
        self.rows_written += 1;
        if self.pending.len() >= ENCODE_BATCH_ROWS {
            self.encode_pending()?;
        }
        Ok(())
    }

    /// Flushes when `flush_interval` has passed since the last flush, and rotates the file
    /// when it is older than `max_file_age`. Cheap when there is nothing to do.
    pub fn tick(&mut self) -> Result<(), TracesError> {
        if self.last_flush.elapsed() >= self.opts.flush_interval {
            self.flush()?;
        }
        let too_old = self
            .current
            .as_ref()
            .is_some_and(|f| f.opened.elapsed() >= self.opts.max_file_age);
        if too_old {
            self.finish_file()?;
        }
        Ok(())
    }

    /// Makes every row pushed so far durable: recoverable after a crash.
    pub fn flush(&mut self) -> Result<(), TracesError> {
        self.last_flush = Instant::now();
        self.encode_pending()?;
        // Before a new journal: its base is the footer's row count.
        self.publish_footer()?;
        let Some(file) = self.current.as_mut() else {
            return Ok(());
        };
        if file.journal_pending.is_empty() {
            return Ok(());
        }
        let journal_path = with_suffix(&file.tmp, ".journal");
        if file.journal.is_none() {
            // A fresh journal replaces the previous one atomically: written aside, then
            // renamed, so a crash leaves either the old journal or the complete new one.
            let new_path = with_suffix(&file.tmp, ".journal.new");
            let mut md = self.schema.metadata().clone();
            for (k, v) in &self.kv {
                md.insert(k.clone(), v.clone());
            }
            md.insert(
                JOURNAL_BASE_ROWS.to_string(),
                file.rows_in_groups.to_string(),
            );
            let schema = self.schema.as_ref().clone().with_metadata(md);
            let f = File::create(&new_path).map_err(io_err(&new_path))?;
            let mut w = arrow_ipc::writer::StreamWriter::try_new(f, &schema)
                .map_err(|e| bad_file(&new_path, format!("journal: {e}")))?;
            for b in file.journal_pending.drain(..) {
                w.write(&b)
                    .map_err(|e| bad_file(&new_path, format!("journal: {e}")))?;
                pause();
            }
            w.flush()
                .map_err(|e| bad_file(&new_path, format!("journal: {e}")))?;
            w.get_ref().sync_data().map_err(io_err(&new_path))?;
            fs::rename(&new_path, &journal_path).map_err(io_err(&journal_path))?;
            file.journal = Some(w);
        } else if let Some(w) = file.journal.as_mut() {
            for b in file.journal_pending.drain(..) {
                w.write(&b)
                    .map_err(|e| bad_file(&journal_path, format!("journal: {e}")))?;
                pause();
            }
            w.flush()
                .map_err(|e| bad_file(&journal_path, format!("journal: {e}")))?;
            w.get_ref().sync_data().map_err(io_err(&journal_path))?;
        }
        Ok(())
    }

    /// Finishes the current file and returns every file finished by this writer, in order.
    pub fn close(mut self) -> Result<Vec<PathBuf>, TracesError> {
        self.encode_pending()?;
        self.finish_file()?;
        Ok(std::mem::take(&mut self.finished))
    }

    /// Rows pushed so far.
    pub fn rows_written(&self) -> u64 {
        self.rows_written
    }

    /// Bytes written to disk so far (finished files plus the current one's data).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_finished
            + self
                .current
                .as_ref()
                .map_or(0, |f| f.writer.bytes_written() as u64)
    }

    /// Memory held by the in-progress row group's encoders (uncompressed values,
    /// dictionaries, compressed pages; parquet's own estimate), excluding rows not yet
    /// encoded and batches waiting for the journal.
    pub fn buffered_bytes(&self) -> usize {
        self.current.as_ref().map_or(0, |f| f.writer.memory_size())
    }

    /// What [`RowWriter::create`] did with stale temp files of this prefix.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    fn open_file(&mut self) -> Result<&mut OpenFile, TracesError> {
        if self.current.is_none() {
            let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
            let (tmp, final_path) = loop {
                self.seq += 1;
                let name = format!("{}-{stamp}-{:04}.parquet", self.opts.file_prefix, self.seq);
                let final_path = self.opts.dir.join(&name);
                let tmp = with_suffix(&final_path, ".tmp");
                // Another writer of this prefix may have started in the same second.
                if !final_path.exists() && !tmp.exists() {
                    break (tmp, final_path);
                }
            };
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            let writer = PacedWriter::try_new(file, self.schema.clone(), self.props.clone())
                .map_err(pq_err(&tmp))?;
            sync_dir(&self.opts.dir)?;
            self.current = Some(OpenFile {
                tmp,
                final_path,
                writer,
                opened: Instant::now(),
                rows_in_groups: 0,
                footer_stale: false,
                rows_in_progress: 0,
                journal_pending: Vec::new(),
                journal: None,
            });
        }
        self.current
            .as_mut()
            .ok_or_else(|| bad_file(&self.opts.dir, "no open file"))
    }

    fn encode_pending(&mut self) -> Result<(), TracesError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // The proxy pushes a request when its response ends, so rows come nearly but not
        // quite in time order; sorting each batch makes files nearly sorted (better merges,
        // and ~1 byte a row less for the delta-encoded time column).
        let mut order_idx = std::mem::take(&mut self.order_idx);
        let sorted = time_order(
            &self.pending,
            &mut self.order,
            &mut self.order_scratch,
            &mut order_idx,
        )
        .is_some();
        let order = sorted.then_some(order_idx.as_slice());
        let result = self.encode_slices(order);
        self.order_idx = order_idx;
        // Cleared, not replaced: a fresh multi-MB buffer per batch costs a page fault per
        // 4 KiB on every batch.
        self.pending.clear();
        result
    }

    /// Encodes the pending rows, in `order` when given, a slice at a time: each slice is
    /// built into its own record batch and written, with a pause between slices (see
    /// `paced`), and the row group or file is completed when full.
    fn encode_slices(&mut self, order: Option<&[usize]>) -> Result<(), TracesError> {
        let total = self.pending.len();
        let mut offset = 0;
        while offset < total {
            let max_rows = self.opts.max_rows_per_group.max(1);
            let max_group_bytes = self.opts.max_row_group_bytes;
            let max_file_bytes = self.opts.max_file_bytes;
            let rows_in_progress = self.open_file()?.rows_in_progress;
            let room = max_rows - rows_in_progress.min(max_rows);
            let take = room.min(total - offset).clamp(1, ENCODE_SLICE_ROWS);
            let slice = match order {
                Some(order) => {
                    R::to_batch_ordered(&self.pending, Some(&order[offset..offset + take]))?
                }
                None => R::to_batch(&self.pending[offset..offset + take])?,
            };
            let file = self.open_file()?;
            file.writer.write(&slice).map_err(pq_err(&file.tmp))?;
            file.rows_in_progress += take;
            file.journal_pending.push(slice);
            offset += take;
            let group_full = file.rows_in_progress >= max_rows
                || file.writer.in_progress_size() as u64 >= max_group_bytes;
            let file_full = file.writer.bytes_written() as u64
                + file.writer.in_progress_size() as u64
                >= max_file_bytes;
            if file_full {
                self.finish_file()?;
            } else if group_full {
                self.complete_row_group()?;
            }
            if offset < total {
                pause();
            }
        }
        Ok(())
    }

    /// Ends the in-progress row group. Its footer sidecar waits for the next flush: until
    /// then the journal open now keeps the group's flushed rows recoverable, and its rows
    /// not flushed yet were never promised durable.
    fn complete_row_group(&mut self) -> Result<(), TracesError> {
        let Some(file) = self.current.as_mut() else {
            return Ok(());
        };
        if file.rows_in_progress == 0 {
            return Ok(());
        }
        file.writer
            .flush_group(&mut pause)
            .map_err(pq_err(&file.tmp))?;
        file.rows_in_groups += file.rows_in_progress as u64;
        file.rows_in_progress = 0;
        file.footer_stale = true;
        // The journal ends here (the next one starts after the footer's rows), and the
        // group's batches not in it are no longer needed for it.
        file.journal_pending.clear();
        file.journal = None;
        Ok(())
    }

    /// Fsyncs the completed row groups and publishes their footer sidecar, if any group
    /// completed since the last one.
    fn publish_footer(&mut self) -> Result<(), TracesError> {
        let Some(file) = self.current.as_mut() else {
            return Ok(());
        };
        if !file.footer_stale {
            return Ok(());
        }
        file.writer.sync().map_err(io_err(&file.tmp))?;
        file.writer.inner().sync_data().map_err(io_err(&file.tmp))?;
        let data_end = file.writer.bytes_written() as u64;
        let footer = footer_bytes(
            &self.props,
            &self.schema_descr,
            file.writer.flushed_row_groups().to_vec(),
            file.rows_in_groups,
        )
        .map_err(pq_err(&file.tmp))?;
        let sidecar = with_suffix(&file.tmp, ".footer");
        let new_path = with_suffix(&file.tmp, ".footer.new");
        let mut content = Vec::with_capacity(footer.len() + 24);
        content.extend_from_slice(FOOTER_MAGIC);
        content.extend_from_slice(&data_end.to_le_bytes());
        content.extend_from_slice(&file.rows_in_groups.to_le_bytes());
        content.extend_from_slice(&footer);
        let mut f = File::create(&new_path).map_err(io_err(&new_path))?;
        f.write_all(&content).map_err(io_err(&new_path))?;
        f.sync_data().map_err(io_err(&new_path))?;
        fs::rename(&new_path, &sidecar).map_err(io_err(&sidecar))?;
        file.footer_stale = false;
        Ok(())
    }

    /// Finishes the current file: footer, fsync, rename to `.parquet`, fsync dir, and
    /// removes its sidecars.
    fn finish_file(&mut self) -> Result<(), TracesError> {
        let Some(mut file) = self.current.take() else {
            return Ok(());
        };
        drop(file.journal.take());
        let total = file.rows_in_groups + file.rows_in_progress as u64;
        file.writer.finish(&mut pause).map_err(pq_err(&file.tmp))?;
        if total == 0 {
            let _ = fs::remove_file(&file.tmp);
            remove_sidecars(&file.tmp);
            return Ok(());
        }
        file.writer.inner().sync_all().map_err(io_err(&file.tmp))?;
        self.bytes_finished += file.writer.bytes_written() as u64;
        fs::rename(&file.tmp, &file.final_path).map_err(io_err(&file.final_path))?;
        sync_dir(&self.opts.dir)?;
        remove_sidecars(&file.tmp);
        self.finished.push(file.final_path);
        Ok(())
    }
}

impl<R: Row> Drop for RowWriter<R> {
    fn drop(&mut self) {
        // A writer dropped without `close` (an error path, a panic) still finishes its file
        // so the rows are not left to recovery; errors here have nowhere to go.
        if self.current.is_some() || !self.pending.is_empty() {
            let _ = self.encode_pending();
            let _ = self.finish_file();
        }
    }
}

/// The stable time order of `rows` as indices into them, or `None` when they are already
/// sorted. Rows are large structs: the batch is built in this order instead of moving
/// them. Each row's key is its time since the batch's earliest, shifted up, with its index
/// in the low bits, so ties are broken by the index (as stable as a stable sort); the keys
/// are radix-sorted (~60 instructions a row against ~750 for a comparison sort of
/// (time, index) pairs). The Vecs are reused scratch.
fn time_order<'a, R: Row>(
    rows: &[R],
    keys: &mut Vec<u64>,
    scratch: &mut Vec<u64>,
    idx: &'a mut Vec<usize>,
) -> Option<&'a [usize]> {
    if rows.is_sorted_by_key(R::time_us) {
        return None;
    }
    let (min, max) = rows
        .iter()
        .map(R::time_us)
        .fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let index_bits = usize::BITS - rows.len().leading_zeros();
    let span = max.abs_diff(min);
    if index_bits >= 64 || span >> (64 - index_bits) != 0 {
        // Times too far apart to share a word with the index (not from a real clock).
        idx.clear();
        idx.extend(0..rows.len());
        idx.sort_by_key(|&i| rows[i].time_us());
        return Some(idx);
    }
    keys.clear();
    keys.extend(
        rows.iter()
            .zip(0u64..)
            .map(|(row, i)| (row.time_us().abs_diff(min) << index_bits) | i),
    );
    // The index bits are already in order and the sort is stable: only the time bits are
    // sorted (a pass fewer for a batch spanning ~30 bits of µs).
    radix_sort(
        keys,
        scratch,
        index_bits,
        64 - (span << index_bits | mask_of(index_bits)).leading_zeros(),
    );
    let mask = mask_of(index_bits);
    idx.clear();
    idx.extend(keys.iter().map(|key| (key & mask) as usize));
    Some(idx)
}

fn mask_of(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Sorts `keys`, whose values use only the low `bits` bits, stably by their bits from
/// `from_bit` up, by LSD radix (11-bit digits): a few linear passes instead of a comparison
/// sort (a batch's keys span ~40 bits).
fn radix_sort(keys: &mut Vec<u64>, scratch: &mut Vec<u64>, from_bit: u32, bits: u32) {
    const DIGIT_BITS: u32 = 11;
    const BUCKETS: usize = 1 << DIGIT_BITS;
    scratch.clear();
    scratch.resize(keys.len(), 0);
    let mut shift = from_bit;
    while shift < bits {
        let mut counts = [0usize; BUCKETS];
        for &key in keys.iter() {
            counts[((key >> shift) as usize) & (BUCKETS - 1)] += 1;
        }
        let mut start = 0;
        for count in counts.iter_mut() {
            let n = *count;
            *count = start;
            start += n;
        }
        for &key in keys.iter() {
            let bucket = &mut counts[((key >> shift) as usize) & (BUCKETS - 1)];
            scratch[*bucket] = key;
            *bucket += 1;
        }
        std::mem::swap(keys, scratch);
        shift += DIGIT_BITS;
    }
}

fn remove_sidecars(tmp: &Path) {
    for suffix in [".footer", ".footer.new", ".journal", ".journal.new"] {
        let _ = fs::remove_file(with_suffix(tmp, suffix));
    }
}

fn footer_bytes(
    props: &WriterProperties,
    schema_descr: &Arc<parquet::schema::types::SchemaDescriptor>,
    row_groups: Vec<parquet::file::metadata::RowGroupMetaData>,
    rows: u64,
) -> parquet::errors::Result<Vec<u8>> {
    let file_meta = FileMetaData::new(
        props.writer_version().as_num(),
        i64::try_from(rows).unwrap_or(i64::MAX),
        Some(props.created_by().to_string()),
        props.key_value_metadata().cloned(),
        schema_descr.clone(),
        None,
    );
    let md = ParquetMetaData::new(file_meta, row_groups);
    let mut buf = Vec::new();
    ParquetMetaDataWriter::new(&mut buf, &md).finish()?;
    Ok(buf)
}

/// Recovers every stale `*.parquet.tmp` in `dir` (not recursive): rebuilds a `.parquet`
/// from the rows that were flushed, and removes what cannot be recovered.
pub fn recover_dir(dir: &Path) -> Result<RecoveryReport, TracesError> {
    recover_matching(dir, None)
}

fn recover_matching(dir: &Path, prefix: Option<&str>) -> Result<RecoveryReport, TracesError> {
    let mut report = RecoveryReport::default();
    let mut tmps = Vec::new();
    let mut orphans = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(p) = prefix {
            if !name.starts_with(&format!("{p}-")) {
                continue;
            }
        }
        if name.ends_with(".parquet.tmp") {
            tmps.push(entry.path());
        } else if name.contains(".parquet.tmp.") {
            orphans.push(entry.path());
        }
    }
    tmps.sort();
    for tmp in &tmps {
        report.merge(recover_one(tmp)?);
    }
    // Sidecars whose temp file is gone (a crash after the final rename) are stale.
    for path in orphans {
        let s = path.to_string_lossy();
        let owner = s.split(".parquet.tmp.").next().unwrap_or_default();
        if !Path::new(&format!("{owner}.parquet.tmp")).exists() {
            let _ = fs::remove_file(&path);
        }
    }
    Ok(report)
}

/// Reads the footer sidecar: (data length, rows, footer bytes).
fn read_footer_sidecar(path: &Path) -> Option<(u64, u64, Vec<u8>)> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() < 24 + 8 || &bytes[..8] != FOOTER_MAGIC {
        return None;
    }
    let data_end = u64::from_le_bytes(bytes[8..16].try_into().ok()?);
    let rows = u64::from_le_bytes(bytes[16..24].try_into().ok()?);
    Some((data_end, rows, bytes[24..].to_vec()))
}

/// Reads the complete batches of a journal (a torn last message is ignored).
fn read_journal(path: &Path) -> Option<(u64, SchemaRef, Vec<RecordBatch>)> {
    let f = File::open(path).ok()?;
    let reader = arrow_ipc::reader::StreamReader::try_new(BufReader::new(f), None).ok()?;
    let schema = reader.schema();
    let base = schema.metadata().get(JOURNAL_BASE_ROWS)?.parse().ok()?;
    let mut batches = Vec::new();
    for b in reader {
        match b {
            Ok(b) => batches.push(b),
            Err(_) => break,
        }
    }
    Some((base, schema, batches))
}

fn recover_one(tmp: &Path) -> Result<RecoveryReport, TracesError> {
    let mut report = RecoveryReport::default();
    let tmp_s = tmp.to_string_lossy();
    let final_path = PathBuf::from(tmp_s.trim_end_matches(".tmp"));
    let salvage = with_suffix(tmp, ".salvage");
    let _ = fs::remove_file(&salvage);

    // 1. The completed row groups: data up to the footer's length, then the footer.
    let mut group_rows = 0u64;
    let mut group_source: Option<(PathBuf, u64)> = None;
    if let Some((data_end, rows, footer)) = read_footer_sidecar(&with_suffix(tmp, ".footer")) {
        let ok = (|| -> std::io::Result<bool> {
            let mut src = File::open(tmp)?;
            if src.metadata()?.len() < data_end {
                return Ok(false);
            }
            let mut dst = File::create(&salvage)?;
            src.seek(SeekFrom::Start(0))?;
            std::io::copy(&mut (&mut src).take(data_end), &mut dst)?;
            dst.write_all(&footer)?;
            dst.sync_all()?;
            Ok(true)
        })()
        .unwrap_or(false);
        if ok && verify_parquet(&salvage) == Some(rows) {
            group_rows = rows;
            group_source = Some((salvage.clone(), rows));
        }
    }

    // 2. The journal's rows that are not in those row groups.
    let mut tail: Vec<RecordBatch> = Vec::new();
    let mut journal_schema = None;
    if let Some((base, schema, batches)) = read_journal(&with_suffix(tmp, ".journal")) {
        if base <= group_rows {
            let mut skip = group_rows - base;
            for b in batches {
                let n = b.num_rows() as u64;
                if skip >= n {
                    skip -= n;
                } else {
                    tail.push(b.slice(skip as usize, (n - skip) as usize));
                    skip = 0;
                }
            }
            journal_schema = Some(schema);
        }
    }
    let tail_rows: u64 = tail.iter().map(|b| b.num_rows() as u64).sum();

    if group_rows + tail_rows == 0 {
        let _ = fs::remove_file(&salvage);
        fs::remove_file(tmp).map_err(io_err(tmp))?;
        remove_sidecars(tmp);
        report.removed.push(tmp.to_path_buf());
        return Ok(report);
    }

    // 3. Rebuild one file: row groups re-read from the salvage, then the journal tail.
    let out_tmp = with_suffix(tmp, ".rebuild");
    let result = rebuild(
        &out_tmp,
        group_source.as_ref().map(|s| s.0.as_path()),
        journal_schema,
        tail,
    );
    let _ = fs::remove_file(&salvage);
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            let _ = fs::remove_file(&out_tmp);
            return Err(e);
        }
    };
    let mut target = final_path.clone();
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!(
            "{}-recovered{n}.parquet",
            final_path.to_string_lossy().trim_end_matches(".parquet")
        ));
        n += 1;
    }
    fs::rename(&out_tmp, &target).map_err(io_err(&target))?;
    sync_dir(&parent_dir(&target))?;
    fs::remove_file(tmp).map_err(io_err(tmp))?;
    remove_sidecars(tmp);
    report.salvaged.push(target);
    report.rows_salvaged += rows;
    Ok(report)
}

/// Reads a Parquet file fully; returns its row count when every batch decodes.
fn verify_parquet(path: &Path) -> Option<u64> {
    let f = File::open(path).ok()?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .ok()?
        .build()
        .ok()?;
    let mut rows = 0u64;
    for b in reader {
        rows += b.ok()?.num_rows() as u64;
    }
    Some(rows)
}

fn rebuild(
    out: &Path,
    groups: Option<&Path>,
    journal_schema: Option<SchemaRef>,
    tail: Vec<RecordBatch>,
) -> Result<u64, TracesError> {
    // Metadata comes from whichever source exists: the salvage file's footer, or the
    // journal's schema (which carries the same key-value pairs).
    let (schema, mut kv): (SchemaRef, Vec<(String, String)>) = match (groups, &journal_schema) {
        (Some(g), _) => {
            let f = File::open(g).map_err(io_err(g))?;
            let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(pq_err(g))?;
            let kv = b
                .metadata()
                .file_metadata()
                .key_value_metadata()
                .map(|kvs| {
                    kvs.iter()
                        .filter(|k| k.key != "ARROW:schema")
                        .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                        .collect()
                })
                .unwrap_or_default();
            (b.schema().clone(), kv)
        }
        (None, Some(s)) => {
            let mut kv: Vec<(String, String)> = s
                .metadata()
                .iter()
                .filter(|(k, _)| k.as_str() != JOURNAL_BASE_ROWS)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            kv.sort();
            (s.clone(), kv)
        }
        (None, None) => return Err(bad_file(out, "nothing to recover")),
    };
    if !kv.iter().any(|(k, _)| k == META_SCHEMA) {
        return Err(bad_file(out, "recovered data has no retrace.schema"));
    }
    kv.push((META_RECOVERED.to_string(), "true".to_string()));
    let mut md = schema.metadata().clone();
    md.remove(JOURNAL_BASE_ROWS);
    let schema = Arc::new(schema.as_ref().clone().with_metadata(md));
    let props = writer_properties(&schema, &kv, 65_536);
    let file = File::create(out).map_err(io_err(out))?;
    let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(pq_err(out))?;
    let mut rows = 0u64;
    if let Some(g) = groups {
        let f = File::open(g).map_err(io_err(g))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .and_then(|b| b.build())
            .map_err(pq_err(g))?;
        for b in reader {
            let b = b.map_err(|e| bad_file(g, e))?;
            let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec())?;
            rows += b.num_rows() as u64;
            w.write(&b).map_err(pq_err(out))?;
        }
    }
    for b in tail {
        let b = RecordBatch::try_new(schema.clone(), b.columns().to_vec())?;
        rows += b.num_rows() as u64;
        w.write(&b).map_err(pq_err(out))?;
    }
    w.finish().map_err(pq_err(out))?;
    w.inner().sync_all().map_err(io_err(out))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::rows::{SampleRow, SampleSource};

    fn sample(time_us: i64, tag: usize) -> SampleRow {
        SampleRow {
            time_us,
            source: SampleSource::Client,
            name: format!("row{tag}"),
            labels: String::new(),
            value: tag as f64,
        }
    }

    #[test]
    fn time_order_is_a_stable_sort() {
        // A deterministic pseudo-random sequence of times with many ties.
        // Spreads: many ties, a clock's µs, and times too far apart to pack with an index.
        let mut x = 0x1234_5678u64;
        for (n, spread) in [0usize, 1, 2, 7, 100, 1000]
            .into_iter()
            .flat_map(|n| [(n, 50u64), (n, 1 << 40), (n, u64::MAX)])
        {
            let rows: Vec<SampleRow> = (0..n)
                .map(|i| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let t = if spread == u64::MAX {
                        x as i64
                    } else {
                        1_733_011_200_000_000 - ((x >> 20) % spread) as i64
                    };
                    sample(t, i)
                })
                .collect();
            let mut expected = rows.clone();
            expected.sort_by_key(|r| r.time_us); // stable
            let (mut keys, mut scratch, mut idx) = (Vec::new(), Vec::new(), Vec::new());
            let batch = match time_order(&rows, &mut keys, &mut scratch, &mut idx) {
                Some(order) => SampleRow::to_batch_ordered(&rows, Some(order)).unwrap(),
                None => SampleRow::to_batch(&rows).unwrap(),
            };
            assert_eq!(SampleRow::from_batch(&batch).unwrap(), expected, "n = {n}");
            // Sorted rows need no order (scratch is reused).
            assert!(
                time_order(&expected, &mut keys, &mut scratch, &mut idx).is_none(),
                "n = {n}"
            );
        }
    }
}
