//! The connection to the LD_PRELOAD library `libspprof_alloc.so` (rust/alloc/spprof_alloc.c),
//! which interposes the malloc family. When the process was started with it, `memprof.start()`
//! registers two callbacks with it (the hooks' own, passed in), and native allocations (C extensions, numpy buffers, any
//! library's malloc) reach the same Poisson sampler and heap map as Python's.
//!
//! The library is found by symbol (`dlsym(RTLD_DEFAULT, "spprof_alloc_set_hooks")`), so nothing
//! is loaded when it is absent: then memprof tracks Python's allocator domains only, and
//! `get_stats().sources` says so.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The callback table of the C library (`spprof_alloc_hooks`).
#[repr(C)]
struct Hooks {
    on_alloc: extern "C" fn(*mut c_void, usize),
    on_free: extern "C" fn(*mut c_void),
}

/// The callbacks, given by the first `connect()` (the C library keeps the pointer).
static HOOKS: OnceLock<Hooks> = OnceLock::new();

type SetHooks = extern "C" fn(*const Hooks);

/// The callbacks are registered: malloc-family calls reach the memory profiler.
static CONNECTED: AtomicBool = AtomicBool::new(false);

/// The version of the C library's interface this module speaks.
const VERSION: i32 = 1;

fn symbol(name: &std::ffi::CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

fn set_hooks(hooks: *const Hooks) -> bool {
    let version = symbol(c"spprof_alloc_version");
    let set = symbol(c"spprof_alloc_set_hooks");
    if version.is_null() || set.is_null() {
        return false;
    }
    // SAFETY: both symbols are the C library's functions with these exact signatures
    // (`int spprof_alloc_version(void)`, `void spprof_alloc_set_hooks(const hooks *)`).
    let (version, set) = unsafe {
        (
            std::mem::transmute::<*mut c_void, extern "C" fn() -> i32>(version),
            std::mem::transmute::<*mut c_void, SetHooks>(set),
        )
    };
    if version() != VERSION {
        return false;
    }
    set(hooks);
    true
}

/// Register the callbacks if the preload library is in the process; true when connected.
pub fn connect(
    on_alloc: extern "C" fn(*mut c_void, usize),
    on_free: extern "C" fn(*mut c_void),
) -> bool {
    let hooks = HOOKS.get_or_init(|| Hooks { on_alloc, on_free });
    if !CONNECTED.load(Ordering::Acquire) && set_hooks(hooks) {
        CONNECTED.store(true, Ordering::Release);
    }
    CONNECTED.load(Ordering::Acquire)
}

/// Remove the callbacks (`shutdown()`): malloc calls go straight through again.
pub fn disconnect() {
    if CONNECTED.swap(false, Ordering::AcqRel) {
        set_hooks(std::ptr::null());
    }
}

#[inline(always)]
pub fn connected() -> bool {
    CONNECTED.load(Ordering::Relaxed)
}
