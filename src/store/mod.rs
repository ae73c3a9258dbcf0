//! Where readings go: one narrow [`Store`] trait, one group-commit writer in front of it.
//!
//! Connections never touch a store directly. They hand batches to a [`writer::StoreHandle`];
//! one writer thread merges the batches of all connections into one transaction and answers
//! each batch only after that transaction has committed, so an `ack` (or a legacy `pong`)
//! is never sent for a reading that is not stored.

pub mod memory;
pub mod sqlite;
pub mod writer;

use std::path::PathBuf;

use serde::Serialize;

use crate::protocol::{FieldValue, Reading};

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

/// What one committed batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// New rows.
    pub inserted: u64,
    /// Readings already stored (same series and timestamp): not stored twice.
    pub duplicates: u64,
}

/// Filters for reading data back; `None` means "any".
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub sensor: Option<String>,
    pub measurement: Option<String>,
    /// Inclusive lower bound on the reading's timestamp, ns since the epoch.
    pub since_ns: Option<i64>,
    /// Exclusive upper bound on the reading's timestamp, ns since the epoch.
    pub until_ns: Option<i64>,
    pub limit: Option<u64>,
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

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("store {path}: schema version {found} is newer than this build knows ({known})")]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// A place readings are kept. Implementations are used from one writer thread at a time.
pub trait Store: Send {
    /// Store `batch` atomically (one transaction). When this returns `Ok`, every reading of
    /// the batch is stored as durably as the store promises. A reading whose series
    /// (measurement + tags) and timestamp are already stored is not stored again.
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<WriteOutcome, StoreError>;

    /// Read back stored readings, oldest first.
    fn query(&mut self, query: &Query) -> Result<Vec<Row>, StoreError>;

    /// Per-sensor counts, first/last seen and last value.
    fn sensor_stats(&mut self) -> Result<Vec<SensorStats>, StoreError>;

    /// Whether a batch is written quickly and never blocks (no disk, no network), so the
    /// submitting task may write it itself instead of handing it to the writer thread.
    fn is_inline(&self) -> bool {
        false
    }

    /// Flush anything buffered and release the store; called once at shutdown.
    fn close(&mut self) -> Result<(), StoreError>;
}

/// Where to store, parsed from `--store`: `memory` or `sqlite:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Memory,
    Sqlite(PathBuf),
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
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        Err(StoreError::InvalidUrl {
            url: url.to_string(),
            reason: "expected `memory` or `sqlite:PATH`".into(),
        })
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Memory => f.write_str("memory"),
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
        }
    }
}

/// Sync policy of a durable store (`--fsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FsyncPolicy {
    /// fsync at every commit: an acked reading survives a power cut (default).
    #[default]
    Always,
    /// Let the OS decide when to write back: an acked reading survives a process crash,
    /// not a power cut.
    Os,
}

/// Open the store named by `url`.
pub fn open(url: &StoreUrl, fsync: FsyncPolicy) -> Result<Box<dyn Store>, StoreError> {
    match url {
        StoreUrl::Memory => Ok(Box::new(memory::MemoryStore::default())),
        StoreUrl::Sqlite(path) => Ok(Box::new(sqlite::SqliteStore::open(path, fsync)?)),
    }
}
