//! The tokens file (`--auth FILE`, TOML): what `sensorlink token` writes and the server reads.
//!
//! ```toml
//! [[token]]
//! id = "k3v9q2xa"
//! name = "kitchen"
//! hash = "sha256:…"               # of the whole token; the token itself is never stored
//! sensors = ["kitchen-*"]         # sensors it may write (globs); empty: no write access
//! measurements = ["*"]            # measurements it may write (globs)
//! read = false                    # may read the HTTP API and dashboard
//! created = "2026-11-27T05:00:00Z"
//! revoked = "2026-11-28T09:00:00Z" # present once revoked: refused, kept for the record
//! ```
//!
//! Written atomically (a temporary file in the same directory, synced, then renamed) with
//! mode 0600, so a server reloading on SIGHUP never reads half a file.

use std::io::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    #[serde(default, rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

/// One token's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub hash: String,
    #[serde(default)]
    pub sensors: Vec<String>,
    #[serde(default = "every_measurement")]
    pub measurements: Vec<String>,
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
}

fn every_measurement() -> Vec<String> {
    vec!["*".to_string()]
}

const HEADER: &str =
    "# sensorlink tokens: written by `sensorlink token`. Only hashes are kept; each token\n\
# was printed once when it was made. The server reads this file at start and on SIGHUP.\n\n";

impl TokensFile {
    /// Read and parse `path`; a missing file is an error (the caller decides whether that
    /// means "empty").
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading tokens file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing tokens file {}", path.display()))
    }

    /// Replace `path` with this file's contents, atomically, readable by the owner only.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let body = toml::to_string_pretty(self).context("encoding the tokens file")?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut temp = tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        temp.1
            .write_all(HEADER.as_bytes())
            .and_then(|()| temp.1.write_all(body.as_bytes()))
            .and_then(|()| temp.1.sync_all())
            .with_context(|| format!("writing {}", temp.0.display()))?;
        std::fs::rename(&temp.0, path)
            .with_context(|| format!("replacing {} with {}", path.display(), temp.0.display()))?;
        // The rename is durable only once the directory is synced.
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

/// Create `DIR/.tokens-<random>.tmp` exclusively, mode 0600 on Unix.
fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    loop {
        let path = dir.join(format!(".tokens-{}.tmp", super::token::new_id()));
        match options.open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_back_with_owner_only_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tokens.toml");
        let file = TokensFile {
            tokens: vec![TokenEntry {
                id: "abcd1234".into(),
                name: "kitchen".into(),
                hash: super::super::token::TokenHash::of("x").to_text(),
                sensors: vec!["kitchen-*".into()],
                measurements: every_measurement(),
                read: true,
                created: "2026-11-27T05:00:00Z".into(),
                revoked: None,
            }],
        };
        file.write(&path).expect("write");
        assert_eq!(TokensFile::read(&path).expect("read back"), file);
        let text = std::fs::read_to_string(&path).expect("text");
        assert!(text.starts_with("# sensorlink tokens"), "{text}");
        assert!(!text.contains("revoked"), "absent until revoked: {text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let file: TokensFile =
            toml::from_str("[[token]]\nid = \"abcd1234\"\nhash = \"h\"\n").expect("minimal entry");
        assert_eq!(file.tokens[0].measurements, vec!["*"]);
        assert!(file.tokens[0].sensors.is_empty() && !file.tokens[0].read);
        assert!(
            toml::from_str::<TokensFile>("[[token]]\nid=\"a\"\nhash=\"h\"\nsecret=\"x\"\n")
                .is_err()
        );
        assert_eq!(
            toml::from_str::<TokensFile>("").expect("empty"),
            TokensFile::default()
        );
    }
}
