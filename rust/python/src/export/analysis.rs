//! Python bindings of the engine's analyses (`spprof.analysis`): results as Arrow tables,
//! filters as new `ProfileData`.

use super::arrow::ArrowTable;
use super::profile_data::ProfileData;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use spprof_engine::analysis::{self, Group, Key};
use spprof_engine::export::arrow::arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray,
};
use spprof_engine::export::arrow::arrow_schema::{ArrowError, DataType, Field, Schema};
use spprof_engine::export::arrow::Table;
use spprof_engine::store::Store;
use std::collections::HashSet;
use std::sync::Arc;

fn group(name: &str) -> PyResult<Group> {
    Group::parse(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "group must be 'function', 'line' or 'file', not {name:?}"
        ))
    })
}

/// Builds a record batch column by column.
#[derive(Default)]
struct Columns {
    fields: Vec<Field>,
    arrays: Vec<ArrayRef>,
}

impl Columns {
    fn int(&mut self, name: &str, values: impl IntoIterator<Item = i64>) -> &mut Self {
        self.fields.push(Field::new(name, DataType::Int64, false));
        self.arrays
            .push(Arc::new(Int64Array::from_iter_values(values)));
        self
    }
    fn float(&mut self, name: &str, values: impl IntoIterator<Item = f64>) -> &mut Self {
        self.fields.push(Field::new(name, DataType::Float64, false));
        self.arrays
            .push(Arc::new(Float64Array::from_iter_values(values)));
        self
    }
    fn text<'a>(&mut self, name: &str, values: impl IntoIterator<Item = &'a str>) -> &mut Self {
        self.fields.push(Field::new(name, DataType::Utf8, false));
        self.arrays
            .push(Arc::new(StringArray::from_iter_values(values)));
        self
    }
    /// A text column with nulls (`None`).
    fn optional_text<'a>(
        &mut self,
        name: &str,
        values: impl IntoIterator<Item = Option<&'a str>>,
    ) -> &mut Self {
        self.fields.push(Field::new(name, DataType::Utf8, true));
        self.arrays
            .push(Arc::new(values.into_iter().collect::<StringArray>()));
        self
    }
    /// The key columns a grouping has: function, filename, lineno (as applicable).
    fn keys<'a>(&mut self, g: Group, keys: impl Iterator<Item = &'a Key> + Clone) -> &mut Self {
        if g != Group::File {
            self.text("function", keys.clone().map(|k| k.function.as_str()));
        }
        self.text("filename", keys.clone().map(|k| k.filename.as_str()));
        if g == Group::Line {
            self.int("lineno", keys.map(|k| k.lineno as i64));
        }
        self
    }
    fn table(self) -> PyResult<ArrowTable> {
        let schema = Arc::new(Schema::new(self.fields));
        let batch = RecordBatch::try_new(schema.clone(), self.arrays)
            .map_err(|e: ArrowError| PyValueError::new_err(e.to_string()))?;
        Ok(ArrowTable::new(Table {
            schema,
            batches: vec![batch],
        }))
    }
}

fn pct(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Top `n` keys by self (or total) weight.
#[pyfunction]
#[pyo3(signature = (data, n, by_total, group_by, unit))]
pub fn analysis_top(
    py: Python<'_>,
    data: &ProfileData,
    n: Option<usize>,
    by_total: bool,
    group_by: &str,
    unit: &str,
) -> PyResult<ArrowTable> {
    let g = group(group_by)?;
    let store = data.store().clone();
    let (rows, total) = py.detach(move || {
        let mut rows = analysis::top(&store, g, by_total);
        rows.truncate(n.unwrap_or(usize::MAX));
        (rows, analysis::total_weight(&store))
    });
    let mut c = Columns::default();
    c.keys(g, rows.iter().map(|r| &r.0))
        .int(
            &format!("self_{unit}"),
            rows.iter().map(|r| r.1.self_weight),
        )
        .int(
            &format!("total_{unit}"),
            rows.iter().map(|r| r.1.total_weight),
        )
        .float("self_pct", rows.iter().map(|r| pct(r.1.self_weight, total)))
        .float(
            "total_pct",
            rows.iter().map(|r| pct(r.1.total_weight, total)),
        )
        .int("samples", rows.iter().map(|r| r.1.samples as i64));
    c.table()
}

/// Weight per thread.
#[pyfunction]
pub fn analysis_threads(data: &ProfileData, unit: &str) -> PyResult<ArrowTable> {
    let store = data.store();
    let rows = analysis::per_thread(store);
    let total = analysis::total_weight(store);
    let mut c = Columns::default();
    c.int("thread_id", rows.iter().map(|r| r.tid as i64))
        .text("thread_name", rows.iter().map(|r| r.name.as_str()))
        .int("samples", rows.iter().map(|r| r.samples as i64))
        .int(&format!("weight_{unit}"), rows.iter().map(|r| r.weight))
        .int(
            &format!("on_cpu_{unit}"),
            rows.iter().map(|r| r.on_cpu_weight),
        )
        .float("share_pct", rows.iter().map(|r| pct(r.weight, total)))
        .int("pid", rows.iter().map(|r| r.pid.into()))
        .optional_text("task", rows.iter().map(|r| r.task.as_deref()));
    c.table()
}

/// What changed from `baseline` to `current`, per key.
#[pyfunction]
pub fn analysis_diff(
    py: Python<'_>,
    baseline: &ProfileData,
    current: &ProfileData,
    group_by: &str,
    unit: &str,
) -> PyResult<ArrowTable> {
    let g = group(group_by)?;
    let (b, cur) = (baseline.store().clone(), current.store().clone());
    let rows = py.detach(move || analysis::diff(&b, &cur, g));
    let mut c = Columns::default();
    c.keys(g, rows.iter().map(|r| &r.key))
        .int(
            &format!("baseline_self_{unit}"),
            rows.iter().map(|r| r.baseline.self_weight),
        )
        .int(
            &format!("current_self_{unit}"),
            rows.iter().map(|r| r.current.self_weight),
        )
        .int(
            &format!("delta_self_{unit}"),
            rows.iter().map(|r| r.delta_self()),
        )
        .int(
            &format!("baseline_total_{unit}"),
            rows.iter().map(|r| r.baseline.total_weight),
        )
        .int(
            &format!("current_total_{unit}"),
            rows.iter().map(|r| r.current.total_weight),
        )
        .int(
            &format!("delta_total_{unit}"),
            rows.iter().map(|r| r.delta_total()),
        )
        .float(
            "baseline_self_pct",
            rows.iter().map(|r| r.baseline_self_pct),
        )
        .float("current_self_pct", rows.iter().map(|r| r.current_self_pct))
        .float(
            "delta_self_pct",
            rows.iter()
                .map(|r| r.current_self_pct - r.baseline_self_pct),
        )
        .float(
            "baseline_total_pct",
            rows.iter().map(|r| r.baseline_total_pct),
        )
        .float(
            "current_total_pct",
            rows.iter().map(|r| r.current_total_pct),
        )
        .float(
            "delta_total_pct",
            rows.iter()
                .map(|r| r.current_total_pct - r.baseline_total_pct),
        );
    c.table()
}

fn derived(data: &ProfileData, store: Store) -> ProfileData {
    ProfileData::new(store, data.interval_ns(), data.handler_ns(), data.is_wall())
}

/// The samples taken in `[start_ns, end_ns)`.
#[pyfunction]
pub fn select_window(
    py: Python<'_>,
    data: &ProfileData,
    start_ns: i64,
    end_ns: i64,
) -> ProfileData {
    let store = data.store().clone();
    let selected = py.detach(move || {
        analysis::select(&store, |i| {
            (start_ns..end_ns).contains(&store.timestamps_ns[i])
        })
    });
    derived(data, selected)
}

/// The samples whose stack contains one of the frames `frame_ids`.
#[pyfunction]
pub fn select_frames(py: Python<'_>, data: &ProfileData, frame_ids: Vec<u32>) -> ProfileData {
    let store = data.store().clone();
    let frames: HashSet<u32> = frame_ids.into_iter().collect();
    let selected = py.detach(move || analysis::select_with_frames(&store, &frames));
    derived(data, selected)
}

/// The samples taken in the program a launcher ran, its frames `launcher` cut from the root of
/// every stack: those whose last launcher frame is one of `entry` (see `analysis::below_launcher`).
#[pyfunction]
pub fn below_launcher(
    py: Python<'_>,
    data: &ProfileData,
    launcher: Vec<u32>,
    entry: Vec<u32>,
) -> ProfileData {
    let store = data.store().clone();
    let launcher: HashSet<u32> = launcher.into_iter().collect();
    let entry: HashSet<u32> = entry.into_iter().collect();
    let cut = py.detach(move || analysis::below_launcher(&store, &launcher, &entry));
    derived(data, cut)
}

/// Every sample, its stack starting at its outermost frame of `entry` (see
/// `analysis::starting_at`).
#[pyfunction]
pub fn starting_at(py: Python<'_>, data: &ProfileData, entry: Vec<u32>) -> ProfileData {
    let store = data.store().clone();
    let entry: HashSet<u32> = entry.into_iter().collect();
    let cut = py.detach(move || analysis::starting_at(&store, &entry));
    derived(data, cut)
}

/// The frame table `[(function, file, line, is_native)]` (indices are frame ids).
#[pyfunction]
pub fn frames_of(data: &ProfileData) -> Vec<(String, String, u32, bool)> {
    let s = data.store();
    s.frames()
        .iter()
        .map(|f| {
            (
                s.string(f.function).to_owned(),
                s.string(f.file).to_owned(),
                f.line,
                f.is_native,
            )
        })
        .collect()
}
