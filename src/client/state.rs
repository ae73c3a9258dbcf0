//! The client's delivery state, with no I/O: which readings wait, which are in flight, which
//! were acknowledged or timed out. Retry and loss logic is tested here without sockets.
//!
//! Readings are numbered in the order they are produced and kept, in that order, until the
//! server acknowledges them. The `sync` token sent after a reading is its sequence number,
//! and an `ack` is a barrier: `ack N` covers every reading up to N sent on that connection.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::Reading;

/// One reading kept until acknowledged.
#[derive(Debug, Clone)]
pub struct Outstanding {
    pub seq: u64,
    pub reading: Reading,
    /// When it was last written to a connection; `None` while waiting to be (re)sent.
    pub sent_at: Option<Instant>,
    /// How many times it was written (more than 1 after a reconnect).
    pub sends: u32,
    /// Already reported lost (its ack did not come within the timeout).
    pub timed_out: bool,
}

/// A reading the server acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub seq: u64,
    pub reading: Reading,
    pub rtt: Duration,
    /// It was sent more than once (after a reconnect).
    pub resent: bool,
    /// It had been reported lost before this ack came.
    pub was_lost: bool,
}

/// Totals over the whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Readings produced (each counted once, however often sent).
    pub produced: u64,
    pub acked: u64,
    /// Readings whose ack did not come within the timeout (counted once each).
    pub timed_out: u64,
    /// Readings the server acknowledged as rejected (not stored).
    pub rejected: u64,
    /// Oldest readings dropped because more than `max_pending` were waiting.
    pub dropped: u64,
    /// Writes of a reading after the first.
    pub resends: u64,
}

/// What [`ClientState::produce`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    pub seq: u64,
    /// The oldest reading, dropped to make room.
    pub dropped: Option<u64>,
}

/// The delivery state machine.
#[derive(Debug)]
pub struct ClientState {
    next_seq: u64,
    /// Unacknowledged readings in sequence order; the first `sent` of them are in flight.
    queue: VecDeque<Outstanding>,
    sent: usize,
    max_pending: usize,
    counters: Counters,
}

impl ClientState {
    pub fn new(max_pending: usize) -> Self {
        ClientState {
            next_seq: 1,
            queue: VecDeque::new(),
            sent: 0,
            max_pending: max_pending.max(1),
            counters: Counters::default(),
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Readings not yet acknowledged (in flight or waiting).
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.sent
    }

    /// The first reading sent and not yet acknowledged, if any.
    pub fn oldest_in_flight(&self) -> Option<u64> {
        self.queue.front().filter(|_| self.sent > 0).map(|o| o.seq)
    }

    /// Keep a new reading until it is acknowledged; drops the oldest when full.
    pub fn produce(&mut self, reading: Reading) -> Produced {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.counters.produced += 1;
        let mut dropped = None;
        if self.queue.len() >= self.max_pending {
            if let Some(oldest) = self.queue.pop_front() {
                if oldest.sent_at.is_some() {
                    self.sent -= 1;
                }
                self.counters.dropped += 1;
                dropped = Some(oldest.seq);
            }
        }
        self.queue.push_back(Outstanding {
            seq,
            reading,
            sent_at: None,
            sends: 0,
            timed_out: false,
        });
        Produced { seq, dropped }
    }

    /// The sequence number the next produced reading will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Take back a reading recovered from the spool under its original number; numbering
    /// continues after `next_seq` (which the spool remembers even for acked readings).
    pub fn restore(&mut self, seq: u64, reading: Reading, next_seq: u64) {
        self.next_seq = self.next_seq.max(next_seq).max(seq + 1);
        self.counters.produced += 1;
        self.queue.push_back(Outstanding {
            seq,
            reading,
            sent_at: None,
            sends: 0,
            timed_out: false,
        });
    }

    /// Continue numbering at `next_seq` at least (the spool never reuses a number).
    pub fn restore_next_seq(&mut self, next_seq: u64) {
        self.next_seq = self.next_seq.max(next_seq);
    }

    /// Forget readings dropped on purpose (spool limits); returns how many were still here.
    pub fn drop_seqs(&mut self, seqs: &[u64]) -> u64 {
        let mut dropped = 0;
        let mut index = 0;
        while index < self.queue.len() {
            if seqs.contains(&self.queue[index].seq) {
                if index < self.sent {
                    self.sent -= 1;
                }
                self.queue.remove(index);
                dropped += 1;
            } else {
                index += 1;
            }
        }
        self.counters.dropped += dropped;
        dropped
    }

    /// The next reading to write, marked as sent at `now`.
    pub fn next_to_send(&mut self, now: Instant) -> Option<&Outstanding> {
        let next = self.queue.get_mut(self.sent)?;
        next.sent_at = Some(now);
        next.sends += 1;
        if next.sends > 1 {
            self.counters.resends += 1;
        }
        self.sent += 1;
        Some(next)
    }

    /// `ack token` arrived: every sent reading up to `token` is stored. With `rejected`, the
    /// server refused the reading the ack is for (it answered `error` for its line).
    pub fn on_ack(&mut self, token: u64, rejected: bool, now: Instant) -> Vec<Acked> {
        let mut acked = Vec::new();
        while self.sent > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.seq > token {
                break;
            }
            let Some(done) = self.queue.pop_front() else {
                break;
            };
            self.sent -= 1;
            if rejected && done.seq == token {
                self.counters.rejected += 1;
                continue;
            }
            self.counters.acked += 1;
            let rtt = done
                .sent_at
                .map(|at| now.saturating_duration_since(at))
                .unwrap_or_default();
            acked.push(Acked {
                seq: done.seq,
                rtt,
                resent: done.sends > 1,
                was_lost: done.timed_out,
                reading: done.reading,
            });
        }
        acked
    }

    /// Readings in flight longer than `timeout`, each reported once.
    pub fn check_timeouts(&mut self, now: Instant, timeout: Duration) -> Vec<u64> {
        let mut lost = Vec::new();
        for outstanding in self.queue.iter_mut().take(self.sent) {
            let Some(sent_at) = outstanding.sent_at else {
                continue;
            };
            if !outstanding.timed_out && now.saturating_duration_since(sent_at) >= timeout {
                outstanding.timed_out = true;
                self.counters.timed_out += 1;
                lost.push(outstanding.seq);
            }
        }
        lost
    }

    /// When the next in-flight reading times out, if any is waiting.
    pub fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.queue
            .iter()
            .take(self.sent)
            .filter(|o| !o.timed_out)
            .filter_map(|o| o.sent_at)
            .min()
            .map(|at| at + timeout)
    }

    /// The connection dropped: everything in flight is sent again on the next one.
    pub fn on_disconnect(&mut self) {
        for outstanding in self.queue.iter_mut().take(self.sent) {
            outstanding.sent_at = None;
        }
        self.sent = 0;
    }

    /// At exit: every reading still unacknowledged is lost; returns those not yet reported.
    pub fn give_up(&mut self) -> Vec<u64> {
        let mut lost = Vec::new();
        for outstanding in self.queue.iter_mut().filter(|o| !o.timed_out) {
            outstanding.timed_out = true;
            lost.push(outstanding.seq);
        }
        self.counters.timed_out += lost.len() as u64;
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FieldValue;

    fn reading(v: i64) -> Reading {
        Reading {
            measurement: "m".into(),
            tags: vec![("sensor".into(), "s".into())],
            fields: vec![("value".into(), FieldValue::Int(v))],
            timestamp_ns: Some(v),
        }
    }

    fn seqs(acked: &[Acked]) -> Vec<u64> {
        acked.iter().map(|a| a.seq).collect()
    }

    #[test]
    fn ack_is_a_barrier_over_everything_sent_before_it() {
        let mut state = ClientState::new(10);
        let t0 = Instant::now();
        for v in 0..3 {
            state.produce(reading(v));
            state.next_to_send(t0);
        }
        let acked = state.on_ack(2, false, t0 + Duration::from_millis(5));
        assert_eq!(seqs(&acked), vec![1, 2]);
        assert_eq!(acked[0].rtt, Duration::from_millis(5));
        assert_eq!(state.pending(), 1);
        assert_eq!(state.in_flight(), 1);
        assert_eq!(state.counters().acked, 2);
    }

    #[test]
    fn ack_never_covers_readings_not_yet_sent() {
        let mut state = ClientState::new(10);
        let now = Instant::now();
        state.produce(reading(1));
        state.produce(reading(2));
        state.next_to_send(now);
        assert_eq!(seqs(&state.on_ack(2, false, now)), vec![1]);
        assert_eq!(state.pending(), 1);
    }

    #[test]
    fn timeouts_are_reported_once_and_readings_kept_for_resend() {
        let mut state = ClientState::new(10);
        let t0 = Instant::now();
        state.produce(reading(1));
        state.next_to_send(t0);
        let timeout = Duration::from_secs(10);
        assert_eq!(state.next_deadline(timeout), Some(t0 + timeout));
        assert!(state
            .check_timeouts(t0 + Duration::from_secs(9), timeout)
            .is_empty());
        assert_eq!(state.check_timeouts(t0 + timeout, timeout), vec![1]);
        assert!(state.check_timeouts(t0 + timeout * 2, timeout).is_empty());
        assert_eq!(state.next_deadline(timeout), None);
        assert_eq!(state.counters().timed_out, 1);

        state.on_disconnect();
        assert_eq!(state.in_flight(), 0);
        let t1 = t0 + timeout * 3;
        let resent = state.next_to_send(t1).map(|o| (o.seq, o.sends));
        assert_eq!(resent, Some((1, 2)));
        let acked = state.on_ack(1, false, t1 + Duration::from_millis(1));
        assert!(acked[0].resent && acked[0].was_lost);
        assert_eq!(acked[0].rtt, Duration::from_millis(1));
        assert_eq!(state.counters().resends, 1);
    }

    #[test]
    fn disconnect_resends_in_original_order() {
        let mut state = ClientState::new(10);
        let now = Instant::now();
        for v in 1..=3 {
            state.produce(reading(v));
        }
        state.next_to_send(now);
        state.next_to_send(now);
        state.on_disconnect();
        let order: Vec<u64> =
            std::iter::from_fn(|| state.next_to_send(now).map(|o| o.seq)).collect();
        assert_eq!(order, vec![1, 2, 3]);
    }

    #[test]
    fn full_queue_drops_the_oldest_and_counts_it() {
        let mut state = ClientState::new(2);
        let now = Instant::now();
        state.produce(reading(1));
        state.next_to_send(now);
        state.produce(reading(2));
        let produced = state.produce(reading(3));
        assert_eq!(
            produced,
            Produced {
                seq: 3,
                dropped: Some(1)
            }
        );
        assert_eq!(state.in_flight(), 0);
        assert_eq!(state.pending(), 2);
        assert_eq!(state.counters().dropped, 1);
        // A late ack for the dropped reading acknowledges nothing else.
        assert!(state.on_ack(1, false, now).is_empty());
    }

    #[test]
    fn restored_readings_keep_their_numbers_and_numbering_continues() {
        let mut state = ClientState::new(10);
        state.restore(7, reading(7), 9);
        state.restore(8, reading(8), 9);
        assert_eq!(state.produce(reading(9)).seq, 9);
        let now = Instant::now();
        let order: Vec<u64> =
            std::iter::from_fn(|| state.next_to_send(now).map(|o| o.seq)).collect();
        assert_eq!(order, vec![7, 8, 9]);
        assert_eq!(seqs(&state.on_ack(8, false, now)), vec![7, 8]);
    }

    #[test]
    fn dropping_in_flight_and_waiting_readings_keeps_the_window_right() {
        let mut state = ClientState::new(10);
        let now = Instant::now();
        for v in 1..=4 {
            state.produce(reading(v));
        }
        state.next_to_send(now);
        state.next_to_send(now);
        assert_eq!(state.drop_seqs(&[1, 3]), 2);
        assert_eq!(state.in_flight(), 1);
        assert_eq!(state.next_to_send(now).map(|o| o.seq), Some(4));
        assert_eq!(state.counters().dropped, 2);
    }

    #[test]
    fn giving_up_reports_each_unacked_reading_once() {
        let mut state = ClientState::new(10);
        let t0 = Instant::now();
        for v in 1..=3 {
            state.produce(reading(v));
        }
        state.next_to_send(t0);
        let timeout = Duration::from_secs(1);
        assert_eq!(state.check_timeouts(t0 + timeout, timeout), vec![1]);
        // 1 was already reported by its timeout; 2 and 3 are lost now.
        assert_eq!(state.give_up(), vec![2, 3]);
        assert_eq!(state.counters().timed_out, 3);
        assert!(state.give_up().is_empty());
        assert_eq!(
            state.pending(),
            3,
            "still kept (a spool keeps them for the next run)"
        );
    }

    #[test]
    fn rejected_reading_is_not_counted_as_acked() {
        let mut state = ClientState::new(10);
        let now = Instant::now();
        state.produce(reading(1));
        state.next_to_send(now);
        assert!(state.on_ack(1, true, now).is_empty());
        assert_eq!(state.counters().rejected, 1);
        assert_eq!(state.counters().acked, 0);
        assert_eq!(state.pending(), 0);
    }
}
