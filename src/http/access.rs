//! Who may use the HTTP side: `--http-auth auto|token|open` and `--metrics-auth open|token`
//! resolved against `--http` and `--auth` into an [`HttpAccess`], and the guard that asks
//! `/api/*` (and `/metrics`, when so set) for a bearer token with the `read` scope.
//!
//! `/healthz`, `/readyz` and the dashboard's shell (`/`, `/app.js`, `/style.css`) carry no
//! data and stay open: a load balancer probes without a token, and the page must load to
//! show its login form. docs/http-api.md ("Authentication") is the contract.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::auth::{Grant, Refusal};
use crate::events::{Event as _, HttpAuthRefused, HttpRefusal};
use crate::server::ServerConfig;

/// `--http-auth`: when `/api/*` asks for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpAuth {
    /// A token whenever `--http` listens beyond loopback; open on loopback.
    #[default]
    Auto,
    /// Always a token (needs `--auth`).
    Token,
    /// Never a token.
    Open,
}

impl HttpAuth {
    pub const ALL: [(HttpAuth, &'static str); 3] = [
        (HttpAuth::Auto, "auto"),
        (HttpAuth::Token, "token"),
        (HttpAuth::Open, "open"),
    ];

    pub fn name(self) -> &'static str {
        match self {
            HttpAuth::Auto => "auto",
            HttpAuth::Token => "token",
            HttpAuth::Open => "open",
        }
    }
}

impl std::str::FromStr for HttpAuth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        HttpAuth::ALL
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(mode, _)| *mode)
            .ok_or_else(|| format!("invalid http-auth {text:?}: accepted auto, token or open"))
    }
}

impl std::fmt::Display for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a route asks of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Open,
    /// A bearer token whose grant may read.
    Token,
}

impl Guard {
    pub const ALL: [(Guard, &'static str); 2] = [(Guard::Open, "open"), (Guard::Token, "token")];

    pub fn name(self) -> &'static str {
        match self {
            Guard::Open => "open",
            Guard::Token => "token",
        }
    }
}

impl std::str::FromStr for Guard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Guard::ALL
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(guard, _)| *guard)
            .ok_or_else(|| format!("invalid metrics-auth {text:?}: accepted open or token"))
    }
}

impl std::fmt::Display for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The HTTP side's access rules, resolved from the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpAccess {
    /// `/api/*`.
    pub api: Guard,
    /// `/metrics`.
    pub metrics: Guard,
    /// The API is served without tokens although `--http` listens beyond loopback
    /// (`--http-insecure` or `--http-auth open`): worth a warning at start. (Open metrics
    /// beside a guarded API are a deliberate `--metrics-auth open`.)
    pub exposed: bool,
}

impl HttpAccess {
    /// Everything asks for a token: what a state whose settings cannot be resolved gets
    /// (fail closed; the server itself refuses to start first).
    pub const CLOSED: HttpAccess = HttpAccess {
        api: Guard::Token,
        metrics: Guard::Token,
        exposed: false,
    };

    /// The rules `config` sets, or why it cannot be served.
    ///
    /// # Errors
    /// A token would be required (by `--http-auth token`, `--metrics-auth token`, or
    /// `auto` beyond loopback without `--http-insecure`) but there is no `--auth` file; or
    /// `--http-auth open` beyond loopback without `--http-insecure`.
    pub fn resolve(config: &ServerConfig) -> Result<HttpAccess, AccessError> {
        let has_tokens = config.auth.is_some();
        let beyond_loopback = config
            .http
            .as_deref()
            .is_some_and(|addr| !is_loopback(addr));
        let api = match config.http_auth {
            // One switch means "I accept exposure": `open` alone does not serve everyone.
            HttpAuth::Open if !beyond_loopback || config.http_insecure => Guard::Open,
            HttpAuth::Open => {
                return Err(AccessError::OpenWithoutInsecure {
                    http: config.http.clone().unwrap_or_default(),
                })
            }
            HttpAuth::Token if has_tokens => Guard::Token,
            HttpAuth::Token => return Err(AccessError::TokenWithoutAuth("http-auth")),
            HttpAuth::Auto if !beyond_loopback => Guard::Open,
            HttpAuth::Auto if has_tokens => Guard::Token,
            HttpAuth::Auto if config.http_insecure => Guard::Open,
            HttpAuth::Auto => {
                return Err(AccessError::ExposedWithoutAuth {
                    http: config.http.clone().unwrap_or_default(),
                })
            }
        };
        let metrics = match config.metrics_auth {
            Some(Guard::Token) if !has_tokens => {
                return Err(AccessError::TokenWithoutAuth("metrics-auth"))
            }
            Some(guard) => guard,
            // Metrics tell how busy the server is and who is refused: as private as the API.
            None => api,
        };
        Ok(HttpAccess {
            api,
            metrics,
            exposed: beyond_loopback && api == Guard::Open,
        })
    }
}

/// Why the HTTP side's settings cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error(
        "--http {http} listens beyond loopback, where the HTTP API and dashboard would be open \
         to anyone who reaches the port; either give --auth FILE with a read token \
         (`sensorlink token new --auth FILE --read`), or listen on loopback only \
         (--http 127.0.0.1:9889), or pass --http-insecure to serve it without authentication"
    )]
    ExposedWithoutAuth { http: String },
    #[error(
        "--http-auth open with --http {http} beyond loopback would serve the HTTP API and \
         dashboard to anyone who reaches the port; pass --http-insecure as well to accept \
         that, or listen on loopback only (--http 127.0.0.1:9889)"
    )]
    OpenWithoutInsecure { http: String },
    #[error("--{0} token needs --auth FILE (the tokens file, made by `sensorlink token new`)")]
    TokenWithoutAuth(&'static str),
}

/// True when `addr` (`IP:PORT` or `HOST:PORT`) is on loopback: an IP in 127.0.0.0/8 or
/// `::1`, or the name `localhost` if it resolves to loopback addresses only (a hosts file
/// or container may map it elsewhere). Any other name counts as beyond loopback: it is
/// resolved only when bound, and a wrong guess must not open the API.
pub fn is_loopback(addr: &str) -> bool {
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    match addr.rsplit_once(':') {
        Some((host, _port)) => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<IpAddr>() {
                Ok(ip) => ip.is_loopback(),
                Err(_) => host.eq_ignore_ascii_case("localhost") && resolves_to_loopback(addr),
            }
        }
        None => false,
    }
}

/// Whether `addr` resolves (the system resolver, as the bind will) to loopback addresses
/// only; a name that does not resolve is not trusted.
fn resolves_to_loopback(addr: &str) -> bool {
    match std::net::ToSocketAddrs::to_socket_addrs(addr) {
        Ok(addrs) => {
            let mut any = false;
            for socket in addrs {
                if !socket.ip().is_loopback() {
                    return false;
                }
                any = true;
            }
            any
        }
        Err(_) => false,
    }
}

/// Middleware of `/api/*`: the request goes on only as [`HttpAccess::api`] allows; the
/// token's grant is then in the request's extensions (an `Arc<Grant>`), for streams that
/// must end when it is revoked.
pub async fn require_api(State(state): State<AppState>, request: Request, next: Next) -> Response {
    guarded(state.access.api, &state, request, next).await
}

/// Middleware of `/metrics`, as [`HttpAccess::metrics`] allows.
pub async fn require_metrics(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    guarded(state.access.metrics, &state, request, next).await
}

async fn guarded(guard: Guard, state: &AppState, mut request: Request, next: Next) -> Response {
    if guard == Guard::Open {
        return next.run(request).await;
    }
    match check(state, request.headers()) {
        Ok(grant) => {
            request.extensions_mut().insert(grant);
            next.run(request).await
        }
        Err(refusal) => {
            HttpAuthRefused {
                reason: refusal,
                path: request.uri().path(),
                peer: request
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|info| info.0),
            }
            .emit_to(state.telemetry);
            refuse(refusal)
        }
    }
}

/// The read grant of the request's bearer token, or why there is none.
fn check(state: &AppState, headers: &HeaderMap) -> Result<Arc<Grant>, HttpRefusal> {
    let Some(authority) = &state.auth else {
        // Only a state whose settings could not be resolved asks without tokens to check.
        return Err(HttpRefusal::Unknown);
    };
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(HttpRefusal::Missing),
        (Some(value), None) => value,
        // Two tokens: which one counts is a guess; refuse rather than pick.
        (Some(_), Some(_)) => return Err(HttpRefusal::Malformed),
    };
    let token = bearer(value).ok_or(HttpRefusal::Malformed)?;
    let grant = authority.verify(token).map_err(|refusal| match refusal {
        Refusal::Malformed => HttpRefusal::Malformed,
        Refusal::Unknown => HttpRefusal::Unknown,
        Refusal::Revoked(_) => HttpRefusal::Revoked,
    })?;
    if grant.may_read() {
        Ok(grant)
    } else {
        Err(HttpRefusal::NoReadScope)
    }
}

/// The token of `Bearer <token>` (the scheme in any case, RFC 7235).
fn bearer(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?.trim();
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 (no usable token) or 403 (a good token without the read scope), with the
/// `WWW-Authenticate` challenge of RFC 6750 and a JSON error that never echoes the token.
fn refuse(refusal: HttpRefusal) -> Response {
    let (status, challenge) = match refusal {
        HttpRefusal::Missing => (StatusCode::UNAUTHORIZED, r#"Bearer realm="sensorlink""#),
        HttpRefusal::Malformed | HttpRefusal::Unknown | HttpRefusal::Revoked => (
            StatusCode::UNAUTHORIZED,
            r#"Bearer realm="sensorlink", error="invalid_token""#,
        ),
        HttpRefusal::NoReadScope => (
            StatusCode::FORBIDDEN,
            r#"Bearer realm="sensorlink", error="insufficient_scope", scope="read""#,
        ),
    };
    let body = serde_json::json!({ "error": refusal.message() }).to_string();
    (
        status,
        [
            (
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            ),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(http: &str, auth: bool) -> ServerConfig {
        ServerConfig {
            http: (http != "off").then(|| http.to_string()),
            auth: auth.then(|| "tokens.toml".into()),
            ..ServerConfig::default()
        }
    }

    fn access(http: &str, auth: bool) -> Result<HttpAccess, AccessError> {
        HttpAccess::resolve(&config(http, auth))
    }

    #[test]
    fn loopback_is_127_slash_8_and_ipv6_one_and_localhost() {
        for addr in [
            "127.0.0.1:9889",
            "127.1.2.3:0",
            "[::1]:9889",
            "localhost:0",
            "LocalHost:1",
        ] {
            assert!(is_loopback(addr), "{addr}");
        }
        for addr in [
            "0.0.0.0:9889",
            "[::]:0",
            "192.168.1.2:80",
            "[::ffff:127.0.0.1]:80",
            "example.org:80",
            "localhost.example.org:80",
        ] {
            assert!(!is_loopback(addr), "{addr}");
        }
    }

    #[test]
    fn auto_asks_for_tokens_beyond_loopback_only() {
        let open = HttpAccess {
            api: Guard::Open,
            metrics: Guard::Open,
            exposed: false,
        };
        assert_eq!(access("127.0.0.1:0", false), Ok(open));
        assert_eq!(access("127.0.0.1:0", true), Ok(open));
        assert_eq!(access("off", false), Ok(open));
        assert_eq!(
            access("0.0.0.0:9889", true),
            Ok(HttpAccess {
                api: Guard::Token,
                metrics: Guard::Token,
                exposed: false,
            })
        );
        let refused = access("0.0.0.0:9889", false).expect_err("exposed without tokens");
        let message = refused.to_string();
        for way_out in ["--auth FILE", "--http 127.0.0.1", "--http-insecure"] {
            assert!(message.contains(way_out), "{message}");
        }
    }

    #[test]
    fn insecure_opens_an_exposed_api_without_tokens() {
        let insecure = ServerConfig {
            http_insecure: true,
            ..config("0.0.0.0:0", false)
        };
        assert_eq!(
            HttpAccess::resolve(&insecure),
            Ok(HttpAccess {
                api: Guard::Open,
                metrics: Guard::Open,
                exposed: true,
            })
        );
        // With tokens, --http-insecure changes nothing.
        let with_tokens = ServerConfig {
            http_insecure: true,
            ..config("0.0.0.0:0", true)
        };
        assert_eq!(
            HttpAccess::resolve(&with_tokens).map(|a| a.api),
            Ok(Guard::Token)
        );
    }

    #[test]
    fn token_modes_need_the_tokens_file() {
        let token = |auth| ServerConfig {
            http_auth: HttpAuth::Token,
            ..config("127.0.0.1:0", auth)
        };
        assert_eq!(
            HttpAccess::resolve(&token(false)),
            Err(AccessError::TokenWithoutAuth("http-auth"))
        );
        assert_eq!(
            HttpAccess::resolve(&token(true)),
            Ok(HttpAccess {
                api: Guard::Token,
                metrics: Guard::Token,
                exposed: false,
            })
        );
        let metrics = |auth| ServerConfig {
            metrics_auth: Some(Guard::Token),
            ..config("127.0.0.1:0", auth)
        };
        assert_eq!(
            HttpAccess::resolve(&metrics(false)),
            Err(AccessError::TokenWithoutAuth("metrics-auth"))
        );
        assert_eq!(
            HttpAccess::resolve(&metrics(true)).map(|a| (a.api, a.metrics)),
            Ok((Guard::Open, Guard::Token))
        );
        let open_metrics = ServerConfig {
            metrics_auth: Some(Guard::Open),
            ..token(true)
        };
        assert_eq!(
            HttpAccess::resolve(&open_metrics).map(|a| (a.api, a.metrics)),
            Ok((Guard::Token, Guard::Open))
        );
    }

    /// `--http-auth open` beyond loopback needs `--http-insecure` too (one switch means "I
    /// accept exposure"), and is then exposed; on loopback it needs nothing more.
    #[test]
    fn open_beyond_loopback_needs_insecure_and_is_exposed() {
        let open = |insecure| ServerConfig {
            http_auth: HttpAuth::Open,
            http_insecure: insecure,
            ..config("0.0.0.0:0", false)
        };
        assert_eq!(
            HttpAccess::resolve(&open(false)),
            Err(AccessError::OpenWithoutInsecure {
                http: "0.0.0.0:0".into()
            })
        );
        let message = AccessError::OpenWithoutInsecure {
            http: "0.0.0.0:0".into(),
        }
        .to_string();
        assert!(message.contains("--http-insecure"), "{message}");
        assert_eq!(
            HttpAccess::resolve(&open(true)).map(|a| a.exposed),
            Ok(true)
        );
        let loopback = ServerConfig {
            http_auth: HttpAuth::Open,
            ..config("127.0.0.1:0", false)
        };
        assert_eq!(
            HttpAccess::resolve(&loopback).map(|a| (a.api, a.exposed)),
            Ok((Guard::Open, false))
        );
    }

    /// A state asking for tokens on `/api/*` (and `/metrics` as `metrics`), with a read
    /// token and a write-only one made by the `token new` code; the temp dir lives as long.
    struct Guarded {
        state: AppState,
        read: String,
        write_only: String,
        _dir: tempfile::TempDir,
    }

    fn guarded(metrics: Guard) -> Guarded {
        use crate::auth::admin::{add, NewToken};
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        let read = add(
            &path,
            NewToken {
                name: Some("viewer".into()),
                sensors: vec![],
                measurements: vec![],
                read: true,
            },
        )
        .expect("add a read token")
        .token;
        let write_only = add(
            &path,
            NewToken {
                name: None,
                sensors: vec!["kitchen-*".into()],
                measurements: vec![],
                read: false,
            },
        )
        .expect("add a write token")
        .token;
        let config = ServerConfig {
            http_auth: HttpAuth::Token,
            metrics_auth: Some(metrics),
            auth: Some(path.clone()),
            ..ServerConfig::default()
        };
        let mut state = AppState::new(
            crate::store::memory::MemoryStore::default().reader(),
            &config,
            tokio_util::sync::CancellationToken::new(),
        );
        state.telemetry = Box::leak(Box::new(crate::events::Telemetry::register()));
        state.auth = Some(Arc::new(
            crate::auth::Authority::load(&path).expect("load tokens"),
        ));
        Guarded {
            state,
            read,
            write_only,
            _dir: dir,
        }
    }

    async fn get(
        state: &AppState,
        path: &str,
        authorization: Option<&str>,
    ) -> (StatusCode, HeaderMap, String) {
        use tower::ServiceExt as _;
        let mut request = axum::http::Request::get(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = super::super::router(state.clone())
            .oneshot(request.body(axum::body::Body::empty()).expect("request"))
            .await
            .expect("the router is infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn the_api_asks_for_a_read_token_and_never_echoes_it() {
        let g = guarded(Guard::Token);
        let state = &g.state;
        let bearer = |token: &str| format!("Bearer {token}");
        // The read token with its last character changed: well formed, wrong secret.
        let wrong = {
            let (head, last) = g.read.split_at(g.read.len() - 1);
            format!("{head}{}", if last == "a" { "b" } else { "a" })
        };
        for (authorization, status, reason) in [
            (None, StatusCode::UNAUTHORIZED, "missing"),
            (Some(bearer(&wrong)), StatusCode::UNAUTHORIZED, "unknown"),
            (
                Some("Bearer nonsense".into()),
                StatusCode::UNAUTHORIZED,
                "malformed",
            ),
            (
                Some(format!("Basic {}", g.read)),
                StatusCode::UNAUTHORIZED,
                "malformed",
            ),
            (
                Some(bearer(&g.write_only)),
                StatusCode::FORBIDDEN,
                "no_read_scope",
            ),
        ] {
            let (got, headers, body) = get(state, "/api/server", authorization.as_deref()).await;
            assert_eq!(got, status, "{authorization:?}: {body}");
            let challenge = headers
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
            assert!(error["error"].is_string(), "{body}");
            assert!(
                !body.contains(&g.read) && !body.contains(&g.write_only),
                "{body}"
            );
            let refusal = HttpRefusal::ALL
                .into_iter()
                .find(|r| r.as_str() == reason)
                .expect("a documented reason");
            assert_eq!(refusal.message(), error["error"], "{reason}");
        }
        for path in [
            "/api/server",
            "/api/sensors",
            "/api/sensors/nobody",
            "/api/readings?limit=1",
            "/metrics",
        ] {
            let (status, _, body) = get(state, path, Some(&bearer(&g.read))).await;
            // A missing sensor is the API's own 404; /metrics has no recorder in unit tests.
            assert!(
                !matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
                "{path}: {status} {body}"
            );
        }
        for path in ["/healthz", "/readyz", "/", "/app.js", "/style.css"] {
            assert_eq!(get(state, path, None).await.0, StatusCode::OK, "{path}");
        }
        assert_eq!(
            get(state, "/metrics", None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    /// A token revoked in the file is refused from the first request after the reload.
    #[tokio::test]
    async fn a_revoked_token_is_refused_after_the_reload() {
        let g = guarded(Guard::Token);
        let read = format!("Bearer {}", g.read);
        assert_eq!(
            get(&g.state, "/api/server", Some(&read)).await.0,
            StatusCode::OK
        );
        let authority = g.state.auth.as_ref().expect("tokens loaded");
        crate::auth::admin::revoke(authority.path(), "viewer").expect("revoke");
        authority.reload().expect("reload");
        let (status, headers, body) = get(&g.state, "/api/server", Some(&read)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.contains(HttpRefusal::Revoked.message()), "{body}");
        assert!(headers[header::WWW_AUTHENTICATE]
            .to_str()
            .expect("ASCII")
            .contains("invalid_token"));
    }

    #[tokio::test]
    async fn open_metrics_beside_a_guarded_api() {
        let g = guarded(Guard::Open);
        assert_ne!(
            get(&g.state, "/metrics", None).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&g.state, "/api/sensors", None).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    /// Fail closed: settings the server refuses to start with refuse every request.
    #[tokio::test]
    async fn unresolvable_settings_close_the_api() {
        let config = ServerConfig {
            http_auth: HttpAuth::Token,
            ..ServerConfig::default()
        };
        let state = AppState::new(
            crate::store::memory::MemoryStore::default().reader(),
            &config,
            tokio_util::sync::CancellationToken::new(),
        );
        assert_eq!(state.access, HttpAccess::CLOSED);
        assert_eq!(
            get(&state, "/api/server", Some("Bearer sl_abcdefgh_x"))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn bearer_takes_the_scheme_in_any_case() {
        let token =
            |text: &'static str| bearer(&HeaderValue::from_static(text)).map(str::to_string);
        assert_eq!(token("Bearer sl_abc_def").as_deref(), Some("sl_abc_def"));
        assert_eq!(token("bearer  sl_abc_def ").as_deref(), Some("sl_abc_def"));
        assert_eq!(token("Basic dXNlcjpwYXNz"), None);
        assert_eq!(token("Bearer "), None);
        assert_eq!(token("sl_abc_def"), None);
    }
}
