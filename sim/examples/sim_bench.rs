//! Throughput of the sim's HTTP side: a zero-cost model, N concurrent streaming requests
//! over loopback from the same process (server on one runtime thread, clients on another).
//! Prints one JSON line: SSE events/s and the concurrent streams reached.
//!
//! `cargo run --release -p retrace-sim --example sim_bench -- [STREAMS] [TOKENS_PER_STREAM]`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use retrace_sim::{spawn, CostModel, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let streams: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let tokens: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200);
    let config = SimConfig {
        cost: CostModel::ZERO,
        speedup: 1000.0,
        max_num_seqs: streams.max(1),
        kv_blocks: 1_000_000,
        max_num_batched_tokens: 1_000_000,
        ..SimConfig::default()
    };
    // The server gets its own single-threaded runtime on its own thread.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let sim = spawn(config, "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?)
                .await
                .map_err(|e| e.to_string())?;
            let _ = addr_tx.send(sim.local_addr());
            let _ = stop_rx.await;
            sim.shutdown().await.map_err(|e| e.to_string())?;
            Ok(())
        })
    });
    let addr = addr_rx.recv()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let events = Arc::new(AtomicU64::new(0));
    let active = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..streams {
            let (events, active, peak) = (events.clone(), active.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                let body = format!(
                    "{{\"prompt\":\"bench {i}\",\"max_tokens\":{tokens},\"stream\":true,\"ignore_eos\":true}}"
                );
                let req = format!(
                    "POST /v1/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut sock = TcpStream::connect(addr).await?;
                sock.set_nodelay(true)?;
                sock.write_all(req.as_bytes()).await?;
                let now = active.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now, Ordering::Relaxed);
                let mut buf = vec![0u8; 64 * 1024];
                let mut carry: Vec<u8> = Vec::new();
                let mut n_events = 0u64;
                loop {
                    let n = sock.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    carry.extend_from_slice(&buf[..n]);
                    n_events += carry.windows(6).filter(|w| w == b"data: ").count() as u64;
                    // Keep a 5-byte tail so a marker split across reads is counted once.
                    let keep = carry.len().saturating_sub(5);
                    carry.drain(..keep);
                }
                active.fetch_sub(1, Ordering::Relaxed);
                events.fetch_add(n_events, Ordering::Relaxed);
                Ok::<_, std::io::Error>(())
            }));
        }
        for t in tasks {
            if let Ok(Err(e)) = t.await {
                eprintln!("stream failed: {e}");
            }
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let _ = server.join();
    let total = events.load(Ordering::Relaxed);
    println!(
        "{{\"streams\":{streams},\"tokens_per_stream\":{tokens},\"sse_events\":{total},\"seconds\":{secs:.3},\"sse_events_per_s\":{:.0},\"peak_concurrent_streams\":{}}}",
        total as f64 / secs,
        peak.load(Ordering::Relaxed)
    );
    Ok(())
}
