//! In-memory store: for tests and benchmarks; lost at exit.
//!
//! Same semantics as every store (the conformance suite checks it): one series per series
//! key ([`super::encoding`]), a reading whose series and timestamp are already stored is a
//! duplicate, tags come back sorted. It keeps the most recent [`DEFAULT_CAPACITY`] readings
//! (the oldest are forgotten, deduplication included) so that a benchmark running at
//! millions of readings per second does not exhaust memory.
//!
//! The ingest path is built for what sensors send, one series at a time in timestamp order,
//! without a quadratic case for anything else: each series keeps its readings' timestamps
//! (an ordered deque, plus an ordered map for late ones), so a new reading costs no hash
//! lookup and an eviction no cache miss in a global table; a reading of the previous
//! reading's series skips building its series key; field names are kept once per set of
//! names, so a one-field reading is kept without an allocation of its own.
//!
//! The data sit behind one `RwLock` shared by the write side ([`MemoryStore`], written
//! inline by the submitting tasks) and the read side ([`MemoryStore::reader`]). Every read
//! (query, latest, stats, counts) walks all kept readings under the read lock: up to
//! [`DEFAULT_CAPACITY`] rows, milliseconds per read, during which writers wait. Fine for
//! tests and benchmarks (the ingest path keeps no per-reading bookkeeping for reads); a
//! dashboard polling a long benchmark run should read a SQLite store instead.

use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet};

use super::encoding::{encode_fields, write_stored_series_key};
use super::read::{BoxFuture, ReadStore, StoreReader};
use super::{Conflict, Counts, Query, Row, SensorStats, Store, StoreError, StoredReading, Written};
use crate::protocol::FieldValue;

/// Readings kept by [`MemoryStore::default`].
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// A series, stored once, with the timestamps of its kept readings (the deduplication
/// identity is (series, timestamp)).
///
/// Kept compact: at 10 000 idle sensors, each with its own series, a series costs as much
/// as its connection's task (boxed strings have no capacity word, late readings are rare,
/// the measurement is shared, the sensor name is not held twice).
#[derive(Debug)]
struct Series {
    /// Interned: every series of a measurement shares its name.
    measurement: Arc<str>,
    sensor: SensorName,
    /// Sorted by (key, value).
    tags: Box<[(Box<str>, Box<str>)]>,
    /// (timestamp, seq) of kept readings that arrived in timestamp order: ascending in
    /// both, so a reading newer than the last is new without a lookup, and eviction (always
    /// of the oldest seq) pops the front. Sensors send in order: nearly every reading is
    /// here, at O(1) per insert and eviction and 16 bytes each.
    in_order: VecDeque<(i64, u64)>,
    /// Timestamp → seq of kept readings that arrived at or before `in_order`'s last
    /// timestamp (late, replayed or hostile): O(log n) each, so no order of timestamps
    /// makes the store quadratic.
    /// Boxed: an empty `BTreeMap` is 24 bytes in every series, a `None` here 8.
    #[allow(clippy::box_collection)]
    late: Option<Box<BTreeMap<i64, u64>>>,
    /// The layout of this series' last reading (checked against the names before use):
    /// its next reading most likely has the same fields.
    layout: Option<u32>,
}

/// Where a series keeps its sensor name.
#[derive(Debug)]
enum SensorName {
    /// The value of its tag at this index (a `sensor` tag: the usual case), not copied.
    Tag(u32),
    /// Its own copy (no `sensor` tag: the peer's address).
    Own(Box<str>),
}

impl Series {
    fn sensor(&self) -> &str {
        match &self.sensor {
            SensorName::Tag(at) => self.tags.get(*at as usize).map_or("", |(_, value)| value),
            SensorName::Own(name) => name,
        }
    }

    /// Whether this series has the series key of `measurement` and `pairs` (its tags with
    /// the sensor's, sorted, as [`super::encoding::series_tags`] makes them): the key is
    /// their escaped text, one to one, so the parts decide without writing the key.
    fn is(&self, measurement: &str, pairs: &[(&str, &str)]) -> bool {
        // An own sensor name is in the key only when no tag is named `sensor` (as
        // `series_tags` makes it).
        let own = match &self.sensor {
            SensorName::Own(name) if !self.tags.iter().any(|(k, _)| &**k == "sensor") => {
                Some(&**name)
            }
            _ => None,
        };
        if *self.measurement != *measurement
            || pairs.len() != self.tags.len() + usize::from(own.is_some())
        {
            return false;
        }
        // An own sensor name is then the one `sensor` pair; every other pair is the next
        // tag, both sides sorted alike.
        let mut tags = self.tags.iter();
        let each_pair_matches = pairs.iter().all(|&(key, value)| match own {
            Some(name) if key == "sensor" => value == name,
            _ => tags
                .next()
                .is_some_and(|(k, v)| **k == *key && **v == *value),
        });
        // Every tag compared too: were `sensor` pairs ever repeated (the line parser refuses
        // duplicate tags, but another input path might not), two of them could stand in for
        // the own name and leave a tag unchecked.
        each_pair_matches && tags.next().is_none()
    }

    /// The seq of this series' kept reading at `ts`, if any.
    fn find(&self, ts: i64) -> Option<u64> {
        match self.in_order.back() {
            // Newer than every in-order reading: only a late one can hold `ts`.
            Some(&(last, _)) if ts <= last => {
                if let Ok(at) = self.in_order.binary_search_by_key(&ts, |&(t, _)| t) {
                    return Some(self.in_order[at].1);
                }
            }
            _ => {}
        }
        self.late.as_ref()?.get(&ts).copied()
    }

    /// Keep a reading at `ts` (not held yet: see [`Series::find`]) as `seq`.
    fn keep(&mut self, ts: i64, seq: u64) {
        match self.in_order.back() {
            Some(&(last, _)) if ts <= last => {
                self.late.get_or_insert_default().insert(ts, seq);
            }
            _ => {
                // Room for one at first, then doubled (1, 2, 4, …; a deque's own growth
                // jumps to four): at 10 000 idle sensors the room a series holds beyond its
                // few readings is server memory per connection (issue 13).
                if self.in_order.len() == self.in_order.capacity() {
                    self.in_order.reserve_exact(self.in_order.capacity().max(1));
                }
                self.in_order.push_back((ts, seq));
            }
        }
    }

    /// Forget the kept reading (`ts`, `seq`), the store's oldest: if it is in `in_order`
    /// it is at the front (seqs ascend there, and every older seq is gone already).
    fn forget(&mut self, ts: i64, seq: u64) {
        if self.in_order.front() == Some(&(ts, seq)) {
            self.in_order.pop_front();
            if self.in_order.is_empty() {
                // A series that stopped sending gives its memory back.
                self.in_order = VecDeque::new();
            }
        } else if let Some(late) = &mut self.late {
            late.remove(&ts);
            if late.is_empty() {
                self.late = None;
            }
        }
    }

    /// Whether `stored` belongs to this series, told from its parts (cheaper than its key):
    /// the same measurement, tags (in this order) and sensor always make the same series
    /// key. `false` says nothing: the key decides.
    fn holds(&self, stored: &StoredReading) -> bool {
        *self.measurement == *stored.reading.measurement
            && self.sensor() == stored.sensor
            && self.tags.len() == stored.reading.tags.len()
            && self
                .tags
                .iter()
                .zip(&stored.reading.tags)
                .all(|((k, v), (key, value))| **k == **key && **v == **value)
    }
}

/// A reading without its series' strings nor its field names.
#[derive(Debug)]
struct MemRow {
    series: u32,
    /// Index in `Data::layouts`: the names of `values`.
    layout: u32,
    timestamp_ns: i64,
    received_ns: i64,
    values: Values,
}

/// A reading's field values, in its layout's order. One value (the usual sensor reading)
/// is kept without an allocation of its own.
#[derive(Debug)]
enum Values {
    One(FieldValue),
    Many(Box<[FieldValue]>),
}

impl Values {
    fn of(fields: &[(String, FieldValue)]) -> Self {
        match fields {
            [(_, value)] => Values::One(value.clone()),
            _ => Values::Many(fields.iter().map(|(_, value)| value.clone()).collect()),
        }
    }

    fn as_slice(&self) -> &[FieldValue] {
        match self {
            Values::One(value) => std::slice::from_ref(value),
            Values::Many(values) => values,
        }
    }
}

/// Field names in order, kept once for every kept reading that has them (a sensor sends
/// the same fields each time), and how many kept readings do: the last one's eviction
/// frees it, so names that keep changing cost no more than the readings holding them.
#[derive(Debug)]
struct Layout {
    names: Arc<[String]>,
    rows: u64,
}

/// Whether `fields` has exactly the names `names`, in order.
fn same_names(names: &[String], fields: &[(String, FieldValue)]) -> bool {
    names.len() == fields.len() && names.iter().zip(fields).all(|(a, (b, _))| a == b)
}

#[derive(Debug)]
struct Data {
    capacity: usize,
    /// Series key's hash → index in `series` of the first series with that hash (told
    /// from the others by [`Series::is`]): no copy of every key kept.
    series_ids: FxHashMap<u64, u32>,
    /// Series key → index, for a series whose key's hash an earlier series had (rare).
    colliding: FxHashMap<Box<str>, u32>,
    /// Every measurement's name, once.
    measurements: FxHashSet<Arc<str>>,
    series: Vec<Series>,
    /// The series of the last reading written: a batch is mostly one sensor's readings,
    /// which then skip building and hashing the series key.
    last_series: Option<u32>,
    /// Layout id → the layout, `None` for a free id (listed in `free_layouts`).
    layouts: Vec<Option<Layout>>,
    /// The names of every layout in `layouts` → its id.
    layout_ids: FxHashMap<Arc<[String]>, u32>,
    free_layouts: Vec<u32>,
    /// The most recent readings, oldest first: `rows[seq - evicted]` is reading `seq`.
    rows: VecDeque<MemRow>,
    /// Readings pushed out of `rows` so far (the oldest first).
    evicted: u64,
}

/// The write side; [`MemoryStore::reader`] gives the read side of the same data.
#[derive(Debug)]
pub struct MemoryStore {
    data: Arc<RwLock<Data>>,
    /// Kept across batches for the series keys looked up: a sender of one reading at a
    /// time would otherwise pay their allocations (and growth) on every reading. `pairs`
    /// is always empty between batches (its borrows are the batch's).
    key: String,
    pairs: Vec<(&'static str, &'static str)>,
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
                colliding: FxHashMap::default(),
                measurements: FxHashSet::default(),
                series: Vec::new(),
                last_series: None,
                layouts: Vec::new(),
                layout_ids: FxHashMap::default(),
                free_layouts: Vec::new(),
                rows: VecDeque::new(),
                evicted: 0,
            })),
            key: String::new(),
            pairs: Vec::new(),
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
        // The pair buffer's allocation is reused; its borrows are not (emptied, then
        // turned in place into a buffer of this batch's lifetime and back).
        let mut pairs: Vec<(&str, &str)> = std::mem::take(&mut self.pairs)
            .into_iter()
            .map(|_| ("", ""))
            .collect();
        let written = data.write_batch(batch, &mut self.key, &mut pairs);
        pairs.clear();
        self.pairs = pairs.into_iter().map(|_| ("", "")).collect();
        written
    }

    fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Data {
    /// Write `batch`; `key` and `pairs`: scratch for the series keys looked up.
    fn write_batch<'a>(
        &mut self,
        batch: &'a [StoredReading],
        key: &mut String,
        pairs: &mut Vec<(&'a str, &'a str)>,
    ) -> Result<Written, StoreError> {
        let mut written = Written::default();
        for (index, stored) in batch.iter().enumerate() {
            let series = match self.last_series {
                Some(id) if self.series[id as usize].holds(stored) => id,
                _ => self.series_id(stored, key, pairs)?,
            };
            self.last_series = Some(series);
            let ts = stored.timestamp_ns();
            if let Some(seq) = self.series[series as usize].find(ts) {
                written.repeat(index, self.conflict(seq, stored));
                continue;
            }
            // Evicted first: it may free the layout this reading then takes again.
            if self.rows.len() >= self.capacity {
                if let Some(oldest) = self.rows.pop_front() {
                    self.series[oldest.series as usize].forget(oldest.timestamp_ns, self.evicted);
                    self.release_layout(oldest.layout);
                    self.evicted += 1;
                }
            }
            let layout = self.take_layout(series, &stored.reading.fields)?;
            let seq = self.evicted + self.rows.len() as u64;
            self.series[series as usize].keep(ts, seq);
            self.rows.push_back(MemRow {
                series,
                layout,
                timestamp_ns: ts,
                received_ns: stored.received_ns,
                values: Values::of(&stored.reading.fields),
            });
            written.outcome.inserted += 1;
        }
        Ok(written)
    }

    /// The id of the series of `stored`, by its key (written into `key`), added if new.
    fn series_id<'a>(
        &mut self,
        stored: &'a StoredReading,
        key: &mut String,
        pairs: &mut Vec<(&'a str, &'a str)>,
    ) -> Result<u32, StoreError> {
        write_stored_series_key(key, pairs, stored);
        let hash = FxBuildHasher.hash_one(key.as_str());
        let first = self.series_ids.get(&hash).copied();
        let measurement = stored.reading.measurement.as_str();
        if let Some(id) = first.filter(|&id| self.series[id as usize].is(measurement, pairs)) {
            return Ok(id);
        }
        if let Some(&id) = self.colliding.get(key.as_str()) {
            return Ok(id);
        }
        let id = u32::try_from(self.series.len())
            .map_err(|_| StoreError::Corrupt("memory store: more than 2^32 series".into()))?;
        let mut tags: Box<[(Box<str>, Box<str>)]> = stored
            .reading
            .tags
            .iter()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        tags.sort_unstable();
        let sensor = match tags
            .iter()
            .position(|(k, v)| &**k == "sensor" && **v == *stored.sensor)
            .and_then(|at| u32::try_from(at).ok())
        {
            Some(at) => SensorName::Tag(at),
            None => SensorName::Own(stored.sensor.as_str().into()),
        };
        let measurement = match self.measurements.get(measurement) {
            Some(name) => Arc::clone(name),
            None => {
                let name: Arc<str> = measurement.into();
                self.measurements.insert(Arc::clone(&name));
                name
            }
        };
        self.series.push(Series {
            measurement,
            sensor,
            tags,
            in_order: VecDeque::new(),
            late: None,
            layout: None,
        });
        if first.is_some() {
            self.colliding.insert(key.as_str().into(), id);
        } else {
            self.series_ids.insert(hash, id);
        }
        Ok(id)
    }

    /// The layout of `fields` for one more kept reading of `series`: the series' last one
    /// when the names match (no lookup), else found or added by names.
    fn take_layout(
        &mut self,
        series: u32,
        fields: &[(String, FieldValue)],
    ) -> Result<u32, StoreError> {
        let last = self.series[series as usize].layout;
        let id = match last.and_then(|id| Some((id, self.layouts[id as usize].as_mut()?))) {
            Some((id, layout)) if same_names(&layout.names, fields) => {
                layout.rows += 1;
                return Ok(id);
            }
            _ => {
                let names: Vec<String> = fields.iter().map(|(name, _)| name.clone()).collect();
                match self.layout_ids.get(names.as_slice()) {
                    Some(&id) => id,
                    None => self.add_layout(names.into())?,
                }
            }
        };
        self.series[series as usize].layout = Some(id);
        if let Some(layout) = self.layouts[id as usize].as_mut() {
            layout.rows += 1;
        }
        Ok(id)
    }

    /// A new layout (with no readings yet) under a free id.
    fn add_layout(&mut self, names: Arc<[String]>) -> Result<u32, StoreError> {
        let layout = Some(Layout {
            names: Arc::clone(&names),
            rows: 0,
        });
        let id = match self.free_layouts.pop() {
            Some(id) => {
                self.layouts[id as usize] = layout;
                id
            }
            None => {
                let id = u32::try_from(self.layouts.len()).map_err(|_| {
                    StoreError::Corrupt("memory store: more than 2^32 field layouts".into())
                })?;
                self.layouts.push(layout);
                id
            }
        };
        self.layout_ids.insert(names, id);
        Ok(id)
    }

    /// One kept reading of layout `id` fewer; the last one frees it.
    fn release_layout(&mut self, id: u32) {
        let Some(slot) = self.layouts.get_mut(id as usize) else {
            return;
        };
        if let Some(layout) = slot {
            layout.rows -= 1;
            if layout.rows == 0 {
                self.layout_ids.remove(&*layout.names);
                *slot = None;
                self.free_layouts.push(id);
            }
        }
    }

    /// The fields of a kept reading, names and values.
    fn fields(&self, row: &MemRow) -> Vec<(String, FieldValue)> {
        // Every kept reading holds its layout, so it is there.
        let names = self.layouts[row.layout as usize]
            .as_ref()
            .map_or(&[][..], |layout| &layout.names[..]);
        names
            .iter()
            .cloned()
            .zip(row.values.as_slice().iter().cloned())
            .collect()
    }

    /// `stored` repeats the kept reading `seq`: `None` if their fields encode the same (a
    /// duplicate), else the conflict. Compared as encoded text, as SQLite does, so both
    /// stores agree (e.g. `-0.0` is not `0.0`, NaN equals NaN).
    fn conflict(&self, seq: u64, stored: &StoredReading) -> Option<Box<Conflict>> {
        // Series hold kept readings only, so the row is there.
        let kept = seq
            .checked_sub(self.evicted)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| self.rows.get(at))?;
        let kept = self.fields(kept);
        let (mut a, mut b) = (String::new(), String::new());
        encode_fields(&mut a, &kept);
        encode_fields(&mut b, &stored.reading.fields);
        (a != b).then(|| {
            Box::new(Conflict {
                kept,
                refused: stored.clone(),
            })
        })
    }

    fn sensor_of(&self, row: &MemRow) -> &str {
        self.series[row.series as usize].sensor()
    }

    fn row(&self, row: &MemRow) -> Row {
        let series = &self.series[row.series as usize];
        Row {
            measurement: series.measurement.to_string(),
            sensor: series.sensor().to_string(),
            tags: series
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: self.fields(row),
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
                query.sensor.as_ref().is_none_or(|s| series.sensor() == s)
                    && query
                        .measurement
                        .as_ref()
                        .is_none_or(|m| *series.measurement == **m)
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
                last_fields: data.fields(latest),
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
    fn a_series_is_its_key_only_with_every_tag_compared() {
        let series = Series {
            measurement: Arc::from("m"),
            sensor: SensorName::Own("x".into()),
            tags: vec![(Box::from("a"), Box::from("1"))].into_boxed_slice(),
            in_order: VecDeque::new(),
            late: None,
            layout: None,
        };
        // Its key: `m,a=1,sensor=x`.
        assert!(series.is("m", &[("a", "1"), ("sensor", "x")]));
        assert!(!series.is("m", &[("a", "2"), ("sensor", "x")]));
        assert!(!series.is("n", &[("a", "1"), ("sensor", "x")]));
        // Two `sensor` pairs (no input makes them today) must not stand in for `a=1`.
        assert!(!series.is("m", &[("sensor", "x"), ("sensor", "x")]));
    }

    /// A series holds room for its readings, not a deque's default four: one, then
    /// doubled. Each idle sensor of a fleet is its own series (issue 13: ≤ 2 KiB of server
    /// memory per idle connection), sending a reading now and then.
    #[test]
    fn a_series_room_for_in_order_readings_doubles_from_one() {
        let mut series = Series {
            measurement: Arc::from("m"),
            sensor: SensorName::Own("x".into()),
            tags: Box::default(),
            in_order: VecDeque::new(),
            late: None,
            layout: None,
        };
        let mut rooms = Vec::new();
        for ts in 1..=5 {
            series.keep(ts, ts as u64);
            rooms.push(series.in_order.capacity());
        }
        assert_eq!(rooms, vec![1, 2, 4, 4, 8]);
        assert_eq!(series.find(3), Some(3));
    }

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

    /// Late readings (at or before the series' newest) take the ordered map, in-order ones
    /// the deque; deduplication and eviction must agree across both, whatever the order.
    #[test]
    fn late_and_in_order_readings_dedup_and_evict_alike() {
        let mut store = MemoryStore::with_capacity(4);
        let reader = store.reader();
        let v = |x: f64| vec![("v", FieldValue::Float(x))];
        let write = |store: &mut MemoryStore, ts: i64, x: f64| {
            store
                .write_batch(&[reading("m", &[("sensor", "a")], v(x), ts)])
                .expect("write")
                .outcome
        };
        // 10 and 20 in order; 5 and 15 late.
        for ts in [10, 20, 5, 15] {
            assert_eq!(write(&mut store, ts, 1.0).inserted, 1, "{ts}");
        }
        for ts in [10, 20, 5, 15] {
            assert_eq!(write(&mut store, ts, 1.0).duplicates, 1, "{ts}");
            assert_eq!(write(&mut store, ts, 2.0).conflicts, 1, "{ts}");
        }
        // Full: each new reading evicts the oldest written (10, then 20, then 5).
        assert_eq!(write(&mut store, 30, 1.0).inserted, 1);
        assert_eq!(write(&mut store, 25, 1.0).inserted, 1);
        assert_eq!(write(&mut store, 1, 1.0).inserted, 1);
        let kept: Vec<i64> = block_on(reader.query(&Query::default()))
            .expect("query")
            .iter()
            .map(|r| r.timestamp_ns)
            .collect();
        assert_eq!(kept, vec![1, 15, 25, 30]);
        // The evicted are forgotten, the kept still deduplicate.
        for ts in [1, 15, 25, 30] {
            assert_eq!(write(&mut store, ts, 1.0).duplicates, 1, "{ts}");
        }
        assert_eq!(write(&mut store, 10, 1.0).inserted, 1);
        assert_eq!(store.len(), 4);
    }

    /// A batch alternating between series (the fast path keys on the previous reading's
    /// series) files each reading under its own series, tags in any order.
    #[test]
    fn readings_of_alternating_series_keep_their_series() {
        let mut store = MemoryStore::with_capacity(100);
        let reader = store.reader();
        let v = vec![("v", FieldValue::Int(1))];
        let batch = [
            reading("m", &[("sensor", "a"), ("room", "1")], v.clone(), 1),
            reading("m", &[("room", "1"), ("sensor", "a")], v.clone(), 1),
            reading("m", &[("sensor", "b")], v.clone(), 1),
            reading("m", &[("sensor", "a"), ("room", "1")], v.clone(), 2),
            reading("n", &[("sensor", "b")], v.clone(), 1),
        ];
        let written = store.write_batch(&batch).expect("write");
        assert_eq!(
            (written.outcome.inserted, written.outcome.duplicates),
            (4, 1)
        );
        assert_eq!(written.repeats[0].index, 1);
        let rows = block_on(reader.query(&Query::default())).expect("query");
        let series: Vec<(String, String, i64)> = rows
            .iter()
            .map(|r| (r.measurement.clone(), r.sensor.clone(), r.timestamp_ns))
            .collect();
        assert_eq!(
            series,
            vec![
                ("m".into(), "a".into(), 1),
                ("m".into(), "b".into(), 1),
                ("n".into(), "b".into(), 1),
                ("m".into(), "a".into(), 2),
            ]
        );
    }

    /// Series are found by their key's hash and told apart by their parts: a series whose
    /// key's hash another series already has is still its own (here the hash is made to
    /// collide), and a sensor name kept once reads back from its tag or its own copy.
    #[test]
    fn a_series_whose_key_hash_is_taken_is_still_its_own() {
        let mut store = MemoryStore::with_capacity(100);
        let reader = store.reader();
        let v = vec![("v", FieldValue::Int(1))];
        store
            .write_batch(&[reading("m", &[("sensor", "a")], v.clone(), 1)])
            .expect("write");
        // `b`'s key hashes to where `a` is.
        let (mut key, mut pairs) = (String::new(), Vec::new());
        let b = reading("m", &[("sensor", "b"), ("room", "1")], v.clone(), 1);
        write_stored_series_key(&mut key, &mut pairs, &b);
        let hash = FxBuildHasher.hash_one(key.as_str());
        store.data.write().expect("lock").series_ids.insert(hash, 0);
        for ts in 1..=2 {
            let written = store
                .write_batch(&[
                    reading("m", &[("room", "1"), ("sensor", "b")], v.clone(), ts),
                    reading("m", &[("sensor", "a")], v.clone(), ts),
                ])
                .expect("write");
            // ts 1: `b` is new, `a` a duplicate; ts 2: both new.
            assert_eq!(written.outcome.inserted, ts as u64, "{ts}");
        }
        let data = read(&store.data);
        assert_eq!(data.series.len(), 2);
        assert_eq!(data.colliding.len(), 1);
        assert_eq!(data.measurements.len(), 1, "the measurement is shared");
        drop(data);
        let mut ip = reading("m", &[("room", "2")], v, 1);
        ip.sensor = "10.0.0.1".into();
        store.write_batch(&[ip]).expect("write");
        type Tags = Vec<(String, String)>;
        let mut rows: Vec<(String, Tags, i64)> = block_on(reader.query(&Query::default()))
            .expect("query")
            .into_iter()
            .map(|r| (r.sensor, r.tags, r.timestamp_ns))
            .collect();
        rows.sort();
        let tags = |pairs: &[(&str, &str)]| -> Tags {
            pairs.iter().map(|&(k, v)| (k.into(), v.into())).collect()
        };
        assert_eq!(
            rows,
            vec![
                ("10.0.0.1".into(), tags(&[("room", "2")]), 1),
                ("a".into(), tags(&[("sensor", "a")]), 1),
                ("a".into(), tags(&[("sensor", "a")]), 2),
                ("b".into(), tags(&[("room", "1"), ("sensor", "b")]), 1),
                ("b".into(), tags(&[("room", "1"), ("sensor", "b")]), 2),
            ]
        );
    }

    /// Field names are kept once per layout and freed with their last reading: names that
    /// change, come back and are evicted must still read back as written.
    #[test]
    fn field_names_survive_changing_layouts_and_eviction() {
        let mut store = MemoryStore::with_capacity(3);
        let reader = store.reader();
        let f = |names: &[&'static str]| -> Vec<(&'static str, FieldValue)> {
            names.iter().map(|&n| (n, FieldValue::Int(1))).collect()
        };
        let layouts: [&[&str]; 6] = [&["a"], &["a", "b"], &["a"], &["c"], &["b", "a"], &[]];
        for (ts, names) in layouts.iter().enumerate() {
            let written = store
                .write_batch(&[reading("m", &[("sensor", "s")], f(names), ts as i64)])
                .expect("write");
            assert_eq!(written.outcome.inserted, 1);
        }
        let rows = block_on(reader.query(&Query::default())).expect("query");
        let names: Vec<Vec<String>> = rows
            .iter()
            .map(|r| r.fields.iter().map(|(n, _)| n.clone()).collect())
            .collect();
        assert_eq!(names, vec![vec!["c"], vec!["b", "a"], vec![]]);
        let data = read(&store.data);
        // "a" and "a,b" went with their last readings; their ids were reused.
        assert_eq!(data.layout_ids.len(), 3);
        assert_eq!(data.layouts.len(), 3, "{:?}", data.layouts);
        // A repeat compares against the kept names: same names, a duplicate; others, a
        // conflict that shows them.
        drop(data);
        let again = store
            .write_batch(&[
                reading("m", &[("sensor", "s")], f(&["b", "a"]), 4),
                reading("m", &[("sensor", "s")], f(&["a", "b"]), 4),
            ])
            .expect("write");
        assert_eq!((again.outcome.duplicates, again.outcome.conflicts), (1, 1));
        let conflict = again.repeats[1].conflict.as_ref().expect("a conflict");
        assert_eq!(
            conflict.kept,
            vec![
                ("b".to_string(), FieldValue::Int(1)),
                ("a".to_string(), FieldValue::Int(1))
            ]
        );
    }
}
