//! `sensorlink query` and `sensorlink stats` on a real store written by a real server.

use crate::harness::*;

fn store_with_readings() -> TempStore {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(
        b"env,sensor=a temp=20.5,hum=40i 1000000000\n\
          env,sensor=a temp=21 2000000000\n\
          env,sensor=b,room=lab temp=19.25,note=\"x, \\\"y\\\"\" 1500000000\n\
          door,sensor=b open=t 3000000000\n\
          sync q\n",
    );
    assert!(peer.line().starts_with("ack q readings=4"));
    drop(peer);
    assert!(server.terminate().success());
    store
}

#[test]
fn query_filters_and_formats() {
    let store = store_with_readings();
    // Time filters: --since inclusive, --until exclusive, RFC 3339 or ns.
    let rows = store.rows(&["--since", "1970-01-01T00:00:01.5Z", "--until", "3000000000"]);
    let times: Vec<i64> = rows
        .iter()
        .map(|r| r["timestamp_ns"].as_i64().unwrap())
        .collect();
    assert_eq!(times, vec![1_500_000_000, 2_000_000_000]);
    assert_eq!(store.rows(&["--measurement", "door"]).len(), 1);
    assert_eq!(store.rows(&["--limit", "2"]).len(), 2);

    let csv = run(bin().args([
        "query",
        "--store",
        &store.url(),
        "--format",
        "csv",
        "--sensor",
        "b",
    ]));
    assert!(csv.status.success());
    let text = String::from_utf8(csv.stdout).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("time,"), "{header}");
    assert!(
        header.contains("temp") && header.contains("note") && header.contains("open"),
        "{header}"
    );
    let first = lines.next().unwrap();
    assert!(
        first.contains("\"x, \"\"y\"\"\""),
        "RFC 4180 quoting: {first}"
    );
    assert_eq!(lines.count(), 1);

    let table = run(bin().args(["query", "--store", &store.url()]));
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.lines().next().unwrap().starts_with("time"), "{text}");
    assert_eq!(
        text.lines().count(),
        5,
        "header + 4 readings (one row per reading): {text}"
    );
    assert!(text.contains("temp=20.5 hum=40i"), "{text}");
}

#[test]
fn stats_per_sensor() {
    let store = store_with_readings();
    let out = run(bin().args(["stats", "--store", &store.url(), "--format", "json"]));
    assert!(out.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stats = stats.as_array().unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0]["sensor"], "a");
    assert_eq!(stats[0]["readings"], 2);
    assert_eq!(stats[1]["sensor"], "b");
    assert_eq!(stats[1]["readings"], 2);
    let table = run(bin().args(["stats", "--store", &store.url()]));
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("open=true") || text.contains("open=t"),
        "{text}"
    );
}

#[test]
fn query_of_a_bad_or_missing_store_fails_clearly() {
    let out = run(bin().args(["query", "--store", "nonsense:x"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid store URL"));

    // Reading never creates a database.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.db");
    let out = run(bin().args(["stats", "--store", &format!("sqlite:{}", path.display())]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such store"));
    assert!(!path.exists());
}

/// `query` and `stats` read beside a running server (their own read-only connection,
/// WAL): every acknowledged reading is visible at once, nothing is created or locked.
#[test]
fn query_reads_the_store_of_a_running_server() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"env,sensor=a temp=1 1000000000\nsync q\n");
    assert!(peer.line().starts_with("ack q readings=1"));
    let rows = store.rows(&[]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["fields"]["temp"], 1.0);

    // The server goes on writing after the reads.
    peer.send(b"env,sensor=b temp=2 2000000000\nenv,sensor=a temp=3 3000000000\nsync r\n");
    assert!(peer.line().starts_with("ack r readings=2"));
    let times: Vec<i64> = store
        .rows(&[])
        .iter()
        .map(|r| r["timestamp_ns"].as_i64().unwrap())
        .collect();
    assert_eq!(times, vec![1_000_000_000, 2_000_000_000, 3_000_000_000]);
    // Stats come from per-series totals the writer folds in at most a second after the
    // commit (when it goes idle, here): they appear without the server stopping.
    let stats = || {
        let out = run(bin().args(["stats", "--store", &store.url(), "--format", "json"]));
        assert!(out.status.success());
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let mut last = serde_json::Value::Null;
    let fresh = poll_until(PATIENCE, || {
        last = stats();
        last[0]["readings"] == 2 && last[1]["readings"] == 1
    });
    assert!(fresh, "stats never caught up: {last}");
    assert_eq!(last[0]["sensor"], "a");
    assert_eq!(last[0]["last_fields"]["temp"], 3.0);
    drop(peer);
    assert!(server.terminate().success());
}
