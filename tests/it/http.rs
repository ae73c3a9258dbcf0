//! The HTTP side through the real binary: `--http`, probes, dashboard assets, `/metrics`.

use std::process::Stdio;

use crate::harness::{bin, run, Server};

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
