//! Events of a store that waits out its database (the PostgreSQL store): an outage begins
//! and ends (logged once each, counted, and `/readyz` follows), and retention drops old
//! data. The group-commit writer's own events (`BatchCommitted`, `StoreFailed`,
//! `StoreProbed`) are in `events/commit.rs`.

use std::time::Duration;

use metrics::{Counter, Histogram};

use super::table::names::{
    STORE_PARTITIONS_DROPPED, STORE_RETENTION_DELETED, STORE_UNAVAILABLE,
    STORE_UNAVAILABLE_DURATION,
};
use super::{Event, Telemetry};

/// The handles of the store-outage metrics (a part of [`Telemetry`]).
#[derive(Debug)]
pub(super) struct StoreHandles {
    unavailable: Counter,
    unavailable_duration: Histogram,
    partitions_dropped: Counter,
    retention_deleted: Counter,
}

impl StoreHandles {
    pub(super) fn register() -> Self {
        StoreHandles {
            unavailable: metrics::counter!(STORE_UNAVAILABLE),
            unavailable_duration: metrics::histogram!(STORE_UNAVAILABLE_DURATION),
            partitions_dropped: metrics::counter!(STORE_PARTITIONS_DROPPED),
            retention_deleted: metrics::counter!(STORE_RETENTION_DELETED),
        }
    }
}

/// The database went out of reach: batches are held (not answered, not acked) and retried
/// until it is back; the server is not ready meanwhile. Emitted once per outage.
pub struct StoreWaitStarted<'a> {
    pub error: &'a dyn std::error::Error,
    /// Readings held when it began (0 when a probe noticed it).
    pub readings: usize,
}

impl Event for StoreWaitStarted<'_> {
    fn emit_to(self, t: &Telemetry) {
        tracing::warn!(
            cause = %self.error,
            readings = self.readings,
            "store unavailable; holding batches (no ack) and retrying until it is back"
        );
        t.store.unavailable.increment(1);
        t.recent.store_failed(self.error.to_string());
    }
}

/// The database is back after an outage of `waited`: the held batches commit.
pub struct StoreWaitEnded {
    pub waited: Duration,
}

impl Event for StoreWaitEnded {
    fn emit_to(self, t: &Telemetry) {
        tracing::info!(
            waited_ms = u64::try_from(self.waited.as_millis()).unwrap_or(u64::MAX),
            "store available again"
        );
        t.store
            .unavailable_duration
            .record(self.waited.as_secs_f64());
        t.recent.store_ok();
    }
}

/// Retention removed data older than its cutoff: whole time partitions dropped, and rows
/// deleted from the catch-all partition.
pub struct RetentionApplied<'a> {
    pub partitions: &'a [String],
    pub readings: u64,
    pub cutoff_ns: i64,
}

impl Event for RetentionApplied<'_> {
    fn emit_to(self, t: &Telemetry) {
        if !self.partitions.is_empty() || self.readings > 0 {
            tracing::info!(
                partitions = ?self.partitions,
                readings = self.readings,
                cutoff = %crate::timefmt::rfc3339_ns(self.cutoff_ns),
                "retention dropped old readings"
            );
        }
        t.store
            .partitions_dropped
            .increment(self.partitions.len() as u64);
        t.store.retention_deleted.increment(self.readings);
    }
}
