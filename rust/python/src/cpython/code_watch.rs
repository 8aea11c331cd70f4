//! Resolve-before-free: learn about every code object deallocation so that each consumer of
//! raw records (the CPU session, the memory profiler) drains its ring while the object is still
//! intact (see [`crate::resolve::resolver`]). Consumers pass their callback in.
//!
//! - 3.12+: the official code watcher API (`PyCode_AddWatcher`, `PY_CODE_EVENT_DESTROY`).
//! - 3.9–3.11: no watcher API exists, so `PyCode_Type.tp_dealloc` is wrapped: the wrapper tells
//!   the session, then calls the original. Installed once, never removed (it costs one atomic
//!   load per code deallocation when no session runs).

use pyo3::ffi;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Told (GIL held) that the code object at the address is about to be freed.
pub type Consumer = fn(Python<'_>, usize);

/// The consumers, as function addresses (0: free place); one each for CPU and memory.
static CONSUMERS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

/// Install the hook (GIL held) and add `consumer` to those it tells. Idempotent.
pub fn install(_py: Python<'_>, consumer: Consumer) -> PyResult<()> {
    let address = consumer as usize;
    if !CONSUMERS
        .iter()
        .any(|c| c.load(Ordering::Acquire) == address)
    {
        let free = CONSUMERS.iter().find(|c| {
            c.compare_exchange(0, address, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if free.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "spprof's code watcher has no room for another consumer",
            ));
        }
    }
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    imp::install()
}

fn notify(code: *mut ffi::PyObject) {
    // SAFETY: deallocation and code watchers run with the GIL held.
    let py = unsafe { Python::assume_attached() };
    for c in &CONSUMERS {
        let address = c.load(Ordering::Acquire);
        if address != 0 {
            // SAFETY: only `install` stores here, and only addresses of `Consumer` functions.
            let consumer = unsafe { std::mem::transmute::<usize, Consumer>(address) };
            consumer(py, code as usize);
        }
    }
}

#[cfg(Py_3_12)]
mod imp {
    use super::*;

    const PY_CODE_EVENT_DESTROY: i32 = 1;

    extern "C" {
        fn PyCode_AddWatcher(callback: extern "C" fn(i32, *mut ffi::PyCodeObject) -> i32) -> i32;
    }

    extern "C" fn watcher(event: i32, code: *mut ffi::PyCodeObject) -> i32 {
        if event == PY_CODE_EVENT_DESTROY {
            notify(code.cast());
        }
        0
    }

    pub fn install() -> PyResult<()> {
        // SAFETY: called with the GIL held; the callback is a plain extern "C" function.
        if unsafe { PyCode_AddWatcher(watcher) } < 0 {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "spprof could not register its code watcher (all code watcher slots are taken)",
            ));
        }
        Ok(())
    }
}

#[cfg(not(Py_3_12))]
mod imp {
    use super::*;

    static ORIGINAL: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn dealloc(code: *mut ffi::PyObject) {
        notify(code);
        let original = ORIGINAL.load(Ordering::Acquire);
        // SAFETY: ORIGINAL holds the type's own tp_dealloc, saved before this wrapper was set.
        let original: unsafe extern "C" fn(*mut ffi::PyObject) =
            unsafe { std::mem::transmute(original) };
        // SAFETY: forwarding the deallocation exactly as the interpreter asked for it.
        unsafe { original(code) }
    }

    pub fn install() -> PyResult<()> {
        // SAFETY: GIL held; PyCode_Type is a static type whose slots live in writable memory and
        // are only read by threads holding the GIL.
        unsafe {
            let ty = std::ptr::addr_of_mut!(ffi::PyCode_Type);
            let original = (*ty).tp_dealloc.expect("PyCode_Type has a tp_dealloc");
            ORIGINAL.store(original as usize, Ordering::Release);
            (*ty).tp_dealloc = Some(dealloc);
        }
        Ok(())
    }
}
