//! Azure LLM inference traces: `TIMESTAMP,ContextTokens,GeneratedTokens`.
//!
//! 2023 timestamps have 7 fractional digits and no zone (`2023-11-16 18:15:46.6805900`,
//! UTC); 2024 ones carry `+00:00` and sometimes no fraction (`2024-05-10 00:00:00+00:00`).
//! Fractions finer than a microsecond are truncated.

use std::io::BufRead;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

use super::{
    base_row, parse_count, read_header, required, shorten, split_csv, Format, Lines, Sink,
};
use crate::{Endpoint, TracesError};

pub(super) fn import<R: BufRead>(
    lines: &mut Lines<'_, R>,
    sink: &mut Sink,
    file_name: &str,
) -> Result<(), TracesError> {
    let header = read_header(lines, Format::Azure)?;
    let path = sink.path.clone();
    let ts_col = required(&header, "TIMESTAMP", Format::Azure, &path)?;
    let ctx_col = required(&header, "ContextTokens", Format::Azure, &path)?;
    let gen_col = required(&header, "GeneratedTokens", Format::Azure, &path)?;
    // The code traces are completions of code; the conversation traces are chats.
    let endpoint = if file_name.contains("code") {
        Endpoint::Completions
    } else {
        Endpoint::Chat
    };
    while let Some((line_no, line)) = lines.next_line()? {
        let row = (|| {
            let line = line.map_err(|e| sink.bad(line_no, "line", e))?;
            let fields = split_csv(&line).map_err(|e| sink.bad(line_no, "line", e))?;
            if fields.len() != header.len() {
                return Err(sink.bad(
                    line_no,
                    "line",
                    format!("expected {} fields, found {}", header.len(), fields.len()),
                ));
            }
            let arrival_us = parse_timestamp_us(&fields[ts_col])
                .map_err(|e| sink.bad(line_no, "TIMESTAMP", e))?;
            let prompt =
                parse_count(&fields[ctx_col]).map_err(|e| sink.bad(line_no, "ContextTokens", e))?;
            let output = parse_count(&fields[gen_col])
                .map_err(|e| sink.bad(line_no, "GeneratedTokens", e))?;
            let mut row = base_row(Format::Azure, line_no, arrival_us, endpoint.clone());
            row.prompt_tokens = Some(prompt);
            row.output_tokens = Some(output);
            Ok(row)
        })();
        sink.take(row)?;
    }
    Ok(())
}

/// Parses `YYYY-MM-DD[ T]HH:MM:SS[.fraction][Z|±HH:MM|±HHMM]` (no zone means UTC) into
/// UTC µs since the Unix epoch.
pub(crate) fn parse_timestamp_us(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "`{}` is not a timestamp like 2023-11-16 18:15:46.6805900",
            shorten(s, 40)
        )
    };
    let (date, rest) = (s.get(..10).ok_or_else(bad)?, s.get(10..).ok_or_else(bad)?);
    let rest = rest.strip_prefix([' ', 'T']).ok_or_else(bad)?;
    let number = |t: &str| -> Result<u32, String> {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        t.parse::<u32>().map_err(|_| bad())
    };
    let date = NaiveDate::from_ymd_opt(
        i32::try_from(number(date.get(..4).ok_or_else(bad)?)?).map_err(|_| bad())?,
        number(date.get(5..7).ok_or_else(bad)?)?,
        number(date.get(8..10).ok_or_else(bad)?)?,
    )
    .filter(|_| s.as_bytes()[4] == b'-' && s.as_bytes()[7] == b'-')
    .ok_or_else(bad)?;
    let hms = rest.get(..8).ok_or_else(bad)?;
    if hms.as_bytes()[2] != b':' || hms.as_bytes()[5] != b':' {
        return Err(bad());
    }
    let time =
        NaiveTime::from_hms_opt(number(&hms[..2])?, number(&hms[3..5])?, number(&hms[6..8])?)
            .ok_or_else(bad)?;
    let mut rest = &rest[8..];
    let mut micros = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        for (i, d) in frac.bytes().take(6).take(digits).enumerate() {
            micros += i64::from(d - b'0') * 10i64.pow(5 - i as u32);
        }
        rest = &frac[digits..];
    }
    let offset_s: i64 = match rest {
        "" | "Z" => 0,
        zone => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let z = zone[1..].replace(':', "");
            if z.len() != 4 {
                return Err(bad());
            }
            let hours = i64::from(number(z.get(..2).ok_or_else(bad)?)?);
            let minutes = i64::from(number(z.get(2..).ok_or_else(bad)?)?);
            if hours > 23 || minutes > 59 {
                return Err(bad());
            }
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let local = NaiveDateTime::new(date, time).and_utc().timestamp();
    Ok((local - offset_s) * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn azure_timestamps() {
        // 2023-11-16T18:15:46Z = 1700158546 s.
        assert_eq!(
            parse_timestamp_us("2023-11-16 18:15:46.6805900").unwrap(),
            1_700_158_546_680_590
        );
        assert_eq!(
            parse_timestamp_us("2024-05-10 00:00:00+00:00").unwrap(),
            1_715_299_200_000_000
        );
        assert_eq!(
            parse_timestamp_us("2024-05-10 02:00:00.5+02:00").unwrap(),
            1_715_299_200_500_000
        );
        assert_eq!(
            parse_timestamp_us("2024-05-10T00:00:00Z").unwrap(),
            1_715_299_200_000_000
        );
        for bad in [
            "",
            "2023-11-16",
            "2023-13-16 18:15:46",
            "2023-11-16 25:15:46",
            "2023-11-16 18:15:46.",
            "2023-11-16 18:15:46 UTC",
            "2023/11/16 18:15:46",
            "2023-11-16 18:15:46+0",
            "２０２３-11-16 18:15:46",
            "+023-11-16 18:15:46",
        ] {
            assert!(parse_timestamp_us(bad).is_err(), "{bad}");
        }
    }
}
