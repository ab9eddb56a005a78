//! The `retrace` binary: parse, set up, call a library, map errors to exit codes.
//!
//! Exit codes: 0 success (and all SLOs pass), 1 a verdict failed (SLO gate, client-limited
//! run where asked), 2 bad input or usage, or a run that could not be carried out.

use std::num::NonZeroUsize;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the proxy's per-request allocations and the
/// recorder's per-batch buffers are its hot paths. Measured on the 2-core bench machine
/// (docs/benchmarks.md): proxy 9% less CPU a request, recorder 9% more rows per CPU-second;
/// jemalloc gave half that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (Linux), before anything is
/// allocated. mimalloc asks for them, and the first touch of each 2 MiB page (at start, or
/// after memory went back to the system) zeroes it whole inside the page fault, holding
/// the thread's CPU for up to 50 ms (`perf sched`). On the benchmark's shared cores that
/// was the proxy's p99 (20-65 ms in its first seconds under load) and `retrace replay`'s
/// send lateness (p99 10 ms at 200 requests/s, 1 ms without); `retrace analyze` also ran
/// faster without them (bench/notes.md).
/// A failure (a sandbox that forbids `prctl`) only costs those stalls: logged at debug.
fn without_huge_pages() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_thp_disable(true).map_err(|err| err.to_string())?;
    Ok(())
}

/// Load-test LLM inference servers with the traffic they really get.
#[derive(Debug, Parser)]
#[command(name = "retrace", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole product on the bundled Azure trace: record, replay, analyze.
    Demo(retrace::demo::DemoArgs),
    /// Record production traffic: an inline proxy writing one row per request.
    Proxy(retrace_proxy::ProxyArgs),
    /// Replay a recording or public trace against a target, scaled and re-timed.
    Replay(retrace_replay::ReplayArgs),
    /// Analyze replay results: drift, leaks, starvation, capacity, SLO gates.
    Analyze(retrace_analyze::AnalyzeArgs),
    /// Run the simulated GPU inference server.
    Sim(retrace_sim::SimArgs),
    /// Import a public trace (Azure, BurstGPT, Mooncake) into the request schema.
    Import(retrace::cli::ImportArgs),
    /// Summarize a trace or recording: rate, burstiness, token lengths, outcomes.
    Inspect(retrace::cli::InspectArgs),
    /// Export a recording to another tool's trace format.
    Export(retrace::cli::ExportArgs),
}

fn main() -> ExitCode {
    let huge_pages = without_huge_pages();
    let cli = Cli::parse();
    retrace::logging::init();
    if let Err(err) = huge_pages {
        tracing::debug!(error = %err, "cannot turn transparent huge pages off");
    }
    let result = match cli.command {
        Command::Import(args) => retrace::cli::import(args),
        Command::Inspect(args) => retrace::cli::inspect(args),
        Command::Export(args) => retrace::cli::export(args),
        Command::Demo(args) => block_on(|stop| retrace::demo::run(args, stop)),
        Command::Proxy(args) => {
            let threads = args.threads;
            block_on_threads(threads, |stop| async {
                Ok(retrace_proxy::run(args, stop).await?)
            })
        }
        Command::Replay(args) => {
            block_on(|stop| async { Ok(retrace_replay::run(args, stop).await?) })
        }
        Command::Analyze(args) => {
            block_on(|stop| async { Ok(retrace_analyze::run(args, stop).await?) })
        }
        Command::Sim(args) => block_on(|stop| async { Ok(retrace_sim::run(args, stop).await?) }),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs an async entry point on a multi-threaded runtime, handing it a future that
/// resolves on SIGINT or SIGTERM (mini-redis style: the shutdown signal is passed in).
fn block_on<F, Fut>(entry: F) -> anyhow::Result<u8>
where
    F: FnOnce(retrace::shutdown::Signal) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u8>>,
{
    block_on_threads(None, entry)
}

/// [`block_on`] with a number of runtime threads (default: one per CPU). One thread is a
/// current-thread runtime: no work stealing and no cross-thread wake-ups, which the
/// proxy's benchmark on one core measured as ~5% more requests a second.
fn block_on_threads<F, Fut>(threads: Option<NonZeroUsize>, entry: F) -> anyhow::Result<u8>
where
    F: FnOnce(retrace::shutdown::Signal) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u8>>,
{
    let mut builder = match threads.map(NonZeroUsize::get) {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = threads {
        builder.worker_threads(n.get()); // no effect on a current-thread runtime
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move { entry(retrace::shutdown::Signal::new()).await })
}
