//! `sensorlink client`: produce readings, deliver each one, measure every round trip.
//!
//! [`source`] makes values, [`state`] keeps each reading until it is acknowledged (no I/O),
//! [`stats`] accumulates RTTs, [`output`] prints, [`transport`] connects and decodes replies.
//! [`engine`] is the one event loop over all of them: connect, send, match acks, report
//! reply timeouts, reconnect (to the next server address at once, or after a [`backoff`]
//! with jitter once every address failed: [`failover`]), resend what was not acknowledged,
//! drain at the end. [`line`] and [`legacy`] are its two [`session`]s (line
//! protocol with `sync`/`ack`, and the seed's bytes). [`spool`] keeps readings on disk
//! ([`spool_io`] runs its work on a blocking thread). A run returns a [`RunReport`] or a
//! [`ClientError`]; each reading ends acked or lost (rejected, dropped, unacked at exit).

pub mod backoff;
pub mod disconnect;
mod engine;
pub mod error;
pub mod failover;
pub mod kernel;
pub mod legacy;
mod line;
pub mod link;
mod measure;
pub mod output;
pub mod report;
pub mod samples;
mod session;
pub mod source;
pub mod spool;
pub mod spool_io;
pub mod state;
pub mod stats;
pub mod transport;
pub mod turns;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::FieldValue;
pub use backoff::{Backoff, INITIAL_BACKOFF};
pub use error::ClientError;
use legacy::LegacySession;
use line::LineSession;
use output::Printer;
pub use report::{RunPicture, RunReport};
use source::{Source, SourceSpec};
use transport::{Connector, TcpConnector};

/// Validated client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The collectors, in the order they are tried (at least one; see [`failover`]).
    pub servers: Vec<String>,
    /// The `sensor` tag of every reading and link report; `None` (with a token only): sent
    /// untagged, stored under the token's one sensor.
    pub sensor: Option<String>,
    pub measurement: String,
    pub interval: Duration,
    pub count: Option<u64>,
    /// A reading not acknowledged within this time after it was sent is reported lost
    /// (and the connection re-opened).
    pub reply_timeout: Duration,
    /// Bounds opening a connection: the TCP connect, and the opening `ping`/`pong`. Also how
    /// long the first connection may take to succeed before the server is unreachable.
    pub connect_timeout: Duration,
    /// Once the source has ended (or on Ctrl-C/SIGTERM): how long to keep delivering what
    /// is pending before it is reported lost.
    pub drain_timeout: Duration,
    /// Longest time the server may take no bytes at all while we have some to send.
    pub write_timeout: Duration,
    pub legacy: bool,
    pub json: bool,
    pub source: SourceSpec,
    pub max_pending: usize,
    pub max_backoff: Duration,
    /// On-disk queue directory (`--spool`); `None` keeps unacked readings in memory only.
    pub spool: Option<std::path::PathBuf>,
    pub spool_max_bytes: u64,
    pub spool_max_age: Option<Duration>,
    /// How often a link report is sent (line mode; zero: never).
    pub link_report: Duration,
    /// Where the picture of the run goes at its end (`--report FILE.svg|.png`).
    pub report: Option<std::path::PathBuf>,
    /// Connect over TLS; `None`: plain TCP.
    pub tls: Option<ClientTls>,
    /// `--token`: sent as `auth <token>` first on every line-mode connection.
    pub token: Option<crate::protocol::control::AuthSecret>,
}

/// How the client's TLS is set up (files are read when the run starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the server's certificate; `None`: the compiled-in Mozilla roots.
    pub ca: Option<std::path::PathBuf>,
    /// The name the server's certificate is checked against; `None`: the host of `addr`.
    pub server_name: Option<String>,
    /// Mutual TLS: our certificate and key.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// Run the client over TCP, printing on stdout, until the count is reached, the source
/// ends, or Ctrl-C / SIGTERM (pending readings are delivered first).
///
/// # Errors
/// See [`run_with`].
pub async fn run(config: ClientConfig) -> Result<RunReport, ClientError> {
    let stop = CancellationToken::new();
    stop_on_signal(stop.clone());
    let printer = Printer::stdout(config.json);
    match &config.tls {
        None => {
            let connectors = (config.servers.iter())
                .map(|addr| TcpConnector {
                    addr: addr.clone(),
                    timeout: config.connect_timeout,
                })
                .collect();
            run_failover(&config, connectors, printer, stop).await
        }
        Some(tls) => {
            // Each address's certificate is checked against its own host name (or the one
            // --tls-server-name gives them all).
            let connectors = (config.servers.iter())
                .map(|addr| {
                    tls_connector(addr, tls)
                        .map_err(|err| ClientError::Tls(format!("{addr}: {err:#}")))
                })
                .collect::<Result<_, _>>()?;
            run_failover(&config, connectors, printer, stop).await
        }
    }
}

/// The TLS connector `tls` describes, to `addr`.
fn tls_connector(addr: &str, tls: &ClientTls) -> anyhow::Result<transport::TlsTcpConnector> {
    let identity = tls
        .identity
        .as_ref()
        .map(|(cert, key)| (cert.as_path(), key.as_path()));
    let rustls_config = crate::tls::client_config(tls.ca.as_deref(), identity)?;
    Ok(transport::TlsTcpConnector {
        addr: addr.to_string(),
        connector: crate::tls::TlsConnector::from(rustls_config),
        server_name: crate::tls::server_name(addr, tls.server_name.as_deref())?,
    })
}

/// Run the client over any [`Connector`], printing with `printer`, until the count is
/// reached, the source ends, or `stop` is cancelled (pending readings are delivered first,
/// within the drain timeout).
///
/// # Errors
/// [`ClientError::Unreachable`] when no connection ever succeeded within the connect
/// timeout; a spool that cannot be opened; output that cannot be written (the run stops at
/// once). Lost readings are not errors: they are counted in the report.
pub async fn run_with<C: Connector>(
    config: &ClientConfig,
    connector: C,
    printer: Printer,
    stop: CancellationToken,
) -> Result<RunReport, ClientError> {
    run_failover(config, vec![connector], printer, stop).await
}

/// [`run_with`] over several servers: `connectors[i]` opens connections to
/// `config.servers[i]`, and the run fails over between them (see [`failover`]).
///
/// # Errors
/// See [`run_with`]; unreachable means no address could be reached.
pub async fn run_failover<C: Connector>(
    config: &ClientConfig,
    connectors: Vec<C>,
    mut printer: Printer,
    stop: CancellationToken,
) -> Result<RunReport, ClientError> {
    printer.start(
        &config.servers,
        config.sensor.as_deref(),
        config.interval,
        config.legacy,
        config.reply_timeout,
    );
    // Ping-pong: the producer makes each value when the engine gives it a turn.
    let turns = config.interval.is_zero().then(turns::Turns::new);
    let values = spawn_producer(config, turns.clone(), stop.clone());
    run_values(config, connectors, printer, values, turns, stop).await
}

/// [`run_with`] over values that come from `values` (the producer's end of the channel):
/// the engine takes every value sent before the channel closes, even after a stop.
pub(crate) async fn run_values<C: Connector>(
    config: &ClientConfig,
    connectors: Vec<C>,
    printer: Printer,
    values: mpsc::Receiver<(FieldValue, i64)>,
    turns: Option<turns::Turns>,
    stop: CancellationToken,
) -> Result<RunReport, ClientError> {
    if config.legacy {
        engine::Engine::new(config, LegacySession, printer, values, stop)
            .with_turns(turns)
            .run(connectors)
            .await
    } else {
        let session = LineSession {
            measurement: config.measurement.clone(),
            sensor: config.sensor.clone(),
            token: config.token.clone(),
        };
        engine::Engine::new(config, session, printer, values, stop)
            .with_turns(turns)
            .run(connectors)
            .await
    }
}

/// Cancel `stop` on the first Ctrl-C (SIGINT) or SIGTERM. The handlers are installed
/// before this returns, so a signal arriving right after start is not the default (death).
fn stop_on_signal(stop: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::spawn(async move {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                    stop.cancel();
                });
                return;
            }
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!(cause = %err, "cannot watch SIGTERM; only Ctrl-C stops the client");
            }
        }
    }
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
}

/// Produce values from the source on their own task, so readings keep being made (with
/// their own timestamps) while the connection is down.
///
/// With `turns` (ping-pong), each value waits for the engine's turn.
fn spawn_producer(
    config: &ClientConfig,
    turns: Option<turns::Turns>,
    stop: CancellationToken,
) -> mpsc::Receiver<(FieldValue, i64)> {
    let (tx, rx) = mpsc::channel(1024);
    let mut source = Source::new(&config.source, config.interval, config.legacy);
    let count = config.count;
    tokio::spawn(async move {
        let mut produced = 0u64;
        let mut errors_in_a_row = 0u32;
        while count.is_none_or(|count| produced < count) {
            if let Some(turns) = &turns {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    () = turns.wait() => {}
                }
            }
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = source.next() => next,
            };
            match next {
                Ok(Some(value)) => {
                    errors_in_a_row = 0;
                    produced += 1;
                    if tx.send((value, crate::timefmt::now_ns())).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    // No value was made: the turn it had is still the producer's.
                    if let Some(turns) = &turns {
                        turns.give();
                    }
                    errors_in_a_row += 1;
                    tracing::warn!(cause = %err, "source gave no value");
                    if errors_in_a_row >= 10
                        && matches!(err, source::SourceError::NotANumber { .. })
                    {
                        tracing::warn!("source keeps failing");
                    }
                }
            }
        }
    });
    rx
}

/// Sleep until `deadline`, or forever when there is nothing to wait for.
pub(crate) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each address's certificate is checked against its own host, unless one name is given.
    #[test]
    fn each_address_gets_its_own_tls_server_name() {
        let tls = ClientTls {
            ca: None,
            server_name: None,
            identity: None,
        };
        let name = |addr: &str, tls: &ClientTls| {
            tls_connector(addr, tls)
                .expect("a valid connector")
                .server_name
        };
        let expect = |name: &str| {
            rustls_pki_types::ServerName::try_from(name.to_string()).expect("a valid name")
        };
        assert_eq!(name("c1.example:8889", &tls), expect("c1.example"));
        assert_eq!(name("c2.example:8889", &tls), expect("c2.example"));
        assert_eq!(name("127.0.0.1:8889", &tls), expect("127.0.0.1"));
        let given = ClientTls {
            server_name: Some("collector.example".into()),
            ..tls
        };
        assert_eq!(name("c2.example:8889", &given), expect("collector.example"));
    }
}
