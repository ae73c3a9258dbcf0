//! The series the server has seen lately, as 64-bit hashes of their store keys, in fixed
//! memory: what tells a reading of a *new* series (which the cardinality limit charges)
//! from one of a known series (which it never does).
//!
//! A set-associative table: a hash picks one set of [`WAYS`] slots; a full set evicts by
//! CLOCK (a slot read since the hand last passed it is spared once), so series written
//! often stay while one-off series make room. The slots are allocated zeroed up front
//! (`capacity × 8` bytes, 8 MiB at the default). The OS backs a page only once it is
//! written, but hashes scatter over every page, so the whole table is resident once a few
//! thousand series are seen: count on about 8 MiB at the default. The table is split into [`SHARDS`]
//! mutexes so connections on different cores rarely meet; the connections' own caches
//! ([`super::quota`]) keep most readings off these locks altogether.
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
#[derive(Debug)]
struct Shard {
    slots: Vec<u64>,
    clock: Vec<u16>,
}

/// A bounded set of series-key hashes with CLOCK eviction (see the module doc).
#[derive(Debug)]
pub struct KnownSeries {
    shards: Box<[Mutex<Shard>]>,
    /// Sets per shard, minus one (a power of two, so it masks).
    set_mask: usize,
}

impl KnownSeries {
    /// A set holding at least `capacity` hashes (rounded up to whole sets and shards).
    pub fn new(capacity: usize) -> Self {
        let sets_per_shard = capacity.div_ceil(WAYS * SHARDS).max(1).next_power_of_two();
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    // Zeroed allocations: untouched pages cost no memory.
                    slots: vec![0; sets_per_shard * WAYS],
                    clock: vec![0; sets_per_shard],
                })
            })
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

    /// The shard and the set's index in it; the hash with 0 (the empty slot) moved to 1.
    fn locate(&self, hash: u64) -> (&Mutex<Shard>, usize, u64) {
        let hash = hash.max(1);
        // Top bits pick the shard, low bits the set: independent bits of one hash.
        let shard = (hash >> (64 - SHARDS.trailing_zeros())) as usize;
        let set = (hash as usize) & self.set_mask;
        (&self.shards[shard], set, hash)
    }

    /// Whether `hash` is known; a hit marks it as used (CLOCK spares it once).
    pub fn touch(&self, hash: u64) -> bool {
        let (shard, set, hash) = self.locate(hash);
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
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
        let (shard, set, hash) = self.locate(hash);
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let base = set * WAYS;
        let ways = &shard.slots[base..base + WAYS];
        if ways.contains(&hash) {
            return false;
        }
        if let Some(way) = ways.iter().position(|&s| s == 0) {
            shard.slots[base + way] = hash;
            return false;
        }
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
