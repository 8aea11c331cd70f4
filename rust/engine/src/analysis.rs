//! The first questions everyone asks of a profile: where is the self and total time (per
//! function, line or file), how is it split between threads, what changed between two profiles;
//! and the filters that narrow a profile down (time window, frames of interest).
//!
//! Self time of a key = weight of the samples whose leaf frame has that key. Total time = weight
//! of the samples with that key anywhere in the stack, counted once per sample (recursion does
//! not count twice).

use crate::store::{FrameId, Importer, Store, EMPTY_STACK};
use std::collections::{HashMap, HashSet};

/// What top-lists and diffs aggregate by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Function,
    Line,
    File,
}

impl Group {
    pub fn parse(s: &str) -> Option<Group> {
        match s {
            "function" => Some(Group::Function),
            "line" => Some(Group::Line),
            "file" => Some(Group::File),
            _ => None,
        }
    }
}

/// (function, file, line) with the parts the grouping ignores left empty/zero.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub function: String,
    pub filename: String,
    pub lineno: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub self_weight: i64,
    pub total_weight: i64,
    /// Samples in which the key appears.
    pub samples: u64,
}

fn key_of(store: &Store, frame: FrameId, group: Group) -> Key {
    let f = store.frames()[frame as usize];
    match group {
        Group::Function => Key {
            function: store.string(f.function).to_owned(),
            filename: store.string(f.file).to_owned(),
            lineno: 0,
        },
        Group::Line => Key {
            function: store.string(f.function).to_owned(),
            filename: store.string(f.file).to_owned(),
            lineno: f.line,
        },
        Group::File => Key {
            function: String::new(),
            filename: store.string(f.file).to_owned(),
            lineno: 0,
        },
    }
}

/// Self and total weight per key. Work is done once per distinct stack, then weighted by the
/// samples of that stack.
pub fn aggregate(store: &Store, group: Group) -> HashMap<Key, Totals> {
    let mut per_stack: HashMap<u32, (i64, u64)> = HashMap::new();
    for (i, &stack) in store.stacks.iter().enumerate() {
        if stack != EMPTY_STACK {
            let e = per_stack.entry(stack).or_default();
            e.0 += store.weights[i];
            e.1 += 1;
        }
    }
    let mut keys: HashMap<FrameId, Key> = HashMap::new();
    let mut out: HashMap<Key, Totals> = HashMap::new();
    let mut seen: HashSet<Key> = HashSet::new();
    for (stack, (weight, count)) in per_stack {
        let frames = store.stack_frames(stack);
        seen.clear();
        for &f in &frames {
            let key = keys.entry(f).or_insert_with(|| key_of(store, f, group));
            if seen.insert(key.clone()) {
                let t = out.entry(key.clone()).or_default();
                t.total_weight += weight;
                t.samples += count;
            }
        }
        if let Some(&leaf) = frames.last() {
            out.entry(keys[&leaf].clone()).or_default().self_weight += weight;
        }
    }
    out
}

/// Keys sorted by self (or total) weight, heaviest first; ties by key for a stable order.
pub fn top(store: &Store, group: Group, by_total: bool) -> Vec<(Key, Totals)> {
    let mut rows: Vec<(Key, Totals)> = aggregate(store, group).into_iter().collect();
    rows.sort_by(|a, b| {
        let (x, y) = if by_total {
            (a.1.total_weight, b.1.total_weight)
        } else {
            (a.1.self_weight, b.1.self_weight)
        };
        y.cmp(&x).then_with(|| a.0.cmp(&b.0))
    });
    rows
}

pub fn total_weight(store: &Store) -> i64 {
    store.weights.iter().sum()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadRow {
    pub pid: u32,
    pub tid: u64,
    pub name: String,
    /// The asyncio task (profiles taken with `async_aware`): a row per thread and task.
    pub task: Option<String>,
    pub samples: u64,
    pub weight: i64,
    /// Weight of the samples taken while the thread was running.
    pub on_cpu_weight: i64,
}

/// Weight per thread, heaviest first.
pub fn per_thread(store: &Store) -> Vec<ThreadRow> {
    let mut rows: Vec<ThreadRow> = store
        .threads()
        .iter()
        .map(|t| ThreadRow {
            pid: t.pid,
            tid: t.tid,
            name: t.name.clone(),
            task: t.task.clone(),
            samples: 0,
            weight: 0,
            on_cpu_weight: 0,
        })
        .collect();
    for i in 0..store.len() {
        let r = &mut rows[store.thread_ids[i] as usize];
        r.samples += 1;
        r.weight += store.weights[i];
        if store.on_cpu[i] {
            r.on_cpu_weight += store.weights[i];
        }
    }
    rows.retain(|r| r.samples > 0);
    rows.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.tid.cmp(&b.tid)));
    rows
}

#[derive(Clone, Debug, PartialEq)]
pub struct DiffRow {
    pub key: Key,
    pub baseline: Totals,
    pub current: Totals,
    /// Share of each profile's total weight, in percent.
    pub baseline_self_pct: f64,
    pub current_self_pct: f64,
    pub baseline_total_pct: f64,
    pub current_total_pct: f64,
}

impl DiffRow {
    pub fn delta_self(&self) -> i64 {
        self.current.self_weight - self.baseline.self_weight
    }
    pub fn delta_total(&self) -> i64 {
        self.current.total_weight - self.baseline.total_weight
    }
}

fn pct(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Per key, both profiles' figures; the keys whose self time grew most come first (the
/// functions that got slower themselves, not their callers), then by growth of total time.
pub fn diff(baseline: &Store, current: &Store, group: Group) -> Vec<DiffRow> {
    let (b, c) = (aggregate(baseline, group), aggregate(current, group));
    let (bt, ct) = (total_weight(baseline), total_weight(current));
    let keys: HashSet<&Key> = b.keys().chain(c.keys()).collect();
    let mut rows: Vec<DiffRow> = keys
        .into_iter()
        .map(|k| {
            let (base, cur) = (
                b.get(k).cloned().unwrap_or_default(),
                c.get(k).cloned().unwrap_or_default(),
            );
            DiffRow {
                key: k.clone(),
                baseline_self_pct: pct(base.self_weight, bt),
                current_self_pct: pct(cur.self_weight, ct),
                baseline_total_pct: pct(base.total_weight, bt),
                current_total_pct: pct(cur.total_weight, ct),
                baseline: base,
                current: cur,
            }
        })
        .collect();
    rows.sort_by(|x, y| {
        y.delta_self()
            .cmp(&x.delta_self())
            .then(y.delta_total().cmp(&x.delta_total()))
            .then_with(|| x.key.cmp(&y.key))
    });
    rows
}

/// A new store with only the samples `keep` accepts (frames and stacks re-interned, so nothing
/// unused is carried over).
pub fn select(store: &Store, keep: impl FnMut(usize) -> bool) -> Store {
    rebuild(store, keep, |stack| Some(store.stack_frames(stack)))
}

/// The samples taken in the program a launcher ran: the frames of `launcher` are cut from the
/// root of each stack, and a sample whose stack starts in the launcher is kept only if the last
/// frame cut is one of `entry` (where the launcher calls the program) and a frame is left.
/// Stacks that do not start in the launcher (the threads the program started) stay whole.
pub fn below_launcher(
    store: &Store,
    launcher: &HashSet<FrameId>,
    entry: &HashSet<FrameId>,
) -> Store {
    rebuild(
        store,
        |_| true,
        |stack| {
            let frames = store.stack_frames(stack);
            let cut = frames.iter().take_while(|f| launcher.contains(f)).count();
            if cut == 0 {
                return (!frames.is_empty()).then_some(frames);
            }
            (entry.contains(&frames[cut - 1]) && cut < frames.len()).then(|| frames[cut..].to_vec())
        },
    )
}

/// A new store of the samples `keep` accepts, each with the frames `frames_of` gives for its
/// stack (root first; `None` leaves the sample out), re-interned.
fn rebuild(
    store: &Store,
    mut keep: impl FnMut(usize) -> bool,
    mut frames_of: impl FnMut(u32) -> Option<Vec<FrameId>>,
) -> Store {
    let mut out = Store::new(usize::MAX);
    out.copy_process_names(store);
    let mut import = Importer::new(store);
    let mut stack_map: HashMap<u32, Option<u32>> = HashMap::new();
    for i in 0..store.len() {
        if !keep(i) {
            continue;
        }
        let stack = store.stacks[i];
        let new_stack = match stack_map.get(&stack) {
            Some(&s) => s,
            None => {
                let s = frames_of(stack)
                    .map(|frames| import.stack(&mut out, &frames).expect("unbounded store"));
                stack_map.insert(stack, s);
                s
            }
        };
        let Some(new_stack) = new_stack else {
            continue;
        };
        let new_thread = import.thread(&mut out, store.thread_ids[i]);
        out.add_sample(
            store.timestamps_ns[i],
            store.weights[i],
            new_thread,
            new_stack,
            store.on_cpu[i],
        );
    }
    out.add_dropped(store.dropped());
    out
}

/// Every sample, its stack starting at its outermost frame of `entry` (stacks without one stay
/// whole): a forked child's frames above the call it was forked to make are its parent's.
pub fn starting_at(store: &Store, entry: &HashSet<FrameId>) -> Store {
    rebuild(
        store,
        |_| true,
        |stack| {
            let frames = store.stack_frames(stack);
            let from = frames.iter().position(|f| entry.contains(f)).unwrap_or(0);
            Some(frames[from..].to_vec())
        },
    )
}

/// Samples whose stack contains at least one frame of `frames`.
pub fn select_with_frames(store: &Store, frames: &HashSet<FrameId>) -> Store {
    let mut verdict: HashMap<u32, bool> = HashMap::new();
    let stacks = &store.stacks;
    select(store, |i| {
        let stack = stacks[i];
        *verdict
            .entry(stack)
            .or_insert_with(|| store.stack_frames(stack).iter().any(|f| frames.contains(f)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// main → work → leaf (self 30), main → work (self 10), main (self 5), main → rec → rec (self 7).
    fn sample_store() -> Store {
        let mut s = Store::new(usize::MAX);
        let t = s.add_thread(7, "main");
        let u = s.add_thread(8, "worker");
        let main = s.intern_frame("main", "app.py", 1, false).unwrap();
        let work = s.intern_frame("work", "app.py", 10, false).unwrap();
        let work2 = s.intern_frame("work", "app.py", 11, false).unwrap();
        let leaf = s.intern_frame("leaf", "lib.py", 3, false).unwrap();
        let rec = s.intern_frame("rec", "lib.py", 20, false).unwrap();
        let a = s.intern_stack([main, work, leaf]).unwrap();
        let b = s.intern_stack([main, work2]).unwrap();
        let c = s.intern_stack([main]).unwrap();
        let d = s.intern_stack([main, rec, rec]).unwrap();
        s.add_sample(0, 10, t, a, true);
        s.add_sample(1, 20, u, a, true);
        s.add_sample(2, 10, t, b, false);
        s.add_sample(3, 5, t, c, true);
        s.add_sample(4, 7, u, d, true);
        s.add_sample(5, 3, t, EMPTY_STACK, true);
        s
    }

    fn get(rows: &[(Key, Totals)], function: &str) -> Totals {
        rows.iter()
            .find(|r| r.0.function == function)
            .unwrap()
            .1
            .clone()
    }

    #[test]
    fn self_and_total_per_function() {
        let s = sample_store();
        let rows = top(&s, Group::Function, false);
        assert_eq!(rows[0].0.function, "leaf");
        assert_eq!(
            get(&rows, "leaf"),
            Totals {
                self_weight: 30,
                total_weight: 30,
                samples: 2
            }
        );
        assert_eq!(
            get(&rows, "work"),
            Totals {
                self_weight: 10,
                total_weight: 40,
                samples: 3
            }
        );
        assert_eq!(
            get(&rows, "main"),
            Totals {
                self_weight: 5,
                total_weight: 52,
                samples: 5
            }
        );
        // Recursion counts once per sample in total time.
        assert_eq!(
            get(&rows, "rec"),
            Totals {
                self_weight: 7,
                total_weight: 7,
                samples: 1
            }
        );
        let self_sum: i64 = rows.iter().map(|r| r.1.self_weight).sum();
        assert_eq!(
            self_sum + 3,
            total_weight(&s),
            "self times add up (plus the empty stack)"
        );
        assert_eq!(top(&s, Group::Function, true)[0].0.function, "main");
    }

    #[test]
    fn grouping_by_line_and_file() {
        let s = sample_store();
        let lines = top(&s, Group::Line, true);
        assert!(lines
            .iter()
            .any(|r| r.0.function == "work" && r.0.lineno == 10 && r.1.total_weight == 30));
        assert!(lines
            .iter()
            .any(|r| r.0.function == "work" && r.0.lineno == 11 && r.1.self_weight == 10));
        let files = top(&s, Group::File, false);
        assert_eq!(files[0].0.filename, "lib.py");
        assert_eq!(files[0].1.self_weight, 37);
    }

    #[test]
    fn per_thread_weights() {
        let rows = per_thread(&sample_store());
        assert_eq!(rows[0].tid, 7);
        assert_eq!(
            (rows[0].samples, rows[0].weight, rows[0].on_cpu_weight),
            (4, 28, 18)
        );
        assert_eq!((rows[1].tid, rows[1].samples, rows[1].weight), (8, 2, 27));
    }

    #[test]
    fn diff_names_the_function_that_grew() {
        let base = sample_store();
        let mut cur = sample_store();
        let t = 0;
        let slow = cur.intern_frame("slow", "lib.py", 5, false).unwrap();
        let main = cur.intern_frame("main", "app.py", 1, false).unwrap();
        let st = cur.intern_stack([main, slow]).unwrap();
        cur.add_sample(9, 100, t, st, true);
        let rows = diff(&base, &cur, Group::Function);
        assert_eq!(rows[0].key.function, "slow");
        assert_eq!(
            (rows[0].baseline.self_weight, rows[0].current.self_weight),
            (0, 100)
        );
        assert_eq!(rows[0].delta_self(), 100);
        let main_row = rows.iter().find(|r| r.key.function == "main").unwrap();
        assert_eq!(main_row.delta_total(), 100);
        assert!(rows[0].current_self_pct > 60.0 && rows[0].baseline_self_pct == 0.0);
    }

    #[test]
    fn launcher_frames_are_cut_and_samples_not_entering_the_program_go() {
        let mut s = sample_store();
        let find = |s: &Store, name: &str| {
            s.frames()
                .iter()
                .position(|f| s.string(f.function) == name)
                .unwrap() as FrameId
        };
        // A thread the program started: its stack does not start in the launcher.
        let thread = s.add_thread(9, "helper");
        let leaf = s.intern_stack([find(&s, "leaf")]).unwrap();
        s.add_sample(100, 3, thread, leaf, true);
        let main = HashSet::from([find(&s, "main")]);
        assert_eq!(below_launcher(&s, &main, &HashSet::new()).len(), 1);
        let cut = below_launcher(&s, &main, &main);
        // main alone and the empty stack are gone; the other stacks start below main.
        assert_eq!(cut.len(), 5);
        let roots: HashSet<&str> = (0..cut.len())
            .map(|i| cut.string(cut.frames()[cut.stack_frames(cut.stacks[i])[0] as usize].function))
            .collect();
        assert_eq!(roots, HashSet::from(["work", "rec", "leaf"]));
        assert_eq!(total_weight(&cut), 10 + 20 + 10 + 7 + 3);
    }

    #[test]
    fn select_keeps_what_is_asked_and_nothing_else() {
        let s = sample_store();
        let window = select(&s, |i| (1..=3).contains(&s.timestamps_ns[i]));
        assert_eq!(window.timestamps_ns, vec![1, 2, 3]);
        assert_eq!(total_weight(&window), 35);
        assert_eq!(
            window.frames().len(),
            4,
            "only frames of kept samples (rec is gone)"
        );
        let rec = s
            .frames()
            .iter()
            .position(|f| s.string(f.function) == "rec")
            .unwrap() as FrameId;
        let only_rec = select_with_frames(&s, &HashSet::from([rec]));
        assert_eq!(only_rec.len(), 1);
        assert_eq!(only_rec.threads()[only_rec.thread_ids[0] as usize].tid, 8);
    }

    #[test]
    fn stacks_start_at_their_outermost_entry_and_others_stay_whole() {
        let s = sample_store();
        let entry: HashSet<FrameId> = (0..s.frames().len() as FrameId)
            .filter(|&f| ["work", "rec"].contains(&s.string(s.frames()[f as usize].function)))
            .collect();
        let cut = starting_at(&s, &entry);
        let names = |i: usize| -> Vec<&str> {
            cut.stack_frames(cut.stacks[i])
                .iter()
                .map(|&f| cut.string(cut.frames()[f as usize].function))
                .collect()
        };
        assert_eq!(cut.len(), s.len()); // every sample stays
        assert_eq!(names(0), ["work", "leaf"]);
        assert_eq!(names(2), ["work"]);
        assert_eq!(names(3), ["main"]); // no entry: whole
        assert_eq!(names(4), ["rec", "rec"]); // the outermost of the two
        assert!(names(5).is_empty());
        assert_eq!(total_weight(&cut), total_weight(&s));
    }
}
