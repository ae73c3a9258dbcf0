//! Input hygiene through the real binary: names with control bytes, duplicate keys, and
//! timestamps outside the accepted window are refused, counted, and never stored.

use std::io::{Read as _, Write};
use std::time::Duration;

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

/// A seed reading written in pieces: after `ping`, and one byte at a time.
const SEED_READING: &[u8] = b"ping / ('2026-11-24 11:46:25.123456', 102)";

/// The quiet period a bare `ping` is held for in these tests: far longer than any pause
/// between pieces, however slow the machine, so no piece is taken for a bare ping by
/// accident. (The default 100 ms answer is tested on a paused clock in
/// `server::connection`'s unit tests.)
const QUIET: &str = "30s";

/// Write `pieces` with a short pause between them, so each reaches the server in its own
/// read (well under the quiet period for a bare `ping`).
fn write_in_pieces(stream: &mut std::net::TcpStream, pieces: &[&[u8]], pause: Duration) {
    for piece in pieces {
        stream.write_all(piece).expect("write piece");
        stream.flush().expect("flush");
        std::thread::sleep(pause);
    }
}

// See: issue 10 ("Legacy framing: a reading cut by TCP right after `ping` (`ping` |
// ` / ('…', 102)`) is today answered twice with `pong` and not stored").
#[test]
fn legacy_reading_cut_after_ping_is_stored_once_and_answered_once() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["--legacy-ping-quiet", QUIET]);
    let mut seed = server.connect();
    let (head, tail) = SEED_READING.split_at(4);
    write_in_pieces(&mut seed, &[head, tail], Duration::from_millis(10));
    assert_eq!(read_n(&mut seed, 4), b"pong");
    assert_silent(&mut seed);

    // One byte at a time: still one reading, one `pong`.
    let bytes: Vec<&[u8]> = SEED_READING
        .chunks(1)
        .chain([&b"ping / ('2026-11-24 11:46:26', 104)"[..]])
        .collect();
    write_in_pieces(&mut seed, &bytes, Duration::from_millis(1));
    assert_eq!(read_n(&mut seed, 8), b"pongpong");
    assert_silent(&mut seed);

    // A bare `ping` then end of input: answered (once) at the end.
    seed.write_all(b"ping").expect("write ping");
    seed.shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    let mut rest = Vec::new();
    seed.read_to_end(&mut rest).expect("read until closed");
    assert_eq!(rest, b"pong");
    drop(seed);
    assert!(server.terminate().success());
    let values: Vec<i64> = store
        .rows(&[])
        .iter()
        .filter_map(|row| row["fields"]["value"].as_i64())
        .collect();
    // The dripped copy of 102 has the same series and timestamp: stored once.
    assert_eq!(values, vec![102, 104]);
}

// See: issue 10 review ("out-of-window legacy readings are refused and pong'ed with no log
// line"): refused like line mode, with the same rate-limited warning and count.
#[test]
fn legacy_reading_outside_the_window_is_answered_logged_and_not_stored() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let mut seed = server.connect();
    // The seed's local-time form; 2100 is well within i64 nanoseconds, far past 1 day.
    seed.write_all(b"ping / ('2100-01-01 00:00:00', 102)")
        .expect("write");
    assert_eq!(read_n(&mut seed, 4), b"pong");
    seed.write_all(b"ping / ('1960-01-01 00:00:00', 103)")
        .expect("write");
    assert_eq!(read_n(&mut seed, 4), b"pong");
    seed.write_all(SEED_READING).expect("write");
    assert_eq!(read_n(&mut seed, 4), b"pong");
    server.wait_for_log("more than 1day in the future (max-future-timestamp)");
    server.wait_for_log("out of range: before 1970");
    let metrics = server.get("/metrics").body;
    let refused = "sensorlink_lines_rejected_total{reason=\"timestamp_out_of_range\"} 2";
    assert!(metrics.contains(refused), "{metrics}");
    drop(seed);
    assert!(server.terminate().success());
    let values: Vec<i64> = store
        .rows(&[])
        .iter()
        .filter_map(|row| row["fields"]["value"].as_i64())
        .collect();
    assert_eq!(values, vec![102]);
}

// See: issue 10 review ("the timestamp window does not cover rows already stored before it
// existed: `stats`/dashboard still show year 2262"): stored rows stay, `stats` names them.
#[test]
fn stats_notes_readings_stored_outside_the_window() {
    let store = TempStore::new();
    // A server with a window as wide as it gets: a store filled before a narrower window.
    let mut server = Server::start_on(
        "127.0.0.1:0",
        &store.url(),
        &["--max-future-timestamp", "100years"],
    );
    let mut peer = LinePeer::new(server.addr);
    let now = sensorlink::timefmt::now_ns();
    let far = now + 90 * 365 * 24 * HOUR_NS;
    peer.send(format!("m,sensor=far v=1i {far}\nm,sensor=near v=1i {now}\nsync t\n").as_bytes());
    assert!(peer.line().starts_with("ack t readings=2 rejected=0"));
    drop(peer);
    assert!(server.terminate().success());

    let out = run(bin().args(["stats", "--store", &store.url()]));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stdout.contains("note:"),
        "stdout stays the table: {stdout}"
    );
    let notes: Vec<&str> = stderr.lines().filter(|l| l.starts_with("note:")).collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(
        notes[0].starts_with("note: sensor far: last reading at 21")
            && notes[0].contains(
                "is more than 1day in the future (max-future-timestamp): stored before the \
                 server refused"
            ),
        "{stderr}"
    );
    // Held to the window it was stored under, nothing to say.
    let out = run(bin().args([
        "stats",
        "--store",
        &store.url(),
        "--max-future-timestamp",
        "100years",
    ]));
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("note:"));
}
