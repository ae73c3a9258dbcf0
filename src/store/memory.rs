//! In-memory store: for tests and benchmarks; lost at exit.
//!
//! Same semantics as the SQLite store: one series = measurement + tags (+ the sensor when
//! it is not a tag), a reading whose series and timestamp are already stored is a
//! duplicate, tags come back sorted. It keeps the most recent [`DEFAULT_CAPACITY`] readings
//! (the oldest are forgotten, deduplication included) so that a benchmark running at
//! millions of readings per second does not exhaust memory.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};

use super::sqlite::write_stored_series_key;
use super::{Query, Row, SensorStats, Store, StoreError, StoredReading, WriteOutcome};
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
pub struct MemoryStore {
    capacity: usize,
    /// Series key → index in `series`.
    series_ids: FxHashMap<String, u32>,
    series: Vec<Series>,
    /// The most recent readings, oldest first.
    rows: VecDeque<MemRow>,
    /// (series, timestamp) of every kept reading: the deduplication identity.
    seen: FxHashSet<(u32, i64)>,
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
            capacity: capacity.max(1),
            series_ids: FxHashMap::default(),
            series: Vec::new(),
            rows: VecDeque::new(),
            seen: FxHashSet::default(),
        }
    }

    /// How many readings are stored.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
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
}

impl Store for MemoryStore {
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<WriteOutcome, StoreError> {
        let mut outcome = WriteOutcome::default();
        let mut key = String::new();
        let mut pairs = Vec::new();
        for stored in batch {
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
            if !self.seen.insert((series, ts)) {
                outcome.duplicates += 1;
                continue;
            }
            if self.rows.len() >= self.capacity {
                if let Some(oldest) = self.rows.pop_front() {
                    self.seen.remove(&(oldest.series, oldest.timestamp_ns));
                }
            }
            self.rows.push_back(MemRow {
                series,
                timestamp_ns: ts,
                received_ns: stored.received_ns,
                fields: stored.reading.fields.clone(),
            });
            outcome.inserted += 1;
        }
        Ok(outcome)
    }

    fn query(&mut self, query: &Query) -> Result<Vec<Row>, StoreError> {
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
        // Stable: equal timestamps keep insertion order.
        matching.sort_by_key(|row| row.timestamp_ns);
        let limit = query.limit.map_or(usize::MAX, |limit| {
            usize::try_from(limit).unwrap_or(usize::MAX)
        });
        Ok(matching
            .into_iter()
            .take(limit)
            .map(|row| self.row(row))
            .collect())
    }

    fn sensor_stats(&mut self) -> Result<Vec<SensorStats>, StoreError> {
        let mut by_sensor: BTreeMap<&str, SensorStats> = BTreeMap::new();
        for row in &self.rows {
            let sensor = self.series[row.series as usize].sensor.as_str();
            let stats = by_sensor.entry(sensor).or_insert_with(|| SensorStats {
                sensor: sensor.to_string(),
                readings: 0,
                first_ns: row.timestamp_ns,
                last_ns: row.timestamp_ns,
                last_fields: row.fields.clone(),
            });
            stats.readings += 1;
            stats.first_ns = stats.first_ns.min(row.timestamp_ns);
            // `>=`: on equal timestamps the later insertion is the latest reading.
            if row.timestamp_ns >= stats.last_ns {
                stats.last_ns = row.timestamp_ns;
                stats.last_fields.clone_from(&row.fields);
            }
        }
        Ok(by_sensor.into_values().collect())
    }

    /// Memory only: written by the connection's own task, no thread hand-off.
    fn is_inline(&self) -> bool {
        true
    }

    fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FieldValue, Reading};

    fn reading(
        measurement: &str,
        sensor: &str,
        tags: &[(&str, &str)],
        ts: i64,
        v: f64,
    ) -> StoredReading {
        StoredReading {
            reading: Reading {
                measurement: measurement.into(),
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                fields: vec![("v".into(), FieldValue::Float(v))],
                timestamp_ns: Some(ts),
            },
            sensor: sensor.into(),
            received_ns: ts + 1,
        }
    }

    fn temp(sensor: &str, ts: i64, v: f64) -> StoredReading {
        reading("temp", sensor, &[("sensor", sensor)], ts, v)
    }

    #[test]
    fn oldest_readings_are_forgotten_beyond_the_capacity() {
        let mut store = MemoryStore::with_capacity(2);
        for ts in 1..=3 {
            store
                .write_batch(&[reading("m", "a", &[], ts, 1.0)])
                .unwrap();
        }
        let kept: Vec<i64> = store
            .query(&Query::default())
            .unwrap()
            .iter()
            .map(|r| r.timestamp_ns)
            .collect();
        assert_eq!(kept, vec![2, 3]);
        // Forgotten entirely: storing it again is not a duplicate.
        let again = store
            .write_batch(&[reading("m", "a", &[], 1, 1.0)])
            .unwrap();
        assert_eq!(again.inserted, 1);
    }

    #[test]
    fn dedup_by_series_and_timestamp() {
        let mut store = MemoryStore::default();
        let outcome = store
            .write_batch(&[temp("a", 1, 1.0), temp("a", 1, 2.0), temp("b", 1, 1.0)])
            .expect("write");
        assert_eq!(
            outcome,
            WriteOutcome {
                inserted: 2,
                duplicates: 1
            }
        );
        let outcome = store
            .write_batch(&[temp("a", 1, 3.0), temp("a", 2, 1.0)])
            .expect("write");
        assert_eq!(
            outcome,
            WriteOutcome {
                inserted: 1,
                duplicates: 1
            }
        );
        assert_eq!(store.len(), 3);
        // Different tag order, same series.
        let x = reading("m", "s", &[("sensor", "s"), ("a", "1")], 7, 0.0);
        let y = reading("m", "s", &[("a", "1"), ("sensor", "s")], 7, 0.0);
        assert_eq!(store.write_batch(&[x, y]).expect("write").duplicates, 1);
        // Untagged readings of two peers are two series.
        let p = reading("m", "10.0.0.1", &[], 7, 0.0);
        let q = reading("m", "10.0.0.2", &[], 7, 0.0);
        assert_eq!(store.write_batch(&[p, q]).expect("write").inserted, 2);
    }

    #[test]
    fn query_filters_order_and_limit() {
        let mut store = MemoryStore::default();
        store
            .write_batch(&[
                temp("b", 30, 1.0),
                temp("a", 10, 2.0),
                reading("hum", "a", &[("sensor", "a")], 20, 3.0),
                temp("a", 30, 4.0),
            ])
            .expect("write");
        let order = |rows: Vec<Row>| -> Vec<(String, i64)> {
            rows.into_iter()
                .map(|r| (r.sensor, r.timestamp_ns))
                .collect()
        };
        assert_eq!(
            order(store.query(&Query::default()).expect("query")),
            vec![
                ("a".into(), 10),
                ("a".into(), 20),
                ("b".into(), 30),
                ("a".into(), 30)
            ]
        );
        let q = Query {
            sensor: Some("a".into()),
            measurement: Some("temp".into()),
            ..Query::default()
        };
        assert_eq!(
            order(store.query(&q).expect("query")),
            vec![("a".into(), 10), ("a".into(), 30)]
        );
        let q = Query {
            since_ns: Some(20),
            until_ns: Some(30),
            ..Query::default()
        };
        assert_eq!(
            order(store.query(&q).expect("query")),
            vec![("a".into(), 20)]
        );
        let q = Query {
            limit: Some(1),
            ..Query::default()
        };
        assert_eq!(
            order(store.query(&q).expect("query")),
            vec![("a".into(), 10)]
        );
    }

    #[test]
    fn tags_come_back_sorted() {
        let mut store = MemoryStore::default();
        store
            .write_batch(&[reading("m", "s", &[("z", "1"), ("sensor", "s")], 1, 0.0)])
            .expect("write");
        let rows = store.query(&Query::default()).expect("query");
        assert_eq!(
            rows[0].tags,
            vec![("sensor".into(), "s".into()), ("z".into(), "1".into())]
        );
    }

    #[test]
    fn stats_per_sensor() {
        let mut store = MemoryStore::default();
        assert!(store.sensor_stats().expect("stats").is_empty());
        store
            .write_batch(&[
                temp("b", 5, 5.0),
                temp("a", 30, 3.0),
                temp("a", 10, 1.0),
                reading("hum", "a", &[("sensor", "a")], 20, 2.0),
            ])
            .expect("write");
        assert_eq!(
            store.sensor_stats().expect("stats"),
            vec![
                SensorStats {
                    sensor: "a".into(),
                    readings: 3,
                    first_ns: 10,
                    last_ns: 30,
                    last_fields: vec![("v".into(), FieldValue::Float(3.0))],
                },
                SensorStats {
                    sensor: "b".into(),
                    readings: 1,
                    first_ns: 5,
                    last_ns: 5,
                    last_fields: vec![("v".into(), FieldValue::Float(5.0))],
                },
            ]
        );
    }
}
