//! The CPU profiler's Python functions: start, stop, threads, counters, fork.

use super::discovery::{self, ThreadExitGuard};
use super::resolving;
use super::session::{self, Session, ACTIVE};
use super::timers;
use crate::cpython;
use crate::export::profile_data::ProfileData;
use crate::resolve::eh_frame;
use crate::resolve::resolver::Resolver;
use crate::resolve::symbols::symbolize_resolved;
use crate::resolve::thread as resolver_thread;
use crate::signal::handler::{self, SamplerState};
use crate::signal::slots::{clock_ns, gettid, Clock};
use crate::signal::unwind::{self, ModuleList, NativeUnwind};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use spprof_engine::capture::raw::MAX_DEPTH;
use spprof_engine::capture::ring::Ring;
use spprof_engine::store::Store;
use std::sync::atomic::{AtomicU64, Ordering};

const MAX_RING_BYTES: usize = 8 << 20;
const MIN_RING_BYTES: usize = 64 << 10;

/// Start sampling every thread of the interpreter. Arguments are validated by the Python layer;
/// this checks them again because nothing a caller passes may crash the process.
/// Returns `(mode, fallback_reason)`: mode is "cpu" or "wall".
#[pyfunction]
#[pyo3(signature = (interval_ns, memory_limit_bytes, thread_name, wall = false, signal = libc::SIGPROF, native = false))]
fn start(
    py: Python<'_>,
    interval_ns: u64,
    memory_limit_bytes: usize,
    thread_name: &str,
    wall: bool,
    signal: i32,
    native: bool,
) -> PyResult<(&'static str, Option<String>)> {
    if interval_ns < 1_000_000 {
        return Err(PyValueError::new_err("interval must be at least 1 ms"));
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
    // Before taking the session lock: the verification runs Python code.
    let walker = cpython::layout::walker(py)?;
    if native {
        // Before any sample is resolved: a stripped interpreter's eval loop is found by address.
        cpython::eval_loop::locate(py, &walker, &ModuleList::load());
    }
    let (clock, fallback) = choose_clock(wall).map_err(PyRuntimeError::new_err)?;
    let mut guard = session::lock();
    if guard.is_some() {
        return Err(already_active());
    }
    cpython::code_watch::install(py, session::on_code_destroyed)?;
    handler::install(signal).map_err(PyValueError::new_err)?;
    let ring = Ring::new(ring_bytes);
    let store = Store::new(memory_limit_bytes - ring.capacity_bytes());
    let shared = Box::new(SamplerState {
        ring,
        walker,
        clock,
        collected: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        handler_ns: AtomicU64::new(0),
        // Built before the first tick (it copies every loaded object's unwind tables).
        native: native.then(NativeUnwind::new),
    });
    let resolver = Resolver::new(py);
    let mut s = Session::new(shared, store, resolver, interval_ns, signal);
    s.fallback = fallback.clone();
    if let Err(e) = discovery::register_current(py, &mut s, thread_name) {
        timers::unregister_all();
        drop(s); // the shared state goes with unpublish below
        handler::unpublish();
        return Err(e);
    }
    resolving::start(&mut s);
    *guard = Some(s);
    ACTIVE.store(true, Ordering::Release);
    drop(guard);
    resolver_thread::wait_until_started(py);
    // The threads that already exist (not the resolver thread: the scan skips it).
    discovery::scan(py)?;
    let mode = match clock {
        Clock::Cpu => "cpu",
        Clock::Wall => "wall",
    };
    Ok((mode, fallback))
}

/// CPU time unless wall time is asked for, or CPU-clock timers are refused here.
fn choose_clock(wall: bool) -> Result<(Clock, Option<String>), String> {
    if wall {
        return Ok((Clock::Wall, None));
    }
    match timers::probe(Clock::Cpu) {
        Ok(()) => Ok((Clock::Cpu, None)),
        Err(cpu_error) => {
            timers::probe(Clock::Wall).map_err(|wall_error| {
                format!(
                    "spprof cannot sample here: {cpu_error}, and {wall_error}. \
                     Timers (timer_create) are refused by this environment"
                )
            })?;
            Ok((Clock::Wall, Some(cpu_error)))
        }
    }
}

fn not_active() -> PyErr {
    PyRuntimeError::new_err(
        "Profiler not running: profiling is not active; call spprof.start() first",
    )
}

fn already_active() -> PyErr {
    PyRuntimeError::new_err(
        "Profiler already running: profiling is already active; call spprof.stop() first (spprof.is_active() tells)",
    )
}

/// Sample the calling thread (a no-op returning false when it already is or nothing runs).
#[pyfunction]
fn register_thread(py: Python<'_>, thread_name: &str) -> PyResult<bool> {
    match session::lock().as_mut() {
        Some(s) => discovery::register_current(py, s, thread_name),
        None => Ok(false),
    }
}

/// Stop sampling the calling thread (until it calls `register_thread()`); its samples so far
/// are kept.
#[pyfunction]
fn unregister_thread() -> bool {
    let tid = gettid();
    if let Some(s) = session::lock().as_mut() {
        s.opted_out.insert(tid);
    }
    timers::unregister_tid(tid)
}

/// Register every thread not sampled yet; returns how many were added.
#[pyfunction]
fn register_all_threads(py: Python<'_>) -> PyResult<usize> {
    discovery::scan(py)
}

#[pyfunction]
fn stop(py: Python<'_>) -> PyResult<ProfileData> {
    let resolver_thread = match session::lock().as_mut() {
        Some(s) if s.stopping => {
            return Err(PyRuntimeError::new_err(
                "spprof.stop() is already running in another thread; only that call returns the profile",
            ))
        }
        Some(s) => {
            s.stopping = true;
            s.take_resolver_thread()
        }
        None => return Err(not_active()),
    };
    if let Some(thread) = resolver_thread {
        thread.stop_and_join(py);
    }
    // After the join: the resolver thread's scan must not register anything after this.
    timers::unregister_all();
    // From here to the end the GIL is held: no code object can be freed before the final drain.
    // Only the stop() that set `stopping` gets here, so the session is still present.
    let Some(s) = session::lock().take() else {
        return Err(not_active());
    };
    ACTIVE.store(false, Ordering::Release);
    handler::restore_application_handler(s.signal);
    let (interval_ns, clock) = (s.interval_ns, s.clock);
    let finished = s.finish(py);
    Ok(ProfileData::new(
        finished.store,
        interval_ns,
        finished.handler_ns,
        clock == Clock::Wall,
    ))
}

/// Whether `signal` has a handler that is neither the default, "ignore", nor spprof's.
#[pyfunction]
fn signal_handled_by_another(signal: i32) -> bool {
    handler::handled_by_another(signal)
}

#[pyfunction]
fn is_active() -> bool {
    session::lock().is_some()
}

/// Samples taken so far by the running session (0 when none runs); cheap, lock-free.
#[pyfunction]
fn samples_taken() -> u64 {
    crate::signal::handler::samples_taken()
}

/// Live counters of the running session, or None.
#[pyfunction]
fn stats(py: Python<'_>) -> PyResult<Option<Py<PyDict>>> {
    let guard = session::lock();
    let Some(s) = guard.as_ref() else {
        return Ok(None);
    };
    let sh = s.shared();
    let now = clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(s.start_ns);
    let d = PyDict::new(py);
    d.set_item("collected_samples", sh.collected.load(Ordering::Relaxed))?;
    d.set_item(
        "dropped_samples",
        sh.dropped.load(Ordering::Relaxed) + s.store.dropped(),
    )?;
    d.set_item("duration_ns", now.saturating_sub(s.start_ns))?;
    d.set_item("handler_ns", sh.handler_ns.load(Ordering::Relaxed))?;
    d.set_item("threads_sampled", timers::registered_count())?;
    d.set_item("threads_seen", s.store.threads().len())?;
    d.set_item(
        "memory_bytes",
        s.store.bytes_used() + sh.ring.capacity_bytes(),
    )?;
    d.set_item(
        "mode",
        if s.clock == Clock::Wall {
            "wall"
        } else {
            "cpu"
        },
    )?;
    d.set_item("fallback_reason", s.fallback.clone())?;
    d.set_item("signal", s.signal)?;
    d.set_item("thread_error", s.thread_error.clone())?;
    Ok(Some(d.unbind()))
}

/// In a forked child: the parent's session is not ours to continue. Only the forking thread
/// exists and no timer was inherited, so forget everything without waiting for anyone.
#[pyfunction]
fn after_fork_in_child() {
    resolver_thread::forget_after_fork();
    timers::forget_all_after_fork();
    if let Some(s) = session::lock().take() {
        s.abandon_after_fork();
    }
    ACTIVE.store(false, Ordering::Release);
}

/// `(ip, symbol, library, offset from the function's start, resolved)`, as `spprof.NativeFrame`.
type NativeFrameRow = (u64, String, String, u64, bool);

/// `spprof.capture_native_stack()`: the calling thread's native frames, innermost first.
#[pyfunction]
fn capture_native_stack(py: Python<'_>) -> PyResult<Vec<NativeFrameRow>> {
    let list = ModuleList::load();
    if let Ok(walker) = cpython::layout::walker(py) {
        cpython::eval_loop::locate(py, &walker, &list);
    }
    Ok(unwind::capture(&list)
        .into_iter()
        .map(|(pc, _)| {
            let (name, library, resolved) = symbolize_resolved(pc);
            let offset = eh_frame::function_range(pc).map_or(0, |r| pc - r.start);
            (pc, name, library, offset, resolved)
        })
        .collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(is_active, m)?)?;
    m.add_function(wrap_pyfunction!(signal_handled_by_another, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(samples_taken, m)?)?;
    m.add_function(wrap_pyfunction!(register_thread, m)?)?;
    m.add_function(wrap_pyfunction!(register_all_threads, m)?)?;
    m.add_function(wrap_pyfunction!(unregister_thread, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(resolver_thread::before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(capture_native_stack, m)?)?;
    m.add_function(wrap_pyfunction!(super::sigterm::sigterm_to_pipe, m)?)?;
    m.add_function(wrap_pyfunction!(super::sigterm::sigterm_default, m)?)?;
    m.add_function(wrap_pyfunction!(super::sigterm::die_of_sigterm, m)?)?;
    // Creates the guard's type now: lazily, pyo3 could release the GIL under the session lock.
    m.add_class::<ThreadExitGuard>()?;
    m.add("MAX_DEPTH", MAX_DEPTH)?;
    Ok(())
}
