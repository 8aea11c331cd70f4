//! Finished profiles, exposed to Python: the profile object, Arrow tables and run files, the
//! engine's analysis and flame graphs.

pub mod analysis;
pub mod arrow;
pub mod flamegraph;
pub mod profile_data;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<profile_data::ProfileData>()?;
    m.add_class::<arrow::ArrowTable>()?;
    m.add_function(wrap_pyfunction!(arrow::to_arrow, m)?)?;
    m.add_function(wrap_pyfunction!(arrow::write_run, m)?)?;
    m.add_function(wrap_pyfunction!(arrow::merge_runs, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::analysis_top, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::analysis_threads, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::analysis_diff, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::select_window, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::select_frames, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::frames_of, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::below_launcher, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::starting_at, m)?)?;
    m.add_function(wrap_pyfunction!(flamegraph::format_weight, m)?)?;
    m.add_function(wrap_pyfunction!(flamegraph::flamegraph_svg, m)?)?;
    m.add_function(wrap_pyfunction!(flamegraph::flamegraph_html, m)?)?;
    m.add_function(wrap_pyfunction!(flamegraph::diff_flamegraph_svg, m)?)?;
    Ok(())
}
