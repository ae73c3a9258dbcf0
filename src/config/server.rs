//! The server's settings (`[server]` in the file): the raw layer [`RawServer`] (flags,
//! environment, file), its merge and validation into [`ServerConfig`], and `--print-config`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::forms::{
    display_from_str, fsync_names, fsync_parser, http_address, http_auth_parser, human_duration,
    metrics_auth_parser, socket_address,
};
use super::{in_range, limits, printable_path, ConfigError, ConfigFile, HTTP_OFF};
use crate::auth::cidr::Cidr;
use crate::http::access::{Guard, HttpAccess, HttpAuth};
use crate::protocol::TimestampWindow;
use crate::server::proxy_protocol::ProxyProtocol;
use crate::server::quota::QuotaLimits;
use crate::server::{self, ServerConfig};
use crate::store::writer::WriterConfig;
use crate::store::{FsyncPolicy, StoreUrl};

/// Server settings as one source gives them: `None` means "not said here".
///
/// The same struct is the flag set (clap, with `env`) and the file's `[server]` table
/// (serde), so a setting has one name everywhere. No clap defaults: a default would hide
/// a value from the file. The defaults shown in `--help` are checked by a test.
#[derive(Debug, Default, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawServer {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed)
    /// [default: 0.0.0.0:8889].
    #[arg(long, env = "SENSORLINK_LISTEN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Address of the HTTP API, metrics and dashboard, or `off` (port 0 picks a free port;
    /// the chosen address is printed) [default: 127.0.0.1:9889].
    #[arg(long, env = "SENSORLINK_HTTP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Where readings go: `sqlite:PATH` (durable), `postgres://USER@HOST:PORT/DB` (one
    /// database for several collectors; the password from the URL or `PGPASSWORD`) or
    /// `memory` (tests, benchmarks) [default: sqlite:sensorlink.db].
    #[arg(long, env = "SENSORLINK_STORE")]
    #[serde(
        default,
        with = "display_from_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub store: Option<StoreUrl>,
    /// When a commit reaches the disk: `always` (fsync every commit: an acked reading
    /// survives a power cut) or `os` (the OS writes back later: survives a crash only)
    /// [default: always].
    #[arg(long, env = "SENSORLINK_FSYNC", value_parser = fsync_parser())]
    #[serde(default, with = "fsync_names", skip_serializing_if = "Option::is_none")]
    pub fsync: Option<FsyncPolicy>,
    /// Most connections at once; more are closed on arrival
    /// [default: what the open-file limit allows, at most 50000].
    #[arg(long, env = "SENSORLINK_MAX_CONNECTIONS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Most connections from one source address (IPv6: one /64) at once; more are closed
    /// on arrival [default: 64].
    #[arg(long, env = "SENSORLINK_MAX_CONNECTIONS_PER_IP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<usize>,
    /// New connections per second one source address may open, in bursts of twice that
    /// (or of its whole --max-connections-per-ip, if more); faster ones are closed on
    /// arrival [default: 20].
    #[arg(long, env = "SENSORLINK_CONNECT_RATE_PER_IP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_rate_per_ip: Option<u32>,
    /// Close a connection that has not sent a complete first line (or legacy message) this
    /// long after connecting [default: 10s].
    #[arg(long, env = "SENSORLINK_FIRST_LINE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_line_timeout: Option<Duration>,
    /// Close a connection that sends no complete line for this long; bytes alone do not
    /// count [default: 5m].
    #[arg(long, env = "SENSORLINK_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    /// Close a connection that does not read its replies for this long [default: 30s].
    #[arg(long, env = "SENSORLINK_WRITE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub write_timeout: Option<Duration>,
    /// Longest line accepted; longer lines are discarded and answered with an error
    /// [default: 65536].
    #[arg(long, env = "SENSORLINK_MAX_LINE_BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_line_bytes: Option<usize>,
    /// Most readings in one store transaction (group commit) [default: 20000].
    #[arg(long, env = "SENSORLINK_COMMIT_MAX_ROWS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_max_rows: Option<usize>,
    /// Extra wait for more readings before a small commit (0s = commit as soon as the store
    /// is free) [default: 0s].
    #[arg(long, env = "SENSORLINK_COMMIT_DELAY", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub commit_delay: Option<Duration>,
    /// Many connections each sending a reading now and then (an idle fleet): how long a
    /// transaction of their small batches keeps gathering while more keep coming, so they
    /// share one fsync (0s = off: less ack latency, more CPU) [default: 20ms].
    #[arg(long, env = "SENSORLINK_GROUP_WINDOW", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub group_window: Option<Duration>,
    /// A connected sensor with no stored reading for this long shows as `stale` in the
    /// live view (`/api/sensors`, dashboard) [default: 30s].
    #[arg(long, env = "SENSORLINK_STALE_AFTER", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub stale_after: Option<Duration>,
    /// Refuse readings stamped more than this ahead of the server's clock (readings before
    /// 1970 are always refused) [default: 1day].
    #[arg(long, env = "SENSORLINK_MAX_FUTURE_TIMESTAMP", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_future_timestamp: Option<Duration>,
    /// Serve the sensor port over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_TLS_CERT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_TLS_KEY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients presenting a certificate signed by this CA (PEM);
    /// needs --tls-cert.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_TLS_CLIENT_CA")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// How long a bare legacy `ping` waits for the rest of a reading before it is answered
    /// as a ping [default: 100ms]. Hidden: for tests on slow machines.
    #[arg(long, hide = true, env = "SENSORLINK_LEGACY_PING_QUIET", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub legacy_ping_quiet: Option<Duration>,
    /// Readings per second one connection may send, in bursts of one second's worth;
    /// more are refused with `error … rate limit exceeded` [default: 100000].
    #[arg(long, env = "SENSORLINK_MAX_RATE_PER_CONNECTION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate_per_connection: Option<u32>,
    /// Readings per second across every connection of one auth token [default: 100000].
    #[arg(long, env = "SENSORLINK_MAX_RATE_PER_TOKEN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate_per_token: Option<u32>,
    /// New series per minute one connection may create, in bursts of one minute's worth;
    /// readings of more are refused with `error … too many new series` [default: 1000].
    #[arg(long, env = "SENSORLINK_MAX_NEW_SERIES_PER_CONNECTION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_series_per_connection: Option<u32>,
    /// New series per minute across every connection of one auth token [default: 1000].
    #[arg(long, env = "SENSORLINK_MAX_NEW_SERIES_PER_TOKEN")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_series_per_token: Option<u32>,
    /// Series ids the SQLite writer keeps in memory (least recently used evicted; a miss
    /// costs one database lookup) [default: 100000].
    #[arg(long, env = "SENSORLINK_SERIES_CACHE_ENTRIES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_cache_entries: Option<usize>,
    /// PostgreSQL store only: drop readings older than this, a whole day partition at a
    /// time (checked at start and hourly), e.g. `30d` [default: keep everything].
    #[arg(long, env = "SENSORLINK_RETENTION", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub retention: Option<Duration>,
    /// PostgreSQL store only: transactions in flight at once (each on a connection of its
    /// own; reads use two more) [default: 4].
    #[arg(long, env = "SENSORLINK_PG_POOL_SIZE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_pool_size: Option<usize>,
    /// Require tokens: the tokens file (TOML, made by `sensorlink token new`), read at start
    /// and on SIGHUP. See SECURITY.md.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_AUTH")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PathBuf>,
    /// When the HTTP API (`/api/*`) asks for a read token (`Authorization: Bearer`):
    /// `auto` = whenever --http listens beyond loopback, `token` = always (needs --auth),
    /// `open` = never. `/healthz`, `/readyz` and the dashboard's page stay open
    /// [default: auto].
    #[arg(long, env = "SENSORLINK_HTTP_AUTH", value_name = "MODE", value_parser = http_auth_parser())]
    #[serde(
        default,
        with = "display_from_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_auth: Option<HttpAuth>,
    /// Whether `/metrics` asks for a read token: `open` or `token` (needs --auth)
    /// [default: token when the API asks for one, else open].
    #[arg(long, env = "SENSORLINK_METRICS_AUTH", value_name = "MODE", value_parser = metrics_auth_parser())]
    #[serde(
        default,
        with = "display_from_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics_auth: Option<Guard>,
    /// Serve the HTTP side beyond loopback without tokens when there is no --auth (instead
    /// of refusing to start); logged as a warning [default: false].
    #[arg(long, env = "SENSORLINK_HTTP_INSECURE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_insecure: Option<bool>,
    /// With --auth: legacy (seed) peers, which cannot send a token, may connect from these
    /// networks (CIDR, e.g. 10.0.0.0/8; repeat the flag or separate with commas); their
    /// readings stay keyed by their address. Others are closed [default: none].
    #[arg(
        long,
        value_name = "CIDR",
        env = "SENSORLINK_ALLOW_LEGACY",
        value_delimiter = ','
    )]
    #[serde(
        default,
        alias = "allow_legacy",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_legacy: Option<Vec<String>>,
    /// With --tls-cert: `off` keeps the HTTP side plain HTTP (e.g. behind a TLS proxy, or
    /// on loopback for a local scraper) instead of HTTPS with the same certificate
    /// [default: on].
    #[arg(long, env = "SENSORLINK_HTTP_TLS", value_name = "on|off",
          value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_tls: Option<bool>,
    /// Sample each connection's kernel TCP statistics (`TCP_INFO`: smoothed RTT,
    /// retransmits) at most this often, when it handles a batch, and once as it closes;
    /// shown per sensor in /api/sensors and in /metrics (0s = off) [default: 10s].
    #[arg(long, env = "SENSORLINK_TCP_INFO_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_info_interval: Option<Duration>,
    /// Answer UDP probes (`sensorlink probe`) on the sensor port's number (`on`/`true` or
    /// `off`/`false`) [default: true].
    #[arg(long, env = "SENSORLINK_UDP", value_name = "on|off",
          value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<bool>,
    /// UDP probes per second one source address (IPv6: one /64) gets answered, in bursts
    /// of one second's worth; more are dropped and counted [default: 2000].
    #[arg(long, env = "SENSORLINK_UDP_RATE_PER_IP")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_rate_per_ip: Option<u32>,
    /// `v2`: every sensor connection starts with a PROXY protocol v2 header (HAProxy
    /// `send-proxy-v2`), whose client address is then the connection's peer (sensor name,
    /// per-IP limits, logs); a connection without one is closed. UDP is unaffected
    /// [default: off].
    #[arg(long, env = "SENSORLINK_PROXY_PROTOCOL", value_name = "off|v2",
          value_parser = clap::builder::TypedValueParser::try_map(
              clap::builder::PossibleValuesParser::new(ProxyProtocol::ALL.map(|(_, name)| name)),
              |name| name.parse::<ProxyProtocol>()))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// With --proxy-protocol v2: the balancers whose PROXY headers are believed (CIDR or
    /// address, e.g. 10.0.0.5; repeat the flag or separate with commas). A connection from
    /// any other address is closed before a byte is read, and counted as refused
    /// (`reason="proxy_peer"`) [default: any peer, with a warning at start].
    #[arg(
        long,
        value_name = "CIDR",
        env = "SENSORLINK_PROXY_PROTOCOL_FROM",
        value_delimiter = ','
    )]
    #[serde(
        default,
        alias = "proxy_protocol_from",
        skip_serializing_if = "Option::is_none"
    )]
    pub proxy_protocol_from: Option<Vec<String>>,
}

impl RawServer {
    /// Each field from `self`, or from `lower` where `self` says nothing.
    pub fn or(self, lower: RawServer) -> RawServer {
        RawServer {
            listen: self.listen.or(lower.listen),
            http: self.http.or(lower.http),
            store: self.store.or(lower.store),
            fsync: self.fsync.or(lower.fsync),
            max_connections: self.max_connections.or(lower.max_connections),
            max_connections_per_ip: self.max_connections_per_ip.or(lower.max_connections_per_ip),
            connect_rate_per_ip: self.connect_rate_per_ip.or(lower.connect_rate_per_ip),
            first_line_timeout: self.first_line_timeout.or(lower.first_line_timeout),
            idle_timeout: self.idle_timeout.or(lower.idle_timeout),
            write_timeout: self.write_timeout.or(lower.write_timeout),
            max_line_bytes: self.max_line_bytes.or(lower.max_line_bytes),
            commit_max_rows: self.commit_max_rows.or(lower.commit_max_rows),
            commit_delay: self.commit_delay.or(lower.commit_delay),
            group_window: self.group_window.or(lower.group_window),
            stale_after: self.stale_after.or(lower.stale_after),
            max_future_timestamp: self.max_future_timestamp.or(lower.max_future_timestamp),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_client_ca: self.tls_client_ca.or(lower.tls_client_ca),
            legacy_ping_quiet: self.legacy_ping_quiet.or(lower.legacy_ping_quiet),
            max_rate_per_connection: self
                .max_rate_per_connection
                .or(lower.max_rate_per_connection),
            max_rate_per_token: self.max_rate_per_token.or(lower.max_rate_per_token),
            max_new_series_per_connection: self
                .max_new_series_per_connection
                .or(lower.max_new_series_per_connection),
            max_new_series_per_token: self
                .max_new_series_per_token
                .or(lower.max_new_series_per_token),
            series_cache_entries: self.series_cache_entries.or(lower.series_cache_entries),
            retention: self.retention.or(lower.retention),
            pg_pool_size: self.pg_pool_size.or(lower.pg_pool_size),
            auth: self.auth.or(lower.auth),
            allow_legacy: self.allow_legacy.or(lower.allow_legacy),
            proxy_protocol_from: self.proxy_protocol_from.or(lower.proxy_protocol_from),
            http_auth: self.http_auth.or(lower.http_auth),
            metrics_auth: self.metrics_auth.or(lower.metrics_auth),
            http_insecure: self.http_insecure.or(lower.http_insecure),
            http_tls: self.http_tls.or(lower.http_tls),
            tcp_info_interval: self.tcp_info_interval.or(lower.tcp_info_interval),
            udp: self.udp.or(lower.udp),
            udp_rate_per_ip: self.udp_rate_per_ip.or(lower.udp_rate_per_ip),
            proxy_protocol: self.proxy_protocol.or(lower.proxy_protocol),
        }
    }

    /// [`RawServer::validate_with`] without a known open-file limit.
    ///
    /// # Errors
    /// The first setting out of its accepted range.
    pub fn validate(self) -> Result<ServerConfig, ConfigError> {
        self.validate_with(None)
    }

    /// Validate into the server's settings; unset fields take their defaults. `nofile` is
    /// the open-file limit in force (read by the caller: validation touches nothing), which
    /// lowers the default `max-connections`.
    ///
    /// # Errors
    /// The first setting out of its accepted range.
    pub fn validate_with(self, nofile: Option<u64>) -> Result<ServerConfig, ConfigError> {
        let defaults = ServerConfig::default();
        let max_connections = match self.max_connections {
            Some(n) => in_range("max-connections", n, limits::MAX_CONNECTIONS)?,
            None => server::default_max_connections(nofile),
        };
        let tls = tls_files(self.tls_cert, self.tls_key, self.tls_client_ca)?;
        let allow_legacy = networks("allow-legacy", self.allow_legacy)?;
        let proxy_protocol = self.proxy_protocol.unwrap_or(defaults.proxy_protocol);
        let proxy_protocol_from = networks("proxy-protocol-from", self.proxy_protocol_from)?;
        if !proxy_protocol_from.is_empty() && proxy_protocol != ProxyProtocol::V2 {
            return Err(ConfigError::Invalid {
                setting: "proxy-protocol-from",
                value: proxy_protocol_from
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                accepted: "only with proxy-protocol v2 (without it no PROXY header is read)".into(),
            });
        }
        let config = ServerConfig {
            tls,
            auth: self.auth,
            http_auth: self.http_auth.unwrap_or(defaults.http_auth),
            metrics_auth: self.metrics_auth.or(defaults.metrics_auth),
            http_insecure: self.http_insecure.unwrap_or(defaults.http_insecure),
            allow_legacy,
            http_tls: self.http_tls.unwrap_or(defaults.http_tls),
            listen: match self.listen {
                Some(listen) => socket_address("listen", listen)?,
                None => defaults.listen,
            },
            http: match self.http {
                Some(http) => http_address(http)?,
                None => defaults.http,
            },
            store: self.store.unwrap_or(defaults.store),
            fsync: self.fsync.unwrap_or(defaults.fsync),
            max_connections,
            max_connections_per_ip: in_range(
                "max-connections-per-ip",
                self.max_connections_per_ip
                    .unwrap_or(defaults.max_connections_per_ip),
                limits::MAX_CONNECTIONS,
            )?,
            connect_rate_per_ip: in_range(
                "connect-rate-per-ip",
                self.connect_rate_per_ip
                    .unwrap_or(defaults.connect_rate_per_ip),
                limits::CONNECT_RATE_PER_IP,
            )?,
            first_line_timeout: in_range(
                "first-line-timeout",
                self.first_line_timeout
                    .unwrap_or(defaults.first_line_timeout),
                limits::TIMEOUT,
            )?,
            idle_timeout: in_range(
                "idle-timeout",
                self.idle_timeout.unwrap_or(defaults.idle_timeout),
                limits::TIMEOUT,
            )?,
            write_timeout: in_range(
                "write-timeout",
                self.write_timeout.unwrap_or(defaults.write_timeout),
                limits::TIMEOUT,
            )?,
            max_line_bytes: in_range(
                "max-line-bytes",
                self.max_line_bytes.unwrap_or(defaults.max_line_bytes),
                limits::MAX_LINE_BYTES,
            )?,
            writer: WriterConfig {
                max_batch_rows: in_range(
                    "commit-max-rows",
                    self.commit_max_rows
                        .unwrap_or(defaults.writer.max_batch_rows),
                    limits::COMMIT_MAX_ROWS,
                )?,
                commit_delay: in_range(
                    "commit-delay",
                    self.commit_delay.unwrap_or(defaults.writer.commit_delay),
                    limits::COMMIT_DELAY,
                )?,
                group_window: in_range(
                    "group-window",
                    self.group_window.unwrap_or(defaults.writer.group_window),
                    limits::COMMIT_DELAY,
                )?,
                ..defaults.writer
            },
            stale_after: in_range(
                "stale-after",
                self.stale_after.unwrap_or(defaults.stale_after),
                limits::TIMEOUT,
            )?,
            timestamps: TimestampWindow {
                max_future: in_range(
                    "max-future-timestamp",
                    self.max_future_timestamp
                        .unwrap_or(defaults.timestamps.max_future),
                    limits::MAX_FUTURE_TIMESTAMP,
                )?,
            },
            legacy_ping_quiet: in_range(
                "legacy-ping-quiet",
                self.legacy_ping_quiet.unwrap_or(defaults.legacy_ping_quiet),
                limits::TIMEOUT,
            )?,
            quotas: QuotaLimits {
                rate_per_connection: in_range(
                    "max-rate-per-connection",
                    self.max_rate_per_connection
                        .unwrap_or(defaults.quotas.rate_per_connection),
                    limits::QUOTA,
                )?,
                rate_per_token: in_range(
                    "max-rate-per-token",
                    self.max_rate_per_token
                        .unwrap_or(defaults.quotas.rate_per_token),
                    limits::QUOTA,
                )?,
                new_series_per_connection: in_range(
                    "max-new-series-per-connection",
                    self.max_new_series_per_connection
                        .unwrap_or(defaults.quotas.new_series_per_connection),
                    limits::QUOTA,
                )?,
                new_series_per_token: in_range(
                    "max-new-series-per-token",
                    self.max_new_series_per_token
                        .unwrap_or(defaults.quotas.new_series_per_token),
                    limits::QUOTA,
                )?,
                ..defaults.quotas
            },
            series_cache_entries: in_range(
                "series-cache-entries",
                self.series_cache_entries
                    .unwrap_or(defaults.series_cache_entries),
                limits::SERIES_CACHE_ENTRIES,
            )?,
            tcp_info_interval: in_range(
                "tcp-info-interval",
                self.tcp_info_interval.unwrap_or(defaults.tcp_info_interval),
                limits::TCP_INFO_INTERVAL,
            )?,
            udp: self.udp.unwrap_or(defaults.udp),
            udp_rate_per_ip: in_range(
                "udp-rate-per-ip",
                self.udp_rate_per_ip.unwrap_or(defaults.udp_rate_per_ip),
                limits::QUOTA,
            )?,
            proxy_protocol,
            proxy_protocol_from,
            retention: self
                .retention
                .map(|retention| in_range("retention", retention, limits::RETENTION))
                .transpose()?,
            pg_pool_size: in_range(
                "pg-pool-size",
                self.pg_pool_size.unwrap_or(defaults.pg_pool_size),
                limits::PG_POOL_SIZE,
            )?,
            ..defaults
        };
        // Only the PostgreSQL store keeps its readings in partitions it can drop whole.
        if let (Some(retention), false) = (
            config.retention,
            matches!(config.store, StoreUrl::Postgres(_)),
        ) {
            return Err(ConfigError::Invalid {
                setting: "retention",
                value: humantime::format_duration(retention).to_string(),
                accepted: format!(
                    "only with a PostgreSQL store (--store postgres://…), not {}",
                    config.store
                ),
            });
        }
        // A server that would serve its API to the network without tokens does not start.
        HttpAccess::resolve(&config)?;
        Ok(config)
    }

    /// The raw layer that says exactly `config`: what `--print-config` prints.
    pub fn from_config(config: &ServerConfig) -> RawServer {
        RawServer {
            listen: Some(config.listen.clone()),
            http: Some(config.http.clone().unwrap_or_else(|| HTTP_OFF.into())),
            store: Some(config.store.clone()),
            fsync: Some(config.fsync),
            max_connections: Some(config.max_connections),
            max_connections_per_ip: Some(config.max_connections_per_ip),
            connect_rate_per_ip: Some(config.connect_rate_per_ip),
            first_line_timeout: Some(config.first_line_timeout),
            idle_timeout: Some(config.idle_timeout),
            write_timeout: Some(config.write_timeout),
            max_line_bytes: Some(config.max_line_bytes),
            commit_max_rows: Some(config.writer.max_batch_rows),
            commit_delay: Some(config.writer.commit_delay),
            group_window: Some(config.writer.group_window),
            stale_after: Some(config.stale_after),
            max_future_timestamp: Some(config.timestamps.max_future),
            tls_cert: config.tls.as_ref().map(|tls| tls.cert.clone()),
            tls_key: config.tls.as_ref().map(|tls| tls.key.clone()),
            tls_client_ca: config.tls.as_ref().and_then(|tls| tls.client_ca.clone()),
            // Hidden: printed only when it is not the default.
            legacy_ping_quiet: Some(config.legacy_ping_quiet)
                .filter(|quiet| *quiet != crate::protocol::legacy::LEGACY_PING_QUIET),
            max_rate_per_connection: Some(config.quotas.rate_per_connection),
            max_rate_per_token: Some(config.quotas.rate_per_token),
            max_new_series_per_connection: Some(config.quotas.new_series_per_connection),
            max_new_series_per_token: Some(config.quotas.new_series_per_token),
            series_cache_entries: Some(config.series_cache_entries),
            retention: config.retention,
            pg_pool_size: matches!(config.store, StoreUrl::Postgres(_))
                .then_some(config.pg_pool_size),
            auth: config.auth.clone(),
            allow_legacy: Some(
                config
                    .allow_legacy
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            ),
            http_auth: Some(config.http_auth),
            // Unset stays unset: it follows the API's rule wherever the file is used
            // (`print_server` says in a comment what that is now).
            metrics_auth: config.metrics_auth,
            http_insecure: Some(config.http_insecure),
            // Only meaningful with TLS on.
            http_tls: config.tls.as_ref().map(|_| config.http_tls),
            tcp_info_interval: Some(config.tcp_info_interval),
            udp: Some(config.udp),
            udp_rate_per_ip: Some(config.udp_rate_per_ip),
            proxy_protocol: Some(config.proxy_protocol),
            // Only meaningful with PROXY v2; empty (any peer) is left out.
            proxy_protocol_from: (!config.proxy_protocol_from.is_empty()).then(|| {
                config
                    .proxy_protocol_from
                    .iter()
                    .map(ToString::to_string)
                    .collect()
            }),
        }
    }
}

/// A list of networks in CIDR notation (or single addresses), as `setting` gives them.
fn networks(setting: &'static str, nets: Option<Vec<String>>) -> Result<Vec<Cidr>, ConfigError> {
    nets.unwrap_or_default()
        .into_iter()
        .map(|net| {
            net.trim().parse().map_err(|why| ConfigError::Invalid {
                setting,
                value: net.clone(),
                accepted: format!("networks in CIDR notation ({why})"),
            })
        })
        .collect()
}

/// The server's TLS files: certificate and key together or neither; a client CA only
/// with them. Read when the server starts, not here (validation touches nothing).
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<server::TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(server::TlsFiles {
            cert,
            key,
            client_ca,
        })),
        (None, None) => match client_ca {
            None => Ok(None),
            Some(ca) => Err(ConfigError::Invalid {
                setting: "tls-client-ca",
                value: ca.display().to_string(),
                accepted: "only with --tls-cert and --tls-key".into(),
            }),
        },
        (Some(path), None) | (None, Some(path)) => Err(ConfigError::Invalid {
            setting: "tls-cert/tls-key",
            value: path.display().to_string(),
            accepted: "--tls-cert and --tls-key together".into(),
        }),
    }
}

/// The server's settings from `flags` (which clap already filled from the environment)
/// over the `[server]` table of `file`; `nofile` as in [`RawServer::validate_with`].
///
/// # Errors
/// The file cannot be used, or a setting is out of range.
pub fn server_config(
    flags: RawServer,
    file: Option<&Path>,
    nofile: Option<u64>,
) -> Result<ServerConfig, ConfigError> {
    let from_file = match file {
        Some(path) => ConfigFile::load(path)?.server.unwrap_or_default(),
        None => RawServer::default(),
    };
    flags.or(from_file).validate_with(nofile)
}

/// `server --print-config`: the effective settings as a valid `--config` file.
///
/// # Errors
/// The store's path is not UTF-8: a TOML file cannot name it.
pub fn print_server(config: &ServerConfig) -> Result<String, ConfigError> {
    if let StoreUrl::Sqlite(path) = &config.store {
        printable_path("store", path)?;
    }
    if let Some(tls) = &config.tls {
        printable_path("tls-cert", &tls.cert)?;
        printable_path("tls-key", &tls.key)?;
        if let Some(ca) = &tls.client_ca {
            printable_path("tls-client-ca", ca)?;
        }
    }
    let file = ConfigFile {
        server: Some(RawServer::from_config(config)),
        ..ConfigFile::default()
    };
    let mut text = format!(
        "# sensorlink server: effective settings (defaults < file < environment < flags)\n{}",
        file.to_toml()?
    );
    if config.metrics_auth.is_none() {
        if let Ok(access) = HttpAccess::resolve(config) {
            text.push_str(&format!(
                "# metrics-auth is not set: /metrics follows the API (now: {})\n",
                access.metrics
            ));
        }
    }
    Ok(text)
}
