//! sensorlink: carries sensor readings over TCP from many devices to a collector,
//! acknowledges every reading once it is stored, and measures the link itself.
//!
//! # Layout
//! - [`protocol`]: bytes ⇄ frames (line protocol, control lines, the seed's legacy
//!   messages) and the one line-protocol escaping ([`protocol::escape`]); pure, no I/O.
//! - [`server`]: listener, per-connection loop, the streams it is served over
//!   (`stream::PeerStream`: any `AsyncRead + AsyncWrite`, TLS in `server::tls`), graceful
//!   shutdown.
//! - [`store`]: the backend-neutral write seam ([`store::writer::StoreHandle`], group commit
//!   or a store's own concurrency) and read path ([`store::StoreReader`]), the memory and
//!   SQLite stores, their shared encoding, and one conformance suite run on every store.
//! - [`client`]: the sensor side: `transport` (connect, handshake, bounded reply decoders,
//!   generic over `AsyncRead + AsyncWrite`; also used by `bench`), `engine` (the one event
//!   loop: reconnect after a `backoff`, resend, drain) with its `line` and `legacy`
//!   implementations of `session::Session`, an
//!   I/O-free delivery state machine (`state`), value sources, RTT statistics, the spool
//!   (`client/spool/`: record format + CRC, recovery scan, state file, advisory lock; run
//!   on a blocking thread by `spool_io`), `link` (the `--link-report` readings), `samples`
//!   (bounded RTT-over-time samples for `--report`), and `ClientError` / `RunReport`.
//! - [`events`]: each named event (connection accepted, line rejected, batch committed, …)
//!   logs once and counts once; one table of every metric (name, type, unit, help,
//!   buckets), the bounded label values (`events/labels.rs`), and the Prometheus recorder.
//! - [`live`]: the live view fed by committed readings: each sensor's state, values,
//!   sparkline, rate and link health (`/api/sensors`), and the bounded event queues of
//!   `/api/events` subscribers.
//! - [`http`]: the HTTP side beside the sensor port (axum): JSON API, `/metrics`, health
//!   probes, the embedded dashboard (`http/assets/`), the read-token guard (`http/access.rs`);
//!   docs/http-api.md is its contract.
//! - [`query`]: `sensorlink query` / `sensorlink stats` output.
//! - [`mod@bench`]: `sensorlink bench`, the load generator: `bench/` holds flags,
//!   connection, line and legacy sessions, pacing, progress, report and per-second
//!   timeline, one file each.
//! - [`plot`]: pictures of runs (`client --report`, `bench --report`) as SVG or PNG.
//! - [`tls`]: rustls configurations for the sensor port (server, client, mutual TLS) from
//!   PEM files, and `sensorlink cert` (a development CA and certificates).
//! - [`net`]: the kernel's view of a socket: `net::tcp_info` reads Linux `TCP_INFO` (srtt,
//!   min RTT, retransmits, congestion window, delivery rate) from any TCP socket.
//! - [`probe`]: UDP probes (`sensorlink probe`, and the server's reflector): real loss up
//!   and down, one-way delay, IPDV; `probe/wire.rs` is the datagram format.
//! - [`cli`]: command-line flags.
//! - [`config`]: defaults < TOML file < environment < flags, validated into the server's
//!   and client's settings; `--print-config`.

pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod events;
pub mod http;
pub mod live;
pub mod net;
pub mod plot;
pub mod probe;
pub mod protocol;
pub mod query;
pub mod server;
pub mod store;
pub mod timefmt;
pub mod tls;

/// The seed's port, kept as our default.
pub const DEFAULT_PORT: u16 = 8889;
