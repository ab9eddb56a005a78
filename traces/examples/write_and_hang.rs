//! Test helper: writes request rows with a [`retrace_traces::RowWriter`], flushes, prints
//! `FLUSHED <rows>` and then hangs, so a test can SIGKILL it mid-file.
//!
//! Usage: `write_and_hang <dir> <rows_before_flush> <rows_per_group> <rows_after_flush>`.
//! Rows after the flush are pushed but never flushed: a crash may lose them.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use retrace_traces::rows::{Endpoint, Outcome, RequestRow, TokenSource};
use retrace_traces::schema::FileMeta;
use retrace_traces::write::{RowWriter, WriterOptions};

fn row(i: u64) -> RequestRow {
    RequestRow {
        request_id: format!("req-{i:06}"),
        arrival_us: 1_700_000_000_000_000 + i as i64 * 20_000,
        session_id: (i % 3 == 0).then(|| format!("s{}", i % 7)),
        endpoint: Endpoint::Chat,
        model: Some("llama".to_string()),
        stream: true,
        prompt_tokens: Some(100 + (i % 50) as u32),
        prompt_tokens_source: TokenSource::Usage,
        max_tokens: None,
        message_count: Some(2),
        output_tokens: Some(20),
        output_tokens_source: TokenSource::Usage,
        prefix_hashes: vec![i % 5, i],
        status: Some(200),
        outcome: Outcome::Ok,
        ttfb_us: Some(1000),
        ttft_us: Some(2000),
        e2e_us: Some(90_000),
        chunk_count: Some(20),
        itl: None,
        request_bytes: Some(300),
        response_bytes: Some(4000),
        finish_reason: Some("stop".to_string()),
        prompt_text: None,
        response_text: None,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        return Err(
            "usage: write_and_hang <dir> <rows_before_flush> <rows_per_group> <rows_after_flush>"
                .into(),
        );
    }
    let dir = PathBuf::from(&args[1]);
    let before: u64 = args[2].parse()?;
    let per_group: usize = args[3].parse()?;
    let after: u64 = args[4].parse()?;
    let mut opts = WriterOptions::new(
        dir,
        "requests",
        FileMeta {
            producer: "write_and_hang".to_string(),
            ..FileMeta::default()
        },
    );
    opts.max_rows_per_group = per_group;
    // Only explicit flushes below: the test decides what is durable.
    opts.flush_interval = Duration::from_secs(3600);
    let mut w = RowWriter::<RequestRow>::create(opts)?;
    for i in 0..before {
        w.push(row(i))?;
    }
    w.flush()?;
    for i in before..before + after {
        w.push(row(i))?;
    }
    println!("FLUSHED {before}");
    std::io::stdout().flush()?;
    // Bounded: the test kills us long before this ends.
    std::thread::sleep(Duration::from_secs(600));
    Ok(())
}
