//! `spprof._native._testing`: hooks for the test suite only, kept out of the module users see.

use crate::cpu::timers;
use crate::cpython;
use crate::export::profile_data::ProfileData;
use crate::signal::safe_read;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use std::sync::atomic::Ordering;

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
    timers::REFUSE_CPU_TIMERS.store(refuse, Ordering::Relaxed);
}

/// Test hook: the address of a store column that Arrow tables share ("timestamp_ns" or
/// "weight"), to check that a consumer's buffer is the store's memory.
#[pyfunction]
fn _column_address(data: &Bound<'_, ProfileData>, column: &str) -> PyResult<usize> {
    let store = data.get().store();
    match column {
        "timestamp_ns" => Ok(store.timestamps_ns.as_ptr() as usize),
        "weight" | "weight_ns" | "weight_bytes" => Ok(store.weights.as_ptr() as usize),
        other => Err(PyValueError::new_err(format!(
            "no shared column '{other}'; shared columns: 'timestamp_ns', 'weight'"
        ))),
    }
}

/// Test hook: [`load`] from Python (installs the fault handler first, as a profiler start does).
#[pyfunction]
fn _safe_load(addr: usize) -> PyResult<Option<u64>> {
    safe_read::install().map_err(PyRuntimeError::new_err)?;
    Ok(safe_read::load(addr))
}

/// Test hook: hold one record of the memory profiler's ring open (see
/// [`crate::memory::hold_ring_record`]).
#[pyfunction]
fn _hold_memprof_record(hold: bool) -> bool {
    crate::memory::hold_ring_record(hold)
}

/// Test hook: hold one record of the CPU sampler's ring open (see
/// [`crate::signal::handler::hold_record`]).
#[pyfunction]
fn _hold_cpu_record(hold: bool) -> bool {
    crate::signal::handler::hold_record(hold)
}

pub fn module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let m = PyModule::new(py, "_testing")?;
    m.add_function(wrap_pyfunction!(walk_current_thread, &m)?)?;
    m.add_function(wrap_pyfunction!(_pretend_minor_version, &m)?)?;
    m.add_function(wrap_pyfunction!(_shift_offset, &m)?)?;
    m.add_function(wrap_pyfunction!(_refuse_cpu_timers, &m)?)?;
    m.add_function(wrap_pyfunction!(_column_address, &m)?)?;
    m.add_function(wrap_pyfunction!(_safe_load, &m)?)?;
    m.add_function(wrap_pyfunction!(_hold_memprof_record, &m)?)?;
    m.add_function(wrap_pyfunction!(_hold_cpu_record, &m)?)?;
    m.add(
        "_OFFSET_FIELDS",
        cpython::offsets::Offsets::FIELD_NAMES.to_vec(),
    )?;
    Ok(m)
}
