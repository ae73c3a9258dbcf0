//! The SQLite read side: [`SqliteReader`], read-only connections of its own (WAL lets them
//! read a committed snapshot beside the writer), at most [`MAX_READERS`] reads at once on
//! `spawn_blocking`, each cancelled (its statement interrupted) when its future is dropped;
//! and the read queries, which seek the readings primary key and the per-series totals,
//! never scan the readings table (but for an unfiltered query).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params_from_iter, Connection, InterruptHandle, OpenFlags};
use tokio::sync::Semaphore;

use super::{check_version, sqlite_error, SqliteStore, BUSY_TIMEOUT};
use crate::store::encoding::{decode_fields, decode_tags};
use crate::store::read::{join_stats, BoxFuture, ReadStore};
use crate::store::{Counts, Query, Row, SensorStats, StoreError};

/// Most reads a [`SqliteReader`] runs at once (more wait for a turn), hence its most
/// read-only connections: each read holds a blocking thread and a connection, and a poll
/// of many HTTP clients must not open one per request.
pub(super) const MAX_READERS: usize = 4;

/// Idle read-only connections a [`SqliteReader`] keeps for the next query (all of them:
/// never more than [`MAX_READERS`] exist).
const MAX_IDLE_READERS: usize = MAX_READERS;

/// The read side: read-only connections of its own, never the writer's. Cheap to share
/// (an `Arc` inside); each read runs on `spawn_blocking`.
#[derive(Debug, Clone)]
pub struct SqliteReader {
    pub(super) pool: Arc<ReaderPool>,
}

#[derive(Debug)]
pub(super) struct ReaderPool {
    path: PathBuf,
    location: String,
    /// Connections not in use, reused so each read does not reopen the file.
    idle: Mutex<Vec<Connection>>,
    /// One permit per read running ([`MAX_READERS`]).
    permits: Arc<Semaphore>,
    /// Connections opened so far, reads running now and the most at once: what bounds
    /// the reader's resources (checked by the tests).
    pub(super) opened: AtomicUsize,
    pub(super) running: AtomicUsize,
    pub(super) peak_running: AtomicUsize,
}

/// Lets a dropped read future stop the statement its blocking task is running (a
/// cancelled HTTP request must not go on scanning).
#[derive(Default)]
struct Cancel {
    state: Mutex<CancelState>,
}

#[derive(Default)]
struct CancelState {
    cancelled: bool,
    /// The connection running the read, while it runs.
    running: Option<InterruptHandle>,
}

impl Cancel {
    fn lock(&self) -> std::sync::MutexGuard<'_, CancelState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Cancels its read when dropped before [`CancelOnDrop::disarm`].
struct CancelOnDrop(Option<Arc<Cancel>>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            let mut state = cancel.lock();
            state.cancelled = true;
            if let Some(handle) = &state.running {
                handle.interrupt();
            }
        }
    }
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
            permits: Arc::new(Semaphore::new(MAX_READERS)),
            opened: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            peak_running: AtomicUsize::new(0),
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
    /// (one consistent snapshot even for reads of several statements). At most
    /// [`MAX_READERS`] run at once; dropping the future interrupts the running statement.
    pub(super) fn run<T: Send + 'static>(
        &self,
        operation: &'static str,
        read: impl FnOnce(&Connection, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let pool = Arc::clone(&self.pool);
        Box::pin(async move {
            let location = pool.location.clone();
            // Moved into the blocking task: held until the read is really over, even if
            // this future is dropped first.
            let permit = Arc::clone(&pool.permits)
                .acquire_owned()
                .await
                .expect("the reader never closes its semaphore");
            let cancel = Arc::new(Cancel::default());
            let mut guard = CancelOnDrop(Some(Arc::clone(&cancel)));
            let task = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let conn = match pool.take() {
                    Some(conn) => conn,
                    None => pool.connect()?,
                };
                {
                    let mut state = cancel.lock();
                    if state.cancelled {
                        pool.give_back(conn);
                        return Err(StoreError::Backend {
                            location: pool.location.clone(),
                            operation,
                            detail: "cancelled".into(),
                        });
                    }
                    state.running = Some(conn.get_interrupt_handle());
                }
                let now = pool.running.fetch_add(1, Ordering::SeqCst) + 1;
                pool.peak_running.fetch_max(now, Ordering::SeqCst);
                let result = {
                    let fail = |err| sqlite_error(&pool.location, operation, err);
                    match conn.unchecked_transaction().map_err(fail) {
                        Ok(tx) => read(&tx, &pool.location)
                            .and_then(|value| tx.finish().map_err(fail).map(|()| value)),
                        Err(err) => Err(err),
                    }
                };
                pool.running.fetch_sub(1, Ordering::SeqCst);
                // Before the connection serves another read, which a late interrupt must
                // not hit.
                cancel.lock().running = None;
                pool.give_back(conn);
                result
            });
            let result = task.await;
            guard.disarm();
            result.map_err(|err| StoreError::Backend {
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
        self.opened.fetch_add(1, Ordering::SeqCst);
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
            // Both sorted by sensor, one row per sensor with readings (same snapshot).
            let latest = latest_rows(conn).map_err(fail)??;
            Ok(join_stats(totals, latest))
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

/// The SQL and parameters of `query`.
pub(super) fn query_sql(query: &Query) -> (String, Vec<rusqlite::types::Value>) {
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
    sql.push_str(if query.newest_first {
        " ORDER BY r.ts DESC, s.id DESC"
    } else {
        " ORDER BY r.ts, s.id"
    });
    if let Some(limit) = query.limit {
        // A limit beyond i64::MAX is no limit in practice.
        params.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        write!(sql, " LIMIT ?{}", params.len()).expect("writing to a String cannot fail");
    }
    (sql, params)
}

/// The newest `?4` readings of series `?1` with `?2 <= ts <= ?3`: the primary key walked
/// backwards, no sort.
pub(super) const NEWEST_OF_SERIES: &str =
    "SELECT s.measurement, s.sensor, s.tags, r.fields, r.ts, \
     r.received FROM series s CROSS JOIN readings r ON r.series_id = s.id \
     WHERE s.id = ?1 AND r.ts >= ?2 AND r.ts <= ?3 ORDER BY r.ts DESC LIMIT ?4";

/// The newest `limit` readings matching `query`: at most `limit` per matching series
/// (each a backwards walk of the primary key), merged. Costs O(series × limit) instead of
/// reading and sorting every match.
fn newest_rows(
    conn: &Connection,
    query: &Query,
    limit: u64,
) -> rusqlite::Result<Result<Vec<Row>, StoreError>> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let since = query.since_ns.unwrap_or(i64::MIN);
    // `until` is exclusive; nothing is before i64::MIN.
    let last = match query.until_ns {
        Some(i64::MIN) => return Ok(Ok(Vec::new())),
        Some(until) => until - 1,
        None => i64::MAX,
    };
    // Every series, not only those whose totals count readings: the totals may lag the
    // readings (see `TOTALS_FLUSH_INTERVAL`), a query must not. An empty series costs a seek.
    let mut sql = String::from("SELECT id FROM series WHERE 1");
    let mut params: Vec<rusqlite::types::Value> = Vec::new();
    if let Some(sensor) = &query.sensor {
        params.push(sensor.clone().into());
        write!(sql, " AND sensor = ?{}", params.len()).expect("writing to a String cannot fail");
    }
    if let Some(measurement) = &query.measurement {
        params.push(measurement.clone().into());
        write!(sql, " AND measurement = ?{}", params.len())
            .expect("writing to a String cannot fail");
    }
    let ids = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(params), |row| row.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<i64>>>()?;
    let per_series = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(NEWEST_OF_SERIES)?;
    let mut candidates: Vec<(i64, RawRow)> = Vec::new();
    for id in ids {
        let rows = stmt.query_map(rusqlite::params![id, since, last, per_series], raw_row)?;
        for row in rows {
            candidates.push((id, row?));
        }
    }
    // Newest first; equal timestamps: the later series first (the reverse of oldest first).
    candidates.sort_unstable_by(|(a_id, a), (b_id, b)| (b.4, b_id).cmp(&(a.4, a_id)));
    candidates.truncate(limit);
    Ok(candidates
        .into_iter()
        .map(|(_, raw)| decode_row(raw))
        .collect())
}

/// Readings matching `query` (outer error: SQLite; inner: a corrupt row).
fn query_rows(conn: &Connection, query: &Query) -> rusqlite::Result<Result<Vec<Row>, StoreError>> {
    if let (true, Some(limit)) = (query.newest_first, query.limit) {
        return newest_rows(conn, query, limit);
    }
    let (sql, params) = query_sql(query);
    let mut stmt = conn.prepare_cached(&sql)?;
    let raw = stmt
        .query_map(params_from_iter(params), raw_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(raw.into_iter().map(decode_row).collect())
}

/// Per-sensor totals from the series rows (O(series): the writer keeps them).
pub(super) const SENSOR_TOTALS: &str = "SELECT sensor, SUM(readings), MIN(first_ts), MAX(last_ts) \
     FROM series WHERE readings > 0 GROUP BY sensor ORDER BY sensor";

/// Each series' newest row is one seek in the readings primary key at the series'
/// `last_ts` (CROSS JOIN keeps the series as the outer loop), best first per sensor.
pub(super) const LATEST_CANDIDATES: &str =
    "SELECT s.measurement, s.sensor, s.tags, r.fields, r.ts, \
     r.received FROM series s CROSS JOIN readings r ON r.series_id = s.id AND r.ts = s.last_ts \
     WHERE s.readings > 0 ORDER BY s.sensor, r.ts DESC, r.received DESC, s.id DESC";

/// Per sensor: (sensor, readings, first ts, last ts), sorted by sensor.
fn sensor_totals(conn: &Connection) -> rusqlite::Result<Vec<(String, u64, i64, i64)>> {
    let mut stmt = conn.prepare_cached(SENSOR_TOTALS)?;
    let totals = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                // A sum of counts is never negative.
                u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?
        .collect();
    totals
}

/// The latest reading of every sensor, sorted by sensor: per sensor the greatest
/// (timestamp, received, series id) wins (see [`ReadStore::latest`]).
fn latest_rows(conn: &Connection) -> rusqlite::Result<Result<Vec<Row>, StoreError>> {
    let mut stmt = conn.prepare_cached(LATEST_CANDIDATES)?;
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
