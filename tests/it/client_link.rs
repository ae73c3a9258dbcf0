//! `sensorlink client` telling the truth about the link (issue 11): the kernel's figures in
//! the summary, disconnects counted by kind on real sockets, and `--interval 0` ping-pong
//! checked from the server's side.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::harness::*;

/// Every key of the summary's `disconnects`.
const DISCONNECT_KINDS: [&str; 7] = [
    "reset",
    "server_closed",
    "write_timeout",
    "refused",
    "no_route",
    "connect_timeout",
    "other",
];

#[test]
fn the_json_summary_carries_the_kernels_view_of_the_connection() {
    let server = Server::start(&[]);
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "20",
        "--interval",
        "1ms",
        "--sensor",
        "k",
        "--json",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = summary(&out.stdout);
    let tcp = &summary["tcp"];
    assert!(tcp["srtt_ms"].as_f64().is_some_and(|v| v > 0.0), "{tcp}");
    assert!(tcp["rttvar_ms"].is_f64(), "{tcp}");
    assert!(tcp["cwnd"].as_u64().is_some_and(|v| v > 0), "{tcp}");
    // Not asserted to be 0: on a busy machine loopback can send a tail-loss probe, which
    // the kernel counts as a retransmission.
    assert!(tcp["retransmits"].is_u64(), "{tcp}");
    assert_eq!(tcp["connections"], 1, "{tcp}");
    for key in ["lost", "min_rtt_ms", "delivery_rate_mbps"] {
        assert!(tcp.get(key).is_some(), "{key}: {tcp}");
    }
    for kind in DISCONNECT_KINDS {
        assert_eq!(summary["disconnects"][kind], 0, "{kind}: {summary}");
    }
}

#[test]
fn the_text_summary_has_a_kernel_line() {
    let server = Server::start(&[]);
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "3",
        "--interval",
        "1ms",
        "--sensor",
        "k",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("kernel TCP: srtt "))
        .unwrap_or_else(|| panic!("no kernel line: {stdout}"));
    assert!(line.contains(" segments retransmitted, cwnd "), "{line}");
}

/// What a fake server does with the connection it accepted.
#[derive(Clone, Copy, PartialEq)]
enum Fake {
    /// Answer `ping` and ack every `sync` at once.
    Normal,
    /// Answer `ping`, read one line, then reset (SO_LINGER 0 and close).
    ResetAfterPong,
    /// Answer `ping`, ack the first `sync`, then close (EOF), and close the listener too.
    CloseAndGoAway,
    /// Ack every `sync` after `delay`, counting the times more bytes were sent while an
    /// ack was due (a reading sent before the previous one was answered).
    AckLate(Duration),
}

/// SO_LINGER 0 makes close() send a RST, like a crashed peer.
fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast::<libc::c_void>(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt(SO_LINGER)");
}

/// Whether the peer has sent bytes that are not read yet (without blocking or taking them).
fn more_sent(reader: &BufReader<TcpStream>) -> bool {
    if !reader.buffer().is_empty() {
        return true;
    }
    let stream = reader.get_ref();
    stream.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    let more = matches!(stream.peek(&mut byte), Ok(n) if n > 0);
    stream.set_nonblocking(false).expect("blocking again");
    more
}

/// Serve one connection; returns how many readings came while an ack was due, and
/// whether the listener must close.
fn serve(stream: TcpStream, fake: Fake) -> (usize, bool) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut write = stream;
    let mut early = 0;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return (early, false),
            Ok(_) => {}
        }
        let text = line.trim_end();
        let reply = if let Some(token) = text.strip_prefix("ping ") {
            format!("pong {token}\n")
        } else if let Some(token) = text.strip_prefix("sync ") {
            if let Fake::AckLate(delay) = fake {
                std::thread::sleep(delay);
                if more_sent(&reader) {
                    early += 1;
                }
            }
            format!("ack {token} readings=1 rejected=0\n")
        } else {
            // A reading: its `sync` follows.
            if fake == Fake::ResetAfterPong {
                set_linger_zero(&write);
                return (early, false);
            }
            continue;
        };
        if write.write_all(reply.as_bytes()).is_err() {
            return (early, false);
        }
        if fake == Fake::CloseAndGoAway && reply.starts_with("ack ") {
            return (early, true);
        }
    }
}

/// A fake line-protocol server: connection `n` behaves as `script[n]` (then `Normal`).
/// After a `CloseAndGoAway` nothing listens for `away`, then the port is served again.
/// The thread ends after the connection that sends the run's last reading, and returns
/// how many readings came while an ack was due.
fn fake_server(script: Vec<Fake>, away: Duration) -> (SocketAddr, JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("bound address");
    let handle = std::thread::spawn(move || {
        let mut listener = Some(listener);
        let mut early = 0;
        for n in 0.. {
            let fake = script.get(n).copied().unwrap_or(Fake::Normal);
            let current = match listener.take() {
                Some(listener) => listener,
                None => {
                    std::thread::sleep(away);
                    TcpListener::bind(addr).expect("bind the same port again")
                }
            };
            let Ok((stream, _)) = current.accept() else {
                return early;
            };
            let (seen, go_away) = serve(stream, fake);
            early += seen;
            if go_away {
                drop(current);
            } else {
                listener = Some(current);
            }
            if !matches!(fake, Fake::ResetAfterPong | Fake::CloseAndGoAway) {
                return early;
            }
        }
        early
    });
    (addr, handle)
}

fn client_json(addr: SocketAddr, args: &[&str]) -> (serde_json::Value, Vec<serde_json::Value>) {
    let out = run(bin()
        .args(["client", &addr.to_string(), "--sensor", "f", "--json"])
        .args(["--link-report", "0"])
        .args(args));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (summary(&out.stdout), json_lines(&out.stdout))
}

fn disconnect_kinds(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "disconnected")
        .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A peer that resets (RST, not FIN): counted as `reset`; the reading is resent.
#[test]
fn a_reset_is_counted_as_a_reset() {
    let (addr, server) = fake_server(vec![Fake::ResetAfterPong], Duration::ZERO);
    let (summary, events) = client_json(addr, &["--count", "3", "--interval", "20ms"]);
    server.join().expect("fake server");
    assert_eq!(summary["acked"], 3, "{summary}");
    assert_eq!(disconnect_kinds(&events), ["reset"], "{events:?}");
    assert_eq!(summary["disconnects"]["reset"], 1, "{summary}");
    assert_eq!(summary["timeouts"], 0, "{summary}");
    // Two connections, each read before it was dropped.
    assert_eq!(summary["tcp"]["connections"], 2, "{summary}");
}

/// The server closes (EOF) and goes away for a while: one `server_closed`, then connects
/// refused until it is back, each counted as `refused`.
#[test]
fn a_close_then_refused_connects_are_counted_by_kind() {
    let (addr, server) = fake_server(vec![Fake::CloseAndGoAway], Duration::from_secs(1));
    let (summary, events) = client_json(
        addr,
        &[
            "--count",
            "3",
            "--interval",
            "20ms",
            "--max-backoff",
            "200ms",
        ],
    );
    server.join().expect("fake server");
    assert_eq!(summary["acked"], 3, "{summary}");
    let kinds = disconnect_kinds(&events);
    assert_eq!(kinds.first().map(String::as_str), Some("server_closed"));
    assert!(kinds[1..].iter().all(|k| k == "refused"), "{kinds:?}");
    let disconnects = &summary["disconnects"];
    assert_eq!(disconnects["server_closed"], 1, "{summary}");
    // Away for 1 s with backoffs of at most 200 ms: several refused connects.
    assert!(
        disconnects["refused"].as_u64().is_some_and(|n| n >= 2),
        "{summary}"
    );
    assert_eq!(disconnects["reset"], 0, "{summary}");
}

/// `--interval 0`: 200 readings, each sent only once the previous one was answered (the
/// server waits 1 ms before each ack and checks nothing more came meanwhile).
#[test]
fn ping_pong_never_has_two_readings_in_flight() {
    let (addr, server) = fake_server(
        vec![Fake::AckLate(Duration::from_millis(1))],
        Duration::ZERO,
    );
    let (summary, _) = client_json(addr, &["--count", "200", "--interval", "0"]);
    let early = server.join().expect("fake server");
    assert_eq!(summary["acked"], 200, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(early, 0, "readings sent before the previous ack");
}

/// The check above can fail: at a 1 ms interval, readings do not wait for 5 ms acks.
#[test]
fn with_an_interval_readings_do_not_wait_for_acks() {
    let (addr, server) = fake_server(
        vec![Fake::AckLate(Duration::from_millis(5))],
        Duration::ZERO,
    );
    let (summary, _) = client_json(addr, &["--count", "20", "--interval", "1ms"]);
    let early = server.join().expect("fake server");
    assert_eq!(summary["acked"], 20, "{summary}");
    assert!(early > 0, "a free-running client never sent ahead");
}

/// A pace below a millisecond cannot be kept: refused with a clear message.
#[test]
fn an_interval_below_a_millisecond_is_refused() {
    let out = run(bin().args(["client", "127.0.0.1:1", "--interval", "500us"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid interval 500us: accepted 0 (ping-pong) or at least 1ms"),
        "{stderr}"
    );
}
