//! The engine of spprof: everything that does not need a Python interpreter.
//!
//! - [`ring`]: the lock-free buffer signal handlers write raw samples into;
//! - [`raw`]: the layout of one raw sample;
//! - [`store`]: the columnar, memory-bounded profile (interned frames and stacks);
//! - [`speedscope`], [`collapsed`]: the writers;
//! - [`flamegraph`]: SVG and HTML flame graphs (inferno), differential graphs;
//! - [`alloc_sampler`], [`heapmap`]: the memory profiler's Poisson byte sampler and unbiased
//!   weights, and the lock-free set of live sampled addresses;
//! - [`analysis`]: top functions, per-thread time, diffs and filters.
//! - [`arrow`]: the profile as Arrow record batches (samples, frames), sharing the store's columns.
//! - [`run_file`]: the pytest plugin's whole-run Arrow IPC file;
//! - [`atomic_file`]: files written whole or not at all.

pub mod alloc_sampler;
pub mod analysis;
pub mod arrow;
pub mod atomic_file;
pub mod collapsed;
pub mod flamegraph;
pub mod heapmap;
pub mod raw;
pub mod ring;
pub mod run_file;
pub mod speedscope;
pub mod store;
