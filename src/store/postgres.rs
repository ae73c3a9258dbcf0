//! PostgreSQL store: several collectors can write one database, each reading stored once.
//!
//! Layout (schema v1, `postgres/schema.rs`; every name starts with `sensorlink_` so the
//! store can share a database the user already operates):
//! - `sensorlink_series`: one row per series (the stored series key of
//!   [`super::encoding`], measurement, sensor, tags), unique by the SHA-256 of the key (a
//!   B-tree entry cannot hold a 64 KiB key), with its folded totals (readings, first and
//!   last timestamp).
//! - `sensorlink_readings`: partitioned by range of the ns timestamp, one partition per UTC
//!   day, `PRIMARY KEY (series_id, ts)`: the exactly-once identity, enforced by the
//!   database, so two collectors (or two commits in flight) storing the same reading store
//!   it once. Partitions are created ahead (today + 2 days, at open and hourly) and on
//!   demand for days within [`ON_DEMAND_PAST_DAYS`] before and
//!   [`ON_DEMAND_FUTURE_DAYS`] after today; readings further out (a sensor with a
//!   wrong clock) go to one catch-all `DEFAULT` partition, so no sensor can make the
//!   store create thousands of tables. `--retention` drops whole day partitions.
//! - `sensorlink_totals_delta`: each commit appends its inserted rows per series (no row
//!   lock shared between commits); a background fold moves them into the series rows once
//!   a second. Counts, stats and latest read series rows + deltas: O(series), exact right
//!   after a commit, never a scan of the readings.
//!
//! Writing ([`PgStore`], `postgres/committer.rs`): a bounded queue, and
//! [`PgOptions::pool_size`] committer tasks, each merging whatever batches are queued
//! into one transaction on its own pooled connection (`postgres/write.rs`: binary COPY
//! into a temporary staging table, then one `INSERT … SELECT … ON CONFLICT DO NOTHING`).
//! A connection-level failure holds the batches and retries them until the database is
//! back (see `committer.rs`). Reading ([`PgReader`], `postgres/reader.rs`) uses its own
//! small pool, so reads never take a committer's connection.

mod committer;
mod reader;
pub(crate) mod schema;
#[cfg(test)]
mod tests;
mod tls;
mod write;

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::{FsyncPolicy, OpenStore, StoreError, StoreReader};

pub use committer::{PgStore, CLOSE_OUTAGE_WAIT, MAX_BACKOFF};
pub use reader::PgReader;
pub use schema::{ON_DEMAND_FUTURE_DAYS, ON_DEMAND_PAST_DAYS};

/// Default `--pg-pool-size`: committers (transactions in flight) per collector. Commits
/// wait on the server's WAL flush, which PostgreSQL already shares between concurrent
/// commits: a few in flight hide one slow commit; many more only take connections from a
/// database several collectors share (`max_connections` is 100 by default).
pub const DEFAULT_POOL_SIZE: usize = 4;

/// Most `--pg-pool-size`.
pub const MAX_POOL_SIZE: usize = 64;

/// Connections the read side keeps (the HTTP API, `query`, `stats`): reads never take a
/// committer's connection, and a dashboard poll cannot open many.
pub const READ_POOL_SIZE: usize = 2;

/// How long sent data may stay unacknowledged before the kernel drops the connection.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// How long opening a connection may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL URL (`postgres://` or `postgresql://`, libpq's URL form). Its `Display`
/// and `Debug` never show a password ([`super::redact_url`]).
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    url: String,
    /// Resolved from the URL's `ssl*` parameters, libpq's `PGSSL*` variables and files.
    tls: tls::PgTls,
}

impl PgUrl {
    /// Whether `url` names a PostgreSQL database (by its scheme).
    pub fn is_postgres(url: &str) -> bool {
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// Check `url`: it must parse as libpq's URL form; its TLS settings (`sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey`, else libpq's `PGSSL*` variables and
    /// `~/.postgresql` files) must make sense (`postgres/tls.rs`). Without an `sslmode`
    /// the connection is plain.
    ///
    /// # Errors
    /// [`StoreError::InvalidUrl`], never quoting a password.
    pub fn parse(url: &str) -> Result<PgUrl, StoreError> {
        let invalid = |reason: String| StoreError::InvalidUrl {
            url: super::redact_url(url).into_owned(),
            reason,
        };
        let tls = tls::PgTls::resolve(
            // libpq takes a parameter's last value.
            |name| query_params(url, name).last().map(super::percent_decoded),
            |var| std::env::var(var).ok(),
            std::env::var_os("HOME").map(std::path::PathBuf::from),
        )
        .map_err(invalid)?;
        let parsed = PgUrl {
            url: url.to_string(),
            tls,
        };
        let config = parsed
            .driver_config()
            .map_err(|err| invalid(err.to_string()))?;
        // What `--print-config` shows in place of a password: copied back, it would fail
        // authentication with a puzzling error.
        if config.get_password() == Some(&b"***"[..]) {
            return Err(invalid(
                "the password is the redacted `***`: write the real one or set PGPASSWORD".into(),
            ));
        }
        Ok(parsed)
    }

    /// The URL as typed (with its password, if any): for the driver only.
    /// The driver knows `sslmode` as `disable`/`prefer`/`require` only and none of the
    /// other `ssl*` parameters: they are ours (`tls`), stripped before it parses.
    fn driver_config(&self) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        let mut url = self.url.clone();
        for param in tls::PARAMS {
            url = strip_query_param(&url, param);
        }
        let mut config: tokio_postgres::Config = url.parse()?;
        config.ssl_mode(self.tls.driver_mode());
        Ok(config)
    }

    /// How connections to this database are secured, for the log.
    pub fn tls_description(&self) -> String {
        self.tls.describe()
    }

    /// The driver's settings: the URL's, plus the password from `PGPASSWORD` and the
    /// user from `PGUSER` or `USER` when the URL has none (as libpq does).
    fn config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config = self.driver_config().map_err(|err| StoreError::InvalidUrl {
            url: self.to_string(),
            reason: err.to_string(),
        })?;
        if config.get_password().is_none() {
            if let Ok(password) = std::env::var("PGPASSWORD") {
                config.password(password);
            }
        }
        if config.get_user().is_none() {
            match std::env::var("PGUSER").or_else(|_| std::env::var("USER")) {
                Ok(user) => {
                    config.user(user);
                }
                Err(_) => {
                    return Err(StoreError::InvalidUrl {
                        url: self.to_string(),
                        reason: "no user: name one (postgres://USER@HOST/DB) or set PGUSER".into(),
                    })
                }
            }
        }
        config
            .application_name("sensorlink")
            .connect_timeout(CONNECT_TIMEOUT)
            // A cut network (no RST) shows up as a dead connection within about a minute
            // instead of a commit that never ends.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            // Keepalives cover idle sockets only: data unacknowledged this long (a cut
            // while a commit is sent) closes the connection too, instead of waiting for
            // the commit timeout.
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        Ok(config)
    }
}

/// Every value of `name=` in the URL's query string.
fn query_params<'a>(url: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let query = url.find('?').map_or("", |q| &url[q + 1..]);
    query
        .split('&')
        .filter_map(move |pair| pair.strip_prefix(name)?.strip_prefix('='))
}

/// `url` without its `name=` query parameter.
fn strip_query_param(url: &str, name: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_string();
    };
    let kept: Vec<&str> = url[q + 1..]
        .split('&')
        .filter(|pair| {
            pair.strip_prefix(name)
                .is_none_or(|rest| !rest.starts_with('='))
        })
        .collect();
    if kept.is_empty() {
        url[..q].to_string()
    } else {
        format!("{}?{}", &url[..q], kept.join("&"))
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&super::redact_url(&self.url))
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// How to run the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Committers, i.e. transactions in flight (`--pg-pool-size`).
    pub pool_size: usize,
    /// Drop day partitions entirely older than this (`--retention`); `None`: keep all.
    pub retention: Option<Duration>,
    /// `always`: PostgreSQL's default (`synchronous_commit = on`, an ack survives a crash
    /// of the database server); `os`: `synchronous_commit = off` (an ack survives a crash
    /// of the collector, not of the database server: it may lose its last ~0.6 s).
    pub fsync: FsyncPolicy,
    /// Most readings in one transaction.
    pub max_batch_rows: usize,
    /// Batches waiting for a committer; `submit` waits when it is full (back-pressure).
    pub queue_batches: usize,
    /// Series ids each collector keeps in memory.
    pub series_cache_entries: usize,
    /// The server's shutdown: once it begins, batches held by an outage wait at most
    /// [`CLOSE_OUTAGE_WAIT`] more, then are answered with the error, so the
    /// connections waiting for them can close (without it, the wait begins at `close`).
    pub shutdown: Option<tokio_util::sync::CancellationToken>,
}

impl Default for PgOptions {
    fn default() -> Self {
        let writer = super::writer::WriterConfig::default();
        PgOptions {
            pool_size: DEFAULT_POOL_SIZE,
            retention: None,
            fsync: FsyncPolicy::Always,
            max_batch_rows: writer.max_batch_rows,
            queue_batches: writer.queue_batches,
            series_cache_entries: super::DEFAULT_SERIES_CACHE_ENTRIES,
            shutdown: None,
        }
    }
}

/// Open the store at `url` for writing: connect, create or migrate the schema, create
/// the partitions ahead, start the committers and the upkeep task (on the current tokio
/// runtime, where the pool's connections live), with a reader beside it.
///
/// # Errors
/// The database cannot be reached or migrated, or its schema is newer than this build.
pub async fn open(url: &PgUrl, options: PgOptions) -> Result<OpenStore, StoreError> {
    let store = PgStore::open(url, options).await?;
    let reader = StoreReader::new(PgReader::new(url)?);
    Ok(OpenStore {
        drive: super::Drive::Concurrent(store),
        reader,
    })
}

/// A bounded pool of connections to `url`, each set up by `setup` once connected.
fn pool(url: &PgUrl, size: usize, setup: &'static str) -> Result<Pool, StoreError> {
    let config = url.config()?;
    let manager_config = ManagerConfig {
        // A closed connection is replaced; a live one is handed out without a round trip.
        recycling_method: RecyclingMethod::Fast,
    };
    let connector = url.tls.connector().map_err(|err| StoreError::InvalidUrl {
        url: url.to_string(),
        reason: format!("{err:#}"),
    })?;
    let manager = match connector {
        Some(tls) => Manager::from_config(config, tls, manager_config),
        None => Manager::from_config(config, NoTls, manager_config),
    };
    let mut builder = Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT));
    if !setup.is_empty() {
        builder = builder.post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            Box::pin(async move {
                client
                    .batch_execute(setup)
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }));
    }
    builder.build().map_err(|err| StoreError::Backend {
        location: url.to_string(),
        operation: "create pool",
        detail: err.to_string(),
    })
}

/// How a failed database operation is handled.
#[derive(Debug)]
pub(crate) enum Failure {
    /// A serialization failure, deadlock or lock timeout: run the transaction again.
    Retry(StoreError),
    /// The database is out of reach (or its outcome unknown): hold and retry later.
    Unavailable(StoreError),
    /// Lasting: answer the batches with it.
    Fatal(StoreError),
}

impl Failure {
    pub(crate) fn into_error(self) -> StoreError {
        match self {
            Failure::Retry(err) | Failure::Unavailable(err) | Failure::Fatal(err) => err,
        }
    }
}

/// Classify a driver error: a connection-level one (closed, refused, I/O, class 08,
/// admin or crash shutdown, too many connections) is [`Failure::Unavailable`].
pub(crate) fn pg_failure(
    location: &str,
    operation: &'static str,
    err: &tokio_postgres::Error,
) -> Failure {
    let detail = match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            // The source carries the reason (e.g. "connection refused").
            use std::error::Error as _;
            match err.source() {
                Some(source) => format!("{err}: {source}"),
                None => err.to_string(),
            }
        }
    };
    let error = |unavailable: bool| {
        StoreError::from_backend(unavailable, location.to_string(), operation, detail.clone())
    };
    let Some(code) = err.code() else {
        // No server error: the connection failed (closed, refused, I/O, timeout).
        return Failure::Unavailable(error(true));
    };
    // A lock timeout comes only from schema changes (`lock_timeout` is set for them):
    // they give way to the commits and run again.
    if code == &SqlState::T_R_SERIALIZATION_FAILURE
        || code == &SqlState::T_R_DEADLOCK_DETECTED
        || code == &SqlState::LOCK_NOT_AVAILABLE
    {
        return Failure::Retry(error(true));
    }
    let class = &code.code()[..2];
    let unavailable = err.is_closed()
        || class == "08"
        || class == "53"
        || code == &SqlState::ADMIN_SHUTDOWN
        || code == &SqlState::CRASH_SHUTDOWN
        || code == &SqlState::CANNOT_CONNECT_NOW
        || code == &SqlState::READ_ONLY_SQL_TRANSACTION;
    if unavailable {
        Failure::Unavailable(error(true))
    } else {
        Failure::Fatal(error(false))
    }
}

/// Classify a pool error (see [`pg_failure`]).
pub(crate) fn pool_failure(
    location: &str,
    operation: &'static str,
    err: deadpool_postgres::PoolError,
) -> Failure {
    use deadpool_postgres::PoolError;
    match err {
        PoolError::Backend(err) => pg_failure(location, operation, &err),
        PoolError::PostCreateHook(deadpool_postgres::HookError::Backend(err)) => {
            pg_failure(location, operation, &err)
        }
        PoolError::Closed => Failure::Fatal(StoreError::WriterGone),
        other => Failure::Unavailable(StoreError::Unavailable {
            location: location.to_string(),
            operation,
            detail: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_passwords() {
        let url = PgUrl::parse("postgres://u:s3cret@127.0.0.1:5432/db").expect("parses");
        assert_eq!(url.to_string(), "postgres://u:***@127.0.0.1:5432/db");
        assert!(!format!("{url:?}").contains("s3cret"));
        let config = url.config().expect("config");
        assert_eq!(config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(config.get_dbname(), Some("db"));
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert!(PgUrl::parse("postgresql://u@h/db?sslmode=disable").is_ok());
        assert!(PgUrl::parse("postgresql://u@h/db?sslmode=prefer&connect_timeout=3").is_ok());
        // TLS: the driver gets the mode it knows and none of our `ssl*` parameters.
        let url = PgUrl::parse(
            "postgres://u@h/db?sslrootcert=%2Ftmp%2Fca.pem&sslmode=disable&sslmode=verify-full",
        )
        .expect("verify-full with a root certificate");
        let config = url.driver_config().expect("the driver parses what is left");
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert!(
            url.tls_description().contains("/tmp/ca.pem"),
            "{}",
            url.tls_description()
        );
        let plain = PgUrl::parse("postgres://u@h/db").expect("parses");
        assert_eq!(
            plain.driver_config().expect("parses").get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
        let home_roots = std::env::var_os("HOME").is_some_and(|home| {
            std::path::Path::new(&home)
                .join(".postgresql/root.crt")
                .exists()
        });
        if std::env::var_os("PGSSLROOTCERT").is_none() && !home_roots {
            let err = PgUrl::parse("postgres://u:pw@h/db?sslmode=verify-ca&sslrootcert=")
                .expect_err("verify-ca needs a root certificate")
                .to_string();
            assert!(
                err.contains("sslrootcert") && !err.contains(":pw@"),
                "{err}"
            );
        }
        let err = PgUrl::parse("postgres://u:***@h/db").expect_err("a redacted password");
        assert!(err.to_string().contains("PGPASSWORD"), "{err}");
        let err = PgUrl::parse("postgres://u:pw@h:notaport/db").expect_err("bad port");
        assert!(!err.to_string().contains(":pw@"), "{err}");
        // Whatever the driver takes as the password never shows, however it is written.
        for typed in [
            "postgres://u:ab/cd@db/x",
            "postgres://u:ab?cd@db/x",
            "postgres://u:ab#cd@db/x",
            "postgres://u:ab%2Fcd@db/x",
            "postgres://u:s3:cr@et@db/x",
            "postgres://u@db/x?passw%6Frd=ab%2Fcd",
            "postgres://db/x?user=u&password=ab/cd",
        ] {
            let url = PgUrl::parse(typed).unwrap_or_else(|err| panic!("{typed}: {err}"));
            let config = url.driver_config().expect("parsed above");
            let password = config
                .get_password()
                .unwrap_or_else(|| panic!("{typed}: no password"));
            let password = std::str::from_utf8(password).expect("a text password");
            let raw = password.replace('/', "%2F");
            for shown in [url.to_string(), format!("{url:?}")] {
                assert!(
                    !shown.contains(password) && !shown.contains(&raw),
                    "{typed} shows {password:?}: {shown}"
                );
            }
        }
    }

    #[test]
    fn query_params_are_found_and_stripped() {
        let url = "postgres://h/db?a=1&sslmode=prefer&b=2";
        assert_eq!(query_params(url, "sslmode").next(), Some("prefer"));
        assert_eq!(strip_query_param(url, "sslmode"), "postgres://h/db?a=1&b=2");
        assert_eq!(
            strip_query_param("postgres://h/db?sslmode=disable", "sslmode"),
            "postgres://h/db"
        );
        assert_eq!(query_params("postgres://h/db", "sslmode").next(), None);
    }
}
