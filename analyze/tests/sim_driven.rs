//! Real runs: `retrace_replay::replay` against `retrace_sim::spawn` on loopback, then
//! `analyze` on what the replay wrote. Bounded: a few thousand requests, under a minute
//! of real time.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use retrace_analyze::stats::GrowthShape;
use retrace_analyze::{analyze, AnalyzeConfig};
use retrace_replay::{replay, ReplayConfig, TraceInput};
use retrace_sim::{spawn, SimConfig};
use retrace_traces::{Endpoint, RequestRow};

/// Simulated minutes per real second.
const SPEEDUP: f64 = 60.0;

fn trace(n: usize, gap_us: i64) -> Vec<RequestRow> {
    (0..n)
        .map(|i| RequestRow {
            prompt_tokens: Some(50 + (i % 7) as u32 * 20),
            output_tokens: Some(8),
            status: Some(200),
            ..RequestRow::imported(
                format!("req-{i}"),
                1_700_000_000_000_000 + i as i64 * gap_us,
                Endpoint::Completions,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_leak_is_found_within_30_simulated_minutes_and_slos_gate() {
    let sim = spawn(
        SimConfig {
            speedup: SPEEDUP,
            leak_rate_bytes_per_hour: 512 << 20,
            seed: 7,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // 30 simulated minutes at 1 request per simulated second: 30 real seconds.
    let mut c = ReplayConfig::new(
        TraceInput::Rows(trace(1800, 1_000_000)),
        sim.base_url(),
        dir.path(),
    );
    c.clock_speedup = SPEEDUP;
    c.request_timeout = Duration::from_secs(60);
    c.sample_interval = Duration::from_millis(250);
    let run = tokio::time::timeout(
        Duration::from_secs(240),
        replay(c, std::future::pending::<()>()),
    )
    .await
    .expect("replay finished in time")
    .unwrap();
    assert!(run.ok > 1500, "{run:?}");
    sim.shutdown().await.unwrap();

    let mut config = AnalyzeConfig::new(vec![dir.path().to_path_buf()]);
    config.slos = vec![
        "ttft_p95=30s"
            .parse::<retrace_analyze::SloArg>()
            .map(spec)
            .unwrap(),
        "error_rate=1%"
            .parse::<retrace_analyze::SloArg>()
            .map(spec)
            .unwrap(),
    ];
    let report = analyze(&config).unwrap();
    assert!(report.summary.requests >= 1500);
    assert!(
        report.summary.samples > 0,
        "the replay sampled the sim's /metrics"
    );
    let server = report
        .memory
        .iter()
        .find(|m| m.series.starts_with("server_rss_bytes"))
        .unwrap_or_else(|| panic!("no server memory series: {:?}", report.memory));
    assert_eq!(server.shape, GrowthShape::Linear, "{server:?}");
    assert!(
        (250.0..900.0).contains(&server.slope_mb_per_hour),
        "{server:?}"
    );
    assert_eq!(report.exit_code(), 0, "{}", report.render_terminal());

    config.slos = vec!["ttft_p50=1us"
        .parse::<retrace_analyze::SloArg>()
        .map(spec)
        .unwrap()];
    assert_eq!(analyze(&config).unwrap().exit_code(), 1);
}

fn spec(a: retrace_analyze::SloArg) -> retrace_analyze::SloSpec {
    match a {
        retrace_analyze::SloArg::Spec(s) => s,
        retrace_analyze::SloArg::Seed => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_step_run_has_a_cliff_and_a_named_bottleneck() {
    const SPEED: f64 = 20.0;
    let sim = spawn(
        SimConfig {
            speedup: SPEED,
            max_num_seqs: 2,
            seed: 11,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rows = trace(1000, 1_000_000);
    for r in &mut rows {
        r.output_tokens = Some(64);
    }
    let mut c = ReplayConfig::new(TraceInput::Rows(rows), sim.base_url(), dir.path());
    c.clock_speedup = SPEED;
    c.request_timeout = Duration::from_secs(120);
    c.sample_interval = Duration::from_millis(250);
    c.schedule.profile = Some(retrace_replay::shape::Profile::Steps {
        levels: vec![0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
        step: Duration::from_secs(60),
    });
    let run = tokio::time::timeout(
        Duration::from_secs(300),
        replay(c, std::future::pending::<()>()),
    )
    .await
    .expect("replay finished in time")
    .unwrap();
    sim.shutdown().await.unwrap();
    assert!(run.ok > 200, "{run:?}");

    let mut config = AnalyzeConfig::new(vec![dir.path().to_path_buf()]);
    config.window_us = 10_000_000;
    config.slos = vec![
        "ttft_p95=5s"
            .parse::<retrace_analyze::SloArg>()
            .map(spec)
            .unwrap(),
        "error_rate=5%"
            .parse::<retrace_analyze::SloArg>()
            .map(spec)
            .unwrap(),
    ];
    let report = analyze(&config).unwrap();
    let cap = report
        .capacity
        .as_ref()
        .unwrap_or_else(|| panic!("no capacity section:\n{}", report.render_terminal()));
    assert_eq!(cap.levels.len(), 6, "{}", report.render_terminal());
    let cliff = cap
        .cliff
        .unwrap_or_else(|| panic!("no cliff:\n{}", report.render_terminal()));
    assert!(
        cliff > 0,
        "the lightest load should hold:\n{}",
        report.render_terminal()
    );
    assert!(cap.supported_rps.unwrap() > 0.0);
    assert!(cap.sentence.starts_with("Supports"), "{}", cap.sentence);
    assert!(report.drift.is_empty());
    // Memory that follows the load is not called a leak on a step run.
    assert!(report
        .verdicts()
        .iter()
        .filter(|v| v.category == "memory")
        .all(|v| v.severity != retrace_analyze::Severity::Warn));
    eprintln!("{}", report.render_terminal());
}
