//! [`ReadingConflict`]: a reading refused because its series and timestamp already held
//! other fields, and its log line's shortened fields ([`BriefFields`]).

use std::net::SocketAddr;

use super::{Event, Telemetry};
use crate::protocol::FieldValue;
use crate::server::logging;

/// A reading refused because its series and timestamp were already stored with other
/// fields (the stored reading is kept): warned about within its own log budget. Counted by
/// [`super::BatchCommitted`] (`outcome="conflict"`), where every store route counts it once.
pub struct ReadingConflict<'a> {
    pub peer: SocketAddr,
    pub conflict: &'a crate::store::Conflict,
}

impl Event for ReadingConflict<'_> {
    fn emit_to(self, _: &Telemetry) {
        if logging::allow_conflict_warning() {
            let refused = &self.conflict.refused;
            tracing::warn!(
                peer_addr = %self.peer,
                sensor = %refused.sensor.escape_debug(),
                measurement = %refused.reading.measurement.escape_debug(),
                timestamp_ns = refused.timestamp_ns(),
                kept = %BriefFields(&self.conflict.kept),
                refused = %BriefFields(&refused.reading.fields),
                "conflicting reading refused: the series already holds other fields at this timestamp"
            );
        }
    }
}

/// Fields as `name=value,…`, strings quoted and escaped, cut after [`BriefFields::MAX_CHARS`]:
/// enough to tell two readings apart in a log line, never a flood.
struct BriefFields<'a>(&'a [(String, FieldValue)]);

impl BriefFields<'_> {
    const MAX_CHARS: usize = 80;
}

impl std::fmt::Display for BriefFields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = String::new();
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.extend(name.escape_debug());
            text.push('=');
            match value {
                FieldValue::Str(s) => text.push_str(&format!("{s:?}")),
                other => text.push_str(&other.to_string()),
            }
            if text.chars().count() > Self::MAX_CHARS {
                break;
            }
        }
        match text.char_indices().nth(Self::MAX_CHARS) {
            Some((cut, _)) => write!(f, "{}…", &text[..cut]),
            None => f.write_str(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_brief_and_escaped() {
        let fields = vec![
            ("t".to_string(), FieldValue::Float(-99.0)),
            ("n".to_string(), FieldValue::Int(3)),
            ("s".to_string(), FieldValue::Str("a\"b\n".into())),
        ];
        assert_eq!(BriefFields(&fields).to_string(), r#"t=-99,n=3,s="a\"b\n""#);
        let long = vec![("v".to_string(), FieldValue::Str("x".repeat(500)))];
        let text = BriefFields(&long).to_string();
        assert_eq!(text.chars().count(), BriefFields::MAX_CHARS + 1, "{text}");
        assert!(text.ends_with('…'));
    }
}
