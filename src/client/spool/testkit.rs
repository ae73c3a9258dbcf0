//! Helpers shared by the spool's unit tests: readings, a fixed clock, opening and crashing.

use std::path::{Path, PathBuf};

use super::{recovery, Recovery, Spool, SpoolLimits};
use crate::protocol::{FieldValue, Reading};

/// The tests' "now", in ns since the epoch.
pub const NOW: i64 = 1_800_000_000_000_000_000;

/// No limits.
pub const BIG: SpoolLimits = SpoolLimits {
    max_bytes: u64::MAX,
    max_age: None,
};

/// A small reading whose value and timestamp follow `v`.
pub fn reading(v: i64) -> Reading {
    Reading {
        measurement: "m".into(),
        tags: vec![("sensor".into(), "s1".into())],
        fields: vec![("value".into(), FieldValue::Int(v))],
        timestamp_ns: Some(NOW + v),
    }
}

/// Open with a chosen segment size at [`NOW`], or panic naming the directory.
pub fn open(dir: &Path, limits: SpoolLimits, segment_bytes: u64) -> (Spool, Recovery) {
    match Spool::open_with(dir, limits, segment_bytes, NOW) {
        Ok(opened) => opened,
        Err(err) => panic!("open {}: {err}", dir.display()),
    }
}

pub fn seqs(recovery: &Recovery) -> Vec<u64> {
    recovery.readings.iter().map(|r| r.seq).collect()
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    recovery::list_segments(dir)
        .expect("the test directory is readable")
        .into_iter()
        .map(|(_, _, path)| path)
        .collect()
}

/// A crash: nothing is flushed, and the kernel releases the lock as the process ends.
pub fn crash(mut spool: Spool) {
    spool._lock.release_as_if_crashed();
    std::mem::forget(spool);
}

pub fn append_all(spool: &mut Spool, range: std::ops::RangeInclusive<i64>) {
    for v in range {
        spool.append(v as u64, &reading(v)).expect("append");
    }
}
