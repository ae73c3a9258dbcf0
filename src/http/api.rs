//! The server's own endpoints: `/readyz`, `/api/server` and `/api/readings`.
//!
//! `/api/server` is [`server_summary`], which the SSE stream's `server` event sends too;
//! its figures come from the events' recent window ([`crate::events::Recent`]), so they
//! agree with `/metrics`. `/api/readings` reads the store through its reader, with the
//! same filters and time syntax as `sensorlink query`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::events::{Percentiles, Rejection};
use crate::protocol::FieldValue;
use crate::query::{parse_time, Pairs};
use crate::store::{self, Row};

/// `/api/readings` without `limit`.
pub const READINGS_DEFAULT_LIMIT: u64 = 1000;
/// The largest `limit` `/api/readings` accepts.
pub const READINGS_MAX_LIMIT: u64 = 10_000;
/// Most bytes of readings one `/api/readings` answer holds: 10 000 readings of 64 KiB
/// lines would otherwise be a 640 MiB body. Beyond it the answer is cut, `truncated: true`.
pub const READINGS_MAX_BYTES: usize = 16 << 20;

/// `GET /api/server`, and the SSE `server` event.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    pub version: &'static str,
    pub uptime_s: f64,
    /// The store as configured (`sqlite:PATH`, `memory`).
    pub store: String,
    /// What `/readyz` says: the store accepts writes and the server is not shutting down.
    pub ready: bool,
    pub connections_open: u64,
    /// Readings committed per second over the last ~10 s.
    pub readings_per_s: f64,
    pub readings_acked_total: u64,
    /// Receipt → ack written over the last ~10 s; `null` without a sample.
    pub ack_latency_ms: Option<Percentiles>,
    /// One store transaction over the last ~10 s; `null` without a sample.
    pub commit_latency_ms: Option<Percentiles>,
    pub lines_rejected_total: u64,
    /// Readings found already stored with the same fields (not stored twice).
    pub readings_duplicate_total: u64,
    /// Readings refused because their series and timestamp held other fields.
    pub readings_conflict_total: u64,
    /// The last 10 rejected lines, newest first.
    pub recent_rejections: Vec<Rejection>,
}

/// The server's figures now (see [`ServerSummary`]).
pub fn server_summary(state: &AppState) -> ServerSummary {
    let telemetry = state.telemetry;
    let totals = &telemetry.totals;
    // Shared: many dashboards (SSE) and scrapers cost one merge per 250 ms, not one each.
    let window = telemetry.recent.summary_cached(Instant::now());
    ServerSummary {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs_f64(),
        store: state.store.to_string(),
        ready: readiness(state).is_ok(),
        connections_open: totals.connections_open.load(Ordering::Relaxed),
        readings_per_s: window.readings_per_s,
        readings_acked_total: totals.readings_acked.load(Ordering::Relaxed),
        ack_latency_ms: window.ack_latency_ms,
        commit_latency_ms: window.commit_latency_ms,
        lines_rejected_total: totals.lines_rejected.load(Ordering::Relaxed),
        readings_duplicate_total: totals.readings_duplicate.load(Ordering::Relaxed),
        readings_conflict_total: totals.readings_conflict.load(Ordering::Relaxed),
        recent_rejections: telemetry.recent.rejections(),
    }
}

/// Whether the server takes readings: `Err(reason)` while shutting down, or while the
/// store's last commit failed and none has succeeded since.
pub fn readiness(state: &AppState) -> Result<(), String> {
    if state.shutdown.is_cancelled() {
        return Err("shutting down".into());
    }
    match state.telemetry.recent.store_failure() {
        Some(cause) => Err(format!("store failing: {cause}")),
        None => Ok(()),
    }
}

/// `GET /readyz`: 200 `ready` or 503 `not ready: <reason>`.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match readiness(&state) {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", one_line(&reason)),
        )
            .into_response(),
    }
}

/// `reason` on one line (a store error may quote a multi-line message).
fn one_line(reason: &str) -> String {
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `GET /api/server`.
pub async fn server(State(state): State<AppState>) -> Json<ServerSummary> {
    Json(server_summary(&state))
}

/// A JSON error: `{"error": "…"}` with `status`.
pub fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    #[derive(Serialize)]
    struct ErrorBody {
        error: String,
    }
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

/// `/api/readings` parameters as given; an unknown one is an error (a typo would
/// otherwise silently widen the query).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingsParams {
    pub sensor: Option<String>,
    pub measurement: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<String>,
    pub order: Option<String>,
}

/// A parameter's value; an empty one (`?since=`) is as if absent, for every parameter.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl ReadingsParams {
    /// The store query, asking for one row more than `limit` to tell a truncated answer.
    ///
    /// # Errors
    /// The parameter that is not valid, and why.
    pub fn to_query(&self) -> Result<(store::Query, u64), String> {
        let time = |name: &str, value: &Option<String>| {
            given(value)
                .map(|text| parse_time(text).map_err(|err| format!("{name}: {err}")))
                .transpose()
        };
        let limit = match given(&self.limit) {
            None => READINGS_DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=READINGS_MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    format!("limit: {text:?} is not a number from 1 to {READINGS_MAX_LIMIT}")
                })?,
        };
        let newest_first = match given(&self.order) {
            None | Some("asc") => false,
            Some("desc") => true,
            Some(other) => return Err(format!("order: {other:?} is not asc or desc")),
        };
        let query = store::Query {
            sensor: given(&self.sensor).map(str::to_string),
            measurement: given(&self.measurement).map(str::to_string),
            since_ns: time("since", &self.since)?,
            until_ns: time("until", &self.until)?,
            limit: Some(limit + 1),
            newest_first,
        };
        Ok((query, limit))
    }
}

/// One reading of `/api/readings`.
#[derive(Serialize)]
struct ReadingJson<'a> {
    measurement: &'a str,
    /// The sensor name the store filed it under (its `sensor` tag, else the peer's IP).
    sensor: &'a str,
    tags: Pairs<'a, String>,
    fields: Pairs<'a, FieldValue>,
    time_ns: i64,
}

/// The `/api/readings` body, `{"readings":[…],"truncated":…}`: at most `limit` rows and
/// `max_bytes` bytes of readings; `truncated` when more rows matched than it holds.
fn readings_body(rows: &[Row], limit: usize, max_bytes: usize) -> Vec<u8> {
    let mut body = b"{\"readings\":[".to_vec();
    let mut one = Vec::new();
    let mut shown = 0;
    for row in rows.iter().take(limit) {
        one.clear();
        let reading = ReadingJson {
            measurement: &row.measurement,
            sensor: &row.sensor,
            tags: Pairs(&row.tags),
            fields: Pairs(&row.fields),
            time_ns: row.timestamp_ns,
        };
        serde_json::to_writer(&mut one, &reading)
            .expect("a reading serializes (string keys, finite or null floats)");
        // The first reading is always shown, so a single huge one still comes through.
        if shown > 0 && body.len() + 1 + one.len() > max_bytes {
            break;
        }
        if shown > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&one);
        shown += 1;
    }
    let truncated = rows.len() > shown;
    body.extend_from_slice(format!("],\"truncated\":{truncated}}}").as_bytes());
    body
}

/// `GET /api/readings?sensor=&measurement=&since=&until=&limit=&order=`.
pub async fn readings(
    State(state): State<AppState>,
    params: Result<Query<ReadingsParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(rejection) => return json_error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let (query, limit) = match params.to_query() {
        Ok(parsed) => parsed,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, message),
    };
    let rows: Vec<Row> = match state.reader.query(&query).await {
        Ok(rows) => rows,
        Err(err) => {
            tracing::warn!(cause = %err, "/api/readings: store read failed");
            return json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading the store ({}): {err}", state.store),
            );
        }
    };
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    (
        [(header::CONTENT_TYPE, "application/json")],
        readings_body(&rows, limit, READINGS_MAX_BYTES),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> ReadingsParams {
        let mut params = ReadingsParams::default();
        for (key, value) in pairs {
            let value = Some(value.to_string());
            match *key {
                "sensor" => params.sensor = value,
                "measurement" => params.measurement = value,
                "since" => params.since = value,
                "until" => params.until = value,
                "limit" => params.limit = value,
                "order" => params.order = value,
                other => panic!("no parameter {other}"),
            }
        }
        params
    }

    #[test]
    fn readings_parameters_become_the_query_of_sensorlink_query() {
        let (query, limit) = params(&[
            ("sensor", "a"),
            ("since", "2026-11-24T11:46:25Z"),
            ("until", "1795520786000000000"),
            ("limit", "5"),
            ("order", "desc"),
        ])
        .to_query()
        .expect("valid");
        assert_eq!(limit, 5);
        assert_eq!(
            query,
            store::Query {
                sensor: Some("a".into()),
                measurement: None,
                since_ns: Some(1_795_520_785_000_000_000),
                until_ns: Some(1_795_520_786_000_000_000),
                limit: Some(6),
                newest_first: true,
            }
        );
        let (query, limit) = params(&[("sensor", "")]).to_query().expect("valid");
        assert_eq!((query.sensor, limit), (None, READINGS_DEFAULT_LIMIT));
    }

    /// An empty value is as if the parameter were absent, whichever parameter it is.
    #[test]
    fn empty_parameters_are_absent() {
        let all_empty = [
            ("sensor", ""),
            ("measurement", ""),
            ("since", ""),
            ("until", ""),
            ("limit", ""),
            ("order", ""),
        ];
        assert_eq!(
            params(&all_empty).to_query().expect("valid"),
            ReadingsParams::default().to_query().expect("valid")
        );
    }

    fn row(ts: i64, text: &str) -> Row {
        Row {
            measurement: "m".into(),
            sensor: "a".into(),
            tags: vec![],
            fields: vec![("s".into(), FieldValue::Str(text.into()))],
            timestamp_ns: ts,
            received_ns: ts,
        }
    }

    fn body(rows: &[Row], limit: usize, max_bytes: usize) -> (Vec<i64>, bool) {
        let json: serde_json::Value =
            serde_json::from_slice(&readings_body(rows, limit, max_bytes)).expect("JSON");
        let times = json["readings"]
            .as_array()
            .expect("an array")
            .iter()
            .map(|r| r["time_ns"].as_i64().expect("time_ns"))
            .collect();
        (times, json["truncated"].as_bool().expect("truncated"))
    }

    /// The answer stops at `limit` rows or at the byte budget, whichever comes first, and
    /// says it was cut; the first reading is shown even when it alone is over the budget.
    #[test]
    fn readings_are_cut_at_the_limit_or_the_byte_budget() {
        let rows: Vec<Row> = (0..5).map(|ts| row(ts, &"x".repeat(100))).collect();
        assert_eq!(body(&rows, 10, 1 << 20), (vec![0, 1, 2, 3, 4], false));
        assert_eq!(body(&rows, 3, 1 << 20), (vec![0, 1, 2], true));
        let one = readings_body(&rows[..1], 1, 1 << 20).len();
        assert_eq!(body(&rows, 10, 2 * one), (vec![0, 1], true));
        assert_eq!(body(&rows, 10, 10), (vec![0], true));
        assert_eq!(body(&[], 10, 10), (vec![], false));
    }

    #[test]
    fn bad_readings_parameters_name_themselves() {
        for (pairs, starts) in [
            (
                &[("limit", "0")][..],
                "limit: \"0\" is not a number from 1 to 10000",
            ),
            (&[("limit", "10001")], "limit: "),
            (&[("limit", "ten")], "limit: "),
            (&[("order", "up")], "order: \"up\" is not asc or desc"),
            (
                &[("since", "yesterday")],
                "since: invalid time \"yesterday\"",
            ),
            (&[("until", "2026-13-01")], "until: invalid time"),
        ] {
            let err = params(pairs).to_query().expect_err("invalid");
            assert!(err.starts_with(starts), "{pairs:?}: {err}");
        }
    }
}
