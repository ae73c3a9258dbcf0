//! The client's settings (`[client]` in the file): the raw layer [`RawClient`] (flags,
//! environment, file), its validation into [`ClientConfig`], and `--print-config`. Checks
//! that only the client needs (link-report interval, reserved measurement, report file
//! name) live here, beside the fields they check.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::forms::{human_duration, source_spec};
use super::{in_range, limits, non_empty, printable_path, socket_address, ConfigError, ConfigFile};
use crate::client::link::LINK_MEASUREMENT;
use crate::client::source::SourceSpec;
use crate::client::{ClientConfig, ClientTls};
use crate::protocol::control::AuthSecret;

/// Client settings as one source gives them: `None` means "not said here" (see
/// [`RawServer`]). Switches take `--legacy`, `--legacy=false`, or `legacy = true` in the file.
#[derive(Debug, Default, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawClient {
    /// Collector addresses (HOST:PORT), one or more (or SENSORLINK_SERVERS=a,b, which
    /// SERVER… or --server replace, not add to); with several the client fails over
    /// between them: it starts on the one its --sensor name hashes to (so a fleet spreads
    /// over the list; random with no name), moves on to the next at once when a connection
    /// cannot be made (after a jitter of up to 100 ms when a live one drops), backs off
    /// (--max-backoff) only after a whole round failed, and stays on one that works (an
    /// ack and 1 s up). Unacknowledged readings are resent on the next server, in order.
    /// Adds up with --server [default: 127.0.0.1:8889].
    // SENSORLINK_SERVERS is read apart (`env_layer`): clap would fill this from it even
    // beside --server, and the two would add up instead of the flags winning.
    #[arg(value_name = "SERVER", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<String>>,
    /// Another collector address (repeatable), after the SERVER arguments.
    #[arg(long = "server", value_name = "ADDR")]
    #[serde(skip)]
    pub server: Vec<String>,
    /// One collector address: the file's `addr = "…"` (and `SENSORLINK_ADDR`), the same as
    /// `servers = ["…"]` but only a fallback: a list given in any layer (SERVER…,
    /// --server, SENSORLINK_SERVERS, the file's `servers`) wins over it, so a leftover
    /// SENSORLINK_ADDR never turns a file's failover list off. The file may not give both.
    #[arg(
        long = "addr",
        value_name = "ADDR",
        env = "SENSORLINK_ADDR",
        hide = true
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Sensor name sent as the `sensor` tag [default: this host's name] (with --token: none,
    /// the readings go untagged and the server files them under the token's one sensor).
    #[arg(long, env = "SENSORLINK_SENSOR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor: Option<String>,
    /// Measurement name of the readings (not `sensorlink_link`: link reports' own)
    /// [default: reading].
    #[arg(long, env = "SENSORLINK_MEASUREMENT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// Time between readings (e.g. 1s, 250ms, at least 1ms); 0 is ping-pong: one reading
    /// in flight, the next sent as soon as the previous one is acked (latency measurement;
    /// a spool backlog and resends also go one per round trip) [default: 1s].
    #[arg(short, long, env = "SENSORLINK_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// Stop after this many readings (default: run until Ctrl-C or the source ends).
    #[arg(short, long, env = "SENSORLINK_COUNT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Reply timeout: a reading not acknowledged within this time after it was sent is
    /// reported (a timeout) and resent on a new connection; it is lost only if never
    /// acknowledged [default: 10s].
    #[arg(short = 'W', long, env = "SENSORLINK_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Bounds opening a connection (TCP connect and the first pong), and how long the first
    /// connection may take before the server counts as unreachable (with several: judged
    /// after a whole round of addresses) [default: --timeout].
    #[arg(long, env = "SENSORLINK_CONNECT_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    /// Once the source ends (or on Ctrl-C/SIGTERM): how long to keep delivering pending
    /// readings before they are reported lost [default: --timeout]. While offline it gives
    /// up only once every server address was tried since it began (a backoff is cut short
    /// for that; each such try gets its --connect-timeout, and a connection it makes gets
    /// a drain timeout of its own).
    #[arg(long, env = "SENSORLINK_DRAIN_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub drain_timeout: Option<Duration>,
    /// Reconnect when the server takes none of our bytes for this long [default: --timeout].
    /// (`SENSORLINK_WRITE_TIMEOUT` is the server's write timeout; this one has its own name.)
    #[arg(long, env = "SENSORLINK_CLIENT_WRITE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub write_timeout: Option<Duration>,
    /// Speak the seed client's exact bytes (`ping`, `ping / ('<time>', <n>)`) [default: false].
    #[arg(long, env = "SENSORLINK_LEGACY", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy: Option<bool>,
    /// One JSON object per event on stdout, and the summary as JSON [default: false].
    #[arg(long, env = "SENSORLINK_JSON", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<bool>,
    /// Where values come from: counter, random, exec:CMD, file:PATH, stdin [default: counter].
    #[arg(long, env = "SENSORLINK_SOURCE")]
    #[serde(default, with = "source_spec", skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// Most readings kept in memory while unacknowledged (without --spool); beyond it the
    /// oldest is dropped (and reported) [default: 100000].
    #[arg(long, env = "SENSORLINK_MAX_PENDING")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<usize>,
    /// Keep unacknowledged readings in this directory, so they survive a client restart
    /// and are sent (in order, with their original timestamps) once the server is back.
    #[arg(long, env = "SENSORLINK_SPOOL")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<PathBuf>,
    /// Most bytes the spool keeps; beyond it the oldest readings are dropped (and reported)
    /// [default: 1073741824].
    #[arg(long, env = "SENSORLINK_SPOOL_MAX_BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_max_bytes: Option<u64>,
    /// Readings older than this are dropped from the spool (and reported), e.g. `7d`.
    #[arg(long, env = "SENSORLINK_SPOOL_MAX_AGE", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub spool_max_age: Option<Duration>,
    /// Longest wait between reconnect attempts (with several servers: between rounds; the
    /// next address is tried at once) [default: 30s].
    #[arg(long, env = "SENSORLINK_MAX_BACKOFF", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_backoff: Option<Duration>,
    /// Every INTERVAL, and once at the end of a run, send a `sensorlink_link` reading with
    /// the link's health over the interval (RTT p50/p99/max, sent, acked, lost, timeouts,
    /// reconnects); 0 disables, else at least 100ms. Ignored with --legacy (the seed's messages cannot carry it)
    /// [default: 10s].
    #[arg(long, env = "SENSORLINK_CLIENT_LINK_REPORT", value_parser = humantime::parse_duration)]
    #[serde(
        default,
        alias = "link_report",
        with = "human_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub link_report: Option<Duration>,
    /// At the end of the run, draw it into FILE (`.svg` or `.png`): RTT over time with
    /// timeouts, losses and reconnects marked, the RTT histogram with p50/p90/p99, and the
    /// summary. Text is set in DejaVu Sans (Debian: fonts-dejavu-core), read at run time.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_CLIENT_REPORT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<PathBuf>,
    /// Connect over TLS [default: false].
    #[arg(long, env = "SENSORLINK_TLS", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// With --tls: trust the server certificates this CA (PEM) signed [default: the
    /// Mozilla roots compiled in].
    #[arg(long, value_name = "FILE", env = "SENSORLINK_TLS_CA")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// With --tls: the name the server's certificate must carry [default: the host part of
    /// --addr].
    #[arg(long, value_name = "NAME", env = "SENSORLINK_TLS_SERVER_NAME")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// With --tls: present this client certificate (PEM) when the server asks (mutual TLS);
    /// needs --tls-key.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_CLIENT_TLS_CERT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_CLIENT_TLS_KEY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Present this token (`sensorlink token new` printed it) on every connection, for a
    /// server with --auth; --sensor must be one the token may write. Not with --legacy.
    /// Never printed (--print-config leaves it out).
    #[arg(long, value_name = "TOKEN", env = "SENSORLINK_TOKEN", value_parser = secret_parser, hide_env_values = true)]
    #[serde(default, skip_serializing, deserialize_with = "secret_from_text")]
    pub token: Option<AuthSecret>,
}

/// `--token`: taken as given (the server judges it), wrapped so no `Debug` shows it.
fn secret_parser(text: &str) -> Result<AuthSecret, String> {
    if text.is_empty() {
        return Err("empty token".into());
    }
    Ok(AuthSecret::new(text))
}

/// `token = "…"` in the file.
fn secret_from_text<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> Result<Option<AuthSecret>, D::Error> {
    Option::<String>::deserialize(de).map(|text| text.map(AuthSecret::new))
}

impl RawClient {
    /// Each field from `self`, or from `lower` where `self` says nothing.
    pub fn or(self, lower: RawClient) -> RawClient {
        // A list (SERVER… and --server add up, within one layer) replaces a lower layer's
        // list; a lone `addr` is only the fallback when no layer gives a list.
        let gives_list = |raw: &RawClient| raw.servers.is_some() || !raw.server.is_empty();
        let (servers, server) = if gives_list(&self) {
            (self.servers, self.server)
        } else {
            (lower.servers, lower.server)
        };
        RawClient {
            addr: self.addr.or(lower.addr),
            servers,
            server,
            sensor: self.sensor.or(lower.sensor),
            measurement: self.measurement.or(lower.measurement),
            interval: self.interval.or(lower.interval),
            count: self.count.or(lower.count),
            timeout: self.timeout.or(lower.timeout),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            drain_timeout: self.drain_timeout.or(lower.drain_timeout),
            write_timeout: self.write_timeout.or(lower.write_timeout),
            legacy: self.legacy.or(lower.legacy),
            json: self.json.or(lower.json),
            source: self.source.or(lower.source),
            max_pending: self.max_pending.or(lower.max_pending),
            spool: self.spool.or(lower.spool),
            spool_max_bytes: self.spool_max_bytes.or(lower.spool_max_bytes),
            spool_max_age: self.spool_max_age.or(lower.spool_max_age),
            max_backoff: self.max_backoff.or(lower.max_backoff),
            link_report: self.link_report.or(lower.link_report),
            report: self.report.or(lower.report),
            tls: self.tls.or(lower.tls),
            ca: self.ca.or(lower.ca),
            tls_server_name: self.tls_server_name.or(lower.tls_server_name),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            token: self.token.or(lower.token),
        }
    }

    /// Validate into the client's settings; unset fields take their defaults.
    ///
    /// # Errors
    /// The first setting out of its accepted range, or `spool` together with `legacy`.
    pub fn validate(self) -> Result<ClientConfig, ConfigError> {
        let legacy = self.legacy.unwrap_or(false);
        if legacy {
            if let Some(spool) = &self.spool {
                return Err(ConfigError::Invalid {
                    setting: "spool",
                    value: spool.display().to_string(),
                    accepted:
                        "only without legacy (the seed's messages carry no sequence to resend by)"
                            .into(),
                });
            }
            if self.token.is_some() {
                return Err(ConfigError::Invalid {
                    setting: "token",
                    value: "(given)".into(),
                    accepted: "only without legacy (the seed's protocol has no way to send it)"
                        .into(),
                });
            }
        }
        let tls = client_tls(
            self.tls.unwrap_or(false),
            self.ca,
            self.tls_server_name,
            self.tls_cert,
            self.tls_key,
        )?;
        // The other timeouts default to this one.
        let reply_timeout = in_range(
            "timeout",
            self.timeout.unwrap_or(Duration::from_secs(10)),
            limits::TIMEOUT,
        )?;
        Ok(ClientConfig {
            servers: server_list(self.addr, self.servers, self.server)?,
            sensor: match self.sensor {
                Some(name) => Some(non_empty("sensor", name)?),
                // A token names its sensor: the server files untagged readings under it, so
                // the host name (which the token may not write) is not guessed.
                None if self.token.is_some() => None,
                None => Some(gethostname::gethostname().to_string_lossy().into_owned()),
            },
            measurement: user_measurement(self.measurement.unwrap_or_else(|| "reading".into()))?,
            interval: reading_interval(self.interval.unwrap_or(Duration::from_secs(1)))?,
            // 0 is useful: replay the spool, send nothing new.
            count: self.count,
            reply_timeout,
            connect_timeout: in_range(
                "connect-timeout",
                self.connect_timeout.unwrap_or(reply_timeout),
                limits::TIMEOUT,
            )?,
            drain_timeout: in_range(
                "drain-timeout",
                self.drain_timeout.unwrap_or(reply_timeout),
                limits::TIMEOUT,
            )?,
            write_timeout: in_range(
                "write-timeout",
                self.write_timeout.unwrap_or(reply_timeout),
                limits::TIMEOUT,
            )?,
            legacy,
            json: self.json.unwrap_or(false),
            source: self.source.unwrap_or(SourceSpec::Counter),
            max_pending: in_range(
                "max-pending",
                self.max_pending.unwrap_or(100_000),
                limits::MAX_PENDING,
            )?,
            max_backoff: in_range(
                "max-backoff",
                self.max_backoff.unwrap_or(Duration::from_secs(30)),
                limits::MAX_BACKOFF,
            )?,
            spool: self.spool,
            spool_max_bytes: in_range(
                "spool-max-bytes",
                self.spool_max_bytes.unwrap_or(1 << 30),
                limits::SPOOL_MAX_BYTES,
            )?,
            spool_max_age: self
                .spool_max_age
                .map(|age| in_range("spool-max-age", age, limits::SPOOL_MAX_AGE))
                .transpose()?,
            link_report: link_report_interval(self.link_report.unwrap_or(Duration::from_secs(10)))?,
            report: self
                .report
                .map(|path| {
                    crate::plot::Format::of(&path)
                        .map(|_| path.clone())
                        .ok_or_else(|| ConfigError::Invalid {
                            setting: "report",
                            value: path.display().to_string(),
                            accepted: "a file name ending in .svg or .png".into(),
                        })
                })
                .transpose()?,
            tls,
            token: self.token,
        })
    }

    /// The raw layer that says exactly `config`: what `--print-config` prints.
    pub fn from_config(config: &ClientConfig) -> RawClient {
        // One server prints as it always did (`addr`), several as the list.
        let (addr, servers) = match config.servers.as_slice() {
            [one] => (Some(one.clone()), None),
            several => (None, Some(several.to_vec())),
        };
        RawClient {
            addr,
            servers,
            server: Vec::new(),
            sensor: config.sensor.clone(),
            measurement: Some(config.measurement.clone()),
            interval: Some(config.interval),
            count: config.count,
            timeout: Some(config.reply_timeout),
            connect_timeout: Some(config.connect_timeout),
            drain_timeout: Some(config.drain_timeout),
            write_timeout: Some(config.write_timeout),
            legacy: Some(config.legacy),
            json: Some(config.json),
            source: Some(config.source.clone()),
            max_pending: Some(config.max_pending),
            spool: config.spool.clone(),
            spool_max_bytes: Some(config.spool_max_bytes),
            spool_max_age: config.spool_max_age,
            max_backoff: Some(config.max_backoff),
            link_report: Some(config.link_report),
            report: config.report.clone(),
            tls: Some(config.tls.is_some()),
            ca: config.tls.as_ref().and_then(|tls| tls.ca.clone()),
            tls_server_name: config.tls.as_ref().and_then(|tls| tls.server_name.clone()),
            tls_cert: config
                .tls
                .as_ref()
                .and_then(|tls| tls.identity.as_ref().map(|(cert, _)| cert.clone())),
            tls_key: config
                .tls
                .as_ref()
                .and_then(|tls| tls.identity.as_ref().map(|(_, key)| key.clone())),
            // A secret: never printed.
            token: None,
        }
    }
}

/// The collector addresses: the list (SERVER… then --server, or `servers`) or else `addr`,
/// each a valid address and none twice; the default one when none is given.
fn server_list(
    addr: Option<String>,
    servers: Option<Vec<String>>,
    server: Vec<String>,
) -> Result<Vec<String>, ConfigError> {
    let gave_list = servers.is_some() || !server.is_empty();
    let list: Vec<String> = servers
        .unwrap_or_default()
        .into_iter()
        .chain(server)
        .collect();
    if gave_list && list.is_empty() {
        // `servers = []`: falling back to the default address would hide the mistake.
        return Err(ConfigError::Invalid {
            setting: "servers",
            value: "[]".into(),
            accepted: "at least one address".into(),
        });
    }
    if list.is_empty() {
        return Ok(vec![match addr {
            Some(addr) => socket_address("addr", addr)?,
            None => format!("127.0.0.1:{}", crate::DEFAULT_PORT),
        }]);
    }
    let mut valid: Vec<String> = Vec::with_capacity(list.len());
    for address in list {
        let address = socket_address("server", address)?;
        if valid.contains(&address) {
            return Err(ConfigError::Invalid {
                setting: "server",
                value: format!("{address:?}"),
                accepted: "each address once".into(),
            });
        }
        valid.push(address);
    }
    Ok(valid)
}

/// The client's TLS settings: the others only with `tls`, a certificate only with its key.
fn client_tls(
    tls: bool,
    ca: Option<PathBuf>,
    server_name: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<ClientTls>, ConfigError> {
    if !tls {
        let stray = [
            ("ca", ca.map(|p| p.display().to_string())),
            ("tls-server-name", server_name),
            ("tls-cert", cert.map(|p| p.display().to_string())),
            ("tls-key", key.map(|p| p.display().to_string())),
        ];
        return match stray.into_iter().find_map(|(name, v)| v.map(|v| (name, v))) {
            Some((setting, value)) => Err(ConfigError::Invalid {
                setting,
                value,
                accepted: "only with --tls".into(),
            }),
            None => Ok(None),
        };
    }
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(path), None) | (None, Some(path)) => {
            return Err(ConfigError::Invalid {
                setting: "tls-cert/tls-key",
                value: path.display().to_string(),
                accepted: "--tls-cert and --tls-key together".into(),
            })
        }
    };
    Ok(Some(ClientTls {
        ca,
        server_name,
        identity,
    }))
}

/// The client's settings from `flags` (and environment) over the `[client]` table of `file`.
///
/// # Errors
/// The file cannot be used, or a setting is out of range.
pub fn client_config(flags: RawClient, file: Option<&Path>) -> Result<ClientConfig, ConfigError> {
    let from_file = match file {
        Some(path) => {
            let raw = ConfigFile::load(path)?.client.unwrap_or_default();
            if let (Some(addr), Some(_)) = (&raw.addr, &raw.servers) {
                return Err(ConfigError::Invalid {
                    setting: "addr",
                    value: format!("{addr:?}"),
                    accepted: format!(
                        "either addr or servers in [client] of {}, not both",
                        path.display()
                    ),
                });
            }
            raw
        }
        None => RawClient::default(),
    };
    let env = env_layer(std::env::var_os("SENSORLINK_SERVERS"))?;
    flags.or(env).or(from_file).validate()
}

/// The environment's addresses: `SENSORLINK_SERVERS=a,b` (empty: not set). A layer of its
/// own between the file and the flags, so SERVER… or --server replace it.
fn env_layer(servers: Option<std::ffi::OsString>) -> Result<RawClient, ConfigError> {
    let Some(servers) = servers.filter(|value| !value.is_empty()) else {
        return Ok(RawClient::default());
    };
    let servers = servers
        .into_string()
        .map_err(|value| ConfigError::Invalid {
            setting: "SENSORLINK_SERVERS",
            value: format!("{value:?}"),
            accepted: "UTF-8 addresses, comma-separated".into(),
        })?;
    Ok(RawClient {
        servers: Some(servers.split(',').map(|s| s.trim().to_string()).collect()),
        ..RawClient::default()
    })
}

/// `client --print-config`: the effective settings as a valid `--config` file.
///
/// # Errors
/// The spool's or the source file's path is not UTF-8: a TOML file cannot name it.
pub fn print_client(config: &ClientConfig) -> Result<String, ConfigError> {
    if let Some(spool) = &config.spool {
        printable_path("spool", spool)?;
    }
    if let SourceSpec::File(path) = &config.source {
        printable_path("source", path)?;
    }
    if let Some(report) = &config.report {
        printable_path("report", report)?;
    }
    if let Some(tls) = &config.tls {
        if let Some(ca) = &tls.ca {
            printable_path("ca", ca)?;
        }
        if let Some((cert, key)) = &tls.identity {
            printable_path("tls-cert", cert)?;
            printable_path("tls-key", key)?;
        }
    }
    let file = ConfigFile {
        client: Some(RawClient::from_config(config)),
        ..ConfigFile::default()
    };
    Ok(format!(
        "# sensorlink client: effective settings (defaults < file < environment < flags)\n{}",
        file.to_toml()?
    ))
}

/// `--link-report`: 0 (off), or within [`limits::LINK_REPORT`].
fn link_report_interval(interval: Duration) -> Result<Duration, ConfigError> {
    if interval.is_zero() {
        return Ok(interval);
    }
    in_range("link-report", interval, limits::LINK_REPORT).map_err(|err| match err {
        ConfigError::Invalid {
            setting,
            value,
            accepted,
        } => ConfigError::Invalid {
            setting,
            value,
            accepted: format!("0 (off), or {accepted}"),
        },
        other => other,
    })
}

/// `--interval`: 0 (ping-pong), or within [`limits::INTERVAL`].
fn reading_interval(interval: Duration) -> Result<Duration, ConfigError> {
    if interval.is_zero() {
        return Ok(interval);
    }
    in_range("interval", interval, limits::INTERVAL).map_err(|err| match err {
        ConfigError::Invalid { setting, value, .. } => ConfigError::Invalid {
            setting,
            value,
            accepted: "0 (ping-pong) or at least 1ms, up to 1day".to_string(),
        },
        other => other,
    })
}

/// `--measurement`: a non-empty name that is not the link reports' own (a spool replay
/// tells a report from a reading by its measurement).
fn user_measurement(name: String) -> Result<String, ConfigError> {
    if name == LINK_MEASUREMENT {
        return Err(ConfigError::Invalid {
            setting: "measurement",
            value: name,
            accepted: format!("any name but {LINK_MEASUREMENT} (reserved for link reports)"),
        });
    }
    non_empty("measurement", name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(value: Duration) -> Result<Duration, ConfigError> {
        RawClient {
            interval: Some(value),
            ..RawClient::default()
        }
        .validate()
        .map(|config| config.interval)
    }

    /// 0 is ping-pong and 1 ms is the shortest pace; between them there is no timer to
    /// honour it, so it is refused rather than silently rounded.
    #[test]
    fn interval_is_zero_or_at_least_a_millisecond() {
        assert_eq!(interval(Duration::ZERO).expect("ping-pong"), Duration::ZERO);
        let ms = Duration::from_millis(1);
        assert_eq!(interval(ms).expect("1ms"), ms);
        for tiny in [Duration::from_nanos(1), Duration::from_micros(999)] {
            let err = interval(tiny).expect_err("below 1ms");
            assert!(
                err.to_string()
                    .ends_with("accepted 0 (ping-pong) or at least 1ms, up to 1day"),
                "{err}"
            );
        }
        assert!(interval(Duration::from_secs(2 * 24 * 3600)).is_err());
    }

    fn servers(raw: RawClient) -> Result<Vec<String>, ConfigError> {
        raw.validate().map(|config| config.servers)
    }

    #[test]
    fn servers_come_from_arguments_then_server_flags_or_from_addr() {
        let list = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
        let raw = RawClient {
            servers: list(&["a:1", "b:2"]),
            server: vec!["c:3".into()],
            ..RawClient::default()
        };
        assert_eq!(servers(raw).expect("valid"), ["a:1", "b:2", "c:3"]);
        let raw = RawClient {
            addr: Some("a:1".into()),
            ..RawClient::default()
        };
        assert_eq!(servers(raw).expect("valid"), ["a:1"]);
        // SENSORLINK_ADDR beside a list on the command line: the list wins.
        let raw = RawClient {
            addr: Some("a:1".into()),
            server: vec!["b:2".into()],
            ..RawClient::default()
        };
        assert_eq!(servers(raw).expect("valid"), ["b:2"]);
        assert_eq!(
            servers(RawClient::default()).expect("valid"),
            [format!("127.0.0.1:{}", crate::DEFAULT_PORT)]
        );
    }

    #[test]
    fn a_layer_that_names_servers_replaces_the_lower_ones_addresses() {
        let file = RawClient {
            servers: Some(vec!["a:1".into(), "b:2".into()]),
            ..RawClient::default()
        };
        let flags = RawClient {
            server: vec!["c:3".into()],
            ..RawClient::default()
        };
        assert_eq!(servers(flags.or(file.clone())).expect("valid"), ["c:3"]);
        // A lone address (SENSORLINK_ADDR, say) above a list does not turn it off: the
        // list wins in whichever layer it is. See: review12 S4.
        let flags = RawClient {
            addr: Some("d:4".into()),
            ..RawClient::default()
        };
        assert_eq!(
            servers(flags.clone().or(file.clone())).expect("valid"),
            ["a:1", "b:2"]
        );
        // With no list anywhere, the highest layer's address.
        let file_addr = RawClient {
            addr: Some("e:5".into()),
            ..RawClient::default()
        };
        assert_eq!(servers(flags.or(file_addr)).expect("valid"), ["d:4"]);
        assert_eq!(
            servers(RawClient::default().or(file)).expect("valid"),
            ["a:1", "b:2"]
        );
    }

    #[test]
    fn the_flags_replace_the_environments_list_not_add_to_it() {
        let env = env_layer(Some("a:1, b:2".into())).expect("valid");
        assert_eq!(servers(env.clone()).expect("valid"), ["a:1", "b:2"]);
        let flags = RawClient {
            server: vec!["c:3".into()],
            ..RawClient::default()
        };
        assert_eq!(servers(flags.or(env.clone())).expect("valid"), ["c:3"]);
        // The environment over the file's list.
        let file = RawClient {
            servers: Some(vec!["d:4".into()]),
            ..RawClient::default()
        };
        assert_eq!(
            servers(RawClient::default().or(env).or(file)).expect("valid"),
            ["a:1", "b:2"]
        );
        assert_eq!(
            env_layer(Some("".into())).expect("valid"),
            RawClient::default()
        );
    }

    #[test]
    fn an_empty_server_list_is_an_error_not_the_default_address() {
        let raw = RawClient {
            servers: Some(Vec::new()),
            addr: Some("a:1".into()),
            ..RawClient::default()
        };
        let err = servers(raw).expect_err("empty");
        assert_eq!(
            err.to_string(),
            "invalid servers []: accepted at least one address"
        );
    }

    #[test]
    fn an_invalid_or_repeated_server_is_named() {
        let raw = RawClient {
            servers: Some(vec!["a:1".into(), "nope".into()]),
            ..RawClient::default()
        };
        let err = servers(raw).expect_err("invalid");
        assert!(
            err.to_string().starts_with("invalid server \"nope\": "),
            "{err}"
        );
        let raw = RawClient {
            servers: Some(vec!["a:1".into()]),
            server: vec!["a:1".into()],
            ..RawClient::default()
        };
        let err = servers(raw).expect_err("twice");
        assert_eq!(
            err.to_string(),
            "invalid server \"a:1\": accepted each address once"
        );
    }

    #[test]
    fn the_file_gives_servers_or_addr_not_both_and_prints_back_the_list() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("client.toml");
        std::fs::write(&path, "[client]\naddr = \"a:1\"\nservers = [\"b:2\"]\n").expect("write");
        let err = client_config(RawClient::default(), Some(&path)).expect_err("both");
        assert!(err.to_string().contains("either addr or servers"), "{err}");
        std::fs::write(&path, "[client]\nservers = [\"b:2\", \"c:3\"]\n").expect("write");
        let config = client_config(RawClient::default(), Some(&path)).expect("valid");
        assert_eq!(config.servers, ["b:2", "c:3"]);
        let printed = print_client(&config).expect("printable");
        assert!(
            printed.contains("servers = [\"b:2\", \"c:3\"]"),
            "{printed}"
        );
        std::fs::write(&path, &printed).expect("write");
        let again = client_config(RawClient::default(), Some(&path)).expect("reads back");
        assert_eq!(again.servers, config.servers);
    }
}
