//! Link reports (`--link-report INTERVAL`): how the link did, sent as ordinary readings of
//! measurement [`LINK_MEASUREMENT`] so the server stores them like any other and `query`
//! shows their history. No I/O here: the engine asks [`LinkReporter`] when the next report
//! is due, feeds it the round trips of the user's readings, and hands it the run's totals
//! to turn into one [`Reading`] of deltas over the interval.
//!
//! ```text
//! sensorlink_link,sensor=<name> interval_s=10,sent=10i,acked=10i,lost=0i,timeouts=0i,reconnects=0i,rtt_p50_ms=0.41,rtt_p99_ms=1.2,rtt_max_ms=3 <ts ns>
//! ```
//!
//! The `rtt_*_ms` fields are left out when the interval had no round trip to measure.

use std::time::Duration;

use tokio::time::Instant;

use super::state::Counters;
use super::stats::RttStats;
use crate::protocol::{FieldValue, Reading};

/// The measurement of every link report.
pub const LINK_MEASUREMENT: &str = "sensorlink_link";

/// The run's totals a report takes its deltas from (user readings only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTotals {
    /// Readings written for the first time.
    pub sent: u64,
    pub acked: u64,
    /// Rejected, dropped, or (in the last report of a run that gives up) still unacked.
    pub lost: u64,
    pub timeouts: u64,
    pub reconnects: u64,
}

impl LinkTotals {
    /// The totals of `counters` plus the run's reconnects.
    pub fn of(counters: &Counters, reconnects: u64) -> Self {
        LinkTotals {
            sent: counters.sent,
            acked: counters.acked,
            lost: counters.lost(),
            timeouts: counters.timeouts,
            reconnects,
        }
    }

    fn minus(&self, earlier: &LinkTotals) -> LinkTotals {
        LinkTotals {
            sent: self.sent.saturating_sub(earlier.sent),
            acked: self.acked.saturating_sub(earlier.acked),
            lost: self.lost.saturating_sub(earlier.lost),
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            reconnects: self.reconnects.saturating_sub(earlier.reconnects),
        }
    }
}

/// Makes one link report per interval (and a last one at the end of a run).
#[derive(Debug)]
pub struct LinkReporter {
    /// `None`: untagged, like the readings (the token's sensor).
    sensor: Option<String>,
    interval: Duration,
    /// When the interval being measured began (the previous report, or the start).
    since: Instant,
    due: Instant,
    /// Round trips of this interval only.
    rtt: RttStats,
    /// The totals at the previous report.
    last: LinkTotals,
}

impl LinkReporter {
    /// `None` when `interval` is zero (link reports are off).
    pub fn new(sensor: Option<&str>, interval: Duration, now: Instant) -> Option<Self> {
        (!interval.is_zero()).then(|| LinkReporter {
            sensor: sensor.map(str::to_string),
            interval,
            since: now,
            due: now + interval,
            rtt: RttStats::new(),
            last: LinkTotals::default(),
        })
    }

    /// When the next periodic report is due.
    pub fn due(&self) -> Instant {
        self.due
    }

    /// A round trip of one of the user's readings, acked now.
    pub fn record_rtt(&mut self, rtt: Duration) {
        self.rtt.record(rtt);
    }

    /// Whether anything happened since the previous report (a last report is then worth it).
    pub fn changed(&self, totals: &LinkTotals) -> bool {
        *totals != self.last || self.rtt.count() > 0
    }

    /// The report for the interval ending `now` (timestamped `timestamp_ns`), and the start
    /// of the next interval. Periodic reports keep their cadence (`due + interval`) unless
    /// the loop fell behind by more than an interval.
    pub fn report(&mut self, now: Instant, totals: LinkTotals, timestamp_ns: i64) -> Reading {
        let delta = totals.minus(&self.last);
        // Milliseconds are enough to weigh an interval.
        let interval_s =
            (now.saturating_duration_since(self.since).as_secs_f64() * 1e3).round() / 1e3;
        let count = |v: u64| FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX));
        let mut fields = vec![
            ("interval_s".to_string(), FieldValue::Float(interval_s)),
            ("sent".to_string(), count(delta.sent)),
            ("acked".to_string(), count(delta.acked)),
            ("lost".to_string(), count(delta.lost)),
            ("timeouts".to_string(), count(delta.timeouts)),
            ("reconnects".to_string(), count(delta.reconnects)),
        ];
        if self.rtt.count() > 0 {
            let rtt = self.rtt.summary();
            // Whole microseconds: the histogram's 0.1 % precision says no more.
            let ms = |us: f64| FieldValue::Float(us.round() / 1e3);
            fields.push(("rtt_p50_ms".to_string(), ms(rtt.p50_us)));
            fields.push(("rtt_p99_ms".to_string(), ms(rtt.p99_us)));
            fields.push(("rtt_max_ms".to_string(), ms(rtt.max_us)));
        }
        self.last = totals;
        self.since = now;
        self.rtt = RttStats::new();
        self.due += self.interval;
        if self.due <= now {
            self.due = now + self.interval;
        }
        Reading {
            measurement: LINK_MEASUREMENT.to_string(),
            tags: super::line::sensor_tag(self.sensor.as_deref()),
            fields,
            timestamp_ns: Some(timestamp_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ilp;

    fn line(reading: &Reading) -> String {
        let mut out = Vec::new();
        ilp::encode(reading, &mut out);
        String::from_utf8(out).expect("line protocol is UTF-8")
    }

    fn totals(sent: u64, acked: u64, lost: u64, timeouts: u64, reconnects: u64) -> LinkTotals {
        LinkTotals {
            sent,
            acked,
            lost,
            timeouts,
            reconnects,
        }
    }

    #[test]
    fn zero_interval_means_no_reports() {
        assert!(LinkReporter::new(Some("s"), Duration::ZERO, Instant::now()).is_none());
    }

    /// The exact line of the contract: field names, order and types (`i` for counts).
    #[tokio::test(start_paused = true)]
    async fn a_report_is_the_contract_line_with_deltas() {
        let t0 = Instant::now();
        let mut link = LinkReporter::new(Some("kitchen-01"), Duration::from_secs(10), t0)
            .expect("a non-zero interval");
        for ms in [1, 2, 3] {
            link.record_rtt(Duration::from_millis(ms));
        }
        let reading = link.report(t0 + Duration::from_secs(10), totals(3, 3, 0, 0, 0), 42);
        assert_eq!(
            line(&reading),
            "sensorlink_link,sensor=kitchen-01 interval_s=10,sent=3i,acked=3i,lost=0i,\
             timeouts=0i,reconnects=0i,rtt_p50_ms=2.001,rtt_p99_ms=3,rtt_max_ms=3 42\n",
            "p50 is its histogram bucket's top (within 0.1 %); max is exact"
        );
        // The next interval counts only what happened in it, and has no RTT sample.
        let reading = link.report(t0 + Duration::from_secs(20), totals(5, 4, 1, 2, 1), 43);
        assert_eq!(
            line(&reading),
            "sensorlink_link,sensor=kitchen-01 interval_s=10,sent=2i,acked=1i,lost=1i,\
             timeouts=2i,reconnects=1i 43\n"
        );
    }

    /// Reports keep their cadence: a report made late does not shift the next one, unless
    /// the loop fell a whole interval behind.
    #[tokio::test(start_paused = true)]
    async fn interval_boundaries_keep_their_cadence() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut link = LinkReporter::new(Some("s"), second, t0).expect("a non-zero interval");
        assert_eq!(link.due(), t0 + second);
        tokio::time::advance(Duration::from_millis(1_100)).await;
        let reading = link.report(Instant::now(), LinkTotals::default(), 1);
        assert_eq!(reading.fields[0].1, FieldValue::Float(1.1));
        assert_eq!(link.due(), t0 + 2 * second);
        // The next interval runs from the previous report, not from its due time.
        tokio::time::advance(Duration::from_millis(900)).await;
        let reading = link.report(Instant::now(), LinkTotals::default(), 2);
        assert_eq!(reading.fields[0].1, FieldValue::Float(0.9));
        assert_eq!(link.due(), t0 + 3 * second);
        // Three intervals late: the next report is one interval from now.
        tokio::time::advance(Duration::from_secs(4)).await;
        link.report(Instant::now(), LinkTotals::default(), 3);
        assert_eq!(link.due(), Instant::now() + second);
    }

    /// An RTT sample belongs to the interval it was recorded in.
    #[tokio::test(start_paused = true)]
    async fn rtt_percentiles_are_per_interval() {
        let t0 = Instant::now();
        let mut link =
            LinkReporter::new(Some("s"), Duration::from_secs(1), t0).expect("a non-zero interval");
        link.record_rtt(Duration::from_millis(500));
        let first = link.report(t0 + Duration::from_secs(1), LinkTotals::default(), 1);
        link.record_rtt(Duration::from_millis(1));
        let second = link.report(t0 + Duration::from_secs(2), LinkTotals::default(), 2);
        let max = |r: &Reading| {
            r.fields
                .iter()
                .find(|(k, _)| k == "rtt_max_ms")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(max(&first), Some(FieldValue::Float(500.0)));
        assert_eq!(max(&second), Some(FieldValue::Float(1.0)));
    }

    #[tokio::test(start_paused = true)]
    async fn changed_is_anything_since_the_previous_report() {
        let t0 = Instant::now();
        let mut link =
            LinkReporter::new(Some("s"), Duration::from_secs(1), t0).expect("a non-zero interval");
        assert!(!link.changed(&LinkTotals::default()));
        assert!(link.changed(&totals(0, 0, 0, 0, 1)));
        link.report(t0, totals(0, 0, 0, 0, 1), 1);
        assert!(!link.changed(&totals(0, 0, 0, 0, 1)));
        link.record_rtt(Duration::from_millis(1));
        assert!(link.changed(&totals(0, 0, 0, 0, 1)));
    }
}
