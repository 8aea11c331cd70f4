//! A profile as Apache Arrow record batches, sharing the store's memory where it can.
//!
//! Two kinds of table (see docs/arrow.md for the schema):
//!
//! - `samples`: one row per sample. `timestamp_ns` and the weight column are the store's own
//!   columns, wrapped without a copy ([`shared_i64`]); the other columns are derived (thread ids
//!   and names per row, the leaf frame, the depth). One batch: the shared columns cannot be split
//!   more cheaply than they can be sliced, and a consumer that wants smaller chunks can slice.
//! - `frames`: long format, one row per frame of every sample (root first, `depth` 0 = root), in
//!   batches of [`FRAMES_BATCH_ROWS`] rows so no single buffer grows with the profile. A sample
//!   without any frame gets one row with null frame columns, so the leaf rows' weights always add
//!   up to the profile's total.
//!
//! Strings are dictionary-encoded (`dictionary<int32, utf8>`): one dictionary of the distinct
//! function names, one of the file names, one of the thread names, built once per table and shared
//! by all its batches. Line numbers are `int32` (the store keeps them as `u32` < 2^31).

use crate::store::{FrameId, StackId, Store, EMPTY_STACK};
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, BooleanArray, DictionaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, ScalarBuffer};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::Arc;

/// Re-exported so the Python module uses exactly the engine's Arrow version.
pub use arrow_array;
pub use arrow_schema;

/// Rows per batch of the `frames` table (64 Ki).
pub const FRAMES_BATCH_ROWS: usize = 64 * 1024;

/// The weight column of CPU and wall-clock profiles (memory profiles use `weight_bytes`).
pub const WEIGHT_NS: &str = "weight_ns";

/// The kinds of table, by name.
pub const KINDS: [&str; 2] = ["samples", "frames"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Samples,
    Frames,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "samples" => Some(Kind::Samples),
            "frames" => Some(Kind::Frames),
            _ => None,
        }
    }
}

/// A schema and its record batches (what an Arrow C stream carries).
#[derive(Clone, Debug)]
pub struct Table {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Table {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Build the table of `kind`; the weight column is named `weight_column`.
pub fn build(store: &Arc<Store>, kind: Kind, weight_column: &str) -> Result<Table, ArrowError> {
    check_weight_column(weight_column)?;
    match kind {
        Kind::Samples => samples(store, weight_column),
        Kind::Frames => frames(store, weight_column),
    }
}

const SAMPLES_COLUMNS: [&str; 11] = [
    "timestamp_ns",
    "thread_id",
    "thread_name",
    "stack_id",
    "depth",
    "function",
    "filename",
    "lineno",
    "on_cpu",
    "pid",
    "task",
];
const FRAMES_COLUMNS: [&str; 10] = [
    "sample_id",
    "depth",
    "function",
    "filename",
    "lineno",
    "is_native",
    "is_leaf",
    "thread_id",
    "timestamp_ns",
    "pid",
];

/// The weight column needs a name of its own: a duplicate column name would make every
/// consumer's column lookup ambiguous.
pub fn check_weight_column(name: &str) -> Result<(), ArrowError> {
    if name.is_empty() || SAMPLES_COLUMNS.contains(&name) || FRAMES_COLUMNS.contains(&name) {
        return Err(ArrowError::InvalidArgumentError(format!(
            "weight column name {name:?} is empty or taken by another column"
        )));
    }
    Ok(())
}

fn dict_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

pub fn samples_schema(weight_column: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("timestamp_ns", DataType::Int64, false),
        Field::new("thread_id", DataType::Int64, false),
        Field::new("thread_name", dict_type(), false),
        Field::new(weight_column, DataType::Int64, false),
        Field::new("stack_id", DataType::Int64, true),
        Field::new("depth", DataType::Int32, false),
        Field::new("function", dict_type(), true),
        Field::new("filename", dict_type(), true),
        Field::new("lineno", DataType::Int32, true),
        Field::new("on_cpu", DataType::Boolean, false),
        Field::new("pid", DataType::Int64, false),
        Field::new("task", dict_type(), true),
    ]))
}

pub fn frames_schema(weight_column: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Int64, false),
        Field::new("depth", DataType::Int32, false),
        Field::new("function", dict_type(), true),
        Field::new("filename", dict_type(), true),
        Field::new("lineno", DataType::Int32, true),
        Field::new("is_native", DataType::Boolean, false),
        Field::new("is_leaf", DataType::Boolean, false),
        Field::new("thread_id", DataType::Int64, false),
        Field::new("timestamp_ns", DataType::Int64, false),
        Field::new(weight_column, DataType::Int64, false),
        Field::new("pid", DataType::Int64, false),
    ]))
}

/// An Arrow buffer over one of the store's `i64` columns, without copying it. The buffer owns a
/// reference to the store, so the Arrow arrays (and whoever imports them) keep the store alive.
pub fn shared_i64(store: &Arc<Store>, column: fn(&Store) -> &[i64]) -> ScalarBuffer<i64> {
    let values = column(store);
    let ptr = NonNull::from(values).cast::<u8>();
    let len = std::mem::size_of_val(values);
    // SAFETY: the store is immutable once in an Arc (no `&mut` while the buffer holds a clone), so `ptr..ptr+len` stays valid and unchanged for the buffer's lifetime.
    let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, store.clone()) };
    ScalarBuffer::new(buffer, 0, values.len())
}

fn timestamps(store: &Store) -> &[i64] {
    &store.timestamps_ns
}

fn weights(store: &Store) -> &[i64] {
    &store.weights
}

/// A string column's dictionary: the distinct strings in first-seen order, and a key per id.
struct Dictionary {
    values: ArrayRef,
    /// Key of each frame's string (indexed by frame id).
    keys: Vec<i32>,
}

/// The dictionary of one string field of the frames (function or file).
fn frame_dictionary(store: &Store, field: fn(&crate::store::Frame) -> u32) -> Dictionary {
    let mut key_of: HashMap<u32, i32> = HashMap::new();
    let mut values: Vec<&str> = Vec::new();
    let keys = store
        .frames()
        .iter()
        .map(|f| {
            let id = field(f);
            *key_of.entry(id).or_insert_with(|| {
                values.push(store.string(id));
                values.len() as i32 - 1
            })
        })
        .collect();
    Dictionary {
        values: Arc::new(StringArray::from(values)),
        keys,
    }
}

/// Per-table lookups computed once from the store's small tables (frames, stacks, threads).
struct Lookups {
    function: Dictionary,
    file: Dictionary,
    /// Per frame id.
    line: Vec<i32>,
    is_native: Vec<bool>,
    /// Per thread index: process id, OS thread id and key into `thread_names`.
    pid: Vec<i64>,
    tid: Vec<i64>,
    thread_key: Vec<i32>,
    thread_names: ArrayRef,
    /// Per thread index: key into `task_names` (`None`: not an asyncio task's samples).
    task_key: Vec<Option<i32>>,
    task_names: ArrayRef,
    /// Per stack node: frames from the root to it (the depth of a stack ending there).
    depth: Vec<i32>,
}

impl Lookups {
    fn new(store: &Store) -> Lookups {
        let frames = store.frames();
        let mut name_key: HashMap<&str, i32> = HashMap::new();
        let mut names: Vec<&str> = Vec::new();
        let thread_key = store
            .threads()
            .iter()
            .map(|t| {
                // Two threads may share a name; a dictionary with duplicates confuses consumers
                // (pandas refuses duplicate categories).
                *name_key.entry(t.name.as_str()).or_insert_with(|| {
                    names.push(t.name.as_str());
                    names.len() as i32 - 1
                })
            })
            .collect();
        let (mut task_key_of, mut tasks): (HashMap<&str, i32>, Vec<&str>) = Default::default();
        let task_key = store
            .threads()
            .iter()
            .map(|t| {
                let task = t.task.as_deref()?;
                Some(*task_key_of.entry(task).or_insert_with(|| {
                    tasks.push(task);
                    tasks.len() as i32 - 1
                }))
            })
            .collect();
        // A node's parent is interned before it, so one pass in id order sees parents first.
        let mut depth: Vec<i32> = Vec::with_capacity(store.stack_node_count());
        for node in 0..store.stack_node_count() {
            let (parent, _) = store.stack_node(node as StackId);
            let up = if parent == EMPTY_STACK {
                0
            } else {
                depth[parent as usize]
            };
            depth.push(up + 1);
        }
        Lookups {
            function: frame_dictionary(store, |f| f.function),
            file: frame_dictionary(store, |f| f.file),
            line: frames.iter().map(|f| f.line as i32).collect(),
            is_native: frames.iter().map(|f| f.is_native).collect(),
            pid: store.threads().iter().map(|t| t.pid.into()).collect(),
            tid: store.threads().iter().map(|t| t.tid as i64).collect(),
            thread_key,
            thread_names: Arc::new(StringArray::from(names)),
            task_key,
            task_names: Arc::new(StringArray::from(tasks)),
            depth,
        }
    }

    fn stack_depth(&self, stack: StackId) -> i32 {
        if stack == EMPTY_STACK {
            0
        } else {
            self.depth[stack as usize]
        }
    }
}

/// `None` when every row is valid (consumers skip the validity check entirely then).
fn nulls(len: usize, valid: impl FnMut(usize) -> bool) -> Option<NullBuffer> {
    let nulls = NullBuffer::from(BooleanBuffer::collect_bool(len, valid));
    (nulls.null_count() > 0).then_some(nulls)
}

pub(crate) fn dict_column(
    keys: Vec<i32>,
    nulls: Option<NullBuffer>,
    values: &ArrayRef,
) -> Result<ArrayRef, ArrowError> {
    let keys = Int32Array::new(keys.into(), nulls);
    Ok(Arc::new(DictionaryArray::<Int32Type>::try_new(
        keys,
        values.clone(),
    )?))
}

/// The `samples` table: one batch, one row per sample.
pub fn samples(store: &Arc<Store>, weight_column: &str) -> Result<Table, ArrowError> {
    let schema = samples_schema(weight_column);
    let look = Lookups::new(store);
    let n = store.len();
    let stacks = &store.stacks;
    let leaf_nulls = nulls(n, |i| stacks[i] != EMPTY_STACK);
    // A value of the leaf frame of each sample (0 under a null).
    let per_leaf = |f: fn(&Lookups, FrameId) -> i32| -> Vec<i32> {
        stacks
            .iter()
            .map(|&s| {
                if s == EMPTY_STACK {
                    0
                } else {
                    f(&look, store.stack_node(s).1)
                }
            })
            .collect()
    };
    let thread = &store.thread_ids;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::new(shared_i64(store, timestamps), None)),
        Arc::new(Int64Array::from_iter_values(
            thread.iter().map(|&t| look.tid[t as usize]),
        )),
        dict_column(
            thread
                .iter()
                .map(|&t| look.thread_key[t as usize])
                .collect(),
            None,
            &look.thread_names,
        )?,
        Arc::new(Int64Array::new(shared_i64(store, weights), None)),
        Arc::new(Int64Array::new(
            store.stacks.iter().map(|&s| s as i64).collect(),
            leaf_nulls.clone(),
        )),
        Arc::new(Int32Array::from_iter_values(
            store.stacks.iter().map(|&s| look.stack_depth(s)),
        )),
        dict_column(
            per_leaf(|l, id| l.function.keys[id as usize]),
            leaf_nulls.clone(),
            &look.function.values,
        )?,
        dict_column(
            per_leaf(|l, id| l.file.keys[id as usize]),
            leaf_nulls.clone(),
            &look.file.values,
        )?,
        Arc::new(Int32Array::new(
            per_leaf(|l, id| l.line[id as usize]).into(),
            leaf_nulls,
        )),
        Arc::new(BooleanArray::new(
            BooleanBuffer::collect_bool(n, |i| store.on_cpu[i]),
            None,
        )),
        Arc::new(Int64Array::from_iter_values(
            thread.iter().map(|&t| look.pid[t as usize]),
        )),
        dict_column(
            thread
                .iter()
                .map(|&t| look.task_key[t as usize].unwrap_or(0))
                .collect(),
            nulls(n, |i| look.task_key[thread[i] as usize].is_some()),
            &look.task_names,
        )?,
    ];
    debug_assert!(columns.iter().all(|c| c.len() == n));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Table {
        schema,
        batches: vec![batch],
    })
}

/// The rows of one `frames` batch, column by column (also the bulk of the pytest run file's
/// rows, see [`crate::export::run_file`]). `function` and `file` are keys into dictionaries the caller
/// supplies.
#[derive(Default)]
pub(crate) struct FrameRows {
    pub sample_id: Vec<i64>,
    pub depth: Vec<i32>,
    pub function: Vec<i32>,
    pub file: Vec<i32>,
    pub line: Vec<i32>,
    /// False on the one row of a sample without frames (its frame columns are null).
    pub has_frame: Vec<bool>,
    pub is_native: Vec<bool>,
    pub is_leaf: Vec<bool>,
    pub tid: Vec<i64>,
    pub timestamp: Vec<i64>,
    pub weight: Vec<i64>,
    pub pid: Vec<i64>,
}

impl FrameRows {
    fn with_capacity(n: usize) -> FrameRows {
        FrameRows {
            sample_id: Vec::with_capacity(n),
            depth: Vec::with_capacity(n),
            function: Vec::with_capacity(n),
            file: Vec::with_capacity(n),
            line: Vec::with_capacity(n),
            has_frame: Vec::with_capacity(n),
            is_native: Vec::with_capacity(n),
            is_leaf: Vec::with_capacity(n),
            tid: Vec::with_capacity(n),
            timestamp: Vec::with_capacity(n),
            weight: Vec::with_capacity(n),
            pid: Vec::with_capacity(n),
        }
    }

    pub fn len(&self) -> usize {
        self.sample_id.len()
    }

    /// The columns of the `frames` schema, in order.
    pub fn into_columns(
        self,
        functions: &ArrayRef,
        files: &ArrayRef,
    ) -> Result<Vec<ArrayRef>, ArrowError> {
        let has_frame = &self.has_frame;
        let frame_nulls = nulls(has_frame.len(), |i| has_frame[i]);
        Ok(vec![
            Arc::new(Int64Array::from(self.sample_id)),
            Arc::new(Int32Array::from(self.depth)),
            dict_column(self.function, frame_nulls.clone(), functions)?,
            dict_column(self.file, frame_nulls.clone(), files)?,
            Arc::new(Int32Array::new(self.line.into(), frame_nulls)),
            Arc::new(BooleanArray::from(self.is_native)),
            Arc::new(BooleanArray::from(self.is_leaf)),
            Arc::new(Int64Array::from(self.tid)),
            Arc::new(Int64Array::from(self.timestamp)),
            Arc::new(Int64Array::from(self.weight)),
            Arc::new(Int64Array::from(self.pid)),
        ])
    }

    fn into_batch(self, schema: &SchemaRef, look: &Lookups) -> Result<RecordBatch, ArrowError> {
        let columns = self.into_columns(&look.function.values, &look.file.values)?;
        RecordBatch::try_new(schema.clone(), columns)
    }
}

/// The `frames` table: one row per frame of every sample, root first, in batches of
/// [`FRAMES_BATCH_ROWS`] rows (a sample's rows may continue in the next batch).
pub fn frames(store: &Arc<Store>, weight_column: &str) -> Result<Table, ArrowError> {
    let schema = frames_schema(weight_column);
    let look = Lookups::new(store);
    let total_rows: usize = store
        .stacks
        .iter()
        .map(|&s| look.stack_depth(s).max(1) as usize)
        .sum();
    let batch_rows = |done: usize| FRAMES_BATCH_ROWS.min(total_rows - done);
    let mut batches = Vec::with_capacity(total_rows.div_ceil(FRAMES_BATCH_ROWS));
    let mut done = 0;
    let mut rows = FrameRows::with_capacity(batch_rows(0));
    let mut stack_frames: Vec<FrameId> = Vec::new();
    for i in 0..store.len() {
        store.stack_leaf_first(store.stacks[i], &mut stack_frames);
        let n = stack_frames.len();
        let thread = store.thread_ids[i] as usize;
        let (pid, tid, ts, w) = (
            look.pid[thread],
            look.tid[thread],
            store.timestamps_ns[i],
            store.weights[i],
        );
        // `stack_frames` runs leaf → root; rows go root first.
        for d in 0..n.max(1) {
            let frame = (n > 0).then(|| stack_frames[n - 1 - d] as usize);
            rows.sample_id.push(i as i64);
            rows.depth.push(d as i32);
            rows.function
                .push(frame.map_or(0, |f| look.function.keys[f]));
            rows.file.push(frame.map_or(0, |f| look.file.keys[f]));
            rows.line.push(frame.map_or(0, |f| look.line[f]));
            rows.has_frame.push(frame.is_some());
            rows.is_native
                .push(frame.is_some_and(|f| look.is_native[f]));
            rows.is_leaf.push(d + 1 >= n);
            rows.tid.push(tid);
            rows.timestamp.push(ts);
            rows.weight.push(w);
            rows.pid.push(pid);
            if rows.len() == FRAMES_BATCH_ROWS {
                done += FRAMES_BATCH_ROWS;
                let full = std::mem::replace(&mut rows, FrameRows::with_capacity(batch_rows(done)));
                batches.push(full.into_batch(&schema, &look)?);
            }
        }
    }
    // The last partial batch; an empty profile still gets one (empty) batch.
    if rows.len() > 0 || batches.is_empty() {
        batches.push(rows.into_batch(&schema, &look)?);
    }
    Ok(Table { schema, batches })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::Array;

    /// Three samples on two threads: a→b→c, a→b, and one without any frame.
    fn store() -> Arc<Store> {
        let mut s = Store::new(1 << 20);
        let main = s.add_thread(101, "MainThread");
        let worker = s.add_thread(202, "worker");
        let a = s.intern_frame("a", "x.py", 1, false).unwrap();
        let b = s.intern_frame("b", "y.py", 2, false).unwrap();
        let c = s.intern_frame("c", "x.py", 3, true).unwrap();
        let abc = s.intern_stack([a, b, c]).unwrap();
        let ab = s.intern_stack([a, b]).unwrap();
        assert!(s.add_sample(10, 1000, main, abc, true));
        assert!(s.add_sample(20, 2000, worker, ab, false));
        assert!(s.add_sample(30, 4000, main, EMPTY_STACK, true));
        Arc::new(s)
    }

    fn strings(col: &ArrayRef) -> Vec<Option<String>> {
        let dict = col.as_dictionary::<Int32Type>();
        let values = dict.values().as_string::<i32>();
        dict.keys()
            .iter()
            .map(|k| k.map(|k| values.value(k as usize).to_owned()))
            .collect()
    }

    fn i64s(col: &ArrayRef) -> Vec<Option<i64>> {
        col.as_primitive::<arrow_array::types::Int64Type>()
            .iter()
            .collect()
    }

    fn i32s(col: &ArrayRef) -> Vec<Option<i32>> {
        col.as_primitive::<Int32Type>().iter().collect()
    }

    fn bools(col: &ArrayRef) -> Vec<bool> {
        col.as_boolean().iter().map(Option::unwrap).collect()
    }

    #[test]
    fn samples_schema_and_values() {
        let store = store();
        let t = build(&store, Kind::Samples, WEIGHT_NS).unwrap();
        assert_eq!(t.batches.len(), 1);
        assert_eq!(t.num_rows(), 3);
        let names: Vec<&str> = t
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "timestamp_ns",
                "thread_id",
                "thread_name",
                "weight_ns",
                "stack_id",
                "depth",
                "function",
                "filename",
                "lineno",
                "on_cpu",
                "pid",
                "task"
            ]
        );
        assert_eq!(t.schema.field(2).data_type(), &dict_type());
        assert_eq!(t.schema.field(5).data_type(), &DataType::Int32);
        let b = &t.batches[0];
        assert_eq!(b.schema(), t.schema);
        assert_eq!(i64s(b.column(0)), [Some(10), Some(20), Some(30)]);
        assert_eq!(i64s(b.column(1)), [Some(101), Some(202), Some(101)]);
        let pid = Some(i64::from(std::process::id()));
        assert_eq!(i64s(b.column(10)), [pid; 3]);
        assert_eq!(strings(b.column(11)), [None, None, None]); // no asyncio task
        let thread_names = strings(b.column(2));
        assert_eq!(thread_names[1].as_deref(), Some("worker"));
        assert_eq!(thread_names[2].as_deref(), Some("MainThread"));
        assert_eq!(i64s(b.column(3)), [Some(1000), Some(2000), Some(4000)]);
        let stack_ids = i64s(b.column(4));
        assert_eq!(stack_ids[0], Some(store.stacks[0] as i64));
        assert_eq!(stack_ids[2], None);
        assert_eq!(i32s(b.column(5)), [Some(3), Some(2), Some(0)]);
        let functions = strings(b.column(6));
        assert_eq!(functions, [Some("c".into()), Some("b".into()), None]);
        let files = strings(b.column(7));
        assert_eq!(files, [Some("x.py".into()), Some("y.py".into()), None]);
        // The file dictionary holds files only, each once.
        let file_dict = b.column(7).as_dictionary::<Int32Type>().values().clone();
        assert_eq!(file_dict.len(), 2);
        assert_eq!(i32s(b.column(8)), [Some(3), Some(2), None]);
        assert_eq!(bools(b.column(9)), [true, false, true]);
    }

    #[test]
    fn shared_columns_are_not_copied() {
        let store = store();
        let t = samples(&store, WEIGHT_NS).unwrap();
        let b = &t.batches[0];
        let ts = b.column(0).as_primitive::<arrow_array::types::Int64Type>();
        assert_eq!(ts.values().as_ptr(), store.timestamps_ns.as_ptr());
        let w = b.column(3).as_primitive::<arrow_array::types::Int64Type>();
        assert_eq!(w.values().as_ptr(), store.weights.as_ptr());
        // The arrays keep the store alive after every other reference is gone.
        let weak = Arc::downgrade(&store);
        drop(store);
        assert!(weak.upgrade().is_some());
        assert_eq!(ts.value(2), 30);
        drop(t);
        assert!(weak.upgrade().is_none(), "the table released the store");
    }

    #[test]
    fn frames_long_format() {
        let store = store();
        let t = build(&store, Kind::Frames, "weight_bytes").unwrap();
        assert_eq!(t.schema.field(9).name(), "weight_bytes");
        assert_eq!(t.num_rows(), 3 + 2 + 1);
        let b = &t.batches[0];
        assert_eq!(i64s(b.column(0)), [0, 0, 0, 1, 1, 2].map(Some), "sample_id");
        assert_eq!(i32s(b.column(1)), [0, 1, 2, 0, 1, 0].map(Some), "depth");
        let f = |s: &str| Some(s.to_owned());
        assert_eq!(
            strings(b.column(2)),
            [f("a"), f("b"), f("c"), f("a"), f("b"), None]
        );
        assert_eq!(
            strings(b.column(3)),
            [f("x.py"), f("y.py"), f("x.py"), f("x.py"), f("y.py"), None]
        );
        assert_eq!(
            i32s(b.column(4)),
            [Some(1), Some(2), Some(3), Some(1), Some(2), None]
        );
        assert_eq!(
            bools(b.column(5)),
            [false, false, true, false, false, false]
        );
        assert_eq!(bools(b.column(6)), [false, false, true, false, true, true]);
        assert_eq!(i64s(b.column(7)), [101, 101, 101, 202, 202, 101].map(Some));
        assert_eq!(i64s(b.column(8)), [10, 10, 10, 20, 20, 30].map(Some));
        assert_eq!(
            i64s(b.column(9)),
            [1000, 1000, 1000, 2000, 2000, 4000].map(Some)
        );
    }

    #[test]
    fn frames_are_split_into_bounded_batches() {
        let mut s = Store::new(usize::MAX);
        let t = s.add_thread(1, "main");
        let ids: Vec<FrameId> = (0..7)
            .map(|i| s.intern_frame(&format!("f{i}"), "m.py", i, false).unwrap())
            .collect();
        let stack = s.intern_stack(ids).unwrap();
        let n = 20_000; // 140,000 rows: two full batches and a partial one
        for i in 0..n {
            s.add_sample(i, 1, t, stack, true);
        }
        let store = Arc::new(s);
        let table = frames(&store, WEIGHT_NS).unwrap();
        let sizes: Vec<usize> = table.batches.iter().map(|b| b.num_rows()).collect();
        assert_eq!(
            sizes,
            [
                FRAMES_BATCH_ROWS,
                FRAMES_BATCH_ROWS,
                7 * n as usize - 2 * FRAMES_BATCH_ROWS
            ]
        );
        // Leaf rows: one per sample, across batch boundaries.
        let leaves: usize = table
            .batches
            .iter()
            .map(|b| b.column(6).as_boolean().true_count())
            .sum();
        assert_eq!(leaves, n as usize);
    }

    #[test]
    fn empty_store_and_bad_names() {
        let store = Arc::new(Store::new(1 << 20));
        for kind in [Kind::Samples, Kind::Frames] {
            let t = build(&store, kind, WEIGHT_NS).unwrap();
            assert_eq!(t.num_rows(), 0);
            assert_eq!(t.batches.len(), 1);
        }
        assert!(build(&store, Kind::Samples, "depth").is_err());
        assert!(build(&store, Kind::Samples, "").is_err());
        assert_eq!(Kind::parse("frames"), Some(Kind::Frames));
        assert_eq!(Kind::parse("stacks"), None);
    }
}
