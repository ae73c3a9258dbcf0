//! The client's one event loop, shared by line mode and legacy mode: connect (through a
//! [`Connector`]) and handshake, send what the [`ClientState`] says is due, match replies,
//! report readings not acknowledged within the reply timeout (a timeout: the reading is
//! resent), reconnect (to the next server address, or after a backoff with jitter), resend
//! what was not acknowledged, and drain at the end (a stop stops the producer; every value it already sent is still taken).
//!
//! What differs between the modes (bytes, the reply decoder, how a reply is matched to a
//! reading, how many readings may be in flight) is a [`Session`]. The loop never blocks:
//! spool disk work runs on a blocking thread ([`super::spool_io`]), and every wait is a tokio
//! timer, so whole runs are tested under paused time over in-memory streams.
//!
//! [`intake`] turns values into kept (and spooled) readings; [`link_reports`] decides when
//! a link report is made and tells a refused report from a refused reading; [`reconnect`]
//! is the loop over connections and server addresses.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

mod intake;
mod link_reports;
mod reconnect;

use super::disconnect::{DisconnectCounts, DisconnectKind};
use super::error::ClientError;
use super::failover::Servers;
use super::kernel::{KernelSocket, KernelTotals};
use super::measure::RunMeasures;
use super::output::{Printer, RunTotals, Summary};
use super::report::RunReport;
use super::session::{Event, Session};
use super::spool_io::SpoolIo;
use super::state::ClientState;
use super::transport::{self, Connection, Connector};
use super::turns::Turns;
use super::{sleep_until_opt, ClientConfig};
use crate::protocol::FieldValue;
use link_reports::SentLinks;

/// Most bytes queued for the socket at once; more readings wait in the state machine.
const MAX_QUEUED_BYTES: usize = 64 * 1024;

/// Most values taken from the channel at once: one spool write (and fsync) for all of them.
const MAX_VALUES_PER_BATCH: usize = 256;

/// Why a connection is re-opened when a new reading found every kept one in flight.
const ALL_IN_FLIGHT: &str = "more than --max-pending readings unacknowledged, all in flight";

/// What ended one connection.
/// How long a finished run waits to close its connection cleanly (TLS `close_notify`).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

enum Disconnect {
    /// Give up: the run is over.
    Done,
    /// Reconnect, for this reason (of this kind).
    Retry(String, DisconnectKind),
}

/// One run of the client: the state of delivery and everything it reports.
pub(crate) struct Engine<'a, S: Session> {
    config: &'a ClientConfig,
    session: S,
    printer: Printer,
    state: ClientState,
    /// Round trips, the server's share, link reports, the picture's samples.
    measure: RunMeasures,
    started: Instant,
    first_connect: Option<Duration>,
    reconnects: u64,
    /// The source has ended (count reached, EOF) or a stop came: deliver what is left
    /// within the drain timeout, then stop.
    draining_since: Option<Instant>,
    /// The on-disk queue (`--spool`): every reading is appended before it is sent.
    spool: Option<SpoolIo>,
    /// Readings recovered from the spool at start and sent again.
    replayed: u64,
    /// Acked readings the server found already stored: same value, other value (refused).
    duplicates: u64,
    conflicts: u64,
    values: mpsc::Receiver<(FieldValue, i64)>,
    /// Until the producer has closed the channel and every value in it was taken: a stop
    /// stops the producer, never the taking (the channel may hold a thousand readings).
    values_open: bool,
    stop: CancellationToken,
    /// The current connection carried an ack (only then is the backoff reset).
    acked_on_connection: bool,
    /// The link reports written on the current connection (to tell their errors apart).
    sent_links: SentLinks,
    /// The live connection's socket, sampled for the kernel's figures.
    socket: Option<KernelSocket>,
    /// The kernel's figures over every connection of the run.
    kernel: KernelTotals,
    /// Connections that ended, or failed to open, by reason.
    disconnects: DisconnectCounts,
    /// The server addresses: which one is connected, each one's totals.
    servers: Servers,
    /// When each address was last tried: a drain gives up only once every address was
    /// tried since it began (see [`Engine::untried_in_drain`]).
    tried_at: Vec<Option<Instant>>,
    /// A connection made on a try the drain owed its address (past the drain's end, say)
    /// gets a drain timeout of its own to deliver, from when it was made.
    drain_grace_until: Option<Instant>,
    /// `--interval 0` (ping-pong): the producer makes a value only when given a turn.
    turns: Option<Turns>,
    /// A turn was given and its value has not arrived yet.
    turn_given: bool,
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
            measure: RunMeasures::new(config, S::LEGACY),
            started: Instant::now(),
            first_connect: None,
            reconnects: 0,
            draining_since: None,
            spool: None,
            replayed: 0,
            duplicates: 0,
            conflicts: 0,
            values,
            values_open: true,
            stop,
            acked_on_connection: false,
            sent_links: SentLinks::default(),
            socket: None,
            kernel: KernelTotals::default(),
            disconnects: DisconnectCounts::default(),
            servers: Servers::new(&config.servers),
            tried_at: vec![None; config.servers.len()],
            drain_grace_until: None,
            turns: None,
            turn_given: false,
        }
    }

    /// Ping-pong (`--interval 0`): the producer waits for a turn before each value, given
    /// when nothing of the user's is pending (so one reading at most is in flight).
    pub(crate) fn with_turns(mut self, turns: Option<Turns>) -> Self {
        self.turns = turns;
        self
    }

    /// Give the producer its next turn if it is due (see [`Engine::with_turns`]).
    fn give_turn(&mut self) {
        let Some(turns) = &self.turns else {
            return;
        };
        if !self.turn_given && self.values_open && self.state.pending_user() == 0 {
            turns.give();
            self.turn_given = true;
        }
    }

    /// How many readings may be in flight: one in ping-pong, else the session's window.
    fn window(&self) -> usize {
        if self.config.interval.is_zero() {
            1
        } else {
            self.session.window()
        }
    }

    /// Read the live connection's kernel figures.
    fn sample_kernel(&mut self) {
        if let Some(info) = self.socket.as_ref().and_then(KernelSocket::sample) {
            self.kernel.sampled(info);
        }
    }

    /// The connection is over: read its totals one last time, then let the socket go (the
    /// duplicate descriptor keeps it open until then).
    fn close_kernel(&mut self) {
        self.sample_kernel();
        if self.socket.take().is_some() {
            self.kernel.closed();
        }
    }

    /// Run until the values end and are delivered (or the drain times out), or the stop
    /// token fires and what is pending is delivered.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when no connection ever succeeded, a spool that cannot be
    /// opened, or an output that cannot be written.
    ///
    /// `connectors[i]` opens connections to `config.servers[i]`.
    pub(crate) async fn run<C: Connector>(
        mut self,
        mut connectors: Vec<C>,
    ) -> Result<RunReport, ClientError> {
        if let Err(err) = self.open_spool().await {
            // E.g. stdout closed right after the spool opened: still close it properly.
            if let Some(spool) = self.spool.take() {
                if let Err(close) = spool.close().await {
                    tracing::warn!(cause = %close, "closing the spool");
                }
            }
            return Err(err);
        }
        let delivered = self.deliver(&mut connectors).await;
        // Even when the server was never reached: what was produced is kept in the spool.
        let leftovers = self.take_leftover_values().await;
        // A run that gives up still reports its link (kept in the spool, if any, for the
        // next run); one that never connected has no link to report.
        let last_link = match (&delivered, &leftovers) {
            (Ok(()), Ok(())) => self.last_link_report(true).await.map(drop),
            _ => Ok(()),
        };
        // Whatever ended the run, what the spool holds is made durable for the next one.
        let closed = match self.spool.take() {
            Some(spool) => spool.close().await,
            None => Ok(()),
        };
        delivered?;
        leftovers?;
        last_link?;
        if let Err(err) = closed {
            tracing::warn!(cause = %err, "closing the spool");
        }
        self.finish()
    }

    /// The first output error stops the run (a closed stdout: `| head`).
    fn output_ok(&mut self) -> Result<(), ClientError> {
        match self.printer.take_error() {
            Some(err) => Err(ClientError::Output(err)),
            None => Ok(()),
        }
    }

    /// Whether the run is over: every value was taken and delivered, or the drain timed out.
    fn finished(&self) -> bool {
        self.draining_since.is_some() && (self.all_delivered() || self.drain_expired())
    }

    /// Draining, and every value was taken and delivered (the last link report too).
    fn all_delivered(&self) -> bool {
        !self.values_open && self.state.pending() == 0 && !self.last_link_due()
    }

    fn drain_expired(&self) -> bool {
        self.drain_deadline()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// [`Engine::finished`] for a client with no connection: once the user's readings are
    /// delivered and the last link report made, a report still unacknowledged does not
    /// hold the run open for the whole drain timeout (it stays in the spool, if any, else
    /// it counts as a link report unacked at exit). An expired drain ends the run only once
    /// every address was tried since the drain began.
    fn finished_offline(&self) -> bool {
        self.draining_since.is_some()
            && (self.all_delivered()
                || (self.drain_expired() && !self.untried_in_drain())
                || (self.first_connect.is_some() && self.user_delivered() && !self.last_link_due()))
    }

    /// Draining, and some address has not been tried since the drain began: the drain may
    /// not give up before it is (a long backoff, or a blackholed address, must not leave
    /// another collector that is up untried, with readings lost).
    fn untried_in_drain(&self) -> bool {
        self.draining_since.is_some_and(|since| {
            (0..self.tried_at.len()).any(|index| !self.tried_since(index, since))
        })
    }

    /// Address `index` was tried at or after `since`.
    fn tried_since(&self, index: usize, since: Instant) -> bool {
        self.tried_at
            .get(index)
            .is_some_and(|at| at.is_some_and(|at| at >= since))
    }

    fn mark_events(&mut self) {
        self.measure.mark_events(&self.state.counters());
    }

    /// The source ended or a stop came: from now on the drain timeout runs.
    fn start_draining(&mut self) {
        self.draining_since.get_or_insert_with(Instant::now);
    }

    /// The drain's end: its timeout after it began, or later for a connection made on a
    /// try it owed an address (see [`Engine::drain_grace_until`]).
    fn drain_deadline(&self) -> Option<Instant> {
        let deadline = self.draining_since? + self.config.drain_timeout;
        Some(
            self.drain_grace_until
                .map_or(deadline, |grace| grace.max(deadline)),
        )
    }

    /// The connection ended: what was in flight is sent again on the next one; readings
    /// dropped by the spool's limits while in flight go now.
    fn disconnected(&mut self) {
        for seq in self.state.on_disconnect() {
            self.printer
                .dropped(seq, "dropped by the spool's limits while in flight");
        }
    }

    /// Queue every reading that is due and fits the session's window.
    fn queue_due<W: AsyncWrite + Unpin>(&mut self, writer: &mut transport::LineWriter<W>) {
        let mut out = Vec::new();
        let now = Instant::now().into_std();
        while writer.queued() + out.len() < MAX_QUEUED_BYTES
            && self.state.in_flight() < self.window()
        {
            let Some(next) = self.state.next_to_send(now) else {
                break;
            };
            self.sent_links.written(next.seq, next.link);
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
        self.sent_links.reset();
        let reply_timeout = self.config.reply_timeout;
        // Set while bytes wait for the peer: it must take some within the write timeout.
        let mut write_deadline: Option<Instant> = None;
        loop {
            self.output_ok()?;
            self.mark_events();
            self.give_turn();
            if self.last_link_report(false).await? {
                return Ok(all_in_flight());
            }
            self.queue_due(&mut writer);
            if !writer.busy() {
                write_deadline = None;
            } else if write_deadline.is_none() {
                write_deadline = Some(Instant::now() + self.config.write_timeout);
            }
            if self.finished() {
                // Best effort, bounded: everything is acked, only the goodbye is at stake.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.close()).await;
                return Ok(Disconnect::Done);
            }
            let reply_deadline = self
                .state
                .next_deadline(reply_timeout)
                .map(Instant::from_std);
            let drain_deadline = self.drain_deadline();
            let link_due = self.link_due();
            tokio::select! {
                reply = reader.read_reply() => match reply {
                    Ok(reply) => {
                        if let Some(reason) = self.on_replies(reply, &mut reader).await? {
                            return Ok(reason);
                        }
                    }
                    Err(err) => {
                        let kind = DisconnectKind::of_transport(&err, false);
                        return Ok(Disconnect::Retry(err.to_string(), kind));
                    }
                },
                pushed = writer.push(), if writer.busy() => match pushed {
                    // Progress: the peer reads; give it a new write timeout for the rest.
                    Ok(()) => write_deadline = None,
                    Err(err) => {
                        let kind = DisconnectKind::of_io(&err, false);
                        return Ok(Disconnect::Retry(format!("write failed: {err}"), kind));
                    }
                },
                _ = sleep_until_opt(write_deadline) => {
                    return Ok(Disconnect::Retry(format!(
                        "write failed: server does not read (nothing taken within {})",
                        humantime::format_duration(self.config.write_timeout)
                    ), DisconnectKind::WriteTimeout));
                }
                value = self.values.recv(), if self.values_open => {
                    if self.on_value(value).await? {
                        return Ok(all_in_flight());
                    }
                }
                _ = sleep_until_opt(link_due) => {
                    if self.link_report(false).await? {
                        return Ok(all_in_flight());
                    }
                }
                // The producer stops on its own; what it already sent is still taken.
                _ = self.stop.cancelled(), if self.draining_since.is_none() => self.start_draining(),
                _ = sleep_until_opt(reply_deadline) => {
                    let now = Instant::now().into_std();
                    let lost = self.state.check_timeouts(now, reply_timeout);
                    // A link report's timeout is counted apart, not printed as a reading's.
                    for seq in lost.iter().filter(|seq| self.state.is_link(**seq) == Some(false)) {
                        self.printer.timed_out(*seq, reply_timeout, S::LEGACY);
                    }
                    // A link report's late reply alone waits for the user's readings in
                    // flight behind it (acks are in order, so theirs are late too, each due
                    // within one reply timeout): a stall then shows as their timeouts, not
                    // as a reconnect that no user-visible count explains.
                    let only_links = lost.iter().all(|seq| self.state.is_link(*seq) == Some(true));
                    let wait = only_links && self.state.user_reply_due();
                    if !wait && !lost.is_empty() {
                        // A late reply would be taken for the next one: start afresh.
                        return Ok(Disconnect::Retry(format!(
                            "no ack within {}",
                            humantime::format_duration(reply_timeout)
                        ), DisconnectKind::ReplyTimeout));
                    }
                }
                _ = sleep_until_opt(drain_deadline) => return Ok(Disconnect::Done),
            }
        }
    }

    /// Act on `reply` and on every other reply already buffered, then record the acks in
    /// the spool once. `Some(retry)`: the connection must be re-opened.
    async fn on_replies<R: AsyncRead + Unpin>(
        &mut self,
        reply: <S::Decoder as Decoder>::Item,
        reader: &mut transport::ReplyReader<R, S::Decoder>,
    ) -> Result<Option<Disconnect>, ClientError> {
        let mut through = None;
        let other = |reason| Disconnect::Retry(reason, DisconnectKind::Other);
        let mut retry = self.on_reply(reply, &mut through).map(other);
        while retry.is_none() {
            match reader.buffered_reply() {
                Ok(Some(reply)) => retry = self.on_reply(reply, &mut through).map(other),
                Ok(None) => break,
                Err(err) => {
                    let kind = DisconnectKind::of_transport(&err, false);
                    retry = Some(Disconnect::Retry(err.to_string(), kind));
                }
            }
        }
        self.record_acks(through).await?;
        Ok(retry)
    }

    /// Act on one reply (no I/O): `through` becomes the last reading its ack took off the
    /// queue. `Some(reason)`: the connection must be re-opened.
    fn on_reply(
        &mut self,
        reply: <S::Decoder as Decoder>::Item,
        through: &mut Option<u64>,
    ) -> Option<String> {
        match self.session.interpret(reply, self.state.oldest_in_flight()) {
            Event::Ignore => {}
            Event::Rejected { line, reason } => self.print_rejected(line, &reason),
            Event::SyncFailed { line, reason } => {
                self.print_rejected(line, &reason);
                // Resent on a new connection, after the backoff, instead of after the timeout.
                return Some(format!("server could not store: {reason}"));
            }
            Event::Ack {
                token,
                rejected,
                duplicates,
                conflicts,
                times,
                raw,
            } => {
                // Counts from the network: a hostile or broken server must not overflow them.
                self.duplicates = self.duplicates.saturating_add(duplicates);
                self.conflicts = self.conflicts.saturating_add(conflicts);
                let now = Instant::now().into_std();
                let outcome = self.state.on_ack(token, rejected, now);
                if outcome.beyond_sent {
                    tracing::warn!(
                        token,
                        "ack for a reading never sent; only what was sent counts"
                    );
                }
                *through = (*through).max(outcome.through);
                if let Some(answered) = outcome.through {
                    self.sent_links.answered_through(answered);
                }
                for acked in outcome.acked {
                    self.acked_on_connection = true;
                    if acked.link {
                        // Counted in the state's link counters; not one of the user's readings.
                        continue;
                    }
                    self.servers.acked(1);
                    // A resent reading waited behind a backlog: its time says nothing of the link.
                    self.measure
                        .acked(acked.rtt, times, S::LEGACY || !acked.resent);
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
        None
    }

    /// The server refused line `line`: one of the user's readings, or a link report (not
    /// printed as the user's).
    fn print_rejected(&mut self, line: u64, reason: &str) {
        if self.is_link_line(line) {
            self.printer.link_rejected(line, reason);
        } else {
            self.printer.rejected(line, reason);
        }
    }

    fn finish(mut self) -> Result<RunReport, ClientError> {
        let spooled = self.config.spool.is_some();
        // The last connection is over too.
        self.disconnected();
        for seq in self.state.give_up() {
            self.printer.lost_at_exit(seq, spooled);
        }
        self.mark_events();
        let counters = self.state.counters();
        let links = self.state.link_counters();
        let addrs = self.servers.names();
        let summary = Summary::of(RunTotals {
            addr: &addrs,
            servers: self.servers.totals(),
            failovers: self.servers.failovers(),
            counters,
            // Reports written at least once, not merely made (one may die in the queue).
            link_reports: (links.sent, links.acked),
            pending: self.state.pending_user() as u64,
            replayed: self.replayed,
            duplicates: self.duplicates,
            conflicts: self.conflicts,
            duration: self.started.elapsed(),
            first_connect: self.first_connect,
            reconnects: self.reconnects,
            rtt: self.measure.rtt.summary(),
            server_us: self.measure.server_share(),
            tcp: self.kernel.summary(),
            disconnects: self.disconnects,
        });
        if summary.conflicts > 0 {
            self.printer.conflicts(summary.conflicts);
        }
        self.printer.summary(&summary);
        self.output_ok()?;
        let picture = self.measure.take_picture(self.config.reply_timeout);
        Ok(RunReport {
            summary,
            counters,
            picture,
        })
    }
}

/// A reconnect the client itself decides: every kept reading is in flight.
fn all_in_flight() -> Disconnect {
    Disconnect::Retry(ALL_IN_FLIGHT.to_string(), DisconnectKind::Other)
}

#[cfg(test)]
mod tests {
    //! Whole client runs under paused time, over `tokio::io::duplex` pairs, against a tiny
    //! fake server task that speaks the line protocol's bytes.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, DuplexStream};

    use super::*;
    use crate::client::link::LINK_MEASUREMENT;
    use crate::client::source::SourceSpec;
    use crate::client::INITIAL_BACKOFF;
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
        /// Read everything, answer nothing (not even the handshake).
        Silent,
        /// Answer every `sync` with `error <line> store failed: ...`.
        StoreFails,
        /// Ack the user's readings; go away (close) when a link report arrives.
        CloseOnLinkReport,
        /// Ack the user's readings; from the first link report on, answer nothing (a
        /// server stopped just as a report arrived).
        StallOnLinkReport,
        /// Ack the user's readings; refuse every link report's line with an `error`.
        RejectLinkReports,
        /// Ack the first reading, then close (nothing of the client's is in the pipe then).
        CloseAfterAck,
        /// Refuse the `--token` (`error 1 auth failed: unknown token`); with any other
        /// behaviour a token is accepted.
        RefuseAuth,
    }

    /// The fake server's view: per connection, the values of the readings it received.
    #[derive(Default)]
    struct Seen {
        attempts: Vec<Instant>,
        connections: Vec<Vec<i64>>,
        /// Link-report lines received, on any connection.
        links: Vec<String>,
        /// `AckAfter`: times more bytes came while a `sync` waited for its late ack.
        sent_before_ack: usize,
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
            servers: vec!["duplex".into()],
            sensor: Some("s".into()),
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
            link_report: Duration::ZERO,
            report: None,
            tls: None,
            token: None,
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
        let mut line_no = 0u64;
        // The line of a reading just refused: its `sync` is acked as rejected.
        let mut rejected = None;
        let mut stalled = false;
        while let Ok(Some(line)) = lines.next_line().await {
            line_no += 1;
            stalled |= matches!(behaviour, Behaviour::StallOnLinkReport)
                && line.starts_with(LINK_MEASUREMENT);
            if matches!(behaviour, Behaviour::Silent) || stalled {
                continue;
            }
            let reply = if line.starts_with("auth ") {
                match behaviour {
                    Behaviour::RefuseAuth => {
                        format!("error {line_no} auth failed: unknown token\n")
                    }
                    _ => "ok auth abcd1234\n".to_string(),
                }
            } else if let Some(token) = line.strip_prefix("ping ") {
                format!("pong {token}\n")
            } else if let Some(token) = line.strip_prefix("sync ") {
                if let Behaviour::StoreFails = behaviour {
                    let reply = format!("error {line_no} store failed: disk full\n");
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                    continue;
                }
                match behaviour {
                    Behaviour::AckAfter(delay) => {
                        tokio::time::sleep(delay).await;
                        // Polled once (a zero timeout polls first): were more bytes sent?
                        let more = tokio::time::timeout(Duration::ZERO, lines.get_mut().fill_buf());
                        if matches!(more.await, Ok(Ok(buf)) if !buf.is_empty()) {
                            seen.lock().expect("not poisoned").sent_before_ack += 1;
                        }
                    }
                    Behaviour::ResetMidBatch { ack, .. } if readings > ack => continue,
                    _ => {}
                }
                match rejected.take() {
                    Some(_) => format!("ack {token} readings=0 rejected=1\n"),
                    None => format!("ack {token} readings=1 rejected=0\n"),
                }
            } else {
                readings += 1;
                if let Behaviour::ResetMidBatch { drop_at, .. } = behaviour {
                    if readings == drop_at {
                        return;
                    }
                }
                if line.starts_with(LINK_MEASUREMENT) {
                    seen.lock().expect("not poisoned").links.push(line);
                    match behaviour {
                        Behaviour::CloseOnLinkReport => return,
                        Behaviour::RejectLinkReports => {
                            rejected = Some(line_no);
                            let reply = format!("error {line_no} refused: no such measurement\n");
                            if write.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        _ => {}
                    }
                    continue;
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
                Behaviour::CloseAfterAck if reply.starts_with("ack ") => return,
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
    async fn a_reply_later_than_the_reply_timeout_is_a_timeout_and_the_reading_is_resent() {
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
        assert_eq!(run.events[lost + 1]["kind"], "reply_timeout");
        let ack = kinds
            .iter()
            .position(|k| *k == "ack")
            .expect("an ack event");
        assert!(
            ack > lost && run.events[ack]["resent"] == true,
            "{:?}",
            run.events
        );
        // Late, then acked after the resend: a timeout, not a loss (exit 0), and no
        // disconnect: the reconnect it caused is counted once, as the timeout.
        assert_eq!(report.counters.timeouts, 1);
        assert_eq!(report.summary.timeouts, 1);
        assert_eq!(report.summary.disconnects.total(), 0);
        assert_eq!(report.summary.lost, 0, "{:?}", report.summary);
        assert_eq!(report.counters.acked, 1);
        assert!(report.all_acked());
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
        let kind = run.events.iter().find(|e| e["event"] == "disconnected");
        assert_eq!(kind.map(|e| &e["kind"]), Some(&"write_timeout".into()));
        assert_eq!(report.summary.disconnects.write_timeout, 1);
        assert_eq!(report.summary.disconnects.total(), 1);
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
        // Measured by the runtime's clock (paused here), not the wall clock.
        assert!(
            report.summary.duration_ms >= 3500.0,
            "{}",
            report.summary.duration_ms
        );
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

    /// A run over `values`, connect attempt `n` (from 0) taking `connect_delay(n)`.
    async fn run_over(
        config: ClientConfig,
        script: Vec<Behaviour>,
        values: mpsc::Receiver<(FieldValue, i64)>,
        stop: CancellationToken,
        connect_delay: fn(usize) -> Duration,
    ) -> Run {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut inner = connector(script, seen.clone());
        let mut attempt = 0;
        let slow = move || {
            let stream = inner();
            let connect_delay = connect_delay(attempt);
            attempt += 1;
            async move {
                tokio::time::sleep(connect_delay).await;
                stream.await
            }
        };
        let out = Arc::new(Mutex::new(Vec::new()));
        let printer = Printer::to(Box::new(SharedBuf(out.clone())), true);
        let report =
            crate::client::run_values(&config, vec![slow], printer, values, None, stop).await;
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

    /// A producer as fast as the channel lets it, until `stop`; returns how many it sent.
    fn fast_producer(
        stop: CancellationToken,
    ) -> (
        mpsc::Receiver<(FieldValue, i64)>,
        tokio::task::JoinHandle<u64>,
    ) {
        let (tx, values) = mpsc::channel(1024);
        let producer = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let permit = tokio::select! {
                    _ = stop.cancelled() => break,
                    permit = tx.reserve() => permit,
                };
                let Ok(permit) = permit else { break };
                permit.send((FieldValue::Int(sent as i64), sent as i64));
                sent += 1;
            }
            sent
        });
        (values, producer)
    }

    /// A stop stops the producer, not the taking: every value already in the channel (it
    /// filled while the engine connected) is delivered. The old loop stopped taking at the
    /// stop and up to 1024 produced readings vanished, not even counted.
    #[tokio::test(start_paused = true)]
    async fn a_stop_delivers_every_reading_already_produced() {
        let stop = CancellationToken::new();
        let (values, producer) = fast_producer(stop.clone());
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stop.cancel();
            });
        }
        let config = config(None, Duration::from_millis(1));
        let run = run_over(config, Vec::new(), values, stop, |_| {
            Duration::from_millis(200)
        })
        .await;
        let handed_over = producer.await.expect("the producer does not panic");
        let report = report(&run);
        assert!(handed_over >= 1000, "the channel filled: {handed_over}");
        assert_eq!(
            report.counters.produced, handed_over,
            "{:?}",
            report.counters
        );
        assert_eq!(report.counters.acked, handed_over, "{:?}", report.summary);
        assert_eq!(run.seen.connections.concat().len() as u64, handed_over);
        assert!(report.all_acked());
    }

    /// When the drain times out, every reading produced is counted: acked or lost, none
    /// vanishes (with a spool, the lost ones are kept for the next run).
    #[tokio::test(start_paused = true)]
    async fn a_stop_whose_drain_times_out_counts_every_reading_produced() {
        let (tx, values) = mpsc::channel(1024);
        for n in 0..1000 {
            tx.try_send((FieldValue::Int(n), n))
                .expect("room in the channel");
        }
        let stop = CancellationToken::new();
        stop.cancel();
        // The producer has stopped: its end of the channel goes once the engine runs.
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            drop(tx);
        });
        let mut config = config(None, Duration::from_millis(1));
        config.drain_timeout = Duration::from_millis(10);
        let script = vec![Behaviour::AckAfter(Duration::from_secs(3600))];
        let run = run_over(config, script, values, stop, |_| Duration::ZERO).await;
        let report = report(&run);
        assert_eq!(report.counters.produced, 1000, "{:?}", report.counters);
        assert_eq!(report.counters.acked, 0, "{:?}", report.counters);
        assert_eq!(report.summary.lost, 1000, "{:?}", report.summary);
        assert!(!report.all_acked());
    }

    /// Connect and handshake share one deadline: a connect that takes 6 s leaves 4 s of a
    /// 10 s connect timeout for the first pong (it used to get 10 s more).
    #[tokio::test(start_paused = true)]
    async fn connect_and_handshake_share_one_connect_timeout() {
        let mut config = config(Some(1), Duration::from_millis(100));
        config.connect_timeout = Duration::from_secs(10);
        config.drain_timeout = Duration::from_secs(60);
        let stop = CancellationToken::new();
        let values = crate::client::spawn_producer(&config, None, stop.clone());
        // A first connection (so the server counts as reachable), then a slow, silent one.
        let script = vec![Behaviour::CloseAfterPong, Behaviour::Silent];
        let delay = |n| match n {
            1 => Duration::from_secs(6),
            _ => Duration::ZERO,
        };
        let run = run_over(config, script, values, stop, delay).await;
        let report = report(&run);
        assert_eq!(report.counters.acked, 1);
        let gap = run.seen.attempts[2] - run.seen.attempts[1];
        // 10 s of connect timeout, then the second backoff: at most 200 ms.
        assert!(
            gap >= Duration::from_secs(10) && gap <= Duration::from_millis(10_200),
            "{gap:?}"
        );
        // The silent server's first pong never came within the connect timeout.
        assert_eq!(report.summary.disconnects.connect_timeout, 1);
        let kinds: Vec<_> = run
            .events
            .iter()
            .filter(|e| e["event"] == "disconnected")
            .map(|e| e["kind"].clone())
            .collect();
        assert!(kinds.contains(&"connect_timeout".into()), "{kinds:?}");
    }

    /// A stop while a reconnect hangs (a 30 s connect timeout) ends the run once the drain
    /// timeout has passed, reporting what is pending, not after the connect gives up.
    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_hanging_connect_ends_within_the_drain_timeout() {
        let mut config = config(None, Duration::from_secs(1));
        config.connect_timeout = Duration::from_secs(30);
        config.drain_timeout = Duration::from_secs(1);
        let stop = CancellationToken::new();
        let started = Instant::now();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                stop.cancel();
            });
        }
        let values = crate::client::spawn_producer(&config, None, stop.clone());
        // The first connection stores reading 1, then closes when reading 3 arrives; every
        // later connect hangs.
        let script = vec![Behaviour::ResetMidBatch { ack: 1, drop_at: 3 }];
        let delay = |n| match n {
            0 => Duration::ZERO,
            _ => Duration::from_secs(3600),
        };
        let run = run_over(config, script, values, stop, delay).await;
        let report = report(&run);
        let took = Instant::now() - started;
        assert!(
            took >= Duration::from_secs(6) && took <= Duration::from_millis(6_010),
            "stop at 5 s + 1 s of drain, ended after {took:?}"
        );
        let c = report.counters;
        assert_eq!(c.acked, 1, "{c:?}");
        assert!(c.produced >= 5, "{c:?}");
        assert_eq!(report.summary.lost, c.produced - 1, "{:?}", report.summary);
    }

    /// A server that closes, then a connect refused: two disconnects, each of its kind, in
    /// the events and the summary; neither is a timeout.
    #[tokio::test(start_paused = true)]
    async fn a_closed_connection_and_a_refused_connect_are_counted_by_kind() {
        let script = vec![Behaviour::CloseAfterAck, Behaviour::Refuse];
        let run = run(
            config(Some(3), Duration::from_millis(100)),
            script,
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        assert!(report.all_acked(), "{:?}", report.summary);
        let kinds: Vec<_> = run
            .events
            .iter()
            .filter(|e| e["event"] == "disconnected")
            .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
            .collect();
        assert_eq!(kinds, ["server_closed", "refused"], "{:?}", run.events);
        let disconnects = report.summary.disconnects;
        assert_eq!(
            (disconnects.server_closed, disconnects.refused),
            (1, 1),
            "{disconnects:?}"
        );
        assert_eq!(disconnects.total(), 2);
        assert_eq!(report.summary.timeouts, 0);
        // Over in-memory pipes there is no kernel to ask.
        assert_eq!(report.summary.tcp, None);
    }

    /// `--interval 0`: the next reading is made only when the previous one is acked (the
    /// fake server answers 50 ms late, so a free-running producer would pile them up).
    #[tokio::test(start_paused = true)]
    async fn ping_pong_keeps_one_reading_in_flight() {
        let config = config(Some(20), Duration::ZERO);
        let started = Instant::now();
        let run = run(
            config,
            vec![Behaviour::AckAfter(Duration::from_millis(50))],
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        assert_eq!(report.counters.acked, 20);
        assert_eq!(run.seen.connections[0].len(), 20);
        assert_eq!(run.seen.sent_before_ack, 0, "a reading came before the ack");
        let took = Instant::now() - started;
        assert!(took >= Duration::from_millis(20 * 50), "{took:?}");
    }

    /// The check above can fail: with an interval, readings do not wait for the late acks.
    #[tokio::test(start_paused = true)]
    async fn without_ping_pong_readings_do_not_wait_for_acks() {
        let run = run(
            config(Some(5), Duration::from_millis(10)),
            vec![Behaviour::AckAfter(Duration::from_millis(50))],
            CancellationToken::new(),
        )
        .await;
        assert!(report(&run).all_acked());
        assert!(run.seen.sent_before_ack > 0);
    }

    /// Legacy mode with a queue that fills (a slow server, `--max-pending 2`): the reading in
    /// flight is never the one dropped, so each reply is printed with the reading it answers.
    /// The fake server echoes the value it got in its reply.
    #[tokio::test(start_paused = true)]
    async fn legacy_replies_stay_matched_when_the_queue_overflows() {
        let connector = move || {
            let (client, mut server) = tokio::io::duplex(4096);
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt as _;
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = server.read(&mut buf).await {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    let reply = match text.rsplit_once(", ") {
                        Some((_, value)) => {
                            tokio::time::sleep(Duration::from_millis(350)).await;
                            format!("pong {}", value.trim_end_matches(')'))
                        }
                        None => "pong".to_string(),
                    };
                    if server.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
            std::future::ready(Ok(client))
        };
        let mut config = config(Some(12), Duration::from_millis(100));
        config.legacy = true;
        config.max_pending = 2;
        let out = Arc::new(Mutex::new(Vec::new()));
        let printer = Printer::to(Box::new(SharedBuf(out.clone())), true);
        let report = run_with(&config, connector, printer, CancellationToken::new()).await;
        let report = report.expect("the run ends with a report");
        let out = String::from_utf8_lossy(&out.lock().expect("not poisoned")).to_string();
        let acks: Vec<serde_json::Value> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "ack")
            .collect();
        assert!(acks.len() >= 3, "{out}");
        for ack in &acks {
            assert_eq!(
                ack["reply"].as_str().map(str::to_string),
                Some(format!("pong {}", ack["value"])),
                "{out}"
            );
        }
        let c = report.counters;
        assert!(c.dropped > 0, "the queue overflowed: {c:?}");
        assert_eq!(c.acked + c.lost(), c.produced, "{c:?}");
    }

    fn spool_config(dir: &std::path::Path) -> ClientConfig {
        let mut config = config(None, Duration::from_millis(100));
        config.spool = Some(dir.to_path_buf());
        config
    }

    /// What a spool in `dir` would replay on the next run.
    async fn replayed(config: &ClientConfig) -> Vec<u64> {
        let dir = config.spool.clone().expect("a spool directory");
        let limits = super::super::spool::SpoolLimits {
            max_bytes: config.spool_max_bytes,
            max_age: config.spool_max_age,
        };
        let (spool, recovery) = SpoolIo::open(dir, limits).await.expect("the spool reopens");
        spool.close().await.expect("the spool closes");
        recovery.readings.iter().map(|r| r.seq).collect()
    }

    /// An ack token beyond what was sent acks only what was sent, in the state machine and
    /// in the spool: readings not yet delivered stay spooled for the next run.
    #[tokio::test(start_paused = true)]
    async fn an_ack_beyond_what_was_sent_does_not_erase_unsent_readings_from_the_spool() {
        use crate::protocol::control::{Ack, Reply};
        let dir = tempfile::tempdir().expect("temp dir");
        let config = spool_config(&dir.path().join("q"));
        let (_tx, values) = mpsc::channel(1);
        let session = crate::client::line::LineSession {
            measurement: "m".into(),
            sensor: Some("s".into()),
            token: None,
        };
        let printer = Printer::to(Box::new(std::io::sink()), true);
        let mut engine = Engine::new(&config, session, printer, values, CancellationToken::new());
        engine.open_spool().await.expect("the spool opens");
        for v in 1..=3 {
            engine
                .produce(vec![(FieldValue::Int(v), v)])
                .await
                .expect("spooled");
        }
        engine.state.next_to_send(Instant::now().into_std());
        let bogus = Reply::Ack(Ack {
            token: "99".into(),
            readings: 1,
            ..Ack::default()
        });
        let mut through = None;
        assert_eq!(engine.on_reply(bogus, &mut through), None);
        assert_eq!(through, Some(1));
        engine.record_acks(through).await.expect("no spool failure");
        assert_eq!(engine.state.counters().acked, 1);
        let spool = engine.spool.take().expect("the spool is open");
        spool.close().await.expect("the spool closes");
        assert_eq!(replayed(&config).await, vec![2, 3]);
    }

    /// Duplicate and conflict counts come from the server: absurd ones neither overflow the
    /// run's totals (a panic in debug builds) nor count more than the ack's readings.
    #[tokio::test(start_paused = true)]
    async fn server_sent_duplicate_and_conflict_counts_saturate_and_stay_within_the_ack() {
        use crate::protocol::control::{Ack, Reply};
        let (_tx, values) = mpsc::channel(1);
        let session = crate::client::line::LineSession {
            measurement: "m".into(),
            sensor: Some("s".into()),
            token: None,
        };
        let printer = Printer::to(Box::new(std::io::sink()), true);
        let config = config(None, Duration::from_millis(100));
        let mut engine = Engine::new(&config, session, printer, values, CancellationToken::new());
        let huge = |token: &str, readings| {
            Reply::Ack(Ack {
                token: token.into(),
                readings,
                duplicates: u64::MAX,
                conflicts: u64::MAX,
                ..Ack::default()
            })
        };
        let mut through = None;
        engine.on_reply(huge("1", 1), &mut through);
        assert_eq!((engine.duplicates, engine.conflicts), (1, 0));
        engine.on_reply(huge("2", u64::MAX), &mut through);
        engine.on_reply(huge("3", u64::MAX), &mut through);
        assert_eq!((engine.duplicates, engine.conflicts), (u64::MAX, 0));
        let mut split = Reply::Ack(Ack {
            token: "4".into(),
            readings: 3,
            duplicates: 2,
            conflicts: u64::MAX,
            ..Ack::default()
        });
        engine.duplicates = 0;
        engine.on_reply(split.clone(), &mut through);
        assert_eq!((engine.duplicates, engine.conflicts), (2, 1));
        if let Reply::Ack(ack) = &mut split {
            ack.duplicates = 0;
            ack.readings = u64::MAX;
        }
        engine.on_reply(split, &mut through);
        assert_eq!(engine.conflicts, u64::MAX);
    }

    /// A whole run with a spool: a reset mid-batch, then the server is gone. What the spool
    /// replays on the next run is exactly the set of readings never acknowledged.
    #[tokio::test(start_paused = true)]
    async fn with_a_spool_a_reset_mid_batch_leaves_exactly_the_unacked_readings_spooled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = spool_config(&dir.path().join("q"));
        config.count = Some(10);
        config.drain_timeout = Duration::from_secs(2);
        let mut script = vec![Behaviour::ResetMidBatch { ack: 3, drop_at: 6 }];
        script.extend([Behaviour::Refuse; 100]);
        let run = run(config.clone(), script, CancellationToken::new()).await;
        let report = report(&run);
        let c = report.counters;
        assert_eq!(c.acked, 3, "{c:?}");
        assert_eq!(c.unacked_at_exit, 7, "{c:?}");
        assert_eq!(report.summary.lost, 7);
        let acked: Vec<u64> = run
            .events
            .iter()
            .filter(|e| e["event"] == "ack")
            .filter_map(|e| e["seq"].as_u64())
            .collect();
        assert_eq!(acked, vec![1, 2, 3]);
        assert_eq!(replayed(&config).await, (4..=10).collect::<Vec<u64>>());
    }

    /// A whole run is `Send` (its sessions' futures are): it can be spawned on a runtime.
    #[tokio::test(start_paused = true)]
    async fn a_run_can_be_spawned() {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let config = config(Some(2), Duration::from_millis(100));
        let mut legacy = config.clone();
        legacy.legacy = true;
        let line = tokio::spawn({
            let connector = connector(Vec::new(), seen.clone());
            async move {
                let printer = Printer::to(Box::new(std::io::sink()), true);
                run_with(&config, connector, printer, CancellationToken::new()).await
            }
        });
        let report = line.await.expect("the run does not panic");
        assert_eq!(report.expect("a report").counters.acked, 2);
        // Legacy mode's session too (it only has to compile as a spawned task).
        let legacy = tokio::spawn(async move {
            let (client, _server) = tokio::io::duplex(64);
            let mut once = Some(client);
            let connector = move || {
                std::future::ready(once.take().ok_or(std::io::ErrorKind::NotConnected.into()))
            };
            let printer = Printer::to(Box::new(std::io::sink()), true);
            run_with(&legacy, connector, printer, CancellationToken::new()).await
        });
        drop(legacy);
    }

    /// An `error` answering a `sync` (the server's store failed) means no ack will come: the
    /// reading is resent on a new connection after the backoff, not after the reply timeout.
    #[tokio::test(start_paused = true)]
    async fn a_store_failure_on_a_sync_reconnects_at_once() {
        let config = config(Some(1), Duration::from_millis(100));
        let reply_timeout = config.reply_timeout;
        let run = run(
            config,
            vec![Behaviour::StoreFails],
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        let gap = run.seen.attempts[1] - run.seen.attempts[0];
        assert!(gap <= INITIAL_BACKOFF, "reconnected after {gap:?}");
        assert!(gap < reply_timeout);
        let rejected = run
            .events
            .iter()
            .find(|e| e["event"] == "rejected")
            .expect("the error is reported");
        assert_eq!(rejected["line"], 3, "{rejected}");
        assert_eq!(report.counters.acked, 1);
        assert_eq!(report.counters.timeouts, 0);
        assert!(report.all_acked());
    }

    /// With a spool, values already waiting are appended as one batch (one write and fsync),
    /// and every reply already read is handled before one `ack_through`: far fewer spool
    /// operations than readings, and every reading still acked and gone from the spool.
    #[tokio::test(start_paused = true)]
    async fn spool_appends_and_acks_are_batched() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = spool_config(&dir.path().join("q"));
        let (tx, values) = mpsc::channel(1024);
        for n in 0..600 {
            tx.try_send((FieldValue::Int(n), n))
                .expect("room in the channel");
        }
        drop(tx);
        let before = super::super::spool_io::calls::get();
        let run = run_over(
            config.clone(),
            Vec::new(),
            values,
            CancellationToken::new(),
            |_| Duration::ZERO,
        )
        .await;
        let after = super::super::spool_io::calls::get();
        let report = report(&run);
        assert_eq!(report.counters.acked, 600);
        let appends = after.appends - before.appends;
        let acks = after.acks - before.acks;
        assert!(appends <= 3, "600 readings in {appends} appends");
        assert!(acks < 300, "600 acks recorded in {acks} spool calls");
        assert!(replayed(&config).await.is_empty());
    }

    /// A link-report event's integer field.
    fn field(event: &serde_json::Value, name: &str) -> u64 {
        event["fields"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in {event}"))
    }

    fn link_events(run: &Run) -> Vec<&serde_json::Value> {
        run.events
            .iter()
            .filter(|e| e["event"] == "link_report")
            .collect()
    }

    /// Every interval a report of that interval's deltas, and a last one at the end: their
    /// sums are the run's totals. Reports reach the server, are not counted as readings, and
    /// each interval's RTTs are its own.
    #[tokio::test(start_paused = true)]
    async fn link_reports_every_interval_carry_deltas_and_a_last_one_ends_the_run() {
        let mut config = config(Some(25), Duration::from_millis(100));
        config.link_report = Duration::from_secs(1);
        let run = run(config, Vec::new(), CancellationToken::new()).await;
        let report = report(&run);
        let links = link_events(&run);
        assert_eq!(links.len(), 3, "at 1 s, 2 s and the end: {:?}", run.events);
        let interval = |e: &serde_json::Value| e["fields"]["interval_s"].as_f64();
        assert_eq!(interval(links[0]), Some(1.0));
        assert_eq!(interval(links[1]), Some(1.0));
        let last = interval(links[2]).expect("interval_s");
        assert!(last > 0.0 && last < 1.0, "{last}");
        for name in ["sent", "acked"] {
            let per_interval: Vec<u64> = links.iter().map(|e| field(e, name)).collect();
            assert_eq!(
                per_interval.iter().sum::<u64>(),
                25,
                "{name}: {per_interval:?}"
            );
            assert!(
                per_interval.iter().all(|n| *n <= 11),
                "{name}: {per_interval:?}"
            );
        }
        for name in ["lost", "timeouts", "reconnects"] {
            assert!(links.iter().all(|e| field(e, name) == 0), "{name}");
        }
        // Every interval had acks: each has its RTT fields.
        assert!(links.iter().all(|e| e["fields"]["rtt_p99_ms"].is_number()));
        // Not in the user's counts; all of them stored.
        assert_eq!(report.counters.produced, 25);
        assert_eq!(report.counters.acked, 25);
        assert_eq!(report.summary.sent, 25);
        assert_eq!(report.summary.link_reports_sent, 3);
        assert_eq!(report.summary.link_reports_acked, 3);
        assert_eq!(run.seen.links.len(), 3, "{:?}", run.seen.links);
        assert!(run.seen.links[0].starts_with("sensorlink_link,sensor=s interval_s=1,sent="));
        assert_eq!(run.seen.connections.concat().len(), 25);
        assert!(report.all_acked());
    }

    /// A reply timeout and the reconnect it causes show in a later report; the readings,
    /// resent, are acked, so nothing is lost. A link report caught in flight is resent too.
    #[tokio::test(start_paused = true)]
    async fn link_reports_count_timeouts_and_reconnects() {
        let mut config = config(Some(30), Duration::from_millis(100));
        config.link_report = Duration::from_secs(1);
        let script = vec![Behaviour::AckAfter(Duration::from_secs(3600))];
        let run = run(config, script, CancellationToken::new()).await;
        let report = report(&run);
        let links = link_events(&run);
        let sum = |name| links.iter().map(|e| field(e, name)).sum::<u64>();
        assert_eq!(sum("acked"), 30, "{links:?}");
        assert_eq!(sum("sent"), 30, "first sends only: {links:?}");
        assert_eq!(sum("lost"), 0);
        assert_eq!(sum("reconnects"), 1);
        assert_eq!(sum("timeouts"), report.counters.timeouts);
        assert!(report.counters.timeouts >= 1, "{:?}", report.counters);
        // The first report (at 1 s, before the 2 s reply timeout) saw nothing acked yet.
        assert_eq!(field(links[0], "acked"), 0);
        assert_eq!(field(links[0], "reconnects"), 0);
        assert!(
            links[0]["fields"].get("rtt_p50_ms").is_none(),
            "{}",
            links[0]
        );
        assert!(report.summary.link_reports_acked >= 2);
        assert!(report.all_acked());
    }

    /// A server that stalls just as a link report arrives: the report's reply is the first
    /// to be late, but the connection ends at the user's readings' own timeouts behind it,
    /// so the stall shows in the summary and a later report, not only as a reconnect.
    #[tokio::test(start_paused = true)]
    async fn a_stall_behind_a_link_report_shows_as_the_readings_timeouts() {
        // Readings at 0.9 s and 1.2 s, the report at 1 s: its reply is late 0.2 s before
        // the next reading's.
        let mut config = config(Some(30), Duration::from_millis(300));
        config.link_report = Duration::from_secs(1);
        let script = vec![Behaviour::StallOnLinkReport];
        let run = run(config, script, CancellationToken::new()).await;
        let report = report(&run);
        let links = link_events(&run);
        let sum = |name| links.iter().map(|e| field(e, name)).sum::<u64>();
        assert!(report.counters.timeouts >= 1, "{:?}", report.counters);
        assert_eq!(report.summary.timeouts, report.counters.timeouts);
        assert_eq!(sum("timeouts"), report.counters.timeouts, "{links:?}");
        assert_eq!(sum("reconnects"), 1, "{links:?}");
        assert_eq!(
            report.summary.disconnects.total(),
            0,
            "only the reply timeout"
        );
        assert!(report.all_acked());
    }

    /// `--legacy` ignores `--link-report`: the seed's messages cannot carry one.
    #[tokio::test(start_paused = true)]
    async fn legacy_mode_makes_no_link_reports() {
        let mut config = config(Some(1), Duration::from_millis(100));
        config.link_report = Duration::from_millis(10);
        let (_tx, values) = mpsc::channel(1);
        let printer = Printer::to(Box::new(std::io::sink()), true);
        let legacy = Engine::new(
            &config,
            crate::client::legacy::LegacySession,
            printer,
            values,
            CancellationToken::new(),
        );
        assert!(!legacy.measure.reports_link());
    }

    /// A link report kept in the spool comes back as a link report: counted apart, not as
    /// a replayed reading.
    #[tokio::test(start_paused = true)]
    async fn spooled_link_reports_are_replayed_as_link_reports() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = spool_config(&dir.path().join("q"));
        config.link_report = Duration::from_secs(1);
        let session = || crate::client::line::LineSession {
            measurement: "m".into(),
            sensor: Some("s".into()),
            token: None,
        };
        let open = |config| {
            let (_tx, values) = mpsc::channel(1);
            let printer = Printer::to(Box::new(std::io::sink()), true);
            Engine::new(config, session(), printer, values, CancellationToken::new())
        };
        let mut engine = open(&config);
        engine.open_spool().await.expect("the spool opens");
        engine
            .produce(vec![(FieldValue::Int(1), 1)])
            .await
            .expect("spooled");
        engine.link_report(false).await.expect("spooled");
        let spool = engine.spool.take().expect("the spool is open");
        spool.close().await.expect("the spool closes");

        let mut engine = open(&config);
        engine.open_spool().await.expect("the spool reopens");
        assert_eq!(engine.replayed, 1);
        assert_eq!(engine.state.counters().produced, 1);
        assert_eq!(engine.state.link_counters().produced, 1);
        assert_eq!(engine.state.is_link(2), Some(true));
        let spool = engine.spool.take().expect("the spool is open");
        spool.close().await.expect("the spool closes");
    }

    /// With `--report`, the run hands back its samples: one per round trip that says
    /// something of the link (resends left out), and the timeout and the reconnect marked
    /// when they happened. Without it, nothing is kept.
    #[tokio::test(start_paused = true)]
    async fn report_samples_hold_the_round_trips_and_mark_the_events() {
        use crate::client::samples::Mark;
        let mut config = config(Some(20), Duration::from_millis(100));
        let script = vec![Behaviour::AckAfter(Duration::from_secs(3600))];
        let plain = run(config.clone(), script.clone(), CancellationToken::new()).await;
        assert!(report(&plain).picture.is_none());

        config.report = Some("run.svg".into());
        let run = run(config, script, CancellationToken::new()).await;
        let report = report(&run);
        let picture = report.picture.as_ref().expect("--report keeps samples");
        let c = report.counters;
        assert_eq!(c.acked, 20);
        assert_eq!(picture.samples.count(), 20 - c.resends, "{c:?}");
        assert_eq!(picture.rtt.count(), picture.samples.count());
        let timeouts = picture.samples.marks(Mark::Timeout);
        let reconnects = picture.samples.marks(Mark::Reconnect);
        assert_eq!(timeouts.len() as u64, c.timeouts);
        assert_eq!(reconnects.len(), 1);
        // The first reading was sent at once: its reply timeout (2 s) is the first mark.
        assert_eq!(timeouts[0], 2.0);
        assert!(reconnects[0] > timeouts[0]);
        assert!(picture.samples.marks(Mark::Loss).is_empty());
    }

    /// The server goes away after the user's last ack, as the run's last link report
    /// arrives: the run ends at once, offline, instead of retrying for the whole drain
    /// timeout; the report counts as unacked at exit (not sent, as it was written).
    #[tokio::test(start_paused = true)]
    async fn the_last_link_report_does_not_hold_the_run_open_once_the_server_is_gone() {
        let mut config = config(Some(5), Duration::from_millis(100));
        config.link_report = Duration::from_secs(3600);
        config.drain_timeout = Duration::from_secs(60);
        let mut script = vec![Behaviour::CloseOnLinkReport];
        script.extend([Behaviour::Refuse; 100]);
        let started = Instant::now();
        let run = run(config, script, CancellationToken::new()).await;
        let elapsed = started.elapsed();
        let report = report(&run);
        assert_eq!(report.counters.acked, 5);
        assert!(report.all_acked(), "{:?}", report.summary);
        assert_eq!(run.seen.links.len(), 1, "the last report was written once");
        assert_eq!(report.summary.link_reports_sent, 1);
        assert_eq!(report.summary.link_reports_acked, 0);
        assert!(
            elapsed < Duration::from_secs(10),
            "the run waited {elapsed:?} (drain timeout 60 s) for its link report"
        );
        assert!(
            run.seen.attempts.len() <= 2,
            "no reconnect loop: {} attempts",
            run.seen.attempts.len()
        );
    }

    /// A link report the server refuses is reported as such, not as a user's reading
    /// rejected, and counted apart: the user's readings are all acked.
    #[tokio::test(start_paused = true)]
    async fn a_rejected_link_report_is_not_printed_as_a_rejected_reading() {
        let mut config = config(Some(5), Duration::from_millis(100));
        config.link_report = Duration::from_millis(250);
        let run = run(
            config,
            vec![Behaviour::RejectLinkReports],
            CancellationToken::new(),
        )
        .await;
        let report = report(&run);
        assert!(run.seen.links.len() >= 2, "{:?}", run.seen.links);
        let kinds = |kind: &str| run.events.iter().filter(|e| e["event"] == kind).count();
        assert_eq!(kinds("rejected"), 0, "{:?}", run.events);
        assert_eq!(kinds("link_report_rejected"), run.seen.links.len());
        assert_eq!(report.counters.rejected, 0);
        assert_eq!(report.counters.acked, 5);
        assert_eq!(report.summary.link_reports_acked, 0);
        assert!(report.all_acked());
    }

    /// A run that gives up (the server is gone with readings unacked) still makes its last
    /// report, whose `lost` is the user's readings still pending; the reports' `lost` sum
    /// to the summary's, and the summary's link figures count what was written and acked.
    #[tokio::test(start_paused = true)]
    async fn the_last_report_of_a_run_that_gives_up_counts_the_pending_readings_as_lost() {
        let mut config = config(Some(10), Duration::from_millis(100));
        config.link_report = Duration::from_millis(200);
        config.drain_timeout = Duration::from_secs(2);
        // Acks 3 lines, then the connection dies and the server never comes back.
        let mut script = vec![Behaviour::ResetMidBatch { ack: 3, drop_at: 6 }];
        script.extend([Behaviour::Refuse; 100]);
        let run = run(config, script, CancellationToken::new()).await;
        let report = report(&run);
        let links = link_events(&run);
        let last = links.last().expect("a last report");
        let c = report.counters;
        assert!(c.unacked_at_exit >= 5, "{c:?}");
        assert_eq!((c.rejected, c.dropped), (0, 0), "{c:?}");
        assert_eq!(field(last, "lost"), c.unacked_at_exit, "{last}");
        let lost: u64 = links.iter().map(|e| field(e, "lost")).sum();
        assert_eq!(lost, report.summary.lost, "{links:?}");
        assert_eq!(
            links.iter().map(|e| field(e, "acked")).sum::<u64>(),
            c.acked
        );
        // The summary counts the reports written (the server read some), not those made
        // (the ones made offline were never written).
        let sent = report.summary.link_reports_sent;
        assert!(sent >= run.seen.links.len() as u64, "{:?}", run.seen.links);
        assert!((links.len() as u64) > sent, "{sent} sent of {links:?}");
        assert!(report.summary.link_reports_acked <= sent);
    }

    /// A run over several fake servers: one script and one view per address.
    struct ManyRun {
        report: Result<RunReport, ClientError>,
        events: Vec<serde_json::Value>,
        seen: Vec<Seen>,
    }

    async fn run_each(config: ClientConfig, scripts: Vec<Vec<Behaviour>>) -> ManyRun {
        run_each_until(config, scripts, CancellationToken::new()).await
    }

    /// A sensor name whose client starts on address `index` of `count`.
    fn sensor_starting_on(index: usize, count: usize) -> String {
        (0..)
            .map(|n| format!("spread-{n}"))
            .find(|name| crate::client::failover::first_address(Some(name), count) == index)
            .expect("some name hashes to each index")
    }

    /// [`run_each`], with `stop` as the run's Ctrl-C.
    async fn run_each_until(
        mut config: ClientConfig,
        scripts: Vec<Vec<Behaviour>>,
        stop: CancellationToken,
    ) -> ManyRun {
        config.servers = (0..scripts.len()).map(|i| format!("s{i}:1")).collect();
        let seen: Vec<_> = scripts
            .iter()
            .map(|_| Arc::new(Mutex::new(Seen::default())))
            .collect();
        let connectors = scripts
            .into_iter()
            .zip(&seen)
            .map(|(script, seen)| connector(script, seen.clone()))
            .collect();
        let out = Arc::new(Mutex::new(Vec::new()));
        let printer = Printer::to(Box::new(SharedBuf(out.clone())), true);
        let report = crate::client::run_failover(&config, connectors, printer, stop).await;
        let out = out.lock().expect("not poisoned").clone();
        let events = String::from_utf8_lossy(&out)
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        let seen = seen
            .iter()
            .map(|seen| std::mem::take(&mut *seen.lock().expect("not poisoned")))
            .collect();
        ManyRun {
            report,
            events,
            seen,
        }
    }

    fn events_of<'a>(run: &'a ManyRun, kind: &str) -> Vec<&'a serde_json::Value> {
        run.events.iter().filter(|e| e["event"] == kind).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_first_address_moves_to_the_second_at_once() {
        let run = run_each(
            config(Some(3), Duration::from_millis(100)),
            vec![vec![Behaviour::Refuse; 100], vec![]],
        )
        .await;
        let report = match &run.report {
            Ok(report) => report,
            Err(err) => panic!("run failed: {err}; {:?}", run.events),
        };
        // No wait between the two attempts (paused time: the same instant).
        assert_eq!(run.seen[0].attempts.len(), 1);
        assert_eq!(run.seen[1].attempts, run.seen[0].attempts);
        let left = events_of(&run, "disconnected");
        assert_eq!(left.len(), 1, "{:?}", run.events);
        assert_eq!(left[0]["server"], "s0:1");
        assert_eq!(left[0]["kind"], "refused");
        assert_eq!(left[0]["next"], "s1:1");
        assert_eq!(left[0]["retry_in_ms"], 0.0);
        let connected = events_of(&run, "connected");
        assert_eq!(connected[0]["server"], "s1:1");
        assert_eq!(connected[0]["after"][0]["server"], "s0:1");
        assert_eq!(report.summary.failovers, 1);
        let servers = &report.summary.servers;
        assert_eq!((servers[0].connects, servers[0].failures), (0, 1));
        assert_eq!((servers[1].connects, servers[1].acked), (1, 3));
        assert!(report.all_acked());
    }

    /// The readings in flight when the first server goes away are resent on the second, in
    /// order; the client stays there (no flapping back to the first).
    #[tokio::test(start_paused = true)]
    async fn a_server_that_goes_away_is_left_for_the_next_and_nothing_is_lost() {
        let run = run_each(
            config(Some(10), Duration::from_millis(100)),
            vec![
                vec![Behaviour::ResetMidBatch { ack: 3, drop_at: 6 }],
                vec![],
            ],
        )
        .await;
        let report = match &run.report {
            Ok(report) => report,
            Err(err) => panic!("run failed: {err}; {:?}", run.events),
        };
        let value = |n: i64| 100 + 2 * n;
        let on_b = &run.seen[1].connections[0];
        assert_eq!(on_b.first(), Some(&value(4)), "{on_b:?}");
        assert!(on_b.windows(2).all(|w| w[0] < w[1]), "order kept: {on_b:?}");
        let mut stored: Vec<i64> = run
            .seen
            .iter()
            .flat_map(|s| s.connections.concat())
            .collect();
        stored.sort();
        stored.dedup();
        assert_eq!(stored, (1..=10).map(value).collect::<Vec<_>>());
        assert_eq!(run.seen[0].attempts.len(), 1, "never back to the first");
        assert_eq!(run.seen[1].attempts.len(), 1);
        let servers = &report.summary.servers;
        assert_eq!(servers[0].acked + servers[1].acked, 10, "{servers:?}");
        assert_eq!(servers[0].acked, 3, "{servers:?}");
        assert_eq!(report.summary.failovers, 1);
        assert!(report.all_acked(), "{:?}", report.summary);
    }

    /// Each sensor starts on the address its name hashes to, so a fleet spreads over the
    /// list (the other tests run as "s", which starts on the first of two).
    #[tokio::test(start_paused = true)]
    async fn a_sensor_starts_on_the_address_its_name_picks() {
        let sensor = sensor_starting_on(1, 2);
        let mut config = config(Some(3), Duration::from_millis(100));
        config.sensor = Some(sensor);
        let run = run_each(config, vec![vec![], vec![]]).await;
        assert!(run.report.is_ok(), "{:?}", run.events);
        assert_eq!(run.seen[0].attempts.len(), 0, "never needed the first");
        assert_eq!(run.seen[1].attempts.len(), 1);
        let connected = events_of(&run, "connected");
        assert_eq!(connected[0]["server"], "s1:1");
    }

    /// A live connection that drops moves on after a jitter in [0, INITIAL_BACKOFF], so a
    /// fleet leaving a dead collector does not reach the next in one instant.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_connection_moves_on_after_a_short_jitter() {
        let interval = Duration::from_millis(100);
        let run = run_each(
            config(Some(10), interval),
            vec![
                vec![Behaviour::ResetMidBatch { ack: 3, drop_at: 6 }],
                vec![],
            ],
        )
        .await;
        assert!(run.report.is_ok(), "{:?}", run.events);
        // Reading 6 (made at 500 ms) is the one A drops the connection on.
        let gap = run.seen[1].attempts[0] - run.seen[0].attempts[0];
        let dropped_at = interval * 5;
        assert!(
            gap > dropped_at && gap <= dropped_at + INITIAL_BACKOFF,
            "{gap:?}"
        );
        let left = events_of(&run, "disconnected");
        let waited = left[0]["retry_in_ms"].as_f64().expect("a wait");
        assert!(waited > 0.0 && waited <= 100.0, "{left:?}");
    }

    /// Only a whole round of failed addresses waits, and the waits grow round by round.
    #[tokio::test(start_paused = true)]
    async fn the_backoff_waits_only_between_rounds() {
        let refuse = vec![Behaviour::Refuse; 2];
        let run = run_each(
            config(Some(1), Duration::from_millis(100)),
            vec![refuse.clone(), refuse],
        )
        .await;
        assert!(run.report.is_ok(), "{:?}", run.events);
        let (a, b) = (&run.seen[0].attempts, &run.seen[1].attempts);
        assert_eq!((a.len(), b.len()), (3, 2));
        // Each round: A then B at once; between rounds, a backoff in [d/2, d].
        assert_eq!(a[0], b[0]);
        assert_eq!(a[1], b[1]);
        let rounds = [a[0], a[1], a[2]];
        assert_backoff_grows(&rounds, 2);
    }

    /// Two servers that each ack one reading and close: a connection that acked but did
    /// not stay up is a failure, so each round (A, B) is followed by a growing backoff,
    /// never a tight A→B→A… loop. See: review12-failover-findings B1.
    #[tokio::test(start_paused = true)]
    async fn servers_that_ack_and_close_at_once_are_not_hammered() {
        let interval = Duration::from_millis(10);
        let close = vec![Behaviour::CloseAfterAck; 50];
        let run = run_each(config(Some(8), interval), vec![close.clone(), close]).await;
        assert!(run.report.is_ok(), "{:?}", run.events);
        let mut attempts: Vec<Instant> = run.seen.iter().flat_map(|s| s.attempts.clone()).collect();
        attempts.sort();
        assert!(attempts.len() >= 6, "{attempts:?}");
        // Attempts go in pairs (a round over both); between rounds, a backoff in [d/2, d]
        // (plus the wait for a reading to ack), d doubling: nothing resets it.
        let mut ceiling = INITIAL_BACKOFF;
        for round in attempts.chunks(2).collect::<Vec<_>>().windows(2) {
            let gap = round[1][0] - round[0][round[0].len() - 1];
            assert!(
                gap >= ceiling / 2 && gap <= ceiling + 2 * interval,
                "wait {gap:?} outside [{:?}, {ceiling:?}] in {attempts:?}",
                ceiling / 2
            );
            ceiling *= 2;
        }
        let waits: Vec<_> = events_of(&run, "disconnected")
            .iter()
            .map(|e| e["retry_in_ms"].as_f64().unwrap_or(-1.0))
            .collect();
        assert!(waits.iter().any(|ms| *ms > 0.0), "{waits:?}");
    }

    fn with_token(mut config: ClientConfig) -> ClientConfig {
        config.token = Some(crate::protocol::control::AuthSecret::new(
            "sl_abcd1234_secret",
        ));
        config
    }

    /// One collector refusing the token (a stale token file) is skipped like any failure,
    /// counted and named; the others still take the readings. See: review12 S2.
    #[tokio::test(start_paused = true)]
    async fn a_token_refused_by_one_of_several_servers_moves_on_to_the_next() {
        let config = with_token(config(Some(3), Duration::from_millis(100)));
        let run = run_each(config, vec![vec![Behaviour::RefuseAuth; 100], vec![]]).await;
        let report = match &run.report {
            Ok(report) => report,
            Err(err) => panic!("run failed: {err}; {:?}", run.events),
        };
        let left = events_of(&run, "disconnected");
        assert_eq!(left[0]["server"], "s0:1", "{left:?}");
        assert_eq!(left[0]["kind"], "auth_failed", "{left:?}");
        assert_eq!(events_of(&run, "connected")[0]["server"], "s1:1");
        assert_eq!(report.summary.disconnects.other, 1);
        assert_eq!(report.summary.servers[0].failures, 1);
        assert_eq!(report.summary.servers[1].acked, 3);
        assert!(report.all_acked(), "{:?}", report.summary);
    }

    /// Refused by every server in one round: fatal (exit 3), naming each server.
    #[tokio::test(start_paused = true)]
    async fn a_token_refused_by_every_server_is_fatal_and_names_them() {
        let config = with_token(config(Some(3), Duration::from_millis(100)));
        let refuse = vec![Behaviour::RefuseAuth; 100];
        let run = run_each(config.clone(), vec![refuse.clone(), refuse.clone()]).await;
        match &run.report {
            Err(ClientError::AuthFailed(why)) => assert_eq!(
                why,
                "every server refused the token: s0:1: unknown token; s1:1: unknown token"
            ),
            other => panic!("expected an auth failure, got {:?}", other.as_ref().err()),
        }
        assert_eq!(
            (run.seen[0].attempts.len(), run.seen[1].attempts.len()),
            (1, 1)
        );
        // One server: fatal at the first refusal, as always, and named.
        let one = run_each(config, vec![refuse]).await;
        match &one.report {
            Err(err @ ClientError::AuthFailed(_)) => assert_eq!(
                err.to_string(),
                "authentication failed: unknown token (by s0:1)"
            ),
            other => panic!("expected an auth failure, got {:?}", other.as_ref().err()),
        }
    }

    /// A stop during a backoff longer than the drain: the wait is cut to the drain's end
    /// and the addresses are tried then, instead of the run giving up untried. See:
    /// review12 S3 (a).
    #[tokio::test(start_paused = true)]
    async fn a_stop_during_a_long_backoff_still_tries_the_addresses_before_giving_up() {
        let mut config = config(None, Duration::from_secs(1));
        config.max_backoff = Duration::from_secs(60);
        config.connect_timeout = Duration::from_secs(60);
        config.drain_timeout = Duration::from_millis(10);
        let stop = CancellationToken::new();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                // Seven refused rounds start by 6.3 s, the eighth at 6.35 s or later
                // (waits in [d/2, d], d = 100 ms doubling): 6.32 s is within the
                // seventh round's wait, always.
                tokio::time::sleep(Duration::from_millis(6320)).await;
                stop.cancel();
            });
        }
        let refuse = vec![Behaviour::Refuse; 7];
        let run = run_each_until(config, vec![refuse.clone(), refuse], stop).await;
        let report = match &run.report {
            Ok(report) => report,
            Err(err) => panic!("run failed: {err}; {:?}", run.events),
        };
        assert_eq!(run.seen[0].attempts.len(), 8, "A tried at the drain's end");
        assert_eq!(report.counters.produced, 7);
        assert!(report.all_acked(), "{:?}", report.summary);
    }

    /// A stop before the first connection still tries every address once: the first one
    /// refused is not "unreachable" while the second is untried. See: review12 N1.
    #[tokio::test(start_paused = true)]
    async fn a_stop_before_the_first_connection_still_tries_every_address() {
        let stop = CancellationToken::new();
        {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                stop.cancel();
            });
        }
        // A always refuses; B refuses until the stop, then answers.
        fn gated(
            answer_after: Option<CancellationToken>,
        ) -> impl FnMut() -> std::future::Ready<std::io::Result<DuplexStream>> {
            let mut serve = connector(Vec::new(), Arc::new(Mutex::new(Seen::default())));
            move || match &answer_after {
                Some(stop) if stop.is_cancelled() => serve(),
                _ => std::future::ready(Err(std::io::ErrorKind::ConnectionRefused.into())),
            }
        }
        let mut config = config(None, Duration::from_secs(1));
        config.servers = vec!["s0:1".into(), "s1:1".into()];
        config.connect_timeout = Duration::from_secs(60);
        let printer = Printer::to(Box::new(std::io::sink()), true);
        let connectors = vec![gated(None), gated(Some(stop.clone()))];
        let report = crate::client::run_failover(&config, connectors, printer, stop).await;
        let report = match report {
            Ok(report) => report,
            Err(err) => panic!("run failed: {err}"),
        };
        assert_eq!(report.summary.servers[1].connects, 1);
        assert!(report.counters.produced >= 3, "{:?}", report.counters);
        assert!(report.all_acked(), "{:?}", report.summary);
    }

    /// While draining, a blackholed address gets its whole connect timeout and the next
    /// one is still tried, though that outlasts the drain timeout. See: review12 S3 (b).
    #[tokio::test(start_paused = true)]
    async fn a_blackholed_address_while_draining_does_not_keep_the_next_untried() {
        let mut config = config(Some(6), Duration::from_millis(100));
        config.sensor = Some(sensor_starting_on(0, 3));
        config.connect_timeout = Duration::from_secs(2);
        config.drain_timeout = Duration::from_secs(1);
        let started = Instant::now();
        // A drops as the source ends (reading 6, at 500 ms); B never answers its `ping`.
        let run = run_each(
            config,
            vec![
                vec![Behaviour::ResetMidBatch { ack: 3, drop_at: 6 }],
                vec![Behaviour::Silent; 10],
                vec![],
            ],
        )
        .await;
        let report = match &run.report {
            Ok(report) => report,
            Err(err) => panic!("run failed: {err}; {:?}", run.events),
        };
        let on_c = run.seen[2].attempts.first().expect("C was tried");
        assert!(*on_c - started >= Duration::from_millis(2500), "{on_c:?}");
        assert_eq!(report.summary.disconnects.connect_timeout, 1);
        assert_eq!(report.summary.servers[2].acked, 3);
        assert!(report.all_acked(), "{:?}", report.summary);
    }

    #[tokio::test(start_paused = true)]
    async fn no_address_reachable_is_unreachable_naming_each() {
        let refuse = vec![Behaviour::Refuse; 1000];
        let run = run_each(
            config(Some(1), Duration::from_millis(100)),
            vec![refuse.clone(), refuse],
        )
        .await;
        match run.report {
            Err(ClientError::Unreachable { addr, cause }) => {
                assert_eq!(addr, "s0:1, s1:1");
                assert!(
                    cause.starts_with("s0:1: ") && cause.contains("; s1:1: "),
                    "{cause}"
                );
            }
            other => panic!("expected unreachable, got {:?}", other.map(|r| r.summary)),
        }
        // Every round tried both, the last one included.
        assert_eq!(run.seen[0].attempts.len(), run.seen[1].attempts.len());
    }

    /// With several servers a link report names the one the link was to; with one it is
    /// unchanged (no `server` field).
    #[tokio::test(start_paused = true)]
    async fn with_several_servers_link_reports_name_the_server() {
        let mut config = config(Some(15), Duration::from_millis(100));
        config.link_report = Duration::from_secs(1);
        let run = run_each(config.clone(), vec![vec![Behaviour::Refuse; 100], vec![]]).await;
        assert!(run.report.is_ok(), "{:?}", run.events);
        let links = &run.seen[1].links;
        assert!(!links.is_empty(), "{:?}", run.events);
        for link in links {
            assert!(link.contains(",server=\"s1:1\" "), "{link}");
        }
        let one = run_each(config, vec![vec![]]).await;
        assert!(!one.seen[0].links.is_empty());
        assert!(one.seen[0].links.iter().all(|l| !l.contains("server=")));
    }
}
