//! Leaks show in `process_resident_memory_bytes`; a plateau stops them. Own test binary
//! (own process), run as one test, so that RSS is not shared with other tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use retrace_sim::{spawn, CostModel, SimConfig};
use serde_json::json;

const MIB: f64 = 1024.0 * 1024.0;

async fn rss(c: &HttpClient, url: &str) -> (f64, f64) {
    let text = get(c, &format!("{url}/metrics")).await.body;
    (
        metric(&text, "process_resident_memory_bytes"),
        metric(&text, "retrace_sim_leaked_bytes"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaks_show_in_rss_and_plateaus_stop_them() {
    let c = client();
    // Per-request leak: 30 requests × 2 MiB.
    let sim = spawn(
        SimConfig {
            speedup: 10.0,
            leak_per_request_bytes: 2 << 20,
            cost: CostModel::ZERO,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let url = sim.base_url();
    let (rss0, _) = rss(&c, &url).await;
    for _ in 0..30 {
        let r = post(
            &c,
            &format!("{url}/v1/completions"),
            &json!({"prompt": "x", "max_tokens": 2}).to_string(),
            &[],
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // The engine publishes a finished request's leak just after handing over its last
    // bytes, so a client can ask a moment before it shows (seen once on a loaded machine).
    let (mut rss1, mut leaked) = rss(&c, &url).await;
    for _ in 0..100 {
        if leaked >= 60.0 * MIB {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        (rss1, leaked) = rss(&c, &url).await;
    }
    assert_eq!(leaked, 60.0 * MIB);
    assert!(
        rss1 - rss0 > 50.0 * MIB,
        "RSS grew {} MiB",
        (rss1 - rss0) / MIB
    );
    sim.shutdown().await.unwrap();

    // Time-based leak, 100 MB per simulated second, with a 24 MiB plateau: it reaches the
    // plateau and stays there.
    let sim = spawn(
        SimConfig {
            leak_rate_bytes_per_hour: 3600 * 100_000_000,
            leak_plateau_bytes: Some(24 << 20),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let url = sim.base_url();
    let mut leaked = 0.0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        leaked = rss(&c, &url).await.1;
        if leaked >= 24.0 * MIB {
            break;
        }
    }
    assert_eq!(leaked, 24.0 * MIB, "plateau reached");
    let (rss_at_plateau, _) = rss(&c, &url).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_later, leaked_later) = rss(&c, &url).await;
    assert_eq!(leaked_later, 24.0 * MIB, "no growth past the plateau");
    assert!(
        rss_later - rss_at_plateau < 8.0 * MIB,
        "RSS flat at the plateau"
    );
    let summary = sim.shutdown().await.unwrap();
    assert_eq!(summary.leaked_bytes, 24 << 20);
}
