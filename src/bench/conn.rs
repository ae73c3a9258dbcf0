//! Opening one bench connection: resolve the address, connect (from 127.0.0.x with
//! `--source-ips`) and check that a sensorlink server answers the opening `ping`. The
//! handshake and every reply after it go through the client's transport
//! ([`crate::client::transport`]): the same reply decoders, the same bounds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use crate::client::transport::{
    self, timed_out, Connection, LegacyReplyDecoder, ReplyDecoder, TransportError,
};
use crate::protocol::control::{AuthSecret, Reply};
use crate::protocol::legacy;

use rustls_pki_types::ServerName;
use tokio_rustls::client::TlsStream;

use super::args::{BenchTls, Mode};
use super::Shared;

/// Longest wait for a TCP connect (and its `ping`/`pong` check).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bench's opening line: its `pong bench` answer tells a sensorlink server from others.
const HELLO: &[u8] = b"ping bench\n";

/// A connection that answered its `ping`, with the reply decoder of its mode.
pub(super) enum Opened<S = TcpStream> {
    Line(Connection<S, ReplyDecoder>),
    Legacy(Connection<S, LegacyReplyDecoder>),
}

/// An opened connection, over plain TCP or, with `--tls`, TLS.
pub(super) enum Stream {
    Plain(Opened<TcpStream>),
    Tls(Opened<TlsStream<TcpStream>>),
}

/// `--tls`: the client configuration (its CA read once) and the name the server's
/// certificate is checked against.
pub(super) struct TlsSetup {
    connector: crate::tls::TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSetup")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// # Errors
    /// A CA file that cannot be read or holds no certificate; a name that is not a valid TLS
    /// server name.
    pub(super) fn new(addr: &str, tls: &BenchTls) -> anyhow::Result<TlsSetup> {
        let config = crate::tls::client_config(tls.ca.as_deref(), None)?;
        Ok(TlsSetup {
            connector: crate::tls::TlsConnector::from(config),
            server_name: crate::tls::server_name(addr, tls.server_name.as_deref())?,
        })
    }
}

pub(super) async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolves to nothing",
        )
    })
}

/// Open one connection (from 127.0.0.x with `--source-ips`) and check that a sensorlink
/// server answers on it: `ping bench` → `pong bench`, or the seed's `ping` → `pong`.
pub(super) async fn connect(shared: &Shared, index: usize) -> Result<Stream, TransportError> {
    let stream = open_tcp(shared, index).await?;
    let (mode, token) = (shared.settings.mode, shared.settings.token.as_ref());
    match &shared.tls {
        None => Ok(Stream::Plain(check(stream, mode, token).await?)),
        Some(tls) => {
            let handshake = tls.connector.connect(tls.server_name.clone(), stream);
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
                .await
                .map_err(|_| timed_out("TLS handshake (does the server serve TLS on this port?)"))?
                .map_err(|err| {
                    // Say which step failed: "TLS handshake: invalid peer certificate: …".
                    std::io::Error::new(err.kind(), format!("TLS handshake: {err}"))
                })?;
            Ok(Stream::Tls(check(stream, mode, token).await?))
        }
    }
}

/// The opening exchange of `mode` on any stream, within [`CONNECT_TIMEOUT`].
async fn check<S>(
    stream: S,
    mode: Mode,
    token: Option<&AuthSecret>,
) -> Result<Opened<S>, TransportError>
where
    S: AsyncRead + AsyncWrite,
{
    if mode == Mode::Legacy {
        let mut conn = transport::split(stream, LegacyReplyDecoder);
        let pong = transport::handshake(&mut conn, legacy::PING, CONNECT_TIMEOUT).await?;
        if pong[..] != legacy::PONG[..] {
            return Err(not_sensorlink(&pong));
        }
        Ok(Opened::Legacy(conn))
    } else {
        let mut conn = transport::split(stream, ReplyDecoder::default());
        match transport::auth_handshake(&mut conn, HELLO, token, CONNECT_TIMEOUT).await {
            Ok(Reply::Pong(Some(token))) if token == "bench" => Ok(Opened::Line(conn)),
            Ok(other) => {
                let mut text = Vec::new();
                other.encode(&mut text);
                Err(not_sensorlink(text.trim_ascii_end()))
            }
            Err(TransportError::BadReply { line, .. }) => Err(not_sensorlink(line.as_bytes())),
            Err(err) => Err(err),
        }
    }
}

/// TCP connect within [`CONNECT_TIMEOUT`], from `--source-ips`' address if given.
async fn open_tcp(shared: &Shared, index: usize) -> std::io::Result<TcpStream> {
    let target = shared.target;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(n) = shared.settings.source_ips {
        socket.bind(SocketAddr::new(source_ip(index, n), 0))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| timed_out("connect"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Connection `index`'s local address among `n` loopback addresses.
pub(super) fn source_ip(index: usize, n: u8) -> IpAddr {
    // n ≤ 254, so the last octet stays in 1..=254.
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(n)) as u8))
}

fn not_sensorlink(answer: &[u8]) -> TransportError {
    let shown = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    TransportError::NotASensorlinkServer(shown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A peer that reads the opening line, answers `answer` and stays open.
    fn peer(answer: &'static [u8]) -> tokio::io::DuplexStream {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut hello = [0u8; 64];
            let _ = theirs.read(&mut hello).await;
            let _ = theirs.write_all(answer).await;
            // Held open until the test ends: a close would be a different failure.
            let _ = theirs.read(&mut hello).await;
        });
        ours
    }

    #[tokio::test]
    async fn a_sensorlink_server_answers_pong_bench() {
        assert!(matches!(
            check(peer(b"pong bench\n"), Mode::Line, None).await,
            Ok(Opened::Line(_))
        ));
        assert!(matches!(
            check(peer(b"pong"), Mode::Legacy, None).await,
            Ok(Opened::Legacy(_))
        ));
    }

    #[tokio::test]
    async fn any_other_answer_is_not_a_sensorlink_server() {
        for (answer, mode) in [
            (&b"pong connect\n"[..], Mode::Line),
            (b"ack 1 readings=1 rejected=0\n", Mode::Idle),
            (b"HTTP/1.1 400 Bad Request\r\n", Mode::Line),
            (b"nope", Mode::Legacy),
        ] {
            match check(peer(answer), mode, None).await {
                Err(err @ TransportError::NotASensorlinkServer(_)) => {
                    assert!(err.to_string().contains("not a sensorlink server"), "{err}");
                }
                Err(other) => panic!("{answer:?}: {other}"),
                Ok(_) => panic!("{answer:?} accepted"),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_times_out() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        assert!(matches!(
            check(ours, Mode::Line, None).await,
            Err(TransportError::TimedOut { .. })
        ));
    }

    #[test]
    fn source_ips_cycle_over_loopback() {
        assert_eq!(source_ip(0, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_ip(2, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(source_ip(3, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            source_ip(253, 254),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 254))
        );
    }
}
