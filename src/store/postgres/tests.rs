//! What only the PostgreSQL store has: migrations, partitions, retention, several
//! collectors on one database, and riding out the database going away. Behaviour shared
//! with every store is in the conformance suite. Each test skips (saying why) where
//! PostgreSQL cannot run, unless `SENSORLINK_REQUIRE_PG=1`.

use std::sync::Arc;
use std::time::Duration;

use super::schema::{self, DAY_NS};
use super::*;
use crate::events::{names, testing::sample, Telemetry};
use crate::store::testing::{open_postgres, pg_cluster, temp};
use crate::store::writer::{self, CommitReceiver, ConcurrentStore as _, WriterConfig};
use crate::store::{Drive, StoreUrl};

/// Generous liveness guard: a test that needs longer than this is hung.
const HANG: Duration = Duration::from_secs(60);

fn pg_url(url: &str) -> PgUrl {
    match url.parse::<StoreUrl>().expect("a store URL") {
        StoreUrl::Postgres(url) => url,
        other => panic!("{other} is not PostgreSQL"),
    }
}

async fn answer(receipt: CommitReceiver) -> crate::store::writer::Committed {
    tokio::time::timeout(HANG, receipt)
        .await
        .expect("answered in time")
        .expect("answered")
        .expect("committed")
}

/// Run `psql` and parse the one number it prints.
fn count(cluster: &pg_cluster::PgCluster, db: &str, sql: &str) -> i64 {
    let out = cluster.psql(db, sql).expect("psql");
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{sql}: not a number: {out:?}"))
}

/// The database name of a test URL (its last path segment).
fn db_name(url: &str) -> &str {
    url.rsplit('/').next().expect("a path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_race_free() {
    let Some(cluster) = pg_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_database("migrate");
    let pg = pg_url(&url);
    // Two collectors starting together: the advisory lock lets one migrate, the other
    // then finds the schema in place.
    let (a, b) = tokio::join!(
        PgStore::open(&pg, PgOptions::default()),
        PgStore::open(&pg, PgOptions::default())
    );
    let (a, b) = (a.expect("first open"), b.expect("second open"));
    for store in [a, b] {
        store.close().await.expect("close");
    }
    let again = PgStore::open(&pg, PgOptions::default())
        .await
        .expect("open an up-to-date schema");
    again.close().await.expect("close");
    let db = db_name(&url);
    assert_eq!(
        count(cluster, db, "SELECT count(*) FROM sensorlink_migrations"),
        schema::schema_version()
    );
    // Today's partition and the next days' exist.
    let today = schema::day_of(crate::timefmt::now_ns());
    for day in today..=today + schema::AHEAD_DAYS {
        let name = schema::partition_name(day).expect("a date");
        assert_eq!(
            count(
                cluster,
                db,
                &format!("SELECT count(*) FROM pg_class WHERE relname = '{name}'")
            ),
            1,
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused() {
    let Some(cluster) = pg_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_database("newer");
    let pg = pg_url(&url);
    PgStore::open(&pg, PgOptions::default())
        .await
        .expect("open")
        .close()
        .await
        .expect("close");
    cluster
        .psql(
            db_name(&url),
            "INSERT INTO sensorlink_migrations (version) VALUES (999)",
        )
        .expect("psql");
    let err = PgStore::open(&pg, PgOptions::default())
        .await
        .expect_err("a newer schema");
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
    let reader = crate::store::open_reader(&StoreUrl::Postgres(pg)).expect("reader");
    let err = reader
        .counts()
        .await
        .expect_err("the reader refuses it too");
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
}

/// Readings of other days get their partition on demand (far-off ones go to the default
/// partition); retention drops whole old partitions and old default rows, and the totals
/// stay right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_on_demand_and_retention_keep_totals_right() {
    let Some(cluster) = pg_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_database("retention");
    let db = db_name(&url);
    // Retention is applied by hand below (the upkeep task would do it at open, racing
    // the writes).
    let keep = Duration::from_secs(5 * 86_400);
    let store = PgStore::open(&pg_url(&url), PgOptions::default())
        .await
        .expect("open");
    let reader = crate::store::StoreReader::new(PgReader::new(&pg_url(&url)).expect("reader"));
    let (handle, writer) = writer::spawn(Drive::Concurrent(store.clone()), WriterConfig::default());
    let now = crate::timefmt::now_ns();
    let today = schema::day_of(now);
    let at = |days_ago: i64, n: i64| (today - days_ago) * DAY_NS + 3_600_000_000_000 + n;
    let mut batch = Vec::new();
    for n in 0..3 {
        batch.push(temp("old", at(10, n)));
        batch.push(temp("recent", at(3, n)));
        batch.push(temp("today", at(0, n)));
    }
    // Far in the past (a sensor whose clock says 1970): the default partition.
    batch.push(temp("old", 5_000_000_000));
    let committed = answer(handle.submit(batch).await.expect("submit")).await;
    assert_eq!(committed.outcome.inserted, 10);
    for days_ago in [10, 3] {
        let name = schema::partition_name(today - days_ago).expect("a date");
        assert_eq!(
            count(cluster, db, &format!("SELECT count(*) FROM {name}")),
            3,
            "{name}"
        );
    }
    assert_eq!(
        count(
            cluster,
            db,
            "SELECT count(*) FROM sensorlink_readings_default"
        ),
        1
    );
    let counts = reader.counts().await.expect("counts");
    assert_eq!(counts.total, 10);
    // Folding the per-commit deltas into the series rows changes no figure.
    let stats = reader.sensor_stats().await.expect("stats");
    store.fold_totals().await.expect("fold");
    assert_eq!(
        count(cluster, db, "SELECT count(*) FROM sensorlink_totals_delta"),
        0
    );
    assert_eq!(reader.counts().await.expect("counts"), counts);
    assert_eq!(reader.sensor_stats().await.expect("stats"), stats);

    let retained = store.apply_retention(now, keep).await.expect("retention");
    assert_eq!(
        retained.dropped,
        vec![schema::partition_name(today - 10).expect("a date")]
    );
    assert_eq!(retained.readings, 4);
    let counts = reader.counts().await.expect("counts");
    assert_eq!(
        counts.per_sensor,
        vec![("recent".to_string(), 3), ("today".to_string(), 3)]
    );
    assert_eq!(
        count(cluster, db, "SELECT count(*) FROM sensorlink_readings"),
        6
    );
    let stats = reader.sensor_stats().await.expect("stats");
    assert_eq!(stats[0].first_ns, at(3, 0));
    // Nothing left to drop: a second run drops nothing, and makes good first/last
    // timestamps a failed second transaction would have left naming a dropped day.
    cluster
        .psql(db, "UPDATE sensorlink_series SET first_ts = 1, last_ts = 2")
        .expect("psql");
    let again = store.apply_retention(now, keep).await.expect("retention");
    assert_eq!(again, schema::Retained::default());
    assert_eq!(reader.sensor_stats().await.expect("stats"), stats);
    // A late replay of a dropped day comes back (into a new partition), counted.
    let committed = answer(
        handle
            .submit(vec![temp("old", at(10, 0))])
            .await
            .expect("submit"),
    )
    .await;
    assert_eq!(committed.outcome.inserted, 1);
    assert_eq!(reader.counts().await.expect("counts").total, 7);
    drop(handle);
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .expect("join")
        .expect("close");

    // With `--retention`, a collector applies it by itself when it starts.
    let options = PgOptions {
        retention: Some(keep),
        ..PgOptions::default()
    };
    let collector = PgStore::open(&pg_url(&url), options).await.expect("open");
    let waited = std::time::Instant::now();
    while reader.counts().await.expect("counts").total != 6 {
        assert!(waited.elapsed() < HANG, "retention never ran at start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    collector.close().await.expect("close");
}

/// A connection of the test's own to `url`, its driver running on this runtime.
async fn raw_client(url: &str) -> tokio_postgres::Client {
    let config = pg_url(url).config().expect("config");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Partition creation and retention give way to a long query instead of queueing a lock
/// request every commit then waits behind: a partition is attached beside a reader of the
/// readings table, and when it must wait (for the default partition, or retention for the
/// whole table) it gives up after its lock timeout, to be run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_give_way_to_long_queries() {
    let Some(cluster) = pg_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_database("ddllocks");
    PgStore::open(&pg_url(&url), PgOptions::default())
        .await
        .expect("open (migrates)")
        .close()
        .await
        .expect("close");
    let mut client = raw_client(&url).await;
    let holder = raw_client(&url).await;
    let now = crate::timefmt::now_ns();
    let today = schema::day_of(now);
    let location = "test";

    // A long read of the parent table alone: attaching a partition does not wait for it.
    holder
        .batch_execute("BEGIN; LOCK TABLE ONLY sensorlink_readings IN ACCESS SHARE MODE")
        .await
        .expect("hold");
    let created = tokio::time::timeout(
        HANG,
        schema::create_partition(&mut client, location, today - 20),
    )
    .await
    .expect("not stuck behind a reader")
    .expect("created");
    assert_eq!(created, schema::Created::Yes);
    holder.batch_execute("ROLLBACK").await.expect("release");

    // A long read of every partition: the default partition must be checked, so the
    // creation waits for its lock timeout, then asks to be run again.
    holder
        .batch_execute("BEGIN; LOCK TABLE sensorlink_readings IN ACCESS SHARE MODE")
        .await
        .expect("hold");
    let attempt = tokio::time::timeout(
        HANG,
        schema::create_partition(&mut client, location, today - 21),
    )
    .await
    .expect("gives up instead of queueing");
    assert!(matches!(attempt, Err(Failure::Retry(_))), "{attempt:?}");
    // Retention (an old partition to drop) likewise.
    let retention = tokio::time::timeout(
        HANG,
        schema::apply_retention(&mut client, location, now - 5 * DAY_NS),
    )
    .await
    .expect("gives up instead of queueing");
    assert!(matches!(retention, Err(Failure::Retry(_))), "{retention:?}");
    holder.batch_execute("ROLLBACK").await.expect("release");

    // Run again once the reader is done, both go through.
    let created = schema::create_partition(&mut client, location, today - 21)
        .await
        .expect("created");
    assert_eq!(created, schema::Created::Yes);
    let retained = schema::apply_retention(&mut client, location, now - 5 * DAY_NS)
        .await
        .expect("retention");
    assert_eq!(retained.days, vec![today - 21, today - 20]);
}

/// Two collectors on one database receive the same readings at once (a client replaying
/// to another collector): each reading is stored once, and the acks add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_collectors_store_each_reading_once() {
    let Some(cluster) = pg_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_database("twice");
    let a = open_postgres(&url, PgOptions::default()).await;
    let b = open_postgres(&url, PgOptions::default()).await;
    let reader = a.reader.clone();
    let (ha, wa) = writer::spawn(a.drive, WriterConfig::default());
    let (hb, wb) = writer::spawn(b.drive, WriterConfig::default());
    let sensors = 20;
    let per_sensor = 50;
    let mut receipts = Vec::new();
    for round in 0..per_sensor / 10 {
        for s in 0..sensors {
            // The same ten readings through both, sensors in opposite orders.
            let batch = |s: i64| -> Vec<_> {
                (0..10)
                    .map(|i| temp(&format!("s{s}"), round * 10 + i))
                    .collect()
            };
            receipts.push(ha.submit(batch(s)).await.expect("submit a"));
            receipts.push(hb.submit(batch(sensors - 1 - s)).await.expect("submit b"));
        }
    }
    let mut inserted = 0;
    let mut duplicates = 0;
    for receipt in receipts {
        let committed = answer(receipt).await;
        inserted += committed.outcome.inserted;
        duplicates += committed.outcome.duplicates;
        assert_eq!(committed.outcome.conflicts, 0);
    }
    let unique = (sensors * per_sensor) as u64;
    assert_eq!((inserted, duplicates), (unique, unique));
    assert_eq!(reader.counts().await.expect("counts").total, unique);
    let db = db_name(&url);
    assert_eq!(
        count(cluster, db, "SELECT count(*) FROM sensorlink_readings"),
        unique as i64
    );
    assert_eq!(
        count(cluster, db, "SELECT count(*) FROM sensorlink_series"),
        sensors
    );
    drop((ha, hb));
    tokio::task::spawn_blocking(move || {
        wa.finish()?;
        wb.finish()
    })
    .await
    .expect("join")
    .expect("close");
}

/// Batches merged into one transaction: a 4 kB sensor name (beyond a B-tree entry) is
/// stored like any other, and a batch the database refuses (a NUL in a name) fails alone,
/// the batches merged with it commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_batch_fails_alone() {
    let Some(cluster) = pg_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_database("poison");
    let options = PgOptions {
        pool_size: 1,
        ..PgOptions::default()
    };
    let store = PgStore::open(&pg_url(&url), options).await.expect("open");
    let reader = crate::store::StoreReader::new(PgReader::new(&pg_url(&url)).expect("reader"));
    let (handle, writer) = writer::spawn(
        Drive::Concurrent(Arc::clone(&store) as _),
        WriterConfig::default(),
    );
    // Not repetitive: PostgreSQL compresses index entries, so "xxx…" would fit.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let long: String = (0..4096)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect();
    // The one committer takes the first batch, then waits here: the rest join its
    // transaction.
    let gate = store.hold_merges().await;
    let mut receipts = Vec::new();
    for (sensor, ts) in [
        ("first", 1),
        (long.as_str(), 2),
        ("nul\0name", 3),
        ("last", 4),
    ] {
        receipts.push(handle.submit(vec![temp(sensor, ts)]).await.expect("submit"));
    }
    drop(gate);
    let mut answers = Vec::new();
    for receipt in receipts {
        let answer = tokio::time::timeout(HANG, receipt)
            .await
            .expect("answered in time")
            .expect("answered");
        answers.push(answer.map(|committed| committed.outcome.inserted));
    }
    assert!(matches!(answers[0], Ok(1)), "{:?}", answers[0]);
    assert!(matches!(answers[1], Ok(1)), "long name: {:?}", answers[1]);
    assert!(answers[2].is_err(), "the NUL batch: {:?}", answers[2]);
    assert!(matches!(answers[3], Ok(1)), "{:?}", answers[3]);
    assert_eq!(reader.counts().await.expect("counts").total, 3);
    drop(handle);
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .expect("join")
        .expect("close");
}

/// The database stops: submits wait (nothing answered, so nothing acked), the store is
/// not ready and says why; it starts again: everything commits once, ready again, and the
/// outage is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_waited_out() {
    let Some(cluster) = pg_cluster::own() else {
        return;
    };
    let url = cluster.fresh_database("outage");
    let recorder = crate::events::prometheus_builder().build_recorder();
    let render = recorder.handle();
    let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
        &recorder,
        Telemetry::register,
    )));
    // One batch per transaction: two held by the committers, two queued.
    let options = PgOptions {
        pool_size: 2,
        queue_batches: 2,
        max_batch_rows: 1,
        ..PgOptions::default()
    };
    let store = PgStore::open_counted(&pg_url(&url), options, Some(telemetry))
        .await
        .expect("open");
    let (handle, writer) = writer::spawn_counted(
        Drive::Concurrent(store.clone()),
        WriterConfig::default(),
        Some(telemetry),
    );
    answer(handle.submit(vec![temp("s", 0)]).await.expect("submit")).await;

    cluster.stop().expect("stop the database");
    // Two batches held by the committers, two in the queue; the fifth submit waits.
    let mut receipts = Vec::new();
    for ts in 1..=4 {
        receipts.push(handle.submit(vec![temp("s", ts)]).await.expect("submit"));
    }
    let fifth = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.submit(vec![temp("s", 5)]).await })
    };
    let waited = std::time::Instant::now();
    while store.is_available() || telemetry.recent.store_failure().is_none() {
        assert!(waited.elapsed() < HANG, "the outage was never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!fifth.is_finished(), "submit waits while the queue is full");
    for receipt in &mut receipts {
        assert!(
            matches!(
                receipt.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Empty)
            ),
            "nothing is answered while the database is away"
        );
    }
    let failure = telemetry.recent.store_failure().expect("not ready");
    assert!(failure.contains("unavailable"), "{failure}");

    cluster.start_again().expect("start the database again");
    let fifth = tokio::time::timeout(HANG, fifth)
        .await
        .expect("submit goes on once the database is back")
        .expect("task")
        .expect("submit");
    receipts.push(fifth);
    for receipt in receipts {
        assert_eq!(answer(receipt).await.outcome.inserted, 1);
    }
    assert!(store.is_available());
    assert_eq!(telemetry.recent.store_failure(), None, "ready again");
    let text = render.render();
    assert_eq!(sample(&text, names::STORE_UNAVAILABLE), Some(1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            &format!("{}_count", names::STORE_UNAVAILABLE_DURATION)
        ),
        Some(1.0),
        "{text}"
    );
    drop(handle);
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .expect("join")
        .expect("close");
    assert_eq!(
        count(
            &cluster,
            db_name(&url),
            "SELECT count(*) FROM sensorlink_readings"
        ),
        6
    );
}

/// Writes fail as unavailable while `SELECT 1` works (here a trigger raising 53100, disk
/// full; alike a read-only standby after a failover): the probe must not end the outage
/// while batches are held, so it is one outage, not one per probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_do_not_end_an_outage_that_holds_batches() {
    let Some(cluster) = pg_cluster::shared() else {
        return;
    };
    let url = cluster.fresh_database("heldprobe");
    let db = db_name(&url);
    let recorder = crate::events::prometheus_builder().build_recorder();
    let render = recorder.handle();
    let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
        &recorder,
        Telemetry::register,
    )));
    let store = PgStore::open_counted(&pg_url(&url), PgOptions::default(), Some(telemetry))
        .await
        .expect("open");
    let (handle, writer) = writer::spawn_counted(
        Drive::Concurrent(store.clone()),
        WriterConfig::default(),
        Some(telemetry),
    );
    answer(handle.submit(vec![temp("s", 0)]).await.expect("submit")).await;
    let backends = |cluster: &pg_cluster::PgCluster| -> Vec<String> {
        let sql = format!(
            "SELECT pid FROM pg_stat_activity WHERE datname = '{db}' \
             AND application_name = 'sensorlink' ORDER BY pid"
        );
        let out = cluster.psql(db, &sql).expect("psql");
        out.split_whitespace().map(str::to_string).collect()
    };
    let before = backends(cluster);
    cluster
        .psql(
            db,
            "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'no space' USING ERRCODE = '53100'; END $$; \
             CREATE TRIGGER full_disk BEFORE INSERT ON sensorlink_totals_delta \
             FOR EACH ROW EXECUTE FUNCTION full_disk();",
        )
        .expect("make writes fail");
    let receipt = handle.submit(vec![temp("s", 1)]).await.expect("submit");
    let waited = std::time::Instant::now();
    while store.is_available() {
        assert!(waited.elapsed() < HANG, "the outage was never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Several probes succeed meanwhile; none may end the outage.
    let probes = store.probes();
    while store.probes() < probes + 3 {
        assert!(waited.elapsed() < HANG, "no probes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!store.is_available());
    let text = render.render();
    assert_eq!(sample(&text, names::STORE_UNAVAILABLE), Some(1.0), "{text}");
    let ended = format!("{}_count", names::STORE_UNAVAILABLE_DURATION);
    assert_eq!(sample(&text, &ended).unwrap_or(0.0), 0.0, "{text}");
    cluster
        .psql(db, "DROP TRIGGER full_disk ON sensorlink_totals_delta")
        .expect("writes work again");
    assert_eq!(answer(receipt).await.outcome.inserted, 1);
    assert!(store.is_available());
    let text = render.render();
    assert_eq!(sample(&text, names::STORE_UNAVAILABLE), Some(1.0), "{text}");
    assert_eq!(sample(&text, &ended), Some(1.0), "{text}");
    // The connection a commit failed on as unavailable was closed, not reused.
    let waited = std::time::Instant::now();
    loop {
        let now = backends(cluster);
        if before.iter().any(|pid| !now.contains(pid)) {
            break;
        }
        assert!(
            waited.elapsed() < HANG,
            "the failed connection was kept: {before:?} → {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(handle);
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .expect("join")
        .expect("close");
}

/// With no traffic at all, the store's probe makes readiness follow the database: not
/// ready within about a second of it stopping, ready again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database_without_traffic() {
    let Some(cluster) = pg_cluster::own() else {
        return;
    };
    let url = cluster.fresh_database("idle");
    let recorder = crate::events::prometheus_builder().build_recorder();
    let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
        &recorder,
        Telemetry::register,
    )));
    let store = PgStore::open_counted(&pg_url(&url), PgOptions::default(), Some(telemetry))
        .await
        .expect("open");
    cluster.stop().expect("stop the database");
    let waited = std::time::Instant::now();
    while telemetry.recent.store_failure().is_none() {
        assert!(waited.elapsed() < HANG, "the probe never noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!store.is_available());
    cluster.start_again().expect("start the database again");
    let waited = std::time::Instant::now();
    while telemetry.recent.store_failure().is_some() {
        assert!(waited.elapsed() < HANG, "never ready again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(store.is_available());
    store.close().await.expect("close");
}

/// Shutdown while the database is away does not hang: the held batches are answered with
/// the error (not acked) after a bounded wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_during_an_outage_answers_with_the_error() {
    let Some(cluster) = pg_cluster::own() else {
        return;
    };
    let url = cluster.fresh_database("closing");
    let store = PgStore::open(&pg_url(&url), PgOptions::default())
        .await
        .expect("open");
    cluster.stop().expect("stop the database");
    let (handle, writer) = writer::spawn(Drive::Concurrent(store.clone()), WriterConfig::default());
    let receipt = handle.submit(vec![temp("s", 1)]).await.expect("submit");
    drop(handle);
    let closing = tokio::task::spawn_blocking(move || writer.finish());
    let answer = tokio::time::timeout(HANG, receipt)
        .await
        .expect("answered within the bounded wait")
        .expect("answered");
    let err = answer.expect_err("not committed");
    assert!(err.is_transient(), "{err}");
    tokio::time::timeout(HANG, closing)
        .await
        .expect("close returns")
        .expect("join")
        .expect("close");
}

/// TLS to a real PostgreSQL that takes TLS connections only, with certificates from
/// `sensorlink cert`: plain is refused by the server; `verify-full` stores and reads over
/// TLS with our client certificate (the database wants one); a wrong CA and a certificate
/// that does not name the host are refused, the latter accepted by `verify-ca`; `require`
/// without a root certificate encrypts without checking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_server_and_presents_our_certificate() {
    let Some(cluster) = pg_cluster::own() else {
        return;
    };
    let certs = tempfile::tempdir().expect("temp dir");
    let stranger = tempfile::tempdir().expect("temp dir");
    // The server certificate names `localhost` only, not 127.0.0.1.
    crate::tls::cert::generate(certs.path(), &["localhost".into()], false).expect("certs");
    crate::tls::cert::generate(stranger.path(), &["localhost".into()], false).expect("certs");
    let file = |dir: &tempfile::TempDir, name: &str| dir.path().join(name).display().to_string();
    use crate::tls::cert::{CA_CERT, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};
    let db = "tls_client_cert";
    cluster
        .enable_tls(
            &certs.path().join(SERVER_CERT),
            &certs.path().join(SERVER_KEY),
            &certs.path().join(CA_CERT),
            db,
        )
        .expect("TLS on");
    let url = cluster.create_database(db).expect("create database");
    let port = cluster.port();
    let ca = file(&certs, CA_CERT);
    let identity = format!(
        "sslcert={}&sslkey={}",
        file(&certs, CLIENT_CERT),
        file(&certs, CLIENT_KEY)
    );
    let open = |url: String| async move {
        let url = pg_url(&url);
        PgStore::open(&url, PgOptions::default()).await
    };
    let refused = |result: Result<Arc<PgStore>, StoreError>, why: &str| match result {
        Ok(_) => panic!("{why}: opened"),
        Err(err) => {
            eprintln!("refused ({why}): {err}");
            err.to_string()
        }
    };

    let err = refused(open(format!("{url}?sslmode=disable")).await, "plain");
    assert!(
        err.contains("pg_hba.conf") || err.contains("no encryption"),
        "{err}"
    );
    let err = refused(
        open(format!(
            "{url}?sslmode=verify-full&sslrootcert={ca}&{identity}"
        ))
        .await,
        "127.0.0.1 is not in the certificate",
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = refused(
        open(format!(
            "{url}?sslmode=verify-ca&sslrootcert={}&{identity}",
            file(&stranger, CA_CERT)
        ))
        .await,
        "another CA",
    );
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = refused(
        open(format!("{url}?sslmode=verify-ca&sslrootcert={ca}")).await,
        "no client certificate",
    );
    assert!(err.contains("certificate"), "{err}");
    // The chain alone (verify-ca), and then the name too, through `hostaddr`.
    open(format!(
        "{url}?sslmode=verify-ca&sslrootcert={ca}&{identity}"
    ))
    .await
    .expect("verify-ca")
    .close()
    .await
    .expect("close");
    let full = format!(
        "postgres://{}@localhost:{port}/{db}?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}&{identity}",
        pg_cluster::USER
    );
    let store = open_postgres(&full, PgOptions::default()).await;
    let reader = store.reader.clone();
    let (handle, writer) = writer::spawn(store.drive, WriterConfig::default());
    let receipt = handle
        .submit((0..10).map(|i| temp("over-tls", i)).collect())
        .await
        .expect("submit");
    assert_eq!(answer(receipt).await.outcome.inserted, 10);
    assert_eq!(reader.counts().await.expect("counts").total, 10);
    // Every connection of ours is TLS, with our client certificate.
    let ours = "FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                WHERE a.application_name = 'sensorlink'";
    let total = count(&cluster, "postgres", &format!("SELECT count(*) {ours}"));
    let with_cert = count(
        &cluster,
        "postgres",
        &format!("SELECT count(*) {ours} AND s.ssl AND s.client_dn IS NOT NULL"),
    );
    assert!(total >= 2, "committer and reader connections: {total}");
    assert_eq!(with_cert, total);
    drop(handle);
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .expect("join")
        .expect("close");
    // `require` without a root certificate: encrypted, nothing verified.
    let any = format!(
        "postgres://{}@127.0.0.1:{port}/postgres?sslmode=require",
        pg_cluster::USER
    );
    open(any)
        .await
        .expect("require")
        .close()
        .await
        .expect("close");
}
