//! Byte offsets of the CPython internals the frame walker reads, one table per supported minor
//! version. The tables are generated from each interpreter's own headers by
//! `scripts/gen_offsets.py` (see `offsets_generated.rs`); `usize::MAX` marks a field that does not
//! exist in that version.

/// How a thread's frame chain is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameLayout {
    /// 3.9/3.10: PyThreadState.frame -> PyFrameObject, linked by f_back.
    FrameObject,
    /// 3.11/3.12: PyThreadState.cframe -> CFrame.current_frame -> _PyInterpreterFrame, linked by previous.
    CFrame,
    /// 3.13+: PyThreadState.current_frame -> _PyInterpreterFrame, linked by previous.
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    pub major: u8,
    pub minor: u8,
    pub layout: FrameLayout,
    // PyThreadState
    pub tstate_next: usize,
    pub tstate_interp: usize,
    pub tstate_thread_id: usize,
    pub tstate_native_thread_id: usize,
    /// FrameObject: `frame`; CFrame: `cframe`; Direct: `current_frame`.
    pub tstate_frame: usize,
    /// CFrame layout only: `CFrame.current_frame`.
    pub cframe_current_frame: usize,
    // The frame (PyFrameObject up to 3.10, _PyInterpreterFrame after)
    /// `f_back` (3.9/3.10) / `previous` (3.11+).
    pub frame_back: usize,
    /// `f_code` (3.9–3.12) / `f_executable` (3.13).
    pub frame_code: usize,
    /// `int f_lasti` (3.9/3.10), `prev_instr` (3.11/3.12), `instr_ptr` (3.13).
    pub frame_instr: usize,
    /// `char owner` (3.11+).
    pub frame_owner: usize,
    pub frame_size: usize,
    // PyCodeObject
    pub code_code_adaptive: usize,
    pub code_firsttraceable: usize,
    pub code_firstlineno: usize,
    // PyInterpreterState
    pub interp_tstate_head: usize,
    /// Owner value of a C-stack shim frame (3.12+); 255 where there is none.
    pub frame_owned_by_cstack: u8,
}

include!("offsets_generated.rs");
