//! The engine's intake: values taken from the producer's channel become readings, kept in
//! the state machine and (with `--spool`) appended to the spool before any is sent; the
//! spool is opened (and replayed) at start and told what was acked.

use tokio::sync::mpsc;

use super::super::link::LINK_MEASUREMENT;
use super::super::session::Session;
use super::super::spool::DropReason;
use super::super::spool_io::SpoolIo;
use super::{Engine, MAX_VALUES_PER_BATCH};
use crate::client::ClientError;
use crate::protocol::{FieldValue, Reading};

impl<S: Session> Engine<'_, S> {
    /// Open the spool and take back what a previous run left unacknowledged.
    pub(super) async fn open_spool(&mut self) -> Result<(), ClientError> {
        let Some(dir) = &self.config.spool else {
            return Ok(());
        };
        let limits = super::super::spool::SpoolLimits {
            max_bytes: self.config.spool_max_bytes,
            max_age: self.config.spool_max_age,
        };
        let (spool, recovery) = SpoolIo::open(dir.clone(), limits).await?;
        for damage in &recovery.damage {
            self.printer.spool_damage(damage);
        }
        let dropped = recovery.dropped_by_age + recovery.dropped_by_bytes;
        for spooled in recovery.readings {
            // The seed's messages are never link reports (and legacy mode has no spool).
            let link = !S::LEGACY && spooled.reading.measurement == LINK_MEASUREMENT;
            self.replayed += u64::from(!link);
            self.state
                .restore_as(spooled.seq, spooled.reading, recovery.next_seq, link);
        }
        self.state.restore_next_seq(recovery.next_seq);
        self.printer
            .spool_opened(dir, self.replayed, dropped, recovery.corrupt_records);
        self.spool = Some(spool);
        self.output_ok()
    }

    /// The value channel gave `value`: a reading to keep, or (at `None`) the end of values.
    /// `true`: the connection must be closed (see [`Engine::produce`]).
    /// With `value`, every other value already waiting is taken too (a batch).
    pub(super) async fn on_value(
        &mut self,
        value: Option<(FieldValue, i64)>,
    ) -> Result<bool, ClientError> {
        let Some(value) = value else {
            self.values_closed();
            return Ok(false);
        };
        // The turn given for this value (ping-pong) is used up.
        self.turn_given = false;
        let mut batch = vec![value];
        // Batches pay off for the spool's fsync; without one, a reading at a time keeps
        // sends and acks interleaved with taking values (as --max-pending expects).
        let most = if self.spool.is_some() {
            MAX_VALUES_PER_BATCH
        } else {
            1
        };
        while batch.len() < most {
            match self.values.try_recv() {
                Ok(value) => batch.push(value),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.values_closed();
                    break;
                }
            }
        }
        self.produce(batch).await
    }

    pub(super) fn values_closed(&mut self) {
        self.values_open = false;
        self.start_draining();
    }

    /// The run is over, but the producer may have sent values the loop did not take yet
    /// (the drain timed out first): keep them too, so each is reported (and spooled).
    pub(super) async fn take_leftover_values(&mut self) -> Result<(), ClientError> {
        self.values.close();
        loop {
            let batch: Vec<_> = std::iter::from_fn(|| self.values.try_recv().ok())
                .take(MAX_VALUES_PER_BATCH)
                .collect();
            if batch.is_empty() {
                break;
            }
            // No connection is left to close.
            self.produce(batch).await?;
        }
        self.values_open = false;
        Ok(())
    }

    /// Keep new readings, spooled (one write and fsync for all) before any is sent. `true`:
    /// the connection must be closed, as every reading in flight was taken back to make room.
    pub(super) async fn produce(
        &mut self,
        values: Vec<(FieldValue, i64)>,
    ) -> Result<bool, ClientError> {
        let readings = values
            .into_iter()
            .map(|(value, timestamp_ns)| (self.session.reading(value, timestamp_ns), false))
            .collect();
        self.keep(readings).await
    }

    /// [`Engine::produce`] for readings already made; `true` in a pair marks a link report.
    pub(super) async fn keep(
        &mut self,
        readings: Vec<(Reading, bool)>,
    ) -> Result<bool, ClientError> {
        let mut retry = false;
        let mut spooled = Vec::new();
        for (reading, link) in readings {
            let copy = self.spool.is_some().then(|| reading.clone());
            let produced = self.state.produce_as(reading, link);
            // A link report dropped at once (full queue) is not spooled either.
            let kept = !link || self.state.is_link(produced.seq).is_some();
            if let (Some(copy), true) = (copy, kept) {
                spooled.push((produced.seq, copy));
            }
            if let Some(dropped) = produced.dropped {
                self.printer
                    .dropped(dropped, "more than --max-pending readings unacknowledged");
            }
            retry |= produced.retry;
        }
        let Some(spool) = &mut self.spool else {
            return Ok(retry);
        };
        match spool.append_batch(spooled).await? {
            Ok(dropped) => {
                for dropped in dropped.iter().filter(|d| !d.is_empty()) {
                    let why = match dropped.reason {
                        DropReason::MaxAge => "older than --spool-max-age",
                        DropReason::MaxBytes => "spool over --spool-max-bytes",
                    };
                    // One in flight is reported when its connection ends (or acked).
                    for seq in self.state.drop_seqs(&dropped.seqs) {
                        self.printer.dropped(seq, why);
                    }
                }
            }
            // Still delivered from memory; only a client crash could lose them now.
            Err(err) => self
                .printer
                .spool_damage(&format!("cannot write the spool: {err}")),
        }
        Ok(retry)
    }

    /// The spool forgets what the state machine took off its queue, never more: a token
    /// beyond what was sent must not erase readings not yet delivered.
    pub(super) async fn record_acks(&mut self, through: Option<u64>) -> Result<(), ClientError> {
        if let (Some(spool), Some(through)) = (&mut self.spool, through) {
            if let Err(err) = spool.ack_through(through).await? {
                // Harmless: the readings would be resent and deduplicated by the server.
                tracing::warn!(cause = %err, "cannot record acks in the spool");
            }
        }
        Ok(())
    }
}
