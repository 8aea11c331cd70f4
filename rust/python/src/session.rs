//! One profiling session: the shared state published to the signal handler, the store the
//! samples are resolved into, and the drainer thread that resolves them while profiling runs.
//!
//! Locking discipline: `SESSION` is only locked with the GIL held and is never held across a
//! GIL release, so a code-object deallocation (which also runs with the GIL) can always drain
//! the ring first — see [`crate::cpython::code_watch`]. Nothing done under the lock may release the GIL:
//! no Python code, no import, and none of pyo3's lazy initializers (`intern!`, first use of a
//! `#[pyclass]` type), which detach while they wait.

use crate::python_threads;
use crate::resolver::Resolver;
use crate::resolver_thread::{ResolverThread, StopSignal};
use crate::sampler::{self, Shared};
use crate::threads::{self, Clock, TimerSpec};
use pyo3::prelude::*;
use spprof_engine::raw::{RawSample, FLAG_ON_CPU, FLAG_TRUNCATED};
use spprof_engine::store::Store;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Session {
    /// Owned: created by `publish`, freed by `unpublish` at the end of the session.
    shared: *const Shared,
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
    drainer: Option<ResolverThread>,
    scratch: Vec<u32>,
}

// SAFETY: `shared` is only dereferenced while the session exists, and the Shared it points to
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
        shared: Box<Shared>,
        store: Store,
        resolver: Resolver,
        interval_ns: u64,
        signal: i32,
    ) -> Session {
        let clock = shared.clock;
        Session {
            shared: sampler::publish(shared),
            store,
            resolver,
            start_ns: threads::clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0),
            interval_ns,
            signal,
            clock,
            fallback: None,
            thread_error: None,
            opted_out: HashSet::new(),
            stopping: false,
            drainer: None,
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

    pub fn shared(&self) -> &Shared {
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
        shared.ring.consume(|body| {
            let Some(raw) = RawSample::parse(body) else {
                store.add_dropped(1);
                return;
            };
            let Some(stack) = resolve_stack(py, &raw, store, resolver, scratch) else {
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
    }

    pub fn forget_code(&mut self, code: usize) {
        self.resolver.forget(code);
    }

    pub fn start_drainer(&mut self) {
        let shared = self.shared as usize;
        self.drainer = Some(ResolverThread::spawn("spprof-resolver", move |stop| {
            drainer_loop(shared, stop)
        }));
    }

    /// Take the drainer out so it can be joined without holding the session lock.
    pub fn take_drainer(&mut self) -> Option<ResolverThread> {
        self.drainer.take()
    }

    /// End of session: unpublish the shared state (waiting out running handlers) and resolve
    /// what is left. The GIL must be held from the caller's removal of the session to here.
    pub fn finish(mut self, py: Python<'_>) -> Finished {
        self.drain(py);
        // `shared` owns what self.shared points to: the drain below still reads it.
        let shared = sampler::unpublish().expect("the session's shared state is published");
        // A handler may have committed between the drain above and unpublish.
        self.drain(py);
        self.store
            .add_dropped(shared.dropped.load(Ordering::Relaxed));
        Finished {
            store: std::mem::take(&mut self.store),
            handler_ns: shared.handler_ns.load(Ordering::Relaxed),
        }
    }

    /// In a forked child: no handler or drainer thread exists any more, so the shared state can
    /// be freed without waiting (a handler counted in flight at fork time will never finish).
    pub fn abandon_after_fork(mut self) {
        if let Some(d) = self.drainer.take() {
            d.abandon_after_fork();
        }
        sampler::forget_after_fork();
    }
}

/// Resolve the frames of a raw record (CPU or memory) into an interned stack, root first;
/// `None` when the store's budget is spent. GIL held; every code pointer in `raw` is alive
/// (resolve-before-free, see [`on_code_destroyed`]). Native frames are merged with the Python
/// frames as [`crate::merge`] says.
pub fn resolve_stack(
    py: Python<'_>,
    raw: &RawSample<'_>,
    store: &mut Store,
    resolver: &mut Resolver,
    scratch: &mut Vec<u32>,
) -> Option<u32> {
    let natives = raw
        .native_pcs()
        .iter()
        .map(|&pc| resolver.native_frame(store, pc))
        .collect::<Option<Vec<_>>>()?;
    let python = raw
        .frames_leaf_first()
        .map(|(code, offset, entry)| {
            Some((
                resolver.frame(py, store, code as usize, offset as i64)?,
                entry,
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let truncated = raw.flags & FLAG_TRUNCATED != 0;
    scratch.clear();
    scratch.extend(crate::merge::merge(&natives, &python, !truncated));
    if truncated {
        scratch.push(store.intern_frame("<truncated>", "<spprof>", 0, false)?);
    }
    scratch.reverse();
    store.intern_stack(scratch.iter().copied())
}

pub struct Finished {
    pub store: Store,
    pub handler_ns: u64,
}

/// Resolve in the background so the ring never fills and code objects are resolved while alive:
/// when the ring is an eighth full, or every 100 ms when it holds anything. Every 100 ms also
/// look for threads that started without passing through `threading`'s start hook, and for
/// objects loaded or unloaded since the native module list was built.
fn drainer_loop(shared: usize, stop: &StopSignal) {
    // SAFETY: the session joins this thread before freeing the Shared.
    let shared = unsafe { &*(shared as *const Shared) };
    let mut last = Instant::now();
    let mut last_scan = Instant::now();
    loop {
        if stop.sleep(Duration::from_millis(20)) {
            return;
        }
        if last_scan.elapsed() >= Duration::from_millis(100) {
            Python::attach(|py| {
                if let Err(e) = python_threads::scan(py) {
                    if let Some(s) = lock().as_mut() {
                        s.thread_error = Some(e.to_string());
                    }
                }
            });
            // Objects loaded or unloaded since (dlopen/dlclose): unwind with a fresh module list.
            if let Some(native) = &shared.native {
                native.refresh(crate::sampler::wait_for_handlers);
            }
            last_scan = Instant::now();
        }
        let busy = shared.ring.used_bytes() * 8 >= shared.ring.capacity_bytes();
        let due = !shared.ring.is_empty() && last.elapsed() >= Duration::from_millis(100);
        if busy || due {
            Python::attach(|py| {
                if let Some(s) = lock().as_mut() {
                    s.drain(py);
                }
            });
            last = Instant::now();
        }
    }
}

/// Called (GIL held) when the code object at `code` is about to be freed: every consumer of raw
/// records (the CPU session and the memory profiler) drains its ring and forgets `code`.
pub fn on_code_destroyed(py: Python<'_>, code: usize) {
    crate::memprof::on_code_destroyed(py, code);
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    // try_lock: the only holder with the GIL could be this thread itself (re-entry).
    if let Ok(mut guard) = SESSION.try_lock() {
        if let Some(s) = guard.as_mut() {
            if !s.shared().ring.is_empty() {
                s.drain(py);
            }
            s.forget_code(code);
        }
    }
}
