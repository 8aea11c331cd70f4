//! What the signal handler and the allocation hooks write: the lock-free ring of raw records,
//! and the layout of one record. Both are async-signal-safe on the writing side.

pub mod raw;
pub mod ring;
