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

/// Lines sorted by stack text; samples without any frame are left out.
pub fn write(store: &Store, value: Value) -> String {
    write_labelled(store, value, frame_label)
}

/// [`write`] with frames labelled by `label`; stacks whose labels are equal make one line.
pub fn write_labelled(store: &Store, value: Value, label: fn(&Store, u32) -> String) -> String {
    let mut per_stack: HashMap<u32, i64> = HashMap::new();
    for (i, &stack) in store.stacks.iter().enumerate() {
        if stack != EMPTY_STACK {
            *per_stack.entry(stack).or_default() += match value {
                Value::Count => 1,
                Value::Weight => store.weights[i],
            };
        }
    }
    let labels: Vec<String> = (0..store.frames().len() as u32)
        .map(|f| label(store, f))
        .collect();
    let mut lines: Vec<(String, i64)> = per_stack
        .into_iter()
        .map(|(stack, v)| {
            let text: Vec<&str> = store
                .stack_frames(stack)
                .into_iter()
                .map(|f| labels[f as usize].as_str())
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
