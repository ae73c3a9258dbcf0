//! TLS on the sensor port with the real binary: `sensorlink cert`, a TLS round trip, the
//! clear failures when one side speaks TLS and the other does not, HTTPS on the HTTP side,
//! and the SIGHUP reload of the certificate.

use std::io::{Read as _, Write as _};
use std::path::Path;

use crate::harness::*;

/// `sensorlink cert --dir DIR` (default hosts), checked to have succeeded.
pub(crate) fn make_certs(dir: &Path) {
    let out = run(bin().args(["cert", "--dir"]).arg(dir));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A server on the sensor port with TLS from `dir`'s certificates, plus `extra` flags.
fn tls_server(dir: &Path, store: &str, extra: &[&str]) -> Server {
    let cert = dir.join("server.pem");
    let key = dir.join("server-key.pem");
    let mut args = vec![
        "--tls-cert",
        cert.to_str().expect("temp path is UTF-8"),
        "--tls-key",
        key.to_str().expect("temp path is UTF-8"),
    ];
    args.extend_from_slice(extra);
    Server::start_on("127.0.0.1:0", store, &args)
}

#[test]
fn cert_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let again = run(bin().args(["cert", "--dir"]).arg(dir.path()));
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("--force"), "{stderr}");
    let forced = run(bin().args(["cert", "--force", "--dir"]).arg(dir.path()));
    assert!(forced.status.success());
}

#[test]
fn tls_round_trip_acks_and_stores_readings() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let store = TempStore::new();
    let mut server = tls_server(dir.path(), &store.url(), &[]);
    let ca = dir.path().join("ca.pem");
    let out = run(bin()
        .args(["client", &server.addr.to_string(), "--tls", "--ca"])
        .arg(&ca)
        .args(["--count", "3", "--interval", "10ms", "--sensor", "tls1"]));
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
    // The kernel's figures come from the TCP socket under the TLS stream.
    assert!(stdout.contains("\nkernel TCP: srtt "), "{stdout}");
    // The client ends with close_notify: a clean end, not a truncated stream.
    server.wait_for_log("mode=\"line\" end=\"eof\" accepted=4");
    // The seed's protocol runs unchanged inside TLS too.
    let legacy = run(bin()
        .args([
            "client",
            &server.addr.to_string(),
            "--tls",
            "--legacy",
            "--ca",
        ])
        .arg(&ca)
        .args(["--count", "2", "--interval", "10ms"]));
    assert!(
        legacy.status.success(),
        "{}",
        String::from_utf8_lossy(&legacy.stderr)
    );
    server.wait_for_log("mode=\"legacy\" end=\"eof\" accepted=2");
    server.terminate();
    let rows = store.rows(&["--sensor", "tls1", "--measurement", "reading"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
}

#[test]
fn plain_tcp_to_the_tls_port_fails_cleanly_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let server = tls_server(dir.path(), "memory", &[]);
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--count",
        "1",
        "--connect-timeout",
        "5s",
    ]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("serves TLS (connect with --tls)"),
        "{stderr}"
    );
    server.wait_for_log("TLS handshake failed");

    // A raw plain peer: the server answers with an alert and closes; nothing else.
    let mut raw = server.connect();
    raw.write_all(b"ping connect\n").expect("write");
    let mut answer = Vec::new();
    raw.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    raw.read_to_end(&mut answer)
        .expect("read until the server closes");
    assert!(answer.starts_with(&[0x15, 0x03]), "{answer:?}");

    // Still serving TLS clients.
    let out = run(bin()
        .args(["client", &server.addr.to_string(), "--tls", "--ca"])
        .arg(dir.path().join("ca.pem"))
        .args(["--count", "1"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = server
        .get_https("/metrics", &dir.path().join("ca.pem"))
        .body;
    assert!(
        metrics.contains("sensorlink_tls_handshakes_failed_total{reason=\"error\"}"),
        "{metrics}"
    );
}

#[test]
fn tls_client_to_a_plain_port_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let server = Server::start(&[]);
    let out = run(bin()
        .args(["client", &server.addr.to_string(), "--tls", "--ca"])
        .arg(dir.path().join("ca.pem"))
        .args(["--count", "1", "--connect-timeout", "1s"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("TLS handshake") && stderr.contains("serve TLS"),
        "{stderr}"
    );
}

#[test]
fn tls_client_without_the_ca_is_refused_by_certificate_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let server = tls_server(dir.path(), "memory", &[]);
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--tls",
        "--count",
        "1",
        "--connect-timeout",
        "5s",
    ]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
}

#[test]
fn mutual_tls_rejects_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let ca = dir.path().join("ca.pem");
    let ca_arg = ca.to_str().expect("temp path is UTF-8");
    let server = tls_server(dir.path(), "memory", &["--tls-client-ca", ca_arg]);
    let addr = server.addr.to_string();
    let without = run(bin().args([
        "client",
        &addr,
        "--tls",
        "--ca",
        ca_arg,
        "--count",
        "1",
        "--connect-timeout",
        "5s",
    ]));
    assert_eq!(without.status.code(), Some(2));
    server.wait_for_log("TLS handshake failed");
    let with = run(bin()
        .args(["client", &addr, "--tls", "--ca", ca_arg, "--tls-cert"])
        .arg(dir.path().join("client.pem"))
        .arg("--tls-key")
        .arg(dir.path().join("client-key.pem"))
        .args(["--count", "1"]));
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
}

/// A line-mode TLS connection to `addr` trusting `ca`: writes go through at once, reads
/// are bounded by [`PATIENCE`].
type TlsLine =
    tokio_rustls::rustls::StreamOwned<tokio_rustls::rustls::ClientConnection, std::net::TcpStream>;

fn tls_connect(addr: std::net::SocketAddr, ca: &Path) -> TlsLine {
    let config = sensorlink::tls::client_config(Some(ca), None).expect("client TLS config");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a valid name");
    let connection = tokio_rustls::rustls::ClientConnection::new(config, name).expect("TLS client");
    tokio_rustls::rustls::StreamOwned::new(connection, connect(addr))
}

/// Send `ping` and expect `pong` back over `tls`.
fn ping(tls: &mut TlsLine) {
    tls.write_all(b"ping\n").expect("write ping");
    tls.flush().expect("flush");
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        tls.read_exact(&mut byte).expect("read the reply");
        reply.push(byte[0]);
    }
    assert_eq!(reply, b"pong\n");
}

/// One `client --count 1` run against `addr` trusting `ca`: its output.
fn client_once(addr: &str, ca: &Path) -> std::process::Output {
    run(bin().args(["client", addr, "--tls", "--ca"]).arg(ca).args([
        "--count",
        "1",
        "--connect-timeout",
        "5s",
    ]))
}

#[test]
fn https_serves_the_http_side_with_the_sensor_ports_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let ca = dir.path().join("ca.pem");
    // Mutual TLS on the sensor port; HTTPS still asks browsers for no certificate.
    let ca_arg = ca.to_str().expect("temp path is UTF-8");
    let server = tls_server(dir.path(), "memory", &["--tls-client-ca", ca_arg]);
    assert!(server.https, "`http on https://` announced");
    let health = server.get_https("/healthz", &ca);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));

    // Plain HTTP to the HTTPS port gets no HTTP answer, only a TLS alert or a close.
    let http = server.http.expect("HTTP on");
    let mut plain = connect(http);
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "alert or close: {answer:?}"
    );

    // And HTTPS is still served.
    let metrics = server.get_https("/metrics", &ca);
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.content_type.starts_with("text/plain"),
        "{metrics:?}"
    );
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let ca = dir.path().join("ca.pem");
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(&ca, &old_ca).expect("keep the first CA");
    let server = tls_server(dir.path(), "memory", &[]);
    let addr = server.addr.to_string();
    let mut established = tls_connect(server.addr, &old_ca);
    ping(&mut established);

    // A new CA and server certificate, then SIGHUP.
    let out = run(bin().args(["cert", "--force", "--dir"]).arg(dir.path()));
    assert!(out.status.success());
    server.signal(libc::SIGHUP);
    server.wait_for_log("reloaded");
    // The established connection goes on with the old certificate's session.
    ping(&mut established);
    // New handshakes use the new certificate: the old CA no longer verifies it.
    let refused = client_once(&addr, &old_ca);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    let accepted = client_once(&addr, &ca);
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    // HTTPS follows the same reload.
    let metrics = server.get_https("/metrics", &ca).body;
    assert!(
        metrics.contains("sensorlink_reloads_total{what=\"tls\",result=\"ok\"} 1"),
        "{metrics}"
    );

    // A broken key: the reload fails, is logged and counted, and the certificate in force
    // stays.
    std::fs::write(dir.path().join("server-key.pem"), "not a key").expect("break the key");
    server.signal(libc::SIGHUP);
    server.wait_for_log("reload failed");
    let still = client_once(&addr, &ca);
    assert!(
        still.status.success(),
        "{}",
        String::from_utf8_lossy(&still.stderr)
    );
    let metrics = server.get_https("/metrics", &ca).body;
    assert!(
        metrics.contains("sensorlink_reloads_total{what=\"tls\",result=\"error\"} 1"),
        "{metrics}"
    );
    ping(&mut established);
}

#[test]
fn http_tls_off_keeps_the_http_side_plain() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let server = tls_server(dir.path(), "memory", &["--http-tls", "off"]);
    assert!(!server.https, "`http on http://` announced");
    let health = server.get("/healthz");
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    // The sensor port still speaks TLS only.
    let out = client_once(&server.addr.to_string(), &dir.path().join("ca.pem"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `TCP_INFO` is read through TLS too: a TLS client's sensor shows the kernel's srtt of
/// the TCP connection underneath.
#[test]
fn a_tls_connection_is_sampled_like_a_plain_one() {
    if !cfg!(target_os = "linux") {
        eprintln!("skipped: TCP_INFO is Linux's");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let server = tls_server(dir.path(), "memory", &["--http-tls", "off"]);
    let out = run(bin()
        .args(["client", &server.addr.to_string(), "--tls", "--ca"])
        .arg(dir.path().join("ca.pem"))
        .args(["--count", "3", "--interval", "10ms", "--sensor", "tlstcp"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Its close sample is in before its sensor is disconnected.
    wait_for(
        || server.get("/api/sensors/tlstcp").json()["state"] == "disconnected",
        PATIENCE,
        "the TLS client's sensor to turn disconnected",
    );
    let sensor = server.get("/api/sensors/tlstcp").json();
    let srtt_ms = sensor["tcp"]["srtt_ms"].as_f64();
    assert!(srtt_ms.is_some_and(|ms| ms > 0.0), "{sensor}");
    assert!(sensor["tcp"]["retransmits"].is_u64(), "{sensor}");
}

/// `sensorlink bench --tls`: every reading acked over TLS; without the CA the certificate
/// check refuses, and plain TCP to the TLS port says to use --tls.
#[test]
fn bench_over_tls_acks_every_reading_and_checks_the_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_certs(dir.path());
    let server = tls_server(dir.path(), "memory", &[]);
    let addr = server.addr.to_string();
    let out = run(bin()
        .args(["bench", &addr, "--tls", "--ca"])
        .arg(dir.path().join("ca.pem"))
        .args(["--connections", "3", "--pipeline", "16", "--batch", "4"])
        .args(["--count", "300", "--json", "--no-progress"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bench --json prints one JSON object");
    assert_eq!(report["readings"], 300, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connections"], 3, "{report}");

    let out = run(bin().args(["bench", &addr, "--tls", "--count", "1", "--no-progress"]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");

    let out = run(bin().args(["bench", &addr, "--count", "1", "--no-progress"]));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls"), "{stderr}");
}
