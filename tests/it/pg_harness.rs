//! The test harnesses of issue 12 themselves: the throwaway PostgreSQL cluster
//! (`tests/support/pg_cluster.rs`) runs SQL, keeps databases apart, survives a stop and
//! start, leaves nothing behind, and never outlives its test process; HAProxy
//! (`tests/support/haproxy.rs`) spreads connections and stops sending them to a backend
//! whose `/readyz` fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::haproxy::{Haproxy, HaproxyOpts};
use crate::harness::{poll_until, wait_for, PATIENCE};
use crate::pg_cluster::{self, PgCluster};

/// Set in the child process of [`a_cluster_dies_with_its_test_process`].
const HOLDER_ENV: &str = "SENSORLINK_TEST_PG_HOLDER";

#[test]
fn the_shared_cluster_runs_sql() {
    let Some(pg) = pg_cluster::shared() else {
        return;
    };
    assert_eq!(pg.psql("postgres", "SELECT 1 + 1").expect("select"), "2");
    let url = pg.fresh_database("harness");
    assert!(url.starts_with(&format!(
        "postgres://sensorlink@127.0.0.1:{}/harness_",
        pg.port()
    )));
    let db = url.rsplit('/').next().expect("a url has a path");
    let out = pg
        .psql(
            db,
            "CREATE TABLE t (k int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b');
             SELECT k, v FROM t ORDER BY k;",
        )
        .expect("script");
    assert_eq!(out, "1|a\n2|b");
    // ON_ERROR_STOP: the first error fails the call, and nothing after it runs.
    let err = pg
        .psql(db, "SELECT nope; INSERT INTO t VALUES (3, 'c');")
        .expect_err("an unknown column fails");
    assert!(err.contains("nope"), "{err}");
    assert_eq!(pg.psql(db, "SELECT count(*) FROM t").expect("count"), "2");
    // The server keeps fsync on: durable ingest is what the issue measures.
    assert_eq!(pg.psql(db, "SHOW fsync").expect("show"), "on");
    assert_eq!(
        pg.psql(db, "SHOW listen_addresses").expect("show"),
        "127.0.0.1"
    );
}

#[test]
fn two_fresh_databases_are_separate() {
    let Some(pg) = pg_cluster::shared() else {
        return;
    };
    let a = pg.fresh_database("sep");
    let b = pg.fresh_database("sep");
    assert_ne!(a, b);
    let (a, b) = (name(&a), name(&b));
    pg.psql(
        a,
        "CREATE TABLE only_in_a (x int); INSERT INTO only_in_a VALUES (7)",
    )
    .expect("create in a");
    assert_eq!(pg.psql(a, "SELECT x FROM only_in_a").expect("a"), "7");
    assert_eq!(
        pg.psql(b, "SELECT to_regclass('only_in_a') IS NULL")
            .expect("b"),
        "t"
    );
    assert!(pg.create_database(a).is_err(), "a name is used once");
    assert!(
        pg.create_database("Bad-Name").is_err(),
        "names are [a-z0-9_]"
    );
}

#[test]
fn an_own_cluster_stops_and_starts_again_with_its_data() {
    let Some(pg) = pg_cluster::own() else {
        return;
    };
    let db = pg.fresh_database("restart");
    let db = name(&db);
    pg.psql(
        db,
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)",
    )
    .expect("insert");
    let port = pg.port();
    pg.stop().expect("stop");
    assert!(pg.pid().is_none());
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect_err("stopped");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(pg.psql(db, "SELECT 1").is_err(), "psql fails while stopped");
    assert!(pg.stop().is_err(), "stopping twice is a test bug");
    pg.start_again().expect("start again");
    assert_eq!(pg.port(), port, "same port");
    assert_eq!(
        pg.psql(db, "SELECT x FROM kept").expect("after restart"),
        "42"
    );
    assert!(pg.start_again().is_err(), "it is running");
}

#[test]
fn a_dropped_cluster_leaves_no_dir_and_no_server() {
    let Some(pg) = pg_cluster::own() else {
        return;
    };
    let dir = pg.dir().to_path_buf();
    let pid = pg.pid().expect("running");
    assert!(dir.join("data/PG_VERSION").is_file());
    drop(pg);
    assert!(!dir.exists(), "{} is left", dir.display());
    assert!(!running(pid), "postmaster {pid} still runs");
}

/// Run in a child process by [`a_cluster_dies_with_its_test_process`] (ignored otherwise):
/// starts a cluster, says where it is, and waits to be killed.
#[test]
#[ignore = "a helper process of a_cluster_dies_with_its_test_process"]
fn hold_a_cluster_until_killed() {
    if std::env::var_os(HOLDER_ENV).is_none() {
        return;
    }
    match pg_cluster::own() {
        Some(pg) => println!(
            "HOLDING {} {}",
            pg.pid().expect("running"),
            pg.dir().display()
        ),
        None => println!("HOLDING none"),
    }
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[test]
fn a_cluster_dies_with_its_test_process() {
    if !pg_cluster::required() && pg_cluster::shared().is_none() {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary has a path");
    let mut holder = Command::new(exe)
        .args(["--ignored", "--exact", "--nocapture"])
        .arg("pg_harness::hold_a_cluster_until_killed")
        .env(HOLDER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the holder");
    let stdout = holder.stdout.take().expect("piped stdout");
    // Ends at its line, or at EOF if the holder dies first (then the assert says so).
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("HOLDING "))
        .unwrap_or_default();
    let fields: Vec<&str> = line.split(' ').collect();
    let (pid, dir) = match fields[..] {
        ["HOLDING", pid, dir] => (pid.parse::<u32>().expect("a pid"), PathBuf::from(dir)),
        _ => {
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("the holder did not start a cluster: {line:?}");
        }
    };
    assert!(running(pid));
    holder.kill().expect("kill the holder (our child)");
    holder.wait().expect("reap the holder");
    // The parent-death signal: the postmaster goes with the process that started it.
    wait_for(
        || !running(pid),
        PATIENCE,
        "the orphaned postmaster to exit",
    );
    assert!(dir.exists(), "nobody removed it yet");
    // The next start removes what the dead process left.
    let next = PgCluster::start().expect("start another cluster");
    assert!(!dir.exists(), "stale {} is left", dir.display());
    drop(next);
}

#[test]
fn haproxy_spreads_connections_and_drops_a_backend_that_is_not_ready() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let opts = HaproxyOpts {
        readyz_ports: vec![a.readyz.port(), b.readyz.port()],
        ..HaproxyOpts::default()
    };
    let Some(proxy) = Haproxy::start(&[a.addr, b.addr], &opts) else {
        return;
    };
    // Round robin: a few connections reach both.
    let names: Vec<String> = (0..6).map(|_| who(proxy.addr())).collect();
    assert!(
        names.iter().any(|n| n == "a") && names.iter().any(|n| n == "b"),
        "{names:?}; config:\n{}",
        proxy.config()
    );
    // b's /readyz fails: after `fall 2` checks (500 ms apart) HAProxy sends b nothing new.
    b.ready.store(false, Ordering::SeqCst);
    let mut streak = 0;
    let only_a = poll_until(PATIENCE, || {
        streak = if who(proxy.addr()) == "a" {
            streak + 1
        } else {
            0
        };
        streak >= 4
    });
    assert!(only_a, "b still gets connections; log: {}", proxy.log());
    for _ in 0..10 {
        assert_eq!(who(proxy.addr()), "a", "b is down; log: {}", proxy.log());
    }
    let pid = proxy.pid();
    drop(proxy);
    assert!(!running(pid), "haproxy {pid} outlived its Drop");
}

/// A stand-in collector: answers each line with `<name>` on its sensor port, and `/readyz`
/// with 200 or (when `ready` is cleared) 503 on its HTTP port. Threads end with the process.
struct Backend {
    addr: SocketAddr,
    readyz: SocketAddr,
    ready: Arc<AtomicBool>,
}

impl Backend {
    fn start(name: &'static str) -> Backend {
        let sensors = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let http = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let ready = Arc::new(AtomicBool::new(true));
        let backend = Backend {
            addr: sensors.local_addr().expect("bound"),
            readyz: http.local_addr().expect("bound"),
            ready: ready.clone(),
        };
        std::thread::spawn(move || {
            for conn in sensors.incoming().map_while(Result::ok) {
                std::thread::spawn(move || {
                    let mut out = conn.try_clone().expect("clone a socket");
                    for _ in BufReader::new(conn).lines().map_while(Result::ok) {
                        if writeln!(out, "{name}").is_err() {
                            break;
                        }
                    }
                });
            }
        });
        std::thread::spawn(move || {
            for mut conn in http.incoming().map_while(Result::ok) {
                // HAProxy's check is one small request; its bytes don't matter here.
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let reply = if ready.load(Ordering::SeqCst) {
                    "HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nready"
                } else {
                    "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nnot ready"
                };
                let _ = conn.write_all(reply.as_bytes());
            }
        });
        backend
    }
}

/// Which backend a new connection through `proxy` reached.
fn who(proxy: SocketAddr) -> String {
    let conn = TcpStream::connect(proxy).expect("connect to haproxy");
    conn.set_read_timeout(Some(PATIENCE))
        .expect("set a timeout");
    (&conn).write_all(b"who\n").expect("write through haproxy");
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .expect("a reply through haproxy");
    line.trim_end().to_owned()
}

/// The database name at the end of a `postgres://…/DB` url.
fn name(url: &str) -> &str {
    url.rsplit('/').next().expect("a url has a path")
}

/// Whether `pid` runs (a zombie nobody reaped does not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the `(comm)` field.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}
