//! [`Session`]: one protocol's part of the engine's loop (its bytes, its reply decoder, how a
//! reply is matched to a reading, how many readings may be in flight), and the [`Event`] a
//! reply means. [`super::line`] and [`super::legacy`] implement it. [`open`] opens a
//! connection with a session's handshake.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use super::kernel::KernelSocket;
use super::output::ServerTimes;
use super::transport::{self, Connection, Connector, TransportError};
use crate::protocol::{FieldValue, Reading};

/// What a reply means for delivery, as a [`Session`] reads it.
#[derive(Debug)]
pub(crate) enum Event {
    /// Everything sent up to `token` is stored (`rejected`: the reading `token` was refused).
    Ack {
        token: u64,
        rejected: bool,
        /// Readings the ack covers that the server found already stored: with the same
        /// value (`duplicates`, harmless) or another (`conflicts`: refused, the server keeps
        /// the value it had). Absent from an ack (an older server, legacy mode) means 0.
        duplicates: u64,
        conflicts: u64,
        times: ServerTimes,
        /// The raw reply, printed as it came (legacy mode).
        raw: Option<Bytes>,
    },
    /// The server refused line `line` of this connection.
    Rejected { line: u64, reason: String },
    /// The server answered a `sync` (on `line`) with an error (its store failed): no ack
    /// will come for it, so waiting for the reply timeout is pointless.
    SyncFailed { line: u64, reason: String },
    /// Nothing to do (a `pong`, or an ack we cannot match).
    Ignore,
}

/// One protocol's part of the loop: its bytes and how replies match readings.
///
/// `Send + Sync` with `Send` futures, so a whole run can be spawned on a runtime.
pub(crate) trait Session: Send + Sync {
    type Decoder: Decoder<Item: Send, Error = TransportError> + Send;

    /// The seed's reporting: connect time includes the first pong, losses are printed as
    /// `Packet loss`, and resent readings' RTTs count too.
    const LEGACY: bool;

    fn decoder(&self) -> Self::Decoder;

    /// The opening exchange on a new connection.
    fn handshake<S: AsyncRead + AsyncWrite + Send>(
        &self,
        conn: &mut Connection<S, Self::Decoder>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<(), TransportError>> + Send;

    /// Most readings in flight at once.
    fn window(&self) -> usize;

    /// The reading for a value produced at `timestamp_ns`.
    fn reading(&self, value: FieldValue, timestamp_ns: i64) -> Reading;

    /// Append the bytes that send reading `seq`.
    fn encode(&self, seq: u64, reading: &Reading, out: &mut Vec<u8>);

    /// Which reading written on the connection (1: the first) line `line` belongs to, when
    /// the server's errors name lines (`None`: they don't, or it is no reading's line).
    fn reading_of_line(&self, _line: u64) -> Option<u64> {
        None
    }

    /// What `reply` means; `oldest_in_flight` is the first reading awaiting its reply.
    fn interpret(
        &self,
        reply: <Self::Decoder as Decoder>::Item,
        oldest_in_flight: Option<u64>,
    ) -> Event;
}

/// An open connection, how long the connect took, the first pong (line mode), and its
/// socket for the kernel's figures (`None`: not a TCP socket).
pub(crate) type Opened<T, D> = (
    Connection<T, D>,
    Duration,
    Option<Duration>,
    Option<KernelSocket>,
);

/// Open a stream and handshake, both within one `timeout` (one deadline, not one each);
/// times both.
pub(crate) async fn open<S: Session, C: Connector>(
    session: &S,
    timeout: Duration,
    connector: &mut C,
) -> Result<Opened<C::Stream, S::Decoder>, TransportError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let stream = tokio::time::timeout_at(deadline, connector.connect())
        .await
        .map_err(|_| TransportError::TimedOut {
            what: C::TIMEOUT_WHAT,
        })??;
    let connect_time = start.elapsed();
    let socket = C::kernel_socket(&stream);
    let mut conn = transport::split(stream, session.decoder());
    let ping_start = Instant::now();
    let left = deadline.saturating_duration_since(ping_start);
    session.handshake(&mut conn, left).await?;
    if S::LEGACY {
        Ok((conn, start.elapsed(), None, socket))
    } else {
        Ok((conn, connect_time, Some(ping_start.elapsed()), socket))
    }
}
