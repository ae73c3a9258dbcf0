//! Live events to `/api/events` subscribers, each through its own bounded queue.
//!
//! Publishing never waits: an event that does not fit a subscriber's queue ends that
//! subscription (it is told how many events it missed, then the stream closes; the page
//! reconnects and refetches). So a browser that stops reading costs at most
//! [`SUBSCRIBER_QUEUE`] queue entries holding at most [`SUBSCRIBER_EVENTS`] events, and
//! never slows ingest. With nobody subscribed the
//! connections do not even serialize the readings ([`Hub::has_subscribers`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::events::{Event as _, SubscriberLagged, SubscriberOpen};

/// Queue entries per subscriber (one per batch of readings, or per sensor change).
pub const SUBSCRIBER_QUEUE: usize = 1024;

/// SSE events queued per subscriber: a batch's readings count one each, so a few large
/// batches cannot pin more than this many payloads.
pub const SUBSCRIBER_EVENTS: u64 = 16_384;

/// One published event; cheap to clone (shared payloads).
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// Committed readings of one batch.
    Readings(Arc<ReadingEvents>),
    /// A sensor appeared or changed state: its SENSOR object.
    Sensor { sensor: Arc<str>, json: Arc<str> },
}

impl LiveEvent {
    /// SSE events it stands for (what a lagging subscriber is told it missed).
    fn weight(&self) -> u64 {
        match self {
            LiveEvent::Readings(readings) => readings.events.len() as u64,
            LiveEvent::Sensor { .. } => 1,
        }
    }

    fn concerns(&self, filter: &[String]) -> bool {
        match self {
            LiveEvent::Readings(readings) => readings
                .sensors
                .iter()
                .any(|sensor| filter.contains(sensor)),
            LiveEvent::Sensor { sensor, .. } => filter.iter().any(|name| **name == **sensor),
        }
    }
}

/// The `reading` payloads of one committed batch.
#[derive(Debug)]
pub struct ReadingEvents {
    /// The batch's sensors (group order).
    pub sensors: Vec<String>,
    /// (index into `sensors`, the reading as JSON).
    pub events: Vec<(usize, String)>,
}

impl ReadingEvents {
    /// The payloads of `filter`'s sensors (all when `None`).
    pub fn matching<'a>(&'a self, filter: Option<&'a [String]>) -> impl Iterator<Item = &'a str> {
        self.events.iter().filter_map(move |(sensor, json)| {
            let keep = match filter {
                None => true,
                Some(names) => names.contains(&self.sensors[*sensor]),
            };
            keep.then_some(json.as_str())
        })
    }
}

/// What a subscriber and the publisher share.
#[derive(Debug, Default)]
struct Shared {
    lagged: AtomicBool,
    dropped: AtomicU64,
    /// SSE events queued and not yet taken (see [`SUBSCRIBER_EVENTS`]).
    queued: AtomicU64,
}

#[derive(Debug)]
struct Subscriber {
    tx: mpsc::Sender<LiveEvent>,
    filter: Option<Arc<[String]>>,
    shared: Arc<Shared>,
}

/// The subscribers.
#[derive(Debug, Default)]
pub(super) struct Hub {
    subscribers: Mutex<Vec<Subscriber>>,
    /// Open subscriptions: read on the hot path, without the lock.
    open: Arc<AtomicUsize>,
}

impl Hub {
    pub(super) fn has_subscribers(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// A new subscription, to the events of `filter`'s sensors only when given.
    pub(super) fn subscribe(&self, filter: Option<Vec<String>>) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let shared = Arc::new(Shared::default());
        let filter: Option<Arc<[String]>> = filter.map(Arc::from);
        self.lock().push(Subscriber {
            tx,
            filter: filter.clone(),
            shared: shared.clone(),
        });
        self.open.fetch_add(1, Ordering::Relaxed);
        Subscription {
            rx,
            filter,
            shared,
            open: self.open.clone(),
            _gauge: SubscriberOpen::new(),
        }
    }

    /// Hand `events` to every subscriber they concern; never waits.
    pub(super) fn publish(&self, events: &[LiveEvent]) {
        if events.is_empty() {
            return;
        }
        let mut subscribers = self.lock();
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
                let queued = sub.shared.queued.fetch_add(weight, Ordering::AcqRel);
                let sent = if queued + weight > SUBSCRIBER_EVENTS {
                    Err(mpsc::error::TrySendError::Full(event.clone()))
                } else {
                    sub.tx.try_send(event.clone())
                };
                match sent {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.shared.dropped.fetch_add(weight, Ordering::Relaxed);
                        sub.shared.lagged.store(true, Ordering::Release);
                        SubscriberLagged {
                            queued: queued as usize,
                        }
                        .emit();
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Subscriber>> {
        // The list stays consistent whatever a panicking holder did (retain is all or
        // nothing per entry).
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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
    filter: Option<Arc<[String]>>,
    shared: Arc<Shared>,
    open: Arc<AtomicUsize>,
    _gauge: SubscriberOpen,
}

impl Subscription {
    /// The sensors it asked for (`None`: all).
    pub fn filter(&self) -> Option<&[String]> {
        self.filter.as_deref()
    }

    /// The next event, in publishing order.
    pub async fn next(&mut self) -> Next {
        if let Some(missed) = self.missed() {
            return Next::Lagged(missed);
        }
        match self.rx.recv().await {
            // Lagging is told at once: the queued backlog is stale by then.
            Some(_) | None if self.shared.lagged.load(Ordering::Acquire) => {
                Next::Lagged(self.missed().unwrap_or(0))
            }
            Some(event) => {
                self.shared
                    .queued
                    .fetch_sub(event.weight(), Ordering::AcqRel);
                Next::Event(event)
            }
            None => Next::Closed,
        }
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
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor_event(name: &str) -> LiveEvent {
        LiveEvent::Sensor {
            sensor: name.into(),
            json: "{}".into(),
        }
    }

    #[tokio::test]
    async fn events_reach_subscribers_in_order_and_by_filter() {
        let hub = Hub::default();
        assert!(!hub.has_subscribers());
        let mut all = hub.subscribe(None);
        let mut only_b = hub.subscribe(Some(vec!["b".into()]));
        assert!(hub.has_subscribers());
        hub.publish(&[sensor_event("a"), sensor_event("b")]);
        for expected in ["a", "b"] {
            match all.next().await {
                Next::Event(LiveEvent::Sensor { sensor, .. }) => assert_eq!(&*sensor, expected),
                other => panic!("{other:?}"),
            }
        }
        match only_b.next().await {
            Next::Event(LiveEvent::Sensor { sensor, .. }) => assert_eq!(&*sensor, "b"),
            other => panic!("{other:?}"),
        }
        drop(all);
        drop(only_b);
        assert!(!hub.has_subscribers());
        // The closed queues are forgotten at the next publish.
        hub.publish(&[sensor_event("a")]);
        assert!(hub.lock().is_empty());
    }

    /// A batch of readings counts one event per reading against the subscriber's budget.
    #[tokio::test]
    async fn the_queue_is_bounded_in_events_too() {
        let hub = Hub::default();
        let mut slow = hub.subscribe(None);
        let batch = |n: usize| {
            LiveEvent::Readings(Arc::new(ReadingEvents {
                sensors: vec!["a".into()],
                events: (0..n).map(|_| (0, "{}".to_string())).collect(),
            }))
        };
        let half = SUBSCRIBER_EVENTS as usize / 2;
        hub.publish(&[batch(half), batch(half)]);
        assert_eq!(hub.lock().len(), 1, "exactly full is not lagging");
        assert!(matches!(slow.next().await, Next::Event(_)));
        hub.publish(&[batch(half)]);
        hub.publish(&[batch(1)]);
        assert!(hub.lock().is_empty(), "over the budget");
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
        let mut slow = hub.subscribe(None);
        let mut other = hub.subscribe(None);
        for _ in 0..SUBSCRIBER_QUEUE + 10 {
            hub.publish(&[sensor_event("a")]);
            // The other one keeps up.
            assert!(matches!(other.next().await, Next::Event(_)));
        }
        assert_eq!(hub.lock().len(), 1, "the slow one is off the list");
        match slow.next().await {
            Next::Lagged(missed) => assert_eq!(missed, SUBSCRIBER_QUEUE as u64 + 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(slow.next().await, Next::Lagged(0) | Next::Closed));
    }

    #[test]
    fn readings_are_filtered_per_sensor() {
        let readings = ReadingEvents {
            sensors: vec!["a".into(), "b".into()],
            events: vec![(0, "1".into()), (1, "2".into()), (0, "3".into())],
        };
        let all: Vec<_> = readings.matching(None).collect();
        assert_eq!(all, ["1", "2", "3"]);
        let filter = ["a".to_string()];
        let a: Vec<_> = readings.matching(Some(&filter)).collect();
        assert_eq!(a, ["1", "3"]);
    }
}
