//! PROXY v2 headers on any bytes: decoding never panics; a header, when found, fits in the
//! bytes and decodes the same from any longer input; "incomplete" never asks for more than
//! the limit allows; fed only the bytes it asks for (as the server reads), the decoder
//! reaches the same verdict as on the whole input; and a decoded header re-encodes to
//! bytes that decode back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensorlink::server::proxy_protocol::{
    decode, encode, Decoded, ProxyHeader, MAX_ADDRESS_BYTES, PREFIX_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let whole = decode(data);
    match &whole {
        Ok(Decoded::Header { len, .. }) => assert!(*len <= data.len()),
        Ok(Decoded::Incomplete { needed }) => {
            assert!(*needed > 0);
            assert!(data.len() + needed <= PREFIX_BYTES + MAX_ADDRESS_BYTES);
        }
        Err(_) => {}
    }
    // As `receive` feeds it: only the bytes asked for, until a verdict.
    let mut fed = 0;
    let stepwise = loop {
        match decode(&data[..fed]) {
            Ok(Decoded::Incomplete { needed }) if fed < data.len() => {
                fed = (fed + needed).min(data.len());
            }
            verdict => break verdict,
        }
    };
    match (&whole, &stepwise) {
        (Ok(Decoded::Header { .. }), _) | (Err(_), _) => assert_eq!(&stepwise, &whole),
        (Ok(Decoded::Incomplete { .. }), _) => {
            assert!(matches!(stepwise, Ok(Decoded::Incomplete { .. })))
        }
    }
    if let Ok(Decoded::Header { header, .. }) = whole {
        let mut bytes = Vec::new();
        encode(&header, &[], &mut bytes);
        let len = bytes.len();
        assert_eq!(decode(&bytes), Ok(Decoded::Header { header, len }));
        if let ProxyHeader::Proxy { source, .. } = header {
            assert_eq!(header.peer("127.0.0.1:1".parse().expect("literal")), source);
        }
    }
});
