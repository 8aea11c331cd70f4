//! The memory profiler's CPython side: hooks on CPython's allocator domains, the sampled
//! allocations' stacks, and the live-heap table built from them.
//!
//! Hooks. The allocators of `PYMEM_DOMAIN_RAW`, `MEM` and `OBJ` are wrapped, never replaced:
//! `PyMem_GetAllocator` saves the current ones and every call is forwarded to them (our functions
//! ignore their `ctx` and read the saved allocator from the static). The saved allocators live in a static that is
//! never freed, so a wrapper that another tool (e.g. tracemalloc) wrapped in turn keeps working
//! after `shutdown()`, which restores the originals only where ours are still installed.
//!
//! Hot path (every allocation and free, from `start()` to `shutdown()`): no allocation, no lock,
//! no Python API, no thread-local. A small MEM/OBJ allocation costs a size compare and the byte
//! countdown of its [`PoissonSampler`], then a tail jump to the saved allocator; a RAW free costs
//! one load of the heap map's small counting filter. MEM/OBJ frees are not wrapped at all under
//! pymalloc (see `obj_alloc`). Only sampled allocations (and frees of sampled blocks) take the
//! cold path: the heap map, the stack walk, and a record in the ring.
//!
//! Nesting. pymalloc (behind MEM and OBJ) serves requests over 512 bytes with
//! `PyMem_RawMalloc`, i.e. through our RAW wrapper. Counting those bytes twice would bias the
//! sampler, so the MEM/OBJ wrappers note the calling thread (its thread pointer, one load of
//! `%fs:0`) in `OUTER` while they forward, and the RAW wrapper ignores calls nested in them
//! (but notes the block, which a sample may be keyed by). MEM and OBJ calls hold the GIL, so at
//! most one thread is inside them at a time.
//!
//! Native allocations. With the LD_PRELOAD library (see [`preload`]) malloc, calloc,
//! realloc, free and the aligned variants call [`on_native_alloc`] / [`on_native_free`]. Each
//! allocation must be counted once: RAW-domain calls then go uncounted in our wrapper (malloc
//! beneath counts them), and MEM/OBJ calls that may reach malloc mark `OUTER`, so the malloc
//! beneath them is recognised as nested: requests over 512 bytes, and under `PYTHONMALLOC=malloc`
//! (no pymalloc, seen as `sys.getallocatedblocks() == 0`) small ones too.
//!
//! Stacks are read with the CPU sampler's [`Walker`] on the calling thread's own thread state,
//! and only when that thread holds the GIL (always for MEM/OBJ; RAW may be called without it,
//! and such samples are recorded without a Python stack). Resolution to names happens later with
//! the GIL (the resolver thread, `get_snapshot()`, or a code object's deallocation, see
//! [`session::on_code_destroyed`]). Resolution allocates Python objects (attribute
//! values); those allocations go through the hooks and may be sampled, which is harmless: they
//! are temporaries, freed at once, so they never show as live.

mod api;
mod hooks;
mod install;
pub mod preload;
mod records;
mod session;
mod state;

pub use api::register;

const RING_BYTES: usize = 4 << 20;
/// About a million slots (8 MiB of address space, touched as live samples need them): room for
/// half a million live samples, 32 GiB of live heap at 64 KiB sampling.
const HEAP_MAP_SLOTS: usize = 1 << 20;
const RAW: usize = 0;

/// Test hook: reserve one record of the ring and leave it unwritten (`hold`), as a thread
/// preempted mid-record does, or commit it (`!hold`); drains stop at it meanwhile. The record
/// is too short to parse, so the drain that reaches it skips it. False if memory profiling
/// never started.
pub fn hold_ring_record(hold: bool) -> bool {
    use spprof_engine::capture::ring::Reservation;
    static HELD: std::sync::Mutex<Option<Reservation<'static>>> = std::sync::Mutex::new(None);
    let Some(sh) = state::hook_state() else {
        return false;
    };
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    if hold {
        if held.is_none() {
            *held = sh.ring.reserve(0);
        }
        held.is_some()
    } else {
        if let Some(record) = held.take() {
            record.commit();
        }
        true
    }
}
