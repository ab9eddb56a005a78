//! Synthetic runs with planted effects (drift, steps, leaks, warm-ups, starvation, a
//! capacity cliff, a spike, errors), deterministic from a seed. Used by the tests, the
//! `gen_results` example and benchmarks: the analysis must find exactly what was planted.

use retrace_traces::{
    Endpoint, ErrorKind, GapSummary, ResultRow, SampleRow, SampleSource, TokenSource,
};

/// One load level of a synthetic run.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthLevel {
    /// Phase label (`ramp-1`, `spike`, ...).
    pub phase: Option<String>,
    /// Load relative to `rate_per_s`.
    pub load_level: f64,
    /// How long it lasts, µs.
    pub duration_us: i64,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Synth {
    /// First send, UTC µs.
    pub start_us: i64,
    /// Run length, µs (ignored when `levels` is not empty).
    pub duration_us: i64,
    /// Requests per second at load 1.0.
    pub rate_per_s: f64,
    /// Random seed.
    pub seed: u64,
    /// TTFT of a request with no prompt, µs (plus 20 µs per prompt token).
    pub ttft_base_us: f64,
    /// TTFT drift, µs per hour of run time.
    pub ttft_drift_us_per_hour: f64,
    /// A step in TTFT: (offset from start µs, µs added from then on).
    pub ttft_step: Option<(i64, f64)>,
    /// TPOT, µs.
    pub tpot_us: f64,
    /// Fraction of short prompts stuck behind long prefills (their TTFT gets +2 s).
    pub starved_short_fraction: f64,
    /// Server error rate (HTTP 503s).
    pub error_rate: f64,
    /// Client lateness added to every send, µs.
    pub lateness_us: i64,
    /// Load levels (ramp / step / spike); empty for a constant-rate run.
    pub levels: Vec<SynthLevel>,
    /// Requests per second one replica completes; above it a queue builds.
    pub capacity_rps: f64,
    /// Server RSS at the start, bytes.
    pub rss_base_bytes: f64,
    /// Linear RSS growth (a leak), bytes per hour.
    pub leak_bytes_per_hour: f64,
    /// RSS growth that levels off (warm-up) with a 4-minute time constant, bytes.
    pub warmup_bytes: f64,
    /// RSS noise amplitude, bytes.
    pub rss_noise_bytes: f64,
    /// Sample period, µs (0: no samples).
    pub sample_every_us: i64,
}

impl Default for Synth {
    fn default() -> Synth {
        Synth {
            start_us: 1_764_500_000_000_000,
            duration_us: 30 * 60 * 1_000_000,
            rate_per_s: 5.0,
            seed: 1,
            ttft_base_us: 40_000.0,
            ttft_drift_us_per_hour: 0.0,
            ttft_step: None,
            tpot_us: 20_000.0,
            starved_short_fraction: 0.0,
            error_rate: 0.0,
            lateness_us: 200,
            levels: Vec::new(),
            capacity_rps: f64::INFINITY,
            rss_base_bytes: 2.0 * 1024.0 * 1024.0 * 1024.0,
            leak_bytes_per_hour: 0.0,
            warmup_bytes: 0.0,
            rss_noise_bytes: 4.0 * 1024.0 * 1024.0,
            sample_every_us: 5_000_000,
        }
    }
}

/// xorshift64*: fast, deterministic, good enough for planted noise.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Level schedule: (phase, load, start offset µs, end offset µs).
type Segment = (Option<String>, f64, i64, i64);

impl Synth {
    fn segments(&self) -> Vec<Segment> {
        if self.levels.is_empty() {
            return vec![(None, 1.0, 0, self.duration_us)];
        }
        let mut t = 0;
        self.levels
            .iter()
            .map(|l| {
                let s = (l.phase.clone(), l.load_level, t, t + l.duration_us);
                t += l.duration_us;
                s
            })
            .collect()
    }

    /// Total length, µs.
    pub fn total_us(&self) -> i64 {
        self.segments().last().map_or(0, |s| s.3)
    }

    /// Queue wait at offset `t` of a segment at `rate` req/s: the backlog built so far
    /// divided by the service rate (a fluid queue).
    fn queue_wait_us(&self, rate: f64, since_segment_us: i64) -> f64 {
        if rate <= self.capacity_rps {
            return 0.0;
        }
        let backlog = (rate - self.capacity_rps) * since_segment_us as f64 / 1e6;
        backlog / self.capacity_rps * 1e6
    }

    /// The result rows, in send order.
    pub fn results(&self) -> impl Iterator<Item = ResultRow> + '_ {
        let mut rng = Rng(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let segments = self.segments();
        let mut seg = 0usize;
        let mut t = 0.0f64; // offset µs of the next send
        let mut n = 0u64;
        std::iter::from_fn(move || loop {
            let (phase, load, from, to) = segments.get(seg)?.clone();
            let rate = self.rate_per_s * load;
            if t < from as f64 {
                t = from as f64;
            }
            if t >= to as f64 || rate <= 0.0 {
                seg += 1;
                continue;
            }
            let offset = t as i64;
            // Evenly spaced sends with ±40% jitter on the gap.
            t += 1e6 / rate * (0.6 + 0.8 * rng.unit());
            n += 1;
            return Some(self.row(&mut rng, n, phase, load, rate, offset, offset - from));
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        rng: &mut Rng,
        n: u64,
        phase: Option<String>,
        load: f64,
        rate: f64,
        offset_us: i64,
        since_segment_us: i64,
    ) -> ResultRow {
        let class = rng.next() % 3;
        let prompt_tokens: u32 = match class {
            0 => 50 + (rng.next() % 100) as u32,
            1 => 800 + (rng.next() % 400) as u32,
            _ => 6000 + (rng.next() % 4000) as u32,
        };
        let hours = offset_us as f64 / 3.6e9;
        let mut ttft = self.ttft_base_us + 20.0 * f64::from(prompt_tokens);
        ttft += self.ttft_drift_us_per_hour * hours;
        if let Some((at, add)) = self.ttft_step {
            if offset_us >= at {
                ttft += add;
            }
        }
        ttft *= 0.85 + 0.3 * rng.unit();
        if class == 0 && rng.unit() < self.starved_short_fraction {
            ttft += 2_000_000.0;
        }
        let wait = self.queue_wait_us(rate, since_segment_us);
        ttft += wait;
        let output_tokens = 50 + (rng.next() % 200) as u32;
        let tpot = self.tpot_us * (0.9 + 0.2 * rng.unit());
        let e2e = ttft + tpot * f64::from(output_tokens - 1);
        let intended = self.start_us + offset_us;
        let failed = rng.unit() < self.error_rate;
        let in_flight = ((rate * e2e / 1e6).round() as u32).max(1);
        let lateness = self.lateness_us;
        ResultRow {
            request_id: format!("synth-{n}"),
            session_id: None,
            scenario: "synth".into(),
            phase,
            load_level: load,
            shard: None,
            intended_send_us: intended,
            actual_send_us: intended + lateness,
            lateness_us: lateness,
            in_flight_at_send: in_flight,
            endpoint: Endpoint::Completions,
            prompt_tokens,
            prompt_tokens_source: TokenSource::Tokenizer,
            max_tokens: Some(256),
            status: Some(if failed { 503 } else { 200 }),
            error_kind: failed.then_some(ErrorKind::HttpStatus),
            error_message: failed.then(|| "503 Service Unavailable".to_string()),
            ttfb_us: (!failed).then_some((ttft * 0.9) as u64),
            ttft_us: (!failed).then(|| (ttft - lateness as f64).max(1.0) as u64),
            ttft_from_intended_us: (!failed).then_some(ttft as u64),
            e2e_us: (!failed).then(|| (e2e - lateness as f64).max(1.0) as u64),
            e2e_from_intended_us: (!failed).then_some(e2e as u64),
            tpot_us: (!failed).then_some(tpot),
            itl: (!failed).then_some(GapSummary {
                count: output_tokens - 1,
                mean_us: tpot as u64,
                p50_us: tpot as u64,
                p99_us: (tpot * 1.5) as u64,
                max_us: (tpot * 2.0) as u64,
            }),
            output_tokens: (!failed).then_some(output_tokens),
            output_tokens_source: TokenSource::Usage,
            chunk_count: (!failed).then_some(output_tokens),
            finish_reason: (!failed).then(|| "length".to_string()),
        }
    }

    /// The sample rows (server RSS, queue depth, running, KV usage), in time order.
    pub fn samples(&self) -> Vec<SampleRow> {
        let mut out = Vec::new();
        if self.sample_every_us <= 0 {
            return out;
        }
        let mut rng = Rng(self.seed.wrapping_add(77) | 1);
        for (_, load, from, to) in self.segments() {
            let rate = self.rate_per_s * load;
            let mut t = from;
            while t < to {
                let hours = t as f64 / 3.6e9;
                let time_us = self.start_us + t;
                let rss = self.rss_base_bytes
                    + self.leak_bytes_per_hour * hours
                    + self.warmup_bytes * (1.0 - (-hours * 15.0).exp())
                    + self.rss_noise_bytes * (2.0 * rng.unit() - 1.0);
                let backlog = if rate > self.capacity_rps {
                    (rate - self.capacity_rps) * (t - from) as f64 / 1e6
                } else {
                    0.0
                };
                let running = if self.capacity_rps.is_finite() {
                    (rate.min(self.capacity_rps) * 4.0).round()
                } else {
                    (rate * 4.0).round()
                };
                let kv = if self.capacity_rps.is_finite() {
                    (0.6 * rate / self.capacity_rps).min(0.7)
                } else {
                    0.3
                };
                let push = |out: &mut Vec<SampleRow>, source, name: &str, value| {
                    out.push(SampleRow {
                        time_us,
                        source,
                        name: name.into(),
                        labels: String::new(),
                        value,
                    })
                };
                push(&mut out, SampleSource::Process, "rss_bytes", rss);
                push(
                    &mut out,
                    SampleSource::Server,
                    "queue_depth",
                    backlog.round(),
                );
                push(&mut out, SampleSource::Server, "running", running);
                push(&mut out, SampleSource::Server, "kv_cache_usage", kv);
                t += self.sample_every_us;
            }
        }
        out
    }
}
