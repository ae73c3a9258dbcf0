//! The bounded label values of the events' metrics: each enum lists every value its label
//! can take, so the number of series is fixed, and indexes its handles by `as usize`.

use crate::protocol::ProtocolError;

/// Why a served connection ended (the `reason` label of `connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Eof,
    Shutdown,
    IdleTimeout,
    /// Reading from the peer failed (reset).
    ReadFailed,
    /// Writing to the peer failed (reset, broken pipe).
    WriteFailed,
    WriteStalled,
    StoreFailed,
    /// No complete first line (or legacy message) within `--first-line-timeout`.
    FirstLineTimeout,
}

impl CloseReason {
    /// In declaration order, so `reason as usize` indexes it.
    pub(super) const ALL: [CloseReason; 8] = [
        CloseReason::Eof,
        CloseReason::Shutdown,
        CloseReason::IdleTimeout,
        CloseReason::ReadFailed,
        CloseReason::WriteFailed,
        CloseReason::WriteStalled,
        CloseReason::StoreFailed,
        CloseReason::FirstLineTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::Shutdown => "shutdown",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::ReadFailed => "read_failed",
            CloseReason::WriteFailed => "write_failed",
            CloseReason::WriteStalled => "write_stalled",
            CloseReason::StoreFailed => "store_failed",
            CloseReason::FirstLineTimeout => "first_line_timeout",
        }
    }
}

/// Why a new connection was closed at once (the `reason` label of
/// `connections_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// `--max-connections` are being served.
    MaxConnections,
    /// The source address holds `--max-connections-per-ip` already.
    PerIp,
    /// The source address opens connections faster than `--connect-rate-per-ip`.
    ConnectRate,
}

impl RefuseReason {
    /// In declaration order, so `reason as usize` indexes it.
    pub(super) const ALL: [RefuseReason; 3] = [
        RefuseReason::MaxConnections,
        RefuseReason::PerIp,
        RefuseReason::ConnectRate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::MaxConnections => "max_connections",
            RefuseReason::PerIp => "per_ip",
            RefuseReason::ConnectRate => "connect_rate",
        }
    }
}

/// What a SIGHUP reload re-read (the `what` label of `reloads_total`): one value per
/// [`crate::server::reload::Reloads::register`] caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadWhat {
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca`.
    Tls,
    /// The `--auth` token file.
    Auth,
}

impl ReloadWhat {
    /// In declaration order, so `what as usize` indexes it.
    pub(super) const ALL: [ReloadWhat; 2] = [ReloadWhat::Tls, ReloadWhat::Auth];

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadWhat::Tls => "tls",
            ReloadWhat::Auth => "auth",
        }
    }
}

/// The protocol a peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Line,
    Legacy,
}

impl Mode {
    /// In declaration order, so `mode as usize` indexes it.
    pub(super) const ALL: [Mode; 2] = [Mode::Line, Mode::Legacy];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Line => "line",
            Mode::Legacy => "legacy",
        }
    }
}

/// Why a line was rejected: the bounded `reason` label of `lines_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    Oversize,
    InvalidUtf8,
    InvalidReading,
    InvalidCommand,
    UnknownCommand,
    InvalidLegacy,
    TimestampOutOfRange,
    /// Over `--max-rate-per-connection` or `--max-rate-per-token`.
    RateLimited,
    /// A new series over `--max-new-series-per-connection` or `-per-token`.
    NewSeriesLimit,
}

impl RejectReason {
    /// In declaration order, so `reason as usize` indexes it.
    pub(super) const ALL: [RejectReason; 9] = [
        RejectReason::Oversize,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidReading,
        RejectReason::InvalidCommand,
        RejectReason::UnknownCommand,
        RejectReason::InvalidLegacy,
        RejectReason::TimestampOutOfRange,
        RejectReason::RateLimited,
        RejectReason::NewSeriesLimit,
    ];

    /// The reason `error` falls under.
    pub fn of(error: &ProtocolError) -> Self {
        match error {
            ProtocolError::LineTooLong { .. } => RejectReason::Oversize,
            ProtocolError::InvalidUtf8 => RejectReason::InvalidUtf8,
            ProtocolError::InvalidReading(_) => RejectReason::InvalidReading,
            ProtocolError::InvalidCommand(_) => RejectReason::InvalidCommand,
            ProtocolError::UnknownCommand(_) => RejectReason::UnknownCommand,
            ProtocolError::InvalidLegacy(_) => RejectReason::InvalidLegacy,
            ProtocolError::TimestampOutOfRange { .. } => RejectReason::TimestampOutOfRange,
            ProtocolError::RateLimited { .. } => RejectReason::RateLimited,
            ProtocolError::TooManyNewSeries { .. } => RejectReason::NewSeriesLimit,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversize => "oversize",
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidReading => "invalid_reading",
            RejectReason::InvalidCommand => "invalid_command",
            RejectReason::UnknownCommand => "unknown_command",
            RejectReason::InvalidLegacy => "invalid_legacy",
            RejectReason::TimestampOutOfRange => "timestamp_out_of_range",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::NewSeriesLimit => "new_series_limit",
        }
    }
}
