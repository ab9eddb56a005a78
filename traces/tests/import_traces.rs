//! Importers on the bundled real traces (exact counts) and on dirty hand-made files.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use retrace_traces::import::{detect, import_file, Format, ImportOptions, DEFAULT_BASE_TIME_US};
use retrace_traces::{Endpoint, Outcome, TokenSource, TracesError};

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(rel)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn azure_2023_conversation_sample() {
    let path = sample("azure_2023/AzureLLMInferenceTrace_conv.csv");
    assert_eq!(detect(&path).unwrap(), Format::Azure);
    let (rows, report) = import_file(&path, &ImportOptions::default()).unwrap();
    assert_eq!(report.rows, 19_366);
    assert_eq!(rows.len(), 19_366);
    assert_eq!((report.format, report.skipped), (Format::Azure, 0));
    let first = &rows[0];
    assert_eq!(first.request_id, "azure-2");
    // 2023-11-16 18:15:46.6805900 UTC
    assert_eq!(first.arrival_us, 1_700_158_546_680_590);
    assert_eq!(
        (first.prompt_tokens, first.output_tokens),
        (Some(374), Some(44))
    );
    assert_eq!(first.prompt_tokens_source, TokenSource::Imported);
    assert_eq!(first.endpoint, Endpoint::Chat);
    assert!(first.stream);
    assert_eq!(first.outcome, Outcome::Ok);
    assert!(rows.windows(2).all(|w| w[0].arrival_us <= w[1].arrival_us));
    let span_s = (rows[rows.len() - 1].arrival_us - rows[0].arrival_us) as f64 / 1e6;
    assert!((3_000.0..4_000.0).contains(&span_s), "span {span_s}");
}

#[test]
fn burstgpt_sample_keeps_failed_requests() {
    let path = sample("burstgpt/BurstGPT_1_first400.csv");
    assert_eq!(detect(&path).unwrap(), Format::BurstGpt);
    let (rows, report) = import_file(&path, &ImportOptions::default()).unwrap();
    assert_eq!(report.rows, 400);
    let failed = rows
        .iter()
        .filter(|r| r.outcome == Outcome::UpstreamError)
        .count();
    assert_eq!(failed, 17);
    assert!(rows
        .iter()
        .filter(|r| r.outcome == Outcome::UpstreamError)
        .all(|r| r.output_tokens == Some(0)));
    let api = rows
        .iter()
        .filter(|r| r.endpoint == Endpoint::Completions)
        .count();
    assert_eq!(api, 2, "two `API log` rows");
    let first = rows.iter().find(|r| r.request_id == "burstgpt-2").unwrap();
    assert_eq!(first.arrival_us, DEFAULT_BASE_TIME_US + 5_000_000);
    assert_eq!(first.model.as_deref(), Some("ChatGPT"));
    assert_eq!(
        (first.prompt_tokens, first.output_tokens),
        (Some(472), Some(18))
    );
}

#[test]
fn mooncake_sample_keeps_hash_ids() {
    let path = sample("mooncake/mooncake_conversation_first300s.jsonl");
    assert_eq!(detect(&path).unwrap(), Format::Mooncake);
    let base = 1_000_000_000_000_000;
    let opts = ImportOptions {
        base_time_us: Some(base),
        ..ImportOptions::default()
    };
    let (rows, report) = import_file(&path, &opts).unwrap();
    assert_eq!(report.rows, 918);
    let first = &rows[0];
    assert_eq!(first.request_id, "mooncake-1");
    assert_eq!(first.arrival_us, base);
    assert_eq!(first.prefix_hashes, (0..14).collect::<Vec<u64>>());
    assert_eq!(
        (first.prompt_tokens, first.output_tokens),
        (Some(6758), Some(500))
    );
    assert_eq!(first.endpoint, Endpoint::Chat);
    assert!(rows.iter().all(|r| r.arrival_us < base + 300_000_000));
    // 512-token blocks, the last one partial: ceil(input / 512) ids.
    assert!(rows
        .iter()
        .all(|r| r.prefix_hashes.len() as u32 == r.prompt_tokens.unwrap().div_ceil(512)));
}

#[test]
fn azure_2024_timestamps_with_zone_and_without_fraction() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "AzureLLMInferenceTrace_code_1week.csv",
        b"TIMESTAMP,ContextTokens,GeneratedTokens\r\n2024-05-10 00:00:00+00:00,10,2\r\n2024-05-10 00:00:00.012+00:00,20,3\r\n",
    );
    let (rows, _) = import_file(&path, &ImportOptions::default()).unwrap();
    assert_eq!(rows[0].arrival_us, 1_715_299_200_000_000);
    assert_eq!(rows[1].arrival_us, 1_715_299_200_012_000);
    assert_eq!(rows[0].endpoint, Endpoint::Completions, "code trace");
}

#[test]
fn burstgpt_3_columns_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "BurstGPT_3.csv",
        b"Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type\n\
          19440110.0,s-1,2.5,GPT-4,100,20,120,Conversation log\n\
          19440109.5,s-2,1.0,ChatGPT,50,0,50,API log\n",
    );
    let (rows, report) = import_file(&path, &ImportOptions::default()).unwrap();
    assert_eq!(report.rows, 2);
    // Sorted by arrival: line 3 comes first.
    assert_eq!(rows[0].request_id, "burstgpt-3");
    assert_eq!(
        rows[0].arrival_us,
        DEFAULT_BASE_TIME_US + 19_440_109_500_000
    );
    assert_eq!(rows[0].session_id.as_deref(), Some("s-2"));
    assert_eq!(rows[0].outcome, Outcome::UpstreamError);
    assert_eq!(rows[1].model.as_deref(), Some("GPT-4"));
}

fn bad_input(err: TracesError) -> (u64, String, String) {
    match err {
        TracesError::BadInput {
            line,
            field,
            message,
            ..
        } => (line, field, message),
        other => panic!("expected BadInput, got {other}"),
    }
}

#[test]
fn bad_lines_name_file_line_field_and_can_be_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "dirty.csv",
        b"TIMESTAMP,ContextTokens,GeneratedTokens\n\
          2023-11-16 18:15:46.6805900,374,44\n\
          2023-11-16 18:15:4,396,109\n\
          2023-11-16 18:15:51.2224670,-3,55\n\
          2023-11-16 18:15:51.3910170,91\n\
          2023-11-16 18:15:52.0,91,16\n",
    );
    let err = import_file(&path, &ImportOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("dirty.csv:3: field `TIMESTAMP`"), "{text}");
    assert_eq!(bad_input(err).0, 3);

    let opts = ImportOptions {
        skip_bad: true,
        ..ImportOptions::default()
    };
    let (rows, report) = import_file(&path, &opts).unwrap();
    assert_eq!((report.rows, report.skipped), (2, 3));
    assert!(report
        .first_skipped
        .unwrap()
        .contains(":3: field `TIMESTAMP`"));
    assert_eq!(rows[1].request_id, "azure-6");

    // Each kind of bad line on its own.
    let one = |body: &str| {
        let p = write(
            &dir,
            "one.csv",
            format!("TIMESTAMP,ContextTokens,GeneratedTokens\n{body}\n").as_bytes(),
        );
        bad_input(import_file(&p, &ImportOptions::default()).unwrap_err())
    };
    assert_eq!(one("2023-11-16 18:15:51.2,-3,55").1, "ContextTokens");
    assert_eq!(one("2023-11-16 18:15:51.2,3,x").1, "GeneratedTokens");
    let (line, field, message) = one("2023-11-16 18:15:51.2,91");
    assert_eq!((line, field.as_str()), (2, "line"));
    assert!(message.contains("expected 3 fields, found 2"), "{message}");

    let p = write(&dir, "m.jsonl", b"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [0]}\n{\"timestamp\": 3, \"output_length\": 1}\n{\"timestamp\": 4, \"input_len");
    let (line, field, _) = bad_input(import_file(&p, &ImportOptions::default()).unwrap_err());
    assert_eq!((line, field.as_str()), (2, "input_length"));
    let (_, report) = import_file(&p, &opts).unwrap();
    assert_eq!(
        (report.rows, report.skipped),
        (1, 2),
        "missing field and truncated line"
    );

    let p = write(&dir, "b.csv", b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\nsoon,ChatGPT,1,1,2,Conversation log\n");
    assert_eq!(
        bad_input(import_file(&p, &ImportOptions::default()).unwrap_err()).1,
        "Timestamp"
    );
    let p = write(&dir, "b.csv", b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n1,ChatGPT,1,1,2,Web log\n");
    assert_eq!(
        bad_input(import_file(&p, &ImportOptions::default()).unwrap_err()).1,
        "Log Type"
    );
    let p = write(
        &dir,
        "a.csv",
        b"TIMESTAMP,ContextTokens,GeneratedTokens\n\xff\xfe,1,1\n",
    );
    assert_eq!(
        bad_input(import_file(&p, &ImportOptions::default()).unwrap_err()).1,
        "line"
    );
}

fn bad_file(result: Result<impl std::fmt::Debug, TracesError>) -> String {
    match result {
        Err(err @ TracesError::BadFile { .. }) => err.to_string(),
        other => panic!("expected BadFile, got {other:?}"),
    }
}

#[test]
fn bad_files_get_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let empty = write(&dir, "empty.csv", b"");
    assert!(bad_file(import_file(&empty, &ImportOptions::default())).contains("empty file"));
    let blank = write(&dir, "blank.jsonl", b"\n\n  \n");
    assert!(bad_file(detect(&blank)).contains("empty file"));
    let header_only = write(&dir, "h.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n");
    assert!(
        bad_file(import_file(&header_only, &ImportOptions::default())).contains("no azure rows")
    );
    let missing = write(
        &dir,
        "missing.csv",
        b"TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,1\n",
    );
    let opts = ImportOptions {
        format: Some(Format::Azure),
        ..ImportOptions::default()
    };
    let msg = bad_file(import_file(&missing, &opts));
    assert!(msg.contains("missing column `GeneratedTokens`"), "{msg}");
    let unknown = write(&dir, "sharegpt.json", b"[{\"conversations\": []}]\n");
    let msg = bad_file(import_file(&unknown, &ImportOptions::default()));
    assert!(msg.contains("cannot tell the trace format"), "{msg}");
    // Forcing the wrong format.
    let moon = sample("mooncake/mooncake_conversation_first300s.jsonl");
    let msg = bad_file(import_file(&moon, &opts));
    assert!(
        msg.contains("does not look like the azure format: missing column `TIMESTAMP`"),
        "{msg}"
    );
    let missing_file = dir.path().join("nope.csv");
    assert!(matches!(detect(&missing_file), Err(TracesError::Io { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn importers_never_panic_on_arbitrary_bytes(
        header in prop_oneof![
            Just(&b""[..]),
            Just(&b"TIMESTAMP,ContextTokens,GeneratedTokens\n"[..]),
            Just(&b"Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"[..]),
            Just(&b"{\"timestamp\": 0, \"input_length\": 1, \"output_length\": 1}\n"[..]),
        ],
        body in prop::collection::vec(
            prop_oneof![any::<u8>(), Just(b','), Just(b'\n'), Just(b'"'), Just(b'-'), Just(b':'), Just(b'0'), Just(b'9')],
            0..300,
        ),
        format in prop_oneof![Just(None), Just(Some(Format::Azure)), Just(Some(Format::BurstGpt)), Just(Some(Format::Mooncake))],
        skip_bad in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(&body);
        let path = write(&dir, "fuzz.txt", &bytes);
        let _ = detect(&path);
        let opts = ImportOptions { format, skip_bad, ..ImportOptions::default() };
        if let Ok((rows, report)) = import_file(&path, &opts) {
            prop_assert_eq!(rows.len() as u64, report.rows);
        }
    }

    #[test]
    fn azure_timestamps_never_panic(ts in "[0-9: .+\\-TZé]{0,32}") {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "t.csv", format!("TIMESTAMP,ContextTokens,GeneratedTokens\n{ts},1,1\n").as_bytes());
        let _ = import_file(&path, &ImportOptions::default());
    }
}
