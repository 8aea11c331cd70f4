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
/// reader, and the only writer of `last_*_ns`) and the registry never race.
pub struct Slot {
    pub generation: AtomicU32,
    pub armed: AtomicBool,
    pub tstate: AtomicUsize,
    /// Index of the thread in the session's store (written into each raw sample).
    pub store_thread: AtomicU32,
    /// CPU time of the thread at its previous sample.
    pub last_cpu_ns: AtomicU64,
    /// CLOCK_MONOTONIC at its previous sample (wall-clock mode).
    pub last_wall_ns: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)]
const EMPTY_SLOT: Slot = Slot {
    generation: AtomicU32::new(0),
    armed: AtomicBool::new(false),
    tstate: AtomicUsize::new(0),
    store_thread: AtomicU32::new(0),
    last_cpu_ns: AtomicU64::new(0),
    last_wall_ns: AtomicU64::new(0),
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

/// The CPU-time clock of thread `tid` of this process (the kernel's `MAKE_THREAD_CPUCLOCK(tid,
/// CPUCLOCK_SCHED)`, which `pthread_getcpuclockid` also returns). Built from the tid so that no
/// `pthread_t` of a possibly finished thread is ever dereferenced.
pub fn cpu_clock_of(tid: i32) -> libc::clockid_t {
    ((!(tid as u32) << 3) | 6) as libc::clockid_t
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

/// Which clock drives the timers (and so what a sample's weight measures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// The thread's CPU time: idle threads are not sampled.
    Cpu,
    /// CLOCK_MONOTONIC: every thread, running or waiting.
    Wall,
}

/// What a new timer is armed with.
pub struct TimerSpec {
    pub signal: i32,
    pub interval_ns: u64,
    pub clock: Clock,
}

#[derive(Debug)]
pub enum RegisterError {
    /// The environment refuses timers on this clock (e.g. a seccomp filter).
    Refused(String),
    /// The thread has exited.
    Gone,
    /// Every slot is taken.
    Full,
}

impl RegisterError {
    pub fn message(&self) -> String {
        match self {
            RegisterError::Refused(e) => e.clone(),
            RegisterError::Gone => "the thread has exited".into(),
            RegisterError::Full => format!(
                "spprof samples at most {MAX_THREADS} threads at once; unregister finished threads"
            ),
        }
    }
}

/// Test hook: make timers on CPU clocks fail as they do where a sandbox refuses them.
pub static REFUSE_CPU_TIMERS: AtomicBool = AtomicBool::new(false);

/// The store index samples of thread `tid` are filed under, if it is registered.
pub fn store_thread_of(tid: i32) -> Option<u32> {
    with_registry(|r| {
        r.by_tid
            .get(&tid)
            .map(|e| SLOTS[e.slot].store_thread.load(Ordering::Acquire))
    })
}

/// Register thread `tid` (whose thread state is at `tstate`): take a slot, create and arm its
/// timer. Returns the registration's token, or None if the thread was already registered.
pub fn register(
    tid: i32,
    tstate: usize,
    store_thread: u32,
    spec: &TimerSpec,
) -> Result<Option<usize>, RegisterError> {
    with_registry(|reg| {
        if reg.by_tid.contains_key(&tid) {
            return Ok(None);
        }
        let slot = reg.free.pop().ok_or(RegisterError::Full)?;
        let s = &SLOTS[slot];
        let generation = s.generation.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let token = encode_token(slot, generation);
        s.tstate.store(tstate, Ordering::Release);
        s.store_thread.store(store_thread, Ordering::Release);
        let cpu = clock_ns(cpu_clock_of(tid)).unwrap_or(0);
        s.last_cpu_ns.store(cpu, Ordering::Release);
        let now = clock_ns(libc::CLOCK_MONOTONIC).unwrap_or(0);
        s.last_wall_ns.store(now, Ordering::Release);
        let timer = match create_timer(tid, token, spec) {
            Ok(t) => t,
            Err(e) => {
                reg.free.push(slot);
                return Err(e);
            }
        };
        s.armed.store(true, Ordering::Release);
        if let Err(e) = arm(&timer, spec.interval_ns) {
            s.armed.store(false, Ordering::Release);
            // SAFETY: the timer was just created and is owned here.
            unsafe { libc::timer_delete(timer.0) };
            reg.free.push(slot);
            return Err(e);
        }
        reg.by_tid.insert(tid, Entry { slot, token, timer });
        Ok(Some(token))
    })
}

/// Whether timers on `clock` can be created here (one is created for this thread and deleted).
pub fn probe(clock: Clock) -> Result<(), String> {
    let spec = TimerSpec {
        signal: libc::SIGPROF,
        interval_ns: 0,
        clock,
    };
    let timer = create_timer(gettid(), 0, &spec).map_err(|e| e.message())?;
    // SAFETY: the timer was just created (never armed) and is deleted once.
    unsafe { libc::timer_delete(timer.0) };
    Ok(())
}

fn thread_exists(tid: i32) -> bool {
    // SAFETY: signal 0 only checks that the thread exists in this process.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) == 0 }
}

fn create_timer(tid: i32, token: usize, spec: &TimerSpec) -> Result<Timer, RegisterError> {
    let clock = match spec.clock {
        Clock::Cpu if REFUSE_CPU_TIMERS.load(Ordering::Relaxed) => {
            return Err(RegisterError::Refused(
                "timer_create on the thread CPU clock was refused (simulated)".into(),
            ))
        }
        Clock::Cpu => cpu_clock_of(tid),
        Clock::Wall => libc::CLOCK_MONOTONIC,
    };
    // SAFETY: sigevent is plain data; all-zero is a valid starting value.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_THREAD_ID;
    sev.sigev_signo = spec.signal;
    sev.sigev_value = libc::sigval {
        sival_ptr: token as *mut libc::c_void,
    };
    sev.sigev_notify_thread_id = tid;
    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: sev and timer are valid for the call.
    if unsafe { libc::timer_create(clock, &mut sev, &mut timer) } != 0 {
        let err = std::io::Error::last_os_error();
        if !thread_exists(tid) {
            return Err(RegisterError::Gone);
        }
        let what = match spec.clock {
            Clock::Cpu => "timer_create on the thread CPU clock was refused",
            Clock::Wall => "timer_create on CLOCK_MONOTONIC was refused",
        };
        return Err(RegisterError::Refused(format!("{what}: {err}")));
    }
    Ok(Timer(timer))
}

fn arm(timer: &Timer, interval_ns: u64) -> Result<(), RegisterError> {
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
        return Err(RegisterError::Refused(format!(
            "timer_settime failed: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

fn release(reg: &mut Registry, entry: Entry) {
    SLOTS[entry.slot].armed.store(false, Ordering::Release);
    // SAFETY: the timer is owned by this entry and deleted exactly once.
    unsafe { libc::timer_delete(entry.timer.0) };
    reg.free.push(entry.slot);
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
