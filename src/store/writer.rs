//! Group commit: one thread owns the store and merges the batches of every connection into
//! one transaction, then answers each batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError, StoredReading, WriteOutcome};

/// Tuning of the group-commit writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most readings in one transaction.
    pub max_batch_rows: usize,
    /// Most batches waiting for the writer; senders wait (back-pressure) when it is full.
    pub queue_batches: usize,
    /// How long the writer waits for more batches before committing a small transaction.
    pub commit_delay: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch_rows: 20_000,
            queue_batches: 1024,
            commit_delay: Duration::ZERO,
        }
    }
}

/// The answer to one submitted batch.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    /// When the transaction holding the batch committed.
    pub committed_at: Instant,
    /// How long the commit (the whole transaction) took, in µs.
    pub commit_us: u64,
    /// What this batch's readings did (new rows, duplicates).
    pub outcome: WriteOutcome,
}

/// Resolves when the batch is committed, or with the store's error.
pub type CommitReceiver = oneshot::Receiver<Result<Committed, Arc<StoreError>>>;

/// Cheap, clonable handle the connections submit batches through.
#[derive(Debug, Clone)]
pub struct StoreHandle {
    _tx: mpsc::Sender<()>,
}

impl StoreHandle {
    /// Queue `batch` for the next transaction; waits while the writer's queue is full.
    pub async fn submit(&self, _batch: Vec<StoredReading>) -> Result<CommitReceiver, StoreError> {
        unimplemented!()
    }
}

/// The writer thread; [`StoreWriter::finish`] waits until it has committed everything.
#[derive(Debug)]
pub struct StoreWriter {}

impl StoreWriter {
    /// Wait until every handle is dropped and the last transaction is committed, then close
    /// the store.
    pub fn finish(self) -> Result<(), StoreError> {
        unimplemented!()
    }
}

/// Start the writer thread in front of `store`.
pub fn spawn(_store: Box<dyn Store>, _config: WriterConfig) -> (StoreHandle, StoreWriter) {
    unimplemented!()
}
