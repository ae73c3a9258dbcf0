//! Duplicates and conflicts are visible: a reading that pre-empts another sender's series
//! and timestamp makes the genuine sender's ack say `conflicts=1` (and a replay
//! `duplicates=1`), the server logs and counts it, the first value stays stored, and
//! `sensorlink client` reports what its acks said.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use crate::harness::*;

/// The ack without its timings (they vary).
fn without_timings(ack: &str) -> String {
    ack.split(' ')
        .filter(|word| !word.starts_with("store_us=") && !word.starts_with("commit_us="))
        .collect::<Vec<_>>()
        .join(" ")
}

// See: issue 10 ("a peer that writes `weather,sensor=kitchen-01 temperature=-99 <ts>` first
// wins, while the genuine sender still gets `ack … readings=1`").
#[test]
fn a_pre_empted_reading_is_acked_as_a_conflict() {
    let store = TempStore::new();
    let server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let ts = sensorlink::timefmt::now_ns();

    let mut forger = LinePeer::new(server.addr);
    forger.send(format!("weather,sensor=kitchen-01 temperature=-99 {ts}\nsync f\n").as_bytes());
    assert_eq!(
        without_timings(&forger.line()),
        "ack f readings=1 rejected=0"
    );

    let mut genuine = LinePeer::new(server.addr);
    genuine.send(format!("weather,sensor=kitchen-01 temperature=21.5 {ts}\nsync 1\n").as_bytes());
    assert_eq!(
        without_timings(&genuine.line()),
        "ack 1 readings=1 rejected=0 conflicts=1"
    );
    // The forger's reading sent again (a replay): harmless, and said so.
    genuine.send(format!("weather,sensor=kitchen-01 temperature=-99 {ts}\nsync 2\n").as_bytes());
    assert_eq!(
        without_timings(&genuine.line()),
        "ack 2 readings=1 rejected=0 duplicates=1"
    );
    // A fresh reading: the ack has its old bytes again.
    genuine.send(
        format!(
            "weather,sensor=kitchen-01 temperature=21.6 {}\nsync 3\n",
            ts + 1
        )
        .as_bytes(),
    );
    assert_eq!(
        without_timings(&genuine.line()),
        "ack 3 readings=1 rejected=0"
    );

    // The first value is the one stored.
    let rows = store.rows(&["--sensor", "kitchen-01"]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["fields"]["temperature"], -99.0, "{rows:?}");
    assert_eq!(rows[1]["fields"]["temperature"], 21.6, "{rows:?}");

    // Logged with the peer and both values, and counted.
    server.wait_for_log("conflicting reading refused");
    let log = server.stderr();
    let line = log
        .lines()
        .find(|line| line.contains("conflicting reading refused"))
        .expect("the conflict's log line");
    assert!(
        line.contains("kept=temperature=-99") && line.contains("refused=temperature=21.5"),
        "{line}"
    );
    assert!(line.contains("sensor=kitchen-01"), "{line}");
    assert!(line.contains(&format!("timestamp_ns={ts}")), "{line}");
    let metrics = server.get("/metrics").body;
    for (outcome, n) in [("inserted", 2), ("duplicate", 1), ("conflict", 1)] {
        let series = format!("sensorlink_readings_committed_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.contains(&series), "{series}\n{metrics}");
    }
    let summary = server.get("/api/server").json();
    assert_eq!(summary["readings_duplicate_total"], 1, "{summary}");
    assert_eq!(summary["readings_conflict_total"], 1, "{summary}");
}

/// A stand-in server (loopback, port 0) that answers the handshake and acks each `sync`
/// with the next of `acks`' extra keys: the client's side of the new ack keys, whatever
/// the timestamps it picks.
fn scripted_server(
    acks: &'static [&'static str],
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the client connects");
        let mut writer = stream.try_clone().expect("clone stream");
        let mut acks = acks.iter();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            let mut words = line.split(' ');
            let reply = match (words.next(), words.next()) {
                (Some("ping"), Some(token)) => format!("pong {token}\n"),
                (Some("ping"), None) => "pong\n".to_string(),
                (Some("sync"), Some(token)) => {
                    let extra = acks.next().copied().unwrap_or("");
                    format!("ack {token} readings=1 rejected=0{extra}\n")
                }
                _ => continue,
            };
            if writer.write_all(reply.as_bytes()).is_err() {
                return;
            }
        }
    });
    (addr, thread)
}

#[test]
fn client_summary_reports_duplicates_and_conflicts() {
    const ACKS: &[&str] = &["", " conflicts=1", " duplicates=1", " conflicts=1"];
    let (addr, server) = scripted_server(ACKS);
    let out = run(bin().args([
        "client",
        &addr.to_string(),
        "--count",
        "4",
        "--interval",
        "1ms",
        "--json",
    ]));
    server.join().expect("scripted server");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = summary(&out.stdout);
    assert_eq!(summary["acked"], 4, "{summary}");
    assert_eq!(summary["duplicates"], 1, "{summary}");
    assert_eq!(summary["conflicts"], 2, "{summary}");
    // The warning comes once per run, with the count.
    let warnings: Vec<_> = json_lines(&out.stdout)
        .into_iter()
        .filter(|event| event["event"] == "conflicts")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0]["count"], 2);

    // The text form says it in words.
    let (addr, server) = scripted_server(ACKS);
    let out = run(bin().args([
        "client",
        &addr.to_string(),
        "--count",
        "4",
        "--interval",
        "1ms",
    ]));
    server.join().expect("scripted server");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout
            .matches("warning: 2 readings were refused as conflicts: the server already held a different value at the same series and timestamp")
            .count(),
        1,
        "{stdout}"
    );
    assert!(
        stdout.contains("1 duplicates (already stored with the same value), 2 conflicts"),
        "{stdout}"
    );
}
