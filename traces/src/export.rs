//! Export of request rows to other tools' trace formats.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;

use crate::RequestRow;

#[derive(Serialize)]
struct MooncakeLine<'a> {
    timestamp: i64,
    input_length: u32,
    output_length: u32,
    hash_ids: &'a [u64],
}

/// Writes rows as Mooncake JSONL (`{timestamp, input_length, output_length, hash_ids}`,
/// one line per row) and returns the number of lines written.
///
/// - `timestamp`: ms after the earliest arrival (rows are sorted by arrival first).
/// - `input_length`: prompt tokens (0 when unknown); `output_length`: output tokens, else
///   `max_tokens`, else 0.
/// - `hash_ids`: one id per `block_tokens` block of the prompt, last block partial, as
///   Mooncake does: ids are numbered densely from 0 in order of first appearance. The
///   row's own prefix hashes give the leading ids, so shared prefixes stay shared (they
///   are assumed to be of the same block size); blocks beyond them get fresh ids, shared
///   with nothing.
pub fn write_mooncake(
    rows: impl Iterator<Item = RequestRow>,
    out: &mut impl Write,
    block_tokens: u32,
) -> std::io::Result<u64> {
    let mut rows: Vec<RequestRow> = rows.collect();
    rows.sort_by_key(|r| r.arrival_us);
    let Some(origin_us) = rows.first().map(|r| r.arrival_us) else {
        return Ok(0);
    };
    let block_tokens = block_tokens.max(1);
    let mut ids: HashMap<u64, u64> = HashMap::new();
    let mut next_id = 0u64;
    let mut hash_ids = Vec::new();
    let mut written = 0u64;
    for row in &rows {
        let input = row.prompt_tokens.unwrap_or(0);
        let blocks = input.div_ceil(block_tokens) as usize;
        hash_ids.clear();
        for hash in row
            .prefix_hashes
            .iter()
            .take(blocks.max(row.prefix_hashes.len()))
        {
            let id = *ids.entry(*hash).or_insert_with(|| {
                next_id += 1;
                next_id - 1
            });
            hash_ids.push(id);
        }
        while hash_ids.len() < blocks {
            hash_ids.push(next_id);
            next_id += 1;
        }
        let line = MooncakeLine {
            timestamp: (row.arrival_us - origin_us) / 1_000,
            input_length: input,
            output_length: row.output_tokens.or(row.max_tokens).unwrap_or(0),
            hash_ids: &hash_ids,
        };
        serde_json::to_writer(&mut *out, &line)?;
        out.write_all(b"\n")?;
        written += 1;
    }
    Ok(written)
}
