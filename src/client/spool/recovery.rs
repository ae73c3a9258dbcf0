//! Recovery: the walk over every segment when a spool is opened.
//!
//! At the first record with a bad length, a bad checksum or missing bytes (a write cut
//! short), the rest of that segment is discarded and the file truncated there, so appends
//! continue on a clean end; later segments are still read. A record with a good checksum
//! whose line does not parse, or whose seq is out of order, is skipped on its own. A file
//! with a bad header is removed. All of it is described in [`Recovery::damage`].

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::protocol::ilp;

use super::record::{split_payload, RecordHeader, RECORD_HEADER, SEGMENT_MAGIC};
use super::{io_err, Entry, Recovery, Segment, SpoolError, SpooledReading};

/// Segment files end in this; their stem is the first seq, 16 lowercase hex digits.
pub(super) const SEGMENT_EXT: &str = ".seg";

/// What the walk found besides what it put in [`Recovery`].
#[derive(Debug, Default)]
pub(super) struct Scanned {
    /// The segments kept, in seq order.
    pub segments: VecDeque<Segment>,
    /// The highest seq read; seqs must keep increasing across segments.
    pub last_seen: Option<u64>,
    /// Records not yet done (after `done_through`), in seq order.
    pub entries: Vec<Entry>,
}

/// Read and repair every segment in `dir`. Readings after `done_through` go to
/// `recovery.readings`, and every problem to `recovery.damage`.
pub(super) fn scan(
    dir: &Path,
    done_through: u64,
    recovery: &mut Recovery,
) -> Result<Scanned, SpoolError> {
    let mut scan = Scan {
        done_through,
        found: Scanned::default(),
        recovery,
    };
    for (name_seq, name, path) in list_segments(dir)? {
        if let Some(segment) = scan.segment(name_seq, &name, path)? {
            scan.found.segments.push_back(segment);
        }
    }
    Ok(scan.found)
}

/// The path of the segment whose first seq is `name_seq`.
pub(super) fn segment_path(dir: &Path, name_seq: u64) -> PathBuf {
    dir.join(format!("{name_seq:016x}{SEGMENT_EXT}"))
}

/// Segment files in `dir`, in seq order: `(seq in the name, file name, path)`.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, String, PathBuf)>, SpoolError> {
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

/// Recovery's walk over the segments.
struct Scan<'a> {
    done_through: u64,
    found: Scanned,
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
            let Some(header) = RecordHeader::decode(header) else {
                break Some("a record with an impossible length");
            };
            payload.resize(header.len as usize, 0);
            let n = read_full(&mut reader, &mut payload).map_err(io_err(&path))?;
            if n < payload.len() {
                break Some("a truncated record");
            }
            if !header.matches(&payload) {
                break Some("a record with a bad checksum");
            }
            let record_bytes = header.record_bytes();
            let (seq, line) = split_payload(&payload);
            if self.found.last_seen.is_some_and(|last| seq <= last) {
                self.damage(
                    name,
                    format!("record at offset {offset} has seq {seq} out of order; skipped"),
                    1,
                    record_bytes,
                );
            } else {
                self.found.last_seen = Some(seq);
                last_seq = Some(seq);
                if seq > self.done_through {
                    match ilp::parse(line) {
                        Ok(reading) => {
                            self.found.entries.push(Entry {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::spool::record::tests::{raw_record, record_offsets};
    use crate::client::spool::state::tests::STATE_FILE_NAME;
    use crate::client::spool::testkit::*;
    use crate::client::spool::MAX_SEGMENT_BYTES;

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
        let name = |seq: u64| segment_path(dir.path(), seq);
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
        fs::write(dir.path().join(STATE_FILE_NAME), b"garbage").expect("write");

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
        fs::write(segment_path(dir.path(), 1), &bytes).expect("write");
        let (_, recovery) = open(dir.path(), BIG, MAX_SEGMENT_BYTES);
        assert_eq!(seqs(&recovery), vec![1, 3]);
        assert_eq!(recovery.corrupt_records, 2, "{:?}", recovery.damage);
        assert_eq!(recovery.damage.len(), 2);
        assert_eq!(recovery.next_seq, 4);
    }

    #[test]
    fn segments_are_listed_in_seq_order_and_strangers_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        for seq in [0x20, 0x3, 0x100] {
            fs::write(segment_path(dir.path(), seq), b"").expect("write");
        }
        for stranger in ["0000000000000001.seg.bak", "00000000000000A1.seg", "1.seg"] {
            fs::write(dir.path().join(stranger), b"").expect("write");
        }
        let seqs: Vec<u64> = list_segments(dir.path())
            .expect("list")
            .into_iter()
            .map(|(seq, _, _)| seq)
            .collect();
        assert_eq!(seqs, vec![0x3, 0x20, 0x100]);
    }
}
