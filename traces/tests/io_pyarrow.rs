//! An independent reader (pyarrow) sees the same values retrace wrote.
#![allow(clippy::unwrap_used)]

mod io_common;

use std::process::Command;

use io_common::*;
use retrace_traces::rows::{RequestRow, ResultRow, SampleRow};
use retrace_traces::write::write_file;

fn pyarrow_available() -> bool {
    match Command::new("python3")
        .args(["-c", "import pyarrow"])
        .output()
    {
        Ok(o) if o.status.success() => true,
        _ => {
            // CI installs pyarrow and sets this, so the cross-check cannot silently skip there.
            assert!(
                std::env::var_os("RETRACE_REQUIRE_PYARROW").is_none(),
                "RETRACE_REQUIRE_PYARROW is set but python3 cannot import pyarrow"
            );
            println!("SKIPPED: python3 with pyarrow not available (pip install pyarrow)");
            false
        }
    }
}

/// Runs a python snippet that prints JSON; returns the parsed value.
fn python_json(script: &str, path: &std::path::Path) -> serde_json::Value {
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const DUMP: &str = r#"
import sys, json, pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
md = pq.read_metadata(sys.argv[1]).metadata
print(json.dumps({
  "columns": t.to_pydict(),
  "types": {f.name: str(f.type) for f in t.schema},
  "meta": {k.decode(): v.decode() for k, v in md.items() if k != b"ARROW:schema"},
}, default=str))
"#;

#[test]
fn pyarrow_reads_request_rows_with_the_same_values() {
    if !pyarrow_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("req.parquet");
    let rows: Vec<RequestRow> = (0..20)
        .flat_map(|i| [full_request(i), sparse_request(i)])
        .collect();
    write_file(&path, &rows, &meta()).unwrap();
    let v = python_json(DUMP, &path);
    let cols = &v["columns"];
    assert_eq!(v["meta"]["retrace.schema"], "request");
    assert_eq!(
        v["meta"]["retrace.schema_version"],
        retrace_traces::SCHEMA_VERSION
    );
    assert_eq!(v["meta"]["retrace.host"], "hôte");
    assert_eq!(v["meta"]["retrace.prefix_block_tokens"], "512");
    assert_eq!(v["types"]["prefix_hashes"], "list<item: uint64 not null>");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(cols["request_id"][i], r.request_id.as_str());
        assert_eq!(cols["arrival_us"][i], r.arrival_us);
        assert_eq!(cols["session_id"][i].as_str(), r.session_id.as_deref());
        assert_eq!(cols["endpoint"][i], r.endpoint.as_str());
        assert_eq!(cols["stream"][i], r.stream);
        assert_eq!(
            cols["prompt_tokens"][i].as_u64(),
            r.prompt_tokens.map(u64::from)
        );
        assert_eq!(cols["outcome"][i], r.outcome.as_str());
        assert_eq!(cols["ttft_us"][i].as_u64(), r.ttft_us);
        assert_eq!(cols["itl_max_us"][i].as_u64(), r.itl.map(|g| g.max_us));
        assert_eq!(
            cols["itl_count"][i].as_u64(),
            r.itl.map(|g| u64::from(g.count))
        );
        let hashes: Vec<u64> = cols["prefix_hashes"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_u64().unwrap())
            .collect();
        assert_eq!(hashes, r.prefix_hashes);
        assert_eq!(cols["prompt_text"][i].as_str(), r.prompt_text.as_deref());
        assert_eq!(cols["status"][i].as_u64(), r.status.map(u64::from));
    }
}

#[test]
fn pyarrow_reads_result_and_sample_rows_with_the_same_values() {
    if !pyarrow_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let res_path = dir.path().join("res.parquet");
    let results: Vec<ResultRow> = (0..10)
        .flat_map(|i| [full_result(i), sparse_result(i)])
        .collect();
    write_file(&res_path, &results, &meta()).unwrap();
    let v = python_json(DUMP, &res_path);
    let cols = &v["columns"];
    assert_eq!(v["meta"]["retrace.schema"], "result");
    for (i, r) in results.iter().enumerate() {
        assert_eq!(cols["request_id"][i], r.request_id.as_str());
        assert_eq!(cols["lateness_us"][i], r.lateness_us);
        assert_eq!(cols["load_level"][i].as_f64(), Some(r.load_level));
        assert_eq!(cols["tpot_us"][i].as_f64(), r.tpot_us);
        assert_eq!(
            cols["error_kind"][i].as_str(),
            r.error_kind.map(|k| k.as_str())
        );
        assert_eq!(
            cols["e2e_from_intended_us"][i].as_u64(),
            r.e2e_from_intended_us
        );
    }

    let s_path = dir.path().join("s.parquet");
    let samples: Vec<SampleRow> = (0..30).map(sample).collect();
    write_file(&s_path, &samples, &meta()).unwrap();
    let v = python_json(DUMP, &s_path);
    let cols = &v["columns"];
    for (i, s) in samples.iter().enumerate() {
        assert_eq!(cols["time_us"][i], s.time_us);
        assert_eq!(cols["source"][i], s.source.as_str());
        assert_eq!(cols["name"][i], s.name.as_str());
        assert_eq!(cols["labels"][i], s.labels.as_str());
        assert_eq!(cols["value"][i].as_f64(), Some(s.value));
    }
}

#[test]
fn retrace_reads_a_file_written_by_pyarrow() {
    if !pyarrow_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.parquet");
    // pyarrow's own choices: int64 everywhere, dictionary strings, an older file without
    // most nullable columns.
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
t = pa.table({
  "request_id": ["a", "b"],
  "arrival_us": pa.array([2, 1], pa.int64()),
  "endpoint": pa.array(["chat", "completions"]).dictionary_encode(),
  "stream": [True, False],
  "prompt_tokens": pa.array([10, None], pa.int64()),
  "prompt_tokens_source": ["usage", "usage"],
  "output_tokens_source": ["usage", "unknown"],
  "prefix_hashes": pa.array([[1, 2], []], pa.list_(pa.int64())),
  "outcome": ["ok", "timeout"],
})
t = t.replace_schema_metadata({"retrace.schema": "request", "retrace.schema_version": "1.0"})
pq.write_table(t, sys.argv[1], compression=sys.argv[2])
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .arg("zstd")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<RequestRow> = retrace_traces::read::read_all(&[path]).unwrap();
    assert_eq!(rows.len(), 2);
    // One file is read in its stored order.
    assert_eq!(rows[0].request_id, "a");
    assert_eq!(rows[0].arrival_us, 2);
    assert_eq!(rows[0].prompt_tokens, Some(10));
    assert_eq!(rows[0].prefix_hashes, vec![1, 2]);
    assert_eq!(rows[0].endpoint, retrace_traces::Endpoint::Chat);
    assert_eq!(rows[1].outcome, retrace_traces::Outcome::Timeout);
    assert_eq!(rows[1].prefix_hashes, Vec::<u64>::new());
    assert!(rows[1].session_id.is_none() && rows[1].itl.is_none());
}

#[test]
fn snappy_file_from_pyarrow_gives_an_error_naming_the_file() {
    if !pyarrow_available() {
        return;
    }
    // The parquet crate is built with zstd only (see the workspace Cargo.toml); pyarrow's
    // default codec is snappy, so such a file must fail clearly, not panic.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snappy.parquet");
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
t = pa.table({"time_us": pa.array([1], pa.int64()), "source": ["server"], "name": ["x"],
              "labels": [""], "value": [1.0]})
t = t.replace_schema_metadata({"retrace.schema": "sample", "retrace.schema_version": "1.0"})
pq.write_table(t, sys.argv[1], compression="snappy")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match retrace_traces::read::read_all::<SampleRow>(&[path]) {
        // A build with snappy enabled reads it.
        Ok(rows) => assert_eq!(rows.len(), 1),
        Err(e) => assert!(e.to_string().contains("snappy.parquet"), "{e}"),
    }
}
