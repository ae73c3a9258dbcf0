//! [`Rotation`]: which server address the client tries next, and how long it waits first.
//! No I/O and no clock: the engine tells it what happened, it answers with the next step.
//!
//! The policy (`sensorlink client A B C`): connect to the [`first_address`] (a stable hash
//! of the sensor name picks it, so a fleet of sensors with the same list spreads over it;
//! random without a name; one address: that one). When a connection cannot be made, move
//! on to the next address at once; when a live connection drops, move on after a short
//! random [`jitter`] (up to [`INITIAL_BACKOFF`]), so the clients of a collector that dies do
//! not all reach the next one in the same instant. Only once a whole round
//! of addresses has failed, wait a [`Backoff`] delay (jittered, doubling up to the maximum)
//! before the next round. The client stays on an address that works: it leaves one only
//! when that one fails. A connection that *worked* (carried an ack and stayed up at least
//! [`MIN_WORKING_CONNECTION`]) starts a fresh round and a fresh backoff; one that acked and
//! then dropped sooner is a failure of its server like any other, so servers that accept,
//! ack and close are never reconnected to in a tight loop. With one address this is the
//! single-server reconnect loop: every failure ends a round.
//!
//! [`Servers`] keeps what the run reports of each address: connections, failures, acked
//! readings, failovers, and why the client left the ones it left.

use std::time::Duration;

use rand::RngExt as _;
use serde::Serialize;

use super::backoff::{Backoff, INITIAL_BACKOFF};
use super::disconnect::DisconnectKind;

/// How long a connection that carried an ack must have stayed up to count as having worked
/// (a fresh round, the backoff reset). Ten first backoffs: long beside any reconnect storm,
/// short beside a healthy connection's life.
pub const MIN_WORKING_CONNECTION: Duration = INITIAL_BACKOFF.saturating_mul(10);

/// Why the current address is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made (refused, timeout, no first `pong`, TLS, auth).
    Connect,
    /// A live connection ended; `worked`: see [`worked`].
    Dropped { worked: bool },
}

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
    /// A rotation over `count` addresses (at least one), starting at `first` (see
    /// [`first_address`]).
    pub fn new(count: usize, first: usize, max_backoff: Duration) -> Self {
        let count = count.max(1);
        Rotation {
            count,
            current: first % count,
            failed_in_round: 0,
            backoff: Backoff::new(max_backoff),
        }
    }

    /// The address a connection is (being) made to.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The current address failed: it could not be connected to, or its connection ended.
    /// A connection that worked (see [`worked`]) starts the round afresh from it. The
    /// delay is drawn from `backoff` when a round is over, else it is a [`jitter`] after a
    /// drop and zero after a failed connect.
    pub fn failed(&mut self, failure: Failure) -> Step {
        self.failed_with(failure, |backoff| backoff.next_delay(), jitter)
    }

    /// [`Rotation::failed`] with the delays taken by `next_delay` and `jitter` (tests take
    /// the ceilings, without randomness).
    fn failed_with(
        &mut self,
        failure: Failure,
        next_delay: impl FnOnce(&mut Backoff) -> Duration,
        jitter: impl FnOnce() -> Duration,
    ) -> Step {
        if let Failure::Dropped { worked: true } = failure {
            self.failed_in_round = 0;
            self.backoff.reset();
        }
        self.failed_in_round += 1;
        self.current = (self.current + 1) % self.count;
        let round_over = self.failed_in_round >= self.count;
        let delay = if round_over {
            self.failed_in_round = 0;
            next_delay(&mut self.backoff)
        } else if let Failure::Dropped { .. } = failure {
            jitter()
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

/// The index of the address a client starts on, among `count`: a stable hash of its sensor
/// name (the same on every run and build, so a fleet with one list spreads over it), or
/// random without a name. One address: 0.
pub fn first_address(sensor: Option<&str>, count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let hash = match sensor {
        Some(name) => fnv1a(name.as_bytes()),
        None => rand::rng().random(),
    };
    // The remainder is below `count`, which is a usize.
    (hash % count as u64) as usize
}

/// 64-bit FNV-1a: tiny, and fixed by its definition (std's hasher may change between
/// releases, which would move every client of a fleet on an upgrade).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The wait before moving on after a live connection dropped: random in [0, INITIAL_BACKOFF],
/// so the clients of a collector that died spread their reconnects to the next one.
pub fn jitter() -> Duration {
    let ns = rand::rng().random_range(0..=INITIAL_BACKOFF.as_nanos() as u64);
    Duration::from_nanos(ns)
}

/// Whether a connection worked: it carried an ack and lived `up_for`, at least
/// [`MIN_WORKING_CONNECTION`]. A server that acks and then drops at once has not.
pub fn worked(carried_ack: bool, up_for: Duration) -> bool {
    carried_ack && up_for >= MIN_WORKING_CONNECTION
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

    const CONNECT: Failure = Failure::Connect;
    const WORKED: Failure = Failure::Dropped { worked: true };

    /// The delays' ceilings: the backoff's, and [`INITIAL_BACKOFF`] for the jitter.
    fn fail(rotation: &mut Rotation, failure: Failure) -> Step {
        rotation.failed_with(failure, Backoff::next_ceiling, || INITIAL_BACKOFF)
    }

    #[test]
    fn a_connection_works_only_with_an_ack_and_a_life_of_the_minimum() {
        assert!(worked(true, MIN_WORKING_CONNECTION));
        assert!(!worked(
            true,
            MIN_WORKING_CONNECTION - Duration::from_millis(1)
        ));
        assert!(!worked(false, Duration::from_secs(3600)));
    }

    #[test]
    fn a_failure_moves_to_the_next_address_at_once_until_the_round_is_over() {
        let mut rotation = Rotation::new(3, 0, MAX);
        assert_eq!(rotation.current(), 0);
        let step = fail(&mut rotation, CONNECT);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (1, Duration::ZERO, false)
        );
        let step = fail(&mut rotation, CONNECT);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (2, Duration::ZERO, false)
        );
        // The third failure ends the round: back to the first, after a backoff.
        let step = fail(&mut rotation, CONNECT);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (0, INITIAL_BACKOFF, true)
        );
        // The next round's wait is longer: nothing in between worked.
        fail(&mut rotation, CONNECT);
        fail(&mut rotation, CONNECT);
        let step = fail(&mut rotation, CONNECT);
        assert_eq!((step.index, step.delay), (0, INITIAL_BACKOFF * 2));
    }

    #[test]
    fn one_address_backs_off_after_every_failure_as_a_single_server_client_does() {
        let mut rotation = Rotation::new(1, 0, MAX);
        let delays: Vec<_> = (0..4).map(|_| fail(&mut rotation, CONNECT)).collect();
        for (i, step) in delays.iter().enumerate() {
            assert_eq!(step.index, 0);
            assert!(step.round_over);
            assert_eq!(step.delay, INITIAL_BACKOFF * 2u32.pow(i as u32));
        }
        // An ack resets the backoff, as the reconnect loop always did.
        assert_eq!(fail(&mut rotation, WORKED).delay, INITIAL_BACKOFF);
    }

    #[test]
    fn a_server_that_worked_is_left_for_the_next_at_once_and_starts_a_new_round() {
        let mut rotation = Rotation::new(2, 0, MAX);
        // A refused, B refused: a round is over, back off.
        fail(&mut rotation, CONNECT);
        assert!(fail(&mut rotation, CONNECT).round_over);
        // A refused again: on to B at once.
        assert_eq!(fail(&mut rotation, CONNECT).index, 1);
        // B worked, then dropped: A is tried after a jitter only (a new round), not a backoff.
        let step = fail(&mut rotation, WORKED);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (0, INITIAL_BACKOFF, false)
        );
        // A refused: the round (B, A) is over; the backoff began again from the first delay.
        let step = fail(&mut rotation, CONNECT);
        assert_eq!(
            (step.index, step.delay, step.round_over),
            (1, INITIAL_BACKOFF, true)
        );
    }

    #[test]
    fn a_rotation_starts_where_it_is_told_and_wraps_round() {
        let mut rotation = Rotation::new(3, 2, MAX);
        assert_eq!(rotation.current(), 2);
        assert_eq!(fail(&mut rotation, CONNECT).index, 0);
        assert_eq!(fail(&mut rotation, CONNECT).index, 1);
        // Three failures from the start: the round is over, back where it began.
        let step = fail(&mut rotation, CONNECT);
        assert_eq!((step.index, step.round_over), (2, true));
        // A start beyond the list wraps (never out of range).
        assert_eq!(Rotation::new(2, 5, MAX).current(), 1);
    }

    #[test]
    fn a_connection_that_acked_but_did_not_last_is_a_failure_of_its_server() {
        let mut rotation = Rotation::new(2, 0, MAX);
        let short = Failure::Dropped { worked: false };
        // A dropped after a jitter, B too: a round is over, and the waits keep growing.
        let step = fail(&mut rotation, short);
        assert_eq!((step.index, step.delay), (1, INITIAL_BACKOFF));
        let step = fail(&mut rotation, short);
        assert_eq!((step.delay, step.round_over), (INITIAL_BACKOFF, true));
        fail(&mut rotation, short);
        assert_eq!(fail(&mut rotation, short).delay, INITIAL_BACKOFF * 2);
    }

    #[test]
    fn the_first_address_is_a_stable_hash_of_the_sensor_name() {
        // FNV-1a, fixed by definition: these never change between runs or builds.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(first_address(Some("anything"), 1), 0);
        assert_eq!(first_address(None, 1), 0);
        // The engine's tests run as sensor "s" over two addresses and expect the first.
        assert_eq!(first_address(Some("s"), 2), 0);
        // A fleet spreads: 300 sensors over three addresses, none left idle or crowded.
        let mut on = [0usize; 3];
        for n in 0..300 {
            on[first_address(Some(&format!("sensor-{n}")), 3)] += 1;
        }
        assert!(on.iter().all(|n| (60..=140).contains(n)), "{on:?}");
        for _ in 0..20 {
            assert!(first_address(None, 3) < 3);
        }
    }

    #[test]
    fn the_jitter_after_a_drop_is_at_most_the_first_backoff() {
        for _ in 0..100 {
            assert!(jitter() <= INITIAL_BACKOFF);
        }
    }

    #[test]
    fn the_delay_is_capped_by_the_maximum() {
        let max = Duration::from_millis(300);
        let mut rotation = Rotation::new(2, 0, max);
        let delays: Vec<_> = (0..12)
            .map(|_| rotation.failed(CONNECT))
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
