//! Where a client's values come from (`--source`).

use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::FieldValue;

/// A parsed `--source` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// 102, 104, 106, … (the seed's counter).
    Counter,
    /// A random walk.
    Random,
    /// Run a shell command; each line it prints is a value; re-run at the next interval
    /// when it exits.
    Exec(String),
    /// Re-read a file each interval (e.g. /sys/class/thermal/thermal_zone0/temp).
    File(PathBuf),
    /// Each line of standard input is a value; ends at EOF.
    Stdin,
}

/// Why a source could not give a value.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid --source {0:?}: expected counter, random, exec:CMD, file:PATH or stdin")]
    InvalidSpec(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: not a number: {text:?}")]
    NotANumber { what: String, text: String },
}

impl std::str::FromStr for SourceSpec {
    type Err = SourceError;
    fn from_str(_s: &str) -> Result<Self, Self::Err> {
        unimplemented!()
    }
}

/// A running source of values, paced by the interval where the source is periodic.
pub struct Source {}

impl Source {
    /// `first_tick_delayed`: wait one interval before the first value (the seed did).
    pub fn new(_spec: &SourceSpec, _interval: Duration, _first_tick_delayed: bool) -> Self {
        unimplemented!()
    }

    /// The next value, waiting for it; `Ok(None)` when the source has ended (stdin EOF).
    pub async fn next(&mut self) -> Result<Option<FieldValue>, SourceError> {
        unimplemented!()
    }
}
