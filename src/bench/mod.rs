//! `sensorlink bench`: a load generator on the client's code path.
//!
//! One tokio task per connection, on the same pieces as the client: readings are line
//! protocol ([`ilp`]), replies go through [`Reply::parse`], latencies into [`RttStats`].
//!
//! - **line** (default): write readings, a `sync <n>` after every `--batch` of them, and keep
//!   at most `max(1, pipeline / batch)` syncs unacknowledged. A sync's latency runs from the
//!   write that carried it to its `ack`.
//! - **idle** (`--idle`): many connections, each sending one reading + `sync` per
//!   `--interval`: how many connections a server holds, and at what latency.
//! - **legacy** (`--legacy`): the seed's request/response bytes, one message in flight.
//!
//! A run has three phases: connect (every connection is attempted, at `--connect-rate`,
//! before any reading is sent), warm-up (acks not counted) and measurement. After it no new
//! reading is written, and those in flight get up to [`ACK_TIMEOUT`] to be acknowledged.
//!
//! Every reading must be stored, not deduplicated: connection `i` uses the tag
//! `sensor=bench-<i>` and the timestamps `start_ns + 0, 1, 2, …`.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{Buf as _, BytesMut};
use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cli::Outcome;
use crate::client::sleep_until_opt;
use crate::client::stats::{RttStats, RttSummary};
use crate::protocol::control::Reply;
use crate::protocol::{ilp, legacy, FieldValue, Reading};

/// A sync (or legacy message) not answered within this time is an error, and ends its
/// connection: a server that slow is broken, not busy.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a TCP connect (and its `ping`/`pong` check).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Size of one write: large enough that syscalls are not what limits the rate.
const WRITE_BYTES: usize = 64 * 1024;

/// Read buffer for replies; one read takes many `ack` lines at once.
const READ_BYTES: usize = 64 * 1024;

/// Longest reply line accepted (the client's limit too).
const MAX_REPLY_BYTES: usize = 4096;

/// Most fields per reading; more says nothing new about the server.
const MAX_FIELDS: usize = 100;

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
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Line,
    Idle,
    Legacy,
}

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProgressStyle {
    /// indicatif bar/spinner: stderr is a terminal.
    Bar,
    /// A plain line every second: stderr is a pipe or a file.
    Lines,
    Off,
}

/// Validated settings (flags after defaults and checks).
#[derive(Debug, Clone)]
struct Settings {
    addr: String,
    mode: Mode,
    connections: usize,
    /// Readings per second per connection; 0 = unpaced.
    rate_per_conn: f64,
    /// Total rate as given (for the report).
    rate: f64,
    pipeline: usize,
    batch: usize,
    /// Syncs in flight per connection.
    max_syncs: usize,
    duration: Option<Duration>,
    count: Option<u64>,
    fields: usize,
    measurement: String,
    warmup: Duration,
    interval: Option<Duration>,
    source_ips: Option<u8>,
    /// New connections per second; 0 = unpaced.
    connect_rate: f64,
    json: bool,
    progress: ProgressStyle,
}

impl Settings {
    fn from_args(args: BenchArgs, stderr_is_tty: bool) -> Result<Settings, String> {
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
        })
    }
}

/// Run the benchmark and print its report.
pub fn run(args: BenchArgs) -> anyhow::Result<Outcome> {
    let settings = Settings::from_args(args, std::io::stderr().is_terminal())
        .map_err(|msg| anyhow::anyhow!("bench: {msg}"))?;
    // A multi-thread runtime: the generator must spread over the cores like the server.
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = runtime.block_on(bench(settings.clone()))?;
    let Some(report) = report else {
        return Ok(Outcome::Unusable);
    };
    let mut out = std::io::stdout().lock();
    if report.connections == 0 && !settings.json {
        // The cause is already on stderr; a report of zeros would only bury it.
        return Ok(Outcome::Unusable);
    }
    if settings.json {
        serde_json::to_writer(&mut out, &report).context("writing the report")?;
        use std::io::Write as _;
        writeln!(out).context("writing the report")?;
    } else {
        report.write_human(&mut out).context("writing the report")?;
    }
    Ok(if report.connections == 0 {
        Outcome::Unusable
    } else if report.errors > 0 {
        // Scripts must notice a run that was not clean.
        Outcome::Loss
    } else {
        Outcome::Ok
    })
}

/// Counters every task updates as it goes, read by the progress display.
#[derive(Debug, Default)]
struct Live {
    acked: AtomicU64,
    errors: AtomicU64,
    established: AtomicU64,
}

/// What all connection tasks share.
#[derive(Debug)]
struct Shared {
    settings: Settings,
    target: SocketAddr,
    live: Live,
    /// First timestamp of every connection's readings (ns since the epoch).
    start_ns: i64,
    /// Next legacy timestamp in µs, shared: legacy readings are keyed by the peer's IP, so
    /// connections from one address must never reuse a time.
    legacy_next_us: AtomicI64,
    /// Ctrl-C: stop sending, collect what is in flight, report.
    stop: CancellationToken,
    /// Ack latencies of every connection.
    latencies: Arc<std::sync::Mutex<RttStats>>,
}

/// When the run's phases begin and end; sent to every task once all have connected.
#[derive(Debug, Clone, Copy)]
struct Phase {
    go: Instant,
    measure_from: Instant,
    stop_at: Option<Instant>,
}

/// Why a run had errors, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
struct ErrorCounts {
    /// Connect (or its `ping` check) failed.
    connect: u64,
    /// `error` reply lines.
    replies: u64,
    /// Lines an `ack` reports as rejected beyond the `error` lines already counted.
    rejected: u64,
    /// The server closed the connection, or a read or write failed.
    disconnects: u64,
    /// A sync (or legacy message) not answered within [`ACK_TIMEOUT`].
    timeouts: u64,
    /// A reply we cannot read, or an ack for a sync we did not send.
    protocol: u64,
}

impl ErrorCounts {
    fn total(&self) -> u64 {
        self.connect
            + self.replies
            + self.rejected
            + self.disconnects
            + self.timeouts
            + self.protocol
    }

    fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.replies += other.replies;
        self.rejected += other.rejected;
        self.disconnects += other.disconnects;
        self.timeouts += other.timeouts;
        self.protocol += other.protocol;
    }
}

#[derive(Debug, Clone, Copy)]
enum ErrorKind {
    Connect,
    Reply,
    Disconnect,
    Timeout,
    Protocol,
}

/// Samples buffered per connection before they are merged into the run's histogram.
const LATENCY_BATCH: usize = 256;

/// One connection's ack latencies, merged in batches into the histogram the whole run
/// shares: a histogram per connection (~270 KiB each, 1 ns to 1 h) would cost gigabytes at
/// tens of thousands of idle connections.
#[derive(Debug)]
struct Latencies {
    local: Vec<Duration>,
    shared: Arc<std::sync::Mutex<RttStats>>,
}

impl Latencies {
    fn new(shared: Arc<std::sync::Mutex<RttStats>>) -> Self {
        Latencies {
            local: Vec::new(),
            shared,
        }
    }

    fn record(&mut self, rtt: Duration) {
        self.local.push(rtt);
        if self.local.len() >= LATENCY_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.local.is_empty() {
            return;
        }
        // A panic while holding the lock cannot leave a histogram half-updated in a way
        // that matters for a report; keep going.
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for rtt in self.local.drain(..) {
            shared.record(rtt);
        }
    }

    /// Everything recorded so far by every connection.
    fn summary(&mut self) -> RttSummary {
        self.flush();
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .summary()
    }
}

impl Drop for Latencies {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What one connection did.
#[derive(Debug)]
struct ConnResult {
    established: bool,
    rtt: Latencies,
    /// Readings acknowledged during the measurement.
    readings: u64,
    /// Bytes of readings written during the measurement (control lines excluded).
    bytes: u64,
    /// Readings written but never acknowledged.
    unacked: u64,
    errors: ErrorCounts,
    first_error: Option<String>,
    last_ack: Option<Instant>,
}

impl ConnResult {
    fn new(latencies: Arc<std::sync::Mutex<RttStats>>) -> Self {
        ConnResult {
            established: false,
            rtt: Latencies::new(latencies),
            readings: 0,
            bytes: 0,
            unacked: 0,
            errors: ErrorCounts::default(),
            first_error: None,
            last_ack: None,
        }
    }

    fn error(&mut self, live: &Live, kind: ErrorKind, why: impl FnOnce() -> String) {
        let slot = match kind {
            ErrorKind::Connect => &mut self.errors.connect,
            ErrorKind::Reply => &mut self.errors.replies,
            ErrorKind::Disconnect => &mut self.errors.disconnects,
            ErrorKind::Timeout => &mut self.errors.timeouts,
            ErrorKind::Protocol => &mut self.errors.protocol,
        };
        *slot += 1;
        live.errors.fetch_add(1, Ordering::Relaxed);
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }
}

/// Resolve, connect every connection, run, collect. `None`: the address does not resolve.
async fn bench(settings: Settings) -> anyhow::Result<Option<Report>> {
    let target = match resolve(&settings.addr).await {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("sensorlink: cannot reach {}: {err}", settings.addr);
            return Ok(None);
        }
    };
    if settings.source_ips.is_some() && !(target.is_ipv4() && target.ip().is_loopback()) {
        anyhow::bail!(
            "bench: --source-ips binds 127.0.0.x, so ADDR must be an IPv4 loopback address"
        );
    }
    let shared = Arc::new(Shared {
        settings,
        target,
        live: Live::default(),
        start_ns: crate::timefmt::now_ns(),
        legacy_next_us: AtomicI64::new(crate::timefmt::now_ns() / 1000),
        stop: CancellationToken::new(),
        latencies: Arc::default(),
    });
    {
        let stop = shared.stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        });
    }
    let s = &shared.settings;
    let (phase_tx, phase_rx) = watch::channel(None::<Phase>);
    let progress_done = CancellationToken::new();
    let progress = spawn_progress(shared.clone(), phase_rx.clone(), progress_done.clone());

    // Connect phase: every connection is attempted before any reading is sent, so that the
    // measurement sees all of them at work.
    let (attempted_tx, mut attempted) = mpsc::unbounded_channel::<()>();
    let connect_start = Instant::now();
    let mut tasks = Vec::with_capacity(s.connections);
    for index in 0..s.connections {
        if s.connect_rate > 0.0 {
            let at = connect_start + Duration::from_secs_f64(index as f64 / s.connect_rate);
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = shared.stop.cancelled() => break,
            }
        }
        tasks.push(tokio::spawn(connection(
            shared.clone(),
            index,
            attempted_tx.clone(),
            phase_rx.clone(),
        )));
    }
    drop(attempted_tx);
    // Ends when every task has sent (and dropped) its sender: each is bounded by CONNECT_TIMEOUT.
    while attempted.recv().await.is_some() {}
    let connect_seconds = connect_start.elapsed().as_secs_f64();

    let go = Instant::now();
    let measure_from = go + s.warmup;
    phase_tx.send_replace(Some(Phase {
        go,
        measure_from,
        stop_at: s.duration.map(|d| measure_from + d),
    }));

    let mut total = ConnResult::new(shared.latencies.clone());
    let mut established = 0u64;
    for task in tasks {
        let result = match task.await {
            Ok(result) => result,
            Err(err) => {
                // A panicking task is a bug; count it rather than lose the whole report.
                let mut lost = ConnResult::new(shared.latencies.clone());
                lost.error(&shared.live, ErrorKind::Disconnect, || {
                    format!("task failed: {err}")
                });
                lost
            }
        };
        established += u64::from(result.established);
        total.readings += result.readings;
        total.bytes += result.bytes;
        total.unacked += result.unacked;
        total.errors.add(&result.errors);
        if total.first_error.is_none() {
            total.first_error = result.first_error;
        }
        total.last_ack = total.last_ack.max(result.last_ack);
    }
    let finished = Instant::now();
    progress_done.cancel();
    let _ = progress.await;

    if established == 0 {
        let cause = total
            .first_error
            .as_deref()
            .unwrap_or("no connection was attempted");
        eprintln!("sensorlink: cannot reach {}: {cause}", s.addr);
    } else if let Some(cause) = &total.first_error {
        eprintln!("sensorlink: bench: first error: {cause}");
    }
    // The measurement lasts until its last ack (the drain of the final window included).
    let end = total.last_ack.unwrap_or(finished).max(measure_from);
    let seconds = (end - measure_from).as_secs_f64();
    Ok(Some(Report::new(
        s,
        total,
        established,
        seconds,
        connect_seconds,
    )))
}

async fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolves to nothing",
        )
    })
}

/// One connection's life: connect, wait for the start, send, drain.
async fn connection(
    shared: Arc<Shared>,
    index: usize,
    attempted: mpsc::UnboundedSender<()>,
    mut phase: watch::Receiver<Option<Phase>>,
) -> ConnResult {
    let mut result = ConnResult::new(shared.latencies.clone());
    let stream = connect(&shared, index).await;
    // Dropping the sender too: the main task waits for all of them to be gone.
    let _ = attempted.send(());
    drop(attempted);
    let stream = match stream {
        Ok(stream) => stream,
        Err(err) => {
            result.error(&shared.live, ErrorKind::Connect, || {
                format!("connect: {err}")
            });
            return result;
        }
    };
    result.established = true;
    shared.live.established.fetch_add(1, Ordering::Relaxed);
    let phase = match phase.wait_for(Option::is_some).await {
        Ok(phase) => *phase,
        Err(_) => None,
    };
    let Some(phase) = phase else {
        return result;
    };
    match shared.settings.mode {
        Mode::Line | Mode::Idle => line_session(&shared, index, stream, phase, &mut result).await,
        Mode::Legacy => legacy_session(&shared, index, stream, phase, &mut result).await,
    }
    result
}

/// Open one connection (from 127.0.0.x with `--source-ips`) and check that a sensorlink
/// server answers on it: `ping bench` → `pong bench`, or the seed's `ping` → `pong`.
async fn connect(shared: &Shared, index: usize) -> std::io::Result<TcpStream> {
    let target = shared.target;
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(n) = shared.settings.source_ips {
        socket.bind(SocketAddr::new(source_ip(index, n), 0))?;
    }
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(target))
        .await
        .map_err(|_| timed_out("connect"))??;
    stream.set_nodelay(true)?;
    let check = async {
        if shared.settings.mode == Mode::Legacy {
            stream.write_all(legacy::PING).await?;
            let mut pong = [0u8; 4];
            stream.read_exact(&mut pong).await?;
            if pong != legacy::PONG {
                return Err(not_sensorlink(&pong));
            }
        } else {
            stream.write_all(b"ping bench\n").await?;
            let mut line = BytesMut::with_capacity(64);
            while memchr::memchr(b'\n', &line).is_none() {
                if line.len() > MAX_REPLY_BYTES || stream.read_buf(&mut line).await? == 0 {
                    return Err(not_sensorlink(&line));
                }
            }
            let text = std::str::from_utf8(&line).map_err(|_| not_sensorlink(&line))?;
            if Reply::parse(text.trim_end()) != Ok(Reply::Pong(Some("bench".into()))) {
                return Err(not_sensorlink(&line));
            }
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, check)
        .await
        .map_err(|_| timed_out("pong"))??;
    Ok(stream)
}

/// Connection `index`'s local address among `n` loopback addresses.
fn source_ip(index: usize, n: u8) -> IpAddr {
    // n ≤ 254, so the last octet stays in 1..=254.
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % usize::from(n)) as u8))
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}

fn not_sensorlink(answer: &[u8]) -> std::io::Error {
    let shown = String::from_utf8_lossy(&answer[..answer.len().min(64)]).into_owned();
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("not a sensorlink server: answered {shown:?} to ping"),
    )
}

/// This connection's share of `--count`: the total split as evenly as possible.
fn count_share(total: u64, connections: usize, index: usize) -> u64 {
    let n = connections as u64;
    total / n + u64::from((index as u64) < total % n)
}

/// The pace of one connection: reading `j` (from 0) is due at `start + j / rate`.
#[derive(Debug, Clone, Copy)]
struct Pacer {
    start: Instant,
    ns_per_reading: f64,
}

impl Pacer {
    /// A pacer for `rate` readings/s; connection `index` of `n` starts a fraction of one
    /// period later than the one before, so that connections do not all send at once.
    fn new(rate: f64, go: Instant, index: usize, n: usize) -> Option<Pacer> {
        if rate <= 0.0 {
            return None;
        }
        let ns_per_reading = 1e9 / rate;
        let offset = ns_per_reading * index as f64 / n as f64;
        Some(Pacer {
            start: go + Duration::from_nanos(offset as u64),
            ns_per_reading,
        })
    }

    /// How many readings are due by `now`.
    fn due(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.start) {
            Some(elapsed) => (elapsed.as_nanos() as f64 / self.ns_per_reading) as u64 + 1,
            None => 0,
        }
    }

    /// When `n` readings (n ≥ 1) will be due.
    fn when_due(&self, n: u64) -> Instant {
        let ns = n.saturating_sub(1) as f64 * self.ns_per_reading;
        self.start + Duration::from_nanos(ns as u64)
    }
}

/// Writes one connection's readings from a template, without allocating per reading:
/// `<measurement>,sensor=bench-<i> f0=<v>[,f1=<v>…] <start_ns + n>\n`.
#[derive(Debug)]
struct LineEncoder {
    /// Escaped measurement and tag, up to and including the space before the fields.
    prefix: Vec<u8>,
    /// `f0=`, `,f1=`, `,f2=` …
    keys: Vec<Vec<u8>>,
    next_ts: i64,
    n: u64,
}

impl LineEncoder {
    fn new(measurement: &str, index: usize, fields: usize, start_ns: i64) -> Result<Self, String> {
        if measurement.is_empty() {
            return Err("--measurement must not be empty".into());
        }
        if measurement.contains(['\n', '\r']) {
            return Err("--measurement must not contain a line break".into());
        }
        // The protocol's own encoder escapes the names; the field part is known, so it can
        // be cut off again.
        let mut line = Vec::new();
        ilp::encode(
            &Reading {
                measurement: measurement.to_string(),
                tags: vec![("sensor".to_string(), format!("bench-{index}"))],
                fields: vec![("f".to_string(), FieldValue::Int(0))],
                timestamp_ns: None,
            },
            &mut line,
        );
        let prefix = line
            .strip_suffix(b"f=0i\n")
            .ok_or("--measurement cannot be encoded")?
            .to_vec();
        let keys = (0..fields)
            .map(|f| {
                let sep = if f == 0 { "" } else { "," };
                format!("{sep}f{f}=").into_bytes()
            })
            .collect();
        Ok(LineEncoder {
            prefix,
            keys,
            next_ts: start_ns,
            n: 0,
        })
    }

    /// Append the next reading; returns its length in bytes.
    fn encode(&mut self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        let mut digits = itoa::Buffer::new();
        out.extend_from_slice(&self.prefix);
        for (f, key) in self.keys.iter().enumerate() {
            // Values vary per reading and per field (a store may compress constants away),
            // and stay short floats: `123.4`.
            let v = (self.n.wrapping_mul(31).wrapping_add(f as u64 * 7)) % 10_000;
            out.extend_from_slice(key);
            out.extend_from_slice(digits.format(v / 10).as_bytes());
            out.push(b'.');
            out.push(b'0' + (v % 10) as u8);
        }
        out.push(b' ');
        out.extend_from_slice(digits.format(self.next_ts).as_bytes());
        out.push(b'\n');
        self.next_ts += 1;
        self.n += 1;
        out.len() - before
    }
}

/// A sync written and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct PendingSync {
    token: u64,
    readings: u64,
    written_at: Instant,
}

/// The syncs in flight on one connection, oldest first (acks come in order). No I/O.
#[derive(Debug)]
struct Window {
    max_syncs: usize,
    pending: VecDeque<PendingSync>,
}

impl Window {
    fn new(max_syncs: usize) -> Self {
        Window {
            max_syncs,
            pending: VecDeque::with_capacity(max_syncs),
        }
    }

    fn has_room(&self) -> bool {
        self.pending.len() < self.max_syncs
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn push(&mut self, sync: PendingSync) {
        self.pending.push_back(sync);
    }

    /// Set the write time of the newest `n` syncs: they went out in one write.
    fn stamp_newest(&mut self, n: usize, at: Instant) {
        for sync in self.pending.iter_mut().rev().take(n) {
            sync.written_at = at;
        }
    }

    /// The oldest sync must be acknowledged by this time.
    fn deadline(&self) -> Option<Instant> {
        self.pending.front().map(|s| s.written_at + ACK_TIMEOUT)
    }

    fn unacked_readings(&self) -> u64 {
        self.pending.iter().map(|s| s.readings).sum()
    }

    /// Match an `ack <token>` to the oldest sync.
    fn on_ack(&mut self, token: &str) -> Result<PendingSync, String> {
        let Some(front) = self.pending.front() else {
            return Err(format!("ack {token} for no outstanding sync"));
        };
        if token.parse::<u64>() != Ok(front.token) {
            return Err(format!("ack {token} while waiting for ack {}", front.token));
        }
        self.pending
            .pop_front()
            .ok_or_else(|| "window emptied under us".to_string())
    }
}

/// Line mode (and idle mode): fill the window, write, read acks, until the end; then drain.
async fn line_session(
    shared: &Shared,
    index: usize,
    mut stream: TcpStream,
    phase: Phase,
    result: &mut ConnResult,
) {
    let s = &shared.settings;
    let live = &shared.live;
    let quota = s.count.map(|n| count_share(n, s.connections, index));
    let pacer = Pacer::new(s.rate_per_conn, phase.go, index, s.connections);
    let mut encoder = match LineEncoder::new(&s.measurement, index, s.fields, shared.start_ns) {
        Ok(encoder) => encoder,
        // Settings already checked the template; this is unreachable in practice.
        Err(err) => return result.error(live, ErrorKind::Protocol, || err),
    };
    let mut window = Window::new(s.max_syncs);
    // An idle connection sends one reading at a time: small buffers keep 10 000s of them cheap.
    let (write_bytes, read_bytes) = if s.mode == Mode::Idle {
        (1024, 1024)
    } else {
        (WRITE_BYTES + 4096, READ_BYTES)
    };
    let mut out = Vec::with_capacity(write_bytes);
    let mut replies = BytesMut::with_capacity(read_bytes);
    let mut digits = itoa::Buffer::new();
    let mut sent = 0u64;
    let mut next_token = 1u64;
    // `error` lines since the last ack: the ack's `rejected` counts the same lines again.
    let mut error_lines = 0u64;
    loop {
        let now = Instant::now();
        let stopping = shared.stop.is_cancelled()
            || phase.stop_at.is_some_and(|t| now >= t)
            || quota.is_some_and(|q| sent >= q);
        // The next batch: a full one, or what is left of the quota.
        let batch_after =
            |sent: u64| quota.map_or(s.batch as u64, |q| (s.batch as u64).min(q - sent));
        if !stopping {
            let mut unwritten = 0usize;
            let mut reading_bytes = 0usize;
            while window.has_room() && out.len() < WRITE_BYTES {
                let n = batch_after(sent);
                if n == 0 || pacer.is_some_and(|p| p.due(now) < sent + n) {
                    break;
                }
                for _ in 0..n {
                    reading_bytes += encoder.encode(&mut out);
                }
                out.extend_from_slice(b"sync ");
                out.extend_from_slice(digits.format(next_token).as_bytes());
                out.push(b'\n');
                window.push(PendingSync {
                    token: next_token,
                    readings: n,
                    written_at: now,
                });
                next_token += 1;
                sent += n;
                unwritten += 1;
            }
            if unwritten > 0 {
                let at = Instant::now();
                window.stamp_newest(unwritten, at);
                let write = tokio::time::timeout(ACK_TIMEOUT, stream.write_all(&out)).await;
                out.clear();
                match write {
                    Ok(Ok(())) => {
                        if at >= phase.measure_from {
                            result.bytes += reading_bytes as u64;
                        }
                    }
                    Ok(Err(err)) => {
                        result.error(live, ErrorKind::Disconnect, || format!("write: {err}"));
                        break;
                    }
                    Err(_) => {
                        result.error(live, ErrorKind::Timeout, || {
                            "write: the server does not read".into()
                        });
                        break;
                    }
                }
                // More may fit (the write was cut at WRITE_BYTES): fill again before waiting.
                continue;
            }
        }
        if stopping && window.is_empty() {
            break;
        }
        let pace_at = match pacer {
            Some(p) if !stopping && window.has_room() => Some(p.when_due(sent + batch_after(sent))),
            _ => None,
        };
        let stop_at = if stopping { None } else { phase.stop_at };
        // Keep room for a large read: acks arrive many at a time under load.
        replies.reserve(read_bytes / 4);
        tokio::select! {
            read = stream.read_buf(&mut replies) => match read {
                Ok(0) => {
                    // Closed with syncs unanswered, or before the run was over.
                    result.error(live, ErrorKind::Disconnect, || "the server closed the connection".into());
                    break;
                }
                Ok(_) => {
                    let now = Instant::now();
                    let handled = handle_replies(
                        &mut replies,
                        &mut window,
                        &mut error_lines,
                        now >= phase.measure_from,
                        now,
                        live,
                        result,
                    );
                    if handled.is_err() {
                        break;
                    }
                }
                Err(err) => {
                    result.error(live, ErrorKind::Disconnect, || format!("read: {err}"));
                    break;
                }
            },
            _ = sleep_until_opt(window.deadline()) => {
                result.error(live, ErrorKind::Timeout, || {
                    format!("no ack within {}", humantime::format_duration(ACK_TIMEOUT))
                });
                break;
            }
            _ = sleep_until_opt(pace_at) => {}
            _ = sleep_until_opt(stop_at) => {}
            _ = shared.stop.cancelled(), if !stopping => {}
        }
    }
    result.unacked += window.unacked_readings();
    let _ = stream.shutdown().await;
}

/// Handle every complete reply line in `replies`. `Err` ends the connection (already counted).
fn handle_replies(
    replies: &mut BytesMut,
    window: &mut Window,
    error_lines: &mut u64,
    measured: bool,
    now: Instant,
    live: &Live,
    result: &mut ConnResult,
) -> Result<(), ()> {
    while let Some(end) = memchr::memchr(b'\n', replies) {
        let reply = std::str::from_utf8(&replies[..end])
            .map_err(|_| "reply is not UTF-8".to_string())
            .and_then(|text| {
                Reply::parse(text.trim_end_matches('\r')).map_err(|err| err.to_string())
            });
        replies.advance(end + 1);
        match reply {
            Ok(Reply::Ack(ack)) => {
                let sync = match window.on_ack(&ack.token) {
                    Ok(sync) => sync,
                    Err(why) => {
                        result.error(live, ErrorKind::Protocol, || why);
                        return Err(());
                    }
                };
                let acked = ack.readings.min(sync.readings);
                live.acked.fetch_add(acked, Ordering::Relaxed);
                if measured {
                    result.rtt.record(now - sync.written_at);
                    result.readings += acked;
                    result.last_ack = Some(now);
                }
                let extra = ack.rejected.saturating_sub(*error_lines);
                *error_lines = 0;
                if extra > 0 {
                    result.errors.rejected += extra;
                    live.errors.fetch_add(extra, Ordering::Relaxed);
                    if result.first_error.is_none() {
                        result.first_error = Some(format!("ack {}: {extra} rejected", ack.token));
                    }
                }
            }
            Ok(Reply::Error { line, reason }) => {
                *error_lines += 1;
                result.error(live, ErrorKind::Reply, || format!("error {line} {reason}"));
            }
            Ok(Reply::Pong(_)) => {}
            Err(why) => {
                result.error(live, ErrorKind::Protocol, || format!("bad reply: {why}"));
                return Err(());
            }
        }
    }
    if replies.len() > MAX_REPLY_BYTES {
        result.error(live, ErrorKind::Protocol, || "reply line too long".into());
        return Err(());
    }
    Ok(())
}

/// Legacy mode: one `ping / ('<time>', <n>)` at a time, each answered by `pong`.
async fn legacy_session(
    shared: &Shared,
    index: usize,
    mut stream: TcpStream,
    phase: Phase,
    result: &mut ConnResult,
) {
    let s = &shared.settings;
    let live = &shared.live;
    let quota = s.count.map(|n| count_share(n, s.connections, index));
    let pacer = Pacer::new(s.rate_per_conn, phase.go, index, s.connections);
    let mut message = Vec::with_capacity(64);
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if shared.stop.is_cancelled()
            || phase.stop_at.is_some_and(|t| now >= t)
            || quota.is_some_and(|q| sent >= q)
        {
            break;
        }
        if let Some(p) = pacer.filter(|p| p.due(now) <= sent) {
            tokio::select! {
                _ = tokio::time::sleep_until(p.when_due(sent + 1)) => {}
                _ = sleep_until_opt(phase.stop_at) => {}
                _ = shared.stop.cancelled() => {}
            }
            continue;
        }
        message.clear();
        let us = shared.legacy_next_us.fetch_add(1, Ordering::Relaxed);
        let Some(time) = chrono::DateTime::from_timestamp_micros(us) else {
            result.error(live, ErrorKind::Protocol, || "clock out of range".into());
            break;
        };
        let local = time.with_timezone(&chrono::Local).naive_local();
        legacy::encode_reading_value(local, &FieldValue::Int(sent as i64), &mut message);
        let at = Instant::now();
        let exchange = async {
            stream.write_all(&message).await?;
            let mut pong = [0u8; 4];
            stream.read_exact(&mut pong).await?;
            Ok::<_, std::io::Error>(pong)
        };
        let pong = tokio::time::timeout(ACK_TIMEOUT, exchange).await;
        sent += 1;
        match pong {
            Ok(Ok(pong)) if pong == legacy::PONG => {
                let now = Instant::now();
                live.acked.fetch_add(1, Ordering::Relaxed);
                if now >= phase.measure_from {
                    result.rtt.record(now - at);
                    result.readings += 1;
                    result.bytes += message.len() as u64;
                    result.last_ack = Some(now);
                }
            }
            Ok(Ok(other)) => {
                result.unacked += 1;
                result.error(live, ErrorKind::Protocol, || {
                    format!("expected pong, got {:?}", String::from_utf8_lossy(&other))
                });
                break;
            }
            Ok(Err(err)) => {
                result.unacked += 1;
                result.error(live, ErrorKind::Disconnect, || {
                    format!("legacy exchange: {err}")
                });
                break;
            }
            Err(_) => {
                result.unacked += 1;
                result.error(live, ErrorKind::Timeout, || {
                    format!("no pong within {}", humantime::format_duration(ACK_TIMEOUT))
                });
                break;
            }
        }
    }
    let _ = stream.shutdown().await;
}

/// Live progress on stderr until `done`: a bar on a terminal, else a line per second.
fn spawn_progress(
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Option<Phase>>,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let style = shared.settings.progress;
        if style == ProgressStyle::Off {
            return;
        }
        let live = &shared.live;
        let s = &shared.settings;
        let bar = (style == ProgressStyle::Bar).then(|| {
            let bar = match s.count {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let template = if s.count.is_some() {
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} acked, {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {msg}"
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar
        });
        let tick = if bar.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        // The first line after one tick, not at once: there is nothing to say yet.
        let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Rate over the last second, from (time, acked) samples.
        let mut samples: VecDeque<(Instant, u64)> =
            VecDeque::from([(Instant::now(), live.acked.load(Ordering::Relaxed))]);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = done.cancelled() => break,
            }
            let now = Instant::now();
            let acked = live.acked.load(Ordering::Relaxed);
            let errors = live.errors.load(Ordering::Relaxed);
            let established = live.established.load(Ordering::Relaxed);
            samples.push_back((now, acked));
            while samples.len() > 2 && now - samples[0].0 > Duration::from_secs(1) {
                samples.pop_front();
            }
            let rate = match samples.front() {
                Some(&(t, n)) if now > t => (acked - n) as f64 / (now - t).as_secs_f64(),
                _ => 0.0,
            };
            let current = *phase.borrow_and_update();
            let msg = match current {
                None => format!(
                    "connecting: {established}/{} established, {errors} errors",
                    s.connections
                ),
                Some(p) => {
                    let stage = if now < p.measure_from { "warm-up " } else { "" };
                    // A count bar shows the acked count itself.
                    let acked = if bar.is_some() && s.count.is_some() {
                        String::new()
                    } else {
                        format!("{acked} acked, ")
                    };
                    format!(
                        "{stage}{acked}{rate:.0} readings/s, {errors} errors, {established} connections"
                    )
                }
            };
            match &bar {
                Some(bar) => {
                    bar.set_position(acked);
                    bar.set_message(msg);
                    bar.tick();
                }
                None => eprintln!("bench: {msg}"),
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    })
}

/// Latency percentiles of the acks, in µs.
#[derive(Debug, Clone, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    min: f64,
    avg: f64,
    /// Samples: one per ack (per sync), or per `pong` in legacy mode.
    count: u64,
}

impl From<RttSummary> for Latency {
    fn from(s: RttSummary) -> Self {
        Latency {
            p50: s.p50_us,
            p90: s.p90_us,
            p99: s.p99_us,
            p999: s.p999_us,
            max: s.max_us,
            min: s.min_us,
            avg: s.avg_us,
            count: s.count,
        }
    }
}

/// The result of a run: printed as text or as one JSON object.
#[derive(Debug, Clone, Serialize)]
struct Report {
    mode: Mode,
    addr: String,
    /// Readings acknowledged during the measurement.
    readings: u64,
    /// From the end of the warm-up to the last ack.
    seconds: f64,
    readings_per_sec: f64,
    /// Bytes of readings written per second, in 10^6 bytes.
    mb_per_sec: f64,
    bytes: u64,
    errors: u64,
    errors_by_kind: ErrorCounts,
    /// Readings written but never acknowledged.
    unacked: u64,
    /// Connections established (and answering `ping`).
    connections: u64,
    connect_seconds: f64,
    latency_us: Latency,
    // The flags, as given (after defaults).
    connections_requested: usize,
    rate: f64,
    pipeline: usize,
    batch: usize,
    duration_s: Option<f64>,
    count: Option<u64>,
    fields: usize,
    measurement: String,
    warmup_s: f64,
    interval_s: Option<f64>,
    source_ips: Option<u8>,
    connect_rate: f64,
}

impl Report {
    fn new(
        s: &Settings,
        mut total: ConnResult,
        established: u64,
        seconds: f64,
        connect_seconds: f64,
    ) -> Report {
        let per_sec = |v: f64| if seconds > 0.0 { v / seconds } else { 0.0 };
        Report {
            mode: s.mode,
            addr: s.addr.clone(),
            readings: total.readings,
            seconds,
            readings_per_sec: per_sec(total.readings as f64),
            mb_per_sec: per_sec(total.bytes as f64) / 1e6,
            bytes: total.bytes,
            errors: total.errors.total(),
            errors_by_kind: total.errors,
            unacked: total.unacked,
            connections: established,
            connect_seconds,
            latency_us: total.rtt.summary().into(),
            connections_requested: s.connections,
            rate: s.rate,
            pipeline: s.pipeline,
            batch: s.batch,
            duration_s: s.duration.map(|d| d.as_secs_f64()),
            count: s.count,
            fields: s.fields,
            measurement: s.measurement.clone(),
            warmup_s: s.warmup.as_secs_f64(),
            interval_s: s.interval.map(|d| d.as_secs_f64()),
            source_ips: s.source_ips,
            connect_rate: s.connect_rate,
        }
    }

    fn write_human(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mode = match self.mode {
            Mode::Line => format!(
                "line mode, pipeline {}, batch {}",
                self.pipeline, self.batch
            ),
            Mode::Idle => format!(
                "idle mode, one reading per {} per connection",
                humantime::format_duration(Duration::from_secs_f64(self.interval_s.unwrap_or(0.0)))
            ),
            Mode::Legacy => "legacy mode (seed bytes, one message in flight)".to_string(),
        };
        writeln!(out, "sensorlink bench {}: {mode}", self.addr)?;
        writeln!(
            out,
            "connections    {} of {} established in {:.3} s",
            self.connections, self.connections_requested, self.connect_seconds
        )?;
        writeln!(out, "readings acked {}", self.readings)?;
        writeln!(out, "seconds        {:.3}", self.seconds)?;
        writeln!(out, "readings/s     {:.0}", self.readings_per_sec)?;
        writeln!(out, "MB/s           {:.2}", self.mb_per_sec)?;
        let e = &self.errors_by_kind;
        writeln!(
            out,
            "errors         {} (connect {}, error replies {}, rejected {}, disconnects {}, timeouts {}, protocol {}); unacked readings {}",
            self.errors, e.connect, e.replies, e.rejected, e.disconnects, e.timeouts, e.protocol, self.unacked
        )?;
        let l = &self.latency_us;
        writeln!(
            out,
            "ack latency µs p50 {:.0}  p90 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}  ({} samples)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        )
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
    fn encoded_lines_parse_back_with_distinct_timestamps() {
        let mut enc = LineEncoder::new("cpu load", 7, 3, 1_000).expect("encoder");
        let mut out = Vec::new();
        let mut lens = 0;
        for _ in 0..3 {
            lens += enc.encode(&mut out);
        }
        assert_eq!(lens, out.len());
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 3);
        for (i, line) in lines.iter().enumerate() {
            let r = ilp::parse(line).expect("parses");
            assert_eq!(r.measurement, "cpu load");
            assert_eq!(r.tag("sensor"), Some("bench-7"));
            assert_eq!(r.timestamp_ns, Some(1_000 + i as i64));
            let keys: Vec<&str> = r.fields.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["f0", "f1", "f2"]);
            assert!(r
                .fields
                .iter()
                .all(|(_, v)| matches!(v, FieldValue::Float(_))));
        }
        assert_eq!(
            String::from_utf8_lossy(lines[1]),
            "cpu\\ load,sensor=bench-7 f0=3.1,f1=3.8,f2=4.5 1001"
        );
    }

    #[test]
    fn bad_measurements_are_refused() {
        assert!(LineEncoder::new("", 0, 1, 0).is_err());
        assert!(LineEncoder::new("a\nb", 0, 1, 0).is_err());
    }

    #[test]
    fn count_is_split_exactly() {
        for (total, conns) in [(2000, 4), (7, 3), (1, 5), (10, 1)] {
            let sum: u64 = (0..conns).map(|i| count_share(total, conns, i)).sum();
            assert_eq!(sum, total);
        }
        assert_eq!(count_share(7, 3, 0), 3);
        assert_eq!(count_share(7, 3, 2), 2);
    }

    #[test]
    fn pacer_spreads_readings_and_connections() {
        let go = Instant::now();
        assert!(Pacer::new(0.0, go, 0, 1).is_none());
        let p = Pacer::new(1000.0, go, 0, 1).expect("paced");
        assert_eq!(p.due(go), 1);
        assert_eq!(p.due(go + Duration::from_micros(999)), 1);
        assert_eq!(p.due(go + Duration::from_millis(1)), 2);
        assert_eq!(p.due(go + Duration::from_millis(10)), 11);
        assert_eq!(p.when_due(1), go);
        assert_eq!(p.when_due(11), go + Duration::from_millis(10));
        // The second of two connections starts half a period later.
        let q = Pacer::new(1000.0, go, 1, 2).expect("paced");
        assert_eq!(q.due(go), 0);
        assert_eq!(q.when_due(1), go + Duration::from_micros(500));
    }

    #[test]
    fn window_matches_acks_in_order() {
        let t = Instant::now();
        let mut w = Window::new(2);
        let sync = |token| PendingSync {
            token,
            readings: 4,
            written_at: t,
        };
        w.push(sync(1));
        assert!(w.has_room());
        w.push(sync(2));
        assert!(!w.has_room());
        assert_eq!(w.unacked_readings(), 8);
        w.stamp_newest(1, t + Duration::from_secs(1));
        assert_eq!(w.deadline(), Some(t + ACK_TIMEOUT));
        assert!(w.on_ack("2").is_err(), "out of order");
        assert_eq!(w.on_ack("1").map(|s| s.token), Ok(1));
        assert_eq!(w.deadline(), Some(t + Duration::from_secs(1) + ACK_TIMEOUT));
        assert_eq!(w.on_ack("2").map(|s| s.readings), Ok(4));
        assert!(w.on_ack("3").is_err(), "nothing outstanding");
        assert!(w.is_empty());
    }

    #[test]
    fn replies_are_counted() {
        let live = Live::default();
        let mut result = ConnResult::new(Arc::default());
        let t = Instant::now();
        let mut w = Window::new(4);
        for token in 1..=2 {
            w.push(PendingSync {
                token,
                readings: 3,
                written_at: t,
            });
        }
        let mut errors = 0;
        let mut buf = BytesMut::from(
            &b"ack 1 readings=3 rejected=0 store_us=5 commit_us=2\r\nerror 5 invalid reading: x\nack 2 readings=2 rejected=1\npong bench\nack"[..],
        );
        let now = t + Duration::from_micros(250);
        assert!(
            handle_replies(&mut buf, &mut w, &mut errors, true, now, &live, &mut result).is_ok()
        );
        assert_eq!(&buf[..], b"ack", "a partial line waits for more bytes");
        assert_eq!(result.readings, 5);
        assert_eq!(result.rtt.summary().count, 2);
        // The rejected line was reported once, by its `error` reply.
        assert_eq!(result.errors.replies, 1);
        assert_eq!(result.errors.rejected, 0);
        assert_eq!(live.acked.load(Ordering::Relaxed), 5);

        let mut bad = BytesMut::from(&b"ack 9 readings=1 rejected=0\n"[..]);
        assert!(
            handle_replies(&mut bad, &mut w, &mut errors, true, now, &live, &mut result).is_err()
        );
        assert_eq!(result.errors.protocol, 1);
        assert_eq!(result.errors.total(), 2);
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

    #[test]
    fn source_ips_cycle_over_loopback() {
        assert_eq!(source_ip(0, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_ip(2, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(source_ip(3, 3), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(
            source_ip(253, 254),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 254))
        );
    }
}
