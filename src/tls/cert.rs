//! `sensorlink cert`: a development CA and the server and client certificates it signs,
//! written as PEM files (keys readable by the owner only). For trying TLS and for tests; a
//! deployment brings its own PKI.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The hosts a server certificate names when `--host` is not given.
pub const DEFAULT_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The files `sensorlink cert` writes, by name inside its directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";

/// Every file written, certificate or key (keys get mode 0600).
const FILES: [(&str, bool); 6] = [
    (CA_CERT, false),
    (CA_KEY, true),
    (SERVER_CERT, false),
    (SERVER_KEY, true),
    (CLIENT_CERT, false),
    (CLIENT_KEY, true),
];

/// Generate the CA, a server certificate for `hosts` (DNS names or IP addresses) and a
/// client certificate into `dir` (created if missing). Existing files are an error unless
/// `force`; nothing is written then. Returns the paths written.
pub fn generate(dir: &Path, hosts: &[String], force: bool) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(!hosts.is_empty(), "no host for the server certificate");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !force {
        // All checked before any is written: a refusal leaves the directory as it was.
        let existing: Vec<String> = FILES
            .iter()
            .map(|(name, _)| dir.join(name))
            .filter(|path| path.exists())
            .map(|path| path.display().to_string())
            .collect();
        anyhow::ensure!(
            existing.is_empty(),
            "refusing to overwrite {} (use --force)",
            existing.join(", ")
        );
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sensorlink development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("signing the CA")?;

    let (server_pem, server_key) = leaf(
        hosts.to_vec(),
        "sensorlink server",
        ExtendedKeyUsagePurpose::ServerAuth,
        &ca,
    )
    .context("the server certificate (is every --host a DNS name or an IP address?)")?;
    let (client_pem, client_key) = leaf(
        Vec::new(),
        "sensorlink client",
        ExtendedKeyUsagePurpose::ClientAuth,
        &ca,
    )
    .context("the client certificate")?;

    let contents = [
        ca.pem(),
        ca_key_pem,
        server_pem,
        server_key,
        client_pem,
        client_key,
    ];
    let mut written = Vec::with_capacity(FILES.len());
    for ((name, secret), text) in FILES.iter().zip(contents) {
        let path = dir.join(name);
        write_file(&path, text.as_bytes(), *secret)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// A certificate for `names` signed by `ca`, as (certificate PEM, key PEM).
fn leaf(
    names: Vec<String>,
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
    ca: &CertifiedIssuer<'_, KeyPair>,
) -> anyhow::Result<(String, String)> {
    let mut params = CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Write `bytes` to `path`, replacing it; a `secret` is created with mode 0600 (and an
/// existing file's mode is reset to it).
fn write_file(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mode = if secret { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    if secret {
        // `mode` applies only when the file is created; `--force` may be replacing one.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    }
    file.write_all(bytes)?;
    file.sync_all()
}
