//! What one `TCP_INFO` sample costs the server: `net::tcp_info::read` (one `getsockopt`
//! plus decoding) on an established loopback connection, and the whole sample as a
//! connection takes it (read, then the server-wide metrics and the live view's registry
//! of 1,000 sensors, with the Prometheus recorder installed). The server takes one per
//! connection per `--tcp-info-interval` while the connection sends, so at 10,000
//! connections and a 10 s interval, at most 1,000 per second.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sensorlink::events::{self, Event as _, Mode, TcpSampled};
use sensorlink::live::{LiveConfig, LiveConnection, Registry, TcpFigures};
use sensorlink::net::tcp_info;
use sensorlink::protocol::ilp;
use sensorlink::store::StoredReading;

/// An established loopback pair that has exchanged a reading and its ack: (client, server).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback port 0");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let mut client = TcpStream::connect(addr).expect("connect to our own listener");
    let (mut server, _) = listener.accept().expect("accept our own connection");
    // Some traffic both ways, so the kernel has RTT samples as on a sensor connection.
    client.write_all(b"m v=1i\nsync a\n").expect("write");
    let mut got = [0_u8; 14];
    server.read_exact(&mut got).expect("read");
    server.write_all(b"ack a\n").expect("write");
    let mut ack = [0_u8; 6];
    client.read_exact(&mut ack).expect("read");
    (client, server)
}

/// A connection of the live view that has carried `sensor`.
fn carrying(registry: &Arc<Registry>, sensor: &str, port: u16) -> LiveConnection {
    let reading = StoredReading {
        reading: ilp::parse(format!("cpu,sensor={sensor} v=1i 1000").as_bytes())
            .expect("a valid line"),
        sensor: sensor.to_string(),
        received_ns: 1_732_448_785_000_000_000,
    };
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut live = LiveConnection::new(registry.clone(), peer);
    let mut summary = [live.summarize(&[reading], None)];
    live.committed(Mode::Line, &mut summary, None);
    live
}

fn read_tcp_info(c: &mut Criterion) {
    let (_client, server) = pair();
    let mut group = c.benchmark_group("tcp_info");
    group.throughput(Throughput::Elements(1));
    group.bench_function("read_established", |b| {
        b.iter(|| tcp_info::read(black_box(&server)).expect("TCP_INFO on a loopback socket"))
    });

    // The whole sample, as `server::tcp_sample` and the connection take it.
    events::install_prometheus().expect("no other recorder in this bench");
    let registry = Arc::new(Registry::new(&LiveConfig::default()));
    // This connection's sensor first: it gets a `sensor` label, the dearer path.
    let live = carrying(&registry, "sampled", 2);
    let _others: Vec<LiveConnection> = (0..1000)
        .map(|i| carrying(&registry, &format!("bench-{i}"), 3))
        .collect();
    group.bench_function("sample_and_store", |b| {
        b.iter(|| {
            let info = tcp_info::read(black_box(&server)).expect("TCP_INFO on a loopback socket");
            let figures = TcpFigures {
                srtt_us: info.rtt_us,
                rttvar_us: info.rttvar_us,
                min_rtt_us: info.min_rtt_us,
                retransmits: info.retransmits_total,
                sampled_at_ns: sensorlink::timefmt::now_ns(),
            };
            TcpSampled {
                srtt: figures.srtt(),
                retransmits: 0,
            }
            .emit();
            live.tcp_sampled(figures);
        })
    });
    group.finish();
}

criterion_group!(benches, read_tcp_info);
criterion_main!(benches);
