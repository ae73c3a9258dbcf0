//! The HTTP side, beside the sensor port: the JSON API, Prometheus `/metrics`, health
//! probes and the dashboard (docs/http-api.md is the contract).
//!
//! An axum router, served by hyper (HTTP/1.1, bounded connections, a header-read timeout)
//! over plain TCP, or HTTPS with the sensor port's certificate ([`serve_with_tls`]),
//! on the server's own tokio runtime, from a listener bound before the server announces
//! itself; stopped once the sensor port has drained ([`serve`]). Every handler reads: the store through its [`StoreReader`] (never through the
//! writer), the live figures from the process's [`Telemetry`]; nothing here is on the
//! ingest path.

pub mod access;
pub mod api;
pub mod sensors;
pub mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::{self, Telemetry};
use crate::server::ServerConfig;
use crate::store::StoreReader;
use crate::tls::ServerTls;
pub use access::{HttpAccess, HttpAuth};
pub use api::{server_summary, ServerSummary};

/// `--http` when not given: loopback only, where `--http-auth auto` asks for no token.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9889";

/// The exposition format `/metrics` is rendered in.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What every handler shares: cheap to clone (handles and `Arc`s only).
#[derive(Clone)]
pub struct AppState {
    /// The store's read side: `/api/readings` queries it beside the writer.
    pub reader: StoreReader,
    /// The store as configured (`sqlite:PATH`, `memory`), for `/api/server`.
    pub store: Arc<str>,
    /// When the server started, for its uptime.
    pub started: Instant,
    /// The server's shutdown: once cancelled, `/readyz` says so and long-lived responses
    /// (SSE) must end, or the graceful shutdown waits for them.
    pub shutdown: CancellationToken,
    /// Where the server's events are counted (the process's; a test's own in unit tests).
    pub telemetry: &'static Telemetry,
    // ---- live9: the live sensor registry (`/api/sensors`, `/api/events`) goes here ----
    /// The live view the connections feed with committed readings.
    pub live: Arc<crate::live::Registry>,
    /// The tokens in force (`--auth`), for the read scope; `None`: auth is off.
    pub auth: Option<Arc<crate::auth::Authority>>,
    /// Which routes ask for a read token (`--http-auth`, `--metrics-auth`).
    pub access: access::HttpAccess,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of a server running with `config`, reading through `reader`.
    pub fn new(reader: StoreReader, config: &ServerConfig, shutdown: CancellationToken) -> Self {
        AppState {
            reader,
            store: config.store.to_string().into(),
            started: Instant::now(),
            shutdown,
            telemetry: events::telemetry(),
            live: Arc::new(crate::live::Registry::new(&crate::live::LiveConfig::from(
                config,
            ))),
            auth: None,
            // Settings the server would refuse to start with close everything.
            access: access::HttpAccess::resolve(config).unwrap_or(access::HttpAccess::CLOSED),
        }
    }
}

/// Every route of the HTTP side. `/api/*` and `/metrics` pass their guard first
/// ([`access`]); the probes and the dashboard's shell (no data in them) are always open.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/server", get(api::server))
        .route("/api/readings", get(api::readings))
        // ---- live9: `/api/sensors`, `/api/sensors/{name}`, `/api/events` go here ----
        .merge(sensors::routes())
        .merge(sse::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            access::require_api,
        ));
    let metrics_route =
        Router::new()
            .route("/metrics", get(metrics))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                access::require_metrics,
            ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(api::readyz))
        .route("/", get(index_html))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .merge(api)
        .merge(metrics_route)
        .with_state(state)
}

/// Most HTTP connections served at once; further ones wait in the listen backlog. Each is
/// a file descriptor, counted apart from the sensor connections' (see
/// `server::RESERVED_FDS`), and a slow or idle client must not starve the others.
pub const MAX_HTTP_CONNECTIONS: usize = 256;

/// How long a client may take to send a request's headers before its connection is
/// closed: a stuck or slow client does not hold a connection slot for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to wait before accepting again after an accept error (e.g. out of file
/// descriptors), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve `router(state)` on `listener` until `stop` is cancelled, then finish the requests
/// in progress (graceful shutdown: no new ones are accepted). At most
/// [`MAX_HTTP_CONNECTIONS`] at once, HTTP/1.1, headers within [`HEADER_READ_TIMEOUT`].
///
/// `stop` is not the server's shutdown (`state.shutdown`): the server cancels it once the
/// sensor connections have drained, so `/readyz` answers "shutting down" and `/metrics`
/// is scrapable during the drain. Long-lived responses (SSE) end at `state.shutdown`.
///
/// The connections' tasks belong to this future: dropping (or aborting) it ends them too.
///
/// # Errors
/// None today (accept errors are logged and retried); kept for a listener that can fail.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    stop: CancellationToken,
) -> std::io::Result<()> {
    serve_with_tls(listener, state, None, stop).await
}

/// [`serve`], over HTTPS when `tls` is given: each connection's handshake takes the
/// certificate in force (a SIGHUP reload applies to new connections), holds one of the
/// [`MAX_HTTP_CONNECTIONS`] slots and must end within [`HEADER_READ_TIMEOUT`], as the
/// request's headers must. No client certificate is asked for, even when the sensor
/// port requires one (`--tls-client-ca`): browsers have none.
///
/// # Errors
/// As [`serve`].
pub async fn serve_with_tls(
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<ServerTls>>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let app = router(state);
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut connections = JoinSet::new();
    loop {
        // Reap finished connections, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => {
                slot.expect("the HTTP connection semaphore is never closed")
            }
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(cause = %err, "http accept failed; retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // The peer's address in each request's extensions, for the refusal log.
        let service = TowerToHyperService::new(with_peer(app.clone(), peer));
        let (builder, stop) = (builder.clone(), stop.clone());
        let acceptor = tls.as_ref().map(|tls| tls.http_acceptor());
        connections.spawn(async move {
            match acceptor {
                None => serve_connection(&builder, TokioIo::new(stream), service, &stop).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream));
                    let tls = tokio::select! {
                        () = stop.cancelled() => return,
                        tls = handshake => tls,
                    };
                    match tls {
                        Ok(Ok(tls)) => {
                            serve_connection(&builder, TokioIo::new(tls), service, &stop).await;
                        }
                        // A browser refusing our certificate, or plain HTTP to this port:
                        // the peer's problem, so debug only.
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, cause = %err, "https handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "https handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Serve one HTTP connection over `io` until it ends, or, once `stop`, until the request in
/// progress is finished.
async fn serve_connection<I, F>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: TowerToHyperService<WithPeer<F>>,
    stop: &CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    F: FnMut(Request<Incoming>) -> Request<Incoming> + Clone + Send + Sync + 'static,
{
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => log_connection_end(served),
        () = stop.cancelled() => {
            // Finish the request in progress, then close.
            connection.as_mut().graceful_shutdown();
            log_connection_end(connection.await);
        }
    }
}

/// The app, with the connection's peer address put in every request (axum's
/// [`ConnectInfo`], as `into_make_service_with_connect_info` would).
fn with_peer(
    app: Router,
    peer: SocketAddr,
) -> WithPeer<impl FnMut(Request<Incoming>) -> Request<Incoming> + Clone + Send + Sync + 'static> {
    use tower::ServiceExt as _;
    app.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    })
}

/// [`with_peer`]'s service.
type WithPeer<F> = tower::util::MapRequest<Router, F>;

fn log_connection_end(served: Result<(), hyper::Error>) {
    if let Err(err) = served {
        tracing::debug!(cause = %err, "http connection ended with an error");
    }
}

/// `GET /healthz`: the process is up and serving HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /metrics`: the Prometheus text of every metric in [`events::METRICS`].
async fn metrics() -> Response {
    match events::prometheus_handle() {
        Some(handle) => (
            [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
            handle.render(),
        )
            .into_response(),
        // An embedding program installed its own recorder: the metrics went to it.
        None => (
            StatusCode::NOT_FOUND,
            "metrics are not exported by this process (another recorder is installed)\n",
        )
            .into_response(),
    }
}

/// A dashboard file embedded in the binary: nothing is fetched from elsewhere at run
/// time. `no-cache` makes the browser revalidate, so a new binary's page is never mixed
/// with an old cached script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

async fn index_html() -> Response {
    asset(
        "text/html; charset=utf-8",
        include_str!("assets/index.html"),
    )
}

async fn app_js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt as _;

    use super::*;
    use crate::events::Event as _;
    use crate::store::memory::MemoryStore;

    fn state() -> AppState {
        AppState::new(
            MemoryStore::default().reader(),
            &ServerConfig::default(),
            CancellationToken::new(),
        )
    }

    /// A state counting into its own telemetry, so tests do not see each other's events.
    fn own_state() -> AppState {
        AppState {
            telemetry: Box::leak(Box::new(Telemetry::register())),
            ..state()
        }
    }

    async fn get_path(path: &str) -> (StatusCode, String, String) {
        get_from(state(), path).await
    }

    async fn get_from(state: AppState, path: &str) -> (StatusCode, String, String) {
        let response = router(state)
            .oneshot(
                Request::get(path)
                    .body(Body::empty())
                    .expect("a valid request"),
            )
            .await
            .expect("the router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().expect("ASCII header").to_string())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        )
    }

    /// A client that does not finish its request's headers within [`HEADER_READ_TIMEOUT`]
    /// is cut off (time is paused: tokio jumps to each timer).
    #[tokio::test(start_paused = true)]
    async fn a_client_slow_with_its_headers_is_cut_off() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let stop = CancellationToken::new();
        let serving = tokio::spawn(serve(listener, state(), stop.clone()));
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
            .await
            .expect("half a request");
        let started = tokio::time::Instant::now();
        let mut answer = Vec::new();
        // Far longer than the header timeout: without it, this is what ends the read.
        tokio::time::timeout(HEADER_READ_TIMEOUT * 6, client.read_to_end(&mut answer))
            .await
            .expect("closed by the header timeout")
            .expect("read");
        assert!(
            started.elapsed() >= HEADER_READ_TIMEOUT,
            "not before the timeout"
        );
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
        stop.cancel();
        serving.await.expect("join").expect("served");
    }

    /// Over HTTPS the header timeout bounds the handshake too: a client that connects and
    /// never sends its ClientHello is cut off (paused time, as above).
    #[tokio::test(start_paused = true)]
    async fn a_client_stalling_its_tls_handshake_is_cut_off() {
        use tokio::io::AsyncReadExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        crate::tls::cert::generate(dir.path(), &["localhost".into()], false).expect("certs");
        let path = |name: &str| dir.path().join(name);
        let tls = ServerTls::load(
            &path(crate::tls::cert::SERVER_CERT),
            &path(crate::tls::cert::SERVER_KEY),
            None,
        )
        .expect("TLS from generated files");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound address");
        let stop = CancellationToken::new();
        let serving = tokio::spawn(serve_with_tls(
            listener,
            state(),
            Some(Arc::new(tls)),
            stop.clone(),
        ));
        let mut client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        let mut answer = Vec::new();
        tokio::time::timeout(HEADER_READ_TIMEOUT * 6, client.read_to_end(&mut answer))
            .await
            .expect("closed by the header timeout")
            .expect("read");
        assert!(
            started.elapsed() >= HEADER_READ_TIMEOUT,
            "not before the timeout"
        );
        assert!(answer.is_empty(), "{answer:?}");
        stop.cancel();
        serving.await.expect("join").expect("served");
    }

    #[tokio::test]
    async fn healthz_says_ok() {
        let (status, _, body) = get_path("/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "ok\n");
    }

    /// Ready until a commit fails, again after one succeeds, and never once shutting down.
    #[tokio::test]
    async fn readyz_follows_the_store_and_the_shutdown() {
        let state = own_state();
        let ready = || get_from(state.clone(), "/readyz");
        assert_eq!(ready().await, (StatusCode::OK, ct_text(), "ready\n".into()));

        let failure = std::io::Error::other("disk I/O error\nat page 7");
        events::StoreFailed {
            error: &failure,
            batches: 1,
            rows: 3,
        }
        .emit_to(state.telemetry);
        let (status, _, body) = ready().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: store failing: disk I/O error at page 7\n");
        assert!(!server_summary(&state).ready);

        events::BatchCommitted {
            rows: 1,
            outcome: crate::store::WriteOutcome {
                inserted: 1,
                ..crate::store::WriteOutcome::default()
            },
            duration: std::time::Duration::from_millis(1),
        }
        .emit_to(state.telemetry);
        assert_eq!(ready().await.0, StatusCode::OK);
        assert!(server_summary(&state).ready);

        state.shutdown.cancel();
        let (status, _, body) = ready().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: shutting down\n");
    }

    fn ct_text() -> String {
        "text/plain; charset=utf-8".into()
    }

    #[tokio::test]
    async fn bad_readings_parameters_are_json_400s() {
        for path in [
            "/api/readings?limit=0",
            "/api/readings?since=soon",
            "/api/readings?sensors=a",
        ] {
            let (status, content_type, body) = get_path(path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(content_type, "application/json", "{path}");
            let error: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert!(error["error"].is_string(), "{path}: {body}");
        }
    }

    /// The contract lists every metric the server publishes (a new metric without its line
    /// in docs/http-api.md fails here).
    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../docs/http-api.md");
        for metric in events::METRICS {
            assert!(
                doc.contains(&format!("| `{}` |", metric.name)),
                "{} is missing from docs/http-api.md's metric table",
                metric.name
            );
        }
    }

    #[tokio::test]
    async fn assets_are_embedded_with_their_content_types() {
        for (path, content_type, file) in [
            ("/", "text/html", include_str!("assets/index.html")),
            ("/app.js", "text/javascript", include_str!("assets/app.js")),
            ("/style.css", "text/css", include_str!("assets/style.css")),
        ] {
            let (status, got_type, body) = get_path(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(got_type.starts_with(content_type), "{path}: {got_type}");
            assert_eq!(body, file, "{path}");
        }
        let (status, _, _) = get_path("/nothing-here").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
