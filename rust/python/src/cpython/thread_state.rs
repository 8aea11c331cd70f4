//! Reading `PyThreadState`s: thread ids, and the per-thread dict.

use super::offsets::Offsets;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::OnceLock;

/// The calling thread's `PyThreadState` (GIL held).
pub fn current(_py: Python<'_>) -> usize {
    // SAFETY: the GIL is held, so the current thread has a thread state.
    unsafe { ffi::PyThreadState_Get() as usize }
}

/// The `pthread_t` of thread state `ts` (what `threading.get_ident()` returns on that thread).
///
/// # Safety
/// `ts` must be a live thread state of this interpreter.
pub unsafe fn ident(off: &Offsets, ts: usize) -> u64 {
    // SAFETY: thread_id is a pthread_t member of the live thread state (caller's contract).
    unsafe { *((ts + off.tstate_thread_id) as *const u64) }
}

/// The kernel thread id recorded in thread state `ts` (3.11+), without a system call and
/// without allocating, so the allocator hooks may use it; `None` where the field does not exist.
///
/// # Safety
/// `ts` must be a live thread state of this interpreter.
#[inline]
pub unsafe fn recorded_native_id(off: &Offsets, ts: usize) -> Option<u32> {
    if off.tstate_native_thread_id == usize::MAX {
        return None;
    }
    // SAFETY: native_thread_id is an unsigned long member of the live thread state.
    Some(unsafe { *((ts + off.tstate_native_thread_id) as *const u64) } as u32)
}

/// The kernel thread id of thread state `ts` whose `pthread_t` is `ident`: its own field from
/// 3.11, else `known(ident)` (what `threading` knows), else glibc's record of the thread.
///
/// # Safety
/// `ts` must be a live thread state of this interpreter, and `ident` its thread's `pthread_t`.
pub unsafe fn native_id(
    off: &Offsets,
    ts: usize,
    ident: u64,
    known: impl FnOnce(u64) -> Option<i32>,
) -> Option<i32> {
    // SAFETY: forwarded caller contract.
    if let Some(tid) = unsafe { recorded_native_id(off, ts) } {
        return Some(tid as i32);
    }
    if let Some(tid) = known(ident) {
        return Some(tid);
    }
    let field = glibc_tid_offset()?;
    // SAFETY: ident is the pthread_t of a thread that still has a thread state, i.e. a running
    // thread, so its glibc thread descriptor is mapped; field was verified on two live threads.
    Some(unsafe { *((ident as usize + field) as *const i32) })
}

/// Where glibc keeps the kernel tid inside its thread descriptor (`struct pthread`, which a
/// `pthread_t` points to). Found by looking for our tid in our own descriptor, confirmed on a
/// second thread. Only needed on 3.9/3.10, whose thread states lack `native_thread_id`.
fn glibc_tid_offset() -> Option<usize> {
    static OFFSET: OnceLock<Option<usize>> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        fn candidates() -> Vec<usize> {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() } as usize;
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            (0..2048)
                .step_by(4)
                // SAFETY: the calling thread's own descriptor spans well over 2 KiB.
                .filter(|o| unsafe { *((me + o) as *const i32) } == tid)
                .collect()
        }
        let mine = candidates();
        let other = std::thread::spawn(candidates).join().ok()?;
        mine.into_iter().find(|o| other.contains(o))
    })
}

/// The dict of thread state `ts`, created if the thread never asked for one (as
/// `PyThreadState_GetDict` would do on that thread).
///
/// # Safety
/// `ts` must be a live thread state of this interpreter.
pub unsafe fn dict<'py>(py: Python<'py>, off: &Offsets, ts: usize) -> PyResult<Bound<'py, PyDict>> {
    let slot = (ts + off.tstate_dict) as *mut *mut ffi::PyObject;
    // SAFETY: ts is a live thread state of this interpreter (caller's contract, GIL held);
    // `dict` is its member and the owning thread only touches it with the GIL.
    unsafe {
        if (*slot).is_null() {
            *slot = PyDict::new(py).into_ptr();
        }
        Ok(Bound::from_borrowed_ptr(py, *slot).cast_into::<PyDict>()?)
    }
}
