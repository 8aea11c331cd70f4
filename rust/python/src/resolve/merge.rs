//! One stack from a sample's native and Python frames (GIL side, allocation allowed).
//!
//! Each native frame of the eval loop (`_PyEval_EvalFrameDefault`) stands for the run of
//! Python frames it executes, up to and including the run's entry frame, which the walker
//! marks. So, leaf first, the merged stack is the native frames with each eval-loop frame
//! replaced by its run; Python frames left over (all of them when there are no native frames,
//! else the native walk ended early) are the callers and go to the root side.
//!
//! Two kinds of native frames take no part:
//! - the tail-calling interpreter (clang builds of 3.14+) runs each instruction in its own
//!   handler function (`_TAIL_CALL_<op>`), called by the eval loop's frame; a handler is the
//!   eval loop at work, already stood for by that frame, so it is left out;
//! - an eval loop caught in its prologue or epilogue has no Python frame linked (yet, or any
//!   more): when the native stack holds more eval loops than the Python stack has runs, the
//!   leaf-most ones are such and are left out (matching them would shift every run by one).

use crate::cpython::eval_loop::NativeRole;

/// The merged stack, leaf first, of `natives` (leaf first, each with its role) and `python`
/// (leaf first, `(frame, entry)`). `complete`: the Python stack was not truncated at the depth
/// cap (a truncated one lacks its root-side runs, so surplus eval loops cannot be told).
pub fn merge<F: Copy>(natives: &[(F, NativeRole)], python: &[(F, bool)], complete: bool) -> Vec<F> {
    let runs = python.iter().filter(|&&(_, entry)| entry).count();
    let evals = natives
        .iter()
        .filter(|n| n.1 == NativeRole::EvalLoop)
        .count();
    let mut surplus = if complete && !natives.is_empty() {
        evals.saturating_sub(runs)
    } else {
        0
    };
    let mut merged = Vec::with_capacity(natives.len() + python.len());
    let mut python = python.iter();
    for &(frame, role) in natives {
        match role {
            NativeRole::Other => merged.push(frame),
            NativeRole::EvalHelper => {}
            NativeRole::EvalLoop if surplus > 0 => surplus -= 1,
            NativeRole::EvalLoop => {
                for &(frame, entry) in python.by_ref() {
                    merged.push(frame);
                    if entry {
                        break;
                    }
                }
            }
        }
    }
    merged.extend(python.map(|&(frame, _)| frame));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use NativeRole::{EvalHelper as H, EvalLoop as E, Other as C};

    /// Python frames are "p<n>", entries marked with a trailing '!'.
    fn py(frames: &[&'static str]) -> Vec<(&'static str, bool)> {
        frames
            .iter()
            .map(|f| (f.trim_end_matches('!'), f.ends_with('!')))
            .collect()
    }

    #[test]
    fn each_eval_loop_becomes_its_run() {
        // main.py calls sorted() (C), which calls key() (Python) back.
        let natives = [
            ("qsort", C),
            ("_PyEval", E),
            ("sorted", C),
            ("_PyEval", E),
            ("main", C),
        ];
        let python = py(&["key!", "work", "module!"]);
        assert_eq!(
            merge(&natives, &python, true),
            ["qsort", "key", "sorted", "work", "module", "main"]
        );
    }

    #[test]
    fn tail_call_handlers_are_left_out_and_no_python_frame_is_lost_or_doubled() {
        // A clang 3.14+ build: each eval loop calls one instruction handler, which calls C.
        let natives = [
            ("memcpy", C),
            ("_TAIL_CALL_CALL_BUILTIN_FAST", H),
            ("_PyEval", E),
            ("sorted", C),
            ("_TAIL_CALL_CALL", H),
            ("_PyEval", E),
            ("main", C),
        ];
        let python = py(&["key!", "work", "module!"]);
        assert_eq!(
            merge(&natives, &python, true),
            ["memcpy", "key", "sorted", "work", "module", "main"]
        );
    }

    #[test]
    fn an_eval_loop_in_its_prologue_is_left_out() {
        let natives = [("_PyEval", E), ("call", C), ("_PyEval", E), ("main", C)];
        assert_eq!(
            merge(&natives, &py(&["f", "module!"]), true),
            ["call", "f", "module", "main"]
        );
    }

    #[test]
    fn python_frames_beyond_a_short_native_walk_go_to_the_root_side() {
        let natives = [("leaf", C), ("_PyEval", E)];
        assert_eq!(
            merge(&natives, &py(&["f!", "g!", "module!"]), false),
            ["leaf", "f", "g", "module"]
        );
        assert_eq!(merge::<&str>(&[], &py(&["f", "g!"]), true), ["f", "g"]);
    }
}
