//! The client's side of a connection: connect, the opening `ping`/`pong`, writing lines and
//! reading replies through one bounded decoder. Shared by `client`, `client --legacy` and
//! `bench`.
//!
//! Everything here is generic over `AsyncRead + AsyncWrite + Unpin`, so a TCP stream, a TLS
//! stream or an in-memory [`tokio::io::duplex`] pair plug in unchanged; only
//! [`TcpConnector`] knows about TCP.
//!
//! Replies are decoded by a tokio-util [`Decoder`]: [`ReplyDecoder`] for line mode
//! (`pong`/`ack`/`error` lines, parsed by [`Reply::parse`]), [`LegacyReplyDecoder`] for the
//! seed's bytes (whatever one `recv(1024)` returns). Both are bounded.

use std::future::Future;
use std::os::fd::AsFd as _;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::kernel::KernelSocket;

use crate::protocol::control::{AuthSecret, Reply, AUTH_FAILED_PREFIX, AUTH_OFF_REASON};

/// Longest reply line we accept from a server, `\n` included.
pub const MAX_REPLY_BYTES: usize = 4096;

/// The seed read its replies with `recv(1024)`: one legacy reply is at most this long.
pub const LEGACY_RECV_BYTES: usize = 1024;

/// The opening line of a line-mode connection; the server answers `pong connect`.
pub const LINE_HELLO: &[u8] = b"ping connect\n";

/// Why a connection could not be used (any of them ends the connection, never the run).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{what} timed out")]
    TimedOut { what: &'static str },
    #[error("server closed the connection")]
    Closed,
    #[error("reply line too long or cut off")]
    ReplyTooLong,
    #[error("bad reply from server: {cause}")]
    BadReply { line: String, cause: String },
    #[error("not a sensorlink server: answered {0:?} to ping")]
    NotASensorlinkServer(String),
    #[error("the server answered with a TLS alert: it serves TLS (connect with --tls)")]
    ServerSpeaksTls,
    /// The server refused our `auth` token: permanent, a reconnect would be refused too.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
}

/// The first bytes of a TLS alert record (content type 21, version 3.x): what a TLS server
/// answers to plain text before it closes.
const TLS_ALERT_PREFIX: &[u8] = &[0x15, 0x03];

/// [`TransportError::TimedOut`] where an I/O error is expected (a [`Connector`]): one
/// notion of "timed out", of kind `TimedOut`, with the same words.
pub fn timed_out(what: &'static str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        TransportError::TimedOut { what },
    )
}

/// Decodes line-mode replies (`pong`, `ack`, `error`), each at most [`MAX_REPLY_BYTES`].
///
/// A reply that does not parse is an `Err`: the client cannot know what it acknowledged, so
/// the connection is closed and the unacknowledged readings are sent again on the next one.
#[derive(Debug, Default)]
pub struct ReplyDecoder {
    /// Bytes of `buf` already searched for `\n`, so a reply arriving in pieces is scanned once.
    scanned: usize,
}

impl Decoder for ReplyDecoder {
    type Item = Reply;
    type Error = TransportError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, TransportError> {
        let Some(end) = memchr::memchr(b'\n', &buf[self.scanned..]).map(|i| self.scanned + i)
        else {
            if buf.len() >= MAX_REPLY_BYTES {
                return Err(TransportError::ReplyTooLong);
            }
            self.scanned = buf.len();
            return Ok(None);
        };
        self.scanned = 0;
        if end >= MAX_REPLY_BYTES {
            return Err(TransportError::ReplyTooLong);
        }
        let line = buf.split_to(end + 1);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        Reply::parse(text)
            .map(Some)
            .map_err(|err| TransportError::BadReply {
                line: text.to_string(),
                cause: err.to_string(),
            })
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, TransportError> {
        match self.decode(buf)? {
            Some(reply) => Ok(Some(reply)),
            None if buf.is_empty() => Ok(None),
            None if buf.starts_with(TLS_ALERT_PREFIX) => Err(TransportError::ServerSpeaksTls),
            None => Err(TransportError::ReplyTooLong),
        }
    }
}

/// Decodes the seed's replies: whatever bytes arrived, at most [`LEGACY_RECV_BYTES`] at a
/// time, as the seed's `recv(1024)` took them (legacy replies carry no framing).
#[derive(Debug, Default)]
pub struct LegacyReplyDecoder;

impl Decoder for LegacyReplyDecoder {
    type Item = Bytes;
    type Error = TransportError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, TransportError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let n = buf.len().min(LEGACY_RECV_BYTES);
        Ok(Some(buf.split_to(n).freeze()))
    }
}

/// The read side of a connection: its buffer and its reply decoder.
#[derive(Debug)]
pub struct ReplyReader<R, D> {
    read: R,
    buf: BytesMut,
    decoder: D,
}

impl<R: AsyncRead + Unpin, D: Decoder<Error = TransportError>> ReplyReader<R, D> {
    pub fn new(read: R, decoder: D) -> Self {
        ReplyReader {
            read,
            buf: BytesMut::with_capacity(MAX_REPLY_BYTES),
            decoder,
        }
    }

    /// The next reply already buffered, if any: no I/O (to handle every ready reply at once).
    ///
    /// # Errors
    /// A reply that does not decode.
    pub fn buffered_reply(&mut self) -> Result<Option<D::Item>, TransportError> {
        self.decoder.decode(&mut self.buf)
    }

    /// The next reply; [`TransportError::Closed`] at the end of the stream.
    ///
    /// Cancel-safe (usable in `tokio::select!`): bytes read so far stay in the buffer.
    pub async fn read_reply(&mut self) -> Result<D::Item, TransportError> {
        loop {
            if let Some(reply) = self.decoder.decode(&mut self.buf)? {
                return Ok(reply);
            }
            // Never more than one reply's worth beyond what is buffered: the bound holds.
            self.buf.reserve(MAX_REPLY_BYTES);
            if self.read.read_buf(&mut self.buf).await? == 0 {
                return match self.decoder.decode_eof(&mut self.buf)? {
                    Some(reply) => Ok(reply),
                    None => Err(TransportError::Closed),
                };
            }
        }
    }
}

/// The write side of a connection: a queue of bytes written as the peer takes them.
#[derive(Debug)]
pub struct LineWriter<W> {
    write: W,
    out: BytesMut,
    /// Bytes were written since the last flush (a TLS stream buffers them).
    unflushed: bool,
}

impl<W: AsyncWrite + Unpin> LineWriter<W> {
    pub fn new(write: W) -> Self {
        LineWriter {
            write,
            out: BytesMut::new(),
            unflushed: false,
        }
    }

    /// Queue bytes; [`LineWriter::push`] writes them.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// Whether [`LineWriter::push`] has anything to do.
    pub fn busy(&self) -> bool {
        !self.out.is_empty() || self.unflushed
    }

    /// Write some queued bytes, or flush once all are written.
    ///
    /// Cancel-safe: a cancelled write wrote nothing, and a cancelled flush is retried.
    pub async fn push(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let n = self.write.write_buf(&mut self.out).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.unflushed = true;
            if !self.out.is_empty() {
                return Ok(());
            }
        }
        // All written: flush in the same call, not in another turn of the caller's loop (a
        // round trip's write would otherwise cost two; TCP's flush does nothing, TLS's sends
        // its buffered record). Cancelled here, `unflushed` is still set and it is retried.
        self.write.flush().await?;
        self.unflushed = false;
        Ok(())
    }

    /// Close our side: a TLS stream sends its `close_notify` (so the server sees a clean end,
    /// not a truncation), TCP its FIN.
    pub async fn close(&mut self) -> std::io::Result<()> {
        self.write.shutdown().await
    }

    /// Write everything queued and flush.
    pub async fn push_all(&mut self) -> std::io::Result<()> {
        while self.busy() {
            self.push().await?;
        }
        Ok(())
    }
}

/// A connection split into its reply reader and its line writer.
pub type Connection<S, D> = (ReplyReader<ReadHalf<S>, D>, LineWriter<WriteHalf<S>>);

/// Split a stream into a reply reader (decoding with `decoder`) and a line writer.
pub fn split<S, D>(stream: S, decoder: D) -> Connection<S, D>
where
    S: AsyncRead + AsyncWrite,
    D: Decoder<Error = TransportError>,
{
    let (read, write) = tokio::io::split(stream);
    (ReplyReader::new(read, decoder), LineWriter::new(write))
}

/// Send `hello` and wait for the first reply, within `timeout`: the opening handshake.
///
/// # Errors
/// A write or read failure, the timeout, or the connection closing first.
pub async fn handshake<S, D>(
    conn: &mut Connection<S, D>,
    hello: &[u8],
    timeout: Duration,
) -> Result<D::Item, TransportError>
where
    S: AsyncRead + AsyncWrite,
    D: Decoder<Error = TransportError>,
{
    let (reader, writer) = conn;
    writer.queue(hello);
    let exchange = async {
        writer.push_all().await?;
        reader.read_reply().await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| TransportError::TimedOut { what: "first pong" })?
}

/// [`handshake`] in line mode, with `auth <token>` first when given (one round trip: both
/// lines go out together). The reply to `auth` is `ok auth <id>`; a server without `--auth`
/// answers an error (warned about once per process, then the connection goes on).
///
/// # Errors
/// As [`handshake`], and [`TransportError::AuthFailed`] when the token is refused.
pub async fn auth_handshake<S>(
    conn: &mut Connection<S, ReplyDecoder>,
    hello: &[u8],
    token: Option<&AuthSecret>,
    timeout: Duration,
) -> Result<Reply, TransportError>
where
    S: AsyncRead + AsyncWrite,
{
    let Some(token) = token else {
        return handshake(conn, hello, timeout).await;
    };
    let (reader, writer) = conn;
    writer.queue(b"auth ");
    writer.queue(token.expose().as_bytes());
    writer.queue(b"\n");
    writer.queue(hello);
    let exchange = async {
        writer.push_all().await?;
        match reader.read_reply().await? {
            Reply::AuthOk(id) => tracing::debug!(token_id = %id, "authenticated"),
            // An older server does not know `auth` at all: the same as auth being off.
            Reply::Error { reason, .. }
                if reason == AUTH_OFF_REASON || reason.starts_with("unknown command") =>
            {
                warn_auth_off();
            }
            Reply::Error { reason, .. } => {
                let why = reason.strip_prefix(AUTH_FAILED_PREFIX).unwrap_or(&reason);
                return Err(TransportError::AuthFailed(why.to_owned()));
            }
            other => return Err(TransportError::NotASensorlinkServer(reply_text(&other))),
        }
        reader.read_reply().await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| TransportError::TimedOut { what: "first pong" })?
}

/// Once per process: a token was given, but the server does not check tokens.
fn warn_auth_off() {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!("the server does not check tokens (no --auth); going on without");
    });
}

/// A reply as its line, for messages.
fn reply_text(reply: &Reply) -> String {
    let mut text = Vec::new();
    reply.encode(&mut text);
    String::from_utf8_lossy(&text).trim_end().to_string()
}

/// The line-mode handshake: `auth <token>` first when given, then `ping connect`, which
/// must be answered by a `pong`.
///
/// # Errors
/// As [`auth_handshake`], and [`TransportError::NotASensorlinkServer`] for any other answer.
pub async fn line_handshake<S>(
    conn: &mut Connection<S, ReplyDecoder>,
    token: Option<&AuthSecret>,
    timeout: Duration,
) -> Result<(), TransportError>
where
    S: AsyncRead + AsyncWrite,
{
    match auth_handshake(conn, LINE_HELLO, token, timeout).await {
        Ok(Reply::Pong(_)) => Ok(()),
        Ok(other) => Err(TransportError::NotASensorlinkServer(reply_text(&other))),
        // The same message the client always gave for a non-sensorlink answer.
        Err(TransportError::BadReply { line, .. }) => {
            Err(TransportError::NotASensorlinkServer(line))
        }
        Err(err) => Err(err),
    }
}

/// Something that opens a new stream to the server: TCP for the CLI, a duplex pair in tests.
pub trait Connector {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// What timed out when [`Connector::connect`] does not finish in time ("… timed out").
    const TIMEOUT_WHAT: &'static str = "connect";

    /// Open one stream (the handshake is the caller's).
    fn connect(&mut self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;

    /// The stream's TCP socket, for the kernel's figures (`TCP_INFO`); `None` when the
    /// stream is no socket (an in-memory pair in tests).
    fn kernel_socket(_stream: &Self::Stream) -> Option<KernelSocket> {
        None
    }
}

/// Any closure returning a future of a stream is a connector (tests use this).
impl<F, Fut, S> Connector for F
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<S>> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = S;

    fn connect(&mut self) -> impl Future<Output = std::io::Result<S>> + Send {
        self()
    }
}

/// Connects over TCP, with a timeout, and disables Nagle (each reading goes out at once).
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub addr: String,
    pub timeout: Duration,
}

impl Connector for TcpConnector {
    type Stream = TcpStream;

    fn kernel_socket(stream: &TcpStream) -> Option<KernelSocket> {
        KernelSocket::of(stream.as_fd())
    }

    fn connect(&mut self) -> impl Future<Output = std::io::Result<TcpStream>> + Send {
        connect_tcp(self.addr.clone(), self.timeout)
    }
}

/// Connects over TCP and completes a TLS handshake; the caller bounds both (the connect
/// timeout).
#[derive(Clone)]
pub struct TlsTcpConnector {
    pub addr: String,
    pub connector: crate::tls::TlsConnector,
    pub server_name: rustls_pki_types::ServerName<'static>,
}

impl std::fmt::Debug for TlsTcpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTcpConnector")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Connector for TlsTcpConnector {
    type Stream = tokio_rustls::client::TlsStream<TcpStream>;

    fn kernel_socket(stream: &Self::Stream) -> Option<KernelSocket> {
        KernelSocket::of(stream.get_ref().0.as_fd())
    }
    // A plain server waits for a line that a ClientHello never ends: say what to check.
    const TIMEOUT_WHAT: &'static str =
        "connect and TLS handshake (does the server serve TLS on this port?)";

    fn connect(&mut self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send {
        let addr = self.addr.clone();
        let (connector, name) = (self.connector.clone(), self.server_name.clone());
        async move {
            let tcp = TcpStream::connect(&addr).await?;
            tcp.set_nodelay(true)?;
            connector.connect(name, tcp).await.map_err(|err| {
                // Say which step failed: "TLS handshake: invalid peer certificate: …".
                std::io::Error::new(err.kind(), format!("TLS handshake: {err}"))
            })
        }
    }
}

/// Open a TCP connection to `addr` within `timeout`, with `TCP_NODELAY`.
///
/// # Errors
/// The connect failing, or not finishing within `timeout` (kind `TimedOut`).
pub async fn connect_tcp(addr: String, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(&addr))
        .await
        .map_err(|_| timed_out("connect"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::control::Ack;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Reply, String>> {
        let mut decoder = ReplyDecoder::default();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(reply)) => out.push(Ok(reply)),
                Ok(None) => break,
                Err(err) => {
                    out.push(Err(err.to_string()));
                    break;
                }
            }
        }
        out
    }

    /// One `push` writes what fits and, once everything is written, flushes too: a round
    /// trip's write is one turn of the caller's loop, and nothing is left to do after it.
    #[tokio::test]
    async fn one_push_writes_and_flushes() {
        let (ours, mut peer) = tokio::io::duplex(64);
        let mut writer = LineWriter::new(ours);
        writer.queue(b"m v=1i 1\nsync 1\n");
        writer.push().await.expect("push");
        assert!(!writer.busy(), "written and flushed in one push");
        let mut got = [0u8; 16];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
            .await
            .expect("read");
        assert_eq!(&got, b"m v=1i 1\nsync 1\n");
        // More than the pipe takes: the first push writes a part and leaves the rest queued.
        writer.queue(&[b'x'; 100]);
        writer.push().await.expect("push");
        assert!(writer.busy(), "the rest is still queued");
        assert_eq!(writer.queued(), 100 - 64);
    }

    #[test]
    fn decodes_pong_ack_and_error_lines() {
        let replies = decode_all(b"pong connect\nack 7 readings=2 rejected=0\nerror 3 bad\n");
        assert_eq!(
            replies,
            vec![
                Ok(Reply::Pong(Some("connect".into()))),
                Ok(Reply::Ack(Ack {
                    token: "7".into(),
                    readings: 2,
                    ..Ack::default()
                })),
                Ok(Reply::Error {
                    line: 3,
                    reason: "bad".into()
                }),
            ]
        );
    }

    #[test]
    fn a_reply_cut_in_pieces_waits_for_its_newline() {
        let mut decoder = ReplyDecoder::default();
        let mut buf = BytesMut::from(&b"ack 1 readi"[..]);
        assert!(matches!(decoder.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"ngs=1 rejected=0\r\npo");
        assert!(matches!(decoder.decode(&mut buf), Ok(Some(Reply::Ack(_)))));
        assert!(matches!(decoder.decode(&mut buf), Ok(None)));
        assert_eq!(&buf[..], b"po");
    }

    #[test]
    fn an_endless_reply_is_an_error_at_the_bound() {
        let mut decoder = ReplyDecoder::default();
        let mut buf = BytesMut::from(&vec![b'a'; MAX_REPLY_BYTES - 1][..]);
        assert!(matches!(decoder.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(b"a");
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(TransportError::ReplyTooLong)
        ));
    }

    #[test]
    fn garbage_is_a_bad_reply() {
        let replies = decode_all(b"hello\n");
        assert!(
            matches!(&replies[..], [Err(e)] if e.starts_with("bad reply from server")),
            "{replies:?}"
        );
    }

    #[test]
    fn legacy_replies_are_whatever_arrived_at_most_1024_bytes() {
        let mut decoder = LegacyReplyDecoder;
        let mut buf = BytesMut::new();
        assert!(matches!(decoder.decode(&mut buf), Ok(None)));
        buf.extend_from_slice(&[b'p'; LEGACY_RECV_BYTES + 4]);
        let first = decoder.decode(&mut buf).ok().flatten().map(|b| b.len());
        assert_eq!(first, Some(LEGACY_RECV_BYTES));
        assert_eq!(
            decoder.decode(&mut buf).ok().flatten().map(|b| b.len()),
            Some(4)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn line_handshake_over_a_duplex_pair() {
        let (client, mut server) = tokio::io::duplex(1024);
        let peer = tokio::spawn(async move {
            let mut got = [0u8; LINE_HELLO.len()];
            server.read_exact(&mut got).await.expect("hello arrives");
            server
                .write_all(b"pong connect\n")
                .await
                .expect("pipe open");
            got
        });
        let mut conn = split(client, ReplyDecoder::default());
        let shook = line_handshake(&mut conn, None, Duration::from_secs(1)).await;
        assert!(shook.is_ok(), "{shook:?}");
        assert_eq!(&peer.await.expect("peer task")[..], LINE_HELLO);
    }

    /// A server that reads the two opening lines and answers `replies`.
    fn auth_server(
        replies: &'static [u8],
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<Vec<u8>>) {
        let (client, mut server) = tokio::io::duplex(1024);
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while got.iter().filter(|&&b| b == b'\n').count() < 2 {
                let n = server.read(&mut buf).await.expect("client open");
                assert!(n > 0, "client closed early");
                got.extend_from_slice(&buf[..n]);
            }
            server.write_all(replies).await.expect("client open");
            got
        });
        (client, task)
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_token_auth_goes_first_and_its_ok_is_taken() {
        let (client, server) = auth_server(b"ok auth abcd1234\npong connect\n");
        let mut conn = split(client, ReplyDecoder::default());
        let token = AuthSecret::new("sl_abcd1234_secret");
        let shook = line_handshake(&mut conn, Some(&token), Duration::from_secs(1)).await;
        assert!(shook.is_ok(), "{shook:?}");
        let sent = server.await.expect("server task");
        assert_eq!(&sent[..], b"auth sl_abcd1234_secret\nping connect\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_an_auth_failure() {
        let (client, _server) = auth_server(b"error 1 auth failed: unknown token\npong connect\n");
        let mut conn = split(client, ReplyDecoder::default());
        let token = AuthSecret::new("sl_abcd1234_secret");
        let shook = line_handshake(&mut conn, Some(&token), Duration::from_secs(1)).await;
        match shook {
            Err(err @ TransportError::AuthFailed(_)) => {
                assert_eq!(err.to_string(), "authentication failed: unknown token");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_auth_is_warned_about_and_used() {
        for refusal in [
            &b"error 1 auth is not enabled on this server\npong connect\n"[..],
            &b"error 1 unknown command \"auth\"\npong connect\n"[..],
        ] {
            let refusal: &'static [u8] = Box::leak(refusal.to_vec().into_boxed_slice());
            let (client, _server) = auth_server(refusal);
            let mut conn = split(client, ReplyDecoder::default());
            let token = AuthSecret::new("sl_abcd1234_secret");
            let shook = line_handshake(&mut conn, Some(&token), Duration::from_secs(1)).await;
            assert!(shook.is_ok(), "{shook:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_the_handshake_out() {
        let (client, _server) = tokio::io::duplex(1024);
        let mut conn = split(client, ReplyDecoder::default());
        let shook = line_handshake(&mut conn, None, Duration::from_secs(3)).await;
        assert!(
            matches!(shook, Err(TransportError::TimedOut { what: "first pong" })),
            "{shook:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_answering_something_else_is_not_a_sensorlink_server() {
        let (client, mut server) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let _ = server.write_all(b"SSH-2.0-OpenSSH\n").await;
            std::future::pending::<()>().await;
        });
        let mut conn = split(client, ReplyDecoder::default());
        let shook = line_handshake(&mut conn, None, Duration::from_secs(1)).await;
        assert!(
            matches!(&shook, Err(TransportError::NotASensorlinkServer(_))),
            "{shook:?}"
        );
    }

    #[test]
    fn a_timed_out_io_error_is_the_transport_timeout() {
        let err = timed_out("connect");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "connect timed out");
        let inner = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<TransportError>());
        assert!(matches!(
            inner,
            Some(TransportError::TimedOut { what: "connect" })
        ));
    }
}
