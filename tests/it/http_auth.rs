//! The HTTP side behind tokens, through the real binary: `--http-auth`, `--metrics-auth`,
//! `--http-insecure`, with tokens made by the real `sensorlink token new`.

use std::path::Path;
use std::process::Stdio;

use crate::harness::{bin, run, HttpResponse, LinePeer, Server, PATIENCE};

/// `sensorlink token new --auth FILE ARGS…`: the token it prints.
pub fn new_token(file: &Path, args: &[&str]) -> String {
    let out = run(bin()
        .args(["token", "new", "--auth"])
        .arg(file)
        .args(args)
        .env_remove("SENSORLINK_AUTH"));
    assert!(
        out.status.success(),
        "token new {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("UTF-8 token");
    let token = token.trim().to_string();
    assert!(token.starts_with("sl_"), "{token:?}");
    token
}

/// A tokens file with a read token and a write-only one.
pub struct Tokens {
    _dir: tempfile::TempDir,
    pub file: std::path::PathBuf,
    pub read: String,
    pub write_only: String,
}

impl Tokens {
    pub fn new() -> Tokens {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("tokens.toml");
        let read = new_token(&file, &["--read", "--name", "viewer"]);
        let write_only = new_token(&file, &["--sensor", "kitchen-*"]);
        Tokens {
            _dir: dir,
            file,
            read,
            write_only,
        }
    }

    pub fn file(&self) -> &str {
        self.file.to_str().expect("a UTF-8 temp path")
    }
}

/// `GET url` with `Authorization: <authorization>` (if any); any status is returned. The
/// body is read only when it is not an event stream (which does not end).
pub fn get_with(url: &str, authorization: Option<&str>) -> (HttpResponse, Option<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    let mut response = request
        .call()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header("content-type").unwrap_or_default();
    let challenge = header("www-authenticate");
    let body = if content_type.starts_with("text/event-stream") {
        String::new()
    } else {
        response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|err| panic!("GET {url}: reading the body: {err}"))
    };
    (
        HttpResponse {
            status: response.status().as_u16(),
            content_type,
            body,
        },
        challenge,
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The read token with its last character changed: well formed, wrong secret.
fn wrong(token: &str) -> String {
    let (head, last) = token.split_at(token.len() - 1);
    format!("{head}{}", if last == "a" { "b" } else { "a" })
}

const API: [&str; 5] = [
    "/api/server",
    "/api/sensors",
    "/api/sensors/kitchen-01",
    "/api/readings?sensor=kitchen-01",
    "/api/events",
];

#[test]
fn the_api_asks_for_a_read_token() {
    let tokens = Tokens::new();
    let server = Server::start(&["--http-auth", "token", "--auth", tokens.file()]);
    // Something to read: a reading stored through a writer's token.
    let mut peer = LinePeer::new(server.addr);
    peer.send(format!("auth {}\n", tokens.write_only).as_bytes());
    peer.send(b"weather,sensor=kitchen-01 temperature=21.5 1700000000000000000\nping\n");
    let mut replies: Vec<String> = Vec::new();
    while replies.last().is_none_or(|line| line != "pong") {
        replies.push(peer.line());
    }
    let read = bearer(&tokens.read);

    for path in API {
        let url = server.http_url(path);
        for (authorization, status, label) in [
            (None, 401, "no token"),
            (Some(bearer(&wrong(&tokens.read))), 401, "wrong token"),
            (
                Some("Bearer not-a-token".to_string()),
                401,
                "malformed token",
            ),
            (Some(bearer(&tokens.write_only)), 403, "write-only token"),
        ] {
            let (response, challenge) = get_with(&url, authorization.as_deref());
            assert_eq!(response.status, status, "{path} with {label}: {response:?}");
            let challenge = challenge.unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer"),
                "{path} {label}: {challenge:?}"
            );
            assert_eq!(response.content_type, "application/json", "{path} {label}");
            let error = response.json();
            assert!(
                error["error"].is_string(),
                "{path} {label}: {}",
                response.body
            );
            assert!(
                !response.body.contains(&tokens.read)
                    && !response.body.contains(&tokens.write_only),
                "the answer never echoes a token: {}",
                response.body
            );
        }
        let (response, _) = get_with(&url, Some(&read));
        assert_eq!(
            response.status, 200,
            "{path} with the read token: {response:?}"
        );
    }
    // The read token reads what was stored, the stream included.
    let (readings, _) = get_with(
        &server.http_url("/api/readings?sensor=kitchen-01"),
        Some(&read),
    );
    assert_eq!(
        readings.json()["readings"][0]["fields"]["temperature"],
        21.5,
        "replies {replies:?}"
    );
    let (events, _) = get_with(&server.http_url("/api/events"), Some(&read));
    assert!(
        events.content_type.starts_with("text/event-stream"),
        "{events:?}"
    );

    // Probes and the page's shell are open; /metrics follows the API by default.
    for path in ["/healthz", "/readyz", "/", "/app.js", "/style.css"] {
        assert_eq!(
            get_with(&server.http_url(path), None).0.status,
            200,
            "{path}"
        );
    }
    assert_eq!(get_with(&server.http_url("/metrics"), None).0.status, 401);
    let (metrics, _) = get_with(&server.http_url("/metrics"), Some(&read));
    assert_eq!(metrics.status, 200);
    for (reason, at_least) in [
        ("missing", 6),
        ("unknown", 5),
        ("malformed", 5),
        ("no_read_scope", 5),
    ] {
        let prefix = format!("sensorlink_http_auth_refused_total{{reason=\"{reason}\"}} ");
        let count: f64 = metrics
            .body
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in /metrics:\n{}", metrics.body));
        assert!(count >= f64::from(at_least), "{reason}: {count}");
    }
    // The log names the refusals without the tokens.
    server.wait_for_log("http request refused");
    let log = server.stderr();
    // Each with the client's address, so a token-guessing client can be found.
    assert!(
        log.lines()
            .filter(|line| line.contains("http request refused"))
            .all(|line| line.contains("peer=127.0.0.1:")),
        "{log}"
    );
    assert!(
        !log.contains(&tokens.read) && !log.contains(&tokens.write_only),
        "{log}"
    );
}

#[test]
fn metrics_auth_open_leaves_metrics_open() {
    let tokens = Tokens::new();
    let server = Server::start(&[
        "--http-auth",
        "token",
        "--auth",
        tokens.file(),
        "--metrics-auth",
        "open",
    ]);
    assert_eq!(get_with(&server.http_url("/metrics"), None).0.status, 200);
    assert_eq!(
        get_with(&server.http_url("/api/server"), None).0.status,
        401
    );
}

#[test]
fn loopback_is_open_by_default() {
    let tokens = Tokens::new();
    let server = Server::start(&["--auth", tokens.file()]);
    assert_eq!(
        get_with(&server.http_url("/api/server"), None).0.status,
        200
    );
    assert_eq!(get_with(&server.http_url("/metrics"), None).0.status, 200);
}

/// Beyond loopback without tokens the server does not start (exit 2, the three ways out
/// named); `--http-insecure` starts it open, with a warning.
#[test]
fn exposed_http_without_tokens_refuses_to_start() {
    let out = run(bin()
        .args(["server", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(["--http", "0.0.0.0:0"])
        .env_remove("SENSORLINK_CONFIG")
        .env_remove("SENSORLINK_AUTH")
        .env_remove("SENSORLINK_HTTP_INSECURE")
        .stdin(Stdio::null()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for way_out in ["--auth FILE", "--http 127.0.0.1:9889", "--http-insecure"] {
        assert!(stderr.contains(way_out), "{way_out} in {stderr}");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));

    let out = run(bin()
        .args(["server", "--listen", "127.0.0.1:0", "--store", "memory"])
        .args(["--http-auth", "token"])
        .env_remove("SENSORLINK_CONFIG")
        .env_remove("SENSORLINK_AUTH")
        .stdin(Stdio::null()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--http-auth token needs --auth FILE"),
        "{stderr}"
    );

    let server = Server::start(&["--http", "0.0.0.0:0", "--http-insecure"]);
    server.wait_for_log("the HTTP side listens beyond loopback without tokens");
    let port = server.http.expect("HTTP on").port();
    let (response, _) = get_with(&format!("http://127.0.0.1:{port}/api/server"), None);
    assert_eq!(response.status, 200, "{response:?}");
}

/// Beyond loopback with tokens, `auto` asks for them.
#[test]
fn exposed_http_with_tokens_asks_for_them() {
    let tokens = Tokens::new();
    let server = Server::start(&["--http", "0.0.0.0:0", "--auth", tokens.file()]);
    let port = server.http.expect("HTTP on").port();
    let url = format!("http://127.0.0.1:{port}/api/sensors");
    assert_eq!(get_with(&url, None).0.status, 401);
    assert_eq!(get_with(&url, Some(&bearer(&tokens.read))).0.status, 200);
}
