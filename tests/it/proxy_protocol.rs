//! `--proxy-protocol v2` with the real binary and hand-built headers: the header's client
//! address is the peer (sensor name, `/api/sensors`, per-IP limits, logs), `LOCAL` keeps
//! the TCP peer, and a connection without a valid header is closed and counted; TLS after
//! the header through a relay that plays the balancer.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use sensorlink::server::proxy_protocol::{encode, ProxyHeader};

use crate::harness::*;
use crate::tls::make_certs;

/// The header a balancer sends for a client at `source` connecting to `destination`.
fn header(source: &str, destination: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let header = ProxyHeader::Proxy {
        source: source.parse().expect("test address"),
        destination: destination.parse().expect("test address"),
    };
    encode(&header, &[], &mut bytes);
    bytes
}

fn local_header() -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(&ProxyHeader::Local, &[], &mut bytes);
    bytes
}

/// A line peer whose connection opened with `prefix` (a PROXY header).
fn proxied_peer(server: &Server, prefix: &[u8]) -> LinePeer {
    let mut peer = LinePeer::new(server.addr);
    peer.send(prefix);
    peer
}

/// Send one reading (no `sensor` tag unless `line` has one) and wait for its ack.
fn send_acked(peer: &mut LinePeer, line: &str) {
    peer.send(format!("{line}\nsync s\n").as_bytes());
    let ack = peer.line();
    assert!(ack.starts_with("ack s readings=1 rejected=0"), "{ack}");
}

fn metric(server: &Server, series: &str) -> f64 {
    let text = server.get("/metrics").body;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const REFUSED: &str = "sensorlink_connections_refused_total{reason=\"proxy_header\"}";

/// IPv4 and IPv6 sources (IPv4-mapped ones as IPv4) replace the TCP peer (127.0.0.1) in
/// `/api/sensors`, the sensor name of a reading without a `sensor` tag, and the
/// connection's log lines.
#[test]
fn the_headers_source_is_the_peer() {
    let server = Server::start(&["--proxy-protocol", "v2"]);
    let mut v4 = proxied_peer(&server, &header("192.0.2.7:40001", "198.51.100.1:8889"));
    send_acked(&mut v4, "temp value=1");
    let sensor = server.get("/api/sensors/192.0.2.7").json();
    assert_eq!(sensor["peer"], "192.0.2.7:40001", "{sensor}");
    assert_eq!(sensor["state"], "connected", "{sensor}");

    let mut v6 = proxied_peer(
        &server,
        &header("[2001:db8::7]:40002", "[2001:db8::1]:8889"),
    );
    send_acked(&mut v6, "temp,sensor=six value=2");
    let sensor = server.get("/api/sensors/six").json();
    assert_eq!(sensor["peer"], "[2001:db8::7]:40002", "{sensor}");

    // A dual-stack balancer sends an IPv4 client as ::ffff:192.0.2.9: named and shown as
    // plain IPv4.
    let mut mapped = proxied_peer(
        &server,
        &header("[::ffff:192.0.2.9]:40003", "[::ffff:198.51.100.1]:8889"),
    );
    send_acked(&mut mapped, "temp value=3");
    let sensor = server.get("/api/sensors/192.0.2.9").json();
    assert_eq!(sensor["peer"], "192.0.2.9:40003", "{sensor}");

    drop(v4);
    server.wait_for_log("peer_addr=192.0.2.7:40001");
    server.wait_for_log("via=127.0.0.1:");
    assert_eq!(metric(&server, REFUSED), 0.0);
}

/// `LOCAL` (a balancer's health check) keeps the TCP peer.
#[test]
fn local_keeps_the_tcp_peer() {
    let server = Server::start(&["--proxy-protocol", "v2"]);
    let mut peer = proxied_peer(&server, &local_header());
    let local = peer.writer.local_addr().expect("local address");
    send_acked(&mut peer, "temp value=1");
    let sensor = server.get("/api/sensors/127.0.0.1").json();
    assert_eq!(sensor["peer"], local.to_string(), "{sensor}");
}

/// The per-IP share is the client's (from the header), not the balancer's: two clients
/// behind one balancer address get a share each.
#[test]
fn per_ip_limits_apply_to_the_headers_source() {
    let server = Server::start(&["--proxy-protocol", "v2", "--max-connections-per-ip", "1"]);
    let dest = "198.51.100.1:8889";
    let mut first = proxied_peer(&server, &header("192.0.2.7:1000", dest));
    first.send(b"ping\n");
    assert_eq!(first.line(), "pong");
    // Same client address: over its share, closed without a byte.
    let mut second = server.connect();
    second
        .write_all(&header("192.0.2.7:1001", dest))
        .expect("write header");
    let _ = second.write_all(b"ping\n");
    let mut buf = [0u8; 8];
    assert!(matches!(second.read(&mut buf), Ok(0) | Err(_)));
    // Another client through the same TCP peer: admitted.
    let mut other = proxied_peer(&server, &header("192.0.2.8:1000", dest));
    other.send(b"ping\n");
    assert_eq!(other.line(), "pong");
    assert_eq!(
        metric(
            &server,
            "sensorlink_connections_refused_total{reason=\"per_ip\"}"
        ),
        1.0
    );
    server.wait_for_log("per-IP connection limit reached; closing new connection");
    assert!(server.stderr().contains("peer=192.0.2.7:1001"));
}

/// Whatever it sent, the server closes the connection without a byte of reply.
fn assert_closed_silently(stream: &mut TcpStream, what: &str) {
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => assert!(answer.is_empty(), "{what}: {answer:?}"),
        // Closed with our bytes unread: a reset, still closed.
        Err(err) => assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{what}: {err}"
        ),
    }
}

/// No header, a v1 (text) header, garbage after the signature, a truncated header, and
/// silence until the deadline: each is closed, logged and counted under
/// `connections_refused_total{reason="proxy_header"}`; a valid peer is served after them.
#[test]
fn connections_without_a_valid_header_are_closed_and_counted() {
    let server = Server::start(&["--proxy-protocol", "v2", "--first-line-timeout", "1s"]);
    let valid = header("192.0.2.7:40001", "198.51.100.1:8889");
    let mut bad_version = valid.clone();
    bad_version[12] = 0x11;
    let cases: [(&str, Vec<u8>); 4] = [
        ("no header", b"temp value=1\nsync s\n".to_vec()),
        (
            "v1 header",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 8889\r\nping\n".to_vec(),
        ),
        ("version 1 in a v2 header", bad_version),
        ("garbage after the signature", {
            let mut bytes = valid[..12].to_vec();
            bytes.extend_from_slice(&[0xff; 20]);
            bytes
        }),
    ];
    for (what, bytes) in &cases {
        let mut stream = server.connect();
        stream.write_all(bytes).expect("write");
        assert_closed_silently(&mut stream, what);
    }
    // Truncated: part of a header, then the peer closes its side.
    let mut stream = server.connect();
    stream.write_all(&valid[..20]).expect("write");
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    assert_closed_silently(&mut stream, "truncated");
    // Nothing at all: closed at the first-line deadline, not held.
    let mut silent = server.connect();
    assert_closed_silently(&mut silent, "silent");

    wait_for(
        || metric(&server, REFUSED) == 6.0,
        PATIENCE,
        "six proxy_header refusals",
    );
    let log = server.stderr();
    for cause in [
        "not a PROXY protocol v2 header",
        "a PROXY protocol v1 (text) header; only v2 is accepted",
        "PROXY protocol version 1",
        "closed after 20 bytes",
        "no whole PROXY header in time",
    ] {
        assert!(log.contains(cause), "no {cause:?} in:\n{log}");
    }
    assert!(log.contains("no valid PROXY protocol v2 header"), "{log}");
    let mut peer = proxied_peer(&server, &valid);
    send_acked(&mut peer, "temp value=1");
}

/// `--proxy-protocol-from`: a header is believed only from a named balancer. From another
/// address the connection is closed at accept, before its header is read, and counted as
/// `proxy_peer`; from a named one it is served as before. Every connection here comes from
/// 127.0.0.1, so the two servers differ only in the list.
#[test]
fn only_the_named_balancers_may_send_a_header() {
    let valid = header("192.0.2.7:40001", "198.51.100.1:8889");
    let elsewhere = Server::start(&[
        "--proxy-protocol",
        "v2",
        "--proxy-protocol-from",
        "10.0.0.5,fd00::/8",
    ]);
    let mut stream = elsewhere.connect();
    // The write may already fail: the server can close before these bytes arrive.
    let _ = stream.write_all(&valid);
    let _ = stream.write_all(b"ping\n");
    assert_closed_silently(&mut stream, "from a peer outside the list");
    wait_for(
        || {
            metric(
                &elsewhere,
                "sensorlink_connections_refused_total{reason=\"proxy_peer\"}",
            ) == 1.0
        },
        PATIENCE,
        "one proxy_peer refusal",
    );
    // Refused before the header: not a header refusal, and nobody was accepted.
    assert_eq!(metric(&elsewhere, REFUSED), 0.0);
    assert_eq!(
        metric(&elsewhere, "sensorlink_connections_accepted_total"),
        0.0
    );
    elsewhere.wait_for_log("not a balancer named by --proxy-protocol-from");
    assert!(
        !elsewhere
            .stderr()
            .contains("believes a PROXY header from any peer"),
        "no warning with a list"
    );

    let named = Server::start(&[
        "--proxy-protocol",
        "v2",
        "--proxy-protocol-from",
        "10.0.0.5",
        "--proxy-protocol-from",
        "127.0.0.0/8",
    ]);
    let mut peer = proxied_peer(&named, &valid);
    send_acked(&mut peer, "temp value=1");
    let sensor = named.get("/api/sensors/192.0.2.7").json();
    assert_eq!(sensor["peer"], "192.0.2.7:40001", "{sensor}");

    // Without a list every peer is believed, and the server says so when it starts.
    let anyone = Server::start(&["--proxy-protocol", "v2"]);
    anyone.wait_for_log("believes a PROXY header from any peer");
}

/// A header that arrives a few bytes at a time is read whole, and the reading after it
/// (in the same last segment) is not lost.
#[test]
fn a_header_split_across_writes_is_read_whole() {
    let server = Server::start(&["--proxy-protocol", "v2"]);
    let mut stream = server.connect();
    let mut bytes = header("[2001:db8::9]:4000", "[2001:db8::1]:8889");
    bytes.extend_from_slice(b"temp,sensor=split value=1\nsync s\n");
    let (head, tail) = bytes.split_at(bytes.len() - 30);
    for chunk in head.chunks(5) {
        stream.write_all(chunk).expect("write");
        // Separate segments (nodelay): a pause, not synchronisation.
        std::thread::sleep(Duration::from_millis(2));
    }
    stream.write_all(tail).expect("write");
    let mut reader = std::io::BufReader::new(stream);
    let mut ack = String::new();
    std::io::BufRead::read_line(&mut reader, &mut ack).expect("ack");
    assert!(ack.starts_with("ack s readings=1 rejected=0"), "{ack}");
    let sensor = server.get("/api/sensors/split").json();
    assert_eq!(sensor["peer"], "[2001:db8::9]:4000", "{sensor}");
}

/// Plays the balancer for one connection: accepts on its own port, connects to `server`,
/// sends `prefix` (the PROXY header), then relays bytes both ways until either side closes.
struct Relay {
    addr: SocketAddr,
}

impl Relay {
    fn start(server: SocketAddr, prefix: Vec<u8>) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        std::thread::spawn(move || {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(mut upstream) = TcpStream::connect(server) else {
                return;
            };
            if upstream.write_all(&prefix).is_err() {
                return;
            }
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                })
            };
            let (Ok(client2), Ok(upstream2)) = (client.try_clone(), upstream.try_clone()) else {
                return;
            };
            let a = pipe(client, upstream);
            let b = pipe(upstream2, client2);
            let _ = (a.join(), b.join());
        });
        Relay { addr }
    }
}

/// The header comes first, then the TLS handshake: the real client over TLS through a
/// relay that adds the header is acked, and its sensor shows the header's address.
#[test]
fn tls_after_the_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let path = |name: &str| dir.path().join(name);
    let cert = path("server.pem");
    let key = path("server-key.pem");
    let server = Server::start(&[
        "--proxy-protocol",
        "v2",
        "--tls-cert",
        cert.to_str().expect("temp path is UTF-8"),
        "--tls-key",
        key.to_str().expect("temp path is UTF-8"),
    ]);
    let relay = Relay::start(server.addr, header("203.0.113.9:5555", "198.51.100.1:8889"));
    let out = run(bin()
        .args(["client", &relay.addr.to_string(), "--tls", "--ca"])
        .arg(path("ca.pem"))
        .args(["--count", "3", "--interval", "10ms", "--sensor", "tlsp"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 sent, 3 acked, 0 lost, 0.0% loss"),
        "{stdout}"
    );
    let sensor = server
        .get_https("/api/sensors/tlsp", &path("ca.pem"))
        .json();
    assert_eq!(sensor["peer"], "203.0.113.9:5555", "{sensor}");
    // Without the header, the TLS port refuses the same client.
    let out = run(bin()
        .args(["client", &server.addr.to_string(), "--tls", "--ca"])
        .arg(path("ca.pem"))
        .args(["--count", "1", "--connect-timeout", "5s"]));
    assert!(!out.status.success());
    server.wait_for_log("no valid PROXY protocol v2 header");
}

/// Off (the default), a PROXY header is not looked for: its bytes are just a bad line, and
/// a reading after it is filed under the TCP peer (127.0.0.1), not the header's source.
#[test]
fn off_by_default_a_header_is_not_special() {
    let server = Server::start(&[]);
    let mut peer = proxied_peer(&server, &header("192.0.2.7:40001", "198.51.100.1:8889"));
    // The header's bytes end in no newline: one close the (bad) line they start.
    peer.send(b"\ntemp value=1\nsync s\n");
    let ack = loop {
        let line = peer.line();
        if line.starts_with("ack s ") {
            break line;
        }
    };
    assert!(ack.contains(" readings=1 "), "{ack}");
    assert_eq!(metric(&server, REFUSED), 0.0);
    let local = peer.writer.local_addr().expect("local address");
    let sensor = server.get("/api/sensors/127.0.0.1").json();
    assert_eq!(sensor["peer"], local.to_string(), "{sensor}");
    assert_eq!(server.get("/api/sensors/192.0.2.7").status, 404);
}
