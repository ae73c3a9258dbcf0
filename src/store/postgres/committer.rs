//! [`PgStore`]: the PostgreSQL store's write side, a [`ConcurrentStore`].
//!
//! - **Group commit, several in flight**: `submit` puts the batch in a bounded queue (and
//!   waits while it is full: back-pressure); [`PgOptions::pool_size`] committer tasks each
//!   take whatever is queued (up to the row cap), commit it as one transaction on a
//!   connection of their own, and answer each batch. One slow commit holds one committer;
//!   the others go on.
//! - **Outage**: a connection-level failure (restart, refused, cut) holds the batches, not
//!   answered (so not acked), and retries the same transaction with backoff (capped at
//!   [`MAX_BACKOFF`]) until the database is back. A commit whose outcome was unknown is
//!   safe to run again: the identity key makes its readings duplicates. The outage is
//!   logged once when it begins and once when it ends, counted, and makes `/readyz` say
//!   not ready. Meanwhile the queue fills and `submit` waits: the connections stop
//!   reading. At shutdown the held batches get [`CLOSE_OUTAGE_WAIT`] more, then are
//!   answered with the error (not acked).
//! - **Upkeep** (one task): probe about once a second while no commit happens (so
//!   `/readyz` follows the database without traffic; it ends an outage only when no
//!   batch is held, else the commits decide), fold the totals deltas, create the
//!   partitions ahead, and apply `--retention`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::schema::{self, Created};
use super::{pg_failure, pool, pool_failure, write, Failure, PgOptions, PgUrl};
use crate::events::{
    self, Event as _, RetentionApplied, StoreProbed, StoreWaitEnded, StoreWaitStarted, Telemetry,
};
use crate::store::read::BoxFuture;
use crate::store::sqlite::SeriesCache;
use crate::store::writer::{CommitReply, ConcurrentStore};
use crate::store::{FsyncPolicy, StoreError, StoredReading};

/// Longest wait between two attempts while the database is away.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// First wait after a failed attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Immediate reruns of a transaction that hit a serialization failure or deadlock.
const MAX_RETRIES: u32 = 10;
/// A commit taking longer than this is given up as unknown (the connection is dropped)
/// and retried: a cut network must not hold a committer forever.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long held batches may still wait for the database once shutdown has begun.
pub const CLOSE_OUTAGE_WAIT: Duration = Duration::from_secs(10);
/// Probe the database when no commit happened for this long.
const PROBE_INTERVAL: Duration = crate::store::writer::PROBE_INTERVAL;
/// Fold the totals deltas this often.
const FOLD_INTERVAL: Duration = Duration::from_secs(1);
/// Create the partitions ahead and apply retention this often.
const HOURLY: Duration = Duration::from_secs(3600);
/// Retention that failed (e.g. its lock timed out) runs again after this.
const RETENTION_RETRY: Duration = Duration::from_secs(60);

/// One submitted batch.
struct Job {
    readings: Vec<StoredReading>,
    reply: CommitReply,
}

/// What the committers and the upkeep task share.
struct Shared {
    location: String,
    pool: Pool,
    options: PgOptions,
    queue: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    /// Series key → id, only for committed series.
    cache: Mutex<SeriesCache>,
    /// Days with a partition (or known to stay in the default partition).
    days: Mutex<BTreeSet<i64>>,
    /// When the current outage began, if the database is away.
    outage: Mutex<Option<Instant>>,
    /// When a commit or probe last succeeded.
    last_ok: Mutex<Instant>,
    /// Transactions held by the outage (waiting to be retried). While any is, only a
    /// commit may end the outage: the probe's `SELECT 1` can work while writes cannot
    /// (a read-only standby after a failover, a full disk, no new connections).
    held: AtomicUsize,
    /// Tests: probes run so far.
    #[cfg(test)]
    probes: AtomicUsize,
    /// A commit inserted rows since the last fold (an idle collector does not fold).
    unfolded: std::sync::atomic::AtomicBool,
    /// Set when shutdown begins: held batches then wait until this at most
    /// ([`CLOSE_OUTAGE_WAIT`] after it began), however many there are.
    close_deadline: Mutex<Option<tokio::time::Instant>>,
    /// Where outages are counted; None = the process's handles.
    telemetry: Option<&'static Telemetry>,
    /// Tests: held, a committer that took one batch waits here before merging the rest,
    /// so a test can put several batches in one transaction for sure.
    #[cfg(test)]
    merge_gate: tokio::sync::RwLock<()>,
}

/// The PostgreSQL store's write side (see the module doc).
pub struct PgStore {
    shared: Arc<Shared>,
    /// Dropped at close: the committers then drain the queue and stop.
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    committers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    upkeep: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop_upkeep: CancellationToken,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.shared.location)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect, migrate, create the partitions ahead, and start the committers and the
    /// upkeep task on the current runtime.
    ///
    /// # Errors
    /// The database cannot be reached or migrated, or its schema is newer than this build.
    pub async fn open(url: &PgUrl, options: PgOptions) -> Result<Arc<PgStore>, StoreError> {
        Self::open_counted(url, options, None).await
    }

    /// [`PgStore::open`], counting outages into `telemetry` (a test's own handles).
    pub async fn open_counted(
        url: &PgUrl,
        options: PgOptions,
        telemetry: Option<&'static Telemetry>,
    ) -> Result<Arc<PgStore>, StoreError> {
        let location = url.to_string();
        let setup = match options.fsync {
            FsyncPolicy::Always => write::STAGING_SETUP,
            FsyncPolicy::Os => write::STAGING_SETUP_ASYNC,
        };
        let committers = options.pool_size.clamp(1, super::MAX_POOL_SIZE);
        // One more than the committers: the upkeep task never waits for a committer.
        let pool = pool(url, committers + 1, setup)?;
        let days = {
            let mut client = pool
                .get()
                .await
                .map_err(|err| pool_failure(&location, "connect", err).into_error())?;
            schema::migrate(&mut client, &location)
                .await
                .map_err(Failure::into_error)?;
            schema::partition_days(&**client, &location)
                .await
                .map_err(Failure::into_error)?
        };
        let (sender, receiver) = mpsc::channel(options.queue_batches.max(1));
        let shared = Arc::new(Shared {
            location,
            pool,
            cache: Mutex::new(SeriesCache::new(options.series_cache_entries)),
            options,
            queue: tokio::sync::Mutex::new(receiver),
            days: Mutex::new(days),
            outage: Mutex::new(None),
            last_ok: Mutex::new(Instant::now()),
            held: AtomicUsize::new(0),
            #[cfg(test)]
            probes: AtomicUsize::new(0),
            unfolded: std::sync::atomic::AtomicBool::new(true),
            close_deadline: Mutex::new(None),
            telemetry,
            #[cfg(test)]
            merge_gate: tokio::sync::RwLock::new(()),
        });
        ensure_ahead(&shared).await.map_err(Failure::into_error)?;
        let stop_upkeep = CancellationToken::new();
        let handles = (0..committers)
            .map(|_| tokio::spawn(committer(Arc::clone(&shared))))
            .collect();
        let upkeep = tokio::spawn(upkeep(Arc::clone(&shared), stop_upkeep.clone()));
        if let Some(shutdown) = shared.options.shutdown.clone() {
            let shared = Arc::clone(&shared);
            let stopped = stop_upkeep.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = shutdown.cancelled() => shared.closing(),
                    _ = stopped.cancelled() => {}
                }
            });
        }
        tracing::info!(store = %shared.location, committers, tls = %url.tls_description(), retention = ?shared.options.retention.map(humantime::format_duration), "postgresql store open");
        Ok(Arc::new(PgStore {
            shared,
            sender: Mutex::new(Some(sender)),
            committers: Mutex::new(handles),
            upkeep: Mutex::new(Some(upkeep)),
            stop_upkeep,
        }))
    }

    /// Whether the database is reachable as far as the store knows (no outage under way).
    pub fn is_available(&self) -> bool {
        lock(&self.shared.outage).is_none()
    }

    /// Tests: while the guard lives, a committer that took a batch waits before merging
    /// what else is queued, so the batches submitted meanwhile share its transaction (with
    /// one committer).
    #[cfg(test)]
    pub(crate) async fn hold_merges(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.shared.merge_gate.write().await
    }

    /// Tests: how many probes the upkeep task has run.
    #[cfg(test)]
    pub(crate) fn probes(&self) -> usize {
        self.shared.probes.load(Ordering::Relaxed)
    }

    /// Fold the totals deltas now (tests; the upkeep task does it once a second).
    pub async fn fold_totals(&self) -> Result<u64, StoreError> {
        let mut client = self
            .shared
            .pool
            .get()
            .await
            .map_err(|err| pool_failure(&self.shared.location, "connect", err).into_error())?;
        schema::fold_totals(&mut client, &self.shared.location)
            .await
            .map_err(Failure::into_error)
    }

    /// Apply retention with the cutoff `now_ns - keep` now (the upkeep task does it with
    /// `--retention` at open and hourly).
    pub async fn apply_retention(
        &self,
        now_ns: i64,
        keep: Duration,
    ) -> Result<schema::Retained, StoreError> {
        retention(&self.shared, now_ns, keep)
            .await
            .map_err(Failure::into_error)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a plain read or assignment: a panic cannot leave it torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn telemetry(&self) -> &'static Telemetry {
        self.telemetry.unwrap_or_else(events::telemetry)
    }

    /// The database failed at the connection level, in an attempt that began at `began`:
    /// start an outage (once). A failure of an attempt that began before the last success
    /// is stale (say, a connect refused just before the database came back, answered after
    /// another committer's commit went through): it starts no second outage.
    fn unavailable(&self, error: &StoreError, readings: usize, began: Instant) {
        let mut outage = lock(&self.outage);
        if outage.is_none() && *lock(&self.last_ok) <= began {
            *outage = Some(Instant::now());
            drop(outage);
            StoreWaitStarted { error, readings }.emit_to(self.telemetry());
        }
    }

    /// Shutdown began: batches held by an outage wait at most [`CLOSE_OUTAGE_WAIT`] more
    /// (from the first call).
    fn closing(&self) {
        lock(&self.close_deadline)
            .get_or_insert_with(|| tokio::time::Instant::now() + CLOSE_OUTAGE_WAIT);
    }

    /// A commit or probe succeeded: end the outage, if any.
    fn available(&self) {
        *lock(&self.last_ok) = Instant::now();
        let began = lock(&self.outage).take();
        if let Some(began) = began {
            StoreWaitEnded {
                waited: began.elapsed(),
            }
            .emit_to(self.telemetry());
        }
    }
}

impl ConcurrentStore for PgStore {
    fn submit(
        &self,
        batch: Vec<StoredReading>,
        reply: CommitReply,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let sender = lock(&self.sender).clone();
        Box::pin(async move {
            let Some(sender) = sender else {
                return Err(StoreError::WriterGone);
            };
            // Waits while the queue is full: the connection stops reading meanwhile.
            sender
                .send(Job {
                    readings: batch,
                    reply,
                })
                .await
                .map_err(|_| StoreError::WriterGone)
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // No new batch; the committers drain what is queued, then stop.
            lock(&self.sender).take();
            self.shared.closing();
            let committers = std::mem::take(&mut *lock(&self.committers));
            for committer in committers {
                if let Err(err) = committer.await {
                    tracing::error!(cause = %err, "store committer failed");
                }
            }
            self.stop_upkeep.cancel();
            let upkeep = lock(&self.upkeep).take();
            if let Some(upkeep) = upkeep {
                let _ = upkeep.await;
            }
            // Best effort: the next fold (by any collector) does it otherwise.
            if self.is_available() {
                if let Err(err) = self.fold_totals().await {
                    tracing::debug!(cause = %err, "final fold of the totals failed");
                }
            }
            self.shared.pool.close();
            Ok(())
        })
    }
}

/// One committer: take what is queued, commit it, answer; until the queue is closed and
/// empty.
async fn committer(shared: Arc<Shared>) {
    let max_rows = shared.options.max_batch_rows.max(1);
    // A batch that did not fit in the previous transaction: first of the next one.
    let mut carried: Option<Job> = None;
    loop {
        let mut jobs = Vec::new();
        {
            let mut queue = shared.queue.lock().await;
            let first = match carried.take() {
                Some(job) => job,
                None => match queue.recv().await {
                    Some(job) => job,
                    None => return,
                },
            };
            let mut rows = first.readings.len();
            jobs.push(first);
            #[cfg(test)]
            let _gate = shared.merge_gate.read().await;
            while rows < max_rows {
                let Ok(job) = queue.try_recv() else { break };
                if rows + job.readings.len() > max_rows {
                    carried = Some(job);
                    break;
                }
                rows += job.readings.len();
                jobs.push(job);
            }
        }
        commit_jobs(&shared, jobs).await;
    }
}

/// Commit `jobs` as one transaction, waiting out an outage, and answer each. If that
/// transaction fails for good (not an outage), each batch is run again alone: one bad
/// batch (e.g. a value the database refuses) must not fail the others it was merged with.
async fn commit_jobs(shared: &Shared, jobs: Vec<Job>) {
    let lens: Vec<usize> = jobs.iter().map(|job| job.readings.len()).collect();
    let mut replies = Vec::with_capacity(jobs.len());
    let mut batch = Vec::with_capacity(lens.iter().sum());
    for job in jobs {
        replies.push(job.reply);
        batch.extend(job.readings);
    }
    if batch.is_empty() {
        for reply in replies {
            reply.send(Ok((Default::default(), Duration::ZERO)));
        }
        return;
    }
    match commit_waiting(shared, &batch).await {
        // One transaction: counted once in the commit metrics, whatever it merged.
        Ok((written, duration)) => CommitReply::send_together(replies, written, duration),
        Err(Failure::Unavailable(err)) => CommitReply::fail_together(replies, err),
        Err(failure) if replies.len() == 1 => {
            CommitReply::fail_together(replies, failure.into_error());
        }
        Err(failure) => {
            let err = failure.into_error();
            tracing::warn!(cause = %err, batches = replies.len(), "a merged store transaction failed; committing its batches one by one");
            let mut start = 0;
            for (reply, len) in replies.into_iter().zip(lens) {
                let part = &batch[start..start + len];
                start += len;
                if part.is_empty() {
                    reply.send(Ok((Default::default(), Duration::ZERO)));
                    continue;
                }
                match commit_waiting(shared, part).await {
                    Ok(done) => reply.send(Ok(done)),
                    Err(failure) => reply.send(Err(failure.into_error())),
                }
            }
        }
    }
}

/// Commit `batch` as one transaction: conflicts run again at once, an outage is waited
/// out (until shutdown's deadline, then it is the error).
async fn commit_waiting(
    shared: &Shared,
    batch: &[StoredReading],
) -> Result<(crate::store::Written, Duration), Failure> {
    let mut backoff = MIN_BACKOFF;
    let mut retries = 0;
    // Counted in `held` from the first outage failure until this returns.
    let mut held: Option<Held<'_>> = None;
    loop {
        let started = Instant::now();
        let failure = match commit_once(shared, batch).await {
            Ok(written) => {
                shared.available();
                return Ok((written, started.elapsed()));
            }
            Err(failure) => failure,
        };
        match failure {
            Failure::Retry(err) if retries < MAX_RETRIES => {
                retries += 1;
                tracing::debug!(cause = %err, retries, "transaction conflict; running it again");
            }
            Failure::Retry(err) | Failure::Fatal(err) => return Err(Failure::Fatal(err)),
            Failure::Unavailable(err) => {
                held.get_or_insert_with(|| Held::new(&shared.held));
                shared.unavailable(&err, batch.len(), started);
                let deadline = *lock(&shared.close_deadline);
                if deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                    tracing::error!(cause = %err, readings = batch.len(), "shutting down while the store is unavailable; the held readings are not acknowledged");
                    return Err(Failure::Unavailable(err));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One transaction counted in [`Shared::held`] while this lives.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Held(count)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One attempt: partitions for the batch's days, then the transaction; the series it
/// made are cached only once committed.
async fn commit_once(
    shared: &Shared,
    batch: &[StoredReading],
) -> Result<crate::store::Written, Failure> {
    let mut client = shared
        .pool
        .get()
        .await
        .map_err(|err| pool_failure(&shared.location, "connect", err))?;
    let work = async {
        ensure_days(shared, &mut client, batch).await?;
        write::write_batch(&mut client, &shared.location, &shared.cache, batch).await
    };
    let (written, created) = match tokio::time::timeout(COMMIT_TIMEOUT, work).await {
        Ok(Ok(done)) => done,
        Ok(Err(failure)) => {
            if matches!(failure, Failure::Unavailable(_)) {
                // Reconnect for the next attempt: this connection may lead to a server
                // that became a read-only standby (a failover behind a proxy), or be
                // half-dead; the pool would hand it out again as it is.
                drop(deadpool_postgres::Object::take(client));
            }
            return Err(failure);
        }
        Err(_) => {
            // Cut off mid-transaction: the connection's state is unknown, so it is closed
            // rather than handed to the next commit (its slot is freed for a new one).
            drop(deadpool_postgres::Object::take(client));
            return Err(Failure::Unavailable(StoreError::Unavailable {
                location: shared.location.clone(),
                operation: "commit",
                detail: format!("no answer within {}s", COMMIT_TIMEOUT.as_secs()),
            }));
        }
    };
    if !created.is_empty() {
        lock(&shared.cache).extend(created);
    }
    if written.outcome.inserted > 0 {
        shared.unfolded.store(true, Ordering::Relaxed);
    }
    Ok(written)
}

/// Create the partitions of the batch's days that may have one and do not yet.
async fn ensure_days(
    shared: &Shared,
    client: &mut tokio_postgres::Client,
    batch: &[StoredReading],
) -> Result<(), Failure> {
    let today = schema::day_of(crate::timefmt::now_ns());
    let missing: BTreeSet<i64> = {
        let days = lock(&shared.days);
        batch
            .iter()
            .map(|stored| schema::day_of(stored.timestamp_ns()))
            .filter(|day| !days.contains(day) && schema::on_demand(*day, today))
            .collect()
    };
    for day in missing {
        if schema::create_partition(client, &shared.location, day).await? == Created::InDefault {
            tracing::warn!(day = ?schema::partition_name(day), "readings of this day are already in the default partition; it keeps them");
        }
        lock(&shared.days).insert(day);
    }
    Ok(())
}

/// Today's partition and the next [`schema::AHEAD_DAYS`] days'.
async fn ensure_ahead(shared: &Shared) -> Result<(), Failure> {
    let mut client = shared
        .pool
        .get()
        .await
        .map_err(|err| pool_failure(&shared.location, "connect", err))?;
    let today = schema::day_of(crate::timefmt::now_ns());
    for day in today..=today + schema::AHEAD_DAYS {
        if lock(&shared.days).contains(&day) {
            continue;
        }
        schema::create_partition(&mut client, &shared.location, day).await?;
        lock(&shared.days).insert(day);
    }
    Ok(())
}

/// Retention with the cutoff `now_ns - keep`.
async fn retention(
    shared: &Shared,
    now_ns: i64,
    keep: Duration,
) -> Result<schema::Retained, Failure> {
    let keep_ns = i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX);
    let cutoff_ns = now_ns.saturating_sub(keep_ns);
    let mut client = shared
        .pool
        .get()
        .await
        .map_err(|err| pool_failure(&shared.location, "connect", err))?;
    let retained = schema::apply_retention(&mut client, &shared.location, cutoff_ns).await?;
    {
        let mut days = lock(&shared.days);
        for day in &retained.days {
            days.remove(day);
        }
    }
    RetentionApplied {
        partitions: &retained.dropped,
        readings: retained.readings,
        cutoff_ns,
    }
    .emit_to(shared.telemetry());
    Ok(retained)
}

/// The upkeep task: probe when idle, fold the totals, partitions ahead, retention.
async fn upkeep(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(FOLD_INTERVAL.min(PROBE_INTERVAL));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Retention at open, then hourly; partitions ahead were made at open.
    let mut hourly_at = Instant::now();
    let mut ahead_due = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let idle = lock(&shared.last_ok).elapsed() >= PROBE_INTERVAL;
        if idle || lock(&shared.outage).is_some() {
            probe(&shared).await;
        }
        if lock(&shared.outage).is_some() {
            continue;
        }
        match fold(&shared).await {
            Ok(_) => {}
            Err(failure) => {
                tracing::warn!(cause = %failure.into_error(), "folding the store totals failed")
            }
        }
        if ahead_due || hourly_at <= Instant::now() {
            hourly_at = Instant::now() + HOURLY;
            ahead_due = ensure_ahead(&shared).await.is_err();
            if let Some(keep) = shared.options.retention {
                if let Err(failure) = retention(&shared, crate::timefmt::now_ns(), keep).await {
                    // E.g. its lock gave way to a long query: soon, not in an hour.
                    hourly_at = Instant::now() + RETENTION_RETRY;
                    tracing::warn!(cause = %failure.into_error(), "retention failed; trying again in a minute");
                }
            }
        }
    }
}

async fn fold(shared: &Shared) -> Result<u64, Failure> {
    let mut client = shared
        .pool
        .get()
        .await
        .map_err(|err| pool_failure(&shared.location, "connect", err))?;
    schema::fold_totals(&mut client, &shared.location).await
}

/// `SELECT 1` on a pooled connection: readiness follows the database without traffic.
async fn probe(shared: &Shared) {
    let began = Instant::now();
    let attempt = tokio::time::timeout(super::CONNECT_TIMEOUT * 2, async {
        let client = shared
            .pool
            .get()
            .await
            .map_err(|err| pool_failure(&shared.location, "probe", err))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|err| pg_failure(&shared.location, "probe", &err))
    })
    .await;
    let result = match attempt {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(Failure::Unavailable(StoreError::Unavailable {
            location: shared.location.clone(),
            operation: "probe",
            detail: "no answer".into(),
        })),
    };
    #[cfg(test)]
    shared.probes.fetch_add(1, Ordering::Relaxed);
    match result {
        // Batches are held: the commits decide when the outage ends (`SELECT 1` working
        // says nothing about writes).
        Ok(()) if shared.held.load(Ordering::SeqCst) > 0 => {}
        Ok(()) => {
            shared.available();
            StoreProbed { result: Ok(()) }.emit_to(shared.telemetry());
        }
        Err(Failure::Unavailable(err)) => shared.unavailable(&err, 0, began),
        Err(failure) => {
            let err = failure.into_error();
            StoreProbed { result: Err(&err) }.emit_to(shared.telemetry());
        }
    }
}
