//! Events of the readings on a connection: received (the seed's log line), accepted per
//! batch, lines rejected, error replies held back, bytes read, replies written and acks
//! withheld.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Event, RejectReason, Telemetry};
use crate::protocol::{ilp, ProtocolError, Reading};
use crate::server::logging;

/// One reading parsed: the seed's `Received: <data>` line. The caller asks the log budget
/// ([`logging::allow_received_line`]) first; readings are counted per batch by
/// [`ReadingsAccepted`], not here, to keep shared counters off the per-reading path.
pub struct ReadingReceived<'a> {
    pub reading: &'a Reading,
}

impl Event for ReadingReceived<'_> {
    fn emit_to(self, _: &Telemetry) {
        let mut line = Vec::with_capacity(96);
        ilp::encode(self.reading, &mut line);
        let text = String::from_utf8_lossy(&line);
        tracing::info!("Received: {}", text.trim_end());
    }
}

/// Readings of one decoded batch handed to the store.
pub struct ReadingsAccepted {
    pub count: u64,
}

impl Event for ReadingsAccepted {
    fn emit_to(self, t: &Telemetry) {
        tracing::trace!(count = self.count, "readings accepted");
        t.readings_accepted.increment(self.count);
        t.totals
            .readings_accepted
            .fetch_add(self.count, Ordering::Relaxed);
    }
}

/// A line that is not a reading; warned about within its own log budget.
pub struct LineRejected<'a> {
    /// Line number on the connection (0 for legacy messages).
    pub line: u64,
    pub peer: SocketAddr,
    pub error: &'a ProtocolError,
}

impl Event for LineRejected<'_> {
    fn emit_to(self, t: &Telemetry) {
        if logging::allow_rejected_line() {
            tracing::warn!(line = self.line, cause = %self.error, "rejected");
        }
        let reason = RejectReason::of(self.error);
        t.lines_rejected[reason as usize].increment(1);
        t.totals.lines_rejected.fetch_add(1, Ordering::Relaxed);
        /// `line N: error` (legacy messages have no line), formatted only if kept.
        struct Detail<'a>(u64, &'a ProtocolError);
        impl std::fmt::Display for Detail<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.0 {
                    0 => write!(f, "{}", self.1),
                    line => write!(f, "line {line}: {}", self.1),
                }
            }
        }
        t.recent.rejected(
            Instant::now(),
            crate::timefmt::now_ns,
            self.peer,
            reason.as_str(),
            format_args!("{}", Detail(self.line, self.error)),
        );
    }
}

/// An error reply dropped (PROTOCOL.md, Errors): the peer never sent a control line, so it
/// does not read replies, and the held ones are at their limit; or it reads them, and this
/// second's error replies are at their limit.
pub struct ErrorReplySuppressed {
    /// Whether the peer reads replies (the per-second limit) or not (the held limit).
    pub reads: bool,
}

impl Event for ErrorReplySuppressed {
    fn emit_to(self, t: &Telemetry) {
        if self.reads {
            tracing::debug!("error reply not sent: the connection's error replies per second");
        } else {
            tracing::debug!("error reply not sent: the peer does not read replies");
        }
        t.replies_suppressed.increment(1);
    }
}

/// Bytes read from a peer.
pub struct BytesReceived {
    pub bytes: usize,
}

impl Event for BytesReceived {
    fn emit_to(self, t: &Telemetry) {
        tracing::trace!(bytes = self.bytes, "bytes received");
        t.received_bytes.increment(self.bytes as u64);
    }
}

/// One write of replies reached the peer's socket.
pub struct RepliesWritten<'a> {
    pub bytes: usize,
    pub acks: u64,
    pub pongs: u64,
    pub errors: u64,
    /// Readings these acks (and legacy pongs) cover.
    pub readings_acked: u64,
    /// Receipt of the first reading of each ack written, for the ack latency.
    pub ack_receipts: &'a [Instant],
    pub written_at: Instant,
}

impl Event for RepliesWritten<'_> {
    fn emit_to(self, t: &Telemetry) {
        tracing::trace!(
            bytes = self.bytes,
            acks = self.acks,
            pongs = self.pongs,
            errors = self.errors,
            "replies written"
        );
        t.sent_bytes.increment(self.bytes as u64);
        for (counter, n) in [
            (&t.replies_ack, self.acks),
            (&t.replies_pong, self.pongs),
            (&t.replies_error, self.errors),
            (&t.readings_acked, self.readings_acked),
        ] {
            if n > 0 {
                counter.increment(n);
            }
        }
        if self.readings_acked > 0 {
            t.totals
                .readings_acked
                .fetch_add(self.readings_acked, Ordering::Relaxed);
        }
        let latencies = self
            .ack_receipts
            .iter()
            .map(|received| self.written_at.saturating_duration_since(*received));
        for latency in latencies.clone() {
            t.ack_latency.record(latency.as_secs_f64());
        }
        if !self.ack_receipts.is_empty() {
            t.recent.acks(self.written_at, latencies);
        }
    }
}

/// A batch's commit failed: its readings get error replies instead of acks.
pub struct AcksWithheld<'a> {
    pub error: &'a dyn std::error::Error,
    pub readings: u64,
}

impl Event for AcksWithheld<'_> {
    fn emit_to(self, t: &Telemetry) {
        // The peer is told (error replies) and the commit failure itself is logged once by
        // the writer: per connection this is a warning, within its own log budget.
        if logging::allow_unacked_warning() {
            tracing::warn!(cause = %self.error, readings = self.readings, "store failed; readings not acknowledged");
        }
        t.readings_unacked.increment(self.readings);
    }
}
