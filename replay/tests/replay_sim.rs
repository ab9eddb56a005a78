//! Replay against the sim, in-process on loopback. Every run is bounded in count and time.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use arrow_array::{Array, Int64Array, StringArray, UInt32Array};
use retrace_replay::{replay, ReplayConfig, ReplayError, ScheduleConfig, TraceInput};
use retrace_sim::{spawn, SimConfig};
use retrace_traces::{
    Endpoint, ErrorKind, RequestRow, ResultRow, SampleRow, SampleSource, TokenSource,
};

fn row(i: usize, arrival_us: i64, prompt: u32, output: u32, endpoint: Endpoint) -> RequestRow {
    RequestRow {
        prompt_tokens: Some(prompt),
        output_tokens: Some(output),
        status: Some(200),
        ..RequestRow::imported(format!("req-{i}"), arrival_us, endpoint)
    }
}

/// `n` rows with irregular (seeded) gaps averaging `mean_gap_us`.
fn irregular_trace(n: usize, mean_gap_us: i64) -> Vec<RequestRow> {
    let mut t = 1_700_000_000_000_000i64;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let gap = (x % (2 * mean_gap_us as u64)) as i64;
            if i > 0 {
                t += gap;
            }
            let ep = if i % 2 == 0 {
                Endpoint::Chat
            } else {
                Endpoint::Completions
            };
            row(i, t, 20 + (x % 200) as u32, 2 + (x % 3) as u32, ep)
        })
        .collect()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(rows: Vec<RequestRow>, target: &str, out: &Path) -> ReplayConfig {
    let mut c = ReplayConfig::new(TraceInput::Rows(rows), target, out);
    c.request_timeout = Duration::from_secs(60);
    c.sample_interval = Duration::from_millis(200);
    c
}

fn results(out: &Path) -> Vec<ResultRow> {
    retrace_traces::read::read_all::<ResultRow>(&[out.to_path_buf()]).unwrap()
}

fn actual_rate(rows: &[ResultRow]) -> f64 {
    // Hand-over times (intended + lateness): what the schedule kept, before each
    // connection's own setup time.
    let first = rows
        .iter()
        .map(|r| r.intended_send_us + r.lateness_us)
        .min()
        .unwrap();
    let last = rows
        .iter()
        .map(|r| r.intended_send_us + r.lateness_us)
        .max()
        .unwrap();
    (rows.len() - 1) as f64 / ((last - first) as f64 / 1e6)
}

/// A sim on its own runtime thread, as a real server would be in its own process: its
/// engine's steps are not queued behind the client's tasks.
struct SeparateSim {
    handle: Option<retrace_sim::SimHandle>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SeparateSim {
    fn start(config: SimConfig) -> SeparateSim {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let handle = runtime.block_on(spawn(config, loopback())).unwrap();
            SeparateSim {
                handle: Some(handle),
                runtime: Some(runtime),
            }
        })
        .join()
        .unwrap()
    }

    fn base_url(&self) -> String {
        self.handle.as_ref().unwrap().base_url()
    }

    async fn shutdown(mut self) {
        let handle = self.handle.take().unwrap();
        let runtime = self.runtime.take().unwrap();
        runtime.spawn(handle.shutdown()).await.unwrap().unwrap();
        runtime.shutdown_background();
    }
}

async fn never() {
    std::future::pending::<()>().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn achieved_rate_within_one_percent_at_2x_and_3x() {
    // The sim's clock runs 10× faster, and so does the schedule: 30 s of trace (target
    // time) at 2× is 1.5 s of real time. The sim runs on its own runtime, as a server in its
    // own process would: send times are stamped when the request head is written, and on a
    // shared runtime those writes would queue behind the sim's engine steps.
    let sim = SeparateSim::start(SimConfig {
        speedup: 10.0,
        ..SimConfig::default()
    });
    let trace = irregular_trace(150, 200_000);
    let span_us = (trace.last().unwrap().arrival_us - trace[0].arrival_us) as f64;
    let trace_rate = (trace.len() - 1) as f64 / (span_us / 1e6);
    for (speed, amplify) in [(2.0, 1u32), (3.0, 1), (1.0, 3)] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(trace.clone(), &sim.base_url(), dir.path());
        c.clock_speedup = 10.0;
        c.schedule = ScheduleConfig {
            speed,
            amplify,
            seed: 3,
            ..ScheduleConfig::default()
        };
        // The rate the schedule asks for, count-based: (n − 1) / (last − first offset).
        let rows_in: std::sync::Arc<[retrace_replay::schedule::TraceRequest]> = trace
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, r)| retrace_replay::schedule::TraceRequest::from_row(i, r).unwrap())
            .collect();
        let plan: Vec<_> = retrace_replay::schedule::schedule(rows_in, &c.schedule)
            .unwrap()
            .collect();
        let n = plan.len() as u64;
        assert_eq!(n, 150 * u64::from(amplify));
        let plan_span_us = (plan.last().unwrap().offset_us - plan[0].offset_us) as f64;
        let target = (n - 1) as f64 / (plan_span_us / 1e6);
        if amplify == 1 {
            assert!((target / (trace_rate * speed) - 1.0).abs() < 1e-6);
        }
        let summary = tokio::time::timeout(Duration::from_secs(60), replay(c, never()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(summary.sent, n);
        assert_eq!(summary.ok, n, "{:?}", summary.errors_by_kind);
        let rows = results(dir.path());
        assert_eq!(rows.len() as u64, n);
        let achieved = actual_rate(&rows);
        let off = (achieved / target - 1.0).abs();
        eprintln!(
            "speed {speed} amplify {amplify}: target {target:.3} req/s, achieved {achieved:.3} req/s ({:.3}% off), lateness p99 {} µs",
            off * 100.0,
            summary.lateness_p99_us
        );
        assert!(off < 0.01, "achieved {achieved} vs {target}");
        assert!((summary.achieved_rps / target - 1.0).abs() < 0.01);
        let level = speed * f64::from(amplify);
        assert!(rows.iter().all(|r| (r.load_level - level).abs() < 1e-9));
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_x_inter_arrivals_match_the_trace() {
    let sim = spawn(SimConfig::default(), loopback()).await.unwrap();
    let trace = irregular_trace(40, 50_000);
    let dir = tempfile::tempdir().unwrap();
    let summary = replay(config(trace.clone(), &sim.base_url(), dir.path()), never())
        .await
        .unwrap();
    assert_eq!(summary.ok, 40);
    let by_id: HashMap<String, ResultRow> = results(dir.path())
        .into_iter()
        .map(|r| (r.request_id.clone(), r))
        .collect();
    let mut worst_us = 0i64;
    let mut errors_us = Vec::new();
    for w in trace.windows(2) {
        let (a, b) = (&by_id[&w[0].request_id], &by_id[&w[1].request_id]);
        let trace_gap = w[1].arrival_us - w[0].arrival_us;
        assert_eq!(
            b.intended_send_us - a.intended_send_us,
            trace_gap,
            "intended gaps are the trace's"
        );
        let err = ((b.actual_send_us - a.actual_send_us) - trace_gap).abs();
        worst_us = worst_us.max(err);
        errors_us.push(err);
    }
    errors_us.sort_unstable();
    let median = errors_us[errors_us.len() / 2];
    eprintln!("inter-arrival error: median {median} µs, worst {worst_us} µs");
    // Loose on purpose: tests share 2 cores with each other (and CI with everything else),
    // and a starved thread wakes late. The precise figure is in docs/benchmarks.md.
    assert!(median < 5_000, "median inter-arrival error {median} µs");
    sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_keeps_exactly_n_in_flight() {
    let sim = spawn(SimConfig::default(), loopback()).await.unwrap();
    let trace: Vec<RequestRow> = (0..60)
        .map(|i| row(i, 1_000 * i as i64, 30, 8, Endpoint::Chat))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(trace, &sim.base_url(), dir.path());
    c.users = Some(6);
    let summary = tokio::time::timeout(Duration::from_secs(60), replay(c, never()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.ok, 60);
    let rows = results(dir.path());
    let max = rows.iter().map(|r| r.in_flight_at_send).max().unwrap();
    assert_eq!(max, 6, "N reached, never more");
    sim.shutdown().await.unwrap();
}

/// Reads the sim's truth file: request_id → (prompt_tokens, arrival_us, first_token_us).
fn truth(path: &Path) -> HashMap<String, (u32, i64, Option<i64>)> {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = HashMap::new();
    for batch in reader {
        let batch = batch.unwrap();
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let ids = col("request_id");
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        let prompt = col("prompt_tokens");
        let prompt = prompt.as_any().downcast_ref::<UInt32Array>().unwrap();
        let arrival = col("arrival_us");
        let arrival = arrival.as_any().downcast_ref::<Int64Array>().unwrap();
        let first = col("first_token_us");
        let first = first.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..batch.num_rows() {
            let ft = (!first.is_null(i)).then(|| first.value(i));
            out.insert(
                ids.value(i).to_string(),
                (prompt.value(i), arrival.value(i), ft),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_token_counts_are_exact_and_prefixes_shared() {
    let truth_dir = tempfile::tempdir().unwrap();
    let truth_path = truth_dir.path().join("truth.parquet");
    let sim = spawn(
        SimConfig {
            speedup: 10.0,
            truth_path: Some(truth_path.clone()),
            ..SimConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let lengths = [1u32, 7, 8, 9, 100, 511, 512, 1000, 3000];
    let mut trace = Vec::new();
    for (i, &len) in lengths.iter().enumerate() {
        for (j, ep) in [Endpoint::Chat, Endpoint::Completions]
            .into_iter()
            .enumerate()
        {
            let mut r = row(i * 2 + j, 1_000 * (i * 2 + j) as i64, len, 2, ep);
            r.prefix_hashes = vec![42, 43];
            trace.push(r);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(trace.clone(), &sim.base_url(), dir.path());
    c.clock_speedup = 10.0;
    let summary = replay(c, never()).await.unwrap();
    assert_eq!(
        summary.ok,
        trace.len() as u64,
        "{:?}",
        summary.errors_by_kind
    );
    assert_eq!(summary.prompt_tokens_source, TokenSource::Tokenizer);
    // Only the chat prompts of 1 and 7 tokens cannot be made: the template alone is 7.
    assert_eq!(summary.prompt_token_mismatches, 2);
    sim.shutdown().await.unwrap();
    let truth = truth(&truth_path);
    for r in &trace {
        let want = r.prompt_tokens.unwrap();
        // The chat template costs 7 tokens in the sim: shorter chat prompts cannot exist.
        let want = if r.endpoint == Endpoint::Chat {
            want.max(8)
        } else {
            want
        };
        assert_eq!(
            truth[&r.request_id].0, want,
            "{} ({:?})",
            r.request_id, r.endpoint
        );
    }
    for row in results(dir.path()) {
        assert_eq!(row.prompt_tokens_source, TokenSource::Tokenizer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttft_matches_the_sims_truth_at_200_streams() {
    let truth_dir = tempfile::tempdir().unwrap();
    let truth_path = truth_dir.path().join("truth.parquet");
    let sim = SeparateSim::start(SimConfig {
        truth_path: Some(truth_path.clone()),
        ..SimConfig::default()
    });
    // 200 streams started within 200 ms, each long enough to overlap all the others.
    let n: usize = std::env::var("TTFT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let trace: Vec<RequestRow> = (0..n)
        .map(|i| row(i, 1_000 * i as i64, 64, 40, Endpoint::Chat))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        replay(config(trace, &sim.base_url(), dir.path()), never()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(summary.ok, n as u64, "{:?}", summary.errors_by_kind);
    sim.shutdown().await;
    let truth = truth(&truth_path);
    let rows = results(dir.path());
    assert!(
        rows.iter().map(|r| r.in_flight_at_send).max().unwrap() as usize >= n / 2,
        "streams overlapped"
    );
    let mut diffs: Vec<i64> = rows
        .iter()
        .map(|r| {
            let (_, arrival, first) = truth[&r.request_id];
            let true_ttft = first.unwrap() - arrival;
            r.ttft_us.unwrap() as i64 - true_ttft
        })
        .collect();
    diffs.sort_unstable();
    let p50 = diffs[diffs.len() / 2];
    let p90 = diffs[diffs.len() * 9 / 10];
    let p99 = diffs[diffs.len() * 99 / 100];
    eprintln!(
        "client TTFT − sim TTFT: min {} µs, p50 {p50} µs, p90 {p90} µs, p99 {p99} µs, max {} µs",
        diffs[0],
        diffs[diffs.len() - 1]
    );
    // The issue's aim: ±2 ms. Both sides time the bytes when they reached the host's socket
    // (kernel receive stamps), so neither process's busy core is counted: measured here
    // (debug build, loaded 2-core machine) p50 ≈ 10 µs, p90 ≈ 15 µs, max < 0.1 ms. The max
    // is not gated: a thread preempted between a stamp and its syscall (the client's send,
    // the sim's first-token hand-off) is off by the preemption. The client is never
    // *earlier* than the server's truth by more than clock noise.
    assert!(
        diffs[0] > -1_000,
        "client TTFT below the server's: {} µs",
        diffs[0]
    );
    assert!(p50.abs() < 2_000, "p50 difference {p50} µs");
    assert!(p90.abs() < 2_000, "p90 difference {p90} µs");
    assert!(p99.abs() < 2_000, "p99 difference {p99} µs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_target_and_bad_trace_give_clear_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let err = replay(
        config(
            irregular_trace(3, 1000),
            &format!("http://{addr}"),
            dir.path(),
        ),
        never(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ReplayError::TargetUnreachable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    // Rows without a prompt length cannot be replayed; a trace of only such rows is an
    // error that says so (mixed in with good rows they are skipped and counted).
    let mut bad = irregular_trace(3, 1000);
    for r in &mut bad {
        r.prompt_tokens = None;
    }
    let err = replay(config(bad, &format!("http://{addr}"), dir.path()), never())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("none to replay") && err.to_string().contains("3 have no"),
        "{err}"
    );

    let garbage = dir.path().join("trace.parquet");
    std::fs::write(&garbage, b"not parquet at all").unwrap();
    let c = ReplayConfig::new(
        TraceInput::Files(vec![garbage.clone()]),
        format!("http://{addr}"),
        dir.path(),
    );
    let err = replay(c, never()).await.unwrap_err();
    assert!(err.to_string().contains("trace.parquet"), "{err}");

    let c = ReplayConfig::new(
        TraceInput::Rows(vec![]),
        format!("http://{addr}"),
        dir.path(),
    );
    let err = replay(c, never()).await.unwrap_err();
    assert!(err.to_string().contains("no requests"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flapping_target_is_recorded_as_errors_and_the_run_goes_on() {
    let sim = spawn(SimConfig::default(), loopback()).await.unwrap();
    let addr = sim.local_addr();
    // 3 s of trace, 20 req/s.
    let trace: Vec<RequestRow> = (0..60)
        .map(|i| row(i, 50_000 * i as i64, 20, 2, Endpoint::Chat))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(trace, &sim.base_url(), dir.path());
    c.request_timeout = Duration::from_secs(5);
    let run = tokio::spawn(replay(c, never()));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    sim.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sim = spawn(SimConfig::default(), addr).await.unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    sim.shutdown().await.unwrap();
    eprintln!("flapping: {summary:?}");
    assert_eq!(summary.sent, 60);
    assert!(
        summary.ok >= 10,
        "ok before and after the outage: {}",
        summary.ok
    );
    assert!(
        summary.errors >= 5,
        "errors during the outage: {:?}",
        summary.errors_by_kind
    );
    let rows = results(dir.path());
    assert_eq!(rows.len(), 60);
    let last_ok = rows
        .iter()
        .filter(|r| r.error_kind.is_none())
        .map(|r| r.intended_send_us)
        .max()
        .unwrap();
    let first_err = rows
        .iter()
        .filter(|r| r.error_kind.is_some())
        .map(|r| r.intended_send_us)
        .min()
        .unwrap();
    assert!(
        last_ok > first_err,
        "requests succeeded again after the restart"
    );
    assert!(rows
        .iter()
        .any(|r| r.error_kind == Some(ErrorKind::Connect)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_in_flight_and_files_are_complete() {
    let sim = spawn(SimConfig::default(), loopback()).await.unwrap();
    // Long outputs so requests are in flight when the run is stopped.
    let trace: Vec<RequestRow> = (0..50)
        .map(|i| row(i, 20_000 * i as i64, 20, 2000, Endpoint::Chat))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(trace, &sim.base_url(), dir.path());
    c.drain_timeout = Duration::from_millis(200);
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        replay(c, tokio::time::sleep(Duration::from_millis(500))),
    )
    .await
    .unwrap()
    .unwrap();
    sim.shutdown().await.unwrap();
    assert!(summary.interrupted);
    assert!(
        summary.sent > 5 && summary.sent < 50,
        "sent {}",
        summary.sent
    );
    let cancelled = summary
        .errors_by_kind
        .get("cancelled")
        .copied()
        .unwrap_or(0);
    assert!(cancelled > 0, "{:?}", summary.errors_by_kind);
    let rows = results(dir.path());
    assert_eq!(rows.len() as u64, summary.sent);
    let samples = retrace_traces::read::read_all::<SampleRow>(&[dir.path().to_path_buf()]).unwrap();
    assert!(
        samples
            .iter()
            .any(|s| s.source == SampleSource::Server && s.name == "kv_cache_usage"),
        "server scraped"
    );
    assert!(samples
        .iter()
        .any(|s| s.source == SampleSource::Client && s.name == "in_flight"));
    assert!(samples
        .iter()
        .any(|s| s.source == SampleSource::Client && s.name == "client_limited"));
    let meta = retrace_traces::read::file_meta(&dir.path().join("samples-summary.parquet"))
        .unwrap()
        .1;
    assert!(meta
        .extra
        .iter()
        .any(|(k, _)| k == "retrace.client_limited"));
    assert!(dir.path().join("summary.json").exists());
}

/// A real llama.cpp server (tiny model) from `scripts/llama-server.sh`; None (test skipped
/// with a note) when it is not installed here.
struct Llama {
    url: String,
    port: String,
}

impl Llama {
    fn start() -> Option<Llama> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama-server.sh");
        let out = std::process::Command::new(&script)
            .args(["start", "--parallel", "4"])
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "llama.cpp not available, skipping: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let port = url.rsplit(':').next()?.to_string();
        Some(Llama { url, port })
    }
}

impl Drop for Llama {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/llama-server.sh");
        let _ = std::process::Command::new(script)
            .args(["stop", "--port", &self.port])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_llama_cpp_prompt_lengths_and_detection() {
    let Some(llama) = Llama::start() else { return };
    let mut trace = Vec::new();
    for (i, &len) in [5u32, 40, 300, 1000].iter().enumerate() {
        for (j, ep) in [Endpoint::Chat, Endpoint::Completions]
            .into_iter()
            .enumerate()
        {
            trace.push(row(i * 2 + j, 20_000 * (i * 2 + j) as i64, len, 4, ep));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(trace.clone(), &llama.url, dir.path());
    c.sample_interval = Duration::from_millis(100);
    let summary = tokio::time::timeout(Duration::from_secs(120), replay(c, never()))
        .await
        .unwrap()
        .unwrap();
    eprintln!("llama.cpp: {summary:?}");
    assert_eq!(summary.server_kind, retrace_replay::ServerKind::Llamacpp);
    assert_eq!(
        summary.ok,
        trace.len() as u64,
        "{:?}",
        summary.errors_by_kind
    );
    assert_eq!(summary.prompt_tokens_source, TokenSource::Tokenizer);
    // The chat template costs more than 5 tokens: that one prompt cannot be exact.
    assert_eq!(
        summary.prompt_token_mismatches, 1,
        "only the 5-token chat prompt is off"
    );
    for r in results(dir.path()) {
        assert_eq!(r.output_tokens, Some(4), "{}", r.request_id);
        assert!(r.ttft_us.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_limited_is_marked_and_process_is_sampled() {
    let sim = spawn(SimConfig::default(), loopback()).await.unwrap();
    let trace: Vec<RequestRow> = (0..20)
        .map(|i| row(i, 30_000 * i as i64, 20, 2, Endpoint::Completions))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(trace, &sim.base_url(), dir.path());
    // No client can send with zero lateness: the run must say it was client-limited.
    c.max_lateness = Duration::ZERO;
    c.sample_interval = Duration::from_millis(100);
    c.process = Some(retrace_replay::runner::ProcessSelector::Pid(
        std::process::id(),
    ));
    let summary = replay(c, never()).await.unwrap();
    sim.shutdown().await.unwrap();
    assert!(summary.client_limited);
    let samples = retrace_traces::read::read_all::<SampleRow>(&[dir.path().to_path_buf()]).unwrap();
    let flag = samples.iter().find(|s| s.name == "client_limited").unwrap();
    assert_eq!(flag.value, 1.0);
    let rss = samples
        .iter()
        .find(|s| s.source == SampleSource::Process && s.name == "rss_bytes")
        .unwrap();
    assert!(rss.value > 1e6, "our own RSS is over 1 MB: {}", rss.value);
    assert!(samples
        .iter()
        .any(|s| s.source == SampleSource::Process && s.name == "cpu_percent"));
    let meta = retrace_traces::read::file_meta(&dir.path().join("samples-summary.parquet"))
        .unwrap()
        .1;
    assert!(meta
        .extra
        .contains(&("retrace.client_limited".to_string(), "true".to_string())));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(json["client_limited"], true);
    assert_eq!(json["sent"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_public_trace_and_parquet_directory_inputs() {
    let sim = spawn(
        SimConfig {
            speedup: 50.0,
            ..SimConfig::default()
        },
        loopback(),
    )
    .await
    .unwrap();
    let azure = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../traces/samples/azure_2023/AzureLLMInferenceTrace_conv.csv");
    let dir = tempfile::tempdir().unwrap();
    let mut c = ReplayConfig::new(
        TraceInput::Files(vec![azure]),
        sim.base_url(),
        dir.path().join("azure"),
    );
    c.clock_speedup = 50.0;
    c.schedule = ScheduleConfig {
        max_requests: Some(25),
        ..ScheduleConfig::default()
    };
    let summary = tokio::time::timeout(Duration::from_secs(120), replay(c, never()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (summary.sent, summary.ok),
        (25, 25),
        "{:?}",
        summary.errors_by_kind
    );
    let rows = results(&dir.path().join("azure"));
    assert!(
        rows.iter().all(|r| r.request_id.starts_with("azure-")),
        "{:?}",
        rows[0].request_id
    );

    // A recording directory of request Parquet.
    let recording = dir.path().join("recording");
    std::fs::create_dir_all(&recording).unwrap();
    let trace = irregular_trace(12, 20_000);
    let meta = retrace_traces::schema::FileMeta {
        producer: "test".into(),
        ..Default::default()
    };
    retrace_traces::write::write_file(&recording.join("requests-1.parquet"), &trace[..6], &meta)
        .unwrap();
    retrace_traces::write::write_file(&recording.join("requests-2.parquet"), &trace[6..], &meta)
        .unwrap();
    let mut c = ReplayConfig::new(
        TraceInput::Files(vec![recording]),
        sim.base_url(),
        dir.path().join("out"),
    );
    c.clock_speedup = 50.0;
    let summary = replay(c, never()).await.unwrap();
    assert_eq!(summary.ok, 12, "{:?}", summary.errors_by_kind);
    sim.shutdown().await.unwrap();
}

/// A TLS terminator on loopback in front of the sim (certificate for 127.0.0.1, self-signed):
/// returns its https URL and the PEM of its certificate.
async fn tls_front(backend: SocketAddr) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert_pem = certified.cert.pem();
    let cert = certified.cert.der().clone();
    let key =
        rustls_pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Bounded: the test makes a handful of connections.
        for _ in 0..64 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    (format!("https://{addr}"), cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_target_with_an_extra_root() {
    let sim = spawn(SimConfig::default(), loopback()).await.unwrap();
    let (url, pem) = tls_front(sim.local_addr()).await;
    let trace: Vec<RequestRow> = (0..10)
        .map(|i| row(i, 5_000 * i as i64, 20, 3, Endpoint::Chat))
        .collect();
    let dir = tempfile::tempdir().unwrap();

    // Without the certificate trusted, the handshake fails: a clear unreachable error.
    let err = replay(config(trace.clone(), &url, dir.path()), never())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplayError::TargetUnreachable { .. }),
        "{err}"
    );
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let mut c = config(trace, &url, dir.path());
    c.ca_certs = vec![ca];
    c.metrics_urls = vec![format!("{url}/metrics")];
    let summary = replay(c, never()).await.unwrap();
    sim.shutdown().await.unwrap();
    assert_eq!(summary.ok, 10, "{:?}", summary.errors_by_kind);
    assert_eq!(summary.prompt_tokens_source, TokenSource::Tokenizer);

    let bad = dir.path().join("empty.pem");
    std::fs::write(&bad, "").unwrap();
    let mut c = config(irregular_trace(2, 1000), &url, dir.path());
    c.ca_certs = vec![bad];
    let err = replay(c, never()).await.unwrap_err();
    assert!(err.to_string().contains("empty.pem"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_started_together_produce_the_whole_trace() {
    let sim = spawn(SimConfig::default(), loopback()).await.unwrap();
    let mut trace = irregular_trace(30, 20_000);
    for (i, r) in trace.iter_mut().enumerate() {
        r.session_id = Some(format!("s{}", i % 7));
    }
    let first_arrival = trace[0].arrival_us;
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let start_at_us = now_us + 1_500_000;
    let dir = tempfile::tempdir().unwrap();
    let mut runs = Vec::new();
    for index in 0..2u32 {
        let mut c = config(
            trace.clone(),
            &sim.base_url(),
            &dir.path().join(format!("shard-{index}")),
        );
        c.start_at_us = Some(start_at_us);
        c.schedule = ScheduleConfig {
            shard: Some(retrace_replay::shape::Shard { index, count: 2 }),
            ..ScheduleConfig::default()
        };
        runs.push(tokio::spawn(replay(c, never())));
    }
    let mut total = 0;
    for run in runs {
        total += tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .ok;
    }
    sim.shutdown().await.unwrap();
    assert_eq!(total, 30);
    let rows = results(dir.path());
    let mut ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        30,
        "every request exactly once across the shards"
    );
    let by_id: HashMap<&str, &RequestRow> =
        trace.iter().map(|r| (r.request_id.as_str(), r)).collect();
    for r in &rows {
        let shard = r.shard.unwrap();
        // Sessions stay on one shard.
        assert!(rows
            .iter()
            .filter(|o| o.session_id == r.session_id)
            .all(|o| o.shard == Some(shard)));
        assert_eq!(
            r.intended_send_us,
            start_at_us + (by_id[r.request_id.as_str()].arrival_us - first_arrival)
        );
        assert!(r.actual_send_us >= r.intended_send_us);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_with_duration_loops_the_trace_and_stops_on_time() {
    let sim = spawn(SimConfig::default(), loopback()).await.unwrap();
    let trace: Vec<RequestRow> = (0..5)
        .map(|i| row(i, 1_000 * i as i64, 20, 3, Endpoint::Chat))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(trace, &sim.base_url(), dir.path());
    c.users = Some(4);
    c.think_time = Duration::from_millis(20);
    c.schedule.duration = Some(Duration::from_millis(1_200));
    let began = std::time::Instant::now();
    let summary = tokio::time::timeout(Duration::from_secs(60), replay(c, never()))
        .await
        .unwrap()
        .unwrap();
    let took = began.elapsed();
    sim.shutdown().await.unwrap();
    assert!(summary.sent > 5, "the trace looped: {}", summary.sent);
    assert!(took < Duration::from_secs(20), "{took:?}");
    let rows = results(dir.path());
    assert!(rows.iter().any(|r| r.request_id.contains("#loop")));
    assert!(rows.iter().all(|r| r.in_flight_at_send <= 4));
}

/// A proxy recording holds `/tokenize`, `/v1/models` and other calls besides generation
/// requests; replay skips and counts them instead of failing (found by the demo).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_7_recordings_with_other_endpoints_replay_generation_rows_only() {
    let sim = retrace_sim::spawn(retrace_sim::SimConfig::default(), loopback())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = 1_700_000_000_000_000i64;
    let rows: Vec<RequestRow> = (0..6)
        .map(|i| {
            if i % 2 == 1 {
                let mut r = row(
                    i,
                    base + i as i64 * 20_000,
                    16,
                    4,
                    Endpoint::Other("/tokenize".into()),
                );
                r.prompt_tokens = None;
                r.output_tokens = None;
                r
            } else {
                row(i, base + i as i64 * 20_000, 16, 4, Endpoint::Chat)
            }
        })
        .collect();
    let mut c = config(rows, &sim.base_url(), dir.path());
    c.metrics_urls.clear();
    let summary = replay(c, never()).await.unwrap();
    assert_eq!(summary.sent, 3, "only the generation rows are replayed");
    assert_eq!(summary.rows_skipped, 3);
    assert_eq!(summary.ok, 3);

    let only_other = vec![row(0, base, 16, 4, Endpoint::Other("/v1/models".into()))];
    let err = replay(
        config(only_other, &sim.base_url(), &dir.path().join("none")),
        never(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("none to replay"), "{err}");
    sim.shutdown().await.unwrap();
}
