//! The figures of a probe run, with no I/O: replies go into a [`Tally`] as they arrive,
//! and [`Tally::summary`] turns them into the [`Summary`] printed and sent with `--store`.
//!
//! - Loss is split where it happened: upstream = probes the server never received (from
//!   the server's own count), downstream = received by the server, reply never came.
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

/// The replies of a run, by seq.
#[derive(Debug, Clone)]
pub struct Tally {
    samples: Vec<Option<Sample>>,
    received: u64,
    duplicates: u64,
    reordered: u64,
    highest: Option<u64>,
    server_received: u64,
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
            max_rtt_ns: 0,
        }
    }

    /// Record the reply to `seq`; `server_received` is the server's count in it.
    pub fn record(&mut self, seq: u64, sample: Sample, server_received: u64) -> Arrival {
        let Some(slot) = usize::try_from(seq)
            .ok()
            .and_then(|i| self.samples.get_mut(i))
        else {
            return Arrival::Unknown;
        };
        self.server_received = self.server_received.max(server_received);
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

    /// The server's count of this session's probes, from a reply or a count request:
    /// counts only grow, so the largest seen is the latest.
    pub fn note_server_count(&mut self, server_received: u64) {
        self.server_received = self.server_received.max(server_received);
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
                ipdv.0.push((b.rtt_ns - a.rtt_ns).abs());
                ipdv.1.push((b.send_delay_ns - a.send_delay_ns).abs());
                ipdv.2.push((b.receive_delay_ns - a.receive_delay_ns).abs());
            }
        }
        // A server count below what we received can only come from an evicted session
        // (the server keeps a bounded table): then what we received is the better bound.
        let server_received = self.server_received.max(self.received);
        let lost_up = sent.saturating_sub(server_received);
        let lost_down = server_received.saturating_sub(self.received);
        Summary {
            sent,
            received: self.received,
            server_received,
            lost_up,
            lost_down,
            loss_up_percent: percent(lost_up, sent),
            loss_down_percent: percent(lost_down, server_received),
            loss_percent: percent(sent.saturating_sub(self.received), sent),
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
    /// Probes of the session the server received (its own count).
    pub server_received: u64,
    /// Sent, never received by the server.
    pub lost_up: u64,
    /// Received by the server, reply never came.
    pub lost_down: u64,
    /// Of `sent`.
    pub loss_up_percent: f64,
    /// Of `server_received`.
    pub loss_down_percent: f64,
    /// Either way, of `sent`.
    pub loss_percent: f64,
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
            tally.record(seq, sample(40, 20, 20), seq + 1);
        }
        tally.note_server_count(8);
        let s = tally.summary(10, 0);
        assert_eq!((s.sent, s.received, s.server_received), (10, 6, 8));
        assert_eq!((s.lost_up, s.lost_down), (2, 2));
        assert_eq!(s.loss_up_percent, 20.0);
        assert_eq!(s.loss_down_percent, 25.0);
        assert_eq!(s.loss_percent, 40.0);
    }

    #[test]
    fn ipdv_is_taken_over_consecutive_answered_probes_only() {
        let mut tally = Tally::new(5);
        // Round-trip delays 40, 42, (lost), 41, 45 ms; one way: 20/20, 23/19, -, 20/21, 25/20.
        tally.record(0, sample(40, 20, 20), 1);
        tally.record(1, sample(42, 23, 19), 2);
        tally.record(3, sample(41, 20, 21), 4);
        tally.record(4, sample(45, 25, 20), 5);
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
        assert_eq!(tally.record(0, sample(1, 0, 0), 1), Arrival::New);
        assert_eq!(tally.record(2, sample(1, 0, 0), 3), Arrival::New);
        assert_eq!(tally.record(1, sample(1, 0, 0), 3), Arrival::New);
        assert_eq!(tally.record(2, sample(1, 0, 0), 3), Arrival::Duplicate);
        assert_eq!(tally.record(3, sample(1, 0, 0), 4), Arrival::New);
        assert_eq!(tally.record(9, sample(1, 0, 0), 4), Arrival::Unknown);
        let s = tally.summary(4, 0);
        assert_eq!((s.received, s.duplicates, s.reordered), (4, 1, 1));
        assert_eq!((s.lost_up, s.lost_down), (0, 0));
    }

    #[test]
    fn nothing_answered_means_no_spreads_and_all_lost_upstream() {
        let s = Tally::new(3).summary(3, 0);
        assert_eq!(s.rtt_ms, None);
        assert_eq!(s.ipdv_ms, None);
        assert_eq!((s.lost_up, s.loss_up_percent), (3, 100.0));
        assert_eq!((s.lost_down, s.loss_down_percent), (0, 0.0));
    }

    #[test]
    fn spread_percentiles_by_nearest_rank() {
        let spread = Spread::of((1..=100).map(|v| v * 1_000_000).collect()).expect("values");
        assert_eq!((spread.median, spread.p99, spread.max), (50.5, 99.0, 100.0));
        let one = Spread::of(vec![2_000_000]).expect("one value");
        assert_eq!((one.min, one.p99, one.stddev), (2.0, 2.0, 0.0));
    }
}
