//! `GET /api/events[?sensor=a,b]`: Server-Sent Events of committed readings (`reading`)
//! and sensor state changes (`sensor`), from one bounded [`Subscription`] per stream, and
//! the server's figures (`server`, the `/api/server` object) every [`SERVER_EVERY`].
//!
//! A subscriber that falls behind gets `lagged` (`{"dropped":N}`) and the stream ends
//! (the browser's EventSource reconnects and the page refetches `/api/sensors`); ingest
//! never waits for it. The stream also ends at shutdown, so graceful shutdown does not
//! wait for open streams. Keep-alive comments go out every [`KEEP_ALIVE`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::live::{LiveEvent, Next, Subscription};

/// Comment lines on an idle stream, so proxies and browsers keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often a stream gets the `server` event (the first one at once).
pub const SERVER_EVERY: Duration = Duration::from_secs(1);

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/events", get(events))
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Comma list of sensor names; absent or empty: every sensor.
    sensor: Option<String>,
}

/// The `sensor` filter: the names in a comma list, `None` when it names none.
fn sensor_filter(list: Option<&str>) -> Option<Vec<String>> {
    let names: Vec<String> = list?
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    (!names.is_empty()).then_some(names)
}

async fn events(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        // A typo (`?sensors=`) must not subscribe to every sensor.
        Err(rejection) => {
            let body = serde_json::json!({ "error": rejection.body_text() }).to_string();
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
        }
    };
    let subscription = state.live.subscribe(sensor_filter(query.sensor.as_deref()));
    Sse::new(stream(subscription, state))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// What one stream is doing between events.
struct Feed {
    subscription: Subscription,
    state: AppState,
    shutdown: CancellationToken,
    server_tick: tokio::time::Interval,
    /// Events decoded from one queue entry (a batch's readings) not yet yielded.
    pending: VecDeque<Event>,
    /// After `lagged`: nothing more follows.
    ended: bool,
}

/// The SSE events of `subscription` and `state`'s server figures, until the subscription
/// lags or the server shuts down.
pub fn stream(
    subscription: Subscription,
    state: AppState,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let mut server_tick = tokio::time::interval(SERVER_EVERY);
    // A stream that was not polled for a while gets one event, not a burst.
    server_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed {
        subscription,
        shutdown: state.shutdown.clone(),
        state,
        server_tick,
        pending: VecDeque::new(),
        ended: false,
    };
    futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.pending.pop_front() {
                return Some((Ok(event), feed));
            }
            if feed.ended {
                return None;
            }
            let next = tokio::select! {
                biased;
                _ = feed.shutdown.cancelled() => return None,
                next = feed.subscription.next() => next,
                _ = feed.server_tick.tick() => {
                    let summary = super::server_summary(&feed.state);
                    let data = serde_json::to_string(&summary)
                        .expect("the server summary serializes to JSON");
                    feed.pending
                        .push_back(Event::default().event("server").data(data));
                    continue;
                }
            };
            match next {
                Next::Event(LiveEvent::Readings(readings)) => {
                    let filter = feed.subscription.filter();
                    for json in readings.matching(filter) {
                        feed.pending
                            .push_back(Event::default().event("reading").data(json));
                    }
                }
                Next::Event(LiveEvent::Sensor { json, .. }) => {
                    feed.pending
                        .push_back(Event::default().event("sensor").data(&*json));
                }
                Next::Lagged(dropped) => {
                    let data = serde_json::json!({ "dropped": dropped }).to_string();
                    feed.pending
                        .push_back(Event::default().event("lagged").data(data));
                    feed.ended = true;
                }
                Next::Closed => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt as _;

    use super::*;
    use crate::live::{LiveConnection, Registry};
    use crate::store::StoredReading;

    #[tokio::test]
    async fn an_unknown_parameter_is_refused() {
        use axum::http::Request;
        use tower::ServiceExt as _;

        let state = crate::http::AppState::new(
            crate::store::memory::MemoryStore::default().reader(),
            &crate::server::ServerConfig::default(),
            CancellationToken::new(),
        );
        let response = crate::http::router(state.clone())
            .oneshot(
                Request::get("/api/events?sensors=a")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(!state.live.has_subscribers());
    }

    #[test]
    fn the_filter_is_a_comma_list() {
        assert_eq!(sensor_filter(None), None);
        assert_eq!(sensor_filter(Some("")), None);
        assert_eq!(sensor_filter(Some(" , ")), None);
        assert_eq!(
            sensor_filter(Some("a, b,")),
            Some(vec!["a".to_string(), "b".to_string()])
        );
    }

    fn commit(registry: &Arc<Registry>, sensor: &str, lines: &[&str]) -> LiveConnection {
        let mut live = LiveConnection::new(registry.clone(), "127.0.0.1:1".parse().unwrap());
        let batch: Vec<StoredReading> = lines
            .iter()
            .map(|line| StoredReading {
                reading: crate::protocol::ilp::parse(line.as_bytes()).unwrap(),
                sensor: sensor.to_string(),
                received_ns: crate::timefmt::now_ns(),
            })
            .collect();
        let mut summary = [live.summarize(&batch, None)];
        live.committed(crate::events::Mode::Line, &mut summary, None);
        live
    }

    /// Read the response body until it holds `count` events (or ends).
    async fn read_events(
        body: &mut (impl Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
        text: &mut String,
        count: usize,
    ) {
        while text.matches("\n\n").count() < count {
            match body.next().await {
                Some(chunk) => text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
                None => return,
            }
        }
    }

    #[tokio::test]
    async fn readings_and_sensor_changes_become_events() {
        use axum::http::Request;
        use tower::ServiceExt as _;

        let state = crate::http::AppState::new(
            crate::store::memory::MemoryStore::default().reader(),
            &crate::server::ServerConfig::default(),
            CancellationToken::new(),
        );
        let response = crate::http::router(state.clone())
            .oneshot(
                Request::get("/api/events?sensor=a")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        assert_eq!(
            response.headers()[axum::http::header::CONTENT_TYPE],
            "text/event-stream"
        );
        assert!(state.live.has_subscribers());
        let mut body = response.into_body().into_data_stream();
        let registry = &state.live;
        let conn_a = commit(registry, "a", &["m v=1 1", "m v=2 2"]);
        let _conn_b = commit(registry, "b", &["m v=3 3"]);
        drop(conn_a);
        let mut text = String::new();
        read_events(&mut body, &mut text, 5).await;
        let mut events: Vec<&str> = text.split("\n\n").collect();
        // The server's figures come at once too (after what was already queued).
        assert!(
            events
                .iter()
                .any(|event| event.starts_with("event: server\ndata: {\"version\":")),
            "{text}"
        );
        events.retain(|event| !event.starts_with("event: server\n"));
        assert!(
            events[0].starts_with("event: sensor\ndata: {\"sensor\":\"a\""),
            "{text}"
        );
        for (event, value) in events[1..3].iter().zip(["1.0", "2.0"]) {
            assert!(
                event.starts_with("event: reading\ndata: {\"sensor\":\"a\""),
                "{text}"
            );
            assert!(
                event.contains(&format!("\"fields\":{{\"v\":{value}}}")),
                "{text}"
            );
        }
        assert!(events[3].contains("\"state\":\"disconnected\""), "{text}");
        assert!(!text.contains("\"sensor\":\"b\""), "filtered out: {text}");
        state.shutdown.cancel();
        read_events(&mut body, &mut text, usize::MAX).await;
        assert!(!state.live.has_subscribers(), "shutdown ended the stream");
    }
}
