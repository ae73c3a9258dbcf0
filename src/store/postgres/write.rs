//! One commit: the readings of several merged batches in one transaction.
//!
//! Statements per commit, in the usual case (every series cached, every day
//! partitioned): `BEGIN`; `COPY pg_temp.sensorlink_staging FROM STDIN (FORMAT binary)`;
//! one `WITH … INSERT INTO sensorlink_readings SELECT … ON CONFLICT DO NOTHING …`
//! statement that also appends the totals deltas and returns the staged rows it did not
//! insert (none, usually); `COMMIT`. New series add two statements (ids drawn from the
//! sequence in batch order, then one multi-row insert in key-hash order); repeats of rows
//! stored earlier add one lookup of their stored fields.
//!
//! Locks are always taken in one order, so concurrent commits (of this collector or
//! another) wait for each other but never deadlock: new series rows by key hash, then
//! readings by (series id, timestamp). A commit that waits on another's uncommitted row
//! sees it once that commits, and reports its reading as a repeat.

use std::collections::HashMap;
use std::pin::pin;

use deadpool_postgres::Transaction;
use sha2::{Digest, Sha256};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use super::{pg_failure, Failure};
use crate::store::encoding::{decode_fields, encode_fields, encode_tags, write_stored_series_key};
use crate::store::sqlite::SeriesCache;
use crate::store::{Conflict, StoredReading, Written};

/// Run on every new write connection: the staging table the COPY fills (emptied at each
/// commit).
pub const STAGING_SETUP: &str = "CREATE TEMP TABLE IF NOT EXISTS sensorlink_staging (
        idx       INTEGER NOT NULL,
        series_id BIGINT NOT NULL,
        ts        BIGINT NOT NULL,
        received  BIGINT NOT NULL,
        fields    TEXT NOT NULL
    ) ON COMMIT DELETE ROWS";

/// The same with `synchronous_commit = off` (`--fsync os`).
pub const STAGING_SETUP_ASYNC: &str = "SET synchronous_commit = off;
    CREATE TEMP TABLE IF NOT EXISTS sensorlink_staging (
        idx       INTEGER NOT NULL,
        series_id BIGINT NOT NULL,
        ts        BIGINT NOT NULL,
        received  BIGINT NOT NULL,
        fields    TEXT NOT NULL
    ) ON COMMIT DELETE ROWS";

const COPY_STAGING: &str =
    "COPY pg_temp.sensorlink_staging (idx, series_id, ts, received, fields) FROM STDIN (FORMAT binary)";

/// Insert the first staged reading of each (series, ts) in key order, append the totals
/// deltas of what was inserted, and return the staged rows not inserted (repeats).
const INSERT_STAGED: &str = "WITH src AS (
        SELECT DISTINCT ON (series_id, ts) idx, series_id, ts, received, fields
        FROM pg_temp.sensorlink_staging ORDER BY series_id, ts, idx
    ), ins AS (
        INSERT INTO sensorlink_readings (series_id, ts, received, fields)
        SELECT series_id, ts, received, fields FROM src ORDER BY series_id, ts
        ON CONFLICT DO NOTHING
        RETURNING series_id, ts
    ), delta AS (
        INSERT INTO sensorlink_totals_delta (series_id, readings, first_ts, last_ts)
        SELECT series_id, count(*), min(ts), max(ts) FROM ins GROUP BY series_id
    ), kept AS (
        SELECT src.idx FROM src JOIN ins USING (series_id, ts)
    )
    SELECT s.idx FROM pg_temp.sensorlink_staging s
    WHERE NOT EXISTS (SELECT 1 FROM kept WHERE kept.idx = s.idx)";

/// The fields stored at each (series, ts) of the arrays.
const STORED_FIELDS: &str = "SELECT r.series_id, r.ts, r.fields FROM sensorlink_readings r
    JOIN unnest($1::bigint[], $2::bigint[]) AS k(series_id, ts)
      ON r.series_id = k.series_id AND r.ts = k.ts";

const FIND_SERIES: &str =
    "SELECT key_hash, id FROM sensorlink_series WHERE key_hash = ANY($1::bytea[])";

const NEXT_SERIES_IDS: &str = "SELECT nextval(pg_get_serial_sequence('sensorlink_series', 'id')) \
     FROM generate_series(1, $1::bigint)";

const INSERT_SERIES: &str =
    "INSERT INTO sensorlink_series (id, key_hash, key, measurement, sensor, tags)
    SELECT * FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::text[], $5::text[], $6::text[])
      AS n(id, key_hash, key, measurement, sensor, tags)
    ORDER BY key_hash
    ON CONFLICT (key_hash) DO NOTHING
    RETURNING key_hash";

/// `sql` prepared once per connection (each statement is then one round trip, not two).
async fn prepared(
    tx: &Transaction<'_>,
    location: &str,
    sql: &str,
) -> Result<tokio_postgres::Statement, Failure> {
    tx.prepare_cached(sql)
        .await
        .map_err(|err| pg_failure(location, "prepare", &err))
}

/// A series of the batch that is not in the cache.
struct NewSeries {
    key: String,
    hash: Vec<u8>,
    /// The batch index of its first reading.
    first: usize,
}

/// Write `batch` in one transaction on `client` (see the module doc). Returns what it did
/// and the series it created or looked up, to cache once the commit is known to hold.
pub async fn write_batch(
    client: &mut deadpool_postgres::Object,
    location: &str,
    cache: &std::sync::Mutex<SeriesCache>,
    batch: &[StoredReading],
) -> Result<(Written, HashMap<String, i64>), Failure> {
    let fail = |operation| move |err: tokio_postgres::Error| pg_failure(location, operation, &err);
    // Series of each reading: cached ids, or an index into `new`.
    let mut series: Vec<Result<i64, usize>> = Vec::with_capacity(batch.len());
    let mut new: Vec<NewSeries> = Vec::new();
    {
        let mut by_key: HashMap<String, usize> = HashMap::new();
        let mut cache = cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut key = String::new();
        let mut pairs = Vec::new();
        for (index, stored) in batch.iter().enumerate() {
            write_stored_series_key(&mut key, &mut pairs, stored);
            if let Some(id) = cache.get(&key) {
                series.push(Ok(id));
            } else if let Some(&n) = by_key.get(&key) {
                series.push(Err(n));
            } else {
                by_key.insert(key.clone(), new.len());
                series.push(Err(new.len()));
                new.push(NewSeries {
                    hash: Sha256::digest(key.as_bytes()).to_vec(),
                    key: key.clone(),
                    first: index,
                });
            }
        }
    }
    let tx = client.transaction().await.map_err(fail("begin"))?;
    let new_ids = if new.is_empty() {
        Vec::new()
    } else {
        resolve_series(&tx, location, batch, &new).await?
    };
    let series_of = |index: usize| match series[index] {
        Ok(id) => id,
        Err(n) => new_ids[n],
    };

    // Stage every reading (binary COPY: no per-row statement, no text parsing).
    let mut encoded: Vec<String> = Vec::with_capacity(batch.len());
    {
        let sink = tx
            .copy_in(&prepared(&tx, location, COPY_STAGING).await?)
            .await
            .map_err(fail("copy"))?;
        let types = [Type::INT4, Type::INT8, Type::INT8, Type::INT8, Type::TEXT];
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
        let mut fields = String::new();
        for (index, stored) in batch.iter().enumerate() {
            encode_fields(&mut fields, &stored.reading.fields);
            let idx = i32::try_from(index).map_err(|_| {
                Failure::Fatal(crate::store::StoreError::Backend {
                    location: location.to_string(),
                    operation: "copy",
                    detail: format!("a transaction of {} readings is too large", batch.len()),
                })
            })?;
            writer
                .as_mut()
                .write(&[
                    &idx,
                    &series_of(index),
                    &stored.timestamp_ns(),
                    &stored.received_ns,
                    &fields,
                ])
                .await
                .map_err(fail("copy"))?;
            encoded.push(fields.clone());
        }
        writer.as_mut().finish().await.map_err(fail("copy"))?;
    }
    let repeats: Vec<usize> = tx
        .query(&prepared(&tx, location, INSERT_STAGED).await?, &[])
        .await
        .map_err(fail("insert readings"))?
        .iter()
        .filter_map(|row| usize::try_from(row.get::<_, i32>(0)).ok())
        .collect();
    let mut written = Written::default();
    if !repeats.is_empty() {
        classify_repeats(
            &tx,
            location,
            batch,
            &encoded,
            &repeats,
            &series_of,
            &mut written,
        )
        .await?;
    }
    tx.commit().await.map_err(fail("commit"))?;
    written.outcome.inserted =
        batch.len() as u64 - (written.outcome.duplicates + written.outcome.conflicts);
    let created = new
        .into_iter()
        .zip(new_ids)
        .map(|(series, id)| (series.key, id))
        .collect();
    Ok((written, created))
}

/// The ids of the batch's uncached series: found, or created (ids drawn in batch order,
/// so series created together keep their order of first appearance; rows inserted in
/// key-hash order, so two commits creating the same series never deadlock).
async fn resolve_series(
    tx: &Transaction<'_>,
    location: &str,
    batch: &[StoredReading],
    new: &[NewSeries],
) -> Result<Vec<i64>, Failure> {
    let fail = |operation| move |err: tokio_postgres::Error| pg_failure(location, operation, &err);
    let mut ids: Vec<Option<i64>> = vec![None; new.len()];
    let by_hash: HashMap<&[u8], usize> = new
        .iter()
        .enumerate()
        .map(|(n, series)| (series.hash.as_slice(), n))
        .collect();
    let all: Vec<&[u8]> = new.iter().map(|s| s.hash.as_slice()).collect();
    for row in find_series(tx, location, &all).await? {
        if let Some(&n) = by_hash.get(row.get::<_, &[u8]>(0)) {
            ids[n] = Some(row.get(1));
        }
    }
    let missing: Vec<usize> = (0..new.len()).filter(|&n| ids[n].is_none()).collect();
    if missing.is_empty() {
        return Ok(ids.into_iter().flatten().collect());
    }
    let mut drawn: Vec<i64> = tx
        .query(
            &prepared(tx, location, NEXT_SERIES_IDS).await?,
            &[&(missing.len() as i64)],
        )
        .await
        .map_err(fail("draw series ids"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    drawn.sort_unstable();
    let mut fresh_ids = Vec::with_capacity(missing.len());
    let mut hashes = Vec::with_capacity(missing.len());
    let mut keys = Vec::with_capacity(missing.len());
    let mut measurements = Vec::with_capacity(missing.len());
    let mut sensors = Vec::with_capacity(missing.len());
    let mut tags = Vec::with_capacity(missing.len());
    for (&n, &id) in missing.iter().zip(&drawn) {
        let first = &batch[new[n].first];
        fresh_ids.push(id);
        hashes.push(new[n].hash.as_slice());
        keys.push(new[n].key.as_str());
        measurements.push(first.reading.measurement.as_str());
        sensors.push(first.sensor.as_str());
        tags.push(encode_tags(&first.reading.tags));
        ids[n] = Some(id);
    }
    let inserted: std::collections::HashSet<Vec<u8>> = tx
        .query(
            &prepared(tx, location, INSERT_SERIES).await?,
            &[&fresh_ids, &hashes, &keys, &measurements, &sensors, &tags],
        )
        .await
        .map_err(fail("insert series"))?
        .iter()
        .map(|row| row.get::<_, Vec<u8>>(0))
        .collect();
    // Not inserted: another commit created it meanwhile (and has committed: the insert
    // waited for it). Its id is that one's.
    let raced: Vec<&[u8]> = hashes
        .iter()
        .copied()
        .filter(|hash| !inserted.contains(*hash))
        .collect();
    if !raced.is_empty() {
        for row in find_series(tx, location, &raced).await? {
            if let Some(&n) = by_hash.get(row.get::<_, &[u8]>(0)) {
                ids[n] = Some(row.get(1));
            }
        }
    }
    ids.into_iter()
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| {
            Failure::Retry(crate::store::StoreError::Unavailable {
                location: location.to_string(),
                operation: "insert series",
                detail: "a series created concurrently is not visible yet".into(),
            })
        })
}

async fn find_series(
    tx: &Transaction<'_>,
    location: &str,
    hashes: &[&[u8]],
) -> Result<Vec<tokio_postgres::Row>, Failure> {
    tx.query(&prepared(tx, location, FIND_SERIES).await?, &[&hashes])
        .await
        .map_err(|err| pg_failure(location, "find series", &err))
}

/// Tell each repeat (a staged reading not inserted) a duplicate or a conflict: compared
/// with the batch's own first reading of its (series, ts) if that one was inserted, else
/// with the row stored before.
async fn classify_repeats(
    tx: &Transaction<'_>,
    location: &str,
    batch: &[StoredReading],
    encoded: &[String],
    repeats: &[usize],
    series_of: &impl Fn(usize) -> i64,
    written: &mut Written,
) -> Result<(), Failure> {
    // The first index of each (series, ts) of the batch.
    let mut first: HashMap<(i64, i64), usize> = HashMap::new();
    for (index, stored) in batch.iter().enumerate() {
        first
            .entry((series_of(index), stored.timestamp_ns()))
            .or_insert(index);
    }
    let repeated: std::collections::HashSet<usize> = repeats.iter().copied().collect();
    // Keys whose stored row predates this commit.
    let mut earlier: Vec<(i64, i64)> = repeats
        .iter()
        .map(|&index| (series_of(index), batch[index].timestamp_ns()))
        .filter(|key| repeated.contains(&first[key]))
        .collect();
    earlier.sort_unstable();
    earlier.dedup();
    let mut stored: HashMap<(i64, i64), String> = HashMap::new();
    if !earlier.is_empty() {
        let (ids, stamps): (Vec<i64>, Vec<i64>) = earlier.into_iter().unzip();
        let rows = tx
            .query(
                &prepared(tx, location, STORED_FIELDS).await?,
                &[&ids, &stamps],
            )
            .await
            .map_err(|err| pg_failure(location, "read stored fields", &err))?;
        for row in rows {
            stored.insert((row.get(0), row.get(1)), row.get(2));
        }
    }
    let mut sorted = repeats.to_vec();
    sorted.sort_unstable();
    for index in sorted {
        let key = (series_of(index), batch[index].timestamp_ns());
        let first_index = first[&key];
        let kept: &str = if repeated.contains(&first_index) {
            match stored.get(&key) {
                Some(fields) => fields,
                // Gone since (retention): nothing to compare with.
                None => "",
            }
        } else {
            &encoded[first_index]
        };
        let conflict = if kept == encoded[index] {
            None
        } else {
            Some(Box::new(Conflict {
                kept: decode_fields(kept).unwrap_or_default(),
                refused: batch[index].clone(),
            }))
        };
        written.repeat(index, conflict);
    }
    Ok(())
}
