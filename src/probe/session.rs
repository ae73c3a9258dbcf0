//! One probe run: a sender thread on an isochronous schedule and a receiver (the calling
//! thread) that matches replies by seq, prints a live line each second and, once the
//! sending is over and the stragglers had their `--wait`, asks the server for its final
//! count of the session.
//!
//! Plain threads and a blocking socket, not the async runtime: the sender sleeps to the
//! nanosecond deadline and each timestamp is taken right beside its `send`/`recv`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::args::ProbeConfig;
use super::stats::{Arrival, Sample, ServerCount, Tally};
use super::wire::{self, Kind};

/// How long the receiver blocks at most: the granularity of its live lines and its end.
const POLL: Duration = Duration::from_millis(20);
/// How often a sleeping sender looks whether it was stopped.
const STOP_CHECK: Duration = Duration::from_millis(50);
/// How far ahead of now the schedule starts.
const START_LEAD: Duration = Duration::from_millis(5);
/// Count requests sent at the end (one suffices; more survive a lossy link).
const COUNT_TRIES: u32 = 3;

/// One live line: the second that just ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Live {
    /// Seconds since the start.
    pub second: u64,
    /// Totals so far.
    pub sent: u64,
    pub received: u64,
    /// Median round trip of the replies of this second (ms).
    pub rtt_p50_ms: Option<f64>,
    /// Probes sent long enough ago to have been answered (a wait earlier) that were not, of
    /// those probes (percent).
    pub loss_percent: f64,
}

/// What a run measured, before the summary.
#[derive(Debug)]
pub struct Outcome {
    pub tally: Tally,
    pub sent: u64,
    pub late: u64,
    /// Send errors (e.g. ICMP port unreachable reported on the next send).
    pub send_errors: u64,
    /// The kernel reported the server's port unreachable (nothing listens on UDP there).
    pub unreachable: bool,
    pub session: u64,
    pub duration: Duration,
}

/// What the sender shares with the receiver.
struct Shared {
    /// Monotonic send time of seq `k`, as ns since the start, plus one (0: not sent yet).
    sent_at: Vec<AtomicU64>,
    /// Wall-clock send time of seq `k` as written in the probe: a reply must echo it.
    sent_wall: Vec<AtomicI64>,
    sent: AtomicU64,
    late: AtomicU64,
    send_errors: AtomicU64,
    refused: AtomicBool,
    done: AtomicBool,
    /// Set from outside (Ctrl-C): send no more; the replies still get their wait.
    stop: Arc<AtomicBool>,
}

fn unspecified_for(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

/// Run the probes of `config` as session `session` (random per run), calling `on_live` once a second.
///
/// # Errors
/// The socket cannot be made or connected.
pub fn run(
    config: &ProbeConfig,
    session: u64,
    stop: Arc<AtomicBool>,
    mut on_live: impl FnMut(&Live),
) -> anyhow::Result<Outcome> {
    let socket = UdpSocket::bind(unspecified_for(config.target))
        .map_err(|err| anyhow::anyhow!("binding a UDP socket: {err}"))?;
    // Connected: only the server's datagrams reach us, and ICMP errors are reported.
    socket
        .connect(config.target)
        .map_err(|err| anyhow::anyhow!("UDP to {}: {err}", config.target))?;
    socket
        .set_read_timeout(Some(POLL))
        .map_err(|err| anyhow::anyhow!("setting the UDP read timeout: {err}"))?;
    let sender_socket = socket
        .try_clone()
        .map_err(|err| anyhow::anyhow!("cloning the UDP socket: {err}"))?;
    let count = usize::try_from(config.count).unwrap_or(usize::MAX);
    let shared = Arc::new(Shared {
        sent_at: (0..count).map(|_| AtomicU64::new(0)).collect(),
        sent_wall: (0..count).map(|_| AtomicI64::new(0)).collect(),
        sent: AtomicU64::new(0),
        late: AtomicU64::new(0),
        send_errors: AtomicU64::new(0),
        refused: AtomicBool::new(false),
        done: AtomicBool::new(false),
        stop,
    });
    // A little ahead: the first probes must not be late for the sender thread's start.
    let start = Instant::now() + START_LEAD;
    let sender = {
        let shared = Arc::clone(&shared);
        let config = config.clone();
        std::thread::Builder::new()
            .name("probe-sender".into())
            .spawn(move || send_all(&sender_socket, &config, session, start, &shared))
            .map_err(|err| anyhow::anyhow!("starting the sender thread: {err}"))?
    };
    let mut receiver = Receiver {
        tally: Tally::new(count),
        config,
        shared: &shared,
        session,
        start,
        second_rtts: Vec::new(),
        next_live: start + Duration::from_secs(1),
        second: 0,
        scanned: 0,
        missing: 0,
        count_sent: Vec::new(),
        count_answered: false,
    };
    let mut buf = vec![0u8; 65_535];
    let mut last_send: Option<Instant> = None;
    loop {
        receiver.receive(&socket, &mut buf);
        let now = Instant::now();
        receiver.live(now, &mut on_live);
        if last_send.is_none() && shared.done.load(Ordering::Acquire) {
            last_send = Some(now);
        }
        if let Some(last) = last_send {
            let all_in = receiver.tally.received() >= shared.sent.load(Ordering::Acquire);
            if all_in || now >= last + receiver.wait() {
                break;
            }
        }
    }
    if sender.join().is_err() {
        anyhow::bail!("the probe sender thread panicked");
    }
    receiver.final_count(&socket, &mut buf);
    Ok(Outcome {
        sent: shared.sent.load(Ordering::Acquire),
        late: shared.late.load(Ordering::Acquire),
        send_errors: shared.send_errors.load(Ordering::Acquire),
        unreachable: shared.refused.load(Ordering::Acquire),
        tally: receiver.tally,
        session,
        duration: Instant::now().saturating_duration_since(start),
    })
}

/// The sender: probe k at `start + k × interval`; a late probe still goes, and the next
/// keeps its own time.
fn send_all(
    socket: &UdpSocket,
    config: &ProbeConfig,
    session: u64,
    start: Instant,
    shared: &Shared,
) {
    let mut out = Vec::with_capacity(config.size);
    for (seq, slot) in shared.sent_at.iter().enumerate() {
        let due = start + due_offset(config.interval, seq as u64);
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                shared.done.store(true, Ordering::Release);
                return;
            }
            let now = Instant::now();
            if now >= due {
                if is_late(now - due, config.interval) {
                    shared.late.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            // In slices, so a stop is seen even during a long interval.
            std::thread::sleep((due - now).min(STOP_CHECK));
        }
        let wall_ns = crate::timefmt::now_ns();
        let seq = seq as u64;
        wire::encode_request(
            Kind::Probe,
            session,
            seq,
            wall_ns,
            config.signer.as_ref(),
            config.size,
            &mut out,
        );
        let at_ns = u64::try_from(Instant::now().saturating_duration_since(start).as_nanos())
            .unwrap_or(u64::MAX - 1);
        if let Some(wall) = shared.sent_wall.get(seq as usize) {
            wall.store(wall_ns, Ordering::Relaxed);
        }
        slot.store(at_ns + 1, Ordering::Release);
        if let Err(err) = socket.send(&out) {
            shared.send_errors.fetch_add(1, Ordering::Relaxed);
            if err.kind() == std::io::ErrorKind::ConnectionRefused {
                shared.refused.store(true, Ordering::Relaxed);
            }
        }
        shared.sent.fetch_add(1, Ordering::Release);
    }
    shared.done.store(true, Ordering::Release);
}

/// When probe `seq` is due, after the start: `seq × interval`, never drifting with the
/// sends before it.
fn due_offset(interval: Duration, seq: u64) -> Duration {
    let offset_ns = interval.as_nanos().saturating_mul(u128::from(seq));
    Duration::from_nanos(u64::try_from(offset_ns).unwrap_or(u64::MAX))
}

/// A send `behind` its due time is late once it is more than an interval behind.
fn is_late(behind: Duration, interval: Duration) -> bool {
    behind > interval
}

struct Receiver<'a> {
    tally: Tally,
    config: &'a ProbeConfig,
    shared: &'a Shared,
    session: u64,
    start: Instant,
    /// Round trips of the current second (ns), for its live line.
    second_rtts: Vec<i64>,
    next_live: Instant,
    second: u64,
    /// Seqs below this were counted in `missing` when they were old enough.
    scanned: u64,
    /// Among seqs below `scanned`: not answered.
    missing: u64,
    /// Client send times of the count requests sent: a count reply must echo one.
    count_sent: Vec<i64>,
    /// A count request was answered.
    count_answered: bool,
}

impl Receiver<'_> {
    /// `--wait`, or 3 × the largest round trip so far, at least 1 s.
    fn wait(&self) -> Duration {
        self.config.wait.unwrap_or_else(|| {
            let rtt = Duration::from_nanos(u64::try_from(self.tally.max_rtt_ns()).unwrap_or(0));
            (rtt * 3).max(Duration::from_secs(1))
        })
    }

    /// Take the datagrams that arrive within one poll.
    fn receive(&mut self, socket: &UdpSocket, buf: &mut [u8]) {
        match socket.recv(buf) {
            Ok(len) => {
                let mono = Instant::now();
                let wall_ns = crate::timefmt::now_ns();
                if let Some(datagram) = buf.get(..len) {
                    self.reply(datagram, mono, wall_ns);
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                self.shared.refused.store(true, Ordering::Relaxed);
                // Don't spin on a stream of ICMP errors.
                std::thread::sleep(POLL);
            }
            // Timeouts (WouldBlock / TimedOut) and anything transient: poll again.
            Err(_) => {}
        }
    }

    fn reply(&mut self, datagram: &[u8], mono: Instant, wall_ns: i64) {
        let Ok(reply) = wire::decode_reply(datagram) else {
            return;
        };
        if reply.session != self.session {
            return;
        }
        // A server that sends back in time before it received is broken or lying.
        if reply.server_send_ns < reply.server_receive_ns {
            return;
        }
        let count = ServerCount {
            received: reply.server_received,
            rate_limited: reply.rate_limited.unwrap_or(0),
            sent_ns: reply.server_send_ns,
        };
        if reply.kind == Kind::Count {
            if self.count_sent.contains(&reply.client_send_ns) {
                self.tally.note_final_count(count);
                self.count_answered = true;
            }
            return;
        }
        let Some(index) = usize::try_from(reply.seq).ok() else {
            return;
        };
        let Some(sent_at) = self
            .shared
            .sent_at
            .get(index)
            .map(|at| at.load(Ordering::Acquire))
            .filter(|at| *at > 0)
        else {
            return;
        };
        // Only the time we sent: anything else is not a reply to our probe.
        let sent_wall = self
            .shared
            .sent_wall
            .get(index)
            .map(|w| w.load(Ordering::Relaxed));
        if sent_wall != Some(reply.client_send_ns) {
            return;
        }
        let received_at = i64::try_from(mono.saturating_duration_since(self.start).as_nanos())
            .unwrap_or(i64::MAX);
        let sent_at = i64::try_from(sent_at - 1).unwrap_or(i64::MAX);
        // The server's own time between receive and send is not the link's. Saturating:
        // the server's times are untrusted input.
        let processing = reply.server_send_ns.saturating_sub(reply.server_receive_ns);
        let sample = Sample {
            rtt_ns: received_at
                .saturating_sub(sent_at)
                .saturating_sub(processing)
                .max(0),
            send_delay_ns: reply.server_receive_ns.saturating_sub(reply.client_send_ns),
            receive_delay_ns: wall_ns.saturating_sub(reply.server_send_ns),
        };
        let seq = reply.seq;
        if self.tally.record(seq, sample, count) == Arrival::New {
            self.second_rtts.push(sample.rtt_ns);
            if seq < self.scanned {
                // Counted missing earlier; it made it after all.
                self.missing = self.missing.saturating_sub(1);
            }
        }
    }

    /// Emit the live line of each second that has ended.
    fn live(&mut self, now: Instant, on_live: &mut impl FnMut(&Live)) {
        while now >= self.next_live {
            self.second += 1;
            // Probes sent more than a wait ago had their chance to be answered.
            let horizon = self.next_live.saturating_duration_since(self.start);
            let old = horizon.saturating_sub(self.wait());
            let due = (old.as_nanos() / self.config.interval.as_nanos().max(1)) as u64;
            let due = due.min(self.shared.sent.load(Ordering::Acquire));
            while self.scanned < due {
                if !self.tally.answered(self.scanned) {
                    self.missing += 1;
                }
                self.scanned += 1;
            }
            let rtt_p50_ms = if self.second_rtts.is_empty() {
                None
            } else {
                self.second_rtts.sort_unstable();
                Some(self.second_rtts[self.second_rtts.len() / 2] as f64 / 1e6)
            };
            on_live(&Live {
                second: self.second,
                sent: self.shared.sent.load(Ordering::Acquire),
                received: self.tally.received(),
                rtt_p50_ms,
                loss_percent: if self.scanned == 0 {
                    0.0
                } else {
                    self.missing as f64 * 100.0 / self.scanned as f64
                },
            });
            self.second_rtts.clear();
            self.next_live += Duration::from_secs(1);
        }
    }

    /// Ask the server how many probes of the session it received: the last probes' replies
    /// may have been lost on the way back, and only this tells them from upstream losses.
    fn final_count(&mut self, socket: &UdpSocket, buf: &mut [u8]) {
        if self.tally.received() == 0 {
            // Nobody answers: no use waiting again.
            return;
        }
        let mut out = Vec::new();
        let per_try = self.wait().min(Duration::from_millis(500));
        for _ in 0..COUNT_TRIES {
            let sent_ns = crate::timefmt::now_ns();
            // Long enough for the reply to carry the rate-limited count.
            let size = self.config.size.max(wire::RATE_LIMITED_BYTES);
            let signer = self.config.signer.as_ref();
            wire::encode_request(
                Kind::Count,
                self.session,
                0,
                sent_ns,
                signer,
                size,
                &mut out,
            );
            if socket.send(&out).is_err() {
                return;
            }
            self.count_sent.push(sent_ns);
            let deadline = Instant::now() + per_try;
            while Instant::now() < deadline && !self.count_answered {
                if let Ok(len) = socket.recv(buf) {
                    let (mono, wall) = (Instant::now(), crate::timefmt::now_ns());
                    if let Some(datagram) = buf.get(..len) {
                        self.reply(datagram, mono, wall);
                    }
                }
            }
            if self.count_answered {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_k_intervals_from_the_start_whatever_came_before() {
        let ms = Duration::from_millis;
        assert_eq!(due_offset(ms(10), 0), Duration::ZERO);
        assert_eq!(due_offset(ms(10), 7), ms(70));
        assert_eq!(
            due_offset(Duration::from_micros(100), 2_000_000),
            Duration::from_secs(200)
        );
        // Saturates instead of overflowing.
        assert_eq!(
            due_offset(Duration::from_secs(3600), u64::MAX),
            Duration::from_nanos(u64::MAX)
        );
        assert!(!is_late(ms(10), ms(10)));
        assert!(is_late(ms(11), ms(10)));
    }

    const SESSION: u64 = 42;
    const PROBES: usize = 4;
    /// The wall-clock send time written into probe `seq` (as the sender would have).
    const fn wall(seq: u64) -> i64 {
        1_000_000_000 + seq as i64 * 10_000_000
    }

    fn config() -> ProbeConfig {
        super::super::ProbeArgs {
            addr: "127.0.0.1:9".into(),
            interval: Duration::from_millis(10),
            duration: None,
            count: Some(PROBES as u64),
            size: 64,
            json: false,
            token: None,
            store: false,
            sensor: None,
            wait: Some(Duration::from_millis(100)),
            tls: false,
            ca: None,
            tls_server_name: None,
        }
        .validate()
        .expect("valid settings")
    }

    /// A sender's record of `PROBES` probes, all sent.
    fn sent() -> Shared {
        Shared {
            sent_at: (0..PROBES)
                .map(|k| AtomicU64::new(k as u64 * 10 + 1))
                .collect(),
            sent_wall: (0..PROBES)
                .map(|k| AtomicI64::new(wall(k as u64)))
                .collect(),
            sent: AtomicU64::new(PROBES as u64),
            late: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            refused: AtomicBool::new(false),
            done: AtomicBool::new(true),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn receiver<'a>(config: &'a ProbeConfig, shared: &'a Shared, start: Instant) -> Receiver<'a> {
        Receiver {
            tally: Tally::new(PROBES),
            config,
            shared,
            session: SESSION,
            start,
            second_rtts: Vec::new(),
            next_live: start + Duration::from_secs(1),
            second: 0,
            scanned: 0,
            missing: 0,
            count_sent: Vec::new(),
            count_answered: false,
        }
    }

    /// A reply datagram with the given fields.
    fn datagram(
        seq: u64,
        client_send_ns: i64,
        receive_ns: i64,
        send_ns: i64,
        count: u64,
    ) -> Vec<u8> {
        let head = wire::Head {
            kind: Kind::Probe,
            session: SESSION,
            seq,
            client_send_ns,
            signed: false,
        };
        let mut buf = vec![0u8; 64];
        wire::encode_reply(head, receive_ns, count, 0, &mut buf).expect("64 bytes hold a reply");
        wire::stamp_send(&mut buf, send_ns);
        buf
    }

    #[test]
    fn a_reply_that_does_not_echo_our_send_time_or_has_the_server_send_before_it_received_is_dropped(
    ) {
        let (config, shared, start) = (config(), sent(), Instant::now());
        let mut r = receiver(&config, &shared, start);
        let now = start + Duration::from_millis(50);
        r.reply(&datagram(0, wall(0) + 1, 5, 6, 1), now, 10);
        r.reply(&datagram(1, wall(1), 6, 5, 1), now, 10);
        assert_eq!(r.tally.received(), 0);
        r.reply(&datagram(2, wall(2), 5, 6, 1), now, 10);
        assert_eq!(r.tally.received(), 1);
    }

    proptest::proptest! {
        /// Whatever a server (or a spoofer who knows the session) sends back, the receiver
        /// and the summary never panic (no overflow) and no delay comes out negative.
        #[test]
        fn any_reply_goes_through_the_receiver_without_panicking(
            seq in 0u64..(PROBES as u64 + 2),
            echo_ours: bool,
            client_send_ns: i64,
            receive_ns: i64,
            send_ns: i64,
            count: u64,
            wall_ns: i64,
            after_ms in 0u64..100_000,
        ) {
            let (config, shared, start) = (config(), sent(), Instant::now());
            let mut r = receiver(&config, &shared, start);
            let client_send_ns = if echo_ours { wall(seq) } else { client_send_ns };
            let bytes = datagram(seq, client_send_ns, receive_ns, send_ns, count);
            r.reply(&bytes, start + Duration::from_millis(after_ms), wall_ns);
            r.reply(&bytes, start + Duration::from_millis(after_ms), wall_ns);
            let s = r.tally.summary(PROBES as u64, 0);
            if let Some(rtt) = s.rtt_ms {
                proptest::prop_assert!(rtt.min >= 0.0);
            }
            proptest::prop_assert!(s.received <= 1);
        }
    }
}
