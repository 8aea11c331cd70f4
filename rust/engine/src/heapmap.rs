//! The heap map: a lock-free open-addressing set of the addresses of live sampled allocations,
//! so that every free can tell in a few loads whether it frees a sample.
//!
//! - Fixed capacity chosen at creation (no resize: the allocator hooks cannot allocate).
//! - Linear probing, at most [`MAX_PROBE`] slots from the home slot. Removal leaves a tombstone
//!   so that later keys of the same probe run stay reachable; insertion reuses tombstones.
//!   A key whose probe window is full is refused (the sample is dropped and counted).
//! - A counting filter (one small counter per bucket of addresses, 32 KiB) answers "certainly
//!   not sampled" for nearly every free without touching the large slot array.
//!
//! Concurrency: an address is inserted by the thread whose allocation returned it and removed by
//! the thread that frees it, which the program orders after the allocation; so operations on
//! one address never race, and different addresses compete for slots only through CAS.

use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

const EMPTY: u64 = 0;
const TOMBSTONE: u64 = 1;
/// Longest probe sequence; bounds the cost of a lookup whatever the tombstones.
pub const MAX_PROBE: usize = 64;
const FILTER_BITS: u32 = 14;
const FILTER_LEN: usize = 1 << FILTER_BITS;

pub struct HeapMap {
    slots: Box<[AtomicU64]>,
    bits: u32,
    /// A fixed-size array, so that indexing it needs no bounds check on the hot path.
    filter: Box<[AtomicU16; FILTER_LEN]>,
    len: AtomicUsize,
    tombstones: AtomicUsize,
    /// Insertions that did not get their home slot.
    collisions: AtomicU64,
    /// Insertions refused because the probe window was full.
    refused: AtomicU64,
}

#[inline(always)]
fn mix(addr: u64, k: u64) -> u64 {
    // Allocations are at least 8-byte aligned: the low bits carry no information.
    (addr >> 3).wrapping_mul(k)
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
    /// A map of `2^bits` slots (8 bytes each).
    pub fn new(bits: u32) -> HeapMap {
        let bits = bits.clamp(8, 30);
        HeapMap {
            slots: zeroed_atomics::<AtomicU64, u64>(1 << bits),
            bits,
            filter: zeroed_atomics::<AtomicU16, u16>(FILTER_LEN)
                .try_into()
                .unwrap_or_else(|_| unreachable!("made with FILTER_LEN entries")),
            len: AtomicUsize::new(0),
            tombstones: AtomicUsize::new(0),
            collisions: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
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

    #[inline(always)]
    fn home(&self, addr: u64) -> usize {
        (mix(addr, 0x9E37_79B9_7F4A_7C15) >> (64 - self.bits)) as usize
    }

    /// The address's 16-byte granule modulo the filter's size: blocks freed near each other
    /// (as allocators hand them out: from the same pool or arena) share the filter's cache lines,
    /// so the filter stays cached where a hash would touch a random line per free (perf showed
    /// that miss as most of a free's cost). Live samples still spread over the buckets: their
    /// addresses are far apart compared with 16 bytes.
    #[inline(always)]
    fn bucket(&self, addr: u64) -> &AtomicU16 {
        &self.filter[((addr >> 4) & (FILTER_LEN as u64 - 1)) as usize]
    }

    /// False means `addr` is certainly not in the map (one load of a small, hot array).
    #[inline(always)]
    pub fn may_contain(&self, addr: u64) -> bool {
        self.bucket(addr).load(Ordering::Acquire) != 0
    }

    /// Add `addr` (not already present); false when its probe window is full.
    pub fn insert(&self, addr: u64) -> bool {
        if addr <= TOMBSTONE {
            return false;
        }
        // The filter counts first, so a lookup ordered after this insert sees a non-zero count.
        let bucket = self.bucket(addr);
        if bucket.fetch_add(1, Ordering::AcqRel) == u16::MAX {
            bucket.fetch_sub(1, Ordering::AcqRel);
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mask = self.capacity() - 1;
        let home = self.home(addr);
        let mut i = 0;
        while i < MAX_PROBE {
            let slot = &self.slots[(home + i) & mask];
            let cur = slot.load(Ordering::Acquire);
            if cur == EMPTY || cur == TOMBSTONE {
                if slot
                    .compare_exchange(cur, addr, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    self.len.fetch_add(1, Ordering::Relaxed);
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
        let mask = self.capacity() - 1;
        let home = self.home(addr);
        for i in 0..MAX_PROBE {
            let slot = &self.slots[(home + i) & mask];
            let cur = slot.load(Ordering::Acquire);
            if cur == addr {
                if slot
                    .compare_exchange(addr, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return false; // never happens: only the freeing thread removes its address
                }
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.tombstones.fetch_add(1, Ordering::Relaxed);
                self.bucket(addr).fetch_sub(1, Ordering::AcqRel);
                return true;
            }
            if cur == EMPTY {
                return false;
            }
        }
        false
    }

    /// Forget everything. The caller guarantees no concurrent operation (a forked child).
    pub fn clear(&self) {
        for s in self.slots.iter() {
            if s.load(Ordering::Relaxed) != EMPTY {
                s.store(EMPTY, Ordering::Relaxed);
            }
        }
        for b in self.filter.iter() {
            b.store(0, Ordering::Relaxed);
        }
        self.len.store(0, Ordering::Relaxed);
        self.tombstones.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn insert_find_remove_and_reuse() {
        let m = HeapMap::new(10);
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
        let m = HeapMap::new(8); // 256 slots
        let mut inserted = vec![];
        for i in 1..2000u64 {
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
    }

    #[test]
    fn concurrent_threads_keep_their_keys() {
        let m = Arc::new(HeapMap::new(16));
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
