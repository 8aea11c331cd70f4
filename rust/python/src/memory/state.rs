//! ALLOCATOR-SAFE state: what the hooks and their records read on every call, in statics
//! (no allocation, no lock, no thread-local on that path).

use super::*;
use crate::signal::walker::Walker;
use pyo3::ffi::PyMemAllocatorEx;
use spprof_engine::capture::ring::Ring;
use spprof_engine::memory::alloc_sampler::PoissonSampler;
use spprof_engine::memory::heapmap::{Filter, HeapMap};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// What the hooks need beyond the statics; created at the first `start()`, never freed (hooks
/// on any thread may use it at any time until the process ends).
pub(super) struct HookState {
    pub(super) ring: Ring,
    pub(super) map: HeapMap,
    pub(super) walker: Walker,
}

pub(super) static HOOK_STATE: AtomicPtr<HookState> = AtomicPtr::new(std::ptr::null_mut());
/// The heap map's filter, in a static so that a free's check is one load (the map is created at
/// the first `start()`). All zeros until then, and non-zero only in the buckets of live
/// samples, so the free hook needs no other flag.
pub(super) static FILTER: Filter = Filter::new();
/// New allocations are sampled (between `start()` and `stop()`).
pub(super) static SAMPLING: AtomicBool = AtomicBool::new(false);
/// Frees are matched against the heap map (from `start()` until `shutdown()`).
pub(super) static TRACKING: AtomicBool = AtomicBool::new(false);
/// pymalloc serves small MEM/OBJ requests (`sys.getallocatedblocks() > 0`: not so under
/// `PYTHONMALLOC=malloc` or `malloc_debug`); set at `start()`.
pub(super) static PYMALLOC: AtomicBool = AtomicBool::new(true);
/// Small MEM/OBJ requests may reach malloc, where the preload library counts them: it is
/// connected and pymalloc does not serve them. Then they must mark `OUTER` while forwarding.
pub(super) static SMALL_REACH_MALLOC: AtomicBool = AtomicBool::new(false);
/// SAMPLING and not SMALL_REACH_MALLOC: small MEM/OBJ requests take the fast path, counted by
/// `SMALL_SAMPLER`, which is disarmed otherwise (kept by `set_flags`, with the GIL, which every
/// MEM/OBJ call holds).
pub(super) static SMALL_FAST: AtomicBool = AtomicBool::new(false);
pub(super) static SAMPLER: PoissonSampler = PoissonSampler::new(512 * 1024, 0x5350_5052_4f46_4d45);
/// The small MEM/OBJ requests' own countdown, so that its state also says whether they may take
/// the fast path (one load fewer there). Byte sampling stays a Poisson process of the same
/// rate over all bytes when the bytes are split into two streams with one countdown each.
pub(super) static SMALL_SAMPLER: PoissonSampler =
    PoissonSampler::new(512 * 1024, 0x736d_616c_6c5f_7273);
/// Thread pointer of the thread inside our MEM/OBJ wrapper (0: none).
pub(super) static OUTER: AtomicUsize = AtomicUsize::new(0);
/// The first block returned by a RAW call nested in our MEM/OBJ wrapper (see `obj_alloc`).
pub(super) static NESTED_RAW: AtomicUsize = AtomicUsize::new(0);
/// Per domain: frees are not wrapped, because they reach our RAW wrapper for the blocks that
/// samples are made of (see `choose_free_paths`). Read with the GIL.
pub(super) static FREE_VIA_RAW: [AtomicBool; 3] = [const { AtomicBool::new(false) }; 3];
pub(super) struct Saved(pub(super) UnsafeCell<[PyMemAllocatorEx; 3]>);
// SAFETY: an entry is written by `install_hooks` (GIL held) before our wrapper of its domain is
// installed, and rewritten for MEM or OBJ only when that wrapper is off the call chain and the
// GIL is held, which every MEM/OBJ call holds (see `wrap_again`).
unsafe impl Sync for Saved {}

pub(super) const NO_ALLOCATOR: PyMemAllocatorEx = PyMemAllocatorEx {
    ctx: std::ptr::null_mut(),
    malloc: None,
    calloc: None,
    realloc: None,
    free: None,
};
pub(super) static SAVED: Saved = Saved(UnsafeCell::new([NO_ALLOCATOR; 3]));

#[inline(always)]
pub(super) fn saved(d: usize) -> &'static PyMemAllocatorEx {
    // SAFETY: see `Saved`. The wrappers read the static rather than their `ctx` argument, so a
    // call that raced with PyMem_SetAllocator copying the struct still forwards correctly.
    unsafe { &(*SAVED.0.get())[d] }
}

pub(super) fn hook_state() -> Option<&'static HookState> {
    let p = HOOK_STATE.load(Ordering::Acquire);
    // SAFETY: once published, HookState is never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// A value unique to the calling thread, without a thread-local or a call.
#[inline(always)]
pub(super) fn thread_pointer() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        let tp: usize;
        // SAFETY: the x86-64 TLS ABI stores the thread pointer itself at %fs:0 in every thread;
        // this is one load from the thread's own control block.
        unsafe {
            std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp,
                options(nostack, readonly, preserves_flags))
        };
        tp
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: pthread_self has no preconditions.
        unsafe { libc::pthread_self() as usize }
    }
}

/// pymalloc serves requests up to this size from its pools without calling the RAW domain.
pub(super) const PYMALLOC_MAX: usize = 512;

/// A request no allocator can satisfy: CPython passes sizes up to `PY_SSIZE_T_MAX` on to the
/// domain's allocator, and malloc refuses this one. Used to see whether a call of a domain still
/// reaches our wrapper (another tool may have removed it: `tracemalloc.stop()` puts back the
/// allocators it wrapped, which drops ours when memprof started while tracemalloc was tracing).
pub(super) const PROBE_SIZE: usize = isize::MAX as usize;
/// Failed `PROBE_SIZE` requests seen by our wrapper of each domain.
pub(super) static PROBES_SEEN: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Samples lost because the ring or the heap map had no room.
pub(super) static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Frees of sampled allocations whose record found the ring full (they stay live: a fake leak).
pub(super) static LOST_FREES: AtomicU64 = AtomicU64::new(0);
/// The heap map's fill (live samples) at which the sampling rate is doubled next, and how many
/// times it was: a full map would refuse samples and leave the estimate low, while a larger
/// rate keeps it unbiased (each sample's weight uses the rate it was drawn with).
pub(super) static NEXT_RAISE_AT: AtomicUsize = AtomicUsize::new(HEAP_MAP_SLOTS / 2);
pub(super) static RATE_RAISES: AtomicU64 = AtomicU64::new(0);
