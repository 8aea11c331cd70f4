//! The CPU session's resolver thread: it resolves samples while profiling runs, finds threads
//! that started unseen, and refreshes the native module list.

use super::discovery;
use super::session::{self, Session};
use crate::resolve::thread::{ResolverThread, StopSignal};
use crate::signal::handler::{self, SamplerState};
use pyo3::prelude::*;
use std::time::{Duration, Instant};

/// Start the resolver thread of `session` (which joins it before its state is freed).
pub fn start(session: &mut Session) {
    let shared = session.shared() as *const SamplerState as usize;
    session.set_resolver_thread(ResolverThread::spawn("spprof-resolver", move |stop| {
        resolve_loop(shared, stop)
    }));
}

/// Resolve in the background so the ring never fills and code objects are resolved while alive:
/// when the ring is an eighth full, or every 100 ms when it holds anything. Every 100 ms also
/// look for threads that started without passing through `threading`'s start hook, and for
/// objects loaded or unloaded since the native module list was built.
fn resolve_loop(shared: usize, stop: &StopSignal) {
    // SAFETY: the session joins this thread before freeing the SamplerState.
    let shared = unsafe { &*(shared as *const SamplerState) };
    let mut last = Instant::now();
    let mut last_scan = Instant::now();
    loop {
        if stop.sleep(Duration::from_millis(20)) {
            return;
        }
        if last_scan.elapsed() >= Duration::from_millis(100) {
            Python::attach(|py| {
                if let Err(e) = discovery::scan(py) {
                    if let Some(s) = session::lock().as_mut() {
                        s.thread_error = Some(e.to_string());
                    }
                }
            });
            // Objects loaded or unloaded since (dlopen/dlclose): unwind with a fresh module list.
            if let Some(native) = &shared.native {
                native.refresh(handler::wait_for_handlers);
            }
            last_scan = Instant::now();
        }
        let busy = shared.ring.used_bytes() * 8 >= shared.ring.capacity_bytes();
        let due = !shared.ring.is_empty() && last.elapsed() >= Duration::from_millis(100);
        if busy || due {
            Python::attach(|py| {
                if let Some(s) = session::lock().as_mut() {
                    s.drain(py);
                }
            });
            last = Instant::now();
        }
    }
}
