//! Token authentication on the sensor port (`server --auth`), with tokens made by the real
//! `sensorlink token new`: who may write, under which sensor, and what is refused.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::harness::*;

/// A tokens file in its own temp dir.
struct Tokens {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Tokens {
    fn new() -> Tokens {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        Tokens { _dir: dir, path }
    }

    /// `sensorlink token new --sensor …` (and `--name`): the token it printed.
    fn add(&self, name: &str, sensors: &[&str]) -> String {
        let mut cmd = bin();
        cmd.args(["token", "new", "--auth"])
            .arg(&self.path)
            .args(["--name", name]);
        for sensor in sensors {
            cmd.args(["--sensor", sensor]);
        }
        let out = run(&mut cmd);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    fn revoke(&self, name: &str) {
        let out = run(bin()
            .args(["token", "revoke", "--auth"])
            .arg(&self.path)
            .arg(name));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

/// The id in `sl_<id>_<secret>`.
fn id_of(token: &str) -> &str {
    &token[3..11]
}

/// A server with `--auth` over a SQLite store (so rows can be queried after it stops).
fn auth_server(store: &TempStore, tokens: &Tokens, extra: &[&str]) -> Server {
    let mut args = vec!["--auth", tokens.path()];
    args.extend_from_slice(extra);
    Server::start_on("127.0.0.1:0", &store.url(), &args)
}

/// Wait until `/metrics` shows every one of `series` (a connection is counted once its
/// task ends, a little after the peer saw the close).
fn wait_metrics(server: &Server, series: &[&str]) {
    let mut last = String::new();
    let seen = poll_until(PATIENCE, || {
        last = server.get("/metrics").body;
        series.iter().all(|s| last.contains(s))
    });
    assert!(seen, "{series:?} not all in /metrics:\n{last}");
}

/// Read until the server closes (or the read timeout fails the test).
fn read_to_close(peer: &mut LinePeer) -> String {
    let mut rest = String::new();
    peer.reader
        .read_to_string(&mut rest)
        .expect("the server closes the connection");
    rest
}

/// A valid token: untagged readings are stored under the token's sensor (never the peer's
/// address), tagged ones under the sensor they name; a sensor outside its scope is refused
/// on its own line while the others are stored.
#[test]
fn a_valid_token_writes_its_sensors_and_only_those() {
    let tokens = Tokens::new();
    let kitchen = tokens.add("kitchen", &["kitchen-01"]);
    let store = TempStore::new();
    let mut server = auth_server(&store, &tokens, &[]);

    let mut peer = LinePeer::new(server.addr);
    peer.send(format!("auth {kitchen}\n").as_bytes());
    assert_eq!(peer.line(), format!("ok auth {}", id_of(&kitchen)));
    peer.send(b"weather temperature=21.5 1000000000\n");
    peer.send(b"weather,sensor=kitchen-01 temperature=21.6 2000000000\n");
    peer.send(b"weather,sensor=hall temperature=-99 3000000000\n");
    peer.send(b"sync 1\n");
    assert_eq!(
        peer.line(),
        format!(
            "error 4 token kitchen ({}) may not write sensor \"hall\"",
            id_of(&kitchen)
        )
    );
    let ack = peer.line();
    assert!(ack.starts_with("ack 1 readings=2 rejected=1"), "{ack}");
    drop(peer);

    assert!(server.terminate().success());
    let rows = store.rows(&[]);
    let sensors: Vec<&str> = rows.iter().filter_map(|r| r["sensor"].as_str()).collect();
    assert_eq!(sensors, ["kitchen-01", "kitchen-01"], "{rows:?}");
    assert!(
        !server.stderr().contains(&kitchen),
        "the token is in the log"
    );
    assert!(
        !server.stderr().contains(&kitchen[12..]),
        "the secret is in the log"
    );
}

/// Wrong, malformed and unknown tokens are refused (`auth failed: …`) and logged without
/// the token; a token revoked and reloaded (SIGHUP) closes the connection holding it at its
/// next reading, and is refused on new ones.
#[test]
fn wrong_malformed_and_revoked_tokens_are_refused() {
    let tokens = Tokens::new();
    let kitchen = tokens.add("kitchen", &["kitchen-01"]);
    let hall = tokens.add("hall", &["hall"]);
    let store = TempStore::new();
    let server = auth_server(&store, &tokens, &[]);

    let mut wrong = kitchen.clone();
    let last = wrong.pop().expect("non-empty");
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    let mut peer = LinePeer::new(server.addr);
    peer.send(format!("auth {wrong}\n").as_bytes());
    assert_eq!(peer.line(), "error 1 auth failed: unknown token");
    peer.send(b"auth hunter2\n");
    assert_eq!(peer.line(), "error 2 auth failed: malformed token");
    // A refused `auth` leaves the connection unauthenticated.
    peer.send(b"m,sensor=kitchen-01 v=1i 1\n");
    assert_eq!(
        peer.line(),
        "error 3 authentication required: send \"auth <token>\" first"
    );
    // Three strikes: the connection is closed.
    assert_eq!(read_to_close(&mut peer), "");
    server.wait_for_log("auth failed");
    assert!(
        !server.stderr().contains(&wrong),
        "the wrong token is in the log"
    );
    assert!(
        !server.stderr().contains("hunter2"),
        "a guess is in the log"
    );
    wait_metrics(
        &server,
        &[
            "sensorlink_auth_total{result=\"unknown\"} 1",
            "sensorlink_auth_total{result=\"malformed\"} 1",
            "sensorlink_connections_closed_total{reason=\"auth_failed\"} 1",
        ],
    );

    // A connection authenticated with `kitchen` before the revocation.
    let mut held = LinePeer::new(server.addr);
    held.send(format!("auth {kitchen}\nm v=1i 1\nsync a\n").as_bytes());
    assert_eq!(held.line(), format!("ok auth {}", id_of(&kitchen)));
    assert!(held.line().starts_with("ack a readings=1 rejected=0"));

    tokens.revoke("kitchen");
    server.signal(libc::SIGHUP);
    wait_metrics(
        &server,
        &["sensorlink_reloads_total{what=\"auth\",result=\"ok\"} 1"],
    );
    // Its next reading is refused and the connection closed.
    held.send(b"m v=2i 2\n");
    assert_eq!(
        held.line(),
        format!(
            "error 4 auth failed: token kitchen ({}) is revoked",
            id_of(&kitchen)
        )
    );
    assert_eq!(read_to_close(&mut held), "");
    wait_metrics(
        &server,
        &["sensorlink_connections_closed_total{reason=\"token_revoked\"} 1"],
    );
    // A new connection cannot use it; another token still works on the same connection.
    let mut peer = LinePeer::new(server.addr);
    peer.send(format!("auth {kitchen}\n").as_bytes());
    assert_eq!(
        peer.line(),
        format!(
            "error 1 auth failed: token kitchen ({}) is revoked",
            id_of(&kitchen)
        )
    );
    peer.send(format!("auth {hall}\nm v=1i 1\nsync a\n").as_bytes());
    assert_eq!(peer.line(), format!("ok auth {}", id_of(&hall)));
    assert!(peer.line().starts_with("ack a readings=1 rejected=0"));
    assert!(!server.stderr().contains(&kitchen));
}

/// Readings before `auth` are refused (ping still answered), and the connection is closed
/// after the third; a plain sender that never asked for replies gets its held errors first.
#[test]
fn readings_before_auth_are_refused_then_the_connection_is_closed() {
    let tokens = Tokens::new();
    tokens.add("kitchen", &["kitchen-01"]);
    let store = TempStore::new();
    let mut server = auth_server(&store, &tokens, &[]);

    let mut peer = LinePeer::new(server.addr);
    peer.send(b"ping 1\n");
    assert_eq!(peer.line(), "pong 1");
    peer.send(b"m v=1i 1\nm v=2i 2\nm v=3i 3\nm v=4i 4\n");
    for line in 2..=4 {
        assert_eq!(
            peer.line(),
            format!("error {line} authentication required: send \"auth <token>\" first")
        );
    }
    assert_eq!(read_to_close(&mut peer), "", "the fourth is never answered");

    // No control line at all: its errors were held, and are sent before the close.
    let mut plain = LinePeer::new(server.addr);
    plain.send(b"m v=1i 1\nm v=2i 2\nm v=3i 3\n");
    let all = read_to_close(&mut plain);
    assert_eq!(all.lines().count(), 3, "{all}");
    assert!(
        all.lines().all(|l| l.contains("authentication required")),
        "{all}"
    );

    wait_metrics(
        &server,
        &[
            "sensorlink_lines_rejected_total{reason=\"unauthenticated\"} 6",
            "sensorlink_connections_closed_total{reason=\"auth_failed\"} 2",
        ],
    );
    assert!(server.terminate().success());
    assert!(store.rows(&[]).is_empty());
}

/// The seed's bytes over one connection: `ping`, a reading; `pong`s expected (or a close).
fn seed_exchange(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut seed = connect(addr);
    let _ = seed.write_all(b"ping");
    let mut got = Vec::new();
    let mut buf = [0u8; 4];
    if seed.read_exact(&mut buf).is_ok() {
        got.extend_from_slice(&buf);
        let _ = seed.write_all(b"ping / ('2026-11-24 11:46:25.5', 102)");
        if seed.read_exact(&mut buf).is_ok() {
            got.extend_from_slice(&buf);
        }
    }
    got
}

/// With `--auth`, legacy peers are closed without a `pong` unless their network is allowed;
/// allowed ones are stored under their address, as before.
#[test]
fn legacy_peers_need_allow_legacy_when_auth_is_on() {
    let tokens = Tokens::new();
    tokens.add("kitchen", &["kitchen-01"]);
    let store = TempStore::new();
    let mut server = auth_server(&store, &tokens, &[]);
    assert_eq!(seed_exchange(server.addr), b"", "refused: closed, no pong");
    server.wait_for_log("legacy peer refused");
    wait_metrics(
        &server,
        &["sensorlink_connections_closed_total{reason=\"legacy_not_allowed\"} 1"],
    );
    let addr = server.addr;
    assert!(server.terminate().success());
    assert!(store.rows(&[]).is_empty());

    let mut server = Server::restart_on(
        addr,
        &store.url(),
        &["--auth", tokens.path(), "--allow-legacy", "127.0.0.0/8"],
    );
    assert_eq!(seed_exchange(server.addr), b"pongpong");
    assert!(server.terminate().success());
    let rows = store.rows(&[]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["sensor"], "127.0.0.1");
}

/// `sensorlink client --token`: delivered end to end under its sensor; a bad token stops the
/// client at once with exit status 3 and a clear message, without reconnecting.
#[test]
fn client_with_a_token_end_to_end_and_with_a_bad_one() {
    let tokens = Tokens::new();
    let token = tokens.add("s1", &["s1"]);
    let store = TempStore::new();
    let mut server = auth_server(&store, &tokens, &[]);
    let addr = server.addr.to_string();
    let out = run(bin()
        .args([
            "client",
            &addr,
            "--count",
            "3",
            "--interval",
            "0s",
            "--sensor",
            "s1",
        ])
        .env("SENSORLINK_TOKEN", &token));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("3 sent, 3 acked, 0 lost"), "{stdout}");
    assert!(!stdout.contains(&token) && !stderr.contains(&token));

    // A well-formed token from another tokens file: unknown to this server.
    let stranger = Tokens::new().add("stranger", &["s1"]);
    let out = run(bin().args([
        "client",
        &addr,
        "--count",
        "3",
        "--interval",
        "0s",
        "--sensor",
        "s1",
        "--token",
        &stranger,
        "--connect-timeout",
        "30s",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("authentication failed: unknown token"),
        "{stderr}"
    );
    // One attempt: no reconnect loop.
    wait_metrics(&server, &["sensorlink_auth_total{result=\"unknown\"} 1"]);
    assert!(!stderr.contains(&stranger), "{stderr}");

    assert!(server.terminate().success());
    let rows = store.rows(&["--measurement", "reading"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r["sensor"] == "s1"), "{rows:?}");
    assert!(!server.stderr().contains(&token));
}

/// With a token and no --sensor, the client sends its readings and link reports untagged:
/// the server files them under the token's one sensor (the host name, which the token may
/// not write, is not guessed), and the client says where the name comes from.
#[test]
fn client_with_a_token_and_no_sensor_writes_the_tokens_sensor() {
    let tokens = Tokens::new();
    let token = tokens.add("boiler", &["boiler-7"]);
    let store = TempStore::new();
    let mut server = auth_server(&store, &tokens, &[]);
    let out = run(bin()
        .args(["client", &server.addr.to_string(), "--count", "3"])
        .args(["--interval", "0s"])
        .env_remove("SENSORLINK_SENSOR")
        .env("SENSORLINK_TOKEN", &token));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("3 sent, 3 acked, 0 lost"), "{stdout}");
    assert!(stdout.contains("sensor (from the token)"), "{stdout}");

    assert!(server.terminate().success());
    let rows = store.rows(&["--measurement", "reading"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r["sensor"] == "boiler-7"), "{rows:?}");
    // The last link report of the run, filed likewise.
    let links = store.rows(&["--measurement", "sensorlink_link"]);
    assert!(!links.is_empty(), "no link report stored");
    assert!(links.iter().all(|r| r["sensor"] == "boiler-7"), "{links:?}");
}

/// `--token` with `--legacy` is refused before anything is sent.
#[test]
fn token_with_legacy_is_a_usage_error() {
    let out = run(bin().args([
        "client",
        "127.0.0.1:9",
        "--legacy",
        "--token",
        "sl_abcd1234_x",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("only without legacy"), "{stderr}");
    assert!(!stderr.contains("sl_abcd1234_x"), "{stderr}");
}

/// `bench --token`: one `auth` per connection, every reading stored under its bench sensor;
/// without the token the same run is refused (not clean: exit 1).
#[test]
fn bench_with_a_token() {
    let tokens = Tokens::new();
    let token = tokens.add("bench", &["bench-*"]);
    let store = TempStore::new();
    let mut server = auth_server(&store, &tokens, &[]);
    let addr = server.addr.to_string();
    let out = run(bin().args([
        "bench",
        &addr,
        "-c",
        "2",
        "-n",
        "20",
        "--no-progress",
        "--token",
        &token,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    wait_metrics(&server, &["sensorlink_auth_total{result=\"ok\"} 2"]);

    let out = run(bin().args(["bench", &addr, "-n", "5", "--no-progress"]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused readings make an unclean run"
    );

    assert!(server.terminate().success());
    let rows = store.rows(&[]);
    assert_eq!(rows.len(), 20, "only the authenticated run's readings");
    assert!(
        rows.iter().all(|r| r["sensor"]
            .as_str()
            .is_some_and(|s| s.starts_with("bench-"))),
        "{rows:?}"
    );
}

/// A client whose `--sensor` is outside its token's scope: each reading is refused (counted
/// as rejected, exit 1), nothing is stored, and the client is not stopped as for a bad token.
#[test]
fn client_readings_outside_the_token_scope_are_rejected() {
    let tokens = Tokens::new();
    let token = tokens.add("s1", &["s1"]);
    let store = TempStore::new();
    let mut server = auth_server(&store, &tokens, &[]);
    let out = run(bin()
        .args([
            "client",
            &server.addr.to_string(),
            "--count",
            "2",
            "--interval",
            "0s",
            "--sensor",
            "s2",
            "--link-report",
            "0",
        ])
        .env("SENSORLINK_TOKEN", &token));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("may not write sensor"), "{stdout}");
    assert!(server.terminate().success());
    assert!(store.rows(&[]).is_empty());
}

/// A client with a token against a server without `--auth`: warned once, delivered anyway;
/// the server counts the `auth` as `off`.
#[test]
fn a_token_sent_to_a_server_without_auth_is_warned_about_and_ignored() {
    let tokens = Tokens::new();
    let token = tokens.add("s1", &["s1"]);
    let server = Server::start(&[]);
    let out = run(bin()
        .args([
            "client",
            &server.addr.to_string(),
            "--count",
            "2",
            "--interval",
            "0s",
            "--sensor",
            "s1",
        ])
        .env("SENSORLINK_TOKEN", &token));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("2 sent, 2 acked, 0 lost"), "{stdout}");
    assert_eq!(
        stderr.matches("does not check tokens").count(),
        1,
        "{stderr}"
    );
    wait_metrics(&server, &["sensorlink_auth_total{result=\"off\"} 1"]);
}
