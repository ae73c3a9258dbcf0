//! Start the real binary, find its port, talk to it over real sockets, stop it by PID.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous bound for things that should take milliseconds: a liveness guard, not a benchmark.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How often bounded waits poll: short, so a wait ends soon after its condition holds.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// An address where nothing listens: port 1 on loopback needs root to bind, and no test
/// binds it, so connects are refused at once. Never reused for a server.
pub const UNREACHABLE_ADDR: &str = "127.0.0.1:1";

/// Poll `cond` until it holds or `timeout` passes; returns whether it held. The sleep
/// between polls is the poll interval of a bounded wait, not synchronisation.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Wait until `cond` holds; panics naming `what` after `timeout`.
pub fn wait_for(cond: impl FnMut() -> bool, timeout: Duration, what: &str) {
    assert!(
        poll_until(timeout, cond),
        "gave up after {timeout:?} waiting for {what}"
    );
}

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sensorlink"))
}

/// A running `sensorlink server`, killed on drop.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// Where its HTTP side listens (`None` with `--http off`).
    pub http: Option<SocketAddr>,
    /// Its HTTP side serves HTTPS (`http on https://…`): use [`Server::get_https`].
    pub https: bool,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    pub store: String,
}

/// The exit code a test's wrapping shell uses when it cannot set up the test's
/// precondition (e.g. `ulimit -f 2048 || exit 97`): reported as a setup failure.
pub const SETUP_FAILED: i32 = 97;

impl Server {
    /// Start on 127.0.0.1:0 with an in-memory store and `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_on("127.0.0.1:0", "memory", extra)
    }

    /// Start again on `addr`, where a server of this test was just stopped (so that a client
    /// pointed at it finds the new one). Waits, bounded, until the port can be bound; should
    /// another process take it in the instant before the server binds, the start fails
    /// with the server's own "address in use" error rather than a wrong result.
    pub fn restart_on(addr: SocketAddr, store: &str, extra: &[&str]) -> Server {
        wait_for(
            || std::net::TcpListener::bind(addr).is_ok(),
            PATIENCE,
            &format!("{addr} to be free for the restart"),
        );
        Server::start_on(&addr.to_string(), store, extra)
    }

    /// Start on `listen` with `store` (e.g. `sqlite:/tmp/x.db`).
    pub fn start_on(listen: &str, store: &str, extra: &[&str]) -> Server {
        // Never the default HTTP port: tests run in parallel.
        let http: &[&str] = if extra
            .iter()
            .any(|arg| *arg == "--http" || arg.starts_with("--http="))
        {
            &[]
        } else {
            &["--http", "127.0.0.1:0"]
        };
        let mut cmd = bin();
        cmd.args(["server", "--listen", listen, "--store", store])
            .args(http)
            .args(extra);
        Server::spawn(cmd, store)
    }

    /// Start `cmd` (a `sensorlink server` command line, maybe wrapped, e.g. by `sh -c` to
    /// set a limit first) and wait for its `listening on`; `store` is what it was given.
    pub fn spawn(mut cmd: Command, store: &str) -> Server {
        let mut child = cmd
            .env("RUST_LOG", "sensorlink=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sensorlink server");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_reader = {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    let mut all = stderr.lock().expect("stderr lock");
                    all.push_str(&line);
                    all.push('\n');
                }
            })
        };
        // Every line up to `listening on` (which is printed last, when all is up).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                let last = line.starts_with("listening on ");
                let _ = tx.send(line);
                if last {
                    break;
                }
            }
            for _ in lines {}
        });
        let mut http = None;
        let mut https = false;
        let addr = loop {
            let line = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
                let _ = child.kill();
                let status = child.wait().ok();
                // 97: a wrapping shell could not set the test's precondition (`|| exit 97`).
                let setup = if status.and_then(|s| s.code()) == Some(SETUP_FAILED) {
                    "SETUP FAILURE (the wrapper could not set the test's limit): "
                } else {
                    ""
                };
                panic!(
                    "{setup}server did not say `listening on` ({status:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                )
            });
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.parse().expect("address after `listening on`");
            }
            let (url, tls) = match line.strip_prefix("http on https://") {
                Some(rest) => (Some(rest), true),
                None => (line.strip_prefix("http on http://"), false),
            };
            let url = url
                .and_then(|rest| rest.strip_suffix('/'))
                .unwrap_or_else(|| panic!("unexpected line before `listening on`: {line:?}"));
            http = Some(url.parse().expect("address after `http on http(s)://`"));
            https = tls;
        };
        Server {
            child: Some(child),
            addr,
            http,
            https,
            stderr,
            stderr_reader: Some(stderr_reader),
            store: store.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Wait until the server's log contains `needle` (logs arrive through a pipe, a little
    /// after the event); panics with the log after [`PATIENCE`].
    pub fn wait_for_log(&self, needle: &str) {
        if !poll_until(PATIENCE, || self.stderr().contains(needle)) {
            panic!("log never said {needle:?}:\n{}", self.stderr());
        }
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait()
    }

    /// SIGKILL, then wait: nothing gets a chance to flush.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait();
    }

    /// Send `signal` to the server without waiting for anything.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    fn wait(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let mut status = None;
        if !poll_until(PATIENCE, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        }) {
            let _ = child.kill();
            panic!("server did not exit; stderr:\n{}", self.stderr());
        }
        // The whole log, up to the exit: the reader ends at the pipe's EOF.
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        status.expect("poll_until returned true only once try_wait gave a status")
    }

    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// `http://ADDR{path}` on the server's HTTP side; panics if it has none.
    pub fn http_url(&self, path: &str) -> String {
        let addr = self.http.expect("the server serves HTTP (not --http off)");
        format!("http://{addr}{path}")
    }

    /// `GET path` on the server's HTTP side.
    pub fn get(&self, path: &str) -> HttpResponse {
        assert!(!self.https, "the server serves HTTPS: use get_https");
        http_get(&self.http_url(path))
    }

    /// `GET path` on the server's HTTPS side, trusting the CA certificate in `ca`.
    pub fn get_https(&self, path: &str, ca: &Path) -> HttpResponse {
        assert!(self.https, "the server serves plain HTTP: use get");
        let addr = self.http.expect("the server serves HTTP (not --http off)");
        https_get(addr, path, ca)
    }
}

/// A blocking `GET path` over HTTPS to `addr` (loopback), trusting `ca`, checking the
/// certificate for `localhost`; bounded by [`PATIENCE`]. Any status is returned; a
/// transport or TLS error panics.
pub fn https_get(addr: SocketAddr, path: &str, ca: &Path) -> HttpResponse {
    let config = sensorlink::tls::client_config(Some(ca), None).expect("client TLS config");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("a valid name");
    let connection = tokio_rustls::rustls::ClientConnection::new(config, name).expect("TLS client");
    let mut tls = tokio_rustls::rustls::StreamOwned::new(connection, connect(addr));
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .unwrap_or_else(|err| panic!("GET {path} over HTTPS: {err}"));
    let mut raw = Vec::new();
    // The server closes after the response (close_notify); the body has a known length.
    if let Err(err) = tls.read_to_end(&mut raw) {
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::UnexpectedEof,
            "GET {path} over HTTPS: {err}"
        );
    }
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let mut content_type = String::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            assert!(
                !(name.eq_ignore_ascii_case("transfer-encoding")),
                "chunked bodies are not decoded here: {head}"
            );
            if name.eq_ignore_ascii_case("content-type") {
                content_type = value.trim().to_string();
            }
        }
    }
    HttpResponse {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// An HTTP response, whatever its status.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HttpResponse {
    /// The body as JSON; panics (with the body) if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }
}

/// A blocking `GET url` (loopback only), bounded by [`PATIENCE`]; any status is returned,
/// a transport error panics.
pub fn http_get(url: &str) -> HttpResponse {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(PATIENCE))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    HttpResponse {
        status: response.status().as_u16(),
        content_type,
        body: response
            .body_mut()
            .read_to_string()
            .unwrap_or_else(|err| panic!("GET {url}: reading the body: {err}")),
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to server");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Read exactly `n` bytes.
pub fn read_n(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("read reply bytes");
    buf
}

/// How long [`assert_silent`] listens: long enough that a stray reply is not missed on a
/// slow, shared machine (it comes at once, or after the server's 100 ms legacy quiet
/// period), short enough to spend in a handful of tests.
pub const SILENCE: Duration = Duration::from_secs(1);

/// Assert that nothing more arrives within [`SILENCE`].
pub fn assert_silent(stream: &mut TcpStream) {
    assert_silent_for(stream, SILENCE);
}

/// Assert that nothing more arrives within `wait` (no bytes, no close).
pub fn assert_silent_for(stream: &mut TcpStream, wait: Duration) {
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => panic!("connection closed"),
        Ok(n) => panic!("unexpected bytes {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(err) => assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        ),
    }
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
}

/// A line-mode peer: write lines, read reply lines.
pub struct LinePeer {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl LinePeer {
    pub fn new(addr: SocketAddr) -> LinePeer {
        let stream = connect(addr);
        let writer = stream.try_clone().expect("clone stream");
        LinePeer {
            reader: BufReader::new(stream),
            writer,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write to server");
    }

    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read reply line");
        assert!(n > 0, "server closed the connection");
        assert!(line.ends_with('\n'), "reply without newline: {line:?}");
        line.pop();
        line
    }
}

/// A temporary directory and a SQLite store URL inside it.
pub struct TempStore {
    pub dir: tempfile::TempDir,
}

impl TempStore {
    pub fn new() -> TempStore {
        TempStore {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("readings.db")
    }

    pub fn url(&self) -> String {
        format!("sqlite:{}", self.path().display())
    }

    /// `sensorlink query --format json` rows.
    pub fn rows(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        query_json(&self.url(), extra)
    }
}

/// Like [`query_json`], for polling a store a server is still writing: `None` if the query
/// fails (tried again by the caller's bounded wait).
pub fn try_query_json(store: &str, extra: &[&str]) -> Option<Vec<serde_json::Value>> {
    let out = run(bin()
        .args(["query", "--store", store, "--format", "json"])
        .args(extra));
    if !out.status.success() {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    value.as_array().cloned()
}

pub fn query_json(store: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = run(bin()
        .args(["query", "--store", store, "--format", "json"])
        .args(extra));
    assert!(
        out.status.success(),
        "query failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("query prints JSON");
    value.as_array().expect("a JSON array").clone()
}

/// Run a command to completion, with a liveness bound.
pub fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child)
}

/// A child process of this test, killed (SIGKILL, by its own PID) and reaped on drop, so a
/// failing assertion never leaves it running.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGKILL now and wait for the exit: nothing gets a chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_output(child: Child) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.expect("wait for command"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("command did not finish in 60 s");
        }
    }
}

/// Parse each stdout line as JSON.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
        })
        .collect()
}

/// The `summary` object from `--json` output.
pub fn summary(stdout: &[u8]) -> serde_json::Value {
    json_lines(stdout)
        .into_iter()
        .find(|event| event["event"] == "summary")
        .map(|event| event["summary"].clone())
        .expect("a summary event")
}

/// How many JSON events of kind `event` a client has written to the file at `path` so far.
pub fn count_events(path: &Path, event: &str) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.matches(&format!("\"event\":\"{event}\"")).count()
}

/// The numbers of a client's `rtt min/avg/max/mdev = a/b/c/d ms` summary line, checked for
/// consistency: 0 < min ≤ avg ≤ max and mdev ≥ 0.
pub fn ping_rtt(stdout: &str) -> [f64; 4] {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
        .unwrap_or_else(|| panic!("no rtt summary line: {stdout}"));
    let values: Vec<f64> = line
        .strip_suffix(" ms")
        .unwrap_or_else(|| panic!("rtt line without unit: {line:?}"))
        .split('/')
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{v:?} in {line:?}: {e}"))
        })
        .collect();
    let [min, avg, max, mdev] = values[..] else {
        panic!("four numbers expected: {line:?}");
    };
    assert!(
        0.0 < min && min <= avg && avg <= max && mdev >= 0.0,
        "{line:?}"
    );
    [min, avg, max, mdev]
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}
