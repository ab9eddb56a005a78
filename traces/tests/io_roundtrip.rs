//! Round trips of every schema through Parquet: all fields, nulls, empty lists, unicode.
#![allow(clippy::unwrap_used)]

mod io_common;

use std::path::PathBuf;

use arrow_array::RecordBatch;
use io_common::*;
use retrace_traces::read::{file_meta, read_all};
use retrace_traces::rows::{RequestRow, ResultRow, SampleRow};
use retrace_traces::schema::Row;
use retrace_traces::write::{write_file, RowWriter, WriterOptions};

#[test]
fn request_rows_round_trip_with_nulls_empty_lists_and_unicode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.parquet");
    let rows: Vec<RequestRow> = (0..50)
        .flat_map(|i| [full_request(i), sparse_request(i)])
        .collect();
    write_file(&path, &rows, &meta()).unwrap();
    assert!(!dir.path().join("r.parquet.tmp").exists());
    let back: Vec<RequestRow> = read_all(std::slice::from_ref(&path)).unwrap();
    assert_eq!(back, rows);
    let (kind, m) = file_meta(&path).unwrap();
    assert_eq!(kind, "request");
    assert_eq!(m, meta());
}

#[test]
fn result_rows_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("res.parquet");
    let rows: Vec<ResultRow> = (0..40)
        .flat_map(|i| [full_result(i), sparse_result(i)])
        .collect();
    write_file(&path, &rows, &meta()).unwrap();
    let back: Vec<ResultRow> = read_all(std::slice::from_ref(&path)).unwrap();
    assert_eq!(back, rows);
    assert_eq!(file_meta(&path).unwrap().0, "result");
}

#[test]
fn sample_rows_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.parquet");
    let rows: Vec<SampleRow> = (0..100).map(sample).collect();
    write_file(&path, &rows, &retrace_traces::schema::FileMeta::default()).unwrap();
    let back: Vec<SampleRow> = read_all(std::slice::from_ref(&path)).unwrap();
    assert_eq!(back, rows);
    let (kind, m) = file_meta(&path).unwrap();
    assert_eq!(kind, "sample");
    assert_eq!(m, retrace_traces::schema::FileMeta::default());
}

#[test]
fn row_writer_round_trip_across_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WriterOptions::new(dir.path(), "requests", meta());
    opts.max_rows_per_group = 300;
    let mut w = RowWriter::<RequestRow>::create(opts).unwrap();
    assert!(w.recovery().salvaged.is_empty() && w.recovery().removed.is_empty());
    let rows: Vec<RequestRow> = (0..1000).map(full_request).collect();
    for r in &rows {
        w.push(r.clone()).unwrap();
    }
    w.flush().unwrap();
    assert_eq!(w.rows_written(), 1000);
    let files = w.close().unwrap();
    assert_eq!(files.len(), 1);
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("requests-") && name.ends_with("-0001.parquet"),
        "{name}"
    );
    // Nothing but the finished file is left behind.
    let left: Vec<PathBuf> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left, files);
    let f = std::fs::File::open(&files[0]).unwrap();
    let md = parquet::file::reader::FileReader::metadata(
        &parquet::file::reader::SerializedFileReader::new(f).unwrap(),
    )
    .clone();
    assert_eq!(md.num_row_groups(), 4, "1000 rows in groups of at most 300");
    assert!(md.row_groups().iter().all(|g| g.num_rows() <= 300));
    let back: Vec<RequestRow> = read_all(&files).unwrap();
    assert_eq!(back, rows);
}

#[test]
fn missing_nullable_columns_read_as_null_and_missing_required_is_named() {
    let rows: Vec<RequestRow> = (0..5).map(full_request).collect();
    let batch = RequestRow::to_batch(&rows).unwrap();
    // An older file without the text columns and the ITL summary.
    let keep: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().ends_with("_text") && !f.name().starts_with("itl_"))
        .map(|(i, _)| i)
        .collect();
    let older: RecordBatch = batch.project(&keep).unwrap();
    let back = RequestRow::from_batch(&older).unwrap();
    assert_eq!(back.len(), 5);
    assert!(back
        .iter()
        .all(|r| r.prompt_text.is_none() && r.itl.is_none()));
    assert_eq!(back[3].prefix_hashes, rows[3].prefix_hashes);

    let idx = batch.schema().index_of("arrival_us").unwrap();
    let keep: Vec<usize> = (0..batch.num_columns()).filter(|i| *i != idx).collect();
    let err = RequestRow::from_batch(&batch.project(&keep).unwrap()).unwrap_err();
    assert!(err.to_string().contains("arrival_us"), "{err}");
}

#[test]
fn schemas_carry_kind_and_version_metadata() {
    for (kind, schema) in [
        ("request", RequestRow::schema()),
        ("result", ResultRow::schema()),
        ("sample", SampleRow::schema()),
    ] {
        assert_eq!(schema.metadata()["retrace.schema"], kind);
        assert_eq!(
            schema.metadata()["retrace.schema_version"],
            retrace_traces::SCHEMA_VERSION
        );
    }
    assert_eq!(RequestRow::KIND, "request");
    assert_eq!(full_result(4).time_us(), full_result(4).intended_send_us);
}

#[test]
fn row_writer_sorts_each_batch_by_time_stably() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RowWriter::<RequestRow>::create(WriterOptions::new(dir.path(), "requests", meta()))
        .unwrap();
    for (id, t) in [("a", 5), ("b", 3), ("c", 5), ("d", 1)] {
        let mut r = sparse_request(0);
        r.request_id = id.to_string();
        r.arrival_us = t;
        w.push(r).unwrap();
    }
    let files = w.close().unwrap();
    let ids: Vec<String> = read_all::<RequestRow>(&files)
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids, ["d", "b", "a", "c"]);
}

#[test]
fn to_batch_ordered_equals_to_batch_of_the_reordered_rows() {
    // Full and sparse rows interleaved (nulls, empty and non-empty lists), taken in a
    // scrambled order: the batch must equal the one built from the rows moved into it.
    let rows: Vec<RequestRow> = (0..50)
        .map(|i| {
            if i % 3 == 0 {
                sparse_request(i)
            } else {
                full_request(i)
            }
        })
        .collect();
    let order: Vec<usize> = (0..rows.len()).map(|k| (k * 17 + 5) % rows.len()).collect();
    let moved: Vec<RequestRow> = order.iter().map(|&k| rows[k].clone()).collect();
    let ordered = RequestRow::to_batch_ordered(&rows, Some(&order)).unwrap();
    assert_eq!(ordered, RequestRow::to_batch(&moved).unwrap());
    assert_eq!(RequestRow::from_batch(&ordered).unwrap(), moved);
    // Every column of an all-sparse batch is null where the row has nothing.
    let sparse: Vec<RequestRow> = (0..4).map(sparse_request).collect();
    let batch = RequestRow::to_batch(&sparse).unwrap();
    assert_eq!(batch.column_by_name("ttft_us").unwrap().null_count(), 4);
    assert_eq!(batch.column_by_name("model").unwrap().null_count(), 4);
    assert_eq!(RequestRow::from_batch(&batch).unwrap(), sparse);
    // And none where every row has it.
    let full: Vec<RequestRow> = (0..4).map(full_request).collect();
    let batch = RequestRow::to_batch(&full).unwrap();
    assert_eq!(batch.column_by_name("prompt_text").unwrap().null_count(), 0);
    assert!(batch.column_by_name("ttft_us").unwrap().nulls().is_none());
    assert_eq!(RequestRow::from_batch(&batch).unwrap(), full);
    let results: Vec<ResultRow> = (0..20).map(full_result).collect();
    let order: Vec<usize> = (0..20).rev().collect();
    let back = ResultRow::from_batch(&ResultRow::to_batch_ordered(&results, Some(&order)).unwrap())
        .unwrap();
    assert_eq!(back, results.into_iter().rev().collect::<Vec<_>>());
}
