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

#[cfg(test)]
mod tests {
    //! Whole client runs under paused time, over `tokio::io::duplex` pairs, against a tiny
    //! fake server task that speaks the line protocol's bytes.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, DuplexStream};

    use super::*;
    use crate::client::source::SourceSpec;
    use crate::client::{run_with, ClientConfig};

    /// What the fake server does on one connection.
    #[derive(Debug, Clone, Copy)]
    enum Behaviour {
        /// The connect itself fails.
        Refuse,
        /// Answer every `sync` at once.
        Normal,
        /// Answer every `sync` this late.
        AckAfter(Duration),
        /// Answer the handshake, then close at once.
        CloseAfterPong,
        /// Ack readings up to `ack`, stay silent after, close when reading `drop_at` arrives.
        ResetMidBatch { ack: usize, drop_at: usize },
        /// Answer the handshake, then read nothing more (over a small pipe that fills up).
        StopReading,
    }

    /// The fake server's view: per connection, the values of the readings it received.
    #[derive(Default)]
    struct Seen {
        attempts: Vec<Instant>,
        connections: Vec<Vec<i64>>,
    }

    #[derive(Clone)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("no test thread panics holding it")
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn config(count: Option<u64>, interval: Duration) -> ClientConfig {
        ClientConfig {
            addr: "duplex".into(),
            sensor: "s".into(),
            measurement: "m".into(),
            interval,
            count,
            reply_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            legacy: false,
            json: true,
            source: SourceSpec::Counter,
            max_pending: 1000,
            max_backoff: Duration::from_secs(10),
            spool: None,
            spool_max_bytes: 1 << 20,
            spool_max_age: None,
        }
    }

    /// The value of a `m,sensor=s value=102i <ts>` line.
    fn value_of(line: &str) -> Option<i64> {
        let rest = line.split_once(" value=")?.1;
        rest.split(['i', ' ']).next()?.parse().ok()
    }

    async fn serve(
        stream: DuplexStream,
        behaviour: Behaviour,
        seen: Arc<Mutex<Seen>>,
        conn: usize,
    ) {
        let (read, mut write) = tokio::io::split(stream);
        let mut lines = BufReader::new(read).lines();
        let mut readings = 0usize;
        while let Ok(Some(line)) = lines.next_line().await {
            let reply = if let Some(token) = line.strip_prefix("ping ") {
                format!("pong {token}\n")
            } else if let Some(token) = line.strip_prefix("sync ") {
                match behaviour {
                    Behaviour::AckAfter(delay) => tokio::time::sleep(delay).await,
                    Behaviour::ResetMidBatch { ack, .. } if readings > ack => continue,
                    _ => {}
                }
                format!("ack {token} readings=1 rejected=0\n")
            } else {
                readings += 1;
                if let Behaviour::ResetMidBatch { drop_at, .. } = behaviour {
                    if readings == drop_at {
                        return;
                    }
                }
                let value = value_of(&line).expect("the client sends `value=<n>i` lines");
                seen.lock().expect("not poisoned").connections[conn].push(value);
                continue;
            };
            if write.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            match behaviour {
                Behaviour::CloseAfterPong => return,
                Behaviour::StopReading => {
                    // Keep the connection open (`lines` lives on), never read it again.
                    std::future::pending::<()>().await;
                }
                _ => {}
            }
        }
    }

    /// A connector that opens duplex pairs served by `script`, one behaviour per attempt
    /// (then `Normal`), and records when each attempt was made.
    fn connector(
        script: Vec<Behaviour>,
        seen: Arc<Mutex<Seen>>,
    ) -> impl FnMut() -> std::future::Ready<std::io::Result<DuplexStream>> {
        let mut script = VecDeque::from(script);
        move || {
            let behaviour = script.pop_front().unwrap_or(Behaviour::Normal);
            let conn = {
                let mut seen = seen.lock().expect("not poisoned");
                seen.attempts.push(Instant::now());
                seen.connections.push(Vec::new());
                seen.connections.len() - 1
            };
            if let Behaviour::Refuse = behaviour {
                return std::future::ready(Err(std::io::ErrorKind::ConnectionRefused.into()));
            }
            let pipe_bytes = match behaviour {
                Behaviour::StopReading => 1024,
                _ => 64 * 1024,
            };
            let (client, server) = tokio::io::duplex(pipe_bytes);
            tokio::spawn(serve(server, behaviour, seen.clone(), conn));
            std::future::ready(Ok(client))
        }
    }

    struct Run {
        report: Result<RunReport, ClientError>,
        events: Vec<serde_json::Value>,
        seen: Seen,
    }

    async fn run(config: ClientConfig, script: Vec<Behaviour>, stop: CancellationToken) -> Run {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let printer = Printer::to(Box::new(SharedBuf(out.clone())), true);
        let report = run_with(&config, connector(script, seen.clone()), printer, stop).await;
        let out = out.lock().expect("not poisoned").clone();
        let events = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        let seen = std::mem::take(&mut *seen.lock().expect("not poisoned"));
        Run {
            report,
            events,
            seen,
        }
    }

    fn report(run: &Run) -> &RunReport {
        match &run.report {
            Ok(report) => report,
            Err(err) => panic!("run failed: {err}; events: {:?}", run.events),
        }
    }

    /// Each wait between attempts lies in [d/2, d], d doubling from the first backoff.
    fn assert_backoff_grows(attempts: &[Instant], waits: usize) {
        assert!(attempts.len() > waits, "{attempts:?}");
        let mut ceiling = INITIAL_BACKOFF;
        for pair in attempts.windows(2).take(waits) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= ceiling / 2 && gap <= ceiling,
                "wait {gap:?} outside [{:?}, {ceiling:?}] in {attempts:?}",
                ceiling / 2
            );
            ceiling *= 2;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reconnect_waits_grow_with_jitter_until_the_server_answers() {
        let script = vec![Behaviour::Refuse; 4];
        let run = run(
            config(Some(2), Duration::from_millis(100)),
            script,
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        assert_backoff_grows(&run.seen.attempts, 4);
        assert_eq!(run.seen.attempts.len(), 5);
        assert_eq!(report.counters.acked, 2);
        assert!(report.all_acked());
    }

    /// A server that accepts and closes at once must see growing delays: only an ack
    /// resets the backoff. See: issue 8, "Reconnects that back off for real".
    #[tokio::test(start_paused = true)]
    async fn backoff_is_not_reset_by_a_connection_that_carried_no_ack() {
        let script = vec![Behaviour::CloseAfterPong; 5];
        let run = run(
            config(Some(1), Duration::from_millis(100)),
            script,
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        assert_backoff_grows(&run.seen.attempts, 5);
        assert_eq!(report.counters.acked, 1);
        assert_eq!(report.summary.reconnects, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_later_than_the_reply_timeout_is_reported_lost_and_resent() {
        let config = config(Some(1), Duration::from_millis(100));
        let late = config.reply_timeout + Duration::from_secs(1);
        let started = Instant::now();
        let run = run(
            config,
            vec![Behaviour::AckAfter(late)],
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        let kinds: Vec<_> = run
            .events
            .iter()
            .map(|e| e["event"].as_str().unwrap_or(""))
            .collect();
        let lost = kinds
            .iter()
            .position(|k| *k == "lost")
            .expect("a lost event");
        assert_eq!(run.events[lost]["seq"], 1);
        assert_eq!(run.events[lost]["timeout_ms"], 2000.0);
        assert_eq!(kinds[lost + 1], "disconnected", "{kinds:?}");
        let ack = kinds
            .iter()
            .position(|k| *k == "ack")
            .expect("an ack event");
        assert!(
            ack > lost && run.events[ack]["resent"] == true,
            "{:?}",
            run.events
        );
        assert_eq!(report.counters.timed_out, 1);
        assert_eq!(report.summary.lost, 1, "late is lost, even if acked later");
        assert!(!report.all_acked());
        // Lost exactly at the timeout, not before, not at the late ack.
        assert!(run.seen.attempts[1] - started >= Duration::from_secs(2));
        assert!(run.seen.attempts[1] - started < late);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_mid_batch_resends_in_order_and_loses_nothing() {
        let script = vec![Behaviour::ResetMidBatch { ack: 3, drop_at: 6 }];
        let run = run(
            config(Some(10), Duration::from_millis(100)),
            script,
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        let value = |n: i64| 100 + 2 * n;
        assert_eq!(
            run.seen.connections[0],
            (1..=5).map(value).collect::<Vec<_>>()
        );
        let second = &run.seen.connections[1];
        assert_eq!(second.first(), Some(&value(4)), "{second:?}");
        assert!(
            second.windows(2).all(|w| w[0] < w[1]),
            "order kept: {second:?}"
        );
        let mut stored: Vec<i64> = run.seen.connections.concat();
        stored.sort();
        stored.dedup();
        assert_eq!(stored, (1..=10).map(value).collect::<Vec<_>>());
        assert_eq!(report.counters.acked, 10);
        assert!(report.counters.resends >= 3, "{:?}", report.counters);
        assert!(report.all_acked(), "{:?}", report.summary);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_stops_reading_is_left_after_the_write_timeout() {
        let mut config = config(Some(100), Duration::from_millis(10));
        config.reply_timeout = Duration::from_secs(60);
        config.write_timeout = Duration::from_secs(1);
        let started = Instant::now();
        let run = run(
            config,
            vec![Behaviour::StopReading],
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        let reason = run
            .events
            .iter()
            .find(|e| e["event"] == "disconnected")
            .and_then(|e| e["reason"].as_str())
            .expect("a disconnected event");
        assert!(reason.contains("server does not read"), "{reason}");
        // The pipe fills after some 20 readings (200 ms); then 1 s without progress.
        let gap = run.seen.attempts[1] - started;
        assert!(
            gap >= Duration::from_secs(1) && gap < Duration::from_secs(2),
            "{gap:?}"
        );
        assert_eq!(report.counters.acked, 100);
        assert!(report.all_acked(), "{:?}", report.summary);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_drains_pending_readings_before_the_run_ends() {
        let stop = CancellationToken::new();
        let stopped_at = Arc::new(Mutex::new(None));
        {
            let (stop, stopped_at) = (stop.clone(), stopped_at.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(3200)).await;
                *stopped_at.lock().expect("not poisoned") = Some(Instant::now());
                stop.cancel();
            });
        }
        let script = vec![Behaviour::AckAfter(Duration::from_millis(500))];
        let run = run(config(None, Duration::from_secs(1)), script, stop).await;
        let report = report(&run);
        // Readings at 0 s, 1 s, 2 s, 3 s; the last one's ack comes 300 ms after the stop.
        assert_eq!(report.counters.produced, 4);
        assert_eq!(report.counters.acked, 4);
        assert!(report.all_acked(), "{:?}", report.summary);
        let stopped_at = stopped_at.lock().expect("not poisoned").expect("stopped");
        assert!(Instant::now() - stopped_at >= Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_mode_runs_the_same_loop_over_the_seed_bytes() {
        let received = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let connector = {
            let received = received.clone();
            move || {
                let (client, mut server) = tokio::io::duplex(4096);
                let received = received.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt as _;
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = server.read(&mut buf).await {
                        received
                            .lock()
                            .expect("not poisoned")
                            .push(buf[..n].to_vec());
                        if server.write_all(b"pong").await.is_err() {
                            return;
                        }
                    }
                });
                std::future::ready(Ok(client))
            }
        };
        let mut config = config(Some(3), Duration::from_millis(100));
        config.legacy = true;
        let out = Arc::new(Mutex::new(Vec::new()));
        let printer = Printer::to(Box::new(SharedBuf(out.clone())), false);
        let report = run_with(&config, connector, printer, CancellationToken::new()).await;
        let report = report.expect("the run ends with a report");
        assert_eq!(report.counters.acked, 3);
        let received = received.lock().expect("not poisoned").clone();
        assert_eq!(received[0], b"ping");
        for (chunk, value) in received[1..].iter().zip([102, 104, 106]) {
            let text = String::from_utf8_lossy(chunk);
            assert!(text.starts_with("ping / ('"), "{text}");
            assert!(text.ends_with(&format!("', {value})")), "{text}");
        }
        let out = String::from_utf8_lossy(&out.lock().expect("not poisoned")).to_string();
        assert!(out.contains("seq=3 value=106 reply=\"pong\""), "{out}");
    }
}
