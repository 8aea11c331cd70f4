//! Flame graphs of finished profiles (`spprof_engine::export::flamegraph`), rendered without the GIL.

use super::profile_data::ProfileData;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use spprof_engine::export::flamegraph::{self, Options, Unit};
use std::io;

fn unit(unit: &str) -> PyResult<Unit> {
    Unit::parse(unit)
        .ok_or_else(|| PyValueError::new_err(format!("unit must be 'ns' or 'bytes', not {unit:?}")))
}

fn text(render: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> PyResult<String> {
    let mut out = Vec::new();
    render(&mut out).map_err(|e| PyValueError::new_err(format!("flame graph: {e}")))?;
    String::from_utf8(out).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// A weight as a person reads it ("12.3 ms", "4.0 MiB"): the one formatter of every front end.
#[pyfunction]
pub fn format_weight(value: i64, unit: &str) -> PyResult<String> {
    Ok(self::unit(unit)?.format(value))
}

/// Interactive SVG flame graph; `unit` is what the weights count: "ns" or "bytes".
#[pyfunction]
#[pyo3(signature = (data, title, unit = "ns"))]
pub fn flamegraph_svg(
    py: Python<'_>,
    data: &ProfileData,
    title: &str,
    unit: &str,
) -> PyResult<String> {
    let opts = Options {
        title,
        unit: self::unit(unit)?,
    };
    let store = data.store();
    py.detach(|| text(|out| flamegraph::write_svg(store, &opts, out)))
}

/// One self-contained HTML page: the SVG flame graph and a table of the top functions.
#[pyfunction]
#[pyo3(signature = (data, title, unit = "ns"))]
pub fn flamegraph_html(
    py: Python<'_>,
    data: &ProfileData,
    title: &str,
    unit: &str,
) -> PyResult<String> {
    let opts = Options {
        title,
        unit: self::unit(unit)?,
    };
    let store = data.store();
    py.detach(|| text(|out| flamegraph::write_html(store, &opts, out)))
}

/// Differential SVG flame graph: widths from `current`, red where it grew since `baseline`.
/// `normalize` scales the baseline to the current total first (changes of share).
#[pyfunction]
#[pyo3(signature = (baseline, current, title, unit = "ns", normalize = true))]
pub fn diff_flamegraph_svg(
    py: Python<'_>,
    baseline: &ProfileData,
    current: &ProfileData,
    title: &str,
    unit: &str,
    normalize: bool,
) -> PyResult<String> {
    let opts = Options {
        title,
        unit: self::unit(unit)?,
    };
    let (before, after) = (baseline.store(), current.store());
    py.detach(|| text(|out| flamegraph::write_diff_svg(before, after, &opts, normalize, out)))
}
