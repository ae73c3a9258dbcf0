//! `sensorlink bench` against the real server: counts, JSON report, exit codes, and that
//! every reading it sends is stored (none deduplicated, none lost). No timing thresholds.

use crate::harness::*;

/// Run `sensorlink bench ADDR <args>` and return its exit code, stdout and stderr.
fn bench(addr: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = run(bin().arg("bench").arg(addr).args(args).arg("--no-progress"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The single JSON object `--json` prints.
fn report(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object: {e}: {stdout:?}"))
}

fn assert_latency_fields(report: &serde_json::Value) {
    let latency = &report["latency_us"];
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(latency[key].is_f64(), "latency_us.{key} missing: {report}");
    }
    let p50 = latency["p50"].as_f64().unwrap_or(f64::NAN);
    let max = latency["max"].as_f64().unwrap_or(f64::NAN);
    assert!(p50 <= max, "p50 {p50} > max {max}");
}

#[test]
fn pipelined_count_is_acked_exactly() {
    let server = Server::start(&[]);
    let (code, stdout, stderr) = bench(
        &server.addr.to_string(),
        &[
            "--count",
            "2000",
            "--connections",
            "4",
            "--pipeline",
            "64",
            "--batch",
            "16",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = report(&stdout);
    assert_eq!(report["readings"], 2000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connections"], 4, "{report}");
    assert_eq!(report["mode"], "line");
    assert_eq!(report["pipeline"], 64);
    assert_eq!(report["batch"], 16);
    // 2000 readings in batches of 16 per connection (500 each): 32 acks per connection.
    assert_eq!(report["latency_us"]["count"], 128, "{report}");
    for key in ["seconds", "readings_per_sec", "mb_per_sec"] {
        assert!(report[key].is_f64(), "{key} missing: {report}");
    }
    assert_latency_fields(&report);
}

#[test]
fn legacy_count_is_stored_once_each() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    // Two connections from one address: their readings share the series `sensor=127.0.0.1`,
    // so their timestamps must not collide either.
    let (code, stdout, stderr) = bench(
        &server.addr.to_string(),
        &["--legacy", "--count", "50", "--connections", "2", "--json"],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = report(&stdout);
    assert_eq!(report["readings"], 50, "{report}");
    assert_eq!(report["mode"], "legacy");
    assert_latency_fields(&report);
    assert!(server.terminate().success());
    assert_eq!(store.rows(&[]).len(), 50);
}

#[test]
fn idle_connections_are_all_held() {
    let server = Server::start(&[]);
    let (code, stdout, stderr) = bench(
        &server.addr.to_string(),
        &[
            "--idle",
            "--connections",
            "50",
            "--interval",
            "100ms",
            "--duration",
            "1s",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = report(&stdout);
    assert_eq!(report["connections"], 50, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["mode"], "idle");
    assert!(
        report["readings"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    assert_latency_fields(&report);
}

#[test]
fn every_reading_is_stored_in_sqlite() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let (code, stdout, stderr) = bench(
        &server.addr.to_string(),
        &[
            "--count",
            "500",
            "--connections",
            "3",
            "--pipeline",
            "32",
            "--batch",
            "8",
            "--fields",
            "2",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("readings/s"), "{stdout}");
    assert!(stdout.contains("readings acked 500"), "{stdout}");
    assert!(server.terminate().success());
    let rows = store.rows(&[]);
    assert_eq!(rows.len(), 500, "deduplicated or lost readings");
    assert!(rows.iter().all(|row| row["measurement"] == "bench"));
}

#[test]
fn unreachable_server_exits_2() {
    let (code, stdout, stderr) = bench("127.0.0.1:1", &["--count", "5"]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("cannot reach 127.0.0.1:1"), "{stderr}");
}
