//! What a connection owes its peer: replies queued behind the store commit of everything
//! received before them, so an `ack` (or a legacy `pong`) is never written before the
//! readings it covers are stored.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::live::LiveBatch;
use crate::store::writer::{CommitReceiver, Committed};
use crate::store::StoreError;

/// A reply waiting for the commit of everything received before it.
#[derive(Debug)]
pub(super) enum PendingReply {
    Pong(Option<String>),
    Ack {
        token: String,
        line: u64,
        readings: u64,
        rejected: u64,
        /// Receipt of the first reading this ack covers (for `store_us`).
        first_received: Option<Instant>,
    },
    Error {
        line: u64,
        reason: String,
    },
    /// `received`: this pong acknowledges a stored reading received then (not a bare `ping`).
    LegacyPong {
        received: Option<Instant>,
    },
}

/// Replies behind one store batch (or behind the batches before it, when `commit` is None).
pub(super) struct InFlight {
    /// The batch's commit, until it resolves into `done`.
    pub(super) commit: Option<CommitReceiver>,
    pub(super) done: Option<Result<Committed, Arc<StoreError>>>,
    pub(super) replies: Vec<PendingReply>,
    /// The batch as the live view sees it, handed over once committed (None: no batch, or
    /// no live view).
    pub(super) live: Option<LiveBatch>,
}

impl InFlight {
    /// Take the commit's result if it has arrived; `false` while still waiting.
    pub(super) fn poll_ready(&mut self) -> bool {
        let Some(commit) = &mut self.commit else {
            return true;
        };
        match commit.try_recv() {
            Ok(result) => self.done = Some(result),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => return false,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                self.done = Some(Err(Arc::new(StoreError::WriterGone)));
            }
        }
        self.commit = None;
        true
    }
}

/// Resolves when the head of the queue is ready to answer.
pub(super) async fn wait_head(inflight: &mut VecDeque<InFlight>) {
    let Some(head) = inflight.front_mut() else {
        return;
    };
    let Some(commit) = &mut head.commit else {
        return;
    };
    let result = match commit.await {
        Ok(result) => result,
        Err(_) => Err(Arc::new(StoreError::WriterGone)),
    };
    head.done = Some(result);
    head.commit = None;
}
