//! SIGTERM in a profiled child process: the handler only wakes the thread that writes the
//! profile (see `cpu::sigterm`), through a pipe; that thread ends the process once it is written.
//!
//! Python's own handlers run in the main thread, between bytecodes. A pool worker blocked in a
//! semaphore when SIGTERM comes in just before the wait begins never runs one, and never dies:
//! `Pool.terminate()` then waits for it for ever. A handler that writes one byte has no such gap.

use std::sync::atomic::{AtomicI32, Ordering};

/// The pipe's write end, and the process it belongs to (a forked child inherits both).
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static OWNER: AtomicI32 = AtomicI32::new(0);

/// Route SIGTERM to `wake_fd`: one byte per signal. Nothing else happens until its reader acts.
pub fn install(wake_fd: i32) -> Result<(), String> {
    // SAFETY: getpid cannot fail.
    OWNER.store(unsafe { libc::getpid() }, Ordering::Release);
    WAKE_FD.store(wake_fd, Ordering::Release);
    // SAFETY: sigaction is plain data; zeroed is an empty mask and no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler();
    // SA_RESTART: the program's system calls go on as if nothing had happened.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: the mask is a valid sigset owned by `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: a valid action; the old one is not wanted.
    if unsafe { libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    Ok(())
}

/// The handler's address, as `sigaction` reports it.
pub fn handler() -> usize {
    on_sigterm as *const () as usize
}

/// SIGTERM's action back to the default, and the signal sent again: the process ends as it
/// would have without us.
pub fn die_of_sigterm() {
    // SAFETY: signal and kill are async-signal-safe, and SIG_DFL is always a valid action.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::kill(libc::getpid(), libc::SIGTERM);
    }
}

extern "C" fn on_sigterm(_signal: i32) {
    // SAFETY: errno's location is this thread's; read and written back around the calls below.
    let errno = unsafe { *libc::__errno_location() };
    let fd = WAKE_FD.load(Ordering::Acquire);
    // SAFETY: getpid is async-signal-safe.
    if fd < 0 || OWNER.load(Ordering::Acquire) != unsafe { libc::getpid() } {
        // A forked child inherited the handler but not the thread that reads the pipe.
        die_of_sigterm();
    } else {
        // SAFETY: write is async-signal-safe; the byte lives in static memory.
        unsafe { libc::write(fd, b"t".as_ptr().cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}
