//! The background threads that resolve samples (one per CPU session, one for the memory
//! profiler): how they are started, stopped, and kept from deadlocking a forked child.
//!
//! Each thread takes one Python thread state when it starts and keeps it until it exits, so
//! its periodic `Python::attach` only takes and releases the GIL. Creating a thread state takes
//! the runtime's thread-list lock *without* the GIL; a `fork()` landing then leaves the lock
//! held in the child, and CPython 3.9 takes it in `PyOS_AfterFork_Child` before reinitialising
//! it: the child hangs. A thread state per attach made that window open every 100 ms; now it
//! opens once per thread, inside the profilers' `start()`, which waits until it is closed
//! ([`wait_until_started`]); [`before_fork`] (an `os.register_at_fork` hook) waits it out too.
//! Deleting the thread state at exit happens with the GIL held, which a forking thread holds.

use pyo3::ffi;
use pyo3::prelude::*;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Block, in the calling thread, every signal but those a fault raises; returns the mask before.
///
/// A resolver thread keeps them blocked for its whole life. The kernel hands a process-directed
/// signal (SIGTERM, SIGINT, SIGCHLD) to any thread that does not block it; CPython then only
/// notes it and wakes nobody, so a main thread blocked in a lock or a read (a pool worker
/// waiting for a task, which `Pool.terminate()` ends with SIGTERM) waited for ever.
fn block_process_signals() -> libc::sigset_t {
    // SAFETY: sigfillset, sigdelset and pthread_sigmask only write the sets passed, which live
    // on this stack and are initialised by sigfillset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for fault in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
        ] {
            libc::sigdelset(&mut set, fault);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

fn restore_signal_mask(old: &libc::sigset_t) {
    // SAFETY: `old` is a mask pthread_sigmask filled in; setting it back only writes this
    // thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// Threads spawned that have not finished creating their thread state yet.
static STARTING: AtomicUsize = AtomicUsize::new(0);

/// Kernel ids of the running resolver threads (at most one per profiler), so that the thread
/// scan does not sample them: their thread states are in the interpreter's list.
static RESOLVER_TIDS: [AtomicI32; 4] = [const { AtomicI32::new(0) }; 4];

pub fn is_resolver(tid: i32) -> bool {
    RESOLVER_TIDS
        .iter()
        .any(|t| t.load(Ordering::Acquire) == tid)
}

pub struct ResolverThread {
    stop: Arc<StopSignal>,
    handle: JoinHandle<()>,
}

impl ResolverThread {
    /// Run `body` on a new thread that holds a Python thread state (not the GIL) throughout.
    /// `body` returns once [`StopSignal::sleep`] reports a stop request.
    pub fn spawn(name: &str, body: impl FnOnce(&StopSignal) + Send + 'static) -> Self {
        let stop = Arc::new(StopSignal::default());
        let stop2 = stop.clone();
        STARTING.fetch_add(1, Ordering::SeqCst);
        // The thread inherits this thread's signal mask, so it is born with the signals blocked.
        let restore = block_process_signals();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _state = OwnThreadState::take();
                body(&stop2);
            });
        restore_signal_mask(&restore);
        let handle = spawned.unwrap_or_else(|e| {
            STARTING.fetch_sub(1, Ordering::SeqCst);
            panic!("spawning the {name} thread: {e}")
        });
        ResolverThread { stop, handle }
    }

    /// Stop the thread and wait for it, with the GIL released (it may be waiting for it).
    pub fn stop_and_join(self, py: Python<'_>) {
        self.stop.stop();
        py.detach(|| {
            let _ = self.handle.join();
        });
    }

    /// In a forked child: the thread does not exist there, so there is nothing to join.
    pub fn abandon_after_fork(self) {
        std::mem::forget(self.handle);
    }
}

/// This thread's Python thread state, created on the thread (as the GIL-state API requires)
/// and released for the GIL to be taken only when there is work.
struct OwnThreadState {
    gil: ffi::PyGILState_STATE,
    tstate: *mut ffi::PyThreadState,
    tid: i32,
}

impl OwnThreadState {
    fn take() -> Self {
        let tid = crate::signal::slots::gettid();
        // A slot is always free: there are fewer resolver threads than slots.
        let _ = RESOLVER_TIDS.iter().find(|t| {
            t.compare_exchange(0, tid, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        // SAFETY: the interpreter is initialised (a profiler started it); Ensure creates this
        // thread's state and takes the GIL, SaveThread releases the GIL and keeps the state.
        let (gil, tstate) = unsafe {
            let gil = ffi::PyGILState_Ensure();
            (gil, ffi::PyEval_SaveThread())
        };
        STARTING.fetch_sub(1, Ordering::SeqCst);
        OwnThreadState { gil, tstate, tid }
    }
}

impl Drop for OwnThreadState {
    fn drop(&mut self) {
        // SAFETY: the pair from take(), undone in reverse on the same thread; the profiler
        // joins this thread before the interpreter finalises (stop() / shutdown() / atexit).
        unsafe {
            ffi::PyEval_RestoreThread(self.tstate);
            ffi::PyGILState_Release(self.gil);
        }
        for t in &RESOLVER_TIDS {
            let _ = t.compare_exchange(self.tid, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

/// Wait until every resolver thread spawned has its thread state; it needs the GIL for that,
/// so the GIL is released meanwhile (never call this holding a lock a GIL holder may wait for).
/// The profilers' `start()` waits, so that their thread is set up when `start()` returns: a
/// thread state created later could meet tracemalloc being stopped, which crashes CPython 3.13.0
/// (tracemalloc traces the new thread state's allocation, python/cpython#128679).
pub fn wait_until_started(py: Python<'_>) {
    while STARTING.load(Ordering::SeqCst) > 0 {
        py.detach(|| std::thread::sleep(Duration::from_micros(200)));
    }
}

/// `os.register_at_fork(before=...)`: do not fork while a resolver thread creates its thread
/// state.
#[pyfunction]
pub fn before_fork(py: Python<'_>) {
    wait_until_started(py);
}

/// In a forked child (where no resolver thread exists).
pub fn forget_after_fork() {
    STARTING.store(0, Ordering::SeqCst);
    for t in &RESOLVER_TIDS {
        t.store(0, Ordering::SeqCst);
    }
}

/// A stop request a resolver thread sleeps on between rounds of work.
#[derive(Default)]
pub struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopSignal {
    /// Sleep up to `timeout`, or until `stop()`; true once stop was requested.
    pub fn sleep(&self, timeout: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |stopped| !*stopped)
            .unwrap_or_else(|e| e.into_inner());
        *guard
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.notify_all();
    }
}
