//! The CPU (and wall-clock) sampling profiler, GIL side: one session at a time, the sampled
//! threads' timers, finding the interpreter's threads, the Python functions, and a child
//! process's profile written before SIGTERM ends it.

pub mod api;
pub mod discovery;
pub mod resolving;
pub mod session;
pub mod sigterm;
pub mod timers;
