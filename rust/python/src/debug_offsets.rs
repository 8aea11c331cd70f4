//! Start-time check of our generated offsets against the interpreter's own `_Py_DebugOffsets`.
//!
//! CPython 3.13+ publishes the offsets of its internal struct fields in
//! `_PyRuntime.debug_offsets` for out-of-process tools. The walker reads raw memory with offsets
//! generated from one particular build's headers; a build with a different layout (a patched or
//! differently configured interpreter) would be walked with wrong offsets. Comparing the two
//! tables before a profile starts turns that into a clear error.

use crate::offsets::{self, Offsets};

/// The `_Py_DebugOffsets.cookie` value.
const COOKIE: &[u8; 8] = b"xdebugpy";

/// Check `off` against the running interpreter's `_PyRuntime.debug_offsets`.
///
/// Returns `Ok(())` when the published values match, and also when there is nothing to check:
/// versions without a generated layout (before 3.13), and processes where `_PyRuntime` cannot
/// be found by `dlsym` (normally it is exported by libpython or the `python` executable, which
/// is linked with `-export-dynamic`; an embedding host that hides it simply goes unchecked).
/// Returns `Err(message)` when the cookie, version or any listed entry differs.
///
/// `off` must describe the running interpreter's minor version: for a 3.13+ layout the
/// `_PyRuntime` symbol is read as a 3.13+ `_PyRuntimeState`.
pub fn check(off: &Offsets) -> Result<(), String> {
    let Some(layout) = offsets::debug_offsets_layout(off.minor) else {
        return Ok(());
    };
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let rt = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_PyRuntime".as_ptr()) } as *const u8;
    if rt.is_null() {
        return Ok(());
    }
    let generated = format!("CPython {}.{}", off.major, off.minor);
    let differs = format!(
        "this interpreter build differs from the one spprof's offsets were generated from \
         ({generated} headers); refusing to profile it with wrong offsets"
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
    for &(name, pos) in layout.checks {
        let expected = off
            .field_by_name(name)
            .ok_or_else(|| format!("spprof: internal error: no Offsets field named {name:?}"))?;
        let found = read_u64(pos);
        if found != expected as u64 {
            return Err(format!(
                "spprof: offset mismatch for {name}: spprof expects {expected}, but the \
                 interpreter's _PyRuntime.debug_offsets says {found}; {differs}"
            ));
        }
    }
    Ok(())
}
