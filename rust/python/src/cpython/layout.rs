//! The running interpreter's layout: which offset table the walker reads with, the refusals
//! (unsupported version, free-threaded build, a published layout that differs from the table),
//! and the start-time verification of every field the walker and the thread code read.

use super::offsets::{self, FrameLayout, Offsets, FRAME_OWNED_BY_THREAD};
use super::{debug_offsets, thread_state};
use crate::signal::safe_read;
use crate::signal::walker::Walker;
use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCFunction, PyDict, PyTuple};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;

/// Test hook: pretend to be 3.<minor> (−1 = the real version).
static MINOR_OVERRIDE: AtomicI32 = AtomicI32::new(-1);
/// Test hook: add a delta to one field of the table (a patch release that moved a field).
static SHIFT: Mutex<Option<(&'static str, isize)>> = Mutex::new(None);

/// Python frames the verification recurses through (fewer near the recursion limit), so that
/// the walk it checks spans more than one chunk of the thread's data stack (16 KiB each; a
/// frame takes 130 bytes or more).
const PROBE_DEPTH: usize = 250;

pub fn set_minor_override(minor: Option<u8>) {
    MINOR_OVERRIDE.store(minor.map_or(-1, i32::from), Ordering::Relaxed);
}

/// Shift field `name` of the table by `delta` bytes at the next starts (`None` undoes it).
pub fn set_shift(shift: Option<(&str, isize)>) -> Result<(), String> {
    let shift = match shift {
        None => None,
        Some((name, delta)) => {
            let name = Offsets::FIELD_NAMES
                .into_iter()
                .find(|&n| n == name)
                .ok_or_else(|| format!("no offset field named {name:?}"))?;
            Some((name, delta))
        }
    };
    *SHIFT.lock().unwrap_or_else(|e| e.into_inner()) = shift;
    Ok(())
}

pub fn offsets_for(major: u8, minor: u8) -> Option<Offsets> {
    offsets::ALL
        .into_iter()
        .find(|o| o.major == major && o.minor == minor)
}

/// The supported versions, as "3.9 to 3.15".
fn supported() -> String {
    let (first, last) = (offsets::ALL[0], offsets::ALL[offsets::ALL.len() - 1]);
    format!(
        "{}.{} to {}.{}",
        first.major, first.minor, last.major, last.minor
    )
}

pub fn free_threaded_refusal(version: &str) -> String {
    format!(
        "spprof does not support the free-threaded build of Python {version} (python{version}t): \
         its frames and thread states are laid out differently and other threads run while a \
         thread is sampled; use the default (GIL) build of Python {version}"
    )
}

/// The walker for this interpreter, verified against it, or the reason there is none.
pub fn walker(py: Python<'_>) -> PyResult<Walker> {
    // Every walk reads through safe_read, whose fault recovery must be in place first (and in
    // front of any fault handler installed since the previous start).
    safe_read::install().map_err(PyRuntimeError::new_err)?;
    let info = py.version_info();
    let minor = match MINOR_OVERRIDE.load(Ordering::Relaxed) {
        -1 => info.minor,
        m => m as u8,
    };
    let version = format!("{}.{}", info.major, minor);
    let free_threaded = py
        .import("sysconfig")?
        .call_method1("get_config_var", ("Py_GIL_DISABLED",))?
        .extract::<Option<i64>>()?
        .unwrap_or(0)
        != 0;
    if free_threaded {
        return Err(PyRuntimeError::new_err(free_threaded_refusal(&version)));
    }
    let mut table = offsets_for(info.major, minor).ok_or_else(|| {
        PyRuntimeError::new_err(format!(
            "spprof cannot profile Python {version}: it knows the interpreter internals of \
             CPython {} only; run under one of those versions",
            supported()
        ))
    })?;
    if let Some((name, delta)) = *SHIFT.lock().unwrap_or_else(|e| e.into_inner()) {
        if let Some(field) = table.field_mut(name) {
            *field = field.wrapping_add_signed(delta);
        }
    }
    let off = if minor == info.minor {
        debug_offsets::apply(table).map_err(PyRuntimeError::new_err)?
    } else {
        table
    };
    let walker = Walker {
        off,
        // Taking the address of the static reads nothing.
        code_type: std::ptr::addr_of_mut!(ffi::PyCode_Type) as usize,
    };
    verify(py, &walker).map_err(|what| {
        PyRuntimeError::new_err(format!(
            "spprof cannot verify how this interpreter (Python {}) lays out its frames and \
             thread states: {what}. Profiling would produce wrong stacks, so it was not \
             started; please report this with the output of `python -VV`",
            Python::version_str()
        ))
    })?;
    Ok(walker)
}

/// Code-object addresses of the calling thread's stack as the walker sees it, innermost first.
pub fn walk_current(py: Python<'_>, walker: &Walker) -> Vec<usize> {
    walk_here(py, walker).into_iter().map(|f| f.0).collect()
}

/// `(code, instruction offset, eval-loop entry)` of each frame of the calling thread,
/// innermost first.
fn walk_here(py: Python<'_>, walker: &Walker) -> Vec<(usize, i64, bool)> {
    let mut frames = Vec::new();
    // SAFETY: the calling thread's own thread state; it runs this code, so its chain is stable.
    unsafe {
        walker.walk(thread_state::current(py), true, |code, offset, entry| {
            frames.push((code, offset, entry));
            true
        })
    };
    frames
}

/// A word of the calling thread's own state, read so that a wrong offset cannot crash.
fn word(base: usize, offset: usize) -> Option<u64> {
    safe_read::load(base.checked_add(offset)?)
}

/// Check every field the walker and the thread code read against what the interpreter itself
/// says (the C API, `threading`, the interpreter's frame objects); the error names the fields to blame.
fn verify(py: Python<'_>, walker: &Walker) -> Result<(), String> {
    let off = &walker.off;
    let ts = thread_state::current(py);
    let threading = py.import("threading").map_err(|e| e.to_string())?;
    let call = |name: &str| -> Result<u64, String> {
        threading
            .call_method0(name)
            .and_then(|v| v.extract::<u64>())
            .map_err(|e| e.to_string())
    };
    let ident = call("get_ident")?;
    if word(ts, off.tstate_thread_id) != Some(ident) {
        return Err("the thread state's thread_id (tstate_thread_id) is not this thread's".into());
    }
    if off.tstate_native_thread_id != usize::MAX
        && word(ts, off.tstate_native_thread_id) != Some(call("get_native_id")?)
    {
        return Err(
            "the thread state's native_thread_id (tstate_native_thread_id) is not this \
                    thread's"
                .into(),
        );
    }
    // SAFETY: GIL held; returns the calling thread's dict (created if needed), borrowed.
    let dict = unsafe { ffi::PyThreadState_GetDict() } as u64;
    if dict == 0 || word(ts, off.tstate_dict) != Some(dict) {
        return Err("the thread state's dict (tstate_dict) is not PyThreadState_GetDict()".into());
    }
    // The frame walk, deep enough to span data-stack chunks, against the frame objects.
    let walker = *walker;
    let check = PyCFunction::new_closure(
        py,
        None,
        None,
        move |args: &Bound<'_, PyTuple>, _: Option<&Bound<'_, PyDict>>| -> PyResult<String> {
            Ok(compare_frames(args.py(), &walker).err().unwrap_or_default())
        },
    )
    .map_err(|e| e.to_string())?;
    let limit: usize = py
        .import("sys")
        .and_then(|sys| sys.call_method0("getrecursionlimit"))
        .and_then(|v| v.extract())
        .map_err(|e| e.to_string())?;
    let depth = PROBE_DEPTH.min(limit.saturating_sub(walk_here(py, &walker).len() + 50));
    let failure: String = probe(py)
        .and_then(|probe| probe.call1((depth, check)))
        .and_then(|r| r.extract())
        .map_err(|e| e.to_string())?;
    if failure.is_empty() {
        Ok(())
    } else {
        Err(failure)
    }
}

/// `probe(depth, check)`: calls `check()` from a generator `depth` Python frames down, so the
/// walk holds frames of both owners (the thread's data stack and a generator), and eval-loop
/// entries where C called Python (the outermost probe frame and the generator).
fn probe(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    static PROBE: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    PROBE
        .get_or_try_init(py, || {
            let code = c"def probe(depth, check):\n    \
                          return probe(depth - 1, check) if depth > 0 else next(generator(check))\n\
                          def generator(check):\n    \
                          yield check()\n";
            let module = PyModule::from_code(py, code, c"<spprof-verify>", c"spprof_verify")?;
            Ok::<_, PyErr>(module.getattr("probe")?.unbind())
        })
        .map(|p| p.bind(py).clone())
}

/// Compare the walk of the calling thread with its frame objects (as `sys._getframe()` shows them): the same code objects, the
/// same instruction offsets (`f_lasti`), and each code's `_co_firsttraceable` at its RESUME.
fn compare_frames(py: Python<'_>, walker: &Walker) -> Result<(), String> {
    let off = &walker.off;
    let walked = walk_here(py, walker);
    let mut expected = Vec::new();
    let python_err = |e: PyErr| e.to_string();
    // The interpreter's own current frame (what `sys._getframe()` returns, which a test may
    // have monkeypatched away).
    // SAFETY: GIL held; PyEval_GetFrame returns a borrowed reference to the current frame,
    // non-null here as Python code (the probe) is running on this thread.
    let mut frame = unsafe {
        Bound::from_borrowed_ptr_or_err(py, ffi::PyEval_GetFrame() as *mut ffi::PyObject)
    }
    .map_err(python_err)?;
    while !frame.is_none() {
        let code = frame.getattr("f_code").map_err(python_err)?;
        let lasti: i64 = frame
            .getattr("f_lasti")
            .and_then(|v| v.extract())
            .map_err(python_err)?;
        expected.push((code.as_ptr() as usize, lasti));
        frame = frame.getattr("f_back").map_err(python_err)?;
    }
    let codes = |frames: &[(usize, i64)]| frames.iter().map(|f| f.0).collect::<Vec<_>>();
    let walked_at = walked.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>();
    if codes(&walked_at) != codes(&expected) {
        return Err(format!(
            "its frame walk saw {} frames where sys._getframe() shows {} (fields tstate_frame, \
             cframe_current_frame, frame_back, frame_code, frame_owner, stackref_tag_bits, \
             frame_instr, code_code_adaptive, code_firsttraceable, tstate_datastack_chunk, \
             tstate_datastack_top, chunk_previous, chunk_top, chunk_data)",
            walked.len(),
            expected.len()
        ));
    }
    if walked_at != expected {
        return Err(
            "instruction offsets differ from f_lasti (fields frame_instr, \
                    code_code_adaptive, frame_lasti_unit)"
                .into(),
        );
    }
    // The generator was entered from C (`next`) and so was the outermost probe frame; the
    // probe frames between are Python-to-Python calls, which 3.11+ run in the same eval loop.
    let depth = walked
        .iter()
        .skip(1)
        .take_while(|f| f.0 == walked[1].0)
        .count();
    let entries = walked[..=depth].iter().map(|f| f.2).collect::<Vec<_>>();
    let inlined = off.layout != FrameLayout::FrameObject;
    let expected_entries = (0..=depth)
        .map(|i| i == 0 || i == depth || !inlined)
        .collect::<Vec<_>>();
    if entries != expected_entries {
        return Err(
            "the eval-loop entry marks are wrong (fields frame_is_entry, frame_owner, \
                    frame_owner_shim)"
                .into(),
        );
    }
    check_data_stack_top(py, walker)?;
    if off.code_firsttraceable == usize::MAX {
        return Ok(());
    }
    for &(code, _, _) in walked.iter().take(2) {
        let first = word(code, off.code_firsttraceable).map(|w| w as u32 as usize);
        // SAFETY: a code object on this thread's stack, alive while the stack is.
        let code = unsafe { Borrowed::from_ptr(py, code as *mut ffi::PyObject) };
        let co_code = code.getattr("co_code").map_err(python_err)?;
        let bytes = co_code
            .cast::<PyBytes>()
            .map_err(|e| e.to_string())?
            .as_bytes();
        let resume = first
            .and_then(|i| bytes.get(2 * i))
            .map(|&op| usize::from(op));
        if resume != Some(off.code_resume_opcode) {
            return Err(
                "a code object's _co_firsttraceable is not at its RESUME instruction (fields \
                 code_firsttraceable, code_resume_opcode)"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The thread's data stack ends right after its innermost own frame (3.11+): a frame takes
/// `frame_size - 8` bytes of specials plus a word per local, cell, free variable and stack slot.
fn check_data_stack_top(py: Python<'_>, walker: &Walker) -> Result<(), String> {
    let off = &walker.off;
    if off.tstate_datastack_top == usize::MAX {
        return Ok(());
    }
    let ts = thread_state::current(py);
    // SAFETY: the calling thread's own state; every read below recovers from a fault.
    let mut frame = unsafe { walker.top_frame(ts) };
    for _ in 0..8 {
        let owner = word(frame, off.frame_owner).map(|w| w as u8);
        if owner == Some(FRAME_OWNED_BY_THREAD) {
            break;
        }
        frame = word(frame, off.frame_back).unwrap_or(0) as usize;
    }
    let code = word(frame, off.frame_code).unwrap_or(0) as usize & !off.stackref_tag_bits;
    if code == 0 || !walker.is_code(code) {
        return Err("no frame of this thread on its data stack (field frame_owner)".into());
    }
    // SAFETY: is_code: a code object on this thread's stack, alive while the stack is.
    let code = unsafe { Borrowed::from_ptr(py, code as *mut ffi::PyObject) };
    let count = |name: &str| -> usize {
        code.getattr(name)
            .and_then(|v| v.len().or_else(|_| v.extract::<usize>()))
            .unwrap_or(0)
    };
    let words =
        count("co_nlocals") + count("co_cellvars") + count("co_freevars") + count("co_stacksize");
    let specials_end = frame + off.frame_size - 8;
    let top = word(ts, off.tstate_datastack_top).unwrap_or(0) as usize;
    if top <= specials_end || top > specials_end + 8 * words {
        return Err(
            "the thread state's datastack_top is not the end of its innermost frame (fields \
             tstate_datastack_top, frame_size, frame_owner)"
                .into(),
        );
    }
    // The innermost own frame was pushed on the current chunk. The deep probe's walk cannot
    // catch a wrong chunk pointer: the walker's chain of chunks read from garbage may still
    // happen to span the probe's frames.
    let chunk = word(ts, off.tstate_datastack_chunk).unwrap_or(0) as usize;
    if chunk
        .checked_add(off.chunk_data)
        .is_none_or(|data| frame < data)
    {
        return Err(
            "the thread state's datastack_chunk does not hold its innermost frame (fields \
             tstate_datastack_chunk, chunk_data)"
                .into(),
        );
    }
    Ok(())
}
