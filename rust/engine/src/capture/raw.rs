//! The raw sample record the signal handler writes into the [`Ring`](crate::capture::ring::Ring): plain
//! words, no pointers into Rust data, so that writing it is a handful of stores.
//!
//! Body layout (in `u64` words):
//! `[timestamp_ns, weight, thread_slot | flags << 32, depth, (code, instr) * depth]`,
//! frames leaf first (the order a walk discovers them). Code pointers are 8-byte aligned; bit 0
//! ([`CODE_ENTRY_BIT`]) marks the outermost frame of one run of the interpreter's eval loop.
//!
//! With native unwinding ([`FLAG_NATIVE`]), CPU records continue after the frames with
//! `[n, pc * n]`: the native code addresses, innermost first.
//!
//! Memory records (the allocation hooks) use the same layout with the thread word holding the OS
//! thread id, the weight word the estimated bytes, and three more words after the frames:
//! `[key, size, address]` (see [`MemBlock`]). [`FLAG_ALLOC`] marks a sampled allocation,
//! [`FLAG_FREE`] the free of one (depth 0, size 0). CPU records have neither flag and no extra
//! words.

pub const HEADER_WORDS: usize = 4;
pub const WORDS_PER_FRAME: usize = 2;
/// Frames kept per record; deeper stacks keep their innermost frames ([`FLAG_TRUNCATED`]).
pub const MAX_DEPTH: usize = 1024;

/// The stack was deeper than the record limit: only the innermost frames were kept.
pub const FLAG_TRUNCATED: u32 = 1;
/// Wall-clock mode: the thread was running on a CPU when sampled.
pub const FLAG_ON_CPU: u32 = 2;
/// A sampled allocation: `[key, size, address]` follow the frames.
pub const FLAG_ALLOC: u32 = 4;
/// The free of a sampled allocation: `[key, 0, key]` follow the (empty) frames.
pub const FLAG_FREE: u32 = 8;
/// The allocating thread did not hold the GIL, so its Python stack was not read.
pub const FLAG_NO_STACK: u32 = 16;
/// The record carries native code addresses after its frames.
pub const FLAG_NATIVE: u32 = 32;
/// The allocating thread ran in a subinterpreter: its frames were not read (their code objects
/// die with that interpreter, unseen by the main interpreter's code watcher).
pub const FLAG_SUBINTERPRETER: u32 = 64;
/// Bit 0 of a code word: the outermost frame of one eval-loop run (see the module docs).
pub const CODE_ENTRY_BIT: u64 = 1;
/// Words after the frames of a memory record.
pub const MEM_EXTRA_WORDS: usize = 3;

/// The block of a memory record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemBlock {
    /// The address its free is matched by: `address`, or the block beneath it in another
    /// allocator when the free is seen there (see `memprof.rs` in the Python binding).
    pub key: u64,
    pub size: u64,
    /// The address the program got.
    pub address: u64,
}

pub fn body_words(depth: usize) -> usize {
    HEADER_WORDS + depth * WORDS_PER_FRAME
}

/// Body words of a memory record of `depth` frames.
pub fn mem_body_words(depth: usize) -> usize {
    body_words(depth) + MEM_EXTRA_WORDS
}

/// A decoded view of one record body.
pub struct RawSample<'a> {
    pub timestamp_ns: u64,
    pub weight: u64,
    pub thread_slot: u32,
    pub flags: u32,
    body: &'a [u64],
    /// Words after the frames (memory records: key, size, address).
    extra: &'a [u64],
}

impl<'a> RawSample<'a> {
    /// `None` for a body too short for the depth it claims (never produced by a correct writer).
    pub fn parse(body: &'a [u64]) -> Option<RawSample<'a>> {
        if body.len() < HEADER_WORDS {
            return None;
        }
        let depth = body[3] as usize;
        if body.len() < body_words(depth) {
            return None;
        }
        Some(RawSample {
            timestamp_ns: body[0],
            weight: body[1],
            thread_slot: body[2] as u32,
            flags: (body[2] >> 32) as u32,
            body: &body[..body_words(depth)],
            extra: &body[body_words(depth)..],
        })
    }

    /// The block of a memory record; `None` for a CPU record.
    pub fn mem_block(&self) -> Option<MemBlock> {
        (self.flags & (FLAG_ALLOC | FLAG_FREE) != 0 && self.extra.len() >= MEM_EXTRA_WORDS).then(
            || MemBlock {
                key: self.extra[0],
                size: self.extra[1],
                address: self.extra[2],
            },
        )
    }

    pub fn depth(&self) -> usize {
        self.body[3] as usize
    }

    /// `(code, instr, entry)` per frame, leaf first (the entry bit taken off the code word).
    pub fn frames_leaf_first(&self) -> impl DoubleEndedIterator<Item = (u64, u64, bool)> + 'a {
        self.body[HEADER_WORDS..]
            .chunks_exact(WORDS_PER_FRAME)
            .map(|c| (c[0] & !CODE_ENTRY_BIT, c[1], c[0] & CODE_ENTRY_BIT != 0))
    }

    /// Native code addresses, innermost first (empty without [`FLAG_NATIVE`]).
    pub fn native_pcs(&self) -> &'a [u64] {
        if self.flags & FLAG_NATIVE == 0 || self.extra.is_empty() {
            return &[];
        }
        let n = (self.extra[0] as usize).min(self.extra.len() - 1);
        &self.extra[1..1 + n]
    }
}

pub fn pack_thread(thread_slot: u32, flags: u32) -> u64 {
    thread_slot as u64 | (flags as u64) << 32
}

/// A record's header words, CPU or memory (see the module docs).
pub fn header(
    timestamp_ns: u64,
    weight: u64,
    thread: u32,
    flags: u32,
    depth: usize,
) -> [u64; HEADER_WORDS] {
    [
        timestamp_ns,
        weight,
        pack_thread(thread, flags),
        depth as u64,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_record_keeps_frames_and_extra_words_apart() {
        let body = [
            5,
            4096,
            pack_thread(77, FLAG_ALLOC),
            2,
            10,
            1,
            20,
            2,
            0xdead0,
            300,
            0xdead8,
        ];
        assert_eq!(body.len(), mem_body_words(2));
        let r = RawSample::parse(&body).unwrap();
        assert_eq!(
            r.frames_leaf_first().collect::<Vec<_>>(),
            [(10, 1, false), (20, 2, false)]
        );
        assert_eq!(
            r.mem_block(),
            Some(MemBlock {
                key: 0xdead0,
                size: 300,
                address: 0xdead8
            })
        );
        assert_eq!(r.thread_slot, 77);
        let cpu = [5, 1, pack_thread(0, FLAG_ON_CPU), 1, 10, 1];
        assert_eq!(RawSample::parse(&cpu).unwrap().mem_block(), None);
        assert!(RawSample::parse(&cpu).unwrap().native_pcs().is_empty());
        let native = [5, 1, pack_thread(0, FLAG_NATIVE), 1, 17, 1, 2, 0x400, 0x500];
        let r = RawSample::parse(&native).unwrap();
        assert_eq!(r.frames_leaf_first().collect::<Vec<_>>(), [(16, 1, true)]);
        assert_eq!(r.native_pcs(), [0x400, 0x500]);
    }
}
