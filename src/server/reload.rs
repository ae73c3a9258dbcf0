//! SIGHUP: re-read what may change without a restart (the TLS files, the token file).
//!
//! Each part that can be reloaded registers one action with [`Reloads::register`]; one
//! SIGHUP listener ([`spawn_on_sighup`], Unix only) runs them all, in registration order,
//! off the async threads (they read files). Each result is one [`Reloaded`] event: an info
//! line saying what changed, or an error line with the cause, and a count in
//! `sensorlink_reloads_total{what, result}`. An action that fails must leave its old state
//! in force; connections already established are never touched.
//!
//! ```no_run
//! # use sensorlink::server::reload::Reloads;
//! # use sensorlink::events::ReloadWhat;
//! let mut reloads = Reloads::new();
//! reloads.register(ReloadWhat::Auth, move || {
//!     // Re-read the file; swap it in only when it is valid.
//!     Ok("3 tokens (1 new, 0 revoked)".to_string())
//! });
//! ```

use std::sync::Arc;

use crate::events::{Event as _, ReloadWhat, Reloaded, Telemetry};

/// A reload action: `Ok(what changed)` once the new state is in force, `Err(why)` when the
/// old one stays.
pub type ReloadFn = dyn Fn() -> Result<String, String> + Send + Sync;

/// The registered reload actions.
#[derive(Default, Clone)]
pub struct Reloads {
    actions: Vec<(ReloadWhat, Arc<ReloadFn>)>,
}

impl std::fmt::Debug for Reloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whats: Vec<&str> = self.actions.iter().map(|(what, _)| what.as_str()).collect();
        f.debug_struct("Reloads").field("actions", &whats).finish()
    }
}

impl Reloads {
    pub fn new() -> Self {
        Reloads::default()
    }

    /// Run `action` on every SIGHUP, logged and counted under `what`. It may block (read
    /// files): it runs on a blocking thread.
    pub fn register(
        &mut self,
        what: ReloadWhat,
        action: impl Fn() -> Result<String, String> + Send + Sync + 'static,
    ) {
        self.actions.push((what, Arc::new(action)));
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Run every action now, in registration order (blocking), each result emitted as a
    /// [`Reloaded`] event; returns them too.
    pub fn run_all(&self, telemetry: &Telemetry) -> Vec<(ReloadWhat, Result<String, String>)> {
        self.actions
            .iter()
            .map(|(what, action)| {
                let outcome = action();
                Reloaded {
                    what: *what,
                    outcome: &outcome,
                }
                .emit_to(telemetry);
                (*what, outcome)
            })
            .collect()
    }
}

/// Run `reloads` on every SIGHUP until `shutdown`. Signals arriving while a reload runs
/// are folded into one more run after it.
///
/// # Errors
/// The SIGHUP handler cannot be installed.
#[cfg(unix)]
pub fn spawn_on_sighup(
    reloads: Reloads,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup())?;
    let reloads = Arc::new(reloads);
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            if reloads.is_empty() {
                tracing::info!("SIGHUP: nothing to reload");
                continue;
            }
            tracing::info!("SIGHUP: reloading");
            let reloads = reloads.clone();
            let ran = tokio::task::spawn_blocking(move || {
                reloads.run_all(crate::events::telemetry());
            });
            if let Err(err) = ran.await {
                tracing::error!(cause = %err, "reload task failed");
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::testing::sample;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Each action runs once per reload, in order; results are logged and counted by
    /// `what` and `result`, and a failing one does not stop the next.
    #[test]
    fn every_action_runs_and_each_result_is_counted() {
        let recorder = crate::events::prometheus_builder().build_recorder();
        let telemetry = metrics::with_local_recorder(&recorder, Telemetry::register);
        let runs = Arc::new(AtomicU32::new(0));
        let mut reloads = Reloads::new();
        reloads.register(ReloadWhat::Tls, || Err("no such file".into()));
        let counted = runs.clone();
        reloads.register(ReloadWhat::Auth, move || {
            let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(format!("run {n}"))
        });
        let first = reloads.run_all(&telemetry);
        assert_eq!(
            first,
            vec![
                (ReloadWhat::Tls, Err("no such file".to_string())),
                (ReloadWhat::Auth, Ok("run 1".to_string())),
            ]
        );
        reloads.run_all(&telemetry);
        assert_eq!(runs.load(Ordering::Relaxed), 2);
        let text = recorder.handle().render();
        let count = |what: &str, result: &str| {
            sample(
                &text,
                &format!("sensorlink_reloads_total{{what=\"{what}\",result=\"{result}\"}}"),
            )
        };
        assert_eq!(count("tls", "error"), Some(2.0), "{text}");
        assert_eq!(count("tls", "ok"), Some(0.0), "{text}");
        assert_eq!(count("auth", "ok"), Some(2.0), "{text}");
        assert_eq!(count("auth", "error"), Some(0.0), "{text}");
    }
}
