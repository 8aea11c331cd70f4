//! Arrow tables for Python through the Arrow PyCapsule interface: `ArrowTable` hands out C
//! streams (`__arrow_c_stream__`) over record batches that point into the profile's store, so
//! pyarrow, polars, pandas and duckdb import them without a copy and without pyarrow being a
//! dependency of spprof.

use super::profile_data::ProfileData;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};
use pyo3::IntoPyObjectExt;
use spprof_engine::export::arrow::arrow_array::cast::AsArray;
use spprof_engine::export::arrow::arrow_array::ffi::FFI_ArrowSchema;
use spprof_engine::export::arrow::arrow_array::ffi_stream::FFI_ArrowArrayStream;
use spprof_engine::export::arrow::arrow_array::types::{Float64Type, Int64Type, UInt32Type};
use spprof_engine::export::arrow::arrow_array::Array;
use spprof_engine::export::arrow::arrow_array::{RecordBatch, RecordBatchIterator};
use spprof_engine::export::arrow::arrow_schema::{ArrowError, DataType, SchemaRef};
use spprof_engine::export::arrow::{self, Kind, Table, KINDS};
use spprof_engine::export::run_file::{self, Chunk, Window};
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

/// Row `i` of `column` as a Python value.
fn cell<'py>(py: Python<'py>, column: &dyn Array, i: usize) -> PyResult<Bound<'py, PyAny>> {
    if column.is_null(i) {
        return Ok(py.None().into_bound(py));
    }
    match column.data_type() {
        DataType::Int64 => column
            .as_primitive::<Int64Type>()
            .value(i)
            .into_bound_py_any(py),
        DataType::UInt32 => column
            .as_primitive::<UInt32Type>()
            .value(i)
            .into_bound_py_any(py),
        DataType::Float64 => column
            .as_primitive::<Float64Type>()
            .value(i)
            .into_bound_py_any(py),
        DataType::Boolean => column.as_boolean().value(i).into_bound_py_any(py),
        DataType::Utf8 => column.as_string::<i32>().value(i).into_bound_py_any(py),
        other => Err(PyValueError::new_err(format!(
            "rows() reads numbers and strings, not {other}: read this table with pyarrow or polars"
        ))),
    }
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

    /// The rows as tuples of Python values, for the tables whose columns are numbers and plain
    /// strings (the analysis tables); the samples and frames tables go through an Arrow reader.
    fn rows<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let mut out = Vec::with_capacity(self.num_rows());
        for batch in &self.batches {
            let columns = batch.columns();
            for i in 0..batch.num_rows() {
                let values = columns
                    .iter()
                    .map(|c| cell(py, c.as_ref(), i))
                    .collect::<PyResult<Vec<_>>>()?;
                out.push(PyTuple::new(py, values)?);
            }
        }
        Ok(out)
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

    fn __repr__(&self) -> String {
        let columns: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect();
        format!(
            "<spprof ArrowTable: {} rows in {} batches; {}>",
            self.num_rows(),
            self.batches.len(),
            columns.join(", ")
        )
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
/// samples of `chunks` (profile, CLOCK_MONOTONIC origin of its timestamps) that fall inside one
/// of `windows` (t0, t1, index into `test_ids`), sorted by t0. Returns the samples written.
#[pyfunction]
pub fn write_run(
    py: Python<'_>,
    path: PathBuf,
    chunks: Vec<(Bound<'_, ProfileData>, i64)>,
    mut windows: Vec<(i64, i64, i32)>,
    test_ids: Vec<String>,
) -> PyResult<u64> {
    windows.sort_unstable();
    if let Some(&(_, _, bad)) = windows
        .iter()
        .find(|w| w.2 < 0 || w.2 as usize >= test_ids.len())
    {
        return Err(PyValueError::new_err(format!(
            "window test index {bad} is outside the {} test ids",
            test_ids.len()
        )));
    }
    let stores: Vec<(Arc<Store>, i64)> = chunks
        .iter()
        .map(|(data, origin)| (data.get().store().clone(), *origin))
        .collect();
    let windows: Vec<Window> = windows
        .into_iter()
        .map(|(t0, t1, test)| Window { t0, t1, test })
        .collect();
    py.detach(|| {
        let chunks: Vec<Chunk> = stores
            .iter()
            .map(|(store, origin_ns)| Chunk {
                store,
                origin_ns: *origin_ns,
            })
            .collect();
        run_file::write(&path, &chunks, &windows, &test_ids)
    })
    .map_err(|e| run_file_error(&path, e))
}

/// Join run files (one per pytest-xdist worker) into one; returns the samples in it.
#[pyfunction]
pub fn merge_runs(py: Python<'_>, path: PathBuf, parts: Vec<PathBuf>) -> PyResult<u64> {
    py.detach(|| run_file::merge(&path, &parts))
        .map_err(|e| run_file_error(&path, e))
}
