//! The live view through the real binary: `/api/sensors` with 1,000 bench sensors, the
//! SSE stream delivering a reading as it is acked, and a subscriber that never reads
//! leaving ingest alone. Bounds here are liveness guards, not benchmarks.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A `sensorlink bench` in the background, killed on drop unless waited for.
struct Bench(Option<std::process::Child>);

impl Bench {
    /// Wait (bounded) for its exit and output.
    fn output(mut self) -> std::process::Output {
        wait_output(self.0.take().expect("not waited for yet"))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            drop(KillOnDrop(child));
        }
    }
}

/// Start `sensorlink bench ADDR <args>` in the background.
fn spawn_bench(server: &Server, args: &[&str]) -> Bench {
    let child = bin()
        .arg("bench")
        .arg(server.addr.to_string())
        .args(args)
        .arg("--no-progress")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sensorlink bench");
    Bench(Some(child))
}

fn sensors(server: &Server, query: &str) -> serde_json::Value {
    let response = server.get(&format!("/api/sensors?{query}"));
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.content_type, "application/json");
    response.json()
}

fn names(page: &serde_json::Value) -> Vec<String> {
    page["sensors"]
        .as_array()
        .unwrap_or_else(|| panic!("no sensors array: {page}"))
        .iter()
        .map(|sensor| sensor["sensor"].as_str().expect("a name").to_string())
        .collect()
}

/// `state` filter: every entry has the state, and `total` agrees with `counts` of the
/// same answer (taken at one instant).
fn assert_state_filter(server: &Server, state: &str) -> u64 {
    let page = sensors(server, &format!("state={state}&limit=1000"));
    for sensor in page["sensors"].as_array().expect("sensors") {
        assert_eq!(sensor["state"], state, "{sensor}");
    }
    assert_eq!(page["total"], page["counts"][state], "{page}");
    page["total"].as_u64().expect("total")
}

#[test]
fn a_thousand_bench_sensors_are_paged_then_disconnected() {
    // A thousand connections from one address: above the default per-address share.
    let server = Server::start(&["--max-connections-per-ip", "1000"]);
    let bench = spawn_bench(
        &server,
        &[
            "--connections",
            "1000",
            "--idle",
            "--interval",
            "1s",
            // Ended by a kill below, never by time: the test must not race the clock.
            "--duration",
            "1h",
            "--json",
        ],
    );
    wait_for(
        || sensors(&server, "limit=0")["counts"]["connected"] == 1000,
        PATIENCE,
        "1000 connected sensors",
    );

    // Pages of 300: sorted, disjoint, complete.
    let mut seen = Vec::new();
    for offset in [0, 300, 600, 900] {
        let page = sensors(&server, &format!("limit=300&offset={offset}"));
        assert_eq!(page["total"], 1000, "{offset}");
        assert_eq!(page["offset"], offset);
        let names = names(&page);
        assert_eq!(names.len(), if offset == 900 { 100 } else { 300 });
        seen.extend(names);
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), 1000, "pages overlap");
    let expected: BTreeSet<String> = (0..1000).map(|i| format!("bench-{i}")).collect();
    assert_eq!(
        unique.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "sorted by name");

    // q: a case-insensitive substring.
    let page = sensors(&server, "q=BENCH-99&limit=1000");
    assert_eq!(
        names(&page),
        [
            "bench-99",
            "bench-990",
            "bench-991",
            "bench-992",
            "bench-993",
            "bench-994",
            "bench-995",
            "bench-996",
            "bench-997",
            "bench-998",
            "bench-999"
        ]
    );
    assert_eq!(page["total"], 11);
    assert_state_filter(&server, "connected");

    let one = server.get("/api/sensors/bench-7").json();
    assert_eq!(one["sensor"], "bench-7");
    assert_eq!(one["mode"], "line");
    assert!(one["readings"].as_u64() >= Some(1), "{one}");
    assert!(one["last"]["value"].is_number(), "{one}");
    assert_eq!(server.get("/api/sensors/bench-1000").status, 404);

    // The bench is killed (its sockets close): every sensor turns disconnected.
    drop(bench);
    wait_for(
        || sensors(&server, "limit=0")["counts"]["disconnected"] == 1000,
        PATIENCE,
        "1000 disconnected sensors",
    );
    assert_eq!(assert_state_filter(&server, "disconnected"), 1000);
    assert_eq!(assert_state_filter(&server, "connected"), 0);
}

/// An `/api/events` stream read over a raw socket. HTTP/1.0, so the body is the bare
/// event stream (no chunked framing).
struct EventStream {
    stream: TcpStream,
    text: String,
}

impl EventStream {
    /// Open it and read the response head: once it is here the subscription exists.
    fn open(server: &Server, query: &str) -> EventStream {
        let mut stream = connect(server.http.expect("HTTP on"));
        write!(
            stream,
            "GET /api/events{query} HTTP/1.0\r\nHost: test\r\n\r\n"
        )
        .expect("send the request");
        let mut events = EventStream {
            stream,
            text: String::new(),
        };
        while !events.text.contains("\r\n\r\n") {
            events.read_some();
        }
        let (head, body) = events
            .text
            .split_once("\r\n\r\n")
            .map(|(h, b)| (h.to_string(), b.to_string()))
            .expect("a response head");
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        assert!(head.contains("content-type: text/event-stream"), "{head}");
        events.text = body;
        events
    }

    fn read_some(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).expect("read the event stream");
        assert!(n > 0, "the event stream ended: {:?}", self.text);
        self.text
            .push_str(std::str::from_utf8(&chunk[..n]).expect("UTF-8"));
    }

    /// The next event of `kind` (earlier events of other kinds are skipped) and when it
    /// was read.
    fn next(&mut self, kind: &str) -> (serde_json::Value, Instant) {
        loop {
            while let Some((event, rest)) = self.text.split_once("\n\n") {
                let (event, rest) = (event.to_string(), rest.to_string());
                self.text = rest;
                if let Some(data) = event
                    .strip_prefix(&format!("event: {kind}\ndata: "))
                    .map(str::to_string)
                {
                    let json = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("{kind} data is not JSON ({e}): {data}"));
                    return (json, Instant::now());
                }
            }
            self.read_some();
        }
    }
}

/// The requirement: SSE delivers a reading within the same second it is acked.
/// The bound is a generous liveness check (ack + 1 s); the measured gap is printed.
#[test]
fn sse_delivers_a_reading_as_it_is_acked() {
    let server = Server::start(&[]);
    let mut events = EventStream::open(&server, "?sensor=sse-1");
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"other,sensor=nobody v=1i 1\nm,sensor=sse-1 v=42i,ok=true 1000\nsync a\n");
    let ack = peer.line();
    let acked = Instant::now();
    assert!(ack.starts_with("ack a readings=2 "), "{ack}");

    let (sensor, _) = events.next("sensor");
    assert_eq!(sensor["sensor"], "sse-1", "{sensor}");
    assert_eq!(sensor["state"], "connected", "{sensor}");
    let (reading, arrived) = events.next("reading");
    assert_eq!(
        reading,
        serde_json::json!({"sensor":"sse-1","measurement":"m","tags":{"sensor":"sse-1"},
            "fields":{"v":42,"ok":true},"time_ns":1000})
    );
    let after_ack = arrived.saturating_duration_since(acked);
    eprintln!("SSE reading arrived {after_ack:?} after the ack was read");
    assert!(
        after_ack <= Duration::from_secs(1),
        "SSE reading {after_ack:?} after its ack"
    );

    // The server's figures every second (this one counts the ack above, or a later one).
    wait_for(
        || events.next("server").0["readings_acked_total"] == 2,
        PATIENCE,
        "a server event counting the 2 acked readings",
    );

    // The peer leaves: its sensor turns disconnected, announced on the stream.
    drop(peer);
    let (sensor, _) = events.next("sensor");
    assert_eq!(sensor["state"], "disconnected", "{sensor}");
}

/// `?every=`: a fast sensor's readings come folded, the newest with the count of those it
/// stands for, adding up to what was acked.
#[test]
fn a_folding_stream_gets_the_newest_reading_and_the_count() {
    let server = Server::start(&[]);
    let mut events = EventStream::open(&server, "?sensor=fold-1&every=100ms");
    let mut peer = LinePeer::new(server.addr);
    let readings = 500;
    let mut lines = String::new();
    for i in 1..=readings {
        lines.push_str(&format!("m,sensor=fold-1 v={i}i {i}\n"));
    }
    lines.push_str("sync f\n");
    peer.send(lines.as_bytes());
    let ack = peer.line();
    assert!(
        ack.starts_with(&format!("ack f readings={readings} ")),
        "{ack}"
    );
    let started = Instant::now();
    let (mut counted, mut events_read, mut newest) = (0, 0, 0);
    while counted < readings {
        assert!(
            started.elapsed() < PATIENCE,
            "{counted} of {readings} readings counted in {events_read} events"
        );
        let (reading, _) = events.next("reading");
        events_read += 1;
        counted += reading["count"].as_i64().expect("a count");
        newest = reading["fields"]["v"].as_i64().expect("v");
    }
    assert_eq!(counted, readings, "no reading counted twice");
    assert_eq!(newest, readings, "the newest comes last");
    eprintln!("{readings} readings folded into {events_read} events");
    assert!(events_read < readings, "folded: {events_read} events");
}

/// The value of an unlabelled series in `/metrics` (0 when absent).
fn metric(server: &Server, name: &str) -> f64 {
    let text = server.get("/metrics").body;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A subscriber that connects to `/api/events` and never reads: the same bench run
/// completes with every reading acked, with and without it, and the server drops and
/// counts it once it falls behind.
#[test]
fn a_subscriber_that_never_reads_does_not_slow_ingest() {
    let server = Server::start(&[]);
    let count = "200000";
    let args = [
        "--count",
        count,
        "--connections",
        "2",
        "--pipeline",
        "64",
        "--batch",
        "64",
        "--json",
    ];
    let run_bench = || {
        let out = spawn_bench(&server, &args).output();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        assert_eq!(report["errors"], 0, "{report}");
        assert_eq!(report["unacked"], 0, "{report}");
        report["readings"].as_u64().expect("readings")
    };
    let without = run_bench();

    let mut stalled = connect(server.http.expect("HTTP on"));
    shrink_receive_buffer(&stalled);
    stalled
        .write_all(b"GET /api/events HTTP/1.0\r\nHost: test\r\n\r\n")
        .expect("send the request");
    wait_for(
        || metric(&server, "sensorlink_sse_subscribers") == 1.0,
        PATIENCE,
        "the subscriber to be registered",
    );
    let with = run_bench();
    assert_eq!(without, with);
    assert_eq!(with, count.parse::<u64>().expect("a number"));
    wait_for(
        || metric(&server, "sensorlink_sse_lagged_total") == 1.0,
        PATIENCE,
        "the stalled subscriber to be counted as lagged",
    );
    server.wait_for_log("event subscriber fell behind");
    drop(stalled);
}

/// A small receive buffer (no autotuning), so a reader that never reads stalls the server
/// after a few KiB whatever the machine's TCP settings: the subscriber surely lags.
fn shrink_receive_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let bytes: libc::c_int = 4096;
    // SAFETY: a valid socket fd owned by `stream`, and a c_int option value of its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt SO_RCVBUF: {}",
        std::io::Error::last_os_error()
    );
}

/// A real client's link reports land in `link` (not in `values` nor the sparkline), its
/// readings in `values`, `last` and `spark`; it turns disconnected once it exits.
#[test]
fn a_clients_link_reports_and_readings_in_its_sensor_entry() {
    let server = Server::start(&[]);
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "10",
        "--interval",
        "20ms",
        "--link-report",
        "100ms",
        "--sensor",
        "linky",
        "--json",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = summary(&out.stdout);
    wait_for(
        || server.get("/api/sensors/linky").json()["state"] == "disconnected",
        PATIENCE,
        "linky to turn disconnected",
    );
    let sensor = server.get("/api/sensors/linky").json();
    let link_reports = summary["link_reports_acked"].as_u64().expect("a count");
    assert!(link_reports >= 1, "{summary}");
    assert_eq!(sensor["readings"], 10 + link_reports, "{sensor}");
    let values = sensor["values"].as_object().expect("values");
    assert!(!values.contains_key("sensorlink_link"), "{sensor}");
    assert_eq!(values.len(), 1, "the client's one measurement: {sensor}");
    let link = sensor["link"].as_object().expect("a link report");
    for field in [
        "time_ns",
        "interval_s",
        "sent",
        "acked",
        "lost",
        "reconnects",
    ] {
        assert!(link.contains_key(field), "{field}: {sensor}");
    }
    assert_eq!(
        sensor["last"]["measurement"],
        *values.keys().next().expect("one")
    );
    let spark = sensor["spark"].as_array().expect("spark");
    assert_eq!(spark.len(), 10, "one point per reading: {sensor}");
    assert_eq!(sensor["mode"], "line");
    assert!(sensor["ack_latency_ms"]["p99"].is_number(), "{sensor}");
}

/// `--stale-after`: a connected sensor that goes silent turns `stale` (announced by the
/// periodic sweep), and `connected` again with its next reading.
#[test]
fn a_silent_connected_sensor_turns_stale_and_back() {
    // Long enough that a loaded machine never shows the first commit as stale already.
    let server = Server::start(&["--stale-after", "1s"]);
    let mut events = EventStream::open(&server, "?sensor=quiet");
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"m,sensor=quiet v=1i\nsync a\n");
    assert!(peer.line().starts_with("ack a readings=1 "));
    assert_eq!(events.next("sensor").0["state"], "connected");
    let (stale, _) = events.next("sensor");
    assert_eq!(stale["state"], "stale", "{stale}");
    assert_eq!(stale["connections"], 1, "{stale}");
    let page = sensors(&server, "state=stale");
    assert_eq!(names(&page), ["quiet"], "{page}");

    peer.send(b"m,sensor=quiet v=2i\nsync b\n");
    assert!(peer.line().starts_with("ack b readings=1 "));
    assert_eq!(events.next("sensor").0["state"], "connected");
}

/// A seed (legacy) peer has no sensor tag: its IP names it, in mode `legacy`, with the
/// counter as its primary series.
#[test]
fn a_legacy_peer_is_named_by_its_address() {
    let server = Server::start(&[]);
    let mut seed = server.connect();
    seed.write_all(b"ping / ('2026-11-24 11:46:25.5', 102)")
        .expect("send");
    assert_eq!(read_n(&mut seed, 4), b"pong");
    let sensor = server.get("/api/sensors/127.0.0.1").json();
    assert_eq!(sensor["mode"], "legacy", "{sensor}");
    assert_eq!(sensor["state"], "connected", "{sensor}");
    assert_eq!(sensor["values"]["legacy"]["value"], 102, "{sensor}");
    assert_eq!(sensor["last"]["value"], 102.0, "{sensor}");
    drop(seed);
    wait_for(
        || server.get("/api/sensors/127.0.0.1").json()["state"] == "disconnected",
        PATIENCE,
        "the legacy peer to turn disconnected",
    );
}
