//! `sensorlink client`: produce readings, deliver each one, measure every round trip.
//!
//! [`source`] makes values, [`state`] keeps each reading until it is acknowledged (no I/O),
//! [`stats`] accumulates RTTs, [`output`] prints. This module is the event loop that ties
//! them to a TCP connection: connect, send `reading` + `sync <seq>`, match `ack <seq>`,
//! report timeouts as lost, reconnect with backoff and jitter, and resend what was not
//! acknowledged. [`legacy`] speaks the seed's bytes instead.

pub mod legacy;
pub mod output;
pub mod source;
pub mod spool;
pub mod state;
pub mod stats;

use std::time::{Duration, Instant};

use rand::RngExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::cli::Outcome;
use crate::protocol::control::Reply;
use crate::protocol::{ilp, FieldValue, Reading};
use output::{Printer, RunTotals, ServerShare, ServerTimes, Summary};
use source::{Source, SourceSpec};
use spool::{DropReason, Spool, SpoolError, SpoolLimits};
use state::ClientState;
use stats::RttStats;

/// Validated client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub addr: String,
    pub sensor: String,
    pub measurement: String,
    pub interval: Duration,
    pub count: Option<u64>,
    pub timeout: Duration,
    pub legacy: bool,
    pub json: bool,
    pub source: SourceSpec,
    pub max_pending: usize,
    pub max_backoff: Duration,
    /// On-disk queue directory (`--spool`); `None` keeps unacked readings in memory only.
    pub spool: Option<std::path::PathBuf>,
    pub spool_max_bytes: u64,
    pub spool_max_age: Option<Duration>,
}

/// First wait before reconnecting; doubles up to `max_backoff`.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Longest reply line we accept from a server.
const MAX_REPLY_BYTES: usize = 4096;

/// Run the client until the count is reached, the source ends, or Ctrl-C.
pub async fn run(config: ClientConfig) -> Outcome {
    let printer = Printer { json: config.json };
    printer.start(
        &config.addr,
        &config.sensor,
        config.interval,
        config.legacy,
        config.timeout,
    );
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.cancel();
            }
        });
    }
    let values = spawn_producer(&config, stop.clone());
    if config.legacy {
        legacy::run(&config, printer, values, stop).await
    } else {
        LineClient::new(&config, printer).run(values, stop).await
    }
}

/// Backoff with jitter: a random wait in [d/2, d], d doubling up to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: INITIAL_BACKOFF.min(max),
            max,
        }
    }

    pub fn reset(&mut self) {
        self.next = INITIAL_BACKOFF.min(self.max);
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        let jitter_ns = rand::rng().random_range(0..=half.as_nanos().max(1) as u64);
        half + Duration::from_nanos(jitter_ns)
    }
}

/// Produce values from the source on their own task, so readings keep being made (with
/// their own timestamps) while the connection is down.
fn spawn_producer(
    config: &ClientConfig,
    stop: tokio_util::sync::CancellationToken,
) -> mpsc::Receiver<(FieldValue, i64)> {
    let (tx, rx) = mpsc::channel(1024);
    let mut source = Source::new(&config.source, config.interval, config.legacy);
    let count = config.count;
    tokio::spawn(async move {
        let mut produced = 0u64;
        let mut errors_in_a_row = 0u32;
        while count.is_none_or(|count| produced < count) {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = source.next() => next,
            };
            match next {
                Ok(Some(value)) => {
                    errors_in_a_row = 0;
                    produced += 1;
                    if tx.send((value, crate::timefmt::now_ns())).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    errors_in_a_row += 1;
                    tracing::warn!(cause = %err, "source gave no value");
                    if errors_in_a_row >= 10
                        && matches!(err, source::SourceError::NotANumber { .. })
                    {
                        tracing::warn!("source keeps failing");
                    }
                }
            }
        }
    });
    rx
}

/// What ended one connection.
enum Disconnect {
    /// Give up: the run is over.
    Done,
    /// Reconnect, for this reason.
    Retry(String),
}

struct LineClient<'a> {
    config: &'a ClientConfig,
    printer: Printer,
    state: ClientState,
    rtt: RttStats,
    started: Instant,
    first_connect: Option<Duration>,
    reconnects: u64,
    connected_once: bool,
    /// The source has ended (count reached, EOF, Ctrl-C): deliver what is left, then stop.
    draining_since: Option<Instant>,
    server_store_us: (u64, f64, f64, f64),
    rejected_lines: u64,
    /// The on-disk queue (`--spool`): every reading is appended before it is sent.
    spool: Option<Spool>,
    /// Readings recovered from the spool at start and sent again.
    replayed: u64,
}

impl<'a> LineClient<'a> {
    fn new(config: &'a ClientConfig, printer: Printer) -> Self {
        LineClient {
            config,
            printer,
            // With a spool, its byte and age limits decide what is kept, not a count.
            state: ClientState::new(if config.spool.is_some() {
                usize::MAX
            } else {
                config.max_pending
            }),
            rtt: RttStats::new(),
            started: Instant::now(),
            first_connect: None,
            reconnects: 0,
            connected_once: false,
            draining_since: None,
            server_store_us: (0, 0.0, 0.0, 0.0),
            rejected_lines: 0,
            spool: None,
            replayed: 0,
        }
    }

    /// Open the spool and take back what a previous run left unacknowledged.
    fn open_spool(&mut self) -> Result<(), SpoolError> {
        let Some(dir) = &self.config.spool else {
            return Ok(());
        };
        let limits = SpoolLimits {
            max_bytes: self.config.spool_max_bytes,
            max_age: self.config.spool_max_age,
        };
        let (spool, recovery) = tokio::task::block_in_place(|| Spool::open(dir, limits))?;
        for damage in &recovery.damage {
            self.printer.spool_damage(damage);
        }
        let dropped = recovery.dropped_by_age + recovery.dropped_by_bytes;
        self.replayed = recovery.readings.len() as u64;
        for spooled in recovery.readings {
            self.state
                .restore(spooled.seq, spooled.reading, recovery.next_seq);
        }
        self.state.restore_next_seq(recovery.next_seq);
        self.printer
            .spool_opened(dir, self.replayed, dropped, recovery.corrupt_records);
        self.spool = Some(spool);
        Ok(())
    }

    async fn run(
        mut self,
        mut values: mpsc::Receiver<(FieldValue, i64)>,
        stop: tokio_util::sync::CancellationToken,
    ) -> Outcome {
        if let Err(err) = self.open_spool() {
            eprintln!("sensorlink: {err}");
            return Outcome::Unusable;
        }
        let mut backoff = Backoff::new(self.config.max_backoff);
        let mut values_open = true;
        let mut last_error = None;
        loop {
            if self.finished(values_open) {
                break;
            }
            match self.connect().await {
                Ok((stream, connect_time, ping)) => {
                    backoff.reset();
                    if !self.connected_once {
                        self.first_connect = Some(connect_time);
                    } else {
                        self.reconnects += 1;
                    }
                    self.connected_once = true;
                    self.printer.connected(
                        &self.config.addr,
                        connect_time,
                        ping,
                        self.reconnects,
                        self.state.pending(),
                    );
                    match self
                        .session(stream, &mut values, &mut values_open, &stop)
                        .await
                    {
                        Disconnect::Done => break,
                        Disconnect::Retry(reason) => {
                            self.state.on_disconnect();
                            let delay = backoff.next_delay();
                            self.printer.disconnected(&reason, delay);
                            if !self
                                .wait_offline(delay, &mut values, &mut values_open, &stop)
                                .await
                            {
                                break;
                            }
                        }
                    }
                }
                Err(err) => {
                    // Never connected at all within the timeout: the server is unreachable.
                    let gave_up =
                        self.started.elapsed() >= self.config.timeout || stop.is_cancelled();
                    if !self.connected_once && gave_up {
                        eprintln!("sensorlink: cannot reach {}: {err}", self.config.addr);
                        return Outcome::Unusable;
                    }
                    last_error = Some(err.to_string());
                    let delay = backoff.next_delay();
                    tracing::debug!(cause = %err, ?delay, "connect failed");
                    if self.connected_once {
                        self.printer
                            .disconnected(&format!("connect failed: {err}"), delay);
                    }
                    if !self
                        .wait_offline(delay, &mut values, &mut values_open, &stop)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        if !self.connected_once {
            let cause = last_error
                .as_deref()
                .unwrap_or("no connection was attempted");
            eprintln!("sensorlink: cannot reach {}: {cause}", self.config.addr);
            return Outcome::Unusable;
        }
        self.finish()
    }

    /// Whether the run is over: the source ended and nothing is left, or the drain timed out.
    fn finished(&mut self, values_open: bool) -> bool {
        if values_open {
            return false;
        }
        let since = *self.draining_since.get_or_insert_with(Instant::now);
        self.state.pending() == 0 || since.elapsed() >= self.config.timeout
    }

    /// While offline: keep accepting readings until `delay` passes. `false` = stop now.
    async fn wait_offline(
        &mut self,
        delay: Duration,
        values: &mut mpsc::Receiver<(FieldValue, i64)>,
        values_open: &mut bool,
        stop: &tokio_util::sync::CancellationToken,
    ) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            let drain_deadline = self.drain_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                _ = sleep_until_opt(drain_deadline) => return false,
                value = values.recv(), if *values_open => match value {
                    Some((value, ts)) => self.produce(value, ts),
                    None => *values_open = false,
                },
                _ = stop.cancelled(), if *values_open => *values_open = false,
            }
            if self.finished(*values_open) {
                return false;
            }
        }
    }

    fn drain_deadline(&self) -> Option<tokio::time::Instant> {
        self.draining_since
            .map(|since| tokio::time::Instant::from_std(since + self.config.timeout))
    }

    fn produce(&mut self, value: FieldValue, timestamp_ns: i64) {
        let reading = Reading {
            measurement: self.config.measurement.clone(),
            tags: vec![("sensor".to_string(), self.config.sensor.clone())],
            fields: vec![("value".to_string(), value)],
            timestamp_ns: Some(timestamp_ns),
        };
        if let Some(spool) = &mut self.spool {
            let seq = self.state.next_seq();
            let now = crate::timefmt::now_ns();
            let appended = tokio::task::block_in_place(|| {
                let by_age = spool.expire(now)?;
                let by_bytes = spool.append(seq, &reading)?;
                Ok::<_, SpoolError>([by_age, by_bytes])
            });
            match appended {
                Ok(dropped) => {
                    for dropped in dropped.iter().filter(|d| !d.is_empty()) {
                        let why = match dropped.reason {
                            DropReason::MaxAge => "older than --spool-max-age",
                            DropReason::MaxBytes => "spool over --spool-max-bytes",
                        };
                        self.state.drop_seqs(&dropped.seqs);
                        for seq in &dropped.seqs {
                            self.printer.dropped(*seq, why);
                        }
                    }
                }
                // Still delivered from memory; only a client crash could lose it now.
                Err(err) => self
                    .printer
                    .spool_damage(&format!("cannot write the spool: {err}")),
            }
        }
        let produced = self.state.produce(reading);
        if let Some(dropped) = produced.dropped {
            self.printer
                .dropped(dropped, "more than --max-pending readings unacknowledged");
        }
    }

    /// Connect and time it: the TCP handshake, then one `ping` → `pong`.
    async fn connect(&self) -> std::io::Result<(TcpStream, Duration, Option<Duration>)> {
        let start = Instant::now();
        let connect = TcpStream::connect(&self.config.addr);
        let mut stream = tokio::time::timeout(self.config.timeout, connect)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let connect_time = start.elapsed();
        stream.set_nodelay(true)?;
        let ping_start = Instant::now();
        stream.write_all(b"ping connect\n").await?;
        let mut reader = BufReader::new(&mut stream);
        let mut line = String::new();
        let read = tokio::time::timeout(self.config.timeout, reader.read_line(&mut line))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "no pong within the timeout")
            })??;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        let ping = ping_start.elapsed();
        match Reply::parse(line.trim_end()) {
            Ok(Reply::Pong(_)) => Ok((stream, connect_time, Some(ping))),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "not a sensorlink server: answered {:?} to ping",
                    line.trim_end()
                ),
            )),
        }
    }

    /// One connection's life: send readings, read acks, watch timeouts.
    async fn session(
        &mut self,
        stream: TcpStream,
        values: &mut mpsc::Receiver<(FieldValue, i64)>,
        values_open: &mut bool,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Disconnect {
        let (read_half, mut write_half) = stream.into_split();
        let (reply_tx, mut replies) = mpsc::channel::<Result<Reply, String>>(256);
        let reader = tokio::spawn(read_replies(read_half, reply_tx));
        let end = loop {
            if let Err(err) = self.send_pending(&mut write_half).await {
                break Disconnect::Retry(format!("write failed: {err}"));
            }
            if self.finished(*values_open) {
                break Disconnect::Done;
            }
            let deadline = self
                .state
                .next_deadline(self.config.timeout)
                .map(tokio::time::Instant::from_std);
            let drain_deadline = self.drain_deadline();
            tokio::select! {
                reply = replies.recv() => match reply {
                    Some(Ok(reply)) => self.on_reply(reply),
                    Some(Err(err)) => break Disconnect::Retry(err),
                    None => break Disconnect::Retry("server closed the connection".into()),
                },
                value = values.recv(), if *values_open => match value {
                    Some((value, ts)) => self.produce(value, ts),
                    None => *values_open = false,
                },
                _ = stop.cancelled(), if *values_open => *values_open = false,
                _ = sleep_until_opt(deadline) => {
                    let lost = self.state.check_timeouts(Instant::now(), self.config.timeout);
                    for seq in &lost {
                        self.printer.lost(*seq, self.config.timeout, false);
                    }
                    if !lost.is_empty() {
                        break Disconnect::Retry(format!("no ack within {}", humantime::format_duration(self.config.timeout)));
                    }
                }
                _ = sleep_until_opt(drain_deadline) => break Disconnect::Done,
            }
        };
        reader.abort();
        end
    }

    async fn send_pending(&mut self, writer: &mut OwnedWriteHalf) -> std::io::Result<()> {
        let mut out = Vec::new();
        let now = Instant::now();
        while let Some(next) = self.state.next_to_send(now) {
            ilp::encode(&next.reading, &mut out);
            out.extend_from_slice(format!("sync {}\n", next.seq).as_bytes());
            if out.len() > 64 * 1024 {
                break;
            }
        }
        if out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.config.timeout, writer.write_all(&out)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "server does not read",
            )),
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Pong(_) => {}
            Reply::Ack(ack) => {
                let Ok(token) = ack.token.parse::<u64>() else {
                    tracing::warn!(token = %ack.token, "ack for a token we never sent");
                    return;
                };
                let rejected = ack.readings == 0 && ack.rejected > 0;
                let now = Instant::now();
                if let Some(spool) = &mut self.spool {
                    if let Err(err) = tokio::task::block_in_place(|| spool.ack_through(token)) {
                        // Harmless: the readings would be resent and deduplicated by the server.
                        tracing::warn!(cause = %err, "cannot record acks in the spool");
                    }
                }
                let times = ServerTimes {
                    store_us: ack.store_us,
                    commit_us: ack.commit_us,
                };
                for acked in self.state.on_ack(token, rejected, now) {
                    // A resent reading waited behind a backlog: its time says nothing of the link.
                    if !acked.resent {
                        self.rtt.record(acked.rtt);
                    }
                    if let Some(store_us) = ack.store_us {
                        let (n, store, commit, network) = &mut self.server_store_us;
                        *n += 1;
                        *store += store_us as f64;
                        *commit += ack.commit_us.unwrap_or(0) as f64;
                        *network += (acked.rtt.as_secs_f64() * 1e6 - store_us as f64).max(0.0);
                    }
                    self.printer
                        .acked(acked.seq, &acked.reading, acked.rtt, times, acked.resent);
                }
            }
            Reply::Error { line, reason } => {
                self.rejected_lines += 1;
                self.printer.rejected(line, &reason);
            }
        }
    }

    fn finish(mut self) -> Outcome {
        if let Some(spool) = self.spool.take() {
            if let Err(err) = tokio::task::block_in_place(|| spool.close()) {
                tracing::warn!(cause = %err, "closing the spool");
            }
        }
        let spooled = self.config.spool.is_some();
        for seq in self.state.give_up() {
            self.printer.lost_at_exit(seq, spooled);
        }
        let (n, store, commit, network) = self.server_store_us;
        let summary = Summary::of(RunTotals {
            addr: &self.config.addr,
            counters: self.state.counters(),
            pending: self.state.pending() as u64,
            replayed: self.replayed,
            started: self.started,
            first_connect: self.first_connect,
            reconnects: self.reconnects,
            rtt: self.rtt.summary(),
            server_us: (n > 0).then(|| ServerShare {
                store_avg: store / n as f64,
                commit_avg: commit / n as f64,
                network_avg: network / n as f64,
            }),
        });
        self.printer.summary(&summary);
        summary.outcome()
    }
}

/// Sleep until `deadline`, or forever when there is nothing to wait for.
pub(crate) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Read reply lines until the connection ends; a line we cannot parse ends it too.
async fn read_replies(
    read_half: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::Sender<Result<Reply, String>>,
) {
    let mut reader = BufReader::new(read_half);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_REPLY_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await;
        let message = match read {
            Ok(0) => return,
            Ok(_) if line.last() != Some(&b'\n') => {
                Err("reply line too long or cut off".to_string())
            }
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                Reply::parse(text.trim_end()).map_err(|err| format!("bad reply from server: {err}"))
            }
            Err(err) => Err(format!("read failed: {err}")),
        };
        let stop = message.is_err();
        if tx.send(message).await.is_err() || stop {
            return;
        }
    }
}
