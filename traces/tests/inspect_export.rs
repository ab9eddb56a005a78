//! inspect and Mooncake export on the bundled real traces.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use retrace_traces::export::write_mooncake;
use retrace_traces::import::{import_file, ImportOptions};
use retrace_traces::inspect::inspect;

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(rel)
}

#[test]
fn inspect_azure_sample() {
    let path = sample("azure_2023/AzureLLMInferenceTrace_conv.csv");
    let (rows, _) = import_file(&path, &ImportOptions::default()).unwrap();
    let report = inspect(rows.into_iter());
    assert_eq!(report.rows, 19_366);
    // Provenance: ~5.5 req/s over ~3,500 s.
    let rate = report.mean_rate_per_s.unwrap();
    assert!((4.5..6.5).contains(&rate), "rate {rate}");
    assert!(
        report.peak_rate_per_s as f64 > rate,
        "a peak second is above the mean"
    );
    assert!(report.interarrival_cv.unwrap() > 0.5);
    let p = report.prompt_tokens.unwrap();
    assert!(p.p50 <= p.p95 && p.p95 <= p.p99 && p.p99 <= p.max);
    assert_eq!(report.outcomes.get("ok"), Some(&19_366));
    assert_eq!(report.prefix, None);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["rows"], 19_366);
}

#[test]
fn inspect_burstgpt_and_mooncake_samples() {
    let (rows, _) = import_file(
        &sample("burstgpt/BurstGPT_1_first400.csv"),
        &ImportOptions::default(),
    )
    .unwrap();
    let report = inspect(rows.into_iter());
    assert_eq!(report.outcomes.get("upstream_error"), Some(&17));
    assert_eq!(report.outcomes.get("ok"), Some(&383));
    assert!(report.models.contains_key("ChatGPT") && report.models.contains_key("GPT-4"));

    let (rows, _) = import_file(
        &sample("mooncake/mooncake_conversation_first300s.jsonl"),
        &ImportOptions::default(),
    )
    .unwrap();
    let report = inspect(rows.into_iter());
    let prefix = report.prefix.unwrap();
    assert_eq!(prefix.rows_with_blocks, 918);
    // Conversation traffic re-sends earlier turns: a large share of blocks repeats.
    assert!(prefix.reuse_share > 0.2, "{prefix:?}");
    assert!(report.span_s < 300.0);
}

#[test]
fn mooncake_export_round_trips_the_sample() {
    let path = sample("mooncake/mooncake_conversation_first300s.jsonl");
    let (rows, _) = import_file(&path, &ImportOptions::default()).unwrap();
    let mut out = Vec::new();
    let n = write_mooncake(rows.clone().into_iter(), &mut out, 512).unwrap();
    assert_eq!(n, 918);
    let original = std::fs::read_to_string(&path).unwrap();
    let parse = |s: &str| -> Vec<serde_json::Value> {
        s.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (exported, original) = (parse(std::str::from_utf8(&out).unwrap()), parse(&original));
    assert_eq!(exported.len(), original.len());
    for (e, o) in exported.iter().zip(&original) {
        for key in ["timestamp", "input_length", "output_length"] {
            assert_eq!(e[key], o[key], "{key}");
        }
        // Ids are renumbered in order of first appearance, which is how the trace numbers them.
        assert_eq!(e["hash_ids"], o["hash_ids"]);
    }
}

#[test]
fn mooncake_export_without_prefix_hashes_gives_fresh_blocks() {
    let path = sample("azure_2023/AzureLLMInferenceTrace_conv.csv");
    let (rows, _) = import_file(&path, &ImportOptions::default()).unwrap();
    let mut out = Vec::new();
    write_mooncake(rows.into_iter().take(3), &mut out, 512).unwrap();
    let lines: Vec<serde_json::Value> = std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["timestamp"], 0);
    assert_eq!(lines[0]["input_length"], 374);
    assert_eq!(lines[0]["hash_ids"], serde_json::json!([0]));
    // 2023-11-16 18:15:50.9951690 − 18:15:46.6805900 = 4314.579 ms
    assert_eq!(lines[1]["timestamp"], 4314);
    assert_eq!(
        lines[2]["hash_ids"],
        serde_json::json!([2, 3]),
        "879 tokens: 2 blocks"
    );
}
