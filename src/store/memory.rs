//! In-memory store: for tests and benchmarks; lost at exit.
//!
//! Same semantics as every store (the conformance suite checks it): one series per series
//! key ([`super::encoding`]), a reading whose series and timestamp are already stored is a
//! duplicate, tags come back sorted. It keeps the most recent [`DEFAULT_CAPACITY`] readings
//! (the oldest are forgotten, deduplication included) so that a benchmark running at
//! millions of readings per second does not exhaust memory.
//!
//! The data sit behind one `RwLock` shared by the write side ([`MemoryStore`], written
//! inline by the submitting tasks) and the read side ([`MemoryStore::reader`]). Every read
//! (query, latest, stats, counts) walks all kept readings under the read lock: up to
//! [`DEFAULT_CAPACITY`] rows, milliseconds per read, during which writers wait. Fine for
//! tests and benchmarks (the ingest path keeps no per-reading bookkeeping for reads); a
//! dashboard polling a long benchmark run should read a SQLite store instead.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use rustc_hash::FxHashMap;

use super::encoding::{encode_fields, write_stored_series_key};
use super::read::{BoxFuture, ReadStore, StoreReader};
use super::{Conflict, Counts, Query, Row, SensorStats, Store, StoreError, StoredReading, Written};
use crate::protocol::FieldValue;

/// Readings kept by [`MemoryStore::default`].
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// A series, stored once.
#[derive(Debug)]
struct Series {
    measurement: String,
    sensor: String,
    /// Sorted by (key, value).
    tags: Vec<(String, String)>,
}

/// A reading without its series' strings.
#[derive(Debug)]
struct MemRow {
    series: u32,
    timestamp_ns: i64,
    received_ns: i64,
    fields: Vec<(String, FieldValue)>,
}

#[derive(Debug)]
struct Data {
    capacity: usize,
    /// Series key → index in `series`.
    series_ids: FxHashMap<String, u32>,
    series: Vec<Series>,
    /// The most recent readings, oldest first.
    rows: VecDeque<MemRow>,
    /// (series, timestamp) of every kept reading, the deduplication identity, with the
    /// reading's place: `rows[seq - evicted]` (so a repeat can compare fields).
    seen: FxHashMap<(u32, i64), u64>,
    /// Readings pushed out of `rows` so far (the oldest first).
    evicted: u64,
}

/// The write side; [`MemoryStore::reader`] gives the read side of the same data.
#[derive(Debug)]
pub struct MemoryStore {
    data: Arc<RwLock<Data>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_capacity(DEFAULT_CAPACITY)
    }
}

impl MemoryStore {
    /// A store keeping at most `capacity` readings.
    pub fn with_capacity(capacity: usize) -> Self {
        MemoryStore {
            data: Arc::new(RwLock::new(Data {
                capacity: capacity.max(1),
                series_ids: FxHashMap::default(),
                series: Vec::new(),
                rows: VecDeque::new(),
                seen: FxHashMap::default(),
                evicted: 0,
            })),
        }
    }

    /// A reader of this store's data (it sees every committed batch at once).
    pub fn reader(&self) -> StoreReader {
        StoreReader::new(MemoryReader {
            data: Arc::clone(&self.data),
        })
    }

    /// How many readings are stored.
    pub fn len(&self) -> usize {
        read(&self.data).rows.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A panic while holding the lock leaves consistent data (every write is one batch whose
/// rows are pushed one by one, each complete), so a poisoned lock is still used.
fn read(data: &RwLock<Data>) -> RwLockReadGuard<'_, Data> {
    data.read().unwrap_or_else(PoisonError::into_inner)
}

impl Store for MemoryStore {
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<Written, StoreError> {
        let mut data = self.data.write().unwrap_or_else(PoisonError::into_inner);
        data.write_batch(batch)
    }

    fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Data {
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<Written, StoreError> {
        let mut written = Written::default();
        let mut key = String::new();
        let mut pairs = Vec::new();
        for (index, stored) in batch.iter().enumerate() {
            write_stored_series_key(&mut key, &mut pairs, stored);
            let series = match self.series_ids.get(key.as_str()) {
                Some(&id) => id,
                None => {
                    let id = u32::try_from(self.series.len()).map_err(|_| {
                        StoreError::Corrupt("memory store: more than 2^32 series".into())
                    })?;
                    let mut tags = stored.reading.tags.clone();
                    tags.sort_unstable();
                    self.series.push(Series {
                        measurement: stored.reading.measurement.clone(),
                        sensor: stored.sensor.clone(),
                        tags,
                    });
                    self.series_ids.insert(key.clone(), id);
                    id
                }
            };
            let ts = stored.timestamp_ns();
            if let Some(&seq) = self.seen.get(&(series, ts)) {
                written.repeat(index, self.conflict(seq, stored));
                continue;
            }
            if self.rows.len() >= self.capacity {
                if let Some(oldest) = self.rows.pop_front() {
                    self.seen.remove(&(oldest.series, oldest.timestamp_ns));
                    self.evicted += 1;
                }
            }
            let seq = self.evicted + self.rows.len() as u64;
            self.seen.insert((series, ts), seq);
            self.rows.push_back(MemRow {
                series,
                timestamp_ns: ts,
                received_ns: stored.received_ns,
                fields: stored.reading.fields.clone(),
            });
            written.outcome.inserted += 1;
        }
        Ok(written)
    }

    /// `stored` repeats the kept reading `seq`: `None` if their fields encode the same (a
    /// duplicate), else the conflict. Compared as encoded text, as SQLite does, so both
    /// stores agree (e.g. `-0.0` is not `0.0`, NaN equals NaN).
    fn conflict(&self, seq: u64, stored: &StoredReading) -> Option<Box<Conflict>> {
        // `seen` holds kept readings only, so the row is there.
        let kept = seq
            .checked_sub(self.evicted)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| self.rows.get(at))?;
        let (mut a, mut b) = (String::new(), String::new());
        encode_fields(&mut a, &kept.fields);
        encode_fields(&mut b, &stored.reading.fields);
        (a != b).then(|| {
            Box::new(Conflict {
                kept: kept.fields.clone(),
                refused: stored.clone(),
            })
        })
    }

    fn sensor_of(&self, row: &MemRow) -> &str {
        &self.series[row.series as usize].sensor
    }

    fn row(&self, row: &MemRow) -> Row {
        let series = &self.series[row.series as usize];
        Row {
            measurement: series.measurement.clone(),
            sensor: series.sensor.clone(),
            tags: series.tags.clone(),
            fields: row.fields.clone(),
            timestamp_ns: row.timestamp_ns,
            received_ns: row.received_ns,
        }
    }

    fn query(&self, query: &Query) -> Vec<Row> {
        let mut matching: Vec<&MemRow> = self
            .rows
            .iter()
            .filter(|row| {
                let series = &self.series[row.series as usize];
                query.sensor.as_ref().is_none_or(|s| &series.sensor == s)
                    && query
                        .measurement
                        .as_ref()
                        .is_none_or(|m| &series.measurement == m)
                    && query.since_ns.is_none_or(|since| row.timestamp_ns >= since)
                    && query.until_ns.is_none_or(|until| row.timestamp_ns < until)
            })
            .collect();
        // Equal timestamps in series creation order, as in every store (one row per series
        // and timestamp, so the order is total).
        matching.sort_by_key(|row| (row.timestamp_ns, row.series));
        if query.newest_first {
            matching.reverse();
        }
        let limit = query.limit.map_or(usize::MAX, |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX)
        });
        matching
            .into_iter()
            .take(limit)
            .map(|row| self.row(row))
            .collect()
    }

    /// Per sensor: (readings, first ts, latest row), sorted by sensor. Latest = greatest
    /// (timestamp, received, series id), the rule of [`ReadStore::latest`].
    fn per_sensor(&self) -> BTreeMap<&str, (u64, i64, &MemRow)> {
        let mut by_sensor: BTreeMap<&str, (u64, i64, &MemRow)> = BTreeMap::new();
        for row in &self.rows {
            let entry = by_sensor
                .entry(self.sensor_of(row))
                .or_insert((0, row.timestamp_ns, row));
            entry.0 += 1;
            entry.1 = entry.1.min(row.timestamp_ns);
            let rank = |r: &MemRow| (r.timestamp_ns, r.received_ns, r.series);
            if rank(row) > rank(entry.2) {
                entry.2 = row;
            }
        }
        by_sensor
    }
}

/// The read side of a [`MemoryStore`]: reads the shared data under the read lock.
#[derive(Debug)]
struct MemoryReader {
    data: Arc<RwLock<Data>>,
}

impl ReadStore for MemoryReader {
    fn query(&self, query: Query) -> BoxFuture<'_, Result<Vec<Row>, StoreError>> {
        let rows = read(&self.data).query(&query);
        Box::pin(std::future::ready(Ok(rows)))
    }

    fn latest(&self) -> BoxFuture<'_, Result<Vec<Row>, StoreError>> {
        let data = read(&self.data);
        let rows = data
            .per_sensor()
            .into_values()
            .map(|(_, _, latest)| data.row(latest))
            .collect();
        Box::pin(std::future::ready(Ok(rows)))
    }

    fn sensor_stats(&self) -> BoxFuture<'_, Result<Vec<SensorStats>, StoreError>> {
        let data = read(&self.data);
        let stats = data
            .per_sensor()
            .into_iter()
            .map(|(sensor, (readings, first_ns, latest))| SensorStats {
                sensor: sensor.to_string(),
                readings,
                first_ns,
                last_ns: latest.timestamp_ns,
                last_fields: latest.fields.clone(),
            })
            .collect();
        Box::pin(std::future::ready(Ok(stats)))
    }

    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>> {
        let data = read(&self.data);
        let per_sensor: Vec<(String, u64)> = data
            .per_sensor()
            .into_iter()
            .map(|(sensor, (readings, _, _))| (sensor.to_string(), readings))
            .collect();
        let counts = Counts {
            total: per_sensor.iter().map(|(_, n)| n).sum(),
            per_sensor,
        };
        Box::pin(std::future::ready(Ok(counts)))
    }
}

#[cfg(test)]
mod tests {
    //! What only the memory store has: its capacity. Behaviour shared with every store is
    //! in the conformance suite.

    use super::*;
    use crate::protocol::FieldValue;
    use crate::store::testing::{block_on, reading};

    #[test]
    fn oldest_readings_are_forgotten_beyond_the_capacity() {
        let mut store = MemoryStore::with_capacity(2);
        let reader = store.reader();
        for ts in 1..=3 {
            store
                .write_batch(&[reading("m", &[], vec![("v", FieldValue::Float(1.0))], ts)])
                .expect("write");
        }
        let kept: Vec<i64> = block_on(reader.query(&Query::default()))
            .expect("query")
            .iter()
            .map(|r| r.timestamp_ns)
            .collect();
        assert_eq!(kept, vec![2, 3]);
        // Forgotten entirely: storing it again is not a duplicate.
        let again = store
            .write_batch(&[reading("m", &[], vec![("v", FieldValue::Float(1.0))], 1)])
            .expect("write");
        assert_eq!(again.outcome.inserted, 1);
        assert_eq!(store.len(), 2);
    }
}
