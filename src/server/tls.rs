//! TLS on the sensor port: the handshake runs inside each connection's task, bounded by its
//! own timeout (and by the first-line deadline, which runs from accept), before the
//! protocol (line or legacy, unchanged) is served over the encrypted stream. A failed
//! handshake is counted and logged (rate-limited) and closes only that connection. Each
//! handshake takes the configuration in force ([`ServerTls`]: SIGHUP may replace it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::stream::PeerStream;
use super::TlsFiles;
use crate::events::{Event as _, Telemetry, TlsHandshakeFailed};
use crate::tls::ServerTls;

/// Longest a peer may take to complete the TLS handshake (the first-line timeout, when
/// shorter, bounds it too).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a TLS connection is accepted with.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The certificate in force (shared with HTTPS and the SIGHUP reload).
    pub tls: Arc<ServerTls>,
    pub handshake_timeout: Duration,
}

impl TlsSettings {
    /// Read the certificate, key and (for mutual TLS) client CA.
    pub fn from_files(files: &TlsFiles) -> anyhow::Result<TlsSettings> {
        let tls = ServerTls::load(&files.cert, &files.key, files.client_ca.as_deref())
            .context("setting up TLS for the sensor port")?;
        Ok(TlsSettings::new(Arc::new(tls)))
    }

    /// Settings over an already loaded (and maybe shared) configuration.
    pub fn new(tls: Arc<ServerTls>) -> TlsSettings {
        TlsSettings {
            tls,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// Complete the handshake on `stream` by `deadline` at the latest (and within
    /// [`TlsSettings::handshake_timeout`]); `None` (counted, logged) when it fails, times
    /// out, or the server shuts down first.
    pub(super) async fn handshake<S: PeerStream>(
        &self,
        stream: S,
        peer: SocketAddr,
        deadline: tokio::time::Instant,
        shutdown: &CancellationToken,
        telemetry: &Telemetry,
    ) -> Option<tokio_rustls::server::TlsStream<S>> {
        let deadline = deadline.min(tokio::time::Instant::now() + self.handshake_timeout);
        let accept = self.tls.sensor_acceptor().accept(stream);
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return None,
            outcome = tokio::time::timeout_at(deadline, accept) => outcome,
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

/// Readiness through TLS: rustls may already hold decrypted bytes (or a close_notify) the
/// socket's readiness knows nothing about; only when it wants more input does the wait go
/// to the socket. So an idle TLS connection, like a plain one, waits without our read
/// buffer (rustls keeps its own 4 KiB record buffer: see BENCHMARKS.md).
impl<S: PeerStream> PeerStream for tokio_rustls::server::TlsStream<S> {
    fn wait_readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> {
        let (io, connection) = self.get_ref();
        let socket_first = connection.wants_read();
        async move {
            if socket_first {
                io.wait_readable().await
            } else {
                Ok(())
            }
        }
    }

    /// The TCP socket underneath the TLS session.
    fn tcp_info(&self) -> Option<std::io::Result<crate::net::tcp_info::TcpInfo>> {
        self.get_ref().0.tcp_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::sample;
    use tokio::io::AsyncWriteExt as _;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 9], 5000))
    }

    /// A deadline that never comes first: the handshake's own timeout rules.
    fn far() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(3600)
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
        let outcome = tokio::time::timeout(
            guard,
            tls.handshake(server, peer(), far(), &running, &telemetry),
        );
        assert!(outcome.await?.is_none(), "a silent peer times out");

        let (mut plain, server) = tokio::io::duplex(4096);
        plain.write_all(b"ping connect\n").await?;
        let outcome = tokio::time::timeout(
            guard,
            tls.handshake(server, peer(), far(), &running, &telemetry),
        );
        assert!(outcome.await?.is_none(), "plain text is no ClientHello");

        let stopped = CancellationToken::new();
        stopped.cancel();
        let (_silent, server) = tokio::io::duplex(4096);
        assert!(tls
            .handshake(server, peer(), far(), &stopped, &telemetry)
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

    /// The first-line deadline runs from accept, TLS handshake included: a peer that
    /// stalls its handshake is cut at the first-line timeout (shorter than the handshake
    /// timeout here), and one whose handshake took 1.5 s of a 2 s first-line timeout has
    /// 0.5 s left, not 2 s more. Paused clock.
    #[tokio::test(start_paused = true)]
    async fn the_first_line_deadline_includes_the_handshake() -> anyhow::Result<()> {
        use crate::store::writer::{self, WriterConfig};
        let dir = tempfile::tempdir()?;
        crate::tls::cert::generate(dir.path(), &["localhost".into()], false)?;
        let path = |name: &str| dir.path().join(name);
        let tls = TlsSettings::from_files(&TlsFiles {
            cert: path(crate::tls::cert::SERVER_CERT),
            key: path(crate::tls::cert::SERVER_KEY),
            client_ca: None,
        })?;
        let client = crate::tls::client_config(Some(&path(crate::tls::cert::CA_CERT)), None)?;
        let first_line = Duration::from_secs(2);
        assert!(first_line < tls.handshake_timeout);
        let limits = Arc::new(super::super::Limits {
            tls: Some(tls),
            ..super::super::Limits::from(&super::super::ServerConfig {
                first_line_timeout: first_line,
                ..Default::default()
            })
        });
        let (store, store_writer) = writer::spawn(
            crate::store::Drive::Inline(Box::new(crate::store::memory::MemoryStore::default())),
            WriterConfig::default(),
        );
        let serve = |server: tokio::io::DuplexStream| {
            let (limits, store) = (limits.clone(), store.clone());
            tokio::spawn(async move {
                let telemetry = crate::events::telemetry();
                let shutdown = CancellationToken::new();
                super::super::connection::serve_counted(
                    server,
                    peer(),
                    &limits,
                    store,
                    shutdown,
                    telemetry,
                    None,
                )
                .await;
            })
        };

        // Silent from the start: cut at the first-line timeout, not the handshake's.
        let started = tokio::time::Instant::now();
        let (_silent, server) = tokio::io::duplex(16 * 1024);
        serve(server).await?;
        assert_eq!(started.elapsed(), first_line);

        // A handshake completed 1.5 s in, then silence: closed 2 s after accept.
        let started = tokio::time::Instant::now();
        let (near, server) = tokio::io::duplex(16 * 1024);
        let task = serve(server);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let name = rustls_pki_types::ServerName::try_from("localhost")?;
        let mut tls = crate::tls::TlsConnector::from(client)
            .connect(name, near)
            .await?;
        let mut byte = [0u8; 1];
        // The server closes without a close_notify: an error or EOF, never a byte.
        let read = tokio::io::AsyncReadExt::read(&mut tls, &mut byte).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        task.await?;
        assert_eq!(started.elapsed(), first_line);
        drop(store);
        tokio::task::spawn_blocking(move || store_writer.finish()).await??;
        Ok(())
    }
}
