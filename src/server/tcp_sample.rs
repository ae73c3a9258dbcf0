//! The server's view of each connection's link: `TCP_INFO` (the kernel's smoothed RTT and
//! retransmissions, `crate::net::tcp_info`) sampled inside the connection's own task.
//!
//! Why no timer: at 10,000 connections a periodic timer each would wake every one of them
//! (and a central sampler would need a registry of fds, with fd reuse after close to guard
//! against). A connection is awake anyway when it has handled a batch, so it samples then,
//! at most once per `--tcp-info-interval`, plus once as it closes. An idle connection that
//! never wakes is not sampled again; its figure carries `sampled_at` so a reader sees how
//! old it is. The cost is one `getsockopt` (about a microsecond, BENCHMARKS.md) per
//! connection per interval while it sends, and nothing while it is idle.

use std::time::Duration;

use tokio::time::Instant;

use super::stream::PeerStream;
use crate::live::TcpFigures;
use crate::net::tcp_info::TcpInfo;
use crate::timefmt::now_ns;

/// Default `--tcp-info-interval`.
pub const DEFAULT_TCP_INFO_INTERVAL: Duration = Duration::from_secs(10);

/// One connection's sampling state. The least time between two samples (zero: off) is
/// the server's, given to each call: kept here it would be 16 bytes in every connection.
#[derive(Debug)]
pub(super) struct TcpSampler {
    /// When the last sample was taken (None: never).
    last_at: Option<Instant>,
    /// `tcpi_total_retrans` at the last sample: what the next one's delta starts from.
    retransmits_seen: u32,
    /// `TCP_INFO` failed once (not Linux, not a TCP socket): not asked again.
    unavailable: bool,
}

/// A sample taken: the figures, and segments retransmitted since the previous sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    pub(super) figures: TcpFigures,
    pub(super) retransmits_delta: u64,
}

impl TcpSampler {
    pub(super) fn new() -> Self {
        TcpSampler {
            last_at: None,
            retransmits_seen: 0,
            unavailable: false,
        }
    }

    fn on(&self, interval: Duration) -> bool {
        !interval.is_zero() && !self.unavailable
    }

    /// Whether a sample is due at `now`: never taken, or the last one is `interval` old.
    pub(super) fn due(&self, now: Instant, interval: Duration) -> bool {
        self.on(interval)
            && self
                .last_at
                .is_none_or(|at| now.saturating_duration_since(at) >= interval)
    }

    /// Sample `stream` if due (or, `closing`, whenever sampling is on: its last figures).
    pub(super) fn sample<S: PeerStream>(
        &mut self,
        stream: &S,
        interval: Duration,
        closing: bool,
    ) -> Option<Sample> {
        let now = Instant::now();
        if !(self.due(now, interval) || closing && self.on(interval)) {
            return None;
        }
        match stream.tcp_info()? {
            Ok(info) => Some(self.take(&info, now, now_ns())),
            Err(err) => {
                tracing::debug!(cause = %err, "TCP_INFO unavailable; not sampling this connection");
                self.unavailable = true;
                None
            }
        }
    }

    /// Account `info`, read at `now` (`now_ns` by the wall clock): the retransmit delta
    /// since the previous sample. No I/O.
    fn take(&mut self, info: &TcpInfo, now: Instant, now_ns: i64) -> Sample {
        // The kernel's total only grows over a connection's life; a smaller one (never
        // seen) counts nothing rather than wrapping.
        let delta = info.retransmits_total.saturating_sub(self.retransmits_seen);
        self.retransmits_seen = self.retransmits_seen.max(info.retransmits_total);
        self.last_at = Some(now);
        Sample {
            figures: TcpFigures {
                srtt_us: info.rtt_us,
                rttvar_us: info.rttvar_us,
                min_rtt_us: info.min_rtt_us,
                retransmits: info.retransmits_total,
                sampled_at_ns: now_ns,
            },
            retransmits_delta: u64::from(delta),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(retransmits_total: u32) -> TcpInfo {
        TcpInfo::established_for_tests(40, 20, 12, retransmits_total)
    }

    #[test]
    fn retransmits_are_counted_once_as_deltas() {
        let mut sampler = TcpSampler::new();
        let now = Instant::now();
        let deltas: Vec<u64> = [0, 3, 3, 5]
            .into_iter()
            .map(|total| sampler.take(&info(total), now, 1).retransmits_delta)
            .collect();
        assert_eq!(deltas, [0, 3, 0, 2]);
        // A total below the last one (not a kernel behaviour) adds nothing, and does not
        // make the next sample count the same segments again.
        assert_eq!(sampler.take(&info(4), now, 1).retransmits_delta, 0);
        assert_eq!(sampler.take(&info(6), now, 1).retransmits_delta, 1);
    }

    #[test]
    fn figures_carry_the_connection_total_and_sample_time() {
        let mut sampler = TcpSampler::new();
        let sample = sampler.take(&info(7), Instant::now(), 1234);
        assert_eq!(
            sample.figures,
            TcpFigures {
                srtt_us: 40,
                rttvar_us: 20,
                min_rtt_us: Some(12),
                retransmits: 7,
                sampled_at_ns: 1234,
            }
        );
        assert_eq!(sample.retransmits_delta, 7);
    }

    #[test]
    fn due_once_per_interval_and_never_when_off() {
        let interval = Duration::from_secs(10);
        let mut sampler = TcpSampler::new();
        let start = Instant::now();
        assert!(sampler.due(start, interval), "never sampled: due at once");
        sampler.take(&info(0), start, 1);
        assert!(!sampler.due(start + interval - Duration::from_nanos(1), interval));
        assert!(sampler.due(start + interval, interval));

        let off = TcpSampler::new();
        assert!(!off.due(start, Duration::ZERO));
    }

    #[tokio::test]
    async fn a_stream_without_tcp_is_never_sampled() {
        let (stream, _other) = tokio::io::duplex(64);
        let mut sampler = TcpSampler::new();
        let interval = Duration::from_secs(1);
        assert_eq!(sampler.sample(&stream, interval, false), None);
        assert_eq!(sampler.sample(&stream, interval, true), None);
    }

    #[tokio::test]
    async fn a_loopback_connection_is_sampled_then_waits_its_interval() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback port 0");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to our own listener");
        let (server, _) = listener.accept().await.expect("accept our own connection");
        let mut sampler = TcpSampler::new();
        let hour = Duration::from_secs(3600);
        let first = sampler.sample(&server, hour, false);
        if cfg!(target_os = "linux") {
            let first = first.expect("TCP_INFO on Linux");
            assert_eq!(first.retransmits_delta, 0);
            assert!(first.figures.sampled_at_ns > 0);
            assert_eq!(
                sampler.sample(&server, hour, false),
                None,
                "not due for an hour"
            );
            assert!(
                sampler.sample(&server, hour, true).is_some(),
                "closing: sampled"
            );
        } else {
            assert_eq!(first, None);
        }
        drop(client);
    }
}
