//! Quotas on readings, checked once per reading on the ingest path: a rate (readings per
//! second, token bucket with one second of burst) and a cap on *new* series (per minute,
//! bucket of one minute's worth), each per connection and per token (the principal a
//! connection authenticated as; every connection of one token shares its buckets).
//!
//! A reading over a quota is refused with `error` (legacy: still `pong`, as the seed
//! answers everything), counted in `sensorlink_lines_rejected_total{reason}` and logged
//! within the rejected-line log budget: never dropped silently, never slept on.
//!
//! The hot path takes no lock per reading: the connection's own buckets are plain fields;
//! a token's shared bucket is taken from in leases of up to [`MAX_LEASE`] readings (unused
//! ones are given back when the connection ends or changes token, or at its next reading
//! once the lease is [`LEASE_MAX_AGE`] old; a connection's leases start at one reading and
//! double while it uses them up in time, so mostly idle connections hold next to none), and whether a series
//! is new is answered first by the connection's small cache of recent series, then by the
//! shared [`KnownSeries`] set.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use super::known_series::{KnownSeries, DEFAULT_KNOWN_SERIES};
use crate::protocol::{ProtocolError, Reading};
use crate::store::encoding::series_tags;

/// Default `--max-rate-per-connection` (readings/s). A sensor sends a few readings a
/// second and the seed client one per round trip (about 10,000/s on loopback at best);
/// only a bulk loader or a flood gets near 100,000/s, which is also about a tenth of what
/// the server ingests on two cores, so one connection cannot take the whole of it.
pub const DEFAULT_MAX_RATE_PER_CONNECTION: u32 = 100_000;
/// Default `--max-rate-per-token`: one connection's worth, so opening more connections
/// with one token buys no more throughput.
pub const DEFAULT_MAX_RATE_PER_TOKEN: u32 = 100_000;
/// Default `--max-new-series-per-connection` (new series per minute): a sensor has a
/// handful of series; a gateway reconnecting after a restart of the server may need more.
pub const DEFAULT_MAX_NEW_SERIES_PER_CONNECTION: u32 = 1_000;
/// Default `--max-new-series-per-token` (per minute).
pub const DEFAULT_MAX_NEW_SERIES_PER_TOKEN: u32 = 1_000;
/// Most readings a connection takes from its token's shared bucket at once: the most a
/// token can overrun its rate by, per connection.
pub const MAX_LEASE: u32 = 256;
/// Age at which what is left of a lease goes back to the token's bucket (at the
/// connection's next reading), and its next lease is one reading again: mostly idle
/// connections would otherwise keep tokens from the token's busy ones.
pub const LEASE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);
/// Slots of a connection's cache of recent series hashes (direct-mapped): allocated at the
/// smaller size on its first reading, doubled on a collision up to the larger (2 KiB: a
/// gateway's), so thousands of connections of one sensor each stay cheap. One slot at
/// first (8 bytes): most connections are one sensor sending one series, and 8 slots were
/// 64 bytes in each of them (issue 13: ≤ 2 KiB per idle connection); a sensor with a few
/// series grows it in a few doublings, once.
const RECENT_SLOTS: (usize, usize) = (1, 256);
/// Keys below which a keyed table is never swept.
const MIN_SWEEP_KEYS: usize = 1024;

/// The quota settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Readings per second on one connection (burst: one second's worth).
    pub rate_per_connection: u32,
    /// Readings per second across every connection of one token.
    pub rate_per_token: u32,
    /// New series per minute on one connection (burst: one minute's worth).
    pub new_series_per_connection: u32,
    /// New series per minute across every connection of one token.
    pub new_series_per_token: u32,
    /// Series hashes remembered server-wide ([`KnownSeries`]).
    pub known_series: usize,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        QuotaLimits {
            rate_per_connection: DEFAULT_MAX_RATE_PER_CONNECTION,
            rate_per_token: DEFAULT_MAX_RATE_PER_TOKEN,
            new_series_per_connection: DEFAULT_MAX_NEW_SERIES_PER_CONNECTION,
            new_series_per_token: DEFAULT_MAX_NEW_SERIES_PER_TOKEN,
            known_series: DEFAULT_KNOWN_SERIES,
        }
    }
}

/// Slack added before a bucket's tokens are floored (see [`TokenBucket::take_up_to`]).
const TOKEN_EPSILON: f64 = 1e-9;

/// A token bucket driven by the instants it is given (tokio's clock, so tests pause it).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    level: Level,
}

/// How a bucket refills: tokens per second, and the most it holds.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_s: f64,
    burst: f64,
}

impl Rate {
    /// `per_s` per second, one second of burst.
    fn per_second(per_s: u32) -> Rate {
        Rate {
            per_s: f64::from(per_s),
            burst: f64::from(per_s),
        }
    }

    /// `per_minute` per minute, one minute of burst.
    fn per_minute(per_minute: u32) -> Rate {
        Rate {
            per_s: f64::from(per_minute) / 60.0,
            burst: f64::from(per_minute),
        }
    }
}

/// What a bucket holds, without its [`Rate`]: a connection's own buckets take theirs from
/// the shared [`QuotaLimits`], which saves 16 bytes each in every connection.
#[derive(Debug, Clone)]
struct Level {
    tokens: f64,
    refilled: Instant,
}

impl Level {
    fn full(rate: Rate, now: Instant) -> Level {
        Level {
            tokens: rate.burst,
            refilled: now,
        }
    }

    /// Tokens at `now`; never backwards (instants from different tasks may come out of order).
    fn refill(&mut self, rate: Rate, now: Instant) {
        if now > self.refilled {
            let elapsed = now.duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate.per_s).min(rate.burst);
            self.refilled = now;
        }
    }

    fn take_up_to(&mut self, rate: Rate, want: u32, now: Instant) -> u32 {
        self.refill(rate, now);
        // `as` saturates: a bucket of billions still lends at most `want`. The epsilon: a
        // rate that is no integer (1000/60 per s) sums to 0.9999999999999999 where one whole
        // token is due, which the floor alone would refuse.
        let taken = ((self.tokens + TOKEN_EPSILON).max(0.0) as u32).min(want);
        self.tokens -= f64::from(taken);
        taken
    }

    fn give_back(&mut self, rate: Rate, n: u32) {
        self.tokens = (self.tokens + f64::from(n)).min(rate.burst);
    }
}

impl TokenBucket {
    /// A full bucket refilling at `rate_per_s`, holding at most `burst`.
    pub fn full(rate_per_s: f64, burst: f64, now: Instant) -> Self {
        let rate = Rate {
            per_s: rate_per_s,
            burst,
        };
        TokenBucket {
            rate,
            level: Level::full(rate, now),
        }
    }

    /// `per_s` per second, one second of burst.
    pub fn per_second(per_s: u32, now: Instant) -> Self {
        let rate = Rate::per_second(per_s);
        Self::full(rate.per_s, rate.burst, now)
    }

    /// `per_minute` per minute, one minute of burst.
    pub fn per_minute(per_minute: u32, now: Instant) -> Self {
        let rate = Rate::per_minute(per_minute);
        Self::full(rate.per_s, rate.burst, now)
    }

    /// Take one token; `false` (and nothing taken) if there is none.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.take_up_to(1, now) == 1
    }

    /// Take up to `want` whole tokens; returns how many were taken.
    pub fn take_up_to(&mut self, want: u32, now: Instant) -> u32 {
        self.level.take_up_to(self.rate, want, now)
    }

    /// Return `n` tokens taken but not used.
    pub fn give_back(&mut self, n: u32) {
        self.level.give_back(self.rate, n);
    }

    /// Whether it is full at `now`: a new bucket would be the same, so it can be forgotten.
    fn full_at(&self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.level.refilled)
            .as_secs_f64();
        self.level.tokens + elapsed * self.rate.per_s >= self.rate.burst
    }
}

#[derive(Debug)]
struct KeyedState {
    buckets: HashMap<Arc<str>, TokenBucket>,
    /// Sweep once the table reaches this many keys.
    sweep_at: usize,
}

/// One bucket per key (a token's id), shared by every connection holding that key.
///
/// Bounded as [`super::per_ip::PerIpTable`] is: a key's bucket lives while it is refilling;
/// full ones are swept out whenever the table has doubled since the last sweep, so the
/// table stays within twice the keys used in the last `burst / rate` (one second for a
/// rate, one minute for new series).
#[derive(Debug)]
pub struct KeyedBuckets {
    rate_per_s: f64,
    burst: f64,
    state: Mutex<KeyedState>,
}

impl KeyedBuckets {
    pub fn new(rate_per_s: f64, burst: f64) -> Self {
        KeyedBuckets {
            rate_per_s,
            burst,
            state: Mutex::new(KeyedState {
                buckets: HashMap::new(),
                sweep_at: MIN_SWEEP_KEYS,
            }),
        }
    }

    /// The state; a panic elsewhere while holding it left only counters behind.
    fn lock(&self) -> std::sync::MutexGuard<'_, KeyedState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take up to `want` tokens from `key`'s bucket at `now`; returns how many were taken.
    pub fn take_up_to(&self, key: &Arc<str>, want: u32, now: Instant) -> u32 {
        let mut state = self.lock();
        if state.buckets.len() >= state.sweep_at {
            state.buckets.retain(|_, bucket| !bucket.full_at(now));
            state.sweep_at = (2 * state.buckets.len()).max(MIN_SWEEP_KEYS);
        }
        if let Some(bucket) = state.buckets.get_mut(&**key) {
            return bucket.take_up_to(want, now);
        }
        let mut bucket = TokenBucket::full(self.rate_per_s, self.burst, now);
        let taken = bucket.take_up_to(want, now);
        state.buckets.insert(key.clone(), bucket);
        taken
    }

    /// Return `n` unused tokens to `key`'s bucket (if it is still there: a swept bucket
    /// was full, and a new one starts full).
    pub fn give_back(&self, key: &str, n: u32) {
        if n == 0 {
            return;
        }
        if let Some(bucket) = self.lock().buckets.get_mut(key) {
            bucket.give_back(n);
        }
    }

    /// Keys in the table.
    pub fn len(&self) -> usize {
        self.lock().buckets.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What every connection of one server shares: the per-token buckets and the known
/// series.
#[derive(Debug)]
pub struct Quotas {
    limits: QuotaLimits,
    token_rate: KeyedBuckets,
    token_new_series: KeyedBuckets,
    known: KnownSeries,
    /// Keyed per process, shared by every connection (their hashes meet in `known`).
    hasher: foldhash::quality::RandomState,
}

impl Quotas {
    pub fn new(limits: QuotaLimits) -> Arc<Self> {
        Arc::new(Quotas {
            limits,
            token_rate: KeyedBuckets::new(
                f64::from(limits.rate_per_token),
                f64::from(limits.rate_per_token),
            ),
            token_new_series: KeyedBuckets::new(
                f64::from(limits.new_series_per_token) / 60.0,
                f64::from(limits.new_series_per_token),
            ),
            known: KnownSeries::new(limits.known_series),
            hasher: foldhash::quality::RandomState::default(),
        })
    }

    pub fn limits(&self) -> QuotaLimits {
        self.limits
    }

    /// Readings taken from a token's shared bucket at once: a hundredth of its rate (so
    /// a hundred connections can hold leases before the bucket runs dry), at most
    /// [`MAX_LEASE`].
    fn lease(&self) -> u32 {
        (self.limits.rate_per_token / 100).clamp(1, MAX_LEASE)
    }
}

/// The principal a connection writes as, and what it holds of the principal's bucket.
#[derive(Debug)]
struct Principal {
    id: Arc<str>,
    /// Readings taken from the shared bucket and not yet used.
    leased: u32,
    /// When `leased` was taken.
    leased_at: Instant,
    /// Size of the next lease: 1, doubled each time a lease is used up within
    /// [`LEASE_MAX_AGE`], up to [`Quotas::lease`].
    next_lease: u32,
}

/// One connection's quota state: its own buckets, its principal, its recent series.
#[derive(Debug)]
pub struct ConnQuota {
    quotas: Arc<Quotas>,
    /// Its rate and its new-series cap: the levels (the rates are `quotas.limits`).
    rate: Level,
    new_series: Level,
    /// Boxed: most connections write under no token, and every one holds this.
    principal: Option<Box<Principal>>,
    /// Direct-mapped cache of series hashes this connection has written (0: empty), a
    /// power of two long; empty until the first reading, so an idle connection holds none.
    recent: Box<[u64]>,
    /// The series of the last reading hashed, and its hash: a connection mostly sends one
    /// series (or a few in turn), and the same parts skip sorting and hashing them again.
    /// Boxed, so a connection that sends no reading holds one pointer.
    last: Option<Box<LastSeries>>,
    /// A reading was hashed since the last [`ConnQuota::shed`]: `last` is kept from the
    /// second one on. An idle connection sends one reading between sheds, and copying its
    /// parts would cost more (an allocation per part) than hashing them again saves.
    hashed_since_shed: bool,
}

/// Tag pairs hashed from the stack: more (with the sensor) take a vector.
const INLINE_PAIRS: usize = 8;

/// The parts [`ConnQuota::series_hash`] hashed, as the reading had them, and the hash.
#[derive(Debug, Default)]
struct LastSeries {
    measurement: String,
    tags: Vec<(String, String)>,
    sensor: String,
    hash: u64,
}

impl LastSeries {
    /// Whether `reading` filed under `sensor` has these very parts, so the same hash.
    fn holds(&self, reading: &Reading, sensor: &str) -> bool {
        self.measurement == reading.measurement
            && self.tags == reading.tags
            && self.sensor == sensor
    }
}

impl ConnQuota {
    pub fn new(quotas: Arc<Quotas>, now: Instant) -> Self {
        let limits = quotas.limits;
        ConnQuota {
            rate: Level::full(Rate::per_second(limits.rate_per_connection), now),
            new_series: Level::full(Rate::per_minute(limits.new_series_per_connection), now),
            quotas,
            principal: None,
            recent: Box::default(),
            last: None,
            hashed_since_shed: false,
        }
    }

    /// Charge the token `principal` (or none) for this connection's readings from now on;
    /// what the connection held of a previous token's bucket goes back to it.
    pub fn set_principal(&mut self, principal: Option<Arc<str>>) {
        self.release_lease();
        let now = Instant::now();
        self.principal = principal.map(|id| {
            Box::new(Principal {
                id,
                leased: 0,
                leased_at: now,
                next_lease: 1,
            })
        });
    }

    /// The token charged, if any.
    pub fn principal(&self) -> Option<&Arc<str>> {
        self.principal.as_ref().map(|p| &p.id)
    }

    fn release_lease(&mut self) {
        if let Some(principal) = &mut self.principal {
            let unused = std::mem::take(&mut principal.leased);
            self.quotas.token_rate.give_back(&principal.id, unused);
        }
    }

    /// Whether `reading` (filed under `sensor` if it has no `sensor` tag) may be stored
    /// at `now`: charges the rates, and the new-series caps if its series is new.
    ///
    /// # Errors
    /// [`ProtocolError::RateLimited`] or [`ProtocolError::TooManyNewSeries`], naming the
    /// setting whose limit was reached.
    pub fn admit(
        &mut self,
        reading: &Reading,
        sensor: &str,
        now: Instant,
    ) -> Result<(), ProtocolError> {
        let limits = self.quotas.limits;
        let rate = Rate::per_second(limits.rate_per_connection);
        if self.rate.take_up_to(rate, 1, now) == 0 {
            return Err(ProtocolError::RateLimited {
                limit: limits.rate_per_connection,
                setting: "max-rate-per-connection",
            });
        }
        if let Some(principal) = &mut self.principal {
            let fresh = now.saturating_duration_since(principal.leased_at) < LEASE_MAX_AGE;
            if principal.leased > 0 && !fresh {
                let unused = std::mem::take(&mut principal.leased);
                self.quotas.token_rate.give_back(&principal.id, unused);
                principal.next_lease = 1;
            }
            if principal.leased == 0 {
                let lease = principal.next_lease;
                principal.leased = self.quotas.token_rate.take_up_to(&principal.id, lease, now);
                principal.leased_at = now;
                // Used up in time (or the first): a busy connection, lend it more next time.
                if fresh || lease == 1 {
                    principal.next_lease = (lease * 2).min(self.quotas.lease());
                }
            }
            if principal.leased == 0 {
                self.rate.give_back(rate, 1);
                return Err(ProtocolError::RateLimited {
                    limit: limits.rate_per_token,
                    setting: "max-rate-per-token",
                });
            }
            principal.leased -= 1;
        }
        // 0 marks an empty slot; a hash of 0 is never cached (and costs a lookup).
        let hash = self.series_hash(reading, sensor);
        let slot = (hash as usize) & self.recent.len().wrapping_sub(1);
        if self.recent.get(slot) == Some(&hash) && hash != 0 {
            return Ok(());
        }
        if self.quotas.known.touch(hash) {
            self.remember(hash);
            return Ok(());
        }
        let new_series = Rate::per_minute(limits.new_series_per_connection);
        if self.new_series.take_up_to(new_series, 1, now) == 0 {
            return Err(ProtocolError::TooManyNewSeries {
                limit: limits.new_series_per_connection,
                setting: "max-new-series-per-connection",
            });
        }
        if let Some(principal) = &self.principal {
            if self
                .quotas
                .token_new_series
                .take_up_to(&principal.id, 1, now)
                == 0
            {
                self.new_series.give_back(new_series, 1);
                return Err(ProtocolError::TooManyNewSeries {
                    limit: limits.new_series_per_token,
                    setting: "max-new-series-per-token",
                });
            }
        }
        self.quotas.known.insert(hash);
        self.remember(hash);
        Ok(())
    }

    /// Drop what only speeds up the next reading (the last series' parts): an idle
    /// connection then holds none of it. The cache of recent series stays: it keeps
    /// readings off the shared set's locks.
    pub fn shed(&mut self) {
        self.last = None;
        self.hashed_since_shed = false;
    }

    /// Put `hash` in the connection's cache, growing it (up to its bound) rather than
    /// overwriting another series.
    fn remember(&mut self, hash: u64) {
        if self.recent.is_empty() {
            self.recent = vec![0; RECENT_SLOTS.0].into_boxed_slice();
        }
        let slot = |len: usize| (hash as usize) & (len - 1);
        let held = self.recent[slot(self.recent.len())];
        if held != 0 && held != hash && self.recent.len() < RECENT_SLOTS.1 {
            let old = std::mem::take(&mut self.recent);
            self.recent = vec![0; old.len() * 2].into_boxed_slice();
            let len = self.recent.len();
            for h in old.iter().copied().filter(|&h| h != 0) {
                self.recent[(h as usize) & (len - 1)] = h;
            }
        }
        let len = self.recent.len();
        self.recent[slot(len)] = hash;
    }

    /// The keyed hash of the store's identity of `reading`'s series (measurement and
    /// sorted tags, see [`crate::store::encoding`]): readings the store files under one
    /// series hash alike. Hashed from the parts, not the escaped key (a third of the cost):
    /// `str`'s `Hash` ends each string with 0xFF, a byte UTF-8 never holds, so the parts
    /// are delimited one to one, as the key's escaping does.
    fn series_hash(&mut self, reading: &Reading, sensor: &str) -> u64 {
        if let Some(last) = &self.last {
            if last.holds(reading, sensor) {
                return last.hash;
            }
        }
        let mut hasher = self.quotas.hasher.build_hasher();
        reading.measurement.hash(&mut hasher);
        let mut hash_pairs = |pairs: &[(&str, &str)]| {
            for (key, value) in pairs {
                key.hash(&mut hasher);
                value.hash(&mut hasher);
            }
        };
        let sensor_tagged = reading.tag("sensor").is_some();
        if reading.tags.len() + usize::from(!sensor_tagged) <= INLINE_PAIRS {
            // What `series_tags` makes, without its vector.
            let mut pairs = [("", ""); INLINE_PAIRS];
            for (pair, (key, value)) in pairs.iter_mut().zip(&reading.tags) {
                *pair = (key.as_str(), value.as_str());
            }
            let mut len = reading.tags.len();
            if !sensor_tagged {
                pairs[len] = ("sensor", sensor);
                len += 1;
            }
            let pairs = &mut pairs[..len];
            pairs.sort_unstable();
            hash_pairs(pairs);
        } else {
            let mut pairs = Vec::new();
            series_tags(&mut pairs, reading, sensor);
            hash_pairs(&pairs);
        }
        let hash = hasher.finish();
        if !std::mem::replace(&mut self.hashed_since_shed, true) {
            return hash;
        }
        // `clone_from` reuses the strings' memory when the series changes.
        let last = self.last.get_or_insert_with(Box::default);
        last.measurement.clone_from(&reading.measurement);
        last.tags.clone_from(&reading.tags);
        last.sensor.clear();
        last.sensor.push_str(sensor);
        last.hash = hash;
        hash
    }
}

impl Drop for ConnQuota {
    fn drop(&mut self) {
        self.release_lease();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn reading(line: &str) -> Reading {
        crate::protocol::ilp::parse(line.as_bytes()).expect("a valid test line")
    }

    fn limits(rate: u32, series: u32) -> QuotaLimits {
        QuotaLimits {
            rate_per_connection: rate,
            rate_per_token: rate,
            new_series_per_connection: series,
            new_series_per_token: series,
            known_series: 4096,
        }
    }

    /// A reading of series `m,sensor=s<n>`.
    fn of_series(n: u32) -> Reading {
        reading(&format!("m,sensor=s{n} v=1 1"))
    }

    /// 1000 per minute refills one token every 60 ms; ten steps of 6 ms sum to
    /// 0.9999999999999999 tokens in floating point, and that token is still due.
    #[tokio::test(start_paused = true)]
    async fn a_fractional_rate_gives_its_token_at_the_exact_boundary() {
        let mut bucket = TokenBucket::per_minute(1000, Instant::now());
        assert_eq!(bucket.take_up_to(1000, Instant::now()), 1000);
        assert!(!bucket.try_take(Instant::now()));
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(6)).await;
            bucket.level.refill(bucket.rate, Instant::now());
        }
        assert!(bucket.try_take(Instant::now()), "{bucket:?}");
        assert!(!bucket.try_take(Instant::now()), "{bucket:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refuses_past_its_burst_and_refills_with_time() {
        let now = Instant::now();
        let mut bucket = TokenBucket::per_second(10, now);
        assert_eq!((0..20).filter(|_| bucket.try_take(now)).count(), 10);
        tokio::time::advance(Duration::from_millis(500)).await;
        let now = Instant::now();
        assert_eq!((0..20).filter(|_| bucket.try_take(now)).count(), 5);
        // Never more than the burst, however long it rested.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(bucket.take_up_to(1000, Instant::now()), 10);
        bucket.give_back(3);
        assert_eq!(bucket.take_up_to(1000, Instant::now()), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn per_minute_bucket_refills_one_per_interval() {
        let mut bucket = TokenBucket::per_minute(60, Instant::now());
        assert_eq!(bucket.take_up_to(100, Instant::now()), 60);
        assert!(!bucket.try_take(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(bucket.try_take(Instant::now()));
        assert!(!bucket.try_take(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn connection_rate_is_refused_with_the_setting_named() {
        let quotas = Quotas::new(limits(3, 1000));
        let mut quota = ConnQuota::new(quotas.clone(), Instant::now());
        let r = of_series(1);
        for _ in 0..3 {
            quota
                .admit(&r, "ip", Instant::now())
                .expect("within the burst");
        }
        let err = quota.admit(&r, "ip", Instant::now()).expect_err("over");
        assert_eq!(
            err.to_string(),
            "rate limit exceeded: more than 3 readings/s (max-rate-per-connection)"
        );
        // A second connection has its own bucket.
        let mut other = ConnQuota::new(quotas, Instant::now());
        other.admit(&r, "ip", Instant::now()).expect("unaffected");
        tokio::time::advance(Duration::from_secs(1)).await;
        quota.admit(&r, "ip", Instant::now()).expect("refilled");
    }

    #[tokio::test(start_paused = true)]
    async fn connections_of_one_token_share_its_rate() {
        // 200 readings/s per token, leases of 2; each connection may do 1000/s alone.
        let quotas = Quotas::new(QuotaLimits {
            rate_per_connection: 1000,
            rate_per_token: 200,
            ..limits(0, 1000)
        });
        let token: Arc<str> = Arc::from("t1");
        let mut a = ConnQuota::new(quotas.clone(), Instant::now());
        let mut b = ConnQuota::new(quotas.clone(), Instant::now());
        a.set_principal(Some(token.clone()));
        b.set_principal(Some(token.clone()));
        let r = of_series(1);
        let now = Instant::now();
        let mut admitted = 0;
        for _ in 0..300 {
            admitted += usize::from(a.admit(&r, "ip", now).is_ok());
            admitted += usize::from(b.admit(&r, "ip", now).is_ok());
        }
        assert_eq!(admitted, 200, "the token's burst, split between them");
        let err = a.admit(&r, "ip", now).expect_err("token dry");
        assert!(err.to_string().contains("max-rate-per-token"), "{err}");
        // Another token, or none, is not affected.
        let mut c = ConnQuota::new(quotas.clone(), now);
        c.set_principal(Some(Arc::from("t2")));
        c.admit(&r, "ip", now).expect("own token");
        c.set_principal(None);
        c.admit(&r, "ip", now).expect("no token");
        assert_eq!(quotas.token_rate.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_hold_no_tokens_their_busy_sibling_needs() {
        // 1000 readings/s per token: leases of up to 10.
        let quotas = Quotas::new(QuotaLimits {
            rate_per_connection: 100_000,
            rate_per_token: 1000,
            ..limits(0, 1000)
        });
        let token: Arc<str> = Arc::from("t");
        let r = of_series(1);
        let now = Instant::now();
        // A hundred connections that send one reading each take one token each.
        let _idle: Vec<ConnQuota> = (0..100)
            .map(|_| {
                let mut quota = ConnQuota::new(quotas.clone(), now);
                quota.set_principal(Some(token.clone()));
                quota.admit(&r, "ip", now).expect("admitted");
                quota
            })
            .collect();
        let mut busy = ConnQuota::new(quotas.clone(), now);
        busy.set_principal(Some(token.clone()));
        let admitted = (0..2000)
            .filter(|_| busy.admit(&r, "ip", now).is_ok())
            .count();
        assert_eq!(admitted, 900, "the rest of the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_older_than_its_max_age_goes_back_at_the_next_reading() {
        let quotas = Quotas::new(QuotaLimits {
            rate_per_connection: 100_000,
            rate_per_token: 1000,
            ..limits(0, 1000)
        });
        let token: Arc<str> = Arc::from("t");
        let r = of_series(1);
        let mut slow = ConnQuota::new(quotas.clone(), Instant::now());
        slow.set_principal(Some(token.clone()));
        // Leases of 1, 2, then 4: one of the 4 used, 3 held.
        for _ in 0..4 {
            slow.admit(&r, "ip", Instant::now()).expect("admitted");
        }
        tokio::time::advance(LEASE_MAX_AGE).await;
        let now = Instant::now();
        let mut busy = ConnQuota::new(quotas.clone(), now);
        busy.set_principal(Some(token.clone()));
        while busy.admit(&r, "ip", now).is_ok() {}
        // The slow one's next reading returns its 3 and takes a lease of 1 of them.
        slow.admit(&r, "ip", now).expect("admitted");
        let more = (0..10)
            .filter(|_| busy.admit(&r, "ip", now).is_ok())
            .count();
        assert_eq!(
            more, 2,
            "what the old lease gave back, less the slow reading"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unused_lease_goes_back_to_the_token() {
        let quotas = Quotas::new(QuotaLimits {
            rate_per_connection: 1000,
            rate_per_token: 10_000,
            ..limits(0, 1000)
        });
        let token: Arc<str> = Arc::from("t");
        let now = Instant::now();
        let mut a = ConnQuota::new(quotas.clone(), now);
        a.set_principal(Some(token.clone()));
        a.admit(&of_series(1), "ip", now).expect("admitted");
        drop(a);
        // One reading used; the other 99 of the lease came back.
        assert_eq!(quotas.token_rate.take_up_to(&token, u32::MAX, now), 9_999);
    }

    #[tokio::test(start_paused = true)]
    async fn new_series_are_capped_and_known_ones_pass() {
        let quotas = Quotas::new(limits(1_000_000, 5));
        let mut quota = ConnQuota::new(quotas.clone(), Instant::now());
        let now = Instant::now();
        for n in 0..5 {
            quota
                .admit(&of_series(n), "ip", now)
                .expect("within the cap");
        }
        let err = quota
            .admit(&of_series(5), "ip", now)
            .expect_err("sixth new");
        assert_eq!(
            err.to_string(),
            "too many new series: more than 5 per minute (max-new-series-per-connection)"
        );
        for n in 0..5 {
            quota
                .admit(&of_series(n), "ip", now)
                .expect("known series pass");
        }
        // Known server-wide: another connection writes them without being charged.
        let mut other = ConnQuota::new(quotas.clone(), now);
        for n in 0..5 {
            other.admit(&of_series(n), "ip", now).expect("known");
        }
        for n in 10..15 {
            other
                .admit(&of_series(n), "ip", now)
                .expect("its own budget");
        }
        // Twelve seconds give one new series back (5 per minute).
        tokio::time::advance(Duration::from_secs(12)).await;
        quota
            .admit(&of_series(5), "ip", Instant::now())
            .expect("refilled");
    }

    #[tokio::test(start_paused = true)]
    async fn series_identity_is_the_stores() {
        let quotas = Quotas::new(limits(1_000_000, 1));
        let now = Instant::now();
        let mut quota = ConnQuota::new(quotas, now);
        quota
            .admit(&reading("m,b=2,a=1 v=1 1"), "10.0.0.1", now)
            .expect("new");
        // Same series: tags in another order, other fields, other timestamp.
        quota
            .admit(&reading("m,a=1,b=2 w=2i 2"), "10.0.0.1", now)
            .expect("same series");
        // An explicit sensor tag equal to the address the reading is filed under.
        quota
            .admit(&reading("m,a=1,b=2,sensor=10.0.0.1 v=1 3"), "other", now)
            .expect("same series");
        // The same tags from another address are another series.
        assert!(quota
            .admit(&reading("m,a=1,b=2 v=1 4"), "10.0.0.2", now)
            .is_err());
    }

    /// Two readings hash alike exactly when the store files them under one series key,
    /// names holding the key's own delimiters and escapes included.
    #[test]
    fn series_hash_equality_is_series_key_equality() {
        let lines = [
            "m,a=1,b=2 v=1",
            "m,b=2,a=1 v=1",
            // More pairs than hashed from the stack.
            "m,a=1,b=2,c=3,d=4,e=5,f=6,g=7,h=8 v=1",
            "m,h=8,g=7,f=6,e=5,d=4,c=3,b=2,a=1 v=1",
            "m,h=8,g=7,f=6,e=5,d=4,c=3,b=2,a=1,sensor=ip v=1",
            "m,h=8,g=7,f=6,e=5,d=4,c=3,b=2,a=1,sensor=x v=1",
            "m,a=1\\,b\\=2 v=1",
            "m,a=1\\,b=2 v=1",
            "m,a=1\\ b=2 v=1",
            "m\\,a=1,b=2 v=1",
            "m\\ x,a=1 v=1",
            "m,a=1,sensor=ip v=1",
            "m,a=1 v=1",
            "m,a=1,sensor=other v=1",
            "m,a=\\\\,b=2 v=1",
            "m,a=\\\\\\,b=2 v=1",
            "m,ab=1 v=1",
            "m,a=b1 v=1",
        ];
        let quotas = Quotas::new(limits(1, 1));
        let mut quota = ConnQuota::new(quotas, Instant::now());
        let readings: Vec<Reading> = lines.iter().map(|line| reading(line)).collect();
        for (i, a) in readings.iter().enumerate() {
            for (j, b) in readings.iter().enumerate() {
                let mut key_a = String::new();
                let mut key_b = String::new();
                crate::store::encoding::write_reading_series_key(
                    &mut key_a,
                    &mut Vec::new(),
                    a,
                    "ip",
                );
                crate::store::encoding::write_reading_series_key(
                    &mut key_b,
                    &mut Vec::new(),
                    b,
                    "ip",
                );
                let same_hash = quota.series_hash(a, "ip") == quota.series_hash(b, "ip");
                assert_eq!(same_hash, key_a == key_b, "{} / {}", lines[i], lines[j]);
            }
        }
    }

    /// The hash remembered for the last series is the one hashing would give: a reading
    /// that differs from the last in any part (measurement, a tag, its order, the sensor
    /// it is filed under) is hashed anew.
    #[test]
    fn remembered_series_hash_is_the_computed_one() {
        let quotas = Quotas::new(limits(1, 1));
        let mut cached = ConnQuota::new(quotas.clone(), Instant::now());
        let cases = [
            ("m,a=1 v=1", "ip"),
            ("m,a=1 v=2", "ip"),
            ("m,a=1 v=1", "other"),
            ("m,a=1,sensor=s v=1", "other"),
            ("m,a=1,sensor=s v=1", "ip"),
            ("m,sensor=s,a=1 v=1", "ip"),
            ("m,a=2 v=1", "ip"),
            ("n,a=2 v=1", "ip"),
            ("n,a=2 v=1", "ip"),
            ("m,a=1 v=1", "ip"),
        ];
        let mut hashes = Vec::new();
        for (line, sensor) in cases {
            let r = reading(line);
            let fresh = ConnQuota::new(quotas.clone(), Instant::now()).series_hash(&r, sensor);
            assert_eq!(cached.series_hash(&r, sensor), fresh, "{line} / {sensor}");
            hashes.push(fresh);
        }
        // And it is a hash of the series: the cases above are five series.
        hashes.sort_unstable();
        hashes.dedup();
        assert_eq!(hashes.len(), 5, "{hashes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn token_caps_new_series_across_its_connections() {
        let quotas = Quotas::new(QuotaLimits {
            new_series_per_connection: 100,
            new_series_per_token: 3,
            ..limits(1_000_000, 0)
        });
        let token: Arc<str> = Arc::from("t");
        let now = Instant::now();
        let mut a = ConnQuota::new(quotas.clone(), now);
        let mut b = ConnQuota::new(quotas.clone(), now);
        a.set_principal(Some(token.clone()));
        b.set_principal(Some(token));
        a.admit(&of_series(1), "ip", now).expect("1");
        b.admit(&of_series(2), "ip", now).expect("2");
        a.admit(&of_series(3), "ip", now).expect("3");
        let err = b.admit(&of_series(4), "ip", now).expect_err("4th");
        assert!(
            err.to_string().contains("max-new-series-per-token"),
            "{err}"
        );
        b.admit(&of_series(1), "ip", now).expect("known");
    }

    /// A connection's cache starts small and grows to its bound with the series it writes.
    #[tokio::test(start_paused = true)]
    async fn connection_cache_grows_with_its_series_up_to_a_bound() {
        let quotas = Quotas::new(limits(1_000_000, 100_000));
        let now = Instant::now();
        let mut quota = ConnQuota::new(quotas, now);
        assert!(quota.recent.is_empty(), "nothing before the first reading");
        quota.admit(&of_series(0), "ip", now).expect("first");
        // One slot (8 bytes) for a connection's one series: it is in every idle
        // connection of a fleet (issue 13).
        assert_eq!(quota.recent.len(), 1);
        quota.admit(&of_series(1), "ip", now).expect("second");
        assert!(quota.recent.len() >= 2, "a second series grows it");
        for n in 2..10_000 {
            quota
                .admit(&of_series(n), "ip", now)
                .expect("within the cap");
        }
        assert_eq!(quota.recent.len(), RECENT_SLOTS.1);
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_table_is_swept_as_it_grows() {
        let table = KeyedBuckets::new(1000.0, 1000.0);
        for i in 0..10 * MIN_SWEEP_KEYS {
            let key: Arc<str> = Arc::from(format!("t{i}"));
            table.take_up_to(&key, 1, Instant::now());
            // A millisecond refills the one token taken: earlier buckets are full again.
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert!(table.len() <= MIN_SWEEP_KEYS, "{}", table.len());
    }
}
