//! PROXY protocol version 2 on the sensor port (`--proxy-protocol v2`): a TCP load balancer
//! (HAProxy `send-proxy-v2`) opens each connection with a binary header naming the client's
//! address, which then replaces the balancer's as the connection's peer.
//!
//! [`decode`] turns bytes into a [`ProxyHeader`] and does no I/O: like the line codec it
//! says "read N more bytes" ([`Decoded::Incomplete`]) or "this peer is broken" (`Err`),
//! and checks the signature and the length before anything is allocated for it.
//! [`receive`] reads exactly the header (never a byte of what follows, which belongs to
//! TLS or the sensor protocol) within a deadline. The format is HAProxy's
//! `doc/proxy-protocol.txt`, section 2.2; version 1 (text) is refused, not guessed at.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio_util::sync::CancellationToken;

/// `--proxy-protocol`: whether the sensor port expects a PROXY header on every connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Connections carry the sensor protocol from their first byte (the default).
    #[default]
    Off,
    /// Every connection starts with a PROXY protocol v2 header.
    V2,
}

impl ProxyProtocol {
    /// Every value with its name, as flags and the file write it.
    pub const ALL: [(ProxyProtocol, &'static str); 2] =
        [(ProxyProtocol::Off, "off"), (ProxyProtocol::V2, "v2")];

    pub fn name(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V2 => "v2",
        }
    }
}

impl std::fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProxyProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ProxyProtocol::ALL
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(value, _)| *value)
            .ok_or_else(|| format!("invalid proxy-protocol {text:?}: accepted \"off\" or \"v2\""))
    }
}

/// The 12 bytes every v2 header starts with (chosen to be invalid in any text protocol).
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Signature, version/command, family/transport and the 2-byte length.
pub const PREFIX_BYTES: usize = 16;

/// Longest address block (addresses plus TLVs) accepted. IPv6 addresses take 36 bytes and
/// Unix ones 216; HAProxy's optional TLVs (unique id ≤ 128 bytes, ALPN, authority, SSL
/// details) fit well within. A longer one is refused rather than buffered.
pub const MAX_ADDRESS_BYTES: usize = 2048;

/// What the v1 (text) protocol starts with: refused with its own message.
const V1_PREFIX: &[u8] = b"PROXY ";

const COMMAND_LOCAL: u8 = 0x0;
const COMMAND_PROXY: u8 = 0x1;
const FAMILY_UNSPEC: u8 = 0x0;
const FAMILY_INET: u8 = 0x1;
const FAMILY_INET6: u8 = 0x2;
const FAMILY_UNIX: u8 = 0x3;
const TRANSPORT_UNSPEC: u8 = 0x0;
const TRANSPORT_STREAM: u8 = 0x1;
const TRANSPORT_DGRAM: u8 = 0x2;
const INET_BYTES: usize = 12;
const INET6_BYTES: usize = 36;
const UNIX_BYTES: usize = 216;

/// A decoded header: what the balancer says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `LOCAL`: the balancer's own connection (a health check); the TCP peer stands.
    Local,
    /// `PROXY` over TCP: the client's address and the one it connected to.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// `PROXY` with an address the sensor side cannot use (`UNSPEC`, a Unix socket): the
    /// specification says to keep the real connection's endpoints.
    Unknown,
}

impl ProxyHeader {
    /// The connection's peer: the client's address from a `PROXY` header, otherwise the
    /// TCP peer (`tcp_peer`, the balancer).
    pub fn peer(&self, tcp_peer: SocketAddr) -> SocketAddr {
        match self {
            ProxyHeader::Proxy { source, .. } => *source,
            ProxyHeader::Local | ProxyHeader::Unknown => tcp_peer,
        }
    }
}

/// The result of [`decode`] on the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// At least `needed` more bytes are needed (never more than the header still lacks).
    Incomplete { needed: usize },
    /// A whole header of `len` bytes; whatever follows it is the next protocol's.
    Header { header: ProxyHeader, len: usize },
}

/// Why bytes are not a PROXY v2 header: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a PROXY protocol v2 header (no signature)")]
    NoSignature,
    #[error("a PROXY protocol v1 (text) header; only v2 is accepted")]
    Version1,
    #[error("PROXY protocol version {0} (only 2 is accepted)")]
    Version(u8),
    #[error("unknown PROXY command {0:#x}")]
    Command(u8),
    #[error("unknown PROXY address family {0:#x}")]
    Family(u8),
    #[error("unknown PROXY transport {0:#x}")]
    Transport(u8),
    #[error("PROXY header for a datagram connection on a stream port")]
    Datagram,
    #[error("PROXY address block of {len} bytes is over the {limit}-byte limit")]
    TooLong { len: usize, limit: usize },
    #[error("PROXY address block of {len} bytes is too short for its family (needs {needed})")]
    TooShort { len: usize, needed: usize },
}

/// Decode a header from the start of `buf`.
///
/// # Errors
/// The bytes cannot begin a valid v2 header: wrong signature (a v1 header, or no header),
/// version, command, family or transport, or an address block over
/// [`MAX_ADDRESS_BYTES`] or too short for its family. Each is found from the fewest bytes
/// that show it, so garbage is refused without waiting for more.
pub fn decode(buf: &[u8]) -> Result<Decoded, HeaderError> {
    let seen = buf.len().min(SIGNATURE.len());
    if buf[..seen] != SIGNATURE[..seen] {
        // Not v2; tell a v1 header apart for the log, which may need a few more bytes.
        let seen_v1 = buf.len().min(V1_PREFIX.len());
        return match buf[..seen_v1] == V1_PREFIX[..seen_v1] {
            true if seen_v1 < V1_PREFIX.len() => Ok(Decoded::Incomplete {
                needed: V1_PREFIX.len() - seen_v1,
            }),
            true => Err(HeaderError::Version1),
            false => Err(HeaderError::NoSignature),
        };
    }
    if buf.len() < PREFIX_BYTES {
        return Ok(Decoded::Incomplete {
            needed: PREFIX_BYTES - buf.len(),
        });
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version != 2 {
        return Err(HeaderError::Version(version));
    }
    if len > MAX_ADDRESS_BYTES {
        return Err(HeaderError::TooLong {
            len,
            limit: MAX_ADDRESS_BYTES,
        });
    }
    let needed = match command {
        // The balancer's own connection: its family and addresses are to be ignored.
        COMMAND_LOCAL => 0,
        COMMAND_PROXY => {
            if transport > TRANSPORT_DGRAM {
                return Err(HeaderError::Transport(transport));
            }
            let needed = match family {
                FAMILY_UNSPEC => 0,
                FAMILY_INET => INET_BYTES,
                FAMILY_INET6 => INET6_BYTES,
                FAMILY_UNIX => UNIX_BYTES,
                other => return Err(HeaderError::Family(other)),
            };
            if transport == TRANSPORT_DGRAM {
                return Err(HeaderError::Datagram);
            }
            needed
        }
        other => return Err(HeaderError::Command(other)),
    };
    if len < needed {
        return Err(HeaderError::TooShort { len, needed });
    }
    let total = PREFIX_BYTES + len;
    if buf.len() < total {
        return Ok(Decoded::Incomplete {
            needed: total - buf.len(),
        });
    }
    let block = &buf[PREFIX_BYTES..total];
    let header = match (command, family) {
        (COMMAND_LOCAL, _) => ProxyHeader::Local,
        // UNSPEC transport with an IP family is a stream by the spec's own examples
        // (HAProxy sends STREAM); only a datagram was refused above.
        (_, FAMILY_INET) => {
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            ProxyHeader::Proxy {
                source: SocketAddr::new(ip(0).into(), port(8)),
                destination: SocketAddr::new(ip(4).into(), port(10)),
            }
        }
        (_, FAMILY_INET6) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            ProxyHeader::Proxy {
                source: SocketAddr::new(ip(0).into(), port(32)),
                destination: SocketAddr::new(ip(16).into(), port(34)),
            }
        }
        _ => ProxyHeader::Unknown,
    };
    Ok(Decoded::Header { header, len: total })
}

/// Encode `header` as a balancer would (TCP over IPv4/IPv6, `LOCAL` with no address,
/// `Unknown` as `PROXY` with family `UNSPEC`), followed by `tlvs` (opaque here: TLVs are
/// skipped on decode). For tests, the fuzz target, and anyone scripting a balancer.
///
/// # Panics
/// `source` and `destination` of different IP versions, or `tlvs` making the address
/// block longer than a `u16` can say (callers build these; neither comes from a peer).
pub fn encode(header: &ProxyHeader, tlvs: &[u8], out: &mut Vec<u8>) {
    let mut block = Vec::new();
    let (command, family) = match header {
        ProxyHeader::Local => (COMMAND_LOCAL, FAMILY_UNSPEC),
        ProxyHeader::Unknown => (COMMAND_PROXY, FAMILY_UNSPEC),
        ProxyHeader::Proxy {
            source,
            destination,
        } => {
            let family = match (source, destination) {
                (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
                    block.extend_from_slice(&src.ip().octets());
                    block.extend_from_slice(&dst.ip().octets());
                    FAMILY_INET
                }
                (SocketAddr::V6(src), SocketAddr::V6(dst)) => {
                    block.extend_from_slice(&src.ip().octets());
                    block.extend_from_slice(&dst.ip().octets());
                    FAMILY_INET6
                }
                _ => panic!("a PROXY header's addresses are of one IP version"),
            };
            block.extend_from_slice(&source.port().to_be_bytes());
            block.extend_from_slice(&destination.port().to_be_bytes());
            (COMMAND_PROXY, family)
        }
    };
    block.extend_from_slice(tlvs);
    let len = u16::try_from(block.len()).expect("a PROXY address block fits in a u16 length");
    out.extend_from_slice(&SIGNATURE);
    out.push(0x20 | command);
    let transport = match family {
        FAMILY_UNSPEC => TRANSPORT_UNSPEC,
        _ => TRANSPORT_STREAM,
    };
    out.push((family << 4) | transport);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&block);
}

/// Why [`receive`] got no header.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error(transparent)]
    Invalid(#[from] HeaderError),
    #[error("closed after {received} bytes, before a whole PROXY header")]
    Closed { received: usize },
    #[error("no whole PROXY header in time ({received} bytes received)")]
    Timeout { received: usize },
    #[error("reading the PROXY header")]
    Read(#[source] std::io::Error),
    /// The server is shutting down: not the peer's fault, not counted.
    #[error("shutting down")]
    Shutdown,
}

/// Read exactly one header from `stream` by `deadline` (or until `shutdown`). Reads only
/// as many bytes as [`decode`] says are missing, so the stream is left at the first byte
/// after the header; at most `PREFIX_BYTES + MAX_ADDRESS_BYTES` are ever held.
///
/// # Errors
/// See [`ReceiveError`]: an invalid header, the peer closing or failing, the deadline.
pub async fn receive<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: tokio::time::Instant,
    shutdown: &CancellationToken,
) -> Result<ProxyHeader, ReceiveError> {
    let mut buf = Vec::with_capacity(PREFIX_BYTES);
    let read = async {
        loop {
            let needed = match decode(&buf)? {
                Decoded::Header { header, .. } => return Ok(header),
                Decoded::Incomplete { needed } => needed,
            };
            // `take`: never a byte past the header; `read_buf`: `buf` holds only what came.
            let received = buf.len();
            buf.reserve(needed);
            let mut limited = (&mut *stream).take(needed as u64);
            let n = limited
                .read_buf(&mut buf)
                .await
                .map_err(ReceiveError::Read)?;
            if n == 0 {
                return Err(ReceiveError::Closed { received });
            }
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => Err(ReceiveError::Shutdown),
        outcome = tokio::time::timeout_at(deadline, read) => match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(ReceiveError::Timeout { received: buf.len() }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4() -> ProxyHeader {
        ProxyHeader::Proxy {
            source: "192.0.2.7:40001".parse().expect("literal"),
            destination: "198.51.100.1:8889".parse().expect("literal"),
        }
    }

    fn v6() -> ProxyHeader {
        ProxyHeader::Proxy {
            source: "[2001:db8::7]:40001".parse().expect("literal"),
            destination: "[2001:db8::1]:8889".parse().expect("literal"),
        }
    }

    /// HAProxy's bytes for a TCP/IPv4 connection, written out from the specification.
    #[test]
    fn decodes_an_ipv4_header_from_literal_bytes() {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        bytes.extend_from_slice(&[192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x41, 0x22, 0xb9]);
        bytes.extend_from_slice(b"ping\n");
        assert_eq!(
            decode(&bytes),
            Ok(Decoded::Header {
                header: v4(),
                len: 28
            })
        );
        let mut encoded = Vec::new();
        encode(&v4(), &[], &mut encoded);
        assert_eq!(encoded, bytes[..28]);
    }

    #[test]
    fn decodes_ipv6_local_and_unspec() {
        for header in [v6(), ProxyHeader::Local, ProxyHeader::Unknown] {
            let mut bytes = Vec::new();
            encode(&header, &[], &mut bytes);
            let len = bytes.len();
            assert_eq!(decode(&bytes), Ok(Decoded::Header { header, len }));
        }
        assert_eq!(ProxyHeader::Local.peer(peer()), peer());
        assert_eq!(ProxyHeader::Unknown.peer(peer()), peer());
        assert_eq!(v6().peer(peer()).to_string(), "[2001:db8::7]:40001");
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:5000".parse().expect("literal")
    }

    /// LOCAL from HAProxy's health checks may still carry addresses (and TLVs): skipped.
    #[test]
    fn local_skips_whatever_address_block_it_has() {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x20, 0x11, 0x00, 0x0c]);
        bytes.extend_from_slice(&[0; 12]);
        assert_eq!(
            decode(&bytes),
            Ok(Decoded::Header {
                header: ProxyHeader::Local,
                len: 28
            })
        );
    }

    /// A Unix-socket source has no address for the sensor side: the TCP peer stands.
    #[test]
    fn unix_family_keeps_the_tcp_peer() {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x31, 0x00, 216]);
        bytes.extend_from_slice(&[0; 216]);
        assert_eq!(
            decode(&bytes),
            Ok(Decoded::Header {
                header: ProxyHeader::Unknown,
                len: 232
            })
        );
    }

    #[test]
    fn tlvs_are_skipped() {
        let mut bytes = Vec::new();
        // PP2_TYPE_UNIQUE_ID (0x05) of 4 bytes.
        encode(&v4(), &[0x05, 0x00, 0x04, 1, 2, 3, 4], &mut bytes);
        assert_eq!(
            decode(&bytes),
            Ok(Decoded::Header {
                header: v4(),
                len: 35
            })
        );
    }

    #[test]
    fn incomplete_says_how_much_is_missing() {
        let mut bytes = Vec::new();
        encode(&v4(), &[], &mut bytes);
        assert_eq!(decode(&[]), Ok(Decoded::Incomplete { needed: 16 }));
        assert_eq!(decode(&bytes[..5]), Ok(Decoded::Incomplete { needed: 11 }));
        assert_eq!(decode(&bytes[..16]), Ok(Decoded::Incomplete { needed: 12 }));
        assert_eq!(decode(&bytes[..27]), Ok(Decoded::Incomplete { needed: 1 }));
    }

    #[test]
    fn refusals_name_their_reason_from_the_fewest_bytes() {
        assert_eq!(decode(b"t"), Err(HeaderError::NoSignature));
        assert_eq!(decode(b"temp=1\n"), Err(HeaderError::NoSignature));
        assert_eq!(decode(b"PRO"), Ok(Decoded::Incomplete { needed: 3 }));
        assert_eq!(
            decode(b"PROXY TCP4 192.0.2.7 198.51.100.1 40001 8889\r\n"),
            Err(HeaderError::Version1)
        );
        assert_eq!(decode(b"PROXYZ"), Err(HeaderError::NoSignature));
        let with = |b12: u8, b13: u8, len: u16| {
            let mut bytes = SIGNATURE.to_vec();
            bytes.extend_from_slice(&[b12, b13]);
            bytes.extend_from_slice(&len.to_be_bytes());
            decode(&bytes)
        };
        assert_eq!(with(0x11, 0x11, 12), Err(HeaderError::Version(1)));
        assert_eq!(with(0x22, 0x11, 12), Err(HeaderError::Command(2)));
        assert_eq!(with(0x21, 0x41, 12), Err(HeaderError::Family(4)));
        assert_eq!(with(0x21, 0x13, 12), Err(HeaderError::Transport(3)));
        assert_eq!(with(0x21, 0x12, 12), Err(HeaderError::Datagram));
        assert_eq!(
            with(0x21, 0x11, 11),
            Err(HeaderError::TooShort {
                len: 11,
                needed: 12
            })
        );
        assert_eq!(
            with(0x21, 0x21, 12),
            Err(HeaderError::TooShort {
                len: 12,
                needed: 36
            })
        );
        assert_eq!(
            with(0x21, 0x11, 0xffff),
            Err(HeaderError::TooLong {
                len: 0xffff,
                limit: MAX_ADDRESS_BYTES
            })
        );
    }

    #[test]
    fn setting_names_round_trip() {
        for (value, name) in ProxyProtocol::ALL {
            assert_eq!(name.parse::<ProxyProtocol>(), Ok(value));
            assert_eq!(value.to_string(), name);
        }
        assert!("v1".parse::<ProxyProtocol>().is_err());
        assert_eq!(ProxyProtocol::default(), ProxyProtocol::Off);
    }

    /// [`receive`] leaves the stream at the byte after the header, whatever the writes.
    #[tokio::test]
    async fn receive_reads_exactly_the_header_across_split_writes() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut bytes = Vec::new();
        encode(&v6(), &[0x04, 0x00, 0x00], &mut bytes);
        bytes.extend_from_slice(b"ping\n");
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            for chunk in bytes.chunks(7) {
                client.write_all(chunk).await.expect("duplex write");
                tokio::task::yield_now().await;
            }
            client
        });
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let header = receive(&mut server, deadline, &CancellationToken::new()).await;
        assert_eq!(header.expect("a whole header"), v6());
        let _client = writer.await.expect("writer task");
        let mut rest = [0u8; 5];
        server.read_exact(&mut rest).await.expect("the line");
        assert_eq!(&rest, b"ping\n");
    }

    #[tokio::test(start_paused = true)]
    async fn receive_gives_up_at_the_deadline_and_on_close() {
        let (mut client, mut server) = tokio::io::duplex(64);
        {
            use tokio::io::AsyncWriteExt as _;
            client
                .write_all(&SIGNATURE[..4])
                .await
                .expect("duplex write");
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let err = receive(&mut server, deadline, &CancellationToken::new()).await;
        assert!(
            matches!(err, Err(ReceiveError::Timeout { received: 4 })),
            "{err:?}"
        );
        drop(client);
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let err = receive(&mut server, deadline, &CancellationToken::new()).await;
        assert!(
            matches!(err, Err(ReceiveError::Closed { received: 0 })),
            "{err:?}"
        );
        let (_client, mut server) = tokio::io::duplex(64);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        let err = receive(&mut server, far, &shutdown).await;
        assert!(matches!(err, Err(ReceiveError::Shutdown)), "{err:?}");
    }

    fn any_header() -> impl Strategy<Value = ProxyHeader> {
        let v4 = (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>(),
        )
            .prop_map(|(s, sp, d, dp)| ProxyHeader::Proxy {
                source: SocketAddr::new(Ipv4Addr::from(s).into(), sp),
                destination: SocketAddr::new(Ipv4Addr::from(d).into(), dp),
            });
        let v6 = (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>(),
        )
            .prop_map(|(s, sp, d, dp)| ProxyHeader::Proxy {
                source: SocketAddr::new(Ipv6Addr::from(s).into(), sp),
                destination: SocketAddr::new(Ipv6Addr::from(d).into(), dp),
            });
        prop_oneof![v4, v6, Just(ProxyHeader::Local), Just(ProxyHeader::Unknown)]
    }

    proptest! {
        /// encode → decode round-trips, with TLVs and trailing bytes left alone.
        #[test]
        fn encode_then_decode_round_trips(
            header in any_header(),
            tlvs in proptest::collection::vec(any::<u8>(), 0..64),
            rest in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let mut bytes = Vec::new();
            encode(&header, &tlvs, &mut bytes);
            let len = bytes.len();
            bytes.extend_from_slice(&rest);
            prop_assert_eq!(decode(&bytes), Ok(Decoded::Header { header, len }));
        }

        /// Fed as [`receive`] feeds it (only the bytes asked for), any cut of a valid
        /// header decodes to it, and asks for no byte beyond it.
        #[test]
        fn any_prefix_asks_for_no_more_than_the_rest(header in any_header(), cut in 0usize..64) {
            let mut bytes = Vec::new();
            encode(&header, &[], &mut bytes);
            let cut = cut.min(bytes.len());
            match decode(&bytes[..cut]) {
                Ok(Decoded::Incomplete { needed }) => prop_assert!(cut + needed <= bytes.len()),
                Ok(Decoded::Header { len, .. }) => prop_assert_eq!(len, bytes.len()),
                Err(err) => prop_assert!(false, "{err}"),
            }
        }

        /// Arbitrary bytes never panic, and a header, if found, fits inside them.
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            match decode(&bytes) {
                Ok(Decoded::Header { len, .. }) => prop_assert!(len <= bytes.len()),
                Ok(Decoded::Incomplete { needed }) => {
                    prop_assert!(needed > 0);
                    prop_assert!(bytes.len() + needed <= PREFIX_BYTES + MAX_ADDRESS_BYTES);
                }
                Err(_) => {}
            }
        }

        /// After the signature, random bytes: decoding still never panics.
        #[test]
        fn signature_then_noise_never_panics(noise in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = SIGNATURE.to_vec();
            bytes.extend_from_slice(&noise);
            let _ = decode(&bytes);
        }
    }
}
