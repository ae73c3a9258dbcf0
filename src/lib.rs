//! sensorlink: carries sensor readings over TCP from many devices to a collector,
//! acknowledges every reading once it is stored, and measures the link itself.
//!
//! # Layout
//! - [`protocol`]: bytes ⇄ frames (line protocol, control lines, the seed's legacy
//!   messages); pure, no I/O.
//! - [`server`]: listener, per-connection loop (generic over any `AsyncRead + AsyncWrite`),
//!   graceful shutdown.
//! - [`store`]: the [`store::Store`] trait, its memory and SQLite implementations, and the
//!   group-commit writer in front of them.
//! - [`client`]: the sensor side: `transport` (connect, handshake, bounded reply decoders,
//!   generic over `AsyncRead + AsyncWrite`; also used by `bench`), `engine` (the one event
//!   loop: reconnect with backoff, resend, drain) with its `line` and `legacy` sessions, an
//!   I/O-free delivery state machine (`state`), value sources, RTT statistics, the spool
//!   (`client/spool/`: record format + CRC, recovery scan, state file, advisory lock; run
//!   on a blocking thread by `spool_io`), and `ClientError` / `RunReport`.
//! - [`metrics`]: every counter the server keeps, in one place.
//! - [`query`]: `sensorlink query` / `sensorlink stats` output.
//! - [`mod@bench`]: `sensorlink bench`, the load generator: `bench/` holds flags,
//!   connection, line and legacy sessions, pacing, progress and report, one file each.
//! - [`cli`]: command-line flags.

pub mod bench;
pub mod cli;
pub mod client;
pub mod metrics;
pub mod protocol;
pub mod query;
pub mod server;
pub mod store;
pub mod timefmt;

/// The seed's port, kept as our default.
pub const DEFAULT_PORT: u16 = 8889;
