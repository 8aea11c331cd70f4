//! The bounds of a native function, from its object's `.eh_frame_hdr` search table (off the
//! signal path: `dl_iterate_phdr` takes the loader's lock).

/// The address range of the function holding `pc`, from its object's `.eh_frame_hdr` search
/// table: from the entry at or below `pc` to the next one. `None` where the table is missing or
/// uses an encoding other than the usual `udata4` count and `datarel sdata4` entries.
pub fn function_range(pc: u64) -> Option<std::ops::Range<u64>> {
    struct Search {
        pc: u64,
        found: Option<std::ops::Range<u64>>,
    }
    extern "C" fn visit(info: *mut libc::dl_phdr_info, _: usize, data: *mut libc::c_void) -> i32 {
        // SAFETY: dl_iterate_phdr passes a valid info; data is our `Search`.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
        let bias = info.dlpi_addr;
        // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        let holds_pc = phdrs.iter().any(|ph| {
            ph.p_type == libc::PT_LOAD
                && ph.p_flags & libc::PF_X != 0
                && (bias + ph.p_vaddr..bias + ph.p_vaddr + ph.p_memsz).contains(&search.pc)
        });
        let Some(hdr) = phdrs.iter().find(|ph| ph.p_type == libc::PT_GNU_EH_FRAME) else {
            return 0;
        };
        if !holds_pc {
            return 0;
        }
        let hdr = bias + hdr.p_vaddr;
        // SAFETY: the loaded object's .eh_frame_hdr, mapped while dl_iterate_phdr runs; its
        // 4-byte header and the table it describes lie within the segment.
        search.found = unsafe { search_table_range(hdr, search.pc) };
        1
    }
    let mut search = Search { pc, found: None };
    // SAFETY: the callback only reads what the loader passes and writes into `search`.
    unsafe { libc::dl_iterate_phdr(Some(visit), &mut search as *mut Search as *mut libc::c_void) };
    search.found
}

/// See [`function_range`].
///
/// # Safety
/// `hdr` must be the address of a mapped `.eh_frame_hdr`.
unsafe fn search_table_range(hdr: u64, pc: u64) -> Option<std::ops::Range<u64>> {
    let read = |at: u64, n: usize| -> &[u8] {
        // SAFETY: within the mapped section (caller's contract and the table's own count).
        unsafe { std::slice::from_raw_parts(at as *const u8, n) }
    };
    let head = read(hdr, 4);
    let (version, eh_frame_enc, count_enc, table_enc) = (head[0], head[1], head[2], head[3]);
    let eh_frame_len = match eh_frame_enc & 0x0f {
        0x03 | 0x0b => 4,
        0x00 | 0x04 | 0x0c => 8,
        _ => return None,
    };
    if version != 1 || count_enc != 0x03 || table_enc != 0x3b {
        return None;
    }
    let count_at = hdr + 4 + eh_frame_len;
    let count = u32::from_le_bytes(read(count_at, 4).try_into().ok()?) as usize;
    let table = read(count_at + 4, count * 8);
    let start = |i: usize| -> u64 {
        let v = i32::from_le_bytes(table[8 * i..8 * i + 4].try_into().unwrap_or_default());
        hdr.wrapping_add_signed(i64::from(v))
    };
    // The last entry starting at or below pc.
    let (mut low, mut high) = (0, count);
    while low < high {
        let mid = (low + high) / 2;
        if start(mid) <= pc {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    let i = low.checked_sub(1)?;
    let end = if i + 1 < count { start(i + 1) } else { pc + 1 };
    Some(start(i)..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::symbols::symbolize;
    use crate::signal::unwind::{capture, ModuleList};

    #[test]
    fn unwinds_its_own_stack_through_the_test_harness() {
        let list = ModuleList::load();
        let frames = capture(&list);
        assert!(frames.len() >= 3, "{} frames", frames.len());
        // The caller of `capture` is this test function, and the stack grows down.
        let (name, library) = symbolize(frames[1].0);
        assert!(
            name.contains("unwinds_its_own_stack"),
            "{name} in {library}"
        );
        assert!(frames.windows(2).all(|w| w[0].1 <= w[1].1));
        // Its function range holds it, and begins at the function's entry.
        let range = function_range(frames[1].0).expect("this test binary has .eh_frame_hdr");
        let entry = unwinds_its_own_stack_through_the_test_harness as *const () as u64;
        assert!(
            range.contains(&frames[1].0) && range.start == entry,
            "{range:x?} {entry:x}"
        );
    }
}
