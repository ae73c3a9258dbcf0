//! The live view: every sensor's current state (`/api/sensors`) and the stream of what
//! changes (`/api/events`), fed only by committed readings.
//!
//! A connection summarizes each batch before handing it to the store ([`LiveBatch`]),
//! keeps the summary beside the batch's replies, and gives it to the [`Registry`] once the
//! commit is answered ([`LiveConnection::committed`]): one lock per committed batch (or per
//! run of batches answered together), nothing per reading on the hot path. Connection
//! close updates `connections` through the same handle (on drop, so every exit path does).
//!
//! - [`batch`]: the pre-commit summary of one batch.
//! - [`sensor`]: one sensor's bounded state and its SENSOR JSON.
//! - [`hub`]: the subscribers' bounded queues.
//!
//! Locking: the registry's lock is held only to update or copy sensors, in chunks of
//! [`SCAN_CHUNK`] names when scanning, so a commit (and the ack behind it) never waits
//! for a whole scan; JSON is written after it is released (pages from [`Snapshot`]s,
//! `sensor` events by their reader). Events are published to the hub while the registry
//! lock is held (lock order registry → hub; publishing never waits), so subscribers see
//! a sensor's changes in the order they happened.
//!
//! `stale` is evaluated when read, and a periodic [`Registry::sweep`] announces the
//! transitions to subscribers. At most [`MAX_SENSORS`] sensors are tracked; the one
//! disconnected longest is evicted first.

pub mod batch;
pub mod hub;
pub mod sensor;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use batch::{Carried, LiveBatch};
pub use hub::{
    EventDetail, EventGroup, LiveEvent, Next, ReadingEvents, SensorEvent, SensorFilter,
    Subscription, MAX_FILTER_SENSORS,
};
pub use sensor::{SensorJson, Snapshot, State, TcpFigures};

use crate::events::{
    self, Event as _, Mode, SensorEvicted, SensorTcpSampled, SensorUntracked, SensorsTracked,
    Telemetry,
};
use crate::timefmt::now_ns;
use hub::Hub;
use sensor::Sensor;

/// Most sensors tracked at once.
pub const MAX_SENSORS: usize = 100_000;

/// Most sensors in one `/api/sensors` page.
pub const MAX_PAGE: usize = 1000;

/// How often silent sensors are checked for turning stale.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Most `sensor` events one sweep publishes; the rest go out at the next sweeps.
pub const SWEEP_MAX_EVENTS: usize = 1024;

/// Sensors visited per hold of the registry lock when scanning them all.
pub const SCAN_CHUNK: usize = 4096;

/// The live view's settings.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// A connected sensor silent this long is `stale`.
    pub stale_after: Duration,
    pub max_sensors: usize,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            stale_after: DEFAULT_STALE_AFTER,
            max_sensors: MAX_SENSORS,
        }
    }
}

impl From<&crate::server::ServerConfig> for LiveConfig {
    fn from(config: &crate::server::ServerConfig) -> Self {
        LiveConfig {
            stale_after: config.stale_after,
            ..LiveConfig::default()
        }
    }
}

/// `--stale-after`'s default.
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(30);

/// Every tracked sensor, and the subscribers to their changes.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    hub: Hub,
    stale_after_ns: i64,
    max_sensors: usize,
    telemetry: Option<&'static Telemetry>,
}

#[derive(Debug, Default)]
struct Inner {
    sensors: BTreeMap<String, Sensor>,
    /// Disconnected sensors by (when, name): the eviction order.
    disconnected: BTreeSet<(i64, String)>,
    /// Numbers committed batches, so a sensor records one ack latency per batch.
    batches: u64,
}

/// `/api/sensors` parameters, validated.
#[derive(Debug, Clone)]
pub struct SensorQuery {
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// Only these states (`None`: all).
    pub states: Option<Vec<State>>,
    pub limit: usize,
    pub offset: usize,
}

impl Default for SensorQuery {
    fn default() -> Self {
        SensorQuery {
            q: None,
            states: None,
            limit: 100,
            offset: 0,
        }
    }
}

/// Sensors per state, over all sensors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub connected: usize,
    pub stale: usize,
    pub disconnected: usize,
}

impl Registry {
    pub fn new(config: &LiveConfig) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            hub: Hub::default(),
            stale_after_ns: i64::try_from(config.stale_after.as_nanos()).unwrap_or(i64::MAX),
            max_sensors: config.max_sensors.max(1),
            telemetry: None,
        }
    }

    /// [`Registry::new`], counting into `telemetry` (a test's own handles).
    pub fn with_telemetry(config: &LiveConfig, telemetry: &'static Telemetry) -> Self {
        Registry {
            telemetry: Some(telemetry),
            ..Registry::new(config)
        }
    }

    fn telemetry(&self) -> &'static Telemetry {
        self.telemetry.unwrap_or_else(events::telemetry)
    }

    /// Whether anyone listens to `/api/events` (connections then serialize readings).
    pub fn has_subscribers(&self) -> bool {
        self.hub.has_subscribers()
    }

    /// Subscribe to every reading and sensor change of `filter`'s sensors (all when
    /// `None`).
    pub fn subscribe(&self, filter: Option<SensorFilter>) -> Subscription {
        self.subscribe_at(filter, false, now_ns())
    }

    /// [`Registry::subscribe`]; `folds`: the subscriber keeps only each sensor and
    /// measurement's newest reading (`?every=`), so connections need serialize only that.
    pub fn subscribe_folding(&self, filter: Option<SensorFilter>, folds: bool) -> Subscription {
        self.subscribe_at(filter, folds, now_ns())
    }

    /// What connections serialize for the subscribers now.
    pub fn event_detail(&self) -> EventDetail {
        self.hub.detail()
    }

    /// The first subscriber brings the announced states up to date at once: sweeps skip
    /// while nobody listens, and a sensor that went stale meanwhile must not then come back
    /// `connected` unannounced (its state would equal the one last announced).
    fn subscribe_at(&self, filter: Option<SensorFilter>, folds: bool, now_ns: i64) -> Subscription {
        let first = !self.has_subscribers();
        let subscription = self.hub.subscribe(filter, folds);
        if first {
            self.sweep(now_ns);
        }
        subscription
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the map consistent between statements that can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take committed batches from the connection `peer` (speaking `mode`), whose replies
    /// go out at `replies_at` (None: none do). `carried` is the
    /// connection's set of sensors it counts in their `connections`.
    fn commit(
        &self,
        peer: SocketAddr,
        mode: Mode,
        carried: &mut Carried,
        batches: &mut [LiveBatch],
        replies_at: Option<Instant>,
        now_ns: i64,
    ) {
        let announce = self.has_subscribers();
        let mut out = Vec::new();
        {
            let mut guard = self.lock();
            let inner = &mut *guard;
            for batch in batches.iter_mut() {
                inner.batches += 1;
                let seq = inner.batches;
                let ack_us = match (replies_at, batch.first_received) {
                    (Some(replies), Some(first)) => Some(
                        u64::try_from(replies.saturating_duration_since(first).as_micros())
                            .unwrap_or(u64::MAX),
                    ),
                    _ => None,
                };
                for group in &mut batch.groups {
                    if !self.track(inner, &group.sensor, peer, mode) {
                        continue;
                    }
                    let sensor = inner
                        .sensors
                        .get_mut(&group.sensor)
                        .expect("track() just found or made it");
                    if !carried.contains_key(&group.sensor) {
                        carried.insert(group.sensor.clone(), None);
                        sensor.connections += 1;
                        if sensor.disconnected_ns != 0 {
                            let since = std::mem::take(&mut sensor.disconnected_ns);
                            inner.disconnected.remove(&(since, group.sensor.clone()));
                        }
                    }
                    sensor.peer = peer;
                    sensor.mode = mode;
                    sensor.apply(group);
                    if let Some(known @ None) = carried.get_mut(&group.sensor) {
                        // Its next batches keep this series' points (see `Carried`).
                        known.clone_from(&sensor.primary().cloned());
                    }
                    if let Some(micros) = ack_us {
                        if sensor.ack_batch != seq {
                            sensor.ack_batch = seq;
                            sensor.record_ack(micros);
                        }
                    }
                    self.announce(&group.sensor, sensor, now_ns, announce, &mut out);
                }
                if announce && !batch.events.is_empty() {
                    out.push(LiveEvent::Readings(Arc::new(ReadingEvents::new(
                        batch
                            .groups
                            .iter()
                            .map(|g| EventGroup {
                                sensor: g.sensor.clone(),
                                measurement: g.measurement.clone(),
                                count: g.count,
                            })
                            .collect(),
                        std::mem::take(&mut batch.events),
                        batch.latest_only,
                    ))));
                }
            }
            // Under the registry lock: another connection's change to the same sensor
            // cannot be published between this one's and its event.
            self.hub.publish(&out);
        }
    }

    /// Make sure `name` is tracked: a new one is made (evicting the sensor disconnected
    /// longest when full); `false` when it is new and every tracked sensor is connected.
    fn track(&self, inner: &mut Inner, name: &str, peer: SocketAddr, mode: Mode) -> bool {
        if inner.sensors.contains_key(name) {
            return true;
        }
        if inner.sensors.len() >= self.max_sensors {
            let Some((_, evicted)) = inner.disconnected.pop_first() else {
                SensorUntracked { sensor: name }.emit_to(self.telemetry());
                return false;
            };
            inner.sensors.remove(&evicted);
            SensorEvicted { sensor: &evicted }.emit_to(self.telemetry());
        }
        inner
            .sensors
            .insert(name.to_string(), Sensor::new(peer, mode));
        SensorsTracked {
            count: inner.sensors.len(),
        }
        .emit_to(self.telemetry());
        true
    }

    /// Queue a `sensor` event when its state is not the one last announced.
    fn announce(
        &self,
        name: &str,
        sensor: &mut Sensor,
        now_ns: i64,
        announce: bool,
        out: &mut Vec<LiveEvent>,
    ) {
        let state = sensor.state(now_ns, self.stale_after_ns);
        if sensor.announced == Some(state) {
            return;
        }
        sensor.announced = Some(state);
        if announce {
            // Copied, not serialized: the lock is held.
            let snapshot = Snapshot::new(name, sensor, now_ns, self.stale_after_ns);
            out.push(LiveEvent::Sensor(Arc::new(SensorEvent::new(snapshot))));
        }
    }

    /// A connection that counted itself in `carried`'s sensors closed.
    fn disconnect(&self, carried: &Carried, now_ns: i64) {
        if carried.is_empty() {
            return;
        }
        let announce = self.has_subscribers();
        let mut out = Vec::new();
        {
            let mut inner = self.lock();
            let inner = &mut *inner;
            for name in carried.keys() {
                let Some(sensor) = inner.sensors.get_mut(name) else {
                    continue;
                };
                sensor.connections = sensor.connections.saturating_sub(1);
                if sensor.connections == 0 {
                    // Distinct keys even when two close in the same nanosecond.
                    sensor.disconnected_ns = now_ns.max(1);
                    inner
                        .disconnected
                        .insert((sensor.disconnected_ns, name.clone()));
                }
                self.announce(name, sensor, now_ns, announce, &mut out);
            }
            self.hub.publish(&out);
        }
    }

    /// The connection `peer`, which carried `carried`'s sensors, was sampled: each sensor
    /// whose latest connection it is takes `figures` (an older connection still closing
    /// does not overwrite a newer one's). No event: `tcp` rides on the next one.
    fn tcp_sampled(&self, peer: SocketAddr, carried: &Carried, figures: TcpFigures) {
        if carried.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for name in carried.keys() {
            let Some(sensor) = inner.sensors.get_mut(name) else {
                continue;
            };
            if sensor.peer != peer {
                continue;
            }
            sensor.tcp = Some(figures);
            SensorTcpSampled {
                sensor: name,
                srtt: figures.srtt(),
                retransmits_total: u64::from(figures.retransmits),
            }
            .emit_to(self.telemetry());
        }
    }

    /// Announce the sensors whose state changed with time alone (connected → stale):
    /// nothing without subscribers (a new one fetches `/api/sensors` first, and the next
    /// sweep announces what changed meanwhile), at most [`SWEEP_MAX_EVENTS`] per call.
    pub fn sweep(&self, now_ns: i64) {
        if !self.has_subscribers() {
            return;
        }
        let mut budget = SWEEP_MAX_EVENTS;
        let mut after: Option<String> = None;
        loop {
            let mut inner = self.lock();
            let range = match &after {
                None => inner.sensors.range_mut::<str, _>(..),
                Some(last) => inner
                    .sensors
                    .range_mut::<str, _>((Bound::Excluded(last.as_str()), Bound::Unbounded)),
            };
            let mut out = Vec::new();
            let mut visited = 0;
            let mut last = None;
            for (name, sensor) in range.take(SCAN_CHUNK) {
                visited += 1;
                last = Some(name);
                if out.len() == budget {
                    break;
                }
                self.announce(name, sensor, now_ns, true, &mut out);
            }
            let done = visited < SCAN_CHUNK || out.len() == budget;
            after = last.cloned();
            budget -= out.len();
            self.hub.publish(&out);
            drop(inner);
            if done {
                return;
            }
        }
    }

    /// Run [`Registry::sweep`] every [`SWEEP_INTERVAL`] until `shutdown`.
    pub fn spawn_sweeper(self: &Arc<Self>, shutdown: CancellationToken) {
        let registry = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => registry.sweep(now_ns()),
                }
            }
        });
    }

    /// The primary series (measurement, field) of `sensor`, if tracked and known: asked
    /// for a sensor new to a connection, once per batch group.
    fn primary(&self, sensor: &str) -> Option<(String, String)> {
        self.lock().sensors.get(sensor)?.primary().cloned()
    }

    /// Tracked sensors.
    pub fn len(&self) -> usize {
        self.lock().sensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The SENSOR object of `name` as JSON, if tracked.
    pub fn sensor_json(&self, name: &str) -> Option<String> {
        self.sensor_json_at(name, now_ns())
    }

    fn sensor_json_at(&self, name: &str, now_ns: i64) -> Option<String> {
        let snapshot = {
            let inner = self.lock();
            Snapshot::new(name, inner.sensors.get(name)?, now_ns, self.stale_after_ns)
        };
        Some(snapshot.to_json())
    }

    /// The `/api/sensors` answer as JSON.
    pub fn list_json(&self, query: &SensorQuery) -> String {
        self.list_json_at(query, now_ns())
    }

    /// Filter, then page, copy the page, and serialize it once the lock is released. The
    /// names are scanned [`SCAN_CHUNK`] at a time, each chunk under its own hold of the
    /// lock, so commits wait for one chunk at most (a page may then mix states from both
    /// sides of a commit, as any live view does).
    fn list_json_at(&self, query: &SensorQuery, now_ns: i64) -> String {
        self.list_json_with(query, now_ns, SCAN_CHUNK, || {})
    }

    /// [`Registry::list_json_at`] in chunks of `chunk` names, calling `unlocked` each time
    /// the lock has been released (tests check it is).
    fn list_json_with(
        &self,
        query: &SensorQuery,
        now_ns: i64,
        chunk: usize,
        mut unlocked: impl FnMut(),
    ) -> String {
        #[derive(serde::Serialize)]
        struct Page<'a> {
            total: usize,
            offset: usize,
            limit: usize,
            counts: Counts,
            sensors: Vec<SensorJson<'a>>,
        }
        let chunk = chunk.max(1);
        let limit = query.limit.min(MAX_PAGE);
        let needle = query.q.as_deref().map(Needle::new);
        let mut counts = Counts::default();
        let mut total = 0;
        let mut page: Vec<Snapshot> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let inner = self.lock();
            let range = match &after {
                None => inner.sensors.range::<str, _>(..),
                Some(last) => inner
                    .sensors
                    .range::<str, _>((Bound::Excluded(last.as_str()), Bound::Unbounded)),
            };
            let mut visited = 0;
            let mut last = None;
            for (name, sensor) in range.take(chunk) {
                visited += 1;
                last = Some(name);
                let state = sensor.state(now_ns, self.stale_after_ns);
                match state {
                    State::Connected => counts.connected += 1,
                    State::Stale => counts.stale += 1,
                    State::Disconnected => counts.disconnected += 1,
                }
                if let Some(states) = &query.states {
                    if !states.contains(&state) {
                        continue;
                    }
                }
                if let Some(needle) = &needle {
                    if !needle.found_in(name) {
                        continue;
                    }
                }
                if total >= query.offset && page.len() < limit {
                    page.push(Snapshot::new(name, sensor, now_ns, self.stale_after_ns));
                }
                total += 1;
            }
            after = last.cloned();
            drop(inner);
            unlocked();
            if visited < chunk {
                break;
            }
        }
        serde_json::to_string(&Page {
            total,
            offset: query.offset,
            limit,
            counts,
            sensors: page.iter().map(Snapshot::json).collect(),
        })
        .expect("a page of SENSOR objects serializes to JSON")
    }
}

/// A case-insensitive substring search that allocates nothing per name (ASCII folding;
/// other letters are compared by their lowercase forms).
struct Needle {
    lower: String,
    ascii: bool,
}

impl Needle {
    fn new(q: &str) -> Self {
        Needle {
            lower: q.to_lowercase(),
            ascii: q.is_ascii(),
        }
    }

    fn found_in(&self, name: &str) -> bool {
        if self.lower.is_empty() {
            return true;
        }
        if self.ascii && name.is_ascii() {
            let needle = self.lower.as_bytes();
            return name
                .as_bytes()
                .windows(needle.len())
                .any(|window| window.eq_ignore_ascii_case(needle));
        }
        name.to_lowercase().contains(&self.lower)
    }
}

/// One connection's handle on the registry: it counts the connection in the
/// `connections` of each sensor it carried, until dropped.
#[derive(Debug)]
pub struct LiveConnection {
    registry: Arc<Registry>,
    peer: SocketAddr,
    carried: Carried,
}

impl LiveConnection {
    pub fn new(registry: Arc<Registry>, peer: SocketAddr) -> Self {
        LiveConnection {
            registry,
            peer,
            carried: Carried::default(),
        }
    }

    /// Summarize a batch about to be submitted.
    pub fn summarize(
        &self,
        batch: &[crate::store::StoredReading],
        first_received: Option<Instant>,
    ) -> LiveBatch {
        LiveBatch::build(
            batch,
            first_received,
            self.registry.event_detail(),
            &self.carried,
            |sensor| self.registry.primary(sensor),
        )
    }

    /// Hand over `batches`, now committed, whose replies (acks) go out at `replies_at`
    /// (None: no reply is due yet): the sensors' ack latency is receipt → `replies_at`.
    pub fn committed(
        &mut self,
        mode: Mode,
        batches: &mut [LiveBatch],
        replies_at: Option<Instant>,
    ) {
        if batches.is_empty() {
            return;
        }
        self.registry.commit(
            self.peer,
            mode,
            &mut self.carried,
            batches,
            replies_at,
            now_ns(),
        );
    }

    /// The connection's `TCP_INFO` was sampled: the sensors it carries show `figures`.
    pub fn tcp_sampled(&self, figures: TcpFigures) {
        self.registry.tcp_sampled(self.peer, &self.carried, figures);
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.registry.disconnect(&self.carried, now_ns());
    }
}

#[cfg(test)]
mod tests;
