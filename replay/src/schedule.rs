//! The schedule: a pure, deterministic function of (trace rows, configuration, seed) to a
//! time-ordered sequence of planned requests. Nothing here reads a clock or does I/O, so
//! the same inputs always give the same schedule (property-tested below).
//!
//! The pipeline, in "trace time" τ (µs since the first arrival):
//! 1. base arrivals — the trace's own offsets (idle gaps capped by `max_gap`), overlaid
//!    `amplify` times with seeded random rotations, looped when the run has a fixed length;
//!    or, with `rate`, a Poisson / gamma renewal process whose rows are sampled whole
//!    from the trace (keeping the joint distribution of prompt and output lengths);
//! 2. a time warp τ → t by `speed` × the profile's load level L(t): the run's offered rate
//!    at t is the base rate × speed × L(t), and bursts keep their shape;
//! 3. end conditions (`duration`, the profile's end, the generated count), the shard
//!    filter, then `max_requests`.

use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Gamma};

use crate::shape::{Profile, Segment, Shard};
use retrace_traces::{Endpoint, RequestRow};

/// One request of the trace, reduced to what replay needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRequest {
    /// The trace's request id.
    pub request_id: String,
    /// The trace's session id.
    pub session_id: Option<String>,
    /// Arrival, UTC µs.
    pub arrival_us: i64,
    /// Which API it used.
    pub endpoint: Endpoint,
    /// Whether it streamed.
    pub stream: bool,
    /// Prompt length in tokens.
    pub prompt_tokens: u32,
    /// Output length to force (recorded output tokens, else `max_tokens`).
    pub output_tokens: u32,
    /// Chained prefix block hashes.
    pub prefix_hashes: Vec<u64>,
}

/// Errors of building a schedule.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The trace had no rows.
    #[error("the trace has no requests")]
    EmptyTrace,
    /// A row cannot be replayed.
    #[error("trace row {index} (request_id `{request_id}`): {message}")]
    BadRow {
        /// 0-based index in merged time order.
        index: usize,
        /// Its request id.
        request_id: String,
        /// What was wrong.
        message: String,
    },
    /// Options that do not go together, or out of range.
    #[error("{0}")]
    BadConfig(String),
}

impl TraceRequest {
    /// Converts a trace row; rows without a prompt length cannot be replayed.
    pub fn from_row(index: usize, row: RequestRow) -> Result<TraceRequest, ScheduleError> {
        let bad = |message: &str| ScheduleError::BadRow {
            index,
            request_id: row.request_id.clone(),
            message: message.to_string(),
        };
        let prompt_tokens = row
            .prompt_tokens
            .ok_or_else(|| bad("field `prompt_tokens` is missing"))?;
        let output_tokens = row
            .output_tokens
            .or(row.max_tokens)
            .ok_or_else(|| bad("neither `output_tokens` nor `max_tokens` is set"))?
            .max(1);
        Ok(TraceRequest {
            request_id: row.request_id,
            session_id: row.session_id,
            arrival_us: row.arrival_us,
            endpoint: row.endpoint,
            stream: row.stream,
            prompt_tokens,
            output_tokens,
            prefix_hashes: row.prefix_hashes,
        })
    }
}

/// How to shape the load (all validated).
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    /// Time compression (2.0 = twice as fast).
    pub speed: f64,
    /// Overlaid copies of the trace (1 = just the trace).
    pub amplify: u32,
    /// Resample arrivals at this rate (requests/s, before speed and profile).
    pub rate: Option<f64>,
    /// Coefficient of variation of inter-arrival gaps with `rate` (1.0 = Poisson).
    pub burstiness_cv: Option<f64>,
    /// Load profile over the run.
    pub profile: Option<Profile>,
    /// Override every prompt to this many tokens.
    pub long_context_tokens: Option<u32>,
    /// Stop planning at this offset (target time).
    pub duration: Option<Duration>,
    /// Stop after this many requests (after sharding).
    pub max_requests: Option<u64>,
    /// Cap idle gaps of the trace at this.
    pub max_gap: Option<Duration>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Keep only this shard's part.
    pub shard: Option<Shard>,
    /// Closed loop: offsets are ignored by the runner, so `duration` does not cut the
    /// schedule (it only makes the trace loop); the runner stops on time itself.
    pub closed_loop: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            speed: 1.0,
            amplify: 1,
            rate: None,
            burstiness_cv: None,
            profile: None,
            long_context_tokens: None,
            duration: None,
            max_requests: None,
            max_gap: None,
            seed: 0,
            shard: None,
            closed_loop: false,
        }
    }
}

/// One planned request.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// When to send it, µs after the run's start, in the target's time.
    pub offset_us: u64,
    /// Index of its trace row.
    pub row: usize,
    /// Request id to send (the trace's, with `#copyK`, `#loopN` or `#sJ` when derived).
    pub request_id: String,
    /// Session id (derived the same way).
    pub session_id: Option<String>,
    /// Prompt tokens to send.
    pub prompt_tokens: u32,
    /// Output tokens to force.
    pub max_tokens: u32,
    /// Phase of the profile, if any.
    pub phase: Option<Arc<str>>,
    /// Offered load relative to the trace's own rate at this moment.
    pub load_level: f64,
}

/// FNV-1a: a stable hash (std's hasher may change between Rust versions, and every shard
/// must agree on the partition).
pub fn stable_hash(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Builds the schedule. `rows` must be in arrival order (as `read_rows` merges them).
pub fn schedule(
    rows: Arc<[TraceRequest]>,
    config: &ScheduleConfig,
) -> Result<Schedule, ScheduleError> {
    if rows.is_empty() {
        return Err(ScheduleError::EmptyTrace);
    }
    if !(config.speed.is_finite() && config.speed > 0.0) {
        return Err(ScheduleError::BadConfig("--speed must be > 0".into()));
    }
    if config.amplify == 0 {
        return Err(ScheduleError::BadConfig("--amplify must be ≥ 1".into()));
    }
    if let Some(cv) = config.burstiness_cv {
        if !(cv.is_finite() && cv > 0.0) {
            return Err(ScheduleError::BadConfig("--burstiness must be > 0".into()));
        }
        if config.rate.is_none() {
            return Err(ScheduleError::BadConfig("--burstiness needs --rate".into()));
        }
    }
    // Trace offsets with idle gaps capped.
    let max_gap_us = config.max_gap.map(|d| d.as_micros() as f64);
    let mut offsets_us = Vec::with_capacity(rows.len());
    let mut previous = rows[0].arrival_us;
    let mut acc = 0.0f64;
    for (i, row) in rows.iter().enumerate() {
        if row.arrival_us < previous {
            return Err(ScheduleError::BadRow {
                index: i,
                request_id: row.request_id.clone(),
                message: "arrivals are not in time order".into(),
            });
        }
        let mut gap = (row.arrival_us - previous) as f64;
        if let Some(cap) = max_gap_us {
            gap = gap.min(cap);
        }
        acc += gap;
        offsets_us.push(acc);
        previous = row.arrival_us;
    }
    let span_us = acc;
    let n = rows.len();
    let mean_gap_us = if n > 1 && span_us > 0.0 {
        span_us / (n - 1) as f64
    } else {
        1e6
    };
    let period_us = span_us + mean_gap_us;
    let native_rate = 1e6 / mean_gap_us;

    let segments = config.profile.as_ref().map(|p| p.segments());
    let profile_end = config.profile.as_ref().is_some_and(|p| p.has_end());
    let looping = profile_end || config.duration.is_some();
    let mut rng = rand::rngs::StdRng::seed_from_u64(config.seed);

    let base = match config.rate {
        None => {
            let shifts: Vec<f64> = (0..config.amplify)
                .map(|k| {
                    if k == 0 {
                        0.0
                    } else {
                        rng.random_range(0.0..period_us)
                    }
                })
                .collect();
            Base::Trace(TraceBase {
                offsets_us,
                shifts,
                period_us,
                looping,
                loop_no: 0,
                started: false,
                batch: Vec::new(),
                next: 0,
            })
        }
        Some(rate) => {
            let rate = rate * f64::from(config.amplify);
            let mean_us = 1e6 / rate;
            let gaps = match config.burstiness_cv {
                None => Gaps::Exp(
                    Exp::new(1.0 / mean_us).map_err(|e| ScheduleError::BadConfig(e.to_string()))?,
                ),
                Some(cv) => {
                    let shape = 1.0 / (cv * cv);
                    Gaps::Gamma(
                        Gamma::new(shape, mean_us / shape)
                            .map_err(|e| ScheduleError::BadConfig(e.to_string()))?,
                    )
                }
            };
            let limit = if looping {
                None
            } else {
                Some(n as u64 * u64::from(config.amplify))
            };
            Base::Rate {
                gaps,
                tau_us: 0.0,
                made: 0,
                limit,
                rate,
            }
        }
    };
    let base_level = match (&base, config.rate) {
        (_, Some(rate)) => config.speed * rate * f64::from(config.amplify) / native_rate,
        _ => config.speed * f64::from(config.amplify),
    };
    Ok(Schedule {
        rows,
        rng,
        base,
        warp: Warp {
            segments,
            index: 0,
            w_before: 0.0,
            speed: config.speed,
        },
        base_level,
        duration_us: if config.closed_loop {
            None
        } else {
            config.duration.map(|d| d.as_micros() as f64)
        },
        max_requests: config.max_requests,
        emitted: 0,
        shard: config.shard,
        long_context_tokens: config.long_context_tokens,
        phases: Vec::new(),
        done: false,
    })
}

enum Gaps {
    Exp(Exp<f64>),
    Gamma(Gamma<f64>),
}

struct TraceBase {
    offsets_us: Vec<f64>,
    shifts: Vec<f64>,
    period_us: f64,
    looping: bool,
    loop_no: u64,
    started: bool,
    /// (τ, copy, row) of the current loop, sorted.
    batch: Vec<(f64, u32, usize)>,
    next: usize,
}

enum Base {
    Trace(TraceBase),
    Rate {
        gaps: Gaps,
        tau_us: f64,
        made: u64,
        limit: Option<u64>,
        rate: f64,
    },
}

/// A base event: τ, row, and the id suffix.
struct Event {
    tau_us: f64,
    row: usize,
    suffix: String,
    session_suffix: bool,
}

/// The inverse of W(t) = speed × ∫₀ᵗ L(s) ds, walked forward (τ only grows).
struct Warp {
    segments: Option<Vec<Segment>>,
    index: usize,
    w_before: f64,
    speed: f64,
}

impl Warp {
    /// Maps τ to (t, level, phase index); None when past the profile's end.
    fn map(&mut self, tau_us: f64) -> Option<(f64, f64, Option<usize>)> {
        let Some(segments) = &self.segments else {
            return Some((tau_us / self.speed, 1.0, None));
        };
        loop {
            let seg = segments.get(self.index)?;
            let length = seg.end_us - seg.start_us;
            let remaining = tau_us - self.w_before;
            let seg_w = if length.is_finite() {
                self.speed * (seg.from + seg.to) / 2.0 * length
            } else {
                f64::INFINITY
            };
            if remaining < seg_w || (remaining == seg_w && !length.is_finite()) {
                let c1 = self.speed * seg.from;
                let c2 = if length.is_finite() {
                    self.speed * (seg.to - seg.from) / (2.0 * length)
                } else {
                    0.0
                };
                // Stable root of c2·x² + c1·x − r = 0 for either sign of c2.
                let disc = (c1 * c1 + 4.0 * c2 * remaining).max(0.0);
                let denom = c1 + disc.sqrt();
                let x = if denom > 0.0 {
                    2.0 * remaining / denom
                } else {
                    0.0
                };
                let x = if length.is_finite() { x.min(length) } else { x };
                let level = if length.is_finite() {
                    seg.from + (seg.to - seg.from) * x / length
                } else {
                    seg.from
                };
                return Some((seg.start_us + x, level, Some(self.index)));
            }
            self.w_before += seg_w;
            self.index += 1;
        }
    }
}

/// The planned requests, lazily, in send order.
pub struct Schedule {
    rows: Arc<[TraceRequest]>,
    rng: rand::rngs::StdRng,
    base: Base,
    warp: Warp,
    base_level: f64,
    duration_us: Option<f64>,
    max_requests: Option<u64>,
    emitted: u64,
    shard: Option<Shard>,
    long_context_tokens: Option<u32>,
    phases: Vec<Arc<str>>,
    done: bool,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("emitted", &self.emitted)
            .finish_non_exhaustive()
    }
}

impl Schedule {
    /// The trace rows the schedule indexes into.
    pub fn rows(&self) -> &Arc<[TraceRequest]> {
        &self.rows
    }

    fn next_base(&mut self) -> Option<Event> {
        match &mut self.base {
            Base::Trace(tb) => {
                if tb.next >= tb.batch.len() {
                    if tb.started {
                        if !tb.looping {
                            return None;
                        }
                        tb.loop_no += 1;
                    }
                    tb.started = true;
                    let loop_base = tb.loop_no as f64 * tb.period_us;
                    tb.batch.clear();
                    for (copy, shift) in tb.shifts.iter().enumerate() {
                        for (row, off) in tb.offsets_us.iter().enumerate() {
                            let tau = (off + shift) % tb.period_us + loop_base;
                            tb.batch.push((tau, copy as u32, row));
                        }
                    }
                    tb.batch.sort_by(|a, b| {
                        a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2))
                    });
                    tb.next = 0;
                }
                let (tau_us, copy, row) = tb.batch[tb.next];
                tb.next += 1;
                let mut suffix = String::new();
                if copy > 0 {
                    suffix.push_str(&format!("#copy{copy}"));
                }
                if tb.loop_no > 0 {
                    suffix.push_str(&format!("#loop{}", tb.loop_no));
                }
                Some(Event {
                    tau_us,
                    row,
                    suffix,
                    session_suffix: true,
                })
            }
            Base::Rate {
                gaps,
                tau_us,
                made,
                limit,
                ..
            } => {
                if limit.is_some_and(|l| *made >= l) {
                    return None;
                }
                let gap = match gaps {
                    Gaps::Exp(d) => d.sample(&mut self.rng),
                    Gaps::Gamma(d) => d.sample(&mut self.rng),
                };
                // The first request goes at 0; later ones after a sampled gap.
                if *made > 0 {
                    *tau_us += gap;
                }
                let row = self.rng.random_range(0..self.rows.len());
                let event = Event {
                    tau_us: *tau_us,
                    row,
                    suffix: format!("#s{made}"),
                    session_suffix: false,
                };
                *made += 1;
                Some(event)
            }
        }
    }
}

impl Iterator for Schedule {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if self.done || self.max_requests.is_some_and(|m| self.emitted >= m) {
            return None;
        }
        loop {
            let Some(event) = self.next_base() else {
                self.done = true;
                return None;
            };
            let Some((t_us, level, phase_index)) = self.warp.map(event.tau_us) else {
                self.done = true;
                return None;
            };
            if self.duration_us.is_some_and(|d| t_us >= d) {
                self.done = true;
                return None;
            }
            let row = &self.rows[event.row];
            let request_id = format!("{}{}", row.request_id, event.suffix);
            let session_id = row.session_id.as_ref().map(|s| {
                if event.session_suffix {
                    format!("{s}{}", event.suffix)
                } else {
                    s.clone()
                }
            });
            if let Some(shard) = self.shard {
                let key = session_id.as_deref().unwrap_or(&request_id);
                if stable_hash(key) % u64::from(shard.count) != u64::from(shard.index) {
                    continue;
                }
            }
            let phase = match (phase_index, &self.warp.segments) {
                (Some(i), Some(segments)) => {
                    while self.phases.len() <= i {
                        let name: Arc<str> = segments[self.phases.len()].phase.as_str().into();
                        self.phases.push(name);
                    }
                    Some(self.phases[i].clone())
                }
                _ => None,
            };
            self.emitted += 1;
            return Some(Planned {
                offset_us: t_us.max(0.0).round() as u64,
                row: event.row,
                request_id,
                session_id,
                prompt_tokens: self.long_context_tokens.unwrap_or(row.prompt_tokens),
                max_tokens: row.output_tokens,
                phase,
                load_level: self.base_level * level,
            });
        }
    }
}

/// The rate (requests per second of trace time) a rate-mode base runs at; for tests.
#[doc(hidden)]
pub fn base_rate(schedule: &Schedule) -> Option<f64> {
    match &schedule.base {
        Base::Rate { rate, .. } => Some(*rate),
        Base::Trace(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn trace(arrivals_us: &[i64]) -> Arc<[TraceRequest]> {
        arrivals_us
            .iter()
            .enumerate()
            .map(|(i, &a)| TraceRequest {
                request_id: format!("r{i}"),
                session_id: (i % 3 == 0).then(|| format!("s{}", i % 7)),
                arrival_us: a,
                endpoint: Endpoint::Chat,
                stream: true,
                prompt_tokens: 100 + i as u32,
                output_tokens: 10 + i as u32,
                prefix_hashes: vec![],
            })
            .collect()
    }

    fn sorted_trace(mut gaps: Vec<i64>) -> Arc<[TraceRequest]> {
        let mut t = 1_700_000_000_000_000i64;
        let arrivals: Vec<i64> = gaps
            .iter_mut()
            .map(|g| {
                t += *g;
                t
            })
            .collect();
        trace(&arrivals)
    }

    fn all(rows: &Arc<[TraceRequest]>, config: &ScheduleConfig) -> Vec<Planned> {
        schedule(rows.clone(), config).unwrap().collect()
    }

    #[test]
    fn one_x_keeps_the_trace_inter_arrivals() {
        let rows = trace(&[1_000_000, 1_000_500, 1_250_000, 3_000_000]);
        let plan = all(&rows, &ScheduleConfig::default());
        let offsets: Vec<u64> = plan.iter().map(|p| p.offset_us).collect();
        assert_eq!(offsets, vec![0, 500, 250_000, 2_000_000]);
        assert_eq!(plan[2].request_id, "r2");
        assert_eq!(plan[2].max_tokens, 12);
        assert_eq!(plan[0].load_level, 1.0);
    }

    #[test]
    fn speed_and_max_gap() {
        let rows = trace(&[0, 1_000_000, 61_000_000]);
        let config = ScheduleConfig {
            speed: 2.0,
            max_gap: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        let plan = all(&rows, &config);
        assert_eq!(
            plan.iter().map(|p| p.offset_us).collect::<Vec<_>>(),
            vec![0, 500_000, 5_500_000]
        );
        assert_eq!(plan[0].load_level, 2.0);
    }

    #[test]
    fn steps_profile_labels_phases_and_levels() {
        let rows = trace(&(0..100).map(|i| i * 100_000).collect::<Vec<_>>()); // 10 rps
        let config = ScheduleConfig {
            profile: Some(Profile::Steps {
                levels: vec![0.5, 1.0, 2.0],
                step: Duration::from_secs(10),
            }),
            ..Default::default()
        };
        let plan = all(&rows, &config);
        let count = |phase: &str| {
            plan.iter()
                .filter(|p| p.phase.as_deref() == Some(phase))
                .count()
        };
        // 10 s each at 5, 10 and 20 rps (the trace loops to fill the profile).
        assert!((49..=51).contains(&count("step-1")), "{}", count("step-1"));
        assert!((99..=101).contains(&count("step-2")), "{}", count("step-2"));
        assert!(
            (199..=201).contains(&count("step-3")),
            "{}",
            count("step-3")
        );
        assert!(plan.iter().all(|p| p.offset_us < 30_000_000));
        let step3 = plan
            .iter()
            .find(|p| p.phase.as_deref() == Some("step-3"))
            .unwrap();
        assert_eq!(step3.load_level, 2.0);
        assert!(plan.iter().any(|p| p.request_id.ends_with("#loop1")));
    }

    #[test]
    fn ramp_rises() {
        let rows = trace(&(0..100).map(|i| i * 100_000).collect::<Vec<_>>());
        let config = ScheduleConfig {
            profile: Some(Profile::Ramp {
                from: 0.0,
                to: 2.0,
                over: Duration::from_secs(20),
            }),
            ..Default::default()
        };
        let plan = all(&rows, &config);
        // ∫ of 0→2 over 20 s at 10 rps = 200 requests; ¼ of them in the first half.
        assert!((198..=202).contains(&plan.len()), "{}", plan.len());
        let first_half = plan.iter().filter(|p| p.offset_us < 10_000_000).count();
        assert!((48..=52).contains(&first_half), "{first_half}");
    }

    #[test]
    fn spike_triples_the_rate_for_its_window() {
        let rows = trace(&(0..600).map(|i| i * 100_000).collect::<Vec<_>>()); // 60 s at 10 rps
        let config = ScheduleConfig {
            profile: Some(Profile::Spike {
                base: 1.0,
                peak: 3.0,
                at: Duration::from_secs(10),
                length: Duration::from_secs(5),
            }),
            ..Default::default()
        };
        let plan = all(&rows, &config);
        let spike = plan
            .iter()
            .filter(|p| p.phase.as_deref() == Some("spike"))
            .count();
        assert!((149..=151).contains(&spike), "{spike}");
        assert_eq!(plan.len(), 600, "no looping without an end");
        assert!(plan.iter().any(|p| p.phase.as_deref() == Some("recovery")));
    }

    #[test]
    fn rate_mode_resamples_whole_rows() {
        let rows = trace(&(0..50).map(|i| i * 1_000_000).collect::<Vec<_>>());
        let config = ScheduleConfig {
            rate: Some(100.0),
            duration: Some(Duration::from_secs(100)),
            seed: 7,
            ..Default::default()
        };
        let plan = all(&rows, &config);
        // Poisson with mean 10 000: within 5 σ.
        assert!((9_500..=10_500).contains(&plan.len()), "{}", plan.len());
        for p in &plan {
            let row = &rows[p.row];
            assert_eq!(
                (p.prompt_tokens, p.max_tokens),
                (row.prompt_tokens, row.output_tokens)
            );
        }
        let gamma = ScheduleConfig {
            burstiness_cv: Some(3.0),
            ..config.clone()
        };
        let bursty = all(&rows, &gamma);
        let gaps: Vec<f64> = bursty
            .windows(2)
            .map(|w| (w[1].offset_us - w[0].offset_us) as f64)
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!(sd / mean > 2.0, "cv {}", sd / mean);
    }

    #[test]
    fn bad_inputs_are_named() {
        assert!(matches!(
            schedule(trace(&[]), &ScheduleConfig::default()),
            Err(ScheduleError::EmptyTrace)
        ));
        let err = schedule(trace(&[5, 3]), &ScheduleConfig::default()).unwrap_err();
        assert!(err.to_string().contains("r1"), "{err}");
        let err = schedule(
            trace(&[1]),
            &ScheduleConfig {
                burstiness_cv: Some(1.0),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("--rate"));
    }

    fn arb_config() -> impl Strategy<Value = ScheduleConfig> {
        (
            1u32..4,
            0.25f64..4.0,
            any::<u64>(),
            proptest::option::of(1u64..50),
            proptest::bool::ANY,
            proptest::option::of(0.5f64..50.0),
        )
            .prop_map(
                |(amplify, speed, seed, max_requests, gap, rate)| ScheduleConfig {
                    amplify,
                    speed,
                    seed,
                    max_requests,
                    max_gap: gap.then(|| Duration::from_millis(300)),
                    rate,
                    ..Default::default()
                },
            )
    }

    proptest! {
        #[test]
        fn monotone_exact_and_reproducible(gaps in proptest::collection::vec(0i64..2_000_000, 1..60), config in arb_config()) {
            let rows = sorted_trace(gaps);
            let a = all(&rows, &config);
            prop_assert!(a.windows(2).all(|w| w[0].offset_us <= w[1].offset_us));
            let expected = (rows.len() as u64 * u64::from(config.amplify)).min(config.max_requests.unwrap_or(u64::MAX));
            prop_assert_eq!(a.len() as u64, expected);
            let b = all(&rows, &config);
            prop_assert_eq!(&a, &b);
            let ids: std::collections::BTreeSet<_> = a.iter().map(|p| p.request_id.clone()).collect();
            prop_assert_eq!(ids.len(), a.len(), "request ids are unique");
        }

        #[test]
        fn shards_partition_the_whole(gaps in proptest::collection::vec(0i64..2_000_000, 1..60), amplify in 1u32..3, count in 1u32..5, seed in any::<u64>()) {
            let rows = sorted_trace(gaps);
            let config = ScheduleConfig { amplify, seed, ..Default::default() };
            let whole = all(&rows, &config);
            let mut union = Vec::new();
            for index in 0..count {
                let part = all(&rows, &ScheduleConfig { shard: Some(Shard { index, count }), ..config.clone() });
                // Each session lives in one shard.
                for p in &part {
                    if let Some(s) = &p.session_id {
                        prop_assert_eq!(stable_hash(s) % u64::from(count), u64::from(index));
                    }
                }
                union.extend(part);
            }
            union.sort_by(|a, b| a.offset_us.cmp(&b.offset_us).then(a.request_id.cmp(&b.request_id)));
            let mut whole_sorted = whole.clone();
            whole_sorted.sort_by(|a, b| a.offset_us.cmp(&b.offset_us).then(a.request_id.cmp(&b.request_id)));
            prop_assert_eq!(union, whole_sorted);
        }

        #[test]
        fn amplify_multiplies_the_rate_over_the_same_span(gaps in proptest::collection::vec(1i64..1_000_000, 20..60), amplify in 2u32..4, seed in any::<u64>()) {
            let rows = sorted_trace(gaps);
            let one = all(&rows, &ScheduleConfig::default());
            let many = all(&rows, &ScheduleConfig { amplify, seed, ..Default::default() });
            prop_assert_eq!(many.len(), one.len() * amplify as usize);
            let span_one = one.last().unwrap().offset_us;
            let mean_gap = span_one / (one.len() as u64 - 1);
            // Rotations wrap within one period (span + one mean gap).
            prop_assert!(many.last().unwrap().offset_us <= span_one + mean_gap);
        }
    }
}
