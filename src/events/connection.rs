//! Events of a connection's life on the server: open (a gauge held for its life), accepted
//! or refused at the door, a PROXY header or TLS handshake that failed, its mode detected,
//! a first line that never came, and its close.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{telemetry, CloseReason, Event, Mode, RefuseReason, Telemetry};
use crate::server::logging;

/// Counts one open connection for as long as it lives, so every exit path decrements it.
#[derive(Debug)]
pub struct OpenConnection<'a>(&'a Telemetry);

impl OpenConnection<'static> {
    pub fn new() -> Self {
        OpenConnection::with(telemetry())
    }
}

impl Default for OpenConnection<'static> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> OpenConnection<'a> {
    pub fn with(telemetry: &'a Telemetry) -> Self {
        telemetry.connections_open.increment(1.0);
        telemetry
            .totals
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        OpenConnection(telemetry)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_open.decrement(1.0);
        self.0
            .totals
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection got a permit and a task.
pub struct ConnectionAccepted;

impl Event for ConnectionAccepted {
    fn emit_to(self, t: &Telemetry) {
        tracing::debug!("connected");
        t.connections_accepted.increment(1);
    }
}

/// A connection was closed at once: a connection limit (`reason`) of `limit` was reached.
pub struct ConnectionRefused {
    pub peer: SocketAddr,
    pub reason: RefuseReason,
    /// The limit in force: connections, or new connections per second for `ConnectRate`.
    pub limit: usize,
}

impl Event for ConnectionRefused {
    fn emit_to(self, t: &Telemetry) {
        // Its own log budget: a flood of refused connections must not flood the log.
        if logging::allow_refused_connection() {
            let (peer, limit) = (self.peer, self.limit);
            match self.reason {
                RefuseReason::MaxConnections => {
                    tracing::warn!(%peer, limit, "connection limit reached; closing new connection")
                }
                RefuseReason::PerIp => {
                    tracing::warn!(%peer, limit, "per-IP connection limit reached; closing new connection")
                }
                RefuseReason::ConnectRate => {
                    tracing::warn!(%peer, per_second = limit, "per-IP connection rate exceeded; closing new connection")
                }
                RefuseReason::ProxyHeader => {
                    tracing::warn!(%peer, "no valid PROXY header; closing new connection")
                }
                RefuseReason::ProxyPeer => {
                    tracing::warn!(%peer, "not a balancer named by --proxy-protocol-from; closing new connection")
                }
            }
        }
        t.connections_refused[self.reason as usize].increment(1);
    }
}

/// `--proxy-protocol v2`: a connection did not open with a valid PROXY header (or none in
/// time); it is closed and counted as refused (`reason="proxy_header"`).
pub struct ProxyHeaderRefused<'a> {
    /// The TCP peer (the balancer, or whoever connected directly).
    pub peer: SocketAddr,
    pub error: &'a crate::server::proxy_protocol::ReceiveError,
}

impl Event for ProxyHeaderRefused<'_> {
    fn emit_to(self, t: &Telemetry) {
        // The refused-connection log budget: a scan of the port must not flood the log.
        if logging::allow_refused_connection() {
            tracing::warn!(peer = %self.peer, cause = %self.error, "no valid PROXY protocol v2 header (--proxy-protocol v2); closing connection");
        }
        t.connections_refused[RefuseReason::ProxyHeader as usize].increment(1);
    }
}

/// `accept()` failed (e.g. out of file descriptors).
pub struct AcceptFailed<'a> {
    pub error: &'a std::io::Error,
}

impl Event for AcceptFailed<'_> {
    fn emit_to(self, t: &Telemetry) {
        tracing::warn!(cause = %self.error, "accept failed");
        t.accept_errors.increment(1);
    }
}

/// A TLS handshake on the sensor port did not complete; the connection is closed.
pub struct TlsHandshakeFailed<'a> {
    pub peer: SocketAddr,
    /// `None`: it timed out.
    pub error: Option<&'a std::io::Error>,
}

impl Event for TlsHandshakeFailed<'_> {
    fn emit_to(self, t: &Telemetry) {
        // Shares the refused-connection log budget: a scan of the port must not flood the log.
        if logging::allow_refused_connection() {
            match self.error {
                Some(err) => {
                    tracing::warn!(peer = %self.peer, cause = %err, "TLS handshake failed")
                }
                None => tracing::warn!(peer = %self.peer, "TLS handshake timed out"),
            }
        }
        t.tls_handshakes_failed[usize::from(self.error.is_some())].increment(1);
    }
}

/// A peer sent no complete first line (or legacy message) within `--first-line-timeout`
/// (slowloris); the connection is closed (`connections_closed_total{reason}` counts it).
pub struct FirstLineMissed {
    pub timeout: Duration,
    /// Bytes of an incomplete line it had sent.
    pub pending_bytes: usize,
}

impl Event for FirstLineMissed {
    fn emit_to(self, _: &Telemetry) {
        // A swarm of slow peers must not flood the log.
        if logging::allow_slow_peer() {
            tracing::warn!(first_line_timeout = ?self.timeout, pending_bytes = self.pending_bytes, "no complete line in time; closing connection");
        }
    }
}

/// The peer's first bytes told its protocol.
pub struct ModeDetected {
    pub mode: Mode,
}

impl Event for ModeDetected {
    fn emit_to(self, t: &Telemetry) {
        match self.mode {
            Mode::Legacy => tracing::debug!("legacy peer (seed protocol)"),
            Mode::Line => tracing::debug!("line protocol peer"),
        }
        t.connections_mode[self.mode as usize].increment(1);
    }
}

/// A served connection ended.
pub struct ConnectionClosed {
    /// `None` when the peer sent nothing to tell its protocol by.
    pub mode: Option<Mode>,
    pub reason: CloseReason,
    pub accepted: u64,
    pub rejected: u64,
    pub acked: u64,
    pub duration: Duration,
}

impl Event for ConnectionClosed {
    fn emit_to(self, t: &Telemetry) {
        tracing::info!(
            mode = self.mode.map_or("none", Mode::as_str),
            end = self.reason.as_str(),
            accepted = self.accepted,
            rejected = self.rejected,
            acked = self.acked,
            duration_ms = u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
            "disconnected"
        );
        t.connections_closed[self.reason as usize].increment(1);
    }
}
