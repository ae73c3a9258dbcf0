//! HAProxy in TCP mode in front of several collectors, for tests: its config rendered into a
//! temp dir, checked with `haproxy -c` first (so a config error comes with HAProxy's
//! message), then run as a child (`-db`: foreground) that dies with the test process, and is
//! killed on Drop.
//!
//! The config mirrors `deploy/haproxy.cfg` (`mode tcp`, a `GET /readyz` check per server
//! against the collector's HTTP port, `fall 2 rise 2`, `on-marked-down shutdown-sessions`,
//! `retries 3` + `option redispatch 1`, the `timeout client/server/tunnel/client-fin/
//! server-fin/check` set, PROXY v2 optional), differing only where a test needs it:
//! - frontend on 127.0.0.1:<free port> and the test's backends, no `user`/`group`/`chroot`
//!   (tests do not run as root), no log lines (nothing reads them);
//! - `balance` chosen by the test (round robin spreads a few clients predictably; the
//!   recipe's `leastconn` is available);
//! - `inter 500ms` instead of 1s, so a killed collector is out sooner and runs are shorter;
//! - `maxconn 4096`: the recipe lets HAProxy size itself from the fd limit, which on a test
//!   machine can be huge (memory), and tests need few connections.
//!
//! Tests that must prove the recipe itself render `deploy/haproxy.cfg` (tests/it/scale.rs).
//!
//! Include it beside `pg_cluster.rs` (it shares its spawner and its skip/require rule:
//! `SENSORLINK_REQUIRE_PG=1` makes a missing HAProxy fail instead of skip):
//! `#[path = "../support/haproxy.rs"] mod haproxy;` next to `mod pg_cluster;`.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::pg_cluster::{free_port, remove_stale, skip, spawn_tied_to_process};

/// Debian's path; `haproxy` is also looked up on PATH.
const DEBIAN_BIN: &str = "/usr/sbin/haproxy";
/// Bound on HAProxy accepting on its frontend after the spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The free port may be taken before HAProxy binds it.
const PORT_ATTEMPTS: usize = 5;
/// Temp dirs are `sl-haproxy-<pid>-<n>-<random>` (stale ones removed at the next start).
const DIR_PREFIX: &str = "sl-haproxy-";

/// How HAProxy spreads new connections over the servers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
}

/// What [`Haproxy::start`] renders besides the servers.
#[derive(Clone, Debug, Default)]
pub struct HaproxyOpts {
    /// Per backend (same order, same host), the HTTP port whose `/readyz` decides whether it
    /// gets new connections. Empty: no health checks.
    pub readyz_ports: Vec<u16>,
    pub balance: Balance,
    /// `send-proxy-v2` on every server (the collectors then need `--proxy-protocol v2`).
    pub send_proxy_v2: bool,
}

/// A running HAProxy, killed (by its PID) on Drop.
pub struct Haproxy {
    addr: SocketAddr,
    child: Child,
    cfg: PathBuf,
    log: PathBuf,
    /// The rendered config and the log; removed on Drop.
    dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy in front of `backends`; `None` (after saying why) where HAProxy cannot
    /// run here.
    ///
    /// # Panics
    /// Where it cannot run and `SENSORLINK_REQUIRE_PG=1`; on a bad `opts` (a test bug).
    pub fn start(backends: &[SocketAddr], opts: &HaproxyOpts) -> Option<Haproxy> {
        assert!(
            opts.readyz_ports.is_empty() || opts.readyz_ports.len() == backends.len(),
            "one readyz port per backend, or none"
        );
        match Haproxy::try_start(backends, opts) {
            Ok(haproxy) => Some(haproxy),
            Err(reason) => skip("HAProxy", &reason),
        }
    }

    fn try_start(backends: &[SocketAddr], opts: &HaproxyOpts) -> Result<Haproxy, String> {
        let bin = bin()?;
        let base = std::env::temp_dir();
        remove_stale(&base, DIR_PREFIX);
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-{n}-", std::process::id()))
            .tempdir_in(&base)
            .map_err(|err| format!("create a temp dir in {}: {err}", base.display()))?;
        let cfg = dir.path().join("haproxy.cfg");
        let log = dir.path().join("haproxy.log");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            fs::write(&cfg, render(addr, backends, opts))
                .map_err(|err| format!("write {}: {err}", cfg.display()))?;
            check(&bin, &cfg)?;
            let mut child = launch(&bin, &cfg, &log)?;
            match wait_ready(&mut child, addr, &log) {
                Ok(()) => {
                    return Ok(Haproxy {
                        addr,
                        child,
                        cfg,
                        log,
                        dir,
                    })
                }
                // Someone took the port between our probe and HAProxy's bind.
                Err(reason) if reason.contains("cannot bind") && attempt < PORT_ATTEMPTS => {
                    stop(&mut child);
                }
                Err(reason) => {
                    stop(&mut child);
                    return Err(reason);
                }
            }
        }
    }

    /// The frontend: where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HAProxy's PID (e.g. to check it is gone).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The rendered config (for a failing test's message).
    pub fn config(&self) -> String {
        fs::read_to_string(&self.cfg).unwrap_or_default()
    }

    /// HAProxy's output so far (alerts, warnings).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Kills our child by its PID and reaps it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until HAProxy accepts on `addr`; its log in the error.
fn wait_ready(child: &mut Child, addr: SocketAddr, log: &Path) -> Result<(), String> {
    let log_text = || {
        fs::read_to_string(log)
            .unwrap_or_default()
            .trim_end()
            .to_owned()
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "haproxy exited ({status}) before accepting on {addr}: {}",
                log_text()
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "haproxy not accepting on {addr} within {READY_TIMEOUT:?}: {}",
                log_text()
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// `haproxy -c`: a config error is reported with HAProxy's own message.
fn check(bin: &Path, cfg: &Path) -> Result<(), String> {
    let out = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("run {} -c: {err}", bin.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "haproxy -c -f {} ({}): {}{}\nconfig:\n{}",
        cfg.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end(),
        fs::read_to_string(cfg).unwrap_or_default()
    ))
}

/// `haproxy -f cfg -db` (foreground), output to `log`, SIGKILLed if the test process dies.
fn launch(bin: &Path, cfg: &Path, log: &Path) -> Result<Child, String> {
    let out = fs::File::create(log).map_err(|err| format!("create {}: {err}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|err| format!("dup the log fd: {err}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("-f")
        .arg(cfg)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    spawn_tied_to_process(cmd, libc::SIGKILL).map_err(|err| format!("spawn haproxy: {err}"))
}

/// The config: the recipe of `deploy/haproxy.cfg`, with test addresses and short timers.
fn render(frontend: SocketAddr, backends: &[SocketAddr], opts: &HaproxyOpts) -> String {
    let balance = match opts.balance {
        Balance::RoundRobin => "roundrobin",
        Balance::LeastConn => "leastconn",
    };
    let mut cfg = format!(
        "global
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    # Sensor connections are long-lived and may be idle between readings.
    timeout client 6m
    timeout server 6m
    timeout tunnel 6m
    timeout client-fin 30s
    timeout server-fin 30s
    timeout check 2s
    retries 3
    option redispatch 1

frontend sensors
    bind {frontend}
    default_backend collectors

backend collectors
    balance {balance}
"
    );
    let checks = !opts.readyz_ports.is_empty();
    if checks {
        cfg.push_str("    option httpchk GET /readyz\n    http-check expect status 200\n");
    }
    for (i, addr) in backends.iter().enumerate() {
        let _ = write!(cfg, "    server c{i} {addr}");
        if checks {
            let _ = write!(
                cfg,
                " check port {} inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions",
                opts.readyz_ports[i]
            );
        }
        if opts.send_proxy_v2 {
            cfg.push_str(" send-proxy-v2");
        }
        cfg.push('\n');
    }
    cfg
}

/// Debian's `/usr/sbin/haproxy`, else `haproxy` on PATH.
fn bin() -> Result<PathBuf, String> {
    if Path::new(DEBIAN_BIN).is_file() {
        return Ok(PathBuf::from(DEBIAN_BIN));
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("haproxy"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| "no haproxy binary (install the `haproxy` package)".to_string())
}
