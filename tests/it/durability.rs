//! Nothing acknowledged is ever lost: SIGKILL under load, then count what the store kept.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

const PEERS: usize = 8;
const BATCH: u64 = 20;
/// Syncs a peer keeps in flight: the pipelining the server must keep up with.
const WINDOW: u64 = 4;
/// Upper bound on one peer's readings, so the load stops by itself.
const MAX_BATCHES: u64 = 50_000;

/// One peer: pipelined batches of readings with a `sync` after each; returns the timestamps
/// the server acknowledged before the connection died.
fn pipelining_peer(
    addr: std::net::SocketAddr,
    peer: usize,
    acked_total: Arc<AtomicU64>,
) -> BTreeSet<i64> {
    let mut acked = BTreeSet::new();
    let Ok(stream) = std::net::TcpStream::connect(addr) else {
        return acked;
    };
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered < MAX_BATCHES && Instant::now() < deadline {
        while sent < answered + WINDOW && sent < MAX_BATCHES {
            let mut burst = String::new();
            for i in 0..BATCH {
                let ts = (sent * BATCH + i) as i64;
                burst.push_str(&format!("kill,sensor=p{peer} v={ts}i {ts}\n"));
            }
            burst.push_str(&format!("sync {sent}\n"));
            if writer.write_all(burst.as_bytes()).is_err() {
                return acked;
            }
            sent += 1;
        }
        line.clear();
        match reader.read_line(&mut line) {
            Ok(n) if n > 0 => {}
            _ => return acked,
        }
        let Some(rest) = line.strip_prefix("ack ") else {
            panic!("unexpected reply {line:?}")
        };
        let batch: u64 = rest.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(batch, answered, "acks come in order");
        assert!(rest.contains(&format!(" readings={BATCH} ")), "{line:?}");
        for i in 0..BATCH {
            acked.insert((batch * BATCH + i) as i64);
        }
        answered += 1;
        acked_total.fetch_add(BATCH, Ordering::Relaxed);
    }
    acked
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_reading() {
    let store = TempStore::new();
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    let addr = server.addr;
    let acked_total = Arc::new(AtomicU64::new(0));
    let peers: Vec<_> = (0..PEERS)
        .map(|peer| {
            let acked_total = acked_total.clone();
            std::thread::spawn(move || pipelining_peer(addr, peer, acked_total))
        })
        .collect();
    // Kill while every peer is mid-stream: after some thousands of acks.
    wait_for(
        || acked_total.load(Ordering::Relaxed) >= 20_000,
        PATIENCE,
        "20 000 acks before the kill",
    );
    server.kill();
    let acked: Vec<BTreeSet<i64>> = peers.into_iter().map(|p| p.join().unwrap()).collect();

    // The store after a crash: reopened by a new server (WAL recovery), then read back.
    let mut server = Server::start_on("127.0.0.1:0", &store.url(), &["-q"]);
    assert!(server.terminate().success());
    let mut stored: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); PEERS];
    for row in store.rows(&["--measurement", "kill"]) {
        let peer: usize = row["sensor"].as_str().unwrap()[1..].parse().unwrap();
        assert!(
            stored[peer].insert(row["timestamp_ns"].as_i64().unwrap()),
            "stored twice: {row}"
        );
    }
    let mut total_acked = 0;
    for peer in 0..PEERS {
        total_acked += acked[peer].len();
        let missing: Vec<_> = acked[peer].difference(&stored[peer]).take(5).collect();
        assert!(
            missing.is_empty(),
            "peer {peer}: acknowledged but not stored: {missing:?}"
        );
    }
    assert!(total_acked >= 20_000);
}
