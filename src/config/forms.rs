//! How setting values are written: in `--help`/clap, in the TOML file (serde `with`
//! modules), and in error messages; and the address forms (`IP:PORT`, `HOST:PORT`, `off`).
//! Kept apart so `config.rs` reads as the settings alone.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};

use super::{ConfigError, HTTP_OFF};
use crate::http::access::{Guard, HttpAuth};
use crate::store::FsyncPolicy;

/// How a value is written in messages: as the user would write it.
pub(super) trait ShowValue {
    fn show(&self) -> String;
}

impl ShowValue for usize {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl ShowValue for u32 {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl ShowValue for u64 {
    fn show(&self) -> String {
        self.to_string()
    }
}

impl ShowValue for Duration {
    fn show(&self) -> String {
        humantime::format_duration(*self).to_string()
    }
}

/// `--fsync` values (the store's own names), with their help, without tying the store's
/// type to clap.
pub(super) fn fsync_parser() -> impl clap::builder::TypedValueParser<Value = FsyncPolicy> {
    let help = |policy| match policy {
        FsyncPolicy::Always => {
            "fsync at every commit: an acked reading survives a power cut (default)"
        }
        FsyncPolicy::Os => "the OS writes back later: an acked reading survives a crash only",
    };
    PossibleValuesParser::new(
        FsyncPolicy::ALL.map(|(policy, name)| PossibleValue::new(name).help(help(policy))),
    )
    .try_map(|name| name.parse::<FsyncPolicy>())
}

/// `--http-auth` values, with their help.
pub(super) fn http_auth_parser() -> impl clap::builder::TypedValueParser<Value = HttpAuth> {
    let help = |mode| match mode {
        HttpAuth::Auto => "a token when --http listens beyond loopback (default)",
        HttpAuth::Token => "always a token (needs --auth)",
        HttpAuth::Open => "never a token (beyond loopback, only with --http-insecure)",
    };
    PossibleValuesParser::new(
        HttpAuth::ALL.map(|(mode, name)| PossibleValue::new(name).help(help(mode))),
    )
    .try_map(|name| name.parse::<HttpAuth>())
}

/// `--metrics-auth` values.
pub(super) fn metrics_auth_parser() -> impl clap::builder::TypedValueParser<Value = Guard> {
    PossibleValuesParser::new(Guard::ALL.map(|(_, name)| PossibleValue::new(name)))
        .try_map(|name| name.parse::<Guard>())
}

/// `fsync = "always" | "os"` in the file, with this module's error wording.
pub(super) mod fsync_names {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::store::FsyncPolicy;

    pub fn serialize<S: Serializer>(value: &Option<FsyncPolicy>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(policy) => s.serialize_str(policy.name()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FsyncPolicy>, D::Error> {
        let name = String::deserialize(d)?;
        name.parse::<FsyncPolicy>().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "invalid fsync {name:?}: accepted \"always\" or \"os\""
            ))
        })
    }
}

/// Durations written the human way in the file: `"10s"`, `"250ms"`, `"5m"`.
pub(super) mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map(Some).map_err(|err| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({err}); write e.g. \"10s\", \"250ms\", \"5m\""
            ))
        })
    }
}

/// `source = "counter" | "random" | "exec:CMD" | "file:PATH" | "stdin"` in the file.
pub(super) mod source_spec {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::client::source::SourceSpec;

    /// The `--source` text that parses back to `spec`.
    pub fn text(spec: &SourceSpec) -> String {
        match spec {
            SourceSpec::Counter => "counter".into(),
            SourceSpec::Random => "random".into(),
            SourceSpec::Stdin => "stdin".into(),
            SourceSpec::Exec(cmd) => format!("exec:{cmd}"),
            SourceSpec::File(path) => format!("file:{}", path.display()),
        }
    }

    pub fn serialize<S: Serializer>(value: &Option<SourceSpec>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(spec) => s.serialize_str(&text(spec)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SourceSpec>, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// Types with `FromStr` + `Display` (store URLs) as strings in the file.
pub(super) mod display_from_str {
    use super::{Display, FromStr};
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(
        value: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

/// `address` if it is `IP:PORT` or `HOST:PORT` (resolved when used), else the error.
pub(super) fn socket_address(
    setting: &'static str,
    address: String,
) -> Result<String, ConfigError> {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(address);
    }
    let host_port_ok = address.rsplit_once(':').is_some_and(|(host, port)| {
        // A bare IPv6 address needs brackets to carry a port.
        !host.is_empty() && !host.contains(':') && port.parse::<u16>().is_ok()
    });
    if host_port_ok {
        Ok(address)
    } else {
        Err(ConfigError::Invalid {
            setting,
            value: format!("{address:?}"),
            accepted: "IP:PORT or HOST:PORT, e.g. 0.0.0.0:8889, [::1]:8889, localhost:8889".into(),
        })
    }
}

/// `--http`: `off`, or an address as [`socket_address`] accepts.
pub(super) fn http_address(address: String) -> Result<Option<String>, ConfigError> {
    if address == HTTP_OFF {
        return Ok(None);
    }
    socket_address("http", address)
        .map(Some)
        .map_err(|err| match err {
            ConfigError::Invalid { setting, value, .. } => ConfigError::Invalid {
                setting,
                value,
                accepted: format!(
                    "{HTTP_OFF}, IP:PORT or HOST:PORT, e.g. 127.0.0.1:9889, [::1]:9889, localhost:0"
                ),
            },
            other => other,
        })
}
