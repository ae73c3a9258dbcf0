//! Live progress on stderr while a run goes on: an indicatif bar on a terminal, otherwise a
//! plain line per second. Reads the [`Live`] counters every connection task updates.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::args::ProgressStyle;
use super::{Phase, Shared};

/// Counters every task updates as it goes, read by the progress display.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) acked: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) established: AtomicU64,
}

/// Live progress on stderr until `done`: a bar on a terminal, else a line per second.
pub(super) fn spawn_progress(
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Option<Phase>>,
    done: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let style = shared.settings.progress;
        if style == ProgressStyle::Off {
            return;
        }
        let live = &shared.live;
        let s = &shared.settings;
        let bar = (style == ProgressStyle::Bar).then(|| {
            let bar = match s.count {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let template = if s.count.is_some() {
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} acked, {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {msg}"
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar
        });
        let tick = if bar.is_some() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(1)
        };
        // The first line after one tick, not at once: there is nothing to say yet.
        let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Rate over the last second, from (time, acked) samples.
        let mut samples: VecDeque<(Instant, u64)> =
            VecDeque::from([(Instant::now(), live.acked.load(Ordering::Relaxed))]);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = done.cancelled() => break,
            }
            let now = Instant::now();
            let acked = live.acked.load(Ordering::Relaxed);
            let errors = live.errors.load(Ordering::Relaxed);
            let established = live.established.load(Ordering::Relaxed);
            samples.push_back((now, acked));
            while samples.len() > 2 && now - samples[0].0 > Duration::from_secs(1) {
                samples.pop_front();
            }
            let rate = match samples.front() {
                Some(&(t, n)) if now > t => (acked - n) as f64 / (now - t).as_secs_f64(),
                _ => 0.0,
            };
            let current = *phase.borrow_and_update();
            let msg = match current {
                None => format!(
                    "connecting: {established}/{} established, {errors} errors",
                    s.connections
                ),
                Some(p) => {
                    let stage = if now < p.measure_from { "warm-up " } else { "" };
                    // A count bar shows the acked count itself.
                    let acked = if bar.is_some() && s.count.is_some() {
                        String::new()
                    } else {
                        format!("{acked} acked, ")
                    };
                    format!(
                        "{stage}{acked}{rate:.0} readings/s, {errors} errors, {established} connections"
                    )
                }
            };
            match &bar {
                Some(bar) => {
                    bar.set_position(acked);
                    bar.set_message(msg);
                    bar.tick();
                }
                None => {
                    // Progress is best effort: a closed stderr must not end the run.
                    let _ = writeln!(std::io::stderr().lock(), "bench: {msg}");
                }
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    })
}
