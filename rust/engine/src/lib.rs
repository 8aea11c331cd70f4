//! The engine of spprof: everything that does not need a Python interpreter.
//!
//! - [`ring`]: the lock-free buffer signal handlers write raw samples into;
//! - [`raw`]: the layout of one raw sample;
//! - [`store`]: the columnar, memory-bounded profile (interned frames and stacks);
//! - [`speedscope`], [`collapsed`]: the writers;
//! - [`flamegraph`]: SVG and HTML flame graphs (inferno), differential graphs;
//! - [`analysis`]: top functions, per-thread time, diffs and filters.
//! - [`arrow`]: the profile as Arrow record batches (samples, frames), sharing the store's columns.

pub mod analysis;
pub mod arrow;
pub mod collapsed;
pub mod flamegraph;
pub mod raw;
pub mod ring;
pub mod speedscope;
pub mod store;
