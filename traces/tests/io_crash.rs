//! Crash safety: a writer killed mid-file never leaves an unreadable `.parquet`, and the
//! next `create` / `recover_dir` salvages every flushed row and says so.
#![allow(clippy::unwrap_used)]

mod io_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use io_common::*;
use retrace_traces::read::{expand_inputs, read_all};
use retrace_traces::rows::RequestRow;
use retrace_traces::write::{recover_dir, RowWriter, WriterOptions};

/// The `write_and_hang` example, built by `cargo test` next to this test's binary; built
/// on demand when missing (e.g. `cargo test --test io_crash`).
fn helper_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug_dir = exe.parent().unwrap().parent().unwrap();
    let bin = debug_dir
        .join("examples")
        .join(format!("write_and_hang{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args([
                "build",
                "-p",
                "retrace-traces",
                "--example",
                "write_and_hang",
            ])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "building the write_and_hang example failed"
        );
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// Runs the helper, waits for its `FLUSHED` line, and SIGKILLs it.
fn write_then_kill(dir: &Path, before: u64, per_group: usize, after: u64) {
    let mut child = Command::new(helper_binary())
        .arg(dir)
        .args([before.to_string(), per_group.to_string(), after.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(120));
    // `kill` is SIGKILL on Unix: no destructor, no flush, no footer.
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.expect("helper did not report its flush within 120 s");
    assert_eq!(line.trim(), format!("FLUSHED {before}"));
}

fn expected(n: u64) -> Vec<u64> {
    (0..n).collect()
}

fn ids(rows: &[RequestRow]) -> Vec<u64> {
    rows.iter()
        .map(|r| r.request_id.trim_start_matches("req-").parse().unwrap())
        .collect()
}

fn assert_no_unreadable_parquet(dir: &Path) {
    let files = expand_inputs(&[dir.to_path_buf()]);
    if let Ok(files) = files {
        for f in files {
            read_all::<RequestRow>(std::slice::from_ref(&f))
                .unwrap_or_else(|e| panic!("{} unreadable after the kill: {e}", f.display()));
        }
    }
}

#[test]
fn killed_writer_journal_only_is_salvaged_by_create() {
    let dir = tempfile::tempdir().unwrap();
    // 300 rows flushed (no row group completed yet: only the journal holds them).
    write_then_kill(dir.path(), 300, 65_536, 50);
    assert_no_unreadable_parquet(dir.path());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".parquet.tmp")),
        "the killed writer leaves its temp file"
    );
    let w = RowWriter::<RequestRow>::create(WriterOptions::new(dir.path(), "requests", meta()))
        .unwrap();
    let report = w.recovery().clone();
    drop(w);
    assert_eq!(report.salvaged.len(), 1, "{report:?}");
    assert_eq!(
        report.rows_salvaged, 300,
        "exactly the flushed rows: {report:?}"
    );
    let rows: Vec<RequestRow> = read_all(&report.salvaged).unwrap();
    assert_eq!(ids(&rows), expected(300));
    // The salvaged file says where it came from, and temp files are gone.
    let (_, m) = retrace_traces::read::file_meta(&report.salvaged[0]).unwrap();
    assert_eq!(m.producer, "write_and_hang");
    assert!(m
        .extra
        .contains(&("retrace.recovered".to_string(), "true".to_string())));
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn killed_writer_with_completed_row_groups_and_journal_tail_is_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    // Groups of 1000: 2 complete row groups (footer sidecar) + 500 rows in the journal.
    write_then_kill(dir.path(), 2500, 1000, 100);
    assert_no_unreadable_parquet(dir.path());
    let report = recover_dir(dir.path()).unwrap();
    assert_eq!(report.rows_salvaged, 2500, "{report:?}");
    let rows: Vec<RequestRow> = read_all(&report.salvaged).unwrap();
    assert_eq!(ids(&rows), expected(2500));
    assert_eq!(rows[1234], {
        // Values survive, not only ids.
        let mut r = rows[1234].clone();
        r.arrival_us = 1_700_000_000_000_000 + 1234 * 20_000;
        r
    });
    // Idempotent: nothing left to recover.
    let again = recover_dir(dir.path()).unwrap();
    assert!(again.salvaged.is_empty() && again.removed.is_empty());
}

#[test]
fn temp_file_with_nothing_flushed_is_removed_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    // 9000 rows are enough to open a file (rows are encoded 8192 at a time) but none is
    // flushed and no row group completes.
    write_then_kill(dir.path(), 0, 65_536, 9000);
    let report = recover_dir(dir.path()).unwrap();
    assert_eq!(report.rows_salvaged, 0);
    assert!(report.salvaged.is_empty());
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(!report.removed[0].exists());
}

#[test]
fn garbage_temp_file_is_removed_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir
        .path()
        .join("requests-20260101T000000Z-0001.parquet.tmp");
    std::fs::write(&tmp, b"PAR1 torn").unwrap();
    std::fs::write(
        dir.path()
            .join("requests-20260101T000000Z-0001.parquet.tmp.journal"),
        b"xx",
    )
    .unwrap();
    // Another prefix is left alone by `create`.
    let other = dir.path().join("results-20260101T000000Z-0001.parquet.tmp");
    std::fs::write(&other, b"PAR1").unwrap();
    let w = RowWriter::<RequestRow>::create(WriterOptions::new(dir.path(), "requests", meta()))
        .unwrap();
    assert_eq!(w.recovery().removed, vec![tmp.clone()]);
    drop(w);
    assert!(!tmp.exists());
    assert!(other.exists());
}

#[test]
fn in_process_crash_after_row_group_and_more_flushes_loses_nothing_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = WriterOptions::new(dir.path(), "requests", meta());
    opts.max_rows_per_group = 100;
    let mut w = RowWriter::<RequestRow>::create(opts).unwrap();
    let rows: Vec<RequestRow> = (0..370).map(full_request).collect();
    for (i, r) in rows.iter().enumerate() {
        w.push(r.clone()).unwrap();
        if i % 45 == 44 {
            w.flush().unwrap();
        }
    }
    w.flush().unwrap();
    std::mem::forget(w);
    let report = recover_dir(dir.path()).unwrap();
    assert_eq!(report.rows_salvaged, 370);
    assert_eq!(read_all::<RequestRow>(&report.salvaged).unwrap(), rows);
}

#[test]
fn in_process_crash_before_the_footer_of_completed_row_groups_keeps_the_flushed_rows() {
    // A full batch (8192 rows) is encoded between two flushes and completes row groups;
    // their footer sidecar waits for the next flush. A crash before it: the journal that
    // was open when they completed still has the rows flushed before.
    let rows: Vec<RequestRow> = (0..9000).map(full_request).collect();
    for flush_at_end in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = WriterOptions::new(dir.path(), "requests", meta());
        opts.max_rows_per_group = 1000;
        let mut w = RowWriter::<RequestRow>::create(opts).unwrap();
        for r in &rows[..50] {
            w.push(r.clone()).unwrap();
        }
        w.flush().unwrap();
        for r in &rows[50..] {
            w.push(r.clone()).unwrap();
        }
        if flush_at_end {
            w.flush().unwrap();
        }
        std::mem::forget(w);
        let report = recover_dir(dir.path()).unwrap();
        let kept = if flush_at_end { rows.len() } else { 50 };
        assert_eq!(report.rows_salvaged, kept as u64, "{report:?}");
        assert_eq!(
            read_all::<RequestRow>(&report.salvaged).unwrap(),
            rows[..kept]
        );
    }
}

#[test]
fn torn_journal_tail_recovers_the_complete_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RowWriter::<RequestRow>::create(WriterOptions::new(dir.path(), "requests", meta()))
        .unwrap();
    for i in 0..100 {
        w.push(full_request(i)).unwrap();
    }
    w.flush().unwrap();
    for i in 100..150 {
        w.push(full_request(i)).unwrap();
    }
    w.flush().unwrap();
    std::mem::forget(w);
    // A crash in the middle of the second append: its message is cut short.
    let journal = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".parquet.tmp.journal"))
        .expect("a journal next to the temp file");
    let len = std::fs::metadata(&journal).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    f.set_len(len - 40).unwrap();
    drop(f);
    let report = recover_dir(dir.path()).unwrap();
    assert_eq!(report.rows_salvaged, 100, "{report:?}");
    let rows: Vec<RequestRow> = read_all(&report.salvaged).unwrap();
    assert_eq!(rows, (0..100).map(full_request).collect::<Vec<_>>());
}
