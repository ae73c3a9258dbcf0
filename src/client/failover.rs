//! [`Rotation`]: which server address the client tries next, and how long it waits first.
//! No I/O and no clock: the engine tells it what happened, it answers with the next step.
//!
//! The policy (`sensorlink client A B C`): connect to the first address. When a connection
//! cannot be made, or drops, move on to the next address at once; only once a whole round
//! of addresses has failed, wait a [`Backoff`] delay (jittered, doubling up to the maximum)
//! before the next round. The client stays on an address that works: it leaves one only
//! when that one fails. A connection that carried an ack starts a fresh round (and a fresh
//! backoff), as a reconnect to one server always has. With one address this is exactly the
//! single-server reconnect loop: every failure ends a round.

use std::time::Duration;

use super::backoff::Backoff;

/// Where the next connection attempt goes, and after how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The index of the address to try.
    pub index: usize,
    /// Wait this long first (zero: at once, the round is not over).
    pub delay: Duration,
    /// This failure ended a round: every address was tried and failed.
    pub round_over: bool,
}

/// The address rotation (see the module's doc).
#[derive(Debug)]
pub struct Rotation {
    count: usize,
    current: usize,
    /// Addresses that failed since the round began.
    failed_in_round: usize,
    backoff: Backoff,
}

impl Rotation {
    /// A rotation over `count` addresses (at least one), starting at the first.
    pub fn new(count: usize, max_backoff: Duration) -> Self {
        Rotation {
            count: count.max(1),
            current: 0,
            failed_in_round: 0,
            backoff: Backoff::new(max_backoff),
        }
    }

    /// The address a connection is (being) made to.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The current address failed: it could not be connected to, or its connection ended.
    /// `carried_ack`: that connection got an ack, so the server worked; the round starts
    /// afresh from it. `delay` is drawn from `backoff` only when a round is over.
    pub fn failed(&mut self, carried_ack: bool) -> Step {
        self.failed_with(carried_ack, |backoff| backoff.next_delay())
    }

    /// [`Rotation::failed`] with the delay taken by `next_delay` (tests use a fixed one).
    fn failed_with(
        &mut self,
        carried_ack: bool,
        next_delay: impl FnOnce(&mut Backoff) -> Duration,
    ) -> Step {
        if carried_ack {
            self.failed_in_round = 0;
            self.backoff.reset();
        }
        self.failed_in_round += 1;
        self.current = (self.current + 1) % self.count;
        let round_over = self.failed_in_round >= self.count;
        let delay = if round_over {
            self.failed_in_round = 0;
            next_delay(&mut self.backoff)
        } else {
            Duration::ZERO
        };
        Step {
            index: self.current,
            delay,
            round_over,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::INITIAL_BACKOFF;

    const MAX: Duration = Duration::from_secs(30);

    fn fail(rotation: &mut Rotation, carried_ack: bool) -> Step {
        rotation.failed_with(carried_ack, Backoff::next_ceiling)
    }

    #[test]
    fn a_failure_moves_to_the_next_address_at_once_until_the_round_is_over() {
        let mut rotation = Rotation::new(3, MAX);
        assert_eq!(rotation.current(), 0);
        let step = fail(&mut rotation, false);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (1, Duration::ZERO, false)
        );
        let step = fail(&mut rotation, false);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (2, Duration::ZERO, false)
        );
        // The third failure ends the round: back to the first, after a backoff.
        let step = fail(&mut rotation, false);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (0, INITIAL_BACKOFF, true)
        );
        // The next round's wait is longer: nothing in between worked.
        fail(&mut rotation, false);
        fail(&mut rotation, false);
        let step = fail(&mut rotation, false);
        assert_eq!((step.index, step.delay), (0, INITIAL_BACKOFF * 2));
    }

    #[test]
    fn one_address_backs_off_after_every_failure_as_a_single_server_client_does() {
        let mut rotation = Rotation::new(1, MAX);
        let delays: Vec<_> = (0..4).map(|_| fail(&mut rotation, false)).collect();
        for (i, step) in delays.iter().enumerate() {
            assert_eq!(step.index, 0);
            assert!(step.round_over);
            assert_eq!(step.delay, INITIAL_BACKOFF * 2u32.pow(i as u32));
        }
        // An ack resets the backoff, as the reconnect loop always did.
        assert_eq!(fail(&mut rotation, true).delay, INITIAL_BACKOFF);
    }

    #[test]
    fn a_server_that_worked_is_left_for_the_next_at_once_and_starts_a_new_round() {
        let mut rotation = Rotation::new(2, MAX);
        // A refused, B refused: a round is over, back off.
        fail(&mut rotation, false);
        assert!(fail(&mut rotation, false).round_over);
        // A refused again: on to B at once.
        assert_eq!(fail(&mut rotation, false).index, 1);
        // B worked, then dropped: A is tried at once (a new round), not after a wait.
        let step = fail(&mut rotation, true);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (0, Duration::ZERO, false)
        );
        // A refused: the round (B, A) is over; the backoff began again from the first delay.
        let step = fail(&mut rotation, false);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (1, INITIAL_BACKOFF, true)
        );
    }

    #[test]
    fn the_client_stays_on_a_working_address() {
        let mut rotation = Rotation::new(3, MAX);
        fail(&mut rotation, false);
        // Connected to the second; nothing fails, nothing moves.
        assert_eq!(rotation.current(), 1);
        assert_eq!(rotation.current(), 1);
        // It fails after working: the third, not the first.
        assert_eq!(fail(&mut rotation, true).index, 2);
    }

    #[test]
    fn the_delay_is_capped_by_the_maximum() {
        let max = Duration::from_millis(300);
        let mut rotation = Rotation::new(2, max);
        let delays: Vec<_> = (0..12)
            .map(|_| rotation.failed(false))
            .filter(|step| step.round_over)
            .map(|step| step.delay)
            .collect();
        assert_eq!(delays.len(), 6);
        assert!(delays.iter().all(|d| *d <= max), "{delays:?}");
    }
}
