//! The accept loop: connection limits (total, and per source address through
//! [`super::per_ip`]), per-connection tasks, and the wait for them at shutdown.
//!
//! With `--proxy-protocol v2` each task first reads the PROXY header
//! ([`super::proxy_protocol`]) under the connection's permit and first-line deadline, and
//! the per-address limits apply to the client's address from it, not the balancer's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use futures_util::FutureExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{field, Instrument as _};

use super::connection::{self, Limits};
use super::per_ip::{IpGuard, PerIpLimits, PerIpTable};
use super::proxy_protocol::{self, ProxyProtocol};
use super::ServerConfig;
use crate::auth::cidr::Cidr;
use crate::events::{
    self, AcceptFailed, ConnectionAccepted, ConnectionRefused, Event as _, OpenConnection,
    ProxyHeaderRefused, RefuseReason,
};
use crate::live::Registry;
use crate::store::writer::StoreHandle;

/// Longest pause after a failing `accept()` (e.g. out of file descriptors).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// Accept until `shutdown`, then wait for every connection task to finish. Committed
/// readings feed the live view `live` when there is one.
pub async fn accept_loop(
    listener: TcpListener,
    config: &ServerConfig,
    limits: Arc<Limits>,
    store: StoreHandle,
    live: Option<Arc<Registry>>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let per_ip = PerIpTable::new(PerIpLimits {
        max_connections: config.max_connections_per_ip,
        connect_rate_per_s: config.connect_rate_per_ip,
    });
    let proxy_protocol = config.proxy_protocol;
    let tasks = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(err) => {
                // EMFILE and friends: wait instead of spinning; the listener stays usable.
                AcceptFailed { error: &err }.emit();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        // With `--proxy-protocol v2` the TCP peer is the balancer: the per-address limits
        // wait for the client's address, read from the header inside the task.
        let ip_share = match proxy_protocol {
            ProxyProtocol::V2 => {
                // Only a named balancer's header is believed; anyone else is closed before
                // a byte is read or a connection slot is taken.
                if !trusted_proxy(&config.proxy_protocol_from, peer) {
                    ConnectionRefused {
                        peer,
                        reason: RefuseReason::ProxyPeer,
                        limit: 0,
                    }
                    .emit();
                    drop(stream);
                    continue;
                }
                None
            }
            ProxyProtocol::Off => {
                // Per address first: one address's flood is refused before it can take
                // the permits every other address needs.
                match admit(&per_ip, peer) {
                    Some(share) => Some(share),
                    None => {
                        drop(stream);
                        continue;
                    }
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ConnectionRefused {
                peer,
                reason: RefuseReason::MaxConnections,
                limit: config.max_connections,
            }
            .emit();
            drop(stream);
            continue;
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, cause = %err, "set_nodelay failed");
        }
        let conn_id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
        // Behind a balancer the peer is known once the header is read; `via` keeps the
        // balancer's own address in every line.
        let span = match proxy_protocol {
            ProxyProtocol::Off => tracing::info_span!("conn", conn_id, peer_addr = %peer),
            ProxyProtocol::V2 => {
                tracing::info_span!("conn", conn_id, peer_addr = field::Empty, via = %peer)
            }
        };
        let (store, live, shutdown) = (store.clone(), live.clone(), shutdown.clone());
        let open = OpenConnection::new();
        let accepted = connection::Accepted::now();
        let telemetry = events::telemetry();
        let serving = match ip_share {
            // Built here, not in an `async` block: a block would keep a second copy of
            // every value moved into the connection's future (the stream, the store
            // handle, the peer, …) for the connection's whole life. The guards ride along
            // in the closure and go when the connection ends.
            Some(share) => {
                span.in_scope(|| ConnectionAccepted.emit());
                let serving = connection::serve_accepted(
                    stream,
                    peer,
                    accepted,
                    Arc::clone(&limits),
                    store,
                    shutdown,
                    telemetry,
                    live,
                );
                Either::Left(serving.map(move |()| drop((open, permit, share))))
            }
            // Boxed: only a connection behind a balancer pays for the header's reading.
            None => {
                let (limits, per_ip) = (Arc::clone(&limits), per_ip.clone());
                Either::Right(Box::pin(async move {
                    let _open = open;
                    let _permit = permit;
                    let mut stream = stream;
                    let deadline = accepted.at + limits.first_wait();
                    let admitted =
                        behind_proxy(&mut stream, peer, deadline, &per_ip, &shutdown).await;
                    let Some((peer, _ip_share)) = admitted else {
                        return;
                    };
                    ConnectionAccepted.emit();
                    connection::serve_accepted(
                        stream, peer, accepted, limits, store, shutdown, telemetry, live,
                    )
                    .await;
                }))
            }
        };
        // A span the log filter turned off records nothing: entering it at every poll of
        // the connection (every reading) would cost for nothing.
        if span.is_disabled() {
            tasks.spawn(serving);
        } else {
            tasks.spawn(serving.instrument(span));
        }
    }
    drop(listener);
    drop(store);
    tasks.close();
    tracing::info!(
        connections = tasks.len(),
        "stopped accepting; waiting for open connections"
    );
    tasks.wait().await;
}

/// Whether `peer` may send PROXY headers: one of `--proxy-protocol-from`, or anyone when
/// none is named.
fn trusted_proxy(from: &[Cidr], peer: SocketAddr) -> bool {
    from.is_empty() || from.iter().any(|net| net.contains(peer.ip()))
}

/// Admit a connection from `peer` under the per-address limits; `None` (counted, logged)
/// when it is refused.
fn admit(per_ip: &Arc<PerIpTable>, peer: SocketAddr) -> Option<IpGuard> {
    match per_ip.admit(peer.ip(), Instant::now()) {
        Ok(share) => Some(share),
        Err(reason) => {
            let limits = per_ip.limits();
            let limit = match reason {
                RefuseReason::ConnectRate => limits.connect_rate_per_s as usize,
                _ => limits.max_connections,
            };
            ConnectionRefused {
                peer,
                reason,
                limit,
            }
            .emit();
            None
        }
    }
}

/// `--proxy-protocol v2`: read the header (by `deadline`), take its source address as the
/// peer (the TCP peer `via` for `LOCAL`), record it in the span, and admit it under the
/// per-address limits. `None` (counted, logged) when the connection is to be closed.
async fn behind_proxy(
    stream: &mut TcpStream,
    via: SocketAddr,
    deadline: tokio::time::Instant,
    per_ip: &Arc<PerIpTable>,
    shutdown: &CancellationToken,
) -> Option<(SocketAddr, IpGuard)> {
    let header = match proxy_protocol::receive(stream, deadline, shutdown).await {
        Ok(header) => header,
        Err(proxy_protocol::ReceiveError::Shutdown) => return None,
        Err(error) => {
            ProxyHeaderRefused {
                peer: via,
                error: &error,
            }
            .emit();
            return None;
        }
    };
    let peer = header.peer(via);
    tracing::Span::current().record("peer_addr", field::display(peer));
    tracing::debug!(?header, "PROXY header");
    admit(per_ip, peer).map(|share| (peer, share))
}
