//! Events of the live view: sensors tracked, evicted and untracked, and SSE subscribers
//! (open, as a gauge held for the subscription's life; lagging behind).

use super::{telemetry, Event, Telemetry};
use crate::server::logging;

/// The live view's sensor count changed.
pub struct SensorsTracked {
    pub count: usize,
}

impl Event for SensorsTracked {
    fn emit_to(self, t: &Telemetry) {
        t.live_sensors.set(self.count as f64);
    }
}

/// A disconnected sensor left the live view to make room (its history stays in the store).
pub struct SensorEvicted<'a> {
    pub sensor: &'a str,
}

impl Event for SensorEvicted<'_> {
    fn emit_to(self, t: &Telemetry) {
        tracing::debug!(
            sensor = self.sensor,
            "live view full; evicted the sensor disconnected longest"
        );
        t.live_sensors_evicted.increment(1);
    }
}

/// A new sensor's readings were stored but the live view, full of connected sensors, has
/// no room for it.
pub struct SensorUntracked<'a> {
    pub sensor: &'a str,
}

impl Event for SensorUntracked<'_> {
    fn emit_to(self, t: &Telemetry) {
        if logging::allow_untracked_sensor() {
            tracing::warn!(
                sensor = self.sensor,
                "live view full of connected sensors; not tracking a new one"
            );
        }
        t.live_sensors_untracked.increment(1);
    }
}

/// An `/api/events` subscriber fell behind its bounded queue: its stream ends.
pub struct SubscriberLagged {
    pub queued: usize,
}

impl Event for SubscriberLagged {
    fn emit_to(self, t: &Telemetry) {
        tracing::info!(
            queued = self.queued,
            "event subscriber fell behind; ending its stream"
        );
        t.sse_lagged.increment(1);
    }
}

/// An open `/api/events` stream: counted while it lives (RAII, as [`OpenConnection`]).
#[derive(Debug)]
pub struct SubscriberOpen(&'static Telemetry);

impl SubscriberOpen {
    pub fn new() -> Self {
        let t = telemetry();
        t.sse_subscribers.increment(1.0);
        SubscriberOpen(t)
    }
}

impl Default for SubscriberOpen {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SubscriberOpen {
    fn drop(&mut self) {
        self.0.sse_subscribers.decrement(1.0);
    }
}
