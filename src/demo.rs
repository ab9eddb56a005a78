//! `retrace demo`: the whole product on the bundled real Azure trace, in a few minutes.
//!
//! 1. A "production" sim with the recording proxy in front of it, in-process on loopback.
//! 2. Production traffic from the bundled Azure conversation trace played through the proxy
//!    and recorded.
//! 3. The recording replayed against a "staging" sim with a smaller KV cache: a 1×/2×/3×
//!    step run (the capacity cliff), a 3× spike, and an accelerated soak against a sim with
//!    a planted memory leak.
//! 4. Each run analyzed; the verdicts printed; `report.html` (capacity, with production
//!    beside it), `spike.html` and `soak.html` written.
//!
//! Every sim runs its clock [`DemoPlan::speedup`] times faster than real time and every
//! client and the proxy account for it (`--clock-speedup`), so the figures are in the
//! simulated GPU's time: five simulated minutes of production take one real minute.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use retrace_analyze::{AnalyzeConfig, Report, SloArg};
use retrace_proxy::{ProxyConfig, Upstream};
use retrace_replay::schedule::ScheduleConfig;
use retrace_replay::shape::Profile;
use retrace_replay::{ReplayConfig, ReplaySummary, TraceInput};
use retrace_sim::SimConfig;
use retrace_traces::import::{import_file, Format, ImportOptions};
use retrace_traces::RequestRow;

/// The Azure LLM inference trace (2023, conversation), embedded so the demo needs nothing
/// but the binary. CC-BY 4.0; see traces/samples/azure_2023/.
const AZURE_CONV_CSV: &str =
    include_str!("../traces/samples/azure_2023/AzureLLMInferenceTrace_conv.csv");

/// The directories the demo writes under `--out` (and clears first).
const DEMO_DIRS: [&str; 5] = [
    "recording",
    "production-client",
    "capacity",
    "spike",
    "soak",
];

/// Arguments of `retrace demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the recording, the replay results and the reports go.
    #[arg(long, default_value = "retrace-demo")]
    pub out: PathBuf,
    /// Keep the staging sim up after the demo, for poking at, until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// A much shorter run (seconds instead of minutes), for tests and slow machines.
    #[arg(long)]
    pub quick: bool,
}

/// Lengths and loads of the demo's stages, in simulated time.
#[derive(Debug, Clone)]
pub struct DemoPlan {
    /// Sim clock speed-up (and the matching client/proxy clock speed-up).
    pub speedup: f64,
    /// How much of the Azure trace production plays.
    pub production: Duration,
    /// Length of each step of the 100%/200%/300% capacity run.
    pub step: Duration,
    /// When the spike starts, and how long it lasts (the run is three times that).
    pub spike: Duration,
    /// Soak length, and the soak's own (faster) clock.
    pub soak: Duration,
    /// Soak sim speed-up.
    pub soak_speedup: f64,
    /// Soak request rate, requests per simulated second.
    pub soak_rate: f64,
    /// Staging KV cache, blocks of 16 tokens.
    pub staging_kv_blocks: u32,
    /// Planted leak of the soak sim, bytes per simulated hour.
    pub soak_leak_bytes_per_hour: u64,
    /// Analysis window.
    pub window: Duration,
}

impl DemoPlan {
    /// The full demo: about 2–3 minutes on 2 cores.
    pub fn full() -> DemoPlan {
        DemoPlan {
            speedup: 5.0,
            production: Duration::from_secs(240),
            step: Duration::from_secs(80),
            spike: Duration::from_secs(40),
            soak: Duration::from_secs(15 * 60),
            soak_speedup: 30.0,
            soak_rate: 1.5,
            staging_kv_blocks: 4_000,
            soak_leak_bytes_per_hour: 512 << 20,
            window: Duration::from_secs(20),
        }
    }

    /// A short demo for tests: a few seconds per stage.
    pub fn quick() -> DemoPlan {
        DemoPlan {
            speedup: 5.0,
            production: Duration::from_secs(40),
            step: Duration::from_secs(20),
            spike: Duration::from_secs(10),
            soak: Duration::from_secs(5 * 60),
            soak_speedup: 60.0,
            soak_rate: 1.0,
            staging_kv_blocks: 4_000,
            soak_leak_bytes_per_hour: 1 << 30,
            window: Duration::from_secs(5),
        }
    }
}

/// What the demo produced, for tests and the final message.
#[derive(Debug)]
pub struct DemoOutcome {
    /// Rows the proxy recorded.
    pub recorded_rows: u64,
    /// Requests sent through the proxy.
    pub production_sent: u64,
    /// The recording directory.
    pub recording_dir: PathBuf,
    /// Capacity, spike and soak reports.
    pub reports: Vec<(String, Report, PathBuf)>,
}

/// Runs the demo (the `retrace demo` subcommand). Returns the exit code.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<u8> {
    let plan = if args.quick {
        DemoPlan::quick()
    } else {
        DemoPlan::full()
    };
    let started = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    let outcome = tokio::select! {
        outcome = run_plan(&plan, &args.out, args.keep) => outcome?,
        _ = &mut shutdown => anyhow::bail!("interrupted"),
    };
    println!();
    for (name, report, html) in &outcome.reports {
        println!("── {name} ─────────────────────────────────────────────");
        for verdict in report.verdicts() {
            println!("  [{:?}] {}", verdict.severity, verdict.headline);
        }
        println!("  report: {}", html.display());
    }
    println!();
    println!(
        "Recorded {} rows for {} production requests into {}",
        outcome.recorded_rows,
        outcome.production_sent,
        outcome.recording_dir.display()
    );
    println!(
        "All files are under {} (took {:.0} s).",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

fn stage(n: u32, text: &str) {
    eprintln!("\n[{n}/4] {text}");
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs every stage of `plan`, writing under `out`.
pub async fn run_plan(plan: &DemoPlan, out: &Path, keep: bool) -> anyhow::Result<DemoOutcome> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // A second demo into the same place starts afresh: a recording directory that still
    // held the last run's files would be replayed as one long trace with a gap.
    for name in DEMO_DIRS {
        let dir = out.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("clearing the last demo's {}", dir.display()))?;
        }
    }
    let trace = production_trace(out, plan.production)?;

    // 1. Production: a sim with a roomy KV cache, the proxy in front.
    stage(1, "production: sim + recording proxy on loopback");
    let prod_sim = retrace_sim::spawn(
        SimConfig {
            speedup: plan.speedup,
            seed: 1,
            ..SimConfig::default()
        },
        localhost(),
    )
    .await
    .context("starting the production sim")?;
    let recording_dir = out.join("recording");
    let upstream = Upstream::parse(&prod_sim.base_url())?;
    let mut proxy_config = ProxyConfig::new(localhost(), upstream, recording_dir.clone());
    proxy_config.include_usage = true;
    proxy_config.clock_speedup = plan.speedup;
    let proxy = retrace_proxy::spawn(proxy_config)
        .await
        .context("starting the proxy")?;
    let proxy_url = format!("http://{}", proxy.local_addr());

    // 2. Play production through it.
    stage(
        2,
        &format!(
            "playing {} rows ({:.0} simulated minutes) of the Azure conversation trace through the proxy",
            trace.len(),
            plan.production.as_secs_f64() / 60.0
        ),
    );
    let mut production = replay_config(
        TraceInput::Rows(trace),
        &proxy_url,
        &out.join("production-client"),
        "production",
        plan.speedup,
    );
    production.metrics_urls = vec![format!("{}/metrics", prod_sim.base_url())];
    // Production's users don't call /tokenize: prompts are sized by the estimate, and the
    // proxy records what the server counted (usage) — the recording is what staging replays.
    production.use_tokenize = false;
    let production_summary = replay(production).await.context("production traffic")?;
    let proxy_stats = proxy
        .shutdown(Duration::from_secs(30))
        .await
        .context("stopping the proxy")?;
    prod_sim.shutdown().await.context("stopping the sim")?;
    eprintln!(
        "      recorded {} rows ({} dropped) for {} requests sent",
        proxy_stats.rows_written, proxy_stats.rows_dropped, production_summary.sent
    );

    // 3. Staging: replay the recording.
    stage(
        3,
        "staging: replaying the recording at 1x/2x/3x, a 3x spike, and a soak with a planted leak",
    );
    let staging_sim = retrace_sim::spawn(
        SimConfig {
            speedup: plan.speedup,
            kv_blocks: plan.staging_kv_blocks,
            seed: 2,
            ..SimConfig::default()
        },
        localhost(),
    )
    .await
    .context("starting the staging sim")?;
    let recording = TraceInput::Files(vec![recording_dir.clone()]);

    let capacity_dir = out.join("capacity");
    let mut capacity = replay_config(
        recording.clone(),
        &staging_sim.base_url(),
        &capacity_dir,
        "capacity",
        plan.speedup,
    );
    capacity.schedule.profile = Some(Profile::Steps {
        levels: vec![1.0, 2.0, 3.0],
        step: plan.step,
    });
    replay(capacity).await.context("capacity run")?;

    let spike_dir = out.join("spike");
    let mut spike = replay_config(
        recording.clone(),
        &staging_sim.base_url(),
        &spike_dir,
        "spike",
        plan.speedup,
    );
    spike.schedule.profile = Some(Profile::Spike {
        base: 1.0,
        peak: 3.0,
        at: plan.spike,
        length: plan.spike,
    });
    spike.schedule.duration = Some(plan.spike * 3);
    replay(spike).await.context("spike run")?;

    let soak_sim = retrace_sim::spawn(
        SimConfig {
            speedup: plan.soak_speedup,
            kv_blocks: plan.staging_kv_blocks,
            leak_rate_bytes_per_hour: plan.soak_leak_bytes_per_hour,
            seed: 3,
            ..SimConfig::default()
        },
        localhost(),
    )
    .await
    .context("starting the soak sim")?;
    let soak_dir = out.join("soak");
    let mut soak = replay_config(
        recording,
        &soak_sim.base_url(),
        &soak_dir,
        "soak",
        plan.soak_speedup,
    );
    soak.schedule.rate = Some(plan.soak_rate);
    soak.schedule.profile = Some(Profile::Soak {
        level: 1.0,
        length: plan.soak,
    });
    replay(soak).await.context("soak run")?;
    soak_sim.shutdown().await.context("stopping the soak sim")?;

    // 4. Analyze.
    stage(4, "analyzing");
    let mut reports = Vec::new();
    let window_us = i64::try_from(plan.window.as_micros()).unwrap_or(i64::MAX);
    for (name, dir, html, production) in [
        (
            "capacity (1x, 2x, 3x)",
            &capacity_dir,
            out.join("report.html"),
            true,
        ),
        ("spike (3x)", &spike_dir, out.join("spike.html"), false),
        (
            "soak (planted leak)",
            &soak_dir,
            out.join("soak.html"),
            false,
        ),
    ] {
        let mut config = AnalyzeConfig::new(vec![dir.clone()]);
        config.window_us = window_us;
        config.slos = retrace_analyze::slo::resolve(&[SloArg::Seed]);
        if production {
            config.production = Some(vec![recording_dir.clone()]);
        }
        let report =
            retrace_analyze::analyze(&config).with_context(|| format!("analyzing {name}"))?;
        report
            .write_html(&html)
            .with_context(|| format!("writing {}", html.display()))?;
        reports.push((name.to_string(), report, html));
    }

    if keep {
        eprintln!(
            "\nstaging sim left up at {} — Ctrl-C to stop",
            staging_sim.base_url()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    staging_sim
        .shutdown()
        .await
        .context("stopping the staging sim")?;

    Ok(DemoOutcome {
        recorded_rows: proxy_stats.rows_written,
        production_sent: production_summary.sent,
        recording_dir,
        reports,
    })
}

/// The first `span` of the embedded Azure trace, imported into request rows.
fn production_trace(out: &Path, span: Duration) -> anyhow::Result<Vec<RequestRow>> {
    let csv = out.join("azure_conv.csv");
    std::fs::write(&csv, AZURE_CONV_CSV).with_context(|| format!("writing {}", csv.display()))?;
    let options = ImportOptions {
        format: Some(Format::Azure),
        ..ImportOptions::default()
    };
    let (rows, _) = import_file(&csv, &options)?;
    let first = rows.first().map(|r| r.arrival_us).unwrap_or(0);
    let span_us = i64::try_from(span.as_micros()).unwrap_or(i64::MAX);
    Ok(rows
        .into_iter()
        .take_while(|r| r.arrival_us - first < span_us)
        .collect())
}

fn replay_config(
    trace: TraceInput,
    target: &str,
    out: &Path,
    scenario: &str,
    clock_speedup: f64,
) -> ReplayConfig {
    let mut config = ReplayConfig::new(trace, target, out);
    config.scenario = scenario.to_string();
    config.clock_speedup = clock_speedup;
    config.progress = true;
    config.schedule = ScheduleConfig {
        seed: 7,
        ..ScheduleConfig::default()
    };
    config
}

async fn replay(config: ReplayConfig) -> anyhow::Result<ReplaySummary> {
    let summary = retrace_replay::replay(config, std::future::pending::<()>()).await?;
    eprintln!(
        "      sent {} ({} ok, {} errors), {:.1} req/s, TTFT p50 {} p99 {}",
        summary.sent,
        summary.ok,
        summary.errors,
        summary.achieved_rps,
        ms(summary.ttft_p50_us),
        ms(summary.ttft_p99_us),
    );
    Ok(summary)
}

fn ms(us: Option<u64>) -> String {
    us.map(|v| format!("{:.0} ms", v as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}
