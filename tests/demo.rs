//! `retrace demo --quick`, the README's first command, run as the real binary: it finishes,
//! writes self-contained reports and a Parquet recording, finds the planted soak leak, says
//! where the files are, and leaves nothing running.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every `<script …>` / `<link …>` / `<img …>` tag that loads something from the network.
fn remote_loads(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for open in ["<script", "<link", "<img", "<iframe"] {
        let mut rest = lower.as_str();
        while let Some(i) = rest.find(open) {
            let tag_end = rest[i..].find('>').map_or(rest.len(), |j| i + j);
            let tag = &rest[i..tag_end];
            if [
                "src=\"http",
                "href=\"http",
                "src='http",
                "href='http",
                "src=//",
                "src=\"//",
            ]
            .iter()
            .any(|p| tag.contains(p))
            {
                found.push(tag.to_string());
            }
            rest = &rest[tag_end..];
        }
    }
    found
}

fn files_named(dir: &Path, prefix: &str, suffix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
        .collect()
}

/// Loopback TCP ports on which process `pid` has a listening socket (Linux `/proc`;
/// empty elsewhere): its socket inodes from `/proc/PID/fd`, matched in `/proc/net/tcp`.
fn listening_ports(pid: u32) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is IP:PORT in hex; state 0A is LISTEN; field 9 the inode.
            let (ip, port) = f.get(1)?.split_once(':')?;
            (ip == "0100007F" && *f.get(3)? == "0A" && inodes.contains(*f.get(9)?))
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

#[test]
fn demo_quick_records_replays_analyzes_and_cleans_up() {
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_retrace"))
        .args(["demo", "--quick", "--out"])
        .arg(out.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Read both pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    // ~30 s in a debug build on a quiet 2-core machine; generous for a loaded one.
    let started = Instant::now();
    let limit = Duration::from_secs(300);
    let mut ports = std::collections::BTreeSet::new();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        ports.extend(listening_ports(pid));
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("demo --quick did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out_thread.join().unwrap();
    let stderr = err_thread.join().unwrap();
    eprintln!(
        "demo --quick took {:.1} s\n{stderr}\n{stdout}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(status.code(), Some(0), "{stderr}");

    // Progress went to stderr, stage by stage.
    for stage in ["[1/4]", "[2/4]", "[3/4]", "[4/4]"] {
        assert!(stderr.contains(stage), "progress {stage} missing: {stderr}");
    }

    // Reports: present, printed, self-contained.
    for name in ["report.html", "spike.html", "soak.html"] {
        let path = out.path().join(name);
        let html =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(html.len() > 10_000, "{name} is {} bytes", html.len());
        assert!(html.contains("<script"), "{name} has its charts inline");
        let remote = remote_loads(&html);
        assert!(
            remote.is_empty(),
            "{name} loads from the network: {remote:?}"
        );
        assert!(
            stdout.contains(&format!("report: {}", path.display())),
            "the path of {name} is printed: {stdout}"
        );
    }

    // The recording is Parquet, and the run directories have results.
    let recording = out.path().join("recording");
    assert!(
        !files_named(&recording, "requests-", ".parquet").is_empty(),
        "no requests-*.parquet in {}",
        recording.display()
    );
    assert!(
        files_named(&recording, "", ".tmp").is_empty(),
        "every file closed"
    );
    assert!(
        stdout.contains(&recording.display().to_string()),
        "{stdout}"
    );
    for run in ["capacity", "spike", "soak"] {
        let dir = out.path().join(run);
        assert!(
            !files_named(&dir, "results-", ".parquet").is_empty(),
            "{run}"
        );
        assert!(dir.join("summary.json").exists(), "{run}");
    }

    // The soak's planted leak is found, in the soak's section of the summary.
    let soak = stdout
        .split("── ")
        .find(|s| s.starts_with("soak"))
        .unwrap_or_else(|| panic!("no soak section: {stdout}"));
    assert!(
        soak.to_ascii_lowercase().contains("memory leak"),
        "soak verdicts name the leak: {soak}"
    );
    // …and the capacity run (no leak planted, load varying) is not called a leak.
    let capacity = stdout
        .split("── ")
        .find(|s| s.starts_with("capacity"))
        .unwrap();
    assert!(
        !capacity.to_ascii_lowercase().contains("memory leak"),
        "{capacity}"
    );

    eprintln!("ports the demo listened on: {ports:?}");
    // Nothing left running: every port the demo listened on (sims, proxy) now refuses.
    assert!(
        !ports.is_empty(),
        "saw no listening socket of the demo (pid {pid}) while it ran"
    );
    for port in &ports {
        let refused = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], *port)),
            Duration::from_secs(2),
        )
        .is_err();
        assert!(refused, "port {port} still accepts after the demo exited");
    }
}
