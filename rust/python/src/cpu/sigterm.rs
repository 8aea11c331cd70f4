//! A profiled child process's profile, written before SIGTERM ends it (`Pool.terminate()`
//! ends pool workers so, and `with Pool() as pool:` calls it).
//!
//! The signal's handler ([`crate::signal::terminate`]) writes a byte to a pipe. A daemon thread
//! of `spprof._subprocesses` reads it, writes the profile and calls [`die_of_sigterm`]. A Python
//! thread, not one of ours: one that waits for the GIL while the interpreter shuts down is ended
//! by CPython from inside `take_gil`, which a Rust thread cannot survive.

use crate::signal::{action, terminate};
use pyo3::prelude::*;

/// Route SIGTERM to a new pipe and return its read end; only where SIGTERM has its default
/// action, or our handler inherited through a fork (a program's own handler stays in charge):
/// `None` otherwise.
#[pyfunction]
pub fn sigterm_to_pipe() -> PyResult<Option<i32>> {
    let ours_or_default = |a: libc::sigaction| {
        a.sa_sigaction == libc::SIG_DFL || a.sa_sigaction == terminate::handler()
    };
    if !action::current(libc::SIGTERM).is_some_and(ours_or_default) {
        return Ok(None);
    }
    let mut fds = [0i32; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    terminate::install(fds[1]).map_err(pyo3::exceptions::PyOSError::new_err)?;
    Ok(Some(fds[0]))
}

/// SIGTERM's default action back, if our handler is still the one installed (the profile has
/// been written: a SIGTERM from now on ends the process at once).
#[pyfunction]
pub fn sigterm_default() {
    if action::current(libc::SIGTERM).is_some_and(|a| a.sa_sigaction == terminate::handler()) {
        // SAFETY: SIG_DFL is always a valid action.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_DFL) };
    }
}

/// End the process of SIGTERM, as it would have ended without us.
#[pyfunction]
pub fn die_of_sigterm() {
    terminate::die_of_sigterm();
}
