//! Importers of public LLM inference traces into [`RequestRow`]s.
//!
//! | format | file | arrival | endpoint |
//! |---|---|---|---|
//! | [`Format::Azure`] | CSV `TIMESTAMP,ContextTokens,GeneratedTokens` (Azure LLM inference traces 2023/2024) | absolute UTC timestamps | `Completions` when the file name says `code`, else `Chat` |
//! | [`Format::BurstGpt`] | CSV with a header, columns found by name | `Timestamp` seconds after [`ImportOptions::base_time_us`] | `Chat` for `Conversation log`, `Completions` for `API log` |
//! | [`Format::Mooncake`] | JSONL `{timestamp (ms), input_length, output_length, hash_ids}` | `timestamp` ms after the base | `Chat` when the file name says `conversation`, else `Completions` |
//!
//! Every row gets `request_id = "<format>-<line>"` (1-based line in the file), token
//! sources [`TokenSource::Imported`], `stream = true` and outcome `Ok` — except BurstGPT
//! rows with 0 response tokens, which that trace uses for failed requests: they are kept
//! with outcome [`Outcome::UpstreamError`] so replay can skip or include them. Rows are
//! returned sorted by arrival (stable: file order among equal times).

mod azure;
mod burstgpt;
mod mooncake;

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::{Endpoint, RequestRow, TracesError};

/// Where relative traces (BurstGPT, Mooncake) start when no base is given:
/// 2024-01-01T00:00:00Z, in µs since the Unix epoch.
pub const DEFAULT_BASE_TIME_US: i64 = 1_704_067_200_000_000;

/// The public trace formats understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Azure LLM inference traces (2023, 2024).
    Azure,
    /// BurstGPT (Azure OpenAI GPT service traces).
    BurstGpt,
    /// Mooncake (Kimi) FAST'25 / arXiv traces.
    Mooncake,
}

impl Format {
    /// The name used on the command line and in request ids.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Azure => "azure",
            Format::BurstGpt => "burstgpt",
            Format::Mooncake => "mooncake",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "azure" => Ok(Format::Azure),
            "burstgpt" => Ok(Format::BurstGpt),
            "mooncake" => Ok(Format::Mooncake),
            other => Err(format!(
                "unknown trace format `{other}` (expected azure, burstgpt or mooncake)"
            )),
        }
    }
}

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The format; detected from the first line when `None`.
    pub format: Option<Format>,
    /// Skip lines that do not parse (and count them) instead of failing.
    pub skip_bad: bool,
    /// Start of relative traces, UTC µs; [`DEFAULT_BASE_TIME_US`] when `None`.
    pub base_time_us: Option<i64>,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// The format read.
    pub format: Format,
    /// Rows imported.
    pub rows: u64,
    /// Lines skipped as bad (only with `skip_bad`).
    pub skipped: u64,
    /// The error of the first skipped line.
    pub first_skipped: Option<String>,
}

fn io_err(path: &Path, source: std::io::Error) -> TracesError {
    TracesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn bad_file(path: &Path, message: impl Into<String>) -> TracesError {
    TracesError::BadFile {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Detects the format of a trace file from its first non-empty line.
pub fn detect(path: &Path) -> Result<Format, TracesError> {
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut lines = Lines::new(BufReader::new(file.take(1 << 20)), path);
    let Some((_, first)) = lines.next_line()? else {
        return Err(bad_file(path, "empty file: no header and no rows"));
    };
    let first = match first {
        Ok(line) => line,
        Err(err) => return Err(bad_file(path, format!("first line: {err}"))),
    };
    detect_line(&first).ok_or_else(|| {
        bad_file(
            path,
            format!(
                "cannot tell the trace format from the first line `{}` \
                 (known: azure CSV `TIMESTAMP,ContextTokens,GeneratedTokens`, burstgpt CSV \
                 with `Request tokens`, mooncake JSONL); give the format explicitly",
                shorten(&first, 120)
            ),
        )
    })
}

fn detect_line(first: &str) -> Option<Format> {
    let trimmed = first.trim();
    if trimmed.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(trimmed).ok()?;
        return (value.get("input_length").is_some() || value.get("hash_ids").is_some())
            .then_some(Format::Mooncake);
    }
    let header = split_csv(trimmed).ok()?;
    let has = |name: &str| header.iter().any(|h| h.trim().eq_ignore_ascii_case(name));
    if has("ContextTokens") && has("GeneratedTokens") {
        Some(Format::Azure)
    } else if has("Request tokens") && has("Response tokens") {
        Some(Format::BurstGpt)
    } else {
        None
    }
}

pub(crate) fn shorten(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// Imports a whole trace file.
pub fn import_file(
    path: &Path,
    opts: &ImportOptions,
) -> Result<(Vec<RequestRow>, ImportReport), TracesError> {
    let format = match opts.format {
        Some(format) => format,
        None => detect(path)?,
    };
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let mut lines = Lines::new(BufReader::with_capacity(1 << 16, file), path);
    let mut sink = Sink {
        path: path.to_path_buf(),
        skip_bad: opts.skip_bad,
        rows: Vec::new(),
        skipped: 0,
        first_skipped: None,
    };
    let base_us = opts.base_time_us.unwrap_or(DEFAULT_BASE_TIME_US);
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match format {
        Format::Azure => azure::import(&mut lines, &mut sink, &file_name)?,
        Format::BurstGpt => burstgpt::import(&mut lines, &mut sink, base_us)?,
        Format::Mooncake => mooncake::import(&mut lines, &mut sink, base_us, &file_name)?,
    }
    if sink.rows.is_empty() && sink.skipped == 0 {
        return Err(bad_file(path, format!("no {format} rows in the file")));
    }
    let mut rows = sink.rows;
    rows.sort_by_key(|r| r.arrival_us);
    let report = ImportReport {
        format,
        rows: rows.len() as u64,
        skipped: sink.skipped,
        first_skipped: sink.first_skipped,
    };
    Ok((rows, report))
}

/// Collects rows, and bad lines per `skip_bad`.
pub(crate) struct Sink {
    pub(crate) path: PathBuf,
    skip_bad: bool,
    rows: Vec<RequestRow>,
    skipped: u64,
    first_skipped: Option<String>,
}

impl Sink {
    /// A bad-input error at `line` for `field`.
    pub(crate) fn bad(&self, line: u64, field: &str, message: impl Into<String>) -> TracesError {
        TracesError::BadInput {
            path: self.path.clone(),
            line,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// Takes the result of one line: a row, or an error that fails the import or is
    /// skipped.
    pub(crate) fn take(&mut self, row: Result<RequestRow, TracesError>) -> Result<(), TracesError> {
        match row {
            Ok(row) => self.rows.push(row),
            Err(err) if self.skip_bad => {
                self.skipped += 1;
                if self.first_skipped.is_none() {
                    self.first_skipped = Some(err.to_string());
                }
            }
            Err(err) => return Err(err),
        }
        Ok(())
    }
}

/// A 1-based line number and the line, or why it is not text.
pub(crate) type NumberedLine = (u64, Result<String, String>);

/// Non-empty lines of a file with their 1-based numbers; a line that is not UTF-8 is
/// an `Err` with its description (so it can be skipped like any bad line).
pub(crate) struct Lines<'p, R> {
    reader: R,
    path: &'p Path,
    line_no: u64,
    buf: Vec<u8>,
}

impl<'p, R: BufRead> Lines<'p, R> {
    pub(crate) fn new(reader: R, path: &'p Path) -> Self {
        Lines {
            reader,
            path,
            line_no: 0,
            buf: Vec::new(),
        }
    }

    pub(crate) fn next_line(&mut self) -> Result<Option<NumberedLine>, TracesError> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| io_err(self.path, e))?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let mut bytes = &self.buf[..];
            if self.line_no == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            while let [rest @ .., b'\n' | b'\r'] = bytes {
                bytes = rest;
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let line = match std::str::from_utf8(bytes) {
                Ok(s) => Ok(s.to_string()),
                Err(e) => Err(format!("not valid UTF-8 ({e})")),
            };
            return Ok(Some((self.line_no, line)));
        }
    }
}

/// Splits one CSV line (RFC 4180 quoting: `"a,b"`, `""` inside quotes).
pub(crate) fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    let mut quoted_field = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                c => field.push(c),
            }
        } else {
            match c {
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                '"' if field.is_empty() && !quoted_field => {
                    in_quotes = true;
                    quoted_field = true;
                }
                c => field.push(c),
            }
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".to_string());
    }
    fields.push(field);
    Ok(fields)
}

/// The columns of a CSV header, found by name (case-insensitive, trimmed).
pub(crate) struct Header {
    names: Vec<String>,
}

impl Header {
    pub(crate) fn parse(line: &str) -> Result<Header, String> {
        Ok(Header {
            names: split_csv(line)?
                .into_iter()
                .map(|n| n.trim().to_string())
                .collect(),
        })
    }

    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n.eq_ignore_ascii_case(name))
    }

    pub(crate) fn len(&self) -> usize {
        self.names.len()
    }

    pub(crate) fn joined(&self) -> String {
        self.names.join(",")
    }
}

/// Reads the header line, or fails with `BadFile`.
pub(crate) fn read_header<R: BufRead>(
    lines: &mut Lines<'_, R>,
    format: Format,
) -> Result<Header, TracesError> {
    let path = lines.path;
    let Some((_, line)) = lines.next_line()? else {
        return Err(bad_file(path, "empty file: no header and no rows"));
    };
    let line = line.map_err(|e| bad_file(path, format!("header: {e}")))?;
    Header::parse(&line).map_err(|e| bad_file(path, format!("{format} header: {e}")))
}

/// The index of a required column, or `BadFile` naming it.
pub(crate) fn required(
    header: &Header,
    name: &str,
    format: Format,
    path: &Path,
) -> Result<usize, TracesError> {
    header.find(name).ok_or_else(|| {
        bad_file(
            path,
            format!(
                "does not look like the {format} format: missing column `{name}` (header: `{}`)",
                shorten(&header.joined(), 200)
            ),
        )
    })
}

/// A token count: a non-negative integer, also written as a float with no fraction
/// (`472.0`).
pub(crate) fn parse_count(s: &str) -> Result<u32, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return u32::try_from(n).map_err(|_| format!("`{s}` is too large"));
    }
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= f64::from(u32::MAX) => {
            Ok(f as u32)
        }
        _ => Err(format!("`{}` is not a token count", shorten(s, 40))),
    }
}

/// A relative time in `unit_us` units (seconds: 1e6, ms: 1e3) added to a base.
pub(crate) fn relative_time_us(base_us: i64, value: f64, unit_us: f64) -> Result<i64, String> {
    if !value.is_finite() || value < 0.0 {
        return Err(format!("`{value}` is not a non-negative time"));
    }
    let offset = (value * unit_us).round();
    // ~292,000 years of µs fit an i64; anything near that is garbage, not a trace.
    if offset > 1e17 {
        return Err(format!("`{value}` is too far in the future"));
    }
    Ok(base_us.saturating_add(offset as i64))
}

/// A row with what every importer sets; the format fills in the rest.
pub(crate) fn base_row(
    format: Format,
    line: u64,
    arrival_us: i64,
    endpoint: Endpoint,
) -> RequestRow {
    RequestRow::imported(format!("{format}-{line}"), arrival_us, endpoint)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn csv_quoting() {
        assert_eq!(split_csv("a,b,,c").unwrap(), ["a", "b", "", "c"]);
        assert_eq!(
            split_csv(r#""x,y","say ""hi""",z"#).unwrap(),
            ["x,y", r#"say "hi""#, "z"]
        );
        assert!(split_csv(r#"a,"b"#).is_err());
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count(" 12 ").unwrap(), 12);
        assert_eq!(parse_count("472.0").unwrap(), 472);
        assert!(parse_count("-1").is_err());
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("abc").is_err());
        assert!(parse_count("99999999999").is_err());
    }

    #[test]
    fn format_names_round_trip() {
        for f in [Format::Azure, Format::BurstGpt, Format::Mooncake] {
            assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
        }
        assert!("sharegpt".parse::<Format>().is_err());
    }
}
