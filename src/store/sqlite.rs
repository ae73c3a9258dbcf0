//! Embedded SQLite store (WAL, schema migrations, deduplication by series and timestamp).
//!
//! Layout (schema v3):
//! - `series`: one row per series (measurement + tags + sensor), with its key
//!   ([`super::encoding`]) and its totals (readings stored, first and last timestamp), so
//!   counts, stats and the latest reading cost O(series) instead of a scan of every
//!   reading. The writer caches key → id in memory and keeps the totals as in-memory
//!   deltas (counting only rows really inserted), folded into the table inside a write it
//!   does anyway at most once per [`TOTALS_FLUSH_INTERVAL`], when the writer goes idle, and
//!   at close: updating the series row in every commit cost one more page per commit
//!   (+17% on a one-reading round trip). So the totals may lag by about that interval.
//! - `meta`: `totals_dirty` = 1 while a writer may hold unflushed deltas. Found at 1 on
//!   open (the last writer died before its final flush), the totals are recounted once.
//! - `readings`: `WITHOUT ROWID`, keyed by `(series_id, ts)`. The primary key is the
//!   exactly-once identity: a second reading of the same series at the same timestamp hits
//!   `ON CONFLICT DO NOTHING` and counts as a duplicate. Queries by sensor or time walk the
//!   series of the sensor (index `series_sensor`) and seek each series' time range in the
//!   primary key, so no extra index slows ingest.
//!
//! Fields and tags are stored as the JSON texts of [`super::encoding`].
//!
//! [`SqliteStore`] is the write side, driven by the one group-commit writer thread.
//! [`SqliteReader`] (`sqlite/reader.rs`) is the read side: its own read-only connections
//! (WAL lets them read a committed snapshot beside the writer), used on `spawn_blocking`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, TransactionBehavior};

use tx::Immediate;

use super::encoding::{decode_fields, encode_fields, write_stored_series_key};
use super::{Conflict, FsyncPolicy, Store, StoreError, StoredReading, Written};

mod files;
mod reader;
mod series_cache;
mod tx;

use files::{checkpoint_at_close, lock_writer};
use series_cache::{find_or_create_series, same_series};

pub use reader::SqliteReader;
pub use series_cache::{SeriesCache, DEFAULT_SERIES_CACHE_ENTRIES};

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
    // v2: per-series totals kept by the writer, backfilled once (one primary-key range
    // per series) so counts and stats never scan the readings again.
    "ALTER TABLE series ADD COLUMN readings INTEGER NOT NULL DEFAULT 0; -- rows in readings
    ALTER TABLE series ADD COLUMN first_ts INTEGER; -- least ts, NULL while no reading
    ALTER TABLE series ADD COLUMN last_ts  INTEGER; -- greatest ts, NULL while no reading
    UPDATE series SET
        readings = (SELECT COUNT(*) FROM readings WHERE series_id = series.id),
        first_ts = (SELECT MIN(ts) FROM readings WHERE series_id = series.id),
        last_ts  = (SELECT MAX(ts) FROM readings WHERE series_id = series.id);",
    // v3: the totals are folded in from memory now and then; `totals_dirty` = 1 while a
    // writer may hold deltas not in the table yet (see `TOTALS_DIRTY`).
    "CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('totals_dirty', 0);",
];

/// At most this long between the commit of a reading and its place in the series totals
/// while the writer is busy (it folds them into a write it does anyway); an idle writer
/// folds them when this runs out. Counts, stats and latest may lag by this much.
pub const TOTALS_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Series with unflushed deltas beyond which the writer folds them at its next write
/// (bounds memory and the size of one fold).
const TOTALS_MAX_PENDING: usize = 10_000;

/// Read, and set, whether a writer may hold unflushed deltas.
const READ_TOTALS_DIRTY: &str = "SELECT value FROM meta WHERE key = 'totals_dirty'";
const SET_TOTALS_DIRTY: &str = "UPDATE meta SET value = ?1 WHERE key = 'totals_dirty'";

/// Recount every series' totals from the readings (the v2 backfill): after a crash.
const RECOUNT_TOTALS: &str = "UPDATE series SET
        readings = (SELECT COUNT(*) FROM readings WHERE series_id = series.id),
        first_ts = (SELECT MIN(ts) FROM readings WHERE series_id = series.id),
        last_ts  = (SELECT MAX(ts) FROM readings WHERE series_id = series.id)";

/// SQLite page cache, KiB.
const CACHE_KIB: i64 = 64 * 1024;

/// WAL pages between automatic checkpoints (4 KiB pages: 40 MiB).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Pending series deltas up to which a due totals fold is small enough to run in a commit
/// on an async worker (`--fsync os`, inline route); a larger fold waits for the writer thread.
const INLINE_FOLD_MAX_SERIES: usize = 256;

/// How long a writer waits for another process's lock (e.g. a concurrent migration).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the shutdown checkpoint waits for readers to let go of the WAL.
const CLOSE_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

const INSERT_READING: &str = "INSERT INTO readings (series_id, ts, received, fields) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";

/// At most one warning per this interval about undecodable stored rows: a peer resending
/// onto a bad row must not flood the log.
const CORRUPT_WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Rows per multi-row `INSERT`: one statement per this many rows costs SQLite less per
/// row than one each (fewer steps, resets and binds): +15 % raw (benches/sqlite_ceiling.rs,
/// 8 alternated pairs, 5,200 rows per transaction), +8 % for the whole server at 5000 × 4.
pub const INSERT_CHUNK_ROWS: usize = 32;

/// Prepared statements the writer's connection keeps.
const STATEMENT_CACHE: usize = 32;

/// [`INSERT_READING`] for [`INSERT_CHUNK_ROWS`] rows.
static INSERT_READINGS_CHUNK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let rows = vec!["(?, ?, ?, ?)"; INSERT_CHUNK_ROWS].join(", ");
    format!(
        "INSERT INTO readings (series_id, ts, received, fields) VALUES {rows} \
         ON CONFLICT DO NOTHING"
    )
});

/// One row of `readings`: series id, ts, received (ns), encoded fields.
pub type ReadingRow<'a> = (i64, i64, i64, &'a str);

/// Insert [`INSERT_CHUNK_ROWS`] rows in one statement under a savepoint, inside the
/// caller's write transaction. `false`: some row's (series, ts) was already stored, and
/// the savepoint is rolled back, so none of them is written (insert them one by one: only
/// a row's own statement tells which it was). The store's writer and the raw SQLite
/// ceiling bench both insert through this.
pub fn insert_reading_rows(tx: &Connection, rows: &[ReadingRow<'_>]) -> rusqlite::Result<bool> {
    debug_assert_eq!(rows.len(), INSERT_CHUNK_ROWS);
    let mut values: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(rows.len() * 4);
    for (series_id, ts, received, fields) in rows {
        values.extend([series_id as &dyn rusqlite::ToSql, ts, received, fields]);
    }
    tx.prepare_cached("SAVEPOINT chunk")?.execute([])?;
    let inserted = tx
        .prepare_cached(&INSERT_READINGS_CHUNK)?
        .execute(values.as_slice())?;
    if inserted < rows.len() {
        tx.prepare_cached("ROLLBACK TO chunk")?.execute([])?;
    }
    tx.prepare_cached("RELEASE chunk")?.execute([])?;
    Ok(inserted == rows.len())
}

/// [`insert_reading_rows`] for `chunk` ((series, ts, index in `batch`)), encoding each
/// reading's fields into `fields` (buffers reused from chunk to chunk).
fn insert_chunk(
    tx: &Connection,
    chunk: &[(i64, i64, usize)],
    batch: &[&StoredReading],
    fields: &mut [String],
) -> rusqlite::Result<bool> {
    for ((_, _, index), text) in chunk.iter().zip(fields.iter_mut()) {
        encode_fields(text, &batch[*index].reading.fields);
    }
    let rows: Vec<ReadingRow<'_>> = chunk
        .iter()
        .zip(fields.iter())
        .map(|(&(series_id, ts, index), text)| {
            (series_id, ts, batch[index].received_ns, text.as_str())
        })
        .collect();
    insert_reading_rows(tx, &rows)
}

/// `run` (the inserted rows of one series so far, if any) with one more row, at `ts`.
fn extend_run(run: Option<(i64, Delta)>, series_id: i64, ts: i64) -> (i64, Delta) {
    match run {
        Some((id, delta)) => (
            id,
            Delta {
                readings: delta.readings + 1,
                last_ts: ts,
                ..delta
            },
        ),
        None => (
            series_id,
            Delta {
                readings: 1,
                first_ts: ts,
                last_ts: ts,
            },
        ),
    }
}

/// The fields kept at a (series, ts) an insert found taken: duplicate or conflict?
const STORED_FIELDS: &str = "SELECT fields FROM readings WHERE series_id = ?1 AND ts = ?2";

/// Add one batch's inserted rows (count, least and greatest ts) to a series' totals.
const ADD_SERIES_TOTALS: &str = "UPDATE series SET readings = readings + ?2, \
     first_ts = min(coalesce(first_ts, ?3), ?3), last_ts = max(coalesce(last_ts, ?4), ?4) \
     WHERE id = ?1";

/// A rusqlite error as a [`StoreError`] with its context. Busy or locked means another
/// connection holds the lock longer than [`BUSY_TIMEOUT`]: transient.
fn sqlite_error(location: &str, operation: &'static str, err: rusqlite::Error) -> StoreError {
    let transient = matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    StoreError::from_backend(transient, location.to_string(), operation, err.to_string())
}

/// Rows inserted into one series and not yet in its totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delta {
    readings: i64,
    first_ts: i64,
    last_ts: i64,
}

impl Delta {
    fn merge(&mut self, other: Delta) {
        self.readings += other.readings;
        self.first_ts = self.first_ts.min(other.first_ts);
        self.last_ts = self.last_ts.max(other.last_ts);
    }
}

/// The write side: owned by the group-commit writer thread.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// The path, for error messages.
    location: String,
    /// Series key → `series.id`, only for series whose row is committed (so a rolled-back
    /// transaction can never leave a dangling id here); bounded, least recently used out.
    series: SeriesCache,
    /// Committed rows not yet in the series totals, by `series.id`.
    pending: HashMap<i64, Delta>,
    /// When the oldest delta in `pending` was committed (None: nothing pending).
    pending_since: Option<Instant>,
    /// [`TOTALS_FLUSH_INTERVAL`]; zero (tests) folds the totals in every write.
    flush_interval: Duration,
    /// `meta.totals_dirty` is 1 on disk, set by this writer.
    marked_dirty: bool,
    /// How commits reach the disk: `Os` commits never sync (WAL append only).
    fsync: FsyncPolicy,
    /// `Os` only: frames in the WAL after the last commit (set by the WAL hook, which
    /// replaces SQLite's automatic checkpoint), so the checkpoint runs on the writer
    /// thread and never in a commit on an async worker ([`Store::commits_without_waiting`]).
    wal_frames: Option<Arc<AtomicI32>>,
    /// WAL frames at which `wal_frames` asks for a checkpoint ([`WAL_AUTOCHECKPOINT_PAGES`]).
    checkpoint_frames: i64,
    /// When an undecodable stored row was last warned about ([`CORRUPT_WARN_INTERVAL`]).
    corrupt_warned: Option<Instant>,
    /// Held (advisory `flock`) for the store's life: one writer per database file. A second
    /// writer would recount the totals under this one's unfolded deltas and count them twice.
    _writer_lock: std::fs::File,
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
        let writer_lock = lock_writer(path, &location)?;
        let mut conn = Connection::open(path).map_err(fail("open"))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(fail("open"))?;
        // Every statement the writer runs stays prepared (rusqlite keeps 16 by default).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // journal_mode answers with the mode it set; a failure to switch is not an error
        // for SQLite. (`:memory:`, which cannot switch, is refused by `StoreUrl`: readers
        // could not see it.)
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
        // `--fsync os` commits may run on an async worker (inline route): SQLite's own
        // checkpoint would then stall that worker for milliseconds. The hook (which
        // replaces the automatic checkpoint) only counts the WAL's frames; `write_batch`
        // checkpoints on the writer thread once they pass the same threshold.
        let wal_frames = match fsync {
            FsyncPolicy::Always => None,
            FsyncPolicy::Os => {
                let frames = Arc::new(AtomicI32::new(0));
                let counted = Arc::clone(&frames);
                conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
                    counted.store(pages, Ordering::Relaxed);
                    Ok(())
                }))
                .map_err(fail("set wal hook"))?;
                Some(frames)
            }
        };
        migrate(&mut conn, &location)?;
        recount_if_dirty(&mut conn, &location)?;
        Ok(SqliteStore {
            conn,
            location,
            series: SeriesCache::new(DEFAULT_SERIES_CACHE_ENTRIES),
            pending: HashMap::new(),
            pending_since: None,
            flush_interval: TOTALS_FLUSH_INTERVAL,
            marked_dirty: false,
            fsync,
            wal_frames,
            checkpoint_frames: WAL_AUTOCHECKPOINT_PAGES,
            corrupt_warned: None,
            _writer_lock: writer_lock,
        })
    }

    /// Keep at most `entries` series ids in memory instead of
    /// [`DEFAULT_SERIES_CACHE_ENTRIES`].
    pub fn with_series_cache(mut self, entries: usize) -> Self {
        self.series = SeriesCache::new(entries);
        self
    }

    /// Series ids held in memory.
    pub fn cached_series(&self) -> usize {
        self.series.len()
    }

    /// Fold the totals into the table at most every `interval` instead of
    /// [`TOTALS_FLUSH_INTERVAL`]; `Duration::ZERO` folds them in every write, so reads
    /// right after a commit see exact counts (tests).
    pub fn with_totals_flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Fold every pending delta into the series totals now, in a transaction of its own,
    /// and mark the totals clean (nothing left in memory).
    ///
    /// # Errors
    /// The transaction fails; the deltas stay pending.
    pub fn flush_totals(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() && !self.marked_dirty {
            return Ok(());
        }
        let location = self.location.as_str();
        let fail = |operation| move |err| sqlite_error(location, operation, err);
        let tx = Immediate::begin(&self.conn).map_err(fail("begin totals flush"))?;
        add_totals(&tx, &self.pending).map_err(fail("update series totals"))?;
        tx.execute(SET_TOTALS_DIRTY, [0])
            .map_err(fail("mark totals clean"))?;
        tx.commit().map_err(fail("commit totals flush"))?;
        self.pending.clear();
        self.pending_since = None;
        self.marked_dirty = false;
        Ok(())
    }

    /// Whether the pending deltas (`pending` series, the oldest committed `since`) must be
    /// folded into the write under way.
    fn totals_due(
        since: Option<Instant>,
        interval: Duration,
        pending: usize,
        now: Instant,
    ) -> bool {
        let old = since.is_some_and(|since| now.saturating_duration_since(since) >= interval);
        old || interval.is_zero() || pending > TOTALS_MAX_PENDING
    }

    /// `--fsync os`: the WAL has passed [`WAL_AUTOCHECKPOINT_PAGES`] since the last checkpoint.
    fn checkpoint_due(&self) -> bool {
        self.wal_frames.as_ref().is_some_and(|frames| {
            i64::from(frames.load(Ordering::Relaxed)) >= self.checkpoint_frames
        })
    }

    /// A passive checkpoint, as SQLite's automatic one would run (readers are not waited
    /// for; what they still use is copied next time). A failure is logged: the WAL keeps
    /// the data, and the next due commit tries again.
    fn checkpoint(&mut self) {
        self.end_ahead();
        let done = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                row.get::<_, i64>(0)
            });
        if let Err(err) = done {
            tracing::warn!(location = %self.location, cause = %err, "WAL checkpoint failed");
        }
        // The hook reports the WAL's size again at the next commit (small once it restarts).
        if let Some(frames) = &self.wal_frames {
            frames.store(0, Ordering::Relaxed);
        }
    }

    /// End a transaction begun ahead ([`Store::begin_next_write`]); it holds nothing, so a
    /// failure only leaves it to the next statement's error.
    fn end_ahead(&mut self) {
        if let Err(err) = tx::end_ahead(&self.conn) {
            tracing::warn!(location = %self.location, cause = %err, "cannot end the transaction begun ahead");
        }
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

/// Add `deltas` to the series totals.
fn add_totals(conn: &Connection, deltas: &HashMap<i64, Delta>) -> rusqlite::Result<()> {
    let mut totals = conn.prepare_cached(ADD_SERIES_TOTALS)?;
    for (id, delta) in deltas {
        totals.execute(rusqlite::params![
            id,
            delta.readings,
            delta.first_ts,
            delta.last_ts
        ])?;
    }
    Ok(())
}

/// If the last writer died with deltas unflushed (`totals_dirty` = 1), recount the totals
/// from the readings, once, under the write lock.
fn recount_if_dirty(conn: &mut Connection, location: &str) -> Result<(), StoreError> {
    let fail = |operation| move |err| sqlite_error(location, operation, err);
    let dirty: i64 = conn
        .query_row(READ_TOTALS_DIRTY, [], |row| row.get(0))
        .map_err(fail("read totals state"))?;
    if dirty == 0 {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail("begin totals recount"))?;
    // Re-read under the lock: another opener may have recounted meanwhile.
    let dirty: i64 = tx
        .query_row(READ_TOTALS_DIRTY, [], |row| row.get(0))
        .map_err(fail("read totals state"))?;
    if dirty != 0 {
        let started = Instant::now();
        let series = tx
            .execute(RECOUNT_TOTALS, [])
            .map_err(fail("recount series totals"))?;
        tx.execute(SET_TOTALS_DIRTY, [0])
            .map_err(fail("mark totals clean"))?;
        tracing::warn!(
            path = %location,
            series,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "the last writer stopped without flushing the series totals: recounted them"
        );
    }
    tx.commit().map_err(fail("commit totals recount"))
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
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<Written, StoreError> {
        self.write_parts(&[batch])
    }

    fn write_parts(&mut self, parts: &[&[StoredReading]]) -> Result<Written, StoreError> {
        // Decided before the commit: a commit on an async worker never finds it due (see
        // `commits_without_waiting`), so the checkpoint below runs on the writer thread.
        let checkpoint = self.checkpoint_due();
        let location = self.location.as_str();
        let fail = |operation| move |err| sqlite_error(location, operation, err);
        // One IMMEDIATE transaction (or the one begun ahead): makes the batch atomic.
        let tx = Immediate::begin(&self.conn).map_err(fail("begin"))?;
        let mut written = Written::default();
        // Series created in this transaction; merged into the cache only after commit.
        let mut new_series: HashMap<String, i64> = HashMap::new();
        // Rows this batch inserted, per series; merged into `pending` only after commit.
        let mut batch_deltas: Vec<(i64, Delta)> = Vec::new();
        {
            let mut key = String::new();
            let mut pairs = Vec::new();
            // The parts as one batch, by reference (indices count across the parts).
            let batch: Vec<&StoredReading> = parts.iter().flat_map(|part| part.iter()).collect();
            // (series, timestamp, index in batch): inserted in key order, so consecutive rows
            // land on the same B-tree leaf instead of hopping between series.
            let mut order: Vec<(i64, i64, usize)> = Vec::with_capacity(batch.len());
            // The previous reading and its series: a connection's readings mostly come in
            // runs of one series, whose key need not be written and looked up again.
            let mut last: Option<(&StoredReading, i64)> = None;
            for (index, &stored) in batch.iter().enumerate() {
                let series_id = match last.filter(|(prev, _)| same_series(prev, stored)) {
                    Some((_, id)) => id,
                    None => {
                        write_stored_series_key(&mut key, &mut pairs, stored);
                        let cached = self
                            .series
                            .get(&key)
                            .or_else(|| new_series.get(&key).copied());
                        match cached {
                            Some(id) => id,
                            None => {
                                let id = find_or_create_series(&tx, &key, stored)
                                    .map_err(fail("insert series"))?;
                                new_series.insert(key.clone(), id);
                                id
                            }
                        }
                    }
                };
                last = Some((stored, series_id));
                order.push((series_id, stored.timestamp_ns(), index));
            }
            // Stable on equal keys: the first of two identical readings is the one stored.
            order.sort_by_key(|&(series, ts, _)| (series, ts));
            let mut insert = tx
                .prepare_cached(INSERT_READING)
                .map_err(fail("prepare insert"))?;
            let mut fields = String::new();
            // Each row's encoded fields, for one multi-row statement (buffers reused).
            let mut chunk_fields: Vec<String> = vec![String::new(); INSERT_CHUNK_ROWS];
            // The inserted rows of the series being written: (series, delta). `order` is
            // sorted by series then ts, so each series is one run.
            let mut run: Option<(i64, Delta)> = None;
            // Rows of `order` before this were inserted by a multi-row statement. A chunk
            // that meets a row already stored is undone and goes one row at a time: only a
            // row's own statement tells which row it was.
            let mut inserted_until = 0;
            for (position, &(series_id, ts, index)) in order.iter().enumerate() {
                if position >= inserted_until && position % INSERT_CHUNK_ROWS == 0 {
                    if let Some(chunk) = order.get(position..position + INSERT_CHUNK_ROWS) {
                        if insert_chunk(&tx, chunk, &batch, &mut chunk_fields)
                            .map_err(fail("insert readings"))?
                        {
                            inserted_until = position + INSERT_CHUNK_ROWS;
                        }
                    }
                }
                if let Some((id, delta)) = run.filter(|run| run.0 != series_id) {
                    batch_deltas.push((id, delta));
                    run = None;
                }
                if position < inserted_until {
                    written.outcome.inserted += 1;
                    run = Some(extend_run(run, series_id, ts));
                    continue;
                }
                let stored = batch[index];
                encode_fields(&mut fields, &stored.reading.fields);
                let changed = insert
                    .execute(rusqlite::params![series_id, ts, stored.received_ns, fields])
                    .map_err(fail("insert reading"))?;
                if changed == 0 {
                    // Only a repeat pays for this lookup (the row is in the page just hit).
                    let kept: String = tx
                        .prepare_cached(STORED_FIELDS)
                        .and_then(|mut kept| {
                            kept.query_row(rusqlite::params![series_id, ts], |row| row.get(0))
                        })
                        .map_err(fail("read stored fields"))?;
                    let conflict = if kept == fields {
                        None
                    } else {
                        // One bad row must not fail the other batches sharing this
                        // transaction (again at every resend): it keeps its place, and the
                        // reading is refused as a conflict with nothing to show as kept.
                        let kept = decode_fields(&kept).unwrap_or_else(|err| {
                            let warned = &mut self.corrupt_warned;
                            if warned.is_none_or(|at| at.elapsed() >= CORRUPT_WARN_INTERVAL) {
                                *warned = Some(Instant::now());
                                tracing::warn!(
                                    path = %location, series_id, ts, cause = %err,
                                    "stored reading cannot be decoded; repeats of it are refused \
                                     as conflicts (further such warnings held for a minute)"
                                );
                            }
                            Vec::new()
                        });
                        Some(Box::new(Conflict {
                            kept,
                            refused: stored.clone(),
                        }))
                    };
                    written.repeat(index, conflict);
                    continue;
                }
                written.outcome.inserted += 1;
                run = Some(extend_run(run, series_id, ts));
            }
            batch_deltas.extend(run);
        }
        // Before the first delta exists only in memory, the file must say so: a crash
        // from here on makes the next open recount.
        if !self.marked_dirty && !batch_deltas.is_empty() {
            tx.execute(SET_TOTALS_DIRTY, [1])
                .map_err(fail("mark totals dirty"))?;
        }
        let now = Instant::now();
        let fold = Self::totals_due(
            self.pending_since,
            self.flush_interval,
            self.pending.len() + batch_deltas.len(),
            now,
        );
        if fold {
            let mut all = self.pending.clone();
            for &(id, delta) in &batch_deltas {
                all.entry(id)
                    .and_modify(|pending| pending.merge(delta))
                    .or_insert(delta);
            }
            add_totals(&tx, &all).map_err(fail("update series totals"))?;
        }
        tx.commit().map_err(fail("commit"))?;
        // Only what is committed reaches the cache and the deltas.
        self.series.extend(new_series);
        self.marked_dirty |= !batch_deltas.is_empty();
        if fold {
            self.pending.clear();
            self.pending_since = None;
        } else if !batch_deltas.is_empty() {
            for (id, delta) in batch_deltas {
                self.pending
                    .entry(id)
                    .and_modify(|pending| pending.merge(delta))
                    .or_insert(delta);
            }
            self.pending_since.get_or_insert(now);
        }
        if checkpoint {
            self.checkpoint();
        }
        // Found in key order; reported in batch order.
        written.repeats.sort_unstable_by_key(|repeat| repeat.index);
        Ok(written)
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|since| since + self.flush_interval)
    }

    fn idle(&mut self) -> Result<(), StoreError> {
        let flushed = self.flush_totals();
        if flushed.is_err() {
            // Retry an interval later, not in a busy loop (the deltas are kept).
            self.pending_since = Some(Instant::now());
        }
        flushed
    }

    /// `BEGIN IMMEDIATE; ROLLBACK`: takes the write lock (fails on a read-only or locked
    /// database) and writes nothing.
    fn probe(&mut self) -> Result<(), StoreError> {
        let location = self.location.as_str();
        tx::end_ahead(&self.conn)
            .and_then(|()| {
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
            })
            .and_then(|tx| tx.rollback())
            .map_err(|err| sqlite_error(location, "probe", err))
    }

    /// `--fsync os` only (the inline route): a commit on the writer thread takes the locks
    /// in its own time. Not while a checkpoint is due: it would only be ended again.
    fn begin_next_write(&mut self) {
        if self.fsync != FsyncPolicy::Os || self.checkpoint_due() {
            return;
        }
        if let Err(err) = tx::begin_ahead(&self.conn) {
            // The next batch begins its own transaction, and reports what fails then.
            tracing::debug!(location = %self.location, cause = %err, "cannot begin ahead");
        }
    }

    /// With `--fsync os` a commit appends to the WAL without syncing (synchronous=NORMAL
    /// syncs only at checkpoints): tens of µs, cheaper than the two thread hand-offs.
    /// Not while a checkpoint or a large totals fold is due: those take milliseconds and
    /// belong on the writer thread, which the next batch then goes through.
    fn commits_without_waiting(&self) -> bool {
        let large_fold = self.pending.len() > INLINE_FOLD_MAX_SERIES
            && Self::totals_due(
                self.pending_since,
                self.flush_interval,
                self.pending.len(),
                Instant::now(),
            );
        self.fsync == FsyncPolicy::Os && !self.checkpoint_due() && !large_fold
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.end_ahead();
        // Flushed before the checkpoint, so the file is self-contained and clean.
        let flushed = self.flush_totals();
        checkpoint_at_close(&self.conn, &self.location);
        // The connection itself closes when the store is dropped.
        self.series.clear();
        flushed
    }
}

#[cfg(test)]
mod tests {
    //! What only SQLite has: files, migrations, the series table, read-only connections.
    //! Behaviour shared with every store is in the conformance suite.

    use std::path::PathBuf;
    use std::sync::atomic::Ordering;

    use rusqlite::params_from_iter;

    use super::files::Checkpoint;
    use super::reader::*;
    use super::*;
    use crate::protocol::FieldValue;
    use crate::store::testing::{block_on, reading};
    use crate::store::StoreReader;
    use crate::store::{Query, Row};

    /// Generous liveness guard: a test that needs longer than this is hung.
    const HANG: Duration = Duration::from_secs(20);

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

    /// A second writer on the same file (a second server started by mistake) is refused
    /// with a clear error, and may open once the first is gone; readers are not affected.
    #[test]
    fn one_writer_per_database() {
        let (_dir, path, first) = open_temp();
        match SqliteStore::open(&path, FsyncPolicy::Always) {
            Err(err @ StoreError::InUse { .. }) => {
                assert!(
                    err.to_string()
                        .contains("in use by another sensorlink server"),
                    "{err}"
                );
            }
            Err(other) => panic!("expected InUse, got {other}"),
            Ok(_) => panic!("a second writer opened the same database"),
        }
        assert!(all_rows(&path).is_empty(), "a reader still opens");
        drop(first);
        SqliteStore::open(&path, FsyncPolicy::Always).expect("free again once dropped");
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
        let outcome = store.write_batch(&[b]).expect("write").outcome;
        assert_eq!(outcome.duplicates, 1);
        let n: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM series", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1);
    }

    /// Parts written as one batch: one transaction, repeats indexed across the parts
    /// (within a part, between parts, and against rows stored before), and runs of one
    /// series broken by another series, by another sensor, or by other tags all land in
    /// their own series.
    #[test]
    fn parts_are_one_batch_across_their_runs() {
        let (_dir, _path, mut store) = open_temp();
        let v = |n| vec![("v", FieldValue::Int(n))];
        let stored = reading("m", &[("sensor", "a")], v(1), 1);
        store.write_batch(&[stored]).expect("write");
        let mut other_sensor = reading("m", &[], v(1), 1);
        other_sensor.sensor = "10.0.0.1".into();
        let first = vec![
            reading("m", &[("sensor", "a")], v(1), 1), // duplicate of the stored row
            reading("m", &[("sensor", "a")], v(1), 2),
            reading("m", &[("sensor", "b")], v(1), 2),
            reading("m", &[("sensor", "a")], v(9), 2), // conflict, in the same part
        ];
        let second = vec![
            reading("m", &[("sensor", "b")], v(1), 2), // duplicate of the first part's
            reading("m", &[("sensor", "b"), ("x", "1")], v(1), 2),
            reading("n", &[("sensor", "b")], v(1), 2),
            other_sensor,
        ];
        let written = store.write_parts(&[&first, &second]).expect("write");
        let repeats: Vec<(usize, bool)> = written
            .repeats
            .iter()
            .map(|repeat| (repeat.index, repeat.conflict.is_some()))
            .collect();
        assert_eq!(repeats, vec![(0, false), (3, true), (4, false)]);
        assert_eq!(written.outcome.inserted, 5);
        let series: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM series", [], |r| r.get(0))
            .expect("count");
        assert_eq!(series, 5, "a, b, b+x, n/b and the address");
        let rows: i64 = store
            .conn
            .query_row("SELECT COUNT(*) FROM readings", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 6);
    }

    /// Rows go in multi-row statements of `INSERT_CHUNK_ROWS`; a chunk holding a row
    /// already stored (an earlier batch's, or this batch's own) is undone and goes row by
    /// row, so every repeat is still found, and only it, with the totals right.
    #[test]
    fn repeats_inside_multi_row_chunks_are_found_one_by_one() {
        let (_dir, _path, mut store) = open_temp();
        let already = [5, 37, 70];
        let earlier: Vec<_> = already.iter().map(|&ts| temp("a", ts, 1.0)).collect();
        store.write_batch(&earlier).expect("write");
        // 0..100 at 1.0, but 37 at 2.0 (a conflict), and 90 twice (the second a duplicate
        // of this batch's own row), and a whole chunk of series b that is all new.
        let mut batch: Vec<_> = (0..100)
            .map(|ts| temp("a", ts, if ts == 37 { 2.0 } else { 1.0 }))
            .collect();
        batch.push(temp("a", 90, 1.0));
        batch.extend((0..INSERT_CHUNK_ROWS as i64).map(|ts| temp("b", ts, 1.0)));
        let written = store.write_batch(&batch).expect("write");
        let repeats: Vec<(usize, bool)> = written
            .repeats
            .iter()
            .map(|repeat| (repeat.index, repeat.conflict.is_some()))
            .collect();
        assert_eq!(
            repeats,
            vec![(5, false), (37, true), (70, false), (100, false)]
        );
        assert_eq!(
            written.outcome.inserted,
            97 + INSERT_CHUNK_ROWS as u64,
            "{:?}",
            written.outcome
        );
        store.flush_totals().expect("flush");
        let totals = table_totals(&store.conn);
        assert_eq!(
            totals
                .iter()
                .map(|&(_, readings, first, last)| (readings, first, last))
                .collect::<Vec<_>>(),
            vec![
                (100, Some(0), Some(99)),
                (
                    INSERT_CHUNK_ROWS as i64,
                    Some(0),
                    Some(INSERT_CHUNK_ROWS as i64 - 1)
                )
            ]
        );
        let kept: String = store
            .conn
            .query_row(
                "SELECT fields FROM readings r JOIN series s ON s.id = r.series_id \
                 WHERE s.sensor = 'a' AND r.ts = 37",
                [],
                |row| row.get(0),
            )
            .expect("row 37");
        assert!(kept.contains("1.0") && !kept.contains("2.0"), "kept {kept}");
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
            .expect("write")
            .outcome;
        assert_eq!(
            outcome,
            crate::store::WriteOutcome {
                inserted: 1,
                duplicates: 1,
                conflicts: 0,
            }
        );
    }

    /// The plan of `sql`, one `detail` line per step.
    fn plan(conn: &Connection, sql: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let params = vec![rusqlite::types::Value::Null; stmt.parameter_count()];
        stmt.query_map(params_from_iter(params), |row| row.get::<_, String>(3))
            .expect("plan")
            .collect::<rusqlite::Result<Vec<_>>>()
            .expect("plan rows")
    }

    /// A full pass over the readings table (`SCAN r`, `SCAN readings`, with or without an
    /// index): what no read but an unfiltered query may do.
    fn scans_readings(plan: &[String]) -> bool {
        plan.iter()
            .any(|step| step.starts_with("SCAN r") || step.contains("SCAN readings"))
    }

    /// Counts, stats and latest read the series rows, never every reading.
    #[test]
    fn totals_and_latest_never_scan_the_readings() {
        let (_dir, _path, store) = open_temp();
        for sql in [SENSOR_TOTALS, LATEST_CANDIDATES] {
            let plan = plan(&store.conn, sql);
            assert!(!scans_readings(&plan), "{sql}: {plan:?}");
        }
    }

    /// Every filtered query seeks the readings of the matching series (primary key
    /// ranges) instead of scanning the table.
    #[test]
    fn filtered_queries_never_scan_the_readings() {
        let (_dir, _path, store) = open_temp();
        let some = |s: &str| Some(s.to_string());
        let queries = [
            Query {
                sensor: some("a"),
                ..Query::default()
            },
            Query {
                measurement: some("temp"),
                ..Query::default()
            },
            Query {
                since_ns: Some(1),
                ..Query::default()
            },
            Query {
                until_ns: Some(1),
                limit: Some(10),
                ..Query::default()
            },
            Query {
                sensor: some("a"),
                measurement: some("temp"),
                since_ns: Some(1),
                until_ns: Some(2),
                limit: Some(10),
                newest_first: false,
            },
        ];
        for query in queries {
            let (sql, _) = query_sql(&query);
            let plan = plan(&store.conn, &sql);
            assert!(!scans_readings(&plan), "{query:?}: {plan:?}");
            assert!(
                plan.iter()
                    .any(|step| step.starts_with("SEARCH r USING PRIMARY KEY")),
                "{query:?}: {plan:?}"
            );
        }
        // Newest first: each series' primary key walked backwards, nothing sorted.
        let newest = plan(&store.conn, NEWEST_OF_SERIES);
        assert!(!scans_readings(&newest), "{newest:?}");
        assert!(
            !newest.iter().any(|step| step.contains("TEMP B-TREE")),
            "{newest:?}"
        );
        // The check itself can fail: a full scan is reported as one.
        assert!(scans_readings(&plan(
            &store.conn,
            "SELECT COUNT(*) FROM readings GROUP BY series_id"
        )));
    }

    /// A database written by schema v1 (no totals) opens, migrates, backfills the totals
    /// once, and the writer keeps them from there (duplicates not counted).
    #[test]
    fn v1_database_migrates_and_backfills_totals() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).expect("create v1 file");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.pragma_update(None, "user_version", 1).expect("v1");
            conn.execute_batch(
                "INSERT INTO series (id, key, measurement, sensor, tags) VALUES
                     (1, 'temp,sensor=a', 'temp', 'a', '[[\"sensor\",\"a\"]]'),
                     (2, 'hum,sensor=a', 'hum', 'a', '[[\"sensor\",\"a\"]]'),
                     (3, 'temp,sensor=b', 'temp', 'b', '[[\"sensor\",\"b\"]]');
                 INSERT INTO readings (series_id, ts, received, fields) VALUES
                     (1, 10, 11, '[[\"v\",\"i\",10]]'),
                     (1, 30, 31, '[[\"v\",\"i\",30]]'),
                     (2, 20, 21, '[[\"h\",\"i\",20]]'),
                     (3, 5, 6, '[[\"v\",\"i\",5]]');",
            )
            .expect("v1 rows");
        }
        let mut store = SqliteStore::open(&path, FsyncPolicy::Os).expect("open migrates");
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SqliteStore::schema_version());
        let reader = StoreReader::new(SqliteReader::open(&path).expect("reader"));
        let counts = block_on(reader.counts()).expect("counts");
        assert_eq!(counts.per_sensor, vec![("a".into(), 3), ("b".into(), 1)]);
        let stats = block_on(reader.sensor_stats()).expect("stats");
        assert_eq!((stats[0].first_ns, stats[0].last_ns), (10, 30));
        assert_eq!(
            stats[0].last_fields,
            vec![("v".into(), FieldValue::Int(30))]
        );

        // One new reading and one replay of a v1 row: only the new one counts.
        let mut new = temp("b", 1, 1.0);
        new.reading.fields = vec![("v".into(), FieldValue::Int(1))];
        let mut replay = temp("b", 5, 5.0);
        replay.reading.fields = vec![("v".into(), FieldValue::Int(5))];
        let outcome = store.write_batch(&[replay, new]).expect("write").outcome;
        assert_eq!(outcome.inserted, 1);
        store.flush_totals().expect("flush");
        let stats = block_on(reader.sensor_stats()).expect("stats");
        assert_eq!(
            (stats[1].readings, stats[1].first_ns, stats[1].last_ns),
            (2, 1, 5)
        );
        assert_eq!(stats[1].last_fields, vec![("v".into(), FieldValue::Int(5))]);
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

    /// A reader holding a snapshot does not stall shutdown for the writer's busy timeout:
    /// the checkpoint falls back to PASSIVE; without readers the WAL is truncated.
    #[test]
    fn shutdown_checkpoint_does_not_wait_for_readers() {
        let (_dir, path, mut store) = open_temp();
        store.write_batch(&[temp("a", 1, 1.0)]).expect("write");
        let reader = Connection::open(&path).expect("reader");
        reader
            .execute_batch("BEGIN; SELECT COUNT(*) FROM readings;")
            .expect("hold a snapshot");
        store.write_batch(&[temp("a", 2, 1.0)]).expect("write");
        assert_eq!(
            checkpoint_at_close(&store.conn, "test"),
            Checkpoint::Passive
        );
        reader.execute_batch("COMMIT").expect("let go");
        assert_eq!(
            checkpoint_at_close(&store.conn, "test"),
            Checkpoint::Truncated
        );
        store.close().expect("close");
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
        assert!(store.pending.is_empty() && store.pending_since.is_none());
        let outcome = store
            .write_batch(&[temp("new", 1, 1.0)])
            .expect("write")
            .outcome;
        assert_eq!(outcome.inserted, 1);
        let rows = all_rows(&path);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].sensor, "new");
    }

    /// A stored row that cannot be decoded does not fail the transaction (which may hold
    /// other connections' batches): a repeat of it is refused as a conflict, nothing kept to
    /// show, and the rest of the batch is stored.
    #[test]
    fn an_undecodable_stored_row_makes_a_conflict_not_a_failed_batch() {
        let (_dir, _path, mut store) = open_temp();
        store.write_batch(&[temp("a", 1, 1.0)]).expect("write");
        store
            .conn
            .execute("UPDATE readings SET fields = 'not json'", [])
            .expect("corrupt the row");
        let written = store
            .write_batch(&[temp("b", 1, 2.0), temp("a", 1, 3.0), temp("a", 1, 4.0)])
            .expect("one bad row does not fail the batch");
        assert_eq!(written.outcome.inserted, 1);
        assert_eq!(written.outcome.conflicts, 2);
        let conflict = written.repeats[0].conflict.as_ref().expect("a conflict");
        assert!(conflict.kept.is_empty());
        assert_eq!(conflict.refused, temp("a", 1, 3.0));
        let rows: i64 = store
            .conn
            .query_row("SELECT count(*) FROM readings", [], |row| row.get(0))
            .expect("count");
        assert_eq!(rows, 2);
    }

    /// The series cache is bounded; a series evicted from it is found again in the table
    /// (same id: its readings stay one series, and a resent one is still a duplicate).
    #[test]
    fn series_evicted_from_the_cache_are_found_in_the_table() {
        let (_dir, path, store) = open_temp();
        let mut store = store.with_series_cache(2);
        let batch: Vec<_> = (0..5).map(|i| temp(&format!("s{i}"), 1, 1.0)).collect();
        for stored in &batch {
            assert_eq!(
                store
                    .write_batch(std::slice::from_ref(stored))
                    .expect("write")
                    .outcome
                    .inserted,
                1
            );
        }
        assert_eq!(store.cached_series(), 2);
        let again = store.write_batch(&batch).expect("rewrite").outcome;
        assert_eq!((again.inserted, again.duplicates), (0, 5));
        let more: Vec<_> = (0..5).map(|i| temp(&format!("s{i}"), 2, 1.0)).collect();
        assert_eq!(store.write_batch(&more).expect("write").outcome.inserted, 5);
        assert!(store.cached_series() <= 2);
        let ids: std::collections::BTreeSet<i64> = store
            .conn
            .prepare("SELECT series_id FROM readings")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(ids.len(), 5, "five series, no duplicate series row");
        assert_eq!(all_rows(&path).len(), 10);
    }

    /// A transaction begun ahead (`--fsync os`, after an inline commit) holds nothing: a
    /// write takes it over, a probe, a checkpoint and close end it, a totals flush commits
    /// in it, readers read beside it, and the WAL still restarts after a checkpoint. It is
    /// never begun with `--fsync always`, nor while a checkpoint is due.
    #[test]
    fn a_transaction_begun_ahead_writes_nothing_and_gives_way() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ahead.db");
        let mut store = SqliteStore::open(&path, FsyncPolicy::Os)
            .expect("open")
            .with_totals_flush_interval(Duration::from_secs(3600));
        let open = |store: &SqliteStore| !store.conn.is_autocommit();
        store.begin_next_write();
        assert!(open(&store), "begun ahead");
        store.write_batch(&[temp("a", 1, 1.0)]).expect("write");
        assert!(!open(&store), "the write committed it");
        store.begin_next_write();
        assert_eq!(all_rows(&path).len(), 1, "a reader reads beside it");
        store.probe().expect("probe");
        assert!(!open(&store), "the probe ended it");
        store.begin_next_write();
        store.flush_totals().expect("flush");
        assert!(!open(&store), "the flush committed in it");
        assert_eq!(totals_dirty(&store.conn), 0);
        assert_eq!(table_totals(&store.conn)[0].1, 1);

        // A checkpoint due: nothing begun, the next commit checkpoints the whole WAL.
        store.write_batch(&[temp("a", 2, 1.0)]).expect("write");
        let autocheckpoint = store.checkpoint_frames;
        store.checkpoint_frames = 0;
        store.begin_next_write();
        assert!(!open(&store), "not begun while a checkpoint is due");
        store.write_batch(&[temp("a", 3, 1.0)]).expect("write");
        store.checkpoint_frames = autocheckpoint;
        // Begun ahead of a WAL wholly checkpointed, the next commit restarts the WAL from
        // its first frame (else it would grow without bound).
        store.begin_next_write();
        assert!(open(&store));
        store.write_batch(&[temp("a", 4, 1.0)]).expect("write");
        let frames = store
            .wal_frames
            .as_ref()
            .map(|frames| frames.load(Ordering::Relaxed))
            .expect("--fsync os counts WAL frames");
        assert!(frames <= 2, "the WAL restarted: {frames} frames");

        store.begin_next_write();
        store.close().expect("close");
        assert!(!open(&store), "close ended it");
        assert_eq!(totals_dirty(&store.conn), 0);
        drop(store);
        let reader = StoreReader::new(SqliteReader::open(&path).expect("reader"));
        assert_eq!(block_on(reader.counts()).expect("counts").total, 4);

        let mut always =
            SqliteStore::open(&dir.path().join("always.db"), FsyncPolicy::Always).expect("open");
        always.begin_next_write();
        assert!(!open(&always), "--fsync always begins nothing ahead");
    }

    #[test]
    fn fsync_os_checkpoints_on_the_writer_thread_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ckpt.db");
        let mut store = SqliteStore::open(&path, FsyncPolicy::Os).expect("open");
        // The schema's own commits are in the WAL already; four more frames make it due.
        let after_open = store
            .wal_frames
            .as_ref()
            .map(|frames| frames.load(Ordering::Relaxed))
            .expect("--fsync os counts WAL frames");
        store.checkpoint_frames = i64::from(after_open) + 4;
        assert!(store.commits_without_waiting(), "nothing due yet");
        let mut ts = 0;
        // Commits grow the WAL until a checkpoint is due: then no commit may run inline.
        while store.commits_without_waiting() {
            ts += 1;
            assert!(ts < 100, "the WAL hook never reported a due checkpoint");
            store.write_batch(&[temp("a", ts, 1.0)]).expect("write");
        }
        assert!(store.checkpoint_due());
        // The next commit (on the writer thread) checkpoints after it: inline again.
        store.write_batch(&[temp("a", ts + 1, 1.0)]).expect("write");
        assert!(!store.checkpoint_due(), "checkpointed after the commit");
        assert!(store.commits_without_waiting());
        // Everything was checkpointed: the database file alone has every row.
        let backfilled: (i64, i64, i64) = store
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        assert_eq!(backfilled.0, 0, "not blocked");
        assert_eq!(
            backfilled.1, backfilled.2,
            "every WAL frame is in the database"
        );
        assert_eq!(all_rows(&path).len() as i64, ts + 1);
        // `--fsync always` keeps SQLite's own checkpoint and never commits inline.
        let always =
            SqliteStore::open(&dir.path().join("always.db"), FsyncPolicy::Always).expect("open");
        assert!(!always.commits_without_waiting());
        assert!(!always.checkpoint_due());
    }

    /// (readings, first ts, last ts) per series id, as the series table has them.
    fn table_totals(conn: &Connection) -> Vec<(i64, i64, Option<i64>, Option<i64>)> {
        conn.prepare("SELECT id, readings, first_ts, last_ts FROM series ORDER BY id")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    fn totals_dirty(conn: &Connection) -> i64 {
        conn.query_row(READ_TOTALS_DIRTY, [], |r| r.get(0))
            .expect("dirty flag")
    }

    /// Two series over three batches, with duplicates within and across batches:
    /// (series 1: ts 1..=3 and 10, series 2: ts 5).
    fn write_three_batches(store: &mut SqliteStore) {
        let batches = [
            vec![temp("a", 2, 1.0), temp("a", 1, 1.0), temp("a", 2, 9.0)],
            vec![temp("b", 5, 1.0), temp("a", 3, 1.0), temp("a", 1, 1.0)],
            vec![temp("a", 10, 1.0), temp("b", 5, 2.0)],
        ];
        let inserted: u64 = batches
            .iter()
            .map(|batch| store.write_batch(batch).expect("write").outcome.inserted)
            .sum();
        assert_eq!(inserted, 5);
    }

    const EXACT: [(i64, i64, Option<i64>, Option<i64>); 2] =
        [(1, 4, Some(1), Some(10)), (2, 1, Some(5), Some(5))];

    /// Within the interval the deltas stay in memory (the per-commit path writes no
    /// series row); close folds them all in, duplicates never counted, and marks clean.
    #[test]
    fn deltas_reach_the_table_by_close() {
        let (_dir, path, store) = open_temp();
        let mut store = store.with_totals_flush_interval(Duration::from_secs(3600));
        assert_eq!(totals_dirty(&store.conn), 0);
        write_three_batches(&mut store);
        let before = table_totals(&store.conn);
        assert!(before.iter().all(|t| t.1 == 0), "{before:?}");
        assert_eq!(totals_dirty(&store.conn), 1);
        assert!(store.idle_deadline().is_some());
        store.close().expect("close");
        assert_eq!(table_totals(&store.conn), EXACT);
        assert_eq!(totals_dirty(&store.conn), 0);
        assert_eq!(store.idle_deadline(), None);
        drop(store);
        let reader = StoreReader::new(SqliteReader::open(&path).expect("reader"));
        assert_eq!(block_on(reader.counts()).expect("counts").total, 5);
    }

    /// A zero interval folds in every write; the idle hook flushes and marks clean.
    #[test]
    fn zero_interval_folds_every_write_and_idle_marks_clean() {
        let (_dir, _path, store) = open_temp();
        let mut store = store.with_totals_flush_interval(Duration::ZERO);
        write_three_batches(&mut store);
        assert_eq!(table_totals(&store.conn), EXACT);
        assert!(store.pending.is_empty());
        assert_eq!(totals_dirty(&store.conn), 1);
        store.idle().expect("idle");
        assert_eq!(totals_dirty(&store.conn), 0);
        // The next write marks dirty again before anything is left in memory.
        let mut store = store.with_totals_flush_interval(Duration::from_secs(3600));
        store.write_batch(&[temp("a", 11, 1.0)]).expect("write");
        assert_eq!(totals_dirty(&store.conn), 1);
    }

    /// Past the interval, the next write folds the pending deltas into its transaction.
    #[test]
    fn a_write_past_the_interval_folds_the_deltas() {
        let (_dir, _path, mut store) = open_temp();
        write_three_batches(&mut store);
        assert!(table_totals(&store.conn).iter().all(|t| t.1 == 0));
        // As if the interval had run out (no sleep).
        store.pending_since = store
            .pending_since
            .map(|since| since - TOTALS_FLUSH_INTERVAL);
        store.write_batch(&[temp("b", 7, 1.0)]).expect("write");
        assert_eq!(
            table_totals(&store.conn),
            [(1, 4, Some(1), Some(10)), (2, 2, Some(5), Some(7))]
        );
        assert!(store.pending.is_empty() && store.pending_since.is_none());
    }

    /// A writer dropped without close (a crash) leaves the flag set; the next open recounts
    /// exactly, and a clean close after that needs no recount.
    #[test]
    fn crash_before_flush_recounts_at_open() {
        let (_dir, path, store) = open_temp();
        let mut store = store.with_totals_flush_interval(Duration::from_secs(3600));
        write_three_batches(&mut store);
        drop(store);
        let store = SqliteStore::open(&path, FsyncPolicy::Os).expect("reopen");
        assert_eq!(table_totals(&store.conn), EXACT);
        assert_eq!(totals_dirty(&store.conn), 0);
        // Wrong totals with a clean flag stay as they are: proves the recount above was
        // driven by the flag, not done at every open.
        store
            .conn
            .execute("UPDATE series SET readings = 99 WHERE id = 1", [])
            .expect("corrupt totals");
        drop(store);
        let store = SqliteStore::open(&path, FsyncPolicy::Os).expect("reopen");
        assert_eq!(table_totals(&store.conn)[0].1, 99);
        store
            .conn
            .execute(SET_TOTALS_DIRTY, [1])
            .expect("simulate a crash");
        drop(store);
        let store = SqliteStore::open(&path, FsyncPolicy::Os).expect("reopen");
        assert_eq!(table_totals(&store.conn), EXACT);
    }

    /// A v2 file gets the meta table, clean.
    #[test]
    fn v2_database_migrates_to_meta() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v2.db");
        {
            let conn = Connection::open(&path).expect("create v2 file");
            conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
            conn.execute_batch(MIGRATIONS[1]).expect("v2 schema");
            conn.pragma_update(None, "user_version", 2).expect("v2");
        }
        let store = SqliteStore::open(&path, FsyncPolicy::Os).expect("open migrates");
        assert_eq!(totals_dirty(&store.conn), 0);
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

    /// More reads at once than [`MAX_READERS`]: all complete, never more than
    /// `MAX_READERS` run at once nor are connections opened.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_are_bounded() {
        let (_dir, path, mut store) = open_temp();
        store.write_batch(&[temp("a", 1, 1.0)]).expect("write");
        let reader = SqliteReader::open(&path).expect("reader");
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..4 * MAX_READERS {
            let reader = reader.clone();
            reads.spawn(async move {
                reader
                    .run("slow read", |conn, location| {
                        // Long enough that unbounded reads would overlap.
                        std::thread::sleep(Duration::from_millis(20));
                        conn.query_row("SELECT COUNT(*) FROM series", [], |r| r.get::<_, i64>(0))
                            .map_err(|err| sqlite_error(location, "slow read", err))
                    })
                    .await
            });
        }
        while let Some(read) = reads.join_next().await {
            assert_eq!(read.expect("read task").expect("read"), 1);
        }
        let pool = &reader.pool;
        let peak = pool.peak_running.load(Ordering::SeqCst);
        assert!((1..=MAX_READERS).contains(&peak), "peak {peak}");
        let opened = pool.opened.load(Ordering::SeqCst);
        assert!(opened <= MAX_READERS, "opened {opened}");
        assert_eq!(pool.running.load(Ordering::SeqCst), 0);
    }

    /// Dropping a read future interrupts its statement; the connection serves the next
    /// read normally.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_read_is_interrupted() {
        let (_dir, path, mut store) = open_temp();
        store.write_batch(&[temp("a", 1, 1.0)]).expect("write");
        store.flush_totals().expect("flush");
        let reader = SqliteReader::open(&path).expect("reader");
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (ended_tx, ended_rx) = std::sync::mpsc::channel();
        let read = {
            let reader = reader.clone();
            tokio::spawn(async move {
                reader
                    .run("endless read", move |conn, _| {
                        // Billions of rows: it ends in time only if interrupted.
                        let mut stmt = conn
                            .prepare(
                                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL \
                                 SELECT x + 1 FROM c WHERE x < 4000000000) SELECT x FROM c",
                            )
                            .expect("prepare");
                        let mut rows = stmt.query([]).expect("query");
                        // The statement is running (a row is out) before we say so, so
                        // the interrupt cannot arrive before it starts.
                        let first = rows.next().map(|row| row.is_some());
                        let _ = started_tx.send(first.is_ok());
                        let end = loop {
                            match rows.next() {
                                Ok(Some(_)) => continue,
                                Ok(None) => break None,
                                Err(err) => break err.sqlite_error_code(),
                            }
                        };
                        let _ = ended_tx.send(end);
                        Ok(())
                    })
                    .await
            })
        };
        let started = tokio::task::spawn_blocking(move || started_rx.recv_timeout(HANG))
            .await
            .expect("join");
        assert_eq!(started, Ok(true), "the read started");
        read.abort();
        let ended = tokio::task::spawn_blocking(move || ended_rx.recv_timeout(HANG))
            .await
            .expect("join");
        assert_eq!(ended, Ok(Some(ErrorCode::OperationInterrupted)));
        // The interrupted connection goes back to the pool and reads normally.
        let reader = StoreReader::new(reader);
        assert_eq!(reader.counts().await.expect("counts").total, 1);
    }

    /// Readers have connections of their own: an open write transaction neither blocks
    /// them nor shows them its rows.
    #[test]
    fn reader_reads_beside_an_open_write_transaction() {
        let (_dir, path, mut store) = open_temp();
        store.write_batch(&[temp("a", 1, 1.0)]).expect("write");
        store.flush_totals().expect("flush");
        let reader = StoreReader::new(SqliteReader::open(&path).expect("reader"));
        store
            .conn
            .execute_batch("BEGIN IMMEDIATE")
            .expect("hold the write lock");
        store
            .conn
            .execute_batch(
                "INSERT INTO readings (series_id, ts, received, fields) \
                 SELECT series_id, 2, 2, fields FROM readings; \
                 UPDATE series SET readings = readings + 1, last_ts = 2;",
            )
            .expect("uncommitted row");
        let counts = block_on(reader.counts()).expect("reads while the writer holds its lock");
        assert_eq!(counts.total, 1);
        store.conn.execute_batch("COMMIT").expect("commit");
        assert_eq!(block_on(reader.counts()).expect("counts").total, 2);
    }
}
