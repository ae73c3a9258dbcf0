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
}
