//! The heap map: a lock-free open-addressing set of the addresses of live sampled allocations,
//! so that every free can tell in a few loads whether it frees a sample.
//!
//! - Fixed capacity chosen at creation (no resize: the allocator hooks cannot allocate), split
//!   into regions of doubling size (2^12 slots, then 2^13, ...). New keys go to the current
//!   region; when it is half full, to the next one. The slot array is zero pages until written,
//!   so the pages touched (a page fault each, about 2 µs) follow the number of live samples,
//!   not the capacity: hashing over the whole array touched a new page with nearly every one of
//!   the first thousand samples. (Growing a prefix of one table instead would leave its start
//!   crowded with the keys of the smaller sizes.)
//! - Linear probing within a region, at most [`MAX_PROBE`] slots from the home slot; a removal
//!   looks in every region up to the current one (only frees that the filter cannot rule out
//!   search at all). Removal leaves a tombstone so that later keys of the same probe run stay
//!   reachable; insertion reuses tombstones. A key whose probe window is full is refused
//!   (dropped and counted).
//! - A counting [`Filter`] (one small counter per bucket of addresses, 32 KiB) answers
//!   "certainly not sampled" for nearly every free without touching the slot array. It is a
//!   separate object so that the caller can keep it in a static (one load on the hot path).
//!
//! Concurrency: an address is inserted by the thread whose allocation returned it and removed by
//! the thread that frees it, which the program orders after the allocation; so operations on
//! one address never race, and different addresses compete for slots only through CAS. The
//! current region only advances (until `clear`), so a removal looks at least as far as the
//! region its key was inserted in.

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

const EMPTY: u64 = 0;
const TOMBSTONE: u64 = 1;
/// Longest probe sequence; bounds the cost of a lookup whatever the tombstones.
pub const MAX_PROBE: usize = 64;
/// The first region has 2^12 slots (32 KiB, 8 pages); region `r` has 2^(12 + r).
const FIRST_REGION_BITS: u32 = 12;
const MAX_REGIONS: usize = 16;
const FILTER_BITS: u32 = 14;
const FILTER_LEN: usize = 1 << FILTER_BITS;

/// Counters of live keys per bucket of addresses; zero means no key of that bucket is live.
pub struct Filter([AtomicU16; FILTER_LEN]);

impl Filter {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Filter {
        Filter([const { AtomicU16::new(0) }; FILTER_LEN])
    }

    /// The address's 16-byte granule modulo the filter's size: blocks freed near each other
    /// (as allocators hand them out: from the same pool or arena) share the filter's cache lines,
    /// so the filter stays cached where a hash would touch a random line per free (perf showed
    /// that miss as most of a free's cost). Live samples still spread over the buckets: their
    /// addresses are far apart compared with 16 bytes.
    #[inline(always)]
    fn bucket(&self, addr: u64) -> &AtomicU16 {
        &self.0[((addr >> 4) & (FILTER_LEN as u64 - 1)) as usize]
    }

    /// False means `addr` is certainly not in the map (one load of a small, hot array).
    #[inline(always)]
    pub fn may_contain(&self, addr: u64) -> bool {
        self.bucket(addr).load(Ordering::Acquire) != 0
    }

    fn clear(&self) {
        for b in self.0.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// Where region `r` starts in the slot array, and log2 of its size.
#[inline(always)]
fn region(r: usize) -> (usize, u32) {
    (
        ((1 << r) - 1) << FIRST_REGION_BITS,
        FIRST_REGION_BITS + r as u32,
    )
}

pub struct HeapMap {
    slots: Box<[AtomicU64]>,
    regions: usize,
    /// The region new keys go to.
    current: AtomicUsize,
    /// Live keys per region.
    region_len: [AtomicUsize; MAX_REGIONS],
    filter: &'static Filter,
    len: AtomicUsize,
    tombstones: AtomicUsize,
    /// Insertions that did not get their home slot.
    collisions: AtomicU64,
    /// Insertions refused because the probe window was full.
    refused: AtomicU64,
}

#[inline(always)]
fn hash(addr: u64) -> u64 {
    // Allocations are at least 8-byte aligned: the low bits carry no information.
    (addr >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn zeroed_atomics<A, T: Default + Clone>(n: usize) -> Box<[A]> {
    let v: Box<[T]> = vec![T::default(); n].into_boxed_slice();
    assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<A>());
    assert_eq!(std::mem::align_of::<T>(), std::mem::align_of::<A>());
    // SAFETY: A is the atomic type of T (same size and alignment, checked above, and the same
    // in-memory representation); vec! of zeros comes from calloc, so untouched pages cost no RSS.
    unsafe { Box::from_raw(Box::into_raw(v) as *mut [A]) }
}

impl HeapMap {
    /// A map of at most `max_slots` slots (8 bytes each; at least one region of 2^12) counting
    /// its keys in `filter`, which must be all zeros and used by no other map.
    pub fn new(max_slots: usize, filter: &'static Filter) -> HeapMap {
        // Region `r` ends where region `r + 1` starts.
        let mut regions = 1;
        while regions < MAX_REGIONS && region(regions + 1).0 <= max_slots {
            regions += 1;
        }
        HeapMap {
            slots: zeroed_atomics::<AtomicU64, u64>(region(regions).0),
            regions,
            current: AtomicUsize::new(0),
            region_len: [const { AtomicUsize::new(0) }; MAX_REGIONS],
            filter,
            len: AtomicUsize::new(0),
            tombstones: AtomicUsize::new(0),
            collisions: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots in the regions in use so far.
    pub fn active_capacity(&self) -> usize {
        region(self.current.load(Ordering::Relaxed) + 1).0
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn tombstones(&self) -> usize {
        self.tombstones.load(Ordering::Relaxed)
    }

    pub fn collisions(&self) -> u64 {
        self.collisions.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Live entries as a percentage of the capacity.
    pub fn load_percent(&self) -> f64 {
        self.len() as f64 * 100.0 / self.capacity() as f64
    }

    /// False means `addr` is certainly not in the map.
    #[inline(always)]
    pub fn may_contain(&self, addr: u64) -> bool {
        self.filter.may_contain(addr)
    }

    /// The slot `i` steps from `addr`'s home in region `r`.
    #[inline(always)]
    fn slot(&self, addr: u64, r: usize, i: usize) -> &AtomicU64 {
        let (start, bits) = region(r);
        let home = (hash(addr) >> (64 - bits)) as usize;
        &self.slots[start + ((home + i) & ((1 << bits) - 1))]
    }

    /// The region for a new key: the next one once the current one is half full (keeps probe
    /// runs short).
    fn region_for_insert(&self) -> usize {
        let mut r = self.current.load(Ordering::Acquire);
        while r + 1 < self.regions
            && self.region_len[r].load(Ordering::Relaxed) * 2 >= 1 << region(r).1
        {
            r = match self
                .current
                .compare_exchange(r, r + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => r + 1,
                Err(now) => now,
            };
        }
        r
    }

    /// Add `addr` (not already present); false when its probe window is full.
    pub fn insert(&self, addr: u64) -> bool {
        if addr <= TOMBSTONE {
            return false;
        }
        // The filter counts first, so a lookup ordered after this insert sees a non-zero count.
        let bucket = self.filter.bucket(addr);
        if bucket.fetch_add(1, Ordering::AcqRel) == u16::MAX {
            bucket.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let r = self.region_for_insert();
        let mut i = 0;
        while i < MAX_PROBE {
            let slot = self.slot(addr, r, i);
            let cur = slot.load(Ordering::Acquire);
            if cur == EMPTY || cur == TOMBSTONE {
                if slot
                    .compare_exchange(cur, addr, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.len.fetch_add(1, Ordering::Relaxed);
                    self.region_len[r].fetch_add(1, Ordering::Relaxed);
                    if cur == TOMBSTONE {
                        self.tombstones.fetch_sub(1, Ordering::Relaxed);
                    }
                    if i > 0 {
                        self.collisions.fetch_add(1, Ordering::Relaxed);
                    }
                    return true;
                }
                continue; // another key took it: look at the same slot again
            }
            i += 1;
        }
        bucket.fetch_sub(1, Ordering::AcqRel);
        self.refused.fetch_add(1, Ordering::Relaxed);
        false
    }

    /// Remove `addr`; true when it was there.
    pub fn remove(&self, addr: u64) -> bool {
        if addr <= TOMBSTONE || !self.may_contain(addr) {
            return false;
        }
        // Newest region first: most live keys were inserted there.
        for r in (0..=self.current.load(Ordering::Acquire)).rev() {
            for i in 0..MAX_PROBE {
                let slot = self.slot(addr, r, i);
                let cur = slot.load(Ordering::Acquire);
                if cur == addr {
                    if slot
                        .compare_exchange(addr, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        return false; // never happens: only the freeing thread removes its address
                    }
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    self.region_len[r].fetch_sub(1, Ordering::Relaxed);
                    self.tombstones.fetch_add(1, Ordering::Relaxed);
                    self.filter.bucket(addr).fetch_sub(1, Ordering::AcqRel);
                    return true;
                }
                if cur == EMPTY {
                    break;
                }
            }
        }
        false
    }

    /// Forget everything. The caller guarantees no concurrent operation (a forked child).
    pub fn clear(&self) {
        // Slots past the regions in use were never written.
        for s in self.slots[..self.active_capacity()].iter() {
            if s.load(Ordering::Relaxed) != EMPTY {
                s.store(EMPTY, Ordering::Relaxed);
            }
        }
        self.filter.clear();
        self.current.store(0, Ordering::Relaxed);
        for n in &self.region_len {
            n.store(0, Ordering::Relaxed);
        }
        self.len.store(0, Ordering::Relaxed);
        self.tombstones.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn filter() -> &'static Filter {
        Box::leak(Box::new(Filter::new()))
    }

    #[test]
    fn insert_find_remove_and_reuse() {
        let m = HeapMap::new(1 << 12, filter());
        let addrs: Vec<u64> = (1..=500u64).map(|i| 0x7f00_0000_0000 + i * 48).collect();
        for &a in &addrs {
            assert!(m.insert(a));
        }
        assert_eq!(m.len(), 500);
        assert!(!m.remove(0x1000)); // never inserted
        for &a in addrs.iter().step_by(2) {
            assert!(m.remove(a));
            assert!(!m.remove(a), "removed twice");
        }
        assert_eq!(m.len(), 250);
        for &a in addrs.iter().skip(1).step_by(2) {
            assert!(m.may_contain(a));
            assert!(m.remove(a), "a key past a tombstone stays reachable");
        }
        assert!(m.is_empty());
        // Churn far beyond the capacity: tombstones are reused, nothing is lost.
        for lap in 0..50u64 {
            for &a in &addrs {
                assert!(m.insert(a + lap * 8), "lap {lap}");
            }
            for &a in &addrs {
                assert!(m.remove(a + lap * 8));
            }
        }
        assert!(m.is_empty());
        assert!(m.load_percent() == 0.0);
    }

    #[test]
    fn full_probe_window_is_refused_not_lost() {
        let m = HeapMap::new(1 << 12, filter()); // one region
        let mut inserted = vec![];
        for i in 1..10_000u64 {
            let a = i * 16;
            if m.insert(a) {
                inserted.push(a);
            }
        }
        assert!(m.refused() > 0);
        assert_eq!(inserted.len(), m.len());
        for a in inserted {
            assert!(m.remove(a));
        }
        assert!(m.is_empty());
    }

    #[test]
    fn new_keys_go_to_bigger_regions_as_live_keys_grow_and_old_keys_stay_reachable() {
        let m = HeapMap::new(1 << 20, filter());
        assert_eq!(m.capacity(), 255 << 12);
        assert_eq!(m.active_capacity(), 1 << 12);
        // Churn that keeps few keys live does not grow the prefix (touches few pages).
        for i in 1..100_000u64 {
            assert!(m.insert(i * 48));
            assert!(m.remove(i * 48));
        }
        assert_eq!(m.active_capacity(), 1 << 12);
        // Keys inserted under every prefix size, then removed in another order.
        let keys: Vec<u64> = (1..=50_000u64)
            .map(|i| 0x5555_0000_0000 + i * 4096 + 16)
            .collect();
        for (i, &k) in keys.iter().enumerate() {
            assert!(m.insert(k), "key {i}");
        }
        // Each region was half full before the next: at most about 4 slots per live key.
        assert!(m.active_capacity() >= 2 * keys.len());
        assert!(m.active_capacity() <= 5 * keys.len());
        assert_eq!(m.refused(), 0);
        for &k in keys.iter().rev().step_by(3) {
            assert!(m.remove(k));
        }
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(
                m.remove(k),
                !(keys.len() - 1 - i).is_multiple_of(3),
                "key {i}"
            );
        }
        assert!(m.is_empty());
        m.clear();
        assert_eq!(m.active_capacity(), 1 << 12);
    }

    #[test]
    fn concurrent_threads_keep_their_keys() {
        let m = Arc::new(HeapMap::new(1 << 16, filter()));
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for round in 0..200u64 {
                        let keys: Vec<u64> = (0..100u64)
                            .map(|i| (t << 40) + (round * 100 + i + 1) * 64)
                            .collect();
                        for &k in &keys {
                            assert!(m.insert(k));
                        }
                        for &k in &keys {
                            assert!(m.remove(k));
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(m.is_empty());
    }
}
