//! Memory reads that survive a bad address, for the frame walker.
//!
//! The walker reads the interpreter's frame chain at arbitrary instructions, and the chain is not
//! always consistent there. Example (3.11/3.12, `_PyEval_EvalFrameDefault`'s prologue): the thread
//! state points to the new C-stack `_PyCFrame` before that struct's `current_frame` is written, so
//! a signal in between finds stack garbage where the top frame pointer should be. Following it can
//! touch an unmapped page. CPython's own faulthandler crashes on exactly that state.
//!
//! So every walker read goes through [`load`]: one `mov` in a tiny assembly function. A SIGSEGV or
//! SIGBUS whose faulting instruction is that `mov` is answered by our fault handler, which moves
//! the instruction pointer to a landing pad returning "failed"; every other fault goes to the
//! handler that was installed before ours (Python's faulthandler, or the default action), as if we
//! were not there. The normal path costs a call; no fault, no system call.
//!
//! The handler is installed when a profiler starts and re-checked at every start. A fault handler
//! installed later by someone else (e.g. `faulthandler.enable()` after `spprof.start()`) would see
//! our recoverable faults first; `start()` puts ours back in front (chaining to theirs).

use super::action;

#[cfg(target_arch = "x86_64")]
std::arch::global_asm!(
    ".pushsection .text.spprof_safe_load,\"ax\",@progbits",
    ".p2align 4",
    ".globl spprof_safe_load",
    ".hidden spprof_safe_load",
    ".type spprof_safe_load,@function",
    // (addr: rdi) -> (value: rax, ok: rdx)
    "spprof_safe_load:",
    "mov rax, qword ptr [rdi]",
    "mov edx, 1",
    "ret",
    ".globl spprof_safe_load_failed",
    ".hidden spprof_safe_load_failed",
    ".type spprof_safe_load_failed,@function",
    "spprof_safe_load_failed:",
    "xor eax, eax",
    "xor edx, edx",
    "ret",
    ".popsection",
);

#[repr(C)]
struct Loaded {
    value: u64,
    ok: u64,
}

#[cfg(target_arch = "x86_64")]
extern "C" {
    fn spprof_safe_load(addr: usize) -> Loaded;
    fn spprof_safe_load_failed() -> Loaded;
}

/// The 8 bytes at `addr` (any alignment), or `None` when reading them faults.
#[inline]
pub fn load(addr: usize) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the load's only failure mode, a fault, is turned into ok = 0 by `on_fault`
        // (installed before any walk); the function has the C ABI declared above.
        let r = unsafe { spprof_safe_load(addr) };
        (r.ok != 0).then_some(r.value)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // SAFETY: no fault recovery on this architecture: the caller's plausibility checks are
        // all there is (see the walker).
        Some(unsafe { std::ptr::read_volatile(addr as *const u64) })
    }
}

const SIGNALS: [i32; 2] = [libc::SIGSEGV, libc::SIGBUS];

/// Install the fault handler in front of whatever handles SIGSEGV/SIGBUS now (idempotent).
/// SA_ONSTACK: a stack overflow must reach the previous handler on the alternate stack;
/// SA_NODEFER: a fault inside a chained handler is delivered, not left pending forever.
pub fn install() -> Result<(), String> {
    for sig in SIGNALS {
        action::install(sig, on_fault, libc::SA_ONSTACK | libc::SA_NODEFER)?;
    }
    Ok(())
}

extern "C" fn on_fault(sig: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    #[cfg(target_arch = "x86_64")]
    if !context.is_null() {
        // SAFETY: the kernel passes the interrupted context of an SA_SIGINFO handler.
        let uc = unsafe { &mut *(context as *mut libc::ucontext_t) };
        let rip = &mut uc.uc_mcontext.gregs[libc::REG_RIP as usize];
        if *rip as usize == spprof_safe_load as *const () as usize {
            *rip = spprof_safe_load_failed as *const () as usize as i64;
            return;
        }
    }
    // Not ours: the previous handler's, or the default action. Returning re-executes the
    // faulting instruction, which then terminates the process (with a core dump where enabled).
    if action::chain(sig, info, context) != action::Previous::Called {
        action::reset_to_default(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmapped_and_mapped_addresses() {
        install().unwrap();
        let x: u64 = 0x1122_3344_5566_7788;
        assert_eq!(load(&x as *const u64 as usize), Some(x));
        assert_eq!(load(8), None); // the zero page is never mapped
        assert_eq!(load(0x7fff_ffff_0000_0000 & !7), None);
        // SAFETY: a fresh anonymous mapping, unmapped again before it is read.
        let page = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            libc::munmap(p, 4096);
            p as usize
        };
        assert_eq!(load(page), None);
    }
}
