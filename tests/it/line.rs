//! Line mode: readings, `ping`, pipelined `sync`, bad and oversize lines, peers that never
//! read, abrupt disconnects, limits.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::*;

#[test]
fn ping_with_and_without_token() {
    let server = Server::start(&[]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"ping\nping abc-1\r\n");
    assert_eq!(peer.line(), "pong");
    assert_eq!(peer.line(), "pong abc-1");
}

#[test]
fn readings_are_acked_with_counts_and_stored_with_types() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(
        b"weather,sensor=kitchen,site=lab temp=21.5,hum=40i,ok=t,note=\"a \\\"b\\\"\",big=18446744073709551615u 1732448785000000001\n\
          weather,sensor=kitchen temp=22 1732448786000000000\n\
          sync s1\n",
    );
    let ack = peer.line();
    assert!(ack.starts_with("ack s1 readings=2 rejected=0"), "{ack}");
    // The timings are values, not decoration: the commit is part of the store time.
    let timing = |key: &str| -> u64 {
        ack.split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key} in {ack:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("{key} in {ack:?}: {e}"))
    };
    assert!(timing("commit_us") <= timing("store_us"), "{ack}");
    drop(peer);
    assert!(server.terminate().success());

    let rows = store.rows(&["--sensor", "kitchen"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let first = &rows[0];
    assert_eq!(first["measurement"], "weather");
    assert_eq!(first["timestamp_ns"], 1732448785000000001i64);
    assert_eq!(first["tags"]["site"], "lab");
    assert_eq!(first["fields"]["temp"], 21.5);
    assert_eq!(first["fields"]["hum"], 40);
    assert_eq!(first["fields"]["ok"], true);
    assert_eq!(first["fields"]["note"], "a \"b\"");
    assert_eq!(first["fields"]["big"], u64::MAX);
}

#[test]
fn reading_without_timestamp_gets_the_receive_time() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let before = sensorlink::timefmt::now_ns();
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"m,sensor=x v=1i\nsync a\n");
    assert!(peer.line().starts_with("ack a readings=1 rejected=0"));
    let after = sensorlink::timefmt::now_ns();
    drop(peer);
    assert!(server.terminate().success());
    let rows = store.rows(&[]);
    let ts = rows[0]["timestamp_ns"].as_i64().unwrap();
    assert!(before <= ts && ts <= after, "{before} <= {ts} <= {after}");
    assert_eq!(rows[0]["timestamp_ns"], rows[0]["received_ns"]);
}

/// One write carrying 1,000 readings and 100 syncs: every ack comes back, in order, each
/// covering exactly the readings sent before it.
#[test]
fn pipelined_syncs_are_acked_in_order() {
    let server = Server::start(&[]);
    let mut peer = LinePeer::new(server.addr);
    let mut burst = Vec::new();
    for batch in 0..100 {
        for i in 0..10 {
            let n = batch * 10 + i;
            burst.extend_from_slice(format!("pipe,sensor=p v={n}i {n}\n").as_bytes());
        }
        burst.extend_from_slice(format!("sync b{batch}\n").as_bytes());
    }
    peer.send(&burst);
    for batch in 0..100 {
        let ack = peer.line();
        assert!(
            ack.starts_with(&format!("ack b{batch} readings=10 rejected=0")),
            "{ack}"
        );
    }
}

#[test]
fn bad_lines_get_numbered_errors_and_the_connection_goes_on() {
    let server = Server::start(&[]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"ping\n");
    assert_eq!(peer.line(), "pong");
    peer.send(b"weather temp=abc\n# a comment\n\nhello world\nok,sensor=a v=1i\n\xff\xfe=1\nweather\nsync x\n");
    let e2 = peer.line();
    assert!(e2.starts_with("error 2 invalid reading:"), "{e2}");
    assert_eq!(peer.line(), "error 5 unknown command \"hello\"");
    assert_eq!(peer.line(), "error 7 invalid UTF-8");
    assert_eq!(peer.line(), "error 8 unknown command \"weather\"");
    assert!(peer.line().starts_with("ack x readings=1 rejected=4"));
    peer.send(b"sync y\n");
    assert!(peer.line().starts_with("ack y readings=0 rejected=0"));
}

/// A plain line-protocol sender never asked for replies: its errors wait until it sends a
/// control line, so a peer that never reads gets nothing written at all.
#[test]
fn errors_are_held_until_the_peer_shows_it_reads() {
    let server = Server::start(&[]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"bad line here\ngood,sensor=a v=1 1\n");
    assert_silent(&mut peer.writer);
    peer.send(b"sync t\n");
    assert_eq!(peer.line(), "error 1 unknown command \"bad\"");
    assert!(peer.line().starts_with("ack t readings=1 rejected=1"));
}

#[test]
fn oversize_line_is_discarded_while_it_streams_in() {
    let server = Server::start(&["--max-line-bytes", "1024"]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"ping\n");
    assert_eq!(peer.line(), "pong");
    // 1 MiB in 64 KiB pieces: the server must not buffer it whole.
    let piece = vec![b'x'; 64 * 1024];
    for _ in 0..16 {
        peer.send(&piece);
    }
    peer.send(b"\nafter,sensor=a v=2i 5\nsync z\n");
    assert_eq!(peer.line(), "error 2 line too long (limit 1024 bytes)");
    assert!(peer.line().starts_with("ack z readings=1 rejected=1"));
}

/// A peer that only writes (and asks for acks it never reads) stalls nobody else; once its
/// unread replies have filled the socket for `--write-timeout`, it is disconnected.
#[test]
fn peer_that_never_reads_does_not_stall_others() {
    let server = Server::start(&["--write-timeout", "2s"]);
    let mut hog = server.connect();
    hog.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let syncs: Vec<u8> = (0..20_000)
        .flat_map(|i| format!("sync t{i}\n").into_bytes())
        .collect();
    // Write until the kernel buffers on both sides are full (bounded: at most 200 rounds).
    let mut blocked = false;
    for _ in 0..200 {
        if hog.write_all(&syncs).is_err() {
            blocked = true;
            break;
        }
    }
    assert!(
        blocked,
        "the server kept reading although its replies were never read"
    );

    let mut peer = LinePeer::new(server.addr);
    for i in 0..50 {
        peer.send(format!("r,sensor=b v={i}i {i}\nsync {i}\n").as_bytes());
        assert!(peer.line().starts_with(&format!("ack {i} readings=1")));
    }
    // Its unread replies are bounded: after the write timeout the server gives up on it.
    server.wait_for_log("peer does not read its replies");
    hog.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        match hog.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => assert!(std::time::Instant::now() < deadline, "hog still connected"),
        }
    }
}

/// Resets and half-written lines don't disturb the server or other peers.
#[test]
fn abrupt_disconnects_are_survived() {
    let server = Server::start(&[]);
    for i in 0..20 {
        let stream = server.connect();
        set_linger_zero(&stream);
        let mut stream = stream;
        let _ = stream.write_all(if i % 2 == 0 {
            b"half,sensor=a v="
        } else {
            b"ping / ('2026"
        });
        drop(stream);
    }
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"ping after\n");
    assert_eq!(peer.line(), "pong after");
}

/// SO_LINGER 0 makes close() send a RST, like a crashed peer.
fn set_linger_zero(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
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
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn idle_connections_are_closed() {
    let server = Server::start(&["--idle-timeout", "300ms"]);
    let mut stream = server.connect();
    let mut buf = [0u8; 8];
    assert_eq!(
        stream.read(&mut buf).unwrap(),
        0,
        "server should close an idle connection"
    );
    server.wait_for_log("closing idle connection");
}

#[test]
fn connection_limit_closes_extra_connections() {
    let server = Server::start(&["--max-connections", "1"]);
    let mut first = LinePeer::new(server.addr);
    first.send(b"ping 1\n");
    assert_eq!(first.line(), "pong 1");
    let mut second = server.connect();
    let mut buf = [0u8; 8];
    let closed = matches!(second.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "second connection should be closed at the limit");
    first.send(b"ping 2\n");
    assert_eq!(first.line(), "pong 2");
    server.wait_for_log("connection limit reached");
}
