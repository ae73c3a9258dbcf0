//! The server's UDP side: reflect each probe with its receive and send times and how many
//! probes of its session arrived (`server --udp on`, the default).
//!
//! It stores nothing and answers with exactly the bytes it received, never more (no
//! amplification). Its only state is bounded: per-session records ([`MAX_SESSIONS`], the
//! least recently used evicted; each counts distinct seqs through an anti-replay window,
//! [`super::window`]), per-source-address token buckets ([`MAX_ADDRESSES`], likewise) and
//! one global bucket ([`GLOBAL_RATE_FACTOR`] × the per-address rate). With `--auth`, a probe must be signed with a token in
//! force; anything else is dropped without an answer (an answer would be an oracle) and
//! counted in `sensorlink_udp_probes_total{result}`. [`Reflector::handle`] decides, with no
//! I/O; [`serve`] owns the socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hashlink::LruCache;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::window::SessionRecord;
use super::wire::{self, Kind, Request};
use crate::auth::Authority;
use crate::events::{Event as _, ProbeResult, UdpProbeHandled, UdpTable, UdpTableEvicted};
use crate::net::pktinfo;

/// Sessions whose records are kept; a session evicted starts counting again at 0.
pub const MAX_SESSIONS: usize = 4096;
/// The global bucket's rate, in per-address rates: bounds the reflector's total send rate
/// when a spoofer cycles through more source addresses than the table keeps.
pub const GLOBAL_RATE_FACTOR: u32 = 10;
/// Source addresses whose rate buckets are kept; an evicted one starts with a full bucket.
pub const MAX_ADDRESSES: usize = 4096;
/// Default `--udp-rate-per-ip`: 1 ms probes from 2 clients behind one address still fit.
pub const DEFAULT_RATE_PER_IP: u32 = 2000;
/// The largest datagram UDP carries: nothing is ever cut, so a reply has the request's size.
const MAX_DATAGRAM_BYTES: usize = 65_535;

/// One source address's token bucket: `rate` probes per second in bursts of one second's
/// worth.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Refill at `rate_per_s` up to one second's worth, then take a token if there is one.
    fn take(&mut self, rate_per_s: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_s).min(rate_per_s);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A session table key: the token id (its 8 bytes, 0 when unsigned) and the session id, so
/// that under `--auth` one token holder cannot touch another's session.
type SessionKey = (u64, u64);

fn session_key(request: &Request<'_>) -> SessionKey {
    let token = request.signed.map_or(0, |signature| {
        let mut id = [0u8; 8];
        for (to, from) in id.iter_mut().zip(signature.token_id.bytes()) {
            *to = from;
        }
        u64::from_be_bytes(id)
    });
    (token, request.session)
}

/// The reflector's state and decisions, without the socket.
pub struct Reflector {
    /// Each session's record, and the source address (per-IP key) of its first probe.
    sessions: LruCache<SessionKey, (SessionRecord, IpAddr)>,
    buckets: LruCache<IpAddr, Bucket>,
    global: Bucket,
    rate_per_s: f64,
    /// With `--auth`: only probes signed with a token in force are answered.
    auth: Option<Arc<Authority>>,
}

impl Reflector {
    pub fn new(rate_per_ip: u32, auth: Option<Arc<Authority>>) -> Self {
        let rate_per_s = f64::from(rate_per_ip.max(1));
        let global_rate = rate_per_s * f64::from(GLOBAL_RATE_FACTOR);
        Reflector {
            sessions: LruCache::new(MAX_SESSIONS),
            buckets: LruCache::new(MAX_ADDRESSES),
            global: Bucket {
                tokens: global_rate,
                at: Instant::now(),
            },
            rate_per_s,
            auth,
        }
    }

    /// Whether `ip` may have one more probe answered now (its own bucket, then the
    /// global one).
    fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = crate::server::per_ip::key(ip);
        let rate = self.rate_per_s;
        let bucket = match self.buckets.get_mut(&key) {
            Some(bucket) => bucket,
            None => {
                if self.buckets.len() >= MAX_ADDRESSES {
                    UdpTableEvicted {
                        table: UdpTable::Buckets,
                    }
                    .emit();
                }
                self.buckets.insert(
                    key,
                    Bucket {
                        tokens: rate,
                        at: now,
                    },
                );
                self.buckets
                    .get_mut(&key)
                    .expect("the entry was inserted just above")
            }
        };
        bucket.take(rate, now) && self.global.take(rate * f64::from(GLOBAL_RATE_FACTOR), now)
    }

    /// Decide about the datagram `buf` from `from`, received at `receive_ns`: on `Ok`,
    /// `buf` holds the reply (same length; [`wire::stamp_send`] still to do).
    ///
    /// # Errors
    /// Why it is dropped (the metric label).
    pub fn handle(
        &mut self,
        buf: &mut [u8],
        from: IpAddr,
        now: Instant,
        receive_ns: i64,
    ) -> Result<(), ProbeResult> {
        // Decoded first (cheap: no MAC yet) so that a probe over the limit is counted in its
        // session, and the client can tell the server's drops from the network's.
        let request = wire::decode_request(buf).map_err(|err| match err {
            wire::WireError::TooShort => ProbeResult::TooShort,
            _ => ProbeResult::Malformed,
        })?;
        let key = session_key(&request);
        if !self.admit(from, now) {
            // Only a session already in the table (a limited datagram must not churn it),
            // and only from its own source: the MAC is not checked yet, so anyone else could
            // otherwise make a victim's upstream loss read as the server's drops.
            if request.kind == Kind::Probe {
                let source = crate::server::per_ip::key(from);
                if let Some((record, _)) = self
                    .sessions
                    .get_mut(&key)
                    .filter(|(_, first)| *first == source)
                {
                    record.rate_limited = record.rate_limited.saturating_add(1);
                }
            }
            return Err(ProbeResult::RateLimited);
        }
        if let Some(authority) = &self.auth {
            let signature = request.signed.ok_or(ProbeResult::Unsigned)?;
            let key = authority
                .probe_key(signature.token_id)
                .ok_or(ProbeResult::BadMac)?;
            if !signature.verify(key.as_bytes()) {
                return Err(ProbeResult::BadMac);
            }
        }
        let head = request.head();
        // A duplicate or a replay is still answered (the client must see the network's
        // duplicates) but counted once.
        let record = match head.kind {
            Kind::Probe => match self.sessions.get_mut(&key) {
                Some((record, _)) => {
                    record.count(head.seq);
                    *record
                }
                None => {
                    if self.sessions.len() >= MAX_SESSIONS {
                        UdpTableEvicted {
                            table: UdpTable::Sessions,
                        }
                        .emit();
                    }
                    let record = SessionRecord::first(head.seq);
                    let source = crate::server::per_ip::key(from);
                    self.sessions.insert(key, (record, source));
                    record
                }
            },
            Kind::Count => self
                .sessions
                .get(&key)
                .map_or(SessionRecord::EMPTY, |(record, _)| *record),
        };
        wire::encode_reply(head, receive_ns, record.received, record.rate_limited, buf)
            .map_err(|_| ProbeResult::TooShort)
    }
}

/// Bind the UDP side on `addr` (the sensor port's address, so port 0 gets the same port).
///
/// # Errors
/// The bind fails; the message names `--udp off`.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr).await.map_err(|err| {
        anyhow::anyhow!(
            "binding UDP {addr} for probes: {err} (start with --udp off to serve without UDP probes)"
        )
    })?;
    // So a multi-homed server answers from the address each probe was sent to.
    if let Err(err) = pktinfo::enable(&socket) {
        tracing::warn!(cause = %err, "udp replies will leave from the address routing picks");
    }
    Ok(socket)
}

/// Answer probes on `socket` until `shutdown`.
pub async fn serve(socket: UdpSocket, mut reflector: Reflector, shutdown: CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = pktinfo::recv_from(&socket, &mut buf) => received,
        };
        // As close to the receive as user space gets.
        let receive_ns = crate::timefmt::now_ns();
        let (len, from, local) = match received {
            Ok(got) => got,
            Err(err) => {
                tracing::debug!(cause = %err, "udp receive failed");
                continue;
            }
        };
        let Some(datagram) = buf.get_mut(..len) else {
            continue;
        };
        let result = match reflector.handle(datagram, from.ip(), Instant::now(), receive_ns) {
            Ok(()) => {
                wire::stamp_send(datagram, crate::timefmt::now_ns());
                match pktinfo::send_to(&socket, datagram, from, local).await {
                    Ok(_) => ProbeResult::Answered,
                    Err(err) => {
                        tracing::debug!(cause = %err, peer_addr = %from, "udp reply failed");
                        ProbeResult::SendFailed
                    }
                }
            }
            Err(dropped) => dropped,
        };
        UdpProbeHandled { result }.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::stats::{Sample, ServerCount, Tally};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn probe(session: u64, seq: u64, size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        wire::encode_request(Kind::Probe, session, seq, 1, None, size, &mut out);
        out
    }

    #[test]
    fn each_session_counts_its_probes_and_the_reply_keeps_the_size() {
        let mut r = Reflector::new(1000, None);
        let now = Instant::now();
        for seq in 0..3 {
            let mut buf = probe(9, seq, 80);
            r.handle(&mut buf, A, now, 5).expect("answered");
            assert_eq!(buf.len(), 80);
            let reply = wire::decode_reply(&buf).expect("a reply");
            assert_eq!((reply.seq, reply.server_received), (seq, seq + 1));
        }
        let mut other = probe(10, 0, 56);
        r.handle(&mut other, A, now, 5).expect("answered");
        assert_eq!(
            wire::decode_reply(&other).expect("reply").server_received,
            1
        );
        // A count request reads the count without adding to it.
        let mut count = Vec::new();
        wire::encode_request(Kind::Count, 9, 0, 1, None, 56, &mut count);
        r.handle(&mut count, A, now, 5).expect("answered");
        let reply = wire::decode_reply(&count).expect("reply");
        assert_eq!((reply.kind, reply.server_received), (Kind::Count, 3));
    }

    #[test]
    fn short_and_foreign_datagrams_are_dropped_with_their_reason() {
        let mut r = Reflector::new(1000, None);
        let now = Instant::now();
        assert_eq!(
            r.handle(&mut [1, 2, 3], A, now, 0),
            Err(ProbeResult::TooShort)
        );
        assert_eq!(
            r.handle(&mut [0; 64], A, now, 0),
            Err(ProbeResult::Malformed)
        );
    }

    #[test]
    fn one_address_is_limited_to_its_rate_and_others_are_not() {
        let mut r = Reflector::new(10, None);
        let now = Instant::now();
        let answered = (0..50)
            .filter(|seq| r.handle(&mut probe(1, *seq, 56), A, now, 0).is_ok())
            .count();
        assert_eq!(answered, 10, "a burst of one second's worth");
        assert_eq!(
            r.handle(&mut probe(1, 99, 56), A, now, 0),
            Err(ProbeResult::RateLimited)
        );
        assert!(r.handle(&mut probe(2, 0, 56), B, now, 0).is_ok());
        // A tenth of a second later, one more token.
        let later = now + Duration::from_millis(100);
        assert!(r.handle(&mut probe(1, 100, 56), A, later, 0).is_ok());
        assert!(r.handle(&mut probe(1, 101, 56), A, later, 0).is_err());
    }

    #[test]
    fn a_duplicated_or_replayed_probe_is_answered_but_counted_once() {
        let mut r = Reflector::new(1000, None);
        let now = Instant::now();
        let mut first = probe(9, 0, 64);
        r.handle(&mut first, A, now, 5).expect("answered");
        assert_eq!(
            wire::decode_reply(&first).expect("reply").server_received,
            1
        );
        // The same seq again (a network duplicate, or a replay from anywhere): answered, so
        // the client sees the duplicate, and the count stays.
        let mut again = probe(9, 0, 64);
        r.handle(&mut again, B, now, 5).expect("answered");
        assert_eq!(
            wire::decode_reply(&again).expect("reply").server_received,
            1
        );
        let mut next = probe(9, 1, 64);
        r.handle(&mut next, A, now, 5).expect("answered");
        assert_eq!(wire::decode_reply(&next).expect("reply").server_received, 2);
    }

    #[test]
    fn upstream_duplicates_are_not_booked_as_downstream_loss() {
        // 100 probes, 5 of them duplicated on the way up, nothing lost: the client must
        // see 5 duplicates and no loss either way.
        let mut r = Reflector::new(1000, None);
        let now = Instant::now();
        let mut tally = Tally::new(100);
        let sample = Sample {
            rtt_ns: 1,
            send_delay_ns: 0,
            receive_delay_ns: 0,
        };
        for seq in 0..100u64 {
            let copies = if seq % 20 == 0 { 2 } else { 1 };
            for _ in 0..copies {
                let mut buf = probe(3, seq, 64);
                r.handle(&mut buf, A, now, 5).expect("answered");
                let reply = wire::decode_reply(&buf).expect("reply");
                let count = ServerCount {
                    received: reply.server_received,
                    rate_limited: reply.rate_limited.unwrap_or(0),
                    sent_ns: reply.server_send_ns,
                };
                tally.record(reply.seq, sample, count);
            }
        }
        let s = tally.summary(100, 0);
        assert_eq!((s.duplicates, s.server_received), (5, 100));
        assert_eq!((s.lost_up, s.lost_down), (Some(0), Some(0)));
        assert_eq!(s.loss_down_percent, Some(0.0));
    }

    #[test]
    fn under_auth_sessions_are_keyed_by_token_too() {
        let sign = |token: &str, seq: u64| {
            let signer = wire::Signer::for_token(token).expect("token-shaped");
            let mut out = Vec::new();
            wire::encode_request(Kind::Probe, 9, seq, 1, Some(&signer), 64, &mut out);
            out
        };
        // Signature checks are off here (no Authority): only the keying is under test.
        let mut r = Reflector::new(1000, None);
        let now = Instant::now();
        let mut mine = sign("sl_aaaaaaaa_0123456789abcdefghijABCDEFGHIJ0123456789abc", 0);
        r.handle(&mut mine, A, now, 5).expect("answered");
        let mut theirs = sign("sl_bbbbbbbb_0123456789abcdefghijABCDEFGHIJ0123456789abc", 1);
        r.handle(&mut theirs, B, now, 5).expect("answered");
        assert_eq!(
            wire::decode_reply(&theirs).expect("reply").server_received,
            1
        );
        assert_eq!(
            r.sessions.len(),
            2,
            "same session id, two tokens: two sessions"
        );
    }

    #[test]
    fn all_addresses_together_are_capped_by_the_global_bucket() {
        let mut r = Reflector::new(10, None);
        let now = Instant::now();
        // 30 addresses, each within its own rate: the global bucket (10 × 10) stops the rest.
        let answered = (0..30u8)
            .flat_map(|host| (0..10u64).map(move |seq| (host, seq)))
            .filter(|(host, seq)| {
                let from = IpAddr::V4(Ipv4Addr::new(198, 51, 100, *host));
                r.handle(&mut probe(u64::from(*host), *seq, 56), from, now, 0)
                    .is_ok()
            })
            .count();
        assert_eq!(answered, 10 * GLOBAL_RATE_FACTOR as usize);
    }

    #[test]
    fn a_sessions_rate_limited_probes_are_counted_and_reported() {
        let mut r = Reflector::new(2, None);
        let now = Instant::now();
        for seq in 0..5 {
            let _ = r.handle(&mut probe(4, seq, 64), A, now, 0);
        }
        // A count request from another address (its own bucket) reads both counts.
        let mut count = Vec::new();
        wire::encode_request(Kind::Count, 4, 0, 1, None, 64, &mut count);
        r.handle(&mut count, B, now, 5).expect("answered");
        let reply = wire::decode_reply(&count).expect("reply");
        assert_eq!((reply.server_received, reply.rate_limited), (2, Some(3)));
        // A limited datagram of an unknown session adds no session.
        let _ = r.handle(&mut probe(5, 0, 64), A, now, 0);
        assert_eq!(r.sessions.len(), 1);
        // Limited datagrams of the session from another source are not its own: not counted.
        for seq in 10..20 {
            let _ = r.handle(&mut probe(4, seq, 64), B, now, 0);
        }
        wire::encode_request(Kind::Count, 4, 0, 1, None, 64, &mut count);
        r.handle(&mut count, A, now + Duration::from_secs(1), 5)
            .expect("answered");
        let reply = wire::decode_reply(&count).expect("reply");
        assert_eq!(reply.rate_limited, Some(3));
    }

    #[test]
    fn the_session_table_stays_bounded() {
        let mut r = Reflector::new(1_000_000, None);
        let now = Instant::now();
        for session in 0..(MAX_SESSIONS as u64 + 100) {
            r.handle(&mut probe(session, 0, 56), A, now, 0)
                .expect("answered");
        }
        assert_eq!(r.sessions.len(), MAX_SESSIONS);
    }
}
