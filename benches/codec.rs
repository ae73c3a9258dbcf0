//! Line protocol throughput: one typical line through `ilp::parse`, and a 64 KiB read
//! through `LineDecoder`. Both report lines per second. Beside them, what the quotas add
//! per reading (`ConnQuota::admit` of a known series), to compare with the parse.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sensorlink::protocol::codec::LineDecoder;
use sensorlink::protocol::{ilp, DEFAULT_MAX_LINE_BYTES};
use sensorlink::server::quota::{ConnQuota, QuotaLimits, Quotas};

const LINE: &[u8] =
    b"weather,sensor=kitchen-01,site=lab temperature=21.53,humidity=40i 1732448785123456789";

fn parse_line(c: &mut Criterion) {
    let mut group = c.benchmark_group("ilp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_typical_line", |b| {
        b.iter(|| ilp::parse(black_box(LINE)))
    });
    group.finish();
}

fn decode_buffer(c: &mut Criterion) {
    // As many whole lines as fit in one 64 KiB read.
    let lines = 64 * 1024 / (LINE.len() + 1);
    let mut input = Vec::with_capacity(64 * 1024);
    for _ in 0..lines {
        input.extend_from_slice(LINE);
        input.push(b'\n');
    }
    let mut group = c.benchmark_group("line_decoder");
    group.throughput(Throughput::Elements(lines as u64));
    group.bench_function("decode_64k", |b| {
        b.iter_batched(
            // The copy into a fresh buffer is setup, not measured.
            || BytesMut::from(&input[..]),
            |mut buf| {
                let mut decoder = LineDecoder::new(DEFAULT_MAX_LINE_BYTES);
                let mut n = 0usize;
                while let Some(frame) = decoder.decode(&mut buf) {
                    black_box(frame);
                    n += 1;
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn quota_admit(c: &mut Criterion) {
    let reading = ilp::parse(LINE).expect("a valid line");
    let quotas = Quotas::new(QuotaLimits {
        rate_per_connection: u32::MAX,
        ..QuotaLimits::default()
    });
    let now = tokio::time::Instant::now();
    let mut quota = ConnQuota::new(quotas, now);
    let mut group = c.benchmark_group("quota");
    group.throughput(Throughput::Elements(1));
    // The series is known after the first call: the steady state of a sensor.
    group.bench_function("admit_known_series", |b| {
        b.iter(|| quota.admit(black_box(&reading), "10.0.0.1", now))
    });
    group.finish();
}

criterion_group!(benches, parse_line, decode_buffer, quota_admit);
criterion_main!(benches);
