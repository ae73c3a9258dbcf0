//! The one table of every metric this crate publishes: name, type, unit, help and
//! buckets are written once, here, and drive [`names`], [`describe`], the exporter's
//! buckets, and a test that [`super::Telemetry::register`] registers exactly these.
//! Names follow Prometheus conventions: the `sensorlink_` prefix, `_total` on counters,
//! the base unit as a suffix (`_seconds`, `_bytes`).
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `sensorlink_connections_open` | gauge | | connections being served ([`super::OpenConnection`]) |
//! | `sensorlink_connections_accepted_total` | counter | | connections given a task |
//! | `sensorlink_connections_refused_total` | counter | `reason` = `max_connections` `per_ip` `connect_rate` `proxy_header` `proxy_peer` | closed at once by a connection limit, or (`--proxy-protocol v2`) for want of a valid PROXY header, or from a peer outside `--proxy-protocol-from` |
//! | `sensorlink_connections_closed_total` | counter | `reason` = `eof` `shutdown` `idle_timeout` `read_failed` `write_failed` `write_stalled` `store_failed` `first_line_timeout` `auth_failed` `token_revoked` `legacy_not_allowed` | served connections that ended |
//! | `sensorlink_connections_mode_total` | counter | `mode` = `line` `legacy` | protocol each peer spoke (a peer that sent nothing has none) |
//! | `sensorlink_accept_errors_total` | counter | | failed `accept()` calls |
//! | `sensorlink_tls_handshakes_failed_total` | counter | `reason` = `timeout` `error` | TLS handshakes on the sensor port that did not complete (the connection is closed) |
//! | `sensorlink_reloads_total` | counter | `what` = `tls` `auth`, `result` = `ok` `error` | SIGHUP reloads ([`super::Reloaded`]); on `error` the old state stays in force |
//! | `sensorlink_readings_accepted_total` | counter | | readings parsed and handed to the store |
//! | `sensorlink_lines_rejected_total` | counter | `reason` = `oversize` `invalid_utf8` `invalid_reading` `invalid_command` `unknown_command` `invalid_legacy` `timestamp_out_of_range` `rate_limited` `new_series_limit` `unauthenticated` `not_permitted` `auth_failed` | lines (or legacy messages) refused: neither a reading nor a command, or a reading refused by a limit (timestamp window, `--max-rate-per-*`, `--max-new-series-per-*`), or by `--auth` (before `auth`; outside the token's scope; the token revoked) |
//! | `sensorlink_readings_committed_total` | counter | `outcome` = `inserted` `duplicate` `conflict` | readings in committed transactions: `duplicate` = series and timestamp already stored with the same fields (not stored again), `conflict` = already stored with other fields (refused, the stored one kept) |
//! | `sensorlink_readings_acked_total` | counter | | readings covered by an ack (or legacy `pong`) written |
//! | `sensorlink_readings_unacked_total` | counter | `reason="store_failed"` | readings answered with an error instead of an ack |
//! | `sensorlink_replies_total` | counter | `kind` = `ack` `pong` `error` | replies written |
//! | `sensorlink_replies_suppressed_total` | counter | | error replies not sent: beyond the 64 held for a peer that never reads, or beyond 100/s on one connection |
//! | `sensorlink_store_commits_total` | counter | | store transactions committed |
//! | `sensorlink_store_errors_total` | counter | `op` = `commit` `submit` | store failures |
//! | `sensorlink_store_queued_readings` | gauge | | readings handed to the store and not yet answered (waiting for the writer, or in the transaction being committed): the writer's queue depth |
//! | `sensorlink_store_commit_duration_seconds` | histogram | | time of one transaction |
//! | `sensorlink_store_commit_rows` | histogram | | readings in one transaction |
//! | `sensorlink_ack_latency_seconds` | histogram | | receipt → ack written: line mode one sample per `ack` (from its first reading), legacy one per reading (each `pong` acks one) |
//! | `sensorlink_received_bytes_total` | counter | | bytes read from peers |
//! | `sensorlink_sent_bytes_total` | counter | | bytes written to peers |
//! | `sensorlink_live_sensors` | gauge | | sensors the live view tracks (`/api/sensors`; at most 100,000) |
//! | `sensorlink_live_sensors_evicted_total` | counter | | disconnected sensors dropped from the live view to make room ([`super::SensorEvicted`]) |
//! | `sensorlink_live_sensors_untracked_total` | counter | | committed reading groups of a new sensor the full live view could not take ([`super::SensorUntracked`]) |
//! | `sensorlink_sse_subscribers` | gauge | | open `/api/events` streams ([`super::SubscriberOpen`]) |
//! | `sensorlink_sse_lagged_total` | counter | | event streams ended because the subscriber fell behind ([`super::SubscriberLagged`]) |
//! | `sensorlink_auth_total` | counter | `result` = `ok` `malformed` `unknown` `revoked` `off` | `auth` lines answered on the sensor port (`off`: the server has no `--auth`) ([`super::AuthChecked`]) |
//! | `sensorlink_store_series_cache_evictions_total` | counter | | series ids the SQLite writer evicted from its bounded cache ([`super::SeriesCacheEvicted`]) |
//! | `sensorlink_store_series_cache_entries` | gauge | | series ids in that cache, as of its last eviction |
//! | `sensorlink_store_unavailable_total` | counter | | times the database (PostgreSQL) went out of reach: batches were held unacknowledged and retried until it was back ([`super::StoreWaitStarted`]) |
//! | `sensorlink_store_unavailable_duration_seconds` | histogram | | duration of each ended outage; `_sum` is the time waited ([`super::StoreWaitEnded`]) |
//! | `sensorlink_store_partitions_dropped_total` | counter | | time partitions dropped by `--retention` ([`super::RetentionApplied`]) |
//! | `sensorlink_store_retention_deleted_total` | counter | | readings removed by `--retention` |
//! | `sensorlink_udp_probes_total` | counter | `result` = `answered` `too_short` `malformed` `unsigned` `bad_mac` `rate_limited` `send_failed` | datagrams on the UDP probe port, by what became of them ([`super::UdpProbeHandled`]) |
//! | `sensorlink_udp_table_evictions_total` | counter | `table` = `sessions` `buckets` | least recently used entries the UDP reflector evicted to make room: an evicted session counts from 0 again (a probe client then reports its up/down split as unknown), an evicted address starts with a full burst ([`super::UdpTableEvicted`]) |
//! | `sensorlink_http_auth_refused_total` | counter | `reason` = `missing` `malformed` `unknown` `revoked` `no_read_scope` | HTTP requests refused for want of a read token ([`super::HttpAuthRefused`]) |
//! | `sensorlink_tcp_srtt_seconds` | histogram | | the kernel's smoothed RTT of sensor connections, one sample per `TCP_INFO` sample ([`super::TcpSampled`]) |
//! | `sensorlink_tcp_retransmits_total` | counter | | segments the server retransmitted on sensor connections (`tcpi_total_retrans` deltas between samples) |
//! | `sensorlink_sensor_tcp_srtt_seconds` | gauge | `sensor`: the first [`super::MAX_TCP_LABELED_SENSORS`] sampled | the latest smoothed RTT of the sensor's connection ([`super::SensorTcpSampled`]) |
//! | `sensorlink_sensor_tcp_retransmits` | gauge | `sensor`: as above | segments retransmitted on the sensor's latest connection so far |
//!
//! **Cardinality rule.** Every label takes only the values listed: no per-peer or
//! per-connection series, so the number of series is fixed whatever the number of
//! sensors (10,000 sensors must not mean 10,000 series per metric). Per-sensor figures are
//! served as JSON by the HTTP API (`/api/sensors`), bounded per sensor there; the one
//! exception is `sensor` on the two `sensorlink_sensor_tcp_*` gauges, which only the first
//! [`super::MAX_TCP_LABELED_SENSORS`] sensors the server samples ever get (a fixed bound,
//! first come first served, kept for the server's life). These two are registered when a
//! sensor is first sampled ([`PER_SENSOR`]), not by [`super::Telemetry::register`].

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    /// As in the exposition format's `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric as published: the one place its name, type, unit and help are written.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    /// Bucket upper bounds (histograms only).
    pub buckets: &'static [f64],
    pub help: &'static str,
}

/// Writes [`names`] and [`METRICS`] from one list, so the two cannot disagree.
macro_rules! metric_table {
    ($($id:ident = $name:literal, $kind:ident, $unit:ident, $buckets:expr, $help:literal;)*) => {
        /// Metric names, so tests and the HTTP side spell them the same way.
        pub mod names {
            $(pub const $id: &str = $name;)*
        }

        /// Every metric this crate publishes.
        pub const METRICS: &[MetricDef] = &[$(MetricDef {
            name: $name,
            kind: Kind::$kind,
            unit: Unit::$unit,
            buckets: $buckets,
            help: $help,
        },)*];
    };
}

pub(super) const NO_BUCKETS: &[f64] = &[];

/// Latency buckets (seconds): 10 µs (a memory store's commit) to 10 s (a stalled disk).
pub(super) const LATENCY_BUCKETS_S: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Database outage buckets (seconds): a restart (~1 s) to an hour.
pub(super) const OUTAGE_BUCKETS_S: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Rows-per-commit buckets, up to the largest `--commit-max-rows` accepted (1 000 000).
pub(super) const ROWS_BUCKETS: &[f64] = &[
    1.0,
    10.0,
    100.0,
    500.0,
    1_000.0,
    2_000.0,
    5_000.0,
    10_000.0,
    20_000.0,
    50_000.0,
    100_000.0,
    200_000.0,
    500_000.0,
    1_000_000.0,
];

metric_table! {
    CONNECTIONS_OPEN = "sensorlink_connections_open", Gauge, Count, NO_BUCKETS,
        "Connections being served.";
    CONNECTIONS_ACCEPTED = "sensorlink_connections_accepted_total", Counter, Count, NO_BUCKETS,
        "Connections accepted and served.";
    CONNECTIONS_REFUSED = "sensorlink_connections_refused_total", Counter, Count, NO_BUCKETS,
        "Connections closed at once, by reason.";
    CONNECTIONS_CLOSED = "sensorlink_connections_closed_total", Counter, Count, NO_BUCKETS,
        "Served connections that ended, by reason.";
    CONNECTIONS_MODE = "sensorlink_connections_mode_total", Counter, Count, NO_BUCKETS,
        "Connections by the protocol the peer spoke.";
    TLS_HANDSHAKES_FAILED = "sensorlink_tls_handshakes_failed_total", Counter, Count, NO_BUCKETS,
        "TLS handshakes on the sensor port that did not complete, by reason.";
    RELOADS = "sensorlink_reloads_total", Counter, Count, NO_BUCKETS,
        "SIGHUP reloads, by what was re-read and result (on error the old state stays in force).";
    ACCEPT_ERRORS = "sensorlink_accept_errors_total", Counter, Count, NO_BUCKETS,
        "Failed accept() calls.";
    READINGS_ACCEPTED = "sensorlink_readings_accepted_total", Counter, Count, NO_BUCKETS,
        "Readings parsed and handed to the store.";
    LINES_REJECTED = "sensorlink_lines_rejected_total", Counter, Count, NO_BUCKETS,
        "Lines (or legacy messages) that were neither a reading nor a command, by reason.";
    READINGS_COMMITTED = "sensorlink_readings_committed_total", Counter, Count, NO_BUCKETS,
        "Readings in committed transactions, by outcome (a duplicate was already stored with the same fields, a conflict with others).";
    READINGS_ACKED = "sensorlink_readings_acked_total", Counter, Count, NO_BUCKETS,
        "Readings covered by an ack written to the peer.";
    READINGS_UNACKED = "sensorlink_readings_unacked_total", Counter, Count, NO_BUCKETS,
        "Readings answered with an error instead of an ack, by reason.";
    REPLIES = "sensorlink_replies_total", Counter, Count, NO_BUCKETS,
        "Replies written, by kind.";
    REPLIES_SUPPRESSED = "sensorlink_replies_suppressed_total", Counter, Count, NO_BUCKETS,
        "Error replies not sent: the peer never asked for replies, or over 100/s on a connection.";
    STORE_COMMITS = "sensorlink_store_commits_total", Counter, Count, NO_BUCKETS,
        "Store transactions committed.";
    STORE_ERRORS = "sensorlink_store_errors_total", Counter, Count, NO_BUCKETS,
        "Store failures, by operation.";
    STORE_QUEUED = "sensorlink_store_queued_readings", Gauge, Count, NO_BUCKETS,
        "Readings handed to the store and not yet answered (queued, or in the transaction being committed).";
    COMMIT_DURATION = "sensorlink_store_commit_duration_seconds", Histogram, Seconds,
        LATENCY_BUCKETS_S, "Duration of one store transaction.";
    COMMIT_ROWS = "sensorlink_store_commit_rows", Histogram, Count, ROWS_BUCKETS,
        "Readings in one store transaction.";
    ACK_LATENCY = "sensorlink_ack_latency_seconds", Histogram, Seconds, LATENCY_BUCKETS_S,
        "From the receipt of the first reading an ack covers to the ack written (legacy: one sample per reading).";
    RECEIVED_BYTES = "sensorlink_received_bytes_total", Counter, Bytes, NO_BUCKETS,
        "Bytes read from peers.";
    SENT_BYTES = "sensorlink_sent_bytes_total", Counter, Bytes, NO_BUCKETS,
        "Bytes written to peers.";
    LIVE_SENSORS = "sensorlink_live_sensors", Gauge, Count, NO_BUCKETS,
        "Sensors tracked by the live view (/api/sensors).";
    LIVE_SENSORS_EVICTED = "sensorlink_live_sensors_evicted_total", Counter, Count, NO_BUCKETS,
        "Disconnected sensors dropped from the live view to make room for new ones.";
    LIVE_SENSORS_UNTRACKED = "sensorlink_live_sensors_untracked_total", Counter, Count, NO_BUCKETS,
        "Committed reading groups of a new sensor the full live view could not take (every tracked sensor connected).";
    SSE_SUBSCRIBERS = "sensorlink_sse_subscribers", Gauge, Count, NO_BUCKETS,
        "Open /api/events streams.";
    SSE_LAGGED = "sensorlink_sse_lagged_total", Counter, Count, NO_BUCKETS,
        "Event streams ended because the subscriber fell behind its bounded queue.";
    AUTH = "sensorlink_auth_total", Counter, Count, NO_BUCKETS,
        "auth lines answered on the sensor port, by result (off: the server has no --auth).";
    SERIES_CACHE_EVICTED = "sensorlink_store_series_cache_evictions_total", Counter, Count, NO_BUCKETS,
        "Series ids the SQLite writer dropped from its bounded cache (least recently used first).";
    SERIES_CACHE_ENTRIES = "sensorlink_store_series_cache_entries", Gauge, Count, NO_BUCKETS,
        "Series ids in the SQLite writer's cache, as of its last eviction.";
    HTTP_AUTH_REFUSED = "sensorlink_http_auth_refused_total", Counter, Count, NO_BUCKETS,
        "HTTP requests (/api/*, /metrics) refused for want of a read token, by reason.";
    TCP_SRTT = "sensorlink_tcp_srtt_seconds", Histogram, Seconds, LATENCY_BUCKETS_S,
        "The kernel's smoothed RTT (TCP_INFO) of sensor connections, one sample per connection sample.";
    TCP_RETRANSMITS = "sensorlink_tcp_retransmits_total", Counter, Count, NO_BUCKETS,
        "TCP segments the server retransmitted on sensor connections (TCP_INFO total_retrans).";
    SENSOR_TCP_SRTT = "sensorlink_sensor_tcp_srtt_seconds", Gauge, Seconds, NO_BUCKETS,
        "Latest smoothed RTT (TCP_INFO) of the sensor's connection (only the first 100 sensors sampled get this label).";
    SENSOR_TCP_RETRANSMITS = "sensorlink_sensor_tcp_retransmits", Gauge, Count, NO_BUCKETS,
        "TCP segments retransmitted so far on the sensor's latest connection (only the first 100 sensors sampled get this label).";
    UDP_PROBES = "sensorlink_udp_probes_total", Counter, Count, NO_BUCKETS,
        "Datagrams on the UDP probe port, by result (answered, or why dropped).";
    STORE_UNAVAILABLE = "sensorlink_store_unavailable_total", Counter, Count, NO_BUCKETS,
        "Times the database went out of reach (the store held its batches, unacknowledged, until it was back).";
    STORE_UNAVAILABLE_DURATION = "sensorlink_store_unavailable_duration_seconds", Histogram, Seconds,
        OUTAGE_BUCKETS_S, "Duration of each ended database outage (the sum is the time waited).";
    STORE_PARTITIONS_DROPPED = "sensorlink_store_partitions_dropped_total", Counter, Count, NO_BUCKETS,
        "Time partitions dropped by --retention.";
    STORE_RETENTION_DELETED = "sensorlink_store_retention_deleted_total", Counter, Count, NO_BUCKETS,
        "Readings removed by --retention (in dropped partitions or deleted one by one).";
    UDP_TABLE_EVICTED = "sensorlink_udp_table_evictions_total", Counter, Count, NO_BUCKETS,
        "Entries the UDP reflector evicted from its bounded tables (sessions: that session counts from 0 again; buckets: that address starts with a full burst).";
}

/// Metrics labelled by `sensor`: registered per sensor at its first sample (bounded by
/// [`super::MAX_TCP_LABELED_SENSORS`]), so absent until then.
pub const PER_SENSOR: &[&str] = &[names::SENSOR_TCP_SRTT, names::SENSOR_TCP_RETRANSMITS];

/// Help texts and units for every metric in [`METRICS`], given to the current recorder.
pub fn describe() {
    for metric in METRICS {
        match metric.kind {
            Kind::Counter => describe_counter!(metric.name, metric.unit, metric.help),
            Kind::Gauge => describe_gauge!(metric.name, metric.unit, metric.help),
            Kind::Histogram => describe_histogram!(metric.name, metric.unit, metric.help),
        }
    }
}

/// The exporter's settings: true histograms, with each histogram's buckets from [`METRICS`].
pub fn prometheus_builder() -> PrometheusBuilder {
    METRICS
        .iter()
        .filter(|metric| metric.kind == Kind::Histogram)
        .fold(PrometheusBuilder::new(), |builder, metric| {
            builder
                .set_buckets_for_metric(Matcher::Full(metric.name.to_string()), metric.buckets)
                .expect("every histogram in METRICS has a non-empty bucket list")
        })
}
