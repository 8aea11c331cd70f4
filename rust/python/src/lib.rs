//! `spprof._native`: the CPython side of spprof.
//!
//! - [`cpython`]: all interpreter-version knowledge (offset tables, the running interpreter's
//!   layout and its verification, thread-state readers, code-object watching);
//! - [`walker`]: the async-signal-safe frame walker;
//! - [`threads`]: sampled threads and their timers; [`sampler`]: the signal handler;
//! - [`python_threads`]: finding the interpreter's threads and registering them;
//! - [`resolver`]: code pointers → frames, resolved before code objects die;
//! - [`session`]: one profiling run; [`profile_data`]: the finished profile exposed to Python;
//!   [`resolver_thread`]: the background threads that resolve samples while profiling runs;
//! - [`arrow_py`]: profiles as Arrow tables (the Arrow PyCapsule interface);
//! - [`analysis_py`]: top functions, threads, diffs and filters (`spprof.analysis`);
//! - [`flamegraph_py`]: SVG/HTML flame graphs of finished profiles;
//! - [`memprof`]: the memory profiler (allocator-domain hooks, live-heap table).

mod analysis_py;
mod arrow_py;
mod cpython;
mod elf_symbols;
mod flamegraph_py;
mod memprof;
mod merge;
mod native_alloc;
mod native_stack;
mod profile_data;
mod python_threads;
mod resolver;
mod resolver_thread;
mod safe_read;
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
use threads::Clock;

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
        cpython::eval_loop::locate(py, &walker, &native_stack::ModuleList::load());
    }
    let (clock, fallback) = choose_clock(wall).map_err(PyRuntimeError::new_err)?;
    let mut guard = session::lock();
    if guard.is_some() {
        return Err(already_active());
    }
    cpython::code_watch::install(py)?;
    sampler::install(signal).map_err(PyValueError::new_err)?;
    let ring = Ring::new(ring_bytes);
    let store = Store::new(memory_limit_bytes - ring.capacity_bytes());
    let shared = Box::new(sampler::Shared {
        ring,
        walker,
        clock,
        collected: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        handler_ns: AtomicU64::new(0),
        // Built before the first tick (it copies every loaded object's unwind tables).
        native: native.then(native_stack::NativeUnwind::new),
    });
    let resolver = resolver::Resolver::new(py);
    let mut s = Session::new(shared, store, resolver, interval_ns, signal);
    s.fallback = fallback.clone();
    if let Err(e) = python_threads::register_current(py, &mut s, thread_name) {
        threads::unregister_all();
        drop(s); // the shared state goes with unpublish below
        sampler::unpublish();
        return Err(e);
    }
    s.start_drainer();
    *guard = Some(s);
    ACTIVE.store(true, Ordering::Release);
    drop(guard);
    resolver_thread::wait_until_started(py);
    // The threads that already exist (not the resolver thread: the scan skips it).
    python_threads::scan(py)?;
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
    match threads::probe(Clock::Cpu) {
        Ok(()) => Ok((Clock::Cpu, None)),
        Err(cpu_error) => {
            threads::probe(Clock::Wall).map_err(|wall_error| {
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
        Some(s) => python_threads::register_current(py, s, thread_name),
        None => Ok(false),
    }
}

/// Stop sampling the calling thread (until it calls `register_thread()`); its samples so far
/// are kept.
#[pyfunction]
fn unregister_thread() -> bool {
    let tid = threads::gettid();
    if let Some(s) = session::lock().as_mut() {
        s.opted_out.insert(tid);
    }
    threads::unregister_tid(tid)
}

/// Register every thread not sampled yet; returns how many were added.
#[pyfunction]
fn register_all_threads(py: Python<'_>) -> PyResult<usize> {
    python_threads::scan(py)
}

#[pyfunction]
fn stop(py: Python<'_>) -> PyResult<ProfileData> {
    let drainer = match session::lock().as_mut() {
        Some(s) if s.stopping => {
            return Err(PyRuntimeError::new_err(
                "spprof.stop() is already running in another thread; only that call returns the profile",
            ))
        }
        Some(s) => {
            s.stopping = true;
            s.take_drainer()
        }
        None => return Err(not_active()),
    };
    if let Some(drainer) = drainer {
        drainer.stop_and_join(py);
    }
    // After the join: the drainer's thread scan must not register anything after this.
    threads::unregister_all();
    // From here to the end the GIL is held: no code object can be freed before the final drain.
    // Only the stop() that set `stopping` gets here, so the session is still present.
    let Some(s) = session::lock().take() else {
        return Err(not_active());
    };
    ACTIVE.store(false, Ordering::Release);
    sampler::restore_application_handler(s.signal);
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
    sampler::handled_by_another(signal)
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

/// The calling thread's stack as the frame walker sees it (code object ids, innermost first).
#[pyfunction]
fn walk_current_thread(py: Python<'_>) -> PyResult<Vec<usize>> {
    let walker = cpython::layout::walker(py)?;
    Ok(cpython::layout::walk_current(py, &walker))
}

/// Test hook: behave as if running on Python 3.<minor> (None restores the truth).
#[pyfunction]
#[pyo3(signature = (minor))]
fn _pretend_minor_version(minor: Option<u8>) {
    cpython::layout::set_minor_override(minor);
}

/// Test hook: shift one field of the offset table by `delta` bytes at the next starts, as a
/// patch release that moved it would (None restores the table).
#[pyfunction]
#[pyo3(signature = (field, delta = 0))]
fn _shift_offset(field: Option<&str>, delta: isize) -> PyResult<()> {
    cpython::layout::set_shift(field.map(|f| (f, delta))).map_err(PyValueError::new_err)
}

/// Test hook: make CPU-clock timers fail as in a sandbox that refuses them.
#[pyfunction]
fn _refuse_cpu_timers(refuse: bool) {
    threads::REFUSE_CPU_TIMERS.store(refuse, Ordering::Relaxed);
}

/// In a forked child: the parent's session is not ours to continue. Only the forking thread
/// exists and no timer was inherited, so forget everything without waiting for anyone.
#[pyfunction]
fn after_fork_in_child() {
    resolver_thread::forget_after_fork();
    threads::forget_all_after_fork();
    if let Some(s) = session::lock().take() {
        s.abandon_after_fork();
    }
    ACTIVE.store(false, Ordering::Release);
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(analysis_py::analysis_top, m)?)?;
    m.add_function(wrap_pyfunction!(analysis_py::analysis_threads, m)?)?;
    m.add_function(wrap_pyfunction!(analysis_py::analysis_diff, m)?)?;
    m.add_function(wrap_pyfunction!(analysis_py::select_window, m)?)?;
    m.add_function(wrap_pyfunction!(analysis_py::select_frames, m)?)?;
    m.add_function(wrap_pyfunction!(analysis_py::frames_of, m)?)?;
    m.add_function(wrap_pyfunction!(analysis_py::below_launcher, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(is_active, m)?)?;
    m.add_function(wrap_pyfunction!(signal_handled_by_another, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(register_thread, m)?)?;
    m.add_function(wrap_pyfunction!(register_all_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_refuse_cpu_timers, m)?)?;
    m.add_function(wrap_pyfunction!(unregister_thread, m)?)?;
    m.add_function(wrap_pyfunction!(walk_current_thread, m)?)?;
    m.add_function(wrap_pyfunction!(_pretend_minor_version, m)?)?;
    m.add_function(wrap_pyfunction!(_shift_offset, m)?)?;
    m.add(
        "_OFFSET_FIELDS",
        cpython::offsets::Offsets::FIELD_NAMES.to_vec(),
    )?;
    m.add_function(wrap_pyfunction!(after_fork_in_child, m)?)?;
    m.add_function(wrap_pyfunction!(resolver_thread::before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(flamegraph_py::flamegraph_svg, m)?)?;
    m.add_function(wrap_pyfunction!(flamegraph_py::flamegraph_html, m)?)?;
    m.add_function(wrap_pyfunction!(flamegraph_py::diff_flamegraph_svg, m)?)?;
    m.add_class::<ProfileData>()?;
    m.add_function(wrap_pyfunction!(arrow_py::to_arrow, m)?)?;
    m.add_function(wrap_pyfunction!(arrow_py::_column_address, m)?)?;
    m.add_function(wrap_pyfunction!(safe_read::_safe_load, m)?)?;
    m.add_function(wrap_pyfunction!(native_stack::capture_native_stack, m)?)?;
    m.add_function(wrap_pyfunction!(arrow_py::write_run, m)?)?;
    m.add_function(wrap_pyfunction!(arrow_py::merge_runs, m)?)?;
    m.add_class::<arrow_py::ArrowTable>()?;
    // Creates the guard's type now: lazily, pyo3 could release the GIL under the session lock.
    m.add_class::<python_threads::ThreadExitGuard>()?;
    memprof::register(m)?;
    m.add("MAX_DEPTH", sampler::MAX_DEPTH)?;
    Ok(())
}
