//! Function names from an ELF file's `.symtab`, for native frames that `dladdr` cannot name:
//! `dladdr` sees only the dynamic (exported) symbols, so static functions of the interpreter or
//! an extension (`cfunction_vectorcall_O`, `_ctypes_callproc`, ...) would otherwise show as
//! `library+0xoffset`. Read once per library, off the signal path; stripped files have no
//! `.symtab` and keep the offset form.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const SHT_SYMTAB: u32 = 2;
const STT_FUNC: u8 = 2;
const ET_EXEC: u16 = 2;

/// Sized function symbols of one file, sorted by start address (file virtual addresses).
pub struct SymbolTable {
    /// Executables not built position-independent use absolute addresses.
    absolute: bool,
    functions: Vec<(u64, u64, String)>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl SymbolTable {
    /// Parse a 64-bit little-endian ELF file; `None` if it is not one or has no `.symtab`.
    pub fn parse(b: &[u8]) -> Option<SymbolTable> {
        if b.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let e_type = u16_at(b, 0x10)?;
        let shoff = u64_at(b, 0x28)? as usize;
        let shentsize = u16_at(b, 0x3a)? as usize;
        let shnum = u16_at(b, 0x3c)? as usize;
        let section = |i: usize| -> Option<(u32, usize, usize, usize)> {
            let h = shoff + i * shentsize;
            Some((
                u32_at(b, h + 4)?,
                u64_at(b, h + 0x18)? as usize,
                u64_at(b, h + 0x20)? as usize,
                u32_at(b, h + 0x28)? as usize,
            ))
        };
        let (_, sym_off, sym_size, link) =
            (0..shnum).filter_map(section).find(|s| s.0 == SHT_SYMTAB)?;
        let (_, str_off, str_size, _) = section(link)?;
        let strings = b.get(str_off..str_off + str_size)?;
        let mut functions = Vec::new();
        for sym in b.get(sym_off..sym_off + sym_size)?.chunks_exact(24) {
            let (name, info) = (u32_at(sym, 0)? as usize, sym[4]);
            let (shndx, value, size) = (u16_at(sym, 6)?, u64_at(sym, 8)?, u64_at(sym, 16)?);
            if info & 0xf != STT_FUNC || shndx == 0 || size == 0 {
                continue;
            }
            let end = strings[name.min(strings.len())..]
                .iter()
                .position(|&c| c == 0);
            if let Some(len) = end {
                let text = String::from_utf8_lossy(&strings[name..name + len]).into_owned();
                functions.push((value, value + size, text));
            }
        }
        functions.sort_unstable_by_key(|f| f.0);
        Some(SymbolTable {
            absolute: e_type == ET_EXEC,
            functions,
        })
    }

    /// The function containing `addr` of an object loaded at `base`.
    pub fn lookup(&self, addr: u64, base: u64) -> Option<&str> {
        let vaddr = if self.absolute {
            addr
        } else {
            addr.wrapping_sub(base)
        };
        let i = self.functions.partition_point(|f| f.0 <= vaddr);
        let (start, end, name) = self.functions.get(i.checked_sub(1)?)?;
        (*start <= vaddr && vaddr < *end).then_some(name.as_str())
    }
}

/// The symbol table of the file at `path`, read once per process (`None` cached too).
pub fn table_of(path: &str) -> Option<Arc<SymbolTable>> {
    static TABLES: Mutex<Option<HashMap<String, Option<Arc<SymbolTable>>>>> = Mutex::new(None);
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    tables
        .get_or_insert_with(HashMap::new)
        .entry(path.to_string())
        .or_insert_with(|| {
            std::fs::read(path)
                .ok()
                .and_then(|bytes| SymbolTable::parse(&bytes))
                .map(Arc::new)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_test_binary_names_a_static_function() {
        #[inline(never)]
        fn marker_function_for_symtab(x: u64) -> u64 {
            x.wrapping_mul(3)
        }
        std::hint::black_box(marker_function_for_symtab(7));
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let table = table_of(exe.to_str().unwrap()).expect("test binaries keep .symtab");
        let addr = marker_function_for_symtab as *const () as u64;
        // SAFETY: zeroed out-parameter; dladdr reads the loader's tables.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        assert_ne!(
            unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) },
            0
        );
        let name = table.lookup(addr, info.dli_fbase as u64).unwrap();
        assert!(name.contains("marker_function_for_symtab"), "{name}");
        assert!(SymbolTable::parse(b"not an elf file").is_none());
    }
}
