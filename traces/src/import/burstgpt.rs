//! BurstGPT: CSV `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type`
//! (BurstGPT_3 adds `Session ID` and `Elapsed time` after `Timestamp`). Columns are found
//! by name. `Timestamp` is seconds since the start of the first collection day (integers,
//! or floats like `19440110.0`). Rows with 0 response tokens are the trace's failed
//! requests: they are kept with outcome `UpstreamError`.

use std::io::BufRead;

use super::{
    base_row, parse_count, read_header, relative_time_us, required, shorten, split_csv, Format,
    Lines, Sink,
};
use crate::{Endpoint, Outcome, TracesError};

pub(super) fn import<R: BufRead>(
    lines: &mut Lines<'_, R>,
    sink: &mut Sink,
    base_us: i64,
) -> Result<(), TracesError> {
    let header = read_header(lines, Format::BurstGpt)?;
    let path = sink.path.clone();
    let ts_col = required(&header, "Timestamp", Format::BurstGpt, &path)?;
    let req_col = required(&header, "Request tokens", Format::BurstGpt, &path)?;
    let resp_col = required(&header, "Response tokens", Format::BurstGpt, &path)?;
    let model_col = header.find("Model");
    let log_col = header.find("Log Type");
    let session_col = header.find("Session ID");
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
            let seconds: f64 = fields[ts_col].trim().parse().map_err(|_| {
                sink.bad(
                    line_no,
                    "Timestamp",
                    format!(
                        "`{}` is not a number of seconds",
                        shorten(&fields[ts_col], 40)
                    ),
                )
            })?;
            let arrival_us = relative_time_us(base_us, seconds, 1e6)
                .map_err(|e| sink.bad(line_no, "Timestamp", e))?;
            let prompt = parse_count(&fields[req_col])
                .map_err(|e| sink.bad(line_no, "Request tokens", e))?;
            let output = parse_count(&fields[resp_col])
                .map_err(|e| sink.bad(line_no, "Response tokens", e))?;
            let endpoint = match log_col.map(|c| fields[c].trim()) {
                None | Some("") => Endpoint::Chat,
                Some(t) if t.eq_ignore_ascii_case("Conversation log") => Endpoint::Chat,
                Some(t) if t.eq_ignore_ascii_case("API log") => Endpoint::Completions,
                Some(other) => {
                    return Err(sink.bad(
                        line_no,
                        "Log Type",
                        format!(
                            "`{}` is neither `Conversation log` nor `API log`",
                            shorten(other, 40)
                        ),
                    ))
                }
            };
            let mut row = base_row(Format::BurstGpt, line_no, arrival_us, endpoint);
            row.model = model_col
                .map(|c| fields[c].trim())
                .filter(|m| !m.is_empty())
                .map(str::to_string);
            row.session_id = session_col
                .map(|c| fields[c].trim())
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            row.prompt_tokens = Some(prompt);
            row.output_tokens = Some(output);
            if output == 0 {
                row.outcome = Outcome::UpstreamError;
            }
            Ok(row)
        })();
        sink.take(row)?;
    }
    Ok(())
}
