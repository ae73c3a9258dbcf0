//! The client's on-disk spool (`--spool DIR`): every reading is stored here before it is
//! sent and forgotten once the server acknowledged it, so readings survive a client crash or
//! restart and are sent again, in order and with their original timestamps, on the next start.
//!
//! # Files in `DIR`
//! - `lock`: held with an advisory exclusive lock while a client uses the spool; a second
//!   client fails with [`SpoolError::Locked`] (`lock.rs`).
//! - `<16 hex digits>.seg`: segments, append-only, named after the first seq written to
//!   them: the magic `SLSPSEG1`, then records framed by length and CRC (`record.rs`).
//!   Seqs increase strictly across all segments, and segment names increase with them. A
//!   segment rolls once it reaches about a quarter of `max_bytes` (64 KiB..4 MiB) and is
//!   deleted once every record in it is done.
//! - `state`: `done_through` and `next_seq`, replaced atomically (`state.rs`).
//!   `done_through` is the low-water mark: every seq up to it was acknowledged or dropped on
//!   purpose (both only ever remove the oldest readings, so one number describes them).
//!   `next_seq` keeps seqs from being reused once the segments holding them are deleted.
//!
//! # Durability
//! [`Spool::append`] and [`Spool::append_batch`] `fdatasync` the segment (and the directory
//! when they create one) before returning: a reading the client has produced survives a
//! power cut. Acknowledgements are persisted lazily (at most every
//! [`ACK_PERSIST_INTERVAL`], before segments are deleted, and on [`Spool::close`] / drop):
//! if the state file lags, a restart sends some already stored readings again, which is
//! harmless because the server deduplicates by series and timestamp. The same holds for
//! readings dropped by the limits: after a crash a few may come back and be delivered.
//!
//! # Recovery
//! Opening reads and repairs every segment (`recovery.rs`), then applies the limits:
//! readings older than `max_age`, then the oldest beyond `max_bytes`, are dropped.
//!
//! # Limits
//! `max_bytes` bounds the record bytes (header + payload) of readings not yet done; appending
//! beyond it drops the oldest, but never the newest reading. On disk, done records in
//! segments not yet deleted add at most about two segments. `max_age` drops readings whose
//! timestamp is older than `now - max_age`, oldest first: expiry stops at the first reading
//! that is not expired (it can only remove a prefix), and readings without a timestamp never
//! expire.

mod lock;
mod record;
mod recovery;
mod state;
#[cfg(test)]
mod testkit;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::Reading;

use lock::LockFile;
pub use record::MAX_RECORD_PAYLOAD;
use record::{encode_record, SEGMENT_MAGIC};
use state::StateFile;

/// How long an acknowledgement may wait before the state file is rewritten.
pub const ACK_PERSIST_INTERVAL: Duration = Duration::from_millis(100);

/// Bounds of a segment's size: a quarter of `max_bytes`, clamped to these.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;
const MAX_SEGMENT_BYTES: u64 = 4 << 20;

/// How much the spool may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// Record bytes (header + payload) of readings not yet acknowledged.
    pub max_bytes: u64,
    /// Readings with a timestamp older than `now - max_age` are dropped.
    pub max_age: Option<Duration>,
}

/// A reading kept in the spool, under the seq it was appended with.
#[derive(Debug, Clone, PartialEq)]
pub struct SpooledReading {
    pub seq: u64,
    pub reading: Reading,
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recovery {
    /// Readings not yet acknowledged, in seq order, under their original seqs.
    pub readings: Vec<SpooledReading>,
    /// The first free seq: greater than every seq ever appended, even acknowledged ones.
    pub next_seq: u64,
    /// One human description per problem found, e.g. a truncated record.
    pub damage: Vec<String>,
    /// Records (or unreadable runs of bytes) that could not be recovered.
    pub corrupt_records: u64,
    /// Bytes of spool files discarded because of damage.
    pub discarded_bytes: u64,
    /// Readings dropped on open because they were older than `max_age`.
    pub dropped_by_age: u64,
    /// Readings dropped on open because they exceeded `max_bytes`.
    pub dropped_by_bytes: u64,
}

impl Recovery {
    /// Nothing was damaged.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Why readings were dropped on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `max_bytes` was exceeded; the oldest readings went.
    MaxBytes,
    /// The readings were older than `max_age`.
    MaxAge,
}

/// Readings dropped on purpose (never sent again), oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub seqs: Vec<u64>,
    pub reason: DropReason,
}

impl Dropped {
    fn none(reason: DropReason) -> Self {
        Dropped {
            seqs: Vec::new(),
            reason,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "spool {path} is in use by another client{}; use another --spool directory or stop that client",
        .pid.map(|pid| format!(" (process {pid})")).unwrap_or_default()
    )]
    Locked {
        /// The spool directory.
        path: PathBuf,
        /// The holder's PID, if it wrote one (informational: the lock is what counts).
        pid: Option<u32>,
    },
    #[error("seq {seq} is not after the last spooled seq {last}")]
    OutOfOrder { seq: u64, last: u64 },
    #[error("reading {seq} cannot be spooled: {reason}")]
    Unstorable { seq: u64, reason: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    /// The seq in its name; names increase from segment to segment.
    name_seq: u64,
    path: PathBuf,
    /// Seq of the last record in it, if any.
    last_seq: Option<u64>,
    /// File length, header included.
    len: u64,
}

/// A record not yet done, kept in memory for the limits (the reading itself is not kept).
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    bytes: u64,
    timestamp_ns: Option<i64>,
}

/// The spool of one client. Not shared: the lock on `DIR/lock` keeps other clients out.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    segment_bytes: u64,
    /// Segment files in seq order; the last one is appended to while `active` is open.
    segments: VecDeque<Segment>,
    active: Option<File>,
    /// Records not yet done, in seq order.
    index: VecDeque<Entry>,
    pending_bytes: u64,
    done_through: u64,
    next_seq: u64,
    /// `(done_through, next_seq)` as the state file holds them, if it is known to be good.
    persisted: Option<(u64, u64)>,
    last_persist: Instant,
    scratch: Vec<u8>,
    /// Declared last so it is released after `Drop` has written the state.
    _lock: LockFile,
}

impl Spool {
    /// Open (creating if needed) the spool in `dir` and recover what it holds.
    ///
    /// # Errors
    /// [`SpoolError::Locked`] if another client (or another open spool in this process)
    /// holds `dir`; [`SpoolError::Io`] if a file in it cannot be read, repaired or written.
    /// Damaged contents are not an error: they are described in [`Recovery::damage`].
    pub fn open(dir: &Path, limits: SpoolLimits) -> Result<(Spool, Recovery), SpoolError> {
        let segment_bytes = (limits.max_bytes / 4).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        Self::open_with(dir, limits, segment_bytes, crate::timefmt::now_ns())
    }

    fn open_with(
        dir: &Path,
        limits: SpoolLimits,
        segment_bytes: u64,
        now_ns: i64,
    ) -> Result<(Spool, Recovery), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock = LockFile::acquire(dir)?;
        let mut recovery = Recovery::default();

        state::remove_leftover(dir)?;
        let (persisted, done_through, state_next) = match state::read_state(dir)? {
            StateFile::Missing => (None, 0, 1),
            StateFile::Good {
                done_through,
                next_seq,
            } => (Some((done_through, next_seq)), done_through, next_seq),
            StateFile::Bad(why) => {
                recovery.damage.push(format!(
                    "state file: {why}; every stored reading will be sent again"
                ));
                (None, 0, 1)
            }
        };

        let recovery::Scanned {
            segments,
            last_seen,
            entries,
        } = recovery::scan(dir, done_through, &mut recovery)?;

        let next_seq = state_next
            .max(last_seen.map_or(1, |seq| seq.saturating_add(1)))
            .max(done_through.saturating_add(1));
        // Keep appending to the last segment while it has room: no new file per restart. An
        // empty one is deleted below instead, as a crash may have left it with any name.
        let active = match segments.back() {
            Some(last) if last.len < segment_bytes && last.last_seq.is_some() => Some(
                OpenOptions::new()
                    .append(true)
                    .open(&last.path)
                    .map_err(io_err(&last.path))?,
            ),
            _ => None,
        };
        let pending_bytes = entries.iter().map(|e| e.bytes).sum();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            limits,
            segment_bytes,
            segments,
            active,
            index: entries.into(),
            pending_bytes,
            done_through,
            next_seq,
            persisted,
            last_persist: Instant::now(),
            scratch: Vec::new(),
            _lock: lock,
        };

        let by_age = spool.expire_at(now_ns);
        let by_bytes = spool.enforce_max_bytes();
        recovery.dropped_by_age = by_age.seqs.len() as u64;
        recovery.dropped_by_bytes = by_bytes.seqs.len() as u64;
        // Both drops remove the oldest readings, which come first.
        let dropped = by_age.seqs.len() + by_bytes.seqs.len();
        recovery
            .readings
            .drain(..dropped.min(recovery.readings.len()));
        recovery.next_seq = spool.next_seq;

        if spool.persisted != Some((spool.done_through, spool.next_seq)) {
            spool.persist_state()?;
        }
        spool.housekeep(true)?;
        Ok((spool, recovery))
    }

    /// Append one reading under `seq` (greater than every seq appended before). Durable when
    /// this returns. Returns the oldest readings `max_bytes` forced out (possibly none).
    pub fn append(&mut self, seq: u64, reading: &Reading) -> Result<Dropped, SpoolError> {
        self.append_batch(&[(seq, reading)])
    }

    /// Append several readings (seqs increasing) with one write and one fsync. All or none
    /// are stored: on error nothing was appended and the same seqs may be appended again.
    pub fn append_batch(&mut self, items: &[(u64, &Reading)]) -> Result<Dropped, SpoolError> {
        let Some(&(first_seq, _)) = items.first() else {
            return Ok(Dropped::none(DropReason::MaxBytes));
        };
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let mut entries = Vec::with_capacity(items.len());
        // `next_seq` is at least 1, so this is the last seq appended (0: none yet).
        let mut last = self.next_seq - 1;
        for &(seq, reading) in items {
            if seq <= last {
                self.scratch = buf;
                return Err(SpoolError::OutOfOrder { seq, last });
            }
            let start = buf.len();
            if let Err(err) = encode_record(seq, reading, &mut buf) {
                self.scratch = buf;
                return Err(err);
            }
            entries.push(Entry {
                seq,
                bytes: (buf.len() - start) as u64,
                timestamp_ns: reading.timestamp_ns,
            });
            last = seq;
        }
        let written = self.write_records(first_seq, &buf);
        self.scratch = buf;
        written?;

        if let Some(segment) = self.segments.back_mut() {
            segment.last_seq = Some(last);
        }
        for entry in entries {
            self.pending_bytes += entry.bytes;
            self.index.push_back(entry);
        }
        self.next_seq = last + 1;
        let dropped = self.enforce_max_bytes();
        // The readings are stored; failing here would make the caller think they were not.
        if let Err(err) = self.housekeep(false) {
            tracing::warn!(cause = %err, "spool housekeeping failed; retrying later");
        }
        Ok(dropped)
    }

    /// The server acknowledged every reading up to and including `seq`. Persisted lazily.
    /// Seqs never appended are not covered (the mark stops at the last appended seq).
    pub fn ack_through(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.mark_done(seq.min(self.next_seq - 1));
        self.housekeep(false)
    }

    /// Drop readings whose timestamp is older than `now_ns - max_age` (call periodically).
    /// Failing to persist is logged and retried, so the dropped seqs are always returned.
    pub fn expire(&mut self, now_ns: i64) -> Result<Dropped, SpoolError> {
        let dropped = self.expire_at(now_ns);
        if let Err(err) = self.housekeep(false) {
            tracing::warn!(cause = %err, "spool housekeeping failed; retrying later");
        }
        Ok(dropped)
    }

    /// Persist acknowledgements now and delete fully done segments.
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        self.housekeep(true)
    }

    /// Persist everything and release the lock, reporting errors that drop would only log.
    pub fn close(mut self) -> Result<(), SpoolError> {
        self.housekeep(true)
    }

    /// Readings not yet acknowledged or dropped.
    pub fn pending(&self) -> u64 {
        self.index.len() as u64
    }

    /// Record bytes (header + payload) of the pending readings.
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// The first seq not yet used.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Move the low-water mark to `seq` (if it is ahead) and forget the records it covers.
    fn mark_done(&mut self, seq: u64) {
        if seq <= self.done_through {
            return;
        }
        self.done_through = seq;
        while let Some(front) = self.index.front() {
            if front.seq > seq {
                break;
            }
            self.pending_bytes -= front.bytes;
            self.index.pop_front();
        }
    }

    /// Drop the oldest readings while they are older than `now_ns - max_age`.
    fn expire_at(&mut self, now_ns: i64) -> Dropped {
        let mut dropped = Dropped::none(DropReason::MaxAge);
        let Some(max_age) = self.limits.max_age else {
            return dropped;
        };
        let cutoff = now_ns.saturating_sub(i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX));
        while let Some(front) = self.index.front() {
            match front.timestamp_ns {
                Some(ts) if ts < cutoff => {
                    dropped.seqs.push(front.seq);
                    self.mark_done(front.seq);
                }
                _ => break,
            }
        }
        dropped
    }

    /// Drop the oldest readings while over `max_bytes`, always keeping the newest one.
    fn enforce_max_bytes(&mut self) -> Dropped {
        let mut dropped = Dropped::none(DropReason::MaxBytes);
        while self.pending_bytes > self.limits.max_bytes && self.index.len() > 1 {
            let Some(front) = self.index.front() else {
                break;
            };
            dropped.seqs.push(front.seq);
            self.mark_done(front.seq);
        }
        dropped
    }

    /// Write encoded records (the first with `first_seq`) to the active segment, rolling or
    /// creating one as needed, and fsync. On error the segment is cut back to where it was.
    fn write_records(&mut self, first_seq: u64, buf: &[u8]) -> Result<(), SpoolError> {
        let full = self
            .segments
            .back()
            .is_some_and(|s| s.len >= self.segment_bytes);
        if full {
            self.active = None;
        }
        let created = self.active.is_none();
        if created {
            // An empty segment left by a failed write would clash with the new name.
            while let Some(empty) = self.segments.back().filter(|s| s.last_seq.is_none()) {
                match fs::remove_file(&empty.path) {
                    Err(err) if err.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err(&empty.path)(err));
                    }
                    _ => {}
                }
                self.segments.pop_back();
            }
            // Names must keep increasing even if seqs were skipped before a failed write.
            let name_seq = match self.segments.back() {
                Some(last) => first_seq.max(last.name_seq + 1),
                None => first_seq,
            };
            let path = recovery::segment_path(&self.dir, name_seq);
            let mut file = OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(&path)
                .map_err(io_err(&path))?;
            if let Err(err) = file.write_all(SEGMENT_MAGIC) {
                drop(file);
                // Best effort: a header-only leftover is removed on the next open anyway.
                let _ = fs::remove_file(&path);
                return Err(io_err(&path)(err));
            }
            self.segments.push_back(Segment {
                name_seq,
                path,
                last_seq: None,
                len: SEGMENT_MAGIC.len() as u64,
            });
            self.active = Some(file);
        }
        let (Some(file), Some(segment)) = (self.active.as_mut(), self.segments.back_mut()) else {
            unreachable!("an active segment was opened above and is the last one");
        };
        let mut result = file.write_all(buf).and_then(|()| file.sync_data());
        if created && result.is_ok() {
            // The new file's directory entry must be durable too, or the records are lost.
            result = sync_dir(&self.dir);
        }
        match result {
            Ok(()) => {
                segment.len += buf.len() as u64;
                Ok(())
            }
            Err(err) => {
                // Cut the partial write off so no garbage sits before later records, and
                // move on to a new segment: after a failed fsync this file is suspect.
                let cut = if created {
                    fs::remove_file(&segment.path).is_ok()
                } else {
                    file.set_len(segment.len).is_ok()
                };
                let path = segment.path.clone();
                self.active = None;
                if created && cut {
                    self.segments.pop_back();
                }
                Err(io_err(&path)(err))
            }
        }
    }

    /// Write the state file if acknowledgements are due (or `force`), and delete segments
    /// whose records are all done (after the state file records `next_seq`).
    fn housekeep(&mut self, force: bool) -> Result<(), SpoolError> {
        let active = usize::from(self.active.is_some());
        let deletable = self
            .segments
            .iter()
            .take(self.segments.len() - active)
            .take_while(|s| s.last_seq.is_none_or(|seq| seq <= self.done_through))
            .count();
        let current = Some((self.done_through, self.next_seq));
        let acks_due = self.persisted.map(|(done, _)| done) != Some(self.done_through)
            && (force || self.last_persist.elapsed() >= ACK_PERSIST_INTERVAL);
        let stale = force && self.persisted != current;
        if (deletable > 0 && self.persisted != current) || acks_due || stale {
            self.persist_state()?;
        }
        for _ in 0..deletable {
            let Some(segment) = self.segments.front() else {
                break;
            };
            match fs::remove_file(&segment.path) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err(&segment.path)(err)),
            }
            self.segments.pop_front();
        }
        Ok(())
    }

    /// Replace the state file atomically with the current `done_through` and `next_seq`.
    fn persist_state(&mut self) -> Result<(), SpoolError> {
        state::write_state(&self.dir, self.done_through, self.next_seq)?;
        self.persisted = Some((self.done_through, self.next_seq));
        self.last_persist = Instant::now();
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Err(err) = self.housekeep(true) {
            tracing::warn!(cause = %err, "spool state not saved on close; some acknowledged readings will be sent again");
        }
    }
}

/// fsync a directory, so entries created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::protocol::{ilp, FieldValue};
    use proptest::prelude::*;

    fn every_type(v: i64) -> Reading {
        Reading {
            measurement: "weather room".into(),
            tags: vec![
                ("sensor".into(), "kitchen,01=x".into()),
                ("site".into(), "C:\\lab é".into()),
            ],
            fields: vec![
                ("f".into(), FieldValue::Float(-21.53e-7)),
                ("i".into(), FieldValue::Int(i64::MIN + v)),
                ("u".into(), FieldValue::UInt(u64::MAX - v as u64)),
                ("s".into(), FieldValue::Str("say \"hi\", \\ ok=1".into())),
                ("b".into(), FieldValue::Bool(v % 2 == 0)),
            ],
            timestamp_ns: Some(1_732_448_785_123_456_789 + v),
        }
    }

    #[test]
    fn appended_readings_come_back_in_order_and_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(recovery.next_seq, 1);
        assert!(recovery.readings.is_empty() && recovery.is_clean());
        for v in 1..=4 {
            spool.append(v as u64, &every_type(v)).expect("append");
        }
        let batch: Vec<Reading> = (5..=7).map(every_type).collect();
        let items: Vec<(u64, &Reading)> = (5..=7).zip(&batch).collect();
        spool.append_batch(&items).expect("append batch");
        assert_eq!(spool.pending(), 7);
        let bytes = spool.pending_bytes();
        drop(spool);

        let (spool, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert!(recovery.is_clean(), "{:?}", recovery.damage);
        let expected: Vec<SpooledReading> = (1..=7)
            .map(|v| SpooledReading {
                seq: v as u64,
                reading: every_type(v),
            })
            .collect();
        assert_eq!(recovery.readings, expected);
        assert_eq!(recovery.next_seq, 8);
        assert_eq!(spool.pending_bytes(), bytes);
    }

    #[test]
    fn acknowledged_readings_do_not_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        append_all(&mut spool, 1..=5);
        spool.ack_through(3).expect("ack");
        assert_eq!(spool.pending(), 2);
        // A late ack for less changes nothing; an ack beyond the last seq stops there.
        spool.ack_through(2).expect("ack");
        assert_eq!(spool.pending(), 2);
        drop(spool);
        let (mut spool, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![4, 5]);
        spool.ack_through(99).expect("ack");
        assert_eq!(spool.pending(), 0);
        spool
            .append(6, &reading(6))
            .expect("append after an over-ack");
        spool.close().expect("close");
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![6]);
    }

    #[test]
    fn lagging_ack_persistence_only_resends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        append_all(&mut spool, 1..=3);
        spool.ack_through(1).expect("ack"); // first ack after open waits for the interval
        spool.last_persist = Instant::now() - ACK_PERSIST_INTERVAL;
        spool.ack_through(2).expect("ack");
        spool.ack_through(3).expect("ack"); // within the interval: not yet on disk
        crash(spool);
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert!(recovery.is_clean());
        assert_eq!(seqs(&recovery), vec![3]);
        assert_eq!(recovery.next_seq, 4);
    }

    #[test]
    fn segments_roll_and_done_ones_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, 100);
        append_all(&mut spool, 1..=12);
        let files = segment_files(dir.path()).len();
        assert!(files >= 4, "only {files} segments");
        spool.ack_through(6).expect("ack");
        let after = segment_files(dir.path()).len();
        assert!(
            after < files,
            "{after} segments after acking half of {files}"
        );
        spool.ack_through(12).expect("ack");
        // Only the active segment stays.
        assert_eq!(segment_files(dir.path()).len(), 1);
        drop(spool);
        let (mut spool, recovery) = open(dir.path(), BIG, 100);
        assert!(recovery.readings.is_empty() && recovery.is_clean());
        assert_eq!(recovery.next_seq, 13);
        append_all(&mut spool, 13..=14);
        drop(spool);
        let (_, recovery) = open(dir.path(), BIG, 100);
        assert_eq!(seqs(&recovery), vec![13, 14]);
    }

    #[test]
    fn next_seq_survives_deleting_every_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, 100);
        append_all(&mut spool, 1..=9);
        spool.ack_through(9).expect("ack");
        spool.close().expect("close");
        for path in segment_files(dir.path()) {
            fs::remove_file(path).expect("remove segment");
        }
        let (mut spool, recovery) = open(dir.path(), BIG, 100);
        assert_eq!(recovery.next_seq, 10);
        assert!(matches!(
            spool.append(9, &reading(9)),
            Err(SpoolError::OutOfOrder { seq: 9, last: 9 })
        ));
        spool.append(10, &reading(10)).expect("append");
    }

    #[test]
    fn max_bytes_drops_the_oldest_and_reports_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        append_all(&mut spool, 1..=1);
        let one = spool.pending_bytes();
        drop(spool);
        let limits = SpoolLimits {
            max_bytes: 3 * one,
            max_age: None,
        };
        let (mut spool, _) = open(dir.path(), limits, MAX_SEGMENT_BYTES);
        for v in 2..=3 {
            assert!(spool
                .append(v, &reading(v as i64))
                .expect("append")
                .is_empty());
        }
        let dropped = spool.append(4, &reading(4)).expect("append");
        assert_eq!(
            dropped,
            Dropped {
                seqs: vec![1],
                reason: DropReason::MaxBytes
            }
        );
        let batch = [reading(5), reading(6)];
        let dropped = spool
            .append_batch(&[(5, &batch[0]), (6, &batch[1])])
            .expect("append");
        assert_eq!(dropped.seqs, vec![2, 3]);
        assert_eq!(spool.pending_bytes(), 3 * one);
        drop(spool);
        // A smaller limit on the next start drops on open, but keeps the newest reading.
        let tiny = SpoolLimits {
            max_bytes: 1,
            max_age: None,
        };
        let (_, recovery) = open(dir.path(), tiny, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![6]);
        assert_eq!(recovery.dropped_by_bytes, 2);
    }

    #[test]
    fn max_age_drops_old_readings_on_open_and_on_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hour = 3_600_000_000_000;
        let at = |v: i64, ts: i64| Reading {
            timestamp_ns: Some(ts),
            ..reading(v)
        };
        let (mut spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        spool.append(1, &at(1, NOW - 3 * hour)).expect("append");
        spool.append(2, &at(2, NOW - 2 * hour)).expect("append");
        spool.append(3, &at(3, NOW - hour / 2)).expect("append");
        spool.append(4, &at(4, NOW)).expect("append");
        drop(spool);
        let limits = SpoolLimits {
            max_bytes: u64::MAX,
            max_age: Some(Duration::from_secs(5400)),
        };
        let (mut spool, recovery) = open(dir.path(), limits, MAX_SEGMENT_BYTES);
        assert_eq!(recovery.dropped_by_age, 2);
        assert_eq!(seqs(&recovery), vec![3, 4]);
        let dropped = spool.expire(NOW + hour + 1).expect("expire");
        assert_eq!(
            dropped,
            Dropped {
                seqs: vec![3],
                reason: DropReason::MaxAge
            }
        );
        assert!(spool.expire(NOW + hour + 1).expect("expire").is_empty());
        drop(spool);
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![4]);
    }

    #[test]
    fn bad_appends_are_refused_and_store_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert!(matches!(
            spool.append(0, &reading(0)),
            Err(SpoolError::OutOfOrder { .. })
        ));
        let nan = Reading {
            fields: vec![("v".into(), FieldValue::Float(f64::NAN))],
            ..reading(1)
        };
        assert!(matches!(
            spool.append(1, &nan),
            Err(SpoolError::Unstorable { seq: 1, .. })
        ));
        let huge = Reading {
            fields: vec![("v".into(), FieldValue::Str("x".repeat(2 << 20)))],
            ..reading(1)
        };
        assert!(matches!(
            spool.append(1, &huge),
            Err(SpoolError::Unstorable { seq: 1, .. })
        ));
        let (a, b) = (reading(1), reading(2));
        assert!(matches!(
            spool.append_batch(&[(2, &b), (1, &a)]),
            Err(SpoolError::OutOfOrder { seq: 1, last: 2 })
        ));
        assert_eq!(spool.pending(), 0);
        spool.append(1, &a).expect("append");
        drop(spool);
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert!(recovery.is_clean());
        assert_eq!(seqs(&recovery), vec![1]);
    }

    #[test]
    fn a_second_spool_on_the_same_dir_is_refused_until_the_first_is_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        append_all(&mut spool, 1..=2);
        match Spool::open(dir.path(), BIG) {
            Err(err @ SpoolError::Locked { .. }) => {
                let text = err.to_string();
                assert!(text.contains(&dir.path().display().to_string()), "{text}");
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        // The refused open changed nothing: the holder goes on and its readings stay.
        spool
            .append(3, &reading(3))
            .expect("append while another open was refused");
        drop(spool);
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![1, 2, 3]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(Vec<Reading>),
        Ack(usize),
        AckBeyond,
        Reopen,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => prop::collection::vec(crate::protocol::ilp::tests::reading(), 1..4)
                .prop_map(Op::Append),
            3 => any::<usize>().prop_map(Op::Ack),
            1 => Just(Op::AckBeyond),
            1 => Just(Op::Reopen),
            1 => Just(Op::Crash),
        ]
    }

    fn record_bytes(reading: &Reading) -> u64 {
        let mut line = Vec::new();
        ilp::encode(reading, &mut line);
        // Header + seq + the line without its newline.
        8 + 8 + line.len() as u64 - 1
    }

    /// What the spool should hold.
    #[derive(Default)]
    struct Model {
        pending: VecDeque<SpooledReading>,
        /// Every reading ever appended, to check what a crash brings back.
        all: Vec<SpooledReading>,
        next_seq: u64,
        done: u64,
    }

    impl Model {
        fn bytes(&self) -> u64 {
            self.pending.iter().map(|r| record_bytes(&r.reading)).sum()
        }
        fn mark_done(&mut self, seq: u64) {
            self.done = self.done.max(seq);
            while self.pending.front().is_some_and(|r| r.seq <= self.done) {
                self.pending.pop_front();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn spool_matches_a_simple_model(
            ops in prop::collection::vec(op(), 1..40),
            max_bytes in prop_oneof![Just(u64::MAX), 150u64..1500],
            gap in 0u64..3,
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let limits = SpoolLimits { max_bytes, max_age: None };
            let (mut spool, _) = open(dir.path(), limits, 300);
            let mut model = Model { next_seq: 1, ..Model::default() };
            for op in ops {
                match op {
                    Op::Append(readings) => {
                        let mut seq = model.next_seq + gap;
                        let mut items = Vec::new();
                        for reading in &readings {
                            items.push((seq, reading));
                            let spooled = SpooledReading { seq, reading: reading.clone() };
                            model.pending.push_back(spooled.clone());
                            model.all.push(spooled);
                            seq += 1 + gap;
                        }
                        model.next_seq = seq - gap;
                        let dropped = spool.append_batch(&items).expect("append");
                        let mut expected = Vec::new();
                        while model.bytes() > max_bytes && model.pending.len() > 1 {
                            let seq = model.pending[0].seq;
                            expected.push(seq);
                            model.mark_done(seq);
                        }
                        prop_assert_eq!(dropped.seqs, expected);
                    }
                    Op::Ack(pick) => {
                        if !model.pending.is_empty() {
                            let seq = model.pending[pick % model.pending.len()].seq;
                            spool.ack_through(seq).expect("ack");
                            model.mark_done(seq);
                        }
                    }
                    Op::AckBeyond => {
                        spool.ack_through(model.next_seq + 10).expect("ack");
                        model.mark_done(model.next_seq - 1);
                    }
                    Op::Reopen => {
                        drop(spool);
                        let (reopened, recovery) = open(dir.path(), limits, 300);
                        spool = reopened;
                        prop_assert!(recovery.is_clean(), "{:?}", recovery.damage);
                        prop_assert_eq!(&recovery.readings, &Vec::from(model.pending.clone()));
                        prop_assert_eq!(recovery.next_seq, model.next_seq);
                    }
                    Op::Crash => {
                        crash(spool);
                        let (reopened, recovery) = open(dir.path(), limits, 300);
                        spool = reopened;
                        prop_assert!(recovery.is_clean(), "{:?}", recovery.damage);
                        prop_assert_eq!(recovery.next_seq, model.next_seq);
                        // What comes back: what was pending, after some already done.
                        let extra = recovery.readings.len().checked_sub(model.pending.len());
                        let extra = extra.expect("a crash never loses pending readings");
                        let (old, rest) = recovery.readings.split_at(extra);
                        prop_assert_eq!(rest, &Vec::from(model.pending.clone())[..]);
                        for back in old {
                            prop_assert!(back.seq <= model.done);
                            prop_assert!(model.all.contains(back));
                        }
                        model.pending = recovery.readings.into();
                        model.done = model.pending.front().map_or(model.done, |r| r.seq - 1);
                    }
                }
                prop_assert_eq!(spool.pending(), model.pending.len() as u64);
                prop_assert_eq!(spool.pending_bytes(), model.bytes());
                prop_assert_eq!(spool.next_seq(), model.next_seq);
            }
        }
    }
}
