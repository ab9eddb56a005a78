//! RowWriter rotation by size and by age, row-group bounds, and tick-driven flushing.
#![allow(clippy::unwrap_used)]

mod io_common;

use std::time::{Duration, Instant};

use io_common::*;
use retrace_traces::read::read_all;
use retrace_traces::rows::{RequestRow, SampleRow};
use retrace_traces::write::{RowWriter, WriterOptions};

fn row_groups(path: &std::path::Path) -> Vec<i64> {
    use parquet::file::reader::FileReader;
    let f = std::fs::File::open(path).unwrap();
    let r = parquet::file::reader::SerializedFileReader::new(f).unwrap();
    r.metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect()
}

#[test]
fn rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WriterOptions::new(dir.path(), "requests", meta());
    opts.max_rows_per_group = 500;
    // Small enough for several files: 5000 of these rows take ~30 kB (their prefix hashes
    // are near-sequential, and plain-encoded they compress well).
    opts.max_file_bytes = 10_000;
    let mut w = RowWriter::<RequestRow>::create(opts).unwrap();
    let rows: Vec<RequestRow> = (0..5000).map(full_request).collect();
    for r in &rows {
        w.push(r.clone()).unwrap();
    }
    let files = w.close().unwrap();
    assert!(
        files.len() >= 3,
        "5000 rows at a 10 kB limit: {} files",
        files.len()
    );
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        // A file closes once its data reaches the limit: it overshoots by at most one
        // row group plus the footer.
        assert!(size < 10_000 * 3, "{} is {size} bytes", f.display());
        assert!(row_groups(f).iter().all(|n| *n <= 500));
    }
    let mut names: Vec<_> = files.clone();
    names.sort();
    assert_eq!(names, files, "files are returned in order");
    assert_eq!(read_all::<RequestRow>(&files).unwrap(), rows);
}

#[test]
fn rows_per_group_bound_holds_across_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WriterOptions::new(dir.path(), "samples", meta());
    opts.max_rows_per_group = 1000;
    let mut w = RowWriter::<SampleRow>::create(opts).unwrap();
    for i in 0..20_500 {
        w.push(sample(i)).unwrap();
    }
    let files = w.close().unwrap();
    assert_eq!(files.len(), 1);
    let groups = row_groups(&files[0]);
    assert_eq!(groups.iter().sum::<i64>(), 20_500);
    assert!(groups.iter().all(|n| *n <= 1000), "{groups:?}");
    assert_eq!(groups.len(), 21);
}

#[test]
fn rotates_by_age_on_tick() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WriterOptions::new(dir.path(), "requests", meta());
    opts.max_file_age = Duration::from_millis(200);
    opts.flush_interval = Duration::from_millis(50);
    let mut w = RowWriter::<RequestRow>::create(opts).unwrap();
    let mut pushed = Vec::new();
    // Three bursts, each in a file of its own (ages out before the next burst).
    for burst in 0..3u64 {
        for i in 0..10 {
            let r = full_request(burst * 100 + i);
            pushed.push(r.clone());
            w.push(r).unwrap();
        }
        w.tick().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let files_before = count_parquet(dir.path());
        while count_parquet(dir.path()) == files_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            w.tick().unwrap();
        }
    }
    assert!(w.bytes_written() > 0);
    let files = w.close().unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    let mut back = Vec::new();
    for f in &files {
        let rows: Vec<RequestRow> = read_all(std::slice::from_ref(f)).unwrap();
        assert_eq!(rows.len(), 10);
        back.extend(rows);
    }
    assert_eq!(back, pushed);
}

fn count_parquet(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "parquet")
        })
        .count()
}

#[test]
fn tick_flushes_after_the_interval_so_rows_become_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WriterOptions::new(dir.path(), "requests", meta());
    opts.flush_interval = Duration::from_millis(30);
    let mut w = RowWriter::<RequestRow>::create(opts).unwrap();
    for i in 0..25 {
        w.push(full_request(i)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(60));
    w.tick().unwrap();
    // Simulate a crash: the writer vanishes without closing.
    std::mem::forget(w);
    let report = retrace_traces::write::recover_dir(dir.path()).unwrap();
    assert_eq!(report.rows_salvaged, 25);
    assert_eq!(report.salvaged.len(), 1);
    let back: Vec<RequestRow> = read_all(&report.salvaged).unwrap();
    assert_eq!(back, (0..25).map(full_request).collect::<Vec<_>>());
}

#[test]
fn a_batch_out_of_time_order_is_sorted_across_its_slices_and_row_groups() {
    // 8,192 rows (one encoding batch) in reverse time order, with ties: the batch is built
    // a slice at a time from one time order, and slices straddle row groups of 1,000.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WriterOptions::new(dir.path(), "samples", meta());
    opts.max_rows_per_group = 1000;
    let mut w = RowWriter::<SampleRow>::create(opts).unwrap();
    let mut pushed = Vec::new();
    for i in 0..8192u64 {
        let mut row = sample(i);
        row.time_us = 1_733_011_200_000_000 - (i / 3) as i64;
        pushed.push(row.clone());
        w.push(row).unwrap();
    }
    let files = w.close().unwrap();
    let groups = row_groups(&files[0]);
    assert_eq!(groups.iter().sum::<i64>(), 8192);
    assert!(groups.iter().all(|n| *n <= 1000), "{groups:?}");
    let mut expected = pushed;
    expected.sort_by_key(|r| r.time_us); // stable: ties keep their push order
    assert_eq!(read_all::<SampleRow>(&files).unwrap(), expected);
}
