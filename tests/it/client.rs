//! `sensorlink client` against the real server: summaries, exit codes, sources, reconnects.

use std::process::Stdio;

use crate::harness::*;

#[test]
fn client_reports_every_reading_and_a_ping_style_summary() {
    let server = Server::start(&[]);
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "5",
        "--interval",
        "20ms",
        "--sensor",
        "s1",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("connected to "), "{stdout}");
    for (seq, value) in [(1, 102), (2, 104), (3, 106), (4, 108), (5, 110)] {
        assert!(
            stdout.contains(&format!("seq={seq} value={value} acked time=")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("5 sent, 5 acked, 0 lost, 0.0% loss"),
        "{stdout}"
    );
    // The summary's numbers, not its labels: min ≤ avg ≤ max, each reading's own time inside
    // [min, max], and the percentiles ordered inside it too (hdrhistogram rounds to ~0.1 %).
    let [min, _avg, max, _mdev] = ping_rtt(&stdout);
    let times: Vec<f64> = stdout
        .lines()
        .filter_map(|l| {
            l.split_once(" acked time=")?
                .1
                .split_once(" ms")?
                .0
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(times.len(), 5, "{stdout}");
    for t in &times {
        assert!(min <= *t && *t <= max, "{t} outside {min}..{max}: {stdout}");
    }
    let percentiles: Vec<f64> = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("rtt p50/p90/p99/p99.9 = ")?
                .strip_suffix(" ms")
        })
        .unwrap_or_else(|| panic!("no percentile line: {stdout}"))
        .split('/')
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{v:?}: {e}")))
        .collect();
    assert_eq!(percentiles.len(), 4, "{stdout}");
    assert!(percentiles.windows(2).all(|w| w[0] <= w[1]), "{stdout}");
    let slack = max * 0.002 + 0.001;
    assert!(
        percentiles[0] >= min - slack && percentiles[3] <= max + slack,
        "{percentiles:?} outside {min}..{max}"
    );
}

#[test]
fn client_json_events_and_summary() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let out = run(bin().args([
        "client",
        "--link-report",
        "0",
        &server.addr.to_string(),
        "--count",
        "4",
        "--interval",
        "10ms",
        "--json",
        "--sensor",
        "js",
        "--source",
        "random",
    ]));
    assert!(out.status.success());
    let events = json_lines(&out.stdout);
    assert_eq!(events[0]["event"], "start");
    assert_eq!(events[1]["event"], "connected");
    let acks: Vec<_> = events.iter().filter(|e| e["event"] == "ack").collect();
    assert_eq!(acks.len(), 4);
    for ack in &acks {
        assert!(ack["rtt_us"].as_f64().unwrap() > 0.0);
        assert!(ack["store_us"].as_u64().is_some(), "{ack}");
    }
    let summary = summary(&out.stdout);
    assert_eq!(summary["sent"], 4);
    assert_eq!(summary["acked"], 4);
    assert_eq!(summary["lost"], 0);
    assert_eq!(summary["loss_percent"], 0.0);
    assert_eq!(summary["rtt"]["count"], 4);
    for key in [
        "min_us", "avg_us", "max_us", "mdev_us", "p50_us", "p90_us", "p99_us", "p999_us",
    ] {
        assert!(summary["rtt"][key].is_number(), "{key}");
    }
    assert!(summary["connect_us"].as_f64().unwrap() > 0.0);
    assert!(server.terminate().success());
    assert_eq!(store.rows(&["--sensor", "js"]).len(), 4);
}

#[test]
fn unreachable_server_exits_2() {
    // Port 1 on loopback: nothing listens there, the kernel refuses at once.
    let out = run(bin().args([
        "client",
        "127.0.0.1:1",
        "--count",
        "1",
        "--timeout",
        "300ms",
    ]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach 127.0.0.1:1"));
}

#[test]
fn usage_error_exits_2() {
    let out = run(bin().args(["client", "--source", "nonsense"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'nonsense' for '--source")
            && stderr.contains("expected counter, random, exec:CMD, file:PATH or stdin"),
        "{stderr}"
    );
}

#[test]
fn stdin_and_exec_sources_send_their_lines() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let mut child = bin()
        .args([
            "client",
            "--link-report",
            "0",
            &server.addr.to_string(),
            "--source",
            "stdin",
            "--sensor",
            "in",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"1.5\n7\n-3\n").unwrap();
    }
    let out = wait_output(child);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&out.stdout)["acked"], 3);

    let out = run(bin().args([
        "client",
        "--link-report",
        "0",
        &server.addr.to_string(),
        "--source",
        "exec:printf '10\\n20\\n'",
        "--count",
        "4",
        "--interval",
        "10ms",
        "--sensor",
        "ex",
        "--json",
    ]));
    assert!(out.status.success());
    assert!(server.terminate().success());
    let values = |sensor: &str| -> Vec<String> {
        store
            .rows(&["--sensor", sensor])
            .iter()
            .map(|r| r["fields"]["value"].to_string())
            .collect()
    };
    assert_eq!(values("in"), vec!["1.5", "7", "-3"]);
    assert_eq!(values("ex"), vec!["10", "20", "10", "20"]);
}

#[test]
fn file_source_rereads_the_file() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("temp");
    std::fs::write(&path, "42000\n").unwrap();
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--source",
        &format!("file:{}", path.display()),
        "--count",
        "2",
        "--interval",
        "10ms",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("seq=2 value=42000 acked"), "{stdout}");
}

/// The server goes away mid-run and comes back on the same port: the client reconnects
/// with backoff, resends what was not acknowledged, and loses nothing.
#[test]
fn client_reconnects_after_server_restart() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let addr = server.addr;
    let child = bin()
        .args([
            "client",
            "--link-report",
            "0",
            &addr.to_string(),
            "--count",
            "30",
            "--interval",
            "50ms",
            "--timeout",
            "10s",
            "--max-backoff",
            "200ms",
            "--json",
            "--sensor",
            "rc",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill mid-run, once some of the client's readings are stored; restart on its port.
    let stored = || try_query_json(&store.url(), &["--sensor", "rc"]).map_or(0, |r| r.len());
    wait_for(
        || stored() >= 3,
        PATIENCE,
        "3 of the client's readings stored",
    );
    server.kill();
    let mut server = Server::restart_on(addr, &store.url(), &[]);
    let out = wait_output(child);
    let summary = summary(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(summary["acked"], 30);
    assert!(summary["reconnects"].as_u64().unwrap() >= 1, "{summary}");
    let events = json_lines(&out.stdout);
    assert!(events.iter().any(|e| e["event"] == "disconnected"));
    assert!(server.terminate().success());
    let mut values: Vec<i64> = store
        .rows(&["--sensor", "rc"])
        .iter()
        .map(|r| r["fields"]["value"].as_i64().unwrap())
        .collect();
    values.sort();
    assert_eq!(values, (0..30).map(|i| 102 + 2 * i).collect::<Vec<_>>());
}

/// No ack within the timeout: `lost`, exit code 1.
#[test]
fn missing_acks_are_reported_lost_and_exit_1() {
    // A server that accepts, answers the first ping, then never answers again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming().take(8) {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                if matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                    let _ = conn.write_all(b"pong connect\n");
                }
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let out = run(bin().args([
        "client",
        &addr.to_string(),
        "--count",
        "1",
        "--timeout",
        "300ms",
        "--json",
    ]));
    assert_eq!(out.status.code(), Some(1));
    let events = json_lines(&out.stdout);
    assert!(
        events.iter().any(|e| e["event"] == "lost" && e["seq"] == 1),
        "{events:?}"
    );
    let summary = summary(&out.stdout);
    assert_eq!(summary["lost"], 1);
    assert_eq!(summary["loss_percent"], 100.0);
}

/// Ctrl-C (SIGINT) ends the run with the summary, like ping.
#[test]
fn sigint_prints_the_summary() {
    let server = Server::start(&[]);
    let child = bin()
        .args([
            "client",
            &server.addr.to_string(),
            "--interval",
            "20ms",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the client is at work: its first reading reached the server.
    server.wait_for_log("Received: ");
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = wait_output(child);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = summary(&out.stdout);
    let sent = summary["sent"].as_u64().unwrap();
    assert!(sent >= 1);
    assert_eq!(summary["acked"].as_u64().unwrap(), sent);
}
