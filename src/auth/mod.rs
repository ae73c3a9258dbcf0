//! Token authentication: who may write which sensors, and who may read.
//!
//! - [`token`]: the token text (`sl_<id>_<secret>`), its id and its SHA-256 hash.
//! - [`file`]: the tokens file (`--auth FILE`, TOML, hashes only), written atomically.
//! - [`admin`]: `sensorlink token new | revoke | list`.
//! - [`cidr`]: the `--allow-legacy` networks (legacy peers cannot present a token).
//! - here: [`Authority`] (the loaded file; verifies a presented token in constant time;
//!   reloads on request) and [`Grant`] (what one token may do).
//!
//! A connection keeps the [`Grant`] it authenticated with. A reload that revokes, removes or
//! changes a token marks its old grant stale, so connections holding it see
//! [`Grant::is_current`] turn false and must re-check ([`Authority::refresh`]).

pub mod admin;
pub mod cidr;
pub mod file;
pub mod token;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use globset::{Glob, GlobSet, GlobSetBuilder};

use file::{TokenEntry, TokensFile};
use token::TokenHash;

/// Why a presented token was refused. The text is safe to send to the peer and to log: it
/// never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed token")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token {0} is revoked")]
    Revoked(String),
}

impl Refusal {
    /// Bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Unknown => "unknown",
            Refusal::Revoked(_) => "revoked",
        }
    }
}

/// Why a token may not write a reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("token {token} may not write (no sensors in its scope)")]
    NoWrite { token: String },
    #[error("token {token} may not write sensor {sensor:?}")]
    Sensor { token: String, sensor: String },
    #[error("token {token} may not write measurement {measurement:?}")]
    Measurement { token: String, measurement: String },
    #[error("a sensor tag is required: token {token} may write several sensors ({patterns})")]
    SensorTagRequired { token: String, patterns: String },
}

/// What one token may do.
#[derive(Debug)]
pub struct Grant {
    id: String,
    name: String,
    sensor_patterns: Vec<String>,
    sensors: GlobSet,
    measurements: GlobSet,
    /// The sensor of untagged readings: the one pattern, when it is a plain name.
    implied_sensor: Option<String>,
    read: bool,
    /// The hash of the token this grant was made for: a reload that keeps the id but
    /// changes the hash (a new secret) must not carry holders of the old secret over.
    hash: TokenHash,
    /// Set by a reload that revoked, removed or changed this token.
    stale: AtomicBool,
}

impl Grant {
    fn from_entry(entry: &TokenEntry) -> Result<Self, String> {
        let sensors = globs(&entry.sensors).map_err(|e| format!("sensors: {e}"))?;
        let measurements = globs(&entry.measurements).map_err(|e| format!("measurements: {e}"))?;
        let hash = TokenHash::parse(&entry.hash)?;
        let implied_sensor = match entry.sensors.as_slice() {
            [one] if !one.contains(['*', '?', '[', '{', '\\']) => Some(one.clone()),
            _ => None,
        };
        Ok(Grant {
            id: entry.id.clone(),
            name: entry.name.clone(),
            sensor_patterns: entry.sensors.clone(),
            sensors,
            measurements,
            implied_sensor,
            read: entry.read,
            hash,
            stale: AtomicBool::new(false),
        })
    }

    /// The token's id (public: it is in the token and in the file).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `name (id)`, or the id alone: how logs and errors name the token.
    pub fn label(&self) -> String {
        if self.name.is_empty() {
            self.id.clone()
        } else {
            format!("{} ({})", self.name, self.id)
        }
    }

    pub fn may_read(&self) -> bool {
        self.read
    }

    pub fn may_write(&self) -> bool {
        !self.sensor_patterns.is_empty()
    }

    /// The sensor a reading of `measurement` with this `sensor` tag (if any) is stored under,
    /// or why this token may not write it. An untagged reading belongs to the token's one
    /// sensor; a token for several sensors must name one per reading.
    pub fn sensor_for<'a>(
        &'a self,
        measurement: &str,
        sensor: Option<&'a str>,
    ) -> Result<&'a str, ScopeError> {
        if !self.may_write() {
            return Err(ScopeError::NoWrite {
                token: self.label(),
            });
        }
        let sensor = match (sensor, &self.implied_sensor) {
            (Some(sensor), _) => sensor,
            (None, Some(implied)) => implied.as_str(),
            (None, None) => {
                return Err(ScopeError::SensorTagRequired {
                    token: self.label(),
                    patterns: self.sensor_patterns.join(", "),
                })
            }
        };
        if !self.sensors.is_match(sensor) {
            return Err(ScopeError::Sensor {
                token: self.label(),
                sensor: sensor.to_string(),
            });
        }
        if !self.measurements.is_match(measurement) {
            return Err(ScopeError::Measurement {
                token: self.label(),
                measurement: measurement.to_string(),
            });
        }
        Ok(sensor)
    }

    /// False once a reload revoked, removed or changed this token.
    pub fn is_current(&self) -> bool {
        !self.stale.load(Ordering::Relaxed)
    }
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

struct Entry {
    hash: TokenHash,
    revoked: bool,
    grant: Arc<Grant>,
    /// The file's record, to tell on reload whether the token changed.
    record: TokenEntry,
}

/// The loaded tokens file.
#[derive(Default)]
struct Table {
    by_id: HashMap<String, Entry>,
}

impl Table {
    fn load(path: &Path) -> anyhow::Result<Table> {
        let file = TokensFile::read(path)?;
        Table::from_file(&file).map_err(|e| anyhow::anyhow!("tokens file {}: {e}", path.display()))
    }

    fn from_file(file: &TokensFile) -> Result<Table, String> {
        let mut by_id = HashMap::with_capacity(file.tokens.len());
        for record in &file.tokens {
            let context = |e: String| format!("token {:?}: {e}", record.id);
            if !token::valid_id(&record.id) {
                return Err(context("an id is 8 lowercase letters or digits".into()));
            }
            let hash = TokenHash::parse(&record.hash).map_err(context)?;
            let grant = Grant::from_entry(record).map_err(context)?;
            let entry = Entry {
                hash,
                revoked: record.revoked.is_some(),
                grant: Arc::new(grant),
                record: record.clone(),
            };
            if by_id.insert(record.id.clone(), entry).is_some() {
                return Err(context("listed twice".into()));
            }
        }
        Ok(Table { by_id })
    }
}

/// What a reload changed, for its log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub active: usize,
    pub revoked: usize,
    pub added: usize,
    pub removed_or_changed: usize,
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} active, {} revoked; {} new, {} removed, revoked or changed",
            self.active, self.revoked, self.added, self.removed_or_changed
        )
    }
}

/// The tokens the server accepts: the `--auth` file as last loaded.
pub struct Authority {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("path", &self.path)
            .finish()
    }
}

impl Authority {
    /// Load `path`; an unreadable or invalid file is an error (the server must not start
    /// with auth silently off).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let table = Table::load(path)?;
        Ok(Authority {
            path: path.to_path_buf(),
            table: RwLock::new(Arc::new(table)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn table(&self) -> Arc<Table> {
        // A poisoned lock only means a reload panicked between two whole-table swaps.
        Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Tokens that are not revoked.
    pub fn active(&self) -> usize {
        self.table().by_id.values().filter(|e| !e.revoked).count()
    }

    /// Check a presented token. The secret is compared in constant time; an unknown id
    /// still costs one hash, so a guess learns nothing from the reply time.
    pub fn verify(&self, presented: &str) -> Result<Arc<Grant>, Refusal> {
        let hash = TokenHash::of(presented);
        let id = token::id_of(presented).ok_or(Refusal::Malformed)?;
        let table = self.table();
        let entry = table.by_id.get(id).ok_or(Refusal::Unknown)?;
        if !entry.hash.matches(&hash) {
            return Err(Refusal::Unknown);
        }
        if entry.revoked {
            return Err(Refusal::Revoked(entry.grant.label()));
        }
        Ok(Arc::clone(&entry.grant))
    }

    /// The key of token `id`'s signed UDP probes (its hash), while the token is in force:
    /// a token revoked or removed by a reload stops signing probes at once.
    pub fn probe_key(&self, id: &str) -> Option<TokenHash> {
        let table = self.table();
        let entry = table.by_id.get(id)?;
        (!entry.revoked).then_some(entry.hash)
    }

    /// The current grant of a token verified earlier whose grant went stale: the same
    /// token, reloaded (its hash unchanged, compared in constant time), or why it is refused
    /// now.
    pub fn refresh(&self, stale: &Grant) -> Result<Arc<Grant>, Refusal> {
        let table = self.table();
        let entry = table.by_id.get(&stale.id).ok_or(Refusal::Unknown)?;
        if !entry.hash.matches(&stale.hash) {
            return Err(Refusal::Unknown);
        }
        if entry.revoked {
            return Err(Refusal::Revoked(entry.grant.label()));
        }
        Ok(Arc::clone(&entry.grant))
    }

    /// Re-read the file. On any error the tokens in force stay as they were. Tokens that
    /// were revoked, removed or changed mark their old grants stale.
    pub fn reload(&self) -> anyhow::Result<ReloadSummary> {
        let new = Table::load(&self.path)?;
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut summary = ReloadSummary::default();
        for (id, old) in &guard.by_id {
            let unchanged = new.by_id.get(id).is_some_and(|e| e.record == old.record);
            if !unchanged {
                old.grant.stale.store(true, Ordering::Relaxed);
                summary.removed_or_changed += 1;
            }
        }
        summary.added = new
            .by_id
            .keys()
            .filter(|id| !guard.by_id.contains_key(*id))
            .count();
        // Keep the old grant of an unchanged token so connections holding it stay current.
        let mut new = new;
        for (id, entry) in new.by_id.iter_mut() {
            if let Some(old) = guard.by_id.get(id) {
                if old.record == entry.record {
                    entry.grant = Arc::clone(&old.grant);
                }
            }
        }
        summary.revoked = new.by_id.values().filter(|e| e.revoked).count();
        summary.active = new.by_id.len() - summary.revoked;
        *guard = Arc::new(new);
        Ok(summary)
    }
}

#[cfg(test)]
mod tests;
