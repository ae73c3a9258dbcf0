//! The seed's frozen byte behaviour: `ping`, `ping / ('<local time>', <n>)`, answered by `pong`.

use bytes::BytesMut;

use super::{ProtocolError, Reading};

pub const PING: &[u8] = b"ping";
pub const PONG: &[u8] = b"pong";

/// One legacy message.
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyMessage {
    /// A bare `ping`: keep-alive, not a reading.
    Ping,
    /// `ping / ('2026-11-24 11:46:25.123456', 102)`.
    Reading(Reading),
    /// Anything else; still answered `pong`, as the seed did, but counted as rejected.
    Invalid(ProtocolError),
}

/// Cuts legacy messages off a buffer.
#[derive(Debug)]
pub struct LegacyDecoder {
    _max_bytes: usize,
}

impl LegacyDecoder {
    pub fn new(max_bytes: usize) -> Self {
        LegacyDecoder {
            _max_bytes: max_bytes,
        }
    }

    pub fn decode(&mut self, _buf: &mut BytesMut) -> Option<LegacyMessage> {
        unimplemented!()
    }

    pub fn decode_eof(&mut self, _buf: &mut BytesMut) -> Option<LegacyMessage> {
        unimplemented!()
    }
}

/// Append the seed client's reading message for local time `time` and value `counter`.
pub fn encode_reading(_time: chrono::NaiveDateTime, _counter: i64, _out: &mut Vec<u8>) {
    unimplemented!()
}

pub const LEGACY_MEASUREMENT: &str = "legacy";
pub fn encode_reading_value(
    _time: chrono::NaiveDateTime,
    _value: &super::FieldValue,
    _out: &mut Vec<u8>,
) {
    unimplemented!()
}
