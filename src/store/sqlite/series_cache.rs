//! The SQLite writer's series: finding or creating a series' row, telling whether two
//! readings share a series, and the cache of series key → `series.id`, bounded: at most
//! `--series-cache-entries` series and [`MAX_KEY_BYTES`] of keys, least recently used
//! evicted first. Unbounded, 200,000 series of ~1 KB of tags took the server from 16 MB
//! to 298 MB. A miss costs one indexed lookup in the `series` table
//! (`find_or_create_series`), so the bound trades memory for that lookup on series not
//! written lately.
//!
//! `hashlink`'s `LruCache`: already in the build (rusqlite's statement cache uses it), and
//! it exposes `remove_lru`, so the cache can also be bounded by its keys' bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hashlink::LruCache;
use rusqlite::{Connection, OptionalExtension};

use crate::store::encoding::encode_tags;
use crate::store::StoredReading;

use crate::events::{self, Event as _, SeriesCacheEvicted};

/// Default `--series-cache-entries`.
pub const DEFAULT_SERIES_CACHE_ENTRIES: usize = 100_000;
/// Most bytes of keys the cache holds, whatever the entry bound: keys may be up to a line
/// long (64 KiB by default), so entries alone do not bound memory.
pub const MAX_KEY_BYTES: usize = 64 << 20;
/// At most one eviction log line per this long.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Series key → id, bounded (see the module doc).
#[derive(Debug)]
pub struct SeriesCache {
    lru: LruCache<String, i64>,
    max_entries: usize,
    key_bytes: usize,
    /// Evictions not yet logged, and when the last log line went out.
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl SeriesCache {
    /// Holding at most `max_entries` series (at least one).
    pub fn new(max_entries: usize) -> Self {
        SeriesCache {
            lru: LruCache::new_unbounded(),
            max_entries: max_entries.max(1),
            key_bytes: 0,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// The id of `key`, marking it recently used.
    pub fn get(&mut self, key: &str) -> Option<i64> {
        self.lru.get(key).copied()
    }

    /// Add the series of a committed transaction, evicting the least recently used beyond
    /// the bounds.
    pub fn extend(&mut self, committed: HashMap<String, i64>) {
        if committed.is_empty() {
            return;
        }
        for (key, id) in committed {
            let bytes = key.len();
            if self.lru.insert(key, id).is_none() {
                self.key_bytes += bytes;
            }
        }
        let mut evicted = 0;
        while self.lru.len() > self.max_entries || self.key_bytes > MAX_KEY_BYTES {
            let Some((key, _)) = self.lru.remove_lru() else {
                break;
            };
            self.key_bytes -= key.len();
            evicted += 1;
        }
        if evicted > 0 {
            self.unlogged += evicted;
            let now = Instant::now();
            let log = self
                .logged_at
                .is_none_or(|at| now.duration_since(at) >= LOG_INTERVAL);
            SeriesCacheEvicted {
                evicted,
                logged: log.then(|| std::mem::take(&mut self.unlogged)),
                entries: self.lru.len(),
                key_bytes: self.key_bytes,
            }
            .emit_to(events::telemetry());
            if log {
                self.logged_at = Some(now);
            }
        }
    }

    /// Forget every series (the store is closing).
    pub fn clear(&mut self) {
        self.lru.clear();
        self.key_bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Bytes of keys held.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }
}

/// Whether two readings belong to one series: the same measurement, tags (in the same
/// order) and sensor give the same series key ([`crate::store::encoding`]). Tags in another order
/// answer `false`, and the key is then written and looked up as for any other reading.
pub(super) fn same_series(a: &StoredReading, b: &StoredReading) -> bool {
    a.sensor == b.sensor
        && a.reading.measurement == b.reading.measurement
        && a.reading.tags == b.reading.tags
}

/// The id of the series `key`, inserting its row if it is new.
pub(super) fn find_or_create_series(
    conn: &Connection,
    key: &str,
    stored: &StoredReading,
) -> rusqlite::Result<i64> {
    let found = conn
        .prepare_cached("SELECT id FROM series WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached(
        "INSERT INTO series (key, measurement, sensor, tags) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(rusqlite::params![
        key,
        stored.reading.measurement,
        stored.sensor,
        encode_tags(&stored.reading.tags)
    ])?;
    Ok(conn.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(keys: impl IntoIterator<Item = (String, i64)>) -> HashMap<String, i64> {
        keys.into_iter().collect()
    }

    #[test]
    fn least_recently_used_series_are_evicted_past_the_bound() {
        let mut cache = SeriesCache::new(3);
        // One batch each: a batch's own order is a HashMap's.
        for (key, id) in [("a", 1), ("b", 2), ("c", 3)] {
            cache.extend(batch([(key.into(), id)]));
        }
        assert_eq!(cache.get("a"), Some(1), "a is now the most recent");
        cache.extend(batch([("d".into(), 4)]));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("b"), None, "b was the least recently used");
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("d"), Some(4));
        assert_eq!(cache.key_bytes(), 3);
    }

    #[test]
    fn bounded_by_key_bytes_too() {
        let mut cache = SeriesCache::new(usize::MAX);
        let big = MAX_KEY_BYTES / 4 + 1;
        for i in 0..8 {
            cache.extend(batch([(format!("{i}{}", "x".repeat(big)), i)]));
        }
        assert!(cache.key_bytes() <= MAX_KEY_BYTES);
        assert_eq!(cache.len(), 3);
    }
}
