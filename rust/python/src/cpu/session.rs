//! One profiling session: the shared state published to the signal handler, the store the
//! samples are resolved into, and the resolver thread that resolves them while profiling runs.
//!
//! Locking discipline: `SESSION` is only locked with the GIL held and is never held across a
//! GIL release, so a code-object deallocation (which also runs with the GIL) can always drain
//! the ring first — see [`crate::cpython::code_watch`]. Nothing done under the lock may release the GIL:
//! no Python code, no import, and none of pyo3's lazy initializers (`intern!`, first use of a
//! `#[pyclass]` type), which detach while they wait.

use super::timers::TimerSpec;
use crate::resolve::resolver::Resolver;
use crate::resolve::stack::resolve_stack;
use crate::resolve::thread::ResolverThread;
use crate::signal::handler::{self, SamplerState};
use crate::signal::slots::{clock_ns, Clock};
use pyo3::prelude::*;
use spprof_engine::capture::raw::{RawSample, FLAG_ON_CPU};
use spprof_engine::store::Store;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub struct Session {
    /// Owned: created by `publish`, freed by `unpublish` at the end of the session.
    shared: *const SamplerState,
    pub store: Store,
    resolver: Resolver,
    /// CLOCK_MONOTONIC at start: sample timestamps are relative to it.
    pub start_ns: u64,
    pub interval_ns: u64,
    pub signal: i32,
    pub clock: Clock,
    /// Why CPU-time sampling was not possible, when the session fell back to wall-clock mode.
    pub fallback: Option<String>,
    /// The latest failure to register a thread found by the periodic scan.
    pub thread_error: Option<String>,
    /// Threads that called `unregister_thread()`: the scan leaves them alone.
    pub opted_out: HashSet<i32>,
    /// Set by the `stop()` that ends this session: another `stop()` refuses, and no thread is
    /// registered any more (its timer would outlive the session).
    pub stopping: bool,
    resolver_thread: Option<ResolverThread>,
    scratch: Vec<u32>,
}

// SAFETY: `shared` is only dereferenced while the session exists, and the SamplerState it points to
// is made of atomics and the lock-free ring.
unsafe impl Send for Session {}

pub static SESSION: Mutex<Option<Session>> = Mutex::new(None);
/// Mirrors `SESSION.is_some()` for the code-deallocation hook's fast path.
pub static ACTIVE: AtomicBool = AtomicBool::new(false);

pub fn lock() -> std::sync::MutexGuard<'static, Option<Session>> {
    SESSION.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    pub fn new(
        shared: Box<SamplerState>,
        store: Store,
        resolver: Resolver,
        interval_ns: u64,
        signal: i32,
    ) -> Session {
        let clock = shared.clock;
        Session {
            shared: handler::publish(shared),
            store,
            resolver,
            start_ns: clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0),
            interval_ns,
            signal,
            clock,
            fallback: None,
            thread_error: None,
            opted_out: HashSet::new(),
            stopping: false,
            resolver_thread: None,
            scratch: Vec::new(),
        }
    }

    pub fn timer_spec(&self) -> TimerSpec {
        TimerSpec {
            signal: self.signal,
            interval_ns: self.interval_ns,
            clock: self.clock,
        }
    }

    pub fn shared(&self) -> &SamplerState {
        // SAFETY: the pointer stays valid until `finish`, which consumes the session.
        unsafe { &*self.shared }
    }

    /// Resolve every committed raw sample into the store.
    pub fn drain(&mut self, py: Python<'_>) {
        // SAFETY: see `shared()`; the borrow does not alias the fields mutated below.
        let shared = unsafe { &*self.shared };
        let (store, resolver, scratch, start) = (
            &mut self.store,
            &mut self.resolver,
            &mut self.scratch,
            self.start_ns,
        );
        shared.ring.consume(|at, body| {
            let Some(raw) = RawSample::parse(body) else {
                store.add_dropped(1);
                return;
            };
            let Some(stack) = resolve_stack(py, &raw, at, store, resolver, scratch) else {
                return store.add_dropped(1);
            };
            let ts = raw.timestamp_ns.saturating_sub(start) as i64;
            store.add_sample(
                ts,
                raw.weight as i64,
                raw.thread_slot,
                stack,
                raw.flags & FLAG_ON_CPU != 0,
            );
        });
        resolver.consumed_to(shared.ring.consumed_words());
    }

    /// The code object at `code` is about to be freed: drain, and retire it (see
    /// [`crate::resolve::resolver`]) for the records the drain could not reach yet.
    pub fn retire_code(&mut self, py: Python<'_>, code: usize) {
        if !self.shared().ring.is_empty() {
            self.drain(py);
        }
        let ring = &self.shared().ring;
        let (consumed, reserved) = (ring.consumed_words(), ring.reserved_words());
        self.resolver.retire(py, code, consumed, reserved);
    }

    pub fn set_resolver_thread(&mut self, thread: ResolverThread) {
        self.resolver_thread = Some(thread);
    }

    /// Take the resolver thread out so it can be joined without holding the session lock.
    pub fn take_resolver_thread(&mut self) -> Option<ResolverThread> {
        self.resolver_thread.take()
    }

    /// End of session: unpublish the shared state (waiting out running handlers) and resolve
    /// what is left. The GIL must be held from the caller's removal of the session to here.
    pub fn finish(mut self, py: Python<'_>) -> Finished {
        self.drain(py);
        // `shared` owns what self.shared points to: the drain below still reads it.
        let shared = handler::unpublish().expect("the session's shared state is published");
        // A handler may have committed between the drain above and unpublish.
        self.drain(py);
        self.store
            .add_dropped(shared.dropped.load(Ordering::Relaxed));
        Finished {
            store: std::mem::take(&mut self.store),
            handler_ns: shared.handler_ns.load(Ordering::Relaxed),
        }
    }

    /// In a forked child: no handler or resolver thread exists any more, so the shared state can
    /// be freed without waiting (a handler counted in flight at fork time will never finish).
    pub fn abandon_after_fork(mut self) {
        if let Some(d) = self.resolver_thread.take() {
            d.abandon_after_fork();
        }
        handler::forget_after_fork();
    }
}

pub struct Finished {
    pub store: Store,
    pub handler_ns: u64,
}

/// Called (GIL held) when the code object at `code` is about to be freed (a
/// [`crate::cpython::code_watch`] consumer).
pub fn on_code_destroyed(py: Python<'_>, code: usize) {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    // try_lock: the only holder with the GIL could be this thread itself (re-entry).
    if let Ok(mut guard) = SESSION.try_lock() {
        if let Some(s) = guard.as_mut() {
            s.retire_code(py, code);
        }
    }
}
