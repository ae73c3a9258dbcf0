//! Reply encoding of a [`Connection`]: each [`PendingReply`] becomes its wire bytes in
//! `Connection::out`, counted for [`RepliesWritten`](crate::events::RepliesWritten).

use std::time::{Duration, Instant};

use super::Connection;
use crate::protocol::control::{Ack, Reply};
use crate::protocol::legacy::PONG;
use crate::server::pending::PendingReply;
use crate::store::writer::Committed;

/// The replies encoded into `Connection::out`, for
/// [`RepliesWritten`](crate::events::RepliesWritten).
#[derive(Debug, Default)]
pub(super) struct OutReplies {
    pub(super) acks: u64,
    pub(super) pongs: u64,
    pub(super) errors: u64,
    pub(super) readings_acked: u64,
    pub(super) ack_receipts: Vec<Instant>,
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
        let reply = match reply {
            PendingReply::LegacyPong { received } => {
                self.out_replies.pongs += 1;
                if let Some(received) = received {
                    self.counters.acked += 1;
                    self.out_replies.readings_acked += 1;
                    self.out_replies.ack_receipts.push(received);
                }
                self.out.extend_from_slice(PONG);
                return;
            }
            PendingReply::Pong(token) => {
                self.out_replies.pongs += 1;
                Reply::Pong(token)
            }
            PendingReply::AuthOk(id) => Reply::AuthOk(id),
            PendingReply::Error { line, reason } => {
                self.out_replies.errors += 1;
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
                self.out_replies.acks += 1;
                self.out_replies.readings_acked += readings;
                if let Some(first) = first_received {
                    self.out_replies.ack_receipts.push(first);
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
        reply.encode(&mut self.out);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
