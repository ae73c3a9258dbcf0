//! SQLite ingest rate: rows per second through `Store::write_batch`, by transaction size
//! and fsync policy (what the group-commit writer does, without the network).
//!
//! Each transaction inserts fresh rows (new timestamps), so the figure is for inserts, not
//! for the cheaper duplicate path. Only `write_batch` is timed; building the rows is not.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sensorlink::protocol::{FieldValue, Reading};
use sensorlink::store::sqlite::SqliteStore;
use sensorlink::store::{FsyncPolicy, Store, StoredReading};

/// Sensors the rows are spread over (one series each).
const SENSORS: u64 = 100;

/// `rows` readings with timestamps from `first_ts` on, spread over [`SENSORS`] series.
fn batch(first_ts: i64, rows: usize) -> Vec<StoredReading> {
    (0..rows)
        .map(|i| {
            let sensor = format!("s{}", i as u64 % SENSORS);
            StoredReading {
                reading: Reading {
                    measurement: "env".into(),
                    tags: vec![("sensor".into(), sensor.clone())],
                    fields: vec![
                        (
                            "temperature".into(),
                            FieldValue::Float(20.0 + (i % 50) as f64 / 10.0),
                        ),
                        ("humidity".into(), FieldValue::Int(40)),
                    ],
                    timestamp_ns: Some(first_ts + i as i64),
                },
                sensor,
                received_ns: first_ts,
            }
        })
        .collect()
}

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("sqlite_ingest");
    for (fsync, name) in [
        (FsyncPolicy::Always, "fsync_always"),
        (FsyncPolicy::Os, "fsync_os"),
    ] {
        for rows in [20_000usize, 100, 1] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut store =
                SqliteStore::open(&dir.path().join("bench.db"), fsync).expect("open store");
            let mut next_ts = 1_700_000_000_000_000_000i64;
            group.throughput(Throughput::Elements(rows as u64));
            // Large transactions take tens of ms each: fewer samples keep the run short.
            group.sample_size(if rows >= 10_000 { 10 } else { 30 });
            group.bench_with_input(
                BenchmarkId::new(name, format!("{rows}_rows_per_txn")),
                &rows,
                |b, &rows| {
                    b.iter_custom(|iters| {
                        let mut spent = Duration::ZERO;
                        for _ in 0..iters {
                            let readings = batch(next_ts, rows);
                            next_ts += rows as i64;
                            let start = Instant::now();
                            store.write_batch(&readings).expect("write batch");
                            spent += start.elapsed();
                        }
                        spent
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, ingest);
criterion_main!(benches);
