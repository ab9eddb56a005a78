//! Recorder benchmark: encodes realistic request rows through [`RowWriter`] on one thread
//! and prints rows/s and bytes/row on disk as one JSON line.
//!
//! `cargo run --release -p retrace-traces --example recorder_bench -- --rows 10000000`
//!
//! Rows are generated in chunks outside the timed section, in completion order (as the
//! proxy pushes them: a request is written when its response ends), from: Poisson arrivals
//! at ~50/s, lognormal prompt and output lengths, a few models, mostly `ok` outcomes,
//! TTFT/E2E/ITL consistent with those lengths, and 0–8 prefix blocks reused across a
//! session and across requests sharing a system prompt.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal};
use retrace_traces::rows::{Endpoint, Outcome, RequestRow, TokenSource};
use retrace_traces::schema::FileMeta;
use retrace_traces::write::{RowWriter, WriterOptions};
use retrace_traces::GapSummary;

const MODELS: [&str; 3] = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
];

struct Gen {
    rng: StdRng,
    now_us: i64,
    inter_arrival: Exp<f64>,
    prompt: LogNormal<f64>,
    output: LogNormal<f64>,
    jitter: LogNormal<f64>,
    /// Recent sessions: (id, prefix hashes of their last prompt).
    sessions: Vec<(String, Vec<u64>)>,
    /// Shared system-prompt first blocks, per model.
    system_blocks: Vec<Vec<u64>>,
    id_counter: u64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: a cheap, well-spread hash for ids and chained block hashes.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Gen {
    fn new(seed: u64) -> Result<Gen, Box<dyn std::error::Error>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let system_blocks = (0..MODELS.len())
            .map(|_| (0..8).map(|_| rng.random::<u64>()).collect())
            .collect();
        Ok(Gen {
            rng,
            now_us: 1_767_225_600_000_000,
            inter_arrival: Exp::new(50.0)?,
            prompt: LogNormal::new((800.0f64).ln(), 1.0)?,
            output: LogNormal::new((250.0f64).ln(), 0.8)?,
            jitter: LogNormal::new(0.0, 0.3)?,
            sessions: Vec::new(),
            system_blocks,
            id_counter: 0,
        })
    }

    fn row(&mut self) -> RequestRow {
        let rng = &mut self.rng;
        self.now_us += (self.inter_arrival.sample(rng) * 1e6) as i64;
        self.id_counter += 1;
        // The proxy's id format: a random per-process prefix and a counter.
        let request_id = format!("{:012x}-{:010}", 0x5e3a_91c2_7f04u64, self.id_counter);
        let chat = rng.random_bool(0.8);
        let model_idx = match rng.random_range(0..10) {
            0..=6 => 0,
            7 | 8 => 1,
            _ => 2,
        };
        let stream = rng.random_bool(0.9);
        let prompt_tokens = (self.prompt.sample(rng) as u32).clamp(1, 128_000);
        let blocks = ((prompt_tokens / 512) as usize).min(8);
        // Sessions: 40% of chat requests continue a recent conversation.
        let mut session_id = None;
        let mut prefix: Vec<u64> = Vec::with_capacity(blocks);
        if chat && !self.sessions.is_empty() && rng.random_bool(0.4) {
            let k = rng.random_range(0..self.sessions.len());
            let (id, hashes) = &self.sessions[k];
            session_id = Some(id.clone());
            prefix.extend(hashes.iter().take(blocks));
        } else if chat && rng.random_bool(0.5) {
            let id = format!("sess-{:08x}", rng.random::<u32>());
            if self.sessions.len() >= 500 {
                let k = rng.random_range(0..self.sessions.len());
                self.sessions.swap_remove(k);
            }
            self.sessions.push((id.clone(), Vec::new()));
            session_id = Some(id);
        }
        // A shared system prompt makes the first blocks common across requests of a model.
        if prefix.is_empty() && blocks > 0 && rng.random_bool(0.6) {
            let shared = rng.random_range(1..=blocks.min(2));
            prefix.extend(&self.system_blocks[model_idx][..shared]);
        }
        while prefix.len() < blocks {
            let prev = prefix.last().copied().unwrap_or(0);
            prefix.push(mix(prev ^ rng.random::<u64>()));
        }
        if let Some(id) = &session_id {
            if let Some(s) = self.sessions.iter_mut().find(|(sid, _)| sid == id) {
                s.1 = prefix.clone();
            }
        }
        let roll = rng.random_range(0..1000);
        let (outcome, status) = match roll {
            0..=9 => (Outcome::HttpError, Some(if roll < 6 { 429 } else { 500 })),
            10..=14 => (Outcome::ClientCancelled, Some(200)),
            15..=19 => (Outcome::Timeout, None),
            _ => (Outcome::Ok, Some(200)),
        };
        let ok = outcome == Outcome::Ok;
        let output_tokens = (self.output.sample(rng) as u32).clamp(1, 8192);
        let ttft = (30_000.0 + prompt_tokens as f64 * 50.0) * self.jitter.sample(rng);
        let itl_mean = 25_000.0 * self.jitter.sample(rng);
        let e2e = ttft + itl_mean * output_tokens.saturating_sub(1) as f64;
        let (ttfb_us, ttft_us, e2e_us, chunk_count, itl) = if ok {
            let ttfb = if stream { ttft * 0.98 } else { e2e };
            let itl = (stream && output_tokens >= 2).then(|| GapSummary {
                count: output_tokens - 1,
                mean_us: itl_mean as u64,
                p50_us: (itl_mean * 0.95) as u64,
                p99_us: (itl_mean * 2.5 * self.jitter.sample(rng)) as u64,
                max_us: (itl_mean * 4.0 * self.jitter.sample(rng)) as u64,
            });
            (
                Some(ttfb as u64),
                Some(if stream { ttft as u64 } else { e2e as u64 }),
                Some(e2e as u64),
                stream.then_some(output_tokens),
                itl,
            )
        } else {
            (None, None, Some((e2e * 0.3) as u64), None, None)
        };
        RequestRow {
            request_id,
            arrival_us: self.now_us,
            session_id,
            endpoint: if chat {
                Endpoint::Chat
            } else {
                Endpoint::Completions
            },
            model: Some(MODELS[model_idx].to_string()),
            stream,
            prompt_tokens: Some(prompt_tokens),
            prompt_tokens_source: TokenSource::Usage,
            max_tokens: rng
                .random_bool(0.5)
                .then(|| [256, 512, 1024, 2048, 4096][rng.random_range(0..5)]),
            message_count: chat.then(|| 1 + 2 * rng.random_range(0..6)),
            output_tokens: ok.then_some(output_tokens),
            output_tokens_source: if ok {
                TokenSource::Usage
            } else {
                TokenSource::Unknown
            },
            prefix_hashes: prefix,
            status,
            outcome,
            ttfb_us,
            ttft_us,
            e2e_us,
            chunk_count,
            itl,
            request_bytes: Some(u64::from(prompt_tokens) * 4 + 180),
            response_bytes: ok.then(|| {
                if stream {
                    u64::from(output_tokens) * 160
                } else {
                    u64::from(output_tokens) * 4 + 300
                }
            }),
            finish_reason: ok.then(|| {
                if rng.random_bool(0.8) {
                    "stop"
                } else {
                    "length"
                }
                .to_string()
            }),
            prompt_text: None,
            response_text: None,
        }
    }
}

/// CPU time of the calling thread (user + system), from `/proc/thread-self/stat`: on a
/// shared machine wall-clock time overstates the cost. `None` where there is no procfs.
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux platform retrace runs on.
    Some(Duration::from_millis(ticks * 10))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rows: u64 = 1_000_000;
    let mut keep_dir = None;
    let mut variants = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rows" => rows = args.next().ok_or("--rows needs a value")?.parse()?,
            "--variants" => variants = true,
            "--dir" => keep_dir = Some(args.next().ok_or("--dir needs a value")?),
            other => {
                return Err(format!("unknown argument {other:?} (use --rows N [--dir D])").into())
            }
        }
    }
    if variants {
        return compare_variants(rows);
    }
    let tmp = tempfile::tempdir()?;
    let dir = keep_dir
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let opts = WriterOptions::new(
        &dir,
        "bench",
        FileMeta {
            producer: "recorder_bench".to_string(),
            prefix_block_tokens: Some(512),
            ..FileMeta::default()
        },
    );
    let mut writer = RowWriter::<RequestRow>::create(opts)?;
    let mut gen = Gen::new(42)?;
    // Rows pending completion, popped in completion order (arrival + e2e).
    let mut in_flight: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut slots: std::collections::HashMap<u64, RequestRow> = Default::default();
    let mut encode = Duration::ZERO;
    let mut encode_cpu = Duration::ZERO;
    let mut produced = 0u64;
    let mut chunk = Vec::with_capacity(100_000);
    while produced < rows {
        // Generate a chunk, untimed.
        chunk.clear();
        while chunk.len() < 100_000 && (produced + chunk.len() as u64) < rows {
            let r = gen.row();
            let done = r.arrival_us + r.e2e_us.unwrap_or(0) as i64;
            while let Some(Reverse((t, k))) = in_flight.peek().copied() {
                if t > r.arrival_us {
                    break;
                }
                in_flight.pop();
                if let Some(row) = slots.remove(&k) {
                    chunk.push(row);
                }
            }
            let key = gen.id_counter;
            in_flight.push(Reverse((done, key)));
            slots.insert(key, r);
        }
        if (produced + chunk.len() as u64) >= rows || chunk.is_empty() {
            while let Some(Reverse((_, k))) = in_flight.pop() {
                if let Some(row) = slots.remove(&k) {
                    chunk.push(row);
                }
            }
        }
        let n = chunk.len().min((rows - produced) as usize);
        // Timed: pushing (Arrow batching, Parquet encoding, zstd, file writes).
        let start = Instant::now();
        let cpu_start = thread_cpu();
        for r in chunk.drain(..n) {
            writer.push(r)?;
        }
        writer.tick()?;
        encode += start.elapsed();
        if let (Some(a), Some(b)) = (cpu_start, thread_cpu()) {
            encode_cpu += b.saturating_sub(a);
        }
        produced += n as u64;
    }
    let start = Instant::now();
    let cpu_start = thread_cpu();
    let files = writer.close()?;
    encode += start.elapsed();
    if let (Some(a), Some(b)) = (cpu_start, thread_cpu()) {
        encode_cpu += b.saturating_sub(a);
    }
    let mut bytes = 0u64;
    let mut columns: std::collections::BTreeMap<String, i64> = Default::default();
    for f in &files {
        bytes += std::fs::metadata(f)?.len();
        use parquet::file::reader::FileReader;
        let r = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(f)?)?;
        for g in r.metadata().row_groups() {
            for c in g.columns() {
                *columns.entry(c.column_path().string()).or_default() += c.compressed_size();
            }
        }
    }
    let per_column: serde_json::Map<String, serde_json::Value> = columns
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                serde_json::json!((v as f64 / produced as f64 * 100.0).round() / 100.0),
            )
        })
        .collect();
    let line = serde_json::json!({
        "rows": produced,
        "files": files.len(),
        "encode_seconds": (encode.as_secs_f64() * 1000.0).round() / 1000.0,
        "rows_per_s": (produced as f64 / encode.as_secs_f64()).round(),
        "encode_cpu_seconds": encode_cpu.as_secs_f64(),
        "rows_per_cpu_s": (produced as f64 / encode_cpu.as_secs_f64().max(1e-3)).round(),
        "bytes_on_disk": bytes,
        "bytes_per_row": (bytes as f64 / produced as f64 * 100.0).round() / 100.0,
        "column_bytes_per_row": per_column,
    });
    println!("{line}");
    Ok(())
}

/// `--variants`: encodes the same rows (in memory) with alternative writer settings, to
/// pick per-column encodings. Prints one JSON line per variant.
fn compare_variants(rows: u64) -> Result<(), Box<dyn std::error::Error>> {
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::schema::types::ColumnPath;
    use retrace_traces::schema::Row;

    let mut gen = Gen::new(42)?;
    let mut all: Vec<RequestRow> = (0..rows).map(|_| gen.row()).collect();
    // Completion order, as the proxy pushes.
    all.sort_by_key(|r| r.arrival_us + r.e2e_us.unwrap_or(0) as i64);
    let mut sorted_batches = all.clone();
    for c in sorted_batches.chunks_mut(8192) {
        c.sort_by_key(|r| r.arrival_us);
    }
    type Variant = (&'static str, Box<dyn Fn() -> WriterProperties>);
    let current =
        || retrace_traces::write::writer_properties_for::<RequestRow>(&FileMeta::default());
    let strings = [
        "session_id",
        "endpoint",
        "model",
        "prompt_tokens_source",
        "output_tokens_source",
        "outcome",
        "finish_reason",
    ];
    let off = |b: parquet::file::properties::WriterPropertiesBuilder, cols: &[&str]| {
        cols.iter().fold(b, |b, c| {
            b.set_column_dictionary_enabled(ColumnPath::from(*c), false)
        })
    };
    let variants: Vec<Variant> = vec![
        ("current", Box::new(current)),
        (
            "current_no_stats",
            Box::new(move || {
                let mut b = current()
                    .into_builder()
                    .set_statistics_enabled(EnabledStatistics::None);
                for f in RequestRow::schema().fields() {
                    b = b.set_column_statistics_enabled(
                        ColumnPath::from(f.name().as_str()),
                        EnabledStatistics::None,
                    );
                }
                b = b.set_column_statistics_enabled(
                    ColumnPath::from("prefix_hashes.list.item"),
                    EnabledStatistics::None,
                );
                b.build()
            }),
        ),
        (
            "current_uncompressed",
            Box::new(move || {
                current()
                    .into_builder()
                    .set_compression(Compression::UNCOMPRESSED)
                    .build()
            }),
        ),
        (
            "current_session_plain",
            Box::new(move || off(current().into_builder(), &["session_id"]).build()),
        ),
        (
            "current_strings_plain",
            Box::new(move || off(current().into_builder(), &strings).build()),
        ),
        (
            "current_hashes_plain",
            Box::new(move || off(current().into_builder(), &["prefix_hashes.list.item"]).build()),
        ),
        (
            "current_v2_pages",
            Box::new(move || {
                current()
                    .into_builder()
                    .set_writer_version(parquet::file::properties::WriterVersion::PARQUET_2_0)
                    .build()
            }),
        ),
        (
            "current_zstd3",
            Box::new(move || {
                current()
                    .into_builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
                    .build()
            }),
        ),
    ];
    // Costs outside Parquet: Arrow batch building and the per-batch sort.
    let cpu0 = thread_cpu();
    let mut n = 0;
    for c in sorted_batches.chunks(8192) {
        n += RequestRow::to_batch(c)?.num_rows();
    }
    let cpu1 = thread_cpu();
    let mut copy = all.clone();
    let cpu2 = thread_cpu();
    for c in copy.chunks_mut(8192) {
        c.sort_by_key(|r| r.arrival_us);
    }
    let cpu3 = thread_cpu();
    if let (Some(a), Some(b), Some(c), Some(d)) = (cpu0, cpu1, cpu2, cpu3) {
        println!(
            "{}",
            serde_json::json!({
                "phase": "outside_parquet", "rows": n,
                "to_batch_cpu_s": (b - a).as_secs_f64(), "sort_cpu_s": (d - c).as_secs_f64(),
            })
        );
    }
    for (name, props) in &variants {
        for (order, data) in [("sorted_8192", &sorted_batches)] {
            let mut buf = Vec::new();
            let start = Instant::now();
            let cpu_start = thread_cpu();
            let mut w = parquet::arrow::ArrowWriter::try_new(
                &mut buf,
                RequestRow::schema(),
                Some(props()),
            )?;
            for c in data.chunks(8192) {
                w.write(&RequestRow::to_batch(c)?)?;
            }
            let md = w.close()?;
            let secs = start.elapsed().as_secs_f64();
            let cpu = match (cpu_start, thread_cpu()) {
                (Some(a), Some(b)) => (b - a).as_secs_f64(),
                _ => secs,
            };
            let mut cols: std::collections::BTreeMap<String, i64> = Default::default();
            for g in md.row_groups() {
                for c in g.columns() {
                    *cols.entry(c.column_path().string()).or_default() += c.compressed_size();
                }
            }
            let per: serde_json::Map<String, serde_json::Value> = cols
                .into_iter()
                .filter(|(_, v)| *v as f64 / rows as f64 >= 0.5)
                .map(|(k, v)| {
                    (
                        k,
                        serde_json::json!((v as f64 / rows as f64 * 100.0).round() / 100.0),
                    )
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "variant": name, "order": order,
                    "bytes_per_row": (buf.len() as f64 / rows as f64 * 100.0).round() / 100.0,
                    "rows_per_s": (rows as f64 / secs).round(),
                    "rows_per_cpu_s": (rows as f64 / cpu.max(1e-3)).round(),
                    "columns": per,
                })
            );
        }
    }
    Ok(())
}
