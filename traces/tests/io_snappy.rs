//! Files compressed with snappy (the default of pyarrow, Spark and DuckDB) are readable.
#![allow(clippy::unwrap_used)]

mod io_common;

use std::fs::File;
use std::process::Command;

use io_common::*;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::schema::types::ColumnPath;
use retrace_traces::rows::RequestRow;
use retrace_traces::schema::Row;
use retrace_traces::write::{write_file, writer_properties_for};
use retrace_traces::{file_meta, read_all};

fn rows() -> Vec<RequestRow> {
    (0..300)
        .map(|i| {
            if i % 3 == 0 {
                sparse_request(i)
            } else {
                full_request(i)
            }
        })
        .collect()
}

/// Compression codecs of every column chunk of a Parquet file.
fn codecs(path: &std::path::Path) -> Vec<Compression> {
    use parquet::file::reader::FileReader;
    let r = parquet::file::reader::SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    r.metadata()
        .row_groups()
        .iter()
        .flat_map(|g| g.columns().iter().map(|c| c.compression()))
        .collect()
}

#[test]
fn reads_a_snappy_file_written_by_the_parquet_crate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snappy.parquet");
    let rows = rows();
    let props = writer_properties_for::<RequestRow>(&meta())
        .into_builder()
        .set_compression(Compression::SNAPPY)
        // retrace leaves its delta-encoded time column uncompressed: snappy there too.
        .set_column_compression(ColumnPath::from("arrival_us"), Compression::SNAPPY)
        .set_max_row_group_size(128)
        .build();
    let mut w = ArrowWriter::try_new(
        File::create(&path).unwrap(),
        RequestRow::schema(),
        Some(props),
    )
    .unwrap();
    w.write(&RequestRow::to_batch(&rows).unwrap()).unwrap();
    w.close().unwrap();
    let found = codecs(&path);
    assert!(!found.is_empty() && found.iter().all(|c| *c == Compression::SNAPPY));

    let back: Vec<RequestRow> = read_all(std::slice::from_ref(&path)).unwrap();
    assert_eq!(back, rows);
    let (kind, m) = file_meta(&path).unwrap();
    assert_eq!(kind, "request");
    assert_eq!(m.prefix_block_tokens, meta().prefix_block_tokens);
}

#[test]
fn reads_a_snappy_file_written_by_pyarrow() {
    let available = Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        assert!(
            std::env::var_os("RETRACE_REQUIRE_PYARROW").is_none(),
            "RETRACE_REQUIRE_PYARROW is set but python3 cannot import pyarrow"
        );
        println!("SKIPPED: python3 with pyarrow not available (pip install pyarrow)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("zstd.parquet");
    let theirs = dir.path().join("snappy.parquet");
    let rows = rows();
    write_file(&ours, &rows, &meta()).unwrap();
    // pyarrow re-writes the table (schema metadata, hence retrace's keys, included) with
    // its default codec, snappy, and its own encodings.
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq\n\
             t = pq.read_table(sys.argv[1])\n\
             pq.write_table(t, sys.argv[2], compression='snappy')",
        ])
        .arg(&ours)
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = codecs(&theirs);
    assert!(!found.is_empty() && found.iter().all(|c| *c == Compression::SNAPPY));
    let back: Vec<RequestRow> = read_all(std::slice::from_ref(&theirs)).unwrap();
    assert_eq!(back, rows);
}
