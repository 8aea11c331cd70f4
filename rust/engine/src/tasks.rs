//! asyncio-aware samples: the ticks of an event loop's thread given to its tasks.
//!
//! The Python side (`spprof/_tasks.py`) notes, for the tasks it traces, each *step* (the task
//! ran on its loop's thread) and each *wait* (the task was suspended, awaiting a chain of
//! coroutines), when a sample fell inside. [`with_tasks`] then rewrites the samples of those
//! threads, as a thread is to its samples, a task is to its own:
//!
//! - a tick inside a step is the running task's, its stack starting at the task's coroutine
//!   (below the tracer's step frame, which is where the event loop handed over);
//! - every wait that covers a tick gives its task a sample at that tick, with the same weight,
//!   whose stack is the awaited chain, and which is off CPU;
//! - a tick of a loop that was idle (off CPU and in no step) while tasks waited stands for
//!   their waiting: it is replaced by their samples. Other ticks stay as they are.

use crate::store::{FrameId, Importer, StackId, Store};
use std::collections::HashMap;

/// A task ran on thread `tid` over `[start_ns, end_ns]` (the store's clock).
pub struct Step {
    pub start_ns: i64,
    pub end_ns: i64,
    pub tid: u64,
    pub task: String,
}

/// A task of thread `tid` was suspended over `[start_ns, end_ns)`, awaiting `frames`
/// (function, file, line; outermost first).
pub struct Wait {
    pub start_ns: i64,
    pub end_ns: i64,
    pub tid: u64,
    pub task: String,
    pub frames: Vec<(String, String, u32)>,
}

/// The samples of `store` (recorded by its own process) with the tasks' steps and waits applied
/// (see the module). `entry` is the frame, by function and file, under which a traced task's
/// coroutine runs.
pub fn with_tasks(store: &Store, steps: &[Step], waits: &[Wait], entry: (&str, &str)) -> Store {
    let mut out = Store::new(usize::MAX);
    out.copy_process_names(store);
    out.add_dropped(store.dropped());
    let mut import = Importer::new(store);
    let entries: Vec<FrameId> = (0..store.frames().len() as FrameId)
        .filter(|&f| {
            let fr = store.frames()[f as usize];
            (store.string(fr.function), store.string(fr.file)) == entry
        })
        .collect();
    let mut steps = by_thread(steps.iter().map(|s| (s.tid, s)));
    for list in steps.values_mut() {
        list.sort_by_key(|s| s.start_ns);
    }
    let mut waits = by_thread(waits.iter().map(|w| (w.tid, w)));
    for list in waits.values_mut() {
        list.sort_by_key(|w| w.start_ns);
    }
    let mut chains: HashMap<*const Wait, StackId> = HashMap::new();
    // Per thread: the next wait to open, and the waits open at the current tick.
    let mut sweep: HashMap<u64, (usize, Vec<&Wait>)> = HashMap::new();
    for i in order_by_time(store) {
        let info = &store.threads()[store.thread_ids[i] as usize];
        let (ts, weight) = (store.timestamps_ns[i], store.weights[i]);
        let frames = store.stack_frames(store.stacks[i]);
        let own = info.pid == store.pid() && info.task.is_none();
        let running = own
            .then(|| steps.get(&info.tid))
            .flatten()
            .and_then(|list| step_at(list, ts));
        let waiting: Vec<&Wait> = match (own, waits.get(&info.tid)) {
            (true, Some(list)) => {
                let (next, open) = sweep.entry(info.tid).or_default();
                while *next < list.len() && list[*next].start_ns <= ts {
                    open.push(list[*next]);
                    *next += 1;
                }
                open.retain(|w| w.end_ns > ts);
                open.clone()
            }
            _ => Vec::new(),
        };
        let (task, kept) = match running {
            Some(step) => {
                // The task's own frames: below the innermost tracer frame, unless the tick
                // fell in the tracer itself (its cost, shown as it is).
                let from = frames
                    .iter()
                    .rposition(|f| entries.contains(f))
                    .map_or(0, |e| if e + 1 < frames.len() { e + 1 } else { e });
                (Some(step.task.as_str()), &frames[from..])
            }
            None => (None, &frames[..]),
        };
        // An idle loop's tick while tasks wait is theirs: it is replaced by their samples.
        let replaced = running.is_none() && !store.on_cpu[i] && !waiting.is_empty();
        if !replaced {
            let thread = out.add_task_thread(info.pid, info.tid, &info.name, task);
            let stack = import.stack(&mut out, kept).expect("unbounded store");
            out.add_sample(ts, weight, thread, stack, store.on_cpu[i]);
        }
        for w in waiting {
            let stack = *chains.entry(w as *const Wait).or_insert_with(|| {
                let ids: Vec<FrameId> = w
                    .frames
                    .iter()
                    .map(|(f, file, line)| out.intern_frame(f, file, *line, false))
                    .collect::<Option<_>>()
                    .expect("unbounded store");
                out.intern_stack(ids).expect("unbounded store")
            });
            let thread = out.add_task_thread(info.pid, info.tid, &info.name, Some(&w.task));
            out.add_sample(ts, weight, thread, stack, false);
        }
    }
    out
}

fn by_thread<'a, T>(items: impl Iterator<Item = (u64, &'a T)>) -> HashMap<u64, Vec<&'a T>> {
    let mut map: HashMap<u64, Vec<&T>> = HashMap::new();
    for (tid, item) in items {
        map.entry(tid).or_default().push(item);
    }
    map
}

/// The step of a thread's steps (in time order, not overlapping) that covers `ts`.
fn step_at<'a>(steps: &[&'a Step], ts: i64) -> Option<&'a Step> {
    let i = steps.partition_point(|s| s.start_ns <= ts);
    (i > 0 && ts <= steps[i - 1].end_ns).then(|| steps[i - 1])
}

/// Sample indices in timestamp order (stable: the store's order among equal times).
fn order_by_time(store: &Store) -> Vec<usize> {
    let mut order: Vec<usize> = (0..store.len()).collect();
    order.sort_by_key(|&i| store.timestamps_ns[i]);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(out: &Store, i: usize) -> (Option<String>, Vec<String>) {
        let info = &out.threads()[out.thread_ids[i] as usize];
        let frames = out
            .stack_frames(out.stacks[i])
            .iter()
            .map(|&f| out.string(out.frames()[f as usize].function).to_owned())
            .collect();
        (info.task.clone(), frames)
    }

    fn wait(task: &str, start_ns: i64, end_ns: i64, chain: &[&str]) -> Wait {
        Wait {
            start_ns,
            end_ns,
            tid: 1,
            task: task.into(),
            frames: chain
                .iter()
                .map(|f| (f.to_string(), "app.py".into(), 1))
                .collect(),
        }
    }

    /// A loop thread (tid 1) and another thread (tid 2): the loop runs task A's step over
    /// [100, 200], and is idle at 300; B waits over [0, 400). The other thread is untouched.
    #[test]
    fn ticks_go_to_the_running_task_and_to_every_waiting_one() {
        let mut s = Store::new(usize::MAX);
        let t = s.add_thread(1, "MainThread");
        let other = s.add_thread(2, "worker");
        let f = |s: &mut Store, n: &str, file: &str| s.intern_frame(n, file, 1, false).unwrap();
        let (run, step, a, select) = (
            f(&mut s, "run", "asyncio.py"),
            f(&mut s, "_Traced._step", "_tasks.py"),
            f(&mut s, "a", "app.py"),
            f(&mut s, "select", "selectors.py"),
        );
        let running = s.intern_stack([run, step, a]).unwrap();
        let idle = s.intern_stack([run, select]).unwrap();
        s.add_sample(150, 10, t, running, true);
        s.add_sample(150, 10, other, idle, false);
        s.add_sample(300, 20, t, idle, false);
        s.add_sample(500, 30, t, idle, false); // no task waits any more: the loop's own
        let steps = [Step {
            start_ns: 100,
            end_ns: 200,
            tid: 1,
            task: "A".into(),
        }];
        let waits = [wait("B", 0, 400, &["b", "sleep"])];
        let out = with_tasks(&s, &steps, &waits, ("_Traced._step", "_tasks.py"));
        let rows: Vec<_> = (0..out.len())
            .map(|i| (out.timestamps_ns[i], out.weights[i], names(&out, i)))
            .collect();
        let some = |t: &str| Some(t.to_string());
        let v = |fs: &[&str]| fs.iter().map(|f| f.to_string()).collect::<Vec<_>>();
        assert_eq!(
            rows,
            vec![
                (150, 10, (some("A"), v(&["a"]))),
                (150, 10, (some("B"), v(&["b", "sleep"]))),
                (150, 10, (None, v(&["run", "select"]))),
                (300, 20, (some("B"), v(&["b", "sleep"]))),
                (500, 30, (None, v(&["run", "select"]))),
            ]
        );
        assert!(!out.on_cpu[1]);
    }

    #[test]
    fn overlapping_waits_of_one_thread_each_get_the_tick() {
        let mut s = Store::new(usize::MAX);
        let t = s.add_thread(1, "MainThread");
        let select = s.intern_frame("select", "selectors.py", 1, false).unwrap();
        let idle = s.intern_stack([select]).unwrap();
        for ts in [10, 20, 30] {
            s.add_sample(ts, 10, t, idle, false);
        }
        let waits = [
            wait("A", 0, 25, &["a"]),
            wait("B", 5, 40, &["b"]),
            wait("C", 15, 18, &["c"]),
        ];
        let out = with_tasks(&s, &[], &waits, ("_step", "_tasks.py"));
        let tasks: Vec<_> = (0..out.len()).map(|i| names(&out, i).0.unwrap()).collect();
        assert_eq!(tasks, ["A", "B", "A", "B", "B"]);
    }
}
