//! Embedded SQLite store (WAL, schema migrations, deduplication by series and timestamp).
//!
//! Layout (schema v1):
//! - `series`: one row per series (measurement + tags + sensor), with its key. The writer
//!   caches key → id in memory, so the hot path touches this table only for new series.
//! - `readings`: `WITHOUT ROWID`, keyed by `(series_id, ts)`. The primary key is the
//!   exactly-once identity: a second reading of the same series at the same timestamp hits
//!   `ON CONFLICT DO NOTHING` and counts as a duplicate. Queries by sensor or time walk the
//!   series of the sensor (index `series_sensor`) and seek each series' time range in the
//!   primary key, so no extra index slows ingest.
//!
//! Fields are stored as a compact JSON array of `[name, type, value]` with type one of
//! `f`, `i`, `u`, `s`, `b`. Integers are JSON numbers (exact for all of i64 and u64); floats
//! are JSON strings holding Rust's shortest round-trip form (`"0.1"`, `"-1e300"`), because
//! serde_json's default float parser is not guaranteed to round-trip every value.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params_from_iter, Connection, OptionalExtension, TransactionBehavior};

use super::{FsyncPolicy, Query, Row, SensorStats, Store, StoreError, StoredReading, WriteOutcome};
use crate::protocol::FieldValue;

/// Schema migrations, applied in order; `PRAGMA user_version` = how many are applied.
/// Never edit a released entry: append a new one.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE series (
        id          INTEGER PRIMARY KEY,
        key         TEXT NOT NULL UNIQUE,
        measurement TEXT NOT NULL,
        sensor      TEXT NOT NULL,
        tags        TEXT NOT NULL -- JSON array of [key, value], sorted
    );
    CREATE INDEX series_sensor ON series(sensor, measurement);
    CREATE TABLE readings (
        series_id INTEGER NOT NULL, -- series.id
        ts        INTEGER NOT NULL, -- reading timestamp, ns since the epoch
        received  INTEGER NOT NULL, -- receive time, ns since the epoch
        fields    TEXT NOT NULL,    -- JSON array of [name, type, value]
        PRIMARY KEY (series_id, ts)
    ) WITHOUT ROWID;",
];

/// SQLite page cache, KiB.
const CACHE_KIB: i64 = 64 * 1024;

/// WAL pages between automatic checkpoints (4 KiB pages: 40 MiB).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// How long a writer waits for another process's lock (e.g. a concurrent migration).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const INSERT_READING: &str = "INSERT INTO readings (series_id, ts, received, fields) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";

#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// For error messages.
    path: PathBuf,
    /// Series key → `series.id`, only for series whose row is committed (so a rolled-back
    /// transaction can never leave a dangling id here).
    series: HashMap<String, i64>,
}

impl SqliteStore {
    pub fn open(path: &Path, fsync: FsyncPolicy) -> Result<Self, StoreError> {
        let wrap = |source| StoreError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // StoreError has no I/O variant: report it the way SQLite reports an unopenable file.
            std::fs::create_dir_all(parent).map_err(|err| {
                wrap(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("creating directory {}: {err}", parent.display())),
                ))
            })?;
        }
        let mut conn = Connection::open(path).map_err(wrap)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(wrap)?;
        // journal_mode answers with the mode it set; a failure to switch is not an error
        // for SQLite, and e.g. `:memory:` stays in memory mode, which is fine for us.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(wrap)?;
        // In WAL mode NORMAL syncs only at checkpoints: a commit survives a process crash
        // but not a power cut; FULL syncs the WAL at every commit.
        let synchronous = match fsync {
            FsyncPolicy::Always => "FULL",
            FsyncPolicy::Os => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(wrap)?;
        // Ingest touches the right edge of every series' B-tree: a larger page cache keeps
        // those pages in memory (the default is 2 MiB).
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(wrap)?;
        // Fewer, larger checkpoints: each one costs the writer thread an fsync of the
        // database file, so checkpointing every 1,000 pages (the default) taxes ingest.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(wrap)?;
        migrate(&mut conn, path)?;
        Ok(SqliteStore {
            conn,
            path: path.to_path_buf(),
            series: HashMap::new(),
        })
    }

    /// The schema version this build creates and understands.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }

    fn wrap(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

/// Bring the schema up to date, one transaction per migration. The version is re-read
/// under the write lock so two processes opening a new file at once don't both migrate.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let wrap = |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let known = MIGRATIONS.len() as i64;
    let check = |found: i64| {
        if found > known {
            Err(StoreError::SchemaTooNew {
                path: path.to_path_buf(),
                found,
                known,
            })
        } else {
            Ok(found)
        }
    };
    // Checked before taking the write lock, so a read-only look at a newer file fails fast.
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(wrap)?;
    if check(found)? == known {
        return Ok(());
    }
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(wrap)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(wrap)?;
        let version = check(version)?;
        if version == known {
            return tx.commit().map_err(wrap);
        }
        // A negative user_version was not written by us; refuse rather than guess.
        let index = usize::try_from(version).map_err(|_| {
            StoreError::Corrupt(format!(
                "{}: invalid schema version {version}",
                path.display()
            ))
        })?;
        tx.execute_batch(MIGRATIONS[index]).map_err(wrap)?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(wrap)?;
        tx.commit().map_err(wrap)?;
    }
}

/// The series key: `measurement,k1=v1,k2=v2`, tags sorted by (key, value), with line
/// protocol escaping (measurement: `,` and space; tag keys and values: `,`, `=` and space).
/// A backslash is escaped too, so that two different series never share a key.
pub fn series_key(measurement: &str, tags: &[(String, String)]) -> String {
    let mut pairs: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = String::new();
    write_series_key(&mut out, measurement, &mut pairs);
    out
}

/// [`write_stored_series_key`] into a new String.
#[cfg(test)]
pub(crate) fn stored_series_key(reading: &StoredReading) -> String {
    let mut out = String::new();
    let mut scratch = Vec::new();
    write_stored_series_key(&mut out, &mut scratch, reading);
    out
}

/// The identity of a stored reading's series: its measurement and tags, plus a `sensor`
/// tag holding [`StoredReading::sensor`] when the reading has none, so that readings of two
/// untagged sensors (told apart by their address) never collide. Written into reusable
/// buffers: this is the ingest hot path.
pub(crate) fn write_stored_series_key<'a>(
    out: &mut String,
    pairs: &mut Vec<(&'a str, &'a str)>,
    reading: &'a StoredReading,
) {
    pairs.clear();
    pairs.extend(
        reading
            .reading
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if reading.reading.tag("sensor").is_none() {
        pairs.push(("sensor", reading.sensor.as_str()));
    }
    out.clear();
    write_series_key(out, &reading.reading.measurement, pairs);
}

fn write_series_key(out: &mut String, measurement: &str, pairs: &mut [(&str, &str)]) {
    pairs.sort_unstable();
    push_escaped(out, measurement, &[',', ' ']);
    for (k, v) in pairs.iter() {
        out.push(',');
        push_escaped(out, k, &[',', '=', ' ']);
        out.push('=');
        push_escaped(out, v, &[',', '=', ' ']);
    }
}

fn push_escaped(out: &mut String, s: &str, special: &[char]) {
    for c in s.chars() {
        if c == '\\' || special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Append `s` as a JSON string.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                write!(out, "\\u{:04x}", u32::from(c)).expect("writing to a String cannot fail")
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Encode fields as `[[name,type,value],…]` (see the module docs).
pub(crate) fn encode_fields(out: &mut String, fields: &[(String, FieldValue)]) {
    out.clear();
    out.push('[');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('[');
        push_json_str(out, name);
        // ryu and itoa: the shortest round-trip forms, without `fmt` machinery (this runs
        // once per field on the ingest path). ryu writes `NaN`/`inf` for non-finite values,
        // which str::parse reads back.
        match value {
            FieldValue::Float(v) => {
                out.push_str(",\"f\",\"");
                out.push_str(ryu::Buffer::new().format(*v));
                out.push_str("\"]");
            }
            FieldValue::Int(v) => {
                out.push_str(",\"i\",");
                out.push_str(itoa::Buffer::new().format(*v));
                out.push(']');
            }
            FieldValue::UInt(v) => {
                out.push_str(",\"u\",");
                out.push_str(itoa::Buffer::new().format(*v));
                out.push(']');
            }
            FieldValue::Bool(v) => out.push_str(if *v { ",\"b\",true]" } else { ",\"b\",false]" }),
            FieldValue::Str(v) => {
                out.push_str(",\"s\",");
                push_json_str(out, v);
                out.push(']');
            }
        }
    }
    out.push(']');
}

/// Decode what [`encode_fields`] wrote.
pub(crate) fn decode_fields(text: &str) -> Result<Vec<(String, FieldValue)>, String> {
    let raw: Vec<(String, String, serde_json::Value)> =
        serde_json::from_str(text).map_err(|err| format!("fields {text:?}: {err}"))?;
    raw.into_iter()
        .map(|(name, kind, value)| {
            use serde_json::Value;
            let decoded = match (kind.as_str(), &value) {
                ("f", Value::String(s)) => s.parse::<f64>().ok().map(FieldValue::Float),
                ("i", Value::Number(n)) => n.as_i64().map(FieldValue::Int),
                ("u", Value::Number(n)) => n.as_u64().map(FieldValue::UInt),
                ("b", Value::Bool(b)) => Some(FieldValue::Bool(*b)),
                ("s", Value::String(s)) => Some(FieldValue::Str(s.clone())),
                _ => None,
            };
            decoded
                .map(|v| (name, v))
                .ok_or_else(|| format!("field {text:?}: bad value {value} for type {kind:?}"))
        })
        .collect()
}

fn encode_tags(tags: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = tags.iter().collect();
    sorted.sort_unstable();
    serde_json::to_string(&sorted).expect("a list of string pairs always serializes")
}

fn decode_tags(text: &str) -> Result<Vec<(String, String)>, String> {
    serde_json::from_str(text).map_err(|err| format!("tags {text:?}: {err}"))
}

impl Store for SqliteStore {
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<WriteOutcome, StoreError> {
        let path = &self.path;
        let wrap = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // One IMMEDIATE transaction: takes the write lock up front (no upgrade deadlock
        // with a concurrent reader-turned-writer) and makes the batch atomic.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(wrap)?;
        let mut outcome = WriteOutcome::default();
        // Series created in this transaction; merged into the cache only after commit.
        let mut new_series: HashMap<String, i64> = HashMap::new();
        {
            let mut key = String::new();
            let mut pairs = Vec::new();
            // (series, timestamp, index in batch): inserted in key order, so consecutive rows
            // land on the same B-tree leaf instead of hopping between series.
            let mut order: Vec<(i64, i64, usize)> = Vec::with_capacity(batch.len());
            for (index, stored) in batch.iter().enumerate() {
                write_stored_series_key(&mut key, &mut pairs, stored);
                let cached = self.series.get(&key).or_else(|| new_series.get(&key));
                let series_id = match cached {
                    Some(&id) => id,
                    None => {
                        let id = find_or_create_series(&tx, &key, stored).map_err(wrap)?;
                        new_series.insert(key.clone(), id);
                        id
                    }
                };
                order.push((series_id, stored.timestamp_ns(), index));
            }
            // Stable on equal keys: the first of two identical readings is the one stored.
            order.sort_by_key(|&(series, ts, _)| (series, ts));
            let mut insert = tx.prepare_cached(INSERT_READING).map_err(wrap)?;
            let mut fields = String::new();
            for (series_id, ts, index) in order {
                let stored = &batch[index];
                encode_fields(&mut fields, &stored.reading.fields);
                let changed = insert
                    .execute(rusqlite::params![series_id, ts, stored.received_ns, fields])
                    .map_err(wrap)?;
                if changed == 0 {
                    outcome.duplicates += 1;
                } else {
                    outcome.inserted += 1;
                }
            }
        }
        tx.commit().map_err(wrap)?;
        self.series.extend(new_series);
        Ok(outcome)
    }

    fn query(&mut self, query: &Query) -> Result<Vec<Row>, StoreError> {
        // CROSS JOIN makes SQLite loop over the (few) series and seek each one's time range
        // in the readings primary key, instead of scanning every reading for a time filter.
        let mut sql = String::from(
            "SELECT s.measurement, s.sensor, s.tags, r.fields, r.ts, r.received \
             FROM series s CROSS JOIN readings r ON r.series_id = s.id WHERE 1",
        );
        let mut params: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(sensor) = &query.sensor {
            params.push(sensor.clone().into());
            write!(sql, " AND s.sensor = ?{}", params.len())
                .expect("writing to a String cannot fail");
        }
        if let Some(measurement) = &query.measurement {
            params.push(measurement.clone().into());
            write!(sql, " AND s.measurement = ?{}", params.len())
                .expect("writing to a String cannot fail");
        }
        if let Some(since) = query.since_ns {
            params.push(since.into());
            write!(sql, " AND r.ts >= ?{}", params.len()).expect("writing to a String cannot fail");
        }
        if let Some(until) = query.until_ns {
            params.push(until.into());
            write!(sql, " AND r.ts < ?{}", params.len()).expect("writing to a String cannot fail");
        }
        sql.push_str(" ORDER BY r.ts, s.id");
        if let Some(limit) = query.limit {
            // A limit beyond i64::MAX is no limit in practice.
            params.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
            write!(sql, " LIMIT ?{}", params.len()).expect("writing to a String cannot fail");
        }

        let mut stmt = self.conn.prepare_cached(&sql).map_err(|e| self.wrap(e))?;
        let raw = stmt
            .query_map(params_from_iter(params), |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|source| StoreError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        raw.into_iter()
            .map(|(measurement, sensor, tags, fields, ts, received)| {
                Ok(Row {
                    measurement,
                    sensor,
                    tags: decode_tags(&tags).map_err(StoreError::Corrupt)?,
                    fields: decode_fields(&fields).map_err(StoreError::Corrupt)?,
                    timestamp_ns: ts,
                    received_ns: received,
                })
            })
            .collect()
    }

    fn sensor_stats(&mut self) -> Result<Vec<SensorStats>, StoreError> {
        // Aggregate per series first (walks the primary key in order, no sort), then per
        // sensor over the few series rows.
        let totals = {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT s.sensor, SUM(a.n), MIN(a.lo), MAX(a.hi) \
                     FROM (SELECT series_id, COUNT(*) AS n, MIN(ts) AS lo, MAX(ts) AS hi \
                           FROM readings GROUP BY series_id) a \
                     JOIN series s ON s.id = a.series_id \
                     GROUP BY s.sensor ORDER BY s.sensor",
                )
                .map_err(|e| self.wrap(e))?;
            stmt.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| self.wrap(e))?
        };
        let mut last = self
            .conn
            .prepare_cached(
                "SELECT r.fields FROM series s JOIN readings r ON r.series_id = s.id \
                 WHERE s.sensor = ?1 AND r.ts = ?2 \
                 ORDER BY r.received DESC, s.id DESC LIMIT 1",
            )
            .map_err(|e| self.wrap(e))?;
        let mut stats = Vec::with_capacity(totals.len());
        for (sensor, readings, first_ns, last_ns) in totals {
            let fields: Option<String> = last
                .query_row(rusqlite::params![sensor, last_ns], |row| row.get(0))
                .optional()
                .map_err(|source| StoreError::Sqlite {
                    path: self.path.clone(),
                    source,
                })?;
            let last_fields = match fields {
                Some(text) => decode_fields(&text).map_err(StoreError::Corrupt)?,
                None => Vec::new(),
            };
            stats.push(SensorStats {
                sensor,
                readings: u64::try_from(readings).unwrap_or(0),
                first_ns,
                last_ns,
                last_fields,
            });
        }
        Ok(stats)
    }

    fn close(&mut self) -> Result<(), StoreError> {
        // Best effort: folds the WAL into the main file so it is self-contained; failing
        // (e.g. a reader holds a snapshot) loses nothing, the WAL stays valid.
        if let Err(err) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(path = %self.path.display(), cause = %err, "wal checkpoint failed");
        }
        // The connection itself closes when the store is dropped.
        self.series.clear();
        Ok(())
    }
}

/// The id of the series `key`, inserting its row if it is new.
fn find_or_create_series(
    conn: &Connection,
    key: &str,
    stored: &StoredReading,
) -> rusqlite::Result<i64> {
    let found = conn
        .prepare_cached("SELECT id FROM series WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached(
        "INSERT INTO series (key, measurement, sensor, tags) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(rusqlite::params![
        key,
        stored.reading.measurement,
        stored.sensor,
        encode_tags(&stored.reading.tags)
    ])?;
    Ok(conn.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Reading;

    fn reading(
        measurement: &str,
        tags: &[(&str, &str)],
        fields: Vec<(&str, FieldValue)>,
        ts: i64,
    ) -> StoredReading {
        let tags: Vec<(String, String)> = tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sensor = tags
            .iter()
            .find(|(k, _)| k == "sensor")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "127.0.0.1".to_string());
        StoredReading {
            reading: Reading {
                measurement: measurement.to_string(),
                tags,
                fields: fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                timestamp_ns: Some(ts),
            },
            sensor,
            received_ns: ts + 1_000,
        }
    }

    fn temp(sensor: &str, ts: i64, value: f64) -> StoredReading {
        reading(
            "temp",
            &[("sensor", sensor)],
            vec![("value", FieldValue::Float(value))],
            ts,
        )
    }

    fn open_temp() -> (tempfile::TempDir, PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/dir/test.db");
        let store = SqliteStore::open(&path, FsyncPolicy::Always).expect("open");
        (dir, path, store)
    }

    fn all_fields() -> Vec<(&'static str, FieldValue)> {
        vec![
            ("f1", FieldValue::Float(0.1)),
            ("f2", FieldValue::Float(-1e300)),
            ("f3", FieldValue::Float(5e-324)),
            ("f4", FieldValue::Float(0.30000000000000004)),
            ("f5", FieldValue::Float(-0.0)),
            ("f6", FieldValue::Float(21.0)),
            ("imin", FieldValue::Int(i64::MIN)),
            ("imax", FieldValue::Int(i64::MAX)),
            ("umax", FieldValue::UInt(u64::MAX)),
            ("u0", FieldValue::UInt(0)),
            (
                "s",
                FieldValue::Str("a \"quoted\" \\ back, ünïcødé 🌡\n\t\u{1}".into()),
            ),
            ("empty", FieldValue::Str(String::new())),
            ("t", FieldValue::Bool(true)),
            ("f", FieldValue::Bool(false)),
            ("na\"me ,=", FieldValue::Int(1)),
        ]
    }

    #[test]
    fn series_key_sorts_and_escapes() {
        let tags = vec![
            ("z".to_string(), "1".to_string()),
            ("a b".to_string(), "x,y=z".to_string()),
            ("a".to_string(), "2".to_string()),
        ];
        assert_eq!(
            series_key("cpu load,x", &tags),
            r"cpu\ load\,x,a=2,a\ b=x\,y\=z,z=1"
        );
        assert_eq!(series_key("m", &[]), "m");
        // Without escaping the backslash these two would share the key `a\,k=v`.
        let kv = vec![("k".to_string(), "v".to_string())];
        assert_ne!(series_key("a\\", &kv), series_key("a,k=v", &[]));
    }

    #[test]
    fn stored_key_adds_sensor_only_when_untagged() {
        let tagged = temp("s1", 1, 1.0);
        assert_eq!(stored_series_key(&tagged), "temp,sensor=s1");
        let mut untagged = reading("temp", &[("room", "k")], vec![("v", FieldValue::Int(1))], 1);
        untagged.sensor = "10.0.0.1".into();
        assert_eq!(stored_series_key(&untagged), "temp,room=k,sensor=10.0.0.1");
    }

    #[test]
    fn fields_encoding_round_trips_exactly() {
        let fields: Vec<(String, FieldValue)> = all_fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .chain([
                ("nan".to_string(), FieldValue::Float(f64::NAN)),
                ("inf".to_string(), FieldValue::Float(f64::NEG_INFINITY)),
            ])
            .collect();
        let mut text = String::new();
        encode_fields(&mut text, &fields);
        let back = decode_fields(&text).expect("decodes");
        assert_eq!(back.len(), fields.len());
        for ((n1, v1), (n2, v2)) in fields.iter().zip(&back) {
            assert_eq!(n1, n2);
            match (v1, v2) {
                (FieldValue::Float(a), FieldValue::Float(b)) => {
                    assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()))
                }
                _ => assert_eq!(v1, v2),
            }
        }
        let mut small = String::new();
        encode_fields(
            &mut small,
            &[
                ("t".into(), FieldValue::Float(21.5)),
                ("n".into(), FieldValue::Int(-3)),
            ],
        );
        assert_eq!(small, r#"[["t","f","21.5"],["n","i",-3]]"#);
    }

    #[test]
    fn decode_rejects_mismatched_types() {
        assert!(decode_fields(r#"[["a","i","x"]]"#).is_err());
        assert!(decode_fields(r#"[["a","u",-1]]"#).is_err());
        assert!(decode_fields(r#"[["a","q",1]]"#).is_err());
        assert!(decode_fields("not json").is_err());
    }

    proptest::proptest! {
        #[test]
        fn floats_round_trip(bits in proptest::num::u64::ANY) {
            let v = f64::from_bits(bits);
            let mut text = String::new();
            encode_fields(&mut text, &[("v".into(), FieldValue::Float(v))]);
            let back = decode_fields(&text).expect("decodes");
            match back[0].1 {
                FieldValue::Float(b) => proptest::prop_assert!(
                    b.to_bits() == v.to_bits() || (v.is_nan() && b.is_nan())
                ),
                ref other => proptest::prop_assert!(false, "not a float: {other:?}"),
            }
        }
    }

    #[test]
    fn round_trip_all_field_types() {
        let (_dir, _path, mut store) = open_temp();
        let r = reading(
            "env",
            &[("sensor", "s1"), ("room", "kitchen")],
            all_fields(),
            1_700_000_000_123_456_789,
        );
        let outcome = store.write_batch(std::slice::from_ref(&r)).expect("write");
        assert_eq!(
            outcome,
            WriteOutcome {
                inserted: 1,
                duplicates: 0
            }
        );
        let rows = store.query(&Query::default()).expect("query");
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(row.measurement, "env");
        assert_eq!(row.sensor, "s1");
        // Tags come back sorted.
        assert_eq!(
            row.tags,
            vec![
                ("room".to_string(), "kitchen".to_string()),
                ("sensor".to_string(), "s1".to_string())
            ]
        );
        assert_eq!(row.timestamp_ns, 1_700_000_000_123_456_789);
        assert_eq!(row.received_ns, 1_700_000_000_123_457_789);
        // PartialEq on f64 treats -0.0 == 0.0; compare bits for floats.
        assert_eq!(row.fields.len(), r.reading.fields.len());
        for ((n1, v1), (n2, v2)) in r.reading.fields.iter().zip(&row.fields) {
            assert_eq!(n1, n2);
            match (v1, v2) {
                (FieldValue::Float(a), FieldValue::Float(b)) => {
                    assert_eq!(a.to_bits(), b.to_bits())
                }
                _ => assert_eq!(v1, v2),
            }
        }
    }

    #[test]
    fn dedup_by_series_and_timestamp() {
        let (_dir, _path, mut store) = open_temp();
        let a = temp("s1", 10, 1.0);
        let mut a_again = temp("s1", 10, 2.0);
        a_again.received_ns = 99;
        // Within one batch.
        let outcome = store
            .write_batch(&[a.clone(), a_again.clone()])
            .expect("write");
        assert_eq!(
            outcome,
            WriteOutcome {
                inserted: 1,
                duplicates: 1
            }
        );
        // Across batches; the first stored value wins.
        let outcome = store
            .write_batch(&[a_again, temp("s1", 11, 3.0)])
            .expect("write");
        assert_eq!(
            outcome,
            WriteOutcome {
                inserted: 1,
                duplicates: 1
            }
        );
        let rows = store.query(&Query::default()).expect("query");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].fields,
            vec![("value".to_string(), FieldValue::Float(1.0))]
        );
        // Another sensor at the same timestamp is another series.
        let outcome = store.write_batch(&[temp("s2", 10, 1.0)]).expect("write");
        assert_eq!(outcome.inserted, 1);
    }

    #[test]
    fn tag_order_does_not_change_the_series() {
        let (_dir, _path, mut store) = open_temp();
        let v = || vec![("v", FieldValue::Int(1))];
        let a = reading("m", &[("sensor", "s"), ("a", "1"), ("b", "2")], v(), 5);
        let b = reading("m", &[("b", "2"), ("sensor", "s"), ("a", "1")], v(), 5);
        store.write_batch(&[a]).expect("write");
        let outcome = store.write_batch(&[b]).expect("write");
        assert_eq!(outcome.duplicates, 1);
        let n: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM series", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1);
    }

    #[test]
    fn untagged_sensors_do_not_collide() {
        let (_dir, _path, mut store) = open_temp();
        let mut a = reading("m", &[], vec![("v", FieldValue::Int(1))], 5);
        a.sensor = "10.0.0.1".into();
        let mut b = a.clone();
        b.sensor = "10.0.0.2".into();
        let outcome = store.write_batch(&[a, b]).expect("write");
        assert_eq!(outcome.inserted, 2);
        let stats = store.sensor_stats().expect("stats");
        assert_eq!(stats.len(), 2);
        assert!(stats.iter().all(|s| s.readings == 1));
    }

    #[test]
    fn reopen_persists_and_migration_sets_version() {
        let (_dir, path, mut store) = open_temp();
        store
            .write_batch(&[temp("s1", 1, 1.0), temp("s1", 2, 2.0)])
            .expect("write");
        store.close().expect("close");
        drop(store);

        let mut store = SqliteStore::open(&path, FsyncPolicy::Os).expect("reopen");
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SqliteStore::schema_version());
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        assert_eq!(store.query(&Query::default()).expect("query").len(), 2);
        // The series cache starts empty after a reopen: dedup still goes through the table.
        let outcome = store
            .write_batch(&[temp("s1", 2, 2.0), temp("s1", 3, 3.0)])
            .expect("write");
        assert_eq!(
            outcome,
            WriteOutcome {
                inserted: 1,
                duplicates: 1
            }
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let (_dir, path, store) = open_temp();
        store
            .conn
            .pragma_update(None, "user_version", SqliteStore::schema_version() + 1)
            .expect("set version");
        drop(store);
        match SqliteStore::open(&path, FsyncPolicy::Always) {
            Err(StoreError::SchemaTooNew { found, known, .. }) => {
                assert_eq!(found, known + 1);
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    #[test]
    fn failed_transaction_leaves_no_cached_series() {
        let (_dir, _path, mut store) = open_temp();
        // Make the readings insert fail after the series row is created.
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER no_ts_zero BEFORE INSERT ON readings WHEN NEW.ts = 0 \
                 BEGIN SELECT RAISE(ABORT, 'ts zero'); END;",
            )
            .expect("trigger");
        let err = store.write_batch(&[temp("new", 1, 1.0), temp("new", 0, 1.0)]);
        assert!(matches!(err, Err(StoreError::Sqlite { .. })), "{err:?}");
        assert!(store.series.is_empty());
        let outcome = store.write_batch(&[temp("new", 1, 1.0)]).expect("write");
        assert_eq!(outcome.inserted, 1);
        let rows = store.query(&Query::default()).expect("query");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].sensor, "new");
    }

    #[test]
    fn query_filters_and_order() {
        let (_dir, _path, mut store) = open_temp();
        let hum = |sensor: &str, ts: i64| {
            reading(
                "hum",
                &[("sensor", sensor)],
                vec![("h", FieldValue::UInt(40))],
                ts,
            )
        };
        store
            .write_batch(&[
                temp("b", 30, 3.0),
                temp("a", 10, 1.0),
                hum("a", 20),
                temp("a", 30, 3.5),
                hum("b", 40),
            ])
            .expect("write");
        let mut ts = |q: Query| -> Vec<(String, i64)> {
            store
                .query(&q)
                .expect("query")
                .into_iter()
                .map(|r| (r.sensor, r.timestamp_ns))
                .collect()
        };
        let all = ts(Query::default());
        // Ordered by time, then series (b's series was created first).
        assert_eq!(
            all,
            vec![
                ("a".into(), 10),
                ("a".into(), 20),
                ("b".into(), 30),
                ("a".into(), 30),
                ("b".into(), 40)
            ]
        );
        let only_a = Query {
            sensor: Some("a".into()),
            ..Query::default()
        };
        assert_eq!(
            store.query(&only_a).expect("query").len(),
            3,
            "sensor filter"
        );
        let q = Query {
            measurement: Some("temp".into()),
            since_ns: Some(10),
            until_ns: Some(30),
            ..Query::default()
        };
        let rows = store.query(&q).expect("query");
        assert_eq!(rows.len(), 1, "since inclusive, until exclusive");
        assert_eq!(rows[0].timestamp_ns, 10);
        let q = Query {
            since_ns: Some(20),
            limit: Some(2),
            ..Query::default()
        };
        let rows = store.query(&q).expect("query");
        assert_eq!(
            rows.iter().map(|r| r.timestamp_ns).collect::<Vec<_>>(),
            vec![20, 30]
        );
        let q = Query {
            sensor: Some("nobody".into()),
            ..Query::default()
        };
        assert!(store.query(&q).expect("query").is_empty());
    }

    #[test]
    fn stats_per_sensor() {
        let (_dir, _path, mut store) = open_temp();
        assert!(store.sensor_stats().expect("stats").is_empty());
        store
            .write_batch(&[
                temp("b", 5, 5.0),
                temp("a", 30, 3.0),
                temp("a", 10, 1.0),
                reading(
                    "hum",
                    &[("sensor", "a")],
                    vec![("h", FieldValue::Int(40))],
                    20,
                ),
            ])
            .expect("write");
        let stats = store.sensor_stats().expect("stats");
        assert_eq!(
            stats,
            vec![
                SensorStats {
                    sensor: "a".into(),
                    readings: 3,
                    first_ns: 10,
                    last_ns: 30,
                    last_fields: vec![("value".into(), FieldValue::Float(3.0))],
                },
                SensorStats {
                    sensor: "b".into(),
                    readings: 1,
                    first_ns: 5,
                    last_ns: 5,
                    last_fields: vec![("value".into(), FieldValue::Float(5.0))],
                },
            ]
        );
    }
}
