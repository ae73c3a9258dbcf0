//! The bytes of a spool segment: its magic header and its records, each framed by a length
//! and a CRC-32 over length and payload. Pure: encoding into a buffer, decoding a header;
//! reading files is [`super::recovery`]'s work.
//!
//! ```text
//! segment = "SLSPSEG1" record*
//! record  = [u32 LE payload_len][u32 LE crc32(payload_len bytes ++ payload)][payload]
//! payload = [u64 LE seq][the reading as one line of line protocol, without '\n']
//! ```

use crate::protocol::{ilp, Reading};

use super::SpoolError;

/// Largest payload (seq + line) one record may have; a longer length prefix is corruption.
pub const MAX_RECORD_PAYLOAD: u32 = 1 << 20;

/// First bytes of every segment file.
pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"SLSPSEG1";
/// Length + CRC in front of every payload.
pub(super) const RECORD_HEADER: u64 = 8;
/// A payload holds a seq and at least one byte of line.
pub(super) const MIN_RECORD_PAYLOAD: u32 = 9;

/// Append one record for `reading` to `buf`; `buf` is unchanged on error.
pub(super) fn encode_record(
    seq: u64,
    reading: &Reading,
    buf: &mut Vec<u8>,
) -> Result<(), SpoolError> {
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
    let crc = record_crc(&len, &buf[start + RECORD_HEADER as usize..]);
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A record header as read from disk, before its payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordHeader {
    /// The length field's own bytes: the CRC covers them.
    pub len_bytes: [u8; 4],
    pub len: u32,
    pub crc: u32,
}

impl RecordHeader {
    /// Split a header into length and CRC; `None` for a length no record can have, which
    /// is corruption (a payload is never read for it, however large it claims to be).
    pub fn decode(header: [u8; RECORD_HEADER as usize]) -> Option<RecordHeader> {
        let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
        let len_bytes = [l0, l1, l2, l3];
        let len = u32::from_le_bytes(len_bytes);
        (MIN_RECORD_PAYLOAD..=MAX_RECORD_PAYLOAD)
            .contains(&len)
            .then_some(RecordHeader {
                len_bytes,
                len,
                crc: u32::from_le_bytes([c0, c1, c2, c3]),
            })
    }

    /// Whether `payload` (exactly `len` bytes) is what was written.
    pub fn matches(&self, payload: &[u8]) -> bool {
        record_crc(&self.len_bytes, payload) == self.crc
    }

    /// Header + payload bytes of the whole record.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER + u64::from(self.len)
    }
}

/// Split a checked payload into its seq and its line.
pub(super) fn split_payload(payload: &[u8]) -> (u64, &[u8]) {
    let (seq_bytes, line) = payload.split_at(8);
    let mut seq = [0; 8];
    seq.copy_from_slice(seq_bytes);
    (u64::from_le_bytes(seq), line)
}

fn record_crc(len_bytes: &[u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_bytes);
    hasher.update(payload);
    hasher.finalize()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::client::spool::testkit::reading;
    use crate::protocol::FieldValue;

    /// A record with any seq and line, valid or not as line protocol.
    pub fn raw_record(seq: u64, line: &[u8]) -> Vec<u8> {
        let mut payload = seq.to_le_bytes().to_vec();
        payload.extend_from_slice(line);
        let len = (payload.len() as u32).to_le_bytes();
        let mut out = len.to_vec();
        out.extend_from_slice(&record_crc(&len, &payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Offsets of the records in a segment file's bytes.
    pub fn record_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut offsets = Vec::new();
        let mut at = SEGMENT_MAGIC.len();
        while at + 8 <= bytes.len() {
            offsets.push(at);
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            at += 8 + len as usize;
        }
        offsets
    }

    #[test]
    fn an_encoded_record_has_the_documented_layout() {
        let mut buf = b"keep".to_vec();
        encode_record(7, &reading(3), &mut buf).expect("encodes");
        let record = &buf[4..];
        let line = b"m,sensor=s1 value=3i 1800000000000000003";
        assert_eq!(record, raw_record(7, line).as_slice());
        let header = RecordHeader::decode(record[..8].try_into().expect("8 bytes"))
            .expect("a possible length");
        assert_eq!(header.len as usize, 8 + line.len());
        assert_eq!(header.record_bytes(), record.len() as u64);
        assert!(header.matches(&record[8..]));
        assert_eq!(split_payload(&record[8..]), (7, &line[..]));
        let mut flipped = record[8..].to_vec();
        flipped[9] ^= 1;
        assert!(!header.matches(&flipped));
    }

    #[test]
    fn impossible_lengths_are_refused_before_reading() {
        let header = |len: u32| {
            let mut h = [0u8; 8];
            h[..4].copy_from_slice(&len.to_le_bytes());
            RecordHeader::decode(h)
        };
        assert!(header(0).is_none());
        assert!(header(MIN_RECORD_PAYLOAD - 1).is_none());
        assert!(header(MIN_RECORD_PAYLOAD).is_some());
        assert!(header(MAX_RECORD_PAYLOAD).is_some());
        assert!(header(MAX_RECORD_PAYLOAD + 1).is_none());
        assert!(header(u32::MAX).is_none());
    }

    #[test]
    fn unstorable_readings_leave_the_buffer_unchanged() {
        let nan = Reading {
            fields: vec![("v".into(), FieldValue::Float(f64::NAN))],
            ..reading(1)
        };
        let mut buf = b"before".to_vec();
        assert!(matches!(
            encode_record(1, &nan, &mut buf),
            Err(SpoolError::Unstorable { seq: 1, .. })
        ));
        assert_eq!(buf, b"before");
    }
}
