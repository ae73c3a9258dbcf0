//! A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, then the `postgres`
//! binary as a child listening on 127.0.0.1:<free port> only (its unix socket inside the temp
//! dir), trust auth for the superuser `sensorlink`, fsync on (the default: the issue measures
//! durable ingest). No mock and no pre-existing server; std + `tempfile` only, so both the lib's
//! unit tests and the integration tests include this file by path.
//!
//! `initdb` and `postgres` refuse to run as root, and CI runs as root: there they run as the
//! Debian `postgres` user (uid/gid switch in the child), in a temp dir chowned to it. Started
//! by a normal user they run as that user.
//!
//! A cluster never outlives the test process: every postmaster is spawned by one thread that
//! never exits, with a parent-death signal (SIGQUIT: immediate shutdown) set after the uid
//! switch, so it fires when the process ends, however it ends. Drop stops a cluster at once and
//! removes its dir; the shared cluster has no Drop, and what a killed test process left behind
//! (`sl-pg-<pid>-…` dirs whose `<pid>` is gone) is removed at the next start.
//!
//! Where PostgreSQL cannot run (binaries missing, …) [`shared`] and [`own`] print why and return
//! `None`, unless `SENSORLINK_REQUIRE_PG=1` (set by `.ci/run`): then they panic.

#![allow(dead_code)]

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Set (to 1) where PostgreSQL (and HAProxy) must run: a machine that cannot then fails.
pub const REQUIRE_ENV: &str = "SENSORLINK_REQUIRE_PG";

/// Overrides where `initdb`, `postgres`, `psql` and `pg_isready` are looked for.
pub const BIN_ENV: &str = "SENSORLINK_PG_BIN";

/// The superuser `initdb` creates; trust auth, so URLs carry no password.
pub const USER: &str = "sensorlink";

/// Bound on the postmaster becoming ready (and on a stop): a liveness guard for a shared,
/// busy 2-core machine, not a benchmark.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Between polls of a bounded wait.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The free port found by binding port 0 may be taken again before the postmaster binds it.
const PORT_ATTEMPTS: usize = 5;
/// Temp dirs are `sl-pg-<pid>-<n>-<random>`: the pid says whose they are (stale cleanup).
const DIR_PREFIX: &str = "sl-pg-";
/// Lines of the server log quoted in errors.
const LOG_TAIL_LINES: usize = 25;

/// A running throwaway cluster. See the module header.
pub struct PgCluster {
    port: u16,
    /// `initdb`, `postgres`, `psql`, `pg_isready`.
    bin: PathBuf,
    /// The postmaster's data directory, `<dir>/data`.
    data: PathBuf,
    /// The server's stdout + stderr (appended over restarts); its tail goes into errors.
    log: PathBuf,
    /// uid/gid the server runs as when we are root (the `postgres` user); `None`: as we are.
    run_as: Option<(u32, u32)>,
    /// The running postmaster, `None` between [`PgCluster::stop`] and
    /// [`PgCluster::start_again`].
    postmaster: Mutex<Option<Child>>,
    /// Socket dir, log and data: removed when dropped, after Drop stopped the server.
    dir: tempfile::TempDir,
}

impl PgCluster {
    /// initdb (trust auth for user `sensorlink`, superuser) + postgres listening on
    /// 127.0.0.1:<free port> only (unix socket inside the temp dir), fsync on (the default).
    /// As root: runs initdb/postgres as the Debian `postgres` user.
    ///
    /// # Errors
    /// The reason, when the binaries (`/usr/lib/postgresql/<newest>/bin`) are missing, or
    /// initdb or the server fails (with the server log's tail).
    pub fn start() -> Result<PgCluster, String> {
        let bin = bin_dir()?;
        let run_as = if unsafe_geteuid() == 0 {
            Some(lookup_user("postgres").map_err(|err| {
                format!("running as root, and PostgreSQL cannot run as root: {err}")
            })?)
        } else {
            None
        };
        let base = base_dir(run_as.is_some());
        remove_stale(&base, DIR_PREFIX);
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-{n}-", std::process::id()))
            .tempdir_in(&base)
            .map_err(|err| format!("create a temp dir in {}: {err}", base.display()))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|err| format!("chown {} to postgres: {err}", dir.path().display()))?;
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let mut cluster = PgCluster {
            port: 0,
            bin,
            data,
            log,
            run_as,
            postmaster: Mutex::new(None),
            dir,
        };
        cluster.initdb()?;
        for attempt in 1..=PORT_ATTEMPTS {
            cluster.port = free_port()?;
            match cluster.launch() {
                Ok(()) => return Ok(cluster),
                Err(Launch::AddrInUse(_)) if attempt < PORT_ATTEMPTS => continue,
                Err(Launch::AddrInUse(reason) | Launch::Failed(reason)) => return Err(reason),
            }
        }
        unreachable!("the last attempt returns")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://sensorlink@127.0.0.1:PORT/DB`
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The temp dir holding the data dir, socket and log (gone after Drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The postmaster's PID, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child().as_ref().map(Child::id)
    }

    /// The server log so far (stdout + stderr of every start).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `CREATE DATABASE <name>` (name: `[a-z0-9_]`, at most 63 bytes); returns its url.
    ///
    /// # Errors
    /// A bad name, or psql's message.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(format!("database name {name:?}: want 1 to 63 of [a-z0-9_]"));
        }
        // Quoted: a name may start with a digit.
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))?;
        Ok(self.url(name))
    }

    /// Turns TLS on (reload, no restart) with `cert`/`key` as the server's certificate and
    /// `client_ca` as the CA client certificates must chain to, and makes TCP connections
    /// TLS-only: database `client_cert_db` also wants a client certificate
    /// (`clientcert=verify-ca`); every other database trusts any TLS connection (the
    /// helpers' psql connects with libpq's default `prefer`, so over TLS). Waits until the
    /// server says `ssl` is on.
    ///
    /// # Errors
    /// A file that cannot be copied into the data dir, psql's message, or TLS not on in time.
    pub fn enable_tls(
        &self,
        cert: &Path,
        key: &Path,
        client_ca: &Path,
        client_cert_db: &str,
    ) -> Result<(), String> {
        // The server reads them as its own user; the key must not be readable by others.
        for (from, name) in [
            (cert, "server.crt"),
            (key, "server.key"),
            (client_ca, "client-ca.crt"),
        ] {
            let to = self.data.join(name);
            fs::copy(from, &to)
                .map_err(|err| format!("copy {} to {}: {err}", from.display(), to.display()))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600))
                .map_err(|err| format!("chmod {}: {err}", to.display()))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&to, Some(uid), Some(gid))
                    .map_err(|err| format!("chown {}: {err}", to.display()))?;
            }
        }
        let hba = self.data.join("pg_hba.conf");
        let rules = format!(
            "local all all trust\n\
             hostssl {client_cert_db} all 127.0.0.1/32 trust clientcert=verify-ca\n\
             hostssl all all 127.0.0.1/32 trust\n"
        );
        fs::write(&hba, rules).map_err(|err| format!("write {}: {err}", hba.display()))?;
        self.psql(
            "postgres",
            "ALTER SYSTEM SET ssl = on;\n\
             ALTER SYSTEM SET ssl_cert_file = 'server.crt';\n\
             ALTER SYSTEM SET ssl_key_file = 'server.key';\n\
             ALTER SYSTEM SET ssl_ca_file = 'client-ca.crt';\n\
             SELECT pg_reload_conf();",
        )?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // A new session reads the reloaded settings.
            if self.psql("postgres", "SHOW ssl")? == "on" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "ssl is not on {READY_TIMEOUT:?} after the reload{}",
                    self.log_tail()
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// A fresh database named `<prefix>_<pid>_<counter>`: its url.
    ///
    /// # Panics
    /// With the reason, when it cannot be created (a bad prefix, the server down).
    pub fn fresh_database(&self, prefix: &str) -> String {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}_{}_{n}", std::process::id());
        self.create_database(&name)
            .unwrap_or_else(|err| panic!("fresh database {name}: {err}"))
    }

    /// Runs `sql` (one or more statements, fed on stdin) with `psql -X -q -At -v
    /// ON_ERROR_STOP=1` as `sensorlink` over TCP; returns stdout without its last newline
    /// (rows one a line, columns `|`-separated, no command tags).
    ///
    /// # Errors
    /// psql's exit status and stderr (the first failing statement stops it).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let port = self.port.to_string();
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", USER, "-d", db])
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"])
            // A server that accepts but never answers must not hang the test forever.
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| format!("spawn psql: {err}"))?;
        let mut stdin = child.stdin.take().expect("stdin was piped");
        let script = sql.to_owned();
        // Written from a thread: a large script and a large result would otherwise deadlock
        // on the two pipes.
        let writer = thread::spawn(move || stdin.write_all(script.as_bytes()));
        let out = child
            .wait_with_output()
            .map_err(|err| format!("wait for psql: {err}"))?;
        let written = writer.join().expect("the stdin writer does not panic");
        if !out.status.success() {
            return Err(format!(
                "psql on {db} ({}): {}; sql: {sql}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ));
        }
        written.map_err(|err| format!("write sql to psql: {err}"))?;
        let mut stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if stdout.ends_with('\n') {
            stdout.pop();
        }
        Ok(stdout)
    }

    /// Stops the server (fast shutdown: SIGINT, as `pg_ctl stop -m fast`), keeping the data.
    ///
    /// # Errors
    /// Not running, or not stopped within the bound (it is then killed).
    pub fn stop(&self) -> Result<(), String> {
        let mut slot = self.child();
        let Some(mut child) = slot.take() else {
            return Err("stop: the server is not running".into());
        };
        signal(&child, libc::SIGINT);
        if wait_bounded(&mut child, STOP_TIMEOUT) {
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "stop: the server did not stop within {STOP_TIMEOUT:?} (killed){}",
            self.log_tail()
        ))
    }

    /// Starts the server again on the same port, same data; returns when it accepts.
    ///
    /// # Errors
    /// Already running, or it did not come up (with the log's tail).
    pub fn start_again(&self) -> Result<(), String> {
        if self.child().is_some() {
            return Err("start_again: the server is running".into());
        }
        for attempt in 1..=PORT_ATTEMPTS {
            match self.launch() {
                Ok(()) => return Ok(()),
                // Someone took our port while we were stopped: wait for them, briefly.
                Err(Launch::AddrInUse(_)) if attempt < PORT_ATTEMPTS => {
                    thread::sleep(Duration::from_millis(200));
                }
                Err(Launch::AddrInUse(reason) | Launch::Failed(reason)) => return Err(reason),
            }
        }
        unreachable!("the last attempt returns")
    }

    fn child(&self) -> MutexGuard<'_, Option<Child>> {
        // A test that panicked holding the lock leaves a usable slot.
        self.postmaster.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn as_user(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
    }

    fn initdb(&self) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C"])
            // Only initdb skips fsync (its files are synced by nobody, the test is throwaway);
            // the server keeps fsync on.
            .args(["--no-sync", "--no-instructions"])
            // The postgres user may not be able to enter the test's cwd.
            .current_dir(self.dir.path());
        self.as_user(&mut cmd);
        let out = cmd
            .output()
            .map_err(|err| format!("run {}: {err}", self.bin.join("initdb").display()))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "initdb ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            String::from_utf8_lossy(&out.stdout).trim_end()
        ))
    }

    /// Spawns the postmaster on `self.port` and waits until it accepts connections.
    fn launch(&self) -> Result<(), Launch> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|err| Launch::Failed(format!("open {}: {err}", self.log.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|err| Launch::Failed(format!("dup log fd: {err}")))?;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-k")
            .arg(self.dir.path())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=on"])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        self.as_user(&mut cmd);
        let child = spawn_tied_to_process(cmd, libc::SIGQUIT)
            .map_err(|err| Launch::Failed(format!("spawn postgres: {err}")))?;
        *self.child() = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), Launch> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            {
                let mut slot = self.child();
                // Only a concurrent stop() empties it; then there is nothing to wait for.
                let Some(child) = slot.as_mut() else {
                    return Err(Launch::Failed("stopped while starting".into()));
                };
                if let Ok(Some(status)) = child.try_wait() {
                    *slot = None;
                    drop(slot);
                    let tail = self.log_tail();
                    let reason = format!(
                        "postgres on port {} exited ({status}) before accepting{tail}",
                        self.port
                    );
                    return Err(if tail.contains("Address already in use") {
                        Launch::AddrInUse(reason)
                    } else {
                        Launch::Failed(reason)
                    });
                }
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Launch::Failed(format!(
                    "postgres on port {} not ready within {READY_TIMEOUT:?}{}",
                    self.port,
                    self.log_tail()
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn is_ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args([
                "-q",
                "-t",
                "2",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", USER, "-d", "postgres"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// `"; server log: …"` with the log's last lines, or `""` when it is empty.
    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; server log ({}):\n{tail}", self.log.display())
        }
    }
}

impl Drop for PgCluster {
    /// Immediate shutdown (SIGQUIT), bounded; then `dir` (a field) goes with the data.
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            signal(&child, libc::SIGQUIT);
            if !wait_bounded(&mut child, STOP_TIMEOUT) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// How a launch failed: a lost race for the port is worth another try.
enum Launch {
    AddrInUse(String),
    Failed(String),
}

/// One cluster per test process, started on first use; `None` (with the reason printed to
/// stderr) when PostgreSQL cannot run here.
///
/// # Panics
/// When it cannot run and `SENSORLINK_REQUIRE_PG=1`.
pub fn shared() -> Option<&'static PgCluster> {
    static SHARED: OnceLock<Result<PgCluster, String>> = OnceLock::new();
    match SHARED.get_or_init(PgCluster::start) {
        Ok(cluster) => Some(cluster),
        Err(reason) => skip("PostgreSQL", reason),
    }
}

/// A cluster of the caller's own (e.g. to stop it), with the same skip/require rule as
/// [`shared`]. It runs until dropped (or the test process ends).
///
/// # Panics
/// When it cannot run and `SENSORLINK_REQUIRE_PG=1`.
pub fn own() -> Option<PgCluster> {
    match PgCluster::start() {
        Ok(cluster) => Some(cluster),
        Err(reason) => skip("PostgreSQL", &reason),
    }
}

/// Whether `SENSORLINK_REQUIRE_PG=1`.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The skip/require rule: `None` after saying why, or a panic where `what` is required.
pub fn skip<T>(what: &str, reason: &str) -> Option<T> {
    if required() {
        panic!("{REQUIRE_ENV}=1 but {what} cannot run here: {reason}");
    }
    eprintln!("SKIPPED: {what} cannot run here: {reason} ({REQUIRE_ENV}=1 makes this fail)");
    None
}

/// Spawns `cmd` from one thread that never exits, with parent-death signal `death_signal`.
/// The kernel sends that signal when the *spawning thread* ends, so a child spawned from a
/// test's own thread would die with the test; from here it dies only with the process.
/// The signal is set in `pre_exec`, which std runs after the uid/gid switch (that switch
/// clears it).
///
/// # Errors
/// The spawn's error.
pub fn spawn_tied_to_process(mut cmd: Command, death_signal: libc::c_int) -> io::Result<Child> {
    type Job = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The process died between fork and prctl: no signal will come, so don't start.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("the test process is gone"));
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("test-child-spawner".into())
            .spawn(move || {
                // Never ends: the sender lives in a static, which is never dropped.
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("a thread can be spawned at test start");
        tx
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .expect("the spawner thread never exits");
    reply_rx.recv().expect("the spawner thread always replies")
}

/// Removes `<base>/<prefix><pid>-…` dirs whose `<pid>` is no longer running, after stopping a
/// postmaster still running from one (its `data/postmaster.pid`). Best effort: a dir we may
/// not remove stays.
pub fn remove_stale(base: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let Some(Ok(pid)) = rest.split('-').next().map(str::parse::<u32>) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) {
            continue;
        }
        let dir = entry.path();
        if let Some(pm) = fs::read_to_string(dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        {
            // Only if that PID still is a postgres (not a reused PID).
            let comm = fs::read_to_string(format!("/proc/{pm}/comm")).unwrap_or_default();
            if comm.trim() == "postgres" {
                // SAFETY: kill sends a signal; no memory is involved.
                unsafe { libc::kill(pm as libc::pid_t, libc::SIGQUIT) };
                let deadline = Instant::now() + Duration::from_secs(5);
                while alive(pm) && Instant::now() < deadline {
                    thread::sleep(POLL_INTERVAL);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// Whether a process `pid` exists (EPERM: it exists, someone else's).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill sends a signal to our own unreaped child (its PID cannot be reused yet).
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// Waits up to `timeout` for `child` to exit; whether it did (then it is reaped).
fn wait_bounded(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
            // An error of waitpid on our own child: it is gone (reaped elsewhere).
            Err(_) => return true,
            Ok(None) => return false,
        }
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A port free on 127.0.0.1 right now (bound to port 0, then released).
pub fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|err| format!("find a free port on 127.0.0.1: {err}"))
}

/// `$SENSORLINK_PG_BIN`, else the newest `/usr/lib/postgresql/<major>/bin` (Debian keeps
/// `initdb` and `postgres` off PATH).
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!("{BIN_ENV}={}: no initdb there", dir.display()))
        };
    }
    let root = Path::new("/usr/lib/postgresql");
    let newest = fs::read_dir(root)
        .map_err(|err| {
            format!(
                "{}: {err} (install the `postgresql` package)",
                root.display()
            )
        })?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major);
    newest.map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "no {}/<major>/bin/initdb (install `postgresql`)",
            root.display()
        )
    })
}

/// Where cluster dirs go: the temp dir, unless the server runs as another user who cannot
/// enter it (e.g. a root-only `$TMPDIR`); then `/tmp`.
fn base_dir(other_user: bool) -> PathBuf {
    let tmp = std::env::temp_dir();
    let enterable = tmp
        .ancestors()
        .all(|p| fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if other_user && !enterable {
        PathBuf::from("/tmp")
    } else {
        tmp
    }
}

/// uid and gid of the user `name`.
fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let cname = CString::new(name).map_err(|_| format!("user name {name:?} has a NUL"))?;
    // SAFETY: all-zero is a valid passwd (null pointers, zero ids); getpwnam_r fills it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer points to live memory of the given size, owned by this frame.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(format!(
            "look up user {name}: {}",
            io::Error::from_raw_os_error(rc)
        ));
    }
    if found.is_null() {
        return Err(format!(
            "no user {name:?} (the `postgresql` package creates it)"
        ));
    }
    Ok((pwd.pw_uid, pwd.pw_gid))
}
