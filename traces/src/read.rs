//! Parquet reading: input expansion (files, directories, globs), streaming k-way merged row
//! iteration, file metadata, and projected columnar batches for fast analysis.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use crate::schema::{check_version, FileMeta, Row};
use crate::TracesError;

/// Rows decoded at a time per file: bounds memory per open file.
const READ_BATCH_ROWS: usize = 8192;

fn io_err(path: &Path, source: std::io::Error) -> TracesError {
    TracesError::Io {
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

fn pq_err(path: &Path, source: parquet::errors::ParquetError) -> TracesError {
    TracesError::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "parquet")
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TracesError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|err| io_err(dir, err)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_parquet(&path) {
            // `*.parquet.tmp` has extension `tmp`: files still being written are never read.
            out.push(path);
        }
    }
    Ok(())
}

/// Where an input file came from: named directly, or found in a directory or glob.
fn expand_tagged(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, bool)>, TracesError> {
    let mut out: Vec<(PathBuf, bool)> = Vec::new();
    for input in inputs {
        let s = input.to_string_lossy();
        let before = out.len();
        if input.is_dir() {
            let mut files = Vec::new();
            walk(input, &mut files)?;
            out.extend(files.into_iter().map(|p| (p, false)));
            if out.len() == before {
                return Err(bad_file(input, "directory holds no *.parquet files"));
            }
        } else if input.is_file() {
            out.push((input.clone(), true));
        } else if is_glob(&s) {
            let paths =
                glob::glob(&s).map_err(|e| bad_file(input, format!("bad glob pattern: {e}")))?;
            let mut files = Vec::new();
            for p in paths {
                let p = p.map_err(|e| io_err(e.path(), std::io::Error::other(e.to_string())))?;
                if p.is_dir() {
                    walk(&p, &mut files)?;
                } else if is_parquet(&p) {
                    files.push(p);
                }
            }
            files.sort();
            out.extend(files.into_iter().map(|p| (p, false)));
            if out.len() == before {
                return Err(bad_file(input, "glob pattern matches no *.parquet files"));
            }
        } else {
            return Err(io_err(
                input,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    }
    // The same file named twice (a dir and a glob inside it) is read once.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(p, _)| seen.insert(p.canonicalize().unwrap_or_else(|_| p.clone())));
    Ok(out)
}

/// Expands inputs into Parquet files: files as given; directories recursively (`*.parquet`
/// only, never `*.parquet.tmp`, sorted); glob patterns. Errors name the input that matched
/// nothing or does not exist.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, TracesError> {
    Ok(expand_tagged(inputs)?.into_iter().map(|(p, _)| p).collect())
}

fn kv_of(md: &parquet::file::metadata::ParquetMetaData) -> Vec<(String, String)> {
    md.file_metadata()
        .key_value_metadata()
        .map(|kvs| {
            kvs.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

fn meta_of(
    path: &Path,
    md: &parquet::file::metadata::ParquetMetaData,
) -> Result<(String, FileMeta), TracesError> {
    let kv = kv_of(md);
    let (kind, version, meta) =
        FileMeta::from_key_values(kv.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|m| bad_file(path, m))?;
    let kind = kind.ok_or_else(|| {
        bad_file(
            path,
            "not a retrace file: no `retrace.schema` key in its metadata",
        )
    })?;
    if let Some(v) = version {
        check_version(&v).map_err(|m| bad_file(path, m))?;
    }
    Ok((kind, meta))
}

fn open_builder(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, TracesError> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| pq_err(path, e))
}

/// The kind (`request`, `result`, `sample`) and metadata of a retrace Parquet file. Errors
/// when the file is not a retrace file or has a newer major schema version.
pub fn file_meta(path: &Path) -> Result<(String, FileMeta), TracesError> {
    let b = open_builder(path)?;
    meta_of(path, b.metadata())
}

/// Projected columnar reading of one file: record batches with only `columns` (all when
/// `None`), in file order. Errors name the file and any column it lacks.
pub fn batches(
    path: &Path,
    columns: Option<&[&str]>,
) -> Result<impl Iterator<Item = Result<RecordBatch, TracesError>>, TracesError> {
    let b = open_builder(path)?;
    meta_of(path, b.metadata())?;
    let b = match columns {
        None => b,
        Some(cols) => {
            let fields = b.schema().fields();
            let mut roots = Vec::with_capacity(cols.len());
            for c in cols {
                let idx = fields
                    .iter()
                    .position(|f| f.name() == c)
                    .ok_or_else(|| bad_file(path, format!("no column `{c}` in this file")))?;
                roots.push(idx);
            }
            let mask = ProjectionMask::roots(b.parquet_schema(), roots);
            b.with_projection(mask)
        }
    };
    let reader = b
        .with_batch_size(READ_BATCH_ROWS)
        .build()
        .map_err(|e| pq_err(path, e))?;
    let path = path.to_path_buf();
    Ok(reader.map(move |r| r.map_err(|e| bad_file(&path, e))))
}

/// Puts the file, and the row within the file (1-based), on an error of
/// [`Row::from_batch`], which knows neither.
fn locate(err: TracesError, path: &Path, rows_before: u64) -> TracesError {
    match err {
        TracesError::BadInput {
            line,
            field,
            message,
            ..
        } => TracesError::BadInput {
            path: path.to_path_buf(),
            line: rows_before + line + 1,
            field,
            message,
        },
        TracesError::BadFile { message, .. } => bad_file(path, message),
        other => bad_file(path, other),
    }
}

/// One file's cursor in the merge: its reader and the decoded rows of the current batch.
struct Source<R> {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    rows: std::vec::IntoIter<R>,
    /// Rows of the file before the current batch.
    rows_before: u64,
}

impl<R: Row> Source<R> {
    /// The next row of this file, decoding the next batch when needed.
    fn next_row(&mut self) -> Option<Result<R, TracesError>> {
        loop {
            if let Some(r) = self.rows.next() {
                return Some(Ok(r));
            }
            let batch = match self.reader.next()? {
                Ok(b) => b,
                Err(e) => return Some(Err(bad_file(&self.path, e))),
            };
            match R::from_batch(&batch) {
                Ok(rows) => {
                    self.rows = rows.into_iter();
                    self.rows_before += batch.num_rows() as u64;
                }
                Err(e) => return Some(Err(locate(e, &self.path, self.rows_before))),
            }
        }
    }
}

/// Streaming iterator of rows from many files, merged by [`Row::time_us`] (ties keep the
/// input order). Each file is read in order, one batch at a time.
pub struct RowIter<R> {
    sources: Vec<Source<R>>,
    /// (time, source index) of each source's head row.
    heap: BinaryHeap<Reverse<(i64, usize)>>,
    heads: Vec<Option<R>>,
    /// An error to report before anything else (a file that failed to start).
    pending_error: Option<TracesError>,
    failed: bool,
}

impl<R> std::fmt::Debug for RowIter<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowIter")
            .field(
                "files",
                &self.sources.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<R: Row> RowIter<R> {
    fn advance(&mut self, i: usize) -> Result<(), TracesError> {
        match self.sources[i].next_row() {
            Some(Ok(r)) => {
                self.heap.push(Reverse((r.time_us(), i)));
                self.heads[i] = Some(r);
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Ok(()),
        }
    }
}

impl<R: Row> Iterator for RowIter<R> {
    type Item = Result<R, TracesError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(e) = self.pending_error.take() {
            self.failed = true;
            return Some(Err(e));
        }
        let Reverse((_, i)) = self.heap.pop()?;
        let row = self.heads[i].take()?;
        if let Err(e) = self.advance(i) {
            // Report the error after this row: the row itself was read correctly.
            self.pending_error = Some(e);
        }
        Some(Ok(row))
    }
}

/// Opens every input (see [`expand_inputs`]) for rows of kind `R`, merged by time. Files of
/// another kind found in a directory or glob are skipped; a file of another kind named
/// directly is an error, as is any file with a newer major schema version.
pub fn read_rows<R: Row>(inputs: &[PathBuf]) -> Result<RowIter<R>, TracesError> {
    let files = expand_tagged(inputs)?;
    // Every file holds one decoded batch while merging: smaller batches when there are
    // many files keep the total bounded (~64 Ki rows).
    let batch_rows = (65_536 / files.len().max(1)).clamp(256, READ_BATCH_ROWS);
    let mut sources = Vec::new();
    for (path, explicit) in files {
        let b = open_builder(&path)?;
        let (kind, _) = meta_of(&path, b.metadata())?;
        if kind != R::KIND {
            if explicit {
                return Err(bad_file(
                    &path,
                    format!("holds `{kind}` rows, but `{}` rows were asked for", R::KIND),
                ));
            }
            continue;
        }
        let reader = b
            .with_batch_size(batch_rows)
            .build()
            .map_err(|e| pq_err(&path, e))?;
        sources.push(Source {
            path,
            reader,
            rows: Vec::new().into_iter(),
            rows_before: 0,
        });
    }
    if sources.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(bad_file(
            Path::new(&names.join(", ")),
            format!("no `{}` files among these inputs", R::KIND),
        ));
    }
    let n = sources.len();
    let mut it = RowIter {
        sources,
        heap: BinaryHeap::with_capacity(n),
        heads: (0..n).map(|_| None).collect(),
        pending_error: None,
        failed: false,
    };
    for i in 0..n {
        it.advance(i)?;
    }
    Ok(it)
}

/// Reads every row of kind `R` from the inputs into memory, merged by time.
pub fn read_all<R: Row>(inputs: &[PathBuf]) -> Result<Vec<R>, TracesError> {
    read_rows(inputs)?.collect()
}
