//! The server's recent past, as the HTTP API shows it: readings/s and ack/commit latency
//! percentiles over the last [`WINDOW_SECONDS`], the last [`RECENT_REJECTIONS`] rejected
//! lines, and whether the store's last commit failed (`/readyz`).
//!
//! Fed by the same events that count the metrics (`BatchCommitted`, `RepliesWritten`,
//! `LineRejected`, `StoreFailed`), so the API and `/metrics` cannot disagree. The cost stays
//! off the per-reading path: one short lock per commit, per write of replies, and per
//! rejected line. Time is passed in ([`Instant`]), so tests need no clock.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// The window rates and percentiles are computed over, in whole seconds.
pub const WINDOW_SECONDS: u64 = 10;

/// Rejected lines kept for `/api/server`.
pub const RECENT_REJECTIONS: usize = 10;

/// A rejection's detail is cut to this many characters: a 64 KiB line must not be kept.
const DETAIL_MAX_CHARS: usize = 200;

/// Latencies are recorded in µs, up to an hour (larger ones count as an hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Two significant digits: 1 % resolution, a few KiB per histogram.
const SIGFIG: u8 = 2;

/// One rejected line, as `/api/server` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// When it was rejected, ns since the epoch.
    pub time_ns: i64,
    /// The peer's address (`IP:PORT`).
    pub peer: String,
    /// The `reason` label of `sensorlink_lines_rejected_total`.
    pub reason: &'static str,
    /// What was wrong (`line 3: …`), cut to [`DETAIL_MAX_CHARS`].
    pub detail: String,
}

/// p50 and p99 of a latency, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

/// The window's figures at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSummary {
    /// Readings committed per second (0 when none).
    pub readings_per_s: f64,
    /// Receipt → ack written; `None` without a sample in the window.
    pub ack_latency_ms: Option<Percentiles>,
    /// Duration of one store transaction; `None` without a sample in the window.
    pub commit_latency_ms: Option<Percentiles>,
}

/// One second of the window.
#[derive(Debug)]
struct Slot {
    /// Which second (since [`Recent`]'s epoch) this slot holds; `None`: never used.
    second: Option<u64>,
    readings: u64,
    ack_us: Histogram<u64>,
    commit_us: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG)
        .expect("1 ≤ MAX_LATENCY_US and SIGFIG ≤ 5 are valid histogram bounds")
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_LATENCY_US)
}

impl Slot {
    fn new() -> Self {
        Slot {
            second: None,
            readings: 0,
            ack_us: histogram(),
            commit_us: histogram(),
        }
    }
}

/// See the module docs. One per [`super::Telemetry`].
#[derive(Debug)]
pub struct Recent {
    /// Seconds are counted from here.
    epoch: Instant,
    /// A ring of [`WINDOW_SECONDS`] one-second slots, indexed by second modulo its length.
    slots: Mutex<Vec<Slot>>,
    /// Newest first.
    rejections: Mutex<VecDeque<Rejection>>,
    /// Why the store does not accept writes: its last commit or probe failed and none has
    /// succeeded since. `None`: it does.
    store_failure: Mutex<Option<String>>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent::new(Instant::now())
    }
}

/// A lock whose holder panicked still holds consistent figures (each update is one push
/// or one record): keep using it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Recent {
    /// An empty window starting at `epoch`.
    pub fn new(epoch: Instant) -> Self {
        Recent {
            epoch,
            slots: Mutex::new((0..WINDOW_SECONDS).map(|_| Slot::new()).collect()),
            rejections: Mutex::new(VecDeque::with_capacity(RECENT_REJECTIONS)),
            store_failure: Mutex::new(None),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// Run `f` on the slot of `now`'s second, emptied first if it held an older second.
    fn with_slot(&self, now: Instant, f: impl FnOnce(&mut Slot)) {
        let second = self.second(now);
        let mut slots = lock(&self.slots);
        let len = slots.len() as u64;
        let slot = &mut slots[(second % len) as usize];
        if slot.second != Some(second) {
            slot.second = Some(second);
            slot.readings = 0;
            slot.ack_us.reset();
            slot.commit_us.reset();
        }
        f(slot);
    }

    /// A transaction of `rows` readings committed at `now`, taking `duration`. The store
    /// accepts writes again, if it did not.
    pub fn commit(&self, now: Instant, rows: u64, duration: Duration) {
        self.with_slot(now, |slot| {
            slot.readings += rows;
            slot.commit_us.saturating_record(micros(duration));
        });
        self.store_ok();
    }

    /// The store accepts writes (a commit or a probe succeeded).
    pub fn store_ok(&self) {
        let mut failure = lock(&self.store_failure);
        // Checked first: no write on the usual path.
        if failure.is_some() {
            *failure = None;
        }
    }

    /// Acks written at `now`, one latency each.
    pub fn acks(&self, now: Instant, latencies: impl Iterator<Item = Duration>) {
        self.with_slot(now, |slot| {
            for latency in latencies {
                slot.ack_us.saturating_record(micros(latency));
            }
        });
    }

    /// The store failed (a commit or a probe, or its writer is gone): not ready until a
    /// commit or a probe succeeds. Answers whether it was ready until now.
    pub fn store_failed(&self, reason: String) -> bool {
        lock(&self.store_failure).replace(reason).is_none()
    }

    /// Why the store does not accept writes, if it does not.
    pub fn store_failure(&self) -> Option<String> {
        lock(&self.store_failure).clone()
    }

    /// Keep `rejection` as the newest (its detail cut to [`DETAIL_MAX_CHARS`]).
    pub fn rejected(&self, mut rejection: Rejection) {
        if let Some((cut, _)) = rejection.detail.char_indices().nth(DETAIL_MAX_CHARS) {
            rejection.detail.truncate(cut);
            rejection.detail.push('…');
        }
        let mut rejections = lock(&self.rejections);
        if rejections.len() == RECENT_REJECTIONS {
            rejections.pop_back();
        }
        rejections.push_front(rejection);
    }

    /// The last [`RECENT_REJECTIONS`] rejected lines, newest first.
    pub fn rejections(&self) -> Vec<Rejection> {
        lock(&self.rejections).iter().cloned().collect()
    }

    /// Rates and percentiles over the seconds of the window up to `now` (the current one
    /// included, so a reading shows at once).
    pub fn summary(&self, now: Instant) -> WindowSummary {
        let elapsed = now.saturating_duration_since(self.epoch);
        let second = elapsed.as_secs();
        let oldest = second.saturating_sub(WINDOW_SECONDS - 1);
        let mut readings = 0;
        let mut ack = histogram();
        let mut commit = histogram();
        for slot in lock(&self.slots).iter() {
            if slot.second.is_some_and(|s| (oldest..=second).contains(&s)) {
                readings += slot.readings;
                ack.add(&slot.ack_us)
                    .expect("histograms of the same bounds always add");
                commit
                    .add(&slot.commit_us)
                    .expect("histograms of the same bounds always add");
            }
        }
        // The window's length so far: full seconds before this one, and this one's part;
        // at least a second, so a burst right after start is not a huge rate.
        let full = Duration::from_secs(second - oldest);
        let this = elapsed - Duration::from_secs(second);
        let span_s = (full + this).as_secs_f64().max(1.0);
        WindowSummary {
            readings_per_s: readings as f64 / span_s,
            ack_latency_ms: percentiles(&ack),
            commit_latency_ms: percentiles(&commit),
        }
    }
}

fn percentiles(histogram: &Histogram<u64>) -> Option<Percentiles> {
    (!histogram.is_empty()).then(|| Percentiles {
        p50: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        p99: histogram.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: Instant, ms: u64) -> Instant {
        epoch + Duration::from_millis(ms)
    }

    #[test]
    fn empty_window_has_no_percentiles_and_no_rate() {
        let epoch = Instant::now();
        let recent = Recent::new(epoch);
        let summary = recent.summary(at(epoch, 5_500));
        assert_eq!(summary.readings_per_s, 0.0);
        assert_eq!(summary.ack_latency_ms, None);
        assert_eq!(summary.commit_latency_ms, None);
        assert_eq!(recent.store_failure(), None);
    }

    #[test]
    fn rates_and_percentiles_cover_the_last_ten_seconds_only() {
        let epoch = Instant::now();
        let recent = Recent::new(epoch);
        // Second 0: 100 readings in a 1 ms commit, acks of 2 ms.
        recent.commit(at(epoch, 100), 100, Duration::from_millis(1));
        recent.acks(at(epoch, 100), [Duration::from_millis(2); 4].into_iter());
        // Second 5: 50 readings, a 10 ms commit.
        recent.commit(at(epoch, 5_200), 50, Duration::from_millis(10));
        let summary = recent.summary(at(epoch, 6_000));
        assert_eq!(summary.readings_per_s, 150.0 / 6.0);
        let commit = summary.commit_latency_ms.expect("two commits");
        assert!((commit.p50 - 1.0).abs() < 0.02, "{commit:?}");
        assert!((commit.p99 - 10.0).abs() < 0.1, "{commit:?}");
        let ack = summary.ack_latency_ms.expect("four acks");
        assert!((ack.p50 - 2.0).abs() < 0.02 && (ack.p99 - 2.0).abs() < 0.02);

        // At 12.5 s, second 0 and 1 have left the window ([3, 12]); second 5 is still in.
        let later = recent.summary(at(epoch, 12_500));
        assert_eq!(later.readings_per_s, 50.0 / 9.5);
        assert_eq!(later.ack_latency_ms, None);
        // The slot of second 0 is reused by second 10 and emptied first.
        recent.commit(at(epoch, 10_100), 7, Duration::from_millis(3));
        let reused = recent.summary(at(epoch, 10_500));
        assert_eq!(reused.readings_per_s, (50.0 + 7.0) / 9.5);
        assert_eq!(reused.ack_latency_ms, None, "second 0's acks are gone");
    }

    #[test]
    fn a_failed_commit_makes_the_store_failing_until_one_succeeds() {
        let epoch = Instant::now();
        let recent = Recent::new(epoch);
        recent.store_failed("disk full".into());
        assert_eq!(recent.store_failure().as_deref(), Some("disk full"));
        recent.commit(at(epoch, 10), 1, Duration::from_millis(1));
        assert_eq!(recent.store_failure(), None);
        assert!(recent.store_failed("locked".into()), "was ready");
        assert!(
            !recent.store_failed("still locked".into()),
            "was failing already"
        );
        assert_eq!(recent.store_failure().as_deref(), Some("still locked"));
        recent.store_ok();
        assert_eq!(recent.store_failure(), None);
    }

    #[test]
    fn rejections_keep_the_newest_ten_with_short_details() {
        let recent = Recent::default();
        for n in 0..15 {
            recent.rejected(Rejection {
                time_ns: n,
                peer: "127.0.0.1:9".into(),
                reason: "invalid_reading",
                detail: "x".repeat(if n == 14 { 1000 } else { 3 }),
            });
        }
        let kept = recent.rejections();
        assert_eq!(kept.len(), RECENT_REJECTIONS);
        let times: Vec<i64> = kept.iter().map(|r| r.time_ns).collect();
        assert_eq!(times, (5..15).rev().collect::<Vec<_>>(), "newest first");
        assert_eq!(kept[0].detail.chars().count(), DETAIL_MAX_CHARS + 1);
        assert!(kept[0].detail.ends_with('…'));
        assert_eq!(kept[1].detail, "xxx");
    }
}
