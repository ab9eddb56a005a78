//! Transparent huge pages are off in the binary's processes (`src/main.rs`): mimalloc asks
//! for them, and zeroing a 2 MiB page inside a fault stalled the proxy's event loop and
//! replay's scheduler for tens of ms (bench/notes.md, session 12).
#![cfg(target_os = "linux")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `THP_enabled` line of a process's status, once it is readable.
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(|value| value.trim().to_string())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `retrace ARGS` and waits (at most 10 s) for its `THP_enabled` to read 0.
fn assert_huge_pages_off(args: &[&str]) {
    let child = Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start retrace");
    let mut child = Killed(child);
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("retrace {args:?} exited early ({status}); THP_enabled was {last:?}");
        }
        last = thp_enabled(pid);
        if last.as_deref() == Some("0") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("retrace {args:?}: THP_enabled still {last:?} after 10 s (expected 0)");
}

#[test]
fn transparent_huge_pages_are_off_in_long_running_commands() {
    if thp_enabled(std::process::id()).is_none() {
        eprintln!("skipped: this kernel's /proc/PID/status has no THP_enabled line");
        return;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let out = out.path().to_str().expect("utf-8 temp path");
    assert_huge_pages_off(&["sim", "--listen", "127.0.0.1:0"]);
    assert_huge_pages_off(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        "http://127.0.0.1:9",
        "--out",
        out,
        "--admin",
        "off",
    ]);
}
