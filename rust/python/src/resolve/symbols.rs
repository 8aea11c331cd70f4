//! Native symbols, off the signal path: names of native frames (the loader's dynamic symbols,
//! else the file's `.symtab` through [`super::elf`]).

use super::elf;
use crate::cpython::eval_loop;
use std::ffi::CStr;

/// A native frame's name and library: the dynamic symbol `dladdr` finds, else the function of
/// the file's `.symtab` ([`super::elf`]), demangled; else `library+0xoffset`. Off the
/// signal path (dladdr takes the loader lock).
pub fn symbolize(addr: u64) -> (String, String) {
    let (name, library, _) = symbolize_resolved(addr);
    (name, library)
}

/// [`symbolize`], and whether a symbol was found (false for the `library+0xoffset` forms).
pub fn symbolize_resolved(addr: u64) -> (String, String, bool) {
    // SAFETY: zeroed is a valid Dl_info out-parameter; dladdr only reads the loader's tables.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0
        || info.dli_fname.is_null()
    {
        return (format!("{addr:#x}"), "<unknown>".into(), false);
    }
    // SAFETY: NUL-terminated strings owned by the loader.
    let library = unsafe { CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    if !info.dli_sname.is_null() {
        // SAFETY: as above.
        let raw = unsafe { CStr::from_ptr(info.dli_sname) }.to_string_lossy();
        return (demangle(&raw), library, true);
    }
    let base = info.dli_fbase as u64;
    if let Some(name) = elf::table_of(&library).and_then(|t| t.lookup(addr, base).map(demangle)) {
        return (name, library, true);
    }
    if eval_loop::contains(addr) {
        return (eval_loop::NAME.to_string(), library, true);
    }
    let short = library.rsplit('/').next().unwrap_or(&library).to_string();
    (
        format!("{short}+{:#x}", addr.wrapping_sub(base)),
        library,
        false,
    )
}

/// Rust and C++ (Itanium ABI) names demangled; anything else as it is.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(s) = sym.demangle(&cpp_demangle::DemangleOptions::default()) {
                return s;
            }
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_demangled() {
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_Z3fooiPKc"), "foo(int, char const*)");
        assert_eq!(demangle("PyObject_Vectorcall"), "PyObject_Vectorcall");
    }
}
