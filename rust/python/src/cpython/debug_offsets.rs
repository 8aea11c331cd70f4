//! The interpreter's own account of its layout: `_PyRuntime.debug_offsets` (3.13+).
//!
//! CPython 3.13+ publish the offsets of their internal struct fields for out-of-process tools.
//! The walker reads raw memory with offsets generated from one particular build's headers; a
//! patch release or a differently configured build could move a field. Before a profile
//! starts, every field the interpreter publishes is taken from it, and a value that differs
//! from the generated table refuses the start, naming the field: the fields it does not publish
//! (the per-thread dict, `_co_firsttraceable`, the data-stack chunks) come from the same table
//! and would be as wrong.

use super::offsets::{self, Offsets};

/// The `_Py_DebugOffsets.cookie` value.
const COOKIE: &[u8; 8] = b"xdebugpy";

/// Return `off` with every field the running interpreter publishes in
/// `_PyRuntime.debug_offsets` read from there, or the reason the two disagree.
///
/// Versions without a published layout (before 3.13), and processes where `_PyRuntime` cannot
/// be found by `dlsym` (normally libpython or the `python` executable exports it; an embedding
/// host that hides it), keep the generated table; the start-time verification
/// ([`super::layout`]) checks it either way.
///
/// `off` must describe the running interpreter's minor version: for a 3.13+ layout the
/// `_PyRuntime` symbol is read as a 3.13+ `_PyRuntimeState`.
pub fn apply(mut off: Offsets) -> Result<Offsets, String> {
    let Some(layout) = offsets::debug_offsets_layout(off.minor) else {
        return Ok(off);
    };
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let rt = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_PyRuntime".as_ptr()) } as *const u8;
    if rt.is_null() {
        return Ok(off);
    }
    let generated = format!("CPython {}.{}", off.major, off.minor);
    let differs = format!(
        "this interpreter build differs from the one spprof's offsets were generated from \
         ({generated} headers); refusing to profile it with wrong offsets. Please report it \
         with the output of `python -VV`"
    );
    // SAFETY: `_PyRuntime` is a static `_PyRuntimeState` that lives for the whole process, and
    // `layout.cookie` + 8 lies within it (the table begins the struct and it is far larger).
    let cookie = unsafe { std::ptr::read_unaligned(rt.add(layout.cookie) as *const [u8; 8]) };
    if &cookie != COOKIE {
        return Err(format!(
            "spprof: _PyRuntime.debug_offsets has cookie b\"{}\", expected b\"{}\"; {differs}",
            cookie.escape_ascii(),
            COOKIE.escape_ascii(),
        ));
    }
    let read_u64 = |pos: usize| -> u64 {
        // SAFETY: as for the cookie: every generated position is inside the `_Py_DebugOffsets`
        // table at the start of the process-lifetime static `_PyRuntime`, which is valid to read.
        unsafe { std::ptr::read_unaligned(rt.add(pos) as *const u64) }
    };
    let version = read_u64(layout.version);
    let (major, minor) = ((version >> 24) & 0xff, (version >> 16) & 0xff);
    if (major, minor) != (u64::from(off.major), u64::from(off.minor)) {
        return Err(format!(
            "spprof: _PyRuntime.debug_offsets reports version {major}.{minor} \
             (PY_VERSION_HEX {version:#x}), expected {}.{}; {differs}",
            off.major, off.minor
        ));
    }
    if layout.free_threaded != usize::MAX && read_u64(layout.free_threaded) != 0 {
        return Err(super::layout::free_threaded_refusal(&format!(
            "{major}.{minor}"
        )));
    }
    let generated_table = off;
    for &(name, pos) in layout.checks {
        let field = off
            .field_mut(name)
            .ok_or_else(|| format!("spprof: internal error: no Offsets field named {name:?}"))?;
        let published = read_u64(pos);
        *field = usize::try_from(published).unwrap_or(usize::MAX);
        let expected = generated_table.field_by_name(name).unwrap_or(usize::MAX);
        if published != expected as u64 {
            return Err(format!(
                "spprof: offset mismatch for {name}: the interpreter's \
                 _PyRuntime.debug_offsets says {published}, spprof's table says {expected}; \
                 {differs}"
            ));
        }
    }
    Ok(off)
}
