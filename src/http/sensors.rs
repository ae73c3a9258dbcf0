//! `GET /api/sensors` (paged, filtered) and `GET /api/sensors/{name}`: the live view of
//! [`crate::live::Registry`], serialized page by page (see docs/http-api.md).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;
use crate::live::{SensorQuery, State as SensorState, MAX_PAGE};

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/sensors", get(list))
        .route("/api/sensors/{name}", get(one))
}

/// `/api/sensors` parameters as sent: parsed by hand so that a bad one is a JSON error. An
/// unknown one is refused, as by `/api/readings` (a typo must not widen the answer).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSensorQuery {
    pub q: Option<String>,
    pub state: Option<String>,
    pub limit: Option<String>,
    pub offset: Option<String>,
}

impl RawSensorQuery {
    /// Validate: `state` is a comma list of states; `limit` at most [`MAX_PAGE`] (a larger
    /// one is served as [`MAX_PAGE`], and the answer's `limit` says so; 0 answers only
    /// `total` and `counts`).
    ///
    /// # Errors
    /// A message naming the bad parameter.
    pub fn validate(self) -> Result<SensorQuery, String> {
        let defaults = SensorQuery::default();
        let number = |name: &str, value: Option<String>, default: usize| match value {
            None => Ok(default),
            Some(text) if text.is_empty() => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .map_err(|_| format!("invalid {name} {text:?}: expected a whole number")),
        };
        let states = match self.state.as_deref() {
            None | Some("") => None,
            Some(list) => Some(
                list.split(',')
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .map(|name| {
                        SensorState::parse(name).ok_or_else(|| {
                            format!(
                                "invalid state {name:?}: expected connected, stale or disconnected"
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
            // `state=,` names no state: no filter, as `state=`.
            .filter(|states: &Vec<SensorState>| !states.is_empty()),
        };
        Ok(SensorQuery {
            q: self.q.filter(|q| !q.is_empty()),
            states,
            limit: number("limit", self.limit, defaults.limit)?.min(MAX_PAGE),
            offset: number("offset", self.offset, defaults.offset)?,
        })
    }
}

async fn list(
    State(state): State<AppState>,
    raw: Result<Query<RawSensorQuery>, QueryRejection>,
) -> Response {
    let raw = match raw {
        Ok(Query(raw)) => raw,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    match raw.validate() {
        Ok(query) => json(StatusCode::OK, state.live.list_json(&query)),
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

async fn one(State(state): State<AppState>, name: Result<Path<String>, PathRejection>) -> Response {
    let name = match name {
        Ok(Path(name)) => name,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, &rejection.body_text()),
    };
    match state.live.sensor_json(&name) {
        Some(body) => json(StatusCode::OK, body),
        None => error(StatusCode::NOT_FOUND, "unknown sensor"),
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `{"error": message}`.
fn error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }).to_string())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;
    use crate::live::{LiveConnection, Registry};
    use crate::server::ServerConfig;
    use crate::store::memory::MemoryStore;
    use crate::store::StoredReading;
    use tokio_util::sync::CancellationToken;

    fn state() -> AppState {
        AppState::new(
            MemoryStore::default().reader(),
            &ServerConfig::default(),
            CancellationToken::new(),
        )
    }

    /// Feed `sensors` one committed reading each, on one connection kept open.
    fn feed(registry: &std::sync::Arc<Registry>, sensors: &[&str]) -> LiveConnection {
        let mut live = LiveConnection::new(registry.clone(), "127.0.0.1:5000".parse().unwrap());
        let batch: Vec<StoredReading> = sensors
            .iter()
            .map(|sensor| StoredReading {
                reading: crate::protocol::ilp::parse(b"m v=1 1").unwrap(),
                sensor: sensor.to_string(),
                received_ns: crate::timefmt::now_ns(),
            })
            .collect();
        let mut summary = [live.summarize(&batch, None)];
        live.committed(crate::events::Mode::Line, &mut summary, None);
        live
    }

    async fn get(state: &AppState, path: &str) -> (StatusCode, String, serde_json::Value) {
        let response = super::super::router(state.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        let body = axum::body::to_bytes(response.into_body(), 1 << 24)
            .await
            .unwrap();
        (status, content_type, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn sensors_are_paged_and_filtered() {
        let state = state();
        let _conn = feed(&state.live, &["kitchen-01", "kitchen-02", "garage"]);
        let (status, content_type, page) = get(&state, "/api/sensors?limit=2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        assert_eq!(page["total"], 3);
        assert_eq!(page["limit"], 2);
        assert_eq!(page["sensors"][0]["sensor"], "garage");
        assert_eq!(page["sensors"].as_array().unwrap().len(), 2);
        let (_, _, page) = get(&state, "/api/sensors?q=KITCHEN&offset=1").await;
        assert_eq!(page["total"], 2);
        assert_eq!(page["sensors"][0]["sensor"], "kitchen-02");
        let (_, _, page) = get(&state, "/api/sensors?state=disconnected,stale").await;
        assert_eq!(page["total"], 0);
        assert_eq!(page["counts"]["connected"], 3);
        let (_, _, page) = get(&state, "/api/sensors?state=,").await;
        assert_eq!(page["total"], 3, "no state named: no filter");
        let (_, _, page) = get(&state, "/api/sensors?limit=100000").await;
        assert_eq!(page["limit"], MAX_PAGE, "served as the most there is");
        let (_, _, page) = get(&state, "/api/sensors?limit=0").await;
        assert_eq!(
            (
                page["total"].as_u64(),
                page["sensors"].as_array().map(Vec::len)
            ),
            (Some(3), Some(0))
        );
    }

    #[tokio::test]
    async fn bad_parameters_are_json_errors() {
        let state = state();
        for path in [
            "/api/sensors?limit=ten",
            "/api/sensors?offset=-1",
            "/api/sensors?state=alive",
        ] {
            let (status, _, body) = get(&state, path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
            assert!(
                body["error"].as_str().unwrap().starts_with("invalid "),
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn one_sensor_or_404() {
        let state = state();
        let _conn = feed(&state.live, &["a/b c"]);
        let (status, _, sensor) = get(&state, "/api/sensors/a%2Fb%20c").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(sensor["sensor"], "a/b c");
        assert_eq!(sensor["state"], "connected");
        // Not UTF-8 once decoded: a JSON 400 too.
        let (status, content_type, body) = get(&state, "/api/sensors/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(content_type, "application/json");
        assert!(body["error"].is_string(), "{body}");
        let (status, _, body) = get(&state, "/api/sensors/nobody").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body, serde_json::json!({"error":"unknown sensor"}));
    }
}
