//! The group-commit route: the writer thread that merges every connection's batches into
//! one transaction, and the inline shortcut beside it (a store whose commits never wait
//! lets the submitting task commit itself while the writer is idle).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use crate::events::{self, Event as _, StoreProbed, Telemetry};

use super::{commit, Job, SharedStore, WriterConfig, GROUP_ROWS};
use crate::store::{Store, StoreError};

/// The group-commit route: the writer thread's queue, and the store it writes, which a
/// submitting task may commit to itself while the writer has nothing to do (a store whose
/// commits never wait for the disk, [`Store::commits_without_waiting`]).
pub(super) struct ThreadRoute {
    pub(super) tx: mpsc::Sender<Job>,
    /// The writer thread holds the lock while it commits; a submitting task only ever
    /// `try_lock`s it, so no async worker waits on a commit it does not run itself.
    pub(super) store: SharedStore,
    /// Batches sent to the writer and not yet committed by it. A task commits inline only
    /// while it holds the lock and this is 0: every batch submitted before is then
    /// committed, so one connection's batches (and barriers) keep their order.
    pub(super) in_writer: std::sync::Arc<AtomicUsize>,
    /// Whether a submitting task may commit inline at all (the store's commits never wait
    /// for the disk and no commit delay asks for grouping).
    pub(super) inline_when_idle: bool,
}

impl ThreadRoute {
    /// Commit `job` on the calling task if the writer is idle; else give the job back.
    pub(super) fn try_inline(
        &self,
        job: Job,
        telemetry: Option<&'static Telemetry>,
    ) -> Result<(), Job> {
        if !self.inline_when_idle || self.in_writer.load(Ordering::SeqCst) != 0 {
            return Err(job);
        }
        let mut store = match self.store.try_lock() {
            Ok(store) => store,
            // A panic in an earlier commit: rusqlite rolled its transaction back, and a
            // store updates its own state only after a commit.
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Err(job),
        };
        // Re-read under the lock: the writer lowers it only under the lock, after the
        // commit, so 0 here means nothing submitted before is still uncommitted. The store
        // may have maintenance due (a checkpoint): then the writer thread does this commit.
        if self.in_writer.load(Ordering::SeqCst) != 0 || !store.commits_without_waiting() {
            return Err(job);
        }
        let rows = job.readings.len();
        commit(&mut **store, [job], rows, telemetry);
        drop(store);
        self.begin_next_write_later();
        Ok(())
    }

    /// After an inline commit, [`Store::begin_next_write`] in a task of its own: spawned
    /// from this one, it runs when this task yields, i.e. once the ack is written and the
    /// connection waits for its next reading (tokio runs a task spawned by the running
    /// one next, on the same worker). Skipped when the lock is taken or the writer thread
    /// has batches: whoever holds the store then begins its own transaction.
    fn begin_next_write_later(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = std::sync::Arc::clone(&self.store);
        let in_writer = std::sync::Arc::clone(&self.in_writer);
        runtime.spawn(async move {
            if in_writer.load(Ordering::SeqCst) != 0 {
                return;
            }
            if let Ok(mut store) = store.try_lock() {
                // Re-read under the lock, as `try_inline` does.
                if in_writer.load(Ordering::SeqCst) == 0 {
                    store.begin_next_write();
                }
            }
        });
    }
}

/// One batch counted in [`ThreadRoute::in_writer`] until it is sent (then `forget`): if it
/// is never sent, the count goes back down.
pub(super) struct InWriter<'a>(&'a AtomicUsize);

impl<'a> InWriter<'a> {
    pub(super) fn count(in_writer: &'a AtomicUsize) -> Self {
        in_writer.fetch_add(1, Ordering::SeqCst);
        InWriter(in_writer)
    }
}

impl Drop for InWriter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The writer thread: gather, commit once, answer; until every handle is dropped.
pub(super) fn run(
    store: &Mutex<Box<dyn Store>>,
    in_writer: &AtomicUsize,
    mut rx: mpsc::Receiver<Job>,
    config: WriterConfig,
    telemetry: Option<&'static Telemetry>,
) -> Result<(), StoreError> {
    // A panic in an inline commit on some task: its transaction was rolled back, and a
    // store updates its own state only after a commit.
    let lock = || store.lock().unwrap_or_else(PoisonError::into_inner);
    // A tiny runtime of our own only to wait on the channel with a timeout (commit_delay).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime with only a timer can be built");
    let max_rows = config.max_batch_rows.max(1);
    // A job that did not fit in the previous transaction: first of the next one.
    let mut carried: Option<Job> = None;
    // When to probe the store if no batch comes first.
    let mut probe_at = Instant::now() + PROBE_INTERVAL;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.try_recv() {
                // Queued while the last transaction committed: no timer, no park.
                Ok(job) => job,
                // None: every handle is dropped and the queue is drained.
                Err(_) => match next_or_idle(store, &rt, &mut rx, &mut probe_at, telemetry) {
                    Some(Some(job)) => job,
                    Some(None) => continue,
                    None => break,
                },
            },
        };
        // Held from gathering to commit: no task commits inline meanwhile.
        let mut locked = lock();
        let deadline = Instant::now() + config.commit_delay;
        let mut rows = first.readings.len();
        let mut jobs = vec![first];
        while rows < max_rows {
            let next = match rx.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Empty) if !config.commit_delay.is_zero() => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        // Err = the delay ran out; Ok(None) = the channel closed.
                        // The timer must be created inside the runtime, hence the async block.
                        rt.block_on(async { tokio::time::timeout(left, rx.recv()).await })
                            .ok()
                            .flatten()
                    }
                }
                Err(_) => None,
            };
            let Some(job) = next else { break };
            // Keep transactions under the limit; only a single oversized batch exceeds it.
            if rows + job.readings.len() > max_rows {
                carried = Some(job);
                break;
            }
            rows += job.readings.len();
            jobs.push(job);
        }
        if carried.is_none() && config.commit_delay.is_zero() {
            let open = || {
                telemetry
                    .unwrap_or_else(events::telemetry)
                    .totals
                    .connections_open
                    .load(Ordering::Relaxed)
            };
            rows += gather_siblings(open, &rt, &mut rx, &mut jobs, rows, &config, &mut carried);
        }
        let committed = jobs.len();
        commit(&mut **locked, jobs, rows, telemetry);
        // Under the lock, after the commit: see `ThreadRoute::in_writer`.
        in_writer.fetch_sub(committed, Ordering::SeqCst);
        drop(locked);
        // A commit tells as much as a probe.
        probe_at = Instant::now() + PROBE_INTERVAL;
    }
    lock().close()
}

/// How long the writer sleeps between two looks at the queue while a transaction gathers
/// a stream of arrivals (after its first, woken look).
const GROUP_SLICE: Duration = Duration::from_millis(2);

/// A transaction holding batches from more than 1 in this many open connections stops
/// gathering: most of those connections likely wait for this very commit (a closed loop,
/// one reading in flight each), so a wait would only stall them. An idle fleet's
/// transaction holds a small share of its connections.
const GROUP_SHARE_DIVISOR: u64 = 8;

/// Readings per batch, on average, up to which a transaction's batches count as small.
const GROUP_SMALL_BATCH: usize = 4;

/// Many small batches in `jobs` (`rows` readings): keep gathering for up to
/// [`WriterConfig::group_window`] (from now: the queue was just drained), until the
/// transaction holds [`GROUP_ROWS`] readings, or until batches stop coming (none within
/// [`WriterConfig::group_idle_gap`] at first, or in a whole slice later), or until it holds
/// batches from a large share of the open connections ([`GROUP_SHARE_DIVISOR`]). Senders that
/// each wait for their ack before the next reading (the seed's exchange, one reading in
/// flight) send nothing more until this commit answers them; waiting out the window would
/// only add it to every round trip. Returns the readings added.
fn gather_siblings(
    open_connections: impl Fn() -> u64,
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Job>,
    jobs: &mut Vec<Job>,
    rows: usize,
    config: &WriterConfig,
    carried: &mut Option<Job>,
) -> usize {
    let max_rows = config.max_batch_rows.max(1);
    let enough = GROUP_ROWS.min(max_rows);
    // Small batches: a reading or a few each (a pipelining sender's batches are larger,
    // and its transaction grows by itself while the previous one commits).
    let small = rows <= GROUP_SMALL_BATCH * jobs.len();
    if config.group_window.is_zero()
        || jobs.len() < config.group_siblings.max(1)
        || jobs.len() as u64 * GROUP_SHARE_DIVISOR > open_connections()
        || !small
        || rows >= enough
    {
        return 0;
    }
    let deadline = Instant::now() + config.group_window;
    let mut added = 0;
    // The first look is woken by an arrival: a closed loop costs one short gap, not a slice.
    let gap = config.group_idle_gap.min(config.group_window);
    match rt.block_on(async { tokio::time::timeout(gap, rx.recv()).await }) {
        Ok(Some(job)) => *carried = Some(job),
        // Nothing within the gap, or every handle gone (shutdown): commit what is here.
        Ok(None) | Err(_) => return 0,
    }
    loop {
        if let Some(job) = carried.take() {
            if rows + added + job.readings.len() > max_rows {
                *carried = Some(job);
                return added;
            }
            added += job.readings.len();
            jobs.push(job);
            if rows + added >= enough {
                return added;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return added;
        }
        if jobs.len() as u64 * GROUP_SHARE_DIVISOR > open_connections() {
            return added;
        }
        // Sleeping between looks, not woken per batch: one wake-up per reading would cost
        // more than the fsync it saves.
        std::thread::sleep(left.min(GROUP_SLICE));
        let before = jobs.len();
        loop {
            let job = match rx.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Empty) => break,
                // Every handle is gone (shutdown): commit what is here now.
                Err(TryRecvError::Disconnected) => return added,
            };
            if rows + added + job.readings.len() > max_rows {
                *carried = Some(job);
                return added;
            }
            added += job.readings.len();
            jobs.push(job);
            if rows + added >= enough {
                return added;
            }
        }
        if jobs.len() == before {
            // A whole slice without a batch: the arrivals have dried up.
            return added;
        }
    }
}

/// How long the writer waits without a batch before it probes the store ([`Store::probe`]):
/// how soon `/readyz` sees a store fail or recover when no reading comes.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Wait for the next job; if the store's idle deadline passes first, run its idle work,
/// if `probe_at` passes first, probe the store (and set the next `probe_at`); then answer
/// `Some(None)`. `None`: every handle is dropped and the queue is drained.
fn next_or_idle(
    store: &Mutex<Box<dyn Store>>,
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Job>,
    probe_at: &mut Instant,
    telemetry: Option<&'static Telemetry>,
) -> Option<Option<Job>> {
    let lock = || store.lock().unwrap_or_else(PoisonError::into_inner);
    let idle_at = lock().idle_deadline();
    let deadline = idle_at.map_or(*probe_at, |idle_at| idle_at.min(*probe_at));
    // The timer must be created inside the runtime, hence the async block.
    let waited = rt.block_on(async { tokio::time::timeout_at(deadline.into(), rx.recv()).await });
    match waited {
        Ok(job) => job.map(Some),
        Err(_elapsed) => {
            let now = Instant::now();
            let mut store = lock();
            // Re-read: a task may have committed inline while the writer waited.
            if store.idle_deadline().is_some_and(|idle_at| idle_at <= now) {
                if let Err(err) = store.idle() {
                    tracing::warn!(cause = %err, "store idle work failed");
                }
            }
            if *probe_at <= now {
                let probed = store.probe();
                StoreProbed {
                    result: probed
                        .as_ref()
                        .map(|_| ())
                        .map_err(|err| err as &dyn std::error::Error),
                }
                .emit_to(telemetry.unwrap_or_else(events::telemetry));
                *probe_at = Instant::now() + PROBE_INTERVAL;
            }
            Some(None)
        }
    }
}

#[cfg(test)]
mod group_tests {
    //! The group window: many small batches keep gathering; a few never wait.

    use super::super::{spawn, spawn_counted, CommitReceiver, Committed};
    use super::*;
    use crate::events::Telemetry;
    use crate::store::testing::{gate, temp, writer_entered, TestStore};
    use crate::store::Drive;

    /// Generous liveness guard: a test that needs longer than this is hung.
    const HANG: Duration = Duration::from_secs(20);

    /// A window no test may sit out: a batch that waits for it fails the test at `HANG`.
    const FOREVER: Duration = Duration::from_secs(3600);

    /// Telemetry of its own saying `open` connections are open (the group window's share
    /// rule reads it).
    fn with_open_connections(open: u64) -> &'static Telemetry {
        let telemetry: &'static Telemetry = Box::leak(Box::new(Telemetry::register()));
        telemetry
            .totals
            .connections_open
            .store(open, Ordering::Relaxed);
        telemetry
    }

    async fn wait(rx: CommitReceiver) -> Committed {
        tokio::time::timeout(HANG, rx)
            .await
            .expect("answered in time")
            .expect("writer answered")
            .expect("committed")
    }

    /// Fewer batches than `group_siblings`: committed at once, whatever the window.
    #[tokio::test]
    async fn a_few_batches_never_wait_for_the_window() {
        let store = TestStore::default();
        let config = WriterConfig {
            group_window: FOREVER,
            group_siblings: 2,
            ..WriterConfig::default()
        };
        let (handle, writer) = spawn(Drive::GroupCommit(Box::new(store.clone())), config);
        for ts in 0..3 {
            let answer = handle.submit(vec![temp("a", ts)]).await.expect("submit");
            assert_eq!(wait(answer).await.outcome.inserted, 1);
        }
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("finish");
        assert_eq!(store.log().txns, vec![1, 1, 1]);
    }

    /// Two one-reading batches (A, B) queue behind a first transaction held by a gate, with
    /// `open` connections said to be open; once the gate opens, `then` (if any) is submitted
    /// after the first commit. Every batch must be answered (within HANG); returns the
    /// readings per transaction.
    async fn behind_a_commit(
        config: WriterConfig,
        open: u64,
        then: Option<Vec<crate::store::StoredReading>>,
    ) -> Vec<usize> {
        let store = TestStore::default();
        let (gate, entered_rx, release_tx) = gate();
        let (handle, writer) = spawn_counted(
            Drive::GroupCommit(Box::new(store.gated(gate))),
            config,
            Some(with_open_connections(open)),
        );
        let first = handle.submit(vec![temp("first", 0)]).await.expect("submit");
        let entered_rx = writer_entered(entered_rx).await;
        let a = handle.submit(vec![temp("a", 1)]).await.expect("submit");
        let b = handle.submit(vec![temp("b", 2)]).await.expect("submit");
        drop(entered_rx);
        drop(release_tx); // every write goes through from now on
        assert_eq!(wait(first).await.outcome.inserted, 1);
        let then = match then {
            Some(batch) => Some(handle.submit(batch).await.expect("submit")),
            None => None,
        };
        assert_eq!(wait(a).await.outcome.inserted, 1);
        assert_eq!(wait(b).await.outcome.inserted, 1);
        if let Some(then) = then {
            wait(then).await;
        }
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("finish");
        let txns = store.log().txns.clone();
        txns
    }

    /// Small batches queued behind a transaction, then nothing more (their senders wait
    /// for the acks): they commit after the idle gap, not after the window.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_loop_does_not_wait_out_the_window() {
        let config = WriterConfig {
            group_window: FOREVER,
            group_siblings: 2,
            ..WriterConfig::default()
        };
        // Many connections open: only the idle gap can end the wait.
        assert_eq!(behind_a_commit(config, 1000, None).await, vec![1, 2]);
    }

    /// Small batches from a large share of the open connections (a closed loop: they wait
    /// for this commit) commit at once, whatever the window and the gap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_from_most_connections_do_not_wait() {
        let config = WriterConfig {
            group_window: FOREVER,
            group_siblings: 2,
            group_idle_gap: FOREVER,
            ..WriterConfig::default()
        };
        // Two batches of 8 open connections: over 1 in GROUP_SHARE_DIVISOR.
        assert_eq!(behind_a_commit(config, 8, None).await, vec![1, 2]);
    }

    /// `group_siblings` small batches keep the transaction open for more, until it holds
    /// `GROUP_ROWS` readings (or the window ends).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_small_batches_gather_until_the_transaction_is_large() {
        let config = WriterConfig {
            group_window: FOREVER,
            group_siblings: 2,
            // The next batch comes when the test sends it, however slow the machine.
            group_idle_gap: FOREVER,
            ..WriterConfig::default()
        };
        // Two batches are a small share of 1000 open connections: the window applies, and
        // A and B wait in it until the big batch fills the transaction.
        let big = (0..GROUP_ROWS as i64).map(|i| temp("big", i)).collect();
        assert_eq!(
            behind_a_commit(config, 1000, Some(big)).await,
            vec![1, 2 + GROUP_ROWS]
        );
    }
}

#[cfg(test)]
mod inline_tests {
    //! The group-commit route with a store whose commits never wait: inline while the
    //! writer is idle, queued behind the writer otherwise.

    use super::super::{spawn, CommitReceiver, Committed, Queued};
    use super::*;
    use crate::store::testing::{gate, temp, writer_entered, TestStore};
    use crate::store::{Drive, StoreError, StoredReading, Written};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use tokio::sync::oneshot;

    /// Generous liveness guard: a test that needs longer than this is hung.
    const HANG: Duration = Duration::from_secs(20);

    /// A [`TestStore`] that says its commits never wait for the disk, and flags when the
    /// writer thread has taken its first look at the store (it holds the store's lock for
    /// that look, and an inline commit meanwhile would go to the writer instead).
    struct Quick(TestStore, Arc<AtomicBool>);

    impl Quick {
        fn new(store: TestStore) -> (Quick, Arc<AtomicBool>) {
            let looked = Arc::new(AtomicBool::new(false));
            (Quick(store, Arc::clone(&looked)), looked)
        }
    }

    /// Once the writer thread has looked at the store (its idle deadline, read under the
    /// lock as it starts), it waits on its queue with the lock released: from then on an
    /// inline commit finds the store free.
    async fn writer_settled(looked: &AtomicBool) {
        tokio::time::timeout(HANG, async {
            while !looked.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the writer thread starts");
        // The flag is set inside the look; the lock is released just after it.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    impl Store for Quick {
        fn write_batch(&mut self, batch: &[StoredReading]) -> Result<Written, StoreError> {
            self.0.write_batch(batch)
        }

        fn idle_deadline(&self) -> Option<Instant> {
            self.1.store(true, Ordering::SeqCst);
            None
        }

        fn commits_without_waiting(&self) -> bool {
            true
        }

        fn close(&mut self) -> Result<(), StoreError> {
            self.0.close()
        }
    }

    async fn wait(rx: CommitReceiver) -> Committed {
        tokio::time::timeout(HANG, rx)
            .await
            .expect("answered in time")
            .expect("writer answered")
            .expect("committed")
    }

    /// With the writer idle, the submitting task commits the batch itself: it is answered
    /// before `submit` returns.
    #[tokio::test]
    async fn an_idle_writer_lets_the_task_commit_inline() {
        let store = TestStore::default();
        let (quick, looked) = Quick::new(store.clone());
        let (handle, writer) = spawn(Drive::GroupCommit(Box::new(quick)), WriterConfig::default());
        writer_settled(&looked).await;
        for ts in 0..3 {
            let mut answer = handle.submit(vec![temp("a", ts)]).await.expect("submit");
            let committed = answer
                .try_recv()
                .expect("answered within submit")
                .expect("committed");
            assert_eq!(committed.outcome.inserted, 1);
        }
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("finish");
        let log = store.log();
        assert_eq!(log.txns, vec![1, 1, 1]);
        assert!(log.closed);
    }

    /// A commit delay asks for grouping: nothing is committed inline then.
    #[tokio::test]
    async fn a_commit_delay_keeps_every_batch_on_the_writer() {
        let store = TestStore::default();
        let config = WriterConfig {
            commit_delay: Duration::from_millis(1),
            ..WriterConfig::default()
        };
        let (handle, writer) = spawn(
            Drive::GroupCommit(Box::new(Quick::new(store.clone()).0)),
            config,
        );
        let mut answer = handle.submit(vec![temp("a", 0)]).await.expect("submit");
        assert!(answer.try_recv().is_err(), "not committed within submit");
        assert_eq!(wait(answer).await.outcome.inserted, 1);
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("finish");
    }

    /// While a commit runs (inline on another task) and a batch waits for the writer,
    /// later batches queue behind it instead of being committed ahead of it: one
    /// connection's batches, and a barrier, keep their order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_queue_behind_a_busy_writer_in_order() {
        let store = TestStore::default();
        let (gate, entered_rx, release_tx) = gate();
        let (quick, looked) = Quick::new(store.gated(gate));
        let (handle, writer) = spawn(Drive::GroupCommit(Box::new(quick)), WriterConfig::default());
        writer_settled(&looked).await;
        // A commits inline on a thread of its own and is held at the gate, holding the store.
        let inline = {
            let handle = handle.clone();
            std::thread::spawn(move || {
                crate::store::testing::block_on(async {
                    let mut answer = handle.submit(vec![temp("a", 0)]).await.expect("submit");
                    answer.try_recv().expect("answered within submit")
                })
            })
        };
        let entered_rx = writer_entered(entered_rx).await;
        // The store is taken: B goes to the writer, and C, D queue behind it.
        let b = handle.submit(vec![temp("b", 1)]).await.expect("submit");
        let c = handle
            .submit(vec![temp("c", 2), temp("c", 3)])
            .await
            .expect("submit");
        let barrier = handle.submit(Vec::new()).await.expect("submit");
        drop(entered_rx);
        drop(release_tx); // every write goes through from now on
        let a = inline.join().expect("inline thread").expect("A committed");
        assert_eq!(a.outcome.inserted, 1);
        assert_eq!(wait(b).await.outcome.inserted, 1);
        assert_eq!(wait(c).await.outcome.inserted, 2);
        wait(barrier).await;
        // Inline or through the writer (which may still hold the store): after the barrier.
        let e = handle.submit(vec![temp("e", 4)]).await.expect("submit");
        assert_eq!(wait(e).await.outcome.inserted, 1);
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("finish");
        // A alone, then B and C (and the barrier) in one transaction or one each, then E:
        // never C before B.
        let txns = store.log().txns.clone();
        assert!(
            txns == [1, 3, 1] || txns == [1, 1, 2, 1],
            "transactions: {txns:?}"
        );
    }

    /// The rule itself: no inline commit while a batch sent to the writer is uncommitted,
    /// even with the store free (the writer took the batch but not yet the lock).
    #[test]
    fn no_inline_commit_while_a_batch_waits_for_the_writer() {
        let store = TestStore::default();
        let (tx, _rx) = mpsc::channel(1);
        let route = ThreadRoute {
            tx,
            store: Arc::new(Mutex::new(Box::new(Quick::new(store.clone()).0))),
            in_writer: Arc::new(AtomicUsize::new(1)),
            inline_when_idle: true,
        };
        let (reply, mut answer) = oneshot::channel();
        let job = Job {
            readings: vec![temp("a", 0)],
            reply,
            queued: Queued::new(1, None),
        };
        let job = route
            .try_inline(job, None)
            .expect_err("queued behind the writer's batch");
        assert!(store.log().txns.is_empty());
        route.in_writer.store(0, Ordering::SeqCst);
        route.try_inline(job, None).expect("committed inline");
        assert_eq!(store.log().txns, vec![1]);
        answer
            .try_recv()
            .expect("answered")
            .expect("committed inline");
    }
}
