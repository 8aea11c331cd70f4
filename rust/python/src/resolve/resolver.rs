//! Turns the code pointers of raw samples into frames (qualified name, file, executing line),
//! with the GIL held, off the signal path.
//!
//! Soundness rests on one invariant: a code pointer is read only while its code object lives.
//! A code object was on a thread's stack (hence alive) when it was sampled, and
//! [`crate::cpython::code_watch`] tells the consumers before any code object is freed. They
//! drain the ring then, but a drain stops at a record still being written (by a thread without
//! the GIL, which may be preempted for milliseconds), and records behind it may name the dying
//! code. So the code is *retired* ([`Resolver::retire`]): its names are read while it lives,
//! and records reserved before its death are resolved from them, never from the pointer. A new
//! code object that reuses the address is resolved afresh and never mislabelled.

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

/// A freed code object's names, for the records reserved before it died.
struct Retired {
    /// Ring position (see `Ring::reserved_words`) when it died: it names records below it.
    until: u64,
    info: CodeInfo,
}

pub struct Resolver {
    codes: HashMap<usize, CodeInfo>,
    /// By address, the code objects that died while records that may name them were still in
    /// the ring (an address can be reused and die again).
    retired: HashMap<usize, Vec<Retired>>,
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
            retired: HashMap::new(),
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

    /// The frame of `code` executing at byte `offset`, in the record at ring position `at`;
    /// `None` when the store's budget is spent.
    pub fn frame(
        &mut self,
        py: Python<'_>,
        store: &mut Store,
        code: usize,
        offset: i64,
        at: u64,
    ) -> Option<FrameId> {
        if code == 0 {
            return store.intern_frame("<unknown>", "<unknown>", 0, false);
        }
        if let Some(dead) = self.retired_at(code, at) {
            // The object is gone: only lines already seen are known, else its first line.
            if let Some(&id) = dead.frames.get(&offset) {
                return Some(id);
            }
            return store.intern_frame(&dead.function, &dead.file, dead.first_line, false);
        }
        let info = self
            .codes
            .entry(code)
            .or_insert_with(|| CodeInfo::read(py, &self.names, code));
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

    /// The names `code` had when the record at `at` was made, if it has died since.
    fn retired_at(&self, code: usize, at: u64) -> Option<&CodeInfo> {
        // The earliest death after `at`: the address may have been reused and freed again.
        self.retired
            .get(&code)?
            .iter()
            .filter(|r| at < r.until)
            .min_by_key(|r| r.until)
            .map(|r| &r.info)
    }

    /// The code object at `code` is about to be freed (GIL held, the object still intact);
    /// `consumed` and `reserved` are its ring's positions after the last drain. Records
    /// reserved but not consumed may name it: its names are kept for them.
    pub fn retire(&mut self, py: Python<'_>, code: usize, consumed: u64, reserved: u64) {
        let info = self.codes.remove(&code);
        if consumed < reserved {
            let info = info.unwrap_or_else(|| CodeInfo::read(py, &self.names, code));
            self.retired.entry(code).or_default().push(Retired {
                until: reserved,
                info,
            });
        }
    }

    /// The ring was consumed up to `consumed`: retired names no record below it needs are let go.
    pub fn consumed_to(&mut self, consumed: u64) {
        self.retired.retain(|_, deaths| {
            deaths.retain(|r| r.until > consumed);
            !deaths.is_empty()
        });
    }
}

impl CodeInfo {
    /// Read the names of the live code object at `code`.
    fn read(py: Python<'_>, names: &Names, code: usize) -> CodeInfo {
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
    }
}
