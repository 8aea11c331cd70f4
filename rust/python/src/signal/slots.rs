//! What the signal handler knows of the sampled threads, without a lock: a fixed table of
//! slots indexed by the token a timer's signal carries, and the clocks a sample's weight is
//! read from (`clock_gettime` is async-signal-safe).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize};

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
