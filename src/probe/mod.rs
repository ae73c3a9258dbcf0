//! UDP probes: real packet loss, one-way delay and jitter, which TCP cannot show (it turns
//! loss into delay). `sensorlink probe ADDR` sends isochronous probes; the server reflects
//! them on its sensor port number (`server --udp on`, the default).
//!
//! - [`wire`]: the datagram format (PROTOCOL.md "UDP probes"), pure, no I/O.
//! - [`reflector`]: the server side: bounded session counts, per-address rate limit,
//!   signed probes under `--auth`.
//! - [`session`]: the client's sender thread and receiver.
//! - [`window`]: the reflector's per-session anti-replay window (distinct seqs).
//! - [`stats`]: loss up/down, RTT, one-way delays, IPDV, reordering, duplicates; no I/O.
//! - [`report`]: text and `--json` output, and the `--store` reading; [`store`] sends it.
//! - [`args`]: the flags; [`resolve`]: which resolved address answers.

pub mod args;
pub mod reflector;
pub mod report;
pub mod resolve;
pub mod session;
pub mod stats;
pub mod store;
pub mod window;
pub mod wire;

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;

pub use args::{ProbeArgs, ProbeConfig};

/// How a probe run ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Replies came (loss is a measurement, not a failure).
    Measured,
    /// Not one reply: exit 2, like a client that cannot reach its server.
    NoReply,
    /// `--store` was refused the token: exit 3.
    AuthFailed,
}

/// `sensorlink probe`: run, print, and with `--store` send the summary.
///
/// # Errors
/// Bad settings, a socket that cannot be made, output that cannot be written, or a
/// `--store` that failed (other than a refused token).
pub fn run(args: ProbeArgs) -> anyhow::Result<RunEnd> {
    let config = args.validate()?;
    let stdout = std::io::stdout();
    let mut out = std::io::LineWriter::new(stdout.lock());
    let session: u64 = rand::random();
    report::start(&mut out, &config, session).context("writing the report")?;
    let mut write_error = None;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signal(Arc::clone(&stop));
    let outcome = session::run(&config, session, stop, |live| {
        if write_error.is_none() {
            if let Err(err) = report::live(&mut out, config.json, live) {
                write_error = Some(err);
            }
        }
    });
    if let Some(err) = write_error {
        return Err(err).context("writing live lines");
    }
    let outcome = outcome?;
    let summary = outcome.tally.summary(outcome.sent, outcome.late);
    let extra = report::Extra {
        duration_s: outcome.duration.as_secs_f64(),
        send_errors: outcome.send_errors,
        unreachable: outcome.unreachable,
    };
    report::summary(&mut out, &config, &summary, &extra).context("writing the summary")?;
    out.flush().context("writing the summary")?;
    if summary.received == 0 {
        eprintln!("sensorlink: {}", report::NO_REPLY);
        return Ok(RunEnd::NoReply);
    }
    if config.store {
        let reading = report::reading(
            &config,
            &summary,
            extra.duration_s,
            crate::timefmt::now_ns(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        match runtime.block_on(store::send(
            &config.addr,
            config.tls.as_ref(),
            config.token.as_ref(),
            &reading,
        )) {
            Ok(()) => {
                if !config.json {
                    writeln!(
                        out,
                        "summary stored at {} (sensorlink_link, probe=udp)",
                        config.addr
                    )
                    .context("writing the report")?;
                }
            }
            Err(err) if err.is_auth_failed() => {
                eprintln!("sensorlink: {err}");
                return Ok(RunEnd::AuthFailed);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(RunEnd::Measured)
}

/// Ctrl-C or SIGTERM: stop sending, then wait for the last replies and print the summary
/// (as irtt does). A second one exits at once (130).
fn stop_on_signal(stop: Arc<AtomicBool>) {
    let watcher = move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            signal().await;
            stop.store(true, Ordering::Relaxed);
            signal().await;
            std::process::exit(130);
        });
    };
    if let Err(err) = std::thread::Builder::new()
        .name("probe-signals".into())
        .spawn(watcher)
    {
        tracing::warn!(cause = %err, "Ctrl-C will end the run without its summary");
    }
}

/// The next Ctrl-C or (Unix) SIGTERM.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
