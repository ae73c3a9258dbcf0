//! Test support shared by every store test: reading builders, and the one stub store the
//! writer and connection tests drive ([`TestStore`]: a memory store that records its
//! transactions and can be told to fail or to wait at a gate), plus a [`ConcurrentStore`]
//! stub with several commits in flight; and the throwaway PostgreSQL cluster
//! ([`pg_cluster`], shared with the integration tests).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Semaphore;

/// The throwaway PostgreSQL cluster (initdb + postgres in a temp dir), shared with the
/// integration tests.
#[cfg(test)]
#[path = "../../tests/support/pg_cluster.rs"]
pub(crate) mod pg_cluster;

use super::memory::MemoryStore;
use super::read::BoxFuture;
use super::writer::{CommitReply, ConcurrentStore};
use super::{Store, StoreError, StoreReader, StoredReading, Written};
use crate::protocol::{FieldValue, Reading};

/// A stored reading: the sensor is the `sensor` tag, else `127.0.0.1` (as if it came
/// untagged from that peer); received 1 µs after its timestamp.
pub(crate) fn reading(
    measurement: &str,
    tags: &[(&str, &str)],
    fields: Vec<(&str, FieldValue)>,
    ts: i64,
) -> StoredReading {
    let tags: Vec<(String, String)> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sensor = tags
        .iter()
        .find(|(k, _)| k == "sensor")
        .map_or_else(|| "127.0.0.1".to_string(), |(_, v)| v.clone());
    StoredReading {
        reading: Reading {
            measurement: measurement.into(),
            tags,
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            timestamp_ns: Some(ts),
        },
        sensor,
        received_ns: ts + 1_000,
    }
}

/// `temp,sensor=<sensor> v=<ts>i <ts>`: the smallest useful reading.
pub(crate) fn temp(sensor: &str, ts: i64) -> StoredReading {
    reading(
        "temp",
        &[("sensor", sensor)],
        vec![("v", FieldValue::Int(ts))],
        ts,
    )
}

/// Every field type, with the values that are hard to store exactly.
pub(crate) fn all_fields() -> Vec<(&'static str, FieldValue)> {
    vec![
        ("f1", FieldValue::Float(0.1)),
        ("f2", FieldValue::Float(-1e300)),
        ("f3", FieldValue::Float(5e-324)),
        ("f4", FieldValue::Float(0.30000000000000004)),
        ("f5", FieldValue::Float(-0.0)),
        ("f6", FieldValue::Float(21.0)),
        ("imin", FieldValue::Int(i64::MIN)),
        ("imax", FieldValue::Int(i64::MAX)),
        ("umax", FieldValue::UInt(u64::MAX)),
        ("u0", FieldValue::UInt(0)),
        (
            "s",
            FieldValue::Str("a \"quoted\" \\ back, ünïcødé 🌡\n\t\u{1}".into()),
        ),
        ("empty", FieldValue::Str(String::new())),
        ("t", FieldValue::Bool(true)),
        ("f", FieldValue::Bool(false)),
        ("na\"me ,=", FieldValue::Int(1)),
    ]
}

/// Field lists equal, floats compared by bits (so `-0.0 != 0.0`, `NaN == NaN`).
pub(crate) fn same_fields(a: &[(String, FieldValue)], b: &[(String, FieldValue)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((n1, v1), (n2, v2))| {
            n1 == n2
                && match (v1, v2) {
                    (FieldValue::Float(x), FieldValue::Float(y)) => {
                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
                    }
                    _ => v1 == v2,
                }
        })
}

/// Run a future to completion on a fresh current-thread runtime (for sync tests).
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime can be built in tests")
        .block_on(future)
}

/// What a [`TestStore`] saw.
#[derive(Default)]
pub(crate) struct Log {
    /// Where the readings really go.
    pub store: MemoryStore,
    /// Rows of every `write_batch` call that reached the store.
    pub txns: Vec<usize>,
    pub closed: bool,
}

/// A memory store the test can inspect, that can be told to fail or to block. Clones share
/// the log and the fail switch, so a test keeps one clone while the writer owns another.
#[derive(Clone, Default)]
pub(crate) struct TestStore {
    log: Arc<Mutex<Log>>,
    /// Fail every write while set.
    fail: Arc<AtomicBool>,
    /// When set, every write waits at the gate.
    gate: Option<Gate>,
}

/// Announces each write on `entered`, then waits for a message (or a hang-up) on
/// `release`.
#[derive(Clone)]
pub(crate) struct Gate {
    entered: std_mpsc::Sender<()>,
    release: Arc<Mutex<std_mpsc::Receiver<()>>>,
}

/// A gate, the receiver of its "entered" announcements, and the sender that releases one
/// write per message (all of them once dropped).
pub(crate) fn gate() -> (Gate, std_mpsc::Receiver<()>, std_mpsc::Sender<()>) {
    let (entered, entered_rx) = std_mpsc::channel();
    let (release_tx, release) = std_mpsc::channel();
    let gate = Gate {
        entered,
        release: Arc::new(Mutex::new(release)),
    };
    (gate, entered_rx, release_tx)
}

/// Wait, off the runtime's threads, until a gated store's writer has entered its
/// transaction; the receiver comes back for the next wait.
pub(crate) async fn writer_entered(entered_rx: std_mpsc::Receiver<()>) -> std_mpsc::Receiver<()> {
    tokio::task::spawn_blocking(move || entered_rx.recv().map(|_| entered_rx))
        .await
        .expect("join")
        .expect("writer entered the store")
}

impl TestStore {
    /// A clone sharing this store's log whose writes wait at `gate`.
    pub(crate) fn gated(&self, gate: Gate) -> TestStore {
        TestStore {
            gate: Some(gate),
            ..self.clone()
        }
    }

    pub(crate) fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().expect("test store lock not poisoned")
    }

    /// Make every write fail (or succeed again).
    pub(crate) fn set_failing(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    /// A reader of what was stored.
    pub(crate) fn reader(&self) -> StoreReader {
        self.log().store.reader()
    }
}

impl Store for TestStore {
    fn write_batch(&mut self, batch: &[StoredReading]) -> Result<Written, StoreError> {
        if let Some(gate) = &self.gate {
            let _ = gate.entered.send(());
            let _ = gate.release.lock().expect("gate lock").recv();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Corrupt("test failure".into()));
        }
        let mut log = self.log();
        log.txns.push(batch.len());
        log.store.write_batch(batch)
    }

    /// Fails while writes fail, as a store that cannot write would.
    fn probe(&mut self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Corrupt("test failure".into()));
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), StoreError> {
        self.log().closed = true;
        Ok(())
    }
}

/// A [`ConcurrentStore`] like a pooled database store: each batch commits on its own task,
/// at most `max_in_flight` at once (more `submit`s wait), into one memory store.
pub(crate) struct ConcurrentTestStore {
    store: Arc<Mutex<MemoryStore>>,
    permits: Arc<Semaphore>,
    max_in_flight: u32,
    /// Commits running now, and the most seen at once.
    in_flight: Arc<AtomicUsize>,
    pub(crate) peak_in_flight: Arc<AtomicUsize>,
    /// Every commit waits here until this many commits are running (then all go on), so
    /// a test can prove they overlap; 0 = no waiting.
    rendezvous: Option<Arc<tokio::sync::Barrier>>,
    closed: AtomicBool,
}

impl ConcurrentTestStore {
    pub(crate) fn new(max_in_flight: u32, rendezvous: usize) -> Self {
        ConcurrentTestStore {
            store: Arc::new(Mutex::new(MemoryStore::default())),
            permits: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
            in_flight: Arc::new(AtomicUsize::new(0)),
            peak_in_flight: Arc::new(AtomicUsize::new(0)),
            rendezvous: (rendezvous > 0).then(|| Arc::new(tokio::sync::Barrier::new(rendezvous))),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn reader(&self) -> StoreReader {
        self.store.lock().expect("store lock").reader()
    }

    /// Join the rendezvous as one more party (lets waiting commits go on).
    pub(crate) async fn release_rendezvous(&self) {
        if let Some(barrier) = &self.rendezvous {
            barrier.wait().await;
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl ConcurrentStore for ConcurrentTestStore {
    fn submit(
        &self,
        batch: Vec<StoredReading>,
        reply: CommitReply,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let permit = Arc::clone(&self.permits)
                .acquire_owned()
                .await
                .map_err(|_| StoreError::WriterGone)?;
            let store = Arc::clone(&self.store);
            let in_flight = Arc::clone(&self.in_flight);
            let peak = Arc::clone(&self.peak_in_flight);
            let rendezvous = self.rendezvous.clone();
            tokio::spawn(async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                if let Some(barrier) = rendezvous {
                    barrier.wait().await;
                }
                let start = Instant::now();
                let written = store.lock().expect("store lock").write_batch(&batch);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                reply.send(written.map(|outcome| (outcome, start.elapsed())));
                // Held until answered, so close() waits for the answer.
                drop(permit);
            });
            Ok(())
        })
    }

    /// Waits until every commit in flight is answered (each holds a permit until then),
    /// then refuses further batches.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let all = self
                .permits
                .acquire_many(self.max_in_flight)
                .await
                .map_err(|_| StoreError::WriterGone)?;
            self.permits.close();
            drop(all);
            self.closed.store(true, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// Open the PostgreSQL store at `url` (a test database) on the current runtime.
///
/// # Panics
/// If it cannot be opened: the test database exists, so that is a failure.
pub(crate) async fn open_postgres(
    url: &str,
    options: super::postgres::PgOptions,
) -> super::OpenStore {
    let super::StoreUrl::Postgres(pg) = url.parse().expect("a postgres URL") else {
        panic!("{url} is not a PostgreSQL URL");
    };
    super::postgres::open(&pg, options)
        .await
        .unwrap_or_else(|err| panic!("opening {url}: {err}"))
}
