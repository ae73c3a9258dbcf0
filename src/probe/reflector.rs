//! The server's UDP side: reflect each probe with its receive and send times and how many
//! probes of its session arrived (`server --udp on`, the default).
//!
//! It stores nothing and answers with exactly the bytes it received, never more (no
//! amplification). Its only state is bounded: per-session counts ([`MAX_SESSIONS`], the
//! least recently used evicted) and per-source-address token buckets
//! ([`MAX_ADDRESSES`], likewise). With `--auth`, a probe must be signed with a token in
//! force; anything else is dropped without an answer (an answer would be an oracle) and
//! counted in `sensorlink_udp_probes_total{result}`. [`Reflector::handle`] decides, with no
//! I/O; [`serve`] owns the socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use hashlink::LruCache;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::wire::{self, Kind};
use crate::auth::Authority;
use crate::events::{Event as _, ProbeResult, UdpProbeHandled};

/// Sessions whose received counts are kept; a session evicted starts counting again at 0.
pub const MAX_SESSIONS: usize = 4096;
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

/// The reflector's state and decisions, without the socket.
pub struct Reflector {
    sessions: LruCache<u64, u64>,
    buckets: LruCache<IpAddr, Bucket>,
    rate_per_s: f64,
    /// With `--auth`: only probes signed with a token in force are answered.
    auth: Option<Arc<Authority>>,
}

impl Reflector {
    pub fn new(rate_per_ip: u32, auth: Option<Arc<Authority>>) -> Self {
        Reflector {
            sessions: LruCache::new(MAX_SESSIONS),
            buckets: LruCache::new(MAX_ADDRESSES),
            rate_per_s: f64::from(rate_per_ip.max(1)),
            auth,
        }
    }

    /// Whether `ip` may have one more probe answered now.
    fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = crate::server::per_ip::key(ip);
        let burst = self.rate_per_s;
        let bucket = match self.buckets.get_mut(&key) {
            Some(bucket) => bucket,
            None => {
                self.buckets.insert(
                    key,
                    Bucket {
                        tokens: burst,
                        at: now,
                    },
                );
                self.buckets
                    .get_mut(&key)
                    .expect("the entry was inserted just above")
            }
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_s).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
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
        if !self.admit(from, now) {
            return Err(ProbeResult::RateLimited);
        }
        let request = wire::decode_request(buf).map_err(|err| match err {
            wire::WireError::TooShort => ProbeResult::TooShort,
            _ => ProbeResult::Malformed,
        })?;
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
        let count = match head.kind {
            Kind::Probe => match self.sessions.get_mut(&head.session) {
                Some(count) => {
                    *count = count.saturating_add(1);
                    *count
                }
                None => {
                    self.sessions.insert(head.session, 1);
                    1
                }
            },
            Kind::Count => self.sessions.get(&head.session).copied().unwrap_or(0),
        };
        wire::encode_reply(head, receive_ns, count, buf).map_err(|_| ProbeResult::TooShort)
    }
}

/// Bind the UDP side on `addr` (the sensor port's address, so port 0 gets the same port).
///
/// # Errors
/// The bind fails; the message names `--udp off`.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind(addr).await.map_err(|err| {
        anyhow::anyhow!(
            "binding UDP {addr} for probes: {err} (start with --udp off to serve without UDP probes)"
        )
    })
}

/// Answer probes on `socket` until `shutdown`.
pub async fn serve(socket: UdpSocket, mut reflector: Reflector, shutdown: CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM_BYTES];
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = socket.recv_from(&mut buf) => received,
        };
        // As close to the receive as user space gets.
        let receive_ns = crate::timefmt::now_ns();
        let (len, from) = match received {
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
                match socket.send_to(datagram, from).await {
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
