//! Embedded SQLite store (WAL, schema migrations, deduplication by series and timestamp).
//!
//! Layout (schema v1):
//! - `series`: one row per series (measurement + tags + sensor), with its key
//!   ([`super::encoding`]). The writer caches key → id in memory, so the hot path touches
//!   this table only for new series.
//! - `readings`: `WITHOUT ROWID`, keyed by `(series_id, ts)`. The primary key is the
//!   exactly-once identity: a second reading of the same series at the same timestamp hits
//!   `ON CONFLICT DO NOTHING` and counts as a duplicate. Queries by sensor or time walk the
//!   series of the sensor (index `series_sensor`) and seek each series' time range in the
//!   primary key, so no extra index slows ingest.
//!
//! Fields and tags are stored as the JSON texts of [`super::encoding`].
//!
//! [`SqliteStore`] is the write side, driven by the one group-commit writer thread.
//! [`SqliteReader`] is the read side: its own read-only connections (WAL lets them read
//! a committed snapshot beside the writer), used on `spawn_blocking`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{
    params_from_iter, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior,
};

use super::encoding::{
    decode_fields, decode_tags, encode_fields, encode_tags, write_stored_series_key,
};
use super::read::{BoxFuture, ReadStore};
use super::{
    Counts, FsyncPolicy, Query, Row, SensorStats, Store, StoreError, StoredReading, WriteOutcome,
};

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

/// Idle read-only connections a [`SqliteReader`] keeps for the next query.
const MAX_IDLE_READERS: usize = 4;

/// A rusqlite error as a [`StoreError`] with its context. Busy or locked means another
/// connection holds the lock longer than [`BUSY_TIMEOUT`]: transient.
fn sqlite_error(location: &str, operation: &'static str, err: rusqlite::Error) -> StoreError {
    let transient = matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    let (location, detail) = (location.to_string(), err.to_string());
    if transient {
        StoreError::Unavailable {
            location,
            operation,
            detail,
        }
    } else {
        StoreError::Backend {
            location,
            operation,
            detail,
        }
    }
}

/// The write side: owned by the group-commit writer thread.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// The path, for error messages.
    location: String,
    /// Series key → `series.id`, only for series whose row is committed (so a rolled-back
    /// transaction can never leave a dangling id here).
    series: HashMap<String, i64>,
}

impl SqliteStore {
    /// Open (creating directories, the file and the schema as needed) for writing.
    ///
    /// # Errors
    /// The file cannot be opened or migrated, or its schema is newer than this build.
    pub fn open(path: &Path, fsync: FsyncPolicy) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let fail = |operation| {
            let location = location.clone();
            move |err| sqlite_error(&location, operation, err)
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| StoreError::Backend {
                location: location.clone(),
                operation: "create directory",
                detail: format!("{}: {err}", parent.display()),
            })?;
        }
        let mut conn = Connection::open(path).map_err(fail("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail("open"))?;
        // journal_mode answers with the mode it set; a failure to switch is not an error
        // for SQLite, and e.g. `:memory:` stays in memory mode, which is fine for us.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(fail("set journal mode"))?;
        // In WAL mode NORMAL syncs only at checkpoints: a commit survives a process crash
        // but not a power cut; FULL syncs the WAL at every commit.
        let synchronous = match fsync {
            FsyncPolicy::Always => "FULL",
            FsyncPolicy::Os => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(fail("set synchronous"))?;
        // Ingest touches the right edge of every series' B-tree: a larger page cache keeps
        // those pages in memory (the default is 2 MiB).
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .map_err(fail("set cache size"))?;
        // Fewer, larger checkpoints: each one costs the writer thread an fsync of the
        // database file, so checkpointing every 1,000 pages (the default) taxes ingest.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(fail("set wal autocheckpoint"))?;
        migrate(&mut conn, &location)?;
        Ok(SqliteStore {
            conn,
            location,
            series: HashMap::new(),
        })
    }

    /// The schema version this build creates and understands.
    pub fn schema_version() -> i64 {
        MIGRATIONS.len() as i64
    }
}

/// Compare a file's schema version with this build's.
fn check_version(location: &str, found: i64) -> Result<i64, StoreError> {
    let known = SqliteStore::schema_version();
    if found > known {
        Err(StoreError::SchemaTooNew {
            location: location.to_string(),
            found,
            known,
        })
    } else {
        Ok(found)
    }
}

/// Bring the schema up to date, one transaction per migration. The version is re-read
/// under the write lock so two processes opening a new file at once don't both migrate.
fn migrate(conn: &mut Connection, location: &str) -> Result<(), StoreError> {
    let fail = |operation| move |err| sqlite_error(location, operation, err);
    let known = SqliteStore::schema_version();
    // Checked before taking the write lock, so a read-only look at a newer file fails fast.
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(fail("read schema version"))?;
    if check_version(location, found)? == known {
        return Ok(());
    }
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail("begin migration"))?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(fail("read schema version"))?;
        let version = check_version(location, version)?;
        if version == known {
            return tx.commit().map_err(fail("commit migration"));
        }
        // A negative user_version was not written by us; refuse rather than guess.
        let index = usize::try_from(version).map_err(|_| {
            StoreError::Corrupt(format!("{location}: invalid schema version {version}"))
        })?;
        tx.execute_batch(MIGRATIONS[index])
            .map_err(fail("migrate"))?;
        tx.pragma_update(None, "user_version", version + 1)
            .map_err(fail("set schema version"))?;
        tx.commit().map_err(fail("commit migration"))?;
    }
}

impl Store for SqliteStore {
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<WriteOutcome, StoreError> {
        let location = self.location.as_str();
        let fail = |operation| move |err| sqlite_error(location, operation, err);
        // One IMMEDIATE transaction: takes the write lock up front (no upgrade deadlock
        // with a concurrent reader-turned-writer) and makes the batch atomic.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail("begin"))?;
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
                        let id = find_or_create_series(&tx, &key, stored)
                            .map_err(fail("insert series"))?;
                        new_series.insert(key.clone(), id);
                        id
                    }
                };
                order.push((series_id, stored.timestamp_ns(), index));
            }
            // Stable on equal keys: the first of two identical readings is the one stored.
            order.sort_by_key(|&(series, ts, _)| (series, ts));
            let mut insert = tx
                .prepare_cached(INSERT_READING)
                .map_err(fail("prepare insert"))?;
            let mut fields = String::new();
            for (series_id, ts, index) in order {
                let stored = &batch[index];
                encode_fields(&mut fields, &stored.reading.fields);
                let changed = insert
                    .execute(rusqlite::params![series_id, ts, stored.received_ns, fields])
                    .map_err(fail("insert reading"))?;
                if changed == 0 {
                    outcome.duplicates += 1;
                } else {
                    outcome.inserted += 1;
                }
            }
        }
        tx.commit().map_err(fail("commit"))?;
        self.series.extend(new_series);
        Ok(outcome)
    }

    fn close(&mut self) -> Result<(), StoreError> {
        // Best effort: folds the WAL into the main file so it is self-contained; failing
        // (e.g. a reader holds a snapshot) loses nothing, the WAL stays valid.
        if let Err(err) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(path = %self.location, cause = %err, "wal checkpoint failed");
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

/// The read side: read-only connections of its own, never the writer's. Cheap to share
/// (an `Arc` inside); each read runs on `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct SqliteReader {
    pool: Arc<ReaderPool>,
}

#[derive(Debug)]
struct ReaderPool {
    path: PathBuf,
    location: String,
    /// Connections not in use, reused so each read does not reopen the file.
    idle: Mutex<Vec<Connection>>,
}

impl SqliteReader {
    /// Open `path` for reading. Nothing is created: a missing file is an error, and so is
    /// a schema other than this build's (reading never migrates).
    ///
    /// # Errors
    /// The file cannot be opened read-only, or its schema version differs.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let pool = ReaderPool {
            path: path.to_path_buf(),
            location: path.display().to_string(),
            idle: Mutex::new(Vec::new()),
        };
        let conn = pool.connect()?;
        let found: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|err| sqlite_error(&pool.location, "read schema version", err))?;
        let known = SqliteStore::schema_version();
        if check_version(&pool.location, found)? < known {
            return Err(StoreError::SchemaTooOld {
                location: pool.location.clone(),
                found,
                known,
            });
        }
        pool.give_back(conn);
        Ok(SqliteReader {
            pool: Arc::new(pool),
        })
    }

    /// Run `read` on a pooled connection on a blocking thread, inside one read transaction
    /// (one consistent snapshot even for reads of several statements).
    fn run<T: Send + 'static>(
        &self,
        operation: &'static str,
        read: impl FnOnce(&Connection, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let pool = Arc::clone(&self.pool);
        Box::pin(async move {
            let location = pool.location.clone();
            tokio::task::spawn_blocking(move || {
                let conn = match pool.take() {
                    Some(conn) => conn,
                    None => pool.connect()?,
                };
                let result = {
                    let fail = |err| sqlite_error(&pool.location, operation, err);
                    let tx = conn.unchecked_transaction().map_err(fail)?;
                    let value = read(&tx, &pool.location)?;
                    tx.finish().map_err(fail)?;
                    Ok(value)
                };
                pool.give_back(conn);
                result
            })
            .await
            .map_err(|err| StoreError::Backend {
                location,
                operation,
                detail: format!("read task failed: {err}"),
            })?
        })
    }
}

impl ReaderPool {
    fn connect(&self) -> Result<Connection, StoreError> {
        let fail = |err| sqlite_error(&self.location, "open for reading", err);
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(fail)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail)?;
        Ok(conn)
    }

    fn take(&self) -> Option<Connection> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
    }
}

impl ReadStore for SqliteReader {
    fn query(&self, query: Query) -> BoxFuture<'_, Result<Vec<Row>, StoreError>> {
        self.run("query", move |conn, location| {
            query_rows(conn, &query).map_err(|err| sqlite_error(location, "query", err))?
        })
    }

    fn latest(&self) -> BoxFuture<'_, Result<Vec<Row>, StoreError>> {
        self.run("latest", |conn, location| {
            latest_rows(conn).map_err(|err| sqlite_error(location, "latest", err))?
        })
    }

    fn sensor_stats(&self) -> BoxFuture<'_, Result<Vec<SensorStats>, StoreError>> {
        self.run("sensor stats", |conn, location| {
            let fail = |err| sqlite_error(location, "sensor stats", err);
            let totals = sensor_totals(conn).map_err(fail)?;
            let mut stats = Vec::with_capacity(totals.len());
            for (sensor, readings, first_ns, last_ns) in totals {
                let last_fields = match latest_of_sensor(conn, &sensor, last_ns).map_err(fail)? {
                    Some(row) => row?.fields,
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
            Ok(stats)
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>> {
        self.run("counts", |conn, location| {
            let totals =
                sensor_totals(conn).map_err(|err| sqlite_error(location, "counts", err))?;
            let per_sensor: Vec<(String, u64)> = totals
                .into_iter()
                .map(|(sensor, readings, _, _)| (sensor, readings))
                .collect();
            Ok(Counts {
                total: per_sensor.iter().map(|(_, n)| n).sum(),
                per_sensor,
            })
        })
    }
}

/// The columns every row-returning read selects, in [`decode_row`]'s order.
const ROW_COLUMNS: &str = "s.measurement, s.sensor, s.tags, r.fields, r.ts, r.received";

/// A row as SQLite returns it; the JSON columns are decoded afterwards, outside rusqlite's
/// error type, so a bad text is reported as [`StoreError::Corrupt`].
type RawRow = (String, String, String, String, i64, i64);

fn raw_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn decode_row(raw: RawRow) -> Result<Row, StoreError> {
    let (measurement, sensor, tags, fields, ts, received) = raw;
    Ok(Row {
        measurement,
        sensor,
        tags: decode_tags(&tags).map_err(StoreError::Corrupt)?,
        fields: decode_fields(&fields).map_err(StoreError::Corrupt)?,
        timestamp_ns: ts,
        received_ns: received,
    })
}

/// Readings matching `query` (outer error: SQLite; inner: a corrupt row).
fn query_rows(conn: &Connection, query: &Query) -> rusqlite::Result<Result<Vec<Row>, StoreError>> {
    // CROSS JOIN makes SQLite loop over the (few) series and seek each one's time range
    // in the readings primary key, instead of scanning every reading for a time filter.
    let mut sql = format!(
        "SELECT {ROW_COLUMNS} FROM series s CROSS JOIN readings r ON r.series_id = s.id WHERE 1"
    );
    let mut params: Vec<rusqlite::types::Value> = Vec::new();
    let mut filter = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
        params.push(value);
        write!(sql, " AND {clause} ?{}", params.len()).expect("writing to a String cannot fail");
    };
    if let Some(sensor) = &query.sensor {
        filter(&mut sql, "s.sensor =", sensor.clone().into());
    }
    if let Some(measurement) = &query.measurement {
        filter(&mut sql, "s.measurement =", measurement.clone().into());
    }
    if let Some(since) = query.since_ns {
        filter(&mut sql, "r.ts >=", since.into());
    }
    if let Some(until) = query.until_ns {
        filter(&mut sql, "r.ts <", until.into());
    }
    sql.push_str(" ORDER BY r.ts, s.id");
    if let Some(limit) = query.limit {
        // A limit beyond i64::MAX is no limit in practice.
        params.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        write!(sql, " LIMIT ?{}", params.len()).expect("writing to a String cannot fail");
    }
    let mut stmt = conn.prepare_cached(&sql)?;
    let raw = stmt
        .query_map(params_from_iter(params), raw_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(raw.into_iter().map(decode_row).collect())
}

/// Per sensor: (sensor, readings, first ts, last ts), sorted by sensor.
fn sensor_totals(conn: &Connection) -> rusqlite::Result<Vec<(String, u64, i64, i64)>> {
    // Aggregate per series first (walks the primary key in order, no sort), then per
    // sensor over the few series rows.
    let mut stmt = conn.prepare_cached(
        "SELECT s.sensor, SUM(a.n), MIN(a.lo), MAX(a.hi) \
         FROM (SELECT series_id, COUNT(*) AS n, MIN(ts) AS lo, MAX(ts) AS hi \
               FROM readings GROUP BY series_id) a \
         JOIN series s ON s.id = a.series_id \
         GROUP BY s.sensor ORDER BY s.sensor",
    )?;
    let totals = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                // COUNT is never negative.
                u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?
        .collect();
    totals
}

/// The latest reading of every sensor, sorted by sensor. Each series' newest row is one
/// seek in the primary key (no scan of the readings), then per sensor the greatest
/// (timestamp, received, series id) wins: the same choice as [`latest_of_sensor`].
fn latest_rows(conn: &Connection) -> rusqlite::Result<Result<Vec<Row>, StoreError>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ROW_COLUMNS} FROM series s JOIN readings r ON r.series_id = s.id \
         WHERE r.ts = (SELECT MAX(ts) FROM readings WHERE series_id = s.id) \
         ORDER BY s.sensor, r.ts DESC, r.received DESC, s.id DESC"
    ))?;
    let raw = stmt
        .query_map([], raw_row)?
        .collect::<rusqlite::Result<Vec<RawRow>>>()?;
    let mut rows: Vec<Row> = Vec::new();
    for candidate in raw {
        // Sorted by sensor, best first: keep the first row of each sensor.
        if rows.last().is_some_and(|last| last.sensor == candidate.1) {
            continue;
        }
        match decode_row(candidate) {
            Ok(row) => rows.push(row),
            Err(err) => return Ok(Err(err)),
        }
    }
    Ok(Ok(rows))
}

/// The latest reading of `sensor`, whose greatest timestamp is `last_ns`.
fn latest_of_sensor(
    conn: &Connection,
    sensor: &str,
    last_ns: i64,
) -> rusqlite::Result<Option<Result<Row, StoreError>>> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM series s JOIN readings r ON r.series_id = s.id \
             WHERE s.sensor = ?1 AND r.ts = ?2 \
             ORDER BY r.received DESC, s.id DESC LIMIT 1"
        ))?
        .query_row(rusqlite::params![sensor, last_ns], raw_row)
        .optional()?;
    Ok(raw.map(decode_row))
}

#[cfg(test)]
mod tests {
    //! What only SQLite has: files, migrations, the series table, read-only connections.
    //! Behaviour shared with every store is in the conformance suite.

    use super::*;
    use crate::protocol::FieldValue;
    use crate::store::testing::{block_on, reading};
    use crate::store::StoreReader;

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

    fn all_rows(path: &Path) -> Vec<Row> {
        let reader = StoreReader::new(SqliteReader::open(path).expect("reader"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(reader.query(&Query::default())).expect("query")
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

    /// The series key on disk is schema v1's text: it must never change.
    #[test]
    fn series_key_on_disk_is_unchanged() {
        let (_dir, _path, mut store) = open_temp();
        let mut r = reading(
            r"C:\m x",
            &[("z", "1"), ("a,b", "v=\\")],
            vec![("v", FieldValue::Int(1))],
            5,
        );
        r.sensor = "10.0.0.1".into();
        store.write_batch(&[r]).expect("write");
        let key: String = store
            .conn
            .query_row("SELECT key FROM series", [], |r| r.get(0))
            .expect("key");
        assert_eq!(key, r"C:\\m\ x,a\,b=v\=\\,sensor=10.0.0.1,z=1");
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
        assert_eq!(all_rows(&path).len(), 2);
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
        assert!(matches!(
            SqliteReader::open(&path),
            Err(StoreError::SchemaTooNew { .. })
        ));
    }

    /// Reading never creates or migrates anything.
    #[test]
    fn reader_needs_an_existing_migrated_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let absent = dir.path().join("absent.db");
        let err = SqliteReader::open(&absent).expect_err("no file");
        assert!(matches!(err, StoreError::Backend { .. }), "{err:?}");
        assert!(!absent.exists());

        let empty = dir.path().join("empty.db");
        Connection::open(&empty).expect("create a bare file");
        let err = SqliteReader::open(&empty).expect_err("not migrated");
        assert!(
            matches!(err, StoreError::SchemaTooOld { found: 0, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn failed_transaction_leaves_no_cached_series() {
        let (_dir, path, mut store) = open_temp();
        // Make the readings insert fail after the series row is created.
        store
            .conn
            .execute_batch(
                "CREATE TRIGGER no_ts_zero BEFORE INSERT ON readings WHEN NEW.ts = 0 \
                 BEGIN SELECT RAISE(ABORT, 'ts zero'); END;",
            )
            .expect("trigger");
        let err = store.write_batch(&[temp("new", 1, 1.0), temp("new", 0, 1.0)]);
        match &err {
            Err(StoreError::Backend {
                operation, detail, ..
            }) => {
                assert_eq!(*operation, "insert reading");
                assert!(detail.contains("ts zero"), "{detail}");
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
        assert!(!err.expect_err("failed").is_transient());
        assert!(store.series.is_empty());
        let outcome = store.write_batch(&[temp("new", 1, 1.0)]).expect("write");
        assert_eq!(outcome.inserted, 1);
        let rows = all_rows(&path);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].sensor, "new");
    }

    /// A writer holding the lock beyond the busy timeout is "unavailable", not a fault.
    #[test]
    fn busy_database_is_transient() {
        let (_dir, path, mut store) = open_temp();
        let other = Connection::open(&path).expect("second writer");
        other.busy_timeout(Duration::ZERO).expect("no wait");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        store.conn.busy_timeout(Duration::ZERO).expect("no wait");
        let err = store
            .write_batch(&[temp("a", 1, 1.0)])
            .expect_err("locked out");
        assert!(err.is_transient(), "{err:?}");
        other.execute_batch("ROLLBACK").expect("unlock");
        store.write_batch(&[temp("a", 1, 1.0)]).expect("write");
    }

    /// Readers have connections of their own: an open write transaction neither blocks
    /// them nor shows them its rows.
    #[test]
    fn reader_reads_beside_an_open_write_transaction() {
        let (_dir, path, mut store) = open_temp();
        store.write_batch(&[temp("a", 1, 1.0)]).expect("write");
        let reader = StoreReader::new(SqliteReader::open(&path).expect("reader"));
        store
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .expect("hold the write lock");
        store
            .conn
            .execute(
                "INSERT INTO readings (series_id, ts, received, fields) \
                 SELECT series_id, 2, 2, fields FROM readings",
                [],
            )
            .expect("uncommitted row");
        let counts = block_on(reader.counts()).expect("reads while the writer holds its lock");
        assert_eq!(counts.total, 1);
        store.conn.execute_batch("COMMIT").expect("commit");
        assert_eq!(block_on(reader.counts()).expect("counts").total, 2);
    }
}
