//! Poisson (exponential) byte sampling of allocations, and the unbiased weight of a sample.
//!
//! The allocated bytes of the process are treated as one stream; sample points fall on it as a
//! Poisson process with mean gap `mean` bytes. An allocation is sampled when at least one point
//! falls inside its bytes. A countdown holds the bytes left to the next point; because the
//! process is memoryless, the gap after a sampled allocation is simply a fresh exponential draw
//! (points further inside the same allocation do not matter: they would sample it again).
//!
//! Estimator (tcmalloc's): an allocation of `s` bytes is sampled with probability
//! `p = 1 - exp(-s / mean)`, so giving each sampled allocation the weight `s / p` makes the sum of
//! the weights of the sampled allocations an unbiased estimate of the sum of all sizes, for any
//! mix of sizes. Small allocations stand for about `mean` bytes, large ones for their own size.
//!
//! Called from allocator hooks: no allocation, no lock. The countdown is updated with a relaxed
//! load and store, not a read-modify-write: CPython's MEM and OBJ domains are serialised by the
//! GIL, so only RAW-domain calls from threads without the GIL can race, and a race loses a few
//! bytes of the stream (slightly fewer samples) instead of costing a locked instruction on every
//! allocation.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
/// A countdown that no allocation brings above zero (see [`PoissonSampler::disarm`]).
const DISARMED: i64 = i64::MIN / 2;

pub struct PoissonSampler {
    countdown: AtomicI64,
    mean: AtomicU64,
    /// splitmix64 state: advanced with one atomic add, so draws are lock-free and never repeat.
    rng: AtomicU64,
}

impl PoissonSampler {
    pub const fn new(mean_bytes: u64, seed: u64) -> PoissonSampler {
        PoissonSampler {
            countdown: AtomicI64::new(i64::MAX),
            mean: AtomicU64::new(if mean_bytes == 0 { 1 } else { mean_bytes }),
            rng: AtomicU64::new(seed),
        }
    }

    pub fn mean(&self) -> u64 {
        self.mean.load(Ordering::Relaxed)
    }

    /// Change the mean gap and start a fresh countdown.
    pub fn set_mean(&self, mean_bytes: u64) {
        self.mean.store(mean_bytes.max(1), Ordering::Relaxed);
        self.countdown.store(self.next_gap(), Ordering::Relaxed);
    }

    /// Restart the random draws from `seed`, from the next gap on (`set_mean` draws one).
    pub fn reseed(&self, seed: u64) {
        self.rng.store(seed, Ordering::Relaxed);
    }

    /// Make [`Self::consume`] refuse every allocation (up to 2^62 bytes) until the next
    /// `set_mean`: lets a caller's fast path stand for "enabled" too.
    pub fn disarm(&self) {
        self.countdown.store(DISARMED, Ordering::Relaxed);
    }

    /// Account `size` bytes; true when this allocation is sampled.
    #[inline(always)]
    pub fn on_alloc(&self, size: usize) -> bool {
        if self.consume(size) {
            return false;
        }
        self.on_sampled();
        true
    }

    /// Account `size` bytes unless the next sample point falls inside them: true when they
    /// were accounted (not sampled), false when the caller must take the sample and call
    /// [`Self::on_sampled`]. Split from `on_alloc` so that a caller's fast path makes no call.
    #[inline(always)]
    pub fn consume(&self, size: usize) -> bool {
        let left = self
            .countdown
            .load(Ordering::Relaxed)
            .wrapping_sub(size as i64);
        if left > 0 {
            self.countdown.store(left, Ordering::Relaxed);
        }
        left > 0
    }

    /// After `consume` returned false: start the gap to the next sample point.
    pub fn on_sampled(&self) {
        self.countdown.store(self.next_gap(), Ordering::Relaxed);
    }

    fn next_u64(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(GOLDEN_GAMMA, Ordering::Relaxed)
            .wrapping_add(GOLDEN_GAMMA);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An exponential gap with the current mean, at least one byte.
    fn next_gap(&self) -> i64 {
        // Uniform in (0, 1]: never 0, so ln is finite.
        let u = ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64);
        let gap = -u.ln() * self.mean() as f64;
        (gap as i64).max(1)
    }
}

/// The bytes a sampled allocation of `size` bytes stands for at mean gap `mean`:
/// `size / (1 - exp(-size / mean))`, rounded (see the module docs).
pub fn unbiased_weight(size: u64, mean: u64) -> u64 {
    if size == 0 {
        return 0;
    }
    let s = size as f64;
    // -expm1(-x) = 1 - exp(-x) without cancellation for small x.
    let p = -(-s / mean.max(1) as f64).exp_m1();
    (s / p).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sum of the weights of the sampled allocations vs. the true total, over `runs` runs.
    fn estimate(sizes: &[u64], mean: u64, seed: u64) -> f64 {
        let s = PoissonSampler::new(mean, seed);
        s.set_mean(mean);
        sizes
            .iter()
            .filter(|&&n| s.on_alloc(n as usize))
            .map(|&n| unbiased_weight(n, mean) as f64)
            .sum()
    }

    #[test]
    fn weight_is_about_the_mean_for_small_and_the_size_for_large() {
        let mean = 64 * 1024;
        assert_eq!(unbiased_weight(0, mean), 0);
        let small = unbiased_weight(16, mean) as f64;
        assert!(
            (small - mean as f64).abs() / (mean as f64) < 0.001,
            "{small}"
        );
        let large = unbiased_weight(100 * mean, mean);
        assert_eq!(large, 100 * mean);
    }

    #[test]
    fn estimate_is_unbiased_for_every_size_class() {
        let mean = 4096;
        // For each size class alone, the mean estimate over many runs matches the truth.
        for size in [8u64, 100, 1000, 4096, 20_000, 200_000] {
            let n = (20_000_000 / size) as usize;
            let sizes = vec![size; n];
            let truth = (size * n as u64) as f64;
            let runs = 20;
            let avg: f64 = (0..runs)
                .map(|r| estimate(&sizes, mean, 1 + r))
                .sum::<f64>()
                / runs as f64;
            // The standard error of the average is about sqrt(truth * mean / runs) for small sizes.
            let se = (truth * mean as f64 / runs as f64).sqrt();
            assert!(
                (avg - truth).abs() < 5.0 * se + 1.0,
                "size {size}: {avg} vs {truth} (se {se})"
            );
        }
    }

    #[test]
    fn mixed_sizes_are_estimated_within_the_sampling_error() {
        let mean = 8192;
        let mut sizes = Vec::new();
        let mut x = 12345u64;
        for _ in 0..200_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            sizes.push(8 + (x >> 33) % 40_000);
        }
        let truth: f64 = sizes.iter().map(|&s| s as f64).sum();
        let var: f64 = sizes
            .iter()
            .map(|&s| {
                let p = -(-(s as f64) / mean as f64).exp_m1();
                (s as f64).powi(2) * (1.0 - p) / p
            })
            .sum();
        let est = estimate(&sizes, mean, 7);
        assert!((est - truth).abs() < 5.0 * var.sqrt(), "{est} vs {truth}");
    }

    #[test]
    fn a_disarmed_sampler_refuses_until_set_again() {
        let s = PoissonSampler::new(1000, 3);
        s.disarm();
        assert!((0..10_000).all(|_| !s.consume(512)));
        s.set_mean(1000);
        assert!(s.consume(1));
    }

    #[test]
    fn sample_count_follows_the_rate() {
        let mean = 1000;
        let s = PoissonSampler::new(mean, 3);
        s.set_mean(mean);
        let n = (0..1_000_000).filter(|_| s.on_alloc(10)).count() as f64;
        // 10 MB at one point per 1000 bytes: p = 1 - exp(-0.01) per allocation.
        let expected = 1_000_000.0 * -(-0.01f64).exp_m1();
        assert!(
            (n - expected).abs() < 5.0 * expected.sqrt(),
            "{n} vs {expected}"
        );
    }
}
