//! `probe --store`: send the run's summary reading to the server over the ordinary TCP line
//! protocol (the client's transport: handshake with the token, then `sync` for its ack).

use std::time::Duration;

use crate::client::transport::{self, Connector, ReplyDecoder, TransportError};
use crate::client::ClientTls;
use crate::protocol::control::{AuthSecret, Reply};
use crate::protocol::{ilp, Reading};

/// How long connect, handshake and the ack may take each.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the summary was not stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storing the summary at {addr}: {source}")]
    Transport {
        addr: String,
        #[source]
        source: TransportError,
    },
    #[error("storing the summary at {addr}: TLS: {reason}")]
    Tls { addr: String, reason: String },
    #[error("storing the summary at {addr}: the server refused it: {reason}")]
    Refused { addr: String, reason: String },
}

impl StoreError {
    /// The server refused the token (exit 3, as the client).
    pub fn is_auth_failed(&self) -> bool {
        matches!(
            self,
            StoreError::Transport {
                source: TransportError::AuthFailed(_),
                ..
            }
        )
    }
}

/// Send `reading` to `addr` (over TLS when `tls` says so) and wait for its ack (it is
/// stored then).
///
/// # Errors
/// The TLS files cannot be used, the connection or handshake fails, or the server answers
/// an error.
pub async fn send(
    addr: &str,
    tls: Option<&ClientTls>,
    token: Option<&AuthSecret>,
    reading: &Reading,
) -> Result<(), StoreError> {
    match tls {
        None => {
            let connector = transport::TcpConnector {
                addr: addr.to_string(),
                timeout: TIMEOUT,
            };
            send_with(connector, addr, token, reading).await
        }
        Some(tls) => {
            let tls_error = |err: anyhow::Error| StoreError::Tls {
                addr: addr.to_string(),
                reason: format!("{err:#}"),
            };
            let rustls = crate::tls::client_config(tls.ca.as_deref(), None).map_err(tls_error)?;
            let connector = transport::TlsTcpConnector {
                addr: addr.to_string(),
                connector: crate::tls::TlsConnector::from(rustls),
                server_name: crate::tls::server_name(addr, tls.server_name.as_deref())
                    .map_err(tls_error)?,
            };
            send_with(connector, addr, token, reading).await
        }
    }
}

async fn send_with<C: Connector>(
    mut connector: C,
    addr: &str,
    token: Option<&AuthSecret>,
    reading: &Reading,
) -> Result<(), StoreError> {
    let wrap = |source: TransportError| StoreError::Transport {
        addr: addr.to_string(),
        source,
    };
    let stream = tokio::time::timeout(TIMEOUT, connector.connect())
        .await
        .map_err(|_| {
            wrap(TransportError::TimedOut {
                what: C::TIMEOUT_WHAT,
            })
        })?
        .map_err(|err| wrap(err.into()))?;
    let mut conn = transport::split(stream, ReplyDecoder::default());
    transport::line_handshake(&mut conn, token, TIMEOUT)
        .await
        .map_err(wrap)?;
    let (reader, writer) = &mut conn;
    let mut line = Vec::new();
    ilp::encode(reading, &mut line);
    writer.queue(&line);
    writer.queue(b"sync probe\n");
    let exchange = async {
        writer.push_all().await?;
        reader.read_reply().await
    };
    let reply = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| wrap(TransportError::TimedOut { what: "ack" }))?
        .map_err(wrap)?;
    let _ = writer.close().await;
    match reply {
        Reply::Ack(ack) if ack.readings == 1 && ack.rejected == 0 => Ok(()),
        Reply::Ack(ack) => Err(StoreError::Refused {
            addr: addr.to_string(),
            reason: format!("{} stored, {} rejected", ack.readings, ack.rejected),
        }),
        Reply::Error { reason, .. } => Err(StoreError::Refused {
            addr: addr.to_string(),
            reason,
        }),
        other => Err(StoreError::Refused {
            addr: addr.to_string(),
            reason: format!("unexpected reply {other:?}"),
        }),
    }
}
