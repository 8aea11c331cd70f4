//! The whole-run file of the pytest plugin: every test's samples as one Arrow IPC file.
//!
//! The plugin samples the session once and cuts it into per-test windows of monotonic time
//! (`pytest_spprof/_session.py`). [`write`] turns the session's chunks (stores) and the test
//! windows into the `frames` table of [`crate::export::arrow`] (a row per frame of every sample, root
//! first) with two more columns, `thread_name` and `test_id`; `timestamp_ns` counts from the start
//! of the test's window and `sample_id` is unique in the file. Samples outside every window (between
//! tests) are left out, and so is what the plugin's per-test profiles leave out: the pytest harness
//! at the root of each stack ([`FrameRole`]) and the test thread's samples while pytest reported
//! ([`Reports`]). [`merge`] joins the files of several processes (pytest-xdist workers).
//!
//! Writing it here rather than through pyarrow keeps the file cheap enough to write on every run
//! (no pyarrow import, no compute-kernel start-up) and lets runs without pyarrow have it too.
//!
//! The IPC *file* format allows one dictionary per column for the whole file, so strings are
//! interned into dictionaries that span all chunks before any batch is built.

use crate::export::arrow::{dict_column, frames_schema, FrameRows, FRAMES_BATCH_ROWS, WEIGHT_NS};
use crate::export::atomic_file;
use crate::store::{FrameId, Store};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, DictionaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_ipc::reader::FileReader;
use arrow_ipc::writer::FileWriter;
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The `format` entry of the schema metadata, by which readers recognise the file.
pub const FORMAT: &str = "spprof-pytest-run";
const VERSION: &str = "1";

/// One sampled stretch of the session: its samples' timestamps count from `origin_ns`
/// (CLOCK_MONOTONIC).
pub struct Chunk<'a> {
    pub store: &'a Store,
    pub origin_ns: i64,
    /// The [`FrameRole`] of each frame of the store, by frame id (empty: every frame is [`PLAIN`]).
    pub roles: &'a [FrameRole],
}

/// What a frame is to the pytest harness cut (the plugin decides: `_session.frame_role`).
pub type FrameRole = u8;
/// The test's or the library's code.
pub const PLAIN: FrameRole = 0;
/// pytest's own code: a stack with harness frames and no entry is pytest at work between calls.
pub const HARNESS: FrameRole = 1;
/// Where pytest calls a test function or fixture: the stack is kept from below the innermost one.
pub const ENTRY: FrameRole = 2;
/// The one frame a sample taken in pytest's own code is written with.
pub const HARNESS_FRAME: (&str, &str) = ("<pytest harness>", "<pytest>");

/// When the thread running the tests was in pytest's report hooks (sorted, not overlapping,
/// `[t0, t1)` monotonic ns): its samples then are the harness's, not the test's.
#[derive(Default)]
pub struct Reports<'a> {
    pub spans: &'a [(i64, i64)],
    pub thread: u64,
}

impl Reports<'_> {
    fn covers(&self, tid: u64, t: i64) -> bool {
        let i = self.spans.partition_point(|s| s.0 <= t);
        tid == self.thread && i > 0 && t < self.spans[i - 1].1
    }
}

/// The frames of a leaf-first `stack` a test's profile keeps, leaf first; `None`: pytest's own
/// code, written as [`HARNESS_FRAME`].
fn test_frames<'s>(stack: &'s [FrameId], roles: &[FrameRole]) -> Option<&'s [FrameId]> {
    let role = |f: FrameId| roles.get(f as usize).copied().unwrap_or(PLAIN);
    match stack.iter().position(|&f| role(f) == ENTRY) {
        Some(entry) => Some(&stack[..entry.max(1)]), // an entry that is the leaf stays
        None if stack.iter().any(|&f| role(f) == HARNESS) => None,
        None => Some(stack),
    }
}

/// The monotonic time `[t0, t1)` a test ran in; `test` indexes the run's test ids.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub t0: i64,
    pub t1: i64,
    pub test: i32,
}

pub fn schema() -> SchemaRef {
    let dict = || DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let mut fields: Vec<Field> = frames_schema(WEIGHT_NS)
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("thread_name", dict(), false));
    fields.push(Field::new("test_id", dict(), false));
    let metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("version".to_string(), VERSION.to_string()),
    ]);
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// Distinct strings of one column across the whole file, in first-seen order.
#[derive(Default)]
struct Strings {
    key: HashMap<String, i32>,
    values: Vec<String>,
}

impl Strings {
    fn of(values: &[String]) -> Strings {
        let mut s = Strings::default();
        for v in values {
            s.intern(v);
        }
        s
    }

    fn intern(&mut self, s: &str) -> i32 {
        if let Some(&k) = self.key.get(s) {
            return k;
        }
        let k = self.values.len() as i32;
        self.key.insert(s.to_string(), k);
        self.values.push(s.to_string());
        k
    }

    fn array(&self) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(self.values.iter()))
    }
}

/// Rows of one batch: the `frames` columns plus two; string columns hold keys into the file's
/// [`Strings`].
#[derive(Default)]
struct Rows {
    frames: FrameRows,
    thread_name: Vec<i32>,
    test: Vec<i32>,
}

struct Dictionaries {
    function: ArrayRef,
    file: ArrayRef,
    thread_name: ArrayRef,
    test: ArrayRef,
}

impl Rows {
    fn into_batch(self, schema: &SchemaRef, d: &Dictionaries) -> Result<RecordBatch, ArrowError> {
        let mut columns = self.frames.into_columns(&d.function, &d.file)?;
        columns.push(dict_column(self.thread_name, None, &d.thread_name)?);
        columns.push(dict_column(self.test, None, &d.test)?);
        RecordBatch::try_new(schema.clone(), columns)
    }
}

/// The window holding monotonic time `t` (windows sorted by `t0`, not overlapping).
fn window_of(windows: &[Window], t: i64) -> Option<&Window> {
    let i = windows.partition_point(|w| w.t0 <= t);
    windows[..i].last().filter(|w| t < w.t1)
}

/// Write the samples of `chunks` that fall in a test's window to `path`, less `reports`. Returns
/// the number of samples written. `windows` must be sorted by `t0`; `test_ids[w.test]` names
/// each window.
pub fn write(
    path: &Path,
    chunks: &[Chunk],
    windows: &[Window],
    test_ids: &[String],
    reports: &Reports,
) -> Result<u64, ArrowError> {
    let (mut function, mut file, mut thread_name) =
        (Strings::default(), Strings::default(), Strings::default());
    let mut batches: Vec<Rows> = vec![Rows::default()];
    let mut stack: Vec<FrameId> = Vec::new();
    let mut samples = 0u64;
    // (test, thread) pairs whose first sample in the window was seen: a first sample's weight
    // (time since the thread's previous sample) is clipped to the time since the window opened.
    let mut seen: std::collections::HashSet<(i32, u64)> = std::collections::HashSet::new();
    let harness = (
        function.intern(HARNESS_FRAME.0),
        file.intern(HARNESS_FRAME.1),
    );
    for chunk in chunks {
        let store = chunk.store;
        // Per-store ids → file-wide keys, computed once per chunk.
        let fn_key: Vec<i32> = store
            .frames()
            .iter()
            .map(|f| function.intern(store.string(f.function)))
            .collect();
        let file_key: Vec<i32> = store
            .frames()
            .iter()
            .map(|f| file.intern(store.string(f.file)))
            .collect();
        let thread_key: Vec<i32> = store
            .threads()
            .iter()
            .map(|t| thread_name.intern(&t.name))
            .collect();
        for i in 0..store.len() {
            let t = store.timestamps_ns[i] + chunk.origin_ns;
            let Some(w) = window_of(windows, t) else {
                continue;
            };
            let thread = store.thread_ids[i] as usize;
            let (pid, tid) = (store.threads()[thread].pid, store.threads()[thread].tid);
            if reports.covers(tid, t) {
                continue;
            }
            store.stack_leaf_first(store.stacks[i], &mut stack);
            let kept = test_frames(&stack, chunk.roles);
            let n = kept.map_or(1, <[FrameId]>::len);
            let mut weight = store.weights[i];
            if seen.insert((w.test, tid)) {
                weight = weight.min((t - w.t0).max(0));
            }
            for d in 0..n.max(1) {
                if batches
                    .last()
                    .is_some_and(|r| r.frames.len() >= FRAMES_BATCH_ROWS)
                {
                    batches.push(Rows::default());
                }
                let all = batches.last_mut().expect("never empty");
                // `kept` runs leaf → root; rows go root first.
                let frame = kept.and_then(|k| (n > 0).then(|| k[n - 1 - d] as usize));
                let rows = &mut all.frames;
                rows.sample_id.push(samples as i64);
                rows.depth.push(d as i32);
                let (fn_id, file_id) = match (kept, frame) {
                    (None, _) => harness,
                    (Some(_), Some(f)) => (fn_key[f], file_key[f]),
                    (Some(_), None) => (0, 0),
                };
                rows.function.push(fn_id);
                rows.file.push(file_id);
                rows.line
                    .push(frame.map_or(0, |f| store.frames()[f].line as i32));
                rows.has_frame.push(kept.is_none() || frame.is_some());
                rows.is_native
                    .push(frame.is_some_and(|f| store.frames()[f].is_native));
                rows.is_leaf.push(d + 1 >= n);
                rows.tid.push(tid as i64);
                rows.timestamp.push(t - w.t0);
                rows.weight.push(weight);
                rows.pid.push(pid.into());
                all.thread_name.push(thread_key[thread]);
                all.test.push(w.test);
            }
            samples += 1;
        }
    }
    // Frame-less rows point at key 0, which exists: the harness frame's strings come first.
    let dicts = Dictionaries {
        function: function.array(),
        file: file.array(),
        thread_name: thread_name.array(),
        test: Strings::of(test_ids).array(),
    };
    let schema = schema();
    let batches = batches
        .into_iter()
        .filter(|r| r.frames.len() > 0)
        .map(|r| r.into_batch(&schema, &dicts))
        .collect::<Result<Vec<_>, _>>()?;
    write_batches(path, &schema, &batches)?;
    Ok(samples)
}

/// Write whole or not at all (see [`crate::export::atomic_file`]).
fn write_batches(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), ArrowError> {
    atomic_file::write(path, |out| {
        let mut writer = FileWriter::try_new(out, schema)?;
        for batch in batches {
            writer.write(batch)?;
        }
        writer.finish()
    })
}

/// Join run files written by [`write`] (one per pytest-xdist worker) into `path`: sample ids are
/// renumbered to stay unique and the dictionaries are merged.
pub fn merge(path: &Path, parts: &[PathBuf]) -> Result<u64, ArrowError> {
    let schema = schema();
    let dict_columns: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.data_type(), DataType::Dictionary(..)))
        .map(|(i, _)| i)
        .collect();
    let mut strings: Vec<Strings> = dict_columns.iter().map(|_| Strings::default()).collect();
    // Batches with dictionary columns replaced by their remapped keys, wrapped at the end.
    let mut staged: Vec<Vec<ArrayRef>> = Vec::new();
    let mut base = 0i64;
    for part in parts {
        let reader = FileReader::try_new(File::open(part)?, None)?;
        if reader.schema().metadata().get("format").map(String::as_str) != Some(FORMAT) {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{} is not an spprof run file",
                part.display()
            )));
        }
        let mut next_base = base;
        for batch in reader {
            let batch = batch?;
            let mut columns = batch.columns().to_vec();
            let ids = columns[0].as_primitive::<Int64Type>();
            let ids = Int64Array::from_iter_values(ids.values().iter().map(|id| id + base));
            next_base = next_base.max(ids.values().iter().max().map_or(base, |m| m + 1));
            columns[0] = Arc::new(ids);
            for (k, &c) in dict_columns.iter().enumerate() {
                let col = columns[c].as_dictionary::<Int32Type>();
                let values = col.values().as_string::<i32>();
                let remap: Vec<i32> = values
                    .iter()
                    .map(|v| strings[k].intern(v.unwrap_or("")))
                    .collect();
                let keys = col.keys();
                let keys: Vec<i32> = keys
                    .values()
                    .iter()
                    .map(|&key| remap.get(key as usize).copied().unwrap_or(0))
                    .collect();
                columns[c] = Arc::new(Int32Array::new(keys.into(), col.nulls().cloned()));
            }
            staged.push(columns);
        }
        base = next_base;
    }
    let values: Vec<ArrayRef> = strings.iter().map(Strings::array).collect();
    let mut batches = Vec::with_capacity(staged.len());
    for mut columns in staged {
        for (k, &c) in dict_columns.iter().enumerate() {
            let keys = columns[c].as_primitive::<Int32Type>().clone();
            columns[c] = Arc::new(DictionaryArray::<Int32Type>::try_new(
                keys,
                values[k].clone(),
            )?);
        }
        batches.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    write_batches(path, &schema, &batches)?;
    Ok(base as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(samples: &[(i64, &[&str])]) -> Store {
        let mut s = Store::new(1 << 20);
        let t = s.add_thread(7, "MainThread");
        for &(ts, names) in samples {
            let frames: Vec<FrameId> = names
                .iter()
                .map(|n| s.intern_frame(n, "f.py", 1, false).unwrap())
                .collect();
            let stack = s.intern_stack(frames).unwrap();
            s.add_sample(ts, 10, t, stack, true);
        }
        s
    }

    fn read(path: &Path) -> Vec<RecordBatch> {
        FileReader::try_new(File::open(path).unwrap(), None)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn column_strings(batches: &[RecordBatch], name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for b in batches {
            let col = b.column_by_name(name).unwrap().as_dictionary::<Int32Type>();
            let values = col.values().as_string::<i32>();
            out.extend(
                col.keys()
                    .values()
                    .iter()
                    .map(|&k| values.value(k as usize).to_string()),
            );
        }
        out
    }

    #[test]
    fn windows_pick_samples_and_merge_renumbers() {
        let dir = std::env::temp_dir().join(format!("spprof-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Chunk origin 1000: samples at 1005 (test a), 1015 (between tests), 1025 (test b).
        let s = store(&[
            (5, &["main", "a"]),
            (15, &["main", "idle"]),
            (25, &["main", "b"]),
        ]);
        let chunk = Chunk {
            store: &s,
            origin_ns: 1000,
            roles: &[],
        };
        let windows = [
            Window {
                t0: 1000,
                t1: 1010,
                test: 0,
            },
            Window {
                t0: 1020,
                t1: 1030,
                test: 1,
            },
        ];
        let ids = ["t::a".to_string(), "t::b".to_string()];
        let one = dir.join("one.arrow");
        assert_eq!(
            write(&one, &[chunk], &windows, &ids, &Reports::default()).unwrap(),
            2
        );
        let batches = read(&one);
        assert_eq!(
            column_strings(&batches, "function"),
            ["main", "a", "main", "b"]
        );
        assert_eq!(
            column_strings(&batches, "test_id"),
            ["t::a", "t::a", "t::b", "t::b"]
        );
        let ts = batches[0]
            .column_by_name("timestamp_ns")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(ts.values().to_vec(), [5, 5, 5, 5]);

        let other = store(&[(0, &["c"])]);
        let two = dir.join("two.arrow");
        let w = [Window {
            t0: 0,
            t1: 1,
            test: 0,
        }];
        write(
            &two,
            &[Chunk {
                store: &other,
                origin_ns: 0,
                roles: &[],
            }],
            &w,
            &["t::c".to_string()],
            &Reports::default(),
        )
        .unwrap();
        let merged = dir.join("merged.arrow");
        assert_eq!(merge(&merged, &[one, two]).unwrap(), 3);
        let batches = read(&merged);
        assert_eq!(
            column_strings(&batches, "test_id"),
            ["t::a", "t::a", "t::b", "t::b", "t::c"]
        );
        assert_eq!(
            column_strings(&batches, "function"),
            ["main", "a", "main", "b", "c"]
        );
        let ids: Vec<i64> = batches
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(ids, [0, 0, 1, 1, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_harness_and_the_reports_are_cut_as_in_a_tests_profile() {
        let dir = std::env::temp_dir().join(format!("spprof-run-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Frame ids in first-seen order: main 0, call 1, test 2, work 3, hook 4, thread 5.
        let s = store(&[
            (1, &["main", "call", "test", "work"]),
            (2, &["main", "hook"]),
            (3, &["thread"]),
            (4, &["main", "call"]),
            (5, &["main", "call", "test", "work"]), // while reporting: left out
        ]);
        let roles = [HARNESS, ENTRY, PLAIN, PLAIN, HARNESS, PLAIN];
        let chunk = Chunk {
            store: &s,
            origin_ns: 0,
            roles: &roles,
        };
        let w = [Window {
            t0: 0,
            t1: 10,
            test: 0,
        }];
        let reports = Reports {
            spans: &[(5, 6)],
            thread: 7,
        };
        let path = dir.join("cut.arrow");
        let written = write(&path, &[chunk], &w, &["t::a".to_string()], &reports).unwrap();
        assert_eq!(written, 4);
        assert_eq!(
            column_strings(&read(&path), "function"),
            ["test", "work", "<pytest harness>", "thread", "call"]
        );
        let other_thread = Reports {
            spans: &[(5, 6)],
            thread: 8,
        };
        let chunk = Chunk {
            store: &s,
            origin_ns: 0,
            roles: &roles,
        };
        assert_eq!(
            write(&path, &[chunk], &w, &["t::a".to_string()], &other_thread).unwrap(),
            5
        );
    }
}
