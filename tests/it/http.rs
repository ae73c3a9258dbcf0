//! The HTTP side through the real binary: `--http`, probes, dashboard assets, `/metrics`.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};

use crate::harness::{bin, run, wait_for, LinePeer, Server, TempStore, PATIENCE};

#[test]
fn healthz_dashboard_and_metrics_are_served() {
    let server = Server::start(&[]);
    let http = server.http.expect("HTTP is on by default in tests");
    assert!(http.ip().is_loopback(), "{http}");
    assert_ne!(http.port(), 0, "the real port is printed");

    let health = server.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(page.body.contains("<script src=\"/app.js\">"), "{page:?}");
    for (path, content_type) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let asset = server.get(path);
        assert_eq!(asset.status, 200, "{path}");
        assert!(asset.content_type.starts_with(content_type), "{asset:?}");
    }

    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{metrics:?}"
    );
    assert!(
        metrics
            .body
            .contains("# TYPE sensorlink_readings_accepted_total counter\n"),
        "{}",
        metrics.body
    );
}

#[test]
fn http_off_prints_no_http_line() {
    let server = Server::start(&["--http", "off"]);
    assert_eq!(server.http, None);
}

/// A taken HTTP port is a startup error, as a taken sensor port is: exit 2, the address
/// named, and `listening on` never printed.
#[test]
fn taken_http_port_is_a_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let addr = taken.local_addr().expect("bound address").to_string();
    let out = run(bin()
        .args(["server", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(["--http", &addr])
        .env_remove("SENSORLINK_CONFIG")
        .stdin(Stdio::null()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("binding the HTTP address {addr}")),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening on"), "{stdout}");
}

/// Prometheus text as parsed by [`parse_prometheus`]: each family's type, and every sample.
#[derive(Debug, Default)]
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// The value of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == labels)
            .map(|(_, _, v)| *v)
    }

    /// Like [`Scrape::value`], panicking (with the text) when the series is missing.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in {self:#?}"))
    }
}

/// A metric or label name as the exposition format allows it.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parse the Prometheus text exposition format (0.0.4), strictly: a malformed line, a
/// sample of a family without `# TYPE`, or a histogram whose buckets do not add up panics.
fn parse_prometheus(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                scrape.types.insert(name.into(), kind.into()).is_none(),
                "{name} typed twice"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample: series value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .unwrap_or_else(|e| panic!("{line:?}: value: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').expect(line))),
        };
        assert!(valid_name(name), "{line}");
        scrape.samples.push((name.into(), labels, value));
    }
    for (name, _, _) in &scrape.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                (scrape.types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(name);
        assert!(scrape.types.contains_key(family), "{name} has no # TYPE");
    }
    for (family, kind) in &scrape.types {
        if kind != "histogram" {
            continue;
        }
        let mut buckets: Vec<(f64, f64)> = scrape
            .samples
            .iter()
            .filter(|(n, _, _)| *n == format!("{family}_bucket"))
            .map(|(_, labels, v)| {
                let le = &labels["le"];
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le is a number")
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family}: buckets are cumulative"
        );
        let inf = buckets.last().expect("a +Inf bucket");
        assert_eq!(inf.0, f64::INFINITY, "{family}");
        assert_eq!(Some(inf.1), scrape.value(&format!("{family}_count"), &[]));
    }
    scrape
}

/// `k="v",k2="v2"` with the format's escapes (`\\`, `\"`, `\n`).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
        assert!(valid_name(key), "label {key:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().expect("escape").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.to_string(), value);
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    labels
}

/// Read reply lines until the `ack` of `token`; returns the `error` lines before it.
fn errors_until_ack(peer: &mut LinePeer, token: &str, received: &mut usize) -> Vec<String> {
    let mut errors = Vec::new();
    loop {
        let line = peer.line();
        *received += line.len() + 1;
        if line.starts_with(&format!("ack {token} ")) {
            return errors;
        }
        assert!(line.starts_with("error "), "{line}");
        errors.push(line);
    }
}

/// Readings, bad lines of four reasons, and syncs through the real binary: `/metrics`,
/// parsed as Prometheus text, counts exactly what was sent, acked and rejected.
#[test]
fn metrics_count_what_was_sent_acked_and_rejected() {
    let server = Server::start(&["--max-line-bytes", "100"]);
    let mut peer = LinePeer::new(server.addr);
    let (mut sent, mut received) = (0, 0);
    let mut send = |peer: &mut LinePeer, bytes: &[u8]| {
        peer.send(bytes);
        sent += bytes.len();
    };
    const BATCHES: u64 = 3;
    const PER_BATCH: u64 = 10;
    for batch in 0..BATCHES {
        let mut burst = String::new();
        for i in 0..PER_BATCH {
            let n = batch * PER_BATCH + i;
            burst.push_str(&format!("m,sensor=s{batch} v={n}i {}\n", 1000 + n));
        }
        if batch == 0 {
            burst.push_str("weather temp=abc\nhello world\nbye now\n");
            burst.push_str(&format!("{}\n", "x".repeat(200)));
        }
        send(&mut peer, burst.as_bytes());
        if batch == 0 {
            send(&mut peer, b"\xff\xfe=1\n");
        }
        send(&mut peer, format!("sync b{batch}\n").as_bytes());
        let errors = errors_until_ack(&mut peer, &format!("b{batch}"), &mut received);
        assert_eq!(errors.len(), if batch == 0 { 5 } else { 0 }, "{errors:?}");
    }
    let readings = (BATCHES * PER_BATCH) as f64;

    // The ack's bytes reach us just before the server counts their write: poll (bounded).
    let scrape = || parse_prometheus(&server.get("/metrics").body);
    wait_for(
        || scrape().value("sensorlink_sent_bytes_total", &[]) == Some(received as f64),
        PATIENCE,
        "the acks' write to be counted",
    );
    let m = scrape();
    assert_eq!(m.types["sensorlink_readings_accepted_total"], "counter");
    assert_eq!(m.get("sensorlink_readings_accepted_total", &[]), readings);
    assert_eq!(m.get("sensorlink_readings_acked_total", &[]), readings);
    assert_eq!(
        m.get(
            "sensorlink_readings_committed_total",
            &[("outcome", "inserted")]
        ),
        readings
    );
    for (reason, count) in [
        ("invalid_reading", 1.0),
        ("unknown_command", 2.0),
        ("oversize", 1.0),
        ("invalid_utf8", 1.0),
        ("invalid_command", 0.0),
        ("invalid_legacy", 0.0),
    ] {
        assert_eq!(
            m.get("sensorlink_lines_rejected_total", &[("reason", reason)]),
            count,
            "{reason}"
        );
    }
    assert_eq!(m.get("sensorlink_replies_total", &[("kind", "ack")]), 3.0);
    assert_eq!(m.get("sensorlink_replies_total", &[("kind", "error")]), 5.0);
    // One ack latency sample per ack (from its first reading).
    assert_eq!(m.types["sensorlink_ack_latency_seconds"], "histogram");
    assert_eq!(m.get("sensorlink_ack_latency_seconds_count", &[]), 3.0);
    // Every reading in exactly one commit, each commit timed.
    let commits = m.get("sensorlink_store_commits_total", &[]);
    assert!((1.0..=readings).contains(&commits), "{commits}");
    assert_eq!(m.get("sensorlink_store_commit_rows_count", &[]), commits);
    assert_eq!(m.get("sensorlink_store_commit_rows_sum", &[]), readings);
    assert_eq!(
        m.get("sensorlink_store_commit_duration_seconds_count", &[]),
        commits
    );
    assert_eq!(m.get("sensorlink_store_queued_readings", &[]), 0.0);
    assert_eq!(m.get("sensorlink_received_bytes_total", &[]), sent as f64);
    assert_eq!(m.get("sensorlink_sent_bytes_total", &[]), received as f64);
    assert_eq!(m.get("sensorlink_connections_accepted_total", &[]), 1.0);
    assert_eq!(m.get("sensorlink_connections_open", &[]), 1.0);
    assert_eq!(
        m.get("sensorlink_connections_mode_total", &[("mode", "line")]),
        1.0
    );
    assert_eq!(
        m.get("sensorlink_store_errors_total", &[("op", "commit")]),
        0.0
    );
    // No per-sensor series (the cardinality rule): three sensors, no `sensor` label except
    // on the bounded per-sensor TCP gauges (the first 100 sensors sampled; issue 11).
    assert!(m.samples.iter().all(|(name, labels, _)| {
        !labels.contains_key("sensor") || name.starts_with("sensorlink_sensor_tcp_")
    }));

    drop(peer);
    wait_for(
        || {
            let m = scrape();
            m.value("sensorlink_connections_closed_total", &[("reason", "eof")]) == Some(1.0)
                && m.value("sensorlink_connections_open", &[]) == Some(0.0)
        },
        PATIENCE,
        "the closed connection to be counted",
    );
}

#[test]
fn prometheus_parser_rejects_what_it_should() {
    let good = "# TYPE a_total counter\na_total{k=\"x\\\"y\"} 3\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let scrape = parse_prometheus(good);
    assert_eq!(scrape.get("a_total", &[("k", "x\"y")]), 3.0);
    assert_eq!(scrape.get("h_count", &[]), 2.0);
    for bad in [
        "a_total 1\n",                                              // no TYPE
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", // +Inf ≠ count
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // not cumulative
        "# TYPE a counter\na{k=x} 1\n", // unquoted label
        "# TYPE a counter\na one\n",    // not a number
    ] {
        let parsed = std::panic::catch_unwind(|| parse_prometheus(bad));
        assert!(parsed.is_err(), "accepted {bad:?}");
    }
}

/// `/readyz` is 200 while commits succeed, 503 once the store cannot write, and 200 again
/// when the writer's probe finds the store writable, without any reading to prove it: the
/// server runs under a file-size limit (`ulimit -f`, SIGXFSZ ignored, so writes fail with
/// EFBIG as on a full disk), large readings grow the SQLite WAL past it, and the probe
/// (`BEGIN IMMEDIATE; ROLLBACK`) writes nothing, so it succeeds once they stop.
#[test]
fn readyz_turns_503_when_the_store_cannot_write_and_back_when_it_can() {
    let store = TempStore::new();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"trap '' XFSZ; ulimit -f 2048 || exit 97; exec "$0" "$@""#,
        env!("CARGO_BIN_EXE_sensorlink"),
        "server",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--store",
        &store.url(),
    ])
    .env_remove("SENSORLINK_CONFIG");
    let server = Server::spawn(cmd, &store.url());
    let ready = server.get("/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    let mut peer = LinePeer::new(server.addr);
    let payload = "x".repeat(30_000);
    let mut failures = 0;
    // Each failed commit makes it not ready until the next probe (about a second later):
    // send until one failure is seen as a 503 (a slow machine may miss the first window).
    let not_ready = (0..1000).find_map(|n| {
        peer.send(format!("big,sensor=a s=\"{payload}\" {n}\nsync {n}\n").as_bytes());
        let reply = peer.line();
        if reply.starts_with(&format!("ack {n} ")) {
            return None;
        }
        assert!(reply.contains("store failed"), "{reply}");
        failures += 1;
        let ready = server.get("/readyz");
        (ready.status == 503).then_some(ready)
    });
    let ready = not_ready.expect("30 MB of readings cannot fit under a 1–2 MiB file-size limit");
    assert!(
        ready.body.starts_with("not ready: store failing: "),
        "{ready:?}"
    );
    let m = parse_prometheus(&server.get("/metrics").body);
    assert!(m.get("sensorlink_store_errors_total", &[("op", "commit")]) >= 1.0);
    // Health is about the process, not the store.
    assert_eq!(server.get("/healthz").status, 200);

    // No more readings: the probe alone makes it ready again.
    wait_for(
        || server.get("/readyz").status == 200,
        PATIENCE,
        "/readyz to recover through the store probe",
    );
    assert_eq!(server.get("/api/server").json()["ready"], true);
    let m = parse_prometheus(&server.get("/metrics").body);
    assert_eq!(
        m.get("sensorlink_store_errors_total", &[("op", "commit")]),
        f64::from(failures),
        "no commit since the last failure: the probe did it"
    );
}

/// `/api/readings` applies the filters of `sensorlink query`, limits, orders, and tells a
/// truncated answer.
#[test]
fn api_readings_filters_like_query() {
    let server = Server::start(&[]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(
        b"t,sensor=a v=1i 1000\nt,sensor=a v=2i 2000\nt,sensor=b v=3i 3000\nu,sensor=a w=4.5,ok=true,s=\"hi\" 4000\nsync s\n",
    );
    assert!(peer.line().starts_with("ack s readings=4 rejected=0"));

    let times = |path: &str| -> (Vec<i64>, bool) {
        let response = server.get(path);
        assert_eq!(response.status, 200, "{path}: {response:?}");
        assert_eq!(response.content_type, "application/json", "{path}");
        let body = response.json();
        let times = body["readings"]
            .as_array()
            .expect("readings array")
            .iter()
            .map(|r| r["time_ns"].as_i64().expect("time_ns"))
            .collect();
        (times, body["truncated"].as_bool().expect("truncated"))
    };
    assert_eq!(
        times("/api/readings"),
        (vec![1000, 2000, 3000, 4000], false)
    );
    assert_eq!(
        times("/api/readings?sensor=a"),
        (vec![1000, 2000, 4000], false)
    );
    assert_eq!(
        times("/api/readings?sensor=a&measurement=t"),
        (vec![1000, 2000], false)
    );
    // `until` is exclusive, as in `sensorlink query`.
    assert_eq!(
        times("/api/readings?since=2000&until=4000"),
        (vec![2000, 3000], false)
    );
    assert_eq!(times("/api/readings?limit=2"), (vec![1000, 2000], true));
    assert_eq!(
        times("/api/readings?limit=4"),
        (vec![1000, 2000, 3000, 4000], false)
    );
    assert_eq!(
        times("/api/readings?order=desc&limit=1"),
        (vec![4000], true)
    );
    assert_eq!(times("/api/readings?sensor=nobody"), (vec![], false));

    let body = server.get("/api/readings?measurement=u").json();
    let reading = &body["readings"][0];
    assert_eq!(reading["measurement"], "u");
    assert_eq!(reading["tags"], serde_json::json!({"sensor": "a"}));
    assert_eq!(
        reading["fields"],
        serde_json::json!({"w": 4.5, "ok": true, "s": "hi"})
    );
    let body = server.get("/api/readings?sensor=b").json();
    assert_eq!(
        body["readings"][0]["fields"]["v"], 3,
        "integers stay integers"
    );

    for bad in [
        "/api/readings?until=notatime",
        "/api/readings?limit=100000",
        "/api/readings?order=sideways",
        "/api/readings?sensors=a",
    ] {
        let response = server.get(bad);
        assert_eq!(response.status, 400, "{bad}: {response:?}");
        assert!(response.json()["error"].is_string(), "{bad}: {response:?}");
    }
}

/// `/api/server` after a few readings and one rejected line.
#[test]
fn api_server_reports_rates_latencies_and_rejections() {
    let server = Server::start(&[]);
    let mut peer = LinePeer::new(server.addr);
    let local = peer.writer.local_addr().expect("the peer's address");
    let before_ns = now_ns();
    peer.send(
        b"r,sensor=a v=1i 1\nr,sensor=a v=2i 2\nweather temp=abc\nr,sensor=a v=3i 3\nsync a\n",
    );
    assert!(peer.line().starts_with("error 3 invalid reading"));
    assert!(peer.line().starts_with("ack a readings=3 rejected=1"));
    let after_ns = now_ns();

    let summary = || server.get("/api/server").json();
    // The writer records the commit's latency after it hands the batch back, and the ack's
    // is recorded after the ack is counted: on a busy machine either can come after the
    // count, so wait for all three.
    wait_for(
        || {
            let s = summary();
            s["readings_acked_total"] == 3
                && s["ack_latency_ms"]["p50"].is_f64()
                && s["commit_latency_ms"]["p50"].is_f64()
        },
        PATIENCE,
        "the ack and both latencies to be counted",
    );
    let s = summary();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["store"], "memory");
    assert_eq!(s["ready"], true);
    assert_eq!(s["connections_open"], 1);
    assert_eq!(s["lines_rejected_total"], 1);
    assert!(s["uptime_s"].as_f64().expect("uptime_s") > 0.0, "{s}");
    // Three readings in the last ~10 s (the test takes milliseconds of it).
    assert!(
        s["readings_per_s"].as_f64().expect("readings_per_s") > 0.0,
        "{s}"
    );
    for latency in ["ack_latency_ms", "commit_latency_ms"] {
        let p50 = s[latency]["p50"].as_f64().expect(latency);
        let p99 = s[latency]["p99"].as_f64().expect(latency);
        assert!(0.0 < p50 && p50 <= p99, "{latency}: {s}");
    }
    let rejections = s["recent_rejections"].as_array().expect("an array");
    assert_eq!(rejections.len(), 1, "{s}");
    let rejection = &rejections[0];
    assert_eq!(rejection["peer"], local.to_string());
    assert_eq!(rejection["reason"], "invalid_reading");
    let detail = rejection["detail"].as_str().expect("detail");
    assert!(detail.starts_with("line 3: invalid reading"), "{detail}");
    let time_ns = rejection["time_ns"].as_i64().expect("time_ns");
    assert!((before_ns..=after_ns).contains(&time_ns), "{s}");
}

fn now_ns() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_nanos()).expect("before 2262")
}

/// An HTTP client stuck in the middle of a request does not hold the server's shutdown up:
/// its request gets a bounded time to finish, then the server exits 0 all the same.
#[test]
fn a_stuck_http_request_does_not_hold_the_shutdown() {
    use std::io::Write as _;
    let mut server = Server::start(&[]);
    let mut stuck = std::net::TcpStream::connect(server.http.expect("HTTP on")).expect("connect");
    stuck
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        .expect("half a request");
    // Served beside it: the stuck client blocks nobody.
    assert_eq!(server.get("/healthz").status, 200);
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    let log = server.stderr();
    assert!(log.contains("store flushed; bye"), "{log}");
    assert!(
        log.contains("http requests still running at shutdown; closing them"),
        "the stuck request was cut off, not finished: {log}"
    );
    drop(stuck);
}

/// While the sensor connections drain at shutdown, HTTP still answers: `/readyz` says
/// "shutting down" (so a balancer stops sending) and `/metrics` can be scraped. The drain
/// is held open by a reading whose commit waits for the SQLite write lock this test holds.
#[test]
fn http_serves_while_the_connections_drain() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let lock = rusqlite::Connection::open(store.path()).expect("open the store file");
    // Held for less than the store's 5 s busy timeout, so the held commit then succeeds.
    lock.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"t,sensor=a v=1i 1\nsync 1\n");
    // Received and waiting for its commit before the shutdown begins.
    wait_for(
        || {
            parse_prometheus(&server.get("/metrics").body)
                .get("sensorlink_store_queued_readings", &[])
                == 1.0
        },
        PATIENCE,
        "the reading to wait for the store",
    );
    server.signal(libc::SIGTERM);
    server.wait_for_log("shutting down");
    wait_for(
        || server.get("/readyz").body == "not ready: shutting down\n",
        PATIENCE,
        "/readyz to say shutting down during the drain",
    );
    assert_eq!(server.get("/readyz").status, 503);
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    parse_prometheus(&metrics.body);
    lock.execute_batch("ROLLBACK")
        .expect("release the write lock");
    assert!(
        peer.line().starts_with("ack 1 "),
        "the held reading committed"
    );
    drop(peer);
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
}

/// `http` comes from the config file and from `SENSORLINK_HTTP` too (the flag wins over
/// both, the environment over the file).
#[test]
fn http_address_from_the_file_and_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("server.toml");
    std::fs::write(&file, "[server]\nhttp = \"off\"\n").expect("write config");
    let server_with = |env: Option<&str>| {
        let mut cmd = bin();
        cmd.args(["server", "--listen", "127.0.0.1:0", "--store", "memory"])
            .arg("--config")
            .arg(&file)
            .env_remove("SENSORLINK_HTTP");
        if let Some(value) = env {
            cmd.env("SENSORLINK_HTTP", value);
        }
        Server::spawn(cmd, "memory")
    };
    assert_eq!(server_with(None).http, None, "the file's off");
    let server = server_with(Some("127.0.0.1:0"));
    assert!(server.http.is_some(), "the environment over the file");
    assert_eq!(server.get("/healthz").status, 200);
}

/// At most `MAX_HTTP_CONNECTIONS` (256) HTTP connections are served at once: with 256
/// clients stuck mid-request, the next one waits (in the listen backlog, served in order)
/// until one of them goes.
#[test]
fn http_connections_are_limited() {
    use std::io::{Read as _, Write as _};
    let server = Server::start(&[]);
    let http = server.http.expect("HTTP on");
    let mut stuck: Vec<std::net::TcpStream> = (0..256)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(http).expect("connect");
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
                .expect("half a request");
            stream
        })
        .collect();
    let mut next = crate::harness::connect(http);
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("a whole request");
    crate::harness::assert_silent(&mut next);
    stuck.pop();
    let mut answer = String::new();
    next.read_to_string(&mut answer)
        .expect("answered once a slot is free");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("ok\n"), "{answer}");
    drop(stuck);
}

/// Run a real `sensorlink client` (20 readings over loopback as sensor `name`) to the end,
/// and wait until its sensor is `disconnected`: its connection's last `TCP_INFO` sample
/// (taken as it closes, before its sensors are disconnected) is in by then.
fn run_client_to_the_end(server: &Server, name: &str) -> serde_json::Value {
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "20",
        "--interval",
        "5ms",
        "--sensor",
        name,
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = format!("/api/sensors/{name}");
    wait_for(
        || server.get(&path).json()["state"] == "disconnected",
        PATIENCE,
        "the client's sensor to turn disconnected",
    );
    server.get(&path).json()
}

/// The server samples each connection's kernel TCP statistics: a loopback client's sensor
/// shows a small non-zero srtt in `/api/sensors`, and `/metrics` has the server-wide
/// histogram and counter and the sensor's own gauges, all agreeing. Retransmits are
/// normally 0 on loopback, but a busy machine can delay an ACK past a tail-loss probe
/// (seen by the client's tests): with this one connection the counter must equal the
/// sensor's figure instead.
#[test]
fn tcp_info_of_a_clients_connection_in_its_sensor_and_metrics() {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: TCP_INFO is Linux's");
        return;
    }
    let server = Server::start(&[]);
    let sensor = run_client_to_the_end(&server, "tcpy");
    let tcp = &sensor["tcp"];
    let srtt_ms = tcp["srtt_ms"].as_f64().expect("srtt_ms");
    // Loopback: far below a millisecond, and never zero (the kernel's srtt is ≥ 1 µs).
    assert!(srtt_ms > 0.0, "{sensor}");
    let retransmits = tcp["retransmits"].as_f64().expect("retransmits");
    eprintln!("loopback: srtt {srtt_ms} ms, {retransmits} segments retransmitted");
    assert!(tcp["rttvar_ms"].is_number(), "{sensor}");
    assert!(tcp["min_rtt_ms"].as_f64().expect("min RTT on 4.6+") > 0.0);
    let sampled_at = tcp["sampled_at"].as_i64().expect("sampled_at, ns");
    let last_seen = sensor["last_seen_ns"].as_i64().expect("last_seen_ns");
    assert!(
        sampled_at >= last_seen,
        "sampled after its readings: {sensor}"
    );

    let m = parse_prometheus(&server.get("/metrics").body);
    assert_eq!(m.types["sensorlink_tcp_srtt_seconds"], "histogram");
    assert!(m.get("sensorlink_tcp_srtt_seconds_count", &[]) >= 1.0);
    assert!(m.get("sensorlink_tcp_srtt_seconds_sum", &[]) > 0.0);
    // The deltas of the connection's samples, its close sample last, add up to its total.
    assert_eq!(m.get("sensorlink_tcp_retransmits_total", &[]), retransmits);
    let gauge = m.get("sensorlink_sensor_tcp_srtt_seconds", &[("sensor", "tcpy")]);
    assert!(
        (gauge * 1000.0 - srtt_ms).abs() < 1e-9,
        "the gauge is the sensor's last sample: {gauge} s vs {srtt_ms} ms"
    );
    assert_eq!(
        m.get("sensorlink_sensor_tcp_retransmits", &[("sensor", "tcpy")]),
        retransmits
    );
}

/// `--tcp-info-interval 0s` turns sampling off: no `tcp`, no samples, no sensor gauges.
#[test]
fn tcp_info_sampling_off() {
    let server = Server::start(&["--tcp-info-interval", "0s"]);
    let sensor = run_client_to_the_end(&server, "untimed");
    assert!(sensor["tcp"].is_null(), "{sensor}");
    let m = parse_prometheus(&server.get("/metrics").body);
    assert_eq!(m.get("sensorlink_tcp_srtt_seconds_count", &[]), 0.0);
    assert_eq!(
        m.value(
            "sensorlink_sensor_tcp_srtt_seconds",
            &[("sensor", "untimed")]
        ),
        None
    );
}
