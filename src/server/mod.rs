//! `sensorlink server`: accept connections, hand their readings to the store, answer.
//!
//! [`listener`] accepts and enforces the connection limit, [`connection`] runs one peer
//! over any [`stream::PeerStream`] (TCP, or TLS after [`tls`]'s handshake), [`shutdown`] turns
//! signals into a cancellation, [`reload`] runs the SIGHUP reloads (TLS files; other parts
//! register theirs), [`logging`] keeps per-reading logs from bounding throughput.
//! `auth` (private) is one connection's `--auth` state; [`reload_auth`] re-reads the tokens
//! (registered with [`reload`] as `what="auth"`).

mod auth;
pub mod connection;
pub(crate) mod give_way;
pub mod known_series;
pub mod listener;
pub mod logging;
mod pending;
pub mod per_ip;
pub mod proxy_protocol;
pub mod quota;
pub mod reload;
pub mod shutdown;
mod spare;
pub mod stream;
pub mod tcp_sample;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{reload_auth, MAX_AUTH_STRIKES};

use crate::auth::cidr::Cidr;
use crate::auth::Authority;
use crate::protocol::TimestampWindow;
use crate::store::writer::{self, WriterConfig};
use crate::store::{self, FsyncPolicy, StoreUrl};

/// Validated server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: String,
    /// Where the HTTP side (API, `/metrics`, dashboard) listens; `None`: not served.
    pub http: Option<String>,
    pub store: StoreUrl,
    pub fsync: FsyncPolicy,
    /// Most connections served at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// Most connections one source address (IPv6: one /64) holds at once.
    pub max_connections_per_ip: usize,
    /// New connections per second one source address may open (bucket: see
    /// [`per_ip::PerIpLimits::burst`]).
    pub connect_rate_per_ip: u32,
    /// A connection that has not sent a complete first line (or legacy message) this long
    /// after accept is closed: a peer must show it speaks before it holds a slot.
    pub first_line_timeout: Duration,
    /// A connection with no complete line received and nothing pending for this long is closed.
    pub idle_timeout: Duration,
    /// A peer that does not take our replies for this long is disconnected.
    pub write_timeout: Duration,
    pub max_line_bytes: usize,
    /// Batches one connection may have waiting for the store before it stops reading.
    pub max_inflight_batches: usize,
    pub writer: WriterConfig,
    /// A connected sensor with no stored reading for this long is `stale` (live view).
    pub stale_after: Duration,
    /// Reading timestamps accepted (others are refused with `error`).
    pub timestamps: TimestampWindow,
    /// Serve the sensor port over TLS; `None`: plain TCP.
    pub tls: Option<TlsFiles>,
    /// See [`Limits::legacy_ping_quiet`] (a hidden setting: tests lengthen it).
    pub legacy_ping_quiet: Duration,
    /// Rates and new-series caps per connection and per token.
    pub quotas: quota::QuotaLimits,
    /// Series ids the SQLite store keeps in memory (least recently used evicted).
    pub series_cache_entries: usize,
    /// Drop readings older than this (`--retention`; PostgreSQL only).
    pub retention: Option<Duration>,
    /// Transactions in flight on a PostgreSQL store (`--pg-pool-size`).
    pub pg_pool_size: usize,
    /// The tokens file (`--auth`); `None`: no authentication.
    pub auth: Option<PathBuf>,
    /// With `--auth`: networks whose legacy (seed) peers may still connect (they cannot
    /// present a token; the network is their credential). Ignored without `--auth`.
    pub allow_legacy: Vec<Cidr>,
    /// `--http-auth`: when `/api/*` asks for a read token (see [`crate::http::access`]).
    pub http_auth: crate::http::access::HttpAuth,
    /// `--metrics-auth`; `None`: as the API.
    pub metrics_auth: Option<crate::http::access::Guard>,
    /// `--http-insecure`: serve beyond loopback without tokens rather than refuse to start.
    pub http_insecure: bool,
    /// With [`ServerConfig::tls`]: serve the HTTP side over HTTPS with the same
    /// certificate (`--http-tls`, default on); off keeps it plain HTTP.
    pub http_tls: bool,
    /// Least time between two `TCP_INFO` samples of a connection ([`tcp_sample`]); zero:
    /// off.
    pub tcp_info_interval: Duration,
    /// Answer UDP probes on the sensor port's number (`--udp`, default on).
    pub udp: bool,
    /// UDP probes per second answered per source address (`--udp-rate-per-ip`).
    pub udp_rate_per_ip: u32,
    /// `--proxy-protocol v2`: every sensor connection opens with a PROXY v2 header
    /// (from a balancer), whose source address becomes the connection's peer.
    pub proxy_protocol: proxy_protocol::ProxyProtocol,
    /// With PROXY v2: the balancers whose headers are believed (`--proxy-protocol-from`);
    /// empty: any peer.
    pub proxy_protocol_from: Vec<Cidr>,
}

/// The PEM files the sensor port's TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: format!("0.0.0.0:{}", crate::DEFAULT_PORT),
            http: Some(crate::http::DEFAULT_ADDR.into()),
            store: StoreUrl::Sqlite("sensorlink.db".into()),
            fsync: FsyncPolicy::Always,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: per_ip::DEFAULT_MAX_CONNECTIONS_PER_IP,
            connect_rate_per_ip: per_ip::DEFAULT_CONNECT_RATE_PER_IP,
            first_line_timeout: DEFAULT_FIRST_LINE_TIMEOUT,
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(30),
            max_line_bytes: crate::protocol::DEFAULT_MAX_LINE_BYTES,
            max_inflight_batches: 16,
            writer: WriterConfig::default(),
            stale_after: crate::live::DEFAULT_STALE_AFTER,
            timestamps: TimestampWindow::default(),
            tls: None,
            legacy_ping_quiet: crate::protocol::legacy::LEGACY_PING_QUIET,
            quotas: quota::QuotaLimits::default(),
            series_cache_entries: store::DEFAULT_SERIES_CACHE_ENTRIES,
            retention: None,
            pg_pool_size: store::postgres::DEFAULT_POOL_SIZE,
            auth: None,
            allow_legacy: Vec::new(),
            http_auth: crate::http::access::HttpAuth::Auto,
            metrics_auth: None,
            http_insecure: false,
            http_tls: true,
            tcp_info_interval: tcp_sample::DEFAULT_TCP_INFO_INTERVAL,
            udp: true,
            udp_rate_per_ip: crate::probe::reflector::DEFAULT_RATE_PER_IP,
            proxy_protocol: proxy_protocol::ProxyProtocol::Off,
            proxy_protocol_from: Vec::new(),
        }
    }
}

/// Default `--first-line-timeout`.
pub const DEFAULT_FIRST_LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The per-connection limits, taken once from the server's config.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Until the first complete line: the idle timeout, if shorter, still applies.
    pub first_line_timeout: Duration,
    /// Restarted by each complete line (or legacy message), never by bytes alone.
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub max_line_bytes: usize,
    pub max_inflight_batches: usize,
    pub timestamps: TimestampWindow,
    /// How long a bare legacy `ping` is held for the rest of a reading that may follow it
    /// before it is answered as a ping.
    pub legacy_ping_quiet: Duration,
    /// Serve over TLS: set by [`run_with_store`] from [`ServerConfig::tls`] (files are read
    /// when the server starts), `None` from `From<&ServerConfig>`.
    pub tls: Option<tls::TlsSettings>,
    /// Shared by every connection of the server (per-token buckets, known series).
    pub quotas: Arc<quota::Quotas>,
    /// The tokens in force (`--auth`): set by [`run_with_store`], `None` from
    /// `From<&ServerConfig>` and when auth is off.
    pub auth: Option<Arc<Authority>>,
    /// With [`Limits::auth`]: where legacy peers may connect from ([`ServerConfig::allow_legacy`]).
    pub allow_legacy: Vec<Cidr>,
    /// [`ServerConfig::tcp_info_interval`].
    pub tcp_info_interval: Duration,
}

impl From<&ServerConfig> for Limits {
    fn from(config: &ServerConfig) -> Self {
        Limits {
            first_line_timeout: config.first_line_timeout,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            max_line_bytes: config.max_line_bytes,
            max_inflight_batches: config.max_inflight_batches.max(1),
            timestamps: config.timestamps,
            legacy_ping_quiet: config.legacy_ping_quiet,
            tls: None,
            quotas: quota::Quotas::new(config.quotas),
            auth: None,
            allow_legacy: config.allow_legacy.clone(),
            tcp_info_interval: config.tcp_info_interval,
        }
    }
}

impl Limits {
    /// How long a new connection has for its first complete line (or legacy message),
    /// TLS handshake included: the first-line timeout, or the idle timeout if shorter.
    pub fn first_wait(&self) -> Duration {
        self.first_line_timeout.min(self.idle_timeout)
    }
}

/// Run the server until `shutdown` is cancelled, then drain and flush the store.
///
/// Prints `http on http://<addr>/` (`https://` with TLS; nothing with `--http off`),
/// then `listening on <addr>` on stdout once bound (port 0 gets its real port).
pub async fn run(config: ServerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = open_store_until(&config, Some(shutdown.clone())).await?;
    run_with_store(config, store, shutdown).await
}

/// Open (create, migrate) the configured store. Its `reader` is what the server's read
/// side (e.g. an HTTP API) serves; clone it before handing the store to
/// [`run_with_store`].
pub async fn open_store(config: &ServerConfig) -> anyhow::Result<store::OpenStore> {
    open_store_until(config, None).await
}

/// [`open_store`], told when the server's shutdown begins (a PostgreSQL store then stops
/// waiting for a database that is away after a bounded time, so connections can close).
async fn open_store_until(
    config: &ServerConfig,
    shutdown: Option<CancellationToken>,
) -> anyhow::Result<store::OpenStore> {
    let options = store::StoreOptions {
        fsync: config.fsync,
        series_cache_entries: config.series_cache_entries,
        pg_pool_size: config.pg_pool_size,
        retention: config.retention,
        writer: config.writer.clone(),
        shutdown,
    };
    store::open_async(&config.store, &options)
        .await
        .with_context(|| format!("opening store {}", config.store))
}

/// [`run`] on a store opened by [`open_store`].
pub async fn run_with_store(
    config: ServerConfig,
    store: store::OpenStore,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Before any connection registers its metric handles.
    match crate::events::install_prometheus() {
        Ok(handle) => spawn_metrics_upkeep(handle, shutdown.clone()),
        Err(err) => tracing::warn!(cause = %err, "metrics are not exported"),
    }
    // The read side is cloned before the writer takes the store.
    let reader = store.reader.clone();

    // Before binding: a certificate that cannot be used fails the start, not each peer.
    let tls = config
        .tls
        .as_ref()
        .map(tls::TlsSettings::from_files)
        .transpose()?;
    // Checked at validation too; again here for a config built in code.
    let access = crate::http::HttpAccess::resolve(&config)?;
    if config.http.is_some() && access.exposed {
        tracing::warn!(
            http = config.http.as_deref().unwrap_or_default(),
            api = %access.api,
            metrics = %access.metrics,
            "the HTTP side listens beyond loopback without tokens (--http-insecure or --http-auth open): anyone who reaches it can read every reading"
        );
    }
    let auth = match &config.auth {
        Some(path) => {
            let authority = Authority::load(path)?;
            tracing::info!(file = %path.display(), tokens = authority.active(), allow_legacy = ?config.allow_legacy.iter().map(ToString::to_string).collect::<Vec<_>>(), "token authentication on");
            Some(Arc::new(authority))
        }
        None => None,
    };
    // What SIGHUP re-reads. Each part that can be reloaded registers itself here
    // (`ReloadWhat::Auth`: the tokens file).
    let mut reloads = reload::Reloads::new();
    if let Some(tls) = &tls {
        let tls = tls.tls.clone();
        reloads.register(crate::events::ReloadWhat::Tls, move || {
            tls.reload().map_err(|err| format!("{err:#}"))
        });
    }
    if let Some(authority) = &auth {
        let authority = Arc::clone(authority);
        reloads.register(crate::events::ReloadWhat::Auth, move || {
            reload_auth(&authority)
        });
    }
    check_open_files(config.max_connections);
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local: SocketAddr = listener.local_addr().context("reading the bound address")?;
    // The same port number over UDP (port 0 took the TCP one's), up before `listening on`.
    if config.udp {
        let socket = crate::probe::reflector::bind(local).await?;
        tracing::info!(
            addr = %local,
            rate_per_ip = config.udp_rate_per_ip,
            auth = auth.is_some(),
            "answering udp probes"
        );
        let reflector =
            crate::probe::reflector::Reflector::new(config.udp_rate_per_ip, auth.clone());
        tokio::spawn(crate::probe::reflector::serve(
            socket,
            reflector,
            shutdown.clone(),
        ));
    }
    // Bound before `listening on`, which tells scripts that everything is up.
    // The live view exists only to be served: with `--http off` nothing feeds it.
    // HTTP outlives the sensor port's shutdown: `/readyz` says "shutting down" and
    // `/metrics` stays scrapable while the connections drain; it stops once they have
    // (or, through the guard, when this function returns early).
    let http_stop = CancellationToken::new();
    let _http_stop_guard = http_stop.clone().drop_guard();
    // The HTTP side serves HTTPS with the sensor port's (reloadable) certificate.
    let https = tls
        .as_ref()
        .filter(|_| config.http_tls)
        .map(|tls| tls.tls.clone());
    let (http, live) = match &config.http {
        Some(addr) => {
            let mut state = crate::http::AppState::new(reader, &config, shutdown.clone());
            state.auth = auth.clone();
            state.access = access;
            let live = state.live.clone();
            live.spawn_sweeper(shutdown.clone());
            (
                Some(start_http(addr, state, https, http_stop.clone()).await?),
                Some(live),
            )
        }
        None => (None, None),
    };
    // Started once both ports are bound: a bind failure leaves no writer thread behind.
    let (handle, store_writer) = writer::spawn(store.drive, config.writer.clone());
    start_reloads(reloads, &shutdown);
    announce(local);
    tracing::info!(addr = %local, store = %config.store, fsync = ?config.fsync, tls = config.tls.is_some(), proxy_protocol = %config.proxy_protocol, "listening");
    if config.proxy_protocol == proxy_protocol::ProxyProtocol::V2 {
        if config.proxy_protocol_from.is_empty() {
            tracing::warn!("--proxy-protocol v2 believes a PROXY header from any peer: anyone who reaches this port can claim any source address; name the balancers with --proxy-protocol-from, or firewall the port (docs/scaling.md)");
        } else {
            tracing::info!(from = ?config.proxy_protocol_from.iter().map(ToString::to_string).collect::<Vec<_>>(), "PROXY headers believed only from these peers");
        }
    }

    logging::spawn_summary(shutdown.clone());
    let limits = Arc::new(connection::Limits {
        tls,
        auth,
        ..connection::Limits::from(&config)
    });
    listener::accept_loop(listener, &config, limits, handle, live, shutdown).await;

    tracing::info!("connections finished; committing the last readings");
    http_stop.cancel();
    let flushed = tokio::task::spawn_blocking(move || store_writer.finish());
    if let Some(http) = http {
        stop_http(http).await;
    }
    flushed
        .await
        .context("store writer task")?
        .context("closing the store")?;
    tracing::info!("store flushed; bye");
    Ok(())
}

/// Run `reloads` on SIGHUP (Unix); elsewhere there is no SIGHUP and nothing is reloaded.
fn start_reloads(reloads: reload::Reloads, shutdown: &CancellationToken) {
    #[cfg(unix)]
    if let Err(err) = reload::spawn_on_sighup(reloads, shutdown.clone()) {
        tracing::warn!(cause = %err, "cannot watch SIGHUP; nothing will be reloaded");
    }
    #[cfg(not(unix))]
    let _ = (reloads, shutdown);
}

/// How long the HTTP side may take, once shutdown began, to finish its requests.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Bind the HTTP side on `addr`, print `http on http://ADDR/` (`https://` with `tls`),
/// and serve it in a task until `stop`.
async fn start_http(
    addr: &str,
    state: crate::http::AppState,
    tls: Option<Arc<crate::tls::ServerTls>>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP address {addr} (--http)"))?;
    let local = listener
        .local_addr()
        .context("reading the bound HTTP address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    print_line(&format!("http on {scheme}://{local}/"));
    tracing::info!(addr = %local, scheme, "http listening");
    Ok(tokio::spawn(crate::http::serve_with_tls(
        listener, state, tls, stop,
    )))
}

/// Wait (bounded) for the HTTP side's graceful shutdown; a request that does not finish
/// in time is cut off rather than holding the server up.
async fn stop_http(mut task: tokio::task::JoinHandle<std::io::Result<()>>) {
    match tokio::time::timeout(HTTP_DRAIN_TIMEOUT, &mut task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => tracing::error!(cause = %err, "http server failed"),
        Ok(Err(err)) => tracing::error!(cause = %err, "http server task failed"),
        Err(_) => {
            tracing::warn!(
                timeout_s = HTTP_DRAIN_TIMEOUT.as_secs(),
                "http requests still running at shutdown; closing them"
            );
            task.abort();
        }
    }
}

/// How often the exporter drains its histogram samples into buckets. Samples wait as 8
/// bytes each (in blocks of 64) until then, and an idle fleet records about three per
/// reading (commit time, commit rows, ack latency): at 10 000 readings/s, 5 s of them were
/// ≈ 1.2 MiB, ≈ 0.12 KiB per connection of a 10 000 connection fleet held by the allocator
/// (issue 13); 1 s holds a fifth of that, for one walk of the histograms a second.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Histogram samples pile up in the recorder until rendered; with nobody scraping
/// `/metrics` (or `--http off`), upkeep bounds that memory.
fn spawn_metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    });
}

/// File descriptors kept for the listeners, the store, logs and spare accepts, and for
/// the HTTP side's connections (at most [`crate::http::MAX_HTTP_CONNECTIONS`]).
const RESERVED_FDS: u64 = 64 + crate::http::MAX_HTTP_CONNECTIONS as u64;

/// The default `--max-connections` where the open-file limit allows it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 50_000;

/// Raise the soft open-file limit to the hard one (each connection is a descriptor) and
/// return the limit in force; `None` if it cannot be read.
///
/// A process-wide change, so the binary does it once (`cli::run`, server command) before
/// the settings are validated; a program embedding [`run`] decides for itself.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(err) => {
            tracing::debug!(cause = %err, "cannot raise the open-file limit");
            open_file_limit()
        }
    }
}

/// Ask the kernel for no transparent huge pages in this process (`PR_SET_THP_DISABLE`);
/// whether it took.
///
/// mimalloc marks its arenas `MADV_HUGEPAGE`, so wherever THP is `madvise` (or `always`)
/// each 2 MiB of heap the server touches is resident whole: nearly all of an idle fleet's
/// heap was huge pages, RSS went up in 2 MiB steps (0.2 KiB per connection each at 10 000),
/// and `bench/capacity.sh` measured 2.52 KiB per idle connection (memory store; SQLite
/// 2.39) against 1.89 KiB (SQLite 2.06) in 4 KiB pages (issue 13). Pipelined ingest
/// measured the same either way, within this machine's noise. A process-wide change, made
/// (like [`raise_open_file_limit`]) by the binary's server command.
pub fn decline_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `PR_SET_THP_DISABLE` takes an integer flag and reads no memory of ours;
        // the unused arguments must be zero.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc == 0 {
            return true;
        }
        tracing::debug!(
            cause = %std::io::Error::last_os_error(),
            "cannot turn transparent huge pages off"
        );
    }
    false
}

/// The soft open-file limit in force; `None` if it cannot be read.
fn open_file_limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

/// Connections that fit under an open-file limit of `limit` descriptors.
fn connections_within(limit: u64) -> usize {
    usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX)
}

/// [`DEFAULT_MAX_CONNECTIONS`], lowered to what an open-file limit of `nofile` allows (when
/// known), so that a server started without `--max-connections` can accept every one it
/// admits. Pure: the caller reads (and raises) the limit.
pub fn default_max_connections(nofile: Option<u64>) -> usize {
    match nofile {
        Some(limit) => DEFAULT_MAX_CONNECTIONS.min(connections_within(limit).max(1)),
        None => DEFAULT_MAX_CONNECTIONS,
    }
}

/// Warn when `max_connections` cannot be reached under the open-file limit in force.
fn check_open_files(max_connections: usize) {
    let Some(limit) = open_file_limit() else {
        tracing::warn!("cannot read the open-file limit");
        return;
    };
    let usable = connections_within(limit);
    if max_connections > usable {
        tracing::warn!(
            max_connections,
            open_files_limit = limit,
            "--max-connections is above the open-file limit: connections beyond about {usable} will fail to be accepted"
        );
    } else {
        tracing::debug!(open_files_limit = limit, "open-file limit");
    }
}

/// The one stdout line scripts and tests wait for (printed last: the server is ready).
fn announce(addr: SocketAddr) {
    print_line(&format!("listening on {addr}"));
}

/// One line on stdout, flushed at once (a pipe would otherwise hold it).
fn print_line(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default leaves [`RESERVED_FDS`] descriptors spare and never exceeds the default.
    #[test]
    fn default_max_connections_fits_the_open_file_limit() {
        assert_eq!(default_max_connections(Some(1024)), 704);
        assert_eq!(default_max_connections(Some(20_000)), 19_680);
        assert_eq!(
            default_max_connections(Some(1 << 20)),
            DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(
            default_max_connections(Some(10)),
            1,
            "at least one connection"
        );
        assert_eq!(default_max_connections(None), DEFAULT_MAX_CONNECTIONS);
    }

    /// The server's heap is in 4 KiB pages once it declines huge pages (issue 13: with
    /// them, RSS per idle connection went up in 2 MiB steps).
    #[cfg(target_os = "linux")]
    #[test]
    fn declined_huge_pages_stay_declined() {
        assert!(decline_huge_pages(), "PR_SET_THP_DISABLE refused");
        // SAFETY: `PR_GET_THP_DISABLE` reads no memory of ours; it returns the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
