//! The connection-facing write seam: [`StoreHandle`] (submit a batch, get a commit
//! receipt), and behind it the group commit: one thread owns a blocking store and merges
//! the batches of every connection into one transaction, then answers each batch.
//!
//! Durable throughput depends on transaction size (one fsync per commit), not on how
//! small each connection's batches are; merging whatever is queued into one transaction
//! lets many small senders reach large-transaction throughput. The queue is bounded, so
//! when the store falls behind, `submit` waits and the connections stop reading: the
//! back-pressure reaches the senders through TCP.
//!
//! How a store is driven is chosen by its opener ([`Drive`]), not by the storage trait:
//! - [`Drive::GroupCommit`] (SQLite): the writer thread above.
//! - [`Drive::Inline`] (memory, never blocks): the submitting task writes the batch itself
//!   under a mutex, saving two thread hand-offs per round trip.
//! - [`Drive::Concurrent`] (a store with a connection pool, e.g. PostgreSQL): the store
//!   implements [`ConcurrentStore`] itself, with several commits in flight at once, so one
//!   slow commit does not stall every connection. It keeps the same contract: the receipt
//!   resolves only after the batch's commit, `submit` waits when the store is full or the
//!   database is away, and every answer goes through [`CommitReply`], so its commits are
//!   counted by the same accounting as the writer thread's.
//!
//! The hot path stays as cheap as before: per batch one enum match; a concurrent store adds
//! one dyn call and one boxed future per batch (its commit is a network round trip anyway);
//! nothing is added per reading.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::events::{
    self, BatchCommitted, Event as _, StoreAnswered, StoreFailed, StoreQueued, Telemetry,
};

use super::read::BoxFuture;
use super::{Drive, Repeat, Store, StoreError, StoredReading, WriteOutcome, Written};

mod thread;

pub use thread::PROBE_INTERVAL;
use thread::{run, InWriter, ThreadRoute};

/// Tuning of the group-commit writer.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most readings in one transaction.
    pub max_batch_rows: usize,
    /// Most batches waiting for the writer; senders wait (back-pressure) when it is full.
    pub queue_batches: usize,
    /// How long the writer waits for more batches before committing a small transaction.
    pub commit_delay: Duration,
    /// With no `commit_delay`: how long a transaction of many small batches (at least
    /// `group_siblings` batches of a few readings each, fewer than [`GROUP_ROWS`] readings
    /// in all) keeps gathering before it commits. Many connections sending a reading now and then (an idle fleet) then
    /// share one fsync per window instead of one per ≈ fsync time; a lone connection, or a
    /// few pipelining ones, never wait (PostgreSQL's `commit_delay`/`commit_siblings`).
    pub group_window: Duration,
    /// Batches a transaction must hold before `group_window` applies: more than the
    /// connections of a pipelining load, fewer than an idle fleet's batches per fsync.
    pub group_siblings: usize,
    /// How long a gathering transaction waits for its next batch before it commits anyway
    /// (the senders are waiting for their acks, not sending): the window is for a stream of
    /// arrivals, not for a closed loop.
    pub group_idle_gap: Duration,
}

/// A transaction of this many readings commits without waiting for more.
pub const GROUP_ROWS: usize = 4096;

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch_rows: 20_000,
            queue_batches: 1024,
            commit_delay: Duration::ZERO,
            group_window: Duration::from_millis(20),
            group_siblings: 16,
            // An idle fleet of 10 000 sensors at 1 reading/s sends one every 100 µs.
            group_idle_gap: Duration::from_micros(250),
        }
    }
}

/// The answer to one submitted batch.
#[derive(Debug, Clone)]
pub struct Committed {
    /// When the transaction holding the batch committed.
    pub committed_at: Instant,
    /// How long the commit (the whole transaction) took, in µs.
    pub commit_us: u64,
    /// What this batch's readings did (new rows, duplicates, conflicts): this batch's own,
    /// even when its transaction held other batches too.
    pub outcome: WriteOutcome,
    /// This batch's readings that were not stored, by their index in this batch.
    pub repeats: Vec<Repeat>,
    /// The batch's readings, handed back from the writer thread: freed where they were
    /// allocated (the connection's worker) when the answer is dropped, not on the writer,
    /// whose cross-thread frees cost more and delay the next commit.
    returned: Returned,
}

/// Readings travelling back with their answer; printed and cloned as nothing (their
/// only use is to be dropped on the right thread).
#[derive(Default)]
struct Returned(Vec<StoredReading>);

impl Clone for Returned {
    fn clone(&self) -> Self {
        Returned::default()
    }
}

impl std::fmt::Debug for Returned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} readings", self.0.len())
    }
}

/// The result a batch's receipt resolves to (shared error: one failed transaction answers
/// every batch it held).
pub type CommitResult = Result<Committed, Arc<StoreError>>;

/// Resolves when the batch is committed, or with the store's error.
pub type CommitReceiver = oneshot::Receiver<CommitResult>;

/// A store that commits several batches at once by itself (e.g. PostgreSQL over a
/// connection pool): it implements the connection-facing seam directly instead of sitting
/// behind the group-commit thread.
///
/// The contract, the same as the writer thread's:
/// - **Ack after commit**: `reply` is answered only once the batch is committed (or its
///   transaction failed); the connection acks on that answer.
/// - **Back-pressure, not failure**: `submit` returns once the batch is accepted, and
///   *waits* while the store has as many commits in flight as it allows, or while the
///   database is out of reach (restart, network cut): the connections then stop reading
///   and the senders slow down through TCP. It fails only when the store is closing or
///   cannot take the batch at all; a transient outage is waited out (and logged), not
///   returned, as no ack is lost by waiting.
/// - **One accounting**: every answer goes through [`CommitReply::send`], which counts the
///   commit or failure exactly as the other routes do; a store never counts its own.
/// - **Identity**: a reading whose series and timestamp are stored is not stored again,
///   even when two commits in flight (or two collectors) carry it: enforce it with the
///   database's unique key, not in memory. Report each such reading in
///   [`Written::repeats`] (a duplicate if the stored fields encode the same, else a
///   conflict), as the other stores do: the acks of its batch say so.
pub trait ConcurrentStore: Send + Sync + 'static {
    /// Accept `batch` for commit and answer it through `reply` (see the trait docs).
    fn submit(
        &self,
        batch: Vec<StoredReading>,
        reply: CommitReply,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Refuse new batches, wait for every commit in flight to be answered, then release
    /// the store. Called once, after the last handle is dropped ([`StoreWriter::finish`]).
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Where a [`ConcurrentStore`] answers one batch. Sending through it counts the commit (or
/// the failure) with the same accounting as the group-commit and inline routes.
#[derive(Debug)]
pub struct CommitReply {
    reply: oneshot::Sender<CommitResult>,
    rows: usize,
    telemetry: Option<&'static Telemetry>,
    /// Out of the queue-depth gauge when answered, or when a store drops the reply.
    queued: Queued,
}

impl CommitReply {
    /// Readings in the batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Answer the batch, committed in a transaction of its own: what its commit did and
    /// how long the commit took, or why it failed. A receiver that is gone (the connection
    /// closed) is not an error.
    pub fn send(self, written: Result<(Written, Duration), StoreError>) {
        let answer = account(self.telemetry, 1, self.rows, written).map(
            |(written, committed_at, commit_us)| Committed::new(written, committed_at, commit_us),
        );
        self.answer(answer);
    }

    /// Answer batches committed together in one transaction; `written` covers all their
    /// readings, in the order of `replies`. The transaction is counted once, with the
    /// batches' rows summed (as the group commit counts its own: a pooled store merging
    /// batches must not report each batch as a commit); each batch gets its part.
    pub fn send_together(replies: Vec<CommitReply>, written: Written, duration: Duration) {
        let lens: Vec<usize> = replies.iter().map(CommitReply::rows).collect();
        let telemetry = replies.first().and_then(|reply| reply.telemetry);
        let (committed_at, commit_us) =
            count_commit(telemetry, lens.iter().sum(), &written, duration);
        for (reply, part) in replies.into_iter().zip(split_written(written, &lens)) {
            reply.answer(Ok(Committed::new(part, committed_at, commit_us)));
        }
    }

    /// Fail batches that were to be committed together: one failed transaction counted, and
    /// every batch answered with the same error.
    pub fn fail_together(replies: Vec<CommitReply>, err: StoreError) {
        let rows = replies.iter().map(CommitReply::rows).sum();
        let telemetry = replies.first().and_then(|reply| reply.telemetry);
        StoreFailed {
            error: &err,
            batches: replies.len(),
            rows,
        }
        .emit_to(telemetry.unwrap_or_else(events::telemetry));
        let err = Arc::new(err);
        for reply in replies {
            reply.answer(Err(err.clone()));
        }
    }

    fn answer(self, answer: CommitResult) {
        // Lowered before the answer, so whoever sees the answer sees the gauge lowered.
        drop(self.queued);
        let _ = self.reply.send(answer);
    }
}

impl Committed {
    fn new(written: Written, committed_at: Instant, commit_us: u64) -> Self {
        Committed {
            committed_at,
            commit_us,
            outcome: written.outcome,
            repeats: written.repeats,
            returned: Returned::default(),
        }
    }
}

/// Readings counted in the queue-depth gauge from `submit` until answered: lowers the gauge
/// exactly once, when dropped, however the batch ends (answered, refused, its `submit`
/// future dropped, its store panicking or dropping the reply).
#[derive(Debug)]
struct Queued {
    readings: usize,
    telemetry: Option<&'static Telemetry>,
}

impl Queued {
    fn new(readings: usize, telemetry: Option<&'static Telemetry>) -> Self {
        // None: the process's handles, looked up at emit time.
        StoreQueued { readings }.emit_to(telemetry.unwrap_or_else(events::telemetry));
        Queued {
            readings,
            telemetry,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        StoreAnswered {
            readings: self.readings,
        }
        .emit_to(self.telemetry.unwrap_or_else(events::telemetry));
    }
}

/// The accounting every route shares: count one commit (`BatchCommitted`) or one failed
/// transaction (`StoreFailed`) holding `batches` batches of `rows` readings in all, and
/// turn the result into what the batches are answered with: (outcome, commit time, commit
/// duration in µs) or the shared error.
fn account(
    telemetry: Option<&'static Telemetry>,
    batches: usize,
    rows: usize,
    written: Result<(Written, Duration), StoreError>,
) -> Result<(Written, Instant, u64), Arc<StoreError>> {
    match written {
        Ok((written, duration)) => {
            let (committed_at, commit_us) = count_commit(telemetry, rows, &written, duration);
            Ok((written, committed_at, commit_us))
        }
        Err(err) => {
            // None: the process's handles, looked up at emit time (after the recorder is
            // installed).
            StoreFailed {
                error: &err,
                batches,
                rows,
            }
            .emit_to(telemetry.unwrap_or_else(events::telemetry));
            Err(Arc::new(err))
        }
    }
}

/// Count one committed transaction of `rows` readings; its commit time and duration (µs).
fn count_commit(
    telemetry: Option<&'static Telemetry>,
    rows: usize,
    written: &Written,
    duration: Duration,
) -> (Instant, u64) {
    let committed_at = Instant::now();
    // Only barriers (no readings): nothing was written, nothing to count.
    if rows > 0 {
        BatchCommitted {
            rows,
            outcome: written.outcome,
            duration,
        }
        .emit_to(telemetry.unwrap_or_else(events::telemetry));
    }
    (
        committed_at,
        u64::try_from(duration.as_micros()).unwrap_or(u64::MAX),
    )
}

/// One submitted batch and where its answer goes.
#[derive(Debug)]
struct Job {
    readings: Vec<StoredReading>,
    reply: oneshot::Sender<CommitResult>,
    queued: Queued,
}

impl Job {
    /// Answer the batch (out of the queue-depth gauge first, so whoever sees the answer
    /// sees the gauge lowered), handing its readings back with a successful answer. A
    /// dropped receiver means the connection is gone.
    fn answer(self, result: CommitResult) {
        let Job {
            readings,
            reply,
            queued,
        } = self;
        drop(queued);
        let result = result.map(|mut committed| {
            committed.returned = Returned(readings);
            committed
        });
        let _ = reply.send(result);
    }
}

/// A store shared by the tasks that write it inline.
type SharedStore = Arc<Mutex<Box<dyn Store>>>;

/// Where submitted batches go.
#[derive(Clone)]
enum Route {
    /// To the writer thread's queue (or committed inline while the writer is idle).
    Thread(Arc<ThreadRoute>),
    /// Written by the submitting task itself.
    Inline(SharedStore),
    /// To a store with its own concurrency.
    Concurrent(Arc<dyn ConcurrentStore>),
}

impl Route {
    fn name(&self) -> &'static str {
        match self {
            Route::Thread(_) => "thread",
            Route::Inline(_) => "inline",
            Route::Concurrent(_) => "concurrent",
        }
    }
}

/// Cheap, clonable handle the connections submit batches through: the connection-facing
/// write seam, the same whatever the store.
#[derive(Clone)]
pub struct StoreHandle {
    route: Route,
    /// Where commits are counted; None = the process's handles.
    telemetry: Option<&'static Telemetry>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("route", &self.route.name())
            .finish()
    }
}

impl StoreHandle {
    /// Queue `batch` for the next transaction; waits while the writer's queue is full.
    ///
    /// An empty batch writes nothing. On the group-commit route it is a barrier (answered
    /// once every batch queued before it is committed); other routes promise no order.
    ///
    /// # Errors
    /// [`StoreError::WriterGone`] if the writer thread has stopped; a concurrent store's
    /// own error if it refuses the batch.
    pub async fn submit(&self, batch: Vec<StoredReading>) -> Result<CommitReceiver, StoreError> {
        // Counted before it can be answered (the inline route answers within this call);
        // the guard travels with the batch and lowers the gauge however the batch ends.
        let queued = Queued::new(batch.len(), self.telemetry);
        let route = match &self.route {
            Route::Thread(route) => route,
            Route::Inline(store) => {
                let (reply, answer) = oneshot::channel();
                let rows = batch.len();
                let job = Job {
                    readings: batch,
                    reply,
                    queued,
                };
                // A panic in another task's write leaves the store usable (memory only).
                let mut store = store.lock().unwrap_or_else(PoisonError::into_inner);
                commit(&mut **store, [job], rows, self.telemetry);
                return Ok(answer);
            }
            Route::Concurrent(store) => {
                let (reply, answer) = oneshot::channel();
                let reply = CommitReply {
                    reply,
                    rows: batch.len(),
                    telemetry: self.telemetry,
                    queued,
                };
                store.submit(batch, reply).await?;
                return Ok(answer);
            }
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            readings: batch,
            reply,
            queued,
        };
        let Err(job) = route.try_inline(job, self.telemetry) else {
            return Ok(answer);
        };
        // Counted before it is sent, so no task commits inline ahead of it; uncounted if it
        // is not sent after all (closed, or this future dropped while the queue is full).
        let counted = InWriter::count(&route.in_writer);
        let tx = &route.tx;
        match tx.try_send(job) {
            Ok(()) => {}
            // Only a full queue waits, in a boxed future: the wait's state (the job and a
            // semaphore waiter) would otherwise be part of every connection's task.
            Err(mpsc::error::TrySendError::Full(job)) => Box::pin(tx.send(job))
                .await
                .map_err(|_| StoreError::WriterGone)?,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(StoreError::WriterGone),
        }
        // Sent: the writer uncounts it once committed.
        std::mem::forget(counted);
        Ok(answer)
    }
}

/// The writer thread (or the inline or concurrent store); [`StoreWriter::finish`] waits
/// until it has committed everything.
pub struct StoreWriter {
    route: WriterRoute,
}

enum WriterRoute {
    Thread(JoinHandle<Result<(), StoreError>>),
    Inline(SharedStore),
    Concurrent(Arc<dyn ConcurrentStore>),
}

impl std::fmt::Debug for StoreWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreWriter").finish_non_exhaustive()
    }
}

impl StoreWriter {
    /// Wait until every handle is dropped and the last transaction is committed, then close
    /// the store. Blocks: call it from a blocking thread.
    ///
    /// # Errors
    /// The error of closing the store, or [`StoreError::Corrupt`] if the writer thread
    /// panicked. (Errors of single transactions went to the batches they concerned.)
    pub fn finish(self) -> Result<(), StoreError> {
        match self.route {
            WriterRoute::Thread(thread) => thread.join().unwrap_or_else(|_| {
                Err(StoreError::Corrupt("store writer thread panicked".into()))
            }),
            WriterRoute::Inline(store) => {
                store.lock().unwrap_or_else(PoisonError::into_inner).close()
            }
            // Drained on the caller's runtime (where the store's pool lives), else on
            // one of our own.
            WriterRoute::Concurrent(store) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => runtime.block_on(store.close()),
                Err(_) => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|err| StoreError::Backend {
                        location: "concurrent store".into(),
                        operation: "close",
                        detail: format!("cannot start a runtime: {err}"),
                    })?
                    .block_on(store.close()),
            },
        }
    }
}

/// Put `drive` behind a [`StoreHandle`]: start the writer thread for a group-commit store,
/// share an inline store, or hand a concurrent store through.
///
/// # Panics
/// If the OS refuses to start a thread (at startup, before any reading is accepted).
pub fn spawn(drive: Drive, config: WriterConfig) -> (StoreHandle, StoreWriter) {
    spawn_counted(drive, config, None)
}

/// [`spawn`], counting commits into `telemetry` (a test's own handles) instead of the
/// process's.
///
/// # Panics
/// If the OS refuses to start a thread (at startup, before any reading is accepted).
pub fn spawn_counted(
    drive: Drive,
    config: WriterConfig,
    telemetry: Option<&'static Telemetry>,
) -> (StoreHandle, StoreWriter) {
    let store = match drive {
        Drive::GroupCommit(store) => store,
        Drive::Inline(store) => {
            let shared: SharedStore = Arc::new(Mutex::new(store));
            let handle = StoreHandle {
                route: Route::Inline(shared.clone()),
                telemetry,
            };
            let writer = StoreWriter {
                route: WriterRoute::Inline(shared),
            };
            return (handle, writer);
        }
        Drive::Concurrent(store) => {
            let handle = StoreHandle {
                route: Route::Concurrent(Arc::clone(&store)),
                telemetry,
            };
            let writer = StoreWriter {
                route: WriterRoute::Concurrent(store),
            };
            return (handle, writer);
        }
    };
    // tokio's channel panics on a zero capacity.
    let (tx, rx) = mpsc::channel(config.queue_batches.max(1));
    // A commit delay asks for grouping: then every batch goes through the writer.
    let inline_when_idle = store.commits_without_waiting() && config.commit_delay.is_zero();
    let route = Arc::new(ThreadRoute {
        tx,
        store: Arc::new(Mutex::new(store)),
        in_writer: Arc::new(AtomicUsize::new(0)),
        inline_when_idle,
    });
    // The writer holds no sender (the route's is dropped with the handles), so it stops
    // once every handle is gone.
    let shared = Arc::clone(&route.store);
    let in_writer = Arc::clone(&route.in_writer);
    let thread = std::thread::Builder::new()
        .name("sensorlink-store".into())
        .spawn(move || run(&shared, &in_writer, rx, config, telemetry))
        .expect("the OS lets us start the store writer thread");
    (
        StoreHandle {
            route: Route::Thread(route),
            telemetry,
        },
        StoreWriter {
            route: WriterRoute::Thread(thread),
        },
    )
}

/// Write the readings of `jobs` in one transaction and answer every job. `jobs` is an
/// array of one for a lone batch (no vector per commit) or the writer's gathered batches.
fn commit<J>(store: &mut dyn Store, jobs: J, rows: usize, telemetry: Option<&'static Telemetry>)
where
    J: AsRef<[Job]> + IntoIterator<Item = Job>,
{
    let all = jobs.as_ref();
    let written = if rows == 0 {
        // Only barriers: nothing to write, everything before them is already committed.
        Ok((Written::default(), Duration::ZERO))
    } else {
        let start = Instant::now();
        // The batches in place, not moved into one vector: they go back to their senders.
        let written = match all {
            [one] => store.write_parts(&[&one.readings]),
            _ => {
                let parts: Vec<&[StoredReading]> =
                    all.iter().map(|job| job.readings.as_slice()).collect();
                store.write_parts(&parts)
            }
        };
        written.map(|outcome| (outcome, start.elapsed()))
    };
    let batches = all.len();
    match account(telemetry, batches, rows, written) {
        Ok((total, committed_at, commit_us)) => {
            let answer = |job: Job, written: Written| {
                job.answer(Ok(Committed {
                    committed_at,
                    commit_us,
                    outcome: written.outcome,
                    repeats: written.repeats,
                    returned: Returned::default(),
                }));
            };
            if batches == 1 {
                // split_written's one part, without its vectors.
                if let Some(job) = jobs.into_iter().next() {
                    answer(job, total);
                }
            } else {
                let lens: Vec<usize> = all.iter().map(|job| job.readings.len()).collect();
                for (job, written) in jobs.into_iter().zip(split_written(total, &lens)) {
                    answer(job, written);
                }
            }
        }
        Err(err) => {
            for job in jobs {
                job.answer(Err(Arc::clone(&err)));
            }
        }
    }
}

/// Share a transaction's outcome among the batches it held, exactly: each batch gets the
/// repeats whose index falls in its part of the merged batch (re-indexed from its start),
/// and its other readings as inserted.
fn split_written(total: Written, lens: &[usize]) -> Vec<Written> {
    if lens.len() == 1 {
        return vec![total];
    }
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let mut repeats = total.repeats.into_iter().peekable();
    let mut start = 0;
    lens.iter()
        .map(|&len| {
            let end = start + len;
            let mut part = Written::default();
            while let Some(repeat) = repeats.next_if(|repeat| repeat.index < end) {
                part.repeat(repeat.index.saturating_sub(start), repeat.conflict);
            }
            part.outcome.inserted =
                as_u64(len).saturating_sub(part.outcome.duplicates + part.outcome.conflicts);
            start = end;
            part
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{gate, temp, writer_entered, TestStore};

    /// Generous liveness guard: a test that needs longer than this is hung.
    const HANG: Duration = Duration::from_secs(20);

    async fn wait(rx: CommitReceiver) -> Result<Committed, Arc<StoreError>> {
        tokio::time::timeout(HANG, rx)
            .await
            .expect("answered in time")
            .expect("writer answered")
    }

    /// Each batch's readings come back with its answer, also from a merged transaction
    /// (they are freed by the connection, not by the writer thread); a clone of the answer
    /// carries none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readings_go_back_with_their_answer() {
        let store = TestStore::default();
        let (gate, entered_rx, release_tx) = gate();
        let (handle, writer) = spawn(
            Drive::GroupCommit(Box::new(store.gated(gate))),
            WriterConfig::default(),
        );
        let first = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        writer_entered(entered_rx).await;
        // Both queued behind the held transaction: merged into one.
        let b = handle
            .submit((10..13).map(|ts| temp("b", ts)).collect())
            .await
            .expect("submit");
        let c = handle.submit(vec![temp("c", 20)]).await.expect("submit");
        for _ in 0..2 {
            release_tx.send(()).expect("writer waits");
        }
        let returned = |committed: &Committed| -> Vec<i64> {
            committed
                .returned
                .0
                .iter()
                .map(StoredReading::timestamp_ns)
                .collect()
        };
        assert_eq!(returned(&wait(first).await.expect("committed")), vec![1]);
        let b = wait(b).await.expect("committed");
        assert_eq!(returned(&b), vec![10, 11, 12]);
        assert_eq!(returned(&wait(c).await.expect("committed")), vec![20]);
        assert!(returned(&b.clone()).is_empty());
        drop(handle);
        drop(release_tx);
        writer.finish().expect("finish");
        assert_eq!(store.log().txns, vec![1, 4]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submits_are_all_committed_and_merged() {
        let store = TestStore::default();
        let (gate, entered_rx, release_tx) = gate();
        let gated = store.gated(gate);
        let (handle, writer) = spawn(Drive::GroupCommit(Box::new(gated)), WriterConfig::default());

        // Hold the writer in a first transaction so the other batches queue up.
        let first = handle.submit(vec![temp("first", 0)]).await.expect("submit");
        writer_entered(entered_rx).await;

        let tasks = 50;
        let per_task = 10;
        let mut joins = Vec::new();
        for t in 0..tasks {
            let handle = handle.clone();
            joins.push(tokio::spawn(async move {
                let batch = (0..per_task).map(|i| temp(&format!("s{t}"), i)).collect();
                // In a tuple: clippy dislikes a task whose output is itself a future.
                (t, handle.submit(batch).await.expect("submit"))
            }));
        }
        let mut answers = Vec::new();
        for join in joins {
            answers.push(join.await.expect("task").1);
        }
        // Every batch is queued: let the writer go.
        for _ in 0..2 {
            release_tx.send(()).expect("writer waits");
        }
        assert_eq!(wait(first).await.expect("ok").outcome.inserted, 1);
        for answer in answers {
            let committed = wait(answer).await.expect("committed");
            assert_eq!(committed.outcome.inserted, per_task as u64);
            assert_eq!(committed.outcome.duplicates, 0);
        }
        drop(handle);
        drop(release_tx);
        writer.finish().expect("finish");

        let log = store.log();
        assert!(log.closed);
        assert_eq!(log.store.len(), 1 + tasks * per_task as usize);
        // The first batch alone, then all 50 queued batches in one transaction.
        assert_eq!(log.txns, vec![1, tasks * per_task as usize]);
    }

    /// The queue-depth gauge counts readings from `submit` until their transaction is
    /// answered, on the group-commit route (the inline route answers within `submit`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_gauge_counts_readings_until_answered() {
        use crate::events::{names, prometheus_builder, testing::sample};
        let recorder = prometheus_builder().build_recorder();
        let render = recorder.handle();
        let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
            &recorder,
            Telemetry::register,
        )));
        let queued = || sample(&render.render(), names::STORE_QUEUED);

        let store = TestStore::default();
        let (gate, entered_rx, release_tx) = gate();
        let (handle, writer) = spawn_counted(
            Drive::GroupCommit(Box::new(store.gated(gate))),
            WriterConfig::default(),
            Some(telemetry),
        );
        let first = handle.submit(vec![temp("first", 0)]).await.expect("submit");
        writer_entered(entered_rx).await;
        let five = handle
            .submit((0..5).map(|i| temp("a", i)).collect())
            .await
            .expect("submit");
        let three = handle
            .submit((0..3).map(|i| temp("b", i)).collect())
            .await
            .expect("submit");
        // One in the held transaction, eight waiting for the writer.
        assert_eq!(queued(), Some(9.0));
        for _ in 0..2 {
            release_tx.send(()).expect("writer waits");
        }
        for answer in [first, five, three] {
            wait(answer).await.expect("committed");
        }
        assert_eq!(queued(), Some(0.0));
        drop(handle);
        drop(release_tx);
        writer.finish().expect("finish");
    }

    /// A telemetry of the test's own, and a way to read its queue-depth gauge.
    fn counted() -> (&'static Telemetry, impl Fn() -> Option<f64>) {
        use crate::events::{names, prometheus_builder, testing::sample};
        let recorder = prometheus_builder().build_recorder();
        let render = recorder.handle();
        let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
            &recorder,
            Telemetry::register,
        )));
        (telemetry, move || {
            sample(&render.render(), names::STORE_QUEUED)
        })
    }

    /// A writer thread that panics mid-transaction leaves no reading in the gauge.
    #[tokio::test]
    async fn queued_gauge_is_lowered_when_the_writer_panics() {
        struct Panicking;
        impl Store for Panicking {
            fn write_batch(&mut self, _: &[StoredReading]) -> Result<Written, StoreError> {
                panic!("test store panics");
            }
            fn close(&mut self) -> Result<(), StoreError> {
                Ok(())
            }
        }
        let (telemetry, queued) = counted();
        let (handle, writer) = spawn_counted(
            Drive::GroupCommit(Box::new(Panicking)),
            WriterConfig::default(),
            Some(telemetry),
        );
        let receipt = handle.submit(vec![temp("a", 1), temp("a", 2)]).await;
        if let Ok(receipt) = receipt {
            let answer = tokio::time::timeout(HANG, receipt).await.expect("in time");
            assert!(answer.is_err(), "the panicking writer cannot answer");
        }
        drop(handle);
        assert!(writer.finish().is_err(), "the panic is reported");
        assert_eq!(queued(), Some(0.0));
    }

    /// A concurrent store that drops a reply unanswered: the gauge is lowered all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_gauge_is_lowered_when_a_concurrent_store_drops_the_reply() {
        struct Dropping;
        impl ConcurrentStore for Dropping {
            fn submit(
                &self,
                _: Vec<StoredReading>,
                reply: CommitReply,
            ) -> BoxFuture<'_, Result<(), StoreError>> {
                drop(reply);
                Box::pin(async { Ok(()) })
            }
            fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
                Box::pin(async { Ok(()) })
            }
        }
        let (telemetry, queued) = counted();
        let (handle, writer) = spawn_counted(
            Drive::Concurrent(Arc::new(Dropping)),
            WriterConfig::default(),
            Some(telemetry),
        );
        let receipt = handle.submit(vec![temp("a", 1)]).await.expect("taken");
        assert!(receipt.await.is_err(), "never answered");
        assert_eq!(queued(), Some(0.0));
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("finish");
    }

    /// A concurrent store that merges batches into one transaction (as the PostgreSQL
    /// store does) counts one commit, of their rows summed, and one failure, not one per
    /// batch; each batch gets its own part of the outcome, or the shared error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_committed_together_count_as_one_transaction() {
        use crate::events::{names, prometheus_builder, testing::sample};
        /// Holds replies until it has three, then commits (or fails) them together.
        struct Merging {
            held: Mutex<Vec<(Vec<StoredReading>, CommitReply)>>,
            fail: bool,
        }
        impl ConcurrentStore for Merging {
            fn submit(
                &self,
                batch: Vec<StoredReading>,
                reply: CommitReply,
            ) -> BoxFuture<'_, Result<(), StoreError>> {
                let mut held = self.held.lock().expect("lock");
                held.push((batch, reply));
                if held.len() == 3 {
                    let (batches, replies): (Vec<_>, Vec<_>) = held.drain(..).unzip();
                    if self.fail {
                        CommitReply::fail_together(replies, StoreError::WriterGone);
                    } else {
                        // The second batch's first reading was already stored.
                        let mut written = Written::default();
                        written.repeat(batches[0].len(), None);
                        written.outcome.inserted =
                            batches.iter().map(Vec::len).sum::<usize>() as u64 - 1;
                        CommitReply::send_together(replies, written, Duration::from_millis(2));
                    }
                }
                Box::pin(async { Ok(()) })
            }
            fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
                Box::pin(async { Ok(()) })
            }
        }
        for fail in [false, true] {
            let recorder = prometheus_builder().build_recorder();
            let render = recorder.handle();
            let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
                &recorder,
                Telemetry::register,
            )));
            let store = Merging {
                held: Mutex::new(Vec::new()),
                fail,
            };
            let (handle, writer) = spawn_counted(
                Drive::Concurrent(Arc::new(store)),
                WriterConfig::default(),
                Some(telemetry),
            );
            let mut receipts = Vec::new();
            for (series, len) in [("a", 2), ("b", 3), ("c", 4)] {
                let batch = (0..len).map(|i| temp(series, i)).collect();
                receipts.push(handle.submit(batch).await.expect("taken"));
            }
            let mut answers = Vec::new();
            for receipt in receipts {
                answers.push(wait(receipt).await);
            }
            let text = render.render();
            let commits = sample(&text, names::STORE_COMMITS);
            let rows_count = sample(&text, &format!("{}_count", names::COMMIT_ROWS));
            let rows_sum = sample(&text, &format!("{}_sum", names::COMMIT_ROWS));
            let failed = sample(&text, &format!("{}{{op=\"commit\"}}", names::STORE_ERRORS));
            if fail {
                assert_eq!((commits, failed), (Some(0.0), Some(1.0)), "{text}");
                let errors: Vec<_> = answers
                    .into_iter()
                    .map(|answer| answer.expect_err("failed"))
                    .collect();
                assert!(Arc::ptr_eq(&errors[0], &errors[2]), "one shared error");
            } else {
                assert_eq!(
                    (commits, rows_count, rows_sum, failed),
                    (Some(1.0), Some(1.0), Some(9.0), Some(0.0)),
                    "{text}"
                );
                let outcomes: Vec<_> = answers
                    .into_iter()
                    .map(|answer| {
                        let committed = answer.expect("committed");
                        (committed.outcome.inserted, committed.outcome.duplicates)
                    })
                    .collect();
                assert_eq!(outcomes, vec![(2, 0), (2, 1), (4, 0)]);
            }
            drop(handle);
            tokio::task::spawn_blocking(move || writer.finish())
                .await
                .expect("join")
                .expect("finish");
        }
    }

    /// A `submit` dropped while it waits for room in the queue takes its readings out of
    /// the gauge.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_gauge_is_lowered_when_a_waiting_submit_is_dropped() {
        use std::future::Future as _;
        let (telemetry, queued) = counted();
        let (gate, entered_rx, release_tx) = gate();
        let config = WriterConfig {
            queue_batches: 1,
            ..WriterConfig::default()
        };
        let (handle, writer) = spawn_counted(
            Drive::GroupCommit(Box::new(TestStore::default().gated(gate))),
            config,
            Some(telemetry),
        );
        let first = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        writer_entered(entered_rx).await;
        // The writer holds the first, the second fills the queue, the third must wait.
        let second = handle.submit(vec![temp("a", 2)]).await.expect("submit");
        {
            let third = handle.submit(vec![temp("a", 3), temp("a", 4)]);
            tokio::pin!(third);
            let polled =
                std::future::poll_fn(|cx| std::task::Poll::Ready(third.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "the queue is full");
            assert_eq!(queued(), Some(4.0));
        }
        assert_eq!(queued(), Some(2.0), "the dropped submit is out");
        drop(release_tx);
        wait(first).await.expect("first");
        wait(second).await.expect("second");
        assert_eq!(queued(), Some(0.0));
        drop(handle);
        writer.finish().expect("finish");
    }

    /// With no batch coming, the writer probes the store: a broken store is seen as not
    /// ready before any reading arrives, and a recovered one as ready again without one.
    #[tokio::test]
    async fn idle_probes_follow_the_store_without_traffic() {
        let (telemetry, _) = counted();
        let store = TestStore::default();
        store.set_failing(true);
        let (handle, writer) = spawn_counted(
            Drive::GroupCommit(Box::new(store.clone())),
            WriterConfig::default(),
            Some(telemetry),
        );
        let until = |failing: bool| async move {
            tokio::time::timeout(HANG, async {
                while telemetry.recent.store_failure().is_some() != failing {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect("a probe within the hang guard");
        };
        until(true).await;
        store.set_failing(false);
        until(false).await;
        // A failed commit: not ready until the next probe, with no reading after it.
        store.set_failing(true);
        let failed = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        assert!(wait(failed).await.is_err());
        store.set_failing(false);
        until(false).await;
        assert!(store.log().txns.is_empty(), "no reading was stored");
        drop(handle);
        writer.finish().expect("finish");
    }

    #[tokio::test]
    async fn many_tasks_without_gate() {
        let store = TestStore::default();
        let config = WriterConfig {
            max_batch_rows: 64,
            queue_batches: 8,
            commit_delay: Duration::from_millis(1),
            ..WriterConfig::default()
        };
        let (handle, writer) = spawn(Drive::GroupCommit(Box::new(store.clone())), config);
        let mut joins = Vec::new();
        for t in 0..100 {
            let handle = handle.clone();
            joins.push(tokio::spawn(async move {
                let batch = (0..5).map(|i| temp(&format!("s{t}"), i)).collect();
                let rx = handle.submit(batch).await.expect("submit");
                wait(rx).await.expect("committed")
            }));
        }
        for join in joins {
            assert_eq!(join.await.expect("task").outcome.inserted, 5);
        }
        drop(handle);
        writer.finish().expect("finish");
        let log = store.log();
        assert_eq!(log.store.len(), 500);
        assert!(log.txns.iter().all(|&n| n <= 64), "{:?}", log.txns);
        assert!(log.txns.len() < 100, "{:?}", log.txns);
    }

    #[tokio::test]
    async fn errors_reach_every_batch_and_the_writer_goes_on() {
        let store = TestStore::default();
        store.set_failing(true);
        let (handle, writer) = spawn(
            Drive::GroupCommit(Box::new(store.clone())),
            WriterConfig::default(),
        );
        let rx = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        let err = wait(rx).await.expect_err("store failed");
        assert!(matches!(*err, StoreError::Corrupt(_)));

        store.set_failing(false);
        let rx = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        assert_eq!(wait(rx).await.expect("ok").outcome.inserted, 1);
        drop(handle);
        writer.finish().expect("finish");
        assert_eq!(store.log().store.len(), 1);
    }

    #[tokio::test]
    async fn empty_batch_is_a_barrier_without_a_write() {
        let store = TestStore::default();
        let (handle, writer) = spawn(
            Drive::GroupCommit(Box::new(store.clone())),
            WriterConfig::default(),
        );
        let rx = handle.submit(Vec::new()).await.expect("submit");
        let committed = wait(rx).await.expect("ok");
        assert_eq!(committed.outcome, WriteOutcome::default());
        drop(handle);
        writer.finish().expect("finish");
        assert!(store.log().txns.is_empty());
    }

    #[tokio::test]
    async fn duplicates_are_counted() {
        let store = TestStore::default();
        let (handle, writer) = spawn(
            Drive::GroupCommit(Box::new(store.clone())),
            WriterConfig::default(),
        );
        let rx = handle
            .submit(vec![temp("a", 1), temp("a", 1), temp("a", 2)])
            .await
            .expect("submit");
        let outcome = wait(rx).await.expect("ok").outcome;
        assert_eq!(
            outcome,
            WriteOutcome {
                inserted: 2,
                duplicates: 1,
                conflicts: 0,
            }
        );
        drop(handle);
        writer.finish().expect("finish");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_makes_submit_wait() {
        let store = TestStore::default();
        let (gate, entered_rx, release_tx) = gate();
        let gated = store.gated(gate);
        let config = WriterConfig {
            queue_batches: 1,
            ..WriterConfig::default()
        };
        let (handle, writer) = spawn(Drive::GroupCommit(Box::new(gated)), config);

        let first = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        let entered_rx = writer_entered(entered_rx).await;
        // The writer is busy with the first batch: the second fills the queue...
        let second = handle.submit(vec![temp("a", 2)]).await.expect("submit");
        // ...and the third cannot be queued until the store moves on.
        let third = {
            let handle = handle.clone();
            tokio::spawn(async move { handle.submit(vec![temp("a", 3)]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !third.is_finished(),
            "submit must wait while the queue is full"
        );

        release_tx.send(()).expect("writer waits");
        let third = tokio::time::timeout(HANG, third)
            .await
            .expect("submit proceeds once released")
            .expect("task")
            .expect("submit");
        wait(first).await.expect("first");
        // Second (and maybe third) go in the next transaction.
        writer_entered(entered_rx).await;
        release_tx.send(()).expect("writer waits");
        wait(second).await.expect("second");
        // Release any further transaction, then let the writer finish.
        drop(release_tx);
        wait(third).await.expect("third");
        drop(handle);
        writer.finish().expect("finish");
        assert_eq!(store.log().store.len(), 3);
    }

    #[tokio::test]
    async fn submit_after_writer_stopped_is_writer_gone() {
        struct Panicking;
        impl Store for Panicking {
            fn write_batch(&mut self, _: &[StoredReading]) -> Result<Written, StoreError> {
                panic!("test store panics");
            }
            fn close(&mut self) -> Result<(), StoreError> {
                Ok(())
            }
        }
        let (handle, writer) = spawn(
            Drive::GroupCommit(Box::new(Panicking)),
            WriterConfig::default(),
        );
        let rx = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        // The reply sender is dropped by the panic.
        assert!(tokio::time::timeout(HANG, rx)
            .await
            .expect("in time")
            .is_err());
        assert!(matches!(writer.finish(), Err(StoreError::Corrupt(_))));
        let err = handle.submit(vec![temp("a", 2)]).await;
        assert!(matches!(err, Err(StoreError::WriterGone)), "{err:?}");
    }

    /// Idle work runs once its deadline passes with no batch; the writer then waits for
    /// batches as before, and a store without a deadline is never called idle.
    #[tokio::test]
    async fn idle_work_runs_when_no_batch_comes() {
        struct Idle {
            due: Option<Instant>,
            idled: Arc<Mutex<usize>>,
        }
        impl Store for Idle {
            fn write_batch(&mut self, batch: &[StoredReading]) -> Result<Written, StoreError> {
                let mut written = Written::default();
                written.outcome.inserted = batch.len() as u64;
                Ok(written)
            }
            fn idle_deadline(&self) -> Option<Instant> {
                self.due
            }
            fn idle(&mut self) -> Result<(), StoreError> {
                self.due = None;
                *self.idled.lock().expect("test lock") += 1;
                Ok(())
            }
            fn close(&mut self) -> Result<(), StoreError> {
                Ok(())
            }
        }
        let idled = Arc::new(Mutex::new(0));
        let store = Idle {
            due: Some(Instant::now()),
            idled: Arc::clone(&idled),
        };
        let (handle, writer) = spawn(Drive::GroupCommit(Box::new(store)), WriterConfig::default());
        let waited = Instant::now();
        while *idled.lock().expect("test lock") == 0 {
            assert!(waited.elapsed() < HANG, "idle work never ran");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rx = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        let committed = wait(rx).await.expect("commit");
        assert_eq!(committed.outcome.inserted, 1);
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("finish");
        assert_eq!(*idled.lock().expect("test lock"), 1);
    }

    /// Each batch of a merged transaction gets its own repeats, re-indexed from its start.
    #[test]
    fn split_is_exact_per_batch() {
        let kept = || {
            Some(Box::new(crate::store::Conflict {
                kept: vec![("v".to_string(), crate::protocol::FieldValue::Int(1))],
                refused: temp("a", 1),
            }))
        };
        let mut total = Written::default();
        total.outcome.inserted = 5;
        // Batches [0..5), [5..8), [8..8), [8..10).
        total.repeat(1, None);
        total.repeat(4, kept());
        total.repeat(8, None);
        total.repeat(9, kept());
        total.repeat(10, None); // beyond every batch (a store's mistake): dropped
        let parts = split_written(total, &[5, 3, 0, 2]);
        let outcome = |inserted, duplicates, conflicts| WriteOutcome {
            inserted,
            duplicates,
            conflicts,
        };
        let outcomes: Vec<_> = parts.iter().map(|part| part.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                outcome(3, 1, 1),
                outcome(3, 0, 0),
                outcome(0, 0, 0),
                outcome(0, 1, 1)
            ]
        );
        let indices = |part: &Written| -> Vec<(usize, bool)> {
            part.repeats
                .iter()
                .map(|r| (r.index, r.conflict.is_some()))
                .collect()
        };
        assert_eq!(indices(&parts[0]), vec![(1, false), (4, true)]);
        assert_eq!(indices(&parts[3]), vec![(0, false), (1, true)]);
    }

    /// Two connections' batches in one transaction: the repeats go to the batch that sent
    /// them, not shared in proportion.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merged_batches_get_their_own_repeats() {
        let store = TestStore::default();
        let (gate, entered_rx, release_tx) = gate();
        let (handle, writer) = spawn(
            Drive::GroupCommit(Box::new(store.gated(gate))),
            WriterConfig::default(),
        );
        let first = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        writer_entered(entered_rx).await;
        // Queued behind the held transaction, so merged into one.
        let fresh = handle
            .submit((10..14).map(|i| temp("b", i)).collect())
            .await
            .expect("submit");
        let mut other = temp("a", 1);
        other.reading.fields[0].1 = crate::protocol::FieldValue::Int(-99);
        let repeats = handle
            .submit(vec![temp("c", 1), temp("a", 1), other])
            .await
            .expect("submit");
        for _ in 0..2 {
            release_tx.send(()).expect("writer waits");
        }
        wait(first).await.expect("committed");
        let fresh = wait(fresh).await.expect("committed");
        assert_eq!((fresh.outcome.inserted, fresh.repeats.len()), (4, 0));
        let repeats = wait(repeats).await.expect("committed");
        assert_eq!(
            repeats.outcome,
            WriteOutcome {
                inserted: 1,
                duplicates: 1,
                conflicts: 1
            }
        );
        assert_eq!(repeats.repeats[0].index, 1);
        assert_eq!(repeats.repeats[1].index, 2);
        let conflict = repeats.repeats[1].conflict.as_ref().expect("a conflict");
        assert_eq!(
            conflict.kept,
            vec![("v".into(), crate::protocol::FieldValue::Int(1))]
        );
        assert_eq!(
            conflict.refused.reading.fields,
            vec![("v".into(), crate::protocol::FieldValue::Int(-99))]
        );
        drop(handle);
        drop(release_tx);
        writer.finish().expect("finish");
        assert_eq!(store.log().txns, vec![1, 7]);
    }
}

#[cfg(test)]
mod route_tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::protocol::{FieldValue, Reading};
    use crate::store::testing::{temp, ConcurrentTestStore};

    /// Generous liveness guard: a test that needs longer than this is hung.
    const HANG: Duration = Duration::from_secs(20);

    /// A concurrent store (as the PostgreSQL store will be) gets the batches straight
    /// through the handle and commits several at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_store_has_several_commits_in_flight() {
        // Every commit waits until three are running: they finish only if they overlap.
        let store = Arc::new(ConcurrentTestStore::new(4, 3));
        let reader = store.reader();
        let (handle, writer) = spawn(Drive::Concurrent(store.clone()), WriterConfig::default());
        let mut answers = Vec::new();
        for ts in 0..3 {
            answers.push(handle.submit(vec![temp("s", ts)]).await.expect("submit"));
        }
        for answer in answers {
            let committed = tokio::time::timeout(HANG, answer)
                .await
                .expect("commits overlap")
                .expect("answered")
                .expect("committed");
            assert_eq!(committed.outcome.inserted, 1);
        }
        assert_eq!(store.peak_in_flight.load(Ordering::SeqCst), 3);
        assert_eq!(reader.counts().await.expect("counts").total, 3);
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("close");
        assert!(store.is_closed());
    }

    /// Closing a concurrent store waits for the commits in flight: every receipt is
    /// answered when `finish` returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_close_drains_commits_in_flight() {
        // Three commits wait until a fourth party (this test) joins them.
        let store = Arc::new(ConcurrentTestStore::new(4, 4));
        let (handle, writer) = spawn(Drive::Concurrent(store.clone()), WriterConfig::default());
        let mut receipts = Vec::new();
        for ts in 0..3 {
            receipts.push(handle.submit(vec![temp("s", ts)]).await.expect("submit"));
        }
        drop(handle);
        let mut closing = tokio::task::spawn_blocking(move || writer.finish());
        // Commits are held: close cannot be done.
        let early = tokio::time::timeout(Duration::from_millis(50), &mut closing).await;
        assert!(early.is_err(), "close returned with commits in flight");
        store.release_rendezvous().await;
        tokio::time::timeout(HANG, closing)
            .await
            .expect("close ends once the commits end")
            .expect("join")
            .expect("close");
        assert!(store.is_closed());
        for mut receipt in receipts {
            let answer = receipt.try_recv().expect("answered before close returned");
            assert_eq!(answer.expect("committed").outcome.inserted, 1);
        }
    }

    /// A concurrent store's commits and failures go through the same accounting as the
    /// writer thread's: counted once each, into the handle's telemetry.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_counted() {
        use crate::events::names;
        let recorder = events::prometheus_builder().build_recorder();
        // Leaked: the handle wants 'static telemetry, as the process's is.
        let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
            &recorder,
            Telemetry::register,
        )));
        let store = Arc::new(ConcurrentTestStore::new(4, 0));
        let (handle, writer) = spawn_counted(
            Drive::Concurrent(store.clone()),
            WriterConfig::default(),
            Some(telemetry),
        );
        let receipts = [
            vec![temp("s", 1), temp("s", 2)],
            vec![temp("s", 2), temp("s", 3)],
        ]
        .map(|batch| handle.submit(batch));
        for receipt in receipts {
            let answer = tokio::time::timeout(HANG, receipt.await.expect("submit"))
                .await
                .expect("in time")
                .expect("answered");
            answer.expect("committed");
        }
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("close");
        assert_eq!(
            telemetry
                .totals
                .readings_stored
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
        let text = recorder.handle().render();
        let sample = |series: &str| {
            text.lines().find_map(|line| {
                line.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
        };
        assert_eq!(sample(names::STORE_COMMITS), Some(2.0), "{text}");
        assert_eq!(
            sample(&format!(
                "{}{{outcome=\"duplicate\"}}",
                names::READINGS_COMMITTED
            )),
            Some(1.0),
            "{text}"
        );
    }

    /// The memory store is written by the submitting task: the answer is there at once.
    #[tokio::test]
    async fn inline_store_answers_without_a_thread() {
        let (handle, writer) = spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let reading = StoredReading {
            reading: Reading {
                measurement: "m".into(),
                tags: vec![],
                fields: vec![("v".into(), FieldValue::Int(1))],
                timestamp_ns: Some(1),
            },
            sensor: "s".into(),
            received_ns: 1,
        };
        let mut answer = handle
            .submit(vec![reading.clone(), reading])
            .await
            .expect("submit");
        let committed = answer
            .try_recv()
            .expect("answered before submit returned")
            .expect("ok");
        assert_eq!(
            committed.outcome,
            WriteOutcome {
                inserted: 1,
                duplicates: 1,
                conflicts: 0,
            }
        );
        drop(handle);
        writer.finish().expect("close");
    }
}
