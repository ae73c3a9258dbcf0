//! Store ingest rates through `Store::write_batch`, without the network:
//! - SQLite: rows per second by transaction size and fsync policy (what the group-commit
//!   writer does);
//! - memory: readings per second as `sensorlink bench --batch 64` delivers them (each batch
//!   one sensor's in-order readings, 50 sensors in turn), on a store kept full, so every
//!   insert also evicts (the steady state of a long run).
//!
//! Each batch inserts fresh rows (new timestamps), so the figure is for inserts, not for
//! the cheaper duplicate path. Only `write_batch` is timed; building the rows is not.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sensorlink::protocol::{FieldValue, Reading};
use sensorlink::store::memory::{MemoryStore, DEFAULT_CAPACITY};
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

/// `rows` in-order readings of sensor `bench-{sensor}` from `first_ts` on, one float
/// field: one batch of `sensorlink bench`.
fn sensor_batch(sensor: usize, first_ts: i64, rows: usize) -> Vec<StoredReading> {
    let name = format!("bench-{sensor}");
    (0..rows)
        .map(|i| StoredReading {
            reading: Reading {
                measurement: "bench".into(),
                tags: vec![("sensor".into(), name.clone())],
                fields: vec![("f0".into(), FieldValue::Float((i % 1000) as f64 / 10.0))],
                timestamp_ns: Some(first_ts + i as i64),
            },
            sensor: name.clone(),
            received_ns: first_ts,
        })
        .collect()
}

fn memory_ingest(c: &mut Criterion) {
    const SENSORS: usize = 50;
    const BATCH: usize = 64;
    let mut group = c.benchmark_group("memory_ingest");
    let mut store = MemoryStore::default();
    let mut next_ts = vec![1_700_000_000_000_000_000i64; SENSORS];
    let mut turn = 0;
    let mut next_batch = move || {
        let sensor = turn % SENSORS;
        turn += 1;
        let batch = sensor_batch(sensor, next_ts[sensor], BATCH);
        next_ts[sensor] += BATCH as i64;
        batch
    };
    // Full before timing: every timed insert evicts the oldest reading too.
    while store.len() < DEFAULT_CAPACITY {
        store.write_batch(&next_batch()).expect("write batch");
    }
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("in_order_64_per_batch_full", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            // Built a chunk at a time, so a long run never holds millions of readings.
            while left > 0 {
                let chunk = left.min(256);
                left -= chunk;
                let batches: Vec<_> = (0..chunk).map(|_| next_batch()).collect();
                let start = Instant::now();
                for batch in &batches {
                    store.write_batch(batch).expect("write batch");
                }
                spent += start.elapsed();
            }
            spent
        })
    });
    group.finish();
}

criterion_group!(benches, memory_ingest, ingest);
criterion_main!(benches);
