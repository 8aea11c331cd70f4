//! The columnar profile: interned strings and frames, a prefix tree of stacks, and one row per
//! sample. Every byte it holds is counted against a budget; a sample that would exceed the budget
//! is dropped and counted instead of growing the store.

use std::collections::HashMap;
use std::hash::Hash;
use std::mem::size_of;

pub type StrId = u32;
pub type FrameId = u32;
/// Index of a node of the stack tree. A node is (parent, frame): the stack root → that frame.
pub type StackId = u32;
/// The stack of a sample that had no frame at all.
pub const EMPTY_STACK: StackId = u32::MAX;
/// The thread entry shared by the threads registered once the memory budget ran out.
pub const OVERFLOW_THREAD_NAME: &str = "<threads past the memory limit>";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    pub function: StrId,
    pub file: StrId,
    pub line: u32,
    pub is_native: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    /// The process the thread ran in (profiles merged from several processes hold many).
    pub pid: u32,
    pub tid: u64,
    pub name: String,
    /// The asyncio task the samples are of (profiles taken with `async_aware`), if any.
    pub task: Option<String>,
    /// The task in the thread index: 0 for none, else its interned string's id + 1.
    task_key: u32,
}

/// What identifies a thread entry: process, thread id, thread name and task key (a number, so
/// that the index's entries are no larger than without tasks).
type ThreadKey = (u32, u64, Box<str>, u32);

#[derive(Default)]
pub struct Store {
    strings: Vec<Box<str>>,
    string_ids: HashMap<Box<str>, StrId>,
    frames: Vec<Frame>,
    frame_ids: HashMap<Frame, FrameId>,
    stack_nodes: Vec<(StackId, FrameId)>,
    stack_ids: HashMap<(StackId, FrameId), StackId>,
    threads: Vec<ThreadInfo>,
    thread_index: HashMap<ThreadKey, u32>,
    /// The process that [`Store::add_thread`] files threads under: the one recording.
    pid: u32,
    /// What each process was (its command or `multiprocessing` name), for merged profiles.
    process_names: HashMap<u32, String>,
    /// The entry that stands for the threads registered after the budget ran out.
    overflow_thread: Option<u32>,
    // One entry per sample (columns).
    pub timestamps_ns: Vec<i64>,
    pub weights: Vec<i64>,
    pub stacks: Vec<StackId>,
    pub thread_ids: Vec<u32>,
    /// Whether the thread was running when sampled (always true for CPU-time samples).
    pub on_cpu: Vec<bool>,
    dropped: u64,
    budget_bytes: usize,
    string_bytes: usize,
}

/// Extra bytes a `Vec` would allocate to take `extra` more elements.
fn vec_growth<T>(v: &Vec<T>, extra: usize) -> usize {
    if v.len() + extra <= v.capacity() {
        0
    } else {
        (v.capacity() * 2).max(v.len() + extra).max(8) * size_of::<T>()
    }
}

/// Extra bytes a `HashMap` would allocate to take `extra` more entries (it doubles its buckets).
fn map_growth<K, V>(m: &HashMap<K, V>, extra: usize) -> usize {
    if m.len() + extra <= m.capacity() {
        0
    } else {
        let buckets = ((m.len() + extra) * 8 / 7).next_power_of_two().max(8);
        buckets * (size_of::<(K, V)>() + 1)
    }
}

fn vec_bytes<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

fn map_bytes<K, V>(m: &HashMap<K, V>) -> usize {
    // hashbrown keeps capacity at 7/8 of a power-of-two bucket count, one control byte each.
    let buckets = if m.capacity() == 0 {
        0
    } else {
        (m.capacity() * 8 / 7 + 1).next_power_of_two()
    };
    buckets * (size_of::<(K, V)>() + 1)
}

impl Store {
    pub fn new(budget_bytes: usize) -> Store {
        Store {
            budget_bytes,
            pid: std::process::id(),
            ..Store::default()
        }
    }

    /// Bytes held by the store (allocated capacity, not just what is in use).
    pub fn bytes_used(&self) -> usize {
        self.string_bytes
            + vec_bytes(&self.strings)
            + map_bytes(&self.string_ids)
            + vec_bytes(&self.frames)
            + map_bytes(&self.frame_ids)
            + vec_bytes(&self.stack_nodes)
            + map_bytes(&self.stack_ids)
            + vec_bytes(&self.threads)
            + map_bytes(&self.thread_index)
            + map_bytes(&self.process_names)
            + vec_bytes(&self.timestamps_ns)
            + vec_bytes(&self.weights)
            + vec_bytes(&self.stacks)
            + vec_bytes(&self.thread_ids)
            + vec_bytes(&self.on_cpu)
    }

    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    fn fits(&self, extra_bytes: usize) -> bool {
        self.bytes_used() + extra_bytes <= self.budget_bytes
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Count samples lost before they reached the store (e.g. a full ring).
    pub fn add_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    pub fn len(&self) -> usize {
        self.stacks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stacks.is_empty()
    }

    pub fn string(&self, id: StrId) -> &str {
        &self.strings[id as usize]
    }

    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }

    pub fn threads(&self) -> &[ThreadInfo] {
        &self.threads
    }

    /// Intern a string; `None` when the budget is exhausted.
    pub fn intern_str(&mut self, s: &str) -> Option<StrId> {
        if let Some(&id) = self.string_ids.get(s) {
            return Some(id);
        }
        let cost = 2 * s.len() + vec_growth(&self.strings, 1) + map_growth(&self.string_ids, 1);
        if !self.fits(cost) {
            return None;
        }
        let id = self.strings.len() as StrId;
        self.strings.push(s.into());
        self.string_ids.insert(s.into(), id);
        self.string_bytes += 2 * s.len();
        Some(id)
    }

    /// Intern a frame; `None` when the budget is exhausted.
    pub fn intern_frame(
        &mut self,
        function: &str,
        file: &str,
        line: u32,
        is_native: bool,
    ) -> Option<FrameId> {
        let frame = Frame {
            function: self.intern_str(function)?,
            file: self.intern_str(file)?,
            line,
            is_native,
        };
        if let Some(&id) = self.frame_ids.get(&frame) {
            return Some(id);
        }
        if !self.fits(vec_growth(&self.frames, 1) + map_growth(&self.frame_ids, 1)) {
            return None;
        }
        let id = self.frames.len() as FrameId;
        self.frames.push(frame);
        self.frame_ids.insert(frame, id);
        Some(id)
    }

    /// Register a thread of the recording process; returns its index for [`Store::add_sample`].
    /// When the budget has no room for another thread (thread churn), the thread shares one
    /// entry with the others registered after that, [`OVERFLOW_THREAD_NAME`], so the table stays
    /// within the budget.
    pub fn add_thread(&mut self, tid: u64, name: &str) -> u32 {
        self.add_process_thread(self.pid, tid, name)
    }

    /// [`Store::add_thread`] for a thread of process `pid` (copying or merging profiles).
    pub fn add_process_thread(&mut self, pid: u32, tid: u64, name: &str) -> u32 {
        self.add_task_thread(pid, tid, name, None)
    }

    /// [`Store::add_process_thread`] for the samples of one asyncio `task` of that thread.
    pub fn add_task_thread(&mut self, pid: u32, tid: u64, name: &str, task: Option<&str>) -> u32 {
        let task_key = match task.map(|t| self.intern_str(t)) {
            None => 0,
            Some(Some(id)) => id + 1,
            Some(None) => return self.overflow_thread(),
        };
        let key: ThreadKey = (pid, tid, name.into(), task_key);
        if let Some(&i) = self.thread_index.get(&key) {
            return i;
        }
        // Room for this thread and for the overflow entry after it, so that adding the overflow
        // entry never grows the table past the budget.
        let text = name.len() + task.map_or(0, str::len);
        let cost = 3 * (text + OVERFLOW_THREAD_NAME.len())
            + vec_growth(&self.threads, 2)
            + map_growth(&self.thread_index, 2);
        if !self.fits(cost) {
            return self.overflow_thread();
        }
        self.push_thread(key, task)
    }

    fn push_thread(&mut self, key: ThreadKey, task: Option<&str>) -> u32 {
        let index = self.threads.len() as u32;
        let (pid, tid, name, task_key) = &key;
        // The name and its copy in the index; the task's copy (interned once as well).
        self.string_bytes += 3 * name.len() + task.map_or(0, str::len);
        self.threads.push(ThreadInfo {
            pid: *pid,
            tid: *tid,
            name: name.to_string(),
            task: task.map(str::to_owned),
            task_key: *task_key,
        });
        self.thread_index.insert(key, index);
        index
    }

    /// The one entry past the budget (`add_thread` kept room for it).
    fn overflow_thread(&mut self) -> u32 {
        match self.overflow_thread {
            Some(i) => i,
            None => {
                let i = self.push_thread((self.pid, 0, OVERFLOW_THREAD_NAME.into(), 0), None);
                self.overflow_thread = Some(i);
                i
            }
        }
    }

    /// Give thread `index` its real name (it was registered before its name was known).
    pub fn rename_thread(&mut self, index: u32, name: &str) {
        if Some(index) == self.overflow_thread {
            return;
        }
        let Some(t) = self.threads.get_mut(index as usize) else {
            return;
        };
        if t.name == name {
            return;
        }
        let key = (
            t.pid,
            t.tid,
            std::mem::take(&mut t.name).into_boxed_str(),
            t.task_key,
        );
        t.name = name.to_owned();
        self.string_bytes = self.string_bytes + 3 * name.len() - 3 * key.2.len();
        self.thread_index.remove(&key);
        let (pid, tid, _, task_key) = key;
        self.thread_index
            .insert((pid, tid, name.into(), task_key), index);
    }

    /// The process that recorded the store (see [`Store::add_thread`]).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The processes whose threads the store holds, in the order first seen.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = Vec::new();
        for t in &self.threads {
            if !pids.contains(&t.pid) {
                pids.push(t.pid);
            }
        }
        pids
    }

    /// Whether the samples come from more than one process (a merged profile). Pid 0 is "not
    /// known" (samples made in Python without one), not a process of its own.
    pub fn is_multi_process(&self) -> bool {
        let mut known = self.threads.iter().map(|t| t.pid).filter(|&p| p != 0);
        known.next().is_some_and(|first| known.any(|p| p != first))
    }

    /// Say what process `pid` was (e.g. `python worker.py`, `ForkPoolWorker-2`).
    pub fn set_process_name(&mut self, pid: u32, name: &str) {
        self.string_bytes += name.len();
        self.process_names.insert(pid, name.to_owned());
    }

    pub fn process_name(&self, pid: u32) -> Option<&str> {
        self.process_names.get(&pid).map(String::as_str)
    }

    /// How a process is shown: as the root frame of its stacks in a merged flame graph, and in
    /// its threads' speedscope profiles.
    pub fn process_label(&self, pid: u32) -> String {
        match self.process_name(pid) {
            Some(name) => format!("{name} (pid {pid})"),
            None => format!("pid {pid}"),
        }
    }

    /// Intern the stack `frames` (root first); `None` when the budget is exhausted.
    pub fn intern_stack(&mut self, frames: impl IntoIterator<Item = FrameId>) -> Option<StackId> {
        let mut node = EMPTY_STACK;
        for frame in frames {
            let key = (node, frame);
            node = match self.stack_ids.get(&key) {
                Some(&id) => id,
                None => {
                    let cost = vec_growth(&self.stack_nodes, 1) + map_growth(&self.stack_ids, 1);
                    if !self.fits(cost) {
                        return None;
                    }
                    let id = self.stack_nodes.len() as StackId;
                    self.stack_nodes.push(key);
                    self.stack_ids.insert(key, id);
                    id
                }
            };
        }
        Some(node)
    }

    /// Append a sample; when the budget does not allow it, count it as dropped and return false.
    pub fn add_sample(
        &mut self,
        timestamp_ns: i64,
        weight: i64,
        thread: u32,
        stack: StackId,
        on_cpu: bool,
    ) -> bool {
        let cost = vec_growth(&self.timestamps_ns, 1)
            + vec_growth(&self.weights, 1)
            + vec_growth(&self.stacks, 1)
            + vec_growth(&self.thread_ids, 1)
            + vec_growth(&self.on_cpu, 1);
        if !self.fits(cost) {
            self.dropped += 1;
            return false;
        }
        self.timestamps_ns.push(timestamp_ns);
        self.weights.push(weight);
        self.stacks.push(stack);
        self.thread_ids.push(thread);
        self.on_cpu.push(on_cpu);
        true
    }

    /// The frames of a stack, root first (none for [`EMPTY_STACK`]).
    pub fn stack_frames(&self, stack: StackId) -> Vec<FrameId> {
        let mut out = Vec::new();
        self.stack_leaf_first(stack, &mut out);
        out.reverse();
        out
    }

    /// The frames of a stack into `out` (cleared first), leaf first: the order the tree links
    /// them, without an allocation per stack.
    pub fn stack_leaf_first(&self, stack: StackId, out: &mut Vec<FrameId>) {
        out.clear();
        let mut node = stack;
        while node != EMPTY_STACK {
            let (parent, frame) = self.stack_nodes[node as usize];
            out.push(frame);
            node = parent;
        }
    }

    /// Number of stack-tree nodes (distinct stack prefixes).
    pub fn stack_node_count(&self) -> usize {
        self.stack_nodes.len()
    }

    /// (parent, frame) of a stack-tree node.
    pub fn stack_node(&self, stack: StackId) -> (StackId, FrameId) {
        self.stack_nodes[stack as usize]
    }
}

/// Copies samples of one store into another, interning its frames, stacks and threads there
/// (each once). Threads keep their process.
pub struct Importer<'a> {
    from: &'a Store,
    frames: HashMap<FrameId, FrameId>,
    threads: HashMap<u32, u32>,
}

impl<'a> Importer<'a> {
    pub fn new(from: &'a Store) -> Importer<'a> {
        Importer {
            from,
            frames: HashMap::new(),
            threads: HashMap::new(),
        }
    }

    /// `frames` (ids of the source store, root first) as a stack of `out`; `None` when `out`'s
    /// budget is exhausted.
    pub fn stack(&mut self, out: &mut Store, frames: &[FrameId]) -> Option<StackId> {
        let mut ids = Vec::with_capacity(frames.len());
        for &f in frames {
            let id = match self.frames.get(&f) {
                Some(&id) => id,
                None => {
                    let fr = self.from.frames[f as usize];
                    let id = out.intern_frame(
                        self.from.string(fr.function),
                        self.from.string(fr.file),
                        fr.line,
                        fr.is_native,
                    )?;
                    self.frames.insert(f, id);
                    id
                }
            };
            ids.push(id);
        }
        out.intern_stack(ids)
    }

    /// The source's thread `index` in `out`.
    pub fn thread(&mut self, out: &mut Store, index: u32) -> u32 {
        let from = self.from;
        *self.threads.entry(index).or_insert_with(|| {
            let t = &from.threads[index as usize];
            out.add_task_thread(t.pid, t.tid, &t.name, t.task.as_deref())
        })
    }
}

impl Store {
    /// One profile of the stores of several processes: each part's timestamps move by its
    /// `shift_ns` (onto the first part's clock), its threads keep their process, and the
    /// process names and dropped counts add up.
    pub fn merge(parts: &[(&Store, i64)]) -> Store {
        let mut out = Store::new(usize::MAX);
        for &(part, shift_ns) in parts {
            out.process_names
                .extend(part.process_names.iter().map(|(&p, n)| (p, n.clone())));
            out.add_dropped(part.dropped());
            let mut import = Importer::new(part);
            let mut stacks: HashMap<StackId, StackId> = HashMap::new();
            for i in 0..part.len() {
                let s = part.stacks[i];
                let new_stack = match stacks.get(&s) {
                    Some(&id) => id,
                    None => {
                        let id = import
                            .stack(&mut out, &part.stack_frames(s))
                            .expect("unbounded store");
                        stacks.insert(s, id);
                        id
                    }
                };
                let thread = import.thread(&mut out, part.thread_ids[i]);
                out.add_sample(
                    part.timestamps_ns[i] + shift_ns,
                    part.weights[i],
                    thread,
                    new_stack,
                    part.on_cpu[i],
                );
            }
        }
        out
    }

    /// Take the process names of `other` (a store this one was derived from).
    pub fn copy_process_names(&mut self, other: &Store) {
        for (&pid, name) in &other.process_names {
            self.set_process_name(pid, name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &mut Store, name: &str) -> FrameId {
        s.intern_frame(name, "f.py", 1, false).unwrap()
    }

    #[test]
    fn identical_stacks_are_stored_once() {
        let mut s = Store::new(1 << 20);
        let (a, b, c) = (frame(&mut s, "a"), frame(&mut s, "b"), frame(&mut s, "c"));
        let ab = s.intern_stack([a, b]).unwrap();
        let abc = s.intern_stack([a, b, c]).unwrap();
        assert_eq!(s.intern_stack([a, b]).unwrap(), ab);
        assert_eq!(s.intern_stack([a, b, c]).unwrap(), abc);
        assert_eq!(s.stack_node_count(), 3);
        assert_eq!(s.stack_frames(abc), vec![a, b, c]);
        assert_eq!(s.intern_stack([]).unwrap(), EMPTY_STACK);
        assert!(s.stack_frames(EMPTY_STACK).is_empty());
        assert_eq!(frame(&mut s, "a"), a);
    }

    #[test]
    fn thread_churn_stays_within_the_budget() {
        let budget = 256 * 1024;
        let mut s = Store::new(budget);
        let first = s.add_thread(1, "MainThread");
        let mut overflow = None;
        for tid in 2..60_000u64 {
            let i = s.add_thread(tid, &format!("Thread-{tid} (worker_function)"));
            assert!(
                s.bytes_used() <= budget + 256,
                "{} > {budget}",
                s.bytes_used()
            );
            if s.threads()[i as usize].name == OVERFLOW_THREAD_NAME {
                overflow.get_or_insert(i);
                assert_eq!(Some(i), overflow); // one shared entry
            }
        }
        assert!(overflow.is_some() && s.threads().len() < 3_000);
        assert_eq!(s.add_thread(1, "MainThread"), first); // known threads keep their entry
        s.rename_thread(first, "Main");
        assert_eq!(s.add_thread(1, "Main"), first);
        assert_eq!(s.threads()[first as usize].name, "Main");
    }

    #[test]
    fn budget_bounds_memory_and_counts_drops() {
        let budget = 64 * 1024;
        let mut s = Store::new(budget);
        let t = s.add_thread(1, "main");
        let f = frame(&mut s, "f");
        let stack = s.intern_stack([f]).unwrap();
        let mut kept = 0u64;
        for i in 0..100_000 {
            if s.add_sample(i, 1, t, stack, true) {
                kept += 1;
            }
        }
        assert!(s.bytes_used() <= budget, "{} > {budget}", s.bytes_used());
        assert_eq!(kept + s.dropped(), 100_000);
        assert!(
            kept > 1000,
            "a 64 KiB budget holds thousands of samples, kept {kept}"
        );
        // New distinct frames are refused as well once the budget is spent.
        let mut refused = false;
        for i in 0..10_000 {
            if s.intern_frame(&format!("fn{i}"), "x.py", i, false)
                .is_none()
            {
                refused = true;
                break;
            }
        }
        assert!(refused);
        assert!(s.bytes_used() <= budget);
    }

    #[test]
    fn merged_processes_keep_their_threads_clock_and_names() {
        let mut parent = Store::new(1 << 20);
        let t = parent.add_thread(1, "MainThread");
        let f = frame(&mut parent, "main");
        let stack = parent.intern_stack([f]).unwrap();
        parent.add_sample(100, 5, t, stack, true);
        let mut child = Store::new(1 << 20);
        let c = child.add_process_thread(4242, 1, "MainThread");
        let g = frame(&mut child, "work");
        let cstack = child.intern_stack([g]).unwrap();
        child.add_sample(10, 7, c, cstack, false);
        child.set_process_name(4242, "ForkPoolWorker-1");
        child.add_dropped(2);
        assert!(!parent.is_multi_process());
        let mut unknown = Store::new(1 << 20);
        unknown.add_thread(1, "MainThread");
        unknown.add_process_thread(0, 2, "made in Python"); // an unknown pid: no other process
        assert!(!unknown.is_multi_process());

        let merged = Store::merge(&[(&parent, 0), (&child, 1_000)]);
        assert!(merged.is_multi_process());
        assert_eq!(merged.pids(), vec![std::process::id(), 4242]);
        assert_eq!(merged.timestamps_ns, vec![100, 1_010]);
        assert_eq!(merged.on_cpu, vec![true, false]);
        assert_eq!(merged.dropped(), 2);
        // The same tid in two processes is two threads.
        assert_eq!(merged.threads().len(), 2);
        assert_eq!(merged.process_label(4242), "ForkPoolWorker-1 (pid 4242)");
        assert_eq!(
            merged.process_label(std::process::id()),
            format!("pid {}", std::process::id())
        );
        let work = merged.stack_frames(merged.stacks[1]);
        assert_eq!(
            merged.string(merged.frames()[work[0] as usize].function),
            "work"
        );
    }
}
