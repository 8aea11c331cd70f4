//! The CPU (and wall-clock) sampling profiler, GIL side: one session at a time, the sampled
//! threads' timers, finding the interpreter's threads, and the Python functions.

pub mod api;
pub mod discovery;
pub mod resolving;
pub mod session;
pub mod timers;
