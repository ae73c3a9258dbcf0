//! The client's delivery state, with no I/O: which readings wait, which are in flight, which
//! were acknowledged or timed out. Retry and loss logic is tested here without sockets.
//!
//! Readings are numbered in the order they are produced and kept, in that order, until the
//! server acknowledges them. The `sync` token sent after a reading is its sequence number,
//! and an `ack` is a barrier: `ack N` covers every reading up to N sent on that connection.
//!
//! Link reports (`--link-report`) travel in the same queue, acked and spooled like any
//! reading, but are counted apart ([`ClientState::link_counters`]): the user's counters,
//! summary and `--count` stay about the user's readings. Functions that hand back sequence
//! numbers for printing hand back the user's readings only.

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
    /// Its latest send got no reply within the reply timeout (reported once per send).
    pub late: bool,
    /// Some send of it got no reply within the reply timeout (already reported as such).
    pub ever_late: bool,
    /// Dropped on purpose (spool limits) while in flight: kept until its connection ends, so
    /// the replies still line up with the readings sent (legacy replies carry no token).
    pub doomed: bool,
    /// A link report, counted in [`ClientState::link_counters`], not in the user's.
    pub link: bool,
}

/// A reading the server acknowledged.
#[derive(Debug, Clone)]
pub struct Acked {
    pub seq: u64,
    pub reading: Reading,
    pub rtt: Duration,
    /// It was sent more than once (after a reconnect).
    pub resent: bool,
    /// Its reply had timed out before (reported then) and this ack came after a resend.
    pub was_late: bool,
    /// A link report (not one of the user's readings).
    pub link: bool,
}

/// What an `ack` did: the readings it acknowledged, and how far it reached.
#[derive(Debug, Clone, Default)]
pub struct AckOutcome {
    /// The readings stored (a rejected one is not among them).
    pub acked: Vec<Acked>,
    /// The last reading the ack took off the queue (stored or rejected): the spool may
    /// forget everything up to it, never beyond.
    pub through: Option<u64>,
    /// The token is beyond every reading ever sent: the server acks what it never got.
    pub beyond_sent: bool,
}

/// Totals over the whole run.
///
/// Each reading produced has one final outcome: `acked`, `rejected`, `dropped` or
/// `unacked_at_exit` (so `produced` is their sum once the run is over). `timeouts` is not an
/// outcome: a reading whose reply timed out is resent and may well be acked after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Readings produced (each counted once, however often sent).
    pub produced: u64,
    /// Readings written to a connection for the first time (resends are `resends`).
    pub sent: u64,
    pub acked: u64,
    /// Readings the server acknowledged as rejected (not stored).
    pub rejected: u64,
    /// Readings dropped on purpose: more than `max_pending` waiting, or the spool's limits.
    pub dropped: u64,
    /// Readings still unacknowledged when the run ended (kept in the spool, if any).
    pub unacked_at_exit: u64,
    /// Sends whose reply did not come within the reply timeout.
    pub timeouts: u64,
    /// Writes of a reading after the first.
    pub resends: u64,
}

impl Counters {
    /// Readings never acknowledged as stored: rejected, dropped, or unacked at exit.
    pub fn lost(&self) -> u64 {
        self.rejected + self.dropped + self.unacked_at_exit
    }
}

/// What [`ClientState::produce`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    pub seq: u64,
    /// The oldest reading not in flight, dropped to make room.
    pub dropped: Option<u64>,
    /// Every kept reading was in flight: they were all taken back to be sent again, so the
    /// caller must close the connection (a reply to one of them would be misread).
    pub retry: bool,
}

/// The delivery state machine.
#[derive(Debug)]
pub struct ClientState {
    next_seq: u64,
    /// The highest sequence number ever written to a connection.
    last_sent: Option<u64>,
    /// Unacknowledged readings in sequence order; the first `sent` of them are in flight.
    queue: VecDeque<Outstanding>,
    sent: usize,
    /// Link reports in `queue`: the user's pending count without a scan of the queue.
    links_kept: usize,
    max_pending: usize,
    counters: Counters,
    /// The same totals for link reports.
    link_counters: Counters,
}

impl ClientState {
    pub fn new(max_pending: usize) -> Self {
        ClientState {
            next_seq: 1,
            last_sent: None,
            queue: VecDeque::new(),
            sent: 0,
            links_kept: 0,
            max_pending: max_pending.max(1),
            counters: Counters::default(),
            link_counters: Counters::default(),
        }
    }

    /// Totals of the user's readings.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Totals of the link reports.
    pub fn link_counters(&self) -> Counters {
        self.link_counters
    }

    fn counters_of(&mut self, link: bool) -> &mut Counters {
        if link {
            &mut self.link_counters
        } else {
            &mut self.counters
        }
    }

    /// Whether `seq`, still kept, is a link report (`None`: not kept).
    pub fn is_link(&self, seq: u64) -> Option<bool> {
        // The queue is in sequence order.
        let index = self.queue.binary_search_by_key(&seq, |o| o.seq).ok()?;
        Some(self.queue[index].link)
    }

    /// User readings not yet acknowledged (link reports left out).
    pub fn pending_user(&self) -> usize {
        self.queue.len() - self.links_kept
    }

    /// Link reports not yet acknowledged.
    pub fn pending_link(&self) -> usize {
        self.links_kept
    }

    /// Keep `outstanding` at the back of the queue.
    fn push(&mut self, outstanding: Outstanding) {
        self.links_kept += usize::from(outstanding.link);
        self.queue.push_back(outstanding);
    }

    /// Take the reading at `index` off the queue (the caller fixes `sent`).
    fn remove_at(&mut self, index: usize) -> Option<Outstanding> {
        let gone = self.queue.remove(index)?;
        self.links_kept -= usize::from(gone.link);
        Some(gone)
    }

    /// Readings not yet acknowledged (in flight or waiting).
    pub fn pending(&self) -> usize {
        self.queue.len()
    }

    pub fn in_flight(&self) -> usize {
        self.sent
    }

    /// One of the user's readings is in flight and its reply not yet late.
    pub fn user_reply_due(&self) -> bool {
        self.queue
            .iter()
            .take(self.sent)
            .any(|o| !o.link && !o.late && o.sent_at.is_some())
    }

    /// The first reading sent and not yet acknowledged, if any.
    pub fn oldest_in_flight(&self) -> Option<u64> {
        self.queue.front().filter(|_| self.sent > 0).map(|o| o.seq)
    }

    /// Keep a new reading until it is acknowledged. When full, drops the oldest reading
    /// that is not in flight: dropping one in flight would shift every later reply by one
    /// in legacy mode. If all are in flight, they are taken back first (`retry`).
    pub fn produce(&mut self, reading: Reading) -> Produced {
        self.produce_as(reading, false)
    }

    /// [`ClientState::produce`] for a user reading (`link` false) or a link report.
    ///
    /// A link report never costs a user reading nor a connection: on a full queue it takes
    /// the place of the oldest link report not in flight, or, if there is none, is dropped
    /// itself (then [`ClientState::is_link`] of its `seq` is `None`). Either way the drop is
    /// counted in the link counters, not returned in `dropped`, and `retry` stays false.
    pub fn produce_as(&mut self, reading: Reading, link: bool) -> Produced {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.counters_of(link).produced += 1;
        let mut dropped = None;
        let mut retry = false;
        if self.queue.len() >= self.max_pending {
            if link {
                let unsent_link = (self.sent..self.queue.len()).find(|&i| self.queue[i].link);
                self.link_counters.dropped += 1;
                match unsent_link {
                    Some(index) => {
                        self.remove_at(index);
                    }
                    None => {
                        return Produced {
                            seq,
                            dropped: None,
                            retry: false,
                        }
                    }
                }
            } else {
                if self.sent == self.queue.len() {
                    self.on_disconnect_inner();
                    retry = true;
                }
                if let Some(oldest) = self.remove_at(self.sent) {
                    self.counters_of(oldest.link).dropped += 1;
                    dropped = (!oldest.link).then_some(oldest.seq);
                }
            }
        }
        self.push(Outstanding {
            seq,
            reading,
            sent_at: None,
            sends: 0,
            late: false,
            ever_late: false,
            doomed: false,
            link,
        });
        Produced {
            seq,
            dropped,
            retry,
        }
    }

    /// The sequence number the next produced reading will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Take back a reading recovered from the spool under its original number; numbering
    /// continues after `next_seq` (which the spool remembers even for acked readings).
    pub fn restore(&mut self, seq: u64, reading: Reading, next_seq: u64) {
        self.restore_as(seq, reading, next_seq, false);
    }

    /// [`ClientState::restore`] for a user reading (`link` false) or a link report.
    pub fn restore_as(&mut self, seq: u64, reading: Reading, next_seq: u64, link: bool) {
        self.next_seq = self.next_seq.max(next_seq).max(seq + 1);
        self.counters_of(link).produced += 1;
        self.push(Outstanding {
            seq,
            reading,
            sent_at: None,
            sends: 0,
            late: false,
            ever_late: false,
            doomed: false,
            link,
        });
    }

    /// Continue numbering at `next_seq` at least (the spool never reuses a number).
    pub fn restore_next_seq(&mut self, next_seq: u64) {
        self.next_seq = self.next_seq.max(next_seq);
    }

    /// Forget readings dropped on purpose (spool limits); returns those dropped now. One in
    /// flight is only marked: it is dropped when its connection ends (see
    /// [`ClientState::on_disconnect`]), or acked if its ack comes first.
    pub fn drop_seqs(&mut self, seqs: &[u64]) -> Vec<u64> {
        let mut dropped = Vec::new();
        for outstanding in self.queue.iter_mut().take(self.sent) {
            if seqs.contains(&outstanding.seq) {
                outstanding.doomed = true;
            }
        }
        let mut index = self.sent;
        while index < self.queue.len() {
            if seqs.contains(&self.queue[index].seq) {
                if let Some(gone) = self.remove_at(index) {
                    self.counters_of(gone.link).dropped += 1;
                    if !gone.link {
                        dropped.push(gone.seq);
                    }
                }
            } else {
                index += 1;
            }
        }
        dropped
    }

    /// The next reading to write, marked as sent at `now`.
    pub fn next_to_send(&mut self, now: Instant) -> Option<&Outstanding> {
        let next = self.queue.get_mut(self.sent)?;
        next.sent_at = Some(now);
        next.late = false;
        next.sends += 1;
        self.last_sent = self.last_sent.max(Some(next.seq));
        let counters = if next.link {
            &mut self.link_counters
        } else {
            &mut self.counters
        };
        if next.sends > 1 {
            counters.resends += 1;
        } else {
            counters.sent += 1;
        }
        self.sent += 1;
        Some(next)
    }

    /// `ack token` arrived: every sent reading up to `token` is stored. With `rejected`, the
    /// server refused the reading the ack is for (it answered `error` for its line).
    pub fn on_ack(&mut self, token: u64, rejected: bool, now: Instant) -> AckOutcome {
        let mut acked = Vec::new();
        let mut through = None;
        let beyond_sent = self.last_sent.is_none_or(|last| token > last);
        while self.sent > 0 {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.seq > token {
                break;
            }
            let Some(done) = self.remove_at(0) else {
                break;
            };
            self.sent -= 1;
            through = Some(done.seq);
            if rejected && done.seq == token {
                self.counters_of(done.link).rejected += 1;
                continue;
            }
            self.counters_of(done.link).acked += 1;
            let rtt = done
                .sent_at
                .map(|at| now.saturating_duration_since(at))
                .unwrap_or_default();
            acked.push(Acked {
                seq: done.seq,
                rtt,
                resent: done.sends > 1,
                was_late: done.ever_late,
                link: done.link,
                reading: done.reading,
            });
        }
        AckOutcome {
            acked,
            through,
            beyond_sent,
        }
    }

    /// Readings in flight longer than `timeout`, each reported once per send (link reports
    /// included: see [`ClientState::is_link`]).
    pub fn check_timeouts(&mut self, now: Instant, timeout: Duration) -> Vec<u64> {
        let mut late = Vec::new();
        for outstanding in self.queue.iter_mut().take(self.sent) {
            let Some(sent_at) = outstanding.sent_at else {
                continue;
            };
            if !outstanding.late && now.saturating_duration_since(sent_at) >= timeout {
                outstanding.late = true;
                outstanding.ever_late = true;
                if outstanding.link {
                    self.link_counters.timeouts += 1;
                } else {
                    self.counters.timeouts += 1;
                }
                late.push(outstanding.seq);
            }
        }
        late
    }

    /// When the next in-flight reading times out, if any is waiting.
    pub fn next_deadline(&self, timeout: Duration) -> Option<Instant> {
        self.queue
            .iter()
            .take(self.sent)
            .filter(|o| !o.late)
            .filter_map(|o| o.sent_at)
            .min()
            .map(|at| at + timeout)
    }

    /// The connection ended: everything in flight is sent again on the next one, except
    /// readings dropped on purpose while in flight, which go now (returned).
    pub fn on_disconnect(&mut self) -> Vec<u64> {
        self.on_disconnect_inner()
    }

    fn on_disconnect_inner(&mut self) -> Vec<u64> {
        let mut dropped = Vec::new();
        let mut index = 0;
        while index < self.sent {
            if self.queue[index].doomed {
                if let Some(gone) = self.remove_at(index) {
                    self.counters_of(gone.link).dropped += 1;
                    if !gone.link {
                        dropped.push(gone.seq);
                    }
                }
                self.sent -= 1;
            } else {
                self.queue[index].sent_at = None;
                index += 1;
            }
        }
        self.sent = 0;
        dropped
    }

    /// At exit: every reading still unacknowledged is lost (counted once, however often
    /// this is called). Returns the user's readings whose reply never timed out (not
    /// reported yet).
    pub fn give_up(&mut self) -> Vec<u64> {
        self.link_counters.unacked_at_exit = self.pending_link() as u64;
        self.counters.unacked_at_exit = self.pending_user() as u64;
        self.queue
            .iter()
            .filter(|o| !o.ever_late && !o.link)
            .map(|o| o.seq)
            .collect()
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
        let acked = state.on_ack(2, false, t0 + Duration::from_millis(5)).acked;
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
        assert_eq!(seqs(&state.on_ack(2, false, now).acked), vec![1]);
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
        assert_eq!(state.counters().timeouts, 1);

        state.on_disconnect();
        assert_eq!(state.in_flight(), 0);
        let t1 = t0 + timeout * 3;
        let resent = state.next_to_send(t1).map(|o| (o.seq, o.sends));
        assert_eq!(resent, Some((1, 2)));
        let acked = state.on_ack(1, false, t1 + Duration::from_millis(1)).acked;
        assert!(acked[0].resent && acked[0].was_late);
        assert_eq!(acked[0].rtt, Duration::from_millis(1));
        assert_eq!(state.counters().resends, 1);
        // Late, then acked: a timeout, not a loss.
        assert_eq!(state.counters().acked, 1);
        assert_eq!(state.counters().lost(), 0);
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
    fn full_queue_drops_the_oldest_unsent_reading_and_counts_it() {
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
                dropped: Some(2),
                retry: false,
            }
        );
        assert_eq!(state.in_flight(), 1);
        assert_eq!(state.pending(), 2);
        assert_eq!(state.counters().dropped, 1);
        // The reply in flight still belongs to reading 1 (legacy: any reply, window 1).
        assert_eq!(state.oldest_in_flight(), Some(1));
        let acked = state.on_ack(1, false, now).acked;
        assert_eq!(seqs(&acked), vec![1]);
        assert_eq!(acked[0].reading.timestamp_ns, Some(1));
        assert_eq!(state.next_to_send(now).map(|o| o.seq), Some(3));
    }

    /// Legacy mode (window 1, a reply carries no token): a full queue never drops the reading
    /// in flight, so each reply stays matched to the reading it answers.
    #[test]
    fn legacy_window_keeps_replies_matched_when_the_queue_is_full() {
        let mut state = ClientState::new(3);
        let now = Instant::now();
        // What went out on the connection, in order: each reply answers the first of it.
        let mut wire = std::collections::VecDeque::new();
        let send = |state: &mut ClientState, wire: &mut std::collections::VecDeque<u64>| {
            if state.in_flight() == 0 {
                if let Some(next) = state.next_to_send(now) {
                    wire.push_back(next.seq);
                }
            }
        };
        for v in 1..=10 {
            state.produce(reading(v));
            send(&mut state, &mut wire);
            // Every third value, the reply to what was sent arrives.
            if v % 3 == 0 {
                let answered = wire.pop_front().expect("something was sent");
                assert_eq!(state.oldest_in_flight(), Some(answered), "v={v}");
                let acked = state.on_ack(answered, false, now).acked;
                assert_eq!(seqs(&acked), vec![answered]);
                send(&mut state, &mut wire);
            }
        }
        let c = state.counters();
        assert!(c.dropped > 0, "the queue filled: {c:?}");
        assert_eq!(c.acked + c.dropped + state.pending() as u64, 10, "{c:?}");
    }

    #[test]
    fn a_full_queue_of_readings_in_flight_is_taken_back_before_one_is_dropped() {
        let mut state = ClientState::new(2);
        let now = Instant::now();
        state.produce(reading(1));
        state.produce(reading(2));
        state.next_to_send(now);
        state.next_to_send(now);
        let produced = state.produce(reading(3));
        assert_eq!(
            produced,
            Produced {
                seq: 3,
                dropped: Some(1),
                retry: true,
            }
        );
        assert_eq!(state.in_flight(), 0, "the caller closes the connection");
        let order: Vec<u64> =
            std::iter::from_fn(|| state.next_to_send(now).map(|o| o.seq)).collect();
        assert_eq!(order, vec![2, 3]);
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
        assert_eq!(seqs(&state.on_ack(8, false, now).acked), vec![7, 8]);
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
        // 3 waits: dropped now. 1 is in flight: kept until its connection ends.
        assert_eq!(state.drop_seqs(&[1, 3]), vec![3]);
        assert_eq!(state.in_flight(), 2);
        assert_eq!(state.oldest_in_flight(), Some(1));
        assert_eq!(state.next_to_send(now).map(|o| o.seq), Some(4));
        assert_eq!(state.counters().dropped, 1);
        assert_eq!(state.on_disconnect(), vec![1]);
        assert_eq!(state.counters().dropped, 2);
        let order: Vec<u64> =
            std::iter::from_fn(|| state.next_to_send(now).map(|o| o.seq)).collect();
        assert_eq!(order, vec![2, 4]);
    }

    #[test]
    fn a_reading_dropped_in_flight_and_then_acked_counts_as_acked() {
        let mut state = ClientState::new(10);
        let now = Instant::now();
        state.produce(reading(1));
        state.next_to_send(now);
        assert!(state.drop_seqs(&[1]).is_empty());
        assert_eq!(seqs(&state.on_ack(1, false, now).acked), vec![1]);
        assert!(state.on_disconnect().is_empty());
        let c = state.counters();
        assert_eq!((c.acked, c.dropped), (1, 0));
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
        // 1 was already reported by its timeout; 2 and 3 are reported now. All three are
        // lost, each counted once.
        assert_eq!(state.give_up(), vec![2, 3]);
        assert_eq!(state.counters().timeouts, 1);
        assert_eq!(state.counters().lost(), 3);
        state.give_up();
        assert_eq!(state.counters().lost(), 3);
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
        assert!(state.on_ack(1, true, now).acked.is_empty());
        assert_eq!(state.counters().rejected, 1);
        assert_eq!(state.counters().acked, 0);
        assert_eq!(state.pending(), 0);
    }

    #[test]
    fn a_resent_reading_times_out_again_on_its_new_send() {
        let mut state = ClientState::new(10);
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        state.produce(reading(1));
        state.next_to_send(t0);
        assert_eq!(state.check_timeouts(t0 + timeout, timeout), vec![1]);
        state.on_disconnect();
        let t1 = t0 + timeout * 2;
        state.next_to_send(t1);
        assert_eq!(state.next_deadline(timeout), Some(t1 + timeout));
        assert_eq!(state.check_timeouts(t1 + timeout, timeout), vec![1]);
        assert_eq!(state.counters().timeouts, 2);
        // Still one reading, lost once if it never gets its ack.
        assert!(
            state.give_up().is_empty(),
            "already reported by its timeouts"
        );
        assert_eq!(state.counters().lost(), 1);
    }

    #[test]
    fn every_reading_has_exactly_one_final_outcome() {
        let mut state = ClientState::new(3);
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        for v in 1..=6 {
            state.produce(reading(v));
        }
        // 1..=3 dropped by max_pending; 4 times out, is resent and acked; 5 rejected; 6 left.
        state.next_to_send(t0);
        assert_eq!(state.check_timeouts(t0 + timeout, timeout), vec![4]);
        state.on_disconnect();
        state.next_to_send(t0 + timeout);
        state.next_to_send(t0 + timeout);
        assert_eq!(seqs(&state.on_ack(4, false, t0 + timeout).acked), vec![4]);
        assert!(state.on_ack(5, true, t0 + timeout).acked.is_empty());
        state.give_up();
        let c = state.counters();
        assert_eq!(
            (c.dropped, c.acked, c.rejected, c.unacked_at_exit),
            (3, 1, 1, 1)
        );
        assert_eq!(c.timeouts, 1);
        assert_eq!(c.lost(), 5);
        assert_eq!(c.acked + c.lost(), c.produced);
    }

    #[test]
    fn an_ack_reaches_only_as_far_as_what_was_sent() {
        let mut state = ClientState::new(10);
        let now = Instant::now();
        for v in 1..=3 {
            state.produce(reading(v));
        }
        state.next_to_send(now);
        let outcome = state.on_ack(99, false, now);
        assert_eq!(seqs(&outcome.acked), vec![1]);
        assert_eq!(outcome.through, Some(1), "2 and 3 were never sent");
        assert!(outcome.beyond_sent);
        state.next_to_send(now);
        let outcome = state.on_ack(2, true, now);
        assert!(outcome.acked.is_empty());
        assert_eq!(outcome.through, Some(2), "a rejected reading is done too");
        assert!(!outcome.beyond_sent);
        let outcome = state.on_ack(2, false, now);
        assert_eq!(outcome.through, None, "a repeated ack reaches nothing");
        assert!(!outcome.beyond_sent);
    }

    /// A link report on a full queue costs neither a user reading nor a connection: with
    /// the user's readings waiting or all in flight, the report itself is dropped (counted).
    #[test]
    fn a_link_report_on_a_full_queue_never_drops_a_user_reading_nor_forces_a_retry() {
        let now = Instant::now();
        for in_flight in [0, 1, 2] {
            let mut state = ClientState::new(2);
            state.produce(reading(1));
            state.produce(reading(2));
            for _ in 0..in_flight {
                state.next_to_send(now);
            }
            let before = state.counters();
            let produced = state.produce_as(reading(3), true);
            assert_eq!(
                produced,
                Produced {
                    seq: 3,
                    dropped: None,
                    retry: false,
                },
                "{in_flight} in flight"
            );
            assert_eq!(state.counters(), before, "{in_flight} in flight");
            assert_eq!(state.is_link(3), None, "the report itself was dropped");
            assert_eq!(state.in_flight(), in_flight);
            assert_eq!((state.pending_user(), state.pending_link()), (2, 0));
            let links = state.link_counters();
            assert_eq!((links.produced, links.dropped), (1, 1));
            assert_eq!(links.produced, links.acked + links.lost());
        }
    }

    /// On a full queue a new link report takes the place of the oldest one not yet sent.
    #[test]
    fn a_link_report_on_a_full_queue_replaces_the_oldest_unsent_report() {
        let now = Instant::now();
        let mut state = ClientState::new(3);
        state.produce(reading(1));
        state.produce_as(reading(2), true);
        state.produce_as(reading(3), true);
        state.next_to_send(now);
        let produced = state.produce_as(reading(4), true);
        assert_eq!((produced.dropped, produced.retry), (None, false));
        assert_eq!(state.is_link(2), None, "the oldest unsent report went");
        assert_eq!(state.is_link(3), Some(true));
        assert_eq!(state.is_link(4), Some(true));
        assert_eq!((state.pending_user(), state.pending_link()), (1, 2));
        assert_eq!(state.counters().dropped, 0);
        assert_eq!(state.link_counters().dropped, 1);
        let order: Vec<u64> =
            std::iter::from_fn(|| state.next_to_send(now).map(|o| o.seq)).collect();
        assert_eq!(order, vec![3, 4]);
    }

    /// Link reports and user readings share the queue and the acks, but each is counted
    /// apart: produced, sent, acked, rejected, timeouts and what is left at exit.
    #[test]
    fn link_reports_and_user_readings_are_counted_apart() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut state = ClientState::new(10);
        state.produce(reading(1));
        state.produce_as(reading(2), true);
        state.produce(reading(3));
        state.produce_as(reading(4), true);
        state.produce_as(reading(5), true);
        state.produce(reading(6));
        assert_eq!((state.pending_user(), state.pending_link()), (3, 3));
        assert_eq!(state.is_link(1), Some(false));
        assert_eq!(state.is_link(2), Some(true));
        for _ in 0..4 {
            state.next_to_send(t0);
        }
        assert_eq!((state.counters().sent, state.link_counters().sent), (2, 2));

        // One ack takes a user reading and a report; a rejected report is the link's.
        let acked = state.on_ack(2, false, t0).acked;
        assert_eq!(
            acked.iter().map(|a| (a.seq, a.link)).collect::<Vec<_>>(),
            vec![(1, false), (2, true)]
        );
        // This ack stores user reading 3 and rejects report 4.
        let acked = state.on_ack(4, true, t0).acked;
        assert_eq!(seqs(&acked), vec![3]);
        let (user, links) = (state.counters(), state.link_counters());
        assert_eq!((user.acked, user.rejected), (2, 0));
        assert_eq!((links.acked, links.rejected), (1, 1));
        assert_eq!((state.pending_user(), state.pending_link()), (1, 1));

        // A report's timeout is the link's too.
        state.next_to_send(t0);
        assert_eq!(state.check_timeouts(t0 + timeout, timeout), vec![5]);
        assert_eq!(state.counters().timeouts, 0);
        assert_eq!(state.link_counters().timeouts, 1);

        // At exit: the report and the user reading left are each counted on their side,
        // and only the user's reading is handed back to be printed.
        assert_eq!(state.give_up(), vec![6]);
        let (user, links) = (state.counters(), state.link_counters());
        assert_eq!((user.unacked_at_exit, links.unacked_at_exit), (1, 1));
        assert_eq!(user.produced, user.acked + user.lost());
        assert_eq!(links.produced, links.acked + links.lost());
        assert_eq!((user.produced, links.produced), (3, 3));
    }

    /// Restored and dropped link reports keep the user's pending count right.
    #[test]
    fn pending_counts_follow_restores_drops_and_disconnects() {
        let now = Instant::now();
        let mut state = ClientState::new(10);
        state.restore_as(1, reading(1), 3, true);
        state.restore(2, reading(2), 3);
        state.produce_as(reading(3), true);
        assert_eq!((state.pending_user(), state.pending_link()), (1, 2));
        state.next_to_send(now);
        assert!(
            state.drop_seqs(&[1, 3]).is_empty(),
            "only reports: none printed"
        );
        assert_eq!((state.pending_user(), state.pending_link()), (1, 1));
        assert!(state.on_disconnect().is_empty());
        assert_eq!((state.pending_user(), state.pending_link()), (1, 0));
        assert_eq!(state.link_counters().dropped, 2);
        assert_eq!(state.counters().dropped, 0);
    }
}
