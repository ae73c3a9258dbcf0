//! Every counter the server keeps, in one place.
//!
//! Counters are plain atomics in one static [`Metrics`], so the hot path pays one relaxed
//! `fetch_add` per event and the later `/metrics` endpoint renders them all
//! ([`Metrics::render_prometheus`]). Open connections are an RAII gauge ([`OpenConnection`])
//! so that every exit path of a connection task decrements it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub const fn new() -> Self {
        Gauge(AtomicU64::new(0))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The server's counters. Names follow Prometheus conventions (see [`Metrics::render_prometheus`]).
#[derive(Debug)]
pub struct Metrics {
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    /// Refused because `--max-connections` was reached.
    pub connections_refused: Counter,
    pub connections_legacy: Counter,
    pub connections_idle_timeout: Counter,
    /// Closed because the peer stopped reading our replies for longer than the write timeout.
    pub connections_write_stalled: Counter,
    /// Closed by an I/O error (reset, broken pipe) rather than an orderly end.
    pub connections_aborted: Counter,
    pub accept_errors: Counter,
    pub readings_accepted: Counter,
    pub readings_rejected: Counter,
    /// Readings whose transaction committed.
    pub readings_stored: Counter,
    /// Readings already stored (same series and timestamp), not stored twice.
    pub readings_duplicate: Counter,
    pub lines_oversize: Counter,
    pub lines_invalid_utf8: Counter,
    pub acks_sent: Counter,
    pub pongs_sent: Counter,
    pub errors_sent: Counter,
    /// Error replies not sent because the peer never asked for replies (see PROTOCOL.md).
    pub errors_suppressed: Counter,
    pub store_commits: Counter,
    pub store_errors: Counter,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            connections_open: Gauge::new(),
            connections_accepted: Counter::new(),
            connections_refused: Counter::new(),
            connections_legacy: Counter::new(),
            connections_idle_timeout: Counter::new(),
            connections_write_stalled: Counter::new(),
            connections_aborted: Counter::new(),
            accept_errors: Counter::new(),
            readings_accepted: Counter::new(),
            readings_rejected: Counter::new(),
            readings_stored: Counter::new(),
            readings_duplicate: Counter::new(),
            lines_oversize: Counter::new(),
            lines_invalid_utf8: Counter::new(),
            acks_sent: Counter::new(),
            pongs_sent: Counter::new(),
            errors_sent: Counter::new(),
            errors_suppressed: Counter::new(),
            store_commits: Counter::new(),
            store_errors: Counter::new(),
            bytes_received: Counter::new(),
            bytes_sent: Counter::new(),
        }
    }

    /// Every metric as `(name, labels, help, kind, value)`.
    fn all(&self) -> Vec<(&'static str, &'static str, &'static str, &'static str, u64)> {
        vec![
            (
                "sensorlink_connections_open",
                "",
                "Open connections.",
                "gauge",
                self.connections_open.get(),
            ),
            (
                "sensorlink_connections_total",
                "outcome=\"accepted\"",
                "Connections by outcome.",
                "counter",
                self.connections_accepted.get(),
            ),
            (
                "sensorlink_connections_total",
                "outcome=\"refused\"",
                "",
                "",
                self.connections_refused.get(),
            ),
            (
                "sensorlink_connections_total",
                "outcome=\"legacy\"",
                "",
                "",
                self.connections_legacy.get(),
            ),
            (
                "sensorlink_connections_closed_total",
                "reason=\"idle_timeout\"",
                "Connections closed by the server, by reason.",
                "counter",
                self.connections_idle_timeout.get(),
            ),
            (
                "sensorlink_connections_closed_total",
                "reason=\"write_stalled\"",
                "",
                "",
                self.connections_write_stalled.get(),
            ),
            (
                "sensorlink_connections_closed_total",
                "reason=\"aborted\"",
                "",
                "",
                self.connections_aborted.get(),
            ),
            (
                "sensorlink_accept_errors_total",
                "",
                "Failed accept() calls.",
                "counter",
                self.accept_errors.get(),
            ),
            (
                "sensorlink_readings_total",
                "outcome=\"accepted\"",
                "Readings by outcome.",
                "counter",
                self.readings_accepted.get(),
            ),
            (
                "sensorlink_readings_total",
                "outcome=\"rejected\"",
                "",
                "",
                self.readings_rejected.get(),
            ),
            (
                "sensorlink_readings_total",
                "outcome=\"stored\"",
                "",
                "",
                self.readings_stored.get(),
            ),
            (
                "sensorlink_readings_total",
                "outcome=\"duplicate\"",
                "",
                "",
                self.readings_duplicate.get(),
            ),
            (
                "sensorlink_lines_rejected_total",
                "reason=\"oversize\"",
                "Lines rejected before parsing, by reason.",
                "counter",
                self.lines_oversize.get(),
            ),
            (
                "sensorlink_lines_rejected_total",
                "reason=\"invalid_utf8\"",
                "",
                "",
                self.lines_invalid_utf8.get(),
            ),
            (
                "sensorlink_replies_total",
                "kind=\"ack\"",
                "Replies sent, by kind.",
                "counter",
                self.acks_sent.get(),
            ),
            (
                "sensorlink_replies_total",
                "kind=\"pong\"",
                "",
                "",
                self.pongs_sent.get(),
            ),
            (
                "sensorlink_replies_total",
                "kind=\"error\"",
                "",
                "",
                self.errors_sent.get(),
            ),
            (
                "sensorlink_replies_total",
                "kind=\"error_suppressed\"",
                "",
                "",
                self.errors_suppressed.get(),
            ),
            (
                "sensorlink_store_commits_total",
                "",
                "Store transactions committed.",
                "counter",
                self.store_commits.get(),
            ),
            (
                "sensorlink_store_errors_total",
                "",
                "Store transactions that failed.",
                "counter",
                self.store_errors.get(),
            ),
            (
                "sensorlink_received_bytes_total",
                "",
                "Bytes read from peers.",
                "counter",
                self.bytes_received.get(),
            ),
            (
                "sensorlink_sent_bytes_total",
                "",
                "Bytes written to peers.",
                "counter",
                self.bytes_sent.get(),
            ),
        ]
    }

    /// The Prometheus text exposition of every metric.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for (name, labels, help, kind, value) in self.all() {
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
            }
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
        out
    }
}

/// The process-wide metrics.
pub static METRICS: Metrics = Metrics::new();

/// Counts one open connection for as long as it lives.
#[derive(Debug)]
pub struct OpenConnection(());

impl OpenConnection {
    pub fn new() -> Self {
        METRICS.connections_open.0.fetch_add(1, Ordering::Relaxed);
        OpenConnection(())
    }
}

impl Default for OpenConnection {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS.connections_open.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connection_gauge_follows_guards() {
        let before = METRICS.connections_open.get();
        let a = OpenConnection::new();
        let b = OpenConnection::new();
        assert_eq!(METRICS.connections_open.get(), before + 2);
        drop(a);
        drop(b);
        assert_eq!(METRICS.connections_open.get(), before);
    }

    #[test]
    fn prometheus_text_has_help_type_and_labels() {
        METRICS.readings_rejected.inc();
        let text = METRICS.render_prometheus();
        assert!(text.contains("# TYPE sensorlink_readings_total counter\n"));
        assert!(text.contains("sensorlink_readings_total{outcome=\"rejected\"} "));
        assert!(text.contains("\nsensorlink_connections_open "));
        // One HELP per metric family, never repeated.
        assert_eq!(text.matches("# HELP sensorlink_readings_total ").count(), 1);
    }
}
