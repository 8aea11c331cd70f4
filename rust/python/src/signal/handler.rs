//! The signal handler and the state it shares with the rest of the process.
//!
//! The handler runs on the sampled thread itself (the timer targets it with `SIGEV_THREAD_ID`),
//! so the frame chain it walks is that thread's own, frozen while the handler runs. It is
//! async-signal-safe: it only reads atomics and interpreter memory, calls `clock_gettime`, and
//! writes into the pre-allocated ring. No allocation, no lock, no panic, errno preserved.
//!
//! Lifetime of the shared state: `stop` unpublishes it (`SHARED` → null), then waits until no
//! handler is inside (`IN_FLIGHT` == 0) before freeing it. A late signal that arrives after that
//! finds a null pointer and does nothing.

use super::action;
use super::slots::{self, Clock, SLOTS};
use super::unwind::{NativeUnwind, MAX_NATIVE};
use super::walker::Walker;
use spprof_engine::capture::raw;
use spprof_engine::capture::ring::Ring;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Everything a handler needs, published through `SHARED`.
pub struct SamplerState {
    pub ring: Ring,
    pub walker: Walker,
    /// What a sample's weight measures: CPU time or wall time since the thread's previous sample.
    pub clock: Clock,
    pub collected: AtomicU64,
    /// Samples lost because the ring was full.
    pub dropped: AtomicU64,
    /// Nanoseconds spent inside the handler (measured, for the overhead figure).
    pub handler_ns: AtomicU64,
    /// Native unwinding (`set_native_unwinding(True)`), or `None`.
    pub native: Option<NativeUnwind>,
}

static SHARED: AtomicPtr<SamplerState> = AtomicPtr::new(std::ptr::null_mut());
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Publish `shared` to the handler. The caller keeps ownership through the returned pointer.
pub fn publish(shared: Box<SamplerState>) -> *const SamplerState {
    let p = Box::into_raw(shared);
    SHARED.store(p, Ordering::SeqCst);
    p
}

/// Unpublish and wait for handlers still using the state; returns ownership of it.
pub fn unpublish() -> Option<Box<SamplerState>> {
    let p = SHARED.swap(std::ptr::null_mut(), Ordering::SeqCst);
    wait_for_handlers();
    // SAFETY: p came from Box::into_raw in publish and no handler can reach it any more.
    (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
}

/// Return once every handler that was running when this was called has left.
pub fn wait_for_handlers() {
    while IN_FLIGHT.load(Ordering::SeqCst) != 0 {
        std::thread::yield_now();
    }
}

/// Samples the running profile has taken so far (0 when none runs), without a lock: asyncio
/// tracing reads it around every task step.
pub fn samples_taken() -> u64 {
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let p = SHARED.load(Ordering::SeqCst);
    // SAFETY: counted in flight, a published state is not freed before the count drops.
    let n = (!p.is_null()).then(|| unsafe { &*p }.collected.load(Ordering::Relaxed));
    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    n.unwrap_or(0)
}

/// Test hook: do what a handler preempted mid-record does: keep one record of the ring
/// reserved and unwritten, counted in flight (so the state outlives it), until `hold(false)`
/// commits it. Drains stop at it meanwhile, and `stop()` waits for it. False if no profile runs.
pub fn hold_record(hold: bool) -> bool {
    use spprof_engine::capture::ring::Reservation;
    static HELD: std::sync::Mutex<Option<Reservation<'static>>> = std::sync::Mutex::new(None);
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if !hold {
        if let Some(record) = held.take() {
            record.commit();
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }
        return true;
    }
    if held.is_some() {
        return true;
    }
    IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
    let p = SHARED.load(Ordering::SeqCst);
    // SAFETY: counted in flight, the published state is not freed until the count drops, which
    // happens only after the reservation is committed above.
    *held = (!p.is_null())
        .then(|| unsafe { &*p }.ring.reserve(0))
        .flatten();
    if held.is_none() {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
    held.is_some()
}

/// In a forked child: drop the shared state at once (no other thread exists to be using it).
pub fn forget_after_fork() {
    IN_FLIGHT.store(0, Ordering::SeqCst);
    drop(unpublish());
}

/// Install the handler for `signal` (idempotent). SA_RESTART: interrupted system calls resume
/// instead of failing with EINTR.
pub fn install(signal: i32) -> Result<(), String> {
    action::install(signal, on_signal, libc::SA_RESTART)
}

/// Whether someone else handles `signal`: a handler that is neither the default, "ignore", nor
/// ours (a standard signal does not queue, so sharing it loses one side's signals).
pub fn handled_by_another(signal: i32) -> bool {
    let Some(now) = action::current(signal) else {
        return false;
    };
    let h = now.sa_sigaction;
    h != libc::SIG_DFL && h != libc::SIG_IGN && h != on_signal as *const () as usize
}

/// Put back an application's own handler of `signal`. When the previous disposition was the
/// default or "ignore", ours stays installed but idle, and acts exactly as that disposition
/// for every signal that is not a tick: a tick still pending on some thread after `stop` must
/// not kill the process.
pub fn restore_application_handler(signal: i32) {
    action::restore(signal);
}

fn errno_location() -> *mut i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { libc::__errno_location() }
}

/// Offset of `si_value` in the kernel's `siginfo_t` for timer signals on 64-bit Linux
/// (`si_signo`, `si_errno`, `si_code`, padding, then `_timer { si_tid, si_overrun, si_sigval }`).
const SI_VALUE_OFFSET: usize = 24;

extern "C" fn on_signal(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let errno = errno_location();
    // SAFETY: errno_location is valid for this thread.
    let saved = unsafe { *errno };
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let token = (!info.is_null() && unsafe { (*info).si_code } == libc::SI_TIMER)
        .then(|| unsafe { *((info as *const u8).add(SI_VALUE_OFFSET) as *const usize) })
        .and_then(slots::decode_token);
    match token {
        Some((slot, generation)) => {
            IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
            let shared = SHARED.load(Ordering::SeqCst);
            if !shared.is_null() {
                // SAFETY: unpublish waits for IN_FLIGHT == 0 before freeing what we loaded.
                unsafe { sample(&*shared, slot, generation, context) };
            }
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        }
        None => chain(signal, info, context),
    }
    // SAFETY: as above.
    unsafe { *errno = saved };
}

/// A signal that is not one of our ticks gets what the previous disposition gives it. The
/// default action of every signal `spprof.start` accepts (SIGPROF, SIGVTALRM, SIGALRM,
/// SIGUSR1/2, real-time signals) is to terminate the process: put the default back and raise
/// the signal again; it is delivered, and kills the process, when this handler returns.
fn chain(signal: i32, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    if action::chain(signal, info, context) == action::Previous::Default {
        action::reset_to_default(signal);
        // SAFETY: raise is async-signal-safe.
        unsafe { libc::raise(signal) };
    }
}

/// Take one sample of the interrupted thread (which is the current thread).
unsafe fn sample(shared: &SamplerState, slot: usize, generation: u32, context: *mut libc::c_void) {
    let s = &SLOTS[slot];
    if s.generation.load(Ordering::Acquire) != generation || !s.armed.load(Ordering::Acquire) {
        return; // a late tick of a timer that has been deleted
    }
    let Some(start) = slots::clock_ns(libc::CLOCK_MONOTONIC) else {
        return;
    };
    let cpu = slots::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0);
    let cpu_delta = cpu.saturating_sub(s.last_cpu_ns.swap(cpu, Ordering::Relaxed));
    let (weight, on_cpu) = match shared.clock {
        Clock::Cpu => (cpu_delta, true),
        Clock::Wall => {
            let wall_delta = start.saturating_sub(s.last_wall_ns.swap(start, Ordering::Relaxed));
            // "On CPU" = it ran for at least half of the time since its previous sample.
            (wall_delta, cpu_delta.saturating_mul(2) >= wall_delta)
        }
    };
    let tstate = s.tstate.load(Ordering::Acquire);
    let walker = &shared.walker;

    // Two passes: count (to reserve the exact size), then write.
    // SAFETY: tstate belongs to this very thread, which is stopped inside this handler.
    let (depth, truncated) = unsafe { walker.record_depth(tstate) };
    let mut flags = if on_cpu { raw::FLAG_ON_CPU } else { 0 };
    if truncated {
        flags |= raw::FLAG_TRUNCATED;
    }
    let header = [start, weight, 0, depth as u64];
    let thread = s.store_thread.load(Ordering::Relaxed);
    match &shared.native {
        // The native buffer lives (and is zeroed) only on this path.
        Some(native) => {
            let mut pcs = [0u64; MAX_NATIVE];
            let n = native.unwind_context(context, &mut pcs);
            // SAFETY: as above.
            unsafe {
                record(
                    shared,
                    &header,
                    thread,
                    flags | raw::FLAG_NATIVE,
                    tstate,
                    Some(&pcs[..n]),
                )
            }
        }
        // SAFETY: as above.
        None => unsafe { record(shared, &header, thread, flags, tstate, None) },
    }
}

/// Write one CPU record: the header words (timestamp, weight, -, depth), the Python frames, and
/// the native PCs when native unwinding is on.
///
/// # Safety
/// As for [`Walker::walk`] on `tstate` (the calling thread's own, stopped in the handler).
unsafe fn record(
    shared: &SamplerState,
    header: &[u64; 4],
    thread: u32,
    flags: u32,
    tstate: usize,
    native: Option<&[u64]>,
) {
    let depth = header[3] as usize;
    let extra = native.map_or(0, |pcs| 1 + pcs.len());
    let Some(mut rec) = shared.ring.reserve(raw::body_words(depth) + extra) else {
        shared.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    rec.write_words(0, &raw::header(header[0], header[1], thread, flags, depth));
    // SAFETY: forwarded caller contract; the chain has not changed since the counting pass.
    // Entry marks only matter for merging with native frames.
    unsafe {
        shared
            .walker
            .write_frames(tstate, depth, native.is_some(), &mut rec)
    };
    if let Some(pcs) = native {
        let at = raw::body_words(depth);
        rec.write(at, pcs.len() as u64);
        rec.write_words(at + 1, pcs);
    }
    rec.commit();
    shared.collected.fetch_add(1, Ordering::Relaxed);
    if let Some(end) = slots::clock_ns(libc::CLOCK_MONOTONIC) {
        shared
            .handler_ns
            .fetch_add(end.saturating_sub(header[0]), Ordering::Relaxed);
    }
}
