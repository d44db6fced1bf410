//! A bounded in-memory cache of decoded strides: for stride `j` of an index (the K messages
//! from entry `j` on), where each of its K-1 inner messages starts, relative to the entry.
//!
//! Why: the index keeps one entry every K messages (0.19 B per message on disk), so a lookup
//! that falls between entries reads and splits up to K-1 messages of the log: one `pread` and
//! a scan, a few microseconds. Lookups cluster (consumers resume near the tail, a replay asks
//! for neighbouring numbers, a client retries), so the first lookup in a stride decodes all
//! of it and the next ones are an array read, about as cheap as `count`.
//!
//! How: one table for the whole process (directory mode shares it between files), split into
//! shards so that concurrent connections rarely wait for each other. Direct-mapped: a stride
//! has exactly one slot, chosen from (index, j), and a newer stride evicts whatever was there,
//! so there is no bookkeeping per hit. Consecutive strides of one index land in consecutive
//! slots, so a region of the log no bigger than the cache never evicts itself. Each slot is
//! tagged with the index's identity and generation: a rebuild invalidates every slot of that
//! index without touching them. Memory is bounded by `--cache-mib`; the table is allocated
//! zeroed, so the operating system only backs the slots that have been written.
//!
//! Only complete strides (both entries known) are cached: the stride being written grows,
//! and the one at the tail is short anyway.

use std::sync::Mutex;

/// Shards of the table: a power of two well above the number of threads that answer queries.
const SHARDS: usize = 16;

/// Which stride a slot holds. All zeroes is an empty slot: index ids start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// [`crate::index::Index`]'s process-unique id.
    pub index: u64,
    /// The index's generation when the stride was decoded.
    pub generation: u64,
    /// The stride number `j`.
    pub stride: u64,
}

impl Key {
    fn tag(self) -> [u64; 3] {
        [self.index, self.generation, self.stride]
    }
}

struct Shard {
    /// `tags[s]` names what slot `s` holds.
    tags: Vec<[u64; 3]>,
    /// Slot `s` is `ends[s * width..(s + 1) * width]`.
    ends: Vec<u32>,
}

/// The cache of decoded strides (see the module docs).
pub struct StrideCache {
    /// K-1: inner message starts per stride.
    width: usize,
    slots_per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
}

impl StrideCache {
    /// A cache of at most about `budget` bytes for strides of `stride` messages, or None
    /// when it would hold nothing useful (no budget, or stride 1 which needs no decoding).
    pub fn new(budget: u64, stride: u64) -> Option<StrideCache> {
        let width = usize::try_from(stride.checked_sub(1)?).ok()?;
        if width == 0 {
            return None;
        }
        let slot_bytes = (width * 4 + 24) as u64;
        let slots_per_shard = usize::try_from(budget / slot_bytes / SHARDS as u64).ok()?;
        if slots_per_shard == 0 {
            return None;
        }
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    // `vec![0; n]` is a zeroed allocation: untouched slots cost no memory.
                    tags: vec![[0u64; 3]; slots_per_shard],
                    ends: vec![0u32; slots_per_shard * width],
                })
            })
            .collect();
        Some(StrideCache {
            width,
            slots_per_shard,
            shards,
        })
    }

    /// Slots in the whole table.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.slots_per_shard * SHARDS
    }

    fn place(&self, key: Key) -> (&Mutex<Shard>, usize) {
        // Spread indexes apart, keep one index's consecutive strides consecutive.
        let h = key
            .stride
            .wrapping_add(key.index.wrapping_mul(0x9E37_79B9_7F4A_7C15)) as usize;
        let shard = &self.shards[h % SHARDS];
        (shard, (h / SHARDS) % self.slots_per_shard)
    }

    /// Runs `f` on the cached inner starts of `key`'s stride, if they are cached.
    pub fn with<T>(&self, key: Key, f: impl FnOnce(&[u32]) -> T) -> Option<T> {
        let (shard, slot) = self.place(key);
        let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if shard.tags[slot] != key.tag() {
            return None;
        }
        Some(f(&shard.ends[slot * self.width..(slot + 1) * self.width]))
    }

    /// Caches `starts` (K-1 inner starts relative to the entry) for `key`'s stride.
    pub fn insert(&self, key: Key, starts: &[u32]) {
        if starts.len() != self.width {
            return;
        }
        let (shard, slot) = self.place(key);
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        shard.ends[slot * self.width..(slot + 1) * self.width].copy_from_slice(starts);
        shard.tags[slot] = key.tag();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u64, generation: u64, stride: u64) -> Key {
        Key {
            index,
            generation,
            stride,
        }
    }

    #[test]
    fn hits_misses_and_invalidation() {
        let c = StrideCache::new(1 << 20, 4).unwrap();
        assert!(c.with(key(1, 1, 0), |_| ()).is_none());
        c.insert(key(1, 1, 0), &[10, 20, 30]);
        c.insert(key(1, 1, 1), &[11, 21, 31]);
        assert_eq!(c.with(key(1, 1, 0), |s| s.to_vec()), Some(vec![10, 20, 30]));
        assert_eq!(c.with(key(1, 1, 1), |s| s[2]), Some(31));
        // Another generation or another index is another stride.
        assert!(c.with(key(1, 2, 0), |_| ()).is_none());
        assert!(c.with(key(2, 1, 0), |_| ()).is_none());
        // A wrong width is not cached.
        c.insert(key(1, 1, 5), &[1, 2]);
        assert!(c.with(key(1, 1, 5), |_| ()).is_none());
    }

    #[test]
    fn bounded_and_direct_mapped() {
        let c = StrideCache::new(16 * 36 * 2, 4).unwrap();
        assert_eq!(c.capacity(), 32);
        for j in 0..32 {
            c.insert(key(1, 1, j), &[j as u32, 0, 0]);
        }
        // A region as big as the cache fits whole.
        assert!((0..32).all(|j| c.with(key(1, 1, j), |s| s[0] == j as u32) == Some(true)));
        // The next one evicts exactly one.
        c.insert(key(1, 1, 32), &[32, 0, 0]);
        let held = (0..33)
            .filter(|&j| c.with(key(1, 1, j), |_| ()).is_some())
            .count();
        assert_eq!(held, 32);
    }

    #[test]
    fn nothing_to_cache() {
        assert!(StrideCache::new(0, 64).is_none());
        assert!(StrideCache::new(1 << 30, 1).is_none());
        assert!(StrideCache::new(100, 64).is_none());
    }
}
