//! The registry of sampled threads: a fixed table of slots the signal handler can index without
//! locks, and one POSIX timer per thread that delivers the sampling signal to that thread only
//! (`SIGEV_THREAD_ID`), carrying the slot number and generation in `sigev_value`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

pub const MAX_THREADS: usize = 4096;

/// `sigev_value` layout: tag (16 bits) | generation (24 bits) | slot (24 bits). The tag tells our
/// timer signals from anybody else's.
const TAG: u64 = 0x5350; // "SP"

pub fn encode_token(slot: usize, generation: u32) -> usize {
    ((TAG << 48) | ((generation as u64 & 0xFF_FFFF) << 24) | slot as u64) as usize
}

/// `(slot, generation)` if `token` is one of ours.
pub fn decode_token(token: usize) -> Option<(usize, u32)> {
    let t = token as u64;
    if t >> 48 != TAG {
        return None;
    }
    let slot = (t & 0xFF_FFFF) as usize;
    (slot < MAX_THREADS).then_some((slot, ((t >> 24) & 0xFF_FFFF) as u32))
}

/// What the signal handler knows of one thread. All fields are atomics so the handler (a
/// reader, and the only writer of `last_cpu_ns`) and the registry never race.
pub struct Slot {
    pub generation: AtomicU32,
    pub armed: AtomicBool,
    pub tstate: AtomicUsize,
    /// Index of the thread in the session's store (written into each raw sample).
    pub store_thread: AtomicU32,
    /// CPU time of the thread at its previous sample: a sample weighs the difference.
    pub last_cpu_ns: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    generation: AtomicU32::new(0),
    armed: AtomicBool::new(false),
    tstate: AtomicUsize::new(0),
    store_thread: AtomicU32::new(0),
    last_cpu_ns: AtomicU64::new(0),
};

pub static SLOTS: [Slot; MAX_THREADS] = [EMPTY_SLOT; MAX_THREADS];

struct Timer(libc::timer_t);
// SAFETY: a timer_t is a kernel handle (an id); any thread may arm or delete it.
unsafe impl Send for Timer {}

struct Entry {
    slot: usize,
    token: usize,
    timer: Timer,
}

struct Registry {
    free: Vec<usize>,
    by_tid: HashMap<i32, Entry>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let reg = guard.get_or_insert_with(|| Registry {
        free: (0..MAX_THREADS).rev().collect(),
        by_tid: HashMap::new(),
    });
    f(reg)
}

pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

pub fn clock_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; clock_gettime is async-signal-safe.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// What a new timer is armed with.
pub struct TimerSpec {
    pub signal: i32,
    pub interval_ns: u64,
}

pub fn is_registered(tid: i32) -> bool {
    with_registry(|r| r.by_tid.contains_key(&tid))
}

/// Register the calling thread: take a slot, create and arm its CPU-time timer.
/// Returns the registration's token, or None if the thread was already registered.
pub fn register_current(
    tstate: usize,
    store_thread: u32,
    spec: &TimerSpec,
) -> Result<Option<usize>, String> {
    let tid = gettid();
    with_registry(|reg| {
        if reg.by_tid.contains_key(&tid) {
            return Ok(None);
        }
        let slot = reg.free.pop().ok_or_else(|| {
            format!(
                "spprof samples at most {MAX_THREADS} threads at once; unregister finished threads"
            )
        })?;
        let s = &SLOTS[slot];
        let generation = s.generation.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        s.tstate.store(tstate, Ordering::Release);
        s.store_thread.store(store_thread, Ordering::Release);
        let clock = libc::CLOCK_THREAD_CPUTIME_ID;
        s.last_cpu_ns
            .store(clock_ns(clock).unwrap_or(0), Ordering::Release);
        match create_timer(tid, slot, generation, spec) {
            Ok(timer) => {
                s.armed.store(true, Ordering::Release);
                if let Err(e) = arm(&timer, spec.interval_ns) {
                    s.armed.store(false, Ordering::Release);
                    // SAFETY: the timer was just created and is owned here.
                    unsafe { libc::timer_delete(timer.0) };
                    reg.free.push(slot);
                    return Err(e);
                }
                let token = encode_token(slot, generation);
                reg.by_tid.insert(tid, Entry { slot, token, timer });
                Ok(Some(token))
            }
            Err(e) => {
                reg.free.push(slot);
                Err(e)
            }
        }
    })
}

fn create_timer(tid: i32, slot: usize, generation: u32, spec: &TimerSpec) -> Result<Timer, String> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid; clock is a valid out-pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    if rc != 0 {
        return Err(format!(
            "cannot get this thread's CPU clock: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    // SAFETY: sigevent is plain data; all-zero is a valid starting value.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_THREAD_ID;
    sev.sigev_signo = spec.signal;
    sev.sigev_value = libc::sigval {
        sival_ptr: encode_token(slot, generation) as *mut libc::c_void,
    };
    sev.sigev_notify_thread_id = tid;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: sev and timer are valid for the call.
    if unsafe { libc::timer_create(clock, &mut sev, &mut timer) } != 0 {
        return Err(os_error("timer_create on the thread CPU clock was refused"));
    }
    Ok(Timer(timer))
}

fn arm(timer: &Timer, interval_ns: u64) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: (interval_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (interval_ns % 1_000_000_000) as libc::c_long,
    };
    let spec = libc::itimerspec {
        it_interval: ts,
        it_value: ts,
    };
    // SAFETY: timer is a live timer owned by the registry; spec is valid.
    if unsafe { libc::timer_settime(timer.0, 0, &spec, std::ptr::null_mut()) } != 0 {
        return Err(os_error("timer_settime failed"));
    }
    Ok(())
}

fn release(reg: &mut Registry, entry: Entry) {
    SLOTS[entry.slot].armed.store(false, Ordering::Release);
    // SAFETY: the timer is owned by this entry and deleted exactly once.
    unsafe { libc::timer_delete(entry.timer.0) };
    reg.free.push(entry.slot);
}

/// Stop sampling the calling thread. Returns false if it was not registered.
pub fn unregister_current() -> bool {
    unregister_tid(gettid())
}

pub fn unregister_tid(tid: i32) -> bool {
    with_registry(|reg| match reg.by_tid.remove(&tid) {
        Some(entry) => {
            release(reg, entry);
            true
        }
        None => false,
    })
}

/// Unregister `tid` only if its registration is still the one identified by `token`.
pub fn unregister_token(tid: i32, token: usize) {
    with_registry(|reg| {
        if reg.by_tid.get(&tid).is_some_and(|e| e.token == token) {
            let entry = reg.by_tid.remove(&tid).expect("checked above");
            release(reg, entry);
        }
    })
}

/// Disarm and delete every timer (end of a session).
pub fn unregister_all() {
    with_registry(|reg| {
        let entries: Vec<Entry> = reg.by_tid.drain().map(|(_, e)| e).collect();
        for e in entries {
            release(reg, e);
        }
    })
}

pub fn registered_count() -> usize {
    with_registry(|r| r.by_tid.len())
}

/// In a forked child only the forking thread exists and the parent's timers were not inherited:
/// forget every registration without touching the (invalid) timer ids. The registry lock is only
/// taken with the GIL held, which the forking thread holds, so it is free here.
pub fn forget_all_after_fork() {
    for s in SLOTS.iter() {
        s.armed.store(false, Ordering::Release);
    }
    *REGISTRY.lock().unwrap_or_else(|e| e.into_inner()) = None;
}
