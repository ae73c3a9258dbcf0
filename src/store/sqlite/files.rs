//! The database's files beside the connection: the writer lock (`PATH.lock`, one writer
//! per database) and the shutdown checkpoint that leaves the main file self-contained.

use std::path::Path;

use rusqlite::Connection;

use super::{StoreError, CLOSE_BUSY_TIMEOUT};

/// `PATH.lock`, locked exclusively (released by the kernel when the process dies, so a
/// crash never leaves it held). Readers don't take it: WAL lets them run beside the writer.
pub(super) fn lock_writer(path: &Path, location: &str) -> Result<std::fs::File, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = std::path::PathBuf::from(name);
    let io_error = |operation| {
        let lock = lock.clone();
        move |err: std::io::Error| StoreError::Backend {
            location: location.to_string(),
            operation,
            detail: format!("{}: {err}", lock.display()),
        }
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(io_error("open writer lock"))?;
    // Fully qualified: std's own `File::try_lock` (Rust 1.89) is newer than our MSRV.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(StoreError::InUse {
            location: location.to_string(),
            lock,
        }),
        Err(fs4::TryLockError::Error(err)) => Err(io_error("lock writer lock")(err)),
    }
}

/// Which shutdown checkpoint completed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Checkpoint {
    /// The WAL is folded into the database file and emptied.
    Truncated,
    /// A reader holds the WAL: what could be copied without waiting was copied.
    Passive,
    Failed,
}

/// Best effort at shutdown: fold the WAL into the main file so it is self-contained.
/// TRUNCATE must wait for every reader to let go of the WAL, so it waits only
/// [`CLOSE_BUSY_TIMEOUT`] (not the writer's 5 s), then falls back to PASSIVE, which never
/// waits. Failing loses nothing: the WAL stays valid.
pub(super) fn checkpoint_at_close(conn: &Connection, location: &str) -> Checkpoint {
    // busy = 1 when the checkpoint could not complete (readers in the way).
    let run = |mode: &str| {
        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            row.get::<_, i64>(0)
        })
    };
    if let Err(err) = conn.busy_timeout(CLOSE_BUSY_TIMEOUT) {
        tracing::warn!(path = %location, cause = %err, "cannot shorten the busy timeout");
    }
    match run("TRUNCATE") {
        Ok(0) => return Checkpoint::Truncated,
        Ok(_) => tracing::info!(path = %location, "readers hold the wal: passive checkpoint"),
        Err(err) => tracing::info!(path = %location, cause = %err, "truncate checkpoint failed"),
    }
    match run("PASSIVE") {
        Ok(_) => Checkpoint::Passive,
        Err(err) => {
            tracing::warn!(path = %location, cause = %err, "wal checkpoint failed");
            Checkpoint::Failed
        }
    }
}
