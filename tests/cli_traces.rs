//! `retrace import`, `inspect` and `export` end to end, through the built binary.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sample(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("traces/samples")
        .join(rel)
}

fn retrace(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args(args)
        .output()
        .unwrap()
}

fn run(args: &[&str]) -> Output {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    retrace(&args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn import_then_inspect_json_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("azure.parquet");
    let trace = sample("azure_2023/AzureLLMInferenceTrace_conv.csv");
    let o = run(&[
        "import",
        trace.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("imported 19366 rows (azure format)"),
        "{stdout}"
    );
    assert!(stdout.contains("skipped 0"), "{stdout}");
    assert!(out.is_file());

    let o = run(&["inspect", "--json", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["rows"], 19_366);
    assert_eq!(report["outcomes"]["ok"], 19_366);
    assert_eq!(report["prompt_tokens"]["count"], 19_366);

    // A directory of Parquet files and the raw trace give the same report.
    let o = run(&["inspect", "--json", dir.path().to_str().unwrap()]);
    let from_dir: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = run(&["inspect", "--json", trace.to_str().unwrap()]);
    let from_raw: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(from_dir, report);
    assert_eq!(from_raw, report);

    let o = run(&["inspect", out.to_str().unwrap()]);
    let table = text(&o.stdout);
    assert!(table.contains("rows") && table.contains("19366"), "{table}");
    assert!(table.contains("burstiness (CV)"), "{table}");
}

#[test]
fn bad_input_fails_with_file_line_field_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("dirty.csv");
    std::fs::write(
        &trace,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47.1,lots,3\n2023-11-16 18:15:48.0,5,6\n",
    )
    .unwrap();
    let out = dir.path().join("out.parquet");
    let o = run(&[
        "import",
        trace.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("dirty.csv:3: field `ContextTokens`"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no output left behind"
    );

    let o = run(&[
        "import",
        trace.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--skip-bad",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("imported 2 rows"),
        "{}",
        text(&o.stdout)
    );
    assert!(text(&o.stdout).contains("skipped 1 bad lines"));
    assert!(text(&o.stderr).contains("ContextTokens"));

    // Forcing the wrong format is a clear error too.
    let burst = sample("burstgpt/BurstGPT_1_first400.csv");
    let o = run(&[
        "import",
        burst.to_str().unwrap(),
        "-o",
        dir.path().join("b.parquet").to_str().unwrap(),
        "--format",
        "azure",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr)
            .contains("does not look like the azure format: missing column `ContextTokens`"),
        "{}",
        text(&o.stderr)
    );
    assert!(!dir.path().join("b.parquet").exists());
}

#[test]
fn mooncake_import_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let trace = sample("mooncake/mooncake_conversation_first300s.jsonl");
    let parquet = dir.path().join("m.parquet");
    let o = run(&[
        "import",
        trace.to_str().unwrap(),
        "-o",
        parquet.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = dir.path().join("m.jsonl");
    let o = run(&[
        "export",
        parquet.to_str().unwrap(),
        "--format",
        "mooncake",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("exported 918 rows"));
    let parse = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert_eq!(parse(&out), parse(&trace));

    let o = run(&["inspect", trace.to_str().unwrap()]);
    assert!(
        text(&o.stdout).contains("prefix reuse"),
        "{}",
        text(&o.stdout)
    );

    // A missing input fails and leaves no partial export behind.
    let missing = dir.path().join("nope.parquet");
    let bad_out = dir.path().join("bad.jsonl");
    let o = run(&[
        "export",
        missing.to_str().unwrap(),
        "--format",
        "mooncake",
        "-o",
        bad_out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!bad_out.exists());
    assert!(!dir.path().join("bad.jsonl.tmp").exists());
}
