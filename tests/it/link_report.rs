//! `sensorlink client --link-report`: the link's health is stored as `sensorlink_link`
//! readings (read back with `sensorlink query`), with the contract's fields and types, and a
//! fault (a server that stops answering for a while) shows in a later report.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;

/// Every field a link report has; the `rtt_*` ones only when its interval had an ack.
const COUNTS: [&str; 5] = ["sent", "acked", "lost", "timeouts", "reconnects"];
const RTTS: [&str; 3] = ["rtt_p50_ms", "rtt_p99_ms", "rtt_max_ms"];
/// The kernel's figures (`TCP_INFO`), when the report was made on a live connection.
const TCP_FLOATS: [&str; 3] = ["tcp_srtt_ms", "tcp_rttvar_ms", "tcp_min_rtt_ms"];
const TCP_COUNTS: [&str; 2] = ["tcp_retrans", "tcp_cwnd"];

/// Checks one stored link report's fields: names, and types (counts are `i` integers,
/// the rest floats).
fn assert_link_fields(row: &serde_json::Value) {
    let fields = row["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("fields of {row}"));
    assert!(fields["interval_s"].is_f64(), "{row}");
    for name in COUNTS {
        assert!(fields[name].is_i64(), "{name} is an integer: {row}");
    }
    let rtts: Vec<_> = RTTS.iter().filter(|n| fields.contains_key(**n)).collect();
    assert!(rtts.is_empty() || rtts.len() == 3, "all or none: {row}");
    for name in rtts {
        assert!(fields[*name].is_f64(), "{name} is a float: {row}");
    }
    let tcp: Vec<_> = TCP_FLOATS
        .iter()
        .chain(&TCP_COUNTS)
        .filter(|n| fields.contains_key(**n))
        .collect();
    for name in &tcp {
        let is_count = TCP_COUNTS.contains(name);
        assert!(
            if is_count {
                fields[**name].is_i64()
            } else {
                fields[**name].is_f64()
            },
            "{name}'s type: {row}"
        );
    }
    assert_eq!(
        fields.len(),
        1 + COUNTS.len()
            + if fields.contains_key("rtt_p50_ms") {
                3
            } else {
                0
            }
            + tcp.len()
    );
}

fn sum(rows: &[serde_json::Value], name: &str) -> i64 {
    rows.iter()
        .map(|r| {
            r["fields"][name]
                .as_i64()
                .unwrap_or_else(|| panic!("{name}: {r}"))
        })
        .sum()
}

#[test]
fn link_reports_are_stored_as_readings_with_the_contract_fields() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "20",
        "--interval",
        "20ms",
        "--link-report",
        "150ms",
        "--sensor",
        "lr",
        "--json",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = summary(&out.stdout);
    assert_eq!(
        summary["sent"], 20,
        "link reports are not readings: {summary}"
    );
    assert!(server.terminate().success());

    let links = store.rows(&["--sensor", "lr", "--measurement", "sensorlink_link"]);
    assert!(
        links.len() >= 2,
        "periodic reports and a last one: {links:?}"
    );
    assert_eq!(summary["link_reports_sent"], links.len(), "{summary}");
    assert_eq!(summary["link_reports_acked"], links.len(), "{summary}");
    for row in &links {
        assert_eq!(row["sensor"], "lr");
        assert_link_fields(row);
    }
    assert_eq!(sum(&links, "sent"), 20);
    assert_eq!(sum(&links, "acked"), 20);
    for name in ["lost", "timeouts", "reconnects"] {
        assert_eq!(sum(&links, name), 0, "{name}: {links:?}");
    }
    assert!(
        links
            .iter()
            .any(|r| r["fields"]["rtt_p99_ms"].as_f64().is_some_and(|v| v > 0.0)),
        "{links:?}"
    );
    // Every report was made on the live connection: the kernel's figures are all there.
    for row in &links {
        for name in TCP_FLOATS.iter().chain(&TCP_COUNTS) {
            assert!(row["fields"].get(*name).is_some(), "{name}: {row}");
        }
        assert!(row["fields"]["tcp_srtt_ms"]
            .as_f64()
            .is_some_and(|v| v > 0.0));
        assert!(row["fields"]["tcp_cwnd"].as_i64().is_some_and(|v| v > 0));
    }
    // Loopback can retransmit too (a tail-loss probe when the machine is busy), so the
    // figure is not asserted to be 0. The reports' deltas are within the run's total: the
    // total also counts what was retransmitted after the last report was made (that
    // report's own segment, for one).
    let total = summary["tcp"]["retransmits"]
        .as_i64()
        .expect("tcp.retransmits");
    assert!(sum(&links, "tcp_retrans") <= total, "{links:?} {summary}");
    // The readings themselves are untouched.
    assert_eq!(
        store
            .rows(&["--sensor", "lr", "--measurement", "reading"])
            .len(),
        20
    );
}

/// The server stops answering (SIGSTOP) for longer than the reply timeout: the client
/// times out, reconnects once the server is back (SIGCONT), and resends. A report after the
/// first shows the timeouts and the reconnect; nothing is lost. The run's picture marks them.
#[test]
fn a_stalled_server_shows_as_timeouts_and_reconnects_in_a_later_report() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let report_dir = tempfile::tempdir().unwrap();
    let picture = report_dir.path().join("client-report-fault.svg");
    let child = bin()
        .args([
            "client",
            &server.addr.to_string(),
            "--count",
            "40",
            "--interval",
            "25ms",
            "--timeout",
            "300ms",
            "--drain-timeout",
            "20s",
            "--max-backoff",
            "100ms",
            "--link-report",
            "200ms",
            "--sensor",
            "stall",
            "--json",
            "--report",
            picture.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stored = || {
        try_query_json(
            &store.url(),
            &["--sensor", "stall", "--measurement", "reading"],
        )
        .map_or(0, |r| r.len())
    };
    wait_for(
        || stored() >= 5,
        PATIENCE,
        "5 of the client's readings stored",
    );
    // SAFETY: plain signals to our own child, by its PID.
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGSTOP) }, 0);
    // Several reply timeouts' worth (the wait is the fault itself, not a guess at a race).
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(unsafe { libc::kill(server.pid(), libc::SIGCONT) }, 0);
    let out = wait_output(child);
    let summary = summary(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(summary["acked"], 40);
    assert!(summary["timeouts"].as_u64().unwrap() >= 1, "{summary}");
    assert!(summary["reconnects"].as_u64().unwrap() >= 1, "{summary}");
    assert!(server.terminate().success());

    let links = store.rows(&["--sensor", "stall", "--measurement", "sensorlink_link"]);
    for row in &links {
        assert_link_fields(row);
    }
    assert_eq!(sum(&links, "acked"), 40, "{links:?}");
    assert_eq!(sum(&links, "sent"), 40, "{links:?}");
    assert_eq!(sum(&links, "lost"), 0);
    let later = &links[1..];
    assert!(sum(later, "timeouts") >= 1, "{links:?}");
    assert!(sum(later, "reconnects") >= 1, "{links:?}");
    assert_eq!(
        sum(&links, "reconnects"),
        summary["reconnects"].as_i64().unwrap()
    );

    // The picture marks the timeouts and the reconnect (their colours, see plot/client.rs).
    let svg = std::fs::read_to_string(&picture).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let stroked = |colour: &str| {
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline") && n.attribute("stroke") == Some(colour))
            .count()
    };
    assert!(stroked("#E68C00") >= 2, "timeout lines and their legend");
    assert!(stroked("#8200A0") >= 2, "reconnect lines and their legend");
    crate::report::keep_for_readme(&picture, "client-report-fault.svg");
}

/// With `--spool` and `--link-report 200ms`, the server killed mid-run and restarted: every
/// user reading is stored exactly once, and the store holds exactly the link reports the
/// client counts as acked (resent reports deduplicate like readings).
#[test]
fn with_a_spool_and_a_server_kill_reports_and_readings_are_each_stored_once() {
    let store = TempStore::new();
    let spool = tempfile::tempdir().unwrap();
    let out_path = spool.path().join("client.out");
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    let count = 40;
    let child = bin()
        .args([
            "client",
            &server.addr.to_string(),
            "--count",
            &count.to_string(),
            "--interval",
            "25ms",
            "--link-report",
            "200ms",
            "--sensor",
            "lrs",
            "--spool",
            spool.path().join("q").to_str().unwrap(),
            "--max-backoff",
            "100ms",
            "--json",
        ])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        || count_events(&out_path, "ack") >= 10,
        PATIENCE,
        "10 of the client's readings acked",
    );
    let disconnects = count_events(&out_path, "disconnected");
    server.kill();
    // An outage: the connection lost, then a reconnect refused.
    wait_for(
        || count_events(&out_path, "disconnected") >= disconnects + 2,
        PATIENCE,
        "the client to see the outage",
    );
    server = Server::restart_on(server.addr, &store.url(), &["-q"]);
    let out = wait_output(child);
    let stdout = std::fs::read(&out_path).unwrap();
    let summary = summary(&stdout);
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(summary["acked"], count);
    assert!(summary["reconnects"].as_u64().unwrap() >= 1, "{summary}");
    assert!(server.terminate().success());

    let readings = store.rows(&["--sensor", "lrs", "--measurement", "reading"]);
    let mut values: Vec<i64> = readings
        .iter()
        .map(|r| r["fields"]["value"].as_i64().unwrap())
        .collect();
    values.sort_unstable();
    let expected: Vec<i64> = (0..count).map(|i| 102 + 2 * i).collect();
    assert_eq!(values, expected, "every user reading exactly once");
    let links = store.rows(&["--sensor", "lrs", "--measurement", "sensorlink_link"]);
    assert!(links.len() >= 2, "{links:?}");
    assert_eq!(summary["link_reports_acked"], links.len(), "{summary}");
    for row in &links {
        assert_link_fields(row);
    }
    assert_eq!(sum(&links, "acked"), count, "{links:?}");
    assert!(sum(&links, "reconnects") >= 1, "{links:?}");
}
