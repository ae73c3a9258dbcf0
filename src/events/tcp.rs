//! The kernel's view of sensor connections (`TCP_INFO` samples, see
//! `crate::server::tcp_sample`): a server-wide srtt histogram and retransmit counter, and
//! per-sensor gauges for a bounded set of sensors.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use super::table::names::{SENSOR_TCP_RETRANSMITS, SENSOR_TCP_SRTT, TCP_RETRANSMITS, TCP_SRTT};
use super::{Event, Telemetry};

/// Most sensors that ever get a `sensor` label on the `sensorlink_sensor_tcp_*` gauges:
/// the first ones sampled keep theirs for the server's life, the rest are in
/// `/api/sensors` only (the cardinality rule of `events/table.rs`).
pub const MAX_TCP_LABELED_SENSORS: usize = 100;

/// The handles of the TCP metrics (a part of [`Telemetry`]).
#[derive(Debug)]
pub(super) struct TcpHandles {
    srtt: Histogram,
    retransmits: Counter,
    /// The labelled sensors' gauges: (srtt, retransmits). Bounded by
    /// [`MAX_TCP_LABELED_SENSORS`]; a sensor not in it when full never gets one.
    sensors: Mutex<HashMap<String, (Gauge, Gauge)>>,
}

impl TcpHandles {
    pub(super) fn register() -> Self {
        TcpHandles {
            srtt: metrics::histogram!(TCP_SRTT),
            retransmits: metrics::counter!(TCP_RETRANSMITS),
            sensors: Mutex::new(HashMap::new()),
        }
    }

    /// Run `f` on `sensor`'s gauges, registering them if it may have a label.
    fn with_sensor(&self, sensor: &str, f: impl FnOnce(&(Gauge, Gauge))) {
        // A panic elsewhere cannot leave the map half-updated: inserts are single calls.
        let mut sensors = self.sensors.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gauges) = sensors.get(sensor) {
            f(gauges);
            return;
        }
        if sensors.len() >= MAX_TCP_LABELED_SENSORS {
            return;
        }
        let label = sensor.to_string();
        let gauges = (
            metrics::gauge!(SENSOR_TCP_SRTT, "sensor" => label.clone()),
            metrics::gauge!(SENSOR_TCP_RETRANSMITS, "sensor" => label.clone()),
        );
        f(&gauges);
        sensors.insert(label, gauges);
    }
}

/// One connection's `TCP_INFO` sample.
pub struct TcpSampled {
    /// The kernel's smoothed RTT (None: no RTT sample yet; not recorded).
    pub srtt: Option<Duration>,
    /// Segments retransmitted since the connection's previous sample.
    pub retransmits: u64,
}

impl Event for TcpSampled {
    fn emit_to(self, t: &Telemetry) {
        if let Some(srtt) = self.srtt {
            t.tcp.srtt.record(srtt.as_secs_f64());
        }
        if self.retransmits > 0 {
            t.tcp.retransmits.increment(self.retransmits);
        }
    }
}

/// A sensor's connection was sampled: its gauges, if it has (or may still get) a label.
pub struct SensorTcpSampled<'a> {
    pub sensor: &'a str,
    /// None: no RTT sample yet; the gauge keeps its value.
    pub srtt: Option<Duration>,
    /// Segments retransmitted over the connection's life so far.
    pub retransmits_total: u64,
}

impl Event for SensorTcpSampled<'_> {
    fn emit_to(self, t: &Telemetry) {
        t.tcp.with_sensor(self.sensor, |(srtt, retransmits)| {
            if let Some(value) = self.srtt {
                srtt.set(value.as_secs_f64());
            }
            retransmits.set(self.retransmits_total as f64);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::sample;
    use super::super::{describe, prometheus_builder};
    use super::*;

    fn render(f: impl FnOnce(&Telemetry)) -> String {
        let recorder = prometheus_builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            f(&Telemetry::register());
        });
        handle.render()
    }

    #[test]
    fn samples_feed_the_histogram_and_the_counter() {
        let text = render(|t| {
            for (srtt_us, retransmits) in [(40, 0), (60, 3), (50_000, 0)] {
                TcpSampled {
                    srtt: Some(Duration::from_micros(srtt_us)),
                    retransmits,
                }
                .emit_to(t);
            }
            // A sample without an RTT counts its retransmits, not an srtt of 0.
            TcpSampled {
                srtt: None,
                retransmits: 2,
            }
            .emit_to(t);
        });
        assert_eq!(
            sample(&text, "sensorlink_tcp_srtt_seconds_count"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "sensorlink_tcp_srtt_seconds_bucket{le=\"0.0001\"}"),
            Some(2.0),
            "{text}"
        );
        assert_eq!(sample(&text, "sensorlink_tcp_retransmits_total"), Some(5.0));
    }

    /// The help texts (literals in the table) and the docs state the bound in force.
    #[test]
    fn help_and_docs_state_the_label_bound() {
        let bound = format!("first {MAX_TCP_LABELED_SENSORS} sensors");
        for name in super::super::table::PER_SENSOR {
            let metric = super::super::METRICS
                .iter()
                .find(|metric| metric.name == *name)
                .expect("PER_SENSOR names are in METRICS");
            assert!(
                metric.help.contains(&bound),
                "{}: {}",
                metric.name,
                metric.help
            );
        }
        let doc = include_str!("../../docs/http-api.md");
        assert!(
            doc.contains(&format!("**{bound} the\nserver samples**")),
            "docs/http-api.md"
        );
    }

    #[test]
    fn only_the_first_sensors_get_a_label() {
        let text = render(|t| {
            for i in 0..MAX_TCP_LABELED_SENSORS + 5 {
                SensorTcpSampled {
                    sensor: &format!("s{i}"),
                    srtt: Some(Duration::from_millis(2)),
                    retransmits_total: 1,
                }
                .emit_to(t);
            }
            // A labelled sensor's gauges follow its latest sample.
            SensorTcpSampled {
                sensor: "s0",
                srtt: Some(Duration::from_millis(5)),
                retransmits_total: 7,
            }
            .emit_to(t);
        });
        let srtt_series = text
            .lines()
            .filter(|line| line.starts_with("sensorlink_sensor_tcp_srtt_seconds{"))
            .count();
        assert_eq!(srtt_series, MAX_TCP_LABELED_SENSORS, "{text}");
        assert_eq!(
            sample(&text, "sensorlink_sensor_tcp_srtt_seconds{sensor=\"s0\"}"),
            Some(0.005)
        );
        assert_eq!(
            sample(&text, "sensorlink_sensor_tcp_retransmits{sensor=\"s0\"}"),
            Some(7.0)
        );
        let last = format!("s{}", MAX_TCP_LABELED_SENSORS);
        assert!(!text.contains(&format!("sensor=\"{last}\"")), "{text}");
        for name in super::super::table::PER_SENSOR {
            assert!(text.contains(&format!("# TYPE {name} gauge\n")), "{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{text}");
        }
    }
}
