//! ASYNC-SIGNAL-SAFE: code that runs inside a signal handler, on a thread interrupted at any
//! instruction, and what such code reads.
//!
//! The rules, for every function here that a handler calls: no allocation, no lock, no panic,
//! no lazy thread-local, no call that is not async-signal-safe, `errno` preserved, every read
//! of interpreter memory through [`safe_read`]. State a handler uses is built outside, before
//! it is published, and freed only after every handler that could see it has left.
//!
//! - [`action`]: installing a handler in front of another, and chaining to it;
//! - [`handler`]: the sampling signal's handler and the state published to it;
//! - [`safe_read`]: reads that survive a bad address (the fault handler);
//! - [`walker`]: the Python frame walk;
//! - [`unwind`]: the native stack unwind;
//! - [`slots`]: the sampled threads' slots and clocks;
//! - [`terminate`]: SIGTERM in a profiled child, handed to the thread that writes its profile.

pub mod action;
pub mod handler;
pub mod safe_read;
pub mod slots;
pub mod terminate;
pub mod unwind;
pub mod walker;
