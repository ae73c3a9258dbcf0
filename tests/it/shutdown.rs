//! Graceful shutdown and durability across restarts.

use crate::harness::*;

/// SIGTERM: stop accepting, finish what was received, flush the store, exit 0.
#[test]
fn sigterm_finishes_received_readings_and_flushes() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let mut peer = LinePeer::new(server.addr);
    let mut burst = Vec::new();
    for i in 0..5000 {
        burst.extend_from_slice(format!("sd,sensor=g v={i}i {i}\n").as_bytes());
    }
    burst.extend_from_slice(b"sync last\n");
    peer.send(&burst);
    assert!(peer.line().starts_with("ack last readings=5000"));
    // Written but never synced; the `pong` behind it shows the server has read it.
    peer.send(b"sd,sensor=g v=-1i 99999\nping read\n");
    assert_eq!(peer.line(), "pong read");
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    assert!(server.stderr().contains("store flushed"));
    assert_eq!(store.rows(&["--sensor", "g"]).len(), 5001);
}

#[test]
fn readings_survive_a_restart_and_duplicates_are_not_stored_twice() {
    let store = TempStore::new();
    for round in 0..2 {
        let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
        let mut peer = LinePeer::new(server.addr);
        peer.send(b"r,sensor=d v=1i 1000\nr,sensor=d v=2i 2000\nsync a\n");
        assert!(peer.line().starts_with("ack a readings=2"), "round {round}");
        drop(peer);
        assert!(server.terminate().success());
    }
    assert_eq!(store.rows(&["--sensor", "d"]).len(), 2);
}

/// `--log-format json`: every log line on stderr is one JSON object.
#[test]
fn json_logs() {
    let mut server = Server::start(&["--log-format", "json"]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"j,sensor=a v=1i 1\nsync a\n");
    assert!(peer.line().starts_with("ack a"));
    drop(peer);
    assert!(server.terminate().success());
    let log = server.stderr();
    assert!(log.contains("Received: j,sensor=a v=1i 1"), "{log}");
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(value["level"].is_string());
    }
}
