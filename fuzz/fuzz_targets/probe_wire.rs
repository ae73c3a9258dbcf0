//! UDP probe datagrams (`sensorlink::probe::wire`) on any bytes: never panic; a request
//! that decodes gets a reply of exactly its own length that decodes back to its fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensorlink::probe::wire::{decode_reply, decode_request, encode_reply, stamp_send};

fuzz_target!(|data: &[u8]| {
    let _ = decode_reply(data);
    let Ok(request) = decode_request(data) else {
        return;
    };
    let head = request.head();
    let mut reply = data.to_vec();
    encode_reply(head, 7, 3, 5, &mut reply).expect("a decoded request is long enough");
    stamp_send(&mut reply, 8);
    assert_eq!(reply.len(), data.len(), "never more bytes than received");
    let back = decode_reply(&reply).expect("a reply we encoded decodes");
    assert_eq!(
        (back.kind, back.session, back.seq, back.client_send_ns),
        (head.kind, head.session, head.seq, head.client_send_ns)
    );
    assert_eq!((back.server_receive_ns, back.server_send_ns, back.server_received), (7, 8, 3));
    // The rate-limited count only where the request left room for it.
    assert_eq!(back.rate_limited, (data.len() >= 64).then_some(5));
});
