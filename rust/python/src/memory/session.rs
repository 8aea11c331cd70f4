//! The live heap (GIL held): the records resolved into allocation sites, by the resolver
//! thread while profiling runs and before every snapshot.

use super::state::*;
use crate::resolve::resolver::Resolver;
use crate::resolve::stack::resolve_stack;
use crate::resolve::thread::{ResolverThread, StopSignal};
use crate::signal::slots::clock_ns;
use pyo3::prelude::*;
use spprof_engine::capture::raw::{self, RawSample};
use spprof_engine::store::{StackId, Store, EMPTY_STACK};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---- the live heap, resolved with the GIL ---------------------------------------------------

pub(super) struct Live {
    pub(super) address: u64,
    pub(super) timestamp_ns: u64,
    pub(super) size: u64,
    pub(super) weight: u64,
    pub(super) tid: u32,
    pub(super) stack: StackId,
}

/// Locked only with the GIL held, never across a GIL release (as the CPU session's lock).
pub(super) struct MemSession {
    /// Interned frames and stacks of the samples (no sample rows: `live` holds them).
    pub(super) store: Store,
    pub(super) resolver: Resolver,
    /// Live samples by key (see `record_alloc`).
    pub(super) live: HashMap<u64, Live>,
    pub(super) scratch: Vec<u32>,
    pub(super) start_ns: u64,
    pub(super) total_samples: u64,
    pub(super) freed_samples: u64,
    /// Frees of addresses sampled by an earlier run (restarted profile) or before a fork.
    pub(super) untracked_frees: u64,
    /// The estimated live heap (the weights of `live`), and its high-water mark since
    /// `reset_peak`, both in the order the records were made.
    pub(super) live_bytes: u64,
    pub(super) peak_bytes: u64,
    /// Bytes sampled per (thread, stack) since `reset_peak`, freed or not: who allocated.
    pub(super) allocated: HashMap<(u32, StackId), u64>,
    pub(super) resolver_thread: Option<ResolverThread>,
}

pub(super) static MEM_SESSION: Mutex<Option<MemSession>> = Mutex::new(None);
/// Mirrors `MEM_SESSION.is_some()` for the code-deallocation hook's fast path.
pub(super) static HAS_SESSION: AtomicBool = AtomicBool::new(false);

pub(super) fn mem_session() -> std::sync::MutexGuard<'static, Option<MemSession>> {
    MEM_SESSION.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemSession {
    pub(super) fn new(resolver: Resolver) -> MemSession {
        MemSession {
            store: Store::new(usize::MAX),
            resolver,
            live: HashMap::new(),
            scratch: Vec::new(),
            start_ns: clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0),
            total_samples: 0,
            freed_samples: 0,
            untracked_frees: 0,
            live_bytes: 0,
            peak_bytes: 0,
            allocated: HashMap::new(),
            resolver_thread: None,
        }
    }

    /// A new profile: forget the samples of the previous run.
    pub(super) fn reset(&mut self) {
        self.live.clear();
        self.start_ns = clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0);
        self.total_samples = 0;
        self.freed_samples = 0;
        self.untracked_frees = 0;
        self.live_bytes = 0;
        self.peak_bytes = 0;
        self.allocated.clear();
    }

    /// Resolve every committed record (GIL held); returns how many were consumed.
    pub(super) fn drain(&mut self, py: Python<'_>, sh: &HookState) -> usize {
        let (store, resolver, scratch, live, allocated) = (
            &mut self.store,
            &mut self.resolver,
            &mut self.scratch,
            &mut self.live,
            &mut self.allocated,
        );
        let (live_bytes, peak_bytes) = (&mut self.live_bytes, &mut self.peak_bytes);
        let (mut total, mut freed, mut untracked) = (0, 0, 0);
        let n = sh.ring.consume(|at, body| {
            let Some(raw) = RawSample::parse(body) else {
                return;
            };
            let Some(block) = raw.mem_block() else {
                return;
            };
            if raw.flags & raw::FLAG_FREE != 0 {
                if let Some(gone) = live.remove(&block.key) {
                    *live_bytes = live_bytes.saturating_sub(gone.weight);
                    freed += 1;
                } else {
                    untracked += 1;
                }
                return;
            }
            let stack = if raw.flags & raw::FLAG_NO_STACK != 0 {
                let name = if raw.flags & raw::FLAG_SUBINTERPRETER != 0 {
                    "<subinterpreter>"
                } else {
                    "<allocated without the GIL>"
                };
                store
                    .intern_frame(name, "<spprof>", 0, false)
                    .and_then(|f| store.intern_stack([f]))
            } else {
                resolve_stack(py, &raw, at, store, resolver, scratch)
            };
            total += 1;
            let stack = stack.unwrap_or(EMPTY_STACK);
            *allocated.entry((raw.thread_slot, stack)).or_default() += raw.weight;
            let replaced = live.insert(
                block.key,
                Live {
                    address: block.address,
                    timestamp_ns: raw.timestamp_ns,
                    size: block.size,
                    weight: raw.weight,
                    tid: raw.thread_slot,
                    stack,
                },
            );
            // A key seen again without its free in between (a lost free) stands for one block.
            *live_bytes = live_bytes
                .saturating_sub(replaced.map_or(0, |l| l.weight))
                .saturating_add(raw.weight);
            *peak_bytes = (*peak_bytes).max(*live_bytes);
        });
        resolver.consumed_to(sh.ring.consumed_words());
        self.total_samples += total;
        self.freed_samples += freed;
        self.untracked_frees += untracked;
        n
    }

    pub(super) fn start_resolver_thread(&mut self) {
        self.resolver_thread = Some(ResolverThread::spawn("spprof-memprof", resolve_loop));
    }
}

/// Resolve in the background so the ring never fills: when it is an eighth full, or every
/// second when it holds anything. Each drain takes the GIL from the program (a handoff of
/// about 0.1 ms); nothing needs records resolved sooner: snapshots and code-object
/// deallocation drain first. Runs from `start()` to `shutdown()` (frees keep coming).
pub(super) fn resolve_loop(stop: &StopSignal) {
    let Some(sh) = hook_state() else {
        return;
    };
    let mut last = Instant::now();
    loop {
        if stop.sleep(Duration::from_millis(20)) {
            return;
        }
        let busy = sh.ring.used_bytes() * 8 >= sh.ring.capacity_bytes();
        let due = !sh.ring.is_empty() && last.elapsed() >= Duration::from_secs(1);
        if busy || due {
            Python::attach(|py| {
                if let Some(s) = mem_session().as_mut() {
                    s.drain(py, sh);
                }
            });
            last = Instant::now();
        }
    }
}

/// Called (GIL held) before the code object at `code` is freed: resolve what refers to it.
pub fn on_code_destroyed(py: Python<'_>, code: usize) {
    if !HAS_SESSION.load(Ordering::Acquire) {
        return;
    }
    let Some(sh) = hook_state() else {
        return;
    };
    // try_lock: the only holder with the GIL could be this thread itself (re-entry).
    if let Ok(mut guard) = MEM_SESSION.try_lock() {
        if let Some(s) = guard.as_mut() {
            // A record still being written by a thread without the GIL blocks the ones behind
            // it; it is a few stores from being committed, so wait for it a little (the
            // records behind it then get the code's exact lines). If its thread was preempted,
            // the code is retired instead: sound either way.
            let mut spins = 0;
            while !sh.ring.is_empty() && spins < 10_000 {
                if s.drain(py, sh) == 0 {
                    spins += 1;
                    std::hint::spin_loop();
                }
            }
            let (consumed, reserved) = (sh.ring.consumed_words(), sh.ring.reserved_words());
            s.resolver.retire(py, code, consumed, reserved);
        }
    }
}
