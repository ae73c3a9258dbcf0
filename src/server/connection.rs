//! One peer's connection: sniff the mode, decode frames, hand readings to the store, and
//! answer in order once the store has committed them.
//!
//! Generic over any [`PeerStream`] (see [`super::stream`]) so TLS can wrap it later. The loop
//! pipelines: while one batch is being committed it keeps reading (up to
//! [`Limits::max_inflight_batches`]), then writes each batch's replies in arrival order.
//! Nothing is acknowledged before the store says it is committed.

mod frames;
mod replies;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use self::replies::LastCommit;
pub(super) use self::replies::Out;
use super::auth::{linger, ConnAuth};
use super::pending::{wait_head, InFlight, LiveFeed, PendingReply, Unreported};
use super::quota::{ConnQuota, TokenBucket};
use super::spare;
use super::stream::{read_when_ready, READ_CHUNK_BYTES};
use super::tcp_sample::TcpSampler;
use crate::events::{
    self, AcksWithheld, BytesReceived, CloseReason, ConnectionClosed, Event as _, FirstLineMissed,
    Mode, ReadingConflict, RepliesWritten, StoreUnavailable, TcpSampled, Telemetry,
};
use crate::live::{LiveConnection, Registry};
use crate::protocol::codec::LineDecoder;
use crate::protocol::legacy::LegacyDecoder;
use crate::store::writer::StoreHandle;
use crate::store::StoredReading;

pub use super::stream::PeerStream;
pub use super::Limits;

/// Most reads of already-arrived data at shutdown (bounds a peer that never stops sending).
const SHUTDOWN_DRAIN_READS: usize = 128;

/// Error replies sent per second per connection (with as many of burst): a flood of
/// refused 8-byte lines would otherwise be answered with ~90 bytes each. The rest are only
/// counted; each `ack` still reports its `rejected=` exactly.
const MAX_ERROR_REPLIES_PER_S: u32 = 100;

/// How the peer talks, decided from its first bytes.
enum Decoder {
    Undecided,
    Line(LineDecoder),
    Legacy(LegacyDecoder),
}

/// Readings and replies decoded but not yet submitted.
#[derive(Debug, Default)]
pub(super) struct Decoded {
    pub(super) batch: Vec<StoredReading>,
    pub(super) replies: Vec<PendingReply>,
}

/// What a connection rarely needs, made at its first use ([`Connection::rare`]).
#[derive(Debug, Default)]
struct Rare {
    /// Error replies held until the peer shows it reads replies (`interactive`).
    held_errors: Vec<PendingReply>,
    /// Error replies this connection may still send ([`MAX_ERROR_REPLIES_PER_S`]); made at
    /// the first error.
    error_replies: Option<TokenBucket>,
    /// Why a batch failed, until an `ack` that could cover its readings has been turned into
    /// an error: a `sync` read after the failed batch (in a later read, so in a later
    /// `InFlight`) must not acknowledge readings that were never stored.
    unacked_failure: Option<String>,
}

/// Counts of one connection, logged when it closes.
#[derive(Debug, Default)]
struct ConnCounters {
    accepted: u64,
    rejected: u64,
    acked: u64,
}

/// Why the loop stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Eof,
    Shutdown,
    IdleTimeout,
    ReadError,
    WriteError,
    WriteStalled,
    StoreFailed,
    FirstLineTimeout,
    /// Closed by `--auth` ([`ConnAuth::close_reason`]).
    Auth(CloseReason),
}

impl End {
    fn reason(&self) -> CloseReason {
        match self {
            End::Eof => CloseReason::Eof,
            End::Shutdown => CloseReason::Shutdown,
            End::IdleTimeout => CloseReason::IdleTimeout,
            End::ReadError => CloseReason::ReadFailed,
            End::WriteError => CloseReason::WriteFailed,
            End::WriteStalled => CloseReason::WriteStalled,
            End::StoreFailed => CloseReason::StoreFailed,
            End::FirstLineTimeout => CloseReason::FirstLineTimeout,
            End::Auth(reason) => *reason,
        }
    }
}

struct Connection<'a> {
    peer: SocketAddr,
    /// Boxed `str`: a `String`'s capacity word is 8 bytes more in every connection's task.
    peer_ip: Box<str>,
    /// Owned (not borrowed from the task): the listener then builds the connection's
    /// future outside any `async` block of its own, which would keep a second copy of
    /// every value moved into it for the connection's whole life.
    limits: Arc<Limits>,
    /// Where this connection's events are counted.
    telemetry: &'a Telemetry,
    store: StoreHandle,
    decoder: Decoder,
    counters: ConnCounters,
    /// Since the last `sync`: readings and rejected lines, and when the first reading came.
    since_sync_readings: u64,
    since_sync_rejected: u64,
    since_sync_first: Option<Instant>,
    /// A peer that sent a control line reads replies; until then error replies are held.
    interactive: bool,
    /// Its token and what it may write (`--auth`).
    auth: ConnAuth,
    /// Error replies held or rate-limited, a store failure not yet reported: made at first
    /// use (boxed: most connections never need it, and every one holds this pointer).
    rare: Option<Box<Rare>>,
    /// Readings and replies decoded but not yet submitted (None: none; lent by
    /// [`spare`] while decoding).
    decoded: Option<Box<Decoded>>,
    inflight: VecDeque<InFlight>,
    /// The second (since the epoch) in which the `Received:` log budget ran out for us,
    /// and the lines not logged since, handed to the shared count after each read.
    /// (0: never; 32 bits: each word is 8 bytes in every connection's task.)
    log_muted_second: u32,
    log_suppressed: u32,
    /// The last commit this connection saw, for the timings in acks.
    last_commit: Option<LastCommit>,
    /// Duplicates and conflicts among committed readings after the last ack written.
    unreported: Unreported,
    /// Readings decoded since the last count: counted once per read, not per reading.
    uncounted_accepted: u32,
    /// What the live view gets of this connection's committed batches.
    live: LiveFeed,
    /// Rates and new-series caps ([`super::quota`]); authentication sets its principal.
    quota: ConnQuota,
    /// When the bytes being decoded were read, by tokio's clock: the quota's one clock
    /// (its buckets were made on it; a paused test clock then drives both).
    read_at: tokio::time::Instant,
    /// Replies encoded and not yet written (None: none).
    out: Option<Box<Out>>,
    /// `TCP_INFO` sampling ([`super::tcp_sample`]).
    tcp: TcpSampler,
}

/// Serve one peer until it leaves, idles out, or the server shuts down.
pub async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    limits: &Limits,
    store: StoreHandle,
    shutdown: CancellationToken,
) where
    S: PeerStream,
{
    serve_counted(
        stream,
        peer,
        limits,
        store,
        shutdown,
        events::telemetry(),
        None,
    )
    .await;
}

/// [`serve`], counting this connection's events into `telemetry` (a test's own handles),
/// and feeding the live view `live` when given. With [`Limits::tls`], the TLS handshake
/// comes first ([`super::tls`]).
pub async fn serve_counted<S>(
    stream: S,
    peer: SocketAddr,
    limits: &Limits,
    store: StoreHandle,
    shutdown: CancellationToken,
    telemetry: &Telemetry,
    live: Option<Arc<Registry>>,
) where
    S: PeerStream,
{
    serve_accepted(
        stream,
        peer,
        Accepted::now(),
        Arc::new(limits.clone()),
        store,
        shutdown,
        telemetry,
        live,
    )
    .await;
}

/// [`serve_counted`] for a connection `accepted` earlier (a PROXY header was read first:
/// it is part of the time a peer gets to show it speaks).
///
/// Not an `async fn`: each nested `async fn` keeps its own copy of its arguments in the
/// connection's task for the connection's whole life; this only picks the future to run.
#[allow(clippy::too_many_arguments)]
pub(super) fn serve_accepted<'a, S>(
    stream: S,
    peer: SocketAddr,
    accepted: Accepted,
    limits: Arc<Limits>,
    store: StoreHandle,
    shutdown: CancellationToken,
    telemetry: &'a Telemetry,
    live: Option<Arc<Registry>>,
) -> impl Future<Output = ()> + 'a
where
    S: PeerStream + 'a,
{
    // The first-line deadline runs from accept: a TLS handshake (and a PROXY header) is
    // part of the time a peer gets to show it speaks, not a free extension of it.
    if limits.tls.is_none() {
        return Either::Left(serve_stream(
            stream, peer, accepted, limits, store, shutdown, telemetry, live,
        ));
    }
    // Boxed: a TLS session (and its handshake) inline would size every connection's task
    // to it, plain ones included; boxed, only a TLS connection pays for it.
    Either::Right(Box::pin(async move {
        let Some(tls) = &limits.tls else {
            return;
        };
        let deadline = accepted.at + limits.first_wait();
        let handshake = tls.handshake(stream, peer, deadline, &shutdown, telemetry);
        let Some(stream) = handshake.await else {
            return;
        };
        serve_stream(
            stream, peer, accepted, limits, store, shutdown, telemetry, live,
        )
        .await;
    }))
}

/// Sleep until `at`; never resolves for `None`. A disabled `select!` branch is still built
/// at every turn of the loop: this way it makes no timer (nor clones the runtime handle).
/// The timer is boxed: only a legacy peer with a held `ping` needs one, and inline it would
/// size every connection's task to it.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => Box::pin(tokio::time::sleep_until(at)).await,
        None => std::future::pending().await,
    }
}

/// Write all of `bytes` within `timeout`. The timer is made (boxed) only once a write would
/// wait: replies nearly always fit in the socket's buffer, and a timer inline would sit in
/// every connection's task, idle ones included.
async fn write_all_timed<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
) -> Result<std::io::Result<()>, tokio::time::error::Elapsed> {
    let mut written = 0;
    let blocked = std::future::poll_fn(|cx| loop {
        if written == bytes.len() {
            return Poll::Ready(Ok(false));
        }
        match Pin::new(&mut *stream).poll_write(cx, &bytes[written..]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            // The socket is full: the rest waits, under the timeout.
            Poll::Pending => return Poll::Ready(Ok(true)),
        }
    })
    .await;
    match blocked {
        Ok(false) => Ok(Ok(())),
        Ok(true) => {
            let rest = stream.write_all(&bytes[written..]);
            Box::pin(tokio::time::timeout(timeout, rest)).await
        }
        Err(err) => Ok(Err(err)),
    }
}

/// When a connection was accepted: its first-line deadline and its duration run from here.
#[derive(Debug, Clone, Copy)]
pub(super) struct Accepted {
    pub(super) at: tokio::time::Instant,
    started: Instant,
}

impl Accepted {
    pub(super) fn now() -> Accepted {
        Accepted {
            at: tokio::time::Instant::now(),
            started: Instant::now(),
        }
    }
}

/// [`serve_counted`] over a stream ready for the protocol (TLS, if any, established). The
/// connection's state is built here, outside the future, so that the arguments it is built
/// from are not kept beside it ([`serve_accepted`]).
#[allow(clippy::too_many_arguments)]
fn serve_stream<'a, S>(
    stream: S,
    peer: SocketAddr,
    accepted: Accepted,
    limits: Arc<Limits>,
    store: StoreHandle,
    shutdown: CancellationToken,
    telemetry: &'a Telemetry,
    live: Option<Arc<Registry>>,
) -> impl Future<Output = ()> + 'a
where
    S: PeerStream + 'a,
{
    // Moved into the future and used in place there (a rebinding would keep two copies).
    Connection::new(peer, limits, telemetry, store, live).serve(stream, accepted, shutdown)
}

impl<'a> Connection<'a> {
    /// A connection's state before its first byte.
    fn new(
        peer: SocketAddr,
        limits: Arc<Limits>,
        telemetry: &'a Telemetry,
        store: StoreHandle,
        live: Option<Arc<Registry>>,
    ) -> Self {
        Connection {
            peer,
            peer_ip: peer.ip().to_string().into_boxed_str(),
            telemetry,
            store,
            decoder: Decoder::Undecided,
            counters: ConnCounters::default(),
            since_sync_readings: 0,
            since_sync_rejected: 0,
            since_sync_first: None,
            interactive: false,
            auth: ConnAuth::new(limits.auth.clone()),
            rare: None,
            decoded: None,
            inflight: VecDeque::new(),
            last_commit: None,
            unreported: Unreported::default(),
            log_muted_second: 0,
            log_suppressed: 0,
            uncounted_accepted: 0,
            live: LiveFeed::new(live.map(|registry| LiveConnection::new(registry, peer))),
            quota: ConnQuota::new(limits.quotas.clone(), tokio::time::Instant::now()),
            read_at: tokio::time::Instant::now(),
            out: None,
            tcp: TcpSampler::new(),
            limits,
        }
    }
}

/// Bytes one connection reads in a row before it lets the others run. Counted in bytes, not
/// reads: a lent spare read buffer can be 8× a chunk, and counting reads gave connections
/// that held a large one up to 8× the others' share per turn (and, as the kernel then grew
/// their receive windows, kept it: at `--pipeline 4096 --batch 1024` × 50 the slowest
/// connection got 46 % of the fastest's readings, their bytes following their `rb`).
const TURN_BYTES: u32 = 4 * READ_CHUNK_BYTES as u32;

impl<'a> Connection<'a> {
    /// What the connection rarely needs, made now if it was not.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The decided mode (a committed batch implies one).
    fn mode(&self) -> Mode {
        match self.decoder {
            Decoder::Legacy(_) => Mode::Legacy,
            Decoder::Line(_) | Decoder::Undecided => Mode::Line,
        }
    }

    /// Serve until the end; `accepted` starts the first-line deadline.
    ///
    /// Takes the connection, the stream and the rest by value, and does everything (the
    /// close's event too) in this one future: each value is then kept once in the task, not
    /// once in a caller's future and again in the one it awaits.
    /// Not an `async fn`: its arguments would be kept twice (an `async fn` moves them into
    /// locals of its body); an `async move` block uses what it captured in place.
    #[allow(clippy::manual_async_fn)]
    fn serve<S>(
        mut self,
        mut stream: S,
        accepted: Accepted,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + 'a
    where
        S: PeerStream + 'a,
    {
        async move {
            let shutdown = &shutdown;
            // Allocated only while bytes are pending: an idle connection holds no read buffer.
            let mut buf = BytesMut::new();
            // Slowloris: only a complete line (or legacy message) is progress. Until the first
            // one the deadline is the first-line timeout's; then each complete line restarts
            // the idle timeout, and bytes alone restart nothing.
            // (Locals held across the loop's awaits are bytes in every connection's task:
            // what can be recomputed or read from `self` is.)
            let mut idle_deadline = accepted.at + self.limits.first_wait();
            // One idle timer and one shutdown wait for the connection's life, not one each
            // per turn of the loop: a later deadline is re-armed in place (an atomic store,
            // not a timer-wheel insert and removal per reading), and the shutdown signal's
            // waiter list is joined once.
            let idle = tokio::time::sleep_until(idle_deadline);
            let cancelled = shutdown.cancelled();
            tokio::pin!(idle, cancelled);
            let mut spoke = false;
            let mut reading = true;
            let mut end = End::Eof;
            // Bytes read in a row (long reads) since this task last gave way: a connection
            // whose socket always has bytes would otherwise run until tokio's coop budget (128
            // reads, ≈ 1 MiB) is spent while the other connections wait; a turn of TURN_BYTES
            // keeps the service round-robin.
            let mut turn_bytes = 0u32;
            // The last read was short (the socket drained): once its batch is answered, the
            // connection sheds its buffers (`shed`). A connection streaming long reads keeps them.
            let mut drained = false;
            loop {
                if let (true, Some(reason)) = (reading, self.auth.close_reason()) {
                    // Its replies (held errors too: they say why) go out before the close.
                    reading = false;
                    end = End::Auth(reason);
                    self.become_interactive();
                }
                if let Err(stop) = self.submit_decoded().await {
                    end = stop;
                    break;
                }
                // Replies whose batches are already committed go out without waiting.
                if let Err(stop) = self.write_ready(&mut stream).await {
                    end = stop;
                    break;
                }
                // Awake anyway: sample the link if due (a batch handled, the last sample old).
                self.sample_tcp(&stream, false);
                if !reading && self.inflight.is_empty() {
                    break;
                }
                let can_read = reading && self.inflight.len() < self.limits.max_inflight_batches;
                if buf.is_empty() && buf.capacity() > 0 {
                    spare::give_read_buf(std::mem::take(&mut buf));
                }
                if drained && buf.is_empty() && self.inflight.is_empty() {
                    // All served and the socket drained: likely idle until the next reading.
                    drained = false;
                    self.shed();
                }
                let held_ping =
                    matches!(self.decoder, Decoder::Legacy(_)) && LegacyDecoder::holds_ping(&buf);
                if idle.deadline() != idle_deadline {
                    idle.as_mut().reset(idle_deadline);
                }
                tokio::select! {
                    biased;
                    _ = wait_head(&mut self.inflight), if !self.inflight.is_empty() => {
                        if let Err(stop) = self.write_ready(&mut stream).await {
                            end = stop;
                            break;
                        }
                    }
                    _ = &mut cancelled, if reading => {
                        // Finish what has already arrived; a partial last line was never sent whole.
                        reading = false;
                        end = End::Shutdown;
                        // Boxed: its zero timeout is a timer, needed only at shutdown.
                        Box::pin(self.drain_arrived(&mut stream, &mut buf)).await;
                    }
                    read = read_when_ready(&mut stream, &mut buf, TURN_BYTES.saturating_sub(turn_bytes) as usize), if can_read => match read {
                        Ok(0) => {
                            reading = false;
                            self.decode(&mut buf, true);
                        }
                        Ok(n) => {
                            BytesReceived { bytes: n }.emit_to(self.telemetry);
                            // A short read drained the socket: the next read waits, and so
                            // gives way by itself. (A read that filled the turn's rest was
                            // not short.)
                            let n_turn = u32::try_from(n).unwrap_or(u32::MAX);
                            if n >= READ_CHUNK_BYTES / 2 || n_turn >= TURN_BYTES.saturating_sub(turn_bytes) {
                                turn_bytes = turn_bytes.saturating_add(n_turn);
                            } else {
                                turn_bytes = 0;
                                drained = true;
                            }
                            // `read_at`, read by `decode`, is also when bytes last arrived:
                            // a held legacy `ping` is answered once quiet since then.
                            if self.decode(&mut buf, false) > 0 {
                                spoke = true;
                                idle_deadline = self.read_at + self.limits.idle_timeout;
                            }
                        }
                        Err(err) => {
                            tracing::debug!(cause = %err, "read failed");
                            reading = false;
                            end = End::ReadError;
                            // Complete lines that arrived before the reset are still stored (nobody
                            // can be acked); a cut-off last line is not a reading and is dropped.
                            self.decode(&mut buf, false);
                        }
                    },
                    _ = sleep_until_some(held_ping.then(|| self.read_at + self.limits.legacy_ping_quiet)), if held_ping && reading => {
                        if self.answer_held_ping(&mut buf) {
                            // A complete legacy message: progress, as in the read branch.
                            spoke = true;
                            idle_deadline = tokio::time::Instant::now() + self.limits.idle_timeout;
                        }
                    }
                    _ = &mut idle, if can_read && self.inflight.is_empty() => {
                        let first_wait = self.limits.first_wait();
                        if spoke || first_wait == self.limits.idle_timeout {
                            tracing::info!(idle_timeout = ?self.limits.idle_timeout, "closing idle connection");
                            end = End::IdleTimeout;
                        } else {
                            FirstLineMissed { timeout: first_wait, pending_bytes: buf.len() }
                                .emit_to(self.telemetry);
                            end = End::FirstLineTimeout;
                        }
                        break;
                    }
                }
                if turn_bytes >= TURN_BYTES {
                    turn_bytes = 0;
                    super::give_way::give_way().await;
                }
            }
            self.sample_tcp(&stream, true);
            if matches!(
                end,
                End::Eof | End::Shutdown | End::IdleTimeout | End::Auth(_)
            ) {
                let _ = tokio::time::timeout(self.limits.write_timeout, stream.shutdown()).await;
            }
            if matches!(end, End::Auth(_)) {
                // Boxed: its drain buffer would otherwise sit in every connection's task.
                Box::pin(linger(&mut stream, self.limits.write_timeout)).await;
            }
            let mode = match self.decoder {
                Decoder::Undecided => None,
                Decoder::Line(_) => Some(Mode::Line),
                Decoder::Legacy(_) => Some(Mode::Legacy),
            };
            // Its sensors are disconnected (if no other connection carries them) as it closes.
            self.live.close();
            let counters = &self.counters;
            ConnectionClosed {
                mode,
                reason: end.reason(),
                accepted: counters.accepted,
                rejected: counters.rejected,
                acked: counters.acked,
                duration: accepted.started.elapsed(),
            }
            .emit_to(self.telemetry);
        }
    }

    /// Sample `TCP_INFO` if due (`closing`: its last figures), once a batch has been
    /// committed: a connection that never stored anything is not worth a syscall.
    fn sample_tcp<S: PeerStream>(&mut self, stream: &S, closing: bool) {
        if self.last_commit.is_none() {
            return;
        }
        let interval = self.limits.tcp_info_interval;
        if let Some(sample) = self.tcp.sample(stream, interval, closing) {
            TcpSampled {
                srtt: sample.figures.srtt(),
                retransmits: sample.retransmits_delta,
            }
            .emit_to(self.telemetry);
            self.live.tcp_sampled(sample.figures);
        }
    }

    /// Give back what served the last batches (the in-flight queue; the reply buffer goes
    /// back once written) to this thread's spares ([`spare`]), and drop the quota's copy of
    /// the last series: at 10 000 idle connections each such buffer would be ≈ 0.1 KiB of
    /// server memory per connection.
    fn shed(&mut self) {
        if self.inflight.capacity() > 0 && self.inflight.is_empty() {
            spare::give_inflight(std::mem::take(&mut self.inflight));
        }
        self.quota.shed();
    }

    /// At shutdown: read what the peer has already sent, without waiting for more.
    async fn drain_arrived<S>(&mut self, stream: &mut S, buf: &mut BytesMut)
    where
        S: AsyncRead + Unpin,
    {
        for _ in 0..SHUTDOWN_DRAIN_READS {
            buf.reserve(READ_CHUNK_BYTES);
            // A zero timeout polls the read once: ready data is taken, nothing is awaited.
            match tokio::time::timeout(Duration::ZERO, stream.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    BytesReceived { bytes: n }.emit_to(self.telemetry);
                    self.decode(buf, false);
                }
                _ => return,
            }
        }
    }

    /// Queue `inflight` behind the batches already in flight. The first is given room for
    /// one: an idle connection sends one batch at a time (the default first growth is to
    /// four); [`Connection::shed`] gives it back to the thread's spares once the connection
    /// goes quiet, and the next one takes it from there.
    fn push_inflight(&mut self, inflight: InFlight) {
        if self.inflight.capacity() == 0 {
            self.inflight = spare::inflight();
            self.inflight.reserve_exact(1);
        }
        self.inflight.push_back(inflight);
    }

    /// Hand the decoded batch to the store and queue its replies behind it.
    async fn submit_decoded(&mut self) -> Result<(), End> {
        let Some(mut decoded) = self.decoded.take() else {
            return Ok(());
        };
        let batch = std::mem::take(&mut decoded.batch);
        let replies = std::mem::take(&mut decoded.replies);
        spare::give_decoded(decoded);
        if batch.is_empty() {
            if !replies.is_empty() {
                self.push_inflight(InFlight {
                    commit: None,
                    done: None,
                    replies,
                    live: None,
                });
            }
            return Ok(());
        }
        // Summarized now: the store takes the batch, the live view shows it once committed.
        let live = self.live.summarize(&batch);
        match self.store.submit(batch).await {
            Ok(commit) => {
                self.push_inflight(InFlight {
                    commit: Some(commit),
                    done: None,
                    replies,
                    live,
                });
                Ok(())
            }
            Err(err) => {
                StoreUnavailable { error: &err }.emit_to(self.telemetry);
                Err(End::StoreFailed)
            }
        }
    }

    /// Write the replies of every committed batch at the head of the queue.
    async fn write_ready<S>(&mut self, stream: &mut S) -> Result<(), End>
    where
        S: AsyncWrite + Unpin,
    {
        let mut store_failed = false;
        while let Some(head) = self.inflight.front_mut() {
            if !head.poll_ready() {
                break;
            }
            let Some(mut head) = self.inflight.pop_front() else {
                break;
            };
            match head.done {
                None => self.unreported.attribute(&mut head.replies, &[]),
                Some(Ok(mut committed)) => {
                    let repeats = std::mem::take(&mut committed.repeats);
                    for conflict in repeats.iter().filter_map(|r| r.conflict.as_deref()) {
                        ReadingConflict {
                            peer: self.peer,
                            conflict,
                        }
                        .emit_to(self.telemetry);
                    }
                    self.unreported.attribute(&mut head.replies, &repeats);
                    self.last_commit = Some(LastCommit::of(&committed));
                    self.live.committed(head.live, &repeats);
                }
                Some(Err(err)) => {
                    let readings = head
                        .replies
                        .iter()
                        .map(|reply| match reply {
                            PendingReply::Ack { readings, .. } => *readings,
                            PendingReply::LegacyPong { received } => u64::from(received.is_some()),
                            _ => 0,
                        })
                        .sum();
                    AcksWithheld {
                        error: &*err,
                        readings,
                    }
                    .emit_to(self.telemetry);
                    store_failed = true;
                    // Their ack is refused: what it would have reported goes with it.
                    self.unreported = Unreported::default();
                    let reason = format!("store failed: {err}");
                    for reply in head.replies {
                        match reply {
                            PendingReply::Ack { line, .. } => self.encode(PendingReply::Error {
                                line,
                                reason: reason.clone(),
                            }),
                            // A legacy peer has no error reply: it sees the loss.
                            PendingReply::LegacyPong { .. } => {}
                            other => self.encode(other),
                        }
                    }
                    // Readings of this batch after its last `sync` are lost too: the next
                    // ack refuses them (erring on the safe side: a refused reading that was
                    // stored after all is resent and deduplicated).
                    self.rare().unacked_failure = Some(reason);
                    continue;
                }
            }
            for reply in head.replies.drain(..) {
                let failure = self
                    .rare
                    .as_mut()
                    .and_then(|rare| rare.unacked_failure.take());
                match (reply, failure) {
                    (PendingReply::Ack { line, .. }, Some(reason)) => {
                        self.encode(PendingReply::Error { line, reason });
                    }
                    (reply, failure) => {
                        if let Some(failure) = failure {
                            self.rare().unacked_failure = Some(failure);
                        }
                        self.encode(reply);
                    }
                }
            }
            spare::give_replies(head.replies);
        }
        // Committed is stored: the live view takes it now, before the ack goes out, so a
        // peer that reads its ack then asks `/api/sensors` sees its readings.
        // Only an ack (or a pong acking a reading) ends an ack latency; a bare pong or an
        // error does not.
        let acked = self
            .out
            .as_ref()
            .is_some_and(|out| !out.ack_receipts.is_empty());
        self.live.flush(self.mode(), acked);
        if let Some(out) = self.out.take() {
            match write_all_timed(stream, &out.bytes, self.limits.write_timeout).await {
                Ok(Ok(())) => {
                    RepliesWritten {
                        bytes: out.bytes.len(),
                        acks: out.acks,
                        pongs: out.pongs,
                        errors: out.errors,
                        readings_acked: out.readings_acked,
                        ack_receipts: &out.ack_receipts,
                        written_at: Instant::now(),
                    }
                    .emit_to(self.telemetry);
                    // Written: it goes back to this thread's spares (a burst's large
                    // buffers are freed), so a connection holds none between replies.
                    spare::give_out(out);
                }
                Ok(Err(err)) => {
                    tracing::debug!(cause = %err, "write failed");
                    return Err(End::WriteError);
                }
                Err(_) => {
                    tracing::warn!(
                        write_timeout = ?self.limits.write_timeout,
                        "peer does not read its replies; closing"
                    );
                    return Err(End::WriteStalled);
                }
            }
        }
        if store_failed && matches!(self.decoder, Decoder::Legacy(_)) {
            return Err(End::StoreFailed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;
    use crate::events::testing::sample;
    use crate::protocol::legacy::PONG;
    use crate::store::testing::{gate, TestStore};
    use crate::store::writer::{self, WriterConfig};
    use crate::store::{Drive, Query};

    fn limits(idle: Duration) -> Limits {
        Limits {
            first_line_timeout: idle,
            idle_timeout: idle,
            write_timeout: Duration::from_secs(5),
            max_line_bytes: 1024,
            max_inflight_batches: 4,
            timestamps: crate::protocol::TimestampWindow::default(),
            legacy_ping_quiet: crate::protocol::legacy::LEGACY_PING_QUIET,
            tls: None,
            quotas: super::super::quota::Quotas::new(Default::default()),
            auth: None,
            allow_legacy: Vec::new(),
            tcp_info_interval: Duration::ZERO,
        }
    }

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 7], 5000))
    }

    /// A connection served over a duplex stream, its store's writes held at a gate.
    struct Gated {
        /// One message per write that reached the gate.
        entered: std::sync::mpsc::Receiver<()>,
        /// Releases one write per message (all of them once dropped).
        gate_tx: std::sync::mpsc::Sender<()>,
        writer: writer::StoreWriter,
        task: tokio::task::JoinHandle<()>,
        write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
        lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    }

    fn serve_gated(store: &TestStore) -> Gated {
        serve_gated_live(store, None)
    }

    /// [`serve_gated`], feeding the live view `live`.
    fn serve_gated_live(store: &TestStore, live: Option<Arc<Registry>>) -> Gated {
        let (gate, entered, gate_tx) = gate();
        let (handle, writer) = writer::spawn(
            Drive::GroupCommit(Box::new(store.gated(gate))),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(64 * 1024);
        let limits = limits(Duration::from_secs(60));
        let task = tokio::spawn(async move {
            let (shutdown, telemetry) = (CancellationToken::new(), events::telemetry());
            serve_counted(server, peer(), &limits, handle, shutdown, telemetry, live).await
        });
        let (read, write) = tokio::io::split(client);
        Gated {
            entered,
            gate_tx,
            writer,
            task,
            write,
            lines: BufReader::new(read).lines(),
        }
    }

    /// A `sync` that arrives in a later read than its readings, after their batch failed,
    /// gets an error, not an ack for readings that were never stored; the next sync after a
    /// good commit is acked again.
    #[tokio::test]
    async fn sync_after_a_failed_batch_in_a_later_read_is_refused() {
        let store = TestStore::default();
        store.set_failing(true);
        let Gated {
            entered,
            gate_tx,
            writer,
            task,
            mut write,
            mut lines,
        } = serve_gated(&store);
        write.write_all(b"m v=1i 1\n").await.unwrap();
        // The batch reaches the store (and fails) before the sync is even sent.
        tokio::task::spawn_blocking(move || entered.recv().expect("batch written"))
            .await
            .unwrap();
        gate_tx.send(()).unwrap();
        write.write_all(b"sync a\n").await.unwrap();
        let reply = lines.next_line().await.unwrap().unwrap();
        assert!(
            reply.starts_with("error ") && reply.contains("store failed"),
            "{reply}"
        );

        store.set_failing(false);
        drop(gate_tx); // let every later write through
        write.write_all(b"m v=2i 2\nsync b\n").await.unwrap();
        let reply = lines.next_line().await.unwrap().unwrap();
        assert!(reply.starts_with("ack b "), "{reply}");
        let stored = store.reader().query(&Query::default()).await.unwrap();
        assert_eq!(stored.len(), 1, "only the second reading was stored");

        drop(write);
        drop(lines);
        task.await.unwrap();
        writer.finish().unwrap();
    }

    /// The live view shows a reading only once it is committed, and the sensor turns
    /// disconnected when its connection closes.
    #[tokio::test]
    async fn live_view_sees_committed_readings_only() {
        let store = TestStore::default();
        let registry = Arc::new(Registry::new(&crate::live::LiveConfig::default()));
        let Gated {
            entered,
            gate_tx,
            writer,
            task,
            mut write,
            mut lines,
        } = serve_gated_live(&store, Some(registry.clone()));
        write
            .write_all(b"w,sensor=k t=1.5 1\nsync a\n")
            .await
            .unwrap();
        tokio::task::spawn_blocking(move || entered.recv().expect("batch at the gate"))
            .await
            .unwrap();
        assert!(registry.sensor_json("k").is_none(), "not committed yet");
        gate_tx.send(()).unwrap();
        let ack = lines.next_line().await.unwrap().unwrap();
        assert!(ack.starts_with("ack a readings=1"), "{ack}");
        let sensor = |registry: &Registry| -> serde_json::Value {
            serde_json::from_str(&registry.sensor_json("k").expect("tracked")).unwrap()
        };
        let live = sensor(&registry);
        assert_eq!(live["state"], "connected");
        assert_eq!(live["readings"], 1);
        assert_eq!(live["peer"], peer().to_string());
        assert_eq!(live["values"]["w"]["t"], 1.5);
        assert!(live["ack_latency_ms"]["p50"].is_number(), "{live}");

        drop(write);
        drop(lines);
        task.await.unwrap();
        assert_eq!(sensor(&registry)["state"], "disconnected");
        drop(gate_tx);
        writer.finish().unwrap();
    }

    /// Readings the store already held are no new readings for the live view: a replay
    /// and a conflicting value leave the sensor's count where it was.
    #[tokio::test]
    async fn live_view_does_not_count_repeats() {
        let store = TestStore::default();
        let registry = Arc::new(Registry::new(&crate::live::LiveConfig::default()));
        let Gated {
            gate_tx,
            writer,
            task,
            mut write,
            mut lines,
            ..
        } = serve_gated_live(&store, Some(registry.clone()));
        let sensor = |registry: &Registry| -> serde_json::Value {
            serde_json::from_str(&registry.sensor_json("k").expect("tracked")).unwrap()
        };
        write
            .write_all(b"w,sensor=k t=1.5 1\nsync a\n")
            .await
            .unwrap();
        gate_tx.send(()).unwrap();
        let ack = lines.next_line().await.unwrap().unwrap();
        assert!(ack.starts_with("ack a readings=1 rejected=0 "), "{ack}");
        write
            .write_all(b"w,sensor=k t=1.5 1\nw,sensor=k t=9 1\nw,sensor=k t=2 2\nsync b\n")
            .await
            .unwrap();
        gate_tx.send(()).unwrap();
        let ack = lines.next_line().await.unwrap().unwrap();
        assert!(
            ack.starts_with("ack b readings=3 rejected=0 duplicates=1 conflicts=1 "),
            "{ack}"
        );
        assert_eq!(sensor(&registry)["readings"], 2);

        drop(write);
        drop(lines);
        task.await.unwrap();
        drop(gate_tx);
        writer.finish().unwrap();
    }

    /// A committed batch answered by a `pong` only (no ack) records no ack latency.
    #[tokio::test]
    async fn no_ack_no_ack_latency() {
        let store = TestStore::default();
        let registry = Arc::new(Registry::new(&crate::live::LiveConfig::default()));
        let Gated {
            gate_tx,
            writer,
            task,
            mut write,
            mut lines,
            ..
        } = serve_gated_live(&store, Some(registry.clone()));
        drop(gate_tx);
        write
            .write_all(b"w,sensor=k t=1 1\nping p\n")
            .await
            .unwrap();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "pong p");
        let json: serde_json::Value =
            serde_json::from_str(&registry.sensor_json("k").expect("committed")).unwrap();
        assert!(json["ack_latency_ms"].is_null(), "{json}");
        write
            .write_all(b"w,sensor=k t=2 2\nsync a\n")
            .await
            .unwrap();
        let ack = lines.next_line().await.unwrap().unwrap();
        assert!(ack.starts_with("ack a readings=2"), "{ack}");
        let json: serde_json::Value =
            serde_json::from_str(&registry.sensor_json("k").expect("committed")).unwrap();
        assert!(json["ack_latency_ms"]["p50"].is_number(), "{json}");

        drop(write);
        drop(lines);
        task.await.unwrap();
        writer.finish().unwrap();
    }

    /// A batch whose commit failed never reaches the live view (nor its subscribers); the
    /// next committed one does.
    #[tokio::test]
    async fn a_failed_commit_never_reaches_the_live_view() {
        let store = TestStore::default();
        store.set_failing(true);
        let registry = Arc::new(Registry::new(&crate::live::LiveConfig::default()));
        let mut events = registry.subscribe(None);
        let Gated {
            entered,
            gate_tx,
            writer,
            task,
            mut write,
            mut lines,
        } = serve_gated_live(&store, Some(registry.clone()));
        write
            .write_all(b"w,sensor=k t=1 1\nsync a\n")
            .await
            .unwrap();
        tokio::task::spawn_blocking(move || entered.recv().expect("batch at the gate"))
            .await
            .unwrap();
        gate_tx.send(()).unwrap();
        let reply = lines.next_line().await.unwrap().unwrap();
        assert!(reply.starts_with("error "), "{reply}");
        assert!(registry.sensor_json("k").is_none(), "never stored: {reply}");

        store.set_failing(false);
        drop(gate_tx);
        // The next ack after a failure is refused on the safe side; the one after is not.
        write
            .write_all(b"w,sensor=j t=2 2\nsync b\n")
            .await
            .unwrap();
        let reply = lines.next_line().await.unwrap().unwrap();
        assert!(reply.starts_with("error 4 "), "{reply}");
        write
            .write_all(b"w,sensor=j t=3 3\nsync c\n")
            .await
            .unwrap();
        let reply = lines.next_line().await.unwrap().unwrap();
        assert!(reply.starts_with("ack c "), "{reply}");
        assert!(registry.sensor_json("j").is_some());
        assert!(registry.sensor_json("k").is_none());
        // The subscriber's first event is j's: nothing of k went out.
        match events.next().await {
            crate::live::Next::Event(crate::live::LiveEvent::Sensor(event)) => {
                assert_eq!(event.sensor(), "j");
            }
            other => panic!("{other:?}"),
        }

        drop(write);
        drop(lines);
        task.await.unwrap();
        writer.finish().unwrap();
    }

    /// The connection loop runs over any stream (here an in-memory duplex), and an `ack`
    /// is written only after the store has committed the readings it covers.
    #[tokio::test]
    async fn ack_waits_for_the_commit() {
        let store = TestStore::default();
        let Gated {
            gate_tx,
            writer,
            task,
            mut write,
            mut lines,
            ..
        } = serve_gated(&store);
        write.write_all(b"m v=1i 1\nsync a\n").await.unwrap();

        let early = tokio::time::timeout(Duration::from_millis(200), lines.next_line()).await;
        assert!(early.is_err(), "ack before commit: {early:?}");
        assert!(store.log().txns.is_empty());

        gate_tx.send(()).unwrap();
        let ack = lines.next_line().await.unwrap().unwrap();
        assert!(
            ack.starts_with("ack a readings=1 rejected=0 store_us="),
            "{ack}"
        );
        let stored = store.reader().query(&Query::default()).await.unwrap();
        assert_eq!(stored.len(), 1);
        // No `sensor` tag: the peer's address names the sensor.
        assert_eq!(stored[0].sensor, "127.0.0.7");

        drop(write);
        drop(lines);
        task.await.unwrap();
        drop(gate_tx);
        writer.finish().unwrap();
    }

    /// One connection's traffic reaches the metrics through its events: counted once, with
    /// the right labels, and one ack-latency sample per ack.
    #[tokio::test]
    async fn connection_events_reach_the_metrics() {
        let recorder = crate::events::prometheus_builder().build_recorder();
        let telemetry = metrics::with_local_recorder(&recorder, Telemetry::register);
        let (handle, writer) = writer::spawn(
            crate::store::Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(64 * 1024);
        let limits = limits(Duration::from_secs(60));
        let serving = serve_counted(
            server,
            peer(),
            &limits,
            handle,
            CancellationToken::new(),
            &telemetry,
            None,
        );
        let sent: &[u8] = b"ping\nm v=1i 1\nm v=2i 2\nbogus\nsync a\n";
        let talking = async move {
            let (read, mut write) = tokio::io::split(client);
            let mut lines = BufReader::new(read).lines();
            write.write_all(sent).await.unwrap();
            let mut replies = Vec::new();
            for _ in 0..3 {
                replies.push(lines.next_line().await.unwrap().unwrap());
            }
            // End of input, with our read half still open to see the server close.
            write.shutdown().await.unwrap();
            assert_eq!(lines.next_line().await.unwrap(), None);
            replies
        };
        let ((), replies) = tokio::join!(serving, talking);
        assert_eq!(replies[0], "pong");
        assert!(replies[1].starts_with("error 4 "), "{replies:?}");
        assert!(
            replies[2].starts_with("ack a readings=2 rejected=1"),
            "{replies:?}"
        );
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();

        let text = recorder.handle().render();
        let expect = [
            ("sensorlink_readings_accepted_total", 2.0),
            (
                "sensorlink_lines_rejected_total{reason=\"unknown_command\"}",
                1.0,
            ),
            ("sensorlink_readings_acked_total", 2.0),
            ("sensorlink_replies_total{kind=\"ack\"}", 1.0),
            ("sensorlink_replies_total{kind=\"pong\"}", 1.0),
            ("sensorlink_replies_total{kind=\"error\"}", 1.0),
            ("sensorlink_ack_latency_seconds_count", 1.0),
            ("sensorlink_connections_mode_total{mode=\"line\"}", 1.0),
            ("sensorlink_connections_closed_total{reason=\"eof\"}", 1.0),
            ("sensorlink_received_bytes_total", sent.len() as f64),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
        }
        let sent_bytes = sample(&text, "sensorlink_sent_bytes_total").unwrap();
        let replied: usize = replies.iter().map(|line| line.len() + 1).sum();
        assert_eq!(sent_bytes, replied as f64);
    }

    /// Each ack reports the duplicates and conflicts among the readings it covers, and
    /// only those: repeats after a `sync` go to the next ack, even in a later batch.
    #[tokio::test]
    async fn acks_report_their_own_duplicates_and_conflicts() {
        let recorder = crate::events::prometheus_builder().build_recorder();
        let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
            &recorder,
            Telemetry::register,
        )));
        let store = crate::store::memory::MemoryStore::default();
        let reader = store.reader();
        let (handle, writer) = writer::spawn_counted(
            crate::store::Drive::Inline(Box::new(store)),
            WriterConfig::default(),
            Some(telemetry),
        );
        let (client, server) = tokio::io::duplex(64 * 1024);
        let limits = limits(Duration::from_secs(60));
        let serving = serve_counted(
            server,
            peer(),
            &limits,
            handle,
            CancellationToken::new(),
            telemetry,
            None,
        );
        let talking = async move {
            let (read, mut write) = tokio::io::split(client);
            let mut lines = BufReader::new(read).lines();
            let first: &[u8] = b"k,sensor=s v=1i 5\nsync a\n\
                k,sensor=s v=1i 5\nk,sensor=s v=2i 5\nk,sensor=s v=3i 6\nsync b\n\
                k,sensor=s v=9i 6\n";
            write.write_all(first).await.unwrap();
            let mut replies = Vec::new();
            for _ in 0..2 {
                replies.push(lines.next_line().await.unwrap().unwrap());
            }
            // Sent after the first acks, so in a later batch than the conflict it reports.
            write
                .write_all(b"k,sensor=s v=7i 7\nsync c\n")
                .await
                .unwrap();
            replies.push(lines.next_line().await.unwrap().unwrap());
            write.shutdown().await.unwrap();
            assert_eq!(lines.next_line().await.unwrap(), None);
            replies
        };
        let ((), replies) = tokio::join!(serving, talking);
        let keys = |reply: &str| -> String {
            // Without the timings, which vary.
            reply
                .split(' ')
                .filter(|word| !word.starts_with("store_us=") && !word.starts_with("commit_us="))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let replies: Vec<String> = replies.iter().map(|r| keys(r)).collect();
        assert_eq!(
            replies,
            vec![
                "ack a readings=1 rejected=0",
                "ack b readings=3 rejected=0 duplicates=1 conflicts=1",
                "ack c readings=2 rejected=0 conflicts=1",
            ]
        );
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
        // The first value of each (series, timestamp) is kept.
        let rows = reader.query(&Query::default()).await.unwrap();
        let values: Vec<_> = rows.iter().map(|r| r.fields[0].1.to_string()).collect();
        assert_eq!(values, vec!["1", "3", "7"]);
        let text = recorder.handle().render();
        for (outcome, n) in [("inserted", 3.0), ("duplicate", 1.0), ("conflict", 2.0)] {
            let series = format!("sensorlink_readings_committed_total{{outcome=\"{outcome}\"}}");
            assert_eq!(sample(&text, &series), Some(n), "{series}\n{text}");
        }
    }

    /// A peer that connects and closes without a byte spoke no protocol: it is counted as
    /// closed, not as a line-mode peer.
    #[tokio::test]
    async fn silent_peer_is_closed_without_a_mode() {
        let recorder = crate::events::prometheus_builder().build_recorder();
        let telemetry = metrics::with_local_recorder(&recorder, Telemetry::register);
        let (handle, writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        let limits = limits(Duration::from_secs(60));
        serve_counted(
            server,
            peer(),
            &limits,
            handle,
            CancellationToken::new(),
            &telemetry,
            None,
        )
        .await;
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
        let text = recorder.handle().render();
        for (series, value) in [
            ("sensorlink_connections_mode_total{mode=\"line\"}", 0.0),
            ("sensorlink_connections_mode_total{mode=\"legacy\"}", 0.0),
            ("sensorlink_connections_closed_total{reason=\"eof\"}", 1.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series}\n{text}");
        }
    }

    /// Idle timeout on a paused clock: nothing is waited for in real time.
    #[tokio::test(start_paused = true)]
    async fn idle_connection_is_closed_after_the_timeout() {
        let (handle, writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let (mut client, server) = tokio::io::duplex(1024);
        let limits = limits(Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(async move {
            serve(server, peer(), &limits, handle, CancellationToken::new()).await
        });
        let mut buf = [0u8; 8];
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(n, 0, "the server closes the idle connection");
        assert!(started.elapsed() >= Duration::from_secs(30));
        task.await.unwrap();
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
    }

    /// Serve a duplex peer with `first_line` / `idle` timeouts on the paused clock; its
    /// events go to a local recorder, rendered when the connection ends.
    fn serve_slow(
        first_line: Duration,
        idle: Duration,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<String>,
        writer::StoreWriter,
    ) {
        let (handle, writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(1024);
        let limits = Limits {
            first_line_timeout: first_line,
            ..limits(idle)
        };
        let task = tokio::spawn(async move {
            let recorder = crate::events::prometheus_builder().build_recorder();
            let telemetry = metrics::with_local_recorder(&recorder, Telemetry::register);
            let shutdown = CancellationToken::new();
            serve_counted(server, peer(), &limits, handle, shutdown, &telemetry, None).await;
            recorder.handle().render()
        });
        (client, task, writer)
    }

    /// Write `bytes` one at a time, a second apart, for 100 s or until the peer is gone;
    /// bounded so that a server that never cuts it fails the test instead of hanging it.
    async fn drip(mut write: tokio::io::WriteHalf<tokio::io::DuplexStream>, bytes: &[u8]) {
        for byte in bytes.iter().cycle().take(100) {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Held open (not closed) so the server sees silence, not EOF.
        std::future::pending::<()>().await;
    }

    /// Slowloris: a byte a second never completes a line, and is cut at the first-line
    /// deadline (not the much longer idle timeout). Paused clock: nothing waits for real.
    #[tokio::test(start_paused = true)]
    async fn dripping_peer_is_cut_at_the_first_line_deadline() {
        let (client, task, writer) = serve_slow(Duration::from_secs(2), Duration::from_secs(60));
        let (mut read, write) = tokio::io::split(client);
        let started = tokio::time::Instant::now();
        let dripper = tokio::spawn(drip(write, b"weather,sensor=a v=1i"));
        let mut buf = [0u8; 8];
        assert_eq!(
            read.read(&mut buf).await.unwrap(),
            0,
            "closed by the server"
        );
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(2), "{waited:?}");
        assert!(
            waited < Duration::from_secs(60),
            "not the idle timeout: {waited:?}"
        );
        let text = task.await.unwrap();
        let series = "sensorlink_connections_closed_total{reason=\"first_line_timeout\"}";
        assert_eq!(sample(&text, series), Some(1.0), "{text}");
        dripper.abort();
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
    }

    /// After a first line, bytes alone do not restart the idle timeout; complete lines do.
    #[tokio::test(start_paused = true)]
    async fn only_complete_lines_restart_the_idle_timeout() {
        let (client, task, writer) = serve_slow(Duration::from_secs(10), Duration::from_secs(30));
        let (read, mut write) = tokio::io::split(client);
        let mut lines = BufReader::new(read).lines();
        // Complete lines 20 s apart keep it open past one idle timeout.
        for _ in 0..3 {
            write.write_all(b"ping\n").await.unwrap();
            assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("pong"));
            tokio::time::sleep(Duration::from_secs(20)).await;
        }
        write.write_all(b"ping\n").await.unwrap();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("pong"));
        let last_line = tokio::time::Instant::now();
        let dripper = tokio::spawn(drip(write, b"weather,sensor=a v=1i"));
        assert_eq!(
            lines.next_line().await.unwrap(),
            None,
            "closed by the server"
        );
        let waited = last_line.elapsed();
        assert!(waited >= Duration::from_secs(30), "{waited:?}");
        assert!(
            waited < Duration::from_secs(40),
            "bytes restarted it: {waited:?}"
        );
        let text = task.await.unwrap();
        let series = "sensorlink_connections_closed_total{reason=\"idle_timeout\"}";
        assert_eq!(sample(&text, series), Some(1.0), "{text}");
        dripper.abort();
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
    }

    /// The quota reads tokio's clock only (its buckets are made on it): under a paused
    /// clock, a second of virtual time refills a connection's rate bucket.
    #[tokio::test(start_paused = true)]
    async fn the_rate_bucket_refills_on_the_paused_clock() {
        let (handle, writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(4096);
        let limits = Limits {
            quotas: super::super::quota::Quotas::new(super::super::quota::QuotaLimits {
                rate_per_connection: 2,
                ..Default::default()
            }),
            ..limits(Duration::from_secs(60))
        };
        let task = tokio::spawn(async move {
            let (shutdown, telemetry) = (CancellationToken::new(), events::telemetry());
            serve_counted(server, peer(), &limits, handle, shutdown, telemetry, None).await
        });
        let (read, mut write) = tokio::io::split(client);
        let mut lines = BufReader::new(read).lines();
        let mut next = async || lines.next_line().await.unwrap().unwrap_or_default();
        write.write_all(b"ping\n").await.unwrap();
        assert_eq!(next().await, "pong");
        write
            .write_all(b"m,sensor=a v=1i\nm,sensor=a v=2i\nm,sensor=a v=3i\nsync 1\n")
            .await
            .unwrap();
        assert!(next().await.starts_with("error 4 rate limit exceeded"));
        assert!(next().await.starts_with("ack 1 readings=2 rejected=1"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        write
            .write_all(b"m,sensor=a v=4i\nm,sensor=a v=5i\nsync 2\n")
            .await
            .unwrap();
        let ack = next().await;
        assert!(ack.starts_with("ack 2 readings=2 rejected=0"), "{ack}");
        drop(write);
        task.await.unwrap();
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
    }

    /// Error replies are capped per second per connection; the rest are counted, and the
    /// ack still counts every refused line. A second later, errors are sent again.
    #[tokio::test(start_paused = true)]
    async fn error_replies_beyond_the_per_second_cap_are_counted_not_sent() {
        let (handle, writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(1 << 20);
        let limits = limits(Duration::from_secs(60));
        // Events to a local recorder, rendered when the connection ends.
        let task = tokio::spawn(async move {
            let shutdown = CancellationToken::new();
            let recorder = crate::events::prometheus_builder().build_recorder();
            let telemetry = metrics::with_local_recorder(&recorder, Telemetry::register);
            serve_counted(server, peer(), &limits, handle, shutdown, &telemetry, None).await;
            recorder.handle().render()
        });
        let (read, mut write) = tokio::io::split(client);
        let mut lines = BufReader::new(read).lines();
        let mut next = async || lines.next_line().await.unwrap().unwrap_or_default();
        write.write_all(b"ping\n").await.unwrap();
        assert_eq!(next().await, "pong");
        let flood = "x\n".repeat(250) + "sync 1\n";
        write.write_all(flood.as_bytes()).await.unwrap();
        for n in 0..MAX_ERROR_REPLIES_PER_S {
            let line = next().await;
            assert!(line.starts_with(&format!("error {} ", n + 2)), "{line}");
        }
        let ack = next().await;
        assert!(ack.starts_with("ack 1 readings=0 rejected=250"), "{ack}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        write.write_all(b"x\nsync 2\n").await.unwrap();
        assert!(next().await.starts_with("error 253 "));
        assert!(next().await.starts_with("ack 2 readings=0 rejected=1"));
        drop(write);
        let text = task.await.unwrap();
        let series = "sensorlink_replies_suppressed_total";
        assert_eq!(sample(&text, series), Some(150.0), "{text}");
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
    }

    /// Rejected lines are answered but are not progress: a peer sending a garbage line
    /// now and then (2 bytes) cannot hold its connection past the idle timeout.
    #[tokio::test(start_paused = true)]
    async fn rejected_lines_do_not_restart_the_idle_timeout() {
        let (client, task, writer) = serve_slow(Duration::from_secs(10), Duration::from_secs(30));
        let (read, mut write) = tokio::io::split(client);
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"ping\n").await.unwrap();
        assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("pong"));
        let last_valid = tokio::time::Instant::now();
        let garbage = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if write.write_all(b"x\n").await.is_err() {
                    return;
                }
            }
            std::future::pending::<()>().await;
        });
        let mut errors = 0;
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(line.starts_with("error "), "{line}");
            errors += 1;
        }
        let waited = last_valid.elapsed();
        assert!(errors >= 1, "the garbage line was answered");
        assert!(waited >= Duration::from_secs(30), "{waited:?}");
        assert!(
            waited < Duration::from_secs(40),
            "rejected lines restarted it: {waited:?}"
        );
        let text = task.await.unwrap();
        let series = "sensorlink_connections_closed_total{reason=\"idle_timeout\"}";
        assert_eq!(sample(&text, series), Some(1.0), "{text}");
        garbage.abort();
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
    }

    /// A legacy peer over a duplex, on the paused clock, with the default quiet period for
    /// a bare `ping`; its readings go to `store` (unbuffered writes: nothing is held).
    fn serve_legacy(
        store: &TestStore,
        shutdown: CancellationToken,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<()>,
        writer::StoreWriter,
    ) {
        let (handle, writer) = writer::spawn(
            Drive::GroupCommit(Box::new(store.clone())),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(1024);
        let limits = limits(Duration::from_secs(60));
        assert_eq!(limits.legacy_ping_quiet, Duration::from_millis(100));
        let task = tokio::spawn(async move {
            serve(server, peer(), &limits, handle, shutdown).await;
        });
        (client, task, writer)
    }

    /// Read until the server closes; everything it wrote.
    async fn read_all(client: &mut tokio::io::DuplexStream) -> Vec<u8> {
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.expect("duplex read");
        all
    }

    async fn finish(task: tokio::task::JoinHandle<()>, writer: writer::StoreWriter) {
        task.await.expect("connection task");
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .expect("writer task")
            .expect("store flushed");
    }

    /// `ping`, then the rest of its reading 50 ms later (within the quiet period): one
    /// reading stored, one `pong`. See: issue 10 ("Legacy framing").
    #[tokio::test(start_paused = true)]
    async fn held_ping_followed_by_its_reading_within_the_quiet_period_is_one_reading() {
        let store = TestStore::default();
        let (mut client, task, writer) = serve_legacy(&store, CancellationToken::new());
        client.write_all(b"ping").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client
            .write_all(b" / ('2026-11-24 11:46:25.123456', 102)")
            .await
            .unwrap();
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, PONG);
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut client).await, b"", "one pong only");
        finish(task, writer).await;
        let stored = store.reader().query(&Query::default()).await.unwrap();
        assert_eq!(stored.len(), 1, "{stored:?}");
    }

    /// A bare `ping` that nothing follows is answered once the quiet period has passed:
    /// not before, and not much after.
    #[tokio::test(start_paused = true)]
    async fn held_ping_is_answered_after_the_quiet_period() {
        let store = TestStore::default();
        let (mut client, task, writer) = serve_legacy(&store, CancellationToken::new());
        client.write_all(b"ping").await.unwrap();
        let sent = tokio::time::Instant::now();
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.unwrap();
        let waited = sent.elapsed();
        assert_eq!(&pong, PONG);
        assert!(waited >= Duration::from_millis(100), "{waited:?}");
        assert!(waited < Duration::from_millis(200), "{waited:?}");
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut client).await, b"", "one pong only");
        finish(task, writer).await;
        assert!(store.log().txns.is_empty(), "a ping is no reading");
    }

    /// A bare `ping` then end of input: answered once (at EOF, not twice).
    #[tokio::test(start_paused = true)]
    async fn held_ping_then_eof_is_answered_once() {
        let store = TestStore::default();
        let (mut client, task, writer) = serve_legacy(&store, CancellationToken::new());
        client.write_all(b"ping").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_all(&mut client).await, PONG);
        finish(task, writer).await;
    }

    /// A bare `ping` still held when the server shuts down is not answered: it may be the
    /// start of a reading whose rest never came, and a `pong` would tell the seed client
    /// it was stored (PROTOCOL.md).
    #[tokio::test(start_paused = true)]
    async fn held_ping_at_shutdown_is_not_answered() {
        let store = TestStore::default();
        let shutdown = CancellationToken::new();
        let (mut client, task, writer) = serve_legacy(&store, shutdown.clone());
        client.write_all(b"ping").await.unwrap();
        // Well inside the quiet period: the server has read and holds it.
        tokio::time::sleep(Duration::from_millis(10)).await;
        shutdown.cancel();
        assert_eq!(read_all(&mut client).await, b"", "closed without a pong");
        finish(task, writer).await;
    }

    /// Shutdown: what was received is stored and answered, then the connection closes.
    #[tokio::test]
    async fn shutdown_finishes_received_lines() {
        let (handle, writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let (client, server) = tokio::io::duplex(64 * 1024);
        let shutdown = CancellationToken::new();
        let limits = limits(Duration::from_secs(60));
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { serve(server, peer(), &limits, handle, shutdown).await }
        });
        let (read, mut write) = tokio::io::split(client);
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"ping\n").await.unwrap();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), "pong");
        write
            .write_all(b"m v=1i 1\nm v=2i 2\nsync z\n")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        shutdown.cancel();
        let ack = lines.next_line().await.unwrap().unwrap();
        assert!(ack.starts_with("ack z readings=2"), "{ack}");
        assert_eq!(
            lines.next_line().await.unwrap(),
            None,
            "closed after the last reply"
        );
        task.await.unwrap();
        tokio::task::spawn_blocking(move || writer.finish())
            .await
            .unwrap()
            .unwrap();
    }

    /// 1,056 bytes in a debug build when this was written (1,360 before idle15 took the
    /// reply buffers and the decoded batch out of the connection, boxed what it rarely
    /// needs, slimmed the quota, the decoder and the sampler, and dropped locals the loop
    /// can recompute). In a release build the listener's task is then 1,280 bytes with
    /// tokio's task header and trailer (a uprobe on mimalloc's allocation): exactly
    /// mimalloc's 1,280-byte class; a byte more and every connection takes 1,536.
    /// `linger`'s drain buffer inline would add 4 KiB, a TLS session about 1 KiB.
    const FUTURE_BUDGET_BYTES: usize = 1056;

    /// Each connection's task holds its future for its whole life: at 10,000 idle
    /// connections its size is server memory per connection (issue 13: ≤ 2 KiB RSS each).
    /// A TLS path or a rarely used buffer inline would size every plain connection's
    /// future to it.
    #[tokio::test]
    async fn a_plain_tcp_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback port 0");
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let _client = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect to our own listener");
        let (server, _) = listener.accept().await.expect("accept our own connection");
        let (handle, _writer) = writer::spawn(
            Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let limits = limits(Duration::from_secs(60));
        let (shutdown, telemetry) = (CancellationToken::new(), events::telemetry());
        let serving = serve_accepted(
            server,
            peer(),
            Accepted::now(),
            Arc::new(limits.clone()),
            handle,
            shutdown,
            telemetry,
            None,
        );
        let size = std::mem::size_of_val(&serving);
        assert!(
            size <= FUTURE_BUDGET_BYTES,
            "a plain connection's future is {size} bytes, over {FUTURE_BUDGET_BYTES}"
        );
    }
}
