//! The spool behind an async face: each disk operation runs on tokio's blocking pool
//! (`spawn_blocking`), so the event loop never blocks a runtime thread and runs under paused
//! time in tests. Operations are awaited one at a time, so they reach the disk in order.

use std::path::PathBuf;

use super::error::ClientError;
use super::spool::{Dropped, Recovery, Spool, SpoolError, SpoolLimits};
use crate::protocol::Reading;

/// A [`Spool`] whose work runs on a blocking thread.
#[derive(Debug)]
pub struct SpoolIo {
    /// `None` only while an operation has it on the blocking thread.
    spool: Option<Spool>,
}

impl SpoolIo {
    /// Open (and recover) the spool in `dir`.
    ///
    /// # Errors
    /// The spool cannot be opened (locked, unreadable), or the blocking task died.
    pub async fn open(
        dir: PathBuf,
        limits: SpoolLimits,
    ) -> Result<(SpoolIo, Recovery), ClientError> {
        let opened = tokio::task::spawn_blocking(move || Spool::open(&dir, limits))
            .await
            .map_err(|source| ClientError::Task {
                what: "opening the spool",
                source,
            })?;
        let (spool, recovery) = opened?;
        Ok((SpoolIo { spool: Some(spool) }, recovery))
    }

    /// Run `op` on the spool on a blocking thread. The outer error is the task dying (the
    /// spool is then gone); the inner one is the spool's own.
    async fn run<R, F>(
        &mut self,
        what: &'static str,
        op: F,
    ) -> Result<Result<R, SpoolError>, ClientError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Spool) -> Result<R, SpoolError> + Send + 'static,
    {
        // Gone only if an earlier operation was cancelled or died, which ended the run.
        let Some(mut spool) = self.spool.take() else {
            return Err(ClientError::SpoolLost);
        };
        let (spool, result) = tokio::task::spawn_blocking(move || {
            let result = op(&mut spool);
            (spool, result)
        })
        .await
        .map_err(|source| ClientError::Task { what, source })?;
        self.spool = Some(spool);
        Ok(result)
    }

    /// Drop expired readings, then append reading `seq`; returns what both dropped.
    pub async fn append(
        &mut self,
        seq: u64,
        reading: Reading,
    ) -> Result<Result<[Dropped; 2], SpoolError>, ClientError> {
        self.append_batch(vec![(seq, reading)]).await
    }

    /// Drop expired readings, then append `items` (seqs increasing) with one write and one
    /// fsync; returns what both dropped.
    pub async fn append_batch(
        &mut self,
        items: Vec<(u64, Reading)>,
    ) -> Result<Result<[Dropped; 2], SpoolError>, ClientError> {
        #[cfg(test)]
        calls::count(|c| c.appends += 1);
        let now = crate::timefmt::now_ns();
        self.run("appending to the spool", move |spool| {
            let by_age = spool.expire(now)?;
            let refs: Vec<(u64, &Reading)> = items.iter().map(|(seq, r)| (*seq, r)).collect();
            let by_bytes = spool.append_batch(&refs)?;
            Ok([by_age, by_bytes])
        })
        .await
    }

    /// Every reading up to `seq` is acknowledged.
    pub async fn ack_through(&mut self, seq: u64) -> Result<Result<(), SpoolError>, ClientError> {
        #[cfg(test)]
        calls::count(|c| c.acks += 1);
        self.run("recording acks in the spool", move |spool| {
            spool.ack_through(seq)
        })
        .await
    }

    /// Persist the acknowledgements and release the spool.
    pub async fn close(mut self) -> Result<(), SpoolError> {
        let Some(spool) = self.spool.take() else {
            return Ok(());
        };
        match tokio::task::spawn_blocking(move || spool.close()).await {
            Ok(closed) => closed,
            // The spool's Drop persists what it can; nothing more to do here.
            Err(err) => {
                tracing::warn!(cause = %err, "closing the spool");
                Ok(())
            }
        }
    }
}

/// How often each spool operation was called on this thread (tests check batching; a paused
/// tokio test runs on one thread).
#[cfg(test)]
pub(crate) mod calls {
    use std::cell::Cell;

    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct Calls {
        pub appends: u64,
        pub acks: u64,
    }

    thread_local! {
        static CALLS: Cell<Calls> = const { Cell::new(Calls { appends: 0, acks: 0 }) };
    }

    pub(crate) fn count(f: impl FnOnce(&mut Calls)) {
        CALLS.with(|calls| {
            let mut now = calls.get();
            f(&mut now);
            calls.set(now);
        });
    }

    pub(crate) fn get() -> Calls {
        CALLS.with(Cell::get)
    }
}
