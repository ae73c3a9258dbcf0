//! Which of the addresses a name resolves to gets the probes. `localhost` commonly resolves
//! to `::1` first and `127.0.0.1` second, and a server on `0.0.0.0` answers only the
//! second; a TCP client tries each address in turn, and so does this, with one count
//! request (answered, never counted) to each.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::wire::{self, Kind, Signer};

/// How long each address has to answer the count request.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(300);

/// The first of `addrs` whose server answers a count request within `within`, else the
/// first address (the run then reports what it finds there). `None` only when `addrs` is
/// empty.
pub fn pick(addrs: &[SocketAddr], signer: Option<&Signer>, within: Duration) -> Option<SocketAddr> {
    let first = *addrs.first()?;
    if addrs.len() == 1 {
        return Some(first);
    }
    let answering = addrs
        .iter()
        .copied()
        .find(|addr| answers(*addr, signer, within));
    Some(answering.unwrap_or(first))
}

/// Whether a reflector at `addr` answers a count request within `within`.
fn answers(addr: SocketAddr, signer: Option<&Signer>, within: Duration) -> bool {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let Ok(socket) = UdpSocket::bind(local) else {
        return false;
    };
    if socket.connect(addr).is_err() {
        return false;
    }
    let session: u64 = rand::random();
    let sent_ns = crate::timefmt::now_ns();
    let mut out = Vec::new();
    let size = wire::RATE_LIMITED_BYTES;
    wire::encode_request(Kind::Count, session, 0, sent_ns, signer, size, &mut out);
    if socket.send(&out).is_err() {
        return false;
    }
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || socket.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        // An error (timeout, or the port unreachable) means no answer from here.
        let Ok(len) = socket.recv(&mut buf) else {
            return false;
        };
        let ours = buf
            .get(..len)
            .and_then(|d| wire::decode_reply(d).ok())
            .is_some_and(|r| {
                r.kind == Kind::Count && r.session == session && r.client_send_ns == sent_ns
            });
        if ours {
            return true;
        }
    }
}
