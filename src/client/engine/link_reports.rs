//! The engine's link-report scheduling (`--link-report`): when a periodic report is made,
//! when the run's last one is, and which server errors answer a report rather than one of
//! the user's readings. What a report says is [`crate::client::link`]'s business.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::super::link::LinkTotals;
use super::super::session::Session;
use super::Engine;
use crate::client::ClientError;

/// The link reports written on the current connection, so that an `error` for one of their
/// lines is not printed as the user's (the server names lines, not readings).
#[derive(Debug, Default)]
pub(super) struct SentLinks {
    /// Readings written on this connection (the next one is `written + 1`).
    written: u64,
    /// `(ordinal on this connection, seq)` of each report written and not yet answered.
    reports: VecDeque<(u64, u64)>,
}

impl SentLinks {
    /// A new connection: its first reading is again the first.
    pub(super) fn reset(&mut self) {
        *self = SentLinks::default();
    }

    /// A reading (`link`: a report) numbered `seq` was written on this connection.
    pub(super) fn written(&mut self, seq: u64, link: bool) {
        self.written += 1;
        if link {
            self.reports.push_back((self.written, seq));
        }
    }

    /// Every reading up to `seq` got its answer: forget those reports (bounded memory).
    pub(super) fn answered_through(&mut self, seq: u64) {
        while self.reports.front().is_some_and(|(_, s)| *s <= seq) {
            self.reports.pop_front();
        }
    }

    /// Whether the `ordinal`-th reading written on this connection is a link report.
    pub(super) fn is_report(&self, ordinal: u64) -> bool {
        self.reports.iter().any(|(o, _)| *o == ordinal)
    }
}

impl<S: Session> Engine<'_, S> {
    /// The run's totals as its last report tells them: the user's readings still
    /// unacknowledged count as lost (the run gives up on them; none once all are delivered).
    fn last_totals(&self) -> LinkTotals {
        let mut totals = LinkTotals::of(&self.state.counters(), self.reconnects);
        totals.lost += self.state.pending_user() as u64;
        totals
    }

    /// The run's last link report is still to be made: something happened since the
    /// previous report (readings given up on included, so the reports' `lost` always sum
    /// to the summary's).
    pub(super) fn last_link_due(&self) -> bool {
        self.measure.last_link_due(&self.last_totals())
    }

    /// Make a link report (and keep it, like a reading). `last`: the run's last one, whose
    /// `lost` counts the user's readings still unacknowledged (the run gives up on them).
    /// `true`: the connection must be closed (see [`Engine::produce`]).
    pub(super) async fn link_report(&mut self, last: bool) -> Result<bool, ClientError> {
        let totals = if last {
            self.last_totals()
        } else {
            LinkTotals::of(&self.state.counters(), self.reconnects)
        };
        if !self.measure.reports_link() {
            return Ok(false);
        }
        self.sample_kernel();
        let kernel = self.kernel.link_fields();
        let Some(mut reading) = self.measure.link_report(totals, last, kernel) else {
            return Ok(false);
        };
        // With several servers, say which one the link was (last) to; one server: the
        // report is as it always was.
        if self.servers.len() > 1 {
            if let Some(addr) = self.servers.connected_addr() {
                let server = crate::protocol::FieldValue::Str(addr.to_string());
                reading.fields.push(("server".to_string(), server));
            }
        }
        self.printer.link_report(&reading);
        self.keep(vec![(reading, true)]).await
    }

    /// The run's last link report, if it is due: when every value is taken and the user's
    /// readings are delivered, or (`giving_up`) when the run ends without them.
    pub(super) async fn last_link_report(&mut self, giving_up: bool) -> Result<bool, ClientError> {
        if self.draining_since.is_some()
            && (self.user_delivered() || giving_up)
            && self.last_link_due()
        {
            return self.link_report(true).await;
        }
        Ok(false)
    }

    /// Every value was taken and every user reading acknowledged (link reports aside).
    pub(super) fn user_delivered(&self) -> bool {
        !self.values_open && self.state.pending_user() == 0
    }

    /// When the next periodic link report is due (`None`: off, or the last one was made).
    pub(super) fn link_due(&self) -> Option<Instant> {
        self.measure.link_due()
    }

    /// Whether the server's `error` for `line` of this connection answers a link report.
    pub(super) fn is_link_line(&self, line: u64) -> bool {
        self.session
            .reading_of_line(line)
            .is_some_and(|ordinal| self.sent_links.is_report(ordinal))
    }
}
