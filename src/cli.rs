//! Command-line flags (clap derive). Every flag can also come from `SENSORLINK_<FLAG>`.
//!
//! Raw flags are turned into validated settings ([`crate::server::ServerConfig`],
//! [`crate::client::ClientConfig`]) in [`run`], so the rest of the code never sees clap.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::client;
use crate::config::{self, RawClient, RawServer};
use crate::query::{self, Format};
use crate::server;
use crate::store::{self, StoreUrl};

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
    /// Real packet loss, one-way delay and jitter: isochronous UDP probes that the server
    /// reflects on its sensor port number.
    Probe(crate::probe::ProbeArgs),
    /// Make a development CA, a server and a client certificate (PEM) for trying TLS.
    Cert(CertArgs),
    /// Manage the tokens file of `server --auth` (make, revoke, list tokens).
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenAction,
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Make a token, add its hash to the file (created if missing) and print the token once.
    New {
        /// The tokens file (TOML) the server reads with `--auth`.
        #[arg(long, value_name = "FILE", env = "SENSORLINK_AUTH")]
        auth: PathBuf,
        /// A sensor this token may write (glob: `kitchen-*`; repeatable). One plain name
        /// also names the sensor of its untagged readings.
        #[arg(long = "sensor", value_name = "PATTERN")]
        sensors: Vec<String>,
        /// A measurement it may write (glob; repeatable; default every measurement).
        #[arg(long = "measurement", value_name = "PATTERN")]
        measurements: Vec<String>,
        /// It may read the HTTP API and the dashboard.
        #[arg(long)]
        read: bool,
        /// A name for people and logs (default: the sensor patterns, or `reader`).
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke tokens by id or name (kept in the file, marked revoked). Send the server
    /// SIGHUP to apply.
    Revoke {
        #[arg(long, value_name = "FILE", env = "SENSORLINK_AUTH")]
        auth: PathBuf,
        /// The token's id (the 8 characters after `sl_`) or its name.
        id_or_name: String,
    },
    /// List the tokens in the file (hashes are not shown).
    List {
        #[arg(long, value_name = "FILE", env = "SENSORLINK_AUTH")]
        auth: PathBuf,
        /// One JSON object per token instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// Directory the PEM files go to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// A DNS name or IP address the server certificate is valid for (repeatable; default
    /// localhost, 127.0.0.1 and ::1).
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Read settings from this TOML file (`[server]` table); the environment and flags
    /// override it.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML (a valid --config file) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub settings: RawServer,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Read settings from this TOML file (`[client]` table); the environment and flags
    /// override it.
    #[arg(long, value_name = "FILE", env = "SENSORLINK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML (a valid --config file) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub settings: RawClient,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The store to read (`sqlite:PATH` or `postgres://USER@HOST:PORT/DB`; the password
    /// from the URL or `PGPASSWORD`).
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
    /// The store to read (`sqlite:PATH` or `postgres://USER@HOST:PORT/DB`; the password
    /// from the URL or `PGPASSWORD`).
    #[arg(long, default_value = "sqlite:sensorlink.db", env = "SENSORLINK_STORE")]
    pub store: StoreUrl,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The server's timestamp window: a sensor whose stored timestamps lie outside it
    /// (stored before the server refused them) gets a note on stderr. (No environment
    /// variable: `SENSORLINK_MAX_FUTURE_TIMESTAMP` is the server's alone.)
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1day")]
    pub max_future_timestamp: std::time::Duration,
}

/// What `main` turns into the process exit code.
pub enum Outcome {
    /// Exit 0.
    Ok,
    /// A client run where some reading was not acknowledged: exit 1.
    Loss,
    /// Usage error or server unreachable: exit 2.
    Unusable,
    /// The server refused the client's `--token`: exit 3 (retrying cannot help).
    AuthFailed,
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> ExitCode {
        match outcome {
            Outcome::Ok => ExitCode::SUCCESS,
            Outcome::Loss => ExitCode::from(1),
            Outcome::Unusable => ExitCode::from(2),
            Outcome::AuthFailed => ExitCode::from(3),
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
            // Once, before validation: each connection is a descriptor, and the default
            // connection limit is what fits under the raised limit.
            let nofile = server::raise_open_file_limit();
            let config = config::server_config(args.settings, args.config.as_deref(), nofile)?;
            if args.print_config {
                print_config(&config::print_server(&config)?)?;
                return Ok(Outcome::Ok);
            }
            // Before the connections' state is allocated: RSS then counts 4 KiB pages.
            server::decline_huge_pages();
            let runtime = runtime()?;
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                server::shutdown::cancel_on_signal(shutdown.clone());
                server::run(config, shutdown).await
            })?;
            Ok(Outcome::Ok)
        }
        Command::Client(args) => {
            let config = config::client_config(args.settings, args.config.as_deref())?;
            if args.print_config {
                print_config(&config::print_client(&config)?)?;
                return Ok(Outcome::Ok);
            }
            if let Some(path) = &config.report {
                // A missing font or an unwritable file fails now, not after the run.
                crate::plot::check_ready(path)?;
            }
            let runtime = runtime()?;
            let result = runtime.block_on(client::run(config.clone()));
            // What matters (spool, report) was awaited; don't wait on a source blocked in a
            // read (stdin) or a command still running.
            runtime.shutdown_timeout(Duration::from_millis(500));
            if let (Some(path), Ok(report)) = (&config.report, &result) {
                if let Some(picture) = &report.picture {
                    crate::plot::client::write(path, &report.summary, picture)?;
                }
            }
            match result {
                Ok(report) if report.all_acked() => Ok(Outcome::Ok),
                Ok(_) => Ok(Outcome::Loss),
                // The reader of the report went away (`| head`): not a failure.
                Err(err) if err.is_broken_pipe() => Ok(Outcome::Ok),
                Err(err @ client::ClientError::Output(_)) => Err(err.into()),
                Err(err @ client::ClientError::AuthFailed(_)) => {
                    eprintln!("sensorlink: {err}");
                    Ok(Outcome::AuthFailed)
                }
                Err(err) => {
                    eprintln!("sensorlink: {err}");
                    Ok(Outcome::Unusable)
                }
            }
        }
        Command::Query(args) => {
            let reader = open_for_reading(&args.store)?;
            let query = store::Query {
                sensor: args.sensor,
                measurement: args.measurement,
                since_ns: args.since,
                until_ns: args.until,
                limit: args.limit,
                newest_first: false,
            };
            let rows = read_blocking(reader.query(&query))?;
            let mut out = std::io::stdout().lock();
            query::write_rows(&rows, args.format, &mut out).context("writing rows")?;
            Ok(Outcome::Ok)
        }
        Command::Bench(args) => {
            let report = crate::bench::run(args)?;
            // Scripts must notice a run that was not clean.
            Ok(if report.is_clean() {
                Outcome::Ok
            } else {
                Outcome::Loss
            })
        }
        Command::Cert(args) => {
            let hosts = if args.hosts.is_empty() {
                crate::tls::cert::DEFAULT_HOSTS.map(String::from).to_vec()
            } else {
                args.hosts
            };
            let written = crate::tls::cert::generate(&args.dir, &hosts, args.force)?;
            for path in written {
                println!("wrote {}", path.display());
            }
            Ok(Outcome::Ok)
        }
        Command::Token(args) => token(args.action),
        Command::Probe(args) => Ok(match crate::probe::run(args)? {
            crate::probe::RunEnd::Measured => Outcome::Ok,
            crate::probe::RunEnd::NoReply => Outcome::Unusable,
            crate::probe::RunEnd::AuthFailed => Outcome::AuthFailed,
        }),
        Command::Stats(args) => {
            let reader = open_for_reading(&args.store)?;
            let stats = read_blocking(reader.sensor_stats())?;
            let mut out = std::io::stdout().lock();
            query::write_stats(&stats, args.format, &mut out).context("writing stats")?;
            // On stderr: the formats on stdout stay what scripts parse.
            let window = crate::protocol::TimestampWindow {
                max_future: args.max_future_timestamp,
            };
            for note in query::out_of_window_notes(&stats, window, crate::timefmt::now_ns()) {
                eprintln!("{note}");
            }
            Ok(Outcome::Ok)
        }
    }
}

/// `sensorlink token …`: the token goes to stdout alone (for `$(…)`), the rest to stderr.
fn token(action: TokenAction) -> anyhow::Result<Outcome> {
    use crate::auth::admin;
    match action {
        TokenAction::New {
            auth,
            sensors,
            measurements,
            read,
            name,
        } => {
            let new = admin::NewToken {
                name,
                sensors,
                measurements,
                read,
            };
            let made = admin::add(&auth, new)?;
            println!("{}", made.token);
            let e = &made.entry;
            eprintln!(
                "added token {} ({}) to {}: sensors [{}], measurements [{}], read {}.\n\
                 The token is shown only now. Send the server SIGHUP to load it.",
                e.id,
                e.name,
                auth.display(),
                e.sensors.join(", "),
                e.measurements.join(", "),
                if e.read { "yes" } else { "no" },
            );
        }
        TokenAction::Revoke { auth, id_or_name } => {
            for e in admin::revoke(&auth, &id_or_name)? {
                println!("revoked {} ({})", e.id, e.name);
            }
            eprintln!("send the server SIGHUP to apply");
        }
        TokenAction::List { auth, json } => {
            let entries = admin::list(&auth)?;
            let mut out = std::io::stdout().lock();
            if json {
                use std::io::Write as _;
                for e in &entries {
                    let value = serde_json::json!({
                        "id": e.id, "name": e.name, "sensors": e.sensors,
                        "measurements": e.measurements, "read": e.read,
                        "created": e.created, "revoked": e.revoked,
                    });
                    writeln!(out, "{value}").context("writing tokens")?;
                }
            } else {
                admin::write_table(&entries, &mut out).context("writing tokens")?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// Write `--print-config` output to stdout.
fn print_config(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing the configuration")
}

/// Open a store to read it back; a SQLite file that does not exist is an error, not a new
/// empty database (reading never creates or migrates anything).
fn open_for_reading(url: &StoreUrl) -> anyhow::Result<store::StoreReader> {
    if let StoreUrl::Sqlite(path) = url {
        anyhow::ensure!(
            path.exists(),
            "no such store: {} does not exist",
            path.display()
        );
    }
    store::open_reader(url).with_context(|| format!("opening {url}"))
}

/// The runtime of a long-running command (server, client, bench).
///
/// Where the process may use only one CPU (pinned with `taskset`, or a 1-CPU cgroup), a
/// current-thread runtime: the multi-thread one would have a single worker anyway, and its
/// `block_on` thread, worker hand-offs and idle bookkeeping cost every wake-up (a round trip
/// with one reading in flight is one wake-up per side). With more CPUs, the multi-thread
/// runtime, which spreads many connections over them.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    runtime_for(cpus).context("starting the tokio runtime")
}

/// [`runtime`] for a process that may use `cpus` CPUs.
fn runtime_for(cpus: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if cpus <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

/// Run one read of the store's async read path to completion.
fn read_blocking<T>(
    read: impl std::future::Future<Output = Result<T, store::StoreError>>,
) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    Ok(runtime.block_on(read)?)
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::runtime_for;

    #[test]
    fn one_cpu_gets_a_current_thread_runtime_more_get_a_multi_thread_one() {
        let flavor = |cpus| {
            runtime_for(cpus)
                .expect("a runtime starts")
                .handle()
                .runtime_flavor()
        };
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
    }
}
