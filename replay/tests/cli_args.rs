//! `retrace replay` argument parsing and validation: clear errors, composed shapes.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use clap::Parser;
use retrace_replay::runner::ProcessSelector;
use retrace_replay::shape::{Profile, Shard};
use retrace_replay::{ReplayArgs, ReplayError};

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    args: ReplayArgs,
}

fn parse(extra: &[&str]) -> Result<ReplayArgs, clap::Error> {
    let mut argv = vec![
        "retrace-replay",
        "trace.parquet",
        "--target",
        "http://127.0.0.1:8000",
        "--out",
        "out",
    ];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).map(|c| c.args)
}

#[test]
fn shapes_compose_into_the_config() {
    let args = parse(&[
        "--speed",
        "200%",
        "--amplify",
        "3",
        "--profile",
        "steps:50%,100%/5m",
        "--max-gap",
        "10s",
        "--seed",
        "9",
        "--duration",
        "30m",
        "--shard",
        "1/4",
        "--start-at",
        "2030-01-01T00:00:00Z",
        "-H",
        "X-Team: infra",
        "--metrics-url",
        "http://127.0.0.1:9400/metrics",
        "--pid",
        "42",
        "--clock-speedup",
        "10x",
        "--scenario",
        "2x",
    ])
    .unwrap();
    let c = args.into_config().unwrap();
    assert_eq!(c.schedule.speed, 2.0);
    assert_eq!(c.schedule.amplify, 3);
    assert_eq!(
        c.schedule.profile,
        Some(Profile::Steps {
            levels: vec![0.5, 1.0],
            step: Duration::from_secs(300)
        })
    );
    assert_eq!(c.schedule.max_gap, Some(Duration::from_secs(10)));
    assert_eq!(c.schedule.duration, Some(Duration::from_secs(1800)));
    assert_eq!(c.schedule.shard, Some(Shard { index: 1, count: 4 }));
    assert_eq!(c.schedule.seed, 9);
    assert_eq!(c.start_at_us, Some(1_893_456_000_000_000));
    assert_eq!(c.headers[0].0.as_str(), "x-team");
    assert_eq!(
        c.metrics_urls,
        vec!["http://127.0.0.1:9400/metrics".to_string()]
    );
    assert_eq!(c.process, Some(ProcessSelector::Pid(42)));
    assert_eq!(c.clock_speedup, 10.0);
    assert_eq!(c.scenario, "2x");
    let c = parse(&["--no-metrics"]).unwrap().into_config().unwrap();
    assert!(c.metrics_urls.is_empty());
    let c = parse(&[]).unwrap().into_config().unwrap();
    assert_eq!(
        c.metrics_urls,
        vec!["http://127.0.0.1:8000/metrics".to_string()]
    );
}

#[test]
fn bad_values_are_named() {
    for (argv, needle) in [
        (vec!["--speed", "0"], "factor must be > 0"),
        (vec!["--speed", "fast"], "fast"),
        (vec!["--rate", "20/fortnight"], "fortnight"),
        (vec!["--profile", "wave:1"], "wave"),
        (vec!["--shard", "4/4"], "0..4"),
        (vec!["--duration", "3 weeks"], "unit"),
    ] {
        let err = parse(&argv).unwrap_err().to_string();
        assert!(err.contains(needle), "{argv:?}: {err}");
    }
    for (argv, needle) in [
        (vec!["--users", "4", "--rate", "5/s"], "--users"),
        (vec!["--think-time", "1s"], "--think-time needs --users"),
        (vec!["-H", "no-colon"], "no-colon"),
        (
            vec!["--api-key-env", "RETRACE_TEST_SURELY_UNSET_VAR"],
            "RETRACE_TEST_SURELY_UNSET_VAR",
        ),
        (vec!["--start-at", "tomorrow"], "--start-at"),
        (vec!["--amplify", "0"], "--amplify"),
    ] {
        let err = parse(&argv).unwrap().into_config().unwrap_err();
        assert!(matches!(err, ReplayError::BadArgs(_)));
        assert!(err.to_string().contains(needle), "{argv:?}: {err}");
    }
}
