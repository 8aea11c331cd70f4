//! The registry of sampled threads: each takes one of the handler's slots
//! ([`crate::signal::slots`]) and one POSIX timer that delivers the sampling signal to that
//! thread only (`SIGEV_THREAD_ID`), carrying the slot number and generation in `sigev_value`.

use crate::signal::slots::{
    clock_ns, cpu_clock_of, encode_token, gettid, Clock, MAX_THREADS, SLOTS,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

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
