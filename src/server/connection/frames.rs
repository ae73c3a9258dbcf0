//! Per-frame handling of a [`Connection`]: decode what was read, then accept, reject or
//! answer each line (or legacy message); no I/O. The socket and the loop stay in
//! [`super`].

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::{Connection, Decoded, Decoder, MAX_ERROR_REPLIES_PER_S};
use crate::events::{
    ErrorReplySuppressed, Event as _, LegacyNotAllowed, LineRejected, Mode, ModeDetected,
    ReadingReceived, ReadingsAccepted,
};
use crate::protocol::codec::{sniff, Frame, LineDecoder, Sniff};
use crate::protocol::legacy::{LegacyDecoder, LegacyMessage};
use crate::protocol::{ProtocolError, Reading};
use crate::server::logging;
use crate::server::pending::{PendingReply, Unreported};
use crate::server::quota::TokenBucket;
use crate::store::StoredReading;
use crate::timefmt::now_ns;

/// Error replies held for a peer that has not yet shown it reads replies.
const MAX_HELD_ERRORS: usize = 64;

impl Connection<'_> {
    /// A bare legacy `ping` nothing followed for
    /// [`Limits::legacy_ping_quiet`](super::Limits::legacy_ping_quiet): a ping after all.
    /// Whether one was answered.
    pub(super) fn answer_held_ping(&mut self, buf: &mut BytesMut) -> bool {
        if let Decoder::Legacy(decoder) = &mut self.decoder {
            if let Some(message) = decoder.decode_quiet(buf) {
                self.read_at = tokio::time::Instant::now();
                return self.on_legacy(message, now_ns(), Instant::now());
            }
        }
        false
    }

    /// Decode every complete frame in `buf` into the pending batch and replies; returns
    /// how many were accepted work (progress, for the idle timeout): a rejected line or
    /// message answers with an error but must not keep a connection alive.
    pub(super) fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> usize {
        let received_ns = now_ns();
        let received_at = Instant::now();
        self.read_at = tokio::time::Instant::now();
        if matches!(self.decoder, Decoder::Undecided) {
            match sniff(buf) {
                // Nothing at all (connect, then close) tells no protocol: mode stays None.
                Sniff::NeedMore if !eof || buf.is_empty() => return 0,
                Sniff::Legacy => {
                    ModeDetected { mode: Mode::Legacy }.emit_to(self.telemetry);
                    self.decoder = Decoder::Legacy(LegacyDecoder::new(self.limits.max_line_bytes));
                    if !self
                        .auth
                        .legacy_allowed(self.peer.ip(), &self.limits.allow_legacy)
                    {
                        LegacyNotAllowed { peer: self.peer }.emit_to(self.telemetry);
                    }
                }
                Sniff::Line | Sniff::NeedMore => {
                    ModeDetected { mode: Mode::Line }.emit_to(self.telemetry);
                    self.decoder = Decoder::Line(LineDecoder::new(self.limits.max_line_bytes));
                }
            }
        }
        let frames = self.decode_frames(buf, eof, received_ns, received_at);
        if self.uncounted_accepted > 0 {
            ReadingsAccepted {
                count: u64::from(std::mem::take(&mut self.uncounted_accepted)),
            }
            .emit_to(self.telemetry);
        }
        if self.log_suppressed > 0 {
            logging::RECEIVED.add_suppressed(u64::from(std::mem::take(&mut self.log_suppressed)));
        }
        frames
    }

    fn decode_frames(
        &mut self,
        buf: &mut BytesMut,
        eof: bool,
        received_ns: i64,
        received_at: Instant,
    ) -> usize {
        let mut progress = 0;
        loop {
            if self.auth.close_reason().is_some() {
                // Closing: nothing more from this peer is read, stored or answered.
                buf.clear();
                return progress;
            }
            let accepted = match &mut self.decoder {
                Decoder::Undecided => return progress,
                Decoder::Line(decoder) => {
                    let frame = if eof {
                        decoder.decode_eof(buf)
                    } else {
                        decoder.decode(buf)
                    };
                    let Some(frame) = frame else { return progress };
                    self.on_frame(frame, received_ns, received_at)
                }
                Decoder::Legacy(decoder) => {
                    let message = if eof {
                        decoder.decode_eof(buf)
                    } else {
                        decoder.decode(buf)
                    };
                    let Some(message) = message else {
                        return progress;
                    };
                    self.on_legacy(message, received_ns, received_at)
                }
            };
            progress += usize::from(accepted);
        }
    }

    /// Handle one line-mode frame; returns whether it was accepted work (not an error).
    fn on_frame(&mut self, frame: Frame, received_ns: i64, received_at: Instant) -> bool {
        match frame {
            // The token first: it may name the sensor, which the quotas key by.
            Frame::Reading(mut reading) => match self
                .auth
                .admit(&mut reading)
                .and_then(|()| self.admissible(&reading, received_ns))
            {
                Ok(()) => {
                    self.accept(reading, received_ns, received_at);
                    true
                }
                Err(error) => {
                    let line = self.line_count();
                    self.on_frame(Frame::Invalid { line, error }, received_ns, received_at)
                }
            },
            Frame::Ping(token) => {
                self.become_interactive();
                self.push_reply(PendingReply::Pong(token));
                true
            }
            Frame::Auth(secret) => {
                self.become_interactive();
                let line = self.line_count();
                // Only an accepted token is progress (a refused one is a strike).
                let answer = self.auth.authenticate(&secret, self.peer, self.telemetry);
                // Per-token quotas charge the token now in force (none after a refusal).
                self.quota
                    .set_principal(self.auth.token_id().map(Arc::<str>::from));
                match answer {
                    Ok(id) => self.push_reply(PendingReply::AuthOk(id)),
                    Err(reason) => {
                        self.push_reply(PendingReply::Error { line, reason });
                        return false;
                    }
                }
                true
            }
            Frame::Sync(token) => {
                self.become_interactive();
                let line = self.line_count();
                let ack = PendingReply::Ack {
                    token,
                    line,
                    readings: std::mem::take(&mut self.since_sync_readings),
                    rejected: std::mem::take(&mut self.since_sync_rejected),
                    first_received: self.since_sync_first.take(),
                    batch_offset: self.decoded.as_ref().map_or(0, |d| d.batch.len()),
                    repeats: Unreported::default(),
                };
                self.push_reply(ack);
                true
            }
            Frame::Invalid { line, error } => {
                self.reject(&error, line);
                let reply = PendingReply::Error {
                    line,
                    reason: error.to_string(),
                };
                let (interactive, read_at) = (self.interactive, self.read_at);
                let rare = self.rare();
                if !interactive {
                    if rare.held_errors.len() < MAX_HELD_ERRORS {
                        rare.held_errors.push(reply);
                    } else {
                        ErrorReplySuppressed { reads: false }.emit_to(self.telemetry);
                    }
                } else if rare
                    .error_replies
                    // Made full at the first error: the same as full since the connect.
                    .get_or_insert_with(|| {
                        TokenBucket::per_second(MAX_ERROR_REPLIES_PER_S, read_at)
                    })
                    .try_take(read_at)
                {
                    self.push_reply(reply);
                } else {
                    ErrorReplySuppressed { reads: true }.emit_to(self.telemetry);
                }
                false
            }
        }
    }

    /// Handle one legacy message; returns whether it was accepted work (a ping or a stored
    /// reading), not a rejected one.
    fn on_legacy(
        &mut self,
        message: LegacyMessage,
        received_ns: i64,
        received_at: Instant,
    ) -> bool {
        let (accepted, received) = match message {
            LegacyMessage::Ping => (true, None),
            LegacyMessage::Reading(mut reading) => {
                match self.admissible(&reading, received_ns) {
                    Ok(()) => {
                        // The seed's readings carry no name: the peer's address is the sensor.
                        reading
                            .tags
                            .push(("sensor".to_string(), self.peer_ip.to_string()));
                        self.accept(reading, received_ns, received_at);
                        (true, Some(received_at))
                    }
                    Err(error) => {
                        self.reject(&error, 0);
                        (false, None)
                    }
                }
            }
            LegacyMessage::Invalid(error) => {
                self.reject(&error, 0);
                (false, None)
            }
        };
        // The seed answered every message, good or bad, with `pong`.
        self.push_reply(PendingReply::LegacyPong { received });
        accepted
    }

    /// Lines decoded so far: the number of the line just decoded.
    fn line_count(&self) -> u64 {
        match &self.decoder {
            Decoder::Line(decoder) => decoder.line_count(),
            _ => 0,
        }
    }

    /// Whether `reading` may be stored: its own timestamp against
    /// [`Limits::timestamps`](super::Limits::timestamps) (none: stamped on receipt), then the quotas (a reading without a `sensor` tag is
    /// filed under the peer's address, in line and legacy mode alike).
    fn admissible(&mut self, reading: &Reading, received_ns: i64) -> Result<(), ProtocolError> {
        if let Some(ts) = reading.timestamp_ns {
            self.limits.timestamps.check(ts, received_ns)?;
        }
        self.quota.admit(reading, &self.peer_ip, self.read_at)
    }

    /// What is decoded and not yet submitted, lent by this thread's spares at first use.
    fn decoded(&mut self) -> &mut Decoded {
        self.decoded
            .get_or_insert_with(crate::server::spare::decoded)
    }

    /// Queue `reply` behind the pending batch.
    fn push_reply(&mut self, reply: PendingReply) {
        self.decoded().replies.push(reply);
    }

    pub(super) fn become_interactive(&mut self) {
        if !self.interactive {
            self.interactive = true;
            if let Some(mut held) = self
                .rare
                .as_mut()
                .map(|rare| std::mem::take(&mut rare.held_errors))
            {
                if !held.is_empty() {
                    self.decoded().replies.append(&mut held);
                }
            }
        }
    }

    fn accept(&mut self, mut reading: Reading, received_ns: i64, received_at: Instant) {
        if reading.timestamp_ns.is_none() {
            reading.timestamp_ns = Some(received_ns);
        }
        let sensor = reading.tag("sensor").unwrap_or(&*self.peer_ip).to_string();
        // Once the shared budget says no, this connection stops asking until the next
        // second: under load the hot path then touches no shared counter per reading.
        let second = received_ns / 1_000_000_000;
        // (Seconds since the epoch fit 32 bits until 2106.)
        let second = u32::try_from(second).unwrap_or(u32::MAX);
        if second == self.log_muted_second {
            self.log_suppressed += 1;
        } else if logging::allow_received_line() {
            ReadingReceived { reading: &reading }.emit_to(self.telemetry);
        } else {
            self.log_muted_second = second;
        }
        self.uncounted_accepted += 1;
        self.counters.accepted += 1;
        self.since_sync_readings += 1;
        self.since_sync_first.get_or_insert(received_at);
        self.live.received(received_at);
        self.decoded().batch.push(StoredReading {
            reading,
            sensor,
            received_ns,
        });
    }

    fn reject(&mut self, error: &ProtocolError, line: u64) {
        LineRejected {
            line,
            peer: self.peer,
            error,
        }
        .emit_to(self.telemetry);
        self.counters.rejected += 1;
        self.since_sync_rejected += 1;
    }
}
