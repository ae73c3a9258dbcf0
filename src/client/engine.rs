//! The client's one event loop, shared by line mode and legacy mode: connect (through a
//! [`Connector`]) and handshake, send what the [`ClientState`] says is due, match replies,
//! report readings not acknowledged within the reply timeout as lost, reconnect with backoff
//! and jitter, resend what was not acknowledged, and drain at the end.
//!
//! What differs between the modes (bytes, the reply decoder, how a reply is matched to a
//! reading, how many readings may be in flight) is a [`Session`]. The loop never blocks:
//! spool disk work runs on a blocking thread ([`super::spool_io`]), and every wait is a tokio
//! timer, so whole runs are tested under paused time over in-memory streams.

use std::time::Duration;

use bytes::Bytes;
use rand::RngExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::error::ClientError;
use super::output::{Printer, RunTotals, ServerShare, ServerTimes, Summary};
use super::report::RunReport;
use super::spool::DropReason;
use super::spool_io::SpoolIo;
use super::state::ClientState;
use super::stats::RttStats;
use super::transport::{self, Connection, Connector, TransportError};
use super::{sleep_until_opt, ClientConfig};
use crate::protocol::{FieldValue, Reading};

/// First wait before reconnecting; doubles up to the configured maximum.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Most bytes queued for the socket at once; more readings wait in the state machine.
const MAX_QUEUED_BYTES: usize = 64 * 1024;

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

    /// Start again from the first delay (only once a connection has carried an ack).
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

/// What a reply means for delivery, as a [`Session`] reads it.
#[derive(Debug)]
pub(crate) enum Event {
    /// Everything sent up to `token` is stored (`rejected`: the reading `token` was refused).
    Ack {
        token: u64,
        rejected: bool,
        times: ServerTimes,
        /// The raw reply, printed as it came (legacy mode).
        raw: Option<Bytes>,
    },
    /// The server refused line `line` of this connection.
    Rejected { line: u64, reason: String },
    /// Nothing to do (a `pong`, or an ack we cannot match).
    Ignore,
}

/// One protocol's part of the loop: its bytes and how replies match readings.
pub(crate) trait Session {
    type Decoder: Decoder<Error = TransportError>;

    /// The seed's reporting: connect time includes the first pong, losses are printed as
    /// `Packet loss`, and resent readings' RTTs count too.
    const LEGACY: bool;

    fn decoder(&self) -> Self::Decoder;

    /// The opening exchange on a new connection.
    async fn handshake<S: AsyncRead + AsyncWrite>(
        &self,
        conn: &mut Connection<S, Self::Decoder>,
        timeout: Duration,
    ) -> Result<(), TransportError>;

    /// Most readings in flight at once.
    fn window(&self) -> usize;

    /// The reading for a value produced at `timestamp_ns`.
    fn reading(&self, value: FieldValue, timestamp_ns: i64) -> Reading;

    /// Append the bytes that send reading `seq`.
    fn encode(&self, seq: u64, reading: &Reading, out: &mut Vec<u8>);

    /// What `reply` means; `oldest_in_flight` is the first reading awaiting its reply.
    fn interpret(
        &self,
        reply: <Self::Decoder as Decoder>::Item,
        oldest_in_flight: Option<u64>,
    ) -> Event;
}

/// What ended one connection.
enum Disconnect {
    /// Give up: the run is over.
    Done,
    /// Reconnect, for this reason.
    Retry(String),
}

/// Sums of the server's own timings over the acks that carried them.
#[derive(Debug, Default)]
struct ServerSums {
    acks: u64,
    store_us: f64,
    commit_us: f64,
    network_us: f64,
}

/// One run of the client: the state of delivery and everything it reports.
pub(crate) struct Engine<'a, S: Session> {
    config: &'a ClientConfig,
    session: S,
    printer: Printer,
    state: ClientState,
    rtt: RttStats,
    started: Instant,
    first_connect: Option<Duration>,
    reconnects: u64,
    /// The source has ended (count reached, EOF, stop): deliver what is left, then stop.
    draining_since: Option<Instant>,
    server: ServerSums,
    /// The on-disk queue (`--spool`): every reading is appended before it is sent.
    spool: Option<SpoolIo>,
    /// Readings recovered from the spool at start and sent again.
    replayed: u64,
    values: mpsc::Receiver<(FieldValue, i64)>,
    values_open: bool,
    stop: CancellationToken,
    /// The current connection carried an ack (only then is the backoff reset).
    acked_on_connection: bool,
}

impl<'a, S: Session> Engine<'a, S> {
    pub(crate) fn new(
        config: &'a ClientConfig,
        session: S,
        printer: Printer,
        values: mpsc::Receiver<(FieldValue, i64)>,
        stop: CancellationToken,
    ) -> Self {
        Engine {
            config,
            session,
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
            draining_since: None,
            server: ServerSums::default(),
            spool: None,
            replayed: 0,
            values,
            values_open: true,
            stop,
            acked_on_connection: false,
        }
    }

    /// Run until the values end and are delivered (or the drain times out), or the stop
    /// token fires and what is pending is delivered.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no connection ever succeeded, a spool that cannot be
    /// opened, or an output that cannot be written.
    pub(crate) async fn run<C: Connector>(
        mut self,
        mut connector: C,
    ) -> Result<RunReport, ClientError> {
        self.open_spool().await?;
        let delivered = self.deliver(&mut connector).await;
        // Whatever ended the run, what the spool holds is made durable for the next one.
        let closed = match self.spool.take() {
            Some(spool) => spool.close().await,
            None => Ok(()),
        };
        delivered?;
        if let Err(err) = closed {
            tracing::warn!(cause = %err, "closing the spool");
        }
        self.finish()
    }

    /// Open the spool and take back what a previous run left unacknowledged.
    async fn open_spool(&mut self) -> Result<(), ClientError> {
        let Some(dir) = &self.config.spool else {
            return Ok(());
        };
        let limits = super::spool::SpoolLimits {
            max_bytes: self.config.spool_max_bytes,
            max_age: self.config.spool_max_age,
        };
        let (spool, recovery) = SpoolIo::open(dir.clone(), limits).await?;
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
        self.output_ok()
    }

    /// The reconnect loop.
    async fn deliver<C: Connector>(&mut self, connector: &mut C) -> Result<(), ClientError> {
        let mut backoff = Backoff::new(self.config.max_backoff);
        let mut last_error = None;
        loop {
            self.output_ok()?;
            if self.finished() {
                break;
            }
            self.acked_on_connection = false;
            match self.connect(connector).await {
                Ok((conn, connect_time, ping)) => {
                    if self.first_connect.is_none() {
                        self.first_connect = Some(connect_time);
                    } else {
                        self.reconnects += 1;
                    }
                    self.printer.connected(
                        &self.config.addr,
                        connect_time,
                        ping,
                        self.reconnects,
                        self.state.pending(),
                    );
                    let end = self.session_loop(conn).await?;
                    let Disconnect::Retry(reason) = end else {
                        break;
                    };
                    self.state.on_disconnect();
                    // A server that accepts and then fails must not be hammered.
                    if self.acked_on_connection {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    self.printer.disconnected(&reason, delay);
                    if !self.wait_offline(delay).await? {
                        break;
                    }
                }
                Err(err) => {
                    // Never connected at all within the timeout: the server is unreachable.
                    let gave_up = self.started.elapsed() >= self.config.connect_timeout
                        || self.stop.is_cancelled();
                    if self.first_connect.is_none() && gave_up {
                        return Err(self.unreachable(err.to_string()));
                    }
                    last_error = Some(err.to_string());
                    let delay = backoff.next_delay();
                    tracing::debug!(cause = %err, ?delay, "connect failed");
                    if self.first_connect.is_some() {
                        self.printer
                            .disconnected(&format!("connect failed: {err}"), delay);
                    }
                    if !self.wait_offline(delay).await? {
                        break;
                    }
                }
            }
        }
        if self.first_connect.is_none() {
            let cause = last_error.unwrap_or_else(|| "no connection was attempted".to_string());
            return Err(self.unreachable(cause));
        }
        Ok(())
    }

    fn unreachable(&self, cause: String) -> ClientError {
        ClientError::Unreachable {
            addr: self.config.addr.clone(),
            cause,
        }
    }

    /// The first output error stops the run (a closed stdout: `| head`).
    fn output_ok(&mut self) -> Result<(), ClientError> {
        match self.printer.take_error() {
            Some(err) => Err(ClientError::Output(err)),
            None => Ok(()),
        }
    }

    /// Open a stream and handshake, within the connect timeout; times both.
    async fn connect<C: Connector>(
        &self,
        connector: &mut C,
    ) -> Result<
        (
            Connection<C::Stream, S::Decoder>,
            Duration,
            Option<Duration>,
        ),
        TransportError,
    > {
        let start = Instant::now();
        let stream = tokio::time::timeout(self.config.connect_timeout, connector.connect())
            .await
            .map_err(|_| TransportError::TimedOut { what: "connect" })??;
        let connect_time = start.elapsed();
        let mut conn = transport::split(stream, self.session.decoder());
        let ping_start = Instant::now();
        self.session
            .handshake(&mut conn, self.config.connect_timeout)
            .await?;
        if S::LEGACY {
            Ok((conn, start.elapsed(), None))
        } else {
            Ok((conn, connect_time, Some(ping_start.elapsed())))
        }
    }

    /// Whether the run is over: the source ended and nothing is left, or the drain timed out.
    fn finished(&mut self) -> bool {
        if self.values_open {
            return false;
        }
        let since = *self.draining_since.get_or_insert_with(Instant::now);
        self.state.pending() == 0 || since.elapsed() >= self.config.drain_timeout
    }

    fn drain_deadline(&self) -> Option<Instant> {
        self.draining_since
            .map(|since| since + self.config.drain_timeout)
    }

    /// While offline: keep accepting readings until `delay` passes. `false` = stop now.
    async fn wait_offline(&mut self, delay: Duration) -> Result<bool, ClientError> {
        let until = Instant::now() + delay;
        loop {
            let drain_deadline = self.drain_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(true),
                _ = sleep_until_opt(drain_deadline) => return Ok(false),
                value = self.values.recv(), if self.values_open => match value {
                    Some((value, ts)) => self.produce(value, ts).await?,
                    None => self.values_open = false,
                },
                _ = self.stop.cancelled(), if self.values_open => self.values_open = false,
            }
            self.output_ok()?;
            if self.finished() {
                return Ok(false);
            }
        }
    }

    async fn produce(&mut self, value: FieldValue, timestamp_ns: i64) -> Result<(), ClientError> {
        let reading = self.session.reading(value, timestamp_ns);
        if let Some(spool) = &mut self.spool {
            let seq = self.state.next_seq();
            match spool.append(seq, reading.clone()).await? {
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
        Ok(())
    }

    /// Queue every reading that is due and fits the session's window.
    fn queue_due<W: AsyncWrite + Unpin>(&mut self, writer: &mut transport::LineWriter<W>) {
        let mut out = Vec::new();
        let now = Instant::now().into_std();
        while writer.queued() + out.len() < MAX_QUEUED_BYTES
            && self.state.in_flight() < self.session.window()
        {
            let Some(next) = self.state.next_to_send(now) else {
                break;
            };
            self.session.encode(next.seq, &next.reading, &mut out);
        }
        writer.queue(&out);
    }

    /// One connection's life: send readings, read replies, watch the timeouts.
    async fn session_loop<T: AsyncRead + AsyncWrite>(
        &mut self,
        conn: Connection<T, S::Decoder>,
    ) -> Result<Disconnect, ClientError> {
        let (mut reader, mut writer) = conn;
        let reply_timeout = self.config.reply_timeout;
        // Set while bytes wait for the peer: it must take some within the write timeout.
        let mut write_deadline: Option<Instant> = None;
        loop {
            self.output_ok()?;
            self.queue_due(&mut writer);
            if !writer.busy() {
                write_deadline = None;
            } else if write_deadline.is_none() {
                write_deadline = Some(Instant::now() + self.config.write_timeout);
            }
            if self.finished() {
                return Ok(Disconnect::Done);
            }
            let reply_deadline = self
                .state
                .next_deadline(reply_timeout)
                .map(Instant::from_std);
            let drain_deadline = self.drain_deadline();
            tokio::select! {
                reply = reader.read_reply() => match reply {
                    Ok(reply) => self.on_reply(reply).await?,
                    Err(err) => return Ok(Disconnect::Retry(err.to_string())),
                },
                pushed = writer.push(), if writer.busy() => match pushed {
                    // Progress: the peer reads; give it a new write timeout for the rest.
                    Ok(()) => write_deadline = None,
                    Err(err) => return Ok(Disconnect::Retry(format!("write failed: {err}"))),
                },
                _ = sleep_until_opt(write_deadline) => {
                    return Ok(Disconnect::Retry(format!(
                        "write failed: server does not read (nothing taken within {})",
                        humantime::format_duration(self.config.write_timeout)
                    )));
                }
                value = self.values.recv(), if self.values_open => match value {
                    Some((value, ts)) => self.produce(value, ts).await?,
                    None => self.values_open = false,
                },
                _ = self.stop.cancelled(), if self.values_open => self.values_open = false,
                _ = sleep_until_opt(reply_deadline) => {
                    let now = Instant::now().into_std();
                    let lost = self.state.check_timeouts(now, reply_timeout);
                    for seq in &lost {
                        self.printer.lost(*seq, reply_timeout, S::LEGACY);
                    }
                    if !lost.is_empty() {
                        // A late reply would be taken for the next one: start afresh.
                        return Ok(Disconnect::Retry(format!(
                            "no ack within {}",
                            humantime::format_duration(reply_timeout)
                        )));
                    }
                }
                _ = sleep_until_opt(drain_deadline) => return Ok(Disconnect::Done),
            }
        }
    }

    async fn on_reply(&mut self, reply: <S::Decoder as Decoder>::Item) -> Result<(), ClientError> {
        match self.session.interpret(reply, self.state.oldest_in_flight()) {
            Event::Ignore => {}
            Event::Rejected { line, reason } => self.printer.rejected(line, &reason),
            Event::Ack {
                token,
                rejected,
                times,
                raw,
            } => {
                let now = Instant::now().into_std();
                if let Some(spool) = &mut self.spool {
                    if let Err(err) = spool.ack_through(token).await? {
                        // Harmless: the readings would be resent and deduplicated by the server.
                        tracing::warn!(cause = %err, "cannot record acks in the spool");
                    }
                }
                for acked in self.state.on_ack(token, rejected, now) {
                    self.acked_on_connection = true;
                    // A resent reading waited behind a backlog: its time says nothing of the link.
                    if S::LEGACY || !acked.resent {
                        self.rtt.record(acked.rtt);
                    }
                    if let Some(store_us) = times.store_us {
                        let sums = &mut self.server;
                        sums.acks += 1;
                        sums.store_us += store_us as f64;
                        sums.commit_us += times.commit_us.unwrap_or(0) as f64;
                        sums.network_us +=
                            (acked.rtt.as_secs_f64() * 1e6 - store_us as f64).max(0.0);
                    }
                    match &raw {
                        Some(raw) => {
                            self.printer
                                .legacy_reply(acked.seq, &acked.reading, raw, acked.rtt)
                        }
                        None => self.printer.acked(
                            acked.seq,
                            &acked.reading,
                            acked.rtt,
                            times,
                            acked.resent,
                        ),
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<RunReport, ClientError> {
        let spooled = self.config.spool.is_some();
        for seq in self.state.give_up() {
            self.printer.lost_at_exit(seq, spooled);
        }
        let sums = &self.server;
        let n = sums.acks as f64;
        let counters = self.state.counters();
        let summary = Summary::of(RunTotals {
            addr: &self.config.addr,
            counters,
            pending: self.state.pending() as u64,
            replayed: self.replayed,
            started: self.started.into_std(),
            first_connect: self.first_connect,
            reconnects: self.reconnects,
            rtt: self.rtt.summary(),
            server_us: (sums.acks > 0).then(|| ServerShare {
                store_avg: sums.store_us / n,
                commit_avg: sums.commit_us / n,
                network_avg: sums.network_us / n,
            }),
        });
        self.printer.summary(&summary);
        self.output_ok()?;
        Ok(RunReport { summary, counters })
    }
}
