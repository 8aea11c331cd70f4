//! Finding the interpreter's threads and registering them with the sampler (GIL held).
//!
//! Every thread with a `PyThreadState` is sampled: the caller of `start()`, threads that exist
//! then (found by walking the interpreter's thread list), and threads that appear later (the
//! `threading` start hook registers them as they start; the resolver thread's periodic scan
//! finds the rest, e.g. threads created in C through `PyGILState_Ensure`).

use super::session::{self, Session};
use super::timers::{self, RegisterError};
use crate::cpython::thread_state;
use crate::resolve::thread as resolver_thread;
use crate::signal::slots::gettid;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::HashMap;

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
        timers::unregister_token(self.tid, self.token);
    }
}

const GUARD_KEY: &str = "spprof._native.thread_exit_guard";

/// Name of a thread found by the scan before `threading` knew it (it gets its real name when
/// the start hook registers it a moment later).
fn placeholder_name(tid: i32) -> String {
    format!("Thread-{tid}")
}

/// Register the thread `tid` whose thread state is `ts`. Ok(false) if it already was or has
/// exited meanwhile.
fn register(py: Python<'_>, s: &mut Session, ts: usize, tid: i32, name: &str) -> PyResult<bool> {
    if s.stopping {
        return Ok(false);
    }
    if let Some(index) = timers::store_thread_of(tid) {
        if name != placeholder_name(tid) {
            s.store.rename_thread(index, name);
        }
        return Ok(false);
    }
    let store_thread = s.store.add_thread(tid as u64, name);
    match timers::register(tid, ts, store_thread, &s.timer_spec()) {
        Ok(Some(token)) => {
            let guard = Bound::new(py, ThreadExitGuard { tid, token })?;
            // SAFETY: ts is a live thread state of this interpreter (caller's contract).
            unsafe { thread_state::dict(py, &s.shared().walker.off, ts) }?
                .set_item(GUARD_KEY, guard)?;
            Ok(true)
        }
        Ok(None) | Err(RegisterError::Gone) => Ok(false),
        Err(e) => Err(PyRuntimeError::new_err(e.message())),
    }
}

pub fn register_current(py: Python<'_>, s: &mut Session, name: &str) -> PyResult<bool> {
    let ts = thread_state::current(py);
    let tid = gettid();
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
        // SAFETY: ts is a live thread state (GIL held, it is in the interpreter's list).
        let (ident, tid) = unsafe {
            let ident = thread_state::ident(&off, addr);
            let tid = thread_state::native_id(&off, addr, ident, |i| known.get(&i).map(|k| k.1));
            (ident, tid)
        };
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
    match session::lock().as_mut() {
        Some(s) => register_all(py, s, &known),
        None => Ok(0),
    }
}
