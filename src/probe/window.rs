//! The reflector's per-session record: which seqs it has already counted (an RFC 4303
//! anti-replay window: the highest seq plus a 128-bit bitmap of the seqs just below it),
//! so a datagram the network duplicated, or a replayed probe, is answered but counted once.
//! Pure, no I/O.

/// Seqs below the highest that the bitmap still remembers. Older seqs are counted as
/// they come (rare: a probe delayed past 128 later ones).
pub const WINDOW_SEQS: u64 = 128;

/// One session on the server: its distinct probes, and its probes dropped by the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    /// The highest seq counted.
    highest: u64,
    /// Bit `i` set: seq `highest - i` was counted (bit 0 is `highest` itself).
    seen: u128,
    /// Distinct probes received (within the window; older ones counted each time).
    pub received: u64,
    /// Probes of this session dropped by the per-address or global rate limit.
    pub rate_limited: u64,
}

impl SessionRecord {
    /// A session the server does not know (a count request's answer: nothing received).
    pub const EMPTY: SessionRecord = SessionRecord {
        highest: 0,
        seen: 0,
        received: 0,
        rate_limited: 0,
    };

    /// A session whose first counted probe is `seq`.
    pub fn first(seq: u64) -> Self {
        SessionRecord {
            highest: seq,
            seen: 1,
            received: 1,
            rate_limited: 0,
        }
    }

    /// Count `seq` unless the window says it was counted already; `true` when counted.
    pub fn count(&mut self, seq: u64) -> bool {
        let counted = if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= WINDOW_SEQS {
                1
            } else {
                (self.seen << shift) | 1
            };
            self.highest = seq;
            true
        } else {
            let back = self.highest - seq;
            if back >= WINDOW_SEQS {
                true
            } else {
                let bit = 1u128 << back;
                let fresh = self.seen & bit == 0;
                self.seen |= bit;
                fresh
            }
        };
        if counted {
            self.received = self.received.saturating_add(1);
        }
        counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_seq_counts_once_within_the_window() {
        let mut r = SessionRecord::first(5);
        assert!(!r.count(5), "a duplicate of the first");
        assert!(r.count(7));
        assert!(r.count(6), "late, not yet seen");
        assert!(!r.count(6));
        assert!(!r.count(7));
        assert!(r.count(4));
        assert_eq!(r.received, 4);
    }

    #[test]
    fn the_window_slides_and_older_seqs_count_as_before() {
        let mut r = SessionRecord::first(0);
        assert!(r.count(WINDOW_SEQS - 1));
        assert!(!r.count(0), "still inside the window");
        assert!(r.count(WINDOW_SEQS + 10));
        assert!(r.count(0), "slid out of the window: counted again (rare)");
        assert!(!r.count(WINDOW_SEQS - 1), "still inside");
        assert!(r.count(1_000_000));
        assert!(!r.count(1_000_000));
        assert_eq!(r.received, 5);
    }
}
