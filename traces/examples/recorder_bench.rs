//! Recorder benchmark: encodes realistic request rows through [`RowWriter`] on one thread
//! and prints rows/s, bytes/row on disk and bytes/row per column as one JSON line.
//!
//! `cargo run --release -p retrace-traces --example recorder_bench -- --rows 10000000`
//! (options: `--rows N`, `--dir D` to keep the files, `--group-rows N` (rows per row group), `--lengths azure|mooncake`, `--sessions`,
//! `--variants` to compare writer settings on the same rows in memory, `--schema-options`
//! to measure what lossy schema choices would save on disk).
//!
//! # Where the rows come from
//! Every distribution that the real traces in `traces/samples/` contain is resampled from
//! them (bootstrap, seeded), not invented:
//! - **Arrivals**: inter-arrival gaps drawn from the 19,365 gaps of the Azure 2023
//!   conversation trace (mean 181 ms, ~5.5 req/s, 0.1 µs resolution).
//! - **Prompt and output tokens**: `(ContextTokens, GeneratedTokens)` pairs of the same
//!   Azure trace, drawn jointly (`--lengths azure`, the default: median prompt 1,020 tokens,
//!   1.7 full 512-token blocks a row), or the Mooncake row's own lengths (`--lengths
//!   mooncake`: Kimi's long-context traffic, median 8,353 prompt tokens, 27 blocks a row).
//! - **Prefix hashes**: the Mooncake conversation trace's `hash_ids` (512-token blocks),
//!   its 918 rows taken in order and tiled. A row keeps the first `prompt_tokens / 512`
//!   ids of its Mooncake row (a shorter prompt of the same workload shares exactly the
//!   same leading blocks); a prompt longer than its Mooncake row gets fresh blocks. Each
//!   tile maps ids to fresh 64-bit hashes, so nothing is shared across tiles (every 918
//!   rows) — pessimistic: real system prompts and sessions outlive 300 s.
//! - **Sessions**: derived from Mooncake too: a row that shares its first two or more
//!   blocks with an earlier row continues that row's session (turn + 1; `message_count` =
//!   2 + 2 × turn); otherwise it starts one (725 sessions in 918 rows). The proxy records a
//!   session id only from an `x-session-id` header, which OpenAI-compatible clients do not
//!   send, so by default `session_id` is null; `--sessions` gives every row its session as
//!   32 random hex digits (a UUID-like header): ~15 bytes a row of pure entropy, since
//!   most sessions have one request.
//! - **Models and failures**: BurstGPT's shares (ChatGPT 80%, GPT-4 20%) and its failure
//!   rate (rows with 0 response tokens: 17 of 400), recorded as `http_error` / 500.
//!
//! Not in any sample, so modelled (and marked so): every request streams chat (the traces
//! are conversation services; streaming is also the most expensive case: chunk and ITL
//! columns are all set); TTFT = (30 ms + 50 µs × prompt tokens) and the ITL mean = 25 ms,
//! each × lognormal(σ 0.3) noise, at µs resolution; half the requests set a `max_tokens`
//! from {256, …, 4096}, which caps the output (`finish_reason` `length`); request bytes =
//! tokens × lognormal(4 bytes, σ 0.15) + 180, response bytes = tokens × lognormal(160, σ
//! 0.1). Rows are pushed in completion order (arrival + e2e), as the proxy pushes them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};
use retrace_traces::rows::{Endpoint, Outcome, RequestRow, TokenSource};
use retrace_traces::schema::FileMeta;
use retrace_traces::write::{RowWriter, WriterOptions};
use retrace_traces::GapSummary;

type Error = Box<dyn std::error::Error>;

/// The `retrace` binary's allocator: the recorder runs inside it, so this measures what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One row of the Mooncake sample, with the session derived from shared prefixes.
struct MoonRow {
    hash_ids: Vec<u64>,
    input: u32,
    output: u32,
    session: u64,
    turn: u32,
}

/// What the generator resamples, read from `traces/samples/`.
struct Samples {
    gaps_us: Vec<i64>,
    azure_lengths: Vec<(u32, u32)>,
    mooncake: Vec<MoonRow>,
    /// (model, cumulative share).
    models: Vec<(String, f64)>,
    failure_rate: f64,
}

fn samples_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/samples"))
}

impl Samples {
    fn load() -> Result<Samples, Error> {
        let dir = samples_dir();
        // Azure 2023 conversation trace: TIMESTAMP,ContextTokens,GeneratedTokens.
        let azure_path = dir.join("azure_2023/AzureLLMInferenceTrace_conv.csv");
        let azure = std::fs::read_to_string(&azure_path)
            .map_err(|e| format!("{}: {e}", azure_path.display()))?;
        let mut times = Vec::new();
        let mut azure_lengths = Vec::new();
        for (n, line) in azure.lines().enumerate().skip(1) {
            let mut it = line.split(',');
            let (Some(t), Some(c), Some(g)) = (it.next(), it.next(), it.next()) else {
                return Err(
                    format!("{}:{}: expected 3 fields", azure_path.display(), n + 1).into(),
                );
            };
            let t = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
                .map_err(|e| format!("{}:{}: TIMESTAMP: {e}", azure_path.display(), n + 1))?;
            times.push(t.and_utc().timestamp_micros());
            azure_lengths.push((c.trim().parse()?, g.trim().parse()?));
        }
        let gaps_us = times.windows(2).map(|w| (w[1] - w[0]).max(0)).collect();

        // Mooncake conversation trace: {timestamp, input_length, output_length, hash_ids}.
        let moon_path = dir.join("mooncake/mooncake_conversation_first300s.jsonl");
        let moon = std::fs::read_to_string(&moon_path)
            .map_err(|e| format!("{}: {e}", moon_path.display()))?;
        let mut mooncake: Vec<MoonRow> = Vec::new();
        for (n, line) in moon.lines().enumerate() {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: {e}", moon_path.display(), n + 1))?;
            let field = |k: &str| {
                v[k].as_u64()
                    .ok_or_else(|| format!("{}:{}: `{k}` missing", moon_path.display(), n + 1))
            };
            let hash_ids: Vec<u64> = v["hash_ids"]
                .as_array()
                .ok_or_else(|| format!("{}:{}: `hash_ids` missing", moon_path.display(), n + 1))?
                .iter()
                .filter_map(serde_json::Value::as_u64)
                .collect();
            // The session: the earlier row sharing the longest leading prefix (>= 2 blocks;
            // one shared block is the common system prompt).
            let mut best: Option<(usize, usize)> = None;
            for (k, prev) in mooncake.iter().enumerate() {
                let common = prev
                    .hash_ids
                    .iter()
                    .zip(&hash_ids)
                    .take_while(|(a, b)| a == b)
                    .count();
                if common >= 2 && best.is_none_or(|(_, c)| common >= c) {
                    best = Some((k, common));
                }
            }
            let (session, turn) = match best {
                Some((k, _)) => (mooncake[k].session, mooncake[k].turn + 1),
                None => (n as u64, 0),
            };
            mooncake.push(MoonRow {
                hash_ids,
                input: u32::try_from(field("input_length")?)?,
                output: u32::try_from(field("output_length")?)?,
                session,
                turn,
            });
        }

        // BurstGPT: Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type.
        let burst_path = dir.join("burstgpt/BurstGPT_1_first400.csv");
        let burst = std::fs::read_to_string(&burst_path)
            .map_err(|e| format!("{}: {e}", burst_path.display()))?;
        let mut counts: Vec<(String, usize)> = Vec::new();
        let (mut total, mut failed) = (0usize, 0usize);
        for line in burst.lines().skip(1) {
            let fields: Vec<&str> = line.split(',').collect();
            let (Some(model), Some(resp)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            total += 1;
            failed += usize::from(resp.trim() == "0");
            match counts.iter_mut().find(|(m, _)| m == model) {
                Some((_, c)) => *c += 1,
                None => counts.push((model.to_string(), 1)),
            }
        }
        let mut acc = 0.0;
        let models = counts
            .into_iter()
            .map(|(m, c)| {
                acc += c as f64 / total.max(1) as f64;
                (m, acc)
            })
            .collect();
        Ok(Samples {
            gaps_us,
            azure_lengths,
            mooncake,
            models,
            failure_rate: failed as f64 / total.max(1) as f64,
        })
    }
}

struct Gen {
    rng: StdRng,
    s: Samples,
    mooncake_lengths: bool,
    sessions: bool,
    now_us: i64,
    jitter: LogNormal<f64>,
    bytes_per_token: LogNormal<f64>,
    bytes_per_chunk: LogNormal<f64>,
    produced: u64,
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
    fn new(seed: u64, mooncake_lengths: bool, sessions: bool) -> Result<Gen, Error> {
        Ok(Gen {
            rng: StdRng::seed_from_u64(seed),
            s: Samples::load()?,
            mooncake_lengths,
            sessions,
            now_us: 1_767_225_600_000_000,
            jitter: LogNormal::new(0.0, 0.3)?,
            bytes_per_token: LogNormal::new(4.0f64.ln(), 0.15)?,
            bytes_per_chunk: LogNormal::new(160.0f64.ln(), 0.1)?,
            produced: 0,
            id_counter: 0,
        })
    }

    fn row(&mut self) -> RequestRow {
        let rng = &mut self.rng;
        let s = &self.s;
        self.now_us += s.gaps_us[rng.random_range(0..s.gaps_us.len())];
        self.id_counter += 1;
        // The proxy's id format: a random per-process prefix and a counter.
        let request_id = format!("{:012x}-{:010}", 0x5e3a_91c2_7f04u64, self.id_counter);
        let tile = self.produced / s.mooncake.len() as u64;
        let moon = &s.mooncake[(self.produced % s.mooncake.len() as u64) as usize];
        self.produced += 1;
        let (prompt_tokens, mut output_tokens) = if self.mooncake_lengths {
            (moon.input, moon.output)
        } else {
            s.azure_lengths[rng.random_range(0..s.azure_lengths.len())]
        };
        let output_tokens_asked = output_tokens.max(1);
        let blocks = (prompt_tokens / 512) as usize;
        let mut prefix: Vec<u64> = moon
            .hash_ids
            .iter()
            .take(blocks)
            .map(|id| mix((tile << 32) ^ id))
            .collect();
        while prefix.len() < blocks {
            let prev = prefix.last().copied().unwrap_or(0);
            prefix.push(mix(prev ^ rng.random::<u64>()));
        }
        let session_id = self.sessions.then(|| {
            format!(
                "{:016x}{:016x}",
                mix(tile ^ (moon.session << 32)),
                mix(moon.session ^ (tile << 32))
            )
        });
        let u: f64 = rng.random();
        let model = s
            .models
            .iter()
            .find(|(_, cum)| u < *cum)
            .or(s.models.last())
            .map(|(m, _)| m.clone());
        let failed = rng.random_bool(s.failure_rate);
        let (outcome, status) = if failed {
            (Outcome::HttpError, Some(500))
        } else {
            (Outcome::Ok, Some(200))
        };
        let ok = !failed;
        let max_tokens = rng
            .random_bool(0.5)
            .then(|| [256, 512, 1024, 2048, 4096][rng.random_range(0..5)]);
        output_tokens = output_tokens_asked.min(max_tokens.unwrap_or(u32::MAX));
        let truncated = output_tokens < output_tokens_asked;
        let ttft = (30_000.0 + prompt_tokens as f64 * 50.0) * self.jitter.sample(rng);
        let itl_mean = 25_000.0 * self.jitter.sample(rng);
        let e2e = ttft + itl_mean * output_tokens.saturating_sub(1) as f64;
        let (ttfb_us, ttft_us, e2e_us, chunk_count, itl) = if ok {
            let itl = (output_tokens >= 2).then(|| GapSummary {
                count: output_tokens - 1,
                mean_us: itl_mean as u64,
                p50_us: (itl_mean * 0.95) as u64,
                p99_us: (itl_mean * 2.5 * self.jitter.sample(rng)) as u64,
                max_us: (itl_mean * 4.0 * self.jitter.sample(rng)) as u64,
            });
            (
                Some((ttft * 0.98) as u64),
                Some(ttft as u64),
                Some(e2e as u64),
                Some(output_tokens),
                itl,
            )
        } else {
            (
                Some((ttft * 0.3) as u64),
                None,
                Some((ttft * 0.3) as u64),
                None,
                None,
            )
        };
        let request_bytes =
            (f64::from(prompt_tokens) * self.bytes_per_token.sample(rng)) as u64 + 180;
        let response_bytes = if ok {
            (f64::from(output_tokens) * self.bytes_per_chunk.sample(rng)) as u64
        } else {
            60
        };
        RequestRow {
            request_id,
            arrival_us: self.now_us,
            session_id,
            endpoint: Endpoint::Chat,
            model,
            stream: true,
            prompt_tokens: Some(prompt_tokens),
            prompt_tokens_source: TokenSource::Usage,
            max_tokens,
            message_count: Some(2 + 2 * moon.turn),
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
            request_bytes: Some(request_bytes),
            response_bytes: Some(response_bytes),
            finish_reason: ok.then(|| if truncated { "length" } else { "stop" }.to_string()),
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

fn main() -> Result<(), Error> {
    let mut rows: u64 = 1_000_000;
    let mut keep_dir = None;
    let mut variants = false;
    let mut schema_options = false;
    let mut only: Option<String> = None;
    let mut group_rows: Option<usize> = None;
    let mut mooncake_lengths = false;
    let mut sessions = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rows" => rows = args.next().ok_or("--rows needs a value")?.parse()?,
            "--variants" => variants = true,
            "--schema-options" => schema_options = true,
            "--only" => only = Some(args.next().ok_or("--only needs a value")?),
            "--group-rows" => {
                group_rows = Some(args.next().ok_or("--group-rows needs a value")?.parse()?)
            }
            "--sessions" => sessions = true,
            "--lengths" => {
                mooncake_lengths = match args.next().as_deref() {
                    Some("azure") => false,
                    Some("mooncake") => true,
                    other => return Err(format!("--lengths azure|mooncake, not {other:?}").into()),
                }
            }
            "--dir" => keep_dir = Some(args.next().ok_or("--dir needs a value")?),
            other => {
                return Err(format!("unknown argument {other:?} (use --rows N [--dir D] [--lengths azure|mooncake] [--sessions] [--group-rows N] [--variants [--only a,b]])").into())
            }
        }
    }
    if variants {
        return compare_variants(rows, mooncake_lengths, sessions, only.as_deref());
    }
    if schema_options {
        return compare_schema_options(rows, mooncake_lengths, sessions);
    }
    let tmp = tempfile::tempdir()?;
    let dir = keep_dir
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let mut opts = WriterOptions::new(
        &dir,
        "bench",
        FileMeta {
            producer: "recorder_bench".to_string(),
            prefix_block_tokens: Some(512),
            ..FileMeta::default()
        },
    );
    if let Some(n) = group_rows {
        opts.max_rows_per_group = n;
    }
    let mut writer = RowWriter::<RequestRow>::create(opts)?;
    let mut gen = Gen::new(42, mooncake_lengths, sessions)?;
    // Rows pending completion, popped in completion order (arrival + e2e).
    let mut in_flight: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut slots: HashMap<u64, RequestRow> = Default::default();
    let mut encode = Duration::ZERO;
    let mut encode_cpu = Duration::ZERO;
    let mut max_buffered = 0usize;
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
            // Sampled every 1024 rows (the encoders grow by a batch at a time).
            if writer.rows_written() % 1024 == 0 {
                max_buffered = max_buffered.max(writer.buffered_bytes());
            }
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
        "sessions": sessions,
        "lengths": if mooncake_lengths { "mooncake" } else { "azure" },
        "files": files.len(),
        "encode_seconds": (encode.as_secs_f64() * 1000.0).round() / 1000.0,
        "rows_per_s": (produced as f64 / encode.as_secs_f64()).round(),
        "encode_cpu_seconds": encode_cpu.as_secs_f64(),
        "rows_per_cpu_s": (produced as f64 / encode_cpu.as_secs_f64().max(1e-3)).round(),
        "bytes_on_disk": bytes,
        "bytes_per_row": (bytes as f64 / produced as f64 * 100.0).round() / 100.0,
        "max_rows_per_group": group_rows.unwrap_or(65_536),
        "max_buffered_bytes": max_buffered,
        "column_bytes_per_row": per_column,
    });
    println!("{line}");
    Ok(())
}

/// Rounds `v` to three significant decimal digits (0.05% relative error at most: the
/// precision of the analyzer's HDR histograms).
fn three_digits(v: u64) -> u64 {
    let mut scale = 1;
    while v / scale >= 1000 {
        scale *= 10;
    }
    (v + scale / 2) / scale * scale
}

/// Applies `f` to every latency of `r` (TTFB, TTFT, E2E and the ITL summary).
fn map_latencies(r: &mut RequestRow, f: impl Fn(u64) -> u64) {
    for v in [&mut r.ttfb_us, &mut r.ttft_us, &mut r.e2e_us]
        .into_iter()
        .flatten()
    {
        *v = f(*v);
    }
    if let Some(itl) = r.itl.as_mut() {
        for v in [
            &mut itl.mean_us,
            &mut itl.p50_us,
            &mut itl.p99_us,
            &mut itl.max_us,
        ] {
            *v = f(*v);
        }
    }
}

/// `--schema-options`: the bytes a row would take on disk (the real writer, same rows)
/// under lossy schema choices, applied cumulatively; one JSON line each. For the ≤ 24
/// bytes-a-row goal, which the current schema's information content puts out of reach.
fn compare_schema_options(rows: u64, mooncake_lengths: bool, sessions: bool) -> Result<(), Error> {
    let mut gen = Gen::new(42, mooncake_lengths, sessions)?;
    let mut all: Vec<RequestRow> = (0..rows).map(|_| gen.row()).collect();
    all.sort_by_key(|r| r.arrival_us + r.e2e_us.unwrap_or(0) as i64);
    let measure = |name: &str, rows: &[RequestRow]| -> Result<(), Error> {
        let tmp = tempfile::tempdir()?;
        let meta = FileMeta {
            producer: "recorder_bench".to_string(),
            prefix_block_tokens: Some(512),
            ..FileMeta::default()
        };
        let mut writer =
            RowWriter::<RequestRow>::create(WriterOptions::new(tmp.path(), "opt", meta))?;
        for r in rows {
            writer.push(r.clone())?;
        }
        let mut bytes = 0;
        for f in writer.close()? {
            bytes += std::fs::metadata(f)?.len();
        }
        let line = serde_json::json!({
            "option": name,
            "rows": rows.len(),
            "bytes_per_row": (bytes as f64 / rows.len() as f64 * 100.0).round() / 100.0,
        });
        println!("{line}");
        Ok(())
    };
    measure("current", &all)?;
    // Per-recording block ids (first seen, first numbered) instead of 64-bit hashes: equal
    // blocks still get equal values, within one recording only (Mooncake's `hash_ids`).
    let mut ids: HashMap<u64, u64> = HashMap::new();
    for r in &mut all {
        for h in &mut r.prefix_hashes {
            let next = ids.len() as u64 + 1;
            *h = *ids.entry(*h).or_insert(next);
        }
    }
    measure("+block_ids", &all)?;
    // Latencies to three significant digits.
    for r in &mut all {
        map_latencies(r, three_digits);
    }
    measure("+latencies_3_digits", &all)?;
    // The derived columns dropped (stored constant here): itl_count = chunk_count - 1, and
    // the ITL mean, which (e2e - ttft) / itl_count nearly gives.
    for r in &mut all {
        if let Some(itl) = r.itl.as_mut() {
            itl.count = 0;
            itl.mean_us = 0;
        }
    }
    measure("+no_itl_count_mean", &all)?;
    // Byte counts to three significant digits.
    for r in &mut all {
        for v in [&mut r.request_bytes, &mut r.response_bytes]
            .into_iter()
            .flatten()
        {
            *v = three_digits(*v);
        }
    }
    measure("+bytes_3_digits", &all)?;
    // Latencies in units of 100 µs (a column unit change, not just rounding): the encoders
    // only gain from smaller numbers, not from decimal zeros.
    for r in &mut all {
        map_latencies(r, |v| v / 100);
    }
    measure("+latencies_in_100us_units", &all)?;
    Ok(())
}

/// `--variants`: encodes the same rows (in memory) with alternative writer settings, to
/// pick per-column encodings. Prints one JSON line per variant.
fn compare_variants(
    rows: u64,
    mooncake_lengths: bool,
    sessions: bool,
    only: Option<&str>,
) -> Result<(), Error> {
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::{EnabledStatistics, WriterProperties};
    use parquet::schema::types::ColumnPath;
    use retrace_traces::schema::Row;

    let mut gen = Gen::new(42, mooncake_lengths, sessions)?;
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
    use parquet::basic::Encoding;
    use parquet::file::properties::WriterPropertiesBuilder;
    type Tweak = fn(WriterPropertiesBuilder) -> WriterPropertiesBuilder;
    fn each(
        b: WriterPropertiesBuilder,
        cols: &[&str],
        f: impl Fn(WriterPropertiesBuilder, ColumnPath) -> WriterPropertiesBuilder,
    ) -> WriterPropertiesBuilder {
        cols.iter().fold(b, |b, c| f(b, ColumnPath::from(*c)))
    }
    const LAT: &[&str] = &[
        "ttfb_us",
        "ttft_us",
        "e2e_us",
        "itl_mean_us",
        "itl_p50_us",
        "itl_p99_us",
        "itl_max_us",
        "request_bytes",
        "response_bytes",
    ];
    const TOK: &[&str] = &[
        "prompt_tokens",
        "output_tokens",
        "chunk_count",
        "itl_count",
        "max_tokens",
        "message_count",
        "status",
    ];
    const STRS: &[&str] = &[
        "session_id",
        "endpoint",
        "model",
        "prompt_tokens_source",
        "output_tokens_source",
        "outcome",
        "finish_reason",
    ];
    /// The list's leaf column: a path of three parts (`ColumnPath::from` of the dotted
    /// string would be one part named `prefix_hashes.list.item`, matching nothing).
    fn hashes_path() -> ColumnPath {
        ColumnPath::new(vec![
            "prefix_hashes".to_string(),
            "list".to_string(),
            "item".to_string(),
        ])
    }
    let _ = &strings;
    let _ = &off;
    let tweaks: Vec<(&'static str, Tweak)> = vec![
        ("current", |b| b),
        ("no_stats", |b| {
            b.set_statistics_enabled(EnabledStatistics::None)
                .set_column_statistics_enabled(
                    ColumnPath::from("arrival_us"),
                    EnabledStatistics::None,
                )
        }),
        ("hashes_dict", |b| {
            b.set_column_dictionary_enabled(hashes_path(), true)
        }),
        ("hashes_plain", |b| {
            b.set_column_dictionary_enabled(hashes_path(), false)
                .set_column_encoding(hashes_path(), Encoding::PLAIN)
        }),
        ("hashes_bss", |b| {
            b.set_column_dictionary_enabled(hashes_path(), false)
                .set_column_encoding(hashes_path(), Encoding::BYTE_STREAM_SPLIT)
        }),
        ("hashes_dict_bigdict", |b| {
            b.set_column_dictionary_enabled(hashes_path(), true)
                .set_dictionary_page_size_limit(8 << 20)
        }),
        ("zstd1", |b| {
            b.set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        }),
        ("strings_plain", |b| {
            each(b, STRS, |b, c| {
                b.set_column_dictionary_enabled(c.clone(), false)
                    .set_column_encoding(c, Encoding::PLAIN)
            })
        }),
        ("strings_plain_constant", |b| {
            each(
                b,
                &["endpoint", "prompt_tokens_source", "session_id"],
                |b, c| {
                    b.set_column_dictionary_enabled(c.clone(), false)
                        .set_column_encoding(c, Encoding::PLAIN)
                },
            )
        }),
        ("strings_plain_enums", |b| {
            each(
                b,
                &[
                    "endpoint",
                    "prompt_tokens_source",
                    "session_id",
                    "outcome",
                    "output_tokens_source",
                ],
                |b, c| {
                    b.set_column_dictionary_enabled(c.clone(), false)
                        .set_column_encoding(c, Encoding::PLAIN)
                },
            )
        }),
        ("page_rows_8192", |b| b.set_data_page_row_count_limit(8192)),
        ("page_rows_8192_zstd1", |b| {
            b.set_data_page_row_count_limit(8192)
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        }),
        ("page_rows_16384_zstd1", |b| {
            b.set_data_page_row_count_limit(16384)
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        }),
        ("page_rows_8192_zstd1_strings_plain", |b| {
            each(
                b.set_data_page_row_count_limit(8192)
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default())),
                STRS,
                |b, c| {
                    b.set_column_dictionary_enabled(c.clone(), false)
                        .set_column_encoding(c, Encoding::PLAIN)
                },
            )
        }),
        ("page_rows_16384", |b| {
            b.set_data_page_row_count_limit(16384)
        }),
        ("zstd3", |b| {
            b.set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        }),
        ("zstd6", |b| {
            b.set_compression(Compression::ZSTD(ZstdLevel::try_new(6).unwrap_or_default()))
        }),
        ("pages_8mb", |b| {
            b.set_data_page_size_limit(8 << 20)
                .set_data_page_row_count_limit(1 << 20)
        }),
        ("lat_delta", |b| {
            each(b, LAT, |b, c| {
                b.set_column_encoding(c, Encoding::DELTA_BINARY_PACKED)
            })
        }),
        ("lat_plain", |b| {
            each(b, LAT, |b, c| b.set_column_encoding(c, Encoding::PLAIN))
        }),
        ("tok_nodict_plain", |b| {
            each(b, TOK, |b, c| {
                b.set_column_dictionary_enabled(c.clone(), false)
                    .set_column_encoding(c, Encoding::PLAIN)
            })
        }),
        ("tok_nodict_bss", |b| {
            each(b, TOK, |b, c| {
                b.set_column_dictionary_enabled(c.clone(), false)
                    .set_column_encoding(c, Encoding::BYTE_STREAM_SPLIT)
            })
        }),
        ("tok_nodict_delta", |b| {
            each(b, TOK, |b, c| {
                b.set_column_dictionary_enabled(c.clone(), false)
                    .set_column_encoding(c, Encoding::DELTA_BINARY_PACKED)
            })
        }),
        ("v1_pages", |b| {
            b.set_writer_version(parquet::file::properties::WriterVersion::PARQUET_1_0)
        }),
    ];
    let variants: Vec<Variant> = tweaks
        .into_iter()
        .filter(|(name, _)| only.is_none_or(|o| o.split(',').any(|n| n == *name)))
        .map(|(name, t)| {
            let v: Box<dyn Fn() -> WriterProperties> =
                Box::new(move || t(current().into_builder()).build());
            (name, v)
        })
        .collect();
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
