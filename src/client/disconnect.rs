//! Why a connection ended or could not be opened, classified from the error's
//! [`std::io::ErrorKind`] and raw OS error (never from its message text), and the run's
//! count of each kind (the summary's `disconnects`).
//!
//! A reply later than the reply timeout is not one of them: it is a `timeout` (the reading
//! is resent), even when it makes the client reconnect; its [`DisconnectKind::ReplyTimeout`]
//! only names the reason in the `disconnected` event.

use std::io;

use serde::Serialize;

use super::transport::TransportError;

/// What ended a connection, or kept one from opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectKind {
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`, `ECONNABORTED`).
    Reset,
    /// The server closed the connection (end of stream).
    ServerClosed,
    /// The server took none of our bytes within the write timeout.
    WriteTimeout,
    /// Nothing listens at the address (`ECONNREFUSED`).
    Refused,
    /// No route to the server (`EHOSTUNREACH`, `ENETUNREACH`).
    NoRoute,
    /// Opening the connection (connect, TLS, first pong) took longer than the connect
    /// timeout.
    ConnectTimeout,
    /// The server refused the `--token` (with several servers, only fatal once every one
    /// refused it in one round).
    AuthFailed,
    /// Anything else (a broken reply, the client's own limits, a store failure).
    Other,
    /// A reply later than the reply timeout (counted in `timeouts`, not here).
    ReplyTimeout,
}

impl DisconnectKind {
    /// The name in `--json` (`disconnected` event's `kind`, `disconnects`' keys).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::ServerClosed => "server_closed",
            Self::WriteTimeout => "write_timeout",
            Self::Refused => "refused",
            Self::NoRoute => "no_route",
            Self::ConnectTimeout => "connect_timeout",
            Self::AuthFailed => "auth_failed",
            Self::Other => "other",
            Self::ReplyTimeout => "reply_timeout",
        }
    }

    /// The kind of an I/O error; `connecting`: it came while opening the connection (a
    /// time-out then is the connect timeout).
    pub fn of_io(err: &io::Error, connecting: bool) -> Self {
        if let Some(code) = err.raw_os_error() {
            match code {
                libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED => return Self::Reset,
                libc::ECONNREFUSED => return Self::Refused,
                libc::EHOSTUNREACH | libc::ENETUNREACH => return Self::NoRoute,
                _ => {}
            }
        }
        match err.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => Self::Reset,
            io::ErrorKind::ConnectionRefused => Self::Refused,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => Self::NoRoute,
            io::ErrorKind::TimedOut if connecting => Self::ConnectTimeout,
            // A TLS peer that closes without `close_notify`.
            io::ErrorKind::UnexpectedEof => Self::ServerClosed,
            _ => Self::Other,
        }
    }

    /// The kind of a transport error (see [`DisconnectKind::of_io`] for `connecting`).
    pub fn of_transport(err: &TransportError, connecting: bool) -> Self {
        match err {
            TransportError::Io(err) => Self::of_io(err, connecting),
            TransportError::TimedOut { .. } if connecting => Self::ConnectTimeout,
            TransportError::Closed => Self::ServerClosed,
            TransportError::AuthFailed(_) => Self::AuthFailed,
            _ => Self::Other,
        }
    }
}

/// How many connections ended (or failed to open) for each reason; every key is always
/// present in `--json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DisconnectCounts {
    pub reset: u64,
    pub server_closed: u64,
    pub write_timeout: u64,
    pub refused: u64,
    pub no_route: u64,
    pub connect_timeout: u64,
    pub other: u64,
}

impl DisconnectCounts {
    /// Count one of `kind` (a reply timeout is counted as a timeout, not here).
    pub fn count(&mut self, kind: DisconnectKind) {
        let slot = match kind {
            DisconnectKind::Reset => &mut self.reset,
            DisconnectKind::ServerClosed => &mut self.server_closed,
            DisconnectKind::WriteTimeout => &mut self.write_timeout,
            DisconnectKind::Refused => &mut self.refused,
            DisconnectKind::NoRoute => &mut self.no_route,
            DisconnectKind::ConnectTimeout => &mut self.connect_timeout,
            // Counted as `other`: the summary's keys stay as JSON readers know them (the
            // `disconnected` event and `servers[].failures` name it).
            DisconnectKind::AuthFailed | DisconnectKind::Other => &mut self.other,
            DisconnectKind::ReplyTimeout => return,
        };
        *slot += 1;
    }

    /// Every disconnect counted.
    pub fn total(&self) -> u64 {
        self.reset
            + self.server_closed
            + self.write_timeout
            + self.refused
            + self.no_route
            + self.connect_timeout
            + self.other
    }

    /// The summary's text: `disconnects: 2 reset, 1 refused` (the kinds seen only).
    pub fn line(&self) -> String {
        let kinds = [
            (self.reset, "reset"),
            (self.server_closed, "server closed"),
            (self.write_timeout, "write timeout"),
            (self.refused, "refused"),
            (self.no_route, "no route"),
            (self.connect_timeout, "connect timeout"),
            (self.other, "other"),
        ];
        let seen: Vec<String> = kinds
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
        format!("disconnects: {}", seen.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn os_errors_are_classified_by_their_code() {
        assert_eq!(
            DisconnectKind::of_io(&os(libc::ECONNRESET), false),
            DisconnectKind::Reset
        );
        assert_eq!(
            DisconnectKind::of_io(&os(libc::EPIPE), false),
            DisconnectKind::Reset
        );
        assert_eq!(
            DisconnectKind::of_io(&os(libc::ECONNREFUSED), true),
            DisconnectKind::Refused
        );
        // No route cannot be provoked on loopback: only here.
        assert_eq!(
            DisconnectKind::of_io(&os(libc::EHOSTUNREACH), true),
            DisconnectKind::NoRoute
        );
        assert_eq!(
            DisconnectKind::of_io(&os(libc::ENETUNREACH), true),
            DisconnectKind::NoRoute
        );
        assert_eq!(
            DisconnectKind::of_io(&os(libc::ETIMEDOUT), true),
            DisconnectKind::ConnectTimeout
        );
        assert_eq!(
            DisconnectKind::of_io(&os(libc::ETIMEDOUT), false),
            DisconnectKind::Other,
            "the kernel giving up on an open connection is not a connect timeout"
        );
    }

    /// Errors wrapped with context (TLS, `timed_out`) keep their kind; the message is never
    /// read.
    #[test]
    fn wrapped_errors_are_classified_by_their_kind() {
        let tls = io::Error::new(io::ErrorKind::ConnectionReset, "TLS handshake: reset");
        assert_eq!(DisconnectKind::of_io(&tls, true), DisconnectKind::Reset);
        let timeout = super::super::transport::timed_out("connect");
        assert_eq!(
            DisconnectKind::of_io(&timeout, true),
            DisconnectKind::ConnectTimeout
        );
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed connection");
        assert_eq!(
            DisconnectKind::of_io(&eof, false),
            DisconnectKind::ServerClosed
        );
        let misleading = io::Error::other("connection refused");
        assert_eq!(
            DisconnectKind::of_io(&misleading, true),
            DisconnectKind::Other
        );
    }

    #[test]
    fn transport_errors_are_classified() {
        assert_eq!(
            DisconnectKind::of_transport(&TransportError::Closed, false),
            DisconnectKind::ServerClosed
        );
        let first_pong = TransportError::TimedOut { what: "first pong" };
        assert_eq!(
            DisconnectKind::of_transport(&first_pong, true),
            DisconnectKind::ConnectTimeout
        );
        assert_eq!(
            DisconnectKind::of_transport(&TransportError::ReplyTooLong, false),
            DisconnectKind::Other
        );
        let refused = TransportError::Io(os(libc::ECONNREFUSED));
        assert_eq!(
            DisconnectKind::of_transport(&refused, true),
            DisconnectKind::Refused
        );
    }

    #[test]
    fn counts_keep_reply_timeouts_out() {
        let mut counts = DisconnectCounts::default();
        for kind in [
            DisconnectKind::Reset,
            DisconnectKind::Reset,
            DisconnectKind::Refused,
            DisconnectKind::ReplyTimeout,
        ] {
            counts.count(kind);
        }
        assert_eq!(counts.total(), 3);
        assert_eq!(counts.line(), "disconnects: 2 reset, 1 refused");
        let json = serde_json::to_value(counts).expect("plain counts serialize");
        let keys: Vec<&String> = json.as_object().expect("an object").keys().collect();
        assert_eq!(keys.len(), 7, "every key always present: {json}");
    }
}
