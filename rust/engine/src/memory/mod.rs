//! The memory profiler's lock-free parts: the Poisson byte sampler with unbiased weights, and the
//! set of live sampled addresses. Both run inside allocations: no allocation, no lock.

pub mod alloc_sampler;
pub mod heapmap;
