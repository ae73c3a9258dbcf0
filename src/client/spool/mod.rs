//! The client's on-disk spool (`--spool DIR`): every reading is stored here before it is
//! sent and forgotten once the server acknowledged it, so readings survive a client crash or
//! restart and are sent again, in order and with their original timestamps, on the next start.
//!
//! # Files in `DIR`
//! - `lock`: the PID of the client using the spool, created exclusively. A lock whose process
//!   no longer exists (`/proc/<pid>` is gone), or that holds no PID and is older than 10 s
//!   (a crash while creating it), is taken over; otherwise opening fails with
//!   [`SpoolError::Locked`]. Without `/proc` a lock is never taken over.
//! - `<16 hex digits>.seg`: segments, append-only, named after the first seq written to
//!   them. A segment starts with the 8-byte magic `SLSPSEG1`, followed by records:
//!
//!   ```text
//!   [u32 LE payload_len][u32 LE crc32(payload_len bytes ++ payload)][payload]
//!   payload = [u64 LE seq][the reading as one line of line protocol, without '\n']
//!   ```
//!
//!   `payload_len` is at least 9 and at most [`MAX_RECORD_PAYLOAD`]; anything else is
//!   corruption (the CRC covers the length too). Seqs increase strictly across all
//!   segments, and segment names increase with them. A segment rolls once it reaches about a
//!   quarter of `max_bytes` (64 KiB..4 MiB) and is deleted once every record in it is done.
//! - `state`: `[magic SLSPSTA1][u64 LE done_through][u64 LE next_seq][u32 LE crc32]`,
//!   replaced atomically (write `state.tmp`, fsync, rename, fsync the directory).
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
//! Opening reads every segment. At the first record with a bad length, a bad checksum or
//! missing bytes (a write cut short), the rest of that segment is discarded and the file
//! truncated there, so appends continue on a clean end; later segments are still read. A
//! record with a good checksum whose line does not parse, or whose seq is out of order, is
//! skipped on its own. All of it is described in [`Recovery::damage`]. Then the limits are
//! applied: readings older than `max_age`, then the oldest beyond `max_bytes`, are dropped.
//!
//! # Limits
//! `max_bytes` bounds the record bytes (header + payload) of readings not yet done; appending
//! beyond it drops the oldest, but never the newest reading. On disk, done records in
//! segments not yet deleted add at most about two segments. `max_age` drops readings whose
//! timestamp is older than `now - max_age`, oldest first: expiry stops at the first reading
//! that is not expired (it can only remove a prefix), and readings without a timestamp never
//! expire.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::protocol::{ilp, Reading};

/// Largest payload (seq + line) one record may have; a longer length prefix is corruption.
pub const MAX_RECORD_PAYLOAD: u32 = 1 << 20;

/// How long an acknowledgement may wait before the state file is rewritten.
pub const ACK_PERSIST_INTERVAL: Duration = Duration::from_millis(100);

const SEGMENT_MAGIC: &[u8; 8] = b"SLSPSEG1";
const STATE_MAGIC: &[u8; 8] = b"SLSPSTA1";
const STATE_LEN: usize = 8 + 8 + 8 + 4;
const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const LOCK_FILE: &str = "lock";
const SEGMENT_EXT: &str = ".seg";
/// Length + CRC in front of every payload.
const RECORD_HEADER: u64 = 8;
/// A payload holds a seq and at least one byte of line.
const MIN_RECORD_PAYLOAD: u32 = 9;
const MIN_SEGMENT_BYTES: u64 = 64 << 10;
const MAX_SEGMENT_BYTES: u64 = 4 << 20;
/// A lock file without a readable PID this old is left over from a crash during creation.
const UNREADABLE_LOCK_STALE_AFTER: Duration = Duration::from_secs(10);

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
        "spool {path} is in use{}; remove the lock file if no client uses it",
        .pid.map(|pid| format!(" by process {pid}")).unwrap_or_default()
    )]
    Locked { path: PathBuf, pid: Option<u32> },
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

/// The spool of one client. Not shared: the `lock` file keeps other clients out.
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

        // A leftover temp file is a state write cut short; the old `state` is still whole.
        let tmp = dir.join(STATE_TMP);
        match fs::remove_file(&tmp) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(io_err(&tmp)(err)),
            _ => {}
        }
        let state_path = dir.join(STATE_FILE);
        let (persisted, done_through, state_next) = match read_state(&state_path)? {
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

        let mut scan = Scan {
            done_through,
            last_seen: None,
            entries: Vec::new(),
            recovery: &mut recovery,
        };
        let mut segments = VecDeque::new();
        for (name_seq, name, path) in list_segments(dir)? {
            if let Some(segment) = scan.segment(name_seq, &name, path)? {
                segments.push_back(segment);
            }
        }
        let Scan {
            last_seen, entries, ..
        } = scan;

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
            let path = self.dir.join(format!("{name_seq:016x}{SEGMENT_EXT}"));
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
        let mut bytes = Vec::with_capacity(STATE_LEN);
        bytes.extend_from_slice(STATE_MAGIC);
        bytes.extend_from_slice(&self.done_through.to_le_bytes());
        bytes.extend_from_slice(&self.next_seq.to_le_bytes());
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());

        let tmp = self.dir.join(STATE_TMP);
        let path = self.dir.join(STATE_FILE);
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
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

/// Append one record for `reading` to `buf`; `buf` is unchanged on error.
fn encode_record(seq: u64, reading: &Reading, buf: &mut Vec<u8>) -> Result<(), SpoolError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER as usize]);
    buf.extend_from_slice(&seq.to_le_bytes());
    let line_start = buf.len();
    ilp::encode(reading, buf);
    // The record length frames the line, so its newline is not stored.
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    // Only a reading that comes back unchanged may be promised to survive a restart.
    let problem = match ilp::parse(&buf[line_start..]) {
        Ok(back) if back == *reading => None,
        Ok(_) => Some("it does not read back unchanged".to_string()),
        Err(err) => Some(err.to_string()),
    };
    let payload_len = buf.len() - start - RECORD_HEADER as usize;
    let problem = problem.or_else(|| {
        (payload_len > MAX_RECORD_PAYLOAD as usize)
            .then(|| format!("{payload_len} bytes exceed the record limit of {MAX_RECORD_PAYLOAD}"))
    });
    if let Some(reason) = problem {
        buf.truncate(start);
        return Err(SpoolError::Unstorable { seq, reason });
    }
    let len = (payload_len as u32).to_le_bytes();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(&buf[start + RECORD_HEADER as usize..]);
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + 8].copy_from_slice(&hasher.finalize().to_le_bytes());
    Ok(())
}

/// fsync a directory, so entries created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Read until `buf` is full or the file ends; returns how much was read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// Segment files in `dir`, in seq order: `(seq in the name, file name, path)`.
fn list_segments(dir: &Path) -> Result<Vec<(u64, String, PathBuf)>, SpoolError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(stem) = name.strip_suffix(SEGMENT_EXT) else {
            continue;
        };
        let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        if stem.len() != 16 || !stem.chars().all(is_hex) {
            continue;
        }
        if let Ok(first) = u64::from_str_radix(stem, 16) {
            found.push((first, name, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(first, _, _)| *first);
    Ok(found)
}

enum StateFile {
    Missing,
    Good { done_through: u64, next_seq: u64 },
    Bad(String),
}

fn read_state(path: &Path) -> Result<StateFile, SpoolError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(StateFile::Missing),
        Err(err) => return Err(io_err(path)(err)),
    };
    if bytes.len() != STATE_LEN {
        return Ok(StateFile::Bad(format!(
            "{} bytes instead of {STATE_LEN}",
            bytes.len()
        )));
    }
    let (body, crc) = bytes.split_at(STATE_LEN - 4);
    let word = |at: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut crc_bytes = [0; 4];
    crc_bytes.copy_from_slice(crc);
    if &body[..8] != STATE_MAGIC {
        return Ok(StateFile::Bad("not a spool state file".into()));
    }
    if crc32fast::hash(body) != u32::from_le_bytes(crc_bytes) {
        return Ok(StateFile::Bad("bad checksum".into()));
    }
    Ok(StateFile::Good {
        done_through: word(8),
        next_seq: word(16),
    })
}

/// Recovery's walk over the segments.
struct Scan<'a> {
    done_through: u64,
    /// The highest seq read so far; seqs must keep increasing.
    last_seen: Option<u64>,
    entries: Vec<Entry>,
    recovery: &'a mut Recovery,
}

impl Scan<'_> {
    fn damage(&mut self, name: &str, what: String, records: u64, bytes: u64) {
        self.recovery.damage.push(format!("segment {name}: {what}"));
        self.recovery.corrupt_records += records;
        self.recovery.discarded_bytes += bytes;
    }

    /// Read one segment, repairing it: a bad header removes the file, a bad record truncates
    /// it there. Returns the segment if the file is kept.
    fn segment(
        &mut self,
        name_seq: u64,
        name: &str,
        path: PathBuf,
    ) -> Result<Option<Segment>, SpoolError> {
        let file = File::open(&path).map_err(io_err(&path))?;
        let file_len = file.metadata().map_err(io_err(&path))?.len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 8];
        let n = read_full(&mut reader, &mut magic).map_err(io_err(&path))?;
        if n < magic.len() || &magic != SEGMENT_MAGIC {
            if file_len == 0 {
                // Created but never written: a crash right after creating it, nothing lost.
                self.damage(name, "empty file removed".into(), 0, 0);
            } else {
                self.damage(
                    name,
                    format!("not a spool segment (bad header); all {file_len} bytes discarded"),
                    1,
                    file_len,
                );
            }
            fs::remove_file(&path).map_err(io_err(&path))?;
            return Ok(None);
        }

        let mut offset = SEGMENT_MAGIC.len() as u64;
        let mut last_seq = None;
        let mut payload = Vec::new();
        let bad = loop {
            let mut header = [0u8; RECORD_HEADER as usize];
            let n = read_full(&mut reader, &mut header).map_err(io_err(&path))?;
            if n == 0 {
                break None;
            }
            if n < header.len() {
                break Some("a truncated record header");
            }
            let (len_bytes, crc_bytes) = header.split_at(4);
            let mut word = [0; 4];
            word.copy_from_slice(len_bytes);
            let len = u32::from_le_bytes(word);
            word.copy_from_slice(crc_bytes);
            let crc = u32::from_le_bytes(word);
            if !(MIN_RECORD_PAYLOAD..=MAX_RECORD_PAYLOAD).contains(&len) {
                break Some("a record with an impossible length");
            }
            payload.resize(len as usize, 0);
            let n = read_full(&mut reader, &mut payload).map_err(io_err(&path))?;
            if n < payload.len() {
                break Some("a truncated record");
            }
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(len_bytes);
            hasher.update(&payload);
            if hasher.finalize() != crc {
                break Some("a record with a bad checksum");
            }
            let record_bytes = RECORD_HEADER + u64::from(len);
            let (seq_bytes, line) = payload.split_at(8);
            let mut seq = [0; 8];
            seq.copy_from_slice(seq_bytes);
            let seq = u64::from_le_bytes(seq);
            if self.last_seen.is_some_and(|last| seq <= last) {
                self.damage(
                    name,
                    format!("record at offset {offset} has seq {seq} out of order; skipped"),
                    1,
                    record_bytes,
                );
            } else {
                self.last_seen = Some(seq);
                last_seq = Some(seq);
                if seq > self.done_through {
                    match ilp::parse(line) {
                        Ok(reading) => {
                            self.entries.push(Entry {
                                seq,
                                bytes: record_bytes,
                                timestamp_ns: reading.timestamp_ns,
                            });
                            self.recovery.readings.push(SpooledReading { seq, reading });
                        }
                        Err(err) => self.damage(
                            name,
                            format!("reading {seq} at offset {offset} unreadable ({err}); skipped"),
                            1,
                            record_bytes,
                        ),
                    }
                }
            }
            offset += record_bytes;
        };

        if let Some(what) = bad {
            let discarded = file_len - offset;
            self.damage(
                name,
                format!("{what} at offset {offset}; {discarded} bytes to the end discarded"),
                1,
                discarded,
            );
            // Cut the damage off so appends continue on a clean end and it is reported once.
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(io_err(&path))?;
        }
        Ok(Some(Segment {
            name_seq,
            path,
            last_seq,
            len: offset,
        }))
    }
}

/// `DIR/lock`, holding our PID while the spool is open.
#[derive(Debug)]
struct LockFile {
    path: PathBuf,
    pid: u32,
}

/// Who holds an existing lock file.
enum Holder {
    Alive(Option<u32>),
    Gone,
}

impl LockFile {
    fn acquire(dir: &Path) -> Result<LockFile, SpoolError> {
        let path = dir.join(LOCK_FILE);
        let pid = std::process::id();
        // A few rounds: a stale lock is removed, then created anew (another client may win).
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    if let Err(err) = file.write_all(format!("{pid}\n").as_bytes()) {
                        // Best effort: a lock without a PID is taken over once it is old.
                        let _ = fs::remove_file(&path);
                        return Err(io_err(&path)(err));
                    }
                    return Ok(LockFile { path, pid });
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err) => return Err(io_err(&path)(err)),
            }
            match lock_holder(&path)? {
                Holder::Alive(pid) => return Err(SpoolError::Locked { path, pid }),
                Holder::Gone => match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::warn!(path = %path.display(), "took over a stale spool lock")
                    }
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                    Err(err) => return Err(io_err(&path)(err)),
                },
            }
        }
        Err(SpoolError::Locked { path, pid: None })
    }
}

/// Whether the process named in the lock file at `path` still runs.
fn lock_holder(path: &Path) -> Result<Holder, SpoolError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Holder::Gone),
        // Not UTF-8: not written by us, treated like an unreadable PID below.
        Err(err) if err.kind() == io::ErrorKind::InvalidData => String::new(),
        Err(err) => return Err(io_err(path)(err)),
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        // Its creator may still be about to write the PID; only an old one is stale.
        let age = fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| SystemTime::now().duration_since(modified).ok());
        return Ok(match age {
            Some(age) if age >= UNREADABLE_LOCK_STALE_AFTER => Holder::Gone,
            _ => Holder::Alive(None),
        });
    };
    // Without /proc we cannot tell a dead holder from a live one: keep out.
    if !Path::new("/proc/self").exists() {
        return Ok(Holder::Alive(Some(pid)));
    }
    Ok(if Path::new(&format!("/proc/{pid}")).exists() {
        Holder::Alive(Some(pid))
    } else {
        Holder::Gone
    })
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Remove it only while it is still ours; failing leaves a stale lock, taken over later.
        let ours = fs::read_to_string(&self.path)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            == Some(self.pid);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::FieldValue;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000_000_000;
    const BIG: SpoolLimits = SpoolLimits {
        max_bytes: u64::MAX,
        max_age: None,
    };

    fn reading(v: i64) -> Reading {
        Reading {
            measurement: "m".into(),
            tags: vec![("sensor".into(), "s1".into())],
            fields: vec![("value".into(), FieldValue::Int(v))],
            timestamp_ns: Some(NOW + v),
        }
    }

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

    fn open(dir: &Path, limits: SpoolLimits, segment_bytes: u64) -> (Spool, Recovery) {
        match Spool::open_with(dir, limits, segment_bytes, NOW) {
            Ok(opened) => opened,
            Err(err) => panic!("open {}: {err}", dir.display()),
        }
    }

    fn seqs(recovery: &Recovery) -> Vec<u64> {
        recovery.readings.iter().map(|r| r.seq).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .expect("the test directory is readable")
            .into_iter()
            .map(|(_, _, path)| path)
            .collect()
    }

    /// A crash: nothing is flushed, and the lock (ours, so "alive") is cleared by hand.
    fn crash(spool: Spool, dir: &Path) {
        std::mem::forget(spool);
        fs::remove_file(dir.join(LOCK_FILE)).expect("the lock file exists while open");
    }

    /// Offsets of the records in a segment file's bytes.
    fn record_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut offsets = Vec::new();
        let mut at = SEGMENT_MAGIC.len();
        while at + 8 <= bytes.len() {
            offsets.push(at);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            at += 8 + len as usize;
        }
        offsets
    }

    fn raw_record(seq: u64, line: &[u8]) -> Vec<u8> {
        let mut payload = seq.to_le_bytes().to_vec();
        payload.extend_from_slice(line);
        let len = (payload.len() as u32).to_le_bytes();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&len);
        hasher.update(&payload);
        let mut out = len.to_vec();
        out.extend_from_slice(&hasher.finalize().to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    fn append_all(spool: &mut Spool, range: std::ops::RangeInclusive<i64>) {
        for v in range {
            spool.append(v as u64, &reading(v)).expect("append");
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
        crash(spool, dir.path());
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
    fn truncated_last_record_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        append_all(&mut spool, 1..=3);
        drop(spool);
        let path = segment_files(dir.path()).remove(0);
        let len = fs::metadata(&path).expect("segment").len();
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(len - 5).expect("chop");
        drop(file);

        let (mut spool, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![1, 2]);
        assert_eq!(recovery.damage.len(), 1, "{:?}", recovery.damage);
        assert!(recovery.damage[0].contains("truncated record"));
        assert!(recovery.damage[0].contains("0000000000000001.seg"));
        assert_eq!(recovery.corrupt_records, 1);
        assert!(recovery.discarded_bytes > 0);
        // The clean close recorded next_seq, so even the lost record's seq is not reused.
        assert_eq!(recovery.next_seq, 4);
        append_all(&mut spool, 4..=5);
        drop(spool);
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert!(recovery.is_clean(), "{:?}", recovery.damage);
        assert_eq!(seqs(&recovery), vec![1, 2, 4, 5]);
    }

    #[test]
    fn flipped_byte_discards_the_rest_of_its_segment_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, _) = open(dir.path(), BIG, 200);
        append_all(&mut spool, 1..=6);
        drop(spool);
        let files = segment_files(dir.path());
        assert!(files.len() >= 2);
        let mut bytes = fs::read(&files[0]).expect("segment");
        let offsets = record_offsets(&bytes);
        assert!(offsets.len() >= 3, "{offsets:?}");
        bytes[offsets[1] + 12] ^= 0x40;
        fs::write(&files[0], &bytes).expect("write");

        let (_, recovery) = open(dir.path(), BIG, 200);
        let in_first = offsets.len() as u64;
        let expected: Vec<u64> = std::iter::once(1).chain(in_first + 1..=6).collect();
        assert_eq!(seqs(&recovery), expected);
        assert_eq!(recovery.damage.len(), 1, "{:?}", recovery.damage);
        assert!(recovery.damage[0].contains("bad checksum"));
        assert_eq!(recovery.discarded_bytes, (bytes.len() - offsets[1]) as u64);
        assert_eq!(recovery.next_seq, 7);
    }

    #[test]
    fn garbage_empty_and_huge_length_files_do_not_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let name = |seq: u64| dir.path().join(format!("{seq:016x}.seg"));
        fs::write(name(1), b"this is not a spool segment at all\n").expect("write");
        fs::write(name(2), b"").expect("write");
        let mut huge = SEGMENT_MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0xab; 20]);
        fs::write(name(3), &huge).expect("write");
        let mut short = SEGMENT_MAGIC.to_vec();
        short.extend_from_slice(&raw_record(4, b"m v=1i 4"));
        short.extend_from_slice(&[1, 2, 3]);
        fs::write(name(4), &short).expect("write");
        fs::write(dir.path().join("notes.txt"), b"ignored").expect("write");
        fs::write(dir.path().join(STATE_FILE), b"garbage").expect("write");

        let (mut spool, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![4]);
        assert_eq!(recovery.damage.len(), 5, "{:?}", recovery.damage);
        assert!(recovery
            .damage
            .iter()
            .any(|d| d.contains("impossible length")));
        assert!(recovery.damage.iter().any(|d| d.contains("state file")));
        assert_eq!(recovery.next_seq, 5);
        spool.append(5, &reading(5)).expect("append");
        drop(spool);
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert!(recovery.is_clean(), "{:?}", recovery.damage);
        assert_eq!(seqs(&recovery), vec![4, 5]);
    }

    #[test]
    fn records_with_good_crc_but_bad_content_are_skipped_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(&raw_record(1, b"m v=1i 1"));
        bytes.extend_from_slice(&raw_record(2, b"not line protocol"));
        bytes.extend_from_slice(&raw_record(2, b"m v=2i 2")); // seq repeated
        bytes.extend_from_slice(&raw_record(3, b"m v=3i 3"));
        fs::write(dir.path().join("0000000000000001.seg"), &bytes).expect("write");
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![1, 3]);
        assert_eq!(recovery.corrupt_records, 2, "{:?}", recovery.damage);
        assert_eq!(recovery.damage.len(), 2);
        assert_eq!(recovery.next_seq, 4);
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
    fn a_live_lock_keeps_a_second_client_out_and_a_stale_one_is_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        match Spool::open(dir.path(), BIG) {
            Err(SpoolError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(spool);
        assert!(!dir.path().join(LOCK_FILE).exists());

        // Above the kernel's PID limit: no such process can exist.
        fs::write(dir.path().join(LOCK_FILE), "4194305\n").expect("write");
        let (spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        drop(spool);

        // A lock without a PID is only stale once old.
        let lock = dir.path().join(LOCK_FILE);
        fs::write(&lock, "").expect("write");
        assert!(matches!(
            Spool::open(dir.path(), BIG),
            Err(SpoolError::Locked { pid: None, .. })
        ));
        let old = SystemTime::now() - Duration::from_secs(60);
        File::options()
            .write(true)
            .open(&lock)
            .and_then(|f| f.set_modified(old))
            .expect("age the lock");
        let (_spool, _) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
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
                        crash(spool, dir.path());
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
