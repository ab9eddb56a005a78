//! Reading: input expansion, mixed-kind directories, k-way merge, globs, projection, errors.
#![allow(clippy::unwrap_used)]

mod io_common;

use std::path::{Path, PathBuf};

use io_common::*;
use retrace_traces::read::{batches, expand_inputs, file_meta, read_all, read_rows};
use retrace_traces::rows::{RequestRow, ResultRow, SampleRow};
use retrace_traces::schema::{FileMeta, Row};
use retrace_traces::write::write_file;

fn write_requests(path: &Path, times: &[i64]) {
    let rows: Vec<RequestRow> = times
        .iter()
        .map(|t| {
            let mut r = sparse_request(0);
            r.arrival_us = *t;
            r.request_id = format!("{}@{t}", path.file_name().unwrap().to_string_lossy());
            r
        })
        .collect();
    write_file(path, &rows, &meta()).unwrap();
}

#[test]
fn k_way_merge_orders_rows_across_files_by_time() {
    let dir = tempfile::tempdir().unwrap();
    // Three files with interleaved times; big enough that batches (8192 rows) are crossed.
    let mut expected = Vec::new();
    for f in 0..3i64 {
        let times: Vec<i64> = (0..9000i64).map(|k| k * 3 + f).collect();
        expected.extend(times.iter().copied());
        write_requests(&dir.path().join(format!("part-{f}.parquet")), &times);
    }
    expected.sort();
    let got: Vec<i64> = read_rows::<RequestRow>(&[dir.path().to_path_buf()])
        .unwrap()
        .map(|r| r.unwrap().arrival_us)
        .collect();
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

#[test]
fn equal_times_keep_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.parquet");
    let b = dir.path().join("b.parquet");
    write_requests(&a, &[5, 5]);
    write_requests(&b, &[5]);
    let ids: Vec<String> = read_all::<RequestRow>(&[b.clone(), a.clone()])
        .unwrap()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    assert_eq!(ids, ["b.parquet@5", "a.parquet@5", "a.parquet@5"]);
}

#[test]
fn directory_with_mixed_kinds_yields_only_the_kind_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("nested");
    std::fs::create_dir(&sub).unwrap();
    let results: Vec<ResultRow> = (0..10).map(full_result).collect();
    let samples: Vec<SampleRow> = (0..7).map(sample).collect();
    write_file(&dir.path().join("results.parquet"), &results, &meta()).unwrap();
    write_file(&sub.join("samples.parquet"), &samples, &meta()).unwrap();
    // A file being written is never read, even if garbage.
    std::fs::write(dir.path().join("results-x.parquet.tmp"), b"PAR1 half").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();

    let inputs = [dir.path().to_path_buf()];
    assert_eq!(expand_inputs(&inputs).unwrap().len(), 2);
    assert_eq!(read_all::<ResultRow>(&inputs).unwrap(), results);
    assert_eq!(read_all::<SampleRow>(&inputs).unwrap(), samples);
    let err = read_all::<RequestRow>(&inputs).unwrap_err().to_string();
    assert!(err.contains("no `request` files"), "{err}");

    // Named directly, a file of another kind is an error naming it.
    let direct = dir.path().join("results.parquet");
    let err = read_all::<SampleRow>(std::slice::from_ref(&direct))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("results.parquet") && err.contains("`result` rows"),
        "{err}"
    );
}

#[test]
fn glob_patterns_expand_and_empty_globs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    write_requests(&dir.path().join("day1-a.parquet"), &[3]);
    write_requests(&dir.path().join("day1-b.parquet"), &[1]);
    write_requests(&dir.path().join("day2-a.parquet"), &[2]);
    let pattern = dir.path().join("day1-*.parquet");
    let files = expand_inputs(std::slice::from_ref(&pattern)).unwrap();
    assert_eq!(
        files,
        vec![
            dir.path().join("day1-a.parquet"),
            dir.path().join("day1-b.parquet")
        ]
    );
    let rows: Vec<RequestRow> = read_all(&[pattern]).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.arrival_us).collect::<Vec<_>>(),
        [1, 3]
    );

    let none = dir.path().join("day9-*.parquet");
    let err = expand_inputs(&[none]).unwrap_err().to_string();
    assert!(
        err.contains("day9-*.parquet") && err.contains("matches no"),
        "{err}"
    );
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.parquet");
    let err = expand_inputs(&[missing]).unwrap_err().to_string();
    assert!(err.contains("nope.parquet"), "{err}");

    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let err = expand_inputs(&[empty_dir]).unwrap_err().to_string();
    assert!(
        err.contains("empty") && err.contains("no *.parquet"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.parquet");
    std::fs::write(&garbage, b"this is not parquet at all").unwrap();
    let err = read_all::<RequestRow>(std::slice::from_ref(&garbage))
        .unwrap_err()
        .to_string();
    assert!(err.contains("garbage.parquet"), "{err}");
    let err = file_meta(&garbage).unwrap_err().to_string();
    assert!(err.contains("garbage.parquet"), "{err}");
}

/// Writes a request file whose metadata claims `version`, through the normal writer.
fn write_with_version(path: &Path, version: &str) {
    let rows = vec![full_request(1)];
    let batch = RequestRow::to_batch(&rows).unwrap();
    let mut md = batch.schema().metadata().clone();
    md.insert("retrace.schema_version".into(), version.into());
    let schema = std::sync::Arc::new(batch.schema().as_ref().clone().with_metadata(md));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            parquet::file::metadata::KeyValue::new("retrace.schema".into(), "request".to_string()),
            parquet::file::metadata::KeyValue::new(
                "retrace.schema_version".into(),
                version.to_string(),
            ),
        ]))
        .build();
    let f = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), Some(props)).unwrap();
    w.write(&arrow_array::RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap())
        .unwrap();
    w.close().unwrap();
}

#[test]
fn newer_major_version_is_refused_and_newer_minor_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let newer = dir.path().join("future.parquet");
    write_with_version(&newer, "2.0");
    let err = read_all::<RequestRow>(std::slice::from_ref(&newer))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("future.parquet") && err.contains("newer"),
        "{err}"
    );
    assert!(file_meta(&newer).is_err());

    let minor = dir.path().join("minor.parquet");
    write_with_version(&minor, "1.7");
    assert_eq!(
        read_all::<RequestRow>(&[minor]).unwrap(),
        vec![full_request(1)]
    );
}

#[test]
fn non_retrace_parquet_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.parquet");
    let batch = RequestRow::to_batch(&[full_request(0)]).unwrap();
    let schema = std::sync::Arc::new(
        batch
            .schema()
            .as_ref()
            .clone()
            .with_metadata(Default::default()),
    );
    let f = std::fs::File::create(&path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, schema.clone(), None).unwrap();
    w.write(&arrow_array::RecordBatch::try_new(schema, batch.columns().to_vec()).unwrap())
        .unwrap();
    w.close().unwrap();
    let err = file_meta(&path).unwrap_err().to_string();
    assert!(
        err.contains("foreign.parquet") && err.contains("retrace.schema"),
        "{err}"
    );
}

#[test]
fn projected_batches_hold_only_the_asked_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.parquet");
    let rows: Vec<RequestRow> = (0..100).map(full_request).collect();
    write_file(&path, &rows, &FileMeta::default()).unwrap();
    let got: Vec<arrow_array::RecordBatch> = batches(&path, Some(&["ttft_us", "prefix_hashes"]))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let total: usize = got.iter().map(|b| b.num_rows()).sum();
    assert_eq!(total, 100);
    let names: Vec<String> = got[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["prefix_hashes", "ttft_us"]);
    let err = batches(&path, Some(&["no_such"]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("r.parquet") && err.contains("no_such"),
        "{err}"
    );
    let all: usize = batches(&path, None)
        .unwrap()
        .map(|b| b.unwrap().num_columns())
        .max()
        .unwrap();
    assert_eq!(all, RequestRow::schema().fields().len());
    let _: Vec<PathBuf> = Vec::new();
}

#[test]
fn bad_value_error_names_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-outcome.parquet");
    let rows: Vec<RequestRow> = (0..9000).map(|i| sparse_request(i as u64)).collect();
    let batch = RequestRow::to_batch(&rows).unwrap();
    // Row 8500 (1-based 8501, in the second decoded batch) has an outcome nobody knows.
    let outcomes: Vec<&str> = (0..9000)
        .map(|i| if i == 8500 { "exploded" } else { "ok" })
        .collect();
    let idx = batch.schema().index_of("outcome").unwrap();
    let mut columns = batch.columns().to_vec();
    columns[idx] = std::sync::Arc::new(arrow_array::StringArray::from(outcomes));
    let batch = arrow_array::RecordBatch::try_new(batch.schema(), columns).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "retrace.schema".into(),
            "request".to_string(),
        )]))
        .build();
    let f = std::fs::File::create(&path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let err = read_all::<RequestRow>(std::slice::from_ref(&path)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("bad-outcome.parquet:8501: field `outcome`") && text.contains("exploded"),
        "{text}"
    );
}
