//! Line protocol throughput: one typical line through `ilp::parse`, and a 64 KiB read
//! through `LineDecoder`. Both report lines per second. Beside them, what the quotas add
//! per reading (`ConnQuota::admit` of a known series), to compare with the parse; and
//! `ilp_vs_iox`: one mixed input parsed by `ilp::parse` and by the `influxdb-line-protocol`
//! crate (the InfluxDB 3 / IOx parser), so a regression against that reference shows
//! (`bench/parser.sh` reads the estimates and prints the ratio).

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

/// One line of each kind the mixed input cycles through: typical bench and sensor lines,
/// escapes in every name, quoted strings (with escaped quotes), ints, unsigned ints, floats,
/// bools, several tags, and a line without a timestamp. Each must be valid for both parsers.
const MIXED: &[&str] = &[
    "m,sensor=bench-7 f0=123.4 1732448785123456789",
    "weather,sensor=kitchen-01,site=lab temperature=21.53,humidity=40i 1732448785123456789",
    r"cpu\ load,host=server\ 01,region=us\,west usage\ idle=98.5,count=3i 1732448785123456790",
    r#"events,sensor=door-3 state="open",note="said \"hi\" twice" 1732448785123456791"#,
    "switch,sensor=relay-9 on=true,ok=f,level=0.5,raw=17u 1732448785123456792",
    "env,building=b2,floor=3,room=301,sensor=th-12,unit=metric temperature=22.5,humidity=41.25,pressure=1013i,co2=412i 1732448785123456793",
    "m,sensor=bench-12 f0=7.1,f1=900.4,f2=-3.5e2 1732448785123456794",
    "heartbeat,sensor=gw-1 up=1i",
];

/// `MIXED`, cycled to `lines` lines, each ending in `\n`: one input built once for both.
fn mixed_input(lines: usize) -> String {
    let mut input = String::new();
    for line in MIXED.iter().cycle().take(lines) {
        input.push_str(line);
        input.push('\n');
    }
    input
}

/// Ours: split at `\n` (as the connection's decoder frames lines) and parse each line.
fn parse_ours(input: &str) -> usize {
    let mut ok = 0;
    for line in input.as_bytes().split(|&b| b == b'\n') {
        if !line.is_empty() && black_box(ilp::parse(line)).is_ok() {
            ok += 1;
        }
    }
    ok
}

/// IOx: its own line splitting (`parse_lines`) and parser.
fn parse_iox(input: &str) -> usize {
    influxdb_line_protocol::parse_lines(input)
        .filter(|line| black_box(line).is_ok())
        .count()
}

fn ilp_vs_iox(c: &mut Criterion) {
    const LINES: usize = 1024;
    let input = mixed_input(LINES);
    // Outside the timed loop: both parse every line, or the comparison means nothing.
    for line in MIXED {
        if let Err(err) = ilp::parse(line.as_bytes()) {
            panic!("ilp::parse rejects {line:?}: {err}");
        }
        if let Some(Err(err)) = influxdb_line_protocol::parse_lines(line).next() {
            panic!("influxdb_line_protocol rejects {line:?}: {err}");
        }
    }
    assert_eq!(
        parse_ours(&input),
        LINES,
        "ilp::parse: not every line parsed"
    );
    assert_eq!(
        parse_iox(&input),
        LINES,
        "influxdb_line_protocol: not every line parsed"
    );
    let mut group = c.benchmark_group("ilp_vs_iox");
    group.throughput(Throughput::Elements(LINES as u64));
    group.bench_function("sensorlink", |b| b.iter(|| parse_ours(black_box(&input))));
    group.bench_function("iox", |b| b.iter(|| parse_iox(black_box(&input))));
    group.finish();
}

criterion_group!(benches, parse_line, decode_buffer, quota_admit, ilp_vs_iox);
criterion_main!(benches);
