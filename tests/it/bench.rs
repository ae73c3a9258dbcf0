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

fn number(report: &serde_json::Value, path: &[&str]) -> f64 {
    let value = path.iter().fold(report, |v, key| &v[*key]);
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{} is not a number: {report}", path.join(".")))
}

/// The latency samples are real: one per ack, positive, and in order
/// min ≤ p50 ≤ p90 ≤ p99 ≤ p99.9 ≤ max.
fn assert_latency(report: &serde_json::Value, samples: u64) {
    assert_eq!(report["latency_us"]["count"], samples, "{report}");
    let order: Vec<f64> = ["min", "p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|key| number(report, &["latency_us", key]))
        .collect();
    assert!(order[0] > 0.0, "a zero latency: {report}");
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "latency out of order {order:?}: {report}"
    );
    let avg = number(report, &["latency_us", "avg"]);
    assert!(order[0] <= avg && avg <= order[5], "{report}");
}

/// The rates are the counts over the measured time, not just present.
fn assert_rates(report: &serde_json::Value) {
    let readings = number(report, &["readings"]);
    let seconds = number(report, &["seconds"]);
    let bytes = number(report, &["bytes"]);
    assert!(seconds > 0.0 && readings > 0.0 && bytes > 0.0, "{report}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    assert!(
        close(number(report, &["readings_per_sec"]), readings / seconds),
        "{report}"
    );
    assert!(
        close(number(report, &["mb_per_sec"]), bytes / seconds / 1e6),
        "{report}"
    );
    // Each reading is one line of at least `m,sensor=bench-0 f0=0.0 <ns>\n`.
    assert!(bytes >= readings * 30.0, "{report}");
}

/// The per-connection figures are consistent: min ≤ p50 ≤ max (readings/s), the slowest
/// share is min ÷ max in 0..=1, and starved connections are no more than those established
/// (and, if any, the slowest got nothing). Returns them as (min, p50, max, share, starved).
fn assert_fairness(report: &serde_json::Value) -> (f64, f64, f64, f64, u64) {
    let pc = |key: &str| number(report, &["per_connection", key]);
    let (min, p50, max, share) = (pc("min"), pc("p50"), pc("max"), pc("slowest_share"));
    assert!(0.0 <= min && min <= p50 && p50 <= max, "{report}");
    assert!((0.0..=1.0).contains(&share), "{report}");
    assert!(
        (share - min / max).abs() <= 1e-9,
        "share is not min ÷ max: {report}"
    );
    let starved = report["per_connection"]["starved"]
        .as_u64()
        .unwrap_or_else(|| panic!("per_connection.starved is not a count: {report}"));
    assert!(
        starved <= report["connections"].as_u64().unwrap_or(0),
        "{report}"
    );
    assert_eq!(starved > 0, min == 0.0, "{report}");
    // Every connection ran for the same measured seconds: their rates add up to the total.
    assert!(
        max * number(report, &["connections"])
            >= number(report, &["readings_per_sec"]) * (1.0 - 1e-9),
        "{report}"
    );
    (min, p50, max, share, starved)
}

/// The human report's lines as `label → text after it`.
fn human_report(stdout: &str) -> std::collections::BTreeMap<String, String> {
    let labels = [
        "connections",
        "readings acked",
        "seconds",
        "readings/s",
        "MB/s",
        "errors",
        "ack latency µs",
        "per connection",
    ];
    stdout
        .lines()
        .filter_map(|line| {
            let label = labels.iter().find(|l| line.starts_with(*l))?;
            Some((label.to_string(), line[label.len()..].trim().to_string()))
        })
        .collect()
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
    assert_eq!(report["unacked"], 0, "{report}");
    // 2000 readings in batches of 16 per connection (500 each): 32 acks per connection.
    assert_latency(&report, 128);
    assert_rates(&report);
    // `--count` splits the readings evenly: 500 acked on each connection.
    let (min, _, max, share, starved) = assert_fairness(&report);
    let seconds = number(&report, &["seconds"]);
    assert!((min * seconds - 500.0).abs() < 1e-6, "{report}");
    assert!((max * seconds - 500.0).abs() < 1e-6, "{report}");
    assert_eq!((share, starved), (1.0, 0), "{report}");
}

#[test]
fn the_latency_histogram_holds_every_measured_ack() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hist.tsv");
    let (code, stdout, stderr) = bench(
        &server.addr.to_string(),
        &[
            "--count",
            "300",
            "--batch",
            "3",
            "--json",
            "--latency-histogram",
            path.to_str().expect("utf-8 temp path"),
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = report(&stdout);
    let text = std::fs::read_to_string(&path).expect("histogram written");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("# latency_us\tcount"), "{text}");
    let rows: Vec<(f64, u64)> = lines
        .map(|line| {
            let (us, count) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("not `value<TAB>count`: {line:?}"));
            (
                us.parse().unwrap_or_else(|e| panic!("{us:?}: {e}")),
                count.parse().unwrap_or_else(|e| panic!("{count:?}: {e}")),
            )
        })
        .collect();
    // 300 readings in batches of 3: 100 acks, each counted once, in rising order, between
    // the report's min and max.
    assert_eq!(rows.iter().map(|r| r.1).sum::<u64>(), 100, "{text}");
    assert_latency(&report, 100);
    assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "{text}");
    let (min, max) = (
        number(&report, &["latency_us", "min"]),
        number(&report, &["latency_us", "max"]),
    );
    assert!(
        rows.iter().all(|r| r.0 >= min - 1e-3 && r.0 <= max + 1e-3),
        "{text}\n{report}"
    );
    // Its median is the report's p50 (both to the histogram's 3 significant figures).
    let p50 = number(&report, &["latency_us", "p50"]);
    let mut seen = 0;
    let median = rows
        .iter()
        .find(|r| {
            seen += r.1;
            seen >= 50
        })
        .map(|r| r.0)
        .expect("a median");
    assert!(
        (median - p50).abs() <= p50 * 2e-3 + 1e-3,
        "{median} against {p50}"
    );
}

#[test]
fn an_unwritable_histogram_file_fails_before_the_run() {
    let server = Server::start(&[]);
    let (code, stdout, stderr) = bench(
        &server.addr.to_string(),
        &[
            "--count",
            "10",
            "--latency-histogram",
            "/nonexistent-dir/hist.tsv",
        ],
    );
    // An error, not a run with errors (exit 1): exit 2, and nothing was sent.
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("--latency-histogram /nonexistent-dir/hist.tsv"),
        "{stderr}"
    );
}

#[test]
fn a_timed_run_reports_per_connection_rates() {
    let server = Server::start(&[]);
    let (code, stdout, stderr) = bench(
        &server.addr.to_string(),
        &[
            "--connections",
            "6",
            "--pipeline",
            "256",
            "--batch",
            "64",
            "--warmup",
            "200ms",
            "--duration",
            "1s",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let report = report(&stdout);
    assert_eq!(report["connections"], 6, "{report}");
    assert_rates(&report);
    let (_, _, max, _, starved) = assert_fairness(&report);
    assert!(max > 0.0, "{report}");
    assert!(starved < 6, "{report}");
    // The text report says the same in one line.
    let (code, stdout, stderr) = bench(
        &server.addr.to_string(),
        &["--connections", "3", "--count", "300", "--batch", "10"],
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let line = human_report(&stdout)
        .remove("per connection")
        .unwrap_or_else(|| panic!("no per-connection line: {stdout}"));
    assert!(line.contains("slowest ÷ fastest 100 %"), "{line}");
    assert!(line.ends_with("starved 0 of 3"), "{line}");
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
    assert_eq!(report["errors"], 0, "{report}");
    // One sample per `pong`.
    assert_latency(&report, 50);
    assert_rates(&report);
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
    // One reading + sync per ack in idle mode: a sample per reading acked.
    let readings = report["readings"].as_u64().unwrap_or(0);
    assert!(readings > 0, "{report}");
    assert_latency(&report, readings);
    assert_rates(&report);
    assert_fairness(&report);
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
    let human = human_report(&stdout);
    let value = |label: &str| -> f64 {
        let text = human
            .get(label)
            .unwrap_or_else(|| panic!("no {label:?} line: {stdout}"));
        let first = text.split_whitespace().next().unwrap_or_default();
        first
            .parse()
            .unwrap_or_else(|e| panic!("{label:?} {text:?}: {e}"))
    };
    assert_eq!(value("readings acked"), 500.0, "{stdout}");
    assert_eq!(value("errors"), 0.0, "{stdout}");
    assert!(
        human["connections"].starts_with("3 of 3 established"),
        "{stdout}"
    );
    // readings/s is printed whole and seconds to 1 ms: check one against the other
    // within that rounding.
    let (rate, seconds) = (value("readings/s"), value("seconds"));
    assert!(rate > 0.0 && value("MB/s") >= 0.0, "{stdout}");
    if seconds > 0.001 {
        let (low, high) = (500.0 / (seconds + 0.0005), 500.0 / (seconds - 0.0005));
        assert!(
            low - 0.5 <= rate && rate <= high + 0.5,
            "{rate} readings/s is not 500 over {seconds} s: {stdout}"
        );
    }
    assert!(
        human["ack latency µs"].ends_with("(63 samples)"),
        "500 readings in batches of 8 over 3 connections (167, 167, 166): 21 + 21 + 21 acks: {stdout}"
    );
    assert!(server.terminate().success());
    let rows = store.rows(&[]);
    assert_eq!(rows.len(), 500, "deduplicated or lost readings");
    assert!(rows.iter().all(|row| row["measurement"] == "bench"));
}

/// A bad flag value is refused before anything connects, with a message naming it.
#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    let (code, stdout, stderr) = bench(UNREACHABLE_ADDR, &["--connections", "0"]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("--connections must be at least 1"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("cannot reach"),
        "checked before connecting: {stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");

    let (code, _, stderr) = bench(UNREACHABLE_ADDR, &["--legacy", "--pipeline", "8"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--legacy") && stderr.contains("--pipeline"),
        "clap names the conflicting flags: {stderr}"
    );
}

#[test]
fn unreachable_server_exits_2() {
    let (code, stdout, stderr) = bench("127.0.0.1:1", &["--count", "5"]);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("cannot reach 127.0.0.1:1"), "{stderr}");
}

/// Confine `cmd`'s process to one CPU (the first this test may use), as `taskset -c N`
/// does: it then starts a current-thread runtime (the path a pinned benchmark takes).
fn on_one_cpu(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: a zeroed `cpu_set_t` is a valid empty set; the affinity calls only read and
    // write that set.
    let cpu = unsafe {
        let mut mine: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut mine),
            0,
            "reading this test's CPU affinity"
        );
        (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &mine))
            .expect("this test may run on some CPU")
    };
    // SAFETY: between fork and exec only `sched_setaffinity` (async-signal-safe) runs,
    // on a set built on the stack.
    unsafe {
        cmd.pre_exec(move || {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// Pinned to one CPU each (as bench/*.sh run them), the server and the bench run on a
/// current-thread runtime: every reading still acked exactly once, and the server still
/// shuts down cleanly on SIGTERM.
#[test]
fn pinned_server_and_bench_ack_every_reading() {
    let mut cmd = bin();
    cmd.args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory",
        "--http",
        "127.0.0.1:0",
    ]);
    on_one_cpu(&mut cmd);
    let mut server = Server::spawn(cmd, "memory");
    let out = run(on_one_cpu(
        bin().arg("bench").arg(server.addr.to_string()).args([
            "--count",
            "600",
            "--connections",
            "3",
            "--pipeline",
            "4",
            "--batch",
            "5",
            "--json",
            "--no-progress",
        ]),
    ));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report = report(&stdout);
    assert_eq!(report["readings"], 600, "{report}");
    assert_eq!(report["unacked"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    // 600 readings in batches of 5: 120 acks.
    assert_latency(&report, 120);
    // Stored and acked, as the HTTP side (served by the same runtime) counts them.
    let metrics = server.get("/metrics").body;
    assert!(
        metrics.contains("\nsensorlink_readings_acked_total 600\n"),
        "{metrics}"
    );
    assert!(server.terminate().success(), "{}", server.stderr());
}
