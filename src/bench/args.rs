//! `sensorlink bench`'s flags ([`BenchArgs`]) and the validated [`Settings`] a run uses:
//! defaults filled in, ranges checked, per-connection rates worked out.

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::line::LineEncoder;
use crate::protocol::control::AuthSecret;

/// Most fields per reading; more says nothing new about the server.
pub(super) const MAX_FIELDS: usize = 100;

/// Flags of `sensorlink bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Server address.
    #[arg(default_value = "127.0.0.1:8889", env = "SENSORLINK_BENCH_ADDR")]
    pub addr: String,
    /// Connections, one task each.
    #[arg(short, long, default_value_t = 1, env = "SENSORLINK_BENCH_CONNECTIONS")]
    pub connections: usize,
    /// Readings per second in total across connections (0 = as fast as acks allow).
    #[arg(long, default_value_t = 0.0, env = "SENSORLINK_BENCH_RATE")]
    pub rate: f64,
    /// Readings in flight per connection before waiting for acks.
    #[arg(long, default_value_t = 1, env = "SENSORLINK_BENCH_PIPELINE")]
    pub pipeline: usize,
    /// Readings per `sync` (one ack, one latency sample each).
    #[arg(long, default_value_t = 1, env = "SENSORLINK_BENCH_BATCH")]
    pub batch: usize,
    /// How long to measure, after the warm-up [default: 10s, none with --count].
    #[arg(short, long, value_parser = humantime::parse_duration, env = "SENSORLINK_BENCH_DURATION")]
    pub duration: Option<Duration>,
    /// Readings to send in total; the run ends when all are acknowledged.
    #[arg(
        short = 'n',
        long,
        conflicts_with = "warmup",
        env = "SENSORLINK_BENCH_COUNT"
    )]
    pub count: Option<u64>,
    /// Fields per reading.
    #[arg(long, default_value_t = 1, env = "SENSORLINK_BENCH_FIELDS")]
    pub fields: usize,
    /// Measurement name of the readings.
    #[arg(long, default_value = "bench", env = "SENSORLINK_BENCH_MEASUREMENT")]
    pub measurement: String,
    /// Send for this long before measuring; its acks are not counted.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, env = "SENSORLINK_BENCH_WARMUP")]
    pub warmup: Duration,
    /// Capacity test: each connection sends one reading + sync per --interval.
    #[arg(long, conflicts_with_all = ["rate", "pipeline", "batch"], env = "SENSORLINK_BENCH_IDLE")]
    pub idle: bool,
    /// Time between one connection's readings in --idle mode.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, requires = "idle", env = "SENSORLINK_BENCH_INTERVAL")]
    pub interval: Duration,
    /// Speak the seed's bytes: `ping / ('<time>', <n>)`, wait for `pong`, repeat.
    #[arg(long, conflicts_with_all = ["idle", "pipeline", "batch", "fields", "measurement"], env = "SENSORLINK_BENCH_LEGACY")]
    pub legacy: bool,
    /// Spread connections over 127.0.0.1 … 127.0.0.N (loopback servers only; N ≤ 254).
    #[arg(long, env = "SENSORLINK_BENCH_SOURCE_IPS")]
    pub source_ips: Option<u32>,
    /// New connections per second (0 = all at once) [default: 0, 2000 with --idle].
    #[arg(long, env = "SENSORLINK_BENCH_CONNECT_RATE")]
    pub connect_rate: Option<f64>,
    /// Print the report as one JSON object.
    #[arg(long, env = "SENSORLINK_BENCH_JSON")]
    pub json: bool,
    /// No progress output on stderr.
    #[arg(long, env = "SENSORLINK_BENCH_NO_PROGRESS")]
    pub no_progress: bool,
    /// At the end, draw the run into FILE (`.svg` or `.png`): readings acked and ack latency
    /// p50/p99/max per second. Text is set in DejaVu Sans (Debian: fonts-dejavu-core).
    #[arg(long, value_name = "FILE", env = "SENSORLINK_BENCH_REPORT")]
    pub report: Option<std::path::PathBuf>,
    /// At the end, write the ack latencies' histogram to FILE: one `latency_us<TAB>count`
    /// line per distinct value (3 significant figures), rising. Histograms of several runs
    /// can be pooled by concatenating them, for percentiles over all their samples.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_BENCH_LATENCY_HISTOGRAM")]
    pub latency_histogram: Option<std::path::PathBuf>,
    /// Send `auth TOKEN` first on every connection (a server with --auth); readings are
    /// tagged `sensor=bench-<i>`, so the token's scope must cover them (e.g. `bench-*`).
    #[arg(long, value_name = "TOKEN", env = "SENSORLINK_BENCH_TOKEN", hide_env_values = true,
          conflicts_with = "legacy", value_parser = bench_token)]
    pub token: Option<AuthSecret>,
    /// Connect over TLS (a server with --tls-cert/--tls-key): the handshake is done before
    /// the opening `ping`, outside the measurement.
    #[arg(long, env = "SENSORLINK_BENCH_TLS")]
    pub tls: bool,
    /// With --tls: trust the server certificates this CA (PEM) signed [default: the
    /// compiled-in Mozilla roots].
    #[arg(
        long,
        value_name = "PEM",
        requires = "tls",
        env = "SENSORLINK_BENCH_CA"
    )]
    pub ca: Option<std::path::PathBuf>,
    /// With --tls: the name the server's certificate must carry [default: the host part of
    /// the address].
    #[arg(
        long,
        value_name = "NAME",
        requires = "tls",
        env = "SENSORLINK_BENCH_TLS_SERVER_NAME"
    )]
    pub tls_server_name: Option<String>,
}

/// `--token`, wrapped so that no `Debug` shows it.
fn bench_token(text: &str) -> Result<AuthSecret, String> {
    if text.is_empty() {
        return Err("empty token".into());
    }
    Ok(AuthSecret::new(text))
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Mode {
    Line,
    Idle,
    Legacy,
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProgressStyle {
    /// indicatif bar/spinner: stderr is a terminal.
    Bar,
    /// A plain line every second: stderr is a pipe or a file.
    Lines,
    Off,
}

/// Validated settings (flags after defaults and checks).
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) addr: String,
    pub(super) mode: Mode,
    pub(super) connections: usize,
    /// Readings per second per connection; 0 = unpaced.
    pub(super) rate_per_conn: f64,
    /// Total rate as given (for the report).
    pub(super) rate: f64,
    pub(super) pipeline: usize,
    pub(super) batch: usize,
    /// Syncs in flight per connection.
    pub(super) max_syncs: usize,
    pub(super) duration: Option<Duration>,
    pub(super) count: Option<u64>,
    pub(super) fields: usize,
    pub(super) measurement: String,
    pub(super) warmup: Duration,
    pub(super) interval: Option<Duration>,
    pub(super) source_ips: Option<u8>,
    /// New connections per second; 0 = unpaced.
    pub(super) connect_rate: f64,
    pub(super) json: bool,
    pub(super) progress: ProgressStyle,
    /// Where the picture of the run goes (`--report`).
    pub(super) report: Option<std::path::PathBuf>,
    /// Where the ack latencies' histogram goes (`--latency-histogram`).
    pub(super) latency_histogram: Option<std::path::PathBuf>,
    /// `--token`: one `auth` per connection.
    pub(super) token: Option<AuthSecret>,
    /// `--tls`: the CA and server name to check the server's certificate against.
    pub(super) tls: Option<BenchTls>,
}

/// `--tls` with its `--ca` and `--tls-server-name` (files are read when the run starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BenchTls {
    pub(super) ca: Option<std::path::PathBuf>,
    pub(super) server_name: Option<String>,
}

impl Settings {
    pub(super) fn from_args(args: BenchArgs, stderr_is_tty: bool) -> Result<Settings, String> {
        let mode = if args.legacy {
            Mode::Legacy
        } else if args.idle {
            Mode::Idle
        } else {
            Mode::Line
        };
        if args.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if let Some(path) = &args.report {
            if crate::plot::Format::of(path).is_none() {
                return Err(format!(
                    "--report {}: use a file name ending in .svg or .png",
                    path.display()
                ));
            }
        }
        if !(args.rate.is_finite() && args.rate >= 0.0) {
            return Err("--rate must be a number ≥ 0".into());
        }
        if args.pipeline == 0 || args.batch == 0 {
            return Err("--pipeline and --batch must be at least 1".into());
        }
        if !(1..=MAX_FIELDS).contains(&args.fields) {
            return Err(format!("--fields must be 1 to {MAX_FIELDS}"));
        }
        if args.count == Some(0) {
            return Err("--count must be at least 1".into());
        }
        if args.duration == Some(Duration::ZERO) {
            return Err("--duration must be more than 0".into());
        }
        if mode == Mode::Idle && args.interval.is_zero() {
            return Err("--interval must be more than 0".into());
        }
        let source_ips = match args.source_ips {
            None => None,
            Some(n @ 1..=254) => Some(n as u8),
            Some(n) => {
                return Err(format!(
                    "--source-ips {n}: must be 1 to 254 (127.0.0.1 … 127.0.0.254)"
                ))
            }
        };
        let connect_rate =
            args.connect_rate
                .unwrap_or(if mode == Mode::Idle { 2000.0 } else { 0.0 });
        if !(connect_rate.is_finite() && connect_rate >= 0.0) {
            return Err("--connect-rate must be a number ≥ 0".into());
        }
        // Refuse names the template cannot carry, here rather than on every connection.
        LineEncoder::new(&args.measurement, 0, 1, 0)?;
        let (pipeline, batch, rate_per_conn) = match mode {
            Mode::Line => (
                args.pipeline,
                args.batch,
                args.rate / args.connections as f64,
            ),
            Mode::Idle => (1, 1, 1.0 / args.interval.as_secs_f64()),
            Mode::Legacy => (1, 1, args.rate / args.connections as f64),
        };
        let progress = if args.no_progress {
            ProgressStyle::Off
        } else if stderr_is_tty && !args.json {
            ProgressStyle::Bar
        } else {
            ProgressStyle::Lines
        };
        Ok(Settings {
            addr: args.addr,
            mode,
            connections: args.connections,
            rate_per_conn,
            rate: if mode == Mode::Idle {
                args.connections as f64 / args.interval.as_secs_f64()
            } else {
                args.rate
            },
            pipeline,
            batch,
            max_syncs: (pipeline / batch).max(1),
            // A count ends the run by itself; without one, a run needs an end.
            duration: args.duration.or(if args.count.is_some() {
                None
            } else {
                Some(Duration::from_secs(10))
            }),
            count: args.count,
            fields: args.fields,
            measurement: args.measurement,
            warmup: args.warmup,
            interval: (mode == Mode::Idle).then_some(args.interval),
            source_ips,
            connect_rate,
            json: args.json,
            progress,
            report: args.report,
            latency_histogram: args.latency_histogram,
            token: args.token,
            tls: args.tls.then_some(BenchTls {
                ca: args.ca,
                server_name: args.tls_server_name,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn settings(args: &[&str]) -> Result<Settings, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Settings::from_args(cli.args, false)
    }

    #[test]
    fn settings_defaults_and_checks() {
        let s = settings(&[]).expect("defaults");
        assert_eq!(s.mode, Mode::Line);
        assert_eq!(s.duration, Some(Duration::from_secs(10)));
        assert_eq!((s.pipeline, s.batch, s.max_syncs), (1, 1, 1));
        assert_eq!(s.progress, ProgressStyle::Lines);

        let s = settings(&[
            "--count",
            "10",
            "--pipeline",
            "256",
            "--batch",
            "64",
            "-c",
            "4",
            "--rate",
            "400",
        ])
        .expect("count");
        assert_eq!(s.duration, None);
        assert_eq!(s.max_syncs, 4);
        assert_eq!(s.rate_per_conn, 100.0);
        // Fewer in flight than one batch still allows one sync.
        assert_eq!(
            settings(&["--pipeline", "2", "--batch", "8"]).map(|s| s.max_syncs),
            Ok(1)
        );

        let s = settings(&["--idle", "-c", "50", "--interval", "100ms"]).expect("idle");
        assert_eq!(s.mode, Mode::Idle);
        assert_eq!(s.rate_per_conn, 10.0);
        assert_eq!(s.connect_rate, 2000.0);
        assert_eq!(settings(&["--legacy"]).map(|s| s.mode), Ok(Mode::Legacy));

        for bad in [
            &["--connections", "0"][..],
            &["--source-ips", "255"],
            &["--source-ips", "0"],
            &["--fields", "0"],
            &["--count", "0"],
            &["--rate", "-1"],
            &["--rate", "NaN"],
            &["--measurement", ""],
            &["--interval", "1s"],
            &["--legacy", "--pipeline", "8"],
            &["--idle", "--rate", "5"],
            &["--count", "5", "--warmup", "1s"],
        ] {
            assert!(settings(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            settings(&["--source-ips", "254"]).map(|s| s.source_ips),
            Ok(Some(254))
        );
    }
}
