//! TLS to PostgreSQL, asked for as libpq asks for it: the URL's `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` (else `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`).
//!
//! | sslmode | here |
//! |---|---|
//! | (none), `disable`, `allow` | plain TCP (libpq's default is `prefer`: we stay plain unless asked) |
//! | `prefer` | TLS when the server offers it, else plain |
//! | `require` | TLS or no connection; the certificate is checked against a root certificate when one is given (as libpq does), else not at all |
//! | `verify-ca` | TLS, the chain checked against the root certificate |
//! | `verify-full` | that, and the certificate must name the host |
//!
//! `verify-*` need a root certificate: `sslrootcert=PATH` (PEM), libpq's default
//! `~/.postgresql/root.crt`, or `sslrootcert=system` (here the Mozilla roots compiled in,
//! as the sensor client uses: the same on every host). A client certificate
//! (`sslcert` + `sslkey`, PEM) is presented when the server asks for one. rustls with ring,
//! as for the sensor port (`crate::tls`), through tokio-postgres-rustls (which also gives
//! SCRAM channel binding).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The URL's query parameters this module reads; the driver is given the URL without them.
pub(super) const PARAMS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// libpq's `sslmode`, as far as this build honours it (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl Mode {
    pub(super) fn parse(text: &str, source: &str) -> Result<Mode, String> {
        Ok(match text {
            "disable" => Mode::Disable,
            "allow" => Mode::Allow,
            "prefer" => Mode::Prefer,
            "require" => Mode::Require,
            "verify-ca" => Mode::VerifyCa,
            "verify-full" => Mode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown {source} {other:?} (disable, allow, prefer, require, verify-ca or \
                     verify-full)"
                ))
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Allow => "allow",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }

    /// What the driver does before the startup message.
    fn driver_mode(self) -> SslMode {
        match self {
            Mode::Disable | Mode::Allow => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }
}

/// Where the root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    File(PathBuf),
    /// `sslrootcert=system`: the Mozilla roots compiled in (webpki-roots).
    Compiled,
}

/// The TLS settings of one URL: resolved once, used by every pool built from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PgTls {
    mode: Mode,
    roots: Option<Roots>,
    identity: Option<(PathBuf, PathBuf)>,
}

impl PgTls {
    /// The settings from the URL's query (`last` gives a parameter's last value, as libpq
    /// takes the last) and, where the URL names none, libpq's environment variables and
    /// default files.
    ///
    /// # Errors
    /// An unknown mode, a `verify-*` mode without a root certificate, a certificate without
    /// its key (or the reverse).
    pub(super) fn resolve(
        last: impl Fn(&str) -> Option<String>,
        env: impl Fn(&str) -> Option<String>,
        home: Option<PathBuf>,
    ) -> Result<PgTls, String> {
        // An empty value counts as not given, as in libpq.
        let last = |param: &str| last(param).filter(|value| !value.is_empty());
        let env = |var: &str| env(var).filter(|value| !value.is_empty());
        let setting = |param: &str, var: &str| last(param).or_else(|| env(var));
        let mode = match last("sslmode") {
            Some(text) => Mode::parse(&text, "sslmode")?,
            None => match env("PGSSLMODE") {
                Some(text) => Mode::parse(&text, "PGSSLMODE")?,
                None => Mode::Disable,
            },
        };
        let default_file = |name: &str| {
            home.as_ref()
                .map(|home| home.join(".postgresql").join(name))
                .filter(|path| path.exists())
        };
        let roots = match setting("sslrootcert", "PGSSLROOTCERT") {
            Some(text) if text == "system" => Some(Roots::Compiled),
            Some(text) => Some(Roots::File(PathBuf::from(text))),
            None => default_file("root.crt").map(Roots::File),
        };
        let identity = match (
            setting("sslcert", "PGSSLCERT").map(PathBuf::from),
            setting("sslkey", "PGSSLKEY").map(PathBuf::from),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => default_file("postgresql.crt").zip(default_file("postgresql.key")),
            (Some(_), None) => return Err("sslcert without sslkey: give both".into()),
            (None, Some(_)) => return Err("sslkey without sslcert: give both".into()),
        };
        if matches!(mode, Mode::VerifyCa | Mode::VerifyFull) && roots.is_none() {
            return Err(format!(
                "sslmode={}: no root certificate to verify the server with: give \
                 sslrootcert=PATH (PEM), put it in ~/.postgresql/root.crt, or say \
                 sslrootcert=system for the public Web PKI roots",
                mode.name()
            ));
        }
        Ok(PgTls {
            mode,
            roots,
            identity,
        })
    }

    /// Whether connections may speak TLS at all.
    pub(super) fn enabled(&self) -> bool {
        !matches!(self.mode, Mode::Disable | Mode::Allow)
    }

    pub(super) fn driver_mode(&self) -> SslMode {
        self.mode.driver_mode()
    }

    /// One line for the log: the mode and what is checked.
    pub(super) fn describe(&self) -> String {
        if !self.enabled() {
            return format!("plain (sslmode={})", self.mode.name());
        }
        let check = match (&self.roots, self.mode) {
            (None, _) => "the server's certificate is NOT verified: encrypted, not authenticated",
            (Some(_), Mode::VerifyFull) => "chain and host name verified",
            (Some(_), _) => "chain verified, host name not checked",
        };
        let roots = match &self.roots {
            Some(Roots::File(path)) => format!(", root certificate {}", path.display()),
            Some(Roots::Compiled) => ", the compiled-in Web PKI roots".into(),
            None => String::new(),
        };
        let identity = match &self.identity {
            Some((cert, _)) => format!(", client certificate {}", cert.display()),
            None => String::new(),
        };
        format!(
            "TLS (sslmode={}: {check}{roots}{identity})",
            self.mode.name()
        )
    }

    /// The driver's TLS connector; `None` when the mode is plain.
    ///
    /// # Errors
    /// A root or client certificate (or key) that cannot be read or used.
    pub(super) fn connector(&self) -> anyhow::Result<Option<MakeRustlsConnect>> {
        if !self.enabled() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|err| anyhow::anyhow!("TLS protocol versions: {err}"))?;
        let builder = match (&self.roots, self.mode) {
            (None, _) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified { provider })),
            (Some(roots), mode) => {
                let roots = Arc::new(match roots {
                    Roots::File(path) => root_store(path)?,
                    Roots::Compiled => rustls::RootCertStore {
                        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                    },
                });
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|err| anyhow::anyhow!("root certificates: {err}"))?;
                if mode == Mode::VerifyFull {
                    builder.with_webpki_verifier(webpki)
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(ChainOnly { webpki }))
                }
            }
        };
        let config = match &self.identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(crate::tls::load_certs(cert)?, crate::tls::load_key(key)?)
                .map_err(|err| {
                    anyhow::anyhow!(
                        "client certificate {} and key {} do not make a usable pair: {err}",
                        cert.display(),
                        key.display()
                    )
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(Some(MakeRustlsConnect::new(config)))
    }
}

/// Every certificate in the PEM file at `path`, as trust anchors.
fn root_store(path: &Path) -> anyhow::Result<rustls::RootCertStore> {
    let mut store = rustls::RootCertStore::empty();
    for cert in crate::tls::load_certs(path)? {
        store
            .add(cert)
            .map_err(|err| anyhow::anyhow!("root certificate in {}: {err}", path.display()))?;
    }
    Ok(store)
}

/// `verify-ca` (and `require` with a root certificate): the chain must lead to a root we
/// trust; the name in the certificate is not compared with the host (libpq's meaning).
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            // The chain was good (webpki checks it before the name): only the name failed.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `require`/`prefer` without a root certificate: encryption against a passive listener,
/// as libpq gives; the handshake's signatures are still checked against the certificate
/// presented, but nothing says whose certificate it is.
#[derive(Debug)]
struct Unverified {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(query: &[(&str, &str)], env: &[(&str, &str)]) -> Result<PgTls, String> {
        resolve_home(query, env, None)
    }

    fn resolve_home(
        query: &[(&str, &str)],
        env: &[(&str, &str)],
        home: Option<PathBuf>,
    ) -> Result<PgTls, String> {
        let last = |name: &str| {
            query
                .iter()
                .rev()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        let var = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        };
        PgTls::resolve(last, var, home)
    }

    #[test]
    fn modes_map_to_the_driver_as_libpq_means_them() {
        let mode = |m: &str| {
            resolve(&[("sslmode", m), ("sslrootcert", "ca.pem")], &[])
                .expect("resolves")
                .driver_mode()
        };
        assert_eq!(mode("disable"), SslMode::Disable);
        assert_eq!(mode("allow"), SslMode::Disable);
        assert_eq!(mode("prefer"), SslMode::Prefer);
        assert_eq!(mode("require"), SslMode::Require);
        assert_eq!(mode("verify-ca"), SslMode::Require);
        assert_eq!(mode("verify-full"), SslMode::Require);
        // No sslmode anywhere: plain, not libpq's `prefer`.
        let plain = resolve(&[], &[]).expect("resolves");
        assert!(!plain.enabled());
        assert!(plain.connector().expect("no connector needed").is_none());
        let err = resolve(&[("sslmode", "required")], &[]).expect_err("unknown mode");
        assert!(err.contains("unknown sslmode \"required\""), "{err}");
    }

    #[test]
    fn the_url_wins_over_the_environment_and_the_last_value_wins() {
        let tls = resolve(
            &[("sslmode", "require"), ("sslmode", "disable")],
            &[("PGSSLMODE", "verify-full")],
        )
        .expect("resolves");
        assert!(!tls.enabled(), "{tls:?}");
        let tls = resolve(&[], &[("PGSSLMODE", "require")]).expect("resolves");
        assert_eq!(tls.driver_mode(), SslMode::Require);
        let err = resolve(&[], &[("PGSSLMODE", "bogus")]).expect_err("unknown");
        assert!(err.contains("PGSSLMODE"), "{err}");
    }

    #[test]
    fn verification_needs_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let err = resolve(&[("sslmode", mode)], &[]).expect_err("no roots");
            assert!(err.contains("sslrootcert"), "{err}");
        }
        let tls = resolve(
            &[("sslmode", "verify-full"), ("sslrootcert", "system")],
            &[],
        )
        .expect("the compiled-in roots");
        assert!(
            tls.describe().contains("host name verified"),
            "{}",
            tls.describe()
        );
        assert!(tls.connector().expect("builds").is_some());
        // `require` without roots encrypts and says it does not authenticate.
        let tls = resolve(&[("sslmode", "require")], &[]).expect("resolves");
        assert!(
            tls.describe().contains("NOT verified"),
            "{}",
            tls.describe()
        );
        // libpq's default root file counts when it exists.
        let home = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(home.path().join(".postgresql")).expect("mkdir");
        std::fs::write(home.path().join(".postgresql/root.crt"), "x").expect("write");
        let tls = resolve_home(
            &[("sslmode", "verify-ca")],
            &[],
            Some(home.path().to_path_buf()),
        )
        .expect("the default root file");
        assert!(tls.describe().contains("root.crt"), "{}", tls.describe());
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_unreadable_files_are_errors() {
        let err =
            resolve(&[("sslmode", "require"), ("sslcert", "c.pem")], &[]).expect_err("no key");
        assert!(err.contains("sslkey"), "{err}");
        let err =
            resolve(&[("sslmode", "require")], &[("PGSSLKEY", "k.pem")]).expect_err("no cert");
        assert!(err.contains("sslcert"), "{err}");
        let tls = resolve(
            &[
                ("sslmode", "verify-full"),
                ("sslrootcert", "/nonexistent/ca.pem"),
            ],
            &[],
        )
        .expect("resolves: files are read when connecting");
        let Err(err) = tls.connector() else {
            panic!("a missing root file is an error");
        };
        let err = err.to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
