//! Finding the interpreter's threads and registering them with the sampler (GIL held).
//!
//! Every thread with a `PyThreadState` is sampled: the caller of `start()`, threads that exist
//! then (found by walking the interpreter's thread list), and threads that appear later (the
//! `threading` start hook registers them as they start; the resolver thread's periodic scan
//! finds the rest, e.g. threads created in C through `PyGILState_Ensure`).

use crate::offsets::Offsets;
use crate::resolver_thread;
use crate::session::Session;
use crate::threads::{self, RegisterError};
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;
use std::sync::OnceLock;

/// `threading`'s view of its threads: ident (pthread_t) → (name, native id).
type Known = HashMap<u64, (String, i32)>;

fn known_threads(py: Python<'_>) -> PyResult<Known> {
    let mut known = Known::new();
    // Plain attribute reads on the Thread objects: no Python code runs.
    let active = py
        .import("threading")?
        .getattr("_active")?
        .cast_into::<PyDict>()?;
    for (ident, thread) in active.iter() {
        let name = thread.getattr("_name").and_then(|n| n.extract::<String>());
        let native = thread
            .getattr("_native_id")
            .and_then(|n| n.extract::<Option<i32>>());
        if let (Ok(ident), Ok(name), Ok(Some(native))) = (ident.extract::<u64>(), name, native) {
            known.insert(ident, (name, native));
        }
    }
    Ok(known)
}

/// The dict of thread state `ts`, created if the thread never asked for one (as
/// `PyThreadState_GetDict` would do on that thread).
fn tstate_dict<'py>(py: Python<'py>, off: &Offsets, ts: usize) -> PyResult<Bound<'py, PyDict>> {
    let slot = (ts + off.tstate_dict) as *mut *mut ffi::PyObject;
    // SAFETY: ts is a live thread state of this interpreter (GIL held); `dict` is its member and
    // the owning thread only touches it with the GIL.
    unsafe {
        if (*slot).is_null() {
            *slot = PyDict::new(py).into_ptr();
        }
        Ok(Bound::from_borrowed_ptr(py, *slot).cast_into::<PyDict>()?)
    }
}

/// Unregisters its thread when dropped. Kept in the thread state's dict, which CPython clears
/// on the exiting thread itself before freeing the thread state: the timer is deleted before
/// the memory the signal handler reads is gone.
#[pyclass(name = "_ThreadExitGuard")]
pub struct ThreadExitGuard {
    tid: i32,
    token: usize,
}

impl Drop for ThreadExitGuard {
    fn drop(&mut self) {
        threads::unregister_token(self.tid, self.token);
    }
}

const GUARD_KEY: &str = "spprof._native.thread_exit_guard";

/// Name of a thread found by the scan before `threading` knew it (it gets its real name when
/// the start hook registers it a moment later).
fn placeholder_name(tid: i32) -> String {
    format!("Thread {tid}")
}

/// Register the thread `tid` whose thread state is `ts`. Ok(false) if it already was or has
/// exited meanwhile.
fn register(py: Python<'_>, s: &mut Session, ts: usize, tid: i32, name: &str) -> PyResult<bool> {
    if let Some(index) = threads::store_thread_of(tid) {
        if name != placeholder_name(tid) {
            s.store.rename_thread(index, name);
        }
        return Ok(false);
    }
    let store_thread = s.store.add_thread(tid as u64, name);
    match threads::register(tid, ts, store_thread, &s.timer_spec()) {
        Ok(Some(token)) => {
            let guard = Bound::new(py, ThreadExitGuard { tid, token })?;
            tstate_dict(py, &s.shared().walker.off, ts)?.set_item(GUARD_KEY, guard)?;
            Ok(true)
        }
        Ok(None) | Err(RegisterError::Gone) => Ok(false),
        Err(e) => Err(PyRuntimeError::new_err(e.message())),
    }
}

pub fn register_current(py: Python<'_>, s: &mut Session, name: &str) -> PyResult<bool> {
    let ts = crate::interp::current_tstate(py);
    let tid = threads::gettid();
    s.opted_out.remove(&tid);
    register(py, s, ts, tid, name)
}

/// Register every thread of the interpreter not yet sampled (except the resolver threads).
/// Returns how many were added.
pub fn register_all(py: Python<'_>, s: &mut Session, known: &Known) -> PyResult<usize> {
    let off = s.shared().walker.off;
    let mut added = 0;
    // SAFETY: GIL held; the interpreter's thread list is only changed by threads holding the GIL
    // or, for new entries, by a head insertion that leaves the links we follow intact.
    let mut ts = unsafe { ffi::PyInterpreterState_ThreadHead(ffi::PyInterpreterState_Get()) };
    while !ts.is_null() {
        let addr = ts as usize;
        // SAFETY: ts is a live thread state; thread_id is a pthread_t member.
        let ident = unsafe { *((addr + off.tstate_thread_id) as *const u64) };
        let tid = native_id(&off, addr, ident, known);
        if let Some(tid) =
            tid.filter(|&t| t > 0 && !resolver_thread::is_resolver(t) && !s.opted_out.contains(&t))
        {
            let name = match known.get(&ident) {
                Some((name, _)) => name.clone(),
                None => placeholder_name(tid),
            };
            if register(py, s, addr, tid, &name)? {
                added += 1;
            }
        }
        // SAFETY: as above.
        ts = unsafe { ffi::PyThreadState_Next(ts) };
    }
    Ok(added)
}

/// Register the threads not sampled yet, if a session runs.
pub fn scan(py: Python<'_>) -> PyResult<usize> {
    let known = known_threads(py)?; // before the session lock: it reads Python objects
    match crate::session::lock().as_mut() {
        Some(s) => register_all(py, s, &known),
        None => Ok(0),
    }
}

/// The kernel thread id of a thread state: its own field from 3.11, else what `threading`
/// knows, else glibc's record of the thread.
fn native_id(off: &Offsets, ts: usize, ident: u64, known: &Known) -> Option<i32> {
    if off.tstate_native_thread_id != usize::MAX {
        // SAFETY: ts is a live thread state; native_thread_id is an unsigned long member.
        return Some(unsafe { *((ts + off.tstate_native_thread_id) as *const u64) } as i32);
    }
    if let Some((_, tid)) = known.get(&ident) {
        return Some(*tid);
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
            let tid = threads::gettid();
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
