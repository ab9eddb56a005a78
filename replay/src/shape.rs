//! Parsers of the load-shape values of `retrace replay`: durations (`30m`), factors
//! (`2`, `2x`, `200%`), rates (`20/s`), shards (`1/4`) and profiles
//! (`ramp:0%..200%/30m`, `spike:100%,300%@10m/2m`, `soak:80%/2h`,
//! `steps:50%,100%,150%/5m`). Each returns a message naming what was wrong; clap shows
//! it with the flag.

use std::time::Duration;

pub use retrace_traces::units::parse_duration;

/// Parses a positive factor: `2`, `2x`, `0.5x` or `200%`.
pub fn parse_factor(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = if let Some(pct) = t.strip_suffix('%') {
        pct.trim().parse::<f64>().map(|v| v / 100.0)
    } else {
        t.trim_end_matches(['x', 'X']).trim().parse::<f64>()
    }
    .map_err(|_| format!("`{text}` is not a factor (expected e.g. 2, 2x or 200%)"))?;
    if !value.is_finite() || value <= 0.0 || value > 1e6 {
        return Err(format!("`{text}`: the factor must be > 0"));
    }
    Ok(value)
}

/// Parses a load level that may be zero (profiles): `0%`, `150%`, `1.5x`, `1.5`.
fn parse_level(text: &str) -> Result<f64, String> {
    if text
        .trim()
        .trim_end_matches(['%', 'x', 'X'])
        .trim()
        .parse::<f64>()
        == Ok(0.0)
    {
        return Ok(0.0);
    }
    parse_factor(text)
}

/// Parses a request rate: `20/s`, `20`, `1200/m`, `5/h` → requests per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, per_s) = match t.split_once('/') {
        None => (t, 1.0),
        Some((n, unit)) => {
            let per = match unit.trim() {
                "s" => 1.0,
                "m" | "min" => 1.0 / 60.0,
                "h" => 1.0 / 3600.0,
                other => {
                    return Err(format!(
                        "`{text}`: unknown rate unit `/{other}` (use /s, /m or /h)"
                    ))
                }
            };
            (n, per)
        }
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a rate (expected e.g. 20/s)"))?;
    let rps = value * per_s;
    if !rps.is_finite() || rps <= 0.0 || rps > 1e7 {
        return Err(format!("`{text}`: the rate must be > 0"));
    }
    Ok(rps)
}

/// One shard of a distributed replay: this replayer is `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This replayer's index, `0..count`.
    pub index: u32,
    /// Number of replayers.
    pub count: u32,
}

/// Parses `i/N` (0-based index).
pub fn parse_shard(text: &str) -> Result<Shard, String> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}` is not a shard (expected i/N, e.g. 0/4)"))?;
    let index: u32 = i
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: bad shard index `{i}`"))?;
    let count: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{text}`: bad shard count `{n}`"))?;
    if count == 0 || index >= count {
        return Err(format!(
            "`{text}`: the index must be in 0..{count} (0-based)"
        ));
    }
    Ok(Shard { index, count })
}

/// A load profile: how the offered load (relative to the trace's own rate) moves over the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Profile {
    /// Linear ramp from `from` to `to` over `over`; the run ends at `over`.
    Ramp {
        /// Starting level (1.0 = as recorded).
        from: f64,
        /// Final level.
        to: f64,
        /// Length of the ramp.
        over: Duration,
    },
    /// `base` level, then `peak` for `length` starting at `at`, then `base` again.
    Spike {
        /// Level outside the spike.
        base: f64,
        /// Level during the spike.
        peak: f64,
        /// When the spike starts.
        at: Duration,
        /// How long it lasts.
        length: Duration,
    },
    /// Constant `level` for `length`, looping the trace as needed.
    Soak {
        /// The level.
        level: f64,
        /// How long.
        length: Duration,
    },
    /// Successive steps, each `step` long (capacity search); the run ends after the last.
    Steps {
        /// The levels, in order.
        levels: Vec<f64>,
        /// Length of each step.
        step: Duration,
    },
}

/// Parses a profile (see the module docs for the grammar).
pub fn parse_profile(text: &str) -> Result<Profile, String> {
    let t = text.trim();
    let (kind, rest) = t
        .split_once(':')
        .ok_or_else(|| format!("`{text}`: expected KIND:SPEC (ramp:0%..200%/30m, spike:100%,300%@10m/2m, soak:80%/2h, steps:50%,100%/5m)"))?;
    let bad = |what: &str| format!("`{text}`: {what}");
    let profile = match kind.trim() {
        "ramp" => {
            let (levels, over) = rest
                .rsplit_once('/')
                .ok_or_else(|| bad("expected ramp:FROM..TO/DURATION"))?;
            let (from, to) = levels
                .split_once("..")
                .ok_or_else(|| bad("expected FROM..TO"))?;
            Profile::Ramp {
                from: parse_level(from).map_err(|e| bad(&e))?,
                to: parse_level(to).map_err(|e| bad(&e))?,
                over: parse_duration(over).map_err(|e| bad(&e))?,
            }
        }
        "spike" => {
            let (levels, when) = rest
                .split_once('@')
                .ok_or_else(|| bad("expected spike:BASE,PEAK@AT/LENGTH"))?;
            let (base, peak) = levels
                .split_once(',')
                .ok_or_else(|| bad("expected BASE,PEAK"))?;
            let (at, length) = when
                .split_once('/')
                .ok_or_else(|| bad("expected AT/LENGTH"))?;
            Profile::Spike {
                base: parse_level(base).map_err(|e| bad(&e))?,
                peak: parse_level(peak).map_err(|e| bad(&e))?,
                at: parse_duration(at).map_err(|e| bad(&e))?,
                length: parse_duration(length).map_err(|e| bad(&e))?,
            }
        }
        "soak" => {
            let (level, length) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected soak:LEVEL/DURATION"))?;
            Profile::Soak {
                level: parse_factor(level).map_err(|e| bad(&e))?,
                length: parse_duration(length).map_err(|e| bad(&e))?,
            }
        }
        "steps" => {
            let (levels, step) = rest
                .rsplit_once('/')
                .ok_or_else(|| bad("expected steps:L1,L2,.../STEP"))?;
            let levels = levels
                .split(',')
                .map(|l| parse_factor(l).map_err(|e| bad(&e)))
                .collect::<Result<Vec<_>, _>>()?;
            Profile::Steps {
                levels,
                step: parse_duration(step).map_err(|e| bad(&e))?,
            }
        }
        other => {
            return Err(bad(&format!(
                "unknown profile `{other}` (ramp, spike, soak, steps)"
            )))
        }
    };
    match &profile {
        Profile::Ramp { over, from, to } if over.is_zero() || (*from == 0.0 && *to == 0.0) => {
            Err(bad("a ramp needs a non-zero length and level"))
        }
        Profile::Spike { length, base, .. } if length.is_zero() || *base == 0.0 => {
            Err(bad("a spike needs a non-zero length and base level"))
        }
        Profile::Soak { length, .. } | Profile::Steps { step: length, .. } if length.is_zero() => {
            Err(bad("the length must be > 0"))
        }
        _ => Ok(profile),
    }
}

/// A piece of a profile: level moves linearly from `from` to `to` over `[start_us, end_us)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Segment {
    pub(crate) start_us: f64,
    pub(crate) end_us: f64,
    pub(crate) from: f64,
    pub(crate) to: f64,
    pub(crate) phase: String,
}

impl Profile {
    /// The profile as segments; the last one may be open-ended (`end_us` infinite).
    pub(crate) fn segments(&self) -> Vec<Segment> {
        let us = |d: &Duration| d.as_secs_f64() * 1e6;
        match self {
            Profile::Ramp { from, to, over } => vec![Segment {
                start_us: 0.0,
                end_us: us(over),
                from: *from,
                to: *to,
                phase: "ramp".into(),
            }],
            Profile::Spike {
                base,
                peak,
                at,
                length,
            } => {
                let mut out = Vec::new();
                if !at.is_zero() {
                    out.push(Segment {
                        start_us: 0.0,
                        end_us: us(at),
                        from: *base,
                        to: *base,
                        phase: "base".into(),
                    });
                }
                out.push(Segment {
                    start_us: us(at),
                    end_us: us(at) + us(length),
                    from: *peak,
                    to: *peak,
                    phase: "spike".into(),
                });
                out.push(Segment {
                    start_us: us(at) + us(length),
                    end_us: f64::INFINITY,
                    from: *base,
                    to: *base,
                    phase: "recovery".into(),
                });
                out
            }
            Profile::Soak { level, length } => vec![Segment {
                start_us: 0.0,
                end_us: us(length),
                from: *level,
                to: *level,
                phase: "soak".into(),
            }],
            Profile::Steps { levels, step } => levels
                .iter()
                .enumerate()
                .map(|(i, l)| Segment {
                    start_us: i as f64 * us(step),
                    end_us: (i + 1) as f64 * us(step),
                    from: *l,
                    to: *l,
                    phase: format!("step-{}", i + 1),
                })
                .collect(),
        }
    }

    /// Whether the profile has a fixed end (the trace is looped to fill it).
    pub(crate) fn has_end(&self) -> bool {
        !matches!(self, Profile::Spike { .. })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn factors_accept_the_three_spellings() {
        assert_eq!(parse_factor("2").unwrap(), 2.0);
        assert_eq!(parse_factor("2x").unwrap(), 2.0);
        assert_eq!(parse_factor("200%").unwrap(), 2.0);
        assert_eq!(parse_factor("0.5X").unwrap(), 0.5);
        assert!(parse_factor("0").is_err());
        assert!(parse_factor("-1").is_err());
        assert!(parse_factor("fast").unwrap_err().contains("fast"));
    }

    #[test]
    fn durations_rates_and_shards() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unit"));
        assert_eq!(parse_rate("20/s").unwrap(), 20.0);
        assert_eq!(parse_rate("120/m").unwrap(), 2.0);
        assert!(parse_rate("0/s").is_err());
        assert_eq!(parse_shard("1/4").unwrap(), Shard { index: 1, count: 4 });
        assert!(parse_shard("4/4").is_err());
        assert!(parse_shard("1").is_err());
    }

    #[test]
    fn profiles_parse() {
        assert_eq!(
            parse_profile("ramp:0%..200%/30m").unwrap(),
            Profile::Ramp {
                from: 0.0,
                to: 2.0,
                over: Duration::from_secs(1800)
            }
        );
        assert_eq!(
            parse_profile("spike:100%,300%@10m/2m").unwrap(),
            Profile::Spike {
                base: 1.0,
                peak: 3.0,
                at: Duration::from_secs(600),
                length: Duration::from_secs(120)
            }
        );
        assert_eq!(
            parse_profile("soak:80%/2h").unwrap(),
            Profile::Soak {
                level: 0.8,
                length: Duration::from_secs(7200)
            }
        );
        assert_eq!(
            parse_profile("steps:50%,100%,150%,200%/5m").unwrap(),
            Profile::Steps {
                levels: vec![0.5, 1.0, 1.5, 2.0],
                step: Duration::from_secs(300)
            }
        );
        for bad in [
            "ramp",
            "ramp:0%/30m",
            "wave:1/2",
            "spike:100%@1m/1m",
            "steps:/5m",
            "soak:80%/0s",
        ] {
            assert!(parse_profile(bad).is_err(), "{bad} should not parse");
        }
    }
}
