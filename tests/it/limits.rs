//! Connection limits that hold against a hostile peer: the per-address share and the
//! slowloris rules (first-line deadline; idle timeout restarted by complete lines only).

use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A loopback address other than 127.0.0.1: Linux routes all of 127/8 to `lo`.
const OTHER_IP: [u8; 4] = [127, 0, 0, 2];

/// A blocking connection to `addr` from `from` (port 0): std cannot bind before connect.
fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        socket.connect(addr).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(PATIENCE))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A line peer from `from` that has been answered a `ping` (so it was admitted).
fn admitted_peer(from: IpAddr, addr: SocketAddr) -> LinePeer {
    let stream = connect_from(from, addr).expect("connect");
    let writer = stream.try_clone().expect("clone stream");
    let mut peer = LinePeer {
        reader: BufReader::new(stream),
        writer,
    };
    peer.send(b"ping\n");
    assert_eq!(peer.line(), "pong");
    peer
}

/// Whether the server closed `stream` without a byte (refused at accept).
fn closed_at_once(stream: &mut TcpStream) -> bool {
    let _ = stream.write_all(b"ping\n");
    let mut buf = [0u8; 8];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

fn metric(server: &Server, series: &str) -> Option<f64> {
    let text = server.get("/metrics").body;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn one_address_past_its_share_is_refused_while_another_still_connects() {
    let server = Server::start(&["--max-connections-per-ip", "3"]);
    let other = IpAddr::from(OTHER_IP);
    let mut held: Vec<LinePeer> = (0..3).map(|_| admitted_peer(other, server.addr)).collect();
    let mut extra = connect_from(other, server.addr).expect("TCP connects; then closed");
    assert!(
        closed_at_once(&mut extra),
        "a fourth from {other} is refused"
    );
    let mut local = admitted_peer(IpAddr::from([127, 0, 0, 1]), server.addr);
    local.send(b"ping 2\n");
    assert_eq!(local.line(), "pong 2", "another address still connects");
    server.wait_for_log("per-IP connection limit reached");
    assert_eq!(
        metric(
            &server,
            "sensorlink_connections_refused_total{reason=\"per_ip\"}"
        ),
        Some(1.0)
    );
    // A share given back is usable again (once the server has seen the close).
    drop(held.pop());
    let readmitted = poll_until(PATIENCE, || {
        connect_from(other, server.addr)
            .map(|mut stream| !closed_at_once(&mut stream))
            .unwrap_or(false)
    });
    assert!(readmitted, "a closed connection gives its share back");
    for peer in &mut held {
        peer.send(b"ping 3\n");
        assert_eq!(peer.line(), "pong 3", "admitted peers are untouched");
    }
}

/// One slowloris peer: a byte about every second, never a newline. Returns whether the
/// server closed it within `rounds` bytes.
fn drip_until_closed(addr: SocketAddr, rounds: usize) -> bool {
    let mut stream = connect(addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let mut buf = [0u8; 64];
    for byte in b"weather,sensor=slow v=1i".iter().cycle().take(rounds) {
        if stream.write_all(&[*byte]).is_err() {
            return true;
        }
        // The read's timeout is the pause between bytes.
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => return false,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Peers dripping a byte a second are cut by the first-line rule while a legitimate
/// client keeps getting acks (its round trips printed, not asserted against a clock).
#[test]
fn dripping_peers_are_cut_while_a_client_keeps_getting_acks() {
    const DRIPPERS: usize = 20;
    let server = Server::start(&["--first-line-timeout", "2s"]);
    let addr = server.addr;
    let drippers: Vec<_> = (0..DRIPPERS)
        .map(|_| std::thread::spawn(move || drip_until_closed(addr, 30)))
        .collect();
    let mut client = LinePeer::new(addr);
    let mut rtts = Vec::new();
    let mut i = 0u64;
    while drippers.iter().any(|d| !d.is_finished()) && i < 100_000 {
        let sent = Instant::now();
        client.send(format!("weather,sensor=real v={i}i {}\nsync {i}\n", i + 1).as_bytes());
        let ack = client.line();
        assert!(ack.starts_with(&format!("ack {i} readings=1 ")), "{ack}");
        rtts.push(sent.elapsed());
        i += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for dripper in drippers {
        assert!(
            dripper.join().expect("dripper thread"),
            "a dripper was not cut"
        );
    }
    let series = "sensorlink_connections_closed_total{reason=\"first_line_timeout\"}";
    assert_eq!(metric(&server, series), Some(DRIPPERS as f64));
    rtts.sort();
    let p99 = rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)];
    println!(
        "legitimate client: {} acks while {DRIPPERS} peers dripped; rtt p99 {p99:?}",
        rtts.len()
    );
}

/// The scenario, scaled: 2,000 idle connections (each has said `ping`) plus 500
/// peers dripping a byte every 2 s, at the default first-line timeout, while a client keeps
/// getting acks. Slow (about 15 s) and 2,500+ descriptors: run it by name with `--ignored`.
#[test]
#[ignore = "2,500 connections and ~15 s: run with --ignored"]
fn thousands_of_idle_and_slowloris_peers_leave_room_for_a_client() {
    const IDLE: usize = 2_000;
    const SLOW: usize = 500;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let server = Server::start(&["--max-connections-per-ip", "5000"]);
    let addr = server.addr;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = tokio_util::sync::CancellationToken::new();
    let (idle_up, slow_cut) = runtime.block_on(async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut idle = Vec::new();
        for _ in 0..IDLE {
            let stop = stop.clone();
            idle.push(tokio::spawn(async move {
                let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                    return false;
                };
                let mut buf = [0u8; 16];
                let ok = stream.write_all(b"ping\n").await.is_ok()
                    && matches!(stream.read(&mut buf).await, Ok(n) if n > 0);
                stop.cancelled().await;
                ok
            }));
        }
        let slow: Vec<_> = (0..SLOW)
            .map(|_| {
                tokio::spawn(async move {
                    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                        return false;
                    };
                    let mut buf = [0u8; 16];
                    // At most 60 s of dripping: cut long before at the 10 s default.
                    for _ in 0..30 {
                        if stream.write_all(b"w").await.is_err() {
                            return true;
                        }
                        let read =
                            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                                .await;
                        match read {
                            Ok(Ok(0)) | Ok(Err(_)) => return true,
                            Ok(Ok(_)) => return false,
                            Err(_) => {}
                        }
                    }
                    false
                })
            })
            .collect();
        // The client, on its own thread, while the swarm runs.
        let client = std::thread::spawn(move || {
            let mut peer = LinePeer::new(addr);
            let mut rtts = Vec::new();
            for i in 0..200u64 {
                let sent = Instant::now();
                peer.send(format!("weather,sensor=real v={i}i {}\nsync {i}\n", i + 1).as_bytes());
                let ack = peer.line();
                assert!(ack.starts_with(&format!("ack {i} readings=1 ")), "{ack}");
                rtts.push(sent.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            rtts
        });
        let mut slow_cut = 0;
        for task in slow {
            slow_cut += usize::from(task.await.unwrap_or(false));
        }
        let mut rtts = tokio::task::spawn_blocking(move || client.join().expect("client"))
            .await
            .expect("join");
        rtts.sort();
        let p99 = rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)];
        println!("client: {} acks, rtt p99 {p99:?}", rtts.len());
        stop.cancel();
        let mut idle_up = 0;
        for task in idle {
            idle_up += usize::from(task.await.unwrap_or(false));
        }
        (idle_up, slow_cut)
    });
    println!("idle connections answered: {idle_up}/{IDLE}; slowloris cut: {slow_cut}/{SLOW}");
    assert_eq!(idle_up, IDLE, "every idle connection was served");
    assert_eq!(slow_cut, SLOW, "every slowloris peer was cut");
    let series = "sensorlink_connections_closed_total{reason=\"first_line_timeout\"}";
    assert_eq!(metric(&server, series), Some(SLOW as f64));
}

/// Replies until (and with) the first `ack`.
fn replies_until_ack(peer: &mut LinePeer) -> Vec<String> {
    let mut replies = Vec::new();
    loop {
        let line = peer.line();
        let done = line.starts_with("ack ");
        replies.push(line);
        if done {
            return replies;
        }
    }
}

/// `readings=` and `rejected=` of an ack line.
fn ack_counts(ack: &str) -> (u64, u64) {
    let value = |key: &str| -> u64 {
        ack.split(' ')
            .find_map(|kv| kv.strip_prefix(key)?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {ack:?}"))
    };
    (value("readings="), value("rejected="))
}

/// A flood past one connection's bucket is refused line by line (never dropped silently)
/// and counted (error replies beyond 100/s counted instead of sent), while a second connection is unaffected; a legacy flood still gets a `pong`
/// per message (the seed rule) and is counted the same way.
#[test]
fn a_flood_past_the_rate_is_refused_and_counted_while_another_connection_is_unaffected() {
    // 2,000 readings against 100/s with 100 of burst: refused unless the server took
    // 19 s to read them, which even a debug build on a busy machine does not.
    const FLOOD: u64 = 2_000;
    let server = Server::start(&["--max-rate-per-connection", "100"]);
    let mut flood = LinePeer::new(server.addr);
    let mut calm = LinePeer::new(server.addr);
    flood.send(b"ping\n");
    assert_eq!(flood.line(), "pong");
    let mut lines = String::new();
    for i in 0..FLOOD {
        lines.push_str(&format!("flood,sensor=f v={i}i {}\n", i + 1));
    }
    lines.push_str("sync 1\n");
    flood.send(lines.as_bytes());
    let replies = replies_until_ack(&mut flood);
    let (readings, rejected) = ack_counts(replies.last().expect("an ack"));
    assert_eq!(readings + rejected, FLOOD);
    assert!(readings >= 100, "the burst is taken: {readings}");
    assert!(rejected > 0, "nothing refused");
    let errors: Vec<_> = replies[..replies.len() - 1].iter().collect();
    let suppressed = metric(&server, "sensorlink_replies_suppressed_total").unwrap_or(0.0) as u64;
    assert_eq!(
        errors.len() as u64 + suppressed,
        rejected,
        "one error per refused reading, sent or counted"
    );
    // 100 error replies per second (and as many of burst) at most.
    assert!(
        (1..=200).contains(&errors.len()) && suppressed > 0,
        "{} errors sent, {suppressed} suppressed",
        errors.len()
    );
    assert!(
        errors.iter().all(|e| e
            .ends_with(" rate limit exceeded: more than 100 readings/s (max-rate-per-connection)")),
        "{:?}",
        errors.first()
    );
    // Its own bucket: the second connection's readings all pass.
    let mut calm_lines = String::new();
    for i in 0..50u64 {
        calm_lines.push_str(&format!("calm,sensor=c v={i}i {}\n", i + 1));
    }
    calm_lines.push_str("sync 2\n");
    calm.send(calm_lines.as_bytes());
    assert!(calm.line().starts_with("ack 2 readings=50 rejected=0"));

    // Legacy: each message answered, the refused ones not stored. Its own server at 5/s
    // (burst 5): 100 lock-step round trips see refusals unless they take over 19 s, so
    // the machine's speed does not decide the outcome.
    const LEGACY: u64 = 100;
    let slow = Server::start(&["--max-rate-per-connection", "5"]);
    let mut seed = slow.connect();
    for n in 0..LEGACY {
        let msg = format!("ping / ('2026-11-24 11:46:{:02}.{n:06}', {n})", n % 60);
        seed.write_all(msg.as_bytes()).expect("write");
        assert_eq!(read_n(&mut seed, 4), b"pong");
    }
    let series = "sensorlink_lines_rejected_total{reason=\"rate_limited\"}";
    let legacy_refused = metric(&slow, series).expect("counted") as u64;
    assert!(
        legacy_refused > 0 && legacy_refused <= LEGACY - 5,
        "{LEGACY} legacy messages at 5/s: some refused, the burst taken: {legacy_refused}"
    );
    slow.wait_for_log("rate limit exceeded");
    server.wait_for_log("rate limit exceeded");
    println!("line flood: {readings} stored, {rejected} refused; legacy: {legacy_refused} of {LEGACY} refused");
}

/// VmRSS of `pid` in KiB, from /proc.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// One peer writes `series` new series of ~1 KB of tags each (the attack) into a
/// SQLite store: past the new-series cap they are refused with an error (counted), and the
/// server's memory stays bounded (printed; before the cap and the bounded cache, 200,000
/// such series took it from 16 MB to 298 MB).
fn new_series_flood(series: u64) {
    // Measured at 20,000: about 20 MiB of growth with the cap, 134 MiB with the caps lifted
    // (every series stored): a regression that lets the flood through crosses 60.
    let (readings, rejected, replies, server) = flood_new_series(
        series,
        &["--max-new-series-per-connection", "1000"],
        Some(60 * 1024),
    );
    assert_eq!(readings + rejected, series);
    // The minute's burst, plus what refilled (1000/min) while the flood streamed in.
    assert!((1000..series).contains(&readings), "{readings}");
    // The 64 errors held for a peer that had not yet read replies, then the ack.
    assert!(replies[0].ends_with(
        "too many new series: more than 1000 per minute (max-new-series-per-connection)"
    ));
    assert_eq!(
        metric(
            &server,
            "sensorlink_lines_rejected_total{reason=\"new_series_limit\"}"
        ),
        Some(rejected as f64)
    );
}

/// Send `series` new series of ~1 KB of tags, then a `sync`, to a server on a SQLite store
/// started with `flags`; prints the time and the server's RSS before and after, checks it
/// against a generous bound, and its growth against `max_growth_kib` if given. Returns the
/// ack's counts, every reply, and the server.
fn flood_new_series(
    series: u64,
    flags: &[&str],
    max_growth_kib: Option<u64>,
) -> (u64, u64, Vec<String>, Server) {
    let store = TempStore::new();
    let server = Server::start_on("127.0.0.1:0", &store.url(), flags);
    let before = rss_kib(server.pid());
    let started = Instant::now();
    let mut peer = LinePeer::new(server.addr);
    let pad = "x".repeat(1000);
    let mut chunk = String::with_capacity(1 << 20);
    for i in 0..series {
        chunk.push_str(&format!("attack,sensor=s{i},pad={pad} v=1i {}\n", i + 1));
        if chunk.len() >= 1 << 20 {
            peer.send(chunk.as_bytes());
            chunk.clear();
        }
    }
    chunk.push_str("sync 1\n");
    peer.send(chunk.as_bytes());
    let replies = replies_until_ack(&mut peer);
    let (readings, rejected) = ack_counts(replies.last().expect("an ack"));
    let after = rss_kib(server.pid());
    println!(
        "{series} new series in {:?}: {readings} stored, {rejected} refused; server RSS {} MiB -> {} MiB",
        started.elapsed(),
        before / 1024,
        after / 1024
    );
    // Generous: the bound is what the store and the caps hold, not the flood's size.
    assert!(after < 200 * 1024, "server RSS {after} KiB");
    if let Some(bound) = max_growth_kib {
        let growth = after.saturating_sub(before);
        assert!(
            growth < bound,
            "server RSS grew {growth} KiB ({before} -> {after}), bound {bound}"
        );
    }
    (readings, rejected, replies, server)
}

/// [`new_series_flood`] at a size CI affords (debug build, shared cores).
#[test]
fn a_peer_creating_new_series_is_refused_past_the_cap_with_memory_bounded() {
    new_series_flood(20_000);
}

/// The full size: 200,000 new series of ~1 KB of tags (about 200 MB on the wire).
#[test]
#[ignore = "200 MB through a debug build: run with --ignored"]
fn two_hundred_thousand_new_series_leave_memory_bounded() {
    new_series_flood(200_000);
}

/// Without the cap (lifted), the SQLite writer's bounded series cache keeps memory bounded
/// while 200,000 series of ~1 KB of tags are stored (the database grows instead). `--http
/// off`: the live view, which tracks up to 100,000 sensors under its own bound, is not
/// what this measures.
#[test]
#[ignore = "stores 200,000 series through a debug build (~3 min): run with --ignored"]
fn the_bounded_series_cache_holds_memory_when_every_series_is_stored() {
    let (readings, rejected, _, server) = flood_new_series(
        200_000,
        &[
            "--http",
            "off",
            "--max-new-series-per-connection",
            "1000000000",
            "--max-rate-per-connection",
            "1000000000",
            "--series-cache-entries",
            "10000",
        ],
        None,
    );
    assert_eq!((readings, rejected), (200_000, 0));
    server.wait_for_log("series cache full");
}
