//! The server's recent past, as the HTTP API shows it: readings/s and ack/commit latency
//! percentiles over the last [`WINDOW_SECONDS`], the last [`RECENT_REJECTIONS`] rejected
//! lines, and whether the store's last commit failed (`/readyz`).
//!
//! Fed by the same events that count the metrics (`BatchCommitted`, `RepliesWritten`,
//! `LineRejected`, `StoreFailed`), so the API and `/metrics` cannot disagree. The cost stays
//! off the per-reading path: one short lock per commit, per write of replies, and per
//! rejected line. Time is passed in ([`Instant`]), so tests need no clock.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
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

/// How long a computed [`WindowSummary`] is served to every caller (merging the window's
/// histograms takes the lock the ack path takes: not once per request or SSE client).
pub const SUMMARY_CACHE: Duration = Duration::from_millis(250);

/// Rejected lines kept per second at most: a flood of bad lines costs one counter check
/// per line beyond it, not a lock and a format.
const REJECTIONS_PER_SECOND: u32 = RECENT_REJECTIONS as u32;

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
    rejections: Mutex<Rejections>,
    /// The last summary computed, and when: served again within [`SUMMARY_CACHE`].
    summary: Mutex<Option<(Instant, WindowSummary)>>,
    /// Why the store does not accept writes: its last commit or probe failed and none has
    /// succeeded since. `None`: it does.
    store_failure: Mutex<Option<String>>,
}

/// The kept rejections and this second's capture budget.
#[derive(Debug, Default)]
struct Rejections {
    /// Newest first.
    kept: VecDeque<Rejection>,
    /// The second (since the epoch) `captured` counts in.
    second: u64,
    captured: u32,
}

/// A `fmt::Write` that keeps the first [`DETAIL_MAX_CHARS`] characters and then stops the
/// formatting (an error ends `write_fmt` early), so a long detail is never built whole.
struct Capped {
    text: String,
    chars: usize,
    cut: bool,
}

impl fmt::Write for Capped {
    fn write_str(&mut self, part: &str) -> fmt::Result {
        for c in part.chars() {
            if self.chars == DETAIL_MAX_CHARS {
                self.cut = true;
                return Err(fmt::Error);
            }
            self.text.push(c);
            self.chars += 1;
        }
        Ok(())
    }
}

/// `detail` formatted up to [`DETAIL_MAX_CHARS`] characters, `…` marking a cut.
fn capped(detail: fmt::Arguments<'_>) -> String {
    let mut out = Capped {
        text: String::new(),
        chars: 0,
        cut: false,
    };
    // An error here only means the cap was reached.
    let _ = out.write_fmt(detail);
    if out.cut {
        out.text.push('…');
    }
    out.text
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
            rejections: Mutex::new(Rejections {
                kept: VecDeque::with_capacity(RECENT_REJECTIONS),
                ..Rejections::default()
            }),
            summary: Mutex::new(None),
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

    /// A line from `peer` was rejected at `now` (wall clock: `time_ns`, called only if
    /// kept): keep it as the newest, its detail cut to [`DETAIL_MAX_CHARS`]. Kept only
    /// within [`REJECTIONS_PER_SECOND`] and when no other thread is keeping one right then
    /// (`try_lock`): under a flood of bad lines the connections never queue on this lock,
    /// and a line that is not kept costs no formatting.
    pub fn rejected(
        &self,
        now: Instant,
        time_ns: impl FnOnce() -> i64,
        peer: SocketAddr,
        reason: &'static str,
        detail: fmt::Arguments<'_>,
    ) {
        let mut rejections = match self.rejections.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        let second = self.second(now);
        if rejections.second != second {
            rejections.second = second;
            rejections.captured = 0;
        }
        if rejections.captured == REJECTIONS_PER_SECOND {
            return;
        }
        rejections.captured += 1;
        let rejection = Rejection {
            time_ns: time_ns(),
            peer: peer.to_string(),
            reason,
            detail: capped(detail),
        };
        if rejections.kept.len() == RECENT_REJECTIONS {
            rejections.kept.pop_back();
        }
        rejections.kept.push_front(rejection);
    }

    /// The last [`RECENT_REJECTIONS`] rejected lines kept, newest first.
    pub fn rejections(&self) -> Vec<Rejection> {
        lock(&self.rejections).kept.iter().cloned().collect()
    }

    /// [`Recent::summary`], computed at most once per [`SUMMARY_CACHE`]: callers within
    /// that time of the last computation share its result.
    pub fn summary_cached(&self, now: Instant) -> WindowSummary {
        // Held while computing, so concurrent callers wait for one merge and share it.
        let mut cached = lock(&self.summary);
        if let Some((at, summary)) = *cached {
            if now >= at && now.duration_since(at) < SUMMARY_CACHE {
                return summary;
            }
        }
        let summary = self.summary(now);
        *cached = Some((now, summary));
        summary
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

    fn reject(recent: &Recent, now: Instant, n: i64, detail: &str) {
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("an address");
        recent.rejected(now, || n, peer, "invalid_reading", format_args!("{detail}"));
    }

    #[test]
    fn rejections_keep_the_newest_ten_with_short_details() {
        let epoch = Instant::now();
        let recent = Recent::new(epoch);
        // One a second, so the per-second budget does not matter here.
        for n in 0..15 {
            let detail = "x".repeat(if n == 14 { 1000 } else { 3 });
            reject(&recent, at(epoch, n as u64 * 1000), n, &detail);
        }
        let kept = recent.rejections();
        assert_eq!(kept.len(), RECENT_REJECTIONS);
        let times: Vec<i64> = kept.iter().map(|r| r.time_ns).collect();
        assert_eq!(times, (5..15).rev().collect::<Vec<_>>(), "newest first");
        assert_eq!(kept[0].detail.chars().count(), DETAIL_MAX_CHARS + 1);
        assert!(kept[0].detail.ends_with('…'));
        assert_eq!(kept[1].detail, "xxx");
        assert_eq!(kept[0].peer, "127.0.0.1:9");
    }

    /// A flood keeps at most [`REJECTIONS_PER_SECOND`] a second, and a line that is not
    /// kept is never formatted.
    #[test]
    fn rejections_are_kept_within_a_budget_per_second() {
        struct Counted<'a>(&'a std::cell::Cell<u32>);
        impl fmt::Display for Counted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.set(self.0.get() + 1);
                f.write_str("bad")
            }
        }
        let formatted = std::cell::Cell::new(0);
        let epoch = Instant::now();
        let recent = Recent::new(epoch);
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("an address");
        for n in 0..1000 {
            recent.rejected(
                at(epoch, 500),
                || n,
                peer,
                "invalid_reading",
                format_args!("{}", Counted(&formatted)),
            );
        }
        assert_eq!(formatted.get(), REJECTIONS_PER_SECOND);
        let times: Vec<i64> = recent.rejections().iter().map(|r| r.time_ns).collect();
        assert_eq!(times, (0..10).rev().collect::<Vec<_>>());
        // The next second has a budget again.
        reject(&recent, at(epoch, 1_500), 5000, "later");
        assert_eq!(recent.rejections()[0].time_ns, 5000);
    }

    /// A connection never waits for another's capture: while the list is locked, a
    /// rejection is skipped, not queued.
    #[test]
    fn a_rejection_does_not_wait_for_the_lock() {
        let epoch = Instant::now();
        let recent = Recent::new(epoch);
        let held = lock(&recent.rejections);
        reject(&recent, epoch, 1, "skipped");
        drop(held);
        assert!(recent.rejections().is_empty());
    }

    /// Within [`SUMMARY_CACHE`] of a computation its result is served again; later, a new
    /// one is computed.
    #[test]
    fn the_summary_is_shared_for_a_while() {
        let epoch = Instant::now();
        let recent = Recent::new(epoch);
        recent.commit(at(epoch, 100), 10, Duration::from_millis(1));
        let first = recent.summary_cached(at(epoch, 1_000));
        recent.commit(at(epoch, 1_100), 90, Duration::from_millis(1));
        assert_eq!(recent.summary_cached(at(epoch, 1_200)), first, "cached");
        let later = recent.summary_cached(at(epoch, 1_000) + SUMMARY_CACHE);
        assert_eq!(later.readings_per_s, 100.0 / 1.25, "recomputed");
    }
}
