//! Command-line flags (clap derive). Every flag can also come from `SENSORLINK_<FLAG>`.
//!
//! Raw flags are turned into validated settings ([`crate::server::ServerConfig`],
//! [`crate::client::ClientConfig`]) in [`run`], so the rest of the code never sees clap.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::client::{self, source::SourceSpec, ClientConfig};
use crate::query::{self, Format};
use crate::server::{self, ServerConfig};
use crate::store::writer::WriterConfig;
use crate::store::{self, FsyncPolicy, StoreUrl};

#[derive(Debug, Parser)]
#[command(
    name = "sensorlink",
    version,
    about = "Sensor readings over TCP: acknowledged, stored, measured"
)]
pub struct Cli {
    /// More log output (-v debug: every reading, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SENSORLINK_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive readings, store them, acknowledge them.
    Server(ServerArgs),
    /// Send readings and measure each round trip, like ping.
    Client(ClientArgs),
    /// Print stored readings.
    Query(QueryArgs),
    /// Per-sensor counts, first/last seen and last value.
    Stats(StatsArgs),
    /// Load generator: throughput and ack latency against a running server.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "0.0.0.0:8889", env = "SENSORLINK_LISTEN")]
    pub listen: String,
    /// Where readings go: `sqlite:PATH` (durable) or `memory` (tests, benchmarks).
    #[arg(long, default_value = "sqlite:sensorlink.db", env = "SENSORLINK_STORE")]
    pub store: StoreUrl,
    /// When a commit reaches the disk: `always` (fsync every commit: an acked reading
    /// survives a power cut) or `os` (the OS writes back later: survives a crash only).
    #[arg(long, value_enum, default_value_t = FsyncPolicy::Always, env = "SENSORLINK_FSYNC")]
    pub fsync: FsyncPolicy,
    /// Most connections at once; more are closed on arrival.
    #[arg(long, default_value_t = 50_000, env = "SENSORLINK_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Close a connection that sends nothing for this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, env = "SENSORLINK_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,
    /// Close a connection that does not read its replies for this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "SENSORLINK_WRITE_TIMEOUT")]
    pub write_timeout: Duration,
    /// Longest line accepted; longer lines are discarded and answered with an error.
    #[arg(long, default_value_t = crate::protocol::DEFAULT_MAX_LINE_BYTES, env = "SENSORLINK_MAX_LINE_BYTES")]
    pub max_line_bytes: usize,
    /// Most readings in one store transaction (group commit).
    #[arg(long, default_value_t = 20_000, env = "SENSORLINK_COMMIT_MAX_ROWS")]
    pub commit_max_rows: usize,
    /// Extra wait for more readings before a small commit (0 = commit as soon as the store is free).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, env = "SENSORLINK_COMMIT_DELAY")]
    pub commit_delay: Duration,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server address.
    #[arg(default_value = "127.0.0.1:8889", env = "SENSORLINK_ADDR")]
    pub addr: String,
    /// Sensor name sent as the `sensor` tag (default: this host's name).
    #[arg(long, env = "SENSORLINK_SENSOR")]
    pub sensor: Option<String>,
    /// Measurement name of the readings.
    #[arg(long, default_value = "reading", env = "SENSORLINK_MEASUREMENT")]
    pub measurement: String,
    /// Time between readings (e.g. 1s, 250ms).
    #[arg(short, long, default_value = "1s", value_parser = humantime::parse_duration, env = "SENSORLINK_INTERVAL")]
    pub interval: Duration,
    /// Stop after this many readings (default: run until Ctrl-C or the source ends).
    #[arg(short, long, env = "SENSORLINK_COUNT")]
    pub count: Option<u64>,
    /// Reply timeout: a reading not acknowledged within this time after it was sent is
    /// reported lost (and the connection re-opened to resend it).
    #[arg(short = 'W', long, default_value = "10s", value_parser = humantime::parse_duration, env = "SENSORLINK_TIMEOUT")]
    pub timeout: Duration,
    /// Bounds opening a connection (TCP connect and the first pong), and how long the first
    /// connection may take before the server counts as unreachable [default: --timeout].
    #[arg(long, value_parser = humantime::parse_duration, env = "SENSORLINK_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<Duration>,
    /// Once the source ends (or on Ctrl-C/SIGTERM): how long to keep delivering pending
    /// readings before they are reported lost [default: --timeout].
    #[arg(long, value_parser = humantime::parse_duration, env = "SENSORLINK_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<Duration>,
    /// Reconnect when the server takes none of our bytes for this long [default: --timeout].
    #[arg(long, value_parser = humantime::parse_duration, env = "SENSORLINK_WRITE_TIMEOUT")]
    pub write_timeout: Option<Duration>,
    /// Speak the seed client's exact bytes (`ping`, `ping / ('<time>', <n>)`).
    #[arg(long, env = "SENSORLINK_LEGACY")]
    pub legacy: bool,
    /// One JSON object per event on stdout, and the summary as JSON.
    #[arg(long, env = "SENSORLINK_JSON")]
    pub json: bool,
    /// Where values come from: counter, random, exec:CMD, file:PATH, stdin.
    #[arg(long, default_value = "counter", env = "SENSORLINK_SOURCE")]
    pub source: SourceSpec,
    /// Most readings kept in memory while unacknowledged (without --spool); beyond it the
    /// oldest is dropped (and reported).
    #[arg(long, default_value_t = 100_000, env = "SENSORLINK_MAX_PENDING")]
    pub max_pending: usize,
    /// Keep unacknowledged readings in this directory, so they survive a client restart
    /// and are sent (in order, with their original timestamps) once the server is back.
    #[arg(long, env = "SENSORLINK_SPOOL", conflicts_with = "legacy")]
    pub spool: Option<std::path::PathBuf>,
    /// Most bytes the spool keeps; beyond it the oldest readings are dropped (and reported).
    #[arg(long, default_value_t = 1 << 30, env = "SENSORLINK_SPOOL_MAX_BYTES")]
    pub spool_max_bytes: u64,
    /// Readings older than this are dropped from the spool (and reported), e.g. `7d`.
    #[arg(long, value_parser = humantime::parse_duration, env = "SENSORLINK_SPOOL_MAX_AGE")]
    pub spool_max_age: Option<Duration>,
    /// Longest wait between reconnect attempts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "SENSORLINK_MAX_BACKOFF")]
    pub max_backoff: Duration,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The store to read (`sqlite:PATH`).
    #[arg(long, default_value = "sqlite:sensorlink.db", env = "SENSORLINK_STORE")]
    pub store: StoreUrl,
    #[arg(long)]
    pub sensor: Option<String>,
    #[arg(long)]
    pub measurement: Option<String>,
    /// Readings at or after this time (RFC 3339, `YYYY-MM-DD[ HH:MM:SS]` UTC, ns, or `10m` ago).
    #[arg(long, value_parser = query::parse_time)]
    pub since: Option<i64>,
    /// Readings before this time (same forms as --since).
    #[arg(long, value_parser = query::parse_time)]
    pub until: Option<i64>,
    #[arg(long)]
    pub limit: Option<u64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// The store to read (`sqlite:PATH`).
    #[arg(long, default_value = "sqlite:sensorlink.db", env = "SENSORLINK_STORE")]
    pub store: StoreUrl,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// What `main` turns into the process exit code.
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// A client run where some reading was not acknowledged: exit 1.
    Loss,
    /// Usage error or server unreachable: exit 2.
    Unusable,
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> ExitCode {
        match outcome {
            Outcome::Ok => ExitCode::SUCCESS,
            Outcome::Loss => ExitCode::from(1),
            Outcome::Unusable => ExitCode::from(2),
        }
    }
}

/// Set up logging on stderr: `RUST_LOG` wins, else `sensorlink=info` shifted by -v/-q.
pub fn init_tracing(cli: &Cli, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let levels = ["error", "warn", "info", "debug", "trace"];
    let base = levels.iter().position(|l| *l == default_level).unwrap_or(2) as i32;
    let index = (base + i32::from(cli.verbose) - i32::from(cli.quiet)).clamp(0, 4) as usize;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("sensorlink={}", levels[index])));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Run the chosen subcommand.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    // The client prints its own report on stdout; its log is for warnings.
    let default_level = match cli.command {
        Command::Server(_) => "info",
        _ => "warn",
    };
    init_tracing(&cli, default_level);
    match cli.command {
        Command::Server(args) => {
            let config = ServerConfig {
                listen: args.listen,
                store: args.store,
                fsync: args.fsync,
                max_connections: args.max_connections.max(1),
                idle_timeout: args.idle_timeout,
                write_timeout: args.write_timeout,
                max_line_bytes: args.max_line_bytes.max(64),
                writer: WriterConfig {
                    max_batch_rows: args.commit_max_rows.max(1),
                    commit_delay: args.commit_delay,
                    ..WriterConfig::default()
                },
                ..ServerConfig::default()
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                server::shutdown::cancel_on_signal(shutdown.clone());
                server::run(config, shutdown).await
            })?;
            Ok(Outcome::Ok)
        }
        Command::Client(args) => {
            let config = ClientConfig {
                addr: args.addr,
                sensor: match args.sensor {
                    Some(name) => name,
                    None => gethostname::gethostname().to_string_lossy().into_owned(),
                },
                measurement: args.measurement,
                interval: args.interval,
                count: args.count,
                reply_timeout: args.timeout,
                connect_timeout: args.connect_timeout.unwrap_or(args.timeout),
                drain_timeout: args.drain_timeout.unwrap_or(args.timeout),
                write_timeout: args.write_timeout.unwrap_or(args.timeout),
                legacy: args.legacy,
                json: args.json,
                source: args.source,
                max_pending: args.max_pending.max(1),
                max_backoff: args.max_backoff,
                spool: args.spool,
                spool_max_bytes: args.spool_max_bytes,
                spool_max_age: args.spool_max_age,
            };
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            let result = runtime.block_on(client::run(config));
            // What matters (spool, report) was awaited; don't wait on a source blocked in a
            // read (stdin) or a command still running.
            runtime.shutdown_timeout(Duration::from_millis(500));
            match result {
                Ok(report) if report.all_acked() => Ok(Outcome::Ok),
                Ok(_) => Ok(Outcome::Loss),
                // The reader of the report went away (`| head`): not a failure.
                Err(err) if err.is_broken_pipe() => Ok(Outcome::Ok),
                Err(err @ client::ClientError::Output(_)) => Err(err.into()),
                Err(err) => {
                    eprintln!("sensorlink: {err}");
                    Ok(Outcome::Unusable)
                }
            }
        }
        Command::Query(args) => {
            let mut store = open_for_reading(&args.store)?;
            let rows = store.query(&store::Query {
                sensor: args.sensor,
                measurement: args.measurement,
                since_ns: args.since,
                until_ns: args.until,
                limit: args.limit,
            })?;
            let mut out = std::io::stdout().lock();
            query::write_rows(&rows, args.format, &mut out).context("writing rows")?;
            Ok(Outcome::Ok)
        }
        Command::Bench(args) => crate::bench::run(args),
        Command::Stats(args) => {
            let mut store = open_for_reading(&args.store)?;
            let stats = store.sensor_stats()?;
            let mut out = std::io::stdout().lock();
            query::write_stats(&stats, args.format, &mut out).context("writing stats")?;
            Ok(Outcome::Ok)
        }
    }
}

/// Open a store to read it back; a SQLite file that does not exist is an error, not a new
/// empty database.
fn open_for_reading(url: &StoreUrl) -> anyhow::Result<Box<dyn store::Store>> {
    if let StoreUrl::Sqlite(path) = url {
        anyhow::ensure!(
            path.exists(),
            "no such store: {} does not exist",
            path.display()
        );
    }
    store::open(url, FsyncPolicy::Os).with_context(|| format!("opening {url}"))
}
