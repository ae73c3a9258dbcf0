//! Client-side failover (`sensorlink client A B`): two real collectors, each with its own
//! SQLite store, killed by PID mid-run; the client moves to the other one, resends what was
//! not acknowledged, and every reading it produced ends up stored (in one store or the
//! other). No PostgreSQL here: the shared-store version of this is in tests/it/scale.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::harness::{
    bin, poll_until, run, summary, KillOnDrop, Server, TempStore, PATIENCE, UNREACHABLE_ADDR,
};

/// A sensor name beginning with `prefix` whose client starts on the first of two addresses
/// (a client picks its first address by a stable hash of its sensor name).
fn starts_on_first(prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|name| sensorlink::client::failover::first_address(Some(name), 2) == 0)
        .expect("some name hashes to the first of two")
}

/// A reading's identity: series (the sensor, here) and timestamp.
type Identity = (String, i64);

/// The complete JSON lines a client has written to `path` so far (a line still being
/// written is left for the next look).
fn events_so_far(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

/// Wait until `cond` holds for the client's events; panics with them after [`PATIENCE`].
fn wait_events(path: &Path, what: &str, mut cond: impl FnMut(&[serde_json::Value]) -> bool) {
    if !poll_until(PATIENCE, || cond(&events_so_far(path))) {
        panic!(
            "client never showed {what}:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

/// The `connected` events' servers, in order.
fn connected_to(events: &[serde_json::Value]) -> Vec<String> {
    of_kind(events, "connected")
        .iter()
        .map(|e| {
            e["server"]
                .as_str()
                .expect("connected names its server")
                .to_string()
        })
        .collect()
}

/// The identity of each reading the client saw acknowledged.
fn acked(events: &[serde_json::Value], sensor: &str) -> BTreeSet<Identity> {
    of_kind(events, "ack")
        .iter()
        .map(|e| {
            let ts = e["timestamp_ns"]
                .as_i64()
                .expect("an ack carries its timestamp");
            (sensor.to_string(), ts)
        })
        .collect()
}

/// Each stored reading of `sensor`'s identity, with how many times it is stored.
fn stored(store: &TempStore, sensor: &str) -> BTreeMap<Identity, usize> {
    let mut rows = BTreeMap::new();
    for row in store.rows(&["--sensor", sensor, "--measurement", "reading"]) {
        let ts = row["timestamp_ns"]
            .as_i64()
            .expect("rows carry timestamp_ns");
        *rows.entry((sensor.to_string(), ts)).or_insert(0) += 1;
    }
    rows
}

/// Start a client sending to `servers`, its `--json` output going to `out`.
fn client(
    servers: &[String],
    sensor: &str,
    spool: &Path,
    out: &Path,
    extra: &[&str],
) -> KillOnDrop {
    let child = bin()
        .arg("client")
        .args(servers)
        .args([
            "--sensor",
            sensor,
            "--interval",
            "10ms",
            "--link-report",
            "0",
        ])
        .args(["--max-backoff", "200ms", "--json"])
        .arg("--spool")
        .arg(spool)
        .args(extra)
        .stdout(std::fs::File::create(out).expect("client output file"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sensorlink client");
    KillOnDrop(child)
}

/// Wait (bounded) for the client's exit: status 0, and its summary. Killed on a panic.
fn finished(mut child: KillOnDrop, out: &Path) -> serde_json::Value {
    let mut status = None;
    let exited = poll_until(Duration::from_secs(60), || {
        status = child.0.try_wait().expect("try_wait on our own child");
        status.is_some()
    });
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let stdout = std::fs::read(out).expect("client output");
    assert!(exited, "client did not finish in 60 s: {stderr}");
    let summary = summary(&stdout);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{summary}\n{stderr}"
    );
    summary
}

/// Stop the client as Ctrl-C would (SIGTERM, by its PID): it delivers what is pending,
/// prints its summary and exits. Runs without --count end this way, so no test depends on
/// the run outlasting the test's own steps.
fn stop(child: &KillOnDrop) {
    let pid = i32::try_from(child.0.id()).expect("a PID fits in pid_t");
    // SAFETY: kill(2) on the PID of a child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// Wait until the client has `more` acks beyond those it shows now.
fn wait_more_acks(out: &Path, more: usize) {
    let acks = of_kind(&events_so_far(out), "ack").len();
    wait_events(out, "more acks", |e| of_kind(e, "ack").len() >= acks + more);
}

/// The summary's entry for server `addr`.
fn server_entry<'a>(summary: &'a serde_json::Value, addr: &str) -> &'a serde_json::Value {
    summary["servers"]
        .as_array()
        .expect("servers is a list")
        .iter()
        .find(|s| s["addr"] == addr)
        .unwrap_or_else(|| panic!("no {addr} in {summary}"))
}

/// The union of the stores holds exactly what the client produced, each reading at least
/// once (a reading resent to the other collector may be in both: the same identity).
fn assert_union_is_produced(
    stores: &[&TempStore],
    sensor: &str,
    events: &[serde_json::Value],
    count: usize,
) {
    let produced = acked(events, sensor);
    assert_eq!(produced.len(), count, "one ack per reading produced");
    let mut union = BTreeSet::new();
    for store in stores {
        let rows = stored(store, sensor);
        assert!(
            rows.values().all(|n| *n == 1),
            "twice in one store: {rows:?}"
        );
        union.extend(rows.into_keys());
    }
    assert_eq!(union, produced, "stored (in either store) = produced");
}

#[test]
fn a_collector_killed_mid_run_is_left_for_the_other_and_nothing_is_lost() {
    let (store_a, store_b) = (TempStore::new(), TempStore::new());
    let mut a = Server::start_on("127.0.0.1:0", &store_a.url(), &["-q"]);
    let b = Server::start_on("127.0.0.1:0", &store_b.url(), &["-q"]);
    let servers = [a.addr.to_string(), b.addr.to_string()];
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("client.out");
    let sensor = starts_on_first("fo1");
    let child = client(&servers, &sensor, &dir.path().join("q"), &out, &[]);
    wait_events(&out, "30 acks from A", |e| of_kind(e, "ack").len() >= 30);
    // Read before the kill: every one of these was acked by A, so A has stored it.
    let acked_by_a = acked(&events_so_far(&out), &sensor);
    a.kill();
    wait_events(&out, "a connection to B", |e| {
        connected_to(e).last() == Some(&servers[1])
    });
    wait_more_acks(&out, 10);
    stop(&child);
    let summary = finished(child, &out);
    let events = events_so_far(&out);

    let count = summary["produced"].as_u64().expect("a count");
    assert_eq!(summary["acked"], count, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(connected_to(&events), servers, "A, then B, and B kept");
    assert_eq!(summary["failovers"], 1, "{summary}");
    let (entry_a, entry_b) = (
        server_entry(&summary, &servers[0]),
        server_entry(&summary, &servers[1]),
    );
    let acked_a = entry_a["acked"].as_u64().expect("a count");
    assert!(acked_a >= acked_by_a.len() as u64, "{summary}");
    assert_eq!(acked_a + entry_b["acked"].as_u64().expect("a count"), count);
    let left_a = of_kind(&events, "disconnected");
    assert_eq!(left_a[0]["server"], servers[0].as_str(), "{left_a:?}");
    assert_eq!(left_a[0]["next"], servers[1].as_str(), "{left_a:?}");
    // B after a jitter only (a live connection dropped), not a backoff.
    let waited = left_a[0]["retry_in_ms"].as_f64().expect("a wait");
    assert!(waited <= 100.0, "B after a jitter: {left_a:?}");

    drop(b);
    let in_a: BTreeSet<Identity> = stored(&store_a, &sensor).into_keys().collect();
    assert!(
        acked_by_a.is_subset(&in_a),
        "acked by A before the kill, so stored by A"
    );
    assert_union_is_produced(&[&store_a, &store_b], &sensor, &events, count as usize);
}

#[test]
fn a_refused_first_address_sends_the_client_to_the_second_at_once() {
    let store = TempStore::new();
    let b = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    let servers = [UNREACHABLE_ADDR.to_string(), b.addr.to_string()];
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("client.out");
    let child = client(
        &servers,
        &starts_on_first("fo2"),
        &dir.path().join("q"),
        &out,
        &["--count", "5"],
    );
    let summary = finished(child, &out);
    let events = events_so_far(&out);
    // In order: A refused (next: B, no wait), then connected to B, before any ack.
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let left = kinds
        .iter()
        .position(|k| *k == "disconnected")
        .expect("A left");
    let joined = kinds
        .iter()
        .position(|k| *k == "connected")
        .expect("B joined");
    assert!(left < joined, "{kinds:?}");
    assert_eq!(events[left]["server"], UNREACHABLE_ADDR);
    assert_eq!(events[left]["kind"], "refused");
    assert_eq!(events[left]["next"], servers[1].as_str());
    assert_eq!(events[left]["retry_in_ms"], 0.0, "no backoff before B");
    assert_eq!(events[joined]["server"], servers[1].as_str());
    assert_eq!(events[joined]["after"][0]["server"], UNREACHABLE_ADDR);
    assert_eq!(connected_to(&events).len(), 1, "{kinds:?}");
    assert_eq!(summary["acked"], 5, "{summary}");
    assert_eq!(summary["failovers"], 1, "{summary}");
    assert_eq!(server_entry(&summary, UNREACHABLE_ADDR)["failures"], 1);
    assert_eq!(server_entry(&summary, &servers[1])["acked"], 5);
}

/// The text output says where the client went and why.
#[test]
fn the_text_output_names_the_server_and_why_the_first_was_left() {
    let b = Server::start(&["-q"]);
    let out = run(bin()
        .args(["client", UNREACHABLE_ADDR, &b.addr.to_string()])
        .args(["--count", "1", "--interval", "10ms"])
        .args(["--sensor", &starts_on_first("fo3")]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "connected to {} (after {UNREACHABLE_ADDR}: refused)",
            b.addr
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("trying {} now", b.addr)),
        "{stdout}"
    );
    assert!(stdout.contains("1 failovers"), "{stdout}");
}

/// A free port on loopback, not listening (bound, then let go): connects are refused until
/// a server is started on it.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("bound address")
}

#[test]
fn with_every_address_down_the_client_waits_and_connects_when_one_comes_up() {
    let store = TempStore::new();
    let later = free_port();
    let servers = [UNREACHABLE_ADDR.to_string(), later.to_string()];
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("client.out");
    let count = 20;
    let child = client(
        &servers,
        "fo4",
        &dir.path().join("q"),
        &out,
        // The source ends after 200 ms: the drain, not only the connect timeout, must
        // outlast the wait for the server to come up.
        &[
            "--count",
            &count.to_string(),
            "--connect-timeout",
            "60s",
            "--drain-timeout",
            "60s",
        ],
    );
    // Several rounds failed (each address at least twice) before the server comes up.
    wait_events(&out, "two failed rounds", |e| {
        of_kind(e, "disconnected")
            .iter()
            .filter(|d| d["server"] == later.to_string().as_str())
            .count()
            >= 2
    });
    let server = Server::restart_on(later, &store.url(), &["-q"]);
    let summary = finished(child, &out);
    let events = events_so_far(&out);
    assert_eq!(connected_to(&events), [later.to_string()]);
    assert_eq!(summary["acked"], count, "{summary}");
    drop(server);
    assert_union_is_produced(&[&store], "fo4", &events, count);
}

#[test]
fn after_a_then_b_fail_the_client_goes_back_to_a() {
    let (store_a, store_b) = (TempStore::new(), TempStore::new());
    let mut a = Server::start_on("127.0.0.1:0", &store_a.url(), &["-q"]);
    let mut b = Server::start_on("127.0.0.1:0", &store_b.url(), &["-q"]);
    let servers = [a.addr.to_string(), b.addr.to_string()];
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("client.out");
    let sensor = starts_on_first("fo5");
    let child = client(&servers, &sensor, &dir.path().join("q"), &out, &[]);
    wait_events(&out, "20 acks on A", |e| of_kind(e, "ack").len() >= 20);
    a.kill();
    wait_events(&out, "a connection to B", |e| {
        connected_to(e).last() == Some(&servers[1])
    });
    wait_more_acks(&out, 20);
    b.kill();
    // A back on its port (its own store, kept): the client returns to it.
    let a = Server::restart_on(a.addr, &store_a.url(), &["-q"]);
    wait_events(&out, "a connection back to A", |e| {
        connected_to(e).len() >= 3 && connected_to(e).last() == Some(&servers[0])
    });
    wait_more_acks(&out, 10);
    stop(&child);
    let summary = finished(child, &out);
    let events = events_so_far(&out);
    let order = connected_to(&events);
    assert_eq!(order.first(), Some(&servers[0]), "{order:?}");
    assert_eq!(order.last(), Some(&servers[0]), "back to A: {order:?}");
    assert!(order.contains(&servers[1]), "{order:?}");
    assert_eq!(
        server_entry(&summary, &servers[0])["connects"],
        2,
        "{summary}"
    );
    assert!(
        summary["failovers"].as_u64().expect("a count") >= 2,
        "{summary}"
    );
    let count = summary["produced"].as_u64().expect("a count");
    assert_eq!(summary["acked"], count, "{summary}");
    drop(a);
    assert_union_is_produced(&[&store_a, &store_b], &sensor, &events, count as usize);
}

/// `sensorlink client --print-config` with `args` and `envs`: exit code, stdout, stderr.
fn print_config(args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(bin()
        .args(["client", "--print-config"])
        .args(args)
        .env_remove("SENSORLINK_CONFIG")
        .env_remove("SENSORLINK_SERVERS")
        .env_remove("SENSORLINK_ADDR"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn servers_come_from_arguments_server_flags_and_the_config_file() {
    let (code, printed, stderr) = print_config(&["a:1", "b:2", "--server", "c:3"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        printed.contains("servers = [\"a:1\", \"b:2\", \"c:3\"]"),
        "{printed}"
    );

    let (code, printed, stderr) = print_config(&["--server", "c:3", "--server", "d:4"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        printed.contains("servers = [\"c:3\", \"d:4\"]"),
        "{printed}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("client.toml");
    std::fs::write(&file, "[client]\nservers = [\"e:5\", \"f:6\"]\n").expect("write");
    let file = file.to_str().expect("utf-8 temp path");
    let (code, printed, stderr) = print_config(&["--config", file]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        printed.contains("servers = [\"e:5\", \"f:6\"]"),
        "{printed}"
    );
    // Flags over the file: the whole list.
    let (_, printed, _) = print_config(&["--config", file, "g:7"]);
    assert!(printed.contains("addr = \"g:7\""), "{printed}");
    assert!(!printed.contains("e:5"), "{printed}");

    let out = run(bin()
        .args(["client", "--print-config"])
        .env_remove("SENSORLINK_CONFIG")
        .env("SENSORLINK_SERVERS", "h:8,i:9"));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("servers = [\"h:8\", \"i:9\"]"),
        "{printed}"
    );
}

/// `--print-config` with `envs` set (the other address variables removed).
fn print_config_env(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = bin();
    cmd.args(["client", "--print-config"])
        .args(args)
        .env_remove("SENSORLINK_CONFIG")
        .env_remove("SENSORLINK_SERVERS")
        .env_remove("SENSORLINK_ADDR");
    for (key, value) in envs {
        cmd.env(key, value);
    }
    let out = run(&mut cmd);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The precedence of the address settings (review12 S4): flags replace the environment's
/// list (not add to it); a leftover SENSORLINK_ADDR does not turn a file's list off; an
/// empty list is an error, not the default address.
#[test]
fn address_settings_replace_by_layer_and_a_list_beats_a_lone_addr() {
    let (code, printed, stderr) =
        print_config_env(&["--server", "c:3"], &[("SENSORLINK_SERVERS", "a:1,b:2")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(printed.contains("addr = \"c:3\""), "{printed}");
    assert!(!printed.contains("a:1"), "{printed}");

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("client.toml");
    std::fs::write(&file, "[client]\nservers = [\"e:5\", \"f:6\"]\n").expect("write");
    let file = file.to_str().expect("utf-8 temp path");
    let (code, printed, stderr) =
        print_config_env(&["--config", file], &[("SENSORLINK_ADDR", "z:9")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        printed.contains("servers = [\"e:5\", \"f:6\"]"),
        "{printed}"
    );
    // The environment's list does replace the file's.
    let (_, printed, _) =
        print_config_env(&["--config", file], &[("SENSORLINK_SERVERS", "g:7,h:8")]);
    assert!(
        printed.contains("servers = [\"g:7\", \"h:8\"]"),
        "{printed}"
    );

    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "[client]\nservers = []\n").expect("write");
    let empty = empty.to_str().expect("utf-8 temp path");
    let (code, _, stderr) = print_config_env(&["--config", empty], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("at least one address"), "{stderr}");
}

#[test]
fn an_invalid_server_address_is_named() {
    let (code, _, stderr) = print_config(&["a:1", "b:port", "--server", "c:3"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid server \"b:port\""), "{stderr}");
    let (code, _, stderr) = print_config(&["a:1", "--server", "nohost"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid server \"nohost\""), "{stderr}");
}

/// `--legacy` fails over the same way (one engine for both modes).
#[test]
fn legacy_mode_fails_over_the_same_way() {
    let b = Server::start(&["-q"]);
    let out = run(bin()
        .args(["client", "--legacy", UNREACHABLE_ADDR, &b.addr.to_string()])
        .args([
            "--count",
            "3",
            "--interval",
            "10ms",
            "--sensor",
            &starts_on_first("fo6"),
            "--json",
        ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let events = crate::harness::json_lines(&out.stdout);
    assert_eq!(connected_to(&events), [b.addr.to_string()]);
    let summary = summary(&out.stdout);
    assert_eq!(summary["acked"], 3, "{summary}");
    assert_eq!(summary["failovers"], 1, "{summary}");
}
