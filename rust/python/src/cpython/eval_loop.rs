//! Which native code is the eval loop (`_PyEval_EvalFrameDefault`), for the Python/C merge.
//!
//! By name where the symbol tables say so. Distribution builds (Debian's 3.14 and 3.15) are
//! stripped and link-time optimized: the loop runs in a local clone of the function that no
//! dynamic symbol names. From 3.12 the eval loop keeps each run's entry shim frame in its own C
//! stack frame, so the native frame whose stack memory holds the calling thread's innermost
//! shim is the eval loop: located once per process, and its function's address range (from the
//! object's `.eh_frame_hdr` search table) is remembered.

use super::thread_state;
use crate::resolve::eh_frame;
use crate::signal::unwind::{self, ModuleList};
use crate::signal::walker::Walker;
use pyo3::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The eval loop's exported name; native frames found in its located code are named so too.
pub const NAME: &str = "_PyEval_EvalFrameDefault";

/// What a native frame is to the interpreter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NativeRole {
    /// One run of the eval loop, which stands for Python frames.
    EvalLoop,
    /// An instruction handler of the tail-calling interpreter (clang builds of 3.14+), called by
    /// the eval loop's frame: part of its run, not a function of its own.
    EvalHelper,
    /// Any other native function.
    Other,
}

impl NativeRole {
    /// The role of the native function called `symbol` (as [`crate::resolve::symbols::symbolize`] names it).
    pub fn of(symbol: &str) -> NativeRole {
        if symbol == NAME {
            NativeRole::EvalLoop
        } else if symbol.starts_with("_TAIL_CALL_") {
            NativeRole::EvalHelper
        } else {
            NativeRole::Other
        }
    }
}

static LOCATED: AtomicBool = AtomicBool::new(false);
static CODE: Mutex<Vec<Range<u64>>> = Mutex::new(Vec::new());

/// Whether `pc` lies in eval-loop code located by [`locate`].
pub fn contains(pc: u64) -> bool {
    CODE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|r| r.contains(&pc))
}

/// Locate the eval loop's code from the calling thread's stacks (once per process; GIL held).
/// Best effort: where it cannot be located, frames are recognised by name only.
pub fn locate(py: Python<'_>, walker: &Walker, list: &ModuleList) {
    if LOCATED.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: the calling thread's own thread state; it runs this code, so its chain is stable.
    let Some(shim) = (unsafe { walker.innermost_shim(thread_state::current(py)) }) else {
        return;
    };
    let frames = unwind::capture(list);
    let owner = frames
        .windows(2)
        .find(|w| (w[0].1..w[1].1).contains(&(shim as u64)));
    if let Some(range) = owner.and_then(|w| eh_frame::function_range(w[0].0)) {
        CODE.lock().unwrap_or_else(|e| e.into_inner()).push(range);
    }
}
