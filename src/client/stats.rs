//! Round-trip statistics, as `ping` prints them, plus percentiles from an HdrHistogram.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest round trip the stats keep apart from others, in nanoseconds (1 hour); longer
/// ones are counted as this value so that a stuck reply can never make recording panic.
pub const MAX_RTT_NS: u64 = 3_600 * 1_000_000_000;

/// Significant figures kept by the histogram (0.1 % relative error on percentiles).
const SIGFIG: u8 = 3;

/// Round-trip times seen so far.
///
/// min/avg/max/mdev are exact (from running sums, like ping); percentiles come from the
/// histogram and are exact to [`SIGFIG`] significant figures.
#[derive(Debug, Clone)]
pub struct RttStats {
    hist: Histogram<u64>,
    count: u64,
    /// Sums in integer nanoseconds so avg and mdev do not drift over long runs.
    sum_ns: u128,
    sum_sq_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

/// A snapshot of [`RttStats`] in microseconds (floats keep sub-µs precision of the mean).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RttSummary {
    pub count: u64,
    pub min_us: f64,
    pub avg_us: f64,
    pub max_us: f64,
    /// Standard deviation, as ping's `mdev`.
    pub mdev_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Default for RttStats {
    fn default() -> Self {
        Self::new()
    }
}

impl RttStats {
    pub fn new() -> Self {
        // Fixed bounds rather than auto-resize: memory stays bounded and merging two
        // stats can never fail on mismatched ranges.
        let hist = Histogram::new_with_bounds(1, MAX_RTT_NS, SIGFIG)
            .expect("constant histogram bounds are valid");
        Self {
            hist,
            count: 0,
            sum_ns: 0,
            sum_sq_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    pub fn record(&mut self, rtt: Duration) {
        let ns = u64::try_from(rtt.as_nanos())
            .unwrap_or(u64::MAX)
            .min(MAX_RTT_NS);
        self.hist.saturating_record(ns);
        self.count += 1;
        let wide = u128::from(ns);
        self.sum_ns = self.sum_ns.saturating_add(wide);
        self.sum_sq_ns = self.sum_sq_ns.saturating_add(wide * wide);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds everything `other` recorded, as if it had all been recorded here.
    pub fn merge(&mut self, other: &RttStats) {
        if other.count == 0 {
            return;
        }
        if self.hist.add(&other.hist).is_err() {
            // Cannot happen with equal bounds; re-record bucket by bucket just in case.
            for v in other.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.count += other.count;
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
        self.sum_sq_ns = self.sum_sq_ns.saturating_add(other.sum_sq_ns);
        self.min_ns = self.min_ns.min(other.min_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Number of round trips recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Every distinct recorded value (to the histogram's precision) in µs, with its count,
    /// in rising order: what a picture of the distribution is drawn from.
    pub fn recorded_us(&self) -> Vec<(f64, u64)> {
        self.hist
            .iter_recorded()
            .map(|v| {
                let ns = v.value_iterated_to().clamp(self.min_ns, self.max_ns);
                (ns as f64 / 1e3, v.count_at_value())
            })
            .collect()
    }

    pub fn summary(&self) -> RttSummary {
        if self.count == 0 {
            return RttSummary::default();
        }
        let n = self.count as f64;
        let avg_ns = self.sum_ns as f64 / n;
        let var_ns2 = self.variance_ns2();
        // Bucket values can overshoot the true extremes by the histogram's precision;
        // clamp so that p99.9 never prints above max.
        let pct = |q: f64| {
            let v = self
                .hist
                .value_at_quantile(q)
                .clamp(self.min_ns, self.max_ns);
            v as f64 / 1e3
        };
        RttSummary {
            count: self.count,
            min_us: self.min_ns as f64 / 1e3,
            avg_us: avg_ns / 1e3,
            max_us: self.max_ns as f64 / 1e3,
            mdev_us: var_ns2.max(0.0).sqrt() / 1e3,
            p50_us: pct(0.5),
            p90_us: pct(0.9),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
        }
    }

    /// Population variance in ns²: mean(x²) − mean(x)².
    fn variance_ns2(&self) -> f64 {
        let n = u128::from(self.count);
        // n·Σx² − (Σx)² is exact in integers (and ≥ 0), avoiding the cancellation the
        // float formula suffers when the spread is small relative to the mean.
        let exact = n.checked_mul(self.sum_sq_ns).and_then(|a| {
            self.sum_ns
                .checked_mul(self.sum_ns)
                .map(|b| a.saturating_sub(b))
        });
        match exact {
            Some(num) => num as f64 / (n as f64 * n as f64),
            None => {
                // Overflow only for absurd totals; the float formula is then good enough.
                let mean = self.sum_ns as f64 / n as f64;
                self.sum_sq_ns as f64 / n as f64 - mean * mean
            }
        }
    }
}

/// Microseconds as milliseconds with 3 decimals, as ping prints them (183.4 → "0.183").
pub fn fmt_ms(us: f64) -> String {
    format!("{:.3}", us / 1e3)
}

impl RttSummary {
    /// Two ping-style lines (no trailing newline):
    /// `rtt min/avg/max/mdev = …/…/…/… ms` and `rtt p50/p90/p99/p99.9 = …/…/…/… ms`.
    pub fn ping_lines(&self) -> String {
        format!(
            "rtt min/avg/max/mdev = {}/{}/{}/{} ms\nrtt p50/p90/p99/p99.9 = {}/{}/{}/{} ms",
            fmt_ms(self.min_us),
            fmt_ms(self.avg_us),
            fmt_ms(self.max_us),
            fmt_ms(self.mdev_us),
            fmt_ms(self.p50_us),
            fmt_ms(self.p90_us),
            fmt_ms(self.p99_us),
            fmt_ms(self.p999_us),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn us(v: u64) -> Duration {
        Duration::from_micros(v)
    }

    #[test]
    fn empty_is_all_zeros() {
        let s = RttStats::new().summary();
        assert_eq!(s, RttSummary::default());
        assert_eq!(
            s.ping_lines(),
            "rtt min/avg/max/mdev = 0.000/0.000/0.000/0.000 ms\n\
             rtt p50/p90/p99/p99.9 = 0.000/0.000/0.000/0.000 ms"
        );
    }

    #[test]
    fn exact_min_avg_max_mdev() {
        let mut st = RttStats::new();
        for v in [1, 2, 3, 4] {
            st.record(ms(v));
        }
        let s = st.summary();
        assert_eq!(s.count, 4);
        assert_eq!(s.min_us, 1000.0);
        assert_eq!(s.avg_us, 2500.0);
        assert_eq!(s.max_us, 4000.0);
        // sqrt(1.25) ms
        assert!((s.mdev_us - 1_118.033_988_75).abs() < 1e-6, "{}", s.mdev_us);
    }

    #[test]
    fn identical_values_have_zero_mdev() {
        let mut st = RttStats::new();
        for _ in 0..1000 {
            st.record(Duration::from_nanos(123_456_789));
        }
        let s = st.summary();
        assert_eq!(s.mdev_us, 0.0);
        assert!((s.avg_us - 123_456.789).abs() < 1e-9);
    }

    #[test]
    fn percentiles_within_precision() {
        let mut st = RttStats::new();
        for v in 1..=10_000 {
            st.record(us(v));
        }
        let s = st.summary();
        let close = |got: f64, want: f64| (got - want).abs() <= want * 1e-3 + 1e-9;
        assert!(close(s.p50_us, 5000.0), "p50 {}", s.p50_us);
        assert!(close(s.p90_us, 9000.0), "p90 {}", s.p90_us);
        assert!(close(s.p99_us, 9900.0), "p99 {}", s.p99_us);
        assert!(close(s.p999_us, 9990.0), "p99.9 {}", s.p999_us);
        assert!(s.p999_us <= s.max_us);
        assert_eq!(s.min_us, 1.0);
        assert_eq!(s.max_us, 10_000.0);
    }

    #[test]
    fn merge_equals_recording_all_into_one() {
        let mut a = RttStats::new();
        let mut b = RttStats::new();
        let mut all = RttStats::new();
        for v in 1..=500u64 {
            let d = us(v * 37 % 1000 + 1);
            if v % 3 == 0 {
                a.record(d);
            } else {
                b.record(d);
            }
            all.record(d);
        }
        a.merge(&b);
        assert_eq!(a.summary(), all.summary());

        // Merging empty stats either way changes nothing.
        let before = a.summary();
        a.merge(&RttStats::new());
        assert_eq!(a.summary(), before);
        let mut empty = RttStats::new();
        empty.merge(&all);
        assert_eq!(empty.summary(), all.summary());
    }

    #[test]
    fn huge_values_are_clamped_not_panicking() {
        let mut st = RttStats::new();
        st.record(Duration::MAX);
        st.record(Duration::from_secs(10 * 3600));
        st.record(Duration::ZERO);
        let s = st.summary();
        let max_us = MAX_RTT_NS as f64 / 1e3;
        assert_eq!(s.count, 3);
        assert_eq!(s.max_us, max_us);
        assert_eq!(s.min_us, 0.0);
        assert_eq!(s.p999_us, max_us);
        assert!(s.mdev_us.is_finite());
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_ms(183.4), "0.183");
        assert_eq!(fmt_ms(1500.0), "1.500");
        let s = RttSummary {
            count: 4,
            min_us: 120.0,
            avg_us: 200.0,
            max_us: 300.0,
            mdev_us: 50.0,
            p50_us: 190.0,
            p90_us: 250.0,
            p99_us: 290.0,
            p999_us: 300.0,
        };
        assert_eq!(
            s.ping_lines(),
            "rtt min/avg/max/mdev = 0.120/0.200/0.300/0.050 ms\n\
             rtt p50/p90/p99/p99.9 = 0.190/0.250/0.290/0.300 ms"
        );
    }
}
