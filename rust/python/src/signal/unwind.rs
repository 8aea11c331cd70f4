//! Native (C, C++, Rust) stack unwinding: the module list framehop unwinds with (built off the
//! signal path), and the unwinding itself, allocation-free, so the signal handler can use it.
//! Naming the frames is [`crate::resolve::symbols`]'s job.
//!
//! Modules come from `dl_iterate_phdr`: for every loaded object, its executable segments and its
//! `.eh_frame_hdr` / `.eh_frame` (found through `PT_GNU_EH_FRAME`). The unwind sections are copied
//! when the list is built, so a later `dlclose` cannot pull them from under a handler that is
//! unwinding; a stale module only makes addresses in its old range unwind badly. Stack memory is
//! read through [`safe_read`], so a bad frame ends the walk instead of faulting. Frames without
//! CFI fall back to frame pointers (framehop's rule).

use super::safe_read;
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, MustNotAllocateDuringUnwind, Unwinder,
};
use std::cell::UnsafeCell;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::Arc;

pub type Cache = CacheX86_64<MustNotAllocateDuringUnwind>;
type Native = UnwinderX86_64<Arc<[u8]>, MustNotAllocateDuringUnwind>;

/// The unwinder over the objects loaded when it was built.
pub struct ModuleList {
    unwinder: Native,
    /// `dlpi_adds + dlpi_subs` when built: a different count means objects were loaded or unloaded.
    pub generation: u64,
}

/// Count of objects ever loaded and unloaded (cheap; tells whether [`ModuleList`] is stale).
pub fn loader_generation() -> u64 {
    let mut generation = 0u64;
    extern "C" fn count(info: *mut libc::dl_phdr_info, _: usize, data: *mut libc::c_void) -> i32 {
        // SAFETY: dl_iterate_phdr passes a valid info and our own data pointer.
        unsafe { *(data as *mut u64) = (*info).dlpi_adds + (*info).dlpi_subs };
        1 // the counters are the same in every entry: stop after the first
    }
    // SAFETY: the callback only reads the info it is given.
    unsafe {
        libc::dl_iterate_phdr(
            Some(count),
            &mut generation as *mut u64 as *mut libc::c_void,
        )
    };
    generation
}

/// Decode the `eh_frame_ptr` field of an `.eh_frame_hdr` at `hdr` (DWARF pointer encoding).
fn eh_frame_address(hdr: &[u8], hdr_addr: u64) -> Option<u64> {
    if hdr.len() < 8 || hdr[0] != 1 {
        return None;
    }
    let enc = hdr[1];
    let field = hdr_addr + 4;
    let value = match enc & 0x0f {
        0x03 => u32::from_le_bytes(hdr[4..8].try_into().ok()?) as u64,
        0x0b => i32::from_le_bytes(hdr[4..8].try_into().ok()?) as i64 as u64,
        0x00 | 0x04 | 0x0c if hdr.len() >= 12 => u64::from_le_bytes(hdr[4..12].try_into().ok()?),
        _ => return None,
    };
    match enc & 0x70 {
        0x00 => Some(value),
        0x10 => Some(field.wrapping_add(value)),
        _ => None,
    }
}

struct Collected {
    modules: Vec<Module<Arc<[u8]>>>,
    generation: u64,
}

fn copy(addr: u64, len: u64) -> Arc<[u8]> {
    // SAFETY: callers pass ranges inside a loaded object's PT_LOAD segments, mapped while
    // dl_iterate_phdr holds the loader lock.
    Arc::from(unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) })
}

extern "C" fn collect(info: *mut libc::dl_phdr_info, _: usize, data: *mut libc::c_void) -> i32 {
    // SAFETY: dl_iterate_phdr passes a valid info; data is our `Collected`.
    let (info, out) = unsafe { (&*info, &mut *(data as *mut Collected)) };
    out.generation = info.dlpi_adds + info.dlpi_subs;
    let bias = info.dlpi_addr;
    // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let (mut start, mut end) = (u64::MAX, 0u64);
    let mut hdr = None;
    for ph in phdrs {
        if ph.p_type == libc::PT_LOAD && ph.p_flags & libc::PF_X != 0 {
            start = start.min(bias + ph.p_vaddr);
            end = end.max(bias + ph.p_vaddr + ph.p_memsz);
        } else if ph.p_type == libc::PT_GNU_EH_FRAME {
            hdr = Some((bias + ph.p_vaddr, ph.p_memsz));
        }
    }
    if start >= end {
        return 0;
    }
    let name = if info.dlpi_name.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(info.dlpi_name) }
            .to_string_lossy()
            .into_owned()
    };
    let path = if name.is_empty() {
        std::fs::read_link("/proc/self/exe")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        name
    };
    let mut section_info = ExplicitModuleSectionInfo::<Arc<[u8]>> {
        base_svma: 0,
        text_svma: Some(start - bias..end - bias),
        ..Default::default()
    };
    if let Some((hdr_addr, hdr_len)) = hdr {
        let hdr_bytes = copy(hdr_addr, hdr_len);
        // .eh_frame ends with the PT_LOAD segment that holds it (its exact size is not recorded).
        let segment_end = eh_frame_address(&hdr_bytes, hdr_addr).and_then(|eh| {
            phdrs
                .iter()
                .filter(|ph| ph.p_type == libc::PT_LOAD)
                .map(|ph| (bias + ph.p_vaddr, bias + ph.p_vaddr + ph.p_memsz))
                .find(|&(s, e)| s <= eh && eh < e)
                .map(|(_, e)| (eh, e))
        });
        if let Some((eh, eh_end)) = segment_end {
            section_info.eh_frame_hdr_svma = Some(hdr_addr - bias..hdr_addr - bias + hdr_len);
            section_info.eh_frame_hdr = Some(hdr_bytes);
            section_info.eh_frame_svma = Some(eh - bias..eh_end - bias);
            section_info.eh_frame = Some(copy(eh, eh_end - eh));
        }
    }
    out.modules
        .push(Module::new(path, start..end, bias, section_info));
    0
}

impl ModuleList {
    /// Enumerate the loaded objects (allocates; never from a signal handler).
    pub fn load() -> ModuleList {
        let mut c = Collected {
            modules: Vec::new(),
            generation: 0,
        };
        // SAFETY: the callback only reads what the loader passes and writes into `c`.
        unsafe {
            libc::dl_iterate_phdr(Some(collect), &mut c as *mut Collected as *mut libc::c_void)
        };
        let mut unwinder = Native::new();
        for m in c.modules {
            unwinder.add_module(m);
        }
        ModuleList {
            unwinder,
            generation: c.generation,
        }
    }

    /// Unwind from the given registers, writing code addresses (innermost first) into `out`;
    /// returns how many were written. No allocation, no lock: safe in a signal handler. Return
    /// addresses are stored minus one, so they fall inside the calling instruction's function.
    pub fn unwind(&self, cache: &mut Cache, ip: u64, sp: u64, bp: u64, out: &mut [u64]) -> usize {
        let mut n = 0;
        self.unwind_each(cache, ip, sp, bp, |pc, _| {
            out[n] = pc;
            n += 1;
            n < out.len()
        });
        n
    }

    /// Unwind from the given registers, calling `visit(pc, sp)` for each frame, innermost first,
    /// until it returns false: `pc` as for [`ModuleList::unwind`], `sp` the frame's stack
    /// pointer (its locals lie between it and the next frame's). No allocation, no lock.
    pub fn unwind_each(
        &self,
        cache: &mut Cache,
        ip: u64,
        sp: u64,
        bp: u64,
        mut visit: impl FnMut(u64, u64) -> bool,
    ) {
        let mut read_stack = |addr: u64| safe_read::load(addr as usize).ok_or(());
        let mut regs = UnwindRegsX86_64::new(ip, sp, bp);
        let mut address = FrameAddress::InstructionPointer(ip);
        loop {
            let pc = match address {
                FrameAddress::InstructionPointer(a) => a,
                FrameAddress::ReturnAddress(a) => a.get() - 1,
            };
            if !visit(pc, regs.sp()) {
                return;
            }
            match self
                .unwinder
                .unwind_frame(address, &mut regs, cache, &mut read_stack)
            {
                Ok(Some(ra)) => match FrameAddress::from_return_address(ra) {
                    Some(next) => address = next,
                    None => return,
                },
                _ => return,
            }
        }
    }
}

/// The calling thread's own native stack, innermost first, as `(pc, sp)` (see
/// [`ModuleList::unwind_each`]).
#[inline(never)]
pub fn capture(list: &ModuleList) -> Vec<(u64, u64)> {
    let (ip, sp, bp): (u64, u64, u64);
    // SAFETY: reads three registers of the current thread; no memory is touched.
    unsafe {
        std::arch::asm!("lea {ip}, [rip]", "mov {sp}, rsp", "mov {bp}, rbp",
            ip = out(reg) ip, sp = out(reg) sp, bp = out(reg) bp,
            options(nomem, nostack, preserves_flags));
    }
    let mut cache = Cache::new_in();
    let mut frames = Vec::new();
    list.unwind_each(&mut cache, ip, sp, bp, |pc, sp| {
        frames.push((pc, sp));
        frames.len() < MAX_NATIVE
    });
    frames
}

/// What the signal handler unwinds with: the current module list (replaced, off the signal
/// path, when objects are loaded or unloaded) and a pool of unwind caches.
pub struct NativeUnwind {
    list: AtomicPtr<ModuleList>,
    caches: Box<[CacheSlot]>,
}

struct CacheSlot {
    busy: AtomicBool,
    cache: UnsafeCell<Cache>,
}

/// Handlers running at once beyond this many unwind nothing (their samples keep their Python
/// frames only); each cache is a few tens of KiB.
const CACHES: usize = 8;
/// Native frames kept per sample.
pub const MAX_NATIVE: usize = 256;

// SAFETY: a cache is only touched by the handler that won its `busy` flag; the list pointer is
// replaced only while no handler can be using the old one (see `refresh`).
unsafe impl Sync for NativeUnwind {}
unsafe impl Send for NativeUnwind {}

impl NativeUnwind {
    pub fn new() -> NativeUnwind {
        NativeUnwind {
            list: AtomicPtr::new(Box::into_raw(Box::new(ModuleList::load()))),
            caches: (0..CACHES)
                .map(|_| CacheSlot {
                    busy: AtomicBool::new(false),
                    cache: UnsafeCell::new(Cache::new_in()),
                })
                .collect(),
        }
    }

    /// Unwind the interrupted context of a signal handler into `out` (innermost first).
    /// Async-signal-safe: no allocation, no lock, reads through `safe_read`.
    pub fn unwind_context(&self, context: *mut libc::c_void, out: &mut [u64]) -> usize {
        if context.is_null() {
            return 0;
        }
        // SAFETY: the kernel passes the interrupted context to an SA_SIGINFO handler.
        let gregs = unsafe { &(*(context as *const libc::ucontext_t)).uc_mcontext.gregs };
        let (ip, sp, bp) = (
            gregs[libc::REG_RIP as usize] as u64,
            gregs[libc::REG_RSP as usize] as u64,
            gregs[libc::REG_RBP as usize] as u64,
        );
        let Some(slot) = self.caches.iter().find(|c| {
            c.busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        }) else {
            return 0;
        };
        let list = self.list.load(Ordering::Acquire);
        // SAFETY: `refresh` frees a list only after every handler that could have loaded it has
        // left (the sampler's in-flight count); the slot's cache is ours until `busy` is cleared.
        let n = unsafe { (*list).unwind(&mut *slot.cache.get(), ip, sp, bp, out) };
        slot.busy.store(false, Ordering::Release);
        n
    }

    /// Rebuild the module list if objects were loaded or unloaded since (never from a handler).
    /// `quiesce` must return only once no handler still uses a list loaded before it was called.
    pub fn refresh(&self, quiesce: impl FnOnce()) {
        // SAFETY: the current list stays valid until replaced below, by this thread only.
        let stale =
            unsafe { (*self.list.load(Ordering::Acquire)).generation } != loader_generation();
        if !stale {
            return;
        }
        let fresh = Box::into_raw(Box::new(ModuleList::load()));
        let old = self.list.swap(fresh, Ordering::AcqRel);
        quiesce();
        // SAFETY: from Box::into_raw, and no handler uses it any more.
        drop(unsafe { Box::from_raw(old) });
    }
}

impl Drop for NativeUnwind {
    fn drop(&mut self) {
        // SAFETY: dropped after the sampler unpublished its state, so no handler is unwinding.
        drop(unsafe { Box::from_raw(self.list.load(Ordering::Acquire)) });
    }
}
