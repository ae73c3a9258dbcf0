//! The UDP probe wire format (PROTOCOL.md, "UDP probes"): bytes ⇄ [`Request`] / [`Reply`],
//! no I/O. A datagram is untrusted input: every field is read through a bounds check, and
//! decoding never panics (proptested below, fuzzed by `fuzz/fuzz_targets/probe_wire.rs`).
//!
//! All integers are big-endian. A request:
//!
//! ```text
//! 0  magic "SLP1"      4  kind (1 probe, 2 count)   5  flags (bit 0: signed)   6  2 zero bytes
//! 8  session id u64    16 seq u64                   24 client send time i64 (ns, CLOCK_REALTIME)
//! 32 [signed: token id, 8 ASCII bytes]  … padding …  [signed: last 16 bytes: HMAC-SHA256/128]
//! ```
//!
//! A reply has the request's length exactly (never more: no amplification):
//!
//! ```text
//! 0  magic   4  kind | 0x80   5  flags (as the request)   6  2 zero bytes
//! 8  session id   16 seq   24 client send time   32 server receive time (ns)
//! 40 server send time (ns)   48 distinct probes of this session the server has received
//! 56 [request ≥ 64 bytes: probes of this session the server's rate limit dropped]   zeros …
//! ```

use ring::hmac;
use subtle::ConstantTimeEq as _;

/// The first four bytes of every request and reply: the format and its version.
pub const MAGIC: [u8; 4] = *b"SLP1";
/// Set in a reply's kind byte.
pub const REPLY_BIT: u8 = 0x80;
/// Request flag: a token id and an HMAC are present.
pub const FLAG_SIGNED: u8 = 0x01;
/// Bytes of the common header (magic … client send time).
const HEADER_BYTES: usize = 32;
/// Bytes of the token id in a signed request (the token's public id).
pub const TOKEN_ID_BYTES: usize = crate::auth::token::ID_LEN;
/// Bytes of the truncated HMAC-SHA256 at the end of a signed request.
pub const MAC_BYTES: usize = 16;
/// Bytes of a reply's fields: the shortest request the server answers (so the reply fits).
pub const REPLY_BYTES: usize = 56;
/// The shortest request whose reply carries the rate-limited count (bytes 56..64).
pub const RATE_LIMITED_BYTES: usize = 64;
/// The shortest probe a client sends (the reply must fit).
pub const MIN_PROBE_BYTES: usize = REPLY_BYTES;
/// The longest probe a client sends: what fits in one Ethernet frame over IPv4 unfragmented.
pub const MAX_PROBE_BYTES: usize = 1472;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reflect this probe and count it in its session.
    Probe,
    /// Say how many probes of this session arrived, without counting this one (sent at the
    /// end of a run, so the last probes' replies lost downstream still count as arrived).
    Count,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Probe => 1,
            Kind::Count => 2,
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Probe),
            2 => Some(Kind::Count),
            _ => None,
        }
    }
}

/// Why a datagram is not a request (or not a reply). Each is a metric label on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("shorter than {REPLY_BYTES} bytes")]
    TooShort,
    #[error("not a sensorlink probe (magic or version)")]
    BadMagic,
    #[error("unknown kind or flags")]
    Unknown,
    #[error("bad token id")]
    BadTokenId,
}

/// A decoded request. `signed` borrows the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub kind: Kind,
    pub session: u64,
    pub seq: u64,
    pub client_send_ns: i64,
    /// Present when the request says it is signed.
    pub signed: Option<Signature<'a>>,
}

/// What a reply echoes of its request: a [`Request`] without its borrow of the datagram,
/// so the reply can be written over the request's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub kind: Kind,
    pub session: u64,
    pub seq: u64,
    pub client_send_ns: i64,
    pub signed: bool,
}

impl Request<'_> {
    pub fn head(&self) -> Head {
        Head {
            kind: self.kind,
            session: self.session,
            seq: self.seq,
            client_send_ns: self.client_send_ns,
            signed: self.signed.is_some(),
        }
    }
}

/// The authenticating part of a signed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signature<'a> {
    /// The token's public id (lowercase letters and digits, checked).
    pub token_id: &'a str,
    /// Everything the MAC covers.
    covered: &'a [u8],
    mac: &'a [u8],
}

impl Signature<'_> {
    /// Whether the MAC is right for `key` (the token's SHA-256 hash), in constant time.
    pub fn verify(&self, key: &[u8; 32]) -> bool {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), self.covered);
        tag.as_ref()[..MAC_BYTES].ct_eq(self.mac).into()
    }
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    let bytes = buf.get(at..at + 8)?;
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn i64_at(buf: &[u8], at: usize) -> Option<i64> {
    u64_at(buf, at).map(|v| v as i64)
}

/// Decode a request.
///
/// # Errors
/// The datagram is too short for a reply, is not ours, or names no valid token id.
pub fn decode_request(buf: &[u8]) -> Result<Request<'_>, WireError> {
    if buf.len() < REPLY_BYTES {
        return Err(WireError::TooShort);
    }
    if buf.get(..4) != Some(&MAGIC[..]) {
        return Err(WireError::BadMagic);
    }
    let kind = buf
        .get(4)
        .copied()
        .and_then(Kind::from_byte)
        .ok_or(WireError::Unknown)?;
    let flags = buf.get(5).copied().ok_or(WireError::TooShort)?;
    if flags & !FLAG_SIGNED != 0 {
        return Err(WireError::Unknown);
    }
    let field = |at| u64_at(buf, at).ok_or(WireError::TooShort);
    let (session, seq) = (field(8)?, field(16)?);
    let client_send_ns = i64_at(buf, 24).ok_or(WireError::TooShort)?;
    let signed = if flags & FLAG_SIGNED != 0 {
        let id = buf
            .get(HEADER_BYTES..HEADER_BYTES + TOKEN_ID_BYTES)
            .ok_or(WireError::TooShort)?;
        let token_id = std::str::from_utf8(id).map_err(|_| WireError::BadTokenId)?;
        if !crate::auth::token::valid_id(token_id) {
            return Err(WireError::BadTokenId);
        }
        // REPLY_BYTES ≥ header + id + MAC, so the split leaves the id uncovered by the MAC.
        let (covered, mac) = buf.split_at(buf.len() - MAC_BYTES);
        Some(Signature {
            token_id,
            covered,
            mac,
        })
    } else {
        None
    };
    Ok(Request {
        kind,
        session,
        seq,
        client_send_ns,
        signed,
    })
}

/// A client's key for signed probes: the token's id and its SHA-256 hash (what the
/// server's tokens file holds).
#[derive(Clone)]
pub struct Signer {
    token_id: [u8; TOKEN_ID_BYTES],
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("token_id", &String::from_utf8_lossy(&self.token_id))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer of `token`, or `None` when it is not shaped like a token (`sl_<id>_…`).
    pub fn for_token(token: &str) -> Option<Signer> {
        let id = crate::auth::token::id_of(token)?;
        let token_id = id.as_bytes().try_into().ok()?;
        let hash = crate::auth::token::TokenHash::of(token);
        Some(Signer {
            token_id,
            key: hmac::Key::new(hmac::HMAC_SHA256, hash.as_bytes()),
        })
    }
}

/// Write a request of exactly `size` bytes (at least [`MIN_PROBE_BYTES`]) into `out`.
pub fn encode_request(
    kind: Kind,
    session: u64,
    seq: u64,
    client_send_ns: i64,
    signer: Option<&Signer>,
    size: usize,
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&MAGIC);
    out.push(kind.byte());
    out.push(if signer.is_some() { FLAG_SIGNED } else { 0 });
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&session.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&client_send_ns.to_be_bytes());
    let size = size.max(MIN_PROBE_BYTES);
    match signer {
        Some(signer) => {
            out.extend_from_slice(&signer.token_id);
            out.resize(size - MAC_BYTES, 0);
            let tag = hmac::sign(&signer.key, out);
            out.extend_from_slice(&tag.as_ref()[..MAC_BYTES]);
        }
        None => out.resize(size, 0),
    }
}

/// A decoded reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub kind: Kind,
    pub session: u64,
    pub seq: u64,
    pub client_send_ns: i64,
    pub server_receive_ns: i64,
    pub server_send_ns: i64,
    /// Distinct probes of this session the server had received when it answered (this one
    /// included).
    pub server_received: u64,
    /// Probes of this session the server's rate limit dropped; `None` in a reply shorter
    /// than [`RATE_LIMITED_BYTES`] (it has no room for the field).
    pub rate_limited: Option<u64>,
}

/// Write the reply to `request` into `out`, which holds the request's length of bytes
/// (the reply overwrites it). The server send time is left zero: [`stamp_send`] sets it
/// just before the send. `rate_limited` goes in only when `out` has room for it
/// ([`RATE_LIMITED_BYTES`]); older clients see zeros there and ignore them.
///
/// # Errors
/// `out` is shorter than [`REPLY_BYTES`] (a request that short was never decoded).
pub fn encode_reply(
    request: Head,
    server_receive_ns: i64,
    server_received: u64,
    rate_limited: u64,
    out: &mut [u8],
) -> Result<(), WireError> {
    if out.len() < REPLY_BYTES {
        return Err(WireError::TooShort);
    }
    let flags = if request.signed { FLAG_SIGNED } else { 0 };
    out.fill(0);
    out[..4].copy_from_slice(&MAGIC);
    out[4] = request.kind.byte() | REPLY_BIT;
    out[5] = flags;
    out[8..16].copy_from_slice(&request.session.to_be_bytes());
    out[16..24].copy_from_slice(&request.seq.to_be_bytes());
    out[24..32].copy_from_slice(&request.client_send_ns.to_be_bytes());
    out[32..40].copy_from_slice(&server_receive_ns.to_be_bytes());
    out[48..56].copy_from_slice(&server_received.to_be_bytes());
    if let Some(field) = out.get_mut(REPLY_BYTES..RATE_LIMITED_BYTES) {
        field.copy_from_slice(&rate_limited.to_be_bytes());
    }
    Ok(())
}

/// Set the server send time of a reply made by [`encode_reply`].
pub fn stamp_send(reply: &mut [u8], server_send_ns: i64) {
    if let Some(field) = reply.get_mut(40..48) {
        field.copy_from_slice(&server_send_ns.to_be_bytes());
    }
}

/// Decode a reply.
///
/// # Errors
/// Too short, not ours, or not a reply.
pub fn decode_reply(buf: &[u8]) -> Result<Reply, WireError> {
    if buf.len() < REPLY_BYTES {
        return Err(WireError::TooShort);
    }
    if buf.get(..4) != Some(&MAGIC[..]) {
        return Err(WireError::BadMagic);
    }
    let kind_byte = buf.get(4).copied().ok_or(WireError::TooShort)?;
    if kind_byte & REPLY_BIT == 0 {
        return Err(WireError::Unknown);
    }
    let kind = Kind::from_byte(kind_byte & !REPLY_BIT).ok_or(WireError::Unknown)?;
    let field = |at| u64_at(buf, at).ok_or(WireError::TooShort);
    Ok(Reply {
        kind,
        session: field(8)?,
        seq: field(16)?,
        client_send_ns: field(24)? as i64,
        server_receive_ns: field(32)? as i64,
        server_send_ns: field(40)? as i64,
        server_received: field(48)?,
        rate_limited: u64_at(buf, REPLY_BYTES),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOKEN: &str = "sl_abcd1234_0123456789abcdefghijABCDEFGHIJ0123456789abc";

    fn request(signer: Option<&Signer>, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        encode_request(Kind::Probe, 7, 42, 1_000, signer, size, &mut out);
        out
    }

    #[test]
    fn an_unsigned_request_round_trips_at_its_size() {
        let bytes = request(None, 100);
        assert_eq!(bytes.len(), 100);
        assert_eq!(&bytes[..6], b"SLP1\x01\x00");
        let req = decode_request(&bytes).expect("a request we encoded");
        assert_eq!(
            (
                req.kind,
                req.session,
                req.seq,
                req.client_send_ns,
                req.signed
            ),
            (Kind::Probe, 7, 42, 1_000, None)
        );
    }

    #[test]
    fn a_signed_request_verifies_with_the_tokens_hash_only() {
        assert_eq!(TOKEN.len(), crate::auth::token::TOKEN_LEN);
        let signer = Signer::for_token(TOKEN).expect("token-shaped");
        let bytes = request(Some(&signer), MIN_PROBE_BYTES);
        let req = decode_request(&bytes).expect("a request we encoded");
        let sig = req.signed.expect("signed");
        assert_eq!(sig.token_id, "abcd1234");
        let hash = crate::auth::token::TokenHash::of(TOKEN);
        assert!(sig.verify(hash.as_bytes()));
        let other = crate::auth::token::TokenHash::of("sl_abcd1234_x");
        assert!(!sig.verify(other.as_bytes()));
        // One flipped bit anywhere the MAC covers breaks it.
        let mut tampered = bytes.clone();
        tampered[20] ^= 1;
        let req = decode_request(&tampered).expect("still well-formed");
        assert!(!req.signed.expect("signed").verify(hash.as_bytes()));
    }

    #[test]
    fn short_foreign_and_unknown_datagrams_are_refused() {
        assert_eq!(decode_request(b""), Err(WireError::TooShort));
        assert_eq!(decode_request(&[0; 55]), Err(WireError::TooShort));
        assert_eq!(decode_request(&[0; 56]), Err(WireError::BadMagic));
        let mut bytes = request(None, 56);
        bytes[4] = 9;
        assert_eq!(decode_request(&bytes), Err(WireError::Unknown));
        let mut bytes = request(None, 56);
        bytes[5] = 0x80;
        assert_eq!(decode_request(&bytes), Err(WireError::Unknown));
        let mut bytes = request(None, 56);
        bytes[5] = FLAG_SIGNED;
        bytes[32..40].copy_from_slice(b"ABCD!234");
        assert_eq!(decode_request(&bytes), Err(WireError::BadTokenId));
        // A reply is not a request, and a request is not a reply.
        assert!(decode_reply(&request(None, 56)).is_err());
    }

    #[test]
    fn a_reply_has_the_requests_length_and_its_fields() {
        for size in [56, 64, 500, 1472] {
            let sent = request(None, size);
            let req = decode_request(&sent).expect("ours");
            let mut buf = sent.clone();
            encode_reply(req.head(), 5_000, 3, 2, &mut buf).expect("long enough");
            stamp_send(&mut buf, 6_000);
            assert_eq!(buf.len(), size);
            let reply = decode_reply(&buf).expect("a reply we encoded");
            assert_eq!(
                reply,
                Reply {
                    kind: Kind::Probe,
                    session: 7,
                    seq: 42,
                    client_send_ns: 1_000,
                    server_receive_ns: 5_000,
                    server_send_ns: 6_000,
                    server_received: 3,
                    rate_limited: (size >= RATE_LIMITED_BYTES).then_some(2),
                }
            );
            // The rest stays zero: nothing an attacker could plant.
            assert!(buf[RATE_LIMITED_BYTES.min(size)..].iter().all(|b| *b == 0));
        }
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_request(&bytes);
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn any_request_round_trips(session: u64, seq: u64, ns: i64, size in 0usize..1600, signed: bool, count: bool) {
            let signer = Signer::for_token(TOKEN).expect("token-shaped");
            let kind = if count { Kind::Count } else { Kind::Probe };
            let mut out = Vec::new();
            encode_request(kind, session, seq, ns, signed.then_some(&signer), size, &mut out);
            prop_assert_eq!(out.len(), size.max(MIN_PROBE_BYTES));
            let req = decode_request(&out).expect("a request we encoded");
            prop_assert_eq!((req.kind, req.session, req.seq, req.client_send_ns), (kind, session, seq, ns));
            prop_assert_eq!(req.signed.is_some(), signed);
            if let Some(sig) = req.signed {
                prop_assert!(sig.verify(crate::auth::token::TokenHash::of(TOKEN).as_bytes()));
            }
        }
    }
}
