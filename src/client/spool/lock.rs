//! One client per spool directory: an advisory exclusive lock (`flock`, through `fs4`) on
//! `DIR/lock`, held while the spool is open. The kernel releases it when the process ends,
//! crash or not, so there is no stale lock to detect, no PID to reuse and no `/proc` to read.
//!
//! The lock belongs to the open file description, which a child forked by another thread
//! shares until its `exec` closes it (`O_CLOEXEC`); so we unlock explicitly before closing,
//! or a spool reopened in the same process could find itself locked by that child.
//!
//! The file itself is never removed (unlinking a locked file would let a third client lock a
//! new file of the same name beside a live holder). Our PID is written into it for the error
//! message only; a PID file left by an older version is just overwritten once we hold it.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::Path;

use super::{io_err, SpoolError};

const LOCK_FILE: &str = "lock";

/// `DIR/lock`, locked while this value lives.
#[derive(Debug)]
pub(super) struct LockFile {
    /// Closing it releases the lock; `None` only after a test simulated a crash.
    _file: Option<File>,
}

impl LockFile {
    /// Take the lock of the spool in `dir`, or fail with [`SpoolError::Locked`] naming `dir`
    /// if another client (another process, or another open spool in this one) holds it.
    pub(super) fn acquire(dir: &Path) -> Result<LockFile, SpoolError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        // Fully qualified: std's own `File::try_lock` (Rust 1.89) is newer than our MSRV.
        match fs4::FileExt::try_lock(&file) {
            Ok(()) => {}
            Err(fs4::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked {
                    path: dir.to_path_buf(),
                    pid: holder_pid(&mut file),
                })
            }
            Err(fs4::TryLockError::Error(err)) => return Err(io_err(&path)(err)),
        }
        // Best effort: the PID only makes the error of a second client more helpful.
        let pid = format!("{}\n", std::process::id());
        let noted = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(pid.as_bytes()));
        if let Err(err) = noted {
            tracing::debug!(path = %path.display(), cause = %err, "spool lock: PID not written");
        }
        Ok(LockFile { _file: Some(file) })
    }

    /// Let go of the lock without the rest of the spool's `Drop`: what a crash does (the
    /// kernel releases the lock as the process ends, whatever forked children hold).
    #[cfg(test)]
    pub(super) fn release_as_if_crashed(&mut self) {
        self.unlock();
        self._file = None;
    }

    /// Release the lock itself, not only our descriptor: a child forked (not yet exec'd)
    /// by another thread holds a copy of it, which would keep the lock held.
    fn unlock(&self) {
        if let Some(file) = &self._file {
            if let Err(err) = fs4::FileExt::unlock(file) {
                // Closing the file below still releases it once no child holds a copy.
                tracing::debug!(cause = %err, "spool lock: unlock failed");
            }
        }
    }

    /// A second descriptor of the locked file, as a forked child holds until it execs.
    #[cfg(test)]
    fn duplicate(&self) -> File {
        self._file
            .as_ref()
            .expect("only a crash takes the file, and it also takes the LockFile")
            .try_clone()
            .expect("dup of an open descriptor")
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// The PID the holder wrote, if it is there yet.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The lock file's path in `dir`.
#[cfg(test)]
pub(super) fn lock_path(dir: &Path) -> std::path::PathBuf {
    dir.join(LOCK_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_while_the_first_is_held_and_succeeds_after_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = LockFile::acquire(dir.path()).expect("first lock");
        match LockFile::acquire(dir.path()) {
            Err(SpoolError::Locked { path, pid }) => {
                assert_eq!(path, dir.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        let _second = LockFile::acquire(dir.path()).expect("lock after the first is dropped");
    }

    #[test]
    fn the_error_names_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _held = LockFile::acquire(dir.path()).expect("lock");
        let err = LockFile::acquire(dir.path()).expect_err("already locked");
        let text = err.to_string();
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains("in use"), "{text}");
    }

    #[test]
    fn an_old_pid_file_does_not_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        // What an older version left: a live PID (ours) and no lock held on it.
        std::fs::write(lock_path(dir.path()), format!("{}\n", std::process::id())).expect("write");
        let _lock = LockFile::acquire(dir.path()).expect("an unlocked PID file is no lock");
        // A holder that has not written its PID yet is still a holder.
        std::fs::write(lock_path(dir.path()), "").expect("write");
        assert!(matches!(
            LockFile::acquire(dir.path()),
            Err(SpoolError::Locked { pid: None, .. })
        ));
    }

    #[test]
    fn a_descriptor_left_in_a_forked_child_does_not_keep_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = LockFile::acquire(dir.path()).expect("lock");
        // What a child forked by another thread (a source command) holds until it execs.
        let child_copy = lock.duplicate();
        drop(lock);
        let _again = LockFile::acquire(dir.path()).expect("released despite the child's copy");
        drop(child_copy);
    }

    #[test]
    fn a_crash_with_a_forked_child_releases_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lock = LockFile::acquire(dir.path()).expect("lock");
        let child_copy = lock.duplicate();
        lock.release_as_if_crashed();
        std::mem::forget(lock);
        let _again = LockFile::acquire(dir.path()).expect("the kernel released it");
        drop(child_copy);
    }

    #[test]
    fn a_crash_releases_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lock = LockFile::acquire(dir.path()).expect("lock");
        lock.release_as_if_crashed();
        std::mem::forget(lock);
        let _again = LockFile::acquire(dir.path()).expect("the kernel released it");
    }
}
