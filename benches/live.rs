//! The live view's cost on the ingest path: summarizing a 64-reading batch before submit
//! and handing it to the registry after its commit (one lock), per reading, with 1,000
//! sensors tracked. Compare with the server's whole CPU cost per reading (BENCHMARKS.md).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sensorlink::events::Mode;
use sensorlink::live::{LiveConfig, LiveConnection, Registry};
use sensorlink::protocol::ilp;
use sensorlink::store::StoredReading;

/// One connection's batch as `sensorlink bench --batch 64` sends it.
fn batch(sensor: &str) -> Vec<StoredReading> {
    (0..64)
        .map(|i| StoredReading {
            reading: ilp::parse(
                format!("cpu,sensor={sensor} f0={i}.5,f1={i}.25,f2=7 {}", 1_000 + i).as_bytes(),
            )
            .expect("a valid line"),
            sensor: sensor.to_string(),
            received_ns: 1_732_448_785_000_000_000 + i,
        })
        .collect()
}

fn summarize_and_commit(c: &mut Criterion) {
    let registry = Arc::new(Registry::new(&LiveConfig::default()));
    // 1,000 sensors already tracked, one open connection each.
    let _others: Vec<LiveConnection> = (0..1000)
        .map(|i| {
            let mut live = LiveConnection::new(registry.clone(), "127.0.0.1:1".parse().unwrap());
            let mut summary = [live.summarize(&batch(&format!("bench-{i}")), None)];
            live.committed(Mode::Line, &mut summary, None);
            live
        })
        .collect();
    let mut live = LiveConnection::new(registry.clone(), "127.0.0.1:2".parse().unwrap());
    let readings = batch("bench-500");
    let mut group = c.benchmark_group("live");
    group.throughput(Throughput::Elements(readings.len() as u64));
    group.bench_function("summarize_and_commit_64", |b| {
        b.iter_batched(
            std::time::Instant::now,
            |written_at| {
                let mut summary = [live.summarize(black_box(&readings), Some(written_at))];
                live.committed(Mode::Line, &mut summary, Some(written_at));
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("summarize_64", |b| {
        b.iter(|| live.summarize(black_box(&readings), None))
    });
    group.finish();
}

criterion_group!(benches, summarize_and_commit);
criterion_main!(benches);
