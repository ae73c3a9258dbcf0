//! The series the server has seen lately, as 64-bit hashes of their store keys, in fixed
//! memory: what tells a reading of a *new* series (which the cardinality limit charges)
//! from one of a known series (which it never does).
//!
//! A set-associative table: a hash picks one set of [`WAYS`] slots; a full set evicts by
//! CLOCK (a slot read since the hand last passed it is spared once), so series written
//! often stay while one-off series make room. Each shard starts with one set and doubles
//! (rehashing its hashes) when a hash finds its set full, until it reaches its share of
//! `capacity × 8` bytes (8 MiB at the default); only then does a full set evict. Hashes
//! scatter over every page, so a table allocated at full size up front was resident once a
//! few thousand series were seen (8 MiB: 0.8 KiB per connection at 10 000 idle sensors);
//! grown on demand it holds about 2–4 slots per series seen. The table is split into
//! [`SHARDS`] mutexes so connections on different cores rarely meet; the connections' own
//! caches ([`super::quota`]) keep most readings off these locks altogether.
//!
//! Hashes are keyed per process ([`foldhash::quality::RandomState`]), so a peer cannot
//! aim collisions. A collision makes a new series look known: the limit then fails open
//! for that series only, never refuses a reading it should take. An evicted series that
//! comes back is new again and charged once more (so a deployment with more than
//! `capacity` active series sees some legitimate readings charged as new).

use std::sync::{Mutex, PoisonError};

/// Slots per set: eight hashes are one 64-byte cache line.
pub const WAYS: usize = 8;
/// Mutexes the table is split into (a power of two).
const SHARDS: usize = 64;
/// Default capacity in series (8 MiB of hashes).
pub const DEFAULT_KNOWN_SERIES: usize = 1 << 20;

/// One shard's sets: `slots[set * WAYS + way]` (0 = empty), and per set its CLOCK state:
/// the low byte marks the ways read since the hand passed, the high byte is the hand.
/// Its sets number a power of two (`clock.len()`), at most the table's `set_mask` + 1.
#[derive(Debug)]
struct Shard {
    slots: Vec<u64>,
    clock: Vec<u16>,
}

impl Shard {
    fn with_sets(sets: usize) -> Shard {
        Shard {
            slots: vec![0; sets * WAYS],
            clock: vec![0; sets],
        }
    }

    /// The set `hash` falls in at the shard's current size.
    fn set_of(&self, hash: u64) -> usize {
        (hash as usize) & (self.clock.len() - 1)
    }

    /// Twice the sets, each hash moved to its set at the new size with its used mark (the
    /// hands restart). A set of the old size splits into two of the new, so none overflows.
    fn double(&mut self) {
        let mut grown = Shard::with_sets(self.clock.len() * 2);
        for (set, ways) in self.slots.chunks_exact(WAYS).enumerate() {
            for (way, &hash) in ways.iter().enumerate().filter(|&(_, &h)| h != 0) {
                let to = grown.set_of(hash);
                let base = to * WAYS;
                let free = grown.slots[base..base + WAYS]
                    .iter()
                    .position(|&s| s == 0)
                    .expect("a set of the old size splits into two: the new one has room");
                grown.slots[base + free] = hash;
                if self.clock[set] & (1 << way) != 0 {
                    grown.clock[to] |= 1 << free;
                }
            }
        }
        *self = grown;
    }
}

/// A bounded set of series-key hashes with CLOCK eviction (see the module doc).
#[derive(Debug)]
pub struct KnownSeries {
    shards: Box<[Mutex<Shard>]>,
    /// Most sets per shard, minus one (a power of two): a shard grows up to this.
    set_mask: usize,
}

impl KnownSeries {
    /// A set holding at least `capacity` hashes (rounded up to whole sets and shards).
    pub fn new(capacity: usize) -> Self {
        let sets_per_shard = capacity.div_ceil(WAYS * SHARDS).max(1).next_power_of_two();
        // One set each to begin with: a shard grows as hashes come (see `insert`).
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard::with_sets(1)))
            .collect();
        KnownSeries {
            shards,
            set_mask: sets_per_shard - 1,
        }
    }

    /// How many hashes fit.
    pub fn capacity(&self) -> usize {
        SHARDS * (self.set_mask + 1) * WAYS
    }

    /// The shard and the hash with 0 (the empty slot) moved to 1.
    fn locate(&self, hash: u64) -> (&Mutex<Shard>, u64) {
        let hash = hash.max(1);
        // Top bits pick the shard, low bits the set: independent bits of one hash.
        let shard = (hash >> (64 - SHARDS.trailing_zeros())) as usize;
        (&self.shards[shard], hash)
    }

    /// Whether `hash` is known; a hit marks it as used (CLOCK spares it once).
    pub fn touch(&self, hash: u64) -> bool {
        let (shard, hash) = self.locate(hash);
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let set = shard.set_of(hash);
        let base = set * WAYS;
        match shard.slots[base..base + WAYS]
            .iter()
            .position(|&s| s == hash)
        {
            Some(way) => {
                shard.clock[set] |= 1 << way;
                true
            }
            None => false,
        }
    }

    /// Add `hash` (nothing if already there); returns whether another hash was evicted.
    pub fn insert(&self, hash: u64) -> bool {
        let (shard, hash) = self.locate(hash);
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, base) = loop {
            let set = shard.set_of(hash);
            let base = set * WAYS;
            let ways = &shard.slots[base..base + WAYS];
            if ways.contains(&hash) {
                return false;
            }
            if let Some(way) = ways.iter().position(|&s| s == 0) {
                shard.slots[base + way] = hash;
                return false;
            }
            // A full set: grow while the shard may, evict once it is at its full size.
            if shard.clock.len() > self.set_mask {
                break (set, base);
            }
            shard.double();
        };
        // CLOCK: advance past used slots (clearing their mark) to the first unused one.
        // At most WAYS + 1 steps: after one turn every mark is cleared.
        let mut clock = shard.clock[set];
        let mut hand = usize::from(clock >> 8) % WAYS;
        while clock & (1 << hand) != 0 {
            clock &= !(1 << hand);
            hand = (hand + 1) % WAYS;
        }
        shard.slots[base + hand] = hash;
        let next = (hand + 1) % WAYS;
        shard.clock[set] = (clock & 0xff) | ((next as u16) << 8);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_hashes_are_known_and_others_are_not() {
        let known = KnownSeries::new(1024);
        assert!(!known.touch(42));
        assert!(!known.insert(42));
        assert!(known.touch(42));
        assert!(!known.touch(43));
        // 0 is the empty slot's marker: it is stored as 1, and still found.
        assert!(!known.touch(0));
        known.insert(0);
        assert!(known.touch(0));
    }

    #[test]
    fn capacity_rounds_up_to_whole_sets() {
        assert_eq!(KnownSeries::new(1).capacity(), SHARDS * WAYS);
        assert_eq!(
            KnownSeries::new(DEFAULT_KNOWN_SERIES).capacity(),
            DEFAULT_KNOWN_SERIES
        );
    }

    /// Hashes landing in one set (same shard bits, same set bits).
    fn same_set(i: u64) -> u64 {
        (i << 32) | 5
    }

    #[test]
    fn a_full_set_evicts_an_unused_slot_and_spares_used_ones() {
        let known = KnownSeries::new(1);
        for i in 1..=WAYS as u64 {
            assert!(!known.insert(same_set(i)), "room left in the set");
        }
        // Every slot but the first is read again: the next insert must evict the first.
        for i in 2..=WAYS as u64 {
            assert!(known.touch(same_set(i)));
        }
        assert!(known.insert(same_set(100)), "a full set evicts");
        assert!(!known.touch(same_set(1)), "the unused slot went");
        for i in 2..=WAYS as u64 {
            assert!(known.touch(same_set(i)), "used slot {i} spared");
        }
        assert!(known.touch(same_set(100)));
    }

    /// Few series hold few slots: a shard grows as hashes come, not up front, and every
    /// hash stays known across the growth.
    #[test]
    fn grows_with_the_hashes_it_holds() {
        let known = KnownSeries::new(DEFAULT_KNOWN_SERIES);
        let hashes: Vec<u64> = (1..=10_000u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        for &hash in &hashes {
            assert!(!known.insert(hash), "nothing evicted below capacity");
        }
        for &hash in &hashes {
            assert!(known.touch(hash), "{hash} known after growth");
        }
        let slots: usize = known
            .shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .expect("no test panics while holding it")
                    .slots
                    .len()
            })
            .sum();
        assert!(
            slots <= 8 * hashes.len(),
            "{slots} slots for {} hashes",
            hashes.len()
        );
    }

    /// However many series pass, the memory is the table's: it never grows.
    #[test]
    fn stays_within_its_capacity() {
        let known = KnownSeries::new(4096);
        let capacity = known.capacity();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..10 * capacity {
            // splitmix64: spread bits, as the keyed hash does.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            known.insert(z ^ (z >> 31));
        }
        let held: usize = known
            .shards
            .iter()
            .map(|shard| {
                let shard = shard.lock().expect("no test panics while holding it");
                assert_eq!(shard.slots.capacity(), shard.slots.len(), "never grown");
                shard.slots.iter().filter(|&&s| s != 0).count()
            })
            .sum();
        assert_eq!(held, capacity, "every slot in use, none more");
    }
}
