//! Per-reading log lines that never bound throughput.
//!
//! The seed printed `Received: <data>` for every message. We keep that line at `info` while
//! the rate is low, and under load log at most [`LINES_PER_SECOND`] of them per second plus a
//! periodic summary; `-v` (debug) logs every reading. Per-event warnings (rejected lines,
//! refused connections, readings not acknowledged, conflicting readings) each get a budget of
//! the same size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::events;
use crate::timefmt::now_ns;

/// Most `Received:` lines logged per second at `info` level.
pub const LINES_PER_SECOND: u64 = 20;

/// How often the load summary is logged when lines were suppressed.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// A per-second budget of log lines, shared by all connections.
pub struct LogBudget {
    second: AtomicU64,
    lines: AtomicU64,
    suppressed: AtomicU64,
}

impl LogBudget {
    const fn new() -> Self {
        LogBudget {
            second: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Count lines not logged without asking (a connection that already knows the budget
    /// of this second is spent).
    pub fn add_suppressed(&self, n: u64) {
        self.suppressed.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether one more line may be logged now; counts it as suppressed otherwise.
    pub fn allow(&self) -> bool {
        self.allow_in(u64::try_from(now_ns() / 1_000_000_000).unwrap_or(0))
    }

    /// [`LogBudget::allow`] during `second` (since the epoch).
    fn allow_in(&self, second: u64) -> bool {
        if self.second.swap(second, Ordering::Relaxed) != second {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < LINES_PER_SECOND {
            true
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// `Received:` lines.
pub static RECEIVED: LogBudget = LogBudget::new();
/// `rejected` warnings: their own budget, so a flood of good readings never hides them.
pub static REJECTED: LogBudget = LogBudget::new();
/// `connection limit reached` warnings: a reconnecting swarm must not flood the log.
pub static REFUSED: LogBudget = LogBudget::new();
/// `readings not acknowledged` warnings: one failed commit touches every connection in it.
pub static UNACKED: LogBudget = LogBudget::new();
/// `not tracking a new one` warnings: a full live view sees one per committed batch.
pub static UNTRACKED: LogBudget = LogBudget::new();

/// `no complete line in time` warnings: slowloris peers come in swarms.
pub static SLOW: LogBudget = LogBudget::new();

/// `conflicting reading refused` warnings: a forger replaying a sensor's series would
/// otherwise write one per reading.
pub static CONFLICTS: LogBudget = LogBudget::new();

/// Every budget, for the summary's count of lines not logged.
const BUDGETS: [&LogBudget; 7] = [
    &RECEIVED, &REJECTED, &REFUSED, &UNACKED, &UNTRACKED, &SLOW, &CONFLICTS,
];

/// Whether one more per-reading line may be logged now.
pub fn allow_received_line() -> bool {
    if tracing::enabled!(tracing::Level::DEBUG) {
        return true;
    }
    tracing::enabled!(tracing::Level::INFO) && RECEIVED.allow()
}

/// Whether one more rejected-line warning may be logged now.
pub fn allow_rejected_line() -> bool {
    allow_warning(&REJECTED)
}

/// Whether one more refused-connection warning may be logged now.
pub fn allow_refused_connection() -> bool {
    allow_warning(&REFUSED)
}

/// Whether one more first-line-timeout warning may be logged now.
pub fn allow_slow_peer() -> bool {
    allow_warning(&SLOW)
}

/// Whether one more readings-not-acknowledged warning may be logged now.
pub fn allow_unacked_warning() -> bool {
    allow_warning(&UNACKED)
}

/// Whether one more conflicting-reading warning may be logged now.
pub fn allow_conflict_warning() -> bool {
    allow_warning(&CONFLICTS)
}

/// Whether one more live-view-full warning may be logged now.
pub fn allow_untracked_sensor() -> bool {
    allow_warning(&UNTRACKED)
}

/// A warning within `budget`; at debug level every one is logged.
fn allow_warning(budget: &LogBudget) -> bool {
    if tracing::enabled!(tracing::Level::DEBUG) {
        return true;
    }
    tracing::enabled!(tracing::Level::WARN) && budget.allow()
}

/// Log a summary every [`SUMMARY_INTERVAL`] while per-reading lines are being suppressed.
pub fn spawn_summary(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
        tick.tick().await;
        let totals = &events::telemetry().totals;
        let total = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut last_accepted = total(&totals.readings_accepted);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let suppressed: u64 = BUDGETS
                .iter()
                .map(|budget| budget.suppressed.swap(0, Ordering::Relaxed))
                .sum();
            let accepted = total(&totals.readings_accepted);
            if suppressed > 0 {
                tracing::info!(
                    readings = accepted - last_accepted,
                    not_logged = suppressed,
                    interval_s = SUMMARY_INTERVAL.as_secs(),
                    connections = total(&totals.connections_open),
                    stored_total = total(&totals.readings_stored),
                    rejected_total = total(&totals.lines_rejected),
                    "load summary"
                );
            }
            last_accepted = accepted;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_lines_per_second_and_counts_the_rest() {
        let budget = LogBudget::new();
        for _ in 0..LINES_PER_SECOND {
            assert!(budget.allow_in(7));
        }
        assert!(!budget.allow_in(7));
        assert!(!budget.allow_in(7));
        assert_eq!(budget.suppressed.load(Ordering::Relaxed), 2);
        assert!(budget.allow_in(8), "a new second, a new budget");
    }
}
