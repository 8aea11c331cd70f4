//! `spprof._native`: the CPython side of spprof.
//!
//! - [`offsets`]: per-version layouts of interpreter structs (generated);
//! - [`interp`]: version checks and the start-time self-test;
//! - [`walker`]: the async-signal-safe frame walker;
//! - [`threads`]: sampled threads and their timers; [`sampler`]: the signal handler;
//! - [`resolver`], [`code_hook`]: code pointers → frames, resolved before code objects die;
//! - [`session`]: one profiling run; [`profile_data`]: the finished profile exposed to Python.

mod code_hook;
mod debug_offsets;
mod interp;
mod offsets;
mod profile_data;
mod resolver;
mod sampler;
mod session;
mod threads;
mod walker;

use profile_data::ProfileData;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use session::{Session, ACTIVE};
use spprof_engine::ring::Ring;
use spprof_engine::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};

const MAX_RING_BYTES: usize = 8 << 20;
const MIN_RING_BYTES: usize = 64 << 10;

/// Start sampling the calling thread. Arguments are validated by the Python layer; this checks
/// them again because nothing a caller passes may crash the process.
#[pyfunction]
#[pyo3(signature = (interval_ns, memory_limit_bytes, thread_name, signal = libc::SIGPROF))]
fn start(
    py: Python<'_>,
    interval_ns: u64,
    memory_limit_bytes: usize,
    thread_name: &str,
    signal: i32,
) -> PyResult<()> {
    if interval_ns < 1_000_000 {
        return Err(PyValueError::new_err("interval must be at least 1 ms"));
    }
    if !(1..=64).contains(&signal) {
        return Err(PyValueError::new_err(format!(
            "{signal} is not a signal number"
        )));
    }
    let ring_bytes = (memory_limit_bytes / 4).clamp(MIN_RING_BYTES, MAX_RING_BYTES);
    if memory_limit_bytes < 2 * ring_bytes {
        return Err(PyValueError::new_err(format!(
            "memory limit too small: spprof needs at least {} KiB",
            2 * MIN_RING_BYTES / 1024
        )));
    }
    if is_active() {
        return Err(already_active());
    }
    // Before taking the session lock: the self-test runs Python code.
    let walker = interp::walker(py)?;
    interp::self_test(py, &walker)?;
    let mut guard = session::lock();
    if guard.is_some() {
        return Err(already_active());
    }
    code_hook::install(py)?;
    sampler::install(signal).map_err(PyRuntimeError::new_err)?;
    let ring = Ring::new(ring_bytes);
    let store = Store::new(memory_limit_bytes - ring.capacity_bytes());
    let shared = Box::new(sampler::Shared {
        ring,
        walker,
        collected: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        handler_ns: AtomicU64::new(0),
    });
    let has_qualname = py.version_info() >= (3, 11);
    let mut s = Session::new(
        shared,
        store,
        resolver::Resolver::new(has_qualname),
        interval_ns,
        signal,
    );
    if let Err(e) = register(py, &mut s, thread_name) {
        drop(guard);
        sampler::unpublish();
        return Err(e);
    }
    s.start_drainer();
    *guard = Some(s);
    ACTIVE.store(true, Ordering::Release);
    Ok(())
}

fn already_active() -> PyErr {
    PyRuntimeError::new_err(
        "profiling is already active; call spprof.stop() first (spprof.is_active() tells)",
    )
}

/// Register the calling thread in session `s`; false if it already was.
fn register(py: Python<'_>, s: &mut Session, name: &str) -> PyResult<bool> {
    let tid = threads::gettid();
    if threads::is_registered(tid) {
        return Ok(false);
    }
    let store_thread = s.store.add_thread(tid as u64, name);
    let spec = threads::TimerSpec {
        signal: s.signal,
        interval_ns: s.interval_ns,
    };
    let token = threads::register_current(interp::current_tstate(py), store_thread, &spec)
        .map_err(|e| {
            PyRuntimeError::new_err(format!(
                "{e}. spprof needs per-thread CPU-time timers (timer_create); this environment refuses them"
            ))
        })?;
    match token {
        Some(token) => {
            install_exit_guard(py, ThreadExitGuard { tid, token })?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Unregisters its thread when dropped. Kept in the thread state's dict, which CPython clears
/// on the exiting thread itself before freeing the thread state: the timer is gone before the
/// memory the handler reads.
#[pyclass]
struct ThreadExitGuard {
    tid: i32,
    token: usize,
}

impl Drop for ThreadExitGuard {
    fn drop(&mut self) {
        threads::unregister_token(self.tid, self.token);
    }
}

const GUARD_KEY: &str = "spprof._native.thread_exit_guard";

fn install_exit_guard(py: Python<'_>, guard: ThreadExitGuard) -> PyResult<()> {
    // SAFETY: GIL held; PyThreadState_GetDict returns a borrowed dict of the current thread.
    let dict = unsafe { pyo3::ffi::PyThreadState_GetDict() };
    if dict.is_null() {
        return Err(PyRuntimeError::new_err(
            "this thread has no thread-state dict",
        ));
    }
    // SAFETY: non-null borrowed reference to a dict, valid while the GIL is held.
    let dict = unsafe { Bound::from_borrowed_ptr(py, dict) }.cast_into::<PyDict>()?;
    dict.set_item(GUARD_KEY, guard)
}

fn remove_exit_guard(py: Python<'_>) {
    // SAFETY: as in install_exit_guard.
    let dict = unsafe { pyo3::ffi::PyThreadState_GetDict() };
    if !dict.is_null() {
        // SAFETY: as in install_exit_guard.
        if let Ok(d) = unsafe { Bound::from_borrowed_ptr(py, dict) }.cast_into::<PyDict>() {
            let _ = d.del_item(GUARD_KEY);
        }
    }
}

#[pyfunction]
fn register_thread(py: Python<'_>, thread_name: &str) -> PyResult<bool> {
    match session::lock().as_mut() {
        Some(s) => register(py, s, thread_name),
        None => Ok(false),
    }
}

#[pyfunction]
fn unregister_thread(py: Python<'_>) -> bool {
    let removed = threads::unregister_current();
    if removed {
        remove_exit_guard(py);
    }
    removed
}

#[pyfunction]
fn stop(py: Python<'_>) -> PyResult<ProfileData> {
    let join = match session::lock().as_mut() {
        Some(s) => s.take_drainer(),
        None => {
            return Err(PyRuntimeError::new_err(
                "profiling is not active; call spprof.start() first",
            ))
        }
    };
    threads::unregister_all();
    if let Some(join) = join {
        // The drainer may be waiting for the GIL: release it while joining.
        py.detach(join);
    }
    // From here to the end the GIL is held: no code object can be freed before the final drain.
    let s = session::lock().take().expect("session present");
    ACTIVE.store(false, Ordering::Release);
    sampler::restore_application_handler();
    let interval_ns = s.interval_ns;
    let finished = s.finish(py);
    Ok(ProfileData::new(
        finished.store,
        interval_ns,
        finished.handler_ns,
    ))
}

#[pyfunction]
fn is_active() -> bool {
    session::lock().is_some()
}

/// Live counters of the running session, or None.
#[pyfunction]
fn stats(py: Python<'_>) -> PyResult<Option<Py<PyDict>>> {
    let guard = session::lock();
    let Some(s) = guard.as_ref() else {
        return Ok(None);
    };
    let sh = s.shared();
    let now = threads::clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(s.start_ns);
    let d = PyDict::new(py);
    d.set_item("collected_samples", sh.collected.load(Ordering::Relaxed))?;
    d.set_item(
        "dropped_samples",
        sh.dropped.load(Ordering::Relaxed) + s.store.dropped(),
    )?;
    d.set_item("duration_ns", now.saturating_sub(s.start_ns))?;
    d.set_item("handler_ns", sh.handler_ns.load(Ordering::Relaxed))?;
    d.set_item("threads_sampled", threads::registered_count())?;
    d.set_item(
        "memory_bytes",
        s.store.bytes_used() + sh.ring.capacity_bytes(),
    )?;
    Ok(Some(d.unbind()))
}

/// The calling thread's stack as the frame walker sees it (code object ids, innermost first).
#[pyfunction]
fn walk_current_thread(py: Python<'_>) -> PyResult<Vec<usize>> {
    let walker = interp::walker(py)?;
    Ok(interp::walk_current(py, &walker))
}

/// Test hook: behave as if running on Python 3.<minor> (None restores the truth).
#[pyfunction]
#[pyo3(signature = (minor))]
fn _pretend_minor_version(minor: Option<u8>) {
    interp::set_minor_override(minor);
}

/// In a forked child: the parent's session is not ours to continue. Only the forking thread
/// exists and no timer was inherited, so forget everything without waiting for anyone.
#[pyfunction]
fn after_fork_in_child() {
    threads::forget_all_after_fork();
    if let Some(s) = session::lock().take() {
        s.abandon_after_fork();
    }
    ACTIVE.store(false, Ordering::Release);
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(is_active, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(register_thread, m)?)?;
    m.add_function(wrap_pyfunction!(unregister_thread, m)?)?;
    m.add_function(wrap_pyfunction!(walk_current_thread, m)?)?;
    m.add_function(wrap_pyfunction!(_pretend_minor_version, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    m.add_class::<ProfileData>()?;
    m.add("MAX_DEPTH", sampler::MAX_DEPTH)?;
    Ok(())
}
