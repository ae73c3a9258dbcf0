//! The accept loop: connection limits (total, and per source address through
//! [`super::per_ip`]), per-connection tasks, and the wait for them at shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use super::connection::{self, Limits};
use super::per_ip::{PerIpLimits, PerIpTable};
use super::ServerConfig;
use crate::events::{
    self, AcceptFailed, ConnectionAccepted, ConnectionRefused, Event as _, OpenConnection,
    RefuseReason,
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
        // Per address first: one address's flood is refused before it can take the
        // permits every other address needs.
        let ip_share = match per_ip.admit(peer.ip(), Instant::now()) {
            Ok(share) => share,
            Err(reason) => {
                let limit = match reason {
                    RefuseReason::ConnectRate => config.connect_rate_per_ip as usize,
                    _ => config.max_connections_per_ip,
                };
                ConnectionRefused {
                    peer,
                    reason,
                    limit,
                }
                .emit();
                drop(stream);
                continue;
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
        let span = tracing::info_span!("conn", conn_id, peer_addr = %peer);
        let (limits, store, live) = (limits.clone(), store.clone(), live.clone());
        let shutdown = shutdown.clone();
        tasks.spawn(
            async move {
                let _open = OpenConnection::new();
                ConnectionAccepted.emit();
                let _permit = permit;
                let _ip_share = ip_share;
                let telemetry = events::telemetry();
                connection::serve_counted(stream, peer, &limits, store, shutdown, telemetry, live)
                    .await;
            }
            .instrument(span),
        );
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
