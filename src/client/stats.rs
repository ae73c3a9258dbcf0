//! Round-trip statistics, as `ping` prints them, plus percentiles from an HdrHistogram.

use std::time::Duration;

use serde::Serialize;

/// Round-trip times seen so far.
#[derive(Debug, Clone)]
pub struct RttStats {}

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
        unimplemented!()
    }

    pub fn record(&mut self, _rtt: Duration) {
        unimplemented!()
    }

    pub fn summary(&self) -> RttSummary {
        unimplemented!()
    }
}
