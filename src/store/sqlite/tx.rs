//! The writer's write transactions, from statements prepared once: on a one-reading
//! round trip (`--fsync os`) the commit is most of the server's own time, and
//! `Connection::transaction` parses `BEGIN IMMEDIATE` and `COMMIT` again every time.
//!
//! A transaction may also be begun ahead ([`begin_ahead`]) once a commit is answered,
//! while the sender reads its ack and sends the next reading: taking the WAL's read and
//! write locks is four `fcntl`s, a third of a one-reading commit, and they then leave the
//! round trip. Such a transaction is empty: ending it ([`end_ahead`]) writes nothing.

use rusqlite::Connection;

/// Takes the write lock up front (no upgrade deadlock with a concurrent
/// reader-turned-writer).
const BEGIN: &str = "BEGIN IMMEDIATE";
const COMMIT: &str = "COMMIT";
const ROLLBACK: &str = "ROLLBACK";

/// An IMMEDIATE transaction on the writer's connection, rolled back when dropped
/// uncommitted (as `rusqlite::Transaction` is).
#[derive(Debug)]
pub(super) struct Immediate<'a> {
    conn: &'a Connection,
}

impl<'a> Immediate<'a> {
    /// Begin, or take over the transaction begun ahead.
    pub(super) fn begin(conn: &'a Connection) -> rusqlite::Result<Self> {
        if conn.is_autocommit() {
            conn.prepare_cached(BEGIN)?.execute([])?;
        }
        Ok(Immediate { conn })
    }

    /// Commit. On an error the transaction is rolled back (on drop), as SQLite leaves it
    /// open when `COMMIT` fails.
    pub(super) fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached(COMMIT)?.execute([])?;
        Ok(())
    }
}

impl std::ops::Deref for Immediate<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            // Nothing else to do with a failure here: the next BEGIN reports the state.
            let _ = rollback(self.conn);
        }
    }
}

fn rollback(conn: &Connection) -> rusqlite::Result<()> {
    conn.prepare_cached(ROLLBACK)?.execute([]).map(drop)
}

/// Begin the next write transaction now (if none is open), so that the next batch finds
/// the locks taken.
pub(super) fn begin_ahead(conn: &Connection) -> rusqlite::Result<()> {
    if conn.is_autocommit() {
        conn.prepare_cached(BEGIN)?.execute([])?;
    }
    Ok(())
}

/// End a transaction begun ahead (empty: nothing is written), before anything that needs
/// the connection out of a transaction (a checkpoint, a probe, a totals flush, close).
pub(super) fn end_ahead(conn: &Connection) -> rusqlite::Result<()> {
    if conn.is_autocommit() {
        return Ok(());
    }
    rollback(conn)
}
