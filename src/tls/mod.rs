//! TLS for the sensor port: rustls configurations built from PEM files, shared by the server
//! (`--tls-cert`/`--tls-key`) and the client (`--tls`, `--ca`), and `sensorlink cert`
//! ([`cert`]), which makes a development CA and certificates to try them with.
//! [`ServerTls`] holds the server's configuration so SIGHUP can replace it: new handshakes
//! use the new one, established connections keep theirs.
//!
//! The crypto provider is ring, named explicitly (not the process default): it builds with
//! a C compiler alone, where aws-lc-rs also wants cmake (and more build time on small
//! machines). Without `--ca` the client trusts the Mozilla roots compiled in
//! (webpki-roots): the same on every host and in minimal containers with no system store.

pub mod cert;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;

pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The crypto provider every configuration here uses.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (a chain: leaf first).
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// The (first) private key in a PEM file: PKCS#8, PKCS#1 or SEC1.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a private key from {}", path.display()))
}

/// A root store holding every certificate in `path`.
fn roots_from(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .with_context(|| format!("adding a CA certificate from {}", path.display()))?;
    }
    Ok(roots)
}

/// The server side: our certificate chain and key; with `client_ca`, clients must present a
/// certificate it signed (mutual TLS).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(path) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots_from(path)?),
                provider(),
            )
            .build()
            .with_context(|| format!("client CA {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .with_context(|| {
            format!(
                "certificate {} and key {} do not make a usable pair",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// The server's TLS, reloadable: the sensor port's configuration (client certificates
/// required with a client CA) and the HTTP side's (same certificate, never asking for a
/// client certificate: browsers have none), both from the same files, swapped together.
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    current: RwLock<Loaded>,
}

/// One reading of the files.
struct Loaded {
    sensor: Arc<rustls::ServerConfig>,
    http: Arc<rustls::ServerConfig>,
    /// What was read, to say on reload what changed.
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Read the certificate chain, key and (mutual TLS) client CA.
    ///
    /// # Errors
    /// A file cannot be read or parsed, or the certificate and key do not match.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<ServerTls> {
        let loaded = Loaded::read(cert, key, client_ca)?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
            current: RwLock::new(loaded),
        })
    }

    /// Read the files again and use them for every new handshake; on any error the
    /// configuration in force stays. Returns what changed, for the log.
    ///
    /// # Errors
    /// As [`ServerTls::load`]; nothing is replaced then.
    pub fn reload(&self) -> anyhow::Result<String> {
        let fresh = Loaded::read(&self.cert, &self.key, self.client_ca.as_deref())?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut changed = Vec::new();
        if fresh.cert_pem != current.cert_pem {
            changed.push(format!("certificate {}", self.cert.display()));
        }
        if fresh.key_pem != current.key_pem {
            changed.push(format!("key {}", self.key.display()));
        }
        if fresh.client_ca_pem != current.client_ca_pem {
            if let Some(ca) = &self.client_ca {
                changed.push(format!("client CA {}", ca.display()));
            }
        }
        *current = fresh;
        Ok(if changed.is_empty() {
            "files unchanged".to_string()
        } else {
            format!("new {}", changed.join(", "))
        })
    }

    /// For a sensor-port handshake: the configuration in force now.
    pub fn sensor_acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(current.sensor.clone())
    }

    /// For an HTTPS handshake: the configuration in force now (no client certificate).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(current.http.clone())
    }
}

impl Loaded {
    fn read(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Loaded> {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let client_ca_pem = client_ca.map(read).transpose()?;
        let sensor = server_config(cert, key, client_ca)?;
        let mut http = (*server_config(cert, key, None)?).clone();
        // hyper serves HTTP/1.1 only here.
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Loaded {
            sensor,
            http: Arc::new(http),
            cert_pem,
            key_pem,
            client_ca_pem,
        })
    }
}

/// The client side: trust `ca` (else the compiled-in Mozilla roots); present `identity`
/// (certificate, key) when the server asks for one.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let roots = match ca {
        Some(path) => roots_from(path)?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .with_context(|| {
                format!(
                    "client certificate {} and key {} do not make a usable pair",
                    cert.display(),
                    key.display()
                )
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: `override_name`, else the
/// host part of `addr` (`host:port`, `[v6]:port`); an IP address is checked as one.
pub fn server_name(addr: &str, override_name: Option<&str>) -> anyhow::Result<ServerName<'static>> {
    let host = match override_name {
        Some(name) => name,
        None => host_of(addr),
    };
    ServerName::try_from(host.to_string())
        .with_context(|| format!("{host:?} is not a valid TLS server name (see --tls-server-name)"))
}

/// The host part of `host:port` or `[v6]:port` (all of `addr` when it has no port).
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, _)) if !host.contains(':') => host,
        Some(_) | None => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn host_of_takes_the_host_part() {
        assert_eq!(host_of("localhost:7878"), "localhost");
        assert_eq!(host_of("127.0.0.1:7878"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7878"), "::1");
        assert_eq!(host_of("::1"), "::1");
        assert_eq!(host_of("example.org"), "example.org");
    }

    /// Handshake `client` with `server` over an in-memory pipe and pass a byte through.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> anyhow::Result<()> {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(name.to_string())?;
        let accept = async move {
            let mut tls = TlsAcceptor::from(server).accept(b).await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            tls.write_all(&byte).await?;
            tls.flush().await?;
            anyhow::Ok(())
        };
        let connect = async move {
            let mut tls = TlsConnector::from(client).connect(name, a).await?;
            tls.write_all(b"x").await?;
            tls.flush().await?;
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await?;
            anyhow::ensure!(&byte == b"x", "echoed byte differs");
            anyhow::Ok(())
        };
        let (accepted, connected) = tokio::join!(accept, connect);
        connected?;
        accepted
    }

    #[tokio::test]
    async fn generated_certificates_verify_against_the_ca() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let written = cert::generate(dir.path(), &["localhost".into(), "127.0.0.1".into()], false)?;
        assert_eq!(written.len(), 6);
        let path = |name: &str| dir.path().join(name);
        // Every file parses: certificates and keys.
        for name in [cert::CA_CERT, cert::SERVER_CERT, cert::CLIENT_CERT] {
            assert_eq!(load_certs(&path(name))?.len(), 1, "{name}");
        }
        for name in [cert::CA_KEY, cert::SERVER_KEY, cert::CLIENT_KEY] {
            load_key(&path(name))?;
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(path(name))?.permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let server = server_config(&path(cert::SERVER_CERT), &path(cert::SERVER_KEY), None)?;
        let client = client_config(Some(&path(cert::CA_CERT)), None)?;
        handshake(server.clone(), client.clone(), "localhost").await?;
        handshake(server.clone(), client.clone(), "127.0.0.1").await?;
        // A name the certificate does not carry fails: verification really happens.
        assert!(handshake(server.clone(), client, "other.example")
            .await
            .is_err());
        // So does a client that trusts only the public roots.
        let public = client_config(None, None)?;
        assert!(handshake(server, public, "localhost").await.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn mutual_tls_wants_a_client_certificate() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        cert::generate(dir.path(), &["localhost".into()], false)?;
        let path = |name: &str| dir.path().join(name);
        let ca = path(cert::CA_CERT);
        let server = server_config(&path(cert::SERVER_CERT), &path(cert::SERVER_KEY), Some(&ca))?;
        let with_cert = client_config(
            Some(&ca),
            Some((&path(cert::CLIENT_CERT), &path(cert::CLIENT_KEY))),
        )?;
        handshake(server.clone(), with_cert, "localhost").await?;
        let without = client_config(Some(&ca), None)?;
        assert!(handshake(server, without, "localhost").await.is_err());
        Ok(())
    }

    /// A reload takes new files for new handshakes (old clients' CA no longer verifies,
    /// the new one does); a reload from broken files fails and keeps the configuration
    /// in force. The HTTP side never asks for a client certificate.
    #[tokio::test]
    async fn reload_swaps_the_configuration_or_keeps_the_old_one() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        cert::generate(dir.path(), &["localhost".into()], false)?;
        let path = |name: &str| dir.path().join(name);
        let ca = path(cert::CA_CERT);
        let tls = ServerTls::load(&path(cert::SERVER_CERT), &path(cert::SERVER_KEY), Some(&ca))?;
        let identity = (path(cert::CLIENT_CERT), path(cert::CLIENT_KEY));
        let identity = Some((identity.0.as_path(), identity.1.as_path()));
        let old_client = client_config(Some(&ca), identity)?;
        let sensor = |tls: &ServerTls| tls.sensor_acceptor().config().clone();
        handshake(sensor(&tls), old_client.clone(), "localhost").await?;
        assert_eq!(tls.reload()?, "files unchanged");

        cert::generate(dir.path(), &["localhost".into()], true)?;
        let changed = tls.reload()?;
        assert!(
            changed.contains("certificate") && changed.contains("client CA"),
            "{changed}"
        );
        let new_client = client_config(Some(&ca), identity)?;
        handshake(sensor(&tls), new_client.clone(), "localhost").await?;
        assert!(handshake(sensor(&tls), old_client, "localhost")
            .await
            .is_err());
        // HTTPS: same certificate, no client certificate wanted.
        let browser = client_config(Some(&ca), None)?;
        handshake(tls.http_acceptor().config().clone(), browser, "localhost").await?;

        std::fs::write(path(cert::SERVER_KEY), "not a key")?;
        let err = tls.reload().expect_err("a broken key must not load");
        assert!(format!("{err:#}").contains("server-key.pem"), "{err:#}");
        handshake(sensor(&tls), new_client, "localhost").await?;
        Ok(())
    }

    #[test]
    fn cert_refuses_to_overwrite_without_force() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let hosts = ["localhost".to_string()];
        cert::generate(dir.path(), &hosts, false)?;
        let before = std::fs::read(dir.path().join(cert::CA_CERT))?;
        let err = cert::generate(dir.path(), &hosts, false).expect_err("files exist");
        assert!(err.to_string().contains("--force"), "{err:#}");
        assert_eq!(std::fs::read(dir.path().join(cert::CA_CERT))?, before);
        cert::generate(dir.path(), &hosts, true)?;
        assert_ne!(std::fs::read(dir.path().join(cert::CA_CERT))?, before);
        Ok(())
    }
}
