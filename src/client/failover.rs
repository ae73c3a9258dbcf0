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
//!
//! [`Servers`] keeps what the run reports of each address: connections, failures, acked
//! readings, failovers, and why the client left the ones it left.

use std::time::Duration;

use serde::Serialize;

use super::backoff::Backoff;
use super::disconnect::DisconnectKind;

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

    /// [`Rotation::failed`] with the delay taken by `next_delay` (tests take the ceiling,
    /// without jitter).
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

/// One server's share of a run (the `--json` summary's `servers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerTotals {
    pub addr: String,
    /// Connections made (TCP, TLS and the opening `ping` all succeeded).
    pub connects: u64,
    /// Connections that could not be made, or that dropped.
    pub failures: u64,
    /// The user's readings acknowledged on its connections.
    pub acked: u64,
}

/// What the run knows of each server: its totals, which one is connected, the failures
/// since the last connection (to say why the client is where it is).
#[derive(Debug)]
pub struct Servers {
    totals: Vec<ServerTotals>,
    /// The address of the last connection attempt.
    last_attempt: Option<usize>,
    /// The live connection's server (or the last one's).
    connected: Option<usize>,
    failovers: u64,
    /// Since the last connection: each address that failed, with the kind of its last
    /// failure (one entry per address, in the order they last failed).
    failed_since: Vec<(usize, DisconnectKind)>,
    /// Each address's last error, for the "unreachable" message.
    last_error: Vec<Option<String>>,
}

impl Servers {
    pub fn new(addrs: &[String]) -> Self {
        Servers {
            totals: addrs
                .iter()
                .map(|addr| ServerTotals {
                    addr: addr.clone(),
                    connects: 0,
                    failures: 0,
                    acked: 0,
                })
                .collect(),
            last_attempt: None,
            connected: None,
            failovers: 0,
            failed_since: Vec::new(),
            last_error: vec![None; addrs.len()],
        }
    }

    pub fn len(&self) -> usize {
        self.totals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }

    /// The address of server `index`.
    pub fn addr(&self, index: usize) -> &str {
        self.totals.get(index).map_or("?", |t| t.addr.as_str())
    }

    /// Address `index` as the next one to try, when there are several to move between
    /// (`None`: one server, the client reconnects to it).
    pub fn next(&self, index: usize) -> Option<&str> {
        (self.len() > 1).then(|| self.addr(index))
    }

    /// The connected (or last connected) server's address.
    pub fn connected_addr(&self) -> Option<&str> {
        self.connected.map(|index| self.addr(index))
    }

    /// A connection to `index` was made. Returns the other addresses that failed since the
    /// previous connection, with why (`connected to B (after A: refused)`).
    pub fn connected(&mut self, index: usize) -> Vec<(String, DisconnectKind)> {
        if let Some(totals) = self.totals.get_mut(index) {
            totals.connects += 1;
        }
        // Moved here from another address that was tried (and failed) just before.
        if self.last_attempt.is_some_and(|last| last != index) {
            self.failovers += 1;
        }
        self.last_attempt = Some(index);
        self.connected = Some(index);
        std::mem::take(&mut self.failed_since)
            .into_iter()
            .filter(|(failed, _)| *failed != index)
            .map(|(failed, kind)| (self.addr(failed).to_string(), kind))
            .collect()
    }

    /// Server `index` could not be connected to, or its connection ended (`error`: why).
    pub fn failed(&mut self, index: usize, kind: DisconnectKind, error: String) {
        if let Some(totals) = self.totals.get_mut(index) {
            totals.failures += 1;
        }
        self.last_attempt = Some(index);
        self.failed_since.retain(|(failed, _)| *failed != index);
        self.failed_since.push((index, kind));
        if let Some(slot) = self.last_error.get_mut(index) {
            *slot = Some(error);
        }
    }

    /// `n` of the user's readings were acked on the live connection.
    pub fn acked(&mut self, n: u64) {
        if let Some(totals) = self.connected.and_then(|index| self.totals.get_mut(index)) {
            totals.acked += n;
        }
    }

    /// Connections made to another address than the one tried just before (it had failed).
    pub fn failovers(&self) -> u64 {
        self.failovers
    }

    pub fn totals(&self) -> Vec<ServerTotals> {
        self.totals.clone()
    }

    /// Every address, as one name (`a:1, b:2`).
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.totals.iter().map(|t| t.addr.as_str()).collect();
        names.join(", ")
    }

    /// Why no address could be reached: the one error, or each address's last one.
    pub fn unreachable_cause(&self) -> Option<String> {
        if let [only] = self.last_error.as_slice() {
            return only.clone();
        }
        let causes: Vec<String> = self
            .last_error
            .iter()
            .enumerate()
            .filter_map(|(index, err)| Some(format!("{}: {}", self.addr(index), err.as_ref()?)))
            .collect();
        (!causes.is_empty()).then(|| causes.join("; "))
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

    fn addrs() -> Vec<String> {
        vec!["a:1".to_string(), "b:2".to_string()]
    }

    #[test]
    fn a_connection_after_failures_elsewhere_says_which_and_counts_a_failover() {
        let mut servers = Servers::new(&addrs());
        servers.failed(0, DisconnectKind::Refused, "refused".into());
        let after = servers.connected(1);
        assert_eq!(after, [("a:1".to_string(), DisconnectKind::Refused)]);
        assert_eq!(servers.failovers(), 1);
        servers.acked(3);
        // b drops, b again (one address tried): no failover, and b's own failure is not
        // "after" anything.
        servers.failed(1, DisconnectKind::Reset, "reset".into());
        assert!(servers.connected(1).is_empty());
        assert_eq!(servers.failovers(), 1);
        let totals = servers.totals();
        assert_eq!(
            (totals[0].connects, totals[0].failures, totals[0].acked),
            (0, 1, 0)
        );
        assert_eq!(
            (totals[1].connects, totals[1].failures, totals[1].acked),
            (2, 1, 3)
        );
    }

    #[test]
    fn the_first_connection_to_the_first_address_is_no_failover() {
        let mut servers = Servers::new(&addrs());
        assert!(servers.connected(0).is_empty());
        assert_eq!(servers.failovers(), 0);
        assert_eq!(servers.connected_addr(), Some("a:1"));
    }

    #[test]
    fn unreachable_names_each_address_with_its_last_error() {
        let mut servers = Servers::new(&addrs());
        assert_eq!(servers.unreachable_cause(), None);
        servers.failed(0, DisconnectKind::Refused, "refused".into());
        servers.failed(
            1,
            DisconnectKind::ConnectTimeout,
            "connect timed out".into(),
        );
        servers.failed(0, DisconnectKind::Refused, "refused again".into());
        assert_eq!(
            servers.unreachable_cause().as_deref(),
            Some("a:1: refused again; b:2: connect timed out")
        );
        let mut one = Servers::new(&addrs()[..1]);
        one.failed(0, DisconnectKind::Refused, "refused".into());
        assert_eq!(one.unreachable_cause().as_deref(), Some("refused"));
    }
}
