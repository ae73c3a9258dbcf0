//! Line mode (and idle mode): one connection's session. Readings come from a template
//! ([`LineEncoder`]), a `sync <n>` follows every batch, and the [`Window`] of syncs in
//! flight (no I/O) matches each `ack` to the write that carried its sync.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use tokio::io::AsyncRead;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

use crate::client::sleep_until_opt;
use crate::client::transport::{Connection, ReplyDecoder, ReplyReader, TransportError};
use crate::protocol::control::Reply;
use crate::protocol::{ilp, FieldValue, Reading};

use super::args::Mode;
use super::pace::{count_share, Pacer};
use super::progress::Live;
use super::report::{ConnResult, ErrorKind};
use super::{Phase, Shared, ACK_TIMEOUT};

/// Size of one write: large enough that syscalls are not what limits the rate.
const WRITE_BYTES: usize = 64 * 1024;

/// Writes one connection's readings from a template, without allocating per reading:
/// `<measurement>,sensor=bench-<i> f0=<v>[,f1=<v>…] <start_ns + n>\n`.
#[derive(Debug)]
pub(super) struct LineEncoder {
    /// Escaped measurement and tag, up to and including the space before the fields.
    prefix: Vec<u8>,
    /// `f0=`, `,f1=`, `,f2=` …
    keys: Vec<Vec<u8>>,
    next_ts: i64,
    n: u64,
}

impl LineEncoder {
    pub(super) fn new(
        measurement: &str,
        index: usize,
        fields: usize,
        start_ns: i64,
    ) -> Result<Self, String> {
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
    pub(super) fn encode(&mut self, out: &mut Vec<u8>) -> usize {
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
pub(super) struct PendingSync {
    token: u64,
    readings: u64,
    written_at: Instant,
}

/// The syncs in flight on one connection, oldest first (acks come in order). No I/O.
#[derive(Debug)]
pub(super) struct Window {
    max_syncs: usize,
    pending: VecDeque<PendingSync>,
}

impl Window {
    pub(super) fn new(max_syncs: usize) -> Self {
        Window {
            max_syncs,
            pending: VecDeque::with_capacity(max_syncs),
        }
    }

    pub(super) fn has_room(&self) -> bool {
        self.pending.len() < self.max_syncs
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub(super) fn push(&mut self, sync: PendingSync) {
        self.pending.push_back(sync);
    }

    /// Set the write time of the newest `n` syncs: they went out in one write.
    pub(super) fn stamp_newest(&mut self, n: usize, at: Instant) {
        for sync in self.pending.iter_mut().rev().take(n) {
            sync.written_at = at;
        }
    }

    /// The oldest sync must be acknowledged by this time.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.pending.front().map(|s| s.written_at + ACK_TIMEOUT)
    }

    pub(super) fn unacked_readings(&self) -> u64 {
        self.pending.iter().map(|s| s.readings).sum()
    }

    /// Match an `ack <token>` to the oldest sync.
    pub(super) fn on_ack(&mut self, token: &str) -> Result<PendingSync, String> {
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
pub(super) async fn session<S>(
    shared: &Shared,
    index: usize,
    conn: Connection<S, ReplyDecoder>,
    phase: Phase,
    result: &mut ConnResult,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let (mut reader, mut writer) = conn;
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
    let write_bytes = if s.mode == Mode::Idle {
        1024
    } else {
        WRITE_BYTES + 4096
    };
    let mut out = Vec::with_capacity(write_bytes);
    let mut digits = itoa::Buffer::new();
    let mut sent = 0u64;
    let mut next_token = 1u64;
    // `error` lines since the last ack: the ack's `rejected` counts the same lines again.
    let mut error_lines = 0u64;
    // One ack timer and one stop timer for the session, re-armed in place: a timer built per
    // turn of the loop is a timer-wheel insert and removal per reply (a later deadline is an
    // atomic store). The ack timer is polled only while a sync is in flight, so it is armed
    // (reset to the oldest sync's deadline) before it is ever registered.
    let ack_timer = tokio::time::sleep_until(phase.go + ACK_TIMEOUT);
    let stop_timer = sleep_until_opt(phase.stop_at);
    // One wait on the stop signal for the session, not a new one per turn of the loop: each
    // new one locks the token and joins its waiter list again, on every round trip.
    let stop_signal = shared.stop.cancelled();
    tokio::pin!(ack_timer, stop_timer, stop_signal);
    'session: loop {
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
            // Bounded by what the writer still holds too: the server takes bytes as it reads.
            while window.has_room()
                && out.len() < WRITE_BYTES
                && writer.queued() + out.len() < WRITE_BYTES
            {
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
                writer.queue(&out);
                out.clear();
                if at >= phase.measure_from {
                    result.bytes += reading_bytes as u64;
                }
            }
        }
        if stopping && window.is_empty() {
            break;
        }
        let pace_at = match pacer {
            Some(p) if !stopping && window.has_room() => Some(p.when_due(sent + batch_after(sent))),
            _ => None,
        };
        let ack_deadline = window.deadline();
        if let Some(deadline) = ack_deadline {
            if ack_timer.deadline() != deadline {
                ack_timer.as_mut().reset(deadline);
            }
        }
        // Writes and acks go on side by side: a write the server is slow to take never holds
        // back the acks it already sent (their latency would be the write's wait, not the
        // server's). A server that reads nothing ends in the oldest sync's ack timeout.
        let writing = writer.busy();
        tokio::select! {
            pushed = writer.push(), if writing => {
                if let Err(err) = pushed {
                    result.error(live, ErrorKind::Disconnect, || format!("write: {err}"));
                    break;
                }
            }
            reply = reader.read_reply() => {
                // Acks arrive many at a time under load: take every one already here, all
                // at this instant, before writing again.
                let now = Instant::now();
                let mut next = Some(reply);
                while let Some(reply) = next {
                    let handled = match reply {
                        Ok(reply) => handle_reply(
                            reply,
                            &mut window,
                            &mut error_lines,
                            now >= phase.measure_from,
                            now,
                            live,
                            result,
                        ),
                        Err(err) => {
                            reply_error(err, live, result);
                            Err(())
                        }
                    };
                    if handled.is_err() {
                        break 'session;
                    }
                    next = ready_reply(&mut reader).await;
                }
            }
            _ = &mut ack_timer, if ack_deadline.is_some() => {
                result.error(live, ErrorKind::Timeout, || {
                    format!("no ack within {}", humantime::format_duration(ACK_TIMEOUT))
                });
                break;
            }
            _ = sleep_until_opt(pace_at) => {}
            _ = &mut stop_timer, if !stopping => {}
            _ = &mut stop_signal, if !stopping => {}
        }
    }
    result.unacked += window.unacked_readings();
}

/// The next reply if one is buffered or readable without waiting, else `None`.
async fn ready_reply<R, D>(
    reader: &mut ReplyReader<R, D>,
) -> Option<Result<D::Item, TransportError>>
where
    R: AsyncRead + Unpin,
    D: Decoder<Error = TransportError>,
{
    // `read_reply` is cancel-safe: a reply not complete yet stays in the reader's buffer.
    tokio::select! {
        biased;
        reply = reader.read_reply() => Some(reply),
        () = std::future::ready(()) => None,
    }
}

/// Count a failure to read a reply; it ends the connection.
fn reply_error(err: TransportError, live: &Live, result: &mut ConnResult) {
    match err {
        // Closed with syncs unanswered, or before the run was over.
        TransportError::Closed => result.error(live, ErrorKind::Disconnect, || {
            "the server closed the connection".into()
        }),
        TransportError::Io(err) => {
            result.error(live, ErrorKind::Disconnect, || format!("read: {err}"))
        }
        other => result.error(live, ErrorKind::Protocol, || other.to_string()),
    }
}

/// Handle one reply. `Err` ends the connection (already counted).
pub(super) fn handle_reply(
    reply: Reply,
    window: &mut Window,
    error_lines: &mut u64,
    measured: bool,
    now: Instant,
    live: &Live,
    result: &mut ConnResult,
) -> Result<(), ()> {
    match reply {
        Reply::Ack(ack) => {
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
                result.rtt.record(now, now - sync.written_at, acked);
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
        Reply::Error { line, reason } => {
            *error_lines += 1;
            result.error(live, ErrorKind::Reply, || format!("error {line} {reason}"));
        }
        Reply::Pong(_) | Reply::AuthOk(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

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

    /// Feed every complete reply in `buf` through the transport's decoder to `handle_reply`.
    fn handle_all(
        buf: &mut bytes::BytesMut,
        w: &mut Window,
        errors: &mut u64,
        now: Instant,
        live: &Live,
        result: &mut ConnResult,
    ) -> Result<(), ()> {
        let mut decoder = ReplyDecoder::default();
        while let Some(reply) = decoder.decode(buf).map_err(|_| ())? {
            handle_reply(reply, w, errors, true, now, live, result)?;
        }
        Ok(())
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
        let mut buf = bytes::BytesMut::from(
            &b"ack 1 readings=3 rejected=0 store_us=5 commit_us=2\r\nerror 5 invalid reading: x\nack 2 readings=2 rejected=1\npong bench\nack"[..],
        );
        let now = t + Duration::from_micros(250);
        assert!(handle_all(&mut buf, &mut w, &mut errors, now, &live, &mut result).is_ok());
        assert_eq!(&buf[..], b"ack", "a partial line waits for more bytes");
        assert_eq!(result.readings, 5);
        assert_eq!(result.rtt.summary().count, 2);
        // The rejected line was reported once, by its `error` reply.
        assert_eq!(result.errors.replies, 1);
        assert_eq!(result.errors.rejected, 0);
        assert_eq!(live.acked.load(Ordering::Relaxed), 5);

        let mut bad = bytes::BytesMut::from(&b"ack 9 readings=1 rejected=0\n"[..]);
        assert!(handle_all(&mut bad, &mut w, &mut errors, now, &live, &mut result).is_err());
        assert_eq!(result.errors.protocol, 1);
        assert_eq!(result.errors.total(), 2);
    }

    #[test]
    fn a_lost_connection_is_a_disconnect_and_a_bad_reply_a_protocol_error() {
        let live = Live::default();
        let mut result = ConnResult::new(Arc::default());
        reply_error(TransportError::Closed, &live, &mut result);
        reply_error(
            TransportError::Io(std::io::ErrorKind::ConnectionReset.into()),
            &live,
            &mut result,
        );
        reply_error(TransportError::ReplyTooLong, &live, &mut result);
        assert_eq!(result.errors.disconnects, 2);
        assert_eq!(result.errors.protocol, 1);
        assert_eq!(live.errors.load(Ordering::Relaxed), 3);
        assert_eq!(
            result.first_error.as_deref(),
            Some("the server closed the connection")
        );
    }
}
