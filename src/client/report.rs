//! [`RunReport`]: what a finished client run hands back (its summary and counts).

use super::output::Summary;
use super::state::Counters;

/// The result of a client run that got to its end.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The report as printed (sent, acked, lost, RTTs, ...).
    pub summary: Summary,
    /// The delivery state machine's totals.
    pub counters: Counters,
}

impl RunReport {
    /// Every reading produced was acknowledged as stored (nothing lost, dropped or rejected).
    pub fn all_acked(&self) -> bool {
        self.summary.lost == 0
    }
}
