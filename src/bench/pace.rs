//! Pacing: how many readings a connection sends (its share of `--count`) and when each is
//! due (`--rate`, spread over the connections). Pure arithmetic on instants, no I/O.

use std::time::Duration;

use tokio::time::Instant;

/// This connection's share of `--count`: the total split as evenly as possible.
pub(super) fn count_share(total: u64, connections: usize, index: usize) -> u64 {
    let n = connections as u64;
    total / n + u64::from((index as u64) < total % n)
}

/// The pace of one connection: reading `j` (from 0) is due at `start + j / rate`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pacer {
    start: Instant,
    ns_per_reading: f64,
}

impl Pacer {
    /// A pacer for `rate` readings/s; connection `index` of `n` starts a fraction of one
    /// period later than the one before, so that connections do not all send at once.
    pub(super) fn new(rate: f64, go: Instant, index: usize, n: usize) -> Option<Pacer> {
        if rate <= 0.0 {
            return None;
        }
        let ns_per_reading = 1e9 / rate;
        let offset = ns_per_reading * index as f64 / n as f64;
        Some(Pacer {
            start: go + Duration::from_nanos(offset as u64),
            ns_per_reading,
        })
    }

    /// How many readings are due by `now`.
    pub(super) fn due(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.start) {
            Some(elapsed) => (elapsed.as_nanos() as f64 / self.ns_per_reading) as u64 + 1,
            None => 0,
        }
    }

    /// When `n` readings (n ≥ 1) will be due.
    pub(super) fn when_due(&self, n: u64) -> Instant {
        let ns = n.saturating_sub(1) as f64 * self.ns_per_reading;
        self.start + Duration::from_nanos(ns as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_split_exactly() {
        for (total, conns) in [(2000, 4), (7, 3), (1, 5), (10, 1)] {
            let sum: u64 = (0..conns).map(|i| count_share(total, conns, i)).sum();
            assert_eq!(sum, total);
        }
        assert_eq!(count_share(7, 3, 0), 3);
        assert_eq!(count_share(7, 3, 2), 2);
    }

    #[test]
    fn pacer_spreads_readings_and_connections() {
        let go = Instant::now();
        assert!(Pacer::new(0.0, go, 0, 1).is_none());
        let p = Pacer::new(1000.0, go, 0, 1).expect("paced");
        assert_eq!(p.due(go), 1);
        assert_eq!(p.due(go + Duration::from_micros(999)), 1);
        assert_eq!(p.due(go + Duration::from_millis(1)), 2);
        assert_eq!(p.due(go + Duration::from_millis(10)), 11);
        assert_eq!(p.when_due(1), go);
        assert_eq!(p.when_due(11), go + Duration::from_millis(10));
        // The second of two connections starts half a period later.
        let q = Pacer::new(1000.0, go, 1, 2).expect("paced");
        assert_eq!(q.due(go), 0);
        assert_eq!(q.when_due(1), go + Duration::from_micros(500));
    }
}
