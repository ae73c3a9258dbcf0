//! The PostgreSQL read side: [`PgReader`], on a small pool of its own (so reads never take
//! a committer's connection). Connections are made on first use, on the runtime that
//! reads; the schema version is checked then (reading never creates or migrates).
//!
//! Counts, stats and latest read the series totals plus the unfolded per-commit deltas
//! (O(series), exact as soon as a commit is answered); latest seeks each series' last
//! row in the primary key. Sensor order is byte order (`COLLATE "C"`), as Rust sorts.

use std::fmt::Write as _;

use deadpool_postgres::Pool;
use tokio::sync::OnceCell;
use tokio_postgres::types::ToSql;

use super::{pool, pool_failure, schema, Failure, PgUrl};
use crate::store::encoding::{decode_fields, decode_tags};
use crate::store::read::{join_stats, BoxFuture, ReadStore};
use crate::store::{Counts, Query, Row, SensorStats, StoreError};

/// Each series' totals: folded (in the series row) plus the deltas not yet folded.
const TOTALS: &str = "t AS (
        SELECT series_id, sum(n)::bigint AS n, min(f) AS f, max(l) AS l FROM (
            SELECT id AS series_id, readings AS n, first_ts AS f, last_ts AS l
            FROM sensorlink_series WHERE readings > 0
            UNION ALL
            SELECT series_id, readings, first_ts, last_ts FROM sensorlink_totals_delta
        ) x GROUP BY series_id HAVING sum(n) > 0
    )";

const ROW_COLUMNS: &str = "s.measurement, s.sensor, s.tags, r.fields, r.ts, r.received";

/// The read side (see the module doc).
pub struct PgReader {
    pool: Pool,
    location: String,
    /// Checked once, on the first read.
    schema: OnceCell<()>,
}

impl std::fmt::Debug for PgReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgReader")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl PgReader {
    /// A reader of `url` (connects on first use).
    ///
    /// # Errors
    /// The URL cannot be turned into the driver's settings.
    pub fn new(url: &PgUrl) -> Result<PgReader, StoreError> {
        Ok(PgReader {
            pool: pool(url, super::READ_POOL_SIZE, "")?,
            location: url.to_string(),
            schema: OnceCell::new(),
        })
    }

    /// A pooled connection, the schema checked.
    async fn client(
        &self,
        operation: &'static str,
    ) -> Result<deadpool_postgres::Object, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|err| pool_failure(&self.location, operation, err).into_error())?;
        self.schema
            .get_or_try_init(|| async {
                let found = schema::read_version(&**client, &self.location)
                    .await
                    .map_err(Failure::into_error)?;
                let known = schema::schema_version();
                if found > known {
                    return Err(StoreError::SchemaTooNew {
                        location: self.location.clone(),
                        found,
                        known,
                    });
                }
                if found < known {
                    return Err(StoreError::SchemaTooOld {
                        location: self.location.clone(),
                        found,
                        known,
                    });
                }
                Ok(())
            })
            .await?;
        Ok(client)
    }

    async fn rows(
        &self,
        operation: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client(operation).await?;
        client
            .query(sql, params)
            .await
            .map_err(|err| super::pg_failure(&self.location, operation, &err).into_error())
    }

    async fn latest_rows(&self) -> Result<Vec<Row>, StoreError> {
        let sql = format!(
            "WITH {TOTALS} SELECT {ROW_COLUMNS} FROM t
             JOIN sensorlink_series s ON s.id = t.series_id
             JOIN sensorlink_readings r ON r.series_id = t.series_id AND r.ts = t.l
             ORDER BY s.sensor COLLATE \"C\", r.ts DESC, r.received DESC, s.id DESC"
        );
        let mut rows: Vec<Row> = Vec::new();
        for raw in self.rows("latest", &sql, &[]).await? {
            // Sorted by sensor, best first: keep the first row of each sensor.
            let sensor: &str = raw.get(1);
            if rows.last().is_some_and(|last| last.sensor == sensor) {
                continue;
            }
            rows.push(decode_row(&raw)?);
        }
        Ok(rows)
    }

    /// Per sensor: (sensor, readings, first ts, last ts), sorted by sensor.
    async fn sensor_totals(
        &self,
        operation: &'static str,
    ) -> Result<Vec<(String, u64, i64, i64)>, StoreError> {
        let sql = format!(
            "WITH {TOTALS} SELECT s.sensor, sum(t.n)::bigint, min(t.f), max(t.l) FROM t
             JOIN sensorlink_series s ON s.id = t.series_id
             GROUP BY s.sensor ORDER BY s.sensor COLLATE \"C\""
        );
        Ok(self
            .rows(operation, &sql, &[])
            .await?
            .iter()
            .map(|row| {
                (
                    row.get::<_, String>(0),
                    u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                    row.get::<_, i64>(2),
                    row.get::<_, i64>(3),
                )
            })
            .collect())
    }

    async fn query_rows(&self, query: Query) -> Result<Vec<Row>, StoreError> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut series_filter = String::new();
        let mut time_filter = String::new();
        let bind = |params: &mut Vec<Box<dyn ToSql + Sync + Send>>,
                    out: &mut String,
                    clause: &str,
                    value: Box<dyn ToSql + Sync + Send>| {
            params.push(value);
            write!(out, " AND {clause} ${}", params.len())
                .expect("writing to a String cannot fail");
        };
        if let Some(sensor) = query.sensor {
            bind(
                &mut params,
                &mut series_filter,
                "s.sensor =",
                Box::new(sensor),
            );
        }
        if let Some(measurement) = query.measurement {
            bind(
                &mut params,
                &mut series_filter,
                "s.measurement =",
                Box::new(measurement),
            );
        }
        if let Some(since) = query.since_ns {
            bind(&mut params, &mut time_filter, "r.ts >=", Box::new(since));
        }
        if let Some(until) = query.until_ns {
            bind(&mut params, &mut time_filter, "r.ts <", Box::new(until));
        }
        let limit = query
            .limit
            .map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
        let sql = match (query.newest_first, limit) {
            // The newest `limit` of each matching series (a backwards walk of its primary
            // key), merged: no sort of every match.
            (true, Some(limit)) => {
                params.push(Box::new(limit));
                let n = params.len();
                format!(
                    "SELECT {ROW_COLUMNS} FROM sensorlink_series s CROSS JOIN LATERAL (
                        SELECT r.fields, r.ts, r.received FROM sensorlink_readings r
                        WHERE r.series_id = s.id{time_filter} ORDER BY r.ts DESC LIMIT ${n}
                     ) r WHERE true{series_filter} ORDER BY r.ts DESC, s.id DESC LIMIT ${n}"
                )
            }
            (newest, limit) => {
                let order = if newest {
                    "r.ts DESC, r.series_id DESC"
                } else {
                    "r.ts, r.series_id"
                };
                let mut sql = format!(
                    "SELECT {ROW_COLUMNS} FROM sensorlink_readings r
                     JOIN sensorlink_series s ON s.id = r.series_id
                     WHERE true{series_filter}{time_filter} ORDER BY {order}"
                );
                if let Some(limit) = limit {
                    params.push(Box::new(limit));
                    write!(sql, " LIMIT ${}", params.len())
                        .expect("writing to a String cannot fail");
                }
                sql
            }
        };
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|param| &**param as &(dyn ToSql + Sync))
            .collect();
        self.rows("query", &sql, &refs)
            .await?
            .iter()
            .map(decode_row)
            .collect()
    }
}

fn decode_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    Ok(Row {
        measurement: row.get(0),
        sensor: row.get(1),
        tags: decode_tags(row.get(2)).map_err(StoreError::Corrupt)?,
        fields: decode_fields(row.get(3)).map_err(StoreError::Corrupt)?,
        timestamp_ns: row.get(4),
        received_ns: row.get(5),
    })
}

impl ReadStore for PgReader {
    fn query(&self, query: Query) -> BoxFuture<'_, Result<Vec<Row>, StoreError>> {
        Box::pin(self.query_rows(query))
    }

    fn latest(&self) -> BoxFuture<'_, Result<Vec<Row>, StoreError>> {
        Box::pin(self.latest_rows())
    }

    fn sensor_stats(&self) -> BoxFuture<'_, Result<Vec<SensorStats>, StoreError>> {
        Box::pin(async move {
            // Two statements: a commit between them may make the last fields newer than
            // the totals by a batch (never older). A repeatable-read transaction would
            // cost two more round trips on every dashboard refresh for that.
            let totals = self.sensor_totals("sensor stats").await?;
            let latest = self.latest_rows().await?;
            Ok(join_stats(totals, latest))
        })
    }

    fn counts(&self) -> BoxFuture<'_, Result<Counts, StoreError>> {
        Box::pin(async move {
            let per_sensor: Vec<(String, u64)> = self
                .sensor_totals("counts")
                .await?
                .into_iter()
                .map(|(sensor, readings, _, _)| (sensor, readings))
                .collect();
            Ok(Counts {
                total: per_sensor.iter().map(|(_, n)| n).sum(),
                per_sensor,
            })
        })
    }
}
