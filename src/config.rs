//! Settings from four places, in rising precedence: defaults < TOML file (`--config FILE`
//! or `SENSORLINK_CONFIG`) < environment (`SENSORLINK_<FLAG>`) < flags.
//!
//! Two steps, as ripgrep's LowArgs → HiArgs: a raw layer whose every field is an `Option`
//! ([`RawServer`]: what one source said, and nothing it did not say) is read from the flags
//! and environment (clap) and from the file (serde); the layers are merged field by field
//! and then validated into [`ServerConfig`]. A value out of range is an error naming the
//! setting and the accepted range: nothing is clamped behind the user's back.
//!
//! The file has one table per command and uses the flags' names:
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:8889"
//! store = "sqlite:sensorlink.db"
//! idle-timeout = "5m"
//! ```
//!
//! `sensorlink server --print-config` prints the effective settings in this form, so its
//! output is a valid `--config` file. The server's table is read in `config/server.rs`
//! ([`RawServer`]), the client's in `config/client.rs` ([`RawClient`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::http::access::AccessError;

mod client;
mod forms;
mod server;

pub use client::{client_config, print_client, RawClient};
pub use server::{print_server, server_config, RawServer};

use forms::{socket_address, ShowValue};

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {setting} {value}: accepted {accepted}")]
    Invalid {
        /// The flag's name, which is also the file's key.
        setting: &'static str,
        value: String,
        accepted: String,
    },
    #[error("reading config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// `--print-config` cannot write a value the file could read back (a path that is not
    /// UTF-8: TOML strings are).
    #[error("cannot print {setting} {value} in a config file: {reason}")]
    Unprintable {
        setting: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The HTTP side would be served to the network without tokens, or a token is asked
    /// for without a tokens file.
    #[error(transparent)]
    HttpAccess(#[from] AccessError),
    #[error("printing the settings as TOML")]
    Print {
        #[source]
        source: toml::ser::Error,
    },
}

/// The whole config file: one optional table per command.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<RawServer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<RawClient>,
}

impl ConfigFile {
    /// Read and parse `path`.
    ///
    /// # Errors
    /// The file cannot be read, is not TOML, or has a key no command knows.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// As TOML, for `--print-config`.
    ///
    /// # Errors
    /// A value TOML cannot hold (the printers check paths first; this is the backstop).
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|source| ConfigError::Print { source })
    }
}

/// The `http` value that turns the HTTP side off.
pub const HTTP_OFF: &str = "off";

/// Accepted ranges, inclusive. Named so the error message and the check cannot disagree.
pub mod limits {
    use std::time::Duration;

    /// Linux's default ceiling on open files per process (`fs.nr_open`).
    pub const MAX_CONNECTIONS: (usize, usize) = (1, 1 << 20);
    pub const CONNECT_RATE_PER_IP: (u32, u32) = (1, 1_000_000);
    /// Up to a billion: as good as off (benchmarks), still a number.
    pub const QUOTA: (u32, u32) = (1, 1_000_000_000);
    pub const SERIES_CACHE_ENTRIES: (usize, usize) = (1, 100_000_000);
    /// Retention drops whole days: less than one would drop yesterday at midnight.
    pub const RETENTION: (Duration, Duration) = (
        Duration::from_secs(24 * 3600),
        Duration::from_secs(100 * 366 * 24 * 3600),
    );
    pub const PG_POOL_SIZE: (usize, usize) = (1, crate::store::postgres::MAX_POOL_SIZE);
    /// Below 64 bytes not even a short reading fits; above 16 MiB one line could pin that
    /// much memory per connection.
    pub const MAX_LINE_BYTES: (usize, usize) = (64, 16 << 20);
    pub const COMMIT_MAX_ROWS: (usize, usize) = (1, 1_000_000);
    pub const TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(7 * 24 * 3600));
    pub const COMMIT_DELAY: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(10));
    /// Zero is off.
    pub const TCP_INFO_INTERVAL: (Duration, Duration) =
        (Duration::ZERO, Duration::from_secs(24 * 3600));
    /// Zero refuses anything ahead of the server's clock; a century is as good as off.
    pub const MAX_FUTURE_TIMESTAMP: (Duration, Duration) =
        (Duration::ZERO, Duration::from_secs(100 * 366 * 24 * 3600));
    /// Besides zero (ping-pong: the next reading when the previous one is acked): below a
    /// millisecond tokio's timer cannot keep the pace.
    pub const INTERVAL: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(24 * 3600));
    pub const MAX_PENDING: (usize, usize) = (1, 100_000_000);
    /// A spool smaller than one segment could hold nothing useful.
    pub const SPOOL_MAX_BYTES: (u64, u64) = (64 << 10, 1 << 50);
    pub const SPOOL_MAX_AGE: (Duration, Duration) = (
        Duration::from_secs(1),
        Duration::from_secs(3650 * 24 * 3600),
    );
    pub const MAX_BACKOFF: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(24 * 3600));
    /// Besides zero (off): more often than 10 per second the reports would outweigh the
    /// readings they report on.
    pub const LINK_REPORT: (Duration, Duration) =
        (Duration::from_millis(100), Duration::from_secs(24 * 3600));
}

/// A path a TOML string can hold (and so read back as the same path).
fn printable_path(setting: &'static str, path: &Path) -> Result<(), ConfigError> {
    match path.to_str() {
        Some(_) => Ok(()),
        None => Err(ConfigError::Unprintable {
            setting,
            value: path.display().to_string(),
            reason: "the path is not UTF-8",
        }),
    }
}

/// `name` unless it is empty (an empty tag or measurement is not valid line protocol).
fn non_empty(setting: &'static str, name: String) -> Result<String, ConfigError> {
    if name.is_empty() {
        Err(ConfigError::Invalid {
            setting,
            value: "\"\"".into(),
            accepted: "a non-empty name".into(),
        })
    } else {
        Ok(name)
    }
}

/// `value` if within `(low, high)`, else the error naming the setting and the range.
fn in_range<T: PartialOrd + Copy + ShowValue>(
    setting: &'static str,
    value: T,
    (low, high): (T, T),
) -> Result<T, ConfigError> {
    if low <= value && value <= high {
        Ok(value)
    } else {
        Err(ConfigError::Invalid {
            setting,
            value: value.show(),
            accepted: format!("{} to {}", low.show(), high.show()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::CommandFactory as _;

    use super::*;
    use crate::client::source::SourceSpec;
    use crate::http::access::{Guard, HttpAuth};
    use crate::server::quota::QuotaLimits;
    use crate::server::ServerConfig;
    use crate::store::{FsyncPolicy, StoreUrl};

    fn parse_file(text: &str) -> Result<RawServer, ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sensorlink.toml");
        std::fs::write(&path, text).expect("write config");
        Ok(ConfigFile::load(&path)?.server.unwrap_or_default())
    }

    /// `--retention` and `--pg-pool-size` belong to the PostgreSQL store: validated,
    /// printed, and retention refused with any other store.
    #[test]
    fn postgres_settings_are_validated() {
        let file = parse_file(
            "[server]\nstore = \"postgres://u:secret@db:5432/x\"\nretention = \"30days\"\n\
             pg-pool-size = 8\n",
        )
        .expect("valid file");
        let config = file.validate().expect("valid settings");
        assert_eq!(config.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(config.pg_pool_size, 8);
        let printed = print_server(&config).expect("printable");
        assert!(printed.contains("pg-pool-size = 8\n"), "{printed}");
        assert!(printed.contains("retention = \"30days\"\n"), "{printed}");
        assert!(!printed.contains("secret"), "{printed}");
        let defaults = RawServer::default().validate().expect("defaults");
        assert_eq!(
            (defaults.retention, defaults.pg_pool_size),
            (None, crate::store::postgres::DEFAULT_POOL_SIZE)
        );
        for (text, error) in [
            (
                "[server]\nstore = \"sqlite:x.db\"\nretention = \"30days\"\n",
                "invalid retention 30days: accepted only with a PostgreSQL store",
            ),
            (
                "[server]\nstore = \"postgres://db/x\"\nretention = \"1h\"\n",
                "invalid retention 1h",
            ),
            (
                "[server]\nstore = \"postgres://db/x\"\npg-pool-size = 0\n",
                "invalid pg-pool-size 0",
            ),
        ] {
            let err = parse_file(text)
                .expect("parses")
                .validate()
                .expect_err(error);
            assert!(err.to_string().starts_with(error), "{err}");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = parse_file(
            "[server]\nstore = \"memory\"\nmax-connections = 5\nidle-timeout = \"90s\"\n",
        )
        .expect("valid file");
        let flags = RawServer {
            max_connections: Some(7),
            ..RawServer::default()
        };
        let config = flags.or(file).validate().expect("valid settings");
        assert_eq!(config.max_connections, 7, "flag over file");
        assert_eq!(config.store, StoreUrl::Memory, "file over default");
        assert_eq!(config.idle_timeout, Duration::from_secs(90));
        assert_eq!(config.write_timeout, ServerConfig::default().write_timeout);
    }

    /// The hidden legacy quiet period: 100 ms by default (and then not printed), a file
    /// may lengthen it (printed back), zero is refused.
    #[test]
    fn legacy_ping_quiet_is_a_hidden_validated_setting() {
        let defaults = RawServer::default().validate().expect("defaults");
        assert_eq!(defaults.legacy_ping_quiet, Duration::from_millis(100));
        let printed = print_server(&defaults).expect("printable");
        assert!(!printed.contains("legacy-ping-quiet"), "{printed}");
        let file = parse_file("[server]\nlegacy-ping-quiet = \"30s\"\n").expect("valid file");
        let config = file.validate().expect("valid settings");
        assert_eq!(config.legacy_ping_quiet, Duration::from_secs(30));
        let printed = print_server(&config).expect("printable");
        assert!(
            printed.contains("legacy-ping-quiet = \"30s\"\n"),
            "{printed}"
        );
        let zero = RawServer {
            legacy_ping_quiet: Some(Duration::ZERO),
            ..RawServer::default()
        };
        assert!(zero.validate().is_err());
    }

    /// The connection limits: from the file, printed back, and zero refused.
    #[test]
    fn per_ip_limits_and_first_line_timeout_are_validated_settings() {
        let file = parse_file(
            "[server]\nmax-connections-per-ip = 8\nconnect-rate-per-ip = 5\nfirst-line-timeout = \"3s\"\n",
        )
        .expect("valid file");
        let config = file.validate().expect("valid settings");
        assert_eq!(config.max_connections_per_ip, 8);
        assert_eq!(config.connect_rate_per_ip, 5);
        assert_eq!(config.first_line_timeout, Duration::from_secs(3));
        let printed = print_server(&config).expect("printable");
        for line in [
            "max-connections-per-ip = 8\n",
            "connect-rate-per-ip = 5\n",
            "first-line-timeout = \"3s\"\n",
        ] {
            assert!(printed.contains(line), "{printed}");
        }
        let defaults = RawServer::default().validate().expect("defaults");
        assert_eq!(defaults.max_connections_per_ip, 64);
        assert_eq!(defaults.connect_rate_per_ip, 20);
        assert_eq!(defaults.first_line_timeout, Duration::from_secs(10));
        for (raw, setting) in [
            (
                RawServer {
                    max_connections_per_ip: Some(0),
                    ..RawServer::default()
                },
                "invalid max-connections-per-ip 0",
            ),
            (
                RawServer {
                    connect_rate_per_ip: Some(0),
                    ..RawServer::default()
                },
                "invalid connect-rate-per-ip 0",
            ),
        ] {
            let err = raw.validate().expect_err(setting);
            assert!(err.to_string().starts_with(setting), "{err}");
        }
    }

    /// The quotas and the series cache: from the file, printed back, defaults, and a zero
    /// refused with the setting named.
    #[test]
    fn quotas_and_series_cache_are_validated_settings() {
        let file = parse_file(
            "[server]\nmax-rate-per-connection = 500\nmax-rate-per-token = 700\n\
             max-new-series-per-connection = 10\nmax-new-series-per-token = 20\n\
             series-cache-entries = 3000\n",
        )
        .expect("valid file");
        let config = file.validate().expect("valid settings");
        assert_eq!(
            (
                config.quotas.rate_per_connection,
                config.quotas.rate_per_token,
                config.quotas.new_series_per_connection,
                config.quotas.new_series_per_token,
                config.series_cache_entries
            ),
            (500, 700, 10, 20, 3000)
        );
        let printed = print_server(&config).expect("printable");
        for line in [
            "max-rate-per-connection = 500\n",
            "max-rate-per-token = 700\n",
            "max-new-series-per-connection = 10\n",
            "max-new-series-per-token = 20\n",
            "series-cache-entries = 3000\n",
        ] {
            assert!(printed.contains(line), "{printed}");
        }
        let defaults = RawServer::default().validate().expect("defaults");
        assert_eq!(defaults.quotas, QuotaLimits::default());
        assert_eq!(defaults.quotas.rate_per_connection, 100_000);
        assert_eq!(defaults.quotas.new_series_per_connection, 1_000);
        assert_eq!(defaults.series_cache_entries, 100_000);
        for (raw, setting) in [
            (
                RawServer {
                    max_rate_per_token: Some(0),
                    ..RawServer::default()
                },
                "invalid max-rate-per-token 0",
            ),
            (
                RawServer {
                    max_new_series_per_connection: Some(0),
                    ..RawServer::default()
                },
                "invalid max-new-series-per-connection 0",
            ),
            (
                RawServer {
                    series_cache_entries: Some(0),
                    ..RawServer::default()
                },
                "invalid series-cache-entries 0",
            ),
        ] {
            let err = raw.validate().expect_err(setting);
            assert!(err.to_string().starts_with(setting), "{err}");
        }
    }

    /// `--tcp-info-interval`: default 10s, from the file, 0s (off) accepted and printed back.
    #[test]
    fn tcp_info_interval_is_a_duration_zero_is_off() {
        let config = RawServer::default().validate().expect("defaults are valid");
        assert_eq!(config.tcp_info_interval, Duration::from_secs(10));
        let file = parse_file("[server]\ntcp-info-interval = \"0s\"\n").expect("valid file");
        let config = file.validate().expect("0s is off, not invalid");
        assert_eq!(config.tcp_info_interval, Duration::ZERO);
        let printed = print_server(&config).expect("printable");
        assert!(
            printed.contains("tcp-info-interval = \"0s\"\n"),
            "{printed}"
        );
        let err = RawServer {
            tcp_info_interval: Some(Duration::from_secs(2 * 24 * 3600)),
            ..RawServer::default()
        }
        .validate()
        .expect_err("over a day is refused");
        assert!(
            err.to_string()
                .starts_with("invalid tcp-info-interval 2days"),
            "{err}"
        );
    }

    /// `--stale-after`: from the file, printed back, and a zero refused.
    #[test]
    fn stale_after_is_a_validated_duration() {
        let file = parse_file("[server]\nstale-after = \"45s\"\n").expect("valid file");
        let config = file.validate().expect("valid settings");
        assert_eq!(config.stale_after, Duration::from_secs(45));
        assert_eq!(
            ServerConfig::default().stale_after,
            crate::live::DEFAULT_STALE_AFTER
        );
        let printed = print_server(&config).expect("printable");
        assert!(printed.contains("stale-after = \"45s\"\n"), "{printed}");
        let err = RawServer {
            stale_after: Some(Duration::ZERO),
            ..RawServer::default()
        }
        .validate()
        .expect_err("zero");
        assert!(
            err.to_string().starts_with("invalid stale-after 0s"),
            "{err}"
        );
    }

    /// `--max-future-timestamp`: defaults to a day, read from the file and the environment
    /// name's table key, printed back, and bounded.
    #[test]
    fn max_future_timestamp_is_a_validated_duration() {
        assert_eq!(
            RawServer::default()
                .validate()
                .expect("defaults")
                .timestamps
                .max_future,
            Duration::from_secs(24 * 3600)
        );
        let file = parse_file("[server]\nmax-future-timestamp = \"10m\"\n").expect("valid file");
        let config = file.validate().expect("valid settings");
        assert_eq!(config.timestamps.max_future, Duration::from_secs(600));
        let printed = print_server(&config).expect("printable");
        assert!(
            printed.contains("max-future-timestamp = \"10m\"\n"),
            "{printed}"
        );
        let err = RawServer {
            max_future_timestamp: Some(Duration::from_secs(200 * 366 * 24 * 3600)),
            ..RawServer::default()
        }
        .validate()
        .expect_err("two centuries");
        assert!(
            err.to_string().starts_with("invalid max-future-timestamp"),
            "{err}"
        );
    }

    /// See: review of issue 8 (printing a non-UTF-8 `--spool` path panicked in `to_toml`).
    #[test]
    fn print_config_of_a_non_utf8_path_is_an_error_naming_it() {
        use std::os::unix::ffi::OsStrExt as _;
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/spool-\xff"));
        let client = RawClient {
            spool: Some(path.clone()),
            ..RawClient::default()
        }
        .validate()
        .expect("any path can be used");
        let err = print_client(&client).expect_err("not printable");
        assert_eq!(
            err.to_string(),
            "cannot print spool /tmp/spool-\u{fffd} in a config file: the path is not UTF-8"
        );
        let client = RawClient {
            source: Some(SourceSpec::File(path.clone())),
            ..RawClient::default()
        }
        .validate()
        .expect("valid");
        assert!(print_client(&client).is_err());
        let server = RawServer {
            store: Some(StoreUrl::Sqlite(path)),
            ..RawServer::default()
        }
        .validate()
        .expect("valid");
        assert!(print_server(&server)
            .expect_err("not printable")
            .to_string()
            .starts_with("cannot print store "));
    }

    #[test]
    fn addresses_need_a_port_and_names_must_not_be_empty() {
        for good in [
            "0.0.0.0:0",
            "127.0.0.1:8889",
            "[::1]:8889",
            "localhost:8889",
        ] {
            let raw = RawServer {
                listen: Some(good.into()),
                ..RawServer::default()
            };
            assert_eq!(raw.validate().expect(good).listen, good);
            let raw = RawClient {
                addr: Some(good.into()),
                ..RawClient::default()
            };
            assert_eq!(raw.validate().expect(good).servers, [good]);
        }
        for bad in [
            "",
            "8889",
            "localhost",
            ":8889",
            "::1",
            "host:99999",
            "host:port",
        ] {
            let err = RawServer {
                listen: Some(bad.into()),
                ..RawServer::default()
            }
            .validate()
            .expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid listen {bad:?}: accepted IP:PORT or HOST:PORT, e.g. 0.0.0.0:8889, [::1]:8889, localhost:8889"
                )
            );
            let err = RawClient {
                addr: Some(bad.into()),
                ..RawClient::default()
            }
            .validate()
            .expect_err(bad);
            assert!(err.to_string().starts_with("invalid addr "), "{err}");
        }
        let err = RawServer {
            http: Some("9889".into()),
            ..RawServer::default()
        }
        .validate()
        .expect_err("no host");
        assert!(
            err.to_string()
                .starts_with("invalid http \"9889\": accepted off, IP:PORT or HOST:PORT"),
            "{err}"
        );
        let http = |value: &str| {
            RawServer {
                http: Some(value.into()),
                ..RawServer::default()
            }
            .validate()
            .expect(value)
            .http
        };
        assert_eq!(http("off"), None);
        assert_eq!(http("127.0.0.1:0").as_deref(), Some("127.0.0.1:0"));
        assert_eq!(
            RawServer::default().validate().expect("defaults").http,
            Some(crate::http::DEFAULT_ADDR.into())
        );
        let off = RawServer::from_config(
            &RawServer {
                http: Some("off".into()),
                ..RawServer::default()
            }
            .validate()
            .expect("off"),
        );
        assert_eq!(off.http.as_deref(), Some("off"), "printed as off");
        let err = RawClient {
            sensor: Some(String::new()),
            ..RawClient::default()
        }
        .validate()
        .expect_err("empty sensor");
        assert_eq!(
            err.to_string(),
            "invalid sensor \"\": accepted a non-empty name"
        );
        let err = RawClient {
            measurement: Some(String::new()),
            ..RawClient::default()
        }
        .validate()
        .expect_err("empty measurement");
        assert_eq!(
            err.to_string(),
            "invalid measurement \"\": accepted a non-empty name"
        );
    }

    /// Validation is pure: the open-file limit comes in as a value and only lowers the
    /// default, never an explicit setting.
    #[test]
    fn default_max_connections_follows_the_given_open_file_limit() {
        for (nofile, expected) in [
            (Some(1024), 704),
            (Some(20_000), 19_680),
            (Some(1_000_000), 50_000),
            (None, 50_000),
        ] {
            let config = RawServer::default().validate_with(nofile).expect("valid");
            assert_eq!(config.max_connections, expected, "{nofile:?}");
        }
        let explicit = RawServer {
            max_connections: Some(5000),
            ..RawServer::default()
        };
        assert_eq!(
            explicit
                .validate_with(Some(1024))
                .expect("valid")
                .max_connections,
            5000
        );
    }

    #[test]
    fn out_of_range_values_name_the_setting_and_the_range() {
        let cases = [
            (
                RawServer {
                    max_connections: Some(0),
                    ..RawServer::default()
                },
                "invalid max-connections 0: accepted 1 to 1048576",
            ),
            (
                RawServer {
                    max_line_bytes: Some(10),
                    ..RawServer::default()
                },
                "invalid max-line-bytes 10: accepted 64 to 16777216",
            ),
            (
                RawServer {
                    commit_max_rows: Some(0),
                    ..RawServer::default()
                },
                "invalid commit-max-rows 0: accepted 1 to 1000000",
            ),
            (
                RawServer {
                    idle_timeout: Some(Duration::ZERO),
                    ..RawServer::default()
                },
                "invalid idle-timeout 0s: accepted 1ms to 7days",
            ),
        ];
        for (raw, message) in cases {
            let err = raw.validate().expect_err(message);
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_in_the_file_are_errors() {
        let err = parse_file("[server]\nmax-conections = 3\n").expect_err("typo");
        assert!(
            format!("{:#}", anyhow::Error::from(err)).contains("unknown field `max-conections`"),
        );
        let err = parse_file("[server]\nidle-timeout = \"5 parsecs\"\n").expect_err("unit");
        assert!(
            format!("{:#}", anyhow::Error::from(err)).contains("invalid duration \"5 parsecs\"")
        );
        let err = parse_file("[server]\nfsync = \"never\"\n").expect_err("fsync");
        assert!(format!("{:#}", anyhow::Error::from(err)).contains("accepted \"always\" or \"os\""));
        assert!(parse_file("[sever]\n").is_err(), "unknown table");
    }

    #[test]
    fn printed_config_reads_back_as_the_same_settings() {
        let raw = RawServer {
            store: Some(StoreUrl::Sqlite("/tmp/x y.db".into())),
            fsync: Some(FsyncPolicy::Os),
            max_connections: Some(12),
            idle_timeout: Some(Duration::from_millis(1500)),
            commit_delay: Some(Duration::from_millis(2)),
            group_window: Some(Duration::ZERO),
            ..RawServer::default()
        };
        let config = raw.validate().expect("valid");
        assert_eq!(config.writer.group_window, Duration::ZERO);
        let printed = print_server(&config).expect("printable");
        let again = parse_file(&printed)
            .expect("printed config parses")
            .validate()
            .expect("printed config is valid");
        assert_eq!(print_server(&again).expect("printable"), printed);
        assert_eq!(
            RawServer::from_config(&again),
            RawServer::from_config(&config)
        );
        assert!(
            printed.contains("idle-timeout = \"1s 500ms\"\n"),
            "{printed}"
        );
    }

    /// `--http-auth`, `--metrics-auth`, `--http-insecure`: read from the file, checked
    /// against `--http` and `--auth`, printed back.
    #[test]
    fn http_auth_settings_are_checked_and_print_back() {
        let exposed = parse_file("[server]\nhttp = \"0.0.0.0:9889\"\n").expect("parses");
        let err = exposed
            .clone()
            .validate()
            .expect_err("exposed without tokens");
        assert!(matches!(err, ConfigError::HttpAccess(_)), "{err}");
        assert!(err.to_string().contains("--http-insecure"), "{err}");
        let insecure = RawServer {
            http_insecure: Some(true),
            ..exposed
        }
        .validate()
        .expect("--http-insecure starts");
        assert!(insecure.http_insecure);

        let token = parse_file("[server]\nhttp-auth = \"token\"\n").expect("parses");
        assert!(matches!(
            token.clone().validate(),
            Err(ConfigError::HttpAccess(AccessError::TokenWithoutAuth(
                "http-auth"
            )))
        ));
        let raw = RawServer {
            auth: Some("tokens.toml".into()),
            metrics_auth: Some(Guard::Open),
            ..token
        };
        let config = raw.validate().expect("valid");
        assert_eq!(config.http_auth, HttpAuth::Token);
        let printed = print_server(&config).expect("printable");
        for line in [
            "http-auth = \"token\"\n",
            "metrics-auth = \"open\"\n",
            "http-insecure = false\n",
        ] {
            assert!(printed.contains(line), "{line} in {printed}");
        }
        let again = parse_file(&printed)
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(
            RawServer::from_config(&again),
            RawServer::from_config(&config)
        );
        // Unset, /metrics follows the API: said in a comment, not fixed in the file.
        let default = print_server(&ServerConfig::default()).expect("printable");
        assert!(
            default.contains("# metrics-auth is not set: /metrics follows the API (now: open)\n"),
            "{default}"
        );
        assert!(parse_file("[server]\nhttp-auth = \"maybe\"\n").is_err());
    }

    /// TLS files come as a pair (a client CA only with them), and print back.
    /// `proxy-protocol`: off by default (printed), `v2` from the file or a flag, printed
    /// back; anything else is refused with the accepted values.
    #[test]
    fn proxy_protocol_is_off_or_v2_and_prints_back() {
        use crate::server::proxy_protocol::ProxyProtocol;
        let default = RawServer::default().validate().expect("valid");
        assert_eq!(default.proxy_protocol, ProxyProtocol::Off);
        let printed = print_server(&default).expect("printable");
        assert!(printed.contains("proxy-protocol = \"off\""), "{printed}");
        let file = parse_file("[server]\nproxy-protocol = \"v2\"\n").expect("valid file");
        let config = file.validate().expect("valid");
        assert_eq!(config.proxy_protocol, ProxyProtocol::V2);
        let printed = print_server(&config).expect("printable");
        let again = parse_file(&printed).expect("parses").validate();
        assert_eq!(again.expect("valid").proxy_protocol, ProxyProtocol::V2);
        let err = parse_file("[server]\nproxy-protocol = \"v1\"\n").expect_err("v1");
        let err = format!("{:#}", anyhow::Error::from(err));
        assert!(err.contains("`off`") && err.contains("`v2`"), "{err}");
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            server: RawServer,
        }
        let flags = Flags::try_parse_from(["s", "--proxy-protocol", "v2"]).expect("a flag");
        assert_eq!(flags.server.proxy_protocol, Some(ProxyProtocol::V2));
        assert!(Flags::try_parse_from(["s", "--proxy-protocol", "v1"]).is_err());
    }

    #[test]
    fn tls_settings_go_together_and_print_back() {
        let pair = RawServer {
            tls_cert: Some("/etc/s/server.pem".into()),
            tls_key: Some("/etc/s/server-key.pem".into()),
            tls_client_ca: Some("/etc/s/ca.pem".into()),
            ..RawServer::default()
        };
        let config = pair.clone().validate().expect("valid");
        let tls = config.tls.clone().expect("TLS on");
        assert_eq!(tls.client_ca.as_deref(), Some(Path::new("/etc/s/ca.pem")));
        let printed = print_server(&config).expect("printable");
        assert!(
            printed.contains("tls-key = \"/etc/s/server-key.pem\""),
            "{printed}"
        );
        let again = parse_file(&printed)
            .expect("parses")
            .validate()
            .expect("valid");
        assert_eq!(again.tls, config.tls);
        // HTTPS by default with TLS; `http-tls = false` keeps HTTP plain and prints back.
        assert!(
            config.http_tls && printed.contains("http-tls = true"),
            "{printed}"
        );
        let plain_http = RawServer {
            http_tls: Some(false),
            ..pair.clone()
        }
        .validate()
        .expect("valid");
        let printed = print_server(&plain_http).expect("printable");
        assert!(printed.contains("http-tls = false"), "{printed}");
        let again = parse_file(&printed)
            .expect("parses")
            .validate()
            .expect("valid");
        assert!(!again.http_tls);
        // Without TLS it says nothing.
        let no_tls = print_server(&RawServer::default().validate().expect("defaults"));
        assert!(!no_tls.expect("printable").contains("http-tls"));

        for (raw, setting) in [
            (
                RawServer {
                    tls_key: None,
                    ..pair.clone()
                },
                "tls-cert/tls-key",
            ),
            (
                RawServer {
                    tls_cert: None,
                    tls_key: None,
                    ..pair
                },
                "tls-client-ca",
            ),
        ] {
            match raw.validate() {
                Err(ConfigError::Invalid { setting: named, .. }) => assert_eq!(named, setting),
                other => panic!("expected an invalid {setting}, got {other:?}"),
            }
        }
        assert_eq!(RawServer::default().validate().expect("valid").tls, None);
    }

    /// The client's TLS settings need `tls`, a certificate needs its key; all print back.
    #[test]
    fn client_tls_settings_need_tls_and_print_back() {
        let stray = RawClient {
            ca: Some("/etc/s/ca.pem".into()),
            ..RawClient::default()
        };
        match stray.clone().validate() {
            Err(ConfigError::Invalid { setting, .. }) => assert_eq!(setting, "ca"),
            other => panic!("--ca without --tls must be invalid, got {other:?}"),
        }
        let half = RawClient {
            tls: Some(true),
            tls_cert: Some("/etc/s/client.pem".into()),
            ..stray.clone()
        };
        assert!(half.validate().is_err(), "a certificate without its key");
        let config = RawClient {
            tls: Some(true),
            tls_server_name: Some("collector.example".into()),
            ..stray
        }
        .validate()
        .expect("valid");
        let tls = config.tls.clone().expect("TLS on");
        assert_eq!(tls.server_name.as_deref(), Some("collector.example"));
        assert_eq!(
            RawClient::from_config(&config)
                .validate()
                .expect("valid")
                .tls,
            config.tls
        );
    }

    fn long_help(command: &str) -> String {
        let mut cli = crate::cli::Cli::command();
        let sub = cli.find_subcommand_mut(command).expect("subcommand exists");
        sub.render_long_help().to_string()
    }

    /// Every `[default: …]` in `help` for the keys of `defaults` (except `skip`).
    fn assert_help_defaults<T: Serialize>(help: &str, defaults: &T, skip: &[&str]) {
        let table = toml::Table::try_from(defaults).expect("settings serialize as a table");
        for (key, value) in table {
            if skip.contains(&key.as_str()) {
                continue;
            }
            let shown = match value {
                toml::Value::String(text) => text,
                other => other.to_string(),
            };
            assert!(
                help.contains(&format!("[default: {shown}]")),
                "--{key} help lacks [default: {shown}]:\n{help}"
            );
        }
    }

    /// `--help` states the defaults by hand (no clap defaults, see [`RawServer`]): they must
    /// be the real ones.
    #[test]
    fn help_shows_the_real_defaults() {
        let help = long_help("server");
        assert!(help.contains("at most 50000]"), "{help}");
        let defaults = RawServer::from_config(&ServerConfig::default());
        assert!(
            help.contains("[default: token when the API asks for one, else open]"),
            "{help}"
        );
        assert_help_defaults(&help, &defaults, &["max-connections", "allow-legacy"]);
        // An empty list prints as `[]`; the help says `none`.
        assert!(help.contains("Others are closed [default: none]"), "{help}");

        let client = RawClient::default().validate().expect("defaults are valid");
        let help = long_help("client");
        assert!(help.contains("[default: this host's name]"), "{help}");
        assert_eq!(help.matches("[default: --timeout]").count(), 3, "{help}");
        assert_help_defaults(
            &help,
            &RawClient::from_config(&client),
            &[
                "sensor",
                "connect-timeout",
                "drain-timeout",
                "write-timeout",
            ],
        );
    }

    /// One environment variable must not set two different things: a shell that exports
    /// the server's `SENSORLINK_WRITE_TIMEOUT` must not change its clients. Shared on
    /// purpose: `SENSORLINK_CONFIG` (one file, a table per command) and `SENSORLINK_STORE`
    /// (the server writes the store that `query` and `stats` read), `SENSORLINK_TOKEN` (the
    /// one token of this sensor: `client` presents it, `probe` signs with it).
    #[test]
    fn no_environment_variable_means_two_settings() {
        let cli = crate::cli::Cli::command();
        let shared = ["SENSORLINK_CONFIG", "SENSORLINK_STORE", "SENSORLINK_TOKEN"];
        let mut seen: std::collections::BTreeMap<String, String> = Default::default();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let Some(env) = arg.get_env() else { continue };
                let env = env.to_string_lossy().into_owned();
                let owner = format!("{} --{}", sub.get_name(), arg.get_id());
                if shared.contains(&env.as_str()) {
                    continue;
                }
                if let Some(first) = seen.insert(env.clone(), owner.clone()) {
                    panic!("{env} is read by both `{first}` and `{owner}`");
                }
            }
        }
        assert_eq!(
            seen.get("SENSORLINK_CLIENT_WRITE_TIMEOUT")
                .map(String::as_str),
            Some("client --write_timeout")
        );
    }

    /// `--token` never shows: not in `--print-config`, not in any `Debug`; from the file it
    /// is read, and with `--legacy` it is refused.
    #[test]
    fn the_client_token_is_never_printed() {
        use clap::Parser as _;
        let secret = "sl_abcd1234_s3cr3tS3cr3t";
        let cli = crate::cli::Cli::try_parse_from(["sensorlink", "client", "--token", secret])
            .expect("parses");
        let crate::cli::Command::Client(args) = cli.command else {
            panic!("not the client command");
        };
        assert!(!format!("{:?}", args.settings).contains(secret));
        let config = client_config(args.settings, None).expect("valid");
        assert_eq!(config.token.as_ref().map(|t| t.expose()), Some(secret));
        assert!(!format!("{config:?}").contains(secret));
        let printed = print_client(&config).expect("printable");
        assert!(
            !printed.contains(secret) && !printed.contains("token"),
            "{printed}"
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("client.toml");
        std::fs::write(&path, format!("[client]\ntoken = \"{secret}\"\n")).expect("write");
        let from_file = client_config(RawClient::default(), Some(&path)).expect("valid");
        assert_eq!(from_file.token.as_ref().map(|t| t.expose()), Some(secret));

        let err = RawClient {
            legacy: Some(true),
            token: Some(crate::protocol::control::AuthSecret::new(secret)),
            ..RawClient::default()
        }
        .validate()
        .expect_err("token with legacy");
        assert!(
            err.to_string()
                .starts_with("invalid token (given): accepted only without legacy"),
            "{err}"
        );
        assert!(!err.to_string().contains(secret));
    }

    /// `--allow-legacy` takes CIDR networks (repeated or comma-separated), prints back, and
    /// refuses what is not one.
    #[test]
    fn allow_legacy_networks() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "sensorlink",
            "server",
            "--allow-legacy",
            "10.0.0.0/8,192.168.1.7",
            "--allow-legacy",
            "fd00::/8",
        ])
        .expect("parses");
        let crate::cli::Command::Server(args) = cli.command else {
            panic!("not the server command");
        };
        let config = args.settings.validate().expect("valid");
        let nets: Vec<String> = config
            .allow_legacy
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]);
        let printed = print_server(&config).expect("printable");
        assert!(
            printed.contains("allow-legacy = [\"10.0.0.0/8\", \"192.168.1.7/32\", \"fd00::/8\"]"),
            "{printed}"
        );
        let err = RawServer {
            allow_legacy: Some(vec!["10.0.0.0/40".into()]),
            ..RawServer::default()
        }
        .validate()
        .expect_err("bad prefix");
        assert!(
            err.to_string()
                .starts_with("invalid allow-legacy 10.0.0.0/40"),
            "{err}"
        );
        // In the file, as printed or with an underscore.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("server.toml");
        for key in ["allow-legacy", "allow_legacy"] {
            std::fs::write(&path, format!("[server]\n{key} = [\"10.0.0.0/8\"]\n")).expect("write");
            let config = server_config(RawServer::default(), Some(&path), None).expect("valid");
            let nets: Vec<String> = config
                .allow_legacy
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(nets, ["10.0.0.0/8"], "{key}");
        }
    }

    /// `--proxy-protocol-from` takes networks like `--allow-legacy`, prints back, and is
    /// refused without `--proxy-protocol v2` (it would silently guard nothing).
    #[test]
    fn proxy_protocol_from_networks() {
        use crate::server::proxy_protocol::ProxyProtocol;
        let config = RawServer {
            proxy_protocol: Some(ProxyProtocol::V2),
            proxy_protocol_from: Some(vec!["10.0.0.5".into(), " fd00::/8".into()]),
            ..RawServer::default()
        }
        .validate()
        .expect("valid");
        let nets: Vec<String> = config
            .proxy_protocol_from
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.0.0.5/32", "fd00::/8"]);
        let printed = print_server(&config).expect("printable");
        assert!(
            printed.contains("proxy-protocol-from = [\"10.0.0.5/32\", \"fd00::/8\"]"),
            "{printed}"
        );
        // Without the list: any peer, and nothing printed for it.
        let any = RawServer {
            proxy_protocol: Some(ProxyProtocol::V2),
            ..RawServer::default()
        }
        .validate()
        .expect("valid");
        assert!(any.proxy_protocol_from.is_empty());
        assert!(!print_server(&any)
            .expect("printable")
            .contains("proxy-protocol-from"));
        let err = RawServer {
            proxy_protocol_from: Some(vec!["10.0.0.5".into()]),
            ..RawServer::default()
        }
        .validate()
        .expect_err("without v2");
        assert!(
            err.to_string().starts_with(
                "invalid proxy-protocol-from 10.0.0.5/32: accepted only with proxy-protocol v2"
            ),
            "{err}"
        );
        let err = RawServer {
            proxy_protocol: Some(ProxyProtocol::V2),
            proxy_protocol_from: Some(vec!["haproxy.internal".into()]),
            ..RawServer::default()
        }
        .validate()
        .expect_err("a name, not an address");
        assert!(
            err.to_string()
                .starts_with("invalid proxy-protocol-from haproxy.internal"),
            "{err}"
        );
    }

    #[test]
    fn client_settings_validate_and_print_back() {
        let file = "[client]\naddr = \"10.0.0.1:8889\"\nlegacy = true\ninterval = \"250ms\"\nsource = \"exec:echo 1\"\n";
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("client.toml");
        std::fs::write(&path, file).expect("write config");
        let flags = RawClient {
            count: Some(3),
            ..RawClient::default()
        };
        let config = client_config(flags, Some(&path)).expect("valid");
        assert!(config.legacy);
        assert_eq!(config.count, Some(3));
        assert_eq!(config.interval, Duration::from_millis(250));
        assert_eq!(config.source, SourceSpec::Exec("echo 1".into()));
        let printed = print_client(&config).expect("printable");
        std::fs::write(&path, &printed).expect("write printed");
        let again = client_config(RawClient::default(), Some(&path)).expect("printed is valid");
        assert_eq!(print_client(&again).expect("printable"), printed);

        let err = RawClient {
            max_pending: Some(0),
            ..RawClient::default()
        }
        .validate()
        .expect_err("zero pending");
        assert_eq!(
            err.to_string(),
            "invalid max-pending 0: accepted 1 to 100000000"
        );
        let err = RawClient {
            legacy: Some(true),
            spool: Some("/tmp/spool".into()),
            ..RawClient::default()
        }
        .validate()
        .expect_err("spool with legacy");
        assert!(err
            .to_string()
            .starts_with("invalid spool /tmp/spool: accepted only without legacy"));
    }

    /// `link-report` (the flag's name) and `link_report` (issue 9's contract) both set it;
    /// `report` takes only the picture formats; both print back.
    #[test]
    fn link_report_and_report_settings() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("client.toml");
        for key in ["link-report", "link_report"] {
            let file = format!("[client]\n{key} = \"2s\"\nreport = \"run.svg\"\n");
            std::fs::write(&path, file).expect("write config");
            let config = client_config(RawClient::default(), Some(&path)).expect("valid");
            assert_eq!(config.link_report, Duration::from_secs(2), "{key}");
            assert_eq!(config.report, Some(PathBuf::from("run.svg")));
            let printed = print_client(&config).expect("printable");
            assert!(printed.contains("link-report = \"2s\"\n"), "{printed}");
            assert!(printed.contains("report = \"run.svg\"\n"), "{printed}");
        }
        let defaults = RawClient::default().validate().expect("defaults are valid");
        assert_eq!(defaults.link_report, Duration::from_secs(10));
        assert_eq!(defaults.report, None);
        let off = RawClient {
            link_report: Some(Duration::ZERO),
            ..RawClient::default()
        };
        assert_eq!(
            off.validate().expect("0 disables").link_report,
            Duration::ZERO
        );
        for tiny in [Duration::from_nanos(1), Duration::from_millis(99)] {
            let err = RawClient {
                link_report: Some(tiny),
                ..RawClient::default()
            }
            .validate()
            .expect_err("too often");
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid link-report {}: accepted 0 (off), or 100ms to 1day",
                    humantime::format_duration(tiny)
                )
            );
        }
        let fastest = RawClient {
            link_report: Some(Duration::from_millis(100)),
            ..RawClient::default()
        };
        assert_eq!(
            fastest.validate().expect("100ms is enough").link_report,
            Duration::from_millis(100)
        );
        let err = RawClient {
            measurement: Some("sensorlink_link".into()),
            ..RawClient::default()
        }
        .validate()
        .expect_err("reserved measurement");
        assert_eq!(
            err.to_string(),
            "invalid measurement sensorlink_link: accepted any name but sensorlink_link \
             (reserved for link reports)"
        );
        let err = RawClient {
            report: Some("run.gif".into()),
            ..RawClient::default()
        }
        .validate()
        .expect_err("not a picture format");
        assert_eq!(
            err.to_string(),
            "invalid report run.gif: accepted a file name ending in .svg or .png"
        );
    }
}
