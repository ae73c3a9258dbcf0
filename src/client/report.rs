//! [`RunReport`]: what a finished client run hands back (its summary and counts, and with
//! `--report` the data of the run's picture).

use std::time::Duration;

use super::output::Summary;
use super::samples::RunSamples;
use super::state::Counters;
use super::stats::RttStats;

/// The result of a client run that got to its end.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The report as printed (sent, acked, lost, RTTs, ...).
    pub summary: Summary,
    /// The delivery state machine's totals.
    pub counters: Counters,
    /// What the picture of the run is drawn from (only with `--report`).
    pub picture: Option<RunPicture>,
}

/// The data of the picture `--report` draws (see [`crate::plot`]).
#[derive(Debug, Clone)]
pub struct RunPicture {
    /// Round trips over time, and the timeouts, losses and reconnects.
    pub samples: RunSamples,
    /// Every round trip of the run (the histogram and its percentiles).
    pub rtt: RttStats,
    pub reply_timeout: Duration,
}

impl RunReport {
    /// Every reading produced was acknowledged as stored (nothing lost, dropped or rejected).
    pub fn all_acked(&self) -> bool {
        self.summary.lost == 0
    }
}
