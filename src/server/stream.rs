//! The byte streams a connection is served over: plain TCP, TLS (`super::tls`), and an
//! in-memory duplex in tests. Readiness is separate from reading so an idle connection
//! waits without holding a read buffer; `TCP_INFO` is read through the stream so TLS
//! connections are measured too.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite};

use crate::net::tcp_info::TcpInfo;

/// Bytes asked for per read; the buffer grows only while a long line is arriving.
pub(super) const READ_CHUNK_BYTES: usize = 8 * 1024;

/// A byte stream a connection can be served over: TCP, TLS, or a duplex in tests.
///
/// `wait_readable` lets an idle connection wait without holding a read buffer, which is what
/// keeps tens of thousands of idle sensors cheap. Streams without readiness just return at
/// once and the read itself waits.
///
/// `tcp_info` reads the kernel's view of the TCP connection underneath (`TCP_INFO`, one
/// `getsockopt`); `None` when there is no TCP socket (a duplex in tests).
pub trait PeerStream: AsyncRead + AsyncWrite + Unpin {
    fn wait_readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> {
        std::future::ready(Ok(()))
    }

    fn tcp_info(&self) -> Option<std::io::Result<TcpInfo>> {
        None
    }
}

impl PeerStream for tokio::net::TcpStream {
    fn wait_readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> {
        // Polled readiness keeps no waiter node in the future (`readable()` does: 152 bytes
        // in every idle connection's task); the connection task is the socket's only reader,
        // so the socket's one reader waker slot is enough.
        std::future::poll_fn(|cx| self.poll_read_ready(cx))
    }

    fn tcp_info(&self) -> Option<std::io::Result<TcpInfo>> {
        Some(crate::net::tcp_info::read(self))
    }
}

impl PeerStream for tokio::io::DuplexStream {}

/// Wait for bytes (without a buffer when none is pending), then read at most `limit` of
/// them into `buf` (a lent spare buffer can be up to 8 chunks long: the limit, not the
/// buffer, sets what one turn of a connection takes). Cancel-safe: both steps are.
pub(super) async fn read_when_ready<S: PeerStream>(
    stream: &mut S,
    buf: &mut BytesMut,
    limit: usize,
) -> std::io::Result<usize> {
    if buf.is_empty() {
        stream.wait_readable().await?;
    }
    if buf.capacity() == 0 {
        // Lent for the read: given back once its bytes are consumed.
        *buf = super::spare::read_buf();
    }
    if buf.capacity() - buf.len() < READ_CHUNK_BYTES / 2 {
        buf.reserve(READ_CHUNK_BYTES);
    }
    if buf.capacity() - buf.len() <= limit {
        stream.read_buf(buf).await
    } else {
        // `limit` is at least 1: a zero-byte read would look like the peer's end of stream.
        let limit = u64::try_from(limit.max(1)).unwrap_or(u64::MAX);
        (&mut *stream).take(limit).read_buf(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn a_read_takes_no_more_than_its_limit_whatever_the_buffer() {
        let (mut peer, mut ours) = tokio::io::duplex(64 * 1024);
        peer.write_all(&[b'x'; 20 * 1024]).await.expect("write");
        // A lent spare buffer can be 8 chunks long; the turn's limit still bounds the read.
        let mut buf = BytesMut::with_capacity(8 * READ_CHUNK_BYTES);
        let n = read_when_ready(&mut ours, &mut buf, 3000)
            .await
            .expect("read");
        assert_eq!((n, buf.len()), (3000, 3000));
        // A limit above what is there: everything that arrived, in one read.
        let n = read_when_ready(&mut ours, &mut buf, 1 << 20)
            .await
            .expect("read");
        assert_eq!(n, 20 * 1024 - 3000);
        // A zero limit still reads (a zero-byte read would mean the peer closed).
        peer.write_all(b"yz").await.expect("write");
        let n = read_when_ready(&mut ours, &mut buf, 0).await.expect("read");
        assert_eq!(n, 1);
    }
}
