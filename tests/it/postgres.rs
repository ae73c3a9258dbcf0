//! The real binary on a PostgreSQL store (a throwaway cluster of the test's own): clients
//! with `--spool` write through a server, `query`/`stats --store postgres://…` read it
//! back, and PostgreSQL stopped mid-run for a few seconds costs nothing: the server stops
//! acknowledging, says not ready, counts the outage, and afterwards the database holds
//! exactly what the clients produced, none missing, none twice. Skips (saying why) where
//! PostgreSQL cannot run, unless `SENSORLINK_REQUIRE_PG=1`.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::*;
use crate::pg_cluster;

/// How long PostgreSQL stays stopped: long enough for the clients' readings to pile up
/// unacknowledged and for `/readyz` to be seen failing.
const OUTAGE: Duration = Duration::from_secs(3);

/// The one number psql prints for `sql`.
fn psql_number(cluster: &pg_cluster::PgCluster, db: &str, sql: &str) -> i64 {
    let out = cluster.psql(db, sql).expect("psql");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: not a number: {out:?}"))
}

fn wait_for_events(path: &std::path::Path, event: &str, n: usize) {
    if !poll_until(PATIENCE, || count_events(path, event) >= n) {
        panic!(
            "client never reached {n} {event:?} events:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
    }
}

#[test]
fn postgres_stopped_mid_run_loses_and_doubles_nothing() {
    let Some(cluster) = pg_cluster::own() else {
        return;
    };
    let url = cluster.fresh_database("it_outage");
    let db = url.rsplit('/').next().expect("a database name").to_string();
    let server = Server::start_on("127.0.0.1:0", &url, &[]);
    assert_eq!(server.get("/readyz").status, 200);

    let count = 150;
    let sensors = ["pg-a", "pg-b"];
    let spool = tempfile::tempdir().expect("tempdir");
    let clients: Vec<(KillOnDrop, std::path::PathBuf)> = sensors
        .iter()
        .map(|sensor| {
            let out_path = spool.path().join(format!("{sensor}.out"));
            let child = bin()
                .args([
                    "client",
                    "--link-report",
                    "0",
                    &server.addr.to_string(),
                    "--count",
                    &count.to_string(),
                    "--interval",
                    "20ms",
                    "--sensor",
                    sensor,
                    "--spool",
                    spool.path().join(sensor).to_str().expect("utf-8 path"),
                    "--max-backoff",
                    "200ms",
                    "--json",
                ])
                .stdout(std::fs::File::create(&out_path).expect("client output file"))
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn client");
            (KillOnDrop(child), out_path)
        })
        .collect();
    for (_, out_path) in &clients {
        wait_for_events(out_path, "ack", 10);
    }

    cluster.stop().expect("stop PostgreSQL");
    wait_for(
        || server.get("/readyz").status == 503,
        PATIENCE,
        "/readyz to say not ready while PostgreSQL is stopped",
    );
    let acked_at_stop: Vec<usize> = clients
        .iter()
        .map(|(_, out)| count_events(out, "ack"))
        .collect();
    std::thread::sleep(OUTAGE);
    let body = server.get("/readyz");
    assert_eq!(body.status, 503, "{}", body.body);
    assert!(body.body.contains("store"), "{}", body.body);
    // Nothing is acknowledged while the database is away (an ack in flight at the stop
    // may still land: at most a commit's worth).
    for ((_, out), before) in clients.iter().zip(&acked_at_stop) {
        let now = count_events(out, "ack");
        assert!(
            now <= before + 16,
            "acks while PostgreSQL was stopped: {before} → {now}"
        );
    }
    cluster.start_again().expect("start PostgreSQL again");
    wait_for(
        || server.get("/readyz").status == 200,
        PATIENCE,
        "/readyz to say ready once PostgreSQL is back",
    );

    for (mut child, out_path) in clients {
        let mut status = None;
        wait_for(
            || {
                status = child.0.try_wait().expect("poll the client");
                status.is_some()
            },
            Duration::from_secs(60),
            "the client to finish",
        );
        let stdout = std::fs::read(&out_path).expect("client output");
        let summary = summary(&stdout);
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{summary}");
        assert_eq!(summary["acked"], count, "{summary}");
    }
    let metrics = server.get("/metrics").body;
    let outages = metrics
        .lines()
        .find_map(|line| line.strip_prefix("sensorlink_store_unavailable_total "))
        .and_then(|n| n.trim().parse::<f64>().ok());
    // One stop, one outage: logged once when it begins (no start/end pair per probe).
    assert_eq!(outages, Some(1.0), "the outage is counted once");
    assert_eq!(
        server.stderr().matches("store unavailable").count(),
        1,
        "the wait is logged once:\n{}",
        server.stderr()
    );
    assert!(
        server.stderr().contains("store available again"),
        "its end too"
    );

    // Exactly what the clients produced: every (sensor, value) once.
    for sensor in sensors {
        let rows = query_json(&url, &["--sensor", sensor]);
        let mut values: Vec<i64> = rows
            .iter()
            .map(|row| row["fields"]["value"].as_i64().expect("an integer value"))
            .collect();
        values.sort_unstable();
        let expected: Vec<i64> = (0..count).map(|i| 102 + 2 * i).collect();
        assert_eq!(values, expected, "{sensor}: every reading exactly once");
    }
    assert_eq!(
        psql_number(&cluster, &db, "SELECT count(*) FROM sensorlink_readings"),
        2 * count
    );
    // The HTTP API reads the same database.
    let api = server.get("/api/readings?sensor=pg-b&limit=1000").json();
    let api_rows = api["readings"].as_array().expect("readings");
    assert_eq!(api_rows.len() as i64, count, "{api}");
    assert_eq!(api["truncated"], false);
    let stats = run(bin().args(["stats", "--store", &url, "--format", "json"]));
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).expect("stats JSON");
    let readings: Vec<(String, i64)> = stats
        .as_array()
        .expect("an array")
        .iter()
        .map(|s| {
            (
                s["sensor"].as_str().expect("sensor").to_string(),
                s["readings"].as_i64().expect("readings"),
            )
        })
        .collect();
    assert_eq!(
        readings,
        vec![("pg-a".to_string(), count), ("pg-b".to_string(), count)]
    );
}

/// SIGTERM while PostgreSQL is away: the server does not wait for the database forever.
/// The held reading is answered with an error (never acked) after a bounded wait, and the
/// server exits.
#[test]
fn shutdown_while_postgres_is_away_answers_with_an_error() {
    let Some(cluster) = pg_cluster::own() else {
        return;
    };
    let url = cluster.fresh_database("it_shutdown");
    let mut server = Server::start_on("127.0.0.1:0", &url, &[]);
    let mut peer = LinePeer::new(server.addr);
    peer.send(b"m,sensor=x v=1i 1\nsync a\n");
    assert!(peer.line().starts_with("ack a readings=1"), "stored");

    cluster.stop().expect("stop PostgreSQL");
    peer.send(b"m,sensor=x v=2i 2\nsync b\n");
    wait_for(
        || server.get("/readyz").status == 503,
        PATIENCE,
        "/readyz to say not ready",
    );
    let status = server.terminate();
    assert!(
        server.stderr().contains("not acknowledged"),
        "{}",
        server.stderr()
    );
    let reply = peer.line();
    assert!(
        reply.starts_with("error") && reply.contains("unavailable"),
        "the held reading is not acked: {reply}"
    );
    // The server says it could not flush: a non-zero exit is fine, a hang is not.
    let _ = status;
}
