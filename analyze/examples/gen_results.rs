//! Writes a synthetic N-row run with planted effects (a 0.5 GiB/hour leak, TTFT drift,
//! starved short prompts) and, with `--analyze`, analyzes it and reports rows/s.
//!
//! N = 0 analyzes an existing OUT_DIR without writing.
//!
//! `cargo run --release -p retrace-analyze --example gen_results -- OUT_DIR 10000000 --analyze [--html report.html] [--json report.json]`

use std::path::PathBuf;
use std::time::Instant;

use retrace_analyze::synth::Synth;
use retrace_analyze::{analyze, AnalyzeConfig};
use retrace_traces::{write_file, FileMeta, ResultRow};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: gen_results OUT_DIR N [--analyze] [--html FILE] [--json FILE]")?,
    );
    let n: u64 = args.next().ok_or("missing N")?.parse()?;
    let rest: Vec<String> = args.collect();
    let do_analyze = rest.iter().any(|a| a == "--analyze");
    let value_of = |flag: &str| {
        rest.iter()
            .position(|a| a == flag)
            .and_then(|i| rest.get(i + 1))
            .map(PathBuf::from)
    };
    let html = value_of("--html");
    let json = value_of("--json");
    // Rate chosen so the run lasts 6 hours whatever N is.
    let duration_us: i64 = 6 * 3600 * 1_000_000;
    let synth = Synth {
        duration_us,
        rate_per_s: n as f64 / (duration_us as f64 / 1e6),
        leak_bytes_per_hour: 512.0 * 1024.0 * 1024.0,
        ttft_drift_us_per_hour: 20_000.0,
        starved_short_fraction: 0.03,
        error_rate: 0.002,
        ..Synth::default()
    };
    std::fs::create_dir_all(&out)?;
    let t0 = Instant::now();
    // N = 0: analyze what is already in OUT_DIR (to measure the analysis alone).
    let synth = if n == 0 {
        Synth {
            duration_us: 0,
            ..synth
        }
    } else {
        synth
    };
    let mut chunk: Vec<ResultRow> = Vec::with_capacity(1 << 20);
    let mut file = 0;
    let mut written = 0u64;
    for row in synth.results() {
        chunk.push(row);
        if chunk.len() == 1 << 20 {
            write_file(
                &out.join(format!("results-{file:04}.parquet")),
                &chunk,
                &FileMeta::default(),
            )?;
            written += chunk.len() as u64;
            file += 1;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        write_file(
            &out.join(format!("results-{file:04}.parquet")),
            &chunk,
            &FileMeta::default(),
        )?;
        written += chunk.len() as u64;
    }
    if n > 0 {
        write_file(
            &out.join("samples-0000.parquet"),
            &synth.samples(),
            &FileMeta::default(),
        )?;
    }
    eprintln!(
        "wrote {written} rows to {} in {:.1} s",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
    if do_analyze {
        let t0 = Instant::now();
        let report = analyze(&AnalyzeConfig::new(vec![out.clone()]))?;
        let secs = t0.elapsed().as_secs_f64();
        print!("{}", report.render_terminal());
        eprintln!(
            "analyzed {} rows in {secs:.2} s: {:.2} M rows/s",
            report.summary.requests,
            report.summary.requests as f64 / secs / 1e6
        );
        if let Some(j) = json {
            std::fs::write(&j, serde_json::to_string_pretty(&report.to_json())?)?;
            eprintln!("JSON: {}", j.display());
        }
        if let Some(h) = html {
            report.write_html(&h)?;
            eprintln!("HTML: {}", h.display());
        }
    }
    Ok(())
}
