//! Engine behaviour seen from outside: the KV cliff, preemptions, ground truth, speedup,
//! injected faults. Every test runs on loopback with bounded load.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use arrow_array::{Array, Int64Array, StringArray, UInt32Array, UInt64Array};
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use retrace_sim::{spawn, CostModel, SimConfig, Stall};
use serde_json::json;

async fn start(config: SimConfig) -> retrace_sim::SimHandle {
    spawn(config, "127.0.0.1:0".parse().unwrap()).await.unwrap()
}

/// Sends `n` concurrent streaming requests and samples `/metrics` while they run.
/// Returns (client results, max num_requests_waiting seen).
async fn burst(
    c: &HttpClient,
    url: &str,
    n: usize,
    prompt: usize,
    max_tokens: u32,
) -> (Vec<Streamed>, f64) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let c = c.clone();
        let url = format!("{url}/v1/completions");
        let body = json!({"prompt": prompt_of(prompt), "max_tokens": max_tokens, "stream": true, "ignore_eos": true}).to_string();
        let id = format!("b{i}");
        tasks.push(tokio::spawn(async move {
            stream(&c, &url, &body, &[("x-request-id", &id)]).await
        }));
    }
    let mut max_waiting: f64 = 0.0;
    while !tasks.iter().all(|t| t.is_finished()) {
        let text = get(c, &format!("{url}/metrics")).await.body;
        max_waiting = max_waiting.max(metric(&text, "vllm:num_requests_waiting"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    (out, max_waiting)
}

fn max_e2e(results: &[Streamed]) -> Duration {
    results.iter().map(|s| s.e2e).max().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cliff_appears_where_capacity_says_and_preempts_under_overload() {
    // 64 blocks × 16 = 1024 tokens of KV. Each request ends at 64 + 128 = 192 tokens
    // (12 blocks): 4 at once need 768 tokens (fits), 12 at once need 2304 (does not).
    let sim = start(SimConfig {
        kv_blocks: 64,
        block_size: 16,
        max_model_len: 1024,
        speedup: 10.0,
        cost: CostModel {
            step_overhead_us: 10_000.0,
            ..CostModel::ZERO
        },
        ..SimConfig::default()
    })
    .await;
    let c = client();
    let url = sim.base_url();
    let (below, waiting_below) = burst(&c, &url, 4, 64, 128).await;
    let text = get(&c, &format!("{url}/metrics")).await.body;
    assert_eq!(
        metric(&text, "vllm:num_preemptions_total"),
        0.0,
        "no preemption below capacity"
    );
    assert_eq!(waiting_below, 0.0, "nothing waits below capacity");
    let (above, waiting_above) = burst(&c, &url, 12, 64, 128).await;
    for s in below.iter().chain(&above) {
        assert_eq!(s.status, 200);
        assert_eq!(s.content_chunks, 128, "every request completes in full");
    }
    assert!(waiting_above >= 1.0, "requests queue above capacity");
    let text = get(&c, &format!("{url}/metrics")).await.body;
    let preemptions = metric(&text, "vllm:num_preemptions_total");
    assert!(preemptions >= 1.0, "decode growth past capacity preempts");
    // Step time does not grow with the batch here, so only the KV limit can slow things
    // down: with at most ~5 full-length sequences fitting, the last ones need two rounds.
    let (b, a) = (max_e2e(&below), max_e2e(&above));
    assert!(a > b.mul_f64(1.5), "below {b:?} above {a:?}");
    let summary = sim.shutdown().await.unwrap();
    assert_eq!(summary.preemptions_total as f64, preemptions);
    assert_eq!(summary.requests_completed, 16);
    assert_eq!(summary.generation_tokens_total, 16 * 128);
}

struct Truth {
    rows: HashMap<String, (i64, Option<i64>, i64, u32, u32, u32, String, Option<u64>)>,
}

fn read_truth(path: &std::path::Path) -> Truth {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = HashMap::new();
    for batch in reader {
        let b = batch.unwrap();
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let id = col("request_id");
        let id = id.as_any().downcast_ref::<StringArray>().unwrap();
        let i64col = |name: &str| {
            col(name)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let u32col = |name: &str| {
            col(name)
                .as_any()
                .downcast_ref::<UInt32Array>()
                .unwrap()
                .clone()
        };
        let (arrival, first, finish) = (
            i64col("arrival_us"),
            i64col("first_token_us"),
            i64col("finish_us"),
        );
        let (prompt, output, pre) = (
            u32col("prompt_tokens"),
            u32col("output_tokens"),
            u32col("preemptions"),
        );
        let reason = col("finish_reason");
        let reason = reason.as_any().downcast_ref::<StringArray>().unwrap();
        let itl_max = col("itl_max_us");
        let itl_max = itl_max.as_any().downcast_ref::<UInt64Array>().unwrap();
        for i in 0..b.num_rows() {
            rows.insert(
                id.value(i).to_string(),
                (
                    arrival.value(i),
                    (!first.is_null(i)).then(|| first.value(i)),
                    finish.value(i),
                    prompt.value(i),
                    output.value(i),
                    pre.value(i),
                    reason.value(i).to_string(),
                    (!itl_max.is_null(i)).then(|| itl_max.value(i)),
                ),
            );
        }
    }
    Truth { rows }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truth_times_agree_with_the_client_at_speedup_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truth.parquet");
    let sim = start(SimConfig {
        speedup: 1.0,
        cost: CostModel {
            step_overhead_us: 10_000.0,
            prefill_per_token_us: 200.0,
            ..CostModel::ZERO
        },
        truth_path: Some(path.clone()),
        ..SimConfig::default()
    })
    .await;
    let c = client();
    let url = format!("{}/v1/completions", sim.base_url());
    let mut client_side = Vec::new();
    for i in 0..5u32 {
        let body = json!({"prompt": prompt_of(100 * (i as usize + 1)), "max_tokens": 10, "stream": true, "ignore_eos": true}).to_string();
        let id = format!("t{i}");
        client_side.push((
            id.clone(),
            stream(&c, &url, &body, &[("x-request-id", &id)]).await,
        ));
    }
    assert!(!path.exists(), "written to a .tmp until shutdown");
    let summary = sim.shutdown().await.unwrap();
    assert_eq!(summary.truth_rows, 5);
    let truth = read_truth(&path);
    for (i, (id, s)) in client_side.iter().enumerate() {
        let row = &truth.rows[id];
        let (arrival, first, finish, prompt, output, _, reason, _) = row;
        assert_eq!(*prompt, 100 * (i as u32 + 1));
        assert_eq!(*output, s.content_chunks);
        assert_eq!(reason, "length");
        let truth_ttft_ms = (first.unwrap() - arrival) as f64 / 1e3;
        let client_ttft_ms = s.ttft.unwrap().as_secs_f64() * 1e3;
        // The client's TTFT includes sending and parsing; on a loaded 2-core box allow
        // a little slack; TTFTs here differ by 20 ms per request, so it must track the server.
        assert!(
            (client_ttft_ms - truth_ttft_ms).abs() < 15.0,
            "{id}: client {client_ttft_ms:.1} ms vs truth {truth_ttft_ms:.1} ms"
        );
        let truth_e2e_ms = (finish - arrival) as f64 / 1e3;
        assert!((s.e2e.as_secs_f64() * 1e3 - truth_e2e_ms).abs() < 15.0);
    }
}

/// Runs a fixed workload and returns, per request id, (output tokens, simulated e2e µs)
/// plus the ids in finish order, from the truth file.
async fn workload(speedup: f64) -> (HashMap<String, (u32, i64)>, Vec<(i64, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truth.parquet");
    let sim = start(SimConfig {
        speedup,
        kv_blocks: 40,
        block_size: 16,
        max_model_len: 512,
        cost: CostModel {
            step_overhead_us: 20_000.0,
            ..CostModel::ZERO
        },
        truth_path: Some(path.clone()),
        ..SimConfig::default()
    })
    .await;
    let c = client();
    let url = format!("{}/v1/completions", sim.base_url());
    let mut tasks = Vec::new();
    for i in 0..6u32 {
        let c = c.clone();
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            // Staggered by 10.5 simulated steps (21 ms of real time at 10×): the arrival
            // order is unambiguous, and arrivals fall mid-step rather than on a step
            // boundary, where a millisecond of scheduling jitter picks the step.
            tokio::time::sleep(Duration::from_secs_f64(f64::from(i) * 0.21 / speedup)).await;
            let body = json!({"prompt": prompt_of(50 + 10 * i as usize), "max_tokens": 40 - 4 * i, "stream": true}).to_string();
            let id = format!("s{i}");
            stream(&c, &url, &body, &[("x-request-id", &id)]).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    sim.shutdown().await.unwrap();
    let truth = read_truth(&path);
    let mut order: Vec<(i64, String)> =
        truth.rows.iter().map(|(id, r)| (r.2, id.clone())).collect();
    order.sort();
    let rows = truth
        .rows
        .into_iter()
        .map(|(id, r)| (id, (r.4, r.2 - r.0)))
        .collect();
    (rows, order)
}

/// Pairs whose finishes are more than 5 engine steps (100 ms simulated) apart in `a` finish
/// in the same order in `b`. Closer finishes are not compared: with the KV cache this small,
/// requests are preempted and resumed, and a request that joins one step later on a loaded
/// machine (a millisecond of real time at 10×) can shift who finishes first by a few steps,
/// at 1× as well as at 10× (seen: two 1× runs disagreeing on a pair 2 steps apart).
fn same_finish_order(a: &[(i64, String)], b: &[(i64, String)]) -> Result<(), String> {
    let b_finish: HashMap<&str, i64> = b.iter().map(|(t, id)| (id.as_str(), *t)).collect();
    for (i, (ta, ida)) in a.iter().enumerate() {
        for (tb, idb) in &a[i + 1..] {
            if tb - ta > 100_000 && b_finish[idb.as_str()] <= b_finish[ida.as_str()] {
                return Err(format!(
                    "{ida} finished before {idb} in {a:?} but not in {b:?}"
                ));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speedup_preserves_behaviour() {
    let (slow, slow_order) = workload(1.0).await;
    let (fast, fast_order) = workload(10.0).await;
    assert_eq!(slow.len(), 6);
    assert_eq!(slow_order.len(), fast_order.len());
    same_finish_order(&slow_order, &fast_order).unwrap();
    same_finish_order(&fast_order, &slow_order).unwrap();
    for (id, (tokens, e2e_us)) in &slow {
        let (fast_tokens, fast_e2e_us) = fast[id];
        assert_eq!(
            *tokens, fast_tokens,
            "{id}: same token count (EOS is seeded by request)"
        );
        let diff = (*e2e_us - fast_e2e_us).abs() as f64;
        assert!(
            diff < 0.25 * *e2e_us as f64 + 60_000.0,
            "{id}: simulated e2e {e2e_us} µs at 1× vs {fast_e2e_us} µs at 10×"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_resets_and_stalls() {
    let sim = start(SimConfig {
        speedup: 10.0,
        error_rate: 0.5,
        cost: CostModel {
            step_overhead_us: 1_000.0,
            ..CostModel::ZERO
        },
        ..SimConfig::default()
    })
    .await;
    let c = client();
    let url = format!("{}/v1/completions", sim.base_url());
    let mut errors = 0;
    for _ in 0..40 {
        let r = post(
            &c,
            &url,
            &json!({"prompt": "a b c", "max_tokens": 3}).to_string(),
            &[],
        )
        .await;
        if r.status == 500 {
            errors += 1;
            let v = r.json();
            assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
            assert_eq!(v["error"]["code"], 500);
        } else {
            assert_eq!(r.status, 200);
        }
    }
    assert!((5..=35).contains(&errors), "about half fail: {errors}");
    let summary = sim.shutdown().await.unwrap();
    assert_eq!(summary.requests_errored, errors);

    let sim = start(SimConfig {
        speedup: 10.0,
        reset_rate: 1.0,
        cost: CostModel {
            step_overhead_us: 1_000.0,
            ..CostModel::ZERO
        },
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/completions", sim.base_url());
    for _ in 0..5 {
        let body = json!({"prompt": "a b c", "max_tokens": 20, "stream": true, "ignore_eos": true})
            .to_string();
        let s = stream(&client(), &url, &body, &[]).await;
        assert!(s.broken, "stream dropped mid-way");
        assert!(s.content_chunks < 20);
        assert_ne!(s.events.last().map(String::as_str), Some("[DONE]"));
    }
    sim.shutdown().await.unwrap();

    // A 300 ms stall every 500 ms of simulated time shows as a long inter-token gap.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let sim = start(SimConfig {
        speedup: 5.0,
        stall: Some(Stall {
            pause_us: 300_000,
            every_us: 500_000,
        }),
        cost: CostModel {
            step_overhead_us: 10_000.0,
            ..CostModel::ZERO
        },
        truth_path: Some(path.clone()),
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/completions", sim.base_url());
    let body =
        json!({"prompt": "a", "max_tokens": 100, "stream": true, "ignore_eos": true}).to_string();
    let s = stream(&c, &url, &body, &[("x-request-id", "stalled")]).await;
    assert_eq!(s.content_chunks, 100);
    sim.shutdown().await.unwrap();
    let truth = read_truth(&path);
    let itl_max_us = truth.rows["stalled"].7.unwrap();
    assert!(
        itl_max_us >= 250_000,
        "stall visible in ITL max: {itl_max_us}"
    );
}

fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A request that waits in the socket while the sim's one thread is busy arrived when it
/// reached the socket (`arrival_us`), not when the sim got around to it (`handler_us`): the
/// wait is server latency, in the truth's TTFT as a client sees it. Both on a fresh
/// connection (bytes there before the accept) and on a kept-alive one.
#[cfg(target_os = "linux")]
#[test]
fn truth_arrival_is_when_the_request_reached_the_socket_not_when_the_busy_sim_read_it() {
    const BUSY: Duration = Duration::from_millis(600);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("truth.parquet");
    // The sim on a runtime of its own, with one thread that the test can keep busy.
    let sim_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sim_handle = sim_rt.handle().clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = SimConfig {
        speedup: 1.0,
        cost: CostModel::ZERO,
        truth_path: Some(path.clone()),
        ..SimConfig::default()
    };
    let sim_thread = std::thread::spawn(move || {
        sim_rt.block_on(async move {
            let sim = start(config).await;
            addr_tx.send(sim.base_url()).unwrap();
            let _ = stop_rx.await;
            sim.shutdown().await.unwrap()
        })
    });
    let url = format!("{}/v1/completions", addr_rx.recv().unwrap());
    // When no socket on the host had asked for receive stamps, the kernel turns them on from
    // a work queue a moment after the sim's listener did: bytes in that moment carry none.
    std::thread::sleep(Duration::from_millis(50));
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let c = client();
    let mut sent = Vec::new();
    for round in 0..2 {
        let (busy_tx, busy_rx) = std::sync::mpsc::channel();
        sim_handle.spawn(async move {
            busy_tx.send(()).unwrap();
            std::thread::sleep(BUSY);
        });
        busy_rx.recv().unwrap();
        let id = format!("busy{round}");
        let body =
            json!({"prompt": prompt_of(20), "max_tokens": 3, "stream": true, "ignore_eos": true})
                .to_string();
        let sent_us = wall_us();
        let s = client_rt.block_on(stream(&c, &url, &body, &[("x-request-id", &id)]));
        assert_eq!(s.status, 200);
        sent.push((id, sent_us, s.ttft.unwrap()));
    }
    stop_tx.send(()).unwrap();
    let summary = sim_thread.join().unwrap();
    assert_eq!(summary.truth_rows, 2);

    let file = std::fs::File::open(&path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = HashMap::new();
    for batch in reader {
        let b = batch.unwrap();
        let i64col = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone()
        };
        let ids = b.column_by_name("request_id").unwrap();
        let ids = ids.as_any().downcast_ref::<StringArray>().unwrap();
        let (arrival, handler, first) = (
            i64col("arrival_us"),
            i64col("handler_us"),
            i64col("first_token_us"),
        );
        for i in 0..b.num_rows() {
            rows.insert(
                ids.value(i).to_string(),
                (arrival.value(i), handler.value(i), first.value(i)),
            );
        }
    }
    for (id, sent_us, client_ttft) in sent {
        let (arrival_us, handler_us, first_us) = rows[&id];
        let reached_ms = (arrival_us - sent_us) as f64 / 1e3;
        let waited_ms = (handler_us - arrival_us) as f64 / 1e3;
        assert!(
            (-5.0..150.0).contains(&reached_ms),
            "{id}: arrival {reached_ms:.1} ms after the send: not the socket's time"
        );
        assert!(
            waited_ms > 300.0,
            "{id}: the handler started {waited_ms:.1} ms after the arrival; the sim was busy ~600 ms"
        );
        // The wait is in the truth's TTFT, as the client saw it.
        let truth_ttft_ms = (first_us - arrival_us) as f64 / 1e3;
        let client_ttft_ms = client_ttft.as_secs_f64() * 1e3;
        assert!(
            (client_ttft_ms - truth_ttft_ms).abs() < 50.0,
            "{id}: client TTFT {client_ttft_ms:.1} ms vs truth {truth_ttft_ms:.1} ms"
        );
    }
}
