//! Putting a handler in front of a signal's disposition, and handing that disposition the
//! signals that are not ours: the sampling signal's ticks and the fault handler share it.
//!
//! The previous disposition is kept twice: as atomics that a handler reads without a lock
//! ([`chain`]), and whole, under a lock, for [`restore`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The three-argument form of an `SA_SIGINFO` handler.
pub type Handler = extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void);

const NSIG: usize = 65;
#[allow(clippy::declare_interior_mutable_const)]
const DEFAULT: AtomicUsize = AtomicUsize::new(libc::SIG_DFL);
static PREV_HANDLER: [AtomicUsize; NSIG] = [DEFAULT; NSIG];
#[allow(clippy::declare_interior_mutable_const)]
const NO_FLAGS: AtomicUsize = AtomicUsize::new(0);
static PREV_FLAGS: [AtomicUsize; NSIG] = [NO_FLAGS; NSIG];

/// A disposition, to restore.
struct Saved(libc::sigaction);
// SAFETY: a sigaction is plain data (a function pointer, flags and a mask).
unsafe impl Send for Saved {}
static SAVED: Mutex<Vec<(i32, Saved)>> = Mutex::new(Vec::new());

/// `signal`'s disposition now, or `None` for a number that is not a signal.
pub fn current(signal: i32) -> Option<libc::sigaction> {
    // SAFETY: zeroed out-parameter; a null new action only queries.
    let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    (unsafe { libc::sigaction(signal, std::ptr::null(), &mut now) } == 0).then_some(now)
}

/// Put `handler` (with `SA_SIGINFO` and `flags`) in front of what handles `signal` now, which
/// [`chain`] then calls. Does nothing while `handler` is still installed.
pub fn install(signal: i32, handler: Handler, flags: i32) -> Result<(), String> {
    if !(1..NSIG as i32).contains(&signal) {
        return Err(format!("{signal} is not a signal number"));
    }
    let mut saved = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(before) = current(signal) else {
        return Err(format!("{signal} is not a signal number"));
    };
    if before.sa_sigaction == handler as *const () as usize {
        return Ok(());
    }
    // Whom to chain to is known before our handler can run.
    remember(signal, &before);
    // SAFETY: sigaction is plain data; zeroed is an empty mask and no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | flags;
    // SAFETY: the mask is a valid sigset owned by `action`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: zeroed out-parameter for the old action.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid; `handler` has the SA_SIGINFO signature.
    if unsafe { libc::sigaction(signal, &action, &mut old) } != 0 {
        return Err(format!(
            "cannot install the handler for signal {signal}: {}",
            std::io::Error::last_os_error()
        ));
    }
    remember(signal, &old); // changed between the query and the swap: the swap's is right
    saved.retain(|(s, _)| *s != signal);
    saved.push((signal, Saved(old)));
    Ok(())
}

fn remember(signal: i32, action: &libc::sigaction) {
    PREV_HANDLER[signal as usize].store(action.sa_sigaction, Ordering::SeqCst);
    PREV_FLAGS[signal as usize].store(action.sa_flags as usize, Ordering::SeqCst);
}

/// Put back the disposition [`install`] replaced, if it was a handler: a default or "ignore"
/// disposition is left to ours, which acts as it for every signal it does not claim.
pub fn restore(signal: i32) {
    let mut saved = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = saved.iter().position(|(s, _)| *s == signal) {
        let h = saved[i].1 .0.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            // SAFETY: restoring a disposition that was valid before.
            unsafe { libc::sigaction(signal, &saved[i].1 .0, std::ptr::null_mut()) };
            saved.remove(i);
        }
    }
}

/// What [`chain`] found before ours.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Previous {
    Default,
    Ignore,
    /// A handler, which has been called.
    Called,
}

/// Hand a signal that is not ours to the handler that was installed before ours, or say what
/// the disposition was. Async-signal-safe.
pub fn chain(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) -> Previous {
    let Some(handler) = PREV_HANDLER.get(signal as usize) else {
        return Previous::Default;
    };
    let handler = handler.load(Ordering::SeqCst);
    if handler == libc::SIG_IGN {
        return Previous::Ignore;
    }
    if handler == libc::SIG_DFL {
        return Previous::Default;
    }
    if PREV_FLAGS[signal as usize].load(Ordering::SeqCst) as i32 & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this signature.
        let f = unsafe { std::mem::transmute::<usize, Handler>(handler) };
        f(signal, info, context);
    } else {
        // SAFETY: without SA_SIGINFO the previous handler takes only the signal number.
        let f = unsafe { std::mem::transmute::<usize, extern "C" fn(i32)>(handler) };
        f(signal);
    }
    Previous::Called
}

/// Give `signal` its default disposition (async-signal-safe).
pub fn reset_to_default(signal: i32) {
    // SAFETY: sigaction is plain data; zeroed with SIG_DFL (0) is the default disposition.
    let mut default: libc::sigaction = unsafe { std::mem::zeroed() };
    default.sa_sigaction = libc::SIG_DFL;
    // SAFETY: sigaction is async-signal-safe; the pointer is to a valid action.
    unsafe { libc::sigaction(signal, &default, std::ptr::null_mut()) };
}
