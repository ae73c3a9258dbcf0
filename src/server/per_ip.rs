//! Per source address admission, decided at accept: how many connections one address holds
//! at once (`--max-connections-per-ip`) and how fast it may open new ones
//! (`--connect-rate-per-ip`, a token bucket).
//!
//! IPv6 peers are keyed by their /64 prefix: one host usually holds a whole /64, so keying
//! by full address would give it 2^64 shares. A peer holding a /48 (or more) still has
//! 65,536 /64s, each with its own share: per-address limits do not bound such a network;
//! `--max-connections` does. Two IPv6 forms carry an IPv4 address and are keyed by it, so
//! that IPv4 clients behind one gateway are told apart as they would be over IPv4:
//! IPv4-mapped (`::ffff:a.b.c.d`, a dual-stack socket) and NAT64 (`64:ff9b::a.b.c.d`, the
//! well-known prefix of RFC 6052: every IPv4 host a NAT64 gateway serves would otherwise
//! share the gateway's one /64). The table is bounded: an entry lives while its
//! address holds a connection or its bucket is refilling (at most `burst / rate` seconds,
//! 3.2 s at the defaults); the rest are swept out whenever the table has doubled since the
//! last sweep, so its size stays within twice the addresses that are connected or were so
//! seconds ago.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::events::RefuseReason;

/// Default `--max-connections-per-ip`.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 64;
/// Default `--connect-rate-per-ip` (new connections per second).
pub const DEFAULT_CONNECT_RATE_PER_IP: u32 = 20;
/// Entries below which the table is never swept (a sweep walks the whole table).
const MIN_SWEEP_ENTRIES: usize = 1024;

/// The per-address limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerIpLimits {
    pub max_connections: usize,
    /// New connections per second, sustained.
    pub connect_rate_per_s: u32,
}

impl PerIpLimits {
    /// The bucket's size: twice the rate, and never less than the connection share, so an
    /// address may open its whole share at once (a gateway's sensors after an outage).
    pub fn burst(&self) -> f64 {
        (2.0 * f64::from(self.connect_rate_per_s)).max(self.max_connections as f64)
    }
}

/// One address's state.
#[derive(Debug)]
struct Entry {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

impl Entry {
    /// Tokens at `now`, capped at `burst`; pure, so a late or early instant changes nothing.
    fn tokens_at(&self, now: Instant, limits: &PerIpLimits) -> f64 {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        (self.tokens + elapsed * f64::from(limits.connect_rate_per_s)).min(limits.burst())
    }

    /// Bring the bucket to `now` (never backwards: instants may come out of order).
    fn refill(&mut self, now: Instant, limits: &PerIpLimits) {
        if now > self.refilled {
            self.tokens = self.tokens_at(now, limits);
            self.refilled = now;
        }
    }

    /// Nothing to remember: no connection, and a full bucket (a new entry would be the same).
    fn forgettable(&self, now: Instant, limits: &PerIpLimits) -> bool {
        self.open == 0 && self.tokens_at(now, limits) >= limits.burst()
    }
}

#[derive(Debug)]
struct State {
    entries: HashMap<IpAddr, Entry>,
    /// Sweep once the table reaches this many entries.
    sweep_at: usize,
}

/// Every address's connections and bucket, shared by the accept loop and the connection
/// tasks' [`IpGuard`]s.
#[derive(Debug)]
pub struct PerIpTable {
    limits: PerIpLimits,
    state: Mutex<State>,
}

/// NAT64's well-known prefix, `64:ff9b::/96` (RFC 6052).
const NAT64_PREFIX: u128 = 0x0064_ff9b_u128 << 96;

/// The table's key for `ip`: the address, or its /64 for IPv6; the embedded IPv4 address
/// for IPv4-mapped and NAT64 (`64:ff9b::/96`) addresses.
pub(crate) fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            if let Some(v4) = v6.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else if bits >> 32 == NAT64_PREFIX >> 32 {
                // The low 32 bits are the IPv4 host (truncation intended).
                IpAddr::V4((bits as u32).into())
            } else {
                IpAddr::V6((bits & !u128::from(u64::MAX)).into())
            }
        }
    }
}

impl PerIpTable {
    pub fn new(limits: PerIpLimits) -> Arc<Self> {
        Arc::new(PerIpTable {
            limits,
            state: Mutex::new(State {
                entries: HashMap::new(),
                sweep_at: MIN_SWEEP_ENTRIES,
            }),
        })
    }

    pub fn limits(&self) -> PerIpLimits {
        self.limits
    }

    /// The state; a panic elsewhere while holding it left only counters behind, still usable.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admit a new connection from `ip` at `now`: take a token, then a share. The guard
    /// gives the share back when dropped. Every attempt takes a token, refused or not, so
    /// a peer reconnecting in a loop stays throttled.
    ///
    /// # Errors
    /// The reason it is refused: its bucket is empty, or it holds its share already.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpGuard, RefuseReason> {
        let limits = self.limits;
        let ip = key(ip);
        let mut state = self.lock();
        if state.entries.len() >= state.sweep_at {
            state
                .entries
                .retain(|_, entry| !entry.forgettable(now, &limits));
            state.sweep_at = (2 * state.entries.len()).max(MIN_SWEEP_ENTRIES);
        }
        let entry = state.entries.entry(ip).or_insert_with(|| Entry {
            open: 0,
            tokens: limits.burst(),
            refilled: now,
        });
        entry.refill(now, &limits);
        if entry.tokens < 1.0 {
            return Err(RefuseReason::ConnectRate);
        }
        entry.tokens -= 1.0;
        if entry.open >= limits.max_connections {
            return Err(RefuseReason::PerIp);
        }
        entry.open += 1;
        Ok(IpGuard {
            table: self.clone(),
            ip,
        })
    }

    /// Addresses in the table (for tests and the bound's check).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, ip: IpAddr, now: Instant) {
        let limits = self.limits;
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(&ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.forgettable(now, &limits) {
                state.entries.remove(&ip);
            }
        }
    }
}

/// One admitted connection's share of its address; given back on drop, so every exit path
/// of the connection task releases it.
#[derive(Debug)]
pub struct IpGuard {
    table: Arc<PerIpTable>,
    ip: IpAddr,
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        self.table.release(self.ip, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn table(max_connections: usize, connect_rate_per_s: u32) -> Arc<PerIpTable> {
        PerIpTable::new(PerIpLimits {
            max_connections,
            connect_rate_per_s,
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn an_address_gets_its_share_and_no_more_while_others_still_connect() {
        let table = table(2, 100);
        let now = Instant::now();
        let a1 = table.admit(ip(1), now).expect("first");
        let _a2 = table.admit(ip(1), now).expect("second");
        assert_eq!(
            table.admit(ip(1), now).expect_err("third"),
            RefuseReason::PerIp
        );
        let _b = table.admit(ip(2), now).expect("another address");
        drop(a1);
        table.admit(ip(1), now).expect("a share was given back");
    }

    /// No clock is read: the bucket is driven by the instants given.
    #[test]
    fn connect_rate_refuses_past_the_burst_and_refills_with_time() {
        let table = table(1, 2);
        let limits = table.limits();
        assert_eq!(limits.burst(), 4.0, "twice the rate, above the share of 1");
        let t0 = Instant::now();
        for _ in 0..4 {
            drop(table.admit(ip(1), t0).expect("within the burst"));
        }
        assert_eq!(
            table.admit(ip(1), t0).expect_err("bucket empty"),
            RefuseReason::ConnectRate
        );
        // A refused attempt takes no token it does not have; half a second gives one back.
        let t1 = t0 + Duration::from_millis(500);
        drop(table.admit(ip(1), t1).expect("one token refilled"));
        assert!(table.admit(ip(1), t1).is_err());
        assert!(
            table.admit(ip(2), t1).is_ok(),
            "another address has its own"
        );
    }

    #[test]
    fn burst_is_at_least_the_share() {
        let limits = PerIpLimits {
            max_connections: 64,
            connect_rate_per_s: 20,
        };
        assert_eq!(limits.burst(), 64.0);
    }

    #[test]
    fn idle_addresses_with_full_buckets_are_forgotten() {
        let table = table(4, 1000);
        let guard = table.admit(ip(1), Instant::now()).expect("admitted");
        assert_eq!(table.len(), 1);
        // Dropped with a bucket one token short: kept until it has refilled.
        drop(guard);
        // A sweep at a later instant removes every address with no connection.
        let later = Instant::now() + Duration::from_secs(10);
        let mut state = table.lock();
        state
            .entries
            .retain(|_, entry| !entry.forgettable(later, &table.limits));
        assert!(state.entries.is_empty());
    }

    /// The table stays bounded by the sweep whatever the number of addresses seen.
    #[test]
    fn table_is_swept_as_it_grows() {
        let table = table(4, 1000);
        let t0 = Instant::now();
        for i in 0..10 * MIN_SWEEP_ENTRIES as u32 {
            let addr = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            // Each attempt one second after the last: earlier buckets are full again.
            let now = t0 + Duration::from_secs(u64::from(i));
            drop(table.admit(addr, now).expect("admitted"));
        }
        assert!(table.len() <= MIN_SWEEP_ENTRIES, "{}", table.len());
    }

    #[test]
    fn ipv6_peers_share_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("literal");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("literal");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("literal");
        assert_eq!(key(a), key(b));
        assert_ne!(key(a), key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("literal");
        assert_eq!(key(mapped), ip(1));
    }

    /// A NAT64 gateway's IPv4 clients share its /64 but not their embedded address.
    #[test]
    fn nat64_peers_are_keyed_by_their_embedded_ipv4_address() {
        let a: IpAddr = "64:ff9b::10.0.0.1".parse().expect("literal");
        let b: IpAddr = "64:ff9b::10.0.0.2".parse().expect("literal");
        assert_eq!(key(a), ip(1));
        assert_eq!(key(b), ip(2));
        // Only the /96: the same /64 outside it is an ordinary IPv6 network.
        let other: IpAddr = "64:ff9b::1:0:0:1".parse().expect("literal");
        let other2: IpAddr = "64:ff9b::2:0:0:1".parse().expect("literal");
        assert_eq!(key(other), key(other2));
        assert!(key(other).is_ipv6());
        let table = table(1, 100);
        let now = Instant::now();
        let _a = table.admit(a, now).expect("first client");
        let _b = table
            .admit(b, now)
            .expect("another IPv4 client of the gateway");
        assert_eq!(
            table.admit(a, now).expect_err("its share is one"),
            RefuseReason::PerIp
        );
    }
}
