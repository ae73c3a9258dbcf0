//! The read path: [`StoreReader`], a cheap cloneable handle that async code (the server,
//! HTTP handlers, `sensorlink query`) reads committed data through.
//!
//! Each backend implements [`ReadStore`] with its own concurrency: SQLite runs its queries
//! on `spawn_blocking` over read-only connections of its own (WAL lets them read beside
//! the writer); memory reads its shared state under a read lock; an async database driver
//! would await its pool. None of them goes through the writer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Counts, Query, Row, SensorStats, StoreError};

/// A boxed `Send` future: what [`ReadStore`] methods return (one allocation per read,
/// never on the ingest path).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A backend's read side. Every method sees committed data only.
///
/// Freshness: `query` sees every committed reading. `latest`, `sensor_stats` and `counts`
/// may come from totals a backend maintains off the commit path: SQLite folds them in at
/// most [`super::sqlite::TOTALS_FLUSH_INTERVAL`] (1 s) after the commit (exact once the
/// writer has closed); memory is always exact.
pub trait ReadStore: Send + Sync + 'static {
    /// Stored readings matching `query`, oldest first (ties: in series creation order) or,
    /// with `query.newest_first`, in exactly the reverse order; at most `query.limit`.
    fn query(&self, query: Query) -> BoxFuture<'_, Result<Vec<Row>, StoreError>>;

    /// The latest reading of every sensor, sorted by sensor.
    ///
    /// Latest = the greatest (timestamp, received, series id), where series ids grow in
    /// series creation order: a total order (one reading per series and timestamp) that
    /// every SQL store can reproduce in an `ORDER BY`, so every store picks the same row
    /// even when two series of a sensor tie on timestamp and receive time.
    fn latest(&self) -> BoxFuture<'_, Result<Vec<Row>, StoreError>>;

    /// Per-sensor count, first/last timestamp and last fields, sorted by sensor.
    fn sensor_stats(&self) -> BoxFuture<'_, Result<Vec<SensorStats>, StoreError>>;

    /// Readings stored, in all and per sensor.
    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>>;
}

/// Per-sensor stats from a store's totals `(sensor, readings, first_ns, last_ns)` and its
/// latest rows, both sorted by sensor: each sensor gets its latest row's fields (none if
/// the latest rows lack it, e.g. read a moment apart from the totals).
pub(crate) fn join_stats(
    totals: Vec<(String, u64, i64, i64)>,
    latest: Vec<Row>,
) -> Vec<SensorStats> {
    let mut latest = latest.into_iter().peekable();
    let mut stats = Vec::with_capacity(totals.len());
    for (sensor, readings, first_ns, last_ns) in totals {
        while latest
            .next_if(|row| row.sensor.as_str() < sensor.as_str())
            .is_some()
        {}
        let last_fields = match latest.next_if(|row| row.sensor == sensor) {
            Some(row) => row.fields,
            None => Vec::new(),
        };
        stats.push(SensorStats {
            sensor,
            readings,
            first_ns,
            last_ns,
            last_fields,
        });
    }
    stats
}

/// Cloneable, `Send + Sync` handle on a store's read side.
#[derive(Clone)]
pub struct StoreReader {
    inner: Arc<dyn ReadStore>,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader").finish_non_exhaustive()
    }
}

impl StoreReader {
    /// Wrap a backend's read side.
    pub fn new(inner: impl ReadStore) -> Self {
        StoreReader {
            inner: Arc::new(inner),
        }
    }

    /// Stored readings matching `query`, oldest first.
    ///
    /// # Errors
    /// The backend's error, with its context.
    pub async fn query(&self, query: &Query) -> Result<Vec<Row>, StoreError> {
        self.inner.query(query.clone()).await
    }

    /// The latest reading of every sensor, sorted by sensor.
    ///
    /// # Errors
    /// The backend's error, with its context.
    pub async fn latest(&self) -> Result<Vec<Row>, StoreError> {
        self.inner.latest().await
    }

    /// Per-sensor count, first/last timestamp and last fields, sorted by sensor.
    ///
    /// # Errors
    /// The backend's error, with its context.
    pub async fn sensor_stats(&self) -> Result<Vec<SensorStats>, StoreError> {
        self.inner.sensor_stats().await
    }

    /// Readings stored, in all and per sensor.
    ///
    /// # Errors
    /// The backend's error, with its context.
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        self.inner.counts().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    /// What an axum handler needs: a `Clone + Send + Sync + 'static` state whose read
    /// futures are `Send`. Checked at compile time.
    #[test]
    fn reader_fits_async_handlers() {
        fn state<T: Clone + Send + Sync + 'static>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let reader = MemoryStore::default().reader();
        state(&reader);
        let query = Query::default();
        send(reader.query(&query));
        send(reader.latest());
        send(reader.sensor_stats());
        send(reader.counts());
    }
}
