//! The engine of spprof: everything that does not need a Python interpreter.
//!
//! - [`capture`]: the lock-free ring signal handlers and allocation hooks write raw records
//!   into, and the record layout (async-signal-safe on the writing side);
//! - [`store`]: the columnar, memory-bounded profile (interned frames and stacks);
//! - [`memory`]: the memory profiler's Poisson byte sampler and its lock-free set of live
//!   sampled addresses (allocator-safe);
//! - [`analysis`]: top functions, per-thread time, diffs and filters: the one place these
//!   figures are computed;
//! - [`export`]: Arrow batches and run files, speedscope, collapsed stacks, flame graphs (and
//!   the unit formatting every front end uses);
//! - [`tasks`]: asyncio-aware samples, the ticks of an event loop's thread given to its tasks.

pub mod analysis;
pub mod capture;
pub mod export;
pub mod memory;
pub mod store;
pub mod tasks;
