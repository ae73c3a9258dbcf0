//! TLS on the sensor port: the handshake runs inside each connection's task, bounded by its
//! own timeout, before the protocol (line or legacy, unchanged) is served over the
//! encrypted stream. A failed handshake is counted and logged (rate-limited) and closes
//! only that connection.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::stream::PeerStream;
use super::TlsFiles;
use crate::events::{Event as _, Telemetry, TlsHandshakeFailed};
use crate::tls::TlsAcceptor;

/// How long a peer may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a TLS connection is accepted with.
#[derive(Clone)]
pub struct TlsSettings {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Read the certificate, key and (for mutual TLS) client CA.
    pub fn from_files(files: &TlsFiles) -> anyhow::Result<TlsSettings> {
        let config = crate::tls::server_config(&files.cert, &files.key, files.client_ca.as_deref())
            .context("setting up TLS for the sensor port")?;
        Ok(TlsSettings {
            acceptor: TlsAcceptor::from(config),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// Complete the handshake on `stream`; `None` (counted, logged) when it fails, times
    /// out, or the server shuts down first.
    pub(super) async fn handshake<S: PeerStream>(
        &self,
        stream: S,
        peer: SocketAddr,
        shutdown: &CancellationToken,
        telemetry: &Telemetry,
    ) -> Option<tokio_rustls::server::TlsStream<S>> {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return None,
            outcome = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)) => outcome,
        };
        match outcome {
            Ok(Ok(tls)) => {
                tracing::debug!("TLS established");
                Some(tls)
            }
            Ok(Err(err)) => {
                TlsHandshakeFailed {
                    peer,
                    error: Some(&err),
                }
                .emit_to(telemetry);
                None
            }
            Err(_) => {
                TlsHandshakeFailed { peer, error: None }.emit_to(telemetry);
                None
            }
        }
    }
}

/// No readiness shortcut: rustls may already hold decrypted bytes that the socket's
/// readiness knows nothing about, so the read itself waits (an idle TLS connection keeps
/// its read buffer).
impl<S: PeerStream> PeerStream for tokio_rustls::server::TlsStream<S> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::sample;
    use tokio::io::AsyncWriteExt as _;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 9], 5000))
    }

    /// Settings from freshly generated certificates (read here, so the directory may go).
    fn settings() -> anyhow::Result<TlsSettings> {
        let dir = tempfile::tempdir()?;
        crate::tls::cert::generate(dir.path(), &["localhost".into()], false)?;
        let path = |name: &str| dir.path().join(name);
        TlsSettings::from_files(&TlsFiles {
            cert: path(crate::tls::cert::SERVER_CERT),
            key: path(crate::tls::cert::SERVER_KEY),
            client_ca: None,
        })
    }

    /// A silent peer is dropped at the handshake timeout, a plain-text peer at once; each
    /// counted under its reason. A shutdown ends a handshake without counting it.
    #[tokio::test(start_paused = true)]
    async fn failed_handshakes_end_the_connection_and_are_counted() -> anyhow::Result<()> {
        let recorder = crate::events::prometheus_builder().build_recorder();
        let prometheus = recorder.handle();
        let telemetry = metrics::with_local_recorder(&recorder, Telemetry::register);
        let tls = settings()?;
        let running = CancellationToken::new();
        // The guard is paused time too: it only fails a handshake that would never end.
        let guard = tls.handshake_timeout * 2;

        let (_silent, server) = tokio::io::duplex(4096);
        let outcome =
            tokio::time::timeout(guard, tls.handshake(server, peer(), &running, &telemetry));
        assert!(outcome.await?.is_none(), "a silent peer times out");

        let (mut plain, server) = tokio::io::duplex(4096);
        plain.write_all(b"ping connect\n").await?;
        let outcome =
            tokio::time::timeout(guard, tls.handshake(server, peer(), &running, &telemetry));
        assert!(outcome.await?.is_none(), "plain text is no ClientHello");

        let stopped = CancellationToken::new();
        stopped.cancel();
        let (_silent, server) = tokio::io::duplex(4096);
        assert!(tls
            .handshake(server, peer(), &stopped, &telemetry)
            .await
            .is_none());

        let text = prometheus.render();
        let failed = |reason: &str| {
            sample(
                &text,
                &format!("sensorlink_tls_handshakes_failed_total{{reason=\"{reason}\"}}"),
            )
        };
        assert_eq!(failed("timeout"), Some(1.0), "{text}");
        assert_eq!(failed("error"), Some(1.0), "{text}");
        Ok(())
    }
}
