//! The store conformance suite: every behaviour a store must have, written once and run
//! against every store by [`conformance!`] (memory, SQLite, PostgreSQL, and the concurrent
//! route's test stub; a new store adds one factory and one `conformance!(name, factory)`
//! line). A factory is async (a pooled store opens on the test's runtime, where its
//! connections live) and answers `None` when its store cannot run here (PostgreSQL
//! missing: the test says so and passes, unless `SENSORLINK_REQUIRE_PG=1`).
//!
//! The checks write through the connection-facing seam ([`StoreHandle`]) and read through
//! [`StoreReader`], so they hold for any way a store is driven: inline, group commit or a
//! concurrent pool.

use std::any::Any;
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::testing::{all_fields, block_on, reading, same_fields, temp};
use super::writer::{self, StoreHandle, StoreWriter, WriterConfig};
use super::{Counts, Drive, Query, Row, SensorStats, StoreReader, StoredReading, WriteOutcome};
use crate::protocol::FieldValue;

/// A fresh, empty store: its write seam, its reader, and whatever keeps it alive.
pub(crate) struct Fixture {
    handle: StoreHandle,
    writer: StoreWriter,
    reader: StoreReader,
    /// E.g. the temporary directory of a file store.
    _guard: Box<dyn Any + Send>,
}

impl Fixture {
    pub(crate) fn new(drive: Drive, reader: StoreReader, guard: Box<dyn Any + Send>) -> Self {
        let (handle, writer) = writer::spawn(drive, WriterConfig::default());
        Fixture {
            handle,
            writer,
            reader,
            _guard: guard,
        }
    }

    /// Submit one batch and wait for its commit.
    async fn write(&self, batch: Vec<StoredReading>) -> WriteOutcome {
        self.commit(batch).await.outcome
    }

    /// Submit one batch and wait for its commit's whole answer.
    async fn commit(&self, batch: Vec<StoredReading>) -> writer::Committed {
        let receipt = self.handle.submit(batch).await.expect("store accepts");
        receipt
            .await
            .expect("store answers")
            .expect("store commits")
    }

    async fn rows(&self, query: Query) -> Vec<Row> {
        self.reader.query(&query).await.expect("query")
    }

    /// Drop the handle, wait for the writer, close the store.
    async fn finish(self) {
        let Fixture { handle, writer, .. } = self;
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("finish task")
            .expect("store closes");
    }
}

async fn memory() -> Option<Fixture> {
    let store = super::memory::MemoryStore::default();
    let reader = store.reader();
    Some(Fixture::new(
        Drive::Inline(Box::new(store)),
        reader,
        Box::new(()),
    ))
}

/// `--fsync os`: its commits never wait for the disk, so a submitting task commits inline
/// while the writer thread is idle, and through the writer when batches queue up.
async fn sqlite() -> Option<Fixture> {
    sqlite_with(super::FsyncPolicy::Os)
}

/// `--fsync always`: every batch goes through the group-commit writer thread.
async fn sqlite_always() -> Option<Fixture> {
    sqlite_with(super::FsyncPolicy::Always)
}

fn sqlite_with(fsync: super::FsyncPolicy) -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("conformance.db");
    let store = super::sqlite::SqliteStore::open(&path, fsync)
        .expect("open sqlite")
        // The suite reads counts right after each commit: fold the totals every write.
        .with_totals_flush_interval(std::time::Duration::ZERO);
    let reader = StoreReader::new(super::sqlite::SqliteReader::open(&path).expect("reader"));
    Some(Fixture::new(
        Drive::GroupCommit(Box::new(store)),
        reader,
        Box::new(dir),
    ))
}

/// A fresh database on the shared throwaway cluster; `None` where PostgreSQL cannot run.
async fn postgres() -> Option<Fixture> {
    let cluster = super::testing::pg_cluster::shared()?;
    let url = cluster.fresh_database("conformance");
    let open = super::testing::open_postgres(&url, super::postgres::PgOptions::default()).await;
    Some(Fixture::new(open.drive, open.reader, Box::new(())))
}

/// The concurrent route (what a pooled store such as PostgreSQL uses), over the test stub:
/// shows the suite holds with several commits in flight.
async fn concurrent_stub() -> Option<Fixture> {
    let store = std::sync::Arc::new(super::testing::ConcurrentTestStore::new(4, 0));
    let reader = store.reader();
    Some(Fixture::new(Drive::Concurrent(store), reader, Box::new(())))
}

fn float(sensor: &str, ts: i64, v: f64) -> StoredReading {
    reading(
        "temp",
        &[("sensor", sensor)],
        vec![("v", FieldValue::Float(v))],
        ts,
    )
}

fn outcome(inserted: u64, duplicates: u64, conflicts: u64) -> WriteOutcome {
    WriteOutcome {
        inserted,
        duplicates,
        conflicts,
    }
}

fn sensors_and_times(rows: &[Row]) -> Vec<(String, i64)> {
    rows.iter()
        .map(|r| (r.sensor.clone(), r.timestamp_ns))
        .collect()
}

async fn dedup_on_series_and_timestamp(store: Fixture) {
    let first = float("a", 1, 1.0);
    let mut again = float("a", 1, 2.0);
    again.received_ns = 99;
    // Within one batch, and across batches; the first stored value wins (another value
    // is a conflict).
    assert_eq!(
        store
            .write(vec![first, again.clone(), float("b", 1, 1.0)])
            .await,
        outcome(2, 0, 1)
    );
    assert_eq!(
        store.write(vec![again, float("a", 2, 3.0)]).await,
        outcome(1, 0, 1)
    );
    let rows = store
        .rows(Query {
            sensor: Some("a".into()),
            ..Query::default()
        })
        .await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].fields, vec![("v".into(), FieldValue::Float(1.0))]);
    assert_eq!(rows[0].received_ns, 1_001);
    // Tag order does not make another series.
    let v = || vec![("v", FieldValue::Int(1))];
    let x = reading("m", &[("sensor", "s"), ("a", "1"), ("b", "2")], v(), 7);
    let y = reading("m", &[("b", "2"), ("sensor", "s"), ("a", "1")], v(), 7);
    assert_eq!(store.write(vec![x, y]).await, outcome(1, 1, 0));
    // Another measurement or another tag value is another series.
    let z = reading("n", &[("sensor", "s"), ("a", "1"), ("b", "2")], v(), 7);
    let w = reading("m", &[("sensor", "s"), ("a", "1"), ("b", "3")], v(), 7);
    assert_eq!(store.write(vec![z, w]).await, outcome(2, 0, 0));
    // Untagged readings of two peers are two series (the sensor joins the identity).
    let mut p = reading("m", &[], v(), 7);
    p.sensor = "10.0.0.1".into();
    let mut q = p.clone();
    q.sensor = "10.0.0.2".into();
    assert_eq!(store.write(vec![p.clone(), q]).await, outcome(2, 0, 0));
    assert_eq!(store.write(vec![p]).await, outcome(0, 1, 0));
    store.finish().await;
}

/// A repeat of a stored series and timestamp is a duplicate when its fields encode the same
/// (the receive time aside), a conflict otherwise; each is reported at its index in its
/// batch, a conflict with the fields kept and the reading refused.
async fn duplicates_and_conflicts_are_told_apart(store: Fixture) {
    let genuine = || float("kitchen-01", 5, 21.5);
    let mut forged = genuine();
    forged.reading.fields = vec![("v".into(), FieldValue::Float(-99.0))];
    let committed = store.commit(vec![forged.clone()]).await;
    assert_eq!(committed.outcome, outcome(1, 0, 0));
    assert!(committed.repeats.is_empty());

    // The genuine sender comes second: a conflict; the forger's replay (received later):
    // a duplicate. Inside one batch, after a fresh reading.
    let mut replay = forged.clone();
    replay.received_ns += 1_000;
    let committed = store
        .commit(vec![float("kitchen-01", 6, 1.0), genuine(), replay])
        .await;
    assert_eq!(committed.outcome, outcome(1, 1, 1));
    let indices: Vec<_> = committed
        .repeats
        .iter()
        .map(|r| (r.index, r.conflict.is_some()))
        .collect();
    assert_eq!(indices, vec![(1, true), (2, false)]);
    let conflict = committed.repeats[0].conflict.as_ref().expect("a conflict");
    assert_eq!(conflict.kept, forged.reading.fields);
    assert_eq!(conflict.refused, genuine());

    // Repeats inside one batch count the same way; the encoded form decides (-0.0 is not
    // 0.0), every field counts, a string is compared exactly.
    let with = |ts, fields: Vec<(&str, FieldValue)>| reading("m", &[("sensor", "s")], fields, ts);
    let zero = || vec![("v", FieldValue::Float(0.0))];
    let two = || {
        vec![
            ("v", FieldValue::Int(1)),
            ("w", FieldValue::Str("x".into())),
        ]
    };
    let committed = store
        .commit(vec![
            with(1, zero()),
            with(1, zero()),
            with(1, vec![("v", FieldValue::Float(-0.0))]),
            with(2, two()),
            with(2, two()),
            with(
                2,
                vec![
                    ("v", FieldValue::Int(1)),
                    ("w", FieldValue::Str("y".into())),
                ],
            ),
            with(2, vec![("v", FieldValue::Int(1))]),
        ])
        .await;
    assert_eq!(committed.outcome, outcome(2, 2, 3));
    let kinds: Vec<_> = committed
        .repeats
        .iter()
        .map(|r| (r.index, r.conflict.is_some()))
        .collect();
    assert_eq!(
        kinds,
        vec![(1, false), (2, true), (4, false), (5, true), (6, true)]
    );

    // The first value is the one stored and read back.
    let rows = store
        .rows(Query {
            sensor: Some("kitchen-01".into()),
            ..Query::default()
        })
        .await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].fields, forged.reading.fields);
    assert_eq!(rows[0].received_ns, forged.received_ns);
    store.finish().await;
}

async fn every_field_type_round_trips(store: Fixture) {
    let mut fields = all_fields();
    // The parser never yields these, but a store keeps whatever it is given.
    fields.extend([
        ("nan", FieldValue::Float(f64::NAN)),
        ("inf", FieldValue::Float(f64::NEG_INFINITY)),
    ]);
    let r = reading(
        "env ünï,\\co=de",
        &[("sensor", "s 1,\\x=ü"), ("room", "küche \"2\"")],
        fields,
        1_700_000_000_123_456_789,
    );
    assert_eq!(store.write(vec![r.clone()]).await, outcome(1, 0, 0));
    let rows = store.rows(Query::default()).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.measurement, r.reading.measurement);
    assert_eq!(row.sensor, "s 1,\\x=ü");
    // Tags come back sorted.
    assert_eq!(
        row.tags,
        vec![
            ("room".to_string(), "küche \"2\"".to_string()),
            ("sensor".to_string(), "s 1,\\x=ü".to_string())
        ]
    );
    assert_eq!(row.timestamp_ns, 1_700_000_000_123_456_789);
    assert_eq!(row.received_ns, 1_700_000_000_123_457_789);
    assert!(
        same_fields(&row.fields, &r.reading.fields),
        "{:?}",
        row.fields
    );
    store.finish().await;
}

async fn ordering_filters_and_limits(store: Fixture) {
    let hum = |sensor: &str, ts: i64| {
        reading(
            "hum",
            &[("sensor", sensor)],
            vec![("h", FieldValue::UInt(40))],
            ts,
        )
    };
    store
        .write(vec![float("a", 10, 1.0), float("b", 30, 3.0), hum("a", 20)])
        .await;
    // a/temp was created before b/temp, but its reading at 30 arrives later: equal
    // timestamps still come in series creation order.
    store.write(vec![hum("b", 40), float("a", 30, 3.5)]).await;
    let all = sensors_and_times(&store.rows(Query::default()).await);
    assert_eq!(
        all,
        vec![
            ("a".into(), 10),
            ("a".into(), 20),
            ("a".into(), 30),
            ("b".into(), 30),
            ("b".into(), 40)
        ]
    );
    let only_a = Query {
        sensor: Some("a".into()),
        ..Query::default()
    };
    assert_eq!(store.rows(only_a).await.len(), 3, "sensor filter");
    let q = Query {
        measurement: Some("temp".into()),
        since_ns: Some(10),
        until_ns: Some(30),
        ..Query::default()
    };
    let rows = store.rows(q).await;
    assert_eq!(
        sensors_and_times(&rows),
        vec![("a".into(), 10)],
        "since inclusive, until exclusive"
    );
    let q = Query {
        since_ns: Some(20),
        limit: Some(2),
        ..Query::default()
    };
    assert_eq!(
        sensors_and_times(&store.rows(q).await),
        vec![("a".into(), 20), ("a".into(), 30)]
    );
    for (limit, n) in [(0, 0), (1, 1), (5, 5), (u64::MAX, 5)] {
        let q = Query {
            limit: Some(limit),
            ..Query::default()
        };
        assert_eq!(store.rows(q).await.len(), n, "limit {limit}");
    }
    let q = Query {
        sensor: Some("nobody".into()),
        ..Query::default()
    };
    assert!(store.rows(q).await.is_empty());
    // Newest first: exactly the reverse order, with and without a limit and filters.
    let newest = |limit, sensor: Option<&str>, until_ns| Query {
        sensor: sensor.map(str::to_string),
        until_ns,
        limit,
        newest_first: true,
        ..Query::default()
    };
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(
        sensors_and_times(&store.rows(newest(None, None, None)).await),
        reversed
    );
    for limit in [0, 1, 3, 5, 9] {
        let want: Vec<_> = reversed.iter().take(limit).cloned().collect();
        let got = store.rows(newest(Some(limit as u64), None, None)).await;
        assert_eq!(sensors_and_times(&got), want, "newest {limit}");
    }
    assert_eq!(
        sensors_and_times(&store.rows(newest(Some(2), Some("a"), Some(30))).await),
        vec![("a".into(), 20), ("a".into(), 10)]
    );
    assert!(store
        .rows(newest(Some(2), None, Some(i64::MIN)))
        .await
        .is_empty());
    store.finish().await;
}

async fn latest_stats_and_counts(store: Fixture) {
    assert!(store.reader.latest().await.expect("latest").is_empty());
    assert!(store.reader.sensor_stats().await.expect("stats").is_empty());
    assert_eq!(
        store.reader.counts().await.expect("counts"),
        Counts::default()
    );
    store
        .write(vec![
            float("b", 5, 5.0),
            float("a", 30, 3.0),
            float("a", 10, 1.0),
            reading(
                "hum",
                &[("sensor", "a")],
                vec![("h", FieldValue::Int(40))],
                20,
            ),
        ])
        .await;
    // Same sensor and timestamp in another series, received later: it is the latest.
    let mut b_hum = reading(
        "hum",
        &[("sensor", "b")],
        vec![("h", FieldValue::Int(7))],
        5,
    );
    b_hum.received_ns += 10;
    store.write(vec![b_hum]).await;

    let latest = store.reader.latest().await.expect("latest");
    assert_eq!(
        latest
            .iter()
            .map(|r| (r.sensor.as_str(), r.measurement.as_str(), r.timestamp_ns))
            .collect::<Vec<_>>(),
        vec![("a", "temp", 30), ("b", "hum", 5)]
    );
    assert_eq!(latest[1].fields, vec![("h".into(), FieldValue::Int(7))]);
    assert_eq!(
        store.reader.sensor_stats().await.expect("stats"),
        vec![
            SensorStats {
                sensor: "a".into(),
                readings: 3,
                first_ns: 10,
                last_ns: 30,
                last_fields: vec![("v".into(), FieldValue::Float(3.0))],
            },
            SensorStats {
                sensor: "b".into(),
                readings: 2,
                first_ns: 5,
                last_ns: 5,
                last_fields: vec![("h".into(), FieldValue::Int(7))],
            },
        ]
    );
    assert_eq!(
        store.reader.counts().await.expect("counts"),
        Counts {
            total: 5,
            per_sensor: vec![("a".into(), 3), ("b".into(), 2)],
        }
    );
    store.finish().await;
}

/// Two series of one sensor tie on timestamp and receive time: the series created later
/// is the latest, whatever order the tied readings were written in.
async fn latest_ties_go_to_the_later_series(store: Fixture) {
    let hum = |ts: i64| {
        reading(
            "hum",
            &[("sensor", "c")],
            vec![("h", FieldValue::Int(ts))],
            ts,
        )
    };
    // temp/c is created before hum/c.
    store.write(vec![float("c", 1, 1.0), hum(2)]).await;
    // Tied (same ts and received, see `reading`): hum/c written first.
    store.write(vec![hum(50), float("c", 50, 5.0)]).await;
    let latest = store.reader.latest().await.expect("latest");
    assert_eq!(latest.len(), 1);
    assert_eq!(
        (latest[0].measurement.as_str(), latest[0].timestamp_ns),
        ("hum", 50)
    );
    let stats = store.reader.sensor_stats().await.expect("stats");
    assert_eq!(
        stats[0].last_fields,
        vec![("h".into(), FieldValue::Int(50))]
    );
    store.finish().await;
}

/// The reader sees every committed batch as soon as its receipt resolves, and never part
/// of one, while the writer keeps writing.
async fn reads_while_writing(store: Fixture) {
    const BATCHES: i64 = 40;
    const ROWS: i64 = 25;
    let reader = store.reader.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = tokio::spawn({
        let done = done.clone();
        async move {
            let mut seen = Vec::new();
            // At least one read, even if the writes all ran before this task got a turn
            // (a store that commits inline never suspends the writing task).
            loop {
                seen.push(reader.counts().await.expect("counts").total);
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            seen
        }
    });
    for b in 0..BATCHES {
        let batch = (0..ROWS).map(|i| temp("w", b * ROWS + i)).collect();
        assert_eq!(store.write(batch).await.inserted, ROWS as u64);
        let committed = u64::try_from((b + 1) * ROWS).expect("small");
        let total = store.reader.counts().await.expect("counts").total;
        assert_eq!(total, committed, "a committed batch is visible at once");
        // A store that commits without waiting (memory) never yields here by itself: the
        // poller must get turns between batches for the reads to interleave with writes.
        tokio::task::yield_now().await;
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = poller.await.expect("poller");
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(
        seen.iter().all(|n| n % ROWS as u64 == 0),
        "only whole batches: {seen:?}"
    );
    store.finish().await;
}

/// A reading's identity as the model sees it, built from its parts and not from the
/// series key under test: (measurement, sorted tags with the `sensor` tag added when the
/// reading has none, timestamp).
type Identity = (String, Vec<(String, String)>, i64);

fn identity(measurement: &str, tags: &[(String, String)], sensor: &str, ts: i64) -> Identity {
    let mut tags = tags.to_vec();
    if !tags.iter().any(|(k, _)| k == "sensor") {
        tags.push(("sensor".into(), sensor.into()));
    }
    tags.sort();
    (measurement.to_string(), tags, ts)
}

fn identity_of(r: &StoredReading) -> Identity {
    identity(
        &r.reading.measurement,
        &r.reading.tags,
        &r.sensor,
        r.timestamp_ns(),
    )
}

/// Random batches, some submitted again (a client replaying unacknowledged readings):
/// every store keeps exactly one reading per identity and reports the inserts and
/// duplicates the model counts.
///
/// One batch at a time, the first reading of an identity is the one kept. `pipelined`
/// submits every batch before awaiting any receipt, so the writer thread merges batches
/// into one transaction and a concurrent store commits several at once in any order: the
/// kept reading is then the first of its identity in one of the batches.
fn replays_store_what_the_model_says<F: std::future::Future<Output = Option<Fixture>>>(
    open: fn() -> F,
    batches: &[Vec<StoredReading>],
    replays: &[usize],
    pipelined: bool,
) -> Result<(), TestCaseError> {
    let mut submitted: Vec<&Vec<StoredReading>> = batches.iter().collect();
    if !batches.is_empty() {
        submitted.extend(replays.iter().map(|&i| &batches[i % batches.len()]));
    }
    // The model: identity → the readings that may be the one kept.
    let mut model: BTreeMap<Identity, Vec<&StoredReading>> = BTreeMap::new();
    let mut total = 0u64;
    for batch in &submitted {
        let mut in_batch = std::collections::BTreeSet::new();
        for reading in batch.iter() {
            total += 1;
            let key = identity_of(reading);
            let first_in_batch = in_batch.insert(key.clone());
            let kept = model.entry(key).or_default();
            if kept.is_empty() || (pipelined && first_in_batch) {
                kept.push(reading);
            }
        }
    }
    let run = block_on(async {
        let store = open().await?;
        let mut answers = Vec::new();
        if pipelined {
            let mut receipts = Vec::new();
            for batch in &submitted {
                let receipt = store.handle.submit((*batch).clone()).await;
                receipts.push(receipt.expect("store accepts"));
            }
            for receipt in receipts {
                let committed = receipt.await.expect("store answers");
                answers.push(committed.expect("store commits").outcome);
            }
        } else {
            for batch in &submitted {
                answers.push(store.write((*batch).clone()).await);
            }
        }
        let rows = store.rows(Query::default()).await;
        store.finish().await;
        Some((answers, rows))
    });
    // The store cannot run here (said on stderr).
    let Some((answers, rows)) = run else {
        return Ok(());
    };
    for (answer, batch) in answers.iter().zip(&submitted) {
        prop_assert_eq!(answer.readings(), batch.len() as u64);
    }
    let got = WriteOutcome {
        inserted: answers.iter().map(|o| o.inserted).sum(),
        duplicates: answers.iter().map(|o| o.duplicates).sum(),
        conflicts: answers.iter().map(|o| o.conflicts).sum(),
    };
    // Every reading not inserted repeats the one kept: a duplicate if its fields encode
    // the same, else a conflict (which reading is kept is checked below).
    let encoded = |fields: &[(String, FieldValue)]| {
        let mut text = String::new();
        super::encoding::encode_fields(&mut text, fields);
        text
    };
    let kept: BTreeMap<Identity, String> = rows
        .iter()
        .map(|row| {
            let key = identity(&row.measurement, &row.tags, &row.sensor, row.timestamp_ns);
            (key, encoded(&row.fields))
        })
        .collect();
    let mut same = 0u64;
    for reading in submitted.iter().flat_map(|batch| batch.iter()) {
        let stored = kept.get(&identity_of(reading));
        same += u64::from(stored == Some(&encoded(&reading.reading.fields)));
    }
    let inserted = model.len() as u64;
    let want = WriteOutcome {
        inserted,
        duplicates: same.saturating_sub(inserted),
        conflicts: total - same,
    };
    prop_assert_eq!(got, want);
    prop_assert!(rows
        .windows(2)
        .all(|w| w[0].timestamp_ns <= w[1].timestamp_ns));
    let mut stored: BTreeMap<Identity, &Row> = BTreeMap::new();
    for row in &rows {
        let key = identity(&row.measurement, &row.tags, &row.sensor, row.timestamp_ns);
        prop_assert!(stored.insert(key, row).is_none(), "stored twice: {:?}", row);
    }
    prop_assert_eq!(stored.len(), model.len());
    for ((key, candidates), (got_key, got)) in model.iter().zip(&stored) {
        prop_assert_eq!(key, got_key);
        prop_assert!(
            candidates.iter().any(|want| got.sensor == want.sensor
                && got.received_ns == want.received_ns
                && same_fields(&got.fields, &want.reading.fields)),
            "{:?} is none of {:?}",
            got,
            candidates
        );
    }
    Ok(())
}

/// Few names, drawn from text full of the characters escaping is about, so that series
/// and timestamps collide often and escaping mistakes would merge or split series.
#[derive(Debug, Clone)]
struct Names {
    measurements: Vec<String>,
    sensors: Vec<String>,
    tag_key: String,
    tag_values: Vec<String>,
}

fn names() -> impl Strategy<Value = Names> {
    // Without NUL: PostgreSQL text cannot hold it, and the parser refuses every control
    // byte in a name anyway (tab excepted), so no store is ever given one.
    let any_name = || {
        crate::protocol::escape::tests::any_name()
            .prop_map(|name| name.replace('\0', ""))
            .prop_filter("names are never empty", |name| !name.is_empty())
    };
    (
        prop::collection::vec(any_name(), 2),
        prop::collection::vec(any_name(), 3),
        any_name().prop_filter("not the sensor tag", |k| k != "sensor"),
        prop::collection::vec(any_name(), 2),
    )
        .prop_map(|(measurements, sensors, tag_key, tag_values)| Names {
            measurements,
            sensors,
            tag_key,
            tag_values,
        })
}

/// (measurement, sensor, tag value, sensor as a tag, sensor tag first, ts, value).
type Draw = (usize, usize, usize, bool, bool, i64, i64);

fn build(names: &Names, draw: Draw) -> StoredReading {
    let (m, s, t, tagged, sensor_first, ts, v) = draw;
    let sensor = names.sensors[s].clone();
    let mut tags = vec![(names.tag_key.clone(), names.tag_values[t].clone())];
    if tagged {
        // Tag order varies: it must not make another series.
        let at = if sensor_first { 0 } else { tags.len() };
        tags.insert(at, ("sensor".into(), sensor.clone()));
    }
    // Untagged: sent by a peer named like the sensor, the same series as tagged.
    StoredReading {
        reading: crate::protocol::Reading {
            measurement: names.measurements[m].clone(),
            tags,
            fields: vec![("v".into(), FieldValue::Int(v))],
            timestamp_ns: Some(ts),
        },
        sensor,
        received_ns: v,
    }
}

fn batches() -> impl Strategy<Value = (Vec<Vec<StoredReading>>, Vec<usize>)> {
    let draw = (
        0..2usize,
        0..3usize,
        0..2usize,
        any::<bool>(),
        any::<bool>(),
        0i64..6,
        any::<i64>(),
    );
    (
        names(),
        prop::collection::vec(prop::collection::vec(draw, 0..8), 0..6),
        prop::collection::vec(any::<usize>(), 0..4),
    )
        .prop_map(|(names, draws, replays)| {
            let batches = draws
                .into_iter()
                .map(|batch| batch.into_iter().map(|d| build(&names, d)).collect())
                .collect();
            (batches, replays)
        })
}

/// Instantiate every check for one store: `conformance!(module_name, factory)`.
macro_rules! conformance {
    ($name:ident, $open:path) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dedup_on_series_and_timestamp() {
                if let Some(store) = $open().await {
                    super::dedup_on_series_and_timestamp(store).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn duplicates_and_conflicts_are_told_apart() {
                if let Some(store) = $open().await {
                    super::duplicates_and_conflicts_are_told_apart(store).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_field_type_round_trips() {
                if let Some(store) = $open().await {
                    super::every_field_type_round_trips(store).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ordering_filters_and_limits() {
                if let Some(store) = $open().await {
                    super::ordering_filters_and_limits(store).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn latest_stats_and_counts() {
                if let Some(store) = $open().await {
                    super::latest_stats_and_counts(store).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn latest_ties_go_to_the_later_series() {
                if let Some(store) = $open().await {
                    super::latest_ties_go_to_the_later_series(store).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn reads_while_writing() {
                if let Some(store) = $open().await {
                    super::reads_while_writing(store).await;
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(32))]
                #[test]
                fn replays_store_what_the_model_says((batches, replays) in batches()) {
                    super::replays_store_what_the_model_says($open, &batches, &replays, false)?;
                }

                #[test]
                fn pipelined_replays_store_what_the_model_says((batches, replays) in batches()) {
                    super::replays_store_what_the_model_says($open, &batches, &replays, true)?;
                }
            }
        }
    };
}

conformance!(memory_store, memory);
conformance!(sqlite_store, sqlite);
conformance!(sqlite_thread_store, sqlite_always);
conformance!(concurrent_route, concurrent_stub);
conformance!(postgres_store, postgres);
