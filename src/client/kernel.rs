//! The kernel's view of the client's connections (`TCP_INFO`, see [`crate::net::tcp_info`]):
//! sampled at each link report, when a connection closes and at the end of the run, so the
//! summary and the link reports show the retransmissions that hide behind a slow reply.
//!
//! [`KernelTotals`] sums the samples across connections and does no I/O (unit-tested with
//! made-up [`TcpInfo`] values); [`KernelSocket`] is the live connection's socket, read with
//! `getsockopt`. A connection's `tcpi_total_retrans` dies with it, so each one's total is
//! read just before it is dropped and added to the run's.

use std::os::fd::OwnedFd;

use serde::Serialize;

use super::stats::fmt_ms;
use crate::net::tcp_info::{self, TcpInfo};
use crate::protocol::FieldValue;

/// The live connection's TCP socket: a duplicate descriptor of the stream's, so it can be
/// read after the stream was split into halves (and the TLS layer wrapped around it).
///
/// It keeps the socket open: drop it as soon as the connection is over, or the peer sees
/// no close.
#[derive(Debug)]
pub struct KernelSocket(OwnedFd);

impl KernelSocket {
    /// A handle on the socket behind `fd` (`None`: it cannot be duplicated; the run goes on
    /// without the kernel's figures).
    pub fn of(fd: std::os::fd::BorrowedFd<'_>) -> Option<Self> {
        match fd.try_clone_to_owned() {
            Ok(fd) => Some(KernelSocket(fd)),
            Err(err) => {
                tracing::debug!(cause = %err, "cannot keep the socket for TCP_INFO");
                None
            }
        }
    }

    /// The kernel's figures now (`None` where `TCP_INFO` is not available).
    pub fn sample(&self) -> Option<TcpInfo> {
        match tcp_info::read(&self.0) {
            Ok(info) => Some(info),
            Err(err) => {
                tracing::debug!(cause = %err, "no TCP_INFO");
                None
            }
        }
    }
}

/// The run's kernel figures over all its connections (no I/O).
#[derive(Debug, Default, Clone)]
pub struct KernelTotals {
    /// Segments retransmitted by the connections already closed.
    closed_retrans: u64,
    /// The live connection's `tcpi_total_retrans` at its latest sample.
    live_retrans: u64,
    /// The live connection has been sampled (it counts in `connections`).
    live_sampled: bool,
    /// Connections sampled at least once.
    connections: u64,
    /// The latest sample of any connection.
    last: Option<TcpInfo>,
    /// The live connection's latest sample (`None`: offline, or not sampled yet).
    live: Option<TcpInfo>,
    /// [`KernelTotals::retransmits`] at the previous link report.
    reported_retrans: u64,
}

impl KernelTotals {
    /// A sample of the live connection.
    pub fn sampled(&mut self, info: TcpInfo) {
        if !self.live_sampled {
            self.live_sampled = true;
            self.connections += 1;
        }
        // A connection's total never goes down; a smaller figure would be a torn read.
        self.live_retrans = self.live_retrans.max(u64::from(info.retransmits_total));
        self.last = Some(info);
        self.live = Some(info);
    }

    /// The live connection closed (after its last sample): its total is the run's now.
    pub fn closed(&mut self) {
        self.closed_retrans += self.live_retrans;
        self.live_retrans = 0;
        self.live_sampled = false;
        self.live = None;
    }

    /// Segments retransmitted over the whole run, every connection.
    pub fn retransmits(&self) -> u64 {
        self.closed_retrans + self.live_retrans
    }

    /// The summary's `tcp` (`None`: no connection was ever sampled).
    pub fn summary(&self) -> Option<TcpSummary> {
        let last = self.last?;
        Some(TcpSummary {
            srtt_ms: ms(last.rtt_us),
            rttvar_ms: ms(last.rttvar_us),
            min_rtt_ms: last.min_rtt_us.map(ms),
            retransmits: self.retransmits(),
            lost: u64::from(last.lost),
            cwnd: u64::from(last.snd_cwnd),
            delivery_rate_mbps: last.delivery_rate_bps.map(|bps| bps as f64 / 1e6),
            connections: self.connections,
        })
    }

    /// A link report's kernel fields (left out when unavailable): the live connection's
    /// latest sample, and the segments retransmitted since the previous report.
    pub fn link_fields(&mut self) -> Vec<(String, FieldValue)> {
        let mut fields = Vec::new();
        if let Some(live) = self.live {
            fields.push((
                "tcp_srtt_ms".to_string(),
                FieldValue::Float(ms(live.rtt_us)),
            ));
            fields.push((
                "tcp_rttvar_ms".to_string(),
                FieldValue::Float(ms(live.rttvar_us)),
            ));
            if let Some(min) = live.min_rtt_us {
                fields.push(("tcp_min_rtt_ms".to_string(), FieldValue::Float(ms(min))));
            }
        }
        if self.connections > 0 {
            let total = self.retransmits();
            let delta = total.saturating_sub(self.reported_retrans);
            self.reported_retrans = total;
            let delta = i64::try_from(delta).unwrap_or(i64::MAX);
            fields.push(("tcp_retrans".to_string(), FieldValue::Int(delta)));
        }
        if let Some(live) = self.live {
            fields.push((
                "tcp_cwnd".to_string(),
                FieldValue::Int(i64::from(live.snd_cwnd)),
            ));
        }
        fields
    }
}

/// Microseconds to milliseconds, to the microsecond.
fn ms(us: u32) -> f64 {
    f64::from(us) / 1e3
}

/// The kernel's figures in the summary (`--json`: `"tcp"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpSummary {
    /// The last connection's smoothed RTT at its latest sample.
    pub srtt_ms: f64,
    pub rttvar_ms: f64,
    /// `None`: the kernel has no windowed minimum (before Linux 4.6).
    pub min_rtt_ms: Option<f64>,
    /// Segments retransmitted over the whole run, summed over every connection.
    pub retransmits: u64,
    /// Segments the kernel presumed lost at the last connection's latest sample.
    pub lost: u64,
    /// The last connection's congestion window, segments.
    pub cwnd: u64,
    pub delivery_rate_mbps: Option<f64>,
    /// How many connections the figures come from.
    pub connections: u64,
}

/// The summary's kernel line: `kernel TCP: srtt 40.2 ms, …`, or that there is none.
pub fn summary_line(tcp: Option<&TcpSummary>) -> String {
    let Some(tcp) = tcp else {
        return "kernel TCP statistics: not available".to_string();
    };
    let mut text = format!(
        "kernel TCP: srtt {} ms, rttvar {} ms",
        fmt_ms(tcp.srtt_ms * 1e3),
        fmt_ms(tcp.rttvar_ms * 1e3)
    );
    if let Some(min) = tcp.min_rtt_ms {
        text.push_str(&format!(", min rtt {} ms", fmt_ms(min * 1e3)));
    }
    let connections = if tcp.connections == 1 {
        String::new()
    } else {
        format!(" over {} connections", tcp.connections)
    };
    text.push_str(&format!(
        ", {} segments retransmitted{connections}, cwnd {}",
        tcp.retransmits, tcp.cwnd
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tcp_info::TcpState;

    fn info(rtt_us: u32, retransmits_total: u32) -> TcpInfo {
        TcpInfo::established_for_tests(rtt_us, rtt_us / 4, rtt_us / 2, retransmits_total)
    }

    #[test]
    fn nothing_sampled_is_no_summary_and_no_link_fields() {
        let mut totals = KernelTotals::default();
        assert_eq!(totals.summary(), None);
        assert!(totals.link_fields().is_empty());
        assert_eq!(summary_line(None), "kernel TCP statistics: not available");
    }

    /// Each connection's total is read before it closes and added; the live one's latest
    /// sample counts once however often it is read.
    #[test]
    fn retransmits_are_summed_over_every_connection() {
        let mut totals = KernelTotals::default();
        totals.sampled(info(40_000, 2));
        totals.sampled(info(41_000, 5));
        totals.closed();
        totals.sampled(info(50_000, 0));
        totals.sampled(info(52_000, 3));
        totals.closed();
        totals.sampled(info(60_000, 7));
        let summary = totals.summary().expect("sampled");
        assert_eq!(summary.retransmits, 5 + 3 + 7);
        assert_eq!(summary.connections, 3);
        // srtt and friends are the last connection's latest sample.
        assert_eq!(summary.srtt_ms, 60.0);
        assert_eq!(summary.rttvar_ms, 15.0);
        assert_eq!(summary.min_rtt_ms, Some(30.0));
        assert_eq!(summary.cwnd, 10);
    }

    /// The link report's `tcp_retrans` is the interval's share, across a reconnect; offline,
    /// only the count is reported (there is no live connection to describe).
    #[test]
    fn link_fields_carry_the_interval_delta() {
        let mut totals = KernelTotals::default();
        totals.sampled(info(40_000, 4));
        let fields = totals.link_fields();
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "tcp_srtt_ms",
                "tcp_rttvar_ms",
                "tcp_min_rtt_ms",
                "tcp_retrans",
                "tcp_cwnd"
            ]
        );
        assert_eq!(fields[0].1, FieldValue::Float(40.0));
        assert_eq!(fields[3].1, FieldValue::Int(4));
        totals.sampled(info(40_000, 6));
        totals.closed();
        let fields = totals.link_fields();
        assert_eq!(
            fields,
            vec![("tcp_retrans".to_string(), FieldValue::Int(2))]
        );
        totals.sampled(info(40_000, 1));
        let fields = totals.link_fields();
        assert_eq!(fields[3], ("tcp_retrans".to_string(), FieldValue::Int(1)));
    }

    /// The duplicate descriptor reads the same socket, and keeps it open: the peer sees
    /// the close only once it is dropped too.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_kept_socket_reads_the_connection_and_holds_it_open() {
        use std::io::Read as _;
        use std::os::fd::AsFd as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let stream =
            std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (mut peer, _) = listener.accept().expect("accept");
        let kept = KernelSocket::of(stream.as_fd()).expect("dup");
        drop(stream);
        let info = kept.sample().expect("TCP_INFO on Linux");
        assert_eq!(info.state, TcpState::Established);
        peer.set_nonblocking(true).expect("nonblocking");
        let open = peer.read(&mut [0u8; 1]);
        assert!(
            matches!(&open, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "{open:?}"
        );
        drop(kept);
        peer.set_nonblocking(false).expect("blocking");
        assert_eq!(peer.read(&mut [0u8; 1]).expect("EOF"), 0);
    }

    #[test]
    fn the_summary_line_names_each_figure() {
        let mut totals = KernelTotals::default();
        totals.sampled(info(40_200, 12));
        let line = summary_line(totals.summary().as_ref());
        assert_eq!(
            line,
            "kernel TCP: srtt 40.200 ms, rttvar 10.050 ms, min rtt 20.100 ms, \
             12 segments retransmitted, cwnd 10"
        );
    }
}
