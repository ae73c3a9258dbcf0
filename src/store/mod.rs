//! Where readings go, and how they are read back.
//!
//! Two seams, both backend-neutral:
//! - **Writing**: connections never touch a store directly. They hand batches to a
//!   [`writer::StoreHandle`] and get a commit receipt; an `ack` (or a legacy `pong`) is
//!   sent only once the receipt says the batch is committed. How a store is driven behind
//!   that handle is chosen by its opener ([`Drive`]): SQLite is a blocking [`Store`] behind
//!   one group-commit writer thread; the memory store is written by the submitting task.
//!   A store with its own concurrency ([`postgres`]: several commits in flight over a
//!   pool) implements the handle's seam itself ([`writer::ConcurrentStore`]).
//! - **Reading**: a [`StoreReader`] (cloneable, `Send + Sync`, async) answers queries,
//!   latest reading per sensor and counts from committed data, never through the writer:
//!   SQLite reads over its own read-only connections, PostgreSQL over a small pool of its
//!   own, memory reads its shared state. The
//!   running server hands one out, and `sensorlink query`/`stats` use the same functions.
//!
//! [`encoding`] holds the series identity and the stored field format; every store
//! implementation passes the same conformance suite (`conformance.rs`).
//!
//! Adding a store is one new module: a [`writer::ConcurrentStore`] (or a blocking
//! [`Store`]) for writing, a [`ReadStore`] for reading, errors mapped to [`StoreError`]
//! (`Unavailable` when the database is out of reach), then a [`StoreUrl`] variant, an arm
//! in [`open_async`] (and [`open`] if it opens without a runtime) and [`open_reader`], and
//! one `conformance!` line.

pub mod encoding;
pub mod memory;
pub mod postgres;
mod read;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod testing;
pub mod writer;

#[cfg(test)]
mod conformance;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::protocol::{FieldValue, Reading};

pub use read::{BoxFuture, ReadStore, StoreReader};

/// A reading as the server received it, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReading {
    /// The reading; its `timestamp_ns` is always `Some` here (receive time filled in).
    pub reading: Reading,
    /// The sensor name: the `sensor` tag if the reading has one, else the peer's IP address.
    pub sensor: String,
    /// When the server received it, in ns since the Unix epoch.
    pub received_ns: i64,
}

impl StoredReading {
    /// The reading's timestamp (always set for a stored reading).
    pub fn timestamp_ns(&self) -> i64 {
        self.reading.timestamp_ns.unwrap_or(self.received_ns)
    }
}

/// What one committed batch did. Each reading is exactly one of the three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// New rows.
    pub inserted: u64,
    /// Readings whose series and timestamp were already stored with the same fields (a
    /// harmless replay, e.g. a client resending after a lost ack): not stored twice.
    pub duplicates: u64,
    /// Readings whose series and timestamp were already stored with *other* fields: refused,
    /// the stored reading is kept (the first writer wins; the sender must be told).
    pub conflicts: u64,
}

impl WriteOutcome {
    /// Readings of the batch, whatever became of them.
    pub fn readings(&self) -> u64 {
        self.inserted + self.duplicates + self.conflicts
    }
}

/// A reading of a batch that was not stored: its series and timestamp were already stored
/// (by an earlier batch, or earlier in the same batch).
#[derive(Debug, Clone, PartialEq)]
pub struct Repeat {
    /// Its index in the batch as submitted.
    pub index: usize,
    /// `None`: the stored fields are the same (a duplicate). `Some`: a conflict.
    pub conflict: Option<Box<Conflict>>,
}

/// What a conflict log line shows (built only for conflicts, which are rare: the store's
/// cost stays on the repeats).
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    /// The fields the store kept (the stored reading's); empty if the stored row cannot be
    /// decoded (a corrupt file: warned about by the store).
    pub kept: Vec<(String, FieldValue)>,
    /// The reading refused.
    pub refused: StoredReading,
}

/// What [`Store::write_batch`] did: the totals, and which readings were not stored (so a
/// transaction holding many connections' batches can tell each batch its own).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub outcome: WriteOutcome,
    /// Every reading not stored, by ascending `index`; empty when all were inserted (the
    /// common case costs nothing).
    pub repeats: Vec<Repeat>,
}

impl Written {
    /// Count one reading not stored.
    pub fn repeat(&mut self, index: usize, conflict: Option<Box<Conflict>>) {
        if conflict.is_some() {
            self.outcome.conflicts += 1;
        } else {
            self.outcome.duplicates += 1;
        }
        self.repeats.push(Repeat { index, conflict });
    }
}

/// Filters for reading data back; `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub sensor: Option<String>,
    pub measurement: Option<String>,
    /// Inclusive lower bound on the reading's timestamp, ns since the epoch.
    pub since_ns: Option<i64>,
    /// Exclusive upper bound on the reading's timestamp, ns since the epoch.
    pub until_ns: Option<i64>,
    pub limit: Option<u64>,
    /// Newest first (greatest timestamp, then latest series) instead of oldest first: "the
    /// most recent N readings" without reading and sorting every match.
    pub newest_first: bool,
}

/// One stored reading as read back (one row per reading, all its fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub measurement: String,
    pub sensor: String,
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, FieldValue)>,
    pub timestamp_ns: i64,
    pub received_ns: i64,
}

/// Per-sensor summary for `sensorlink stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorStats {
    pub sensor: String,
    pub readings: u64,
    pub first_ns: i64,
    pub last_ns: i64,
    /// Fields of the most recent reading.
    pub last_fields: Vec<(String, FieldValue)>,
}

/// How many readings are stored, in all and per sensor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: u64,
    /// (sensor, readings), sorted by sensor.
    pub per_sensor: Vec<(String, u64)>,
}

/// Why a store operation failed. Backend errors are carried as text with their context
/// (which store, which operation), so no backend's error type leaks into this API.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend refused an operation; retrying the same thing will fail the same way.
    #[error("store {location}: {operation}: {detail}")]
    Backend {
        /// Path or URL (without credentials) of the store.
        location: String,
        operation: &'static str,
        detail: String,
    },
    /// The backend is (for now) out of reach: locked, busy, or the database went away.
    /// The same operation may succeed later; see [`StoreError::is_transient`].
    #[error("store {location} unavailable: {operation}: {detail}")]
    Unavailable {
        location: String,
        operation: &'static str,
        detail: String,
    },
    #[error("store {location}: schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew {
        location: String,
        found: i64,
        known: i64,
    },
    #[error(
        "store {location}: schema version {found} is older than this build's ({known}); \
         run `sensorlink server` on it once to migrate"
    )]
    SchemaTooOld {
        location: String,
        found: i64,
        known: i64,
    },
    #[error(
        "store {location} is in use by another sensorlink server (it holds {lock}); \
         one writer per database"
    )]
    InUse { location: String, lock: PathBuf },
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid {option} {value:?}: expected {expected}")]
    InvalidOption {
        option: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A backend's failure with its context: [`StoreError::Unavailable`] when `transient`
    /// (retry later), else [`StoreError::Backend`].
    pub fn from_backend(
        transient: bool,
        location: String,
        operation: &'static str,
        detail: String,
    ) -> Self {
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

    /// Whether the failure may go away by itself (retry later, report not-ready meanwhile)
    /// rather than being a lasting fault.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// The write side of a place readings are kept. Used by one writer at a time.
///
/// Reads go through the store's [`StoreReader`], never through this trait.
pub trait Store: Send {
    /// Store `batch` atomically (one transaction). When this returns `Ok`, every reading of
    /// the batch is stored as durably as the store promises. A reading whose series
    /// (measurement + tags, see [`encoding`]) and timestamp are already stored is not
    /// stored again: it is reported in [`Written::repeats`], as a duplicate when the
    /// stored fields encode to the same text ([`encoding::encode_fields`]; the receive
    /// time is not compared), as a conflict otherwise.
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<Written, StoreError>;

    /// [`Store::write_batch`] of `parts` one after the other, in one transaction, with
    /// [`Written::repeats`] indexed across the parts as if they were one batch. The group
    /// commit merges several connections' batches through this, so a store that reads
    /// the parts in place (SQLite) spares moving every reading into one vector; the
    /// readings then go back to their connections and are freed by the thread that
    /// allocated them. Default: the parts copied into one batch.
    fn write_parts(&mut self, parts: &[&[StoredReading]]) -> Result<Written, StoreError> {
        match parts {
            [one] => self.write_batch(one),
            _ => self.write_batch(&parts.concat()),
        }
    }

    /// When the store wants [`Store::idle`] called if no batch has come by then (e.g. to
    /// fold bookkeeping it buffers between writes into the database); `None`: never.
    /// Only the group-commit writer thread honours it.
    fn idle_deadline(&self) -> Option<std::time::Instant> {
        None
    }

    /// Called by the group-commit writer once [`Store::idle_deadline`] has passed with no
    /// batch to write. An error is logged; the writer goes on.
    fn idle(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the store would accept a write now, without writing anything (e.g. take
    /// the write lock and let it go). The group-commit writer calls it about once a second
    /// while no batch comes, so `/readyz` notices a broken store before a reading does and
    /// a recovered one before traffic returns (a balancer gating on `/readyz` sends none).
    fn probe(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether a commit never waits for the disk (no fsync, no network): then the
    /// group-commit route lets a submitting task commit its batch itself while the writer
    /// thread has nothing queued, saving two thread hand-offs per round trip. A store that
    /// syncs each commit answers `false` (the default): its commits stay on the writer
    /// thread, off the async workers. Asked again under the store's lock before each such
    /// commit: a store answers `false` while slow maintenance is due (a checkpoint), so the
    /// writer thread does that commit and the maintenance with it.
    fn commits_without_waiting(&self) -> bool {
        false
    }

    /// Get ready for the next write now, off the round trip: the inline route calls it
    /// once a commit it ran is answered (after the ack is written, while the sender sends
    /// its next reading), if the store's lock is free. E.g. SQLite begins the next
    /// transaction, taking the WAL's locks. It must write nothing: whatever comes next
    /// (a write, a probe, idle work, close) finds the store as it would have. Default: no-op.
    fn begin_next_write(&mut self) {}

    /// Flush anything buffered and release the store; called once at shutdown.
    fn close(&mut self) -> Result<(), StoreError>;
}

/// How a store's writes must be driven: the opener decides, the [`Store`] trait does not.
pub enum Drive {
    /// A blocking store with one writer: one group-commit thread owns it and merges the
    /// batches of every connection into one transaction (SQLite).
    GroupCommit(Box<dyn Store>),
    /// A store that never blocks (no disk, no network): each submitting task writes its
    /// batch itself under a lock, saving two thread hand-offs per round trip (memory).
    Inline(Box<dyn Store>),
    /// A store that commits several batches at once on its own (a connection pool): it
    /// implements the submit seam itself.
    Concurrent(std::sync::Arc<dyn writer::ConcurrentStore>),
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Drive::GroupCommit(_) => "Drive::GroupCommit",
            Drive::Inline(_) => "Drive::Inline",
            Drive::Concurrent(_) => "Drive::Concurrent",
        })
    }
}

/// An open store: how to write it, and a reader of what it has committed.
#[derive(Debug)]
pub struct OpenStore {
    pub drive: Drive,
    pub reader: StoreReader,
}

/// Where to store, parsed from `--store`: `memory`, `sqlite:PATH`, or
/// `postgres://USER@HOST:PORT/DB` (also `postgresql://`).
///
/// Its `Display` and `Debug` (used in logs, errors and `--print-config`) never show a
/// password: a PostgreSQL URL prints through [`redact_url`]; the password comes from the
/// URL as given or from `PGPASSWORD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StoreUrl {
    Memory,
    Sqlite(PathBuf),
    Postgres(postgres::PgUrl),
}

impl std::str::FromStr for StoreUrl {
    type Err = StoreError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        if url == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err(StoreError::InvalidUrl {
                    url: url.to_string(),
                    reason: "sqlite: needs a path, e.g. sqlite:./sensorlink.db".into(),
                });
            }
            // SQLite's in-memory database is private to one connection: the readers would
            // open another, empty one.
            if path == ":memory:" || path.starts_with("file::memory:") {
                return Err(StoreError::InvalidUrl {
                    url: url.to_string(),
                    reason: "an in-memory SQLite database cannot be read beside its writer; \
                             use `memory` for a store in memory"
                        .into(),
                });
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if postgres::PgUrl::is_postgres(url) {
            return postgres::PgUrl::parse(url).map(StoreUrl::Postgres);
        }
        Err(StoreError::InvalidUrl {
            // A mistyped database URL may carry a password: never echo it.
            url: redact_url(url).into_owned(),
            reason: "expected `memory`, `sqlite:PATH` or `postgres://USER@HOST:PORT/DB`".into(),
        })
    }
}

/// `url` with its password, if any, replaced by `***` (`scheme://user:secret@host/db` →
/// `scheme://user:***@host/db`, and a `password=` query parameter alike): what logs and
/// error messages may show of a store URL.
///
/// It follows the PostgreSQL driver's reading, not a URL library's: tokio-postgres (like
/// libpq) takes the credentials up to the first `@` anywhere, so `u:ab/cd@db` connects
/// with the password `ab/cd`; and it percent-decodes query keys, so `passw%6Frd=` is a
/// password too.
pub fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    let mut shown = String::with_capacity(url.len());
    shown.push_str(&url[..start]);
    // The driver ends the credentials at the first `@`, a URL reader at the last `@`
    // before the path: hide up to the later one, so neither reading shows a password.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let creds_end = rest.find('@').map(|first| {
        rest[..authority_end]
            .rfind('@')
            .map_or(first, |last| last.max(first))
    });
    let after_creds = match creds_end {
        Some(at) => {
            match rest[..at].find(':') {
                Some(colon) => {
                    shown.push_str(&rest[..=colon]);
                    shown.push_str("***");
                }
                None => shown.push_str(&rest[..at]),
            }
            at
        }
        None => 0,
    };
    let rest = &rest[after_creds..];
    let Some(query) = rest.find('?') else {
        shown.push_str(rest);
        return owned_if_changed(url, shown);
    };
    shown.push_str(&rest[..=query]);
    let pairs: Vec<String> = rest[query + 1..]
        .split('&')
        .map(|pair| {
            let key = pair.split('=').next().unwrap_or(pair);
            if pair.contains('=') && percent_decoded(key).eq_ignore_ascii_case("password") {
                format!("{key}=***")
            } else {
                pair.to_string()
            }
        })
        .collect();
    shown.push_str(&pairs.join("&"));
    owned_if_changed(url, shown)
}

/// `shown`, or `url` borrowed when nothing was hidden.
fn owned_if_changed(url: &str, shown: String) -> std::borrow::Cow<'_, str> {
    if shown == url {
        std::borrow::Cow::Borrowed(url)
    } else {
        std::borrow::Cow::Owned(shown)
    }
}

/// `%XX` escapes decoded (lossily: to compare a key with `password`, or read a path).
pub(crate) fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory"),
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreUrl::Postgres(url) => url.fmt(f),
        }
    }
}

impl TryFrom<String> for StoreUrl {
    type Error = StoreError;

    fn try_from(url: String) -> Result<Self, Self::Error> {
        url.parse()
    }
}

impl From<StoreUrl> for String {
    fn from(url: StoreUrl) -> String {
        url.to_string()
    }
}

/// Sync policy of a durable store (`--fsync`): `always` or `os`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync at every commit: an acked reading survives a power cut (default).
    #[default]
    Always,
    /// Let the OS decide when to write back: an acked reading survives a process crash,
    /// not a power cut.
    Os,
}

impl FsyncPolicy {
    /// Every policy, by its name.
    pub const ALL: [(FsyncPolicy, &'static str); 2] =
        [(FsyncPolicy::Always, "always"), (FsyncPolicy::Os, "os")];

    pub fn name(self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Os => "os",
        }
    }
}

impl std::str::FromStr for FsyncPolicy {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FsyncPolicy::ALL
            .iter()
            .find(|(_, name)| name.eq_ignore_ascii_case(s))
            .map(|&(policy, _)| policy)
            .ok_or_else(|| StoreError::InvalidOption {
                option: "fsync policy",
                value: s.to_string(),
                expected: "`always` or `os`",
            })
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Default `--series-cache-entries`: series ids the SQLite writer keeps in memory.
pub const DEFAULT_SERIES_CACHE_ENTRIES: usize = sqlite::DEFAULT_SERIES_CACHE_ENTRIES;

/// Open the store named by `url` for writing (creating and migrating it as needed), with a
/// reader beside it. The PostgreSQL store opens only on a runtime: use [`open_async`].
pub fn open(url: &StoreUrl, fsync: FsyncPolicy) -> Result<OpenStore, StoreError> {
    open_with_cache(url, fsync, DEFAULT_SERIES_CACHE_ENTRIES)
}

/// [`open`], the SQLite writer keeping at most `series_cache_entries` series ids in memory
/// (the memory store keeps every series anyway: it holds every reading).
pub fn open_with_cache(
    url: &StoreUrl,
    fsync: FsyncPolicy,
    series_cache_entries: usize,
) -> Result<OpenStore, StoreError> {
    match url {
        StoreUrl::Memory => {
            let store = memory::MemoryStore::default();
            let reader = store.reader();
            Ok(OpenStore {
                drive: Drive::Inline(Box::new(store)),
                reader,
            })
        }
        StoreUrl::Sqlite(path) => {
            let store =
                sqlite::SqliteStore::open(path, fsync)?.with_series_cache(series_cache_entries);
            let reader = StoreReader::new(sqlite::SqliteReader::open(path)?);
            Ok(OpenStore {
                drive: Drive::GroupCommit(Box::new(store)),
                reader,
            })
        }
        StoreUrl::Postgres(_) => Err(StoreError::InvalidOption {
            option: "store",
            value: url.to_string(),
            expected: "a store that opens without a runtime (open PostgreSQL with open_async)",
        }),
    }
}

/// How the server opens its store: what every store takes, and the PostgreSQL store's own
/// settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub fsync: FsyncPolicy,
    /// Series ids a writer keeps in memory (SQLite, PostgreSQL).
    pub series_cache_entries: usize,
    /// PostgreSQL: committers (`--pg-pool-size`).
    pub pg_pool_size: usize,
    /// Drop data older than this (`--retention`; PostgreSQL only, refused elsewhere by
    /// the config).
    pub retention: Option<std::time::Duration>,
    /// Most readings in one transaction, and batches queued (the writer's settings).
    pub writer: writer::WriterConfig,
    /// The server's shutdown (PostgreSQL: from then on, batches held by an outage wait a
    /// bounded time, then are answered with the error).
    pub shutdown: Option<tokio_util::sync::CancellationToken>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            fsync: FsyncPolicy::Always,
            series_cache_entries: DEFAULT_SERIES_CACHE_ENTRIES,
            pg_pool_size: postgres::DEFAULT_POOL_SIZE,
            retention: None,
            writer: writer::WriterConfig::default(),
            shutdown: None,
        }
    }
}

/// Open the store named by `url` for writing, from async code: a blocking store on a
/// blocking thread, the PostgreSQL store on the current runtime (its connections live
/// there).
///
/// # Errors
/// As [`open`]; for PostgreSQL, the database cannot be reached or migrated.
pub async fn open_async(url: &StoreUrl, options: &StoreOptions) -> Result<OpenStore, StoreError> {
    match url {
        StoreUrl::Postgres(pg) => {
            let pg_options = postgres::PgOptions {
                pool_size: options.pg_pool_size,
                retention: options.retention,
                fsync: options.fsync,
                max_batch_rows: options.writer.max_batch_rows,
                queue_batches: options.writer.queue_batches,
                series_cache_entries: options.series_cache_entries,
                shutdown: options.shutdown.clone(),
            };
            postgres::open(pg, pg_options).await
        }
        _ => {
            let (url, fsync, cache) = (url.clone(), options.fsync, options.series_cache_entries);
            tokio::task::spawn_blocking(move || open_with_cache(&url, fsync, cache))
                .await
                .map_err(|err| StoreError::Backend {
                    location: "store".into(),
                    operation: "open",
                    detail: format!("open task failed: {err}"),
                })?
        }
    }
}

/// Open the store named by `url` for reading only: nothing is created or migrated (a
/// memory store reads as empty). A PostgreSQL reader connects on its first read, on the
/// runtime that reads.
pub fn open_reader(url: &StoreUrl) -> Result<StoreReader, StoreError> {
    match url {
        StoreUrl::Memory => Ok(memory::MemoryStore::default().reader()),
        StoreUrl::Sqlite(path) => Ok(StoreReader::new(sqlite::SqliteReader::open(path)?)),
        StoreUrl::Postgres(pg) => Ok(StoreReader::new(postgres::PgReader::new(pg)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_print() {
        for (policy, name) in FsyncPolicy::ALL {
            assert_eq!(name.parse::<FsyncPolicy>().expect("parses"), policy);
            assert_eq!(policy.to_string(), name);
        }
        assert_eq!(
            "OS".parse::<FsyncPolicy>().expect("any case"),
            FsyncPolicy::Os
        );
        let err = "sometimes".parse::<FsyncPolicy>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "invalid fsync policy \"sometimes\": expected `always` or `os`"
        );
        for url in ["memory", "sqlite:/tmp/x.db"] {
            assert_eq!(url.parse::<StoreUrl>().expect("parses").to_string(), url);
        }
        assert!(matches!(
            "sqlite:".parse::<StoreUrl>(),
            Err(StoreError::InvalidUrl { .. })
        ));
        for url in ["sqlite::memory:", "sqlite:file::memory:?cache=shared"] {
            let err = url.parse::<StoreUrl>().expect_err("in-memory sqlite");
            assert!(
                matches!(err, StoreError::InvalidUrl { .. })
                    && err.to_string().contains("use `memory`"),
                "{err}"
            );
        }
        // A file whose name merely contains it is fine.
        assert!("sqlite:./:memory:.db".parse::<StoreUrl>().is_ok());
    }

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://u:s3cret@db:5432/x",
                "postgres://u:***@db:5432/x",
            ),
            (
                "postgres://u:p@ss:w@db/x?sslmode=require",
                "postgres://u:***@db/x?sslmode=require",
            ),
            ("postgres://u@db/x", "postgres://u@db/x"),
            ("postgres://db/x?user=a@b", "postgres://db/x?user=a@b"),
            ("sqlite:./a:b@c.db", "sqlite:./a:b@c.db"),
        ] {
            assert_eq!(redact_url(url), shown);
        }
        assert_eq!(
            redact_url("postgres://db/x?user=u&password=s3cret&sslmode=disable"),
            "postgres://db/x?user=u&password=***&sslmode=disable"
        );
        // As the driver reads them: the credentials end at the first `@`, query keys are
        // percent-decoded.
        for (url, shown) in [
            ("postgres://u:ab/cd@db/x", "postgres://u:***@db/x"),
            (
                "postgres://u:a?b#c@db/x?sslmode=disable",
                "postgres://u:***@db/x?sslmode=disable",
            ),
            ("postgresql://u:ab/cd@db:5432", "postgresql://u:***@db:5432"),
            (
                "postgres://db/x?passw%6Frd=s3cret",
                "postgres://db/x?passw%6Frd=***",
            ),
            (
                "postgres://db/x?PASSWORD=s3cret&a=1",
                "postgres://db/x?PASSWORD=***&a=1",
            ),
            (
                "postgres://u@db/x?password=a=b&password=c",
                "postgres://u@db/x?password=***&password=***",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let url = "postgres://u:s3cret@db/x"
            .parse::<StoreUrl>()
            .expect("a PostgreSQL URL");
        assert!(matches!(url, StoreUrl::Postgres(_)));
        assert_eq!(url.to_string(), "postgres://u:***@db/x");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(String::from(url), "postgres://u:***@db/x");
        let err = "mysql://u:s3cret@db/x"
            .parse::<StoreUrl>()
            .expect_err("not a store");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn only_unavailable_is_transient() {
        let busy = StoreError::Unavailable {
            location: "x".into(),
            operation: "commit",
            detail: "database is locked".into(),
        };
        assert!(busy.is_transient());
        assert!(!StoreError::WriterGone.is_transient());
        assert!(!StoreError::Corrupt("x".into()).is_transient());
    }
}
