//! Turns the code pointers of raw samples into frames (qualified name, file, executing line),
//! with the GIL held, off the signal path.
//!
//! Soundness rests on one invariant: every code pointer in the ring belongs to a live code
//! object. It holds because a code object was on a thread's stack (hence alive) when it was
//! sampled, and because [`crate::cpython::code_watch`] drains the ring before any code object is freed.
//! The cache entry of a freed code object is forgotten, so a new code object that reuses the
//! address is resolved afresh and never mislabelled.

use crate::cpython::eval_loop::NativeRole;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;
use spprof_engine::store::{FrameId, Store};
use std::collections::HashMap;

struct CodeInfo {
    function: String,
    file: String,
    first_line: u32,
    /// Frame per instruction offset seen so far.
    frames: HashMap<i64, FrameId>,
}

/// Attribute names, created before the session lock is taken: pyo3's `intern!` may release the
/// GIL on first use, which must never happen while the lock is held (see `session`).
struct Names {
    function: Py<PyString>,
    file: Py<PyString>,
    first_line: Py<PyString>,
}

pub struct Resolver {
    codes: HashMap<usize, CodeInfo>,
    names: Names,
    /// Native code address → its frame, and what it is to the interpreter.
    natives: HashMap<u64, (FrameId, NativeRole)>,
}

fn attr_string(code: &Borrowed<'_, '_, PyAny>, name: &Bound<'_, PyString>) -> String {
    code.getattr(name)
        .ok()
        .and_then(|v| v.extract::<String>().ok())
        .unwrap_or_else(|| "<unknown>".to_owned())
}

impl Resolver {
    pub fn new(py: Python<'_>) -> Resolver {
        let function = crate::cpython::function_name_attribute(py);
        Resolver {
            natives: HashMap::new(),
            codes: HashMap::new(),
            names: Names {
                function: PyString::new(py, function).unbind(),
                file: PyString::new(py, "co_filename").unbind(),
                first_line: PyString::new(py, "co_firstlineno").unbind(),
            },
        }
    }

    /// The frame of a native code address (symbolized once), and its role.
    pub fn native_frame(&mut self, store: &mut Store, pc: u64) -> Option<(FrameId, NativeRole)> {
        if let Some(&known) = self.natives.get(&pc) {
            return Some(known);
        }
        let (name, library) = super::symbols::symbolize(pc);
        let role = NativeRole::of(&name);
        let id = store.intern_frame(&name, &library, 0, true)?;
        self.natives.insert(pc, (id, role));
        Some((id, role))
    }

    /// The frame of `code` executing at byte `offset`; `None` when the store's budget is spent.
    pub fn frame(
        &mut self,
        py: Python<'_>,
        store: &mut Store,
        code: usize,
        offset: i64,
    ) -> Option<FrameId> {
        if code == 0 {
            return store.intern_frame("<unknown>", "<unknown>", 0, false);
        }
        let names = &self.names;
        let info = self.codes.entry(code).or_insert_with(|| {
            // SAFETY: code is a live code object (module invariant); Borrowed takes no reference,
            // which matters when the object is being deallocated right now.
            let obj = unsafe { Borrowed::from_ptr(py, code as *mut ffi::PyObject) };
            let first_line = obj
                .getattr(names.first_line.bind(py))
                .ok()
                .and_then(|v| v.extract::<u32>().ok())
                .unwrap_or(0);
            CodeInfo {
                function: attr_string(&obj, names.function.bind(py)),
                file: attr_string(&obj, names.file.bind(py)),
                first_line,
                frames: HashMap::new(),
            }
        });
        if let Some(&id) = info.frames.get(&offset) {
            return Some(id);
        }
        let line = if offset < 0 || offset > i32::MAX as i64 {
            info.first_line
        } else {
            // SAFETY: live code object (module invariant); Addr2Line only reads it.
            let line =
                unsafe { ffi::PyCode_Addr2Line(code as *mut ffi::PyCodeObject, offset as i32) };
            if line > 0 {
                line as u32
            } else {
                info.first_line
            }
        };
        let id = store.intern_frame(&info.function, &info.file, line, false)?;
        info.frames.insert(offset, id);
        Some(id)
    }

    /// The code object at `code` is being freed: its address may be reused.
    pub fn forget(&mut self, code: usize) {
        self.codes.remove(&code);
    }
}
