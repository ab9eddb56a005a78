//! Mooncake (FAST'25 and arXiv releases): JSONL
//! `{"timestamp": ms after the trace start, "input_length", "output_length", "hash_ids"}`.
//! Each hash id names one 512-token block of the prompt (the last one may be partial);
//! the ids are kept as they are in `prefix_hashes`, so shared ids still mean shared
//! prefixes.

use std::io::BufRead;

use serde_json::Value;

use super::{base_row, parse_count, relative_time_us, shorten, Format, Lines, Sink};
use crate::{Endpoint, TracesError};

pub(super) fn import<R: BufRead>(
    lines: &mut Lines<'_, R>,
    sink: &mut Sink,
    base_us: i64,
    file_name: &str,
) -> Result<(), TracesError> {
    let endpoint = if file_name.contains("conversation") {
        Endpoint::Chat
    } else {
        Endpoint::Completions
    };
    while let Some((line_no, line)) = lines.next_line()? {
        let row = (|| {
            let line = line.map_err(|e| sink.bad(line_no, "line", e))?;
            let value: Value = serde_json::from_str(&line)
                .map_err(|e| sink.bad(line_no, "line", format!("not a JSON object: {e}")))?;
            let Value::Object(obj) = value else {
                return Err(sink.bad(line_no, "line", "not a JSON object"));
            };
            let field = |name: &str| {
                obj.get(name)
                    .ok_or_else(|| sink.bad(line_no, name, "missing"))
            };
            let count = |name: &str| -> Result<u32, TracesError> {
                match field(name)? {
                    Value::Number(n) => parse_count(&n.to_string()),
                    other => Err(format!(
                        "`{}` is not a token count",
                        shorten(&other.to_string(), 40)
                    )),
                }
                .map_err(|e| sink.bad(line_no, name, e))
            };
            let ms = match field("timestamp")? {
                Value::Number(n) => n.as_f64(),
                _ => None,
            }
            .ok_or_else(|| sink.bad(line_no, "timestamp", "not a number of milliseconds"))?;
            let arrival_us = relative_time_us(base_us, ms, 1e3)
                .map_err(|e| sink.bad(line_no, "timestamp", e))?;
            let prompt = count("input_length")?;
            let output = count("output_length")?;
            let hash_ids = match obj.get("hash_ids") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(ids)) => ids
                    .iter()
                    .map(|id| id.as_u64())
                    .collect::<Option<Vec<u64>>>()
                    .ok_or_else(|| {
                        sink.bad(line_no, "hash_ids", "not a list of non-negative integers")
                    })?,
                Some(_) => return Err(sink.bad(line_no, "hash_ids", "not a list")),
            };
            let mut row = base_row(Format::Mooncake, line_no, arrival_us, endpoint.clone());
            row.prompt_tokens = Some(prompt);
            row.output_tokens = Some(output);
            row.prefix_hashes = hash_ids;
            row.session_id = match obj.get("session_id") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            Ok(row)
        })();
        sink.take(row)?;
    }
    Ok(())
}
