//! Line mode framing: any bytes, cut into any chunks, give the same frames as the whole
//! stream at once, the buffer never holds more than the line limit, and every reading that
//! comes out encodes to a line that parses back to it.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sensorlink::protocol::codec::{sniff, Frame, LineDecoder};
use sensorlink::protocol::ilp;

/// Small, so oversize lines (discarded while they stream in) are exercised too.
const LIMIT: usize = 96;

fn drain(decoder: &mut LineDecoder, buf: &mut BytesMut, out: &mut Vec<Frame>) {
    while let Some(frame) = decoder.decode(buf) {
        out.push(frame);
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, the rest is the stream.
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 17) + 1;
    let _ = sniff(bytes);

    let mut whole = Vec::new();
    let mut decoder = LineDecoder::new(LIMIT);
    let mut buf = BytesMut::from(bytes);
    drain(&mut decoder, &mut buf, &mut whole);
    whole.extend(std::iter::from_fn(|| decoder.decode_eof(&mut buf)));
    assert!(buf.is_empty(), "decode_eof leaves nothing behind");

    let mut pieces = Vec::new();
    let mut decoder = LineDecoder::new(LIMIT);
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        drain(&mut decoder, &mut buf, &mut pieces);
        assert!(buf.len() <= LIMIT, "buffer holds {} > {LIMIT}", buf.len());
    }
    pieces.extend(std::iter::from_fn(|| decoder.decode_eof(&mut buf)));
    assert_eq!(pieces, whole, "chunks of {chunk} decode differently");

    for frame in whole {
        if let Frame::Reading(reading) = frame {
            let mut line = Vec::new();
            ilp::encode(&reading, &mut line);
            line.pop();
            assert_eq!(ilp::parse(&line).as_ref(), Ok(&reading), "{line:?}");
        }
    }
});
