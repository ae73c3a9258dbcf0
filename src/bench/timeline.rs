//! [`Timeline`]: a load run per second (`bench --report`): readings acked and ack latency
//! percentiles of each second of the measurement, in bounded memory.
//!
//! Each slot has its own small histogram (2 significant figures over 1 ns to 1 h: 4608
//! counters of 8 bytes, 36 KiB, made only for a slot that gets a sample). Past
//! [`MAX_SLOTS`] slots the slot width doubles and neighbours merge (histograms add, in
//! place), so a long run keeps its shape and a bounded size.
//!
//! Memory bound: at most [`MAX_SLOTS`] histograms, 600 × 36 KiB ≈ 21 MiB for the whole
//! run (one timeline per bench run, whatever its length, rate or connection count), reached
//! only when every slot got a sample; a run of N seconds < 600 holds at most N of them.

use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::client::stats::MAX_RTT_NS;

/// Most slots kept; beyond, slots widen (1 s, 2 s, 4 s, …).
pub const MAX_SLOTS: usize = 600;

/// One slot's readings and latencies.
#[derive(Debug, Clone, Default)]
struct Slot {
    readings: u64,
    hist: Option<Histogram<u64>>,
}

impl Slot {
    fn merge(&mut self, other: Slot) {
        self.readings += other.readings;
        match (&mut self.hist, other.hist) {
            (Some(mine), Some(theirs)) => {
                // Equal bounds: adding cannot fail; saturate rather than lose it if it did.
                if mine.add(&theirs).is_err() {
                    for v in theirs.iter_recorded() {
                        mine.saturating_record_n(v.value_iterated_to(), v.count_at_value());
                    }
                }
            }
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

/// What one slot of the run measured (what the picture draws).
#[derive(Debug, Clone, PartialEq)]
pub struct Second {
    /// Start of the slot, seconds since the measurement began.
    pub t_s: f64,
    pub width_s: f64,
    pub readings_per_s: f64,
    /// Latency percentiles of the acks in the slot, in µs (`None`: no ack in it).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
}

/// A run's readings and latencies per slot.
#[derive(Debug, Clone)]
pub struct Timeline {
    started: Instant,
    width: Duration,
    slots: Vec<Slot>,
}

impl Timeline {
    pub fn new(started: Instant) -> Self {
        Timeline {
            started,
            width: Duration::from_secs(1),
            slots: Vec::new(),
        }
    }

    /// The measurement begins at `at`: slots count from there (record nothing before).
    pub fn restart(&mut self, at: Instant) {
        *self = Timeline::new(at);
    }

    /// A sync acked at `at` after `rtt`, covering `readings` readings.
    pub fn record(&mut self, at: Instant, rtt: Duration, readings: u64) {
        let mut index = self.index(at);
        while index >= MAX_SLOTS {
            self.coarsen();
            index = self.index(at);
        }
        if self.slots.len() <= index {
            self.slots.resize_with(index + 1, Slot::default);
        }
        let slot = &mut self.slots[index];
        slot.readings += readings;
        let hist = slot.hist.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, MAX_RTT_NS, 2)
                .expect("constant histogram bounds are valid")
        });
        let ns = u64::try_from(rtt.as_nanos())
            .unwrap_or(u64::MAX)
            .min(MAX_RTT_NS);
        hist.saturating_record(ns.max(1));
    }

    fn index(&self, at: Instant) -> usize {
        let since = at.saturating_duration_since(self.started);
        usize::try_from(since.as_nanos() / self.width.as_nanos()).unwrap_or(usize::MAX)
    }

    fn coarsen(&mut self) {
        self.width *= 2;
        let old = std::mem::take(&mut self.slots);
        for (i, slot) in old.into_iter().enumerate() {
            let index = i / 2;
            if self.slots.len() <= index {
                self.slots.resize_with(index + 1, Slot::default);
            }
            self.slots[index].merge(slot);
        }
    }

    /// Every slot up to `end` (the last one cut at `end`, so its rate is not understated).
    pub fn seconds(&self, end: Instant) -> Vec<Second> {
        let width_s = self.width.as_secs_f64();
        let end_s = end.saturating_duration_since(self.started).as_secs_f64();
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| {
                let t_s = i as f64 * width_s;
                let width = (end_s - t_s).clamp(1e-3, width_s);
                let pct = |q: f64| {
                    slot.hist
                        .as_ref()
                        .map(|h| h.value_at_quantile(q) as f64 / 1e3)
                };
                Second {
                    t_s,
                    width_s: width,
                    readings_per_s: slot.readings as f64 / width,
                    p50_us: pct(0.5),
                    p99_us: pct(0.99),
                    max_us: slot.hist.as_ref().map(|h| h.max() as f64 / 1e3),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn readings_and_latencies_land_in_their_second() {
        let t0 = Instant::now();
        let mut timeline = Timeline::new(t0);
        let ms = Duration::from_millis;
        timeline.record(t0 + ms(100), ms(1), 10);
        timeline.record(t0 + ms(900), ms(3), 10);
        timeline.record(t0 + ms(2_500), ms(50), 5);
        let seconds = timeline.seconds(t0 + ms(2_750));
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0].readings_per_s, 20.0);
        assert_eq!(seconds[1].readings_per_s, 0.0);
        assert_eq!(seconds[1].p50_us, None);
        // The last slot is cut at the end of the run: 0.75 s, 5 readings.
        assert_eq!(seconds[2].width_s, 0.75);
        assert!((seconds[2].readings_per_s - 5.0 / 0.75).abs() < 1e-9);
        let max = seconds[2].max_us.expect("an ack in the third second");
        assert!((max - 50_000.0).abs() < 50_000.0 * 0.01, "{max}");
        let p99 = seconds[0].p99_us.expect("acks in the first second");
        assert!((p99 - 3_000.0).abs() < 3_000.0 * 0.01, "{p99}");
    }

    /// The header's memory bound: one slot's histogram is 4608 counters (36 KiB).
    #[test]
    fn a_slot_histogram_is_36_kib() {
        let hist: Histogram<u64> =
            Histogram::new_with_bounds(1, MAX_RTT_NS, 2).expect("valid bounds");
        assert_eq!(hist.distinct_values(), 4608);
        assert_eq!(
            hist.distinct_values() * std::mem::size_of::<u64>(),
            36 * 1024
        );
    }

    /// A run longer than MAX_SLOTS seconds widens its slots: bounded, and nothing lost.
    #[tokio::test(start_paused = true)]
    async fn long_runs_widen_slots_and_keep_every_reading() {
        let t0 = Instant::now();
        let mut timeline = Timeline::new(t0);
        for s in 0..3_000u64 {
            timeline.record(t0 + Duration::from_secs(s), Duration::from_millis(1), 2);
        }
        let end = t0 + Duration::from_secs(3_000);
        let seconds = timeline.seconds(end);
        assert!(seconds.len() <= MAX_SLOTS, "{}", seconds.len());
        let total: f64 = seconds.iter().map(|s| s.readings_per_s * s.width_s).sum();
        assert!((total - 6_000.0).abs() < 1e-6, "{total}");
        assert!(seconds[0].width_s >= 5.0);
    }
}
