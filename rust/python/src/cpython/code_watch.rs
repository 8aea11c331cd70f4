//! Resolve-before-free: learn about every code object deallocation so the ring can be drained
//! while the object is still intact (see [`crate::resolver`]).
//!
//! - 3.12+: the official code watcher API (`PyCode_AddWatcher`, `PY_CODE_EVENT_DESTROY`).
//! - 3.9–3.11: no watcher API exists, so `PyCode_Type.tp_dealloc` is wrapped: the wrapper tells
//!   the session, then calls the original. Installed once, never removed (it costs one atomic
//!   load per code deallocation when no session runs).

use pyo3::ffi;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Install the hook (GIL held). Idempotent.
pub fn install(_py: Python<'_>) -> PyResult<()> {
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    imp::install()
}

fn notify(code: *mut ffi::PyObject) {
    // SAFETY: deallocation and code watchers run with the GIL held.
    let py = unsafe { Python::assume_attached() };
    crate::session::on_code_destroyed(py, code as usize);
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
    use std::sync::atomic::AtomicUsize;

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
