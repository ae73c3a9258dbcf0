//! `GET /api/events[?sensor=a,b]`: Server-Sent Events of committed readings (`reading`)
//! and sensor state changes (`sensor`), from one bounded [`Subscription`] per stream, and
//! the server's figures (`server`, the `/api/server` object) every [`SERVER_EVERY`].
//!
//! A subscriber that falls behind gets `lagged` (`{"dropped":N}`) and the stream ends
//! (the browser's EventSource reconnects and the page refetches `/api/sensors`); ingest
//! never waits for it. The stream also ends at shutdown, so graceful shutdown does not
//! wait for open streams. Keep-alive comments go out every [`KEEP_ALIVE`]. A stream opened
//! with a token ends within [`SERVER_EVERY`] of a reload that revoked or changed it: the
//! client reconnects, and its token is checked again.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::auth::Grant;
use crate::live::{LiveEvent, Next, ReadingEvents, SensorFilter, Subscription, MAX_FILTER_SENSORS};
use rustc_hash::FxHashMap;

/// Comment lines on an idle stream, so proxies and browsers keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How often a stream gets the `server` event (the first one at once).
pub const SERVER_EVERY: Duration = Duration::from_secs(1);

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/events", get(events))
}

/// Shortest and longest `?every=`.
pub const MIN_EVERY: Duration = Duration::from_millis(10);
pub const MAX_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Comma list of sensor names; absent or empty: every sensor.
    sensor: Option<String>,
    /// Fold readings: at most one `reading` event per sensor and measurement this often.
    every: Option<String>,
}

/// `?every=DURATION` ("250ms", "1s"), within [`MIN_EVERY`]..=[`MAX_EVERY`].
fn fold_interval(text: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(text) = text else { return Ok(None) };
    let every = humantime::parse_duration(text.trim())
        .map_err(|err| format!("every={text:?}: {err} (say e.g. 250ms or 1s)"))?;
    if !(MIN_EVERY..=MAX_EVERY).contains(&every) {
        return Err(format!(
            "every={text:?}: between {} and {}",
            humantime::format_duration(MIN_EVERY),
            humantime::format_duration(MAX_EVERY)
        ));
    }
    Ok(Some(every))
}

/// The `sensor` filter: the names in a comma list, `None` when it names none.
///
/// # Errors
/// More than [`MAX_FILTER_SENSORS`] distinct names (each event is matched against it).
fn sensor_filter(list: Option<&str>) -> Result<Option<SensorFilter>, String> {
    let Some(list) = list else { return Ok(None) };
    let names: SensorFilter = list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    if names.len() > MAX_FILTER_SENSORS {
        return Err(format!(
            "sensor names {} sensors: at most {MAX_FILTER_SENSORS}",
            names.len()
        ));
    }
    Ok((!names.is_empty()).then_some(names))
}

fn bad_request(message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn events(
    State(state): State<AppState>,
    // Set by the access guard when the API asks for tokens.
    grant: Option<Extension<Arc<Grant>>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        // A typo (`?sensors=`) must not subscribe to every sensor.
        Err(rejection) => return bad_request(&rejection.body_text()),
    };
    let filter = match sensor_filter(query.sensor.as_deref()) {
        Ok(filter) => filter,
        Err(message) => return bad_request(&message),
    };
    let every = match fold_interval(query.every.as_deref()) {
        Ok(every) => every,
        Err(message) => return bad_request(&message),
    };
    let subscription = state.live.subscribe_folding(filter, every.is_some());
    let grant = grant.map(|Extension(grant)| grant);
    Sse::new(stream_folded(subscription, state, grant, every))
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
    /// The token the stream was opened with, if any: once stale, the stream ends.
    grant: Option<Arc<Grant>>,
    /// With `?every=`: the newest readings held until the next tick.
    fold: Option<Fold>,
}

/// `?every=`: the newest reading of each sensor and measurement since the last tick, and
/// how many readings it stands for; sent (in first-seen order) at each tick.
struct Fold {
    tick: tokio::time::Interval,
    held: Vec<Held>,
    /// (sensor, measurement) → index into `held`.
    index: FxHashMap<(String, String), usize>,
}

struct Held {
    json: String,
    count: u64,
}

impl Fold {
    fn new(every: Duration) -> Fold {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Fold {
            tick,
            held: Vec::new(),
            index: FxHashMap::default(),
        }
    }

    /// Keep the newest matching reading of each group of `readings`.
    fn absorb(&mut self, readings: &ReadingEvents, filter: Option<&SensorFilter>) {
        // Per group first (a batch's events come in order), so the map is looked up once
        // per group, not once per reading.
        let mut newest: Vec<Option<(&str, u64)>> = vec![None; readings.groups.len()];
        for (group, json) in readings.matching(filter) {
            let slot = &mut newest[group];
            let count = slot.map_or(0, |(_, n)| n) + readings.stands_for(group);
            *slot = Some((json, count));
        }
        for (group, slot) in newest.into_iter().enumerate() {
            let Some((json, count)) = slot else { continue };
            let g = &readings.groups[group];
            match self.index.entry((g.sensor.clone(), g.measurement.clone())) {
                Entry::Occupied(at) => {
                    let held = &mut self.held[*at.get()];
                    json.clone_into(&mut held.json);
                    held.count += count;
                }
                Entry::Vacant(slot) => {
                    slot.insert(self.held.len());
                    self.held.push(Held {
                        json: json.to_owned(),
                        count,
                    });
                }
            }
        }
    }

    /// The held readings as `reading` events, each with `"count"`; empties the fold.
    fn flush(&mut self, out: &mut VecDeque<Event>) {
        self.index.clear();
        for held in self.held.drain(..) {
            out.push_back(
                Event::default()
                    .event("reading")
                    .data(with_count(&held.json, held.count)),
            );
        }
    }
}

/// A reading's JSON object with `"count":N` added (the object ends with `}`: ours).
fn with_count(json: &str, count: u64) -> String {
    match json.strip_suffix('}') {
        Some(open) if open.len() > 1 => format!("{open},\"count\":{count}}}"),
        Some(open) => format!("{open}\"count\":{count}}}"),
        None => json.to_owned(),
    }
}

/// The SSE events of `subscription` and `state`'s server figures, until the subscription
/// lags or the server shuts down.
pub fn stream(
    subscription: Subscription,
    state: AppState,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    stream_for(subscription, state, None)
}

/// [`stream`] for a reader holding `grant`: it also ends (at the next `server` tick) once
/// a reload revoked or changed the token.
pub fn stream_for(
    subscription: Subscription,
    state: AppState,
    grant: Option<Arc<Grant>>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    stream_folded(subscription, state, grant, None)
}

/// [`stream_for`], folding readings when `every` is given (`?every=`): at most one
/// `reading` event per sensor and measurement per `every`, the newest, with `"count"`.
pub fn stream_folded(
    subscription: Subscription,
    state: AppState,
    grant: Option<Arc<Grant>>,
    every: Option<Duration>,
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
        grant,
        fold: every.map(Fold::new),
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
                // Before the queue: a backlog must not starve the server's figures.
                _ = feed.server_tick.tick() => {
                    if feed.grant.as_ref().is_some_and(|grant| !grant.is_current()) {
                        return None;
                    }
                    let summary = super::server_summary(&feed.state);
                    let data = serde_json::to_string(&summary)
                        .expect("the server summary serializes to JSON");
                    feed.pending
                        .push_back(Event::default().event("server").data(data));
                    continue;
                }
                () = async {
                    match feed.fold.as_mut() {
                        Some(fold) => {
                            fold.tick.tick().await;
                        }
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some(fold) = feed.fold.as_mut() {
                        fold.flush(&mut feed.pending);
                    }
                    continue;
                }
                next = feed.subscription.next() => next,
            };
            match next {
                Next::Event(LiveEvent::Readings(readings)) => {
                    let filter = feed.subscription.filter();
                    if let Some(fold) = feed.fold.as_mut() {
                        fold.absorb(&readings, filter);
                        continue;
                    }
                    for (group, json) in readings.matching(filter) {
                        // Built for folding subscribers only (one joined since): say how
                        // many readings it stands for.
                        let data = match readings.stands_for(group) {
                            1 => json.to_owned(),
                            count => with_count(json, count),
                        };
                        feed.pending
                            .push_back(Event::default().event("reading").data(data));
                    }
                }
                Next::Event(LiveEvent::Sensor(event)) => {
                    feed.pending
                        .push_back(Event::default().event("sensor").data(event.json()));
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

        let state = memory_state();
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
        assert!(sensor_filter(None).unwrap().is_none());
        assert!(sensor_filter(Some("")).unwrap().is_none());
        assert!(sensor_filter(Some(" , ")).unwrap().is_none());
        let filter = sensor_filter(Some("a, b,")).unwrap().expect("two names");
        assert_eq!(filter.len(), 2);
        assert!(filter.contains("a") && filter.contains("b") && !filter.contains("c"));
        let at_most: Vec<String> = (0..MAX_FILTER_SENSORS).map(|i| format!("s{i}")).collect();
        assert!(sensor_filter(Some(&at_most.join(","))).is_ok());
        let over = format!("{},x", at_most.join(","));
        assert!(sensor_filter(Some(&over)).is_err(), "one name too many");
    }

    /// The HTTP state of a server on an empty memory store, with the default settings.
    fn memory_state() -> crate::http::AppState {
        crate::http::AppState::new(
            crate::store::memory::MemoryStore::default().reader(),
            &crate::server::ServerConfig::default(),
            CancellationToken::new(),
        )
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

        let state = memory_state();
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
        // A hang here is the failure (a generous bound, not a timing assertion).
        tokio::time::timeout(
            Duration::from_secs(30),
            read_events(&mut body, &mut text, usize::MAX),
        )
        .await
        .expect("shutdown ends the stream");
        assert!(!state.live.has_subscribers(), "shutdown ended the stream");
    }

    /// `?every=`: readings fold into the newest per sensor and measurement, with how many
    /// each stands for; connections then serialize only each group's newest reading.
    #[tokio::test]
    async fn every_folds_readings_per_sensor_and_measurement() {
        use axum::http::Request;
        use tower::ServiceExt as _;

        let state = memory_state();
        for bad in ["every=5ms", "every=2m", "every=soon"] {
            let response = crate::http::router(state.clone())
                .oneshot(
                    Request::get(format!("/api/events?{bad}"))
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        }
        let response = crate::http::router(state.clone())
            .oneshot(
                Request::get("/api/events?sensor=a&every=50ms")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            state.live.event_detail(),
            crate::live::EventDetail::Latest,
            "only folding subscribers: newest readings only"
        );
        let mut body = response.into_body().into_data_stream();
        let registry = &state.live;
        let _a = commit(registry, "a", &["m v=1 1", "m v=2 2", "n w=7 3"]);
        let _a2 = commit(registry, "a", &["m v=3 4", "m v=4 5"]);
        let _b = commit(registry, "b", &["m v=9 6"]);
        let mut text = String::new();
        let readings = |text: &str| {
            text.split("\n\n")
                .filter(|event| event.starts_with("event: reading\n"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        // A hang here is the failure (a generous bound, not a timing assertion).
        tokio::time::timeout(Duration::from_secs(30), async {
            while readings(&text).len() < 2 {
                match body.next().await {
                    Some(chunk) => text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap()),
                    None => break,
                }
            }
        })
        .await
        .expect("the folded readings come at the next tick");
        let folded = readings(&text);
        assert_eq!(folded.len(), 2, "{text}");
        assert!(
            folded[0].contains("\"measurement\":\"m\"")
                && folded[0].contains("\"v\":4.0")
                && folded[0].ends_with(",\"count\":4}"),
            "the newest of four: {text}"
        );
        assert!(
            folded[1].contains("\"w\":7.0") && folded[1].ends_with(",\"count\":1}"),
            "{text}"
        );
        assert!(!text.contains("\"sensor\":\"b\""), "filtered out: {text}");
        // Someone wanting every reading makes connections serialize every one again.
        let every = state.live.subscribe(None);
        assert_eq!(state.live.event_detail(), crate::live::EventDetail::Every);
        drop(every);
    }

    #[test]
    fn a_count_is_added_to_the_object() {
        assert_eq!(with_count("{\"a\":1}", 3), "{\"a\":1,\"count\":3}");
        assert_eq!(with_count("{}", 2), "{\"count\":2}");
    }

    /// A backlog in the queue does not hold back the `server` event (time is paused: its
    /// tick is due when the stream is first polled, the backlog is ready too).
    #[tokio::test(start_paused = true)]
    async fn the_server_event_is_not_starved_by_a_backlog() {
        let state = memory_state();
        let subscription = state.live.subscribe(None);
        let _conns: Vec<_> = (0..20)
            .map(|i| commit(&state.live, &format!("s{i}"), &["m v=1 1"]))
            .collect();
        let mut events = std::pin::pin!(stream(subscription, state.clone()));
        tokio::time::advance(SERVER_EVERY).await;
        let first = events.next().await.expect("an event").expect("infallible");
        let text = format!("{first:?}");
        assert!(text.contains("server"), "{text}");
    }

    /// A reload that revokes the stream's token ends the stream at the next tick.
    #[tokio::test(start_paused = true)]
    async fn a_revoked_token_ends_its_stream() {
        use crate::auth::admin::{add, revoke, NewToken};
        use crate::auth::Authority;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        let new = NewToken {
            name: Some("viewer".into()),
            sensors: vec![],
            measurements: vec![],
            read: true,
        };
        let token = add(&path, new).expect("add a token").token;
        let authority = Authority::load(&path).expect("load");
        let grant = authority.verify(&token).expect("a valid token");
        let state = memory_state();
        let subscription = state.live.subscribe(None);
        let mut events = std::pin::pin!(stream_for(subscription, state.clone(), Some(grant)));
        let first = events.next().await.expect("an event").expect("infallible");
        assert!(format!("{first:?}").contains("server"), "{first:?}");
        revoke(&path, "viewer").expect("revoke");
        authority.reload().expect("reload");
        tokio::time::advance(SERVER_EVERY).await;
        assert!(events.next().await.is_none(), "the stream ended");
    }

    /// Too long a `?sensor=` list is refused.
    #[tokio::test]
    async fn too_many_sensor_names_are_refused() {
        use axum::http::Request;
        use tower::ServiceExt as _;

        let state = memory_state();
        let names: Vec<String> = (0..=MAX_FILTER_SENSORS).map(|i| format!("s{i}")).collect();
        let response = crate::http::router(state.clone())
            .oneshot(
                Request::get(format!("/api/events?sensor={}", names.join(",")))
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(!state.live.has_subscribers());
    }
}
