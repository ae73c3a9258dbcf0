//! [`ClientError`]: why a client run could not produce a report. Losses are not errors:
//! they are counted in the [`super::RunReport`]; only `cli.rs` turns either into an exit code.

use super::spool::SpoolError;

/// Why a client run ended without a report.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection (TCP and handshake) succeeded within the connect timeout.
    #[error("cannot reach {addr}: {cause}")]
    Unreachable { addr: String, cause: String },
    /// The server refused the `--token` (unknown, revoked, malformed): permanent, so the
    /// run stops instead of reconnecting. With several servers, only once every one of
    /// them refused it in a row (one round); the message names each.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The TLS files (`--ca`, `--tls-cert`, `--tls-key`) cannot be used.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The spool could not be opened (or a spool task died).
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// An earlier spool operation was cancelled or died and took the spool with it.
    #[error("the spool was lost by an earlier failure")]
    SpoolLost,
    /// The report could not be written (stdout closed, e.g. `| head`): the run stops.
    #[error("writing the report: {0}")]
    Output(#[source] std::io::Error),
    /// A task the run depends on panicked.
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl ClientError {
    /// Whether this is only the reader of the report having gone away (`| head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ClientError::Output(err) if err.kind() == std::io::ErrorKind::BrokenPipe)
    }
}
