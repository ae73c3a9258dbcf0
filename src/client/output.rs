//! What the client prints: ping-style lines for people, one JSON object per event for scripts.
//!
//! The first write error (a closed stdout, e.g. `| head -3`) is kept, and the event loop stops
//! the run on it; nothing more is written after it.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::disconnect::{DisconnectCounts, DisconnectKind};
use super::failover::ServerTotals;
use super::kernel::{self, TcpSummary};
use super::stats::{fmt_ms, RttSummary};
use crate::protocol::Reading;

/// Prints events in the chosen form (on stdout, or any writer in tests).
pub struct Printer {
    json: bool,
    out: Box<dyn Write + Send>,
    /// The first write error; once set, nothing more is written.
    error: Option<std::io::Error>,
}

impl std::fmt::Debug for Printer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer")
            .field("json", &self.json)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The values of a reading as `v` (one field named `value`) or `a=1 b=2`.
pub fn values(reading: &Reading) -> String {
    match reading.fields.as_slice() {
        [(name, value)] if name == "value" => value.to_string(),
        fields => fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn value_json(reading: &Reading) -> Value {
    match reading.fields.as_slice() {
        [(name, value)] if name == "value" => json!(value),
        fields => Value::Object(fields.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
    }
}

/// Server-side timings of an ack: time from receipt to commit, and the commit itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTimes {
    pub store_us: Option<u64>,
    pub commit_us: Option<u64>,
}

impl Printer {
    /// Print on stdout; `json` picks one JSON object per event.
    pub fn stdout(json: bool) -> Self {
        Printer::to(Box::new(std::io::stdout()), json)
    }

    /// Print into `out`.
    pub fn to(out: Box<dyn Write + Send>, json: bool) -> Self {
        Printer {
            json,
            out,
            error: None,
        }
    }

    /// The first write error since the last call, if any.
    pub fn take_error(&mut self) -> Option<std::io::Error> {
        self.error.take()
    }

    fn emit(&mut self, value: Value) {
        self.line(&value.to_string());
    }

    fn line(&mut self, text: &str) {
        if self.error.is_some() {
            return;
        }
        let written = writeln!(self.out, "{text}").and_then(|()| self.out.flush());
        if let Err(err) = written {
            self.error = Some(err);
        }
    }

    pub fn start(
        &mut self,
        servers: &[String],
        sensor: Option<&str>,
        interval: Duration,
        legacy: bool,
        timeout: Duration,
    ) {
        let mode = if legacy { "legacy" } else { "line" };
        let addr = servers.join(", ");
        if self.json {
            self.emit(
                json!({"event": "start", "addr": addr, "servers": servers, "sensor": sensor,
                "interval_ms": interval.as_secs_f64() * 1e3, "mode": mode,
                "timeout_ms": timeout.as_secs_f64() * 1e3}),
            );
        } else {
            self.line(&format!(
                "SENSORLINK {addr} sensor {} every {} ({mode} mode, timeout {})",
                sensor.map_or_else(
                    || "(from the token)".to_string(),
                    |name| format!("{name:?}")
                ),
                humantime::format_duration(interval),
                humantime::format_duration(timeout)
            ));
        }
    }

    /// A connection to `addr` was made; `after`: the other servers that failed since the
    /// previous connection, and how (why the client is here).
    pub fn connected(
        &mut self,
        addr: &str,
        connect: Duration,
        ping: Option<Duration>,
        reconnects: u64,
        resending: usize,
        after: &[(String, DisconnectKind)],
    ) {
        if self.json {
            let after: Vec<Value> = after
                .iter()
                .map(|(server, kind)| json!({"server": server, "kind": kind.as_str()}))
                .collect();
            self.emit(json!({"event": "connected", "addr": addr, "server": addr,
                "connect_us": us(connect), "ping_us": ping.map(us), "reconnects": reconnects,
                "resending": resending, "after": after}));
            return;
        }
        let verb = if reconnects == 0 {
            "connected"
        } else {
            "reconnected"
        };
        let mut text = format!("{verb} to {addr}");
        if !after.is_empty() {
            let failed: Vec<String> = after
                .iter()
                .map(|(server, kind)| format!("{server}: {}", kind.as_str().replace('_', " ")))
                .collect();
            text.push_str(&format!(" (after {})", failed.join(", ")));
        }
        text.push_str(&format!(": connect time {} ms", fmt_ms(us(connect))));
        if let Some(ping) = ping {
            text.push_str(&format!(", first pong {} ms", fmt_ms(us(ping))));
        }
        if resending > 0 {
            text.push_str(&format!(", resending {resending} unacknowledged readings"));
        }
        self.line(&text);
    }

    pub fn acked(
        &mut self,
        seq: u64,
        reading: &Reading,
        rtt: Duration,
        server: ServerTimes,
        resent: bool,
    ) {
        if self.json {
            let network_us = server.store_us.map(|s| (us(rtt) - s as f64).max(0.0));
            self.emit(
                json!({"event": "ack", "seq": seq, "value": value_json(reading),
                "timestamp_ns": reading.timestamp_ns, "rtt_us": us(rtt),
                "store_us": server.store_us, "commit_us": server.commit_us,
                "network_us": network_us, "resent": resent}),
            );
            return;
        }
        let mut text = format!(
            "seq={seq} value={} acked time={} ms",
            values(reading),
            fmt_ms(us(rtt))
        );
        if let Some(store_us) = server.store_us {
            let network = (us(rtt) - store_us as f64).max(0.0);
            text.push_str(&format!(
                " (network {} ms, server {} ms",
                fmt_ms(network),
                fmt_ms(store_us as f64)
            ));
            if let Some(commit_us) = server.commit_us {
                text.push_str(&format!(" incl. commit {} ms", fmt_ms(commit_us as f64)));
            }
            text.push(')');
        }
        if resent {
            text.push_str(" [resent]");
        }
        self.line(&text);
    }

    pub fn legacy_reply(&mut self, seq: u64, reading: &Reading, reply: &[u8], rtt: Duration) {
        if self.json {
            self.emit(
                json!({"event": "ack", "seq": seq, "value": value_json(reading),
                "reply": String::from_utf8_lossy(reply), "rtt_us": us(rtt)}),
            );
        } else {
            self.line(&format!(
                "seq={seq} value={} reply={:?} time={} ms",
                values(reading),
                String::from_utf8_lossy(reply),
                fmt_ms(us(rtt))
            ));
        }
    }

    /// A reading's reply did not come within `timeout`. Not a loss: the client reconnects
    /// and resends it, and it counts in `lost` only if never acknowledged. (The JSON event
    /// keeps its name `lost` for existing consumers; its `timeout_ms` says what it is.)
    pub fn timed_out(&mut self, seq: u64, timeout: Duration, legacy: bool) {
        if self.json {
            self.emit(
                json!({"event": "lost", "seq": seq, "timeout_ms": timeout.as_secs_f64() * 1e3}),
            );
        } else if legacy {
            // The seed client's own words.
            self.line(&format!(
                "Packet loss (Timeout > {})",
                humantime::format_duration(timeout)
            ));
        } else {
            self.line(&format!(
                "seq={seq} timeout (no ack within {}): resending",
                humantime::format_duration(timeout)
            ));
        }
    }

    /// A reading still unacknowledged when the run ends (kept for the next run with a spool).
    pub fn lost_at_exit(&mut self, seq: u64, spooled: bool) {
        let reason = if spooled {
            "unacknowledged at exit; kept in the spool"
        } else {
            "unacknowledged at exit"
        };
        if self.json {
            self.emit(json!({"event": "lost", "seq": seq, "reason": reason}));
        } else {
            self.line(&format!("seq={seq} lost ({reason})"));
        }
    }

    pub fn rejected(&mut self, line: u64, reason: &str) {
        if self.json {
            self.emit(json!({"event": "rejected", "line": line, "reason": reason}));
        } else {
            self.line(&format!("server rejected line {line}: {reason}"));
        }
    }

    /// The server refused a link report's line (counted apart from the user's readings).
    pub fn link_rejected(&mut self, line: u64, reason: &str) {
        if self.json {
            self.emit(json!({"event": "link_report_rejected", "line": line, "reason": reason}));
        } else {
            self.line(&format!(
                "server rejected link report (line {line}): {reason}"
            ));
        }
    }

    pub fn dropped(&mut self, seq: u64, why: &str) {
        if self.json {
            self.emit(json!({"event": "dropped", "seq": seq, "reason": why}));
        } else {
            self.line(&format!("seq={seq} dropped: {why}"));
        }
    }

    pub fn spool_opened(
        &mut self,
        dir: &std::path::Path,
        replayed: u64,
        dropped: u64,
        corrupt: u64,
    ) {
        if self.json {
            self.emit(json!({"event": "spool", "dir": dir.display().to_string(),
                "replaying": replayed, "dropped": dropped, "corrupt_records": corrupt}));
        } else if replayed + dropped + corrupt > 0 {
            self.line(&format!(
                "spool {}: replaying {replayed} unacknowledged readings ({dropped} dropped by the limits, {corrupt} corrupt records)",
                dir.display()
            ));
        }
    }

    /// Damage found in the spool, or a failure to write it: always reported, never silent.
    pub fn spool_damage(&mut self, what: &str) {
        if self.json {
            self.emit(json!({"event": "spool_damage", "detail": what}));
        } else {
            self.line(&format!("spool: {what}"));
        }
    }

    /// The connection to `server` ended, or could not be made; the next attempt goes to
    /// `next` (`None`: the one server there is) after `retry_in`.
    pub fn disconnected(
        &mut self,
        server: &str,
        next: Option<&str>,
        reason: &str,
        kind: DisconnectKind,
        retry_in: Duration,
    ) {
        let wait = humantime::format_duration(Duration::from_millis(retry_in.as_millis() as u64));
        if self.json {
            self.emit(
                json!({"event": "disconnected", "server": server, "reason": reason,
                "kind": kind.as_str(), "next": next.unwrap_or(server),
                "retry_in_ms": retry_in.as_secs_f64() * 1e3}),
            );
        } else if let Some(next) = next {
            let when = if retry_in.is_zero() {
                "now".to_string()
            } else {
                format!("in {wait}")
            };
            self.line(&format!("{server}: {reason}; trying {next} {when}"));
        } else {
            self.line(&format!("connection lost: {reason}; retrying in {wait}"));
        }
    }

    /// Readings the server refused as conflicts: said once per run, with their count, as it
    /// means values this client meant were not stored.
    pub fn conflicts(&mut self, count: u64) {
        let what = "the server already held a different value at the same series and timestamp";
        if self.json {
            self.emit(json!({"event": "conflicts", "count": count, "reason": what}));
        } else {
            let readings = if count == 1 {
                "reading was"
            } else {
                "readings were"
            };
            self.line(&format!(
                "warning: {count} {readings} refused as conflicts: {what}"
            ));
        }
    }

    pub fn summary(&mut self, summary: &Summary) {
        if self.json {
            self.emit(json!({"event": "summary", "summary": summary}));
            return;
        }
        let loss = summary.loss_percent;
        let mut text = format!(
            "\n--- {} sensorlink statistics ---\n{} sent, {} acked, {} lost, {loss:.1}% loss, {} timeouts, time {}ms",
            summary.addr,
            summary.sent,
            summary.acked,
            summary.lost,
            summary.timeouts,
            summary.duration_ms.round() as u64
        );
        if let Some(connect) = summary.connect_us {
            text.push_str(&format!(", connect {} ms", fmt_ms(connect)));
        }
        text.push_str(&format!(", {} reconnects", summary.reconnects));
        let extra = summary.rejected
            + summary.dropped
            + summary.resent
            + summary.pending
            + summary.replayed;
        if extra > 0 {
            text.push_str(&format!(
                "\n{} rejected by the server, {} dropped on purpose (limits), {} resent, {} replayed from the spool, {} pending at exit",
                summary.rejected, summary.dropped, summary.resent, summary.replayed, summary.pending
            ));
        }
        if summary.duplicates > 0 || summary.conflicts > 0 {
            text.push_str(&format!(
                "\n{} duplicates (already stored with the same value), {} conflicts (refused: the server holds another value)",
                summary.duplicates, summary.conflicts
            ));
        }
        if summary.rtt.count > 0 {
            text.push('\n');
            text.push_str(&summary.rtt.ping_lines());
        }
        if let Some(server) = &summary.server_us {
            text.push_str(&format!(
                "\nserver share: store avg {} ms (commit avg {} ms), network avg {} ms",
                fmt_ms(server.store_avg),
                fmt_ms(server.commit_avg),
                fmt_ms(server.network_avg)
            ));
        }
        text.push('\n');
        text.push_str(&kernel::summary_line(summary.tcp.as_ref()));
        if summary.disconnects.total() > 0 {
            text.push('\n');
            text.push_str(&summary.disconnects.line());
        }
        if summary.servers.len() > 1 {
            let each: Vec<String> = (summary.servers.iter())
                .map(|s| {
                    format!(
                        "{} {} connects, {} failures, {} acked",
                        s.addr, s.connects, s.failures, s.acked
                    )
                })
                .collect();
            text.push_str(&format!(
                "\nservers: {}; {} failovers",
                each.join("; "),
                summary.failovers
            ));
        }
        if summary.link_reports_sent > 0 {
            text.push_str(&format!(
                "\nlink reports: {} sent, {} acked",
                summary.link_reports_sent, summary.link_reports_acked
            ));
        }
        self.line(&text);
    }

    /// A link report was made (it is sent like a reading; its ack is not printed).
    pub fn link_report(&mut self, reading: &Reading) {
        if self.json {
            let fields: serde_json::Map<String, Value> = reading
                .fields
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            self.emit(json!({"event": "link_report", "fields": fields,
                "timestamp_ns": reading.timestamp_ns}));
        } else {
            self.line(&format!("link report: {}", values(reading)));
        }
    }
}

/// Averages of the server's own timings over the acks that carried them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerShare {
    pub store_avg: f64,
    pub commit_avg: f64,
    pub network_avg: f64,
}

/// The end-of-run report.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Every server address, as one name (`a:1, b:2`).
    pub addr: String,
    /// Each server's connections, failures and acked readings, in the order they are tried.
    pub servers: Vec<ServerTotals>,
    /// Connections made to another address than the one tried just before (it had failed).
    pub failovers: u64,
    /// Readings made (the same as `sent`: every one is sent, or lost, once).
    pub produced: u64,
    pub sent: u64,
    pub acked: u64,
    /// Readings never acknowledged as stored (rejected, dropped, or unacked at exit), each
    /// counted once.
    pub lost: u64,
    /// Of the readings sent, the share lost (from `lost`).
    pub loss_percent: f64,
    /// Replies that did not come within the reply timeout (the reading was resent; if it
    /// was acked after, it is not lost).
    pub timeouts: u64,
    pub rejected: u64,
    pub dropped: u64,
    pub resent: u64,
    pub pending: u64,
    /// Readings recovered from the spool at start and sent again.
    pub replayed: u64,
    /// Acked readings the server already held with the same value (a harmless resend).
    pub duplicates: u64,
    /// Acked readings the server refused because it held another value at their series
    /// and timestamp: not stored (counted in `acked`, not in `lost`: resending would not
    /// help).
    pub conflicts: u64,
    /// Link reports written to the server at least once (`--link-report`; not counted in
    /// `sent`). A report made but never written (the run ended offline) is not among them.
    pub link_reports_sent: u64,
    /// Link reports the server acknowledged as stored.
    pub link_reports_acked: u64,
    pub duration_ms: f64,
    pub connect_us: Option<f64>,
    pub reconnects: u64,
    pub rtt: RttSummary,
    pub server_us: Option<ServerShare>,
    /// The kernel's view of the run's connections (`None`: not available, or no
    /// connection was made).
    pub tcp: Option<TcpSummary>,
    /// Connections that ended, or failed to open, by reason (reply timeouts are counted in
    /// `timeouts` instead).
    pub disconnects: DisconnectCounts,
}

/// How one run went, as the delivery loops know it; [`Summary::of`] makes the report.
#[derive(Debug)]
pub struct RunTotals<'a> {
    pub addr: &'a str,
    pub servers: Vec<ServerTotals>,
    pub failovers: u64,
    pub counters: super::state::Counters,
    /// Link reports sent (written at least once) and acked.
    pub link_reports: (u64, u64),
    pub pending: u64,
    pub replayed: u64,
    pub duplicates: u64,
    pub conflicts: u64,
    /// How long the run took (by the runtime's clock, so paused-time tests see their time).
    pub duration: Duration,
    pub first_connect: Option<Duration>,
    pub reconnects: u64,
    pub rtt: RttSummary,
    pub server_us: Option<ServerShare>,
    pub tcp: Option<TcpSummary>,
    pub disconnects: DisconnectCounts,
}

impl Summary {
    /// The report of a run. Lost = unacknowledged at exit, dropped on purpose, or rejected by
    /// the server: every reading produced and not stored, each counted once.
    pub fn of(run: RunTotals<'_>) -> Summary {
        let counters = run.counters;
        let lost = counters.lost();
        let sent = counters.produced;
        Summary {
            addr: run.addr.to_string(),
            servers: run.servers,
            failovers: run.failovers,
            produced: sent,
            sent,
            acked: counters.acked,
            lost,
            loss_percent: if sent == 0 {
                0.0
            } else {
                lost as f64 * 100.0 / sent as f64
            },
            timeouts: counters.timeouts,
            rejected: counters.rejected,
            dropped: counters.dropped,
            resent: counters.resends,
            pending: run.pending,
            replayed: run.replayed,
            duplicates: run.duplicates,
            conflicts: run.conflicts,
            link_reports_sent: run.link_reports.0,
            link_reports_acked: run.link_reports.1,
            duration_ms: run.duration.as_secs_f64() * 1e3,
            connect_us: run.first_connect.map(|d| d.as_secs_f64() * 1e6),
            reconnects: run.reconnects,
            rtt: run.rtt,
            server_us: run.server_us,
            tcp: run.tcp,
            disconnects: run.disconnects,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that went away (`| head`): every write fails with `BrokenPipe`.
    struct ClosedPipe {
        writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            self.writes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_first_write_error_is_kept_and_nothing_more_is_written() {
        let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut printer = Printer::to(
            Box::new(ClosedPipe {
                writes: writes.clone(),
            }),
            false,
        );
        printer.rejected(1, "bad");
        printer.dropped(2, "full");
        let err = printer.take_error().map(|e| e.kind());
        assert_eq!(err, Some(std::io::ErrorKind::BrokenPipe));
        assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// A shared buffer the printer writes into, to read what it printed.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("no test thread panics holding the buffer")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A reply timeout reads as a timeout and a resend, not a loss; `--legacy` keeps the
    /// seed's words.
    #[test]
    fn a_reply_timeout_is_printed_as_a_timeout_except_in_legacy_mode() {
        let out = Shared::default();
        let mut printer = Printer::to(Box::new(out.clone()), false);
        printer.timed_out(7, Duration::from_secs(1), false);
        printer.timed_out(8, Duration::from_secs(10), true);
        let text = String::from_utf8(out.0.lock().expect("buffer").clone()).expect("UTF-8");
        assert_eq!(
            text,
            "seq=7 timeout (no ack within 1s): resending\nPacket loss (Timeout > 10s)\n"
        );
    }

    /// Server-sent counts at their maximum print without overflowing (a debug-build panic).
    #[test]
    fn the_summary_prints_maximal_duplicate_and_conflict_counts() {
        let summary = Summary::of(RunTotals {
            addr: "a",
            servers: Vec::new(),
            failovers: 0,
            counters: super::super::state::Counters::default(),
            link_reports: (0, 0),
            pending: 0,
            replayed: 0,
            duplicates: u64::MAX,
            conflicts: u64::MAX,
            duration: Duration::from_secs(1),
            first_connect: None,
            reconnects: 0,
            rtt: RttSummary::default(),
            server_us: None,
            tcp: None,
            disconnects: DisconnectCounts::default(),
        });
        let out = Shared::default();
        let mut printer = Printer::to(Box::new(out.clone()), false);
        printer.summary(&summary);
        let text = String::from_utf8(out.0.lock().expect("not poisoned").clone())
            .expect("the summary is UTF-8");
        assert!(text.contains(&format!("{} duplicates", u64::MAX)), "{text}");
    }
}
