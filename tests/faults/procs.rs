//! The programs a scenario runs inside the namespaces: `sensorlink server` (server side),
//! `sensorlink client --json` (client side), and irtt. Each is started with
//! `ip netns exec NS …` (which execs, so the child's PID is the program's own), killed by
//! that PID on drop, and every wait is bounded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::NetnsPair;

/// The server's port inside its namespace (the default sensor port).
pub const SERVER_PORT: u16 = 8889;

/// Generous bound for a start-up: a liveness guard, not a measurement.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_sensorlink")
}

/// CPU time a real-time thread may use without blocking, µs: soft (SIGXCPU) and hard
/// (SIGKILL) `RLIMIT_RTTIME`. The programs under test and the relay sleep between
/// readings and packets, using well under a millisecond at a time; a spin bug at real-time
/// priority would otherwise hold a core above every normal task (the test's own deadline
/// checks included) until the run's bound. The kernel ends it within half a second instead.
const RT_TIME_LIMIT_US: (u64, u64) = (200_000, 500_000);

/// Sets [`RT_TIME_LIMIT_US`] for this process; inherited across fork and exec (`ip netns
/// exec`, `chrt`, the program). Only calls setrlimit: safe in `pre_exec`.
pub fn limit_rt_time() -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: RT_TIME_LIMIT_US.0 as libc::rlim_t,
        rlim_max: RT_TIME_LIMIT_US.1 as libc::rlim_t,
    };
    // SAFETY: setrlimit reads one struct on our stack.
    if unsafe { libc::setrlimit(libc::RLIMIT_RTTIME, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A child killed (SIGKILL, by its own PID) and reaped on drop.
pub struct Proc {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Starts `cmd` with stdout piped (handed back) and stderr collected.
    pub fn spawn(mut cmd: Command) -> (Proc, std::process::ChildStdout) {
        // SAFETY: prctl and setrlimit are async-signal-safe; prctl only sets this child's
        // parent-death signal, so a test process killed before its Drops ran takes its
        // children along (the flag survives the exec of `ip netns exec` and of the program
        // it runs), and the real-time CPU bound is the child's own.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                limit_rt_time()
            });
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {cmd:?}: {err}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut all = sink.lock().expect("stderr lock");
                all.push_str(&line);
                all.push('\n');
            }
        });
        (
            Proc {
                child: Some(child),
                stderr,
            },
            stdout,
        )
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// For a failure message: whether the child is still running, or how it ended (a
    /// signal such as SIGXCPU says the real-time CPU bound, [`RT_TIME_LIMIT_US`], hit it).
    pub fn state(&mut self) -> String {
        match self.child.as_mut().map(Child::try_wait) {
            None => "reaped".into(),
            Some(Ok(None)) => "still running".into(),
            Some(Ok(Some(status))) => format!("it ended: {status}"),
            Some(Err(err)) => format!("try_wait: {err}"),
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of our own child, not reaped yet.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits up to `timeout` for the exit; SIGKILLs and panics after it.
    pub fn wait(&mut self, timeout: Duration, what: &str) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "{what} did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `sensorlink server` in the server namespace, listening on the link's server address.
pub struct Server {
    pub proc: Proc,
    pub addr: String,
    /// `http://127.0.0.1:PORT` in the server's namespace.
    pub http: String,
    pub store: Store,
}

/// A SQLite store in a temporary directory, readable from the test's own namespace (it is
/// a file, not a socket).
pub struct Store {
    pub dir: tempfile::TempDir,
}

impl Store {
    pub fn new() -> Store {
        Store {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    pub fn url(&self) -> String {
        format!("sqlite:{}", self.dir.path().join("readings.db").display())
    }

    /// How often each value of `sensor`'s `reading` measurement is stored.
    pub fn values(&self, sensor: &str) -> BTreeMap<i64, usize> {
        let out = Command::new(bin())
            .args(["query", "--store", &self.url(), "--format", "json"])
            .args(["--sensor", sensor, "--measurement", "reading"])
            .stdin(Stdio::null())
            .output()
            .expect("run sensorlink query");
        assert!(
            out.status.success(),
            "query: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Value = serde_json::from_slice(&out.stdout).expect("query prints JSON");
        let mut values = BTreeMap::new();
        for row in rows.as_array().expect("a JSON array") {
            let value = row["fields"]["value"]
                .as_i64()
                .unwrap_or_else(|| panic!("an integer value: {row}"));
            *values.entry(value).or_insert(0) += 1;
        }
        values
    }
}

impl Server {
    /// Starts on `<server ip>:8889` with a fresh SQLite store (`--fsync os`: the scenarios
    /// measure the link, not the disk) and `extra` flags; its HTTP side stays on the
    /// namespace's loopback.
    pub fn start(net: &NetnsPair, extra: &[&str]) -> Server {
        let store = Store::new();
        let mut cmd = net.command(&net.server, bin());
        // A fixed port, unlike the loopback tests: nothing else lives in this namespace, so
        // it cannot collide, and the relay's draws per flow (keyed by the server's port)
        // then repeat from run to run.
        let listen = format!("{}:{SERVER_PORT}", net.server_ip());
        cmd.args(["server", "--listen", &listen, "--http", "127.0.0.1:0"])
            .args(["--store", &store.url(), "--fsync", "os"])
            .args(extra)
            .env("RUST_LOG", "sensorlink=info");
        let (proc, stdout) = Proc::spawn(cmd);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // `http on http://ADDR/` comes first, `listening on ADDR` last.
            let mut http = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("http on ") {
                    http = url.trim_end_matches('/').to_string();
                }
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((addr.to_string(), http.clone()));
                }
            }
        });
        let Ok((addr, http)) = rx.recv_timeout(PATIENCE) else {
            let mut proc = proc;
            panic!(
                "server did not say `listening on` within {PATIENCE:?} ({}); stderr:\n{}",
                proc.state(),
                proc.stderr()
            )
        };
        Server {
            proc,
            addr,
            http,
            store,
        }
    }

    /// The server's view of `sensor` (its entry in `/api/sensors`), read over HTTP from
    /// inside the server's namespace, where its HTTP side listens on loopback.
    pub fn sensor(&self, net: &NetnsPair, sensor: &str) -> Value {
        let url = format!("{}/api/sensors", self.http);
        let ns = net.open(&net.server).expect("the server's namespace");
        let body = std::thread::spawn(move || {
            crate::netns::enter(&ns).expect("enter the server's namespace");
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(PATIENCE))
                .build()
                .into();
            agent
                .get(&url)
                .call()
                .and_then(|mut response| response.body_mut().read_to_string())
                .unwrap_or_else(|err| panic!("GET {url}: {err}"))
        })
        .join()
        .expect("the HTTP thread");
        let sensors: Value = serde_json::from_str(&body).expect("/api/sensors is JSON");
        sensors["sensors"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["sensor"] == sensor))
            .cloned()
            .unwrap_or_else(|| panic!("no sensor {sensor:?} in {body}"))
    }

    /// SIGTERM and wait: everything acked is committed when it exits.
    pub fn stop(&mut self) {
        self.proc.signal(libc::SIGTERM);
        self.proc.wait(PATIENCE, "server");
    }
}

/// A running `sensorlink client --json`, its events collected as they arrive.
pub struct Client {
    pub proc: Proc,
    events: Arc<Mutex<Vec<Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// What a finished client printed.
pub struct ClientRun {
    pub events: Vec<Value>,
    pub summary: Value,
    pub exit: std::process::ExitStatus,
    pub stderr: String,
}

impl Client {
    /// Starts `sensorlink client ADDR --json --sensor SENSOR args…` in the client namespace.
    pub fn start(net: &NetnsPair, addr: &str, sensor: &str, args: &[&str]) -> Client {
        let mut cmd = net.command(&net.client, bin());
        cmd.args(["client", addr, "--json", "--sensor", sensor])
            .args(args)
            .env("RUST_LOG", "sensorlink=warn");
        let (proc, stdout) = Proc::spawn(cmd);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "not_json", "line": line}));
                sink.lock().expect("events lock").push(event);
            }
        });
        Client {
            proc,
            events,
            reader: Some(reader),
        }
    }

    /// How many events of kind `event` so far.
    pub fn count(&self, event: &str) -> usize {
        let events = self.events.lock().expect("events lock");
        events.iter().filter(|e| e["event"] == event).count()
    }

    /// Waits (bounded) until `n` events of kind `event` have arrived.
    pub fn wait_for(&self, event: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(event) < n {
            assert!(
                Instant::now() < deadline,
                "client never printed {n} {event:?} events in {timeout:?}; stderr:\n{}",
                self.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded by `timeout`) for the exit and the end of its output.
    pub fn finish(mut self, timeout: Duration) -> ClientRun {
        let exit = self.proc.wait(timeout, "client");
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let events = std::mem::take(&mut *self.events.lock().expect("events lock"));
        let stderr = self.proc.stderr();
        let summary = events
            .iter()
            .find(|e| e["event"] == "summary")
            .map(|e| e["summary"].clone())
            .unwrap_or_else(|| panic!("no summary event ({exit}); stderr:\n{stderr}"));
        ClientRun {
            events,
            summary,
            exit,
            stderr,
        }
    }
}

impl ClientRun {
    /// `summary.rtt.<key>` in milliseconds (the summary gives µs).
    pub fn rtt_ms(&self, key: &str) -> f64 {
        self.summary["rtt"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("summary.rtt.{key}: {}", self.summary))
            / 1e3
    }

    /// An integer of the summary.
    pub fn count(&self, key: &str) -> u64 {
        self.summary[key]
            .as_u64()
            .unwrap_or_else(|| panic!("summary.{key}: {}", self.summary))
    }

    /// `summary.tcp.<key>`: the kernel's figures for the run's connections (`TCP_INFO`);
    /// panics when the client reports none.
    pub fn tcp(&self, key: &str) -> f64 {
        self.summary["tcp"][key]
            .as_f64()
            .unwrap_or_else(|| panic!("summary.tcp.{key}: {}", self.summary))
    }

    /// `summary.disconnects.<kind>`.
    pub fn disconnects(&self, kind: &str) -> u64 {
        self.summary["disconnects"][kind]
            .as_u64()
            .unwrap_or_else(|| panic!("summary.disconnects.{kind}: {}", self.summary))
    }

    /// The `kind`s of the `disconnected` events, each once.
    pub fn disconnect_kinds(&self) -> std::collections::BTreeSet<String> {
        self.events_of("disconnected")
            .iter()
            .map(|e| {
                e["kind"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a disconnected event without a kind: {e}"))
                    .to_string()
            })
            .collect()
    }

    /// Asserts the client exited 0 (every reading delivered), showing its log if not.
    pub fn assert_success(&self) {
        assert!(
            self.exit.success(),
            "client exited {}; summary {}; stderr:\n{}",
            self.exit,
            self.summary,
            self.stderr
        );
    }

    /// The events of kind `event`.
    pub fn events_of(&self, event: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == event).collect()
    }
}

/// Runs a client to its end; it must exit 0 (nothing lost).
pub fn run_client(
    net: &NetnsPair,
    addr: &str,
    sensor: &str,
    args: &[&str],
    timeout: Duration,
) -> ClientRun {
    let run = Client::start(net, addr, sensor, args).finish(timeout);
    run.assert_success();
    run
}
