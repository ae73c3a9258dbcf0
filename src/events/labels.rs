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
    /// `--auth`: too many readings before a valid `auth`, or too many refused tokens.
    AuthFailed,
    /// `--auth`: the connection's token was revoked (or removed) by a reload.
    TokenRevoked,
    /// `--auth`: a legacy (seed) peer from outside every `--allow-legacy` network.
    LegacyNotAllowed,
}

impl CloseReason {
    /// In declaration order, so `reason as usize` indexes it.
    pub(super) const ALL: [CloseReason; 11] = [
        CloseReason::Eof,
        CloseReason::Shutdown,
        CloseReason::IdleTimeout,
        CloseReason::ReadFailed,
        CloseReason::WriteFailed,
        CloseReason::WriteStalled,
        CloseReason::StoreFailed,
        CloseReason::FirstLineTimeout,
        CloseReason::AuthFailed,
        CloseReason::TokenRevoked,
        CloseReason::LegacyNotAllowed,
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
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::TokenRevoked => "token_revoked",
            CloseReason::LegacyNotAllowed => "legacy_not_allowed",
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
    /// `--proxy-protocol v2`: no valid PROXY header in time.
    ProxyHeader,
    /// `--proxy-protocol-from`: the TCP peer is not a balancer whose header is believed.
    ProxyPeer,
}

impl RefuseReason {
    /// In declaration order, so `reason as usize` indexes it.
    pub(super) const ALL: [RefuseReason; 5] = [
        RefuseReason::MaxConnections,
        RefuseReason::PerIp,
        RefuseReason::ConnectRate,
        RefuseReason::ProxyHeader,
        RefuseReason::ProxyPeer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::MaxConnections => "max_connections",
            RefuseReason::PerIp => "per_ip",
            RefuseReason::ConnectRate => "connect_rate",
            RefuseReason::ProxyHeader => "proxy_header",
            RefuseReason::ProxyPeer => "proxy_peer",
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
    /// A reading before a valid `auth` (`--auth`).
    Unauthenticated,
    /// A reading outside its token's scope.
    NotPermitted,
    /// A reading refused because the connection's token was revoked.
    AuthFailed,
    /// Over `--max-rate-per-connection` or `--max-rate-per-token`.
    RateLimited,
    /// A new series over `--max-new-series-per-connection` or `-per-token`.
    NewSeriesLimit,
}

impl RejectReason {
    /// In declaration order, so `reason as usize` indexes it.
    pub(super) const ALL: [RejectReason; 12] = [
        RejectReason::Oversize,
        RejectReason::InvalidUtf8,
        RejectReason::InvalidReading,
        RejectReason::InvalidCommand,
        RejectReason::UnknownCommand,
        RejectReason::InvalidLegacy,
        RejectReason::TimestampOutOfRange,
        RejectReason::Unauthenticated,
        RejectReason::NotPermitted,
        RejectReason::AuthFailed,
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
            ProtocolError::Unauthenticated => RejectReason::Unauthenticated,
            ProtocolError::NotPermitted(_) => RejectReason::NotPermitted,
            ProtocolError::AuthFailed(_) => RejectReason::AuthFailed,
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
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::NotPermitted => "not_permitted",
            RejectReason::AuthFailed => "auth_failed",
        }
    }
}

/// The outcome of an `auth` line: the `result` label of `sensorlink_auth_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Ok,
    Malformed,
    Unknown,
    Revoked,
    /// The server has no `--auth`.
    Off,
}

impl AuthResult {
    /// In declaration order, so `result as usize` indexes it.
    pub const ALL: [AuthResult; 5] = [
        AuthResult::Ok,
        AuthResult::Malformed,
        AuthResult::Unknown,
        AuthResult::Revoked,
        AuthResult::Off,
    ];

    /// The result of a refused token.
    pub fn of(refusal: &crate::auth::Refusal) -> Self {
        use crate::auth::Refusal;
        match refusal {
            Refusal::Malformed => AuthResult::Malformed,
            Refusal::Unknown => AuthResult::Unknown,
            Refusal::Revoked(_) => AuthResult::Revoked,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Malformed => "malformed",
            AuthResult::Unknown => "unknown",
            AuthResult::Revoked => "revoked",
            AuthResult::Off => "off",
        }
    }
}
