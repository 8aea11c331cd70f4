//! A bounded, lock-free, multi-producer / single-consumer ring of variable-length records.
//!
//! Producers are signal handlers: `reserve` and `commit` never allocate, never lock and never
//! panic. The consumer (the resolver, running with the GIL) reads records in order.
//!
//! Layout: a power-of-two byte array of `u64` words. Every record starts on a word boundary with a
//! header word `COMMITTED | [PAD] | len_in_words` that the producer stores *last* (release), so a
//! non-zero header means the record body is complete. A record never wraps: when it does not fit
//! before the end, the producer reserves the tail of the array as a padding record as well.
//! The consumer zeroes what it consumed before handing the space back, so a stale word from an
//! earlier lap can never look like a committed header.

use std::sync::atomic::{AtomicU64, Ordering};

const COMMITTED: u64 = 1 << 63;
const PAD: u64 = 1 << 62;
const LEN_MASK: u64 = (1 << 32) - 1;

pub struct Ring {
    words: Box<[AtomicU64]>,
    mask: u64,
    /// Total words ever reserved (monotonic; position = head & mask).
    head: AtomicU64,
    /// Total words ever released by the consumer.
    tail: AtomicU64,
}

/// Space reserved by a producer; must be committed (it is the only way to release it).
pub struct Reservation<'a> {
    ring: &'a Ring,
    start: usize,
    len_words: usize,
}

impl Ring {
    /// A ring of at least `bytes` bytes (rounded up to a power of two, minimum 4 KiB).
    pub fn new(bytes: usize) -> Ring {
        let words = (bytes.max(4096) / 8).next_power_of_two();
        // vec![0; n] comes from the allocator already zeroed (fresh pages for a large ring), so
        // starting a profile does not touch megabytes of memory it may never use.
        let zeroed = vec![0u64; words].into_boxed_slice();
        // SAFETY: AtomicU64 has the same size, alignment and bit validity as u64.
        let words = unsafe { Box::from_raw(Box::into_raw(zeroed) as *mut [AtomicU64]) };
        Ring {
            mask: words.len() as u64 - 1,
            words,
            head: AtomicU64::new(0),
            tail: AtomicU64::new(0),
        }
    }

    pub fn capacity_bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Bytes reserved and not yet consumed.
    pub fn used_bytes(&self) -> usize {
        let head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        (head.wrapping_sub(tail) * 8) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire) == self.tail.load(Ordering::Acquire)
    }

    /// Words ever reserved: every record reserved so far has a position below this.
    pub fn reserved_words(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Words ever consumed: every record below this position has been handed to the consumer.
    pub fn consumed_words(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    /// Reserve room for a record body of `body_words` words. `None` when the ring is full (the
    /// caller counts a dropped sample). Async-signal-safe.
    pub fn reserve(&self, body_words: usize) -> Option<Reservation<'_>> {
        let len = body_words as u64 + 1; // + header
        let cap = self.mask + 1;
        if len > cap / 2 {
            return None;
        }
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            let tail = self.tail.load(Ordering::Acquire);
            let pos = head & self.mask;
            let pad = if pos + len > cap { cap - pos } else { 0 };
            let total = pad + len;
            if head.wrapping_sub(tail) + total > cap {
                return None;
            }
            match self.head.compare_exchange_weak(
                head,
                head + total,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if pad > 0 {
                        self.words[pos as usize].store(COMMITTED | PAD | pad, Ordering::Release);
                    }
                    let start = ((head + pad) & self.mask) as usize;
                    return Some(Reservation {
                        ring: self,
                        start,
                        len_words: len as usize,
                    });
                }
                Err(actual) => head = actual,
            }
        }
    }

    /// Hand every committed record, in order, to `f` as its position (see [`Ring::reserved_words`])
    /// and body words; stop at the first record still being written. Returns the number of
    /// records consumed. Single consumer only: the caller must serialize calls.
    pub fn consume(&self, mut f: impl FnMut(u64, &[u64])) -> usize {
        let mut n = 0;
        let mut tail = self.tail.load(Ordering::Relaxed);
        let head = self.head.load(Ordering::Acquire);
        let mut body = Vec::new();
        while tail != head {
            let pos = (tail & self.mask) as usize;
            let header = self.words[pos].load(Ordering::Acquire);
            if header & COMMITTED == 0 {
                break;
            }
            let len = (header & LEN_MASK) as usize;
            if header & PAD == 0 {
                body.clear();
                body.extend(
                    self.words[pos + 1..pos + len]
                        .iter()
                        .map(|w| w.load(Ordering::Relaxed)),
                );
                f(tail, &body);
                n += 1;
            }
            for w in &self.words[pos..pos + len] {
                w.store(0, Ordering::Relaxed);
            }
            tail += len as u64;
            self.tail.store(tail, Ordering::Release);
        }
        n
    }

    /// Forget everything (used in a forked child, where a producer may have died mid-record).
    /// Caller guarantees no producer or consumer runs concurrently.
    pub fn reset(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Relaxed);
        }
        self.head.store(0, Ordering::Release);
        self.tail.store(0, Ordering::Release);
    }
}

impl Reservation<'_> {
    pub fn len_words(&self) -> usize {
        self.len_words - 1
    }

    /// Write body word `i` (bounds are the caller's contract; out-of-range writes are ignored so
    /// that the signal handler can never panic).
    #[inline]
    pub fn write(&mut self, i: usize, value: u64) {
        if i + 1 < self.len_words {
            self.ring.words[self.start + 1 + i].store(value, Ordering::Relaxed);
        }
    }

    /// Write `words` from body word `at` on (as [`Reservation::write`]).
    #[inline]
    pub fn write_words(&mut self, at: usize, words: &[u64]) {
        for (i, &w) in words.iter().enumerate() {
            self.write(at + i, w);
        }
    }

    /// Publish the record: the header goes last so the consumer sees a complete body.
    pub fn commit(self) {
        self.ring.words[self.start].store(COMMITTED | self.len_words as u64, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn records_come_out_in_order_and_intact() {
        let ring = Ring::new(4096);
        for i in 0..10u64 {
            let mut r = ring.reserve(i as usize % 5 + 1).unwrap();
            for j in 0..r.len_words() {
                r.write(j, i * 100 + j as u64);
            }
            r.commit();
        }
        let mut seen = vec![];
        ring.consume(|_, body| seen.push(body.to_vec()));
        assert_eq!(seen.len(), 10);
        for (i, body) in seen.iter().enumerate() {
            assert_eq!(body.len(), i % 5 + 1);
            assert!(body
                .iter()
                .enumerate()
                .all(|(j, &w)| w == i as u64 * 100 + j as u64));
        }
        assert!(ring.is_empty());
    }

    #[test]
    fn full_ring_refuses_and_recovers_after_consume() {
        let ring = Ring::new(4096); // 512 words
        let mut accepted = 0;
        while let Some(r) = ring.reserve(30) {
            r.commit();
            accepted += 1;
        }
        assert!((15..=16).contains(&accepted), "{accepted}");
        assert_eq!(ring.consume(|_, _| {}), accepted);
        // Wrapping needs padding records; many laps must keep working.
        for lap in 0..1000u64 {
            let mut r = ring.reserve(37).expect("space after consume");
            r.write(0, lap);
            r.commit();
            let mut got = None;
            ring.consume(|_, b| got = Some(b[0]));
            assert_eq!(got, Some(lap));
        }
    }

    #[test]
    fn uncommitted_record_blocks_later_ones_until_committed() {
        let ring = Ring::new(4096);
        let first = ring.reserve(2).unwrap();
        ring.reserve(2).unwrap().commit();
        assert_eq!(ring.consume(|_, _| {}), 0);
        // What the consumer knows: both records were reserved, neither was handed over.
        assert_eq!((ring.consumed_words(), ring.reserved_words()), (0, 6));
        first.commit();
        let mut positions = vec![];
        assert_eq!(ring.consume(|at, _| positions.push(at)), 2);
        assert_eq!(positions, [0, 3]);
        assert_eq!(ring.consumed_words(), 6);
    }

    #[test]
    fn concurrent_producers_lose_nothing_they_were_granted() {
        let ring = Arc::new(Ring::new(1 << 16));
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    let mut granted = 0u64;
                    for i in 0..20_000u64 {
                        let len = (i % 7 + 2) as usize;
                        if let Some(mut r) = ring.reserve(len) {
                            r.write(0, p);
                            r.write(1, i);
                            for j in 2..len {
                                r.write(j, p ^ i ^ j as u64);
                            }
                            r.commit();
                            granted += 1;
                        }
                    }
                    granted
                })
            })
            .collect();
        let mut received = 0u64;
        let mut last = [None::<u64>; 4];
        let check = |b: &[u64], last: &mut [Option<u64>; 4]| {
            let (p, i) = (b[0], b[1]);
            assert!(last[p as usize].is_none_or(|l| l < i), "order per producer");
            last[p as usize] = Some(i);
            for (j, &w) in b.iter().enumerate().skip(2) {
                assert_eq!(w, p ^ i ^ j as u64);
            }
        };
        while producers.iter().any(|h| !h.is_finished()) {
            received += ring.consume(|_, b| check(b, &mut last)) as u64;
        }
        let granted: u64 = producers.into_iter().map(|h| h.join().unwrap()).sum();
        received += ring.consume(|_, b| check(b, &mut last)) as u64;
        assert_eq!(granted, received);
    }
}
