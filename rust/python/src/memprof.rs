//! The memory profiler's CPython side: hooks on CPython's allocator domains, the sampled
//! allocations' stacks, and the live-heap table built from them.
//!
//! Hooks. The allocators of `PYMEM_DOMAIN_RAW`, `MEM` and `OBJ` are wrapped, never replaced:
//! `PyMem_GetAllocator` saves the current ones and every call is forwarded to them (our functions
//! ignore their `ctx` and read the saved allocator from the static). The saved allocators live in a static that is
//! never freed, so a wrapper that another tool (e.g. tracemalloc) wrapped in turn keeps working
//! after `shutdown()`, which restores the originals only where ours are still installed.
//!
//! Hot path (every allocation and free, from `start()` to `shutdown()`): no allocation, no lock,
//! no Python API, no thread-local. A small MEM/OBJ allocation costs a size compare and the byte
//! countdown of its [`PoissonSampler`], then a tail jump to the saved allocator; a RAW free costs
//! one load of the heap map's small counting filter. MEM/OBJ frees are not wrapped at all under
//! pymalloc (see `obj_alloc`). Only sampled allocations (and frees of sampled blocks) take the
//! cold path: the heap map, the stack walk, and a record in the ring.
//!
//! Nesting. pymalloc (behind MEM and OBJ) serves requests over 512 bytes with
//! `PyMem_RawMalloc`, i.e. through our RAW wrapper. Counting those bytes twice would bias the
//! sampler, so the MEM/OBJ wrappers note the calling thread (its thread pointer, one load of
//! `%fs:0`) in `OUTER` while they forward, and the RAW wrapper ignores calls nested in them
//! (but notes the block, which a sample may be keyed by). MEM and OBJ calls hold the GIL, so at
//! most one thread is inside them at a time.
//!
//! Native allocations. With the LD_PRELOAD library (see [`native_alloc`]) malloc, calloc,
//! realloc, free and the aligned variants call [`on_native_alloc`] / [`on_native_free`]. Each
//! allocation must be counted once: RAW-domain calls then go uncounted in our wrapper (malloc
//! beneath counts them), and MEM/OBJ calls that may reach malloc mark `OUTER`, so the malloc
//! beneath them is recognised as nested: requests over 512 bytes, and under `PYTHONMALLOC=malloc`
//! (no pymalloc, seen as `sys.getallocatedblocks() == 0`) small ones too.
//!
//! Stacks are read with the CPU sampler's [`Walker`] on the calling thread's own thread state,
//! and only when that thread holds the GIL (always for MEM/OBJ; RAW may be called without it,
//! and such samples are recorded without a Python stack). Resolution to names happens later with
//! the GIL (the drainer thread, `get_snapshot()`, or a code object's deallocation, see
//! [`crate::session::on_code_destroyed`]). Resolution allocates Python objects (attribute
//! values); those allocations go through the hooks and may be sampled, which is harmless: they
//! are temporaries, freed at once, so they never show as live.

use crate::cpython::{self, thread_state};
use crate::native_alloc;
use crate::profile_data::ProfileData;
use crate::resolver::Resolver;
use crate::resolver_thread::{ResolverThread, StopSignal};
use crate::sampler::MAX_DEPTH;
use crate::session::resolve_stack;
use crate::threads::{clock_ns, gettid};
use crate::walker::Walker;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi::{self, PyMemAllocatorDomain, PyMemAllocatorEx};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use spprof_engine::alloc_sampler::{unbiased_weight, PoissonSampler};
use spprof_engine::heapmap::{Filter, HeapMap};
use spprof_engine::raw::{self, RawSample};
use spprof_engine::ring::Ring;
use spprof_engine::store::{StackId, Store, EMPTY_STACK};
use std::cell::UnsafeCell;
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const RING_BYTES: usize = 4 << 20;
/// About a million slots (8 MiB of address space, touched as live samples need them): room for
/// half a million live samples, 32 GiB of live heap at 64 KiB sampling.
const HEAP_MAP_SLOTS: usize = 1 << 20;
const RAW: usize = 0;

/// What the hooks need beyond the statics; created at the first `start()`, never freed (hooks
/// on any thread may use it at any time until the process ends).
struct Shared {
    ring: Ring,
    map: HeapMap,
    walker: Walker,
}

static SHARED: AtomicPtr<Shared> = AtomicPtr::new(std::ptr::null_mut());
/// The heap map's filter, in a static so that a free's check is one load (the map is created at
/// the first `start()`). All zeros until then, and non-zero only in the buckets of live
/// samples, so the free hook needs no other flag.
static FILTER: Filter = Filter::new();
/// New allocations are sampled (between `start()` and `stop()`).
static SAMPLING: AtomicBool = AtomicBool::new(false);
/// Frees are matched against the heap map (from `start()` until `shutdown()`).
static TRACKING: AtomicBool = AtomicBool::new(false);
/// pymalloc serves small MEM/OBJ requests (`sys.getallocatedblocks() > 0`: not so under
/// `PYTHONMALLOC=malloc` or `malloc_debug`); set at `start()`.
static PYMALLOC: AtomicBool = AtomicBool::new(true);
/// Small MEM/OBJ requests may reach malloc, where the preload library counts them: it is
/// connected and pymalloc does not serve them. Then they must mark `OUTER` while forwarding.
static SMALL_REACH_MALLOC: AtomicBool = AtomicBool::new(false);
/// SAMPLING and not SMALL_REACH_MALLOC: small MEM/OBJ requests take the fast path, counted by
/// `SMALL_SAMPLER`, which is disarmed otherwise (kept by `set_flags`, with the GIL, which every
/// MEM/OBJ call holds).
static SMALL_FAST: AtomicBool = AtomicBool::new(false);
static SHUT_DOWN: AtomicBool = AtomicBool::new(false);
static INSTALLED: AtomicBool = AtomicBool::new(false);
static SAMPLER: PoissonSampler = PoissonSampler::new(512 * 1024, 0x5350_5052_4f46_4d45);
/// The small MEM/OBJ requests' own countdown, so that its state also says whether they may take
/// the fast path (one load fewer there). Byte sampling stays a Poisson process of the same
/// rate over all bytes when the bytes are split into two streams with one countdown each.
static SMALL_SAMPLER: PoissonSampler = PoissonSampler::new(512 * 1024, 0x736d_616c_6c5f_7273);
/// Thread pointer of the thread inside our MEM/OBJ wrapper (0: none).
static OUTER: AtomicUsize = AtomicUsize::new(0);
/// The first block returned by a RAW call nested in our MEM/OBJ wrapper (see `obj_alloc`).
static NESTED_RAW: AtomicUsize = AtomicUsize::new(0);
/// Per domain: frees are not wrapped, because they reach our RAW wrapper for the blocks that
/// samples are made of (see `choose_free_paths`). Read with the GIL.
static FREE_VIA_RAW: [AtomicBool; 3] = [const { AtomicBool::new(false) }; 3];
/// Samples lost because the ring or the heap map had no room.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Frees of sampled allocations whose record found the ring full (they stay live: a fake leak).
static LOST_FREES: AtomicU64 = AtomicU64::new(0);
/// The heap map's fill (live samples) at which the sampling rate is doubled next, and how many
/// times it was: a full map would refuse samples and leave the estimate low, while a larger
/// rate keeps it unbiased (each sample's weight uses the rate it was drawn with).
static NEXT_RAISE_AT: AtomicUsize = AtomicUsize::new(HEAP_MAP_SLOTS / 2);
static RATE_RAISES: AtomicU64 = AtomicU64::new(0);

struct Saved(UnsafeCell<[PyMemAllocatorEx; 3]>);
// SAFETY: an entry is written by `install_hooks` (GIL held) before our wrapper of its domain is
// installed, and rewritten for MEM or OBJ only when that wrapper is off the call chain and the
// GIL is held, which every MEM/OBJ call holds (see `wrap_again`).
unsafe impl Sync for Saved {}

const NO_ALLOCATOR: PyMemAllocatorEx = PyMemAllocatorEx {
    ctx: std::ptr::null_mut(),
    malloc: None,
    calloc: None,
    realloc: None,
    free: None,
};
static SAVED: Saved = Saved(UnsafeCell::new([NO_ALLOCATOR; 3]));

fn domain(d: usize) -> PyMemAllocatorDomain {
    match d {
        0 => PyMemAllocatorDomain::PYMEM_DOMAIN_RAW,
        1 => PyMemAllocatorDomain::PYMEM_DOMAIN_MEM,
        _ => PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ,
    }
}

#[inline(always)]
fn saved(d: usize) -> &'static PyMemAllocatorEx {
    // SAFETY: see `Saved`. The wrappers read the static rather than their `ctx` argument, so a
    // call that raced with PyMem_SetAllocator copying the struct still forwards correctly.
    unsafe { &(*SAVED.0.get())[d] }
}

fn shared() -> Option<&'static Shared> {
    let p = SHARED.load(Ordering::Acquire);
    // SAFETY: once published, Shared is never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// A value unique to the calling thread, without a thread-local or a call.
#[inline(always)]
fn thread_pointer() -> usize {
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
const PYMALLOC_MAX: usize = 512;

/// Set whether new allocations are sampled and frees tracked (GIL held; after
/// `native_alloc::connect()`).
fn set_flags(sampling: bool, tracking: bool) {
    TRACKING.store(tracking, Ordering::SeqCst);
    SAMPLING.store(sampling, Ordering::SeqCst);
    let small_reach_malloc = native_alloc::connected() && !PYMALLOC.load(Ordering::Relaxed);
    SMALL_REACH_MALLOC.store(small_reach_malloc, Ordering::SeqCst);
    let small_fast = sampling && !small_reach_malloc;
    SMALL_FAST.store(small_fast, Ordering::SeqCst);
    if small_fast {
        SMALL_SAMPLER.set_mean(SAMPLER.mean());
    } else {
        SMALL_SAMPLER.disarm();
    }
}

/// Whether an allocation of `size` bytes is sampled (its bytes count towards the next sample
/// point while sampling).
#[inline(always)]
fn sample(size: usize) -> bool {
    SAMPLING.load(Ordering::Relaxed) && SAMPLER.on_alloc(size)
}

/// The fast path makes no call but the forwarding one, a tail call (so no stack frame): a small
/// MEM/OBJ request whose bytes do not reach the next sample point (pymalloc serves it without
/// calling RAW, so it needs no nesting mark).
extern "C" fn hook_malloc<const D: usize>(_ctx: *mut c_void, size: usize) -> *mut c_void {
    let a = saved(D);
    // SAFETY: `wrap` saved this domain's allocator before installing ours, and CPython's
    // allocator structs have all four functions (it calls them without checking).
    let f = unsafe { a.malloc.unwrap_unchecked() };
    if D != RAW && size <= PYMALLOC_MAX {
        if SMALL_SAMPLER.consume(size) {
            return f(a.ctx, size);
        }
        return malloc_small::<D>(f, a.ctx, size);
    }
    malloc_slow::<D>(f, a.ctx, size)
}

type MallocFn = extern "C" fn(*mut c_void, usize) -> *mut c_void;

/// A small MEM/OBJ request in which the sample point falls, or any while the fast path is off.
#[inline(never)]
fn malloc_small<const D: usize>(f: MallocFn, ctx: *mut c_void, size: usize) -> *mut c_void {
    if !SMALL_FAST.load(Ordering::Relaxed) {
        return malloc_slow::<D>(f, ctx, size);
    }
    SMALL_SAMPLER.on_sampled();
    obj_alloc::<D>(size, true, false, |request| f(ctx, request))
}

/// Any other request: while not tracking (forwarded), RAW calls, MEM/OBJ requests that pymalloc
/// passes on to RAW, and any while stopped or when small requests may reach malloc.
#[inline(never)]
fn malloc_slow<const D: usize>(f: MallocFn, ctx: *mut c_void, size: usize) -> *mut c_void {
    if !TRACKING.load(Ordering::Relaxed) {
        return f(ctx, size);
    }
    if D == RAW {
        return raw_alloc(size, || f(ctx, size));
    }
    obj_alloc::<D>(size, sample(size), false, |request| f(ctx, request))
}

/// A RAW-domain allocation of `size` bytes made by `call` (while tracking). Nested in our
/// MEM/OBJ wrapper, its bytes are the outer call's, which may need the block's address (see
/// `obj_alloc`); with the preload library, malloc beneath counts them, with the same stack.
#[inline(always)]
fn raw_alloc(size: usize, call: impl FnOnce() -> *mut c_void) -> *mut c_void {
    if OUTER.load(Ordering::Relaxed) == thread_pointer() {
        let p = call();
        if NESTED_RAW.load(Ordering::Relaxed) == 0 {
            NESTED_RAW.store(p as usize, Ordering::Relaxed);
        }
        return p;
    }
    if native_alloc::connected() {
        return call();
    }
    let sampled = sample(size);
    let p = call();
    if p.is_null() {
        note_failed::<RAW>(size);
    } else if sampled {
        record_alloc(p as u64, p as u64, size as u64);
    }
    p
}

/// A MEM/OBJ allocation of `size` bytes made by `call(request)` (while tracking), `sampled` or
/// not. A call that pymalloc may pass on to RAW (a request over `PYMALLOC_MAX`, any realloc:
/// `mark`) or that may reach malloc (`SMALL_REACH_MALLOC`) marks the thread in `OUTER` while it
/// forwards, so that the RAW wrapper and the preload library leave its bytes to us; the RAW
/// wrapper notes the first block it returns in `NESTED_RAW`.
///
/// Frees of pymalloc's domains need no wrapper (`FREE_VIA_RAW[D]`, see `choose_free_paths`):
/// pymalloc passes the free of a block it took from RAW on to RAW. So a sample is made such a
/// block (a small one is requested as `PYMALLOC_MAX + 1` bytes, about 500 bytes of memory per
/// live sample) and keyed by the RAW block, which is what our RAW wrapper will see freed.
#[inline(always)]
fn obj_alloc<const D: usize>(
    size: usize,
    sampled: bool,
    mark: bool,
    call: impl FnOnce(usize) -> *mut c_void,
) -> *mut c_void {
    let via_raw = FREE_VIA_RAW[D].load(Ordering::Relaxed);
    let request = if sampled && via_raw {
        size.max(PYMALLOC_MAX + 1)
    } else {
        size
    };
    let mark = mark || request > PYMALLOC_MAX || SMALL_REACH_MALLOC.load(Ordering::Relaxed);
    let prev = OUTER.load(Ordering::Relaxed);
    if mark {
        NESTED_RAW.store(0, Ordering::Relaxed);
        OUTER.store(thread_pointer(), Ordering::Relaxed);
    }
    let p = call(request);
    if mark {
        OUTER.store(prev, Ordering::Relaxed);
    }
    if p.is_null() {
        note_failed::<D>(size);
    } else if sampled {
        let key = if via_raw {
            NESTED_RAW.load(Ordering::Relaxed) as u64
        } else {
            p as u64
        };
        if key == 0 {
            // No RAW block beneath (an unexpected allocator): its free could not be seen.
            DROPPED.fetch_add(1, Ordering::Relaxed);
        } else {
            record_alloc(key, p as u64, size as u64);
        }
    }
    p
}

extern "C" fn hook_calloc<const D: usize>(
    _ctx: *mut c_void,
    nelem: usize,
    elsize: usize,
) -> *mut c_void {
    let a = saved(D);
    let Some(f) = a.calloc else {
        return std::ptr::null_mut();
    };
    if !TRACKING.load(Ordering::Relaxed) {
        return f(a.ctx, nelem, elsize);
    }
    let size = nelem.saturating_mul(elsize);
    if D == RAW {
        return raw_alloc(size, || f(a.ctx, nelem, elsize));
    }
    obj_alloc::<D>(size, sample(size), false, |request| {
        if request == size {
            f(a.ctx, nelem, elsize)
        } else {
            f(a.ctx, 1, request)
        }
    })
}

/// realloc = free of the old block + a possibly sampled new one. The old block is forgotten
/// before forwarding, so no other thread can allocate its address again before we are done
/// with it; if the realloc then fails (out of memory), that one sample is lost.
extern "C" fn hook_realloc<const D: usize>(
    _ctx: *mut c_void,
    ptr: *mut c_void,
    size: usize,
) -> *mut c_void {
    let a = saved(D);
    let Some(f) = a.realloc else {
        return std::ptr::null_mut();
    };
    if !TRACKING.load(Ordering::Relaxed) {
        return f(a.ctx, ptr, size);
    }
    if D == RAW {
        // Nested ones too: the block may be a MEM/OBJ sample that pymalloc took from RAW. With
        // the preload library, realloc beneath sees the free.
        if !native_alloc::connected() {
            on_free(ptr);
        }
        return raw_alloc(size, || f(a.ctx, ptr, size));
    }
    on_free(ptr);
    // Growing or shrinking may move a block between pymalloc and the RAW domain: always mark.
    obj_alloc::<D>(size, sample(size), true, |request| f(a.ctx, ptr, request))
}

/// The RAW wrapper's free, and MEM/OBJ's when their frees do not reach RAW. The record of a
/// sampled block is written before the block is released, so that a later allocation of the
/// same address comes after it in the ring. The fast path (the filter rules the address out)
/// makes no call but the forwarding one, a tail call.
extern "C" fn hook_free<const D: usize>(_ctx: *mut c_void, ptr: *mut c_void) {
    let a = saved(D);
    // SAFETY: as in `hook_malloc`.
    let f = unsafe { a.free.unwrap_unchecked() };
    if FILTER.may_contain(ptr as u64) {
        return free_maybe_sampled::<D>(f, a.ctx, ptr);
    }
    f(a.ctx, ptr)
}

#[inline(never)]
fn free_maybe_sampled<const D: usize>(
    f: extern "C" fn(*mut c_void, *mut c_void),
    ctx: *mut c_void,
    ptr: *mut c_void,
) {
    // A RAW free nested in pymalloc's free of a pool block finds nothing, so frees need no
    // nesting mark; with the preload library, free beneath does RAW's.
    if TRACKING.load(Ordering::Relaxed) && !(D == RAW && native_alloc::connected()) {
        on_free(ptr);
    }
    f(ctx, ptr)
}

/// The preload library's malloc-family callback (see [`native_alloc`]): any thread, any time.
/// Calls nested in our MEM/OBJ wrapper were accounted there.
pub extern "C" fn on_native_alloc(p: *mut c_void, size: usize) {
    if TRACKING.load(Ordering::Relaxed)
        && OUTER.load(Ordering::Relaxed) != thread_pointer()
        && !p.is_null()
        && sample(size)
    {
        record_alloc(p as u64, p as u64, size as u64);
    }
}

pub extern "C" fn on_native_free(p: *mut c_void) {
    if TRACKING.load(Ordering::Relaxed) {
        on_free(p);
    }
}

/// Our allocator for domain `D`. With `hook_frees` false, frees go straight to the saved
/// allocator (with its own `ctx`, which our other functions ignore: they read the static).
fn ours<const D: usize>(hook_frees: bool) -> PyMemAllocatorEx {
    let (ctx, free): (_, Option<extern "C" fn(*mut c_void, *mut c_void)>) = if hook_frees {
        // A pointer into the static, never dereferenced through ctx (see `saved`).
        let ctx = SAVED
            .0
            .get()
            .cast::<PyMemAllocatorEx>()
            .wrapping_add(D)
            .cast();
        (ctx, Some(hook_free::<D>))
    } else {
        (saved(D).ctx, saved(D).free)
    };
    PyMemAllocatorEx {
        ctx,
        malloc: Some(hook_malloc::<D>),
        calloc: Some(hook_calloc::<D>),
        realloc: Some(hook_realloc::<D>),
        free,
    }
}

fn our_allocator(d: usize, hook_frees: bool) -> PyMemAllocatorEx {
    match d {
        0 => ours::<0>(hook_frees),
        1 => ours::<1>(hook_frees),
        _ => ours::<2>(hook_frees),
    }
}

/// Is our wrapper the installed allocator of domain `d` (not wrapped by another tool)?
fn ours_installed(d: usize) -> bool {
    let mut current = NO_ALLOCATOR;
    // SAFETY: GIL held; valid out-parameter.
    unsafe { ffi::PyMem_GetAllocator(domain(d), &mut current) };
    current.malloc.map(|f| f as usize) == our_allocator(d, true).malloc.map(|f| f as usize)
}

/// Wrap the current allocator of domain `d`, frees included (GIL held; see `Saved` for when
/// this may run).
fn wrap(d: usize) {
    FREE_VIA_RAW[d].store(false, Ordering::Relaxed);
    // SAFETY: GIL held; SAVED[d] is written before our wrapper is installed and while no call
    // can be inside it (see `Saved`); the allocator structs are valid in/out parameters.
    unsafe {
        ffi::PyMem_GetAllocator(domain(d), &mut (*SAVED.0.get())[d]);
        let mut a = our_allocator(d, true);
        ffi::PyMem_SetAllocator(domain(d), &mut a);
    }
}

/// Wrap the three domains (GIL held, once per process).
fn install_hooks() {
    for d in 0..3 {
        wrap(d);
    }
}

/// At `start()` (GIL held, tracking, not sampling), for MEM and OBJ: do their frees reach our
/// RAW wrapper? Then stop wrapping their frees, the most frequent allocator call. They do when
/// a request over `PYMALLOC_MAX` makes a nested RAW call (pymalloc, also under the debug hooks
/// or tracemalloc), whose free pymalloc also passes on to RAW; not under `PYTHONMALLOC=malloc`,
/// nor once another tool removed our RAW wrapper. Changed only where our wrapper is the
/// installed allocator: a tool that wrapped it keeps calling the free it saw, and
/// `FREE_VIA_RAW` keeps matching that.
fn choose_free_paths() {
    for (d, via_raw_now) in FREE_VIA_RAW.iter().enumerate().skip(1) {
        NESTED_RAW.store(0, Ordering::Relaxed);
        // SAFETY: GIL held (MEM and OBJ require it); the block is given back to its domain.
        unsafe {
            if d == 1 {
                ffi::PyMem_Free(ffi::PyMem_Malloc(PYMALLOC_MAX + 1));
            } else {
                ffi::PyObject_Free(ffi::PyObject_Malloc(PYMALLOC_MAX + 1));
            }
        }
        let via_raw = NESTED_RAW.load(Ordering::Relaxed) != 0;
        if ours_installed(d) && via_raw != via_raw_now.load(Ordering::Relaxed) {
            let mut a = our_allocator(d, !via_raw);
            // SAFETY: GIL held, so no MEM/OBJ call runs meanwhile; valid struct; the saved
            // allocator stays the one beneath.
            unsafe { ffi::PyMem_SetAllocator(domain(d), &mut a) };
            via_raw_now.store(via_raw, Ordering::Relaxed);
        }
    }
}

/// A request no allocator can satisfy: CPython passes sizes up to `PY_SSIZE_T_MAX` on to the
/// domain's allocator, and malloc refuses this one. Used to see whether a call of a domain still
/// reaches our wrapper (another tool may have removed it: `tracemalloc.stop()` puts back the
/// allocators it wrapped, which drops ours when memprof started while tracemalloc was tracing).
const PROBE_SIZE: usize = isize::MAX as usize;
/// Failed `PROBE_SIZE` requests seen by our wrapper of each domain.
static PROBES_SEEN: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

#[cold]
fn note_failed<const D: usize>(size: usize) {
    if size == PROBE_SIZE {
        PROBES_SEEN[D].fetch_add(1, Ordering::Relaxed);
    }
}

/// Does a call of domain `d` still reach our wrapper? GIL held, frees being tracked. The RAW
/// wrapper does not look at calls while the preload library is connected: then it is not
/// probed (malloc beneath counts those calls).
fn reaches_our_wrapper(d: usize) -> bool {
    if d == RAW && native_alloc::connected() {
        return true;
    }
    let before = PROBES_SEEN[d].load(Ordering::Relaxed);
    // SAFETY: GIL held (required by MEM and OBJ); a failed request returns NULL and sets no
    // Python exception, and a block it somehow returned is given back to the same domain.
    unsafe {
        let saved_errno = *libc::__errno_location();
        let p = match d {
            RAW => ffi::PyMem_RawMalloc(PROBE_SIZE),
            1 => ffi::PyMem_Malloc(PROBE_SIZE),
            _ => ffi::PyObject_Malloc(PROBE_SIZE),
        };
        if !p.is_null() {
            match d {
                RAW => ffi::PyMem_RawFree(p),
                1 => ffi::PyMem_Free(p),
                _ => ffi::PyObject_Free(p),
            }
        }
        *libc::__errno_location() = saved_errno;
    }
    PROBES_SEEN[d].load(Ordering::Relaxed) != before
}

/// Names of the domains whose calls no longer reach our wrapper (GIL held, tracking on).
fn unhooked_domains() -> Vec<&'static str> {
    const NAMES: [&str; 3] = ["PYMEM_DOMAIN_RAW", "PYMEM_DOMAIN_MEM", "PYMEM_DOMAIN_OBJ"];
    (0..3)
        .filter(|&d| !reaches_our_wrapper(d))
        .map(|d| NAMES[d])
        .collect()
}

/// At `start()`: wrap again the MEM and OBJ domains that another tool unhooked. Their calls hold
/// the GIL, as this does, and none reaches our wrapper (the probe just said so), so rewriting
/// its saved allocator races with nothing. RAW may be called without the GIL by a thread that
/// entered our wrapper before it was removed, so RAW stays unhooked (`sources` says so).
fn wrap_again() {
    for d in 1..3 {
        if !reaches_our_wrapper(d) {
            wrap(d);
        }
    }
}

/// Put the saved allocators back where ours are still the installed ones. Elsewhere someone
/// wrapped ours: leave them (our wrappers keep forwarding, as they only read the static).
fn restore_hooks() -> usize {
    let mut restored = 0;
    for d in 0..3 {
        if ours_installed(d) {
            let mut original = *saved(d);
            // SAFETY: GIL held; the saved struct is the allocator that was installed before ours.
            unsafe { ffi::PyMem_SetAllocator(domain(d), &mut original) };
            restored += 1;
        }
    }
    restored
}

#[inline(always)]
fn on_free(p: *mut c_void) {
    if !p.is_null() && FILTER.may_contain(p as u64) {
        if let Some(sh) = shared() {
            record_free(sh, p as u64);
        }
    }
}

/// The calling thread's thread state if it holds the GIL, else 0. Both calls read the thread's
/// interpreter-owned slots (the attached thread state and the GIL-state TSS key): no
/// allocation, no lock, no Python code.
fn gil_tstate() -> usize {
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
fn in_main_interpreter(walker: &Walker, tstate: usize) -> bool {
    // SAFETY: tstate is the calling thread's live thread state; `interp` is a plain field of it.
    let interp = unsafe { *((tstate + walker.off.tstate_interp) as *const usize) };
    // SAFETY: no preconditions; it reads the runtime's pointer to the main interpreter.
    interp == unsafe { ffi::PyInterpreterState_Main() } as usize
}

/// The calling thread's kernel id: from its thread state when it has one that records it
/// (3.11+), which saves a system call (half the cost of recording a sample), else `gettid`.
fn own_tid(walker: &Walker, tstate: usize) -> u32 {
    // SAFETY: a non-zero tstate is the calling thread's own live thread state (it holds the GIL).
    (tstate != 0)
        .then(|| unsafe { thread_state::recorded_native_id(&walker.off, tstate) })
        .flatten()
        .unwrap_or_else(|| gettid() as u32)
}

/// A sampled allocation of `size` bytes at `address`, whose free will be seen as `key`'s.
#[cold]
#[inline(never)]
fn record_alloc(key: u64, address: u64, size: u64) {
    let Some(sh) = shared() else {
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
    let total = if tstate != 0 {
        // SAFETY: tstate is the calling thread's own, and it holds the GIL: its chain is stable.
        unsafe { walker.depth(tstate, MAX_DEPTH + 1) }
    } else {
        0
    };
    let depth = total.min(MAX_DEPTH);
    if total > depth {
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
    rec.write(0, clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0));
    rec.write(1, weight);
    rec.write(2, raw::pack_thread(own_tid(walker, tstate), flags));
    rec.write(3, depth as u64);
    // SAFETY: as above.
    unsafe { walker.write_frames(tstate, depth, false, &mut rec) };
    rec.write(raw::body_words(depth), key);
    rec.write(raw::body_words(depth) + 1, size);
    rec.write(raw::body_words(depth) + 2, address);
    rec.commit();
}

/// Double the sampling rate when the heap map passes half full, then at every further eighth.
/// Atomics only: the thread that wins the compare-exchange for a step raises the rate once.
fn raise_rate_if_filling(map: &HeapMap) {
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
fn record_free(sh: &Shared, key: u64) {
    if !sh.map.remove(key) {
        return;
    }
    let Some(mut rec) = sh.ring.reserve(raw::mem_body_words(0)) else {
        LOST_FREES.fetch_add(1, Ordering::Relaxed);
        return;
    };
    rec.write(0, clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0));
    rec.write(1, 0);
    rec.write(2, raw::pack_thread(0, raw::FLAG_FREE));
    rec.write(3, 0);
    rec.write(raw::body_words(0), key);
    rec.write(raw::body_words(0) + 1, 0);
    rec.write(raw::body_words(0) + 2, key);
    rec.commit();
}

// ---- the live heap, resolved with the GIL ---------------------------------------------------

struct Live {
    address: u64,
    timestamp_ns: u64,
    size: u64,
    weight: u64,
    tid: u32,
    stack: StackId,
}

/// Locked only with the GIL held, never across a GIL release (as the CPU session's lock).
struct MemSession {
    /// Interned frames and stacks of the samples (no sample rows: `live` holds them).
    store: Store,
    resolver: Resolver,
    /// Live samples by key (see `record_alloc`).
    live: HashMap<u64, Live>,
    scratch: Vec<u32>,
    start_ns: u64,
    total_samples: u64,
    freed_samples: u64,
    /// Frees of addresses sampled by an earlier run (restarted profile) or before a fork.
    untracked_frees: u64,
    /// The estimated live heap (the weights of `live`), and its high-water mark since
    /// `reset_peak`, both in the order the records were made.
    live_bytes: u64,
    peak_bytes: u64,
    /// Bytes sampled per (thread, stack) since `reset_peak`, freed or not: who allocated.
    allocated: HashMap<(u32, StackId), u64>,
    drainer: Option<ResolverThread>,
}

static SESSION: Mutex<Option<MemSession>> = Mutex::new(None);
/// Mirrors `SESSION.is_some()` for the code-deallocation hook's fast path.
static HAS_SESSION: AtomicBool = AtomicBool::new(false);

fn lock() -> std::sync::MutexGuard<'static, Option<MemSession>> {
    SESSION.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemSession {
    fn new(resolver: Resolver) -> MemSession {
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
            drainer: None,
        }
    }

    /// A new profile: forget the samples of the previous run.
    fn reset(&mut self) {
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
    fn drain(&mut self, py: Python<'_>, sh: &Shared) -> usize {
        let (store, resolver, scratch, live, allocated) = (
            &mut self.store,
            &mut self.resolver,
            &mut self.scratch,
            &mut self.live,
            &mut self.allocated,
        );
        let (live_bytes, peak_bytes) = (&mut self.live_bytes, &mut self.peak_bytes);
        let (mut total, mut freed, mut untracked) = (0, 0, 0);
        let n = sh.ring.consume(|body| {
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
                resolve_stack(py, &raw, store, resolver, scratch)
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
        self.total_samples += total;
        self.freed_samples += freed;
        self.untracked_frees += untracked;
        n
    }

    fn start_drainer(&mut self) {
        self.drainer = Some(ResolverThread::spawn("spprof-memprof", drainer_loop));
    }
}

/// Resolve in the background so the ring never fills: when it is an eighth full, or every
/// second when it holds anything. Each drain takes the GIL from the program (a handoff of
/// about 0.1 ms); nothing needs records resolved sooner: snapshots and code-object
/// deallocation drain first. Runs from `start()` to `shutdown()` (frees keep coming).
fn drainer_loop(stop: &StopSignal) {
    let Some(sh) = shared() else {
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
                if let Some(s) = lock().as_mut() {
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
    let Some(sh) = shared() else {
        return;
    };
    // try_lock: the only holder with the GIL could be this thread itself (re-entry).
    if let Ok(mut guard) = SESSION.try_lock() {
        if let Some(s) = guard.as_mut() {
            // A record still being written by a thread without the GIL blocks the ones behind
            // it; it is a few stores from being committed, so wait for it a little.
            let mut spins = 0;
            while !sh.ring.is_empty() && spins < 10_000 {
                if s.drain(py, sh) == 0 {
                    spins += 1;
                    std::hint::spin_loop();
                }
            }
            s.resolver.forget(code);
        }
    }
}

fn runtime_error(msg: &str) -> PyErr {
    PyRuntimeError::new_err(msg.to_owned())
}

const SHUT_DOWN_MSG: &str = "memory profiling was shut down (spprof.memprof.shutdown() is final \
    in a process); start memory profiling in a new process";

/// Start sampling allocations with a mean of `rate_bytes` bytes between samples.
#[pyfunction]
fn memprof_start(py: Python<'_>, rate_bytes: u64) -> PyResult<()> {
    if rate_bytes < 1024 {
        return Err(PyValueError::new_err("sampling_rate_kb must be at least 1"));
    }
    if SHUT_DOWN.load(Ordering::Acquire) {
        return Err(runtime_error(SHUT_DOWN_MSG));
    }
    if SAMPLING.load(Ordering::Acquire) {
        return Err(runtime_error(
            "memory profiling is already running; call spprof.memprof.stop() first",
        ));
    }
    // Before the session lock: these run Python code.
    let blocks: isize = py
        .import("sys")?
        .call_method0("getallocatedblocks")?
        .extract()?;
    PYMALLOC.store(blocks > 0, Ordering::Relaxed);
    let walker = cpython::layout::walker(py)?;
    cpython::code_watch::install(py)?;
    let resolver = Resolver::new(py);
    let sh = match shared() {
        Some(sh) => sh,
        None => {
            let sh = Box::new(Shared {
                ring: Ring::new(RING_BYTES),
                map: HeapMap::new(HEAP_MAP_SLOTS, &FILTER),
                walker,
            });
            SHARED.store(Box::into_raw(sh), Ordering::Release);
            shared().expect("just published")
        }
    };
    {
        let mut guard = lock();
        let s = guard.get_or_insert_with(|| MemSession::new(resolver));
        s.drain(py, sh);
        s.reset();
        if s.drainer.is_none() {
            s.start_drainer();
        }
    }
    HAS_SESSION.store(true, Ordering::Release);
    if !INSTALLED.swap(true, Ordering::AcqRel) {
        install_hooks();
    }
    set_flags(false, true); // the probes below are seen only while tracking
    wrap_again();
    choose_free_paths();
    SAMPLER.set_mean(rate_bytes);
    NEXT_RAISE_AT.store(sh.map.len().max(sh.map.capacity() / 2), Ordering::Relaxed);
    RATE_RAISES.store(0, Ordering::Relaxed);
    native_alloc::connect();
    set_flags(true, true);
    crate::resolver_thread::wait_until_started(py);
    Ok(())
}

/// Stop sampling new allocations; frees are still tracked until `shutdown()`.
#[pyfunction]
fn memprof_stop(py: Python<'_>) -> PyResult<()> {
    if SHUT_DOWN.load(Ordering::Acquire) {
        return Err(runtime_error(SHUT_DOWN_MSG));
    }
    if !SAMPLING.load(Ordering::SeqCst) {
        return Err(runtime_error(
            "memory profiling is not running; call spprof.memprof.start() first",
        ));
    }
    set_flags(false, true);
    if let (Some(sh), Some(s)) = (shared(), lock().as_mut()) {
        s.drain(py, sh);
    }
    Ok(())
}

/// Stop everything for good: no sampling, no free tracking, the resolver thread ends, and our
/// allocator wrappers are removed where nobody wrapped them since. Idempotent.
#[pyfunction]
fn memprof_shutdown(py: Python<'_>) -> usize {
    if SHUT_DOWN.swap(true, Ordering::AcqRel) {
        return 0;
    }
    set_flags(false, false);
    native_alloc::disconnect();
    let drainer = lock().as_mut().and_then(|s| s.drainer.take());
    if let Some(d) = drainer {
        d.stop_and_join(py);
    }
    if let (Some(sh), Some(s)) = (shared(), lock().as_mut()) {
        s.drain(py, sh);
    }
    if INSTALLED.load(Ordering::Acquire) {
        restore_hooks()
    } else {
        0
    }
}

/// "never", "running", "stopped" or "shutdown".
#[pyfunction]
fn memprof_state() -> &'static str {
    if SHUT_DOWN.load(Ordering::Acquire) {
        "shutdown"
    } else if SAMPLING.load(Ordering::Acquire) {
        "running"
    } else if HAS_SESSION.load(Ordering::Acquire) {
        "stopped"
    } else {
        "never"
    }
}

/// A snapshot for Python: the profile, `(address, size)` per sample, and the total samples.
type Snapshot = (ProfileData, Vec<(u64, u64)>, u64);

/// The running session, drained, or the error that says why there is none.
fn drained<'a>(py: Python<'_>, guard: &'a mut Option<MemSession>) -> PyResult<&'a mut MemSession> {
    if SHUT_DOWN.load(Ordering::Acquire) {
        return Err(runtime_error(
            "memory profiling was shut down, so frees are no longer tracked and no snapshot can \
             be taken; take snapshots before spprof.memprof.shutdown()",
        ));
    }
    let (Some(sh), Some(s)) = (shared(), guard.as_mut()) else {
        return Err(runtime_error(
            "memory profiling has not been started; call spprof.memprof.start() first",
        ));
    };
    s.drain(py, sh);
    Ok(s)
}

/// Rows of the session's samples copied into a store of their own, with thread names.
struct Export<'a> {
    session: &'a MemSession,
    names: HashMap<u64, String>,
    out: Store,
    stacks: HashMap<StackId, StackId>,
}

impl<'a> Export<'a> {
    fn new(session: &'a MemSession, names: HashMap<u64, String>) -> Self {
        Export {
            session,
            names,
            out: Store::new(usize::MAX),
            stacks: HashMap::new(),
        }
    }

    fn add(&mut self, timestamp_ns: u64, weight: u64, tid: u32, stack: StackId) {
        let tid = tid as u64;
        let name = self
            .names
            .get(&tid)
            .cloned()
            .unwrap_or_else(|| format!("Thread-{tid}"));
        let thread = self.out.add_thread(tid, &name);
        let (s, out) = (&self.session.store, &mut self.out);
        let stack = *self.stacks.entry(stack).or_insert_with(|| {
            let frames: Vec<u32> = if stack == EMPTY_STACK {
                Vec::new()
            } else {
                s.stack_frames(stack)
                    .into_iter()
                    .filter_map(|f| {
                        let fr = s.frames()[f as usize];
                        out.intern_frame(
                            s.string(fr.function),
                            s.string(fr.file),
                            fr.line,
                            fr.is_native,
                        )
                    })
                    .collect()
            };
            out.intern_stack(frames).unwrap_or(EMPTY_STACK)
        });
        let ts = timestamp_ns.saturating_sub(self.session.start_ns) as i64;
        self.out.add_sample(ts, weight as i64, thread, stack, true);
    }

    fn finish(self) -> ProfileData {
        ProfileData::new(self.out, 0, 0, false)
    }
}

/// The live samples as a profile (weights = estimated bytes, timestamps = allocation time since
/// start) and `[(address, size)]` in the same order. `names` maps thread ids to names.
#[pyfunction]
fn memprof_snapshot(py: Python<'_>, names: HashMap<u64, String>) -> PyResult<Snapshot> {
    let mut guard = lock();
    let s = drained(py, &mut guard)?;
    let mut rows: Vec<(&u64, &Live)> = s.live.iter().collect();
    rows.sort_by_key(|(addr, l)| (l.timestamp_ns, **addr));
    let mut export = Export::new(s, names);
    let mut addresses = Vec::with_capacity(rows.len());
    for (_, l) in rows {
        export.add(l.timestamp_ns, l.weight, l.tid, l.stack);
        addresses.push((l.address, l.size));
    }
    Ok((export.finish(), addresses, s.total_samples))
}

/// The estimated live heap and its high-water mark since `memprof_reset_peak`, in bytes.
#[pyfunction]
fn memprof_traced_memory(py: Python<'_>) -> PyResult<(u64, u64)> {
    let mut guard = lock();
    let s = drained(py, &mut guard)?;
    Ok((s.live_bytes, s.peak_bytes))
}

/// Start the high-water mark again from the live heap now, and the tally of who allocated
/// (drained first, so that nothing allocated before counts).
#[pyfunction]
fn memprof_reset_peak(py: Python<'_>) -> PyResult<()> {
    let mut guard = lock();
    let s = drained(py, &mut guard)?;
    s.peak_bytes = s.live_bytes;
    s.allocated.clear();
    Ok(())
}

/// The bytes sampled since `memprof_reset_peak`, freed or not, as a profile: one row per thread
/// and stack, weighted by estimated bytes.
#[pyfunction]
fn memprof_allocated_since_reset(
    py: Python<'_>,
    names: HashMap<u64, String>,
) -> PyResult<ProfileData> {
    let mut guard = lock();
    let s = drained(py, &mut guard)?;
    let mut rows: Vec<(&(u32, StackId), &u64)> = s.allocated.iter().collect();
    rows.sort_unstable();
    let mut export = Export::new(s, names);
    for (&(tid, stack), &bytes) in rows {
        export.add(s.start_ns, bytes, tid, stack);
    }
    Ok(export.finish())
}

/// Counters (a dict); drains first so they are current.
#[pyfunction]
fn memprof_stats(py: Python<'_>) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    let mut guard = lock();
    let (mut total, mut live, mut freed, mut stacks, mut bytes, mut untracked) = (0, 0, 0, 0, 0, 0);
    if let (Some(sh), Some(s)) = (shared(), guard.as_mut()) {
        if !SHUT_DOWN.load(Ordering::Acquire) {
            s.drain(py, sh);
        }
        total = s.total_samples;
        live = s.live.len();
        freed = s.freed_samples;
        stacks = s
            .live
            .values()
            .map(|l| l.stack)
            .collect::<HashSet<_>>()
            .len();
        bytes = s.live_bytes;
        untracked = s.untracked_frees;
    }
    drop(guard);
    let sh = shared();
    d.set_item("total_samples", total)?;
    d.set_item("live_samples", live)?;
    d.set_item("freed_samples", freed)?;
    d.set_item("unique_stacks", stacks)?;
    d.set_item("estimated_heap_bytes", bytes)?;
    d.set_item(
        "heap_map_load_percent",
        sh.map_or(0.0, |s| s.map.load_percent()),
    )?;
    d.set_item("collisions", sh.map_or(0, |s| s.map.collisions()))?;
    d.set_item("sampling_rate_bytes", SAMPLER.mean())?;
    d.set_item("sampling_rate_raises", RATE_RAISES.load(Ordering::Relaxed))?;
    d.set_item(
        "dropped_samples",
        DROPPED.load(Ordering::Relaxed) + sh.map_or(0, |s| s.map.refused()),
    )?;
    d.set_item("lost_frees", LOST_FREES.load(Ordering::Relaxed))?;
    d.set_item("untracked_frees", untracked)?;
    d.set_item("heap_map_capacity", sh.map_or(0, |s| s.map.capacity()))?;
    d.set_item("heap_map_tombstones", sh.map_or(0, |s| s.map.tombstones()))?;
    d.set_item("state", memprof_state())?;
    let mut sources: Vec<&str> = Vec::new();
    let mut unhooked = Vec::new();
    if TRACKING.load(Ordering::Acquire) {
        unhooked = unhooked_domains();
        // MEM and OBJ serve Python objects; RAW, a few C modules' buffers.
        if !unhooked
            .iter()
            .any(|d| d.ends_with("MEM") || d.ends_with("OBJ"))
        {
            sources.push("python");
        }
        if native_alloc::connected() {
            sources.push("native");
        }
    }
    d.set_item("sources", sources)?;
    d.set_item("unhooked_domains", unhooked)?;
    Ok(d.unbind())
}

/// In a forked child: memory profiling is stopped and empty there. The hooks stay installed but
/// only forward; only the forking thread exists, so nothing runs concurrently with this.
#[pyfunction]
fn memprof_after_fork_in_child() {
    set_flags(false, false);
    OUTER.store(0, Ordering::Relaxed);
    NESTED_RAW.store(0, Ordering::Relaxed);
    if let Some(sh) = shared() {
        // A thread of the parent may have died in the middle of a record.
        sh.ring.reset();
        sh.map.clear();
    }
    if let Some(s) = lock().as_mut() {
        if let Some(d) = s.drainer.take() {
            d.abandon_after_fork();
        }
        s.reset();
    }
}

/// Test hook: make the samplers' draws reproducible (from the next `start()`).
#[pyfunction]
fn _memprof_seed(seed: u64) {
    SAMPLER.reseed(seed);
    SMALL_SAMPLER.reseed(!seed);
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(memprof_start, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_stop, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_state, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_stats, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_traced_memory, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_reset_peak, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_allocated_since_reset, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(_memprof_seed, m)?)?;
    Ok(())
}
