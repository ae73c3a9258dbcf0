//! The figures of a probe run, with no I/O: replies go into a [`Tally`] as they arrive,
//! and [`Tally::summary`] turns them into the [`Summary`] printed and sent with `--store`.
//!
//! - Loss is split where it happened: upstream = probes the server never received (from
//!   the server's own count of distinct seqs), downstream = received by the server, reply
//!   never came. Probes the server's rate limit dropped are counted apart: they are the
//!   server's doing, not the network's.
//! - Within a session the server's counts only grow, so replies sent later (by the
//!   server's clock) carry counts at least as high. A reply that breaks this means the
//!   server evicted the session and counted again from 0: the split is then unknown.
//! - IPDV (RFC 3393) is the difference between the delays of consecutive probes (seq `i`
//!   and `i-1`, both answered), reported as its absolute value, as irtt reports it, for the
//!   round trip and each way.
//! - Reordering (RFC 4737's notion, simplified): a reply whose seq is lower than the
//!   highest seq already received.

use serde::Serialize;

/// One answered probe's delays, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Round trip on the client's monotonic clock, less the server's processing time.
    pub rtt_ns: i64,
    /// Server receive time − client send time (wall clocks: assumes them synchronised).
    pub send_delay_ns: i64,
    /// Client receive time − server send time (likewise).
    pub receive_delay_ns: i64,
}

/// What a reply was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The first reply for its seq.
    New,
    /// A seq already answered (the network duplicated a datagram).
    Duplicate,
    /// A seq never sent: not counted.
    Unknown,
}

/// The server's counts as one reply carried them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerCount {
    /// Distinct probes of the session the server had received.
    pub received: u64,
    /// Probes of the session its rate limit had dropped (0 from a server too old to say).
    pub rate_limited: u64,
    /// The server's send time of the reply (its wall clock, ns): orders the counts.
    pub sent_ns: i64,
}

/// The replies of a run, by seq.
#[derive(Debug, Clone)]
pub struct Tally {
    samples: Vec<Option<Sample>>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    highest: Option<u64>,
    server_received: u64,
    rate_limited: u64,
    /// (server send time, count) of the reply sent last, and of the highest count.
    latest: Option<(i64, u64)>,
    peak: Option<(i64, u64)>,
    /// A count went down: the server evicted the session at least once.
    evicted: bool,
    /// A count request was answered, so the split does not rest on replies alone.
    count_confirmed: bool,
    max_rtt_ns: i64,
}

impl Tally {
    /// A tally for seqs `0..planned`.
    pub fn new(planned: usize) -> Self {
        Tally {
            samples: vec![None; planned],
            received: 0,
            duplicates: 0,
            reordered: 0,
            highest: None,
            server_received: 0,
            rate_limited: 0,
            latest: None,
            peak: None,
            evicted: false,
            count_confirmed: false,
            max_rtt_ns: 0,
        }
    }

    /// Record the reply to `seq`, which carried the server's `count`.
    pub fn record(&mut self, seq: u64, sample: Sample, count: ServerCount) -> Arrival {
        let Some(index) = usize::try_from(seq)
            .ok()
            .filter(|i| *i < self.samples.len())
        else {
            return Arrival::Unknown;
        };
        self.note_server_count(count);
        let slot = &mut self.samples[index];
        if slot.is_some() {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        *slot = Some(sample);
        self.received += 1;
        self.max_rtt_ns = self.max_rtt_ns.max(sample.rtt_ns);
        match self.highest {
            Some(highest) if seq < highest => self.reordered += 1,
            _ => self.highest = Some(seq),
        }
        Arrival::New
    }

    /// The server's counts of this session, from a reply (or a duplicate of one): counts
    /// only grow, so the largest seen is the latest, unless the session was evicted.
    pub fn note_server_count(&mut self, count: ServerCount) {
        let this = (count.sent_ns, count.received);
        // Sent later with a lower count, or earlier with a higher one: a reset.
        let disagrees =
            |(t, c): (i64, u64)| (t < this.0 && c > this.1) || (t > this.0 && c < this.1);
        if self.latest.is_some_and(disagrees) || self.peak.is_some_and(disagrees) {
            self.evicted = true;
        }
        if self.latest.is_none_or(|(t, _)| this.0 >= t) {
            self.latest = Some(this);
        }
        if self.peak.is_none_or(|(_, c)| this.1 > c) {
            self.peak = Some(this);
        }
        self.server_received = self.server_received.max(count.received);
        self.rate_limited = self.rate_limited.max(count.rate_limited);
    }

    /// The answer to a count request: the server's final word on the session.
    pub fn note_final_count(&mut self, count: ServerCount) {
        self.note_server_count(count);
        self.count_confirmed = true;
    }

    /// Distinct probes answered.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether `seq` has been answered.
    pub fn answered(&self, seq: u64) -> bool {
        usize::try_from(seq)
            .ok()
            .and_then(|i| self.samples.get(i))
            .is_some_and(Option::is_some)
    }

    /// The largest round trip so far (ns).
    pub fn max_rtt_ns(&self) -> i64 {
        self.max_rtt_ns
    }

    /// The run's figures, `sent` probes having been sent, `late` of them more than an
    /// interval after their scheduled time.
    pub fn summary(&self, sent: u64, late: u64) -> Summary {
        let answered: Vec<Sample> = self.samples.iter().flatten().copied().collect();
        let pick = |f: fn(&Sample) -> i64| answered.iter().map(f).collect::<Vec<_>>();
        let mut ipdv = (Vec::new(), Vec::new(), Vec::new());
        for pair in self.samples.windows(2) {
            if let [Some(a), Some(b)] = pair {
                // abs_diff: a hostile reply's extreme delays must not overflow.
                let gap = |x: i64, y: i64| i64::try_from(x.abs_diff(y)).unwrap_or(i64::MAX);
                ipdv.0.push(gap(b.rtt_ns, a.rtt_ns));
                ipdv.1.push(gap(b.send_delay_ns, a.send_delay_ns));
                ipdv.2.push(gap(b.receive_delay_ns, a.receive_delay_ns));
            }
        }
        // A server count below what we received can only come from an evicted session
        // (the server keeps a bounded table): then what we received is the better bound.
        let server_received = self.server_received.max(self.received);
        let rate_limited = self.rate_limited.min(sent.saturating_sub(server_received));
        // After an eviction the counts are "since the eviction": no split can be trusted.
        let split = (!self.evicted).then(|| {
            let lost_up = sent
                .saturating_sub(server_received)
                .saturating_sub(rate_limited);
            (lost_up, server_received.saturating_sub(self.received))
        });
        Summary {
            sent,
            received: self.received,
            server_received,
            rate_limited,
            lost_up: split.map(|(up, _)| up),
            lost_down: split.map(|(_, down)| down),
            loss_up_percent: split.map(|(up, _)| percent(up, sent)),
            loss_down_percent: split.map(|(_, down)| percent(down, server_received)),
            loss_percent: percent(sent.saturating_sub(self.received), sent),
            session_evicted: self.evicted,
            server_count_confirmed: self.count_confirmed,
            duplicates: self.duplicates,
            reordered: self.reordered,
            late_sends: late,
            rtt_ms: Spread::of(pick(|s| s.rtt_ns)),
            send_delay_ms: Spread::of(pick(|s| s.send_delay_ns)),
            receive_delay_ms: Spread::of(pick(|s| s.receive_delay_ns)),
            ipdv_ms: Spread::of(ipdv.0),
            send_ipdv_ms: Spread::of(ipdv.1),
            receive_ipdv_ms: Spread::of(ipdv.2),
        }
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A distribution in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub mean: f64,
    pub median: f64,
    pub max: f64,
    /// Sample standard deviation (0 for one value).
    pub stddev: f64,
    /// Nearest-rank 99th percentile.
    pub p99: f64,
}

impl Spread {
    /// The spread of `values_ns`, in ms; `None` when there are none.
    pub fn of(mut values_ns: Vec<i64>) -> Option<Spread> {
        if values_ns.is_empty() {
            return None;
        }
        values_ns.sort_unstable();
        let n = values_ns.len();
        let ms = |ns: f64| ns / 1e6;
        let mean = values_ns.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
        let variance = if n > 1 {
            values_ns
                .iter()
                .map(|v| (*v as f64 - mean).powi(2))
                .sum::<f64>()
                / (n - 1) as f64
        } else {
            0.0
        };
        let median = if n % 2 == 1 {
            values_ns[n / 2] as f64
        } else {
            (values_ns[n / 2 - 1] as f64 + values_ns[n / 2] as f64) / 2.0
        };
        let rank = (n * 99).div_ceil(100).clamp(1, n);
        Some(Spread {
            min: ms(values_ns[0] as f64),
            mean: ms(mean),
            median: ms(median),
            max: ms(values_ns[n - 1] as f64),
            stddev: ms(variance.sqrt()),
            p99: ms(values_ns[rank - 1] as f64),
        })
    }
}

/// A probe run's figures: the `summary` of `probe --json` (names fixed in the issue's
/// shared interfaces).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub sent: u64,
    /// Distinct probes answered.
    pub received: u64,
    /// Probes of the session the server received (its own count of distinct seqs).
    pub server_received: u64,
    /// Sent, dropped by the server's rate limit (`--udp-rate-per-ip`): not network loss.
    pub rate_limited: u64,
    /// Sent, never received by the server (rate-limited ones apart); `None` (JSON `null`)
    /// when the server evicted the session mid-run and the split is unknown.
    pub lost_up: Option<u64>,
    /// Received by the server, reply never came; `None` as for `lost_up`.
    pub lost_down: Option<u64>,
    /// Of `sent`.
    pub loss_up_percent: Option<f64>,
    /// Of `server_received`.
    pub loss_down_percent: Option<f64>,
    /// Either way, of `sent` (known even when the split is not).
    pub loss_percent: f64,
    /// The server's counts went down during the run: it evicted the session.
    pub session_evicted: bool,
    /// A final count request was answered; when not, the split rests on the counts the
    /// replies carried, and probes answered after the last reply that came are booked up.
    pub server_count_confirmed: bool,
    pub duplicates: u64,
    pub reordered: u64,
    /// Probes sent more than an interval after their scheduled time.
    pub late_sends: u64,
    pub rtt_ms: Option<Spread>,
    pub send_delay_ms: Option<Spread>,
    pub receive_delay_ms: Option<Spread>,
    /// IPDV of the round trip.
    pub ipdv_ms: Option<Spread>,
    pub send_ipdv_ms: Option<Spread>,
    pub receive_ipdv_ms: Option<Spread>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server count whose reply was sent at "time" `received` (counts grow with time).
    fn at(received: u64) -> ServerCount {
        ServerCount {
            received,
            rate_limited: 0,
            sent_ns: received as i64,
        }
    }

    fn sample(rtt_ms: i64, send_ms: i64, receive_ms: i64) -> Sample {
        Sample {
            rtt_ns: rtt_ms * 1_000_000,
            send_delay_ns: send_ms * 1_000_000,
            receive_delay_ns: receive_ms * 1_000_000,
        }
    }

    #[test]
    fn loss_is_split_upstream_and_downstream_by_the_servers_count() {
        // 10 sent, the server got 8, 6 replies came back.
        let mut tally = Tally::new(10);
        for seq in 0..6 {
            tally.record(seq, sample(40, 20, 20), at(seq + 1));
        }
        tally.note_final_count(at(8));
        let s = tally.summary(10, 0);
        assert_eq!((s.sent, s.received, s.server_received), (10, 6, 8));
        assert_eq!((s.lost_up, s.lost_down), (Some(2), Some(2)));
        assert_eq!(s.loss_up_percent, Some(20.0));
        assert_eq!(s.loss_down_percent, Some(25.0));
        assert!(s.server_count_confirmed);
        assert_eq!(s.loss_percent, 40.0);
    }

    #[test]
    fn ipdv_is_taken_over_consecutive_answered_probes_only() {
        let mut tally = Tally::new(5);
        // Round-trip delays 40, 42, (lost), 41, 45 ms; one way: 20/20, 23/19, -, 20/21, 25/20.
        tally.record(0, sample(40, 20, 20), at(1));
        tally.record(1, sample(42, 23, 19), at(2));
        tally.record(3, sample(41, 20, 21), at(4));
        tally.record(4, sample(45, 25, 20), at(5));
        let s = tally.summary(5, 0);
        // Pairs (0,1) and (3,4): |42-40| = 2, |45-41| = 4.
        let ipdv = s.ipdv_ms.expect("two pairs");
        assert_eq!((ipdv.min, ipdv.max, ipdv.mean), (2.0, 4.0, 3.0));
        let send = s.send_ipdv_ms.expect("two pairs");
        assert_eq!((send.min, send.max), (3.0, 5.0));
        let receive = s.receive_ipdv_ms.expect("two pairs");
        assert_eq!((receive.min, receive.max), (1.0, 1.0));
        let rtt = s.rtt_ms.expect("answered");
        assert_eq!((rtt.min, rtt.median, rtt.max), (40.0, 41.5, 45.0));
    }

    #[test]
    fn late_arrivals_are_reordered_and_repeats_are_duplicates() {
        let mut tally = Tally::new(4);
        assert_eq!(tally.record(0, sample(1, 0, 0), at(1)), Arrival::New);
        assert_eq!(tally.record(2, sample(1, 0, 0), at(3)), Arrival::New);
        assert_eq!(tally.record(1, sample(1, 0, 0), at(3)), Arrival::New);
        assert_eq!(tally.record(2, sample(1, 0, 0), at(3)), Arrival::Duplicate);
        assert_eq!(tally.record(3, sample(1, 0, 0), at(4)), Arrival::New);
        assert_eq!(tally.record(9, sample(1, 0, 0), at(4)), Arrival::Unknown);
        let s = tally.summary(4, 0);
        assert_eq!((s.received, s.duplicates, s.reordered), (4, 1, 1));
        assert_eq!((s.lost_up, s.lost_down), (Some(0), Some(0)));
    }

    #[test]
    fn nothing_answered_means_no_spreads_and_all_lost_upstream() {
        let s = Tally::new(3).summary(3, 0);
        assert_eq!(s.rtt_ms, None);
        assert_eq!(s.ipdv_ms, None);
        assert_eq!((s.lost_up, s.loss_up_percent), (Some(3), Some(100.0)));
        assert_eq!((s.lost_down, s.loss_down_percent), (Some(0), Some(0.0)));
        assert!(!s.server_count_confirmed);
    }

    #[test]
    fn probes_the_server_rate_limited_are_not_network_loss() {
        // 10 sent, 4 dropped by the server's limit, 5 reached it, 5 replies came back.
        let mut tally = Tally::new(10);
        for seq in 0..5 {
            let count = ServerCount {
                rate_limited: 4,
                ..at(seq + 1)
            };
            tally.record(seq, sample(40, 20, 20), count);
        }
        let s = tally.summary(10, 0);
        assert_eq!(s.rate_limited, 4);
        assert_eq!((s.lost_up, s.lost_down), (Some(1), Some(0)));
        assert_eq!(s.loss_percent, 50.0);
    }

    #[test]
    fn a_count_that_goes_down_makes_the_split_unknown() {
        // The server evicted the session after 50 probes and counted again from 0: its
        // final count (30) would book every loss upstream.
        let mut tally = Tally::new(100);
        for seq in 0..50 {
            tally.record(seq, sample(40, 20, 20), at(seq + 1));
        }
        for seq in 50..80 {
            let count = ServerCount {
                sent_ns: 1_000 + seq as i64,
                ..at(seq - 49)
            };
            tally.record(seq, sample(40, 20, 20), count);
        }
        let s = tally.summary(100, 0);
        assert!(s.session_evicted);
        assert_eq!((s.lost_up, s.lost_down), (None, None));
        assert_eq!((s.loss_up_percent, s.loss_down_percent), (None, None));
        assert_eq!(s.loss_percent, 20.0, "the total stays known");
    }

    #[test]
    fn reordered_replies_are_not_taken_for_an_eviction() {
        let mut tally = Tally::new(3);
        tally.record(1, sample(40, 20, 20), at(2));
        tally.record(0, sample(40, 20, 20), at(1));
        tally.record(2, sample(40, 20, 20), at(3));
        let s = tally.summary(3, 0);
        assert!(!s.session_evicted);
        assert_eq!(s.lost_up, Some(0));
    }

    #[test]
    fn spread_percentiles_by_nearest_rank() {
        let spread = Spread::of((1..=100).map(|v| v * 1_000_000).collect()).expect("values");
        assert_eq!((spread.median, spread.p99, spread.max), (50.5, 99.0, 100.0));
        let one = Spread::of(vec![2_000_000]).expect("one value");
        assert_eq!((one.min, one.p99, one.stddev), (2.0, 2.0, 0.0));
    }
}
