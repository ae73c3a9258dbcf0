//! `sensorlink probe` against the real server's UDP reflector, on loopback: counts, loss
//! split up/down, `--udp off`, signed probes under `--auth`, malformed datagrams and a
//! flood, reply sizes, and `--store`.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sensorlink::probe::wire::{self, Kind};

use crate::harness::*;

/// `sensorlink probe ADDR --json` with `extra`: (exit code, summary, stderr).
fn probe(addr: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = run(bin().args(["probe", addr, "--json"]).args(extra));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.code() != Some(101), "probe panicked: {stderr}");
    (out.status.code(), summary(&out.stdout), stderr)
}

/// The value of a `/metrics` series (e.g. `name{label="x"}`), 0 when absent.
fn metric(server: &Server, series: &str) -> f64 {
    server
        .get("/metrics")
        .body
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn probes_metric(server: &Server, result: &str) -> f64 {
    metric(
        server,
        &format!("sensorlink_udp_probes_total{{result=\"{result}\"}}"),
    )
}

fn wait_for_metric(server: &Server, result: &str, at_least: f64) {
    wait_for(
        || probes_metric(server, result) >= at_least,
        Duration::from_secs(10),
        &format!("sensorlink_udp_probes_total{{result={result}}} >= {at_least}"),
    );
}

fn udp_socket_to(server: &Server, from: [u8; 4]) -> UdpSocket {
    let socket = UdpSocket::bind((std::net::Ipv4Addr::from(from), 0))
        .expect("bind a UDP socket on loopback");
    socket.connect(server.addr).expect("connect UDP");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    socket
}

#[test]
fn two_hundred_probes_at_1ms_are_all_answered_and_counted_by_the_server() {
    let server = Server::start(&[]);
    let (code, s, stderr) = probe(
        &server.addr.to_string(),
        &["--count", "200", "--interval", "1ms"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(s["sent"], 200, "{s}");
    assert_eq!(s["received"], 200, "{s}");
    assert_eq!(s["server_received"], 200, "{s}");
    assert_eq!(
        (s["lost_up"].as_u64(), s["lost_down"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(s["loss_up_percent"], 0.0);
    assert_eq!(s["loss_down_percent"], 0.0);
    assert_eq!(s["duplicates"], 0);
    let rtt = &s["rtt_ms"];
    assert!(rtt["median"].as_f64().expect("a median") > 0.0, "{s}");
    for key in ["min", "mean", "median", "max", "stddev", "p99"] {
        assert!(rtt[key].is_f64(), "rtt_ms.{key}: {s}");
    }
    for key in ["send_delay_ms", "receive_delay_ms", "ipdv_ms"] {
        assert!(s[key]["median"].is_f64(), "{key}: {s}");
    }
    wait_for_metric(&server, "answered", 200.0);
}

#[test]
fn probes_the_server_rate_limits_are_reported_apart_from_network_loss() {
    let server = Server::start(&["--udp-rate-per-ip", "100"]);
    let (code, s, stderr) = probe(
        &server.addr.to_string(),
        &["--count", "300", "--interval", "1ms"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    let limited = s["rate_limited"].as_u64().expect("a count");
    assert!(
        limited > 0,
        "a burst of 100 cannot serve 300 probes in 0.3 s: {s}"
    );
    assert_eq!(
        s["server_received"].as_u64().map(|n| n + limited),
        s["sent"].as_u64(),
        "every probe either reached the session or was limited: {s}"
    );
    assert_eq!(
        s["lost_up"], 0,
        "the server's drops are not upstream loss: {s}"
    );
    assert_eq!(s["server_count_confirmed"], true, "{s}");
}

/// A server on `0.0.0.0` probed at 127.0.0.2: routing would send the reply from
/// 127.0.0.1, which the probe's connected socket drops. Replies must leave from the address
/// the probe was sent to (Linux: `IP_PKTINFO`), as on a multi-homed server.
#[cfg(target_os = "linux")]
#[test]
fn a_server_on_every_address_replies_from_the_one_probed() {
    let server = Server::start_on("0.0.0.0:0", "memory", &[]);
    let target = format!("127.0.0.2:{}", server.addr.port());
    let (code, s, stderr) = probe(&target, &["--count", "5", "--interval", "1ms"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(s["received"], 5, "{s}");
}

/// A name that resolves to several addresses (`localhost`: `::1`, then `127.0.0.1`) is
/// probed at the first that answers: here a silent one, one that refuses, then the server.
#[test]
fn of_several_addresses_the_first_that_answers_is_probed() {
    use sensorlink::probe::resolve::{pick, ANSWER_WITHIN};

    let server = Server::start(&[]);
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let silent_addr = silent.local_addr().expect("bound address");
    let refusing = {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        socket.local_addr().expect("bound address")
        // Dropped here: nothing listens there any more.
    };
    let addrs = [silent_addr, refusing, server.addr];
    assert_eq!(pick(&addrs, None, ANSWER_WITHIN), Some(server.addr));
    // None answers: the first, as before.
    assert_eq!(
        pick(&[silent_addr, refusing], None, ANSWER_WITHIN),
        Some(silent_addr)
    );
    assert_eq!(pick(&[], None, ANSWER_WITHIN), None);
}

#[test]
fn an_interval_below_1ms_is_refused() {
    let out = run(bin().args(["probe", "127.0.0.1:1", "--interval", "200us"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--interval") && stderr.contains("1ms"),
        "{stderr}"
    );
}

#[test]
fn with_udp_off_nothing_answers_and_the_summary_says_why() {
    let server = Server::start(&["--udp", "off"]);
    let (code, s, stderr) = probe(
        &server.addr.to_string(),
        &["--count", "5", "--interval", "10ms", "--wait", "200ms"],
    );
    assert_eq!(code, Some(2), "no reply at all is exit 2: {stderr}");
    assert_eq!(
        (s["sent"].as_u64(), s["received"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(s["loss_percent"], 100.0);
    assert!(s["rtt_ms"].is_null(), "{s}");
    assert!(stderr.contains("--udp off"), "{stderr}");
}

/// A tokens file made by the real `sensorlink token new`.
fn tokens_file(dir: &tempfile::TempDir) -> (PathBuf, String) {
    let path = dir.path().join("tokens.toml");
    let out = run(bin()
        .args(["token", "new", "--auth"])
        .arg(&path)
        .args(["--sensor", "prober"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    (path, token)
}

#[test]
fn with_auth_only_probes_signed_by_a_token_in_force_are_answered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (path, token) = tokens_file(&dir);
    let server = Server::start(&["--auth", path.to_str().expect("utf-8 path")]);
    let addr = server.addr.to_string();

    let (code, s, stderr) = probe(
        &addr,
        &["--count", "20", "--interval", "1ms", "--token", &token],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(s["received"], 20, "{s}");
    assert_eq!(s["server_received"], 20, "{s}");

    // The right id with a wrong secret: the MAC does not verify.
    let wrong = format!("{}{}", &token[..token.len() - 4], "zzzz");
    assert_ne!(wrong, token);
    let (code, s, stderr) = probe(
        &addr,
        &[
            "--count",
            "5",
            "--interval",
            "1ms",
            "--wait",
            "200ms",
            "--token",
            &wrong,
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(s["received"], 0, "{s}");
    assert!(stderr.contains("the token was refused"), "{stderr}");
    wait_for_metric(&server, "bad_mac", 5.0);

    // Unsigned: dropped too.
    let (_, s, _) = probe(
        &addr,
        &["--count", "3", "--interval", "1ms", "--wait", "200ms"],
    );
    assert_eq!(s["received"], 0, "{s}");
    wait_for_metric(&server, "unsigned", 3.0);

    // Revoked and reloaded: the token stops signing.
    let out = run(bin()
        .args(["token", "revoke", "--auth"])
        .arg(&path)
        .arg(&token[3..11]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.signal(libc::SIGHUP);
    wait_for(
        || {
            metric(
                &server,
                "sensorlink_reloads_total{what=\"auth\",result=\"ok\"}",
            ) >= 1.0
        },
        Duration::from_secs(10),
        "the tokens file reloaded",
    );
    let (_, s, _) = probe(
        &addr,
        &[
            "--count",
            "3",
            "--interval",
            "1ms",
            "--wait",
            "200ms",
            "--token",
            &token,
        ],
    );
    assert_eq!(s["received"], 0, "a revoked token's probes: {s}");
}

#[test]
fn malformed_datagrams_and_a_flood_are_counted_and_others_still_answered() {
    let server = Server::start(&["--udp-rate-per-ip", "100"]);
    // From another loopback address, so the flood has its own rate bucket.
    let flooder = udp_socket_to(&server, [127, 0, 0, 2]);
    for _ in 0..5 {
        flooder.send(b"short").expect("send");
    }
    for _ in 0..5 {
        flooder.send(&[0xAB; 64]).expect("send");
    }
    let mut request = Vec::new();
    for seq in 0..2000 {
        wire::encode_request(Kind::Probe, 1, seq, 0, None, 64, &mut request);
        flooder.send(&request).expect("send");
    }
    wait_for_metric(&server, "too_short", 5.0);
    wait_for_metric(&server, "malformed", 5.0);
    wait_for_metric(&server, "rate_limited", 1.0);

    let (code, s, stderr) = probe(
        &server.addr.to_string(),
        &["--count", "20", "--interval", "1ms"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        s["received"], 20,
        "the flood from another address costs us nothing: {s}"
    );
}

#[test]
fn a_reply_is_exactly_as_long_as_its_request() {
    let server = Server::start(&[]);
    let socket = udp_socket_to(&server, [127, 0, 0, 1]);
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    for (seq, size) in [56, 57, 100, 512, 1472].into_iter().enumerate() {
        wire::encode_request(Kind::Probe, 77, seq as u64, 5, None, size, &mut request);
        socket.send(&request).expect("send");
        let len = socket.recv(&mut buf).expect("a reply");
        assert_eq!(len, size);
        let reply = wire::decode_reply(&buf[..len]).expect("a reply");
        assert_eq!((reply.session, reply.seq), (77, seq as u64));
        assert_eq!(reply.server_received, seq as u64 + 1);
        assert!(reply.server_send_ns >= reply.server_receive_ns);
    }
}

#[test]
fn store_lands_the_summary_as_a_link_reading() {
    let store = TempStore::new();
    let server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let out = run(bin().args([
        "probe",
        &server.addr.to_string(),
        "--count",
        "20",
        "--interval",
        "1ms",
        "--store",
        "--sensor",
        "prober",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("summary stored"), "{stdout}");
    let rows = store.rows(&["--measurement", "sensorlink_link", "--sensor", "prober"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["tags"]["probe"], "udp", "{row}");
    let fields = &row["fields"];
    assert_eq!(fields["sent"], 20, "{row}");
    assert_eq!(fields["received"], 20, "{row}");
    assert_eq!(fields["server_received"], 20, "{row}");
    assert_eq!(fields["lost_up"], 0, "{row}");
    assert_eq!(fields["lost_down"], 0, "{row}");
    assert!(
        fields["probe_rtt_p50_ms"].as_f64().expect("a float") > 0.0,
        "{row}"
    );
    assert!(fields["loss_down_percent"].is_f64(), "{row}");

    // The dashboard's link columns read the fields a client's link report has.
    let link = || {
        let sensors = server.get("/api/sensors").json();
        sensors["sensors"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["sensor"] == "prober"))
            .map(|prober| prober["link"].clone())
            .unwrap_or_default()
    };
    wait_for(
        || link()["sent"] == 20,
        Duration::from_secs(10),
        "the probe summary as the sensor's link in /api/sensors",
    );
    assert!(link()["rtt_p50_ms"].as_f64().expect("a float") > 0.0);
}

#[test]
fn a_udp_port_taken_fails_the_start_and_names_udp_off() {
    // Hold the UDP port, leave its TCP twin free (retry if something else holds that).
    for _ in 0..5 {
        let held = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let addr = held.local_addr().expect("bound address");
        if std::net::TcpListener::bind(addr).is_err() {
            continue;
        }
        let out = run(bin().args([
            "server",
            "--listen",
            &addr.to_string(),
            "--store",
            "memory",
            "--http",
            "off",
        ]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains(&format!("binding {addr}:")) {
            // The TCP twin was taken in between: try another port.
            continue;
        }
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("binding UDP"), "{stderr}");
        assert!(stderr.contains("--udp off"), "{stderr}");
        return;
    }
    panic!("no UDP port whose TCP twin stayed free in 5 tries");
}

/// A reflector on a test socket that loses, duplicates and reorders on purpose, so every
/// figure of the summary is known: of each ten probes, seq ≡ 3 never reaches it (lost
/// upstream), ≡ 7's reply is never sent (lost downstream), ≡ 5's reply is sent twice and
/// ≡ 1's reply is held back until ≡ 2's has gone (reordered).
#[test]
fn loss_is_split_up_and_down_and_duplicates_and_reordering_are_counted() {
    use sensorlink::probe::reflector::Reflector;

    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let addr = socket.local_addr().expect("bound address");
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut reflector = Reflector::new(1_000_000, None);
            let mut buf = [0u8; 2048];
            let mut held: Option<(Vec<u8>, std::net::SocketAddr)> = None;
            while !stop.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let datagram = &mut buf[..len];
                let Ok((kind, seq)) = wire::decode_request(datagram).map(|r| (r.kind, r.seq))
                else {
                    continue;
                };
                let probe = kind == Kind::Probe;
                if probe && seq % 10 == 3 {
                    continue;
                }
                let now = sensorlink::timefmt::now_ns();
                reflector
                    .handle(datagram, from.ip(), std::time::Instant::now(), now)
                    .expect("the client's datagrams are well-formed");
                wire::stamp_send(datagram, now);
                match seq % 10 {
                    7 if probe => {}
                    1 if probe => held = Some((datagram.to_vec(), from)),
                    _ => {
                        socket.send_to(datagram, from).expect("send");
                        if probe && seq % 10 == 5 {
                            socket.send_to(datagram, from).expect("send");
                        }
                        if probe && seq % 10 == 2 {
                            if let Some((late, to)) = held.take() {
                                socket.send_to(&late, to).expect("send");
                            }
                        }
                    }
                }
            }
        })
    };
    let config = sensorlink::probe::ProbeArgs {
        addr: addr.to_string(),
        interval: Duration::from_millis(2),
        duration: None,
        count: Some(100),
        size: 64,
        json: false,
        token: None,
        store: false,
        sensor: None,
        wait: Some(Duration::from_millis(300)),
        tls: false,
        ca: None,
        tls_server_name: None,
    }
    .validate()
    .expect("valid settings");
    let never = Arc::new(AtomicBool::new(false));
    let outcome = sensorlink::probe::session::run(&config, 42, never, |_| {}).expect("a run");
    stop.store(true, Ordering::Relaxed);
    server.join().expect("the test reflector ran");
    let s = outcome.tally.summary(outcome.sent, outcome.late);
    assert_eq!(
        (s.sent, s.server_received, s.received),
        (100, 90, 80),
        "{s:?}"
    );
    assert_eq!((s.lost_up, s.lost_down), (Some(10), Some(10)), "{s:?}");
    assert_eq!(
        (s.loss_up_percent, s.loss_down_percent),
        (Some(10.0), Some(100.0 / 9.0))
    );
    assert_eq!((s.duplicates, s.reordered), (10, 10), "{s:?}");
    let ipdv = s.ipdv_ms.expect("pairs");
    assert!(ipdv.max >= ipdv.median && ipdv.median >= ipdv.min && ipdv.min >= 0.0);
}

#[test]
fn store_goes_over_tls_when_the_sensor_port_serves_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(bin().args(["cert", "--dir"]).arg(dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = TempStore::new();
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_string();
    let server = Server::start_on(
        "127.0.0.1:0",
        &store.url(),
        &[
            "--tls-cert",
            &path("server.pem"),
            "--tls-key",
            &path("server-key.pem"),
        ],
    );
    let out = run(bin().args([
        "probe",
        &server.addr.to_string(),
        "--count",
        "10",
        "--interval",
        "1ms",
        "--store",
        "--sensor",
        "tls-prober",
        "--tls",
        "--ca",
        &path("ca.pem"),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = store.rows(&["--measurement", "sensorlink_link", "--sensor", "tls-prober"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["fields"]["sent"], 10, "{rows:?}");
}

#[test]
fn ctrl_c_stops_sending_and_still_prints_the_summary() {
    use std::io::BufRead as _;
    use std::process::Stdio;

    let server = Server::start(&[]);
    let mut child = KillOnDrop(
        bin()
            .args([
                "probe",
                &server.addr.to_string(),
                "--json",
                "--duration",
                "60s",
            ])
            .args(["--interval", "10ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn probe"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    // The first live line: the run (and its signal watcher) is up.
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        let live = line.contains("\"event\":\"live\"");
        seen.push(line);
        if live {
            break;
        }
    }
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    seen.extend(lines.map_while(Result::ok));
    let status = child.0.wait().expect("wait for probe");
    assert_eq!(status.code(), Some(0), "{seen:?}");
    let s = summary(seen.join("\n").as_bytes());
    let sent = s["sent"].as_u64().expect("sent");
    assert!((1..6000).contains(&sent), "stopped early: {s}");
    assert_eq!(s["received"], sent, "{s}");
    assert_eq!(s["lost_up"], 0, "{s}");
}
