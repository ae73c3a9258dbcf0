//! One connection's authentication (`--auth`): the token it presented with `auth`, what
//! that token may write, and when the connection must be closed for it.
//!
//! No I/O here: [`super::connection`] asks [`ConnAuth`] at three points (an `auth` line, each
//! reading, a legacy peer's first bytes) and closes the connection once
//! [`ConnAuth::close_reason`] says so. Without `--auth` every reading is admitted as before.
//!
//! The stored sensor comes from the token, never from the peer's address: a reading names a
//! sensor the token may write, or carries none and gets the token's one sensor. Legacy peers
//! cannot present a token: with `--auth` they are admitted only from `--allow-legacy`
//! networks (the network is the credential), keyed by their address as before.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::auth::cidr::Cidr;
use crate::auth::{token, Authority, Grant, Refusal};
use crate::events::{AuthChecked, AuthResult, CloseReason, Event as _, Telemetry};
use crate::protocol::control::{AuthSecret, AUTH_FAILED_PREFIX, AUTH_OFF_REASON};
use crate::protocol::{ProtocolError, Reading};

/// Readings refused for want of a token plus refused `auth` lines a connection may send
/// before it is closed: a client that forgot its token learns it from the first error, and
/// a guesser gets only this many tries per connection (the connect rate bounds the rest).
pub const MAX_AUTH_STRIKES: u32 = 3;

/// One connection's authentication state.
#[derive(Debug)]
pub(super) struct ConnAuth {
    /// The tokens in force; `None`: no `--auth`, everything is admitted.
    authority: Option<Arc<Authority>>,
    /// What the last accepted `auth` granted.
    grant: Option<Arc<Grant>>,
    strikes: u32,
    /// Set once the connection must end (it reads nothing more after that).
    close: Option<CloseReason>,
}

impl ConnAuth {
    pub(super) fn new(authority: Option<Arc<Authority>>) -> Self {
        ConnAuth {
            authority,
            grant: None,
            strikes: 0,
            close: None,
        }
    }

    /// The id of the token in force (what per-token quotas are keyed by).
    pub(super) fn token_id(&self) -> Option<&str> {
        self.grant.as_deref().map(Grant::id)
    }

    /// Why the connection must close now, if it must.
    pub(super) fn close_reason(&self) -> Option<CloseReason> {
        self.close
    }

    /// Answer `auth <token>`: the token's id, or the `error` reply's reason. A refused token
    /// also drops the one accepted before (a peer switching tokens gets the new one or none).
    pub(super) fn authenticate(
        &mut self,
        secret: &AuthSecret,
        peer: SocketAddr,
        telemetry: &Telemetry,
    ) -> Result<String, String> {
        let Some(authority) = &self.authority else {
            AuthChecked {
                peer,
                token_id: None,
                result: AuthResult::Off,
                refusal: None,
            }
            .emit_to(telemetry);
            return Err(AUTH_OFF_REASON.to_owned());
        };
        // Only a well-formed token's id is ever shown; the rest of it never is.
        let token_id = token::id_of(secret.expose());
        match authority.verify(secret.expose()) {
            Ok(grant) => {
                AuthChecked {
                    peer,
                    token_id,
                    result: AuthResult::Ok,
                    refusal: None,
                }
                .emit_to(telemetry);
                let id = grant.id().to_owned();
                self.grant = Some(grant);
                Ok(id)
            }
            Err(refusal) => {
                let reason = refusal.to_string();
                AuthChecked {
                    peer,
                    token_id,
                    result: AuthResult::of(&refusal),
                    refusal: Some(&reason),
                }
                .emit_to(telemetry);
                self.grant = None;
                self.strike();
                Err(format!("{AUTH_FAILED_PREFIX}{reason}"))
            }
        }
    }

    /// Whether this connection may store `reading`; an untagged reading gets the token's
    /// sensor as its `sensor` tag, so the store keys it by the token, not by the address.
    ///
    /// # Errors
    /// No token yet ([`ProtocolError::Unauthenticated`], a strike), a sensor or measurement
    /// outside the token's scope ([`ProtocolError::NotPermitted`]), or the token revoked by a
    /// reload ([`ProtocolError::AuthFailed`]; the connection is then closed).
    pub(super) fn admit(&mut self, reading: &mut Reading) -> Result<(), ProtocolError> {
        let Some(authority) = &self.authority else {
            return Ok(());
        };
        let Some(grant) = &mut self.grant else {
            self.strike();
            return Err(ProtocolError::Unauthenticated);
        };
        if !grant.is_current() {
            match authority.refresh(grant) {
                Ok(fresh) => *grant = fresh,
                Err(refusal) => return Err(self.revoked(&refusal)),
            }
        }
        let tag = reading.tag("sensor");
        let sensor = grant
            .sensor_for(&reading.measurement, tag)
            .map_err(|scope| ProtocolError::NotPermitted(scope.to_string()))?;
        if tag.is_none() {
            let sensor = sensor.to_owned();
            reading.tags.push(("sensor".to_owned(), sensor));
        }
        Ok(())
    }

    /// Whether a legacy (seed) peer from `ip` may go on; if not, the connection closes.
    pub(super) fn legacy_allowed(&mut self, ip: IpAddr, allow: &[Cidr]) -> bool {
        if self.authority.is_none() || allow.iter().any(|net| net.contains(ip)) {
            return true;
        }
        self.close = Some(CloseReason::LegacyNotAllowed);
        false
    }

    fn strike(&mut self) {
        self.strikes += 1;
        if self.strikes >= MAX_AUTH_STRIKES {
            self.close.get_or_insert(CloseReason::AuthFailed);
        }
    }

    fn revoked(&mut self, refusal: &Refusal) -> ProtocolError {
        tracing::warn!(cause = %refusal, "token no longer valid; closing connection");
        self.grant = None;
        self.close = Some(CloseReason::TokenRevoked);
        ProtocolError::AuthFailed(refusal.to_string())
    }
}

/// After closing our side for `--auth`: read (and drop) what the peer still sends, for a
/// bounded time, so that its unread bytes do not turn our close into a reset that would
/// destroy the error replies it has not read yet.
pub(super) async fn linger<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) {
    const LINGER_MAX_BYTES: usize = 64 * 1024;
    let drain = async {
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < LINGER_MAX_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(limit.min(LINGER_TIMEOUT), drain).await;
}

/// Longest [`linger`].
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// Re-read the tokens file (SIGHUP, registered with [`super::reload`] as
/// `what="auth"`, whose event logs and counts the result): what changed, or why the tokens
/// in force stay. Connections holding a token revoked, removed or changed see it at their
/// next reading ([`ConnAuth::admit`]).
///
/// # Errors
/// The file cannot be read or is invalid (the previous tokens stay in force).
pub fn reload_auth(authority: &Authority) -> Result<String, String> {
    authority
        .reload()
        .map(|summary| format!("{}: {summary}", authority.path().display()))
        .map_err(|err| format!("{err:#}; the previous tokens stay in force"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::auth::admin::{self, NewToken};
    use crate::events::testing::sample;
    use crate::protocol::ilp;
    use crate::server::connection::{serve_counted, Limits};
    use crate::store::writer::{self, WriterConfig};
    use crate::store::{Drive, Query};

    /// A tokens file in a temp dir with one token for `sensors`.
    struct Tokens {
        dir: tempfile::TempDir,
        token: String,
        id: String,
        authority: Arc<Authority>,
    }

    fn tokens(sensors: &[&str]) -> Tokens {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        let new = NewToken {
            name: Some("kitchen".into()),
            sensors: sensors.iter().map(|s| s.to_string()).collect(),
            ..NewToken::default()
        };
        let made = admin::add(&path, new).expect("add a token");
        let authority = Arc::new(Authority::load(&path).expect("load"));
        Tokens {
            dir,
            token: made.token,
            id: made.entry.id,
            authority,
        }
    }

    fn reading(line: &str) -> Reading {
        ilp::parse(line.as_bytes()).expect("valid reading")
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 9], 4000))
    }

    #[test]
    fn readings_before_auth_are_strikes_and_the_third_closes() {
        let t = tokens(&["k1"]);
        let mut auth = ConnAuth::new(Some(t.authority.clone()));
        for n in 1..=MAX_AUTH_STRIKES {
            assert_eq!(auth.close_reason(), None, "before strike {n}");
            let err = auth
                .admit(&mut reading("m v=1i 1"))
                .expect_err("no token yet");
            assert_eq!(err, ProtocolError::Unauthenticated);
        }
        assert_eq!(auth.close_reason(), Some(CloseReason::AuthFailed));
    }

    #[test]
    fn failed_auths_are_strikes_and_never_echo_the_token() {
        let t = tokens(&["k1"]);
        let mut auth = ConnAuth::new(Some(t.authority.clone()));
        let telemetry = crate::events::telemetry();
        let mut wrong = t.token.clone();
        wrong.pop();
        wrong.push(if t.token.ends_with('a') { 'b' } else { 'a' });
        let why = auth
            .authenticate(&AuthSecret::new(wrong.clone()), peer(), telemetry)
            .expect_err("wrong secret");
        assert_eq!(why, "auth failed: unknown token");
        let why = auth
            .authenticate(&AuthSecret::new("hunter2"), peer(), telemetry)
            .expect_err("malformed");
        assert_eq!(why, "auth failed: malformed token");
        assert_eq!(auth.close_reason(), None);
        // A good token after two bad ones is accepted; a strike more would close.
        let id = auth
            .authenticate(&AuthSecret::new(t.token.clone()), peer(), telemetry)
            .expect("valid token");
        assert_eq!(id, t.id);
        let _ = auth.authenticate(&AuthSecret::new(wrong), peer(), telemetry);
        assert_eq!(auth.close_reason(), Some(CloseReason::AuthFailed));
    }

    #[test]
    fn the_token_names_the_sensor_and_bounds_the_scope() {
        let t = tokens(&["k1"]);
        let mut auth = ConnAuth::new(Some(t.authority.clone()));
        auth.authenticate(
            &AuthSecret::new(t.token.clone()),
            peer(),
            crate::events::telemetry(),
        )
        .expect("valid");
        let mut untagged = reading("m v=1i 1");
        auth.admit(&mut untagged).expect("the token's own sensor");
        assert_eq!(untagged.tag("sensor"), Some("k1"));
        let mut own = reading("m,sensor=k1 v=1i 1");
        auth.admit(&mut own).expect("tagged with its sensor");
        assert_eq!(own.tags.len(), 1, "no second sensor tag");
        let err = auth
            .admit(&mut reading("m,sensor=k2 v=1i 1"))
            .expect_err("another sensor");
        assert_eq!(
            err,
            ProtocolError::NotPermitted(format!(
                "token kitchen ({}) may not write sensor \"k2\"",
                t.id
            ))
        );
        assert_eq!(auth.close_reason(), None, "a scope refusal is not a strike");
    }

    #[test]
    fn a_revoked_token_closes_the_connection_at_its_next_reading() {
        let t = tokens(&["k1"]);
        let mut auth = ConnAuth::new(Some(t.authority.clone()));
        auth.authenticate(
            &AuthSecret::new(t.token.clone()),
            peer(),
            crate::events::telemetry(),
        )
        .expect("valid");
        auth.admit(&mut reading("m v=1i 1"))
            .expect("before the revocation");
        let path = t.dir.path().join("tokens.toml");
        admin::revoke(&path, &t.id).expect("revoke");
        reload_auth(&t.authority).expect("reload");
        let err = auth.admit(&mut reading("m v=1i 2")).expect_err("revoked");
        assert!(
            matches!(&err, ProtocolError::AuthFailed(why) if why.contains("revoked")),
            "{err:?}"
        );
        assert_eq!(auth.close_reason(), Some(CloseReason::TokenRevoked));
    }

    #[test]
    fn without_auth_everything_is_admitted_and_auth_says_so() {
        let mut auth = ConnAuth::new(None);
        let mut r = reading("m v=1i 1");
        auth.admit(&mut r).expect("no --auth");
        assert_eq!(r.tag("sensor"), None, "the address names it, as before");
        let why = auth
            .authenticate(&AuthSecret::new("sl_x"), peer(), crate::events::telemetry())
            .expect_err("off");
        assert_eq!(why, AUTH_OFF_REASON);
        assert!(auth.legacy_allowed(peer().ip(), &[]));
        assert_eq!(auth.close_reason(), None);
    }

    #[test]
    fn legacy_peers_need_an_allowed_network_when_auth_is_on() {
        let t = tokens(&["k1"]);
        let allow: Vec<Cidr> = vec!["10.0.0.0/8".parse().expect("cidr")];
        let mut auth = ConnAuth::new(Some(t.authority.clone()));
        assert!(auth.legacy_allowed("10.1.2.3".parse().expect("ip"), &allow));
        assert_eq!(auth.close_reason(), None);
        assert!(!auth.legacy_allowed(peer().ip(), &allow));
        assert_eq!(auth.close_reason(), Some(CloseReason::LegacyNotAllowed));
    }

    /// Limits for a duplex connection with `authority`.
    fn limits(authority: Option<Arc<Authority>>) -> Limits {
        Limits {
            first_line_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(5),
            max_line_bytes: 1024,
            max_inflight_batches: 4,
            timestamps: crate::protocol::TimestampWindow::default(),
            tls: None,
            quotas: super::super::quota::Quotas::new(Default::default()),
            legacy_ping_quiet: crate::protocol::legacy::LEGACY_PING_QUIET,
            auth: authority,
            allow_legacy: Vec::new(),
            tcp_info_interval: Duration::ZERO,
        }
    }

    /// Over a whole connection: readings before `auth` are refused (their held errors sent
    /// once it closes), the third strike closes it, and it is counted under its reasons.
    #[tokio::test]
    async fn a_connection_without_a_token_is_refused_then_closed() {
        let t = tokens(&["k1"]);
        let store = crate::store::memory::MemoryStore::default();
        let reader = store.reader();
        let (handle, writer) =
            writer::spawn(Drive::Inline(Box::new(store)), WriterConfig::default());
        let recorder = crate::events::prometheus_builder().build_recorder();
        let telemetry = metrics::with_local_recorder(&recorder, Telemetry::register);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let limits = limits(Some(t.authority.clone()));
        let serving = serve_counted(
            server,
            peer(),
            &limits,
            handle,
            CancellationToken::new(),
            &telemetry,
            None,
        );
        let talking = async move {
            let (read, mut write) = tokio::io::split(client);
            // No control line: a plain sender whose errors are held, then flushed at close.
            write
                .write_all(b"m v=1i 1\nm v=2i 2\nm v=3i 3\nm v=4i 4\n")
                .await
                .expect("pipe open");
            let mut lines = BufReader::new(read).lines();
            let mut replies = Vec::new();
            while let Some(line) = lines.next_line().await.expect("read") {
                replies.push(line);
            }
            replies
        };
        let ((), replies) = tokio::join!(serving, talking);
        let expected: Vec<String> = (1..=3)
            .map(|n| format!("error {n} authentication required: send \"auth <token>\" first"))
            .collect();
        assert_eq!(replies, expected, "the fourth line is never answered");
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("flush");
        assert!(reader
            .query(&Query::default())
            .await
            .expect("query")
            .is_empty());
        let text = recorder.handle().render();
        for (series, value) in [
            (
                "sensorlink_lines_rejected_total{reason=\"unauthenticated\"}",
                3.0,
            ),
            (
                "sensorlink_connections_closed_total{reason=\"auth_failed\"}",
                1.0,
            ),
            ("sensorlink_readings_accepted_total", 0.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
        }
    }

    /// A peer closed for `--auth` that keeps its socket open (and silent) holds the
    /// connection's task at most [`LINGER_TIMEOUT`] after the close; paused clock.
    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_does_not_hold_an_auth_close_open() {
        let t = tokens(&["k1"]);
        let (handle, writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(64 * 1024);
        let limits = limits(Some(t.authority.clone()));
        let task = tokio::spawn(async move {
            let telemetry = crate::events::telemetry();
            let stop = CancellationToken::new();
            serve_counted(server, peer(), &limits, handle, stop, telemetry, None).await
        });
        let (read, mut write) = tokio::io::split(client);
        write
            .write_all(b"ping\nm v=1i 1\nm v=2i 2\nm v=3i 3\n")
            .await
            .expect("pipe open");
        let mut lines = BufReader::new(read).lines();
        let mut replies = 0;
        while lines.next_line().await.expect("read").is_some() {
            replies += 1;
        }
        assert_eq!(replies, 4, "pong and three errors, then the close");
        let closed = tokio::time::Instant::now();
        // `write` stays open: only the linger bound ends the task.
        task.await.expect("connection task");
        let held = closed.elapsed();
        assert!(held <= LINGER_TIMEOUT, "{held:?}");
        assert!(
            held >= LINGER_TIMEOUT,
            "the linger waited for the peer: {held:?}"
        );
        drop(write);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("flush");
    }

    /// Per-token quotas are charged to the token `auth` presented: a second connection of
    /// the same token finds the token's new-series allowance spent by the first.
    #[tokio::test]
    async fn quotas_are_charged_to_the_connections_token() {
        let t = tokens(&["k-*"]);
        let quotas = super::super::quota::Quotas::new(super::super::quota::QuotaLimits {
            new_series_per_token: 1,
            ..Default::default()
        });
        let limits = Limits {
            quotas,
            ..limits(Some(t.authority.clone()))
        };
        let (handle, writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let mut replies = Vec::new();
        for (sensor, sync) in [("k-1", "a"), ("k-2", "b")] {
            let (client, server) = tokio::io::duplex(64 * 1024);
            let serving = serve_counted(
                server,
                peer(),
                &limits,
                handle.clone(),
                CancellationToken::new(),
                crate::events::telemetry(),
                None,
            );
            let sent = format!("auth {}\nm,sensor={sensor} v=1i 1\nsync {sync}\n", t.token);
            let talking = async move {
                let (read, mut write) = tokio::io::split(client);
                write.write_all(sent.as_bytes()).await.expect("pipe open");
                write.shutdown().await.expect("close");
                let mut lines = BufReader::new(read).lines();
                let mut got = Vec::new();
                while let Some(line) = lines.next_line().await.expect("read") {
                    got.push(line);
                }
                got
            };
            let ((), got) = tokio::join!(serving, talking);
            replies.push(got);
        }
        assert!(
            replies[0][1].starts_with("ack a readings=1 rejected=0"),
            "{replies:?}"
        );
        assert!(
            replies[1][1].starts_with("error 2 too many new series")
                && replies[1][1].contains("per-token"),
            "{replies:?}"
        );
        assert!(
            replies[1][2].starts_with("ack b readings=0 rejected=1"),
            "{replies:?}"
        );
        drop(handle);
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("flush");
    }

    /// A valid token: `ok auth <id>`, untagged readings stored under its sensor, others
    /// refused per line; the token is in no reply.
    #[tokio::test]
    async fn a_token_writes_its_own_sensor_only() {
        let t = tokens(&["k1"]);
        let store = crate::store::memory::MemoryStore::default();
        let reader = store.reader();
        let (handle, writer) =
            writer::spawn(Drive::Inline(Box::new(store)), WriterConfig::default());
        let recorder = crate::events::prometheus_builder().build_recorder();
        let telemetry = metrics::with_local_recorder(&recorder, Telemetry::register);
        let (client, server) = tokio::io::duplex(64 * 1024);
        let limits = limits(Some(t.authority.clone()));
        let serving = serve_counted(
            server,
            peer(),
            &limits,
            handle,
            CancellationToken::new(),
            &telemetry,
            None,
        );
        let sent = format!(
            "auth {}\nm v=1i 1\nm,sensor=k2 v=2i 2\nm,sensor=k1 v=3i 3\nsync a\n",
            t.token
        );
        let talking = async move {
            let (read, mut write) = tokio::io::split(client);
            write.write_all(sent.as_bytes()).await.expect("pipe open");
            let mut lines = BufReader::new(read).lines();
            let mut replies = Vec::new();
            for _ in 0..3 {
                replies.push(lines.next_line().await.expect("read").expect("a reply"));
            }
            write.shutdown().await.expect("close");
            assert_eq!(lines.next_line().await.expect("read"), None);
            replies
        };
        let ((), replies) = tokio::join!(serving, talking);
        assert_eq!(replies[0], format!("ok auth {}", t.id));
        assert_eq!(
            replies[1],
            format!(
                "error 3 token kitchen ({}) may not write sensor \"k2\"",
                t.id
            )
        );
        assert!(
            replies[2].starts_with("ack a readings=2 rejected=1"),
            "{replies:?}"
        );
        for reply in &replies {
            assert!(!reply.contains(&t.token), "token in a reply: {reply}");
        }
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("join")
            .expect("flush");
        let stored = reader.query(&Query::default()).await.expect("query");
        let sensors: Vec<&str> = stored.iter().map(|r| r.sensor.as_str()).collect();
        assert_eq!(sensors, ["k1", "k1"], "never the peer's address");
        let text = recorder.handle().render();
        for (series, value) in [
            ("sensorlink_auth_total{result=\"ok\"}", 1.0),
            (
                "sensorlink_lines_rejected_total{reason=\"not_permitted\"}",
                1.0,
            ),
            ("sensorlink_connections_closed_total{reason=\"eof\"}", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
        }
    }
}
