//! Legacy (seed) framing on any bytes in any chunks: never panics, the buffer stays
//! bounded, every byte is eventually consumed, and the readings that come out are the same
//! whether the stream arrives whole or in chunks (a reading cut anywhere, right after its
//! `ping` included, is one reading).
//!
//! Only readings are compared: garbage is reported per read (`hel` | `lo` is two rejected
//! messages, `hello` one), which the seed protocol cannot observe (each gets `pong`). And
//! only when no message overflowed the limit: an oversize message is cut where the buffer
//! overflows, which depends on the chunks (a known difference from line mode, which
//! discards up to the newline; harmless for the seed, whose messages are ~45 bytes).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sensorlink::protocol::legacy::{
    LegacyDecoder, LegacyMessage, LEGACY_FIELD, LEGACY_MEASUREMENT,
};
use sensorlink::protocol::ProtocolError;

const LIMIT: usize = 96;

fn check(message: &LegacyMessage) {
    if let LegacyMessage::Reading(reading) = message {
        assert_eq!(reading.measurement, LEGACY_MEASUREMENT);
        assert_eq!(reading.fields.len(), 1);
        assert_eq!(reading.fields[0].0, LEGACY_FIELD);
    }
}

/// The messages of `bytes` fed `step` bytes at a time.
fn decode_all(bytes: &[u8], step: usize) -> Vec<LegacyMessage> {
    let mut decoder = LegacyDecoder::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for piece in bytes.chunks(step) {
        buf.extend_from_slice(piece);
        while let Some(message) = decoder.decode(&mut buf) {
            check(&message);
            messages.push(message);
        }
        assert!(buf.len() <= LIMIT + step, "buffer holds {}", buf.len());
    }
    while let Some(message) = decoder.decode_eof(&mut buf) {
        check(&message);
        messages.push(message);
    }
    assert!(buf.is_empty(), "decode_eof leaves nothing behind");
    assert!(messages.len() <= bytes.len(), "{} messages", messages.len());
    messages
}

fn overflowed(messages: &[LegacyMessage]) -> bool {
    messages
        .iter()
        .any(|m| matches!(m, LegacyMessage::Invalid(ProtocolError::LineTooLong { .. })))
}

fn readings(messages: Vec<LegacyMessage>) -> Vec<LegacyMessage> {
    messages
        .into_iter()
        .filter(|m| matches!(m, LegacyMessage::Reading(_)))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 17) + 1;
    let whole = decode_all(bytes, bytes.len().max(1));
    let pieces = decode_all(bytes, chunk);
    if overflowed(&whole) || overflowed(&pieces) {
        return;
    }
    assert_eq!(readings(pieces), readings(whole), "chunks of {chunk}");
});
