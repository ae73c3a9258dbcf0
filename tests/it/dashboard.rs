//! The dashboard in a real browser: Debian's headless Chromium, driven by playwright-core
//! (`tests/browser/dashboard.mjs`), against the real server and real clients. The Rust side
//! owns every process; the driver asks over stdin/stdout when it needs one stopped.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::harness::{bin, poll_until, KillOnDrop, LinePeer, Server, PATIENCE};

/// The browser binary the driver launches (Debian's package; see test.sh).
const CHROMIUM: &str = "/usr/bin/chromium";

/// Both browser tests start Chromium (and one of them 1,000 connections): one at a time, so
/// that a 2-core machine running the rest of the suite beside them stays responsive.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Liveness bound of one driver run (its own waits are 30 s each): never a timing assertion.
const DRIVER_PATIENCE: Duration = Duration::from_secs(180);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `target/browser/`: the screenshots (the driver also saves `failure-*.png` there).
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is target/tmp, inside the target directory")
        .join("browser")
}

/// Removes `names` from `target/browser/`, so that the check that they were saved cannot
/// pass on an earlier run's files.
fn forget_screenshots(names: &[&str]) {
    for name in names {
        let _ = std::fs::remove_file(screenshot_dir().join(name));
    }
}

/// The oldest Node the driver runs on (playwright-core's `engines`; tests/browser/.npmrc
/// makes npm refuse an older one too).
const NODE_MAJOR_MIN: u32 = 20;

/// Fails (never skips) when node (≥ 20), Chromium or the driver's node_modules are missing,
/// with the command that installs them.
fn require_browser() {
    let fix = "`bash test.sh` installs them (Debian's chromium, nodejs + npm when node is \
               missing, then `npm ci --prefix tests/browser`)";
    let node = Command::new("node").arg("--version").output();
    let version = match &node {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => panic!("the browser tests need node ≥ {NODE_MAJOR_MIN} ({node:?}); {fix}"),
    };
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    assert!(
        major.is_some_and(|m| m >= NODE_MAJOR_MIN),
        "the browser tests need node ≥ {NODE_MAJOR_MIN}, found {version:?}: install Node \
         {NODE_MAJOR_MIN} or later (NodeSource's nodejs package, or nvm) and rerun test.sh"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "the browser tests need {CHROMIUM}; {fix}"
    );
    let driver = browser_dir().join("node_modules/playwright-core/package.json");
    assert!(
        driver.exists(),
        "the browser tests need {}; {fix}",
        driver.display()
    );
}

/// A running `node tests/browser/dashboard.mjs …`: its stdout lines arrive on a channel,
/// its stderr (the driver's progress log) is collected for failure messages.
struct Driver {
    child: KillOnDrop,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Signalled when the log reader reached the pipe's end (the whole log is in).
    stderr_done: Receiver<()>,
    deadline: Instant,
}

impl Driver {
    fn start(args: &[&str]) -> Driver {
        let out = screenshot_dir();
        std::fs::create_dir_all(&out).expect("create target/browser");
        let mut child = Command::new("node")
            .arg(browser_dir().join("dashboard.mjs"))
            .args(args)
            .arg("--out")
            .arg(&out)
            .env("SENSORLINK_CHROMIUM", CHROMIUM)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn node tests/browser/dashboard.mjs");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (done, stderr_done) = std::sync::mpsc::channel();
        {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                    let mut all = stderr.lock().unwrap_or_else(PoisonError::into_inner);
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = done.send(());
            });
        }
        Driver {
            child: KillOnDrop(child),
            stdin,
            lines,
            stderr,
            stderr_done,
            deadline: Instant::now() + DRIVER_PATIENCE,
        }
    }

    fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The driver's next stdout line; `None` once it closed stdout (it is exiting).
    fn next_line(&mut self) -> Option<String> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => {
                self.child.kill();
                panic!(
                    "the browser driver did not finish within {DRIVER_PATIENCE:?}; its log:\n{}",
                    self.log()
                );
            }
        }
    }

    fn answer(&mut self, line: &str) {
        if let Err(err) = writeln!(self.stdin, "{line}") {
            panic!(
                "cannot answer the driver ({line:?}): {err}; its log:\n{}",
                self.log()
            );
        }
    }

    /// Wait for the exit; the status and the driver's log.
    fn finish(mut self) -> (ExitStatus, String) {
        let mut status = None;
        let exited = poll_until(PATIENCE, || {
            status = self.child.0.try_wait().expect("try_wait on the driver");
            status.is_some()
        });
        if !exited {
            self.child.kill();
            panic!("the browser driver did not exit; its log:\n{}", self.log());
        }
        // The log reader ends at the pipe's EOF, a moment after the exit (bounded: should
        // something the driver started hold the pipe open, the log so far will do).
        let _ = self.stderr_done.recv_timeout(PATIENCE);
        let status = status.expect("poll_until returned true only once try_wait gave a status");
        (status, self.log())
    }
}

/// A real client sending a random walk as `sensor` every 200 ms, with a link report every
/// second (so the table has RTT and loss to show).
fn start_client(server: &Server, sensor: &str) -> KillOnDrop {
    let child = bin()
        .args(["client", &server.addr.to_string(), "--sensor", sensor])
        .args(["--measurement", "temperature", "--source", "random"])
        .args(["--interval", "200ms", "--link-report", "1s", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sensorlink client");
    KillOnDrop(child)
}

/// `total` of `/api/sensors` (with the given query), once the server answers it.
fn sensors_total(server: &Server, query: &str) -> Option<u64> {
    let resp = server.get(&format!("/api/sensors?{query}"));
    if resp.status != 200 {
        return None;
    }
    resp.json()["total"].as_u64()
}

#[test]
fn dashboard_shows_two_live_clients_in_a_real_browser() {
    require_browser();
    let _one = ONE_BROWSER.lock().unwrap_or_else(PoisonError::into_inner);
    let server = Server::start(&[]);
    let (a, b) = ("dash-alpha", "dash-beta");
    let _client_a = start_client(&server, a);
    let mut client_b = start_client(&server, b);
    assert!(
        poll_until(PATIENCE, || sensors_total(&server, "q=dash-") == Some(2)),
        "both clients' sensors in /api/sensors; server log:\n{}",
        server.stderr()
    );

    // One rejected line, for the server strip's "recent rejections" (after a ping: a peer
    // that has not shown it reads replies gets its errors held).
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"ping\n");
    assert_eq!(peer.line(), "pong");
    peer.send(b"weather,sensor=dash-bad temp=warm 1\n");
    let reply = peer.line();
    assert!(
        reply.starts_with("error"),
        "a bad line is refused: {reply:?}"
    );
    drop(peer);
    // The reason is the documented one (checked here, not taken from the server), and the
    // driver must find that same text in the page's strip.
    let reason = "invalid_reading";
    assert!(
        poll_until(PATIENCE, || {
            server.get("/api/server").json()["recent_rejections"][0]["reason"] == reason
        }),
        "the rejection ({reason}) in /api/server: {}",
        server.get("/api/server").body
    );

    let shots = [
        "dashboard.png",
        "dashboard-sensor.png",
        "dashboard-stopped.png",
    ];
    forget_screenshots(&shots);
    let sensors = format!("{a},{b}");
    let url = server.http_url("/");
    let args = ["live", &url, "--sensors", &sensors, "--rejection", reason];
    let mut driver = Driver::start(&args);
    let (mut ok, mut stopped) = (false, false);
    while let Some(line) = driver.next_line() {
        if line == format!("STOP {b}") && !stopped {
            client_b.kill();
            stopped = true;
            driver.answer("STOPPED");
        } else if line == "OK" {
            ok = true;
        } else {
            panic!(
                "unexpected line from the driver: {line:?}; its log:\n{}",
                driver.log()
            );
        }
    }
    let (status, log) = driver.finish();
    assert!(
        status.success() && ok && stopped,
        "browser checks failed ({status}, OK printed: {ok}, client stopped: {stopped}); \
         screenshots in {}; driver log:\n{log}\nserver log:\n{}",
        screenshot_dir().display(),
        server.stderr()
    );
    for shot in shots {
        assert!(screenshot_dir().join(shot).exists(), "{shot} was saved");
    }
}

#[test]
fn dashboard_pages_a_thousand_sensors() {
    require_browser();
    let _one = ONE_BROWSER.lock().unwrap_or_else(PoisonError::into_inner);
    const SENSORS: usize = 1000;
    // A thousand connections from one address: above the default per-address share.
    let server = Server::start(&["--max-connections-per-ip", &SENSORS.to_string()]);
    let bench = bin()
        .args([
            "bench",
            &server.addr.to_string(),
            "--idle",
            "--interval",
            "1s",
        ])
        .args(["--connections", &SENSORS.to_string(), "--duration", "10m"])
        .args(["--no-progress", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sensorlink bench");
    let _bench = KillOnDrop(bench);
    assert!(
        poll_until(PATIENCE * 3, || sensors_total(&server, "limit=1")
            == Some(SENSORS as u64)),
        "{SENSORS} sensors in /api/sensors (bench-0 … bench-{}); server log:\n{}",
        SENSORS - 1,
        server.stderr()
    );

    // The API pages them: pages of 100 are sorted, disjoint and together complete.
    let mut names = Vec::new();
    for offset in (0..SENSORS).step_by(100) {
        let page = server
            .get(&format!("/api/sensors?limit=100&offset={offset}"))
            .json();
        assert_eq!(page["total"], SENSORS, "total at offset {offset}");
        assert_eq!(page["offset"], offset);
        let sensors = page["sensors"].as_array().expect("a sensors array");
        assert_eq!(sensors.len(), 100, "a full page at offset {offset}");
        names.extend(
            sensors
                .iter()
                .map(|s| s["sensor"].as_str().expect("a sensor name").to_string()),
        );
    }
    let past_end = server
        .get(&format!("/api/sensors?limit=100&offset={SENSORS}"))
        .json();
    assert_eq!(
        past_end["sensors"],
        serde_json::json!([]),
        "nothing past the end"
    );
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "pages come sorted by name");
    let distinct: BTreeSet<String> = names.into_iter().collect();
    let expected: BTreeSet<String> = (0..SENSORS).map(|i| format!("bench-{i}")).collect();
    assert_eq!(
        distinct, expected,
        "the pages hold every sensor exactly once"
    );

    // The dashboard renders the first page of them; its first paint is reported, not asserted.
    forget_screenshots(&["dashboard-1000.png"]);
    let total = SENSORS.to_string();
    let mut driver = Driver::start(&["many", &server.http_url("/"), "--total", &total]);
    let mut ok = false;
    let mut paint = None;
    while let Some(line) = driver.next_line() {
        if let Some(figures) = line.strip_prefix("PAINT ") {
            paint = Some(figures.to_string());
        } else if line == "OK" {
            ok = true;
        } else {
            panic!(
                "unexpected line from the driver: {line:?}; its log:\n{}",
                driver.log()
            );
        }
    }
    let (status, log) = driver.finish();
    assert!(
        status.success() && ok,
        "browser checks failed ({status}); screenshots in {}; driver log:\n{log}\nserver log:\n{}",
        screenshot_dir().display(),
        server.stderr()
    );
    let paint = paint.expect("the driver printed its PAINT figures");
    let report = format!(
        "dashboard with {SENSORS} sensors: {paint} (first contentful paint, first table rows; \
         ms after navigation start)"
    );
    // Straight to the process's stderr, past the test harness's output capture: the figure
    // is reported in every run's log, not only when the test fails.
    let _ = writeln!(std::io::stderr(), "{report}");
    std::fs::write(screenshot_dir().join("first-paint.txt"), report + "\n")
        .expect("write target/browser/first-paint.txt");
    assert!(screenshot_dir().join("dashboard-1000.png").exists());
}

/// The dashboard of a server that asks for tokens: login form, refused tokens, the read
/// token, a reload, log out, and the move of an old localStorage token into the session.
#[test]
fn dashboard_login_in_a_real_browser() {
    require_browser();
    let _one = ONE_BROWSER.lock().unwrap_or_else(PoisonError::into_inner);
    let tokens = crate::http_auth::Tokens::new();
    let server = Server::start(&["--http-auth", "token", "--auth", tokens.file()]);
    let sensor = "kitchen-login";
    // The client authenticates through the environment (the sensor port may ask too).
    let client = bin()
        .args(["client", &server.addr.to_string(), "--sensor", sensor])
        .args(["--measurement", "temperature", "--source", "random"])
        .args(["--interval", "200ms", "-q"])
        .env("SENSORLINK_TOKEN", &tokens.write_only)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sensorlink client");
    let _client = KillOnDrop(client);
    let read = format!("Bearer {}", tokens.read);
    assert!(
        poll_until(PATIENCE, || {
            let (resp, _) = crate::http_auth::get_with(
                &server.http_url(&format!("/api/sensors/{sensor}")),
                Some(&read),
            );
            resp.status == 200
        }),
        "{sensor} in /api/sensors; server log:\n{}",
        server.stderr()
    );

    let shots = ["dashboard-login.png", "dashboard-login-error.png"];
    forget_screenshots(&shots);
    let url = server.http_url("/");
    let args = [
        "login",
        &url,
        "--token",
        &tokens.read,
        "--write-token",
        &tokens.write_only,
        "--sensor",
        sensor,
    ];
    let mut driver = Driver::start(&args);
    let mut ok = false;
    while let Some(line) = driver.next_line() {
        if line == "OK" {
            ok = true;
        } else {
            panic!(
                "unexpected line from the driver: {line:?}; its log:\n{}",
                driver.log()
            );
        }
    }
    let (status, log) = driver.finish();
    assert!(
        status.success() && ok,
        "browser checks failed ({status}); screenshots in {}; driver log:\n{log}\nserver log:\n{}",
        screenshot_dir().display(),
        server.stderr()
    );
    for shot in shots {
        assert!(screenshot_dir().join(shot).exists(), "{shot} was saved");
    }
    // The server's log never holds a token.
    let log = server.stderr();
    assert!(
        !log.contains(&tokens.read) && !log.contains(&tokens.write_only),
        "{log}"
    );
}
