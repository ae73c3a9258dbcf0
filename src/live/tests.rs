//! The registry without sockets or clocks: every call takes its `now_ns`.

use super::batch::tests::stored;
use super::*;

const S: i64 = 1_000_000_000;

fn config(max_sensors: usize) -> LiveConfig {
    LiveConfig {
        stale_after: Duration::from_secs(30),
        max_sensors,
    }
}

fn peer(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A fake connection: its carried set, fed by [`Conn::send`] at a given time.
struct Conn {
    peer: SocketAddr,
    carried: Carried,
}

impl Conn {
    fn new(port: u16) -> Self {
        Conn {
            peer: peer(port),
            carried: Carried::default(),
        }
    }

    /// Commit one batch of `(sensor, line)` readings received at `now_ns`.
    fn send(&mut self, registry: &Registry, readings: &[(&str, &str)], now_ns: i64) {
        self.send_with_repeats(registry, readings, &[], now_ns);
    }

    /// [`Conn::send`], the store having found the readings at `repeats` (batch indexes,
    /// ascending) already stored: duplicates or refused conflicts.
    fn send_with_repeats(
        &mut self,
        registry: &Registry,
        readings: &[(&str, &str)],
        repeats: &[usize],
        now_ns: i64,
    ) {
        let batch: Vec<_> = readings
            .iter()
            .map(|(sensor, line)| stored(sensor, line, now_ns))
            .collect();
        let mut live = [LiveBatch::build(
            &batch,
            Some(Instant::now()),
            registry.event_detail(),
            &self.carried,
            |sensor| registry.primary(sensor),
        )];
        let repeats: Vec<_> = repeats
            .iter()
            .map(|&index| crate::store::Repeat {
                index,
                conflict: None,
            })
            .collect();
        live[0].forget(&repeats);
        registry.commit(
            self.peer,
            Mode::Line,
            &mut self.carried,
            &mut live,
            Some(Instant::now()),
            now_ns,
        );
    }

    fn close(self, registry: &Registry, now_ns: i64) {
        registry.disconnect(&self.carried, now_ns);
    }
}

fn sensor(registry: &Registry, name: &str, now_ns: i64) -> serde_json::Value {
    let json = registry.sensor_json_at(name, now_ns).expect("tracked");
    serde_json::from_str(&json).expect("JSON")
}

fn page(registry: &Registry, query: &SensorQuery, now_ns: i64) -> serde_json::Value {
    serde_json::from_str(&registry.list_json_at(query, now_ns)).expect("JSON")
}

fn names(page: &serde_json::Value) -> Vec<String> {
    page["sensors"]
        .as_array()
        .expect("sensors")
        .iter()
        .map(|s| s["sensor"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn states_follow_connections_and_silence() {
    let registry = Registry::new(&config(10));
    let mut a = Conn::new(1);
    a.send(&registry, &[("a", "m v=1 1")], 100 * S);
    let json = sensor(&registry, "a", 100 * S);
    assert_eq!(json["state"], "connected");
    assert_eq!(json["connections"], 1);
    assert_eq!(json["peer"], "127.0.0.1:1");
    assert_eq!(json["mode"], "line");
    assert_eq!(json["last_seen_ns"], 100 * S);
    assert_eq!(sensor(&registry, "a", 131 * S)["state"], "stale");

    // A second connection carrying it: closing one leaves it connected.
    let mut b = Conn::new(2);
    b.send(&registry, &[("a", "m v=2 2")], 140 * S);
    assert_eq!(sensor(&registry, "a", 140 * S)["connections"], 2);
    assert_eq!(sensor(&registry, "a", 140 * S)["peer"], "127.0.0.1:2");
    a.close(&registry, 141 * S);
    assert_eq!(sensor(&registry, "a", 141 * S)["state"], "connected");
    b.close(&registry, 142 * S);
    let json = sensor(&registry, "a", 142 * S);
    assert_eq!(json["state"], "disconnected");
    assert_eq!(json["connections"], 0);
    assert_eq!(json["peer"], "127.0.0.1:2", "kept after close");
    assert_eq!(json["readings"], 2);

    // Back on a new connection.
    let mut c = Conn::new(3);
    c.send(&registry, &[("a", "m v=3 3")], 150 * S);
    assert_eq!(sensor(&registry, "a", 150 * S)["state"], "connected");
    assert!(registry.lock().disconnected.is_empty());
}

#[test]
fn the_longest_disconnected_is_evicted_first() {
    let recorder = crate::events::prometheus_builder().build_recorder();
    let telemetry: &'static Telemetry = Box::leak(Box::new(metrics::with_local_recorder(
        &recorder,
        Telemetry::register,
    )));
    let registry = Registry::with_telemetry(&config(3), telemetry);
    let mut conns: Vec<Conn> = (0..3).map(Conn::new).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send(&registry, &[(&format!("s{i}"), "m v=1 1")], S);
    }
    // s1 leaves first, then s0; s2 stays.
    let mut conns = conns.into_iter();
    let (c0, c1, mut c2) = (
        conns.next().expect("three connections"),
        conns.next().expect("three connections"),
        conns.next().expect("three connections"),
    );
    c1.close(&registry, 2 * S);
    c0.close(&registry, 3 * S);
    c2.send(&registry, &[("s3", "m v=1 1")], 4 * S);
    assert!(registry.sensor_json_at("s1", 4 * S).is_none(), "evicted");
    assert!(registry.sensor_json_at("s0", 4 * S).is_some());
    c2.send(&registry, &[("s4", "m v=1 1")], 5 * S);
    assert!(registry.sensor_json_at("s0", 5 * S).is_none(), "evicted");
    assert_eq!(registry.len(), 3);
    // Full of connected sensors: a new one is not tracked, the others stay.
    c2.send(&registry, &[("s5", "m v=1 1")], 6 * S);
    assert!(registry.sensor_json_at("s5", 6 * S).is_none());
    assert_eq!(registry.len(), 3);
    assert_eq!(sensor(&registry, "s2", 6 * S)["readings"], 1);

    let text = recorder.handle().render();
    use crate::events::testing::sample;
    assert_eq!(
        sample(&text, "sensorlink_live_sensors_evicted_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sensorlink_live_sensors_untracked_total"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "sensorlink_live_sensors"), Some(3.0));
}

#[test]
fn pages_are_sorted_disjoint_and_complete() {
    let registry = Registry::new(&config(10_000));
    let mut conn = Conn::new(1);
    let readings: Vec<(String, &str)> = (0..250)
        .map(|i| (format!("bench-{i}"), "m v=1 1"))
        .collect();
    let readings: Vec<(&str, &str)> = readings.iter().map(|(s, l)| (s.as_str(), *l)).collect();
    conn.send(&registry, &readings, S);
    let mut seen = Vec::new();
    for offset in (0..300).step_by(100) {
        let query = SensorQuery {
            limit: 100,
            offset,
            ..SensorQuery::default()
        };
        let page = page(&registry, &query, S);
        assert_eq!(page["total"], 250);
        assert_eq!(page["offset"], offset);
        assert_eq!(
            page["counts"],
            serde_json::json!({"connected":250,"stale":0,"disconnected":0})
        );
        seen.extend(names(&page));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "sorted by name, no repeats");
    assert_eq!(seen.len(), 250);

    let query = SensorQuery {
        q: Some("BENCH-24".into()),
        ..SensorQuery::default()
    };
    let page = page(&registry, &query, S);
    assert_eq!(page["total"], 11, "bench-24 and bench-240…249");
    assert_eq!(names(&page)[0], "bench-24");

    let over = SensorQuery {
        limit: 5000,
        ..SensorQuery::default()
    };
    assert_eq!(self::page(&registry, &over, S)["limit"], MAX_PAGE);
}

#[test]
fn state_filter_and_counts() {
    let registry = Registry::new(&config(10));
    let mut a = Conn::new(1);
    a.send(&registry, &[("a", "m v=1 1")], S);
    let mut b = Conn::new(2);
    b.send(&registry, &[("b", "m v=1 1")], S);
    b.close(&registry, 2 * S);
    let mut c = Conn::new(3);
    c.send(&registry, &[("c", "m v=1 1")], 20 * S);
    // At 40 s: a is stale (silent 39 s), b disconnected, c connected.
    let now = 40 * S;
    let only = |states: Vec<State>| {
        let query = SensorQuery {
            states: Some(states),
            ..SensorQuery::default()
        };
        names(&page(&registry, &query, now))
    };
    assert_eq!(only(vec![State::Stale]), ["a"]);
    assert_eq!(
        only(vec![State::Disconnected, State::Connected]),
        ["b", "c"]
    );
    let all = page(&registry, &SensorQuery::default(), now);
    assert_eq!(
        all["counts"],
        serde_json::json!({"connected":1,"stale":1,"disconnected":1})
    );
}

#[tokio::test]
async fn subscribers_see_readings_and_state_changes() {
    let registry = Registry::new(&config(10));
    let mut events = registry.subscribe(None);
    let mut only_b = registry.subscribe(Some(["b".to_string()].into_iter().collect()));
    let mut conn = Conn::new(1);
    conn.send(&registry, &[("a", "m v=1 1"), ("b", "m v=2 2")], S);

    // a appears, b appears, then the batch's readings.
    for expected in ["a", "b"] {
        match events.next().await {
            Next::Event(LiveEvent::Sensor(event)) => {
                assert_eq!(event.sensor(), expected);
                let json: serde_json::Value =
                    serde_json::from_str(event.json()).expect("events carry JSON");
                assert_eq!(json["state"], "connected");
            }
            other => panic!("{other:?}"),
        }
    }
    match events.next().await {
        Next::Event(LiveEvent::Readings(readings)) => {
            let all: Vec<_> = readings.matching(None).map(|(_, json)| json).collect();
            assert_eq!(all.len(), 2);
            assert!(all[1].contains("\"sensor\":\"b\""), "{all:?}");
        }
        other => panic!("{other:?}"),
    }

    // Silence: the sweep announces stale once; closing announces disconnected.
    registry.sweep(10 * S);
    registry.sweep(40 * S);
    registry.sweep(41 * S);
    for expected in ["a", "b"] {
        match events.next().await {
            Next::Event(LiveEvent::Sensor(event)) => {
                assert_eq!(event.sensor(), expected);
                let json = event.json();
                assert!(json.contains("\"state\":\"stale\""), "{json}");
            }
            other => panic!("{other:?}"),
        }
    }
    conn.close(&registry, 42 * S);
    let mut closed = Vec::new();
    for _ in 0..2 {
        match events.next().await {
            Next::Event(LiveEvent::Sensor(event)) => {
                let json = event.json();
                assert!(json.contains("\"state\":\"disconnected\""), "{json}");
                closed.push(event.sensor().to_string());
            }
            other => panic!("{other:?}"),
        }
    }
    closed.sort();
    assert_eq!(closed, ["a", "b"]);

    // The filtered one saw b's events and a readings batch that holds b.
    let mut kinds = Vec::new();
    for _ in 0..4 {
        match only_b.next().await {
            Next::Event(LiveEvent::Sensor(event)) => {
                assert_eq!(event.sensor(), "b");
                kinds.push("sensor");
            }
            Next::Event(LiveEvent::Readings(readings)) => {
                let mine: Vec<_> = readings.matching(only_b.filter()).collect();
                assert_eq!(mine.len(), 1);
                kinds.push("reading");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(kinds, ["sensor", "reading", "sensor", "sensor"]);
}

#[test]
fn no_subscriber_no_payloads() {
    let registry = Registry::new(&config(10));
    let live = LiveConnection::new(Arc::new(Registry::new(&config(10))), peer(1));
    let batch = [stored("a", "m v=1 1", 1)];
    assert!(live.summarize(&batch, None).events.is_empty());
    let _sub = registry.subscribe(None);
    let live = LiveConnection::new(Arc::new(registry), peer(1));
    // The registry moved into the Arc above still has its subscriber.
    assert_eq!(live.summarize(&batch, None).events.len(), 1);
}

#[test]
fn one_ack_latency_per_batch_per_sensor() {
    let registry = Registry::new(&config(10));
    let mut conn = Conn::new(1);
    conn.send(&registry, &[("a", "m v=1 1"), ("a", "n v=1 1")], S);
    let inner = registry.lock();
    let a = inner.sensors.get("a").expect("sensor a is registered");
    assert_eq!(a.ack_batch, 1);
    assert_eq!(a.ack_samples(), 1, "two groups of one batch: one ack");
    drop(inner);
    let json = sensor(&registry, "a", S);
    assert!(json["ack_latency_ms"]["p50"].is_number(), "{json}");
}

#[test]
fn dropping_a_live_connection_disconnects_its_sensors() {
    let registry = Arc::new(Registry::new(&config(10)));
    {
        let mut live = LiveConnection::new(registry.clone(), peer(9));
        let batch = [stored("x", "m v=1 1", now_ns())];
        let mut summary = [live.summarize(&batch, None)];
        live.committed(Mode::Legacy, &mut summary, None);
        let json = serde_json::from_str::<serde_json::Value>(
            &registry.sensor_json("x").expect("sensor x is registered"),
        )
        .expect("sensor JSON parses");
        assert_eq!(json["state"], "connected");
        assert_eq!(json["mode"], "legacy");
        assert!(json["ack_latency_ms"].is_null(), "no reply due");
    }
    let json = serde_json::from_str::<serde_json::Value>(
        &registry.sensor_json("x").expect("sensor x is registered"),
    )
    .expect("sensor JSON parses");
    assert_eq!(json["state"], "disconnected");
}

/// A page is copied chunk by chunk and serialized with the lock released: between chunks
/// (and before serializing) a commit can take the lock.
#[test]
fn pages_scan_in_chunks_without_holding_the_lock() {
    let registry = Registry::new(&config(1000));
    let mut conn = Conn::new(1);
    let names: Vec<String> = (0..25).map(|i| format!("s{i:02}")).collect();
    let readings: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "m v=1 1")).collect();
    conn.send(&registry, &readings, S);
    let query = SensorQuery {
        limit: 7,
        offset: 9,
        ..SensorQuery::default()
    };
    let mut released = 0;
    let json = registry.list_json_with(&query, S, 10, || {
        assert!(registry.inner.try_lock().is_ok(), "the lock is released");
        released += 1;
    });
    assert_eq!(released, 3, "25 names in chunks of 10");
    let page: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(page["total"], 25);
    assert_eq!(page["counts"]["connected"], 25);
    assert_eq!(self::names(&page), &names[9..16]);
    // The chunked answer is the one-pass answer.
    assert_eq!(json, registry.list_json_with(&query, S, 1000, || {}));
}

/// Nobody listening: the sweep does nothing. Listening: it announces at most
/// SWEEP_MAX_EVENTS per call, the rest at the next.
#[tokio::test]
async fn the_sweep_is_capped_and_idle_without_subscribers() {
    let registry = Registry::new(&config(10_000));
    let mut conn = Conn::new(1);
    let count = SWEEP_MAX_EVENTS + 100;
    let names: Vec<String> = (0..count).map(|i| format!("s{i:05}")).collect();
    let readings: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "m v=1 1")).collect();
    conn.send(&registry, &readings, S);
    registry.sweep(100 * S);
    let announced = |state| {
        registry
            .lock()
            .sensors
            .values()
            .filter(|s| s.announced == Some(state))
            .count()
    };
    assert_eq!(announced(State::Stale), 0, "no subscriber: not even a scan");
    // (Subscribing at S: nothing is stale yet, so the first subscriber's sweep is empty.)
    let mut events = registry.subscribe_at(None, false, S);
    assert_eq!(announced(State::Stale), 0);
    registry.sweep(100 * S);
    assert_eq!(announced(State::Stale), SWEEP_MAX_EVENTS);
    for _ in 0..SWEEP_MAX_EVENTS {
        assert!(matches!(
            events.next().await,
            Next::Event(LiveEvent::Sensor(_))
        ));
    }
    registry.sweep(101 * S);
    assert_eq!(announced(State::Stale), count);
    for _ in 0..100 {
        assert!(matches!(
            events.next().await,
            Next::Event(LiveEvent::Sensor(_))
        ));
    }
}

/// The sparkline follows the primary series across batches whose first reading lacks it.
#[test]
fn the_primary_series_survives_a_batch_that_starts_without_it() {
    let registry = Registry::new(&config(10));
    let mut conn = Conn::new(1);
    conn.send(&registry, &[("a", "m t=1,h=10i 1000000")], S);
    conn.send(
        &registry,
        &[("a", "m h=11i 2000000"), ("a", "m h=12i,t=3 3000000")],
        S,
    );
    let json = sensor(&registry, "a", S);
    assert_eq!(
        json["spark"],
        serde_json::json!([[1, 1.0], [3, 3.0]]),
        "{json}"
    );
    assert_eq!(json["last"]["value"], 3.0);
}

/// Readings the store did not take (a refused conflict, a replayed duplicate) never show as
/// the sensor's latest value nor in its sparkline, and a batch of nothing but repeats (a
/// replayed spool) does not move the latest value back in time.
#[test]
fn repeats_never_show_as_the_latest_value_or_in_the_sparkline() {
    let registry = Registry::new(&config(10));
    let mut conn = Conn::new(1);
    conn.send(
        &registry,
        &[("a", "m t=1 1000000"), ("a", "m t=2 2000000")],
        S,
    );
    // The last reading conflicts with the stored one at 2 ms: refused.
    conn.send_with_repeats(
        &registry,
        &[("a", "m t=3 3000000"), ("a", "m t=77.5 2000000")],
        &[1],
        S,
    );
    let json = sensor(&registry, "a", S);
    assert_eq!(json["readings"], 3, "{json}");
    assert_eq!(
        json["spark"],
        serde_json::json!([[1, 1.0], [2, 2.0], [3, 3.0]]),
        "{json}"
    );
    assert_eq!(json["last"]["value"], 3.0, "{json}");
    assert!(!json.to_string().contains("77.5"), "{json}");
    // A refused reading in the middle of a batch leaves the points around it.
    conn.send_with_repeats(
        &registry,
        &[
            ("a", "m t=4 4000000"),
            ("a", "m t=66.5 1000000"),
            ("a", "m t=5 5000000"),
        ],
        &[1],
        S,
    );
    let json = sensor(&registry, "a", S);
    assert_eq!(
        json["spark"],
        serde_json::json!([[1, 1.0], [2, 2.0], [3, 3.0], [4, 4.0], [5, 5.0]]),
        "{json}"
    );
    assert_eq!(json["last"]["value"], 5.0, "{json}");
    assert!(!json.to_string().contains("66.5"), "{json}");
    // A replay of old readings, every one a duplicate.
    let before = sensor(&registry, "a", S);
    conn.send_with_repeats(
        &registry,
        &[("a", "m t=1 1000000"), ("a", "m t=2 2000000")],
        &[0, 1],
        2 * S,
    );
    let after = sensor(&registry, "a", 2 * S);
    for key in ["readings", "spark", "last", "values"] {
        assert_eq!(after[key], before[key], "{key}: {after}");
    }
}

/// Changes to one sensor from two connections reach subscribers in the order the
/// registry applied them. A state is announced only when it changes, so in that order no
/// two `sensor` events in a row carry the same state, and the last is the final one.
#[test]
fn sensor_events_follow_the_registry_order() {
    let registry = Arc::new(Registry::new(&config(10)));
    let mut events = registry.subscribe(None);
    let threads: Vec<_> = (0..2u16)
        .map(|port| {
            let registry = registry.clone();
            std::thread::spawn(move || {
                // 2 × 100 × (2 sensor + 1 readings) entries fit one queue.
                for i in 0..100 {
                    let mut conn = Conn::new(port);
                    conn.send(&registry, &[("x", "m v=1 1")], S + i);
                    conn.close(&registry, S + i);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no panic");
    }
    let mut states = Vec::new();
    while let Ok(event) = events.rx_try_recv() {
        if let LiveEvent::Sensor(event) = event {
            let json: serde_json::Value =
                serde_json::from_str(event.json()).expect("events carry JSON");
            states.push(json["state"].as_str().expect("a state").to_string());
        }
    }
    for pair in states.windows(2) {
        assert_ne!(pair[0], pair[1], "out of order: {states:?}");
    }
    assert_eq!(states.last().map(String::as_str), Some("disconnected"));
}

/// A sensor that turned stale while nobody listened is announced stale to the first
/// subscriber, so its return to `connected` is announced too.
#[tokio::test]
async fn the_first_subscriber_catches_up_on_stale_sensors() {
    let registry = Registry::new(&config(10));
    let mut conn = Conn::new(1);
    conn.send(&registry, &[("a", "m v=1 1")], S);
    registry.sweep(100 * S);
    let mut events = registry.subscribe_at(None, false, 100 * S);
    conn.send(&registry, &[("a", "m v=2 2")], 101 * S);
    for expected in ["stale", "connected"] {
        match events.next().await {
            Next::Event(LiveEvent::Sensor(event)) => {
                let json: serde_json::Value =
                    serde_json::from_str(event.json()).expect("events carry JSON");
                assert_eq!(json["state"], expected, "{json}");
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A new connection's first batch of a known sensor keeps its primary series too, even
/// when that batch starts without it (the registry is asked).
#[test]
fn a_new_connection_keeps_the_primary_series() {
    let registry = Registry::new(&config(10));
    let mut first = Conn::new(1);
    first.send(&registry, &[("a", "m t=1,h=10i 1000000")], S);
    first.close(&registry, S);
    let mut second = Conn::new(2);
    second.send(
        &registry,
        &[("a", "m h=11i 2000000"), ("a", "m h=12i,t=3 3000000")],
        S,
    );
    let json = sensor(&registry, "a", S);
    assert_eq!(
        json["spark"],
        serde_json::json!([[1, 1.0], [3, 3.0]]),
        "{json}"
    );
}

/// A connection's `TCP_INFO` sample goes to the sensors it carries whose latest connection
/// it is: an older connection of the same sensor, sampled as it closes, does not overwrite
/// the newer one's figures, and a sensor it never carried is untouched.
#[test]
fn tcp_samples_go_to_the_sensors_of_their_latest_connection() {
    let registry = Registry::new(&config(10));
    let figures = |srtt_us, sampled_at_ns| TcpFigures {
        srtt_us,
        rttvar_us: 5,
        min_rtt_us: Some(10),
        retransmits: 0,
        sampled_at_ns,
    };
    let tcp = |name: &str| sensor(&registry, name, 10 * S)["tcp"].clone();
    let mut old = Conn::new(1);
    old.send(&registry, &[("a", "m v=1i 1")], S);
    let mut other = Conn::new(3);
    other.send(&registry, &[("b", "m v=1i 1")], S);
    registry.tcp_sampled(old.peer, &old.carried, figures(40, 2 * S));
    assert_eq!(tcp("a")["srtt_ms"], 0.04);
    assert!(tcp("b").is_null(), "not carried by that connection");

    // `a` reconnects: the new connection is its latest, sampled; the old one closes late.
    let mut new = Conn::new(2);
    new.send(&registry, &[("a", "m v=2i 2")], 3 * S);
    registry.tcp_sampled(new.peer, &new.carried, figures(1000, 4 * S));
    registry.tcp_sampled(old.peer, &old.carried, figures(70, 5 * S));
    assert_eq!(
        tcp("a")["srtt_ms"],
        1.0,
        "the newer connection's sample stays"
    );
    assert_eq!(tcp("a")["sampled_at"], 4 * S);
    old.close(&registry, 6 * S);
    assert_eq!(tcp("a")["srtt_ms"], 1.0);
}
