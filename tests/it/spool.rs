//! Exactly-once delivery with `--spool`: server crashes and client restarts lose nothing and
//! store nothing twice.

use std::collections::BTreeMap;
use std::process::Stdio;

use crate::harness::*;

/// Values in the store for `sensor`, with how often each is stored.
fn stored_values(store: &TempStore, sensor: &str) -> BTreeMap<i64, usize> {
    let mut values = BTreeMap::new();
    for row in store.rows(&["--sensor", sensor]) {
        *values
            .entry(row["fields"]["value"].as_i64().unwrap())
            .or_insert(0) += 1;
    }
    values
}

/// Wait until the client's stdout (a file it writes to) has `n` events of kind `event`.
fn wait_for_events(path: &std::path::Path, event: &str, n: usize) {
    if !poll_until(PATIENCE, || count_events(path, event) >= n) {
        panic!(
            "client never reached {n} {event:?} events:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }
}

#[test]
fn server_killed_twice_mid_run_store_holds_exactly_what_the_client_produced() {
    let store = TempStore::new();
    let spool = tempfile::tempdir().unwrap();
    let out_path = spool.path().join("client.out");
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    let count = 60;
    let child = bin()
        .args([
            "client",
            "--link-report",
            "0",
            &server.addr.to_string(),
            "--count",
            &count.to_string(),
            "--interval",
            "25ms",
            "--sensor",
            "eo",
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
    for round in 1..=2 {
        wait_for_events(&out_path, "ack", 15 * round);
        let disconnects = count_events(&out_path, "disconnected");
        server.kill();
        // An outage, not a blip: the client lost the connection and then failed to
        // reconnect at least once, so readings it produced meanwhile wait in the spool.
        wait_for_events(&out_path, "disconnected", disconnects + 2);
        server = Server::restart_on(server.addr, &store.url(), &["-q"]);
    }
    let out = wait_output(child);
    let stdout = std::fs::read(&out_path).unwrap();
    let summary = summary(&stdout);
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(summary["acked"], count);
    assert!(summary["reconnects"].as_u64().unwrap() >= 2, "{summary}");
    assert!(server.terminate().success());

    let expected: BTreeMap<i64, usize> = (0..count).map(|i| (102 + 2 * i, 1)).collect();
    assert_eq!(
        stored_values(&store, "eo"),
        expected,
        "every reading exactly once"
    );
}

/// The client itself is killed: a new client on the same spool resends what was not acked,
/// with its original timestamps, and the server keeps one copy of each.
#[test]
fn client_restart_replays_the_spool() {
    let store = TempStore::new();
    let spool = tempfile::tempdir().unwrap();
    let queue = spool.path().join("q");
    // No server at all: the first client spools everything. The spool, not the address,
    // carries the readings over to the second client.
    let first = bin()
        .args([
            "client",
            "--link-report",
            "0",
            UNREACHABLE_ADDR,
            "--count",
            "5",
            "--interval",
            "10ms",
            "--sensor",
            "rs",
            "--spool",
            queue.to_str().unwrap(),
            "--timeout",
            "1s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(first);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "server unreachable: {stderr}");
    assert!(
        stderr.contains(&format!("cannot reach {UNREACHABLE_ADDR}")),
        "{stderr}"
    );

    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    let out = run(bin().args([
        "client",
        "--link-report",
        "0",
        &server.addr.to_string(),
        "--count",
        "3",
        "--interval",
        "10ms",
        "--sensor",
        "rs",
        "--spool",
        queue.to_str().unwrap(),
        "--json",
    ]));
    let summary = summary(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(summary["replayed"], 5, "{summary}");
    assert_eq!(summary["acked"], 8, "{summary}");
    assert_eq!(summary["pending"], 0, "{summary}");
    assert!(server.terminate().success());
    // 5 from the first run (102…110), then the counter starts again at 102 with new timestamps.
    let values = stored_values(&store, "rs");
    assert_eq!(values.values().sum::<usize>(), 8, "{values:?}");
}

/// A spool cut short by a power failure: the good records are sent, the damage is reported.
#[test]
fn truncated_spool_is_recovered_and_the_damage_reported() {
    let store = TempStore::new();
    let spool = tempfile::tempdir().unwrap();
    let queue = spool.path().join("q");
    let out = run(bin().args([
        "client",
        "--link-report",
        "0",
        UNREACHABLE_ADDR,
        "--count",
        "4",
        "--interval",
        "5ms",
        "--sensor",
        "tr",
        "--spool",
        queue.to_str().unwrap(),
        "--timeout",
        "500ms",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach {UNREACHABLE_ADDR}")),
        "{stderr}"
    );
    // Cut the last record in half, as a power cut mid-write would.
    let segment = std::fs::read_dir(&queue)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a spool segment");
    let len = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    file.set_len(len - 10).unwrap();
    drop(file);

    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    let out = run(bin().args([
        "client",
        "--link-report",
        "0",
        &server.addr.to_string(),
        "--count",
        "0",
        "--sensor",
        "tr",
        "--spool",
        queue.to_str().unwrap(),
        "--json",
    ]));
    let events = json_lines(&out.stdout);
    assert!(
        events.iter().any(|e| e["event"] == "spool_damage"),
        "{events:?}"
    );
    let summary = summary(&out.stdout);
    assert_eq!(summary["replayed"], 3, "{summary}");
    assert_eq!(summary["acked"], 3, "{summary}");
    assert!(server.terminate().success());
    assert_eq!(stored_values(&store, "tr").len(), 3);
}

/// One client per spool: a second one on the same directory is refused with a message
/// naming it, and once the first dies (SIGKILL: no cleanup) the kernel has released its lock.
#[test]
fn a_second_client_on_a_spool_in_use_is_refused_until_the_first_is_gone() {
    let server = Server::start(&["-q"]);
    let addr = server.addr.to_string();
    let spool = tempfile::tempdir().unwrap();
    let queue = spool.path().join("q");
    let queue_arg = queue.to_str().unwrap();
    let out_path = spool.path().join("first.out");
    let mut first = KillOnDrop(
        bin()
            .args(["client", &addr, "--interval", "20ms", "--sensor", "lk"])
            .args(["--spool", queue_arg, "--json"])
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // An ack means the first client has opened the spool (it spools before sending).
    wait_for_events(&out_path, "ack", 1);

    let client = |extra: &[&str]| {
        run(bin()
            .args(["client", &addr, "--count", "1", "--sensor", "lk"])
            .args(["--spool", queue_arg])
            .args(extra))
    };
    let out = client(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("spool {} is in use", queue.display())),
        "{stderr}"
    );

    first.kill();
    let out = client(&["--json"]);
    let summary = summary(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{summary}");
    assert_eq!(summary["pending"], 0, "{summary}");
}
