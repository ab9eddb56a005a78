//! `bench/run.sh --smoke`: every benchmark harness starts and produces a row, the report is
//! written, and nothing the script started is left running. CI runs only this smoke test, not
//! the benchmarks themselves.
//!
//! It uses the binaries of this test build (the `retrace` binary and the examples that
//! `cargo test --workspace` builds: `bench_sse`, `sim_bench`, `recorder_bench`,
//! `gen_results`). A missing peer tool (nginx, wrk, h2load, GuideLLM, pyarrow) or example
//! makes that harness skip with a message; with `RETRACE_REQUIRE_BENCH=1` any skip fails.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn require() -> bool {
    std::env::var("RETRACE_REQUIRE_BENCH").is_ok_and(|v| v == "1")
}

fn has(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Processes whose command line mentions `dir` (everything the script starts gets paths
/// under its work dir, which lives in `dir`).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    let me = std::process::id().to_string();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.chars().all(|c| c.is_ascii_digit()) || name == me {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("{name}: {cmdline}"));
            }
        }
    }
    found
}

fn rows(results: &str, cmp: &str) -> Vec<serde_json::Value> {
    results
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["cmp"] == cmp)
        .collect()
}

#[test]
fn bench_run_smoke_produces_a_row_per_harness() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let retrace = PathBuf::from(env!("CARGO_BIN_EXE_retrace"));
    let bin_dir = retrace.parent().unwrap().to_path_buf();
    for tool in ["bash", "python3", "taskset"] {
        if !has(tool) {
            assert!(!require(), "RETRACE_REQUIRE_BENCH=1 but {tool} is missing");
            eprintln!("skipping bench smoke: {tool} is not installed");
            return;
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("benchmarks.md");
    let results = tmp.path().join("results.jsonl");
    let mut child = Command::new("bash")
        .arg(root.join("bench/run.sh"))
        .arg("--smoke")
        .env("RETRACE_BIN", &retrace)
        .env("BENCH_BIN_DIR", &bin_dir)
        .env("BENCH_OUT", &report)
        .env("BENCH_RESULTS_COPY", &results)
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the smoke run takes ~25 s on a loaded 2-core machine; kill it well past that.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench/run.sh --smoke ran past 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        status.success(),
        "bench/run.sh --smoke failed: {status}\n{log}"
    );
    eprintln!("{log}");

    // Nothing the script started is still running (it kills and waits on exit).
    let left = processes_mentioning(tmp.path());
    assert!(left.is_empty(), "left running: {left:?}");

    let report = std::fs::read_to_string(&report).unwrap();
    let results = std::fs::read_to_string(&results).unwrap();
    for section in [
        "## 1. Proxy overhead",
        "## 2. Load-client fidelity",
        "## 3. Recorder",
        "## 4. Analyzer",
        "## 5. Sim",
        "## Machine and conditions",
    ] {
        assert!(
            report.contains(section),
            "report lacks {section}:\n{report}"
        );
    }
    // Each harness produced a row, or said why it skipped (a skip fails under REQUIRE, via
    // the script's exit status above).
    let skipped = |what: &str| log.contains("SKIPPED") && log.contains(what);
    let proxy = rows(&results, "proxy");
    if proxy.is_empty() {
        assert!(
            skipped("proxy overhead"),
            "no proxy row and no skip:\n{log}"
        );
    } else {
        let rt: Vec<_> = proxy.iter().filter(|r| r["target"] == "retrace").collect();
        assert!(!rt.is_empty(), "no row through retrace proxy:\n{results}");
        for r in &rt {
            if r["mode"] == "ttfb" {
                assert!(r["ttfb"]["requests"].as_u64().unwrap() > 0, "{r}");
            } else {
                assert!(r["wrk"]["requests"].as_u64().unwrap() > 0, "{r}");
                assert_eq!(r["wrk"]["errors"], 0, "errors through retrace: {r}");
            }
        }
        for mode in ["max", "fixed", "paced", "ttfb"] {
            assert!(
                rt.iter().any(|r| r["mode"] == mode),
                "no {mode} row through retrace:\n{results}"
            );
        }
        // Paced streams are paced: bench_sse sends each of a response's 18 events 1 ms
        // after the one before (bench/run.sh's PACED_GAP_US), so no stream is quicker than
        // that; unpaced, the whole response takes well under a millisecond here.
        for r in proxy.iter().filter(|r| r["mode"] == "paced") {
            let p50_us = r["wrk"]["lat_p50_us"].as_u64().unwrap();
            assert!(
                p50_us >= 17_000,
                "paced stream quicker than its pacing: {r}"
            );
        }
        let rec = rows(&results, "proxy_recording");
        assert!(
            rec.first().is_some_and(|r| r["files"].as_u64() > Some(0)),
            "retrace recorded no Parquet file while proxying: {results}"
        );
        if has("nginx") || Path::new("/usr/sbin/nginx").exists() {
            assert!(proxy.iter().any(|r| r["target"] == "nginx"), "{results}");
        }
    }
    let fid = rows(&results, "fidelity");
    if fid.is_empty() {
        assert!(skipped("fidelity"), "no fidelity row and no skip:\n{log}");
    } else {
        let r = &fid[0]["r"];
        assert!(
            r["joined"].as_u64().unwrap() > 0,
            "no request joined with the truth: {r}"
        );
        assert!(r["ttft_err_p50_us"].is_number(), "{r}");
    }
    let rec = rows(&results, "recorder");
    if rec.is_empty() {
        assert!(skipped("recorder"), "no recorder row and no skip:\n{log}");
    } else {
        assert_eq!(rec[0]["r"]["rows"], 20_000, "{results}");
        assert!(rec[0]["r"]["bytes_per_row"].as_f64().unwrap() > 0.0);
    }
    let an = rows(&results, "analyzer");
    if an.is_empty() {
        assert!(skipped("analyzer"), "no analyzer row and no skip:\n{log}");
    } else {
        assert!(an[0]["peak_rss_kb"].as_u64().unwrap() > 0, "{results}");
    }
    let sim = rows(&results, "sim");
    if sim.is_empty() {
        assert!(skipped("sim"), "no sim row and no skip:\n{log}");
    } else {
        assert!(sim[0]["r"]["sse_events"].as_u64().unwrap() > 0, "{results}");
    }
}
