//! `sensorlink bench`: a load generator on the client's code path.
//!
//! One tokio task per connection, on the same pieces as the client: readings are line
//! protocol ([`crate::protocol::ilp`]); the opening `ping`, the writes and every reply go
//! through the client's transport ([`crate::client::transport`]: the same reply decoders
//! and bounds); latencies go into [`RttStats`].
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
//!
//! # Layout
//! This file runs the phases and merges the results; the rest is one concept per file:
//! `args.rs` (flags → settings), `conn.rs` (connect + `ping` check), `line.rs` and `legacy.rs`
//! (one connection's session per mode), `pace.rs` (count share, rate), `progress.rs`
//! (stderr while running), `report.rs` (tallies and the final report), `timeline.rs` (the
//! run per second, for the picture `--report` draws with [`crate::plot::bench`]).

mod args;
mod conn;
mod legacy;
mod line;
mod pace;
mod progress;
mod report;
pub mod timeline;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use args::BenchArgs;
use args::Settings;
use progress::{spawn_progress, Live};
pub use report::Report;
use report::{ConnResult, ErrorKind, RunLatencies, SharedLatencies};

/// A sync (or legacy message) not answered within this time is an error, and ends its
/// connection: a server that slow is broken, not busy.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Run the benchmark and print its report.
///
/// # Errors
/// Bad flags, an address that does not resolve, no connection established (with `--json`
/// the report of zeros is printed first, for scripts), or stdout failing.
pub fn run(args: BenchArgs) -> anyhow::Result<Report> {
    let settings = Settings::from_args(args, std::io::stderr().is_terminal())
        .map_err(|msg| anyhow::anyhow!("bench: {msg}"))?;
    if let Some(path) = &settings.report {
        // A missing font or an unwritable file fails now, not after the run.
        crate::plot::check_ready(path)?;
    }
    // Likewise an unwritable histogram file.
    let histogram_file = settings
        .latency_histogram
        .as_ref()
        .map(|path| {
            std::fs::File::create(path)
                .with_context(|| format!("--latency-histogram {}", path.display()))
        })
        .transpose()?;
    // Multi-thread where it may use several cores (the generator must spread over them like
    // the server); current-thread where it may use one (pinned), saving a hand-off per reply.
    let runtime = crate::cli::runtime()?;
    let report = runtime.block_on(bench(settings.clone()))?;
    let mut out = std::io::stdout().lock();
    if settings.json {
        serde_json::to_writer(&mut out, &report).context("writing the report")?;
        use std::io::Write as _;
        writeln!(out).context("writing the report")?;
    } else if report.connections > 0 {
        // Without a connection a report of zeros would only bury the cause.
        report.write_human(&mut out).context("writing the report")?;
    }
    if report.connections == 0 {
        let cause = report
            .first_error
            .as_deref()
            .unwrap_or("no connection was attempted");
        anyhow::bail!("cannot reach {}: {cause}", settings.addr);
    }
    if let Some(cause) = &report.first_error {
        tracing::warn!(%cause, "bench: first error");
    }
    if let (Some(path), Some(seconds)) = (&settings.report, &report.timeline) {
        crate::plot::bench::write(path, &report.picture_lines(), seconds)?;
    }
    if let (Some(file), Some(path), Some(histogram)) = (
        histogram_file,
        &settings.latency_histogram,
        &report.histogram,
    ) {
        report::write_histogram(std::io::BufWriter::new(file), histogram)
            .with_context(|| format!("writing --latency-histogram {}", path.display()))?;
    }
    Ok(report)
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
    /// Ack latencies of every connection (and, with `--report`, per second).
    latencies: SharedLatencies,
    /// `--tls`: how every connection's handshake is made.
    tls: Option<conn::TlsSetup>,
}

/// When the run's phases begin and end; sent to every task once all have connected.
#[derive(Debug, Clone, Copy)]
struct Phase {
    go: Instant,
    measure_from: Instant,
    stop_at: Option<Instant>,
}

/// Resolve, connect every connection, run, collect.
async fn bench(settings: Settings) -> anyhow::Result<Report> {
    let target = conn::resolve(&settings.addr)
        .await
        .with_context(|| format!("cannot reach {}", settings.addr))?;
    if settings.source_ips.is_some() && !(target.is_ipv4() && target.ip().is_loopback()) {
        anyhow::bail!(
            "bench: --source-ips binds 127.0.0.x, so ADDR must be an IPv4 loopback address"
        );
    }
    let latencies = Arc::new(std::sync::Mutex::new(RunLatencies {
        timeline: settings
            .report
            .as_ref()
            .map(|_| timeline::Timeline::new(Instant::now())),
        ..RunLatencies::default()
    }));
    // Certificate files are read once, here, so a bad --ca fails before any connection.
    let tls = (settings.tls.as_ref())
        .map(|tls| conn::TlsSetup::new(&settings.addr, tls))
        .transpose()?;
    let shared = Arc::new(Shared {
        tls,
        settings,
        target,
        live: Live::default(),
        start_ns: crate::timefmt::now_ns(),
        legacy_next_us: AtomicI64::new(crate::timefmt::now_ns() / 1000),
        stop: CancellationToken::new(),
        latencies,
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
    if let Some(timeline) = &mut lock_latencies(&shared.latencies).timeline {
        timeline.restart(measure_from);
    }
    phase_tx.send_replace(Some(Phase {
        go,
        measure_from,
        stop_at: s.duration.map(|d| measure_from + d),
    }));

    let mut total = ConnResult::new(shared.latencies.clone());
    // Readings acked per established connection, for the fairness figures.
    let mut per_connection = Vec::with_capacity(tasks.len());
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
        if result.established {
            per_connection.push(result.readings);
        }
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

    // The measurement lasts until its last ack (the drain of the final window included).
    let end = total.last_ack.unwrap_or(finished).max(measure_from);
    let seconds = (end - measure_from).as_secs_f64();
    let mut report = Report::new(s, total, &per_connection, seconds, connect_seconds);
    report.timeline = lock_latencies(&shared.latencies)
        .timeline
        .as_ref()
        .map(|timeline| timeline.seconds(end));
    if s.latency_histogram.is_some() {
        report.histogram = Some(lock_latencies(&shared.latencies).stats.recorded_us());
    }
    Ok(report)
}

/// The run's latencies; a connection task that panicked holding the lock cannot have left
/// them in a state that matters for a report.
fn lock_latencies(latencies: &SharedLatencies) -> std::sync::MutexGuard<'_, RunLatencies> {
    latencies
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection's life: connect, wait for the start, send, drain.
async fn connection(
    shared: Arc<Shared>,
    index: usize,
    attempted: mpsc::UnboundedSender<()>,
    mut phase: watch::Receiver<Option<Phase>>,
) -> ConnResult {
    let mut result = ConnResult::new(shared.latencies.clone());
    let opened = conn::connect(&shared, index).await;
    // Dropping the sender too: the main task waits for all of them to be gone.
    let _ = attempted.send(());
    drop(attempted);
    let opened = match opened {
        Ok(opened) => opened,
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
    match opened {
        conn::Stream::Plain(opened) => session(&shared, index, opened, phase, &mut result).await,
        conn::Stream::Tls(opened) => session(&shared, index, opened, phase, &mut result).await,
    }
    result
}

/// The sending part of a connection's life, over plain TCP or TLS alike.
async fn session<S>(
    shared: &Shared,
    index: usize,
    opened: conn::Opened<S>,
    phase: Phase,
    result: &mut ConnResult,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    match opened {
        conn::Opened::Line(conn) => line::session(shared, index, conn, phase, result).await,
        conn::Opened::Legacy(conn) => legacy::session(shared, index, conn, phase, result).await,
    }
}
