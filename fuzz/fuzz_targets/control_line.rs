//! Control lines and replies on any text: never panic; a command or reply that parses
//! encodes (as the peer would send it) to a line that parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensorlink::protocol::control::{is_control, parse_command, Command, Reply};

fuzz_target!(|data: &[u8]| {
    // A line never holds its own ending (the framing cut there, and the encoder blanks
    // line breaks inside an error reason), so such input says nothing.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if line.contains(['\n', '\r']) {
        return;
    }
    if let Ok(command) = parse_command(line) {
        assert!(is_control(line.as_bytes()), "a command holds no '='");
        let text = match &command {
            Command::Ping(None) => "ping".to_owned(),
            Command::Ping(Some(token)) => format!("ping {token}"),
            Command::Sync(token) => format!("sync {token}"),
            Command::Auth(secret) => format!("auth {}", secret.expose()),
        };
        assert_eq!(parse_command(&text).as_ref(), Ok(&command), "{text:?}");
    }
    if let Ok(reply) = Reply::parse(line) {
        let mut out = Vec::new();
        reply.encode(&mut out);
        assert_eq!(out.pop(), Some(b'\n'));
        let text = std::str::from_utf8(&out).expect("an encoded reply is UTF-8");
        assert_eq!(Reply::parse(text).as_ref(), Ok(&reply), "{text:?}");
    }
});
