//! Issue 9, security defaults: the admin listener binds to loopback unless told otherwise.
//! (Planted secrets through every header and the query string, checked against every file
//! and every debug log line of the real process: `tests/proxy_process.rs` at the root.)
#![allow(clippy::unwrap_used)]

use clap::Parser;
use retrace_proxy::{AdminListen, ProxyArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    proxy: ProxyArgs,
}

#[test]
fn issue_9_admin_listener_binds_to_loopback_by_default() {
    let out = tempfile::tempdir().unwrap();
    let cli = Cli::try_parse_from([
        "retrace-proxy",
        "--listen",
        "0.0.0.0:8080",
        "--upstream",
        "http://127.0.0.1:8000",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .unwrap();
    let config = cli.proxy.into_config().unwrap();
    match config.admin {
        AdminListen::On(addr) => {
            assert!(addr.ip().is_loopback(), "admin on {addr}");
            assert_eq!(addr.port(), 9090);
        }
        AdminListen::Off => panic!("admin is on by default"),
    }
    // Even when the client listener is public, the admin one is not.
    assert!(!config.listen.ip().is_loopback());
    assert!(
        !config.insecure_upstream,
        "upstream certificates verified by default"
    );
}
