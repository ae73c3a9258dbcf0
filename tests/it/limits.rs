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
