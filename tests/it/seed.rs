//! The seed pair's frozen bytes: the seed client against our server, our `--legacy` client
//! against a seed-style server.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::harness::*;

/// The seed client's exact exchange, byte for byte, and the readings it leaves in the store.
#[test]
fn seed_client_exchange_gets_pong_and_readings_are_stored() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let mut seed = server.connect();

    seed.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut seed, 4), b"pong");
    assert_silent(&mut seed);

    seed.write_all(b"ping / ('2026-11-24 11:46:25.123456', 102)")
        .unwrap();
    assert_eq!(read_n(&mut seed, 4), b"pong");
    // Python's str(datetime) drops the fraction when it is zero.
    seed.write_all(b"ping / ('2026-11-24 11:46:26', 104)")
        .unwrap();
    assert_eq!(read_n(&mut seed, 4), b"pong");
    assert_silent(&mut seed);
    drop(seed);

    assert!(server.terminate().success());
    let rows = store.rows(&[]);
    assert_eq!(rows.len(), 2, "a bare ping is not a reading: {rows:?}");
    assert_eq!(rows[0]["sensor"], "127.0.0.1");
    assert_eq!(rows[0]["measurement"], "legacy");
    assert_eq!(rows[0]["fields"]["value"], 102);
    assert_eq!(rows[1]["fields"]["value"], 104);
    // Timestamps are the local times the seed sent: one second apart minus the fraction.
    let ts0 = rows[0]["timestamp_ns"].as_i64().unwrap();
    let ts1 = rows[1]["timestamp_ns"].as_i64().unwrap();
    assert_eq!(ts1 - ts0, 1_000_000_000 - 123_456_000);
}

/// Every message gets its `pong` at once, even when several come in quick succession,
/// and garbage still gets the seed's `pong` (counted as rejected, not stored).
#[test]
fn seed_server_answers_every_message_including_garbage() {
    let server = Server::start(&[]);
    let mut seed = server.connect();
    seed.write_all(b"ping").unwrap();
    assert_eq!(read_n(&mut seed, 4), b"pong");
    for n in 0..20 {
        let msg = format!("ping / ('2026-11-24 11:46:{:02}.5', {})", n, 102 + 2 * n);
        seed.write_all(msg.as_bytes()).unwrap();
        assert_eq!(read_n(&mut seed, 4), b"pong");
    }
    seed.write_all(b"hello?").unwrap();
    assert_eq!(read_n(&mut seed, 4), b"pong");
    assert_silent(&mut seed);
    server.wait_for_log("rejected");
}

/// A seed-style server: thread per connection, `pong` for every `recv(1024)`, and a record
/// of every chunk it received.
fn seed_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(4) {
            let Ok(mut conn) = conn else { return };
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            log.lock().unwrap().push(buf[..n].to_vec());
                            if conn.write_all(b"pong").is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, received)
}

#[test]
fn legacy_client_speaks_the_seed_bytes() {
    let (addr, received) = seed_server();
    let out = run(bin().args([
        "client",
        &addr.to_string(),
        "--legacy",
        "--count",
        "3",
        "--interval",
        "20ms",
        "--timeout",
        "5s",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chunks = received.lock().unwrap().clone();
    assert_eq!(chunks.len(), 4, "{chunks:?}");
    assert_eq!(chunks[0], b"ping");
    for (chunk, counter) in chunks[1..].iter().zip([102, 104, 106]) {
        let text = std::str::from_utf8(chunk).unwrap();
        let rest = text
            .strip_prefix("ping / ('")
            .unwrap_or_else(|| panic!("{text}"));
        let (time, tail) = rest.split_once("', ").unwrap_or_else(|| panic!("{text}"));
        assert_eq!(tail, format!("{counter})"), "{text}");
        // `YYYY-MM-DD HH:MM:SS` with `.ffffff` only when the microseconds are not zero.
        assert!(time.len() == 19 || time.len() == 26, "{time}");
        assert!(
            chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S%.f").is_ok(),
            "{time}"
        );
    }
    assert!(
        stdout.contains("3 sent, 3 acked, 0 lost, 0.0% loss"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("reply=\"pong\"").count(), 3, "{stdout}");
    // One rtt per message: the summary's numbers are consistent, not just present.
    let [min, _, max, _] = ping_rtt(&stdout);
    let times: Vec<f64> = stdout
        .lines()
        .filter(|l| l.contains("reply=\"pong\""))
        .map(|l| {
            let ms = l
                .rsplit_once(" time=")
                .map(|(_, t)| t.trim_end_matches(" ms"));
            ms.and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no time in {l:?}"))
        })
        .collect();
    for t in &times {
        assert!(min <= *t && *t <= max, "{t} outside {min}..{max}: {stdout}");
    }
}

/// Our own `--legacy` client against our server: the legacy path end to end, with storage.
#[test]
fn legacy_client_against_sensorlink_server_stores_the_counter() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &[]);
    let out = run(bin().args([
        "client",
        &server.addr.to_string(),
        "--legacy",
        "--count",
        "3",
        "--interval",
        "10ms",
        "--json",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let summary = summary(&out.stdout);
    assert_eq!(summary["acked"], 3);
    assert!(server.terminate().success());
    let values: Vec<i64> = store
        .rows(&[])
        .iter()
        .map(|r| r["fields"]["value"].as_i64().unwrap())
        .collect();
    assert_eq!(values, vec![102, 104, 106]);
}
