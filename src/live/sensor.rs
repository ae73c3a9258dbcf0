//! One sensor's live state (the SENSOR object of docs/http-api.md) and how a committed
//! batch group updates it. Every part is bounded: [`MAX_MEASUREMENTS`] measurements in
//! `values` of [`MAX_FIELDS`] fields, string values of [`MAX_STRING_BYTES`],
//! [`SPARK_POINTS`] sparkline points, [`RATE_SECONDS`] rate buckets and [`ACK_SAMPLES`]
//! ack latencies. [`TcpFigures`] is the kernel's view of its latest connection.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::batch::{number, Group, Pairs, SPARK_POINTS};
use crate::events::Mode;
use crate::protocol::FieldValue;

/// Measurements kept per sensor in `values` (the first ones it sent).
pub const MAX_MEASUREMENTS: usize = 8;

/// Fields kept per measurement (and per link report): the first ones of the reading.
pub const MAX_FIELDS: usize = 32;

/// Bytes kept of a string field's value (cut on a character boundary).
pub const MAX_STRING_BYTES: usize = 256;

/// The window of `rate`, in one-second buckets.
pub const RATE_SECONDS: usize = 10;

/// Recent acks the per-sensor ack latency percentiles are taken over.
pub const ACK_SAMPLES: usize = 64;

const NS_PER_S: i64 = 1_000_000_000;

/// A sensor's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// An open connection carries it and it was seen within `--stale-after`.
    Connected,
    /// An open connection carries it but it has been silent longer.
    Stale,
    /// No open connection carries it.
    Disconnected,
}

impl State {
    pub const ALL: [State; 3] = [State::Connected, State::Stale, State::Disconnected];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Connected => "connected",
            State::Stale => "stale",
            State::Disconnected => "disconnected",
        }
    }

    /// `connected`, `stale` or `disconnected`.
    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|state| state.as_str() == text)
    }
}

/// The live state of one sensor (cloned whole into a [`Snapshot`]: it is bounded).
#[derive(Debug, Clone)]
pub struct Sensor {
    /// Open connections that carried its readings.
    pub(super) connections: u32,
    /// Peer and mode of the latest connection (kept after it closes).
    pub(super) peer: SocketAddr,
    pub(super) mode: Mode,
    /// Server time of its latest committed reading's receipt.
    pub(super) last_seen_ns: i64,
    /// When its last connection closed (orders eviction); 0 while connected.
    pub(super) disconnected_ns: i64,
    /// Readings stored: a duplicate or conflict (found already stored at commit) is taken
    /// out of its batch's count ([`super::LiveBatch::forget`]).
    pub(super) readings: u64,
    rate: Rate,
    /// Latest fields per measurement, in the order first seen.
    values: Vec<(String, Vec<(String, FieldValue)>)>,
    /// The primary series: (measurement, field), fixed by the first one seen.
    primary: Option<(String, String)>,
    /// Its latest value and timestamp.
    last: Option<(f64, i64)>,
    spark: VecDeque<(i64, f64)>,
    /// The latest link report: (timestamp, fields).
    link: Option<(i64, Vec<(String, FieldValue)>)>,
    /// Recent ack latencies, in µs (a ring).
    acks_us: Vec<u32>,
    acks_next: usize,
    /// The last committed batch (registry's numbering) an ack latency was recorded for.
    pub(super) ack_batch: u64,
    /// The state last announced to subscribers (`sensor` events go out on a change).
    pub(super) announced: Option<State>,
    /// The latest `TCP_INFO` sample of the latest connection that carried it.
    pub(super) tcp: Option<TcpFigures>,
}

/// One `TCP_INFO` sample of a sensor's connection, as the live view shows it (`tcp` in the
/// SENSOR object). Taken by the server's connection task (`server::tcp_sample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpFigures {
    /// The kernel's smoothed RTT (srtt), µs.
    pub srtt_us: u32,
    /// Its mean deviation, µs.
    pub rttvar_us: u32,
    /// The windowed minimum RTT, µs (None: the kernel has none).
    pub min_rtt_us: Option<u32>,
    /// Segments retransmitted over the connection's life until this sample.
    pub retransmits: u32,
    /// When the sample was taken (ns since the epoch): an idle connection is not sampled
    /// again, so this says how old the figures are.
    pub sampled_at_ns: i64,
}

impl TcpFigures {
    /// The smoothed RTT, or None while the kernel has no RTT sample for the connection
    /// (it reports 0 then, e.g. after a SYN-ACK retransmitted without timestamps): a 0
    /// would read as a perfect link in the srtt histogram and gauge.
    pub fn srtt(&self) -> Option<Duration> {
        (self.srtt_us > 0).then(|| Duration::from_micros(u64::from(self.srtt_us)))
    }
}

impl Sensor {
    pub(super) fn new(peer: SocketAddr, mode: Mode) -> Self {
        Sensor {
            connections: 0,
            peer,
            mode,
            last_seen_ns: 0,
            disconnected_ns: 0,
            readings: 0,
            rate: Rate::default(),
            values: Vec::new(),
            primary: None,
            last: None,
            spark: VecDeque::new(),
            link: None,
            acks_us: Vec::new(),
            acks_next: 0,
            ack_batch: 0,
            announced: None,
            tcp: None,
        }
    }

    /// Its primary series (measurement, field), once it has one.
    pub(super) fn primary(&self) -> Option<&(String, String)> {
        self.primary.as_ref()
    }

    /// Its state at `now_ns`.
    pub fn state(&self, now_ns: i64, stale_after_ns: i64) -> State {
        if self.connections == 0 {
            State::Disconnected
        } else if now_ns.saturating_sub(self.last_seen_ns) > stale_after_ns {
            State::Stale
        } else {
            State::Connected
        }
    }

    /// Take one committed group of its readings (its fields are moved out, not copied).
    pub(super) fn apply(&mut self, group: &mut Group) {
        self.last_seen_ns = self.last_seen_ns.max(group.received_ns);
        if group.count == 0 {
            // Every reading was already stored (a replay) or refused: nothing new to show.
            return;
        }
        self.readings += group.count;
        self.rate.add(group.received_ns, group.count);
        let Some(mut fields) = group.fields.take() else {
            // The last reading was a repeat: only the stored readings' points are shown.
            if !group.is_link() {
                self.take_series(group, &[]);
            }
            return;
        };
        bound_fields(&mut fields);
        if group.is_link() {
            self.link = Some((group.time_ns, fields));
            return;
        }
        self.take_series(group, &fields);
        match self
            .values
            .iter()
            .position(|(measurement, _)| *measurement == group.measurement)
        {
            Some(at) => self.values[at].1 = fields,
            None if self.values.len() < MAX_MEASUREMENTS => {
                self.values.push((group.measurement.clone(), fields));
            }
            None => {}
        }
    }

    /// The group's points of the primary series (fixed by the first series seen), and its
    /// latest value from `fields`, the group's last reading (none: it was a repeat).
    fn take_series(&mut self, group: &Group, fields: &[(String, FieldValue)]) {
        let Some(series) = &group.series else { return };
        let primary = self
            .primary
            .get_or_insert_with(|| (group.measurement.clone(), series.clone()));
        if primary.0 != group.measurement || primary.1 != *series {
            return;
        }
        for &(time_ms, value) in &group.points {
            if self.spark.len() == SPARK_POINTS {
                self.spark.pop_front();
            }
            self.spark.push_back((time_ms, value));
        }
        if group.points.last().is_some() {
            // The last reading carries the series whenever the group has points, unless it
            // lacked the field: then the last point is the latest value.
            self.last = fields
                .iter()
                .find(|(name, _)| *name == primary.1)
                .and_then(|(_, value)| number(value))
                .map(|value| (value, group.time_ns))
                .or_else(|| self.spark.back().map(|&(ms, v)| (v, ms * 1_000_000)));
        }
    }

    /// Record one ack's latency (receipt → committed, the ack being written).
    pub(super) fn record_ack(&mut self, micros: u64) {
        let micros = u32::try_from(micros).unwrap_or(u32::MAX);
        if self.acks_us.len() < ACK_SAMPLES {
            self.acks_us.push(micros);
        } else {
            self.acks_us[self.acks_next] = micros;
        }
        self.acks_next = (self.acks_next + 1) % ACK_SAMPLES;
    }

    /// Ack latencies held.
    #[cfg(test)]
    pub(super) fn ack_samples(&self) -> usize {
        self.acks_us.len()
    }

    /// Readings per second over the last [`RATE_SECONDS`] whole seconds.
    pub fn rate(&self, now_ns: i64) -> f64 {
        self.rate.per_second(now_ns)
    }

    /// p50 and p99 of the recent ack latencies, in ms.
    fn ack_percentiles(&self) -> Option<(f64, f64)> {
        if self.acks_us.is_empty() {
            return None;
        }
        let mut sorted = self.acks_us.clone();
        sorted.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            f64::from(sorted[rank - 1]) / 1000.0
        };
        Some((at(0.50), at(0.99)))
    }

    /// The SENSOR object for `name` at `now_ns`.
    pub fn json<'a>(&'a self, name: &'a str, now_ns: i64, stale_after_ns: i64) -> SensorJson<'a> {
        SensorJson {
            sensor: name,
            state: self.state(now_ns, stale_after_ns),
            peer: self.peer,
            mode: self.mode.as_str(),
            connections: self.connections,
            last_seen_ns: self.last_seen_ns,
            readings: self.readings,
            rate: self.rate(now_ns),
            values: Values(&self.values),
            last: match (&self.primary, self.last) {
                (Some((measurement, field)), Some((value, time_ns))) => Some(Last {
                    measurement,
                    field,
                    value,
                    time_ns,
                }),
                _ => None,
            },
            spark: Spark(&self.spark),
            link: self.link.as_ref().map(|(time_ns, fields)| Link {
                time_ns: *time_ns,
                fields,
            }),
            ack_latency_ms: self
                .ack_percentiles()
                .map(|(p50, p99)| Percentiles { p50, p99 }),
            tcp: self.tcp.map(|tcp| TcpJson {
                srtt_ms: ms(tcp.srtt_us),
                rttvar_ms: ms(tcp.rttvar_us),
                min_rtt_ms: tcp.min_rtt_us.map(ms),
                retransmits: tcp.retransmits,
                sampled_at: tcp.sampled_at_ns,
            }),
        }
    }
}

/// One sensor's state copied out of the registry, to be serialized after its lock is
/// released (an `/api/sensors` page, a `sensor` event).
#[derive(Debug, Clone)]
pub struct Snapshot {
    name: String,
    sensor: Sensor,
    now_ns: i64,
    stale_after_ns: i64,
}

impl Snapshot {
    pub(super) fn new(name: &str, sensor: &Sensor, now_ns: i64, stale_after_ns: i64) -> Self {
        Snapshot {
            name: name.to_string(),
            sensor: sensor.clone(),
            now_ns,
            stale_after_ns,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The SENSOR object it was taken as.
    pub fn json(&self) -> SensorJson<'_> {
        self.sensor
            .json(&self.name, self.now_ns, self.stale_after_ns)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.json()).expect("a SENSOR object serializes to JSON")
    }

    /// About the length of its JSON, from above: what it pins in a subscriber's queue.
    pub fn approx_bytes(&self) -> u64 {
        let fields = |fields: &[(String, FieldValue)]| -> usize {
            fields
                .iter()
                .map(|(name, value)| {
                    name.len()
                        + 8
                        + match value {
                            FieldValue::Str(text) => 2 * text.len() + 2,
                            _ => 24,
                        }
                })
                .sum()
        };
        let s = &self.sensor;
        let values: usize = s
            .values
            .iter()
            .map(|(measurement, f)| measurement.len() + 8 + fields(f))
            .sum();
        let link = s.link.as_ref().map_or(0, |(_, f)| fields(f));
        let primary = s.primary.as_ref().map_or(0, |(m, f)| m.len() + f.len());
        (512 + 2 * self.name.len() + values + link + primary + 48 * s.spark.len()) as u64
    }
}

/// Keep the first [`MAX_FIELDS`] fields, and the first [`MAX_STRING_BYTES`] of strings.
fn bound_fields(fields: &mut Vec<(String, FieldValue)>) {
    fields.truncate(MAX_FIELDS);
    for (_, value) in fields.iter_mut() {
        if let FieldValue::Str(text) = value {
            if text.len() > MAX_STRING_BYTES {
                let mut end = MAX_STRING_BYTES;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                text.truncate(end);
            }
        }
    }
    fields.shrink_to_fit();
}

/// Readings per whole second, for the last [`RATE_SECONDS`] seconds.
#[derive(Debug, Default, Clone)]
struct Rate {
    /// (second since the epoch, readings received in it), indexed by second modulo the
    /// window.
    buckets: [(i64, u32); RATE_SECONDS],
    /// The second of the first reading: a young sensor's rate is over its life, not the
    /// whole window.
    first_second: Option<i64>,
}

impl Rate {
    fn add(&mut self, received_ns: i64, count: u64) {
        let second = received_ns.div_euclid(NS_PER_S);
        self.first_second.get_or_insert(second);
        let bucket = &mut self.buckets[second.rem_euclid(RATE_SECONDS as i64) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 = bucket
            .1
            .saturating_add(u32::try_from(count).unwrap_or(u32::MAX));
    }

    /// Over the whole seconds before `now_ns`'s (the current one is still filling).
    fn per_second(&self, now_ns: i64) -> f64 {
        let Some(first) = self.first_second else {
            return 0.0;
        };
        let now = now_ns.div_euclid(NS_PER_S);
        let from = (now - RATE_SECONDS as i64).max(first);
        let span = now - from;
        if span <= 0 {
            return 0.0;
        }
        let readings: u64 = self
            .buckets
            .iter()
            .filter(|(second, _)| *second >= from && *second < now)
            .map(|(_, n)| u64::from(*n))
            .sum();
        readings as f64 / span as f64
    }
}

/// The SENSOR object, borrowed from the registry while it is serialized.
#[derive(Debug, serde::Serialize)]
pub struct SensorJson<'a> {
    sensor: &'a str,
    pub(super) state: State,
    peer: SocketAddr,
    mode: &'static str,
    connections: u32,
    last_seen_ns: i64,
    readings: u64,
    rate: f64,
    values: Values<'a>,
    last: Option<Last<'a>>,
    spark: Spark<'a>,
    link: Option<Link<'a>>,
    ack_latency_ms: Option<Percentiles>,
    tcp: Option<TcpJson>,
}

/// `tcp`: [`TcpFigures`] in ms; `sampled_at` in ns since the epoch (as `last_seen_ns`).
#[derive(Debug, serde::Serialize)]
struct TcpJson {
    srtt_ms: f64,
    rttvar_ms: f64,
    min_rtt_ms: Option<f64>,
    retransmits: u32,
    sampled_at: i64,
}

fn ms(micros: u32) -> f64 {
    f64::from(micros) / 1000.0
}

#[derive(Debug)]
struct Values<'a>(&'a [(String, Vec<(String, FieldValue)>)]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (measurement, fields) in self.0 {
            map.serialize_entry(measurement, &Pairs(fields))?;
        }
        map.end()
    }
}

#[derive(Debug, serde::Serialize)]
struct Last<'a> {
    measurement: &'a str,
    field: &'a str,
    value: f64,
    time_ns: i64,
}

/// `[[time_ms, value], …]`, oldest first.
#[derive(Debug)]
struct Spark<'a>(&'a VecDeque<(i64, f64)>);

impl Serialize for Spark<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for point in self.0 {
            seq.serialize_element(point)?;
        }
        seq.end()
    }
}

/// `{"time_ns": …, <the link report's fields>}`.
#[derive(Debug)]
struct Link<'a> {
    time_ns: i64,
    fields: &'a [(String, FieldValue)],
}

impl Serialize for Link<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len() + 1))?;
        map.serialize_entry("time_ns", &self.time_ns)?;
        for (name, value) in self.fields {
            if name != "time_ns" {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

#[derive(Debug, serde::Serialize)]
struct Percentiles {
    p50: f64,
    p99: f64,
}

#[cfg(test)]
mod tests {
    use super::super::batch::tests::stored;
    use super::super::batch::{Carried, LiveBatch};
    use super::*;

    const S: i64 = NS_PER_S;

    fn sensor() -> Sensor {
        Sensor::new(SocketAddr::from(([127, 0, 0, 1], 5000)), Mode::Line)
    }

    fn apply(sensor: &mut Sensor, lines: &[(&str, i64)]) {
        let batch: Vec<_> = lines
            .iter()
            .map(|(line, received)| stored("s", line, *received))
            .collect();
        for group in &mut LiveBatch::build(
            &batch,
            None,
            crate::live::EventDetail::Nothing,
            &Carried::default(),
            |_| None,
        )
        .groups
        {
            sensor.apply(group);
        }
    }

    fn json(sensor: &Sensor, now_ns: i64) -> serde_json::Value {
        serde_json::to_value(sensor.json("s", now_ns, 30 * S)).unwrap()
    }

    #[test]
    fn state_follows_connections_and_silence() {
        let mut s = sensor();
        assert_eq!(s.state(0, 30 * S), State::Disconnected);
        s.connections = 1;
        s.last_seen_ns = 100 * S;
        assert_eq!(s.state(130 * S, 30 * S), State::Connected);
        assert_eq!(s.state(130 * S + 1, 30 * S), State::Stale);
        s.connections = 0;
        assert_eq!(s.state(100 * S, 30 * S), State::Disconnected);
    }

    #[test]
    fn link_reports_go_to_link_not_values() {
        let mut s = sensor();
        apply(
            &mut s,
            &[
                ("weather temperature=21.5,humidity=40i 1000000000", S),
                (
                    "sensorlink_link interval_s=10.0,sent=10i,lost=0i,rtt_p50_ms=0.4 2000000000",
                    2 * S,
                ),
            ],
        );
        let json = json(&s, 2 * S);
        assert_eq!(
            json["values"],
            serde_json::json!({"weather":{"temperature":21.5,"humidity":40}})
        );
        assert_eq!(
            json["link"],
            serde_json::json!({"time_ns":2_000_000_000i64,"interval_s":10.0,"sent":10,
                "lost":0,"rtt_p50_ms":0.4})
        );
        assert_eq!(
            json["last"],
            serde_json::json!({"measurement":"weather","field":"temperature","value":21.5,
                "time_ns":1_000_000_000i64})
        );
        assert_eq!(json["spark"], serde_json::json!([[1000, 21.5]]));
        assert_eq!(json["readings"], 2);
    }

    #[test]
    fn values_keep_the_first_measurements_only() {
        let mut s = sensor();
        let lines: Vec<String> = (0..12).map(|i| format!("m{i} v={i}i {i}")).collect();
        let batch: Vec<(&str, i64)> = lines.iter().map(|l| (l.as_str(), 1)).collect();
        apply(&mut s, &batch);
        apply(&mut s, &[("m3 v=33i 20", 2)]);
        let json = json(&s, 2);
        let values = json["values"].as_object().unwrap();
        assert_eq!(values.len(), MAX_MEASUREMENTS);
        assert_eq!(values["m3"]["v"], 33);
        assert!(!values.contains_key("m8"));
        // The primary series is m0's: other measurements never reach the sparkline.
        assert_eq!(json["last"]["measurement"], "m0");
        assert_eq!(json["spark"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn fields_and_strings_are_bounded() {
        let mut s = sensor();
        let many: Vec<String> = (0..40).map(|i| format!("f{i}={i}i")).collect();
        // 255 ASCII bytes then a 2-byte 'é' straddling the limit.
        let long = format!("{}é{}", "a".repeat(255), "b".repeat(1000));
        let line = format!("m {},s=\"{long}\" 1", many.join(","));
        apply(&mut s, &[(&line, 1)]);
        let link = format!("sensorlink_link {},s=\"{long}\" 2", many.join(","));
        apply(&mut s, &[(&link, 2)]);
        let json = json(&s, 2);
        let values = json["values"]["m"].as_object().unwrap();
        assert_eq!(values.len(), MAX_FIELDS);
        assert!(values.contains_key("f31") && !values.contains_key("f32"));
        assert_eq!(json["link"].as_object().unwrap().len(), MAX_FIELDS + 1);

        let mut fields = vec![("s".to_string(), FieldValue::Str(long.clone()))];
        bound_fields(&mut fields);
        assert_eq!(
            fields[0].1,
            FieldValue::Str("a".repeat(255)),
            "cut before 'é'"
        );
    }

    #[test]
    fn sparkline_keeps_the_last_points_across_batches() {
        let mut s = sensor();
        for i in 0..100i64 {
            apply(&mut s, &[(&format!("m v={i} {}", i * 1_000_000), i)]);
        }
        let json = json(&s, 100);
        let spark = json["spark"].as_array().unwrap();
        assert_eq!(spark.len(), SPARK_POINTS);
        assert_eq!(spark[0], serde_json::json!([40, 40.0]));
        assert_eq!(spark[59], serde_json::json!([99, 99.0]));
        assert_eq!(json["last"]["value"], 99.0);
    }

    #[test]
    fn rate_is_over_whole_seconds() {
        let mut s = sensor();
        // Two readings per second for 20 s.
        for second in 0..20 {
            apply(
                &mut s,
                &[("m v=1 1", second * S), ("m v=1 2", second * S + 1)],
            );
        }
        assert_eq!(s.rate(20 * S), 2.0);
        // Within its first second a sensor has no whole second yet.
        let mut young = sensor();
        apply(&mut young, &[("m v=1 1", 5 * S)]);
        assert_eq!(young.rate(5 * S + 1), 0.0);
        assert_eq!(young.rate(6 * S), 1.0);
        // Silent for longer than the window: nothing.
        assert_eq!(s.rate(40 * S), 0.0);
    }

    #[test]
    fn an_srtt_of_zero_is_no_sample() {
        let figures = |srtt_us| TcpFigures {
            srtt_us,
            rttvar_us: 0,
            min_rtt_us: None,
            retransmits: 0,
            sampled_at_ns: 0,
        };
        assert_eq!(figures(0).srtt(), None);
        assert_eq!(figures(40_500).srtt(), Some(Duration::from_micros(40_500)));
    }

    #[test]
    fn tcp_figures_show_in_ms_with_their_sample_time() {
        let mut s = sensor();
        assert!(json(&s, 0)["tcp"].is_null(), "never sampled: null");
        s.tcp = Some(TcpFigures {
            srtt_us: 40_500,
            rttvar_us: 250,
            min_rtt_us: None,
            retransmits: 3,
            sampled_at_ns: 7 * S,
        });
        assert_eq!(
            json(&s, 8 * S)["tcp"],
            serde_json::json!({"srtt_ms": 40.5, "rttvar_ms": 0.25, "min_rtt_ms": null,
                "retransmits": 3, "sampled_at": 7 * S})
        );
    }

    #[test]
    fn ack_percentiles_over_recent_acks() {
        let mut s = sensor();
        assert!(json(&s, 0)["ack_latency_ms"].is_null());
        for micros in 1..=100 {
            s.record_ack(micros * 1000);
        }
        // Only the last ACK_SAMPLES (37..=100 ms) count.
        let json = json(&s, 0);
        assert_eq!(json["ack_latency_ms"]["p50"], 68.0);
        assert_eq!(json["ack_latency_ms"]["p99"], 100.0);
    }
}
