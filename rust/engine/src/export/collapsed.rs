//! Collapsed stacks (Brendan Gregg's FlameGraph input): `root;...;leaf value`, one line per
//! distinct stack, frames as `function (file:line)`.

use crate::store::{Store, EMPTY_STACK};
use std::collections::HashMap;
use std::fmt::Write;

/// What the number after each stack means.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Value {
    /// How many samples had that stack.
    Count,
    /// The summed sample weights (nanoseconds, or bytes for memory profiles).
    Weight,
}

/// `;` separates frames and a newline ends the line: neither may appear inside a label.
fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([';', '\n', '\r']) {
        s.replace([';', '\n', '\r'], "_").into()
    } else {
        s.into()
    }
}

fn label(store: &Store, frame: u32, with_line: bool) -> String {
    let f = store.frames()[frame as usize];
    let name = clean(store.string(f.function));
    let file = clean(store.string(f.file));
    if f.is_native {
        format!("[native] {name} ({file})")
    } else if with_line {
        format!("{name} ({file}:{})", f.line)
    } else {
        format!("{name} ({file})")
    }
}

/// The text label of a frame, as used in collapsed stacks and flame graphs.
pub fn frame_label(store: &Store, frame: u32) -> String {
    label(store, frame, true)
}

/// A frame's label without its line, `function (file)`: differential flame graphs use it, so that
/// the stacks of two versions of a program still match where lines moved.
pub fn function_label(store: &Store, frame: u32) -> String {
    label(store, frame, false)
}

/// Lines sorted by stack text; samples without any frame are left out. In a profile merged from
/// several processes, each stack starts with its process ([`Store::process_label`]), so a flame
/// graph's roots are the processes.
pub fn write(store: &Store, value: Value) -> String {
    write_labelled(store, value, frame_label)
}

/// [`write`] with frames labelled by `label`; stacks whose labels are equal make one line.
pub fn write_labelled(store: &Store, value: Value, label: fn(&Store, u32) -> String) -> String {
    let by_process = store.is_multi_process();
    // Per (stack, process): the process is left at 0 when there is only one.
    let mut per_stack: HashMap<(u32, u32), i64> = HashMap::new();
    for (i, &stack) in store.stacks.iter().enumerate() {
        if stack != EMPTY_STACK {
            let pid = if by_process {
                store.threads()[store.thread_ids[i] as usize].pid
            } else {
                0
            };
            *per_stack.entry((stack, pid)).or_default() += match value {
                Value::Count => 1,
                Value::Weight => store.weights[i],
            };
        }
    }
    let labels: Vec<String> = (0..store.frames().len() as u32)
        .map(|f| label(store, f))
        .collect();
    let roots: HashMap<u32, String> = store
        .pids()
        .into_iter()
        .map(|pid| (pid, clean(&store.process_label(pid)).into_owned()))
        .collect();
    let mut lines: Vec<(String, i64)> = per_stack
        .into_iter()
        .map(|((stack, pid), v)| {
            let root = by_process.then(|| roots[&pid].as_str());
            let text: Vec<&str> = root
                .into_iter()
                .chain(
                    store
                        .stack_frames(stack)
                        .into_iter()
                        .map(|f| labels[f as usize].as_str()),
                )
                .collect();
            (text.join(";"), v)
        })
        .collect();
    lines.sort();
    lines.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    let mut out = String::new();
    for (stack, v) in lines {
        let _ = writeln!(out, "{stack} {v}");
    }
    out
}
