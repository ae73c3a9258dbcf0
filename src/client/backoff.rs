//! [`Backoff`]: how long to wait before reconnecting. The wait doubles from
//! [`INITIAL_BACKOFF`] up to a maximum, with jitter, and starts again only once a connection
//! has worked: carried an ack and stayed up a while (a server that accepts, or acks, and
//! then fails must not be hammered; see [`super::failover`]).

use std::time::Duration;

use rand::RngExt as _;

/// First wait before reconnecting; doubles up to the configured maximum.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Backoff with jitter: a random wait in [d/2, d], d doubling up to `max`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: INITIAL_BACKOFF.min(max),
            max,
        }
    }

    /// Start again from the first delay (only once a connection has worked).
    pub fn reset(&mut self) {
        self.next = INITIAL_BACKOFF.min(self.max);
    }

    /// The next wait: random in [d/2, d], d the next [`Backoff::next_ceiling`].
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next_ceiling();
        let half = ceiling / 2;
        let jitter_ns = rand::rng().random_range(0..=half.as_nanos().max(1) as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    /// The next wait's ceiling d (no jitter), and double it for the one after, up to `max`.
    pub fn next_ceiling(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        ceiling
    }
}
