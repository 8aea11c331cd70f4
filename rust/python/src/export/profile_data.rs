//! `ProfileData`: a finished profile in columnar form, and the writers over it.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use spprof_engine::export::atomic_file;
use spprof_engine::export::collapsed;
use spprof_engine::export::pprof;
use spprof_engine::export::process_file::{self, Process};
use spprof_engine::export::speedscope;
use spprof_engine::store::{Store, EMPTY_STACK};
use spprof_engine::tasks::{self, Step, Wait};
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

/// A sample's frames as Python hands them to `from_samples`, root first.
type FramesIn = Vec<(String, String, u32, bool)>;
/// One sample as Python hands it to `from_samples`; the process id and the task are optional
/// (last).
type SampleIn = (i64, u64, String, i64, bool, FramesIn);
type ProcessSampleIn = (i64, u64, String, i64, bool, FramesIn, u32);
type TaskSampleIn = (i64, u64, String, i64, bool, FramesIn, u32, Option<String>);
/// A task's step as `_tasks.Tracker` notes it: (start ns, end ns, task, thread id).
type StepIn = (i64, i64, String, u64);
/// A task's wait: (start ns, end ns, task, thread id, [(function, file, line)] outermost first).
type WaitIn = (i64, i64, String, u64, Vec<(String, String, u32)>);

#[pymethods]
impl ProfileData {
    /// Build from plain values (a profile assembled or edited in Python), an iterable of
    /// `(timestamp_ns, thread_id, thread_name, weight, on_cpu, [(function, file, line, is_native), ...root→leaf][, pid[, task]])`
    /// (without a pid: this process). It is consumed one sample at a time: a generator costs no
    /// list of every sample.
    #[staticmethod]
    #[pyo3(signature = (samples, interval_ns = 0))]
    fn from_samples(samples: &Bound<'_, PyAny>, interval_ns: u64) -> PyResult<ProfileData> {
        let mut store = Store::new(usize::MAX);
        for sample in samples.try_iter()? {
            let sample = sample?;
            let (ts, tid, name, weight, on_cpu, frames, pid, task) = match sample.len()? {
                8 => sample.extract::<TaskSampleIn>()?,
                7 => {
                    let (ts, tid, name, weight, on_cpu, frames, pid): ProcessSampleIn =
                        sample.extract()?;
                    (ts, tid, name, weight, on_cpu, frames, pid, None)
                }
                _ => {
                    let (ts, tid, name, weight, on_cpu, frames): SampleIn = sample.extract()?;
                    let pid = std::process::id();
                    (ts, tid, name, weight, on_cpu, frames, pid, None)
                }
            };
            let thread = store.add_task_thread(pid, tid, &name, task.as_deref());
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

    /// Samples `start..stop` as `(timestamp_ns, thread index, weight, stack id, on_cpu)`: the
    /// rows `Profile.samples` builds its `Sample` objects from, a batch at a time.
    fn sample_rows(&self, start: usize, stop: usize) -> Vec<(i64, u32, i64, u32, bool)> {
        let s = &self.store;
        (start..stop.min(s.len()))
            .map(|i| {
                (
                    s.timestamps_ns[i],
                    s.thread_ids[i],
                    s.weights[i],
                    s.stacks[i],
                    s.on_cpu[i],
                )
            })
            .collect()
    }

    /// The frame ids of stack `stack`, root first (none for the empty stack).
    fn stack(&self, stack: u32) -> Vec<u32> {
        if stack == EMPTY_STACK {
            Vec::new()
        } else {
            self.store.stack_frames(stack)
        }
    }

    /// The thread table `[(tid, name, pid, task)]` (sample rows hold indices into it).
    fn threads(&self) -> Vec<(u64, String, u32, Option<String>)> {
        self.store
            .threads()
            .iter()
            .map(|t| (t.tid, t.name.clone(), t.pid, t.task.clone()))
            .collect()
    }

    /// The samples with asyncio tasks' `steps` and `waits` applied (`spprof/_tasks.py` notes
    /// them, in this profile's clock); `entry` is the (function, file) of the frame under which
    /// a traced task's coroutine runs. See `spprof_engine::tasks`.
    fn with_tasks(
        &self,
        py: Python<'_>,
        steps: Vec<StepIn>,
        waits: Vec<WaitIn>,
        entry: (String, String),
    ) -> ProfileData {
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|(start_ns, end_ns, task, tid)| Step {
                start_ns,
                end_ns,
                tid,
                task,
            })
            .collect();
        let waits: Vec<Wait> = waits
            .into_iter()
            .map(|(start_ns, end_ns, task, tid, frames)| Wait {
                start_ns,
                end_ns,
                tid,
                task,
                frames,
            })
            .collect();
        let store =
            py.detach(|| tasks::with_tasks(&self.store, &steps, &waits, (&entry.0, &entry.1)));
        ProfileData::new(store, self.interval_ns, self.handler_ns, self.wall)
    }

    /// Leave this profile, recorded by process `pid` (`name`) on a clock that started at
    /// CLOCK_MONOTONIC `origin_ns`, in `path` for the parent process to merge.
    fn write_process(
        &self,
        py: Python<'_>,
        path: std::path::PathBuf,
        pid: u32,
        name: String,
        origin_ns: i64,
    ) -> PyResult<()> {
        let process = Process {
            pid,
            name,
            origin_ns,
        };
        py.detach(|| process_file::write(&self.store, &process, &path))
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The profile a child left in `path` (see `write_process`), with the CLOCK_MONOTONIC
    /// origin of its clock: `(profile, origin_ns)`.
    #[staticmethod]
    fn read_process(
        py: Python<'_>,
        path: std::path::PathBuf,
        interval_ns: u64,
        wall: bool,
    ) -> PyResult<(ProfileData, i64)> {
        let (store, process) = py
            .detach(|| process_file::read(&path))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok((
            ProfileData::new(store, interval_ns, 0, wall),
            process.origin_ns,
        ))
    }

    /// One profile of several processes' profiles, each with the shift (ns) that puts its
    /// timestamps on the first one's clock; `names` says what processes were (`[(pid, name)]`,
    /// besides the names the children's files gave).
    #[staticmethod]
    fn merge(
        py: Python<'_>,
        parts: Vec<(PyRef<'_, ProfileData>, i64)>,
        names: Vec<(u32, String)>,
    ) -> PyResult<ProfileData> {
        let Some((first, _)) = parts.first() else {
            return Err(PyValueError::new_err("nothing to merge"));
        };
        let (interval_ns, wall) = (first.interval_ns, first.wall);
        let handler_ns = parts.iter().map(|(p, _)| p.handler_ns).sum();
        let stores: Vec<(Arc<Store>, i64)> = parts
            .iter()
            .map(|(p, shift)| (p.store.clone(), *shift))
            .collect();
        let mut store = py.detach(|| {
            let refs: Vec<(&Store, i64)> = stores.iter().map(|(s, t)| (s.as_ref(), *t)).collect();
            Store::merge(&refs)
        });
        for (pid, name) in &names {
            store.set_process_name(*pid, name);
        }
        Ok(ProfileData::new(store, interval_ns, handler_ns, wall))
    }

    /// The sum of the samples' weights.
    fn total_weight(&self) -> i64 {
        self.store.weights.iter().sum()
    }

    /// Write speedscope JSON to `path`, streamed from the store (a profile of millions of samples
    /// is never one string), through a temporary file that is removed if writing fails.
    #[pyo3(signature = (path, name, unit = "nanoseconds"))]
    fn save_speedscope(
        &self,
        py: Python<'_>,
        path: std::path::PathBuf,
        name: &str,
        unit: &str,
    ) -> PyResult<()> {
        let opts = speedscope::Options {
            name,
            unit,
            exporter: concat!("spprof ", env!("CARGO_PKG_VERSION")),
        };
        py.detach(|| atomic_file::write(&path, |out| speedscope::write(&self.store, &opts, out)))?;
        Ok(())
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

    /// pprof (gzip'd profile.proto) of the profile: `measure` is "cpu", "wall" or "inuse_space";
    /// `objects`, per sample, what a memory sample stands for; `labels` go on every sample.
    #[pyo3(signature = (measure, period, time_nanos, duration_nanos, objects = None, labels = Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn pprof<'py>(
        &self,
        py: Python<'py>,
        measure: &str,
        period: i64,
        time_nanos: i64,
        duration_nanos: i64,
        objects: Option<Vec<f64>>,
        labels: Vec<(String, String)>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let measure = match measure {
            "cpu" => pprof::Measure::Cpu,
            "wall" => pprof::Measure::Wall,
            "inuse_space" => pprof::Measure::InuseSpace,
            other => {
                return Err(PyValueError::new_err(format!(
                    "measure must be 'cpu', 'wall' or 'inuse_space', not {other:?}"
                )))
            }
        };
        let opts = pprof::Options {
            measure,
            period,
            time_nanos,
            duration_nanos,
            objects: objects.as_deref(),
            labels: &labels,
        };
        let bytes = py.detach(|| {
            let mut out = Vec::new();
            pprof::write(&self.store, &opts, &mut out).map(|()| out)
        });
        Ok(PyBytes::new(
            py,
            &bytes.map_err(|e| PyValueError::new_err(e.to_string()))?,
        ))
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
