//! The raw SQLite ceiling (issue 13): how many readings per second rusqlite alone inserts
//! into our schema, one writer thread, at a given number of rows per transaction, with the
//! settings our store uses for `--fsync always`. `sensorlink server --store sqlite:…
//! --fsync always` is measured against it at the same rows per transaction (bench/influx.sh),
//! so the cost of our pipeline around the store engine is a figure.
//!
//! What it mirrors, and why:
//! - Schema: made by `SqliteStore::open` itself (the store's own migrations), then the store
//!   is dropped, so the table layout cannot drift from the store's.
//! - Pragmas: the store's writer connection sets them per connection (they are not kept in
//!   the file), so they are repeated here and must follow `src/store/sqlite.rs`
//!   (`SqliteStore::open`): WAL, synchronous=FULL (`--fsync always`), cache_size 64 MiB,
//!   wal_autocheckpoint 10,000 pages, busy_timeout 5 s.
//! - Per reading: what the store does once its series id is cached (the writer caches them,
//!   `sqlite/series_cache.rs`): encode the fields with `encode_fields` and run the prepared
//!   `INSERT … ON CONFLICT DO NOTHING`, rows in (series, ts) order inside one
//!   `BEGIN IMMEDIATE` … `COMMIT`: 32 rows per statement under a savepoint, through the
//!   store's own `insert_reading_rows`, and the rest of a transaction one row each. The
//!   series rows are created before the clock starts, keyed as the store keys them. Not
//!   mirrored: the store's occasional fold of its per-series totals (at most once a
//!   second) and its dirty flag (once per writer).
//! - Per transaction the SQLite work is the same as the store's (strace, one row per
//!   transaction: one `fsync` of the WAL, two `pwrite`s, six lock `fcntl`s each). What a
//!   server adds cannot be mirrored here: a loopback round trip and two thread hand-offs
//!   per sync (≈ 0.1 ms pinned), so at one row per transaction, fsync time `t`, the server
//!   can reach at most `t ÷ (t + 0.1 ms)` of this ceiling (≈ 80 % at `t` = 0.4 ms).
//! - Readings: shaped like `sensorlink bench`'s (`src/bench/line.rs`): measurement `bench`,
//!   tag `sensor=bench-<i>` (one series per connection), float fields `f0…` with short
//!   values, timestamps +1 ns per reading of a series. A transaction's rows are spread
//!   evenly over `--series` series (our group commit merges the syncs of several
//!   connections into one transaction).
//!
//! Run: `cargo bench --bench sqlite_ceiling -- --rows-per-txn N --seconds S --db PATH`
//! (`--series K`, `--fields F`, `--warmup W` optional); prints one JSON line. `PATH` must
//! not exist: every run starts from a fresh database. Without `--bench` (which `cargo bench`
//! passes), as under `cargo test --all-targets`, it runs a few transactions in a temporary
//! directory and checks every row landed, so the test suite stays fast.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use rusqlite::{Connection, TransactionBehavior};
use sensorlink::protocol::{FieldValue, Reading};
use sensorlink::store::encoding::{encode_fields, encode_tags, write_reading_series_key};
use sensorlink::store::sqlite::{insert_reading_rows, ReadingRow, SqliteStore, INSERT_CHUNK_ROWS};
use sensorlink::store::FsyncPolicy;

/// The store's pragmas (`SqliteStore::open`): page cache in KiB, WAL pages between
/// automatic checkpoints, and how long a writer waits for a lock.
const CACHE_KIB: i64 = 64 * 1024;
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The store's statements (`src/store/sqlite.rs`), word for word.
const INSERT_SERIES: &str =
    "INSERT INTO series (key, measurement, sensor, tags) VALUES (?1, ?2, ?3, ?4)";
const INSERT_READING: &str = "INSERT INTO readings (series_id, ts, received, fields) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING";

/// `sensorlink bench`'s default measurement.
const MEASUREMENT: &str = "bench";

#[derive(Debug, Parser)]
#[command(about = "Raw SQLite ingest ceiling: rusqlite alone, our schema and pragmas")]
struct Args {
    /// Rows in each transaction.
    #[arg(long, default_value_t = 1)]
    rows_per_txn: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of inserts before the measurement (into the same database).
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// The database file; must not exist.
    #[arg(long)]
    db: Option<PathBuf>,
    /// Series a transaction's rows are spread over (connections, for `sensorlink bench`).
    #[arg(long, default_value_t = 1)]
    series: usize,
    /// Float fields per reading (`sensorlink bench --fields`).
    #[arg(long, default_value_t = 1)]
    fields: usize,
    /// Stop after this many measured transactions, whatever `--seconds` says.
    #[arg(long)]
    txns: Option<u64>,
    /// Passed by `cargo bench`; without it the binary only checks itself (`cargo test`).
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one measured run did.
#[derive(Debug, Default)]
struct Tally {
    rows: u64,
    txns: u64,
    elapsed: Duration,
}

/// The writer: one connection, the series ids, and where each series' timestamps are.
struct Writer {
    conn: Connection,
    series: Vec<i64>,
    next_ts: Vec<i64>,
    /// Readings written so far (drives the field values, as `LineEncoder` does).
    n: u64,
    fields: Vec<(String, FieldValue)>,
    text: String,
    /// A chunk's encoded fields, one buffer per row.
    texts: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.rows_per_txn >= 1, "--rows-per-txn must be at least 1");
    ensure!(args.series >= 1, "--series must be at least 1");
    ensure!(
        (1..=100).contains(&args.fields),
        "--fields must be 1 to 100"
    );
    ensure!(
        args.seconds > 0.0 && args.warmup >= 0.0,
        "--seconds must be > 0 and --warmup ≥ 0"
    );
    if !args.bench {
        return self_check();
    }
    let Some(db) = args.db.as_deref() else {
        bail!("--db PATH is required (a file that does not exist yet)");
    };
    ensure!(
        !db.exists(),
        "{}: exists; every run starts from a fresh database",
        db.display()
    );
    let mut writer = Writer::open(db, args.series, args.fields)?;
    if args.warmup > 0.0 {
        writer.run(
            args.rows_per_txn,
            Duration::from_secs_f64(args.warmup),
            None,
        )?;
    }
    let tally = writer.run(
        args.rows_per_txn,
        Duration::from_secs_f64(args.seconds),
        args.txns,
    )?;
    let seconds = tally.elapsed.as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "rows_per_txn": args.rows_per_txn,
            "rows": tally.rows,
            "seconds": seconds,
            "rows_per_sec": tally.rows as f64 / seconds,
            "txns": tally.txns,
            "series": args.series,
            "fields": args.fields,
            "warmup_s": args.warmup,
            "synchronous": "FULL",
        })
    );
    Ok(())
}

/// `cargo test --all-targets` runs benches without `--bench`: a few small transactions in
/// a temporary directory, then every row and series must be in the file.
fn self_check() -> Result<()> {
    let dir = tempfile::tempdir().context("temporary directory")?;
    let path = dir.path().join("ceiling.db");
    let (rows_per_txn, txns, series) = (7, 5, 3);
    let mut writer = Writer::open(&path, series, 2)?;
    let tally = writer.run(rows_per_txn, Duration::from_secs(3600), Some(txns))?;
    ensure!(
        tally.txns == txns && tally.rows == txns * rows_per_txn as u64,
        "ran {tally:?}, expected {txns} transactions of {rows_per_txn} rows"
    );
    drop(writer);
    let conn = Connection::open(&path).context("reopen")?;
    let (stored, distinct): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT series_id) FROM readings",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .context("count rows")?;
    ensure!(
        u64::try_from(stored) == Ok(tally.rows) && usize::try_from(distinct) == Ok(series),
        "stored {stored} rows in {distinct} series, wrote {} in {series}",
        tally.rows
    );
    println!("sqlite_ceiling: self-check ok ({stored} rows; `cargo bench --bench sqlite_ceiling -- --help` to measure)");
    Ok(())
}

impl Writer {
    /// A fresh database at `path` with the store's schema, the store's pragmas on one
    /// writer connection, and `series` series rows.
    fn open(path: &Path, series: usize, fields: usize) -> Result<Self> {
        // The store creates its schema (and WAL mode, which the file keeps); dropped at
        // once, which also releases its writer lock.
        drop(
            SqliteStore::open(path, FsyncPolicy::Always)
                .with_context(|| format!("{}: create the store's schema", path.display()))?,
        );
        let conn = Connection::open(path).with_context(|| format!("open {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT).context("busy timeout")?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .context("journal mode")?;
        ensure!(mode == "wal", "journal mode is {mode}, not wal");
        conn.pragma_update(None, "synchronous", "FULL")
            .context("synchronous")?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)
            .context("cache size")?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .context("wal autocheckpoint")?;
        let mut ids = Vec::with_capacity(series);
        {
            let mut insert = conn.prepare(INSERT_SERIES).context("prepare series")?;
            let mut key = String::new();
            for i in 0..series {
                let sensor = format!("bench-{i}");
                let reading = Reading {
                    measurement: MEASUREMENT.into(),
                    tags: vec![("sensor".into(), sensor.clone())],
                    fields: Vec::new(),
                    timestamp_ns: None,
                };
                // Scratch pairs borrow this reading: one Vec per series, before the clock.
                let mut pairs = Vec::new();
                write_reading_series_key(&mut key, &mut pairs, &reading, &sensor);
                insert
                    .execute(rusqlite::params![
                        key,
                        MEASUREMENT,
                        sensor,
                        encode_tags(&reading.tags)
                    ])
                    .context("insert series")?;
                ids.push(conn.last_insert_rowid());
            }
        }
        let start_ns = now_ns()?;
        Ok(Writer {
            conn,
            next_ts: vec![start_ns; series],
            series: ids,
            n: 0,
            fields: (0..fields)
                .map(|f| (format!("f{f}"), FieldValue::Float(0.0)))
                .collect(),
            text: String::new(),
            texts: vec![String::new(); INSERT_CHUNK_ROWS],
        })
    }

    /// Transactions of `rows_per_txn` rows until `duration` has passed or `max_txns` are
    /// committed.
    fn run(
        &mut self,
        rows_per_txn: usize,
        duration: Duration,
        max_txns: Option<u64>,
    ) -> Result<Tally> {
        let mut tally = Tally::default();
        let start = Instant::now();
        while start.elapsed() < duration && max_txns.is_none_or(|max| tally.txns < max) {
            tally.rows += self.transaction(rows_per_txn)?;
            tally.txns += 1;
        }
        tally.elapsed = start.elapsed();
        Ok(tally)
    }

    /// One transaction: `rows` rows spread evenly over the series, in (series, ts) order as
    /// the store sorts them; returns the rows inserted.
    fn transaction(&mut self, rows: usize) -> Result<u64> {
        let received = now_ns()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context("begin")?;
        let mut inserted = 0;
        {
            let mut insert = tx
                .prepare_cached(INSERT_READING)
                .context("prepare insert")?;
            let per = rows / self.series.len();
            let extra = rows % self.series.len();
            // The rows in order, then inserted as the store inserts them: whole chunks by
            // `insert_reading_rows`, the rest one by one.
            let mut keys = Vec::with_capacity(rows);
            for (s, &series_id) in self.series.iter().enumerate() {
                for _ in 0..per + usize::from(s < extra) {
                    keys.push((series_id, self.next_ts[s]));
                    self.next_ts[s] += 1;
                }
            }
            let mut chunks = keys.chunks_exact(INSERT_CHUNK_ROWS);
            for chunk in chunks.by_ref() {
                for text in self.texts.iter_mut().take(chunk.len()) {
                    encode_fields(text, reading_fields(&mut self.fields, self.n));
                    self.n += 1;
                }
                let rows: Vec<ReadingRow<'_>> = chunk
                    .iter()
                    .zip(self.texts.iter())
                    .map(|(&(series_id, ts), text)| (series_id, ts, received, text.as_str()))
                    .collect();
                ensure!(
                    insert_reading_rows(&tx, &rows).context("insert readings")?,
                    "a fresh database already held one of the rows"
                );
                inserted += rows.len() as u64;
            }
            for &(series_id, ts) in chunks.remainder() {
                encode_fields(&mut self.text, reading_fields(&mut self.fields, self.n));
                self.n += 1;
                inserted += insert
                    .execute(rusqlite::params![series_id, ts, received, self.text])
                    .context("insert reading")? as u64;
            }
        }
        tx.commit().context("commit")?;
        Ok(inserted)
    }
}

/// Reading `n`'s field values, as `LineEncoder` makes them: varying per reading and field,
/// short floats.
fn reading_fields(fields: &mut [(String, FieldValue)], n: u64) -> &[(String, FieldValue)] {
    for (f, (_, value)) in fields.iter_mut().enumerate() {
        let v = n.wrapping_mul(31).wrapping_add(f as u64 * 7) % 10_000;
        *value = FieldValue::Float(v as f64 / 10.0);
    }
    fields
}

/// Wall-clock nanoseconds since the epoch (timestamps and receive times, as the store's).
fn now_ns() -> Result<i64> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    i64::try_from(since.as_nanos()).context("the clock is past 2262")
}
