//! Live events to `/api/events` subscribers, each through its own bounded queue.
//!
//! Publishing never waits: an event that does not fit a subscriber's queue ends that
//! subscription (it is told how many events it missed, then the stream closes; the page
//! reconnects and refetches). So a browser that stops reading costs at most
//! [`SUBSCRIBER_QUEUE`] queue entries holding at most [`SUBSCRIBER_EVENTS`] events and
//! about [`SUBSCRIBER_BYTES`] bytes, and never slows ingest. With nobody subscribed the
//! connections do not even serialize the readings ([`Hub::has_subscribers`]); a
//! subscription leaves the list (and that count) as soon as it lags or is dropped.
//!
//! `sensor` events carry an owned [`Snapshot`], serialized by whoever reads it (once,
//! shared), so the registry publishes them under its lock without serializing there.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use rustc_hash::FxHashSet;
use tokio::sync::mpsc;

use super::sensor::Snapshot;
use crate::events::{Event as _, SubscriberLagged, SubscriberOpen};

/// Queue entries per subscriber (one per batch of readings, or per sensor change).
pub const SUBSCRIBER_QUEUE: usize = 1024;

/// SSE events queued per subscriber: a batch's readings count one each, so a few large
/// batches cannot pin more than this many payloads.
pub const SUBSCRIBER_EVENTS: u64 = 16_384;

/// Payload bytes queued per subscriber (long string fields make few events large).
pub const SUBSCRIBER_BYTES: u64 = 16 << 20;

/// Most names in one `?sensor=` filter (a longer list is refused).
pub const MAX_FILTER_SENSORS: usize = 100;

/// One published event; cheap to clone (shared payloads).
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// Committed readings of one batch.
    Readings(Arc<ReadingEvents>),
    /// A sensor appeared or changed state.
    Sensor(Arc<SensorEvent>),
}

/// A `sensor` event: the sensor's state when it changed, serialized on first read.
#[derive(Debug)]
pub struct SensorEvent {
    snapshot: Snapshot,
    json: OnceLock<String>,
}

impl SensorEvent {
    pub(super) fn new(snapshot: Snapshot) -> Self {
        SensorEvent {
            snapshot,
            json: OnceLock::new(),
        }
    }

    pub fn sensor(&self) -> &str {
        self.snapshot.name()
    }

    /// Its SENSOR object as JSON (serialized once, whatever the number of readers).
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| self.snapshot.to_json())
    }
}

impl LiveEvent {
    /// SSE events it stands for (what a lagging subscriber is told it missed).
    fn weight(&self) -> u64 {
        match self {
            LiveEvent::Readings(readings) => readings.events.len() as u64,
            LiveEvent::Sensor(_) => 1,
        }
    }

    /// Payload bytes it pins while queued (a bound, for a sensor not yet serialized).
    fn bytes(&self) -> u64 {
        match self {
            LiveEvent::Readings(readings) => readings.bytes,
            LiveEvent::Sensor(event) => event.snapshot.approx_bytes(),
        }
    }

    fn concerns(&self, filter: &SensorFilter) -> bool {
        match self {
            LiveEvent::Readings(readings) => readings
                .groups
                .iter()
                .any(|group| filter.contains(&group.sensor)),
            LiveEvent::Sensor(event) => filter.contains(event.sensor()),
        }
    }
}

/// The sensors a subscription asked for.
#[derive(Debug, Default, Clone)]
pub struct SensorFilter(FxHashSet<String>);

impl SensorFilter {
    pub fn contains(&self, sensor: &str) -> bool {
        self.0.contains(sensor)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<String> for SensorFilter {
    fn from_iter<I: IntoIterator<Item = String>>(names: I) -> Self {
        SensorFilter(names.into_iter().collect())
    }
}

/// How much of each committed batch connections serialize for the subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventDetail {
    /// Nobody subscribes: nothing.
    Nothing,
    /// Every subscriber folds readings (`?every=`): each group's newest reading only.
    Latest,
    /// Some subscriber wants every reading.
    Every,
}

/// One sensor and measurement of a batch (a [`super::batch::Group`]'s identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventGroup {
    pub sensor: String,
    pub measurement: String,
    /// Its new readings in the batch.
    pub count: u64,
}

/// The `reading` payloads of one committed batch.
#[derive(Debug)]
pub struct ReadingEvents {
    /// The batch's groups, in order.
    pub groups: Vec<EventGroup>,
    /// (index into `groups`, the reading as JSON): every reading, or with `latest_only`
    /// each group's newest one.
    pub events: Vec<(usize, String)>,
    /// Only each group's newest reading was serialized ([`EventDetail::Latest`]).
    pub latest_only: bool,
    /// The payloads' total length.
    pub bytes: u64,
}

impl ReadingEvents {
    pub fn new(groups: Vec<EventGroup>, events: Vec<(usize, String)>, latest_only: bool) -> Self {
        let bytes = events.iter().map(|(_, json)| json.len() as u64).sum();
        ReadingEvents {
            groups,
            events,
            latest_only,
            bytes,
        }
    }

    /// The payloads of `filter`'s sensors (all when `None`), with their group's index.
    pub fn matching<'a>(
        &'a self,
        filter: Option<&'a SensorFilter>,
    ) -> impl Iterator<Item = (usize, &'a str)> {
        self.events.iter().filter_map(move |(group, json)| {
            let keep = match filter {
                None => true,
                Some(names) => names.contains(&self.groups[*group].sensor),
            };
            keep.then_some((*group, json.as_str()))
        })
    }

    /// Readings the event of `group` stands for: its group's count when only the newest
    /// was serialized, else one.
    pub fn stands_for(&self, group: usize) -> u64 {
        if self.latest_only {
            self.groups.get(group).map_or(1, |g| g.count)
        } else {
            1
        }
    }
}

/// What a subscriber and the publisher share.
#[derive(Debug, Default)]
struct Shared {
    lagged: AtomicBool,
    dropped: AtomicU64,
    /// SSE events queued and not yet taken (see [`SUBSCRIBER_EVENTS`]).
    queued: AtomicU64,
    /// Their payload bytes (see [`SUBSCRIBER_BYTES`]).
    queued_bytes: AtomicU64,
}

#[derive(Debug)]
struct Subscriber {
    id: u64,
    tx: mpsc::Sender<LiveEvent>,
    filter: Option<Arc<SensorFilter>>,
    shared: Arc<Shared>,
    /// Folds readings (`?every=`): needs each group's newest reading only.
    folds: bool,
}

/// The subscribers.
#[derive(Debug, Default)]
pub(super) struct Hub(Arc<HubShared>);

#[derive(Debug, Default)]
struct HubShared {
    subscribers: Mutex<Vec<Subscriber>>,
    /// The list's length, stored under its lock: read on the hot path without it.
    open: AtomicUsize,
    /// Of those, the subscribers that want every reading (not folding), likewise.
    every_reading: AtomicUsize,
    next_id: AtomicU64,
}

impl HubShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        // The list stays consistent whatever a panicking holder did (retain is all or
        // nothing per entry).
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Keep `open` and `every_reading` equal to the list's counts (called with the lock
    /// held).
    fn count(&self, subscribers: &[Subscriber]) {
        self.open.store(subscribers.len(), Ordering::Relaxed);
        let every = subscribers.iter().filter(|sub| !sub.folds).count();
        self.every_reading.store(every, Ordering::Relaxed);
    }
}

impl Hub {
    pub(super) fn has_subscribers(&self) -> bool {
        self.0.open.load(Ordering::Relaxed) > 0
    }

    /// What connections serialize for the subscribers now.
    pub(super) fn detail(&self) -> EventDetail {
        if self.0.every_reading.load(Ordering::Relaxed) > 0 {
            EventDetail::Every
        } else if self.has_subscribers() {
            EventDetail::Latest
        } else {
            EventDetail::Nothing
        }
    }

    /// A new subscription, to the events of `filter`'s sensors only when given; `folds`:
    /// it keeps only the newest reading of each sensor and measurement (`?every=`), so
    /// connections need not serialize every reading for it.
    pub(super) fn subscribe(&self, filter: Option<SensorFilter>, folds: bool) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let shared = Arc::new(Shared::default());
        let filter = filter.map(Arc::new);
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subscribers = self.0.lock();
        subscribers.push(Subscriber {
            id,
            tx,
            filter: filter.clone(),
            shared: shared.clone(),
            folds,
        });
        self.0.count(&subscribers);
        drop(subscribers);
        Subscription {
            rx,
            filter,
            shared,
            hub: self.0.clone(),
            id,
            _gauge: SubscriberOpen::new(),
        }
    }

    /// Hand `events` to every subscriber they concern; never waits.
    pub(super) fn publish(&self, events: &[LiveEvent]) {
        if events.is_empty() {
            return;
        }
        let mut subscribers = self.0.lock();
        subscribers.retain(|sub| {
            if sub.tx.is_closed() {
                return false;
            }
            for event in events {
                if let Some(filter) = &sub.filter {
                    if !event.concerns(filter) {
                        continue;
                    }
                }
                let weight = event.weight();
                let bytes = event.bytes();
                let queued = sub.shared.queued.fetch_add(weight, Ordering::AcqRel);
                let queued_bytes = sub.shared.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
                let sent = if queued + weight > SUBSCRIBER_EVENTS
                    || queued_bytes + bytes > SUBSCRIBER_BYTES
                {
                    Err(mpsc::error::TrySendError::Full(()))
                } else {
                    sub.tx.try_send(event.clone()).map_err(|err| match err {
                        mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
                        mpsc::error::TrySendError::Closed(_) => {
                            mpsc::error::TrySendError::Closed(())
                        }
                    })
                };
                match sent {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(())) => {
                        sub.shared.dropped.fetch_add(weight, Ordering::Relaxed);
                        sub.shared.lagged.store(true, Ordering::Release);
                        SubscriberLagged {
                            queued: queued as usize,
                        }
                        .emit();
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(())) => return false,
                }
            }
            true
        });
        self.0.count(&subscribers);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// What a subscription yields next.
#[derive(Debug)]
pub enum Next {
    Event(LiveEvent),
    /// It fell behind and was dropped: this many events were missed. Nothing follows.
    Lagged(u64),
    /// The server is going away.
    Closed,
}

/// One `/api/events` stream's queue.
#[derive(Debug)]
pub struct Subscription {
    rx: mpsc::Receiver<LiveEvent>,
    filter: Option<Arc<SensorFilter>>,
    shared: Arc<Shared>,
    hub: Arc<HubShared>,
    id: u64,
    _gauge: SubscriberOpen,
}

impl Subscription {
    /// The sensors it asked for (`None`: all).
    pub fn filter(&self) -> Option<&SensorFilter> {
        self.filter.as_deref()
    }

    /// The next event, in publishing order.
    pub async fn next(&mut self) -> Next {
        if let Some(missed) = self.missed() {
            return Next::Lagged(missed);
        }
        match self.rx.recv().await {
            // Lagging is told at once: the queued backlog is stale by then (the event just
            // taken included).
            Some(event) if self.shared.lagged.load(Ordering::Acquire) => {
                Next::Lagged(self.missed().unwrap_or(0) + event.weight())
            }
            None if self.shared.lagged.load(Ordering::Acquire) => {
                Next::Lagged(self.missed().unwrap_or(0))
            }
            Some(event) => {
                self.shared
                    .queued
                    .fetch_sub(event.weight(), Ordering::AcqRel);
                self.shared
                    .queued_bytes
                    .fetch_sub(event.bytes(), Ordering::AcqRel);
                Next::Event(event)
            }
            None => Next::Closed,
        }
    }

    /// The next queued event, if any (tests that do not wait).
    #[cfg(test)]
    pub(super) fn rx_try_recv(&mut self) -> Result<LiveEvent, mpsc::error::TryRecvError> {
        self.rx.try_recv()
    }

    /// Events missed, once lagged (the queued ones included: they are dropped too).
    fn missed(&mut self) -> Option<u64> {
        if !self.shared.lagged.load(Ordering::Acquire) {
            return None;
        }
        let mut missed = self.shared.dropped.swap(0, Ordering::Relaxed);
        while let Ok(event) = self.rx.try_recv() {
            missed += event.weight();
        }
        self.rx.close();
        Some(missed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Off the list now, so connections stop serializing readings for nobody.
        let mut subscribers = self.hub.lock();
        subscribers.retain(|sub| sub.id != self.id);
        self.hub.count(&subscribers);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future as _;

    use super::*;

    fn sensor_event(name: &str) -> LiveEvent {
        let sensor = super::super::sensor::Sensor::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
            crate::events::Mode::Line,
        );
        LiveEvent::Sensor(Arc::new(SensorEvent::new(Snapshot::new(
            name, &sensor, 0, 1,
        ))))
    }

    fn filter(names: &[&str]) -> SensorFilter {
        names.iter().map(|name| name.to_string()).collect()
    }

    /// One group per sensor, measurement `m`, one reading each.
    fn groups(sensors: &[&str]) -> Vec<EventGroup> {
        sensors
            .iter()
            .map(|sensor| EventGroup {
                sensor: sensor.to_string(),
                measurement: "m".into(),
                count: 1,
            })
            .collect()
    }

    #[tokio::test]
    async fn events_reach_subscribers_in_order_and_by_filter() {
        let hub = Hub::default();
        assert!(!hub.has_subscribers());
        let mut all = hub.subscribe(None, false);
        let mut only_b = hub.subscribe(Some(filter(&["b"])), false);
        assert!(hub.has_subscribers());
        hub.publish(&[sensor_event("a"), sensor_event("b")]);
        for expected in ["a", "b"] {
            match all.next().await {
                Next::Event(LiveEvent::Sensor(event)) => assert_eq!(event.sensor(), expected),
                other => panic!("{other:?}"),
            }
        }
        match only_b.next().await {
            Next::Event(LiveEvent::Sensor(event)) => assert_eq!(event.sensor(), "b"),
            other => panic!("{other:?}"),
        }
        drop(all);
        assert_eq!(
            hub.len(),
            1,
            "a dropped subscription leaves the list at once"
        );
        drop(only_b);
        assert!(!hub.has_subscribers());
        assert_eq!(hub.len(), 0);
    }

    /// A batch of readings counts one event per reading against the subscriber's budget.
    #[tokio::test]
    async fn the_queue_is_bounded_in_events_too() {
        let hub = Hub::default();
        let mut slow = hub.subscribe(None, false);
        let batch = |n: usize| {
            LiveEvent::Readings(Arc::new(ReadingEvents::new(
                groups(&["a"]),
                (0..n).map(|_| (0, "{}".to_string())).collect(),
                false,
            )))
        };
        let half = SUBSCRIBER_EVENTS as usize / 2;
        hub.publish(&[batch(half), batch(half)]);
        assert_eq!(hub.len(), 1, "exactly full is not lagging");
        assert!(matches!(slow.next().await, Next::Event(_)));
        hub.publish(&[batch(half)]);
        hub.publish(&[batch(1)]);
        assert_eq!(hub.len(), 0, "over the budget");
        match slow.next().await {
            Next::Lagged(missed) => assert_eq!(missed, 2 * half as u64 + 1),
            other => panic!("{other:?}"),
        }
    }

    /// A subscriber that never reads is dropped when its queue is full, told how much it
    /// missed, and the others go on.
    #[tokio::test]
    async fn a_full_queue_ends_the_subscription_without_waiting() {
        let hub = Hub::default();
        let mut slow = hub.subscribe(None, false);
        let mut other = hub.subscribe(None, false);
        for _ in 0..SUBSCRIBER_QUEUE + 10 {
            hub.publish(&[sensor_event("a")]);
            // The other one keeps up.
            assert!(matches!(other.next().await, Next::Event(_)));
        }
        assert_eq!(hub.len(), 1, "the slow one is off the list");
        drop(other);
        // The lagged one is not read yet (its socket is still open): it counts no more.
        assert!(
            !hub.has_subscribers(),
            "a lagged subscription is not a subscriber"
        );
        match slow.next().await {
            Next::Lagged(missed) => assert_eq!(missed, SUBSCRIBER_QUEUE as u64 + 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(slow.next().await, Next::Lagged(0) | Next::Closed));
    }

    /// Few events of large payloads end the subscription too.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes() {
        let hub = Hub::default();
        let mut slow = hub.subscribe(None, false);
        let big = |kib: usize| {
            LiveEvent::Readings(Arc::new(ReadingEvents::new(
                groups(&["a"]),
                vec![(0, "x".repeat(kib << 10))],
                false,
            )))
        };
        // 15 MiB then 1 MiB: exactly the budget.
        hub.publish(&[big(15 << 10), big(1 << 10)]);
        assert_eq!(hub.len(), 1, "exactly full is not lagging");
        hub.publish(&[big(1)]);
        assert_eq!(hub.len(), 0, "over the byte budget with 3 events queued");
        match slow.next().await {
            Next::Lagged(missed) => assert_eq!(missed, 3),
            other => panic!("{other:?}"),
        }
    }

    /// A reader already waiting when it lags counts the event that woke it as missed too.
    #[tokio::test]
    async fn a_waiting_reader_is_told_every_missed_event() {
        let hub = Hub::default();
        let mut slow = hub.subscribe(None, false);
        let mut waiting = Box::pin(slow.next());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            waiting.as_mut().poll(&mut cx).is_pending(),
            "nothing queued"
        );
        for _ in 0..=SUBSCRIBER_QUEUE {
            hub.publish(&[sensor_event("a")]);
        }
        match waiting.await {
            Next::Lagged(missed) => assert_eq!(missed, SUBSCRIBER_QUEUE as u64 + 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn readings_are_filtered_per_sensor() {
        let readings = ReadingEvents::new(
            groups(&["a", "b"]),
            vec![(0, "1".into()), (1, "2".into()), (0, "3".into())],
            false,
        );
        assert_eq!(readings.bytes, 3);
        let all: Vec<_> = readings.matching(None).map(|(_, json)| json).collect();
        assert_eq!(all, ["1", "2", "3"]);
        let filter = filter(&["a"]);
        let a: Vec<_> = readings.matching(Some(&filter)).collect();
        assert_eq!(a, [(0, "1"), (0, "3")]);
        assert_eq!(readings.stands_for(0), 1);
    }

    #[test]
    fn the_detail_follows_what_subscribers_want() {
        let hub = Hub::default();
        assert_eq!(hub.detail(), EventDetail::Nothing);
        let folding = hub.subscribe(None, true);
        assert_eq!(hub.detail(), EventDetail::Latest);
        let every = hub.subscribe(None, false);
        assert_eq!(hub.detail(), EventDetail::Every);
        drop(every);
        assert_eq!(hub.detail(), EventDetail::Latest);
        drop(folding);
        assert_eq!(hub.detail(), EventDetail::Nothing);
        // A batch of newest readings stands for its groups' counts.
        let mut latest = groups(&["a"]);
        latest[0].count = 7;
        let readings = ReadingEvents::new(latest, vec![(0, "7".into())], true);
        assert_eq!(readings.stands_for(0), 7);
    }
}
