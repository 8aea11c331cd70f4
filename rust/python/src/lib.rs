//! `spprof._native`: the CPython side of spprof. Each folder's rules are stated once, in its
//! `mod.rs`:
//!
//! - [`cpython`]: all interpreter-version knowledge (offset tables, the running interpreter's
//!   layout and its verification, thread-state readers, code-object watching);
//! - [`signal`]: ASYNC-SIGNAL-SAFE code: the sampling handler, the fault-tolerant reads, the
//!   frame walk, the native unwind, the sampled threads' slots;
//! - [`resolve`]: raw records to frames and stacks (GIL held), shared by CPU and memory;
//! - [`cpu`]: the CPU profiler: session, timers, thread discovery, its Python functions;
//! - [`memory`]: the memory profiler: ALLOCATOR-SAFE hooks, their installation, records, the
//!   live-heap session, its Python functions, the LD_PRELOAD library's connection;
//! - [`export`]: finished profiles: the profile object, Arrow, analysis, flame graphs;
//! - [`testing`]: `_native._testing`, hooks for the test suite only.

mod cpu;
mod cpython;
mod export;
mod memory;
mod resolve;
mod signal;
mod testing;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    cpu::api::register(m)?;
    memory::register(m)?;
    export::register(m)?;
    m.add_submodule(&testing::module(m.py())?)?;
    Ok(())
}
