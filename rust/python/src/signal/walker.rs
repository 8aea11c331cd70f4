//! Walks a thread's Python frame chain by reading interpreter structs through the per-version
//! offset table. Runs inside the signal handler: no allocation, no locks, no panics, no CPython
//! call. Every pointer is checked (non-null, aligned, inside the user address range) before it is
//! read, every read recovers from a fault ([`safe_read`]), every code object is checked to be a
//! `PyCode_Type` instance, and the walk stops at a depth cap so a corrupt (cyclic) chain cannot
//! loop forever.

use super::safe_read;
use crate::cpython::offsets::{
    FrameLayout, Offsets, FRAME_OWNED_BY_GENERATOR, FRAME_OWNED_BY_THREAD,
};
use spprof_engine::capture::raw::{CODE_ENTRY_BIT, HEADER_WORDS, MAX_DEPTH};
use spprof_engine::capture::ring::Reservation;

/// Links followed per walk at most (frames plus the shim frames between them). A walk never
/// needs more than `MAX_DEPTH + 1` Python frames (deeper stacks are truncated), and a garbage
/// chain can be cyclic: an unbounded walk in the handler would starve the sampled thread (each
/// tick's walk outlasting the next tick: a livelock seen with a 100,000-link cap).
const MAX_WALK: usize = 4 * (MAX_DEPTH + 1);
/// `ob_type` sits right after `ob_refcnt` in every GIL build of CPython.
const OB_TYPE: usize = 8;

/// Chunks of a thread's data stack searched at most (each is at least 16 KiB of frames).
const MAX_CHUNKS: usize = 64;

/// The current chunk of a thread's data stack and its first free slot.
struct DataStack {
    chunk: usize,
    top: usize,
}

#[derive(Clone, Copy)]
pub struct Walker {
    pub off: Offsets,
    /// Address of `PyCode_Type`.
    pub code_type: usize,
}

#[inline]
fn plausible(addr: usize) -> bool {
    addr >= 4096 && addr.is_multiple_of(8) && addr < (1 << 47)
}

/// Read a word at `base + off`; `None` if `base` is not a plausible pointer or the read faults
/// (see [`safe_read`]: the chain can hold garbage at some instructions of the interpreter).
///
/// # Safety
/// Reading is always safe (a fault is recovered); the caller must only treat the value as
/// meaningful if `base` is an object of the kind the offset belongs to.
#[inline]
unsafe fn read_usize(base: usize, off: usize) -> Option<usize> {
    if !plausible(base) {
        return None;
    }
    safe_read::load(base + off).map(|v| v as usize)
}

#[inline]
unsafe fn read_i32(base: usize, off: usize) -> Option<i32> {
    safe_read::load(base + off).map(|v| v as u32 as i32)
}

#[inline]
unsafe fn read_u8(base: usize, off: usize) -> Option<u8> {
    safe_read::load(base + off).map(|v| v as u8)
}

impl Walker {
    pub fn is_code(&self, code: usize) -> bool {
        // SAFETY: code was read from a live frame; only its header word is read.
        plausible(code) && unsafe { read_usize(code, OB_TYPE) } == Some(self.code_type)
    }

    /// The innermost frame of the thread whose `PyThreadState` is at `tstate`.
    pub unsafe fn top_frame(&self, tstate: usize) -> usize {
        // SAFETY: tstate is a registered, live thread state (caller's contract).
        let first = unsafe { read_usize(tstate, self.off.tstate_frame) }.unwrap_or(0);
        match self.off.layout {
            // SAFETY: a non-null cframe pointer of a live thread state points to a live CFrame.
            FrameLayout::CFrame => {
                unsafe { read_usize(first, self.off.cframe_current_frame) }.unwrap_or(0)
            }
            FrameLayout::FrameObject | FrameLayout::Direct => first,
        }
    }

    /// Call `visit(code, instr_offset_bytes, entry)` for each Python frame, innermost first, until
    /// it returns false. `instr_offset_bytes` is the offset of the executing instruction in the
    /// code's bytecode (negative if the frame has not started). `entry` marks the outermost frame
    /// of one run of the eval loop (`_PyEval_EvalFrameDefault`): the frames up to and including
    /// it are what one native eval-loop frame executes (see [`super::unwind`]); it costs a
    /// read per frame, so it is computed only when `entries` is set (else always false). Returns
    /// the number of frames visited.
    ///
    /// # Safety
    /// `tstate` must be the live `PyThreadState` of the calling thread, or of a thread that cannot
    /// change its frame chain during the walk (it holds no GIL and is not running Python).
    pub unsafe fn walk(
        &self,
        tstate: usize,
        entries: bool,
        mut visit: impl FnMut(usize, i64, bool) -> bool,
    ) -> usize {
        let off = &self.off;
        // SAFETY: forwarded caller contract.
        let mut frame = unsafe { self.top_frame(tstate) };
        // SAFETY: as above.
        let stack = unsafe { self.data_stack(tstate) };
        let mut visited = 0;
        for _ in 0..MAX_WALK {
            if !plausible(frame) {
                break;
            }
            // 3.11+: who owns the frame (read once for both checks below).
            // SAFETY: frame is plausible; the read recovers from a fault.
            let owner = (off.layout != FrameLayout::FrameObject)
                .then(|| unsafe { read_u8(frame, off.frame_owner) })
                .flatten();
            // SAFETY: frame is a plausible pointer taken from the live chain.
            let next = unsafe { read_usize(frame, off.frame_back) }.unwrap_or(0);
            // An executing generator's frame always has a caller; one without is stale (3.11/3.12
            // publish the new CFrame before its current frame, and a tick in between reads stack
            // garbage, seen under load as one-frame stacks). Nothing is known of this stack.
            if visited == 0 && next == 0 && owner == Some(FRAME_OWNED_BY_GENERATOR) {
                break;
            }
            // A thread-owned frame outside the live data stack is not visited: a frame being
            // returned from (its caller is live) or a stale pointer of the eval loop's prologue,
            // whose code may be gone. Its callers are checked in turn.
            if let Some(ds) = &stack {
                // SAFETY: as above.
                if owner == Some(FRAME_OWNED_BY_THREAD) && !unsafe { self.in_data_stack(ds, frame) }
                {
                    frame = next;
                    continue;
                }
            }
            // SAFETY: as above. 3.14+ tag the low bits of the code reference.
            let code =
                unsafe { read_usize(frame, off.frame_code) }.unwrap_or(0) & !off.stackref_tag_bits;
            // SAFETY: as above.
            if let Some(offset) = unsafe { self.instr_offset(frame, code, owner) } {
                visited += 1;
                // SAFETY: as above.
                let entry = entries && unsafe { self.is_entry(frame, next) };
                if !visit(code, offset, entry) {
                    break;
                }
            }
            frame = next;
        }
        visited
    }

    /// The innermost eval-loop entry shim frame (3.12+), which is a local variable of that run's
    /// native eval-loop frame; `None` before 3.12 or when the chain cannot be followed.
    ///
    /// # Safety
    /// As for [`Walker::walk`].
    pub unsafe fn innermost_shim(&self, tstate: usize) -> Option<usize> {
        let off = &self.off;
        if off.frame_owner_shim == u8::MAX {
            return None;
        }
        // SAFETY: forwarded caller contract; every read recovers from a fault.
        let mut frame = unsafe { self.top_frame(tstate) };
        for _ in 0..MAX_WALK {
            if !plausible(frame) {
                return None;
            }
            // SAFETY: as above.
            if unsafe { read_u8(frame, off.frame_owner) }? >= off.frame_owner_shim {
                return Some(frame);
            }
            // SAFETY: as above.
            frame = unsafe { read_usize(frame, off.frame_back) }?;
        }
        None
    }

    /// The thread's data stack (3.11+): where its own frames live.
    unsafe fn data_stack(&self, tstate: usize) -> Option<DataStack> {
        let off = &self.off;
        if off.tstate_datastack_chunk == usize::MAX {
            return None;
        }
        // SAFETY: tstate is a live thread state (caller's contract); reads recover from faults.
        unsafe {
            Some(DataStack {
                chunk: read_usize(tstate, off.tstate_datastack_chunk)?,
                top: read_usize(tstate, off.tstate_datastack_top)?,
            })
        }
    }

    /// Whether `frame` lies in the used part of one of the data stack's chunks.
    unsafe fn in_data_stack(&self, ds: &DataStack, frame: usize) -> bool {
        let off = &self.off;
        let (mut chunk, mut end) = (ds.chunk, ds.top);
        for _ in 0..MAX_CHUNKS {
            if !plausible(chunk) {
                return false;
            }
            if chunk + off.chunk_data <= frame && frame < end {
                return true;
            }
            // SAFETY: chunk is plausible; the reads recover from faults.
            let Some(previous) = (unsafe { read_usize(chunk, off.chunk_previous) }) else {
                return false;
            };
            // An older chunk's `top` counts the slots in use when the next one was pushed.
            let Some(used) = (unsafe { read_usize(previous, off.chunk_top) }) else {
                return false;
            };
            chunk = previous;
            end = previous + off.chunk_data + used.saturating_mul(8);
        }
        false
    }

    /// The frames a record keeps (at most [`MAX_DEPTH`]), and whether the stack is deeper.
    ///
    /// # Safety
    /// As for [`Walker::walk`].
    pub unsafe fn record_depth(&self, tstate: usize) -> (usize, bool) {
        // SAFETY: forwarded caller contract.
        let total = unsafe { self.depth(tstate, MAX_DEPTH + 1) };
        (total.min(MAX_DEPTH), total > MAX_DEPTH)
    }

    /// The number of Python frames, counting at most `cap`.
    ///
    /// # Safety
    /// As for [`Walker::walk`].
    pub unsafe fn depth(&self, tstate: usize, cap: usize) -> usize {
        let mut n = 0;
        // SAFETY: forwarded caller contract.
        unsafe {
            self.walk(tstate, false, |_, _, _| {
                n += 1;
                n < cap
            })
        }
    }

    /// Whether `frame` (whose caller is `next`) is the first frame its eval-loop run executed.
    unsafe fn is_entry(&self, frame: usize, next: usize) -> bool {
        let off = &self.off;
        if off.layout == FrameLayout::FrameObject {
            return true; // 3.9/3.10: every Python call is a C call of the eval loop.
        }
        if off.frame_is_entry != usize::MAX {
            // 3.11: the frame's own `is_entry` byte.
            // SAFETY: frame is a plausible frame pointer; the read recovers from a fault.
            return unsafe { read_u8(frame, off.frame_is_entry) }.unwrap_or(1) != 0;
        }
        // 3.12+: the eval loop pushes a shim frame under the first frame it runs.
        // SAFETY: as above.
        !plausible(next)
            || unsafe { read_u8(next, off.frame_owner) }.is_some_and(|o| o >= off.frame_owner_shim)
    }

    /// Write the innermost `depth` frames into a raw sample record (`(code, offset)` word pairs
    /// after the header), zero-filling what the chain does not provide (code 0 = "unknown frame"
    /// for the resolver). `tstate == 0` writes only unknown frames. With `entries`, code words
    /// carry the eval-loop entry mark (see [`Walker::walk`]).
    ///
    /// # Safety
    /// As for [`Walker::walk`].
    pub unsafe fn write_frames(
        &self,
        tstate: usize,
        depth: usize,
        entries: bool,
        rec: &mut Reservation<'_>,
    ) {
        let mut i = 0;
        if tstate != 0 {
            // SAFETY: forwarded caller contract.
            unsafe {
                self.walk(tstate, entries, |code, offset, entry| {
                    if i >= depth {
                        return false;
                    }
                    rec.write(
                        HEADER_WORDS + 2 * i,
                        code as u64 | (entry as u64 * CODE_ENTRY_BIT),
                    );
                    rec.write(HEADER_WORDS + 2 * i + 1, offset as u64);
                    i += 1;
                    true
                })
            };
        }
        while i < depth {
            rec.write(HEADER_WORDS + 2 * i, 0);
            i += 1;
        }
    }

    /// The executing instruction's byte offset, or `None` for a frame that `sys._getframe()`
    /// would not show (a C-stack shim, an incomplete frame, a non-code executable).
    unsafe fn instr_offset(&self, frame: usize, code: usize, owner: Option<u8>) -> Option<i64> {
        let off = &self.off;
        if !self.is_code(code) {
            return None;
        }
        if off.layout == FrameLayout::FrameObject {
            // SAFETY: frame is a live PyFrameObject; f_lasti is an int inside it.
            let lasti = unsafe { read_i32(frame, off.frame_instr) }? as i64;
            // 3.9 counts bytes, 3.10 counts 2-byte code units.
            return Some(if lasti >= 0 {
                lasti * off.frame_lasti_unit as i64
            } else {
                lasti
            });
        }
        let owner = owner?;
        if owner >= off.frame_owner_shim {
            return None;
        }
        // SAFETY: as above; the instruction pointer field is a pointer-sized member.
        let instr = unsafe { read_usize(frame, off.frame_instr) }.unwrap_or(0);
        let start = code + off.code_code_adaptive;
        let offset = (instr as i64).wrapping_sub(start as i64);
        // SAFETY: code passed is_code, so it is a live code object holding _co_firsttraceable.
        let first_traceable = unsafe { read_i32(code, off.code_firsttraceable) }? as i64;
        if owner != FRAME_OWNED_BY_GENERATOR && offset / 2 < first_traceable {
            return None; // incomplete frame (still running its prologue)
        }
        Some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpython::offsets::PY3_12;

    fn put(addr: usize, value: u64) {
        // SAFETY: test buffers below, written inside their bounds.
        unsafe { std::ptr::write_unaligned(addr as *mut u64, value) };
    }

    /// A fake 3.12 thread state whose top frame is thread-owned: walked only while it lies in
    /// the used part of the thread's data stack.
    #[test]
    fn thread_frames_outside_the_data_stack_end_the_walk() {
        safe_read::install().unwrap();
        let off = PY3_12;
        let code_type = 0x5150_0000usize;
        let (mut code, mut chunk) = (vec![0u64; 256], vec![0u64; 1024]);
        let (mut tstate, mut cframe) = (vec![0u64; 256], [0u64; 8]);
        let (code, chunk, tstate, cframe) = (
            code.as_mut_ptr() as usize,
            chunk.as_mut_ptr() as usize,
            tstate.as_mut_ptr() as usize,
            cframe.as_mut_ptr() as usize,
        );
        put(code + OB_TYPE, code_type as u64);
        let frame = chunk + off.chunk_data + 64;
        put(frame + off.frame_code, code as u64);
        put(
            frame + off.frame_instr,
            (code + off.code_code_adaptive + 8) as u64,
        );
        put(frame + off.frame_back, 0); // owner byte and previous are zero: thread-owned, root
        put(tstate + off.tstate_frame, cframe as u64);
        put(cframe + off.cframe_current_frame, frame as u64);
        put(tstate + off.tstate_datastack_chunk, chunk as u64);
        let walker = Walker { off, code_type };
        let frames = |top: usize| {
            put(tstate + off.tstate_datastack_top, top as u64);
            // SAFETY: every pointer followed is into the buffers above.
            unsafe { walker.depth(tstate, 10) }
        };
        assert_eq!(frames(frame + off.frame_size), 1);
        assert_eq!(
            frames(frame),
            0,
            "a frame at or above the top is not walked"
        );
        assert_eq!(frames(chunk + off.chunk_data), 0);
    }
}
