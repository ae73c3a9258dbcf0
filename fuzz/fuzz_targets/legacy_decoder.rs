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

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 17) + 1;
    let mut decoder = LegacyDecoder::new(LIMIT);
    let mut buf = BytesMut::new();
    let mut messages = 0usize;
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(message) = decoder.decode(&mut buf) {
            check(&message);
            messages += 1;
        }
        assert!(buf.len() <= LIMIT + chunk, "buffer holds {}", buf.len());
    }
    while let Some(message) = decoder.decode_eof(&mut buf) {
        check(&message);
        messages += 1;
    }
    assert!(buf.is_empty(), "decode_eof leaves nothing behind");
    assert!(
        messages <= bytes.len(),
        "{messages} messages from {} bytes",
        bytes.len()
    );
});
