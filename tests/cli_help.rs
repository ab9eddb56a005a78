//! Every subcommand's `--help` works and names its key options, and docs/cli.md is exactly
//! what the binary's `--help` prints (regenerate it with `RETRACE_BLESS=1 cargo test -p
//! retrace --test cli_help`).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn retrace(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args(args)
        .env("NO_COLOR", "1")
        // clap wraps to the terminal only with its `wrap_help` feature; pin it anyway.
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The subcommands `retrace --help` lists (without `help`), in its order.
fn subcommands() -> Vec<String> {
    let (code, help, _) = retrace(&["--help"]);
    assert_eq!(code, 0);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

fn cli_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")
}

/// docs/cli.md as it must be: a short header, then each command's `--help`, verbatim.
fn generate() -> String {
    let mut doc = String::from(
        "# CLI reference\n\n\
         <!-- Generated from the binary's `--help` by tests/cli_help.rs; do not edit by hand.\n     \
         Regenerate: RETRACE_BLESS=1 cargo test -p retrace --test cli_help -->\n\n\
         Every command below is `retrace <command> --help`, verbatim. Durations take `us`, `ms`,\n\
         `s`, `m`, `h`; sizes `B`, `KB`, `MB`, `GB` (powers of 1000) or `KiB`, `MiB`, `GiB`.\n\
         Exit codes: 0 ok, 1 a verdict failed (an SLO in `analyze`, `--fail-if-client-limited` in\n\
         `replay`), 2 bad input or a run that could not be made.\n\n",
    );
    let commands = subcommands();
    for c in &commands {
        doc.push_str(&format!("- [`retrace {c}`](#retrace-{c})\n"));
    }
    let (_, top, _) = retrace(&["--help"]);
    doc.push_str(&format!(
        "\n## retrace\n\n```text\n{}\n```\n",
        top.trim_end()
    ));
    for c in &commands {
        let (code, help, err) = retrace(&[c, "--help"]);
        assert_eq!(code, 0, "retrace {c} --help: {err}");
        doc.push_str(&format!(
            "\n## retrace {c}\n\n```text\n{}\n```\n",
            help.trim_end()
        ));
    }
    doc
}

#[test]
fn docs_cli_md_matches_help_output() {
    let expected = generate();
    let path = cli_md();
    if std::env::var("RETRACE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &expected).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    if actual != expected {
        let first = actual
            .lines()
            .zip(expected.lines())
            .position(|(a, e)| a != e)
            .unwrap_or_else(|| actual.lines().count().min(expected.lines().count()));
        panic!(
            "docs/cli.md is out of date with --help (first difference at line {}: {:?} vs {:?}); \
             regenerate with RETRACE_BLESS=1 cargo test -p retrace --test cli_help",
            first + 1,
            actual.lines().nth(first),
            expected.lines().nth(first)
        );
    }
}

#[test]
fn every_subcommand_help_names_its_key_options() {
    let key: &[(&str, &[&str])] = &[
        ("demo", &["--out", "--quick", "--keep"]),
        (
            "proxy",
            &[
                "--listen",
                "--upstream",
                "--out",
                "--admin",
                "--tls-cert",
                "--tls-key",
                "--include-usage",
                "--capture-content",
                "--tokenizer",
                "--drain-timeout",
            ],
        ),
        (
            "replay",
            &[
                "--target",
                "--out",
                "--speed",
                "--amplify",
                "--rate",
                "--profile",
                "--users",
                "--duration",
                "--max-requests",
                "--shard",
                "--start-at",
                "--metrics-url",
                "--no-tokenize",
            ],
        ),
        (
            "analyze",
            &[
                "--slo",
                "--json",
                "--html",
                "--baseline",
                "--production",
                "--window",
            ],
        ),
        (
            "sim",
            &[
                "--listen",
                "--kv-blocks",
                "--speedup",
                "--leak-rate",
                "--error-rate",
                "--truth",
            ],
        ),
        ("import", &["--out", "--format"]),
        ("inspect", &["--json"]),
        ("export", &["--format", "--out"]),
    ];
    let commands = subcommands();
    assert_eq!(
        commands,
        key.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>(),
        "the subcommands and their order"
    );
    for (c, options) in key {
        for flag in ["--help", "-h"] {
            let (code, help, err) = retrace(&[c, flag]);
            assert_eq!(code, 0, "retrace {c} {flag}: {err}");
            assert!(
                help.contains(&format!("Usage: retrace {c}")),
                "{c} {flag}: {help}"
            );
            for option in *options {
                assert!(help.contains(option), "retrace {c} {flag} lacks {option}");
            }
        }
    }
    let (code, _, err) = retrace(&["help", "replay"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn unknown_options_and_commands_are_usage_errors() {
    let (code, _, err) = retrace(&["replay", "--no-such-option"]);
    assert_eq!(code, 2);
    assert!(err.contains("--no-such-option"), "{err}");
    let (code, _, err) = retrace(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("frobnicate"), "{err}");
    let (code, _, err) = retrace(&["analyze", "/no/such/run"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/no/such/run"),
        "the error names the path: {err}"
    );
}
