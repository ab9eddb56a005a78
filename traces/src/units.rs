//! The one parser of durations and byte sizes on every command line (`30m`, `250ms`,
//! `64KiB`, `1GB`), so `retrace proxy`, `replay`, `analyze` and `sim` accept the same forms.

use std::time::Duration;

/// Splits `1.5ms` into `(1.5, "ms")`; the number must be non-negative and finite.
fn number_and_unit<'a>(text: &'a str, what: &str) -> Result<(f64, &'a str), String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not {what}"))?;
    Ok((value, unit.trim()))
}

/// Parses a duration: a number with a unit `us` (`µs`), `ms`, `s`, `m` (`min`) or `h`
/// (`30m`, `1.5s`, `250ms`). A bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (value, unit) = number_and_unit(text, "a duration (e.g. 30m, 10s, 250ms)")?;
    let seconds_per_unit = match unit {
        "" | "s" => 1.0,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "`{text}`: unknown duration unit `{other}` (use us, ms, s, m or h)"
            ))
        }
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || seconds > 1e9 {
        return Err(format!("`{text}`: duration out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a byte size: a number with an optional unit `B`, `KB`, `MB`, `GB` (powers of
/// 1000) or `KiB`, `MiB`, `GiB` (powers of 1024), any case: `4096`, `64KiB`, `1.5GB`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let (value, unit) = number_and_unit(text, "a size (e.g. 4096, 64KiB, 512MiB, 1GB)")?;
    let multiplier: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "`{text}`: unknown size unit `{other}` (use B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}`: size out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Parses a fraction: `0.01` or `1%`, within 0..=1.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let value = match trimmed.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|v| v / 100.0),
        None => trimmed.parse::<f64>(),
    }
    .map_err(|_| format!("`{text}`: expected a fraction like 0.01 or 1%"))?;
    if !(value.is_finite() && (0.0..=1.0).contains(&value)) {
        return Err(format!("`{text}`: must be within 0..=1 (0%..=100%)"));
    }
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("800us"), Ok(Duration::from_micros(800)));
        assert_eq!(parse_duration("2 h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("5 fortnights")
            .unwrap_err()
            .contains("fortnights"));
        assert!(parse_duration("1e30h").is_err());
    }

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("1%"), Ok(0.01));
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("150%").is_err());
        assert!(parse_fraction("x").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("1.5gib"), Ok(1_610_612_736));
        assert!(parse_size("12 parsecs").unwrap_err().contains("parsecs"));
        assert!(parse_size("x").is_err());
    }
}
