//! The spool's `state` file: `[magic SLSPSTA1][u64 LE done_through][u64 LE next_seq]
//! [u32 LE crc32]`, replaced atomically (write `state.tmp`, fsync, rename, fsync the
//! directory), so a crash leaves either the old or the new state, never a mix.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::Path;

use super::{io_err, sync_dir, SpoolError};

const STATE_MAGIC: &[u8; 8] = b"SLSPSTA1";
const STATE_LEN: usize = 8 + 8 + 8 + 4;
const STATE_FILE: &str = "state";
/// A state write in progress; one left behind is a write cut short.
const STATE_TMP: &str = "state.tmp";

/// What the state file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StateFile {
    Missing,
    Good {
        done_through: u64,
        next_seq: u64,
    },
    /// Present but unusable; the text says why.
    Bad(String),
}

/// Remove a leftover `state.tmp`: a state write cut short, the old `state` is still whole.
pub(super) fn remove_leftover(dir: &Path) -> Result<(), SpoolError> {
    let tmp = dir.join(STATE_TMP);
    match fs::remove_file(&tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(io_err(&tmp)(err)),
        _ => Ok(()),
    }
}

/// Read `dir/state`. Damage is a [`StateFile::Bad`], not an error: recovery goes on.
pub(super) fn read_state(dir: &Path) -> Result<StateFile, SpoolError> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(StateFile::Missing),
        Err(err) => return Err(io_err(&path)(err)),
    };
    Ok(decode(&bytes))
}

/// Replace `dir/state` atomically with `done_through` and `next_seq`.
pub(super) fn write_state(dir: &Path, done_through: u64, next_seq: u64) -> Result<(), SpoolError> {
    let bytes = encode(done_through, next_seq);
    let tmp = dir.join(STATE_TMP);
    let path = dir.join(STATE_FILE);
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir).map_err(io_err(dir))
}

fn encode(done_through: u64, next_seq: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(STATE_LEN);
    bytes.extend_from_slice(STATE_MAGIC);
    bytes.extend_from_slice(&done_through.to_le_bytes());
    bytes.extend_from_slice(&next_seq.to_le_bytes());
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> StateFile {
    if bytes.len() != STATE_LEN {
        return StateFile::Bad(format!("{} bytes instead of {STATE_LEN}", bytes.len()));
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
        return StateFile::Bad("not a spool state file".into());
    }
    if crc32fast::hash(body) != u32::from_le_bytes(crc_bytes) {
        return StateFile::Bad("bad checksum".into());
    }
    StateFile::Good {
        done_through: word(8),
        next_seq: word(16),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The state file's name, for tests that damage it.
    pub const STATE_FILE_NAME: &str = STATE_FILE;

    #[test]
    fn state_round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read_state(dir.path()).expect("read"), StateFile::Missing);
        write_state(dir.path(), 5, 9).expect("write");
        write_state(dir.path(), 7, 12).expect("write");
        assert_eq!(
            read_state(dir.path()).expect("read"),
            StateFile::Good {
                done_through: 7,
                next_seq: 12
            }
        );
        assert!(!dir.path().join(STATE_TMP).exists());
        assert_eq!(
            fs::read(dir.path().join(STATE_FILE)).expect("state").len(),
            STATE_LEN
        );
    }

    #[test]
    fn damaged_state_is_bad_not_an_error() {
        let good = encode(3, 4);
        assert_eq!(
            decode(&good),
            StateFile::Good {
                done_through: 3,
                next_seq: 4
            }
        );
        assert!(matches!(decode(b"garbage"), StateFile::Bad(why) if why.contains("7 bytes")));
        let mut flipped = good.clone();
        flipped[10] ^= 1;
        assert!(matches!(decode(&flipped), StateFile::Bad(why) if why == "bad checksum"));
        let mut other = good;
        other[0] = b'X';
        assert!(matches!(decode(&other), StateFile::Bad(why) if why.contains("not a spool")));
    }

    #[test]
    fn a_leftover_temp_file_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        remove_leftover(dir.path()).expect("nothing to remove is fine");
        fs::write(dir.path().join(STATE_TMP), b"half").expect("write");
        remove_leftover(dir.path()).expect("remove");
        assert!(!dir.path().join(STATE_TMP).exists());
    }
}
