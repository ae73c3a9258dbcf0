//! In-memory store: for tests and benchmarks; lost at exit.
//!
//! Same semantics as the SQLite store: one series = measurement + tags (+ the sensor when
//! it is not a tag), a reading whose series and timestamp are already stored is a
//! duplicate, tags come back sorted.

use std::collections::{BTreeMap, HashSet};

use super::sqlite::stored_series_key;
use super::{Query, Row, SensorStats, Store, StoreError, StoredReading, WriteOutcome};

#[derive(Debug, Default)]
pub struct MemoryStore {
    /// Every stored reading, in insertion order.
    rows: Vec<Row>,
    /// (series key, timestamp) of every stored reading: the deduplication identity.
    seen: HashSet<(String, i64)>,
}

impl MemoryStore {
    /// How many readings are stored.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl Store for MemoryStore {
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<WriteOutcome, StoreError> {
        let mut outcome = WriteOutcome::default();
        for stored in batch {
            let ts = stored.timestamp_ns();
            if !self.seen.insert((stored_series_key(stored), ts)) {
                outcome.duplicates += 1;
                continue;
            }
            let mut tags = stored.reading.tags.clone();
            tags.sort_unstable();
            self.rows.push(Row {
                measurement: stored.reading.measurement.clone(),
                sensor: stored.sensor.clone(),
                tags,
                fields: stored.reading.fields.clone(),
                timestamp_ns: ts,
                received_ns: stored.received_ns,
            });
            outcome.inserted += 1;
        }
        Ok(outcome)
    }

    fn query(&mut self, query: &Query) -> Result<Vec<Row>, StoreError> {
        let mut matching: Vec<&Row> = self
            .rows
            .iter()
            .filter(|row| {
                query.sensor.as_ref().is_none_or(|s| &row.sensor == s)
                    && query
                        .measurement
                        .as_ref()
                        .is_none_or(|m| &row.measurement == m)
                    && query.since_ns.is_none_or(|since| row.timestamp_ns >= since)
                    && query.until_ns.is_none_or(|until| row.timestamp_ns < until)
            })
            .collect();
        // Stable: equal timestamps keep insertion order.
        matching.sort_by_key(|row| row.timestamp_ns);
        let limit = query
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        Ok(matching.into_iter().take(limit).cloned().collect())
    }

    fn sensor_stats(&mut self) -> Result<Vec<SensorStats>, StoreError> {
        let mut by_sensor: BTreeMap<&str, SensorStats> = BTreeMap::new();
        for row in &self.rows {
            let stats = by_sensor
                .entry(row.sensor.as_str())
                .or_insert_with(|| SensorStats {
                    sensor: row.sensor.clone(),
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
