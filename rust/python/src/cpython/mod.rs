//! Everything that depends on the interpreter's version lives here, and no other module tests
//! the version: the rest of the crate reads interpreter structs through [`offsets::Offsets`],
//! whose fields also encode the per-version rules (how frames are linked and owned, which
//! frame starts an eval-loop run, the unit of the instruction offset, the tag bits of 3.14+
//! stack references, which thread-state fields exist).
//!
//! - [`offsets`]: the per-version tables, generated from each interpreter's headers by
//!   `scripts/gen_offsets.py`;
//! - [`debug_offsets`]: 3.13+ publish their layout in `_PyRuntime.debug_offsets`; start reads it
//!   and refuses a build whose layout differs from the table;
//! - [`layout`]: the table for the running interpreter, refusals (unsupported version,
//!   free-threaded build) and the start-time verification of every field used;
//! - [`thread_state`]: reading thread states (thread ids, the per-thread dict);
//! - [`code_watch`]: learning about code-object deallocation (resolve before free);
//! - [`eval_loop`]: which native code is the eval loop (for the Python/C merge).

pub mod code_watch;
pub mod debug_offsets;
pub mod eval_loop;
pub mod layout;
pub mod offsets;
pub mod thread_state;

use pyo3::prelude::*;

/// The code-object attribute holding a function's qualified name (`Class.method`): 3.11+ have
/// `co_qualname`; before, the plain `co_name` is all there is.
pub fn function_name_attribute(py: Python<'_>) -> &'static str {
    if py.version_info() >= (3, 11) {
        "co_qualname"
    } else {
        "co_name"
    }
}
