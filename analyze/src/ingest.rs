//! Reading runs: Parquet files (columns projected, aggregated in tight loops over Arrow
//! arrays) or in-memory rows (tests, the demo).

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, Float64Array, Int64Array, PrimitiveArray, RecordBatch,
    UInt32Array, UInt64Array,
};
use arrow_schema::DataType;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::ProjectionMask;
use retrace_traces::{ErrorKind, RequestRow, ResultRow, SampleRow, SampleSource};

use crate::agg::{kind_index, Agg, Batch, Col, Rec};
use crate::AnalyzeError;

/// What a Parquet file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    Results,
    Samples,
    Requests,
}

/// The files of one or more run directories (or files named directly).
#[derive(Debug, Default, Clone)]
pub(crate) struct RunFiles {
    pub results: Vec<PathBuf>,
    pub samples: Vec<PathBuf>,
    pub requests: Vec<PathBuf>,
}

fn kind_from_name(path: &Path) -> Option<FileKind> {
    let name = path.file_name()?.to_str()?;
    if !name.ends_with(".parquet") {
        return None;
    }
    if name.starts_with("results") {
        Some(FileKind::Results)
    } else if name.starts_with("samples") {
        Some(FileKind::Samples)
    } else if name.starts_with("requests") || name.starts_with("recording") {
        Some(FileKind::Requests)
    } else {
        None
    }
}

fn kind_from_columns(path: &Path) -> Result<FileKind, AnalyzeError> {
    let file = File::open(path).map_err(|source| AnalyzeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(path, e))?;
    let schema = builder.schema();
    let has = |n: &str| schema.field_with_name(n).is_ok();
    if has("intended_send_us") {
        Ok(FileKind::Results)
    } else if has("time_us") && has("value") {
        Ok(FileKind::Samples)
    } else if has("arrival_us") {
        Ok(FileKind::Requests)
    } else {
        Err(AnalyzeError::BadInput {
            path: path.to_path_buf(),
            message: "not a retrace results, samples or requests file".into(),
        })
    }
}

fn bad(path: &Path, e: impl std::fmt::Display) -> AnalyzeError {
    AnalyzeError::BadInput {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Expands directories into their Parquet files, by kind. Several shard directories merge.
pub(crate) fn expand(inputs: &[PathBuf]) -> Result<RunFiles, AnalyzeError> {
    let mut files = RunFiles::default();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|source| AnalyzeError::Io {
            path: input.clone(),
            source,
        })?;
        fn add(files: &mut RunFiles, path: PathBuf, kind: FileKind) {
            match kind {
                FileKind::Results => files.results.push(path),
                FileKind::Samples => files.samples.push(path),
                FileKind::Requests => files.requests.push(path),
            }
        }
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|source| AnalyzeError::Io {
                    path: input.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for path in entries {
                if let Some(kind) = kind_from_name(&path) {
                    add(&mut files, path, kind);
                } else if path.is_dir() {
                    // Shard sub-directories (shard-0/, shard-1/) of a sharded replay.
                    let sub = expand(std::slice::from_ref(&path))?;
                    files.results.extend(sub.results);
                    files.samples.extend(sub.samples);
                    files.requests.extend(sub.requests);
                }
            }
        } else {
            let kind = match kind_from_name(input) {
                Some(kind) => kind,
                None => kind_from_columns(input)?,
            };
            add(&mut files, input.clone(), kind);
        }
    }
    Ok(files)
}

/// Opens a Parquet file reading only `wanted` columns (those present).
fn open_projected(
    path: &Path,
    wanted: &[&str],
) -> Result<parquet::arrow::arrow_reader::ParquetRecordBatchReader, AnalyzeError> {
    let file = File::open(path).map_err(|source| AnalyzeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| bad(path, e))?;
    let schema = builder.schema().clone();
    let indices: Vec<usize> = wanted
        .iter()
        .filter_map(|n| schema.index_of(n).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| bad(path, e))
}

/// A numeric column of any integer or float type (the type is matched once per batch).
enum Num<'a> {
    I64(&'a arrow_array::Int64Array),
    U64(&'a arrow_array::UInt64Array),
    U32(&'a arrow_array::UInt32Array),
    F64(&'a arrow_array::Float64Array),
    Other(&'a ArrayRef),
    Missing,
}

impl<'a> Num<'a> {
    fn of(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<Num<'a>, AnalyzeError> {
        let Some(col) = batch.column_by_name(name) else {
            return Ok(Num::Missing);
        };
        Ok(match col.data_type() {
            DataType::Int64 => Num::I64(col.as_primitive::<Int64Type>()),
            DataType::UInt64 => Num::U64(col.as_primitive::<UInt64Type>()),
            DataType::UInt32 => Num::U32(col.as_primitive::<UInt32Type>()),
            DataType::Float64 => Num::F64(col.as_primitive::<Float64Type>()),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::Float32
            | DataType::Null => Num::Other(col),
            other => {
                return Err(bad(
                    path,
                    format!("column `{name}` has type {other}, expected a number"),
                ))
            }
        })
    }

    #[inline]
    fn f64(&self, i: usize) -> Option<f64> {
        match self {
            Num::I64(a) => a.is_valid(i).then(|| a.value(i) as f64),
            Num::U64(a) => a.is_valid(i).then(|| a.value(i) as f64),
            Num::U32(a) => a.is_valid(i).then(|| f64::from(a.value(i))),
            Num::F64(a) => a.is_valid(i).then(|| a.value(i)),
            Num::Other(a) => other_f64(a, i),
            Num::Missing => None,
        }
    }

    #[inline]
    fn i64(&self, i: usize) -> Option<i64> {
        match self {
            Num::I64(a) => a.is_valid(i).then(|| a.value(i)),
            Num::U64(a) => a.is_valid(i).then(|| a.value(i) as i64),
            Num::U32(a) => a.is_valid(i).then(|| i64::from(a.value(i))),
            _ => self.f64(i).map(|v| v as i64),
        }
    }

    #[inline]
    fn u64(&self, i: usize) -> Option<u64> {
        match self {
            Num::U64(a) => a.is_valid(i).then(|| a.value(i)),
            Num::U32(a) => a.is_valid(i).then(|| u64::from(a.value(i))),
            _ => self.i64(i).map(|v| v.max(0) as u64),
        }
    }

    #[inline]
    fn u32(&self, i: usize) -> Option<u32> {
        match self {
            Num::U32(a) => a.is_valid(i).then(|| a.value(i)),
            _ => self.u64(i).map(|v| v.min(u64::from(u32::MAX)) as u32),
        }
    }
}

fn other_f64(a: &ArrayRef, i: usize) -> Option<f64> {
    if !a.is_valid(i) {
        return None;
    }
    Some(match a.data_type() {
        DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
        DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
        DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
        DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
        DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
        DataType::Float32 => a.as_primitive::<Float32Type>().value(i).into(),
        _ => return None,
    })
}

/// A string column: plain, large, view or dictionary-encoded.
enum Str<'a> {
    Utf8(&'a arrow_array::StringArray),
    Large(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
    Dict {
        keys: Vec<usize>,
        array: &'a ArrayRef,
        values: Box<Str<'a>>,
    },
    Missing,
}

impl<'a> Str<'a> {
    fn of(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<Str<'a>, AnalyzeError> {
        match batch.column_by_name(name) {
            None => Ok(Str::Missing),
            Some(col) => Str::from_array(col, name, path),
        }
    }

    fn from_array(col: &'a ArrayRef, name: &str, path: &Path) -> Result<Str<'a>, AnalyzeError> {
        Ok(match col.data_type() {
            DataType::Utf8 => Str::Utf8(col.as_string::<i32>()),
            DataType::LargeUtf8 => Str::Large(col.as_string::<i64>()),
            DataType::Utf8View => Str::View(col.as_string_view()),
            DataType::Null => Str::Missing,
            DataType::Dictionary(_, _) => {
                let dict = col.as_any_dictionary();
                Str::Dict {
                    keys: dict.normalized_keys(),
                    array: col,
                    values: Box::new(Str::from_array(dict.values(), name, path)?),
                }
            }
            other => {
                return Err(bad(
                    path,
                    format!("column `{name}` has type {other}, expected text"),
                ))
            }
        })
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Str::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Str::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Str::View(a) => a.is_valid(i).then(|| a.value(i)),
            Str::Dict {
                keys,
                array,
                values,
            } => {
                if array.is_valid(i) {
                    values.get(keys[i])
                } else {
                    None
                }
            }
            Str::Missing => None,
        }
    }
}

/// Connect failures that come from the load client itself (out of sockets or ports),
/// not from the server.
pub(crate) fn client_side_connect(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "too many open files",
        "cannot assign requested address",
        "address not available",
        "emfile",
        "eaddrnotavail",
        "address already in use",
        "no buffer space",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Whether an error is the client's fault rather than the server's.
pub(crate) fn is_client_error(kind: ErrorKind, message: Option<&str>) -> bool {
    match kind {
        ErrorKind::Cancelled | ErrorKind::Other => true,
        ErrorKind::Connect => message.is_some_and(client_side_connect),
        _ => false,
    }
}

/// Which latency columns to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Basis {
    pub from_intended: bool,
}

/// The results columns the analysis reads, for one latency basis: only these are decoded.
fn result_columns(basis: Basis) -> [&'static str; 14] {
    let (ttft, e2e) = if basis.from_intended {
        ("ttft_from_intended_us", "e2e_from_intended_us")
    } else {
        ("ttft_us", "e2e_us")
    };
    [
        "intended_send_us",
        "lateness_us",
        "in_flight_at_send",
        "prompt_tokens",
        "output_tokens",
        "error_kind",
        "error_message",
        ttft,
        e2e,
        "tpot_us",
        "itl_count",
        "itl_p50_us",
        "phase",
        "load_level",
    ]
}

/// Rows per decoded batch: small enough that a batch's columns stay in cache and their
/// buffers are reused by the allocator instead of being mapped fresh (64 Ki-row batches
/// spent ~10% of the time zeroing new pages).
const BATCH_ROWS: usize = 8 * 1024;

/// One unit of parallel work: one row group of a results file.
#[derive(Debug, Clone)]
pub(crate) struct ResultsPart {
    path: PathBuf,
    meta: ArrowReaderMetadata,
    row_group: usize,
    /// Rows before this row group in the file (row numbers in errors are per file).
    first_row: u64,
    clock_speedup: f64,
}

/// Splits a results file into its row groups (the footer is read once and shared).
pub(crate) fn plan_results(path: &Path) -> Result<Vec<ResultsPart>, AnalyzeError> {
    let file = File::open(path).map_err(|source| AnalyzeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let meta =
        ArrowReaderMetadata::load(&file, ArrowReaderOptions::new()).map_err(|e| bad(path, e))?;
    // Lateness is the load generator's own timing error: judge it on the client's real
    // clock. Under `--clock-speedup K` the files hold it in the target's (K× faster) time.
    let clock_speedup = meta
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kvs| {
            kvs.iter()
                .find(|kv| kv.key == "retrace.clock_speedup")
                .and_then(|kv| kv.value.as_deref())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .filter(|k| k.is_finite() && *k > 0.0)
        .unwrap_or(1.0);
    let mut first_row = 0u64;
    let mut parts = Vec::new();
    for (row_group, rg) in meta.metadata().row_groups().iter().enumerate() {
        parts.push(ResultsPart {
            path: path.to_path_buf(),
            meta: meta.clone(),
            row_group,
            first_row,
            clock_speedup,
        });
        first_row += u64::try_from(rg.num_rows()).unwrap_or(0);
    }
    Ok(parts)
}

/// A numeric column as one Arrow type: the batch's own array when it already has that
/// type (a cheap reference-counted clone), else a converted copy. The row loop then reads
/// plain slices instead of matching on the column's type for every value.
fn typed<T: ArrowPrimitiveType>(
    n: usize,
    native: Option<&PrimitiveArray<T>>,
    get: impl Fn(usize) -> Option<T::Native>,
) -> PrimitiveArray<T> {
    match native {
        Some(a) => a.clone(),
        None => (0..n).map(get).collect(),
    }
}

/// Values and validity of a typed column.
struct View<'a, T: ArrowPrimitiveType> {
    values: &'a [T::Native],
    array: &'a PrimitiveArray<T>,
    has_nulls: bool,
}

impl<'a, T: ArrowPrimitiveType> View<'a, T> {
    fn of(a: &'a PrimitiveArray<T>) -> View<'a, T> {
        View {
            values: a.values(),
            array: a,
            // A null buffer without nulls is skipped: one branch less per value.
            has_nulls: a.null_count() > 0,
        }
    }

    #[inline(always)]
    fn get(&self, i: usize) -> Option<T::Native> {
        if self.has_nulls && self.array.is_null(i) {
            None
        } else {
            Some(self.values[i])
        }
    }
}

impl<'a> Num<'a> {
    fn as_i64(&self, n: usize) -> Int64Array {
        let native = match self {
            Num::I64(a) => Some(*a),
            _ => None,
        };
        typed(n, native, |i| self.i64(i))
    }

    fn as_u64(&self, n: usize) -> UInt64Array {
        let native = match self {
            Num::U64(a) => Some(*a),
            _ => None,
        };
        typed(n, native, |i| self.u64(i))
    }

    fn as_u32(&self, n: usize) -> UInt32Array {
        let native = match self {
            Num::U32(a) => Some(*a),
            _ => None,
        };
        typed(n, native, |i| self.u32(i))
    }

    fn as_f64(&self, n: usize) -> Float64Array {
        let native = match self {
            Num::F64(a) => Some(*a),
            _ => None,
        };
        typed(n, native, |i| self.f64(i))
    }
}

/// A lateness in the target's clock converted to the client's real clock (what
/// `(us as f64 / speedup) as i64` gives, without the division when it changes nothing).
#[inline]
fn real_clock(us: i64, clock_speedup: f64) -> i64 {
    // Below 2^53 an i64 round-trips through f64 exactly, and x / 1.0 == x.
    if clock_speedup == 1.0 && us.unsigned_abs() < 1 << 53 {
        us
    } else {
        (us as f64 / clock_speedup) as i64
    }
}

/// Whether a string column has no value in this batch (absent or all null).
fn all_null(batch: &RecordBatch, name: &str) -> bool {
    batch
        .column_by_name(name)
        .is_none_or(|c| c.null_count() == c.len())
}

/// Aggregates one row group of a results file.
pub(crate) fn read_results_part(
    part: &ResultsPart,
    agg: &mut Agg,
    basis: Basis,
) -> Result<u64, AnalyzeError> {
    let path = part.path.as_path();
    let file = File::open(path).map_err(|source| AnalyzeError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, part.meta.clone());
    let indices: Vec<usize> = result_columns(basis)
        .iter()
        .filter_map(|n| builder.schema().index_of(n).ok())
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), indices);
    let reader = builder
        .with_projection(mask)
        .with_row_groups(vec![part.row_group])
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| bad(path, e))?;
    let clock_speedup = part.clock_speedup;
    let [_, _, _, _, _, _, _, ttft_name, e2e_name, ..] = result_columns(basis);
    let mut rows = 0u64;
    let mut base_row = part.first_row;
    // Per-row vectors, reused batch after batch.
    let mut levels: Vec<u32> = Vec::with_capacity(BATCH_ROWS);
    let mut errors: Vec<u8> = Vec::new();
    let mut lateness_buf: Vec<i64> = Vec::new();
    let mut in_flight_buf: Vec<u32> = Vec::new();
    let mut prompt_buf: Vec<u32> = Vec::new();
    let mut itl_count_buf: Vec<u32> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(path, e))?;
        if batch.column_by_name("intended_send_us").is_none() {
            return Err(bad(path, "missing column `intended_send_us`"));
        }
        let n = batch.num_rows();
        let intended = Num::of(&batch, "intended_send_us", path)?.as_i64(n);
        let lateness = Num::of(&batch, "lateness_us", path)?.as_i64(n);
        let in_flight = Num::of(&batch, "in_flight_at_send", path)?.as_u32(n);
        let prompt = Num::of(&batch, "prompt_tokens", path)?.as_u32(n);
        let output = Num::of(&batch, "output_tokens", path)?.as_u32(n);
        let ttft = Num::of(&batch, ttft_name, path)?.as_u64(n);
        let e2e = Num::of(&batch, e2e_name, path)?.as_u64(n);
        let tpot = Num::of(&batch, "tpot_us", path)?.as_f64(n);
        let itl_count = Num::of(&batch, "itl_count", path)?.as_u32(n);
        let itl_p50 = Num::of(&batch, "itl_p50_us", path)?.as_u64(n);
        let load_level = Num::of(&batch, "load_level", path)?.as_f64(n);
        let (intended_v, load_level) = (View::of(&intended), View::of(&load_level));
        let error_kind = Str::of(&batch, "error_kind", path)?;
        let error_message = Str::of(&batch, "error_message", path)?;
        let no_errors = all_null(&batch, "error_kind");
        // Most rows have no error: test the validity bit before looking at any string.
        let error_nulls = batch
            .column_by_name("error_kind")
            .and_then(|c| c.logical_nulls());
        let phase = Str::of(&batch, "phase", path)?;
        let no_phase = all_null(&batch, "phase");
        // Row by row, in order (so that a bad row is reported as before): validity of the
        // send time, the level and the error of each row.
        levels.clear();
        errors.clear();
        let mut client_side_errors = 0u64;
        let mut last_key: Option<(Option<&str>, u64)> = None;
        let mut level = 0u32;
        for i in 0..n {
            if intended_v.get(i).is_none() {
                return Err(AnalyzeError::BadRow {
                    path: path.to_path_buf(),
                    row: base_row + i as u64 + 1,
                    field: "intended_send_us".into(),
                    message: "missing".into(),
                });
            }
            let ph = if no_phase { None } else { phase.get(i) };
            let ll = load_level.get(i).unwrap_or(1.0);
            let key = (ph, ll.to_bits());
            if last_key != Some(key) {
                level = u32::try_from(agg.level(ph, ll))
                    .map_err(|_| bad(path, "more than 2^32 load levels"))?;
                last_key = Some(key);
            }
            levels.push(level);
            if no_errors {
                continue;
            }
            let maybe_error = error_nulls.as_ref().is_none_or(|n| n.is_valid(i));
            let code = match if maybe_error { error_kind.get(i) } else { None } {
                None => 0,
                Some(s) => {
                    let kind = ErrorKind::parse(s).ok_or_else(|| AnalyzeError::BadRow {
                        path: path.to_path_buf(),
                        row: base_row + i as u64 + 1,
                        field: "error_kind".into(),
                        message: format!("unknown error kind `{s}`"),
                    })?;
                    // The message is only looked at for the few rows where it can matter.
                    if is_client_error(kind, error_message.get(i)) {
                        client_side_errors += 1;
                    }
                    1 + kind_index(kind) as u8
                }
            };
            errors.push(code);
        }
        if errors.iter().all(|&e| e == 0) {
            errors.clear();
        }
        let lateness_us: &[i64] = if clock_speedup == 1.0
            && lateness.null_count() == 0
            && lateness.values().iter().all(|v| v.unsigned_abs() < 1 << 53)
        {
            // real_clock would change nothing.
            lateness.values()
        } else {
            lateness_buf.clear();
            let v = View::of(&lateness);
            lateness_buf.extend((0..n).map(|i| real_clock(v.get(i).unwrap_or(0), clock_speedup)));
            &lateness_buf
        };
        agg.push_batch(&Batch {
            intended_send_us: intended.values(),
            lateness_us,
            in_flight_at_send: or_zero(&in_flight, &mut in_flight_buf),
            prompt_tokens: or_zero(&prompt, &mut prompt_buf),
            itl_count: or_zero(&itl_count, &mut itl_count_buf),
            output_tokens: col(&output),
            ttft_us: col(&ttft),
            e2e_us: col(&e2e),
            tpot_us: col(&tpot),
            itl_p50_us: col(&itl_p50),
            error: &errors,
            client_side_errors,
            level: &levels,
        });
        base_row += n as u64;
        rows += n as u64;
    }
    Ok(rows)
}

/// A column's values with missing ones as 0 (copied into `buf` only when some are missing).
fn or_zero<'a, T: ArrowPrimitiveType>(
    a: &'a PrimitiveArray<T>,
    buf: &'a mut Vec<T::Native>,
) -> &'a [T::Native] {
    if a.null_count() == 0 {
        return a.values();
    }
    let v = View::of(a);
    buf.clear();
    buf.extend((0..a.len()).map(|i| v.get(i).unwrap_or_default()));
    buf
}

/// A column as the batch aggregation reads it.
fn col<T: ArrowPrimitiveType>(a: &PrimitiveArray<T>) -> Col<'_, T::Native> {
    Col {
        values: a.values(),
        nulls: a.nulls().filter(|_| a.null_count() > 0),
    }
}

/// Aggregates one samples file.
pub(crate) fn read_samples(path: &Path, agg: &mut Agg) -> Result<u64, AnalyzeError> {
    let reader = open_projected(path, &["time_us", "source", "name", "labels", "value"])?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| bad(path, e))?;
        let time = Num::of(&batch, "time_us", path)?;
        let source = Str::of(&batch, "source", path)?;
        let name = Str::of(&batch, "name", path)?;
        let labels = Str::of(&batch, "labels", path)?;
        let value = Num::of(&batch, "value", path)?;
        if matches!(time, Num::Missing) || matches!(name, Str::Missing) {
            return Err(bad(path, "missing column `time_us` or `name`"));
        }
        for i in 0..batch.num_rows() {
            let (Some(t), Some(n), Some(v)) = (time.i64(i), name.get(i), value.f64(i)) else {
                continue;
            };
            let src = source
                .get(i)
                .and_then(SampleSource::parse)
                .unwrap_or(SampleSource::Server);
            agg.push_sample(t, src, n, labels.get(i).unwrap_or(""), v);
        }
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// What the analysis needs of a production recording.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProductionRow {
    pub arrival_us: i64,
    pub prompt_tokens: Option<u32>,
    pub output_tokens: Option<u32>,
    pub ttft_us: Option<u64>,
    pub e2e_us: Option<u64>,
    pub ok: bool,
}

/// Reads the columns of a production recording that the comparison uses.
pub(crate) fn read_requests(
    path: &Path,
    out: &mut dyn FnMut(ProductionRow),
) -> Result<u64, AnalyzeError> {
    let reader = open_projected(
        path,
        &[
            "arrival_us",
            "prompt_tokens",
            "output_tokens",
            "ttft_us",
            "e2e_us",
            "outcome",
        ],
    )?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| bad(path, e))?;
        let arrival = Num::of(&batch, "arrival_us", path)?;
        if matches!(arrival, Num::Missing) {
            return Err(bad(
                path,
                "missing column `arrival_us`: not a request recording",
            ));
        }
        let prompt = Num::of(&batch, "prompt_tokens", path)?;
        let output = Num::of(&batch, "output_tokens", path)?;
        let ttft = Num::of(&batch, "ttft_us", path)?;
        let e2e = Num::of(&batch, "e2e_us", path)?;
        let outcome = Str::of(&batch, "outcome", path)?;
        for i in 0..batch.num_rows() {
            let Some(a) = arrival.i64(i) else { continue };
            out(ProductionRow {
                arrival_us: a,
                prompt_tokens: prompt.u32(i),
                output_tokens: output.u32(i),
                ttft_us: ttft.u64(i),
                e2e_us: e2e.u64(i),
                ok: outcome.get(i).is_none_or(|o| o == "ok"),
            });
        }
        rows += batch.num_rows() as u64;
    }
    Ok(rows)
}

/// Converts an in-memory result row to the hot-loop record.
pub(crate) fn rec_of_row(agg: &mut Agg, row: &ResultRow, basis: Basis) -> Rec {
    let level = agg.level(row.phase.as_deref(), row.load_level);
    Rec {
        intended_send_us: row.intended_send_us,
        lateness_us: row.lateness_us,
        in_flight_at_send: row.in_flight_at_send,
        prompt_tokens: row.prompt_tokens,
        output_tokens: row.output_tokens,
        error: row.error_kind,
        client_side_error: row
            .error_kind
            .is_some_and(|k| is_client_error(k, row.error_message.as_deref())),
        ttft_us: if basis.from_intended {
            row.ttft_from_intended_us
        } else {
            row.ttft_us
        },
        e2e_us: if basis.from_intended {
            row.e2e_from_intended_us
        } else {
            row.e2e_us
        },
        tpot_us: row.tpot_us,
        itl_p50_us: row.itl.map(|g| g.p50_us),
        itl_count: row.itl.map_or(0, |g| g.count),
        level,
    }
}

/// Adds an in-memory sample.
pub(crate) fn push_sample_row(agg: &mut Agg, s: &SampleRow) {
    agg.push_sample(s.time_us, s.source, &s.name, &s.labels, s.value);
}

/// Converts an in-memory request row.
pub(crate) fn production_of_row(r: &RequestRow) -> ProductionRow {
    ProductionRow {
        arrival_us: r.arrival_us,
        prompt_tokens: r.prompt_tokens,
        output_tokens: r.output_tokens,
        ttft_us: r.ttft_us,
        e2e_us: r.e2e_us,
        ok: r.outcome == retrace_traces::Outcome::Ok,
    }
}
