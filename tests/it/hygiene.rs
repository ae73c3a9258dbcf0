//! Input hygiene through the real binary: names with control bytes, duplicate keys, and
//! timestamps outside the accepted window are refused, counted, and never stored.

use crate::harness::*;

const HOUR_NS: i64 = 3600 * 1_000_000_000;

// See: issue 10 ("pin `stats` to nonsense with a reading at timestamp i64::MAX").
#[test]
fn timestamps_outside_the_window_are_refused_and_counted() {
    let store = TempStore::new();
    let mut server = Server::start_on(
        "127.0.0.1:0",
        &store.url(),
        &["--max-future-timestamp", "1h"],
    );
    let now = sensorlink::timefmt::now_ns();
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"ping\n");
    assert_eq!(peer.line(), "pong");
    let lines = format!(
        "m,sensor=a v=1i -1\n\
         m,sensor=a v=2i {far}\n\
         m,sensor=a v=3i {max}\n\
         m,sensor=a v=4i {near}\n\
         m,sensor=a v=5i 0\n\
         m,sensor=a v=6i\n\
         sync t\n",
        far = now + 2 * HOUR_NS,
        max = i64::MAX,
        near = now + HOUR_NS / 2,
    );
    peer.send(lines.as_bytes());
    assert_eq!(
        peer.line(),
        "error 2 timestamp -1 out of range: before 1970"
    );
    let far = peer.line();
    assert!(
        far.starts_with(&format!(
            "error 3 timestamp {} out of range: more than 1h in the future",
            now + 2 * HOUR_NS
        )),
        "{far}"
    );
    assert!(peer
        .line()
        .starts_with("error 4 timestamp 9223372036854775807 out of range"));
    let ack = peer.line();
    assert!(ack.starts_with("ack t readings=3 rejected=3"), "{ack}");
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("sensorlink_lines_rejected_total{reason=\"timestamp_out_of_range\"} 3"),
        "{metrics}"
    );
    drop(peer);
    assert!(server.terminate().success());
    let mut stored: Vec<i64> = store
        .rows(&[])
        .iter()
        .filter_map(|row| row["fields"]["v"].as_i64())
        .collect();
    stored.sort_unstable();
    assert_eq!(stored, vec![4, 5, 6]);
}

// See: issue 10 ("Input hygiene").
#[test]
fn control_bytes_and_duplicate_keys_are_refused() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"ping\n");
    assert_eq!(peer.line(), "pong");
    peer.send(
        b"m\0x,sensor=a v=1i 1\n\
          m,sensor=a,sensor=b v=1i 2\n\
          m,sensor=a v=1i,v=2i 3\n\
          m,sensor=\x1b[31ma v=1i 4\n\
          m,sensor=a v=7i 5\n\
          sync t\n",
    );
    assert_eq!(
        peer.line(),
        "error 2 invalid reading: measurement \"m\\0x\": control character 0x00"
    );
    assert_eq!(
        peer.line(),
        "error 3 invalid reading: duplicate tag \"sensor\""
    );
    assert_eq!(
        peer.line(),
        "error 4 invalid reading: duplicate field \"v\""
    );
    assert_eq!(
        peer.line(),
        "error 5 invalid reading: tag \"sensor\" value \"\\u{1b}[31ma\": control character 0x1b"
    );
    assert!(peer.line().starts_with("ack t readings=1 rejected=4"));
    drop(peer);
    assert!(server.terminate().success());
    let rows = store.rows(&[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["fields"]["v"], 7);
}
