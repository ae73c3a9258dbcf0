//! Events of the group-commit writer: a batch committed (or failed), the store probed, and
//! batches queued and answered. A store that waits out its database has its own
//! (`events/store.rs`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Event, Telemetry};
use crate::store::WriteOutcome;

/// The store writer is gone: the connection cannot hand it readings.
pub struct StoreUnavailable<'a> {
    pub error: &'a dyn std::error::Error,
}

impl Event for StoreUnavailable<'_> {
    fn emit_to(self, t: &Telemetry) {
        tracing::error!(cause = %self.error, "store unavailable; closing connection");
        t.store_errors_submit.increment(1);
        t.recent.store_failed(self.error.to_string());
    }
}

/// A store transaction committed.
pub struct BatchCommitted {
    /// Readings written (inserted + duplicates + conflicts).
    pub rows: usize,
    pub outcome: WriteOutcome,
    pub duration: Duration,
}

impl Event for BatchCommitted {
    fn emit_to(self, t: &Telemetry) {
        tracing::debug!(
            rows = self.rows,
            inserted = self.outcome.inserted,
            duplicates = self.outcome.duplicates,
            conflicts = self.outcome.conflicts,
            commit_us = u64::try_from(self.duration.as_micros()).unwrap_or(u64::MAX),
            "committed"
        );
        t.store_commits.increment(1);
        t.readings_inserted.increment(self.outcome.inserted);
        if self.outcome.duplicates > 0 {
            t.readings_duplicate.increment(self.outcome.duplicates);
            t.totals
                .readings_duplicate
                .fetch_add(self.outcome.duplicates, Ordering::Relaxed);
        }
        if self.outcome.conflicts > 0 {
            t.readings_conflict.increment(self.outcome.conflicts);
            t.totals
                .readings_conflict
                .fetch_add(self.outcome.conflicts, Ordering::Relaxed);
        }
        t.commit_duration.record(self.duration.as_secs_f64());
        t.commit_rows.record(self.rows as f64);
        t.totals
            .readings_stored
            .fetch_add(self.outcome.inserted, Ordering::Relaxed);
        t.recent
            .commit(Instant::now(), self.rows as u64, self.duration);
    }
}

/// A store transaction failed; none of its readings is acknowledged.
pub struct StoreFailed<'a> {
    pub error: &'a dyn std::error::Error,
    pub batches: usize,
    pub rows: usize,
}

impl Event for StoreFailed<'_> {
    fn emit_to(self, t: &Telemetry) {
        tracing::error!(cause = %self.error, batches = self.batches, rows = self.rows, "store transaction failed");
        t.store_errors_commit.increment(1);
        t.recent.store_failed(self.error.to_string());
    }
}

/// The group-commit writer probed the store while no batch came (`Store::probe`): a
/// success makes it ready again, a failure not ready until a commit or probe succeeds.
pub struct StoreProbed<'a> {
    pub result: Result<(), &'a dyn std::error::Error>,
}

impl Event for StoreProbed<'_> {
    fn emit_to(self, t: &Telemetry) {
        match self.result {
            Ok(()) => t.recent.store_ok(),
            // Logged when it starts failing, not once a second while it goes on.
            Err(error) => {
                if t.recent.store_failed(error.to_string()) {
                    tracing::error!(cause = %error, "store probe failed; not ready");
                } else {
                    tracing::debug!(cause = %error, "store probe failed again");
                }
            }
        }
    }
}

/// Readings handed to the store (`submit`) and not yet answered: the writer's queue depth.
/// Raised per submitted batch, lowered per answered transaction (one place for every route).
pub struct StoreQueued {
    pub readings: usize,
}

impl Event for StoreQueued {
    fn emit_to(self, t: &Telemetry) {
        if self.readings > 0 {
            t.store_queued.increment(self.readings as f64);
        }
    }
}

/// Readings of a transaction answered (committed or failed): out of the writer's queue.
pub struct StoreAnswered {
    pub readings: usize,
}

impl Event for StoreAnswered {
    fn emit_to(self, t: &Telemetry) {
        if self.readings > 0 {
            t.store_queued.decrement(self.readings as f64);
        }
    }
}
