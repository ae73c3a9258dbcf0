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

/// Wait for bytes (without a buffer when none is pending), then read them into `buf`.
/// Cancel-safe: both steps are.
pub(super) async fn read_when_ready<S: PeerStream>(
    stream: &mut S,
    buf: &mut BytesMut,
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
    stream.read_buf(buf).await
}
