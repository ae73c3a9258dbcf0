//! Named events: each type's `emit()` writes its log line and counts its metric, so a log
//! line and the number on a dashboard can never disagree (vector's `internal_events`).
//!
//! Metrics go through the [`metrics`] facade; [`install_prometheus`] installs the
//! Prometheus recorder once per process and keeps its [`PrometheusHandle`] for whoever
//! renders `/metrics` ([`prometheus_handle`]). Handles are registered once ([`Telemetry`]),
//! so the hot path never looks a name up, and readings are counted per decoded batch.
//!
//! # Metrics
//!
//! Every metric, with its name, type, unit, help and buckets, is written once, in
//! [`METRICS`] (`events/table.rs`, which also documents each metric and the cardinality
//! rule).

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::server::logging;

mod auth;
mod commit;
mod conflict;
mod connection;
mod http_auth;
mod labels;
mod limits;
mod live;
mod probe;
mod readings;
mod recent;
mod store;
mod table;
mod tcp;

pub use auth::{AuthChecked, LegacyNotAllowed};
pub use commit::{
    BatchCommitted, StoreAnswered, StoreFailed, StoreProbed, StoreQueued, StoreUnavailable,
};
pub use conflict::ReadingConflict;
pub use connection::{
    AcceptFailed, ConnectionAccepted, ConnectionClosed, ConnectionRefused, FirstLineMissed,
    ModeDetected, OpenConnection, ProxyHeaderRefused, TlsHandshakeFailed,
};
pub use http_auth::{HttpAuthRefused, HttpRefusal};
pub use labels::{AuthResult, CloseReason, Mode, RefuseReason, RejectReason, ReloadWhat};
pub use limits::SeriesCacheEvicted;
pub use live::{SensorEvicted, SensorUntracked, SensorsTracked, SubscriberLagged, SubscriberOpen};
pub use probe::{ProbeResult, UdpProbeHandled, UdpTable, UdpTableEvicted};
pub use readings::{
    AcksWithheld, BytesReceived, ErrorReplySuppressed, LineRejected, ReadingReceived,
    ReadingsAccepted, RepliesWritten,
};
pub use recent::{Percentiles, Recent, Rejection, WindowSummary, WINDOW_SECONDS};
pub use store::{RetentionApplied, StoreWaitEnded, StoreWaitStarted};
pub use table::{describe, names, prometheus_builder, Kind, MetricDef, METRICS, PER_SENSOR};
pub use tcp::{SensorTcpSampled, TcpSampled, MAX_TCP_LABELED_SENSORS};

/// Totals the periodic load summary reads. Kept beside the exported metrics because the
/// facade's handles are write-only; never exported, so nothing is counted twice.
#[derive(Debug, Default)]
pub struct Totals {
    pub readings_accepted: AtomicU64,
    pub lines_rejected: AtomicU64,
    pub readings_stored: AtomicU64,
    /// Readings found already stored at commit: same fields, other fields (refused).
    pub readings_duplicate: AtomicU64,
    pub readings_conflict: AtomicU64,
    pub connections_open: AtomicU64,
    /// Readings covered by an ack (or legacy `pong`) written, for `/api/server`.
    pub readings_acked: AtomicU64,
}

/// Every metric handle, registered once against the recorder current at the time.
#[derive(Debug)]
pub struct Telemetry {
    connections_open: Gauge,
    connections_accepted: Counter,
    connections_refused: [Counter; RefuseReason::ALL.len()],
    connections_closed: [Counter; CloseReason::ALL.len()],
    connections_mode: [Counter; 2],
    accept_errors: Counter,
    /// `reason` = `timeout`, `error`.
    tls_handshakes_failed: [Counter; 2],
    /// By [`ReloadWhat`], then `result` = `ok`, `error`.
    reloads: [[Counter; 2]; ReloadWhat::ALL.len()],
    readings_accepted: Counter,
    lines_rejected: [Counter; RejectReason::ALL.len()],
    readings_inserted: Counter,
    readings_duplicate: Counter,
    readings_conflict: Counter,
    readings_acked: Counter,
    readings_unacked: Counter,
    replies_ack: Counter,
    replies_pong: Counter,
    replies_error: Counter,
    replies_suppressed: Counter,
    store_commits: Counter,
    store_errors_commit: Counter,
    store_errors_submit: Counter,
    store_queued: Gauge,
    commit_duration: Histogram,
    commit_rows: Histogram,
    ack_latency: Histogram,
    received_bytes: Counter,
    sent_bytes: Counter,
    live_sensors: Gauge,
    live_sensors_evicted: Counter,
    live_sensors_untracked: Counter,
    sse_subscribers: Gauge,
    sse_lagged: Counter,
    /// `result` = [`AuthResult::ALL`].
    auth: [Counter; AuthResult::ALL.len()],
    series_cache_evicted: Counter,
    series_cache_entries: Gauge,
    /// `reason` = [`HttpRefusal`] (`events/http_auth.rs`).
    http_auth_refused: [Counter; HttpRefusal::ALL.len()],
    /// `TCP_INFO` samples of sensor connections (`events/tcp.rs`).
    tcp: tcp::TcpHandles,
    /// The UDP reflector's counters (`events/probe.rs`).
    udp: probe::UdpHandles,
    /// Database outages and retention (`events/store.rs`).
    store: store::StoreHandles,
    /// What the load summary reads.
    pub totals: Totals,
    /// The last seconds, for the HTTP API (rates, percentiles, rejections, readiness).
    pub recent: Recent,
}

impl Telemetry {
    /// Register every handle with the current recorder (global, or a test's local one).
    pub fn register() -> Self {
        use names::*;
        Telemetry {
            connections_open: metrics::gauge!(CONNECTIONS_OPEN),
            connections_accepted: metrics::counter!(CONNECTIONS_ACCEPTED),
            connections_refused: RefuseReason::ALL
                .map(|reason| metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason.as_str())),
            connections_closed: CloseReason::ALL
                .map(|reason| metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason.as_str())),
            connections_mode: Mode::ALL
                .map(|mode| metrics::counter!(CONNECTIONS_MODE, "mode" => mode.as_str())),
            accept_errors: metrics::counter!(ACCEPT_ERRORS),
            tls_handshakes_failed: ["timeout", "error"]
                .map(|reason| metrics::counter!(TLS_HANDSHAKES_FAILED, "reason" => reason)),
            reloads: ReloadWhat::ALL.map(|what| {
                ["ok", "error"].map(|result| {
                    metrics::counter!(RELOADS, "what" => what.as_str(), "result" => result)
                })
            }),
            readings_accepted: metrics::counter!(READINGS_ACCEPTED),
            lines_rejected: RejectReason::ALL
                .map(|reason| metrics::counter!(LINES_REJECTED, "reason" => reason.as_str())),
            readings_inserted: metrics::counter!(READINGS_COMMITTED, "outcome" => "inserted"),
            readings_duplicate: metrics::counter!(READINGS_COMMITTED, "outcome" => "duplicate"),
            readings_conflict: metrics::counter!(READINGS_COMMITTED, "outcome" => "conflict"),
            readings_acked: metrics::counter!(READINGS_ACKED),
            readings_unacked: metrics::counter!(READINGS_UNACKED, "reason" => "store_failed"),
            replies_ack: metrics::counter!(REPLIES, "kind" => "ack"),
            replies_pong: metrics::counter!(REPLIES, "kind" => "pong"),
            replies_error: metrics::counter!(REPLIES, "kind" => "error"),
            replies_suppressed: metrics::counter!(REPLIES_SUPPRESSED),
            store_commits: metrics::counter!(STORE_COMMITS),
            store_errors_commit: metrics::counter!(STORE_ERRORS, "op" => "commit"),
            store_errors_submit: metrics::counter!(STORE_ERRORS, "op" => "submit"),
            store_queued: metrics::gauge!(STORE_QUEUED),
            commit_duration: metrics::histogram!(COMMIT_DURATION),
            commit_rows: metrics::histogram!(COMMIT_ROWS),
            ack_latency: metrics::histogram!(ACK_LATENCY),
            received_bytes: metrics::counter!(RECEIVED_BYTES),
            sent_bytes: metrics::counter!(SENT_BYTES),
            live_sensors: metrics::gauge!(LIVE_SENSORS),
            live_sensors_evicted: metrics::counter!(LIVE_SENSORS_EVICTED),
            live_sensors_untracked: metrics::counter!(LIVE_SENSORS_UNTRACKED),
            sse_subscribers: metrics::gauge!(SSE_SUBSCRIBERS),
            sse_lagged: metrics::counter!(SSE_LAGGED),
            auth: AuthResult::ALL
                .map(|result| metrics::counter!(AUTH, "result" => result.as_str())),
            series_cache_evicted: metrics::counter!(SERIES_CACHE_EVICTED),
            series_cache_entries: metrics::gauge!(SERIES_CACHE_ENTRIES),
            http_auth_refused: HttpRefusal::ALL
                .map(|reason| metrics::counter!(HTTP_AUTH_REFUSED, "reason" => reason.as_str())),
            tcp: tcp::TcpHandles::register(),
            udp: probe::UdpHandles::register(),
            store: store::StoreHandles::register(),
            totals: Totals::default(),
            recent: Recent::default(),
        }
    }
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's handles, registered on first use with the global recorder.
pub fn telemetry() -> &'static Telemetry {
    TELEMETRY.get_or_init(Telemetry::register)
}

/// Install the Prometheus recorder as the process's global recorder (once; later calls
/// return the same handle), describe every metric and register the handles.
///
/// # Errors
/// Another recorder is already installed (an embedding program's own): metrics then go to
/// it, and there is nothing for us to render.
pub fn install_prometheus() -> Result<PrometheusHandle, InstallError> {
    // Two servers started at once in one process must not both try to install.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = PROMETHEUS.get() {
        return Ok(handle.clone());
    }
    let recorder = prometheus_builder().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        return Err(InstallError::OtherRecorder);
    }
    let handle = PROMETHEUS.get_or_init(|| handle).clone();
    describe();
    if TELEMETRY.get().is_some() {
        // Handles registered before the recorder existed count into nothing.
        tracing::warn!(
            "metrics were used before the recorder was installed; they are not exported"
        );
    }
    telemetry();
    Ok(handle)
}

/// The installed Prometheus recorder's handle, for rendering `/metrics`.
pub fn prometheus_handle() -> Option<&'static PrometheusHandle> {
    PROMETHEUS.get()
}

/// [`install_prometheus`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("another metrics recorder is already installed")]
    OtherRecorder,
}

/// One named event: logs its line and counts its metric.
pub trait Event: Sized {
    /// Emit against `telemetry` (a test's local handles).
    fn emit_to(self, telemetry: &Telemetry);

    /// Emit against the process's handles.
    fn emit(self) {
        self.emit_to(telemetry());
    }
}

/// One reload (SIGHUP) of `what` ended: on success `outcome` says what changed; on error
/// why, and the old state stays in force.
pub struct Reloaded<'a> {
    pub what: ReloadWhat,
    pub outcome: &'a Result<String, String>,
}

impl Event for Reloaded<'_> {
    fn emit_to(self, t: &Telemetry) {
        let what = self.what.as_str();
        match self.outcome {
            Ok(changed) => tracing::info!(what, changed = %changed, "reloaded"),
            Err(cause) => {
                tracing::error!(what, cause = %cause, "reload failed; the old settings stay in force")
            }
        }
        t.reloads[self.what as usize][usize::from(self.outcome.is_err())].increment(1);
    }
}

/// Helpers for tests that read metrics back.
#[cfg(test)]
pub(crate) mod testing {
    /// The value of the sample line `series` (name plus labels, exactly as rendered) in
    /// Prometheus text, if rendered.
    pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn sample_reads_the_exact_series_only() {
        let text = "a_total{k=\"x\"} 3\na_total 4\na_total_sum 5\n";
        assert_eq!(sample(text, "a_total"), Some(4.0));
        assert_eq!(sample(text, "a_total{k=\"x\"}"), Some(3.0));
        assert_eq!(sample(text, "a_total{k=\"y\"}"), None);
        assert_eq!(sample(text, "a"), None);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    use super::table::ROWS_BUCKETS;
    use super::testing::sample;
    use super::*;
    use crate::protocol::ProtocolError;
    use crate::store::WriteOutcome;

    /// Emit `f`'s events into a fresh local recorder and return its Prometheus text.
    fn render(f: impl FnOnce(&Telemetry)) -> String {
        let recorder = prometheus_builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let telemetry = Telemetry::register();
            f(&telemetry);
        });
        handle.render()
    }

    #[test]
    fn events_count_once_under_their_names() {
        let text = render(|t| {
            ConnectionAccepted.emit_to(t);
            ConnectionAccepted.emit_to(t);
            ConnectionRefused {
                peer: SocketAddr::from(([127, 0, 0, 1], 9)),
                reason: RefuseReason::MaxConnections,
                limit: 1,
            }
            .emit_to(t);
            ConnectionRefused {
                peer: SocketAddr::from(([127, 0, 0, 2], 9)),
                reason: RefuseReason::PerIp,
                limit: 64,
            }
            .emit_to(t);
            ModeDetected { mode: Mode::Legacy }.emit_to(t);
            ReadingsAccepted { count: 7 }.emit_to(t);
            LineRejected {
                line: 3,
                peer: SocketAddr::from(([127, 0, 0, 1], 9)),
                error: &ProtocolError::LineTooLong { limit: 64 },
            }
            .emit_to(t);
            LineRejected {
                line: 4,
                peer: SocketAddr::from(([127, 0, 0, 1], 9)),
                error: &ProtocolError::InvalidReading("x".into()),
            }
            .emit_to(t);
            BytesReceived { bytes: 100 }.emit_to(t);
            ConnectionClosed {
                mode: Some(Mode::Line),
                reason: CloseReason::IdleTimeout,
                accepted: 7,
                rejected: 2,
                acked: 5,
                duration: Duration::from_secs(1),
            }
            .emit_to(t);
            assert_eq!(t.totals.readings_accepted.load(Ordering::Relaxed), 7);
            assert_eq!(t.totals.lines_rejected.load(Ordering::Relaxed), 2);
        });
        assert_eq!(
            sample(&text, names::CONNECTIONS_ACCEPTED),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "sensorlink_connections_refused_total{reason=\"max_connections\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "sensorlink_connections_refused_total{reason=\"per_ip\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "sensorlink_connections_refused_total{reason=\"connect_rate\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_connections_mode_total{mode=\"legacy\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, names::READINGS_ACCEPTED), Some(7.0));
        assert_eq!(
            sample(
                &text,
                "sensorlink_lines_rejected_total{reason=\"oversize\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "sensorlink_lines_rejected_total{reason=\"invalid_reading\"}"
            ),
            Some(1.0)
        );
        assert_eq!(sample(&text, names::RECEIVED_BYTES), Some(100.0));
        assert_eq!(
            sample(
                &text,
                "sensorlink_connections_closed_total{reason=\"idle_timeout\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_connections_closed_total{reason=\"eof\"}"),
            Some(0.0)
        );
        // Described once per family, with its type.
        assert_eq!(
            text.matches("# HELP sensorlink_lines_rejected_total ")
                .count(),
            1
        );
        assert!(text.contains("# TYPE sensorlink_lines_rejected_total counter\n"));
    }

    /// [`METRICS`] drives `describe()`; `register()` must register exactly its names, each
    /// with the table's type and help.
    #[test]
    fn every_metric_in_the_table_is_registered_and_described() {
        let text = render(|_| {});
        // Per-sensor gauges appear with a sensor's first sample (`events/tcp.rs` tests them).
        for metric in METRICS.iter().filter(|m| !PER_SENSOR.contains(&m.name)) {
            let kind = metric.kind.as_str();
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", metric.name)),
                "{} not registered as a {kind}:\n{text}",
                metric.name
            );
            assert!(
                text.contains(&format!("# HELP {} {}\n", metric.name, metric.help)),
                "{} not described:\n{text}",
                metric.name
            );
        }
        for line in text.lines() {
            if let Some(name) = line
                .strip_prefix("# TYPE ")
                .and_then(|l| l.split(' ').next())
            {
                assert!(
                    METRICS.iter().any(|metric| metric.name == name),
                    "{name} is not in METRICS"
                );
            }
        }
    }

    /// Labels are indexed by `as usize`: each ALL list must be in declaration order.
    #[test]
    fn label_tables_are_in_declaration_order() {
        for (index, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{reason:?}");
        }
        for (index, mode) in Mode::ALL.iter().enumerate() {
            assert_eq!(*mode as usize, index, "{mode:?}");
        }
        for (index, reason) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{reason:?}");
        }
        for (index, what) in ReloadWhat::ALL.iter().enumerate() {
            assert_eq!(*what as usize, index, "{what:?}");
        }
    }

    /// A failed read and a failed write are told apart, on the metric and in the log.
    #[test]
    fn read_and_write_failures_have_their_own_close_reason() {
        let text = render(|t| {
            for reason in [
                CloseReason::ReadFailed,
                CloseReason::WriteFailed,
                CloseReason::WriteFailed,
            ] {
                ConnectionClosed {
                    mode: None,
                    reason,
                    accepted: 0,
                    rejected: 0,
                    acked: 0,
                    duration: Duration::ZERO,
                }
                .emit_to(t);
            }
        });
        let closed = |reason: &str| {
            sample(
                &text,
                &format!("sensorlink_connections_closed_total{{reason=\"{reason}\"}}"),
            )
        };
        assert_eq!(closed("read_failed"), Some(1.0), "{text}");
        assert_eq!(closed("write_failed"), Some(2.0), "{text}");
    }

    /// Rows up to the largest `--commit-max-rows` and latencies down to 10 µs get a bucket.
    #[test]
    fn buckets_cover_the_configured_range() {
        let text = render(|t| {
            BatchCommitted {
                rows: 600_000,
                outcome: WriteOutcome {
                    inserted: 600_000,
                    duplicates: 0,
                    conflicts: 0,
                },
                duration: Duration::from_micros(20),
            }
            .emit_to(t);
        });
        let max_rows = crate::config::limits::COMMIT_MAX_ROWS.1;
        assert_eq!(ROWS_BUCKETS.last().copied(), Some(max_rows as f64));
        assert_eq!(
            sample(&text, "sensorlink_store_commit_rows_bucket{le=\"500000\"}"),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "sensorlink_store_commit_rows_bucket{le=\"1000000\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "sensorlink_store_commit_duration_seconds_bucket{le=\"0.00001\"}"
            ),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "sensorlink_store_commit_duration_seconds_bucket{le=\"0.000025\"}"
            ),
            Some(1.0)
        );
    }

    /// A log written into memory at `WARN` and above, for tests that check what is logged.
    #[derive(Clone, Default)]
    struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Log {
        /// Run `f` with this log as the thread's subscriber.
        fn capture<T>(&self, f: impl FnOnce() -> T) -> T {
            let log = self.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::WARN)
                .with_ansi(false)
                .with_writer(move || log.clone())
                .finish();
            tracing::subscriber::with_default(subscriber, f)
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
        }
    }

    /// Refused connections are each counted, but logged within their own budget.
    #[test]
    fn refused_connections_are_counted_each_but_logged_within_budget() {
        let log = Log::default();
        // Ten seconds' worth of budget: only a loop slower than 10 s could log them all.
        let emitted = 10 * logging::LINES_PER_SECOND;
        let text = log.capture(|| {
            render(|t| {
                for _ in 0..emitted {
                    ConnectionRefused {
                        peer: SocketAddr::from(([127, 0, 0, 1], 9)),
                        reason: RefuseReason::MaxConnections,
                        limit: 1,
                    }
                    .emit_to(t);
                }
            })
        });
        assert_eq!(
            sample(
                &text,
                "sensorlink_connections_refused_total{reason=\"max_connections\"}"
            ),
            Some(emitted as f64)
        );
        let logged = log.text().matches("connection limit reached").count() as u64;
        assert!(
            logged >= 1 && logged < emitted,
            "{logged} of {emitted} logged"
        );
    }

    /// Withheld acks are a per-connection warning (the failed commit is the error, logged
    /// once by the writer), counted per reading.
    #[test]
    fn withheld_acks_warn_and_count_readings() {
        let log = Log::default();
        let error = std::io::Error::other("disk full");
        let text = log.capture(|| {
            render(|t| {
                AcksWithheld {
                    error: &error,
                    readings: 3,
                }
                .emit_to(t);
            })
        });
        assert_eq!(
            sample(
                &text,
                "sensorlink_readings_unacked_total{reason=\"store_failed\"}"
            ),
            Some(3.0)
        );
        let logged = log.text();
        assert!(
            logged.contains(" WARN ") && logged.contains("readings not acknowledged"),
            "{logged}"
        );
        assert!(!logged.contains("ERROR"), "{logged}");
    }

    #[test]
    fn commits_and_acks_fill_histograms() {
        let text = render(|t| {
            for rows in [10, 30] {
                BatchCommitted {
                    rows,
                    outcome: WriteOutcome {
                        inserted: rows as u64 - 1,
                        duplicates: 1,
                        conflicts: 0,
                    },
                    duration: Duration::from_millis(3),
                }
                .emit_to(t);
            }
            let received = Instant::now();
            RepliesWritten {
                bytes: 64,
                acks: 2,
                pongs: 1,
                errors: 0,
                readings_acked: 40,
                ack_receipts: &[received, received],
                written_at: received + Duration::from_millis(20),
            }
            .emit_to(t);
            assert_eq!(t.totals.readings_stored.load(Ordering::Relaxed), 38);
        });
        assert_eq!(sample(&text, names::STORE_COMMITS), Some(2.0), "{text}");
        assert_eq!(
            sample(
                &text,
                "sensorlink_readings_committed_total{outcome=\"inserted\"}"
            ),
            Some(38.0)
        );
        assert_eq!(
            sample(
                &text,
                "sensorlink_readings_committed_total{outcome=\"duplicate\"}"
            ),
            Some(2.0)
        );
        assert!(text.contains("# TYPE sensorlink_store_commit_duration_seconds histogram\n"));
        assert_eq!(
            sample(&text, "sensorlink_store_commit_duration_seconds_count"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_store_commit_rows_count"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_store_commit_rows_sum"),
            Some(40.0)
        );
        // 10 rows fall in the `le="10"` bucket, 30 only from `le="100"` on.
        assert_eq!(
            sample(&text, "sensorlink_store_commit_rows_bucket{le=\"10\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_store_commit_rows_bucket{le=\"100\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_ack_latency_seconds_count"),
            Some(2.0)
        );
        // 20 ms: above the 10 ms bucket, within 25 ms.
        assert_eq!(
            sample(&text, "sensorlink_ack_latency_seconds_bucket{le=\"0.01\"}"),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_ack_latency_seconds_bucket{le=\"0.025\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_replies_total{kind=\"ack\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_replies_total{kind=\"pong\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, names::READINGS_ACKED), Some(40.0));
        assert_eq!(sample(&text, names::SENT_BYTES), Some(64.0));
    }

    #[test]
    fn open_connection_gauge_goes_down_on_every_exit_path() {
        let text = render(|t| {
            let open = || t.totals.connections_open.load(Ordering::Relaxed);
            // Dropped at the end of a scope.
            {
                let _a = OpenConnection::with(t);
                let _b = OpenConnection::with(t);
                assert_eq!(open(), 2);
            }
            assert_eq!(open(), 0);
            // Dropped by an early return.
            let early = |fail: bool| -> Result<(), ()> {
                let _guard = OpenConnection::with(t);
                if fail {
                    return Err(());
                }
                Ok(())
            };
            assert!(early(true).is_err());
            assert!(early(false).is_ok());
            assert_eq!(open(), 0);
            // Dropped while a panic unwinds (a connection task that panics).
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _guard = OpenConnection::with(t);
                panic!("connection task failed");
            }));
            assert!(unwound.is_err());
            assert_eq!(open(), 0);
            let _still_open = OpenConnection::with(t);
            assert_eq!(open(), 1);
        });
        assert_eq!(sample(&text, names::CONNECTIONS_OPEN), Some(0.0), "{text}");
    }

    /// A second server in the same process gets the recorder the first one installed.
    #[test]
    fn installing_twice_returns_the_installed_recorder() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(install_prometheus))
            .collect();
        for thread in threads {
            let installed = thread.join().expect("install does not panic");
            assert!(installed.is_ok(), "{installed:?}");
        }
        assert!(install_prometheus().is_ok());
        assert!(prometheus_handle().is_some());
    }

    /// A task that is aborted (server shutdown, runtime drop) drops its guard too.
    #[tokio::test]
    async fn open_connection_gauge_goes_down_when_the_task_is_aborted() {
        let telemetry: &'static Telemetry = Box::leak(Box::new(Telemetry::register()));
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let _guard = OpenConnection::with(telemetry);
            let _ = entered_tx.send(());
            std::future::pending::<()>().await;
        });
        entered_rx.await.expect("the task runs until it is aborted");
        assert_eq!(telemetry.totals.connections_open.load(Ordering::Relaxed), 1);
        task.abort();
        assert!(task.await.expect_err("aborted").is_cancelled());
        assert_eq!(telemetry.totals.connections_open.load(Ordering::Relaxed), 0);
    }
}
