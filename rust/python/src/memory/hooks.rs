//! ALLOCATOR-SAFE: the wrappers of CPython's allocator domains and the preload library's
//! callbacks, and the state they read. They run inside every allocation and free of every
//! thread: no allocation, no lock, no Python API, no thread-local, no panic. A sampled
//! allocation or free leaves through [`super::records`], which keeps to the same rules.

use super::preload;
use super::records::*;
use super::state::*;
use super::*;
use std::ffi::c_void;
use std::sync::atomic::Ordering;

/// Whether an allocation of `size` bytes is sampled (its bytes count towards the next sample
/// point while sampling).
#[inline(always)]
pub(super) fn sample(size: usize) -> bool {
    SAMPLING.load(Ordering::Relaxed) && SAMPLER.on_alloc(size)
}

/// The fast path makes no call but the forwarding one, a tail call (so no stack frame): a small
/// MEM/OBJ request whose bytes do not reach the next sample point (pymalloc serves it without
/// calling RAW, so it needs no nesting mark).
pub(super) extern "C" fn hook_malloc<const D: usize>(
    _ctx: *mut c_void,
    size: usize,
) -> *mut c_void {
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

pub(super) type MallocFn = extern "C" fn(*mut c_void, usize) -> *mut c_void;

/// A small MEM/OBJ request in which the sample point falls, or any while the fast path is off.
#[inline(never)]
pub(super) fn malloc_small<const D: usize>(
    f: MallocFn,
    ctx: *mut c_void,
    size: usize,
) -> *mut c_void {
    if !SMALL_FAST.load(Ordering::Relaxed) {
        return malloc_slow::<D>(f, ctx, size);
    }
    SMALL_SAMPLER.on_sampled();
    obj_alloc::<D>(size, true, false, |request| f(ctx, request))
}

/// Any other request: while not tracking (forwarded), RAW calls, MEM/OBJ requests that pymalloc
/// passes on to RAW, and any while stopped or when small requests may reach malloc.
#[inline(never)]
pub(super) fn malloc_slow<const D: usize>(
    f: MallocFn,
    ctx: *mut c_void,
    size: usize,
) -> *mut c_void {
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
pub(super) fn raw_alloc(size: usize, call: impl FnOnce() -> *mut c_void) -> *mut c_void {
    if OUTER.load(Ordering::Relaxed) == thread_pointer() {
        let p = call();
        if NESTED_RAW.load(Ordering::Relaxed) == 0 {
            NESTED_RAW.store(p as usize, Ordering::Relaxed);
        }
        return p;
    }
    if preload::connected() {
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
pub(super) fn obj_alloc<const D: usize>(
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

pub(super) extern "C" fn hook_calloc<const D: usize>(
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
pub(super) extern "C" fn hook_realloc<const D: usize>(
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
        if !preload::connected() {
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
pub(super) extern "C" fn hook_free<const D: usize>(_ctx: *mut c_void, ptr: *mut c_void) {
    let a = saved(D);
    // SAFETY: as in `hook_malloc`.
    let f = unsafe { a.free.unwrap_unchecked() };
    if FILTER.may_contain(ptr as u64) {
        return free_maybe_sampled::<D>(f, a.ctx, ptr);
    }
    f(a.ctx, ptr)
}

#[inline(never)]
pub(super) fn free_maybe_sampled<const D: usize>(
    f: extern "C" fn(*mut c_void, *mut c_void),
    ctx: *mut c_void,
    ptr: *mut c_void,
) {
    // A RAW free nested in pymalloc's free of a pool block finds nothing, so frees need no
    // nesting mark; with the preload library, free beneath does RAW's.
    if TRACKING.load(Ordering::Relaxed) && !(D == RAW && preload::connected()) {
        on_free(ptr);
    }
    f(ctx, ptr)
}

/// The preload library's malloc-family callback (see [`preload`]): any thread, any time.
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

#[inline(always)]
pub(super) fn on_free(p: *mut c_void) {
    if !p.is_null() && FILTER.may_contain(p as u64) {
        if let Some(sh) = hook_state() {
            record_free(sh, p as u64);
        }
    }
}

#[cold]
pub(super) fn note_failed<const D: usize>(size: usize) {
    if size == PROBE_SIZE {
        PROBES_SEEN[D].fetch_add(1, Ordering::Relaxed);
    }
}
