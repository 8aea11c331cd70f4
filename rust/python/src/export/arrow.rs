//! Arrow tables for Python through the Arrow PyCapsule interface: `ArrowTable` hands out C
//! streams (`__arrow_c_stream__`) over record batches that point into the profile's store, so
//! pyarrow, polars, pandas and duckdb import them without a copy and without pyarrow being a
//! dependency of spprof.

use super::profile_data::ProfileData;
use pyo3::exceptions::{PyImportError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};
use pyo3::IntoPyObjectExt;
use spprof_engine::export::arrow::arrow_array::cast::AsArray;
use spprof_engine::export::arrow::arrow_array::ffi::FFI_ArrowSchema;
use spprof_engine::export::arrow::arrow_array::ffi_stream::FFI_ArrowArrayStream;
use spprof_engine::export::arrow::arrow_array::types::{
    Float64Type, Int32Type, Int64Type, UInt32Type,
};
use spprof_engine::export::arrow::arrow_array::Array;
use spprof_engine::export::arrow::arrow_array::{RecordBatch, RecordBatchIterator};
use spprof_engine::export::arrow::arrow_schema::{ArrowError, DataType, SchemaRef};
use spprof_engine::export::arrow::{self, Kind, Table, KINDS};
use spprof_engine::export::flamegraph::xml_escape;
use spprof_engine::export::run_file::{self, Chunk, Reports, Window};
use spprof_engine::store::Store;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A schema and its record batches, exported to any Arrow consumer without a copy.
/// Each export shares the same buffers; the table can be exported any number of times.
#[pyclass(module = "spprof._native", name = "ArrowTable", frozen)]
pub struct ArrowTable {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl ArrowTable {
    pub fn new(table: Table) -> ArrowTable {
        ArrowTable {
            schema: table.schema,
            batches: table.batches,
        }
    }
}

/// One cell of the tables spprof builds (numbers, booleans, plain or dictionary strings).
enum Value<'a> {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(&'a str),
}

/// Row `i` of `column`, or the column's type when it is none of those.
fn value(column: &dyn Array, i: usize) -> Result<Value<'_>, DataType> {
    if column.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match column.data_type() {
        DataType::Int64 => Value::Int(column.as_primitive::<Int64Type>().value(i)),
        DataType::Int32 => Value::Int(column.as_primitive::<Int32Type>().value(i).into()),
        DataType::UInt32 => Value::Int(column.as_primitive::<UInt32Type>().value(i).into()),
        DataType::Float64 => Value::Float(column.as_primitive::<Float64Type>().value(i)),
        DataType::Boolean => Value::Bool(column.as_boolean().value(i)),
        DataType::Utf8 => Value::Str(column.as_string::<i32>().value(i)),
        DataType::Dictionary(key, _) if **key == DataType::Int32 => {
            let dict = column.as_dictionary::<Int32Type>();
            return value(dict.values().as_ref(), dict.keys().value(i) as usize);
        }
        other => return Err(other.clone()),
    })
}

/// Row `i` of `column` as a Python value.
fn cell<'py>(py: Python<'py>, column: &dyn Array, i: usize) -> PyResult<Bound<'py, PyAny>> {
    match value(column, i) {
        Ok(Value::Null) => Ok(py.None().into_bound(py)),
        Ok(Value::Int(v)) => v.into_bound_py_any(py),
        Ok(Value::Float(v)) => v.into_bound_py_any(py),
        Ok(Value::Bool(v)) => v.into_bound_py_any(py),
        Ok(Value::Str(v)) => v.into_bound_py_any(py),
        Err(other) => Err(PyValueError::new_err(format!(
            "rows() reads numbers and strings, not {other}: read this table with pyarrow or polars"
        ))),
    }
}

/// A cell as a table shows it, and whether it is a number (aligned right).
fn text(column: &dyn Array, i: usize) -> (String, bool) {
    match value(column, i) {
        Ok(Value::Null) => ("None".into(), false),
        Ok(Value::Int(v)) => (v.to_string(), true),
        Ok(Value::Float(v)) => (format!("{v:.2}"), true),
        Ok(Value::Bool(v)) => ((if v { "True" } else { "False" }).into(), false),
        Ok(Value::Str(v)) => (shorten(v), false),
        Err(other) => (format!("<{other}>"), false),
    }
}

/// Widest text a cell shows: a longer one keeps its end (a path's file name, a method's name).
const CELL_CHARS: usize = 48;

fn shorten(s: &str) -> String {
    let n = s.chars().count();
    if n <= CELL_CHARS {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (CELL_CHARS - 1)).collect();
    format!("…{tail}")
}

/// Rows `repr()` shows, and rows a notebook shows.
const REPR_ROWS: usize = 10;
const HTML_ROWS: usize = 20;

/// Import an optional package for `method`, or say which to install.
fn import_for<'py>(py: Python<'py>, module: &str, method: &str) -> PyResult<Bound<'py, PyModule>> {
    py.import(module).map_err(|e| {
        if e.is_instance_of::<PyImportError>(py) {
            PyImportError::new_err(format!("{method}() needs {module}: pip install {module}"))
        } else {
            e
        }
    })
}

fn arrow_error(e: ArrowError) -> PyErr {
    PyRuntimeError::new_err(format!("building the Arrow table failed: {e}"))
}

#[pymethods]
impl ArrowTable {
    /// A PyCapsule "arrow_array_stream" over the batches. `requested_schema` is accepted as the
    /// interface says and ignored: the producer may return its own schema when it does not cast.
    #[pyo3(signature = (requested_schema = None))]
    fn __arrow_c_stream__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema;
        let reader = RecordBatchIterator::new(
            // Clones are reference counts on the same buffers, not copies of the data.
            self.batches.clone().into_iter().map(Ok),
            self.schema.clone(),
        );
        let stream = FFI_ArrowArrayStream::new(Box::new(reader));
        // A consumer moves the stream out and sets its `release` to NULL. Dropping the
        // struct (the capsule destructor) calls `release` only when it is still non-null,
        // i.e. when nobody consumed the stream.
        PyCapsule::new_with_value_and_destructor(py, stream, c"arrow_array_stream", |stream, _| {
            drop(stream)
        })
    }

    /// A PyCapsule "arrow_schema" with the table's schema.
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        let schema = FFI_ArrowSchema::try_from(self.schema.as_ref()).map_err(arrow_error)?;
        // Same rule as the stream: dropping releases the schema only if it was not moved out.
        PyCapsule::new_with_value_and_destructor(py, schema, c"arrow_schema", |schema, _| {
            drop(schema)
        })
    }

    #[getter]
    fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[getter]
    fn num_batches(&self) -> usize {
        self.batches.len()
    }

    /// The first `limit` rows (all when None) as tuples of Python values.
    #[pyo3(signature = (limit = None))]
    fn rows<'py>(
        &self,
        py: Python<'py>,
        limit: Option<usize>,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let n = limit.map_or(self.num_rows(), |l| l.min(self.num_rows()));
        let mut out = Vec::with_capacity(n);
        for (batch, i) in self.row_positions().take(n) {
            let values = batch
                .columns()
                .iter()
                .map(|c| cell(py, c.as_ref(), i))
                .collect::<PyResult<Vec<_>>>()?;
            out.push(PyTuple::new(py, values)?);
        }
        Ok(out)
    }

    /// The table as a `pyarrow.Table` (needs pyarrow).
    fn to_pyarrow<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        import_for(slf.py(), "pyarrow", "to_pyarrow")?.call_method1("table", (slf,))
    }

    /// The table as a `pandas.DataFrame` (needs pandas and pyarrow): string columns become
    /// categoricals, and integer columns without nulls are views of the profile's memory.
    fn to_pandas<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        import_for(py, "pandas", "to_pandas")?;
        // pandas converts Arrow data through pyarrow (pandas 3's DataFrame.from_arrow too), which
        // consolidates columns into 2-D blocks (a copy) unless split_blocks keeps them views.
        let table = import_for(py, "pyarrow", "to_pandas")?.call_method1("table", (slf,))?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("split_blocks", true)?;
        table.call_method("to_pandas", (), Some(&kwargs))
    }

    /// The table as a `polars.DataFrame` (needs polars).
    fn to_polars<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        import_for(slf.py(), "polars", "to_polars")?.call_method1("DataFrame", (slf,))
    }

    #[getter]
    fn column_names(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    fn __len__(&self) -> usize {
        self.num_rows()
    }

    /// The first rows, aligned as a terminal shows a data frame.
    fn __repr__(&self) -> String {
        let names = self.column_names();
        let rows = self.texts(REPR_ROWS);
        let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
        for row in &rows {
            for (w, (t, _)) in widths.iter_mut().zip(row) {
                *w = (*w).max(t.chars().count());
            }
        }
        let pad = |t: &str, w: usize, right: bool| {
            let fill = " ".repeat(w - t.chars().count());
            if right {
                format!("{fill}{t}")
            } else {
                format!("{t}{fill}")
            }
        };
        let numeric: Vec<bool> = (0..names.len())
            .map(|c| rows.first().is_some_and(|r| r[c].1))
            .collect();
        let mut lines = vec![names
            .iter()
            .zip(&widths)
            .zip(&numeric)
            .map(|((n, &w), &right)| pad(n, w, right))
            .collect::<Vec<_>>()
            .join("  ")];
        for row in &rows {
            lines.push(
                row.iter()
                    .zip(&widths)
                    .map(|((t, right), &w)| pad(t, w, *right))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
        }
        let total = self.num_rows();
        if total > rows.len() {
            lines.push(format!("… {} more rows", total - rows.len()));
        }
        lines.push(format!("[{total} rows x {} columns]", names.len()));
        lines.join("\n")
    }

    /// The first rows as an HTML table, for notebooks.
    fn _repr_html_(&self) -> String {
        let names = self.column_names();
        let rows = self.texts(HTML_ROWS);
        let mut html = String::from("<table class=\"spprof-table\"><thead><tr>");
        for n in &names {
            html.push_str(&format!("<th>{}</th>", xml_escape(n)));
        }
        html.push_str("</tr></thead><tbody>");
        for row in &rows {
            html.push_str("<tr>");
            for (t, right) in row {
                let align = if *right {
                    " style=\"text-align:right\""
                } else {
                    ""
                };
                html.push_str(&format!("<td{align}>{}</td>", xml_escape(t)));
            }
            html.push_str("</tr>");
        }
        let total = self.num_rows();
        let shown = if total > rows.len() {
            format!("first {} of ", rows.len())
        } else {
            String::new()
        };
        html.push_str(&format!(
            "</tbody></table><p>{shown}{total} rows × {} columns</p>",
            names.len()
        ));
        html
    }
}

impl ArrowTable {
    /// (batch, row in it) of every row, in order.
    fn row_positions(&self) -> impl Iterator<Item = (&RecordBatch, usize)> {
        self.batches
            .iter()
            .flat_map(|b| (0..b.num_rows()).map(move |i| (b, i)))
    }

    /// The first `n` rows as text.
    fn texts(&self, n: usize) -> Vec<Vec<(String, bool)>> {
        self.row_positions()
            .take(n)
            .map(|(b, i)| b.columns().iter().map(|c| text(c.as_ref(), i)).collect())
            .collect()
    }
}

fn parse_kind(kind: &str) -> PyResult<Kind> {
    Kind::parse(kind).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown Arrow table kind '{kind}'; kinds: {}",
            KINDS.map(|k| format!("'{k}'")).join(", ")
        ))
    })
}

/// The profile as an Arrow table of `kind` ("samples" or "frames"); the weight column is named
/// `weight_column` ("weight_ns" for CPU profiles, "weight_bytes" for memory profiles).
#[pyfunction]
#[pyo3(signature = (data, kind = "samples", weight_column = arrow::WEIGHT_NS))]
pub fn to_arrow(
    py: Python<'_>,
    data: &Bound<'_, ProfileData>,
    kind: &str,
    weight_column: &str,
) -> PyResult<ArrowTable> {
    let kind = parse_kind(kind)?;
    arrow::check_weight_column(weight_column).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let store = data.get().store().clone();
    let table = py
        .detach(|| arrow::build(&store, kind, weight_column))
        .map_err(arrow_error)?;
    Ok(ArrowTable::new(table))
}

fn run_file_error(path: &Path, e: ArrowError) -> PyErr {
    match e {
        ArrowError::IoError(msg, _) => {
            PyOSError::new_err(format!("cannot write {}: {msg}", path.display()))
        }
        other => PyValueError::new_err(format!("{}: {other}", path.display())),
    }
}

/// Write the pytest plugin's whole-run Arrow IPC file (see `spprof_engine::export::run_file`): the
/// samples of `chunks` (profile, CLOCK_MONOTONIC origin of its timestamps, the role of each of its
/// frames: 0 plain, 1 harness, 2 entry) that fall inside one of `windows` (t0, t1, index into
/// `test_ids`), sorted by t0, less those of `report_thread` during `reports` (sorted spans).
/// Returns the samples written.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // the plugin's one call, each argument a different input
pub fn write_run(
    py: Python<'_>,
    path: PathBuf,
    chunks: Vec<(Bound<'_, ProfileData>, i64, Vec<u8>)>,
    mut windows: Vec<(i64, i64, i32)>,
    test_ids: Vec<String>,
    mut reports: Vec<(i64, i64)>,
    report_thread: u64,
) -> PyResult<u64> {
    windows.sort_unstable();
    reports.sort_unstable();
    if let Some(&(_, _, bad)) = windows
        .iter()
        .find(|w| w.2 < 0 || w.2 as usize >= test_ids.len())
    {
        return Err(PyValueError::new_err(format!(
            "window test index {bad} is outside the {} test ids",
            test_ids.len()
        )));
    }
    let stores: Vec<(Arc<Store>, i64, Vec<u8>)> = chunks
        .into_iter()
        .map(|(data, origin, roles)| (data.get().store().clone(), origin, roles))
        .collect();
    if let Some((store, _, roles)) = stores
        .iter()
        .find(|(store, _, roles)| !roles.is_empty() && roles.len() != store.frames().len())
    {
        return Err(PyValueError::new_err(format!(
            "{} frame roles for a profile of {} frames",
            roles.len(),
            store.frames().len()
        )));
    }
    let windows: Vec<Window> = windows
        .into_iter()
        .map(|(t0, t1, test)| Window { t0, t1, test })
        .collect();
    py.detach(|| {
        let chunks: Vec<Chunk> = stores
            .iter()
            .map(|(store, origin_ns, roles)| Chunk {
                store,
                origin_ns: *origin_ns,
                roles,
            })
            .collect();
        let reports = Reports {
            spans: &reports,
            thread: report_thread,
        };
        run_file::write(&path, &chunks, &windows, &test_ids, &reports)
    })
    .map_err(|e| run_file_error(&path, e))
}

/// Join run files (one per pytest-xdist worker) into one; returns the samples in it.
#[pyfunction]
pub fn merge_runs(py: Python<'_>, path: PathBuf, parts: Vec<PathBuf>) -> PyResult<u64> {
    py.detach(|| run_file::merge(&path, &parts))
        .map_err(|e| run_file_error(&path, e))
}
