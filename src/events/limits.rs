//! Events of the memory bounds that are not per line: the SQLite writer's series cache.
//! (Readings refused by a quota are rejected lines: [`super::LineRejected`].)

use super::{Event, Telemetry};

/// The store's series cache reached its bound and evicted its least recently used series
/// (their next reading looks their id up in the database). `logged`: the evictions since
/// the last log line, when this one writes one (the cache limits its own lines).
pub struct SeriesCacheEvicted {
    pub evicted: u64,
    pub logged: Option<u64>,
    pub entries: usize,
    pub key_bytes: usize,
}

impl Event for SeriesCacheEvicted {
    fn emit_to(self, t: &Telemetry) {
        if let Some(evicted) = self.logged {
            tracing::warn!(
                evicted,
                entries = self.entries,
                key_bytes = self.key_bytes,
                "series cache full (--series-cache-entries): evicted the least recently used series"
            );
        }
        t.series_cache_evicted.increment(self.evicted);
        t.series_cache_entries.set(self.entries as f64);
    }
}
