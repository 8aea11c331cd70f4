//! `ProfileData`: a finished profile in columnar form, and the writers over it.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use spprof_engine::collapsed;
use spprof_engine::speedscope;
use spprof_engine::store::{Store, EMPTY_STACK};
use std::collections::HashMap;
use std::sync::Arc;

/// A finished profile. Immutable: the store is shared (`Arc`) with whatever is built on it
/// without copying (e.g. Arrow buffers that point into its columns).
#[pyclass(module = "spprof._native", frozen)]
pub struct ProfileData {
    store: Arc<Store>,
    #[pyo3(get)]
    interval_ns: u64,
    /// Time spent in the signal handler, summed over all samples.
    #[pyo3(get)]
    handler_ns: u64,
    /// Wall-clock samples (weights are elapsed time) rather than CPU-time samples.
    #[pyo3(get)]
    wall: bool,
}

impl ProfileData {
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    pub fn handler_ns(&self) -> u64 {
        self.handler_ns
    }

    pub fn is_wall(&self) -> bool {
        self.wall
    }

    pub fn new(store: Store, interval_ns: u64, handler_ns: u64, wall: bool) -> ProfileData {
        ProfileData {
            store: Arc::new(store),
            interval_ns,
            handler_ns,
            wall,
        }
    }
}

/// One sample as Python hands it to `from_samples`.
type SampleIn = (
    i64,
    u64,
    String,
    i64,
    bool,
    Vec<(String, String, u32, bool)>,
);

#[pymethods]
impl ProfileData {
    /// Build from plain values (a profile assembled or edited in Python):
    /// `[(timestamp_ns, thread_id, thread_name, weight, on_cpu, [(function, file, line, is_native), ...root→leaf]), ...]`.
    #[staticmethod]
    #[pyo3(signature = (samples, interval_ns = 0))]
    fn from_samples(samples: Vec<SampleIn>, interval_ns: u64) -> PyResult<ProfileData> {
        let mut store = Store::new(usize::MAX);
        for (ts, tid, name, weight, on_cpu, frames) in samples {
            let thread = store.add_thread(tid, &name);
            let ids = frames
                .iter()
                .map(|(f, file, line, native)| store.intern_frame(f, file, *line, *native))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| PyValueError::new_err("profile too large"))?;
            let stack = store
                .intern_stack(ids)
                .ok_or_else(|| PyValueError::new_err("profile too large"))?;
            store.add_sample(ts, weight, thread, stack, on_cpu);
        }
        Ok(ProfileData::new(store, interval_ns, 0, false))
    }

    fn __len__(&self) -> usize {
        self.store.len()
    }

    #[getter]
    fn dropped(&self) -> u64 {
        self.store.dropped()
    }

    #[getter]
    fn bytes_used(&self) -> usize {
        self.store.bytes_used()
    }

    /// `(frames, stacks, samples, threads)` for building the Python dataclasses:
    /// frames `[(function, file, line, is_native)]`; stacks `{stack_id: (frame index, ... root→leaf)}`;
    /// samples `[(timestamp_ns, thread index, weight, stack_id, on_cpu)]`; threads `[(tid, name)]`.
    fn columns<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let s = &self.store;
        let frames = PyList::empty(py);
        for f in s.frames() {
            frames.append((s.string(f.function), s.string(f.file), f.line, f.is_native))?;
        }
        let mut stacks: HashMap<u32, Bound<'py, PyTuple>> = HashMap::new();
        let samples = PyList::empty(py);
        for i in 0..s.len() {
            let stack = s.stacks[i];
            if let std::collections::hash_map::Entry::Vacant(e) = stacks.entry(stack) {
                let ids = if stack == EMPTY_STACK {
                    vec![]
                } else {
                    s.stack_frames(stack)
                };
                e.insert(PyTuple::new(py, ids)?);
            }
            samples.append((
                s.timestamps_ns[i],
                s.thread_ids[i],
                s.weights[i],
                stack,
                s.on_cpu[i],
            ))?;
        }
        let threads = PyList::empty(py);
        for t in s.threads() {
            threads.append((t.tid, t.name.as_str()))?;
        }
        PyTuple::new(
            py,
            [
                frames.into_any(),
                stacks.into_pyobject(py)?.into_any(),
                samples.into_any(),
                threads.into_any(),
            ],
        )
    }

    /// Speedscope JSON text.
    #[pyo3(signature = (name, unit = "nanoseconds"))]
    fn speedscope(&self, py: Python<'_>, name: &str, unit: &str) -> PyResult<String> {
        let opts = speedscope::Options {
            name,
            unit,
            exporter: concat!("spprof ", env!("CARGO_PKG_VERSION")),
        };
        py.detach(|| {
            let mut out = Vec::new();
            speedscope::write(&self.store, &opts, &mut out).expect("writing to memory");
            String::from_utf8(out).map_err(|e| PyValueError::new_err(e.to_string()))
        })
    }

    /// Collapsed stacks; `value` is "count" (samples per stack) or "weight" (summed weights).
    #[pyo3(signature = (value = "count"))]
    fn collapsed(&self, py: Python<'_>, value: &str) -> PyResult<String> {
        let value = match value {
            "count" => collapsed::Value::Count,
            "weight" => collapsed::Value::Weight,
            other => {
                return Err(PyValueError::new_err(format!(
                    "value must be 'count' or 'weight', not {other:?}"
                )))
            }
        };
        Ok(py.detach(|| collapsed::write(&self.store, value)))
    }
}
