//! Opening one bench connection: resolve the address, connect (from 127.0.0.x with
//! `--source-ips`) and check that a sensorlink server answers the opening `ping`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::protocol::control::Reply;
use crate::protocol::legacy;

use super::args::Mode;
use super::{Shared, MAX_REPLY_BYTES};

/// Longest wait for a TCP connect (and its `ping`/`pong` check).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
pub(super) async fn connect(shared: &Shared, index: usize) -> std::io::Result<TcpStream> {
    let target = shared.target;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(n) = shared.settings.source_ips {
        socket.bind(SocketAddr::new(source_ip(index, n), 0))?;
    }
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| timed_out("connect"))??;
    stream.set_nodelay(true)?;
    let check = async {
        if shared.settings.mode == Mode::Legacy {
            stream.write_all(legacy::PING).await?;
            let mut pong = [0u8; 4];
            stream.read_exact(&mut pong).await?;
            if pong != legacy::PONG {
                return Err(not_sensorlink(&pong));
            }
        } else {
            stream.write_all(b"ping bench\n").await?;
            let mut line = BytesMut::with_capacity(64);
            while memchr::memchr(b'\n', &line).is_none() {
                if line.len() > MAX_REPLY_BYTES || stream.read_buf(&mut line).await? == 0 {
                    return Err(not_sensorlink(&line));
                }
            }
            let text = std::str::from_utf8(&line).map_err(|_| not_sensorlink(&line))?;
            if Reply::parse(text.trim_end()) != Ok(Reply::Pong(Some("bench".into()))) {
                return Err(not_sensorlink(&line));
            }
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, check)
        .await
        .map_err(|_| timed_out("pong"))??;
    Ok(stream)
}

/// Connection `index`'s local address among `n` loopback addresses.
pub(super) fn source_ip(index: usize, n: u8) -> IpAddr {
    // n ≤ 254, so the last octet stays in 1..=254.
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(n)) as u8))
}

pub(super) fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}

pub(super) fn not_sensorlink(answer: &[u8]) -> std::io::Error {
    let shown = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("not a sensorlink server: answered {shown:?} to ping"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
