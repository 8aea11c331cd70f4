//! Putting the wrappers in place, checking they are reached, and taking them out (GIL held).

use super::hooks::*;
use super::preload;
use super::state::*;
use super::*;
use pyo3::ffi::{self, PyMemAllocatorDomain, PyMemAllocatorEx};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

pub(super) static SHUT_DOWN: AtomicBool = AtomicBool::new(false);
pub(super) static INSTALLED: AtomicBool = AtomicBool::new(false);

pub(super) fn domain(d: usize) -> PyMemAllocatorDomain {
    match d {
        0 => PyMemAllocatorDomain::PYMEM_DOMAIN_RAW,
        1 => PyMemAllocatorDomain::PYMEM_DOMAIN_MEM,
        _ => PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ,
    }
}

/// Set whether new allocations are sampled and frees tracked (GIL held; after
/// `preload::connect()`).
pub(super) fn set_flags(sampling: bool, tracking: bool) {
    TRACKING.store(tracking, Ordering::SeqCst);
    SAMPLING.store(sampling, Ordering::SeqCst);
    let small_reach_malloc = preload::connected() && !PYMALLOC.load(Ordering::Relaxed);
    SMALL_REACH_MALLOC.store(small_reach_malloc, Ordering::SeqCst);
    let small_fast = sampling && !small_reach_malloc;
    SMALL_FAST.store(small_fast, Ordering::SeqCst);
    if small_fast {
        SMALL_SAMPLER.set_mean(SAMPLER.mean());
    } else {
        SMALL_SAMPLER.disarm();
    }
}

/// Our allocator for domain `D`. With `hook_frees` false, frees go straight to the saved
/// allocator (with its own `ctx`, which our other functions ignore: they read the static).
pub(super) fn ours<const D: usize>(hook_frees: bool) -> PyMemAllocatorEx {
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

pub(super) fn our_allocator(d: usize, hook_frees: bool) -> PyMemAllocatorEx {
    match d {
        0 => ours::<0>(hook_frees),
        1 => ours::<1>(hook_frees),
        _ => ours::<2>(hook_frees),
    }
}

/// Is our wrapper the installed allocator of domain `d` (not wrapped by another tool)?
pub(super) fn ours_installed(d: usize) -> bool {
    let mut current = NO_ALLOCATOR;
    // SAFETY: GIL held; valid out-parameter.
    unsafe { ffi::PyMem_GetAllocator(domain(d), &mut current) };
    current.malloc.map(|f| f as usize) == our_allocator(d, true).malloc.map(|f| f as usize)
}

/// Wrap the current allocator of domain `d`, frees included (GIL held; see `Saved` for when
/// this may run).
pub(super) fn wrap(d: usize) {
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
pub(super) fn install_hooks() {
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
pub(super) fn choose_free_paths() {
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

/// Does a call of domain `d` still reach our wrapper? GIL held, frees being tracked. The RAW
/// wrapper does not look at calls while the preload library is connected: then it is not
/// probed (malloc beneath counts those calls).
pub(super) fn reaches_our_wrapper(d: usize) -> bool {
    if d == RAW && preload::connected() {
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
pub(super) fn unhooked_domains() -> Vec<&'static str> {
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
pub(super) fn wrap_again() {
    for d in 1..3 {
        if !reaches_our_wrapper(d) {
            wrap(d);
        }
    }
}

/// Put the saved allocators back where ours are still the installed ones. Elsewhere someone
/// wrapped ours: leave them (our wrappers keep forwarding, as they only read the static).
pub(super) fn restore_hooks() -> usize {
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
