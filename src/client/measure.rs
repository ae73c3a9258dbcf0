//! [`RunMeasures`]: what a run measures besides delivery, fed by the engine: round trips,
//! the server's share of them, the link reports (`--link-report`) and the picture's
//! samples (`--report`). No I/O: the engine sends the reports it is handed and prints.

use std::time::Duration;

use tokio::time::Instant;

use super::link::{LinkReporter, LinkTotals};
use super::output::{ServerShare, ServerTimes};
use super::report::RunPicture;
use super::samples::{Mark, RunSamples};
use super::state::Counters;
use super::stats::RttStats;
use super::ClientConfig;
use crate::protocol::{FieldValue, Reading};

/// Sums of the server's own timings over the acks that carried them.
#[derive(Debug, Default)]
struct ServerSums {
    acks: u64,
    store_us: f64,
    commit_us: f64,
    network_us: f64,
}

/// A run's measurements (see the module's doc).
#[derive(Debug)]
pub(crate) struct RunMeasures {
    /// Every round trip that says something of the link (the summary's `rtt`).
    pub(crate) rtt: RttStats,
    server: ServerSums,
    /// `--link-report` (line mode only): when the next one is due, and its interval's RTTs.
    link: Option<LinkReporter>,
    /// The last link report of the run was made (at most one: its own delivery may need a
    /// reconnect, which must not call for yet another).
    last_link_made: bool,
    /// `--report`: the run's round trips and events over time.
    samples: Option<RunSamples>,
    /// Timeouts and losses already marked in `samples`.
    marked: (u64, u64),
}

impl RunMeasures {
    /// `legacy`: the seed's messages cannot carry link reports.
    pub(crate) fn new(config: &ClientConfig, legacy: bool) -> Self {
        let now = Instant::now();
        RunMeasures {
            rtt: RttStats::new(),
            server: ServerSums::default(),
            link: if legacy {
                None
            } else {
                LinkReporter::new(config.sensor.as_deref(), config.link_report, now)
            },
            last_link_made: false,
            samples: config.report.as_ref().map(|_| RunSamples::new(now)),
            marked: (0, 0),
        }
    }

    /// Link reports are on (`--link-report` not 0, line mode).
    pub(crate) fn reports_link(&self) -> bool {
        self.link.is_some()
    }

    /// A connection re-opened.
    pub(crate) fn reconnected(&mut self) {
        if let Some(samples) = &mut self.samples {
            samples.mark(Mark::Reconnect, Instant::now(), 1);
        }
    }

    /// A user reading was acked after `rtt`, with the server's `times`. `of_link`: its time
    /// says something of the link (not a resend that waited behind a backlog).
    pub(crate) fn acked(&mut self, rtt: Duration, times: ServerTimes, of_link: bool) {
        if of_link {
            self.rtt.record(rtt);
            if let Some(link) = &mut self.link {
                link.record_rtt(rtt);
            }
            if let Some(samples) = &mut self.samples {
                samples.record(Instant::now(), rtt);
            }
        }
        if let Some(store_us) = times.store_us {
            let sums = &mut self.server;
            sums.acks += 1;
            sums.store_us += store_us as f64;
            sums.commit_us += times.commit_us.unwrap_or(0) as f64;
            sums.network_us += (rtt.as_secs_f64() * 1e6 - store_us as f64).max(0.0);
        }
    }

    /// Mark in the picture's samples the timeouts and losses counted since the last call.
    pub(crate) fn mark_events(&mut self, counters: &Counters) {
        let Some(samples) = &mut self.samples else {
            return;
        };
        let now = Instant::now();
        let (timeouts, losses) = self.marked;
        samples.mark(
            Mark::Timeout,
            now,
            counters.timeouts.saturating_sub(timeouts),
        );
        samples.mark(Mark::Loss, now, counters.lost().saturating_sub(losses));
        self.marked = (counters.timeouts, counters.lost());
    }

    /// When the next periodic link report is due (`None`: off, or the last one was made).
    pub(crate) fn link_due(&self) -> Option<Instant> {
        self.link
            .as_ref()
            .filter(|_| !self.last_link_made)
            .map(LinkReporter::due)
    }

    /// The run's last link report is still to be made: something happened since the
    /// previous one.
    pub(crate) fn last_link_due(&self, totals: &LinkTotals) -> bool {
        self.link
            .as_ref()
            .is_some_and(|link| !self.last_link_made && link.changed(totals))
    }

    /// The link report for the interval ending now (`None`: reports are off), with the
    /// kernel's `fields` last. `last`: the run's last one (no more are made after it).
    pub(crate) fn link_report(
        &mut self,
        totals: LinkTotals,
        last: bool,
        kernel: Vec<(String, FieldValue)>,
    ) -> Option<Reading> {
        let link = self.link.as_mut()?;
        self.last_link_made |= last;
        let mut reading = link.report(Instant::now(), totals, crate::timefmt::now_ns());
        reading.fields.extend(kernel);
        Some(reading)
    }

    /// Averages of the server's timings, if any ack carried them.
    pub(crate) fn server_share(&self) -> Option<ServerShare> {
        let sums = &self.server;
        let n = sums.acks as f64;
        (sums.acks > 0).then(|| ServerShare {
            store_avg: sums.store_us / n,
            commit_avg: sums.commit_us / n,
            network_avg: sums.network_us / n,
        })
    }

    /// The picture's data (with `--report`), taken at the end of the run.
    pub(crate) fn take_picture(&mut self, reply_timeout: Duration) -> Option<RunPicture> {
        let samples = self.samples.take()?;
        Some(RunPicture {
            samples,
            rtt: self.rtt.clone(),
            reply_timeout,
        })
    }
}
