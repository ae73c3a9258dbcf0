//! The wire protocol: bytes in, frames out, and frames back to bytes. No I/O here.
//!
//! Two modes share one port (see PROTOCOL.md):
//! - **line mode**: newline-terminated lines, each either an InfluxDB line-protocol reading
//!   ([`ilp`]) or a control line ([`control`]); framed by [`codec::LineDecoder`].
//! - **legacy mode**: the seed's bare `ping` / `ping / ('<time>', <n>)` messages without
//!   newlines, each answered by `pong` ([`legacy`]).
//!
//! [`codec::sniff`] tells the two apart from the first bytes a peer sends.

pub mod codec;
pub mod control;
pub mod escape;
pub mod ilp;
pub mod legacy;

use std::time::Duration;

use serde::Serialize;

/// Default limit on one line (and on one legacy message buffer), in bytes.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;

/// A field value with the type line protocol gives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// `1.5`, `1e3`, `-2` (no suffix): always finite.
    Float(f64),
    /// `12i`
    Int(i64),
    /// `12u`
    UInt(u64),
    /// `"text"` with `\"` and `\\` escapes.
    Str(String),
    /// `t`, `T`, `true`, `True`, `TRUE`, `f`, … `FALSE`
    Bool(bool),
}

impl FieldValue {
    /// Short type name, as stored and shown by `query`.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Float(_) => "float",
            FieldValue::Int(_) => "integer",
            FieldValue::UInt(_) => "unsigned",
            FieldValue::Str(_) => "string",
            FieldValue::Bool(_) => "boolean",
        }
    }
}

impl std::fmt::Display for FieldValue {
    /// Human form (no type suffix, strings unquoted): used in logs and tables.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldValue::Float(v) => write!(f, "{v}"),
            FieldValue::Int(v) => write!(f, "{v}"),
            FieldValue::UInt(v) => write!(f, "{v}"),
            FieldValue::Str(v) => f.write_str(v),
            FieldValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// One reading: a line of line protocol, or a legacy `ping / (...)` message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    pub measurement: String,
    /// Tag pairs in the order they arrived (the store sorts them for the series key).
    pub tags: Vec<(String, String)>,
    /// At least one field; several per line allowed.
    pub fields: Vec<(String, FieldValue)>,
    /// Nanoseconds since the Unix epoch; `None` means "use the receive time".
    pub timestamp_ns: Option<i64>,
}

impl Reading {
    /// The value of tag `key`, if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Why one line (or legacy message) was rejected. The connection goes on after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("line too long (limit {limit} bytes)")]
    LineTooLong { limit: usize },
    #[error("invalid UTF-8")]
    InvalidUtf8,
    #[error("invalid reading: {0}")]
    InvalidReading(String),
    #[error("invalid command: {0}")]
    InvalidCommand(String),
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("invalid legacy message: {0}")]
    InvalidLegacy(String),
    /// A well-formed reading whose timestamp falls outside [`TimestampWindow`].
    #[error("timestamp {timestamp_ns} out of range: {reason}")]
    TimestampOutOfRange { timestamp_ns: i64, reason: String },
    /// A reading before a valid `auth` on a server with `--auth`.
    #[error("authentication required: send \"auth <token>\" first")]
    Unauthenticated,
    /// A reading the connection's token may not write (the scope error's text).
    #[error("{0}")]
    NotPermitted(String),
    /// The token was refused (`auth`), or revoked while in use; the text never holds it.
    #[error("auth failed: {0}")]
    AuthFailed(String),
    /// A reading over a rate quota (see `server::quota`); `setting` names the limit.
    #[error("rate limit exceeded: more than {limit} readings/s ({setting})")]
    RateLimited { limit: u32, setting: &'static str },
    /// A reading of a new series over a new-series quota (see `server::quota`).
    #[error("too many new series: more than {limit} per minute ({setting})")]
    TooManyNewSeries { limit: u32, setting: &'static str },
}

/// Default of [`TimestampWindow::max_future`]: sensor clocks drift, but not by days.
pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(24 * 3600);

/// Which reading timestamps the server stores: from the Unix epoch up to `max_future` past
/// its own clock. A reading at i64::MAX (year 2262) would otherwise pin `stats` and the
/// dashboard's time axis; before 1970 is no sensor's clock, just a broken one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampWindow {
    pub max_future: Duration,
}

impl Default for TimestampWindow {
    fn default() -> Self {
        TimestampWindow {
            max_future: DEFAULT_MAX_FUTURE,
        }
    }
}

impl TimestampWindow {
    /// Whether `timestamp_ns` may be stored when the server's clock reads `now_ns`.
    ///
    /// # Errors
    /// [`ProtocolError::TimestampOutOfRange`] saying which bound it crossed.
    pub fn check(&self, timestamp_ns: i64, now_ns: i64) -> Result<(), ProtocolError> {
        let reason = if timestamp_ns < 0 {
            "before 1970".to_owned()
        } else {
            // Saturating: a max-future of centuries must not wrap into the past.
            let ahead_ns = i64::try_from(self.max_future.as_nanos()).unwrap_or(i64::MAX);
            if timestamp_ns <= now_ns.saturating_add(ahead_ns) {
                return Ok(());
            }
            format!(
                "more than {} in the future (max-future-timestamp)",
                humantime::format_duration(self.max_future)
            )
        };
        Err(ProtocolError::TimestampOutOfRange {
            timestamp_ns,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_window_bounds() {
        let window = TimestampWindow {
            max_future: Duration::from_secs(60),
        };
        let now = 1_000_000_000_000;
        assert_eq!(window.check(0, now), Ok(()));
        assert_eq!(window.check(now, now), Ok(()));
        assert_eq!(window.check(now + 60_000_000_000, now), Ok(()));
        assert_eq!(
            window.check(-1, now),
            Err(ProtocolError::TimestampOutOfRange {
                timestamp_ns: -1,
                reason: "before 1970".into()
            })
        );
        assert_eq!(
            window
                .check(now + 60_000_000_001, now)
                .map_err(|e| e.to_string()),
            Err(format!(
                "timestamp {} out of range: more than 1m in the future (max-future-timestamp)",
                now + 60_000_000_001
            ))
        );
        assert!(window.check(i64::MIN, now).is_err());
        assert!(window.check(i64::MAX, now).is_err());
        // A window wider than i64 nanoseconds saturates instead of wrapping into the past.
        let wide = TimestampWindow {
            max_future: Duration::from_secs(u64::MAX),
        };
        assert_eq!(wide.check(i64::MAX, now), Ok(()));
        assert_eq!(wide.check(0, i64::MAX), Ok(()));
    }
}
