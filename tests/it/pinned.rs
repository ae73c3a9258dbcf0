//! Processes pinned to one CPU, as every benchmark pins them (`taskset`): the server, the
//! bench and the client see one CPU there, which is a different runtime set-up from the
//! unpinned processes the other tests start. The same guarantees hold: every reading acked is
//! stored, HTTP answers, and SIGTERM ends it cleanly with nothing lost.

use std::process::Command;

use crate::harness::*;
use crate::pg_cluster;

/// `sensorlink bench ADDR --count N` pinned to one CPU, pipelined over several connections (the
/// group commit and the acks on one thread); asserts all N acked without error.
fn pinned_bench(addr: &str, count: u64) {
    let mut bench = pinned();
    let out = run(bench.args([
        "bench",
        addr,
        "--connections",
        "8",
        "--pipeline",
        "64",
        "--batch",
        "16",
        "--count",
        &count.to_string(),
        "--json",
        "--no-progress",
    ]));
    assert!(out.status.success(), "bench failed: {out:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON report from bench");
    assert_eq!(report["readings"], count, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
}

/// The first CPU this process may run on (`Cpus_allowed_list` in /proc/self/status): a
/// runner confined to other CPUs than 0 still pins.
fn first_allowed_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in /proc/self/status")
        .trim();
    list.split([',', '-'])
        .next()
        .filter(|cpu| cpu.parse::<usize>().is_ok())
        .unwrap_or_else(|| panic!("no CPU in Cpus_allowed_list {list:?}"))
        .to_string()
}

/// `taskset -c CPU` (the first CPU we may use) in front of our binary. `taskset` is part of
/// util-linux, which every Debian system has: a machine where it cannot run fails the test
/// rather than skipping it, so that the pinned set-up cannot go untested unnoticed.
fn pinned() -> Command {
    let cpu = first_allowed_cpu();
    let status = Command::new("taskset").args(["-c", &cpu, "true"]).status();
    assert!(
        status.as_ref().is_ok_and(|s| s.success()),
        "`taskset -c {cpu} true` does not run here ({status:?}): install util-linux"
    );
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &cpu, env!("CARGO_BIN_EXE_sensorlink")]);
    cmd
}

#[test]
fn a_server_bench_and_client_pinned_to_one_cpu_store_every_reading_and_stop_cleanly() {
    let mut server_cmd = pinned();
    let store = TempStore::new();
    server_cmd.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &store.url(),
        "--http",
        "127.0.0.1:0",
    ]);
    let mut server = Server::spawn(server_cmd, &store.url());
    let addr = server.addr.to_string();

    pinned_bench(&addr, 4000);

    // The client, one reading in flight, then its summary.
    let mut client = pinned();
    let out = run(client.args([
        "client",
        &addr,
        "--interval",
        "0",
        "--count",
        "200",
        "--sensor",
        "pinned",
        "--link-report",
        "0",
    ]));
    assert!(out.status.success(), "client failed: {out:?}");

    let health = server.get("/api/sensors/pinned");
    assert_eq!(health.status, 200, "{}", health.body);

    let status = server.terminate();
    assert!(
        status.success(),
        "server exit {status:?}: {}",
        server.stderr()
    );
    let pinned_rows = store
        .rows(&["--sensor", "pinned", "--limit", "100000"])
        .len();
    assert_eq!(pinned_rows, 200, "the client's readings stored");
    let all_rows = store.rows(&["--limit", "100000"]).len();
    assert_eq!(all_rows, 4200, "every acked reading stored");
}

#[test]
fn a_server_pinned_to_one_cpu_on_postgresql_stores_every_reading_and_stops_cleanly() {
    // The PostgreSQL store's pool and its close at shutdown run on the pinned runtime too.
    let Some(cluster) = pg_cluster::own() else {
        return;
    };
    let mut server_cmd = pinned();
    let url = cluster.fresh_database("it_pinned");
    let db = url.rsplit('/').next().expect("a database name").to_string();
    server_cmd.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--store",
        &url,
        "--http",
        "off",
    ]);
    let mut server = Server::spawn(server_cmd, &url);
    pinned_bench(&server.addr.to_string(), 3000);
    let status = server.terminate();
    assert!(
        status.success(),
        "server exit {status:?}: {}",
        server.stderr()
    );
    let count = cluster
        .psql(&db, "SELECT count(*) FROM sensorlink_readings")
        .expect("psql");
    assert_eq!(count.trim(), "3000", "every acked reading stored");
}
