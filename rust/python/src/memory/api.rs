//! The memory profiler's Python functions (`spprof.memprof` calls them).

use super::hooks::*;
use super::install::*;
use super::preload;
use super::session::*;
use super::state::*;
use super::*;
use crate::cpython;
use crate::export::profile_data::ProfileData;
use crate::resolve::resolver::Resolver;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use spprof_engine::capture::ring::Ring;
use spprof_engine::memory::heapmap::HeapMap;
use spprof_engine::store::{StackId, Store, EMPTY_STACK};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

pub(super) fn runtime_error(msg: &str) -> PyErr {
    PyRuntimeError::new_err(msg.to_owned())
}

pub(super) const SHUT_DOWN_MSG: &str =
    "memory profiling was shut down (spprof.memprof.shutdown() is final \
    in a process); start memory profiling in a new process";

/// Start sampling allocations with a mean of `rate_bytes` bytes between samples.
#[pyfunction]
pub(super) fn memprof_start(py: Python<'_>, rate_bytes: u64) -> PyResult<()> {
    if rate_bytes < 1024 {
        return Err(PyValueError::new_err("sampling_rate_kb must be at least 1"));
    }
    if SHUT_DOWN.load(Ordering::Acquire) {
        return Err(runtime_error(SHUT_DOWN_MSG));
    }
    if SAMPLING.load(Ordering::Acquire) {
        return Err(runtime_error(
            "memory profiling is already running; call spprof.memprof.stop() first",
        ));
    }
    // Before the session lock: these run Python code.
    let blocks: isize = py
        .import("sys")?
        .call_method0("getallocatedblocks")?
        .extract()?;
    PYMALLOC.store(blocks > 0, Ordering::Relaxed);
    let walker = cpython::layout::walker(py)?;
    cpython::code_watch::install(py, on_code_destroyed)?;
    let resolver = Resolver::new(py);
    let sh = match hook_state() {
        Some(sh) => sh,
        None => {
            let sh = Box::new(HookState {
                ring: Ring::new(RING_BYTES),
                map: HeapMap::new(HEAP_MAP_SLOTS, &FILTER),
                walker,
            });
            HOOK_STATE.store(Box::into_raw(sh), Ordering::Release);
            hook_state().expect("just published")
        }
    };
    {
        let mut guard = mem_session();
        let s = guard.get_or_insert_with(|| MemSession::new(resolver));
        s.drain(py, sh);
        s.reset();
        if s.resolver_thread.is_none() {
            s.start_resolver_thread();
        }
    }
    HAS_SESSION.store(true, Ordering::Release);
    if !INSTALLED.swap(true, Ordering::AcqRel) {
        install_hooks();
    }
    set_flags(false, true); // the probes below are seen only while tracking
    wrap_again();
    choose_free_paths();
    SAMPLER.set_mean(rate_bytes);
    NEXT_RAISE_AT.store(sh.map.len().max(sh.map.capacity() / 2), Ordering::Relaxed);
    RATE_RAISES.store(0, Ordering::Relaxed);
    preload::connect(on_native_alloc, on_native_free);
    set_flags(true, true);
    crate::resolve::thread::wait_until_started(py);
    Ok(())
}

/// Stop sampling new allocations; frees are still tracked until `shutdown()`.
#[pyfunction]
pub(super) fn memprof_stop(py: Python<'_>) -> PyResult<()> {
    if SHUT_DOWN.load(Ordering::Acquire) {
        return Err(runtime_error(SHUT_DOWN_MSG));
    }
    if !SAMPLING.load(Ordering::SeqCst) {
        return Err(runtime_error(
            "memory profiling is not running; call spprof.memprof.start() first",
        ));
    }
    set_flags(false, true);
    if let (Some(sh), Some(s)) = (hook_state(), mem_session().as_mut()) {
        s.drain(py, sh);
    }
    Ok(())
}

/// Stop everything for good: no sampling, no free tracking, the resolver thread ends, and our
/// allocator wrappers are removed where nobody wrapped them since. Idempotent.
#[pyfunction]
pub(super) fn memprof_shutdown(py: Python<'_>) -> usize {
    if SHUT_DOWN.swap(true, Ordering::AcqRel) {
        return 0;
    }
    set_flags(false, false);
    preload::disconnect();
    let drainer = mem_session()
        .as_mut()
        .and_then(|s| s.resolver_thread.take());
    if let Some(d) = drainer {
        d.stop_and_join(py);
    }
    if let (Some(sh), Some(s)) = (hook_state(), mem_session().as_mut()) {
        s.drain(py, sh);
    }
    if INSTALLED.load(Ordering::Acquire) {
        restore_hooks()
    } else {
        0
    }
}

/// "never", "running", "stopped" or "shutdown".
#[pyfunction]
pub(super) fn memprof_state() -> &'static str {
    if SHUT_DOWN.load(Ordering::Acquire) {
        "shutdown"
    } else if SAMPLING.load(Ordering::Acquire) {
        "running"
    } else if HAS_SESSION.load(Ordering::Acquire) {
        "stopped"
    } else {
        "never"
    }
}

/// A snapshot for Python: the profile, `(address, size)` per sample, and the total samples.
pub(super) type Snapshot = (ProfileData, Vec<(u64, u64)>, u64);

/// The running session, drained, or the error that says why there is none.
pub(super) fn drained<'a>(
    py: Python<'_>,
    guard: &'a mut Option<MemSession>,
) -> PyResult<&'a mut MemSession> {
    if SHUT_DOWN.load(Ordering::Acquire) {
        return Err(runtime_error(
            "memory profiling was shut down, so frees are no longer tracked and no snapshot can \
             be taken; take snapshots before spprof.memprof.shutdown()",
        ));
    }
    let (Some(sh), Some(s)) = (hook_state(), guard.as_mut()) else {
        return Err(runtime_error(
            "memory profiling has not been started; call spprof.memprof.start() first",
        ));
    };
    s.drain(py, sh);
    Ok(s)
}

/// Rows of the session's samples copied into a store of their own, with thread names.
pub(super) struct Export<'a> {
    session: &'a MemSession,
    names: HashMap<u64, String>,
    out: Store,
    stacks: HashMap<StackId, StackId>,
}

impl<'a> Export<'a> {
    fn new(session: &'a MemSession, names: HashMap<u64, String>) -> Self {
        Export {
            session,
            names,
            out: Store::new(usize::MAX),
            stacks: HashMap::new(),
        }
    }

    fn add(&mut self, timestamp_ns: u64, weight: u64, tid: u32, stack: StackId) {
        let tid = tid as u64;
        let name = self
            .names
            .get(&tid)
            .cloned()
            .unwrap_or_else(|| format!("Thread-{tid}"));
        let thread = self.out.add_thread(tid, &name);
        let (s, out) = (&self.session.store, &mut self.out);
        let stack = *self.stacks.entry(stack).or_insert_with(|| {
            let frames: Vec<u32> = if stack == EMPTY_STACK {
                Vec::new()
            } else {
                s.stack_frames(stack)
                    .into_iter()
                    .filter_map(|f| {
                        let fr = s.frames()[f as usize];
                        out.intern_frame(
                            s.string(fr.function),
                            s.string(fr.file),
                            fr.line,
                            fr.is_native,
                        )
                    })
                    .collect()
            };
            out.intern_stack(frames).unwrap_or(EMPTY_STACK)
        });
        let ts = timestamp_ns.saturating_sub(self.session.start_ns) as i64;
        self.out.add_sample(ts, weight as i64, thread, stack, true);
    }

    fn finish(self) -> ProfileData {
        ProfileData::new(self.out, 0, 0, false)
    }
}

/// The live samples as a profile (weights = estimated bytes, timestamps = allocation time since
/// start) and `[(address, size)]` in the same order. `names` maps thread ids to names.
#[pyfunction]
pub(super) fn memprof_snapshot(py: Python<'_>, names: HashMap<u64, String>) -> PyResult<Snapshot> {
    let mut guard = mem_session();
    let s = drained(py, &mut guard)?;
    let mut rows: Vec<(&u64, &Live)> = s.live.iter().collect();
    rows.sort_by_key(|(addr, l)| (l.timestamp_ns, **addr));
    let mut export = Export::new(s, names);
    let mut addresses = Vec::with_capacity(rows.len());
    for (_, l) in rows {
        export.add(l.timestamp_ns, l.weight, l.tid, l.stack);
        addresses.push((l.address, l.size));
    }
    Ok((export.finish(), addresses, s.total_samples))
}

/// The estimated live heap and its high-water mark since `memprof_reset_peak`, in bytes.
#[pyfunction]
pub(super) fn memprof_traced_memory(py: Python<'_>) -> PyResult<(u64, u64)> {
    let mut guard = mem_session();
    let s = drained(py, &mut guard)?;
    Ok((s.live_bytes, s.peak_bytes))
}

/// Start the high-water mark again from the live heap now, and the tally of who allocated
/// (drained first, so that nothing allocated before counts).
#[pyfunction]
pub(super) fn memprof_reset_peak(py: Python<'_>) -> PyResult<()> {
    let mut guard = mem_session();
    let s = drained(py, &mut guard)?;
    s.peak_bytes = s.live_bytes;
    s.allocated.clear();
    Ok(())
}

/// The bytes sampled since `memprof_reset_peak`, freed or not, as a profile: one row per thread
/// and stack, weighted by estimated bytes.
#[pyfunction]
pub(super) fn memprof_allocated_since_reset(
    py: Python<'_>,
    names: HashMap<u64, String>,
) -> PyResult<ProfileData> {
    let mut guard = mem_session();
    let s = drained(py, &mut guard)?;
    let mut rows: Vec<(&(u32, StackId), &u64)> = s.allocated.iter().collect();
    rows.sort_unstable();
    let mut export = Export::new(s, names);
    for (&(tid, stack), &bytes) in rows {
        export.add(s.start_ns, bytes, tid, stack);
    }
    Ok(export.finish())
}

/// Counters (a dict); drains first so they are current.
#[pyfunction]
pub(super) fn memprof_stats(py: Python<'_>) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    let mut guard = mem_session();
    let (mut total, mut live, mut freed, mut stacks, mut bytes, mut untracked) = (0, 0, 0, 0, 0, 0);
    if let (Some(sh), Some(s)) = (hook_state(), guard.as_mut()) {
        if !SHUT_DOWN.load(Ordering::Acquire) {
            s.drain(py, sh);
        }
        total = s.total_samples;
        live = s.live.len();
        freed = s.freed_samples;
        stacks = s
            .live
            .values()
            .map(|l| l.stack)
            .collect::<HashSet<_>>()
            .len();
        bytes = s.live_bytes;
        untracked = s.untracked_frees;
    }
    drop(guard);
    let sh = hook_state();
    d.set_item("total_samples", total)?;
    d.set_item("live_samples", live)?;
    d.set_item("freed_samples", freed)?;
    d.set_item("unique_stacks", stacks)?;
    d.set_item("estimated_heap_bytes", bytes)?;
    d.set_item(
        "heap_map_load_percent",
        sh.map_or(0.0, |s| s.map.load_percent()),
    )?;
    d.set_item("collisions", sh.map_or(0, |s| s.map.collisions()))?;
    d.set_item("sampling_rate_bytes", SAMPLER.mean())?;
    d.set_item("sampling_rate_raises", RATE_RAISES.load(Ordering::Relaxed))?;
    d.set_item(
        "dropped_samples",
        DROPPED.load(Ordering::Relaxed) + sh.map_or(0, |s| s.map.refused()),
    )?;
    d.set_item("lost_frees", LOST_FREES.load(Ordering::Relaxed))?;
    d.set_item("untracked_frees", untracked)?;
    d.set_item("heap_map_capacity", sh.map_or(0, |s| s.map.capacity()))?;
    d.set_item("heap_map_tombstones", sh.map_or(0, |s| s.map.tombstones()))?;
    d.set_item("state", memprof_state())?;
    let mut sources: Vec<&str> = Vec::new();
    let mut unhooked = Vec::new();
    if TRACKING.load(Ordering::Acquire) {
        unhooked = unhooked_domains();
        // MEM and OBJ serve Python objects; RAW, a few C modules' buffers.
        if !unhooked
            .iter()
            .any(|d| d.ends_with("MEM") || d.ends_with("OBJ"))
        {
            sources.push("python");
        }
        if preload::connected() {
            sources.push("native");
        }
    }
    d.set_item("sources", sources)?;
    d.set_item("unhooked_domains", unhooked)?;
    Ok(d.unbind())
}

/// In a forked child: memory profiling is stopped and empty there. The hooks stay installed but
/// only forward; only the forking thread exists, so nothing runs concurrently with this.
#[pyfunction]
pub(super) fn memprof_after_fork_in_child() {
    set_flags(false, false);
    OUTER.store(0, Ordering::Relaxed);
    NESTED_RAW.store(0, Ordering::Relaxed);
    if let Some(sh) = hook_state() {
        // A thread of the parent may have died in the middle of a record.
        sh.ring.reset();
        sh.map.clear();
    }
    if let Some(s) = mem_session().as_mut() {
        if let Some(d) = s.resolver_thread.take() {
            d.abandon_after_fork();
        }
        s.reset();
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(memprof_start, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_stop, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_state, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_stats, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_traced_memory, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_reset_peak, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_allocated_since_reset, m)?)?;
    m.add_function(wrap_pyfunction!(memprof_after_fork_in_child, m)?)?;
    Ok(())
}
