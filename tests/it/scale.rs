//! Several collectors on one PostgreSQL (issue 12, "Several collectors"), real binaries on
//! loopback: two `sensorlink server --store postgres://…` behind HAProxy (the recipe of
//! `deploy/haproxy.cfg`, health checks on `/readyz`), or with no balancer and client-side
//! failover (`sensorlink client A B`); three clients with `--spool`; one collector SIGKILLed
//! mid-run and restarted on its ports. Afterwards the database holds exactly the readings
//! the clients produced: by sensor and timestamp, none missing, none twice.
//!
//! PostgreSQL and HAProxy come from `tests/support/` (skip with the reason printed where they
//! cannot run; fail under `SENSORLINK_REQUIRE_PG=1`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::haproxy::{Balance, Haproxy, HaproxyOpts};
use crate::harness::*;
use crate::pg_cluster;

/// Readings per client, one every [`INTERVAL`]: a run of a few seconds, long enough to kill
/// a collector in the middle of it.
const COUNT: usize = 300;
const INTERVAL: &str = "10ms";
/// Distinct sensors, one client each.
const SENSORS: [&str; 3] = ["scale-a", "scale-b", "scale-c"];
/// Readings a collector must have acknowledged before it is killed: the run is under way.
const ACKED_BEFORE_KILL: f64 = 30.0;

/// The repository's HAProxy recipe.
fn recipe() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg")
}

/// `haproxy` from PATH (Debian: /usr/sbin), or the reason it cannot run.
fn haproxy_bin() -> Option<PathBuf> {
    let found = [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|path| path.is_file());
    match found {
        Some(path) => Some(path),
        None => pg_cluster::skip(
            "HAProxy",
            "no haproxy binary (install the `haproxy` package)",
        ),
    }
}

/// `haproxy -c -f FILE`: whether the configuration is valid, and what HAProxy said.
fn haproxy_check(haproxy: &Path, file: &Path) -> (bool, String) {
    let out = run(Command::new(haproxy).arg("-c").arg("-f").arg(file));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// The recipe as shipped passes `haproxy -c`, and so does it with its optional parts
/// (`send-proxy-v2`, the stats page) uncommented; the settings docs/scaling.md relies on
/// are in it.
#[test]
fn the_haproxy_recipe_is_valid() {
    let Some(haproxy) = haproxy_bin() else {
        return;
    };
    let text = std::fs::read_to_string(recipe()).expect("deploy/haproxy.cfg");
    let (ok, said) = haproxy_check(&haproxy, &recipe());
    assert!(ok, "deploy/haproxy.cfg: {said}");
    for needle in [
        "mode tcp",
        "balance leastconn",
        "option httpchk GET /readyz",
        "http-check expect status 200",
        "check port 9889",
        "inter 1s fall 2 rise 2",
        "on-marked-down shutdown-sessions",
        "timeout tunnel",
        "option redispatch",
    ] {
        assert!(text.contains(needle), "the recipe lacks {needle:?}");
    }

    // The optional parts, uncommented: the PROXY v2 line, and the stats block.
    let mut in_stats = false;
    let mut all_on = String::new();
    for line in text.lines() {
        let line = if line.starts_with("    # default-server send-proxy-v2") {
            line.replacen("# ", "", 1)
        } else if line.starts_with("# listen stats") {
            in_stats = true;
            line.trim_start_matches("# ").to_string()
        } else if in_stats && line.starts_with("#     ") {
            line.replacen("# ", "", 1)
        } else {
            in_stats = false;
            line.to_string()
        };
        all_on.push_str(&line);
        all_on.push('\n');
    }
    assert!(
        all_on.contains("\n    default-server send-proxy-v2"),
        "{all_on}"
    );
    assert!(
        all_on.contains("\nlisten stats\n    mode http\n"),
        "{all_on}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, &all_on).expect("write");
    let (ok, said) = haproxy_check(&haproxy, &file);
    assert!(ok, "the recipe with its optional parts on: {said}");
}

/// `deploy/haproxy.cfg` itself, its example addresses replaced by `frontend` and the
/// collectors' sensor and HTTP ports (each replacement checked to have happened once).
fn render_recipe(frontend: SocketAddr, collectors: &[&Collector]) -> String {
    let mut text = std::fs::read_to_string(recipe()).expect("deploy/haproxy.cfg");
    let mut replace = |from: &str, to: &str| {
        assert_eq!(text.matches(from).count(), 1, "{from:?} in the recipe");
        text = text.replace(from, to);
    };
    replace("    bind :8889\n", &format!("    bind {frontend}\n"));
    for (i, collector) in collectors.iter().enumerate() {
        replace(
            &format!("server c{} 10.0.0.1{}:8889 check port 9889\n", i + 1, i + 1),
            &format!(
                "server c{} {} check port {}\n",
                i + 1,
                collector.addr(),
                collector.http.port()
            ),
        );
    }
    text
}

/// The recipe as shipped (not the test harness's rendering of it) carries a client: two
/// collectors behind `deploy/haproxy.cfg`, the one carrying the client SIGKILLed mid-run
/// and restarted; the client, connected to HAProxy only, gets every reading acknowledged
/// (`on-marked-down shutdown-sessions`, `option redispatch` and the timeouts at work).
#[test]
fn the_recipe_itself_carries_a_client_through_a_collector_death() {
    let Some(haproxy) = haproxy_bin() else {
        return;
    };
    let mut collectors = vec![
        Collector::start("memory", &[]),
        Collector::start("memory", &[]),
    ];
    let frontend = SocketAddr::from((
        [127, 0, 0, 1],
        pg_cluster::free_port().expect("a free port for HAProxy"),
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("haproxy.cfg");
    let refs: Vec<&Collector> = collectors.iter().collect();
    std::fs::write(&cfg, render_recipe(frontend, &refs)).expect("write the config");
    let (ok, said) = haproxy_check(&haproxy, &cfg);
    assert!(ok, "the rendered recipe: {said}");
    let log = dir.path().join("haproxy.log");
    let mut cmd = Command::new(&haproxy);
    cmd.arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(std::fs::File::create(dir.path().join("haproxy.err")).expect("log file"));
    let _haproxy =
        KillOnDrop(pg_cluster::spawn_tied_to_process(cmd, libc::SIGKILL).expect("spawn haproxy"));
    let up = poll_until(PATIENCE, || std::net::TcpStream::connect(frontend).is_ok());
    let said = || std::fs::read_to_string(dir.path().join("haproxy.err")).unwrap_or_default();
    assert!(up, "HAProxy does not accept on {frontend}: {}", said());
    let clients = spawn_clients(&[frontend.to_string()], dir.path(), &["recipe"]);
    kill_one_mid_run(&mut collectors);
    let acked = finish_clients(clients);
    assert_someone_reconnected(&acked);
}

/// A collector on fixed ports (so a restart comes back where HAProxy and the clients look).
struct Collector {
    server: Server,
    /// Its HTTP port (`/readyz` for HAProxy's checks).
    http: SocketAddr,
    store: String,
    extra: Vec<String>,
}

impl Collector {
    fn start(store: &str, extra: &[&str]) -> Collector {
        let http = SocketAddr::from((
            [127, 0, 0, 1],
            pg_cluster::free_port().expect("a free port for HTTP"),
        ));
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let args = Self::args(http, &extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_on("127.0.0.1:0", store, &args);
        Collector {
            server,
            http,
            store: store.to_string(),
            extra,
        }
    }

    fn args(http: SocketAddr, extra: &[String]) -> Vec<String> {
        let mut args = vec!["--http".to_string(), http.to_string()];
        args.extend(extra.iter().cloned());
        args
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// SIGKILL: nothing flushed, nothing said to the peers.
    fn kill(&mut self) {
        self.server.kill();
    }

    /// Start again on the same sensor and HTTP ports.
    fn restart(&mut self) {
        let http = self.http;
        wait_for(
            || std::net::TcpListener::bind(http).is_ok(),
            PATIENCE,
            "the HTTP port to be free for the restart",
        );
        let args = Self::args(http, &self.extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.server = Server::restart_on(self.addr(), &self.store, &args);
    }

    /// Readings it has acknowledged (its `/metrics`); 0 when it cannot be asked.
    fn acked(&self) -> f64 {
        let text = http_get(&format!("http://{}/metrics", self.http)).body;
        text.lines()
            .find_map(|line| {
                line.strip_prefix("sensorlink_readings_acked_total ")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    fn ready(&self) -> bool {
        http_get(&format!("http://{}/readyz", self.http)).status == 200
    }
}

/// Readings per client, and the patience for a whole run (a few seconds, plus reconnects).
const RUN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// One running client: its sensor, its process, and where its output goes.
struct Client {
    sensor: &'static str,
    child: KillOnDrop,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// One client per sensor, `servers` its addresses (one: HAProxy's; several: failover),
/// spooling and writing its `--json` output under `dir`.
fn spawn_clients(servers: &[String], dir: &Path, sensors: &[&'static str]) -> Vec<Client> {
    sensors
        .iter()
        .map(|sensor| {
            let stdout = dir.join(format!("{sensor}.json"));
            let stderr = dir.join(format!("{sensor}.err"));
            let child = bin()
                .arg("client")
                .args(servers)
                .args(["--sensor", sensor, "--count"])
                .arg(COUNT.to_string())
                .args(["--interval", INTERVAL, "--link-report", "0", "--json"])
                .arg("--spool")
                .arg(dir.join(format!("{sensor}.spool")))
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout).expect("client stdout file"))
                .stderr(std::fs::File::create(&stderr).expect("client stderr file"))
                .spawn()
                .expect("spawn sensorlink client");
            Client {
                sensor,
                child: KillOnDrop(child),
                stdout,
                stderr,
            }
        })
        .collect()
}

/// Wait until one of `collectors` has acknowledged [`ACKED_BEFORE_KILL`] readings (so the
/// run is under way and it carries clients), SIGKILL it, and start it again.
fn kill_one_mid_run(collectors: &mut [Collector]) {
    let mut victim = None;
    wait_for(
        || {
            victim = collectors
                .iter()
                .position(|c| c.acked() >= ACKED_BEFORE_KILL);
            victim.is_some()
        },
        PATIENCE,
        "a collector to acknowledge readings",
    );
    let victim = victim.expect("wait_for returned once a victim was found");
    collectors[victim].kill();
    collectors[victim].restart();
}

/// What one client acknowledged: the timestamps of its acked readings (from its `--json`
/// ack events) and how often it reconnected.
struct Acked {
    sensor: &'static str,
    stamps: Vec<i64>,
    reconnects: u64,
}

/// Wait (bounded) for each client, check it acknowledged every reading it produced, each
/// once, and return what it acknowledged.
fn finish_clients(clients: Vec<Client>) -> Vec<Acked> {
    clients
        .into_iter()
        .map(|mut client| {
            let sensor = client.sensor;
            let mut status = None;
            let exited = poll_until(RUN_PATIENCE, || {
                status = client.child.0.try_wait().expect("try_wait");
                status.is_some()
            });
            let stdout = std::fs::read(&client.stdout).expect("client stdout");
            let stderr = std::fs::read_to_string(&client.stderr).unwrap_or_default();
            let text = String::from_utf8_lossy(&stdout);
            assert!(
                exited,
                "client {sensor} still running after {RUN_PATIENCE:?}:\n{text}\n{stderr}"
            );
            let status = status.expect("poll_until returned true once try_wait gave a status");
            assert!(
                status.success(),
                "client {sensor}: {status}\n{text}\n{stderr}"
            );
            let summary = summary(&stdout);
            assert_eq!(summary["produced"], COUNT, "{sensor}: {summary}");
            assert_eq!(summary["acked"], COUNT, "{sensor}: {summary}");
            assert_eq!(summary["lost"], 0, "{sensor}: {summary}");
            let mut seqs = BTreeSet::new();
            let mut stamps = Vec::new();
            for ack in json_lines(&stdout).iter().filter(|e| e["event"] == "ack") {
                assert!(
                    seqs.insert(ack["seq"].as_u64()),
                    "{sensor}: acked twice: {ack}"
                );
                stamps.push(
                    ack["timestamp_ns"]
                        .as_i64()
                        .expect("an ack has timestamp_ns"),
                );
            }
            assert_eq!(stamps.len(), COUNT, "{sensor}: ack events");
            eprintln!(
                "{sensor}: produced {} acked {} resent {} duplicates {} reconnects {} failovers {}",
                summary["produced"],
                summary["acked"],
                summary["resent"],
                summary["duplicates"],
                summary["reconnects"],
                summary["failovers"]
            );
            Acked {
                sensor,
                stamps,
                reconnects: summary["reconnects"].as_u64().unwrap_or(0),
            }
        })
        .collect()
}

/// The database holds, for each sensor, exactly the timestamps its client acked (none
/// missing, none twice), and besides them only `others` rows.
fn assert_stored_exactly(store: &str, pg: &pg_cluster::PgCluster, acked: &[Acked], others: usize) {
    for Acked { sensor, stamps, .. } in acked {
        let rows = query_json(store, &["--sensor", sensor, "--limit", "100000"]);
        let mut stored: Vec<i64> = rows
            .iter()
            .map(|row| {
                row["timestamp_ns"]
                    .as_i64()
                    .expect("a row has timestamp_ns")
            })
            .collect();
        stored.sort_unstable();
        let mut expected = stamps.clone();
        expected.sort_unstable();
        let unique: BTreeSet<i64> = stored.iter().copied().collect();
        assert_eq!(
            unique.len(),
            stored.len(),
            "{sensor}: a reading stored twice"
        );
        assert_eq!(stored, expected, "{sensor}: stored vs produced");
    }
    let total: usize = acked.iter().map(|a| a.stamps.len()).sum::<usize>() + others;
    let counted = pg
        .psql(db_name(store), "SELECT count(*) FROM sensorlink_readings")
        .expect("count the readings");
    assert_eq!(counted, total.to_string(), "rows in the database");
}

/// A collector was killed under clients: at least one of them must have noticed.
fn assert_someone_reconnected(acked: &[Acked]) {
    assert!(
        acked.iter().any(|a| a.reconnects > 0),
        "a collector was killed under the clients, yet none reconnected: {:?}",
        acked
            .iter()
            .map(|a| (a.sensor, a.reconnects))
            .collect::<Vec<_>>()
    );
}

/// The database name of a `postgres://…/DB` url.
fn db_name(url: &str) -> &str {
    url.rsplit('/').next().expect("a url has a path")
}

/// A raw line peer through `via` from 127.0.0.2 (so its address differs from HAProxy's):
/// sends one reading and waits for its ack. Returns its own address.
fn probe_peer(via: SocketAddr, sensor: &str) -> SocketAddr {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 0, 2], 0)))?;
            socket.connect(via).await
        })
        .expect("connect from 127.0.0.2");
    let stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let local = stream.local_addr().expect("local address");
    let writer = stream.try_clone().expect("clone");
    let mut peer = LinePeer {
        reader: std::io::BufReader::new(stream),
        writer,
    };
    peer.send(format!("probe,sensor={sensor} value=1\nsync p\n").as_bytes());
    let ack = peer.line();
    assert!(ack.starts_with("ack p readings=1 rejected=0"), "{ack}");
    local
}

/// Behind HAProxy, the collector sees HAProxy's address as the peer; with `send-proxy-v2`
/// and `--proxy-protocol v2`, the client's own (here 127.0.0.2 and its port).
#[test]
fn behind_haproxy_proxy_v2_gives_the_collector_the_clients_address() {
    for proxy_v2 in [false, true] {
        let extra: &[&str] = if proxy_v2 {
            &["--proxy-protocol", "v2"]
        } else {
            &[]
        };
        let collector = Collector::start("memory", extra);
        let opts = HaproxyOpts {
            readyz_ports: vec![collector.http.port()],
            balance: Balance::LeastConn,
            send_proxy_v2: proxy_v2,
        };
        let Some(haproxy) = Haproxy::start(&[collector.addr()], &opts) else {
            return;
        };
        let local = probe_peer(haproxy.addr(), "proxied");
        let sensor = http_get(&format!("http://{}/api/sensors/proxied", collector.http)).json();
        let peer = sensor["peer"].as_str().unwrap_or_default();
        if proxy_v2 {
            assert_eq!(peer, local.to_string(), "{sensor}");
        } else {
            assert!(
                peer.starts_with("127.0.0.1:"),
                "HAProxy's address: {sensor}"
            );
        }
    }
}

/// Two collectors behind HAProxy on one PostgreSQL; `proxy_v2` turns PROXY protocol v2 on
/// at both ends.
fn run_behind_haproxy(proxy_v2: bool) {
    let Some(pg) = pg_cluster::shared() else {
        return;
    };
    let store = pg.fresh_database("scale_haproxy");
    let extra: &[&str] = if proxy_v2 {
        &["--proxy-protocol", "v2"]
    } else {
        &[]
    };
    let mut collectors = vec![
        Collector::start(&store, extra),
        Collector::start(&store, extra),
    ];
    let backends: Vec<SocketAddr> = collectors.iter().map(Collector::addr).collect();
    let opts = HaproxyOpts {
        readyz_ports: collectors.iter().map(|c| c.http.port()).collect(),
        balance: Balance::LeastConn,
        send_proxy_v2: proxy_v2,
    };
    let Some(haproxy) = Haproxy::start(&backends, &opts) else {
        return;
    };
    wait_for(
        || collectors.iter().all(Collector::ready),
        PATIENCE,
        "both collectors ready",
    );

    if proxy_v2 {
        // The collector sees the client's own address, not HAProxy's.
        let local = probe_peer(haproxy.addr(), "proxied");
        let peers: Vec<String> = collectors
            .iter()
            .map(|c| {
                let body = http_get(&format!("http://{}/api/sensors/proxied", c.http));
                body.json()["peer"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        assert!(
            peers.contains(&local.to_string()),
            "the collectors saw {peers:?}, the client was {local}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let clients = spawn_clients(&[haproxy.addr().to_string()], dir.path(), &SENSORS);
    kill_one_mid_run(&mut collectors);
    let acked = finish_clients(clients);
    assert_someone_reconnected(&acked);
    // The probe's reading (PROXY v2) is the one row besides the clients'.
    assert_stored_exactly(&store, pg, &acked, usize::from(proxy_v2));
    drop(haproxy);
}

/// PostgreSQL + two collectors + HAProxy; three spooling clients through HAProxy; one
/// collector SIGKILLed mid-run and restarted: every reading stored once.
#[test]
fn two_collectors_behind_haproxy_lose_nothing_when_one_is_killed() {
    run_behind_haproxy(false);
}

/// The same with PROXY protocol v2 between HAProxy and the collectors: they see each
/// client's own address.
#[test]
fn two_collectors_behind_haproxy_with_proxy_v2() {
    run_behind_haproxy(true);
}

/// The same with no balancer: each client lists both collectors and fails over by itself.
#[test]
fn client_side_failover_between_two_collectors_loses_nothing() {
    let Some(pg) = pg_cluster::shared() else {
        return;
    };
    let store = pg.fresh_database("scale_failover");
    let mut collectors = vec![Collector::start(&store, &[]), Collector::start(&store, &[])];
    let servers: Vec<String> = collectors.iter().map(|c| c.addr().to_string()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let clients = spawn_clients(&servers, dir.path(), &SENSORS);
    kill_one_mid_run(&mut collectors);
    let acked = finish_clients(clients);
    assert_someone_reconnected(&acked);
    assert_stored_exactly(&store, pg, &acked, 0);
}
