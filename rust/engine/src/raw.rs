//! The raw sample record the signal handler writes into the [`Ring`](crate::ring::Ring): plain
//! words, no pointers into Rust data, so that writing it is a handful of stores.
//!
//! Body layout (in `u64` words):
//! `[timestamp_ns, weight, thread_slot | flags << 32, depth, (code, instr) * depth]`,
//! frames leaf first (the order a walk discovers them).

pub const HEADER_WORDS: usize = 4;
pub const WORDS_PER_FRAME: usize = 2;

/// The stack was deeper than the record limit: only the innermost frames were kept.
pub const FLAG_TRUNCATED: u32 = 1;
/// Wall-clock mode: the thread was running on a CPU when sampled.
pub const FLAG_ON_CPU: u32 = 2;

pub fn body_words(depth: usize) -> usize {
    HEADER_WORDS + depth * WORDS_PER_FRAME
}

/// A decoded view of one record body.
pub struct RawSample<'a> {
    pub timestamp_ns: u64,
    pub weight: u64,
    pub thread_slot: u32,
    pub flags: u32,
    body: &'a [u64],
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
        })
    }

    pub fn depth(&self) -> usize {
        self.body[3] as usize
    }

    /// `(code, instr)` pairs, leaf first.
    pub fn frames_leaf_first(&self) -> impl DoubleEndedIterator<Item = (u64, u64)> + 'a {
        self.body[HEADER_WORDS..]
            .chunks_exact(WORDS_PER_FRAME)
            .map(|c| (c[0], c[1]))
    }
}

pub fn pack_thread(thread_slot: u32, flags: u32) -> u64 {
    thread_slot as u64 | (flags as u64) << 32
}
