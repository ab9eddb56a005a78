//! Versioned Arrow schemas of the three row kinds, and their conversions to and from Arrow
//! record batches. `docs/schema.md` documents every column.
//!
//! Conventions: enums are stored as UTF-8 strings (the `as_str()` of `rows.rs`), optional
//! fields are nullable columns, the ITL summary is flattened into `itl_*` columns, and
//! `prefix_hashes` is a `List<UInt64>`. Readers accept older or newer files of the same
//! major version: a missing *nullable* column reads as all-null, unknown columns are
//! ignored, strings may be dictionary-encoded and integers may be of any integer width.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, ListArray, PrimitiveArray, RecordBatch, StringArray, UInt64Array,
};
use arrow_buffer::{BooleanBufferBuilder, NullBuffer, OffsetBuffer};
use arrow_schema::{ArrowError, DataType, Field, FieldRef, Schema, SchemaRef};

use crate::rows::{
    Endpoint, ErrorKind, Outcome, RequestRow, ResultRow, SampleRow, SampleSource, TokenSource,
};
use crate::{GapSummary, TracesError, SCHEMA_VERSION};

/// Metadata key holding the row kind (`request`, `result`, `sample`).
pub const META_SCHEMA: &str = "retrace.schema";
/// Metadata key holding the schema version (`major.minor`).
pub const META_SCHEMA_VERSION: &str = "retrace.schema_version";
/// Metadata key holding the program that wrote the file.
pub const META_PRODUCER: &str = "retrace.producer";
/// Metadata key holding the prefix block size, in tokens.
pub const META_PREFIX_BLOCK_TOKENS: &str = "retrace.prefix_block_tokens";
/// Metadata key holding the recording start, UTC µs.
pub const META_START_US: &str = "retrace.start_us";
/// Metadata key holding the host that recorded.
pub const META_HOST: &str = "retrace.host";

/// One row kind with its versioned Arrow schema.
pub trait Row: Sized + Send + 'static {
    /// `request`, `result` or `sample`: stored as `retrace.schema`.
    const KIND: &'static str;
    /// The Arrow schema, with metadata `retrace.schema` and `retrace.schema_version`.
    fn schema() -> SchemaRef;
    /// Converts rows to one record batch of [`Row::schema`].
    fn to_batch(rows: &[Self]) -> Result<RecordBatch, TracesError> {
        Self::to_batch_ordered(rows, None)
    }
    /// Converts `rows` to one record batch of [`Row::schema`], taken in `order` (indices
    /// into `rows`) when given: the writer sorts a batch by time without moving the rows.
    /// Panics if an index is out of bounds.
    fn to_batch_ordered(rows: &[Self], order: Option<&[usize]>)
        -> Result<RecordBatch, TracesError>;
    /// Converts a record batch back to rows; missing nullable columns read as nulls.
    /// Errors name the column: `TracesError::BadFile` for a missing or mistyped column,
    /// `TracesError::BadInput` for a bad value, with `line` the 0-based row in the batch;
    /// both with an empty path, which the readers of `read` fill in (and make the row
    /// 1-based within the file).
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, TracesError>;
    /// The merge key: `arrival_us`, `intended_send_us` or `time_us`.
    fn time_us(&self) -> i64;
}

/// File-level metadata, stored as Parquet key-value metadata.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileMeta {
    /// The program that wrote the file (e.g. `retrace-proxy 0.1.0`).
    pub producer: String,
    /// Prefix block size in tokens, for files with `prefix_hashes`.
    pub prefix_block_tokens: Option<u32>,
    /// When the recording started, UTC µs.
    pub start_us: Option<i64>,
    /// The host that recorded.
    pub host: Option<String>,
    /// Other keys, written verbatim.
    pub extra: Vec<(String, String)>,
}

impl FileMeta {
    /// The key-value pairs written for a file of `kind`, retrace keys first.
    pub fn to_key_values(&self, kind: &str) -> Vec<(String, String)> {
        let mut kv = vec![
            (META_SCHEMA.to_string(), kind.to_string()),
            (META_SCHEMA_VERSION.to_string(), SCHEMA_VERSION.to_string()),
            (META_PRODUCER.to_string(), self.producer.clone()),
        ];
        if let Some(tokens) = self.prefix_block_tokens {
            kv.push((META_PREFIX_BLOCK_TOKENS.to_string(), tokens.to_string()));
        }
        if let Some(start) = self.start_us {
            kv.push((META_START_US.to_string(), start.to_string()));
        }
        if let Some(host) = &self.host {
            kv.push((META_HOST.to_string(), host.clone()));
        }
        for (k, v) in &self.extra {
            kv.push((k.clone(), v.clone()));
        }
        kv
    }

    /// Parses key-value pairs back into `(kind, FileMeta)`. Keys other than the retrace
    /// ones (and `ARROW:schema`) land in `extra`. `kind` is `None` when the file has no
    /// `retrace.schema` key. Errors are plain messages; the caller adds the path.
    pub fn from_key_values<'a>(
        kvs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(Option<String>, Option<String>, FileMeta), String> {
        let mut kind = None;
        let mut version = None;
        let mut meta = FileMeta::default();
        for (k, v) in kvs {
            match k {
                META_SCHEMA => kind = Some(v.to_string()),
                META_SCHEMA_VERSION => version = Some(v.to_string()),
                META_PRODUCER => meta.producer = v.to_string(),
                META_PREFIX_BLOCK_TOKENS => {
                    meta.prefix_block_tokens = Some(v.parse().map_err(|_| {
                        format!("metadata `{META_PREFIX_BLOCK_TOKENS}`: not a u32: {v:?}")
                    })?)
                }
                META_START_US => {
                    meta.start_us =
                        Some(v.parse().map_err(|_| {
                            format!("metadata `{META_START_US}`: not an i64: {v:?}")
                        })?)
                }
                META_HOST => meta.host = Some(v.to_string()),
                "ARROW:schema" => {}
                _ => meta.extra.push((k.to_string(), v.to_string())),
            }
        }
        Ok((kind, version, meta))
    }
}

/// Checks that a stored schema version can be read by this build: the major version must
/// not be newer than ours. Returns a plain message; the caller adds the path.
pub fn check_version(stored: &str) -> Result<(), String> {
    let major = |v: &str| -> Option<u32> { v.split('.').next()?.trim().parse().ok() };
    let ours = major(SCHEMA_VERSION).unwrap_or(1);
    match major(stored) {
        Some(theirs) if theirs <= ours => Ok(()),
        Some(theirs) => Err(format!(
            "schema version {stored} (major {theirs}) is newer than this retrace understands \
             ({SCHEMA_VERSION}); upgrade retrace to read it"
        )),
        None => Err(format!("unreadable schema version {stored:?}")),
    }
}

fn schema_with(kind: &str, fields: Vec<Field>) -> SchemaRef {
    let metadata = [
        (META_SCHEMA.to_string(), kind.to_string()),
        (META_SCHEMA_VERSION.to_string(), SCHEMA_VERSION.to_string()),
    ]
    .into_iter()
    .collect();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

fn f(name: &str, data_type: DataType, nullable: bool) -> Field {
    Field::new(name, data_type, nullable)
}

fn prefix_hashes_item() -> FieldRef {
    Arc::new(Field::new("item", DataType::UInt64, false))
}

fn prefix_hashes_type() -> DataType {
    DataType::List(prefix_hashes_item())
}

fn itl_fields() -> [Field; 5] {
    [
        f("itl_count", DataType::UInt32, true),
        f("itl_mean_us", DataType::UInt64, true),
        f("itl_p50_us", DataType::UInt64, true),
        f("itl_p99_us", DataType::UInt64, true),
        f("itl_max_us", DataType::UInt64, true),
    ]
}

/// A column-level problem (missing, wrong type). The path is filled in by the reader.
fn bad(column: &str, message: impl std::fmt::Display) -> TracesError {
    TracesError::BadFile {
        path: std::path::PathBuf::new(),
        message: format!("column `{column}`: {message}"),
    }
}

/// A bad value at a row of the batch (0-based here; the reader makes it 1-based within
/// the file and fills in the path).
fn bad_row(column: &str, row: usize, message: impl std::fmt::Display) -> TracesError {
    TracesError::BadInput {
        path: std::path::PathBuf::new(),
        line: row as u64,
        field: column.to_string(),
        message: message.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Column readers tolerant of type variations (any integer width, dictionary strings).

/// A string column, plain or dictionary-encoded.
enum StrCol<'a> {
    Utf8(&'a arrow_array::StringArray),
    Large(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
    Dict {
        keys: Vec<usize>,
        nulls: Option<arrow_buffer::NullBuffer>,
        values: Box<StrCol<'a>>,
    },
    Missing,
}

impl<'a> StrCol<'a> {
    fn new(array: &'a ArrayRef, name: &str) -> Result<Self, TracesError> {
        Ok(match array.data_type() {
            DataType::Utf8 => StrCol::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => StrCol::Large(array.as_string::<i64>()),
            DataType::Utf8View => StrCol::View(array.as_string_view()),
            DataType::Dictionary(_, _) => {
                let dict = array
                    .as_any_dictionary_opt()
                    .ok_or_else(|| bad(name, "unreadable dictionary"))?;
                let values = StrCol::new(dict.values(), name)?;
                StrCol::Dict {
                    keys: dict.normalized_keys(),
                    nulls: array.logical_nulls(),
                    values: Box::new(values),
                }
            }
            other => {
                return Err(bad(
                    name,
                    format!("expected a string column, found {other}"),
                ))
            }
        })
    }

    fn get(&self, i: usize) -> Option<&str> {
        match self {
            StrCol::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            StrCol::Large(a) => a.is_valid(i).then(|| a.value(i)),
            StrCol::View(a) => a.is_valid(i).then(|| a.value(i)),
            StrCol::Dict {
                keys,
                nulls,
                values,
            } => {
                if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                    None
                } else {
                    values.get(*keys.get(i)?)
                }
            }
            StrCol::Missing => None,
        }
    }
}

/// An integer column of any width, read as i128 so every conversion is range-checked.
struct IntCol<'a> {
    array: Option<&'a ArrayRef>,
}

impl<'a> IntCol<'a> {
    fn new(array: &'a ArrayRef, name: &str) -> Result<Self, TracesError> {
        match array.data_type() {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Null => Ok(IntCol { array: Some(array) }),
            other => Err(bad(
                name,
                format!("expected an integer column, found {other}"),
            )),
        }
    }

    fn get(&self, i: usize) -> Option<i128> {
        let a = self.array?;
        if a.is_null(i) {
            return None;
        }
        Some(match a.data_type() {
            DataType::Int8 => a.as_primitive::<Int8Type>().value(i).into(),
            DataType::Int16 => a.as_primitive::<Int16Type>().value(i).into(),
            DataType::Int32 => a.as_primitive::<Int32Type>().value(i).into(),
            DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
            DataType::UInt8 => a.as_primitive::<UInt8Type>().value(i).into(),
            DataType::UInt16 => a.as_primitive::<UInt16Type>().value(i).into(),
            DataType::UInt32 => a.as_primitive::<UInt32Type>().value(i).into(),
            DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).into(),
            _ => return None,
        })
    }
}

/// Accessor of one batch's columns by name, with errors that name the column and row.
struct Cols<'a> {
    batch: &'a RecordBatch,
}

impl<'a> Cols<'a> {
    fn column(&self, name: &str, nullable: bool) -> Result<Option<&'a ArrayRef>, TracesError> {
        match self.batch.column_by_name(name) {
            Some(c) => Ok(Some(c)),
            None if nullable => Ok(None),
            None => Err(bad(name, "missing required column")),
        }
    }

    fn strings(&self, name: &str, nullable: bool) -> Result<StrCol<'a>, TracesError> {
        match self.column(name, nullable)? {
            Some(c) if c.data_type() == &DataType::Null => Ok(StrCol::Missing),
            Some(c) => StrCol::new(c, name),
            None => Ok(StrCol::Missing),
        }
    }

    fn ints(&self, name: &str, nullable: bool) -> Result<IntCol<'a>, TracesError> {
        match self.column(name, nullable)? {
            Some(c) => IntCol::new(c, name),
            None => Ok(IntCol { array: None }),
        }
    }

    fn floats(&self, name: &str, nullable: bool) -> Result<FloatCol<'a>, TracesError> {
        match self.column(name, nullable)? {
            Some(c) => match c.data_type() {
                DataType::Float64 | DataType::Float32 | DataType::Null => {
                    Ok(FloatCol { array: Some(c) })
                }
                other => Err(bad(name, format!("expected a float column, found {other}"))),
            },
            None => Ok(FloatCol { array: None }),
        }
    }

    fn bools(&self, name: &str) -> Result<&'a arrow_array::BooleanArray, TracesError> {
        let c = self
            .column(name, false)?
            .ok_or_else(|| bad(name, "missing"))?;
        c.as_boolean_opt().ok_or_else(|| {
            bad(
                name,
                format!("expected a boolean column, found {}", c.data_type()),
            )
        })
    }

    fn lists(&self, name: &str) -> Result<Option<&'a ArrayRef>, TracesError> {
        match self.column(name, true)? {
            Some(c) => match c.data_type() {
                DataType::List(_) | DataType::LargeList(_) | DataType::Null => Ok(Some(c)),
                other => Err(bad(name, format!("expected a list column, found {other}"))),
            },
            None => Ok(None),
        }
    }
}

struct FloatCol<'a> {
    array: Option<&'a ArrayRef>,
}

impl FloatCol<'_> {
    fn get(&self, i: usize) -> Option<f64> {
        let a = self.array?;
        if a.is_null(i) {
            return None;
        }
        match a.data_type() {
            DataType::Float64 => Some(a.as_primitive::<Float64Type>().value(i)),
            DataType::Float32 => Some(a.as_primitive::<Float32Type>().value(i).into()),
            _ => None,
        }
    }
}

fn req<T>(v: Option<T>, column: &str, row: usize) -> Result<T, TracesError> {
    v.ok_or_else(|| bad_row(column, row, "null in a required column"))
}

fn conv<T: TryFrom<i128>>(
    v: Option<i128>,
    column: &str,
    row: usize,
) -> Result<Option<T>, TracesError> {
    match v {
        None => Ok(None),
        Some(x) => T::try_from(x)
            .map(Some)
            .map_err(|_| bad_row(column, row, format!("value {x} out of range"))),
    }
}

fn itl_get(cols: &[IntCol<'_>; 5], row: usize) -> Result<Option<GapSummary>, TracesError> {
    let Some(count) = conv::<u32>(cols[0].get(row), "itl_count", row)? else {
        return Ok(None);
    };
    let names = ["itl_mean_us", "itl_p50_us", "itl_p99_us", "itl_max_us"];
    let mut v = [0u64; 4];
    for (k, name) in names.iter().enumerate() {
        v[k] = conv::<u64>(cols[k + 1].get(row), name, row)?.unwrap_or(0);
    }
    Ok(Some(GapSummary {
        count,
        mean_us: v[0],
        p50_us: v[1],
        p99_us: v[2],
        max_us: v[3],
    }))
}

fn itl_cols<'a>(c: &Cols<'a>) -> Result<[IntCol<'a>; 5], TracesError> {
    Ok([
        c.ints("itl_count", true)?,
        c.ints("itl_mean_us", true)?,
        c.ints("itl_p50_us", true)?,
        c.ints("itl_p99_us", true)?,
        c.ints("itl_max_us", true)?,
    ])
}

// ---------------------------------------------------------------------------------------
// Column buffers of `to_batch`: plain Vecs filled row by row, then handed to Arrow without
// a copy. Arrow's builders cost a call and a validity bit per value (~40 instructions a
// value, 1,460 a request row); a push costs a few, and a validity bitmap is built only for
// a column that has nulls.

/// A primitive column. Nulls are kept as positions: most columns have few or none.
struct PrimBuf<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    nulls: Vec<usize>,
}

impl<T: ArrowPrimitiveType> PrimBuf<T> {
    fn new(n: usize) -> Self {
        PrimBuf {
            values: Vec::with_capacity(n),
            nulls: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, v: T::Native) {
        self.values.push(v);
    }

    #[inline]
    fn push_opt(&mut self, v: Option<T::Native>) {
        match v {
            Some(v) => self.values.push(v),
            None => {
                self.nulls.push(self.values.len());
                self.values.push(T::Native::default());
            }
        }
    }

    fn finish(self) -> ArrayRef {
        let nulls = validity(self.values.len(), &self.nulls);
        Arc::new(PrimitiveArray::<T>::new(self.values.into(), nulls))
    }
}

/// The validity of `len` values of which those at `nulls` (ascending) are null.
fn validity(len: usize, nulls: &[usize]) -> Option<NullBuffer> {
    if nulls.is_empty() {
        return None;
    }
    if nulls.len() == len {
        return Some(NullBuffer::new_null(len));
    }
    let mut bits = BooleanBufferBuilder::new(len);
    bits.append_n(len, true);
    for &i in nulls {
        bits.set_bit(i, false);
    }
    Some(NullBuffer::new(bits.finish()))
}

/// A UTF-8 column: concatenated bytes and i32 offsets.
struct StrBuf {
    offsets: Vec<i32>,
    bytes: Vec<u8>,
    nulls: Vec<usize>,
}

impl StrBuf {
    fn new(n: usize, bytes_per_row: usize) -> Self {
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        StrBuf {
            offsets,
            bytes: Vec::with_capacity(n * bytes_per_row),
            nulls: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, s: &str) {
        self.bytes.extend_from_slice(s.as_bytes());
        // Truncates only past 2 GiB, which `finish` rejects.
        self.offsets.push(self.bytes.len() as i32);
    }

    #[inline]
    fn push_opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.push(s),
            None => {
                self.nulls.push(self.offsets.len() - 1);
                self.offsets.push(self.bytes.len() as i32);
            }
        }
    }

    fn finish(self) -> Result<ArrayRef, TracesError> {
        let len = self.offsets.len() - 1;
        if self.nulls.len() == len {
            // Nothing to validate (columns a recording never sets: content, sessions).
            return Ok(Arc::new(StringArray::new_null(len)));
        }
        check_offset(self.bytes.len())?;
        let nulls = validity(len, &self.nulls);
        let offsets = OffsetBuffer::new(self.offsets.into());
        Ok(Arc::new(StringArray::try_new(
            offsets,
            self.bytes.into(),
            nulls,
        )?))
    }
}

/// Arrow's `Utf8` and `List` offsets are i32: a batch holds at most 2 GiB of a column.
fn check_offset(len: usize) -> Result<(), TracesError> {
    match i32::try_from(len) {
        Ok(_) => Ok(()),
        Err(_) => Err(ArrowError::OffsetOverflowError(len).into()),
    }
}

/// The `prefix_hashes` list column (never null; an empty list when a row has no hashes).
struct HashesBuf {
    offsets: Vec<i32>,
    values: Vec<u64>,
}

impl HashesBuf {
    fn new(n: usize) -> Self {
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        HashesBuf {
            offsets,
            values: Vec::with_capacity(n * 4),
        }
    }

    #[inline]
    fn push(&mut self, hashes: &[u64]) {
        self.values.extend_from_slice(hashes);
        // Truncates only past 2^31 values, which `finish` rejects.
        self.offsets.push(self.values.len() as i32);
    }

    fn finish(self) -> Result<ArrayRef, TracesError> {
        check_offset(self.values.len())?;
        let values = UInt64Array::new(self.values.into(), None);
        Ok(Arc::new(ListArray::try_new(
            prefix_hashes_item(),
            OffsetBuffer::new(self.offsets.into()),
            Arc::new(values),
            None,
        )?))
    }
}

/// The five flat ITL columns.
struct ItlBufs {
    count: PrimBuf<UInt32Type>,
    mean: PrimBuf<UInt64Type>,
    p50: PrimBuf<UInt64Type>,
    p99: PrimBuf<UInt64Type>,
    max: PrimBuf<UInt64Type>,
}

impl ItlBufs {
    fn new(n: usize) -> Self {
        ItlBufs {
            count: PrimBuf::new(n),
            mean: PrimBuf::new(n),
            p50: PrimBuf::new(n),
            p99: PrimBuf::new(n),
            max: PrimBuf::new(n),
        }
    }

    #[inline]
    fn push(&mut self, itl: Option<&GapSummary>) {
        self.count.push_opt(itl.map(|g| g.count));
        self.mean.push_opt(itl.map(|g| g.mean_us));
        self.p50.push_opt(itl.map(|g| g.p50_us));
        self.p99.push_opt(itl.map(|g| g.p99_us));
        self.max.push_opt(itl.map(|g| g.max_us));
    }

    fn finish(self) -> [ArrayRef; 5] {
        [
            self.count.finish(),
            self.mean.finish(),
            self.p50.finish(),
            self.p99.finish(),
            self.max.finish(),
        ]
    }
}

/// Rows in batch order: `rows[order[k]]` when an order is given, else `rows` as they are.
#[derive(Clone, Copy)]
struct Ordered<'a, R> {
    rows: &'a [R],
    order: Option<&'a [usize]>,
}

impl<'a, R> Ordered<'a, R> {
    fn new(rows: &'a [R], order: Option<&'a [usize]>) -> Self {
        Ordered { rows, order }
    }

    fn len(&self) -> usize {
        self.order.map_or(self.rows.len(), <[usize]>::len)
    }

    fn iter(&self) -> OrderedIter<'a, R> {
        OrderedIter {
            rows: self.rows,
            order: self.order,
            next: 0,
            len: self.len(),
        }
    }
}

struct OrderedIter<'a, R> {
    rows: &'a [R],
    order: Option<&'a [usize]>,
    next: usize,
    len: usize,
}

impl<'a, R> Iterator for OrderedIter<'a, R> {
    type Item = &'a R;

    #[inline]
    fn next(&mut self) -> Option<&'a R> {
        if self.next >= self.len {
            return None;
        }
        let k = self.next;
        self.next += 1;
        Some(match self.order {
            Some(order) => &self.rows[order[k]],
            None => &self.rows[k],
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len - self.next;
        (left, Some(left))
    }
}

// ---------------------------------------------------------------------------------------
// request

impl Row for RequestRow {
    const KIND: &'static str = "request";

    fn schema() -> SchemaRef {
        let mut fields = vec![
            f("request_id", DataType::Utf8, false),
            f("arrival_us", DataType::Int64, false),
            f("session_id", DataType::Utf8, true),
            f("endpoint", DataType::Utf8, false),
            f("model", DataType::Utf8, true),
            f("stream", DataType::Boolean, false),
            f("prompt_tokens", DataType::UInt32, true),
            f("prompt_tokens_source", DataType::Utf8, false),
            f("max_tokens", DataType::UInt32, true),
            f("message_count", DataType::UInt32, true),
            f("output_tokens", DataType::UInt32, true),
            f("output_tokens_source", DataType::Utf8, false),
            f("prefix_hashes", prefix_hashes_type(), false),
            f("status", DataType::UInt16, true),
            f("outcome", DataType::Utf8, false),
            f("ttfb_us", DataType::UInt64, true),
            f("ttft_us", DataType::UInt64, true),
            f("e2e_us", DataType::UInt64, true),
            f("chunk_count", DataType::UInt32, true),
        ];
        fields.extend(itl_fields());
        fields.extend([
            f("request_bytes", DataType::UInt64, true),
            f("response_bytes", DataType::UInt64, true),
            f("finish_reason", DataType::Utf8, true),
            f("prompt_text", DataType::Utf8, true),
            f("response_text", DataType::Utf8, true),
        ]);
        schema_with(Self::KIND, fields)
    }

    fn to_batch_ordered(
        rows: &[Self],
        order: Option<&[usize]>,
    ) -> Result<RecordBatch, TracesError> {
        // Row by row into pre-sized column buffers: each row is read once (a column-by-column
        // build re-reads every row per column and measured 25% more instructions).
        let rows = Ordered::new(rows, order);
        let n = rows.len();
        let mut request_id = StrBuf::new(n, 32);
        let mut arrival = PrimBuf::<Int64Type>::new(n);
        let mut session = StrBuf::new(n, 0);
        let mut endpoint = StrBuf::new(n, 8);
        let mut model = StrBuf::new(n, 16);
        let mut stream = Vec::with_capacity(n);
        let mut prompt_tokens = PrimBuf::<UInt32Type>::new(n);
        let mut prompt_src = StrBuf::new(n, 8);
        let mut max_tokens = PrimBuf::<UInt32Type>::new(n);
        let mut message_count = PrimBuf::<UInt32Type>::new(n);
        let mut output_tokens = PrimBuf::<UInt32Type>::new(n);
        let mut output_src = StrBuf::new(n, 8);
        let mut prefix = HashesBuf::new(n);
        let mut status = PrimBuf::<UInt16Type>::new(n);
        let mut outcome = StrBuf::new(n, 4);
        let mut ttfb = PrimBuf::<UInt64Type>::new(n);
        let mut ttft = PrimBuf::<UInt64Type>::new(n);
        let mut e2e = PrimBuf::<UInt64Type>::new(n);
        let mut chunks = PrimBuf::<UInt32Type>::new(n);
        let mut itl = ItlBufs::new(n);
        let mut req_bytes = PrimBuf::<UInt64Type>::new(n);
        let mut resp_bytes = PrimBuf::<UInt64Type>::new(n);
        let mut finish = StrBuf::new(n, 8);
        let mut prompt_text = StrBuf::new(n, 0);
        let mut response_text = StrBuf::new(n, 0);
        for r in rows.iter() {
            request_id.push(&r.request_id);
            arrival.push(r.arrival_us);
            session.push_opt(r.session_id.as_deref());
            endpoint.push(r.endpoint.as_str());
            model.push_opt(r.model.as_deref());
            stream.push(r.stream);
            prompt_tokens.push_opt(r.prompt_tokens);
            prompt_src.push(r.prompt_tokens_source.as_str());
            max_tokens.push_opt(r.max_tokens);
            message_count.push_opt(r.message_count);
            output_tokens.push_opt(r.output_tokens);
            output_src.push(r.output_tokens_source.as_str());
            prefix.push(&r.prefix_hashes);
            status.push_opt(r.status);
            outcome.push(r.outcome.as_str());
            ttfb.push_opt(r.ttfb_us);
            ttft.push_opt(r.ttft_us);
            e2e.push_opt(r.e2e_us);
            chunks.push_opt(r.chunk_count);
            itl.push(r.itl.as_ref());
            req_bytes.push_opt(r.request_bytes);
            resp_bytes.push_opt(r.response_bytes);
            finish.push_opt(r.finish_reason.as_deref());
            prompt_text.push_opt(r.prompt_text.as_deref());
            response_text.push_opt(r.response_text.as_deref());
        }
        let mut columns: Vec<ArrayRef> = vec![
            request_id.finish()?,
            arrival.finish(),
            session.finish()?,
            endpoint.finish()?,
            model.finish()?,
            Arc::new(BooleanArray::from(stream)),
            prompt_tokens.finish(),
            prompt_src.finish()?,
            max_tokens.finish(),
            message_count.finish(),
            output_tokens.finish(),
            output_src.finish()?,
            prefix.finish()?,
            status.finish(),
            outcome.finish()?,
            ttfb.finish(),
            ttft.finish(),
            e2e.finish(),
            chunks.finish(),
        ];
        columns.extend(itl.finish());
        columns.extend([
            req_bytes.finish(),
            resp_bytes.finish(),
            finish.finish()?,
            prompt_text.finish()?,
            response_text.finish()?,
        ]);
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, TracesError> {
        let c = Cols { batch };
        let request_id = c.strings("request_id", false)?;
        let arrival = c.ints("arrival_us", false)?;
        let session = c.strings("session_id", true)?;
        let endpoint = c.strings("endpoint", false)?;
        let model = c.strings("model", true)?;
        let stream = c.bools("stream")?;
        let prompt_tokens = c.ints("prompt_tokens", true)?;
        let prompt_src = c.strings("prompt_tokens_source", false)?;
        let max_tokens = c.ints("max_tokens", true)?;
        let message_count = c.ints("message_count", true)?;
        let output_tokens = c.ints("output_tokens", true)?;
        let output_src = c.strings("output_tokens_source", false)?;
        let prefix = c.lists("prefix_hashes")?;
        let status = c.ints("status", true)?;
        let outcome = c.strings("outcome", false)?;
        let ttfb = c.ints("ttfb_us", true)?;
        let ttft = c.ints("ttft_us", true)?;
        let e2e = c.ints("e2e_us", true)?;
        let chunks = c.ints("chunk_count", true)?;
        let itl = itl_cols(&c)?;
        let req_bytes = c.ints("request_bytes", true)?;
        let resp_bytes = c.ints("response_bytes", true)?;
        let finish = c.strings("finish_reason", true)?;
        let prompt_text = c.strings("prompt_text", true)?;
        let response_text = c.strings("response_text", true)?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let outcome_str = req(outcome.get(i), "outcome", i)?;
            out.push(RequestRow {
                request_id: req(request_id.get(i), "request_id", i)?.to_string(),
                arrival_us: req(conv(arrival.get(i), "arrival_us", i)?, "arrival_us", i)?,
                session_id: session.get(i).map(str::to_string),
                endpoint: Endpoint::parse(req(endpoint.get(i), "endpoint", i)?),
                model: model.get(i).map(str::to_string),
                stream: req(stream.is_valid(i).then(|| stream.value(i)), "stream", i)?,
                prompt_tokens: conv(prompt_tokens.get(i), "prompt_tokens", i)?,
                prompt_tokens_source: TokenSource::parse(prompt_src.get(i).unwrap_or("unknown")),
                max_tokens: conv(max_tokens.get(i), "max_tokens", i)?,
                message_count: conv(message_count.get(i), "message_count", i)?,
                output_tokens: conv(output_tokens.get(i), "output_tokens", i)?,
                output_tokens_source: TokenSource::parse(output_src.get(i).unwrap_or("unknown")),
                prefix_hashes: list_u64(prefix, i)?,
                status: conv(status.get(i), "status", i)?,
                outcome: Outcome::parse(outcome_str).ok_or_else(|| {
                    bad_row("outcome", i, format!("unknown outcome {outcome_str:?}"))
                })?,
                ttfb_us: conv(ttfb.get(i), "ttfb_us", i)?,
                ttft_us: conv(ttft.get(i), "ttft_us", i)?,
                e2e_us: conv(e2e.get(i), "e2e_us", i)?,
                chunk_count: conv(chunks.get(i), "chunk_count", i)?,
                itl: itl_get(&itl, i)?,
                request_bytes: conv(req_bytes.get(i), "request_bytes", i)?,
                response_bytes: conv(resp_bytes.get(i), "response_bytes", i)?,
                finish_reason: finish.get(i).map(str::to_string),
                prompt_text: prompt_text.get(i).map(str::to_string),
                response_text: response_text.get(i).map(str::to_string),
            });
        }
        Ok(out)
    }

    fn time_us(&self) -> i64 {
        self.arrival_us
    }
}

fn list_u64(list: Option<&ArrayRef>, row: usize) -> Result<Vec<u64>, TracesError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    if list.is_null(row) {
        return Ok(Vec::new());
    }
    let values = match list.data_type() {
        DataType::List(_) => list.as_list::<i32>().value(row),
        DataType::LargeList(_) => list.as_list::<i64>().value(row),
        _ => return Ok(Vec::new()),
    };
    let ints = IntCol::new(&values, "prefix_hashes")?;
    (0..values.len())
        .map(|k| {
            let v = ints.get(k).ok_or_else(|| {
                bad_row("prefix_hashes", row, format!("null hash at position {k}"))
            })?;
            // Hashes are u64; a writer without unsigned types stores them as i64 bits.
            if v < 0 {
                Ok(v as i64 as u64)
            } else {
                u64::try_from(v)
                    .map_err(|_| bad_row("prefix_hashes", row, format!("{v} out of range")))
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// result

impl Row for ResultRow {
    const KIND: &'static str = "result";

    fn schema() -> SchemaRef {
        let mut fields = vec![
            f("request_id", DataType::Utf8, false),
            f("session_id", DataType::Utf8, true),
            f("scenario", DataType::Utf8, false),
            f("phase", DataType::Utf8, true),
            f("load_level", DataType::Float64, false),
            f("shard", DataType::UInt32, true),
            f("intended_send_us", DataType::Int64, false),
            f("actual_send_us", DataType::Int64, false),
            f("lateness_us", DataType::Int64, false),
            f("in_flight_at_send", DataType::UInt32, false),
            f("endpoint", DataType::Utf8, false),
            f("prompt_tokens", DataType::UInt32, false),
            f("prompt_tokens_source", DataType::Utf8, false),
            f("max_tokens", DataType::UInt32, true),
            f("status", DataType::UInt16, true),
            f("error_kind", DataType::Utf8, true),
            f("error_message", DataType::Utf8, true),
            f("ttfb_us", DataType::UInt64, true),
            f("ttft_us", DataType::UInt64, true),
            f("ttft_from_intended_us", DataType::UInt64, true),
            f("e2e_us", DataType::UInt64, true),
            f("e2e_from_intended_us", DataType::UInt64, true),
            f("tpot_us", DataType::Float64, true),
        ];
        fields.extend(itl_fields());
        fields.extend([
            f("output_tokens", DataType::UInt32, true),
            f("output_tokens_source", DataType::Utf8, false),
            f("chunk_count", DataType::UInt32, true),
            f("finish_reason", DataType::Utf8, true),
        ]);
        schema_with(Self::KIND, fields)
    }

    fn to_batch_ordered(
        rows: &[Self],
        order: Option<&[usize]>,
    ) -> Result<RecordBatch, TracesError> {
        let rows = Ordered::new(rows, order);
        let n = rows.len();
        let mut request_id = StrBuf::new(n, 32);
        let mut session = StrBuf::new(n, 8);
        let mut scenario = StrBuf::new(n, 4);
        let mut phase = StrBuf::new(n, 4);
        let mut load_level = PrimBuf::<Float64Type>::new(n);
        let mut shard = PrimBuf::<UInt32Type>::new(n);
        let mut intended = PrimBuf::<Int64Type>::new(n);
        let mut actual = PrimBuf::<Int64Type>::new(n);
        let mut lateness = PrimBuf::<Int64Type>::new(n);
        let mut in_flight = PrimBuf::<UInt32Type>::new(n);
        let mut endpoint = StrBuf::new(n, 8);
        let mut prompt_tokens = PrimBuf::<UInt32Type>::new(n);
        let mut prompt_src = StrBuf::new(n, 8);
        let mut max_tokens = PrimBuf::<UInt32Type>::new(n);
        let mut status = PrimBuf::<UInt16Type>::new(n);
        let mut error_kind = StrBuf::new(n, 2);
        let mut error_message = StrBuf::new(n, 0);
        let mut ttfb = PrimBuf::<UInt64Type>::new(n);
        let mut ttft = PrimBuf::<UInt64Type>::new(n);
        let mut ttft_i = PrimBuf::<UInt64Type>::new(n);
        let mut e2e = PrimBuf::<UInt64Type>::new(n);
        let mut e2e_i = PrimBuf::<UInt64Type>::new(n);
        let mut tpot = PrimBuf::<Float64Type>::new(n);
        let mut itl = ItlBufs::new(n);
        let mut output_tokens = PrimBuf::<UInt32Type>::new(n);
        let mut output_src = StrBuf::new(n, 8);
        let mut chunks = PrimBuf::<UInt32Type>::new(n);
        let mut finish = StrBuf::new(n, 8);
        for r in rows.iter() {
            request_id.push(&r.request_id);
            session.push_opt(r.session_id.as_deref());
            scenario.push(&r.scenario);
            phase.push_opt(r.phase.as_deref());
            load_level.push(r.load_level);
            shard.push_opt(r.shard);
            intended.push(r.intended_send_us);
            actual.push(r.actual_send_us);
            lateness.push(r.lateness_us);
            in_flight.push(r.in_flight_at_send);
            endpoint.push(r.endpoint.as_str());
            prompt_tokens.push(r.prompt_tokens);
            prompt_src.push(r.prompt_tokens_source.as_str());
            max_tokens.push_opt(r.max_tokens);
            status.push_opt(r.status);
            error_kind.push_opt(r.error_kind.map(ErrorKind::as_str));
            error_message.push_opt(r.error_message.as_deref());
            ttfb.push_opt(r.ttfb_us);
            ttft.push_opt(r.ttft_us);
            ttft_i.push_opt(r.ttft_from_intended_us);
            e2e.push_opt(r.e2e_us);
            e2e_i.push_opt(r.e2e_from_intended_us);
            tpot.push_opt(r.tpot_us);
            itl.push(r.itl.as_ref());
            output_tokens.push_opt(r.output_tokens);
            output_src.push(r.output_tokens_source.as_str());
            chunks.push_opt(r.chunk_count);
            finish.push_opt(r.finish_reason.as_deref());
        }
        let mut columns: Vec<ArrayRef> = vec![
            request_id.finish()?,
            session.finish()?,
            scenario.finish()?,
            phase.finish()?,
            load_level.finish(),
            shard.finish(),
            intended.finish(),
            actual.finish(),
            lateness.finish(),
            in_flight.finish(),
            endpoint.finish()?,
            prompt_tokens.finish(),
            prompt_src.finish()?,
            max_tokens.finish(),
            status.finish(),
            error_kind.finish()?,
            error_message.finish()?,
            ttfb.finish(),
            ttft.finish(),
            ttft_i.finish(),
            e2e.finish(),
            e2e_i.finish(),
            tpot.finish(),
        ];
        columns.extend(itl.finish());
        columns.extend([
            output_tokens.finish(),
            output_src.finish()?,
            chunks.finish(),
            finish.finish()?,
        ]);
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, TracesError> {
        let c = Cols { batch };
        let request_id = c.strings("request_id", false)?;
        let session = c.strings("session_id", true)?;
        let scenario = c.strings("scenario", false)?;
        let phase = c.strings("phase", true)?;
        let load_level = c.floats("load_level", false)?;
        let shard = c.ints("shard", true)?;
        let intended = c.ints("intended_send_us", false)?;
        let actual = c.ints("actual_send_us", false)?;
        let lateness = c.ints("lateness_us", false)?;
        let in_flight = c.ints("in_flight_at_send", false)?;
        let endpoint = c.strings("endpoint", false)?;
        let prompt_tokens = c.ints("prompt_tokens", false)?;
        let prompt_src = c.strings("prompt_tokens_source", false)?;
        let max_tokens = c.ints("max_tokens", true)?;
        let status = c.ints("status", true)?;
        let error_kind = c.strings("error_kind", true)?;
        let error_message = c.strings("error_message", true)?;
        let ttfb = c.ints("ttfb_us", true)?;
        let ttft = c.ints("ttft_us", true)?;
        let ttft_i = c.ints("ttft_from_intended_us", true)?;
        let e2e = c.ints("e2e_us", true)?;
        let e2e_i = c.ints("e2e_from_intended_us", true)?;
        let tpot = c.floats("tpot_us", true)?;
        let itl = itl_cols(&c)?;
        let output_tokens = c.ints("output_tokens", true)?;
        let output_src = c.strings("output_tokens_source", false)?;
        let chunks = c.ints("chunk_count", true)?;
        let finish = c.strings("finish_reason", true)?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let error_kind = match error_kind.get(i) {
                None => None,
                Some(s) => Some(ErrorKind::parse(s).ok_or_else(|| {
                    bad_row("error_kind", i, format!("unknown error kind {s:?}"))
                })?),
            };
            out.push(ResultRow {
                request_id: req(request_id.get(i), "request_id", i)?.to_string(),
                session_id: session.get(i).map(str::to_string),
                scenario: req(scenario.get(i), "scenario", i)?.to_string(),
                phase: phase.get(i).map(str::to_string),
                load_level: req(load_level.get(i), "load_level", i)?,
                shard: conv(shard.get(i), "shard", i)?,
                intended_send_us: req(
                    conv(intended.get(i), "intended_send_us", i)?,
                    "intended_send_us",
                    i,
                )?,
                actual_send_us: req(
                    conv(actual.get(i), "actual_send_us", i)?,
                    "actual_send_us",
                    i,
                )?,
                lateness_us: req(conv(lateness.get(i), "lateness_us", i)?, "lateness_us", i)?,
                in_flight_at_send: req(
                    conv(in_flight.get(i), "in_flight_at_send", i)?,
                    "in_flight_at_send",
                    i,
                )?,
                endpoint: Endpoint::parse(req(endpoint.get(i), "endpoint", i)?),
                prompt_tokens: req(
                    conv(prompt_tokens.get(i), "prompt_tokens", i)?,
                    "prompt_tokens",
                    i,
                )?,
                prompt_tokens_source: TokenSource::parse(prompt_src.get(i).unwrap_or("unknown")),
                max_tokens: conv(max_tokens.get(i), "max_tokens", i)?,
                status: conv(status.get(i), "status", i)?,
                error_kind,
                error_message: error_message.get(i).map(str::to_string),
                ttfb_us: conv(ttfb.get(i), "ttfb_us", i)?,
                ttft_us: conv(ttft.get(i), "ttft_us", i)?,
                ttft_from_intended_us: conv(ttft_i.get(i), "ttft_from_intended_us", i)?,
                e2e_us: conv(e2e.get(i), "e2e_us", i)?,
                e2e_from_intended_us: conv(e2e_i.get(i), "e2e_from_intended_us", i)?,
                tpot_us: tpot.get(i),
                itl: itl_get(&itl, i)?,
                output_tokens: conv(output_tokens.get(i), "output_tokens", i)?,
                output_tokens_source: TokenSource::parse(output_src.get(i).unwrap_or("unknown")),
                chunk_count: conv(chunks.get(i), "chunk_count", i)?,
                finish_reason: finish.get(i).map(str::to_string),
            });
        }
        Ok(out)
    }

    fn time_us(&self) -> i64 {
        self.intended_send_us
    }
}

// ---------------------------------------------------------------------------------------
// sample

impl Row for SampleRow {
    const KIND: &'static str = "sample";

    fn schema() -> SchemaRef {
        schema_with(
            Self::KIND,
            vec![
                f("time_us", DataType::Int64, false),
                f("source", DataType::Utf8, false),
                f("name", DataType::Utf8, false),
                f("labels", DataType::Utf8, false),
                f("value", DataType::Float64, false),
            ],
        )
    }

    fn to_batch_ordered(
        rows: &[Self],
        order: Option<&[usize]>,
    ) -> Result<RecordBatch, TracesError> {
        let rows = Ordered::new(rows, order);
        let n = rows.len();
        let mut time = PrimBuf::<Int64Type>::new(n);
        let mut source = StrBuf::new(n, 8);
        let mut name = StrBuf::new(n, 16);
        let mut labels = StrBuf::new(n, 8);
        let mut value = PrimBuf::<Float64Type>::new(n);
        for r in rows.iter() {
            time.push(r.time_us);
            source.push(r.source.as_str());
            name.push(&r.name);
            labels.push(&r.labels);
            value.push(r.value);
        }
        let columns: Vec<ArrayRef> = vec![
            time.finish(),
            source.finish()?,
            name.finish()?,
            labels.finish()?,
            value.finish(),
        ];
        Ok(RecordBatch::try_new(Self::schema(), columns)?)
    }

    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, TracesError> {
        let c = Cols { batch };
        let time = c.ints("time_us", false)?;
        let source = c.strings("source", false)?;
        let name = c.strings("name", false)?;
        let labels = c.strings("labels", true)?;
        let value = c.floats("value", false)?;
        let mut out = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let src = req(source.get(i), "source", i)?;
            out.push(SampleRow {
                time_us: req(conv(time.get(i), "time_us", i)?, "time_us", i)?,
                source: SampleSource::parse(src)
                    .ok_or_else(|| bad_row("source", i, format!("unknown source {src:?}")))?,
                name: req(name.get(i), "name", i)?.to_string(),
                labels: labels.get(i).unwrap_or("").to_string(),
                value: req(value.get(i), "value", i)?,
            });
        }
        Ok(out)
    }

    fn time_us(&self) -> i64 {
        self.time_us
    }
}
