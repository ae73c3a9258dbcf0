//! The kernel's view of one TCP connection (Linux `TCP_INFO`, see tcp(7) and
//! `include/uapi/linux/tcp.h`).
//!
//! Over TCP a lost packet is not lost to the application: the kernel retransmits it, so the
//! loss shows up as *delay* (a reply that comes late) and as retransmission counters here,
//! never as a missing reading. These counters are how a user sees the retransmissions that
//! hide behind a slow reply; real loss needs a datagram probe.
//!
//! What each [`TcpInfo`] field means (times in microseconds, as the kernel gives them):
//! - `rtt_us` (`tcpi_rtt`): the smoothed round-trip time (srtt) the kernel uses for its
//!   retransmission timer; `rttvar_us` (`tcpi_rttvar`): its mean deviation (mdev).
//! - `min_rtt_us` (`tcpi_min_rtt`, Linux 4.6+): the lowest RTT seen in a recent window, the
//!   closest figure to the path's propagation delay. Until the first RTT sample the kernel
//!   reports `~0U` ([`NO_MIN_RTT`]); that is `None` here, not 4,294,967 ms. Likewise
//!   `rtt_us` is 0 until then.
//! - `retransmits_total` (`tcpi_total_retrans`): segments retransmitted over the connection's
//!   life. `retrans` (`tcpi_retrans`): segments retransmitted and not yet acknowledged, now.
//!   `lost` (`tcpi_lost`): segments the kernel currently presumes lost (now, not a total).
//! - `snd_cwnd` (`tcpi_snd_cwnd`): the congestion window, in segments.
//! - `delivery_rate_bps` (`tcpi_delivery_rate`, 4.9+): the recent delivery rate, which the
//!   kernel gives in bytes per second; reported here in bits per second.
//! - `bytes_acked` / `bytes_received` (4.1+): payload bytes the peer acknowledged / we received;
//!   `bytes_sent` / `bytes_retrans` (4.19+): payload bytes sent, and of those retransmitted.
//! - `state`: the TCP state (`tcpi_state`).
//!
//! An older kernel copies back a shorter struct; a field it did not fill is `None`.

use std::io;
use std::os::fd::AsRawFd;

use serde::Serialize;

/// A TCP connection's state (`tcpi_state`, the kernel's `TCP_ESTABLISHED` … numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    /// A number this code does not know (a newer kernel).
    Unknown(u8),
}

impl TcpState {
    /// The kernel's numbering (`include/net/tcp_states.h`).
    pub fn from_kernel(state: u8) -> Self {
        match state {
            1 => Self::Established,
            2 => Self::SynSent,
            3 => Self::SynRecv,
            4 => Self::FinWait1,
            5 => Self::FinWait2,
            6 => Self::TimeWait,
            7 => Self::Close,
            8 => Self::CloseWait,
            9 => Self::LastAck,
            10 => Self::Listen,
            11 => Self::Closing,
            12 => Self::NewSynRecv,
            other => Self::Unknown(other),
        }
    }
}

/// One reading of `TCP_INFO`; see the module header for what each field means.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TcpInfo {
    pub state: TcpState,
    /// Smoothed RTT (srtt), µs.
    pub rtt_us: u32,
    /// RTT mean deviation (mdev), µs.
    pub rttvar_us: u32,
    /// Windowed minimum RTT, µs (Linux 4.6+; None also while the connection has no RTT
    /// sample yet, when the kernel reports `~0U`).
    pub min_rtt_us: Option<u32>,
    /// Segments retransmitted over the connection's life (`tcpi_total_retrans`).
    pub retransmits_total: u32,
    /// Segments presumed lost now (`tcpi_lost`).
    pub lost: u32,
    /// Segments retransmitted and still unacknowledged now (`tcpi_retrans`).
    pub retrans: u32,
    /// Congestion window, segments.
    pub snd_cwnd: u32,
    /// Recent delivery rate, bits per second (Linux 4.9+).
    pub delivery_rate_bps: Option<u64>,
    /// Payload bytes the peer acknowledged (Linux 4.1+).
    pub bytes_acked: Option<u64>,
    /// Payload bytes received (Linux 4.1+).
    pub bytes_received: Option<u64>,
    /// Payload bytes sent, retransmissions included (Linux 4.19+).
    pub bytes_sent: Option<u64>,
    /// Payload bytes retransmitted (Linux 4.19+).
    pub bytes_retrans: Option<u64>,
}

#[cfg(test)]
impl TcpInfo {
    /// An established connection's figures, for the tests of what consumes them (the
    /// client's run totals, the server's sampler).
    pub(crate) fn established_for_tests(
        rtt_us: u32,
        rttvar_us: u32,
        min_rtt_us: u32,
        retransmits_total: u32,
    ) -> TcpInfo {
        TcpInfo {
            state: TcpState::Established,
            rtt_us,
            rttvar_us,
            min_rtt_us: Some(min_rtt_us),
            retransmits_total,
            lost: 0,
            retrans: 0,
            snd_cwnd: 10,
            delivery_rate_bps: None,
            bytes_acked: None,
            bytes_received: None,
            bytes_sent: None,
            bytes_retrans: None,
        }
    }
}

/// `tcpi_min_rtt` before the connection's first RTT sample: the kernel starts its windowed
/// minimum at `~0U` (`tcp_init_sock`, `minmax_reset(&tp->rtt_min, …, ~0U)`).
pub const NO_MIN_RTT: u32 = u32::MAX;

/// Reads `TCP_INFO` from a connected (or listening) TCP socket: a std or tokio `TcpStream`,
/// anything with a raw fd.
///
/// # Errors
/// The OS error of `getsockopt` (e.g. `EBADF` for a closed descriptor, `EOPNOTSUPP` /
/// `ENOPROTOOPT` for a socket that is not TCP), or `InvalidData` if the kernel returned less
/// than the fields every `TCP_INFO` kernel has.
#[cfg(target_os = "linux")]
pub fn read(fd: &impl AsRawFd) -> io::Result<TcpInfo> {
    linux::read(fd.as_raw_fd())
}

/// `TCP_INFO` is Linux's; elsewhere this says so.
///
/// # Errors
/// Always `ErrorKind::Unsupported`.
#[cfg(not(target_os = "linux"))]
pub fn read(fd: &impl AsRawFd) -> io::Result<TcpInfo> {
    let _ = fd.as_raw_fd();
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "TCP_INFO is not available on this system",
    ))
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::mem::{offset_of, size_of};
    use std::os::fd::RawFd;

    use super::{TcpInfo, TcpState, NO_MIN_RTT};

    /// `struct tcp_info` of `include/uapi/linux/tcp.h`, up to `tcpi_bytes_retrans`.
    ///
    /// Why not `libc::tcp_info`: on glibc it stops at `tcpi_total_retrans` (the 2.6-era
    /// struct), without min RTT, delivery rate or byte counters. Its prefix is this struct's;
    /// `tests::prefix_matches_libc` checks the offsets. The kernel ABI is the same for every
    /// libc.
    #[repr(C)]
    #[derive(Default)]
    pub(super) struct RawTcpInfo {
        pub tcpi_state: u8,
        pub tcpi_ca_state: u8,
        pub tcpi_retransmits: u8,
        pub tcpi_probes: u8,
        pub tcpi_backoff: u8,
        pub tcpi_options: u8,
        pub tcpi_snd_rcv_wscale: u8,
        pub tcpi_app_limited_fastopen_fail: u8,
        pub tcpi_rto: u32,
        pub tcpi_ato: u32,
        pub tcpi_snd_mss: u32,
        pub tcpi_rcv_mss: u32,
        pub tcpi_unacked: u32,
        pub tcpi_sacked: u32,
        pub tcpi_lost: u32,
        pub tcpi_retrans: u32,
        pub tcpi_fackets: u32,
        pub tcpi_last_data_sent: u32,
        pub tcpi_last_ack_sent: u32,
        pub tcpi_last_data_recv: u32,
        pub tcpi_last_ack_recv: u32,
        pub tcpi_pmtu: u32,
        pub tcpi_rcv_ssthresh: u32,
        pub tcpi_rtt: u32,
        pub tcpi_rttvar: u32,
        pub tcpi_snd_ssthresh: u32,
        pub tcpi_snd_cwnd: u32,
        pub tcpi_advmss: u32,
        pub tcpi_reordering: u32,
        pub tcpi_rcv_rtt: u32,
        pub tcpi_rcv_space: u32,
        pub tcpi_total_retrans: u32,
        pub tcpi_pacing_rate: u64,
        pub tcpi_max_pacing_rate: u64,
        pub tcpi_bytes_acked: u64,
        pub tcpi_bytes_received: u64,
        pub tcpi_segs_out: u32,
        pub tcpi_segs_in: u32,
        pub tcpi_notsent_bytes: u32,
        pub tcpi_min_rtt: u32,
        pub tcpi_data_segs_in: u32,
        pub tcpi_data_segs_out: u32,
        pub tcpi_delivery_rate: u64,
        pub tcpi_busy_time: u64,
        pub tcpi_rwnd_limited: u64,
        pub tcpi_sndbuf_limited: u64,
        pub tcpi_delivered: u32,
        pub tcpi_delivered_ce: u32,
        pub tcpi_bytes_sent: u64,
        pub tcpi_bytes_retrans: u64,
    }

    /// The bytes every kernel with `TCP_INFO` fills: up to and including `tcpi_total_retrans`.
    pub(super) const BASE_LEN: usize = offset_of!(RawTcpInfo, tcpi_total_retrans) + 4;

    pub(super) fn read(fd: RawFd) -> io::Result<TcpInfo> {
        let mut raw = RawTcpInfo::default();
        let mut len = libc::socklen_t::try_from(size_of::<RawTcpInfo>())
            .expect("RawTcpInfo is a few hundred bytes, far below socklen_t::MAX");
        // SAFETY: `raw` is a live, writable `repr(C)` struct of plain integers (any bit
        // pattern is valid) and `len` is exactly its size, so the kernel writes at most `len`
        // bytes into it and stores the number written in `len`. An invalid `fd` only makes the
        // call fail with EBADF.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut raw).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(
                err.kind(),
                format!("getsockopt(TCP_INFO) on fd {fd}: {err}"),
            ));
        }
        let len = usize::try_from(len).expect("socklen_t fits in usize on Linux");
        decode(&raw, len)
    }

    /// The fields of `raw` the kernel filled, `len` bytes of it; fields past `len` are `None`.
    pub(super) fn decode(raw: &RawTcpInfo, len: usize) -> io::Result<TcpInfo> {
        if len < BASE_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the kernel returned {len} bytes of TCP_INFO, fewer than the {BASE_LEN} every kernel fills"),
            ));
        }
        // Whether the kernel's struct reaches the end of the field at `offset` (`size` bytes).
        let has = |offset: usize, size: usize| len >= offset + size;
        let u64_field = |offset: usize, value: u64| has(offset, 8).then_some(value);
        Ok(TcpInfo {
            state: TcpState::from_kernel(raw.tcpi_state),
            rtt_us: raw.tcpi_rtt,
            rttvar_us: raw.tcpi_rttvar,
            min_rtt_us: has(offset_of!(RawTcpInfo, tcpi_min_rtt), 4)
                .then_some(raw.tcpi_min_rtt)
                .filter(|&us| us != NO_MIN_RTT),
            retransmits_total: raw.tcpi_total_retrans,
            lost: raw.tcpi_lost,
            retrans: raw.tcpi_retrans,
            snd_cwnd: raw.tcpi_snd_cwnd,
            delivery_rate_bps: u64_field(
                offset_of!(RawTcpInfo, tcpi_delivery_rate),
                raw.tcpi_delivery_rate.saturating_mul(8),
            ),
            bytes_acked: u64_field(
                offset_of!(RawTcpInfo, tcpi_bytes_acked),
                raw.tcpi_bytes_acked,
            ),
            bytes_received: u64_field(
                offset_of!(RawTcpInfo, tcpi_bytes_received),
                raw.tcpi_bytes_received,
            ),
            bytes_sent: u64_field(offset_of!(RawTcpInfo, tcpi_bytes_sent), raw.tcpi_bytes_sent),
            bytes_retrans: u64_field(
                offset_of!(RawTcpInfo, tcpi_bytes_retrans),
                raw.tcpi_bytes_retrans,
            ),
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Write};
    use std::mem::{offset_of, size_of};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, RawFd};

    use super::linux::{decode, RawTcpInfo, BASE_LEN};
    use super::*;

    const PAYLOAD_BYTES: usize = 8 * 1024;

    /// A connected loopback pair: (client, server side).
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback port 0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let client = TcpStream::connect(addr).expect("connect to our own listener");
        let (server, _) = listener.accept().expect("accept our own connection");
        (client, server)
    }

    /// Sends `PAYLOAD_BYTES` from `from` and reads them all on `to`, then has `to` answer one
    /// byte and `from` read it: by then the kernel has the payload acknowledged.
    fn exchange(from: &mut TcpStream, to: &mut TcpStream) {
        let payload = vec![0x5a_u8; PAYLOAD_BYTES];
        from.write_all(&payload).expect("write to loopback peer");
        let mut got = vec![0_u8; PAYLOAD_BYTES];
        to.read_exact(&mut got)
            .expect("read the payload on the other side");
        assert_eq!(got, payload);
        to.write_all(b"k").expect("write the one-byte answer");
        let mut answer = [0_u8; 1];
        from.read_exact(&mut answer)
            .expect("read the one-byte answer");
    }

    #[test]
    fn prefix_matches_libc() {
        // Our struct must lay out the glibc/musl prefix exactly where libc does.
        assert_eq!(
            offset_of!(RawTcpInfo, tcpi_rto),
            offset_of!(libc::tcp_info, tcpi_rto)
        );
        assert_eq!(
            offset_of!(RawTcpInfo, tcpi_lost),
            offset_of!(libc::tcp_info, tcpi_lost)
        );
        assert_eq!(
            offset_of!(RawTcpInfo, tcpi_rtt),
            offset_of!(libc::tcp_info, tcpi_rtt)
        );
        assert_eq!(
            offset_of!(RawTcpInfo, tcpi_snd_cwnd),
            offset_of!(libc::tcp_info, tcpi_snd_cwnd)
        );
        assert_eq!(
            offset_of!(RawTcpInfo, tcpi_total_retrans),
            offset_of!(libc::tcp_info, tcpi_total_retrans)
        );
        // Offsets from include/uapi/linux/tcp.h.
        assert_eq!(BASE_LEN, 104);
        assert_eq!(offset_of!(RawTcpInfo, tcpi_bytes_acked), 120);
        assert_eq!(offset_of!(RawTcpInfo, tcpi_min_rtt), 148);
        assert_eq!(offset_of!(RawTcpInfo, tcpi_delivery_rate), 160);
        assert_eq!(offset_of!(RawTcpInfo, tcpi_bytes_retrans), 208);
        assert_eq!(size_of::<RawTcpInfo>(), 216);
    }

    #[test]
    fn established_pair_reports_sane_figures() {
        let (mut client, mut server) = pair();
        exchange(&mut client, &mut server);
        let info = read(&client).expect("TCP_INFO on a connected loopback socket");
        assert_eq!(info.state, TcpState::Established, "{info:?}");
        // This kernel is new enough for every field we ask for.
        let min_rtt = info.min_rtt_us.expect("min_rtt on a 4.6+ kernel");
        assert!(
            u64::from(min_rtt) <= u64::from(info.rtt_us) + u64::from(info.rttvar_us),
            "min RTT above srtt + mdev: {info:?}"
        );
        let sent = u64::try_from(PAYLOAD_BYTES).expect("a few KiB fit in u64");
        let acked = info.bytes_acked.expect("bytes_acked on a 4.1+ kernel");
        assert!(acked >= sent, "acked {acked} < sent {sent}: {info:?}");
        assert_eq!(info.bytes_received, Some(1), "{info:?}");
        assert!(info.bytes_sent.expect("bytes_sent on 4.19+") >= sent);
        assert!(info.delivery_rate_bps.is_some(), "{info:?}");
        assert!(info.snd_cwnd > 0, "{info:?}");

        let other = read(&server).expect("TCP_INFO on the accepted side");
        assert_eq!(other.bytes_received, Some(sent), "{other:?}");
    }

    #[test]
    fn peer_close_shows_in_state() {
        let (mut client, server) = pair();
        drop(server);
        let mut buf = [0_u8; 1];
        let n = client.read(&mut buf).expect("read the peer's FIN");
        assert_eq!(n, 0, "the peer closed, so EOF");
        let info = read(&client).expect("TCP_INFO after the peer's FIN");
        assert_eq!(info.state, TcpState::CloseWait, "{info:?}");
    }

    /// A descriptor no socket can have.
    struct ClosedFd;
    impl AsRawFd for ClosedFd {
        fn as_raw_fd(&self) -> RawFd {
            -1
        }
    }

    #[test]
    fn closed_descriptor_is_an_error() {
        let err = read(&ClosedFd).expect_err("fd -1 is never a socket");
        assert_eq!(err.raw_os_error(), None, "context was added: {err}");
        assert!(err.to_string().contains("TCP_INFO"), "{err}");
        assert!(
            err.to_string()
                .contains(&io::Error::from_raw_os_error(libc::EBADF).to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_udp_socket_is_an_error() {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind loopback UDP port 0");
        read(&udp).expect_err("UDP has no TCP_INFO");
    }

    #[tokio::test]
    async fn works_on_a_tokio_stream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback port 0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let client = client.expect("connect to our own listener");
        let (server, _) = accepted.expect("accept our own connection");
        assert_eq!(
            read(&client).expect("client side").state,
            TcpState::Established
        );
        assert_eq!(
            read(&server).expect("server side").state,
            TcpState::Established
        );
    }

    #[test]
    fn a_short_kernel_struct_leaves_newer_fields_absent() {
        let raw = RawTcpInfo {
            tcpi_state: 1,
            tcpi_rtt: 40_000,
            tcpi_rttvar: 5_000,
            tcpi_total_retrans: 7,
            tcpi_min_rtt: 39_000,
            tcpi_bytes_acked: 1_000,
            tcpi_delivery_rate: 125_000,
            tcpi_bytes_retrans: 300,
            ..RawTcpInfo::default()
        };
        let old = decode(&raw, BASE_LEN).expect("a 2.6-era struct is enough");
        assert_eq!(old.rtt_us, 40_000);
        assert_eq!(old.retransmits_total, 7);
        assert_eq!(
            (
                old.min_rtt_us,
                old.bytes_acked,
                old.delivery_rate_bps,
                old.bytes_retrans
            ),
            (None, None, None, None)
        );
        // 4.6: bytes_acked and min_rtt, no delivery rate yet.
        let mid = decode(&raw, offset_of!(RawTcpInfo, tcpi_delivery_rate)).expect("4.6 struct");
        assert_eq!(mid.min_rtt_us, Some(39_000));
        assert_eq!(mid.bytes_acked, Some(1_000));
        assert_eq!(mid.delivery_rate_bps, None);
        let unsampled = RawTcpInfo {
            tcpi_min_rtt: NO_MIN_RTT,
            ..raw
        };
        let unsampled = decode(&unsampled, size_of::<RawTcpInfo>()).expect("full struct");
        assert_eq!(unsampled.min_rtt_us, None, "~0U: no RTT sample yet");
        let full = decode(&raw, size_of::<RawTcpInfo>()).expect("full struct");
        assert_eq!(full.delivery_rate_bps, Some(1_000_000), "bytes/s → bits/s");
        assert_eq!(full.bytes_retrans, Some(300));
        decode(&raw, BASE_LEN - 1).expect_err("shorter than any kernel's struct");
    }
}
