//! `sensorlink probe` flags (clap) and their validation into a [`ProbeConfig`].

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use clap::Args;

use super::wire::{Signer, MAX_PROBE_BYTES, MIN_PROBE_BYTES};
use crate::protocol::control::AuthSecret;

/// Most probes in one run: each holds a few dozen bytes until the summary.
pub const MAX_PROBES: u64 = 2_000_000;
/// Shortest `--interval`, as the client's: 1000 probes/s, which a default server's
/// `--udp-rate-per-ip` (2000/s) serves with room for a second prober behind the same address.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// Longest `--interval`.
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The server (`host:port`; the port defaults to 8889): its sensor port number, over UDP.
    pub addr: String,
    /// Time between probes (at least 1ms): probe k leaves at start + k × interval, whatever
    /// happened before. A server drops probes beyond its --udp-rate-per-ip per second
    /// (default 2000); the summary counts those as `rate_limited`, apart from the loss.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long to send [default: 10s]; the run then waits --wait for the last replies.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// Send this many probes instead of sending for --duration.
    #[arg(long)]
    pub count: Option<u64>,
    /// Bytes of each probe (and of its reply), UDP payload.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// One JSON object per line (live lines, then `{"event":"summary",…}`).
    #[arg(long)]
    pub json: bool,
    /// Sign the probes with this token, for a server with --auth.
    #[arg(long, env = "SENSORLINK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// At the end, send the summary to the server (TCP, line protocol) as a
    /// `sensorlink_link` reading tagged `probe=udp`.
    #[arg(long)]
    pub store: bool,
    /// The sensor the --store reading is filed under [default: this host's name; with
    /// --token, the token's sensor].
    #[arg(long)]
    pub sensor: Option<String>,
    /// With --store: the server's sensor port serves TLS (the probes stay plain UDP).
    #[arg(long)]
    pub tls: bool,
    /// With --tls: trust the server certificates this CA (PEM) signed [default: the
    /// Mozilla roots compiled in].
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca: Option<std::path::PathBuf>,
    /// With --tls: the name the server's certificate must carry [default: the host part of
    /// ADDR].
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
    /// How long to wait for replies after the last probe [default: 3 × the largest round
    /// trip seen, at least 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
}

/// Validated `probe` settings.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    /// As given (for messages and `--store`'s TCP connection).
    pub addr: String,
    /// Resolved.
    pub target: SocketAddr,
    pub interval: Duration,
    pub count: u64,
    pub size: usize,
    pub json: bool,
    pub token: Option<AuthSecret>,
    pub signer: Option<Signer>,
    pub store: bool,
    pub sensor: Option<String>,
    pub wait: Option<Duration>,
    /// `--store` over TLS (files are read when the summary is sent).
    pub tls: Option<crate::client::ClientTls>,
}

impl ProbeArgs {
    /// Check every setting and resolve the address.
    ///
    /// # Errors
    /// A setting out of range, a malformed token, or an address that does not resolve.
    pub fn validate(self) -> anyhow::Result<ProbeConfig> {
        anyhow::ensure!(
            (MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval),
            "--interval {:?}: accepted {MIN_INTERVAL:?} to {MAX_INTERVAL:?}",
            self.interval
        );
        anyhow::ensure!(
            (MIN_PROBE_BYTES..=MAX_PROBE_BYTES).contains(&self.size),
            "--size {}: accepted {MIN_PROBE_BYTES} to {MAX_PROBE_BYTES} bytes (a reply needs \
             {MIN_PROBE_BYTES}; more than {MAX_PROBE_BYTES} would be fragmented on Ethernet)",
            self.size
        );
        let count = match (self.count, self.duration) {
            (Some(count), _) => count,
            (None, duration) => {
                let duration = duration.unwrap_or(Duration::from_secs(10));
                let n = duration.as_nanos() / self.interval.as_nanos().max(1);
                u64::try_from(n).unwrap_or(u64::MAX).max(1)
            }
        };
        anyhow::ensure!(
            (1..=MAX_PROBES).contains(&count),
            "{count} probes: accepted 1 to {MAX_PROBES} (--count, or --duration / --interval)"
        );
        let signer = match &self.token {
            Some(token) => Some(Signer::for_token(token).ok_or_else(|| {
                anyhow::anyhow!("--token: not a sensorlink token (sl_<id>_<secret>)")
            })?),
            None => None,
        };
        let addr = with_default_port(&self.addr);
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|err| anyhow::anyhow!("resolving {addr}: {err}"))?
            .collect();
        // Each address in turn, as a TCP connect would: the first that answers.
        let target = super::resolve::pick(&addrs, signer.as_ref(), super::resolve::ANSWER_WITHIN)
            .ok_or_else(|| anyhow::anyhow!("resolving {addr}: no address"))?;
        let sensor = match self.sensor {
            Some(sensor) => Some(sensor),
            // A token names its sensor: the server files untagged readings under it.
            None if self.token.is_some() => None,
            None => Some(gethostname::gethostname().to_string_lossy().into_owned()),
        };
        Ok(ProbeConfig {
            addr,
            target,
            interval: self.interval,
            count,
            size: self.size,
            json: self.json,
            token: self.token.map(AuthSecret::new),
            signer,
            store: self.store,
            sensor,
            wait: self.wait,
            tls: self.tls.then_some(crate::client::ClientTls {
                ca: self.ca,
                server_name: self.tls_server_name,
                identity: None,
            }),
        })
    }
}

/// `host` alone means `host:8889`; `[v6]`, `v4:port` and `name:port` are kept.
fn with_default_port(addr: &str) -> String {
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    let has_port = match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok()
                && !host.ends_with(':')
                && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{}", crate::DEFAULT_PORT)
    } else {
        format!("{addr}:{}", crate::DEFAULT_PORT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("127.0.0.1:9"), "127.0.0.1:9");
        assert_eq!(with_default_port("localhost"), "localhost:8889");
        assert_eq!(with_default_port("localhost:7"), "localhost:7");
        assert_eq!(with_default_port("::1"), "[::1]:8889");
        assert_eq!(with_default_port("[::1]:7"), "[::1]:7");
    }
}
