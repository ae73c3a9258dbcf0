//! What the live view needs from one batch, taken before the batch goes to the store.
//!
//! The store consumes the batch, and the live view may only show it after its commit, so a
//! connection keeps this summary beside the batch's replies and hands it to the
//! [`Registry`](super::Registry) once the commit is answered. It is built in one pass with
//! no lock and no per-reading allocation: readings are grouped by (sensor, measurement),
//! only each group's last fields are cloned, and only the group's primary-series values are
//! kept (at most [`SPARK_POINTS`] each). The full readings are serialized for the SSE
//! `reading` events only while someone is subscribed.

use std::time::Instant;

use rustc_hash::FxHashMap;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::hub::EventDetail;
use crate::protocol::{FieldValue, Reading};
use crate::store::StoredReading;

/// The measurement of the client's link-health reports (see docs/http-api.md).
pub const LINK_MEASUREMENT: &str = "sensorlink_link";

/// Points kept per sensor for its sparkline.
pub const SPARK_POINTS: usize = 60;

/// Groups found by a scan up to this many; past it, through a hash index.
const SCANNED_GROUPS: usize = 8;

/// A connection's sensors, each with its primary series (measurement, field) once known:
/// a batch keeps that field's points even when its first reading lacks it.
pub type Carried = FxHashMap<String, Option<(String, String)>>;

/// One batch, summarized for the live view.
#[derive(Debug, Default)]
pub struct LiveBatch {
    pub(super) groups: Vec<Group>,
    /// Receipt of the batch's first reading: the start of its ack latency.
    pub(super) first_received: Option<Instant>,
    /// The readings as SSE `reading` payloads (only built while someone subscribes):
    /// (index into `groups`, JSON); every reading, or with `latest_only` each group's newest.
    pub(super) events: Vec<(usize, String)>,
    /// Only each group's newest reading was serialized: every subscriber folds.
    pub(super) latest_only: bool,
    /// Each reading's index into `groups`, so readings the store found already stored can
    /// be taken back out of the counts ([`LiveBatch::forget`]).
    group_of: Vec<u32>,
}

/// The readings of one sensor and one measurement in a batch.
#[derive(Debug)]
pub(super) struct Group {
    pub(super) sensor: String,
    pub(super) measurement: String,
    pub(super) count: u64,
    /// The fields of the group's last reading, and its timestamp. `None`: that reading was a
    /// repeat ([`LiveBatch::forget`]), whose fields the store did not take (a conflict's were
    /// refused): the view keeps its previous values.
    pub(super) fields: Option<Vec<(String, FieldValue)>>,
    pub(super) time_ns: i64,
    /// When the server received the group's last reading.
    pub(super) received_ns: i64,
    /// The sensor's primary field when known for this measurement (see [`Carried`]), else
    /// the first numeric field of the group's first reading that has one; and that field's
    /// values (`[time_ms, value]`, oldest first) in the readings that carry it, by name.
    pub(super) series: Option<String>,
    pub(super) points: Vec<(i64, f64)>,
    /// The batch index of each point's reading, so a repeat's point can be dropped.
    point_readings: Vec<u32>,
    /// Index of the last reading (in the batch) while building.
    last: usize,
    /// A link report (`sensorlink_link`): no sparkline, no `values`.
    link: bool,
}

impl Group {
    pub(super) fn is_link(&self) -> bool {
        self.link
    }
}

impl LiveBatch {
    /// Summarize `batch`; `detail` says which readings to serialize for SSE subscribers
    /// (every one, each group's newest, or none).
    /// `carried` gives the primary series of the connection's sensors, `lookup` that of
    /// one it has not carried yet (asked once per new group).
    pub fn build(
        batch: &[StoredReading],
        first_received: Option<Instant>,
        detail: EventDetail,
        carried: &Carried,
        lookup: impl Fn(&str) -> Option<(String, String)>,
    ) -> Self {
        let mut groups: Vec<Group> = Vec::new();
        let mut events = Vec::new();
        let mut group_of = Vec::with_capacity(batch.len());
        // Past a few groups a scan per reading would be quadratic.
        let mut index_of: FxHashMap<(&str, &str), usize> = FxHashMap::default();
        // Most batches hold one group: try the last one matched before scanning.
        let mut hint = 0;
        for (index, stored) in batch.iter().enumerate() {
            let reading = &stored.reading;
            let found = match groups.get(hint) {
                Some(group) if is_group(group, stored) => Some(hint),
                _ if groups.len() > SCANNED_GROUPS => index_of
                    .get(&(stored.sensor.as_str(), reading.measurement.as_str()))
                    .copied(),
                _ => groups.iter().position(|group| is_group(group, stored)),
            };
            let at = match found {
                Some(at) => at,
                None => {
                    let link = reading.measurement == LINK_MEASUREMENT;
                    // Sized once (most batches are one group); a link report has no points.
                    let points = if link {
                        0
                    } else {
                        (batch.len() - index).min(2 * SPARK_POINTS)
                    };
                    let known = match carried.get(&stored.sensor) {
                        Some(known) => known.clone(),
                        None if link => None,
                        None => lookup(&stored.sensor),
                    };
                    let series = known
                        .filter(|(measurement, _)| *measurement == reading.measurement)
                        .map(|(_, field)| field);
                    groups.push(Group {
                        sensor: stored.sensor.clone(),
                        measurement: reading.measurement.clone(),
                        count: 0,
                        fields: None,
                        time_ns: 0,
                        received_ns: 0,
                        series,
                        points: Vec::with_capacity(points),
                        point_readings: Vec::with_capacity(points),
                        last: index,
                        link,
                    });
                    if groups.len() > SCANNED_GROUPS {
                        if index_of.is_empty() {
                            // Keys borrow from the batch (a group's last reading is its own).
                            for (at, group) in groups.iter().enumerate() {
                                let last = &batch[group.last];
                                let key = (last.sensor.as_str(), last.reading.measurement.as_str());
                                index_of.insert(key, at);
                            }
                        } else {
                            index_of.insert(
                                (stored.sensor.as_str(), reading.measurement.as_str()),
                                groups.len() - 1,
                            );
                        }
                    }
                    groups.len() - 1
                }
            };
            hint = at;
            // A batch never nears 2^32 readings (the store's transaction is far smaller).
            group_of.push(u32::try_from(at).unwrap_or(u32::MAX));
            let reading_index = u32::try_from(index).unwrap_or(u32::MAX);
            let group = &mut groups[at];
            group.count += 1;
            group.last = index;
            group.received_ns = stored.received_ns;
            let time_ns = stored.timestamp_ns();
            if !group.is_link() {
                let value = match &group.series {
                    // By name: readings may order their fields differently.
                    Some(series) => field_number(reading, series),
                    None => first_numeric(reading).map(|(name, value)| {
                        group.series = Some(name.to_string());
                        value
                    }),
                };
                if let Some(value) = value {
                    push_point(group, reading_index, time_ns, value);
                }
            }
            if detail == EventDetail::Every {
                events.push((at, reading_json(&stored.sensor, reading, time_ns)));
            }
        }
        let latest_only = detail == EventDetail::Latest;
        if latest_only {
            events.extend(groups.iter().enumerate().map(|(at, group)| {
                let last = &batch[group.last];
                (
                    at,
                    reading_json(&last.sensor, &last.reading, last.timestamp_ns()),
                )
            }));
        }
        for group in &mut groups {
            let last = &batch[group.last];
            group.fields = Some(last.reading.fields.clone());
            group.time_ns = last.timestamp_ns();
            if group.points.len() > SPARK_POINTS {
                let cut = group.points.len() - SPARK_POINTS;
                group.points.drain(..cut);
                group.point_readings.drain(..cut);
            }
        }
        LiveBatch {
            groups,
            first_received,
            events,
            latest_only,
            group_of,
        }
    }

    /// The store found these readings already stored (duplicates, conflicts): they are not
    /// new readings, so they leave the counts (a sensor's `readings` and rate), the
    /// sparkline points and the SSE `reading` events. A group whose last reading is one of
    /// them loses its fields (the readings themselves are gone), so a refused or replayed
    /// value never shows as the sensor's latest. `repeats` are by ascending index.
    pub fn forget(&mut self, repeats: &[crate::store::Repeat]) {
        if repeats.is_empty() {
            return;
        }
        let mut touched = vec![false; self.groups.len()];
        for repeat in repeats {
            let Some(&at) = self.group_of.get(repeat.index) else {
                continue;
            };
            if let Some(group) = self.groups.get_mut(at as usize) {
                group.count = group.count.saturating_sub(1);
                if group.last == repeat.index {
                    group.fields = None;
                }
                touched[at as usize] = true;
            }
        }
        let repeated = |index: &u32| {
            repeats
                .binary_search_by_key(&(*index as usize), |r| r.index)
                .is_ok()
        };
        for (group, _) in self.groups.iter_mut().zip(touched).filter(|(_, t)| *t) {
            let mut keep = group.point_readings.iter().map(|i| !repeated(i));
            group.points.retain(|_| keep.next().unwrap_or(true));
            group.point_readings.retain(|i| !repeated(i));
        }
        if self.latest_only {
            // A group's newest reading was a repeat: its event goes (the group's other new
            // readings then show in no event, only in the counts).
            let groups = &self.groups;
            self.events
                .retain(|(at, _)| groups.get(*at).is_some_and(|g| g.fields.is_some()));
        } else if self.events.len() == self.group_of.len() {
            // One event per reading, in batch order.
            let mut repeated = repeats.iter().map(|r| r.index).peekable();
            let mut index = 0;
            self.events.retain(|_| {
                let keep = repeated.next_if_eq(&index).is_none();
                index += 1;
                keep
            });
        }
    }

    /// Readings in the batch.
    pub fn len(&self) -> u64 {
        self.groups.iter().map(|group| group.count).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

fn is_group(group: &Group, stored: &StoredReading) -> bool {
    group.sensor == stored.sensor && group.measurement == stored.reading.measurement
}

/// Keep at most twice the sparkline's length while building (amortized trimming).
fn push_point(group: &mut Group, reading: u32, time_ns: i64, value: f64) {
    if group.points.len() >= 2 * SPARK_POINTS {
        let cut = group.points.len() - SPARK_POINTS;
        group.points.drain(..cut);
        group.point_readings.drain(..cut);
    }
    group.points.push((time_ns.div_euclid(1_000_000), value));
    group.point_readings.push(reading);
}

/// The first field with a number in it, as f64.
pub(super) fn first_numeric(reading: &Reading) -> Option<(&str, f64)> {
    reading
        .fields
        .iter()
        .find_map(|(name, value)| Some((name.as_str(), number(value)?)))
}

/// The field `name`'s value as f64, if it is there and a number.
fn field_number(reading: &Reading, name: &str) -> Option<f64> {
    reading
        .fields
        .iter()
        .find(|(field, _)| field == name)
        .and_then(|(_, value)| number(value))
}

pub(super) fn number(value: &FieldValue) -> Option<f64> {
    match value {
        FieldValue::Float(v) => Some(*v),
        FieldValue::Int(v) => Some(*v as f64),
        FieldValue::UInt(v) => Some(*v as f64),
        FieldValue::Str(_) | FieldValue::Bool(_) => None,
    }
}

/// Serializes `pairs` as a JSON object (tags and fields keep their wire order).
pub(super) struct Pairs<'a, V>(pub(super) &'a [(String, V)]);

impl<V: Serialize> Serialize for Pairs<'_, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// The SSE `reading` payload: `{"sensor","measurement","tags","fields","time_ns"}`.
fn reading_json(sensor: &str, reading: &Reading, time_ns: i64) -> String {
    #[derive(serde::Serialize)]
    struct Json<'a> {
        sensor: &'a str,
        measurement: &'a str,
        tags: Pairs<'a, String>,
        fields: Pairs<'a, FieldValue>,
        time_ns: i64,
    }
    serde_json::to_string(&Json {
        sensor,
        measurement: &reading.measurement,
        tags: Pairs(&reading.tags),
        fields: Pairs(&reading.fields),
        time_ns,
    })
    .expect("a reading of strings and finite numbers serializes to JSON")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A stored reading of `sensor`, parsed from one line of line protocol.
    pub(crate) fn stored(sensor: &str, line: &str, received_ns: i64) -> StoredReading {
        let reading = crate::protocol::ilp::parse(line.as_bytes()).expect("a valid test line");
        StoredReading {
            reading,
            sensor: sensor.to_string(),
            received_ns,
        }
    }

    /// `batch` summarized by a connection that carries no sensor yet.
    fn summarize(batch: &[StoredReading], detail: EventDetail) -> LiveBatch {
        LiveBatch::build(batch, None, detail, &Carried::default(), |_| None)
    }

    /// Readings the store already held leave their group's count and the SSE events.
    #[test]
    fn forgotten_readings_leave_counts_and_events() {
        let batch = [
            stored("a", "w t=1 1", 1),
            stored("b", "w t=2 1", 2),
            stored("a", "w t=3 2", 3),
            stored("a", "w t=4 1", 4),
        ];
        let mut live = summarize(&batch, EventDetail::Every);
        assert_eq!(live.events.len(), 4);
        let repeat = |index| crate::store::Repeat {
            index,
            conflict: None,
        };
        live.forget(&[repeat(1), repeat(3)]);
        let counts: Vec<_> = live
            .groups
            .iter()
            .map(|g| (g.sensor.as_str(), g.count))
            .collect();
        assert_eq!(counts, [("a", 2), ("b", 0)]);
        assert_eq!(live.len(), 2);
        let kept: Vec<_> = live
            .events
            .iter()
            .map(|(at, json)| (*at, json.contains("\"t\":3")))
            .collect();
        assert_eq!(kept, [(0, false), (0, true)], "{:?}", live.events);
    }

    /// Folding subscribers only: each group's newest reading is serialized, and one whose
    /// newest was a repeat loses its event.
    #[test]
    fn latest_only_serializes_each_groups_newest_reading() {
        let batch = [
            stored("a", "w t=1 1", 1),
            stored("b", "w t=2 1", 2),
            stored("a", "w t=3 2", 3),
            stored("a", "v t=4 1", 4),
            stored("b", "w t=5 3", 5),
        ];
        let mut live = summarize(&batch, EventDetail::Latest);
        assert!(live.latest_only);
        let newest: Vec<_> = live
            .events
            .iter()
            .map(|(at, json)| {
                let value: serde_json::Value = serde_json::from_str(json).expect("JSON");
                (*at, value["fields"]["t"].as_f64().expect("t"))
            })
            .collect();
        // Groups in first-seen order: a/w, b/w, a/v.
        assert_eq!(newest, [(0, 3.0), (1, 5.0), (2, 4.0)]);
        live.forget(&[crate::store::Repeat {
            index: 4,
            conflict: None,
        }]);
        let left: Vec<_> = live.events.iter().map(|(at, _)| *at).collect();
        assert_eq!(left, [0, 2], "b's newest was a repeat");
        assert_eq!(live.groups[1].count, 1);
    }

    #[test]
    fn readings_are_grouped_by_sensor_and_measurement() {
        let batch = [
            stored("a", "weather temperature=20.5,humidity=40i 1000000", 1),
            stored("a", "weather temperature=21.5,humidity=41i 2000000", 2),
            stored("b", "weather temperature=5 3000000", 3),
            stored("a", "sensorlink_link sent=10i,rtt_p50_ms=0.4 4000000", 4),
            stored("a", "weather temperature=22.5,humidity=42i 5000000", 5),
        ];
        let live = summarize(&batch, EventDetail::Nothing);
        assert_eq!(live.len(), 5);
        assert!(live.events.is_empty(), "no subscriber: no payloads");
        let names: Vec<_> = live
            .groups
            .iter()
            .map(|g| (g.sensor.as_str(), g.measurement.as_str(), g.count))
            .collect();
        assert_eq!(
            names,
            [
                ("a", "weather", 3),
                ("b", "weather", 1),
                ("a", "sensorlink_link", 1)
            ]
        );
        let a = &live.groups[0];
        assert_eq!(a.series.as_deref(), Some("temperature"));
        assert_eq!(a.points, [(1, 20.5), (2, 21.5), (5, 22.5)]);
        assert_eq!(a.time_ns, 5_000_000);
        assert_eq!(a.received_ns, 5);
        assert_eq!(
            a.fields.as_ref().expect("built")[1],
            ("humidity".to_string(), FieldValue::Int(42))
        );
        let link = &live.groups[2];
        assert!(link.is_link());
        assert!(link.points.is_empty(), "link reports are not a sparkline");
    }

    #[test]
    fn only_the_last_points_are_kept() {
        let batch: Vec<_> = (0..500)
            .map(|i| stored("a", &format!("m v={i}i {}", i * 1_000_000), i))
            .collect();
        let live = summarize(&batch, EventDetail::Nothing);
        let points = &live.groups[0].points;
        assert_eq!(points.len(), SPARK_POINTS);
        assert_eq!(points.first(), Some(&(440, 440.0)));
        assert_eq!(points.last(), Some(&(499, 499.0)));
    }

    #[test]
    fn events_carry_each_reading_as_json() {
        let batch = [stored("k", "w,sensor=k t=1.5,ok=true,s=\"x\" 7", 1)];
        let live = summarize(&batch, EventDetail::Every);
        assert_eq!(live.events.len(), 1);
        let json: serde_json::Value = serde_json::from_str(&live.events[0].1).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"sensor":"k","measurement":"w","tags":{"sensor":"k"},
                "fields":{"t":1.5,"ok":true,"s":"x"},"time_ns":7})
        );
    }

    #[test]
    fn a_series_needs_a_numeric_field() {
        let batch = [
            stored("a", "m s=\"x\",ok=true 1000000", 1),
            stored("a", "m s=\"y\",v=3 2000000", 2),
            stored("a", "m w=4,v=5 3000000", 3),
        ];
        let live = summarize(&batch, EventDetail::Nothing);
        assert_eq!(live.groups[0].series.as_deref(), Some("v"));
        assert_eq!(
            live.groups[0].points,
            [(2, 3.0), (3, 5.0)],
            "v by name, though w comes first in the third"
        );
    }

    /// A batch whose first reading lacks the sensor's primary field still keeps that
    /// field's points, once the connection knows the primary.
    #[test]
    fn the_known_primary_series_is_kept() {
        let batch = [
            stored("a", "m h=40i 1000000", 1),
            stored("a", "m t=20.5,h=41i 2000000", 2),
        ];
        let mut carried = Carried::default();
        carried.insert("a".into(), Some(("m".into(), "t".into())));
        let live = LiveBatch::build(&batch, None, EventDetail::Nothing, &carried, |_| None);
        assert_eq!(live.groups[0].series.as_deref(), Some("t"));
        assert_eq!(live.groups[0].points, [(2, 20.5)]);
        // A sensor the connection has not carried: asked of the registry.
        let live = LiveBatch::build(
            &batch,
            None,
            EventDetail::Nothing,
            &Carried::default(),
            |sensor| (sensor == "a").then(|| ("m".to_string(), "t".to_string())),
        );
        assert_eq!(live.groups[0].points, [(2, 20.5)]);
        // Another measurement of the sensor: its own first numeric field.
        let other = [stored("a", "n x=1 1000000", 1)];
        let live = LiveBatch::build(&other, None, EventDetail::Nothing, &carried, |_| None);
        assert_eq!(live.groups[0].series.as_deref(), Some("x"));
    }

    /// Many groups, interleaved: each reading lands in its own group (through the index
    /// past the first few).
    #[test]
    fn many_groups_are_grouped_right() {
        let batch: Vec<_> = (0..200)
            .map(|i| stored(&format!("s{}", i % 20), &format!("m v={i}i {i}"), i))
            .collect();
        let live = summarize(&batch, EventDetail::Nothing);
        assert_eq!(live.groups.len(), 20);
        for (at, group) in live.groups.iter().enumerate() {
            assert_eq!(group.sensor, format!("s{at}"));
            assert_eq!(group.count, 10);
            let expected: Vec<(i64, f64)> = (0..10)
                .map(|k| {
                    let i = (k * 20 + at) as i64;
                    (i.div_euclid(1_000_000), i as f64)
                })
                .collect();
            assert_eq!(group.points, expected);
        }
    }
}
