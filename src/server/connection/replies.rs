//! Reply encoding of a [`Connection`]: each [`PendingReply`] becomes its wire bytes in
//! `Connection::out` ([`Out`]), counted for [`RepliesWritten`](crate::events::RepliesWritten).

use std::time::{Duration, Instant};

use super::Connection;
use crate::protocol::control::{Ack, Reply};
use crate::protocol::legacy::PONG;
use crate::server::pending::PendingReply;
use crate::store::writer::Committed;

/// Replies encoded and not yet written: their bytes, and what they count for
/// [`RepliesWritten`](crate::events::RepliesWritten). A connection holds one (boxed, lent
/// by [`crate::server::spare`]) only from its first encoded reply until they are written.
#[derive(Debug, Default)]
pub(in crate::server) struct Out {
    pub(in crate::server) bytes: Vec<u8>,
    pub(super) acks: u64,
    pub(super) pongs: u64,
    pub(super) errors: u64,
    pub(super) readings_acked: u64,
    pub(in crate::server) ack_receipts: Vec<Instant>,
}

impl Out {
    /// A new one, with room for a write's first replies.
    pub(in crate::server) fn new() -> Out {
        Out {
            bytes: Vec::with_capacity(Out::FIRST_BYTES),
            ..Out::default()
        }
    }

    /// Empty again (its buffers' room kept), to be lent anew.
    pub(in crate::server) fn clear(&mut self) {
        self.bytes.clear();
        self.ack_receipts.clear();
        (self.acks, self.pongs, self.errors, self.readings_acked) = (0, 0, 0, 0);
    }

    /// Room reserved at once for the replies of a write: an `ack` with its timings is
    /// ≈ 70 bytes, which growing from nothing would reach in four steps.
    const FIRST_BYTES: usize = 128;
}

/// What an ack reports of the last commit (`store_us`, `commit_us`): only its timings are
/// kept, not the whole [`Committed`], in a struct every connection holds.
#[derive(Debug, Clone, Copy)]
pub(super) struct LastCommit {
    pub(super) committed_at: Instant,
    pub(super) commit_us: u64,
}

impl LastCommit {
    pub(super) fn of(committed: &Committed) -> Self {
        LastCommit {
            committed_at: committed.committed_at,
            commit_us: committed.commit_us,
        }
    }
}

impl Connection<'_> {
    pub(super) fn encode(&mut self, reply: PendingReply) {
        let out = self.out.get_or_insert_with(crate::server::spare::out);
        let reply = match reply {
            PendingReply::LegacyPong { received } => {
                out.pongs += 1;
                if let Some(received) = received {
                    self.counters.acked += 1;
                    out.readings_acked += 1;
                    out.ack_receipts.push(received);
                }
                out.bytes.extend_from_slice(PONG);
                return;
            }
            PendingReply::Pong(token) => {
                out.pongs += 1;
                Reply::Pong(token)
            }
            PendingReply::AuthOk(id) => Reply::AuthOk(id),
            PendingReply::Error { line, reason } => {
                out.errors += 1;
                Reply::Error { line, reason }
            }
            PendingReply::Ack {
                token,
                readings,
                rejected,
                first_received,
                repeats,
                ..
            } => {
                out.acks += 1;
                out.readings_acked += readings;
                if let Some(first) = first_received {
                    out.ack_receipts.push(first);
                }
                self.counters.acked += readings;
                let (store_us, commit_us) = match (&self.last_commit, first_received) {
                    (Some(commit), Some(first)) => (
                        Some(micros(commit.committed_at.saturating_duration_since(first))),
                        Some(commit.commit_us),
                    ),
                    _ => (None, None),
                };
                Reply::Ack(Ack {
                    token,
                    readings,
                    rejected,
                    duplicates: repeats.duplicates,
                    conflicts: repeats.conflicts,
                    store_us,
                    commit_us,
                })
            }
        };
        reply.encode(&mut out.bytes);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
