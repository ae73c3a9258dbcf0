//! What one `TCP_INFO` sample costs the server: `net::tcp_info::read` (one `getsockopt`
//! plus decoding) on an established loopback connection. The server takes one per
//! connection per `--tcp-info-interval` while the connection sends, so at 10,000
//! connections and a 10 s interval this is 1,000 calls per second.

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sensorlink::net::tcp_info;

fn read_tcp_info(c: &mut Criterion) {
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

    let mut group = c.benchmark_group("tcp_info");
    group.throughput(Throughput::Elements(1));
    group.bench_function("read_established", |b| {
        b.iter(|| tcp_info::read(black_box(&server)).expect("TCP_INFO on a loopback socket"))
    });
    group.finish();
}

criterion_group!(benches, read_tcp_info);
criterion_main!(benches);
