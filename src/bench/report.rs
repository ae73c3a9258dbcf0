//! What a run measured: each connection's tally ([`ConnResult`], errors by kind, ack
//! latencies merged into one shared histogram), how evenly the connections were served
//! ([`Fairness`]), and the [`Report`] printed at the end, as text or as one JSON object.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::client::stats::{RttStats, RttSummary};

use super::args::{Mode, Settings};
use super::progress::Live;
use super::timeline::{Second, Timeline};

/// Why a run had errors, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(super) struct ErrorCounts {
    /// Connect (or its `ping` check) failed.
    pub(super) connect: u64,
    /// `error` reply lines.
    pub(super) replies: u64,
    /// Lines an `ack` reports as rejected beyond the `error` lines already counted.
    pub(super) rejected: u64,
    /// The server closed the connection, or a read or write failed.
    pub(super) disconnects: u64,
    /// A sync (or legacy message) not answered within [`super::ACK_TIMEOUT`].
    pub(super) timeouts: u64,
    /// A reply we cannot read, or an ack for a sync we did not send.
    pub(super) protocol: u64,
}

impl ErrorCounts {
    pub(super) fn total(&self) -> u64 {
        self.connect
            + self.replies
            + self.rejected
            + self.disconnects
            + self.timeouts
            + self.protocol
    }

    pub(super) fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.replies += other.replies;
        self.rejected += other.rejected;
        self.disconnects += other.disconnects;
        self.timeouts += other.timeouts;
        self.protocol += other.protocol;
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum ErrorKind {
    Connect,
    Reply,
    Disconnect,
    Timeout,
    Protocol,
}

/// Samples buffered per connection before they are merged into the run's histogram.
pub(super) const LATENCY_BATCH: usize = 256;

/// What every connection's latencies are merged into: the run's histogram and, with
/// `--report`, its per-second [`Timeline`].
#[derive(Debug, Default)]
pub(super) struct RunLatencies {
    pub(super) stats: RttStats,
    pub(super) timeline: Option<Timeline>,
}

/// The run's latencies, shared by every connection.
pub(super) type SharedLatencies = Arc<std::sync::Mutex<RunLatencies>>;

/// One ack: when it came, its latency, and the readings it covered.
type Sample = (Instant, Duration, u64);

/// One connection's ack latencies, merged in batches into the histogram the whole run
/// shares: a histogram per connection (~270 KiB each, 1 ns to 1 h) would cost gigabytes at
/// tens of thousands of idle connections.
#[derive(Debug)]
pub(super) struct Latencies {
    pub(super) local: Vec<Sample>,
    pub(super) shared: SharedLatencies,
}

impl Latencies {
    pub(super) fn new(shared: SharedLatencies) -> Self {
        Latencies {
            local: Vec::new(),
            shared,
        }
    }

    /// An ack at `at` after `rtt`, for `readings` readings.
    pub(super) fn record(&mut self, at: Instant, rtt: Duration, readings: u64) {
        self.local.push((at, rtt, readings));
        if self.local.len() >= LATENCY_BATCH {
            self.flush();
        }
    }

    pub(super) fn flush(&mut self) {
        if self.local.is_empty() {
            return;
        }
        // A panic while holding the lock cannot leave a histogram half-updated in a way
        // that matters for a report; keep going.
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let shared = &mut *shared;
        for (at, rtt, readings) in self.local.drain(..) {
            shared.stats.record(rtt);
            if let Some(timeline) = &mut shared.timeline {
                timeline.record(at, rtt, readings);
            }
        }
    }

    /// Everything recorded so far by every connection.
    pub(super) fn summary(&mut self) -> RttSummary {
        self.flush();
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stats
            .summary()
    }
}

impl Drop for Latencies {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What one connection did.
#[derive(Debug)]
pub(super) struct ConnResult {
    pub(super) established: bool,
    pub(super) rtt: Latencies,
    /// Readings acknowledged during the measurement.
    pub(super) readings: u64,
    /// Bytes of readings written during the measurement (control lines excluded).
    pub(super) bytes: u64,
    /// Readings written but never acknowledged.
    pub(super) unacked: u64,
    pub(super) errors: ErrorCounts,
    pub(super) first_error: Option<String>,
    pub(super) last_ack: Option<Instant>,
}

impl ConnResult {
    pub(super) fn new(latencies: SharedLatencies) -> Self {
        ConnResult {
            established: false,
            rtt: Latencies::new(latencies),
            readings: 0,
            bytes: 0,
            unacked: 0,
            errors: ErrorCounts::default(),
            first_error: None,
            last_ack: None,
        }
    }

    pub(super) fn error(&mut self, live: &Live, kind: ErrorKind, why: impl FnOnce() -> String) {
        let slot = match kind {
            ErrorKind::Connect => &mut self.errors.connect,
            ErrorKind::Reply => &mut self.errors.replies,
            ErrorKind::Disconnect => &mut self.errors.disconnects,
            ErrorKind::Timeout => &mut self.errors.timeouts,
            ErrorKind::Protocol => &mut self.errors.protocol,
        };
        *slot += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }
}

/// Writes a latency histogram as `--latency-histogram` documents it: a `#` header, then one
/// `latency_us<TAB>count` line per distinct value, rising.
pub(super) fn write_histogram(
    mut out: impl std::io::Write,
    histogram: &[(f64, u64)],
) -> std::io::Result<()> {
    writeln!(out, "# latency_us\tcount")?;
    for (us, count) in histogram {
        writeln!(out, "{us:.3}\t{count}")?;
    }
    out.flush()
}

/// Latency percentiles of the acks, in µs.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Latency {
    pub(super) p50: f64,
    pub(super) p90: f64,
    pub(super) p99: f64,
    pub(super) p999: f64,
    pub(super) max: f64,
    pub(super) min: f64,
    pub(super) avg: f64,
    /// Samples: one per ack (per sync), or per `pong` in legacy mode.
    pub(super) count: u64,
}

impl From<RttSummary> for Latency {
    fn from(s: RttSummary) -> Self {
        Latency {
            p50: s.p50_us,
            p90: s.p90_us,
            p99: s.p99_us,
            p999: s.p999_us,
            max: s.max_us,
            min: s.min_us,
            avg: s.avg_us,
            count: s.count,
        }
    }
}

/// How evenly the connections were served during the measurement: readings/s acked per
/// established connection. A total rate can look fine while one connection gets a trickle
/// (or nothing) and the others take its share; these figures show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Fairness {
    /// Readings/s of the slowest connection.
    pub(super) min: f64,
    /// Readings/s of the median connection (mean of the two middle ones for an even count).
    pub(super) p50: f64,
    /// Readings/s of the fastest connection.
    pub(super) max: f64,
    /// Slowest ÷ fastest, in 0..=1 (1: perfectly even); `None` when no connection got
    /// anything acked, where the ratio means nothing.
    pub(super) slowest_share: Option<f64>,
    /// Connections established that got no reading acked during the measurement.
    pub(super) starved: u64,
}

impl Fairness {
    /// From the readings each established connection got acked over the same `seconds`;
    /// `None` without a connection.
    pub(super) fn from_counts(acked: &[u64], seconds: f64) -> Option<Fairness> {
        if acked.is_empty() {
            return None;
        }
        let mut sorted = acked.to_vec();
        sorted.sort_unstable();
        let rate = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        let mid = sorted.len() / 2;
        let p50 = if sorted.len() % 2 == 1 {
            rate(sorted[mid])
        } else {
            (rate(sorted[mid - 1]) + rate(sorted[mid])) / 2.0
        };
        let (slowest, fastest) = (sorted[0], sorted[sorted.len() - 1]);
        Some(Fairness {
            min: rate(slowest),
            p50,
            max: rate(fastest),
            // Counts, not rates: the ratio stays defined with a zero-length measurement.
            slowest_share: (fastest > 0).then(|| slowest as f64 / fastest as f64),
            starved: sorted.iter().take_while(|&&n| n == 0).count() as u64,
        })
    }
}

/// The result of a run: printed as text or as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub(super) mode: Mode,
    pub(super) addr: String,
    /// Readings acknowledged during the measurement.
    pub(super) readings: u64,
    /// From the end of the warm-up to the last ack.
    pub(super) seconds: f64,
    pub(super) readings_per_sec: f64,
    /// Bytes of readings written per second, in 10^6 bytes.
    pub(super) mb_per_sec: f64,
    pub(super) bytes: u64,
    pub(super) errors: u64,
    pub(super) errors_by_kind: ErrorCounts,
    /// Readings written but never acknowledged.
    pub(super) unacked: u64,
    /// Connections established (and answering `ping`).
    pub(super) connections: u64,
    pub(super) connect_seconds: f64,
    pub(super) latency_us: Latency,
    /// Readings/s per established connection (`None`: no connection).
    pub(super) per_connection: Option<Fairness>,
    // The flags, as given (after defaults).
    pub(super) connections_requested: usize,
    pub(super) rate: f64,
    pub(super) pipeline: usize,
    pub(super) batch: usize,
    pub(super) duration_s: Option<f64>,
    pub(super) count: Option<u64>,
    pub(super) fields: usize,
    pub(super) measurement: String,
    pub(super) warmup_s: f64,
    pub(super) interval_s: Option<f64>,
    pub(super) source_ips: Option<u8>,
    pub(super) connect_rate: f64,
    /// The run's first error, for stderr (the report itself counts errors by kind).
    #[serde(skip)]
    pub(super) first_error: Option<String>,
    /// The run per second (only with `--report`: what its picture is drawn from).
    #[serde(skip)]
    pub(super) timeline: Option<Vec<Second>>,
    /// Every distinct ack latency (µs) with its count (only with `--latency-histogram`).
    #[serde(skip)]
    pub(super) histogram: Option<Vec<(f64, u64)>>,
}

impl Report {
    /// No error during the run (scripts turn anything else into exit 1).
    pub fn is_clean(&self) -> bool {
        self.errors == 0
    }

    pub(super) fn new(
        s: &Settings,
        mut total: ConnResult,
        per_connection: &[u64],
        seconds: f64,
        connect_seconds: f64,
    ) -> Report {
        let per_sec = |v: f64| if seconds > 0.0 { v / seconds } else { 0.0 };
        Report {
            mode: s.mode,
            addr: s.addr.clone(),
            readings: total.readings,
            seconds,
            readings_per_sec: per_sec(total.readings as f64),
            mb_per_sec: per_sec(total.bytes as f64) / 1e6,
            bytes: total.bytes,
            errors: total.errors.total(),
            errors_by_kind: total.errors,
            unacked: total.unacked,
            connections: per_connection.len() as u64,
            connect_seconds,
            latency_us: total.rtt.summary().into(),
            per_connection: Fairness::from_counts(per_connection, seconds),
            connections_requested: s.connections,
            rate: s.rate,
            pipeline: s.pipeline,
            batch: s.batch,
            duration_s: s.duration.map(|d| d.as_secs_f64()),
            count: s.count,
            fields: s.fields,
            measurement: s.measurement.clone(),
            warmup_s: s.warmup.as_secs_f64(),
            interval_s: s.interval.map(|d| d.as_secs_f64()),
            source_ips: s.source_ips,
            connect_rate: s.connect_rate,
            first_error: total.first_error.take(),
            timeline: None,
            histogram: None,
        }
    }

    /// The picture's header: what the text report says, in three lines.
    pub(super) fn picture_lines(&self) -> Vec<String> {
        let l = &self.latency_us;
        vec![
            format!(
                "sensorlink bench → {}   ({} mode, {} connections, pipeline {}, batch {})",
                self.addr,
                format!("{:?}", self.mode).to_lowercase(),
                self.connections,
                self.pipeline,
                self.batch
            ),
            format!(
                "{} readings acked in {:.3} s: {:.0} readings/s, {:.2} MB/s, {} errors, {} unacked",
                self.readings,
                self.seconds,
                self.readings_per_sec,
                self.mb_per_sec,
                self.errors,
                self.unacked
            ),
            format!(
                "ack latency µs p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples)",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            ),
        ]
    }

    pub(super) fn write_human(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mode = match self.mode {
            Mode::Line => format!(
                "line mode, pipeline {}, batch {}",
                self.pipeline, self.batch
            ),
            Mode::Idle => format!(
                "idle mode, one reading per {} per connection",
                humantime::format_duration(Duration::from_secs_f64(self.interval_s.unwrap_or(0.0)))
            ),
            Mode::Legacy => "legacy mode (seed bytes, one message in flight)".to_string(),
        };
        writeln!(out, "sensorlink bench {}: {mode}", self.addr)?;
        writeln!(
            out,
            "connections    {} of {} established in {:.3} s",
            self.connections, self.connections_requested, self.connect_seconds
        )?;
        writeln!(out, "readings acked {}", self.readings)?;
        writeln!(out, "seconds        {:.3}", self.seconds)?;
        writeln!(out, "readings/s     {:.0}", self.readings_per_sec)?;
        writeln!(out, "MB/s           {:.2}", self.mb_per_sec)?;
        let e = &self.errors_by_kind;
        writeln!(
            out,
            "errors         {} (connect {}, error replies {}, rejected {}, disconnects {}, timeouts {}, protocol {}); unacked readings {}",
            self.errors, e.connect, e.replies, e.rejected, e.disconnects, e.timeouts, e.protocol, self.unacked
        )?;
        let l = &self.latency_us;
        writeln!(
            out,
            "ack latency µs p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        )?;
        if let Some(f) = &self.per_connection {
            let share = f
                .slowest_share
                .map_or("-".to_string(), |s| format!("{:.0} %", s * 100.0));
            writeln!(
                out,
                "per connection readings/s min {:.0}  p50 {:.0}  max {:.0}  slowest ÷ fastest {share}  starved {} of {}",
                f.min, f.p50, f.max, f.starved, self.connections
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fairness_of_uneven_connections() {
        // Acked over 2 s: 100, 400, 200, 300 readings → 50, 200, 100, 150 readings/s.
        let f = Fairness::from_counts(&[100, 400, 200, 300], 2.0).expect("connections");
        assert_eq!(f.min, 50.0);
        assert_eq!(f.max, 200.0);
        // Even count: the mean of the two middle ones (100 and 150).
        assert_eq!(f.p50, 125.0);
        assert_eq!(f.slowest_share, Some(0.25));
        assert_eq!(f.starved, 0);
    }

    #[test]
    fn fairness_counts_starved_connections() {
        let f = Fairness::from_counts(&[0, 30, 0, 10, 20], 10.0).expect("connections");
        assert_eq!(f.starved, 2);
        assert_eq!(f.min, 0.0);
        // Odd count: the middle one.
        assert_eq!(f.p50, 1.0);
        assert_eq!(f.max, 3.0);
        assert_eq!(f.slowest_share, Some(0.0));
    }

    #[test]
    fn fairness_edge_cases() {
        assert_eq!(Fairness::from_counts(&[], 1.0), None);
        let even = Fairness::from_counts(&[7, 7, 7], 1.0).expect("connections");
        assert_eq!((even.min, even.p50, even.max), (7.0, 7.0, 7.0));
        assert_eq!(even.slowest_share, Some(1.0));
        // Nothing acked anywhere: every connection starved, and no ratio to give.
        let none = Fairness::from_counts(&[0, 0], 1.0).expect("connections");
        assert_eq!(none.slowest_share, None);
        assert_eq!(none.starved, 2);
        // A zero-length measurement has no rate, but the share (of counts) stays defined.
        let instant = Fairness::from_counts(&[1, 2], 0.0).expect("connections");
        assert_eq!((instant.min, instant.max), (0.0, 0.0));
        assert_eq!(instant.slowest_share, Some(0.5));
    }
}
