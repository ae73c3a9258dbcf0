//! What a connection owes its peer: replies queued behind the store commit of everything
//! received before them, so an `ack` (or a legacy `pong`) is never written before the
//! readings it covers are stored; and what it owes the live view ([`LiveFeed`]): each
//! batch's summary, handed over once committed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::events::Mode;
use crate::live::{LiveBatch, LiveConnection};
use crate::store::writer::{CommitReceiver, Committed};
use crate::store::{Repeat, StoreError};

/// A reply waiting for the commit of everything received before it.
#[derive(Debug)]
pub(super) enum PendingReply {
    Pong(Option<String>),
    /// `ok auth <id>`: the peer's `auth` was accepted.
    AuthOk(String),
    Ack {
        token: String,
        line: u64,
        readings: u64,
        rejected: u64,
        /// Receipt of the first reading this ack covers (for `store_us`).
        first_received: Option<Instant>,
        /// Readings of this batch decoded before the `sync`: the ack covers those (and the
        /// earlier batches' readings after their last ack), not the ones after it.
        batch_offset: usize,
        /// Of the readings covered, those already stored (same fields, other fields): known
        /// once the batch is committed ([`Unreported::attribute`]).
        repeats: Unreported,
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

/// Duplicates and conflicts among committed readings that no ack has reported yet (or, in
/// an ack, the ones it reports).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unreported {
    pub(super) duplicates: u64,
    pub(super) conflicts: u64,
}

impl Unreported {
    fn add(&mut self, repeat: &Repeat) {
        if repeat.conflict.is_some() {
            self.conflicts += 1;
        } else {
            self.duplicates += 1;
        }
    }

    /// A batch is committed with `repeats` (ascending indices): each ack among its
    /// `replies` takes the repeats before its `batch_offset` plus those carried in `self`
    /// from earlier batches; the repeats after the last ack stay in `self` for the next.
    pub(super) fn attribute(&mut self, replies: &mut [PendingReply], repeats: &[Repeat]) {
        let mut repeats = repeats.iter().peekable();
        for reply in replies {
            if let PendingReply::Ack {
                batch_offset,
                repeats: reported,
                ..
            } = reply
            {
                while let Some(repeat) = repeats.next_if(|repeat| repeat.index < *batch_offset) {
                    self.add(repeat);
                }
                *reported = std::mem::take(self);
            }
        }
        repeats.for_each(|repeat| self.add(repeat));
    }
}

/// Replies behind one store batch (or behind the batches before it, when `commit` is None).
pub(super) struct InFlight {
    /// The batch's commit, until it resolves into `done`.
    pub(super) commit: Option<CommitReceiver>,
    pub(super) done: Option<Result<Committed, Arc<StoreError>>>,
    pub(super) replies: Vec<PendingReply>,
    /// The batch as the live view sees it, handed over once committed (None: no batch, or
    /// no live view). Boxed: every connection keeps room for one `InFlight` while idle.
    pub(super) live: Option<Box<LiveBatch>>,
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

/// A connection's side of the live view: the receipt of the pending batch's first reading,
/// and the committed batches' summaries until their replies are written.
#[derive(Debug)]
pub(super) struct LiveFeed {
    /// None: no live view kept. Boxed: most servers keep none (`--http off`), and every
    /// connection holds this (one pointer, not the whole state).
    live: Option<Box<LiveState>>,
}

/// What a connection keeps for the live view, when there is one.
#[derive(Debug)]
struct LiveState {
    conn: LiveConnection,
    batch_first: Option<Instant>,
    committed: Vec<LiveBatch>,
}

impl LiveFeed {
    pub(super) fn new(live: Option<LiveConnection>) -> Self {
        LiveFeed {
            live: live.map(|conn| {
                Box::new(LiveState {
                    conn,
                    batch_first: None,
                    committed: Vec::new(),
                })
            }),
        }
    }

    /// A reading of the pending batch was received `at`.
    pub(super) fn received(&mut self, at: Instant) {
        if let Some(live) = &mut self.live {
            live.batch_first.get_or_insert(at);
        }
    }

    /// The pending batch's summary, taken before the store consumes it.
    pub(super) fn summarize(
        &mut self,
        batch: &[crate::store::StoredReading],
    ) -> Option<Box<LiveBatch>> {
        let live = self.live.as_mut()?;
        let first = live.batch_first.take();
        Some(Box::new(live.conn.summarize(batch, first)))
    }

    /// A batch (its summary, if kept) is committed; `repeats`: its readings the store
    /// already held, which are no new readings.
    pub(super) fn committed(&mut self, batch: Option<Box<LiveBatch>>, repeats: &[Repeat]) {
        if let (Some(live), Some(mut batch)) = (&mut self.live, batch) {
            batch.forget(repeats);
            live.committed.push(*batch);
        }
    }

    /// Hand the committed batches to the live view before their replies are written;
    /// `acked`: an ack among them ends their ack latency now.
    pub(super) fn flush(&mut self, mode: Mode, acked: bool) {
        let Some(live) = &mut self.live else {
            return;
        };
        if live.committed.is_empty() {
            return;
        }
        let replies_at = acked.then(Instant::now);
        live.conn.committed(mode, &mut live.committed, replies_at);
        live.committed.clear();
    }

    /// The connection's `TCP_INFO` was sampled: its sensors show `figures`.
    pub(super) fn tcp_sampled(&self, figures: crate::live::TcpFigures) {
        if let Some(live) = &self.live {
            live.conn.tcp_sampled(figures);
        }
    }

    /// The connection closes: its sensors are disconnected (if no other one carries them).
    pub(super) fn close(&mut self) {
        drop(self.live.take());
    }
}
