//! `sensorlink token new | revoke | list`: edit the tokens file.
//!
//! Edits hold an advisory lock on `FILE.lock`, so two `token new` at once cannot lose one
//! another's token. The server is not told: it reads the file on SIGHUP.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::file::{TokenEntry, TokensFile};
use super::token::{self, TokenHash};
use super::Grant;

/// What a new token may do.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    /// Free text for people (defaults to the sensor patterns, or `reader`).
    pub name: Option<String>,
    /// Sensors it may write (globs); none: no write access.
    pub sensors: Vec<String>,
    /// Measurements it may write (globs); none: every measurement.
    pub measurements: Vec<String>,
    /// May read the HTTP API, dashboard and (if so configured) metrics.
    pub read: bool,
}

/// A token just made: printed once, never stored.
#[derive(Debug)]
pub struct Created {
    pub token: String,
    pub entry: TokenEntry,
}

/// Add a token to `path` (created if missing) and return it.
pub fn add(path: &Path, new: NewToken) -> anyhow::Result<Created> {
    anyhow::ensure!(
        !new.sensors.is_empty() || new.read,
        "a token needs a scope: --sensor PATTERN (write) and/or --read"
    );
    let _lock = lock(path)?;
    let mut file = read_or_empty(path)?;
    let id = loop {
        let id = token::new_id();
        if file.tokens.iter().all(|t| t.id != id) {
            break id;
        }
    };
    let token = token::new_token(&id);
    let name = new.name.unwrap_or_else(|| {
        if new.sensors.is_empty() {
            "reader".to_string()
        } else {
            new.sensors.join(",")
        }
    });
    let entry = TokenEntry {
        id,
        name,
        hash: TokenHash::of(&token).to_text(),
        sensors: new.sensors,
        measurements: if new.measurements.is_empty() {
            vec!["*".to_string()]
        } else {
            new.measurements
        },
        read: new.read,
        created: now(),
        revoked: None,
    };
    // Refuse a pattern the server would refuse, before the token is printed.
    Grant::from_entry(&entry).map_err(|e| anyhow::anyhow!("invalid scope: {e}"))?;
    file.tokens.push(entry.clone());
    file.write(path)?;
    Ok(Created { token, entry })
}

/// Revoke the tokens whose id is `who`, or else whose name is `who` (kept in the file,
/// marked revoked). Returns the revoked entries.
pub fn revoke(path: &Path, who: &str) -> anyhow::Result<Vec<TokenEntry>> {
    let _lock = lock(path)?;
    let mut file = TokensFile::read(path)?;
    let by_id = file.tokens.iter().any(|t| t.id == who);
    let mut revoked = Vec::new();
    let stamp = now();
    for entry in &mut file.tokens {
        let chosen = if by_id {
            entry.id == who
        } else {
            entry.name == who
        };
        if chosen && entry.revoked.is_none() {
            entry.revoked = Some(stamp.clone());
            revoked.push(entry.clone());
        }
    }
    if revoked.is_empty() {
        let already = file
            .tokens
            .iter()
            .any(|t| (t.id == who || t.name == who) && t.revoked.is_some());
        anyhow::bail!(
            "{}: no {}token with id or name {who:?}",
            path.display(),
            if already { "unrevoked " } else { "" }
        );
    }
    file.write(path)?;
    Ok(revoked)
}

/// Every token in `path`.
pub fn list(path: &Path) -> anyhow::Result<Vec<TokenEntry>> {
    Ok(TokensFile::read(path)?.tokens)
}

fn read_or_empty(path: &Path) -> anyhow::Result<TokensFile> {
    match path.try_exists() {
        Ok(true) => TokensFile::read(path),
        Ok(false) => Ok(TokensFile::default()),
        Err(err) => Err(err).with_context(|| format!("checking {}", path.display())),
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Hold `FILE.lock` exclusively until dropped (waits for another `token` command).
fn lock(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut lock_path = PathBuf::from(path.as_os_str());
    lock_path.as_mut_os_string().push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    fs4::FileExt::lock(&file).with_context(|| format!("locking {}", lock_path.display()))?;
    Ok(file)
}

/// `token list` as a table: id, name, scope, created, revoked.
pub fn write_table(entries: &[TokenEntry], out: &mut impl std::io::Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<8}  {:<20}  {:<5}  {:<30}  {:<20}  revoked",
        "id", "name", "read", "sensors / measurements", "created"
    )?;
    for e in entries {
        let scope = format!("{} / {}", e.sensors.join(","), e.measurements.join(","));
        writeln!(
            out,
            "{:<8}  {:<20}  {:<5}  {:<30}  {:<20}  {}",
            e.id,
            e.name,
            if e.read { "yes" } else { "no" },
            scope,
            e.created,
            e.revoked.as_deref().unwrap_or("-")
        )?;
    }
    Ok(())
}
