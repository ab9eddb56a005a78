//! Streaming aggregation of a run: constant memory per window (HDR histograms and sums),
//! no row is kept. Fed one compact [`Rec`] per result row and one call per sample.

use std::collections::{BTreeMap, HashMap};

use arrow_buffer::NullBuffer;
use hdrhistogram::Histogram;
use retrace_traces::{ErrorKind, SampleSource};

use crate::counts::{record_pair, Counts, SIG2, SIG3};

/// Per-window counts (2 significant figures, `u32` cells, like [`window_hist`]).
type WinCounts = Counts<u32, SIG2>;
/// Per-level counts (like [`level_hist`]).
type LevelCounts = Counts<u64, SIG2>;
/// Whole-run counts (like [`run_hist`]).
type RunCounts = Counts<u64, SIG3>;

/// Error kinds in a fixed order (index = position in per-window error arrays).
pub(crate) const ERROR_KINDS: [ErrorKind; 6] = [
    ErrorKind::Connect,
    ErrorKind::Timeout,
    ErrorKind::HttpStatus,
    ErrorKind::BrokenStream,
    ErrorKind::Cancelled,
    ErrorKind::Other,
];

pub(crate) fn kind_index(kind: ErrorKind) -> usize {
    match kind {
        ErrorKind::Connect => 0,
        ErrorKind::Timeout => 1,
        ErrorKind::HttpStatus => 2,
        ErrorKind::BrokenStream => 3,
        ErrorKind::Cancelled => 4,
        ErrorKind::Other => 5,
    }
}

/// Index of `Cancelled` in [`ERROR_KINDS`]: excluded from the server error rate.
pub(crate) const CANCELLED: usize = 4;

/// Number of prompt-length bins (quarter powers of two up to 2^25 tokens).
pub(crate) const PROMPT_BINS: usize = 100;

pub(crate) fn prompt_bin(tokens: u32) -> usize {
    // 4 bins per doubling: floor(4·log2(t+1)), via the bit length and the next two bits.
    let v = u64::from(tokens) + 1;
    let lz = 63 - v.leading_zeros() as usize;
    let frac = if lz >= 2 {
        ((v >> (lz - 2)) & 0b11) as usize
    } else {
        ((v << (2 - lz)) & 0b11) as usize
    };
    (lz * 4 + frac).min(PROMPT_BINS - 1)
}

/// Lower edge (tokens) of a prompt bin.
pub(crate) fn prompt_bin_low(bin: usize) -> f64 {
    let lz = bin / 4;
    let frac = bin % 4;
    let v = (1u64 << lz) as f64 * (1.0 + frac as f64 / 4.0);
    (v - 1.0).max(0.0)
}

fn window_hist() -> Histogram<u32> {
    // 2 significant figures: ~1% error, ~10 KB per histogram; auto-resizes past 64 s.
    let mut h = Histogram::new_with_bounds(1, 1 << 26, 2).expect("static bounds are valid");
    h.auto(true);
    h
}

/// Per-level latency histograms (and, summed, the whole run's): 2 significant figures,
/// percentiles within 1%, ~20 KB each, so that ramps with many levels stay small.
fn level_hist() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 1 << 26, 2).expect("static bounds are valid");
    h.auto(true);
    h
}

pub(crate) fn run_hist() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 1 << 26, 3).expect("static bounds are valid");
    h.auto(true);
    h
}

#[inline]
fn rec64(h: &mut Histogram<u64>, v: u64) {
    let _ = h.record(v);
}

/// One result row, as the hot loop sees it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Rec {
    pub intended_send_us: i64,
    pub lateness_us: i64,
    pub in_flight_at_send: u32,
    pub prompt_tokens: u32,
    pub output_tokens: Option<u32>,
    pub error: Option<ErrorKind>,
    /// The error comes from the client (its own connect failure, not the server's).
    pub client_side_error: bool,
    /// TTFT on the chosen basis (intended or actual send).
    pub ttft_us: Option<u64>,
    /// E2E on the chosen basis.
    pub e2e_us: Option<u64>,
    pub tpot_us: Option<f64>,
    pub itl_p50_us: Option<u64>,
    pub itl_count: u32,
    /// Index into [`Agg::levels`].
    pub level: usize,
}

/// A column of a decoded batch: its values and, only when some are missing, its validity.
#[derive(Clone, Copy)]
pub(crate) struct Col<'a, T> {
    pub values: &'a [T],
    pub nulls: Option<&'a NullBuffer>,
}

impl<T: Copy> Col<'_, T> {
    #[inline(always)]
    fn get(&self, i: usize) -> Option<T> {
        match self.nulls {
            Some(n) if n.is_null(i) => None,
            _ => Some(self.values[i]),
        }
    }
}

/// A batch of result rows, column by column (every slice as long as `intended_send_us`).
/// The fields are those of [`Rec`]; columns whose missing values count as 0 come as plain
/// slices.
pub(crate) struct Batch<'a> {
    pub intended_send_us: &'a [i64],
    /// On the client's clock, missing = 0.
    pub lateness_us: &'a [i64],
    pub in_flight_at_send: &'a [u32],
    pub prompt_tokens: &'a [u32],
    pub itl_count: &'a [u32],
    pub output_tokens: Col<'a, u32>,
    pub ttft_us: Col<'a, u64>,
    pub e2e_us: Col<'a, u64>,
    pub tpot_us: Col<'a, f64>,
    pub itl_p50_us: Col<'a, u64>,
    /// Per row: 0 for a success, else 1 + the error's index in [`ERROR_KINDS`]. Empty when
    /// no row of the batch failed.
    pub error: &'a [u8],
    /// Rows whose error is the client's own.
    pub client_side_errors: u64,
    /// Per row: index into [`Agg::levels`].
    pub level: &'a [u32],
}

/// Calls `f(i, value)` for the rows `range` that succeeded and have a value.
#[inline(always)]
fn each_ok<T: Copy>(
    error: &[u8],
    col: Col<'_, T>,
    range: std::ops::Range<usize>,
    mut f: impl FnMut(usize, T),
) {
    let start = range.start;
    let values = &col.values[range.clone()];
    // One call site for `f`, so that it is inlined; the tests are loop-invariant or rare.
    let error = if error.is_empty() {
        None
    } else {
        Some(&error[range])
    };
    for (k, &v) in values.iter().enumerate() {
        if error.is_some_and(|e| e[k] != 0) {
            continue;
        }
        if col.nulls.is_some_and(|n| n.is_null(start + k)) {
            continue;
        }
        f(start + k, v);
    }
}

/// TPOT as recorded: rounded to whole µs, negative (and NaN) as 0.
#[inline(always)]
fn tpot_value(v: f64) -> u64 {
    v.round().max(0.0) as u64
}

/// Mean/min/max accumulator for sampled gauges.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Acc {
    pub sum: f64,
    pub n: u32,
    pub max: f64,
    pub min: f64,
}

impl Acc {
    pub(crate) fn add(&mut self, v: f64) {
        if self.n == 0 {
            self.max = v;
            self.min = v;
        } else {
            self.max = self.max.max(v);
            self.min = self.min.min(v);
        }
        self.sum += v;
        self.n += 1;
    }

    pub(crate) fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / f64::from(self.n))
    }

    pub(crate) fn merge(&mut self, o: &Acc) {
        if o.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *o;
        } else {
            self.sum += o.sum;
            self.n += o.n;
            self.max = self.max.max(o.max);
            self.min = self.min.min(o.min);
        }
    }
}

/// Everything kept per window. The latency histograms are `None` until [`Agg::finish`]
/// builds them from the counts (and stay `None` for a metric the window never saw).
#[derive(Debug, Default)]
pub(crate) struct Window {
    ttft_c: WinCounts,
    tpot_c: WinCounts,
    itl_c: WinCounts,
    e2e_c: WinCounts,
    pub requests: u64,
    pub ok: u64,
    pub errors: [u64; 6],
    pub prompt_tokens: u64,
    pub output_tokens: u64,
    pub ttft: Option<Histogram<u32>>,
    pub tpot: Option<Histogram<u32>>,
    pub itl: Option<Histogram<u32>>,
    pub e2e: Option<Histogram<u32>>,
    pub in_flight_sum: u64,
    pub lateness_max_us: i64,
    pub queue: Acc,
    pub running: Acc,
    pub kv: Acc,
    pub preemptions: Acc,
}

/// Per load level (or phase) of a ramp, step or spike run.
#[derive(Debug)]
pub(crate) struct Level {
    ttft_c: LevelCounts,
    tpot_c: LevelCounts,
    itl_c: LevelCounts,
    e2e_c: LevelCounts,
    pub phase: Option<String>,
    pub load_level: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: [u64; 6],
    pub first_send_us: i64,
    pub last_send_us: i64,
    pub last_end_us: i64,
    pub output_tokens: u64,
    pub in_flight_sum: u64,
    pub ttft: Histogram<u64>,
    pub tpot: Histogram<u64>,
    pub itl: Histogram<u64>,
    pub e2e: Histogram<u64>,
}

/// A memory series: (name, labels, source).
pub(crate) type SeriesKey = (String, String, &'static str);

/// The aggregate of one run.
#[derive(Debug)]
pub(crate) struct Agg {
    lateness_c: RunCounts,
    prompt_tokens_c: RunCounts,
    output_tokens_c: RunCounts,
    in_flight_c: RunCounts,
    prompt_ttft_c: Vec<RunCounts>,
    /// The last window looked up: [start, end) µs and its position (rows come in time
    /// order, so most lookups skip the division).
    last_window: (i64, i64, usize),
    /// The last second counted: its start µs and position in `per_second`.
    last_second: Option<(i64, usize)>,
    pub window_us: i64,
    /// Absolute index (time / window) of `windows[0]`.
    pub base: i64,
    pub windows: Vec<Window>,
    pub requests: u64,
    pub ok: u64,
    pub errors: [u64; 6],
    pub client_side_errors: u64,
    pub first_send_us: i64,
    pub last_send_us: i64,
    pub last_end_us: i64,
    pub prompt_tokens_total: u64,
    pub output_tokens_total: u64,
    pub ttft: Histogram<u64>,
    pub tpot: Histogram<u64>,
    pub itl: Histogram<u64>,
    pub e2e: Histogram<u64>,
    pub lateness: Histogram<u64>,
    pub prompt_tokens: Histogram<u64>,
    pub output_tokens: Histogram<u64>,
    pub in_flight: Histogram<u64>,
    pub queue_depth: Histogram<u64>,
    pub kv_peak: Option<f64>,
    pub preemptions: Acc,
    pub prompt_ttft: Vec<Option<Histogram<u64>>>,
    pub levels: Vec<Level>,
    level_index: HashMap<(Option<String>, u64), usize>,
    /// Per-second send counts (burstiness), from `sec_base`.
    pub per_second: Vec<u32>,
    pub sec_base: i64,
    pub memory: BTreeMap<SeriesKey, BTreeMap<i64, Acc>>,
    pub samples: u64,
}

/// Sample names read as memory series.
pub(crate) const MEMORY_NAMES: &[&str] = &[
    "rss_bytes",
    "server_rss_bytes",
    "process_resident_memory_bytes",
    "gpu_memory_used_bytes",
];

impl Agg {
    pub(crate) fn new(window_us: i64) -> Agg {
        Agg {
            lateness_c: RunCounts::default(),
            prompt_tokens_c: RunCounts::default(),
            output_tokens_c: RunCounts::default(),
            in_flight_c: RunCounts::default(),
            prompt_ttft_c: (0..PROMPT_BINS).map(|_| RunCounts::default()).collect(),
            last_window: (0, 0, 0),
            last_second: None,
            window_us: window_us.max(1),
            base: 0,
            windows: Vec::new(),
            requests: 0,
            ok: 0,
            errors: [0; 6],
            client_side_errors: 0,
            first_send_us: i64::MAX,
            last_send_us: i64::MIN,
            last_end_us: i64::MIN,
            prompt_tokens_total: 0,
            output_tokens_total: 0,
            ttft: run_hist(),
            tpot: run_hist(),
            itl: run_hist(),
            e2e: run_hist(),
            lateness: run_hist(),
            prompt_tokens: run_hist(),
            output_tokens: run_hist(),
            in_flight: run_hist(),
            queue_depth: run_hist(),
            kv_peak: None,
            preemptions: Acc::default(),
            prompt_ttft: (0..PROMPT_BINS).map(|_| None).collect(),
            levels: Vec::new(),
            level_index: HashMap::new(),
            per_second: Vec::new(),
            sec_base: 0,
            memory: BTreeMap::new(),
            samples: 0,
        }
    }

    /// Index of a (phase, load level), creating it on first sight. Load levels are
    /// bucketed to a 0.05 grid: a ramp gives every request its own level, and one set of
    /// histograms per distinct float would not fit in memory.
    pub(crate) fn level(&mut self, phase: Option<&str>, load_level: f64) -> usize {
        let load_level = if load_level.is_finite() {
            (load_level * 20.0).round() / 20.0
        } else {
            1.0
        };
        let key = (phase.map(str::to_string), load_level.to_bits());
        if let Some(&i) = self.level_index.get(&key) {
            return i;
        }
        let i = self.levels.len();
        self.levels.push(Level {
            ttft_c: LevelCounts::default(),
            tpot_c: LevelCounts::default(),
            itl_c: LevelCounts::default(),
            e2e_c: LevelCounts::default(),
            phase: key.0.clone(),
            load_level,
            requests: 0,
            ok: 0,
            errors: [0; 6],
            first_send_us: i64::MAX,
            last_send_us: i64::MIN,
            last_end_us: i64::MIN,
            output_tokens: 0,
            in_flight_sum: 0,
            ttft: level_hist(),
            tpot: level_hist(),
            itl: level_hist(),
            e2e: level_hist(),
        });
        self.level_index.insert(key, i);
        i
    }

    /// The window holding time `t_us`, growing the window vector as needed.
    #[inline]
    fn window_mut(&mut self, t_us: i64) -> &mut Window {
        let (lo, hi, pos) = self.last_window;
        if t_us >= lo && t_us < hi {
            return &mut self.windows[pos];
        }
        let idx = t_us.div_euclid(self.window_us);
        if self.windows.is_empty() {
            self.base = idx;
        }
        if idx < self.base {
            let extra = (self.base - idx) as usize;
            let mut front: Vec<Window> = (0..extra).map(|_| Window::default()).collect();
            front.append(&mut self.windows);
            self.windows = front;
            self.base = idx;
        }
        let pos = (idx - self.base) as usize;
        if pos >= self.windows.len() {
            self.windows.resize_with(pos + 1, Window::default);
        }
        self.last_window = idx
            .checked_mul(self.window_us)
            .and_then(|lo| Some((lo, lo.checked_add(self.window_us)?, pos)))
            .unwrap_or((0, 0, 0));
        &mut self.windows[pos]
    }

    #[inline]
    fn count_second(&mut self, t_us: i64) {
        // Rows come in time order: most fall in the second of the row before.
        if let Some((lo, pos)) = self.last_second {
            if t_us
                .checked_sub(lo)
                .is_some_and(|d| (0..1_000_000).contains(&d))
            {
                self.per_second[pos] += 1;
                return;
            }
        }
        let sec = t_us.div_euclid(1_000_000);
        if self.per_second.is_empty() {
            self.sec_base = sec;
        }
        if sec < self.sec_base {
            let extra = (self.sec_base - sec) as usize;
            let mut front = vec![0u32; extra];
            front.append(&mut self.per_second);
            self.per_second = front;
            self.sec_base = sec;
        }
        let pos = (sec - self.sec_base) as usize;
        if pos >= self.per_second.len() {
            self.per_second.resize(pos + 1, 0);
        }
        self.per_second[pos] += 1;
        self.last_second = sec.checked_mul(1_000_000).map(|lo| (lo, pos));
    }

    /// Adds one result row.
    #[inline]
    pub(crate) fn push(&mut self, r: &Rec) {
        let t = r.intended_send_us;
        self.count_second(t);
        self.requests += 1;
        self.first_send_us = self.first_send_us.min(t);
        self.last_send_us = self.last_send_us.max(t);
        if let Some(e2e) = r.e2e_us {
            self.last_end_us = self.last_end_us.max(t.saturating_add(e2e as i64));
        }
        self.prompt_tokens_total += u64::from(r.prompt_tokens);
        self.prompt_tokens_c
            .record(u64::from(r.prompt_tokens), run_hist);
        self.in_flight_c
            .record(u64::from(r.in_flight_at_send), run_hist);
        self.lateness_c
            .record(r.lateness_us.max(0) as u64, run_hist);
        let ok = r.error.is_none();
        if let Some(kind) = r.error {
            self.errors[kind_index(kind)] += 1;
            if r.client_side_error {
                self.client_side_errors += 1;
            }
        } else {
            self.ok += 1;
        }
        if let Some(out) = r.output_tokens {
            self.output_tokens_total += u64::from(out);
            if ok {
                self.output_tokens_c.record(u64::from(out), run_hist);
            }
        }
        // Whole-run latency histograms are the sum of the per-level ones (levels partition
        // the rows): built once in `finish` instead of recorded twice per row.
        let tpot = r.tpot_us.map(tpot_value);
        if ok {
            if let Some(v) = r.ttft_us {
                let bin = prompt_bin(r.prompt_tokens);
                self.prompt_ttft_c[bin].record(v, run_hist);
            }
        }
        {
            let lvl = &mut self.levels[r.level];
            lvl.requests += 1;
            lvl.first_send_us = lvl.first_send_us.min(t);
            lvl.last_send_us = lvl.last_send_us.max(t);
            lvl.in_flight_sum += u64::from(r.in_flight_at_send);
            if let Some(kind) = r.error {
                lvl.errors[kind_index(kind)] += 1;
            } else {
                lvl.ok += 1;
                lvl.output_tokens += u64::from(r.output_tokens.unwrap_or(0));
                if let Some(v) = r.ttft_us {
                    lvl.ttft_c.record(v, level_hist);
                }
                if let Some(v) = r.e2e_us {
                    lvl.e2e_c.record(v, level_hist);
                    lvl.last_end_us = lvl.last_end_us.max(t.saturating_add(v as i64));
                }
                if let Some(v) = tpot {
                    lvl.tpot_c.record(v, level_hist);
                }
                if let (Some(v), true) = (r.itl_p50_us, r.itl_count > 0) {
                    lvl.itl_c
                        .record_n(v.max(1), u64::from(r.itl_count), level_hist);
                }
            }
        }
        let w = self.window_mut(t);
        w.requests += 1;
        w.prompt_tokens += u64::from(r.prompt_tokens);
        w.output_tokens += u64::from(r.output_tokens.unwrap_or(0));
        w.in_flight_sum += u64::from(r.in_flight_at_send);
        w.lateness_max_us = w.lateness_max_us.max(r.lateness_us);
        if let Some(kind) = r.error {
            w.errors[kind_index(kind)] += 1;
        } else {
            w.ok += 1;
            if let Some(v) = r.ttft_us {
                w.ttft_c.record(v, window_hist);
            }
            if let Some(v) = r.e2e_us {
                w.e2e_c.record(v, window_hist);
            }
            if let Some(v) = tpot {
                w.tpot_c.record(v, window_hist);
            }
            if let (Some(v), true) = (r.itl_p50_us, r.itl_count > 0) {
                w.itl_c
                    .record_n(v.max(1), u64::from(r.itl_count), window_hist);
            }
        }
    }

    /// Adds a batch of result rows: the same as [`Agg::push`] of each row, done column by
    /// column (a tight loop per histogram, over rows that share a window and a level).
    pub(crate) fn push_batch(&mut self, b: &Batch<'_>) {
        let ts = b.intended_send_us;
        let n = ts.len();
        if n == 0 {
            return;
        }
        let (tmin, tmax) = ts
            .iter()
            .fold((i64::MAX, i64::MIN), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        for &t in ts {
            self.count_second(t);
        }
        self.requests += n as u64;
        self.first_send_us = self.first_send_us.min(tmin);
        self.last_send_us = self.last_send_us.max(tmax);
        // Create the batch's windows up front (the same contiguous range rows would
        // create one by one), so that positions stay put while the batch is added.
        let _ = self.window_mut(tmin);
        let _ = self.window_mut(tmax);

        let error = b.error;
        for &p in b.prompt_tokens {
            self.prompt_tokens_total += u64::from(p);
            self.prompt_tokens_c.record(u64::from(p), run_hist);
        }
        for &f in b.in_flight_at_send {
            self.in_flight_c.record(u64::from(f), run_hist);
        }
        for &l in b.lateness_us {
            self.lateness_c.record(l.max(0) as u64, run_hist);
        }
        if error.is_empty() {
            self.ok += n as u64;
        } else {
            for &e in error {
                match e {
                    0 => self.ok += 1,
                    e => self.errors[usize::from(e) - 1] += 1,
                }
            }
        }
        self.client_side_errors += b.client_side_errors;
        for i in 0..n {
            if let Some(out) = b.output_tokens.get(i) {
                self.output_tokens_total += u64::from(out);
            }
        }
        each_ok(error, b.output_tokens, 0..n, |_, out| {
            self.output_tokens_c.record(u64::from(out), run_hist);
        });
        each_ok(error, b.ttft_us, 0..n, |i, v| {
            let bin = prompt_bin(b.prompt_tokens[i]);
            self.prompt_ttft_c[bin].record(v, run_hist);
        });
        if b.e2e_us.nulls.is_none() {
            for (&t, &e2e) in ts.iter().zip(b.e2e_us.values) {
                self.last_end_us = self.last_end_us.max(t.saturating_add(e2e as i64));
            }
        } else {
            for (i, &t) in ts.iter().enumerate() {
                if let Some(e2e) = b.e2e_us.get(i) {
                    self.last_end_us = self.last_end_us.max(t.saturating_add(e2e as i64));
                }
            }
        }

        // Runs of rows in one window and one level.
        let window_us = i128::from(self.window_us);
        let mut s = 0;
        while s < n {
            let idx = ts[s].div_euclid(self.window_us);
            let pos = usize::try_from(idx - self.base).unwrap_or(usize::MAX);
            // The window's [lo, hi] µs, clamped to i64 (no overflow at the extremes).
            let lo128 = i128::from(idx) * window_us;
            let lo = i64::try_from(lo128).unwrap_or(i64::MIN);
            let hi = i64::try_from(lo128 + window_us - 1).unwrap_or(i64::MAX);
            let level = b.level[s];
            let mut e = s + 1;
            while e < n && b.level[e] == level && ts[e] >= lo && ts[e] <= hi {
                e += 1;
            }
            self.push_run(b, s..e, pos, level as usize);
            s = e;
        }
    }

    /// Adds rows `range` of a batch, all in window `pos` and level `level`.
    fn push_run(&mut self, b: &Batch<'_>, range: std::ops::Range<usize>, pos: usize, level: usize) {
        let w = &mut self.windows[pos];
        let l = &mut self.levels[level];
        let len = (range.end - range.start) as u64;
        let ts = &b.intended_send_us[range.clone()];
        let error = b.error;
        w.requests += len;
        l.requests += len;
        for &t in ts {
            l.first_send_us = l.first_send_us.min(t);
            l.last_send_us = l.last_send_us.max(t);
        }
        for &p in &b.prompt_tokens[range.clone()] {
            w.prompt_tokens += u64::from(p);
        }
        let mut in_flight = 0u64;
        for &f in &b.in_flight_at_send[range.clone()] {
            in_flight += u64::from(f);
        }
        w.in_flight_sum += in_flight;
        l.in_flight_sum += in_flight;
        for &lat in &b.lateness_us[range.clone()] {
            w.lateness_max_us = w.lateness_max_us.max(lat);
        }
        for i in range.clone() {
            w.output_tokens += u64::from(b.output_tokens.get(i).unwrap_or(0));
        }
        each_ok(error, b.output_tokens, range.clone(), |_, out| {
            l.output_tokens += u64::from(out);
        });
        if error.is_empty() {
            w.ok += len;
            l.ok += len;
        } else {
            for &e in &error[range.clone()] {
                match e {
                    0 => {
                        w.ok += 1;
                        l.ok += 1;
                    }
                    e => {
                        w.errors[usize::from(e) - 1] += 1;
                        l.errors[usize::from(e) - 1] += 1;
                    }
                }
            }
        }
        each_ok(error, b.ttft_us, range.clone(), |_, v| {
            record_pair(&mut w.ttft_c, window_hist, &mut l.ttft_c, level_hist, v, 1);
        });
        let t0 = range.start;
        each_ok(error, b.e2e_us, range.clone(), |i, v| {
            record_pair(&mut w.e2e_c, window_hist, &mut l.e2e_c, level_hist, v, 1);
            l.last_end_us = l.last_end_us.max(ts[i - t0].saturating_add(v as i64));
        });
        each_ok(error, b.tpot_us, range.clone(), |_, v| {
            let v = tpot_value(v);
            record_pair(&mut w.tpot_c, window_hist, &mut l.tpot_c, level_hist, v, 1);
        });
        each_ok(error, b.itl_p50_us, range, |i, v| {
            let count = b.itl_count[i];
            if count > 0 {
                let n = u64::from(count);
                record_pair(
                    &mut w.itl_c,
                    window_hist,
                    &mut l.itl_c,
                    level_hist,
                    v.max(1),
                    n,
                );
            }
        });
    }

    /// Adds one sample.
    pub(crate) fn push_sample(
        &mut self,
        time_us: i64,
        source: SampleSource,
        name: &str,
        labels: &str,
        value: f64,
    ) {
        if !value.is_finite() {
            return;
        }
        self.samples += 1;
        match name {
            "queue_depth" | "waiting" | "num_requests_waiting" => {
                rec64(&mut self.queue_depth, value.round().max(0.0) as u64);
                self.window_mut(time_us).queue.add(value);
            }
            "running" | "num_requests_running" => self.window_mut(time_us).running.add(value),
            "kv_cache_usage" | "gpu_cache_usage_perc" => {
                // vLLM reports a fraction; accept a percentage too.
                let v = if value > 1.0 { value / 100.0 } else { value };
                self.kv_peak = Some(self.kv_peak.map_or(v, |p| p.max(v)));
                self.window_mut(time_us).kv.add(v);
            }
            "preemptions_total" | "num_preemptions_total" => {
                self.preemptions.add(value);
                self.window_mut(time_us).preemptions.add(value);
            }
            _ if MEMORY_NAMES.contains(&name) => {
                let idx = time_us.div_euclid(self.window_us);
                // Make sure the window exists so the time axis covers it.
                let _ = self.window_mut(time_us);
                self.memory
                    .entry((name.to_string(), labels.to_string(), source.as_str()))
                    .or_default()
                    .entry(idx)
                    .or_default()
                    .add(value);
            }
            _ => {}
        }
    }

    /// Merges another aggregate of the same run (another file read on another thread).
    pub(crate) fn merge(&mut self, other: Agg) {
        fn add_hist<T: hdrhistogram::Counter>(
            a: &mut Option<Histogram<T>>,
            b: Option<Histogram<T>>,
        ) {
            match (a.as_mut(), b) {
                (_, None) => {}
                (None, Some(b)) => *a = Some(b),
                (Some(a), Some(b)) => {
                    let _ = a.add(&b);
                }
            }
        }
        self.requests += other.requests;
        self.ok += other.ok;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.client_side_errors += other.client_side_errors;
        self.first_send_us = self.first_send_us.min(other.first_send_us);
        self.last_send_us = self.last_send_us.max(other.last_send_us);
        self.last_end_us = self.last_end_us.max(other.last_end_us);
        self.prompt_tokens_total += other.prompt_tokens_total;
        self.output_tokens_total += other.output_tokens_total;
        for (a, b) in [
            (&mut self.ttft, &other.ttft),
            (&mut self.tpot, &other.tpot),
            (&mut self.itl, &other.itl),
            (&mut self.e2e, &other.e2e),
            (&mut self.lateness, &other.lateness),
            (&mut self.prompt_tokens, &other.prompt_tokens),
            (&mut self.output_tokens, &other.output_tokens),
            (&mut self.in_flight, &other.in_flight),
            (&mut self.queue_depth, &other.queue_depth),
        ] {
            let _ = a.add(b);
        }
        self.kv_peak = match (self.kv_peak, other.kv_peak) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.preemptions.merge(&other.preemptions);
        for (a, b) in self.prompt_ttft.iter_mut().zip(other.prompt_ttft) {
            add_hist(a, b);
        }
        self.lateness_c.merge(other.lateness_c);
        self.prompt_tokens_c.merge(other.prompt_tokens_c);
        self.output_tokens_c.merge(other.output_tokens_c);
        self.in_flight_c.merge(other.in_flight_c);
        for (a, b) in self.prompt_ttft_c.iter_mut().zip(other.prompt_ttft_c) {
            a.merge(b);
        }
        for l in other.levels {
            let i = self.level(l.phase.as_deref(), l.load_level);
            let m = &mut self.levels[i];
            m.requests += l.requests;
            m.ok += l.ok;
            for (a, b) in m.errors.iter_mut().zip(l.errors) {
                *a += b;
            }
            m.first_send_us = m.first_send_us.min(l.first_send_us);
            m.last_send_us = m.last_send_us.max(l.last_send_us);
            m.last_end_us = m.last_end_us.max(l.last_end_us);
            m.output_tokens += l.output_tokens;
            m.in_flight_sum += l.in_flight_sum;
            let _ = m.ttft.add(&l.ttft);
            let _ = m.tpot.add(&l.tpot);
            let _ = m.itl.add(&l.itl);
            let _ = m.e2e.add(&l.e2e);
            m.ttft_c.merge(l.ttft_c);
            m.tpot_c.merge(l.tpot_c);
            m.itl_c.merge(l.itl_c);
            m.e2e_c.merge(l.e2e_c);
        }
        for (i, &c) in other.per_second.iter().enumerate() {
            if c > 0 {
                let sec_us = (other.sec_base + i as i64) * 1_000_000;
                self.count_second(sec_us);
                let pos = (sec_us / 1_000_000 - self.sec_base) as usize;
                // count_second added one; make it the other's count.
                self.per_second[pos] += c - 1;
            }
        }
        for (i, w) in other.windows.into_iter().enumerate() {
            if w.requests == 0 && w.queue.n == 0 && w.kv.n == 0 && w.running.n == 0 {
                continue;
            }
            let t = (other.base + i as i64) * other.window_us;
            let m = self.window_mut(t);
            m.requests += w.requests;
            m.ok += w.ok;
            for (a, b) in m.errors.iter_mut().zip(w.errors) {
                *a += b;
            }
            m.prompt_tokens += w.prompt_tokens;
            m.output_tokens += w.output_tokens;
            add_hist(&mut m.ttft, w.ttft);
            add_hist(&mut m.tpot, w.tpot);
            add_hist(&mut m.itl, w.itl);
            add_hist(&mut m.e2e, w.e2e);
            m.ttft_c.merge(w.ttft_c);
            m.tpot_c.merge(w.tpot_c);
            m.itl_c.merge(w.itl_c);
            m.e2e_c.merge(w.e2e_c);
            m.in_flight_sum += w.in_flight_sum;
            m.lateness_max_us = m.lateness_max_us.max(w.lateness_max_us);
            m.queue.merge(&w.queue);
            m.running.merge(&w.running);
            m.kv.merge(&w.kv);
            m.preemptions.merge(&w.preemptions);
        }
        for (key, series) in other.memory {
            let mine = self.memory.entry(key).or_default();
            for (idx, acc) in series {
                mine.entry(idx).or_default().merge(&acc);
            }
        }
        self.samples += other.samples;
    }

    /// Builds the whole-run latency histograms from the per-level ones. Call once, after
    /// every row (and merge) is in.
    pub(crate) fn finish(&mut self) {
        use std::mem::take;
        take(&mut self.lateness_c).add_into(&mut self.lateness);
        take(&mut self.prompt_tokens_c).add_into(&mut self.prompt_tokens);
        take(&mut self.output_tokens_c).add_into(&mut self.output_tokens);
        take(&mut self.in_flight_c).add_into(&mut self.in_flight);
        for (h, c) in self.prompt_ttft.iter_mut().zip(&mut self.prompt_ttft_c) {
            if let Some(built) = take(c).into_hist(run_hist) {
                match h {
                    Some(h) => {
                        let _ = h.add(&built);
                    }
                    None => *h = Some(built),
                }
            }
        }
        for w in &mut self.windows {
            for (h, c) in [
                (&mut w.ttft, &mut w.ttft_c),
                (&mut w.tpot, &mut w.tpot_c),
                (&mut w.itl, &mut w.itl_c),
                (&mut w.e2e, &mut w.e2e_c),
            ] {
                if let Some(built) = take(c).into_hist(window_hist) {
                    match h {
                        Some(h) => {
                            let _ = h.add(&built);
                        }
                        None => *h = Some(built),
                    }
                }
            }
        }
        for l in &mut self.levels {
            take(&mut l.ttft_c).add_into(&mut l.ttft);
            take(&mut l.tpot_c).add_into(&mut l.tpot);
            take(&mut l.itl_c).add_into(&mut l.itl);
            take(&mut l.e2e_c).add_into(&mut l.e2e);
        }
        let mut ttft = level_hist();
        let mut tpot = level_hist();
        let mut itl = level_hist();
        let mut e2e = level_hist();
        for l in &self.levels {
            let _ = ttft.add(&l.ttft);
            let _ = tpot.add(&l.tpot);
            let _ = itl.add(&l.itl);
            let _ = e2e.add(&l.e2e);
        }
        self.ttft = ttft;
        self.tpot = tpot;
        self.itl = itl;
        self.e2e = e2e;
    }

    /// Start time (µs) of window `pos`.
    pub(crate) fn window_start_us(&self, pos: usize) -> i64 {
        (self.base + pos as i64) * self.window_us
    }

    /// Earliest time seen (first send, or first window when only samples exist).
    pub(crate) fn start_us(&self) -> i64 {
        if self.requests > 0 {
            self.first_send_us
        } else {
            self.window_start_us(0)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn prompt_bins_are_monotonic_quarter_doublings() {
        let mut last = 0;
        for t in [0u32, 1, 2, 3, 10, 100, 1000, 4000, 100_000, u32::MAX] {
            let b = prompt_bin(t);
            assert!(b >= last, "{t} -> {b}");
            assert!(b < PROMPT_BINS);
            last = b;
        }
        assert!(prompt_bin(1000) > prompt_bin(700));
        let b = prompt_bin(1000);
        assert!(prompt_bin_low(b) <= 1000.0 && prompt_bin_low(b + 1) > 1000.0);
    }

    #[test]
    fn windows_grow_both_ways() {
        let mut agg = Agg::new(60_000_000);
        let lvl = agg.level(None, 1.0);
        for t in [120_000_000i64, 0, 600_000_000] {
            agg.push(&Rec {
                intended_send_us: t,
                level: lvl,
                ttft_us: Some(1000),
                ..Rec::default()
            });
        }
        assert_eq!(agg.windows.len(), 11);
        assert_eq!(agg.per_second.iter().filter(|&&c| c > 0).count(), 3);
        assert_eq!(agg.base, 0);
        assert_eq!(agg.windows[2].requests, 1);
        assert_eq!(agg.windows[10].requests, 1);
        assert_eq!(agg.requests, 3);
    }
}

#[cfg(test)]
mod cache_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The cached window and second lookups give what the division gives, whatever the
    /// order of the rows (back and forth across window, second and sign boundaries).
    #[test]
    fn cached_lookups_match_division_in_any_order() {
        let window_us = 7_000_000;
        let mut agg = Agg::new(window_us);
        let lvl = agg.level(None, 1.0);
        let mut times = Vec::new();
        let mut x = 12345u64;
        for _ in 0..5_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Mostly forward in small steps, sometimes a jump back or across zero.
            let t = match x >> 60 {
                0 => -((x >> 20) as i64 % 50_000_000),
                1 => (x >> 20) as i64 % 90_000_000,
                _ => times.last().copied().unwrap_or(0) + (x >> 40) as i64 % 400_000,
            };
            times.push(t);
            agg.push(&Rec {
                intended_send_us: t,
                level: lvl,
                ttft_us: Some(1000),
                ..Rec::default()
            });
        }
        let mut per_window = BTreeMap::new();
        let mut per_second = BTreeMap::new();
        for &t in &times {
            *per_window.entry(t.div_euclid(window_us)).or_insert(0u64) += 1;
            *per_second.entry(t.div_euclid(1_000_000)).or_insert(0u32) += 1;
        }
        for (idx, n) in per_window {
            assert_eq!(
                agg.windows[(idx - agg.base) as usize].requests,
                n,
                "window {idx}"
            );
        }
        for (sec, n) in per_second {
            assert_eq!(
                agg.per_second[(sec - agg.sec_base) as usize],
                n,
                "second {sec}"
            );
        }
        assert_eq!(
            agg.per_second.iter().map(|&c| u64::from(c)).sum::<u64>(),
            5_000
        );
    }
}

#[cfg(test)]
mod level_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_continuous_ramp_is_bucketed_into_few_levels() {
        let mut agg = Agg::new(60_000_000);
        for i in 0..100_000u32 {
            // A ramp from 0 to 2: every request has its own load level.
            let level = agg.level(Some("ramp"), f64::from(i) / 50_000.0);
            agg.push(&Rec {
                intended_send_us: i64::from(i) * 10_000,
                level,
                ttft_us: Some(1000 + u64::from(i)),
                ..Rec::default()
            });
        }
        assert_eq!(agg.levels.len(), 41);
        assert_eq!(agg.levels.iter().map(|l| l.requests).sum::<u64>(), 100_000);
        agg.finish();
        assert_eq!(agg.ttft.len(), 100_000);
    }
}
