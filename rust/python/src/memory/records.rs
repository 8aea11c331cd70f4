//! ALLOCATOR-SAFE, the cold path of the hooks: a sampled allocation or free written into the
//! ring, with the allocating thread's Python stack when it holds the GIL.

use super::state::*;
use crate::cpython::thread_state;
use crate::signal::slots::{clock_ns, gettid};
use crate::signal::walker::Walker;
use pyo3::ffi;
use spprof_engine::capture::raw;
use spprof_engine::memory::alloc_sampler::unbiased_weight;
use spprof_engine::memory::heapmap::HeapMap;
use std::sync::atomic::Ordering;

/// The calling thread's thread state if it holds the GIL, else 0. Both calls read the thread's
/// interpreter-owned slots (the attached thread state and the GIL-state TSS key): no
/// allocation, no lock, no Python code.
pub(super) fn gil_tstate() -> usize {
    // SAFETY: see above; neither function has preconditions.
    let (current, mine) = unsafe {
        (
            ffi::compat::PyThreadState_GetUnchecked(),
            ffi::PyGILState_GetThisThreadState(),
        )
    };
    if !current.is_null() && current == mine {
        current as usize
    } else {
        0
    }
}

/// Whether the thread state `tstate` (the caller's own, holding the GIL) belongs to the main
/// interpreter. Reads one field and the runtime's main-interpreter pointer: no lock.
pub(super) fn in_main_interpreter(walker: &Walker, tstate: usize) -> bool {
    // SAFETY: tstate is the calling thread's live thread state; `interp` is a plain field of it.
    let interp = unsafe { *((tstate + walker.off.tstate_interp) as *const usize) };
    // SAFETY: no preconditions; it reads the runtime's pointer to the main interpreter.
    interp == unsafe { ffi::PyInterpreterState_Main() } as usize
}

/// The calling thread's kernel id: from its thread state when it has one that records it
/// (3.11+), which saves a system call (half the cost of recording a sample), else `gettid`.
pub(super) fn own_tid(walker: &Walker, tstate: usize) -> u32 {
    // SAFETY: a non-zero tstate is the calling thread's own live thread state (it holds the GIL).
    (tstate != 0)
        .then(|| unsafe { thread_state::recorded_native_id(&walker.off, tstate) })
        .flatten()
        .unwrap_or_else(|| gettid() as u32)
}

/// A sampled allocation of `size` bytes at `address`, whose free will be seen as `key`'s.
#[cold]
#[inline(never)]
pub(super) fn record_alloc(key: u64, address: u64, size: u64) {
    let Some(sh) = hook_state() else {
        return;
    };
    let weight = unbiased_weight(size, SAMPLER.mean());
    if !sh.map.insert(key) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    raise_rate_if_filling(&sh.map);
    let walker = &sh.walker;
    let mut flags = raw::FLAG_ALLOC;
    let mut tstate = gil_tstate();
    if tstate != 0 && !in_main_interpreter(walker, tstate) {
        flags |= raw::FLAG_SUBINTERPRETER;
        tstate = 0;
    }
    let (depth, truncated) = if tstate != 0 {
        // SAFETY: tstate is the calling thread's own, and it holds the GIL: its chain is stable.
        unsafe { walker.record_depth(tstate) }
    } else {
        (0, false)
    };
    if truncated {
        flags |= raw::FLAG_TRUNCATED;
    }
    if tstate == 0 {
        flags |= raw::FLAG_NO_STACK;
    }
    let Some(mut rec) = sh.ring.reserve(raw::mem_body_words(depth)) else {
        sh.map.remove(key);
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let now = clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0);
    rec.write_words(
        0,
        &raw::header(now, weight, own_tid(walker, tstate), flags, depth),
    );
    // SAFETY: as above.
    unsafe { walker.write_frames(tstate, depth, false, &mut rec) };
    rec.write_words(raw::body_words(depth), &[key, size, address]);
    rec.commit();
}

/// Double the sampling rate when the heap map passes half full, then at every further eighth.
/// Atomics only: the thread that wins the compare-exchange for a step raises the rate once.
pub(super) fn raise_rate_if_filling(map: &HeapMap) {
    let at = NEXT_RAISE_AT.load(Ordering::Relaxed);
    if map.len() < at
        || NEXT_RAISE_AT
            .compare_exchange(
                at,
                at + map.capacity() / 8,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
    {
        return;
    }
    let mean = SAMPLER.mean().saturating_mul(2);
    SAMPLER.set_mean(mean);
    if SMALL_FAST.load(Ordering::Relaxed) {
        SMALL_SAMPLER.set_mean(mean);
    }
    RATE_RAISES.fetch_add(1, Ordering::Relaxed);
}

#[cold]
#[inline(never)]
pub(super) fn record_free(sh: &HookState, key: u64) {
    if !sh.map.remove(key) {
        return;
    }
    let Some(mut rec) = sh.ring.reserve(raw::mem_body_words(0)) else {
        LOST_FREES.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let now = clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0);
    rec.write_words(0, &raw::header(now, 0, 0, raw::FLAG_FREE, 0));
    rec.write_words(raw::body_words(0), &[key, 0, key]);
    rec.commit();
}
