//! Which interpreter we run in, and whether the frame walker understands it.

use crate::offsets::{self, Offsets};
use crate::walker::Walker;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicI32, Ordering};

/// Test hook: pretend to be 3.<minor> (−1 = the real version).
static MINOR_OVERRIDE: AtomicI32 = AtomicI32::new(-1);

pub fn set_minor_override(minor: Option<u8>) {
    MINOR_OVERRIDE.store(minor.map_or(-1, i32::from), Ordering::Relaxed);
}

pub fn offsets_for(major: u8, minor: u8) -> Option<Offsets> {
    offsets::ALL
        .into_iter()
        .find(|o| o.major == major && o.minor == minor)
}

/// The walker for this interpreter, or the reason there is none.
pub fn walker(py: Python<'_>) -> PyResult<Walker> {
    // Every walk reads through safe_read, whose fault recovery must be in place first (and in
    // front of any fault handler installed since the previous start).
    crate::safe_read::install().map_err(PyRuntimeError::new_err)?;
    let info = py.version_info();
    let minor = match MINOR_OVERRIDE.load(Ordering::Relaxed) {
        -1 => info.minor,
        m => m as u8,
    };
    let version = format!("{}.{}", info.major, minor);
    let free_threaded = py
        .import("sysconfig")?
        .call_method1("get_config_var", ("Py_GIL_DISABLED",))?
        .extract::<Option<i64>>()?
        .unwrap_or(0)
        != 0;
    if free_threaded {
        return Err(PyRuntimeError::new_err(format!(
            "spprof does not support the free-threaded build of Python {version}; \
             use the default (GIL) build"
        )));
    }
    let off = offsets_for(info.major, minor).ok_or_else(|| {
        PyRuntimeError::new_err(format!(
            "spprof cannot profile Python {version}: it knows the interpreter internals of \
             CPython 3.9 to 3.13 only; run under one of those versions"
        ))
    })?;
    if minor == info.minor {
        crate::debug_offsets::check(&off).map_err(PyRuntimeError::new_err)?;
    }
    Ok(Walker {
        off,
        // Taking the address of the static reads nothing.
        code_type: std::ptr::addr_of_mut!(ffi::PyCode_Type) as usize,
    })
}

/// The calling thread's `PyThreadState` (GIL held).
pub fn current_tstate(_py: Python<'_>) -> usize {
    // SAFETY: the GIL is held, so the current thread has a thread state.
    unsafe { ffi::PyThreadState_Get() as usize }
}

/// Code-object addresses of the calling thread's stack as the walker sees it, innermost first.
pub fn walk_current(py: Python<'_>, walker: &Walker) -> Vec<usize> {
    let mut codes = Vec::new();
    // SAFETY: the calling thread's own thread state; it runs this code, so its chain is stable.
    unsafe {
        walker.walk(current_tstate(py), false, |code, _, _| {
            codes.push(code);
            true
        })
    };
    codes
}

/// Start-time self-test: the walker must see exactly the frames `sys._getframe()` sees.
pub fn self_test(py: Python<'_>, walker: &Walker) -> PyResult<()> {
    let walked = walk_current(py, walker);
    let mut expected = Vec::new();
    let mut frame = py.import("sys")?.call_method1("_getframe", (0,))?;
    while !frame.is_none() {
        expected.push(frame.getattr("f_code")?.as_ptr() as usize);
        frame = frame.getattr("f_back")?;
    }
    if walked != expected {
        let version = Python::version_str();
        return Err(PyRuntimeError::new_err(format!(
            "spprof's frame walker does not match this interpreter (Python {version}): it saw {} \
             frames where sys._getframe() shows {}. Profiling would produce wrong stacks, so it \
             was not started; please report this with your Python build details",
            walked.len(),
            expected.len()
        )));
    }
    Ok(())
}
